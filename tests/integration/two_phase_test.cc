// End-to-end 2PC with real processes: happy path, NO votes, bad input,
// query, one-phase and interactive interactions.

#include "tests/integration/cluster_fixture.h"

#include "common/wire.h"

#include <csignal>
#include <set>

namespace keel::test {
namespace {

using BS = InteractionRecord::BranchState;

TEST_F(ClusterTest, CommitAcrossTwoAgents) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 300));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  EXPECT_NE(o.seq, 0u);
  // Phase 2 runs after the answer: wait until every participant acknowledged.
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.state == InteractionRecord::State::Committed; }));
  EXPECT_EQ(account("bank-a", "alice"), bal(700, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(300, 0));
  auto q = query(o.seq);
  EXPECT_EQ(q->interaction.decision, InteractionRecord::Decision::Commit);
  EXPECT_FALSE(q->rollback.has_value());
  ASSERT_EQ(q->interaction.branches.size(), 2u);
  for (auto& b : q->interaction.branches) EXPECT_EQ(b.state, BS::Committed);
  EXPECT_NE(q->interaction.decidedUs, 0u);
  EXPECT_GE(q->interaction.completedUs, q->interaction.decidedUs);
}

TEST_F(ClusterTest, InfoAndInspectCountDurableLogCommits) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  auto c0 = client_->info().wait(io_.waitScope);
  auto a0 = inspect("bank-a"), b0 = inspect("bank-b");
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 1));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  auto c1 = client_->info().wait(io_.waitScope);
  auto a1 = inspect("bank-a"), b1 = inspect("bank-b");
  // The COMMIT decision and each PREPARED branch were made durable before
  // the answer: at least one fsync-bearing commit on each log.
  EXPECT_GT(c1.logCommits, c0.logCommits);
  EXPECT_GT(a1.logCommits, a0.logCommits);
  EXPECT_GT(b1.logCommits, b0.logCommits);
  // A durable commit carries one job or more.
  EXPECT_GE(c1.logJobs - c0.logJobs, c1.logCommits - c0.logCommits);
  EXPECT_GE(a1.logJobs - a0.logJobs, a1.logCommits - a0.logCommits);
}

TEST_F(ClusterTest, NoVoteRollsBackEverythingAndWritesRollbackRecord) {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 50);
  // Credit first, then an overdrawing debit: bank-a votes NO.
  auto o = submit({Op{"bank-b", OpKind::Credit, "bob", 500}, Op{"bank-a", OpKind::Debit, "alice", 500}});
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(o.reason.find("insufficient funds"), std::string::npos) << o.reason;
  ASSERT_TRUE(eventually([&] {
    auto q = query(o.seq);
    return q && q->rollback && q->rollback->completedUs != 0;
  }));
  auto q = query(o.seq);
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::RolledBack);
  EXPECT_EQ(q->interaction.decision, InteractionRecord::Decision::Abort);
  EXPECT_TRUE(q->rollback->pending.empty());
  EXPECT_EQ(q->rollback->confirmed.size(), 2u);
  EXPECT_NE(q->rollback->reason.find("bank-a voted no"), std::string::npos) << q->rollback->reason;
  EXPECT_EQ(account("bank-a", "alice"), bal(100, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(50, 0));
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
}

// A long call deadline, so that a round that waited for every vote would
// show: the NO must end it, not the deadline.
class SlowVoterTest : public ClusterTest {
 protected:
  std::string coordinatorToml() override {
    return "call_timeout_ms = 30000\nretry_initial_ms = 20\nretry_max_ms = 200\n";
  }
};

