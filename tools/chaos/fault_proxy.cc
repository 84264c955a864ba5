#include "tools/chaos/fault_proxy.h"

#include <array>
#include <asio.hpp>
#include <atomic>
#include <deque>
#include <exception>
#include <future>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

namespace keel::chaos {
namespace {

using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kReadChunk = 64 * 1024;
// A direction whose writer is behind (its next chunk is due but the previous
// write has not finished) stops reading once it holds this much.
constexpr std::size_t kBackpressureBytes = 1u << 20;
constexpr auto kAcceptRetry = std::chrono::milliseconds(50);

// Close with SO_LINGER {on, 0}: the kernel sends RST instead of FIN.
void resetSocket(tcp::socket& s) {
  if (!s.is_open()) return;
  std::error_code ec;
  s.set_option(asio::socket_base::linger(true, 0), ec);
  s.close(ec);
}

void setNoDelay(tcp::socket& s) {
  std::error_code ec;
  s.set_option(tcp::no_delay(true), ec);  // best effort: a dead socket fails on first I/O anyway
}

}  // namespace

// Everything below is touched only on the proxy thread, except the atomic
// counters (any thread) and the members marked constant after construction.
struct FaultProxy::Impl {
  struct Chunk {
    std::vector<char> data;
    Clock::time_point due;
  };

  // One direction of a connection: reads from `from`, queues, writes to `to`.
  struct Pipe {
    Pipe(Direction d, tcp::socket& f, tcp::socket& t, const asio::any_io_executor& ex)
        : dir(d), from(f), to(t), timer(ex) {}
    Direction dir;
    tcp::socket& from;
    tcp::socket& to;
    std::array<char, kReadChunk> readBuf;
    std::deque<Chunk> queue;     // read, not yet handed to the writer
    std::vector<char> inFlight;  // being written
    std::size_t heldBytes = 0;   // queue + inFlight
    bool reading = false;
    bool writing = false;
    bool eofRead = false;  // `from` sent FIN
    bool eofSent = false;  // FIN passed on to `to`
    asio::steady_timer timer;  // wakes the writer when the head of queue is due
  };

  struct Connection : std::enable_shared_from_this<Connection> {
    Connection(tcp::socket c, asio::io_context& io)
        : client(std::move(c)),
          upstream(io),
          pipes{Pipe(Direction::ClientToUpstream, client, upstream, io.get_executor()),
                Pipe(Direction::UpstreamToClient, upstream, client, io.get_executor())} {}
    tcp::socket client;
    tcp::socket upstream;
    std::array<Pipe, 2> pipes;
    bool closed = false;
  };
  using ConnPtr = std::shared_ptr<Connection>;

  Impl(const std::string& upstreamHost, unsigned upstreamPort, unsigned listenPort)
      : acceptor(io), acceptRetry(io), work(asio::make_work_guard(io)) {
    if (upstreamPort == 0 || upstreamPort > 65535 || listenPort > 65535) {
      throw std::invalid_argument("FaultProxy: port out of range");
    }
    tcp::resolver resolver(io);
    upstream = resolver.resolve(upstreamHost, std::to_string(upstreamPort), tcp::resolver::numeric_service);
    tcp::endpoint ep(asio::ip::make_address_v4("127.0.0.1"), static_cast<unsigned short>(listenPort));
    acceptor.open(ep.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address(true));
    acceptor.bind(ep);
    acceptor.listen();
    port = acceptor.local_endpoint().port();
    startAccept();
    thread = std::thread([this] { io.run(); });
  }

  // Runs f on the proxy thread and waits until it has run.
  template <typename F>
  void runOnIoThread(F&& f) {
    if (io.get_executor().running_in_this_thread()) {
      f();
      return;
    }
    std::promise<void> done;
    auto finished = done.get_future();
    asio::post(io, [&] {
      try {
        f();
        done.set_value();
      } catch (...) {
        done.set_exception(std::current_exception());
      }
    });
    finished.get();
  }

  bool blocked(Direction d) const { return blackhole || drop[static_cast<int>(d)]; }

