#pragma once
// The bank workload of keel-chaos: many clients sending a mix of
// interactions (tools/chaos/checker.h, Mix) to one coordinator, or spread
// over the coordinators of a cluster, every request with a request id,
// retrying a lost answer with the same id and time for a bounded while, and
// recording every try and what it heard. With several coordinators a retry
// goes to the next one (a client failing over); inside an interactive
// transaction, whose state lives only where it was opened, finding out how
// it ended asks the coordinator of its seq's node.
//
// Runs on the caller's KJ event loop (one thread); the counters are read by
// the progress line between turns.

#include <kj/async-io.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/client.h"
#include "tools/chaos/checker.h"
#include "tools/chaos/report.h"

namespace keel::chaos {

// Postgres agents: the accounts of each agent that hot transfers use.
inline constexpr std::uint32_t kHotAccounts = 3;

// What stands behind an agent: the workload sends each what it can run.
// Postgres agents get debits, credits and reads as SQL; host agents (a
// host system that can only try, confirm and cancel: docs/hosts.md) only
// debits and credits in one submit (no reads, no interactive steps).
enum class AgentKind : std::uint8_t { Ledger, Postgres, Host };

struct WorkloadOptions {
  std::uint64_t seed = 1;
  std::uint32_t accountsPerAgent = 10;
  std::int64_t opening = 100000;
  std::uint32_t connections = 8;
  std::uint32_t concurrency = 32;
  std::uint32_t retryForMs = 15000;  // how long a lost answer is retried with the same request id
  // Agent -> its kind (absent: ledger). Attempts keep the ledger form of
  // what went out as SQL.
  std::map<std::string, AgentKind> kinds;
};

class Workload {
 public:
  // coordinators: one address, or coordinator i of a cluster (node id i + 1) at [i].
  Workload(WorkloadOptions o, kj::AsyncIoContext& io, std::vector<std::string> coordinators,
           std::vector<std::string> agents, Timeline& timeline);

  // Starts new interactions until `untilUs` (unix us); resolves when the
  // last one is done, its retries included.
  kj::Promise<void> run(Micros untilUs);

  // The kinds it draws from (postgres agents offer no interactive mode).
  std::vector<Mix> mixes() const;
  std::vector<Attempt>& attempts() { return attempts_; }
  // The smallest balance a read returned (0 if none was negative).
  std::int64_t lowestRead() const { return lowestRead_; }

  // For the progress line.
  std::uint64_t committed = 0, rolledBack = 0, lost = 0, notSent = 0;

 private:
  struct Plan {
    Mix mix = Mix::Transfer;
    std::vector<Op> ops;                 // one-shot
    std::vector<std::vector<Op>> steps;  // interactive: one execute each
    ClientEnd end = ClientEnd::Commit;
  };
  struct Flight;  // one interaction in flight
  using FlightPtr = std::shared_ptr<Flight>;
  // One client connection, shared by the workers on it. A flight holds the
  // one its call (and its transaction) went out on, so dropping a broken
  // connection from conns_ never frees it under another worker's call.
  struct Conn {
    kj::Own<KeelClient> client;
  };
  using ConnPtr = std::shared_ptr<Conn>;
  // One try: nullopt = no outcome to record (a begin opened its transaction).
  using Call = std::function<kj::Promise<std::optional<SubmitOutcome>>(KeelClient&, Flight&)>;

  Plan nextPlan();
  AgentKind kind(const std::string& agent) const;
  // Two distinct agents of `among` (one if it has one): the draw's own `a`
  // and `b` when `among` is every agent, so a run of one kind keeps the
  // plans its seed always drew.
  std::pair<std::size_t, std::size_t> pair(const std::vector<std::size_t>& among, std::size_t a, std::size_t b);
  std::vector<Op> onWire(const std::vector<Op>& ops) const;
  // Client connection `i` (0 .. connections - 1) to coordinator `coord`.
  kj::Promise<ConnPtr> connection(std::size_t i, std::size_t coord);
  void dropConnection(std::size_t i, std::size_t coord, const ConnPtr& used);
  // The next try of `f` goes to the next coordinator (not when pinned).
  void failOver(Flight& f);

  kj::Promise<void> worker(std::size_t w);
  kj::Promise<void> untilAnswered(std::size_t conn, FlightPtr f, Call call);
  kj::Promise<void> interactive(std::size_t conn, FlightPtr f);
  kj::Promise<void> steps(std::size_t conn, FlightPtr f);
  kj::Promise<void> findOut(std::size_t conn, FlightPtr f);
  Call submitCall();
  Call beginCall(bool findingOut);

  Attempt& attempt(Flight& f);
  bool mayRetry(Flight& f);
  void answered(Flight& f, SubmitOutcome o);
  void unanswered(Flight& f);
  void noteReads(const std::vector<Op>& ops, const SubmitOutcome& o);

  WorkloadOptions o_;
  kj::AsyncIoContext& io_;
  std::vector<std::string> coordinators_;
  std::vector<std::string> agents_;
  std::vector<std::size_t> readers_;       // agents that answer balance reads (not host agents)
  std::vector<std::size_t> interactives_;  // agents that take interactive steps (ledger agents)
  bool allSql_ = false;                    // every agent is a postgres agent (hot transfers)
  bool anySql_ = false;
  Timeline& timeline_;
  std::mt19937_64 rng_;
  std::vector<ConnPtr> conns_;  // [coord * connections + i]
  std::vector<Attempt> attempts_;
  std::int64_t lowestRead_ = 0;
  Micros until_ = 0;
};

}  // namespace keel::chaos
