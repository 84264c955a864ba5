// Coordinator: validation, one-shot submit, the first phase, the decision,
// abort and the end of an interaction. See coordinator.h for the map of
// files.

#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"
#include "coordinator/client_requests.h"

#include <kj/debug.h>

#include <algorithm>
#include <set>

#include "common/failpoint.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/statements.h"

namespace keel {

namespace {

// Shared by the calls of one prepare round: the first failure fulfils it.
struct FailSignal : public kj::Refcounted {
  explicit FailSignal(kj::Own<kj::PromiseFulfiller<void>> f) : fulfiller(kj::mv(f)) {}
  kj::Own<kj::PromiseFulfiller<void>> fulfiller;
};

bool readOnlyOps(const std::vector<Op>& ops) {
  return std::all_of(ops.begin(), ops.end(), [](const Op& op) { return op.kind == OpKind::ReadBalance; });
}

}  // namespace

Coordinator::Coordinator(const CoordinatorConfig& cfg, kj::AsyncIoContext& io, WalStore& wal, ClusterMember* cluster)
    : cfg_(cfg),
      io_(io),
      wal_(wal),
      archive_(std::make_unique<Archive>(wal.dir() + "/archive", cfg.archiveMapSizeMb << 20)),
      cluster_(cluster),
      tasks_(*this) {
  wal_.setArchive(archive_.get());
  for (const auto& [name, addr] : cfg_.participants) {
    auto l = std::make_unique<ParticipantLink>(io_, name, addr, linkOptions());
    auto& m = metrics_.participants[name];
    m = std::make_unique<ParticipantMetrics>();
    l->setMetrics(m.get());
    l->onHealthChange([this, raw = l.get()](bool up, const std::string& why) { healthChanged(*raw, up, why); });
    links_[name] = std::move(l);
  }
}

Coordinator::~Coordinator() {
  life_.reset();
  wal_.setArchive(nullptr);  // the WAL may outlive this coordinator (tests)
}

void Coordinator::taskFailed(kj::Exception&& e) { KEEL_LOG_ERROR("background task failed: {}", describeFault(e)); }

void Coordinator::serveEmbedded(const std::string& participant, wire::Participant::Client cap,
                                wire::Participant::Client operatorView) {
  auto it = links_.find(participant);
  KJ_REQUIRE(it != links_.end() && isEmbedded(it->second->address()), "not an embedded participant", participant);
  it->second->useLocal(kj::mv(cap));
  embeddedOperatorViews_.insert_or_assign(participant, kj::mv(operatorView));
}

std::optional<wire::Participant::Client> Coordinator::embeddedOperatorView(const std::string& participant) {
  auto it = embeddedOperatorViews_.find(participant);
  if (it == embeddedOperatorViews_.end()) return std::nullopt;
  return it->second;
}

ParticipantLink& Coordinator::link(const std::string& participant) {
  auto it = links_.find(participant);
  KJ_ASSERT(it != links_.end(), "participant validated before use", participant);
  return *it->second;
}

kj::Duration Coordinator::callDeadline() const { return cfg_.callTimeoutMs * kj::MILLISECONDS; }

LinkOptions Coordinator::linkOptions() const {
  LinkOptions lo;
  lo.callDeadline = callDeadline();
  lo.maxBatch = cfg_.batchMax;
  lo.maxInFlight = cfg_.batchInFlight;
  return lo;
}

std::uint32_t Coordinator::effectiveDeadline(std::uint32_t askedMs) const {
  if (askedMs == 0) return cfg_.interactionTimeoutMs;
  return std::min(askedMs, cfg_.maxInteractionMs);  // nobody holds escrow longer than the operator allows
}

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
  return validateOps(
      ops, allowEmpty, [this](const std::string& p) { return links_.count(p) != 0; },
      [this](const std::string& p) -> const Statements* {
        auto it = links_.find(p);
        return it == links_.end() ? nullptr : it->second->declaredStatements();
      });
}

