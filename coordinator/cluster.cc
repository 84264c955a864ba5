// ClusterMember: membership, epochs, seq reservations and decisions in etcd.
// See cluster.h for the keys and docs/cluster.md for the design.

#include "coordinator/cluster.h"

#include <kj/debug.h>
#include <kj/vector.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "common/fault.h"
#include "common/log.h"
#include "common/types.h"

namespace keel {

namespace {

// Strict decimal u64 (nothing read from etcd is trusted).
std::optional<std::uint64_t> parseU64(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::string seqDigits(std::uint64_t seq) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%020llu", static_cast<unsigned long long>(seq));
  return buf;
}

std::uint64_t valueU64(const etcd::RangeResult& r, const std::string& what) {
  if (r.kvs.empty()) return 0;
  auto v = parseU64(r.kvs.front().value);
  if (!v) throw ClusterError(what + " in etcd holds '" + r.kvs.front().value.substr(0, 40) + "', not a number");
  return *v;
}

// Start-up's blocking calls: an etcd member that is down fails one call
// (and the client moves to the next endpoint), so a failure is retried,
// for up to 20 s, before the start is given up.
template <typename F>
auto retryingStartUp(const char* what, F&& f) -> decltype(f()) {
  auto giveUp = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (unsigned attempt = 1;; ++attempt) {
    try {
      return f();
    } catch (const etcd::EtcdError& e) {
      if (std::chrono::steady_clock::now() >= giveUp) throw;
      KEEL_LOG_WARN("cluster: {} failed ({}); trying again (attempt {})", what, e.what(), attempt + 1);
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(100u * attempt, 1000u)));
    }
  }
}

// P/requests/<id>: "<seq>" (committed, written with the COMMIT) or
// "abort <seq>" (rolled back).
ClusterMember::RequestFate parseRequestFate(const std::string& v) {
  ClusterMember::RequestFate f;
  if (v.rfind("abort ", 0) == 0) {
    f.seq = parseU64(std::string_view(v).substr(6)).value_or(0);
  } else {
    f.seq = parseU64(v).value_or(0);
    f.committed = f.seq != 0;
  }
  if (f.seq == 0) KEEL_LOG_ERROR("cluster: malformed request fate '{}' in etcd", v.substr(0, 60));
  return f;
}

}  // namespace

// ------------------------------------------------------------ decision values

std::string ClusterDecision::encode() const {
  std::string s = commit ? "commit" : "abort";
  s += " by=" + std::to_string(by) + " epoch=" + std::to_string(epoch);
  if (!branches.empty()) {
    s += " branches=";
    for (std::size_t i = 0; i < branches.size(); ++i) {
      if (i) s += ',';
      s += branches[i].first + ':' + std::to_string(branches[i].second);
    }
  }
  return s;
}

std::optional<ClusterDecision> ClusterDecision::decode(const std::string& s) {
  if (s.size() > 64 * 1024) return std::nullopt;
  ClusterDecision d;
  std::size_t pos = 0;
  auto word = [&]() -> std::string_view {
    while (pos < s.size() && s[pos] == ' ') ++pos;
    std::size_t start = pos;
    while (pos < s.size() && s[pos] != ' ') ++pos;
    return std::string_view(s).substr(start, pos - start);
  };
  auto kind = word();
  if (kind == "commit") {
    d.commit = true;
  } else if (kind != "abort") {
    return std::nullopt;
  }
  bool haveBy = false, haveEpoch = false;
  for (auto w = word(); !w.empty(); w = word()) {
    auto eq = w.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    auto key = w.substr(0, eq), val = w.substr(eq + 1);
    if (key == "by") {
      auto v = parseU64(val);
      if (!v || *v > 65535) return std::nullopt;
      d.by = std::uint16_t(*v);
      haveBy = true;
    } else if (key == "epoch") {
      auto v = parseU64(val);
      if (!v) return std::nullopt;
      d.epoch = *v;
      haveEpoch = true;
    } else if (key == "branches") {
      std::size_t p = 0;
      while (p <= val.size()) {
        auto comma = val.find(',', p);
        auto item = val.substr(p, comma == std::string_view::npos ? std::string_view::npos : comma - p);
        auto colon = item.rfind(':');
        if (colon == std::string_view::npos) return std::nullopt;
        std::string name(item.substr(0, colon));
        auto b = parseU64(item.substr(colon + 1));
        if (!validName(name) || !b || *b > 65535) return std::nullopt;
        d.branches.emplace_back(std::move(name), std::uint16_t(*b));
        if (comma == std::string_view::npos) break;
        p = comma + 1;
      }
    }  // unknown keys: a newer writer's additions, ignored
  }
  if (!haveBy || !haveEpoch) return std::nullopt;
  return d;
}

// ------------------------------------------------------------ member

