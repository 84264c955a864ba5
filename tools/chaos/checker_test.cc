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

bool hasKind(const std::vector<Violation>& v, ViolationKind k, std::uint64_t seq) {
  for (auto& x : v) {
    if (x.kind == k && x.seq == seq) return true;
  }
  return false;
}

std::string dump(const std::vector<Violation>& v) {
  std::string out;
  for (auto& x : v) out += std::string("\n  [") + violationKindName(x.kind) + "] " + seqText(x.seq) + ": " + x.what;
  return out;
}

using IState = InteractionRecord::State;
using BState = InteractionRecord::BranchState;

SubmitOutcome outcome(std::uint64_t seq, ClientOutcome o, std::string reason = "") {
  SubmitOutcome out;
  out.seq = seq;
  out.outcome = o;
  out.reason = std::move(reason);
  return out;
}

// A one-shot request answered at once (no request id).
Attempt attempt(std::vector<Op> ops, SubmitOutcome answer, Micros startUs, Micros endUs) {
  Attempt a;
  a.ops = std::move(ops);
  a.answer = std::move(answer);
  a.startUs = startUs;
  a.endUs = endUs;
  return a;
}

// Two agents, 100 each; seq 10 moved 30 from a to b and was acknowledged;
// seq 11 was rolled back.
Input cleanHistory() {
  Input in;
  in.startTotal = 200;
  auto transfer = transferOps("a:x", "b:y", 30);
  in.attempts = {attempt(transfer, outcome(10, ClientOutcome::Committed), 1, 2),
                 attempt(transfer, outcome(11, ClientOutcome::RolledBack, "b voted no"), 3, 4)};
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
  EXPECT_TRUE(hasKind(v, ViolationKind::NotAtomic, 11));
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

// b is a host agent: its host's keys against the coordinator's records.
TEST(ChaosChecker, HostKeysAgainstTheRecords) {
  auto in = cleanHistory();
  auto transfer = transferOps("a:x", "b:y", 30);
  in.coordinator.interactions[11].branches = {
      InteractionRecord::Branch{"b", 2, InteractionRecord::BranchState::RolledBack, "", {transfer[1]}}};
  std::string committedKey = Xid{10, 2}.str() + "/0", rolledKey = Xid{11, 2}.str() + "/0";
  in.hostKeys["b"] = {{committedKey, "confirmed"}, {rolledKey, "cancelled"}};
  EXPECT_TRUE(check(in).empty()) << dump(check(in));

  in.hostKeys["b"][committedKey] = "cancelled";
  in.hostKeys["b"][rolledKey] = "confirmed";
  std::string stray = Xid{99, 1}.str() + "/0";
  in.hostKeys["b"][stray] = "confirmed";
  auto v = check(in);
  EXPECT_TRUE(hasKind(v, ViolationKind::CommitNotKept, 10)) << dump(v);
  EXPECT_TRUE(mentions(v, 10, "key " + committedKey + " at b's host is cancelled"));
  EXPECT_TRUE(hasKind(v, ViolationKind::RollbackNotKept, 11)) << dump(v);
  EXPECT_TRUE(mentions(v, 0, "key " + stray + " is confirmed at b's host, but no finished interaction has it"));
  EXPECT_EQ(v.size(), 3u) << dump(v);
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

// ------------------------------------------------------------ request ids

// The clean history with request ids: seq 10's first try was lost, its retry
// (same id) replayed seq 10's commit; seq 11 was answered at once.
Input withRequestIds() {
  auto in = cleanHistory();
  in.attempts[0].requestId = "r-10";
  SubmitOutcome replay = *in.attempts[0].answer;
  replay.replayed = true;
  in.attempts[0].tries = {Try{1, std::nullopt}, Try{2, replay}};
  in.attempts[0].answer = replay;
  in.attempts[1].requestId = "r-11";
  in.attempts[1].tries = {Try{3, in.attempts[1].answer}};
  in.coordinator.interactions[10].requestId = "r-10";
  in.coordinator.interactions[11].requestId = "r-11";
  in.coordinator.requests = {{"r-10", 10}, {"r-11", 11}};
  return in;
}

TEST(ChaosChecker, RetriedRequestThatReplayedItsSeqIsClean) {
  auto v = check(withRequestIds());
  EXPECT_TRUE(v.empty()) << dump(v);
}

// The same request id committed twice: the retry ran anew (seq 14) although
// the first try (seq 10) had committed.
TEST(ChaosChecker, RequestIdCommittedTwiceIsReported) {
  auto in = withRequestIds();
  auto again = outcome(14, ClientOutcome::Committed);
  in.attempts[0].tries = {Try{1, outcome(10, ClientOutcome::Committed)}, Try{2, again}};
  in.attempts[0].answer = again;
  auto second = in.coordinator.interactions[10];
  second.seq = 14;
  in.coordinator.interactions[14] = second;
  auto v = check(in);
  EXPECT_TRUE(hasKind(v, ViolationKind::RequestCommittedTwice, 14)) << dump(v);
  EXPECT_TRUE(mentions(v, 14, "request id r-10 committed more than once: seqs 0:10 (a debit, b credit), 0:14 (a debit, "
                              "b credit)"));
}

// Seen from the coordinator's records alone (the client heard one seq).
TEST(ChaosChecker, RequestIdCommittedTwiceInTheRecordsIsReported) {
  auto in = withRequestIds();
  auto second = in.coordinator.interactions[10];
  second.seq = 15;
  in.coordinator.interactions[15] = second;
  auto v = check(in);
  EXPECT_TRUE(hasKind(v, ViolationKind::RequestCommittedTwice, 15)) << dump(v);
}

TEST(ChaosChecker, ReplayNamingAnotherSeqThanTheRequestsTableIsReported) {
  auto in = withRequestIds();
  in.coordinator.requests["r-10"] = 16;
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 10, "a retry of request id r-10 was answered as seq 0:10, but the coordinator's requests "
                              "table names seq 0:16"))
      << dump(v);
  EXPECT_TRUE(
      mentions(v, 10, "request id r-10 committed as seq 0:10, but the coordinator's requests table names seq 0:16"));
  for (auto& x : v) EXPECT_EQ(x.kind, ViolationKind::AnswerDisagrees) << dump(v);
}

