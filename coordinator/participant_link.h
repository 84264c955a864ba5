#pragma once
// ParticipantLink: the coordinator's connection to one participant agent,
// and the only coordinator code that speaks the participant's wire protocol.
// The coordinator calls it with Keel's own types (common/types.h,
// coordinator/replies.h) and never sees a Cap'n Proto message.
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
//
// Every reply is read through coordinator/replies.h: a malformed one fails
// that call (logged once per participant and kind of fault), exactly like a
// call that got no answer.
//
// Health: the link knows whether the participant answers. The first call
// that finds it silent (connection refused or lost, no answer in time) marks
// it down, the first answer after that marks it up again; each change is
// reported once through the health callback (the coordinator logs it with
// the number of interactions waiting on it).

#include <kj/async-io.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "common/call_batcher.h"
#include "common/rpc.h"
#include "common/statements.h"
#include "common/types.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/replies.h"
#include "schemas/keel.capnp.h"

namespace keel {

struct LinkOptions {
  kj::Duration callDeadline = 2 * kj::SECONDS;  // of one batch message
  std::size_t maxBatch = 256;                  // calls per message
  std::size_t maxInFlight = 2;                 // batch messages out at once per kind
};

// What a fault means to a person reading a reason or a log: no KJ internals,
// no source text.
std::string describeFault(const kj::Exception& e);

class ParticipantLink final : private kj::TaskSet::ErrorHandler {
 public:
  ParticipantLink(kj::AsyncIoContext& io, std::string name, std::string address, LinkOptions opts = {});
  ~ParticipantLink() noexcept(false);  // logs how well calls were batched

  // Batched protocol calls (see above). Each rejects on a fault: the batch's
  // message failed, its reply was malformed, or this item failed on the agent.
  kj::Promise<PrepareReply> prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops);
  // hostTxid: what the branch's YES vote carried (0 = none), sent back.
  kj::Promise<BranchOutcome> commit(std::uint64_t epoch, Xid xid, std::uint64_t hostTxid = 0);
  kj::Promise<BranchOutcome> rollback(std::uint64_t epoch, Xid xid);

