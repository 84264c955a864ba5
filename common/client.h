#pragma once
// Client library for Keel: talks to a coordinator (submit, query, list)
// and, for operators and tests, to an agent (inspect, recover).
// Used by keelctl, keel-demo and the integration tests.

#include <kj/async-io.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/call_batcher.h"
#include "common/records.h"
#include "common/rpc.h"
#include "common/types.h"
#include "schemas/keel.capnp.h"

namespace keel {

struct QueryResult {
  InteractionRecord interaction;
  std::optional<RollbackRecord> rollback;
};

struct CoordinatorInfo {
  std::uint16_t nodeId = 0;
  std::uint64_t epoch = 0;
  std::vector<std::string> participants;
  std::uint64_t committed = 0, rolledBack = 0, unfinished = 0;
  std::uint64_t heuristic = 0;  // ended heuristic-mixed or heuristic-unknown since start
  // The WAL's durable (fsync-bearing) LMDB commits and the jobs they carried.
  std::uint64_t logCommits = 0, logJobs = 0;
  // Redo mode: the WAL's checkpoints and the microseconds they took.
  std::uint64_t logCheckpoints = 0, logCheckpointMicros = 0;
  // Cluster members only (docs/cluster.md).
  bool clustered = false;
  std::uint64_t takeoverCommitted = 0, takeoverRolledBack = 0;  // branches of dead nodes finished here
  std::uint64_t etcdTxns = 0, etcdDecisions = 0;                // etcd txns sent, decisions they created
};

// Coordinator.stats: the window of inconsistency of failed interactions
// (from their first failure until every branch confirmed) and what is in
// doubt now.
struct CoordinatorStats {
  std::uint64_t count = 0, p50Us = 0, p99Us = 0, maxUs = 0;
  std::uint64_t rollbacks = 0, retriedCommits = 0, heuristic = 0;
  std::uint64_t inDoubt = 0, oldestUs = 0;
};

// An interactive transaction (Coordinator.begin): operations call by
// call, then commit or rollback. Dropping it before either rolls it back.
class KeelTransaction {
 public:
  KeelTransaction(wire::Transaction::Client cap, std::uint64_t seq) : cap_(kj::mv(cap)), seq_(seq) {}
  std::uint64_t seq() const { return seq_; }
  // "committed" here means "done so far"; anything else ended it.
  kj::Promise<SubmitOutcome> execute(const std::vector<Op>& ops);
  kj::Promise<SubmitOutcome> commit();
  kj::Promise<SubmitOutcome> rollback();

 private:
  wire::Transaction::Client cap_;
  std::uint64_t seq_;
};

class KeelClient {
 public:
  static kj::Promise<kj::Own<KeelClient>> connect(kj::AsyncIoContext& io, const std::string& address);
  explicit KeelClient(kj::Own<RpcConnection> conn);
  // In-process: calls go straight to `cap` (the admin plane's reads use
  // the coordinator's own RPC object this way, so they answer exactly what
  // keelctl hears).
  explicit KeelClient(wire::Coordinator::Client cap);

  // A new interaction with no request id (a lost answer cannot be retried
  // safely: use the SubmitRequest form with a request id for that).
  kj::Promise<SubmitOutcome> submit(const std::vector<Op>& ops, std::uint32_t deadlineMs = 0);
  // With a request id (req.requestId; req.requestTimeUs is set to now when
  // 0): a retry of the same request is answered with the first one's seq
  // and outcome and runs nothing (docs/protocol.md, "Request ids").
  kj::Promise<SubmitOutcome> submit(SubmitRequest req);
  // Opens an interactive transaction (req.ops is ignored). With a request
  // id the coordinator already knows, no transaction is opened: `replay`
  // holds that interaction's seq and outcome.
  struct Begun {
    kj::Own<KeelTransaction> txn;
    std::optional<SubmitOutcome> replay;
  };
  kj::Promise<Begun> begin(SubmitRequest req);
  // The interaction a request id names (nullopt: the coordinator has none).
  kj::Promise<std::optional<QueryResult>> queryRequest(const std::string& requestId);

  // From now on, submit() calls made in one event-loop turn, or while
  // `inFlight` batches are out, travel together in one submitBatch message
  // of at most `maxBatch` (each still its own interaction with its own
  // answer). Costs: the answers of one batch arrive together, when its last
  // interaction was answered. For load (keel-bench, keel-demo).
  void enableBatching(std::size_t maxBatch = 256, std::size_t inFlight = 2);
  kj::Promise<std::optional<QueryResult>> query(std::uint64_t seq);
  kj::Promise<std::vector<InteractionRecord>> listUnfinished(std::uint32_t limit);
  // Heuristic interactions not yet marked reconciled, oldest first.
  kj::Promise<std::vector<InteractionRecord>> listHeuristic(std::uint32_t limit);
  kj::Promise<CoordinatorInfo> info();
  kj::Promise<CoordinatorStats> stats();
  // The newest `limit` audit entries, each a JSON object as the coordinator
  // wrote it (an operator call over TLS).
  kj::Promise<std::vector<std::string>> audit(std::uint32_t limit);
  wire::Coordinator::Client& capability() { return cap_; }

 private:
  kj::Promise<std::vector<SubmitOutcome>> sendBatch(std::vector<SubmitRequest>&& items);

