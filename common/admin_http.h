#pragma once
// AdminHttpServer: the small HTTP/1.1 server of Keel's admin plane
// (Prometheus /metrics, the JSON API, the console), on standalone Asio.
//
// It runs on its own thread with its own io_context, apart from the
// process's KJ event loop: a slow scrape or a stuck admin client never
// delays a transaction, and a busy transaction loop never makes /metrics
// time out. Handlers run on that thread, one at a time; what they read of
// the rest of the process must be safe to read from another thread.
//
// The address is bound in the constructor, before the process starts
// anything else, so a taken or mistyped admin_listen refuses the start
// (AdminListenError) instead of leaving a server without its admin plane.
//
// What it accepts: HTTP/1.1 and HTTP/1.0 requests with a Content-Length body
// (or none), keep-alive on HTTP/1.1 unless "Connection: close" (HTTP/1.0
// always closes), pipelined requests answered in order, one at a time.
// What it refuses itself, with a JSON error ({"error":...,"status":...}):
//   400  a malformed request line or header line, a bad percent escape, a
//        Content-Length that is not a number            (then closes)
//   404  no route for the path
//   405  a route for the path, not for the method (with Allow)
//   411  Transfer-Encoding (chunked bodies)              (then closes)
//   413  Content-Length over Limits::maxBody             (then closes)
//   414  a request target over Limits::maxTarget         (then closes)
//   417  an Expect other than 100-continue               (then closes)
//   431  request line and headers over maxHeaderBytes    (then closes)
//   500  the handler threw (the message is its what())
//   503  past Limits::maxConnections (best effort, then closes at once)
//   505  an HTTP version other than 1.x                  (then closes)
// A request the server cannot frame leaves the stream unusable, hence the
// closes; after such an answer the server reads (and drops) what the client
// still sends for a moment before closing, so the client's kernel does not
// reset the connection before the client has read the answer.
//
// Every answer carries Content-Length, Content-Type, Date,
// "Cache-Control: no-store" (admin data is live, never to be cached by a
// proxy) and "X-Content-Type-Options: nosniff" (a browser must not guess
// that a JSON error with a path in it is HTML).
//
// Deadlines (Limits::idle): a connection must deliver a whole request within
// `idle` of the previous answer (or of its accept), and take each answer
// within `idle`; bytes dribbled in do not extend it, so a slow client cannot
// hold a connection forever.
//
// Threads: route()/routePrefix() before start() only (after it they throw
// std::logic_error); stop() and the destructor from any thread but the
// server's. stop() from a handler closes everything but cannot join its own
// thread: the destructor, on another thread, joins it.

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keel {

struct HttpRequest {
  std::string method;  // "GET", "POST", ... (as sent; HEAD reaches a GET route as "HEAD")
  std::string target;  // raw request target as sent ("/api/query?seq=5")
  std::string path;    // percent-decoded path without the query ("/api/query")
  std::vector<std::pair<std::string, std::string>> query;  // decoded query parameters in order ("+" = space)
  std::map<std::string, std::string> headers;              // names lower-cased; repeated headers joined with ", "
  std::string body;
  std::string peer;  // the client's address, "ip:port" (who asked, for an audit entry)
  // First value of query parameter `name`, or nullopt.
  std::optional<std::string> param(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string contentType = "application/json";
  std::string body;
  // Extra headers. Content-Length, Transfer-Encoding and Connection are the
  // server's (they frame the stream) and are dropped if set here; a name or
  // value with CR, LF or NUL turns the answer into a 500.
  std::vector<std::pair<std::string, std::string>> headers;
  static HttpResponse json(int status, std::string body);
  static HttpResponse text(int status, std::string contentType, std::string body);
  // {"error":"<message, JSON-escaped>","status":<status>}
  static HttpResponse error(int status, const std::string& message);
};

// The admin address could not be bound (in use, not an address, no
// permission). what() names the address and why, e.g.
// "admin_listen 127.0.0.1:9400: address already in use".
class AdminListenError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class AdminHttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  struct Limits {
    std::size_t maxTarget = 4096;           // longer request target -> 414
    std::size_t maxHeaderBytes = 16384;     // request line + headers larger -> 431
    std::size_t maxBody = 65536;            // Content-Length larger -> 413 (chunked request bodies -> 411)
    std::size_t maxConnections = 64;        // beyond: 503 (best effort) and close at once
    std::chrono::milliseconds idle{10000};  // a connection silent this long (no complete request) is closed
    // Host names (lower case, without port) a request's Host header may
    // carry besides an IP address and localhost; any other name is refused
    // with 403. A browser sends the name it resolved, so a page of another
    // site whose name was made to resolve to this address (DNS rebinding)
    // says its own name here and is refused.
    std::vector<std::string> hosts;
  };

  // Binds `listen` ("host:port", IPv4, "[v6]:port" or "localhost:port",
  // which is 127.0.0.1; port 0 = any) NOW, before anything else of the
  // process starts, and throws AdminListenError if it cannot: not an
  // address (a host name other than localhost included: no resolver is
  // asked), in use, or not permitted. Serves nothing until start();
  // connections made before wait in the kernel's backlog.
  AdminHttpServer(const std::string& listen, Limits limits);
  explicit AdminHttpServer(const std::string& listen) : AdminHttpServer(listen, Limits{}) {}
  ~AdminHttpServer();  // stop()
  AdminHttpServer(const AdminHttpServer&) = delete;
  AdminHttpServer& operator=(const AdminHttpServer&) = delete;

  // "host:port" of the bound socket with its port (e.g. "127.0.0.1:41234",
  // "[::1]:41234"; "localhost:0" gives "127.0.0.1:<port>").
  std::string bound() const;
  unsigned port() const;

  // Exact-path routes; register before start() (std::logic_error after). Same path with another
  // method -> 405 with an Allow header. A GET route also answers HEAD.
  void route(const std::string& method, const std::string& path, Handler h);
  // A route for every path that starts with `prefix` (e.g. "/static/"),
  // checked after exact routes; the longest matching prefix wins.
  void routePrefix(const std::string& method, const std::string& prefix, Handler h);

  // Starts the server's own thread (one asio::io_context). Handlers run on
  // that thread, one at a time. A second start(), or one after stop(), does
  // nothing.
  void start();
  // Stops accepting, closes connections, joins the thread. Idempotent.
  void stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel
