#pragma once
// The bank checker of keel-chaos: given what clients were told, what the
// coordinator's tables say and what every agent's own branch log and ledger
// hold after healing, lists every violation of Keel's promises. Pure logic,
// no I/O, so it is unit-tested on hand-made histories.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/records.h"
#include "common/types.h"

namespace keel::chaos {

// One client request and what the client heard.
struct Attempt {
  std::vector<Op> ops;
  std::optional<SubmitOutcome> answer;  // none: the answer was lost (connection broke)
  Micros startUs = 0, endUs = 0;
};

// What one agent's branch log says about one branch.
struct AgentBranch {
  std::string agent;
  Xid xid;
  BranchStatus state = BranchStatus::Active;
  bool tombstone = false;
};

struct AgentBooks {
  std::string agent;
  std::map<std::string, AccountRecord> accounts;
  std::uint32_t prepared = 0, active = 0;
  // Transactions the host system itself still holds prepared (postgres:
  // pg_prepared_xacts gids of the agent's database).
  std::vector<std::string> hostPrepared;
};

// The coordinator's records of one seq (absent: it does not know the seq).
struct CoordinatorView {
  std::map<std::uint64_t, InteractionRecord> interactions;
  std::map<std::uint64_t, RollbackRecord> rollbacks;
  std::uint64_t unfinished = 0;
};

struct Violation {
  std::uint64_t seq = 0;  // 0: not about one interaction
  std::string what;
};

struct Input {
  std::vector<Attempt> attempts;
  std::vector<AgentBranch> branches;  // every branch record of every agent
  std::vector<AgentBooks> books;      // every agent's ledger at the end
  CoordinatorView coordinator;        // records of every seq seen anywhere
  std::int64_t startTotal = 0;        // money when the run began
  std::int64_t lowestBalanceSeen = 0; // smallest balance sampled during the run
  // "agent:account" -> balance when the run began. With it, every account
  // must end at exactly that plus the debits and credits of the interactions
  // the coordinator's records say committed (ledger operations, or the
  // guarded SQL statements of tools/sql_bank.h).
  std::map<std::string, std::int64_t> startBalances;
};

// Checks, each violation naming its seq when it is about one:
//  - every interaction's branches ended all committed or all rolled back
//    (agents' own records);
//  - every commit acknowledged to a client is committed everywhere;
//    every "rolled back" answer left no committed branch;
//  - money is exactly the starting total; no balance was ever negative;
//    nothing is held; every account holds exactly its committed history
//    (each acknowledged commit's effects present, nothing else);
//  - the host systems hold no prepared transaction;
//  - no branch PREPARED or ACTIVE, no interaction unfinished;
//  - the coordinator's interaction and rollback tables agree with the agents.
std::vector<Violation> check(const Input& in);

}  // namespace keel::chaos
