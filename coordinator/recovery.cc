// Coordinator recovery: an explicit state machine with a log line per phase.
//
//   1 open-wal     the WAL environment is open (WalStore constructor);
//                  records of unfinished work decode or start-up stops
//   2 bump-epoch   epoch+1 made durable: every call of this incarnation
//                  carries it, so agents can tell a stale coordinator
//   3 redrive      every interaction in `active` is re-driven:
//                    COMMIT decided      -> phase 2 again (commit is idempotent)
//                    ABORT decided       -> rollback driver
//                    no decision, 2PC    -> ABORT (presumed abort)
//                    no decision, 1PC    -> ask the participant via rollback:
//                                           it answers committed or rolled back
//   4 sweep        (background) every participant's unfinished branches:
//                  those of this node's earlier incarnations that the WAL
//                  does not list as live are settled by the WAL's outcome,
//                  or rolled back when the WAL never heard of them
//   5 serving      new interactions are accepted (from phase 4 on: seqs of
//                  this incarnation are above everything the sweep touches)
//
// Where it can get stuck: phase 1/2 on a damaged or full WAL (start-up fails
// with the key named); phase 4 retries an unreachable participant forever
// with capped backoff, while serving; see docs/recovery.md.

#include <algorithm>

#include "common/log.h"
#include "common/wire.h"
#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"

