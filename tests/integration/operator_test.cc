// Fencing, agent-side resolution, operator control (retry, resolve, audit,
// forget, stats) and storage faults, with real processes.

#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

// Coordinator drivers (and probes) that wait a minute: whatever settles
// work sooner is the agent's resolver or the operator.
class SlowDriverTest : public ClusterTest {
 protected:
  std::string coordinatorToml() override {
    return kSlowDriversToml;
  }
  ClusterOptions clusterOptions() override {
    auto o = ClusterTest::clusterOptions();
    o.agentInDoubtQueryMs = inDoubtMs;
    return o;
  }
  std::uint32_t inDoubtMs = 0;  // agents do not ask unless a test says so
  std::string ctl() { return binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " "; }
};

TEST_F(ClusterTest, AgentFencesAStaleCoordinatorEpoch) {
  open("bank-a", "alice", 100);  // bank-a has now seen epoch 1
  cluster_->stopCoordinator();
  cluster_->startCoordinator();  // epoch 2; its sweep reaches bank-a
  reconnect();
  ASSERT_EQ(client_->info().wait(io_.waitScope).epoch, 2u);
  open("bank-a", "carol", 5);
  auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-a")).wait(io_.waitScope);
  auto req = agent->capability().prepareRequest();
  req.setEpoch(1);
  req.getXid().setSeq(makeSeq(1, 999999));
  req.getXid().setBranch(1);
  auto op = req.initOperations(1)[0];
  op.setKind(wire::LedgerOpKind::DEBIT);
  op.setAccount("alice");
  op.setAmount(10);
  try {
    req.send().wait(io_.waitScope);
    ADD_FAILURE() << "a call with a stale epoch was accepted";
  } catch (const kj::Exception& e) {
    EXPECT_NE(std::string(e.getDescription().cStr()).find("stale epoch 1"), std::string::npos)
        << e.getDescription().cStr();
  }
  EXPECT_EQ(account("bank-a", "alice"), bal(100, 0));
  // The fence survives an agent restart.
  cluster_->stopAgent("bank-a");
  cluster_->startAgent("bank-a");
  agent = AgentClient::connect(io_, cluster_->agentAddress("bank-a")).wait(io_.waitScope);
  auto rb = agent->capability().rollbackRequest();
  rb.setEpoch(1);
  auto x = rb.initXids(1)[0];
  x.setSeq(makeSeq(1, 999999));
  x.setBranch(1);
  EXPECT_ANY_THROW(rb.send().wait(io_.waitScope));
}

// A call the agent refuses changes nothing: a commit whose hostTxids are
// neither none nor one per xid, sent with a newer epoch, does not fence
// the coordinator's current one.
TEST_F(ClusterTest, ARefusedCommitFencesNoEpoch) {
  open("bank-a", "alice", 100);  // bank-a has now seen epoch 1
  auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-a")).wait(io_.waitScope);
  auto req = agent->capability().commitRequest();
  req.setEpoch(7);
  auto x = req.initXids(1)[0];
  x.setSeq(makeSeq(1, 999999));
  x.setBranch(1);
  auto t = req.initHostTxids(2);
  t.set(0, 11);
  t.set(1, 12);
  try {
    req.send().wait(io_.waitScope);
    ADD_FAILURE() << "a commit with two txids for one xid was accepted";
  } catch (const kj::Exception& e) {
    EXPECT_NE(std::string(e.getDescription().cStr()).find("one per xid; got 2 for 1"), std::string::npos)
        << e.getDescription().cStr();
  }
  // Epoch 1 still works: the refused call fenced nothing.
  open("bank-a", "carol", 5);
  EXPECT_EQ(account("bank-a", "carol"), bal(5, 0));
}

class AgentAsksTest : public SlowDriverTest {
 protected:
  void SetUp() override {
    inDoubtMs = 200;
    SlowDriverTest::SetUp();
  }
};

