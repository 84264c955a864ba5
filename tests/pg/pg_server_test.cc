// PgServer against real PostgreSQL 15 servers: start-up, two databases,
// two-phase commit, prepared transactions across crashes (immediate stop,
// SIGKILL of the postmaster), two servers at once, clean-up, and failure
// messages that carry the server log.

#include "tools/pg_server.h"

#include <libpq-fe.h>
#include <signal.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace keel::test {
namespace {

using Rows = std::vector<std::vector<std::string>>;
using Clock = std::chrono::steady_clock;

PgServerOptions banks() {
  PgServerOptions o;
  o.databases = {"bank_a", "bank_b"};
  return o;
}

double msSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string one(const std::string& conn, const std::string& sql) {
  Rows r = pgQuery(conn, sql);
  if (r.size() != 1 || r[0].size() != 1) throw std::runtime_error("expected one value from: " + sql);
  return r[0][0];
}

// Prepared transactions of the connection's own database, by gid.
Rows preparedHere(const std::string& conn) {
  return pgQuery(conn, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid");
}

void createAccounts(const std::string& conn) {
  pgQuery(conn, "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)");
}

TEST(PgServerTest, StartsWithTwoDatabasesThatAcceptQueries) {
  PgServer pg("", banks());
  auto t0 = Clock::now();
  pg.start();
  std::printf("first start (initdb + start + 2 x CREATE DATABASE): %.0f ms\n", msSince(t0));

  EXPECT_TRUE(pg.running());
  EXPECT_GT(pg.port(), 0u);
  EXPECT_LT(pg.port(), 32768u);  // below the kernel's ephemeral range
  EXPECT_EQ(pg.connString("bank_a"),
            "host=127.0.0.1 port=" + std::to_string(pg.port()) + " dbname=bank_a user=postgres");
  EXPECT_EQ(one(pg.connString("bank_a"), "SELECT current_database()"), "bank_a");
  EXPECT_EQ(one(pg.connString("bank_b"), "SELECT current_database()"), "bank_b");
  EXPECT_EQ(one(pg.connString("bank_a"), "SHOW fsync"), "on");
  EXPECT_EQ(one(pg.connString("bank_a"), "SHOW max_prepared_transactions"), "64");
  EXPECT_EQ(one(pg.connString("bank_a"), "SHOW port"), std::to_string(pg.port()));

  // The databases are separate: a table in one is unknown in the other.
  createAccounts(pg.connString("bank_a"));
  pgQuery(pg.connString("bank_a"), "INSERT INTO accounts VALUES (1, 100), (2, 250)");
  EXPECT_EQ(pgQuery(pg.connString("bank_a"), "SELECT id, balance FROM accounts ORDER BY id"),
            (Rows{{"1", "100"}, {"2", "250"}}));
  try {
    pgQuery(pg.connString("bank_b"), "SELECT * FROM accounts");
    ADD_FAILURE() << "accounts visible in bank_b";
  } catch (const PgError& e) {
    EXPECT_EQ(e.sqlstate(), "42P01") << e.what();  // undefined_table
  }
  EXPECT_EQ(pgQuery(pg.connString("bank_a"), "SELECT NULL::text"), (Rows{{""}}));
  EXPECT_TRUE(pgQuery(pg.connString("bank_a"), "SELECT 1 WHERE false").empty());
}

TEST(PgServerTest, PrepareCommitAndRollbackPrepared) {
  PgServer pg("", banks());
  pg.start();
  const std::string a = pg.connString("bank_a"), b = pg.connString("bank_b");
  createAccounts(a);
  createAccounts(b);

  pgQuery(a, "BEGIN; INSERT INTO accounts VALUES (1, 100); PREPARE TRANSACTION 'keel-t1-a'");
  pgQuery(b, "BEGIN; INSERT INTO accounts VALUES (1, 200); PREPARE TRANSACTION 'keel-t2-b'");
  // Prepared, not committed: invisible to other sessions.
  EXPECT_EQ(one(a, "SELECT count(*) FROM accounts"), "0");
  EXPECT_EQ(one(b, "SELECT count(*) FROM accounts"), "0");
  // Each database sees only its own when filtering; the view itself is
  // server-wide.
  EXPECT_EQ(preparedHere(a), (Rows{{"keel-t1-a"}}));
  EXPECT_EQ(preparedHere(b), (Rows{{"keel-t2-b"}}));
  EXPECT_EQ(pgQuery(b, "SELECT gid, database FROM pg_prepared_xacts ORDER BY gid"),
            (Rows{{"keel-t1-a", "bank_a"}, {"keel-t2-b", "bank_b"}}));

  // Resolved from new sessions, not the ones that prepared.
  pgQuery(a, "COMMIT PREPARED 'keel-t1-a'");
  pgQuery(b, "ROLLBACK PREPARED 'keel-t2-b'");
  EXPECT_EQ(pgQuery(a, "SELECT id, balance FROM accounts"), (Rows{{"1", "100"}}));
  EXPECT_EQ(one(b, "SELECT count(*) FROM accounts"), "0");
  EXPECT_TRUE(preparedHere(a).empty());
  EXPECT_TRUE(preparedHere(b).empty());

  // A resolved gid is unknown afterwards: the error a recovering
  // coordinator sees when it retries a COMMIT PREPARED.
  try {
    pgQuery(a, "COMMIT PREPARED 'keel-t1-a'");
    ADD_FAILURE() << "second COMMIT PREPARED succeeded";
  } catch (const PgError& e) {
    EXPECT_EQ(e.sqlstate(), "42704") << e.what();  // undefined_object
  }
}

// Prepares one transaction per database plus a committed one, crashes the
// server with `crash`, restarts it and commits the prepared ones.
void preparedSurvives(void (PgServer::*crash)(), const char* what) {
  PgServer pg("", banks());
  pg.start();
  const unsigned port = pg.port();
  const pid_t oldPid = pg.pid();
  const std::string a = pg.connString("bank_a"), b = pg.connString("bank_b");
  createAccounts(a);
  createAccounts(b);
  pgQuery(a, "INSERT INTO accounts VALUES (0, 5)");  // committed before the crash
  pgQuery(a, "BEGIN; UPDATE accounts SET balance = balance - 5 WHERE id = 0; PREPARE TRANSACTION 'keel-9-a'");
  pgQuery(b, "BEGIN; INSERT INTO accounts VALUES (0, 5); PREPARE TRANSACTION 'keel-9-b'");
  // A client session left open mid-transaction, as a coordinator's would be.
  std::unique_ptr<PGconn, decltype(&PQfinish)> open(PQconnectdb(b.c_str()), &PQfinish);
  ASSERT_EQ(PQstatus(open.get()), CONNECTION_OK) << PQerrorMessage(open.get());
  PQclear(PQexec(open.get(), "BEGIN; INSERT INTO accounts VALUES (1, 1)"));
  ASSERT_EQ(PQtransactionStatus(open.get()), PQTRANS_INTRANS);

  auto t0 = Clock::now();
  (pg.*crash)();
  const double crashMs = msSince(t0);
  EXPECT_FALSE(pg.running());
  EXPECT_EQ(::kill(oldPid, 0), -1);  // the postmaster is gone (and reaped)
  EXPECT_THROW(pgQuery(a, "SELECT 1"), PgError);

  t0 = Clock::now();
  pg.restart();
  std::printf("%s: %.0f ms; restart with crash recovery: %.0f ms\n", what, crashMs, msSince(t0));
  EXPECT_TRUE(pg.running());
  EXPECT_EQ(pg.port(), port);
  EXPECT_NE(pg.pid(), oldPid);
  EXPECT_EQ(pg.connString("bank_a"), a);

  EXPECT_EQ(preparedHere(a), (Rows{{"keel-9-a"}}));
  EXPECT_EQ(preparedHere(b), (Rows{{"keel-9-b"}}));
  EXPECT_EQ(one(a, "SELECT balance FROM accounts WHERE id = 0"), "5");  // committed survived, prepared pending
  pgQuery(a, "COMMIT PREPARED 'keel-9-a'");
  pgQuery(b, "COMMIT PREPARED 'keel-9-b'");
  EXPECT_EQ(one(a, "SELECT balance FROM accounts WHERE id = 0"), "0");
  EXPECT_EQ(one(b, "SELECT balance FROM accounts WHERE id = 0"), "5");
  EXPECT_EQ(one(b, "SELECT count(*) FROM accounts WHERE id = 1"), "0");  // never committed: gone
  EXPECT_TRUE(preparedHere(a).empty());
  EXPECT_TRUE(preparedHere(b).empty());
}

TEST(PgServerTest, PreparedTransactionSurvivesImmediateStop) {
  preparedSurvives(&PgServer::stopImmediate, "stopImmediate");
}

TEST(PgServerTest, PreparedTransactionSurvivesKill9OfPostmaster) {
  preparedSurvives(&PgServer::kill9, "kill9");
}

TEST(PgServerTest, StopFastAndRestartKeepData) {
  PgServer pg("", banks());
  pg.start();
  const unsigned port = pg.port();
  createAccounts(pg.connString("bank_a"));
  pgQuery(pg.connString("bank_a"), "INSERT INTO accounts VALUES (7, 70)");
  auto t0 = Clock::now();
  pg.stopFast();
  std::printf("stopFast: %.0f ms\n", msSince(t0));
  EXPECT_FALSE(pg.running());
  pg.stopFast();  // stopped already: nothing to do
  t0 = Clock::now();
  pg.restart();
  std::printf("restart after a clean stop: %.0f ms\n", msSince(t0));
  EXPECT_EQ(pg.port(), port);
  EXPECT_EQ(one(pg.connString("bank_a"), "SELECT balance FROM accounts WHERE id = 7"), "70");
  EXPECT_THROW(pg.start(), std::logic_error);  // running already
  pg.restart();                                // running: stops fast first
  EXPECT_EQ(one(pg.connString("bank_b"), "SELECT current_database()"), "bank_b");
}

TEST(PgServerTest, TwoServersRunAtOnce) {
  PgServer p1("", banks());
  PgServer p2("", banks());
  auto t0 = Clock::now();
  p1.start();
  p2.start();
  std::printf("two first starts: %.0f ms\n", msSince(t0));
  ASSERT_NE(p1.port(), p2.port());
  EXPECT_NE(p1.dataDir(), p2.dataDir());
  EXPECT_EQ(one(p1.connString("bank_a"), "SHOW port"), std::to_string(p1.port()));
  EXPECT_EQ(one(p2.connString("bank_a"), "SHOW port"), std::to_string(p2.port()));

  createAccounts(p1.connString("bank_a"));
  EXPECT_THROW(pgQuery(p2.connString("bank_a"), "SELECT * FROM accounts"), PgError);
  pgQuery(p1.connString("bank_a"), "BEGIN; INSERT INTO accounts VALUES (1, 1); PREPARE TRANSACTION 'g1'");
  EXPECT_EQ(preparedHere(p1.connString("bank_a")), (Rows{{"g1"}}));
  EXPECT_TRUE(preparedHere(p2.connString("bank_a")).empty());

  // One crashing leaves the other serving.
  p1.kill9();
  EXPECT_EQ(one(p2.connString("bank_b"), "SELECT 1"), "1");
  p1.restart();
  EXPECT_EQ(preparedHere(p1.connString("bank_a")), (Rows{{"g1"}}));
}

TEST(PgServerTest, DestructorStopsServerAndRemovesFolder) {
  const char* keep = std::getenv("KEEL_PG_KEEP");
  if (keep != nullptr && std::string(keep) == "1") GTEST_SKIP() << "KEEL_PG_KEEP=1 keeps the folder";
  std::string base;
  pid_t pid = -1;
  std::string conn;
  {
    PgServer pg("", banks());
    pg.start();
    base = pg.baseDir();
    pid = pg.pid();
    conn = pg.connString("bank_a");
    // A session left open (and a prepared transaction) must not hold things up.
    pgQuery(conn, "BEGIN; CREATE TABLE t (x int); PREPARE TRANSACTION 'left-behind'");
    EXPECT_TRUE(std::filesystem::exists(base + "/data/PG_VERSION"));
  }
  EXPECT_FALSE(std::filesystem::exists(base));
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
  EXPECT_THROW(pgQuery(conn, "SELECT 1"), PgError);
}

TEST(PgServerTest, CallerFolderIsKeptAndReused) {
  const char* keep = std::getenv("KEEL_PG_KEEP");
  if (keep != nullptr && std::string(keep) == "1") GTEST_SKIP() << "KEEL_PG_KEEP=1 keeps the folder";
  PgServer outer("", {});  // only for a temp folder that some other owner made
  const std::string base = outer.baseDir() + "/mine";
  std::filesystem::create_directories(base);
  {
    PgServer pg(base, banks());
    pg.start();
    EXPECT_EQ(pg.dataDir(), base + "/data");
    EXPECT_EQ(one(pg.connString("bank_a"), "SELECT current_database()"), "bank_a");
  }
  EXPECT_TRUE(std::filesystem::exists(base));
  EXPECT_FALSE(std::filesystem::exists(base + "/data"));
  EXPECT_FALSE(std::filesystem::exists(base + "/server.log"));
}

TEST(PgServerTest, StartFailureCarriesServerLog) {
  PgServerOptions o = banks();
  o.settings = {"no_such_setting=1"};
  PgServer pg("", o);
  try {
    pg.start();
    FAIL() << "a server with an unknown setting started";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("exited during start-up"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unrecognized configuration parameter \"no_such_setting\""), std::string::npos) << msg;
  }
  EXPECT_FALSE(pg.running());
}

TEST(PgServerTest, ExplicitPortInUseFailsClearly) {
  PgServer first("", {});
  first.start();
  PgServerOptions o;
  o.port = first.port();
  PgServer second("", o);
  try {
    second.start();
    FAIL() << "two servers bound one port";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("Address already in use"), std::string::npos) << msg;
  }
  EXPECT_FALSE(second.running());
  EXPECT_EQ(one(first.connString("postgres"), "SELECT 1"), "1");
}

}  // namespace
}  // namespace keel::test
