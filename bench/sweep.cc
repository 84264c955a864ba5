#include "bench/sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace keel::bench {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// "-" also when no agent process was asked (--embedded: the agents' logs are not counted).
std::string agentCommits(const RunResult& r) {
  return r.haveLogCounters && !r.agentLog.empty() ? fmt("%.3f", r.maxAgentCommitsPerInteraction()) : "-";
}
std::string coordCommits(const RunResult& r) {
  return r.haveLogCounters ? fmt("%.3f", r.coordinatorCommitsPerInteraction()) : "-";
}

// One chart: x = the points' index (labelled by concurrency), y linear from 0.
struct Series {
  std::string name, color;
  bool dashed;
  std::vector<double> y;  // NaN = no value
};

std::string chart(double x0, double y0, double w, double h, const std::string& title, const std::string& yLabel,
                  const std::vector<std::uint32_t>& xs, const std::vector<Series>& series) {
  double ymax = 0;
  for (auto& s : series) {
    for (double v : s.y) {
      if (std::isfinite(v)) ymax = std::max(ymax, v);
    }
  }
  if (ymax <= 0) ymax = 1;
  // A round top: 1, 2 or 5 times a power of ten.
  double mag = std::pow(10, std::floor(std::log10(ymax)));
  double top = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * mag >= ymax) {
      top = m * mag;
      break;
    }
  }
  const double left = x0 + 70, right = x0 + w - 10, upper = y0 + 30, lower = y0 + h - 40;
  auto px = [&](std::size_t i) { return xs.size() < 2 ? (left + right) / 2 : left + (right - left) * double(i) / double(xs.size() - 1); };
  auto py = [&](double v) { return lower - (lower - upper) * v / top; };
  std::string o;
  o += "<text x=\"" + fmt("%.0f", (left + right) / 2) + "\" y=\"" + fmt("%.0f", y0 + 18) +
       "\" text-anchor=\"middle\" font-size=\"14\">" + title + "</text>\n";
  for (int g = 0; g <= 5; ++g) {
    double v = top * g / 5, y = py(v);
    o += "<line x1=\"" + fmt("%.1f", left) + "\" y1=\"" + fmt("%.1f", y) + "\" x2=\"" + fmt("%.1f", right) + "\" y2=\"" +
         fmt("%.1f", y) + "\" stroke=\"#ddd\"/>\n";
    o += "<text x=\"" + fmt("%.1f", left - 6) + "\" y=\"" + fmt("%.1f", y + 4) +
         "\" text-anchor=\"end\" font-size=\"11\">" + fmt("%.6g", v) + "</text>\n";
  }
  for (std::size_t i = 0; i < xs.size(); ++i) {
    o += "<text x=\"" + fmt("%.1f", px(i)) + "\" y=\"" + fmt("%.1f", lower + 16) +
         "\" text-anchor=\"middle\" font-size=\"11\">" + std::to_string(xs[i]) + "</text>\n";
  }
  o += "<text x=\"" + fmt("%.1f", (left + right) / 2) + "\" y=\"" + fmt("%.1f", lower + 32) +
       "\" text-anchor=\"middle\" font-size=\"12\">outstanding interactions (concurrency)</text>\n";
  o += "<text x=\"" + fmt("%.1f", x0 + 14) + "\" y=\"" + fmt("%.1f", (upper + lower) / 2) +
       "\" text-anchor=\"middle\" font-size=\"12\" transform=\"rotate(-90 " + fmt("%.1f", x0 + 14) + " " +
       fmt("%.1f", (upper + lower) / 2) + ")\">" + yLabel + "</text>\n";
  o += "<rect x=\"" + fmt("%.1f", left) + "\" y=\"" + fmt("%.1f", upper) + "\" width=\"" + fmt("%.1f", right - left) +
       "\" height=\"" + fmt("%.1f", lower - upper) + "\" fill=\"none\" stroke=\"#888\"/>\n";
  double legendY = upper + 14;
  for (auto& s : series) {
    std::string pts;
    for (std::size_t i = 0; i < s.y.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      pts += fmt("%.1f", px(i)) + "," + fmt("%.1f", py(s.y[i])) + " ";
      o += "<circle cx=\"" + fmt("%.1f", px(i)) + "\" cy=\"" + fmt("%.1f", py(s.y[i])) + "\" r=\"3\" fill=\"" + s.color +
           "\"/>\n";
    }
    o += "<polyline fill=\"none\" stroke=\"" + s.color + "\" stroke-width=\"2\"" +
         (s.dashed ? " stroke-dasharray=\"6,4\"" : "") + " points=\"" + pts + "\"/>\n";
    o += "<line x1=\"" + fmt("%.1f", left + 10) + "\" y1=\"" + fmt("%.1f", legendY - 4) + "\" x2=\"" +
         fmt("%.1f", left + 34) + "\" y2=\"" + fmt("%.1f", legendY - 4) + "\" stroke=\"" + s.color +
         "\" stroke-width=\"2\"" + (s.dashed ? " stroke-dasharray=\"6,4\"" : "") + "/>\n";
    o += "<text x=\"" + fmt("%.1f", left + 40) + "\" y=\"" + fmt("%.1f", legendY) + "\" font-size=\"11\">" + s.name +
         "</text>\n";
    legendY += 15;
  }
  return o;
}

}  // namespace

