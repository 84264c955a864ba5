// The postgres adapter with real processes: a coordinator, two postgres
// agents and one real PostgreSQL server holding two databases (bank_a,
// bank_b). Every case ends with both databases consistent and
// pg_prepared_xacts empty.

#include <libpq-fe.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <iterator>
#include <thread>
#include <utility>

#include "common/daemon.h"
#include "common/wire.h"
#include "participant/branch_log.h"
#include "participant/pg_agent.h"
#include "tests/integration/cluster_fixture.h"
#include "tools/bank.h"
#include "tools/pg_server.h"
#include "tools/sql_bank.h"

namespace keel::test {
namespace {

// `calls` counts the calls of statement "bump": a sequence is not
// transactional, so a call that ran shows there even when it was rolled back.
const std::string kSchema = std::string(sqlbank::kCreateTable) +
                            "INSERT INTO accounts VALUES ('alice', 1000), ('bob', 0); CREATE SEQUENCE calls;";

// Declared beside the bank's statements (bank::statementsToml) for these
// tests: statements that fail in PostgreSQL, one returning rows, a sleep, and
// one with a parameter that may be null.
const std::string kTestStatements = R"toml(
[statements.missing_table]
sql = "UPDATE nosuchtable SET x = 1"

[statements.overdraw_alice]
sql = "UPDATE accounts SET balance = -1 WHERE name = 'alice'"

[statements.list_accounts]
sql = "SELECT name, balance FROM accounts ORDER BY name"

[statements.sleep]
sql = "SELECT pg_sleep($1)"
params = ["float8"]

[statements.bump]
sql = "SELECT nextval('calls')"
expect_rows = 1

[statements.open_account]
sql = "INSERT INTO accounts VALUES ($1, coalesce($2, 0))"
params = ["text", "int8?"]
expect_rows = 1

[statements.touch]
sql = "UPDATE accounts SET balance = balance WHERE name = $1"
params = ["text"]

[statements.whole_account]
sql = "SELECT * FROM accounts WHERE name = $1"
params = ["text"]
)toml";

using sqlbank::credit;
using sqlbank::debit;

class PostgresTest : public ClusterTest {
 protected:
  void SetUp() override {
    PgServerOptions o;
    o.databases = {"bank_a", "bank_b"};
    pg_ = std::make_unique<PgServer>("", o);
    pg_->start();
    for (auto db : {"bank_a", "bank_b"}) pgQuery(pg_->connString(db), kSchema);
    ClusterTest::SetUp();
  }
  void TearDown() override {
    ClusterTest::TearDown();
    pg_.reset();
  }
  ClusterOptions clusterOptions() override {
    auto o = ClusterTest::clusterOptions();
    o.agentExtraArgs = {"--adapter", "postgres", "--pool-size", "4"};
    return o;
  }
  void beforeStart(LocalCluster& c) override {
    std::string statements = bank::writeStatementsFile(c.baseDir(), kTestStatements);
    c.setAgentArgs("bank-a", {"--postgres", pg_->connString("bank_a"), "--statements", statements});
    c.setAgentArgs("bank-b", {"--postgres", pg_->connString("bank_b"), "--statements", statements});
  }

  std::int64_t balance(const std::string& db, const std::string& who) {
    auto rows = pgQuery(pg_->connString(db), "SELECT balance FROM accounts WHERE name = '" + who + "'");
    return rows.empty() ? -1 : std::stoll(rows[0][0]);
  }
  std::size_t prepared(const std::string& db) {
    return pgQuery(pg_->connString(db), "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
        .size();
  }
  bool settled() { return prepared("bank_a") == 0 && prepared("bank_b") == 0; }
  // The coordinator started again after dying in a transfer of 100 alice ->
  // bob (`seq`, after one of 1): waits until it is finished and both
  // databases hold nothing prepared, expects it committed in both
  // (alice 899, bob 101), and returns what its record says of how.
  std::string restartAndExpectCommitted(std::uint64_t seq) {
    cluster_->startCoordinator();
    reconnect();
    bool done = eventually([&] {
      auto q = query(seq);
      return q && q->interaction.finished() && settled();
    }, std::chrono::seconds(15));
    EXPECT_TRUE(done) << "seq " << seq << " not finished and settled in 15 s";
    auto q = query(seq);
    if (!q) {
      ADD_FAILURE() << "no interaction " << seq;
      return "";
    }
    EXPECT_EQ(q->interaction.state, InteractionRecord::State::Committed);
    EXPECT_EQ(balance("bank_a", "alice"), 899);
    EXPECT_EQ(balance("bank_b", "bob"), 101);
    return q->interaction.error;
  }
  // How often statement "bump" ran in `db` (committed or not).
  std::int64_t bumps(const std::string& db) {
    auto rows = pgQuery(pg_->connString(db), "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM calls");
    return std::stoll(rows.at(0).at(0));
  }
  // Restarts bank-b with `failpoint` set and moves 100 from alice to bob.
  SubmitOutcome transferWithBankBFailing(const std::string& failpoint) {
    cluster_->stopAgent("bank-b");
    cluster_->startAgent("bank-b", failpoint);
    return submit({debit("bank-a", "alice", 100), credit("bank-b", "bob", 100)});
  }
  void expectUntouched() {
    EXPECT_EQ(balance("bank_a", "alice"), 1000);
    EXPECT_EQ(balance("bank_b", "bob"), 0);
  }
  // How often an agent's log says `text`.
  std::size_t inAgentLog(const std::string& agent, const std::string& text) {
    std::ifstream f(cluster_->agentLog(agent));
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::size_t n = 0;
    for (auto at = all.find(text); at != std::string::npos; at = all.find(text, at + 1)) ++n;
    return n;
  }
  // The gids PostgreSQL holds prepared in `db`.
  std::vector<std::string> preparedGids(const std::string& db) {
    std::vector<std::string> out;
    for (auto& row : pgQuery(pg_->connString(db), "SELECT gid FROM pg_prepared_xacts WHERE database = "
                                                  "current_database() ORDER BY gid")) {
      out.push_back(row[0]);
    }
    return out;
  }
  // PostgreSQL's prepared transactions in `db` of interaction `seq`.
  std::size_t preparedOf(const std::string& db, std::uint64_t seq) {
    std::size_t n = 0;
    for (auto& g : preparedGids(db)) {
      if (g.find(":" + std::to_string(seq) + ":") != std::string::npos) ++n;
    }
    return n;
  }

  // Milliseconds until `pred` holds (polled every 20 ms), or -1 after `timeout`.
  long long msUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
    auto t0 = std::chrono::steady_clock::now();
    if (!eventually(pred, timeout)) return -1;
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  }

  std::unique_ptr<PgServer> pg_;
};

TEST_F(PostgresTest, AtomicTransferAcrossTwoDatabases) {
  auto o = submit({debit("bank-a", "alice", 300), credit("bank-b", "bob", 300)});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.state == InteractionRecord::State::Committed; }));
  EXPECT_EQ(balance("bank_a", "alice"), 700);
  EXPECT_EQ(balance("bank_b", "bob"), 300);
  EXPECT_TRUE(settled());
}

TEST_F(PostgresTest, AgentsAskTheCoordinatorForSmallPrepareBatches) {
  // The coordinator runs with its defaults (batch_max 256, batch_in_flight
  // 2); each postgres agent asks for at most 8 prepares per message and as
  // many in flight as its pool has connections (4 here), and gets it.
  auto o = submit({debit("bank-a", "alice", 1), credit("bank-b", "bob", 1)});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  std::ifstream log(cluster_->coordinatorLog());
  std::string all((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  for (auto name : {"bank-a", "bank-b"}) {
    EXPECT_NE(all.find(std::string(name) + ": the participant asks for at most 8 prepare(s) per message and 4 "
                                           "message(s) in flight"),
              std::string::npos)
        << all;
  }
}

TEST_F(PostgresTest, ViolatedGuardVotesNoAndChangesNothing) {
  auto o = submit({credit("bank-b", "bob", 5000), debit("bank-a", "alice", 5000)});
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(o.reason.find("statement 1 (debit) touched 0 rows, 1 required"), std::string::npos) << o.reason;
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished() && settled(); }));
  expectUntouched();
}

TEST_F(PostgresTest, SqlErrorsBecomeClearNoVotes) {
  auto o = submit({credit("bank-b", "bob", 1), Op::statement("bank-a", "missing_table")});
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(o.reason.find("statement 1 (missing_table): "), std::string::npos) << o.reason;
  EXPECT_NE(o.reason.find("nosuchtable"), std::string::npos) << o.reason;
  EXPECT_NE(o.reason.find("42P01"), std::string::npos) << o.reason;
  auto c = submit({credit("bank-b", "bob", 1),
                   Op::statement("bank-a", "overdraw_alice")});
  ASSERT_EQ(c.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(c.reason.find("constraint violation"), std::string::npos) << c.reason;
  ASSERT_TRUE(eventually([&] { return settled(); }));
  EXPECT_EQ(balance("bank_b", "bob"), 0);
}

// The agent runs declared statements as named prepared statements of its
// connections (parsed once per connection). A table that changes shape
// under one ("cached plan must not change result type" for a SELECT *)
// fails that call, closes the connection and works on the next one: at
// most one failed call per connection, never a connection stuck failing.
TEST_F(PostgresTest, ATableChangingShapeUnderANamedStatementFailsAtMostOnceAConnection) {
  auto call = [&] {
    return submit({Op::statement("bank-a", "whole_account", {SqlValue::ofText("alice")}), credit("bank-b", "bob", 1)});
  };
  for (int i = 0; i < 6; ++i) ASSERT_EQ(call().outcome, ClientOutcome::Committed);
  pgQuery(pg_->connString("bank_a"), "ALTER TABLE accounts ADD COLUMN note text");
  int failed = 0;
  for (int i = 0; i < 12; ++i) {
    auto o = call();
    if (o.outcome != ClientOutcome::Committed) {
      ++failed;
      EXPECT_EQ(o.outcome, ClientOutcome::RolledBack);
      EXPECT_NE(o.reason.find("0A000"), std::string::npos) << o.reason;
    }
  }
  EXPECT_GE(failed, 1) << "the named statement was not in use: nothing was tested";
  EXPECT_LE(failed, 4) << "more failed calls than the agent has prepare connections (--pool-size 4)";
  for (int i = 0; i < 4; ++i) EXPECT_EQ(call().outcome, ClientOutcome::Committed);
  ASSERT_TRUE(eventually([&] { return settled(); }));
}

// A statement declared with any row count, called with a count of the
// operation's own: PostgreSQL checks that count (the wrapping made for the
// call, not the declaration's), in a two-phase branch.
TEST_F(PostgresTest, AnOperationsOwnRowCountIsCheckedByPostgres) {
  auto touch = [](std::int64_t rows) {
    return Op::statement("bank-a", "touch", {SqlValue::ofText("alice")}, rows);
  };
  auto ok = submit({touch(1), credit("bank-b", "bob", 1)});
  EXPECT_EQ(ok.outcome, ClientOutcome::Committed) << ok.reason;
  auto wrong = submit({touch(2), credit("bank-b", "bob", 1)});
  ASSERT_EQ(wrong.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(wrong.reason.find("statement 1 (touch) touched 1 rows, 2 required"), std::string::npos) << wrong.reason;
  ASSERT_TRUE(eventually([&] { return settled(); }));
  EXPECT_EQ(balance("bank_b", "bob"), 1);
}

TEST_F(PostgresTest, OnePhaseCommitAndResultRows) {
  auto o = submit({debit("bank-a", "alice", 10), credit("bank-a", "bob", 10),
                   Op::statement("bank-a", "list_accounts")});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_EQ(o.results.size(), 3u);
  ASSERT_EQ(o.results[2].rows.size(), 2u);
  EXPECT_EQ(o.results[2].rows[0][0].value_or("?"), "alice");
  EXPECT_EQ(o.results[2].rows[0][1].value_or("?"), "990");
  EXPECT_TRUE(query(o.seq)->interaction.onePhase);
  EXPECT_EQ(balance("bank_a", "bob"), 10);
  EXPECT_TRUE(settled());
}

// A one-phase branch runs its statements and inserts its marker row in one
// pipelined trip, and commits only once every row count is right: one
// PostgreSQL checks (the wrapped UPDATE) stops the trip; one only the agent
// can check (a SELECT's) keeps the marker row out of the trip until it was
// seen right. Nothing of a refused branch commits, not even its marker row.
TEST_F(PostgresTest, OnePhaseCommitsOnlyOnceEveryRowCountIsRight) {
  auto markers = [&] { return pgQuery(pg_->connString("bank_a"), "SELECT gid FROM keel_one_phase").size(); };
  auto touch = [](std::int64_t rows) { return Op::statement("bank-a", "touch", {SqlValue::ofText("alice")}, rows); };
  auto whole = [](const char* who) { return Op::statement("bank-a", "whole_account", {SqlValue::ofText(who)}, 1); };
  auto byPostgres = submit({debit("bank-a", "alice", 5), touch(2)});
  ASSERT_EQ(byPostgres.outcome, ClientOutcome::RolledBack) << byPostgres.reason;
  EXPECT_NE(byPostgres.reason.find("statement 2 (touch)"), std::string::npos) << byPostgres.reason;
  auto byTheAgent = submit({debit("bank-a", "alice", 5), whole("nobody")});
  ASSERT_EQ(byTheAgent.outcome, ClientOutcome::RolledBack) << byTheAgent.reason;
  EXPECT_NE(byTheAgent.reason.find("statement 2 (whole_account)"), std::string::npos) << byTheAgent.reason;
  EXPECT_TRUE(query(byTheAgent.seq)->interaction.onePhase);
  EXPECT_EQ(balance("bank_a", "alice"), 1000) << "a refused one-phase branch committed its debit";
  EXPECT_EQ(markers(), 0u) << "a refused one-phase branch committed its marker row";
  // Right counts of both kinds: committed, the marker row after the check.
  auto ok = submit({debit("bank-a", "alice", 5), touch(1), whole("alice")});
  ASSERT_EQ(ok.outcome, ClientOutcome::Committed) << ok.reason;
  ASSERT_EQ(ok.results.size(), 3u);
  ASSERT_EQ(ok.results[2].rows.size(), 1u);
  EXPECT_EQ(ok.results[2].rows[0][1].value_or("?"), "995");
  EXPECT_EQ(balance("bank_a", "alice"), 995);
  EXPECT_TRUE(settled());
}

// The marker row cannot be written (its table dropped by hand after the
// agent started): the branch is refused with the reason and the fix, in
// the trip and after it, and nothing of it commits.
TEST_F(PostgresTest, OnePhaseWhoseMarkerRowCannotBeWrittenIsRefusedAndCommitsNothing) {
  pgQuery(pg_->connString("bank_a"), "DROP TABLE keel_one_phase");
  auto whole = Op::statement("bank-a", "whole_account", {SqlValue::ofText("alice")}, 1);
  for (const auto& ops : {std::vector<Op>{debit("bank-a", "alice", 5)},    // the INSERT in the trip
                          std::vector<Op>{debit("bank-a", "alice", 5), whole}}) {  // after the agent's count
    auto o = submit(ops);
    ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
    EXPECT_NE(o.reason.find("the one-phase marker row could not be written"), std::string::npos) << o.reason;
    EXPECT_NE(o.reason.find("the agent creates keel_one_phase at start-up"), std::string::npos) << o.reason;
  }
  EXPECT_EQ(balance("bank_a", "alice"), 1000);
}

// ---------------------------------------------------------------- declared statements
//
// A client names a statement its agent declares and passes the parameters;
// a call that does not fit the declaration is refused before any statement
// of its branch reaches PostgreSQL.

TEST_F(PostgresTest, DeclaredStatementWithANullableParameterCommits) {
  auto o = submit({Op::statement("bank-a", "open_account", {SqlValue::ofText("carol"), SqlValue::null()}),
                   Op::statement("bank-b", "open_account", {SqlValue::ofText("dave"), SqlValue::ofInt(7)})});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  // Phase 2 runs after the answer.
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.state == InteractionRecord::State::Committed; }));
  ASSERT_TRUE(eventually([&] { return settled(); }));
  EXPECT_EQ(balance("bank_a", "carol"), 0);
  EXPECT_EQ(balance("bank_b", "dave"), 7);
}

