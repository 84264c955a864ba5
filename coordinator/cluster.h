#pragma once
// ClusterMember: one coordinator's membership of a coordinator cluster, and
// the decisions it shares with the others, in etcd (docs/cluster.md).
//
// Keys (under the configured prefix P, e.g. /keel):
//   P/members/<node>          leased by the live coordinator of that node id:
//                             two live coordinators never share a node id
//   P/nodes/<node>/epoch      the node's epoch; raised by the node at every
//                             start and by a survivor taking it over. Every
//                             decision compares it: a coordinator whose
//                             node was taken over can decide nothing more
//                             (fencing by value, never by lease)
//   P/nodes/<node>/seq_hwm    seq counters below it may have been handed out
//                             (a node whose disk was lost never reissues one)
//   P/nodes/<node>/settled    the epoch whose work a survivor finished
//   P/takeover/<node>         leased by the survivor finishing a dead node's work
//   P/requests/<id>           seq: the interaction that committed under a
//                             request id, claimed in its COMMIT txn; under a
//                             lease of ~5 minutes (the window in which a
//                             client retries on another coordinator)
//   P/decisions/<node>/<seq>  "commit ..." or "abort ...": created once
//                             (create-if-absent), never changed; deleted only
//                             once every branch acknowledged it
//
// Lease expiry drives membership only, never a decision: a decision is a
// create-if-absent txn guarded by the node's epoch.
//
// Threads: the KJ event loop of the coordinator; etcd calls complete there.

#include <kj/async-io.h>

#include <cstdint>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/etcd/etcd_client.h"

namespace keel {

// A decision as etcd holds it.
struct ClusterDecision {
  bool commit = false;
  std::uint16_t by = 0;         // node id of the coordinator that wrote it
  std::uint64_t epoch = 0;      // the epoch it wrote it under
  // "participant:branch" of every branch (commit only): what must be told.
  std::vector<std::pair<std::string, std::uint16_t>> branches;

  std::string encode() const;
  // Nothing read from etcd is trusted: nullopt when malformed.
  static std::optional<ClusterDecision> decode(const std::string& s);
};

class ClusterError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ClusterMember final : private kj::TaskSet::ErrorHandler {
 public:
  // io: the event loop everything here runs on (also during start-up).
  ClusterMember(const CoordinatorConfig& cfg, std::string advertise, kj::AsyncIoContext& io);
  ~ClusterMember();

  // ---- start-up (blocking; before serving)
  // Claims the node id (waiting up to a lease TTL and a second for the
  // lease of this node's previous incarnation to lapse) and raises the
  // node's epoch above both etcd's and `localEpoch`. Throws ClusterError
  // naming the holder when a live coordinator holds the node id.
  struct Joined {
    std::uint64_t epoch = 0;
    std::uint64_t seqFloor = 0;  // seq counters below it may have been handed out
  };
  Joined join(std::uint64_t localEpoch);
  // Records that counters below `limit` may be handed out (before they are).
  void reserveSeqsSync(std::uint64_t limit);
  // Decisions of `node` in etcd, by seq (reconciling a node's own WAL, or
  // taking over a dead one).
  std::map<std::uint64_t, ClusterDecision> decisionsOfSync(std::uint16_t node);
  // The same on the event loop (a takeover).
  kj::Promise<std::map<std::uint64_t, ClusterDecision>> decisionsOf(std::uint16_t node);

  // ---- serving (on the event loop)
  // Starts the lease keep-alive and the membership watch. `onLost` runs if
  // the membership lease is lost (the caller stops at once: fail-stop).
  // `onTakeover(node, epoch)` runs when this member won the right to finish
  // a dead node's work under `epoch`; its promise resolves when all of it
  // is finished (then the node is marked settled) and is dropped if the
  // node comes back meanwhile.
  void serve(std::function<void()> onLost,
             std::function<kj::Promise<void>(std::uint16_t node, std::uint64_t epoch)> onTakeover);

  kj::Promise<void> reserveSeqs(std::uint64_t limit);
  // Shutting down cleanly: takeovers stop and the lease is revoked (the
  // node id is free at once; a survivor finishes what is left).
  void stop();

  // Makes `want` the decision of `seq` (of node `node`, under that node's
  // `epoch`) unless one exists; resolves with the decision that holds.
  // Batched: every decision asked for in one event-loop turn goes in one
  // etcd txn (at most max_txn_ops). When the node's epoch moved on (a
  // survivor took it over), an absent decision can never become COMMIT: the
  // answer is ABORT, with fenced set. Retried until etcd answers.
  // requestId (COMMIT only): the request id is claimed in the same txn
  // (P/requests/<id> -> seq, kept for request_key_ttl_s): of all the
  // interactions any coordinator runs under one id, at most one commits.
  struct Outcome {
    ClusterDecision decision;
    bool fenced = false;   // our epoch is no longer the node's: stop deciding
    bool ours = false;     // this call created it
    // The request id's fate was decided by another interaction (a retry
    // through another coordinator): this one did not commit.
    std::uint64_t requestTakenBy = 0;
    bool requestCommitted = false;  // ... and that one committed (else it was rolled back)
  };

