// WriteCoalescingStream: what one wake-up of the event loop writes goes out
// in one write, in order, at the end of the wake-up; a Cap'n Proto RPC
// Finish message is held back and rides with the next message to the same
// peer, in order; alone, it goes out after the hold. Reads are buffered.

#include "common/write_coalescing.h"

#include <capnp/message.h>
#include <capnp/rpc.capnp.h>
#include <capnp/serialize-async.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <kj/async-io.h>

#include <string>
#include <vector>

namespace keel {
namespace {

// Long enough that a stalled machine (an ASan build on two busy cores) does
// not reach the hold between two statements of a test by accident.
constexpr auto kHold = 200 * kj::MILLISECONDS;

kj::Array<capnp::word> finishMessage(std::uint32_t question) {
  capnp::MallocMessageBuilder m;
  m.initRoot<capnp::rpc::Message>().initFinish().setQuestionId(question);
  return capnp::messageToFlatArray(m);
}

kj::Array<capnp::word> callMessage(std::uint32_t question) {
  capnp::MallocMessageBuilder m;
  auto call = m.initRoot<capnp::rpc::Message>().initCall();
  call.setQuestionId(question);
  call.setInterfaceId(0x1234);
  call.setMethodId(2);
  return capnp::messageToFlatArray(m);
}

std::string bytesOf(const kj::Array<capnp::word>& flat) {
  auto b = flat.asBytes();
  return std::string(b.begin(), b.end());
}

// An inner stream whose writes complete only when the test says so: it
// records each write as it is issued, so a test sees what reached the
// socket and in which order while an earlier write is still in flight.
class GatedStream final : public kj::AsyncIoStream {
 public:
  std::vector<std::string> issued;  // one entry per write call, in order
  kj::Vector<kj::Own<kj::PromiseFulfiller<void>>> pending;

  kj::Promise<size_t> tryRead(void*, size_t, size_t) override { return kj::NEVER_DONE; }
  kj::Promise<void> write(const void* buffer, size_t size) override {
    issued.emplace_back(static_cast<const char*>(buffer), size);
    return gate();
  }
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    std::string all;
    for (auto p : pieces) all.append(reinterpret_cast<const char*>(p.begin()), p.size());
    issued.push_back(std::move(all));
    return gate();
  }
  kj::Promise<void> whenWriteDisconnected() override { return kj::NEVER_DONE; }
  void shutdownWrite() override { shutDownAfter = issued.size(); }
  std::size_t shutDownAfter = SIZE_MAX;  // writes issued when shutdownWrite came

 private:
  kj::Promise<void> gate() {
    auto paf = kj::newPromiseAndFulfiller<void>();
    pending.add(kj::mv(paf.fulfiller));
    return kj::mv(paf.promise);
  }
};

class WriteCoalescingTest : public ::testing::Test {
 protected:
  ~WriteCoalescingTest() noexcept override {}
  kj::AsyncIoContext io = kj::setupAsyncIo();
  kj::TwoWayPipe pipe = io.provider->newTwoWayPipe();
  WriteCoalescingStream out{*pipe.ends[0], io.provider->getTimer(), kHold};

