// CallBatcher: calls of one turn leave together, batches are bounded, a
// failed batch fails only its own calls, and a caller that gave up is
// never sent.

#include "common/call_batcher.h"

#include <gtest/gtest.h>
#include <kj/async.h>
#include <kj/vector.h>

#include <string>
#include <tuple>
#include <vector>

namespace keel {
namespace {

// A peer whose answers the test releases by hand.
struct FakePeer {
  struct Sent {
    std::vector<int> items;
    kj::Own<kj::PromiseFulfiller<std::vector<int>>> answer;
  };
  std::vector<Sent> sent;
  std::function<void(std::size_t, int&&)> deliver;  // of the latest batch

  kj::Promise<std::vector<int>> send(std::vector<int>&& items) {
    auto paf = kj::newPromiseAndFulfiller<std::vector<int>>();
    sent.push_back(Sent{std::move(items), kj::mv(paf.fulfiller)});
    return kj::mv(paf.promise);
  }
  // Answers batch k with each item times ten.
  void answer(std::size_t k) {
    std::vector<int> out;
    for (int i : sent[k].items) out.push_back(i * 10);
    sent[k].answer->fulfill(std::move(out));
  }
};

using Batcher = CallBatcher<int, int>;

Batcher makeBatcher(FakePeer& peer, std::size_t maxItems, std::size_t maxInFlight, std::size_t maxWeight = 1 << 20) {
  Batcher::Options o;
  o.maxItems = maxItems;
  o.maxInFlight = maxInFlight;
  o.maxWeight = maxWeight;
  return Batcher(
      o,
      [&peer](std::vector<int>&& items, Batcher::Deliver deliver) {
        peer.deliver = std::move(deliver);
        return peer.send(std::move(items));
      },
      [](const int&) { return 10; });
}

// The event loop lives outside the fixture: kj::EventLoop's destructor may
// throw, which a gtest fixture's destructor may not.
kj::EventLoop& testLoop() {
  static kj::EventLoop loop;
  return loop;
}

class CallBatcherTest : public ::testing::Test {
 protected:
  kj::WaitScope ws_{testLoop()};

