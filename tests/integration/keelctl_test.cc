// keelctl as an operator or a script runs it: strict arguments (exit 2,
// nothing sent), --timeout against a stopped coordinator, the exit status of
// each outcome, request ids, and a transfer whose answer is lost in a
// coordinator crash and retried with the same request id.

#include <signal.h>

#include <regex>

#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

// The command's output (stdout and stderr) holds `text`.
#define EXPECT_PRINTS(result, text) EXPECT_NE((result).output.find(text), std::string::npos) << (result).output

// "seq NODE:COUNTER: committed (request id X...)": the seq and X.
struct Answer {
  std::uint64_t seq = 0;
  std::string requestId;
};
std::optional<Answer> committedLine(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m, std::regex(R"(seq (\d+:\d+): committed \(request id ([^ ,)]+))"))) {
    return std::nullopt;
  }
  return Answer{parseSeqText(m.str(1)).value(), m[2]};
}

class KeelctlTest : public ClusterTest {
 protected:
  std::string ctl() { return binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " "; }

  // What a refused command must leave alone: the coordinator's counters
  // and both agents' books.
  struct Books {
    std::uint64_t committed, rolledBack, unfinished;
    std::uint32_t branchesA, branchesB;
    std::pair<std::int64_t, std::int64_t> alice, bob;
    bool operator==(const Books&) const = default;
  };
  Books books() {
    auto i = client_->info().wait(io_.waitScope);
    auto a = inspect("bank-a"), b = inspect("bank-b");
    return Books{i.committed,
                 i.rolledBack,
                 i.unfinished,
                 a.prepared + a.active + a.committed + a.rolledBack,
                 b.prepared + b.active + b.committed + b.rolledBack,
                 account("bank-a", "alice"),
                 account("bank-b", "bob")};
  }
};

