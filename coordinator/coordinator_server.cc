#include "coordinator/coordinator_server.h"

#include <capnp/schema.h>

#include <algorithm>
#include <cmath>

#include "common/fault.h"
#include "common/log.h"
#include "common/wire.h"
#include "coordinator/client_requests.h"

namespace keel {

namespace {
// A submit result's size in a message, roughly (messageSizeHint).
std::size_t submitResultBytes(const SubmitOutcome& o) {
  std::size_t bytes = 96 + o.reason.size() + o.requestId.size();
  for (const auto& r : o.results) bytes += 64 + 32 * r.rows.size();
  return bytes;
}
}  // namespace

void fillSubmitResult(wire::SubmitResult::Builder b, const SubmitOutcome& o) {
  b.setSeq(o.seq);
  b.setOutcome(static_cast<wire::Outcome>(o.outcome));
  b.setReason(o.reason);
  auto l = b.initResults(o.results.size());
  for (unsigned i = 0; i < o.results.size(); ++i) fillOpResult(l[i], o.results[i]);
  b.setRequestId(o.requestId);
  b.setReplayed(o.replayed);
}

namespace {

// A fault of the coordinator's own while taking a request (never a
// protocol outcome): the client hears "unavailable" with what happened,
// without KJ internals.
kj::Promise<SubmitOutcome> guarded(kj::Promise<SubmitOutcome> p, std::string requestId) {
  return p.catch_([requestId = std::move(requestId)](kj::Exception&& e) {
    return SubmitOutcome{0, ClientOutcome::Unavailable, "coordinator fault: " + describeFault(e), {}, requestId,
                         false};
  });
}

// Who an operator action is recorded as: over TLS the caller's certificate
// identity (free text from the network proves nothing); on an insecure
// (plaintext) coordinator what the caller said.
std::string operatorWho(capnp::Text::Reader said) {
  const Peer* p = callingPeer();
  if (p != nullptr && p->tls) return p->identity;
  return said.cStr();
}

bool listed(const std::vector<std::string>& names, const std::string& id) {
  return std::find(names.begin(), names.end(), id) != names.end();
}

}  // namespace

AccessPolicy coordinatorAccess(const TlsConfig& tls) {
  if (!tls.enabled()) return [](const Peer&) { return Access{"any (insecure)", false, nullptr}; };
  // The operator interface: what may change an outcome or reads the
  // coordinator's books across clients.
  auto schema = capnp::Schema::from<wire::Coordinator>();
  std::vector<std::uint16_t> operatorOnly;
  for (const char* m : {"listUnfinished", "retryNow", "resolve", "audit", "listHeuristic", "reconciled", "backup",
                        "exportRange", "search", "archivePeriods", "dropArchive", "embeddedParticipant"}) {
    operatorOnly.push_back(schema.getMethodByName(m).getIndex());
  }
  const std::uint64_t iface = capnp::typeId<wire::Coordinator>();
  return [tls, operatorOnly, iface, schema](const Peer& peer) -> Access {
    if (listed(tls.operators, peer.identity)) return Access{"operator", false, nullptr};
    if (!tls.clients.empty() && !listed(tls.clients, peer.identity)) {
      std::string why = "permission denied: '" + peer.identity +
                        "' may not use this coordinator (not in its [tls] clients or operators)";
      return Access{"none", false, [why](std::uint64_t, std::uint16_t, capnp::AnyPointer::Reader) { return why; }};
    }
    std::string id = peer.identity;
    return Access{"client", false,
                  [id, operatorOnly, iface, schema](std::uint64_t i, std::uint16_t m, capnp::AnyPointer::Reader) {
                    if (i != iface || std::find(operatorOnly.begin(), operatorOnly.end(), m) == operatorOnly.end()) {
                      return std::string();
                    }
                    return "permission denied: " + std::string(schema.getMethods()[m].getProto().getName().cStr()) +
                           " is an operator call and '" + id +
                           "' is not an operator of this coordinator (its [tls] operators)";
                  }};
  };
}

kj::Promise<void> CoordinatorImpl::submit(SubmitContext ctx) {
  auto p = ctx.getParams();
  auto req = readSubmitRequest(p);
  std::string id = req.requestId;
  return guarded(kj::evalNow([&]() { return c_.submit(std::move(req)); }), std::move(id))
      .then([ctx](SubmitOutcome o) mutable {
        fillSubmitResult(ctx.getResults(messageSizeHint(submitResultBytes(o))).initResult(), o);
      });
}

kj::Promise<void> CoordinatorImpl::submitBatch(SubmitBatchContext ctx) {
  // Every item is an independent interaction, exactly as if submitted alone;
  // started together, their records and decisions share group commits and
  // their prepares share messages to each participant.
  auto items = ctx.getParams().getItems();
  if (items.size() > kMaxSubmitBatch) {
    auto bad = SubmitOutcome::of(0, ClientOutcome::Invalid,
                                 "a submitBatch carries at most " + std::to_string(kMaxSubmitBatch) +
                                     " interactions, got " + std::to_string(items.size()));
    auto l = ctx.getResults().initResults(items.size());
    for (unsigned i = 0; i < items.size(); ++i) fillSubmitResult(l[i], bad);
    return kj::READY_NOW;
  }
  c_.metrics().submitBatch->observe(items.size());
  kj::Vector<kj::Promise<SubmitOutcome>> outs(items.size());
  for (auto item : items) {
    auto req = readSubmitRequest(item);
    std::string id = req.requestId;
    outs.add(guarded(kj::evalNow([&]() { return c_.submit(std::move(req)); }), std::move(id)));
  }
  return kj::joinPromises(outs.releaseAsArray()).then([ctx](kj::Array<SubmitOutcome> rs) mutable {
    std::size_t bytes = 32;
    for (const auto& r : rs) bytes += submitResultBytes(r);
    auto l = ctx.getResults(messageSizeHint(bytes)).initResults(rs.size());
    for (unsigned i = 0; i < rs.size(); ++i) fillSubmitResult(l[i], rs[i]);
  });
}

kj::Promise<void> CoordinatorImpl::begin(BeginContext ctx) {
  auto p = ctx.getParams();
  SubmitRequest req = readRequestFields(p);
  return c_.begin(std::move(req)).then([this, ctx](Coordinator::Begun b) mutable {
    if (b.replay) {
      fillSubmitResult(ctx.getResults().initReplay(), *b.replay);
      return;
    }
    ctx.getResults().setTxn(kj::heap<TransactionImpl>(c_, b.seq));
  });
}

namespace {

// query / queryRequest: both records exactly as the WAL holds them.
template <typename Results>
void fillStory(Results res, const std::optional<StoredInteraction>& found) {
  res.setFound(found.has_value());
  if (!found) return;
  res.setInteraction(kj::arrayPtr(reinterpret_cast<const kj::byte*>(found->interaction.data()),
                                  found->interaction.size()));
  res.setRollback(kj::arrayPtr(reinterpret_cast<const kj::byte*>(found->rollback.data()), found->rollback.size()));
}

}  // namespace

kj::Promise<void> CoordinatorImpl::query(QueryContext ctx) {
  return c_.queryAnywhere(ctx.getParams().getSeq()).then([ctx](std::optional<StoredInteraction> found) mutable {
    fillStory(ctx.getResults(), found);
  });
}

kj::Promise<void> CoordinatorImpl::queryRequest(QueryRequestContext ctx) {
  auto id = ctx.getParams().getRequestId();
  fillStory(ctx.getResults(), c_.queryRequest(std::string(id.begin(), id.size())));
  return kj::READY_NOW;
}

namespace {

template <typename Results>
void fillRecords(Results res, const std::vector<std::string>& list) {
  auto l = res.initInteractions(list.size());
  for (unsigned i = 0; i < list.size(); ++i) {
    l.set(i, kj::arrayPtr(reinterpret_cast<const kj::byte*>(list[i].data()), list[i].size()));
  }
}

std::size_t listLimit(std::uint32_t asked) { return asked == 0 ? 100 : std::min<std::uint32_t>(asked, 10000); }

}  // namespace

kj::Promise<void> CoordinatorImpl::listUnfinished(ListUnfinishedContext ctx) {
  fillRecords(ctx.getResults(), c_.listUnfinished(listLimit(ctx.getParams().getLimit())));
  return kj::READY_NOW;
}

kj::Promise<void> CoordinatorImpl::listHeuristic(ListHeuristicContext ctx) {
  fillRecords(ctx.getResults(), c_.listHeuristic(listLimit(ctx.getParams().getLimit())));
  return kj::READY_NOW;
}

kj::Promise<void> CoordinatorImpl::reconciled(ReconciledContext ctx) {
  auto p = ctx.getParams();
  return c_.reconciled(p.getSeq(), operatorWho(p.getWho()), p.getWhy().cStr()).then([ctx](Coordinator::ResolveResult r) mutable {
    ctx.getResults().setDone(r.done);
    ctx.getResults().setReason(r.reason);
  });
}

kj::Promise<void> CoordinatorImpl::info(InfoContext ctx) {
  auto i = c_.info();
  auto res = ctx.getResults();
  res.setNodeId(i.nodeId);
  res.setEpoch(i.epoch);
  auto l = res.initParticipants(i.participants.size());
  for (unsigned k = 0; k < i.participants.size(); ++k) l.set(k, i.participants[k]);
  res.setCommitted(i.committed);
  res.setRolledBack(i.rolledBack);
  res.setUnfinished(i.unfinished);
  res.setHeuristic(i.heuristic);
  res.setClustered(i.clustered);
  res.setTakeoverCommitted(i.takeoverCommitted);
  res.setTakeoverRolledBack(i.takeoverRolledBack);
  res.setEtcdTxns(i.etcdTxns);
  res.setEtcdDecisions(i.etcdDecisions);
  res.setLogCommits(logStats_.commits.load(std::memory_order_relaxed));
  res.setLogJobs(logStats_.jobs.load(std::memory_order_relaxed));
  auto ck = logStats_.checkpointLatency->snapshot();
  res.setLogCheckpoints(ck.count);
  res.setLogCheckpointMicros(std::uint64_t(std::llround(ck.sum * 1e6)));
  return kj::READY_NOW;
}

kj::Promise<void> CoordinatorImpl::outcome(OutcomeContext ctx) {
  ctx.getResults().setOutcome(static_cast<wire::DecisionOutcome>(c_.outcome(ctx.getParams().getSeq())));
  return kj::READY_NOW;
}

kj::Promise<void> CoordinatorImpl::stats(StatsContext ctx) {
  auto s = c_.stats();
  auto b = ctx.getResults().initStats();
  b.setCount(s.count);
  b.setP50Us(s.p50Us);
  b.setP99Us(s.p99Us);
  b.setMaxUs(s.maxUs);
  b.setInDoubt(s.inDoubt);
  b.setOldestUs(s.oldestUs);
  b.setRollbacks(s.rollbacks);
  b.setRetriedCommits(s.retriedCommits);
  b.setHeuristic(s.heuristic);
  return kj::READY_NOW;
}

kj::Promise<void> CoordinatorImpl::retryNow(RetryNowContext ctx) {
  ctx.getResults().setWoken(c_.retryNow(ctx.getParams().getSeq()));
  return kj::READY_NOW;
}

kj::Promise<void> CoordinatorImpl::resolve(ResolveContext ctx) {
  auto p = ctx.getParams();
  return c_.resolve(p.getSeq(), p.getCommit(), operatorWho(p.getWho()), p.getWhy().cStr(), p.getOverride())
      .then([ctx](Coordinator::ResolveResult r) mutable {
        ctx.getResults().setDone(r.done);
        ctx.getResults().setReason(r.reason);
      });
}

kj::Promise<void> CoordinatorImpl::audit(AuditContext ctx) {
  std::uint32_t limit = ctx.getParams().getLimit();
  auto entries = c_.audit(limit == 0 ? 1000 : limit);
  auto l = ctx.getResults().initEntries(entries.size());
  for (unsigned i = 0; i < entries.size(); ++i) l.set(i, toJson(entries[i]));
  return kj::READY_NOW;
}

kj::Promise<void> CoordinatorImpl::backup(BackupContext ctx) { return serveBackup(backups_, ctx); }

namespace {

// An export in progress: pages from the WAL into the caller's sink, one
// short read transaction per page, the event loop free between pages.
struct ExportJob {
  Coordinator& c;
  wire::ExportSink::Client sink;
  Micros fromUs, toUs;
  Coordinator::JournalCursor at{};
  std::uint64_t interactions = 0, rollbacks = 0, scanned = 0, damaged = 0, total = 0;

