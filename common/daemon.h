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

// "127.0.0.1:0" + bound port 41234 -> "127.0.0.1:41234".
std::string withPort(const std::string& addr, unsigned port);

}  // namespace keel
