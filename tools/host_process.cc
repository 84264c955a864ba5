#include "tools/host_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "common/strict_json.h"

namespace keel {

namespace fs = std::filesystem;

namespace {

// Waits until `fd` is ready for `events` or `until` passes.
bool waitFd(int fd, short events, std::chrono::steady_clock::time_point until) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now()).count();
  if (left <= 0) return false;
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, int(left)) > 0;
}

}  // namespace

HttpReply httpCall(const std::string& hostPort, const std::string& method, const std::string& path,
                   const std::string& body, std::chrono::milliseconds timeout) {
  HttpReply r;
  auto colon = hostPort.rfind(':');
  if (colon == std::string::npos) {
    r.error = "address '" + hostPort + "' is not host:port";
    return r;
  }
  std::string host = hostPort.substr(0, colon);
  if (host == "localhost") host = "127.0.0.1";
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(std::uint16_t(std::stoi(hostPort.substr(colon + 1))));
  if (::inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1) {
    r.error = "host '" + host + "' is not an IPv4 address";
    return r;
  }
  auto until = std::chrono::steady_clock::now() + timeout;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    r.error = std::string("socket: ") + std::strerror(errno);
    return r;
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    r.error = "connect " + hostPort + ": " + std::strerror(errno);
    return r;
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: " + hostPort +
                    "\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n\r\n" + body;
  std::size_t sent = 0;
  while (sent < req.size()) {
    if (!waitFd(fd, POLLOUT, until)) {
      r.error = "timed out sending";
      return r;
    }
    ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      r.error = std::string("send: ") + std::strerror(errno);
      return r;
    }
    sent += std::size_t(n);
  }
  std::string in;
  char buf[16384];
  for (;;) {
    if (!waitFd(fd, POLLIN, until)) {
      r.error = "no answer within " + std::to_string(timeout.count()) + " ms";
      return r;
    }
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      r.error = std::string("recv: ") + std::strerror(errno);
      return r;
    }
    if (n == 0) break;
    in.append(buf, std::size_t(n));
  }
  auto headEnd = in.find("\r\n\r\n");
  if (in.rfind("HTTP/1.", 0) != 0 || headEnd == std::string::npos || in.size() < 12) {
    r.error = in.empty() ? "connection closed without an answer" : "not an HTTP answer";
    return r;
  }
  r.status = std::atoi(in.c_str() + 9);
  r.body = in.substr(headEnd + 4);
  return r;
}

const char* const kHostOperationsToml = R"([host.operations.debit]
try = "/v1/debit/try"
confirm = "/v1/debit/confirm"
cancel = "/v1/debit/cancel"

[host.operations.credit]
try = "/v1/credit/try"
confirm = "/v1/credit/confirm"
cancel = "/v1/credit/cancel"
)";

std::string writeHostOperations(const std::string& dir) {
  std::string path = dir + "/host-operations.toml";
  std::ofstream f(path, std::ios::trunc);
  f << kHostOperationsToml;
  if (!f) throw std::runtime_error("cannot write " + path);
  return path;
}

HostProcess::HostProcess(HostOptions opts) : opts_(std::move(opts)) { fs::create_directories(opts_.dir); }

HostProcess::~HostProcess() { p_.stop(); }

void HostProcess::start(const std::vector<std::string>& args) {
  std::string ready = opts_.dir + "/" + opts_.name + ".ready";
  fs::remove(ready);
  std::vector<std::string> a{"--listen",   addr_.empty() ? "127.0.0.1:0" : addr_,
                             "--data-dir", opts_.dir + "/" + opts_.name,
                             "--ready-file", ready,
                             "--accounts", std::to_string(opts_.accounts),
                             "--balance",  std::to_string(opts_.balance)};
  if (!servedOnce_) a.push_back("--init");
  a.insert(a.end(), args.begin(), args.end());
  p_.start(opts_.binDir + "/keel-host", a, log());
  addr_ = waitForReadyFile(ready, p_, "keel-host " + opts_.name, opts_.startTimeout);
  servedOnce_ = true;
}

void HostProcess::kill(int sig) { p_.signal(sig); }

void HostProcess::stop() { p_.stop(); }

void HostProcess::setFaults(const std::string& json) const {
  auto r = post("/admin/faults", json);
  if (r.status != 200) {
    throw std::runtime_error("keel-host " + opts_.name + ": POST /admin/faults " + json + " answered " +
                             std::to_string(r.status) + " " + r.body + r.error);
  }
}

std::int64_t HostProcess::Books::total() const {
  std::int64_t t = 0;
  for (auto& [_, a] : accounts) t += a.balance;
  return t;
}

std::int64_t HostProcess::Books::held() const {
  std::int64_t t = 0;
  for (auto& [_, a] : accounts) t += a.held + a.incoming;
  return t;
}

HostProcess::Books HostProcess::books() const {
  auto fetch = [&](const char* path) {
    auto r = get(path);
    if (r.status != 200) {
      throw std::runtime_error("keel-host " + opts_.name + ": GET " + path + " answered " +
                               std::to_string(r.status) + " " + r.body + r.error);
    }
    return JsonReader::parse(r.body);
  };
  Books b;
  auto accounts = fetch("/v1/accounts");
  for (auto& a : accounts["accounts"].array()) {
    b.accounts[a["name"].str()] = Account{std::int64_t(a["balance"].number()), std::int64_t(a["held"].number()),
                                          std::int64_t(a["incoming"].number())};
  }
  b.open = fetch("/v1/open")["open"].array().size();
  return b;
}

}  // namespace keel
