#pragma once
// Coordinator::Interaction: private to coordinator/*.cc.

#include <optional>
#include <utility>
#include <vector>

#include "coordinator/coordinator.h"
#include "coordinator/replies.h"

namespace keel {

// A branch a driver may still call its participant about: phase 2 commits
// it, the rollback driver rolls it back (drivers.cc).
inline bool unsettled(InteractionRecord::BranchState s) {
  using B = InteractionRecord::BranchState;
  return s == B::Prepared || s == B::Preparing || s == B::Failed || s == B::Pending;
}

// One interaction in memory, from seq assignment until it is finished and
// its final record is durable. Owned by Coordinator::live_.
struct Coordinator::Interaction {
  InteractionRecord rec;
  std::optional<RollbackRecord> rb;
  std::uint32_t deadlineMs = 0;
  // Monotonic marks for /metrics (coordinator_metrics.h): made here, the
  // COMMIT decision made durable (0: not in this process).
  Micros startedMono = 0, commitDurableMono = 0;
  std::uint64_t fingerprint = 0;  // of the request (requests table)
  // Results: per op of the client's request, (branch, op within branch).
  std::vector<std::pair<std::size_t, std::size_t>> opIndex;
  std::vector<std::vector<OpResult>> branchResults;
  kj::Own<kj::PromiseFulfiller<SubmitOutcome>> answer;  // the client waiting, if any
  // Retries of its request id waiting for a definitive outcome.
  std::vector<kj::Own<kj::PromiseFulfiller<SubmitOutcome>>> replays;
  // What the client was told, once a durable record backs it (set once).
  std::optional<SubmitOutcome> told;
  bool closing = false;  // interactive: commit or rollback requested
  bool commitDurable = false;  // the COMMIT decision reached the disk (or etcd)
  bool decisionKey = false;    // cluster: etcd holds a decision key for it (deleted once finished)
  bool requestQueued = false;  // the request id's row rides with a write already queued
  // Staged commit: the write of the record made in parallel with the
  // prepares; "committed" waits for it (Coordinator::decide).
  kj::Maybe<kj::ForkedPromise<void>> stagedWrite;
  // Staged and decided on its votes: the txids they carried (postgres
  // agents' PrepareVote.hostTxid) are in no durable record yet — the staged
  // one was written before the votes came. Phase 2 then sends none, so an
  // agent commits only on its own durable PREPARED record (whose txid
  // settles a crash after COMMIT PREPARED) and the branch stays visible to
  // listBranches, which staged recovery reads, until it is decided
  // elsewhere. Cleared once a record holding the txids is durable.
  bool txidsOnlyInMemory = false;
  kj::Own<kj::PromiseFulfiller<void>> wake;  // cuts a driver's backoff short
  // Branches the recovery sweep found at a participant while the
  // interaction was finishing (rolled back, its final record on its way):
  // settled once that record is durable, so they join the stored story
  // (Coordinator::adoptBranch, finish).
  std::vector<std::pair<std::string, RecoveredBranch>> lateBranches;
};

}  // namespace keel
