#pragma once
// The physical floor of one two-phase interaction on this machine, measured
// in the same run as the load:
//   rtt    one Cap'n Proto round trip over loopback to an agent
//          (Participant.status with an empty list: no work, no disk)
//   commit the cheaper of two durable writes of a small record, each in a
//          fresh environment on the data directory's filesystem:
//          - one LMDB commit (default, durable flags: two flushes), what
//            a process does per group commit without redo mode;
//          - one redo-log append (RedoLog::append: one write and one
//            fdatasync of a preallocated file), what it does in redo mode.
//          The floor is the machine's, not one mode's: a run in either
//          mode is compared against the cheapest durable write there is.
// floor = 2 x rtt (client -> coordinator, coordinator -> agent prepare)
//       + 2 x commit (the agent's PREPARED, the coordinator's COMMIT).
// Each is the median of `samples` serial samples, after a short warm-up.
// keel-bench measures it twice, before the load and after it (bracket):
// the floor moves with the machine's neighbours by tens of percent within
// minutes, and two measurements that disagree say a ratio against either
// is not to be trusted.

#include <kj/async-io.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace keel::bench {

struct FloorResult {
  double rttUs = 0, lmdbCommitUs = 0, redoAppendUs = 0;
  std::uint32_t samples = 0;
  // The cheaper durable write (one not measured, 0, does not count).
  double commitUs() const {
    if (redoAppendUs <= 0) return lmdbCommitUs;
    if (lmdbCommitUs <= 0) return redoAppendUs;
    return std::min(lmdbCommitUs, redoAppendUs);
  }
  double floorUs() const { return 2 * rttUs + 2 * commitUs(); }
  // bracket() only: the floor measured before the load and after it (0:
  // measured once).
  double beforeUs = 0, afterUs = 0;
  bool bracketed() const { return beforeUs > 0 && afterUs > 0; }
  // |before - after| / the lower of the two (0 when measured once).
  double spread() const {
    double lo = std::min(beforeUs, afterUs);
    return lo > 0 ? std::abs(beforeUs - afterUs) / lo : 0;
  }
};

// The floor of a run measured before its load and after it: each part the
// mean of its two medians, with both floors kept.
FloorResult bracket(const FloorResult& before, const FloorResult& after);
// Above this spread a ratio against the floor is flagged as not to be trusted.
inline constexpr double kFloorSpreadWarn = 0.2;

// agentAddr: host:port of a running agent; dir: a directory on the
// filesystem to measure (a scratch environment is made in it and removed).
FloorResult measureFloor(kj::AsyncIoContext& io, const std::string& agentAddr, const std::string& dir,
                         std::uint32_t samples);

// The median of samples (0 for none), as every floor number is taken.
double median(std::vector<std::uint64_t> v);

// Each alone, for the micro benchmarks and tests.
double medianRpcRoundTripUs(kj::AsyncIoContext& io, const std::string& agentAddr, std::uint32_t samples);
double medianLmdbCommitUs(const std::string& dir, std::uint32_t samples);
double medianRedoAppendUs(const std::string& dir, std::uint32_t samples);

}  // namespace keel::bench
