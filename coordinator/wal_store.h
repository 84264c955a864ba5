#pragma once
// WalStore: the coordinator's write-ahead log in one LMDB environment.
//
// Named databases (keys are big-endian u64 seqs, so order is numeric):
//   meta          node id, epoch, seq high-water mark (SeqAllocator)
//   interactions  seq -> InteractionRecord   (the "interaction table")
//   rollbacks     seq -> RollbackRecord      (the "rollback table")
//   active        seq -> ""  for every interaction not yet finished, so
//                 recovery scans only unfinished work
//   windows       seq -> window of inconsistency (u64 us) + kind ('r' rolled
//                 back, 'c' committed after retries, 'h' heuristic), for
//                 every finished interaction that saw a failure (keelctl stats)
//   audit         (time, seq) -> AuditRecord of each operator action
//   requests      request id -> RequestRecord (the seq it names): written in
//                 the same transaction as the interaction's first record
//   heuristic     seq -> "" for every interaction that ended heuristic and
//                 that no operator has marked reconciled (keelctl list)
//
// Finished interactions older than hot_retention_s leave these tables
// (with their rollback record, window and request row) for the archive
// (coordinator/archive.h): archiveCandidates, then dropArchived.
//
// Every write goes through the GroupCommitLog: a save() resolves once its
// group's durable LMDB commit returned. Callers decide whether to wait: the
// COMMIT decision must be durable before the client hears "committed";
// other states are written without waiting (presumed abort makes a lost
// non-decision record harmless).

#include <kj/async.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/group_log.h"
#include "common/lmdb.h"
#include "common/records.h"
#include "common/redo_log.h"
#include "common/seq.h"

namespace keel {

struct StoredInteraction {
  std::string interaction;  // encoded (envelope) bytes
  std::string rollback;     // empty if none
};
struct ArchivedInteraction;
class Archive;

class WalStore {
 public:
  // `dir` exists (DataDir made it). Opening writes nothing to an existing
  // WAL. readOnly (keel-coordinator --check-wal, beside a live coordinator):
  // MDB_RDONLY, no writer thread; only the const readers, loadUnfinished and
  // checkAll may be used.
  // redo: the writer's redo mode (common/redo_log.h). Writable, a redo log
  // an earlier run left is replayed first either way (openEnvRecovering).
  WalStore(const std::string& dir, std::size_t mapSizeBytes, bool readOnly = false, bool redo = false);
  ~WalStore();

  // Start-up, blocking: checks the node id against the one on disk (a data
  // directory belongs to one node), bumps and durably stores the epoch.
  // atLeast: the epoch is raised to it at least (a cluster member's epoch
  // comes from etcd).
  std::uint64_t openIncarnation(std::uint16_t nodeId, std::uint64_t atLeast = 0);
  // The epoch stored by the last incarnation (0 for a new WAL); writes nothing.
  std::uint64_t storedEpoch() const;
  std::unique_ptr<SeqAllocator> makeSeqAllocator(std::uint16_t nodeId, std::uint32_t block, std::uint64_t floor = 0,
                                                 SeqAllocator::Mirror mirror = nullptr);

  // Unfinished interactions with their rollback records (start-up).
  // Throws CorruptRecord naming the key if a record does not decode.
  struct Unfinished {
    InteractionRecord interaction;
    std::optional<RollbackRecord> rollback;
  };
  std::vector<Unfinished> loadUnfinished();

  // Queues the interaction (and the rollback record, if given) for the next
  // group commit; the promise resolves when durable.
  // lazy: the write need not be forced and starts no group commit of its
  // own (GroupCommitLog::runLazy): for records nobody waits on.
  // request: the request id's row, written in the same transaction (given
  // with the interaction's first write only).
  kj::Promise<void> save(const InteractionRecord& r, const RollbackRecord* rb, bool lazy = false,
                         const RequestRecord* request = nullptr);

  // The row of a request id; throws CorruptRecord if it does not decode.
  // Not in the hot WAL: looked up in the archive (if set) unless nothing
  // archived was created at or after `notBeforeUs` (a request first sent
  // then cannot name an archived interaction: a fresh request costs no
  // archive lookup).
  std::optional<RequestRecord> findRequest(const std::string& requestId, Micros notBeforeUs = 0) const;
  // The retention purge: walks the interactions table in seq order (which
  // is creation order) from where it stopped last time (meta
  // "request_purge_seq"), at most `max` records, and drops the request rows
  // of finished interactions created before `beforeUs`. One lazy write.
  // No index of its own: a time-ordered index would cost every
  // interaction one more B-tree insert (and its pages) in its first commit.
  struct Purged {
    std::size_t dropped = 0;  // request rows dropped
    bool more = false;        // stopped at `max`: older records may be left
  };
  kj::Promise<Purged> purgeRequests(Micros beforeUs, std::size_t max);

  // Durable operator audit entry.
  kj::Promise<void> appendAudit(const AuditRecord& a);
  std::vector<AuditRecord> listAudit(std::size_t limit) const;

  // The hot WAL's record, else the archive's (if set).
  std::optional<StoredInteraction> get(std::uint64_t seq) const;
  bool holdsHot(std::uint64_t seq) const;  // in the hot WAL itself
  const std::string& dir() const { return dir_; }

