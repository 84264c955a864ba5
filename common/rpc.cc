#include "common/rpc.h"

#include <netinet/in.h>
#include <netinet/tcp.h>

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

RpcServer::RpcServer(kj::AsyncIoContext& io, capnp::Capability::Client bootstrap)
    : io_(io), bootstrap_(kj::mv(bootstrap)), tasks_(*this) {}

kj::Promise<unsigned> RpcServer::listen(const std::string& addr) {
  return io_.provider->getNetwork().parseAddress(addr).then(
      [this](kj::Own<kj::NetworkAddress> a) -> unsigned {
        auto listener = a->listen();
        unsigned port = listener->getPort();
        tasks_.add(acceptLoop(*listener));
        listeners_.add(kj::mv(listener));
        return port;
      });
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
  return done.attach(kj::mv(rpc), kj::mv(network), kj::mv(stream));
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