TEST_F(AgentAsksTest, PreparedBranchAsksTheCoordinatorAndCommits) {
  auto seq = stuckCommit();
  // The coordinator's driver sleeps 60 s; bank-b asks after 200 ms instead.
  ASSERT_TRUE(eventually([&] { return account("bank-b", "bob").first == 100; }, std::chrono::seconds(5)));
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
  // The agent's line, read until it is there (once, in a full ctest run on
  // a loaded machine, the log read back empty right after the commit).
  std::string text;
  EXPECT_TRUE(eventually(
      [&] {
        std::ifstream log(cluster_->agentLog("bank-b"));
        std::stringstream in;
        in << log.rdbuf();
        text = in.str();
        return text.find("coordinator says committed") != std::string::npos;
      },
      std::chrono::seconds(5)))
      << cluster_->agentLog("bank-b") << " (" << text.size() << " bytes):\n"
      << text;
  // The coordinator's record finishes once its driver hears the (idempotent) answer.
  EXPECT_EQ(run(ctl() + "retry " + seqText(seq)).exitCode, 0);
  EXPECT_TRUE(eventually([&] { return query(seq)->interaction.state == InteractionRecord::State::Committed; }));
}

TEST_F(SlowDriverTest, RetryNowSettlesWithoutWaitingForTheBackoff) {
  auto seq = stuckCommit();
  auto l = run(ctl() + "list");
  EXPECT_NE(l.output.find("  " + seqText(seq) + "  committing"), std::string::npos) << l.output;
  EXPECT_NE(l.output.find("waiting on: bank-b"), std::string::npos) << l.output;
  auto s = run(ctl() + "stats --json");
  EXPECT_NE(s.output.find("\"in_doubt\":1"), std::string::npos) << s.output;
  auto b = run(binDir() + "/keelctl branches --agent " + cluster_->agentAddress("bank-b"));
  EXPECT_NE(b.output.find("bank-b: 1 unfinished branch(es)"), std::string::npos) << b.output;
  EXPECT_NE(b.output.find("  " + seqText(seq) + ".2  prepared"), std::string::npos) << b.output;
  auto r = run(ctl() + "retry");
  EXPECT_NE(r.output.find("woke 1"), std::string::npos) << r.output;
  ASSERT_TRUE(eventually([&] { return query(seq)->interaction.state == InteractionRecord::State::Committed; },
                         std::chrono::seconds(5)));
  EXPECT_EQ(account("bank-b", "bob"), bal(100, 0));
  auto q = query(seq);
  EXPECT_GE(q->interaction.phase2Attempts, 2u);
  EXPECT_NE(q->interaction.failedUs, 0u);
  // The final record is written lazily after query already shows it committed.
  EXPECT_TRUE(eventually([&] {
    s = run(ctl() + "stats --json");
    return s.output.find("\"retried_commits\":1") != std::string::npos &&
           s.output.find("\"in_doubt\":0") != std::string::npos;
  })) << s.output;
}

// Long backoff, quick probe: the probe alone settles work when the host is back.
class ProbeTest : public SlowDriverTest {
 protected:
  std::string coordinatorToml() override {
    return "call_timeout_ms = 1000\nretry_initial_ms = 60000\nretry_max_ms = 60000\nprobe_ms = 50\n";
  }
};

