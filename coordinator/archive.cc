#include "coordinator/archive.h"

#include <algorithm>
#include <ctime>
#include <filesystem>

#include <kj/debug.h>

#include "common/log.h"
#include "common/records.h"

namespace keel {

namespace fs = std::filesystem;

namespace {
constexpr const char* kIndexesKey = "indexes";
}  // namespace

struct Archive::Period {
  std::string name;
  lmdb::Env env;
  MDB_dbi interactions, rollbacks, requests, byTime, byState, byParticipant, meta;
  // Every record is in by_state and by_participant: begun empty since they
  // exist (the mark is written with its first append).
  bool indexed = false;
  bool warnedFull = false;  // the archiver's thread only
  Period(std::string n, const std::string& path, std::size_t mapSize)
      : name(std::move(n)), env(path, lmdb::EnvOptions{mapSize, 8}) {
    interactions = env.openDb("interactions");
    rollbacks = env.openDb("rollbacks");
    requests = env.openDb("requests");
    byTime = env.openDb("by_time");
    byState = env.openDb("by_state");
    byParticipant = env.openDb("by_participant");
    meta = env.openDb("meta");
    auto txn = env.beginRead();
    indexed = txn.get(meta, kIndexesKey).has_value() || txn.count(interactions) == 0;
  }
};

namespace {

std::string timeKey(Micros createdUs, std::uint64_t seq) { return u64Key(createdUs) + u64Key(seq); }

}  // namespace

Archive::Archive(std::string dir, std::size_t mapSizeBytes) : dir_(std::move(dir)), mapSize_(mapSizeBytes) {
  std::error_code ec;
  if (!fs::is_directory(dir_, ec)) return;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    std::string name = e.path().filename().string();
    if (e.is_directory() && name.size() > 8 && name.substr(name.size() - 8) == ".dropped") {
      fs::remove_all(e.path(), ec);  // a drop a crash interrupted
      continue;
    }
    if (!e.is_directory() || !isPeriodName(name)) continue;
    auto p = open(name, false);
    if (!p) continue;
    // The newest creation time of the period: its last by_time key, one
    // cursor step (not a walk of the period).
    auto txn = p->env.beginRead();
    MDB_cursor* cur = nullptr;
    if (mdb_cursor_open(txn.raw(), p->byTime, &cur) == 0) {
      MDB_val k{}, v{};
      if (mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 && k.mv_size == 16) {
        newest_ = std::max(newest_, Micros(keyU64(std::string_view(static_cast<const char*>(k.mv_data), 8))));
      }
      mdb_cursor_close(cur);
    }
  }
}

Archive::~Archive() {
  {
    std::lock_guard<std::mutex> lk(jobsMu_);
    stopping_ = true;
  }
  jobsCv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

kj::Promise<void> Archive::onWorker(std::function<void()> job) {
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  {
    std::lock_guard<std::mutex> lk(jobsMu_);
    jobs_.push_back(Job{std::move(job), kj::mv(paf.fulfiller)});
    if (!worker_.joinable()) worker_ = std::thread([this] { work(); });
  }
  jobsCv_.notify_one();
  return kj::mv(paf.promise);
}

void Archive::work() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lk(jobsMu_);
      jobsCv_.wait(lk, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;  // what is queued is dropped: its promise breaks, the hot WAL keeps the records
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    try {
      job.run();
      job.done->fulfill();
    } catch (const std::exception& e) {
      job.done->reject(KJ_EXCEPTION(FAILED, "archive job failed", std::string(e.what())));
    }
  }
}

bool Archive::isPeriodName(const std::string& n) { return isDayText(n); }

void Archive::drop(const std::string& name) {
  if (!isPeriodName(name)) throw std::runtime_error("'" + name + "' is not an archive period");
  {
    std::lock_guard<std::mutex> lk(mu_);
    periods_.erase(name);
    damaged_.erase(name);
  }
  // Renamed first, so that a crash halfway never leaves half a period
  // that would open as one.
  std::string path = dir_ + "/" + name, gone = path + ".dropped";
  fs::rename(path, gone);
  fs::remove_all(gone);
  KEEL_LOG_INFO("archive: period {} dropped", name);
}

std::string Archive::periodOf(Micros us) {
  std::time_t t = std::time_t(us / 1'000'000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
  return buf;
}

std::shared_ptr<Archive::Period> Archive::open(const std::string& name, bool create) const {
  std::lock_guard<std::mutex> lk(mu_);
  if (auto it = periods_.find(name); it != periods_.end()) return it->second;
  std::string path = dir_ + "/" + name;
  try {
    if (create) fs::create_directories(path);
    auto p = std::make_shared<Period>(name, path, mapSize_);
    periods_[name] = p;
    damaged_.erase(name);
    return p;
  } catch (const std::exception& e) {
    if (create) throw;
    damaged_[name] = e.what();
    KEEL_LOG_ERROR("archive period {} does not open ({}): skipped, the other periods are served", name, e.what());
    return nullptr;
  }
}

std::vector<std::shared_ptr<Archive::Period>> Archive::snapshot() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::shared_ptr<Period>> out;
  for (auto& [name, p] : periods_) out.push_back(p);
  return out;
}

