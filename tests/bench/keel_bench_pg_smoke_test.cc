// keel-bench on PostgreSQL, briefly: Keel through postgres agents, then the
// raw2pc baseline on the same databases, in one run; the JSON line must
// carry both sides and their ratio (never a speed). Two servers (one per
// bank), and databases the user already has (--pg), refused up front when
// their servers have no room for the run.
//
// 1,000 accounts per bank, not 50: two transfers in opposite directions over
// the same two accounts deadlock across the databases until the agents'
// lock_timeout (1 s) breaks it (docs/postgres.md, "Deadlocks across
// databases"). Over 50 accounts at 2 clients that happened about once a
// minute (keel-bench --accounts 50 --concurrency 2 --duration 30: max
// latency 1.02 s, two "lock timeout" rollbacks), enough to stall a 1 s
// window; over 1,000 it is ~400 times rarer.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/bench/bench_cli.h"
#include "tools/pg_server.h"

namespace keel::test {
namespace {

TEST(KeelBenchPostgres, CompareRunsKeelAndRaw2pcOnTheSameDatabases) {
  auto r = run("--adapter postgres --compare --concurrency 2 --duration 1.5 --warmup 0.5 --accounts 1000 "
               "--rollback-percent 10 --quiet",
               true);
  ASSERT_EQ(r.exitCode, 0) << r.out << keptLogs(r.out);
  auto m = JsonReader::parse(lastLine(r.out));
  for (const char* k : {"committed", "raw2pc_committed", "raw2pc_rolled_back", "raw2pc_p50_us", "keel_over_raw2pc",
                        "coordinator_log_commits_per_interaction", "raw2pc_cpu_s"}) {
    ASSERT_TRUE(m.has(k)) << "missing " << k << " in " << lastLine(r.out);
  }
  EXPECT_GT(m["committed"].number(), 0);
  EXPECT_GT(m["raw2pc_committed"].number(), 0);
  // raw2pc's intended overdrafts touch no row and are rolled back.
  EXPECT_GT(m["raw2pc_rolled_back"].number(), 0);
  EXPECT_EQ(m["raw2pc_errors"].number(), 0);
  EXPECT_EQ(m["errors"].number(), 0);
  EXPECT_GT(m["keel_over_raw2pc"].number(), 0);
  EXPECT_TRUE(m["cpu_s"].has("postgres"));
}

TEST(KeelBenchPostgres, TwoServersOneDatabaseEachAndTheCpuOfBothSides) {
  auto r = run("--adapter postgres --pg-servers 2 --compare --concurrency 2 --duration 1.5 --warmup 0.5 --accounts 1000 "
               "--quiet",
               true);
  ASSERT_EQ(r.exitCode, 0) << r.out << keptLogs(r.out);
  auto m = JsonReader::parse(lastLine(r.out));
  // One PostgreSQL server per bank, each watched on its own.
  ASSERT_TRUE(m["cpu_s"].has("postgres-1")) << lastLine(r.out);
  ASSERT_TRUE(m["cpu_s"].has("postgres-2")) << lastLine(r.out);
  EXPECT_FALSE(m["cpu_s"].has("postgres"));
  EXPECT_GT(m["cpu_s"]["postgres-1"].number(), 0);
  EXPECT_GT(m["cpu_s"]["postgres-2"].number(), 0);
  EXPECT_GT(m["committed"].number(), 0);
  EXPECT_GT(m["raw2pc_committed"].number(), 0);
  // Both sides' CPU per transfer, printed and in the JSON.
  for (const char* k : {"keel_own_cpu_us_per_interaction", "raw2pc_client_cpu_us_per_interaction",
                        "keel_postgres_cpu_us_per_interaction", "raw2pc_postgres_cpu_us_per_interaction"}) {
    ASSERT_TRUE(m.has(k)) << "missing " << k;
    EXPECT_GT(m[k].number(), 0) << k;
  }
  EXPECT_NE(r.out.find("CPU us per transfer: Keel's own processes (coordinator + agents)"), std::string::npos) << r.out;
}

TEST(KeelBenchPostgres, ExistingDatabasesGivenWithPgAreUsedAndAForeignTableIsLeftAlone) {
  PgServerOptions o;
  o.databases = {"mine_a", "mine_b"};
  o.maxPreparedTransactions = 64;
  PgServer pg("", o);
  pg.start();
  std::string a = pg.connString("mine_a"), b = pg.connString("mine_b");
  std::string flags = "--adapter postgres --compare --concurrency 2 --duration 1 --warmup 0.5 --accounts 1000 --quiet ";
  auto r = run(flags + "--pg 'bank-a=" + a + "' --pg 'bank-b=" + b + "'", true);
  // A window that answered nothing fails the run (exit 2) and keeps its logs.
  ASSERT_EQ(r.exitCode, 0) << r.out << keptLogs(r.out);
  auto m = JsonReader::parse(lastLine(r.out));
  EXPECT_GT(m["committed"].number(), 0) << r.out;
  EXPECT_GT(m["raw2pc_committed"].number(), 0) << r.out;
  EXPECT_FALSE(m["cpu_s"].has("postgres"));  // not ours to watch
  // The bank was made in the databases given.
  auto countA = pgQuery(a, "SELECT count(*) FROM accounts");
  ASSERT_EQ(countA.size(), 1u);
  EXPECT_EQ(countA[0][0], "1000");
  // A second run replaces the bank's own table.
  r = run(flags + "--pg 'bank-a=" + a + "' --pg 'bank-b=" + b + "'", true);
  ASSERT_EQ(r.exitCode, 0) << r.out << keptLogs(r.out);

  // A table named accounts that is not the bank's: refused, nothing touched.
  pgQuery(b, "DROP TABLE accounts; CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (7)");
  r = run(flags + "--pg 'bank-a=" + a + "' --pg 'bank-b=" + b + "'", true);
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.out.find("did not make"), std::string::npos) << r.out;
  auto kept = pgQuery(b, "SELECT id FROM accounts");
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0][0], "7");

  // Bad flags say what is wrong.
  r = run("--adapter postgres --pg 'bank-a=" + a + "' --quiet", true);
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.out.find("no database for agent bank-b"), std::string::npos) << r.out;
  r = run("--adapter postgres --pg 'bank-a=" + a + "' --pg 'bank-b=" + b + "' --pg-servers 2 --quiet", true);
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.out.find("one or the other"), std::string::npos) << r.out;
}

