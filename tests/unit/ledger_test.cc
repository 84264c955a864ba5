// Ledger rules, driven directly against an LMDB environment: holds, no
// overdraft, commit/rollback effects and per-branch visibility of openings;
// the in-memory hold table (kept out of the accounts tree, rebuilt from
// branch records).

#include "participant/adapters/ledger.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/unit/test_util.h"

namespace keel {
namespace {

Op open(const std::string& account, std::int64_t amount) { return Op{"", OpKind::OpenAccount, account, amount}; }
Op credit(const std::string& account, std::int64_t amount) { return Op{"", OpKind::Credit, account, amount}; }
Op debit(const std::string& account, std::int64_t amount) { return Op{"", OpKind::Debit, account, amount}; }
Op read(const std::string& account) { return Op{"", OpKind::ReadBalance, account, 0}; }

class LedgerTest : public ::testing::Test {
 protected:
  LedgerTest() : env_(dir_.path(), {}), accounts_(env_.openDb("accounts")) { holds_.rebuild({}); }

  // prepareOps in its own committed write transaction; a failed outcome
  // discards the transaction, as the ledger's contract requires.
  ledger::ExecOutcome prepare(Xid xid, const std::vector<Op>& ops) {
    auto txn = env_.beginWrite();
    auto out = ledger::prepareOps(txn, accounts_, holds_, xid, ops);
    if (out.ok) txn.commit();
    return out;
  }
  void commit(Xid xid, const std::vector<Op>& ops) {
    auto txn = env_.beginWrite();
    ledger::commitOps(txn, accounts_, holds_, xid, ops);
    txn.commit();
  }
  void rollback(Xid xid, const std::vector<Op>& ops) {
    auto txn = env_.beginWrite();
    ledger::rollbackOps(txn, accounts_, holds_, xid, ops);
    txn.commit();
  }
  std::optional<AccountRecord> account(const std::string& name) {
    auto txn = env_.beginRead();
    return ledger::readAccount(txn, accounts_, name);
  }
  // An open account with `balance`, through the normal prepare + commit.
  void fund(const std::string& name, std::int64_t balance) {
    Xid x{900000 + nextFund_++, 0};
    ASSERT_TRUE(prepare(x, {open(name, balance)}).ok);
    commit(x, {open(name, balance)});
  }
  void expectAccount(const std::string& name, std::int64_t balance, std::int64_t held) {
    auto a = account(name);
    ASSERT_TRUE(a.has_value()) << name << " missing";
    EXPECT_EQ(a->balance, balance) << name;
    EXPECT_EQ(holds_.of(name), held) << name;
    EXPECT_EQ(a->held, 0) << name << ": a hold was written to the accounts tree";
    EXPECT_FALSE(a->opening) << name;
    // The account invariant: 0 <= held <= balance.
    EXPECT_LE(0, holds_.of(name)) << name;
    EXPECT_LE(holds_.of(name), a->balance) << name;
  }
  std::string storedBytes(const std::string& name) {
    auto txn = env_.beginRead();
    auto v = txn.get(accounts_, name);
    return v ? std::string(*v) : std::string();
  }