  // With one message allowed out: call 1 leaves, calls 2 and 3 queue.
  std::tuple<kj::Promise<int>, kj::Promise<int>, kj::Promise<int>> oneOutTwoQueued(FakePeer& peer, Batcher& b) {
    auto first = b.add(1);
    kj::evalLater([] {}).wait(ws_);
    EXPECT_EQ(peer.sent.size(), 1u);
    auto second = b.add(2);
    auto third = b.add(3);
    kj::evalLater([] {}).wait(ws_);
    EXPECT_EQ(peer.sent.size(), 1u);  // the one slot is taken
    EXPECT_EQ(b.queued(), 2u);
    return {kj::mv(first), kj::mv(second), kj::mv(third)};
  }
};

TEST_F(CallBatcherTest, CallsOfOneTurnLeaveInOneMessageAndEachGetsItsOwnReply) {
  FakePeer peer;
  auto b = makeBatcher(peer, 100, 2);
  kj::Vector<kj::Promise<int>> replies;
  for (int i = 1; i <= 5; ++i) replies.add(b.add(i));
  kj::evalLater([] {}).wait(ws_);  // let the turn end
  ASSERT_EQ(peer.sent.size(), 1u);
  EXPECT_EQ(peer.sent[0].items, (std::vector<int>{1, 2, 3, 4, 5}));
  peer.answer(0);
  auto out = kj::joinPromises(replies.releaseAsArray()).wait(ws_);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(out[i], (i + 1) * 10);
  EXPECT_EQ(b.batchesSent(), 1u);
  EXPECT_EQ(b.itemsSent(), 5u);
}

TEST_F(CallBatcherTest, WhileMaxInFlightBatchesAreOutNewCallsWaitAndLeaveTogether) {
  FakePeer peer;
  auto b = makeBatcher(peer, 100, 1);
  auto [first, second, third] = oneOutTwoQueued(peer, b);
  peer.answer(0);
  EXPECT_EQ(first.wait(ws_), 10);
  kj::evalLater([] {}).wait(ws_);
  ASSERT_EQ(peer.sent.size(), 2u);
  EXPECT_EQ(peer.sent[1].items, (std::vector<int>{2, 3}));
  peer.answer(1);
  EXPECT_EQ(second.wait(ws_), 20);
  EXPECT_EQ(third.wait(ws_), 30);
}

TEST_F(CallBatcherTest, NewLimitsApplyToCallsAlreadyQueued) {
  // What a participant asks for at connect (Participant.batching): one call
  // per message, more messages out at once.
  FakePeer peer;
  auto b = makeBatcher(peer, 100, 1);
  auto [first, second, third] = oneOutTwoQueued(peer, b);
  b.setLimits(1, 3);
  EXPECT_EQ(b.maxItems(), 1u);
  EXPECT_EQ(b.maxInFlight(), 3u);
  kj::evalLater([] {}).wait(ws_);
  // Without waiting for the first answer, each queued call in its own message.
  ASSERT_EQ(peer.sent.size(), 3u);
  EXPECT_EQ(peer.sent[1].items, (std::vector<int>{2}));
  EXPECT_EQ(peer.sent[2].items, (std::vector<int>{3}));
  for (std::size_t k = 0; k < 3; ++k) peer.answer(k);
  EXPECT_EQ(first.wait(ws_), 10);
  EXPECT_EQ(second.wait(ws_), 20);
  EXPECT_EQ(third.wait(ws_), 30);
  EXPECT_ANY_THROW(b.setLimits(0, 1));
}

TEST_F(CallBatcherTest, BatchesAreBoundedByItemsAndByWeight) {
  FakePeer peer;
  auto byItems = makeBatcher(peer, 3, 8);
  kj::Vector<kj::Promise<int>> replies;
  for (int i = 0; i < 7; ++i) replies.add(byItems.add(i));
  kj::evalLater([] {}).wait(ws_);
  ASSERT_EQ(peer.sent.size(), 3u);
  EXPECT_EQ(peer.sent[0].items.size(), 3u);
  EXPECT_EQ(peer.sent[1].items.size(), 3u);
  EXPECT_EQ(peer.sent[2].items.size(), 1u);
  for (std::size_t k = 0; k < 3; ++k) peer.answer(k);
  kj::joinPromises(replies.releaseAsArray()).wait(ws_);

  FakePeer peer2;
  auto byWeight = makeBatcher(peer2, 100, 8, 25);  // each item weighs 10: two per batch
  kj::Vector<kj::Promise<int>> more;
  for (int i = 0; i < 5; ++i) more.add(byWeight.add(i));
  kj::evalLater([] {}).wait(ws_);
  ASSERT_EQ(peer2.sent.size(), 3u);
  EXPECT_EQ(peer2.sent[0].items.size(), 2u);
  for (std::size_t k = 0; k < 3; ++k) peer2.answer(k);
  kj::joinPromises(more.releaseAsArray()).wait(ws_);
}

TEST_F(CallBatcherTest, AFailedBatchFailsOnlyItsOwnCalls) {
  FakePeer peer;
  auto b = makeBatcher(peer, 2, 8);
  auto a = b.add(1);
  auto c = b.add(2);
  auto d = b.add(3);  // second batch
  kj::evalLater([] {}).wait(ws_);
  ASSERT_EQ(peer.sent.size(), 2u);
  peer.sent[0].answer->reject(KJ_EXCEPTION(DISCONNECTED, "peer went away"));
  peer.answer(1);
  EXPECT_EQ(d.wait(ws_), 30);
  for (auto* p : {&a, &c}) {
    try {
      p->wait(ws_);
      FAIL() << "a call of the failed batch resolved";
    } catch (const kj::Exception& e) {
      EXPECT_EQ(e.getType(), kj::Exception::Type::DISCONNECTED);
    }
  }
}

TEST_F(CallBatcherTest, AWrongNumberOfRepliesFailsTheBatchAndTheBatcherGoesOn) {
  FakePeer peer;
  auto b = makeBatcher(peer, 100, 1);
  auto a = b.add(1);
  auto c = b.add(2);
  kj::evalLater([] {}).wait(ws_);
  peer.sent[0].answer->fulfill(std::vector<int>{10});  // one reply for two calls
  EXPECT_ANY_THROW(a.wait(ws_));
  EXPECT_ANY_THROW(c.wait(ws_));
  auto later = b.add(3);  // the slot was given back
  kj::evalLater([] {}).wait(ws_);
  ASSERT_EQ(peer.sent.size(), 2u);
  peer.answer(1);
  EXPECT_EQ(later.wait(ws_), 30);
}

TEST_F(CallBatcherTest, AnEarlyReplyResolvesItsCallAndLetsTheNextBatchGo) {
  FakePeer peer;
  auto b = makeBatcher(peer, 100, 1);
  auto fast = b.add(1);
  auto slow = b.add(2);
  kj::evalLater([] {}).wait(ws_);
  ASSERT_EQ(peer.sent.size(), 1u);
  peer.deliver(0, 11);  // item 0 answered before its batch
  EXPECT_EQ(fast.wait(ws_), 11);
  // The only slot was released by that first reply: a new call leaves now,
  // while the first batch still waits for its slow item.
  auto next = b.add(3);
  kj::evalLater([] {}).wait(ws_);
  ASSERT_EQ(peer.sent.size(), 2u);
  EXPECT_EQ(peer.sent[1].items, (std::vector<int>{3}));
  peer.answer(0);  // the batch's own answer: item 0 keeps its early reply
  EXPECT_EQ(slow.wait(ws_), 20);
  peer.answer(1);
  EXPECT_EQ(next.wait(ws_), 30);
  EXPECT_EQ(b.batchesSent(), 2u);
}

TEST_F(CallBatcherTest, ACallWhoseCallerGaveUpBeforeItLeftIsNotSent) {
  FakePeer peer;
  auto b = makeBatcher(peer, 100, 1);
  auto first = b.add(1);
  kj::evalLater([] {}).wait(ws_);
  {
    auto dropped = b.add(2);  // queued behind the batch in flight, then dropped
  }
  auto kept = b.add(3);
  peer.answer(0);
  first.wait(ws_);
  kj::evalLater([] {}).wait(ws_);
  ASSERT_EQ(peer.sent.size(), 2u);
  EXPECT_EQ(peer.sent[1].items, (std::vector<int>{3}));
  peer.answer(1);
  EXPECT_EQ(kept.wait(ws_), 30);
}

}  // namespace
}  // namespace keel