TEST_F(PostgresTest, CallsThatDoNotFitTheirDeclarationAreInvalidAndRunNothing) {
  struct Case {
    Op op;
    std::string expect;
  };
  const auto amount = SqlValue::ofInt(5);
  const auto alice = SqlValue::ofText("alice");
  std::vector<Case> cases = {
      {Op::statement("bank-a", "drop_accounts"),
       "statement 'drop_accounts' is not declared by agent bank-a (its config declares: bump, credit, debit, "
       "list_accounts, missing_table, open_account, overdraw_alice, read_balance, sleep, touch, whole_account)"},
      {Op::statement("bank-a", "debit", {amount, alice, amount}), "statement 'debit' takes 2 parameter(s), got 3"},
      {Op::statement("bank-a", "debit", {amount}), "statement 'debit' takes 2 parameter(s), got 1"},
      {Op::statement("bank-a", "debit", {SqlValue::ofText("5"), alice}),
       "statement 'debit' parameter $1 is int8, got text"},
      {Op::statement("bank-a", "debit", {amount, SqlValue::null()}),
       "statement 'debit' parameter $2 is text, got null (declare it text? to allow null)"},
      {Op::statement("bank-a", "open_account", {alice, SqlValue::ofFloat(1.5)}),
       "statement 'open_account' parameter $2 is int8?, got float"},
      {Op::statement("bank-a", "debit", {amount, alice}, 0),
       "statement 'debit' is declared to touch 1 row(s); the operation asks for 0"},
  };
  // The coordinator learns bank-a's declarations when it connects
  // (Participant.statements), before its first call there: once a call has
  // been answered, a call that does not fit them is invalid, with the
  // agent's own words, before anything is written or sent (no seq).
  ASSERT_EQ(submit({Op::statement("bank-a", "list_accounts")}).outcome, ClientOutcome::Committed);
  for (auto& c : cases) {
    // Two-phase (a credit at bank-b too) and one-phase (bank-a alone): the
    // call of "bump" before the bad one in the same branch never runs.
    auto two = submit({Op::statement("bank-a", "bump"), c.op, credit("bank-b", "bob", 5)});
    EXPECT_EQ(two.outcome, ClientOutcome::Invalid) << c.expect;
    EXPECT_EQ(two.seq, 0u);
    EXPECT_NE(two.reason.find(c.expect), std::string::npos) << "got: " << two.reason;
    auto one = submit({Op::statement("bank-a", "bump"), c.op});
    EXPECT_EQ(one.outcome, ClientOutcome::Invalid) << c.expect;
    EXPECT_NE(one.reason.find(c.expect), std::string::npos) << "got: " << one.reason;
  }
  ASSERT_TRUE(eventually([&] { return settled(); }));
  EXPECT_EQ(bumps("bank_a"), 0);
  expectUntouched();
  // The counter counts: a branch that PostgreSQL refuses did run its bump.
  auto o = submit({Op::statement("bank-a", "bump"), Op::statement("bank-a", "missing_table")});
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack);
  EXPECT_EQ(bumps("bank_a"), 1);
}

TEST_F(PostgresTest, FreeSqlTextIsInvalidAtTheCoordinator) {
  Op op = Op::statement("bank-a", "debit", {SqlValue::ofInt(5), SqlValue::ofText("alice")});
  op.sql = "UPDATE accounts SET balance = 0";
  auto o = submit({op, credit("bank-b", "bob", 5)});
  EXPECT_EQ(o.outcome, ClientOutcome::Invalid);
  EXPECT_EQ(o.seq, 0u);
  EXPECT_NE(o.reason.find("free SQL text is not accepted: name a statement declared in the agent's config"),
            std::string::npos)
      << o.reason;
  EXPECT_TRUE(settled());
  expectUntouched();
}

TEST_F(PostgresTest, AgentKilledAfterPrepareIsSettledWhenBack) {
  auto o = transferWithBankBFailing("agent.after_prepared_durable=crash");
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(prepared("bank_b"), 1u);  // PostgreSQL holds the prepared branch
  cluster_->startAgent("bank-b");
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished() && settled(); }));
  expectUntouched();
}

TEST_F(PostgresTest, AgentCrashAfterCommitPreparedBeforeItsRecordEndsCommitted) {
  // The COMMITTED record is written lazily after COMMIT PREPARED: a crash in
  // between leaves a PREPARED record that PostgreSQL no longer holds. Back
  // up, the coordinator's phase-2 retry (or the agent's in-doubt question)
  // commits it, and COMMIT PREPARED of the vanished gid is accepted.
  auto o = transferWithBankBFailing("pg.after_host_commit=crash");
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(prepared("bank_b"), 0u);      // PostgreSQL committed it
  EXPECT_EQ(balance("bank_b", "bob"), 100);
  cluster_->startAgent("bank-b");
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished() && settled(); }, std::chrono::seconds(15)));
  EXPECT_EQ(query(o.seq)->interaction.state, InteractionRecord::State::Committed);
  EXPECT_EQ(balance("bank_a", "alice"), 900);
  EXPECT_EQ(balance("bank_b", "bob"), 100);
}

TEST_F(PostgresTest, AgentCrashBeforeItsRecordRollsBackThePgPrepare) {
  // The first prepare under a coordinator epoch writes its PREPARED record
  // before voting (the epoch fence must be durable): a crash there leaves
  // PostgreSQL's prepared transaction without a record and no vote.
  auto o = transferWithBankBFailing("agent.before_prepared_durable=crash");
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(prepared("bank_b"), 1u);  // prepared in PostgreSQL, never voted
  // Reconcile: no record, so in doubt (recorded PREPARED); the coordinator
  // decided ROLLBACK, and its phase 2 or the agent's question undoes it.
  cluster_->startAgent("bank-b");
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished() && settled(); }, std::chrono::seconds(15)));
  expectUntouched();
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
}

TEST_F(PostgresTest, AgentCrashAfterPostgresPreparedBeforeTheVoteRollsBackOnceBack) {
  auto o = transferWithBankBFailing("pg.after_host_prepare=crash");
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(prepared("bank_b"), 1u);
  cluster_->startAgent("bank-b");
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished() && settled(); }, std::chrono::seconds(15)));
  expectUntouched();
}

// Once the epoch is durable, the vote leaves as soon as PostgreSQL has
// prepared the branch, and the PREPARED record follows lazily. A crash
// before it is durable leaves PostgreSQL's prepared transaction as the only
// trace of a YES vote: start-up must keep it in doubt and let the
// coordinator's decision (COMMIT here) finish it, never roll it back alone.
TEST_F(PostgresTest, AgentCrashBeforeItsLazyPreparedRecordIsSettledByTheDecision) {
  cluster_->stopAgent("bank-b");
  // The commit is held up before COMMIT PREPARED, so that the crash in the
  // lazy PREPARED record's group comes first and PostgreSQL still holds the
  // gid (with the coordinator's txid a commit would not wait for that
  // record: CommitOnTheCoordinatorsTxid... below covers that order).
  cluster_->startAgent("bank-b", "pg.before_lazy_prepared_record=crash,agent.before_commit_durable=delay(1000)");
  auto first = submit({debit("bank-a", "alice", 1), credit("bank-b", "bob", 1)});  // forced: the epoch's first
  ASSERT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
  // Another row at bank-b: bob's stays locked until the first's (held up) commit.
  auto o = submit({debit("bank-a", "alice", 100), credit("bank-b", "alice", 100)});
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  ASSERT_TRUE(o.outcome == ClientOutcome::Committed || o.outcome == ClientOutcome::RolledBack) << o.reason;
  cluster_->startAgent("bank-b");
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished() && settled(); }, std::chrono::seconds(15)));
  bool committed = query(o.seq)->interaction.state == InteractionRecord::State::Committed;
  EXPECT_EQ(committed, o.outcome == ClientOutcome::Committed);
  EXPECT_EQ(balance("bank_a", "alice"), committed ? 899 : 999);
  EXPECT_EQ(balance("bank_b", "alice"), committed ? 1100 : 1000);
  // The first interaction's lazy COMMITTED record may have died in the same
  // group: its phase-2 retry (or the agent's question) finishes it too.
  EXPECT_TRUE(eventually([&] { return query(first.seq)->interaction.finished() && inspect("bank-b").prepared == 0; },
                         std::chrono::seconds(15)));
  // The restarted agent found the gid without a record and kept it in doubt.
  std::ifstream log(cluster_->agentLog("bank-b"));
  std::string all((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(all.find("1 recovered in doubt"), std::string::npos) << all;
}

TEST_F(PostgresTest, LazyPreparedRecordFailingStillCommitsWithARecord) {
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b", "pg.before_lazy_prepared_record=1*error");
  auto first = submit({debit("bank-a", "alice", 1), credit("bank-b", "bob", 1)});
  ASSERT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
  auto o = submit({debit("bank-a", "alice", 100), credit("bank-b", "bob", 100)});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished() && settled(); }, std::chrono::seconds(15)));
  EXPECT_EQ(query(o.seq)->interaction.state, InteractionRecord::State::Committed);
  EXPECT_EQ(balance("bank_a", "alice"), 899);
  EXPECT_EQ(balance("bank_b", "bob"), 101);
  // The commit wrote the record the failed write did not.
  EXPECT_TRUE(eventually([&] { return inspect("bank-b").committed == 2u; }));
  EXPECT_TRUE(cluster_->agentRunning("bank-b"));
}

TEST_F(PostgresTest, RollbackOvertakingThePreparedRecordRollsBackPostgres) {
  // bank-b is held up after PREPARE TRANSACTION, before its vote: the
  // coordinator's deadline passes and its rollback (finding no record) rolls
  // PostgreSQL's prepared transaction back and leaves a tombstone, which the
  // prepare then finds: it votes NO and nothing stays prepared.
  auto o = transferWithBankBFailing("pg.after_host_prepare=1*delay(2500)");
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished() && settled(); }, std::chrono::seconds(15)));
  expectUntouched();
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
}

TEST_F(PostgresTest, PrepareFailingAfterPostgresPreparedIsRolledBackThere) {
  // PostgreSQL has prepared bank-b's branch, then the prepare fails before
  // its vote (an injected error here; a lost reply to PREPARE TRANSACTION
  // is the same): the call fails, no record names PostgreSQL's
  // prepared transaction, and the agent keeps running, so no reconcile at
  // start-up will find it. The coordinator's rollback must finish it.
  auto o = transferWithBankBFailing("pg.after_host_prepare=1*error");
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  EXPECT_TRUE(eventually([&] { return query(o.seq)->interaction.finished() && settled(); }, std::chrono::seconds(15)))
      << "left in pg_prepared_xacts of bank_b: " << prepared("bank_b");
  EXPECT_TRUE(cluster_->agentRunning("bank-b"));
  expectUntouched();
}

