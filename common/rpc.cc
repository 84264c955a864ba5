#include "common/rpc.h"

#include <kj/debug.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>

#include <arpa/inet.h>

#include "common/fault.h"
#include "common/write_coalescing.h"
#include "common/log.h"
#include "common/tls.h"
#include "common/wire.h"

namespace keel {

namespace {

// How long a connection holds back a Cap'n Proto Finish message for the
// next message to the same peer to carry (common/write_coalescing.h).
// Longer than the gap between a vote and the commit that follows it at one
// client; a Finish only frees an answer's table entry or cancels a call.
constexpr kj::Duration kFinishHold = 5 * kj::MILLISECONDS;

void setNoDelay(kj::AsyncIoStream& s) {
  int one = 1;
  try {
    s.setsockopt(IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  } catch (...) {
    // not a TCP socket (tests may use pipes): nothing to do
  }
}

std::string peerAddress(kj::AsyncIoStream& s) {
  sockaddr_storage a{};
  kj::uint len = sizeof a;
  try {
    s.getpeername(reinterpret_cast<sockaddr*>(&a), &len);
  } catch (...) {
    return "?";
  }
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (a.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (a.ss_family == AF_INET6) {
    auto* in = reinterpret_cast<sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &in->sin6_addr, host, sizeof host);
    port = ntohs(in->sin6_port);
  } else {
    return "local";
  }
  return std::string(host) + ":" + std::to_string(port);
}

thread_local const Peer* g_callingPeer = nullptr;

// Ends a connection from our side through its TCP socket (under TLS too:
// the TLS stream's own shutdownWrite may be called only once, and the RPC
// system calls it). Either call may find the socket closed by the peer
// already (ENOTCONN).
void closeSocket(kj::AsyncIoStream& socket) {
  try {
    socket.shutdownWrite();
  } catch (...) {
  }
  try {
    socket.abortRead();
  } catch (...) {
  }
}

kj::Exception refusal(kj::Exception::Type type, const std::string& text) {
  return kj::Exception(type, __FILE__, __LINE__, kj::str(text.c_str()));
}

}  // namespace

const Peer* callingPeer() { return g_callingPeer; }

// One served connection (gated serving).
struct RpcServer::Conn {
  Peer peer;
  Access access;
  kj::AsyncIoStream* socket = nullptr;  // the TCP stream (under TLS, if any)
  kj::TimePoint lastActive = kj::origin<kj::TimePoint>();
  std::uint32_t inFlight = 0;
  bool counted = false;  // holds one of perPeer_[peer.identity]
};

namespace {

// The bootstrap capability of one connection: admits the calls its
// Access allows, at most `maxInFlight` at once, to the server object
// behind it, and stamps the connection active (the idle sweep).
class Gate final : public capnp::Capability::Server {
 public:
  Gate(capnp::Capability::Server& target, std::shared_ptr<void> conn, Peer& peer, Access& access,
       kj::TimePoint& lastActive, std::uint32_t& inFlight, std::uint32_t maxInFlight, kj::Timer& timer)
      : target_(target), conn_(std::move(conn)), peer_(peer), access_(access), lastActive_(lastActive),
        inFlight_(inFlight), maxInFlight_(maxInFlight), timer_(timer) {}

  DispatchCallResult dispatchCall(std::uint64_t interfaceId, std::uint16_t methodId,
                                  capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
    lastActive_ = timer_.now();
    if (access_.refuse) {
      std::string why = access_.refuse(interfaceId, methodId, context.getParams());
      if (!why.empty()) return {refusal(kj::Exception::Type::FAILED, why), false};
    }
    if (inFlight_ >= maxInFlight_) {
      return {refusal(kj::Exception::Type::OVERLOADED,
                      "overloaded: " + std::to_string(inFlight_) +
                          " calls already in flight on this connection ([limits] max_calls_in_flight); retry later"),
              false};
    }
    ++inFlight_;
    const Peer* outer = g_callingPeer;
    g_callingPeer = &peer_;
    KJ_DEFER(g_callingPeer = outer);
    DispatchCallResult r{kj::READY_NOW, false};
    try {
      r = target_.dispatchCall(interfaceId, methodId, context);
    } catch (...) {
      --inFlight_;
      throw;
    }
    // The call may outlive this gate (the connection dropped meanwhile):
    // what it touches at its end is the connection's state, which `conn`
    // keeps alive, and the timer, which outlives every connection.
    r.promise = r.promise.attach(
        kj::defer([conn = conn_, &inFlight = inFlight_, &lastActive = lastActive_, &timer = timer_]() {
          --inFlight;
          lastActive = timer.now();
        }));
    return r;
  }

