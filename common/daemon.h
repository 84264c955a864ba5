#pragma once
// Small pieces every Keel server main needs.

#include <capnp/capability.h>
#include <kj/async-io.h>
#include <sys/types.h>

#include <string>

#include "common/rpc.h"

namespace keel {

// Must be called before kj::setupAsyncIo(): lets SIGTERM/SIGINT (and SIGHUP,
// the TLS reload) be awaited; raises the open-file limit to its maximum.
void captureTerminationSignals();
// Keeps freed heap memory in the process instead of handing it back to the
// kernel at each free (call first thing in main, before any thread). Every
// LMDB write transaction a group commit nests (one per job) mallocs its
// dirty-page list, megabytes, and frees it at commit; with glibc's defaults
// the freed top of the thread's heap is returned (madvise) and faulted in
// again by the next job: ~8% of the coordinator's CPU at one postgres
// client (perf: do_madvise 3.9%, page faults in sysmalloc 3.8%). Fixed
// thresholds (trim above 64 MiB, mmap above 32 MiB) keep it. A threshold
// the environment sets (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_,
// GLIBC_TUNABLES) is left alone. docs/performance.md, fourteenth sitting.
void holdFreedHeapMemory();
// Resolves when SIGTERM or SIGINT arrives, or when the process that
// KEEL_STOP_WITH_PARENT names has exited (below).
kj::Promise<void> onTermination(kj::AsyncIoContext& io);

// KEEL_STOP_WITH_PARENT=PID: this server stops (as on SIGTERM) once
// process PID has exited. The harnesses that start Keel's servers
// (keel-bench, keel-chaos, keel-demo, the tests: tools/cluster.cc) set it
// to their own pid, so a harness killed with SIGKILL (or crashing) does
// not leave coordinators and agents running behind it, holding ports and
// CPU. Read once, by captureTerminationSignals() (keel-host: by its main):
// 0 when unset or empty; a value that is not a process id (a whole number
// above 0) prints why and exits with kExitBadConfig before anything is
// touched.
pid_t stopWithPidFromEnv();
// How a server watches that process (onTermination does; keel-host, on
// its asio loop, uses it directly): `fd` is a pidfd (pidfd_open, readable
// once the process has exited; the caller closes it), or -1: then `gone`
// says the process had already exited (stop now), else there is nothing to
// watch (pid 0, or pidfd_open failed). The last two cases are logged here;
// logParentExited says the first one's exit the same way.
struct ParentWatch {
  int fd = -1;
  bool gone = false;
};
ParentWatch watchParent(pid_t pid);
void logParentExited(pid_t pid);

// Atomically writes `content` to `path` (write to path.tmp, then rename):
// a reader never sees half a file. Used for --ready-file, which tells
// scripts and tests the bound address once the server is serving.
void writeFileAtomically(const std::string& path, const std::string& content);

// Serves `bootstrap` on the address `server` has already bound (`bound`,
// "host:port"): starts accepting, writes `readyFile` (if set) with `bound`,
// logs "serving <what> on <bound>", then blocks until SIGTERM/SIGINT.
// Binding is the caller's earlier step (RpcServer::bind), done before the
// process writes anything, so a taken port refuses the start unchanged.
// Each connection is served a gate in front of `target` (kept alive by
// `keep`) admitting what `policy` allows its peer, within `limits`
// (RpcServer::startAccepting).
void serveUntilTerminated(kj::AsyncIoContext& io, RpcServer& server, capnp::Capability::Server& target,
                          capnp::Capability::Client keep, AccessPolicy policy, const ConnLimits& limits,
                          const std::string& bound, const std::string& readyFile, const std::string& what);

// Exit statuses of keel-coordinator and keel-agent (docs/operations.md).
inline constexpr int kExitStopped = 0;       // stopped by SIGTERM / SIGINT
inline constexpr int kExitFailed = 1;        // could not start (port, damaged record, ...) or failed while running
inline constexpr int kExitBadConfig = 2;     // bad config or command line; nothing was touched
inline constexpr int kExitDataDirRefused = 3;  // the data directory was refused (missing, in use, not ours)

// "127.0.0.1:0" + bound port 41234 -> "127.0.0.1:41234".
std::string withPort(const std::string& addr, unsigned port);

}  // namespace keel
