#include "coordinator/wal_store.h"

#include <algorithm>

#include "common/backup.h"
#include "coordinator/archive.h"

namespace keel {

namespace {
// Where the request-id purge stopped (the next seq to look at).
constexpr const char* kRequestPurgeKey = "request_purge_seq";

lmdb::EnvOptions envOptions(std::size_t mapSize, bool readOnly) {
  lmdb::EnvOptions o;
  o.mapSize = mapSize;
  o.readOnly = readOnly;
  return o;
}
}  // namespace

namespace {

// The first seq at or after `at` in the interactions table (its record's
// creation time too, 0 if it does not decode), or nullopt.
struct Found {
  std::uint64_t seq = 0;
  Micros createdUs = 0;
};
std::optional<Found> firstFrom(const lmdb::Txn& txn, MDB_dbi dbi, std::uint64_t at) {
  std::optional<Found> out;
  txn.scan(dbi, u64Key(at), [&](std::string_view k, std::string_view v) {
    Found f{keyU64(k), 0};
    try {
      f.createdUs = peekInteraction(v).createdUs;
    } catch (const CorruptRecord&) {
    }
    out = f;
    return false;
  });
  return out;
}

constexpr std::uint64_t kNodeSpan = std::uint64_t(1) << kSeqNodeShift;
std::uint64_t segmentEnd(std::uint64_t seq) {
  std::uint64_t node = seqNode(seq);
  return node + 1 >= (std::uint64_t(1) << (64 - kSeqNodeShift)) ? ~std::uint64_t(0) : (node + 1) * kNodeSpan;
}

}  // namespace

WalStore::WalStore(const std::string& dir, std::size_t mapSizeBytes, bool readOnly, bool redo)
    : dir_(dir), env_(openEnvRecovering(dir, envOptions(mapSizeBytes, readOnly), &redoRead_)) {
  meta_ = env_.openDb("meta");
  if (!readOnly) {
    // Before anything else is created: a backup copy is refused as it is
    // (--check-wal, read-only, may look at one).
    auto txn = env_.beginRead();
    refuseBackupCopy(txn.raw(), meta_, "data directory " + dir);
  }
  interactions_ = env_.openDb("interactions");
  rollbacks_ = env_.openDb("rollbacks");
  active_ = env_.openDb("active");
  windows_ = env_.openDb("windows");
  audit_ = env_.openDb("audit");
  requests_ = env_.openDb("requests");
  heuristic_ = env_.openDb("heuristic");
  if (!readOnly) {
    GroupCommitLog::Options lo;
    lo.redo = redo;
    log_ = std::make_unique<GroupCommitLog>(env_, lo);
  }
}

WalStore::~WalStore() { log_.reset(); }

std::optional<WalStore::RestoreMark> WalStore::restoreMark() const {
  auto txn = env_.beginRead();
  auto floor = txn.get(meta_, kRestoreFloorKey);
  if (!floor) return std::nullopt;
  RestoreMark m;
  m.floor = keyU64(*floor);
  if (auto at = txn.get(meta_, kRestoredAtKey)) m.atUs = keyU64(*at);
  return m;
}

std::uint64_t WalStore::storedEpoch() const {
  auto txn = env_.beginRead();
  auto e = txn.get(meta_, "epoch");
  return e ? keyU64(*e) : 0;
}

std::uint64_t WalStore::openIncarnation(std::uint16_t nodeId, std::uint64_t atLeast) {
  auto meta = meta_;
  epoch_ = log_->runSync([meta, nodeId, atLeast](lmdb::Txn& txn) {
    auto node = txn.get(meta, "node_id");
    if (node && keyU64(*node) != nodeId) {
      throw std::runtime_error("this WAL belongs to coordinator node " + std::to_string(keyU64(*node)) +
                               ", not node " + std::to_string(nodeId) + " (check node_id and data_dir)");
    }
    if (!node) txn.put(meta, "node_id", u64Key(nodeId));
    auto e = txn.get(meta, "epoch");
    std::uint64_t epoch = std::max<std::uint64_t>((e ? keyU64(*e) : 0) + 1, atLeast);
    txn.put(meta, "epoch", u64Key(epoch));  // durable before any call carries it
    return epoch;
  });
  return epoch_;
}

std::unique_ptr<SeqAllocator> WalStore::makeSeqAllocator(std::uint16_t nodeId, std::uint32_t block,
                                                         std::uint64_t floor, SeqAllocator::Mirror mirror) {
  return std::make_unique<SeqAllocator>(*log_, meta_, nodeId, block, floor, std::move(mirror));
}

std::vector<WalStore::Unfinished> WalStore::loadUnfinished() {
  std::vector<Unfinished> out;
  auto txn = env_.beginRead();
  txn.scan(active_, "", [&](std::string_view k, std::string_view) {
    std::uint64_t seq = keyU64(k);
    auto iv = txn.get(interactions_, k);
    if (!iv) throw CorruptRecord("active seq " + seqText(seq) + " has no interaction record");
    Unfinished u;
    try {
      u.interaction = decodeInteraction(*iv);
    } catch (const CorruptRecord& e) {
      throw CorruptRecord("interaction " + seqText(seq) + ": " + e.what());
    }
    if (auto rv = txn.get(rollbacks_, k)) {
      try {
        u.rollback = decodeRollback(*rv);
      } catch (const CorruptRecord& e) {
        throw CorruptRecord("rollback " + seqText(seq) + ": " + e.what());
      }
    }
    out.push_back(std::move(u));
    return true;
  });
  return out;
}

kj::Promise<void> WalStore::save(const InteractionRecord& r, const RollbackRecord* rb, bool lazy,
                                 const RequestRecord* request) {
  std::string key = u64Key(r.seq);
  std::string iv = encode(r);
  std::string rv = rb != nullptr ? encode(*rb) : std::string();
  std::string reqv = request != nullptr ? encode(*request) : std::string();
  std::string reqId = request != nullptr ? r.requestId : std::string();
  bool finished = r.finished();
  // The window of inconsistency of a failed interaction, recorded once it is
  // over: from the first failure to the last participant's confirmation.
  std::string window;
  if (finished && r.failedUs != 0) {
    window = u64Key(r.completedUs > r.failedUs ? r.completedUs - r.failedUs : 0);
    window.push_back(r.heuristic() ? 'h' : rb != nullptr ? 'r' : 'c');
  }
  auto interactions = interactions_, rollbacks = rollbacks_, active = active_, windows = windows_;
  auto requests = requests_, heuristic = heuristic_;
  bool toReconcile = r.heuristic();
  auto write = [=, key = std::move(key), iv = std::move(iv), rv = std::move(rv), window = std::move(window),
                reqv = std::move(reqv), reqId = std::move(reqId)](lmdb::Txn& txn) {
    txn.put(interactions, key, iv);
    if (!rv.empty()) txn.put(rollbacks, key, rv);
    if (finished) {
      txn.del(active, key);
    } else {
      txn.put(active, key, "");
    }
    if (!window.empty()) txn.put(windows, key, window);
    if (toReconcile) txn.put(heuristic, key, "");
    if (!reqv.empty()) txn.put(requests, reqId, reqv);
  };
  return lazy ? log_->runLazy(std::move(write)) : log_->run(std::move(write));
}

std::optional<RequestRecord> WalStore::findRequest(const std::string& requestId, Micros notBeforeUs) const {
  if (requestId.empty()) return std::nullopt;
  {
    auto txn = env_.beginRead();
    if (auto v = txn.get(requests_, requestId)) return decodeRequest(*v);
  }
  if (archive_ == nullptr || archive_->newestCreatedUs() < notBeforeUs) return std::nullopt;
  return archive_->findRequest(requestId);
}

kj::Promise<WalStore::Purged> WalStore::purgeRequests(Micros beforeUs, std::size_t max) {
  auto requests = requests_, interactions = interactions_, meta = meta_;
  return log_->runLazy([=](lmdb::Txn& txn) {
    Purged out;
    auto at = txn.get(meta, kRequestPurgeKey);
    std::uint64_t from = at ? keyU64(*at) : 0;
    std::uint64_t next = from;
    std::vector<std::pair<std::string, std::uint64_t>> drop;  // (request id, seq)
    std::size_t scanned = 0;
    txn.scan(interactions, from == 0 ? std::string() : u64Key(from), [&](std::string_view k, std::string_view v) {
      if (scanned == max) {
        out.more = true;
        return false;
      }
      auto p = peekInteraction(v);
      if (p.createdUs >= beforeUs) return false;  // creation order: the rest is younger
      ++scanned;
      next = keyU64(k) + 1;
      // An unfinished one keeps its row (its driver may still need it).
      if (p.finished && !p.requestId.empty()) drop.emplace_back(std::move(p.requestId), p.seq);
      return true;
    });
    for (const auto& [id, seq] : drop) {
      auto row = txn.get(requests, id);
      if (row && decodeRequest(*row).seq == seq) {  // only the row this interaction made
        txn.del(requests, id);
        ++out.dropped;
      }
    }
    if (next != from) txn.put(meta, kRequestPurgeKey, u64Key(next));
    return out;
  });
}

std::optional<StoredInteraction> WalStore::get(std::uint64_t seq) const {
  {
    auto txn = env_.beginRead();
    std::string key = u64Key(seq);
    if (auto iv = txn.get(interactions_, key)) {
      StoredInteraction s;
      s.interaction = std::move(*iv);
      if (auto rv = txn.get(rollbacks_, key)) s.rollback = std::move(*rv);
      return s;
    }
  }
  if (archive_ == nullptr) return std::nullopt;
  return archive_->get(seq);
}

bool WalStore::holdsHot(std::uint64_t seq) const {
  auto txn = env_.beginRead();
  return txn.get(interactions_, u64Key(seq)).has_value();
}

WalStore::ReleaseScan WalStore::releaseScan(std::uint16_t node, Micros stuckBeforeUs, std::size_t maxKeep) const {
  ReleaseScan out;
  auto txn = env_.beginRead();
  txn.scan(interactions_, u64Key(makeSeq(node, 0)), [&](std::string_view k, std::string_view v) {
    std::uint64_t seq = keyU64(k);
    if (seqNode(seq) != node) return false;
    bool stuck = false;
    try {
      InteractionPeek p = peekInteraction(v);
      stuck = (!p.finished || p.heuristic || txn.get(active_, k)) && p.createdUs < stuckBeforeUs;
    } catch (const CorruptRecord&) {
      stuck = false;  // damaged: nothing below it is released past it
    }
    if (!stuck || out.keep.size() == maxKeep) {
      out.stop = seq;
      return false;
    }
    out.keep.push_back(seq);
    return true;
  });
  return out;
}

std::vector<ArchivedInteraction> WalStore::archiveCandidates(Micros beforeUs, std::size_t max) const {
  std::vector<ArchivedInteraction> out;
  auto txn = env_.beginRead();
  std::uint64_t at = 0;
  bool more = true;
  while (more && out.size() < max) {
    more = false;
    std::optional<std::uint64_t> jump;
    txn.scan(interactions_, u64Key(at), [&](std::string_view k, std::string_view v) {
      if (out.size() == max) return false;
      std::uint64_t seq = keyU64(k);
      InteractionPeek p;
      try {
        p = peekInteraction(v);
      } catch (const CorruptRecord&) {
        return true;  // damaged: stays where --check-wal names it
      }
      if (p.createdUs >= beforeUs) {
        jump = segmentEnd(seq);  // this node's later seqs are younger
        return false;
      }
      if (!p.finished || p.heuristic || txn.get(active_, k)) return true;
      ArchivedInteraction a;
      a.seq = seq;
      a.createdUs = p.createdUs;
      a.requestId = p.requestId;
      a.interaction = std::string(v);
      if (auto rv = txn.get(rollbacks_, k)) a.rollback = std::move(*rv);
      if (!p.requestId.empty()) {
        if (auto row = txn.get(requests_, p.requestId)) {
          try {
            if (decodeRequest(*row).seq == seq) a.requestRow = std::move(*row);
          } catch (const CorruptRecord&) {
          }
        }
      }
      out.push_back(std::move(a));
      return true;
    });
    if (jump && *jump != ~std::uint64_t(0)) {
      at = *jump;
      more = true;
    }
  }
  return out;
}

kj::Promise<std::size_t> WalStore::dropArchived(std::vector<ArchivedInteraction> moved) {
  auto interactions = interactions_, rollbacks = rollbacks_, windows = windows_, requests = requests_,
       active = active_, heuristic = heuristic_;
  return log_->runLazy([=, moved = std::move(moved)](lmdb::Txn& txn) {
    std::size_t dropped = 0;
    for (const auto& a : moved) {
      std::string key = u64Key(a.seq);
      auto now = txn.get(interactions, key);
      // Changed since (reopened by a late branch, say), or active again:
      // it stays, and is archived again once finished.
      if (!now || *now != a.interaction || txn.get(active, key) || txn.get(heuristic, key)) continue;
      txn.del(interactions, key);
      txn.del(rollbacks, key);
      txn.del(windows, key);
      if (!a.requestId.empty()) {
        if (auto row = txn.get(requests, a.requestId); row && *row == a.requestRow) txn.del(requests, a.requestId);
      }
      ++dropped;
    }
    return dropped;
  });
}


std::optional<std::uint64_t> WalStore::firstCreatedFrom(const lmdb::Txn& txn, std::uint64_t at, Micros fromUs) const {
  // Seqs of one node are issued in creation order, so within a node's
  // segment of the key space the first record created at or after fromUs is
  // found by bisection (about 48 lookups); a segment with none moves on to
  // the next node's.
  for (;;) {
    auto first = firstFrom(txn, interactions_, at);
    if (!first) return std::nullopt;
    std::uint64_t lo = first->seq, hi = segmentEnd(first->seq);  // the answer is a key in [lo, hi)
    while (lo < hi) {
      std::uint64_t mid = lo + (hi - lo) / 2;
      auto f = firstFrom(txn, interactions_, mid);
      if (!f || f->seq >= hi) {
        hi = mid;  // no key in [mid, hi)
      } else if (f->createdUs < fromUs) {
        lo = f->seq + 1;
      } else {
        hi = mid;  // f qualifies and no key lies in [mid, f)
      }
    }
    auto f = firstFrom(txn, interactions_, lo);
    if (f && f->seq < segmentEnd(first->seq)) return f->seq;
    std::uint64_t end = segmentEnd(first->seq);
    if (end == ~std::uint64_t(0)) return std::nullopt;
    at = end;
  }
}

WalStore::ExportPage WalStore::exportPage(std::uint64_t after, Micros fromUs, Micros toUs,
                                          std::size_t maxScanned) const {
  // Seqs of one node are in creation order: the scan starts at the first
  // record created in the range (less kRangeSlackUs, for a clock stepped
  // back a little) and leaves a node's segment at the first record created
  // kRangeSlackUs after it, so a page costs what the range holds, not the
  // table.
  ExportPage p;
  auto txn = env_.beginRead();
  p.total = txn.count(interactions_);
  const Micros seekUs = fromUs > kRangeSlackUs ? fromUs - kRangeSlackUs : 0;
  const Micros stopUs = toUs + kRangeSlackUs;
  std::optional<std::uint64_t> from = after == 0 ? firstCreatedFrom(txn, 0, seekUs) : std::optional(after + 1);
  std::uint64_t last = 0;
  bool more = false;
  while (from && !more) {
    std::optional<std::uint64_t> jump;  // the next node's segment, when this one is past the range
    txn.scan(interactions_, u64Key(*from), [&](std::string_view k, std::string_view v) {
      if (p.scanned == maxScanned) {
        more = true;
        return false;
      }
      std::uint64_t seq = keyU64(k);
      InteractionPeek peek;
      try {
        peek = peekInteraction(v);  // checks the checksum
      } catch (const CorruptRecord&) {
        ++p.scanned;
        last = seq;
        p.damaged.push_back(seq);
        return true;
      }
      if (peek.createdUs >= stopUs) {
        jump = segmentEnd(seq);
        return false;
      }
      ++p.scanned;
      last = seq;
      if (peek.createdUs < fromUs || peek.createdUs >= toUs) return true;
      StoredInteraction s;
      s.interaction = std::string(v);
      if (auto rv = txn.get(rollbacks_, k)) s.rollback = std::move(*rv);
      p.records.push_back(std::move(s));
      return true;
    });
    if (more || !jump || *jump == ~std::uint64_t(0)) break;
    from = firstCreatedFrom(txn, *jump, seekUs);
  }
  // A page that ends past the range ends the export; one that ends at the
  // page size resumes after the last seq it looked at.
  p.next = more ? last : 0;
  return p;
}

std::vector<std::string> WalStore::listUnfinished(std::size_t limit) const {
  std::vector<std::string> out;
  auto txn = env_.beginRead();
  txn.scan(active_, "", [&](std::string_view k, std::string_view) {
    if (auto iv = txn.get(interactions_, k)) out.push_back(std::move(*iv));
    return out.size() < limit;
  });
  return out;
}

std::vector<std::string> WalStore::listHeuristic(std::size_t limit) const {
  std::vector<std::string> out;
  auto txn = env_.beginRead();
  txn.scan(heuristic_, "", [&](std::string_view k, std::string_view) {
    if (auto iv = txn.get(interactions_, k)) out.push_back(std::move(*iv));
    return out.size() < limit;
  });
  return out;
}

kj::Promise<bool> WalStore::reconciled(std::uint64_t seq, const AuditRecord& a) {
  std::string key = u64Key(seq);
  std::string auditKey = u64Key(a.atUs) + u64Key(a.seq);
  std::string v = encode(a);
  auto heuristic = heuristic_, audit = audit_;
  return log_->run([=](lmdb::Txn& txn) {
    if (!txn.del(heuristic, key)) return false;
    txn.put(audit, auditKey, v);
    return true;
  });
}

kj::Promise<void> WalStore::appendAudit(const AuditRecord& a) {
  std::string key = u64Key(a.atUs) + u64Key(a.seq);
  std::string v = encode(a);
  auto audit = audit_;
  return log_->run([=](lmdb::Txn& txn) { txn.put(audit, key, v); });  // durable before the action
}

std::vector<AuditRecord> WalStore::listAudit(std::size_t limit) const {
  std::vector<AuditRecord> out;
  auto txn = env_.beginRead();
  txn.scan(audit_, "", [&](std::string_view, std::string_view v) {
    out.push_back(decodeAudit(v));
    return out.size() < limit;
  });
  return out;
}

WalStore::Windows WalStore::windows() const {
  Windows w;
  auto txn = env_.beginRead();
  txn.scan(windows_, "", [&](std::string_view, std::string_view v) {
    if (v.size() == 9) {
      w.us.push_back(keyU64(v));
      (v[8] == 'r' ? w.rollbacks : v[8] == 'h' ? w.heuristic : w.retriedCommits)++;
    }
    return true;
  });
  std::sort(w.us.begin(), w.us.end());
  return w;
}

double WalStore::fill() const { return env_.fill(); }

std::vector<std::string> WalStore::checkAll(std::size_t* checked) const {
  std::vector<std::string> bad;
  std::size_t n = 0;
  auto txn = env_.beginRead();
  auto check = [&](MDB_dbi dbi, const char* table, auto decode) {
    txn.scan(dbi, "", [&](std::string_view k, std::string_view v) {
      ++n;
      try {
        decode(v);
      } catch (const CorruptRecord& e) {
        bad.push_back(std::string(table) + " " + (k.size() == 8 ? seqText(keyU64(k)) : "?") + ": " + e.what());
      }
      return true;
    });
  };
  check(interactions_, "interaction", [](std::string_view v) { decodeInteraction(v); });
  check(rollbacks_, "rollback", [](std::string_view v) { decodeRollback(v); });
  check(audit_, "audit", [](std::string_view v) { decodeAudit(v); });
  txn.scan(requests_, "", [&](std::string_view k, std::string_view v) {
    ++n;
    try {
      decodeRequest(v);
    } catch (const CorruptRecord& e) {
      bad.push_back("request " + std::string(k) + ": " + e.what());
    }
    return true;
  });
  txn.scan(active_, "", [&](std::string_view k, std::string_view) {
    ++n;
    if (!txn.get(interactions_, k)) bad.push_back("active " + seqText(keyU64(k)) + ": no interaction record");
    return true;
  });
  if (checked != nullptr) *checked = n;
  return bad;
}

}  // namespace keel
