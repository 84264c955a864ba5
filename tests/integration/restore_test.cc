// Restoring a coordinator from a backup (keel-coordinator --restore-from,
// coordinator/restore.h) after its data directory is lost: no seq is
// issued twice, no acknowledged commit is undone, work the backup does
// not decide is decided by what the participants hold (in doubt when
// they hold only prepared branches), and request ids that may have run
// before are refused.

#include <filesystem>
#include <fstream>
#include <thread>

#include "common/wire.h"
#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

namespace fs = std::filesystem;

class RestoreTest : public ClusterTest {
 protected:
  std::string config() const { return dir_ + "/coordinator.toml"; }
  RunResult restore(const std::string& backup) {
    return run("timeout 60 " + binDir() + "/keel-coordinator --config " + config() + " --restore-from " + backup);
  }
  RunResult keelctl(const std::string& args) {
    return run("timeout 30 " + binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " " + args);
  }
  // Both agents prepare a transfer alice -> bob of `amount` under `seq`,
  // as a coordinator that died right after the votes would leave it.
  void prepareAtBoth(std::uint64_t seq, std::int64_t amount, std::uint64_t epoch) {
    auto prep = [&](const std::string& agent, std::uint16_t branch, Op op) {
      auto c = AgentClient::connect(io_, cluster_->agentAddress(agent)).wait(io_.waitScope);
      auto req = c->capability().prepareRequest();
      req.setEpoch(epoch);
      fillXid(req.initXid(), Xid{seq, branch});
      fillOps(req.initOperations(1), {op});
      auto resp = req.send().wait(io_.waitScope);
      ASSERT_EQ(resp.getVote(), wire::Vote::YES) << resp.getReason().cStr();
    };
    prep("bank-a", 1, Op{"bank-a", OpKind::Debit, "alice", amount});
    prep("bank-b", 2, Op{"bank-b", OpKind::Credit, "bob", amount});
  }
};