TEST_F(PostgresTest, PreparedTransactionFinishedAfterItsRollbackIsSweptWithoutARestart) {
  // A prepare's pipeline can finish in PostgreSQL after the agent that sent
  // it died and its successor already rolled the branch back (and found
  // nothing to undo). The running agent's sweep must roll that prepared
  // transaction back, as the branch's tombstone says, with no restart.
  const Xid xid{(std::uint64_t(9) << 48) | 4242, 1};  // coordinator node 9: its own epoch fence
  auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
  auto req = agent->capability().rollbackRequest();
  req.setEpoch(1);
  auto x = req.initXids(1)[0];
  x.setSeq(xid.seq);
  x.setBranch(xid.branch);
  req.send().wait(io_.waitScope);  // no record: a tombstone
  std::string gid = "keel:bank-b:" + std::to_string(xid.seq) + ":" + std::to_string(xid.branch);
  pgQuery(pg_->connString("bank_b"),
          "BEGIN; UPDATE accounts SET balance = balance + 5 WHERE name = 'bob'; PREPARE TRANSACTION '" + gid + "';");
  ASSERT_EQ(prepared("bank_b"), 1u);
  EXPECT_TRUE(eventually([&] { return prepared("bank_b") == 0; }, std::chrono::seconds(15)));
  EXPECT_EQ(balance("bank_b", "bob"), 0);
  EXPECT_TRUE(cluster_->agentRunning("bank-b"));
}

// ---------------------------------------------------------------- orphans, told at once
//
// The coordinator here retries a failed rollback only after 15 s (and
// probes an agent that failed once a minute), and the agents ask about a
// branch only after 10 s in doubt, so that what settles bank-b's branch
// within the bounds below is the agent asking at once: its sweep finding
// PostgreSQL's prepared transaction, and its in-doubt question to the
// coordinator.

class PostgresSlowRetryTest : public PostgresTest {
 protected:
  std::string coordinatorToml() override {
    return "call_timeout_ms = 1000\nretry_initial_ms = 15000\nretry_max_ms = 15000\nprobe_ms = 60000\n";
  }
  ClusterOptions clusterOptions() override {
    auto o = PostgresTest::clusterOptions();
    o.agentInDoubtQueryMs = 10000;
    return o;
  }
  // Backends of `db` running pg_sleep (not counting this query's own).
  bool sleeping(const std::string& db) {
    return !pgQuery(pg_->connString(db),
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND "
                    "query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()")
                .empty();
  }
};

// bank-b's branch sleeps in PostgreSQL before its PREPARE TRANSACTION (one
// pipeline: the statements, txid_current(), PREPARE TRANSACTION — a branch
// with no row count to check, so PREPARE rides in the same pipeline); bank-b
// is SIGKILLed meanwhile and restarted. PostgreSQL would run the dead
// agent's pipeline on to PREPARE TRANSACTION after the new start (it finds
// the client gone only when it answers); the restart ends that session
// first, so nothing of the dead agent's branch is ever prepared.
TEST_F(PostgresSlowRetryTest, ADeadAgentsPipelineStillRunningIsEndedAtItsRestart) {
  auto answer = client_->submit({debit("bank-a", "alice", 100), Op::statement("bank-b", "sleep", {SqlValue::ofFloat(3)})});
  io_.provider->getTimer().afterDelay(20 * kj::MILLISECONDS).wait(io_.waitScope);  // send it
  ASSERT_TRUE(eventually([&] { return sleeping("bank_b"); }, std::chrono::seconds(5)));
  cluster_->killAgent("bank-b", SIGKILL);  // before the coordinator's 1 s deadline: no rollback reached it
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  auto o = answer.wait(io_.waitScope);
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  ASSERT_TRUE(sleeping("bank_b")) << "PostgreSQL ended the dead agent's session by itself";
  cluster_->startAgent("bank-b");
  EXPECT_FALSE(sleeping("bank_b")) << "the dead agent's session outlived the restart";
  EXPECT_EQ(inAgentLog("bank-b", "found 1 session(s) an earlier run of this agent left open and ended 1"), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(3500));  // past the sleep it was in
  EXPECT_EQ(prepared("bank_b"), 0u);
  EXPECT_EQ(inAgentLog("bank-b", "of an earlier start)"), 0u);  // no orphan for the sweep to find
  expectUntouched();
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
}

// An orphan the restart could not stop (its session not ended: a role
// without the right to end it, or a PREPARE TRANSACTION already under way)
// appears in PostgreSQL after the new start's reconcile: a gid of an
// earlier incarnation, with no record, that no prepare of this process will
// ever record. Here prepared by hand under the last incarnation's gid.
// Before incarnations, the sweep waited for such a gid to be 10 s old.
TEST_F(PostgresSlowRetryTest, OrphanOfAnEarlierIncarnationIsSettledWithinSeconds) {
  auto o = submit({credit("bank-b", "bob", 5000), debit("bank-a", "alice", 5000)});  // alice has 1000: NO
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack);
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b");
  // This start's incarnation, from its reconcile's line.
  std::ifstream f(cluster_->agentLog("bank-b"));
  std::string log((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto at = log.rfind("; incarnation ");
  ASSERT_NE(at, std::string::npos) << log;
  const std::uint64_t incarnation = std::stoull(log.substr(at + 14));
  ASSERT_GE(incarnation, 2u);
  const std::string gid = pgGid("bank-b", Xid{o.seq, 7}, incarnation - 1);  // a branch bank-b never saw
  pgQuery(pg_->connString("bank_b"),
          "BEGIN; UPDATE accounts SET balance = balance + 5 WHERE name = 'bob'; PREPARE TRANSACTION '" + gid + "';");
  auto ms = msUntil([&] { return inAgentLog("bank-b", "coordinator says rolled back") == 1 && prepared("bank_b") == 0; },
                    std::chrono::seconds(30));
  std::printf("orphan of an earlier incarnation settled %lld ms after it was prepared\n", ms);
  ASSERT_GE(ms, 0) << "not settled after 30 s";
  EXPECT_LT(ms, 3000);
  EXPECT_EQ(inAgentLog("bank-b", "(1 of an earlier start)"), 1u);       // recorded in doubt by the sweep
  EXPECT_EQ(inAgentLog("bank-b", "coordinator says rolled back"), 1u);  // and asked at once
  expectUntouched();
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
}

// A prepared transaction under a gid of the form agents wrote before
// incarnations, with no record, appearing while the agent runs (its
// predecessor's pipeline): prepared by an earlier incarnation by
// definition, so in doubt at once and asked of the coordinator, which
// rolled its interaction back.
TEST_F(PostgresSlowRetryTest, OrphanUnderAGidWithoutIncarnationIsInDoubtAtOnce) {
  auto o = submit({credit("bank-b", "bob", 5000), debit("bank-a", "alice", 5000)});  // alice has 1000: NO
  ASSERT_EQ(o.outcome, ClientOutcome::RolledBack);
  const Xid xid{o.seq, 7};  // a branch bank-b never saw; the coordinator answers for the whole seq
  std::string gid = "keel:bank-b:" + std::to_string(xid.seq) + ":" + std::to_string(xid.branch);
  pgQuery(pg_->connString("bank_b"),
          "BEGIN; UPDATE accounts SET balance = balance + 5 WHERE name = 'bob'; PREPARE TRANSACTION '" + gid + "';");
  auto ms = msUntil([&] { return prepared("bank_b") == 0; }, std::chrono::seconds(30));
  std::printf("orphan %s settled %lld ms after it was prepared\n", gid.c_str(), ms);
  ASSERT_GE(ms, 0) << "still prepared after 30 s";
  EXPECT_LT(ms, 3000);
  EXPECT_EQ(balance("bank_b", "bob"), 0);
  EXPECT_EQ(inAgentLog("bank-b", "branch " + xid.str() + " in doubt"), 1u);
}

// The coordinator dies at the first vote (bank-a's) while bank-b is held
// up after PREPARE TRANSACTION, before its record. Restarted, its recovery
// sweep asks bank-b for its in-doubt branches before that record exists, so
// it never learns of the branch; the record then lands with the dead
// incarnation's epoch, older than the one the sweep's call fenced with: in
// doubt already, asked at once (the coordinator never recorded the
// interaction: rolled back), not after in_doubt_query_ms.
//
// Without staged commit: staged, the coordinator's restart reads the votes
// back and rolls bank-b's branch back itself (PostgresStagedTest below).
class PostgresSlowRetryPresumedAbortTest : public PostgresSlowRetryTest {
 protected:
  std::string coordinatorToml() override { return PostgresSlowRetryTest::coordinatorToml() + "staged_commit = false\n"; }
};

TEST_F(PostgresSlowRetryPresumedAbortTest, BranchRecordedAfterItsCoordinatorRestartedIsAskedAtOnce) {
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b", "pg.after_host_prepare=1*delay(3000)");
  crashCoordinatorDuring("coord.after_prepare=1*crash", {debit("bank-a", "alice", 100), credit("bank-b", "bob", 100)});
  ASSERT_TRUE(eventually([&] { return prepared("bank_b") == 1; }, std::chrono::seconds(5)));
  cluster_->startCoordinator();
  reconnect();
  auto ms = msUntil([&] { return inAgentLog("bank-b", "coordinator says rolled back") == 1 && prepared("bank_b") == 0; },
                    std::chrono::seconds(30));
  std::printf("branch of the dead coordinator incarnation settled %lld ms after the coordinator's restart "
              "(its record landed up to 3 s after the prepare)\n",
              ms);
  ASSERT_GE(ms, 0) << "not settled after 30 s";
  EXPECT_LT(ms, 5000);
  EXPECT_TRUE(eventually([&] { return settled(); }));
  expectUntouched();
}

TEST_F(PostgresTest, PostgresKilledAfterPrepareCommitsOnceBack) {
  cluster_->stopCoordinator();
  cluster_->startCoordinator("coord.before_phase2=1*delay(3000)");
  reconnect();
  auto answer = client_->submit({debit("bank-a", "alice", 250), credit("bank-b", "bob", 250)});
  io_.provider->getTimer().afterDelay(20 * kj::MILLISECONDS).wait(io_.waitScope);  // send it
  // Both branches prepared in PostgreSQL; the coordinator now waits before phase 2.
  ASSERT_TRUE(eventually([&] { return prepared("bank_a") == 1 && prepared("bank_b") == 1; }));
  pg_->stopImmediate();  // both databases' prepared transactions survive a crash
  pg_->restart();        // (on this thread: the server dies with the thread that started it)
  auto o = answer.wait(io_.waitScope);
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.state == InteractionRecord::State::Committed; },
                         std::chrono::seconds(20)));
  EXPECT_EQ(balance("bank_a", "alice"), 750);
  EXPECT_EQ(balance("bank_b", "bob"), 250);
  EXPECT_TRUE(settled());
}

TEST_F(PostgresTest, CoordinatorKilledBetweenPrepareAndCommit) {
  crashCoordinatorDuring("coord.after_decision_durable=crash",
                         {debit("bank-a", "alice", 40), credit("bank-b", "bob", 40)});
  EXPECT_EQ(prepared("bank_a"), 1u);
  EXPECT_EQ(prepared("bank_b"), 1u);
  cluster_->startCoordinator();
  reconnect();
  ASSERT_TRUE(eventually([&] { return settled(); }, std::chrono::seconds(15)));
  EXPECT_EQ(balance("bank_a", "alice"), 960);
  EXPECT_EQ(balance("bank_b", "bob"), 40);
}

// ---------------------------------------------------------------- a gid gone is no outcome
//
// A prepared transaction PostgreSQL no longer holds says nothing about how
// it ended: a DBA may have run COMMIT PREPARED or ROLLBACK PREPARED by hand.
// These tests call bank-b directly, as a coordinator would (branches of
// coordinator node 9, so that the cluster's coordinator leaves them alone),
// and check both what the agent answers and what its branch log records
// (read from its data directory once it is stopped).

class PostgresOutcomeTest : public PostgresTest {
 protected:
  static constexpr std::uint64_t kEpoch = 1;
  static Xid xidOf(std::uint64_t n) { return Xid{(std::uint64_t(9) << 48) | n, 1}; }

  // bank-b restarted with `failpoints`, then a one-phase credit of 100 to
  // bob sent to it straight (no coordinator) and on its way when this returns.
  struct OnePhaseSent {
    kj::Own<AgentClient> agent;
    capnp::RemotePromise<wire::Participant::CommitOnePhaseResults> call;
  };
  OnePhaseSent onePhaseCreditToBob(const std::string& failpoints, Xid xid) {
    cluster_->stopAgent("bank-b");
    cluster_->startAgent("bank-b", failpoints);
    auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
    auto req = agent->capability().commitOnePhaseRequest();
    req.setEpoch(kEpoch);
    fillXid(req.initXid(), xid);
    std::vector<Op> ops{credit("bank-b", "bob", 100)};
    fillOps(req.initOperations(ops.size()), ops);
    OnePhaseSent sent{kj::mv(agent), req.send()};
    io_.waitScope.poll();  // the call leaves now
    return sent;
  }
  // The gid bank-b prepared for a branch (with its incarnation), as a DBA
  // would find it in pg_prepared_xacts.
  std::string gidOf(Xid xid) {
    std::string bare = oldGidOf(xid);
    for (auto& g : preparedGids("bank_b")) {
      if (g == bare || g.rfind(bare + ":", 0) == 0) return g;
    }
    ADD_FAILURE() << "bank_b holds no prepared transaction of " << xid.str();
    return bare;
  }
  // A gid of the form agents wrote before incarnations.
  static std::string oldGidOf(Xid xid) {
    return "keel:bank-b:" + std::to_string(xid.seq) + ":" + std::to_string(xid.branch);
  }