struct ClusterMember::Pending {
  std::uint16_t node = 0;
  std::uint64_t epoch = 0;
  std::uint64_t seq = 0;
  std::string value;
  ClusterDecision want;
  std::string requestId;
  kj::Own<kj::PromiseFulfiller<Outcome>> fulfiller;
  // The same seq asked for again before this one was sent (a takeover
  // finds one interaction at several participants): told the same.
  std::vector<kj::Own<kj::PromiseFulfiller<Outcome>>> followers;

  void fulfill(const Outcome& o) {
    for (auto& f : followers) f->fulfill(Outcome(o));
    fulfiller->fulfill(Outcome(o));
  }
  void reject(const kj::Exception& e) {
    for (auto& f : followers) f->reject(kj::cp(e));
    fulfiller->reject(kj::cp(e));
  }
};

ClusterMember::ClusterMember(const CoordinatorConfig& cfg, std::string advertise, kj::AsyncIoContext& io)
    : cfg_(cfg.cluster), node_(cfg.nodeId), advertise_(std::move(advertise)), io_(&io), tasks_(*this) {
  etcd::Options o;
  o.callTimeout = std::chrono::milliseconds(cfg_.callTimeoutMs);
  o.dialTimeout = std::chrono::milliseconds(cfg_.callTimeoutMs);
  etcd_ = std::make_unique<etcd::Client>(cfg_.etcdEndpoints, o);
}

ClusterMember::~ClusterMember() { destroying_ = true; }

void ClusterMember::taskFailed(kj::Exception&& e) { KEEL_LOG_ERROR("cluster: {}", describeFault(e)); }

std::string ClusterMember::memberKey(std::uint16_t n) const { return cfg_.prefix + "/members/" + std::to_string(n); }
std::string ClusterMember::epochKey(std::uint16_t n) const {
  return cfg_.prefix + "/nodes/" + std::to_string(n) + "/epoch";
}
std::string ClusterMember::seqKey(std::uint16_t n) const {
  return cfg_.prefix + "/nodes/" + std::to_string(n) + "/seq_hwm";
}
std::string ClusterMember::settledKey(std::uint16_t n) const {
  return cfg_.prefix + "/nodes/" + std::to_string(n) + "/settled";
}
std::string ClusterMember::takeoverKey(std::uint16_t n) const {
  return cfg_.prefix + "/takeover/" + std::to_string(n);
}
std::string ClusterMember::decisionPrefix(std::uint16_t n) const {
  return cfg_.prefix + "/decisions/" + std::to_string(n) + "/";
}
std::string ClusterMember::decisionKey(std::uint64_t seq) const {
  return decisionPrefix(seqNode(seq)) + seqDigits(seq);
}
std::string ClusterMember::requestKey(const std::string& id) const { return cfg_.prefix + "/requests/" + id; }

kj::Promise<std::int64_t> ClusterMember::requestLease() {
  auto now = std::chrono::steady_clock::now();
  if (requestLease_ != 0 && now < requestLeaseUntil_) return requestLease_;
  // A key put under it lives kRequestKeyTtlS at least, and a minute more.
  return etcd_->grant(kRequestKeyTtlS + 60).then([this, now](etcd::Lease l) {
    requestLease_ = l.id;
    requestLeaseUntil_ = now + std::chrono::seconds(60);
    return l.id;
  });
}

kj::Duration ClusterMember::backoff(std::uint32_t attempt) const {
  std::uint64_t ms = 50ull << std::min<std::uint32_t>(attempt, 5);
  return std::min<std::uint64_t>(ms, 1000) * kj::MILLISECONDS;
}

ClusterMember::Joined ClusterMember::join(std::uint64_t localEpoch) {
  return retryingStartUp("joining the cluster", [&]() { return joinOnce(localEpoch); });
}

