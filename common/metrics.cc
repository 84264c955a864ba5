#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace keel {

Histogram::Histogram(std::vector<double> bounds, double scale)
    : bounds_(std::move(bounds)), scale_(scale), counts_(new std::atomic<std::uint64_t>[bounds_.size() + 1]) {
  if (!std::is_sorted(bounds_.begin(), bounds_.end()) ||
      std::adjacent_find(bounds_.begin(), bounds_.end()) != bounds_.end()) {
    throw std::invalid_argument("histogram bounds must increase");
  }
  for (std::size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

std::unique_ptr<Histogram> Histogram::latency() {
  return std::make_unique<Histogram>(
      std::vector<double>{100, 250, 500, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7,
                          3e7, 6e7},
      1e-6);
}

std::unique_ptr<Histogram> Histogram::sizes() {
  std::vector<double> b;
  for (double v = 1; v <= 4096; v *= 2) b.push_back(v);
  return std::make_unique<Histogram>(std::move(b), 1.0);
}

void Histogram::observe(std::uint64_t v) {
  // The first bucket whose bound holds v; past the last bound: +Inf.
  auto at = std::lower_bound(bounds_.begin(), bounds_.end(), double(v));
  counts_[std::size_t(at - bounds_.begin())].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  // Each bucket is read once; a concurrent observe() may land in the count
  // or not, but the cumulative counts never decrease along the buckets.
  Snapshot s;
  s.cumulative.reserve(bounds_.size() + 1);
  std::uint64_t run = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    run += counts_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(run);
  }
  s.count = run;
  s.sum = double(sum_.load(std::memory_order_relaxed)) * scale_;
  return s;
}

std::string snakeCase(std::string_view name) {
  std::string out(name);
  for (char& c : out) c = (c == '-' || c == ' ') ? '_' : c;
  return out;
}

std::string escapeLabel(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out.push_back(c);
  }
  return out;
}

namespace {

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(std::int64_t(v));
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

}  // namespace

void MetricsText::family(std::string_view name, std::string_view type, std::string_view help) {
  name_ = name;
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += help;  // one line: callers pass no newline
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
}

void MetricsText::line(std::string_view suffix, const Labels& labels, const std::pair<std::string, std::string>* extra,
                       double value) {
  out_ += name_;
  out_ += suffix;
  if (!labels.empty() || extra != nullptr) {
    out_ += '{';
    bool first = true;
    auto add = [&](const std::pair<std::string, std::string>& l) {
      if (!first) out_ += ',';
      first = false;
      out_ += l.first;
      out_ += "=\"";
      out_ += escapeLabel(l.second);
      out_ += '"';
    };
    for (const auto& l : labels) add(l);
    if (extra != nullptr) add(*extra);
    out_ += '}';
  }
  out_ += ' ';
  out_ += number(value);
  out_ += '\n';
}

void MetricsText::sample(const Labels& labels, double value) { line("", labels, nullptr, value); }

void MetricsText::histogram(const Labels& labels, const Histogram& h) {
  auto s = h.snapshot();
  for (std::size_t i = 0; i < s.cumulative.size(); ++i) {
    std::pair<std::string, std::string> le{
        "le", i < h.bounds().size() ? number(h.bounds()[i] * h.scale()) : std::string("+Inf")};
    line("_bucket", labels, &le, double(s.cumulative[i]));
  }
  line("_sum", labels, nullptr, s.sum);
  line("_count", labels, nullptr, double(s.count));
}

}  // namespace keel