// ------------------------------------------------------------ records

Coordinator::Interaction& Coordinator::create(std::uint64_t seq, bool interactive, const SubmitRequest& req,
                                              std::uint64_t fingerprint) {
  auto it = std::make_unique<Interaction>();
  it->rec.seq = seq;
  it->rec.epoch = epoch_;
  it->rec.interactive = interactive;
  it->rec.createdUs = wallMicros();
  it->startedMono = monoMicros();
  it->deadlineMs = effectiveDeadline(req.deadlineMs);
  it->rec.deadlineMs = it->deadlineMs;
  it->rec.requestId = req.requestId;
  it->rec.requestTimeUs = req.requestTimeUs;
  it->fingerprint = fingerprint;
  auto& ref = *it;
  live_[seq] = std::move(it);
  if (!ref.rec.requestId.empty()) bindRequest(ref);
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
  // The request id's row rides with the interaction's first write: the
  // decision, the abort, or a one-phase / interactive record. No write of
  // its own, and never a forced one more.
  std::optional<RequestRecord> request;
  if (!it.rec.requestId.empty() && !it.requestQueued) {
    it.requestQueued = true;
    request = RequestRecord{it.rec.seq, it.fingerprint, it.rec.requestTimeUs, wallMicros()};
  }
  std::uint64_t seq = it.rec.seq;
  bool withRequest = request.has_value();
  return wal_.save(it.rec, it.rb ? &*it.rb : nullptr, lazy, request ? &*request : nullptr)
      .catch_([this, seq, withRequest](kj::Exception&& e) -> kj::Promise<void> {
        if (std::string(e.getDescription().cStr()).find("MDB_MAP_FULL") != std::string::npos) {
          fullUntilUs_ = monoMicros() + 1'000'000;
        }
        if (withRequest) {
          if (Interaction* p = find(seq)) p->requestQueued = false;  // the next write carries it
        }
        return kj::mv(e);
      });
}

std::optional<std::string> Coordinator::storageFull() const {
  // New work is refused while the WAL is nearly full or short of room
  // (GroupCommitLog::roomRefusal), so that what is in flight can still
  // finish, and for a second after a write met a full map.
  if (auto why = wal_.log().roomRefusal()) return "coordinator WAL is " + *why;
  if (monoMicros() >= fullUntilUs_) return std::nullopt;
  return "coordinator WAL: a write has just met a full map (map_size_mb = " + std::to_string(wal_.mapSize() >> 20) +
         "): new interactions are refused for a second; raise map_size_mb";
}

void Coordinator::answer(Interaction& it, ClientOutcome o, const std::string& reason) {
  if (!it.told) {
    SubmitOutcome out;
    out.seq = it.rec.seq;
    out.outcome = o;
    out.reason = reason;
    out.requestId = it.rec.requestId;
    it.told = out;  // kept without results: a retry hears the outcome, not the results again
    metrics_.answers[std::size_t(o)].inc();
    if (it.startedMono != 0) metrics_.submitToAnswer->observe(monoMicros() - it.startedMono);
    if (o == ClientOutcome::Committed) {
      out.results.reserve(it.opIndex.size());
      for (auto [b, i] : it.opIndex) {
        const auto& r = it.branchResults[b];
        out.results.push_back(i < r.size() ? r[i] : OpResult{});
      }
    }
    if (it.answer.get() != nullptr && it.answer->isWaiting()) it.answer->fulfill(kj::mv(out));
  }
  if (it.replays.empty()) return;
  // Retries of the request id hear a definitive outcome only: "in doubt"
  // keeps them waiting for the participant's answer.
  if (it.told->outcome == ClientOutcome::InDoubt && !it.rec.finished()) return;
  for (auto& r : it.replays) {
    if (!r->isWaiting()) continue;
    SubmitOutcome out = *it.told;
    metrics_.answers[std::size_t(out.outcome)].inc();
    out.replayed = true;
    if (it.told->outcome == ClientOutcome::InDoubt) {  // finished since: the final state says it
      out = replayOutcome(it.rec).value_or(out);
      out.replayed = true;
    }
    r->fulfill(kj::mv(out));
  }
  it.replays.clear();
}