TEST_F(ProbeTest, ParticipantAnsweringAgainWakesItsDrivers) {
  auto seq = stuckCommit();
  ASSERT_TRUE(eventually([&] { return query(seq)->interaction.state == InteractionRecord::State::Committed; },
                         std::chrono::seconds(5)));
  EXPECT_EQ(account("bank-b", "bob"), bal(100, 0));
  std::ifstream log(cluster_->coordinatorLog());
  std::stringstream text;
  text << log.rdbuf();
  // Each change of the participant's health is logged once, with what waits on it.
  EXPECT_NE(text.str().find("bank-b (" + cluster_->agentAddress("bank-b") + ") stopped answering"), std::string::npos)
      << text.str();
  EXPECT_NE(text.str().find("1 unfinished interaction(s) wait on it"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("bank-b answers again after"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("woke 1 driver(s)"), std::string::npos) << text.str();
}

TEST_F(SlowDriverTest, ResolveRefusesToContradictADurableCommitUnlessOverridden) {
  auto seq = stuckCommit();
  // SEQ as NODE:COUNTER here, as the 64-bit number for the forced abort below.
  auto refused = run(ctl() + "resolve " + seqText(seq) + " --abort --who tester --why 'stuck'");
  EXPECT_EQ(refused.exitCode, 1);
  EXPECT_NE(refused.output.find("the COMMIT decision of " + seqText(seq) + " is durable"), std::string::npos)
      << refused.output;
  auto noWhy = run(ctl() + "resolve " + seqText(seq) + " --commit");
  EXPECT_NE(noWhy.exitCode, 0);
  EXPECT_NE(noWhy.output.find("--why"), std::string::npos) << noWhy.output;
  auto audit = run(ctl() + "audit");
  EXPECT_EQ(audit.output, "");  // refusals leave no audit entry
  auto forced = run(ctl() + "resolve " + std::to_string(seq) +
                    " --abort --override --who tester --why 'host reconciled by hand'");
  EXPECT_EQ(forced.exitCode, 0) << forced.output;
  ASSERT_TRUE(eventually([&] {
    auto q = query(seq);
    return q && q->interaction.finished();
  }));
  audit = run(ctl() + "audit");
  EXPECT_NE(audit.output.find("\"action\":\"force-abort\""), std::string::npos) << audit.output;
  EXPECT_NE(audit.output.find("\"who\":\"tester\""), std::string::npos) << audit.output;
  EXPECT_NE(audit.output.find("\"seq\":" + std::to_string(seq) + ",\"seq_text\":\"" + seqText(seq) + "\""),
            std::string::npos)
      << audit.output;
  EXPECT_NE(audit.output.find("host reconciled by hand"), std::string::npos) << audit.output;
  EXPECT_NE(audit.output.find("committing, decision commit"), std::string::npos) << audit.output;
  // bank-a had committed already: forcing abort is heuristic, and the
  // interaction ends heuristic-mixed, never "rolled back".
  auto q = query(seq);
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::HeuristicMixed) << stateName(q->interaction.state);
  EXPECT_NE(q->interaction.error.find("bank-a committed"), std::string::npos) << q->interaction.error;
  EXPECT_NE(q->interaction.error.find("bank-b rolled-back"), std::string::npos) << q->interaction.error;
  auto st = run(ctl() + "stats --json");
  EXPECT_NE(st.output.find("\"heuristic\":1"), std::string::npos) << st.output;
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
}

TEST_F(SlowDriverTest, ForcedCommitOfABranchThatNeverPreparedEndsHeuristicUnknown) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  cluster_->stopAgent("bank-b");  // its prepare never arrives
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 100));
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  cluster_->startAgent("bank-b");  // knows nothing of the branch; the rollback driver sleeps a minute
  auto forced = run(ctl() + "resolve " + std::to_string(o.seq) +
                    " --commit --override --who tester --why 'told to by the back office'");
  EXPECT_EQ(forced.exitCode, 0) << forced.output;
  std::optional<QueryResult> q;
  ASSERT_TRUE(eventually([&] {
    q = query(o.seq);
    return q && q->interaction.finished();
  }));
  // bank-a had rolled back (commit refused: conflict), bank-b never saw the
  // branch (commit answered unknown): told as it is.
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::HeuristicUnknown) << stateName(q->interaction.state);
  for (auto& b : q->interaction.branches) {
    if (b.participant == "bank-b") {
      EXPECT_EQ(b.state, InteractionRecord::BranchState::Unknown);
      EXPECT_NE(b.reason.find("no record of the branch"), std::string::npos) << b.reason;
    } else {
      EXPECT_EQ(b.state, InteractionRecord::BranchState::RolledBack);
    }
  }
  auto shown = run(ctl() + "query " + seqText(o.seq));
  EXPECT_NE(shown.output.find("interaction " + seqText(o.seq) + "\n"), std::string::npos) << shown.output;
  EXPECT_NE(shown.output.find("heuristic-unknown"), std::string::npos) << shown.output;
  auto st = run(ctl() + "stats --json");
  EXPECT_NE(st.output.find("\"heuristic\":1"), std::string::npos) << st.output;
  EXPECT_EQ(client_->info().wait(io_.waitScope).unfinished, 0u);
  EXPECT_EQ(client_->info().wait(io_.waitScope).heuristic, 1u);
  EXPECT_EQ(account("bank-a", "alice"), bal(1000, 0));  // nothing moved: reconciliation is the operator's
  // It waits for an operator in the heuristic list until marked reconciled (audited).
  auto listed = client_->listHeuristic(100).wait(io_.waitScope);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].seq, o.seq);
  auto markReconciled = [&] {
    auto rec = client_->capability().reconciledRequest();
    rec.setSeq(o.seq);
    rec.setWho("tester");
    rec.setWhy("posted the missing half at bank-b by hand");
    auto r = rec.send().wait(io_.waitScope);
    return std::make_pair(r.getDone(), std::string(r.getReason().cStr()));
  };
  auto done = markReconciled();
  EXPECT_TRUE(done.first) << done.second;
  EXPECT_TRUE(client_->listHeuristic(100).wait(io_.waitScope).empty());
  auto again = markReconciled();
  EXPECT_FALSE(again.first);
  EXPECT_NE(again.second.find("already"), std::string::npos) << again.second;
  auto audit = run(ctl() + "audit");
  EXPECT_NE(audit.output.find("\"action\":\"reconciled\""), std::string::npos) << audit.output;
  EXPECT_NE(audit.output.find("posted the missing half"), std::string::npos) << audit.output;
}