TEST_F(RestoreTest, LostWalRestoredFromABackupReissuesNoSeqAndUndoesNoCommit) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  for (int i = 0; i < 10; ++i) ASSERT_EQ(submit(transferOps("bank-a:alice", "bank-b:bob", 1)).outcome, ClientOutcome::Committed);
  std::string backup = dir_ + "/backup";
  auto b = run(binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " backup --to " + backup);
  ASSERT_EQ(b.exitCode, 0) << b.output;

  // After the backup: work the backup never sees.
  std::uint64_t maxSeq = 0;
  for (int i = 0; i < 20; ++i) {
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 1));
    ASSERT_EQ(o.outcome, ClientOutcome::Committed);
    maxSeq = std::max(maxSeq, o.seq);
  }
  SubmitRequest withId;
  withId.ops = transferOps("bank-a:alice", "bank-b:bob", 5);
  withId.requestId = "after-the-backup";
  auto first = client_->submit(withId).wait(io_.waitScope);
  ASSERT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
  maxSeq = std::max(maxSeq, first.seq);
  // A COMMIT answered whose phase 2 had reached only bank-a.
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b", "agent.before_commit_durable=crash");
  auto stuck = submit(transferOps("bank-a:alice", "bank-b:bob", 100));
  ASSERT_EQ(stuck.outcome, ClientOutcome::Committed) << stuck.reason;
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  maxSeq = std::max(maxSeq, stuck.seq);
  auto epoch = client_->info().wait(io_.waitScope).epoch;
  // The disk is lost with the coordinator.
  cluster_->killCoordinator(SIGKILL);
  client_ = nullptr;
  cluster_->startAgent("bank-b");
  // And a transfer it had prepared at both, with no decision yet.
  std::uint64_t doubtful = makeSeq(1, seqCounter(maxSeq) + 3);
  prepareAtBoth(doubtful, 7, epoch);
  fs::remove_all(dir_ + "/coordinator");

  // Bad restores change nothing.
  auto wrong = restore(dir_ + "/bank-a");
  EXPECT_EQ(wrong.exitCode, 2) << wrong.output;
  EXPECT_NE(wrong.output.find("not a backup made by keelctl backup"), std::string::npos) << wrong.output;
  fs::create_directories(dir_ + "/coordinator/something");
  auto full = restore(backup);
  EXPECT_EQ(full.exitCode, 3) << full.output;
  EXPECT_NE(full.output.find("is not empty: a restore never writes over a data directory"), std::string::npos)
      << full.output;
  fs::remove_all(dir_ + "/coordinator/something");
  cluster_->stopAgent("bank-a");
  auto silent = restore(backup);
  EXPECT_EQ(silent.exitCode, 1) << silent.output;
  EXPECT_NE(silent.output.find("participant bank-a"), std::string::npos) << silent.output;
  EXPECT_TRUE(fs::is_empty(dir_ + "/coordinator"));
  cluster_->startAgent("bank-a");

  auto r = restore(backup);
  ASSERT_EQ(r.exitCode, 0) << r.output;
  EXPECT_NE(r.output.find("restore 3/3 build"), std::string::npos) << r.output;
  // The restored coordinator starts while bank-b is down: the prepared-only
  // transfer cannot be decided without bank-b's word, so it is asked again
  // (pending meanwhile, never presumed aborted).
  cluster_->stopAgent("bank-b");
  cluster_->startCoordinator();
  reconnect();
  auto asked = [&] {
    std::ifstream f(cluster_->coordinatorLog());
    std::string log(std::istreambuf_iterator<char>(f), {});
    return log.find("restore: seq " + seqText(doubtful) + ": no participant that answered has decided it; waiting "
                    "for bank-b") != std::string::npos;
  };
  EXPECT_TRUE(eventually(asked)) << "the silent participant was not waited for";
  EXPECT_FALSE(query(doubtful)) << "decided without bank-b";
  {
    auto req = client_->capability().outcomeRequest();
    req.setSeq(doubtful);
    EXPECT_EQ(req.send().wait(io_.waitScope).getOutcome(), wire::DecisionOutcome::PENDING);
  }
  cluster_->startAgent("bank-b");

  // The COMMIT the lost WAL held is found at bank-a and finished at bank-b.
  EXPECT_TRUE(eventually([&] {
    auto q = query(stuck.seq);
    return q && q->interaction.state == InteractionRecord::State::Committed;
  }, std::chrono::seconds(20)));
  auto q = query(stuck.seq);
  ASSERT_TRUE(q);
  EXPECT_NE(q->interaction.error.find("committed at bank-a"), std::string::npos) << q->interaction.error;
  // The prepared-only transfer waits for an operator, holding its money.
  EXPECT_TRUE(eventually([&] {
    auto d = query(doubtful);
    return d && d->interaction.error.find("IN DOUBT") != std::string::npos;
  }));
  {
    auto req = client_->capability().outcomeRequest();
    req.setSeq(doubtful);
    EXPECT_EQ(req.send().wait(io_.waitScope).getOutcome(), wire::DecisionOutcome::PENDING);
  }
  auto listed = keelctl("list");
  EXPECT_NE(listed.output.find(seqText(doubtful)), std::string::npos) << listed.output;
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // past the agents' in-doubt query
  EXPECT_EQ(account("bank-a", "alice").second, 7) << "the prepared debit was settled without an operator";
  auto resolved = keelctl("resolve " + seqText(doubtful) + " --abort --why 'restore test: never answered'");
  EXPECT_EQ(resolved.exitCode, 0) << resolved.output;

  // Money: every acknowledged commit stands (10 + 20 + 5 + 100).
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(135, 0); })) << account("bank-b", "bob").first;
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(865, 0); }));

  // No seq is issued again, and the retried request id is not run again.
  auto next = submit(transferOps("bank-a:alice", "bank-b:bob", 1));
  ASSERT_EQ(next.outcome, ClientOutcome::Committed) << next.reason;
  EXPECT_GT(seqCounter(next.seq), seqCounter(doubtful));
  EXPECT_GT(seqCounter(next.seq), seqCounter(maxSeq));
  auto again = client_->submit(withId).wait(io_.waitScope);
  EXPECT_EQ(again.outcome, ClientOutcome::Invalid) << again.reason;
  EXPECT_NE(again.reason.find("restored from a backup"), std::string::npos) << again.reason;
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(136, 0); }));

  // The restore is in the audit log.
  auto audit = keelctl("audit");
  EXPECT_NE(audit.output.find("restore"), std::string::npos) << audit.output;
}