TEST_F(KeelctlTest, BadArgumentsExitTwoAndSendNothing) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  // The opens' final records are lazy (their "committed" left before): the
  // books are taken once both are finished.
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));
  auto before = books();
  std::string t = ctl() + "transfer bank-a:alice bank-b:bob ";
  std::string agent = cluster_->agentAddress("bank-a");
  struct Case {
    std::string args, message;
  };
  std::vector<Case> cases = {
      {t + "1.5", "keelctl: amount '1.5' is not a whole number"},
      {t + "9223372036854775808", "keelctl: amount 9223372036854775808 is out of range (1..1000000000000000)"},
      {t + "1000000000000001", "keelctl: amount 1000000000000001 is out of range (1..1000000000000000)"},
      {t + "0", "keelctl: amount 0 is out of range (1..1000000000000000)"},
      {t + "-5", "keelctl: amount -5 is out of range (1..1000000000000000)"},
      {t + "12abc", "keelctl: amount '12abc' is not a whole number"},
      {t + "0x10", "keelctl: amount '0x10' is not a whole number"},
      {t + "' 7'", "keelctl: amount ' 7' is not a whole number"},
      {t + "''", "keelctl: amount '' is not a whole number"},
      {ctl() + "open bank-a:carol 1e3", "keelctl: amount '1e3' is not a whole number"},
      {ctl() + "open bank-a:carol -1", "keelctl: amount -1 is out of range (0..1000000000000000)"},
      {ctl() + "query 1.5", "keelctl: seq '1.5' is not NODE:COUNTER (such as 1:5) or a whole number"},
      {ctl() + "query 18446744073709551616",
       "keelctl: seq '18446744073709551616' is out of range (0..18446744073709551615)"},
      {ctl() + "query 0", "keelctl: seq 0 is out of range (no interaction has seq 0)"},
      {ctl() + "query 0:0", "keelctl: seq 0:0 is out of range (no interaction has seq 0)"},
      {ctl() + "query 1:", "keelctl: seq '1:' is not NODE:COUNTER (such as 1:5) or a whole number"},
      {ctl() + "query :5", "keelctl: seq ':5' is not NODE:COUNTER (such as 1:5) or a whole number"},
      {ctl() + "query abc", "keelctl: seq 'abc' is not NODE:COUNTER (such as 1:5) or a whole number"},
      {ctl() + "query 1:2:3", "keelctl: seq '1:2:3' is not NODE:COUNTER (such as 1:5) or a whole number"},
      {ctl() + "query -5", "keelctl: seq '-5' is negative: a seq is NODE:COUNTER (such as 1:5) or a whole number"},
      {ctl() + "query 65536:5", "keelctl: seq '65536:5': node 65536 is out of range (0..65535)"},
      {ctl() + "query 1:281474976710656",
       "keelctl: seq '1:281474976710656': counter 281474976710656 is out of range (0..281474976710655)"},
      {ctl() + "retry 12x", "keelctl: seq '12x' is not NODE:COUNTER (such as 1:5) or a whole number"},
      {ctl() + "retry 1:x", "keelctl: seq '1:x' is not NODE:COUNTER (such as 1:5) or a whole number"},
      {ctl() + "resolve 5e2 --commit --why x",
       "keelctl: seq '5e2' is not NODE:COUNTER (such as 1:5) or a whole number"},
      {ctl() + "resolve 70000:1 --abort --why x", "keelctl: seq '70000:1': node 70000 is out of range (0..65535)"},
      {ctl() + "resolve 5 --why x", "keelctl: resolve needs --commit, --abort or --reconciled"},
      {ctl() + "list --limit 0", "keelctl: --limit 0 is out of range (1..10000)"},
      {ctl() + "list --limit 4294967296", "keelctl: --limit 4294967296 is out of range (1..10000)"},
      {ctl() + "audit --limit ten", "keelctl: --limit 'ten' is not a whole number"},
      {ctl() + "--timeout 30 info", "keelctl: --timeout '30' has no unit (write it as 500ms, 30s, 2m or 1h)"},
      {ctl() + "--timeout 0ms info", "keelctl: --timeout 0ms is out of range (1ms..1h)"},
      {ctl() + "--timeout 2h info", "keelctl: --timeout 2h is out of range (1ms..1h)"},
      {ctl() + "--timeout 3x info", "keelctl: --timeout '3x' has an unknown unit 'x'"},
      {ctl() + "--timeout 1.5s info", "keelctl: --timeout '1.5s' has an unknown unit '.5s'"},
      {t + "5 --retry-for=-1s", "keelctl: --retry-for '-1s' is not a duration"},
      {t + "5 --retry-for 25h", "keelctl: --retry-for 25h is out of range (0ms..24h)"},
      {t + "5 --request-id 'two words'", "keelctl: --request-id: request id may hold only printable ASCII"},
      {t + "5 --request-id ''", "keelctl: --request-id is empty"},
      {t + "5 --request-id " + std::string(129, 'x'), "keelctl: --request-id: request id is 129 bytes long"},
      {ctl() + "query", "keelctl: query needs SEQ or --request-id ID"},
      {ctl() + "query 5 --request-id abc", "keelctl: query needs SEQ or --request-id ID"},
      {binDir() + "/keelctl -c nonsense info", "keelctl: --coordinator: address 'nonsense' must be host:port"},
      {binDir() + "/keelctl -c 127.0.0.1:99999 info",
       "keelctl: --coordinator: port in '127.0.0.1:99999' is out of range"},
      {binDir() + "/keelctl forget --agent " + agent + " 5.70000",
       "keelctl: '5.70000': branch 70000 is out of range (1..65535)"},
      {binDir() + "/keelctl forget --agent " + agent + " 5", "keelctl: '5' is not SEQ.BRANCH"},
      {binDir() + "/keelctl forget --agent " + agent + " 1:5", "keelctl: '1:5' is not SEQ.BRANCH (for example 1:5.2)"},
      {binDir() + "/keelctl forget --agent " + agent + " 1:.2",
       "keelctl: '1:.2': seq '1:' is not NODE:COUNTER (such as 1:5) or a whole number"},
      {binDir() + "/keelctl forget --agent " + agent + " 65536:1.2",
       "keelctl: '65536:1.2': seq '65536:1': node 65536 is out of range (0..65535)"},
      {binDir() + "/keelctl forget --agent " + agent + " 1:5.0",
       "keelctl: '1:5.0': branch 0 is out of range (1..65535)"},
      {ctl() + "transfer alice bank-b:bob 1", "keelctl: 'alice' is not PARTICIPANT:ACCOUNT"},
      // CLI11's own refusals exit 2 as well.
      {t, "amount is required"},
      {ctl() + "frobnicate", "keelctl: unknown command 'frobnicate' (the commands are open, transfer,"},
      {ctl(), "A subcommand is required"},
      {ctl() + "info --no-such-flag", "--no-such-flag"},
      {ctl() + "resolve 5 --commit --abort --why x", "excludes"},
  };
  for (auto& c : cases) {
    auto r = run(c.args);
    EXPECT_EQ(r.exitCode, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_FALSE(std::regex_search(r.output, std::regex(R"(seq \d+:\d+: )"))) << c.args << "\n" << r.output;
  }
  EXPECT_EQ(books(), before);
  // --help is not an error.
  EXPECT_EQ(run(ctl() + "--help").exitCode, 0);
  EXPECT_EQ(run(ctl() + "transfer --help").exitCode, 0);
}

