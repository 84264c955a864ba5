#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"

#include <kj/debug.h>

#include <algorithm>
#include <set>

#include "common/failpoint.h"
#include "common/log.h"
#include "common/wire.h"

namespace keel {

namespace {

// Shared by the calls of one prepare round: the first failure fulfils it.
struct FailSignal : public kj::Refcounted {
  explicit FailSignal(kj::Own<kj::PromiseFulfiller<void>> f) : fulfiller(kj::mv(f)) {}
  kj::Own<kj::PromiseFulfiller<void>> fulfiller;
};

using PrepReply = ParticipantLink::PrepareReply;

std::vector<OpResult> readResults(capnp::List<wire::OpResult>::Reader l) {
  std::vector<OpResult> out;
  out.reserve(l.size());
  for (auto r : l) out.push_back(readOpResult(r));
  return out;
}

std::string describe(const kj::Exception& e) {
  std::string d = e.getDescription().cStr();
  if (e.getType() == kj::Exception::Type::OVERLOADED && d.find("timed out") != std::string::npos) {
    return "no answer within the deadline";
  }
  return d;
}

}  // namespace

Coordinator::Coordinator(const CoordinatorConfig& cfg, kj::AsyncIoContext& io, WalStore& wal)
    : cfg_(cfg), io_(io), wal_(wal), tasks_(*this) {
  for (const auto& [name, addr] : cfg_.participants) {
    LinkOptions lo;
    lo.callDeadline = callDeadline();
    lo.maxBatch = cfg_.batchMax;
    lo.maxInFlight = cfg_.batchInFlight;
    links_[name] = std::make_unique<ParticipantLink>(io_, name, addr, lo);
  }
}

Coordinator::~Coordinator() = default;

void Coordinator::taskFailed(kj::Exception&& e) {
  KEEL_LOG_ERROR("background task failed: {}", e.getDescription().cStr());
}

ParticipantLink& Coordinator::link(const std::string& participant) {
  auto it = links_.find(participant);
  KJ_ASSERT(it != links_.end(), "participant validated before use", participant);
  return *it->second;
}

kj::Duration Coordinator::callDeadline() const { return cfg_.callTimeoutMs * kj::MILLISECONDS; }

kj::Duration Coordinator::backoff(std::uint32_t attempt) const {
  std::uint64_t ms = cfg_.retryInitialMs;
  for (std::uint32_t i = 1; i < attempt && ms < cfg_.retryMaxMs; ++i) ms *= 2;
  return std::min<std::uint64_t>(ms, cfg_.retryMaxMs) * kj::MILLISECONDS;
}

Coordinator::Interaction* Coordinator::find(std::uint64_t seq) {
  auto it = live_.find(seq);
  return it == live_.end() ? nullptr : it->second.get();
}

// ------------------------------------------------------------ validation

std::optional<std::string> Coordinator::validate(const std::vector<Op>& ops, bool allowEmpty) const {
  if (ops.empty() && !allowEmpty) return "the interaction has no operations";
  if (ops.size() > Limits::kMaxOpsPerInteraction) {
    return "the interaction has " + std::to_string(ops.size()) + " operations; the limit is " +
           std::to_string(Limits::kMaxOpsPerInteraction);
  }
  // Distinct participants, counted without allocating (a request names few).
  std::vector<std::string_view> participants;
  auto where = [](std::size_t i) { return "operation " + std::to_string(i + 1) + ": "; };
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    if (links_.count(op.participant) == 0) {
      return where(i) + "unknown participant '" + op.participant + "'";
    }
    if (std::find(participants.begin(), participants.end(), op.participant) == participants.end()) {
      participants.push_back(op.participant);
    }
    if (std::uint8_t(op.kind) > std::uint8_t(OpKind::Sql)) return where(i) + "unknown operation kind";
    if (op.kind == OpKind::Sql) {
      if (op.sql.empty()) return where(i) + "SQL statement is empty";
      if (op.sql.size() > Limits::kMaxSqlBytes) return where(i) + "SQL statement is longer than 64 KiB";
      if (op.params.size() > Limits::kMaxSqlParams) return where(i) + "more than 256 SQL parameters";
      if (op.expectRows < -1) return where(i) + "expected row count must be -1 (any) or >= 0";
      continue;
    }
    if (op.account.empty()) return where(i) + "account name is empty";
    if (op.account.size() > Limits::kMaxAccountName) return where(i) + "account name is too long";
    if (op.kind == OpKind::Credit || op.kind == OpKind::Debit) {
      if (op.amount <= 0) return where(i) + "amount must be positive, got " + std::to_string(op.amount);
    }
    if (op.kind == OpKind::OpenAccount && op.amount < 0) return where(i) + "opening balance must not be negative";
    if (op.amount > Limits::kMaxAmount) {
      return where(i) + "amount " + std::to_string(op.amount) + " exceeds the limit " +
             std::to_string(Limits::kMaxAmount);
    }
  }
  if (participants.size() > Limits::kMaxParticipants) return "too many participants in one interaction";
  return std::nullopt;
}

