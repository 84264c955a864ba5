#pragma once
// keel-bench --sweep output: the table of every concurrency level as
// markdown and CSV, and an SVG plot (interactions/s and p50/p99 latency
// against concurrency), written without any external tool.

#include <optional>
#include <string>
#include <vector>

#include "bench/run.h"

namespace keel::bench {

struct SweepPoint {
  RunResult keel;
  std::optional<RunResult> raw2pc;  // with --compare
};

std::string sweepMarkdown(const std::vector<SweepPoint>& points);
std::string sweepCsv(const std::vector<SweepPoint>& points);
std::string sweepSvg(const std::vector<SweepPoint>& points, const std::string& title);

// Writes sweep.md, sweep.csv and sweep.svg into dir (created if missing);
// returns the paths written. Throws std::runtime_error on an I/O error.
std::vector<std::string> writeSweep(const std::string& dir, const std::vector<SweepPoint>& points,
                                    const std::string& title);

}  // namespace keel::bench
