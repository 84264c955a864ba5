// Crash recovery with real processes killed by failpoints and SIGKILL.

#include <fstream>
#include <sstream>
#include <thread>

#include "common/lmdb.h"
#include "common/records.h"
#include "common/seq.h"
#include "coordinator/wal_store.h"
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
  // bank-a releases its hold before it answers, and the coordinator records
  // the confirmation durably after that answer: wait for the record too.
  std::optional<QueryResult> q;
  EXPECT_TRUE(eventually([&] {
    q = query(o.seq);
    return q && q->rollback && q->rollback->pending == std::vector<std::string>{"bank-b"};
  }));
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

// Without staged commit (staged_commit = false) nothing is written before
// the decision: presumed abort.
class PresumedAbortTest : public ClusterTest {
 protected:
  std::string coordinatorToml() override { return ClusterTest::coordinatorToml() + "staged_commit = false\n"; }
};

TEST_F(PresumedAbortTest, CoordinatorKilledBeforeDecisionAbortsOnRestart) {
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

// Staged commit (docs/protocol.md): a two-phase interaction's record goes
// to the WAL in parallel with its prepares, and "committed" rests on it and
// the YES votes, with no COMMIT record first. After a crash such a record
// is settled by reading the votes back from the participants.
class StagedCommitTest : public ClusterTest {
 protected:
  // The coordinator restarted with `failpoints`; one open at each agent
  // first, so that both links have said (Participant.batching) that their
  // YES branches are visible: the next transfer is staged.
  void restartCoordinatorConnected(const std::string& failpoints) {
    cluster_->stopCoordinator();
    cluster_->startCoordinator(failpoints);
    reconnect();
    open("bank-a", "alice", 1000);
    open("bank-b", "bob", 0);
  }

  // A staged transfer alice -> bob of 250 whose coordinator died once every
  // YES was in (coord.after_decision_durable): its seq, 0 on a failure.
  std::uint64_t transferKilledAfterTheVotes() {
    restartCoordinatorConnected("coord.after_decision_durable=crash");
    EXPECT_ANY_THROW(submit(transferOps("bank-a:alice", "bank-b:bob", 250)));
    if (!cluster_->waitCoordinatorExit(std::chrono::seconds(5))) {
      ADD_FAILURE() << "the coordinator did not die at the failpoint";
      return 0;
    }
    auto inDoubt = unfinishedAt("bank-a");
    if (inDoubt.size() != 1) {
      ADD_FAILURE() << inDoubt.size() << " branch(es) unfinished at bank-a, 1 expected";
      return 0;
    }
    return inDoubt[0].seq;
  }
};

TEST_F(StagedCommitTest, ATransferIsStagedAndATwoAgentReadIsNot) {
  restartCoordinatorConnected("");
  auto t = submit(transferOps("bank-a:alice", "bank-b:bob", 5));
  ASSERT_EQ(t.outcome, ClientOutcome::Committed) << t.reason;
  EXPECT_TRUE(query(t.seq)->interaction.staged);
  // Every vote READ-ONLY: nothing to stage, one record (the final one).
  auto r = submit({Op{"bank-a", OpKind::ReadBalance, "alice", 0}, Op{"bank-b", OpKind::ReadBalance, "bob", 0}});
  ASSERT_EQ(r.outcome, ClientOutcome::Committed) << r.reason;
  EXPECT_FALSE(query(r.seq)->interaction.staged);
}

TEST_F(StagedCommitTest, KilledAfterEveryYesCommitsFromTheVotesWithoutACommitRecord) {
  auto seq = transferKilledAfterTheVotes();
  ASSERT_NE(seq, 0u);
  ASSERT_EQ(unfinishedAt("bank-b").size(), 1u);
  // The staged record is all the WAL holds: no decision was written.
  auto stored = storedRecord(seq);
  EXPECT_TRUE(stored.staged);
  EXPECT_EQ(stored.decision, InteractionRecord::Decision::None);
  EXPECT_EQ(stored.state, InteractionRecord::State::Preparing);
  ASSERT_EQ(stored.branches.size(), 2u);
  cluster_->startCoordinator();
  reconnect();
  // Both participants hold their YES: committed, as the client may have heard.
  ASSERT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(250, 0); }));
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(750, 0); }));
  ASSERT_TRUE(eventually([&] {
    auto q = query(seq);
    return q && q->interaction.state == InteractionRecord::State::Committed;
  }));
  auto q = query(seq);
  EXPECT_EQ(q->interaction.decision, InteractionRecord::Decision::Commit);
  EXPECT_FALSE(q->rollback);
  EXPECT_NE(q->interaction.error.find("every participant holds its YES vote"), std::string::npos) << q->interaction.error;
}

// bank-b is down when the coordinator restarts: the staged interaction
// waits for it (a vote not read is not a missing vote), and bank-a's
// in-doubt resolver, asking meanwhile, hears "pending", never "rolled back".
class StagedCommitQuickResolverTest : public StagedCommitTest {
 protected:
  ClusterOptions clusterOptions() override {
    auto o = StagedCommitTest::clusterOptions();
    o.agentInDoubtQueryMs = 300;
    return o;
  }
};

TEST_F(StagedCommitQuickResolverTest, AParticipantDownAtTheRestartIsWaitedForAndNobodyHearsRolledBack) {
  auto seq = transferKilledAfterTheVotes();
  ASSERT_NE(seq, 0u);
  cluster_->stopAgent("bank-b");
  cluster_->startCoordinator();
  reconnect();
  // Several of bank-a's in-doubt queries (every 300 ms) while bank-b is down.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(account("bank-a", "alice"), bal(1000, 250));
  EXPECT_EQ(inspect("bank-a").prepared, 1u);
  EXPECT_EQ(inspect("bank-a").rolledBack, 0u);
  cluster_->startAgent("bank-b");
  ASSERT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(250, 0); }));
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(750, 0); }));
  EXPECT_TRUE(eventually([&] {
    auto q = query(seq);
    return q && q->interaction.state == InteractionRecord::State::Committed;
  }));
}

