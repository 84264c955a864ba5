// keel-bench-micro: what group commit buys, and what a record costs.
//
// BM_GroupCommit/N keeps N jobs in flight against one GroupCommitLog (each
// job a ~100-byte put) and reports records per second (items_per_second)
// and durable commits per record: with N in flight the writer should need
// far fewer than one fsync pair per record. Each iteration pushes a fixed
// chunk of records through the window and waits for all of them, so the
// measured time includes the last commits. The environment lives in a
// fresh directory under /tmp (the same filesystem as the data directories
// on this machine), with LMDB's default durable flags.
//
// BM_EncodeInteraction / BM_DecodeInteraction: one InteractionRecord with
// two branches of two operations, through the checksummed envelope.
//
// BM_CountFreePages/N: one lmdb::Env::usedFraction (what roomRefusal and,
// past 75 % of the map, the redo log's writer count: a walk of LMDB's free
// list) on a 1 GiB map whose free list holds about N records: N commits
// made while a reader held its snapshot (a hot backup of an hour's
// churn, say), the reader then gone, so every record counts as free.

#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/group_log.h"
#include "common/records.h"
#include "common/types.h"
#include "common/temp_dir.h"

namespace keel {
namespace {

// Bounds the jobs in flight; done() runs on the log's writer thread.
class Window {
 public:
  explicit Window(std::size_t limit) : limit_(limit) {}
  void acquire() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [this] { return inFlight_ < limit_; });
    ++inFlight_;
  }
  void release(bool ok) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      --inFlight_;
      if (!ok) ++failed_;
    }
    cv_.notify_all();
  }
  void drain() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [this] { return inFlight_ == 0; });
  }
  std::size_t failed() {
    std::lock_guard<std::mutex> lk(mu_);
    return failed_;
  }

 private:
  const std::size_t limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t inFlight_ = 0;  // GUARDED_BY(mu_)
  std::size_t failed_ = 0;    // GUARDED_BY(mu_)
};

constexpr std::size_t kRecordBytes = 100;  // key (8) + value

class PutJob final : public GroupCommitLog::Job {
 public:
  PutJob(MDB_dbi db, std::uint64_t key, const std::string& value, Window& window)
      : db_(db), key_(key), value_(value), window_(window) {}
  void apply(lmdb::Txn& txn) override { txn.put(db_, u64Key(key_), value_); }
  void done(std::exception_ptr err) noexcept override { window_.release(err == nullptr); }

 private:
  MDB_dbi db_;
  std::uint64_t key_;
  const std::string& value_;
  Window& window_;
};

void BM_GroupCommit(benchmark::State& state) {
  const auto inFlight = std::size_t(state.range(0));
  const std::size_t chunk = std::max<std::size_t>(64, 16 * inFlight);
  TempDir dir("keel-bench");
  lmdb::Env env(dir.path(), {});
  MDB_dbi db = env.openDb("bench");
  GroupCommitLog log(env);
  const std::string value(kRecordBytes - 8, 'v');
  Window window(inFlight);
  std::uint64_t key = 0;
  const auto commitsBefore = log.stats().commits.load();
  for (auto _ : state) {
    for (std::size_t i = 0; i < chunk; ++i) {
      window.acquire();
      log.submit(std::make_unique<PutJob>(db, key++, value, window));
    }
    window.drain();  // inside the timed region: every record is durable
  }
  const auto commits = log.stats().commits.load() - commitsBefore;
  if (window.failed() > 0) state.SkipWithError("some puts failed");
  state.SetItemsProcessed(std::int64_t(key));
  state.SetBytesProcessed(std::int64_t(key * kRecordBytes));
  state.counters["commits_per_record"] = double(commits) / double(key);
  state.counters["records_per_commit"] = double(key) / double(commits);
}
BENCHMARK(BM_GroupCommit)
    ->ArgName("in_flight")
    ->Arg(1)
    ->Arg(8)
    ->Arg(64)
    ->Arg(512)
    ->UseRealTime()  // the caller mostly waits for fsync: CPU time says nothing
    ->MinTime(0.5)
    ->Unit(benchmark::kMillisecond);

