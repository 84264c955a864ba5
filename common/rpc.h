#pragma once
// Cap'n Proto RPC plumbing built on kj::setupAsyncIo() + TwoPartyVatNetwork
// (not EzRpc): explicit ReaderOptions limits on everything read from the
// network, TCP_NODELAY, and addresses bound as configured (loopback by
// default).

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include <set>
#include <string>

namespace keel {

// Accepts connections and serves one bootstrap capability on each.
//
// Binding and accepting are separate steps so that a server binds its
// address before it writes anything (a taken port refuses the start with
// nothing changed) and accepts only once it is ready to serve; connections
// made in between wait in the kernel's backlog.
class RpcServer final : private kj::TaskSet::ErrorHandler {
 public:
  explicit RpcServer(kj::AsyncIoContext& io);
  // Binds and listens on `addr` ("host:port", port 0 = any free port; the
  // host's first address is used) and returns the bound port. Blocking
  // (name resolution). Throws std::runtime_error "cannot listen on ADDR:
  // address already in use" (or the reason).
  unsigned bind(const std::string& addr);
  // Accepts connections on every bound address, serving `bootstrap` on each.
  void startAccepting(capnp::Capability::Client bootstrap);

  // Both steps at once, for tests and benchmarks that have nothing to check
  // in between: binds `addr`, serves the constructor's bootstrap on it and
  // resolves to the bound port (throws as bind() does).
  RpcServer(kj::AsyncIoContext& io, capnp::Capability::Client bootstrap);
  kj::Promise<unsigned> listen(const std::string& addr);

  // Closes every open connection and runs the event loop until each has
  // ended (at most `grace`), so that no connection's RPC system is torn
  // down while its connection is open: Cap'n Proto 0.9.2 crashes then (a
  // keel-agent stopped with SIGTERM while its coordinator was connected
  // died with SIGSEGV). Call before destroying the server.
  void close(kj::WaitScope& ws, kj::Duration grace = 2 * kj::SECONDS);
  std::size_t openConnections() const { return open_.size(); }

 private:
  void taskFailed(kj::Exception&& e) override;
  kj::Promise<void> acceptLoop(kj::ConnectionReceiver& listener);
  kj::Promise<void> serve(kj::Own<kj::AsyncIoStream> stream);

  kj::AsyncIoContext& io_;
  capnp::Capability::Client bootstrap_;
  kj::Vector<kj::Own<kj::ConnectionReceiver>> listeners_;
  std::size_t accepting_ = 0;  // listeners_[0, accepting_) have an accept loop
  std::set<kj::AsyncIoStream*> open_;  // connections being served
  kj::TaskSet tasks_;
};

// One client connection to a Keel server.
class RpcConnection {
 public:
  explicit RpcConnection(kj::Own<kj::AsyncIoStream> stream);
  template <typename T>
  typename T::Client bootstrap() {
    capnp::word scratch[4];
    memset(scratch, 0, sizeof(scratch));
    capnp::MallocMessageBuilder message(scratch);
    auto vatId = message.getRoot<capnp::rpc::twoparty::VatId>();
    vatId.setSide(capnp::rpc::twoparty::Side::SERVER);
    return rpc_.bootstrap(vatId).castAs<T>();
  }
  kj::Promise<void> onDisconnect() { return network_.onDisconnect(); }

 private:
  kj::Own<kj::AsyncIoStream> stream_;
  capnp::TwoPartyVatNetwork network_;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc_;
};

// Connects to "host:port".
kj::Promise<kj::Own<RpcConnection>> rpcConnect(kj::AsyncIoContext& io, const std::string& addr);

}  // namespace keel