TEST(ChaosChecker, LastAnswerNotInTheRequestsTableIsReported) {
  auto in = withRequestIds();
  in.coordinator.requests["r-11"] = 0;  // the rolled-back answer's row is missing
  auto v = check(in);
  ASSERT_EQ(v.size(), 1u) << dump(v);
  EXPECT_TRUE(hasKind(v, ViolationKind::AnswerDisagrees, 11));
  EXPECT_TRUE(
      mentions(v, 11, "was last answered as seq 0:11 (rolled-back), but the coordinator's requests table names none"));
}

TEST(ChaosChecker, OneRequestIdAnsweredWithTwoSeqsIsReported) {
  auto in = withRequestIds();
  in.attempts[1].tries.insert(in.attempts[1].tries.begin(),
                              Try{3, outcome(17, ClientOutcome::RolledBack)});
  in.coordinator.interactions[17] = in.coordinator.interactions[11];
  in.coordinator.interactions[17].seq = 17;
  in.coordinator.rollbacks[17] = in.coordinator.rollbacks[11];
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 17, "request id r-11 was answered with several seqs: 0:11, 0:17")) << dump(v);
}

// ------------------------------------------------------------ in doubt

// Agent a also holds x2 (100); seq 12, a one-phase move of 5 from a:x to
// a:x2, was answered "in doubt" and then ended as `state` at the coordinator
// and `branch` at agent a.
Input withInDoubt(IState state, BranchStatus branch) {
  auto in = cleanHistory();
  in.startTotal += 100;
  in.startBalances["a:x2"] = 100;
  auto ops = transferOps("a:x", "a:x2", 5);
  in.attempts.push_back(attempt(ops, outcome(12, ClientOutcome::InDoubt, "one-phase call to a failed"), 5, 6));
  in.branches.push_back(AgentBranch{"a", Xid{12, 1}, branch, false});
  InteractionRecord r;
  r.seq = 12;
  r.onePhase = true;
  r.state = state;
  r.branches = {InteractionRecord::Branch{"a", 1, BState::Committed, "", ops}};
  in.coordinator.interactions[12] = r;
  RollbackRecord rb;
  rb.seq = 12;
  rb.completedUs = 7;
  in.coordinator.rollbacks[12] = rb;
  bool moved = branch == BranchStatus::Committed;
  in.books[0].accounts["x"].balance -= moved ? 5 : 0;
  in.books[0].accounts["x2"] = AccountRecord{moved ? 105 : 100, 0, false, {}};
  return in;
}