// ------------------------------------------------------------ records

Coordinator::Interaction& Coordinator::create(std::uint64_t seq, bool interactive, std::uint32_t deadlineMs) {
  auto it = std::make_unique<Interaction>();
  it->rec.seq = seq;
  it->rec.epoch = epoch_;
  it->rec.interactive = interactive;
  it->rec.createdUs = wallMicros();
  it->deadlineMs = deadlineMs == 0 ? cfg_.interactionTimeoutMs : deadlineMs;
  auto& ref = *it;
  live_[seq] = std::move(it);
  return ref;
}

std::vector<std::pair<std::size_t, std::size_t>> Coordinator::assign(Interaction& it, const std::vector<Op>& ops) {
  std::vector<std::pair<std::size_t, std::size_t>> idx;
  idx.reserve(ops.size());
  for (const Op& op : ops) {
    std::size_t b = 0;
    while (b < it.rec.branches.size() && it.rec.branches[b].participant != op.participant) ++b;
    if (b == it.rec.branches.size()) {
      InteractionRecord::Branch br;
      br.participant = op.participant;
      br.branch = std::uint16_t(b + 1);
      it.rec.branches.push_back(std::move(br));
      it.branchResults.emplace_back();
    }
    it.rec.branches[b].ops.push_back(op);
    idx.emplace_back(b, it.rec.branches[b].ops.size() - 1);
  }
  return idx;
}

kj::Promise<void> Coordinator::persist(Interaction& it, bool lazy) {
  return wal_.save(it.rec, it.rb ? &*it.rb : nullptr, lazy).catch_([this](kj::Exception&& e) -> kj::Promise<void> {
    if (std::string(e.getDescription().cStr()).find("MDB_MAP_FULL") != std::string::npos) {
      fullUntilUs_ = monoMicros() + 1'000'000;
    }
    return kj::mv(e);
  });
}

std::optional<std::string> Coordinator::storageFull() const {
  // New work is refused while the WAL is nearly full, so that what is in
  // flight can still finish (its writes need room too).
  double fill = wal_.fill();
  if (fill < kRefuseNewAtFill && monoMicros() >= fullUntilUs_) return std::nullopt;
  return "coordinator WAL is " + std::to_string(int(fill * 100)) + "% full (map_size_mb = " +
         std::to_string(wal_.mapSize() >> 20) + "): new interactions are refused until it is raised";
}

void Coordinator::answer(Interaction& it, ClientOutcome o, const std::string& reason) {
  if (it.answered || it.answer.get() == nullptr) return;
  it.answered = true;
  SubmitOutcome out;
  out.seq = it.rec.seq;
  out.outcome = o;
  out.reason = reason;
  if (o == ClientOutcome::Committed) {
    for (auto [b, i] : it.opIndex) {
      const auto& r = it.branchResults[b];
      out.results.push_back(i < r.size() ? r[i] : OpResult{});
    }
  }
  it.answer->fulfill(std::move(out));
}

// ------------------------------------------------------------ one-shot submit

kj::Promise<SubmitOutcome> Coordinator::submit(std::vector<Op> ops, std::uint32_t deadlineMs) {
  if (auto bad = validate(ops, false)) {
    return SubmitOutcome{0, ClientOutcome::Invalid, *bad, {}};  // nothing written, no seq used
  }
  if (auto full = storageFull()) return SubmitOutcome{0, ClientOutcome::Unavailable, *full, {}};
  return seqs_->next().then([this, ops = std::move(ops), deadlineMs](std::uint64_t seq) mutable {
    KEEL_FAILPOINT("coord.after_seq_assigned");
    auto& it = create(seq, false, deadlineMs);
    it.opIndex = assign(it, ops);
    auto paf = kj::newPromiseAndFulfiller<SubmitOutcome>();
    it.answer = kj::mv(paf.fulfiller);
    drive(it);
    return kj::mv(paf.promise);
  });
}

void Coordinator::drive(Interaction& it) {
  std::uint64_t seq = it.rec.seq;
  if (it.rec.branches.size() == 1) {
    // One-phase: the participant decides, so the record must be there for
    // recovery to ask it (written without waiting; recovery asks about every
    // unfinished one-phase record it finds).
    tasks_.add(persist(it));
    tasks_.add(guardFirstPhase(seq, kj::evalNow([&]() { return runOnePhase(it); })));
    return;
  }
  // Two-phase: nothing is written before the decision (presumed abort). The
  // first record is the COMMIT decision (forced) or the abort with its
  // rollback record. If we crash before either, there is nothing to redo:
  // the recovery sweep finds the agents' prepared branches, writes a record
  // saying so, and rolls them back. This saves one WAL write in three per
  // interaction, which under load is WAL volume (LMDB rewrites every page a
  // commit touches).
  std::vector<std::vector<Op>> ops;
  for (auto& b : it.rec.branches) ops.push_back(b.ops);
  tasks_.add(guardFirstPhase(
      seq, kj::evalNow([&]() { return prepareAll(it, std::move(ops)); }).then([this, seq](bool allYes) -> kj::Promise<void> {
        Interaction* p = find(seq);
        if (p == nullptr) return kj::READY_NOW;
        return decide(*p, allYes);
      })));
}