TEST_F(KeelctlTest, SeveralCoordinatorsTheFirstThatAnswersServes) {
  // A cluster's addresses: the first is down, reads and submits go on to
  // the next (a submit retries its request id there).
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  std::string both = binDir() + "/keelctl -c 127.0.0.1:1," + cluster_->coordinatorAddress() + " ";
  auto info = run(both + "info");
  EXPECT_EQ(info.exitCode, 0) << info.output;
  EXPECT_NE(info.output.find("trying " + cluster_->coordinatorAddress()), std::string::npos) << info.output;
  auto t = run(both + "--retry-for 5s transfer bank-a:alice bank-b:bob 5");
  EXPECT_EQ(t.exitCode, 0) << t.output;
  EXPECT_NE(t.output.find("retrying request"), std::string::npos) << t.output;
  auto bad = run(binDir() + "/keelctl -c 127.0.0.1:1,nonsense info");
  EXPECT_EQ(bad.exitCode, 2) << bad.output;
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(995, 0); }));
}

TEST_F(KeelctlTest, ExitStatusNamesTheOutcome) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  auto ok = run(ctl() + "transfer bank-a:alice bank-b:bob 100");
  EXPECT_EQ(ok.exitCode, 0) << ok.output;
  auto a = committedLine(ok.output);
  ASSERT_TRUE(a) << ok.output;
  EXPECT_EQ(a->requestId.size(), 33u) << ok.output;
  EXPECT_EQ(ok.output.find("earlier try"), std::string::npos) << ok.output;

  auto over = run(ctl() + "transfer bank-a:alice bank-b:bob 100000");
  EXPECT_EQ(over.exitCode, 1) << over.output;
  EXPECT_TRUE(std::regex_search(
      over.output, std::regex(R"(seq \d+:\d+: rolled-back \(request id [0-9a-f-]+\): .*insufficient funds)")))
      << over.output;

  auto invalid = run(ctl() + "transfer bank-a:alice bank-x:bob 1");
  EXPECT_EQ(invalid.exitCode, 2) << invalid.output;
  EXPECT_PRINTS(invalid, "invalid (request id ");

  auto nothere = run(ctl() + "query 42");
  EXPECT_EQ(nothere.exitCode, 1) << nothere.output;
  EXPECT_PRINTS(nothere, "keelctl: no interaction 0:42\n");
  auto notThereEither = run(ctl() + "query 1:999999");
  EXPECT_EQ(notThereEither.exitCode, 1) << notThereEither.output;
  EXPECT_PRINTS(notThereEither, "keelctl: no interaction 1:999999\n");
  // Both forms name one interaction.
  for (const auto& form : {seqText(a->seq), std::to_string(a->seq)}) {
    auto q = run(ctl() + "query " + form);
    EXPECT_EQ(q.exitCode, 0) << form << "\n" << q.output;
    EXPECT_PRINTS(q, "interaction " + seqText(a->seq) + "\n");
  }

  // Nothing listens on port 1: refused at once, with no KJ text.
  auto down = run(binDir() + "/keelctl -c 127.0.0.1:1 info");
  EXPECT_EQ(down.exitCode, 3) << down.output;
  EXPECT_EQ(down.output, "keelctl: no answer from 127.0.0.1:1 (connection refused)\n");
  auto lost =
      run(binDir() + "/keelctl -c 127.0.0.1:1 transfer bank-a:alice bank-b:bob 1 --retry-for 0 --request-id t-1");
  EXPECT_EQ(lost.exitCode, 3) << lost.output;
  EXPECT_EQ(lost.output,
            "keelctl: no answer from 127.0.0.1:1 (connection refused); request id t-1 may or may not have run: look "
            "it up with keelctl query --request-id t-1\n");

  auto balance = run(ctl() + "balance bank-a:alice bank-b:bob");
  EXPECT_EQ(balance.exitCode, 0) << balance.output;
  EXPECT_PRINTS(balance, "bank-a:alice  balance 900  available 900");
  EXPECT_PRINTS(balance, "bank-b:bob  balance 100  available 100");
  EXPECT_TRUE(committedLine(balance.output)) << balance.output;
}

