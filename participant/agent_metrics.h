#pragma once
// What an agent counts for /metrics (participant/admin.cc renders it;
// docs/operations.md, "Metrics"). Counted in ParticipantImpl, the RPC shell
// every adapter (ledger, postgres, host) sits behind, on the event loop;
// read by the admin plane's thread (atomics only).

#include <array>
#include <memory>

#include "common/metrics.h"
#include "common/types.h"

namespace keel {

struct AgentMetrics {
  // Prepare votes given (prepare and prepareBatch items): Vote, then a
  // fault of the item's own at index kMaxVote + 1.
  std::array<Counter, kMaxVote + 2> votes;
  // Branch outcomes answered, by call.
  std::array<Counter, kMaxBranchOutcome + 1> commits, rollbacks, onePhase;
  Counter executes;  // interactive calls
  // One message received -> answered (a prepareBatch: every vote in).
  std::unique_ptr<Histogram> prepareSeconds = Histogram::latency();
  std::unique_ptr<Histogram> commitSeconds = Histogram::latency();
  std::unique_ptr<Histogram> rollbackSeconds = Histogram::latency();
  std::unique_ptr<Histogram> onePhaseSeconds = Histogram::latency();
  std::unique_ptr<Histogram> executeSeconds = Histogram::latency();
  std::unique_ptr<Histogram> prepareBatch = Histogram::sizes();  // items per prepareBatch
  std::unique_ptr<Histogram> phase2Batch = Histogram::sizes();   // XIDs per commit / rollback
};

}  // namespace keel