  struct VoteAtB {
    wire::Vote vote;
    std::uint64_t hostTxid;
    std::string reason;
  };
  VoteAtB voteAtB(Xid xid, const std::vector<Op>& ops) {
    auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
    auto req = agent->capability().prepareRequest();
    req.setEpoch(kEpoch);
    fillXid(req.initXid(), xid);
    fillOps(req.initOperations(ops.size()), ops);
    auto resp = req.send().wait(io_.waitScope);
    return {resp.getVote(), resp.getHostTxid(), resp.getReason().cStr()};
  }
  wire::Vote prepareAtB(Xid xid, const std::vector<Op>& ops) { return voteAtB(xid, ops).vote; }
  // Restarts bank-b with `failpoints` and makes its first prepare under the
  // epoch (`first`, its record forced, so that the next one's is lazy),
  // rolled back.
  void restartBPastItsFirstPrepare(const std::string& failpoints, Xid first) {
    cluster_->stopAgent("bank-b");
    cluster_->startAgent("bank-b", failpoints);
    ASSERT_EQ(prepareAtB(first, {credit("bank-b", "bob", 1)}), wire::Vote::YES);
    EXPECT_EQ(finishAtB(first, /*commit=*/false), wire::BranchOutcome::ROLLED_BACK);
  }
  // A prepare at bank-b that must vote YES: the hostTxid its vote carries.
  std::uint64_t yesTxidAtB(Xid xid, const std::vector<Op>& ops) {
    auto v = voteAtB(xid, ops);
    EXPECT_EQ(v.vote, wire::Vote::YES) << v.reason;
    return v.hostTxid;
  }
  // A commit at bank-b carrying `txids` beside its one xid, as a
  // coordinator sends the txids its COMMIT record holds; throws if it fails.
  wire::BranchOutcome commitAtBWithTxids(Xid xid, const std::vector<std::uint64_t>& txids) {
    auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
    auto req = agent->capability().commitRequest();
    req.setEpoch(kEpoch);
    fillXid(req.initXids(1)[0], xid);
    auto t = req.initHostTxids(txids.size());
    for (unsigned i = 0; i < txids.size(); ++i) t.set(i, txids[i]);
    return req.send().wait(io_.waitScope).getOutcomes()[0];
  }
  // Phase 2 at bank-b as the coordinator sends it; throws if the call fails.
  wire::BranchOutcome finishAtB(Xid xid, bool commit) {
    auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
    if (commit) {
      auto req = agent->capability().commitRequest();
      req.setEpoch(kEpoch);
      fillXid(req.initXids(1)[0], xid);
      return req.send().wait(io_.waitScope).getOutcomes()[0];
    }
    auto req = agent->capability().rollbackRequest();
    req.setEpoch(kEpoch);
    fillXid(req.initXids(1)[0], xid);
    return req.send().wait(io_.waitScope).getOutcomes()[0];
  }
  // A session of bank_b that holds bob's row (BEGIN; SELECT ... FOR
  // UPDATE) until the caller sends it COMMIT and PQfinish; null (and the
  // test fails) if it could not.
  // `applicationName`: the session's application_name (none: libpq's default).
  PGconn* holdBobsRowAtB(const std::string& applicationName = "") {
    PGconn* c = PQconnectdb(pg_->connString("bank_b").c_str());
    if (PQstatus(c) != CONNECTION_OK) {
      ADD_FAILURE() << PQerrorMessage(c);
      PQfinish(c);
      return nullptr;
    }
    std::vector<std::string> steps{"BEGIN", "SELECT 1 FROM accounts WHERE name = 'bob' FOR UPDATE"};
    if (!applicationName.empty()) steps.insert(steps.begin(), "SET application_name = '" + applicationName + "'");
    for (const auto& q : steps) {
      PGresult* r = PQexec(c, q.c_str());
      EXPECT_TRUE(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK) << q;
      PQclear(r);
    }
    return c;
  }
  // A rollback at bank-b that must not be answered yet: the branch's
  // one-phase commit is still running (`when` says where, for the failure).
  void expectRollbackStillRunning(Xid xid, const std::string& when) {
    try {
      auto o = finishAtB(xid, /*commit=*/false);
      ADD_FAILURE() << "a rollback " << when << " answered " << int(o);
    } catch (const kj::Exception& e) {
      EXPECT_NE(std::string(e.getDescription().cStr()).find("still running"), std::string::npos)
          << when << ": " << e.getDescription().cStr();
    }
  }
  // bank-b's record of a branch; bank-b must be stopped.
  std::optional<BranchRecord> recordAtB(Xid xid) {
    EXPECT_FALSE(cluster_->agentRunning("bank-b"));
    BranchLog log(cluster_->baseDir() + "/bank-b", std::size_t(1) << 30);
    return log.branches({xid})[0];
  }
  // Stops bank-b and returns its record of a branch (an empty one, and the
  // test fails, if it has none).
  BranchRecord recordAfterStoppingB(Xid xid) {
    cluster_->stopAgent("bank-b");
    auto rec = recordAtB(xid);
    if (!rec) ADD_FAILURE() << "bank-b has no record of branch " << xid.str();
    return rec.value_or(BranchRecord{});
  }
  // bank-b's record of a one-phase branch whose agent died before its
  // outcome was recorded: ACTIVE, with a marker row to tell it (the test
  // fails otherwise). bank-b must be stopped.
  BranchRecord activeOnePhaseAtB(Xid xid) {
    auto rec = recordAtB(xid);
    if (!rec) {
      ADD_FAILURE() << "bank-b has no record of branch " << xid.str();
      return BranchRecord{};
    }
    EXPECT_EQ(rec->state, BranchStatus::Active);
    EXPECT_TRUE(rec->onePhase);
    EXPECT_TRUE(rec->hostMarker);
    return *rec;
  }
  // Writes into bank-b's log (bank-b stopped) the ACTIVE record of a
  // one-phase credit of 100 to bob, as an agent that died before its
  // outcome leaves it, holding `hostTxid` (0: an intent written while the
  // statements ran). Returns the gid of its marker row.
  std::string writeActiveOnePhaseAtB(Xid xid, std::uint64_t hostTxid) {
    EXPECT_FALSE(cluster_->agentRunning("bank-b"));
    BranchLog log(cluster_->baseDir() + "/bank-b", std::size_t(1) << 30);
    log.start();
    BranchRecord rec;
    rec.xid = xid;
    rec.epoch = kEpoch;
    rec.onePhase = true;
    rec.ops = {credit("bank-b", "bob", 100)};
    rec.state = BranchStatus::Active;
    rec.hostTxid = hostTxid;
    rec.hostIncarnation = log.incarnation();
    rec.hostMarker = true;
    rec.createdUs = 1;
    log.log().runSync([&](lmdb::Txn& txn) { log.put(txn, rec); });
    return pgGid("bank-b", xid, rec.hostIncarnation);
  }
  // The marker rows of bank_b's one-phase commits.
  std::size_t markersAtB() { return pgQuery(pg_->connString("bank_b"), "SELECT gid FROM keel_one_phase").size(); }
  // How often bank-b's log says `text`.
  std::size_t inAgentLog(const std::string& text) { return PostgresTest::inAgentLog("bank-b", text); }
  // BEGIN; sql; PREPARE TRANSACTION gid in bank_b, by hand; returns its txid.
  std::uint64_t prepareByHand(const std::string& gid, const std::string& sql) {
    PGconn* c = PQconnectdb(pg_->connString("bank_b").c_str());
    std::string txid;
    for (const std::string& q : {std::string("BEGIN"), sql, std::string("SELECT txid_current()"),
                                 "PREPARE TRANSACTION '" + gid + "'"}) {
      PGresult* r = PQexec(c, q.c_str());
      auto st = PQresultStatus(r);
      EXPECT_TRUE(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) << q << ": " << PQerrorMessage(c);
      if (st == PGRES_TUPLES_OK) txid = PQgetvalue(r, 0, 0);
      PQclear(r);
    }
    PQfinish(c);
    return std::stoull(txid);
  }
};

// A one-phase call whose answer the coordinator gave up on: its rollback
// reaches the agent before the call's own turn came.
TEST_F(PostgresOutcomeTest, OnePhaseOvertakenByItsRollbackIsNeverCommitted) {
  const Xid xid = xidOf(20);
  auto sent = onePhaseCreditToBob("pg.before_one_phase_intent=1*delay(800)", xid);
  auto& onePhase = sent.call;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::ROLLED_BACK);  // a tombstone
  auto answer = onePhase.wait(io_.waitScope);
  EXPECT_EQ(answer.getOutcome(), wire::BranchOutcome::ROLLED_BACK) << answer.getReason().cStr();
  EXPECT_EQ(balance("bank_b", "bob"), 0);
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::ROLLED_BACK);  // and it stays so
  EXPECT_EQ(recordAfterStoppingB(xid).state, BranchStatus::RolledBack);
}

// A rollback that arrives while a one-phase COMMIT is in flight cannot tell
// its outcome yet: it says so (the coordinator asks again) instead of
// guessing "rolled back" a moment before PostgreSQL commits.
TEST_F(PostgresOutcomeTest, RollbackDuringAOnePhaseCommitWaitsForItsOutcome) {
  const Xid xid = xidOf(21);
  // Its statements run and its intent is recorded long before the rollback
  // below; its COMMIT waits 2.5 s.
  auto sent = onePhaseCreditToBob("agent.before_commit_durable=1*delay(2500)", xid);
  auto& onePhase = sent.call;
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  expectRollbackStillRunning(xid, "during the one-phase COMMIT");
  auto answer = onePhase.wait(io_.waitScope);
  EXPECT_EQ(answer.getOutcome(), wire::BranchOutcome::COMMITTED) << answer.getReason().cStr();
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::COMMITTED);  // asked again: the truth
  EXPECT_EQ(balance("bank_b", "bob"), 100);
  EXPECT_EQ(recordAfterStoppingB(xid).state, BranchStatus::Committed);
}

TEST_F(PostgresOutcomeTest, ForcedCommitOfABranchNeverPreparedAnswersUnknownAndRecordsNothing) {
  const Xid xid = xidOf(1);
  EXPECT_EQ(finishAtB(xid, /*commit=*/true), wire::BranchOutcome::UNKNOWN);
  EXPECT_EQ(finishAtB(xid, /*commit=*/true), wire::BranchOutcome::UNKNOWN);  // asked again: still unknown
  EXPECT_EQ(inAgentLog("branch " + xid.str() + ": outcome unknown"), 1u);     // warned once
  EXPECT_EQ(balance("bank_b", "bob"), 0);
  cluster_->stopAgent("bank-b");
  EXPECT_FALSE(recordAtB(xid).has_value());  // nothing claims an outcome
}

TEST_F(PostgresOutcomeTest, ManualRollbackPreparedThenCommitIsAConflictRecordedRolledBack) {
  const Xid xid = xidOf(2);
  ASSERT_EQ(prepareAtB(xid, {credit("bank-b", "bob", 5)}), wire::Vote::YES);
  ASSERT_EQ(prepared("bank_b"), 1u);
  pgQuery(pg_->connString("bank_b"), "ROLLBACK PREPARED '" + gidOf(xid) + "'");  // a DBA, by hand
  EXPECT_EQ(finishAtB(xid, /*commit=*/true), wire::BranchOutcome::CONFLICT);
  EXPECT_EQ(finishAtB(xid, /*commit=*/true), wire::BranchOutcome::CONFLICT);  // from the record now
  EXPECT_EQ(balance("bank_b", "bob"), 0);
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::RolledBack);
  EXPECT_NE(rec.hostTxid, 0u);
  EXPECT_NE(rec.reason.find("ROLLBACK PREPARED outside Keel"), std::string::npos) << rec.reason;
  EXPECT_NE(rec.reason.find("'aborted'"), std::string::npos) << rec.reason;
}

TEST_F(PostgresOutcomeTest, ManualCommitPreparedThenRollbackAnswersCommitted) {
  const Xid xid = xidOf(3);
  ASSERT_EQ(prepareAtB(xid, {credit("bank-b", "bob", 5)}), wire::Vote::YES);
  pgQuery(pg_->connString("bank_b"), "COMMIT PREPARED '" + gidOf(xid) + "'");  // a DBA, by hand
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::COMMITTED);
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::COMMITTED);
  EXPECT_EQ(balance("bank_b", "bob"), 5);
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::Committed);
  EXPECT_NE(rec.reason.find("COMMIT PREPARED outside Keel"), std::string::npos) << rec.reason;
}

// The agent dies after PostgreSQL committed a one-phase branch, before its
// record says so: the marker row that committed with it settles it
// committed at the next start, and is deleted once that is recorded.
TEST_F(PostgresOutcomeTest, OnePhaseCrashAfterCommitIsSettledCommittedByItsMarkerRow) {
  const Xid xid = xidOf(22);
  auto sent = onePhaseCreditToBob("pg.after_one_phase_commit=1*crash", xid);
  EXPECT_ANY_THROW(sent.call.wait(io_.waitScope));
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(balance("bank_b", "bob"), 100);
  EXPECT_EQ(markersAtB(), 1u);
  activeOnePhaseAtB(xid);

  cluster_->startAgent("bank-b");
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::COMMITTED);  // the truth, not the request
  EXPECT_EQ(markersAtB(), 0u);  // deleted at start-up, its outcome recorded
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::Committed);
  EXPECT_NE(rec.reason.find("marker row: present"), std::string::npos) << rec.reason;
}

