#pragma once
// BranchLog: an agent's durable record of every branch, whatever its
// resource adapter. One LMDB environment holds:
//   branches    XID -> BranchRecord (kept after the branch finishes, until
//               forgotten, so a repeated commit or rollback gets a true answer)
//   unfinished  XID -> "" for every ACTIVE or PREPARED branch: recovery and
//               the in-doubt resolver never scan finished history
//   meta        newest epoch seen per coordinator node ("epoch/<node>"),
//               each node's release floor ("release/<node>", release()),
//               index version, the incarnation (starts so far)
// An adapter may open more databases in the same environment (the ledger
// keeps its accounts there) before start(), so that a branch's state change
// and its effect commit in one LMDB transaction.
//
// Start-up is two steps so that a refused start writes nothing: the
// constructor and check() only read; start() (after the agent has bound its
// listen address) is the first to write.
//
// Writes go through the GroupCommitLog (one writer thread, group commit).
// Fencing state is read and updated on the agent's event loop only.

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/group_log.h"
#include "common/lmdb.h"
#include "common/records.h"

namespace keel {

// A call carrying an epoch older than the newest seen from that coordinator
// node: a stale coordinator must not drive branches any more.
class StaleEpoch : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A branch record for an XID past its coordinator node's release floor
// (BranchLog::release) may not be created ACTIVE or PREPARED: its
// interaction is finished and archived, so anything arriving for it now is
// a late duplicate.
class Released : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class BranchLog {
 public:
  // redo: the writer's redo mode (common/redo_log.h). Either way a redo log
  // an earlier run left is replayed first (openEnvRecovering).
  BranchLog(const std::string& dir, std::size_t mapSizeBytes, bool redo = false);
  ~BranchLog();

  lmdb::Env& env() { return env_; }
  const lmdb::Env& envConst() const { return env_; }
  // Read-only: checks every branch record decodes (a damaged log stops the
  // agent, naming the XID) and loads the fencing state.
  void check();
  // Starts the writer thread and builds the unfinished index of a log from
  // before it existed (the first write of a start). Runs check() if not yet.
  void start();
  // The writer's options (GroupCommitLog::Options: lazyDelay), before start().
  void setLogOptions(GroupCommitLog::Options o) { logOptions_ = o; }
  GroupCommitLog& log() { return *log_; }  // after start()
  bool started() const { return log_ != nullptr; }
  // This start's number: 1 at the first start of the log, one more at each
  // start after it, durable before start() returns (so no two starts share
  // one). 0 before start(). Constant after start().
  std::uint64_t incarnation() const { return incarnation_; }

  // ---- inside a log job (writer thread) ----
  std::optional<BranchRecord> read(const lmdb::Txn& txn, Xid xid) const;
  // Writes the record and keeps the unfinished index in step. Throws
  // Released for a new ACTIVE or PREPARED record of a released XID (the
  // adapters check released() first and answer; this is the backstop).
  void put(lmdb::Txn& txn, const BranchRecord& rec) const;
  // Final state, written in the same transaction as its effect on the host.
  void finish(lmdb::Txn& txn, BranchRecord& rec, BranchStatus state, std::uint64_t epoch) const;
  // A rollback for a branch never seen: a tombstone refuses a late prepare.
  void tombstone(lmdb::Txn& txn, Xid xid, std::uint64_t epoch) const;
  // Remembers the newest epoch of a coordinator node durably (with the job).
  void storeEpoch(lmdb::Txn& txn, std::uint16_t node, std::uint64_t epoch) const;
  // ACTIVE and PREPARED branches, from the index (in a job's transaction,
  // or in a read transaction of any thread: Agent::accounts).
  std::vector<BranchRecord> unfinished(const lmdb::Txn& txn) const;

  // ---- event loop ----
  // Throws StaleEpoch if `epoch` is older than the newest seen from `node`;
  // remembers a newer one (made durable by storeEpoch in the next job).
  void fence(std::uint16_t node, std::uint64_t epoch);
  std::uint64_t newestEpoch(std::uint16_t node) const;
  const std::map<std::uint16_t, std::uint64_t>& fences() const { return epochs_; }
  // Runs when fence() remembers a newer epoch of a node (the coordinator
  // restarted, or was taken over): the branches its older incarnation
  // prepared here are in doubt now (the in-doubt resolver). One listener;
  // an empty function removes it.
  void onNewerEpoch(std::function<void()> f) { onNewerEpoch_ = std::move(f); }