TEST_F(KeelctlTest, RequestIdsRunOnceAndCanBeLookedUp) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  auto first = run(ctl() + "transfer bank-a:alice bank-b:bob 100 --request-id pay-7 --json");
  ASSERT_EQ(first.exitCode, 0) << first.output;
  EXPECT_PRINTS(first, "\"request_id\":\"pay-7\",\"replayed\":false");
  auto again = run(ctl() + "transfer bank-a:alice bank-b:bob 100 --request-id pay-7");
  ASSERT_EQ(again.exitCode, 0) << again.output;
  auto a = committedLine(again.output);
  ASSERT_TRUE(a) << again.output;
  EXPECT_EQ(a->requestId, "pay-7");
  EXPECT_PRINTS(again, "(request id pay-7, answered by an earlier try)");
  EXPECT_PRINTS(first, "\"seq\":" + std::to_string(a->seq) + ",\"seq_text\":\"" + seqText(a->seq) + "\",");
  auto reused = run(ctl() + "transfer bank-a:alice bank-b:bob 5 --request-id pay-7");
  EXPECT_EQ(reused.exitCode, 2) << reused.output;
  EXPECT_PRINTS(reused, "reused with other operations");

  auto q = run(ctl() + "query --request-id pay-7");
  EXPECT_EQ(q.exitCode, 0) << q.output;
  EXPECT_PRINTS(q, "interaction " + seqText(a->seq) + "\n");
  EXPECT_PRINTS(q, "request id pay-7");
  auto none = run(ctl() + "query --request-id pay-8");
  EXPECT_EQ(none.exitCode, 1) << none.output;
  EXPECT_EQ(none.output, "keelctl: no interaction has request id pay-8\n");

  // An id keelctl made carries its first-sent time: sent again later it is
  // replayed; one too old for the coordinator's retention is refused, not run.
  auto made = run(ctl() + "transfer bank-a:alice bank-b:bob 10");
  auto m = committedLine(made.output);
  ASSERT_TRUE(m) << made.output;
  auto resent = run(ctl() + "transfer bank-a:alice bank-b:bob 10 --request-id " + m->requestId);
  EXPECT_EQ(resent.exitCode, 0) << resent.output;
  EXPECT_PRINTS(resent, "seq " + seqText(m->seq) + ": committed (request id " + m->requestId +
                            ", answered by an earlier try)");
  auto old = run(ctl() + "transfer bank-a:alice bank-b:bob 10 --request-id 0000000000000001-0123456789abcdef");
  EXPECT_EQ(old.exitCode, 2) << old.output;
  EXPECT_PRINTS(old, "longer ago than request_id_retention_s");

  ASSERT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(110, 0); }));
  EXPECT_EQ(account("bank-a", "alice"), bal(890, 0));
}

