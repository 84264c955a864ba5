// AdminHttpServer over real sockets on 127.0.0.1: routing, the answers'
// headers, the refusals and their limits, keep-alive, pipelining, requests
// split into single bytes, handler failures, binding errors, stop() and the
// idle deadline. Every wait on the server is bounded (kWait), so a missing
// answer fails the test instead of hanging it.

#include "common/admin_http.h"
#include "common/http_text.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

#include <asio.hpp>
#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>

namespace keel {
namespace {

using namespace std::chrono_literals;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

constexpr auto kWait = 5s;  // the longest any test waits for the server

// One answer; status 0: the connection closed (or the wait ran out) first.
struct Reply {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// A blocking HTTP/1.1 client on one connection. Reads wait with poll(),
// bounded by kWait: Asio's blocking reads ignore SO_RCVTIMEO.
class Client {
 public:
  explicit Client(unsigned port) : sock_(io_) {
    sock_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
    sock_.set_option(tcp::no_delay(true));  // each write its own segment
  }
  void send(const std::string& bytes) {
    std::error_code ec;
    asio::write(sock_, asio::buffer(bytes), ec);
  }
  // One byte per write, each its own TCP segment.
  void sendSlowly(const std::string& bytes) {
    for (char c : bytes) {
      send(std::string(1, c));
      std::this_thread::sleep_for(1ms);
    }
  }
  Reply ask(const std::string& request, bool head = false) {
    send(request);
    return read(head);
  }
  Reply get(const std::string& target) { return ask("GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); }
  // Reads one answer; `head`: the answer to a HEAD (no body, whatever
  // Content-Length says).
  Reply read(bool head = false) {
    Reply r;
    std::size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill()) return r;
    }
    std::string text = buf_.substr(0, end + 2);
    buf_.erase(0, end + 4);
    std::size_t nl = text.find("\r\n");
    std::string statusLine = text.substr(0, nl);
    EXPECT_EQ(statusLine.rfind("HTTP/1.1 ", 0), 0u) << statusLine;
    r.status = std::stoi(statusLine.substr(9, 3));
    for (std::size_t at = nl + 2; at < text.size();) {
      std::size_t next = text.find("\r\n", at);
      std::string line = text.substr(at, next - at);
      std::size_t colon = line.find(": ");
      std::string name = line.substr(0, colon);
      for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
      EXPECT_EQ(r.headers.count(name), 0u) << "repeated header " << name;
      r.headers[name] = line.substr(colon + 2);
      at = next + 2;
    }
    std::size_t len = head || r.headers.count("content-length") == 0 ? 0 : std::stoul(r.headers["content-length"]);
    while (buf_.size() < len) {
      if (!fill()) {
        ADD_FAILURE() << "the body ended early";
        break;
      }
    }
    r.body = buf_.substr(0, len);
    buf_.erase(0, std::min(len, buf_.size()));
    return r;
  }
  // True once the server has closed the connection (EOF or reset, with no
  // more bytes), within kWait.
  bool closedByServer() {
    while (fill()) {
    }
    return eof_;
  }
  bool unread() const { return !buf_.empty(); }