  // Writes `m` the way TwoPartyVatNetwork does (segment table, then the
  // segments, one write call).
  void send(capnp::MessageBuilder& m) { capnp::writeMessage(out, m).wait(io.waitScope); }
  void sendFlat(const kj::Array<capnp::word>& flat) {
    capnp::FlatArrayMessageReader r(flat);
    capnp::MallocMessageBuilder copy;
    copy.setRoot(r.getRoot<capnp::rpc::Message>());
    send(copy);
  }
  // Reads until `n` bytes have come or `limit` has passed; returns what came.
  // A test that expects bytes waits for them instead of guessing how soon
  // a busy machine delivers them; whether they went out at once or after
  // the hold is read from the stream's counts, not from a clock.
  std::string readBytes(std::size_t n, kj::Duration limit = 5 * kj::SECONDS) {
    std::string got;
    char buf[4096];
    auto deadline = io.provider->getTimer().now() + limit;
    while (got.size() < n) {
      auto read = pipe.ends[1]->tryRead(buf, 1, sizeof(buf));
      auto timeout = io.provider->getTimer().atTime(deadline).then([]() -> size_t { return 0; });
      size_t got_now = read.exclusiveJoin(kj::mv(timeout)).wait(io.waitScope);
      if (got_now == 0) break;
      got.append(buf, got_now);
    }
    return got;
  }
};

TEST_F(WriteCoalescingTest, RecognisesOnlyAFinish) {
  auto finish = finishMessage(7);
  auto call = callMessage(7);
  auto piecesOf = [](const kj::Array<capnp::word>& flat) {
    // As capnp::writeMessage hands them over: the 8-byte table, the segment.
    auto b = flat.asBytes();
    return kj::heapArray<kj::ArrayPtr<const kj::byte>>({b.slice(0, 8), b.slice(8, b.size())});
  };
  EXPECT_TRUE(WriteCoalescingStream::isFinish(piecesOf(finish)));
  EXPECT_FALSE(WriteCoalescingStream::isFinish(piecesOf(call)));
  auto whole = finish.asBytes();
  EXPECT_FALSE(WriteCoalescingStream::isFinish(kj::heapArray<kj::ArrayPtr<const kj::byte>>({whole})));
}

TEST_F(WriteCoalescingTest, AFinishRidesWithTheNextMessageInOrder) {
  auto finish = finishMessage(3);
  auto call = callMessage(4);
  sendFlat(finish);
  EXPECT_EQ(out.counts().innerWrites, 0u) << "the Finish went out on its own at once";
  EXPECT_EQ(out.counts().held, 1u);
  sendFlat(call);
  std::string both = bytesOf(finish) + bytesOf(call);
  EXPECT_EQ(readBytes(both.size()), both);
  EXPECT_EQ(out.counts().innerWrites, 1u);
  EXPECT_EQ(out.counts().rodeAlong, 1u);
  EXPECT_EQ(out.counts().timerFlushes, 0u);
  // Nothing else is held: a call alone goes out at once, not by the timer.
  sendFlat(call);
  EXPECT_EQ(readBytes(bytesOf(call).size()), bytesOf(call));
  EXPECT_EQ(out.counts().held, 1u);
  EXPECT_EQ(out.counts().innerWrites, 2u);
  EXPECT_EQ(out.counts().timerFlushes, 0u);
}

TEST_F(WriteCoalescingTest, AFinishAloneGoesOutAfterTheHold) {
  auto a = finishMessage(1), b = finishMessage(2);
  sendFlat(a);
  sendFlat(b);
  auto start = io.provider->getTimer().now();  // the clock the hold is timed on
  std::string both = bytesOf(a) + bytesOf(b);
  EXPECT_EQ(readBytes(both.size()), both);
  EXPECT_GE(io.provider->getTimer().now() - start, kHold - 5 * kj::MILLISECONDS)
      << "the held Finish messages went out before the hold";
  EXPECT_EQ(out.counts().held, 2u);
  EXPECT_EQ(out.counts().rodeAlong, 0u);
  EXPECT_EQ(out.counts().timerFlushes, 1u);
  // And the stream goes on as before: a call goes out at once, not held.
  auto call = callMessage(9);
  sendFlat(call);
  EXPECT_EQ(readBytes(bytesOf(call).size()), bytesOf(call));
  EXPECT_EQ(out.counts().held, 2u);
  EXPECT_EQ(out.counts().timerFlushes, 1u);
}

// The stream over a GatedStream, nothing written yet.
class WriteCoalescingTurns : public ::testing::Test {
 protected:
  ~WriteCoalescingTurns() noexcept override {}
  kj::AsyncIoContext io = kj::setupAsyncIo();
  GatedStream inner;
  WriteCoalescingStream out{inner, io.provider->getTimer(), kHold};

