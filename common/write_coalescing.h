#pragma once
// WriteCoalescingStream: an AsyncIoStream for one Cap'n Proto connection
// that writes everything one event-loop wake-up produced for its peer in
// one write, and holds back the RPC `Finish` messages until the next
// message goes out (or until `hold` has passed).
//
// One write per wake-up. Cap'n Proto 0.9 writes each message with its own
// writev, the next one only after the previous one's write completed. A
// process that answers several calls on one wake-up (an agent's vote and
// its answer to the previous commit; the coordinator's commits to an
// agent and its next prepare) made as many writevs to the same socket:
// strace of one wake-up after another at 8 postgres clients counted 62 %
// of an agent's writevs and 39 % of the coordinator's as second or later
// writes to the same peer within one wake-up (docs/performance.md,
// "twentieth sitting"). Each is a syscall, on loopback the peer's TCP
// receive path run in the sender's context, and often a second wake-up
// of the peer. Here a message is copied into the connection's pending
// bytes and its write resolves at once; the pending bytes go out in one
// write when the loop has nothing else to do before it waits for I/O
// (kj::evalLast), so nothing waits longer than the rest of the wake-up it
// was written in. Past kMaxPending bytes a write resolves only once what
// is pending has been handed to the socket (back-pressure: Cap'n Proto
// writes its next message only after that). A write to the socket is
// never issued while another is in flight; what is written meanwhile goes
// out, together, when it completes. Order on the wire is the order of the
// writes. A failed write fails every later one (the connection is going;
// its reads say so, as Cap'n Proto expects).
//
// Finish messages. Cap'n Proto 0.9 sends a Finish for every call once its
// caller is done with the answer: a ~40-byte message that usually arrives
// when its receiver has just gone back to sleep, so it costs the receiver
// a wake-up (a context switch and ~40-75 µs of CPU on the VMs we measure
// on; docs/performance.md, "Round two, third sitting") for nothing it must
// act on at once: it only frees the answer's table entry, or cancels a
// call the caller gave up on. A Finish is held until another message goes
// out (the next submit, the commit that follows a vote) and rides in front
// of it, or goes out alone once `hold` has passed.
//
// Reads are buffered. Cap'n Proto 0.9 reads each message with at least
// two reads (its first word, then the rest), and then a third that finds
// nothing and waits: 32 read calls per transfer in the coordinator at one
// client (strace; docs/performance.md, "fifth sitting"). Here one read of
// the socket takes whatever is there, up to kReadBuffer, and the small
// reads that follow are served from memory; a read of kReadBuffer or
// more with nothing buffered goes straight into the caller's buffer (no
// copy of large segments). Nothing is ever waited for beyond what the
// caller asked for: a read returns as soon as its minimum is there, as the
// inner stream's would.
//
// Memory per connection: the read buffer (kReadBuffer, at the first small
// read) and two write buffers (what is pending, what is in flight), each
// kept between writes up to kReadBuffer of capacity.
//
// shutdownWrite() writes what is pending first (held Finish messages are
// dropped: the peer frees its answers when the connection ends anyway).
// Destroyed with bytes pending, the stream drops them: the connection is
// being torn down.
//
// Thread: the connection's event loop. The inner stream must outlive this.

#include <cstdint>

#include <kj/async-io.h>
#include <kj/timer.h>
#include <kj/vector.h>

namespace keel {

class WriteCoalescingStream final : public kj::AsyncIoStream, private kj::TaskSet::ErrorHandler {
 public:
  WriteCoalescingStream(kj::AsyncIoStream& inner, kj::Timer& timer, kj::Duration hold);
  ~WriteCoalescingStream() noexcept;

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override;
  kj::Promise<void> write(const void* buffer, size_t size) override;
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override;
  kj::Promise<void> whenWriteDisconnected() override;
  void shutdownWrite() override;
  void abortRead() override;
  void getsockopt(int level, int option, void* value, kj::uint* length) override;
  void setsockopt(int level, int option, const void* value, kj::uint length) override;
  void getsockname(struct sockaddr* addr, kj::uint* length) override;
  void getpeername(struct sockaddr* addr, kj::uint* length) override;

  // What went out and came in, for tests (not exported on /metrics: per
  // connection, and the A/B in docs/performance.md measures the effect
  // directly).
  struct Counts {
    std::uint64_t messages = 0;      // write calls taken (Finish messages included)
    std::uint64_t innerWrites = 0;   // writes issued to the inner stream
    std::uint64_t held = 0;          // Finish messages held back
    std::uint64_t rodeAlong = 0;     // of those, written with a later message
    std::uint64_t timerFlushes = 0;  // writes of held messages alone, after `hold`
    std::uint64_t waited = 0;        // writes that resolved only once written (past kMaxPending)
    std::uint64_t reads = 0;         // tryRead calls answered
    std::uint64_t innerReads = 0;    // of those, reads of the inner stream they needed
  };
  static constexpr std::size_t kReadBuffer = 8192;
  // Pending bytes past which a write waits until they are written.
  static constexpr std::size_t kMaxPending = 64 * 1024;
  const Counts& counts() const { return counts_; }

  // True if `pieces` (as capnp::writeMessage hands them: the segment
  // table, then the segments) are exactly one RPC Finish message.
  static bool isFinish(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces);

 private:
  void taskFailed(kj::Exception&& e) override;
  // Issues one write of what is held and pending, unless one is in flight
  // (its completion calls this again) or nothing is pending.
  void startWrite();
  void scheduleWrite();  // startWrite() once the loop is about to wait
  void shutDownIfAsked();  // nothing pending or in flight: a shutdownWrite() asked for goes through
  // A promise for the moment the bytes now pending have been written.
  kj::Promise<void> whenPendingWritten();
  void armTimer();
  kj::Promise<void> timerLoop();
  // A read with nothing buffered: into the read buffer, then handed on.
  kj::Promise<size_t> readInner(kj::byte* out, size_t minBytes, size_t maxBytes);

  kj::AsyncIoStream& inner_;
  kj::Timer& timer_;
  const kj::Duration hold_;
  kj::Vector<kj::byte> held_;  // held Finish messages, whole, in order
  std::uint64_t heldMessages_ = 0;
  kj::Vector<kj::byte> pending_;  // messages written and not yet handed to inner_, in order
  kj::Vector<kj::byte> outHeld_, out_;  // what the write in flight took from held_ and pending_
  kj::ArrayPtr<const kj::byte> outPieces_[2];
  // Fulfilled when the write that takes pending_ completes; made only if
  // someone waits for it.
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> pendingWritten_;
  kj::Maybe<kj::ForkedPromise<void>> pendingWrittenFork_;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> inFlightWritten_;  // the same for the write in flight
  bool scheduled_ = false;          // an evalLast write is queued
  bool inFlight_ = false;           // a write to inner_ is in progress
  bool shutdownRequested_ = false;  // inner_.shutdownWrite() once what is pending is written
  kj::Maybe<kj::Exception> failed_;  // a write to inner_ failed: every later write fails so
  kj::Maybe<kj::Promise<void>> timerArmed_;  // armed while something is held
  bool timerRunning_ = false;
  kj::Array<kj::byte> readBuf_;  // allocated at the first small read
  std::size_t readBegin_ = 0, readEnd_ = 0;  // what is buffered and not yet handed on
  Counts counts_;
  kj::TaskSet tasks_;  // the queued evalLast and the write in flight
};

}  // namespace keel