 private:
  capnp::Capability::Server& target_;
  std::shared_ptr<void> conn_;  // keeps the fields below alive
  Peer& peer_;
  Access& access_;
  kj::TimePoint& lastActive_;
  std::uint32_t& inFlight_;
  std::uint32_t maxInFlight_;
  kj::Timer& timer_;
};

// filteredCapability's server: a filter, then the call forwarded whole.
class Filtered final : public capnp::Capability::Server {
 public:
  Filtered(capnp::Capability::Client target, CallFilter refuse) : target_(kj::mv(target)), refuse_(std::move(refuse)) {}

  DispatchCallResult dispatchCall(std::uint64_t interfaceId, std::uint16_t methodId,
                                  capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
    auto params = context.getParams();
    std::string why = refuse_(interfaceId, methodId, params);
    if (!why.empty()) return {refusal(kj::Exception::Type::FAILED, why), false};
    auto forwarded = target_.typelessRequest(interfaceId, methodId, params.targetSize());
    forwarded.set(params);
    context.releaseParams();
    return {context.tailCall(kj::mv(forwarded)), false};
  }

 private:
  capnp::Capability::Client target_;
  CallFilter refuse_;
};

}  // namespace

capnp::Capability::Client filteredCapability(capnp::Capability::Client target, CallFilter refuse) {
  return kj::heap<Filtered>(kj::mv(target), std::move(refuse));
}

RpcServer::RpcServer(kj::AsyncIoContext& io) : RpcServer(io, nullptr) {}

RpcServer::RpcServer(kj::AsyncIoContext& io, capnp::Capability::Client bootstrap)
    : io_(io), bootstrap_(kj::mv(bootstrap)), tasks_(*this) {}

kj::Promise<unsigned> RpcServer::listen(const std::string& addr) {
  unsigned port = bind(addr);
  startAccepting(bootstrap_);
  return port;
}

unsigned RpcServer::bind(const std::string& addr) {
  // Our own socket calls rather than kj::NetworkAddress::listen(): a failure
  // must reach the operator as a plain reason, not as KJ's syscall text.
  auto fail = [&](const std::string& why) { return std::runtime_error("cannot listen on " + addr + ": " + why); };
  auto colon = addr.rfind(':');
  if (colon == std::string::npos) throw fail("not host:port");
  std::string host = addr.substr(0, colon), port = addr.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host == "*" ? nullptr : host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) throw fail(::gai_strerror(rc));
  KJ_DEFER(::freeaddrinfo(res));
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw fail(errnoText(errno));
  int one = 1;
  // As KJ does: a restarted server can bind while old connections linger.
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, SOMAXCONN) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    int err = errno;
    ::close(fd);
    throw fail(errnoText(err));
  }
  unsigned boundPort = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                         : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  listeners_.add(io_.lowLevelProvider->wrapListenSocketFd(
      fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP | kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC |
              kj::LowLevelAsyncIoProvider::ALREADY_NONBLOCK));
  return boundPort;
}

void RpcServer::startAccepting(capnp::Capability::Client bootstrap) {
  bootstrap_ = kj::mv(bootstrap);
  for (; accepting_ < listeners_.size(); ++accepting_) tasks_.add(acceptLoop(*listeners_[accepting_]));
}

void RpcServer::startAccepting(capnp::Capability::Server& target, capnp::Capability::Client keep,
                               AccessPolicy policy, const ConnLimits& limits) {
  target_ = &target;
  policy_ = std::move(policy);
  limits_ = limits;
  if (limits_.idleTimeoutS > 0) tasks_.add(idleSweep());
  startAccepting(kj::mv(keep));
}

void RpcServer::warnLimited(const std::string& kind, const std::string& text) {
  auto now = io_.provider->getTimer().now();
  auto it = warned_.find(kind);
  if (it != warned_.end() && now - it->second.first < 1 * kj::SECONDS) {
    ++it->second.second;
    return;
  }
  std::uint64_t suppressed = it == warned_.end() ? 0 : it->second.second;
  warned_.insert_or_assign(kind, std::make_pair(now, std::uint64_t(0)));
  if (suppressed > 0) {
    KEEL_LOG_WARN("{} ({} more like it in the last second, not logged)", text, suppressed);
  } else {
    KEEL_LOG_WARN("{}", text);
  }
}