  void startAccept() {
    acceptor.async_accept([this](std::error_code ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      if (ec) {
        // E.g. out of file descriptors: back off instead of spinning.
        acceptRetry.expires_after(kAcceptRetry);
        acceptRetry.async_wait([this](std::error_code e) {
          if (!e) startAccept();
        });
        return;
      }
      accepted.fetch_add(1, std::memory_order_relaxed);
      if (refuse) {
        resets.fetch_add(1, std::memory_order_relaxed);  // counted before the peer can see it
        resetSocket(s);
      } else {
        setNoDelay(s);
        auto conn = std::make_shared<Connection>(std::move(s), io);
        conns.insert(conn);
        connectUpstream(conn);
      }
      startAccept();
    });
  }

  void connectUpstream(const ConnPtr& conn) {
    asio::async_connect(conn->upstream, upstream, [this, conn](std::error_code ec, const tcp::endpoint&) {
      if (conn->closed) return;
      if (ec) {
        upstreamConnectFailures.fetch_add(1, std::memory_order_relaxed);
        closeConnection(conn, /*abrupt=*/true);
        return;
      }
      setNoDelay(conn->upstream);
      for (Pipe& p : conn->pipes) readMore(conn, p);
    });
  }

  void readMore(const ConnPtr& conn, Pipe& p) {
    if (conn->closed || p.reading || p.eofRead) return;
    // Backpressure: the peer is not keeping up (not latency), so stop reading
    // as TCP would; the write completion resumes.
    if (p.writing && p.heldBytes >= kBackpressureBytes && !p.queue.empty() && p.queue.front().due <= Clock::now()) {
      return;
    }
    p.reading = true;
    p.from.async_read_some(asio::buffer(p.readBuf), [this, conn, &p](std::error_code ec, std::size_t n) {
      p.reading = false;
      if (conn->closed) return;
      if (n > 0 && !blocked(p.dir)) {
        p.queue.push_back(Chunk{std::vector<char>(p.readBuf.data(), p.readBuf.data() + n), Clock::now() + latency});
        p.heldBytes += n;
        if (conn->pipes[0].heldBytes + conn->pipes[1].heldBytes > kMaxQueuedBytes) {
          resets.fetch_add(1, std::memory_order_relaxed);
          closeConnection(conn, /*abrupt=*/true);
          return;
        }
      }
      if (ec == asio::error::eof) {
        p.eofRead = true;
      } else if (ec) {
        closeConnection(conn, /*abrupt=*/true);  // pass a reset on to the other side
        return;
      }
      pump(conn, p);
      readMore(conn, p);
    });
  }

  // The writer of one direction: drops what is blocked, waits for the head
  // to come due, writes one chunk at a time, then passes on a FIN.
  void pump(const ConnPtr& conn, Pipe& p) {
    while (!conn->closed && !p.writing) {
      if (p.queue.empty()) {
        if (p.eofRead && !p.eofSent && !blocked(p.dir)) {
          std::error_code ignored;
          p.to.shutdown(tcp::socket::shutdown_send, ignored);
          p.eofSent = true;
          if (conn->pipes[0].eofSent && conn->pipes[1].eofSent) closeConnection(conn, /*abrupt=*/false);
        }
        return;
      }
      Chunk& head = p.queue.front();
      if (blocked(p.dir)) {
        p.heldBytes -= head.data.size();
        p.queue.pop_front();
        continue;
      }
      if (head.due > Clock::now()) {
        // Re-arming cancels an earlier wait (its handler sees operation_aborted).
        if (p.timer.expiry() != head.due) {
          p.timer.expires_at(head.due);
          p.timer.async_wait([this, conn, &p](std::error_code ec) {
            if (ec != asio::error::operation_aborted) pump(conn, p);
          });
        }
        return;
      }
      p.inFlight = std::move(head.data);
      p.queue.pop_front();
      p.writing = true;
      asio::async_write(p.to, asio::buffer(p.inFlight), [this, conn, &p](std::error_code ec, std::size_t n) {
        p.writing = false;
        if (conn->closed) return;
        (p.dir == Direction::ClientToUpstream ? bytesC2U : bytesU2C).fetch_add(n, std::memory_order_relaxed);
        if (ec) {
          closeConnection(conn, /*abrupt=*/true);
          return;
        }
        p.heldBytes -= p.inFlight.size();
        p.inFlight.clear();
        pump(conn, p);
        readMore(conn, p);
      });
      return;
    }
  }

