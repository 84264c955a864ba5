#pragma once
// CPU time of processes, from /proc/<pid>/stat (utime + stime), for the
// benchmark's "CPU seconds used by each Keel process" over its window.

#include <sys/types.h>

#include <cstdint>
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

// Context switches of `pid` (voluntary + involuntary, summed over its
// threads in /proc/<pid>/task/*/status); nullopt if it is gone. Each is a
// thread going to sleep and being woken again (or preempted): on a VM the
// kernel's share of every message and every fsync wait. Threads that ended
// before the read are not counted (Keel's processes keep theirs).
std::optional<std::uint64_t> processContextSwitches(pid_t pid);

// A process the benchmark accounts for.
struct WatchedProcess {
  std::string name;  // "coordinator", "bank-a", "postgres", "keel-bench"
  pid_t pid = -1;
  bool tree = false;  // count descendants too
  std::optional<double> cpu() const { return tree ? processTreeCpuSeconds(pid) : processCpuSeconds(pid); }
  // Not counted for a tree (PostgreSQL's backends come and go).
  std::optional<std::uint64_t> switches() const {
    return tree ? std::nullopt : processContextSwitches(pid);
  }
};

}  // namespace keel::bench
