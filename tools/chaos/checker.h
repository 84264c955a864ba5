#pragma once
// The bank checker of keel-chaos: given what clients were told, what the
// coordinator's tables say and what every agent's own branch log and ledger
// hold after healing, lists every violation of Keel's promises. Pure logic,
// no I/O, so it is unit-tested on hand-made histories.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/records.h"
#include "common/types.h"

namespace keel::chaos {

// The workload's kinds of interaction (docs/chaos.md, "What it runs").
enum class Mix : std::uint8_t {
  Transfer,     // two branches on two agents
  ThreeBranch,  // one account pays two others on two more agents
  Overdraft,    // two branches, overdrawn on purpose: must be rolled back
  OnePhase,     // a transfer between two accounts of one agent (one branch: one-phase commit)
  Interactive,  // begin, execute call by call, then commit, rollback or drop
  ReadOnly,     // balance reads on one or two agents
  HotTransfer,  // postgres agents: a transfer among a few hot accounts, contended on purpose
};
constexpr std::size_t kMixKinds = 7;
const char* mixName(Mix m);

// How the client meant an interactive transaction to end.
enum class ClientEnd : std::uint8_t { Commit, Rollback, Drop };

// One call whose answer speaks for the whole interaction: a submit (each
// retry of it too), a begin that was lost or answered with an earlier
// interaction's outcome (a replay), an execute that ended the transaction,
// a commit or a rollback. Interactive "done so far" answers are not here.
struct Try {
  Micros atUs = 0;
  std::optional<SubmitOutcome> answer;  // none: lost (the connection broke, or no answer in time)
};

// One client request and what the client heard.
struct Attempt {
  std::vector<Op> ops;  // interactive: every operation executed
  std::optional<SubmitOutcome> answer;  // the last answer of a try; none: no try was answered
  Micros startUs = 0, endUs = 0;
  Mix mix = Mix::Transfer;
  std::string requestId;     // every try carried it ("" = none)
  std::vector<Try> tries;    // in the order sent
  std::uint64_t seq = 0;     // interactive: the seq begin answered (0: none)
  ClientEnd end = ClientEnd::Commit;  // interactive only: how the client meant to end it
  bool dropped = false;       // interactive: the client dropped its open transaction (no answer expected)
  std::uint32_t notSent = 0;  // retries that found no coordinator to send to (not in `tries`)
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
  // Request id -> the seq its `requests` row names (queryRequest), for
  // every request id a client sent; 0: the coordinator knows none.
  std::map<std::string, std::uint64_t> requests;
  // A coordinator cluster (keel-chaos --cluster) has one requests table per
  // coordinator, and a retry through another coordinator runs under a seq
  // of that one: every seq any coordinator's table names for the id, in
  // place of `requests`. `interactions` and `rollbacks` then hold each
  // seq's records as the coordinator of its node keeps them.
  std::map<std::string, std::set<std::uint64_t>> requestRows;
};

// A decision the coordinator cluster left in etcd (P/decisions/<node>/<seq>),
// as keel-chaos read it: sampled during the run and read after healing. A
// decision is created once and never changed (docs/cluster.md).
struct EtcdDecision {
  std::string key;
  std::string value;       // the first value read
  bool malformed = false;  // not a decision the coordinator would read (ClusterDecision::decode)
  bool commit = false;
  std::vector<std::pair<std::string, std::uint16_t>> branches;  // commit: participant, branch number
  std::string laterValue;  // a later read found this under the same key instead ("": never)
};

// What etcd held for one request id (P/requests/<id>): the id's fate,
// decided once cluster-wide. It lives ~5 minutes (a lease), so keel-chaos
// reads the fates every 30 s during the run and once after healing.
struct EtcdRequestFate {
  std::string value;       // "<seq>" (committed) or "abort <seq>", the first read
  std::uint64_t seq = 0;   // 0: malformed
  bool committed = false;
  std::string laterValue;  // a later read found this instead ("": never)
};

struct EtcdView {
  std::map<std::uint64_t, EtcdDecision> decisions;         // by seq
  std::map<std::string, EtcdRequestFate> requests;         // by request id
};

// What a violation is about. The self-check tells its planted break by it.
enum class ViolationKind : std::uint8_t {
  NotAtomic,              // an interaction's branches ended some committed, some rolled back (agents' records)
  Unsettled,              // a branch, an interaction or a host transaction left unfinished after healing
  CommitNotKept,          // a "committed" answer that is not committed everywhere
  RollbackNotKept,        // a "rolled back" answer with a committed branch, or without its completed record
  CoordinatorDisagrees,   // the coordinator's tables against the agents' records
  Money,                  // money created, destroyed or still held; a negative balance
  AccountHistory,         // an account that is not its committed history
  InDoubtUnresolved,      // an "in doubt" answer whose interaction did not end committed or rolled back everywhere
  RequestCommittedTwice,  // one request id, more than one committed interaction
  AnswerDisagrees,        // an answer naming another seq or outcome than the coordinator's records
  Heuristic,              // a heuristic outcome the run did not cause on purpose
  EtcdDisagrees,          // cluster: a decision or request fate in etcd that the agents or records contradict
};
const char* violationKindName(ViolationKind k);

struct Violation {
  std::uint64_t seq = 0;  // 0: not about one interaction
  std::string what;
  ViolationKind kind = ViolationKind::Unsettled;
};

struct Input {
  std::vector<Attempt> attempts;
  std::vector<AgentBranch> branches;  // every branch record of every agent
  std::vector<AgentBooks> books;      // every agent's ledger at the end
  CoordinatorView coordinator;        // records of every seq seen anywhere
  std::int64_t startTotal = 0;        // money when the run began
  std::int64_t lowestBalanceSeen = 0; // smallest balance sampled (or read by a client) during the run
  // "agent:account" -> balance when the run began. With it, every account
  // must end at exactly that plus the debits and credits of the interactions
  // the coordinator's records say committed (ledger operations, or the
  // guarded SQL statements of tools/sql_bank.h).
  std::map<std::string, std::int64_t> startBalances;
  // The run caused heuristic outcomes on purpose (an operator's override);
  // otherwise every heuristic state or answer is a violation.
  bool heuristicExpected = false;
  // A coordinator cluster's run: what etcd held (absent: one coordinator).
  std::optional<EtcdView> etcd;
  // Host agents (keel-chaos --adapter host or mixed): agent -> every
  // idempotency key its host system remembers ("<xid>/<index>") -> the
  // key's state there (tried, refused, confirmed, cancelled, tombstone).
  std::map<std::string, std::map<std::string, std::string>> hostKeys;
};

// Checks, each violation naming its seq when it is about one:
//  - every interaction's branches ended all committed or all rolled back
//    (agents' own records);
//  - every answer a client got (every try, not only the last) holds: a
//    commit is committed everywhere and in the coordinator's record; a
//    "rolled back" left no committed branch and a completed rollback record;
//    an "in doubt" interaction ended committed or rolled back, at the
//    coordinator and at every agent alike; a dropped interactive
//    transaction ended rolled back;
//  - request ids: at most one committed interaction per id (by the
//    coordinator's records and by every seq the client heard for it); the
//    `requests` row names the committed one; a replayed answer, and the
//    last answer of an id, name the seq the row names;
//  - no heuristic outcome unless `heuristicExpected`;
//  - money is exactly the starting total; no balance was ever negative;
//    nothing is held; every account holds exactly its committed history
//    (each acknowledged commit's effects present, nothing else);
//  - the host systems hold no prepared transaction (postgres: prepared
//    transactions; host systems: open tries);
//  - host systems (in.hostKeys): every key of a branch at a host agent of an
//    interaction the coordinator's records say committed is confirmed at
//    the host; no key of a rolled-back one is; no key is confirmed that no
//    finished interaction's records account for;
//  - no branch PREPARED or ACTIVE, no interaction unfinished;
//  - the coordinator's interaction and rollback tables agree with the agents.
// With a coordinator cluster (in.etcd) also:
//  - request ids across coordinators: at most one committed interaction
//    among every seq heard for the id, every seq a coordinator's table names
//    for it and every record carrying it; once one committed, every
//    definitive answer to the id names it, committed;
//  - every decision etcd held matches the agents' final branches: COMMIT ->
//    every branch it lists committed and none of the seq rolled back, ABORT
//    -> none committed; and the coordinator's record of the seq alike; a
//    decision never read with two values;
//  - every request fate etcd holds: "<seq>" -> that interaction committed
//    and no other of the id; "abort <seq>" -> none of the id committed.
std::vector<Violation> check(const Input& in);

// The self-check's break (an agent commits a PREPARED branch it is told to
// roll back, and answers "rolled back") must show as what it is: at least
// one NotAtomic violation. Every other violation must be one that break
// causes too (a rolled-back answer with a committed branch, the coordinator
// disagreeing with the agent, money and accounts off); anything else means
// the checker or Keel failed in another way, and the self-check fails.
// (The break can also end an interaction heuristic-mixed, when a retried
// rollback finds the branch committed: the self-check's Input says
// heuristicExpected, so those are not violations.)
// In a cluster run the self-check also plants a contradicting decision in
// etcd after the run (ABORT for the committed seq `plantedSeq`): it must be
// reported (EtcdDisagrees naming that seq), and EtcdDisagrees is one of the
// kinds the break explains (a survivor's ABORT that bank-1 committed anyway).
struct SelfCheckVerdict {
  bool passed = false;
  std::string why;  // one line
};
SelfCheckVerdict judgeSelfCheck(const std::vector<Violation>& v, std::uint64_t plantedSeq = 0);

}  // namespace keel::chaos