// "Committed" leaves once PostgreSQL committed the branch, its marker row
// with it, over the ACTIVE record forced before COMMIT; the COMMITTED
// record follows lazily. The agent dies after the answer, before that
// record: the marker row settles the branch committed at the next start.
TEST_F(PostgresOutcomeTest, OnePhaseAnswersCommittedBeforeItsFinalRecordAndAKillThenLosesNothing) {
  const Xid xid = xidOf(25);
  auto sent = onePhaseCreditToBob("pg.before_lazy_one_phase_final=1*delay(5000)", xid);
  auto answer = sent.call.wait(io_.waitScope);
  ASSERT_EQ(answer.getOutcome(), wire::BranchOutcome::COMMITTED) << answer.getReason().cStr();
  EXPECT_EQ(balance("bank_b", "bob"), 100);
  cluster_->killAgent("bank-b", SIGKILL);  // the final record is still held up on the writer
  activeOnePhaseAtB(xid);  // ACTIVE: the final record was not durable before the answer
  EXPECT_EQ(markersAtB(), 1u);  // kept until the outcome is recorded

  cluster_->startAgent("bank-b");
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::COMMITTED);
  EXPECT_EQ(markersAtB(), 0u);
  EXPECT_EQ(balance("bank_b", "bob"), 100);
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::Committed);
  EXPECT_NE(rec.reason.find("marker row: present"), std::string::npos) << rec.reason;
}

// The lazy COMMITTED record fails to be written after "committed" left:
// the branch stays ACTIVE with its marker row, and a rollback's question
// settles it committed from that row (without a restart), recording it
// and letting the marker row go.
TEST_F(PostgresOutcomeTest, OnePhaseWhoseLazyFinalRecordFailsIsSettledCommittedByARollbacksQuestion) {
  const Xid xid = xidOf(26);
  auto sent = onePhaseCreditToBob("pg.before_lazy_one_phase_final=1*error", xid);
  auto answer = sent.call.wait(io_.waitScope);
  ASSERT_EQ(answer.getOutcome(), wire::BranchOutcome::COMMITTED) << answer.getReason().cStr();
  ASSERT_TRUE(eventually([&] { return inAgentLog("its one-phase COMMITTED record was not written") == 1; },
                         std::chrono::seconds(3)));
  EXPECT_EQ(markersAtB(), 1u);  // kept: nothing recorded the outcome yet
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::COMMITTED);  // the truth, not the request
  EXPECT_TRUE(eventually([&] { return markersAtB() == 0; }, std::chrono::seconds(5)));
  EXPECT_EQ(balance("bank_b", "bob"), 100);
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::Committed);
  EXPECT_NE(rec.reason.find("marker row: present"), std::string::npos) << rec.reason;
}

// The agent dies after its one-phase intent (the ACTIVE record, written
// while the statements ran, with no txid) and before COMMIT: PostgreSQL's
// transaction dies with the session, its marker row with it. The next
// start probes the row (an INSERT that would wait for a transaction still
// holding it) and settles the branch rolled back.
TEST_F(PostgresOutcomeTest, OnePhaseKilledBetweenItsIntentAndCommitIsSettledRolledBackByProbingItsMarkerRow) {
  const Xid xid = xidOf(28);
  auto sent = onePhaseCreditToBob("agent.before_commit_durable=1*crash", xid);
  EXPECT_ANY_THROW(sent.call.wait(io_.waitScope));
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(activeOnePhaseAtB(xid).hostTxid, 0u);  // the intent left before the trip's txid came back
  cluster_->startAgent("bank-b");
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::ROLLED_BACK);
  EXPECT_EQ(balance("bank_b", "bob"), 0);
  EXPECT_EQ(markersAtB(), 0u);  // the probe's own row was rolled back
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::RolledBack);
  EXPECT_NE(rec.reason.find("marker row: absent (probed)"), std::string::npos) << rec.reason;
}

// The probe of an intent without a txid waits for a transaction that still
// holds its marker row (here the test's own session plays a crashed
// agent's session whose COMMIT has not landed yet): up to its lock_timeout
// the branch is "still running", never "rolled back"; once the holder
// commits, the row is there and the branch committed. A probe that only
// read the row would answer "rolled back" while the row could still commit.
TEST_F(PostgresOutcomeTest, TheMarkerProbeWaitsForASessionStillHoldingTheRow) {
  const Xid xid = xidOf(31);
  cluster_->stopAgent("bank-b");
  const std::string gid = writeActiveOnePhaseAtB(xid, /*hostTxid=*/0);
  PGconn* holder = PQconnectdb(pg_->connString("bank_b").c_str());
  ASSERT_EQ(PQstatus(holder), CONNECTION_OK) << PQerrorMessage(holder);
  for (const std::string& q : {std::string("BEGIN"), "INSERT INTO keel_one_phase (gid) VALUES ('" + gid + "')"}) {
    PGresult* r = PQexec(holder, q.c_str());
    EXPECT_EQ(PQresultStatus(r), PGRES_COMMAND_OK) << q << ": " << PQerrorMessage(holder);
    PQclear(r);
  }
  cluster_->startAgent("bank-b");  // its start-up probe waits out the lock_timeout and leaves it
  expectRollbackStillRunning(xid, "while another session held the marker row");
  PQclear(PQexec(holder, "COMMIT"));
  PQfinish(holder);
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::COMMITTED);  // the truth, not the request
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::Committed);
  EXPECT_NE(rec.reason.find("marker row: present (probed)"), std::string::npos) << rec.reason;
}

// An earlier run of bank-b died with a session open in PostgreSQL that
// holds bob's row (a machine that dies sends no TCP reset, so PostgreSQL
// keeps such a session until its keepalives give up, hours by default).
// Here the test's own session plays it, named as bank-b names its
// sessions. The next start ends it: a credit to bob then votes YES at once
// instead of waiting out the lock_timeout, and a session named otherwise
// (anyone else's) is left alone.
TEST_F(PostgresOutcomeTest, SessionsAnEarlierRunLeftOpenAreEndedAtStart) {
  cluster_->stopAgent("bank-b");
  const std::string name = pgSessionName(pgSessionPrefix(cluster_->baseDir() + "/bank-b"), "bank-b");
  ASSERT_EQ(name.rfind("keel ", 0), 0u) << name;
  PGconn* earlier = holdBobsRowAtB(name);
  ASSERT_NE(earlier, nullptr);
  PGconn* other = PQconnectdb(pg_->connString("bank_b").c_str());
  ASSERT_EQ(PQstatus(other), CONNECTION_OK) << PQerrorMessage(other);
  PQclear(PQexec(other, "SET application_name = 'keel 0123 someone else'"));
  cluster_->startAgent("bank-b");
  EXPECT_EQ(inAgentLog("found 1 session(s) an earlier run of this agent left open and ended 1"), 1u);
  auto v = voteAtB(xidOf(32), {credit("bank-b", "bob", 3)});
  EXPECT_EQ(v.vote, wire::Vote::YES) << v.reason;
  EXPECT_EQ(finishAtB(xidOf(32), /*commit=*/true), wire::BranchOutcome::COMMITTED);
  EXPECT_EQ(balance("bank_b", "bob"), 3);
  PGresult* r = PQexec(earlier, "SELECT 1");
  EXPECT_NE(PQresultStatus(r), PGRES_TUPLES_OK) << "the earlier run's session is still open";
  PQclear(r);
  PQfinish(earlier);
  r = PQexec(other, "SELECT 1");
  EXPECT_EQ(PQresultStatus(r), PGRES_TUPLES_OK) << PQerrorMessage(other);
  PQclear(r);
  PQfinish(other);
}

// Its intent is durable while the statements' trip still waits for a row
// lock (the marker row not inserted yet): a rollback's question then is
// not answered (the call may still commit), and once the call committed
// the question hears "committed".
TEST_F(PostgresOutcomeTest, ARollbacksQuestionWhileTheOnePhaseTripWaitsForALockWaitsForTheCall) {
  const Xid xid = xidOf(29);
  PGconn* holder = holdBobsRowAtB();
  ASSERT_NE(holder, nullptr);
  auto sent = onePhaseCreditToBob("", xid);  // its UPDATE of bob waits for `holder` (lock_timeout 1 s)
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  expectRollbackStillRunning(xid, "while the one-phase trip waited for a lock");
  PQclear(PQexec(holder, "COMMIT"));
  PQfinish(holder);
  auto answer = sent.call.wait(io_.waitScope);
  EXPECT_EQ(answer.getOutcome(), wire::BranchOutcome::COMMITTED) << answer.getReason().cStr();
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::COMMITTED);  // asked again: the truth
  EXPECT_EQ(balance("bank_b", "bob"), 100);
  EXPECT_EQ(recordAfterStoppingB(xid).state, BranchStatus::Committed);
}

// The agent's session is terminated while its one-phase trip waits for a
// row lock, before COMMIT was sent: nothing of the branch can commit, so
// the call answers "rolled back" and records it, instead of failing and
// leaving the outcome to be settled later.
TEST_F(PostgresOutcomeTest, AOnePhaseTripWhoseConnectionDiesBeforeCommitAnswersRolledBack) {
  const Xid xid = xidOf(30);
  PGconn* holder = holdBobsRowAtB();
  ASSERT_NE(holder, nullptr);
  auto sent = onePhaseCreditToBob("", xid);  // its UPDATE of bob waits for `holder` (lock_timeout 1 s)
  ASSERT_TRUE(eventually([&] {
    return !pgQuery(pg_->connString("bank_b"),
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'bank_b' AND "
                    "wait_event_type = 'Lock'")
                .empty();
  }, std::chrono::milliseconds(800)));
  auto answer = sent.call.wait(io_.waitScope);
  EXPECT_EQ(answer.getOutcome(), wire::BranchOutcome::ROLLED_BACK) << answer.getReason().cStr();
  EXPECT_NE(std::string(answer.getReason().cStr()).find("before COMMIT was sent"), std::string::npos)
      << answer.getReason().cStr();
  PQclear(PQexec(holder, "COMMIT"));
  PQfinish(holder);
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::ROLLED_BACK);
  EXPECT_EQ(balance("bank_b", "bob"), 0);
  EXPECT_EQ(markersAtB(), 0u);
  EXPECT_EQ(recordAfterStoppingB(xid).state, BranchStatus::RolledBack);
}

// A rollback's question (the coordinator's recovery asking about a
// one-phase call whose answer it has lost) reads the branch ACTIVE: the
// call answered "committed" and its COMMITTED record is still on its way.
// Before the question asks PostgreSQL, that record lands and the keeper
// deletes the marker row. Read then, the row says "absent"; the record,
// not the row, must be the answer.
TEST_F(PostgresOutcomeTest, ARollbacksQuestionOvertakenByTheLazyCommittedRecordAnswersCommitted) {
  const Xid xid = xidOf(27);
  auto sent = onePhaseCreditToBob(
      "pg.before_lazy_one_phase_final=1*delay(1000),pg.before_one_phase_settle=1*delay(4000)", xid);
  auto answer = sent.call.wait(io_.waitScope);
  ASSERT_EQ(answer.getOutcome(), wire::BranchOutcome::COMMITTED) << answer.getReason().cStr();
  EXPECT_EQ(markersAtB(), 1u);  // the COMMITTED record is held: ACTIVE still
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::COMMITTED);
  // The case this test is about happened: the row was gone before the
  // question looked, and what the question found disagreed with the record.
  EXPECT_EQ(markersAtB(), 0u);
  EXPECT_EQ(inAgentLog("that record stands"), 1u);
  EXPECT_EQ(balance("bank_b", "bob"), 100);
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::Committed);
}

// PostgreSQL hands a txid out again after a crash when nothing of it had
// reached its WAL on disk: txid_status() then speaks of another
// transaction. Here the recorded txid is one that another transaction
// committed; the one-phase branch never committed (no marker row), so it
// is settled rolled back, not "committed".
TEST_F(PostgresOutcomeTest, OnePhaseWhoseTxidRanAgainForAnotherTransactionIsRolledBack) {
  const Xid xid = xidOf(23);
  cluster_->stopAgent("bank-b");
  auto rows = pgQuery(pg_->connString("bank_b"),
                      "WITH u AS (UPDATE accounts SET balance = balance WHERE name = 'bob' RETURNING 1) "
                      "SELECT txid_current() FROM u");
  ASSERT_FALSE(rows.empty());
  const std::uint64_t other = std::stoull(rows.at(0).at(0));
  ASSERT_EQ(pgQuery(pg_->connString("bank_b"), "SELECT txid_status(" + std::to_string(other) + ")").at(0).at(0),
            "committed");
  writeActiveOnePhaseAtB(xid, other);
  cluster_->startAgent("bank-b");
  EXPECT_EQ(finishAtB(xid, /*commit=*/false), wire::BranchOutcome::ROLLED_BACK);
  EXPECT_EQ(balance("bank_b", "bob"), 0);
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::RolledBack);
  EXPECT_NE(rec.reason.find("marker row: absent"), std::string::npos) << rec.reason;
  EXPECT_NE(rec.reason.find("'committed'"), std::string::npos) << rec.reason;  // what txid_status alone said
}

// While it runs, a one-phase commit's marker row exists; once its outcome
// is recorded the keeper deletes it, so the table stays small.
TEST_F(PostgresOutcomeTest, OnePhaseMarkerRowsAreDeletedOnceTheOutcomeIsRecorded) {
  const Xid xid = xidOf(24);
  auto sent = onePhaseCreditToBob("pg.after_one_phase_commit=1*delay(1500)", xid);
  ASSERT_TRUE(eventually([&] { return markersAtB() == 1; }, std::chrono::seconds(3)));
  auto answer = sent.call.wait(io_.waitScope);
  EXPECT_EQ(answer.getOutcome(), wire::BranchOutcome::COMMITTED) << answer.getReason().cStr();
  EXPECT_TRUE(eventually([&] { return markersAtB() == 0; }, std::chrono::seconds(5)));
  EXPECT_EQ(balance("bank_b", "bob"), 100);
}