  // An interaction with a request id is rolled back: the id's fate is made
  // "rolled back" in etcd (create-if-absent P/requests/<id> = "abort
  // <seq>") before its client hears so, unless another interaction decided
  // it first. Batched per event-loop turn; retried until etcd answers.
  struct RequestFate {
    std::uint64_t seq = 0;   // the interaction that decided the id (ours or another)
    bool committed = false;  // that one committed
  };
  kj::Promise<RequestFate> claimRolledBack(std::string requestId, std::uint64_t seq);
  kj::Promise<Outcome> decide(std::uint16_t node, std::uint64_t epoch, std::uint64_t seq, ClusterDecision want,
                              std::string requestId = {});
  // The decision of `seq`, if any.
  kj::Promise<std::optional<ClusterDecision>> lookup(std::uint64_t seq);
  // Every branch acknowledged the decision: it may go (batched deletes).
  // Before serve() the deletes wait for it.
  void forget(std::uint64_t seq);

  std::uint16_t nodeId() const { return node_; }
  std::uint64_t epoch() const { return epoch_; }
  std::uint64_t decisionTxns() const { return txns_; }
  std::uint64_t decisionsWritten() const { return decisionsWritten_; }
  etcd::Client& etcd() { return *etcd_; }

  // Key names (tests and tools read them too).
  std::string memberKey(std::uint16_t node) const;
  std::string epochKey(std::uint16_t node) const;
  std::string seqKey(std::uint16_t node) const;
  std::string settledKey(std::uint16_t node) const;
  std::string takeoverKey(std::uint16_t node) const;
  std::string decisionPrefix(std::uint16_t node) const;
  std::string decisionKey(std::uint64_t seq) const;
  std::string requestKey(const std::string& requestId) const;

 private:
  struct Pending;
  void taskFailed(kj::Exception&& e) override;
  void flushSoon();
  kj::Promise<void> flush();
  kj::Promise<void> sendBatch(std::vector<kj::Own<Pending>> batch, std::uint32_t attempt);
  kj::Promise<void> sendBatchUnder(std::vector<kj::Own<Pending>> batch, std::uint32_t attempt, std::int64_t lease);
  kj::Promise<void> flushForgets();
  void flushForgetsAfter(kj::Duration delay);
  kj::Promise<void> flushClaims();
  kj::Promise<void> sendClaims(std::vector<std::pair<std::pair<std::string, std::uint64_t>,
                                                     kj::Own<kj::PromiseFulfiller<RequestFate>>>> claims,
                               std::uint32_t attempt);
  kj::Promise<void> watchMembers();
  kj::Promise<void> tryTakeover(std::uint16_t node, std::uint64_t epoch);
  kj::Duration backoff(std::uint32_t attempt) const;
  // One try each of the start-up calls (join and friends retry them).
  Joined joinOnce(std::uint64_t localEpoch);
  void reserveSeqsSyncOnce(std::uint64_t limit);
  std::map<std::uint64_t, ClusterDecision> decisionsOfSyncOnce(std::uint16_t node);
  std::map<std::uint64_t, ClusterDecision> decisionsIn(std::uint16_t node, const etcd::RangeResult& r) const;
  // The lease request keys are put under (a new one every minute).
  kj::Promise<std::int64_t> requestLease();

  const ClusterConfig cfg_;
  const std::uint16_t node_;
  const std::string advertise_;
  std::unique_ptr<etcd::Client> etcd_;
  etcd::Lease lease_;
  std::unique_ptr<etcd::LeaseKeeper> keeper_;
  std::uint64_t epoch_ = 0;
  std::uint64_t seqReserved_ = 0;
  kj::AsyncIoContext* io_ = nullptr;
  std::function<kj::Promise<void>(std::uint16_t, std::uint64_t)> onTakeover_;
  std::function<void()> onLost_;
  std::vector<kj::Own<Pending>> pending_;
  bool flushQueued_ = false;
  // Decision txns out at once (group commit: the rest wait for the next).
  // One was tried: fewer decisions per txn, not more (keel-bench --cluster 3
  // at 64: 9.7 against 12.7-13.6), as the interactions fell into lockstep
  // waves behind the single txn; docs/performance.md.
  static constexpr std::uint32_t kDecisionTxnsInFlight = 2;
  std::uint32_t inFlight_ = 0;
  kj::TimePoint lastSend_ = kj::origin<kj::TimePoint>();  // of the last decision txn ([cluster] decision_gather_ms)
  bool destroying_ = false;
  std::vector<std::pair<std::pair<std::string, std::uint64_t>, kj::Own<kj::PromiseFulfiller<RequestFate>>>> claims_;
  bool claimQueued_ = false;
  std::vector<std::uint64_t> forgets_;
  bool forgetQueued_ = false;
  // Takeovers this member runs, by node: dropping the work cancels it.
  struct Takeover {
    std::uint64_t epoch = 0;
    std::shared_ptr<bool> failed;  // set by the work itself; the poll drops it
    kj::Promise<void> work = nullptr;
  };
  std::map<std::uint16_t, Takeover> takeovers_;
  std::uint64_t txns_ = 0, decisionsWritten_ = 0;
  std::int64_t requestLease_ = 0;
  std::chrono::steady_clock::time_point requestLeaseUntil_{};
  static constexpr std::uint32_t kRequestKeyTtlS = 300;
  kj::TaskSet tasks_;
};

}  // namespace keel
