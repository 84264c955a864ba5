#include "common/daemon.h"

#include <kj/async-unix.h>
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "common/log.h"
#include "common/rpc.h"

namespace keel {

namespace {

// KEEL_STOP_WITH_PARENT as captureTerminationSignals() read it (0: unset).
pid_t stopWithPid = 0;

}  // namespace

pid_t stopWithPidFromEnv() {
  const char* v = std::getenv("KEEL_STOP_WITH_PARENT");
  if (v == nullptr || *v == '\0') return 0;
  errno = 0;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || n <= 0 || n > INT_MAX) {
    std::fprintf(stderr,
                 "KEEL_STOP_WITH_PARENT=%s: not a process id (a whole number above 0); it names the process whose "
                 "exit stops this server (docs/operations.md, \"Started by a harness\")\n",
                 v);
    std::exit(kExitBadConfig);
  }
  return static_cast<pid_t>(n);
}

ParentWatch watchParent(pid_t pid) {
  if (pid == 0) return {};
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd >= 0) return {fd, false};
  if (errno == ESRCH) {
    KEEL_LOG_WARN("process {} (KEEL_STOP_WITH_PARENT) has already exited: stopping", pid);
    return {-1, true};
  }
  KEEL_LOG_WARN("cannot watch process {} (KEEL_STOP_WITH_PARENT): {}; it will not stop this server", pid,
                std::strerror(errno));
  return {};
}

void logParentExited(pid_t pid) { KEEL_LOG_WARN("process {} (KEEL_STOP_WITH_PARENT) has exited: stopping", pid); }

void captureTerminationSignals() {
  stopWithPid = stopWithPidFromEnv();
  kj::UnixEventPort::captureSignal(SIGTERM);
  kj::UnixEventPort::captureSignal(SIGINT);
  kj::UnixEventPort::captureSignal(SIGHUP);  // reloads the TLS certificates (common/tls.h)
  // A server holds one descriptor per connection: take what the hard limit
  // allows, so that many idle peers meet Keel's own limits ([limits]) first.
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &r);
  }
}

void holdFreedHeapMemory() {
  for (const char* set : {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"}) {
    if (std::getenv(set) != nullptr) return;  // the operator's choice
  }
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);  // also stops glibc moving it (and the trim threshold) on its own
  ::mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

namespace {

// Resolves once process `pid` has exited (never when pid is 0, or when it
// cannot be watched).
kj::Promise<void> onExitOf(kj::AsyncIoContext& io, pid_t pid) {
  ParentWatch w = watchParent(pid);
  if (w.gone) return kj::READY_NOW;
  if (w.fd < 0) return kj::NEVER_DONE;
  auto observer = kj::heap<kj::UnixEventPort::FdObserver>(io.unixEventPort, w.fd,
                                                          kj::UnixEventPort::FdObserver::OBSERVE_READ);
  auto exited = observer->whenBecomesReadable();
  // Attachments go last to first: the observer before its descriptor.
  return exited.then([pid]() { logParentExited(pid); })
      .attach(kj::defer([fd = w.fd]() { ::close(fd); }), kj::mv(observer));
}

}  // namespace

kj::Promise<void> onTermination(kj::AsyncIoContext& io) {
  return io.unixEventPort.onSignal(SIGTERM)
      .ignoreResult()
      .exclusiveJoin(io.unixEventPort.onSignal(SIGINT).ignoreResult())
      .exclusiveJoin(onExitOf(io, stopWithPid));
}

void writeFileAtomically(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write " + tmp);
    f << content;
    if (!f.flush()) throw std::runtime_error("cannot write " + tmp);
  }
  std::filesystem::rename(tmp, path);
}

void serveUntilTerminated(kj::AsyncIoContext& io, RpcServer& server, capnp::Capability::Server& target,
                          capnp::Capability::Client keep, AccessPolicy policy, const ConnLimits& limits,
                          const std::string& bound, const std::string& readyFile, const std::string& what) {
  server.startAccepting(target, kj::mv(keep), std::move(policy), limits);
  KEEL_LOG_INFO("serving {} on {}", what, bound);
  if (!readyFile.empty()) writeFileAtomically(readyFile, bound + "\n");
  onTermination(io).wait(io.waitScope);
  KEEL_LOG_INFO("stopping");
  server.close(io.waitScope);
}

std::string withPort(const std::string& addr, unsigned port) {
  auto colon = addr.rfind(':');
  return addr.substr(0, colon) + ":" + std::to_string(port);
}

}  // namespace keel
