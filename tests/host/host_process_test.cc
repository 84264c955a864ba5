// The built keel-host binary over HTTP: the contract calls, the HTTP
// refusals, each fault switch (at start and at run time), --crash-at and
// what survives it, and the data directory's ownership.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <asio.hpp>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/strict_json.h"
#include "common/temp_dir.h"
#include "tools/child_process.h"

extern char** environ;

namespace keel::host {
namespace {

using namespace std::chrono_literals;
using asio::ip::tcp;

// One answer; status 0: the connection closed without one.
struct Reply {
  int status = 0;
  std::string body;
  bool closeHeader = false;  // "Connection: close"
  Json json() const { return JsonReader::parse(body); }
};

// A tiny blocking HTTP/1.1 client on one keep-alive connection, with a
// 10 s receive timeout so a missing answer fails the test instead of
// hanging it.
class Client {
 public:
  explicit Client(unsigned port) : sock_(io_) {
    sock_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    timeval tv{10, 0};
    ::setsockopt(sock_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  Reply get(const std::string& path) { return raw("GET " + path + " HTTP/1.1\r\nHost: h\r\n\r\n"); }
  Reply post(const std::string& path, const std::string& body) {
    return raw("POST " + path + " HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n\r\n" + body);
  }
  // Sends `request` as is and reads one answer.
  Reply raw(const std::string& request) {
    send(request);
    return read();
  }
  void send(const std::string& request) {
    std::error_code ec;
    asio::write(sock_, asio::buffer(request), ec);
  }
  Reply read() {
    Reply r;
    auto end = readUntil("\r\n\r\n");
    if (!end) return r;
    std::string head = buf_.substr(0, *end);
    r.status = std::stoi(head.substr(head.find(' ') + 1, 3));
    r.closeHeader = head.find("\r\nConnection: close") != std::string::npos;
    EXPECT_NE(head.find("\r\nContent-Type: application/json\r\n"), std::string::npos) << head;
    auto cl = head.find("\r\nContent-Length: ");
    EXPECT_NE(cl, std::string::npos) << head;
    std::size_t len = std::stoul(head.substr(cl + 18));
    buf_.erase(0, *end + 4);
    while (buf_.size() < len && fill()) {
    }
    r.body = buf_.substr(0, len);
    buf_.erase(0, std::min(len, buf_.size()));
    return r;
  }
  // True once the server has closed the connection (EOF, nothing more sent).
  bool closedByServer() { return !fill(); }

 private:
  std::optional<std::size_t> readUntil(const std::string& s) {
    for (;;) {
      if (auto at = buf_.find(s); at != std::string::npos) return at;
      if (!fill()) return std::nullopt;
    }
  }
  bool fill() {
    char chunk[16384];
    std::error_code ec;
    std::size_t n = sock_.read_some(asio::buffer(chunk), ec);
    if (ec || n == 0) return false;
    buf_.append(chunk, n);
    return true;
  }
  asio::io_context io_;
  tcp::socket sock_;
  std::string buf_;
};

void expectAnswer(const Reply& r, int status, const std::string& body) {
  EXPECT_EQ(r.status, status) << r.body;
  EXPECT_EQ(r.body, body);
}

std::string tryBody(const std::string& xid, int index, const std::string& account, std::int64_t amount) {
  return "{\"key\":\"" + xid + "/" + std::to_string(index) + "\",\"xid\":\"" + xid +
         "\",\"index\":" + std::to_string(index) + ",\"account\":\"" + account +
         "\",\"amount\":" + std::to_string(amount) + "}";
}
std::string keyBody(const std::string& xid, int index) {
  return "{\"key\":\"" + xid + "/" + std::to_string(index) + "\",\"xid\":\"" + xid +
         "\",\"index\":" + std::to_string(index) + "}";
}

// A keel-host process on a fresh data directory (the fixture's).
class HostProcessTest : public ::testing::Test {
 protected:
  ~HostProcessTest() override {
    if (pid_ > 0) stop();
  }

  // Starts keel-host with `extra` flags; returns its port.
  unsigned start(const std::vector<std::string>& extra = {}) {
    std::string ready = dir_.sub("ready");
    std::filesystem::remove(ready);
    std::vector<std::string> args{std::string(KEEL_BIN_DIR) + "/keel-host",
                                  "--listen",
                                  "127.0.0.1:0",
                                  "--data-dir",
                                  data_,
                                  "--ready-file",
                                  ready,
                                  "--seed",
                                  "7"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = test::spawnChild("keel-host test", args, env(), log_, SIGKILL);
    for (auto until = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < until;) {
      std::ifstream f(ready);
      std::string addr;
      if (f >> addr) return port_ = unsigned(std::stoul(addr.substr(addr.rfind(':') + 1)));
      if (auto st = test::waitChild(pid_, 20ms)) {
        pid_ = 0;
        ADD_FAILURE() << "keel-host exited at start: " << test::describeWaitStatus(*st) << "\n" << logTail();
        return 0;
      }
    }
    ADD_FAILURE() << "keel-host did not write " << ready << "\n" << logTail();
    return 0;
  }
  // SIGTERM; expects a clean exit 0.
  void stop() {
    ::kill(pid_, SIGTERM);
    auto st = test::waitChild(pid_, 10s);
    pid_ = 0;
    ASSERT_TRUE(st) << "keel-host did not stop on SIGTERM";
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << test::describeWaitStatus(*st) << "\n" << logTail();
  }
  // The exit status of the running keel-host, which must end within `t`.
  int exitStatus(std::chrono::milliseconds t = 10s) {
    auto st = test::waitChild(pid_, t);
    pid_ = 0;
    if (!st || !WIFEXITED(*st)) {
      ADD_FAILURE() << "keel-host: " << (st ? test::describeWaitStatus(*st) : "still running") << "\n" << logTail();
      return -1;
    }
    return WEXITSTATUS(*st);
  }
  // Runs keel-host to its end (a refused start): its exit status.
  int runToExit(const std::vector<std::string>& args) {
    std::vector<std::string> all{std::string(KEEL_BIN_DIR) + "/keel-host"};
    all.insert(all.end(), args.begin(), args.end());
    pid_t pid = test::spawnChild("keel-host test", all, env(), log_, SIGKILL);
    auto st = test::waitChild(pid, 10s);
    if (!st || !WIFEXITED(*st)) {
      if (!st) ::kill(pid, SIGKILL);
      return -1;
    }
    return WEXITSTATUS(*st);
  }
  std::string logTail() { return test::lastLinesOf(log_, 20).value_or("(no log)"); }
  static std::vector<std::string> env() {
    std::vector<std::string> out;
    for (char** e = environ; *e != nullptr; ++e) out.emplace_back(*e);
    return out;
  }
  std::int64_t held(Client& c, const std::string& account) {
    return std::int64_t(c.get("/v1/accounts/" + account).json()["held"].whole());
  }

  TempDir dir_{"keel-host-process"};
  std::string data_ = dir_.sub("data");
  std::string log_ = dir_.sub("host.log");
  pid_t pid_ = 0;
  unsigned port_ = 0;
};

TEST_F(HostProcessTest, TheContractOverHttp) {
  Client c(start({"--init", "--accounts", "2", "--balance", "100"}));
  EXPECT_EQ(c.get("/v1/health").body, "{\"status\":\"ok\"}");

  Reply t = c.post("/v1/debit/try", tryBody("1.5.1", 0, "acct-0", 30));
  ASSERT_EQ(t.status, 200) << t.body;
  EXPECT_EQ(t.json()["result"].str(), "tried");
  std::string ref = t.json()["ref"].str();
  EXPECT_EQ(c.post("/v1/debit/try", tryBody("1.5.1", 0, "acct-0", 30)).body, t.body);  // once
  EXPECT_EQ(held(c, "acct-0"), 30);
  auto open = c.get("/v1/open").json()["open"].array();
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0]["key"].str(), "1.5.1/0");
  EXPECT_EQ(open[0]["op"].str(), "debit");
  EXPECT_EQ(open[0]["ref"].str(), ref);

  expectAnswer(c.post("/v1/debit/confirm", keyBody("1.5.1", 0)), 200, "{\"result\":\"confirmed\"}");
  expectAnswer(c.post("/v1/debit/cancel", keyBody("1.5.1", 0)), 409, "{\"result\":\"confirmed\"}");
  EXPECT_EQ(c.get("/v1/keys").body, "{\"keys\":[{\"key\":\"1.5.1/0\",\"state\":\"confirmed\"}]}");
  auto a0 = c.get("/v1/accounts/acct-0").json();
  EXPECT_EQ(a0["balance"].whole(), 70u);
  EXPECT_EQ(a0["held"].whole(), 0u);

  // A credit is pending at try (not in the balance) and dropped by cancel.
  ASSERT_EQ(c.post("/v1/credit/try", tryBody("1.6.1", 1, "acct-1", 5)).status, 200);
  EXPECT_EQ(c.get("/v1/accounts/acct-1").json()["balance"].whole(), 100u);
  EXPECT_EQ(c.get("/v1/accounts/acct-1").json()["incoming"].whole(), 5u);
  EXPECT_EQ(c.post("/v1/credit/cancel", keyBody("1.6.1", 1)).status, 200);
  EXPECT_EQ(c.get("/v1/accounts/acct-1").json()["balance"].whole(), 100u);
  EXPECT_EQ(c.get("/v1/accounts/acct-1").json()["incoming"].whole(), 0u);

  // Refusal, tombstone, unknown.
  Reply r = c.post("/v1/debit/try", tryBody("1.7.1", 0, "acct-9", 5));
  EXPECT_EQ(r.status, 422);
  EXPECT_EQ(r.json()["reason"].str(), "no such account acct-9");
  EXPECT_EQ(c.post("/v1/debit/cancel", keyBody("1.8.1", 0)).status, 200);
  expectAnswer(c.post("/v1/debit/try", tryBody("1.8.1", 0, "acct-0", 5)), 409, "{\"result\":\"cancelled\"}");
  expectAnswer(c.post("/v1/debit/confirm", keyBody("1.9.1", 0)), 404, "{\"result\":\"unknown\"}");

  auto s = c.get("/v1/stats").json();
  EXPECT_EQ(s["tried"].whole(), 2u);
  EXPECT_EQ(s["confirmed"].whole(), 1u);
  EXPECT_EQ(s["cancelled"].whole(), 1u);
  EXPECT_EQ(s["refused"].whole(), 1u);
  EXPECT_EQ(s["tombstones"].whole(), 1u);
  EXPECT_EQ(s["open"].whole(), 0u);
  EXPECT_EQ(s["calls"].whole(), 10u);

  EXPECT_EQ(c.post("/v1/accounts", "{\"name\":\"acct-x\",\"balance\":9}").body,
            "{\"name\":\"acct-x\",\"balance\":9,\"held\":0,\"incoming\":0}");
  EXPECT_EQ(c.post("/v1/accounts", "{\"name\":\"acct-x\",\"balance\":9}").status, 409);
  EXPECT_EQ(c.get("/v1/accounts").json()["accounts"].array().size(), 3u);
  EXPECT_EQ(c.get("/v1/accounts/acct-y").status, 404);
  stop();
}

TEST_F(HostProcessTest, WhatItCannotServeIsRefusedWithAReason) {
  unsigned port = start({"--init"});
  Client c(port);
  struct Case {
    Reply reply;
    int status;
    std::string error;  // a part of the "error" member
  };
  std::vector<Case> cases = {
      {c.get("/v2/nothing"), 404, "no such path /v2/nothing"},
      {c.get("/v1/debit/try"), 405, "method GET is not allowed on /v1/debit/try (use POST)"},
      {c.post("/v1/health", "{}"), 405, "use GET"},
      {c.post("/v1/debit/try", "{\"key\":"), 400, "JSON"},
      {c.post("/v1/debit/try", "[1]"), 400, "not a JSON object"},
      {c.post("/v1/debit/try", keyBody("1.1.1", 0)), 400, "missing member 'account'"},
      {c.post("/v1/debit/confirm", "{\"key\":\"1.1.1/0\",\"xid\":\"1.1.1\",\"index\":\"0\"}"), 400,
       "member 'index' must be a number"},
      {c.post("/v1/debit/cancel", R"({"key":"1.1.2/0","xid":"1.1.1","index":0})"), 400,
       "key '1.1.2/0' is not '<xid>/<index>' ('1.1.1/0')"},
      {c.post("/v1/debit/try", R"({"key":"1.1.1/0","xid":"1.1.1","index":0,"account":"acct-0","amount":5.5})"), 400,
       "member 'amount' must be a whole number, not 5.5"},
      {c.post("/admin/faults", "{\"fail_rate\":2}"), 400, "from 0 to 1"},
      {c.post("/admin/faults", "{\"crash_at\":\"try:later\"}"), 400, "is not CALL:WHEN"},
      {c.post("/admin/faults", "{\"slowness\":1}"), 400, "unknown member 'slowness'"},
  };
  for (const auto& k : cases) {
    EXPECT_EQ(k.reply.status, k.status) << k.reply.body;
    EXPECT_NE(k.reply.json()["error"].str().find(k.error), std::string::npos) << k.reply.body;
    EXPECT_FALSE(k.reply.closeHeader);  // the connection stays usable
  }
  EXPECT_EQ(c.get("/v1/stats").json()["calls"].whole(), 0u);  // nothing reached the books

  // What cannot be framed is answered, then the connection is closed.
  struct Framing {
    std::string request;
    int status;
  };
  std::string bigHeader = "GET /v1/health HTTP/1.1\r\nX-Pad: " + std::string(20000, 'a') + "\r\n\r\n";
  for (const auto& k : std::vector<Framing>{
           {"BROKEN\r\n\r\n", 400},
           {"get /v1/health HTTP/1.1\r\n\r\n", 400},
           {"GET /v1/health HTTP/2\r\n\r\n", 400},
           {"GET /v1/health HTTP/1.1\r\nno colon\r\n\r\n", 400},
           {"POST /v1/debit/try HTTP/1.1\r\n\r\n", 411},
           {"POST /v1/debit/try HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411},
           {"POST /v1/debit/try HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413},
           {bigHeader, 431},
       }) {
    Client one(port);
    Reply r = one.raw(k.request);
    EXPECT_EQ(r.status, k.status) << k.request.substr(0, 60);
    EXPECT_TRUE(r.closeHeader) << k.request.substr(0, 60);
    EXPECT_TRUE(one.closedByServer()) << k.request.substr(0, 60);
  }
  // A body of exactly the limit is read (and refused for what it says).
  Client big(port);
  EXPECT_EQ(big.post("/v1/debit/try", std::string(65536, ' ')).status, 400);
  // Connection: close is honoured.
  Client once(port);
  Reply r = once.raw("GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.closeHeader);
  EXPECT_TRUE(once.closedByServer());
  stop();
}

TEST_F(HostProcessTest, ConcurrentCallsShareGroupCommits) {
  unsigned port = start({"--init", "--accounts", "1", "--balance", "1000000"});
  constexpr int kClients = 32, kCalls = 10;
  std::vector<std::thread> clients;
  std::atomic<int> tried{0};
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      Client c(port);
      for (int k = 0; k < kCalls; ++k) {
        if (c.post("/v1/debit/try", tryBody("5." + std::to_string(i) + ".1", k, "acct-0", 1)).status == 200) ++tried;
      }
    });
  }
  for (auto& t : clients) t.join();
  Client c(port);
  EXPECT_EQ(tried.load(), kClients * kCalls);
  EXPECT_EQ(held(c, "acct-0"), kClients * kCalls);
  auto s = c.get("/v1/stats").json();
  EXPECT_EQ(s["calls"].whole(), std::uint64_t(kClients * kCalls));
  // One commit per call would be kClients * kCalls (plus the accounts').
  EXPECT_LT(s["commits"].whole(), std::uint64_t(kClients * kCalls / 2)) << c.get("/v1/stats").body;
  stop();
}

TEST_F(HostProcessTest, PipelinedIdleAndSurplusConnections) {
  unsigned port = start({"--init", "--idle-ms", "300", "--max-connections", "2"});
  Client a(port);
  a.send("GET /v1/health HTTP/1.1\r\n\r\nGET /v1/stats HTTP/1.1\r\n\r\n");  // two requests, one write
  EXPECT_EQ(a.read().body, "{\"status\":\"ok\"}");
  EXPECT_EQ(a.read().json()["calls"].whole(), 0u);
  Client b(port);
  EXPECT_EQ(b.get("/v1/health").status, 200);
  Client surplus(port);
  EXPECT_TRUE(surplus.closedByServer());  // a third connection is closed at once
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(a.closedByServer());  // idle for 300 ms
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 200ms);
  EXPECT_TRUE(b.closedByServer());
  Client c(port);  // the slots are free again
  EXPECT_EQ(c.get("/v1/health").status, 200);
  stop();
}

TEST_F(HostProcessTest, DroppedAnswersAreAppliedAndTheRetryGetsTheSameAnswer) {
  unsigned port = start({"--init", "--accounts", "1", "--balance", "100", "--drop-answers", "1"});
  {
    Client c(port);
    Reply lost = c.post("/v1/debit/try", tryBody("2.1.1", 0, "acct-0", 40));
    EXPECT_EQ(lost.status, 0) << "answered: " << lost.body;
  }
  Client admin(port);
  EXPECT_EQ(held(admin, "acct-0"), 40);  // applied although unanswered
  Reply now = admin.post("/admin/faults", "{\"drop_answers\":0}");
  EXPECT_EQ(now.json()["drop_answers"].number(), 0);
  Reply retry = admin.post("/v1/debit/try", tryBody("2.1.1", 0, "acct-0", 40));
  EXPECT_EQ(retry.status, 200);
  EXPECT_EQ(retry.json()["ref"].str(), admin.get("/v1/open").json()["open"].array()[0]["ref"].str());
  EXPECT_EQ(held(admin, "acct-0"), 40);  // once
  stop();
}

TEST_F(HostProcessTest, InjectedFailuresApplyNothingAndSwitchAtRunTime) {
  unsigned port = start({"--init", "--accounts", "1", "--balance", "100", "--fail-rate", "1"});
  Client c(port);
  expectAnswer(c.post("/v1/debit/try", tryBody("3.1.1", 0, "acct-0", 10)), 500, "{\"error\":\"injected failure\"}");
  EXPECT_EQ(held(c, "acct-0"), 0);
  EXPECT_EQ(c.get("/v1/stats").json()["calls"].whole(), 0u);
  EXPECT_EQ(c.get("/admin/faults").body, "{\"slow_ms\":0,\"drop_answers\":0,\"fail_rate\":1,\"crash_at\":null}");

  // Slow answers, set at run time.
  EXPECT_EQ(c.post("/admin/faults", "{\"fail_rate\":0,\"slow_ms\":300}").json()["slow_ms"].whole(), 300u);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(c.post("/v1/debit/try", tryBody("3.1.1", 0, "acct-0", 10)).status, 200);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 300ms);
  EXPECT_EQ(held(c, "acct-0"), 10);

