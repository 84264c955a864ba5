#pragma once
// CPU time of processes, from /proc/<pid>/stat (utime + stime), for the
// benchmark's "CPU seconds used by each Keel process" over its window.

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace keel::bench {

// utime + stime of `pid` in seconds; nullopt if it is gone.
std::optional<double> processCpuSeconds(pid_t pid);

// The same for `pid` and every live descendant, plus the CPU of children it
// has already reaped (cutime + cstime): a PostgreSQL postmaster and its
// backends.
std::optional<double> processTreeCpuSeconds(pid_t pid);

// A process the benchmark accounts for.
struct WatchedProcess {
  std::string name;  // "coordinator", "bank-a", "postgres", "keel-bench"
  pid_t pid = -1;
  bool tree = false;  // count descendants too
  std::optional<double> cpu() const { return tree ? processTreeCpuSeconds(pid) : processCpuSeconds(pid); }
};

}  // namespace keel::bench
