#pragma once
// keel-chaos output: the timeline (commits per second, faults) and the
// report, as text, as report.json and as timeline.svg.

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common/types.h"
#include "tools/chaos/checker.h"

namespace keel::chaos {

// Filled from the workload (event loop) and the fault injector (its own
// thread): every method locks.
class Timeline {
 public:
  void start(Micros t0);
  void addCommit(Micros at);
  void addFault(const std::string& kind, const std::string& target, Micros start, Micros end);

  struct Fault {
    std::string kind, target;
    double startS, endS;  // seconds since start
  };
  std::vector<std::uint64_t> commitsPerSecond() const;
  std::vector<Fault> faults() const;

 private:
  mutable std::mutex mu_;
  Micros t0_ = 0;
  std::vector<std::uint64_t> perSecond_;  // GUARDED_BY(mu_)
  std::vector<Fault> faults_;             // GUARDED_BY(mu_)
};

struct Report {
  std::uint64_t seed = 0;
  std::uint32_t durationS = 0;
  std::size_t agents = 0;
  std::string adapter = "ledger";  // of the agents: ledger or postgres
  std::uint64_t attempted = 0, committed = 0, rolledBack = 0, inDoubt = 0, lost = 0, threeBranch = 0;
  std::uint64_t notSent = 0;  // tries that found no coordinator to send to (not in `attempted`)
  std::map<std::string, std::uint64_t> faults;  // by kind
  std::uint64_t windowCount = 0, windowP50Us = 0, windowP99Us = 0, windowMaxUs = 0;
  std::uint64_t resolutionMs = 0;  // healing -> everything resolved
  bool resolved = false;
  double loadSeconds = 0;
  bool selfCheck = false;
  std::vector<Violation> violations;
};

std::string textReport(const Report& r);
std::string jsonReport(const Report& r, const Timeline& t);
std::string svgTimeline(const Report& r, const Timeline& t);
// Writes report.json and timeline.svg into `dir`.
void writeReport(const Report& r, const Timeline& t, const std::string& dir);

}  // namespace keel::chaos