  kj::Own<RpcConnection> conn_;
  wire::Coordinator::Client cap_;
  kj::Own<CallBatcher<SubmitRequest, SubmitOutcome>> batcher_;  // null: one call per submit
};

// A fresh request id: 16 hex digits of the current unix microseconds, '-',
// 16 random hex digits (33 characters). Ids made later sort later, which
// keeps the coordinator's request index append-only.
std::string newRequestId();

// Exactly-once submit over an unreliable connection: submits `req` (a
// request id is made if it has none) to the coordinator at `address`; when
// the answer is lost (connection refused or broken, no answer within
// `callTimeout`, the coordinator unavailable) it connects again and retries
// with the same request id and time until `retryFor` has passed since the
// first try. The coordinator runs the request at most once whatever
// happens; the answer says which seq it was (and `replayed` when an earlier
// try had already run it).
struct RetryOptions {
  kj::Duration callTimeout = 30 * kj::SECONDS;  // each try's wait for an answer
  kj::Duration retryFor = 30 * kj::SECONDS;     // no new try starts after this
  kj::Duration pause = 200 * kj::MILLISECONDS;  // before the first retry; doubles each time ...
  kj::Duration maxPause = 2 * kj::SECONDS;      // ... up to this
  std::function<void(unsigned attempt, const std::string& why)> onRetry;  // before each retry
};
struct RetriedOutcome {
  bool answered = false;    // false: no try got an answer (`lastError` says why)
  SubmitOutcome outcome;    // valid when answered
  std::string requestId;    // the id every try carried
  unsigned attempts = 0;
  std::string lastError;
};
kj::Promise<RetriedOutcome> submitWithRetry(kj::AsyncIoContext& io, const std::string& address, SubmitRequest req,
                                            RetryOptions opts = {});
// The same over a coordinator cluster: each retry goes to the next address
// (same request id and time). A request id is claimed cluster-wide by its
// COMMIT decision in etcd, so at most one of the tries commits wherever it
// ran (docs/cluster.md).
kj::Promise<RetriedOutcome> submitWithRetry(kj::AsyncIoContext& io, std::vector<std::string> addresses,
                                            SubmitRequest req, RetryOptions opts = {});

struct AgentSnapshot {
  std::string name;
  std::vector<std::pair<std::string, AccountRecord>> accounts;
  std::uint32_t prepared = 0, active = 0, committed = 0, rolledBack = 0;
  // The branch log's durable (fsync-bearing) LMDB commits and their jobs.
  std::uint64_t logCommits = 0, logJobs = 0;
  // Redo mode: the branch log's checkpoints and the microseconds they took.
  std::uint64_t logCheckpoints = 0, logCheckpointMicros = 0;
  // The newest epoch it has seen from each coordinator node.
  std::map<std::uint16_t, std::uint64_t> fences;
  // Each coordinator node's release floor held there, and its kept count.
  std::map<std::uint16_t, std::pair<std::uint64_t, std::uint32_t>> floors;
  std::int64_t total() const;
  std::int64_t held() const;
};

// An agent's unfinished branch as Participant.recover tells an operator.
struct UnfinishedBranch {
  Xid xid;
  bool prepared = false;  // else active
  std::uint64_t epoch = 0;
  Micros preparedUs = 0;
  std::string hostStep;               // adapter host: where its calls to the host are
  std::vector<std::string> hostRefs;  // adapter host: the host's references
  std::string reason;
};

class AgentClient {
 public:
  static kj::Promise<kj::Own<AgentClient>> connect(kj::AsyncIoContext& io, const std::string& address);
  explicit AgentClient(kj::Own<RpcConnection> conn);
  explicit AgentClient(wire::Participant::Client cap);  // in-process (the agent's admin plane)
  kj::Promise<AgentSnapshot> inspect();
  // Its unfinished branches, asked as an operator (epoch 0: fences nothing).
  // Text from the agent is cut to bounded lengths (shown, never trusted).
  kj::Promise<std::vector<UnfinishedBranch>> unfinished();
  // Both, one after the other: what keelctl branches and /api/branches show.
  kj::Promise<std::pair<AgentSnapshot, std::vector<UnfinishedBranch>>> booksAndUnfinished();
  wire::Participant::Client& capability() { return cap_; }

 private:
  kj::Own<RpcConnection> conn_;
  wire::Participant::Client cap_;
};

// Reads the coordinator's answer defensively: an outcome the schema does not
// define, or results that do not match the operations sent (`opsSent`;
// none is fine), throw std::runtime_error ("malformed answer").
SubmitOutcome readSubmitResult(wire::SubmitResult::Reader r, std::size_t opsSent);
// query / queryRequest answers and the lists of listUnfinished /
// listHeuristic: records as the WAL holds them (throw CorruptRecord).
std::optional<QueryResult> readQueryAnswer(wire::Coordinator::QueryResults::Reader r);
std::optional<QueryResult> readQueryAnswer(wire::Coordinator::QueryRequestResults::Reader r);
std::vector<InteractionRecord> readRecordList(capnp::List<capnp::Data>::Reader l);

// "bank-a:alice" -> {"bank-a", "alice"}; throws std::invalid_argument.
std::pair<std::string, std::string> splitAccount(const std::string& ref);
// A two-branch transfer: debit `from`, credit `to`.
std::vector<Op> transferOps(const std::string& from, const std::string& to, std::int64_t amount);

}  // namespace keel
