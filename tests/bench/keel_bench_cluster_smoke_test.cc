// keel-bench --cluster end to end, briefly: a 3-member etcd, two
// coordinators sharing it, a couple of seconds of load, and the JSON line
// checked for the cluster's fields and counts (never for speed).

#include <gtest/gtest.h>
#include "tests/bench/bench_cli.h"

namespace keel::test {
namespace {

TEST(KeelBenchCluster, ShortRunOverTwoCoordinatorsCountsEtcdTxns) {
  auto r = runJson("--cluster 2 --duration 2 --warmup 1 --concurrency 8 --accounts 50 --etcd-floor "
                   "--etcd-floor-samples 20 --quiet",
                   {"coordinators", "etcd_txns", "etcd_decisions", "etcd_txns_per_interaction", "etcd_decisions_per_txn",
                    "coordinators_cpu_us_per_interaction", "etcd_cpu_us_per_interaction", "etcd_txn_us",
                    "etcd_txn_async_us"});
  ASSERT_EQ(r.exitCode, 0) << r.out;
  EXPECT_TRUE(r.missing.empty()) << r.missing.size() << " fields missing, the first " << r.missing.front() << ": "
                                 << r.out;
  auto& m = r.fields;
  EXPECT_EQ(m["coordinators"].number(), 2);
  EXPECT_EQ(m["errors"].number(), 0);
  EXPECT_GT(m["committed"].number(), 0);
  // Committed transfers were decided in etcd, several to a txn at times.
  EXPECT_GT(m["etcd_decisions"].number(), 0);
  EXPECT_GT(m["etcd_txns"].number(), 0);
  EXPECT_GT(m["etcd_txn_us"].number(), 0);
  // Every coordinator and etcd member has its CPU line.
  for (const char* p : {"coordinator", "coordinator-2", "etcd-1", "etcd-3"}) {
    EXPECT_TRUE(m["cpu_s"].has(p)) << p << " missing in " << lastLine(r.out);
  }
}

TEST(KeelBenchCluster, ClusterFlagsNeedCluster) {
  expectRefused("--etcd-floor", "--etcd-floor is for --cluster");
  expectRefused("--cluster 2 --coordinator 127.0.0.1:1 --agent bank-a=127.0.0.1:2", "not with --coordinator");
}

}  // namespace
}  // namespace keel::test
