// keel-bench's building blocks: the latency histogram's accuracy, the
// workload's shape, the JSON it prints, CPU accounting and the floor's
// LMDB half.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <random>
#include <set>
#include <thread>
#include <tuple>
#include <utility>

#include "bench/floor.h"
#include "bench/latency_histogram.h"
#include "bench/proc_cpu.h"
#include "bench/report.h"
#include "bench/sweep.h"
#include "bench/workload.h"
#include "common/strict_json.h"
#include "tools/cluster.h"

namespace keel::bench {
namespace {

TEST(LatencyHistogram, BucketsAreContiguousAndOrdered) {
  for (std::size_t b = 1; b < 7000; ++b) {
    ASSERT_LT(LatencyHistogram::bucketLow(b - 1), LatencyHistogram::bucketLow(b)) << b;
    ASSERT_EQ(LatencyHistogram::bucketOf(LatencyHistogram::bucketLow(b)), b) << b;
    ASSERT_EQ(LatencyHistogram::bucketOf(LatencyHistogram::bucketLow(b) - 1), b - 1) << b;
  }
}

TEST(LatencyHistogram, PercentilesWithinOnePercentOfExact) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> d(7.0, 1.5);  // ~1 ms median, long tail
  std::vector<std::uint64_t> v;
  LatencyHistogram h;
  for (int i = 0; i < 200000; ++i) {
    auto x = std::uint64_t(d(rng)) + 1;
    v.push_back(x);
    h.record(x);
  }
  std::sort(v.begin(), v.end());
  for (double p : {1.0, 50.0, 90.0, 99.0, 99.9}) {
    auto exact = double(v[std::size_t(std::ceil(p / 100 * double(v.size()))) - 1]);
    EXPECT_NEAR(double(h.percentile(p)), exact, exact * 0.01 + 1) << "p" << p;
  }
  EXPECT_EQ(h.max(), v.back());
  EXPECT_EQ(h.percentile(100), v.back());
  EXPECT_EQ(h.count(), v.size());
}

TEST(LatencyHistogram, SmallValuesExactAndMergeAddsUp) {
  LatencyHistogram a, b;
  for (std::uint64_t i = 1; i <= 100; ++i) (i % 2 ? a : b).record(i);
  a.merge(b);
  EXPECT_EQ(a.count(), 100u);
  EXPECT_EQ(a.percentile(50), 50u);
  EXPECT_EQ(a.percentile(99), 99u);
  EXPECT_EQ(a.min(), 1u);
  EXPECT_EQ(LatencyHistogram().percentile(50), 0u);
}

WorkloadSpec spec(const std::string& kind, std::uint32_t agents) {
  WorkloadSpec s;
  s.kind = kind;
  s.accounts = 10;
  for (std::uint32_t i = 0; i < agents; ++i) s.agents.push_back("p" + std::to_string(i));
  return s;
}

TEST(Workload, TransferMovesMoneyBetweenTwoDistinctAgents) {
  auto s = spec("transfer", 3);
  Workload w(s, 1);
  for (int i = 0; i < 1000; ++i) {
    auto it = w.next();
    ASSERT_EQ(it.ops.size(), 2u);
    EXPECT_NE(it.ops[0].participant, it.ops[1].participant);
    EXPECT_EQ(it.ops[0].kind, OpKind::Debit);
    EXPECT_EQ(it.ops[1].kind, OpKind::Credit);
    EXPECT_EQ(it.ops[0].amount, it.ops[1].amount);
    EXPECT_EQ(it.intent, Interaction::Intent::Commit);
  }
}

TEST(Workload, MultiConservesMoneyAndSharesAreRoughlyAsAsked) {
  auto s = spec("multi", 5);
  s.participants = 4;
  s.rollbackPercent = 20;
  s.readPercent = 30;
  Workload w(s, 2);
  int rollback = 0, read = 0;
  for (int i = 0; i < 5000; ++i) {
    auto it = w.next();
    ASSERT_EQ(it.ops.size(), 4u);
    std::set<std::string> parts;
    for (auto& op : it.ops) parts.insert(op.participant);
    EXPECT_EQ(parts.size(), 4u);
    if (it.intent == Interaction::Intent::Read) {
      ++read;
      for (auto& op : it.ops) EXPECT_EQ(op.kind, OpKind::ReadBalance);
    } else if (it.intent == Interaction::Intent::Rollback) {
      ++rollback;
      EXPECT_EQ(it.ops[0].kind, OpKind::Debit);
      EXPECT_GT(it.ops[0].amount, kOpeningBalance);
    } else {
      std::int64_t sum = 0;
      for (auto& op : it.ops) sum += op.kind == OpKind::Debit ? -op.amount : op.amount;
      EXPECT_EQ(sum, 0);
    }
  }
  EXPECT_NEAR(rollback, 1000, 150);
  EXPECT_NEAR(read, 1500, 150);
}

TEST(Workload, SingleIsOneParticipantAndChecksFlags) {
  auto s = spec("single", 2);
  Workload w(s, 3);
  EXPECT_EQ(w.next().ops.size(), 1u);
  EXPECT_EQ(s.check(), "");
  s.kind = "multi";
  s.participants = 3;
  EXPECT_NE(s.check().find("needs 3 agents"), std::string::npos);
  s.participants = 2;
  s.rollbackPercent = 60;
  s.readPercent = 50;
  EXPECT_NE(s.check().find("at most 100"), std::string::npos);
}

TEST(Report, JsonLineParsesWithTheHeadlineFields) {
  RunResult r;
  r.mode = "keel";
  r.concurrency = 1;
  r.seconds = 2;
  r.committed = 10;
  r.rolledBack = 2;
  r.firstError = "a \"quoted\"\nline";
  for (std::uint64_t i = 1; i <= 12; ++i) r.latency.record(i * 100);
  r.haveLogCounters = true;
  r.coordinatorLogCommits = 6;
  r.agentLog = {{"bank-a", 3, 12}, {"bank-b", 4, 12}};
  r.cpu = {{"coordinator", 0.5}, {"gone", -1}};
  JsonObject j;
  addRunFields(j, r);
  FloorResult f{50, 200, 0, 100};  // no redo-log append measured: the LMDB commit counts
  addFloorFields(j, f, &r);
  auto m = JsonReader::parse(j.str());
  EXPECT_DOUBLE_EQ(m["interactions_per_s"].number(), 6);
  EXPECT_DOUBLE_EQ(m["coordinator_log_commits_per_interaction"].number(), 0.5);
  EXPECT_NEAR(m["agent_log_commits_per_interaction"].number(), 4.0 / 12, 1e-5);
  EXPECT_DOUBLE_EQ(m["floor_us"].number(), 500);
  EXPECT_NEAR(m["p50_over_floor"].number(), 600.0 / 500, 0.01 * 600 / 500);  // histogram: within 1%
  EXPECT_EQ(m["p99_us"].kind, Json::Kind::Number);
  EXPECT_DOUBLE_EQ(m["cpu_s"]["coordinator"].number(), 0.5);
  EXPECT_EQ(m["cpu_s"]["gone"].kind, Json::Kind::Null);  // a process that was gone: no figure
}

// What print(out) printed.
template <typename F>
std::string printedBy(F print) {
  char* buf = nullptr;
  std::size_t len = 0;
  std::FILE* out = ::open_memstream(&buf, &len);
  print(out);
  std::fclose(out);
  std::string said(buf, len);
  std::free(buf);
  return said;
}

// What answeredSomething printed about r, and what it returned.
std::pair<bool, std::string> answered(const RunResult& r) {
  bool ok = false;
  std::string said = printedBy([&](std::FILE* out) { ok = answeredSomething(out, r); });
  return {ok, said};
}

TEST(Report, AWindowThatAnsweredNothingIsSaidWithItsFirstError) {
  RunResult r;
  r.mode = "keel";
  r.seconds = 1;
  r.errors = 3;
  r.firstError = "coordinator unavailable";
  auto [ok, said] = answered(r);
  EXPECT_FALSE(ok);
  EXPECT_EQ(said, "keel-bench: keel answered no interaction in its 1.0 s window (errors 3, the first: "
                  "coordinator unavailable)\n");
  // A stall: no error either.
  r.errors = 0;
  r.firstError.clear();
  std::tie(ok, said) = answered(r);
  EXPECT_FALSE(ok);
  EXPECT_EQ(said, "keel-bench: keel answered no interaction in its 1.0 s window (errors 0)\n");
  // Only rollbacks (--rollback-percent 100) or only commits: measured.
  r.rolledBack = 1;
  std::tie(ok, said) = answered(r);
  EXPECT_TRUE(ok);
  EXPECT_EQ(said, "");
  r.rolledBack = 0;
  r.committed = 1;
  EXPECT_TRUE(answered(r).first);
}

TEST(Sweep, TableAndPlotHaveEveryLevel) {
  std::vector<SweepPoint> pts;
  for (std::uint32_t c : {1u, 8u}) {
    RunResult r;
    r.mode = "keel";
    r.concurrency = c;
    r.seconds = 1;
    r.committed = 100 * c;
    r.latency.record(1000);
    pts.push_back({r, std::nullopt});
  }
  auto md = sweepMarkdown(pts);
  EXPECT_NE(md.find("| 8 | 800 |"), std::string::npos) << md;
  auto svg = sweepSvg(pts, "t");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("polyline"), std::string::npos);
  auto csv = sweepCsv(pts);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 3);
}

