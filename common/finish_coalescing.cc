#include "common/finish_coalescing.h"

#include <capnp/message.h>
#include <capnp/rpc.capnp.h>

#include <cstdint>
#include <cstring>

namespace keel {

namespace {

// Past this much held, a Finish goes out at once (with what is held).
constexpr std::size_t kMaxHeldBytes = 4096;

}  // namespace

FinishCoalescingStream::FinishCoalescingStream(kj::AsyncIoStream& inner, kj::Timer& timer, kj::Duration hold)
    : inner_(inner), timer_(timer), hold_(hold) {}

FinishCoalescingStream::~FinishCoalescingStream() noexcept {}

bool FinishCoalescingStream::isFinish(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) {
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

kj::Promise<size_t> FinishCoalescingStream::tryRead(void* buffer, size_t minBytes, size_t maxBytes) {
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

kj::Promise<size_t> FinishCoalescingStream::readInner(kj::byte* out, size_t minBytes, size_t maxBytes) {
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

kj::Promise<void> FinishCoalescingStream::write(const void* buffer, size_t size) {
  auto one = kj::heapArray<kj::ArrayPtr<const kj::byte>>(1);
  one[0] = kj::arrayPtr(static_cast<const kj::byte*>(buffer), size);
  auto p = write(one.asPtr());
  return p.attach(kj::mv(one));
}

kj::Promise<void> FinishCoalescingStream::write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) {
  if (isFinish(pieces)) {
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
  KJ_IF_MAYBE(f, flushed_) {
    if (flushing_) {
      // The timer's write of held messages is still going: after it.
      return f->addBranch().then([this, pieces]() { return writeNow(pieces); });
    }
  }
  return writeNow(pieces);
}

kj::Promise<void> FinishCoalescingStream::writeNow(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) {
  if (held_.empty()) {
    writing_ = true;
    return inner_.write(pieces).attach(kj::defer([this]() { writing_ = false; }));
  }
  auto held = held_.releaseAsArray();
  held_ = kj::Vector<kj::byte>();
  counts_.rodeAlong += heldMessages_;
  heldMessages_ = 0;
  timerArmed_ = nullptr;  // nothing held any more (never called from the timer's own callback)
  timerRunning_ = false;
  auto all = kj::heapArray<kj::ArrayPtr<const kj::byte>>(pieces.size() + 1);
  all[0] = held.asPtr();
  for (std::size_t i = 0; i < pieces.size(); ++i) all[i + 1] = pieces[i];
  writing_ = true;
  auto p = inner_.write(all.asPtr());
  return p.attach(kj::mv(held), kj::mv(all), kj::defer([this]() { writing_ = false; }));
}

void FinishCoalescingStream::armTimer() {
  if (timerRunning_) return;
  timerRunning_ = true;
  // Replaces only a finished (or never armed) timer: never the promise
  // whose callback is running.
  timerArmed_ = timerLoop().then([this]() { timerRunning_ = false; }).eagerlyEvaluate(nullptr);
}

kj::Promise<void> FinishCoalescingStream::timerLoop() {
  return timer_.afterDelay(hold_).then([this]() -> kj::Promise<void> {
    if (held_.empty()) return kj::READY_NOW;
    // A message on its way takes what is held along; if none comes, the
    // next round writes it alone.
    if (writing_ || flushing_) return timerLoop();
    flushHeldAlone();
    return kj::READY_NOW;
  });
}

void FinishCoalescingStream::flushHeldAlone() {
  auto held = held_.releaseAsArray();
  held_ = kj::Vector<kj::byte>();
  heldMessages_ = 0;
  ++counts_.timerFlushes;
  flushing_ = true;
  auto p = inner_.write(held.begin(), held.size());
  flushed_ = p.attach(kj::mv(held))
                 .then([this]() { flushing_ = false; },
                       [this](kj::Exception&&) {
                         // The connection is failing; its reads will say so.
                         flushing_ = false;
                       })
                 .fork();
}

kj::Promise<void> FinishCoalescingStream::whenWriteDisconnected() { return inner_.whenWriteDisconnected(); }

void FinishCoalescingStream::shutdownWrite() {
  // Held Finish messages are dropped: the peer frees its answers when the
  // connection ends anyway.
  timerArmed_ = nullptr;
  timerRunning_ = false;
  inner_.shutdownWrite();
}

void FinishCoalescingStream::abortRead() {
  readBegin_ = readEnd_ = 0;  // nobody reads on
  inner_.abortRead();
}

void FinishCoalescingStream::getsockopt(int level, int option, void* value, kj::uint* length) {
  inner_.getsockopt(level, option, value, length);
}

void FinishCoalescingStream::setsockopt(int level, int option, const void* value, kj::uint length) {
  inner_.setsockopt(level, option, value, length);
}

void FinishCoalescingStream::getsockname(struct sockaddr* addr, kj::uint* length) {
  inner_.getsockname(addr, length);
}

void FinishCoalescingStream::getpeername(struct sockaddr* addr, kj::uint* length) {
  inner_.getpeername(addr, length);
}

}  // namespace keel
