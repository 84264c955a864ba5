// FaultProxy: bytes pass through unchanged, and each fault (latency,
// blackhole, one-way drop, reset, refuse) shows on real sockets through a
// small echo server. Timing asserts are lower bounds only, except where a
// fault must show "promptly"; there the bound is generous. Every wait is
// bounded.

#include "tools/chaos/fault_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace keel::chaos {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kPrompt = 5s;  // generous bound for "happens promptly"

int listenLoopback(unsigned* port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 64) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw std::runtime_error(std::string("listen failed: ") + std::strerror(errno));
  }
  *port = ntohs(a.sin_port);
  return fd;
}

void setTimeouts(int fd) {
  timeval tv{10, 0};  // safety net under the poll-based deadlines
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// Echoes every byte back on the same connection; one thread per connection,
// blocking I/O, unblocked on stop by shutdown(). Counts what it received.
class EchoServer {
 public:
  EchoServer() {
    listenFd_ = listenLoopback(&port_);
    acceptor_ = std::thread([this] { acceptLoop(); });
  }
  ~EchoServer() {
    stop_ = true;
    acceptor_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : workers_) t.join();
    for (int fd : fds_) ::close(fd);
    ::close(listenFd_);
  }
  unsigned port() const { return port_; }
  std::uint64_t received() const { return received_.load(); }
  int accepted() const { return accepted_.load(); }
  int ended() const { return ended_.load(); }

 private:
  void acceptLoop() {
    while (!stop_) {
      pollfd p{listenFd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int fd = ::accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      setTimeouts(fd);
      accepted_++;
      std::lock_guard<std::mutex> lock(mu_);
      fds_.push_back(fd);
      workers_.emplace_back([this, fd] { echo(fd); });
    }
  }
  void echo(int fd) {
    std::vector<char> buf(64 * 1024);
    for (;;) {
      ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n < 0 && errno == EAGAIN && !stop_) continue;  // SO_RCVTIMEO tick
      if (n <= 0) break;
      received_ += static_cast<std::uint64_t>(n);
      ssize_t off = 0;
      while (off < n) {
        ssize_t w = ::send(fd, buf.data() + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
        if (w <= 0) break;
        off += w;
      }
      if (off < n) break;
    }
    ::shutdown(fd, SHUT_WR);  // pass the end of stream on
    ended_++;
  }

  int listenFd_ = -1;
  unsigned port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> received_{0};
  std::atomic<int> accepted_{0};
  std::atomic<int> ended_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<int> fds_;             // GUARDED_BY(mu_)
  std::vector<std::thread> workers_;  // GUARDED_BY(mu_)
};

// A client socket, closed on destruction.
class Client {
 public:
  explicit Client(unsigned port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    setTimeouts(fd_);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~Client() { ::close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }

  bool sendAll(const std::string& data) {
    std::size_t off = 0;
    while (off < data.size()) {
      ssize_t w = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (w <= 0) return false;
      off += static_cast<std::size_t>(w);
    }
    return true;
  }

  // Reads until `n` bytes, end of stream, an error or the deadline.
  std::string readUpTo(std::size_t n, std::chrono::milliseconds timeout) {
    std::string out;
    auto deadline = Clock::now() + timeout;
    std::vector<char> buf(64 * 1024);
    while (out.size() < n) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      ssize_t r = ::recv(fd_, buf.data(), std::min(buf.size(), n - out.size()), 0);
      if (r <= 0) break;
      out.append(buf.data(), static_cast<std::size_t>(r));
    }
    return out;
  }

  // Waits for the next read result: >0 bytes, 0 = EOF, -1 = error (errno in
  // *err), or -2 = nothing arrived within `timeout`.
  ssize_t readOnce(std::chrono::milliseconds timeout, int* err = nullptr) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return -2;
    char buf[4096];
    ssize_t r = ::recv(fd_, buf, sizeof buf, 0);
    if (err) *err = r < 0 ? errno : 0;
    return r;
  }

  bool roundTrip(const std::string& msg, std::chrono::milliseconds timeout = kPrompt) {
    return sendAll(msg) && readUpTo(msg.size(), timeout) == msg;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

// True if the connection ends (reset or EOF) within `timeout`.
bool endsWithin(Client& c, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    int err = 0;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    ssize_t r = c.readOnce(left, &err);
    if (r == 0) return true;
    if (r == -1) return err == ECONNRESET || err == EPIPE;
    if (r == -2) return false;
  }
  return false;
}

template <typename Pred>
bool waitFor(Pred pred, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::string randomBytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

class FaultProxyTest : public ::testing::Test {
 protected:
  EchoServer echo_;
  FaultProxy proxy_{"127.0.0.1", echo_.port()};
};

TEST_F(FaultProxyTest, LargePayloadPassesUnchangedBothWays) {
  Client c(proxy_.port());
  ASSERT_TRUE(c.connected());
  const std::string payload = randomBytes(4u << 20, 1);
  std::atomic<bool> sent{false};
  std::thread sender([&] { sent = c.sendAll(payload); });
  std::string echoed = c.readUpTo(payload.size(), 30s);
  sender.join();
  ASSERT_TRUE(sent);
  ASSERT_EQ(echoed.size(), payload.size());
  EXPECT_TRUE(echoed == payload) << "echoed bytes differ";
  EXPECT_EQ(echo_.received(), payload.size());
  // A write is counted when it completes on the proxy thread, which may be
  // just after the peer has read it.
  EXPECT_TRUE(waitFor(
      [&] {
        auto s = proxy_.stats();
        return s.bytesClientToUpstream == payload.size() && s.bytesUpstreamToClient == payload.size();
      },
      kPrompt));
  EXPECT_EQ(proxy_.stats().connectionsAccepted, 1u);
}

// A client that does not read gets TCP-like backpressure through the proxy,
// not a reset, even when far more than kMaxQueuedBytes is sent in total.
TEST_F(FaultProxyTest, SlowReaderGetsBackpressureNotReset) {
  Client c(proxy_.port());
  ASSERT_TRUE(c.connected());
  const std::size_t total = FaultProxy::kMaxQueuedBytes + (32u << 20);
  const std::string chunk = randomBytes(1u << 20, 2);
  std::atomic<bool> sent{false};
  std::thread sender([&] {
    bool ok = true;
    for (std::size_t off = 0; ok && off < total; off += chunk.size()) ok = c.sendAll(chunk);
    sent = ok;
  });
  std::this_thread::sleep_for(500ms);  // nobody reads: every buffer on the way fills up
  EXPECT_EQ(proxy_.stats().resets, 0u);
  std::size_t matched = 0;
  bool same = true;
  while (matched < total) {
    std::string got = c.readUpTo(chunk.size(), 30s);
    if (got.size() != chunk.size()) break;
    same = same && got == chunk;
    matched += got.size();
  }
  sender.join();
  EXPECT_TRUE(sent);
  EXPECT_EQ(matched, total);
  EXPECT_TRUE(same) << "echoed bytes differ";
  EXPECT_EQ(proxy_.stats().resets, 0u);
}

// Data held for latency is not flow-controlled: past kMaxQueuedBytes the
// connection is reset rather than growing without bound.
TEST_F(FaultProxyTest, LatencyQueueOverflowResetsConnection) {
  Client c(proxy_.port());
  ASSERT_TRUE(c.roundTrip("warm-up"));
  proxy_.setLatency(30s);
  const std::string chunk(1u << 20, 'q');
  std::atomic<bool> stop{false};
  std::thread sender([&] {
    for (std::size_t off = 0; !stop && off < 2 * FaultProxy::kMaxQueuedBytes; off += chunk.size()) {
      if (!c.sendAll(chunk)) break;
    }
  });
  EXPECT_TRUE(endsWithin(c, 20s));
  stop = true;
  sender.join();
  EXPECT_EQ(proxy_.stats().resets, 1u);
  EXPECT_EQ(proxy_.stats().bytesClientToUpstream, 7u);
}

TEST_F(FaultProxyTest, EndOfStreamPassesThrough) {
  Client c(proxy_.port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.sendAll("last words"));
  ::shutdown(c.fd(), SHUT_WR);
  EXPECT_EQ(c.readUpTo(10, kPrompt), "last words");
  EXPECT_EQ(c.readOnce(kPrompt), 0) << "the echo server's FIN did not come through";
}

TEST_F(FaultProxyTest, ListensOnAGivenPort) {
  unsigned freePort = 0;
  ::close(listenLoopback(&freePort));
  FaultProxy fixed("127.0.0.1", echo_.port(), freePort);
  EXPECT_EQ(fixed.port(), freePort);
  Client c(fixed.port());
  ASSERT_TRUE(c.connected());
  EXPECT_TRUE(c.roundTrip("hello"));
}

TEST_F(FaultProxyTest, LatencyDelaysEachDirection) {
  Client c(proxy_.port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.roundTrip("warm-up"));
  const auto delay = 150ms;
  proxy_.setLatency(delay);
  auto start = Clock::now();
  ASSERT_TRUE(c.roundTrip("slow", 10s));
  EXPECT_GE(Clock::now() - start, 2 * delay);  // once each way

  // Order within a direction is kept when the delay changes mid-stream.
  proxy_.setLatency(300ms);
  ASSERT_TRUE(c.sendAll("first,"));
  proxy_.setLatency(0ms);
  ASSERT_TRUE(c.sendAll("second"));
  EXPECT_EQ(c.readUpTo(12, 10s), "first,second");

  proxy_.heal();
  EXPECT_TRUE(c.roundTrip("healed"));
}

TEST_F(FaultProxyTest, BlackholeForwardsNothingUntilHealed) {
  Client c(proxy_.port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.roundTrip("before"));
  const auto receivedBefore = echo_.received();

  proxy_.setBlackhole(true);
  ASSERT_TRUE(c.sendAll("lost"));
  EXPECT_EQ(c.readOnce(300ms), -2) << "a round trip completed through the blackhole";
  EXPECT_EQ(echo_.received(), receivedBefore);

  // New connections are accepted but answer nothing either.
  Client other(proxy_.port());
  ASSERT_TRUE(other.connected());
  ASSERT_TRUE(other.sendAll("x"));
  EXPECT_EQ(other.readOnce(300ms), -2);

  proxy_.heal();
  // Bytes read during the blackhole are gone; the same connection carries new data.
  ASSERT_TRUE(c.sendAll("after"));
  EXPECT_EQ(c.readUpTo(5, kPrompt), "after");
  EXPECT_TRUE(other.roundTrip("y"));
}

TEST_F(FaultProxyTest, BlackholeHoldsEndOfStreamUntilHealed) {
  Client c(proxy_.port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.roundTrip("ping"));
  proxy_.setBlackhole(true);
  ::shutdown(c.fd(), SHUT_WR);
  EXPECT_EQ(c.readOnce(300ms), -2);
  EXPECT_EQ(echo_.ended(), 0);
  proxy_.setBlackhole(false);
  EXPECT_EQ(c.readOnce(kPrompt), 0);
  EXPECT_TRUE(waitFor([&] { return echo_.ended() == 1; }, kPrompt));
}

TEST_F(FaultProxyTest, DropClientToUpstreamReachesNothing) {
  Client c(proxy_.port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.roundTrip("before"));
  const auto receivedBefore = echo_.received();

  proxy_.setDrop(Direction::ClientToUpstream, true);
  ASSERT_TRUE(c.sendAll("dropped"));
  EXPECT_EQ(c.readOnce(300ms), -2);
  EXPECT_EQ(echo_.received(), receivedBefore) << "the echo server received dropped bytes";

  proxy_.setDrop(Direction::ClientToUpstream, false);
  EXPECT_TRUE(c.roundTrip("after"));
}

TEST_F(FaultProxyTest, DropUpstreamToClientStillDeliversUpstream) {
  Client c(proxy_.port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.roundTrip("before"));
  const auto receivedBefore = echo_.received();

  proxy_.setDrop(Direction::UpstreamToClient, true);
  ASSERT_TRUE(c.sendAll("one-way"));
  EXPECT_TRUE(waitFor([&] { return echo_.received() == receivedBefore + 7; }, kPrompt));
  EXPECT_EQ(c.readOnce(300ms), -2) << "the echo came back through a dropped direction";

  proxy_.heal();
  EXPECT_TRUE(c.roundTrip("after"));
}

TEST_F(FaultProxyTest, ResetAllResetsClientAndUpstreamPromptly) {
  Client a(proxy_.port());
  Client b(proxy_.port());
  ASSERT_TRUE(a.roundTrip("a"));
  ASSERT_TRUE(b.roundTrip("b"));
  proxy_.resetAll();
  EXPECT_TRUE(endsWithin(a, kPrompt));
  EXPECT_TRUE(endsWithin(b, kPrompt));
  EXPECT_TRUE(waitFor([&] { return echo_.ended() == 2; }, kPrompt)) << "upstream side not closed";
  EXPECT_EQ(proxy_.stats().resets, 2u);

  Client again(proxy_.port());
  EXPECT_TRUE(again.roundTrip("new connections still work"));
}

TEST_F(FaultProxyTest, RefuseAcceptsThenResets) {
  proxy_.setRefuse(true);
  Client c(proxy_.port());
  ASSERT_TRUE(c.connected()) << "the kernel completes the handshake before accept";
  EXPECT_TRUE(endsWithin(c, kPrompt));
  EXPECT_EQ(echo_.accepted(), 0);
  EXPECT_EQ(proxy_.stats().resets, 1u);

  proxy_.heal();
  Client ok(proxy_.port());
  EXPECT_TRUE(ok.roundTrip("up again"));
}

TEST_F(FaultProxyTest, UpstreamConnectFailureClosesClient) {
  unsigned deadPort = 0;
  ::close(listenLoopback(&deadPort));  // nothing listens there now
  FaultProxy toNowhere("127.0.0.1", deadPort);
  Client c(toNowhere.port());
  ASSERT_TRUE(c.connected());
  EXPECT_TRUE(endsWithin(c, kPrompt));
  EXPECT_TRUE(waitFor([&] { return toNowhere.stats().upstreamConnectFailures == 1; }, kPrompt));
}

TEST_F(FaultProxyTest, DestructionWithOpenConnectionsIsPrompt) {
  auto proxy = std::make_unique<FaultProxy>("127.0.0.1", echo_.port());
  Client idle(proxy->port());
  Client busy(proxy->port());
  Client held(proxy->port());
  ASSERT_TRUE(idle.roundTrip("idle"));
  ASSERT_TRUE(busy.roundTrip("busy"));
  ASSERT_TRUE(held.roundTrip("held"));
  proxy->setLatency(10s);  // data waiting on a timer
  ASSERT_TRUE(held.sendAll("queued"));
  std::atomic<bool> stopSending{false};
  std::thread sender([&] {
    const std::string chunk(64 * 1024, 'z');
    while (!stopSending && busy.sendAll(chunk)) {
    }
  });
  std::this_thread::sleep_for(50ms);

  auto start = Clock::now();
  proxy.reset();
  EXPECT_LT(Clock::now() - start, kPrompt);
  EXPECT_TRUE(endsWithin(idle, kPrompt));
  EXPECT_TRUE(endsWithin(held, kPrompt));
  stopSending = true;
  sender.join();  // sendAll fails once the proxy side is reset (SO_SNDTIMEO bounds it anyway)
}

TEST(FaultProxyCtor, RejectsBadPorts) {
  EXPECT_THROW(FaultProxy("127.0.0.1", 0), std::invalid_argument);
  EXPECT_THROW(FaultProxy("127.0.0.1", 70000), std::invalid_argument);
}

}  // namespace
}  // namespace keel::chaos