kj::Promise<void> Coordinator::guardFirstPhase(std::uint64_t seq, kj::Promise<void> work) {
  // A fault of our own before the decision is durable (an injected error, a
  // failed WAL write) must not leave the interaction hanging: abort it.
  return work.catch_([this, seq](kj::Exception&& e) {
    Interaction* p = find(seq);
    if (p == nullptr || p->rec.state == State::Aborting || p->answered) {
      KEEL_LOG_ERROR("seq {}: {}", seq, e.getDescription().cStr());
      return;
    }
    if (p->commitDurable) {
      // Past the durable decision the only way is forward.
      answer(*p, ClientOutcome::Committed, "");
      tasks_.add(driveCommit(seq));
      return;
    }
    std::string why = std::string("coordinator fault before the decision: ") + e.getDescription().cStr();
    KEEL_LOG_ERROR("seq {}: {}", seq, why);
    p->rec.decision = InteractionRecord::Decision::None;
    if (p->rec.onePhase) answer(*p, ClientOutcome::InDoubt, why + "; query seq " + std::to_string(seq));
    startAbort(*p, why);
  });
}

kj::Promise<void> Coordinator::guardDriver(std::uint64_t seq, kj::Promise<void> work, bool commit) {
  // Drivers never give up: a fault in one round is logged and retried.
  return work.catch_([this, seq, commit](kj::Exception&& e) -> kj::Promise<void> {
    KEEL_LOG_WARN("seq {}: {} driver round failed ({}); retrying", seq, commit ? "commit" : "rollback",
                  e.getDescription().cStr());
    return io_.provider->getTimer().afterDelay(backoff(3)).then([this, seq, commit]() {
      return commit ? driveCommit(seq) : driveRollback(seq);
    });
  });
}

kj::Promise<void> Coordinator::runOnePhase(Interaction& it) {
  std::uint64_t seq = it.rec.seq;
  it.rec.onePhase = true;
  auto& br = it.rec.branches[0];
  br.state = BState::Preparing;
  Xid xid{seq, br.branch};
  auto ops = br.ops;
  std::uint64_t epoch = epoch_;
  auto deadline = std::min(cfg_.callTimeoutMs, it.deadlineMs) * kj::MILLISECONDS;
  struct OnePhaseReply {
    wire::BranchOutcome outcome;
    std::string reason;
    std::vector<OpResult> results;
  };
  auto& l = link(br.participant);
  return kj::evalNow([&]() {
           KEEL_FAILPOINT("coord.before_prepare");
           return l.call<OnePhaseReply>(deadline, [=](wire::Participant::Client& c) {
                             auto req = c.commitOnePhaseRequest();
                             req.setEpoch(epoch);
                             fillXid(req.initXid(), xid);
                             fillOps(req.initOperations(ops.size()), ops);
                             return req.send().then([](auto resp) {
                               return OnePhaseReply{resp.getOutcome(), resp.getReason().cStr(),
                                                    readResults(resp.getResults())};
                             });
                           });
         })
      .then(
          [this, seq](OnePhaseReply r) -> kj::Promise<void> {
            Interaction* p = find(seq);
            if (p == nullptr) return kj::READY_NOW;
            auto& b = p->rec.branches[0];
            p->rec.votesUs = p->rec.decidedUs = wallMicros();
            if (r.outcome == wire::BranchOutcome::COMMITTED) {
              b.state = BState::Committed;
              p->rec.decision = InteractionRecord::Decision::Commit;
              p->branchResults[0] = std::move(r.results);
              answer(*p, ClientOutcome::Committed, "");
              return finish(seq);
            }
            if (r.outcome != wire::BranchOutcome::ROLLED_BACK) {
              // Not an answer a one-phase call may get: treat like a lost call.
              return kj::Promise<void>(KJ_EXCEPTION(FAILED, "one-phase commit answered", r.reason));
            }
            // The participant rolled the branch back itself.
            b.state = BState::VotedNo;
            b.reason = r.reason;
            startAbort(*p, b.participant + " refused: " + r.reason);
            return kj::READY_NOW;
          },
          [this, seq](kj::Exception&& e) -> kj::Promise<void> {
            Interaction* p = find(seq);
            if (p == nullptr) return kj::READY_NOW;
            auto& b = p->rec.branches[0];
            b.state = BState::Failed;
            b.reason = describe(e);
            // The participant decides a one-phase branch: we cannot say
            // "rolled back" until it confirms. The rollback driver asks it.
            answer(*p, ClientOutcome::InDoubt,
                   "one-phase call to " + b.participant + " failed (" + b.reason +
                       "); the participant decides, query seq " + std::to_string(seq));
            startAbort(*p, "one-phase call to " + b.participant + " failed: " + b.reason);
            return kj::READY_NOW;
          });
}