TEST_F(SlowVoterTest, ANoVoteEndsTheRoundWithoutWaitingForASlowParticipant) {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 50);
  // bank-b is stopped (SIGSTOP): its connection stays open, its prepare is
  // sent and never answered while it is stopped. bank-a votes NO at once.
  ASSERT_EQ(::kill(cluster_->agentPid("bank-b"), SIGSTOP), 0);
  struct Resume {
    pid_t pid;
    ~Resume() { ::kill(pid, SIGCONT); }
  } resume{cluster_->agentPid("bank-b")};
  auto pending = client_->submit({Op{"bank-b", OpKind::Credit, "bob", 500}, Op{"bank-a", OpKind::Debit, "alice", 500}});
  // Bounded well below the 30 s call deadline: with the round waiting for
  // bank-b's vote, this fails at 10 s instead of answering.
  auto answered = pending.then([](SubmitOutcome o) { return kj::Maybe<SubmitOutcome>(kj::mv(o)); })
                      .exclusiveJoin(io_.provider->getTimer().afterDelay(10 * kj::SECONDS).then([]() {
                        return kj::Maybe<SubmitOutcome>(nullptr);
                      }))
                      .wait(io_.waitScope);
  ASSERT_TRUE(answered != nullptr) << "no answer while bank-b was stopped: the NO did not end the prepare round";
  SubmitOutcome o = kj::mv(KJ_ASSERT_NONNULL(answered));
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(o.reason.find("bank-a voted no"), std::string::npos) << o.reason;
  // bank-b answered nothing so far: its branch is still being prepared.
  auto q = query(o.seq);
  ASSERT_TRUE(q.has_value());
  ASSERT_EQ(q->interaction.branches.size(), 2u);
  for (auto& b : q->interaction.branches) {
    if (b.participant == "bank-b") {
      EXPECT_EQ(b.state, BS::Preparing) << b.reason;
    }
  }
  // Once bank-b runs again the rollback reaches it and nothing is held.
  ::kill(cluster_->agentPid("bank-b"), SIGCONT);
  ASSERT_TRUE(eventually([&] {
    auto r = query(o.seq);
    return r && r->rollback && r->rollback->completedUs != 0;
  }, std::chrono::seconds(40)));
  EXPECT_EQ(account("bank-a", "alice"), bal(100, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(50, 0));
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
}

TEST_F(ClusterTest, UnknownAccountIsRefusedWithoutEffect) {
  open("bank-a", "alice", 100);
  auto o = submit(transferOps("bank-a:alice", "bank-b:nobody", 10));
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(o.reason.find("unknown account nobody"), std::string::npos) << o.reason;
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice").second == 0; }));
  EXPECT_EQ(account("bank-a", "alice").first, 100);
  EXPECT_EQ(account("bank-b", "nobody").first, -1);
}

TEST_F(ClusterTest, BadInputIsInvalidAndWritesNothing) {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  // The opens' final records are written after their answers: let them land.
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));
  auto before = client_->info().wait(io_.waitScope);
  struct Case {
    std::vector<Op> ops;
    std::string expect;
  };
  std::vector<Op> huge;
  for (int i = 0; i < 300; ++i) huge.push_back(Op{"bank-a", OpKind::ReadBalance, "alice", 0});
  Op freeSql = Op::statement("bank-a", "debit");
  freeSql.sql = "DELETE FROM accounts";  // as clients sent it before statements were declared
  std::vector<Case> cases = {
      {{}, "no operations"},
      {transferOps("bank-x:alice", "bank-b:bob", 1), "unknown participant 'bank-x'"},
      {transferOps("bank-a:alice", "bank-b:bob", 0), "must be positive"},
      {transferOps("bank-a:alice", "bank-b:bob", -5), "must be positive"},
      {transferOps("bank-a:alice", "bank-b:bob", std::int64_t(1) << 62), "exceeds the limit"},
      {{Op{"bank-a", OpKind::Debit, "", 5}}, "account name is empty"},
      {{Op{"bank-a", OpKind::Debit, std::string(200, 'x'), 5}}, "too long"},
      {{Op{"bank-a", OpKind::OpenAccount, "carol", -1}}, "must not be negative"},
      {huge, "limit is 256"},
      // kind sql: what needs no agent's declaration is checked here already
      {{freeSql}, "free SQL text is not accepted: name a statement declared in the agent's config"},
      {{Op::statement("bank-a", "")}, "statement name '' is missing or invalid"},
      {{Op::statement("bank-a", "drop table")}, "statement name 'drop table' is missing or invalid"},
      {{Op::statement("bank-a", std::string(65, 's'))}, "is missing or invalid"},
      {{Op::statement("bank-a", "debit", std::vector<SqlValue>(257, SqlValue::ofInt(1)))},
       "more than 256 SQL parameters; the limit is 256"},
      {{Op::statement("bank-a", "debit", {SqlValue::ofInt(1), SqlValue::ofText(std::string(64 * 1024 + 1, 'x'))})},
       "SQL parameter $2 is 65537 bytes long; the limit is 65536"},
      {{Op::statement("bank-a", "debit", {}, -2)}, "expected row count must be -1 (any) or >= 0"},
  };
  for (auto& c : cases) {
    auto o = submit(c.ops);
    EXPECT_EQ(o.outcome, ClientOutcome::Invalid) << c.expect;
    EXPECT_EQ(o.seq, 0u) << c.expect;
    EXPECT_NE(o.reason.find(c.expect), std::string::npos) << "got: " << o.reason;
  }
  auto after = client_->info().wait(io_.waitScope);
  EXPECT_EQ(after.committed, before.committed);
  EXPECT_EQ(after.rolledBack, before.rolledBack);
  EXPECT_EQ(after.unfinished, 0u);
  EXPECT_EQ(account("bank-a", "alice"), bal(100, 0));
  EXPECT_EQ(inspect("bank-a").accounts.size(), 1u);
}

