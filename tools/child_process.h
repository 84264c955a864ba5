#pragma once
// Child processes of the test harnesses (PgServer, EtcdCluster): start a
// server binary with its output in a log file, wait for it, and read the
// end of its log for failure messages.

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace keel::test {

// Who the child runs as when it must not be us (PostgreSQL refuses root).
struct ChildUser {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;
};

// fork + exec of args[0] with exactly `env` as its environment, stdout and
// stderr appended to `logFile`, stdin from /dev/null and no other
// descriptor inherited (a test's sockets must not live on in the server).
// The child gets `deathSignal` when the calling thread exits
// (PR_SET_PDEATHSIG), and runs as `user` if one is given. Everything the
// child needs is prepared before fork(): after it, only async-signal-safe
// calls. `who` names the caller in error messages ("PgServer").
pid_t spawnChild(const std::string& who, const std::vector<std::string>& args, const std::vector<std::string>& env,
                 const std::string& logFile, int deathSignal, const ChildUser* user = nullptr);

// Waits for child `pid` up to `timeout`: its wait status, or nullopt if it
// is still running. A pid that is not (or no longer) our child reads as 0.
std::optional<int> waitChild(pid_t pid, std::chrono::milliseconds timeout);

// "exit code 1", "signal Killed", ...
std::string describeWaitStatus(int status);

// The last `lines` lines of `file` (read from its last 64 KiB); nullopt if
// it cannot be read.
std::optional<std::string> lastLinesOf(const std::string& file, std::size_t lines);

}  // namespace keel::test
