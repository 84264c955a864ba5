// Durable before every answer: on every path a client can be answered, the
// coordinator is killed (SIGKILL) the moment the answer arrives, and the
// interaction's record must be there after the restart.
//
// The coordinator runs with every group commit delayed by 300 ms
// (log.before_group_commit=delay(300)): an answer that did not wait for its
// record would arrive before the record reached the disk, and the kill
// would lose it, every time.

#include <csignal>

#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

class DurableAnswerTest : public ClusterTest {
 protected:
  void SetUp() override {
    ClusterTest::SetUp();
    open("bank-a", "alice", 1000);
    open("bank-b", "bob", 0);
    cluster_->stopCoordinator();
    cluster_->startCoordinator("log.before_group_commit=delay(300)");
    reconnect();
  }

  // Kills the coordinator at once (the answer is in), restarts it without
  // the delay, and returns the record of `seq` once recovery settled it.
  std::optional<QueryResult> killAndLookUp(std::uint64_t seq) {
    cluster_->killCoordinator(SIGKILL);
    client_ = nullptr;
    cluster_->startCoordinator();
    reconnect();
    std::optional<QueryResult> q;
    eventually([&] {
      q = query(seq);
      return q && q->interaction.finished();
    });
    return q;
  }
};

TEST_F(DurableAnswerTest, OnePhaseCommit) {
  auto o = submit({Op{"bank-a", OpKind::Credit, "alice", 5}});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  auto q = killAndLookUp(o.seq);
  ASSERT_TRUE(q) << "the answer named seq " << o.seq << " but the WAL has no record of it";
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::Committed);
  EXPECT_TRUE(q->interaction.onePhase);
  EXPECT_EQ(account("bank-a", "alice"), bal(1005, 0));
  // "Committed" rested on the record forced before the call and on
  // bank-a's durable commit, not on the final record (lazy, still in the
  // slowed group commit at the kill): recovery asked bank-a, and the
  // story says so.
  ASSERT_TRUE(q->rollback) << "the final record was durable before the answer: nothing was asked";
  EXPECT_NE(q->rollback->reason.find("one-phase call"), std::string::npos) << q->rollback->reason;
}

TEST_F(DurableAnswerTest, OnePhaseRefusal) {
  auto o = submit({Op{"bank-a", OpKind::Debit, "alice", 5000}});
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  auto q = killAndLookUp(o.seq);
  ASSERT_TRUE(q) << "no record of seq " << o.seq;
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::RolledBack);
  ASSERT_TRUE(q->rollback);
}

TEST_F(DurableAnswerTest, TwoPhaseAllVotedNo) {
  // Both sides refuse: nobody holds anything, the round ends on the votes.
  auto o = submit({Op{"bank-a", OpKind::Debit, "alice", 5000}, Op{"bank-b", OpKind::Debit, "bob", 5000}});
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  auto q = killAndLookUp(o.seq);
  ASSERT_TRUE(q) << "no record of seq " << o.seq;
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::RolledBack);
  ASSERT_TRUE(q->rollback);
  EXPECT_NE(q->rollback->reason.find("voted no"), std::string::npos) << q->rollback->reason;
}

TEST_F(DurableAnswerTest, TwoPhaseCommit) {
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  auto q = killAndLookUp(o.seq);
  ASSERT_TRUE(q) << "no record of seq " << o.seq;
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::Committed);
  EXPECT_EQ(account("bank-b", "bob"), bal(10, 0));
}