kj::Promise<bool> Coordinator::prepareAll(Interaction& it, std::vector<std::vector<Op>> opsPerBranch) {
  std::uint64_t seq = it.rec.seq;
  std::uint64_t epoch = epoch_;
  auto deadline = std::min(cfg_.callTimeoutMs, it.deadlineMs) * kj::MILLISECONDS;
  // "First NO or all YES": the round ends early on the first failure.
  auto failed = kj::newPromiseAndFulfiller<void>();
  auto failedFulfiller = kj::refcounted<FailSignal>(kj::mv(failed.fulfiller));
  kj::Vector<kj::Promise<void>> calls;
  for (std::size_t i = 0; i < it.rec.branches.size(); ++i) {
    auto& br = it.rec.branches[i];
    if (br.state == BState::VotedNo || br.state == BState::RolledBack) continue;
    br.state = BState::Preparing;
    Xid xid{seq, br.branch};
    auto ops = std::move(opsPerBranch[i]);
    auto onFail = kj::addRef(*failedFulfiller);
    auto& l = link(br.participant);
    calls.add(kj::evalNow([&]() {
                KEEL_FAILPOINT("coord.before_prepare");
                // Batched with the other prepares for this participant. The
                // batch message has the call deadline; a shorter interaction
                // deadline needs a timer of its own.
                auto vote = l.prepare(epoch, xid, kj::mv(ops));
                if (deadline >= callDeadline()) return vote;
                return io_.provider->getTimer().timeoutAfter(deadline, kj::mv(vote));
              })
                  .then(
                      [this, seq, i](PrepReply r) {
                        KEEL_FAILPOINT("coord.after_prepare");
                        Interaction* p = find(seq);
                        if (p == nullptr) return false;
                        auto& b = p->rec.branches[i];
                        b.reason = r.reason;
                        switch (r.vote) {
                          case wire::Vote::YES: b.state = BState::Prepared; break;
                          case wire::Vote::READ_ONLY: b.state = BState::ReadOnly; break;
                          default: b.state = BState::VotedNo; break;
                        }
                        if (!r.results.empty()) {
                          auto& dst = p->branchResults[i];
                          // interactive prepare carries no new ops: keep earlier results
                          std::size_t base = p->rec.branches[i].ops.size() - r.results.size();
                          dst.resize(p->rec.branches[i].ops.size());
                          for (std::size_t k = 0; k < r.results.size(); ++k) dst[base + k] = r.results[k];
                        }
                        return b.state != BState::VotedNo;
                      },
                      [this, seq, i](kj::Exception&& e) {
                        Interaction* p = find(seq);
                        if (p != nullptr) {
                          p->rec.branches[i].state = BState::Failed;
                          p->rec.branches[i].reason = describe(e);
                        }
                        return false;
                      })
                  .then([onFail = kj::mv(onFail)](bool ok) mutable {
                    if (!ok && onFail->fulfiller->isWaiting()) onFail->fulfiller->fulfill();
                  }));
  }
  return kj::joinPromises(calls.releaseAsArray())
      .exclusiveJoin(kj::mv(failed.promise))
      .attach(kj::mv(failedFulfiller))
      .then([this, seq]() {
        KEEL_FAILPOINT("coord.after_votes");
        Interaction* p = find(seq);
        if (p == nullptr) return false;
        p->rec.votesUs = wallMicros();
        for (auto& b : p->rec.branches) {
          if (b.state != BState::Prepared && b.state != BState::ReadOnly) return false;
        }
        return true;
      });
}

kj::Promise<void> Coordinator::decide(Interaction& it, bool allYes) {
  std::uint64_t seq = it.rec.seq;
  if (it.rec.state != State::Preparing) return kj::READY_NOW;  // an operator decided meanwhile
  if (!allYes) {
    std::string reason = "aborted";
    for (auto& b : it.rec.branches) {
      if (b.state == BState::VotedNo) {
        reason = b.participant + " voted no: " + b.reason;
        break;
      }
      if (b.state == BState::Failed) reason = b.participant + " failed: " + b.reason;
      if (b.state == BState::Preparing && reason == "aborted") reason = "prepare round ended early";
    }
    startAbort(it, reason);
    return kj::READY_NOW;
  }
  bool anyPrepared = std::any_of(it.rec.branches.begin(), it.rec.branches.end(),
                                 [](const auto& b) { return b.state == BState::Prepared; });
  if (!anyPrepared) {  // all read-only: nothing to decide
    answer(it, ClientOutcome::Committed, "");
    return finish(seq);
  }
  it.rec.decision = InteractionRecord::Decision::Commit;
  it.rec.state = State::Committing;
  it.rec.decidedUs = wallMicros();
  KEEL_FAILPOINT("coord.before_decision_durable");
  return persist(it).then(
      [this, seq]() {
        // The COMMIT decision is durable: only now may anyone hear "committed".
        Interaction* p = find(seq);
        if (p == nullptr) return;
        p->commitDurable = true;
        KEEL_FAILPOINT("coord.after_decision_durable");
        answer(*p, ClientOutcome::Committed, "");
        tasks_.add(driveCommit(seq));
      },
      [this, seq](kj::Exception&& e) {
        // The decision did not become durable, so it never existed: abort.
        Interaction* p = find(seq);
        if (p == nullptr) return;
        KEEL_LOG_ERROR("seq {}: COMMIT decision not durable ({}); aborting", seq, e.getDescription().cStr());
        p->rec.decision = InteractionRecord::Decision::None;
        startAbort(*p, std::string("coordinator could not log the commit decision: ") + e.getDescription().cStr());
      });
}