TEST_F(PostgresOutcomeTest, CrashAfterCommitPreparedIsSettledByTxidStatusNotUnknown) {
  // The second prepare's PREPARED record is lazy and held up on the log's
  // writer; its commit must make it durable before COMMIT PREPARED, and the
  // agent dies right after COMMIT PREPARED, before its COMMITTED record.
  restartBPastItsFirstPrepare("pg.before_lazy_prepared_record=1*delay(500),pg.after_host_commit=1*crash", xidOf(40));
  const Xid xid = xidOf(41);
  ASSERT_EQ(prepareAtB(xid, {credit("bank-b", "bob", 5)}), wire::Vote::YES);  // lazy, its record delayed
  EXPECT_ANY_THROW(finishAtB(xid, /*commit=*/true));
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(prepared("bank_b"), 0u);  // PostgreSQL committed it
  EXPECT_EQ(balance("bank_b", "bob"), 5);
  auto before = recordAtB(xid);
  ASSERT_TRUE(before.has_value()) << "no PREPARED record was durable before COMMIT PREPARED";
  EXPECT_EQ(before->state, BranchStatus::Prepared);
  EXPECT_NE(before->hostTxid, 0u);

  cluster_->startAgent("bank-b");
  EXPECT_EQ(finishAtB(xid, /*commit=*/true), wire::BranchOutcome::COMMITTED);
  EXPECT_EQ(inAgentLog("outcome unknown"), 0u);
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::Committed);
  EXPECT_NE(rec.reason.find("'committed'"), std::string::npos) << rec.reason;
}

// Each YES vote carries the branch's PostgreSQL txid; the coordinator keeps
// it in its COMMIT record (and sends it back with commit): the same txid as
// the agent's own record of the branch.
TEST_F(PostgresOutcomeTest, TheCommitRecordHoldsTheTxidEachAgentVotedWith) {
  auto o = submit({debit("bank-a", "alice", 30), credit("bank-b", "bob", 30)});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.state == InteractionRecord::State::Committed; }));
  auto q = query(o.seq);
  ASSERT_EQ(q->interaction.branches.size(), 2u);
  std::optional<InteractionRecord::Branch> atB;
  for (auto& br : q->interaction.branches) {
    EXPECT_NE(br.hostTxid, 0u) << br.participant;
    if (br.participant == "bank-b") atB = br;
  }
  ASSERT_TRUE(atB.has_value());
  auto rec = recordAfterStoppingB(Xid{o.seq, atB->branch});
  EXPECT_EQ(rec.state, BranchStatus::Committed);
  EXPECT_EQ(rec.hostTxid, atB->hostTxid);
}

// With the txid the coordinator's COMMIT record holds, a commit does not
// wait for the branch's lazy PREPARED record: here that record is held up
// on the log's writer for 1.5 s and the agent dies right after COMMIT
// PREPARED, so neither record was ever durable. The retried commit, with
// the txid again, is settled by txid_status: committed, not unknown.
TEST_F(PostgresOutcomeTest, CommitOnTheCoordinatorsTxidDoesNotWaitForThePreparedRecordAndACrashIsSettled) {
  restartBPastItsFirstPrepare("pg.before_lazy_prepared_record=1*delay(1500),pg.after_host_commit=1*crash", xidOf(60));
  const Xid xid = xidOf(61);
  std::uint64_t txid = yesTxidAtB(xid, {credit("bank-b", "bob", 5)});  // lazy, its record held up
  ASSERT_NE(txid, 0u);
  // txids must be none or one per xid: anything else is refused whole.
  EXPECT_ANY_THROW(commitAtBWithTxids(xid, {txid, txid}));
  EXPECT_EQ(balance("bank_b", "bob"), 0);
  EXPECT_ANY_THROW(commitAtBWithTxids(xid, {txid}));  // COMMIT PREPARED, then the crash
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(prepared("bank_b"), 0u);  // PostgreSQL committed it
  EXPECT_EQ(balance("bank_b", "bob"), 5);
  EXPECT_FALSE(recordAtB(xid).has_value()) << "COMMIT PREPARED waited for the PREPARED record";

  cluster_->startAgent("bank-b");
  EXPECT_EQ(commitAtBWithTxids(xid, {txid}), wire::BranchOutcome::COMMITTED);
  EXPECT_EQ(commitAtBWithTxids(xid, {txid}), wire::BranchOutcome::COMMITTED);  // repeated: the record answers
  EXPECT_EQ(inAgentLog("outcome unknown"), 0u);
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::Committed);
  EXPECT_EQ(rec.hostTxid, txid);
  EXPECT_NE(rec.reason.find("the txid in the coordinator's COMMIT record"), std::string::npos) << rec.reason;
  EXPECT_EQ(balance("bank_b", "bob"), 5);
}

// Without the txid (an older coordinator, or a takeover that never saw the
// votes) nothing is known of a branch with no record and no prepared
// transaction: unknown, as before.
TEST_F(PostgresOutcomeTest, ACommitWithAnotherTxidThanTheVotesWaitsForTheRecordAsBefore) {
  restartBPastItsFirstPrepare("pg.before_lazy_prepared_record=1*delay(800),pg.after_host_commit=1*crash", xidOf(70));
  const Xid xid = xidOf(71);
  std::uint64_t txid = yesTxidAtB(xid, {credit("bank-b", "bob", 7)});
  ASSERT_NE(txid, 0u);
  // Not the txid it voted with: the agent does not take the coordinator's
  // word, waits for its own PREPARED record, and only then commits.
  EXPECT_ANY_THROW(commitAtBWithTxids(xid, {txid + 1}));
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(balance("bank_b", "bob"), 7);
  auto before = recordAtB(xid);
  ASSERT_TRUE(before.has_value()) << "no PREPARED record was durable before COMMIT PREPARED";
  EXPECT_EQ(before->hostTxid, txid);
  cluster_->startAgent("bank-b");
  EXPECT_EQ(finishAtB(xid, /*commit=*/true), wire::BranchOutcome::COMMITTED);  // its record's txid settles it
}

// ---------------------------------------------------------------- staged commit
//
// A postgres agent's YES vote leaves once PostgreSQL has prepared the
// branch, before its PREPARED record (lazy); its listBranches shows such a
// branch as PREPARED from memory, and start-up's reconcile records a
// prepared transaction without a record before the agent serves. So the
// agent says preparedVisible and its interactions are staged: "committed"
// rests on the coordinator's staged record and the votes (docs/protocol.md,
// "Staged commit"), and a restarted coordinator reads the votes back.

class PostgresStagedTest : public PostgresOutcomeTest {
 protected:
  // Every branch bank-b lists of `seq` (the agent's listBranches).
  struct Listed {
    wire::BranchState state;
    std::string reason;
  };
  std::vector<Listed> listedAtB(std::uint64_t seq) {
    auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
    auto req = agent->capability().listBranchesRequest();
    req.getAfter().setSeq(seq);
    req.getAfter().setBranch(0);
    auto resp = req.send().wait(io_.waitScope);
    std::vector<Listed> out;
    for (auto b : resp.getBranches()) {
      if (b.getXid().getSeq() == seq) out.push_back({b.getState(), b.getReason().cStr()});
    }
    return out;
  }
  // A committed transfer of 1 first: each agent's epoch durable, so the
  // next prepares' records are lazy.
  std::uint64_t pastTheForcedPrepares() {
    auto first = submit({debit("bank-a", "alice", 1), credit("bank-b", "bob", 1)});
    EXPECT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
    return first.seq;
  }
  // The coordinator restarted (a new epoch: forced prepares again), a
  // transfer of 1 past them, then one of 100 alice -> bob that kills the
  // coordinator once every YES is in; its seq (the one branch bank-a holds
  // unfinished), 0 on a failure.
  std::uint64_t transferKilledAfterTheVotes() {
    cluster_->stopCoordinator();
    cluster_->startCoordinator("coord.after_decision_durable=1+1*crash");
    reconnect();
    std::uint64_t first = pastTheForcedPrepares();
    EXPECT_ANY_THROW(submit({debit("bank-a", "alice", 100), credit("bank-b", "bob", 100)}));
    if (first == 0 || !cluster_->waitCoordinatorExit(std::chrono::seconds(5))) {
      ADD_FAILURE() << "the coordinator did not die at the failpoint";
      return 0;
    }
    // The next seq of the same incarnation. (Not what the agents list
    // unfinished: their PREPARED records may still be on their way.)
    std::uint64_t seq = first + 1;
    EXPECT_TRUE(storedRecord(seq).staged);
    return seq;
  }
  // bank-b restarted with `failpoints` on its lazy PREPARED record, then a
  // transfer killed after the votes (bank-b's first prepare is forced, so
  // the failpoint's first hit is that transfer's): its seq (0 on a
  // failure) and what bank-b lists of it.
  std::pair<std::uint64_t, std::vector<Listed>> killedAfterTheVotesWithBAt(const std::string& failpoints) {
    cluster_->stopAgent("bank-b");
    cluster_->startAgent("bank-b", failpoints);
    auto seq = transferKilledAfterTheVotes();
    if (seq == 0) return {0, {}};
    return {seq, listedAtB(seq)};
  }
  void expectCommittedAfterTheRestart(std::uint64_t seq) {
    auto how = restartAndExpectCommitted(seq);
    EXPECT_NE(how.find("every participant holds its YES vote"), std::string::npos) << how;
  }
};

// The coordinator dies once every YES is in: its WAL holds the staged
// record only (no decision), PostgreSQL holds both branches prepared, and
// the restart commits from the votes.
TEST_F(PostgresStagedTest, KilledAfterEveryYesCommitsFromThePreparedTransactions) {
  auto seq = transferKilledAfterTheVotes();
  ASSERT_NE(seq, 0u);
  auto stored = storedRecord(seq);
  EXPECT_TRUE(stored.staged) << "postgres agents' interactions were not staged";
  EXPECT_EQ(stored.decision, InteractionRecord::Decision::None);
  EXPECT_EQ(preparedOf("bank_a", seq), 1u);
  EXPECT_EQ(preparedOf("bank_b", seq), 1u);
  expectCommittedAfterTheRestart(seq);
}

// bank-b's PREPARED record is held up on its log's writer for 4 s: when the
// coordinator has died and restarts, the vote is in bank-b's memory and
// PostgreSQL only. listBranches shows it PREPARED all the same, so the
// restart commits (reading it as missing would roll back a transfer the
// client may have heard committed).
TEST_F(PostgresStagedTest, AVoteWhoseRecordIsStillOnItsWayIsReadBackAsHeld) {
  auto [seq, listed] = killedAfterTheVotesWithBAt("pg.before_lazy_prepared_record=1*delay(4000)");
  ASSERT_NE(seq, 0u);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].state, wire::BranchState::PREPARED);
  EXPECT_NE(listed[0].reason.find("on its way"), std::string::npos) << listed[0].reason;
  expectCommittedAfterTheRestart(seq);
}

// bank-b's lazy PREPARED record fails (an error the agent survives) after
// its YES has left, and the coordinator dies once every YES is in. bank-b
// goes on listing the branch PREPARED — PostgreSQL holds it — until its
// sweep has it on file, so the restart commits.
TEST_F(PostgresStagedTest, AVoteWhoseRecordFailedIsStillListedAndCommits) {
  auto [seq, listed] = killedAfterTheVotesWithBAt("pg.before_lazy_prepared_record=1*error");
  ASSERT_NE(seq, 0u);
  ASSERT_EQ(listed.size(), 1u) << "a YES vote whose record failed is not listed";
  EXPECT_EQ(listed[0].state, wire::BranchState::PREPARED);
  expectCommittedAfterTheRestart(seq);
}

// Both die: bank-b in its lazy PREPARED record's group commit (PostgreSQL
// holds the branch prepared, the agent no record of it) and the coordinator
// once every YES is in. bank-b's start-up records the prepared transaction
// before it serves, so the coordinator's restart reads the vote back.
TEST_F(PostgresStagedTest, AgentAndCoordinatorKilledBeforeTheVotesRecordStillCommit) {
  cluster_->stopAgent("bank-b");
  // The lazy write held up 300 ms first, so that the vote has left; the
  // forced first prepare is the failpoint's first hit.
  cluster_->startAgent("bank-b", "pg.before_lazy_prepared_record=1*delay(300),agent.before_prepared_durable=1+1*crash");
  auto seq = transferKilledAfterTheVotes();
  ASSERT_NE(seq, 0u);
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(preparedOf("bank_b", seq), 1u);
  cluster_->startAgent("bank-b");
  EXPECT_EQ(inAgentLog("1 recovered in doubt (no record yet)"), 1u);
  expectCommittedAfterTheRestart(seq);
}