TEST(ChaosChecker, InDoubtThatEndedCommittedEverywhereIsClean) {
  auto v = check(withInDoubt(IState::Committed, BranchStatus::Committed));
  EXPECT_TRUE(v.empty()) << dump(v);
}

TEST(ChaosChecker, InDoubtThatEndedRolledBackEverywhereIsClean) {
  auto in = withInDoubt(IState::RolledBack, BranchStatus::RolledBack);
  in.coordinator.interactions[12].branches[0].state = BState::RolledBack;
  auto v = check(in);
  EXPECT_TRUE(v.empty()) << dump(v);
}

TEST(ChaosChecker, InDoubtStillUndecidedIsReported) {
  auto in = withInDoubt(IState::Aborting, BranchStatus::RolledBack);
  auto v = check(in);
  EXPECT_TRUE(hasKind(v, ViolationKind::InDoubtUnresolved, 12)) << dump(v);
  EXPECT_TRUE(mentions(v, 12, "answered in doubt, and the coordinator's record says aborting after healing"));
}

TEST(ChaosChecker, InDoubtWhoseAgentDisagreesIsReported) {
  // The coordinator says committed, the agent rolled its branch back: the
  // books follow the agent, so money is conserved, but the in-doubt answer
  // ended two ways.
  auto in = withInDoubt(IState::Committed, BranchStatus::RolledBack);
  auto v = check(in);
  EXPECT_TRUE(hasKind(v, ViolationKind::InDoubtUnresolved, 12)) << dump(v);
  EXPECT_TRUE(mentions(v, 12, "answered in doubt, ended committed, but 0:12.1 at a is rolled-back"));
}

// ------------------------------------------------------------ heuristic, interactive

TEST(ChaosChecker, HeuristicOutcomeIsAViolationUnlessCausedOnPurpose) {
  auto in = cleanHistory();
  in.coordinator.interactions[11].state = IState::HeuristicMixed;
  in.coordinator.interactions[11].error = "heuristic-mixed: decision abort, branches ended a committed, b rolled-back";
  in.attempts[1].answer->outcome = ClientOutcome::HeuristicMixed;
  auto v = check(in);
  EXPECT_TRUE(hasKind(v, ViolationKind::Heuristic, 11)) << dump(v);
  EXPECT_TRUE(mentions(v, 11, "a client was answered heuristic-mixed"));
  EXPECT_TRUE(mentions(v, 11, "interaction ended heuristic-mixed"));
  in.heuristicExpected = true;
  v = check(in);
  EXPECT_FALSE(hasKind(v, ViolationKind::Heuristic, 11)) << dump(v);
  EXPECT_FALSE(mentions(v, 11, "coordinator says rolled back")) << dump(v);
}

// An interactive transaction dropped before commit must end rolled back.
TEST(ChaosChecker, DroppedTransactionThatCommittedIsReported) {
  auto in = cleanHistory();
  Attempt dropped;
  dropped.mix = Mix::Interactive;
  dropped.end = ClientEnd::Drop;
  dropped.dropped = true;
  dropped.ops = in.attempts[1].ops;
  dropped.seq = 11;
  in.attempts = {in.attempts[0], dropped};
  EXPECT_TRUE(check(in).empty()) << dump(check(in));
  in.attempts[1].seq = 10;  // as if the dropped one had been seq 10, which committed
  auto v = check(in);
  EXPECT_TRUE(hasKind(v, ViolationKind::RollbackNotKept, 10)) << dump(v);
  EXPECT_TRUE(mentions(v, 10, "interactive transaction dropped before commit, but its record says committed"));
}

// ------------------------------------------------------------ a coordinator cluster

// The request-id history in a cluster: seq 10 (node 1) committed; its
// request id was retried through node 2, whose own interaction (seq
// 2^48 + 5) found the id taken in etcd, was rolled back, and answered with
// seq 10 (a replay). Each coordinator's table names its own seq. etcd
// holds seq 10's COMMIT and the id's fate.
constexpr std::uint64_t kNode2Seq = (std::uint64_t(2) << 48) + 5;

