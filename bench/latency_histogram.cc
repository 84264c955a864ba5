#include "bench/latency_histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace keel::bench {

namespace {
constexpr int kSubBits = 7;                           // 128 buckets per power of two
constexpr std::uint64_t kExact = 1u << (kSubBits + 1);  // below 256: one bucket per value
constexpr std::size_t kBuckets = (64 - kSubBits) * (1u << kSubBits) + kExact;
}  // namespace

LatencyHistogram::LatencyHistogram() : buckets_(kBuckets, 0) {}

std::size_t LatencyHistogram::bucketOf(std::uint64_t us) {
  if (us < kExact) return std::size_t(us);
  int msb = 63 - std::countl_zero(us);
  int shift = msb - kSubBits;  // us >> shift is in [128, 255]
  return std::size_t(shift) * (1u << kSubBits) + std::size_t(us >> shift);
}

std::uint64_t LatencyHistogram::bucketLow(std::size_t b) {
  if (b < kExact) return b;
  std::size_t shift = (b - kExact) / (1u << kSubBits) + 1;
  std::uint64_t top = (b - shift * (1u << kSubBits));  // in [128, 255]
  return top << shift;
}

void LatencyHistogram::record(std::uint64_t us) {
  ++buckets_[bucketOf(us)];
  ++count_;
  sum_ += us;
  min_ = std::min(min_, us);
  max_ = std::max(max_, us);
}

void LatencyHistogram::merge(const LatencyHistogram& o) {
  for (std::size_t i = 0; i < kBuckets; ++i) buckets_[i] += o.buckets_[i];
  count_ += o.count_;
  sum_ += o.sum_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
}

void LatencyHistogram::clear() { *this = LatencyHistogram(); }

std::uint64_t LatencyHistogram::percentile(double p) const {
  if (count_ == 0) return 0;
  auto rank = std::uint64_t(std::ceil(p / 100.0 * double(count_)));
  rank = std::clamp<std::uint64_t>(rank, 1, count_);
  if (rank == count_) return max_;  // the top value is known exactly
  std::uint64_t seen = 0;
  for (std::size_t b = 0; b < kBuckets; ++b) {
    seen += buckets_[b];
    if (seen >= rank) {
      std::uint64_t lo = bucketLow(b), hi = b + 1 < kBuckets ? bucketLow(b + 1) - 1 : UINT64_MAX;
      return std::clamp<std::uint64_t>(lo + (hi - lo) / 2, min(), max_);
    }
  }
  return max_;
}

}  // namespace keel::bench
