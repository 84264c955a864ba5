#include "tools/host/host_http.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <optional>
#include <stdexcept>
#include <string_view>

#include "common/http_text.h"
#include "common/records.h"  // jsonEscape

namespace keel::host {

using asio::ip::tcp;

namespace {

// One request's head, or the answer that refuses it.
struct Head {
  HttpRequest req;
  std::optional<std::size_t> contentLength;
  bool keepAlive = true;
  std::optional<Answer> refusal;  // answered, then the connection closed
};

Head parseHead(std::string_view head, std::size_t maxBody) {
  Head h;
  auto eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  std::string_view rest = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);

  // METHOD SP target SP HTTP/1.x
  auto sp1 = line.find(' ');
  auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  std::string_view version = sp2 == std::string_view::npos ? std::string_view() : line.substr(sp2 + 1);
  if (sp2 == std::string_view::npos || sp1 == 0 || version.find(' ') != std::string_view::npos ||
      line.substr(sp1 + 1, 1) != "/" || (version != "HTTP/1.1" && version != "HTTP/1.0") ||
      !std::all_of(line.begin(), line.begin() + sp1, [](char c) { return c >= 'A' && c <= 'Z'; })) {
    h.refusal = jsonError(400, "malformed request line (expected 'METHOD /path HTTP/1.1')");
    return h;
  }
  h.req.method = std::string(line.substr(0, sp1));
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  h.req.path = std::string(target.substr(0, target.find('?')));
  h.keepAlive = version == "HTTP/1.1";

  bool chunked = false;
  while (!rest.empty()) {
    eol = rest.find("\r\n");
    std::string_view field = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 2);
    auto colon = field.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      h.refusal = jsonError(400, "malformed header line (expected 'Name: value')");
      return h;
    }
    std::string_view name = field.substr(0, colon), value = http::trimOws(field.substr(colon + 1));
    if (http::tokenEquals(name, "Content-Length")) {
      std::size_t n = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc() || end != value.data() + value.size() || value.empty() ||
          (h.contentLength && *h.contentLength != n)) {
        h.refusal = jsonError(ec == std::errc::result_out_of_range ? 413 : 400, "bad Content-Length");
        return h;
      }
      h.contentLength = n;
    } else if (http::tokenEquals(name, "Transfer-Encoding")) {
      chunked = true;
    } else if (http::tokenEquals(name, "Connection")) {
      if (http::hasToken(value, "close")) h.keepAlive = false;
      if (http::hasToken(value, "keep-alive")) h.keepAlive = true;
    }
  }
  if (chunked) {
    h.refusal = jsonError(411, "Transfer-Encoding is not supported: send the body with a Content-Length");
  } else if (h.req.method == "POST" && !h.contentLength) {
    h.refusal = jsonError(411, "a POST needs a Content-Length");
  } else if (h.contentLength.value_or(0) > maxBody) {
    h.refusal = jsonError(
        413, "body of " + std::to_string(*h.contentLength) + " bytes is over the limit of " + std::to_string(maxBody));
  }
  return h;
}

}  // namespace

Answer jsonError(int status, const std::string& why) { return {status, "{\"error\":\"" + jsonEscape(why) + "\"}"}; }

const char* reasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 422: return "Unprocessable Content";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

// One accepted connection; kept alive by the handlers it has pending (and
// by an HttpReply while its request is with the handler).
class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(tcp::socket s, HttpHandler& handler, const HttpServer::Limits& limits,
                 std::shared_ptr<std::size_t> open)
      : sock_(std::move(s)),
        idle_(sock_.get_executor()),
        delay_(sock_.get_executor()),
        handler_(handler),
        limits_(limits),
        open_(std::move(open)) {
    ++*open_;
  }
  ~HttpConnection() { --*open_; }

  void start() { next(); }

  void send(Answer a, std::chrono::milliseconds delay) {
    if (delay.count() <= 0) return write(std::move(a));
    delay_.expires_after(delay);
    delay_.async_wait([self = shared_from_this(), a = std::move(a)](std::error_code ec) mutable {
      if (!ec) self->write(std::move(a));
    });
  }

  void close() {
    std::error_code ec;
    idle_.cancel();
    delay_.cancel();
    sock_.close(ec);
  }

 private:
  // Frames the next request from the buffer, reading more if it is not all
  // there yet.
  void next() {
    auto end = buf_.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (buf_.size() > limits_.maxHeader) return refuse(jsonError(431, "request header over the limit"));
      return readMore();
    }
    if (end + 4 > limits_.maxHeader) return refuse(jsonError(431, "request header over the limit"));
    Head h = parseHead(std::string_view(buf_).substr(0, end), limits_.maxBody);
    if (h.refusal) return refuse(std::move(*h.refusal));
    std::size_t total = end + 4 + h.contentLength.value_or(0);
    if (buf_.size() < total) return readMore();
    h.req.body = buf_.substr(end + 4, total - end - 4);
    buf_.erase(0, total);
    keepAlive_ = h.keepAlive;
    idle_.cancel();  // the handler may take its time (a slow group commit)
    handler_.handle(std::move(h.req), HttpReply(shared_from_this()));
  }

  void readMore() {
    idle_.expires_after(limits_.idle);
    idle_.async_wait([weak = weak_from_this()](std::error_code ec) {
      if (auto self = weak.lock(); self && !ec) self->close();  // idle too long
    });
    sock_.async_read_some(asio::buffer(chunk_), [self = shared_from_this()](std::error_code ec, std::size_t n) {
      if (ec) return self->close();  // the peer closed or reset: nothing to answer
      self->buf_.append(self->chunk_.data(), n);
      self->next();
    });
  }

  // A request that cannot be framed: answer, then close.
  void refuse(Answer a) {
    keepAlive_ = false;
    write(std::move(a));
  }

  void write(Answer a) {
    out_ = "HTTP/1.1 " + std::to_string(a.status) + " " + reasonPhrase(a.status) +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(a.body.size()) + "\r\n" +
           (keepAlive_ ? "" : "Connection: close\r\n") + "\r\n" + a.body;
    asio::async_write(sock_, asio::buffer(out_), [self = shared_from_this()](std::error_code ec, std::size_t) {
      if (ec) return self->close();
      if (!self->keepAlive_) {
        std::error_code ignored;
        self->sock_.shutdown(tcp::socket::shutdown_send, ignored);
        return self->close();
      }
      self->next();  // a pipelined request may be waiting in the buffer
    });
  }

  tcp::socket sock_;
  asio::steady_timer idle_;
  asio::steady_timer delay_;
  HttpHandler& handler_;
  const HttpServer::Limits limits_;  // a copy: a connection may outlive the server by a handler
  std::shared_ptr<std::size_t> open_;
  std::array<char, 16384> chunk_;
  std::string buf_;  // received, not yet framed
  std::string out_;  // the answer being written
  bool keepAlive_ = true;
};

void HttpReply::send(Answer a, std::chrono::milliseconds delay) { conn_->send(std::move(a), delay); }
void HttpReply::drop() { conn_->close(); }

HttpServer::HttpServer(asio::io_context& io, HttpHandler& handler, Limits limits)
    : io_(io), handler_(handler), limits_(limits), acceptor_(io), acceptRetry_(io) {}

HttpServer::~HttpServer() { stop(); }

unsigned HttpServer::bind(const std::string& hostPort) {
  auto colon = hostPort.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("listen address '" + hostPort + "' is not host:port");
  std::string host = hostPort.substr(0, colon), port = hostPort.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::error_code ec;
  tcp::resolver resolver(io_);
  auto endpoints = resolver.resolve(host, port, tcp::resolver::numeric_service, ec);
  if (ec || endpoints.empty()) {
    throw std::runtime_error("cannot listen on " + hostPort + ": " + (ec ? ec.message() : "no address"));
  }
  tcp::endpoint ep = endpoints.begin()->endpoint();
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error("cannot listen on " + hostPort + ": " + ec.message());
  return acceptor_.local_endpoint().port();
}

void HttpServer::startAccepting() { acceptNext(); }

void HttpServer::stop() {
  std::error_code ec;
  acceptor_.close(ec);
  acceptRetry_.cancel();
}

void HttpServer::acceptNext() {
  acceptor_.async_accept([this](std::error_code ec, tcp::socket s) {
    if (ec == asio::error::operation_aborted) return;  // stopped
    if (ec) {
      // Out of descriptors, or a connection reset before it was accepted:
      // try again shortly (at once would spin while descriptors are short).
      acceptRetry_.expires_after(std::chrono::milliseconds(50));
      acceptRetry_.async_wait([this](std::error_code e) {
        if (!e) acceptNext();
      });
      return;
    }
    if (*open_ >= limits_.maxConnections) {
      s.close(ec);  // over the limit: closed at once, the client retries later
    } else {
      std::error_code ignored;
      s.set_option(tcp::no_delay(true), ignored);
      std::make_shared<HttpConnection>(std::move(s), handler_, limits_, open_)->start();
    }
    acceptNext();
  });
}

}  // namespace keel::host
