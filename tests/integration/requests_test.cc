// Request ids: for one id at most one interaction ever commits. A retry of
// a known id is answered with that interaction's seq and outcome and runs
// nothing, across restarts and crashes; misuse is refused with a clear
// error and nothing written.

#include <csignal>

#include "common/wire.h"
#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

class RequestIdTest : public ClusterTest {
 protected:
  std::string coordinatorToml() override {
    return ClusterTest::coordinatorToml() + "interaction_timeout_ms = 400\nmax_interaction_ms = 400\nrequest_id_retention_s = 3600\n";
  }
  void SetUp() override {
    ClusterTest::SetUp();
    open("bank-a", "alice", 1000);
    open("bank-b", "bob", 0);
  }
  static SubmitRequest request(std::vector<Op> ops, std::string id, Micros at = 0) {
    SubmitRequest r;
    r.ops = std::move(ops);
    r.requestId = std::move(id);
    r.requestTimeUs = at != 0 ? at : wallMicros();
    return r;
  }
  SubmitOutcome send(const SubmitRequest& r) { return client_->submit(r).wait(io_.waitScope); }
  std::uint64_t committedCount() { return client_->info().wait(io_.waitScope).committed; }
};

TEST_F(RequestIdTest, RetryOfADecidedIdReplaysItAndRunsNothing) {
  auto req = request(transferOps("bank-a:alice", "bank-b:bob", 100), newRequestId());
  auto first = send(req);
  ASSERT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
  EXPECT_EQ(first.requestId, req.requestId);
  EXPECT_FALSE(first.replayed);
  auto again = send(req);
  EXPECT_EQ(again.outcome, ClientOutcome::Committed);
  EXPECT_EQ(again.seq, first.seq);
  EXPECT_TRUE(again.replayed);
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(100, 0); }));  // moved once
  // A rolled-back id replays as rolled back.
  auto bad = request(transferOps("bank-a:alice", "bank-b:bob", 999999), newRequestId());
  auto r1 = send(bad);
  ASSERT_EQ(r1.outcome, ClientOutcome::RolledBack);
  auto r2 = send(bad);
  EXPECT_EQ(r2.outcome, ClientOutcome::RolledBack);
  EXPECT_EQ(r2.seq, r1.seq);
  EXPECT_TRUE(r2.replayed);
  // The interaction is found by its id.
  auto q = client_->queryRequest(req.requestId).wait(io_.waitScope);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->interaction.seq, first.seq);
  EXPECT_EQ(q->interaction.requestId, req.requestId);
  EXPECT_FALSE(client_->queryRequest("no-such-id").wait(io_.waitScope));
}

TEST_F(RequestIdTest, ARetryWhileTheFirstIsInFlightWaitsForItsOutcome) {
  cluster_->stopCoordinator();
  cluster_->startCoordinator("coord.after_votes=delay(300)");
  reconnect();
  auto req = request(transferOps("bank-a:alice", "bank-b:bob", 10), newRequestId());
  auto a = client_->submit(req);
  auto b = client_->submit(req);  // same turn: the first is still being prepared
  auto ra = a.wait(io_.waitScope);
  auto rb = b.wait(io_.waitScope);
  ASSERT_EQ(ra.outcome, ClientOutcome::Committed) << ra.reason;
  ASSERT_EQ(rb.outcome, ClientOutcome::Committed) << rb.reason;
  EXPECT_EQ(ra.seq, rb.seq);
  EXPECT_NE(ra.replayed, rb.replayed);
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(10, 0); }));
}