// Runs keel-bench on two databases of a server started with `o` (databases
// db_a, db_b): the run must be refused saying each of `said`, and leave
// both databases without an accounts table.
void refusedWithNothingChanged(PgServerOptions o, const std::vector<std::string>& said) {
  o.databases = {"db_a", "db_b"};
  PgServer pg("", o);
  pg.start();
  std::string a = pg.connString("db_a"), b = pg.connString("db_b");
  auto r = run("--adapter postgres --compare --concurrency 8 --duration 1 --warmup 0.5 --accounts 50 --quiet "
               "--pg 'bank-a=" + a + "' --pg 'bank-b=" + b + "'",
               true);
  EXPECT_NE(r.exitCode, 0);
  for (auto& words : said) EXPECT_NE(r.out.find(words), std::string::npos) << words << " in " << r.out;
  for (auto& c : {a, b}) EXPECT_EQ(pgQuery(c, "SELECT to_regclass('accounts') IS NULL")[0][0], "t") << c;
}

TEST(KeelBenchPostgres, ServersGivenWithPgWithoutRoomAreRefusedBeforeAnythingChanges) {
  // Too few connections: 2 agents x (two pools of 8 + raw2pc's 8) = 48,
  // counted together (one server).
  PgServerOptions few;
  few.settings = {"max_connections=20"};
  refusedWithNothingChanged(few, {"room for", "max_connections 20", "needs 48", "bank-a, bank-b"});
  // Prepared transactions disabled: nothing could ever prepare.
  PgServerOptions noPrepare;
  noPrepare.maxPreparedTransactions = 0;
  refusedWithNothingChanged(noPrepare, {"max_prepared_transactions = 0 (prepared transactions disabled)"});
}

}  // namespace
}  // namespace keel::test
