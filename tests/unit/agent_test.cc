// Agent: the participant's branch state machine, driven on a KJ event loop
// against a temporary data directory.

#include "participant/agent.h"

#include <gtest/gtest.h>
#include <kj/async-io.h>
#include <kj/vector.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "common/failpoint.h"
#include "tests/unit/test_util.h"

namespace keel {
namespace {

constexpr const char* kName = "bank-a";

Op open(const std::string& account, std::int64_t amount) { return Op{kName, OpKind::OpenAccount, account, amount}; }
Op credit(const std::string& account, std::int64_t amount) { return Op{kName, OpKind::Credit, account, amount}; }
Op debit(const std::string& account, std::int64_t amount) { return Op{kName, OpKind::Debit, account, amount}; }
Op read(const std::string& account) { return Op{kName, OpKind::ReadBalance, account, 0}; }

using Outcomes = std::vector<BranchOutcome>;

class AgentTest : public ::testing::Test {
 protected:
  AgentTest() : io_(std::make_unique<kj::AsyncIoContext>(kj::setupAsyncIo())) { start(); }
  ~AgentTest() override { agent_.reset(); }  // before the event loop goes

  void openAgent() { agent_ = std::make_unique<Agent>(AgentOptions{kName, dir_.mkdir("agent"), std::size_t(64) << 20}); }
  void start() {
    openAgent();
    agent_->start();
  }
  // Destroys the agent (its log drains, no other shutdown step) and opens
  // the same directory again, as a restarted process would.
  void restart() {
    agent_.reset();
    start();
  }

  PrepareResult prepare(Xid x, std::vector<Op> ops) { return agent_->prepare(1, x, std::move(ops)).wait(ws()); }
  PrepareResult execute(Xid x, std::vector<Op> ops) { return agent_->execute(1, x, std::move(ops)).wait(ws()); }
  Outcomes commit(std::vector<Xid> xs) { return agent_->commit(1, std::move(xs)).wait(ws()); }
  Outcomes rollback(std::vector<Xid> xs) { return agent_->rollback(1, std::move(xs)).wait(ws()); }
  OnePhaseResult onePhase(Xid x, std::vector<Op> ops) {
    return agent_->commitOnePhase(1, x, std::move(ops)).wait(ws());
  }

  void fund(const std::string& name, std::int64_t balance) {
    auto r = onePhase(Xid{1'000'000 + nextFund_++, 0}, {open(name, balance)});
    ASSERT_EQ(r.outcome, BranchOutcome::Committed) << r.reason;
  }
  std::optional<AccountRecord> account(const std::string& name) {
    for (auto& a : agent_->accounts()) {
      if (a.name == name) return a.record;
    }
    return std::nullopt;
  }
  void expectAccount(const std::string& name, std::int64_t balance, std::int64_t held) {
    auto a = account(name);
    ASSERT_TRUE(a.has_value()) << name << " missing";
    EXPECT_EQ(a->balance, balance) << name;
    EXPECT_EQ(a->held, held) << name;
  }
  std::optional<BranchRecord> branch(Xid x) { return agent_->branches({x})[0]; }

  kj::WaitScope& ws() { return io_->waitScope; }

  test::TempDir dir_;
  std::unique_ptr<kj::AsyncIoContext> io_;  // unique_ptr: its destructor may throw
  std::unique_ptr<Agent> agent_;
  std::uint64_t nextFund_ = 0;
};

TEST_F(AgentTest, PrepareVotesYesAndPlacesAHold) {
  fund("alice", 100);
  auto r = prepare({1, 1}, {debit("alice", 30)});
  EXPECT_EQ(r.vote, Vote::Yes) << r.reason;
  expectAccount("alice", 100, 30);
  auto b = branch({1, 1});
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->state, BranchStatus::Prepared);
  EXPECT_EQ(b->ops, std::vector<Op>{debit("alice", 30)});
  EXPECT_GT(b->preparedUs, 0u);
  EXPECT_EQ(agent_->counts().prepared, 1u);
  ASSERT_EQ(agent_->unfinishedBranches().size(), 1u);
}

TEST_F(AgentTest, PrepareVotesNoOnOverdraftAndLeavesNoHold) {
  fund("alice", 100);
  // The first debit fits, the second does not: neither may leave a hold.
  auto r = prepare({2, 1}, {debit("alice", 60), debit("alice", 60)});
  EXPECT_EQ(r.vote, Vote::No);
  EXPECT_NE(r.reason.find("insufficient funds"), std::string::npos) << r.reason;
  expectAccount("alice", 100, 0);
  auto b = branch({2, 1});
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->state, BranchStatus::RolledBack);
  EXPECT_EQ(b->reason, r.reason);
  EXPECT_TRUE(agent_->unfinishedBranches().empty());
  // A retried prepare of the same XID does not turn into a YES.
  EXPECT_EQ(prepare({2, 1}, {debit("alice", 10)}).vote, Vote::No);
  expectAccount("alice", 100, 0);
}