TEST_F(DurableAnswerTest, InteractiveBeginExecuteFailureAndRollback) {
  // begin: the seq is answered once its record is durable.
  auto b = client_->begin(SubmitRequest{}).wait(io_.waitScope);
  ASSERT_TRUE(b.txn.get() != nullptr);
  std::uint64_t begun = b.txn->seq();
  // execute that fails: the whole interaction is rolled back.
  auto e = b.txn->execute({Op{"bank-a", OpKind::Debit, "alice", 5000}}).wait(io_.waitScope);
  ASSERT_EQ(e.outcome, ClientOutcome::RolledBack) << e.reason;
  auto q = killAndLookUp(begun);
  ASSERT_TRUE(q) << "no record of seq " << begun;
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::RolledBack);
  EXPECT_TRUE(q->interaction.interactive);

  cluster_->stopCoordinator();
  cluster_->startCoordinator("log.before_group_commit=delay(300)");
  reconnect();
  auto b2 = client_->begin(SubmitRequest{}).wait(io_.waitScope);
  ASSERT_EQ(b2.txn->execute({Op{"bank-a", OpKind::Debit, "alice", 7}}).wait(io_.waitScope).outcome,
            ClientOutcome::Committed);
  auto r = b2.txn->rollback().wait(io_.waitScope);
  ASSERT_EQ(r.outcome, ClientOutcome::RolledBack) << r.reason;
  auto q2 = killAndLookUp(b2.txn->seq());
  ASSERT_TRUE(q2) << "no record of seq " << b2.txn->seq();
  EXPECT_EQ(q2->interaction.state, InteractionRecord::State::RolledBack);
  ASSERT_EQ(q2->interaction.branches.size(), 1u);
  EXPECT_EQ(q2->interaction.branches[0].ops.size(), 1u);  // the executed operation is in the story
  EXPECT_EQ(account("bank-a", "alice"), bal(1000, 0));
}

TEST_F(DurableAnswerTest, WorkExecutedButNotRecordedIsRolledBackAfterACrash) {
  // begin is durable; the agent runs an execute's operation (ACTIVE, money
  // held) while the coordinator's record of it is still on its way (every
  // group commit takes 300 ms here) when the coordinator dies. Recovery
  // finds the interaction with no branches and ends it at once; the sweep
  // then finds the agent's branch, which must be rolled back all the same.
  auto b = client_->begin(SubmitRequest{}).wait(io_.waitScope);
  ASSERT_TRUE(b.txn.get() != nullptr);
  auto pending = b.txn->execute({Op{"bank-a", OpKind::Debit, "alice", 40}});
  ASSERT_TRUE(eventually([&] { return account("bank-a", "alice").second == 40; }, std::chrono::seconds(2)));
  cluster_->killCoordinator(SIGKILL);
  client_ = nullptr;
  // Slow writes again: the sweep's answer arrives while the interaction's
  // final record is still on its way (the case that once left the branch
  // ACTIVE for ever).
  cluster_->startCoordinator("log.before_group_commit=delay(300)");
  reconnect();
  EXPECT_TRUE(eventually([&] { return unfinishedAt("bank-a").empty(); }));
  EXPECT_EQ(account("bank-a", "alice"), bal(1000, 0));
  auto q = query(b.txn->seq());
  ASSERT_TRUE(q);
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::RolledBack);
}

TEST_F(DurableAnswerTest, BatchItems) {
  client_->enableBatching();
  kj::Vector<kj::Promise<SubmitOutcome>> calls;
  calls.add(client_->submit(transferOps("bank-a:alice", "bank-b:bob", 1)));
  calls.add(client_->submit({Op{"bank-b", OpKind::Debit, "bob", 99999}}));                  // one-phase refusal
  calls.add(client_->submit({Op{"bank-a", OpKind::Credit, "alice", 3}}));                   // one-phase commit
  calls.add(client_->submit(transferOps("bank-a:alice", "bank-b:bob", 100000)));            // 2PC, NO vote
  auto outs = kj::joinPromises(calls.releaseAsArray()).wait(io_.waitScope);
  ASSERT_EQ(outs[0].outcome, ClientOutcome::Committed) << outs[0].reason;
  ASSERT_EQ(outs[1].outcome, ClientOutcome::RolledBack) << outs[1].reason;
  ASSERT_EQ(outs[2].outcome, ClientOutcome::Committed) << outs[2].reason;
  ASSERT_EQ(outs[3].outcome, ClientOutcome::RolledBack) << outs[3].reason;
  cluster_->killCoordinator(SIGKILL);
  client_ = nullptr;
  cluster_->startCoordinator();
  reconnect();
  for (auto& o : outs) {
    std::optional<QueryResult> q;
    ASSERT_TRUE(eventually([&] {
      q = query(o.seq);
      return q && q->interaction.finished();
    })) << "no settled record of seq " << o.seq;
    EXPECT_EQ(q->interaction.state == InteractionRecord::State::Committed, o.outcome == ClientOutcome::Committed)
        << o.seq << ": " << stateName(q->interaction.state);
  }
}

}  // namespace
}  // namespace keel::test
