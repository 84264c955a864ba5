// What participants answer, read defensively (coordinator/replies.h): every
// reply type with wrong counts, unknown enum values and out-of-range
// indexes is refused as MalformedReply, never read past its end; a
// well-formed one reads back exactly.

#include "coordinator/replies.h"

#include <capnp/message.h>
#include <gtest/gtest.h>

#include "common/wire.h"

namespace keel {
namespace {

void fillResults(capnp::List<wire::OpResult>::Builder l) {
  for (unsigned i = 0; i < l.size(); ++i) l[i].setBalance(100 + i);
}

TEST(Replies, PrepareVoteWithAsManyResultsAsOperationsReadsBack) {
  capnp::MallocMessageBuilder m;
  auto v = m.initRoot<wire::PrepareVote>();
  v.setVote(wire::Vote::YES);
  fillResults(v.initResults(2));
  auto r = readPrepareVote(v.asReader(), 2);
  EXPECT_EQ(r.vote, Vote::Yes);
  ASSERT_EQ(r.results.size(), 2u);
  EXPECT_EQ(r.results[1].balance, 101);
  // No results at all is allowed (an interactive commit sends no operations).
  v.initResults(0);
  EXPECT_TRUE(readPrepareVote(v.asReader(), 2).results.empty());
}

TEST(Replies, OnlyAYesVoteKeepsItsHostTxid) {
  capnp::MallocMessageBuilder m;
  auto v = m.initRoot<wire::PrepareVote>();
  v.setVote(wire::Vote::YES);
  v.setHostTxid(4711);
  EXPECT_EQ(readPrepareVote(v.asReader(), 0).hostTxid, 4711u);
  v.setVote(wire::Vote::NO);  // a NO (or read-only) has nothing to commit: its txid means nothing
  EXPECT_EQ(readPrepareVote(v.asReader(), 0).hostTxid, 0u);
  v.setVote(wire::Vote::READ_ONLY);
  EXPECT_EQ(readPrepareVote(v.asReader(), 0).hostTxid, 0u);
}

TEST(Replies, PrepareVoteWithMoreOrFewerResultsThanOperationsIsMalformed) {
  capnp::MallocMessageBuilder m;
  auto v = m.initRoot<wire::PrepareVote>();
  v.setVote(wire::Vote::YES);
  fillResults(v.initResults(3));
  EXPECT_THROW(readPrepareVote(v.asReader(), 2), MalformedReply);  // more results than operations
  EXPECT_THROW(readPrepareVote(v.asReader(), 4), MalformedReply);  // fewer
  EXPECT_THROW(readPrepareVote(v.asReader(), 0), MalformedReply);  // results for nothing sent
  v.setVote(wire::Vote::READ_ONLY);
  EXPECT_THROW(readPrepareVote(v.asReader(), 1), MalformedReply);
  // A NO vote's results mean nothing: ignored, whatever their count.
  v.setVote(wire::Vote::NO);
  EXPECT_TRUE(readPrepareVote(v.asReader(), 1).results.empty());
}

TEST(Replies, UnknownVoteIsMalformedAndAFaultIsTheItemsError) {
  capnp::MallocMessageBuilder m;
  auto v = m.initRoot<wire::PrepareVote>();
  v.setVote(static_cast<wire::Vote>(7));
  EXPECT_THROW(readPrepareVote(v.asReader(), 0), MalformedReply);
  v.setError("disk on fire");  // a fault: the vote means nothing, so it is not read
  auto r = readPrepareVote(v.asReader(), 0);
  EXPECT_EQ(r.error, "disk on fire");
}

TEST(Replies, PrepareBatchMustAnswerEveryItemExactlyOnce) {
  capnp::MallocMessageBuilder m;
  auto root = m.initRoot<wire::Participant::PrepareBatchResults>();
  auto votes = root.initVotes(2);
  votes[0].setVote(wire::Vote::YES);
  votes[1].setVote(wire::Vote::NO);
  EXPECT_EQ(readPrepareBatch(root.asReader().getVotes(), {1, 1}).size(), 2u);
  EXPECT_THROW(readPrepareBatch(root.asReader().getVotes(), {1}), MalformedReply);
  EXPECT_THROW(readPrepareBatch(root.asReader().getVotes(), {1, 1, 1}), MalformedReply);
}

TEST(Replies, PhaseTwoOutcomesMustMatchTheXidsSentAndBeKnown) {
  capnp::MallocMessageBuilder m;
  auto root = m.initRoot<wire::Participant::CommitResults>();
  auto l = root.initOutcomes(2);
  l.set(0, wire::BranchOutcome::COMMITTED);
  l.set(1, wire::BranchOutcome::CONFLICT);
  auto ok = readOutcomes(root.asReader().getOutcomes(), 2);
  EXPECT_EQ(ok[1], BranchOutcome::Conflict);
  EXPECT_THROW(readOutcomes(root.asReader().getOutcomes(), 1), MalformedReply);
  EXPECT_THROW(readOutcomes(root.asReader().getOutcomes(), 3), MalformedReply);
  l.set(1, static_cast<wire::BranchOutcome>(9));
  EXPECT_THROW(readOutcomes(root.asReader().getOutcomes(), 2), MalformedReply);
}

TEST(Replies, OnePhaseAndExecuteCheckOutcomeAndResultCounts) {
  capnp::MallocMessageBuilder m;
  auto op = m.initRoot<wire::Participant::CommitOnePhaseResults>();
  op.setOutcome(wire::BranchOutcome::COMMITTED);
  fillResults(op.initResults(1));
  EXPECT_EQ(readOnePhase(op.asReader(), 1).results.size(), 1u);
  EXPECT_THROW(readOnePhase(op.asReader(), 2), MalformedReply);
  op.setOutcome(static_cast<wire::BranchOutcome>(200));
  EXPECT_THROW(readOnePhase(op.asReader(), 1), MalformedReply);

  capnp::MallocMessageBuilder m2;
  auto ex = m2.initRoot<wire::Participant::ExecuteResults>();
  ex.setOk(true);
  fillResults(ex.initResults(5));
  EXPECT_THROW(readExecute(ex.asReader(), 2), MalformedReply);
  EXPECT_EQ(readExecute(ex.asReader(), 5).results.size(), 5u);
}

TEST(Replies, RecoveredBranchesCarryTheirStoryAndRefuseUnknownStates) {
  capnp::MallocMessageBuilder m;
  auto root = m.initRoot<wire::Participant::RecoverResults>();
  auto l = root.initBranches(1);
  l[0].initXid().setSeq(77);
  l[0].getXid().setBranch(2);
  l[0].setState(wire::BranchState::PREPARED);
  l[0].setEpoch(5);
  l[0].setCreatedAtUs(10);
  l[0].setPreparedAtUs(11);
  fillOps(l[0].initOperations(1), {Op{"bank-a", OpKind::Debit, "alice", 5}});
  auto r = readRecovered(root.asReader().getBranches());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].xid, (Xid{77, 2}));
  EXPECT_EQ(r[0].state, BranchStatus::Prepared);
  EXPECT_EQ(r[0].epoch, 5u);
  EXPECT_EQ(r[0].preparedUs, 11u);
  ASSERT_EQ(r[0].ops.size(), 1u);
  EXPECT_EQ(r[0].ops[0].account, "alice");
  l[0].setState(static_cast<wire::BranchState>(4));
  EXPECT_THROW(readRecovered(root.asReader().getBranches()), MalformedReply);
}

