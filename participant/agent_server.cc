#include "participant/agent_server.h"

#include <capnp/schema.h>

#include <algorithm>
#include <cmath>

#include "common/fault.h"
#include "common/wire.h"
#include "participant/coordinator_requests.h"

namespace keel {

CallFilter operatorAgentCalls(std::function<std::string(const std::string& method)> refused) {
  auto schema = capnp::Schema::from<wire::Participant>();
  auto index = [&](const char* m) { return static_cast<std::uint16_t>(schema.getMethodByName(m).getIndex()); };
  std::vector<std::uint16_t> looking{index("inspect"), index("status"), index("listBranches"), index("batching"),
                                    index("statements"), index("backup")};
  const std::uint16_t recover = index("recover"), forget = index("forget");
  const std::uint64_t iface = capnp::typeId<wire::Participant>();
  return [=](std::uint64_t i, std::uint16_t m, capnp::AnyPointer::Reader params) -> std::string {
    if (i == iface && std::find(looking.begin(), looking.end(), m) != looking.end()) return "";
    // An operator may list and forget, never fence: epoch 0 only.
    if (i == iface && m == recover && params.getAs<wire::Participant::RecoverParams>().getEpoch() == 0) return "";
    if (i == iface && m == forget && params.getAs<wire::Participant::ForgetParams>().getEpoch() == 0) return "";
    return refused(i == iface ? schema.getMethods()[m].getProto().getName().cStr() : "this call");
  };
}

AccessPolicy agentAccess(const TlsConfig& tls, const std::string& agentName) {
  if (!tls.enabled()) return [](const Peer&) { return Access{"any (insecure)", true, nullptr}; };
  auto has = [](const std::vector<std::string>& names, const std::string& id) {
    return std::find(names.begin(), names.end(), id) != names.end();
  };
  return [=](const Peer& peer) -> Access {
    if (has(tls.coordinators, peer.identity)) return Access{"coordinator", true, nullptr};
    std::string id = peer.identity;
    if (has(tls.operators, peer.identity)) {
      return Access{"operator", false, operatorAgentCalls([id, agentName](const std::string& method) {
                      return "permission denied: " + method + " is a coordinator's call and operator '" + id +
                             "' is not among agent " + agentName + "'s [tls] coordinators";
                    })};
    }
    std::string why = "permission denied: '" + id + "' may not call agent " + agentName +
                      " (not among its [tls] coordinators or operators)";
    return Access{"none", false, [why](std::uint64_t, std::uint16_t, capnp::AnyPointer::Reader) { return why; }};
  };
}

wire::Participant::Client operatorView(wire::Participant::Client agent, const std::string& agentName) {
  return filteredCapability(kj::mv(agent), operatorAgentCalls([agentName](const std::string& method) {
                              return "permission denied: " + method + " is a coordinator's call; embedded participant " +
                                     agentName + " takes only an operator's calls through embeddedParticipant";
                            }))
      .castAs<wire::Participant>();
}

namespace {

// The release floors held here (inspect, listBranches).
template <typename Init>
void fillFloors(const BranchLog& log, Init init) {
  auto floors = log.releaseFloors();
  auto l = init(unsigned(floors.size()));
  for (unsigned i = 0; i < floors.size(); ++i) {
    l[i].setNode(floors[i].node);
    l[i].setFloor(floors[i].floor);
    l[i].setKept(floors[i].kept);
  }
}

template <typename B>
void fillResults(B builder, const std::vector<OpResult>& results) {
  auto l = builder.initResults(results.size());
  for (unsigned i = 0; i < results.size(); ++i) fillOpResult(l[i], results[i]);
}

// withOps: the branch's operations too (recover: the coordinator's sweep
// rebuilds the story of an interaction it has no record of).
void fillBranchInfo(wire::BranchInfo::Builder b, const BranchRecord& r, bool withOps = false) {
  fillXid(b.initXid(), r.xid);
  b.setState(static_cast<wire::BranchState>(r.state));
  b.setEpoch(r.epoch);
  b.setPreparedAtUs(r.preparedUs);
  b.setTombstone(r.tombstone);
  b.setCreatedAtUs(r.createdUs);
  if (withOps) fillOps(b.initOperations(r.ops.size()), r.ops);
  b.setHostStep(hostStepName(r.hostStep));
  if (!r.hostRefs.empty()) {
    auto refs = b.initHostRefs(r.hostRefs.size());
    for (unsigned i = 0; i < r.hostRefs.size(); ++i) refs.set(i, r.hostRefs[i]);
  }
  b.setReason(r.reason);
}

}  // namespace

kj::Promise<void> ParticipantImpl::prepare(PrepareContext ctx) {
  auto p = ctx.getParams();
  Micros started = monoMicros();
  return agent_.prepare(p.getEpoch(), readXid(p.getXid()), readOps(p.getOperations()))
      .then([this, ctx, started](PrepareResult r) mutable {
        if (metrics_ != nullptr) {
          metrics_->votes[std::size_t(r.vote)].inc();
          metrics_->prepareSeconds->observe(monoMicros() - started);
        }
        auto res = ctx.getResults();
        res.setVote(static_cast<wire::Vote>(r.vote));
        res.setReason(r.reason);
        fillResults(res, r.results);
        if (r.vote == Vote::Yes) res.setHostTxid(r.hostTxid);
      });
}

namespace {

void fillVote(wire::PrepareVote::Builder b, const PrepareResult& r) {
  if (r.failed) {
    b.setError(r.reason);
    return;
  }
  b.setVote(static_cast<wire::Vote>(r.vote));
  b.setReason(r.reason);
  fillResults(b, r.results);
  if (r.vote == Vote::Yes) b.setHostTxid(r.hostTxid);
}

// Roughly what fillVote writes, for a message's first segment (messageSizeHint).
std::size_t voteBytes(const PrepareResult& r) { return 64 + r.reason.size() + 48 * r.results.size(); }

// Votes of one prepareBatch streamed to the coordinator's sink: those ready
// in one event-loop turn leave in one call, while the rest are still being
// worked on. Votes ready when nothing is left go only in the answer.
struct VoteStream : public kj::Refcounted {
  wire::VoteSink::Client sink;
  std::size_t remaining;
  std::vector<std::pair<std::uint32_t, PrepareResult>> ready;
  bool scheduled = false;
  VoteStream(wire::VoteSink::Client s, std::size_t n) : sink(kj::mv(s)), remaining(n) {}
};

}  // namespace

kj::Promise<void> ParticipantImpl::prepareBatch(PrepareBatchContext ctx) {
  // Each item is an independent prepare: started together, so the backend's
  // group commit makes all their PREPARED records durable in one go. A fault
  // in one item is that item's answer, not the whole message's.
  auto p = ctx.getParams();
  std::uint64_t epoch = p.getEpoch();
  auto items = p.getItems();
  if (items.size() > kMaxPrepareBatch) {
    return faultException("a prepareBatch carries at most " + std::to_string(kMaxPrepareBatch) + " items, got " +
                          std::to_string(items.size()));
  }
  Micros started = monoMicros();
  if (metrics_ != nullptr) metrics_->prepareBatch->observe(items.size());
  kj::Maybe<kj::Own<VoteStream>> stream;
  if (p.hasSink()) stream = kj::refcounted<VoteStream>(p.getSink(), items.size());
  kj::Vector<kj::Promise<PrepareResult>> votes(items.size());
  std::uint32_t index = 0;
  for (auto item : items) {
    Xid xid = readXid(item.getXid());
    std::vector<Op> ops = readOps(item.getOperations());
    auto vote = kj::evalNow([&]() { return agent_.prepare(epoch, xid, std::move(ops)); }).catch_([](kj::Exception&& e) {
      PrepareResult r;
      r.reason = describeFault(e);
      r.failed = true;
      return r;
    });
    KJ_IF_MAYBE(s, stream) {
      vote = vote.then([this, st = kj::addRef(**s), index](PrepareResult r) mutable {
        st->ready.emplace_back(index, r);
        --st->remaining;
        if (!st->scheduled) {
          st->scheduled = true;
          tasks_.add(kj::evalLater([st = kj::addRef(*st)]() mutable -> kj::Promise<void> {
            st->scheduled = false;
            if (st->remaining == 0 || st->ready.empty()) return kj::READY_NOW;  // the answer carries them
            std::size_t bytes = 32;
            for (const auto& [i, r] : st->ready) bytes += voteBytes(r);
            auto req = st->sink.votesRequest(messageSizeHint(bytes));
            auto l = req.initVotes(st->ready.size());
            for (unsigned k = 0; k < st->ready.size(); ++k) {
              l[k].setIndex(st->ready[k].first);
              fillVote(l[k].initVote(), st->ready[k].second);
            }
            st->ready.clear();
            return req.send().ignoreResult();
          }));
        }
        return r;
      });
      // KJ runs a .then() when its consumer asks for the value, and the
      // join below asks only once every vote is ready: without this, no
      // vote would ever be streamed ahead of the answer.
      vote = vote.eagerlyEvaluate(nullptr);
    }
    votes.add(kj::mv(vote));
    ++index;
  }
  return kj::joinPromises(votes.releaseAsArray()).then([this, ctx, started](kj::Array<PrepareResult> rs) mutable {
    if (metrics_ != nullptr) {
      for (const auto& r : rs) metrics_->votes[r.failed ? kMaxVote + 1 : std::size_t(r.vote)].inc();
      metrics_->prepareSeconds->observe(monoMicros() - started);
    }
    std::size_t bytes = 32;
    for (const auto& r : rs) bytes += voteBytes(r);
    auto l = ctx.getResults(messageSizeHint(bytes)).initVotes(rs.size());
    for (unsigned i = 0; i < rs.size(); ++i) fillVote(l[i], rs[i]);
  });
}

kj::Promise<void> ParticipantImpl::execute(ExecuteContext ctx) {
  auto p = ctx.getParams();
  Micros started = monoMicros();
  return agent_.execute(p.getEpoch(), readXid(p.getXid()), readOps(p.getOperations()))
      .then([this, ctx, started](PrepareResult r) mutable {
        if (metrics_ != nullptr) {
          metrics_->executes.inc();
          metrics_->executeSeconds->observe(monoMicros() - started);
        }
        auto res = ctx.getResults();
        res.setOk(r.vote == Vote::Yes);
        res.setReason(r.reason);
        fillResults(res, r.results);
      });
}

kj::Promise<void> ParticipantImpl::commit(CommitContext ctx) {
  auto p = ctx.getParams();
  Micros started = monoMicros();
  if (metrics_ != nullptr) metrics_->phase2Batch->observe(p.getXids().size());
  // Checked before anything else: a refused call fences no epoch.
  auto given = p.getHostTxids();
  if (given.size() != 0 && given.size() != p.getXids().size()) {
    return faultException("a commit carries no hostTxids or one per xid; got " + std::to_string(given.size()) +
                          " for " + std::to_string(p.getXids().size()) + " xids");
  }
  auto xids = readFencedXids(p.getXids(), "commit");
  kj::Promise<std::vector<BranchOutcome>> done = nullptr;
  if (given.size() == 0) {
    done = agent_.commit(p.getEpoch(), std::move(xids));
  } else {
    std::vector<std::uint64_t> txids;
    txids.reserve(given.size());
    for (auto t : given) txids.push_back(t);
    done = agent_.commitKnowing(p.getEpoch(), std::move(xids), std::move(txids));
  }
  return done.then([this, ctx, started](std::vector<BranchOutcome> out) mutable {
    if (metrics_ != nullptr) {
      for (auto o : out) metrics_->commits[std::size_t(o)].inc();
      metrics_->commitSeconds->observe(monoMicros() - started);
    }
    auto l = ctx.getResults(messageSizeHint(32 + 2 * out.size())).initOutcomes(out.size());
    for (unsigned i = 0; i < out.size(); ++i) l.set(i, static_cast<wire::BranchOutcome>(out[i]));
  });
}

kj::Promise<void> ParticipantImpl::rollback(RollbackContext ctx) {
  auto p = ctx.getParams();
  Micros started = monoMicros();
  if (metrics_ != nullptr) metrics_->phase2Batch->observe(p.getXids().size());
  return agent_.rollback(p.getEpoch(), readFencedXids(p.getXids(), "rollback")).then([this, ctx, started](std::vector<BranchOutcome> out) mutable {
    if (metrics_ != nullptr) {
      for (auto o : out) metrics_->rollbacks[std::size_t(o)].inc();
      metrics_->rollbackSeconds->observe(monoMicros() - started);
    }
    auto l = ctx.getResults(messageSizeHint(32 + 2 * out.size())).initOutcomes(out.size());
    for (unsigned i = 0; i < out.size(); ++i) l.set(i, static_cast<wire::BranchOutcome>(out[i]));
  });
}

kj::Promise<void> ParticipantImpl::commitOnePhase(CommitOnePhaseContext ctx) {
  auto p = ctx.getParams();
  Micros started = monoMicros();
  return agent_.commitOnePhase(p.getEpoch(), readXid(p.getXid()), readOps(p.getOperations()))
      .then([this, ctx, started](OnePhaseResult r) mutable {
        if (metrics_ != nullptr) {
          metrics_->onePhase[std::size_t(r.outcome)].inc();
          metrics_->onePhaseSeconds->observe(monoMicros() - started);
        }
        auto res = ctx.getResults();
        res.setOutcome(static_cast<wire::BranchOutcome>(r.outcome));
        res.setReason(r.reason);
        fillResults(res, r.results);
      });
}

kj::Promise<void> ParticipantImpl::recover(RecoverContext ctx) {
  // epoch 0: an operator looking (keelctl branches), not a coordinator.
  if (ctx.getParams().getEpoch() != 0) agent_.fence(ctx.getParams().getNode(), ctx.getParams().getEpoch());
  auto list = agent_.unfinishedBranches();
  auto l = ctx.getResults().initBranches(list.size());
  for (unsigned i = 0; i < list.size(); ++i) fillBranchInfo(l[i], list[i], true);
  return kj::READY_NOW;
}

kj::Promise<void> ParticipantImpl::statements(StatementsContext ctx) {
  const Statements* st = agent_.declaredStatements();
  auto r = ctx.getResults();
  r.setDeclared(st != nullptr);
  if (st == nullptr) return kj::READY_NOW;
  auto l = r.initStatements(st->size());
  unsigned i = 0;
  for (auto& [name, d] : *st) {
    auto b = l[i++];
    b.setName(name);
    auto ps = b.initParams(d.params.size());
    for (unsigned k = 0; k < d.params.size(); ++k) ps.set(k, paramTypeName(d.params[k]));
    b.setExpectRows(d.expectRows);
  }
  return kj::READY_NOW;
}

kj::Promise<void> ParticipantImpl::batching(BatchingContext ctx) {
  auto b = agent_.batching();
  ctx.getResults().setMaxBatch(b.maxBatch);
  ctx.getResults().setMaxInFlight(b.maxInFlight);
  ctx.getResults().setPreparedVisible(b.preparedVisible);
  return kj::READY_NOW;
}

kj::Promise<void> ParticipantImpl::inspect(InspectContext ctx) {
  auto res = ctx.getResults();
  res.setName(agent_.name());
  auto accts = agent_.accounts();
  auto l = res.initAccounts(accts.size());
  for (unsigned i = 0; i < accts.size(); ++i) {
    l[i].setName(accts[i].name);
    l[i].setBalance(accts[i].record.balance);
    l[i].setHeld(accts[i].record.held);
  }
  auto c = agent_.counts();
  res.setPrepared(c.prepared);
  res.setActive(c.active);
  res.setCommitted(c.committed);
  res.setRolledBack(c.rolledBack);
  auto& ls = agent_.branchLog().log().stats();
  res.setLogCommits(ls.commits.load(std::memory_order_relaxed));
  res.setLogJobs(ls.jobs.load(std::memory_order_relaxed));
  auto ck = ls.checkpointLatency->snapshot();
  res.setLogCheckpoints(ck.count);
  res.setLogCheckpointMicros(std::uint64_t(std::llround(ck.sum * 1e6)));
  const auto& fences = agent_.branchLog().fences();
  auto f = res.initFences(fences.size());
  unsigned i = 0;
  for (const auto& [node, epoch] : fences) {
    f[i].setNode(node);
    f[i].setEpoch(epoch);
    ++i;
  }
  fillFloors(agent_.branchLog(), [&](unsigned n) { return res.initFloors(n); });
  return kj::READY_NOW;
}

kj::Promise<void> ParticipantImpl::status(StatusContext ctx) {
  auto xids = readXids(ctx.getParams().getXids());
  if (xids.empty()) {
    // The coordinator's health probe: up only if the host behind is too.
    if (auto why = agent_.unavailable()) return KJ_EXCEPTION(FAILED, kj::str(why->c_str()));
  }
  auto found = agent_.branches(xids);
  auto res = ctx.getResults();
  auto bl = res.initBranches(found.size());
  auto kl = res.initKnown(found.size());
  for (unsigned i = 0; i < found.size(); ++i) {
    kl.set(i, found[i].has_value());
    if (found[i]) {
      fillBranchInfo(bl[i], *found[i]);
    } else {
      fillXid(bl[i].initXid(), xids[i]);
    }
  }
  return kj::READY_NOW;
}

kj::Promise<void> ParticipantImpl::forget(ForgetContext ctx) {
  auto p = ctx.getParams();
  return agent_.forget(p.getEpoch(), readXids(p.getXids())).then([ctx](BranchLog::ForgetResult r) mutable {
    auto res = ctx.getResults();
    res.setForgotten(r.forgotten);
    auto l = res.initRefused(r.refused.size());
    for (unsigned i = 0; i < r.refused.size(); ++i) fillXid(l[i], r.refused[i]);
    auto why = res.initReasons(r.reasons.size());
    for (unsigned i = 0; i < r.reasons.size(); ++i) why.set(i, r.reasons[i]);
  });
}

kj::Promise<void> ParticipantImpl::listBranches(ListBranchesContext ctx) {
  auto p = ctx.getParams();
  bool more = false;
  std::uint32_t limit = std::min<std::uint32_t>(p.getLimit() == 0 ? 1000 : p.getLimit(), 10000);
  auto list = agent_.listBranches(readXid(p.getAfter()), limit, more);
  auto res = ctx.getResults();
  auto l = res.initBranches(list.size());
  for (unsigned i = 0; i < list.size(); ++i) fillBranchInfo(l[i], list[i]);
  res.setMore(more);
  fillFloors(agent_.branchLog(), [&](unsigned n) { return res.initFloors(n); });
  return kj::READY_NOW;
}

kj::Promise<void> ParticipantImpl::backup(BackupContext ctx) { return serveBackup(backups_, ctx); }

kj::Promise<void> ParticipantImpl::release(ReleaseContext ctx) {
  auto p = ctx.getParams();
  auto keepList = p.getKeep();
  if (keepList.size() > BranchLog::kMaxReleaseKeep) {
    return faultException("a release keeps at most " + std::to_string(BranchLog::kMaxReleaseKeep) + " seqs, got " +
                          std::to_string(keepList.size()));
  }
  std::vector<std::uint64_t> keep;
  keep.reserve(keepList.size());
  for (auto k : keepList) keep.push_back(k);
  kj::Promise<BranchLog::ReleaseResult> done = nullptr;
  try {
    done = agent_.branchLog().release(p.getNode(), p.getEpoch(), p.getFloor(), std::move(keep));
  } catch (const std::invalid_argument& e) {
    return faultException(std::string("release refused: ") + e.what());
  }
  return done.then([ctx](BranchLog::ReleaseResult r) mutable {
    auto res = ctx.getResults();
    res.setDropped(r.dropped);
    res.setMore(r.more);
    res.setFloor(r.floor);
  });
}

}  // namespace keel
