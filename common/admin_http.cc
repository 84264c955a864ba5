#include "common/admin_http.h"

#include <fcntl.h>

#include <algorithm>
#include <array>
#include <asio.hpp>
#include <cerrno>
#include <ctime>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <variant>

#include "common/http_text.h"
#include "common/log.h"
#include "common/records.h"  // jsonEscape

namespace keel {

using asio::ip::tcp;
using AdminLimits = AdminHttpServer::Limits;  // keel::Limits is another struct (types.h)

std::optional<std::string> HttpRequest::param(std::string_view name) const {
  for (const auto& [k, v] : query) {
    if (k == name) return v;
  }
  return std::nullopt;
}

HttpResponse HttpResponse::json(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

HttpResponse HttpResponse::text(int status, std::string contentType, std::string body) {
  HttpResponse r;
  r.status = status;
  r.contentType = std::move(contentType);
  r.body = std::move(body);
  return r;
}

HttpResponse HttpResponse::error(int status, const std::string& message) {
  return json(status, "{\"error\":\"" + jsonEscape(message) + "\",\"status\":" + std::to_string(status) + "}");
}

namespace {

constexpr std::size_t kMaxMethod = 32;  // longer than any method: the line is not a request line
constexpr std::size_t kReadChunk = 8192;
// After an answer that closes the connection: what is read and dropped
// (so the close does not reset the connection under the client's feet,
// losing the answer), at most this much and this long.
constexpr std::size_t kMaxDrain = 1 << 20;
constexpr std::chrono::milliseconds kMaxDrainTime{2000};
// accept() failing (out of descriptors) is retried after this, not at once:
// an immediate retry would fail again and spin the thread.
constexpr std::chrono::milliseconds kAcceptRetry{100};

bool isTchar(char c) {  // RFC 9110 token characters
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return c != '\0' && std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool isToken(std::string_view s) { return !s.empty() && std::all_of(s.begin(), s.end(), isTchar); }

std::string lower(std::string_view s) {
  std::string o(s);
  for (char& c : o) {
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  }
  return o;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes `s`; with `plusIsSpace` (a query), '+' is a space.
// nullopt: a '%' not followed by two hex digits.
std::optional<std::string> percentDecode(std::string_view s, bool plusIsSpace) {
  std::string o;
  o.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      int hi = hexValue(s[i + 1]), lo = hexValue(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      o += char(hi * 16 + lo);
      i += 2;
    } else {
      o += (c == '+' && plusIsSpace) ? ' ' : c;
    }
  }
  return o;
}

const char* reasonPhrase(int status) {
  static const std::pair<int, const char*> kPhrases[] = {
      {100, "Continue"},
      {200, "OK"},
      {201, "Created"},
      {202, "Accepted"},
      {204, "No Content"},
      {301, "Moved Permanently"},
      {302, "Found"},
      {304, "Not Modified"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {409, "Conflict"},
      {411, "Length Required"},
      {413, "Content Too Large"},
      {414, "URI Too Long"},
      {415, "Unsupported Media Type"},
      {417, "Expectation Failed"},
      {422, "Unprocessable Content"},
      {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"},
      {501, "Not Implemented"},
      {503, "Service Unavailable"},
      {505, "HTTP Version Not Supported"},
  };
  for (const auto& [code, phrase] : kPhrases) {
    if (code == status) return phrase;
  }
  return "";  // the reason phrase may be empty (RFC 9112 4)
}

// "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 9110 5.6.7), spelled by hand:
// strftime's %a and %b follow the locale.
std::string httpDate() {
  static const char* const kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* const kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT", kDays[tm.tm_wday % 7], tm.tm_mday,
                kMonths[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

// Headers the server writes itself: one set by a handler would frame the
// stream wrongly (Content-Length, Transfer-Encoding, Connection) or repeat
// one of ours.
bool serverOwnedHeader(std::string_view name) {
  static const std::string_view kOwned[] = {"content-length", "transfer-encoding",      "connection", "content-type",
                                            "cache-control",  "x-content-type-options", "date"};
  std::string l = lower(name);
  return std::find(std::begin(kOwned), std::end(kOwned), l) != std::end(kOwned);
}

// A header value may not end the header line early: CR and LF would let
// whoever chose the value (a handler echoing a client's text) add headers
// or a second response.
bool safeHeaderValue(std::string_view v) {
  return std::none_of(v.begin(), v.end(), [](char c) { return c == '\r' || c == '\n' || c == '\0'; });
}

// A handler's answer we can send as is; otherwise the 500 that says why.
HttpResponse checked(HttpResponse r) {
  if (r.status < 200 || r.status > 599) {
    return HttpResponse::error(500, "handler answered status " + std::to_string(r.status));
  }
  if (!safeHeaderValue(r.contentType)) return HttpResponse::error(500, "handler answered a bad Content-Type");
  for (const auto& [name, value] : r.headers) {
    if (!isToken(name) || !safeHeaderValue(value)) return HttpResponse::error(500, "handler answered a bad header");
  }
  return r;
}

std::string serialize(const HttpResponse& r, bool headOnly, bool close) {
  // 204 and 304 never have a body, nor a Content-Length (RFC 9110 8.6).
  bool bodiless = r.status == 204 || r.status == 304;
  std::string o;
  o.reserve(256 + r.body.size());
  o += "HTTP/1.1 " + std::to_string(r.status) + " " + reasonPhrase(r.status) + "\r\n";
  o += "Date: " + httpDate() + "\r\n";
  o += "Content-Type: " + r.contentType + "\r\n";
  if (!bodiless) o += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  o += "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n";
  for (const auto& [name, value] : r.headers) {
    if (!serverOwnedHeader(name)) o += name + ": " + value + "\r\n";
  }
  if (close) o += "Connection: close\r\n";
  o += "\r\n";
  if (!headOnly && !bodiless) o += r.body;
  return o;
}

struct Refusal {
  int status;
  std::string reason;
};

// Finds where a request's head (request line and headers) ends, looking at
// each byte once however the request is split into reads (re-scanning the
// whole buffer on every read would let a client dribbling bytes make the
// thread do quadratic work), and refuses as early as it can what cannot end
// well: a request line that is not one, a target or a head over the limits.
class HeadScanner {
 public:
  // Scans buf[pos_, end). Returns the refusal, if any; done() once the
  // blank line ending the head is found.
  std::optional<Refusal> scan(std::string_view buf, const AdminLimits& limits) {
    for (; pos_ < buf.size(); ++pos_) {
      if (pos_ >= limits.maxHeaderBytes) {
        return Refusal{431, "request line and headers over " + std::to_string(limits.maxHeaderBytes) + " bytes"};
      }
      char c = buf[pos_];
      if (!inLine_) {
        // Blank lines before a request line are ignored (RFC 9112 2.2);
        // they still count toward maxHeaderBytes, so they cannot go on.
        if (c == '\r' || c == '\n') continue;
        inLine_ = true;
        start_ = pos_;
      }
      if (!lineDone_) {
        if (c == '\n') {
          lineDone_ = true;
          lineStart_ = pos_ + 1;
        } else if (c == ' ') {
          if (++spaces_ > 2) return Refusal{400, "malformed request line"};
        } else if (spaces_ == 0 && pos_ - start_ >= kMaxMethod) {
          return Refusal{400, "malformed request line"};
        } else if (spaces_ == 1 && ++targetBytes_ > limits.maxTarget) {
          return Refusal{414, "request target over " + std::to_string(limits.maxTarget) + " bytes"};
        }
        continue;
      }
      if (c == '\n') {
        std::size_t len = pos_ - lineStart_;
        if (len == 0 || (len == 1 && buf[lineStart_] == '\r')) {
          end_ = ++pos_;
          return std::nullopt;
        }
        lineStart_ = pos_ + 1;
      }
    }
    return std::nullopt;
  }
  bool done() const { return end_ != 0; }
  std::size_t start() const { return start_; }  // the request line's first byte
  std::size_t end() const { return end_; }      // one past the blank line: the body's first byte

 private:
  std::size_t pos_ = 0;
  std::size_t start_ = 0;
  std::size_t lineStart_ = 0;
  std::size_t end_ = 0;
  std::size_t targetBytes_ = 0;
  int spaces_ = 0;
  bool inLine_ = false;
  bool lineDone_ = false;
};

// A request's head, parsed; its body is still to be cut from the buffer.
struct Head {
  HttpRequest req;
  std::size_t contentLength = 0;
  bool keepAlive = true;
  bool expectContinue = false;
};

// Splits the target into path and query, both percent-decoded.
std::optional<Refusal> parseTarget(std::string_view target, HttpRequest& req) {
  for (char c : target) {
    if (c < 0x21 || c > 0x7e) return Refusal{400, "request target has a byte that must be percent-encoded"};
  }
  // Absolute form ("http://host/path", RFC 9112 3.2.2): what a proxy sends;
  // the authority says nothing to a server with one site.
  std::string scheme = lower(target.substr(0, 8));
  if (scheme.rfind("http://", 0) == 0 || scheme.rfind("https://", 0) == 0) {
    std::size_t slash = target.find('/', target.find("//") + 2);
    target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
  }
  if (target.empty() || target.front() != '/') return Refusal{400, "request target must start with /"};
  std::size_t q = target.find('?');
  auto path = percentDecode(target.substr(0, q), false);
  if (!path) return Refusal{400, "bad percent escape in path"};
  // A NUL would end the path early for whatever later treats it as a C string (a file name).
  if (path->find('\0') != std::string::npos) return Refusal{400, "NUL in path"};
  req.path = std::move(*path);
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    std::size_t amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (item.empty()) continue;
    std::size_t eq = item.find('=');
    auto name = percentDecode(item.substr(0, eq), true);
    auto value = percentDecode(eq == std::string_view::npos ? std::string_view() : item.substr(eq + 1), true);
    if (!name || !value) return Refusal{400, "bad percent escape in query"};
    req.query.emplace_back(std::move(*name), std::move(*value));
  }
  return std::nullopt;
}

// Parses a complete head (request line, header lines, blank line) as the
// HeadScanner delimited it.
std::variant<Head, Refusal> parseHead(std::string_view text, const AdminLimits& limits) {
  Head h;
  auto nextLine = [&text]() {
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return line;
  };

  std::string_view line = nextLine();
  std::size_t sp1 = line.find(' ');
  std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return Refusal{400, "malformed request line"};
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!isToken(method) || target.empty()) return Refusal{400, "malformed request line"};
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' || version[5] < '0' ||
      version[5] > '9' || version[7] < '0' || version[7] > '9') {
    return Refusal{400, "malformed request line"};
  }
  if (version[5] != '1') return Refusal{505, "HTTP version not supported: " + std::string(version)};
  if (target.size() > limits.maxTarget) {
    return Refusal{414, "request target over " + std::to_string(limits.maxTarget) + " bytes"};
  }
  h.req.method = std::string(method);
  h.req.target = std::string(target);
  if (auto bad = parseTarget(target, h.req)) return *bad;

  for (line = nextLine(); !line.empty(); line = nextLine()) {
    // Folded lines (obsolete) and whitespace before the colon are how one
    // request gets read as two by a proxy and a server: refused (RFC 9112 5).
    if (line.front() == ' ' || line.front() == '\t') return Refusal{400, "folded header line"};
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || !isToken(line.substr(0, colon))) {
      return Refusal{400, "malformed header line"};
    }
    std::string name = lower(line.substr(0, colon));
    std::string_view value = http::trimOws(line.substr(colon + 1));
    for (char c : value) {
      if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) {
        return Refusal{400, "control character in header " + name};
      }
    }
    auto [it, fresh] = h.req.headers.emplace(name, std::string(value));
    if (fresh) continue;
    // Two Content-Lengths that differ: no telling where the body ends.
    if (name == "content-length") {
      if (it->second != value) return Refusal{400, "conflicting Content-Length headers"};
    } else {
      it->second += ", ";
      it->second += value;
    }
  }

  const auto& headers = h.req.headers;
  // A chunked body is not read; refusing any Transfer-Encoding also rules
  // out a body framed two ways at once (with a Content-Length).
  if (headers.count("transfer-encoding")) {
    return Refusal{411, "Transfer-Encoding is not supported: send the body with a Content-Length"};
  }
  if (auto cl = headers.find("content-length"); cl != headers.end()) {
    const std::string& v = cl->second;
    if (v.empty() || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return Refusal{400, "Content-Length is not a number: " + v};
    }
    // Over 18 digits cannot be parsed without overflow and is over any limit anyway.
    h.contentLength = v.size() > 18 ? std::size_t(-1) : std::stoull(v);
    if (h.contentLength > limits.maxBody) {
      return Refusal{413, "body of " + v + " bytes over the limit of " + std::to_string(limits.maxBody)};
    }
  }
  if (auto ex = headers.find("expect"); ex != headers.end()) {
    if (lower(ex->second) != "100-continue") return Refusal{417, "unsupported Expect: " + ex->second};
    h.expectContinue = true;
  }
  // HTTP/1.0 always closes (its keep-alive is a bolt-on not worth the
  // cases); HTTP/1.1 unless the client says close.
  auto conn = headers.find("connection");
  h.keepAlive = version[7] != '0' && (conn == headers.end() || !http::hasToken(conn->second, "close"));
  return h;
}

// "address already in use", with a hint where the reason alone puzzles.
std::string bindErrorText(const std::error_code& ec, unsigned port) {
  // Asio reports errno values in its own system category, not std's.
  bool errnoValue = ec.category() == asio::system_category() || ec.category() == std::system_category();
  std::string why = errnoValue ? errnoText(ec.value()) : ec.message();
  if (ec.value() == EACCES && port != 0 && port < 1024) why += " (ports below 1024 need privileges)";
  if (ec.value() == EADDRNOTAVAIL) why += " (not an address of this host)";
  return why;
}

void setCloseOnExec(int fd) {
  // Asio opens sockets without O_CLOEXEC: a child the process starts (a
  // backup's) would otherwise hold the admin port open after we exit.
  int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

class Connection;

}  // namespace

struct AdminHttpServer::Impl {
  using Methods = std::map<std::string, Handler>;  // method -> handler

  // Declared first, destroyed last: everything below holds its handles.
  // One thread runs it: the hint lets Asio skip its locking.
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  asio::steady_timer acceptRetry{io};
  Limits limits;
  std::string bound;  // fixed at bind: reading the acceptor from another thread would race the server's
  unsigned port = 0;
  std::map<std::string, Methods> exact;
  std::map<std::string, Methods> prefixes;
  std::unordered_set<Connection*> connections;  // open ones; only the server thread touches it
  bool stopping = false;                        // server thread (or the caller, before start)
  bool acceptFailing = false;                   // an accept failure is logged once, not every retry

  std::mutex mu;  // started, stopped, threadId
  bool started = false;
  bool stopped = false;
  std::thread::id threadId;
  std::mutex joinMu;
  std::thread thread;

  void acceptNext();
  void refuseConnection(tcp::socket s);
  void shutdown();
  void run();
  // The answer to `req` (a HEAD is answered as its GET; the caller drops the body).
  HttpResponse dispatch(const HttpRequest& req);
};

namespace {

// One client connection: reads a request, answers it, and so on; all on the
// server thread, kept alive by the pending operation's handler.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(AdminHttpServer::Impl& server, tcp::socket socket)
      : server_(server), socket_(std::move(socket)), deadline_(server.io) {
    std::error_code ec;
    auto ep = socket_.remote_endpoint(ec);
    if (!ec) peer_ = ep.address().to_string() + ":" + std::to_string(ep.port());
    server_.connections.insert(this);
  }
  ~Connection() { server_.connections.erase(this); }

  void start() {
    std::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);  // answers are whole; don't hold their last segment back
    armDeadline(server_.limits.idle);
    process();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    std::error_code ec;
    socket_.close(ec);
    deadline_.cancel();
  }

 private:
  // The connection is closed when `after` has passed with no re-arm: a
  // whole request must arrive within it, an answer be taken within it.
  void armDeadline(std::chrono::milliseconds after) {
    deadline_.expires_after(after);
    deadline_.async_wait([self = shared_from_this()](std::error_code ec) {
      if (ec == asio::error::operation_aborted) return;
      // Re-armed after this wait completed but before it ran.
      if (self->deadline_.expiry() > std::chrono::steady_clock::now()) return;
      self->close();
    });
  }

  // Serves what the buffer holds: the next request if it is complete,
  // otherwise reads more (or refuses what cannot become a request).
  void process() {
    if (closed_) return;
    if (server_.stopping) return close();
    const AdminLimits& limits = server_.limits;
    if (!head_) {
      if (auto refusal = scanner_.scan(buf_, limits)) return refuse(*refusal);
      if (!scanner_.done()) return readMore();
      auto parsed =
          parseHead(std::string_view(buf_).substr(scanner_.start(), scanner_.end() - scanner_.start()), limits);
      if (auto* refusal = std::get_if<Refusal>(&parsed)) return refuse(*refusal);
      head_ = std::move(std::get<Head>(parsed));
    }
    std::size_t bodyStart = scanner_.end();
    if (buf_.size() - bodyStart < head_->contentLength) {
      // The client holds its body back until told to go on (curl does for
      // bodies over 1 KiB, or waits a second).
      if (head_->expectContinue && !continueSent_ && buf_.size() == bodyStart) {
        continueSent_ = true;
        out_ = "HTTP/1.1 100 Continue\r\n\r\n";
        asio::async_write(socket_, asio::buffer(out_), [self = shared_from_this()](std::error_code ec, std::size_t) {
          if (ec || self->closed_) return self->close();
          self->readMore();
        });
        return;
      }
      return readMore();
    }
    HttpRequest req = std::move(head_->req);
    req.body = buf_.substr(bodyStart, head_->contentLength);
    req.peer = peer_;
    bool keepAlive = head_->keepAlive;
    buf_.erase(0, bodyStart + head_->contentLength);
    head_.reset();
    scanner_ = HeadScanner();
    continueSent_ = false;

    HttpResponse r = checked(server_.dispatch(req));
    send(serialize(r, req.method == "HEAD", !keepAlive), !keepAlive);
  }

  void readMore() {
    socket_.async_read_some(asio::buffer(chunk_), [self = shared_from_this()](std::error_code ec, std::size_t n) {
      // EOF or a reset before a whole request: nothing to answer.
      if (ec || self->closed_) return self->close();
      self->buf_.append(self->chunk_.data(), n);
      self->process();
    });
  }

  // A request that cannot be served nor the stream framed past it: the
  // error, then close.
  void refuse(const Refusal& r) { send(serialize(HttpResponse::error(r.status, r.reason), false, true), true); }

  void send(std::string bytes, bool closeAfter) {
    out_ = std::move(bytes);
    armDeadline(server_.limits.idle);
    asio::async_write(socket_, asio::buffer(out_),
                      [self = shared_from_this(), closeAfter](std::error_code ec, std::size_t) {
                        if (ec || self->closed_ || self->server_.stopping) return self->close();
                        if (closeAfter) return self->linger();
                        self->armDeadline(self->server_.limits.idle);
                        self->process();  // a pipelined request may be waiting in the buffer
                      });
  }

  // Closing right after the answer while the client's unread bytes (the
  // rest of an oversized head, a refused body) sit in our receive buffer
  // makes the kernel send a reset, and the client may lose the answer
  // before reading it. So: end our side, read and drop what still comes
  // (bounded in bytes and time), then close.
  void linger() {
    std::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return close();
    armDeadline(std::min(server_.limits.idle, kMaxDrainTime));
    drain();
  }

  void drain() {
    socket_.async_read_some(asio::buffer(chunk_), [self = shared_from_this()](std::error_code ec, std::size_t n) {
      if (ec || self->closed_ || self->server_.stopping) return self->close();
      self->drained_ += n;
      if (self->drained_ > kMaxDrain) return self->close();
      self->drain();
    });
  }

  AdminHttpServer::Impl& server_;
  tcp::socket socket_;
  std::string peer_;  // remote address, for HttpRequest::peer
  asio::steady_timer deadline_;
  std::array<char, kReadChunk> chunk_;
  std::string buf_;  // received, not yet consumed: at most a head, a body and one read beyond
  HeadScanner scanner_;
  std::optional<Head> head_;  // the current request's head, once complete, while its body comes
  std::string out_;           // the answer being written
  std::size_t drained_ = 0;
  bool continueSent_ = false;
  bool closed_ = false;
};

}  // namespace

void AdminHttpServer::Impl::acceptNext() {
  acceptor.async_accept([this](std::error_code ec, tcp::socket s) {
    if (stopping || ec == asio::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors, most likely: wait a moment, as the connections
      // we hold close (their deadlines see to it).
      if (!acceptFailing) KEEL_LOG_WARN("admin http: accept failed: {} (retrying)", ec.message());
      acceptFailing = true;
      acceptRetry.expires_after(kAcceptRetry);
      acceptRetry.async_wait([this](std::error_code e) {
        if (!e && !stopping) acceptNext();
      });
      return;
    }
    acceptFailing = false;
    setCloseOnExec(s.native_handle());
    if (connections.size() >= limits.maxConnections) {
      refuseConnection(std::move(s));
    } else {
      std::make_shared<Connection>(*this, std::move(s))->start();
    }
    acceptNext();
  });
}

// Over maxConnections: a 503 written without waiting (a fresh socket's send
// buffer takes it whole; if not, the client just sees the close) and the
// socket closed at once, so a flood of connections holds nothing of ours.
void AdminHttpServer::Impl::refuseConnection(tcp::socket s) {
  std::error_code ec;
  std::string out =
      serialize(HttpResponse::error(503, "too many admin connections (" + std::to_string(limits.maxConnections) + ")"),
                false, true);
  s.non_blocking(true, ec);
  if (!ec) s.write_some(asio::buffer(out), ec);
  s.shutdown(tcp::socket::shutdown_both, ec);
  s.close(ec);
}

// Ends everything on the io_context: what is pending completes as aborted
// and starts nothing new (each completion checks `stopping`), so run()
// returns on its own once the last connection is gone.
void AdminHttpServer::Impl::shutdown() {
  stopping = true;
  std::error_code ec;
  acceptor.close(ec);
  acceptRetry.cancel();
  std::vector<Connection*> open(connections.begin(), connections.end());
  for (Connection* c : open) c->close();
}

void AdminHttpServer::Impl::run() {
  for (;;) {
    try {
      io.run();
      return;
    } catch (const std::exception& e) {
      // A completion handler threw (out of memory, most likely): that
      // connection is dropped, the server goes on.
      KEEL_LOG_ERROR("admin http: {}", e.what());
    }
  }
}

namespace {

// The Host header's name is one this plane answers to: an IP address
// (v4, or v6 in brackets), localhost, or one of `names`. No Host at all
// (HTTP/1.0, a raw client) is allowed: browsers always send one.
bool hostAllowed(const HttpRequest& req, const std::vector<std::string>& names) {
  auto h = req.headers.find("host");
  if (h == req.headers.end()) return true;
  std::string host = h->second;
  if (!host.empty() && host.front() == '[') return host.find(']') != std::string::npos;  // an IPv6 literal
  if (auto colon = host.rfind(':'); colon != std::string::npos) host.resize(colon);
  for (char& c : host) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (host == "localhost") return true;
  if (!host.empty() && host.find_first_not_of("0123456789.") == std::string::npos) return true;  // IPv4
  return std::find(names.begin(), names.end(), host) != names.end();
}

}  // namespace

HttpResponse AdminHttpServer::Impl::dispatch(const HttpRequest& req) {
  if (!hostAllowed(req, limits.hosts)) {
    return HttpResponse::error(403, "Host '" + req.headers.at("host") +
                                        "' is not a name of this admin plane: use its address, or list the name in "
                                        "[admin] hosts (a guard against DNS rebinding)");
  }
  const Methods* methods = nullptr;
  if (auto it = exact.find(req.path); it != exact.end()) {
    methods = &it->second;
  } else {
    std::size_t longest = 0;
    for (const auto& [prefix, m] : prefixes) {
      if (prefix.size() >= longest && req.path.compare(0, prefix.size(), prefix) == 0) {
        longest = prefix.size();
        methods = &m;
      }
    }
  }
  if (!methods) return HttpResponse::error(404, "no such path: " + req.path);

  auto h = methods->find(req.method);
  if (h == methods->end() && req.method == "HEAD") h = methods->find("GET");
  if (h == methods->end()) {
    std::string allow;
    for (const auto& [m, handler] : *methods) {
      allow += (allow.empty() ? "" : ", ") + m;
      if (m == "GET" && !methods->count("HEAD")) allow += ", HEAD";
    }
    HttpResponse r = HttpResponse::error(405, "method " + req.method + " not allowed on " + req.path);
    r.headers.emplace_back("Allow", allow);
    return r;
  }
  try {
    return h->second(req);
  } catch (const std::exception& e) {
    KEEL_LOG_WARN("admin http: {} {} failed: {}", req.method, req.path, e.what());
    return HttpResponse::error(500, e.what());
  } catch (...) {
    KEEL_LOG_WARN("admin http: {} {} failed with an unknown exception", req.method, req.path);
    return HttpResponse::error(500, "unknown exception");
  }
}

namespace {

// "127.0.0.1:9400", "[::1]:9400", "localhost:9400" -> the endpoint; throws
// AdminListenError naming `listen`. No resolver: a host name could resolve
// to several addresses, or to another one tomorrow, and an admin plane bound
// where the operator did not mean is worse than a refused start.
tcp::endpoint parseListen(const std::string& listen) {
  auto fail = [&listen](const std::string& why) { return AdminListenError("admin_listen " + listen + ": " + why); };
  std::string host;
  std::string_view portText;
  if (!listen.empty() && listen.front() == '[') {
    std::size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      throw fail("not an address (expected host:port, [v6]:port or localhost:port)");
    }
    host = listen.substr(1, close - 1);
    portText = std::string_view(listen).substr(close + 2);
  } else {
    std::size_t colon = listen.rfind(':');
    if (colon == std::string::npos) throw fail("not an address (expected host:port, [v6]:port or localhost:port)");
    host = listen.substr(0, colon);
    portText = std::string_view(listen).substr(colon + 1);
    if (host.find(':') != std::string::npos) throw fail("an IPv6 address goes in brackets: [address]:port");
  }
  if (portText.empty() || portText.size() > 5 ||
      !std::all_of(portText.begin(), portText.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoul(std::string(portText)) > 65535) {
    throw fail("bad port '" + std::string(portText) + "'");
  }
  auto port = static_cast<unsigned short>(std::stoul(std::string(portText)));
  std::error_code ec;
  asio::ip::address addr;
  if (listen.front() == '[') {
    addr = asio::ip::make_address_v6(host, ec);
    if (ec) throw fail("'" + host + "' is not an IPv6 address");
  } else if (lower(host) == "localhost") {
    addr = asio::ip::address_v4::loopback();
  } else {
    addr = asio::ip::make_address_v4(host, ec);
    if (ec) throw fail("'" + host + "' is not an IPv4 address, [IPv6 address] or localhost");
  }
  return tcp::endpoint(addr, port);
}

}  // namespace

AdminHttpServer::AdminHttpServer(const std::string& listen, Limits limits) : impl_(std::make_unique<Impl>()) {
  impl_->limits = limits;
  tcp::endpoint ep = parseListen(listen);
  auto fail = [&](const std::error_code& ec) {
    return AdminListenError("admin_listen " + listen + ": " + bindErrorText(ec, ep.port()));
  };
  std::error_code ec;
  auto& acceptor = impl_->acceptor;
  if (acceptor.open(ep.protocol(), ec); ec) throw fail(ec);
  setCloseOnExec(acceptor.native_handle());
  // SO_REUSEADDR lets a restart bind while the last run's connections sit
  // in TIME_WAIT; Linux still refuses it beside a socket that listens.
  if (acceptor.set_option(tcp::acceptor::reuse_address(true), ec); ec) throw fail(ec);
  if (acceptor.bind(ep, ec); ec) throw fail(ec);
  // Two sockets bound with SO_REUSEADDR and neither listening yet: the
  // second learns it here.
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) throw fail(ec);
  tcp::endpoint local = acceptor.local_endpoint(ec);
  if (ec) throw fail(ec);
  std::string host = local.address().to_string();
  impl_->bound = (local.address().is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(local.port());
  impl_->port = local.port();
}

AdminHttpServer::~AdminHttpServer() { stop(); }

std::string AdminHttpServer::bound() const { return impl_->bound; }

unsigned AdminHttpServer::port() const { return impl_->port; }

// The routing tables are read by the server thread without a lock: adding
// to them once it runs would race it, so that is refused outright.
void AdminHttpServer::route(const std::string& method, const std::string& path, Handler h) {
  std::lock_guard lk(impl_->mu);
  if (impl_->started) throw std::logic_error("AdminHttpServer::route(" + path + ") after start()");
  impl_->exact[path][method] = std::move(h);
}

void AdminHttpServer::routePrefix(const std::string& method, const std::string& prefix, Handler h) {
  std::lock_guard lk(impl_->mu);
  if (impl_->started) throw std::logic_error("AdminHttpServer::routePrefix(" + prefix + ") after start()");
  impl_->prefixes[prefix][method] = std::move(h);
}

void AdminHttpServer::start() {
  std::lock_guard lk(impl_->mu);
  if (impl_->started || impl_->stopped) return;
  impl_->started = true;
  impl_->acceptNext();  // before run(): the io_context has work from its first turn
  impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
  impl_->threadId = impl_->thread.get_id();
}

void AdminHttpServer::stop() {
  {
    std::lock_guard lk(impl_->mu);
    if (!impl_->stopped) {
      impl_->stopped = true;
      if (impl_->started) {
        asio::post(impl_->io, [impl = impl_.get()] { impl->shutdown(); });
      } else {
        impl_->shutdown();  // no thread: nothing else touches the io_context
      }
    }
    // From a handler: the thread cannot join itself; the destructor will.
    if (!impl_->started || impl_->threadId == std::this_thread::get_id()) return;
  }
  std::lock_guard lk(impl_->joinMu);
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace keel
