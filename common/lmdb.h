#pragma once
// Move-only RAII wrappers around LMDB (lmdbxx mould).
//
// Caveats (from lmdb.h, and what they mean here):
// - One write transaction at a time per environment. In Keel only the
//   GroupCommitLog writer thread opens write transactions.
// - Read transactions are per thread (we do not use MDB_NOTLS): keep them
//   short and never hold one across an event-loop turn.
// - Values returned by get() point into the map and die with the
//   transaction; they are copied out (std::string) here on purpose, and
//   LMDB gives no alignment promise, so capnp decoding copies again into
//   word-aligned memory (common/records.cc).
// - MDB_MAP_FULL surfaces as MapFullError: the operator must raise map_size.
// - Never open one environment twice in a process, never use it after fork().
// - Default flags are durable (two syncs per commit). Only while the redo
//   log's writer runs is MDB_NOSYNC set (Env::deferSync): its checkpoints
//   are flushed by a second thread, and recovery reverts one whose flush
//   was not confirmed (common/redo_log.h). Durability comes from
//   batching, or from the redo log, which keeps every group's record
//   until LMDB's commit holding it is durable and serves the groups in
//   between to readers from an overlay (Env::publish) until the
//   checkpoint.

#include <lmdb.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace keel::lmdb {

class Error : public std::runtime_error {
 public:
  Error(const std::string& what, int code);
  int code() const { return code_; }

 private:
  int code_;
};

// The map is full: no more data fits until map_size is raised.
class MapFullError : public Error {
 public:
  explicit MapFullError(const std::string& what) : Error(what, MDB_MAP_FULL) {}
};

[[noreturn]] void throwError(const char* what, int rc);

class Env;
struct Overlay;

// Read transactions an Env keeps for reuse (mdb_txn_reset / mdb_txn_renew):
// beginning one then costs no allocation (LMDB callocs ~1 KB per
// mdb_txn_begin, which glibc serves from its large bins) and no setup of
// the transaction's tables. See Env::beginRead.
struct ReadTxnPool;

class Txn {
 public:
  Txn() = default;
  Txn(Txn&& o) noexcept
      : txn_(o.txn_),
        pool_(o.pool_),
        names_(o.names_),
        ownRedo_(std::move(o.ownRedo_)),
        redo_(o.redo_),
        redoMark_(o.redoMark_),
        overlay_(std::move(o.overlay_)) {
    o.txn_ = nullptr;
    o.redo_ = nullptr;
  }
  Txn& operator=(Txn&& o) noexcept;
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  ~Txn() { abort(); }  // a transaction not committed is aborted

  // A nested transaction that records its writes leaves them to its parent
  // here; one that is aborted (or whose commit fails) drops them with its
  // changes.
  void commit();
  void abort() noexcept;
  MDB_txn* raw() const { return txn_; }
  explicit operator bool() const { return txn_ != nullptr; }
  // LMDB's id of this transaction (a write transaction's commit carries
  // it into the meta page).
  std::uint64_t id() const { return mdb_txn_id(txn_); }

  // Returns nullopt for MDB_NOTFOUND. Reads of kAbsentDb find nothing.
  std::optional<std::string> get(MDB_dbi dbi, std::string_view key) const;
  void put(MDB_dbi dbi, std::string_view key, std::string_view value);
  // Returns false if the key was absent.
  bool del(MDB_dbi dbi, std::string_view key);
  // Calls fn(key, value) in key order from `from` (inclusive) until fn
  // returns false. Views are only valid inside fn.
  void scan(MDB_dbi dbi, std::string_view from,
            const std::function<bool(std::string_view, std::string_view)>& fn) const;
  std::size_t count(MDB_dbi dbi) const;

  // Redo recording (Env::beginRecordedNested): every put and del of this
  // transaction and of its committed nested transactions, encoded as
  // decodeRedoOps reads them. Empty if it does not record.
  bool recording() const { return redo_ != nullptr; }
  std::string takeRedo();