TEST_F(ClusterTest, QueryUnknownSeqIsNotFound) {
  EXPECT_FALSE(query(123456789).has_value());
}

TEST_F(ClusterTest, OnePhaseCommitAndReadBalance) {
  open("bank-a", "alice", 10);
  auto o = submit({Op{"bank-a", OpKind::Credit, "alice", 5}, Op{"bank-a", OpKind::ReadBalance, "alice", 0}});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_EQ(o.results.size(), 2u);
  EXPECT_EQ(o.results[1].balance, 10);  // reads see committed state: the credit lands at commit
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.state == InteractionRecord::State::Committed; }));
  EXPECT_TRUE(query(o.seq)->interaction.onePhase);
  EXPECT_EQ(query(o.seq)->interaction.phase2Attempts, 0u);  // the participant committed it: no phase 2
  auto r = submit({Op{"bank-a", OpKind::ReadBalance, "alice", 0}});
  ASSERT_EQ(r.outcome, ClientOutcome::Committed);
  EXPECT_EQ(r.results[0].balance, 15);
  auto bad = submit({Op{"bank-a", OpKind::Debit, "alice", 16}});
  EXPECT_EQ(bad.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(bad.reason.find("insufficient funds"), std::string::npos) << bad.reason;
  EXPECT_EQ(account("bank-a", "alice").first, 15);
}

