// keel-bench end to end, briefly: a self-started deployment, a couple of
// seconds of load, and the JSON line checked for the fields and for counts
// that must hold (never for speed).

#include <gtest/gtest.h>
#include "tests/bench/bench_cli.h"

namespace keel::test {
namespace {

TEST(KeelBench, ShortLedgerRunPrintsACompleteJsonLine) {
  auto r = run("--duration 2 --warmup 1 --concurrency 4 --connections 2 --rollback-percent 10 --read-percent 10 "
               "--accounts 50 --floor --floor-samples 100 --quiet",
               false);
  ASSERT_EQ(r.exitCode, 0) << r.out;
  auto m = JsonReader::parse(lastLine(r.out));
  for (const char* k : {"interactions_per_s", "committed", "rolled_back", "errors", "p50_us", "p90_us", "p99_us",
                        "p999_us", "max_us", "cpu_s", "coordinator_log_commits_per_interaction",
                        "agent_log_commits_per_interaction", "floor_us", "rtt_us", "lmdb_commit_us"}) {
    EXPECT_TRUE(m.has(k)) << "missing " << k << " in " << lastLine(r.out);
  }
  EXPECT_GT(m["committed"].number(), 0);
  // 10% overdraw on purpose: some were rolled back, none by surprise.
  EXPECT_GT(m["rolled_back"].number(), 0);
  EXPECT_EQ(m["unexpected_rollbacks"].number(), 0);
  EXPECT_EQ(m["errors"].number(), 0);
  EXPECT_GT(m["interactions_per_s"].number(), 0);
  EXPECT_LE(m["p50_us"].number(), m["p99_us"].number());
  EXPECT_LE(m["p99_us"].number(), m["max_us"].number());
  // Every committed two-phase interaction forced at least its COMMIT
  // decision somewhere: the counters moved.
  EXPECT_GT(m["coordinator_log_commits_per_interaction"].number(), 0);
  EXPECT_GT(m["agent_log_commits_per_interaction"].number(), 0);
  EXPECT_GT(m["floor_us"].number(), 0);
  EXPECT_TRUE(m["cpu_s"].has("coordinator"));
  EXPECT_TRUE(m["cpu_s"].has("bank-b"));
}

TEST(KeelBench, BadFlagsAreRefusedClearly) {
  expectRefused("--mode raw2pc", "need --adapter postgres");
  auto r = run("--workload multi --participants 9", true);
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.out.find("--participants"), std::string::npos) << r.out;
  expectRefused("--rollback-percent 70 --read-percent 40", "at most 100");
}

}  // namespace
}  // namespace keel::test
