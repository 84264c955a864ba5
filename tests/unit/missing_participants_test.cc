// Coordinator::refuseMissingParticipants: a start is refused only when an
// unfinished interaction still has to call a participant the config lacks,
// and the refusal names each such participant with its seqs.

#include <gtest/gtest.h>
#include <kj/async-io.h>

#include <filesystem>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/seq.h"
#include "coordinator/coordinator.h"
#include "tests/unit/test_util.h"

namespace keel {
namespace {

using BState = InteractionRecord::BranchState;

WalStore::Unfinished record(std::uint64_t seq, std::vector<std::pair<std::string, BState>> branches,
                            InteractionRecord::Decision decision = InteractionRecord::Decision::Commit) {
  WalStore::Unfinished u;
  u.interaction.seq = seq;
  u.interaction.decision = decision;
  u.interaction.state = decision == InteractionRecord::Decision::Commit ? InteractionRecord::State::Committing
                                                                         : InteractionRecord::State::Aborting;
  std::uint16_t n = 0;
  for (auto& [participant, state] : branches) {
    InteractionRecord::Branch b;
    b.participant = participant;
    b.branch = n++;
    b.state = state;
    u.interaction.branches.push_back(std::move(b));
  }
  return u;
}

// Runs the check with `known` as the config's participants; "" if it
// passed, else the refusal's text.
std::string refusal(const std::vector<WalStore::Unfinished>& unfinished, std::set<std::string> known,
                    const std::map<std::uint64_t, ClusterDecision>& etcdCommits = {}) {
  try {
    Coordinator::refuseMissingParticipants(
        unfinished, [&](const std::string& n) { return known.count(n) != 0; }, etcdCommits);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(MissingParticipants, APreparedBranchAtAMissingParticipantRefusesNamingItAndTheSeq) {
  auto seq = makeSeq(1, 42);
  auto text = refusal({record(seq, {{"bank-a", BState::Committed}, {"bank-b", BState::Prepared}})}, {"bank-a"});
  EXPECT_NE(text.find("'bank-b' (1 unfinished: " + seqText(seq) + ")"), std::string::npos) << text;
  EXPECT_EQ(text.find("'bank-a'"), std::string::npos) << text;
  EXPECT_NE(text.find("nothing was started or changed"), std::string::npos) << text;
}

TEST(MissingParticipants, ABranchAlreadySettledThereNeedsNothingFromIt) {
  // Phase 2 still has to reach bank-a; bank-b's branch is committed.
  EXPECT_EQ(refusal({record(makeSeq(1, 7), {{"bank-a", BState::Prepared}, {"bank-b", BState::Committed}})},
                    {"bank-a"}),
            "");
  // Rolled back, voted no, read-only: nothing to call either.
  EXPECT_EQ(refusal({record(makeSeq(1, 8),
                            {{"bank-a", BState::Prepared}, {"bank-b", BState::VotedNo}, {"bank-c", BState::ReadOnly},
                             {"bank-d", BState::RolledBack}},
                            InteractionRecord::Decision::Abort)},
                    {"bank-a"}),
            "");
  EXPECT_EQ(refusal({}, {}), "");
}

TEST(MissingParticipants, TheRollbackRecordsPendingParticipantsAreNeeded) {
  auto u = record(makeSeq(1, 9), {{"bank-a", BState::RolledBack}, {"bank-b", BState::RolledBack}},
                  InteractionRecord::Decision::Abort);
  u.rollback.emplace();
  u.rollback->seq = u.interaction.seq;
  u.rollback->pending = {"bank-b"};
  auto text = refusal({u}, {"bank-a"});
  EXPECT_NE(text.find("'bank-b' (1 unfinished: " + seqText(u.interaction.seq) + ")"), std::string::npos) << text;
}

TEST(MissingParticipants, AStagedRecordWithoutADecisionNeedsEveryParticipant) {
  // Its votes are read back from every participant it names, whatever
  // state its branches were in when it was written.
  auto u = record(makeSeq(1, 10), {{"bank-a", BState::Pending}, {"bank-b", BState::VotedNo}},
                  InteractionRecord::Decision::None);
  u.interaction.state = InteractionRecord::State::Preparing;
  u.interaction.staged = true;
  ASSERT_TRUE(u.interaction.stagedUndecided());
  auto text = refusal({u}, {"bank-a"});
  EXPECT_NE(text.find("'bank-b'"), std::string::npos) << text;
}

TEST(MissingParticipants, ManySeqsAreCountedAndTheFirstFiveListed) {
  std::vector<WalStore::Unfinished> all;
  for (std::uint64_t i = 1; i <= 8; ++i) all.push_back(record(makeSeq(1, i), {{"bank-c", BState::Prepared}}));
  all.push_back(record(makeSeq(1, 20), {{"bank-d", BState::Failed}}));
  auto text = refusal(all, {"bank-a"});
  EXPECT_NE(text.find("'bank-c' (8 unfinished: " + seqText(makeSeq(1, 1)) + ", " + seqText(makeSeq(1, 2))),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(seqText(makeSeq(1, 5)) + " and 3 more)"), std::string::npos) << text;
  EXPECT_EQ(text.find(seqText(makeSeq(1, 6))), std::string::npos) << text;
  EXPECT_NE(text.find("'bank-d' (1 unfinished: " + seqText(makeSeq(1, 20)) + ")"), std::string::npos) << text;
}

// A cluster member: etcd's COMMITs that its recovery will redrive need
// every branch's participant, as the WAL's records do; an ABORT needs none
// (presumed abort: nothing is redriven for it). A seq both places name is
// counted once.
TEST(MissingParticipants, EtcdCommitsToRedriveNeedEveryParticipantTheyName) {
  ClusterDecision commit;
  commit.commit = true;
  commit.branches = {{"bank-a", 0}, {"bank-b", 1}};
  ClusterDecision abort;
  abort.branches = {{"bank-c", 0}};
  auto seq = makeSeq(1, 9), aborted = makeSeq(1, 10), both = makeSeq(1, 11);
  auto text = refusal({}, {"bank-a"}, {{seq, commit}, {aborted, abort}});
  EXPECT_NE(text.find("etcd's COMMIT decisions of this node hold"), std::string::npos) << text;
  EXPECT_NE(text.find("'bank-b' (1 unfinished: " + seqText(seq) + ")"), std::string::npos) << text;
  EXPECT_EQ(text.find("bank-c"), std::string::npos) << text;
  EXPECT_EQ(refusal({}, {"bank-a", "bank-b"}, {{seq, commit}, {aborted, abort}}), "");
  text = refusal({record(both, {{"bank-b", BState::Prepared}})}, {"bank-a"}, {{both, commit}, {seq, commit}});
  EXPECT_NE(text.find("the WAL and etcd's COMMIT decisions"), std::string::npos) << text;
  EXPECT_NE(text.find("'bank-b' (2 unfinished: " + seqText(seq) + ", " + seqText(both) + ")"), std::string::npos)
      << text;
}

// What the WAL holds of a seq etcd holds a decision of: nothing, an
// unfinished or a finished record. A damaged record counts as unfinished,
// so a COMMIT in etcd for it is still checked (and redriven).
TEST(MissingParticipants, WalHoldsTellsAbsentUnfinishedFinishedAndDamaged) {
  kj::AsyncIoContext io = kj::setupAsyncIo();
  test::TempDir dir;
  std::filesystem::create_directories(dir.path());
  auto finished = makeSeq(1, 1), unfinished = makeSeq(1, 2), damaged = makeSeq(1, 3), absent = makeSeq(1, 4);
  {
    WalStore wal(dir.path(), std::size_t(64) << 20);
    for (auto seq : {finished, unfinished, damaged}) {
      InteractionRecord r;
      r.seq = seq;
      r.decision = InteractionRecord::Decision::Commit;
      r.state = seq == finished ? InteractionRecord::State::Committed : InteractionRecord::State::Committing;
      wal.save(r, nullptr, true).wait(io.waitScope);
    }
    // One payload byte of `damaged` flipped: its checksum no longer matches.
    auto& env = wal.env();
    auto dbi = env.openDb("interactions");
    auto txn = env.beginWrite();
    auto v = txn.get(dbi, u64Key(damaged));
    ASSERT_TRUE(v.has_value());
    (*v)[v->size() - 3] ^= 0x5a;
    txn.put(dbi, u64Key(damaged), *v);
    txn.commit();
  }
  WalStore wal(dir.path(), std::size_t(64) << 20, /*readOnly=*/true);
  using H = Coordinator::WalHolds;
  EXPECT_EQ(Coordinator::walHolds(wal, finished, false), H::Finished);
  EXPECT_EQ(Coordinator::walHolds(wal, unfinished, false), H::Unfinished);
  EXPECT_EQ(Coordinator::walHolds(wal, damaged, false), H::Unfinished);
  EXPECT_EQ(Coordinator::walHolds(wal, absent, false), H::Nothing);
}

}  // namespace
}  // namespace keel
