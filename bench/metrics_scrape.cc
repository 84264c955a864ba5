#include "bench/metrics_scrape.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

namespace keel::bench {

double ScrapeResult::percentile(double p) const {
  if (ms.empty()) return 0;
  std::vector<double> s = ms;
  std::sort(s.begin(), s.end());
  std::size_t idx = std::size_t(p / 100 * double(s.size()) + 0.999999);  // nearest rank
  return s[std::min(s.size(), std::max<std::size_t>(idx, 1)) - 1];
}

std::pair<int, std::string> httpGet(unsigned port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return {0, "socket failed"};
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(std::uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return {0, "connection refused"};
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != ssize_t(req.size())) {
    ::close(fd);
    return {0, "send failed"};
  }
  std::string raw;
  char buf[65536];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) raw.append(buf, std::size_t(n));
  ::close(fd);
  auto end = raw.find("\r\n\r\n");
  if (raw.size() < 12 || raw.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) return {0, "no HTTP answer"};
  return {std::atoi(raw.c_str() + 9), raw.substr(end + 4)};
}

MetricsScraper::MetricsScraper(std::vector<unsigned> ports, double intervalS, unsigned consolePort)
    : ports_(std::move(ports)), intervalS_(intervalS), consolePort_(consolePort) {}

MetricsScraper::~MetricsScraper() {
  if (thread_.joinable()) stop();
}

void MetricsScraper::start() { thread_ = std::thread([this] { loop(); }); }

ScrapeResult MetricsScraper::stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  return result_;
}

void MetricsScraper::loop() {
  using clock = std::chrono::steady_clock;
  auto next = clock::now();
  while (!stop_) {
    std::uint64_t bytes = 0;
    for (unsigned port : ports_) {
      auto t0 = clock::now();
      auto [status, body] = httpGet(port, "/metrics");
      double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      if (status == 200 && !body.empty()) {
        ++result_.scrapes;
        result_.ms.push_back(ms);
        bytes += body.size();
      } else {
        ++result_.failures;
        if (result_.firstFailure.empty()) {
          result_.firstFailure = "port " + std::to_string(port) + ": status " + std::to_string(status) + " " +
                                 body.substr(0, 200);
        }
      }
    }
    result_.bytes = bytes;
    if (consolePort_ != 0) {
      std::vector<std::string> paths{"/api/live", "/api/participants", "/api/list?limit=200"};
      if (rounds_++ % 5 == 0) paths.push_back("/api/audit?limit=20");
      for (const auto& path : paths) {
        auto t0 = clock::now();
        auto [status, body] = httpGet(consolePort_, path);
        double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
        if (status == 200) {
          ++console_.scrapes;
          console_.ms.push_back(ms);
        } else {
          ++console_.failures;
          if (console_.firstFailure.empty()) console_.firstFailure = path + ": status " + std::to_string(status);
        }
      }
    }
    next += std::chrono::microseconds(std::int64_t(intervalS_ * 1e6));
    while (!stop_ && clock::now() < next) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace keel::bench
