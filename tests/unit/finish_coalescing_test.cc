// FinishCoalescingStream: a Cap'n Proto RPC Finish message is held back and
// rides with the next message to the same peer, in order; alone, it goes
// out after the hold; nothing else is ever held.

#include "common/finish_coalescing.h"

#include <capnp/message.h>
#include <capnp/rpc.capnp.h>
#include <capnp/serialize-async.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <kj/async-io.h>

#include <string>

namespace keel {
namespace {

constexpr auto kHold = 50 * kj::MILLISECONDS;

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

class FinishCoalescingTest : public ::testing::Test {
 protected:
  ~FinishCoalescingTest() noexcept override {}
  kj::AsyncIoContext io = kj::setupAsyncIo();
  kj::TwoWayPipe pipe = io.provider->newTwoWayPipe();
  FinishCoalescingStream out{*pipe.ends[0], io.provider->getTimer(), kHold};

  // Writes `m` the way TwoPartyVatNetwork does (segment table, then the
  // segments, one write call).
  void send(capnp::MessageBuilder& m) { capnp::writeMessage(out, m).wait(io.waitScope); }
  void sendFlat(const kj::Array<capnp::word>& flat) {
    capnp::FlatArrayMessageReader r(flat);
    capnp::MallocMessageBuilder copy;
    copy.setRoot(r.getRoot<capnp::rpc::Message>());
    send(copy);
  }
  // What the peer can read within `wait` (everything written so far).
  std::string readWithin(kj::Duration wait) {
    std::string got;
    char buf[4096];
    auto deadline = io.provider->getTimer().now() + wait;
    for (;;) {
      auto read = pipe.ends[1]->tryRead(buf, 1, sizeof(buf));
      auto timeout = io.provider->getTimer().atTime(deadline).then([]() -> size_t { return 0; });
      size_t n = read.exclusiveJoin(kj::mv(timeout)).wait(io.waitScope);
      if (n == 0) return got;
      got.append(buf, n);
    }
  }
};

TEST_F(FinishCoalescingTest, RecognisesOnlyAFinish) {
  auto finish = finishMessage(7);
  auto call = callMessage(7);
  auto piecesOf = [](const kj::Array<capnp::word>& flat) {
    // As capnp::writeMessage hands them over: the 8-byte table, the segment.
    auto b = flat.asBytes();
    return kj::heapArray<kj::ArrayPtr<const kj::byte>>({b.slice(0, 8), b.slice(8, b.size())});
  };
  EXPECT_TRUE(FinishCoalescingStream::isFinish(piecesOf(finish)));
  EXPECT_FALSE(FinishCoalescingStream::isFinish(piecesOf(call)));
  auto whole = finish.asBytes();
  EXPECT_FALSE(FinishCoalescingStream::isFinish(kj::heapArray<kj::ArrayPtr<const kj::byte>>({whole})));
}

TEST_F(FinishCoalescingTest, AFinishRidesWithTheNextMessageInOrder) {
  auto finish = finishMessage(3);
  auto call = callMessage(4);
  sendFlat(finish);
  EXPECT_EQ(readWithin(5 * kj::MILLISECONDS), "") << "the Finish went out on its own at once";
  sendFlat(call);
  EXPECT_EQ(readWithin(5 * kj::MILLISECONDS), bytesOf(finish) + bytesOf(call));
  EXPECT_EQ(out.counts().held, 1u);
  EXPECT_EQ(out.counts().rodeAlong, 1u);
  EXPECT_EQ(out.counts().timerFlushes, 0u);
  // Nothing else is held: a call alone goes out at once.
  sendFlat(call);
  EXPECT_EQ(readWithin(5 * kj::MILLISECONDS), bytesOf(call));
}

TEST_F(FinishCoalescingTest, AFinishAloneGoesOutAfterTheHold) {
  auto a = finishMessage(1), b = finishMessage(2);
  sendFlat(a);
  sendFlat(b);
  auto start = io.provider->getTimer().now();
  std::string got = readWithin(10 * kHold);
  EXPECT_EQ(got, bytesOf(a) + bytesOf(b));
  EXPECT_GE(io.provider->getTimer().now() - start, kHold - 5 * kj::MILLISECONDS);
  EXPECT_EQ(out.counts().held, 2u);
  EXPECT_EQ(out.counts().rodeAlong, 0u);
  EXPECT_EQ(out.counts().timerFlushes, 1u);
  // And the stream goes on as before.
  auto call = callMessage(9);
  sendFlat(call);
  EXPECT_EQ(readWithin(5 * kj::MILLISECONDS), bytesOf(call));
}

}  // namespace
}  // namespace keel