void Coordinator::startAbort(Interaction& it, const std::string& reason) {
  std::uint64_t seq = it.rec.seq;
  if (!it.rec.onePhase) it.rec.decision = InteractionRecord::Decision::Abort;
  it.rec.state = State::Aborting;
  it.rec.error = reason;
  if (it.rec.decidedUs == 0) it.rec.decidedUs = wallMicros();
  if (it.rec.failedUs == 0) it.rec.failedUs = wallMicros();
  if (!it.rb) {
    RollbackRecord rb;
    rb.seq = seq;
    rb.reason = reason;
    rb.requestedUs = wallMicros();
    it.rb = std::move(rb);
  }
  std::set<std::string> pending(it.rb->pending.begin(), it.rb->pending.end());
  for (auto& b : it.rec.branches) {
    switch (b.state) {
      case BState::VotedNo:  // the agent rolled it back itself when voting
        b.state = BState::RolledBack;
        it.rb->confirmed.push_back({b.participant, wallMicros()});
        break;
      case BState::Committed:  // only after an operator's override: say so
        if (it.rec.error.find("HEURISTIC") == std::string::npos) {
          it.rec.error += "; HEURISTIC: " + b.participant + " had already committed";
        }
        break;
      case BState::Pending:  // may have been sent just before a crash
      case BState::Prepared:
      case BState::Preparing:
      case BState::Failed:
        pending.insert(b.participant);
        break;
      default:
        break;
    }
  }
  it.rb->pending.assign(pending.begin(), pending.end());
  // The client hears "rolled back" once the rollback record is durable, so
  // the story it may look up exists even if we crash right after (a
  // two-phase interaction has no earlier record: nothing is written before
  // its decision). The rollback itself starts at once.
  tasks_.add(persist(it).then(
      [this, seq, reason]() {
        if (Interaction* p = find(seq)) answer(*p, ClientOutcome::RolledBack, reason);
      },
      [this, seq, reason](kj::Exception&& e) {
        // Still rolled back (presumed abort); only the record may be missing.
        KEEL_LOG_ERROR("seq {}: rollback record not written ({})", seq, e.getDescription().cStr());
        if (Interaction* p = find(seq)) answer(*p, ClientOutcome::RolledBack, reason);
      }));
  tasks_.add(driveRollback(seq));
}

// ------------------------------------------------------------ phase 2 and rollback drivers

kj::Promise<void> Coordinator::driveCommit(std::uint64_t seq) {
  Interaction* it = find(seq);
  if (it == nullptr || it->rec.state != State::Committing) return kj::READY_NOW;
  std::uint64_t epoch = epoch_;
  kj::Vector<kj::Promise<void>> calls;
  for (std::size_t i = 0; i < it->rec.branches.size(); ++i) {
    auto& br = it->rec.branches[i];
    if (br.state != BState::Prepared && br.state != BState::Preparing && br.state != BState::Failed) continue;
    Xid xid{seq, br.branch};
    auto& l = link(br.participant);
    calls.add(kj::evalNow([&]() {
                KEEL_FAILPOINT("coord.before_phase2");
                // Batched with the other commits for this participant; bounded
                // by the batch message's call deadline (no timer per branch).
                return l.commit(epoch, xid);
              })
                  .then(
                      [this, seq, i](wire::BranchOutcome o) {
                        KEEL_FAILPOINT("coord.after_phase2");
                        Interaction* p = find(seq);
                        if (p == nullptr) return;
                        auto& b = p->rec.branches[i];
                        if (o == wire::BranchOutcome::COMMITTED) {
                          b.state = BState::Committed;
                          b.reason.clear();
                        } else {
                          // The agent cannot commit what we decided: a heuristic
                          // outcome that needs an operator. Stop retrying it.
                          b.reason = std::string("commit answered ") +
                                     (o == wire::BranchOutcome::UNKNOWN       ? "unknown branch"
                                      : o == wire::BranchOutcome::CONFLICT    ? "conflict (branch was rolled back)"
                                                                              : "not prepared");
                          p->rec.error = "HEURISTIC: " + b.participant + " " + b.reason;
                          KEEL_LOG_ERROR("seq {}: {}", seq, p->rec.error);
                          b.state = BState::RolledBack;  // not retried: needs an operator
                        }
                      },
                      [this, seq, i](kj::Exception&& e) {
                        Interaction* p = find(seq);
                        if (p == nullptr) return;
                        p->rec.branches[i].reason = "commit failed: " + describe(e);
                        if (p->rec.failedUs == 0) p->rec.failedUs = wallMicros();
                        watch(p->rec.branches[i].participant);
                      }));
  }
  it->rec.phase2Attempts++;
  return guardDriver(seq, kj::joinPromises(calls.releaseAsArray()).then([this, seq]() -> kj::Promise<void> {
    Interaction* p = find(seq);
    if (p == nullptr) return kj::READY_NOW;
    bool done = std::none_of(p->rec.branches.begin(), p->rec.branches.end(), [](const auto& b) {
      return b.state == BState::Prepared || b.state == BState::Preparing || b.state == BState::Failed;
    });
    if (done) return finish(seq);
    tasks_.add(persist(*p));  // record the attempt; not forced
    return pause(*p, backoff(p->rec.phase2Attempts)).then([this, seq]() { return driveCommit(seq); });
  }), true);
}