TEST(Replies, DeclaredStatementsReadBackAndBadOnesAreMalformed) {
  capnp::MallocMessageBuilder m;
  auto r = m.initRoot<wire::Participant::StatementsResults>();
  EXPECT_FALSE(readDeclaredStatements(r.asReader()));  // a ledger agent: no SQL at all
  r.setDeclared(true);
  auto l = r.initStatements(2);
  l[0].setName("debit");
  auto p = l[0].initParams(2);
  p.set(0, "int8");
  p.set(1, "text?");
  l[0].setExpectRows(1);
  l[1].setName("read");
  l[1].setExpectRows(-1);
  auto st = readDeclaredStatements(r.asReader());
  ASSERT_TRUE(st);
  ASSERT_EQ(st->size(), 2u);
  EXPECT_EQ(st->at("debit").params.size(), 2u);
  EXPECT_TRUE(st->at("debit").params[1].nullable);
  EXPECT_EQ(st->at("debit").expectRows, 1);
  // What validateOps makes of them is the agent's own check (checkCall).
  Op call = Op::statement("pg", "debit", {SqlValue::ofText("5"), SqlValue::ofText("bob")});
  EXPECT_EQ(*checkCall(st->at("debit"), call), "statement 'debit' parameter $1 is int8, got text");
  EXPECT_EQ(notDeclared(*st, "drop", "pg"), "statement 'drop' is not declared by agent pg (its config declares: debit, read)");
  p.set(1, "varchar");
  EXPECT_THROW(readDeclaredStatements(r.asReader()), MalformedReply);
  p.set(1, "text");
  l[1].setName("debit");
  EXPECT_THROW(readDeclaredStatements(r.asReader()), MalformedReply);  // declared twice
  l[1].setName("bad name");
  EXPECT_THROW(readDeclaredStatements(r.asReader()), MalformedReply);
  l[1].setName("read");
  l[1].setExpectRows(-2);
  EXPECT_THROW(readDeclaredStatements(r.asReader()), MalformedReply);
}

}  // namespace
}  // namespace keel