namespace keel {

struct RecoveredBranch {
  Xid xid;
  wire::BranchState state;
};

kj::Promise<void> Coordinator::recover() {
  KEEL_LOG_INFO("recovery 1/5 open-wal: node {} data {}", cfg_.nodeId, cfg_.dataDir);
  // Decode every unfinished record before the first write: a damaged one
  // (CorruptRecord) stops the start with the epoch and seq mark unchanged.
  auto unfinished = wal_.loadUnfinished();
  epoch_ = wal_.openIncarnation(cfg_.nodeId);
  seqs_ = wal_.makeSeqAllocator(cfg_.nodeId, cfg_.seqBlock);
  KEEL_LOG_INFO("recovery 2/5 bump-epoch: epoch {}, first seq of this incarnation {}", epoch_,
                seqs_->firstOfIncarnation());
  std::size_t commits = 0, aborts = 0;
  for (auto& u : unfinished) {
    (u.interaction.decision == InteractionRecord::Decision::Commit ? commits : aborts)++;
    redrive(std::move(u.interaction), std::move(u.rollback));
  }
  KEEL_LOG_INFO("recovery 3/5 redrive: {} unfinished interactions ({} to commit, {} to roll back)",
                unfinished.size(), commits, aborts);
  for (auto& [name, l] : links_) {
    ++sweepPending_;
    tasks_.add(sweep(*l, 0));
  }
  KEEL_LOG_INFO("recovery 4/5 sweep: asking {} participants for in-doubt branches (background)", links_.size());
  KEEL_LOG_INFO("recovery 5/5 serving");
  return kj::READY_NOW;
}

void Coordinator::redrive(InteractionRecord rec, std::optional<RollbackRecord> rb) {
  std::uint64_t seq = rec.seq;
  auto owned = std::make_unique<Interaction>();
  auto& it = *owned;
  it.rec = std::move(rec);
  it.rb = std::move(rb);
  it.deadlineMs = cfg_.interactionTimeoutMs;
  it.closing = true;
  it.answered = true;  // nobody is waiting for an answer any more
  live_[seq] = std::move(owned);
  // The crash (or whatever left it unfinished) happened after the last step
  // the record shows: the window of inconsistency counts from there.
  if (it.rec.failedUs == 0) it.rec.failedUs = std::max({it.rec.createdUs, it.rec.votesUs, it.rec.decidedUs});
  switch (it.rec.decision) {
    case InteractionRecord::Decision::Commit:
      it.rec.state = State::Committing;
      it.commitDurable = true;
      tasks_.add(driveCommit(seq));
      return;
    case InteractionRecord::Decision::Abort:
      startAbort(it, it.rec.error.empty() ? "aborted before the coordinator restarted" : it.rec.error);
      return;
    case InteractionRecord::Decision::None:
      startAbort(it, it.rec.onePhase
                         ? "coordinator restarted during a one-phase call: the participant's outcome is asked"
                         : "coordinator restarted before a decision (presumed abort)");
      return;
  }
}

kj::Promise<void> Coordinator::sweep(ParticipantLink& l, std::uint32_t attempt) {
  std::uint64_t epoch = epoch_;
  std::uint16_t node = cfg_.nodeId;
  return l
      .call<std::vector<RecoveredBranch>>(callDeadline(),
                                          [epoch, node](wire::Participant::Client& c) {
                                            auto req = c.recoverRequest();
                                            req.setEpoch(epoch);
                                            req.setNode(node);
                                            return req.send().then([](auto resp) {
                                              std::vector<RecoveredBranch> out;
                                              for (auto b : resp.getBranches()) {
                                                out.push_back({readXid(b.getXid()), b.getState()});
                                              }
                                              return out;
                                            });
                                          })
      .then(
          [this, &l](std::vector<RecoveredBranch> branches) -> kj::Promise<void> {
            std::size_t settled = 0;
            for (auto& b : branches) {
              if (Interaction* p = find(b.xid.seq)) {
                // A driver owns it; make sure it knows this branch (an
                // interaction first found at another participant may not).
                if (b.xid.seq < seqs_->firstOfIncarnation()) adoptBranch(*p, l.name(), b.xid);
                continue;
              }
              if (seqNode(b.xid.seq) != cfg_.nodeId) {
                KEEL_LOG_WARN("sweep: {} holds branch {} of another coordinator node {}; left alone", l.name(),
                              b.xid.str(), seqNode(b.xid.seq));
                continue;
              }
              if (b.xid.seq >= seqs_->firstOfIncarnation()) continue;  // this incarnation's work
              settleUnknownBranch(l, b.xid);
              ++settled;
            }
            --sweepPending_;
            KEEL_LOG_INFO("sweep: {} reported {} unfinished branches, {} settled from the WAL", l.name(),
                          branches.size(), settled);
            return kj::READY_NOW;
          },
          [this, &l, attempt](kj::Exception&& e) -> kj::Promise<void> {
            KEEL_LOG_WARN("sweep: {} unreachable ({}); retrying", l.name(), e.getDescription().cStr());
            return io_.provider->getTimer().afterDelay(backoff(attempt + 1)).then([this, &l, attempt]() {
              return sweep(l, attempt + 1);
            });
          });
}

void Coordinator::adoptBranch(Interaction& it, const std::string& participant, Xid xid) {
  for (auto& b : it.rec.branches) {
    if (b.participant == participant && b.branch == xid.branch) return;
  }
  InteractionRecord::Branch b;
  b.participant = participant;
  b.branch = xid.branch;
  b.state = BState::Prepared;
  it.rec.branches.push_back(std::move(b));
  it.branchResults.emplace_back();
  if (it.rb && std::find(it.rb->pending.begin(), it.rb->pending.end(), participant) == it.rb->pending.end()) {
    it.rb->pending.push_back(participant);
  }
  KEEL_LOG_INFO("sweep: {} joins interaction {} at {}", xid.str(), xid.seq, participant);
}

void Coordinator::settleUnknownBranch(ParticipantLink& l, Xid xid) {
  std::uint64_t seq = xid.seq;
  auto stored = wal_.get(seq);
  InteractionRecord rec;
  std::optional<RollbackRecord> rb;
  if (stored) {
    rec = decodeInteraction(stored->interaction);
    if (!stored->rollback.empty()) rb = decodeRollback(stored->rollback);
  } else {
    // The interaction record never became durable: no decision can exist.
    rec.seq = seq;
    rec.createdUs = wallMicros();
    rec.error = "branch found at " + l.name() + " by the recovery sweep; unknown to the WAL (presumed abort)";
  }
  bool known = false;
  for (auto& b : rec.branches) {
    if (b.participant == l.name() && b.branch == xid.branch) {
      known = true;
      b.state = BState::Prepared;
    }
  }
  if (!known) {
    InteractionRecord::Branch b;
    b.participant = l.name();
    b.branch = xid.branch;
    b.state = BState::Prepared;
    rec.branches.push_back(std::move(b));
  }
  if (rec.decision != InteractionRecord::Decision::Commit) {
    rec.decision = InteractionRecord::Decision::Abort;
    if (rb) {
      rb->completedUs = 0;
      rb->pending.push_back(l.name());
    }
  }
  KEEL_LOG_INFO("sweep: settling {} at {} by {}", xid.str(), l.name(),
                rec.decision == InteractionRecord::Decision::Commit ? "commit" : "rollback");
  redrive(std::move(rec), std::move(rb));
}

}  // namespace keel