 private:
  // Appends what arrives within kWait; false on EOF, reset or timeout.
  bool fill() {
    pollfd p{sock_.native_handle(), POLLIN, 0};
    if (::poll(&p, 1, int(std::chrono::milliseconds(kWait).count())) <= 0) return false;
    char chunk[16384];
    std::error_code ec;
    std::size_t n = sock_.read_some(asio::buffer(chunk), ec);
    if (ec || n == 0) {
      eof_ = true;
      return false;
    }
    buf_.append(chunk, n);
    return true;
  }
  asio::io_context io_;
  tcp::socket sock_;
  std::string buf_;
  bool eof_ = false;
};

std::string get(const std::string& target, const std::string& extra = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + "\r\n";
}
std::string post(const std::string& target, const std::string& body) {
  return "POST " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
         body;
}

void expectAnswer(const Reply& r, int status, const std::string& body) {
  EXPECT_EQ(r.status, status) << r.body;
  EXPECT_EQ(r.body, body);
}
void expectJson(const Reply& r, int status, const std::string& body) {
  expectAnswer(r, status, body);
  EXPECT_EQ(r.header("content-type"), "application/json");
}

// A server on 127.0.0.1:<any> with a few routes, started.
class AdminHttp : public ::testing::Test {
 protected:
  void SetUp() override { serve(AdminHttpServer::Limits{}); }
  void serve(AdminHttpServer::Limits limits) {
    server_.reset();
    server_ = std::make_unique<AdminHttpServer>("127.0.0.1:0", limits);
    server_->route("GET", "/hello", [this](const HttpRequest& req) {
      handlerThread_ = std::this_thread::get_id();
      auto r = HttpResponse::text(200, "text/plain; charset=utf-8", "hello " + req.method);
      r.headers.emplace_back("X-Keel", "yes");
      return r;
    });
    server_->route("GET", "/api/query", [](const HttpRequest& req) {
      std::string o;
      for (const auto& [k, v] : req.query) o += "[" + k + "=" + v + "]";
      o += " seq=" + req.param("seq").value_or("-") + " missing=" + req.param("nope").value_or("-");
      return HttpResponse::json(200, "{\"q\":\"" + o + "\",\"path\":\"" + req.path + "\"}");
    });
    server_->route("POST", "/echo", [](const HttpRequest& req) {
      return HttpResponse::json(201, "{\"got\":\"" + req.body + "\",\"type\":\"" + req.headers.at("host") + "\"}");
    });
    server_->route("GET", "/echo", [](const HttpRequest&) { return HttpResponse::json(200, "{}"); });
    server_->route("GET", "/boom",
                   [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("kaboom \"quoted\""); });
    server_->route("GET", "/static/exact", [](const HttpRequest&) { return HttpResponse::json(200, "\"exact\""); });
    server_->routePrefix("GET", "/static/", [](const HttpRequest& req) {
      return HttpResponse::text(200, "text/plain", "prefix " + req.path);
    });
    server_->start();
  }
  unsigned port() const { return server_->port(); }

