// seqText / parseSeqText: how people read and type a seq (NODE:COUNTER or
// the 64-bit number), round trips at the edges, and every refused input.

#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "common/types.h"

namespace keel {
namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

TEST(SeqTextTest, ShowsNodeAndCounter) {
  EXPECT_EQ(seqText(makeSeq(1, 5)), "1:5");
  EXPECT_EQ(seqText(281474976710661ull), "1:5");
  EXPECT_EQ(seqText(makeSeq(0, 5)), "0:5");
  EXPECT_EQ(seqText(0), "0:0");
  EXPECT_EQ(seqText(makeSeq(65535, kMaxSeqCounter)), "65535:281474976710655");
  EXPECT_EQ(seqText(kMax), "65535:281474976710655");
  EXPECT_EQ(seqText(makeSeq(3, 0)), "3:0");
  EXPECT_EQ(seqText(kMaxSeqCounter), "0:281474976710655");
  EXPECT_EQ(seqText(kMaxSeqCounter + 1), "1:0");
}

TEST(SeqTextTest, XidShowsItsSeqAndBranch) {
  EXPECT_EQ((Xid{makeSeq(1, 5), 2}).str(), "1:5.2");
  EXPECT_EQ((Xid{makeSeq(0, 12), 65535}).str(), "0:12.65535");
}

TEST(SeqTextTest, BothFormsNameOneSeq) {
  EXPECT_EQ(parseSeqText("1:5"), makeSeq(1, 5));
  EXPECT_EQ(parseSeqText("281474976710661"), makeSeq(1, 5));
  EXPECT_EQ(parseSeqText("0:5"), 5u);
  EXPECT_EQ(parseSeqText("5"), 5u);
  EXPECT_EQ(parseSeqText("0"), 0u);
  EXPECT_EQ(parseSeqText("0:0"), 0u);
  EXPECT_EQ(parseSeqText("01:005"), makeSeq(1, 5));
  EXPECT_EQ(parseSeqText("65535:281474976710655"), kMax);
  EXPECT_EQ(parseSeqText("18446744073709551615"), kMax);
  EXPECT_EQ(parseSeqText("1:0"), kMaxSeqCounter + 1);
}

TEST(SeqTextTest, RoundTripsAtTheEdges) {
  for (std::uint64_t node : std::initializer_list<std::uint64_t>{0, 1, 2, 255, 256, 65534, 65535}) {
    for (std::uint64_t counter :
         std::initializer_list<std::uint64_t>{0, 1, 5, 1ull << 32, kMaxSeqCounter - 1, kMaxSeqCounter}) {
      std::uint64_t seq = makeSeq(std::uint16_t(node), counter);
      EXPECT_EQ(seqNode(seq), node);
      EXPECT_EQ(seqCounter(seq), counter);
      EXPECT_EQ(parseSeqText(seqText(seq)), seq) << seqText(seq);
      EXPECT_EQ(parseSeqText(std::to_string(seq)), seq) << seq;
      EXPECT_EQ(seqText(*parseSeqText(std::to_string(seq))), seqText(seq));
    }
  }
}

// The refusal of `text`, and that it is one.
std::string why(std::string_view text) {
  std::string w = "(not set)";
  EXPECT_FALSE(parseSeqText(text, &w).has_value()) << text;
  return w;
}

TEST(SeqTextTest, RefusesWhatIsNeitherForm) {
  const std::string notASeq = " is not NODE:COUNTER (such as 1:5) or a whole number";
  for (const char* bad : {"", "1:", ":5", ":", "abc", "1:abc", "x:5", "1:2:3", "1::5", " 1:5", "1:5 ", "1 :5",
                          "1: 5", "1.5", "1:5.2", "+5", "1:+5", "0x10", "5e2", "12x", "١:٥"}) {
    EXPECT_EQ(why(bad), "'" + std::string(bad) + "'" + notASeq) << bad;
  }
  EXPECT_FALSE(parseSeqText("1:").has_value());  // no `why` asked for
}

TEST(SeqTextTest, RefusesNegativeNumbers) {
  const std::string negative = " is negative: a seq is NODE:COUNTER (such as 1:5) or a whole number";
  EXPECT_EQ(why("-5"), "'-5'" + negative);
  EXPECT_EQ(why("-1:5"), "'-1:5'" + negative);
  EXPECT_EQ(why("1:-5"), "'1:-5' is not NODE:COUNTER (such as 1:5) or a whole number");
}

TEST(SeqTextTest, RefusesNodesAndCountersOutOfRange) {
  EXPECT_EQ(why("65536:5"), "'65536:5': node 65536 is out of range (0..65535)");
  EXPECT_EQ(why("99999999999999999999999:5"),
            "'99999999999999999999999:5': node 99999999999999999999999 is out of range (0..65535)");
  EXPECT_EQ(why("1:281474976710656"),
            "'1:281474976710656': counter 281474976710656 is out of range (0..281474976710655)");
  EXPECT_EQ(why("1:18446744073709551616"),
            "'1:18446744073709551616': counter 18446744073709551616 is out of range (0..281474976710655)");
  EXPECT_EQ(why("70000:281474976710656"), "'70000:281474976710656': node 70000 is out of range (0..65535)");
}

TEST(SeqTextTest, RefusesANumberPast64Bits) {
  EXPECT_EQ(why("18446744073709551616"), "'18446744073709551616' is out of range (0..18446744073709551615)");
  EXPECT_EQ(why("99999999999999999999999999"), "'99999999999999999999999999' is out of range (0..18446744073709551615)");
}

}  // namespace
}  // namespace keel
