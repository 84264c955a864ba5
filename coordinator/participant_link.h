#pragma once
// ParticipantLink: the coordinator's connection to one participant agent.
//
// Connects lazily, shares one connection attempt between concurrent
// callers, and drops the connection when it breaks so the next call
// reconnects (Cap'n Proto 0.9.2 has no reconnect helper). Every call is
// bounded by a deadline: a participant that does not answer in time counts
// as failed for that call, never as a hang.

#include <kj/async-io.h>

#include <string>

#include "common/rpc.h"
#include "schemas/keel.capnp.h"

namespace keel {

class ParticipantLink final : private kj::TaskSet::ErrorHandler {
 public:
  ParticipantLink(kj::AsyncIoContext& io, std::string name, std::string address);

  const std::string& name() const { return name_; }
  const std::string& address() const { return address_; }

  // The participant's capability, connecting first if needed.
  kj::Promise<wire::Participant::Client> client();

  // Runs `call(client)` with a deadline; a disconnect resets the link.
  template <typename T, typename Fn>
  kj::Promise<T> call(kj::Duration deadline, Fn&& fn) {
    return io_.provider->getTimer().timeoutAfter(
        deadline, client()
                      .then([fn = kj::fwd<Fn>(fn)](wire::Participant::Client c) mutable -> kj::Promise<T> {
                        return fn(c);
                      })
                      .catch_([this](kj::Exception&& e) -> kj::Promise<T> {
                        if (e.getType() == kj::Exception::Type::DISCONNECTED) reset();
                        return kj::mv(e);
                      }))
        .catch_([this](kj::Exception&& e) -> kj::Promise<T> {
          // No answer in time: the peer may be slow, or the connection may be
          // dead without either side having noticed (a half-open TCP
          // connection never reports anything). Start afresh next time.
          if (e.getType() == kj::Exception::Type::OVERLOADED) reset();
          return kj::mv(e);
        });
  }

  // Forgets the connection (the next call reconnects).
  void reset();

 private:
  void taskFailed(kj::Exception&&) override {}

  kj::AsyncIoContext& io_;
  const std::string name_;
  const std::string address_;
  kj::Own<RpcConnection> conn_;                       // null when not connected
  kj::Maybe<wire::Participant::Client> cap_;
  kj::Maybe<kj::ForkedPromise<void>> connecting_;
  std::uint64_t generation_ = 0;                      // bumped by reset()
  kj::TaskSet tasks_;                                 // disconnect watchers
};

}  // namespace keel
