#include "participant/branch_log.h"

#include <algorithm>
#include <stdexcept>

#include "common/backup.h"

namespace keel {

namespace {

lmdb::EnvOptions envOptions(std::size_t mapSize) {
  lmdb::EnvOptions e;
  e.mapSize = mapSize;
  return e;
}

std::string epochKey(std::uint16_t node) { return "epoch/" + std::to_string(node); }
std::string releaseKey(std::uint16_t node) { return "release/" + std::to_string(node); }

// "release/<node>": floor, epoch, then each kept seq (8 bytes each, big-endian).
std::string encodeFloor(std::uint64_t floor, std::uint64_t epoch, const std::vector<std::uint64_t>& keep) {
  std::string v = u64Key(floor) + u64Key(epoch);
  for (auto k : keep) v += u64Key(k);
  return v;
}

// Durable counters of finished branches, so inspect never scans history.
constexpr const char* kCommittedKey = "count/committed";
constexpr const char* kRolledBackKey = "count/rolled-back";
// How many times the log was started (BranchLog::incarnation).
constexpr const char* kIncarnationKey = "incarnation";

void bump(lmdb::Txn& txn, MDB_dbi meta, const char* key, std::int64_t delta) {
  auto v = txn.get(meta, key);
  std::int64_t n = v ? std::int64_t(keyU64(*v)) : 0;
  txn.put(meta, key, u64Key(std::uint64_t(std::max<std::int64_t>(0, n + delta))));
}

const char* counterOf(BranchStatus s) {
  return s == BranchStatus::Committed ? kCommittedKey : s == BranchStatus::RolledBack ? kRolledBackKey : nullptr;
}

}  // namespace

BranchLog::BranchLog(const std::string& dir, std::size_t mapSizeBytes, bool redo)
    : env_(openEnvRecovering(dir, envOptions(mapSizeBytes))), redo_(redo) {
  meta_ = env_.openDb("meta");
  {
    // Before anything else is created: a backup copy is refused as it is.
    auto txn = env_.beginRead();
    refuseBackupCopy(txn.raw(), meta_, "data directory " + dir);
  }
  branches_ = env_.openDb("branches");
  unfinished_ = env_.openDb("unfinished");
}

BranchLog::~BranchLog() { log_.reset(); }

void BranchLog::check() {
  auto txn = env_.beginRead();
  txn.scan(branches_, "", [](std::string_view k, std::string_view v) {
    try {
      decodeBranch(v);
    } catch (const CorruptRecord& e) {
      throw CorruptRecord("branch " + keyXid(k).str() + ": " + e.what());
    }
    return true;
  });
  txn.scan(meta_, "epoch/", [&](std::string_view k, std::string_view v) {
    if (k.rfind("epoch/", 0) != 0) return false;
    epochs_[std::uint16_t(std::stoul(std::string(k.substr(6))))] = keyU64(v);
    return true;
  });
  std::lock_guard<std::mutex> lk(releaseMu_);
  txn.scan(meta_, "release/", [&](std::string_view k, std::string_view v) {
    if (k.rfind("release/", 0) != 0) return false;
    if (v.size() < 16 || v.size() % 8 != 0) throw CorruptRecord("meta " + std::string(k) + ": " + std::to_string(v.size()) + " bytes");
    Floor f;
    f.floor = keyU64(v.substr(0, 8));
    f.epoch = keyU64(v.substr(8, 8));
    for (std::size_t at = 16; at < v.size(); at += 8) f.keep.push_back(keyU64(v.substr(at, 8)));
    floors_[std::uint16_t(std::stoul(std::string(k.substr(8))))] = std::move(f);
    return true;
  });
  checked_ = true;
}

void BranchLog::start() {
  if (!checked_) check();
  logOptions_.redo = redo_;
  log_ = std::make_unique<GroupCommitLog>(env_, logOptions_);
  log_->runSync([this](lmdb::Txn& txn) {
    // Must be durable before start() returns: nothing of this start may
    // carry the number of an earlier one.
    auto was = txn.get(meta_, kIncarnationKey);
    incarnation_ = (was ? keyU64(*was) : 0) + 1;
    txn.put(meta_, kIncarnationKey, u64Key(incarnation_));
    if (txn.get(meta_, "index_version")) return;
    // A branch log from before the index and the counters: build them once.
    std::vector<BranchRecord> all;
    txn.scan(branches_, "", [&](std::string_view, std::string_view v) {
      all.push_back(decodeBranch(v));
      return true;
    });
    std::uint64_t committed = 0, rolledBack = 0;
    for (auto& rec : all) {
      std::string key = xidKey(rec.xid);
      bool open = rec.state == BranchStatus::Active || rec.state == BranchStatus::Prepared;
      if (open) txn.put(unfinished_, key, "");
      committed += rec.state == BranchStatus::Committed;
      rolledBack += rec.state == BranchStatus::RolledBack;
    }
    txn.put(meta_, kCommittedKey, u64Key(committed));
    txn.put(meta_, kRolledBackKey, u64Key(rolledBack));
    txn.put(meta_, "index_version", "2");
  });
}

std::optional<BranchRecord> BranchLog::read(const lmdb::Txn& txn, Xid xid) const {
  auto v = txn.get(branches_, xidKey(xid));
  if (!v) return std::nullopt;
  return decodeBranch(*v);
}


void BranchLog::put(lmdb::Txn& txn, const BranchRecord& rec) const {
  std::string key = xidKey(rec.xid);
  auto old = txn.get(branches_, key);
  if (!old && (rec.state == BranchStatus::Active || rec.state == BranchStatus::Prepared)) {
    if (auto why = releasedReason(rec.xid)) throw Released(*why);
  }
  const char* was = old ? counterOf(decodeBranch(*old).state) : nullptr;
  const char* now = counterOf(rec.state);
  if (was != now) {
    if (was != nullptr) bump(txn, meta_, was, -1);
    if (now != nullptr) bump(txn, meta_, now, +1);
  }
  txn.put(branches_, key, encode(rec));
  if (rec.state == BranchStatus::Active || rec.state == BranchStatus::Prepared) {
    txn.put(unfinished_, key, "");
  } else {
    txn.del(unfinished_, key);
  }
}

void BranchLog::finish(lmdb::Txn& txn, BranchRecord& rec, BranchStatus state, std::uint64_t epoch) const {
  rec.state = state;
  rec.epoch = std::max(rec.epoch, epoch);
  rec.finishedUs = wallMicros();
  put(txn, rec);
}

void BranchLog::tombstone(lmdb::Txn& txn, Xid xid, std::uint64_t epoch) const {
  if (released(xid)) return;  // the floor refuses a late prepare already
  BranchRecord t;
  t.xid = xid;
  t.state = BranchStatus::RolledBack;
  t.tombstone = true;
  t.epoch = epoch;
  t.createdUs = t.finishedUs = wallMicros();
  t.reason = "rollback arrived before prepare";
  put(txn, t);
}

void BranchLog::storeEpoch(lmdb::Txn& txn, std::uint16_t node, std::uint64_t epoch) const {
  auto v = txn.get(meta_, epochKey(node));
  if (!v || keyU64(*v) < epoch) txn.put(meta_, epochKey(node), u64Key(epoch));
}

std::vector<BranchRecord> BranchLog::unfinished(const lmdb::Txn& txn) const {
  std::vector<BranchRecord> out;
  txn.scan(unfinished_, "", [&](std::string_view k, std::string_view) {
    if (auto v = txn.get(branches_, k)) out.push_back(decodeBranch(*v));
    return true;
  });
  return out;
}

void BranchLog::fence(std::uint16_t node, std::uint64_t epoch) {
  auto& newest = epochs_[node];
  if (epoch < newest) {
    throw StaleEpoch("stale epoch " + std::to_string(epoch) + " of coordinator node " + std::to_string(node) +
                     ": this agent has seen epoch " + std::to_string(newest));
  }
  bool newer = epoch > newest;
  newest = epoch;
  if (newer && onNewerEpoch_) onNewerEpoch_();
}

std::uint64_t BranchLog::newestEpoch(std::uint16_t node) const {
  auto it = epochs_.find(node);
  return it == epochs_.end() ? 0 : it->second;
}

std::vector<BranchRecord> BranchLog::unfinishedBranches() const {
  auto txn = env_.beginRead();
  return unfinished(txn);
}

std::vector<std::optional<BranchRecord>> BranchLog::branches(const std::vector<Xid>& xids) const {
  std::vector<std::optional<BranchRecord>> out;
  auto txn = env_.beginRead();
  for (Xid x : xids) out.push_back(read(txn, x));
  return out;
}

std::vector<BranchRecord> BranchLog::listBranches(Xid after, std::size_t limit, bool& more) const {
  std::vector<BranchRecord> out;
  more = false;
  auto txn = env_.beginRead();
  std::string from = (after.seq == 0 && after.branch == 0) ? "" : xidKey(after);
  txn.scan(branches_, from, [&](std::string_view k, std::string_view v) {
    if (!from.empty() && k == from) return true;  // strictly after
    if (out.size() == limit) {
      more = true;
      return false;
    }
    out.push_back(decodeBranch(v));
    return true;
  });
  return out;
}

BranchLog::Counts BranchLog::counts() const {
  Counts c;
  auto txn = env_.beginRead();
  for (auto& rec : unfinished(txn)) (rec.state == BranchStatus::Active ? c.active : c.prepared)++;
  auto committed = txn.get(meta_, kCommittedKey);
  auto rolledBack = txn.get(meta_, kRolledBackKey);
  c.committed = committed ? std::uint32_t(keyU64(*committed)) : 0;
  c.rolledBack = rolledBack ? std::uint32_t(keyU64(*rolledBack)) : 0;
  return c;
}

double BranchLog::fill() const { return env_.fill(); }

std::optional<std::string> BranchLog::fullReason(const std::string& agentName) const {
  // As the coordinator's WAL (GroupCommitLog::roomRefusal). Before start()
  // no work is taken at all.
  if (log_ == nullptr) return std::nullopt;
  if (auto why = log_->roomRefusal()) return "agent " + agentName + " storage is " + *why;
  return std::nullopt;
}

kj::Promise<BranchLog::ForgetResult> BranchLog::forget(std::vector<Xid> xids) {
  return log_->run([this, xids = std::move(xids)](lmdb::Txn& txn) {
    ForgetResult r;
    for (Xid xid : xids) {
      auto rec = read(txn, xid);
      if (!rec) continue;  // already forgotten
      if (rec->state == BranchStatus::Active || rec->state == BranchStatus::Prepared) {
        r.refused.push_back(xid);
        r.reasons.push_back(std::string("not finished: ") + branchStatusName(rec->state));
        continue;
      }
      // A finished record (a tombstone above all) is what refuses a late
      // prepare of its branch, until no prepare of it can be accepted any
      // more: below its node's release floor, or once a newer epoch of its
      // node than the record's is fenced here (the prepare can come only
      // from the incarnation that issued the seq, whose epoch is at most the
      // record's). Dropped sooner, a late prepare would vote YES and hold
      // (or, asked about later, commit again) what already ended.
      const std::uint16_t node = seqNode(xid.seq);
      if (!released(xid)) {
        auto fenced = txn.get(meta_, epochKey(node));
        std::uint64_t newest = fenced ? keyU64(*fenced) : 0;
        if (newest <= rec->epoch) {
          r.refused.push_back(xid);
          r.reasons.push_back(std::string(rec->tombstone ? "a tombstone" : "a finished branch") +
                              ", kept while a late prepare of it may still arrive: until coordinator node " +
                              std::to_string(node) + " releases it (" +
                              (releaseFloor(node) == 0 ? std::string("no release from it yet")
                                                       : "its release floor here is " + seqText(releaseFloor(node))) +
                              ") or starts again (its epoch here is " +
                              std::to_string(newest) + ", the record's " + std::to_string(rec->epoch) + ")");
          continue;
        }
      }
      if (const char* key = counterOf(rec->state)) bump(txn, meta_, key, -1);
      txn.del(branches_, xidKey(xid));
      ++r.forgotten;
    }
    return r;
  });
}

bool BranchLog::released(Xid xid) const {
  std::lock_guard<std::mutex> lk(releaseMu_);
  auto it = floors_.find(seqNode(xid.seq));
  if (it == floors_.end() || xid.seq >= it->second.floor) return false;
  return !std::binary_search(it->second.keep.begin(), it->second.keep.end(), xid.seq);
}

std::optional<std::string> BranchLog::releasedReason(Xid xid) const {
  if (!released(xid)) return std::nullopt;
  return "branch " + xid.str() + " is below the release floor of coordinator node " +
         std::to_string(seqNode(xid.seq)) + " (" + seqText(releaseFloor(seqNode(xid.seq))) +
         "): its interaction was finished and archived, so this is a late duplicate";
}

std::uint64_t BranchLog::releaseFloor(std::uint16_t node) const {
  std::lock_guard<std::mutex> lk(releaseMu_);
  auto it = floors_.find(node);
  return it == floors_.end() ? 0 : it->second.floor;
}

std::vector<BranchLog::FloorView> BranchLog::releaseFloors() const {
  std::lock_guard<std::mutex> lk(releaseMu_);
  std::vector<FloorView> out;
  for (const auto& [node, f] : floors_) out.push_back(FloorView{node, f.floor, std::uint32_t(f.keep.size())});
  return out;
}

kj::Promise<BranchLog::ReleaseResult> BranchLog::release(std::uint16_t node, std::uint64_t epoch, std::uint64_t floor,
                                                        std::vector<std::uint64_t> keep) {
  // Nothing from the network is trusted: a floor that is not this node's
  // would release another node's branches.
  if (epoch == 0) throw std::invalid_argument("a release needs the coordinator's epoch (0 is an operator's)");
  if (seqNode(floor) != node) {
    throw std::invalid_argument("release floor " + seqText(floor) + " is not a seq of coordinator node " +
                                std::to_string(node));
  }
  if (keep.size() > kMaxReleaseKeep) {
    throw std::invalid_argument("a release keeps at most " + std::to_string(kMaxReleaseKeep) + " seqs, got " +
                                std::to_string(keep.size()));
  }
  for (auto k : keep) {
    if (seqNode(k) != node || k >= floor) {
      throw std::invalid_argument("kept seq " + seqText(k) + " is not a seq of coordinator node " +
                                  std::to_string(node) + " below the floor " + seqText(floor));
    }
  }
  std::sort(keep.begin(), keep.end());
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
  fence(node, epoch);
  // May run more than once (GroupCommitLog runs a group again when another
  // job in it throws): `keep` is copied, never moved out.
  return log_->run([this, node, epoch, floor, keep = std::move(keep)](lmdb::Txn& txn) {
    storeEpoch(txn, node, epoch);
    Floor now;
    {
      std::lock_guard<std::mutex> lk(releaseMu_);
      if (auto it = floors_.find(node); it != floors_.end()) now = it->second;
    }
    if (floor >= now.floor) {
      // Durable before anything below it is dropped (same transaction).
      now = Floor{floor, epoch, keep};
      txn.put(meta_, releaseKey(node), encodeFloor(now.floor, now.epoch, now.keep));
    }
    ReleaseResult r;
    r.floor = now.floor;
    // The finished records below the floor, not kept, a bounded batch.
    std::vector<std::pair<std::string, BranchStatus>> drop;
    std::string from = xidKey(Xid{makeSeq(node, 0), 0});
    txn.scan(branches_, from, [&](std::string_view k, std::string_view v) {
      Xid x = keyXid(k);
      if (x.seq >= now.floor) return false;
      if (std::binary_search(now.keep.begin(), now.keep.end(), x.seq)) return true;
      BranchStatus st = decodeBranch(v).state;
      if (st == BranchStatus::Active || st == BranchStatus::Prepared) return true;
      if (drop.size() == kMaxDropPerCall) {
        r.more = true;
        return false;
      }
      drop.emplace_back(std::string(k), st);
      return true;
    });
    std::int64_t committed = 0, rolledBack = 0;
    for (auto& [k, st] : drop) {
      (st == BranchStatus::Committed ? committed : rolledBack)++;
      txn.del(branches_, k);
    }
    if (committed > 0) bump(txn, meta_, kCommittedKey, -committed);
    if (rolledBack > 0) bump(txn, meta_, kRolledBackKey, -rolledBack);
    r.dropped = std::uint32_t(drop.size());
    {
      // From here on (this writer thread's next job included) a new
      // ACTIVE or PREPARED record below the floor is refused (put()).
      std::lock_guard<std::mutex> lk(releaseMu_);
      floors_[node] = std::move(now);
    }
    return r;
  });
}

std::vector<BranchRecord> mergeListed(std::vector<BranchRecord> logged, std::vector<BranchRecord> extra,
                                      std::size_t limit, bool& more) {
  if (extra.empty()) return logged;
  bool logMore = more;
  std::vector<BranchRecord> out;
  out.reserve(std::min(limit, logged.size() + extra.size()));
  std::size_t i = 0, j = 0;
  while ((i < logged.size() || j < extra.size()) && out.size() < limit) {
    if (j == extra.size() || (i < logged.size() && logged[i].xid <= extra[j].xid)) {
      if (j < extra.size() && logged[i].xid == extra[j].xid) ++j;  // the log's record wins
      out.push_back(std::move(logged[i++]));
    } else {
      if (logMore && i == logged.size()) break;  // the log's next page may come first
      out.push_back(std::move(extra[j++]));
    }
  }
  more = logMore || i < logged.size() || j < extra.size();
  return out;
}

}  // namespace keel