EtcdRequestFate fate(std::string value, std::uint64_t seq, bool committed) {
  EtcdRequestFate f;
  f.value = std::move(value);
  f.seq = seq;
  f.committed = committed;
  return f;
}

Input inCluster() {
  auto in = withRequestIds();
  in.coordinator.requests.clear();
  in.coordinator.requestRows = {{"r-10", {10, kNode2Seq}}, {"r-11", {11}}};
  InteractionRecord retry = in.coordinator.interactions[11];
  retry.seq = kNode2Seq;
  retry.requestId = "r-10";
  in.coordinator.interactions[kNode2Seq] = retry;
  in.coordinator.rollbacks[kNode2Seq] = in.coordinator.rollbacks[11];
  in.branches.push_back(AgentBranch{"a", Xid{kNode2Seq, 1}, BranchStatus::RolledBack, false});
  EtcdView etcd;
  EtcdDecision commit;
  commit.key = "/keel/decisions/1/00000000000000000010";
  commit.value = "commit by=1 epoch=3 branches=a:1,b:2";
  commit.commit = true;
  commit.branches = {{"a", 1}, {"b", 2}};
  etcd.decisions[10] = commit;
  EtcdDecision abort;
  abort.key = "/keel/decisions/1/00000000000000000011";
  abort.value = "abort by=2 epoch=4";
  etcd.decisions[11] = abort;
  etcd.requests["r-10"] = fate("10", 10, true);
  etcd.requests["r-11"] = fate("abort 11", 11, false);
  in.etcd = etcd;
  return in;
}

TEST(ChaosCheckerCluster, CleanClusterHistoryHasNoViolations) {
  auto v = check(inCluster());
  EXPECT_TRUE(v.empty()) << dump(v);
}

TEST(ChaosCheckerCluster, DecisionsAgainstTheAgents) {
  auto in = inCluster();
  in.etcd->decisions[11].value = "commit by=1 epoch=3 branches=a:1,b:2";  // but seq 11 was rolled back
  in.etcd->decisions[11].commit = true;
  in.etcd->decisions[11].branches = {{"a", 1}, {"b", 2}};
  in.etcd->decisions[10].value = "abort by=2 epoch=4";  // but seq 10 committed
  in.etcd->decisions[10].commit = false;
  in.etcd->decisions[10].branches.clear();
  auto v = check(in);
  EXPECT_TRUE(hasKind(v, ViolationKind::EtcdDisagrees, 11)) << dump(v);
  EXPECT_TRUE(mentions(v, 11, "but 0:11.1 at a is rolled-back")) << dump(v);
  EXPECT_TRUE(mentions(v, 11, "the coordinator's record says rolled-back")) << dump(v);
  EXPECT_TRUE(mentions(v, 10, "but 0:10.1 at a is committed")) << dump(v);
  EXPECT_TRUE(mentions(v, 10, "the coordinator's record says committed")) << dump(v);
  for (auto& x : v) EXPECT_EQ(x.kind, ViolationKind::EtcdDisagrees) << dump(v);
}

TEST(ChaosCheckerCluster, ACommitListingABranchNoAgentKnowsIsReported) {
  auto in = inCluster();
  in.etcd->decisions[10].branches.push_back({"c", 3});
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 10, "c has no record of its branch 0:10.3")) << dump(v);
}

TEST(ChaosCheckerCluster, AChangedOrMalformedDecisionIsReported) {
  auto in = inCluster();
  in.etcd->decisions[10].laterValue = "abort by=2 epoch=4";
  EtcdDecision junk;
  junk.key = "/keel/decisions/1/00000000000000000012";
  junk.value = "maybe";
  junk.malformed = true;
  in.etcd->decisions[12] = junk;
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 10, "and later as 'abort by=2 epoch=4'")) << dump(v);
  EXPECT_TRUE(mentions(v, 12, "malformed decision in etcd")) << dump(v);
}

TEST(ChaosCheckerCluster, RequestFatesAgainstTheRecords) {
  auto in = inCluster();
  in.etcd->requests["r-10"] = fate("abort 10", 10, false);  // but seq 10 committed
  in.etcd->requests["r-11"] = fate("11", 11, true);        // but seq 11 was rolled back
  auto v = check(in);
  EXPECT_TRUE(mentions(v, 10, "etcd says request id r-10 was rolled back as seq 0:10, but seq 0:10 of that request id "
                              "committed"))
      << dump(v);
  EXPECT_TRUE(mentions(v, 11, "etcd says request id r-11 committed as seq 0:11, but the coordinator's record of it "
                              "says rolled-back"))
      << dump(v);
}