TEST_F(RequestIdTest, MisuseIsRefusedAndNothingRuns) {
  auto before = committedCount();
  auto id = newRequestId();
  ASSERT_EQ(send(request(transferOps("bank-a:alice", "bank-b:bob", 1), id)).outcome, ClientOutcome::Committed);
  // The same id with other operations.
  auto reuse = send(request(transferOps("bank-a:alice", "bank-b:bob", 2), id));
  EXPECT_EQ(reuse.outcome, ClientOutcome::Invalid);
  EXPECT_NE(reuse.reason.find("reused with other operations"), std::string::npos) << reuse.reason;
  EXPECT_EQ(reuse.seq, 0u);
  // Over the size limit, or not printable ASCII.
  auto tooLong = send(request(transferOps("bank-a:alice", "bank-b:bob", 1), std::string(129, 'x')));
  EXPECT_EQ(tooLong.outcome, ClientOutcome::Invalid);
  EXPECT_NE(tooLong.reason.find("limit is 128"), std::string::npos) << tooLong.reason;
  EXPECT_EQ(send(request(transferOps("bank-a:alice", "bank-b:bob", 1), "a b")).outcome, ClientOutcome::Invalid);
  // No first-sent time, or one far in the future.
  auto noTime = request(transferOps("bank-a:alice", "bank-b:bob", 1), newRequestId());
  noTime.requestTimeUs = 0;
  {
    // KeelClient fills in a missing time; send the raw call.
    auto call = client_->capability().submitRequest();
    fillOps(call.initOperations(noTime.ops.size()), noTime.ops);
    call.setRequestId(noTime.requestId);
    auto o = readSubmitResult(call.send().wait(io_.waitScope).getResult(), noTime.ops.size());
    EXPECT_EQ(o.outcome, ClientOutcome::Invalid);
    EXPECT_NE(o.reason.find("requestTimeUs"), std::string::npos) << o.reason;
  }
  auto future = send(request(transferOps("bank-a:alice", "bank-b:bob", 1), newRequestId(),
                             wallMicros() + 3'600'000'000ull));
  EXPECT_EQ(future.outcome, ClientOutcome::Invalid);
  EXPECT_NE(future.reason.find("ahead of the coordinator's clock"), std::string::npos) << future.reason;
  // First sent longer ago than the retention, and unknown: refused, never run.
  auto old = send(request(transferOps("bank-a:alice", "bank-b:bob", 1), newRequestId(),
                          wallMicros() - 7'200'000'000ull));
  EXPECT_EQ(old.outcome, ClientOutcome::Invalid);
  EXPECT_NE(old.reason.find("request_id_retention_s"), std::string::npos) << old.reason;
  EXPECT_TRUE(eventually([&] { return committedCount() == before + 1; }));
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(1, 0); }));
  EXPECT_EQ(committedCount(), before + 1);
}

TEST_F(RequestIdTest, IdsSurviveARestartAndACrash) {
  auto req = request(transferOps("bank-a:alice", "bank-b:bob", 50), newRequestId());
  auto first = send(req);
  ASSERT_EQ(first.outcome, ClientOutcome::Committed);
  cluster_->killCoordinator(SIGKILL);
  client_ = nullptr;
  cluster_->startCoordinator();
  reconnect();
  auto again = send(req);
  EXPECT_EQ(again.outcome, ClientOutcome::Committed);
  EXPECT_EQ(again.seq, first.seq);
  EXPECT_TRUE(again.replayed);
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(50, 0); }));
}

TEST_F(RequestIdTest, AnswerLostAfterTheDecisionIsFoundByTheRetry) {
  auto req = request(transferOps("bank-a:alice", "bank-b:bob", 70), newRequestId());
  cluster_->stopCoordinator();
  cluster_->startCoordinator("coord.after_decision_durable=crash");
  reconnect();
  EXPECT_ANY_THROW(send(req));  // the answer is lost with the coordinator
  ASSERT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(5)));
  cluster_->startCoordinator();
  reconnect();
  auto retry = send(req);
  EXPECT_EQ(retry.outcome, ClientOutcome::Committed) << retry.reason;
  EXPECT_TRUE(retry.replayed);
  // Answered once the decision is durable: each agent's commit follows.
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(70, 0); }));
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(930, 0); }));
}

// Without staged commit: nothing is written before the decision.
class RequestIdPresumedAbortTest : public RequestIdTest {
 protected:
  std::string coordinatorToml() override { return RequestIdTest::coordinatorToml() + "staged_commit = false\n"; }
};

TEST_F(RequestIdPresumedAbortTest, AnswerLostBeforeTheDecisionRunsOnceMore) {
  // Nothing is written before a two-phase decision: the first try leaves
  // only prepared branches, which presumed abort rolls back. The retry runs
  // as a new interaction, the only one that can commit.
  auto req = request(transferOps("bank-a:alice", "bank-b:bob", 80), newRequestId());
  cluster_->stopCoordinator();
  cluster_->startCoordinator("coord.after_votes=crash");
  reconnect();
  EXPECT_ANY_THROW(send(req));
  ASSERT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(5)));
  auto lost = unfinishedAt("bank-a");
  ASSERT_EQ(lost.size(), 1u);
  cluster_->startCoordinator();
  reconnect();
  auto retry = send(req);
  ASSERT_EQ(retry.outcome, ClientOutcome::Committed) << retry.reason;
  EXPECT_FALSE(retry.replayed);
  EXPECT_NE(retry.seq, lost[0].seq);
  // Rolled back, and its story complete: both branches confirmed.
  ASSERT_TRUE(eventually([&] {
    auto q = query(lost[0].seq);
    return q && q->interaction.state == InteractionRecord::State::RolledBack && q->interaction.completedUs != 0 &&
           q->interaction.branches.size() == 2;
  }));
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(80, 0); }));
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(920, 0); }));
  // The lost interaction's story comes from the agents' branch records.
  auto q = query(lost[0].seq);
  EXPECT_EQ(q->interaction.recoveredBy, "sweep");
  EXPECT_NE(q->interaction.epoch, 0u);
  ASSERT_EQ(q->interaction.branches.size(), 2u);
  for (auto& b : q->interaction.branches) EXPECT_EQ(b.ops.size(), 1u) << b.participant;
  EXPECT_NE(q->interaction.failedUs, 0u);
  EXPECT_LE(q->interaction.failedUs, q->interaction.createdUs + 1'000'000);  // from the first prepare
  EXPECT_LT(q->interaction.createdUs, q->interaction.completedUs);
  // And its request id's row names the interaction that committed.
  EXPECT_EQ(client_->queryRequest(req.requestId).wait(io_.waitScope)->interaction.seq, retry.seq);
}

