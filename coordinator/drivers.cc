// Coordinator: the background drivers. Phase 2 (commit every prepared
// branch) and the rollback driver (roll back every branch that may exist)
// retry with capped exponential backoff until every participant answered;
// a participant that stopped answering is probed, and its return wakes every
// driver waiting on it. What a participant answers is taken as the truth
// about its branch: an answer that contradicts the decision makes the
// interaction end heuristic (coordinator.cc, finalState), never retried
// forever and never folded into committed or rolled back.

#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"

#include <algorithm>

#include "common/failpoint.h"
#include "common/fault.h"
#include "common/log.h"

namespace keel {

kj::Promise<void> Coordinator::driveCommit(std::uint64_t seq) {
  Interaction* it = find(seq);
  if (it == nullptr || it->rec.state != State::Committing) return kj::READY_NOW;
  std::uint64_t epoch = epoch_;
  kj::Vector<kj::Promise<void>> calls;
  for (std::size_t i = 0; i < it->rec.branches.size(); ++i) {
    auto& br = it->rec.branches[i];
    if (!unsettled(br.state)) continue;
    Xid xid{seq, br.branch};
    auto& l = link(br.participant);
    calls.add(kj::evalNow([&]() {
                KEEL_FAILPOINT("coord.before_phase2");
                // Batched with the other commits for this participant; bounded
                // by the batch message's call deadline (no timer per branch).
                return l.commit(epoch, xid, it->txidsOnlyInMemory ? 0 : br.hostTxid);
              })
                  .then(
                      [this, seq, i](BranchOutcome o) {
                        KEEL_FAILPOINT("coord.after_phase2");
                        Interaction* p = find(seq);
                        if (p == nullptr) return;
                        auto& b = p->rec.branches[i];
                        switch (o) {
                          case BranchOutcome::Committed:
                            b.state = BState::Committed;
                            b.reason.clear();
                            return;
                          case BranchOutcome::Released:
                            // This node released the seq: the interaction was
                            // finished (under this same COMMIT decision) and
                            // archived before, by an incarnation whose WAL
                            // this one does not have (a restore from a backup).
                            b.state = BState::Committed;
                            b.reason = "committed before: the participant had released the branch (docs/protocol.md, \"Release\")";
                            return;
                          case BranchOutcome::Conflict:
                          case BranchOutcome::RolledBack:
                            // The participant rolled back what we decided to
                            // commit (a host's own action, or an operator's
                            // override): told as it is, not retried.
                            b.state = BState::RolledBack;
                            b.reason = "commit refused: the participant had rolled the branch back";
                            break;
                          case BranchOutcome::Unknown:
                            b.state = BState::Unknown;
                            b.reason = "commit answered unknown: the participant has no record of the branch";
                            break;
                          case BranchOutcome::NotPrepared:
                            b.state = BState::Unknown;
                            b.reason = "commit answered not prepared: the branch never voted at the participant";
                            break;
                        }
                        KEEL_LOG_ERROR("seq {}: HEURISTIC: {} {}", seqText(seq), b.participant, b.reason);
                      },
                      [this, seq, i](kj::Exception&& e) {
                        Interaction* p = find(seq);
                        if (p == nullptr) return;
                        p->rec.branches[i].reason = "commit failed: " + describeFault(e);
                        if (p->rec.failedUs == 0) p->rec.failedUs = wallMicros();
                        watch(p->rec.branches[i].participant);
                      })
                  .eagerlyEvaluate(nullptr));  // each branch's state as soon as it answers (see prepareAll)
  }
  // A one-phase interaction comes here once its participant committed
  // (runOnePhase) only to be finished: it has no phase 2 to count.
  if (!it->rec.onePhase && it->rec.phase2Attempts++ > 0) metrics_.phase2Retries.inc();
  return guardDriver(seq, kj::joinPromises(calls.releaseAsArray()).then([this, seq]() -> kj::Promise<void> {
    Interaction* p = find(seq);
    if (p == nullptr) return kj::READY_NOW;
    bool done = std::none_of(p->rec.branches.begin(), p->rec.branches.end(), [](const auto& b) { return unsettled(b.state); });
    if (done) return finish(seq);
    // Record the attempt; not forced. It also holds the votes' txids, which
    // later rounds may then send (see Interaction::txidsOnlyInMemory).
    tasks_.add(persist(*p).then([this, seq] {
      if (Interaction* q = find(seq)) q->txidsOnlyInMemory = false;
    }));
    return pause(*p, backoff(p->rec.phase2Attempts)).then([this, seq]() { return driveCommit(seq); });
  }), true);
}

kj::Promise<void> Coordinator::driveRollback(std::uint64_t seq) {
  Interaction* it = find(seq);
  if (it == nullptr || !it->rb || it->rec.state != State::Aborting) return kj::READY_NOW;
  if (it->rb->pending.empty()) return finish(seq);
  std::uint64_t epoch = epoch_;
  it->rb->attempts++;
  metrics_.rollbackAttempts.inc();
  it->rb->lastAttemptUs = wallMicros();
  kj::Vector<kj::Promise<void>> calls;
  for (const std::string& participant : it->rb->pending) {
    // Every branch this participant may hold (normally one), each its own
    // call, batched with the other rollbacks for this participant.
    std::vector<std::uint16_t> branches;
    for (auto& b : it->rec.branches) {
      if (b.participant == participant && unsettled(b.state)) branches.push_back(b.branch);
    }
    auto& l = link(participant);
    kj::Vector<kj::Promise<BranchOutcome>> perXid;
    for (auto n : branches) perXid.add(l.rollback(epoch, Xid{seq, n}));
    calls.add(kj::joinPromises(perXid.releaseAsArray())  // bounded by the batch messages' deadline
                  .then(
                      [this, seq, participant, branches](kj::Array<BranchOutcome> outs) {
                        Interaction* p = find(seq);
                        if (p == nullptr) return;
                        for (std::size_t k = 0; k < branches.size(); ++k) {
                          for (auto& b : p->rec.branches) {
                            if (b.participant != participant || b.branch != branches[k]) continue;
                            switch (outs[k]) {
                              case BranchOutcome::RolledBack:
                                b.state = BState::RolledBack;
                                break;
                              case BranchOutcome::Committed:
                                b.state = BState::Committed;
                                if (p->rec.onePhase) {
                                  // The participant had committed the one-phase branch: its decision.
                                  p->rec.decision = InteractionRecord::Decision::Commit;
                                  p->rb->lastError = participant + " had already committed (one-phase)";
                                } else {
                                  b.reason = "rollback refused: the participant had committed the branch";
                                  KEEL_LOG_ERROR("seq {}: HEURISTIC: {} {}", seqText(seq), participant, b.reason);
                                }
                                break;
                              case BranchOutcome::Released:
                                if (!p->rec.onePhase && p->rec.decision == InteractionRecord::Decision::Abort) {
                                  // Finished under this same ABORT decision before
                                  // (see driveCommit).
                                  b.state = BState::RolledBack;
                                  b.reason = "rolled back before: the participant had released the branch";
                                  break;
                                }
                                // A one-phase branch (its participant decided) or
                                // no ABORT of ours: how it ended is not known here.
                                b.state = BState::Unknown;
                                b.reason = "rollback answered released: the participant finished and released the "
                                           "branch before (this node finished the interaction earlier, e.g. before "
                                           "a restore from a backup); how it ended is not known here, nothing is held";
                                KEEL_LOG_ERROR("seq {}: HEURISTIC: {} {}", seqText(seq), participant, b.reason);
                                break;
                              default:
                                b.state = BState::Unknown;
                                b.reason = std::string("rollback answered ") + outcomeName(outs[k]);
                                KEEL_LOG_ERROR("seq {}: HEURISTIC: {} {}", seqText(seq), participant, b.reason);
                                break;
                            }
                          }
                        }
                        auto& pend = p->rb->pending;
                        pend.erase(std::remove(pend.begin(), pend.end(), participant), pend.end());
                        p->rb->confirmed.push_back({participant, wallMicros()});
                      },
                      [this, seq, participant](kj::Exception&& e) {
                        Interaction* p = find(seq);
                        if (p != nullptr) p->rb->lastError = participant + ": " + describeFault(e);
                        watch(participant);
                      })
                  .eagerlyEvaluate(nullptr));  // confirmed when it answers, not when the slowest does
  }
  return guardDriver(seq, kj::joinPromises(calls.releaseAsArray()).then([this, seq]() -> kj::Promise<void> {
    Interaction* p = find(seq);
    if (p == nullptr) return kj::READY_NOW;
    if (p->rb->pending.empty()) return finish(seq);
    tasks_.add(persist(*p));  // attempts and last error; not forced
    return pause(*p, backoff(p->rb->attempts)).then([this, seq]() { return driveRollback(seq); });
  }), false);
}

kj::Promise<void> Coordinator::pause(Interaction& it, kj::Duration d) {
  // Backoff that an operator's "retry now" cuts short.
  auto paf = kj::newPromiseAndFulfiller<void>();
  it.wake = kj::mv(paf.fulfiller);
  return io_.provider->getTimer().afterDelay(d).exclusiveJoin(kj::mv(paf.promise));
}

// ------------------------------------------------------------ participant health

void Coordinator::watch(const std::string& participant) {
  if (!probing_.insert(participant).second) return;  // already probing
  tasks_.add(probe(link(participant)));
}

kj::Promise<void> Coordinator::probe(ParticipantLink& l) {
  auto every = cfg_.probeMs * kj::MILLISECONDS;
  return io_.provider->getTimer()
      .afterDelay(every)
      .then([this, &l]() { return l.probe(std::max(callDeadline() / 4, 50 * kj::MILLISECONDS)); })
      .then(
          [this, &l]() -> kj::Promise<void> {
            probing_.erase(l.name());
            // It answers: the link reported it up (healthChanged woke the
            // drivers); wake any that started waiting since.
            wakeWaitingOn(l.name());
            return kj::READY_NOW;
          },
          [this, &l](kj::Exception&&) { return probe(l); });
}

void Coordinator::healthChanged(ParticipantLink& l, bool up, const std::string& why) {
  // Logged once per change; a participant flapping faster than once a
  // second logs the first change of each second only.
  Micros now = monoMicros();
  auto& last = lastDownLogUs_[l.name()];
  if (!up) {
    watch(l.name());
    if (last != 0 && now - last < 1'000'000) return;
    last = now;
    KEEL_LOG_WARN("{} ({}) stopped answering: {}; {} unfinished interaction(s) wait on it; probing every {} ms",
                  l.name(), l.address(), why, waitingOn(l.name()), cfg_.probeMs);
    return;
  }
  std::uint32_t woken = wakeWaitingOn(l.name());
  Micros downUs = l.downSinceUs() != 0 && wallMicros() > l.downSinceUs() ? wallMicros() - l.downSinceUs() : 0;
  KEEL_LOG_INFO("{} answers again after {:.1f} s: woke {} driver(s) waiting on it", l.name(), downUs / 1e6, woken);
}

std::size_t Coordinator::waitingOn(const std::string& participant) const {
  std::size_t n = 0;
  for (auto& [seq, it] : live_) {
    n += std::any_of(it->rec.branches.begin(), it->rec.branches.end(),
                     [&](const auto& b) { return b.participant == participant && unsettled(b.state); })
             ? 1
             : 0;
  }
  return n;
}

std::uint32_t Coordinator::wakeWaitingOn(const std::string& participant) {
  std::uint32_t woken = 0;
  for (auto& [seq, it] : live_) {
    bool waits = false;
    if (it->rb && it->rec.state == State::Aborting) {
      waits = std::find(it->rb->pending.begin(), it->rb->pending.end(), participant) != it->rb->pending.end();
    } else if (it->rec.state == State::Committing) {
      for (auto& b : it->rec.branches) waits = waits || (b.participant == participant && unsettled(b.state));
    }
    if (waits && it->wake.get() != nullptr && it->wake->isWaiting()) {
      it->wake->fulfill();
      ++woken;
    }
  }
  return woken;
}

}  // namespace keel