  kj::Promise<void> next() {
    auto page = c.journalPage(at, fromUs, toUs);
    scanned += page.scanned;
    for (auto seq : page.damaged) {
      KEEL_LOG_ERROR("export: the record of seq {} is damaged; skipped (keel-coordinator --check-wal)", seqText(seq));
    }
    damaged += page.damaged.size();
    auto req = sink.pageRequest();
    auto is = req.initInteractions(page.records.size());
    std::size_t withRollback = 0;
    for (const auto& r : page.records) withRollback += r.rollback.empty() ? 0 : 1;
    auto rs = req.initRollbacks(withRollback);
    std::size_t i = 0, j = 0;
    for (const auto& r : page.records) {
      is.set(i++, capnp::Data::Reader(reinterpret_cast<const kj::byte*>(r.interaction.data()), r.interaction.size()));
      if (!r.rollback.empty()) {
        rs.set(j++, capnp::Data::Reader(reinterpret_cast<const kj::byte*>(r.rollback.data()), r.rollback.size()));
      }
    }
    total = std::max(total, page.total);
    req.setScanned(scanned);
    req.setTotal(std::max(total, scanned));
    interactions += page.records.size();
    rollbacks += withRollback;
    bool done = !page.next;
    if (page.next) at = *page.next;
    return req.send().then([this, done]() -> kj::Promise<void> {
      if (done) return kj::READY_NOW;
      return kj::evalLater([this]() { return next(); });
    });
  }
};

}  // namespace

kj::Promise<void> CoordinatorImpl::exportRange(ExportRangeContext ctx) {
  auto p = ctx.getParams();
  if (p.getFromUs() >= p.getToUs()) {
    return KJ_EXCEPTION(FAILED, "export: the range is empty or reversed (from must be before to)");
  }
  auto job = kj::heap<ExportJob>(ExportJob{c_, p.getSink(), p.getFromUs(), p.getToUs()});
  auto& j = *job;
  return j.next().then([ctx, &j]() mutable {
    auto r = ctx.getResults();
    r.setInteractions(j.interactions);
    r.setRollbacks(j.rollbacks);
    r.setScanned(j.scanned);
    r.setDamaged(j.damaged);
  }).attach(kj::mv(job));
}

namespace {

// A search in progress: pages like ExportJob, matches kept up to the limit.
struct SearchJob {
  Coordinator& c;
  Micros fromUs, toUs;
  std::string participant, state;
  std::size_t limit;
  Coordinator::JournalCursor at{};
  std::uint64_t scanned = 0;
  std::vector<std::string> found{};
  bool more = false;

