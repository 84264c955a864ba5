// Coordinator: interactive mode. begin() opens an interaction whose work
// arrives call by call (execute), then commit (prepare every branch and
// decide, as a one-shot interaction does) or rollback. Every answer rests
// on a durable record: begin's on the interaction's first record, a failed
// execute's and rollback's on the rollback record.

#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"

#include "common/failpoint.h"
#include "common/fault.h"
#include "common/log.h"

namespace keel {

kj::Promise<Coordinator::Begun> Coordinator::begin(SubmitRequest req) {
  std::uint64_t fingerprint = 0;
  if (!req.requestId.empty()) {
    if (auto bad = checkRequest(req); !bad.empty()) {
      return Begun{0, SubmitOutcome{0, ClientOutcome::Invalid, bad, {}, req.requestId, false}};
    }
    fingerprint = requestFingerprint({}, true);
    KJ_IF_MAYBE(earlier, replay(req, fingerprint)) {
      return earlier->then([](SubmitOutcome o) { return Begun{0, std::move(o)}; });
    }
  }
  if (auto full = storageFull()) {
    return Begun{0, SubmitOutcome{0, ClientOutcome::Unavailable, *full, {}, req.requestId, false}};
  }
  std::string id = req.requestId;
  if (!id.empty()) claimRequest(id, fingerprint);
  return seqs_->next()
      .then([this, req = std::move(req), fingerprint](std::uint64_t seq) {
        KEEL_FAILPOINT("coord.after_seq_assigned");
        auto& it = create(seq, true, req, fingerprint);
        tasks_.add(io_.provider->getTimer().afterDelay(it.deadlineMs * kj::MILLISECONDS).then([this, seq]() {
          Interaction* p = find(seq);
          if (p != nullptr && !p->closing && p->rec.state == State::Preparing) {
            p->closing = true;
            startAbort(*p, "interaction deadline of " + std::to_string(p->deadlineMs) + " ms exceeded");
          }
        }));
        // The seq is answered once the record (and the request id's row) is
        // durable: a client that loses the answer finds it by request id.
        return persist(it).then(
            [seq]() { return Begun{seq, std::nullopt}; },
            [this, seq](kj::Exception&& e) {
              if (Interaction* p = find(seq); p != nullptr && !p->closing) {
                p->closing = true;
                startAbort(*p, "coordinator could not log the interaction: " + describeFault(e));
              }
              return Begun{0, SubmitOutcome{0, ClientOutcome::Unavailable,
                                            "coordinator could not log the interaction: " + describeFault(e), {},
                                            std::string(), false}};
            });
      })
      .catch_([this, id](kj::Exception&& e) -> Begun {
        if (!id.empty()) releaseRequest(id, &e);
        return Begun{0, SubmitOutcome{0, ClientOutcome::Unavailable, "the interaction could not start (nothing ran): " + describeFault(e), {},
                                      id, false}};
      });
}

kj::Promise<SubmitOutcome> Coordinator::execute(std::uint64_t seq, std::vector<Op> ops) {
  Interaction* it = find(seq);
  if (it == nullptr || it->closing || it->rec.state != State::Preparing) {
    return SubmitOutcome::of(seq, ClientOutcome::Invalid, "interaction " + seqText(seq) + " is not open");
  }
  std::size_t existing = 0;
  for (auto& b : it->rec.branches) existing += b.ops.size();
  if (auto bad = validate(ops, false)) return SubmitOutcome::of(seq, ClientOutcome::Invalid, *bad);
  if (existing + ops.size() > Limits::kMaxOpsPerInteraction) {
    return SubmitOutcome::of(seq, ClientOutcome::Invalid, "too many operations in one interaction");
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
    std::size_t sent = bops.size();
    calls.add(link(name).execute(epoch, xid, bops, deadline).then(
        [this, seq, b = b, name, sent](PrepareReply r) -> kj::Maybe<std::string> {
          Interaction* p = find(seq);
          if (p == nullptr) return std::string("interaction ended");
          auto& br = p->rec.branches[b];
          if (r.vote != Vote::Yes) {
            br.state = BState::VotedNo;
            br.reason = r.reason;
            return name + " refused: " + r.reason;
          }
          // r.results holds none or exactly `sent` (checked when read): the
          // results of the last `sent` operations of the branch.
          auto& dst = p->branchResults[b];
          std::size_t total = br.ops.size();
          dst.resize(total);
          for (std::size_t k = 0; k < r.results.size() && total >= sent; ++k) {
            dst[total - sent + k] = std::move(r.results[k]);
          }
          return nullptr;
        },
        [this, seq, b = b, name](kj::Exception&& e) -> kj::Maybe<std::string> {
          Interaction* p = find(seq);
          if (p != nullptr) {
            p->rec.branches[b].state = BState::Failed;
            p->rec.branches[b].reason = describeFault(e);
          }
          return name + " failed: " + describeFault(e);
        }).eagerlyEvaluate(nullptr));  // each branch's state as it answers (see prepareAll)
  }
  // The operations join the record before "ok so far" is answered.
  auto recorded = persist(*it);
  return kj::joinPromises(calls.releaseAsArray())
      .then([this, seq, idx = std::move(idx), recorded = kj::mv(recorded)](
                kj::Array<kj::Maybe<std::string>> errs) mutable -> kj::Promise<SubmitOutcome> {
        Interaction* p = find(seq);
        if (p == nullptr) return SubmitOutcome::of(seq, ClientOutcome::RolledBack, "interaction ended");
        for (auto& e : errs) {
          KJ_IF_MAYBE(msg, e) {
            if (p->closing) {
              // Already rolling back (its deadline passed, say): answered
              // once a record saying so is durable.
              std::string why = *msg, id = p->rec.requestId;
              return persist(*p).then(
                  [seq, why, id]() { return SubmitOutcome::of(seq, ClientOutcome::RolledBack, why, id); });
            }
            // The whole interaction rolls back; the client hears it once the
            // rollback record is durable.
            p->closing = true;
            auto paf = kj::newPromiseAndFulfiller<SubmitOutcome>();
            p->answer = kj::mv(paf.fulfiller);
            startAbort(*p, *msg);
            return kj::mv(paf.promise);
          }
        }
        return recorded.then([this, seq, idx = kj::mv(idx)]() {
          Interaction* q = find(seq);
          auto out = SubmitOutcome::of(seq, ClientOutcome::Committed, "");  // "ok so far"
          if (q == nullptr) return out;
          out.requestId = q->rec.requestId;
          for (auto [b, i] : idx) {
            const auto& r = q->branchResults[b];
            out.results.push_back(i < r.size() ? r[i] : OpResult{});
          }
          return out;
        });
      });
}

Coordinator::Interaction* Coordinator::closeInteractive(std::uint64_t seq, kj::Promise<SubmitOutcome>& answer) {
  Interaction* it = find(seq);
  if (it == nullptr || it->closing) {
    answer = SubmitOutcome::of(seq, ClientOutcome::Invalid, "interaction " + seqText(seq) + " is not open");
    return nullptr;
  }
  it->closing = true;
  auto paf = kj::newPromiseAndFulfiller<SubmitOutcome>();
  it->answer = kj::mv(paf.fulfiller);
  answer = kj::mv(paf.promise);
  return it;
}

kj::Promise<SubmitOutcome> Coordinator::commitInteractive(std::uint64_t seq) {
  kj::Promise<SubmitOutcome> paf = nullptr;
  Interaction* it = closeInteractive(seq, paf);
  if (it == nullptr) return paf;
  if (it->rec.branches.empty()) {
    it->rec.decision = InteractionRecord::Decision::Commit;
    tasks_.add(finish(seq));  // answered once its final record is durable
    return paf;
  }
  std::vector<std::vector<Op>> none(it->rec.branches.size());
  tasks_.add(guardFirstPhase(
      seq, kj::evalNow([&]() { return prepareAll(*it, std::move(none)); }).then([this, seq](bool allYes) -> kj::Promise<void> {
        Interaction* p = find(seq);
        if (p == nullptr) return kj::READY_NOW;
        return decide(*p, allYes);
      })));
  return paf;
}

kj::Promise<SubmitOutcome> Coordinator::rollbackInteractive(std::uint64_t seq, std::string reason) {
  kj::Promise<SubmitOutcome> paf = nullptr;
  Interaction* it = closeInteractive(seq, paf);
  if (it != nullptr) startAbort(*it, reason);  // answers once the rollback record is durable
  return paf;
}

void Coordinator::abandon(std::uint64_t seq) {
  Interaction* it = find(seq);
  if (it != nullptr && !it->closing) {
    it->closing = true;
    startAbort(*it, "the client dropped the transaction before committing");
  }
}

}  // namespace keel