TEST_F(KeelctlTest, TimeoutBoundsAStoppedCoordinator) {
  cluster_->killCoordinator(SIGSTOP);
  struct Resume {
    LocalCluster& c;
    ~Resume() { c.killCoordinator(SIGCONT); }
  } resume{*cluster_};
  auto timed = [](const std::string& cmd) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = run(cmd);
    return std::make_pair(r, std::chrono::steady_clock::now() - t0);
  };
  auto [info, infoTook] = timed(ctl() + "--timeout 500ms info");
  EXPECT_EQ(info.exitCode, 3) << info.output;
  EXPECT_EQ(info.output, "keelctl: no answer from " + cluster_->coordinatorAddress() + " within 500 ms\n");
  EXPECT_GE(infoTook, std::chrono::milliseconds(450));
  EXPECT_LT(infoTook, std::chrono::milliseconds(3000));

  // A submit retries within --retry-for, one line per retry, then says how
  // to find out whether it ran.
  auto [t, tTook] = timed(ctl() + "--timeout 300ms --retry-for 1s transfer bank-a:alice bank-b:bob 1 --request-id t-2");
  EXPECT_EQ(t.exitCode, 3) << t.output;
  EXPECT_PRINTS(t, "keelctl: no answer within --timeout 300 ms; retrying request t-2 (attempt 2)\n");
  EXPECT_PRINTS(t,
                "keelctl: no answer within --retry-for 1 s; request id t-2 may or may not have run: look it up with "
                "keelctl query --request-id t-2\n");
  EXPECT_LT(tTook, std::chrono::milliseconds(4000));
  EXPECT_EQ(t.output.find("kj"), std::string::npos) << t.output;
}

// The lost-answer scenario: the coordinator dies at `failpoint` while a
// `keelctl transfer --retry-for 20s` waits; it is restarted without
// failpoints, keelctl's retry (same request id) gets the answer, and the
// money moved exactly once.
class LostAnswerTest : public KeelctlTest {
 protected:
  // Returns keelctl's output; `replayed`: the answer came from the first try.
  std::string transferThroughCrash(const std::string& failpoint) {
    open("bank-a", "alice", 1000);
    open("bank-b", "bob", 0);
    cluster_->stopCoordinator();
    cluster_->startCoordinator(failpoint);
    std::string log = dir_ + "/keelctl.log";
    ChildProcess ctlProc;
    ctlProc.start(binDir() + "/keelctl",
                  {"-c", cluster_->coordinatorAddress(), "--retry-for", "20s", "--timeout", "5s", "transfer",
                   "bank-a:alice", "bank-b:bob", "100"},
                  log);
    EXPECT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(10)));
    cluster_->startCoordinator();
    int status = ctlProc.waitExit(std::chrono::seconds(20));
    auto out = readFile(log);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << out;
    reconnect();
    return out;
  }

  void expectMovedOnce(const Answer& a) {
    EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(100, 0); })) << account("bank-b", "bob").first;
    EXPECT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(900, 0); }))
        << account("bank-a", "alice").first;
    auto q = run(ctl() + "query --request-id " + a.requestId);
    EXPECT_EQ(q.exitCode, 0) << q.output;
    EXPECT_PRINTS(q, "interaction " + seqText(a.seq) + "\n");
    auto byId = client_->queryRequest(a.requestId).wait(io_.waitScope);
    ASSERT_TRUE(byId);
    EXPECT_EQ(byId->interaction.seq, a.seq);
    EXPECT_TRUE(eventually([&] { return query(a.seq)->interaction.state == InteractionRecord::State::Committed; }));
  }
};

