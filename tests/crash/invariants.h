#pragma once
// The crash matrix's invariant checker, in two halves:
//
//   observe()          reads the cluster through its public RPCs (coordinator
//                      info / listUnfinished / query, agent inspect / recover /
//                      status) into a ClusterView: plain values, no capnp;
//   checkInvariants()  a pure function of what the clients were told
//                      (RunRecord) and that view; it returns one line per
//                      violation, empty when everything holds.
//
// Keeping the checker pure lets the self-check test feed it a deliberately
// corrupted cluster and see it complain (a checker that cannot fail proves
// nothing).
//
// Each violation starts with the check it belongs to:
//   (a) money      sum of balances is the start total, no hold left, no
//                  negative balance, no account lost
//   (b) finished   no branch PREPARED/ACTIVE, agents' recover() lists empty,
//                  the coordinator has nothing unfinished
//   (c) committed  every "committed" answer is committed at the coordinator
//                  and at every participant
//   (d) rolledback every "rolled back" answer left no effect and its rollback
//                  record is completed (or, under presumed abort, the
//                  coordinator never recorded it and no agent committed it)
//   (e) atomic     every seq's branches all committed or none committed, and
//                  the coordinator's final state says the same
//   (f) durable    every COMMIT decision found durable in the coordinator's
//                  WAL after it crashed ends committed, whether or not a
//                  client heard of it (docs/protocol.md, "after the
//                  decision was durable")

#include <kj/async-io.h>

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/client.h"
#include "common/records.h"
#include "common/types.h"
#include "tools/cluster.h"

namespace keel::crash {

// What one client call was told. A lost answer (the connection broke, or no
// answer within the client's patience) has lost = true and seq = 0.
struct Answer {
  std::uint64_t seq = 0;
  ClientOutcome outcome = ClientOutcome::Invalid;
  std::string reason;
  bool lost = false;
  std::string error;       // why it was lost
  int incarnation = 0;     // which coordinator start answered (0 = first)
  std::vector<Op> ops;
};

// Everything a run learnt from the outside, for the checker.
struct RunRecord {
  std::int64_t startTotal = 0;          // sum of opening balances
  std::map<std::string, std::size_t> accountsPerAgent;
  std::vector<Answer> opens;            // account openings (must all be committed)
  std::vector<Answer> transfers;
  std::set<std::uint64_t> seenSeqs;     // seqs seen elsewhere: agents' recover() lists, listUnfinished(), the WAL
  std::set<std::uint64_t> durableCommits;  // COMMIT durable in the WAL of a crashed coordinator
};

// One branch as an agent reports it through `status`.
struct BranchView {
  bool known = false;
  BranchStatus state = BranchStatus::RolledBack;
  bool tombstone = false;
};

struct AgentView {
  std::string name;
  AgentSnapshot snapshot;
  std::vector<Xid> unfinished;          // recover()
  std::map<Xid, BranchView> branches;   // status of every probed XID
};

struct ClusterView {
  CoordinatorInfo info;
  std::vector<InteractionRecord> unfinished;                      // listUnfinished()
  std::map<std::uint64_t, std::optional<QueryResult>> records;    // query(seq) of every probed seq
  std::vector<AgentView> agents;
};

// Transfers have two branches; every probed seq is asked for branches
// 1..kProbeBranches at every agent (plus whatever its record names), so a
// branch an agent holds under the wrong number is found too.
constexpr std::uint16_t kProbeBranches = 2;

// Seqs worth probing: every seq known (answered, rec.seenSeqs,
// rec.durableCommits) and every seq between known seqs of one incarnation,
// widened by `margin` on both sides (seqs of one incarnation are consecutive
// counters, so a lost answer's seq lies among them).
std::set<std::uint64_t> seqsToProbe(const RunRecord& rec, std::uint64_t margin = 16);

// Reads the cluster. Throws (kj::Exception) when a process does not answer.
ClusterView observe(kj::AsyncIoContext& io, const LocalCluster& cluster, KeelClient& client,
                    const std::set<std::uint64_t>& seqs);

// Every interaction record in the WAL of a coordinator that is not running
// (opened read-only: nothing is written). Throws std::runtime_error when the
// WAL cannot be read.
std::vector<InteractionRecord> readStoppedCoordinatorWal(const std::string& dataDir);

std::vector<std::string> checkInvariants(const RunRecord& rec, const ClusterView& view);

// Informational: branch records at each agent that no probed seq accounts
// for (seqs never answered, outside every scanned range). Not a violation:
// money conservation (a) still covers their effect.
std::vector<std::string> coverageNotes(const ClusterView& view);

}  // namespace keel::crash