// ------------------------------------------------------------ one-shot submit

kj::Promise<SubmitOutcome> Coordinator::submit(SubmitRequest req) {
  if (auto bad = validate(req.ops, false)) {
    return SubmitOutcome{0, ClientOutcome::Invalid, *bad, {}, req.requestId, false};  // nothing written, no seq used
  }
  std::uint64_t fingerprint = 0;
  if (!req.requestId.empty()) {
    if (auto bad = checkRequest(req); !bad.empty()) {
      return SubmitOutcome{0, ClientOutcome::Invalid, bad, {}, req.requestId, false};
    }
    fingerprint = requestFingerprint(req.ops, false);
    KJ_IF_MAYBE(earlier, replay(req, fingerprint)) { return kj::mv(*earlier); }
  }
  if (auto full = storageFull()) return SubmitOutcome{0, ClientOutcome::Unavailable, *full, {}, req.requestId, false};
  std::string id = req.requestId;
  if (!id.empty()) claimRequest(id, fingerprint);
  auto started = seqs_->next().then([this, req = std::move(req), fingerprint](std::uint64_t seq) mutable {
    KEEL_FAILPOINT("coord.after_seq_assigned");
    auto& it = create(seq, false, req, fingerprint);
    it.opIndex = assign(it, req.ops);
    auto paf = kj::newPromiseAndFulfiller<SubmitOutcome>();
    it.answer = kj::mv(paf.fulfiller);
    drive(it);
    return kj::mv(paf.promise);
  });
  if (id.empty()) return started;  // a fault reaches the RPC shell, which answers "unavailable"
  return started.catch_([this, id](kj::Exception&& e) -> kj::Promise<SubmitOutcome> {
    // No seq could be given (the reservation failed), or a fault before
    // anything was sent: nothing ran, and the id's claim goes.
    releaseRequest(id, &e);
    return SubmitOutcome::of(0, ClientOutcome::Unavailable,
                             "the interaction could not start (nothing ran): " + describeFault(e), id);
  });
}

void Coordinator::drive(Interaction& it) {
  std::uint64_t seq = it.rec.seq;
  // In a cluster a request id is claimed by the COMMIT decision in etcd,
  // which a one-phase commit does not make: such a request goes two-phase,
  // so that a retry sent to another coordinator can never commit twice.
  bool claimInEtcd = cluster_ != nullptr && !it.rec.requestId.empty();
  if (it.rec.branches.size() == 1 && !claimInEtcd) {
    // One-phase: the participant decides, so presumed abort does not cover
    // a crash after the call left: the record (with the request id) must be
    // durable BEFORE the call, so that recovery asks the participant and a
    // retry of the request id finds it. A read-only request commits
    // nothing: its record may follow (the answer still waits for it).
    it.rec.onePhase = true;
    if (readOnlyOps(it.rec.branches[0].ops)) {
      tasks_.add(guardFirstPhase(seq, kj::evalNow([&]() { return runOnePhase(it); })));
      return;
    }
    tasks_.add(guardFirstPhase(seq, persist(it).then([this, seq]() -> kj::Promise<void> {
      Interaction* p = find(seq);
      if (p == nullptr) return kj::READY_NOW;
      return runOnePhase(*p);
    })));
    return;
  }
  // Two-phase, staged (docs/protocol.md, "Staged commit"): the record goes
  // to the WAL now, in parallel with the prepares, so that "committed" can
  // rest on it and the YES votes alone, one durable write earlier than a
  // COMMIT record after the votes would be. It is the interaction's only
  // forced write on the way to "committed"; the final record is lazy.
  //
  // Otherwise nothing is written before the decision (presumed abort). The
  // first record is the COMMIT decision (forced) or the abort with its
  // rollback record. If we crash before either, there is nothing to redo:
  // the recovery sweep finds the agents' prepared branches, writes a record
  // saying so, and rolls them back.
  if (stageable(it)) {
    it.rec.staged = true;
    it.stagedWrite = persist(it).fork();
  }
  std::vector<std::vector<Op>> ops;
  for (auto& b : it.rec.branches) ops.push_back(b.ops);
  tasks_.add(guardFirstPhase(
      seq, kj::evalNow([&]() { return prepareAll(it, std::move(ops)); }).then([this, seq](bool allYes) -> kj::Promise<void> {
        Interaction* p = find(seq);
        if (p == nullptr) return kj::READY_NOW;
        return decide(*p, allYes);
      })));
}

