#pragma once
// Cap'n Proto RPC plumbing built on kj::setupAsyncIo() + TwoPartyVatNetwork
// (not EzRpc): explicit ReaderOptions limits on everything read from the
// network, TCP_NODELAY, and addresses bound as configured (loopback by
// default).

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "common/config.h"
#include "common/write_coalescing.h"

namespace keel {

// A connection's peer as the server saw it once the connection was set up.
struct Peer {
  std::string identity;  // the certificate's common name; empty on plaintext (insecure)
  std::string address;   // "ip:port", for logs
  bool tls = false;
};

// Before a call: "" lets it through; any other text refuses it with that text.
using CallFilter =
    std::function<std::string(std::uint64_t interfaceId, std::uint16_t methodId, capnp::AnyPointer::Reader params)>;

// What one connection may call (docs/security.md, "Roles"). Each
// connection's bootstrap capability is its own gate in front of the server
// object, made from the peer's identity: a membrane that lets through the
// calls of the peer's role and nothing else.
struct Access {
  std::string role;         // "operator", "client", "coordinator", "none": for logs
  bool idleExempt = false;  // never closed as idle (a coordinator's link to an agent is quiet by nature)
  // Before every call: an empty answer lets it through; any other text
  // fails the call with that text, and nothing runs. Null: all allowed.
  CallFilter refuse;
};
using AccessPolicy = std::function<Access(const Peer&)>;
// `target` behind a filter: every call on the capability this returns is
// first shown to `refuse` (as Access::refuse: "" lets it through, any other
// text fails the call with that text and nothing reaches `target`), then
// forwarded to `target` as it came, capabilities in its parameters
// included. For handing out a narrower view of an object than its own
// capability gives (the coordinator's embeddedParticipant).
capnp::Capability::Client filteredCapability(capnp::Capability::Client target, CallFilter refuse);

// The peer of the call being dispatched, while its server method runs its
// synchronous start (where it reads its parameters); null elsewhere and on
// ungated servers. The coordinator records it as the operator of an audit
// entry.
const Peer* callingPeer();

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
  // Accepts connections on every bound address, serving `bootstrap` on each
  // (no roles, no call limits: tests and benchmarks).
  void startAccepting(capnp::Capability::Client bootstrap);
  // Accepts connections, TLS when credentials are installed (common/tls.h),
  // and serves each a gate in front of `target` (kept alive by `keep`) that
  // admits what `policy` says the peer's identity may call, within
  // `limits`. A handshake that fails or outlasts its timeout, a peer over
  // its connection limit and a call beyond the in-flight limit are refused
  // and logged; the server keeps serving everyone else.
  void startAccepting(capnp::Capability::Server& target, capnp::Capability::Client keep, AccessPolicy policy,
                      const ConnLimits& limits);

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
  struct Conn;
  void taskFailed(kj::Exception&& e) override;
  kj::Promise<void> acceptLoop(kj::ConnectionReceiver& listener);
  void accepted(kj::Own<kj::AsyncIoStream> stream);
  // `socket`: the TCP stream under `stream` (the same one on plaintext); a
  // connection is closed through it, under TLS.
  kj::Promise<void> serve(kj::Own<kj::AsyncIoStream> stream, Peer peer, kj::AsyncIoStream* socket);
  kj::Promise<void> idleSweep();
  // At most one warning a second for each kind of refusal (a flood of bad
  // connections must not become a flood of log lines).
  void warnLimited(const std::string& kind, const std::string& text);

  kj::AsyncIoContext& io_;
  capnp::Capability::Client bootstrap_;
  capnp::Capability::Server* target_ = nullptr;  // gated serving; bootstrap_ keeps it alive
  AccessPolicy policy_;
  ConnLimits limits_;
  kj::Vector<kj::Own<kj::ConnectionReceiver>> listeners_;
  std::size_t accepting_ = 0;  // listeners_[0, accepting_) have an accept loop
  std::map<kj::AsyncIoStream*, kj::AsyncIoStream*> open_;  // connections being served -> their TCP socket
  std::map<kj::AsyncIoStream*, std::shared_ptr<Conn>> conns_;  // their state (gated serving)
  std::map<std::string, std::uint32_t> perPeer_;  // connections per TLS identity
  std::size_t connections_ = 0;                   // accepted and not yet ended, handshakes included
  std::map<std::string, std::pair<kj::TimePoint, std::uint64_t>> warned_;  // kind -> last warning, suppressed since
  kj::TaskSet tasks_;
};

// One client connection to a Keel server.
class RpcConnection {
 public:
  RpcConnection(kj::Own<kj::AsyncIoStream> stream, kj::Timer& timer);
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
  WriteCoalescingStream coalescing_;  // one write per wake-up; Finish messages ride with the next call
  capnp::TwoPartyVatNetwork network_;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc_;
};

// Connects to "host:port" or "NAME@host:port". With TLS installed
// (common/tls.h) the server must present a certificate of the CA naming
// NAME, or `expectedName` when the address names none; without TLS the
// name is ignored (plaintext).
kj::Promise<kj::Own<RpcConnection>> rpcConnect(kj::AsyncIoContext& io, const std::string& addr,
                                               const std::string& expectedName = "");
// "NAME@host:port" -> {"NAME", "host:port"}; "host:port" -> {"", "host:port"}.
std::pair<std::string, std::string> splitNamedAddress(const std::string& addr);

}  // namespace keel
