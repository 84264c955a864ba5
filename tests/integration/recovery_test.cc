// Crash recovery with real processes killed by failpoints and SIGKILL.

#include <fstream>
#include <sstream>

#include "common/lmdb.h"
#include "common/records.h"
#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

TEST_F(ClusterTest, AgentDownDuringPrepareRollsBackAndSettlesWhenItReturns) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  // bank-b makes its branch durable as PREPARED, then dies before voting.
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b", "agent.after_prepared_durable=crash");
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 300));
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  EXPECT_NE(o.reason.find("bank-b"), std::string::npos) << o.reason;
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  // bank-a's hold is released at once; bank-b's branch waits for bank-b.
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice").second == 0; }));
  auto q = query(o.seq);
  ASSERT_TRUE(q && q->rollback);
  EXPECT_EQ(q->rollback->completedUs, 0u);
  EXPECT_EQ(q->rollback->pending, std::vector<std::string>{"bank-b"});
  cluster_->startAgent("bank-b");
  ASSERT_TRUE(eventually([&] {
    auto r = query(o.seq);
    return r && r->rollback && r->rollback->completedUs != 0;
  }));
  q = query(o.seq);
  EXPECT_GE(q->rollback->attempts, 2u);
  EXPECT_FALSE(q->rollback->lastError.empty());
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::RolledBack);
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
  EXPECT_EQ(account("bank-a", "alice"), bal(1000, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(0, 0));
}

TEST_F(ClusterTest, CoordinatorKilledAfterDecisionCommitsOnRestart) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  crashCoordinatorDuring("coord.after_decision_durable=crash", transferOps("bank-a:alice", "bank-b:bob", 250));
  // Both branches are prepared and the money is held.
  auto inDoubt = unfinishedAt("bank-a");
  ASSERT_EQ(inDoubt.size(), 1u);
  EXPECT_EQ(unfinishedAt("bank-b").size(), 1u);
  EXPECT_EQ(account("bank-a", "alice"), bal(1000, 250));
  cluster_->startCoordinator();
  reconnect();
  ASSERT_TRUE(eventually([&] { return account("bank-b", "bob").first == 250; }));
  EXPECT_TRUE(eventually([&] { return inspect("bank-a").prepared == 0 && inspect("bank-b").prepared == 0; }));
  EXPECT_EQ(account("bank-a", "alice"), bal(750, 0));
  ASSERT_TRUE(eventually([&] {
    auto q = query(inDoubt[0].seq);
    return q && q->interaction.state == InteractionRecord::State::Committed;
  }));
  EXPECT_EQ(query(inDoubt[0].seq)->interaction.decision, InteractionRecord::Decision::Commit);
}

TEST_F(ClusterTest, CoordinatorKilledBeforeDecisionAbortsOnRestart) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  crashCoordinatorDuring("coord.before_decision_durable=crash", transferOps("bank-a:alice", "bank-b:bob", 250));
  auto inDoubt = unfinishedAt("bank-a");
  ASSERT_EQ(inDoubt.size(), 1u);
  EXPECT_EQ(account("bank-a", "alice").second, 250);
  cluster_->startCoordinator();
  reconnect();
  // Presumed abort: every hold is released, nothing moved.
  ASSERT_TRUE(eventually([&] { return inspect("bank-a").prepared == 0 && inspect("bank-b").prepared == 0; }));
  EXPECT_EQ(account("bank-a", "alice"), bal(1000, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(0, 0));
  ASSERT_TRUE(eventually([&] {
    auto q = query(inDoubt[0].seq);
    return q && q->rollback && q->rollback->completedUs != 0;
  }));
  auto q = query(inDoubt[0].seq);
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::RolledBack);
  EXPECT_NE(q->rollback->reason.find("presumed abort"), std::string::npos) << q->rollback->reason;
}