kj::Promise<void> Coordinator::driveRollback(std::uint64_t seq) {
  Interaction* it = find(seq);
  if (it == nullptr || !it->rb || it->rec.state != State::Aborting) return kj::READY_NOW;
  if (it->rb->pending.empty()) return finish(seq);
  std::uint64_t epoch = epoch_;
  it->rb->attempts++;
  it->rb->lastAttemptUs = wallMicros();
  kj::Vector<kj::Promise<void>> calls;
  for (const std::string& participant : it->rb->pending) {
    std::vector<Xid> xids;
    for (auto& b : it->rec.branches) {
      if (b.participant == participant) xids.push_back(Xid{seq, b.branch});
    }
    // One call per branch, batched with the other rollbacks for this participant.
    auto& l = link(participant);
    kj::Vector<kj::Promise<wire::BranchOutcome>> perXid;
    for (Xid xid : xids) perXid.add(l.rollback(epoch, xid));
    calls.add(kj::joinPromises(perXid.releaseAsArray())  // bounded by the batch messages' deadline
                  .then(
                      [this, seq, participant](kj::Array<wire::BranchOutcome> outs) {
                        Interaction* p = find(seq);
                        if (p == nullptr) return;
                        bool committed = std::any_of(outs.begin(), outs.end(), [](auto o) {
                          return o == wire::BranchOutcome::COMMITTED;
                        });
                        for (auto& b : p->rec.branches) {
                          if (b.participant != participant) continue;
                          b.state = committed ? BState::Committed : BState::RolledBack;
                        }
                        if (committed) {
                          if (p->rec.onePhase) {
                            // The participant had committed the one-phase branch.
                            p->rec.decision = InteractionRecord::Decision::Commit;
                            p->rb->lastError = participant + " had already committed (one-phase)";
                          } else {
                            p->rec.error = "HEURISTIC: " + participant + " committed a branch of an aborted interaction";
                            KEEL_LOG_ERROR("seq {}: {}", seq, p->rec.error);
                          }
                        }
                        auto& pend = p->rb->pending;
                        pend.erase(std::remove(pend.begin(), pend.end(), participant), pend.end());
                        p->rb->confirmed.push_back({participant, wallMicros()});
                      },
                      [this, seq, participant](kj::Exception&& e) {
                        Interaction* p = find(seq);
                        if (p != nullptr) p->rb->lastError = participant + ": " + describe(e);
                        watch(participant);
                      }));
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

void Coordinator::watch(const std::string& participant) {
  if (!probing_.insert(participant).second) return;  // already probing
  tasks_.add(probe(link(participant)));
}

kj::Promise<void> Coordinator::probe(ParticipantLink& l) {
  auto every = cfg_.probeMs * kj::MILLISECONDS;
  return io_.provider->getTimer()
      .afterDelay(every)
      .then([this, &l]() {
        // A real call, not just a TCP connect: a paused process accepts
        // connections but answers nothing.
        return l.call<bool>(std::max(callDeadline() / 4, 50 * kj::MILLISECONDS), [](wire::Participant::Client& c) {
          auto req = c.statusRequest();
          req.initXids(0);
          return req.send().then([](auto) { return true; });
        });
      })
      .then(
          [this, &l](bool) -> kj::Promise<void> {
            probing_.erase(l.name());
            std::uint32_t n = wakeWaitingOn(l.name());
            KEEL_LOG_INFO("{} answers again: woke {} driver(s) waiting on it", l.name(), n);
            return kj::READY_NOW;
          },
          [this, &l](kj::Exception&&) { return probe(l); });
}

std::uint32_t Coordinator::wakeWaitingOn(const std::string& participant) {
  std::uint32_t woken = 0;
  for (auto& [seq, it] : live_) {
    bool waits = false;
    if (it->rb && it->rec.state == State::Aborting) {
      waits = std::find(it->rb->pending.begin(), it->rb->pending.end(), participant) != it->rb->pending.end();
    } else if (it->rec.state == State::Committing) {
      for (auto& b : it->rec.branches) {
        waits = waits || (b.participant == participant && b.state != BState::Committed &&
                          b.state != BState::ReadOnly && b.state != BState::RolledBack);
      }
    }
    if (waits && it->wake.get() != nullptr && it->wake->isWaiting()) {
      it->wake->fulfill();
      ++woken;
    }
  }
  return woken;
}

kj::Promise<void> Coordinator::finish(std::uint64_t seq) {
  Interaction* it = find(seq);
  if (it == nullptr) return kj::READY_NOW;
  KEEL_FAILPOINT("coord.before_complete");
  Micros now = wallMicros();
  bool committed = it->rec.decision == InteractionRecord::Decision::Commit ||
                   (it->rec.decision == InteractionRecord::Decision::None && !it->rb);
  it->rec.state = committed ? State::Committed : State::RolledBack;
  it->rec.completedUs = now;
  // Normally answered long before; never leave a client without one.
  answer(*it, committed ? ClientOutcome::Committed : ClientOutcome::RolledBack, it->rec.error);
  if (it->rb) it->rb->completedUs = now;
  ++(committed ? committed_ : rolledBack_);
  // Not forced, and lazy: a lost "complete" mark only means recovery
  // re-drives an interaction whose participants answer idempotently, so it
  // rides with the next group commit instead of starting one (a forced
  // decision never waits behind an fsync for completions). The interaction
  // stays in memory until its final record is durable.
  return persist(*it, true).then([this, seq]() { live_.erase(seq); });
}

// ------------------------------------------------------------ interactive

kj::Promise<std::uint64_t> Coordinator::begin(std::uint32_t deadlineMs) {
  if (auto full = storageFull()) return KJ_EXCEPTION(OVERLOADED, *full);
  return seqs_->next().then([this, deadlineMs](std::uint64_t seq) {
    KEEL_FAILPOINT("coord.after_seq_assigned");
    auto& it = create(seq, true, deadlineMs);
    tasks_.add(persist(it));
    tasks_.add(io_.provider->getTimer().afterDelay(it.deadlineMs * kj::MILLISECONDS).then([this, seq]() {
      Interaction* p = find(seq);
      if (p != nullptr && !p->closing && p->rec.state == State::Preparing) {
        p->closing = true;
        startAbort(*p, "interaction deadline of " + std::to_string(p->deadlineMs) + " ms exceeded");
      }
    }));
    return seq;
  });
}

kj::Promise<SubmitOutcome> Coordinator::execute(std::uint64_t seq, std::vector<Op> ops) {
  Interaction* it = find(seq);
  if (it == nullptr || it->closing || it->rec.state != State::Preparing) {
    return SubmitOutcome{seq, ClientOutcome::Invalid, "interaction " + std::to_string(seq) + " is not open", {}};
  }
  std::size_t existing = 0;
  for (auto& b : it->rec.branches) existing += b.ops.size();
  if (auto bad = validate(ops, false)) return SubmitOutcome{seq, ClientOutcome::Invalid, *bad, {}};
  if (existing + ops.size() > Limits::kMaxOpsPerInteraction) {
    return SubmitOutcome{seq, ClientOutcome::Invalid, "too many operations in one interaction", {}};
  }
  auto idx = assign(*it, ops);
  // Ops for each touched branch, in order.
  std::map<std::size_t, std::vector<Op>> perBranch;
  for (std::size_t k = 0; k < ops.size(); ++k) perBranch[idx[k].first].push_back(ops[k]);
  std::uint64_t epoch = epoch_;
  auto deadline = std::min(cfg_.callTimeoutMs, it->deadlineMs) * kj::MILLISECONDS;
  kj::Vector<kj::Promise<kj::Maybe<std::string>>> calls;
  for (auto& [b, bops] : perBranch) {
    auto& br = it->rec.branches[b];
    br.state = BState::Preparing;
    Xid xid{seq, br.branch};
    std::string name = br.participant;
    calls.add(link(name)
                  .call<PrepReply>(deadline,
                                   [=, bops = bops](wire::Participant::Client& c) {
                                     auto req = c.executeRequest();
                                     req.setEpoch(epoch);
                                     fillXid(req.initXid(), xid);
                                     fillOps(req.initOperations(bops.size()), bops);
                                     return req.send().then([](auto resp) {
                                       return PrepReply{resp.getOk() ? wire::Vote::YES : wire::Vote::NO,
                                                        resp.getReason().cStr(), readResults(resp.getResults()), ""};
                                     });
                                   })
                  .then(
                      [this, seq, b = b, name](PrepReply r) -> kj::Maybe<std::string> {
                        Interaction* p = find(seq);
                        if (p == nullptr) return std::string("interaction ended");
                        if (r.vote != wire::Vote::YES) {
                          p->rec.branches[b].state = BState::VotedNo;
                          p->rec.branches[b].reason = r.reason;
                          return name + " refused: " + r.reason;
                        }
                        auto& dst = p->branchResults[b];
                        std::size_t base = p->rec.branches[b].ops.size() - r.results.size();
                        dst.resize(p->rec.branches[b].ops.size());
                        for (std::size_t k = 0; k < r.results.size(); ++k) dst[base + k] = r.results[k];
                        return nullptr;
                      },
                      [this, seq, b = b, name](kj::Exception&& e) -> kj::Maybe<std::string> {
                        Interaction* p = find(seq);
                        if (p != nullptr) {
                          p->rec.branches[b].state = BState::Failed;
                          p->rec.branches[b].reason = describe(e);
                        }
                        return name + " failed: " + describe(e);
                      }));
  }
  tasks_.add(persist(*it));
  return kj::joinPromises(calls.releaseAsArray())
      .then([this, seq, idx = std::move(idx)](kj::Array<kj::Maybe<std::string>> errs) {
        Interaction* p = find(seq);
        if (p == nullptr) return SubmitOutcome{seq, ClientOutcome::RolledBack, "interaction ended", {}};
        for (auto& e : errs) {
          KJ_IF_MAYBE(msg, e) {
            p->closing = true;
            std::string m = *msg;
            startAbort(*p, m);
            return SubmitOutcome{seq, ClientOutcome::RolledBack, m, {}};
          }
        }
        SubmitOutcome out{seq, ClientOutcome::Committed, "", {}};  // "ok so far"
        for (auto [b, i] : idx) out.results.push_back(p->branchResults[b][i]);
        return out;
      });
}

kj::Promise<SubmitOutcome> Coordinator::commitInteractive(std::uint64_t seq) {
  Interaction* it = find(seq);
  if (it == nullptr || it->closing) {
    return SubmitOutcome{seq, ClientOutcome::Invalid, "interaction " + std::to_string(seq) + " is not open", {}};
  }
  it->closing = true;
  auto paf = kj::newPromiseAndFulfiller<SubmitOutcome>();
  it->answer = kj::mv(paf.fulfiller);
  if (it->rec.branches.empty()) {
    answer(*it, ClientOutcome::Committed, "");
    tasks_.add(finish(seq));
    return kj::mv(paf.promise);
  }
  std::vector<std::vector<Op>> none(it->rec.branches.size());
  tasks_.add(guardFirstPhase(
      seq, kj::evalNow([&]() { return prepareAll(*it, std::move(none)); }).then([this, seq](bool allYes) -> kj::Promise<void> {
        Interaction* p = find(seq);
        if (p == nullptr) return kj::READY_NOW;
        return decide(*p, allYes);
      })));
  return kj::mv(paf.promise);
}

kj::Promise<SubmitOutcome> Coordinator::rollbackInteractive(std::uint64_t seq, std::string reason) {
  Interaction* it = find(seq);
  if (it == nullptr || it->closing) {
    return SubmitOutcome{seq, ClientOutcome::Invalid, "interaction " + std::to_string(seq) + " is not open", {}};
  }
  it->closing = true;
  startAbort(*it, reason);
  return SubmitOutcome{seq, ClientOutcome::RolledBack, reason, {}};
}

void Coordinator::abandon(std::uint64_t seq) {
  Interaction* it = find(seq);
  if (it != nullptr && !it->closing) {
    it->closing = true;
    startAbort(*it, "the client dropped the transaction before committing");
  }
}

// ------------------------------------------------------------ reads

std::optional<StoredInteraction> Coordinator::query(std::uint64_t seq) const {
  auto it = live_.find(seq);
  if (it != live_.end()) {
    // In memory state is newer than the WAL for unfinished interactions.
    StoredInteraction s;
    s.interaction = encode(it->second->rec);
    if (it->second->rb) s.rollback = encode(*it->second->rb);
    return s;
  }
  return wal_.get(seq);
}

std::vector<std::string> Coordinator::listUnfinished(std::size_t limit) const {
  std::vector<std::string> out;
  for (auto& [seq, it] : live_) {
    if (out.size() >= limit) break;
    out.push_back(encode(it->rec));
  }
  return out;
}

Coordinator::Info Coordinator::info() const {
  Info i{cfg_.nodeId, epoch_, {}, committed_, rolledBack_, live_.size()};
  for (auto& [name, l] : links_) i.participants.push_back(name);
  return i;
}

}  // namespace keel