TEST_F(ClusterTest, InteractiveTransactionCommitsAndDropRollsBack) {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  auto& cap = client_->capability();
  {
    auto b = cap.beginRequest();
    b.setDeadlineMs(5000);
    auto txn = b.send().wait(io_.waitScope).getTxn();
    auto ex = txn.executeRequest();
    auto ops = transferOps("bank-a:alice", "bank-b:bob", 40);
    ops.push_back(Op{"bank-a", OpKind::ReadBalance, "alice", 0});
    auto l = ex.initOperations(ops.size());
    for (unsigned i = 0; i < ops.size(); ++i) {
      l[i].setParticipant(ops[i].participant);
      l[i].setKind(static_cast<wire::LedgerOpKind>(ops[i].kind));
      l[i].setAccount(ops[i].account);
      l[i].setAmount(ops[i].amount);
    }
    auto exr = readSubmitResult(ex.send().wait(io_.waitScope).getResult(), ops.size());
    ASSERT_EQ(exr.outcome, ClientOutcome::Committed) << exr.reason;
    ASSERT_EQ(exr.results.size(), 3u);
    EXPECT_EQ(exr.results[2].available, 60);  // the hold is visible inside the interaction
    auto c = readSubmitResult(txn.commitRequest().send().wait(io_.waitScope).getResult(), 0);
    ASSERT_EQ(c.outcome, ClientOutcome::Committed) << c.reason;
  }
  EXPECT_TRUE(eventually([&] { return inspect("bank-a").prepared == 0 && inspect("bank-b").prepared == 0; }));
  EXPECT_EQ(account("bank-b", "bob"), bal(40, 0));
  EXPECT_EQ(account("bank-a", "alice"), bal(60, 0));
  {
    auto b = cap.beginRequest();
    auto txn = b.send().wait(io_.waitScope).getTxn();
    auto seq = txn.seqRequest().send().wait(io_.waitScope).getSeq();
    auto ex = txn.executeRequest();
    auto l = ex.initOperations(1);
    l[0].setParticipant("bank-a");
    l[0].setKind(wire::LedgerOpKind::DEBIT);
    l[0].setAccount("alice");
    l[0].setAmount(50);
    ASSERT_EQ(readSubmitResult(ex.send().wait(io_.waitScope).getResult(), 1).outcome, ClientOutcome::Committed);
    EXPECT_EQ(account("bank-a", "alice").second, 50);  // held while open
    txn = nullptr;  // dropped without commit: rolled back
    ASSERT_TRUE(eventually([&] {
      auto q = query(seq);
      return q && q->interaction.state == InteractionRecord::State::RolledBack;
    }));
    EXPECT_NE(query(seq)->rollback->reason.find("dropped"), std::string::npos);
  }
  EXPECT_EQ(account("bank-a", "alice"), bal(60, 0));
}

TEST_F(ClusterTest, BatchedSubmitsAreIndependentInteractionsWithTheirOwnOutcomes) {
  // The client batches what it submits in one turn into submitBatch
  // messages, and the coordinator batches the prepares and commits of those
  // interactions per participant: each must still end exactly as if alone.
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  client_->enableBatching(8, 1);  // small batches: 40 interactions take several messages
  kj::Vector<kj::Promise<SubmitOutcome>> outs;
  for (int i = 0; i < 40; ++i) {
    if (i == 5) {
      outs.add(client_->submit(transferOps("bank-x:alice", "bank-b:bob", 1)));  // bad input
    } else if (i % 10 == 3) {
      outs.add(client_->submit(transferOps("bank-a:alice", "bank-b:bob", 100000)));  // overdraws: NO vote
    } else {
      outs.add(client_->submit(transferOps("bank-a:alice", "bank-b:bob", 10)));
    }
  }
  auto results = kj::joinPromises(outs.releaseAsArray()).wait(io_.waitScope);
  ASSERT_EQ(results.size(), 40u);
  int committed = 0;
  std::set<std::uint64_t> seqs;
  for (int i = 0; i < 40; ++i) {
    const auto& o = results[i];
    if (i == 5) {
      EXPECT_EQ(o.outcome, ClientOutcome::Invalid) << i;
      EXPECT_NE(o.reason.find("unknown participant 'bank-x'"), std::string::npos) << o.reason;
      EXPECT_EQ(o.seq, 0u);
      continue;
    }
    seqs.insert(o.seq);
    if (i % 10 == 3) {
      EXPECT_EQ(o.outcome, ClientOutcome::RolledBack) << i;
      EXPECT_NE(o.reason.find("insufficient funds"), std::string::npos) << o.reason;
    } else {
      EXPECT_EQ(o.outcome, ClientOutcome::Committed) << i << ": " << o.reason;
      ++committed;
    }
  }
  EXPECT_EQ(seqs.size(), 39u);  // every interaction got its own seq
  EXPECT_EQ(committed, 35);
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));
  EXPECT_EQ(account("bank-a", "alice"), bal(1000 - 35 * 10, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(35 * 10, 0));
  EXPECT_EQ(inspect("bank-a").prepared, 0u);
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
  for (std::uint64_t seq : seqs) {
    auto q = query(seq);
    ASSERT_TRUE(q.has_value()) << seq;
    EXPECT_TRUE(q->interaction.finished()) << seq;
  }
}

