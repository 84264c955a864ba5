// keel-bench-journal: how fast the coordinator's WAL answers the questions
// operators ask of old interactions (docs/performance.md, "Journal
// queries").
//
//   keel-bench-journal [--wal DIR] [--interactions N] [--archive [--days D]]
//                      [google benchmark flags]
//
// A WAL of N finished interactions (default 1,000,000; --interactions
// 10000000 for the figure) is generated once into DIR (default a
// fresh folder under /tmp, removed at exit; an existing DIR with a WAL
// generated earlier is reused as it is, so a 10-million WAL is made once).
// Each interaction is a two-party transfer (two branches, a debit and a
// credit) with a request id, committed but for one in a hundred, rolled
// back; one in ten has a rollback record. They
// are created 1 ms apart, so a 1 s range holds 1,000 of them. Generating
// prints progress on stderr.
//
// --archive puts them in the archive instead (coordinator/archive.h; DIR/
// archive, the hot WAL empty), spread over D days (default 30: one period
// each, as hot_retention_s leaves them), and the same questions go through
// WalStore's fallback to the archive (the search: Archive::exportPage
// over a range of 1,000).
//
// BM_QueryBySeq         WalStore::get of a random seq and its full decode
//                       (what keelctl query SEQ costs the coordinator).
// BM_QueryByRequestId   findRequest of a random request id, then the same.
// BM_Search1000         a range in the middle of the journal (1,000 of
//                       them), paged through exportPage 512 records at a
//                       time and each record decoded and matched, as the
//                       server's search does (coordinator_server.cc).
// BM_SearchRolledBack1000Indexed / ...ByTime (--archive): a range of
//                       100,000 holding 1,000 rolled back, searched for
//                       them through the archive's by_state index, and read
//                       by time and filtered, for comparison.
// Each reports p50_us and p99_us over its iterations as counters (time per
// query or per search, on one thread, the WAL's pages warm: a coordinator
// reads its hot WAL from the page cache).

#include <benchmark/benchmark.h>
#include <kj/async-io.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/records.h"
#include "common/temp_dir.h"
#include "common/types.h"
#include "coordinator/archive.h"
#include "coordinator/wal_store.h"

namespace keel {
namespace {

constexpr Micros kBaseUs = 1'700'000'000'000'000;  // 2023-11-14: any fixed time


struct Settings {
  std::string dir;
  std::uint64_t n = 1'000'000;
  bool archive = false;  // --archive: the interactions are in the archive, the hot WAL empty
  std::uint32_t days = 30;
  Micros apartUs = 1'000;  // between two interactions' creation
};
Settings g_settings;

std::string requestIdOf(std::uint64_t i) { return "bench-" + std::to_string(i); }
std::uint64_t seqOf(std::uint64_t i) { return makeSeq(1, i); }

InteractionRecord interaction(std::uint64_t i) {
  InteractionRecord r;
  r.seq = seqOf(i);
  r.epoch = 1;
  // One in a hundred rolled back: what a state filter looks for.
  const bool rolledBack = i % 100 == 0;
  r.state = rolledBack ? InteractionRecord::State::RolledBack : InteractionRecord::State::Committed;
  r.decision = rolledBack ? InteractionRecord::Decision::Abort : InteractionRecord::Decision::Commit;
  r.createdUs = kBaseUs + Micros(i) * g_settings.apartUs;
  r.votesUs = r.createdUs + 300;
  r.decidedUs = r.createdUs + 400;
  r.completedUs = r.createdUs + 900;
  r.requestId = requestIdOf(i);
  r.requestTimeUs = r.createdUs - 50;
  r.deadlineMs = 5000;
  for (int b = 0; b < 2; ++b) {
    InteractionRecord::Branch br;
    br.participant = b == 0 ? "bank-a" : "bank-b";
    br.branch = std::uint16_t(b + 1);
    br.state = rolledBack ? InteractionRecord::BranchState::RolledBack : InteractionRecord::BranchState::Committed;
    br.ops.push_back(Op{br.participant, b == 0 ? OpKind::Debit : OpKind::Credit,
                        "acct-" + std::to_string(i % 10000), std::int64_t(1 + i % 500)});
    r.branches.push_back(std::move(br));
  }
  return r;
}

class Journal {
 public:
  Journal() {
    const std::string& dir = g_settings.dir;
    std::filesystem::create_directories(dir);
    bool existing = std::filesystem::exists(dir + "/data.mdb");
    wal_ = std::make_unique<WalStore>(dir, std::size_t(32) << 30);
    wal_->openIncarnation(1);
    archive_ = std::make_unique<Archive>(dir + "/archive", std::size_t(16) << 30);
    wal_->setArchive(archive_.get());
    if (existing && wal_->get(seqOf(g_settings.n)).has_value()) {
      std::cerr << "keel-bench-journal: reusing the journal in " << dir << "\n";
      return;
    }
    generate();
  }
  WalStore& wal() { return *wal_; }
  Archive& archive() { return *archive_; }