  // Writes `flat` as Cap'n Proto would; the promise is its write's.
  kj::Promise<void> write(const kj::Array<capnp::word>& flat) {
    capnp::FlatArrayMessageReader r(flat);
    auto m = kj::heap<capnp::MallocMessageBuilder>();
    m->setRoot(r.getRoot<capnp::rpc::Message>());
    return capnp::writeMessage(out, *m).attach(kj::mv(m)).eagerlyEvaluate(nullptr);
  }
};

// The stream over a GatedStream, with a Finish held and then written alone
// by the timer, that write still in flight.
class WriteCoalescingGated : public WriteCoalescingTurns {
 protected:
  kj::Array<capnp::word> finish = finishMessage(5);
  kj::Array<capnp::word> call = callMessage(6);

  void SetUp() override {
    write(finish).wait(io.waitScope);  // held: resolves at once
    ASSERT_TRUE(inner.issued.empty());
    io.provider->getTimer().afterDelay(kHold + 20 * kj::MILLISECONDS).wait(io.waitScope);
    ASSERT_EQ(inner.issued.size(), 1u);
    EXPECT_EQ(inner.issued[0], bytesOf(finish));
    EXPECT_EQ(out.counts().timerFlushes, 1u);
  }
  // Writes the call; it must not reach the socket while the flush is in flight.
  kj::Promise<void> writeCall() {
    auto p = write(call);
    io.waitScope.poll();
    EXPECT_EQ(inner.issued.size(), 1u) << "the call overtook the timer's flush still in flight";
    return p;
  }
};

// A message written while the timer's write of held Finish messages is
// still in flight is taken at once and goes out after it: the two never
// overlap and keep their order.
TEST_F(WriteCoalescingGated, AWriteGoesOutAfterTheTimersFlushInFlight) {
  auto callWritten = writeCall();
  EXPECT_TRUE(callWritten.poll(io.waitScope)) << "taken into the pending bytes at once";
  inner.pending[0]->fulfill();  // the flush completes
  io.waitScope.poll();
  ASSERT_EQ(inner.issued.size(), 2u);
  EXPECT_EQ(inner.issued[1], bytesOf(call)) << "nothing held any more: the call goes alone";
  inner.pending[1]->fulfill();
  io.waitScope.poll();
}

// A timer flush that fails (the connection is going) neither throws out of
// the event loop nor swallows what comes after: the next write fails with
// the flush's failure, and nothing more is handed to the socket.
TEST_F(WriteCoalescingGated, AFailedWriteFailsTheWritesAfterIt) {
  auto callWritten = writeCall();
  inner.pending[0]->reject(KJ_EXCEPTION(DISCONNECTED, "peer went away"));
  io.waitScope.poll();
  EXPECT_EQ(inner.issued.size(), 1u) << "written after a failed write";
  auto again = writeCall();
  ASSERT_TRUE(again.poll(io.waitScope));
  auto what = kj::runCatchingExceptions([&]() { again.wait(io.waitScope); });
  KJ_IF_MAYBE(e, what) {
    EXPECT_EQ(e->getType(), kj::Exception::Type::DISCONNECTED);
  } else {
    ADD_FAILURE() << "a write after a failed write succeeded";
  }
}

// Three messages written before the loop waits again go out in one write
// to the socket, in the order written, once the loop has nothing else to
// do; each write resolves at once.
TEST_F(WriteCoalescingTurns, WhatOneWakeUpWritesGoesOutInOneWrite) {
  auto a = callMessage(1), b = callMessage(2), c = callMessage(3);
  auto pa = write(a), pb = write(b), pc = write(c);
  EXPECT_TRUE(inner.issued.empty()) << "written before the wake-up ended";
  io.waitScope.poll();
  ASSERT_EQ(inner.issued.size(), 1u);
  EXPECT_EQ(inner.issued[0], bytesOf(a) + bytesOf(b) + bytesOf(c));
  EXPECT_TRUE(pa.poll(io.waitScope));
  EXPECT_TRUE(pc.poll(io.waitScope));
  EXPECT_EQ(out.counts().messages, 3u);
  EXPECT_EQ(out.counts().innerWrites, 1u);
}

// While a write is in flight nothing else is handed to the socket; what
// was written meanwhile goes out together when it completes.
TEST_F(WriteCoalescingTurns, WhatIsWrittenWhileAWriteIsInFlightGoesOutTogetherAfterIt) {
  auto a = callMessage(1), b = callMessage(2), c = callMessage(3);
  auto pa = write(a);
  io.waitScope.poll();
  ASSERT_EQ(inner.issued.size(), 1u);
  auto pb = write(b);
  io.waitScope.poll();
  auto pc = write(c);
  io.waitScope.poll();
  EXPECT_EQ(inner.issued.size(), 1u) << "a second write overlapped the one in flight";
  inner.pending[0]->fulfill();
  io.waitScope.poll();
  ASSERT_EQ(inner.issued.size(), 2u);
  EXPECT_EQ(inner.issued[1], bytesOf(b) + bytesOf(c));
}

// A Finish written after a message still pending is not held: it goes
// behind that message (it must never overtake a call made on the answer
// it finishes).
TEST_F(WriteCoalescingTurns, AFinishNeverOvertakesAPendingMessage) {
  auto call = callMessage(4), finish = finishMessage(4);
  auto p1 = write(call), p2 = write(finish);
  io.waitScope.poll();
  ASSERT_EQ(inner.issued.size(), 1u);
  EXPECT_EQ(inner.issued[0], bytesOf(call) + bytesOf(finish));
  EXPECT_EQ(out.counts().held, 0u);
  // With nothing pending, a Finish is held, and goes in front of the next
  // message (it was written first).
  inner.pending[0]->fulfill();
  io.waitScope.poll();
  auto later = callMessage(5);
  auto p3 = write(finish);
  io.waitScope.poll();
  EXPECT_EQ(inner.issued.size(), 1u) << "a Finish went out on its own at once";
  auto p4 = write(later);
  io.waitScope.poll();
  ASSERT_EQ(inner.issued.size(), 2u);
  EXPECT_EQ(inner.issued[1], bytesOf(finish) + bytesOf(later));
  EXPECT_EQ(out.counts().rodeAlong, 1u);
}

// Past kMaxPending bytes a write resolves only once the socket took them:
// Cap'n Proto writes its next message only then, so a peer that does not
// read cannot make the stream buffer without bound.
TEST_F(WriteCoalescingTurns, PastTheLimitAWriteWaitsUntilWritten) {
  std::string big(WriteCoalescingStream::kMaxPending + 1, 'b');
  auto small = out.write("s", 1);
  EXPECT_TRUE(small.poll(io.waitScope));
  io.waitScope.poll();  // the wake-up ends
  ASSERT_EQ(inner.issued.size(), 1u);
  auto large = out.write(big.data(), big.size());
  io.waitScope.poll();
  EXPECT_FALSE(large.poll(io.waitScope)) << "resolved before the socket took it";
  inner.pending[0]->fulfill();
  io.waitScope.poll();
  ASSERT_EQ(inner.issued.size(), 2u);
  EXPECT_EQ(inner.issued[1], big);
  EXPECT_FALSE(large.poll(io.waitScope));
  inner.pending[1]->fulfill();
  EXPECT_TRUE(large.poll(io.waitScope));
  EXPECT_EQ(out.counts().waited, 1u);
}

// shutdownWrite() hands what is pending (Cap'n Proto's Abort) to the
// socket at once, and shuts the socket's write side only after it.
TEST_F(WriteCoalescingTurns, ShutdownWriteWritesWhatIsPendingFirst) {
  auto abortLike = callMessage(9);
  auto p = write(abortLike);
  out.shutdownWrite();
  ASSERT_EQ(inner.issued.size(), 1u) << "not handed on at once";
  EXPECT_EQ(inner.issued[0], bytesOf(abortLike));
  EXPECT_EQ(inner.shutDownAfter, SIZE_MAX) << "shut before the write completed";
  inner.pending[0]->fulfill();
  io.waitScope.poll();
  EXPECT_EQ(inner.shutDownAfter, 1u);
}

// The read side: what the socket holds is read once and handed out to the
// small reads that Cap'n Proto makes (first word, then the rest), byte for
// byte and in order; nothing is waited for beyond what a read asked for.
// The bytes are put on the pipe directly, not through `out`.
class WriteCoalescingReads : public WriteCoalescingTest {
 protected:
  WriteCoalescingStream in{*pipe.ends[1], io.provider->getTimer(), kHold};