  test::TempDir dir_;
  lmdb::Env env_;
  MDB_dbi accounts_;
  ledger::Holds holds_;
  std::uint64_t nextFund_ = 0;
};

TEST_F(LedgerTest, OpenAccountIsOpeningUntilCommit) {
  Xid x{1, 1};
  auto out = prepare(x, {open("alice", 100)});
  ASSERT_TRUE(out.ok) << out.reason;
  EXPECT_FALSE(out.readOnly);
  auto a = account("alice");
  ASSERT_TRUE(a.has_value());
  EXPECT_TRUE(a->opening);
  EXPECT_EQ(a->openedBy, x);
  EXPECT_EQ(a->balance, 0);  // the opening balance arrives with the commit
  commit(x, {open("alice", 100)});
  expectAccount("alice", 100, 0);
}

TEST_F(LedgerTest, OpeningAnExistingAccountFails) {
  fund("alice", 5);
  auto out = prepare({2, 1}, {open("alice", 1)});
  EXPECT_FALSE(out.ok);
  EXPECT_NE(out.reason.find("already exists"), std::string::npos) << out.reason;
  expectAccount("alice", 5, 0);
}

TEST_F(LedgerTest, CreditIsAppliedAtCommitOnly) {
  fund("alice", 100);
  Xid x{3, 1};
  auto out = prepare(x, {credit("alice", 50)});
  ASSERT_TRUE(out.ok) << out.reason;
  EXPECT_FALSE(out.readOnly);
  expectAccount("alice", 100, 0);
  commit(x, {credit("alice", 50)});
  expectAccount("alice", 150, 0);
}

TEST_F(LedgerTest, DebitHoldsAtPrepareAndCommitAppliesAndReleases) {
  fund("alice", 100);
  Xid x{4, 1};
  ASSERT_TRUE(prepare(x, {debit("alice", 30)}).ok);
  expectAccount("alice", 100, 30);  // balance only changes at commit
  commit(x, {debit("alice", 30)});
  expectAccount("alice", 70, 0);
}

TEST_F(LedgerTest, APrepareWritesNoAccountAndACommitWritesTheBalanceOnly) {
  fund("alice", 100);
  fund("bob", 5);
  std::string aliceBefore = storedBytes("alice"), bobBefore = storedBytes("bob");
  std::vector<Op> ops = {debit("alice", 30), credit("bob", 30)};
  ASSERT_TRUE(prepare({40, 1}, ops).ok);
  EXPECT_EQ(storedBytes("alice"), aliceBefore) << "the hold was written to the accounts tree";
  EXPECT_EQ(storedBytes("bob"), bobBefore);
  EXPECT_EQ(holds_.of("alice"), 30);
  EXPECT_EQ(holds_.total(), 30);
  commit({40, 1}, ops);
  expectAccount("alice", 70, 0);
  expectAccount("bob", 35, 0);
  EXPECT_EQ(holds_.accounts(), 0u) << "an account whose holds are all released stays in the table";
}

TEST_F(LedgerTest, HoldsAreRebuiltFromUnfinishedBranchRecords) {
  auto branch = [](std::uint64_t seq, BranchStatus st, std::vector<Op> ops) {
    BranchRecord r;
    r.xid = Xid{seq, 1};
    r.state = st;
    r.ops = std::move(ops);
    return r;
  };
  holds_.add("zed", 99);  // whatever was there goes
  holds_.rebuild({branch(1, BranchStatus::Prepared, {debit("alice", 30), credit("bob", 30), debit("alice", 5)}),
                  branch(2, BranchStatus::Active, {debit("bob", 7), read("alice")}),
                  branch(3, BranchStatus::Committed, {debit("alice", 1000)}),
                  branch(4, BranchStatus::RolledBack, {debit("carol", 1000)})});
  EXPECT_EQ(holds_.of("alice"), 35);
  EXPECT_EQ(holds_.of("bob"), 7);
  EXPECT_EQ(holds_.of("carol"), 0);
  EXPECT_EQ(holds_.of("zed"), 0);
  EXPECT_EQ(holds_.total(), 42);
}

TEST_F(LedgerTest, AStaleTableIsRebuiltByTheNextRefreshOnly) {
  int fetched = 0;
  auto fetch = [&]() {
    ++fetched;
    BranchRecord r;
    r.xid = Xid{1, 1};
    r.state = BranchStatus::Prepared;
    r.ops = {debit("alice", 12)};
    return std::vector<BranchRecord>{r};
  };
  holds_.refresh(fetch);
  EXPECT_EQ(fetched, 0) << "a table that is not stale was rebuilt";
  holds_.add("alice", 500);  // out of step, as after a rolled-back job
  holds_.markStale();
  holds_.refresh(fetch);
  EXPECT_EQ(fetched, 1);
  EXPECT_EQ(holds_.of("alice"), 12);
  holds_.refresh(fetch);
  EXPECT_EQ(fetched, 1);
}

TEST_F(LedgerTest, ReleasingMoreThanIsHeldIsRefused) {
  holds_.add("alice", 10);
  EXPECT_THROW(holds_.release("alice", 11), std::logic_error);
  EXPECT_THROW(holds_.release("bob", 1), std::logic_error);
  EXPECT_EQ(holds_.of("alice"), 10) << "a refused release changed the table";
  holds_.release("alice", 10);
  EXPECT_EQ(holds_.of("alice"), 0);
}

TEST_F(LedgerTest, NoOverdraft) {
  fund("alice", 100);
  auto out = prepare({5, 1}, {debit("alice", 101)});
  EXPECT_FALSE(out.ok);
  EXPECT_NE(out.reason.find("insufficient funds in alice"), std::string::npos) << out.reason;
  EXPECT_NE(out.reason.find("available 100"), std::string::npos) << out.reason;
  expectAccount("alice", 100, 0);
  // Exactly the balance is fine.
  EXPECT_TRUE(prepare({5, 2}, {debit("alice", 100)}).ok);
  expectAccount("alice", 100, 100);
}

TEST_F(LedgerTest, HoldsReduceWhatOtherBranchesMayDebit) {
  fund("alice", 100);
  ASSERT_TRUE(prepare({6, 1}, {debit("alice", 60)}).ok);
  auto no = prepare({6, 2}, {debit("alice", 50)});
  EXPECT_FALSE(no.ok);
  EXPECT_NE(no.reason.find("available 40"), std::string::npos) << no.reason;
  ASSERT_TRUE(prepare({6, 3}, {debit("alice", 40)}).ok);
  expectAccount("alice", 100, 100);
  auto r = prepare({6, 4}, {read("alice")});
  ASSERT_TRUE(r.ok);
  EXPECT_TRUE(r.readOnly);
  ASSERT_EQ(r.results.size(), 1u);
  EXPECT_EQ(r.results[0].balance, 100);
  EXPECT_EQ(r.results[0].available, 0);
}

TEST_F(LedgerTest, SeveralDebitsInOneBranchCountTheirOwnHolds) {
  fund("alice", 100);
  auto out = prepare({7, 1}, {debit("alice", 60), debit("alice", 50)});
  EXPECT_FALSE(out.ok);
  expectAccount("alice", 100, 0);  // the transaction was discarded whole, its first hold released
  ASSERT_TRUE(prepare({7, 2}, {debit("alice", 60), debit("alice", 40), read("alice")}).ok);
  expectAccount("alice", 100, 100);
}

TEST_F(LedgerTest, RollbackReleasesHoldsAndAppliesNothing) {
  fund("alice", 100);
  fund("bob", 0);
  std::vector<Op> ops = {debit("alice", 30), credit("bob", 30)};
  ASSERT_TRUE(prepare({8, 1}, ops).ok);
  expectAccount("alice", 100, 30);
  rollback({8, 1}, ops);
  expectAccount("alice", 100, 0);
  expectAccount("bob", 0, 0);
}

TEST_F(LedgerTest, TransferCommitMovesMoneyExactlyOnce) {
  fund("alice", 100);
  fund("bob", 10);
  std::vector<Op> ops = {debit("alice", 30), credit("bob", 30)};
  ASSERT_TRUE(prepare({9, 1}, ops).ok);
  commit({9, 1}, ops);
  expectAccount("alice", 70, 0);
  expectAccount("bob", 40, 0);
}

TEST_F(LedgerTest, OpeningAccountIsInvisibleToOtherBranchesUntilCommit) {
  Xid opener{10, 1}, other{10, 2};
  ASSERT_TRUE(prepare(opener, {open("carol", 0)}).ok);
  auto c = prepare(other, {credit("carol", 5)});
  EXPECT_FALSE(c.ok);
  EXPECT_NE(c.reason.find("unknown account carol"), std::string::npos) << c.reason;
  EXPECT_FALSE(prepare(other, {read("carol")}).ok);
  EXPECT_FALSE(prepare(other, {debit("carol", 1)}).ok);
  auto o = prepare(other, {open("carol", 0)});
  EXPECT_FALSE(o.ok);  // and nobody else may open it meanwhile
  // The opening branch itself may use it.
  ASSERT_TRUE(prepare(opener, {credit("carol", 7)}).ok);
  commit(opener, {open("carol", 0), credit("carol", 7)});
  expectAccount("carol", 7, 0);
  EXPECT_TRUE(prepare(other, {credit("carol", 5)}).ok);
}

TEST_F(LedgerTest, RollbackOfAnOpenDeletesTheAccount) {
  Xid x{11, 1};
  ASSERT_TRUE(prepare(x, {open("dave", 50)}).ok);
  // A rollback by another branch does not touch it.
  rollback({11, 2}, {open("dave", 50)});
  ASSERT_TRUE(account("dave").has_value());
  rollback(x, {open("dave", 50)});
  EXPECT_FALSE(account("dave").has_value());
  // The name is free again.
  EXPECT_TRUE(prepare({11, 3}, {open("dave", 1)}).ok);
}

TEST_F(LedgerTest, RollbackOfAnOpenDoesNotDeleteAnOpenAccount) {
  fund("erin", 10);
  rollback({12, 1}, {open("erin", 10)});
  expectAccount("erin", 10, 0);
}

TEST_F(LedgerTest, UnknownAccountIsRefused) {
  auto out = prepare({13, 1}, {debit("nobody", 1)});
  EXPECT_FALSE(out.ok);
  EXPECT_NE(out.reason.find("unknown account nobody"), std::string::npos) << out.reason;
}

TEST_F(LedgerTest, CheckOpRejectsMalformedOperations) {
  EXPECT_FALSE(ledger::checkOp(credit("alice", 1)).has_value());
  EXPECT_FALSE(ledger::checkOp(open("alice", 0)).has_value());
  EXPECT_FALSE(ledger::checkOp(read("alice")).has_value());
  EXPECT_FALSE(ledger::checkOp(debit(std::string(Limits::kMaxAccountName, 'a'), 1)).has_value());
  EXPECT_FALSE(ledger::checkOp(credit("alice", Limits::kMaxAmount)).has_value());

  auto expectBad = [](const Op& op, const std::string& words) {
    auto r = ledger::checkOp(op);
    ASSERT_TRUE(r.has_value()) << opKindName(op.kind) << " " << op.account << " " << op.amount << " accepted";
    EXPECT_NE(r->find(words), std::string::npos) << *r;
  };
  expectBad(credit("", 1), "empty");
  expectBad(debit(std::string(Limits::kMaxAccountName + 1, 'a'), 1), "longer than 128");
  expectBad(credit("alice", 0), "must be positive");
  expectBad(debit("alice", 0), "must be positive");
  expectBad(debit("alice", -5), "must be positive");
  expectBad(credit("alice", Limits::kMaxAmount + 1), "exceeds the limit");
  expectBad(debit("alice", Limits::kMaxAmount + 1), "exceeds the limit");
  expectBad(open("alice", Limits::kMaxAmount + 1), "exceeds the limit");
  expectBad(open("alice", -1), "negative");
  expectBad(Op{"", OpKind::Sql, "alice", 1}, "does not run SQL");
  expectBad(Op{"", OpKind(5), "alice", 1}, "unknown operation kind 5");
  expectBad(Op{"", OpKind(255), "alice", 1}, "unknown operation kind");
}

TEST_F(LedgerTest, PrepareRefusesMalformedOperationsBeforeWriting) {
  fund("alice", 100);
  auto out = prepare({14, 1}, {debit("alice", 10), credit("alice", -1)});
  EXPECT_FALSE(out.ok);
  EXPECT_NE(out.reason.find("must be positive"), std::string::npos) << out.reason;
  expectAccount("alice", 100, 0);
}

TEST_F(LedgerTest, ReadOnlyOutcomeReportsBalanceAndAvailable) {
  fund("alice", 100);
  ASSERT_TRUE(prepare({15, 1}, {debit("alice", 25)}).ok);
  auto out = prepare({15, 2}, {read("alice"), read("alice")});
  ASSERT_TRUE(out.ok);
  EXPECT_TRUE(out.readOnly);
  ASSERT_EQ(out.results.size(), 2u);
  EXPECT_EQ(out.results[1].balance, 100);
  EXPECT_EQ(out.results[1].available, 75);
  auto mixed = prepare({15, 3}, {read("alice"), credit("alice", 1)});
  ASSERT_TRUE(mixed.ok);
  EXPECT_FALSE(mixed.readOnly);
}

}  // namespace
}  // namespace keel