 private:
  friend class Env;
  explicit Txn(MDB_txn* t) : txn_(t) {}
  Txn(MDB_txn* t, ReadTxnPool* pool) : txn_(t), pool_(pool) {}
  void record(char op, MDB_dbi dbi, std::string_view key, std::string_view value);
  void dropRedo() noexcept;  // cuts the buffer back to redoMark_ and stops recording
  // Reads through the overlay (a read transaction of an Env with one).
  std::optional<std::optional<std::string>> overlayGet(MDB_dbi dbi, std::string_view key) const;
  MDB_txn* txn_ = nullptr;
  ReadTxnPool* pool_ = nullptr;  // a read transaction: given back here, reset, instead of freed
  const std::vector<std::string>* names_ = nullptr;  // the Env's database names, by handle
  // Recording: one buffer per recorded transaction (ownRedo_, held by the
  // one Env::beginRecordedNested made), shared by the transactions nested
  // in it. They run one at a time, innermost first (LMDB's rule), so each
  // appends to the end; one that aborts cuts the buffer back to where it
  // began (redoMark_), and a commit leaves its bytes to its parent as they
  // are: no copy per level, no buffer per nested transaction.
  std::unique_ptr<std::string> ownRedo_;
  std::string* redo_ = nullptr;  // the buffer this transaction records into; null if it does not
  std::size_t redoMark_ = 0;     // the buffer's size when this transaction began
  std::shared_ptr<const Overlay> overlay_;    // a read transaction's view of the overlay
};

// Writes of one durable group not yet in LMDB's committed state (redo log,
// common/redo_log.h): per database, key -> value, or nullopt for a delete.
struct Delta {
  std::map<MDB_dbi, std::map<std::string, std::optional<std::string>, std::less<>>> dbs;
  // The group's LSN in the redo log: set for a read-only Env's view
  // (Env::setReadView), which drops the groups its snapshot already holds.
  std::uint64_t lsn = 0;
};
// What a read transaction sees on top of LMDB's snapshot: the durable
// groups since the last checkpoint, oldest first (a later one wins).
struct Overlay {
  std::vector<std::shared_ptr<const Delta>> deltas;
};

// One recorded write: a put (value set) or a del, on a database by name.
struct RedoOp {
  bool put = false;
  std::string db, key, value;
};
// Decodes what Txn::takeRedo returned. Throws Error on malformed input.
std::vector<RedoOp> decodeRedoOps(std::string_view bytes);
class Env;
// The same writes, decoded straight into an overlay delta (databases by
// the Env's handles; one the Env has not opened by name is refused).
std::shared_ptr<const Delta> toDelta(const Env& env, std::string_view bytes, std::uint64_t lsn = 0);
// The databases the recorded writes name, each once, in order of first use.
std::vector<std::string> redoDbNames(std::string_view bytes);
// Applies recorded writes in `txn` (databases opened, or created, by name).
void applyRedoOps(Txn& txn, const std::vector<RedoOp>& ops);
// Applies an overlay delta's writes in `txn` (databases by handle).
void applyDelta(Txn& txn, const Delta& delta);

struct EnvOptions {
  std::size_t mapSize = std::size_t(1) << 30;  // 1 GiB
  unsigned maxDbs = 16;
  unsigned maxReaders = 126;
  // MDB_RDONLY: no write transaction, openDb only finds existing databases.
  // Readers still register in lock.mdb, so this may run beside a live writer.
  bool readOnly = false;
};

// What a read-only Env's openDb returns for a database that does not exist
// (a layout older than this build's): it reads as empty.
inline constexpr MDB_dbi kAbsentDb = ~MDB_dbi(0);

class Env {
 public:
  // Opens the environment in an existing directory (creating directories is
  // DataDir's job, see common/data_dir.h) with durable default flags and
  // clears stale reader slots (mdb_reader_check).
  Env(const std::string& dir, const EnvOptions& opts);
  Env(Env&& o) noexcept;
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;
  ~Env();

