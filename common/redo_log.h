#pragma once
// RedoLog: one flush per group commit, and each changed LMDB page written
// once per checkpoint instead of once per commit (opt-in: coordinator
// `redo = true`, agent `--redo`; docs/operations.md "Redo log").
//
// A durable LMDB commit costs two device flushes here (the data pages,
// then the meta page through an O_DSYNC descriptor), and every commit
// writes every page it changed. In redo mode the group log's writer keeps
// ONE LMDB write transaction open between checkpoints; each group runs in a
// nested transaction inside it, and its writes (every put and del, recorded
// by the transaction: lmdb::Env::beginRecordedNested) are appended to a
// preallocated, zero-filled file (`redo.log` beside data.mdb) and made
// durable with ONE fdatasync: that is the group's durability point. The
// group is then published to readers (lmdb::Env::publish: read
// transactions see LMDB's last committed state plus these groups) before
// any caller is told.
//
// Checkpoint, every Options::checkpointEvery (counted from the first group
// after the last one) — sooner, after Options::checkpointIdle, when the
// writer has nothing queued — when the file's half is full, and at the
// stop: the writer waits until the previous checkpoint is flushed, marks
// this one PENDING (its LMDB txnid written to `redo.pending` and flushed,
// markPending), stores the LSN of the last group in the open transaction
// and commits it without any flush (Env::deferSync, LMDB's MDB_NOSYNC):
// the writer stops only for LMDB's page writes. The flusher thread then
// flushes data.mdb (GroupCommitLog). So the file is two halves used in
// turn: the records between two checkpoints stay in their half through
// the next checkpoint, which begins only once the one that ended them is
// flushed. The overlay is emptied. A checkpoint that must be durable at
// once (the stop, a full half, a full map, checkpointSync for a copy) is
// flushed before the writer goes on and is no longer pending.
//
// Without a flush between a checkpoint's pages and its meta page, a power
// loss can leave the meta page on disk without all its pages. Recovery
// (openEnvRecovering) therefore, before LMDB reads a meta page, puts the
// older meta page in the slot of a newest one that carries the pending
// txnid: LMDB opens at the checkpoint before, whose pages are whole (LMDB
// reuses a page only two commits after the one that freed it, and that
// checkpoint was flushed before the pending one began), and the two
// halves hold every group after it. A pending checkpoint whose flush did
// finish is reverted the same way (its groups replay); a commit made
// after it by any other writer has a newer txnid and is never touched.
// LMDB's file is therefore always a whole LMDB state, and every group
// after it is in redo.log.
//
// Records: a 32-byte header (magic, crc32c of the rest, lsn, the log's id,
// length) and the payload. LSNs increase by one per group for the whole
// life of the log. A scan from offset 0 stops at the first record that is
// torn, fails its CRC, carries another id or breaks the sequence: after a
// rewind the file still holds older records past the new ones, whose LSNs
// are all at or below the checkpoint's, so only the newest chain counts;
// the chains at the start of the two halves are merged in LSN order.
//
// Recovery (openEnvRecovering, before anything reads LMDB): the groups of
// the chain above LMDB's checkpoint LSN are applied in one durable LMDB
// commit. A chain that does not continue LMDB's LSN (a data.mdb older than
// the log, or another log's file) is refused, changing nothing.
//
// Failure: a failed write or flush of the redo log, or a failed checkpoint
// commit, ends the process (fail-stop, as PostgreSQL does since 2018):
// whether the record reached the disk is unknown, so no caller may be told
// anything; the restart's recovery decides from what is on disk. A full
// map is not such a failure: a checkpoint meeting MDB_MAP_FULL commits its
// durable groups one by one, and near a full map every group is committed
// to LMDB directly, not appended (GroupCommitLog::enterDirect); recovery
// whose one commit does not fit replays one commit per group.
//
// Thread: the group log's writer thread, except the static recovery.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/lmdb.h"

namespace keel {

class RedoLog {
 public:
  struct Options {
    std::uint64_t fileBytes = std::uint64_t(16) << 20;
    // With the flush on the flusher thread, a checkpoint stops the writer
    // only for its page writes, so rare ones are cheap (docs/performance.md,
    // ninth sitting, with the flush in the background: 50 ms / idle 10 ms
    // 16.6k/s at 64 outstanding, 50 / 50 17.0k, 100 / 100 19.0k with p99
    // 8.5-9.4 ms; one client's p99 2.8-2.9 ms at 100 / 100 instead of
    // 1.7-2.2 with the 10 ms idle rule).
    std::chrono::milliseconds checkpointEvery{100};
    // ... and sooner, this long after the first group, when the writer has
    // nothing queued (at 64 outstanding the queue empties for moments, so
    // a short one fires there too, ~65 times a second at 10 ms).
    std::chrono::milliseconds checkpointIdle{100};
  };