  // Unbatched calls, each with its own deadline.
  // Interactive work in an ACTIVE branch (no vote): vote Yes = done.
  kj::Promise<PrepareReply> execute(std::uint64_t epoch, Xid xid, std::vector<Op> ops, kj::Duration deadline);
  kj::Promise<OnePhaseReply> commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops,
                                            kj::Duration deadline);
  // The participant's unfinished branches of coordinator `node` (and others').
  kj::Promise<std::vector<RecoveredBranch>> recover(std::uint64_t epoch, std::uint16_t node, kj::Duration deadline);
  // Every branch record the participant holds for `seq`, finished ones
  // included (listBranches from seq.0): the evidence a restored
  // coordinator decides by (Coordinator::settleRestored).
  // belowFloor: the seq is below its node's release floor there, so a
  // branch of it that is not listed was finished and released.
  struct SeqRecords {
    std::vector<RecoveredBranch> branches;
    bool belowFloor = false;
  };
  kj::Promise<SeqRecords> branchesOf(std::uint64_t seq, kj::Duration deadline);
  // This node's release floor (Participant.release; Coordinator::release).
  struct ReleaseReply {
    std::uint32_t dropped = 0;
    bool more = false;
    std::uint64_t floor = 0;  // the floor in force at the participant
  };
  kj::Promise<ReleaseReply> release(std::uint64_t epoch, std::uint16_t node, std::uint64_t floor,
                                    const std::vector<std::uint64_t>& keep, kj::Duration deadline);
  // A real call, not just a TCP connect: a paused process accepts
  // connections but answers nothing.
  kj::Promise<void> probe(kj::Duration deadline);

  const std::string& name() const { return name_; }
  const std::string& address() const { return address_; }

  // Health (see above). `up` is true until a call finds the participant silent.
  bool up() const { return up_; }
  Micros downSinceUs() const { return downSinceUs_; }
  // Called once per change of `up` (on the event loop): (up, why).
  void onHealthChange(std::function<void(bool, const std::string&)> fn) { healthChanged_ = std::move(fn); }
  // Where its calls, batch sizes and health are counted for /metrics
  // (coordinator_metrics.h); null: not counted. Outlives the link.
  void setMetrics(ParticipantMetrics* m) { metrics_ = m; }

  // Forgets the connection (the next call reconnects).
  void reset();
  // An embedded participant (participant/embedded.h): every call goes to
  // `cap`, in-process, instead of over a connection to address(). Before the
  // first call.
  void useLocal(wire::Participant::Client cap) { local_ = kj::mv(cap); }

  // The limits the participant asked for at connect (Participant.batching;
  // 0 = the coordinator's own). Phase-2 messages carry 8 × as many.
  void applyBatching(std::uint32_t maxBatch, std::uint32_t maxInFlight);
  std::size_t prepareBatchLimit() const { return prepares_.maxItems(); }
  // The statements the participant declared (Participant.statements, asked
  // at each connect); null while not connected or when it did not say.
  // What a client calls is checked against them (validateOps), the agent
  // checks again.
  const Statements* declaredStatements() const { return statements_ ? &*statements_ : nullptr; }
  std::size_t inFlightLimit() const { return prepares_.maxInFlight(); }
  // The participant said, at this connect, that every branch it votes YES
  // on is listed by listBranches before the vote leaves (Participant.batching):
  // a staged commit may rest on its votes. False while not connected, and
  // for an agent that did not say.
  bool preparedVisible() const { return preparedVisible_; }

 private:
  void taskFailed(kj::Exception&&) override {}

  // The participant's capability, connecting first if needed.
  kj::Promise<wire::Participant::Client> client();

  // Runs `fn(client)` with a deadline; a disconnect resets the link; a
  // malformed reply becomes a FAILED exception; health follows the outcome.
  template <typename T, typename Fn>
  kj::Promise<T> call(kj::Duration deadline, Fn&& fn);
  // A call ended: track health; returns the exception to pass on.
  kj::Exception failed(kj::Exception&& e);
  void answered();
  void markUp();

  struct PrepareItem {
    std::uint64_t epoch;
    Xid xid;
    std::vector<Op> ops;
  };
  struct XidItem {
    std::uint64_t epoch;
    Xid xid;
    std::uint64_t hostTxid = 0;  // commit: the branch's YES vote's (0 = none)
  };
  // Sends one batch; items of one batch share the first item's epoch (the
  // coordinator's epoch is fixed for its lifetime).
  // Votes the agent streams back early (VoteSink) go to `deliver`.
  kj::Promise<std::vector<PrepareReply>> sendPrepares(std::vector<PrepareItem>&& items,
                                                      std::function<void(std::size_t, PrepareReply&&)> deliver);
  kj::Promise<std::vector<BranchOutcome>> sendPhase2(bool commit, std::vector<XidItem>&& items);

  kj::AsyncIoContext& io_;
  const std::string name_;
  const std::string address_;
  std::optional<Statements> statements_;              // declared statements, while connected
  bool preparedVisible_ = false;                      // Participant.batching's, while connected
  kj::Own<RpcConnection> conn_;                       // null when not connected
  kj::Maybe<wire::Participant::Client> cap_;
  kj::Maybe<wire::Participant::Client> local_;        // embedded: the in-process capability
  kj::Maybe<kj::ForkedPromise<void>> connecting_;
  std::uint64_t generation_ = 0;                      // bumped by reset()
  const LinkOptions opts_;
  bool up_ = true;
  Micros downSinceUs_ = 0;
  ParticipantMetrics* metrics_ = nullptr;
  std::function<void(bool, const std::string&)> healthChanged_;
  std::set<std::string> malformedLogged_;             // kinds of malformed reply already logged
  kj::TaskSet tasks_;                                 // disconnect watchers
  // Declared after what they use: destroyed first.
  CallBatcher<PrepareItem, PrepareReply> prepares_;
  CallBatcher<XidItem, BranchOutcome> commits_;
  CallBatcher<XidItem, BranchOutcome> rollbacks_;
};

}  // namespace keel