// A retry through node 2 committed the request a second time.
TEST(ChaosCheckerCluster, ARequestCommittedOnTwoCoordinatorsIsReported) {
  auto in = inCluster();
  auto& again = in.coordinator.interactions[kNode2Seq];
  again = in.coordinator.interactions[10];
  again.seq = kNode2Seq;
  in.coordinator.rollbacks.erase(kNode2Seq);
  in.branches.back().state = BranchStatus::Committed;
  auto v = check(in);
  EXPECT_TRUE(hasKind(v, ViolationKind::RequestCommittedTwice, kNode2Seq)) << dump(v);
  EXPECT_TRUE(
      mentions(v, kNode2Seq, "etcd says request id r-10 committed as seq 0:10, but seq 2:5 of that request id "
                             "committed"))
      << dump(v);
}

// The client heard "rolled back" for a request that committed through
// another coordinator.
TEST(ChaosCheckerCluster, ARolledBackAnswerForACommittedRequestIsReported) {
  auto in = inCluster();
  auto told = outcome(kNode2Seq, ClientOutcome::RolledBack);
  in.attempts[0].tries = {Try{1, std::nullopt}, Try{2, told}};
  in.attempts[0].answer = told;
  auto v = check(in);
  EXPECT_TRUE(
      mentions(v, kNode2Seq, "request id r-10 committed as seq 0:10, but a try was answered rolled-back as seq 2:5"))
      << dump(v);
}

// ------------------------------------------------------------ the self-check's verdict

TEST(ChaosSelfCheck, PassesOnlyOnThePlantedViolation) {
  // What the break does: bank-1 commits what it was told to roll back.
  std::vector<Violation> planted = {
      {11, "not atomic: ...", ViolationKind::NotAtomic},
      {11, "answered rolled back, but a branch is committed at an agent", ViolationKind::RollbackNotKept},
      {11, "coordinator says rolled back, but a branch is committed at an agent", ViolationKind::CoordinatorDisagrees},
      {0, "money not conserved: ...", ViolationKind::Money},
      {0, "account a:x holds ...", ViolationKind::AccountHistory}};
  EXPECT_TRUE(judgeSelfCheck(planted).passed) << judgeSelfCheck(planted).why;

  EXPECT_FALSE(judgeSelfCheck({}).passed);
  // Some violation, but not the planted one.
  auto noAtomicity = judgeSelfCheck({{0, "money not conserved", ViolationKind::Money}});
  EXPECT_FALSE(noAtomicity.passed);
  EXPECT_NE(noAtomicity.why.find("did not report the planted break"), std::string::npos) << noAtomicity.why;
  // The planted one, and one the break does not cause.
  auto extra = planted;
  extra.push_back({12, "answered in doubt, and ...", ViolationKind::InDoubtUnresolved});
  auto mixed = judgeSelfCheck(extra);
  EXPECT_FALSE(mixed.passed);
  EXPECT_NE(mixed.why.find("[in-doubt-unresolved] seq 0:12"), std::string::npos) << mixed.why;
}

TEST(ChaosSelfCheck, InAClusterThePlantedDecisionMustBeFoundToo) {
  std::vector<Violation> planted = {{11, "not atomic: ...", ViolationKind::NotAtomic},
                                    {13, "etcd holds 'abort by=2 epoch=4' for seq 13, but ...",
                                     ViolationKind::EtcdDisagrees}};
  EXPECT_TRUE(judgeSelfCheck(planted, 10).passed == false);
  auto missing = judgeSelfCheck(planted, 10);
  EXPECT_NE(missing.why.find("did not report the ABORT planted in etcd for committed seq 0:10"), std::string::npos)
      << missing.why;
  planted.push_back({10, "etcd holds 'abort by=1 epoch=1' for seq 10, but ...", ViolationKind::EtcdDisagrees});
  EXPECT_TRUE(judgeSelfCheck(planted, 10).passed) << judgeSelfCheck(planted, 10).why;
  // Without a plant (one coordinator) etcd violations are not the break's.
  EXPECT_FALSE(judgeSelfCheck(planted).passed);
}

}  // namespace
}  // namespace keel::chaos