  void closeConnection(const ConnPtr& conn, bool abrupt) {
    if (conn->closed) return;
    conn->closed = true;
    for (Pipe& p : conn->pipes) p.timer.cancel();
    if (abrupt) {
      resetSocket(conn->client);
      resetSocket(conn->upstream);
    } else {
      std::error_code ignored;
      conn->client.close(ignored);
      conn->upstream.close(ignored);
    }
    conns.erase(conn);
  }

  // After a fault is switched: drop what is now blocked, pass on held FINs.
  void kickAll() {
    std::vector<ConnPtr> all(conns.begin(), conns.end());
    for (const ConnPtr& c : all) {
      for (Pipe& p : c->pipes) pump(c, p);
    }
  }

  void resetAllNow(bool count) {
    std::vector<ConnPtr> all(conns.begin(), conns.end());
    for (const ConnPtr& c : all) {
      if (count) resets.fetch_add(1, std::memory_order_relaxed);
      closeConnection(c, /*abrupt=*/true);
    }
  }

  void shutdown() {
    runOnIoThread([this] {
      std::error_code ignored;
      acceptor.close(ignored);
      acceptRetry.cancel();
      resetAllNow(/*count=*/false);
    });
    work.reset();
    io.stop();
    thread.join();
  }

  asio::io_context io;  // declared first: destroyed last, after every socket
  tcp::acceptor acceptor;
  asio::steady_timer acceptRetry;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  tcp::resolver::results_type upstream;  // constant after construction
  unsigned port = 0;                     // constant after construction
  std::unordered_set<ConnPtr> conns;     // open connections, connecting ones included

  // Fault switches.
  std::chrono::milliseconds latency{0};
  bool blackhole = false;
  std::array<bool, 2> drop{false, false};  // indexed by Direction
  bool refuse = false;

  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> bytesC2U{0};
  std::atomic<std::uint64_t> bytesU2C{0};
  std::atomic<std::uint64_t> resets{0};
  std::atomic<std::uint64_t> upstreamConnectFailures{0};

  std::thread thread;  // runs io; started last in the constructor
};

FaultProxy::FaultProxy(const std::string& upstreamHost, unsigned upstreamPort, unsigned listenPort)
    : impl_(std::make_unique<Impl>(upstreamHost, upstreamPort, listenPort)) {}

FaultProxy::~FaultProxy() { impl_->shutdown(); }

unsigned FaultProxy::port() const { return impl_->port; }

void FaultProxy::setLatency(std::chrono::milliseconds delay) {
  if (delay.count() < 0) throw std::invalid_argument("FaultProxy::setLatency: negative delay");
  impl_->runOnIoThread([&] { impl_->latency = delay; });
}

void FaultProxy::setBlackhole(bool on) {
  impl_->runOnIoThread([&] {
    impl_->blackhole = on;
    impl_->kickAll();
  });
}

void FaultProxy::setDrop(Direction dir, bool on) {
  impl_->runOnIoThread([&] {
    impl_->drop[static_cast<int>(dir)] = on;
    impl_->kickAll();
  });
}

void FaultProxy::setRefuse(bool on) {
  impl_->runOnIoThread([&] { impl_->refuse = on; });
}

void FaultProxy::resetAll() {
  impl_->runOnIoThread([&] { impl_->resetAllNow(/*count=*/true); });
}

void FaultProxy::heal() {
  impl_->runOnIoThread([&] {
    impl_->latency = std::chrono::milliseconds(0);
    impl_->blackhole = false;
    impl_->drop = {false, false};
    impl_->refuse = false;
    impl_->kickAll();
  });
}

FaultProxy::Stats FaultProxy::stats() const {
  Stats s;
  s.connectionsAccepted = impl_->accepted.load(std::memory_order_relaxed);
  s.bytesClientToUpstream = impl_->bytesC2U.load(std::memory_order_relaxed);
  s.bytesUpstreamToClient = impl_->bytesU2C.load(std::memory_order_relaxed);
  s.resets = impl_->resets.load(std::memory_order_relaxed);
  s.upstreamConnectFailures = impl_->upstreamConnectFailures.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keel::chaos
