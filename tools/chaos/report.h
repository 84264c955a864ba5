#pragma once
// keel-chaos output: the timeline (commits per second, faults) and the
// report, as text, as report.json and as timeline.svg.

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/types.h"
#include "tools/chaos/checker.h"
#include "tools/chaos/takeovers.h"

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

// What became of the interactions of one kind of the mix (by the last
// answer the client got).
struct MixCounts {
  std::uint64_t attempted = 0, committed = 0, rolledBack = 0, inDoubt = 0;
  std::uint64_t unanswered = 0;  // no try answered within the retry window
  std::uint64_t dropped = 0;     // interactive transactions the client dropped (no answer expected)
  std::uint64_t other = 0;       // invalid, unavailable, heuristic
  std::uint64_t answered() const { return committed + rolledBack + inDoubt; }
};

struct Report {
  std::uint64_t seed = 0;
  std::uint32_t durationS = 0;
  std::size_t agents = 0;
  std::string adapter = "ledger";  // of the agents: ledger or postgres
  std::uint64_t attempted = 0, committed = 0, rolledBack = 0, inDoubt = 0, lost = 0, threeBranch = 0;
  std::uint64_t unanswered = 0, other = 0;
  std::string firstOther;     // the first "other" answer, for the reader
  std::vector<std::string> unansweredSamples;  // the first few never answered: kind, request id, seq
  std::uint64_t notSent = 0;  // tries that found no coordinator to send to (not in `attempted`)
  std::map<std::string, MixCounts> byMix;  // by mixName; every kind the workload drew from
  std::uint64_t interactiveCommit = 0, interactiveRollback = 0, interactiveDrop = 0;  // what the client asked
  // Interactions with at least one lost answer, retried with the same
  // request id, by their last answer: a replay of an earlier try's
  // interaction, a new run (no earlier try had left a durable record), none.
  std::uint64_t retried = 0, retriedReplayed = 0, retriedNew = 0, retriedUnanswered = 0;
  // "In doubt" answers, by how their interaction ended after healing.
  std::uint64_t inDoubtCommitted = 0, inDoubtRolledBack = 0, inDoubtOther = 0;
  std::map<std::string, std::uint64_t> faults;  // by kind
  std::uint64_t failpointsCrashed = 0;          // failpoint faults whose process did die there
  std::uint64_t windowCount = 0, windowP50Us = 0, windowP99Us = 0, windowMaxUs = 0;
  std::uint64_t resolutionMs = 0;  // healing -> everything resolved
  bool resolved = false;
  double loadSeconds = 0;
  bool selfCheck = false;
  std::string selfCheckVerdict;  // judgeSelfCheck's line
  // --cluster: the coordinator cluster's part of the story.
  struct Cluster {
    std::size_t coordinators = 0, etcdMembers = 0;
    std::uint32_t leaseTtlS = 0;
    std::string prefix;
    Takeovers takeovers;             // from the coordinators' logs, timed from the faults
    std::uint64_t restartedAfterStop = 0;  // coordinators found stopped by themselves and restarted
    std::uint64_t pausedKeptRunning = 0;   // paused or cut off past the TTL, yet still running afterwards
    std::uint64_t decisionsSeen = 0;  // decision keys read in etcd (sampled once a second, and after healing)
    std::uint64_t decisionsLeft = 0;  // ... still there after healing
    std::uint64_t requestFates = 0;   // request fates read in etcd after healing
  };
  std::optional<Cluster> cluster;
  std::vector<Violation> violations;
  std::vector<std::string> unmet;  // minimums the run did not reach
};

// Fills the interaction counts of `r` (attempted, committed, ..., byMix,
// interactive ends, retries, in-doubt endings) from the attempts and, for
// how "in doubt" answers ended, the coordinator's records after healing.
void countAttempts(Report& r, const std::vector<Attempt>& attempts, const CoordinatorView& coordinator);

// The least a run must have done to count (keel-chaos --min-committed,
// --min-rolled-back, --min-per-kind, --min-retried, --require-faults).
struct Minimums {
  std::uint64_t committed = 0, rolledBack = 0;
  std::uint64_t perKind = 0;         // answers for every kind of the mix
  std::uint64_t retried = 0;         // interactions retried with their request id after a lost answer
  std::vector<std::string> faults;   // fault kinds that must have fired at least once
  std::uint64_t anyFaults = 0;       // faults of any kind that took effect (a run that injects: 1)
  std::uint64_t takeovers = 0;       // --cluster: takeovers finished by a survivor
};
// One line per minimum `r` did not reach (empty: all reached).
std::vector<std::string> unmetMinimums(const Report& r, const Minimums& m);

std::string textReport(const Report& r);
std::string jsonReport(const Report& r, const Timeline& t);
std::string svgTimeline(const Report& r, const Timeline& t);
// Writes report.json and timeline.svg into `dir`.
void writeReport(const Report& r, const Timeline& t, const std::string& dir);

}  // namespace keel::chaos