  // ---- the archive (coordinator/archive.h) ----
  // Where get and findRequest look for what left the hot WAL. Set before
  // serving; the archive outlives this store.
  void setArchive(const Archive* a) { archive_ = a; }
  // Finished interactions (not heuristic, not active) created before
  // `beforeUs`, at most `max`, with their rollback records and the request
  // rows that name them: what the archiver moves next. Creation order per
  // node: a node's seqs are left at the first one created at or after
  // beforeUs; unfinished and heuristic ones are passed over (they never
  // leave the hot WAL; once finished, the next pass finds them).
  std::vector<ArchivedInteraction> archiveCandidates(Micros beforeUs, std::size_t max) const;

  // Where node `node`'s release floor may stand, as far as this hot WAL
  // tells (Coordinator::releaseFloors): its records in seq order, passing
  // over (into `keep`, at most maxKeep) those that never leave the hot WAL
  // on their own (unfinished or heuristic) and were created before
  // `stuckBeforeUs`; the first other record stops the walk (`stop` = its
  // seq: finished but not archived yet, or young, or damaged). nullopt
  // stop: no record after the kept ones.
  struct ReleaseScan {
    std::optional<std::uint64_t> stop;
    std::vector<std::uint64_t> keep;
  };
  ReleaseScan releaseScan(std::uint16_t node, Micros stuckBeforeUs, std::size_t maxKeep) const;
  // Drops the records the archive now holds durably (their rollback
  // record, window and request row too), each only if it is still the very
  // bytes that were archived (a record that changed meanwhile stays, and is
  // archived again later). Resolves to how many were dropped. Lazy write.
  kj::Promise<std::size_t> dropArchived(std::vector<ArchivedInteraction> moved);
  // One page of an export: up to `maxScanned` interaction records after
  // seq `after` (0: from the start), those created in [fromUs, toUs) kept
  // with their rollback records. `next`: where the next page starts (0:
  // the table is done).
  struct ExportPage {
    std::vector<StoredInteraction> records;
    std::vector<std::uint64_t> damaged;  // seqs whose record does not decode (skipped)
    std::uint64_t scanned = 0, next = 0, total = 0;
  };
  // The scan starts at the first record created in the range and leaves a
  // node's seqs once they are created kRangeSlackUs past it (seqs of one
  // node are issued in creation order), so a page costs about what the
  // range holds; a wall clock stepped back by more than kRangeSlackUs may
  // hide records created around the step.
  ExportPage exportPage(std::uint64_t after, Micros fromUs, Micros toUs, std::size_t maxScanned) const;
  static constexpr Micros kRangeSlackUs = 1'000'000;
  std::vector<std::string> listUnfinished(std::size_t limit) const;
  // Heuristic interactions not yet marked reconciled, oldest first.
  std::vector<std::string> listHeuristic(std::size_t limit) const;
  // Marks `seq` reconciled (it leaves listHeuristic) and writes the audit
  // entry, in one durable transaction; false if it was not listed.
  kj::Promise<bool> reconciled(std::uint64_t seq, const AuditRecord& a);

  struct Windows {
    std::vector<std::uint64_t> us;  // sorted ascending
    std::uint64_t rollbacks = 0, retriedCommits = 0, heuristic = 0;
  };
  Windows windows() const;

  // Share of the LMDB map in use (high-water mark of the file), 0..1.
  double fill() const;
  // Share of the map in use, LMDB's reusable free pages left out, 0..1
  // (lmdb::Env::usedFractionOrFill: walks the free list).
  double inUse() const { return env_.usedFractionOrFill(); }
  std::size_t mapSize() const { return env_.mapSize(); }
  lmdb::Env& env() { return env_; }  // for hot backups (common/backup.h)

  // Set by `keel-coordinator --restore-from` (coordinator/restore.h): this
  // WAL was restored from a backup. Every seq of this node with a counter
  // below `floor` may have been decided by the lost WAL after the backup,
  // so none of them is presumed aborted; request ids first sent before
  // `atUs` may have run already.
  struct RestoreMark {
    std::uint64_t floor = 0;  // seq counter
    Micros atUs = 0;
  };
  std::optional<RestoreMark> restoreMark() const;

  // Decodes every record of every table; returns "table key: problem" for
  // each damaged one (keel-coordinator --check-wal). `checked`: how many
  // records were looked at.
  std::vector<std::string> checkAll(std::size_t* checked = nullptr) const;
  // What the open read of redo.log (or, writable, replayed from it):
  // read-only, the groups past data.mdb's last checkpoint that every read
  // shows (openEnvRecovering).
  const RedoLog::Recovered& redoRead() const { return redoRead_; }

  GroupCommitLog& log() { return *log_; }
  const GroupCommitLog& log() const { return *log_; }
  std::uint64_t epoch() const { return epoch_; }

 private:
  // The first seq at or after `at` of a record created at or after fromUs,
  // by bisection of each node's seqs (creation order); nullopt if none.
  std::optional<std::uint64_t> firstCreatedFrom(const lmdb::Txn& txn, std::uint64_t at, Micros fromUs) const;

  std::string dir_;
  RedoLog::Recovered redoRead_;  // before env_: filled by its open
  lmdb::Env env_;
  MDB_dbi meta_, interactions_, rollbacks_, active_, windows_, audit_, requests_, heuristic_;
  std::unique_ptr<GroupCommitLog> log_;
  std::uint64_t epoch_ = 0;
  const Archive* archive_ = nullptr;
};

// Meta keys of a restored WAL (WalStore::RestoreMark).
inline constexpr const char* kRestoreFloorKey = "restore_floor";
inline constexpr const char* kRestoredAtKey = "restored_at_us";
inline constexpr const char* kRestoredFromKey = "restored_from";  // the backup's manifest JSON

}  // namespace keel
