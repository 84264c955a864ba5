#pragma once
// Metrics for the admin plane's /metrics (Prometheus text format 0.0.4).
//
// Counters and histograms are plain atomics: the event loop updates them
// (relaxed increments, no lock, no allocation) and the admin plane's own
// thread reads them while rendering, so a scrape never waits on the loop
// for them. A histogram's buckets are fixed when it is made; its sum is
// kept in microseconds (or in whole units for sizes) and rendered scaled.
// Labels are only ever bounded sets (an outcome, a participant name from
// the config): never a seq or a request id (docs/operations.md, "Metrics").
//
// The renderer (MetricsText) writes one family at a time: HELP and TYPE
// once, then its samples.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keel {

class Counter {
 public:
  void inc(std::uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

class Histogram {
 public:
  // `bounds`: the upper bounds of the buckets, increasing, in the unit
  // observe() takes; `scale` turns that unit into the rendered one (1e-6:
  // microseconds observed, seconds rendered).
  Histogram(std::vector<double> bounds, double scale);
  // Latencies: observed in microseconds, rendered in seconds, buckets from
  // 100 µs to 60 s.
  static std::unique_ptr<Histogram> latency();
  // Sizes (batches, groups): 1, 2, 4, ... 4096.
  static std::unique_ptr<Histogram> sizes();

  void observe(std::uint64_t v);
  struct Snapshot {
    std::vector<std::uint64_t> cumulative;  // per bound, then +Inf
    std::uint64_t count = 0;
    double sum = 0;  // rendered unit
  };
  Snapshot snapshot() const;
  const std::vector<double>& bounds() const { return bounds_; }
  double scale() const { return scale_; }

 private:
  std::vector<double> bounds_;  // in the observed unit
  double scale_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> counts_;  // bounds_.size() + 1 (the last: +Inf)
  std::atomic<std::uint64_t> sum_{0};
};

using Labels = std::vector<std::pair<std::string, std::string>>;

class MetricsText {
 public:
  // Starts a family: "# HELP name help" and "# TYPE name type"
  // (counter, gauge, histogram).
  void family(std::string_view name, std::string_view type, std::string_view help);
  // One sample of the current family.
  void sample(const Labels& labels, double value);
  void sample(double value) { sample({}, value); }
  // A histogram's _bucket, _sum and _count samples.
  void histogram(const Labels& labels, const Histogram& h);
  void histogram(const Histogram& h) { histogram({}, h); }
  const std::string& text() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  void line(std::string_view suffix, const Labels& labels, const std::pair<std::string, std::string>* extra,
            double value);
  std::string name_;
  std::string out_;
};

// A name as label values are written here: "rolled-back" -> "rolled_back".
std::string snakeCase(std::string_view name);

// A label value as the text format wants it (backslash, quote, newline
// escaped).
std::string escapeLabel(std::string_view v);

}  // namespace keel