kj::Promise<void> RpcServer::acceptLoop(kj::ConnectionReceiver& listener) {
  return listener.accept().then(
      [this, &listener](kj::Own<kj::AsyncIoStream> s) {
        accepted(kj::mv(s));
        return acceptLoop(listener);
      },
      [this, &listener](kj::Exception&& e) {
        // Out of descriptors (EMFILE) and the like: the listener stays; try
        // again shortly rather than stop accepting for good.
        warnLimited("accept", "accept failed, retrying: " + describeFault(e));
        return io_.provider->getTimer().afterDelay(100 * kj::MILLISECONDS).then([this, &listener]() {
          return acceptLoop(listener);
        });
      });
}

void RpcServer::accepted(kj::Own<kj::AsyncIoStream> s) {
  setNoDelay(*s);
  std::string address = peerAddress(*s);
  if (target_ != nullptr && connections_ >= limits_.maxConnections) {
    warnLimited("max_connections", "refused a connection from " + address + ": " + std::to_string(connections_) +
                                       " connections open ([limits] max_connections)");
    return;  // dropping the stream closes it
  }
  ++connections_;
  auto creds = target_ != nullptr ? currentTls() : nullptr;
  if (!creds) {
    auto* socket = s.get();
    tasks_.add(serve(kj::mv(s), Peer{"", address, false}, socket).attach(kj::defer([this]() { --connections_; })));
    return;
  }
  // The handshake is bounded by the credentials' accept timeout. The TLS
  // stream owns the socket, which lives as long as it does.
  auto* socket = s.get();
  auto handshake = creds->context().wrapServer(kj::AuthenticatedStream{kj::mv(s), kj::UnknownPeerIdentity::newInstance()});
  tasks_.add(handshake
                 .then(
                     [this, address, creds, socket](kj::AuthenticatedStream a) {
                       auto& id = kj::downcast<kj::TlsPeerIdentity>(*a.peerIdentity);
                       std::string name = id.hasCertificate() ? std::string(id.getCommonName().cStr()) : "";
                       return serve(a.stream.attach(kj::mv(creds)), Peer{name, address, true}, socket);
                     },
                     [this, address](kj::Exception&& e) {
                       warnLimited("handshake", "TLS handshake from " + address + " failed (" +
                                                    describeFault(e) +
                                                    "): a plaintext client, a certificate of another CA, or too slow");
                     })
                 .attach(kj::defer([this]() { --connections_; })));
}

kj::Promise<void> RpcServer::idleSweep() {
  auto& timer = io_.provider->getTimer();
  auto idle = limits_.idleTimeoutS * kj::SECONDS;
  auto every = kj::min(kj::max(idle / 4, 100 * kj::MILLISECONDS), 30 * kj::SECONDS);
  return timer.afterDelay(every).then([this, idle]() {
    auto now = io_.provider->getTimer().now();
    for (auto& [stream, c] : conns_) {
      if (c->access.idleExempt || c->inFlight > 0 || now - c->lastActive < idle) continue;
      KEEL_LOG_INFO("closing idle connection from {} ('{}'): no call for {} s ([limits] idle_timeout_s)",
                    c->peer.address, c->peer.identity, limits_.idleTimeoutS);
      c->lastActive = now;  // once
      closeSocket(*c->socket);
    }
    return idleSweep();
  });
}

kj::Promise<void> RpcServer::serve(kj::Own<kj::AsyncIoStream> stream, Peer peer, kj::AsyncIoStream* socket) {
  auto* raw = stream.get();
  capnp::Capability::Client boot = bootstrap_;
  std::shared_ptr<Conn> conn;
  if (target_ != nullptr) {
    conn = std::make_shared<Conn>();
    conn->peer = std::move(peer);
    conn->access = policy_ ? policy_(conn->peer) : Access{"all", false, nullptr};
    conn->socket = socket;
    conn->lastActive = io_.provider->getTimer().now();
    if (conn->peer.tls) {
      auto& n = perPeer_[conn->peer.identity];
      if (n >= limits_.maxConnectionsPerPeer) {
        std::string why = "refused: '" + conn->peer.identity + "' already has " + std::to_string(n) +
                          " connections to this server ([limits] max_connections_per_peer)";
        warnLimited("per_peer", why + " (from " + conn->peer.address + ")");
        conn->access = Access{"refused", false, [why](std::uint64_t, std::uint16_t, capnp::AnyPointer::Reader) {
                                return why;
                              }};
        // Served long enough for its first call to hear why, then closed.
        tasks_.add(io_.provider->getTimer().afterDelay(2 * kj::SECONDS).then([this, raw, weak = std::weak_ptr<Conn>(conn)]() {
          auto it = conns_.find(raw);
          if (it != conns_.end() && it->second == weak.lock()) closeSocket(*it->second->socket);
        }));
      } else {
        ++n;
        conn->counted = true;
      }
    }
    auto& c = *conn;
    boot = capnp::Capability::Client(kj::heap<Gate>(*target_, conn, c.peer, c.access, c.lastActive, c.inFlight,
                                                    limits_.maxCallsInFlight, io_.provider->getTimer()));
    conns_[raw] = conn;
  }
  auto coalescing = kj::heap<WriteCoalescingStream>(*stream, io_.provider->getTimer(), kFinishHold);
  auto network = kj::heap<capnp::TwoPartyVatNetwork>(*coalescing, capnp::rpc::twoparty::Side::SERVER,
                                                     networkReaderOptions());
  auto rpc = kj::heap(capnp::makeRpcServer(*network, kj::mv(boot)));
  auto done = network->onDisconnect();
  open_[raw] = socket;
  // The connection's RPC system goes on a later turn than the one that saw
  // the disconnect, never from inside its own disconnect handling.
  // Attachments go last to first: the RPC system before the network it
  // speaks through, and that before the stream (dropped while the
  // connection is still up, at shutdown, the RPC system says goodbye
  // through both).
  return done.then([]() { return kj::evalLater([]() {}); })
      .attach(kj::mv(stream), kj::mv(coalescing), kj::mv(network), kj::mv(rpc), kj::defer([this, raw, conn]() {
                open_.erase(raw);
                conns_.erase(raw);
                if (conn && conn->counted && --perPeer_[conn->peer.identity] == 0) perPeer_.erase(conn->peer.identity);
              }));
}