TEST_F(RequestIdTest, AStagedFirstTryWhoseAnswerWasLostIsTheOneThatCommits) {
  // Staged commit: the first try's record and its request id's row are
  // durable before the votes; the coordinator dies with both YES votes in,
  // before anyone heard the answer. The retry runs nothing: it waits while
  // recovery reads the votes back, then hears the first try's commit.
  auto req = request(transferOps("bank-a:alice", "bank-b:bob", 80), newRequestId());
  cluster_->stopCoordinator();
  cluster_->startCoordinator("coord.after_decision_durable=crash");
  reconnect();
  open("bank-a", "carol", 1);  // both links connected: the transfer is staged
  open("bank-b", "dave", 1);
  EXPECT_ANY_THROW(send(req));
  ASSERT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(5)));
  auto lost = unfinishedAt("bank-a");
  ASSERT_EQ(lost.size(), 1u);
  cluster_->startCoordinator();
  reconnect();
  SubmitOutcome retry;
  ASSERT_TRUE(eventually([&] {
    retry = send(req);
    return retry.outcome == ClientOutcome::Committed;
  })) << retry.reason;
  EXPECT_TRUE(retry.replayed);
  EXPECT_EQ(retry.seq, lost[0].seq);
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(80, 0); }));
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(920, 0); }));
  EXPECT_EQ(inspect("bank-a").rolledBack, 0u);
}

TEST_F(RequestIdTest, BeginWithAKnownIdOpensNothing) {
  SubmitRequest req;
  req.requestId = newRequestId();
  auto b = client_->begin(req).wait(io_.waitScope);
  ASSERT_TRUE(b.txn.get() != nullptr);
  ASSERT_EQ(b.txn->execute(transferOps("bank-a:alice", "bank-b:bob", 5)).wait(io_.waitScope).outcome,
            ClientOutcome::Committed);
  auto c = b.txn->commit().wait(io_.waitScope);
  ASSERT_EQ(c.outcome, ClientOutcome::Committed) << c.reason;
  auto again = client_->begin(req).wait(io_.waitScope);
  EXPECT_TRUE(again.txn.get() == nullptr);
  ASSERT_TRUE(again.replay);
  EXPECT_EQ(again.replay->seq, b.txn->seq());
  EXPECT_EQ(again.replay->outcome, ClientOutcome::Committed);
  // A begin id reused for a one-shot submit is a reuse with other operations.
  auto o = send(request(transferOps("bank-a:alice", "bank-b:bob", 5), req.requestId));
  EXPECT_EQ(o.outcome, ClientOutcome::Invalid);
}

TEST_F(RequestIdTest, ClientDeadlinesAreCappedByMaxInteraction) {
  SubmitRequest req;
  req.deadlineMs = 4'000'000'000u;  // ~46 days asked
  auto b = client_->begin(req).wait(io_.waitScope);
  ASSERT_TRUE(b.txn.get() != nullptr);
  ASSERT_EQ(b.txn->execute({Op{"bank-a", OpKind::Debit, "alice", 10}}).wait(io_.waitScope).outcome,
            ClientOutcome::Committed);
  EXPECT_EQ(query(b.txn->seq())->interaction.deadlineMs, 400u);
  // The escrow is released when the capped deadline passes, not in 46 days.
  ASSERT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(1000, 0); }, std::chrono::seconds(5)));
  EXPECT_NE(query(b.txn->seq())->rollback->reason.find("deadline of 400 ms"), std::string::npos);
}

}  // namespace
}  // namespace keel::test
