#pragma once
// keel-demo --cluster (`make demo-cluster`): the coordinator cluster of
// docs/cluster.md doing real work on loopback, and one of its coordinators
// SIGKILLed in the middle.
//
// Starts a 3-member etcd (tools/etcd_cluster.h), N coordinators sharing it
// and the two ledger agents; opens accounts; runs transfers through every
// coordinator (workers spread over them, each submit with a request id; a
// lost answer is retried through the other coordinators with the same id by
// submitWithRetry); SIGKILLs the last coordinator at 40% (once it has
// branches at the agents) and measures its takeover: from the signal until
// no branch of its node id is unfinished at any agent (each agent's
// `recover` list, polled every 20 ms), beside the survivor's own "takeover
// of node N ... done in X ms" log line. Then it
// restarts the killed coordinator and checks that it rejoins (its epoch
// raised, nothing unfinished, a transfer through it commits).
//
// Exits non-zero on any broken promise (money before and after differ,
// holds or branches left, a negative balance, an overdraft committed, a
// lost answer whose retries got none), and when the run proves nothing: the
// kill did not happen while transfers were in flight, fewer transfers
// committed than the minimum, or no takeover was observed.

#include <cstdint>
#include <string>

namespace keel::demo {

struct ClusterDemoOptions {
  std::string baseDir;  // data and logs (exists)
  std::uint32_t transfers = 4000, concurrency = 32, accountsPerAgent = 20, overdrawPercent = 10;
  std::int64_t opening = 10000;
  int coordinators = 3;
  int leaseTtlS = 2;
  bool batch = true;    // the clients batch their submits (KeelClient::enableBatching)
  bool restart = true;  // restart the killed coordinator at the end and check it rejoins
  // Fail unless at least this share of the transfers committed.
  std::uint32_t minCommittedPercent = 40;
  std::string tlsDir;  // certificates (ClusterOptions::tlsDir); empty: plaintext
};

// Runs the demo and prints its report; returns the process exit status.
// Throws on a set-up failure (etcd or a process that does not start).
int runClusterDemo(const ClusterDemoOptions& o);

}  // namespace keel::demo