bool Coordinator::stageable(const Interaction& it) const {
  if (!cfg_.stagedCommit || cluster_ != nullptr || it.rec.interactive || it.rec.onePhase) return false;
  // Only reads: every vote will be READ-ONLY, which a staged answer cannot
  // rest on; its one record is the final one, written after the votes.
  if (std::all_of(it.rec.branches.begin(), it.rec.branches.end(), [](const auto& b) { return readOnlyOps(b.ops); })) {
    return false;
  }
  for (const auto& b : it.rec.branches) {
    auto l = links_.find(b.participant);
    if (l == links_.end() || !l->second->preparedVisible()) return false;
  }
  return true;
}

kj::Promise<void> Coordinator::guardFirstPhase(std::uint64_t seq, kj::Promise<void> work) {
  // A fault of our own before the decision is durable (an injected error, a
  // failed WAL write) must not leave the interaction hanging: abort it.
  return work.catch_([this, seq](kj::Exception&& e) {
    Interaction* p = find(seq);
    if (p == nullptr || p->rec.state == State::Aborting || p->told) {
      KEEL_LOG_ERROR("seq {}: {}", seqText(seq), describeFault(e));
      return;
    }
    if (p->commitDurable) {
      // Past the durable decision the only way is forward.
      answer(*p, ClientOutcome::Committed, "");
      tasks_.add(driveCommit(seq));
      return;
    }
    std::string why = "coordinator fault before the decision: " + describeFault(e);
    KEEL_LOG_ERROR("seq {}: {}", seqText(seq), why);
    p->rec.decision = InteractionRecord::Decision::None;
    if (p->rec.onePhase) {
      auto& b = p->rec.branches[0];
      if (b.state == BState::Pending) {
        b.state = BState::RolledBack;  // the call never left: nothing to ask
      } else {
        b.state = BState::Failed;
      }
    }
    startAbort(*p, why);
  });
}

kj::Promise<void> Coordinator::guardDriver(std::uint64_t seq, kj::Promise<void> work, bool commit) {
  // Drivers never give up: a fault in one round is logged and retried.
  return work.catch_([this, seq, commit](kj::Exception&& e) -> kj::Promise<void> {
    KEEL_LOG_WARN("seq {}: {} driver round failed ({}); retrying", seqText(seq), commit ? "commit" : "rollback",
                  describeFault(e));
    return io_.provider->getTimer().afterDelay(backoff(3)).then([this, seq, commit]() {
      return commit ? driveCommit(seq) : driveRollback(seq);
    });
  });
}