// forget drops a finished branch's record only once no late prepare of it
// can be accepted: refused while its coordinator's incarnation lives (and
// has not released it), taken once a newer epoch is fenced.
TEST_F(ClusterTest, ForgetDropsOnlyFinishedBranchesNoPrepareCanReach) {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed);
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished(); }));
  std::string ctl = binDir() + "/keelctl forget --agent " + cluster_->agentAddress("bank-a") + " ";
  auto before = inspect("bank-a").committed;
  auto refused = run(ctl + seqText(o.seq) + ".1");
  EXPECT_EQ(refused.exitCode, 1) << refused.output;
  EXPECT_NE(refused.output.find("a finished branch, kept while a late prepare of it may still arrive"),
            std::string::npos)
      << refused.output;
  EXPECT_EQ(inspect("bank-a").committed, before);
  // A new incarnation of the coordinator: the old one's calls are fenced off.
  cluster_->stopCoordinator();
  cluster_->startCoordinator();
  reconnect();
  // Durable at bank-a with its first branch of the new incarnation.
  ASSERT_EQ(submit(transferOps("bank-a:alice", "bank-b:bob", 1)).outcome, ClientOutcome::Committed);
  auto r = run(ctl + seqText(o.seq) + ".1");
  EXPECT_EQ(r.exitCode, 0) << r.output;
  EXPECT_NE(r.output.find("forgotten 1"), std::string::npos) << r.output;
  EXPECT_EQ(inspect("bank-a").committed, before);  // one more (the new transfer), one less
  EXPECT_EQ(account("bank-a", "alice"), bal(89, 0));  // effects stay; only the record goes
  EXPECT_EQ(run(ctl + "nonsense").exitCode, 2);
}

