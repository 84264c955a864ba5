#pragma once
// Small pieces every Keel server main needs.

#include <kj/async-io.h>

#include <string>

namespace keel {

// Must be called before kj::setupAsyncIo(): lets SIGTERM/SIGINT be awaited.
void captureTerminationSignals();
// Resolves when SIGTERM or SIGINT arrives.
kj::Promise<void> onTermination(kj::AsyncIoContext& io);

// Atomically writes `content` to `path` (write to path.tmp, then rename):
// a reader never sees half a file. Used for --ready-file, which tells
// scripts and tests the bound address once the server is serving.
void writeFileAtomically(const std::string& path, const std::string& content);

// Binds `server` to `listen`, writes `readyFile` (if set) with the bound
// address, logs "serving <what> on <addr>", then blocks until SIGTERM/SIGINT.
class RpcServer;
void serveUntilTerminated(kj::AsyncIoContext& io, RpcServer& server, const std::string& listen,
                          const std::string& readyFile, const std::string& what);

// "127.0.0.1:0" + bound port 41234 -> "127.0.0.1:41234".
std::string withPort(const std::string& addr, unsigned port);

}  // namespace keel