kj::Promise<void> Coordinator::runOnePhase(Interaction& it) {
  std::uint64_t seq = it.rec.seq;
  auto& br = it.rec.branches[0];
  br.state = BState::Preparing;
  Xid xid{seq, br.branch};
  auto ops = br.ops;
  std::uint64_t epoch = epoch_;
  auto deadline = std::min(cfg_.callTimeoutMs, it.deadlineMs) * kj::MILLISECONDS;
  auto& l = link(br.participant);
  return kj::evalNow([&]() {
           KEEL_FAILPOINT("coord.before_prepare");
           return l.commitOnePhase(epoch, xid, std::move(ops), deadline);
         })
      .then(
          [this, seq](OnePhaseReply r) -> kj::Promise<void> {
            Interaction* p = find(seq);
            if (p == nullptr) return kj::READY_NOW;
            auto& b = p->rec.branches[0];
            p->rec.votesUs = p->rec.decidedUs = wallMicros();
            if (r.outcome == BranchOutcome::Committed) {
              b.state = BState::Committed;
              p->rec.decision = InteractionRecord::Decision::Commit;
              p->branchResults[0] = std::move(r.results);
              // A read-only request has no record yet: its answer waits for
              // the final one (finish forces it).
              if (readOnlyOps(b.ops)) return finish(seq);
              // "Committed" rests on two durable records, as a staged
              // commit's does (docs/protocol.md, "What is durable before
              // each answer"): this interaction's record, forced before the
              // call, and the participant's, which it makes durable before
              // it answers "committed". A crash before the final record is
              // settled by asking the participant (recovery: the record has
              // no decision and is one-phase), which answers "committed"
              // again. So the client hears it now, and the final record is
              // lazy: one forced write fewer on a one-phase request's path.
              // The commit driver finishes it, and retries if that fails.
              p->rec.state = State::Committing;
              p->commitDurable = true;
              answer(*p, ClientOutcome::Committed, "");
              return driveCommit(seq);
            }
            if (r.outcome != BranchOutcome::RolledBack) {
              // Not an answer a one-phase call may get: treat like a lost call.
              return faultException(b.participant + " answered a one-phase commit with '" +
                                    outcomeName(r.outcome) + "'" + (r.reason.empty() ? "" : ": " + r.reason));
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
            b.reason = describeFault(e);
            // The participant decides a one-phase branch: we cannot say
            // "rolled back" until it confirms. The client hears "in doubt"
            // (its record is durable); the rollback driver asks.
            std::string why = "one-phase call to " + b.participant + " failed (" + b.reason + ")";
            if (readOnlyOps(b.ops)) {
              startAbort(*p, why);  // nothing could have committed
              return kj::READY_NOW;
            }
            answer(*p, ClientOutcome::InDoubt,
                   why + "; the participant decides, query seq " + seqText(seq));
            startAbort(*p, why);
            return kj::READY_NOW;
          });
}

kj::Promise<bool> Coordinator::prepareAll(Interaction& it, std::vector<std::vector<Op>> opsPerBranch) {
  std::uint64_t seq = it.rec.seq;
  std::uint64_t epoch = epoch_;
  Micros sentMono = monoMicros();
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
    std::size_t sent = ops.size();
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
                      [this, seq, i, sent](PrepareReply r) {
                        KEEL_FAILPOINT("coord.after_prepare");
                        Interaction* p = find(seq);
                        if (p == nullptr) return false;
                        auto& b = p->rec.branches[i];
                        b.reason = r.reason;
                        switch (r.vote) {
                          case Vote::Yes:
                            b.state = BState::Prepared;
                            b.hostTxid = r.hostTxid;  // durable with the COMMIT record, sent back with commit
                            break;
                          case Vote::ReadOnly: b.state = BState::ReadOnly; break;
                          case Vote::No: b.state = BState::VotedNo; break;
                        }
                        // r.results holds none or exactly `sent` (checked
                        // when read): the results of this call's operations,
                        // the last `sent` of the branch's (an interactive
                        // commit sends none and keeps the earlier results).
                        if (!r.results.empty()) {
                          auto& dst = p->branchResults[i];
                          std::size_t total = b.ops.size();
                          dst.resize(total);
                          for (std::size_t k = 0; k < sent && total >= sent; ++k) {
                            dst[total - sent + k] = std::move(r.results[k]);
                          }
                        }
                        return b.state != BState::VotedNo;
                      },
                      [this, seq, i](kj::Exception&& e) {
                        Interaction* p = find(seq);
                        if (p != nullptr) {
                          p->rec.branches[i].state = BState::Failed;
                          p->rec.branches[i].reason = describeFault(e);
                        }
                        return false;
                      })
                  .then([onFail = kj::mv(onFail)](bool ok) mutable {
                    if (!ok && onFail->fulfiller->isWaiting()) onFail->fulfiller->fulfill();
                  })
                  // Eager: KJ 0.9's joinPromises runs a branch's
                  // continuations only once every branch is ready, so
                  // without this a NO would wait for the slowest vote (or
                  // the call deadline) before ending the round.
                  .eagerlyEvaluate(nullptr));
  }
  return kj::joinPromises(calls.releaseAsArray())
      .exclusiveJoin(kj::mv(failed.promise))
      .attach(kj::mv(failedFulfiller))
      .then([this, seq, sentMono]() {
        metrics_.prepare->observe(monoMicros() - sentMono);
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
  // In a cluster a request id is claimed by the COMMIT decision in etcd, a
  // read-only request's too: else a retry of it through another coordinator
  // runs it again. (Its decision lists no branch: nothing to drive.)
  bool claimInEtcd = cluster_ != nullptr && !it.rec.requestId.empty();
  if (!anyPrepared && !claimInEtcd) {  // all read-only: nothing to decide; answered once its record is durable
    it.rec.decision = InteractionRecord::Decision::Commit;
    return finish(seq);
  }
  it.rec.decision = InteractionRecord::Decision::Commit;
  it.rec.state = State::Committing;
  it.rec.decidedUs = wallMicros();
  KEEL_FAILPOINT("coord.before_decision_durable");
  if (cluster_ != nullptr) return decideInCluster(it);
  Micros queuedMono = monoMicros();
  // Staged: the COMMIT rests on the staged record and the YES votes, each
  // durable where recovery reads it back (settleStaged), so it is decided
  // once the staged record is durable, and nothing more is written now.
  // Only when every branch voted YES (a READ-ONLY vote leaves nothing to
  // read back) at a participant that still says its YES branches are
  // visible; else a COMMIT record first, as without staged commit.
  bool staged = false;
  kj::Promise<void> durable = nullptr;
  KJ_IF_MAYBE(w, it.stagedWrite) {
    staged = std::all_of(it.rec.branches.begin(), it.rec.branches.end(), [this](const auto& b) {
      return b.state == BState::Prepared && link(b.participant).preparedVisible();
    });
    if (staged) durable = w->addBranch();
  }
  if (!staged) durable = persist(it);
  return durable.then(
      [this, seq, queuedMono, staged]() {
        // The COMMIT decision is durable: only now may anyone hear "committed".
        Interaction* p = find(seq);
        if (p == nullptr) return;
        p->commitDurable = true;
        p->commitDurableMono = monoMicros();
        p->txidsOnlyInMemory = staged;
        metrics_.decisionWrite->observe(p->commitDurableMono - queuedMono);
        KEEL_FAILPOINT("coord.after_decision_durable");
        answer(*p, ClientOutcome::Committed, "");
        // Staged, the COMMIT record is written only if phase 2 needs a
        // second round (driveCommit records the attempt) and with the final
        // record; until then recovery reads the decision from the votes.
        tasks_.add(driveCommit(seq));
      },
      [this, seq, staged](kj::Exception&& e) {
        // The decision did not become durable, so it never existed: abort.
        Interaction* p = find(seq);
        if (p == nullptr) return;
        const char* what = staged ? "staged record" : "COMMIT decision";
        KEEL_LOG_ERROR("seq {}: {} not durable ({}); aborting", seqText(seq), what, describeFault(e));
        p->rec.decision = InteractionRecord::Decision::None;
        startAbort(*p, std::string("coordinator could not log the ") + (staged ? "interaction" : "commit decision") +
                           ": " + describeFault(e));
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
      case BState::Pending:  // may have been sent just before a crash
      case BState::Prepared:
      case BState::Preparing:
      case BState::Failed:
        pending.insert(b.participant);
        break;
      default:  // committed (an operator's override: finish says heuristic), read-only, rolled back, unknown
        break;
    }
  }
  it.rb->pending.assign(pending.begin(), pending.end());
  // A one-phase branch is the participant's to decide: "rolled back" only
  // when it refused (nothing pending); else the rollback driver asks it,
  // and the client (told "in doubt") hears the end through the record.
  bool rolledBackForSure =
      !it.rec.onePhase || it.rb->pending.empty() || readOnlyOps(it.rec.branches.front().ops);
  // The client hears "rolled back" once the rollback record is durable, so
  // the story it may look up exists even if we crash right after (a
  // two-phase interaction has no earlier record: nothing is written before
  // its decision). The rollback itself starts at once.
  tasks_.add(persist(it).then(
      [this, seq, reason, rolledBackForSure]() -> kj::Promise<void> {
        if (!rolledBackForSure) return kj::READY_NOW;
        return answerRolledBack(seq, reason);
      },
      [this, seq, reason, rolledBackForSure](kj::Exception&& e) -> kj::Promise<void> {
        // Still rolled back (presumed abort: no COMMIT exists, and a
        // two-phase one never will); only the record may be missing, and
        // finish() writes it again.
        KEEL_LOG_ERROR("seq {}: rollback record not written ({})", seqText(seq), describeFault(e));
        if (!rolledBackForSure) return kj::READY_NOW;
        return answerRolledBack(seq, reason);
      }));
  tasks_.add(driveRollback(seq));
}

Coordinator::State Coordinator::finalState(const InteractionRecord& r) {
  bool committed = false, rolledBack = false, unknown = false;
  for (const auto& b : r.branches) {
    switch (b.state) {
      case BState::Committed: committed = true; break;
      case BState::RolledBack:
      case BState::VotedNo: rolledBack = true; break;
      case BState::Unknown: unknown = true; break;
      default: break;  // read-only: took no part; nothing else is left at the end
    }
  }
  if (unknown) return State::HeuristicUnknown;
  if (r.decision == InteractionRecord::Decision::Commit) return rolledBack ? State::HeuristicMixed : State::Committed;
  // Aborted (or a one-phase branch the participant rolled back).
  return committed ? State::HeuristicMixed : State::RolledBack;
}

kj::Promise<void> Coordinator::finish(std::uint64_t seq) {
  Interaction* it = find(seq);
  if (it == nullptr) return kj::READY_NOW;
  KEEL_FAILPOINT("coord.before_complete");
  Micros now = wallMicros();
  it->rec.state = finalState(it->rec);
  it->rec.completedUs = now;
  if (it->rb) it->rb->completedUs = now;
  if (it->rec.heuristic()) {
    std::string what;
    for (const auto& b : it->rec.branches) {
      what += (what.empty() ? "" : ", ") + b.participant + " " + branchStateName(b.state);
    }
    std::string note = std::string(stateName(it->rec.state)) + ": decision " + decisionName(it->rec.decision) +
                       ", branches ended " + what;
    it->rec.error = it->rec.error.empty() ? note : it->rec.error + "; " + note;
    KEEL_LOG_ERROR("seq {}: {} (an operator must reconcile: docs/recovery.md)", seqText(seq), note);
  }
  ++(it->rec.heuristic() ? heuristic_ : it->rec.state == State::Committed ? committed_ : rolledBack_);
  if (it->commitDurableMono != 0) metrics_.phase2->observe(monoMicros() - it->commitDurableMono);
  if (it->rec.failedUs != 0) metrics_.inconsistency->observe(now > it->rec.failedUs ? now - it->rec.failedUs : 0);
  // The final record is lazy once the client has its answer: a lost
  // "complete" mark only means recovery re-drives an interaction whose
  // participants answer idempotently, so it rides with the next group
  // commit instead of starting one (a forced decision never waits behind an
  // fsync for completions). It is still durable before anything below runs.
  // A client not answered yet (a read-only request, for one) hears the
  // end only now, so its final record is forced: lazy, it waited at low
  // load for the writer's lazy delay (2 ms) on top of the commit
  // (docs/performance.md, "twenty-fifth sitting"). Under load the two are
  // the same group commit. The interaction stays in memory until then.
  const bool clientWaits = !it->told.has_value();
  return persist(*it, /*lazy=*/!clientWaits).then([this, seq]() -> kj::Promise<void> {
    Interaction* p = find(seq);
    if (p == nullptr) return kj::READY_NOW;
    // The final record is durable: etcd's copy of the decision may go, and
    // /metrics counts the interaction finished (keel_interactions_finished_total).
    if (p->decisionKey && cluster_ != nullptr) cluster_->forget(seq);
    switch (p->rec.state) {
      case State::Committed: metrics_.committed.inc(); break;
      case State::RolledBack: metrics_.rolledBack.inc(); break;
      case State::HeuristicMixed: metrics_.heuristicMixed.inc(); break;
      default: metrics_.heuristicUnknown.inc(); break;
    }
    ClientOutcome o = p->rec.state == State::Committed        ? ClientOutcome::Committed
                      : p->rec.state == State::RolledBack     ? ClientOutcome::RolledBack
                      : p->rec.state == State::HeuristicMixed ? ClientOutcome::HeuristicMixed
                                                              : ClientOutcome::HeuristicUnknown;
    auto told = kj::evalNow([&]() -> kj::Promise<void> {
      if (o == ClientOutcome::RolledBack) return answerRolledBack(seq, p->rec.error);
      answer(*p, o, p->rec.error);
      return kj::READY_NOW;
    });
    return told.then([this, seq]() {
      Interaction* p = find(seq);
      if (p == nullptr) return;
      auto late = std::move(p->lateBranches);
      forgetRequest(*p);
      live_.erase(seq);
      for (const auto& [participant, b] : late) settleUnknownBranch(link(participant), b);
    });
  });
}

// ------------------------------------------------------------ reads

Coordinator::JournalPage Coordinator::journalPage(const JournalCursor& at, Micros fromUs, Micros toUs,
                                                  const Archive::Filter& filter) const {
  JournalPage out;
  if (!at.archive) {
    auto p = wal_.exportPage(at.after, fromUs, toUs, kExportPageRecords);
    out.records = std::move(p.records);
    out.damaged = std::move(p.damaged);
    out.scanned = p.scanned;
    out.total = p.total;
    if (p.next != 0) {
      out.next = JournalCursor{false, p.next, ""};
    } else {
      out.next = JournalCursor{true, 0, ""};
    }
    return out;
  }
  auto p = archive_->exportPage(at.archiveAt, fromUs, toUs, kExportPageRecords, filter);
  out.scanned = p.scanned;
  for (auto& r : p.records) {
    try {
      if (wal_.holdsHot(peekInteraction(r.interaction).seq)) continue;  // given from the hot WAL already
    } catch (const CorruptRecord&) {
    }
    out.records.push_back(std::move(r));
  }
  if (!p.next.empty()) out.next = JournalCursor{true, 0, p.next};
  return out;
}

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
  Info i{cfg_.nodeId, epoch_, {}, committed_, rolledBack_, live_.size(), heuristic_, takeoverCommitted_,
         takeoverRolledBack_};
  if (cluster_ != nullptr) {
    i.clustered = true;
    i.etcdTxns = cluster_->decisionTxns();
    i.etcdDecisions = cluster_->decisionsWritten();
  }
  for (auto& [name, l] : links_) i.participants.push_back(name);
  return i;
}

}  // namespace keel
