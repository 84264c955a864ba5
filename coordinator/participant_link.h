#pragma once
// ParticipantLink: the coordinator's connection to one participant agent.
//
// Connects lazily, shares one connection attempt between concurrent
// callers, and drops the connection when it breaks so the next call
// reconnects (Cap'n Proto 0.9.2 has no reconnect helper). Every call is
// bounded by a deadline: a participant that does not answer in time counts
// as failed for that call, never as a hang.
//
// The protocol's hot calls (prepare, commit, rollback) go through
// CallBatcher: what the coordinator has for this participant in one
// event-loop turn, or while earlier batches are out, leaves in one message
// (prepareBatch, commit/rollback with many XIDs). Each call still has its
// own answer; the caller bounds its wait with its own deadline.

#include <kj/async-io.h>

#include <string>
#include <vector>

#include "common/call_batcher.h"
#include "common/rpc.h"
#include "common/types.h"
#include "schemas/keel.capnp.h"

namespace keel {

struct LinkOptions {
  kj::Duration callDeadline = 2 * kj::SECONDS;  // of one batch message
  std::size_t maxBatch = 256;                  // calls per message
  std::size_t maxInFlight = 2;                 // batch messages out at once per kind
};

class ParticipantLink final : private kj::TaskSet::ErrorHandler {
 public:
  ParticipantLink(kj::AsyncIoContext& io, std::string name, std::string address, LinkOptions opts = {});
  ~ParticipantLink() noexcept(false);  // logs how well calls were batched

  // One branch's vote.
  struct PrepareReply {
    wire::Vote vote = wire::Vote::NO;
    std::string reason;
    std::vector<OpResult> results;
    // Non-empty: this item failed on the agent as a fault (its state there
    // is unknown, so the branch counts as failed, never as a NO vote).
    std::string error;
  };

  // Batched protocol calls (see above). Each rejects on a fault: the batch's
  // message failed, or this item failed on the agent.
  kj::Promise<PrepareReply> prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops);
  kj::Promise<wire::BranchOutcome> commit(std::uint64_t epoch, Xid xid);
  kj::Promise<wire::BranchOutcome> rollback(std::uint64_t epoch, Xid xid);

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

  // The limits the participant asked for at connect (Participant.batching;
  // 0 = the coordinator's own). Phase-2 messages carry 8 × as many.
  void applyBatching(std::uint32_t maxBatch, std::uint32_t maxInFlight);
  std::size_t prepareBatchLimit() const { return prepares_.maxItems(); }
  std::size_t inFlightLimit() const { return prepares_.maxInFlight(); }

 private:
  void taskFailed(kj::Exception&&) override {}

  struct PrepareItem {
    std::uint64_t epoch;
    Xid xid;
    std::vector<Op> ops;
  };
  struct XidItem {
    std::uint64_t epoch;
    Xid xid;
  };
  // Sends one batch; items of one batch share the first item's epoch (the
  // coordinator's epoch is fixed for its lifetime).
  // Votes the agent streams back early (VoteSink) go to `deliver`.
  kj::Promise<std::vector<PrepareReply>> sendPrepares(std::vector<PrepareItem>&& items,
                                                      std::function<void(std::size_t, PrepareReply&&)> deliver);
  kj::Promise<std::vector<wire::BranchOutcome>> sendPhase2(bool commit, std::vector<XidItem>&& items);

  kj::AsyncIoContext& io_;
  const std::string name_;
  const std::string address_;
  kj::Own<RpcConnection> conn_;                       // null when not connected
  kj::Maybe<wire::Participant::Client> cap_;
  kj::Maybe<kj::ForkedPromise<void>> connecting_;
  std::uint64_t generation_ = 0;                      // bumped by reset()
  const LinkOptions opts_;
  kj::TaskSet tasks_;                                 // disconnect watchers
  // Declared after what they use: destroyed first.
  CallBatcher<PrepareItem, PrepareReply> prepares_;
  CallBatcher<XidItem, wire::BranchOutcome> commits_;
  CallBatcher<XidItem, wire::BranchOutcome> rollbacks_;
};

}  // namespace keel
