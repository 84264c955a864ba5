// SeqAllocator: numbers strictly increase, carry the node id, and never
// repeat across crashes (simulated and real).

#include "common/seq.h"

#include <gtest/gtest.h>
#include <kj/async-io.h>
#include <kj/vector.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "tests/unit/test_util.h"

namespace keel {
namespace {

// One incarnation of a node: environment, log and allocator, torn down in
// reverse order without any shutdown write of the allocator's own.
struct Node {
  Node(const std::string& dir, std::uint16_t node, std::uint32_t block)
      : env(dir, {}), meta(env.openDb("meta")), log(env), seq(log, meta, node, block) {}
  std::uint64_t durableHwm() {
    auto r = env.beginRead();
    auto v = r.get(meta, kSeqHwmKey);
    return v ? keyU64(*v) : 0;
  }
  lmdb::Env env;
  MDB_dbi meta;
  GroupCommitLog log;
  SeqAllocator seq;
};

std::vector<std::uint64_t> takeSequentially(SeqAllocator& seq, kj::WaitScope& ws, int n) {
  std::vector<std::uint64_t> out;
  for (int i = 0; i < n; ++i) out.push_back(seq.next().wait(ws));
  return out;
}

void expectStrictlyIncreasing(const std::vector<std::uint64_t>& v) {
  for (std::size_t i = 1; i < v.size(); ++i) ASSERT_LT(v[i - 1], v[i]) << "at index " << i;
}

class SeqTest : public ::testing::Test {
 protected:
  test::TempDir dir_;
};

TEST_F(SeqTest, MakeSeqPutsTheNodeInTheTop16Bits) {
  EXPECT_EQ(makeSeq(0xABCD, 5), 0xABCD000000000005ull);
  EXPECT_EQ(seqNode(makeSeq(0xFFFF, 123)), 0xFFFF);
  EXPECT_EQ(seqNode(makeSeq(0, ~0ull)), 0);  // the counter cannot spill into the node bits
  EXPECT_EQ(seqCounter(makeSeq(7, 1ull << 47)), 1ull << 47);
}

TEST_F(SeqTest, NumbersStrictlyIncreaseAndCarryTheNodeId) {
  auto io = kj::setupAsyncIo();
  Node n(dir_.path(), 0x00AB, 16);
  auto seqs = takeSequentially(n.seq, io.waitScope, 100);
  expectStrictlyIncreasing(seqs);
  for (auto s : seqs) EXPECT_EQ(seqNode(s), 0x00AB);
  EXPECT_EQ(seqs.front(), n.seq.firstOfIncarnation());
  EXPECT_EQ(seqCounter(seqs.front()), 1u);  // counter 0 is never used
  // 100 numbers from blocks of 16: at least 7 reservations were made.
  EXPECT_GE(n.seq.reservations(), 7u);
  EXPECT_GT(n.durableHwm(), seqCounter(seqs.back()));
}

TEST_F(SeqTest, WaitersBeyondTheBlockGetNumbersAfterTheNextReservation) {
  auto io = kj::setupAsyncIo();
  Node n(dir_.path(), 3, 16);
  const std::uint64_t firstHwm = n.durableHwm();
  EXPECT_EQ(firstHwm, 1u + 16u);
  // 100 requests at once: 16 can be served from the first block, the rest
  // wait for reservations that are durable before they resolve.
  kj::Vector<kj::Promise<std::uint64_t>> requests;
  for (int i = 0; i < 100; ++i) {
    requests.add(n.seq.next().then([&](std::uint64_t s) {
      // A number is handed out only below a durable high-water mark.
      EXPECT_LT(seqCounter(s), n.durableHwm());
      return s;
    }));
  }
  auto got = kj::joinPromises(requests.releaseAsArray()).wait(io.waitScope);
  std::vector<std::uint64_t> seqs(got.begin(), got.end());
  expectStrictlyIncreasing(seqs);  // served in the order asked
  std::size_t beyond = 0;
  for (auto s : seqs) {
    EXPECT_EQ(seqNode(s), 3);
    if (seqCounter(s) >= firstHwm) ++beyond;
  }
  EXPECT_EQ(beyond, 100u - 16u);
  EXPECT_GE(n.seq.reservations(), 1u + (100u - 16u + 15u) / 16u);
  EXPECT_GT(n.durableHwm(), seqCounter(seqs.back()));
}

TEST_F(SeqTest, NeverRepeatsAcrossSimulatedCrashes) {
  auto io = kj::setupAsyncIo();
  std::vector<std::uint64_t> all;
  for (int incarnation = 0; incarnation < 4; ++incarnation) {
    std::uint64_t first;
    std::vector<std::uint64_t> seqs;
    {
      auto n = std::make_unique<Node>(dir_.path(), 9, 16);
      first = n->seq.firstOfIncarnation();
      // Stop at varying points within a block, with or without a
      // reservation in flight.
      seqs = takeSequentially(n->seq, io.waitScope, 10 + 7 * incarnation);
      // Destroy allocator, log and env: no shutdown write of the allocator.
    }
    if (!all.empty()) {
      EXPECT_GT(first, all.back()) << "incarnation " << incarnation;
      EXPECT_GT(seqs.front(), all.back()) << "incarnation " << incarnation;
    }
    expectStrictlyIncreasing(seqs);
    all.insert(all.end(), seqs.begin(), seqs.end());
  }
  expectStrictlyIncreasing(all);
}

TEST_F(SeqTest, NeverRepeatsAfterSigkillOfTheAllocatingProcess) {
  // Fork before any environment exists in this process.
  auto child = test::forkChild([&](int fd) {
    auto io = kj::setupAsyncIo();
    Node n(dir_.path(), 42, 16);
    for (int i = 0; i < 75; ++i) test::reportU64(fd, n.seq.next().wait(io.waitScope));
    ::raise(SIGKILL);
    return 0;
  });
  auto before = child.readAll();
  int status = child.wait();
  ASSERT_TRUE(test::killedBy(status, SIGKILL)) << "child status " << status;
  ASSERT_EQ(before.size(), 75u);
  expectStrictlyIncreasing(before);

  auto io = kj::setupAsyncIo();
  Node n(dir_.path(), 42, 16);
  EXPECT_GT(n.seq.firstOfIncarnation(), before.back());
  auto after = takeSequentially(n.seq, io.waitScope, 50);
  for (auto s : after) EXPECT_GT(s, before.back());
  expectStrictlyIncreasing(after);
}

TEST_F(SeqTest, SmallestUsefulBlockStillServesEveryRequest) {
  auto io = kj::setupAsyncIo();
  Node n(dir_.path(), 1, 2);
  auto seqs = takeSequentially(n.seq, io.waitScope, 20);
  expectStrictlyIncreasing(seqs);
  EXPECT_EQ(seqCounter(seqs.back()) - seqCounter(seqs.front()), 19u);  // nothing skipped while running
}

// Two allocators writing one meta database (what two processes on one WAL
// would do): each reservation re-reads the stored mark, so no number is
// handed out twice however their blocks interleave.
TEST_F(SeqTest, TwoAllocatorsOnOneMetaNeverReturnTheSameSeq) {
  auto io = kj::setupAsyncIo();
  lmdb::Env env(dir_.path(), {});
  MDB_dbi meta = env.openDb("meta");
  GroupCommitLog log(env);
  SeqAllocator a(log, meta, 4, 16), b(log, meta, 4, 16);
  std::vector<std::uint64_t> fromA, fromB;
  for (int i = 0; i < 200; ++i) {
    fromA.push_back(a.next().wait(io.waitScope));
    // Uneven turns, so the two reserve at different moments.
    for (int j = 0; j < 1 + i % 3; ++j) fromB.push_back(b.next().wait(io.waitScope));
  }
  expectStrictlyIncreasing(fromA);
  expectStrictlyIncreasing(fromB);
  std::vector<std::uint64_t> all(fromA);
  all.insert(all.end(), fromB.begin(), fromB.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end()) << "a seq was handed out twice";
  // And every number lies below the durable mark (none can be issued again
  // after a crash).
  auto stored = env.beginRead().get(meta, kSeqHwmKey);
  ASSERT_TRUE(stored.has_value());
  EXPECT_GT(keyU64(*stored), seqCounter(all.back()));
}

// With block == 1 the refill test once read `0 < 0` when the block was used
// up, so the second next() never resolved.
TEST_F(SeqTest, BlockOfOneServesMoreThanOneNumber) {
  auto io = kj::setupAsyncIo();
  Node n(dir_.path(), 1, 1);
  auto first = n.seq.next().wait(io.waitScope);
  auto second = n.seq.next()
                    .exclusiveJoin(io.provider->getTimer().afterDelay(2 * kj::SECONDS).then([]() -> std::uint64_t {
                      return 0;
                    }))
                    .wait(io.waitScope);
  EXPECT_GT(second, first) << "second next() did not resolve within 2 s";
}

}  // namespace
}  // namespace keel