TEST_F(StagedCommitTest, KilledWithAVoteMissingRollsBackAndTheLatePrepareIsRefused) {
  // bank-a votes after 300 ms (the staged record is durable long before);
  // bank-b is held up 20 s inside its prepare and killed there: it never
  // votes. The coordinator dies on bank-a's vote. (The first hit at each
  // agent is the open below, let through.)
  cluster_->stopAgent("bank-a");
  cluster_->startAgent("bank-a", "agent.before_execute=1+delay(300)");
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b", "agent.before_execute=1+delay(20000)");
  restartCoordinatorConnected("coord.after_prepare=crash");
  EXPECT_ANY_THROW(submit(transferOps("bank-a:alice", "bank-b:bob", 250)));
  ASSERT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(5)));
  cluster_->killAgent("bank-b", 9);
  cluster_->startAgent("bank-b");
  auto inDoubt = unfinishedAt("bank-a");
  ASSERT_EQ(inDoubt.size(), 1u);
  EXPECT_TRUE(unfinishedAt("bank-b").empty());
  std::uint64_t seq = inDoubt[0].seq;
  auto stored = storedRecord(seq);
  ASSERT_TRUE(stored.staged);
  ASSERT_EQ(stored.decision, InteractionRecord::Decision::None);
  cluster_->startCoordinator();
  reconnect();
  // bank-b never voted: nobody heard "committed", so it is rolled back.
  ASSERT_TRUE(eventually([&] {
    auto q = query(seq);
    return q && q->interaction.state == InteractionRecord::State::RolledBack && q->rollback &&
           q->rollback->completedUs != 0;
  }));
  auto q = query(seq);
  EXPECT_EQ(q->interaction.decision, InteractionRecord::Decision::Abort);
  EXPECT_NE(q->interaction.error.find("not every participant voted yes"), std::string::npos) << q->interaction.error;
  EXPECT_NE(q->interaction.error.find("bank-b branch 2: not held"), std::string::npos) << q->interaction.error;
  EXPECT_EQ(account("bank-a", "alice"), bal(1000, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(0, 0));
  EXPECT_EQ(inspect("bank-a").prepared, 0u);
  // bank-b holds a tombstone: a prepare of that branch is refused now, even
  // under the current epoch (the dead incarnation's is fenced anyway).
  auto b = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
  auto req = b->capability().prepareRequest();
  req.setEpoch(client_->info().wait(io_.waitScope).epoch);
  req.getXid().setSeq(seq);
  req.getXid().setBranch(2);
  auto op = req.initOperations(1)[0];
  op.setKind(wire::LedgerOpKind::CREDIT);
  op.setAccount("bob");
  op.setAmount(250);
  auto late = req.send().wait(io_.waitScope);
  EXPECT_EQ(late.getVote(), wire::Vote::NO);
  EXPECT_NE(std::string(late.getReason().cStr()).find("rolled"), std::string::npos) << late.getReason().cStr();
  EXPECT_EQ(account("bank-b", "bob"), bal(0, 0));
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

// A participant removed from the config while an interaction still needs
// it: the start is refused with its name and the seq, nothing changes, and
// with the participant back the interaction finishes. With staged commit
// (the record settled from the votes: it waited forever for the missing
// participant before) and without (phase 2 redriven from the COMMIT).
class RemovedParticipantTest : public ClusterTest, public ::testing::WithParamInterface<bool> {
 protected:
  std::string coordinatorToml() override {
    return ClusterTest::coordinatorToml() + (GetParam() ? "" : "staged_commit = false\n");
  }
};

INSTANTIATE_TEST_SUITE_P(StagedAndNot, RemovedParticipantTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Staged" : "NotStaged"; });

TEST_P(RemovedParticipantTest, WhileAnInteractionNeedsItTheStartIsRefusedChangingNothing) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  crashCoordinatorDuring("coord.after_decision_durable=crash", transferOps("bank-a:alice", "bank-b:bob", 250));
  auto seq = unfinishedAt("bank-a").at(0).seq;
  auto epoch = [&] { return WalStore(dir_ + "/coordinator", std::size_t(1) << 30, /*readOnly=*/true).storedEpoch(); };
  auto before = epoch();
  // The same config without bank-b.
  auto without = configWithout("coordinator.toml", "bank-b");
  ASSERT_FALSE(without.empty()) << "no bank-b line in the config";
  // (Bounded: a coordinator that started anyway would serve until killed.)
  auto r = run("timeout 20 " + binDir() + "/keel-coordinator --config " + without);
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_NE(r.output.find("'bank-b' (1 unfinished: " + seqText(seq) + ")"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("nothing was started or changed"), std::string::npos) << r.output;
  // Nothing changed: no new incarnation, the branches still wait.
  EXPECT_EQ(epoch(), before);
  EXPECT_EQ(unfinishedAt("bank-a").size(), 1u);
  EXPECT_EQ(unfinishedAt("bank-b").size(), 1u);
  // bank-b back in the config: the interaction commits.
  cluster_->startCoordinator();
  reconnect();
  ASSERT_TRUE(eventually([&] {
    auto q = query(seq);
    return q && q->interaction.state == InteractionRecord::State::Committed;
  }));
  EXPECT_EQ(account("bank-b", "bob"), bal(250, 0));
  EXPECT_EQ(account("bank-a", "alice"), bal(750, 0));
}

}  // namespace
}  // namespace keel::test
