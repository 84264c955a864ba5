#pragma once
// Agent: the participant's branch state machine, beside one host system.
//
// Branch states (the agent's branch log, one record per XID):
//  (none)     -> never seen. A rollback for it writes a tombstone
//                (RolledBack, tombstone=true) so a late prepare is refused.
//  Active     -> interactive work executed (holds placed) but no vote yet.
//                The agent may abort it on its own: nobody was promised.
//  Prepared   -> voted YES. Durable BEFORE the vote leaves: holds kept until
//                the coordinator's decision, across restarts.
//  Committed  -> effects applied. A repeated commit answers committed; a
//                rollback answers committed too (one-phase case).
//  RolledBack -> holds released. A repeated rollback answers rolled back.
// Finished branches are kept so a repeated phase-2 call gets a true answer.
//
// Every change runs as one job of the GroupCommitLog: the branch record
// and the ledger's account changes commit in one durable LMDB transaction,
// shared with whatever else arrived meanwhile (group commit).
//
// Thread: one KJ event loop calls these methods; the jobs run on the log's
// writer thread and results come back on the event loop.

#include <kj/async.h>

#include <memory>
#include <string>
#include <vector>

#include "common/group_log.h"
#include "common/lmdb.h"
#include "common/records.h"

namespace keel {

enum class Vote : std::uint8_t { Yes = 0, No = 1, ReadOnly = 2 };
// Same numbering as wire::BranchOutcome.
enum class BranchOutcome : std::uint8_t { Committed = 0, RolledBack = 1, Unknown = 2, NotPrepared = 3, Conflict = 4 };
const char* voteName(Vote v);
const char* outcomeName(BranchOutcome o);

struct PrepareResult {
  Vote vote = Vote::No;
  std::string reason;
  std::vector<OpResult> results;
};

struct OnePhaseResult {
  BranchOutcome outcome = BranchOutcome::RolledBack;
  std::string reason;
  std::vector<OpResult> results;
};

struct AccountView {
  std::string name;
  AccountRecord record;
};

struct AgentOptions {
  std::string name;
  std::string dataDir;
  std::size_t mapSizeBytes = std::size_t(1) << 30;
};

class Agent {
 public:
  explicit Agent(AgentOptions opts);
  ~Agent();

  const std::string& name() const { return opts_.name; }

  // Executes ops and prepares in one step; the vote leaves only after the
  // PREPARED record is durable.
  kj::Promise<PrepareResult> prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops);
  // Interactive: executes ops into an ACTIVE branch (durable, not voted).
  kj::Promise<PrepareResult> execute(std::uint64_t epoch, Xid xid, std::vector<Op> ops);
  kj::Promise<std::vector<BranchOutcome>> commit(std::uint64_t epoch, std::vector<Xid> xids);
  kj::Promise<std::vector<BranchOutcome>> rollback(std::uint64_t epoch, std::vector<Xid> xids);
  kj::Promise<OnePhaseResult> commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops);

  // Reads (short read transaction on the calling thread).
  std::vector<BranchRecord> unfinishedBranches() const;  // Active + Prepared
  std::vector<std::optional<BranchRecord>> branches(const std::vector<Xid>& xids) const;
  std::vector<AccountView> accounts() const;
  struct Counts {
    std::uint32_t active = 0, prepared = 0, committed = 0, rolledBack = 0;
  };
  Counts counts() const;

  GroupCommitLog& log() { return *log_; }

 private:
  // Checks ops are well formed and addressed to this agent.
  std::optional<std::string> validate(const std::vector<Op>& ops) const;
  kj::Promise<PrepareResult> work(std::uint64_t epoch, Xid xid, std::vector<Op> ops, bool vote);

  AgentOptions opts_;
  lmdb::Env env_;
  MDB_dbi accounts_, branches_, meta_;
  std::unique_ptr<GroupCommitLog> log_;
};

}  // namespace keel
