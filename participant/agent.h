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

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/group_log.h"
#include "common/lmdb.h"
#include "common/records.h"
#include "participant/branch_log.h"

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
  // Drops finished branches' records (epoch 0: an operator, not fenced).
  using ForgetResult = BranchLog::ForgetResult;
  kj::Promise<ForgetResult> forget(std::uint64_t epoch, std::vector<Xid> xids);

  // The branch log: fencing, recovery lists, status, counts.
  BranchLog& branchLog() { return log_; }
  const BranchLog& branchLog() const { return log_; }
  void fence(std::uint16_t node, std::uint64_t epoch) { log_.fence(node, epoch); }
  std::uint64_t newestEpoch(std::uint16_t node) const { return log_.newestEpoch(node); }
  std::vector<BranchRecord> unfinishedBranches() const { return log_.unfinishedBranches(); }
  std::vector<std::optional<BranchRecord>> branches(const std::vector<Xid>& xids) const {
    return log_.branches(xids);
  }
  std::vector<BranchRecord> listBranches(Xid after, std::size_t limit, bool& more) const {
    return log_.listBranches(after, limit, more);
  }
  using Counts = BranchLog::Counts;
  Counts counts() const { return log_.counts(); }
  std::vector<AccountView> accounts() const;

  // Test-only protocol breakage (keel-chaos --self-check proves its checker
  // can fail with it): "commit-on-rollback" commits a PREPARED branch when
  // told to roll it back. Never set in production.
  void setDebugBreak(std::string mode) { debugBreak_ = std::move(mode); }

  GroupCommitLog& log() { return log_.log(); }

 private:
  // Checks ops are well formed and addressed to this agent, and that there
  // is room for new work.
  std::optional<std::string> validate(const std::vector<Op>& ops) const;
  kj::Promise<PrepareResult> work(std::uint64_t epoch, Xid xid, std::vector<Op> ops, bool vote);

  AgentOptions opts_;
  BranchLog log_;
  MDB_dbi accounts_;
  std::string debugBreak_;
};

}  // namespace keel