  std::unique_ptr<AdminHttpServer> server_;
  std::thread::id handlerThread_;
};

TEST(HttpText, HeaderTokensIgnoreCaseAndTheWhiteSpaceAroundThem) {
  EXPECT_EQ(http::trimOws(" \tkeep-alive \t"), "keep-alive");
  EXPECT_EQ(http::trimOws("   "), "");
  EXPECT_TRUE(http::hasToken("Keep-Alive, Upgrade", "keep-alive"));
  EXPECT_TRUE(http::hasToken("upgrade ,\tCLOSE", "close"));
  EXPECT_FALSE(http::hasToken("closed, keep-alive", "close"));  // whole elements only
  EXPECT_FALSE(http::hasToken("", "close"));
  EXPECT_FALSE(http::hasToken(",,", "close"));
  EXPECT_TRUE(http::tokenEquals("Content-Length", "content-length"));
  EXPECT_FALSE(http::tokenEquals("Content-Length", "content-lengths"));
}

TEST(AdminHttpTypes, ErrorJsonAndParam) {
  EXPECT_EQ(HttpResponse::error(404, "no such path: /a\"b\\c\n").body,
            "{\"error\":\"no such path: /a\\\"b\\\\c\\n\",\"status\":404}");
  HttpRequest req;
  req.query = {{"a", "1"}, {"b", ""}, {"a", "2"}};
  EXPECT_EQ(req.param("a"), "1");
  EXPECT_EQ(req.param("b"), "");
  EXPECT_EQ(req.param("c"), std::nullopt);
}

TEST_F(AdminHttp, GetRouteAnswersWithBodyAndHeaders) {
  Client c(port());
  Reply r = c.get("/hello");
  expectAnswer(r, 200, "hello GET");
  EXPECT_EQ(r.header("content-type"), "text/plain; charset=utf-8");
  EXPECT_EQ(r.header("content-length"), "9");
  EXPECT_EQ(r.header("cache-control"), "no-store");
  EXPECT_EQ(r.header("x-content-type-options"), "nosniff");
  EXPECT_EQ(r.header("x-keel"), "yes");
  EXPECT_NE(r.header("date"), "");
  EXPECT_EQ(r.header("connection"), "");  // kept alive
  // The handler ran on the server's thread.
  EXPECT_NE(handlerThread_, std::thread::id());
  EXPECT_NE(handlerThread_, std::this_thread::get_id());
  EXPECT_EQ(server_->bound(), "127.0.0.1:" + std::to_string(port()));
}

TEST_F(AdminHttp, HeadOnGetRouteHasHeadersWithoutBody) {
  Client c(port());
  Reply r = c.ask("HEAD /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", true);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-length"), "10");  // "hello HEAD", not sent
  EXPECT_EQ(r.body, "");
  // No stray body bytes before the next answer.
  expectAnswer(c.get("/hello"), 200, "hello GET");
}

TEST_F(AdminHttp, QueryParametersDecoded) {
  Client c(port());
  expectJson(c.get("/api/query?seq=5&request_id=a%20b&plus=x+y&flag&&empty="), 200,
             "{\"q\":\"[seq=5][request_id=a b][plus=x y][flag=][empty=] seq=5 missing=-\",\"path\":\"/api/query\"}");
  // The path is percent-decoded too; '+' stays '+' there.
  expectAnswer(c.get("/api/%71uery?seq=%2B"), 200, "{\"q\":\"[seq=+] seq=+ missing=-\",\"path\":\"/api/query\"}");
}

TEST_F(AdminHttp, UnknownPathIs404Json) {
  Client c(port());
  expectJson(c.get("/x"), 404, "{\"error\":\"no such path: /x\",\"status\":404}");
  // The decoded path is escaped in the JSON.
  expectAnswer(c.get("/x%22%5C%0Ay"), 404, "{\"error\":\"no such path: /x\\\"\\\\\\ny\",\"status\":404}");
  // Still the same connection: a 404 does not close it.
  EXPECT_EQ(c.get("/hello").status, 200);
}

TEST_F(AdminHttp, HostMustBeAnAddressLocalhostOrAListedName) {
  Client c(port());
  for (const char* ok : {"127.0.0.1", "127.0.0.1:9400", "[::1]:9400", "localhost", "LOCALHOST:1"}) {
    EXPECT_EQ(c.ask(std::string("GET /hello HTTP/1.1\r\nHost: ") + ok + "\r\n\r\n").status, 200) << ok;
  }
  Reply r = c.ask("GET /hello HTTP/1.1\r\nHost: evil.example:9400\r\n\r\n");
  EXPECT_EQ(r.status, 403);
  EXPECT_NE(r.body.find("DNS rebinding"), std::string::npos) << r.body;
  // No Host at all (HTTP/1.0): allowed, browsers always send one.
  Client old(port());
  EXPECT_EQ(old.ask("GET /hello HTTP/1.0\r\n\r\n").status, 200);
}

TEST(AdminHttpHosts, ANameListedInLimitsIsServed) {
  AdminHttpServer::Limits limits;
  limits.hosts = {"keel-admin.example"};
  AdminHttpServer s("127.0.0.1:0", limits);
  s.route("GET", "/hello", [](const HttpRequest&) { return HttpResponse::json(200, "{}"); });
  s.start();
  Client c(s.port());
  EXPECT_EQ(c.ask("GET /hello HTTP/1.1\r\nHost: Keel-Admin.example:1\r\n\r\n").status, 200);
  EXPECT_EQ(c.ask("GET /hello HTTP/1.1\r\nHost: other.example\r\n\r\n").status, 403);
  s.stop();
}

TEST_F(AdminHttp, WrongMethodIs405WithAllow) {
  Client c(port());
  Reply r = c.ask(post("/hello", "x"));
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("allow"), "GET, HEAD");
  EXPECT_EQ(r.body, "{\"error\":\"method POST not allowed on /hello\",\"status\":405}");
  Reply d = c.ask("DELETE /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  EXPECT_EQ(d.status, 405);
  EXPECT_EQ(d.header("allow"), "GET, HEAD, POST");
}

TEST_F(AdminHttp, PrefixRoutesAfterExactOnes) {
  Client c(port());
  expectAnswer(c.get("/static/app%20x.js"), 200, "prefix /static/app x.js");
  EXPECT_EQ(c.get("/static/exact").body, "\"exact\"");
  EXPECT_EQ(c.get("/static").status, 404);
  Reply m = c.ask(post("/static/a", ""));
  EXPECT_EQ(m.status, 405);
  EXPECT_EQ(m.header("allow"), "GET, HEAD");
}

TEST_F(AdminHttp, MalformedRequestLineIs400AndCloses) {
  for (std::string bad :
       {"GARBAGE\r\n\r\n", "GET /hello\r\n\r\n", "GET  /hello HTTP/1.1\r\n\r\n", "GET /hello HTTP/1.1 x\r\n\r\n",
        "GET /hello HTTX/1.1\r\n\r\n", "G(T /hello HTTP/1.1\r\n\r\n", "GET hello HTTP/1.1\r\n\r\n"}) {
    Client c(port());
    Reply r = c.ask(bad);
    EXPECT_EQ(r.status, 400) << bad;
    EXPECT_NE(r.body.find("\"status\":400"), std::string::npos) << r.body;
    EXPECT_EQ(r.header("connection"), "close");
    EXPECT_TRUE(c.closedByServer()) << bad;
  }
  Client v(port());
  EXPECT_EQ(v.ask("GET /hello HTTP/2.0\r\n\r\n").status, 505);
}

TEST_F(AdminHttp, MalformedHeadersAre400) {
  for (std::string bad :
       {"Host t\r\n", "Host : t\r\n", " folded: x\r\n",
        "X-A: a\x01"
        "b\r\n",
        "Content-Length: abc\r\n", "Content-Length: -1\r\n", "Content-Length: 1\r\nContent-Length: 2\r\n"}) {
    Client c(port());
    Reply r = c.ask("GET /hello HTTP/1.1\r\n" + bad + "\r\n");
    EXPECT_EQ(r.status, 400) << bad;
    EXPECT_TRUE(c.closedByServer()) << bad;
  }
  Client n(port());
  Reply r = n.ask("POST /echo HTTP/1.1\r\nContent-Length: 12x\r\n\r\n");
  EXPECT_EQ(r.body, "{\"error\":\"Content-Length is not a number: 12x\",\"status\":400}");
}

TEST_F(AdminHttp, BadPercentEscapeIs400) {
  for (std::string target : {"/hello%zz", "/hello%4", "/api/query?seq=%g1", "/hello%00"}) {
    Client c(port());
    Reply r = c.get(target);
    EXPECT_EQ(r.status, 400) << target;
    EXPECT_TRUE(r.body.find("percent escape") != std::string::npos || r.body.find("NUL") != std::string::npos)
        << r.body;
    EXPECT_TRUE(c.closedByServer());
  }
}

TEST_F(AdminHttp, LongTargetIs414) {
  Client c(port());
  expectAnswer(c.get("/" + std::string(5000, 'a')), 414,
               "{\"error\":\"request target over 4096 bytes\",\"status\":414}");
  EXPECT_TRUE(c.closedByServer());
  // At the limit it is served (here: no such path).
  Client ok(port());
  EXPECT_EQ(ok.get("/" + std::string(4095, 'a')).status, 404);
}

TEST_F(AdminHttp, OversizedHeadersAre431) {
  Client c(port());
  Reply r = c.ask(get("/hello", "X-Big: " + std::string(20000, 'b') + "\r\n"));
  EXPECT_EQ(r.status, 431);
  EXPECT_NE(r.body.find("16384"), std::string::npos) << r.body;
  EXPECT_TRUE(c.closedByServer());
  // Many small headers count the same.
  std::string many;
  for (int i = 0; i < 1000; ++i) many += "X-H" + std::to_string(i) + ": vvvvvvvvvv\r\n";
  Client m(port());
  EXPECT_EQ(m.ask(get("/hello", many)).status, 431);
}

TEST_F(AdminHttp, LargeContentLengthIs413) {
  Client c(port());
  Reply r = c.ask("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n");
  expectAnswer(r, 413, "{\"error\":\"body of 1000000 bytes over the limit of 65536\",\"status\":413}");
  EXPECT_TRUE(c.closedByServer());
  Client huge(port());
  EXPECT_EQ(huge.ask("POST /echo HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n").status, 413);
  // The client sending the body anyway still reads the answer (no reset).
  Client eager(port());
  Reply e = eager.ask("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200000\r\n\r\n" + std::string(200000, 'z'));
  EXPECT_EQ(e.status, 413);
}

TEST_F(AdminHttp, ChunkedBodyIs411) {
  Client c(port());
  Reply r = c.ask("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  EXPECT_EQ(r.status, 411);
  EXPECT_TRUE(c.closedByServer());
}

TEST_F(AdminHttp, PostRouteGetsItsBody) {
  Client c(port());
  Reply r = c.ask(post("/echo", "payload 1"));
  expectAnswer(r, 201, "{\"got\":\"payload 1\",\"type\":\"127.0.0.1\"}");
  // Expect: 100-continue: the body follows the server's go-ahead.
  c.send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
  Reply go = c.read();
  EXPECT_EQ(go.status, 100);
  c.send("abcd");
  Reply after = c.read();
  expectAnswer(after, 201, "{\"got\":\"abcd\",\"type\":\"127.0.0.1\"}");
}

TEST_F(AdminHttp, KeepAliveServesSeveralRequestsOnOneConnection) {
  Client c(port());
  EXPECT_EQ(c.get("/hello").body, "hello GET");
  EXPECT_EQ(c.ask(post("/echo", "2")).status, 201);
  EXPECT_EQ(c.get("/hello").body, "hello GET");
  // Connection: close ends it after the answer.
  Reply last = c.ask(get("/hello", "Connection: keep-alive, Close\r\n"));
  EXPECT_EQ(last.status, 200);
  EXPECT_EQ(last.header("connection"), "close");
  EXPECT_TRUE(c.closedByServer());
}

TEST_F(AdminHttp, Http10ClosesAfterTheAnswer) {
  Client c(port());
  Reply r = c.ask("GET /hello HTTP/1.0\r\n\r\n");
  expectAnswer(r, 200, "hello GET");
  EXPECT_EQ(r.header("connection"), "close");
  EXPECT_TRUE(c.closedByServer());
}

TEST_F(AdminHttp, PipelinedRequestsAnsweredInOrder) {
  Client c(port());
  c.send(get("/hello") + post("/echo", "second") + get("/nope") + get("/api/query?seq=4"));
  EXPECT_EQ(c.read().body, "hello GET");
  EXPECT_EQ(c.read().body, "{\"got\":\"second\",\"type\":\"127.0.0.1\"}");
  EXPECT_EQ(c.read().status, 404);
  Reply fourth = c.read();
  EXPECT_EQ(fourth.status, 200);
  EXPECT_NE(fourth.body.find("seq=4"), std::string::npos);
  EXPECT_FALSE(c.unread());
}

TEST_F(AdminHttp, RequestDribbledOneByteAtATime) {
  Client c(port());
  c.sendSlowly("\r\n" + post("/echo", "slow body") + get("/api/query?seq=1"));
  EXPECT_EQ(c.read().body, "{\"got\":\"slow body\",\"type\":\"127.0.0.1\"}");
  EXPECT_NE(c.read().body.find("seq=1"), std::string::npos);
}

TEST_F(AdminHttp, ThrowingHandlerIs500AndServerGoesOn) {
  Client c(port());
  expectAnswer(c.get("/boom"), 500, "{\"error\":\"kaboom \\\"quoted\\\"\",\"status\":500}");
  EXPECT_EQ(c.get("/hello").status, 200);
  Client other(port());
  EXPECT_EQ(other.get("/hello").status, 200);
}

TEST_F(AdminHttp, BadHandlerAnswersAre500) {
  auto s = std::make_unique<AdminHttpServer>("127.0.0.1:0");
  s->route("GET", "/inject", [](const HttpRequest&) {
    auto r = HttpResponse::json(200, "{}");
    r.headers.emplace_back("X-A", "a\r\nSet-Cookie: x=1");
    return r;
  });
  s->route("GET", "/status", [](const HttpRequest&) { return HttpResponse::json(99, "{}"); });
  s->route("GET", "/framing", [](const HttpRequest&) {
    auto r = HttpResponse::json(200, "{}");
    r.headers.emplace_back("Content-Length", "999");
    return r;
  });
  s->start();
  Client c(s->port());
  Reply inj = c.get("/inject");
  EXPECT_EQ(inj.status, 500);
  EXPECT_EQ(inj.header("set-cookie"), "");
  EXPECT_EQ(c.get("/status").status, 500);
  Reply f = c.get("/framing");  // the handler's Content-Length is dropped, not sent twice
  EXPECT_EQ(f.status, 200);
  EXPECT_EQ(f.header("content-length"), "2");
  EXPECT_EQ(f.body, "{}");
}

TEST_F(AdminHttp, ConnectionsBeyondTheLimitAreRefused) {
  AdminHttpServer::Limits limits;
  limits.maxConnections = 2;
  serve(limits);
  auto a = std::make_unique<Client>(port());
  Client b(port());
  EXPECT_EQ(a->get("/hello").status, 200);
  EXPECT_EQ(b.get("/hello").status, 200);
  {
    Client over(port());
    Reply r = over.read();
    EXPECT_TRUE(r.status == 503 || r.status == 0) << r.status;
    EXPECT_TRUE(over.closedByServer());
  }
  // One closes: a new connection is served again (once the server saw the close).
  a.reset();
  auto until = Clock::now() + kWait;
  int status = 0;
  while (status != 200 && Clock::now() < until) {
    Client again(port());
    status = again.get("/hello").status;
    if (status != 200) std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(status, 200);
}

TEST_F(AdminHttp, IdleConnectionClosed) {
  AdminHttpServer::Limits limits;
  limits.idle = 200ms;
  serve(limits);
  Client silent(port());
  auto t0 = Clock::now();
  EXPECT_TRUE(silent.closedByServer());
  auto took = Clock::now() - t0;
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 3s);
  // Bytes dribbled in do not extend the deadline: a whole request is due in time.
  Client slow(port());
  t0 = Clock::now();
  slow.send("GET /hel");
  std::this_thread::sleep_for(100ms);
  slow.send("lo HTTP/1.1\r\n");
  EXPECT_TRUE(slow.closedByServer());
  EXPECT_LT(Clock::now() - t0, 3s);
  // After an answer the deadline starts again.
  Client kept(port());
  EXPECT_EQ(kept.get("/hello").status, 200);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(kept.get("/hello").status, 200);
  EXPECT_TRUE(kept.closedByServer());
}

TEST_F(AdminHttp, StopClosesConnectionsAndReturnsQuickly) {
  Client open(port());
  EXPECT_EQ(open.get("/hello").status, 200);
  Client silent(port());
  auto t0 = Clock::now();
  server_->stop();
  EXPECT_LT(Clock::now() - t0, 2s);
  EXPECT_TRUE(open.closedByServer());
  EXPECT_TRUE(silent.closedByServer());
  server_->stop();                                                              // idempotent
  EXPECT_EQ(server_->bound(), "127.0.0.1:" + std::to_string(server_->port()));  // still names the address
  t0 = Clock::now();
  server_.reset();
  EXPECT_LT(Clock::now() - t0, 1s);
}

TEST(AdminHttpLifetime, DestructorWithoutStartDoesNotHang) {
  auto t0 = Clock::now();
  {
    AdminHttpServer s("127.0.0.1:0");
    EXPECT_GT(s.port(), 0u);
  }
  {
    AdminHttpServer s("127.0.0.1:0");
    s.stop();
    s.start();  // after stop(): nothing
  }
  EXPECT_LT(Clock::now() - t0, 1s);
}

TEST_F(AdminHttp, RoutesAfterStartAreRefused) {
  EXPECT_THROW(server_->route("GET", "/late", [](const HttpRequest&) { return HttpResponse::json(200, "{}"); }),
               std::logic_error);
  EXPECT_THROW(server_->routePrefix("GET", "/late/", [](const HttpRequest&) { return HttpResponse::json(200, "{}"); }),
               std::logic_error);
  Client c(port());
  EXPECT_EQ(c.get("/late").status, 404);
}

TEST(AdminHttpLifetime, StopFromAHandler) {
  AdminHttpServer s("127.0.0.1:0");
  s.route("GET", "/stop", [&s](const HttpRequest&) {
    s.stop();  // cannot join its own thread: closes everything, the destructor joins
    return HttpResponse::json(200, "{}");
  });
  s.start();
  Client c(s.port());
  c.send(get("/stop"));
  c.closedByServer();  // the answer may or may not make it out before the close
}

TEST(AdminHttpLifetime, ConnectionsWaitInTheBacklogUntilStart) {
  AdminHttpServer s("127.0.0.1:0");
  s.route("GET", "/x", [](const HttpRequest&) { return HttpResponse::json(200, "\"x\""); });
  Client early(s.port());
  early.send(get("/x"));
  s.start();
  EXPECT_EQ(early.read().body, "\"x\"");
}

TEST(AdminHttpBind, PortInUseThrows) {
  AdminHttpServer first("127.0.0.1:0");
  try {
    AdminHttpServer second(first.bound());
    FAIL() << "bound a port in use";
  } catch (const AdminListenError& e) {
    EXPECT_EQ(std::string(e.what()), "admin_listen " + first.bound() + ": address already in use");
  }
  // Another program's socket (with SO_REUSEADDR as well) listening.
  asio::io_context io;
  tcp::acceptor other(io);
  other.open(tcp::v4());
  other.set_option(tcp::acceptor::reuse_address(true));
  other.bind(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  other.listen();
  std::string taken = "127.0.0.1:" + std::to_string(other.local_endpoint().port());
  try {
    AdminHttpServer s(taken);
    FAIL() << "bound a port in use";
  } catch (const AdminListenError& e) {
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(taken), std::string::npos) << e.what();
  }
}

TEST(AdminHttpBind, BadAddressesThrow) {
  for (std::string bad : {"", "9400", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:80a", "300.1.1.1:80",
                          "example.com:80", "::1:9400", "[::1]", "[::1]9400", "[nope]:80", ":9400", "1.2.3:80"}) {
    try {
      AdminHttpServer s(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const AdminListenError& e) {
      EXPECT_EQ(std::string(e.what()).rfind("admin_listen " + bad + ": ", 0), 0u) << e.what();
    }
  }
  // Not an address of this host.
  EXPECT_THROW(AdminHttpServer("192.0.2.1:0"), AdminListenError);
}

TEST(AdminHttpBind, LocalhostAndIpv6) {
  AdminHttpServer local("localhost:0");
  EXPECT_EQ(local.bound(), "127.0.0.1:" + std::to_string(local.port()));
  std::unique_ptr<AdminHttpServer> v6;
  try {
    v6 = std::make_unique<AdminHttpServer>("[::1]:0");
  } catch (const AdminListenError& e) {
    GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
  }
  EXPECT_EQ(v6->bound(), "[::1]:" + std::to_string(v6->port()));
}

TEST(AdminHttpBind, PrivilegedPortThrows) {
  int unprivileged = 1024;
  std::ifstream("/proc/sys/net/ipv4/ip_unprivileged_port_start") >> unprivileged;
  if (unprivileged <= 1) GTEST_SKIP() << "this machine opens every port to every user";
  // As root (CI), the bind is tried in a child that gave up root first.
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(3);
    try {
      AdminHttpServer s("127.0.0.1:1");
      ::_exit(1);  // bound port 1
    } catch (const AdminListenError& e) {
      ::_exit(std::string(e.what()).find("permission denied") != std::string::npos ? 0 : 2);
    } catch (...) {
      ::_exit(4);
    }
  }
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0) << "1: port 1 was bound; 2: the error did not say permission denied; 3: setuid failed";
}

}  // namespace
}  // namespace keel