TEST_F(ClusterTest, CoordinatorSigkillUnderLoadConservesMoney) {
  for (int i = 0; i < 4; ++i) {
    open("bank-a", "a" + std::to_string(i), 1000);
    open("bank-b", "b" + std::to_string(i), 1000);
  }
  // Many transfers in flight, then SIGKILL without warning.
  kj::Vector<kj::Promise<void>> inflight;
  std::vector<std::uint64_t> acknowledged;  // answered "committed" before the kill
  for (int i = 0; i < 200; ++i) {
    auto ops = i % 2 ? transferOps("bank-a:a" + std::to_string(i % 4), "bank-b:b" + std::to_string(i % 3), 7)
                     : transferOps("bank-b:b" + std::to_string(i % 4), "bank-a:a" + std::to_string(i % 3), 5);
    inflight.add(client_->submit(ops)
                     .then([&](SubmitOutcome o) {
                       if (o.outcome == ClientOutcome::Committed) acknowledged.push_back(o.seq);
                     })
                     .catch_([](kj::Exception&&) {}));
  }
  auto all = kj::joinPromises(inflight.releaseAsArray());
  // Let part of the load through, then kill.
  for (int i = 0; i < 500 && acknowledged.size() < 20; ++i) {
    io_.provider->getTimer().afterDelay(1 * kj::MILLISECONDS).wait(io_.waitScope);
  }
  cluster_->killCoordinator(9);
  all.wait(io_.waitScope);
  cluster_->startCoordinator();
  reconnect();
  ASSERT_TRUE(eventually([&] {
    return inspect("bank-a").prepared == 0 && inspect("bank-b").prepared == 0 &&
           client_->info().wait(io_.waitScope).unfinished == 0;
  }));
  auto a = inspect("bank-a"), b = inspect("bank-b");
  EXPECT_EQ(a.total() + b.total(), 8000);
  EXPECT_EQ(a.held() + b.held(), 0);
  // Every commit acknowledged to a client survived the crash.
  EXPECT_FALSE(acknowledged.empty());
  for (auto seq : acknowledged) {
    auto q = query(seq);
    ASSERT_TRUE(q) << seq;
    EXPECT_EQ(q->interaction.state, InteractionRecord::State::Committed) << seq;
  }
}

TEST_F(ClusterTest, AgentKilledAfterCommitDecisionReceivesCommitWhenBack) {
  // bank-b dies on the way into phase 2: commit must be retried until it is back.
  auto seq = stuckCommit();
  ASSERT_FALSE(HasFailure());
  ASSERT_TRUE(eventually([&] { return query(seq)->interaction.state == InteractionRecord::State::Committed; }));
  EXPECT_EQ(account("bank-b", "bob"), bal(100, 0));
  EXPECT_EQ(account("bank-a", "alice"), bal(900, 0));
  EXPECT_GE(query(seq)->interaction.phase2Attempts, 2u);
}

TEST_F(ClusterTest, DamagedWalRecordStopsTheCoordinatorNamingIt) {
  auto seq = damagedUnfinishedInteraction();
  EXPECT_ANY_THROW(cluster_->startCoordinator());
  std::ifstream log(cluster_->coordinatorLog());
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_NE(text.str().find("interaction " + seqText(seq) + ": record checksum mismatch"), std::string::npos)
      << text.str();
  // Nothing was touched: the branches still wait.
  EXPECT_EQ(unfinishedAt("bank-a").size(), 1u);
  // --check-wal lists every damaged record and exits 1.
  auto check = run(binDir() + "/keel-coordinator --config " + dir_ + "/coordinator.toml --check-wal");
  EXPECT_EQ(check.exitCode, 1) << check.output;
  EXPECT_NE(check.output.find("damaged: interaction " + seqText(seq) + ": record checksum mismatch")
,
            std::string::npos)
      << check.output;
  EXPECT_NE(check.output.find("1 damaged record(s)"), std::string::npos) << check.output;
}

}  // namespace
}  // namespace keel::test
