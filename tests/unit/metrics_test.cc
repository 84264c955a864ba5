// The /metrics text (common/metrics.h): buckets, sums, labels, format.

#include "common/metrics.h"

#include <gtest/gtest.h>

#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace keel {
namespace {

TEST(Metrics, HistogramBucketsAreCumulativeAndTheSumIsScaled) {
  auto h = Histogram::latency();  // observed in µs, rendered in seconds
  h->observe(50);       // <= 100 µs
  h->observe(100);      // the bound itself belongs to its bucket
  h->observe(2000);     // <= 2.5 ms
  h->observe(90000000); // past 60 s: +Inf only
  auto s = h->snapshot();
  ASSERT_EQ(s.cumulative.size(), h->bounds().size() + 1);
  EXPECT_EQ(s.cumulative[0], 2u);
  EXPECT_EQ(s.cumulative[3], 2u);  // <= 1 ms
  EXPECT_EQ(s.cumulative[4], 3u);  // <= 2.5 ms
  EXPECT_EQ(s.cumulative[h->bounds().size() - 1], 3u);
  EXPECT_EQ(s.cumulative.back(), 4u);
  EXPECT_EQ(s.count, 4u);
  EXPECT_DOUBLE_EQ(s.sum, (50 + 100 + 2000 + 90000000) * 1e-6);
}

TEST(Metrics, BoundsMustIncrease) {
  EXPECT_THROW(Histogram({1, 1}, 1), std::invalid_argument);
  EXPECT_THROW(Histogram({2, 1}, 1), std::invalid_argument);
}

TEST(Metrics, TextFormatHasHelpTypeLabelsAndBuckets) {
  Counter c;
  c.inc();
  c.inc(4);
  auto h = Histogram::sizes();
  h->observe(3);
  MetricsText t;
  t.family("keel_things_total", "counter", "Things.");
  t.sample({{"kind", "a\"b\\c\nd"}}, double(c.value()));
  t.family("keel_batch_size", "histogram", "Batches.");
  t.histogram({{"participant", "bank-a"}}, *h);
  std::string text = t.take();
  EXPECT_NE(text.find("# HELP keel_things_total Things.\n# TYPE keel_things_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("keel_things_total{kind=\"a\\\"b\\\\c\\nd\"} 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("keel_batch_size_bucket{participant=\"bank-a\",le=\"2\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("keel_batch_size_bucket{participant=\"bank-a\",le=\"4\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("keel_batch_size_bucket{participant=\"bank-a\",le=\"+Inf\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("keel_batch_size_sum{participant=\"bank-a\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("keel_batch_size_count{participant=\"bank-a\"} 1\n"), std::string::npos);
  // Every sample line: name, optional labels, one number.
  std::regex sample(R"(^[a-z_][a-z0-9_]*(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? [-+0-9.eInf]+$)");
  std::istringstream lines(text);
  std::string line;
  int samples = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("# ", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
    ++samples;
  }
  EXPECT_EQ(samples, 1 + 14 + 2);  // the counter; 13 buckets + Inf, sum, count
}

TEST(Metrics, LatencyBoundsRenderAsSeconds) {
  auto h = Histogram::latency();
  MetricsText t;
  t.family("keel_x_seconds", "histogram", "X.");
  t.histogram(*h);
  std::string text = t.take();
  for (const char* le : {"0.0001", "0.00025", "0.001", "0.5", "1", "60", "+Inf"}) {
    EXPECT_NE(text.find(std::string("le=\"") + le + "\""), std::string::npos) << le << "\n" << text;
  }
}

TEST(Metrics, CountsFromManyThreadsAddUp) {
  Counter c;
  auto h = Histogram::latency();
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) {
    ts.emplace_back([&]() {
      for (int k = 0; k < 10000; ++k) {
        c.inc();
        h->observe(k);
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(c.value(), 40000u);
  EXPECT_EQ(h->snapshot().count, 40000u);
}

}  // namespace
}  // namespace keel
