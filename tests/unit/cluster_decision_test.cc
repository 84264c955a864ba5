// ClusterDecision: the value of a decision key in etcd. Nothing read from
// etcd is trusted: every malformed value decodes to nullopt.

#include <gtest/gtest.h>

#include "coordinator/cluster.h"

namespace keel {
namespace {

TEST(ClusterDecision, CommitWithItsBranchesRoundTrips) {
  ClusterDecision d;
  d.commit = true;
  d.by = 3;
  d.epoch = 17;
  d.branches = {{"bank-a", 0}, {"bank.b_2", 1}};
  auto s = d.encode();
  EXPECT_EQ(s, "commit by=3 epoch=17 branches=bank-a:0,bank.b_2:1");
  auto back = ClusterDecision::decode(s);
  ASSERT_TRUE(back);
  EXPECT_TRUE(back->commit);
  EXPECT_EQ(back->by, 3);
  EXPECT_EQ(back->epoch, 17u);
  EXPECT_EQ(back->branches, d.branches);
}

TEST(ClusterDecision, AbortRoundTrips) {
  ClusterDecision d;
  d.by = 65535;
  d.epoch = 18446744073709551615ull;
  auto back = ClusterDecision::decode(d.encode());
  ASSERT_TRUE(back);
  EXPECT_FALSE(back->commit);
  EXPECT_EQ(back->by, 65535);
  EXPECT_EQ(back->epoch, 18446744073709551615ull);
  EXPECT_TRUE(back->branches.empty());
}

TEST(ClusterDecision, UnknownFieldsOfANewerWriterAreIgnored) {
  auto d = ClusterDecision::decode("commit by=1 epoch=2 branches=a:0 reason=x");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->branches.size(), 1u);
}

TEST(ClusterDecision, MalformedValuesAreRefused) {
  for (const char* bad : {"", "COMMIT by=1 epoch=2", "commit", "commit by=1", "commit epoch=2",
                          "commit by=70000 epoch=2", "commit by=-1 epoch=2", "commit by=1 epoch=2x",
                          "commit by=1 epoch=99999999999999999999", "commit by=1 epoch=2 branches=",
                          "commit by=1 epoch=2 branches=bank-a", "commit by=1 epoch=2 branches=bank a:0",
                          "commit by=1 epoch=2 branches=bank-a:70000", "commit by=1 epoch=2 branches=:0",
                          "commit by=1 epoch=2 branches=a:0,", "commit by 1 epoch=2", "rollback by=1 epoch=2"}) {
    EXPECT_FALSE(ClusterDecision::decode(bad)) << "'" << bad << "' was accepted";
  }
  EXPECT_FALSE(ClusterDecision::decode(std::string(70000, 'x')));
}

}  // namespace
}  // namespace keel
