#pragma once
// FinishCoalescingStream: an AsyncIoStream for one Cap'n Proto connection
// that holds back the RPC `Finish` messages it is asked to write until the
// next message goes out (in the same writev), or until `hold` has passed.
//
// Why: Cap'n Proto 0.9 sends a Finish for every call once its caller is
// done with the answer. It is a separate ~40-byte message, and it usually
// arrives when its receiver has just gone back to sleep, so it costs the
// receiver a wake-up (a context switch and ~40-75 µs of CPU on the VMs we
// measure on; docs/performance.md, "Round two, third sitting") for nothing
// it must act on at once: it only frees the answer's table entry, or
// cancels a call the caller gave up on. At one client every transfer sent
// three of them (the client's for its submit, the coordinator's for each
// prepare); held back, they ride with the next call to the same peer (the
// next submit, the commit that follows the vote).
//
// Everything else is written at once, after whatever is held, in order:
// writes to the inner stream form one chain, so a held Finish flushed by
// the timer never overlaps a message written meanwhile. Socket calls go
// straight through.
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
// Thread: the connection's event loop. The inner stream must outlive this.

#include <cstdint>

#include <kj/async-io.h>
#include <kj/timer.h>
#include <kj/vector.h>

namespace keel {

class FinishCoalescingStream final : public kj::AsyncIoStream {
 public:
  FinishCoalescingStream(kj::AsyncIoStream& inner, kj::Timer& timer, kj::Duration hold);
  ~FinishCoalescingStream() noexcept;

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
    std::uint64_t held = 0;          // Finish messages held back
    std::uint64_t rodeAlong = 0;     // of those, written with a later message
    std::uint64_t timerFlushes = 0;  // writes of held messages alone, after `hold`
    std::uint64_t reads = 0;         // tryRead calls answered
    std::uint64_t innerReads = 0;    // of those, reads of the inner stream they needed
  };
  static constexpr std::size_t kReadBuffer = 8192;
  const Counts& counts() const { return counts_; }

  // True if `pieces` (as capnp::writeMessage hands them: the segment
  // table, then the segments) are exactly one RPC Finish message.
  static bool isFinish(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces);

 private:
  // Writes what is held and then `pieces` (kept alive by the caller until
  // the returned promise resolves) in one write to the inner stream.
  kj::Promise<void> writeNow(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces);
  void armTimer();
  kj::Promise<void> timerLoop();
  void flushHeldAlone();  // the timer's: what is held goes out on its own
  // A read with nothing buffered: into the read buffer, then handed on.
  kj::Promise<size_t> readInner(kj::byte* out, size_t minBytes, size_t maxBytes);

  kj::AsyncIoStream& inner_;
  kj::Timer& timer_;
  const kj::Duration hold_;
  kj::Vector<kj::byte> held_;  // held Finish messages, whole, in order
  std::uint64_t heldMessages_ = 0;
  bool writing_ = false;                       // a write through writeNow is in flight
  bool flushing_ = false;                      // the timer's write of held messages is in flight
  kj::Maybe<kj::ForkedPromise<void>> flushed_;  // resolves when that write is done
  kj::Maybe<kj::Promise<void>> timerArmed_;    // armed while something is held
  bool timerRunning_ = false;
  kj::Array<kj::byte> readBuf_;  // allocated at the first small read
  std::size_t readBegin_ = 0, readEnd_ = 0;  // what is buffered and not yet handed on
  Counts counts_;
};

}  // namespace keel
