#include "common/daemon.h"

#include <kj/async-unix.h>
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "common/log.h"
#include "common/rpc.h"

namespace keel {

void captureTerminationSignals() {
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

kj::Promise<void> onTermination(kj::AsyncIoContext& io) {
  return io.unixEventPort.onSignal(SIGTERM)
      .ignoreResult()
      .exclusiveJoin(io.unixEventPort.onSignal(SIGINT).ignoreResult());
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