// bank-b runs inside the coordinator ([participants] bank-b =
// "embedded:FILE"): the restore starts it in its own process and asks it
// there, and the restored coordinator then runs it as before.
class EmbeddedRestoreTest : public RestoreTest {
 protected:
  std::set<std::string> embeddedAgents() const override { return {"bank-b"}; }
};

TEST_F(EmbeddedRestoreTest, AnEmbeddedParticipantIsAskedInTheRestoringProcess) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  for (int i = 0; i < 5; ++i) ASSERT_EQ(submit(transferOps("bank-a:alice", "bank-b:bob", 1)).outcome, ClientOutcome::Committed);
  std::string backup = dir_ + "/backup";
  auto b = keelctl("backup --to " + backup);
  ASSERT_EQ(b.exitCode, 0) << b.output;
  // After the backup: seqs only the participants' records tell of.
  std::uint64_t maxSeq = 0;
  for (int i = 0; i < 12; ++i) {
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 1));
    ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
    maxSeq = std::max(maxSeq, o.seq);
  }
  // The disk is lost with the coordinator (and bank-b, inside it, stops too).
  cluster_->killCoordinator(SIGKILL);
  client_ = nullptr;
  fs::remove_all(dir_ + "/coordinator");

  // bank-b's data directory held by another process (bank-b run as a
  // keel-agent): refused, naming it, with nothing written.
  cluster_->startEmbeddedAsAgent("bank-b");
  auto held = restore(backup);
  EXPECT_EQ(held.exitCode, 3) << held.output;
  EXPECT_NE(held.output.find("embedded participant bank-b: "), std::string::npos) << held.output;
  EXPECT_NE(held.output.find("the coordinator's data directory was not touched"), std::string::npos) << held.output;
  EXPECT_FALSE(fs::exists(dir_ + "/coordinator"));
  cluster_->stopAgent("bank-b");

  auto r = restore(backup);
  ASSERT_EQ(r.exitCode, 0) << r.output;
  // bank-b answered from inside the restoring process (the seqs above all
  // fall in the block the backup's mark already covers, so it holds none
  // above the mark; its fence is what the lost coordinator's epoch left).
  EXPECT_NE(r.output.find("embedded participant bank-b (ledger adapter"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("restore 2/3 ask: bank-b holds 0 branch records of node 1 at or above the backup's mark; "
                          "its epoch fence 1"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("restore 3/3 build"), std::string::npos) << r.output;

  // The restored coordinator starts (bank-b's data directory free again)
  // and runs transfers through bank-b, above every seq issued before.
  cluster_->startCoordinator();
  reconnect();
  auto next = submit(transferOps("bank-a:alice", "bank-b:bob", 1));
  ASSERT_EQ(next.outcome, ClientOutcome::Committed) << next.reason;
  EXPECT_GT(seqCounter(next.seq), seqCounter(maxSeq));
  RunResult books;
  EXPECT_TRUE(eventually([&] {
    books = runStdout("timeout 30 " + binDir() + "/keelctl --json -c " + cluster_->coordinatorAddress() +
                      " branches --embedded bank-b 2>/dev/null");
    return books.output.find("\"total\":18") != std::string::npos;  // 5 + 12 + 1: every acknowledged commit
  })) << books.output;
}

// A backup that holds a one-phase interaction undecided, which the lost
// coordinator then finished, archived and released (the agent dropped its
// record): the restored coordinator finds nothing at the participant and
// never presumes an outcome. It ends heuristic-unknown, saying why, with
// nothing held anywhere.
class RestoreAfterReleaseTest : public RestoreTest {
 protected:
  std::string coordinatorToml() override { return RestoreTest::coordinatorToml() + "hot_retention_s = 1\n"; }
};

TEST_F(RestoreAfterReleaseTest, AReleasedInteractionTheBackupLeftUndecidedIsNeverGuessed) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 10);
  // An interactive transaction open at the backup (its record: no decision).
  auto held = beginWith(Op{"bank-b", OpKind::Debit, "bob", 3});
  ASSERT_TRUE(held.txn.get() != nullptr);
  const std::uint64_t interactive = held.txn->seq();
  // The one-phase call below is held 1.5 s at bank-a.
  cluster_->stopAgent("bank-a");
  cluster_->startAgent("bank-a", "agent.before_execute=1*delay(1500)");
  auto pending = client_->submit({Op{"bank-a", OpKind::Credit, "alice", 1}});  // one-phase: its intent is durable first
  io_.provider->getTimer().afterDelay(300 * kj::MILLISECONDS).wait(io_.waitScope);
  std::string backup = dir_ + "/backup";
  auto b = run(binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " backup --to " + backup);
  ASSERT_EQ(b.exitCode, 0) << b.output;
  auto o = pending.wait(io_.waitScope);
  ASSERT_NE(o.seq, 0u) << o.reason;
  auto c = held.txn->commit().wait(io_.waitScope);
  ASSERT_EQ(c.outcome, ClientOutcome::Committed) << c.reason;
  // Finished, archived, released: bank-a no longer holds their records.
  ASSERT_TRUE(eventually([&] {
    auto a = inspect("bank-a").floors, b = inspect("bank-b").floors;
    return a.count(1) != 0 && a[1].first > o.seq && b.count(1) != 0 && b[1].first > interactive;
  }, std::chrono::seconds(30)));
  auto before = account("bank-a", "alice");
  auto beforeB = account("bank-b", "bob");

  cluster_->killCoordinator(SIGKILL);
  client_ = nullptr;
  fs::remove_all(dir_ + "/coordinator");
  auto r = restore(backup);
  ASSERT_EQ(r.exitCode, 0) << r.output;
  cluster_->startCoordinator();
  reconnect();
  ASSERT_TRUE(eventually([&] {
    auto q = query(o.seq);
    return q && q->interaction.state == InteractionRecord::State::HeuristicUnknown;
  }, std::chrono::seconds(20))) << "seq " << seqText(o.seq) << " was not settled heuristic-unknown";
  auto q = query(o.seq);
  ASSERT_EQ(q->interaction.branches.size(), 1u);
  EXPECT_NE(q->interaction.branches[0].reason.find("released"), std::string::npos)
      << q->interaction.branches[0].reason;
  // The interactive one: no participant holds a record, but bank-b has
  // released it, so "no branch anywhere" does not mean "never committed".
  ASSERT_TRUE(eventually([&] {
    auto i = query(interactive);
    return i && i->interaction.state == InteractionRecord::State::HeuristicUnknown;
  }, std::chrono::seconds(20))) << "seq " << seqText(interactive) << " was not settled heuristic-unknown";
  auto i = query(interactive);
  EXPECT_NE(i->interaction.error.find("released at bank-"), std::string::npos) << i->interaction.error;
  EXPECT_NE(i->interaction.error.find("its outcome is not known here"), std::string::npos) << i->interaction.error;
  EXPECT_EQ(account("bank-a", "alice"), before);  // nothing undone, nothing applied again
  EXPECT_EQ(account("bank-b", "bob"), beforeB);
  EXPECT_EQ(beforeB, bal(7, 0));
  auto listed = keelctl("list");  // heuristic ones are listed for an operator to reconcile
  EXPECT_NE(listed.output.find(seqText(o.seq)), std::string::npos) << listed.output;
}

}  // namespace
}  // namespace keel::test
