#pragma once
// HttpServer: the small HTTP/1.1 server keel-host answers on, standalone
// Asio, everything on one io_context thread.
//
// What it accepts: requests with a Content-Length body (or none), keep-alive
// (HTTP/1.1 by default, HTTP/1.0 with "Connection: keep-alive"), one request
// at a time per connection (a pipelined request waits in the buffer until
// the previous one is answered). What it refuses itself, answering and then
// closing the connection (a request it cannot frame leaves the stream
// unusable):
//   400  a malformed request line or header line
//   411  a POST without Content-Length, or any Transfer-Encoding (chunked)
//   413  a body over Limits::maxBody
//   431  a header block over Limits::maxHeader
// Everything else goes to the HttpHandler, which answers each request
// exactly once through its HttpReply: send (after an optional delay) or
// drop (close without answering). Every answer carries Content-Type:
// application/json and Content-Length. A connection idle for
// Limits::idle is closed; past Limits::maxConnections a new connection is
// closed at once.
//
// Threads: everything runs on the io_context's thread; HttpReply is
// called there too (post to the io_context from elsewhere).

#include <asio.hpp>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "tools/host/host_books.h"  // Answer

namespace keel::host {

struct HttpRequest {
  std::string method;
  std::string path;  // the target without its query string
  std::string body;
};

class HttpConnection;

// How the handler answers one request; copyable, to be used once.
class HttpReply {
 public:
  explicit HttpReply(std::shared_ptr<HttpConnection> c) : conn_(std::move(c)) {}
  void send(Answer a, std::chrono::milliseconds delay = std::chrono::milliseconds(0));
  void drop();  // close the connection without answering

 private:
  std::shared_ptr<HttpConnection> conn_;
};

class HttpHandler {
 public:
  virtual ~HttpHandler() = default;
  virtual void handle(HttpRequest req, HttpReply reply) = 0;
};

class HttpServer {
 public:
  struct Limits {
    std::size_t maxBody = 65536;
    std::size_t maxHeader = 16384;
    std::size_t maxConnections = 1024;
    std::chrono::milliseconds idle{60000};
  };

  HttpServer(asio::io_context& io, HttpHandler& handler, Limits limits);
  ~HttpServer();
  // Binds and listens on "host:port" (port 0: any free port); returns the
  // bound port. Throws std::runtime_error naming the address.
  unsigned bind(const std::string& hostPort);
  void startAccepting();
  void stop();  // stops accepting; open connections end with the io_context

 private:
  void acceptNext();

  asio::io_context& io_;
  HttpHandler& handler_;
  const Limits limits_;
  asio::ip::tcp::acceptor acceptor_;
  asio::steady_timer acceptRetry_;  // after a failed accept (out of descriptors): not a busy loop
  std::shared_ptr<std::size_t> open_ = std::make_shared<std::size_t>(0);  // live connections
};

// {"error":"<why>"} with `status`: every answer that is not the contract's.
Answer jsonError(int status, const std::string& why);

// "OK", "Not Found", ... for the status line.
const char* reasonPhrase(int status);

}  // namespace keel::host