std::string sweepMarkdown(const std::vector<SweepPoint>& points) {
  bool raw = std::any_of(points.begin(), points.end(), [](auto& p) { return p.raw2pc.has_value(); });
  std::string o = "| concurrency | interactions/s | committed | rolled back | errors | p50 us | p90 us | p99 us | "
                  "p99.9 us | max us | coord commits/interaction | agent commits/interaction |";
  if (raw) o += " raw2pc interactions/s | raw2pc p50 us | raw2pc p99 us | keel / raw2pc (committed/s) |";
  o += "\n|";
  for (int i = 0; i < 12 + (raw ? 4 : 0); ++i) o += "---|";
  o += "\n";
  for (auto& p : points) {
    auto& k = p.keel;
    o += "| " + std::to_string(k.concurrency) + " | " + fmt("%.0f", k.perSecond()) + " | " + std::to_string(k.committed) +
         " | " + std::to_string(k.rolledBack) + " | " + std::to_string(k.errors) + " | " +
         std::to_string(k.latency.percentile(50)) + " | " + std::to_string(k.latency.percentile(90)) + " | " +
         std::to_string(k.latency.percentile(99)) + " | " + std::to_string(k.latency.percentile(99.9)) + " | " +
         std::to_string(k.latency.max()) + " | " + coordCommits(k) + " | " + agentCommits(k) + " |";
    if (raw) {
      if (p.raw2pc) {
        auto& r = *p.raw2pc;
        o += " " + fmt("%.0f", r.perSecond()) + " | " + std::to_string(r.latency.percentile(50)) + " | " +
             std::to_string(r.latency.percentile(99)) + " | " +
             (r.committedPerSecond() > 0 ? fmt("%.2f", k.committedPerSecond() / r.committedPerSecond()) : "-") + " |";
      } else {
        o += " - | - | - | - |";
      }
    }
    o += "\n";
  }
  return o;
}

std::string sweepCsv(const std::vector<SweepPoint>& points) {
  std::string o = "mode,concurrency,connections,window_s,committed,rolled_back,errors,interactions_per_s,p50_us,p90_us,"
                  "p99_us,p999_us,max_us,coordinator_log_commits_per_interaction,agent_log_commits_per_interaction\n";
  auto row = [&](const RunResult& r) {
    o += r.mode + "," + std::to_string(r.concurrency) + "," + std::to_string(r.connections) + "," +
         fmt("%.3f", r.seconds) + "," + std::to_string(r.committed) + "," + std::to_string(r.rolledBack) + "," +
         std::to_string(r.errors) + "," + fmt("%.1f", r.perSecond()) + "," + std::to_string(r.latency.percentile(50)) +
         "," + std::to_string(r.latency.percentile(90)) + "," + std::to_string(r.latency.percentile(99)) + "," +
         std::to_string(r.latency.percentile(99.9)) + "," + std::to_string(r.latency.max()) + "," +
         (r.haveLogCounters ? fmt("%.4f", r.coordinatorCommitsPerInteraction()) : "") + "," +
         (r.haveLogCounters ? fmt("%.4f", r.maxAgentCommitsPerInteraction()) : "") + "\n";
  };
  for (auto& p : points) {
    row(p.keel);
    if (p.raw2pc) row(*p.raw2pc);
  }
  return o;
}

std::string sweepSvg(const std::vector<SweepPoint>& points, const std::string& title) {
  std::vector<std::uint32_t> xs;
  Series ips{"keel interactions/s", "#1f5fbf", false, {}}, rawIps{"raw2pc interactions/s", "#777", true, {}};
  Series p50{"keel p50", "#1f5fbf", false, {}}, p99{"keel p99", "#c0392b", false, {}};
  Series rawP50{"raw2pc p50", "#1f5fbf", true, {}}, rawP99{"raw2pc p99", "#c0392b", true, {}};
  bool raw = false;
  for (auto& p : points) {
    xs.push_back(p.keel.concurrency);
    ips.y.push_back(p.keel.perSecond());
    p50.y.push_back(double(p.keel.latency.percentile(50)));
    p99.y.push_back(double(p.keel.latency.percentile(99)));
    raw = raw || p.raw2pc.has_value();
    rawIps.y.push_back(p.raw2pc ? p.raw2pc->perSecond() : NAN);
    rawP50.y.push_back(p.raw2pc ? double(p.raw2pc->latency.percentile(50)) : NAN);
    rawP99.y.push_back(p.raw2pc ? double(p.raw2pc->latency.percentile(99)) : NAN);
  }
  std::vector<Series> left = {ips}, right = {p50, p99};
  if (raw) {
    left.push_back(rawIps);
    right.push_back(rawP50);
    right.push_back(rawP99);
  }
  std::string o = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"400\" font-family=\"sans-serif\">\n";
  o += "<rect width=\"960\" height=\"400\" fill=\"white\"/>\n";
  o += "<text x=\"480\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">" + title + "</text>\n";
  o += chart(0, 30, 480, 370, "throughput", "interactions/s", xs, left);
  o += chart(480, 30, 480, 370, "latency", "microseconds", xs, right);
  o += "</svg>\n";
  return o;
}

std::vector<std::string> writeSweep(const std::string& dir, const std::vector<SweepPoint>& points,
                                    const std::string& title) {
  std::filesystem::create_directories(dir);
  std::vector<std::string> out;
  auto write = [&](const std::string& name, const std::string& text) {
    std::string path = dir + "/" + name;
    std::ofstream f(path);
    f << text;
    if (!f) throw std::runtime_error("cannot write " + path);
    out.push_back(path);
  };
  write("sweep.md", sweepMarkdown(points));
  write("sweep.csv", sweepCsv(points));
  write("sweep.svg", sweepSvg(points, title));
  return out;
}

}  // namespace keel::bench
