// pg::LoopPool and pg::LoopConn (participant/adapters/pg_loop.h) against a
// real PostgreSQL 15 server: pipelines and commands on the event loop, more
// calls than connections, a call cancelled while its connection opens or
// while PostgreSQL runs its query (the slot must come back: a leaked slot
// stalls the agent for good), a connection PostgreSQL terminates, a
// server that is not there and one that never answers.

#include "participant/adapters/pg_loop.h"

#include <kj/async-io.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "participant/adapters/pg_row_check.h"
#include "tools/pg_server.h"

namespace keel::pg {
namespace {

using test::PgServer;
using test::PgServerOptions;

class PgLoopTest : public ::testing::Test {
 protected:
  ~PgLoopTest() noexcept override {}  // io_'s members may throw in theirs
  static void SetUpTestSuite() {
    PgServerOptions o;
    o.databases = {"loopdb"};
    server_ = new PgServer("", o);
    server_->start();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  std::string conninfo() const { return server_->connString("loopdb"); }

  kj::AsyncIoContext io_ = kj::setupAsyncIo();
  kj::Timer& timer() { return io_.provider->getTimer(); }
  std::unique_ptr<LoopPool> pool(std::size_t size, std::function<void()> onReconnect = {},
                                 const std::string& conninfo = "") {
    return std::make_unique<LoopPool>(io_.unixEventPort, timer(), conninfo.empty() ? this->conninfo() : conninfo,
                                      size, "SET application_name = 'keel-loop-test'", std::move(onReconnect));
  }
  // SELECT `sql` on a connection of `p`: the first cell.
  kj::Promise<std::string> value(LoopPool& p, std::string sql) {
    return p.run<std::string>([sql](LoopConn& c) {
      return c.query(sql).then([](Result r) {
        if (auto e = errorIn(r)) throw std::runtime_error(e->what());
        return std::string(PQgetvalue(r.get(), 0, 0));
      });
    });
  }

  // Runs SELECT 1 on `p`, which must fail saying `expected`: how long that took, in seconds.
  double secondsToFail(LoopPool& p, const std::string& expected) {
    auto t0 = std::chrono::steady_clock::now();
    try {
      value(p, "SELECT 1").wait(io_.waitScope);
      ADD_FAILURE() << "the call succeeded";
    } catch (const kj::Exception& e) {
      std::string d = e.getDescription().cStr();
      EXPECT_NE(d.find(expected), std::string::npos) << d;
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  static PgServer* server_;
};

PgServer* PgLoopTest::server_ = nullptr;

TEST_F(PgLoopTest, CommandsAndErrorsComeBackOnTheLoop) {
  auto p = pool(2);
  EXPECT_EQ(value(*p, "SELECT 40 + 2").wait(io_.waitScope), "42");
  // The session set-up ran on the new connection.
  EXPECT_EQ(value(*p, "SELECT current_setting('application_name')").wait(io_.waitScope), "keel-loop-test");
  // An SQL error is a result with its SQLSTATE, not a broken connection.
  auto sqlstate = p->run<std::string>([](LoopConn& c) {
                     return c.query("SELECT * FROM no_such_table").then([](Result r) {
                       auto e = errorIn(r);
                       return e ? e->sqlstate() : std::string("none");
                     });
                   }).wait(io_.waitScope);
  EXPECT_EQ(sqlstate, "42P01");
  EXPECT_EQ(p->open(), 1u);  // one connection did it all, one call after another
}

TEST_F(PgLoopTest, APipelineReturnsTheFirstResultOfEachQueryThenTheSync) {
  auto p = pool(1);
  auto statuses = p->run<std::vector<std::string>>([](LoopConn& c) {
                     PGconn* pc = c.get();
                     EXPECT_EQ(PQenterPipelineMode(pc), 1);
                     for (const char* q : {"SELECT 1", "SELECT no_such_column", "SELECT 3"}) {
                       EXPECT_EQ(PQsendQueryParams(pc, q, 0, nullptr, nullptr, nullptr, nullptr, 0), 1);
                     }
                     EXPECT_EQ(PQpipelineSync(pc), 1);
                     return c.flush().then([&c] { return c.collectPipeline(); }).then([pc](std::vector<Result> rs) {
                       std::vector<std::string> out;
                       for (auto& r : rs) out.push_back(PQresStatus(PQresultStatus(r.get())));
                       EXPECT_EQ(PQexitPipelineMode(pc), 1);
                       return out;
                     });
                   }).wait(io_.waitScope);
  EXPECT_EQ(statuses, (std::vector<std::string>{"PGRES_TUPLES_OK", "PGRES_FATAL_ERROR", "PGRES_PIPELINE_ABORTED",
                                                "PGRES_PIPELINE_SYNC"}));
}

TEST_F(PgLoopTest, MoreCallsThanConnectionsRunSideBySideAndQueue) {
  auto p = pool(3);
  auto t0 = std::chrono::steady_clock::now();
  kj::Vector<kj::Promise<std::string>> calls;
  // Joined: a join takes its branches' values only once all are ready, so
  // each call must give its connection back as soon as its own is.
  for (int i = 0; i < 6; ++i) calls.add(value(*p, "SELECT pg_sleep(0.2)::text || '" + std::to_string(i) + "'"));
  auto all = kj::joinPromises(calls.releaseAsArray()).wait(io_.waitScope);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(all.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(all[i], std::to_string(i));
  EXPECT_EQ(p->open(), 3u);
  // Three at a time: two rounds of 200 ms, not six (one at a time) and not
  // one (no limit).
  EXPECT_GE(ms, 390);
  EXPECT_LT(ms, 1100);
}

TEST_F(PgLoopTest, ACallCancelledWhileItsConnectionOpensGivesTheSlotBack) {
  auto p = pool(1);
  for (int i = 0; i < 5; ++i) {
    auto dropped = value(*p, "SELECT 1");
    // Turn the loop a little so that the connect is under way, then drop
    // the call.
    io_.provider->getTimer().afterDelay(1 * kj::MILLISECONDS).wait(io_.waitScope);
  }
  EXPECT_EQ(value(*p, "SELECT 'still served'").wait(io_.waitScope), "still served");
  EXPECT_LE(p->open(), 1u);
}

TEST_F(PgLoopTest, ACallCancelledWhilePostgresRunsItClosesThatConnectionAndTheNextCallIsServed) {
  auto p = pool(1);
  EXPECT_EQ(value(*p, "SELECT 1").wait(io_.waitScope), "1");
  {
    auto dropped = value(*p, "SELECT pg_sleep(5)::text");
    io_.provider->getTimer().afterDelay(50 * kj::MILLISECONDS).wait(io_.waitScope);
  }  // cancelled halfway: that session is closed, never handed out again
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(value(*p, "SELECT 'next'").wait(io_.waitScope), "next");
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(ms, 3000) << "the next call waited for the cancelled one's query";
}

TEST_F(PgLoopTest, ATerminatedConnectionFailsItsCallAndTheNextReconnects) {
  int reconnects = 0;
  auto p = pool(1, [&reconnects] { ++reconnects; });
  std::string pid = value(*p, "SELECT pg_backend_pid()::text").wait(io_.waitScope);
  test::pgQuery(conninfo(), "SELECT pg_terminate_backend(" + pid + ")");
  // The idle connection was terminated under it: the call fails (it cannot
  // tell what PostgreSQL did), and says why.
  try {
    value(*p, "SELECT 1").wait(io_.waitScope);
    ADD_FAILURE() << "a call on a terminated connection succeeded";
  } catch (const kj::Exception& e) {
    EXPECT_NE(std::string(e.getDescription().cStr()).find("PostgreSQL"), std::string::npos) << e.getDescription().cStr();
  }
  std::string again = value(*p, "SELECT pg_backend_pid()::text").wait(io_.waitScope);
  EXPECT_NE(again, pid);
  EXPECT_EQ(p->open(), 1u);
}

TEST_F(PgLoopTest, AServerThatIsNotThereFailsEachCallFastAndSaysSo) {
  int reconnects = 0;
  auto p = pool(2, [&reconnects] { ++reconnects; }, "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=5");
  for (int i = 0; i < 3; ++i) EXPECT_LT(secondsToFail(*p, "cannot connect to PostgreSQL"), 2.0);
  EXPECT_EQ(p->open(), 0u);
  EXPECT_EQ(reconnects, 0);
}

TEST_F(PgLoopTest, AServerThatTakesTheConnectionAndNeverAnswersFailsTheCallAtConnectTimeout) {
  // A listening socket nobody reads: the kernel completes the TCP handshake,
  // libpq sends its startup packet and waits for an answer that never comes.
  int l = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(l, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(l, 8), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len), 0);
  std::string silent = "host=127.0.0.1 port=" + std::to_string(ntohs(a.sin_port)) + " dbname=x user=x connect_timeout=2";
  auto p = pool(1, {}, silent);
  for (int i = 0; i < 2; ++i) {  // the slot comes back: the second call connects (and fails) again
    double s = secondsToFail(*p, "no answer from the server within 2 s (connect_timeout)");
    // The conninfo's 2 s, not the 10 s default (and not forever).
    EXPECT_GE(s, 1.9);
    EXPECT_LT(s, 8.0);
    EXPECT_EQ(p->open(), 0u);
  }
  ::close(l);
}

// PostgreSQL's own row check (pg_row_check.h), as the agent's prepare sends
// it: BEGIN; the wrapped statement; PREPARE TRANSACTION in one pipeline. A
// wrong count must stop the pipeline before PREPARE TRANSACTION (nothing
// prepared, nothing changed); the right one prepares and answers the count.
TEST_F(PgLoopTest, ARowCheckedStatementPreparesOnlyWhenItTouchedTheRequiredRows) {
  std::unique_ptr<PGconn, decltype(&PQfinish)> c(PQconnectdb(conninfo().c_str()), &PQfinish);
  ASSERT_EQ(PQstatus(c.get()), CONNECTION_OK) << PQerrorMessage(c.get());
  auto exec = [&](const std::string& sql) {
    Result r(PQexec(c.get(), sql.c_str()));
    EXPECT_TRUE(PQresultStatus(r.get()) == PGRES_COMMAND_OK || PQresultStatus(r.get()) == PGRES_TUPLES_OK)
        << sql << ": " << PQresultErrorMessage(r.get());
    return std::string(PQntuples(r.get()) > 0 ? PQgetvalue(r.get(), 0, 0) : "");
  };
  exec("CREATE TABLE rc (k text PRIMARY KEY, v bigint NOT NULL)");
  exec("INSERT INTO rc VALUES ('a', 10), ('b', 10)");
  auto cut = rowCheckable("UPDATE rc SET v = v - $1::bigint WHERE v >= $1::bigint; -- debit");
  ASSERT_TRUE(cut);
  const std::string sql = rowCheckedSql(*cut, 2);
  // Runs it in one pipeline; returns (the statement's result status, its
  // SQLSTATE and primary message, PREPARE TRANSACTION's status, the count).
  struct Out {
    ExecStatusType stmt, prepare;
    std::string state, primary, count;
  };
  auto run = [&](const char* amount, const std::string& gid) {
    EXPECT_EQ(PQenterPipelineMode(c.get()), 1);
    const Oid types[] = {20};
    const char* values[] = {amount};
    EXPECT_EQ(PQsendQueryParams(c.get(), "BEGIN", 0, nullptr, nullptr, nullptr, nullptr, 0), 1);
    EXPECT_EQ(PQsendQueryParams(c.get(), sql.c_str(), 1, types, values, nullptr, nullptr, 0), 1);
    std::string prep = "PREPARE TRANSACTION '" + gid + "'";
    EXPECT_EQ(PQsendQueryParams(c.get(), prep.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0), 1);
    EXPECT_EQ(PQpipelineSync(c.get()), 1);
    std::vector<Result> rs;
    while (true) {
      PGresult* r = PQgetResult(c.get());
      if (r == nullptr) continue;  // the end of one query's results
      rs.emplace_back(r);
      if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) break;
    }
    EXPECT_EQ(PQexitPipelineMode(c.get()), 1);
    EXPECT_EQ(rs.size(), 4u);
    Out o{PQresultStatus(rs[1].get()), PQresultStatus(rs[2].get()), "", "", ""};
    if (const char* s = PQresultErrorField(rs[1].get(), PG_DIAG_SQLSTATE)) o.state = s;
    if (const char* s = PQresultErrorField(rs[1].get(), PG_DIAG_MESSAGE_PRIMARY)) o.primary = s;
    if (o.stmt == PGRES_TUPLES_OK && PQntuples(rs[1].get()) == 1) o.count = PQgetvalue(rs[1].get(), 0, 0);
    return o;
  };
  // 15 leaves both rows alone: 0 touched, 2 required.
  Out wrong = run("15", "rc-wrong");
  EXPECT_EQ(wrong.stmt, PGRES_FATAL_ERROR);
  EXPECT_EQ(rowCheckFailure(wrong.state, wrong.primary), 0) << wrong.state << " " << wrong.primary;
  EXPECT_EQ(wrong.prepare, PGRES_PIPELINE_ABORTED);
  exec("ROLLBACK");
  // 7 touches both: prepared, and the count comes back.
  Out right = run("7", "rc-right");
  EXPECT_EQ(right.stmt, PGRES_TUPLES_OK);
  EXPECT_EQ(right.count, "2");
  EXPECT_EQ(right.prepare, PGRES_COMMAND_OK);
  EXPECT_EQ(exec("SELECT string_agg(gid, ',') FROM pg_prepared_xacts WHERE gid LIKE 'rc-%'"), "rc-right");
  exec("COMMIT PREPARED 'rc-right'");
  EXPECT_EQ(exec("SELECT sum(v) FROM rc"), "6");
  // A count of 1 where 2 rows qualify is as wrong as 0.
  exec("UPDATE rc SET v = 10 WHERE k = 'a'");
  Out one = run("5", "rc-one");
  EXPECT_EQ(rowCheckFailure(one.state, one.primary), 1) << one.state << " " << one.primary;
  EXPECT_EQ(one.prepare, PGRES_PIPELINE_ABORTED);
  exec("ROLLBACK");
  EXPECT_EQ(exec("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'rc-%'"), "0");
  EXPECT_EQ(exec("SELECT sum(v) FROM rc"), "13");
}

}  // namespace
}  // namespace keel::pg