void Archive::append(const std::vector<ArchivedInteraction>& batch) {
  std::map<std::string, std::vector<const ArchivedInteraction*>> byPeriod;
  for (const auto& a : batch) byPeriod[periodOf(a.createdUs)].push_back(&a);
  Micros newest = 0;
  for (auto& [name, items] : byPeriod) {
    auto p = open(name, true);
    auto txn = p->env.beginWrite();
    if (p->indexed && !txn.get(p->meta, kIndexesKey)) txn.put(p->meta, kIndexesKey, "state,participant");
    for (const auto* a : items) {
      std::string key = u64Key(a->seq);
      std::string when = timeKey(a->createdUs, a->seq);
      txn.put(p->interactions, key, a->interaction);
      if (!a->rollback.empty()) txn.put(p->rollbacks, key, a->rollback);
      if (!a->requestId.empty() && !a->requestRow.empty()) txn.put(p->requests, a->requestId, a->requestRow);
      txn.put(p->byTime, when, "");
      try {
        InteractionRecord rec = decodeInteraction(a->interaction);
        txn.put(p->byState, std::string(1, char(rec.state)) + when, "");
        std::vector<std::string> names;
        for (const auto& b : rec.branches) names.push_back(b.participant);
        std::sort(names.begin(), names.end());
        names.erase(std::unique(names.begin(), names.end()), names.end());
        for (const auto& n : names) txn.put(p->byParticipant, n + std::string(1, '\0') + when, "");
      } catch (const CorruptRecord& e) {
        // Kept (by seq and time) but in no search index: named once.
        KEEL_LOG_ERROR("archive: seq {} does not decode whole ({}): archived, left out of the search indexes",
                       seqText(a->seq), e.what());
      }
      newest = std::max(newest, a->createdUs);
    }
    txn.commit();  // durable: the hot WAL drops them only after this
    if (p->env.fill() >= 0.8 && !p->warnedFull) {
      p->warnedFull = true;
      KEEL_LOG_WARN("archive period {} is {}% of archive_map_size_mb = {}: raise it (and restart) before it fills; a "
                    "full period stops the archiver and the hot WAL keeps what cannot move",
                    name, int(p->env.fill() * 100), mapSize_ >> 20);
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  newest_ = std::max(newest_, newest);
}

std::optional<StoredInteraction> Archive::get(std::uint64_t seq) const {
  auto all = snapshot();
  std::string key = u64Key(seq);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    auto txn = (*it)->env.beginRead();
    auto iv = txn.get((*it)->interactions, key);
    if (!iv) continue;
    StoredInteraction s;
    s.interaction = std::move(*iv);
    if (auto rv = txn.get((*it)->rollbacks, key)) s.rollback = std::move(*rv);
    return s;
  }
  return std::nullopt;
}

std::optional<RequestRecord> Archive::findRequest(const std::string& requestId) const {
  if (requestId.empty()) return std::nullopt;
  auto all = snapshot();
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    auto txn = (*it)->env.beginRead();
    if (auto v = txn.get((*it)->requests, requestId)) return decodeRequest(*v);
  }
  return std::nullopt;
}

Micros Archive::newestCreatedUs() const {
  std::lock_guard<std::mutex> lk(mu_);
  return newest_;
}

Archive::Page Archive::exportPage(const std::string& cursor, Micros fromUs, Micros toUs, std::size_t maxScanned,
                                  const Filter& filter) const {
  // cursor: the period's name and the last (createdUs ++ seq) looked at,
  // whichever index was read.
  Page page;
  std::string startPeriod = periodOf(fromUs), lastPeriod = periodOf(toUs == 0 ? 0 : toUs - 1);
  std::string atPeriod, afterKey;
  if (!cursor.empty()) {
    atPeriod = cursor.substr(0, 10);
    afterKey = cursor.substr(10);
  }
  for (const auto& p : snapshot()) {
    if (p->name < startPeriod || p->name > lastPeriod || (!atPeriod.empty() && p->name < atPeriod)) continue;
    // The narrowest index the period has for the filter.
    MDB_dbi index = p->byTime;
    std::string prefix;
    if (p->indexed && !filter.participant.empty()) {
      index = p->byParticipant;
      prefix = filter.participant + std::string(1, '\0');
    } else if (p->indexed && filter.state) {
      index = p->byState;
      prefix = std::string(1, char(*filter.state));
    }
    auto txn = p->env.beginRead();
    std::string from = prefix + (p->name == atPeriod && !afterKey.empty() ? afterKey + std::string(1, '\0')
                                                                           : u64Key(fromUs));
    bool full = false;
    std::string last;
    txn.scan(index, from, [&](std::string_view k, std::string_view) {
      if (k.substr(0, prefix.size()) != prefix) return false;
      std::string_view when = k.substr(prefix.size());
      if (when.size() != 16) return true;
      Micros created = Micros(keyU64(when.substr(0, 8)));
      if (created >= toUs) return false;
      if (page.scanned == maxScanned) {
        full = true;
        return false;
      }
      ++page.scanned;
      last = std::string(when);
      std::string key(when.substr(8));
      if (auto iv = txn.get(p->interactions, key)) {
        StoredInteraction s;
        s.interaction = std::move(*iv);
        if (auto rv = txn.get(p->rollbacks, key)) s.rollback = std::move(*rv);
        page.records.push_back(std::move(s));
      }
      return true;
    });
    if (full) {
      page.next = p->name + last;
      return page;
    }
  }
  return page;
}

std::vector<Archive::PeriodInfo> Archive::periods() const {
  std::vector<PeriodInfo> out;
  for (const auto& p : snapshot()) {
    auto txn = p->env.beginRead();
    out.push_back(PeriodInfo{p->name, txn.count(p->interactions), ""});
  }
  std::lock_guard<std::mutex> lk(mu_);
  for (const auto& [name, why] : damaged_) out.push_back(PeriodInfo{name, 0, why});
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

}  // namespace keel