  Txn beginRead() const;
  Txn beginWrite();
  // A nested write transaction inside `parent` (aborting it leaves the
  // parent as it was).
  Txn beginNested(Txn& parent);
  // A nested write transaction that records its writes (Txn::takeRedo),
  // and so do the nested transactions begun inside it; for the group log's
  // redo mode. Its record is not handed to `parent` on commit.
  Txn beginRecordedNested(Txn& parent);
  // The group log's long write transaction in redo mode (beginWrite is
  // refused meanwhile: see setLogOwned).
  Txn beginLogWrite();
  // Redo mode, set by the group log's writer while it runs: a commit
  // writes its pages and its meta page without any flush (MDB_NOSYNC,
  // which LMDB lets change at any time); it is durable once sync() has
  // run. Until then a power loss may leave its meta page on disk without
  // all its pages: the redo log marks such a commit pending first, and
  // recovery reverts it (common/redo_log.h).
  void deferSync(bool on);
  // Flushes data.mdb (mdb_env_sync, forced): a commit made with a deferred
  // meta page is durable when this returns.
  void sync();
  // Opens (creating, unless read-only) a named database; call once at
  // start-up. Read-only, a missing database opens as kAbsentDb.
  MDB_dbi openDb(const char* name);
  MDB_env* raw() const { return env_; }
  std::size_t mapSize() const;
  // Set by the group log in redo mode while it runs: its writer holds
  // LMDB's write transaction open between checkpoints, so every write must
  // go through the group log, and beginWrite() (and openDb of a new
  // database) is refused instead of waiting for the next checkpoint.
  void setLogOwned(bool owned) { logOwned_.store(owned); }
  // Redo mode: a durable group's writes become visible to read
  // transactions begun from now on (before its callers are told).
  void publish(std::shared_ptr<const Delta> delta);
  // Redo mode: LMDB's committed state now holds every published group
  // (a checkpoint committed): the overlay is emptied.
  void clearOverlay();
  // Groups published and not yet checkpointed (tests, metrics).
  std::size_t overlayGroups() const;
  // Those groups, oldest first (null: none).
  std::shared_ptr<const Overlay> overlay() const;
  // A read-only Env beside (or after) a redo-mode writer: `groups` are the
  // redo log's groups above LMDB's checkpoint when it was read, oldest
  // first, each tagged with its LSN (Delta::lsn). Every read transaction
  // begun from now on shows those above its own snapshot's LSN (the 8-byte
  // value of `lsnKey` in database `lsnDb`): a checkpoint committed since
  // holds the ones at or below it, possibly overwritten by later groups,
  // so an older group must not shadow it (openEnvRecovering, read-only).
  void setReadView(MDB_dbi lsnDb, std::string lsnKey, std::vector<std::shared_ptr<const Delta>> groups);
  // The handle of a database opened by name (kAbsentDb if none).
  MDB_dbi dbHandle(std::string_view name) const;
  // Share of the map in use, 0..1: the file's high-water mark (LMDB reuses
  // freed pages below it, so this is an upper bound of what is in use).
  // Cheap (two calls that read the meta page); any thread.
  double fill() const;
  // Share of the map in use, 0..1: the high-water mark less the free pages
  // LMDB can reuse now — those on its free list (as the last commit left
  // it) that no reader's snapshot still holds; a long reader's (a hot
  // backup's) count as in use until it ends. A read transaction walks the
  // list: call it rarely. Any thread that has no read transaction of this
  // environment open (LMDB gives a thread one: MDB_BAD_RSLOT, thrown).
  double usedFraction() const;
  // usedFraction, or fill() (an upper bound) when the free pages cannot be
  // counted now (this thread has a read transaction open): for gauges.
  double usedFractionOrFill() const;

 private:
  MDB_env* env_ = nullptr;
  bool readOnly_ = false;
  std::atomic<bool> logOwned_{false};
  // Database names by handle, for redo records (stable across moves).
  std::unique_ptr<std::vector<std::string>> names_ = std::make_unique<std::vector<std::string>>();
  // Redo mode's overlay (publish / clearOverlay); a read transaction takes
  // the pointer, then begins LMDB's snapshot (that order: see beginRead).
  struct OverlayBox {
    mutable std::mutex mu;
    std::shared_ptr<const Overlay> current;  // GUARDED_BY(mu); null = empty
  };
  std::unique_ptr<OverlayBox> overlay_ = std::make_unique<OverlayBox>();
  // A read-only Env's view of the redo log (setReadView); null: none.
  struct ReadView {
    MDB_dbi lsnDb = 0;
    std::string lsnKey;
    std::shared_ptr<const Overlay> all;  // every group read, oldest first
  };
  std::unique_ptr<ReadView> view_;
  // Reset read transactions for beginRead to renew (freed before the
  // environment closes; a Txn never outlives its Env).
  std::unique_ptr<ReadTxnPool> readPool_;
  // The view's groups above `snapshot`'s LSN (null: none).
  std::shared_ptr<const Overlay> viewAbove(MDB_txn* snapshot) const;
};

}  // namespace keel::lmdb
