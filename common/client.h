#pragma once
// Client library for Keel: talks to a coordinator (submit, query, list)
// and, for operators and tests, to an agent (inspect, recover).
// Used by keelctl, keel-demo and the integration tests.

#include <kj/async-io.h>

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
  // The WAL's durable (fsync-bearing) LMDB commits and the jobs they carried.
  std::uint64_t logCommits = 0, logJobs = 0;
};

class KeelClient {
 public:
  static kj::Promise<kj::Own<KeelClient>> connect(kj::AsyncIoContext& io, const std::string& address);
  explicit KeelClient(kj::Own<RpcConnection> conn);

  kj::Promise<SubmitOutcome> submit(const std::vector<Op>& ops, std::uint32_t deadlineMs = 0);

  // From now on, submit() calls made in one event-loop turn, or while
  // `inFlight` batches are out, travel together in one submitBatch message
  // of at most `maxBatch` (each still its own interaction with its own
  // answer). Costs: the answers of one batch arrive together, when its last
  // interaction was answered. For load (keel-bench, keel-demo).
  void enableBatching(std::size_t maxBatch = 256, std::size_t inFlight = 2);
  kj::Promise<std::optional<QueryResult>> query(std::uint64_t seq);
  kj::Promise<std::vector<InteractionRecord>> listUnfinished(std::uint32_t limit);
  kj::Promise<CoordinatorInfo> info();
  wire::Coordinator::Client& capability() { return cap_; }

 private:
  struct SubmitItem {
    std::vector<Op> ops;
    std::uint32_t deadlineMs;
  };
  kj::Promise<std::vector<SubmitOutcome>> sendBatch(std::vector<SubmitItem>&& items);

  kj::Own<RpcConnection> conn_;
  wire::Coordinator::Client cap_;
  kj::Own<CallBatcher<SubmitItem, SubmitOutcome>> batcher_;  // null: one call per submit
};

struct AgentSnapshot {
  std::string name;
  std::vector<std::pair<std::string, AccountRecord>> accounts;
  std::uint32_t prepared = 0, active = 0, committed = 0, rolledBack = 0;
  // The branch log's durable (fsync-bearing) LMDB commits and their jobs.
  std::uint64_t logCommits = 0, logJobs = 0;
  std::int64_t total() const;
  std::int64_t held() const;
};

class AgentClient {
 public:
  static kj::Promise<kj::Own<AgentClient>> connect(kj::AsyncIoContext& io, const std::string& address);
  explicit AgentClient(kj::Own<RpcConnection> conn);
  kj::Promise<AgentSnapshot> inspect();
  wire::Participant::Client& capability() { return cap_; }

 private:
  kj::Own<RpcConnection> conn_;
  wire::Participant::Client cap_;
};

SubmitOutcome readSubmitResult(wire::SubmitResult::Reader r);

// "bank-a:alice" -> {"bank-a", "alice"}; throws std::invalid_argument.
std::pair<std::string, std::string> splitAccount(const std::string& ref);
// A two-branch transfer: debit `from`, credit `to`.
std::vector<Op> transferOps(const std::string& from, const std::string& to, std::int64_t amount);

}  // namespace keel
