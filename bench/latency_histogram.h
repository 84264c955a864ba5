#pragma once
// LatencyHistogram: latencies in microseconds in log-linear buckets (the
// HdrHistogram idea): values below 256 are exact, above that each power of
// two is split into 128 buckets, so a reported percentile is within 0.4% of
// a recorded value (the bucket's midpoint). Fixed memory (~37 kB), O(1)
// record, mergeable: one per client thread, merged at the end.
//
// Not thread-safe: one writer; merge() after the writers are done.

#include <cstdint>
#include <vector>

namespace keel::bench {

class LatencyHistogram {
 public:
  LatencyHistogram();
  void record(std::uint64_t us);
  void merge(const LatencyHistogram& o);
  void clear();

  std::uint64_t count() const { return count_; }
  std::uint64_t min() const { return count_ ? min_ : 0; }
  std::uint64_t max() const { return max_; }
  double mean() const { return count_ ? double(sum_) / double(count_) : 0; }
  // The value at percentile p (0 < p <= 100): the smallest bucket with at
  // least ceil(p% of count) values at or below it, as its midpoint clamped
  // to [min, max]; the highest rank is max itself. 0 when empty.
  std::uint64_t percentile(double p) const;

  // Bucket index of a value, and the lowest value of a bucket (tests).
  static std::size_t bucketOf(std::uint64_t us);
  static std::uint64_t bucketLow(std::size_t bucket);

 private:
  std::vector<std::uint64_t> buckets_;
  std::uint64_t count_ = 0, sum_ = 0, min_ = UINT64_MAX, max_ = 0;
};

}  // namespace keel::bench