  // A crash set at run time: the confirm is never applied.
  EXPECT_EQ(c.post("/admin/faults", "{\"slow_ms\":0,\"crash_at\":\"confirm:before\"}").json()["crash_at"].str(),
            "confirm:before");
  EXPECT_EQ(c.post("/v1/debit/confirm", keyBody("3.1.1", 0)).status, 0);
  EXPECT_EQ(exitStatus(), 86);
  Client after(start());
  EXPECT_EQ(held(after, "acct-0"), 10);
  EXPECT_EQ(after.get("/v1/open").json()["open"].array().size(), 1u);
  EXPECT_EQ(after.get("/admin/faults").json()["crash_at"].kind, Json::Kind::Null);  // not kept across restarts
  stop();
}

TEST_F(HostProcessTest, ACrashAfterATryKeepsItDurable) {
  unsigned port = start({"--init", "--accounts", "1", "--balance", "100", "--crash-at", "try:after"});
  {
    Client c(port);
    EXPECT_EQ(c.post("/v1/debit/try", tryBody("4.1.1", 0, "acct-0", 25)).status, 0);
  }
  EXPECT_EQ(exitStatus(), 86);
  Client c(start());
  auto open = c.get("/v1/open").json()["open"].array();
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0]["key"].str(), "4.1.1/0");
  Reply again = c.post("/v1/debit/try", tryBody("4.1.1", 0, "acct-0", 25));
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(again.json()["ref"].str(), open[0]["ref"].str());
  EXPECT_EQ(held(c, "acct-0"), 25);
  stop();
}

TEST_F(HostProcessTest, TheDataDirectoryIsOwnedAndBadFlagsAreRefused) {
  EXPECT_EQ(runToExit({"--listen", "127.0.0.1:0", "--data-dir", data_}), 3);  // missing, no --init
  EXPECT_FALSE(std::filesystem::exists(data_));
  start({"--init"});
  EXPECT_EQ(runToExit({"--listen", "127.0.0.1:0", "--data-dir", data_}), 3);  // in use
  EXPECT_NE(logTail().find("is in use by pid"), std::string::npos) << logTail();
  for (const auto& bad : std::vector<std::vector<std::string>>{
           {"--listen", "127.0.0.1:0", "--data-dir", data_, "--fail-rate", "2"},
           {"--listen", "127.0.0.1:0", "--data-dir", data_, "--crash-at", "try"},
           {"--listen", "nowhere", "--data-dir", data_},
           {"--data-dir", data_},
       }) {
    EXPECT_EQ(runToExit(bad), 2) << bad[bad.size() - 2] << " " << bad.back();
  }
  EXPECT_NE(logTail().find("--listen is required"), std::string::npos) << logTail();
  stop();
}

}  // namespace
}  // namespace keel::host
