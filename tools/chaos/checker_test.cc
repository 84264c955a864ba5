// The chaos checker on hand-made histories: a clean run passes, and each
// kind of broken promise is reported with its seq.

#include "tools/chaos/checker.h"

#include <gtest/gtest.h>

#include "common/client.h"
#include "tools/sql_bank.h"

namespace keel::chaos {
namespace {

bool mentions(const std::vector<Violation>& v, std::uint64_t seq, const std::string& text) {
  for (auto& x : v) {
    if (x.seq == seq && x.what.find(text) != std::string::npos) return true;
  }
  return false;
}

// Two agents, 100 each; seq 10 moved 30 from a to b and was acknowledged;
// seq 11 was rolled back.
Input cleanHistory() {
  Input in;
  in.startTotal = 200;
  auto transfer = transferOps("a:x", "b:y", 30);
  SubmitOutcome ok{10, ClientOutcome::Committed, "", {}};
  SubmitOutcome rb{11, ClientOutcome::RolledBack, "b voted no", {}};
  in.attempts = {Attempt{transfer, ok, 1, 2}, Attempt{transfer, rb, 3, 4}};
  in.branches = {AgentBranch{"a", Xid{10, 1}, BranchStatus::Committed, false},
                 AgentBranch{"b", Xid{10, 2}, BranchStatus::Committed, false},
                 AgentBranch{"a", Xid{11, 1}, BranchStatus::RolledBack, false},
                 AgentBranch{"b", Xid{11, 2}, BranchStatus::RolledBack, false}};
  AgentBooks a{"a", {{"x", AccountRecord{70, 0, false, {}}}}, 0, 0, {}};
  AgentBooks b{"b", {{"y", AccountRecord{130, 0, false, {}}}}, 0, 0, {}};
  in.books = {a, b};
  InteractionRecord committed;
  committed.seq = 10;
  committed.state = InteractionRecord::State::Committed;
  committed.branches = {InteractionRecord::Branch{"a", 1, InteractionRecord::BranchState::Committed, "", {transfer[0]}},
                        InteractionRecord::Branch{"b", 2, InteractionRecord::BranchState::Committed, "", {transfer[1]}}};
  InteractionRecord rolled;
  rolled.seq = 11;
  rolled.state = InteractionRecord::State::RolledBack;
  in.coordinator.interactions = {{10, committed}, {11, rolled}};
  RollbackRecord r;
  r.seq = 11;
  r.completedUs = 5;
  in.coordinator.rollbacks = {{11, r}};
  in.startBalances = {{"a:x", 100}, {"b:y", 100}};
  return in;
}

TEST(ChaosChecker, CleanHistoryHasNoViolations) { EXPECT_TRUE(check(cleanHistory()).empty()); }

TEST(ChaosChecker, HalfCommittedInteractionIsNotAtomic) {
  auto in = cleanHistory();
  in.branches[3].state = BranchStatus::Committed;  // seq 11: b committed, a rolled back
  in.books[1].accounts["y"].balance += 30;
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 11, "not atomic")) << v.size();
  EXPECT_TRUE(mentions(v, 11, "answered rolled back, but a branch is committed"));
  EXPECT_TRUE(mentions(v, 11, "coordinator says rolled back"));
  EXPECT_TRUE(mentions(v, 0, "money not conserved"));
}

TEST(ChaosChecker, LostAcknowledgedCommitIsReported) {
  auto in = cleanHistory();
  in.branches[1].state = BranchStatus::RolledBack;
  in.coordinator.interactions[10].state = InteractionRecord::State::RolledBack;
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 10, "acknowledged commit, but 1 of 2"));
  EXPECT_TRUE(mentions(v, 10, "the coordinator's record says rolled-back"));
}

TEST(ChaosChecker, LeftoversAreReported) {
  auto in = cleanHistory();
  in.branches.push_back(AgentBranch{"a", Xid{12, 1}, BranchStatus::Prepared, false});
  in.books[0].prepared = 1;
  in.books[0].accounts["x"].held = 5;
  in.coordinator.unfinished = 1;
  in.lowestBalanceSeen = -3;
  in.coordinator.rollbacks[11].completedUs = 0;
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 12, "left prepared"));
  EXPECT_TRUE(mentions(v, 0, "still has 1 prepared"));
  EXPECT_TRUE(mentions(v, 0, "money still held"));
  EXPECT_TRUE(mentions(v, 0, "unfinished at the coordinator"));
  EXPECT_TRUE(mentions(v, 0, "went negative during the run"));
  EXPECT_TRUE(mentions(v, 11, "rollback record not completed"));
}

TEST(ChaosChecker, CommitUnknownToTheCoordinatorIsReported) {
  auto in = cleanHistory();
  in.branches.push_back(AgentBranch{"b", Xid{13, 1}, BranchStatus::Committed, false});
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 13, "no record"));
}

TEST(ChaosChecker, HostPreparedTransactionIsReported) {
  auto in = cleanHistory();
  in.books[1].hostPrepared = {"keel:b:12:2"};
  auto v = check(in);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_TRUE(mentions(v, 0, "b's host still holds prepared transaction keel:b:12:2"));
}

// Money is conserved, but the acknowledged commit's effects are missing on
// both sides (as if both hosts had rolled their halves back).
TEST(ChaosChecker, MissingCommittedEffectsAreReportedEvenWhenMoneyIsConserved) {
  auto in = cleanHistory();
  in.books[0].accounts["x"].balance = 100;
  in.books[1].accounts["y"].balance = 100;
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 0, "account a:x holds 100, its committed history says 70"));
  EXPECT_TRUE(mentions(v, 0, "account b:y holds 100, its committed history says 130"));
  EXPECT_FALSE(mentions(v, 0, "money not conserved"));
}

// The same history with postgres agents: the coordinator's records hold the
// guarded SQL statements, which the checker reads back as debits and credits.
TEST(ChaosChecker, SqlHistoryIsReadBack) {
  auto in = cleanHistory();
  for (auto& br : in.coordinator.interactions[10].branches) br.ops = sqlbank::toSql(br.ops);
  EXPECT_TRUE(check(in).empty());
  in.books[0].accounts["x"].balance = 71;
  in.books[1].accounts["y"].balance = 129;
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 0, "account a:x holds 71, its committed history says 70"));
}

}  // namespace
}  // namespace keel::chaos