 private:
  void generate() {
    const std::uint64_t n = g_settings.n;
    std::cerr << "keel-bench-journal: generating " << n << " interactions into " << g_settings.dir
              << (g_settings.archive ? "/archive" : "") << "\n";
    auto t0 = std::chrono::steady_clock::now();
    auto last = t0;
    constexpr std::uint64_t kBatch = 20'000;
    for (std::uint64_t from = 1; from <= n; from += kBatch) {
      std::uint64_t to = std::min(n, from + kBatch - 1);
      auto saves = kj::heapArrayBuilder<kj::Promise<void>>(to - from + 1);
      std::vector<ArchivedInteraction> batch;
      for (std::uint64_t i = from; i <= to; ++i) {
        auto rec = interaction(i);
        RequestRecord row{rec.seq, i * 0x9e3779b97f4a7c15ull, rec.requestTimeUs, rec.createdUs};
        RollbackRecord rb;
        rb.seq = rec.seq;
        rb.reason = "bench";
        if (g_settings.archive) {
          batch.push_back(ArchivedInteraction{rec.seq, rec.createdUs, rec.requestId, encode(rec),
                                              i % 10 == 0 ? encode(rb) : std::string(), encode(row)});
        } else {
          saves.add(wal_->save(rec, i % 10 == 0 ? &rb : nullptr, /*lazy=*/true, &row));
        }
      }
      if (g_settings.archive) archive_->append(batch);
      kj::joinPromises(saves.finish()).wait(io_.waitScope);
      auto now = std::chrono::steady_clock::now();
      if (now - last >= std::chrono::seconds(5) || to == n) {
        last = now;
        double s = std::chrono::duration<double>(now - t0).count();
        std::cerr << "keel-bench-journal: " << to << " of " << n << " (" << int(double(to) / s) << "/s)\n";
      }
    }
    // The last lazy batch made durable before the timed part.
    if (!g_settings.archive) wal_->save(interaction(n), nullptr).wait(io_.waitScope);
  }

