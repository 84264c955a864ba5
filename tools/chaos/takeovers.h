#pragma once
// keel-chaos --cluster: takeovers read back from the coordinators' logs
// and timed from the fault that caused them. Pure parsing and arithmetic,
// unit-tested (report_test.cc).
//
// The lines it reads (coordinator/cluster.cc, coordinator/takeover.cc),
// each after spdlog's "<local time> <name> <level>: " prefix:
//   cluster: node N is gone (no member key); taking over its work under epoch E
//   takeover of node N (epoch E) done in X ms: B branches, C committed, R rolled back
//   cluster: node N is back; its takeover (epoch E) stops here
//   cluster: membership lease lost (...): stopping at once; ...

#include <cstdint>
#include <string>
#include <vector>

#include "common/types.h"

namespace keel::chaos {

// One finished takeover, as a survivor logged it.
struct TakeoverDone {
  Micros atUs = 0;  // the log line's time (unix us)
  std::uint16_t node = 0;
  std::uint64_t epoch = 0;
  std::uint64_t workMs = 0;  // from the election to done, as the survivor measured it
  std::uint64_t branches = 0, committed = 0, rolledBack = 0;
};

// A fault that stops a coordinator from serving: SIGKILL, SIGSTOP, or its
// etcd link cut. A survivor's takeover of that node is timed from it.
struct CoordinatorFault {
  std::uint16_t node = 0;
  Micros startUs = 0;
};

struct Takeovers {
  std::vector<TakeoverDone> done;
  std::uint64_t started = 0;   // elections won ("is gone ... taking over")
  std::uint64_t stopped = 0;   // given up because the node came back
  std::uint64_t failStops = 0; // coordinators that stopped themselves on a lost lease
  // One per done takeover that followed an injected fault on its node (the
  // first done line after that fault): fault -> done line, in ms.
  std::vector<std::uint64_t> fromFaultMs;
  // Done takeovers with no injected fault before them (within the window):
  // a fail-stop on etcd trouble, a failpoint crash, or a second election
  // right after another survivor's takeover finished.
  std::uint64_t unattributed = 0;
};

// "2025-03-01T12:00:00.123" (local time, as spdlog writes it) -> unix us; 0
// if the line does not start with such a time.
Micros parseLogTime(const std::string& line);

// Adds what one coordinator's log says to `t` (every incarnation of it
// appends to the same log).
void scanCoordinatorLog(const std::string& text, Takeovers& t);

// Times every done takeover from the latest fault on its node before it
// (within `window`); a fault is used at most once.
void attributeTakeovers(Takeovers& t, const std::vector<CoordinatorFault>& faults,
                        Micros windowUs = 120'000'000);

// Nearest-rank percentile (q in (0, 1]) of `v`; 0 if empty.
std::uint64_t percentile(std::vector<std::uint64_t> v, double q);

}  // namespace keel::chaos