  void put(const std::string& bytes) { pipe.ends[0]->write(bytes.data(), bytes.size()).wait(io.waitScope); }
  std::string read(size_t minBytes, size_t maxBytes) {
    std::string buf(maxBytes, '\0');
    size_t n = in.tryRead(buf.data(), minBytes, maxBytes).wait(io.waitScope);
    buf.resize(n);
    return buf;
  }
};

TEST_F(WriteCoalescingReads, ThreeMessagesInOneSocketReadAreReadWhole) {
  std::string all = bytesOf(callMessage(1)) + bytesOf(finishMessage(2)) + bytesOf(callMessage(3));
  put(all);
  for (std::uint32_t q : {1u, 2u, 3u}) {
    auto msg = capnp::readMessage(in).wait(io.waitScope);
    auto root = msg->getRoot<capnp::rpc::Message>();
    if (q == 2) {
      ASSERT_EQ(root.which(), capnp::rpc::Message::FINISH);
      EXPECT_EQ(root.getFinish().getQuestionId(), 2u);
    } else {
      ASSERT_EQ(root.which(), capnp::rpc::Message::CALL);
      EXPECT_EQ(root.getCall().getQuestionId(), q);
    }
  }
  // Cap'n Proto asked six times (first word, then the rest, per message);
  // the socket was read once.
  EXPECT_EQ(in.counts().reads, 6u);
  EXPECT_EQ(in.counts().innerReads, 1u);
}

TEST_F(WriteCoalescingReads, AReadLongerThanWhatIsBufferedTakesThatAndWaitsForTheRestOnly) {
  put("0123456789");
  EXPECT_EQ(read(4, 4), "0123");
  std::string buf(10, '\0');
  auto rest = in.tryRead(buf.data(), 10, 10);
  EXPECT_FALSE(rest.poll(io.waitScope));  // 6 are here, 10 were asked for
  put("abcd");
  EXPECT_EQ(rest.wait(io.waitScope), 10u);
  EXPECT_EQ(buf, "456789abcd");
  // Nothing more is buffered, and nothing more than asked was waited for.
  put("Z");
  EXPECT_EQ(read(1, 100), "Z");
}

TEST_F(WriteCoalescingReads, AReadReturnsAsSoonAsItsMinimumIsThere) {
  put("ab");
  EXPECT_EQ(read(1, 1000), "ab");  // not held back waiting for 1000
  std::string buf(8, '\0');
  auto p = in.tryRead(buf.data(), 1, 8);
  EXPECT_FALSE(p.poll(io.waitScope));
  put("c");
  EXPECT_EQ(p.wait(io.waitScope), 1u);
  EXPECT_EQ(buf[0], 'c');
}

TEST_F(WriteCoalescingReads, ALargeReadGoesStraightIntoTheCallersBuffer) {
  std::string big(3 * WriteCoalescingStream::kReadBuffer, 'x');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = char('a' + i % 26);
  auto writing = pipe.ends[0]->write(big.data(), big.size());
  std::string got(big.size(), '\0');
  EXPECT_EQ(in.tryRead(got.data(), got.size(), got.size()).wait(io.waitScope), big.size());
  writing.wait(io.waitScope);
  EXPECT_EQ(got, big);
}

TEST_F(WriteCoalescingReads, TheEndOfTheStreamComesAfterWhatWasBuffered) {
  put("hello");
  EXPECT_EQ(read(2, 2), "he");
  pipe.ends[0]->shutdownWrite();
  EXPECT_EQ(read(8, 8), "llo");  // fewer than asked: the end
  EXPECT_EQ(read(1, 8), "");
}

}  // namespace
}  // namespace keel