// Transfers 64 at a time until one is not committed; returns how many were
// committed and the first answer that was not.
std::pair<int, SubmitOutcome> fillUpWith(kj::AsyncIoContext& io, KeelClient& client) {
  int committed = 0;
  std::optional<SubmitOutcome> refused;
  for (int round = 0; round < 500 && !refused; ++round) {
    kj::Vector<kj::Promise<SubmitOutcome>> batch;
    for (int i = 0; i < 64; ++i) batch.add(client.submit(transferOps("bank-a:alice", "bank-b:bob", 1)));
    for (auto& o : kj::joinPromises(batch.releaseAsArray()).wait(io.waitScope)) {
      if (o.outcome == ClientOutcome::Committed) {
        ++committed;
      } else if (!refused) {
        refused = o;
      }
    }
  }
  return {committed, refused.value_or(SubmitOutcome{})};
}

class TinyWalTest : public ClusterTest {
 protected:
  std::pair<int, SubmitOutcome> fillUp() { return fillUpWith(io_, *client_); }
  std::string coordinatorToml() override { return ClusterTest::coordinatorToml() + "map_size_mb = 1\n"; }
  void refusesNewAndFinishesInFlight();
};

TEST_F(TinyWalTest, FullWalRefusesNewInteractionsAndFinishesInFlight) { refusesNewAndFinishesInFlight(); }

void TinyWalTest::refusesNewAndFinishesInFlight() {
  open("bank-a", "alice", 1'000'000);
  open("bank-b", "bob", 0);
  auto [committed, last] = fillUp();
  ASSERT_EQ(last.outcome, ClientOutcome::Unavailable) << last.reason;
  EXPECT_NE(last.reason.find("map_size_mb = 1"), std::string::npos) << last.reason;
  EXPECT_EQ(last.seq, 0u);
  EXPECT_GT(committed, 100);
  // Everything answered committed is committed on both hosts.
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));
  EXPECT_EQ(account("bank-b", "bob"), bal(committed, 0));
  EXPECT_EQ(account("bank-a", "alice"), bal(1'000'000 - committed, 0));
}

// The same full WAL with a short retention: once the archiver has moved
// the finished interactions out, the WAL takes new work again, although
// its high-water mark stays past the refusal mark (LMDB reuses the pages
// freed below it: GroupCommitLog::roomRefusal). Before, one burst to 90%
// refused every new interaction until a restart with a larger map_size_mb.
// The retention is long enough for the burst to reach 90% first (in redo
// mode the log turns direct at 75% and refuses for 3 s before that).
class TinyWalShortRetentionTest : public TinyWalTest {
 protected:
  std::string coordinatorToml() override { return TinyWalTest::coordinatorToml() + "hot_retention_s = 8\n"; }
};

// The "NN% full" a room refusal reports (-1 if it does not).
int percentFull(const std::string& reason) {
  auto at = reason.find("% full (map_size_mb");
  if (at == std::string::npos) return -1;
  auto from = reason.find_last_not_of("0123456789", at - 1);
  from = from == std::string::npos ? 0 : from + 1;
  return from < at ? std::stoi(reason.substr(from, at - from)) : -1;
}

TEST_F(TinyWalShortRetentionTest, AFullWalTakesNewWorkAgainOnceTheArchiverMovedItsRecordsOut) {
  open("bank-a", "alice", 1'000'000);
  open("bank-b", "bob", 0);
  // The burst, until a refusal says the map is 90% full (a refusal while
  // the redo log turns direct says less: the burst goes on after it).
  int committed = 0;
  SubmitOutcome last;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (percentFull(last.reason) < 90 && std::chrono::steady_clock::now() < until) {
    auto [n, refused] = fillUp();
    committed += n;
    last = refused;
    ASSERT_EQ(last.outcome, ClientOutcome::Unavailable) << last.reason;
    if (percentFull(last.reason) < 90) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_GE(percentFull(last.reason), 90) << "the burst never filled the WAL to 90%: " << last.reason;
  EXPECT_NE(last.reason.find("% of it in use: new work is refused until less than 80% is in use"), std::string::npos)
      << last.reason;
  EXPECT_EQ(last.seq, 0u);
  ASSERT_GT(committed, 100);
  // The archiver moves them out hot_retention_s after they were made.
  int more = 0;
  SubmitOutcome o;
  EXPECT_TRUE(eventually(
      [&] {
        o = submit(transferOps("bank-a:alice", "bank-b:bob", 1));
        if (o.outcome == ClientOutcome::Committed) ++more;
        return more > 0;
      },
      std::chrono::seconds(40)))
      << "still refused 40 s after the burst: " << o.reason;
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));
  EXPECT_EQ(account("bank-b", "bob"), bal(committed + more, 0));
  EXPECT_EQ(account("bank-a", "alice"), bal(1'000'000 - committed - more, 0));
}