TEST_F(AgentTest, PrepareOfOnlyReadsVotesReadOnly) {
  fund("alice", 100);
  ASSERT_EQ(prepare({3, 1}, {debit("alice", 25)}).vote, Vote::Yes);
  auto r = prepare({3, 2}, {read("alice")});
  EXPECT_EQ(r.vote, Vote::ReadOnly);
  ASSERT_EQ(r.results.size(), 1u);
  EXPECT_EQ(r.results[0].balance, 100);
  EXPECT_EQ(r.results[0].available, 75);
  EXPECT_FALSE(branch({3, 2}).has_value());  // finished: nothing kept
}

TEST_F(AgentTest, RepeatedPrepareAnswersYesWithoutASecondHold) {
  fund("alice", 100);
  ASSERT_EQ(prepare({4, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  EXPECT_EQ(prepare({4, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  expectAccount("alice", 100, 30);
}

TEST_F(AgentTest, CommitIsIdempotent) {
  fund("alice", 100);
  fund("bob", 0);
  ASSERT_EQ(prepare({5, 1}, {debit("alice", 30), credit("bob", 30)}).vote, Vote::Yes);
  EXPECT_EQ(commit({{5, 1}}), Outcomes{BranchOutcome::Committed});
  expectAccount("alice", 70, 0);
  expectAccount("bob", 30, 0);
  EXPECT_EQ(commit({{5, 1}}), Outcomes{BranchOutcome::Committed});
  expectAccount("alice", 70, 0);  // applied once
  expectAccount("bob", 30, 0);
  EXPECT_EQ(branch({5, 1})->state, BranchStatus::Committed);
  // A rollback after the commit cannot undo it.
  EXPECT_EQ(rollback({{5, 1}}), Outcomes{BranchOutcome::Committed});
  expectAccount("alice", 70, 0);
}

TEST_F(AgentTest, RollbackIsIdempotent) {
  fund("alice", 100);
  ASSERT_EQ(prepare({6, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  EXPECT_EQ(rollback({{6, 1}}), Outcomes{BranchOutcome::RolledBack});
  expectAccount("alice", 100, 0);
  EXPECT_EQ(rollback({{6, 1}}), Outcomes{BranchOutcome::RolledBack});
  expectAccount("alice", 100, 0);  // the hold was released once, not twice
  // A commit after the rollback is a conflict, never applied.
  EXPECT_EQ(commit({{6, 1}}), Outcomes{BranchOutcome::Conflict});
  expectAccount("alice", 100, 0);
}

TEST_F(AgentTest, RollbackOfUnknownXidLeavesATombstoneThatRefusesALatePrepare) {
  fund("alice", 100);
  EXPECT_EQ(rollback({{7, 1}}), Outcomes{BranchOutcome::RolledBack});
  auto b = branch({7, 1});
  ASSERT_TRUE(b.has_value());
  EXPECT_TRUE(b->tombstone);
  EXPECT_EQ(b->state, BranchStatus::RolledBack);
  auto r = prepare({7, 1}, {debit("alice", 10)});
  EXPECT_EQ(r.vote, Vote::No);
  EXPECT_NE(r.reason.find("rolled back before it arrived"), std::string::npos) << r.reason;
  expectAccount("alice", 100, 0);
  auto one = onePhase({7, 1}, {debit("alice", 10)});
  EXPECT_EQ(one.outcome, BranchOutcome::RolledBack);
  expectAccount("alice", 100, 0);
}

// A tombstone outlives `forget` while a late prepare may still come: until
// the branch's coordinator node is fenced at a newer epoch than the
// tombstone's (a restart of that coordinator), after which a prepare of the
// incarnation that issued the seq is refused anyway.
TEST_F(AgentTest, ForgetKeepsATombstoneUntilItsCoordinatorStartedAgain) {
  fund("alice", 100);
  const Xid x{(std::uint64_t(3) << kSeqNodeShift) | 9, 1};  // coordinator node 3
  ASSERT_EQ(agent_->rollback(2, {x}).wait(ws()), Outcomes{BranchOutcome::RolledBack});  // epoch 2: a tombstone
  auto r = agent_->forget(0, {x}).wait(ws());
  EXPECT_EQ(r.forgotten, 0u);
  ASSERT_EQ(r.refused, std::vector<Xid>{x});
  ASSERT_EQ(r.reasons.size(), 1u);
  EXPECT_NE(r.reasons[0].find("a tombstone"), std::string::npos) << r.reasons[0];
  EXPECT_NE(r.reasons[0].find("coordinator node 3"), std::string::npos) << r.reasons[0];
  // The same epoch's late prepare is still refused by the tombstone.
  EXPECT_EQ(agent_->prepare(2, x, {debit("alice", 10)}).wait(ws()).vote, Vote::No);
  // Node 3 starts again (epoch 3): its earlier incarnation's calls are
  // fenced off, so the tombstone can go.
  const Xid later{(std::uint64_t(3) << kSeqNodeShift) | 10, 1};
  ASSERT_EQ(agent_->prepare(3, later, {debit("alice", 1)}).wait(ws()).vote, Vote::Yes);
  r = agent_->forget(0, {x}).wait(ws());
  EXPECT_EQ(r.forgotten, 1u);
  EXPECT_TRUE(r.refused.empty());
  EXPECT_FALSE(branch(x).has_value());
  EXPECT_ANY_THROW(agent_->prepare(2, x, {debit("alice", 10)}).wait(ws()));  // StaleEpoch: never prepared
  expectAccount("alice", 100, 1);
}

// A job may run twice: the group log runs a bundle's items one by one
// again when one of them throws (GroupCommitLog::Bundle). A release run
// again keeps what it was told to keep (it once moved its list out on the
// first run and dropped the kept records on the second).
TEST_F(AgentTest, AReleaseRunAgainInItsBundleStillKeepsWhatItKeeps) {
  fund("alice", 1000);
  auto s3 = [](std::uint64_t n) { return makeSeq(3, n); };
  const Xid dropped{s3(9), 1}, kept{s3(12), 1};
  for (Xid x : {dropped, kept}) {
    ASSERT_EQ(agent_->prepare(2, x, {debit("alice", 1)}).wait(ws()).vote, Vote::Yes);
    ASSERT_EQ(agent_->commit(2, {x}).wait(ws()), Outcomes{BranchOutcome::Committed});
  }
  auto& log = agent_->branchLog();
  // One loop turn: one bundle, whose second item throws.
  auto release = log.release(3, 2, s3(15), {s3(12)});
  auto bad = log.log().run([](lmdb::Txn&) -> int { throw std::runtime_error("the other item fails"); });
  EXPECT_ANY_THROW(bad.wait(ws()));
  auto r = release.wait(ws());
  EXPECT_EQ(r.dropped, 1u);
  EXPECT_FALSE(branch(dropped).has_value());
  EXPECT_TRUE(branch(kept).has_value()) << "the kept record was dropped when the release ran again";
}

// The release floor (BranchLog::release, docs/protocol.md "Release"): a
// coordinator node's seqs below it, except the kept ones, are finished and
// archived. Their finished records go, tombstones included; unfinished and
// kept ones stay; nothing below the floor can be prepared again, even after
// a restart; a lower floor changes nothing; bad floors are refused.
TEST_F(AgentTest, ReleaseDropsFinishedRecordsBelowTheFloorAndRefusesLateCalls) {
  fund("alice", 1000);
  auto s3 = [](std::uint64_t n) { return makeSeq(3, n); };  // coordinator node 3
  auto prep = [&](Xid x, std::int64_t amount) { return agent_->prepare(2, x, {debit("alice", amount)}).wait(ws()); };
  const Xid committed{s3(9), 1}, tomb{s3(10), 1}, prepared{s3(11), 1}, kept{s3(12), 1}, above{s3(20), 1};
  ASSERT_EQ(prep(committed, 1).vote, Vote::Yes);
  ASSERT_EQ(agent_->commit(2, {committed}).wait(ws()), Outcomes{BranchOutcome::Committed});
  ASSERT_EQ(agent_->rollback(2, {tomb}).wait(ws()), Outcomes{BranchOutcome::RolledBack});  // a tombstone
  ASSERT_EQ(prep(prepared, 2).vote, Vote::Yes);
  ASSERT_EQ(prep(kept, 4).vote, Vote::Yes);
  ASSERT_EQ(agent_->commit(2, {kept}).wait(ws()), Outcomes{BranchOutcome::Committed});
  ASSERT_EQ(prep(above, 8).vote, Vote::Yes);
  ASSERT_EQ(agent_->commit(2, {above}).wait(ws()), Outcomes{BranchOutcome::Committed});
  const auto before = agent_->counts();

  auto& log = agent_->branchLog();
  auto r = log.release(3, 2, s3(15), {s3(12)}).wait(ws());
  EXPECT_EQ(r.dropped, 2u);  // the committed one and the tombstone
  EXPECT_FALSE(r.more);
  EXPECT_EQ(r.floor, s3(15));
  EXPECT_FALSE(branch(committed).has_value());
  EXPECT_FALSE(branch(tomb).has_value());
  ASSERT_TRUE(branch(prepared).has_value());  // unfinished: never dropped
  EXPECT_EQ(branch(prepared)->state, BranchStatus::Prepared);
  EXPECT_TRUE(branch(kept).has_value());   // kept by the coordinator
  EXPECT_TRUE(branch(above).has_value());  // above the floor
  EXPECT_EQ(agent_->counts().committed, before.committed - 1);
  EXPECT_EQ(agent_->counts().rolledBack, before.rolledBack - 1);

  // Late duplicates of released seqs: refused, nothing held or applied.
  auto late = prep(committed, 100);
  EXPECT_EQ(late.vote, Vote::No);
  EXPECT_NE(late.reason.find("release floor"), std::string::npos) << late.reason;
  EXPECT_EQ(prep(tomb, 100).vote, Vote::No);
  EXPECT_EQ(agent_->execute(2, Xid{s3(13), 1}, {debit("alice", 100)}).wait(ws()).vote, Vote::No);
  EXPECT_EQ(agent_->commitOnePhase(2, Xid{s3(14), 1}, {debit("alice", 100)}).wait(ws()).outcome,
            BranchOutcome::Released);
  EXPECT_EQ(agent_->commit(2, {committed}).wait(ws()), Outcomes{BranchOutcome::Released});
  EXPECT_EQ(agent_->rollback(2, {tomb}).wait(ws()), Outcomes{BranchOutcome::Released});
  EXPECT_FALSE(branch(tomb).has_value());  // no new tombstone below the floor
  expectAccount("alice", 1000 - 1 - 4 - 8, 2);
  // What is still unfinished below the floor is driven as before.
  EXPECT_EQ(agent_->commit(2, {prepared}).wait(ws()), Outcomes{BranchOutcome::Committed});
  expectAccount("alice", 1000 - 1 - 2 - 4 - 8, 0);

  // forget: a kept or unreleased finished record stays while a late prepare
  // of it may come; a released one may go.
  auto f = agent_->forget(0, {kept, above}).wait(ws());
  EXPECT_EQ(f.forgotten, 0u);
  ASSERT_EQ(f.reasons.size(), 2u);
  EXPECT_NE(f.reasons[1].find("a finished branch, kept while a late prepare"), std::string::npos) << f.reasons[1];
  EXPECT_NE(f.reasons[1].find("release floor here is 3:15"), std::string::npos) << f.reasons[1];

  // A lower floor changes nothing: the floor in force (and its keep list)
  // drops what finished since (the prepared branch committed above); the
  // next floor drops what is no longer kept.
  r = log.release(3, 2, s3(5), {}).wait(ws());
  EXPECT_EQ(r.floor, s3(15));
  EXPECT_EQ(r.dropped, 1u);
  EXPECT_FALSE(branch(prepared).has_value());
  EXPECT_TRUE(branch(kept).has_value());
  r = log.release(3, 2, s3(16), {}).wait(ws());
  EXPECT_EQ(r.dropped, 1u);
  EXPECT_FALSE(branch(kept).has_value());

  // Nothing from the network is trusted.
  EXPECT_THROW(log.release(3, 0, s3(17), {}), std::invalid_argument);              // epoch 0
  EXPECT_THROW(log.release(3, 2, makeSeq(4, 17), {}), std::invalid_argument);      // another node's floor
  EXPECT_THROW(log.release(3, 2, s3(17), {s3(17)}), std::invalid_argument);        // kept, not below
  EXPECT_THROW(log.release(3, 2, s3(17), {makeSeq(4, 1)}), std::invalid_argument); // kept, another node
  EXPECT_THROW(log.release(3, 2, s3(17), std::vector<std::uint64_t>(BranchLog::kMaxReleaseKeep + 1, s3(1))),
               std::invalid_argument);
  EXPECT_THROW(log.release(3, 1, s3(17), {}), StaleEpoch);
  EXPECT_EQ(log.releaseFloor(3), s3(16));

  // Durable: a restarted agent still refuses them, and other nodes' seqs
  // are not affected.
  restart();
  EXPECT_EQ(agent_->branchLog().releaseFloor(3), s3(16));
  EXPECT_EQ(prep(committed, 100).vote, Vote::No);
  EXPECT_EQ(agent_->prepare(2, Xid{makeSeq(4, 9), 1}, {debit("alice", 1)}).wait(ws()).vote, Vote::Yes);
  EXPECT_EQ(prep(Xid{s3(21), 1}, 1).vote, Vote::Yes);
  expectAccount("alice", 1000 - 1 - 2 - 4 - 8, 2);
}

TEST_F(AgentTest, CommitOfUnknownXidIsUnknown) {
  EXPECT_EQ(commit({{8, 1}}), Outcomes{BranchOutcome::Unknown});
  EXPECT_FALSE(branch({8, 1}).has_value());  // and leaves nothing behind
}

TEST_F(AgentTest, OneCallAnswersEachXid) {
  fund("alice", 100);
  ASSERT_EQ(prepare({9, 1}, {debit("alice", 10)}).vote, Vote::Yes);
  ASSERT_EQ(execute({9, 2}, {debit("alice", 10)}).vote, Vote::Yes);
  EXPECT_EQ(commit({{9, 1}, {9, 2}, {9, 3}}),
            (Outcomes{BranchOutcome::Committed, BranchOutcome::NotPrepared, BranchOutcome::Unknown}));
  expectAccount("alice", 90, 10);
}

TEST_F(AgentTest, OnePhaseCommitAppliesAndLaterRollbackAnswersCommitted) {
  fund("alice", 100);
  fund("bob", 0);
  auto r = onePhase({10, 1}, {debit("alice", 40), credit("bob", 40), read("bob")});
  EXPECT_EQ(r.outcome, BranchOutcome::Committed) << r.reason;
  expectAccount("alice", 60, 0);
  expectAccount("bob", 40, 0);
  EXPECT_EQ(rollback({{10, 1}}), Outcomes{BranchOutcome::Committed});
  expectAccount("alice", 60, 0);  // never undone
  expectAccount("bob", 40, 0);
  // A retried one-phase call answers what happened, without applying again.
  EXPECT_EQ(onePhase({10, 1}, {debit("alice", 40), credit("bob", 40)}).outcome, BranchOutcome::Committed);
  expectAccount("alice", 60, 0);
  auto b = branch({10, 1});
  ASSERT_TRUE(b.has_value());
  EXPECT_TRUE(b->onePhase);
  EXPECT_EQ(b->state, BranchStatus::Committed);
}

TEST_F(AgentTest, OnePhaseNoOnOverdraftIsRolledBackWithTheReason) {
  fund("alice", 100);
  fund("bob", 0);
  auto r = onePhase({11, 1}, {credit("bob", 500), debit("alice", 500)});
  EXPECT_EQ(r.outcome, BranchOutcome::RolledBack);
  EXPECT_NE(r.reason.find("insufficient funds in alice"), std::string::npos) << r.reason;
  expectAccount("alice", 100, 0);
  expectAccount("bob", 0, 0);
  auto again = onePhase({11, 1}, {credit("bob", 1)});
  EXPECT_EQ(again.outcome, BranchOutcome::RolledBack);
  EXPECT_EQ(again.reason, r.reason);
  expectAccount("bob", 0, 0);
}

TEST_F(AgentTest, PreparedBranchSurvivesRestartWithItsHold) {
  fund("alice", 100);
  ASSERT_EQ(prepare({12, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  restart();
  auto unfinished = agent_->unfinishedBranches();
  ASSERT_EQ(unfinished.size(), 1u);
  EXPECT_EQ(unfinished[0].xid, (Xid{12, 1}));
  EXPECT_EQ(unfinished[0].state, BranchStatus::Prepared);
  EXPECT_EQ(unfinished[0].ops, std::vector<Op>{debit("alice", 30)});
  expectAccount("alice", 100, 30);
  // The hold still guards the money...
  EXPECT_EQ(prepare({12, 2}, {debit("alice", 80)}).vote, Vote::No);
  // ...and the decision can still be carried out.
  EXPECT_EQ(commit({{12, 1}}), Outcomes{BranchOutcome::Committed});
  expectAccount("alice", 70, 0);
}

TEST_F(AgentTest, ActiveBranchesAreRolledBackOnRestart) {
  fund("alice", 100);
  ASSERT_EQ(execute({13, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  ASSERT_EQ(prepare({13, 2}, {debit("alice", 20)}).vote, Vote::Yes);
  expectAccount("alice", 100, 50);
  EXPECT_EQ(agent_->counts().active, 1u);
  EXPECT_EQ(branch({13, 1})->state, BranchStatus::Active);
  restart();
  auto b = branch({13, 1});
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->state, BranchStatus::RolledBack);
  EXPECT_NE(b->reason.find("restarted"), std::string::npos) << b->reason;
  expectAccount("alice", 100, 20);  // only the prepared branch's hold is left
  auto unfinished = agent_->unfinishedBranches();
  ASSERT_EQ(unfinished.size(), 1u);
  EXPECT_EQ(unfinished[0].xid, (Xid{13, 2}));
  EXPECT_EQ(prepare({13, 1}, {}).vote, Vote::No);  // too late to vote yes
  EXPECT_EQ(commit({{13, 1}}), Outcomes{BranchOutcome::Conflict});
}

// Holds are kept in memory (participant/adapters/ledger.h): a prepare
// writes nothing to the accounts tree; an agent of an older version kept the
// hold there, and the first start of this one moves it into memory.
std::optional<AccountRecord> storedAccount(const std::string& dir, const std::string& name) {
  lmdb::Env env(dir, {});
  MDB_dbi accounts = env.openDb("accounts");
  auto txn = env.beginRead();
  auto v = txn.get(accounts, name);
  if (!v) return std::nullopt;
  return decodeAccount(*v);
}

TEST_F(AgentTest, HoldsAnOlderAgentStoredInTheAccountsMoveIntoMemory) {
  fund("alice", 100);
  ASSERT_EQ(prepare({30, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  agent_.reset();
  std::string dir = dir_.mkdir("agent");
  ASSERT_EQ(storedAccount(dir, "alice")->held, 0) << "this version wrote a hold to the accounts tree";
  {
    // What an agent before this change left: the hold in the account too.
    lmdb::Env env(dir, {});
    MDB_dbi accounts = env.openDb("accounts");
    auto txn = env.beginWrite();
    auto a = decodeAccount(*txn.get(accounts, "alice"));
    a.held = 30;
    txn.put(accounts, "alice", encode(a));
    txn.commit();
  }
  openAgent();
  agent_->start();
  expectAccount("alice", 100, 30);  // counted once, from the PREPARED record
  EXPECT_EQ(prepare({30, 2}, {debit("alice", 71)}).vote, Vote::No);
  ASSERT_EQ(commit({{30, 1}}), Outcomes{BranchOutcome::Committed});
  expectAccount("alice", 70, 0);
  agent_.reset();
  EXPECT_EQ(storedAccount(dir, "alice")->held, 0) << "start left the older agent's hold in the account";
  EXPECT_EQ(storedAccount(dir, "alice")->balance, 70);
  start();
  expectAccount("alice", 70, 0);
}

// A job that fails after it placed a hold (here: an injected error after
// the operations ran) is rolled back; the hold it placed in memory must go
// with it, or the money would stay blocked.
TEST_F(AgentTest, AJobThatFailsAfterPlacingAHoldLeavesNoHold) {
  fund("alice", 100);
  failpoint::configure("agent.after_execute=1*error");
  EXPECT_ANY_THROW(prepare({31, 1}, {debit("alice", 30)}));
  failpoint::configure("");
  EXPECT_FALSE(branch({31, 1}).has_value());
  // All of it is available again to the next branch.
  EXPECT_EQ(prepare({31, 2}, {debit("alice", 100)}).vote, Vote::Yes);
  expectAccount("alice", 100, 100);
  EXPECT_EQ(rollback({{31, 2}}), Outcomes{BranchOutcome::RolledBack});
  expectAccount("alice", 100, 0);
}

// The commit side of the same hook: a batch of commits that fails after its
// first branch already took its hold off in memory (the job is rolled back,
// both branches stay PREPARED) must leave both holds in force — otherwise the
// money of a still-prepared debit could be promised to another branch.
TEST_F(AgentTest, ACommitJobThatFailsAfterReleasingAHoldKeepsTheHold) {
  fund("alice", 100);
  ASSERT_EQ(prepare({32, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  ASSERT_EQ(prepare({32, 2}, {debit("alice", 20)}).vote, Vote::Yes);
  // The first branch of the batch commits (its hold of 30 released in
  // memory), the second fails: the whole job is rolled back.
  failpoint::configure("agent.before_commit_durable=1+1*error");
  EXPECT_ANY_THROW(commit({{32, 1}, {32, 2}}));
  EXPECT_EQ(failpoint::firedCount("agent.before_commit_durable"), 1u);
  failpoint::configure("");
  EXPECT_EQ(branch({32, 1})->state, BranchStatus::Prepared);
  EXPECT_EQ(branch({32, 2})->state, BranchStatus::Prepared);
  expectAccount("alice", 100, 50);
  // 50 is available, not 80: a debit of 51 is refused, one of 50 is not.
  EXPECT_EQ(prepare({32, 3}, {debit("alice", 51)}).vote, Vote::No);
  EXPECT_EQ(prepare({32, 4}, {debit("alice", 50)}).vote, Vote::Yes);
  EXPECT_EQ(commit({{32, 1}, {32, 2}, {32, 4}}),
            (Outcomes{BranchOutcome::Committed, BranchOutcome::Committed, BranchOutcome::Committed}));
  expectAccount("alice", 0, 0);
}

TEST_F(AgentTest, ExecuteThenPrepareAccumulatesTheBranch) {
  fund("alice", 100);
  fund("bob", 0);
  ASSERT_EQ(execute({14, 1}, {debit("alice", 10)}).vote, Vote::Yes);
  EXPECT_EQ(branch({14, 1})->state, BranchStatus::Active);
  ASSERT_EQ(prepare({14, 1}, {credit("bob", 10)}).vote, Vote::Yes);
  EXPECT_EQ(branch({14, 1})->ops, (std::vector<Op>{debit("alice", 10), credit("bob", 10)}));
  ASSERT_EQ(commit({{14, 1}}), Outcomes{BranchOutcome::Committed});
  expectAccount("alice", 90, 0);
  expectAccount("bob", 10, 0);
}

TEST_F(AgentTest, ExecuteCannotChangeAPreparedBranch) {
  fund("alice", 100);
  ASSERT_EQ(prepare({21, 1}, {debit("alice", 10)}).vote, Vote::Yes);
  auto r = execute({21, 1}, {debit("alice", 50)});
  EXPECT_EQ(r.vote, Vote::No);
  EXPECT_NE(r.reason.find("already prepared"), std::string::npos) << r.reason;
  expectAccount("alice", 100, 10);  // the voted branch is frozen
  EXPECT_EQ(branch({21, 1})->ops, std::vector<Op>{debit("alice", 10)});
  EXPECT_EQ(branch({21, 1})->state, BranchStatus::Prepared);
}

TEST_F(AgentTest, OnePhaseOnAnXidInUseLeavesThatBranchAlone) {
  fund("alice", 100);
  ASSERT_EQ(prepare({22, 1}, {debit("alice", 10)}).vote, Vote::Yes);
  auto r = onePhase({22, 1}, {debit("alice", 50)});
  EXPECT_EQ(r.outcome, BranchOutcome::Conflict);
  EXPECT_NE(r.reason.find("in use"), std::string::npos) << r.reason;
  expectAccount("alice", 100, 10);
  EXPECT_EQ(branch({22, 1})->state, BranchStatus::Prepared);
}

TEST_F(AgentTest, FailedExecuteRollsBackTheWholeActiveBranch) {
  fund("alice", 100);
  ASSERT_EQ(execute({15, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  expectAccount("alice", 100, 30);
  auto r = execute({15, 1}, {debit("alice", 500)});
  EXPECT_EQ(r.vote, Vote::No);
  expectAccount("alice", 100, 0);
  EXPECT_EQ(branch({15, 1})->state, BranchStatus::RolledBack);
}

TEST_F(AgentTest, RollbackOfAnActiveBranchReleasesItsHolds) {
  fund("alice", 100);
  ASSERT_EQ(execute({16, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  EXPECT_EQ(rollback({{16, 1}}), Outcomes{BranchOutcome::RolledBack});
  expectAccount("alice", 100, 0);
}

TEST_F(AgentTest, OpsForAnotherParticipantAreRefused) {
  fund("alice", 100);
  Op foreign{"bank-b", OpKind::Debit, "alice", 10};
  auto r = prepare({17, 1}, {debit("alice", 1), foreign});
  EXPECT_EQ(r.vote, Vote::No);
  EXPECT_NE(r.reason.find("addressed to participant bank-b"), std::string::npos) << r.reason;
  auto one = onePhase({17, 2}, {foreign});
  EXPECT_EQ(one.outcome, BranchOutcome::RolledBack);
  EXPECT_NE(one.reason.find("bank-b"), std::string::npos) << one.reason;
  EXPECT_EQ(execute({17, 3}, {foreign}).vote, Vote::No);
  expectAccount("alice", 100, 0);
  // Refused before any write: no branch record either.
  EXPECT_FALSE(branch({17, 1}).has_value());
  EXPECT_FALSE(branch({17, 2}).has_value());
  // An op with no participant name is taken as addressed to this agent.
  EXPECT_EQ(prepare({17, 4}, {Op{"", OpKind::Debit, "alice", 10}}).vote, Vote::Yes);
}

TEST_F(AgentTest, MalformedOpsVoteNo) {
  fund("alice", 100);
  EXPECT_EQ(prepare({18, 1}, {debit("", 1)}).vote, Vote::No);
  EXPECT_EQ(prepare({18, 2}, {debit("alice", 0)}).vote, Vote::No);
  EXPECT_EQ(prepare({18, 3}, {debit("alice", Limits::kMaxAmount + 1)}).vote, Vote::No);
  std::vector<Op> tooMany(Limits::kMaxOpsPerInteraction + 1, read("alice"));
  auto r = prepare({18, 4}, tooMany);
  EXPECT_EQ(r.vote, Vote::No);
  EXPECT_NE(r.reason.find("too many"), std::string::npos) << r.reason;
  expectAccount("alice", 100, 0);
}

TEST_F(AgentTest, ConcurrentPreparesShareGroupCommits) {
  fund("alice", 1000);
  const auto commitsBefore = agent_->log().stats().commits.load();
  kj::Vector<kj::Promise<PrepareResult>> promises;
  for (std::uint16_t i = 0; i < 200; ++i) promises.add(agent_->prepare(1, Xid{19, i}, {debit("alice", 5)}));
  auto results = kj::joinPromises(promises.releaseAsArray()).wait(ws());
  for (auto& r : results) EXPECT_EQ(r.vote, Vote::Yes) << r.reason;
  expectAccount("alice", 1000, 1000);
  EXPECT_EQ(agent_->counts().prepared, 200u);
  EXPECT_LT(agent_->log().stats().commits.load() - commitsBefore, 200u);
  // The 201st debit finds nothing available.
  EXPECT_EQ(prepare({19, 500}, {debit("alice", 1)}).vote, Vote::No);
}

// A refused start must change nothing: opening the agent only reads; the
// first write (here: rolling back the ACTIVE branch) waits for start().
TEST_F(AgentTest, OpeningReadsOnlyAndStartMakesTheStartUpWrites) {
  fund("alice", 100);
  ASSERT_EQ(execute({21, 1}, {debit("alice", 30)}).vote, Vote::Yes);
  agent_.reset();
  auto bytes = [&] {
    std::ifstream f(dir_.sub("agent/data.mdb"), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  const std::string before = bytes();
  openAgent();
  EXPECT_EQ(branch({21, 1})->state, BranchStatus::Active);
  agent_.reset();
  EXPECT_EQ(bytes(), before) << "opening the agent wrote to its log";
  start();
  EXPECT_EQ(branch({21, 1})->state, BranchStatus::RolledBack);
  expectAccount("alice", 100, 0);
}

// Each start of the branch log gets a number of its own, durable at start()
// (a postgres agent puts it in its gids); opening alone gives none.
TEST_F(AgentTest, EveryStartOfTheBranchLogIsAnIncarnationOfItsOwn) {
  EXPECT_EQ(agent_->branchLog().incarnation(), 1u);
  restart();
  EXPECT_EQ(agent_->branchLog().incarnation(), 2u);
  agent_.reset();
  openAgent();
  EXPECT_EQ(agent_->branchLog().incarnation(), 0u);
  agent_.reset();
  start();
  EXPECT_EQ(agent_->branchLog().incarnation(), 3u);
}

TEST_F(AgentTest, CorruptBranchRecordStopsTheAgentAtStart) {
  ASSERT_EQ(rollback({{20, 1}}), Outcomes{BranchOutcome::RolledBack});
  agent_.reset();
  {
    lmdb::Env env(dir_.sub("agent"), {});
    MDB_dbi branches = env.openDb("branches");
    auto txn = env.beginWrite();
    auto v = txn.get(branches, xidKey({20, 1}));
    ASSERT_TRUE(v.has_value());
    std::string bad = *v;
    bad.back() = char(bad.back() ^ 0x40);
    txn.put(branches, xidKey({20, 1}), bad);
    txn.commit();
  }
  try {
    openAgent();  // refused before anything could be written
    FAIL() << "the agent started on a damaged branch log";
  } catch (const CorruptRecord& e) {
    EXPECT_NE(std::string(e.what()).find("branch 0:20.1"), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------ mergeListed
//
// A postgres agent's listBranches: the log's page with the YES votes whose
// records are still on their way merged in (participant/branch_log.h).

namespace listing {

BranchRecord at(std::uint64_t seq, BranchStatus state = BranchStatus::Prepared) {
  BranchRecord r;
  r.xid = Xid{seq, 1};
  r.state = state;
  return r;
}
std::vector<std::uint64_t> seqs(const std::vector<BranchRecord>& l) {
  std::vector<std::uint64_t> out;
  for (auto& r : l) out.push_back(r.xid.seq);
  return out;
}

}  // namespace listing

TEST(MergeListed, InterleavesInXidOrder) {
  using namespace listing;
  bool more = false;
  auto l = mergeListed({at(1), at(3)}, {at(2), at(4)}, 10, more);
  EXPECT_EQ(seqs(l), (std::vector<std::uint64_t>{1, 2, 3, 4}));
  EXPECT_FALSE(more);
}

TEST(MergeListed, TheLogsRecordWinsWhereBothHoldTheBranch) {
  using namespace listing;
  bool more = false;
  auto l = mergeListed({at(1, BranchStatus::RolledBack)}, {at(1), at(2)}, 10, more);
  ASSERT_EQ(seqs(l), (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(l[0].state, BranchStatus::RolledBack);  // a rollback's tombstone overtook the lazy record
  EXPECT_FALSE(more);
}

TEST(MergeListed, APageHoldsAtMostTheLimitAndSaysMore) {
  using namespace listing;
  bool more = false;
  auto l = mergeListed({at(1), at(3)}, {at(2), at(4), at(5)}, 3, more);
  EXPECT_EQ(seqs(l), (std::vector<std::uint64_t>{1, 2, 3}));
  EXPECT_TRUE(more);
  // Extra branches alone, one more than a page: more.
  more = false;
  l = mergeListed({}, {at(7), at(8), at(9)}, 2, more);
  EXPECT_EQ(seqs(l), (std::vector<std::uint64_t>{7, 8}));
  EXPECT_TRUE(more);
}

TEST(MergeListed, NoExtraBranchPastTheLogsPageWhileTheLogHasMore) {
  using namespace listing;
  // A full page of the log (limit 2) that has more: 5 waits for a page
  // after 3 (the log's 4 may come first).
  bool more = true;
  auto l = mergeListed({at(1), at(3)}, {at(5)}, 2, more);
  EXPECT_EQ(seqs(l), (std::vector<std::uint64_t>{1, 3}));
  EXPECT_TRUE(more);
  // 2 comes before the log's 3, which then waits for the next page.
  more = true;
  l = mergeListed({at(1), at(3)}, {at(2)}, 2, more);
  EXPECT_EQ(seqs(l), (std::vector<std::uint64_t>{1, 2}));
  EXPECT_TRUE(more);
}

}  // namespace
}  // namespace keel
