#pragma once
// Agent: the participant's branch state machine, beside one host system.
//
// Branch states (the agent's branch log, one record per XID):
//  (none)     -> never seen. A rollback for it writes a tombstone
//                (RolledBack, tombstone=true) so a late prepare is refused.
//  Active     -> interactive work executed (holds placed) but no vote yet.
//                (Holds are kept in memory, rebuilt from the ACTIVE and
//                PREPARED records at start: participant/adapters/ledger.h.)
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
#include "participant/adapters/ledger.h"
#include "participant/backend.h"
#include "participant/branch_log.h"

namespace keel {

struct AgentOptions {
  std::string name;
  std::string dataDir;
  std::size_t mapSizeBytes = std::size_t(1) << 30;
  bool redo = false;  // the log's redo mode (common/redo_log.h)
};


// The ledger agent (embedded default adapter).
class Agent final : public ParticipantBackend {
 public:
  // Opens the branch log and checks every record decodes: reads only.
  explicit Agent(AgentOptions opts);
  ~Agent() override;
  // Rolls back the ACTIVE branches a previous run left (they never voted).
  void start() override;

  const std::string& name() const override { return opts_.name; }

  // Executes ops and prepares in one step; the vote leaves only after the
  // PREPARED record is durable.
  kj::Promise<PrepareResult> prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) override;
  // Interactive: executes ops into an ACTIVE branch (durable, not voted).
  kj::Promise<PrepareResult> execute(std::uint64_t epoch, Xid xid, std::vector<Op> ops) override;
  kj::Promise<std::vector<BranchOutcome>> commit(std::uint64_t epoch, std::vector<Xid> xids) override;
  kj::Promise<std::vector<BranchOutcome>> rollback(std::uint64_t epoch, std::vector<Xid> xids) override;
  kj::Promise<OnePhaseResult> commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops) override;
  BranchLog& branchLog() override { return log_; }
  const BranchLog& branchLog() const override { return log_; }
  std::vector<AccountView> accounts() const override;
  // Its PREPARED record is durable (and visible) before a YES leaves.
  Batching batching() const override { return {0, 0, true}; }

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
  // Before log_: its writer thread changes the holds until log_ is gone.
  ledger::Holds holds_;
  BranchLog log_;
  MDB_dbi accounts_;
  // Accounts whose AccountRecord::held an older agent left non-zero
  // (ledger.h, "Holds live in memory"): set to 0 by start().
  std::vector<std::string> legacyHeld_;
  std::string debugBreak_;
};

}  // namespace keel