TEST(ProcCpu, CountsOwnCpuAndReportsGoneProcesses) {
  auto before = processCpuSeconds(::getpid());
  ASSERT_TRUE(before.has_value());
  // Spin until the C library's own CPU clock says 0.2 s were used (a wall
  // time bound failed on a busy machine, where 300 ms of wall time can be
  // little CPU); /proc must then show it too, to its 10 ms ticks.
  std::clock_t start = std::clock();
  auto giveUp = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  volatile std::uint64_t x = 0;
  while (double(std::clock() - start) / CLOCKS_PER_SEC < 0.2 && std::chrono::steady_clock::now() < giveUp) x = x + 1;
  EXPECT_GT(*processCpuSeconds(::getpid()), *before + 0.15);
  EXPECT_GE(*processTreeCpuSeconds(::getpid()), *processCpuSeconds(::getpid()));
  EXPECT_FALSE(processCpuSeconds(0x7ffffff0).has_value());
}

TEST(ProcCpu, CountsContextSwitchesOfEveryThread) {
  auto before = processContextSwitches(::getpid());
  ASSERT_TRUE(before.has_value());
  // A thread that sleeps ten times switches out at least ten times; it is
  // counted while it lives (joined after the read).
  std::atomic<bool> slept{false}, read{false};
  std::thread t([&] {
    for (int i = 0; i < 10; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    slept = true;
    while (!read) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (!slept) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto after = processContextSwitches(::getpid());
  read = true;
  t.join();
  ASSERT_TRUE(after.has_value());
  EXPECT_GE(*after, *before + 10);
  EXPECT_FALSE(processContextSwitches(0x7ffffff0).has_value());
}

TEST(Floor, CountsTheCheaperDurableWrite) {
  EXPECT_DOUBLE_EQ((FloorResult{50, 200, 150, 10}.floorUs()), 2 * 50 + 2 * 150);
  EXPECT_DOUBLE_EQ((FloorResult{50, 120, 150, 10}.floorUs()), 2 * 50 + 2 * 120);
  EXPECT_DOUBLE_EQ((FloorResult{50, 0, 150, 10}.floorUs()), 2 * 50 + 2 * 150);
  FloorResult f{50, 200, 150, 10};
  JsonObject j;
  addFloorFields(j, f, nullptr);
  auto m = JsonReader::parse(j.str());
  EXPECT_DOUBLE_EQ(m["floor_us"].number(), 400);
  EXPECT_DOUBLE_EQ(m["lmdb_commit_us"].number(), 200);
  EXPECT_DOUBLE_EQ(m["redo_append_us"].number(), 150);
}

TEST(Floor, BracketedMeasurementsAreAveragedAndBothKept) {
  FloorResult before{50, 200, 150, 10}, after{70, 180, 250, 10};  // floors 400 and 500
  auto f = bracket(before, after);
  EXPECT_DOUBLE_EQ(f.rttUs, 60);
  EXPECT_DOUBLE_EQ(f.lmdbCommitUs, 190);
  EXPECT_DOUBLE_EQ(f.redoAppendUs, 200);
  EXPECT_DOUBLE_EQ(f.floorUs(), 2 * 60 + 2 * 190);
  EXPECT_DOUBLE_EQ(f.beforeUs, 400);
  EXPECT_DOUBLE_EQ(f.afterUs, 500);
  EXPECT_DOUBLE_EQ(f.spread(), 0.25);
  EXPECT_DOUBLE_EQ(bracket(after, before).spread(), 0.25);
  EXPECT_DOUBLE_EQ(before.spread(), 0) << "measured once: no spread";
  RunResult r;
  r.concurrency = 1;
  for (int i = 0; i < 100; ++i) r.latency.record(1000);
  JsonObject j;
  addFloorFields(j, f, &r);
  auto m = JsonReader::parse(j.str());
  EXPECT_DOUBLE_EQ(m["floor_before_us"].number(), 400);
  EXPECT_DOUBLE_EQ(m["floor_after_us"].number(), 500);
  EXPECT_DOUBLE_EQ(m["floor_spread"].number(), 0.25);
  EXPECT_NEAR(m["p50_over_floor_before"].number(), 1000.0 / 400, 0.01 * 1000 / 400);
  EXPECT_NEAR(m["p50_over_floor_after"].number(), 1000.0 / 500, 0.01 * 1000 / 500);
  // Printed too, flagged past kFloorSpreadWarn.
  std::string text = printedBy([&](std::FILE* out) { printFloor(out, f, &r); });
  EXPECT_NE(text.find("measured before the load (floor 400.0 us) and after it (500.0 us), 25% apart"), std::string::npos)
      << text;
  EXPECT_NE(text.find("more than 20% apart, the machine changed during the run"), std::string::npos) << text;
  auto close = bracket(before, FloorResult{50, 200, 160, 10});  // floors 400 and 420: 5% apart, not flagged
  std::string quiet = printedBy([&](std::FILE* out) { printFloor(out, close, &r); });
  EXPECT_NE(quiet.find("(floor 400.0 us) and after it (420.0 us), 5% apart"), std::string::npos) << quiet;
  EXPECT_EQ(quiet.find("the machine changed"), std::string::npos) << quiet;
  EXPECT_NE(text.find("(2.50 x the floor before, 2.00 x after)"), std::string::npos) << text;
  JsonObject once;
  addFloorFields(once, before, &r);
  EXPECT_FALSE(JsonReader::parse(once.str()).has("floor_before_us")) << "measured once: no bracket fields";
}

TEST(Floor, DurableRedoLogAppendTakesMeasurableTimeAndLeavesNothingBehind) {
  std::string dir = makeTempDir("keel-floor-test");
  double us = medianRedoAppendUs(dir, 30);
  EXPECT_GT(us, 0);
  EXPECT_TRUE(std::filesystem::is_empty(dir));  // its scratch environment is removed
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

TEST(Floor, DurableLmdbCommitTakesMeasurableTime) {
  std::string dir = makeTempDir("keel-floor-test");
  double us = medianLmdbCommitUs(dir, 30);
  EXPECT_GT(us, 0);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace
}  // namespace keel::bench
