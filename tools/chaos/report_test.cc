// The chaos report's counts and minimums on hand-made attempts: what each
// kind of interaction ended as, lost answers and their retries, "in doubt"
// answers and how they ended, and the minimums a run must reach.

#include "tools/chaos/report.h"

#include <gtest/gtest.h>

#include "common/client.h"

namespace keel::chaos {
namespace {

Attempt answered(Mix mix, std::uint64_t seq, ClientOutcome o, bool replayed = false, bool lostFirst = false) {
  Attempt a;
  a.mix = mix;
  a.requestId = "r-" + std::to_string(seq);
  SubmitOutcome out;
  out.seq = seq;
  out.outcome = o;
  out.requestId = a.requestId;
  out.replayed = replayed;
  if (lostFirst) a.tries.push_back(Try{1, std::nullopt});
  a.tries.push_back(Try{2, out});
  a.answer = out;
  return a;
}

TEST(ChaosReport, CountsEachKindRetriesAndInDoubtEndings) {
  std::vector<Attempt> attempts = {
      answered(Mix::Transfer, 1, ClientOutcome::Committed),
      answered(Mix::Transfer, 2, ClientOutcome::Committed, /*replayed=*/true, /*lostFirst=*/true),
      answered(Mix::Overdraft, 3, ClientOutcome::RolledBack),
      answered(Mix::OnePhase, 4, ClientOutcome::InDoubt),
      answered(Mix::OnePhase, 5, ClientOutcome::Committed, false, /*lostFirst=*/true),
      answered(Mix::ReadOnly, 6, ClientOutcome::Committed),
      answered(Mix::ThreeBranch, 7, ClientOutcome::Invalid),
  };
  Attempt never;
  never.mix = Mix::Transfer;
  never.requestId = "r-never";
  never.tries = {Try{1, std::nullopt}, Try{2, std::nullopt}};
  attempts.push_back(never);
  Attempt dropped;
  dropped.mix = Mix::Interactive;
  dropped.end = ClientEnd::Drop;
  dropped.dropped = true;
  dropped.seq = 9;
  attempts.push_back(dropped);
  // Dropped as planned after its first begin was lost and a retry opened it.
  Attempt droppedAfterRetry = dropped;
  droppedAfterRetry.seq = 11;
  droppedAfterRetry.tries = {Try{1, std::nullopt}};
  attempts.push_back(droppedAfterRetry);
  Attempt rolledBack = answered(Mix::Interactive, 10, ClientOutcome::RolledBack);
  rolledBack.end = ClientEnd::Rollback;
  attempts.push_back(rolledBack);

  CoordinatorView c;
  c.interactions[4].state = InteractionRecord::State::RolledBack;

  Report r;
  r.byMix[mixName(Mix::Interactive)];  // a kind the run drew from
  countAttempts(r, attempts, c);
  EXPECT_EQ(r.attempted, 11u);
  EXPECT_EQ(r.committed, 4u);
  EXPECT_EQ(r.rolledBack, 2u);
  EXPECT_EQ(r.inDoubt, 1u);
  EXPECT_EQ(r.unanswered, 1u);
  ASSERT_EQ(r.unansweredSamples.size(), 1u);
  EXPECT_EQ(r.unansweredSamples[0],
            "transfer request id r-never: 2 tries lost (1970-01-01T00:00:00.000001Z, 1970-01-01T00:00:00.000002Z), "
            "0 found no coordinator");
  EXPECT_EQ(r.other, 1u);
  EXPECT_EQ(r.lost, 5u);  // every try without an answer
  EXPECT_EQ(r.threeBranch, 1u);
  EXPECT_EQ(r.byMix["transfer"].attempted, 3u);
  EXPECT_EQ(r.byMix["transfer"].committed, 2u);
  EXPECT_EQ(r.byMix["transfer"].unanswered, 1u);
  EXPECT_EQ(r.byMix["one-phase"].inDoubt, 1u);
  EXPECT_EQ(r.byMix["interactive"].dropped, 2u);
  EXPECT_EQ(r.byMix["interactive"].unanswered, 0u);
  EXPECT_EQ(r.byMix["interactive"].rolledBack, 1u);
  EXPECT_EQ(r.interactiveDrop, 2u);
  EXPECT_EQ(r.interactiveRollback, 1u);
  EXPECT_EQ(r.retried, 4u);
  EXPECT_EQ(r.retriedReplayed, 1u);
  EXPECT_EQ(r.retriedNew, 2u);
  EXPECT_EQ(r.retriedUnanswered, 1u);
  EXPECT_EQ(r.inDoubtRolledBack, 1u);
  EXPECT_EQ(r.inDoubtCommitted, 0u);

  auto text = textReport(r);
  EXPECT_NE(text.find("lost answers retried   4 interactions: 1 replayed"), std::string::npos) << text;
  EXPECT_NE(text.find("in doubt answers       1 interactions: ended committed 0, rolled back 1"), std::string::npos)
      << text;
  EXPECT_NE(text.find("    one-phase"), std::string::npos) << text;
  // Two of the three transfers and the one three-branch interaction committed.
  EXPECT_NE(text.find("commit share           transfers and three-branch (meant to commit): 2 of 4 (50.0%) "
                      "committed\n"),
            std::string::npos)
      << text;
}

TEST(ChaosReport, CommitShareShowsHotTransfersApart) {
  std::vector<Attempt> attempts = {
      answered(Mix::Transfer, 1, ClientOutcome::Committed),
      answered(Mix::HotTransfer, 2, ClientOutcome::Committed),
      answered(Mix::HotTransfer, 3, ClientOutcome::RolledBack),
      answered(Mix::HotTransfer, 4, ClientOutcome::RolledBack),
      answered(Mix::HotTransfer, 5, ClientOutcome::RolledBack),
  };
  Report r;
  countAttempts(r, attempts, CoordinatorView{});
  auto text = textReport(r);
  EXPECT_NE(text.find("(meant to commit): 1 of 1 (100.0%) committed; hot-transfer (contended on purpose): "
                      "1 of 4 (25.0%)\n"),
            std::string::npos)
      << text;
}

TEST(ChaosReport, UnmetMinimumsNameWhatWasMissing) {
  Report r;
  r.committed = 100;
  r.rolledBack = 10;
  r.byMix["transfer"].committed = 90;
  r.byMix["read-only"].committed = 2;
  r.faults = {{"kill", 3}, {"pause", 0}};
  Minimums m;
  EXPECT_TRUE(unmetMinimums(r, m).empty());
  m.committed = 100;
  m.rolledBack = 11;
  m.perKind = 5;
  m.retried = 1;
  m.faults = {"kill", "pause", "refuse"};
  auto unmet = unmetMinimums(r, m);
  ASSERT_EQ(unmet.size(), 5u);
  EXPECT_EQ(unmet[0], "rolled back 10, fewer than 11 (--min-rolled-back)");
  EXPECT_EQ(unmet[1], "read-only interactions answered 2, fewer than 5 (--min-per-kind)");
  EXPECT_EQ(unmet[2], "interactions retried after a lost answer 0, fewer than 1 (--min-retried)");
  EXPECT_EQ(unmet[3], "fault pause never fired (--require-faults)");
  EXPECT_EQ(unmet[4], "fault refuse never fired (--require-faults)");
}

// ------------------------------------------------------------ --cluster: takeovers

TEST(ChaosTakeovers, ReadFromTheCoordinatorsLogs) {
  std::string log =
      "2025-03-01T12:00:00.100 coordinator info: cluster: joined as node 2 with epoch 3 (lease 2 s, etcd x)\n"
      "2025-03-01T12:00:02.500 coordinator warn: cluster: node 1 is gone (no member key); taking over its work "
      "under epoch 5\n"
      "2025-03-01T12:00:02.650 coordinator warn: takeover of node 1 (epoch 5) done in 150 ms: 4 branches, 1 "
      "committed, 3 rolled back\n"
      "2025-03-01T12:00:09.000 coordinator warn: cluster: node 3 is back; its takeover (epoch 7) stops here\n"
      "2025-03-01T12:00:20.000 coordinator warn: takeover of node 3 (epoch 8) done in 20 ms: 0 branches, 0 "
      "committed, 0 rolled back\n"
      "2025-03-01T12:00:30.000 coordinator error: cluster: membership lease lost (etcd unreachable): stopping\n"
      "not a log line at all\n";
  Takeovers t;
  scanCoordinatorLog(log, t);
  ASSERT_EQ(t.done.size(), 2u);
  EXPECT_EQ(t.started, 1u);
  EXPECT_EQ(t.stopped, 1u);
  EXPECT_EQ(t.failStops, 1u);
  EXPECT_EQ(t.done[0].node, 1);
  EXPECT_EQ(t.done[0].epoch, 5u);
  EXPECT_EQ(t.done[0].workMs, 150u);
  EXPECT_EQ(t.done[0].branches, 4u);
  EXPECT_EQ(t.done[0].committed, 1u);
  EXPECT_EQ(t.done[0].rolledBack, 3u);
  Micros base = parseLogTime("2025-03-01T12:00:00.100 x");
  ASSERT_NE(base, 0);
  EXPECT_EQ(t.done[0].atUs - base, 2'550'000);
  EXPECT_EQ(parseLogTime("not a time"), 0);

  // Node 1 was killed at 12:00:00.000 (and before, long ago); node 3 was
  // never faulted: its takeover is not timed.
  std::vector<CoordinatorFault> faults = {{1, base - 100'000 - 600'000'000}, {1, base - 100'000}};
  attributeTakeovers(t, faults);
  ASSERT_EQ(t.fromFaultMs.size(), 1u);
  EXPECT_EQ(t.fromFaultMs[0], 2650u);
  EXPECT_EQ(t.unattributed, 1u);
}

TEST(ChaosTakeovers, Percentiles) {
  EXPECT_EQ(percentile({}, 0.5), 0u);
  EXPECT_EQ(percentile({30, 10, 20}, 0.5), 20u);
  EXPECT_EQ(percentile({30, 10, 20}, 0.99), 30u);
  EXPECT_EQ(percentile({30, 10, 20}, 1.0), 30u);
}

TEST(ChaosReport, ViolationsNameTheirSeqAsNodeAndCounter) {
  Report r;
  r.violations = {{makeSeq(2, 5), "not atomic: ...", ViolationKind::NotAtomic},
                  {0, "money not conserved: ...", ViolationKind::Money}};
  auto text = textReport(r);
  EXPECT_NE(text.find("    [not-atomic] seq 2:5: not atomic: ...\n"), std::string::npos) << text;
  EXPECT_NE(text.find("    [money] money not conserved: ...\n"), std::string::npos) << text;
  Timeline tl;
  auto json = jsonReport(r, tl);
  EXPECT_NE(json.find("{\"seq\":" + std::to_string(makeSeq(2, 5)) + ",\"seq_text\":\"2:5\",\"kind\":\"not-atomic\""),
            std::string::npos)
      << json;
  EXPECT_NE(json.find("{\"seq\":0,\"seq_text\":null,\"kind\":\"money\""), std::string::npos) << json;
}

TEST(ChaosReport, ClusterLinesAndTheTakeoverMinimum) {
  Report r;
  Report::Cluster c;
  c.coordinators = 3;
  c.etcdMembers = 3;
  c.leaseTtlS = 2;
  c.prefix = "/keel-chaos-3";
  c.takeovers.done = {TakeoverDone{1, 1, 5, 150, 4, 1, 3}};
  c.takeovers.fromFaultMs = {2650};
  r.cluster = c;
  auto text = textReport(r);
  EXPECT_NE(text.find("cluster                3 coordinators on etcd (3 members), lease TTL 2 s"), std::string::npos)
      << text;
  EXPECT_NE(text.find("takeovers              1 done (4 branches: 1 committed, 3 rolled back)"), std::string::npos)
      << text;
  EXPECT_NE(text.find("(1): p50 2650 ms, p99 2650 ms, max 2650 ms"), std::string::npos) << text;
  Timeline tl;
  EXPECT_NE(jsonReport(r, tl).find("\"from_fault_ms\":[2650]"), std::string::npos);
  Minimums m;
  m.takeovers = 2;
  auto unmet = unmetMinimums(r, m);
  ASSERT_EQ(unmet.size(), 1u);
  EXPECT_EQ(unmet[0], "takeovers 1, fewer than 2 (--min-takeovers)");
}

}  // namespace
}  // namespace keel::chaos
