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

// Thrown (as the RPC's error) when a call carries an epoch older than the
// newest this agent has seen from that coordinator node: a stale
// coordinator must not drive branches any more.
class StaleEpoch : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
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
  // Drops finished branches' records; returns how many, and the XIDs refused
  // because they are not finished.
  struct ForgetResult {
    std::uint32_t forgotten = 0;
    std::vector<Xid> refused;
  };
  kj::Promise<ForgetResult> forget(std::uint64_t epoch, std::vector<Xid> xids);

  // Fencing: throws StaleEpoch if `epoch` is older than the newest seen from
  // coordinator `node`; remembers a newer one (made durable with the next
  // log job). Called at the entry of every call that carries an epoch.
  void fence(std::uint16_t node, std::uint64_t epoch);
  std::uint64_t newestEpoch(std::uint16_t node) const;

  // Reads (short read transaction on the calling thread).
  std::vector<BranchRecord> unfinishedBranches() const;  // Active + Prepared (indexed)
  std::vector<std::optional<BranchRecord>> branches(const std::vector<Xid>& xids) const;
  // Branch records after `after` in XID order, at most `limit`; sets `more`.
  std::vector<BranchRecord> listBranches(Xid after, std::size_t limit, bool& more) const;

  // Test-only protocol breakage (keel-chaos --self-check proves its checker
  // can fail with it): "commit-on-rollback" commits a PREPARED branch when
  // told to roll it back. Never set in production.
  void setDebugBreak(std::string mode) { debugBreak_ = std::move(mode); }
  std::vector<AccountView> accounts() const;
  struct Counts {
    std::uint32_t active = 0, prepared = 0, committed = 0, rolledBack = 0;
  };
  Counts counts() const;

  GroupCommitLog& log() { return *log_; }

 private:
  // Checks ops are well formed and addressed to this agent, and that there
  // is room for new work.
  std::optional<std::string> validate(const std::vector<Op>& ops) const;
  // Share of the LMDB map in use (high-water mark), 0..1.
  double fill() const;
  static constexpr double kRefuseNewAtFill = 0.9;
  kj::Promise<PrepareResult> work(std::uint64_t epoch, Xid xid, std::vector<Op> ops, bool vote);

  AgentOptions opts_;
  lmdb::Env env_;
  MDB_dbi accounts_, branches_, meta_, unfinished_;
  std::string debugBreak_;
  std::map<std::uint16_t, std::uint64_t> epochs_;  // newest epoch per coordinator node; event loop only
  std::unique_ptr<GroupCommitLog> log_;
};

}  // namespace keel
