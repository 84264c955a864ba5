#include "common/daemon.h"

#include <kj/async-unix.h>
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "common/log.h"
#include "common/rpc.h"

namespace keel {

void captureTerminationSignals() {
  kj::UnixEventPort::captureSignal(SIGTERM);
  kj::UnixEventPort::captureSignal(SIGINT);
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

void serveUntilTerminated(kj::AsyncIoContext& io, RpcServer& server, capnp::Capability::Client bootstrap,
                          const std::string& bound, const std::string& readyFile, const std::string& what) {
  server.startAccepting(kj::mv(bootstrap));
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