  // Reads: a short read transaction on the calling thread.
  std::vector<BranchRecord> unfinishedBranches() const;
  std::vector<std::optional<BranchRecord>> branches(const std::vector<Xid>& xids) const;
  std::vector<BranchRecord> listBranches(Xid after, std::size_t limit, bool& more) const;
  struct Counts {
    std::uint32_t active = 0, prepared = 0, committed = 0, rolledBack = 0;
  };
  Counts counts() const;
  // Share of the LMDB map in use (high-water mark), 0..1.
  double fill() const;
  // Why new work is refused (GroupCommitLog::roomRefusal: the map nearly
  // full or short of room, so commits and rollbacks still fit), or nothing.
  std::optional<std::string> fullReason(const std::string& agentName) const;

  // Drops finished branches; unfinished ones are refused, and so is a
  // tombstone (a rollback of a branch never seen here) while a prepare of
  // its branch may still arrive: until this log has fenced a newer epoch of
  // the branch's coordinator node than the tombstone's. The prepare can come
  // only from the incarnation that issued the seq, whose epoch is at most
  // the rollback's, and once a newer one is fenced every call of it is
  // refused (StaleEpoch). Dropping it sooner would let a late prepare vote
  // YES and hold what was rolled back. (docs/protocol.md, "Tombstones".)
  struct ForgetResult {
    std::uint32_t forgotten = 0;
    std::vector<Xid> refused;
    std::vector<std::string> reasons;  // one per refused xid
  };
  kj::Promise<ForgetResult> forget(std::vector<Xid> xids);

  // ---- release: the bound on the branch log (docs/protocol.md, "Release") ----
  // A coordinator node tells each agent, after archiving, its release
  // floor: every interaction of that node with a smaller seq, except the
  // `keep` ones (decided but not finished, or heuristic: still in its hot
  // WAL), is finished at every participant and archived. From then on no
  // prepare, execute or one-phase call of such a seq can be accepted here
  // (a late duplicate: the coordinator decided it long ago), so the finished
  // records below the floor, tombstones included, protect nothing and are
  // dropped. Unfinished records are never dropped. The floor, its epoch and
  // the keep list are durable with the first drop; a lower floor than the
  // one stored changes nothing (answered with the stored one).
  struct ReleaseResult {
    std::uint32_t dropped = 0;  // records dropped by this call
    bool more = false;          // the per-call bound was reached: call again
    std::uint64_t floor = 0;    // the floor in force after the call
  };
  static constexpr std::size_t kMaxReleaseKeep = 1024;
  static constexpr std::size_t kMaxDropPerCall = 20000;
  // Bad arguments (a floor or kept seq of another node, a kept seq not
  // below the floor, too many kept, epoch 0) throw std::invalid_argument;
  // a stale epoch throws StaleEpoch. Event loop.
  kj::Promise<ReleaseResult> release(std::uint16_t node, std::uint64_t epoch, std::uint64_t floor,
                                     std::vector<std::uint64_t> keep);
  // Released: `xid` is below its node's floor and not kept. Any thread.
  bool released(Xid xid) const;
  // Why a call for a released XID is refused (nullopt: not released).
  std::optional<std::string> releasedReason(Xid xid) const;
  std::uint64_t releaseFloor(std::uint16_t node) const;
  struct FloorView {
    std::uint16_t node = 0;
    std::uint64_t floor = 0;
    std::uint32_t kept = 0;
  };
  std::vector<FloorView> releaseFloors() const;

 private:
  lmdb::Env env_;
  MDB_dbi branches_, unfinished_, meta_;
  std::unique_ptr<GroupCommitLog> log_;
  GroupCommitLog::Options logOptions_;
  std::map<std::uint16_t, std::uint64_t> epochs_;  // event loop only
  std::function<void()> onNewerEpoch_;             // event loop only
  struct Floor {
    std::uint64_t floor = 0, epoch = 0;
    std::vector<std::uint64_t> keep;  // sorted
  };
  // Written by release jobs on the writer thread, read anywhere.
  mutable std::mutex releaseMu_;
  std::map<std::uint16_t, Floor> floors_;
  bool checked_ = false;
  bool redo_ = false;
  std::uint64_t incarnation_ = 0;
};

// A page of listBranches with branches the log does not hold yet merged in
// (a postgres agent's YES votes whose PREPARED records are on their way).
// `logged`: the log's page after some XID (at most `limit`), `more` saying
// whether the log has more; `extra`: other branches after the same XID, in
// XID order, at most limit + 1 (one more says they have more). Returns
// them in XID order, at most `limit`, the log's record winning where both
// hold a branch, and never an extra branch past the log's last listed one
// while the log has more (its next ones may come first); `more` is set
// when anything is left for a next page.
std::vector<BranchRecord> mergeListed(std::vector<BranchRecord> logged, std::vector<BranchRecord> extra,
                                      std::size_t limit, bool& more);

}  // namespace keel