// Staged, the coordinator has the votes' txids in memory only when it sends
// phase 2, so it sends none: bank-b's COMMIT PREPARED waits for its own
// PREPARED record (held up 600 ms here, less than the coordinator's call
// deadline), whose txid then settles a crash
// right after COMMIT PREPARED. Sent the txid, bank-b would commit at once,
// and a crash would leave the branch neither prepared nor recorded: a vote
// a staged recovery could not read back.
TEST_F(PostgresStagedTest, PhaseTwoWaitsForTheAgentsOwnPreparedRecord) {
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b", "pg.before_lazy_prepared_record=1*delay(600),pg.after_host_commit=1+1*crash");
  pastTheForcedPrepares();
  auto o = submit({debit("bank-a", "alice", 100), credit("bank-b", "bob", 100)});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
  EXPECT_EQ(prepared("bank_b"), 0u);  // PostgreSQL committed it
  auto listed = query(o.seq);
  ASSERT_TRUE(listed.has_value());
  EXPECT_TRUE(listed->interaction.staged);
  std::optional<Xid> atB;
  for (auto& br : listed->interaction.branches) {
    if (br.participant == "bank-b") atB = Xid{o.seq, br.branch};
  }
  ASSERT_TRUE(atB.has_value());
  auto before = recordAtB(*atB);
  ASSERT_TRUE(before.has_value()) << "COMMIT PREPARED ran before the PREPARED record was durable";
  EXPECT_NE(before->hostTxid, 0u);
  cluster_->startAgent("bank-b");
  ASSERT_TRUE(eventually([&] { return query(o.seq)->interaction.finished(); }, std::chrono::seconds(15)));
  EXPECT_EQ(query(o.seq)->interaction.state, InteractionRecord::State::Committed);
  EXPECT_EQ(inAgentLog("outcome unknown"), 0u);
  EXPECT_EQ(balance("bank_a", "alice"), 899);
  EXPECT_EQ(balance("bank_b", "bob"), 101);
}

// A prepare between its PREPARE TRANSACTION and its record is never taken
// for an orphan, however long it takes: held up there for longer than the
// sweep's period (and the second one's lazy record held up too), both vote
// YES, commit, and nothing is recovered in doubt.
TEST_F(PostgresOutcomeTest, PrepareInFlightIsNeverTakenForAnOrphan) {
  cluster_->stopAgent("bank-b");
  cluster_->startAgent("bank-b", "pg.after_host_prepare=2*delay(2500),pg.before_lazy_prepared_record=1*delay(2500)");
  const Xid first = xidOf(50), second = xidOf(51);
  auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
  auto sendPrepare = [&](Xid xid, const std::string& who, std::int64_t amount) {
    auto req = agent->capability().prepareRequest();
    req.setEpoch(kEpoch);
    fillXid(req.initXid(), xid);
    std::vector<Op> ops{credit("bank-b", who, amount)};
    fillOps(req.initOperations(ops.size()), ops);
    auto sent = req.send();
    io_.waitScope.poll();  // the call leaves now
    return sent;
  };
  auto one = sendPrepare(first, "bob", 1);  // its record forced: the epoch's first
  ASSERT_TRUE(eventually([&] { return prepared("bank_b") == 1; }, std::chrono::seconds(5)));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  // PostgreSQL has held the gid for 1.5 s without a record at bank-b (many
  // sweeps' worth): in flight, so left alone.
  EXPECT_EQ(inspect("bank-b").prepared, 0u);
  ASSERT_EQ(one.wait(io_.waitScope).getVote(), wire::Vote::YES);
  // Another row: bob's stays locked by the first until its commit.
  ASSERT_EQ(sendPrepare(second, "alice", 5).wait(io_.waitScope).getVote(), wire::Vote::YES);  // lazy record held up
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(inspect("bank-b").prepared, 1u);  // the second's record is still on its way: not recovered meanwhile
  EXPECT_EQ(finishAtB(first, /*commit=*/true), wire::BranchOutcome::COMMITTED);
  EXPECT_EQ(finishAtB(second, /*commit=*/true), wire::BranchOutcome::COMMITTED);
  EXPECT_EQ(balance("bank_b", "bob"), 1);
  EXPECT_EQ(balance("bank_b", "alice"), 1005);
  EXPECT_EQ(prepared("bank_b"), 0u);
  EXPECT_EQ(inAgentLog("postgres sweep:"), 0u);  // the sweep did nothing at all
  auto rec = recordAfterStoppingB(second);
  EXPECT_EQ(rec.state, BranchStatus::Committed);
  EXPECT_EQ(rec.reason, "");
}

// COMMIT PREPARED and ROLLBACK PREPARED fail while PostgreSQL is down. No
// coordinator asks again here (these branches are of coordinator node 9):
// the agent knows the decisions now and finishes both itself once
// PostgreSQL is back.
TEST_F(PostgresOutcomeTest, PhaseTwoThatFailedWhilePostgresWasDownIsDoneOnceItIsBack) {
  const Xid toCommit = xidOf(60), toRollBack = xidOf(61);
  ASSERT_EQ(prepareAtB(toCommit, {credit("bank-b", "bob", 5)}), wire::Vote::YES);
  ASSERT_EQ(prepareAtB(toRollBack, {credit("bank-b", "alice", 7)}), wire::Vote::YES);  // bob's row is locked
  pg_->stopImmediate();
  EXPECT_ANY_THROW(finishAtB(toCommit, /*commit=*/true));
  EXPECT_ANY_THROW(finishAtB(toRollBack, /*commit=*/false));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // a few failed retries: the backoff grows
  pg_->restart();
  auto ms = msUntil([&] { return prepared("bank_b") == 0; }, std::chrono::seconds(30));
  std::printf("phase 2 done %lld ms after PostgreSQL was back\n", ms);
  ASSERT_GE(ms, 0) << "still prepared after 30 s";
  EXPECT_LT(ms, 3000);
  EXPECT_EQ(balance("bank_b", "bob"), 5);
  EXPECT_EQ(balance("bank_b", "alice"), 1000);
  EXPECT_EQ(finishAtB(toCommit, /*commit=*/true), wire::BranchOutcome::COMMITTED);  // from the record now
  EXPECT_EQ(finishAtB(toRollBack, /*commit=*/false), wire::BranchOutcome::ROLLED_BACK);
  EXPECT_EQ(recordAfterStoppingB(toCommit).state, BranchStatus::Committed);
  EXPECT_EQ(recordAtB(toRollBack).value_or(BranchRecord{}).state, BranchStatus::RolledBack);
}

TEST_F(PostgresOutcomeTest, GidRecoveredWithoutARecordKeepsItsTxidAcrossTheEpoch) {
  // Move PostgreSQL's txids past 2^32 (epoch 1), so that a txid taken from
  // pg_prepared_xacts' 32-bit xid alone would be wrong.
  cluster_->stopAgent("bank-b");
  pg_->stopFast();
  const char* bin = std::getenv("KEEL_PG_BIN_DIR");
  std::string resetwal = std::string(bin != nullptr && *bin ? bin : KEEL_PG_BIN_DIR) + "/pg_resetwal";
  auto r = run(std::string(::geteuid() == 0 ? "runuser -u postgres -- " : "") + resetwal + " -e 1 " +
               pg_->dataDir());
  ASSERT_EQ(r.exitCode, 0) << r.output;
  pg_->restart();

  // A prepared transaction of bank-b's with no record: its agent died
  // before the lazy PREPARED record was durable, after the vote.
  const Xid xid = xidOf(5);
  std::uint64_t txid = prepareByHand(oldGidOf(xid), "UPDATE accounts SET balance = balance + 7 WHERE name = 'bob'");
  ASSERT_GT(txid, std::uint64_t(1) << 32);
  cluster_->startAgent("bank-b");  // its start-up sweep records it in doubt
  auto rec = recordAfterStoppingB(xid);
  EXPECT_EQ(rec.state, BranchStatus::Prepared);
  EXPECT_EQ(rec.hostTxid, txid);

  cluster_->startAgent("bank-b");
  pgQuery(pg_->connString("bank_b"), "COMMIT PREPARED '" + gidOf(xid) + "'");  // a DBA, by hand
  EXPECT_EQ(finishAtB(xid, /*commit=*/true), wire::BranchOutcome::COMMITTED);
  EXPECT_EQ(balance("bank_b", "bob"), 7);
  EXPECT_EQ(recordAfterStoppingB(xid).state, BranchStatus::Committed);
}

// The agent trusts no coordinator: what the coordinator refuses as invalid
// (free SQL text, a text parameter over the limit) reaches bank-b straight
// here, and bank-b votes NO, prepares nothing and runs nothing.
TEST_F(PostgresOutcomeTest, TheAgentRefusesWhatTheCoordinatorWouldHave) {
  auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
  auto prepare = [&](Xid xid, const std::vector<Op>& ops) {
    auto req = agent->capability().prepareRequest();
    req.setEpoch(kEpoch);
    fillXid(req.initXid(), xid);
    fillOps(req.initOperations(ops.size()), ops);
    auto resp = req.send().wait(io_.waitScope);
    return std::make_pair(resp.getVote(), std::string(resp.getReason().cStr()));
  };
  Op freeSql = Op::statement("bank-b", "bump");
  freeSql.sql = "SELECT nextval('calls')";
  Op unnamed;
  unnamed.participant = "bank-b";
  unnamed.kind = OpKind::Sql;
  unnamed.sql = "SELECT nextval('calls')";
  Op huge = Op::statement("bank-b", "open_account", {SqlValue::ofText(std::string(64 * 1024 + 1, 'x')), SqlValue::null()});
  struct Case {
    std::vector<Op> ops;
    std::string expect;
  };
  std::vector<Case> cases = {
      {{Op::statement("bank-b", "bump"), freeSql}, "free SQL text is not accepted"},
      {{Op::statement("bank-b", "bump"), unnamed}, "free SQL text is not accepted"},
      {{Op::statement("bank-b", "bump"), huge},
       "statement 'open_account': SQL parameter $1 is 65537 bytes long; the limit is 65536"},
      // What the coordinator checks from the declarations it was told: the
      // agent checks it again, against its own.
      {{Op::statement("bank-b", "bump"), Op::statement("bank-b", "drop_accounts")},
       "statement 'drop_accounts' is not declared by agent bank-b"},
      {{Op::statement("bank-b", "bump"), Op::statement("bank-b", "debit", {SqlValue::ofText("5"), SqlValue::ofText("bob")})},
       "statement 'debit' parameter $1 is int8, got text"},
  };
  std::uint64_t n = 1;
  for (auto& c : cases) {
    auto [vote, reason] = prepare(xidOf(n++), c.ops);
    EXPECT_EQ(vote, wire::Vote::NO) << c.expect;
    EXPECT_NE(reason.find(c.expect), std::string::npos) << "got: " << reason;
  }
  EXPECT_TRUE(preparedGids("bank_b").empty());
  EXPECT_EQ(bumps("bank_b"), 0);
  // A call that fits is prepared (and rolled back here).
  auto [vote, reason] = prepare(xidOf(n), {Op::statement("bank-b", "bump")});
  EXPECT_EQ(vote, wire::Vote::YES) << reason;
  EXPECT_EQ(preparedGids("bank_b").size(), 1u);
  EXPECT_EQ(finishAtB(xidOf(n), /*commit=*/false), wire::BranchOutcome::ROLLED_BACK);
  EXPECT_TRUE(preparedGids("bank_b").empty());
  EXPECT_EQ(bumps("bank_b"), 1);
}

TEST(PgTxid, FullTxidTakesTheEpochOfTheNearestTxid) {
  constexpr std::uint64_t kEpoch5 = std::uint64_t(5) << 32;
  EXPECT_EQ(fullTxid(1000, 999), 999u);
  EXPECT_EQ(fullTxid(1000, 1000), 1000u);
  EXPECT_EQ(fullTxid(1000, 1002), 1002u);  // a snapshot's xmax can lag a prepared transaction's xid
  EXPECT_EQ(fullTxid(kEpoch5 + 10, 7), kEpoch5 + 7);
  // The low 32 bits wrapped between the xid and the reference: the epoch before...
  EXPECT_EQ(fullTxid(kEpoch5 + 10, 0xFFFFFFF0u), (std::uint64_t(4) << 32) + 0xFFFFFFF0u);
  // ...or, for an xid just above the reference, the one after.
  EXPECT_EQ(fullTxid(kEpoch5 + 0xFFFFFFF0u, 5), (std::uint64_t(6) << 32) + 5);
  // Nothing below txid 1.
  EXPECT_EQ(fullTxid(10, 0xFFFFFFF0u), 0u);
  EXPECT_EQ(fullTxid(10, 10), 10u);
}

TEST(PgGid, CarriesTheIncarnationAndReadsTheFormBeforeIt) {
  const Xid xid{(std::uint64_t(1) << 48) | 42, 3};
  EXPECT_EQ(pgGid("bank-a", xid, 7), "keel:bank-a:281474976710698:3:7");
  EXPECT_EQ(pgGid("bank-a", xid, 0), "keel:bank-a:281474976710698:3");  // as before incarnations
  for (std::uint64_t inc : {std::uint64_t(0), std::uint64_t(1), std::uint64_t(7), ~std::uint64_t(0)}) {
    auto p = parsePgGid("bank-a", pgGid("bank-a", xid, inc));
    ASSERT_TRUE(p.has_value()) << inc;
    EXPECT_EQ(p->xid, xid);
    EXPECT_EQ(p->incarnation, inc);
  }
  // Another agent's, or not in the one spelling pgGid gives: not ours.
  for (const char* g : {"keel:bank-b:281474976710698:3:7", "keel:bank-a.x:1:1", "keel:bank-a:1", "keel:bank-a:1:2:3:4",
                        "keel:bank-a:01:2", "keel:bank-a:1:2:0", "keel:bank-a:1:70000", "keel:bank-a:1:-2",
                        "keel:bank-a:1:2:", "keel:bank-a::2", "keel:bank-a:x:2", "other:bank-a:1:2", "keel:bank-a:"}) {
    EXPECT_FALSE(parsePgGid("bank-a", g).has_value()) << g;
  }
}