void RpcServer::close(kj::WaitScope& ws, kj::Duration grace) {
  for (auto& [stream, socket] : open_) closeSocket(*socket);
  // Each connection's task ends once its network sees the disconnect; the
  // task set then drops it (and its RPC system) in the normal way.
  auto& timer = io_.provider->getTimer();
  auto until = timer.now() + grace;
  while (!open_.empty() && timer.now() < until) timer.afterDelay(5 * kj::MILLISECONDS).wait(ws);
  kj::evalLater([]() {}).wait(ws);  // one more turn: finished tasks are freed
}

void RpcServer::taskFailed(kj::Exception&& e) {
  if (e.getType() != kj::Exception::Type::DISCONNECTED) {
    KEEL_LOG_WARN("rpc connection ended: {}", describeFault(e));
  }
}

RpcConnection::RpcConnection(kj::Own<kj::AsyncIoStream> stream, kj::Timer& timer)
    : stream_(kj::mv(stream)),
      coalescing_(*stream_, timer, kFinishHold),
      network_(coalescing_, capnp::rpc::twoparty::Side::CLIENT, networkReaderOptions()),
      rpc_(capnp::makeRpcClient(network_)) {}

std::pair<std::string, std::string> splitNamedAddress(const std::string& addr) {
  auto at = addr.find('@');
  if (at == std::string::npos) return {"", addr};
  return {addr.substr(0, at), addr.substr(at + 1)};
}

kj::Promise<kj::Own<RpcConnection>> rpcConnect(kj::AsyncIoContext& io, const std::string& addr,
                                               const std::string& expectedName) {
  auto [named, hostPort] = splitNamedAddress(addr);
  std::string name = named.empty() ? expectedName : named;
  auto creds = currentTls();
  if (creds && name.empty()) {
    return refusal(kj::Exception::Type::FAILED,
                   "TLS: which certificate name should " + hostPort + " present? write the address as NAME@" +
                       hostPort + " (docs/security.md)");
  }
  return io.provider->getNetwork()
      .parseAddress(hostPort)
      .then([](kj::Own<kj::NetworkAddress> a) { return a->connect().attach(kj::mv(a)); })
      .then([creds, name, hostPort = hostPort,
             &timer = io.provider->getTimer()](kj::Own<kj::AsyncIoStream> s) -> kj::Promise<kj::Own<RpcConnection>> {
        setNoDelay(*s);
        if (!creds) return kj::heap<RpcConnection>(kj::mv(s), timer);
        return creds->context()
            .wrapClient(kj::mv(s), name)
            .then(
                [creds, &timer](kj::Own<kj::AsyncIoStream> tls) {
                  return kj::heap<RpcConnection>(tls.attach(kj::mv(creds)), timer);
                },
                [name, hostPort](kj::Exception&& e) -> kj::Own<RpcConnection> {
                  kj::throwFatalException(refusal(
                      e.getType(), "TLS handshake with '" + name + "' at " + hostPort + " failed: " +
                                       std::string(e.getDescription().cStr()) +
                                       " (a plaintext server, another CA, or a certificate not naming '" + name +
                                       "')"));
                });
      });
}

}  // namespace keel