  bool matches(const InteractionRecord& r) const {
    if (!state.empty() && state != stateName(r.state)) return false;
    if (participant.empty()) return true;
    return std::any_of(r.branches.begin(), r.branches.end(),
                       [&](const auto& b) { return b.participant == participant; });
  }

  // What the archive's indexes can narrow the reads to.
  Archive::Filter filter() const {
    Archive::Filter f;
    f.participant = participant;
    if (auto s = stateByName(state)) f.state = std::uint8_t(*s);
    return f;
  }

  kj::Promise<void> next() {
    auto page = c.journalPage(at, fromUs, toUs, filter());
    scanned += page.scanned;
    for (auto& r : page.records) {
      InteractionRecord rec;
      try {
        rec = decodeInteraction(r.interaction);
      } catch (const CorruptRecord&) {
        continue;  // exportPage's check passed; a full decode failing is logged by --check-wal
      }
      if (!matches(rec)) continue;
      if (found.size() == limit) {
        more = true;
        return kj::READY_NOW;
      }
      found.push_back(std::move(r.interaction));
    }
    if (!page.next) return kj::READY_NOW;
    at = *page.next;
    return kj::evalLater([this]() { return next(); });
  }
};

}  // namespace

kj::Promise<void> CoordinatorImpl::search(SearchContext ctx) {
  auto p = ctx.getParams();
  if (p.getFromUs() >= p.getToUs()) {
    return KJ_EXCEPTION(FAILED, "search: the range is empty or reversed (from must be before to)");
  }
  if (p.getLimit() == 0 || p.getLimit() > 10000) return KJ_EXCEPTION(FAILED, "search: limit must be 1..10000");
  if (p.getParticipant().size() > 256 || p.getState().size() > 64) {
    return KJ_EXCEPTION(FAILED, "search: participant or state too long");
  }
  std::string stateText = p.getState().cStr();
  if (!stateText.empty() && !stateByName(stateText)) {
    return KJ_EXCEPTION(FAILED, kj::str("search: unknown state '", stateText, "' (", stateNames(), ")"));
  }
  auto job = kj::heap<SearchJob>(SearchJob{c_, p.getFromUs(), p.getToUs(), p.getParticipant().cStr(),
                                           p.getState().cStr(), p.getLimit()});
  auto& j = *job;
  return j.next()
      .then([ctx, &j]() mutable {
        auto r = ctx.getResults();
        auto l = r.initInteractions(j.found.size());
        for (unsigned i = 0; i < j.found.size(); ++i) {
          l.set(i, capnp::Data::Reader(reinterpret_cast<const kj::byte*>(j.found[i].data()), j.found[i].size()));
        }
        r.setScanned(j.scanned);
        r.setMore(j.more);
      })
      .attach(kj::mv(job));
}

kj::Promise<void> CoordinatorImpl::archivePeriods(ArchivePeriodsContext ctx) {
  auto periods = c_.archivePeriods();
  auto l = ctx.getResults().initPeriods(periods.size());
  for (unsigned i = 0; i < periods.size(); ++i) {
    l[i].setName(periods[i].name);
    l[i].setInteractions(periods[i].interactions);
    l[i].setDamaged(periods[i].damaged);
  }
  return kj::READY_NOW;
}

kj::Promise<void> CoordinatorImpl::dropArchive(DropArchiveContext ctx) {
  auto p = ctx.getParams();
  if (p.getBefore().size() > 32 || p.getWhy().size() > 4096) {
    return KJ_EXCEPTION(FAILED, "dropArchive: before or why too long");
  }
  return c_.dropArchive(p.getBefore().cStr(), operatorWho(p.getWho()), p.getWhy().cStr())
      .then([ctx](Coordinator::ArchiveDrop d) mutable {
        auto r = ctx.getResults();
        auto l = r.initDropped(d.dropped.size());
        for (unsigned i = 0; i < d.dropped.size(); ++i) l.set(i, d.dropped[i]);
        r.setRefused(d.refused);
      });
}

kj::Promise<void> CoordinatorImpl::embeddedParticipant(EmbeddedParticipantContext ctx) {
  auto name = ctx.getParams().getName();
  if (name.size() > 256) return KJ_EXCEPTION(FAILED, "embeddedParticipant: name too long");
  auto view = c_.embeddedOperatorView(name.cStr());
  if (!view) {
    std::string what(name.cStr());
    if (!c_.hasParticipant(what)) return faultException("this coordinator has no participant " + what);
    return faultException("participant " + what +
                          " is not embedded in this coordinator: ask its keel-agent at its own address (keelctl "
                          "--agent HOST:PORT)");
  }
  ctx.getResults().setParticipant(kj::mv(*view));
  return kj::READY_NOW;
}

TransactionImpl::~TransactionImpl() noexcept(false) {
  if (!life_.expired()) c_.abandon(seq_);
}

kj::Promise<void> TransactionImpl::seq(SeqContext ctx) {
  ctx.getResults().setSeq(seq_);
  return kj::READY_NOW;
}

kj::Promise<void> TransactionImpl::execute(ExecuteContext ctx) {
  return c_.execute(seq_, readOps(ctx.getParams().getOperations())).then([ctx](SubmitOutcome o) mutable {
    fillSubmitResult(ctx.getResults().initResult(), o);
  });
}

kj::Promise<void> TransactionImpl::commit(CommitContext ctx) {
  return c_.commitInteractive(seq_).then([ctx](SubmitOutcome o) mutable {
    fillSubmitResult(ctx.getResults().initResult(), o);
  });
}

kj::Promise<void> TransactionImpl::rollback(RollbackContext ctx) {
  return c_.rollbackInteractive(seq_, "rolled back by the client").then([ctx](SubmitOutcome o) mutable {
    fillSubmitResult(ctx.getResults().initResult(), o);
  });
}

}  // namespace keel