  kj::AsyncIoContext io_ = kj::setupAsyncIo();
  std::unique_ptr<WalStore> wal_;
  std::unique_ptr<Archive> archive_;
};

Journal& journal() {
  static Journal j;
  return j;
}

// p50 and p99 of the per-query times as counters.
void report(benchmark::State& state, std::vector<double>& us) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  auto at = [&](double q) { return us[std::min(us.size() - 1, std::size_t(q * double(us.size())))]; };
  state.counters["p50_us"] = at(0.50);
  state.counters["p99_us"] = at(0.99);
  state.counters["interactions"] = double(g_settings.n);
}

template <typename F>
double timed(F&& f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

// Random interactions looked up by `query(wal, i)`, each timed.
template <typename Query>
void pointQueries(benchmark::State& state, std::uint64_t seed, Query query) {
  auto& wal = journal().wal();
  std::mt19937_64 rng(seed);
  std::vector<double> us;
  for (auto _ : state) {
    std::uint64_t i = 1 + rng() % g_settings.n;
    us.push_back(timed([&] {
      if (auto why = query(wal, i)) state.SkipWithError(why);
    }));
  }
  report(state, us);
}

// The record of `seq`, fully decoded; an error text if it is missing.
const char* decodeSeq(WalStore& wal, std::uint64_t seq) {
  auto s = wal.get(seq);
  if (!s) return "a generated seq is missing";
  auto rec = decodeInteraction(s->interaction);
  benchmark::DoNotOptimize(rec);
  return nullptr;
}

void BM_QueryBySeq(benchmark::State& state) {
  pointQueries(state, 1, [](WalStore& wal, std::uint64_t i) { return decodeSeq(wal, seqOf(i)); });
}
BENCHMARK(BM_QueryBySeq)->Iterations(200'000);

void BM_QueryByRequestId(benchmark::State& state) {
  pointQueries(state, 2, [](WalStore& wal, std::uint64_t i) -> const char* {
    auto row = wal.findRequest(requestIdOf(i));
    if (!row) return "a generated request id is missing";
    return decodeSeq(wal, row->seq);
  });
}
BENCHMARK(BM_QueryByRequestId)->Iterations(200'000);

void BM_Search1000(benchmark::State& state) {
  auto& wal = journal().wal();
  std::mt19937_64 rng(3);
  std::vector<double> us;
  std::size_t found = 0;
  for (auto _ : state) {
    // A range of 1,000 interactions somewhere in the middle half.
    std::uint64_t mid = g_settings.n / 4 + rng() % std::max<std::uint64_t>(1, g_settings.n / 2);
    Micros from = kBaseUs + Micros(mid) * g_settings.apartUs, to = from + 1000 * g_settings.apartUs;
    found = 0;
    auto match = [&](const std::vector<StoredInteraction>& records) {
      for (auto& r : records) {
        auto rec = decodeInteraction(r.interaction);
        found += std::any_of(rec.branches.begin(), rec.branches.end(),
                             [](const auto& b) { return b.participant == "bank-b"; });
      }
    };
    us.push_back(timed([&] {
      if (g_settings.archive) {
        std::string cursor;
        do {
          auto page = journal().archive().exportPage(cursor, from, to, 512);
          match(page.records);
          cursor = page.next;
        } while (!cursor.empty());
        return;
      }
      std::uint64_t after = 0;
      do {
        auto page = wal.exportPage(after, from, to, 512);
        match(page.records);
        after = page.next;
      } while (after != 0);
    }));
    if (found != 1000 && g_settings.n >= mid + 1000) state.SkipWithError("a range did not hold 1,000");
  }
  state.counters["results"] = double(found);
  report(state, us);
}
BENCHMARK(BM_Search1000)->Iterations(200);

// `keelctl search --state rolled-back` over a range holding 1,000 of them
// among 100,000 (one in a hundred): through the archive's by_state index,
// and, for comparison, read by time and filtered (what a period from
// before the indexes costs, and what every such search cost before them).
void searchRolledBack(benchmark::State& state, bool useIndex) {
  if (!g_settings.archive) {
    state.SkipWithError("--archive only (the hot WAL holds hot_retention_s of traffic and has no state index)");
    return;
  }
  std::mt19937_64 rng(4);
  std::vector<double> us;
  std::size_t found = 0;
  std::uint64_t scanned = 0;
  Archive::Filter filter;
  if (useIndex) filter.state = std::uint8_t(InteractionRecord::State::RolledBack);
  for (auto _ : state) {
    std::uint64_t mid = g_settings.n / 4 + rng() % std::max<std::uint64_t>(1, g_settings.n / 2);
    Micros from = kBaseUs + Micros(mid) * g_settings.apartUs, to = from + 100'000 * g_settings.apartUs;
    found = 0;
    scanned = 0;
    us.push_back(timed([&] {
      std::string cursor;
      do {
        auto page = journal().archive().exportPage(cursor, from, to, 512, filter);
        scanned += page.scanned;
        for (auto& r : page.records) {
          found += decodeInteraction(r.interaction).state == InteractionRecord::State::RolledBack;
        }
        cursor = page.next;
      } while (!cursor.empty());
    }));
    if (found != 1000 && g_settings.n >= mid + 100'000) state.SkipWithError("a range did not hold 1,000 rolled back");
  }
  state.counters["results"] = double(found);
  state.counters["read"] = double(scanned);
  report(state, us);
}
void BM_SearchRolledBack1000Indexed(benchmark::State& state) { searchRolledBack(state, true); }
void BM_SearchRolledBack1000ByTime(benchmark::State& state) { searchRolledBack(state, false); }
BENCHMARK(BM_SearchRolledBack1000Indexed)->Iterations(200);
BENCHMARK(BM_SearchRolledBack1000ByTime)->Iterations(20);

}  // namespace
}  // namespace keel

int main(int argc, char** argv) {
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::cerr << "keel-bench-journal: " << flag << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--wal") {
      keel::g_settings.dir = value("--wal");
    } else if (a == "--archive") {
      keel::g_settings.archive = true;
    } else if (a == "--days") {
      std::string v = value("--days");
      char* end = nullptr;
      unsigned long d = std::strtoul(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || d < 1 || d > 3650) {
        std::cerr << "keel-bench-journal: --days must be a whole number from 1 to 3650, not '" << v << "'\n";
        return 2;
      }
      keel::g_settings.days = std::uint32_t(d);
    } else if (a == "--interactions") {
      std::string v = value("--interactions");
      char* end = nullptr;
      unsigned long long n = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || n < 2000 || n > 100'000'000) {
        std::cerr << "keel-bench-journal: --interactions must be a whole number from 2000 to 100000000, not '" << v
                  << "'\n";
        return 2;
      }
      keel::g_settings.n = n;
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (keel::g_settings.archive) {
    // Spread over --days days: one archive period per day.
    keel::g_settings.apartUs = std::max<keel::Micros>(
        1, keel::Micros(keel::g_settings.days) * 86'400'000'000 / keel::Micros(keel::g_settings.n));
  }
  std::unique_ptr<keel::TempDir> temp;
  if (keel::g_settings.dir.empty()) {
    temp = std::make_unique<keel::TempDir>("keel-bench-journal");
    keel::g_settings.dir = temp->path() + "/wal";
  }
  int n = int(rest.size());
  benchmark::Initialize(&n, rest.data());
  if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