TEST_F(ClusterTest, AnOversizedSubmitBatchIsRefusedWholeWithAClearReason) {
  // More items than one submitBatch may carry: every item is answered
  // `invalid` with the limit, no seq is used and nothing is written.
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));
  auto before = client_->info().wait(io_.waitScope);
  auto req = client_->capability().submitBatchRequest();
  auto items = req.initItems(1025);
  auto ops = transferOps("bank-a:alice", "bank-b:bob", 1);
  for (auto item : items) fillOps(item.initOperations(ops.size()), ops);
  auto resp = req.send().wait(io_.waitScope);
  ASSERT_EQ(resp.getResults().size(), 1025u);
  for (auto r : resp.getResults()) {
    EXPECT_EQ(r.getOutcome(), wire::Outcome::INVALID);
    EXPECT_EQ(r.getSeq(), 0u);
    EXPECT_NE(std::string(r.getReason().cStr()).find("at most 1024 interactions, got 1025"), std::string::npos)
        << r.getReason().cStr();
  }
  auto after = client_->info().wait(io_.waitScope);
  EXPECT_EQ(after.committed, before.committed);
  EXPECT_EQ(after.rolledBack, before.rolledBack);
  EXPECT_EQ(account("bank-a", "alice"), bal(100, 0));
}

TEST_F(ClusterTest, AFaultInOnePrepareOfABatchFailsThatBranchOnly) {
  // agent.after_prepared_durable=1*error: the first prepare bank-b makes
  // raises after its PREPARED record is durable. Sent in one prepareBatch
  // with others, only that interaction is rolled back.
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b", "agent.after_prepared_durable=1*error");
  reconnect();
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  client_->enableBatching(64, 1);
  kj::Vector<kj::Promise<SubmitOutcome>> outs;
  for (int i = 0; i < 10; ++i) outs.add(client_->submit(transferOps("bank-a:alice", "bank-b:bob", 10)));
  auto results = kj::joinPromises(outs.releaseAsArray()).wait(io_.waitScope);
  int committed = 0, rolledBack = 0;
  for (auto& o : results) {
    if (o.outcome == ClientOutcome::Committed) ++committed;
    if (o.outcome == ClientOutcome::RolledBack) {
      ++rolledBack;
      EXPECT_NE(o.reason.find("bank-b failed"), std::string::npos) << o.reason;
    }
  }
  EXPECT_EQ(rolledBack, 1);
  EXPECT_EQ(committed, 9);
  // The failed branch was PREPARED on bank-b: the rollback driver releases it.
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));
  EXPECT_EQ(account("bank-a", "alice"), bal(910, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(90, 0));
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
}

TEST_F(ClusterTest, PhaseTwoNamingXidsOfTwoCoordinatorNodesIsRefusedWhole) {
  // The fence is one node's epoch: a batch mixing nodes would slip past it.
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(990, 0); }));  // phase 2 follows the answer
  auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-a")).wait(io_.waitScope);
  for (bool commit : {true, false}) {
    auto send = [&](auto req) {
      req.setEpoch(1000);
      auto l = req.initXids(2);
      l[0].setSeq(o.seq);
      l[1].setSeq(makeSeq(seqNode(o.seq) + 1, 5));
      return req.send().ignoreResult();
    };
    auto call = commit ? send(agent->capability().commitRequest()) : send(agent->capability().rollbackRequest());
    try {
      call.wait(io_.waitScope);
      ADD_FAILURE() << (commit ? "commit" : "rollback") << " of a mixed batch was accepted";
    } catch (const kj::Exception& e) {
      EXPECT_NE(std::string(e.getDescription().cStr()).find("one coordinator node"), std::string::npos)
          << e.getDescription().cStr();
    }
  }
  // Nothing changed, and the coordinator's own epoch is still accepted.
  EXPECT_EQ(account("bank-a", "alice"), bal(990, 0));
  auto again = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
  EXPECT_EQ(again.outcome, ClientOutcome::Committed) << again.reason;
}

}  // namespace
}  // namespace keel::test