TEST(PostgresAgentStart, NoPreparedTransactionsIsReportedWithTheFix) {
  PgServerOptions o;
  o.databases = {"bank_a"};
  o.maxPreparedTransactions = 0;
  PgServer pg("", o);
  pg.start();
  auto dir = makeTempDir("keel-pg-agent");
  std::string statements = bank::writeStatementsFile(dir);
  auto r = run(binDir() + "/keel-agent --name bank-a --adapter postgres --postgres '" + pg.connString("bank_a") +
               "' --statements " + statements + " --insecure --listen 127.0.0.1:0 --data-dir " + dir +
               "/data --init");
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.output.find("max_prepared_transactions = 0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("postgresql.conf"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir + "/data")) << "a refused start changes nothing";
  std::filesystem::remove_all(dir);
}

// A role that may not create the one-phase marker table (PostgreSQL 15:
// only the owner creates in schema public) is told the SQL to run.
TEST(PostgresAgentStart, MarkerTableItMayNotCreateIsReportedWithTheFix) {
  PgServerOptions o;
  o.databases = {"bank_a"};
  PgServer pg("", o);
  pg.start();
  pgQuery(pg.connString("bank_a"), "CREATE ROLE clerk LOGIN; GRANT CONNECT ON DATABASE bank_a TO clerk");
  auto dir = makeTempDir("keel-pg-agent");
  std::string statements = bank::writeStatementsFile(dir);
  auto start = [&] {
    return run(binDir() + "/keel-agent --name bank-a --adapter postgres --postgres '" + pg.connString("bank_a") +
               " user=clerk' --statements " + statements + " --insecure --listen 127.0.0.1:0 --data-dir " + dir +
               "/data --init");
  };
  auto r = start();
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.output.find("cannot create its one-phase marker table keel_one_phase"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("CREATE TABLE IF NOT EXISTS keel_one_phase"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir + "/data")) << "a refused start changes nothing";
  // Created by its owner, but not granted: named too.
  pgQuery(pg.connString("bank_a"), kMarkerTableSql);
  r = start();
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.output.find("may not read, insert and delete rows of keel_one_phase"), std::string::npos) << r.output;
  std::filesystem::remove_all(dir);
}

// Embedded participants ([participants] NAME = "embedded:FILE";
// participant/embedded.h): both postgres agents inside the coordinator's
// process, no keel-agent running. The same protocol, records and recovery
// through in-process calls; a crash takes the agents down with the
// coordinator, and the restart settles from their logs and PostgreSQL.
class PostgresEmbeddedTest : public PostgresTest {
 protected:
  ClusterOptions clusterOptions() override {
    auto o = PostgresTest::clusterOptions();
    o.embedded = {"bank-a", "bank-b"};
    return o;
  }
  void beforeStart(LocalCluster& c) override {
    for (auto [agent, db] : {std::pair{"bank-a", "bank_a"}, std::pair{"bank-b", "bank_b"}}) {
      c.setEmbeddedConfig(agent, bank::postgresAgentToml(agent, c.baseDir() + "/" + agent, pg_->connString(db), 4));
    }
  }
  std::string coordinatorLogText() { return readFile(cluster_->coordinatorLog()); }
  // The coordinator restarted with `failpoints` (its agents' too: one
  // process), then a transfer of 1 (past each agent's forced first
  // prepare), then one of 100 alice -> bob during which the process dies;
  // that one's seq (0 on a failure). `answered`: what the client heard, if
  // anything.
  std::uint64_t transferThatKills(const std::string& failpoints, std::optional<SubmitOutcome>& answered) {
    cluster_->stopCoordinator();
    cluster_->startCoordinator(failpoints);
    reconnect();
    auto first = submit({debit("bank-a", "alice", 1), credit("bank-b", "bob", 1)});
    EXPECT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
    try {
      answered = submit({debit("bank-a", "alice", 100), credit("bank-b", "bob", 100)});
    } catch (const kj::Exception&) {
      answered.reset();
    }
    if (first.outcome != ClientOutcome::Committed || !cluster_->waitCoordinatorExit(std::chrono::seconds(5))) {
      ADD_FAILURE() << "the coordinator did not die at " << failpoints;
      return 0;
    }
    return first.seq + 1;  // the next seq of the same incarnation
  }
};

TEST_F(PostgresEmbeddedTest, ATransferCommitsWithNoAgentProcessAndTheDataDirectoriesAreHeld) {
  EXPECT_FALSE(cluster_->agentRunning("bank-a"));
  EXPECT_FALSE(cluster_->agentRunning("bank-b"));
  auto o = submit({debit("bank-a", "alice", 100), credit("bank-b", "bob", 100)});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  EXPECT_TRUE(storedRecord(o.seq).staged) << "embedded postgres agents say preparedVisible as keel-agent's do";
  EXPECT_EQ(balance("bank_a", "alice"), 900);
  EXPECT_EQ(balance("bank_b", "bob"), 100);
  EXPECT_TRUE(eventually([&] { return settled(); }));
  auto q = query(o.seq);
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::Committed);
  auto log = coordinatorLogText();
  EXPECT_NE(log.find("embedded participant bank-a (postgres adapter"), std::string::npos) << log;
  EXPECT_NE(log.find("embedded participant bank-b (postgres adapter"), std::string::npos) << log;
  // Each agent's data directory is the participant's own (a keel-agent data
  // directory), held by the coordinator's process: a keel-agent started on
  // it is refused and changes nothing.
  auto r = run(binDir() + "/keel-agent --name bank-a --adapter postgres --postgres '" + pg_->connString("bank_a") +
               "' --statements " + bank::writeStatementsFile(dir_) + " --insecure --listen 127.0.0.1:0 --data-dir " +
               dir_ + "/bank-a");
  EXPECT_EQ(r.exitCode, kExitDataDirRefused) << r.output;
  EXPECT_NE(r.output.find("keel-coordinator (embedded bank-a)"), std::string::npos) << r.output;
  auto again = submit({debit("bank-a", "alice", 1), credit("bank-b", "bob", 1)});
  EXPECT_EQ(again.outcome, ClientOutcome::Committed) << again.reason;
}

// The process dies once every YES is in (the staged record alone in the
// WAL, each agent's PREPARED record possibly still lazy): the restart's
// agents reconcile with PostgreSQL, the coordinator reads the votes back
// and commits.
TEST_F(PostgresEmbeddedTest, KilledAfterEveryYesTheRestartCommits) {
  std::optional<SubmitOutcome> answered;
  auto seq = transferThatKills("coord.after_decision_durable=1+1*crash", answered);
  ASSERT_NE(seq, 0u);
  EXPECT_FALSE(answered.has_value());
  EXPECT_EQ(prepared("bank_a"), 1u);
  EXPECT_EQ(prepared("bank_b"), 1u);
  restartAndExpectCommitted(seq);
}

// The process dies in phase 2, at the first branch's commit (after the
// client may have heard "committed"): the restart finishes both commits.
TEST_F(PostgresEmbeddedTest, KilledInPhaseTwoTheRestartFinishesTheCommit) {
  std::optional<SubmitOutcome> answered;
  auto seq = transferThatKills("agent.before_commit_durable=2+1*crash", answered);
  ASSERT_NE(seq, 0u);
  if (answered) {
    EXPECT_EQ(answered->outcome, ClientOutcome::Committed) << answered->reason;
  }
  EXPECT_GE(prepared("bank_a") + prepared("bank_b"), 1u) << "died before any COMMIT PREPARED";
  restartAndExpectCommitted(seq);
}

// An overdraft (bank-a's debit touches no row) during which the process
// dies once bank-a knows it will vote NO, the staged record durable and
// no decision: the restart must roll it back. Before the fix bank-a's one
// pipeline had already run PREPARE TRANSACTION, so the restart found a
// prepared transaction without a record, read it as a YES and committed —
// bob credited a billion, alice not debited (keel-chaos --embedded, seed 5).
// The staged record is written in parallel with the prepares, so each
// agent's work waits 300 ms on its loop first (agent.after_execute): the
// record is durable before bank-a's NO is reached, as this case needs
// (without the wait, one CI run in many crashed before it was).
TEST_F(PostgresEmbeddedTest, AnOverdraftKilledBeforeItsNoVoteIsRolledBackNotCommitted) {
  std::optional<SubmitOutcome> answered;
  cluster_->stopCoordinator();
  cluster_->startCoordinator("agent.after_execute=delay(300),pg.before_no_vote=1*crash");
  reconnect();
  auto first = submit({debit("bank-a", "alice", 1), credit("bank-b", "bob", 1)});
  ASSERT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
  EXPECT_ANY_THROW(submit({debit("bank-a", "alice", 1'000'000'000), credit("bank-b", "bob", 1'000'000'000)}));
  ASSERT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(5))) << "the failpoint was not reached";
  std::uint64_t seq = first.seq + 1;
  EXPECT_TRUE(storedRecord(seq).staged);
  EXPECT_EQ(preparedOf("bank_a", seq), 0u) << "a branch refused for its row count was prepared in PostgreSQL";
  cluster_->startCoordinator();
  reconnect();
  ASSERT_TRUE(eventually([&] {
    auto q = query(seq);
    return q && q->interaction.finished() && settled();
  }, std::chrono::seconds(15)));
  EXPECT_EQ(query(seq)->interaction.state, InteractionRecord::State::RolledBack);
  EXPECT_EQ(balance("bank_a", "alice"), 999);
  EXPECT_EQ(balance("bank_b", "bob"), 1);
}

// A one-phase transfer inside bank-a whose agent work outlasts the
// coordinator's 1 s call deadline, held (a) before its ACTIVE intent and (b)
// after it, before COMMIT: the client hears "in doubt", the coordinator
// rolls back, and whatever the end, the coordinator's record and
// PostgreSQL must agree (keel-chaos --embedded seed 7 once ended with a
// one-phase branch committed whose rollback had been confirmed).
TEST_F(PostgresEmbeddedTest, AOnePhaseCallPastItsDeadlineEndsTheSameAtTheCoordinatorAndInPostgres) {
  std::int64_t alice = 1000, bob = 0;
  for (const char* fp : {"pg.before_one_phase_intent=1*delay(1500)", "agent.before_commit_durable=1*delay(1500)"}) {
    cluster_->stopCoordinator();
    cluster_->startCoordinator(fp);
    reconnect();
    auto o = submit({debit("bank-a", "alice", 100), credit("bank-a", "bob", 100)});
    EXPECT_EQ(o.outcome, ClientOutcome::InDoubt) << fp << ": " << o.reason;
    ASSERT_TRUE(eventually([&] {
      auto q = query(o.seq);
      return q && q->interaction.finished() && prepared("bank_a") == 0;
    }, std::chrono::seconds(15))) << fp;
    auto q = query(o.seq);
    if (q->interaction.state == InteractionRecord::State::Committed) {
      alice -= 100;
      bob += 100;
    } else {
      EXPECT_EQ(q->interaction.state, InteractionRecord::State::RolledBack) << fp;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1700));  // the held work has run by now
    EXPECT_EQ(balance("bank_a", "alice"), alice) << fp << ": coordinator says " << stateName(q->interaction.state);
    EXPECT_EQ(balance("bank_a", "bob"), bob) << fp;
  }
}

// A coordinator whose embedded participant's config is wrong refuses to
// start with the file and the fix named, and touches nothing.
TEST(PostgresEmbeddedConfig, ABadEmbeddedConfigRefusesTheStartAndTouchesNothing) {
  auto dir = makeTempDir("keel-embedded");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream f(dir + "/" + name);
    f << text;
  };
  write("coordinator.toml", "[coordinator]\ndata_dir = \"" + dir + "/coordinator\"\nlisten = \"127.0.0.1:0\"\n"
                            "[participants]\nbank-a = \"embedded:bank-a.toml\"\n[tls]\ninsecure = true\n");
  auto start = [&] { return run(binDir() + "/keel-coordinator --config " + dir + "/coordinator.toml --init"); };
  auto r = start();
  EXPECT_EQ(r.exitCode, kExitBadConfig) << r.output;
  EXPECT_NE(r.output.find(dir + "/bank-a.toml\": no such config file"), std::string::npos) << r.output;
  write("bank-a.toml", "[agent]\nname = \"bank-b\"\ndata_dir = \"" + dir + "/bank-a\"\n");
  r = start();
  EXPECT_EQ(r.exitCode, kExitBadConfig) << r.output;
  EXPECT_NE(r.output.find("[agent] name is 'bank-b' but the coordinator's [participants] calls it 'bank-a'"),
            std::string::npos)
      << r.output;
  write("bank-a.toml", "[agent]\nname = \"bank-a\"\ndata_dir = \"" + dir +
                           "/bank-a\"\nadapter = \"postgres\"\npostgres = \"host=/nonexistent\"\n");
  r = start();
  EXPECT_EQ(r.exitCode, kExitBadConfig) << r.output;
  EXPECT_NE(r.output.find("adapter postgres needs the statements clients may call"), std::string::npos) << r.output;
  write("bank-a.toml", "[agent]\nname = \"bank-a\"\ndata_dir = \"" + dir + "/coordinator\"\n");
  r = start();
  EXPECT_EQ(r.exitCode, kExitBadConfig) << r.output;
  EXPECT_NE(r.output.find("is also the coordinator's"), std::string::npos) << r.output;
  // PostgreSQL unreachable: refused before any data directory is made.
  write("bank-a.toml", "[agent]\nname = \"bank-a\"\ndata_dir = \"" + dir +
                           "/bank-a\"\nadapter = \"postgres\"\npostgres = \"host=" + dir +
                           " port=1 connect_timeout=2\"\n\n" + bank::statementsToml());
  r = start();
  EXPECT_NE(r.exitCode, 0) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir + "/bank-a")) << "a refused start changes nothing";
  EXPECT_FALSE(std::filesystem::exists(dir + "/coordinator")) << "a refused start changes nothing";
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace keel::test