// Without the redo log (redo = false; redo mode is the default): the same.
class NoRedoTinyWalTest : public TinyWalTest {
 protected:
  std::string coordinatorToml() override { return TinyWalTest::coordinatorToml() + "redo = false\n"; }
};

TEST_F(NoRedoTinyWalTest, FullWalRefusesNewInteractionsAndFinishesInFlight) { refusesNewAndFinishesInFlight(); }

class TinyAgentTest : public ClusterTest {
 protected:
  std::pair<int, SubmitOutcome> fillUp() { return fillUpWith(io_, *client_); }
  ClusterOptions clusterOptions() override {
    auto o = ClusterTest::clusterOptions();
    o.agentExtraArgs = {"--map-size-mb", "1"};
    return o;
  }
  void votesNoAndKeepsItsBooksRight();
};

TEST_F(TinyAgentTest, FullAgentVotesNoAndKeepsItsBooksRight) { votesNoAndKeepsItsBooksRight(); }

void TinyAgentTest::votesNoAndKeepsItsBooksRight() {
  open("bank-a", "alice", 1'000'000);
  open("bank-b", "bob", 0);
  auto [committed, last] = fillUp();
  ASSERT_EQ(last.outcome, ClientOutcome::RolledBack) << last.reason;
  EXPECT_NE(last.reason.find("% full (map_size_mb = 1)"), std::string::npos) << last.reason;
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));
  EXPECT_EQ(account("bank-b", "bob"), bal(committed, 0));
  EXPECT_EQ(account("bank-a", "alice"), bal(1'000'000 - committed, 0));
}

// TinyAgentTest runs in redo mode, the default (docs/operations.md, "Redo
// log"): between checkpoints the agent's long write transaction cannot
// reuse the pages it frees, so the map fills in steps; near full the log
// goes direct, a checkpoint meeting a full map commits its groups one by
// one, and the full agent still votes no with its books right. Without the
// redo log (--no-redo) the same.
class NoRedoTinyAgentTest : public TinyAgentTest {
 protected:
  ClusterOptions clusterOptions() override {
    auto o = TinyAgentTest::clusterOptions();
    o.agentExtraArgs.push_back("--no-redo");
    return o;
  }
};

TEST_F(NoRedoTinyAgentTest, FullAgentVotesNoAndKeepsItsBooksRight) { votesNoAndKeepsItsBooksRight(); }

TEST_F(ClusterTest, StatsCountRollbacksWithTheirWindow) {
  open("bank-a", "alice", 10);
  open("bank-b", "bob", 0);
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 50));
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack);
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished(); }));
  // The final record (which carries the window) is written lazily: it rides
  // with the next group commit or lands within lazy_delay.
  RunResult s;
  EXPECT_TRUE(eventually([&] {
    s = run(binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " stats");
    return s.output.find("over 1 failed interactions (1 rolled back, 0 committed after retries, 0 heuristic)") !=
           std::string::npos;
  })) << s.output;
  auto q = query(o.seq);
  EXPECT_GE(q->interaction.completedUs, q->interaction.failedUs);
}

}  // namespace
}  // namespace keel::test