InteractionRecord sampleInteraction() {
  InteractionRecord r;
  r.seq = makeSeq(1, 123456);
  r.epoch = 3;
  r.state = InteractionRecord::State::Committing;
  r.decision = InteractionRecord::Decision::Commit;
  r.createdUs = 1'700'000'000'000'000;
  r.votesUs = r.createdUs + 900;
  r.decidedUs = r.createdUs + 1000;
  InteractionRecord::Branch a{"bank-a", 1, InteractionRecord::BranchState::Prepared, "",
                              {Op{"bank-a", OpKind::Debit, "alice", 2500}, Op{"bank-a", OpKind::ReadBalance, "alice", 0}}};
  InteractionRecord::Branch b{"bank-b", 2, InteractionRecord::BranchState::Prepared, "",
                              {Op{"bank-b", OpKind::Credit, "bob", 2500}, Op{"bank-b", OpKind::ReadBalance, "bob", 0}}};
  r.branches = {a, b};
  return r;
}

void BM_EncodeInteraction(benchmark::State& state) {
  const auto r = sampleInteraction();
  std::size_t bytes = 0;
  for (auto _ : state) {
    auto s = encode(r);
    bytes = s.size();
    benchmark::DoNotOptimize(s);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes));
  state.counters["record_bytes"] = double(bytes);
}
BENCHMARK(BM_EncodeInteraction)->MinTime(0.5);

void BM_DecodeInteraction(benchmark::State& state) {
  const std::string bytes = encode(sampleInteraction());
  for (auto _ : state) {
    auto r = decodeInteraction(bytes);
    benchmark::DoNotOptimize(r);
  }
  if (decodeInteraction(bytes).branches.size() != 2) state.SkipWithError("round trip lost branches");
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes.size()));
  state.counters["record_bytes"] = double(bytes.size());
}
BENCHMARK(BM_DecodeInteraction)->MinTime(0.5);

// A map churned as BM_CountFreePages says, made once per N (each commit is
// durable: N = 10,000 takes seconds to set up).
struct ChurnedMap {
  TempDir dir{"keel-bench-freelist"};
  std::unique_ptr<lmdb::Env> env;
  std::size_t records = 0;  // free-list records after the churn
  explicit ChurnedMap(int commits) {
    env = std::make_unique<lmdb::Env>(dir.path(), lmdb::EnvOptions{});
    MDB_dbi db = env->openDb("t");
    constexpr int kKeys = 20'000;
    const std::string value(100, 'v');
    {
      auto t = env->beginWrite();
      for (int k = 0; k < kKeys; ++k) t.put(db, std::to_string(1'000'000 + k), value);
      t.commit();
    }
    {
      auto pin = env->beginRead();  // no page freed from here on is reusable
      std::uint64_t x = 88172645463325252ull;
      for (int c = 0; c < commits; ++c) {
        auto t = env->beginWrite();
        for (int n = 0; n < 8; ++n) {
          x ^= x << 13, x ^= x >> 7, x ^= x << 17;
          t.put(db, std::to_string(1'000'000 + int(x % kKeys)), value);
        }
        t.commit();
      }
    }
    MDB_stat st;
    MDB_txn* t = nullptr;
    if (mdb_txn_begin(env->raw(), nullptr, MDB_RDONLY, &t) == 0) {
      if (mdb_stat(t, 0, &st) == 0) records = st.ms_entries;
      mdb_txn_abort(t);
    }
  }
};

void BM_CountFreePages(benchmark::State& state) {
  static std::map<int, std::unique_ptr<ChurnedMap>> maps;
  auto& m = maps[int(state.range(0))];
  if (!m) m = std::make_unique<ChurnedMap>(int(state.range(0)));
  double used = 0;
  for (auto _ : state) {
    used = m->env->usedFraction();
    benchmark::DoNotOptimize(used);
  }
  if (!(used > 0 && used <= m->env->fill())) state.SkipWithError("the count is not between 0 and the mark");
  state.counters["free_list_records"] = double(m->records);
  state.counters["used_over_mark"] = used / m->env->fill();
}
BENCHMARK(BM_CountFreePages)
    ->ArgName("commits_pinned")
    ->Arg(100)
    ->Arg(1'000)
    ->Arg(10'000)
    ->MinTime(0.5)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace keel
