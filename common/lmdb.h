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
// - Default flags are durable (two syncs per commit). We never set
//   MDB_NOSYNC / MDB_NOMETASYNC: durability comes from batching instead.

#include <lmdb.h>

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

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

class Txn {
 public:
  Txn() = default;
  Txn(Txn&& o) noexcept : txn_(o.txn_) { o.txn_ = nullptr; }
  Txn& operator=(Txn&& o) noexcept;
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  ~Txn() { abort(); }  // a transaction not committed is aborted

  void commit();
  void abort() noexcept;
  MDB_txn* raw() const { return txn_; }
  explicit operator bool() const { return txn_ != nullptr; }

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

 private:
  friend class Env;
  explicit Txn(MDB_txn* t) : txn_(t) {}
  MDB_txn* txn_ = nullptr;
};

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
  Env(Env&& o) noexcept : env_(o.env_), readOnly_(o.readOnly_) { o.env_ = nullptr; }
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;
  ~Env();

  Txn beginRead() const;
  Txn beginWrite();
  // A nested write transaction inside `parent` (aborting it leaves the
  // parent as it was).
  Txn beginNested(Txn& parent);
  // Opens (creating, unless read-only) a named database; call once at
  // start-up. Read-only, a missing database opens as kAbsentDb.
  MDB_dbi openDb(const char* name);
  MDB_env* raw() const { return env_; }
  std::size_t mapSize() const;
  // Share of the map in use, 0..1: the file's high-water mark (LMDB reuses
  // freed pages below it, so this is an upper bound of what is in use).
  double fill() const;

 private:
  MDB_env* env_ = nullptr;
  bool readOnly_ = false;
};

}  // namespace keel::lmdb
