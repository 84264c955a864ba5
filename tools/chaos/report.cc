#include "tools/chaos/report.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/records.h"

namespace keel::chaos {

void Timeline::start(Micros t0) {
  std::lock_guard<std::mutex> lk(mu_);
  t0_ = t0;
}

void Timeline::addCommit(Micros at) {
  std::lock_guard<std::mutex> lk(mu_);
  if (at < t0_) return;
  std::size_t s = (at - t0_) / 1'000'000;
  if (s >= perSecond_.size()) perSecond_.resize(s + 1, 0);
  ++perSecond_[s];
}

void Timeline::addFault(const std::string& kind, const std::string& target, Micros start, Micros end) {
  std::lock_guard<std::mutex> lk(mu_);
  faults_.push_back(Fault{kind, target, double(start - t0_) / 1e6, double(end - t0_) / 1e6});
}

std::vector<std::uint64_t> Timeline::commitsPerSecond() const {
  std::lock_guard<std::mutex> lk(mu_);
  return perSecond_;
}

std::vector<Timeline::Fault> Timeline::faults() const {
  std::lock_guard<std::mutex> lk(mu_);
  return faults_;
}

namespace {
std::string ms(std::uint64_t us) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f ms", us / 1e3);
  return b;
}
}  // namespace

std::string textReport(const Report& r) {
  std::ostringstream o;
  std::uint64_t faults = 0;
  for (auto& [k, n] : r.faults) faults += n;
  o << "keel-chaos report (seed " << r.seed << ", " << r.durationS << " s, " << r.agents << " " << r.adapter
    << " agents" << (r.selfCheck ? ", self-check" : "") << ")\n"
    << "  interactions attempted " << r.attempted << " (" << r.threeBranch << " with three branches)\n"
    << "    committed            " << r.committed << "\n"
    << "    rolled back          " << r.rolledBack << "\n"
    << "    in doubt (1PC)       " << r.inDoubt << "\n"
    << "    answer lost          " << r.lost << "\n"
    << "  not sent (no coordinator to send to, retried every 100 ms) " << r.notSent << "\n"
    << "  throughput             " << (r.loadSeconds > 0 ? std::uint64_t(r.committed / r.loadSeconds) : 0)
    << " commits/s under faults\n"
    << "  faults injected        " << faults << ":";
  for (auto& [k, n] : r.faults) o << " " << k << " " << n;
  o << "\n  window of inconsistency over " << r.windowCount << " failed interactions: median " << ms(r.windowP50Us)
    << ", p99 " << ms(r.windowP99Us) << ", max " << ms(r.windowMaxUs) << "\n"
    << "  resolution after healing " << (r.resolved ? std::to_string(r.resolutionMs) + " ms" : "NOT REACHED") << "\n"
    << "  violations             " << r.violations.size() << "\n";
  std::size_t shown = 0;
  for (auto& v : r.violations) {
    if (++shown > 50) {
      o << "    ... " << r.violations.size() - 50 << " more in report.json\n";
      break;
    }
    o << "    " << (v.seq ? "seq " + std::to_string(v.seq) + ": " : "") << v.what << "\n";
  }
  return o.str();
}

std::string jsonReport(const Report& r, const Timeline& t) {
  std::ostringstream o;
  o << "{\"seed\":" << r.seed << ",\"duration_s\":" << r.durationS << ",\"agents\":" << r.agents
    << ",\"adapter\":\"" << jsonEscape(r.adapter) << "\""
    << ",\"self_check\":" << (r.selfCheck ? "true" : "false") << ",\"attempted\":" << r.attempted
    << ",\"three_branch\":" << r.threeBranch << ",\"committed\":" << r.committed
    << ",\"rolled_back\":" << r.rolledBack << ",\"in_doubt\":" << r.inDoubt << ",\"answer_lost\":" << r.lost << ",\"not_sent\":" << r.notSent
    << ",\"faults\":{";
  bool first = true;
  for (auto& [k, n] : r.faults) {
    o << (first ? "" : ",") << "\"" << jsonEscape(k) << "\":" << n;
    first = false;
  }
  o << "},\"window_of_inconsistency\":{\"count\":" << r.windowCount << ",\"p50_us\":" << r.windowP50Us
    << ",\"p99_us\":" << r.windowP99Us << ",\"max_us\":" << r.windowMaxUs << "},\"resolved\":"
    << (r.resolved ? "true" : "false") << ",\"resolution_ms\":" << r.resolutionMs << ",\"violations\":[";
  for (std::size_t i = 0; i < r.violations.size(); ++i) {
    o << (i ? "," : "") << "{\"seq\":" << r.violations[i].seq << ",\"what\":\"" << jsonEscape(r.violations[i].what)
      << "\"}";
  }
  o << "],\"commits_per_second\":[";
  auto per = t.commitsPerSecond();
  for (std::size_t i = 0; i < per.size(); ++i) o << (i ? "," : "") << per[i];
  o << "],\"fault_timeline\":[";
  auto fs = t.faults();
  for (std::size_t i = 0; i < fs.size(); ++i) {
    char b[64];
    std::snprintf(b, sizeof b, "\"start_s\":%.3f,\"end_s\":%.3f", fs[i].startS, fs[i].endS);
    o << (i ? "," : "") << "{\"kind\":\"" << jsonEscape(fs[i].kind) << "\",\"target\":\"" << jsonEscape(fs[i].target)
      << "\"," << b << "}";
  }
  o << "]}\n";
  return o.str();
}