ClusterMember::Joined ClusterMember::joinOnce(std::uint64_t localEpoch) {
  using Clock = std::chrono::steady_clock;
  auto deadline = Clock::now() + std::chrono::seconds(cfg_.leaseTtlS) + std::chrono::seconds(1);
  bool waitLogged = false;
  std::string me = "addr=" + advertise_ + " pid=" + std::to_string(::getpid());
  for (;;) {
    auto member = etcd_->rangeSync(memberKey(node_));
    auto ep = etcd_->rangeSync(epochKey(node_));
    if (!member.kvs.empty()) {
      if (Clock::now() >= deadline) {
        throw ClusterError("node id " + std::to_string(node_) + " is held by a live coordinator (" +
                           member.kvs.front().value + "): each coordinator of a cluster needs its own node_id");
      }
      if (!waitLogged) {
        KEEL_LOG_WARN("cluster: node id {} is still held ({}); waiting up to {} s for that lease to lapse", node_,
                      member.kvs.front().value, cfg_.leaseTtlS + 1);
        waitLogged = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    // The lease is granted only now: one granted before a wait would lapse
    // during it (nothing renews it until the claim holds).
    lease_ = etcd_->grantSync(cfg_.leaseTtlS);
    std::uint64_t stored = valueU64(ep, epochKey(node_));
    std::uint64_t epoch = std::max(stored, localEpoch) + 1;
    std::vector<etcd::Compare> cmp{etcd::Compare::absent(memberKey(node_))};
    cmp.push_back(ep.kvs.empty() ? etcd::Compare::absent(epochKey(node_))
                                 : etcd::Compare::modRevisionIs(epochKey(node_), ep.kvs.front().modRevision));
    auto r = etcd_->txnSync(cmp,
                            {etcd::Op::put(memberKey(node_), me + " epoch=" + std::to_string(epoch), lease_.id),
                             etcd::Op::put(epochKey(node_), std::to_string(epoch))},
                            {});
    if (!r.succeeded) {  // someone moved meanwhile: read again
      etcd_->revokeSync(lease_.id);
      continue;
    }
    epoch_ = epoch;
    break;
  }
  // Renewed from now on, through recovery and serving. Losing it means
  // this member may be taken over: fail-stop (serve() names who stops).
  keeper_ = etcd_->keepAlive(lease_, [this]() {
    if (onLost_) {
      onLost_();
      return;
    }
    KEEL_LOG_ERROR("cluster: membership lease lost during start-up: stopping");
    std::_Exit(1);
  });
  Joined j;
  j.epoch = epoch_;
  j.seqFloor = valueU64(etcd_->rangeSync(seqKey(node_)), seqKey(node_));
  seqReserved_ = j.seqFloor;
  KEEL_LOG_INFO("cluster: joined as node {} with epoch {} (lease {} s, etcd {})", node_, epoch_, cfg_.leaseTtlS,
                fmt::join(cfg_.etcdEndpoints, ","));
  return j;
}

void ClusterMember::reserveSeqsSync(std::uint64_t limit) {
  retryingStartUp("recording the seq reservation", [&]() { reserveSeqsSyncOnce(limit); });
}

void ClusterMember::reserveSeqsSyncOnce(std::uint64_t limit) {
  // Only ever raised: a compare on the old value makes two writers safe.
  for (;;) {
    auto cur = etcd_->rangeSync(seqKey(node_));
    std::uint64_t have = valueU64(cur, seqKey(node_));
    if (have >= limit) break;
    auto c = cur.kvs.empty() ? etcd::Compare::absent(seqKey(node_))
                             : etcd::Compare::modRevisionIs(seqKey(node_), cur.kvs.front().modRevision);
    if (etcd_->txnSync({c}, {etcd::Op::put(seqKey(node_), std::to_string(limit))}, {}).succeeded) break;
  }
  seqReserved_ = std::max(seqReserved_, limit);
}

kj::Promise<void> ClusterMember::reserveSeqs(std::uint64_t limit) {
  if (limit <= seqReserved_) return kj::READY_NOW;
  auto key = seqKey(node_);
  return etcd_->range(key).then([this, key, limit](etcd::RangeResult cur) -> kj::Promise<void> {
    std::uint64_t have = valueU64(cur, key);
    if (have >= limit) {
      seqReserved_ = std::max(seqReserved_, limit);
      return kj::READY_NOW;
    }
    auto c = cur.kvs.empty() ? etcd::Compare::absent(key)
                             : etcd::Compare::modRevisionIs(key, cur.kvs.front().modRevision);
    return etcd_->txn({c}, {etcd::Op::put(key, std::to_string(limit))}, {})
        .then([this, limit](etcd::TxnResult r) -> kj::Promise<void> {
          if (!r.succeeded) return reserveSeqs(limit);
          seqReserved_ = std::max(seqReserved_, limit);
          return kj::READY_NOW;
        });
  });
}

std::map<std::uint64_t, ClusterDecision> ClusterMember::decisionsOfSync(std::uint16_t node) {
  return retryingStartUp("reading the node's decisions", [&]() { return decisionsOfSyncOnce(node); });
}

std::map<std::uint64_t, ClusterDecision> ClusterMember::decisionsOfSyncOnce(std::uint16_t node) {
  auto prefix = decisionPrefix(node);
  return decisionsIn(node, etcd_->rangeSync(prefix, etcd::prefixEnd(prefix)));
}

kj::Promise<std::map<std::uint64_t, ClusterDecision>> ClusterMember::decisionsOf(std::uint16_t node) {
  auto prefix = decisionPrefix(node);
  return etcd_->range(prefix, etcd::prefixEnd(prefix)).then([this, node](etcd::RangeResult r) {
    return decisionsIn(node, r);
  });
}

std::map<std::uint64_t, ClusterDecision> ClusterMember::decisionsIn(std::uint16_t node,
                                                                    const etcd::RangeResult& r) const {
  // Nothing read from etcd is trusted: a key or value that does not parse,
  // or a seq of another node under this node's prefix, is left out (logged).
  std::map<std::uint64_t, ClusterDecision> out;
  auto prefix = decisionPrefix(node);
  for (auto& kv : r.kvs) {
    auto seq = parseU64(std::string_view(kv.key).substr(std::min(prefix.size(), kv.key.size())));
    auto d = ClusterDecision::decode(kv.value);
    if (kv.key.compare(0, prefix.size(), prefix) != 0 || !seq || !d || seqNode(*seq) != node) {
      KEEL_LOG_ERROR("cluster: malformed decision {} = '{}' in etcd: ignored", kv.key, kv.value.substr(0, 80));
      continue;
    }
    out.emplace(*seq, std::move(*d));
  }
  return out;
}

// ------------------------------------------------------------ decisions

kj::Promise<ClusterMember::Outcome> ClusterMember::decide(std::uint16_t node, std::uint64_t epoch, std::uint64_t seq,
                                                         ClusterDecision want, std::string requestId) {
  auto paf = kj::newPromiseAndFulfiller<Outcome>();
  auto p = kj::heap<Pending>();
  p->node = node;
  p->epoch = epoch;
  p->seq = seq;
  p->value = want.encode();
  p->want = std::move(want);
  if (p->want.commit) p->requestId = std::move(requestId);
  p->fulfiller = kj::mv(paf.fulfiller);
  pending_.push_back(kj::mv(p));
  flushSoon();
  return kj::mv(paf.promise);
}

void ClusterMember::flushSoon() {
  if (flushQueued_) return;
  flushQueued_ = true;
  // Everything asked for in this turn of the event loop goes together; with
  // [cluster] decision_gather_ms, also everything asked for until that long
  // after the previous decision txn left (fewer, larger txns for more
  // latency; a lone decision after a quiet spell still goes at once).
  if (cfg_.decisionGatherMs > 0) {
    auto& timer = io_->provider->getTimer();
    auto at = lastSend_ + cfg_.decisionGatherMs * kj::MILLISECONDS;
    if (at > timer.now()) {
      tasks_.add(timer.atTime(at).then([this]() { return flush(); }));
      return;
    }
  }
  tasks_.add(kj::evalLater([this]() { return flush(); }));
}

kj::Promise<void> ClusterMember::flush() {
  flushQueued_ = false;
  auto all = std::move(pending_);
  pending_.clear();
  // One txn per (node, epoch) group, at most max_txn_ops - 1 keys each
  // (one compare is the epoch's).
  std::size_t per = std::max<std::uint32_t>(cfg_.maxTxnOps, 2) - 1;
  std::map<std::pair<std::uint16_t, std::uint64_t>, std::vector<kj::Own<Pending>>> groups;
  std::map<std::uint64_t, Pending*> bySeq;  // etcd refuses a txn naming one key twice
  for (auto& p : all) {
    auto [at, fresh] = bySeq.emplace(p->seq, p.get());
    if (!fresh) {
      at->second->followers.push_back(kj::mv(p->fulfiller));
      continue;
    }
    groups[{p->node, p->epoch}].push_back(kj::mv(p));
  }
  // Group commit: at most kDecisionTxnsInFlight txns are out at once; what
  // is asked for meanwhile waits, and goes in one txn when one comes back.
  auto send = [this](std::vector<kj::Own<Pending>>& batch) {
    if (inFlight_ >= kDecisionTxnsInFlight) {
      for (auto& p : batch) pending_.push_back(kj::mv(p));
    } else {
      ++inFlight_;
      lastSend_ = io_->provider->getTimer().now();
      tasks_.add(sendBatch(std::move(batch), 0).attach(kj::defer([this]() {
        --inFlight_;
        if (!destroying_ && !pending_.empty()) flushSoon();
      })));
    }
    batch.clear();
  };
  for (auto& [k, v] : groups) {
    // A decision costs one key, and one more with a request id; etcd counts
    // the compares and each branch's ops against --max-txn-ops.
    std::vector<kj::Own<Pending>> batch;
    std::size_t keys = 0;
    for (auto& p : v) {
      std::size_t cost = p->requestId.empty() ? 1 : 2;
      if (!batch.empty() && keys + cost > per) {
        send(batch);
        keys = 0;
      }
      keys += cost;
      batch.push_back(kj::mv(p));
    }
    if (!batch.empty()) send(batch);
  }
  return kj::READY_NOW;
}

kj::Promise<void> ClusterMember::sendBatch(std::vector<kj::Own<Pending>> batch, std::uint32_t attempt) {
  if (batch.empty()) return kj::READY_NOW;
  bool anyRequest = std::any_of(batch.begin(), batch.end(), [](const auto& p) { return !p->requestId.empty(); });
  if (anyRequest) {
    return requestLease().then(
        [this, batch = std::move(batch), attempt](std::int64_t lease) mutable {
          return sendBatchUnder(std::move(batch), attempt, lease);
        },
        [](kj::Exception&& e) -> kj::Promise<void> { return kj::mv(e); });
  }
  return sendBatchUnder(std::move(batch), attempt, 0);
}

kj::Promise<void> ClusterMember::sendBatchUnder(std::vector<kj::Own<Pending>> batch, std::uint32_t attempt,
                                                std::int64_t lease) {
  std::uint16_t node = batch.front()->node;
  std::uint64_t epoch = batch.front()->epoch;
  std::vector<etcd::Compare> cmp;
  std::vector<etcd::Op> ok, otherwise;
  cmp.push_back(etcd::Compare::valueIs(epochKey(node), std::to_string(epoch)));
  otherwise.push_back(etcd::Op::get(epochKey(node)));
  for (auto& p : batch) {
    auto key = decisionKey(p->seq);
    cmp.push_back(etcd::Compare::absent(key));
    ok.push_back(etcd::Op::put(key, p->value));
    otherwise.push_back(etcd::Op::get(key));
  }
  // Request ids after every decision key, so responses line up by index.
  for (auto& p : batch) {
    if (p->requestId.empty()) continue;
    cmp.push_back(etcd::Compare::absent(requestKey(p->requestId)));
    ok.push_back(etcd::Op::put(requestKey(p->requestId), std::to_string(p->seq), lease));
    otherwise.push_back(etcd::Op::get(requestKey(p->requestId)));
  }
  auto shared = kj::heap<std::vector<kj::Own<Pending>>>(std::move(batch));
  auto& ref = *shared;
  return etcd_->txn(std::move(cmp), std::move(ok), std::move(otherwise))
      .then(
          [this, &ref, node, epoch](etcd::TxnResult r) -> kj::Promise<void> {
            ++txns_;
            if (r.succeeded) {
              decisionsWritten_ += ref.size();
              for (auto& p : ref) p->fulfill(Outcome{p->want, false, true});
              return kj::READY_NOW;
            }
            std::size_t requests = 0;
            for (auto& p : ref) requests += p->requestId.empty() ? 0 : 1;
            if (r.responses.size() != ref.size() + 1 + requests) {
              return faultException("etcd answered a decision txn of " + std::to_string(ref.size()) +
                                    " keys with " + std::to_string(r.responses.size()) + " responses");
            }
            std::string now = r.responses[0].kvs.empty() ? "" : r.responses[0].kvs.front().value;
            bool fenced = now != std::to_string(epoch);
            if (fenced) {
              KEEL_LOG_WARN("cluster: node {} is at epoch '{}' in etcd, not {}: it was taken over; deciding nothing "
                            "more under epoch {}",
                            node, now, epoch, epoch);
            }
            std::vector<kj::Own<Pending>> again;
            std::size_t reqAt = ref.size() + 1;
            for (std::size_t i = 0; i < ref.size(); ++i) {
              auto& p = ref[i];
              auto& kvs = r.responses[i + 1].kvs;
              const std::vector<etcd::KeyValue>* reqKvs = nullptr;
              if (!p->requestId.empty()) reqKvs = &r.responses[reqAt++].kvs;
              if (!kvs.empty()) {
                auto d = ClusterDecision::decode(kvs.front().value);
                if (!d) {
                  p->reject(KJ_EXCEPTION(FAILED, "malformed decision in etcd", decisionKey(p->seq),
                                         kvs.front().value.substr(0, 80)));
                  continue;
                }
                p->fulfill(Outcome{std::move(*d), fenced, kvs.front().value == p->value});
              } else if (reqKvs != nullptr && !reqKvs->empty() &&
                         reqKvs->front().value != std::to_string(p->seq)) {
                // Another interaction decided this request id's fate (a
                // retry that went to another coordinator): this one must not
                // commit.
                auto fate = parseRequestFate(reqKvs->front().value);
                ClusterDecision abort;
                abort.by = node;
                abort.epoch = epoch;
                Outcome o{std::move(abort), fenced, false};
                o.requestTakenBy = fate.seq;
                o.requestCommitted = fate.committed;
                p->fulfill(o);
              } else if (fenced) {
                // Nobody can write COMMIT for it any more (the survivor only
                // writes ABORT): it is aborted, though no key says so.
                ClusterDecision abort;
                abort.by = node;
                abort.epoch = epoch;
                p->fulfill(Outcome{std::move(abort), true, false});
              } else {
                again.push_back(kj::mv(p));  // another key of the batch existed: this one goes again
              }
            }
            return sendBatch(std::move(again), 0);
          },
          [this, &ref, attempt](kj::Exception&& e) -> kj::Promise<void> {
            // A refusal made before anything was applied (a malformed
            // request) would be refused again: it ends here.
            if (auto ee = etcd::etcdErrorOf(e); ee && !ee->unknownOutcome()) {
              KEEL_LOG_ERROR("cluster: decision txn of {} keys refused by etcd ({})", ref.size(), ee->what());
              for (auto& p : ref) p->reject(e);
              return kj::READY_NOW;
            }
            // Safe to repeat: a write that did land fails its compare, and
            // its value (ours) is read back.
            if (attempt % 10 == 0) {
              KEEL_LOG_WARN("cluster: decision txn of {} keys failed ({}); retrying", ref.size(), describeFault(e));
            }
            std::vector<kj::Own<Pending>> again;
            for (auto& p : ref) again.push_back(kj::mv(p));
            return io_->provider->getTimer().afterDelay(backoff(attempt)).then(
                [this, again = kj::mv(again), attempt]() mutable { return sendBatch(std::move(again), attempt + 1); });
          })
      .attach(kj::mv(shared));
}

kj::Promise<std::optional<ClusterDecision>> ClusterMember::lookup(std::uint64_t seq) {
  return etcd_->range(decisionKey(seq)).then([](etcd::RangeResult r) -> std::optional<ClusterDecision> {
    if (r.kvs.empty()) return std::nullopt;
    auto d = ClusterDecision::decode(r.kvs.front().value);
    if (!d) throw ClusterError("malformed decision in etcd: " + r.kvs.front().value.substr(0, 80));
    return d;
  });
}

kj::Promise<ClusterMember::RequestFate> ClusterMember::claimRolledBack(std::string requestId, std::uint64_t seq) {
  auto paf = kj::newPromiseAndFulfiller<RequestFate>();
  claims_.emplace_back(std::make_pair(std::move(requestId), seq), kj::mv(paf.fulfiller));
  if (!claimQueued_) {
    claimQueued_ = true;
    tasks_.add(kj::evalLater([this]() { return flushClaims(); }));
  }
  return kj::mv(paf.promise);
}

kj::Promise<void> ClusterMember::flushClaims() {
  claimQueued_ = false;
  auto all = std::move(claims_);
  claims_.clear();
  std::size_t per = std::max<std::uint32_t>(cfg_.maxTxnOps, 1);
  std::set<std::string> inBatch;
  decltype(all) batch;
  auto send = [&]() {
    if (!batch.empty()) tasks_.add(sendClaims(std::move(batch), 0));
    batch.clear();
    inBatch.clear();
  };
  for (auto& c : all) {
    // One key once per txn (etcd refuses duplicates): a second claim of an
    // id goes in the next txn and reads the first one's value.
    if (batch.size() >= per || inBatch.count(c.first.first)) send();
    inBatch.insert(c.first.first);
    batch.push_back(kj::mv(c));
  }
  send();
  return kj::READY_NOW;
}

kj::Promise<void> ClusterMember::sendClaims(
    std::vector<std::pair<std::pair<std::string, std::uint64_t>, kj::Own<kj::PromiseFulfiller<RequestFate>>>> claims,
    std::uint32_t attempt) {
  if (claims.empty()) return kj::READY_NOW;
  auto shared = kj::heap<decltype(claims)>(std::move(claims));
  auto& ref = *shared;
  return requestLease()
      .then([this, &ref](std::int64_t lease) {
        std::vector<etcd::Compare> cmp;
        std::vector<etcd::Op> ok, otherwise;
        for (auto& [c, f] : ref) {
          cmp.push_back(etcd::Compare::absent(requestKey(c.first)));
          ok.push_back(etcd::Op::put(requestKey(c.first), "abort " + std::to_string(c.second), lease));
          otherwise.push_back(etcd::Op::get(requestKey(c.first)));
        }
        return etcd_->txn(std::move(cmp), std::move(ok), std::move(otherwise));
      })
      .then(
          [this, &ref](etcd::TxnResult r) -> kj::Promise<void> {
            ++txns_;
            if (r.succeeded) {
              for (auto& [c, f] : ref) f->fulfill(RequestFate{c.second, false});
              return kj::READY_NOW;
            }
            decltype(claims_) again;
            for (std::size_t i = 0; i < ref.size(); ++i) {
              static const std::vector<etcd::KeyValue> kNone;
              const auto& kvs = i < r.responses.size() ? r.responses[i].kvs : kNone;
              if (kvs.empty()) {
                again.push_back(kj::mv(ref[i]));  // another key of the txn existed
              } else {
                ref[i].second->fulfill(parseRequestFate(kvs.front().value));
              }
            }
            return sendClaims(std::move(again), 0);
          },
          [this, &ref, attempt](kj::Exception&& e) -> kj::Promise<void> {
            if (attempt % 10 == 0) {
              KEEL_LOG_WARN("cluster: claiming {} request ids failed ({}); retrying", ref.size(), describeFault(e));
            }
            decltype(claims_) again;
            for (auto& c : ref) again.push_back(kj::mv(c));
            return io_->provider->getTimer().afterDelay(backoff(attempt)).then(
                [this, again = kj::mv(again), attempt]() mutable { return sendClaims(std::move(again), attempt + 1); });
          })
      .attach(kj::mv(shared));
}

void ClusterMember::forget(std::uint64_t seq) {
  forgets_.push_back(seq);
  // Deletes wait a quarter of a second to gather more (up to max_txn_ops
  // per txn): nobody waits on them, and at 20 ms they were most of the etcd
  // txns under load (keel-bench --cluster 3: 0.12 txns per interaction).
  flushForgetsAfter(250 * kj::MILLISECONDS);
}

void ClusterMember::flushForgetsAfter(kj::Duration delay) {
  if (forgetQueued_) return;
  forgetQueued_ = true;
  tasks_.add(io_->provider->getTimer().afterDelay(delay).then([this]() { return flushForgets(); }));
}

kj::Promise<void> ClusterMember::flushForgets() {
  forgetQueued_ = false;
  auto seqs = std::move(forgets_);
  forgets_.clear();
  std::size_t per = std::max<std::uint32_t>(cfg_.maxTxnOps, 1);
  kj::Vector<kj::Promise<void>> sends;
  for (std::size_t i = 0; i < seqs.size(); i += per) {
    std::vector<etcd::Op> dels;
    std::vector<std::uint64_t> chunk;
    for (std::size_t j = i; j < std::min(seqs.size(), i + per); ++j) {
      dels.push_back(etcd::Op::del(decisionKey(seqs[j])));
      chunk.push_back(seqs[j]);
    }
    sends.add(etcd_->txn({}, std::move(dels), {}).then(
        [this](etcd::TxnResult) { ++txns_; },
        [this, chunk = std::move(chunk)](kj::Exception&& e) {
          // Kept for a later try: a decision key left behind only costs room.
          KEEL_LOG_WARN("cluster: deleting {} decision keys failed ({}); retrying later", chunk.size(),
                        describeFault(e));
          for (auto s : chunk) forgets_.push_back(s);
          flushForgetsAfter(1 * kj::SECONDS);
        }));
  }
  return kj::joinPromises(sends.releaseAsArray());
}

// ------------------------------------------------------------ membership

void ClusterMember::serve(std::function<void()> onLost,
                          std::function<kj::Promise<void>(std::uint16_t, std::uint64_t)> onTakeover) {
  onTakeover_ = std::move(onTakeover);
  onLost_ = std::move(onLost);
  tasks_.add(watchMembers());
}

void ClusterMember::stop() {
  takeovers_.clear();
  keeper_.reset();
  // A clean stop gives the node id back at once: its next start need not
  // wait out the lease, and a survivor finishes whatever is left now.
  if (lease_.id != 0) {
    try {
      etcd_->revokeSync(lease_.id);
      KEEL_LOG_INFO("cluster: left the cluster (lease revoked)");
    } catch (const std::exception& e) {
      KEEL_LOG_WARN("cluster: could not revoke the lease on the way out ({}); it lapses in {} s", e.what(),
                    cfg_.leaseTtlS);
    }
    lease_.id = 0;
  }
}

kj::Promise<void> ClusterMember::watchMembers() {
  // A poll of three small ranges every tick (lease TTL / 10, at least 100
  // ms): a dead member is seen well inside the TTL it takes to expire. The
  // three are read in one txn, at one revision: read one by one, a takeover
  // another survivor had just finished looked unfinished (its takeover key
  // gone, its settled mark not yet read) and was done again.
  auto tick = std::max<std::uint64_t>(100, cfg_.leaseTtlS * 100ull) * kj::MILLISECONDS;
  auto members = cfg_.prefix + "/members/", nodes = cfg_.prefix + "/nodes/", takeovers = cfg_.prefix + "/takeover/";
  auto range = [](const std::string& prefix) {
    auto op = etcd::Op::get(prefix);
    op.rangeEnd = etcd::prefixEnd(prefix);
    return op;
  };
  return etcd_->txn({}, {range(members), range(nodes), range(takeovers)}, {})
      .then([this](etcd::TxnResult r) {
            if (r.responses.size() != 3) {
              return kj::Promise<void>(faultException("etcd answered a 3-range txn with " +
                                                      std::to_string(r.responses.size()) + " responses"));
            }
            {
              auto& m = r.responses[0];
              auto& n = r.responses[1];
              auto& t = r.responses[2];
              auto nodeOf = [](const std::string& key, const std::string& prefix) -> std::optional<std::uint16_t> {
                if (key.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
                auto rest = std::string_view(key).substr(prefix.size());
                auto slash = rest.find('/');
                auto v = parseU64(rest.substr(0, slash));
                if (!v || *v > 65535) return std::nullopt;
                return std::uint16_t(*v);
              };
              std::set<std::uint16_t> alive, takenOver;
              for (auto& kv : m.kvs) {
                if (auto x = nodeOf(kv.key, cfg_.prefix + "/members/")) alive.insert(*x);
              }
              for (auto& kv : t.kvs) {
                if (auto x = nodeOf(kv.key, cfg_.prefix + "/takeover/")) takenOver.insert(*x);
              }
              std::map<std::uint16_t, std::pair<std::optional<std::uint64_t>, std::optional<std::uint64_t>>> ep;
              for (auto& kv : n.kvs) {
                auto x = nodeOf(kv.key, cfg_.prefix + "/nodes/");
                if (!x) continue;
                if (kv.key == epochKey(*x)) ep[*x].first = parseU64(kv.value);
                if (kv.key == settledKey(*x)) ep[*x].second = parseU64(kv.value);
              }
              // Finished or abandoned takeovers leave the map here (never
              // from inside their own continuation).
              for (auto it = takeovers_.begin(); it != takeovers_.end();) {
                bool back = alive.count(it->first) != 0;
                bool done = ep[it->first].second == it->second.epoch || *it->second.failed;
                if (back && !done) {
                  KEEL_LOG_WARN("cluster: node {} is back; its takeover (epoch {}) stops here", it->first,
                                it->second.epoch);
                  auto key = takeoverKey(it->first);
                  tasks_.add(etcd_->txn({etcd::Compare::valueIs(key, "by=" + std::to_string(node_) + " epoch=" +
                                                                        std::to_string(it->second.epoch))},
                                        {etcd::Op::del(key)}, {})
                                 .ignoreResult());
                }
                if (back || done) {
                  it = takeovers_.erase(it);
                } else {
                  ++it;
                }
              }
              for (auto& [x, e] : ep) {
                if (x == node_ || alive.count(x) || takenOver.count(x) || takeovers_.count(x)) continue;
                if (!e.first) continue;
                if (e.second && *e.second == *e.first) continue;  // settled: nothing of it is left
                tasks_.add(tryTakeover(x, *e.first));
              }
            }
            return kj::Promise<void>(kj::READY_NOW);
      })
      .catch_([](kj::Exception&& e) {
        KEEL_LOG_WARN("cluster: membership poll failed ({})", describeFault(e));
      })
      .then([this, tick]() { return io_->provider->getTimer().afterDelay(tick); })
      .then([this]() { return watchMembers(); });
}

kj::Promise<void> ClusterMember::tryTakeover(std::uint16_t node, std::uint64_t epoch) {
  std::uint64_t next = epoch + 1;
  std::string mine = "by=" + std::to_string(node_) + " epoch=" + std::to_string(next);
  // The election for this dead node: whoever raises its epoch first (and
  // holds the takeover key under its lease) finishes its work.
  return etcd_
      ->txn({etcd::Compare::absent(memberKey(node)), etcd::Compare::absent(takeoverKey(node)),
             etcd::Compare::valueIs(epochKey(node), std::to_string(epoch))},
            {etcd::Op::put(takeoverKey(node), mine, lease_.id), etcd::Op::put(epochKey(node), std::to_string(next))},
            {})
      .then([this, node, next, mine](etcd::TxnResult r) {
        if (!r.succeeded || takeovers_.count(node)) return;
        KEEL_LOG_WARN("cluster: node {} is gone (no member key); taking over its work under epoch {}", node, next);
        auto failed = std::make_shared<bool>(false);
        auto work = onTakeover_(node, next)
                        .then([this, node, next, mine]() {
                          return etcd_->txn({etcd::Compare::valueIs(takeoverKey(node), mine)},
                                            {etcd::Op::put(settledKey(node), std::to_string(next)),
                                             etcd::Op::del(takeoverKey(node))},
                                            {});
                        })
                        .then([node, next](etcd::TxnResult r) {
                          if (r.succeeded) {
                            KEEL_LOG_INFO("cluster: takeover of node {} (epoch {}) finished", node, next);
                          }
                        })
                        .eagerlyEvaluate([this, node, mine, failed](kj::Exception&& e) {
                          KEEL_LOG_ERROR("cluster: takeover of node {} failed ({}); another poll retries it", node,
                                         describeFault(e));
                          *failed = true;
                          tasks_.add(etcd_->txn({etcd::Compare::valueIs(takeoverKey(node), mine)},
                                                {etcd::Op::del(takeoverKey(node))}, {})
                                         .ignoreResult());
                        });
        takeovers_.emplace(node, Takeover{next, failed, kj::mv(work)});
      });
}

}  // namespace keel
