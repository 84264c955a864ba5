#pragma once
// FaultProxy: a TCP proxy for the chaos suite that sits between a client and
// one upstream server on loopback and injects network faults on command:
// latency, blackhole (partition), one-way loss, abrupt resets and refused
// connections. Each accepted client connection gets its own upstream
// connection; bytes are forwarded both ways in order.
//
// Threading: the proxy owns an asio::io_context that runs on its own thread,
// started by the constructor and stopped and joined by the destructor. All
// connection state lives on that thread. The control methods may be called
// from any thread; each one runs on the proxy thread and returns after it
// has taken effect, for existing and for new connections. Do not call them
// concurrently with the destructor.
//
// Caveats (what a TCP stream forces on fault injection):
// - Bytes are dropped, never delayed for later: while blackholed, or while a
//   direction is dropped, bytes read are discarded for good. A TCP stream
//   cannot lose single packets and stay valid, so "one-way loss" is one
//   direction silently discarded; the application sees a gap in its stream
//   after heal() and must cope (Keel's RPC layer resets the connection).
// - An end of stream (FIN) is not discarded: it is held while its direction
//   is blocked and passed on once it is unblocked, as TCP would retransmit it.
// - setLatency() applies to data read after the call; data already queued
//   keeps its delay. Order within a direction is always kept.
// - Memory is bounded per connection: a reader whose peer does not read
//   stops reading (backpressure, as TCP would), but data held for latency is
//   not flow-controlled; a connection holding more than kMaxQueuedBytes
//   for latency is reset and counted in Stats::resets.
// - The upstream address is resolved once, in the constructor. A connection
//   whose upstream connect fails is reset (RST), as a refused connection
//   would look to the client.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace keel::chaos {

enum class Direction : std::uint8_t { ClientToUpstream, UpstreamToClient };

class FaultProxy final {
 public:
  // Cumulative counters since construction.
  struct Stats {
    std::uint64_t connectionsAccepted = 0;    // every accept, refused ones included
    std::uint64_t bytesClientToUpstream = 0;  // written to the upstream
    std::uint64_t bytesUpstreamToClient = 0;  // written to the client
    std::uint64_t resets = 0;                 // connections reset on purpose: resetAll, refuse, overflow
    std::uint64_t upstreamConnectFailures = 0;
  };

  // Per-connection bound on data held for latency (both directions).
  static constexpr std::size_t kMaxQueuedBytes = 64u << 20;

  // Listens on 127.0.0.1:listenPort (0 = the kernel picks; see port()) and
  // forwards to upstreamHost:upstreamPort. Throws std::system_error if the
  // upstream does not resolve or the listen port cannot be bound.
  FaultProxy(const std::string& upstreamHost, unsigned upstreamPort, unsigned listenPort = 0);
  // Resets every open connection, stops the proxy thread and joins it.
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  // The bound listen port. Constant after construction.
  unsigned port() const;

  // Delays each chunk of data by `delay` in each direction (0 = off).
  void setLatency(std::chrono::milliseconds delay);
  // While on: connections are accepted and kept open, but nothing is
  // forwarded in either direction; bytes read are dropped.
  void setBlackhole(bool on);
  // While on: bytes in direction `dir` are dropped; the other one flows.
  void setDrop(Direction dir, bool on);
  // While on: new connections are accepted and reset at once, as a host
  // that is down looks to the client (connect succeeds, first read fails).
  void setRefuse(bool on);
  // Resets (RST) every current connection on both sides.
  void resetAll();
  // Latency, blackhole, drops and refuse all off.
  void heal();

  Stats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::chaos