std::string svgTimeline(const Report& r, const Timeline& t) {
  auto per = t.commitsPerSecond();
  auto fs = t.faults();
  const double W = 1000, H = 360, left = 60, right = 20, top = 30, plotH = 220;
  double secs = std::max<double>(r.durationS, double(per.size()));
  for (auto& f : fs) secs = std::max(secs, f.endS);
  if (secs <= 0) secs = 1;
  std::uint64_t peak = 1;
  for (auto v : per) peak = std::max(peak, v);
  auto x = [&](double s) { return left + (W - left - right) * s / secs; };
  auto y = [&](double v) { return top + plotH - plotH * v / double(peak); };
  static const std::map<std::string, std::string> colours = {
      {"kill", "#d62728"},      {"pause", "#ff7f0e"},         {"latency", "#bcbd22"},
      {"reset", "#8c564b"},     {"blackhole", "#7f7f7f"},     {"loss-to-agent", "#9467bd"},
      {"loss-from-agent", "#e377c2"}, {"refuse", "#17becf"}, {"failpoint", "#2ca02c"},
      {"slow-disk", "#1f77b4"}, {"postgres-kill", "#000000"}, {"postgres-pause", "#c49c94"}};
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << left << "\" y=\"18\" font-size=\"13\">keel-chaos seed " << r.seed << ": commits per second, "
    << "faults below (" << r.violations.size() << " violations)</text>\n";
  // Faults as bands in lanes under the plot, and faint over the plot.
  int lane = 0;
  for (auto& f : fs) {
    auto c = colours.count(f.kind) ? colours.at(f.kind) : std::string("#444444");
    double x0 = x(f.startS), x1 = std::max(x(f.endS), x0 + 2);
    o << "<rect x=\"" << x0 << "\" y=\"" << top << "\" width=\"" << x1 - x0 << "\" height=\"" << plotH
      << "\" fill=\"" << c << "\" opacity=\"0.12\"/>\n";
    o << "<rect x=\"" << x0 << "\" y=\"" << top + plotH + 8 + 10 * lane << "\" width=\"" << x1 - x0
      << "\" height=\"8\" fill=\"" << c << "\"><title>" << f.kind << " " << f.target << "</title></rect>\n";
    lane = (lane + 1) % 4;
  }
  // Axes.
  o << "<line x1=\"" << left << "\" y1=\"" << top + plotH << "\" x2=\"" << W - right << "\" y2=\"" << top + plotH
    << "\" stroke=\"black\"/>\n<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\""
    << top + plotH << "\" stroke=\"black\"/>\n";
  o << "<text x=\"5\" y=\"" << top + 10 << "\">" << peak << "/s</text>\n<text x=\"5\" y=\"" << top + plotH
    << "\">0</text>\n";
  for (int s = 0; s <= int(secs); s += std::max(1, int(secs / 10))) {
    o << "<text x=\"" << x(s) - 5 << "\" y=\"" << top + plotH + 58 << "\">" << s << "s</text>\n";
  }
  // Throughput.
  o << "<polyline fill=\"none\" stroke=\"black\" stroke-width=\"1.5\" points=\"";
  for (std::size_t i = 0; i < per.size(); ++i) o << x(i + 0.5) << "," << y(double(per[i])) << " ";
  o << "\"/>\n";
  // Legend.
  double lx = left;
  for (auto& [k, c] : colours) {
    o << "<rect x=\"" << lx << "\" y=\"" << H - 22 << "\" width=\"10\" height=\"10\" fill=\"" << c << "\"/>"
      << "<text x=\"" << lx + 13 << "\" y=\"" << H - 13 << "\">" << k << "</text>\n";
    lx += 13 + 7.0 * double(k.size()) + 14;
  }
  o << "</svg>\n";
  return o.str();
}

void writeReport(const Report& r, const Timeline& t, const std::string& dir) {
  std::ofstream(dir + "/report.json") << jsonReport(r, t);
  std::ofstream(dir + "/timeline.svg") << svgTimeline(r, t);
  std::ofstream(dir + "/report.txt") << textReport(r) << "violations: " << r.violations.size() << "\n";
}

}  // namespace keel::chaos