TEST_F(LostAnswerTest, CrashAfterTheDecisionIsAnsweredByTheFirstTry) {
  auto out = transferThroughCrash("coord.after_decision_durable=crash");
  auto a = committedLine(out);
  ASSERT_TRUE(a) << out;
  EXPECT_NE(out.find("keelctl: no answer (connection lost); retrying request " + a->requestId + " (attempt 2)"),
            std::string::npos)
      << out;
  // The COMMIT was durable with the request id: the retry runs nothing.
  EXPECT_NE(out.find("seq " + seqText(a->seq) + ": committed (request id " + a->requestId +
                     ", answered by an earlier try)"),
            std::string::npos)
      << out;
  expectMovedOnce(*a);
}

// Without staged commit nothing is written before the decision (presumed
// abort). With it the first try's record and request id row are durable
// before the votes, so the retry hears the first try's outcome instead.
class LostAnswerPresumedAbortTest : public LostAnswerTest {
 protected:
  std::string coordinatorToml() override { return LostAnswerTest::coordinatorToml() + "staged_commit = false\n"; }
};

TEST_F(LostAnswerPresumedAbortTest, CrashBeforeTheDecisionRunsTheRetryAsANewInteraction) {
  auto out = transferThroughCrash("coord.after_votes=crash");
  auto a = committedLine(out);
  ASSERT_TRUE(a) << out;
  EXPECT_NE(out.find("retrying request " + a->requestId + " (attempt 2)"), std::string::npos) << out;
  // No decision was durable: presumed abort rolls the first try back and the
  // retry is the one interaction of this request id that commits.
  EXPECT_EQ(out.find("earlier try"), std::string::npos) << out;
  expectMovedOnce(*a);
  // The first try's branches were rolled back on both agents.
  EXPECT_TRUE(eventually([&] { return inspect("bank-a").rolledBack == 1 && inspect("bank-b").rolledBack == 1; }));
}

// Drivers that wait a minute and agents that never ask: an interaction stays
// where a test leaves it until an operator acts.
class KeelctlOperatorTest : public KeelctlTest {
 protected:
  std::string coordinatorToml() override {
    return kSlowDriversToml;
  }
  ClusterOptions clusterOptions() override {
    auto o = KeelctlTest::clusterOptions();
    o.agentInDoubtQueryMs = 0;
    return o;
  }
};

