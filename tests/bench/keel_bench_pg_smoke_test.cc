// keel-bench on PostgreSQL, briefly: Keel through postgres agents, then the
// raw2pc baseline on the same databases, in one run; the JSON line must
// carry both sides and their ratio (never a speed).

#include <gtest/gtest.h>

#include "tests/bench/bench_cli.h"

namespace keel::test {
namespace {

TEST(KeelBenchPostgres, CompareRunsKeelAndRaw2pcOnTheSameDatabases) {
  auto r = run("--adapter postgres --compare --concurrency 2 --duration 1.5 --warmup 0.5 --accounts 50 "
               "--rollback-percent 10 --quiet",
               false);
  ASSERT_EQ(r.exitCode, 0) << r.out;
  auto m = JsonReader::parse(lastLine(r.out));
  for (const char* k : {"committed", "raw2pc_committed", "raw2pc_rolled_back", "raw2pc_p50_us", "keel_over_raw2pc",
                        "coordinator_log_commits_per_interaction", "raw2pc_cpu_s"}) {
    ASSERT_TRUE(m.has(k)) << "missing " << k << " in " << lastLine(r.out);
  }
  EXPECT_GT(m["committed"].number(), 0);
  EXPECT_GT(m["raw2pc_committed"].number(), 0);
  // raw2pc's intended overdrafts touch no row and are rolled back.
  EXPECT_GT(m["raw2pc_rolled_back"].number(), 0);
  EXPECT_EQ(m["raw2pc_errors"].number(), 0);
  EXPECT_EQ(m["errors"].number(), 0);
  EXPECT_GT(m["keel_over_raw2pc"].number(), 0);
  EXPECT_TRUE(m["cpu_s"].has("postgres"));
}

}  // namespace
}  // namespace keel::test
