#include "common/lmdb.h"

namespace keel::lmdb {

Error::Error(const std::string& what, int code) : std::runtime_error(what), code_(code) {}

void throwError(const char* what, int rc) {
  std::string msg = std::string(what) + ": " + mdb_strerror(rc);
  if (rc == MDB_MAP_FULL) {
    throw MapFullError(msg + " (the LMDB map is full: raise map_size in the config)");
  }
  throw Error(msg, rc);
}

Txn& Txn::operator=(Txn&& o) noexcept {
  if (this != &o) {
    abort();
    txn_ = o.txn_;
    o.txn_ = nullptr;
  }
  return *this;
}

void Txn::commit() {
  MDB_txn* t = txn_;
  txn_ = nullptr;  // mdb_txn_commit frees the handle even on failure
  int rc = mdb_txn_commit(t);
  if (rc != 0) throwError("mdb_txn_commit", rc);
}

void Txn::abort() noexcept {
  if (txn_ != nullptr) {
    mdb_txn_abort(txn_);
    txn_ = nullptr;
  }
}

static MDB_val toVal(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}

std::optional<std::string> Txn::get(MDB_dbi dbi, std::string_view key) const {
  if (dbi == kAbsentDb) return std::nullopt;
  MDB_val k = toVal(key), v;
  int rc = mdb_get(txn_, dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return std::nullopt;
  if (rc != 0) throwError("mdb_get", rc);
  return std::string(static_cast<const char*>(v.mv_data), v.mv_size);
}

void Txn::put(MDB_dbi dbi, std::string_view key, std::string_view value) {
  MDB_val k = toVal(key), v = toVal(value);
  int rc = mdb_put(txn_, dbi, &k, &v, 0);
  if (rc != 0) throwError("mdb_put", rc);
}

bool Txn::del(MDB_dbi dbi, std::string_view key) {
  MDB_val k = toVal(key);
  int rc = mdb_del(txn_, dbi, &k, nullptr);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) throwError("mdb_del", rc);
  return true;
}

void Txn::scan(MDB_dbi dbi, std::string_view from,
               const std::function<bool(std::string_view, std::string_view)>& fn) const {
  if (dbi == kAbsentDb) return;
  MDB_cursor* cur = nullptr;
  int rc = mdb_cursor_open(txn_, dbi, &cur);
  if (rc != 0) throwError("mdb_cursor_open", rc);
  struct Closer {
    MDB_cursor* c;
    ~Closer() { mdb_cursor_close(c); }
  } closer{cur};
  MDB_val k = toVal(from), v;
  rc = from.empty() ? mdb_cursor_get(cur, &k, &v, MDB_FIRST)
                    : mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  while (rc == 0) {
    if (!fn(std::string_view(static_cast<const char*>(k.mv_data), k.mv_size),
            std::string_view(static_cast<const char*>(v.mv_data), v.mv_size))) {
      return;
    }
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  if (rc != MDB_NOTFOUND) throwError("mdb_cursor_get", rc);
}

std::size_t Txn::count(MDB_dbi dbi) const {
  if (dbi == kAbsentDb) return 0;
  MDB_stat st;
  int rc = mdb_stat(txn_, dbi, &st);
  if (rc != 0) throwError("mdb_stat", rc);
  return st.ms_entries;
}

Env::Env(const std::string& dir, const EnvOptions& opts) : readOnly_(opts.readOnly) {
  int rc = mdb_env_create(&env_);
  if (rc != 0) throwError("mdb_env_create", rc);
  if ((rc = mdb_env_set_mapsize(env_, opts.mapSize)) != 0 ||
      (rc = mdb_env_set_maxdbs(env_, opts.maxDbs)) != 0 ||
      (rc = mdb_env_set_maxreaders(env_, opts.maxReaders)) != 0) {
    mdb_env_close(env_);
    env_ = nullptr;
    throwError("mdb_env_set", rc);
  }
  rc = mdb_env_open(env_, dir.c_str(), opts.readOnly ? MDB_RDONLY : 0, 0644);
  if (rc != 0) {
    mdb_env_close(env_);
    env_ = nullptr;
    throw Error("cannot open LMDB environment in " + dir + ": " + mdb_strerror(rc), rc);
  }
  int dead = 0;
  mdb_reader_check(env_, &dead);
}

Env::~Env() {
  if (env_ != nullptr) mdb_env_close(env_);
}

Txn Env::beginRead() const {
  MDB_txn* t = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &t);
  if (rc != 0) throwError("mdb_txn_begin(read)", rc);
  return Txn(t);
}

Txn Env::beginWrite() {
  MDB_txn* t = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, 0, &t);
  if (rc != 0) throwError("mdb_txn_begin(write)", rc);
  return Txn(t);
}

Txn Env::beginNested(Txn& parent) {
  MDB_txn* t = nullptr;
  int rc = mdb_txn_begin(env_, parent.raw(), 0, &t);
  if (rc != 0) throwError("mdb_txn_begin(nested)", rc);
  return Txn(t);
}

MDB_dbi Env::openDb(const char* name) {
  Txn t = readOnly_ ? beginRead() : beginWrite();
  MDB_dbi dbi;
  int rc = mdb_dbi_open(t.raw(), name, readOnly_ ? 0 : MDB_CREATE, &dbi);
  // Read-only, a database a newer build would create is simply empty:
  // --check-wal must work on a WAL an older version wrote.
  if (rc == MDB_NOTFOUND && readOnly_) return kAbsentDb;
  if (rc != 0) throwError("mdb_dbi_open", rc);
  t.commit();  // the handle outlives a committed transaction, read-only too
  return dbi;
}

double Env::fill() const {
  MDB_envinfo info;
  MDB_stat st;
  mdb_env_info(env_, &info);
  mdb_env_stat(env_, &st);
  return double(info.me_last_pgno + 1) * st.ms_psize / double(info.me_mapsize);
}

std::size_t Env::mapSize() const {
  MDB_envinfo info;
  mdb_env_info(env_, &info);
  return info.me_mapsize;
}

}  // namespace keel::lmdb