  // Opens (creating it zero-filled, or at the wrong size) `redo.log` in the
  // environment's directory. LMDB must hold every group of an earlier run
  // (openEnvRecovering ran); the first record goes at offset 0. Before the
  // group log's writer starts (it may write LMDB durably, once, to give the
  // log its id). Throws lmdb::Error naming what failed.
  RedoLog(lmdb::Env& env, Options opts);
  ~RedoLog();
  RedoLog(const RedoLog&) = delete;
  RedoLog& operator=(const RedoLog&) = delete;

  // The durability point of a group: its record is on disk when this
  // returns true. False, with nothing written, when it does not fit before
  // the end of the half: the caller checkpoints durably instead (LMDB's
  // commit and a flush then make the group durable). Throws if the write or the flush fails (the
  // caller stops the process).
  bool append(std::string_view ops);
  // Groups appended since the last checkpoint.
  std::uint64_t pending() const { return pending_; }
  // When the next checkpoint is due (meaningful while pending() > 0).
  std::chrono::steady_clock::time_point checkpointDue() const { return firstPendingAt_ + opts_.checkpointEvery; }
  // When it is due if the writer is idle.
  std::chrono::steady_clock::time_point checkpointDueIdle() const {
    return firstPendingAt_ + std::min(opts_.checkpointIdle, opts_.checkpointEvery);
  }
  // In the transaction the checkpoint commits: the LSN of the last group.
  void stamp(lmdb::Txn& txn) { stampAt(txn, lsn_); }
  // ... or of an earlier one (a full map: GroupCommitLog commits the groups
  // since the last checkpoint one by one).
  void stampAt(lmdb::Txn& txn, std::uint64_t lsn);
  // The LSN of the last group appended.
  std::uint64_t lsn() const { return lsn_; }
  // Before a checkpoint's commit without a flush: `txnid` (the commit's
  // LMDB transaction id) is written to `redo.pending` and flushed, so that
  // recovery can revert the commit if its flush was not confirmed
  // (openEnvRecovering). Throws if the write or the flush fails.
  void markPending(std::uint64_t txnid);
  // After the checkpoint's commit returned: LMDB holds every record, its
  // meta page durable at the latest with the next commit; the next record
  // goes at the start of the other half.
  void checkpointed();

  static std::string path(const std::string& dir);
  static std::string pendingPath(const std::string& dir);

  // What recovery found, for logs and tests.
  struct Recovered {
    bool present = false;         // a redo.log was there
    std::uint64_t checkpoint = 0;  // LMDB's LSN before recovery
    std::uint64_t groups = 0;      // group records replayed
    std::uint64_t ops = 0;         // writes replayed
    std::uint64_t reverted = 0;    // the LMDB txnid of a pending checkpoint put back (0: none)
    bool oneByOne = false;         // one commit of all did not fit the map: one commit per group
  };

 private:
  void create();

  lmdb::Env& env_;
  Options opts_;
  std::string dir_;
  MDB_dbi db_ = 0;
  std::uint64_t id_ = 0;
  int fd_ = -1;
  int pendingFd_ = -1;
  std::uint64_t halfBytes_ = 0;
  std::uint64_t half_ = 0;  // 0 or 1: the half the next record goes in
  std::uint64_t off_ = 0;   // in that half
  std::uint64_t lsn_ = 0;  // of the last record written (or LMDB's, at the start)
  std::uint64_t pending_ = 0;
  std::chrono::steady_clock::time_point firstPendingAt_;
  std::string buf_;
};

// Opens the LMDB environment in `dir`, first applying what a redo log there
// holds past LMDB's checkpoint (nothing happens when there is none).
// Refuses, changing nothing, when the log does not continue LMDB's
// checkpoint or a record cannot be applied.
//
// Read-only (keel-coordinator --check-wal, beside a live writer or after a
// crash), nothing is written: the groups past LMDB's checkpoint are read
// into a view that every read transaction shows above its own snapshot
// (lmdb::Env::setReadView; `recovered` counts them), so a reader sees what
// every caller was told, not only what the last checkpoint holds. Refused,
// reading nothing, when a checkpoint still marked pending was marked
// before the machine last restarted (its pages may be missing until a
// writable start reverts it), when a group writes a database data.mdb does
// not hold yet, or when a writer checkpoints faster than the file can be
// read.
lmdb::Env openEnvRecovering(const std::string& dir, const lmdb::EnvOptions& opts,
                            RedoLog::Recovered* recovered = nullptr);

}  // namespace keel
