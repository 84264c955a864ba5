#include "coordinator/participant_link.h"

#include "common/log.h"

namespace keel {

ParticipantLink::ParticipantLink(kj::AsyncIoContext& io, std::string name, std::string address)
    : io_(io), name_(std::move(name)), address_(std::move(address)), tasks_(*this) {}

kj::Promise<wire::Participant::Client> ParticipantLink::client() {
  KJ_IF_MAYBE(c, cap_) { return *c; }
  KJ_IF_MAYBE(p, connecting_) {
    return p->addBranch().then([this]() -> kj::Promise<wire::Participant::Client> { return client(); });
  }
  auto gen = ++generation_;
  auto fork = rpcConnect(io_, address_)
                  .then([this, gen](kj::Own<RpcConnection> conn) {
                    if (gen != generation_) return;  // reset meanwhile
                    cap_ = conn->bootstrap<wire::Participant>();
                    tasks_.add(conn->onDisconnect().then(
                        [this, gen]() {
                          if (gen == generation_) reset();
                        },
                        [this, gen](kj::Exception&&) {
                          if (gen == generation_) reset();
                        }));
                    conn_ = kj::mv(conn);
                    connecting_ = nullptr;
                  },
                        [this, gen](kj::Exception&& e) {
                          if (gen == generation_) connecting_ = nullptr;
                          kj::throwFatalException(kj::mv(e));
                        })
                  .fork();
  auto branch = fork.addBranch();
  connecting_ = kj::mv(fork);
  return branch.then([this]() -> kj::Promise<wire::Participant::Client> {
    KJ_IF_MAYBE(c, cap_) { return *c; }
    return KJ_EXCEPTION(DISCONNECTED, "participant connection lost", name_);
  });
}

void ParticipantLink::reset() {
  ++generation_;
  cap_ = nullptr;
  connecting_ = nullptr;
  // Destroying the connection from inside its own disconnect callback is not
  // safe; hand it to the event loop to drop on a later turn.
  if (conn_.get() != nullptr) {
    tasks_.add(kj::evalLater([old = kj::mv(conn_)]() {}));
  }
}

}  // namespace keel
