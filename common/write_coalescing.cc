#include "common/write_coalescing.h"

#include <capnp/message.h>
#include <capnp/rpc.capnp.h>

#include <cstdint>
#include <cstring>

namespace keel {

namespace {

// Past this much held, a Finish goes out at once (with what is held).
constexpr std::size_t kMaxHeldBytes = 4096;

// `to` takes what `from` holds; `from` is left empty with `to`'s old
// capacity, kept up to the read buffer's size (a connection that once
// wrote a large batch does not hold its size for life; a large batch
// allocates anew, which is small beside writing it).
void swapIn(kj::Vector<kj::byte>& to, kj::Vector<kj::byte>& from) {
  constexpr std::size_t kKeepCapacity = WriteCoalescingStream::kReadBuffer;
  kj::Vector<kj::byte> old = kj::mv(to);
  to = kj::mv(from);
  old.clear();
  from = old.capacity() > kKeepCapacity ? kj::Vector<kj::byte>() : kj::mv(old);
}

}  // namespace

WriteCoalescingStream::WriteCoalescingStream(kj::AsyncIoStream& inner, kj::Timer& timer, kj::Duration hold)
    : inner_(inner), timer_(timer), hold_(hold), tasks_(*this) {}

WriteCoalescingStream::~WriteCoalescingStream() noexcept {}

bool WriteCoalescingStream::isFinish(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) {
  // One segment: an 8-byte table (count - 1 = 0, then the size in words)
  // and the segment itself, a few words for a Finish.
  if (pieces.size() != 2 || pieces[0].size() != 8) return false;
  auto seg = pieces[1];
  if (seg.size() == 0 || seg.size() > 64 || seg.size() % sizeof(capnp::word) != 0) return false;
  if (reinterpret_cast<std::uintptr_t>(seg.begin()) % alignof(capnp::word) != 0) return false;
  std::uint32_t table[2];
  std::memcpy(table, pieces[0].begin(), sizeof(table));
  if (table[0] != 0 || table[1] != seg.size() / sizeof(capnp::word)) return false;
  try {
    kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(seg.begin()),
                                          seg.size() / sizeof(capnp::word));
    capnp::SegmentArrayMessageReader reader(kj::arrayPtr(&words, 1));
    return reader.getRoot<capnp::rpc::Message>().which() == capnp::rpc::Message::FINISH;
  } catch (const kj::Exception&) {
    return false;  // not ours to judge: written as it is
  }
}

kj::Promise<size_t> WriteCoalescingStream::tryRead(void* buffer, size_t minBytes, size_t maxBytes) {
  ++counts_.reads;
  auto* out = static_cast<kj::byte*>(buffer);
  std::size_t have = readEnd_ - readBegin_;
  if (have == 0) return readInner(out, minBytes, maxBytes);
  std::size_t n = kj::min(have, maxBytes);
  std::memcpy(out, readBuf_.begin() + readBegin_, n);
  readBegin_ += n;
  if (readBegin_ == readEnd_) readBegin_ = readEnd_ = 0;
  if (n >= minBytes) return n;
  // Part of it was here; the rest comes from the socket (the buffer is
  // empty now). Fewer than asked means the end of the stream, as usual.
  return readInner(out + n, minBytes - n, maxBytes - n).then([n](size_t more) { return n + more; });
}

kj::Promise<size_t> WriteCoalescingStream::readInner(kj::byte* out, size_t minBytes, size_t maxBytes) {
  ++counts_.innerReads;
  if (maxBytes >= kReadBuffer) return inner_.tryRead(out, minBytes, maxBytes);
  if (readBuf_.size() == 0) readBuf_ = kj::heapArray<kj::byte>(kReadBuffer);
  return inner_.tryRead(readBuf_.begin(), minBytes, readBuf_.size()).then([this, out, maxBytes](size_t got) {
    std::size_t n = kj::min(got, maxBytes);
    std::memcpy(out, readBuf_.begin(), n);
    if (n < got) {
      readBegin_ = n;
      readEnd_ = got;
    }
    return n;
  });
}

kj::Promise<void> WriteCoalescingStream::write(const void* buffer, size_t size) {
  kj::ArrayPtr<const kj::byte> one[1] = {kj::arrayPtr(static_cast<const kj::byte*>(buffer), size)};
  return write(kj::arrayPtr(one, 1));
}

kj::Promise<void> WriteCoalescingStream::write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) {
  ++counts_.messages;
  KJ_IF_MAYBE(e, failed_) { return kj::cp(*e); }
  if (shutdownRequested_) return KJ_EXCEPTION(DISCONNECTED, "write after shutdownWrite");
  // A Finish is held only while nothing else waits to go out: one written
  // after a pending message goes behind it (a Finish must never overtake
  // a call made on the answer it finishes).
  if (pending_.empty() && isFinish(pieces)) {
    std::size_t n = 0;
    for (auto p : pieces) n += p.size();
    if (held_.size() + n <= kMaxHeldBytes) {
      for (auto p : pieces) held_.addAll(p);
      ++heldMessages_;
      ++counts_.held;
      armTimer();
      return kj::READY_NOW;
    }
  }
  for (auto p : pieces) pending_.addAll(p);
  scheduleWrite();
  if (pending_.size() <= kMaxPending) return kj::READY_NOW;
  ++counts_.waited;
  return whenPendingWritten();
}

kj::Promise<void> WriteCoalescingStream::whenPendingWritten() {
  if (pendingWrittenFork_ == nullptr) {
    auto paf = kj::newPromiseAndFulfiller<void>();
    pendingWritten_ = kj::mv(paf.fulfiller);
    pendingWrittenFork_ = paf.promise.fork();
  }
  return KJ_ASSERT_NONNULL(pendingWrittenFork_).addBranch();
}