TEST_F(KeelctlOperatorTest, HeuristicOutcomesAreShownAsTheyAre) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  // bank-b dies before its commit is durable: the interaction stays
  // committing, bank-a committed, bank-b prepared.
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b", "agent.before_commit_durable=crash");
  auto t = run(ctl() + "transfer bank-a:alice bank-b:bob 100 --request-id h-1");
  ASSERT_EQ(t.exitCode, 0) << t.output;
  auto a = committedLine(t.output);
  ASSERT_TRUE(a) << t.output;
  // SEQ is typed as NODE:COUNTER, and as the 64-bit number (`number`) where said.
  std::string seq = seqText(a->seq), number = std::to_string(a->seq);
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  cluster_->startAgent("bank-b");
  auto l = run(ctl() + "list");
  EXPECT_PRINTS(l, seq + "  committing");
  EXPECT_PRINTS(l, "request id h-1");

  // Forcing abort contradicts bank-a's commit: the interaction ends heuristic-mixed.
  auto r = run(ctl() + "resolve " + seq + " --abort --override --who tester --why 'test'");
  ASSERT_EQ(r.exitCode, 0) << r.output;
  ASSERT_TRUE(eventually([&] { return query(a->seq)->interaction.finished(); }));
  auto q = run(ctl() + "query " + number);
  EXPECT_EQ(q.exitCode, 0) << q.output;
  EXPECT_PRINTS(q, "interaction " + seq + "\n");
  EXPECT_PRINTS(q, "state      heuristic-mixed");
  EXPECT_PRINTS(q, "docs/recovery.md");
  auto qj = run(ctl() + "query --request-id h-1 --json");
  EXPECT_PRINTS(qj, "\"state\":\"heuristic-mixed\"");
  auto i = run(ctl() + "info");
  EXPECT_PRINTS(i, "heuristic 1");
  auto ij = run(ctl() + "info --json");
  EXPECT_PRINTS(ij, "\"heuristic\":1");
  auto st = run(ctl() + "stats");
  EXPECT_PRINTS(st, "1 heuristic)");

  // Asking again with the same request id tells the outcome as it ended: exit 5, with what to do.
  auto again = run(ctl() + "transfer bank-a:alice bank-b:bob 100 --request-id h-1");
  EXPECT_EQ(again.exitCode, 5) << again.output;
  EXPECT_PRINTS(again, "seq " + seq + ": heuristic-mixed (request id h-1, answered by an earlier try)");
  EXPECT_PRINTS(again, "  the branches did not all end as decided: see keelctl query " + seq + "; docs/recovery.md\n");
  auto j = run(ctl() + "transfer bank-a:alice bank-b:bob 100 --request-id h-1 --json");
  EXPECT_EQ(j.exitCode, 5) << j.output;
  EXPECT_PRINTS(j, "\"outcome\":\"heuristic-mixed\"");
  EXPECT_PRINTS(j, "\"replayed\":true");

  // It waits in `list` for an operator until marked reconciled.
  auto waiting = run(ctl() + "list");
  EXPECT_PRINTS(waiting, "0 unfinished interaction(s)");
  EXPECT_PRINTS(waiting, "1 heuristic interaction(s) to reconcile by hand");
  EXPECT_PRINTS(waiting, seq + "  heuristic-mixed");
  EXPECT_PRINTS(waiting, "bank-a committed bank-b rolled-back");
  auto lj = run(ctl() + "list --json");
  EXPECT_PRINTS(lj, "\"unfinished\":[]");
  EXPECT_PRINTS(lj, "\"heuristic\":[{\"seq\":" + number + ",\"seq_text\":\"" + seq + "\"");
  auto noWhy = run(ctl() + "resolve " + seq + " --reconciled");
  EXPECT_EQ(noWhy.exitCode, 2) << noWhy.output;
  auto both = run(ctl() + "resolve " + seq + " --reconciled --abort --why x");
  EXPECT_EQ(both.exitCode, 2) << both.output;
  auto done = run(ctl() + "resolve " + number + " --reconciled --who tester --why 'bank-b credited by hand'");
  EXPECT_EQ(done.exitCode, 0) << done.output;
  EXPECT_PRINTS(done, "done: marked reconciled");
  EXPECT_PRINTS(run(ctl() + "list"), "0 unfinished interaction(s)\n");
  EXPECT_EQ(run(ctl() + "list").output.find("heuristic interaction(s)"), std::string::npos);
  auto twice = run(ctl() + "resolve " + seq + " --reconciled --who tester --why again");
  EXPECT_EQ(twice.exitCode, 1) << twice.output;
  EXPECT_PRINTS(run(ctl() + "audit"), "\"action\":\"reconciled\"");
  // A state that is not heuristic has nothing to reconcile.
  auto notHeuristic = run(ctl() + "resolve " + std::to_string(a->seq - 1) + " --reconciled --why x");
  EXPECT_EQ(notHeuristic.exitCode, 1) << notHeuristic.output;
}

}  // namespace
}  // namespace keel::test
