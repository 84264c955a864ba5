#include "common/rpc.h"

#include <kj/debug.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>

#include "common/fault.h"
#include "common/log.h"
#include "common/wire.h"

namespace keel {

namespace {

void setNoDelay(kj::AsyncIoStream& s) {
  int one = 1;
  try {
    s.setsockopt(IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  } catch (...) {
    // not a TCP socket (tests may use pipes): nothing to do
  }
}

}  // namespace

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

kj::Promise<void> RpcServer::acceptLoop(kj::ConnectionReceiver& listener) {
  return listener.accept().then([this, &listener](kj::Own<kj::AsyncIoStream> s) {
    setNoDelay(*s);
    tasks_.add(serve(kj::mv(s)));
    return acceptLoop(listener);
  });
}

kj::Promise<void> RpcServer::serve(kj::Own<kj::AsyncIoStream> stream) {
  auto network = kj::heap<capnp::TwoPartyVatNetwork>(*stream, capnp::rpc::twoparty::Side::SERVER,
                                                     networkReaderOptions());
  auto rpc = kj::heap(capnp::makeRpcServer(*network, bootstrap_));
  auto done = network->onDisconnect();
  auto* raw = stream.get();
  open_.insert(raw);
  // The connection's RPC system goes on a later turn than the one that saw
  // the disconnect, never from inside its own disconnect handling.
  // Attachments go last to first: the RPC system before the network it
  // speaks through, and that before the stream (dropped while the
  // connection is still up, at shutdown, the RPC system says goodbye
  // through both).
  return done.then([]() { return kj::evalLater([]() {}); })
      .attach(kj::mv(stream), kj::mv(network), kj::mv(rpc), kj::defer([this, raw]() { open_.erase(raw); }));
}

void RpcServer::close(kj::WaitScope& ws, kj::Duration grace) {
  for (auto* s : open_) {
    // Either may find the socket closed by the peer already (ENOTCONN).
    try {
      s->shutdownWrite();
    } catch (...) {
    }
    try {
      s->abortRead();
    } catch (...) {
    }
  }
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

RpcConnection::RpcConnection(kj::Own<kj::AsyncIoStream> stream)
    : stream_(kj::mv(stream)),
      network_(*stream_, capnp::rpc::twoparty::Side::CLIENT, networkReaderOptions()),
      rpc_(capnp::makeRpcClient(network_)) {}

kj::Promise<kj::Own<RpcConnection>> rpcConnect(kj::AsyncIoContext& io, const std::string& addr) {
  return io.provider->getNetwork()
      .parseAddress(addr)
      .then([](kj::Own<kj::NetworkAddress> a) {
        return a->connect().attach(kj::mv(a));
      })
      .then([](kj::Own<kj::AsyncIoStream> s) {
        setNoDelay(*s);
        return kj::heap<RpcConnection>(kj::mv(s));
      });
}

}  // namespace keel