void WriteCoalescingStream::scheduleWrite() {
  // A write in flight starts the next one when it completes.
  if (scheduled_ || inFlight_) return;
  scheduled_ = true;
  tasks_.add(kj::evalLast([this]() {
    scheduled_ = false;
    startWrite();
  }));
}

void WriteCoalescingStream::startWrite() {
  if (inFlight_ || failed_ != nullptr) return;
  if (pending_.empty()) {
    shutDownIfAsked();
    return;
  }
  // The buffers trade places, so each keeps its capacity from one write
  // to the next (no allocation per write once warm).
  // What is held goes first: it was written before anything pending.
  swapIn(outHeld_, held_);
  swapIn(out_, pending_);
  if (heldMessages_ != 0) {
    counts_.rodeAlong += heldMessages_;
    heldMessages_ = 0;
    timerArmed_ = nullptr;  // nothing held any more (never called from the timer's own callback)
    timerRunning_ = false;
  }
  std::size_t n = 0;
  if (!outHeld_.empty()) outPieces_[n++] = outHeld_.asPtr();
  outPieces_[n++] = out_.asPtr();
  inFlightWritten_ = kj::mv(pendingWritten_);
  pendingWritten_ = nullptr;
  pendingWrittenFork_ = nullptr;  // its branches keep what they wait on
  inFlight_ = true;
  ++counts_.innerWrites;
  auto p = kj::evalNow([&]() { return inner_.write(kj::arrayPtr(outPieces_, n)); });
  tasks_.add(p.then(
                     [this]() {
                       inFlight_ = false;
                       KJ_IF_MAYBE(f, inFlightWritten_) { (*f)->fulfill(); }
                       inFlightWritten_ = nullptr;
                       if (!pending_.empty()) {
                         scheduleWrite();
                       } else {
                         shutDownIfAsked();
                       }
                     },
                     [this](kj::Exception&& e) {
                       inFlight_ = false;
                       // The connection is failing; its reads will say so.
                       // Whoever waits for what was written hears it too.
                       KJ_IF_MAYBE(f, inFlightWritten_) { (*f)->reject(kj::cp(e)); }
                       inFlightWritten_ = nullptr;
                       KJ_IF_MAYBE(f, pendingWritten_) { (*f)->reject(kj::cp(e)); }
                       pendingWritten_ = nullptr;
                       pendingWrittenFork_ = nullptr;
                       pending_.clear();
                       failed_ = kj::mv(e);
                     }));
}

void WriteCoalescingStream::shutDownIfAsked() {
  if (!shutdownRequested_) return;
  shutdownRequested_ = false;
  inner_.shutdownWrite();
}

void WriteCoalescingStream::armTimer() {
  if (timerRunning_) return;
  timerRunning_ = true;
  // Replaces only a finished (or never armed) timer: never the promise
  // whose callback is running.
  timerArmed_ = timerLoop().then([this]() { timerRunning_ = false; }).eagerlyEvaluate(nullptr);
}

kj::Promise<void> WriteCoalescingStream::timerLoop() {
  return timer_.afterDelay(hold_).then([this]() -> kj::Promise<void> {
    if (held_.empty()) return kj::READY_NOW;
    // A write on its way takes what is held along; if none comes, the
    // next round writes it alone.
    if (inFlight_) return timerLoop();
    // Something pending: its write, queued for the end of this wake-up,
    // takes what is held along.
    if (!pending_.empty()) return kj::READY_NOW;
    // Alone: what is held becomes what is pending.
    swapIn(pending_, held_);
    heldMessages_ = 0;
    ++counts_.timerFlushes;
    startWrite();
    return kj::READY_NOW;
  });
}

void WriteCoalescingStream::taskFailed(kj::Exception&& e) {
  // A failed write has recorded its failure already; an evalLast that
  // threw would be a bug here, and fails the writes after it the same way.
  if (failed_ == nullptr) failed_ = kj::mv(e);
}

kj::Promise<void> WriteCoalescingStream::whenWriteDisconnected() { return inner_.whenWriteDisconnected(); }

void WriteCoalescingStream::shutdownWrite() {
  // Held Finish messages are dropped: the peer frees its answers when the
  // connection ends anyway.
  held_.clear();
  heldMessages_ = 0;
  timerArmed_ = nullptr;
  timerRunning_ = false;
  if (failed_ != nullptr || (pending_.empty() && !inFlight_)) {
    inner_.shutdownWrite();
    return;
  }
  // What is pending (Cap'n Proto's Abort, say) goes out first, and now
  // rather than at the end of the wake-up: the caller may drop the
  // connection soon after this returns.
  shutdownRequested_ = true;
  startWrite();
}

void WriteCoalescingStream::abortRead() {
  readBegin_ = readEnd_ = 0;  // nobody reads on
  inner_.abortRead();
}

void WriteCoalescingStream::getsockopt(int level, int option, void* value, kj::uint* length) {
  inner_.getsockopt(level, option, value, length);
}

void WriteCoalescingStream::setsockopt(int level, int option, const void* value, kj::uint length) {
  inner_.setsockopt(level, option, value, length);
}

void WriteCoalescingStream::getsockname(struct sockaddr* addr, kj::uint* length) {
  inner_.getsockname(addr, length);
}

void WriteCoalescingStream::getpeername(struct sockaddr* addr, kj::uint* length) {
  inner_.getpeername(addr, length);
}

}  // namespace keel
