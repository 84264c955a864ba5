#include "common/lmdb.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace keel::lmdb {

Error::Error(const std::string& what, int code) : std::runtime_error(what), code_(code) {}

void throwError(const char* what, int rc) {
  std::string msg = std::string(what) + ": " + mdb_strerror(rc);
  if (rc == MDB_MAP_FULL) {
    throw MapFullError(msg + " (the LMDB map is full: raise map_size in the config)");
  }
  throw Error(msg, rc);
}

// Without MDB_NOTLS a reader slot belongs to a thread, not to a
// transaction: a reset transaction holds no slot and no snapshot (it keeps
// no page from being reused) and may be renewed on any thread, which then
// uses its own slot. LMDB allows one live read transaction per thread and
// environment, so the pool holds about as many as threads read: kMax is
// only a bound.
struct ReadTxnPool {
  static constexpr std::size_t kMax = 16;
  std::mutex mu;
  std::vector<MDB_txn*> reset;  // GUARDED_BY(mu)

  MDB_txn* take() {
    std::lock_guard<std::mutex> lk(mu);
    if (reset.empty()) return nullptr;
    MDB_txn* t = reset.back();
    reset.pop_back();
    return t;
  }
  void give(MDB_txn* t) noexcept {
    mdb_txn_reset(t);
    {
      std::lock_guard<std::mutex> lk(mu);
      if (reset.size() < kMax) {
        reset.push_back(t);
        return;
      }
    }
    mdb_txn_abort(t);
  }
  ~ReadTxnPool() {
    for (MDB_txn* t : reset) mdb_txn_abort(t);
  }
};

Txn& Txn::operator=(Txn&& o) noexcept {
  if (this != &o) {
    abort();
    txn_ = o.txn_;
    pool_ = o.pool_;
    names_ = o.names_;
    ownRedo_ = std::move(o.ownRedo_);
    redo_ = o.redo_;
    redoMark_ = o.redoMark_;
    o.redo_ = nullptr;
    overlay_ = std::move(o.overlay_);
    o.txn_ = nullptr;
  }
  return *this;
}

void Txn::commit() {
  MDB_txn* t = txn_;
  txn_ = nullptr;  // mdb_txn_commit frees the handle even on failure
  int rc = mdb_txn_commit(t);
  if (rc != 0) {
    dropRedo();  // LMDB dropped its changes
    throwError("mdb_txn_commit", rc);
  }
  redo_ = nullptr;  // its bytes stay in the buffer: the parent's now
  ownRedo_.reset();
}

void Txn::abort() noexcept {
  if (txn_ != nullptr) {
    if (pool_ != nullptr) {
      pool_->give(txn_);
    } else {
      mdb_txn_abort(txn_);
    }
    txn_ = nullptr;
  }
  dropRedo();  // what it wrote is gone, and so is its record of it
  overlay_.reset();
}

void Txn::dropRedo() noexcept {
  if (redo_ != nullptr && redo_->size() > redoMark_) redo_->resize(redoMark_);
  redo_ = nullptr;
  ownRedo_.reset();
}

std::string Txn::takeRedo() {
  if (redo_ == nullptr) return {};
  // Only this transaction's bytes (and its committed children's): the
  // recorded root's whole buffer, or, nested, what follows its mark.
  std::string out;
  if (redoMark_ == 0) {
    out.swap(*redo_);
  } else {
    out = redo_->substr(redoMark_);
    redo_->resize(redoMark_);
  }
  return out;
}

namespace {

void appendU32(std::string& s, std::uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  s.append(b, 4);
}

}  // namespace

// Encoding of one write: op ('P' put, 'D' del), name length (1 byte), the
// database name, key length (u32), key, and for a put value length (u32)
// and value. Little-endian, as everything Keel writes to disk.
void Txn::record(char op, MDB_dbi dbi, std::string_view key, std::string_view value) {
  if (redo_ == nullptr) return;
  if (names_ == nullptr || dbi >= names_->size() || (*names_)[dbi].empty()) {
    throw Error("redo: write to a database not opened by name (handle " + std::to_string(dbi) + ")", EINVAL);
  }
  const std::string& name = (*names_)[dbi];
  std::string& r = *redo_;
  r.push_back(op);
  r.push_back(char(name.size()));
  r.append(name);
  appendU32(r, std::uint32_t(key.size()));
  r.append(key);
  if (op == 'P') {
    appendU32(r, std::uint32_t(value.size()));
    r.append(value);
  }
}

namespace {

// Calls fn(put, db, key, value) for each write Txn::record encoded, in
// order; the views point into `b`. Throws Error on malformed input.
template <typename Fn>
void forEachRedoOp(std::string_view b, Fn&& fn) {
  std::size_t i = 0;
  auto need = [&](std::size_t n) {
    if (b.size() - i < n) throw Error("redo: truncated write record at byte " + std::to_string(i), EINVAL);
  };
  auto u32 = [&]() {
    need(4);
    std::uint32_t v;
    std::memcpy(&v, b.data() + i, 4);
    i += 4;
    return v;
  };
  auto bytes = [&](std::size_t n) {
    need(n);
    std::string_view v = b.substr(i, n);
    i += n;
    return v;
  };
  while (i < b.size()) {
    char kind = b[i++];
    if (kind != 'P' && kind != 'D') throw Error("redo: unknown write kind at byte " + std::to_string(i - 1), EINVAL);
    bool put = kind == 'P';
    need(1);
    std::string_view db = bytes(std::uint8_t(b[i++]));
    std::string_view key = bytes(u32());
    std::string_view value = put ? bytes(u32()) : std::string_view();
    fn(put, db, key, value);
  }
}

}  // namespace

std::vector<RedoOp> decodeRedoOps(std::string_view b) {
  std::vector<RedoOp> ops;
  forEachRedoOp(b, [&](bool put, std::string_view db, std::string_view key, std::string_view value) {
    ops.push_back(RedoOp{put, std::string(db), std::string(key), std::string(value)});
  });
  return ops;
}

std::vector<std::string> redoDbNames(std::string_view b) {
  std::vector<std::string> names;
  forEachRedoOp(b, [&](bool, std::string_view db, std::string_view, std::string_view) {
    if (std::find(names.begin(), names.end(), db) == names.end()) names.emplace_back(db);
  });
  return names;
}

std::shared_ptr<const Delta> toDelta(const Env& env, std::string_view b, std::uint64_t lsn) {
  auto d = std::make_shared<Delta>();
  d->lsn = lsn;
  std::string_view lastDb;
  std::map<std::string, std::optional<std::string>, std::less<>>* m = nullptr;
  forEachRedoOp(b, [&](bool put, std::string_view db, std::string_view key, std::string_view value) {
    if (m == nullptr || db != lastDb) {  // runs of writes to one database are the rule
      MDB_dbi dbi = env.dbHandle(db);
      if (dbi == kAbsentDb) {
        throw Error("redo: a write to database '" + std::string(db) + "', which is not open", EINVAL);
      }
      m = &d->dbs[dbi];
      lastDb = db;
    }
    auto it = m->find(key);
    if (it == m->end()) it = m->emplace(std::string(key), std::nullopt).first;
    if (put) {
      it->second.emplace(value);
    } else {
      it->second.reset();
    }
  });
  return d;
}

void applyRedoOps(Txn& txn, const std::vector<RedoOp>& ops) {
  std::vector<std::pair<std::string, MDB_dbi>> dbs;
  for (const auto& op : ops) {
    MDB_dbi dbi = 0;
    bool found = false;
    for (auto& [name, h] : dbs) {
      if (name == op.db) {
        dbi = h;
        found = true;
        break;
      }
    }
    if (!found) {
      int rc = mdb_dbi_open(txn.raw(), op.db.c_str(), MDB_CREATE, &dbi);
      if (rc != 0) throwError("mdb_dbi_open(redo)", rc);
      dbs.emplace_back(op.db, dbi);
    }
    if (op.put) {
      txn.put(dbi, op.key, op.value);
    } else {
      txn.del(dbi, op.key);  // absent already: the same end state
    }
  }
}

void applyDelta(Txn& txn, const Delta& delta) {
  for (const auto& [dbi, writes] : delta.dbs) {
    for (const auto& [key, value] : writes) {
      if (value) {
        txn.put(dbi, key, *value);
      } else {
        txn.del(dbi, key);  // absent already: the same end state
      }
    }
  }
}

static MDB_val toVal(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}

std::optional<std::optional<std::string>> Txn::overlayGet(MDB_dbi dbi, std::string_view key) const {
  for (auto d = overlay_->deltas.rbegin(); d != overlay_->deltas.rend(); ++d) {
    auto db = (*d)->dbs.find(dbi);
    if (db == (*d)->dbs.end()) continue;
    auto it = db->second.find(key);
    if (it != db->second.end()) return it->second;
  }
  return std::nullopt;
}

std::optional<std::string> Txn::get(MDB_dbi dbi, std::string_view key) const {
  if (dbi == kAbsentDb) return std::nullopt;
  if (overlay_ != nullptr) {
    if (auto o = overlayGet(dbi, key)) return *o;
  }
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
  record('P', dbi, key, value);
}

bool Txn::del(MDB_dbi dbi, std::string_view key) {
  MDB_val k = toVal(key);
  int rc = mdb_del(txn_, dbi, &k, nullptr);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) throwError("mdb_del", rc);
  record('D', dbi, key, {});
  return true;
}

void Txn::scan(MDB_dbi dbi, std::string_view from,
               const std::function<bool(std::string_view, std::string_view)>& fn) const {
  if (dbi == kAbsentDb) return;
  // The overlay's writes to this database from `from` on, newest winning.
  std::map<std::string_view, const std::optional<std::string>*> over;
  if (overlay_ != nullptr) {
    for (auto d = overlay_->deltas.rbegin(); d != overlay_->deltas.rend(); ++d) {
      auto db = (*d)->dbs.find(dbi);
      if (db == (*d)->dbs.end()) continue;
      for (auto it = db->second.lower_bound(from); it != db->second.end(); ++it) over.emplace(it->first, &it->second);
    }
  }
  auto next = over.begin();
  // Calls fn for the overlay's puts below `bound` (all if null); false: stop.
  auto overlayUpTo = [&](const std::string_view* bound) {
    for (; next != over.end() && (bound == nullptr || next->first < *bound); ++next) {
      if (*next->second && !fn(next->first, **next->second)) return false;
    }
    return true;
  };
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
    std::string_view key(static_cast<const char*>(k.mv_data), k.mv_size);
    if (!overlayUpTo(&key)) return;
    if (next != over.end() && next->first == key) {
      // The overlay's newer write of this key replaces LMDB's.
      bool put = next->second->has_value();
      std::string_view val = put ? std::string_view(**next->second) : std::string_view();
      ++next;
      if (put && !fn(key, val)) return;
    } else if (!fn(key, std::string_view(static_cast<const char*>(v.mv_data), v.mv_size))) {
      return;
    }
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  if (rc != MDB_NOTFOUND) throwError("mdb_cursor_get", rc);
  overlayUpTo(nullptr);
}

std::size_t Txn::count(MDB_dbi dbi) const {
  if (dbi == kAbsentDb) return 0;
  MDB_stat st;
  int rc = mdb_stat(txn_, dbi, &st);
  if (rc != 0) throwError("mdb_stat", rc);
  std::size_t n = st.ms_entries;
  if (overlay_ != nullptr) {
    // Each key the overlay wrote, as it ends: present now against present
    // in LMDB's snapshot.
    std::map<std::string_view, bool> last;
    for (auto d = overlay_->deltas.rbegin(); d != overlay_->deltas.rend(); ++d) {
      auto db = (*d)->dbs.find(dbi);
      if (db == (*d)->dbs.end()) continue;
      for (const auto& [key, val] : db->second) last.emplace(key, val.has_value());
    }
    for (const auto& [key, present] : last) {
      MDB_val k = toVal(key), v;
      int g = mdb_get(txn_, dbi, &k, &v);
      if (g != 0 && g != MDB_NOTFOUND) throwError("mdb_get", g);
      bool inLmdb = g == 0;
      if (present && !inLmdb) ++n;
      if (!present && inLmdb) --n;
    }
  }
  return n;
}

Env::Env(const std::string& dir, const EnvOptions& opts)
    : readOnly_(opts.readOnly), readPool_(std::make_unique<ReadTxnPool>()) {
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

Env::Env(Env&& o) noexcept
    : env_(o.env_),
      readOnly_(o.readOnly_),
      logOwned_(o.logOwned_.load()),
      names_(std::move(o.names_)),
      overlay_(std::move(o.overlay_)),
      view_(std::move(o.view_)),
      readPool_(std::move(o.readPool_)) {
  o.env_ = nullptr;
}

Env::~Env() {
  readPool_.reset();  // its transactions are freed before their environment closes
  if (env_ != nullptr) mdb_env_close(env_);
}

Txn Env::beginRead() const {
  // The overlay first, then LMDB's snapshot: a checkpoint that commits in
  // between only adds to the snapshot what the overlay already holds (the
  // same values), while the other order could miss its groups in both.
  std::shared_ptr<const Overlay> ov;
  {
    std::lock_guard<std::mutex> lk(overlay_->mu);
    ov = overlay_->current;
  }
  MDB_txn* t = readPool_->take();
  if (t != nullptr) {
    int rc = mdb_txn_renew(t);
    if (rc != 0) {
      mdb_txn_abort(t);
      throwError("mdb_txn_renew", rc);
    }
  } else {
    int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &t);
    if (rc != 0) throwError("mdb_txn_begin(read)", rc);
  }
  Txn r(t, readPool_.get());
  if (view_ != nullptr) ov = viewAbove(t);
  r.overlay_ = std::move(ov);
  return r;
}

std::shared_ptr<const Overlay> Env::viewAbove(MDB_txn* snapshot) const {
  // The snapshot's LSN: the groups at or below it are LMDB's already.
  std::uint64_t lsn = 0;
  MDB_val k{view_->lsnKey.size(), const_cast<char*>(view_->lsnKey.data())}, v;
  int rc = mdb_get(snapshot, view_->lsnDb, &k, &v);
  if (rc == 0 && v.mv_size == 8) {
    std::memcpy(&lsn, v.mv_data, 8);
  } else if (rc != 0 && rc != MDB_NOTFOUND) {
    throwError("mdb_get(redo lsn)", rc);
  }
  const auto& all = view_->all->deltas;
  auto first = std::find_if(all.begin(), all.end(), [&](const auto& d) { return d->lsn > lsn; });
  if (first == all.begin()) return view_->all;
  if (first == all.end()) return nullptr;
  auto ov = std::make_shared<Overlay>();
  ov->deltas.assign(first, all.end());
  return ov;
}

void Env::setReadView(MDB_dbi lsnDb, std::string lsnKey, std::vector<std::shared_ptr<const Delta>> groups) {
  if (!readOnly_) throw Error("a redo read view on a writable environment", EINVAL);
  auto view = std::make_unique<ReadView>();
  view->lsnDb = lsnDb;
  view->lsnKey = std::move(lsnKey);
  auto all = std::make_shared<Overlay>();
  all->deltas = std::move(groups);
  view->all = std::move(all);
  view_ = std::move(view);
}

void Env::publish(std::shared_ptr<const Delta> delta) {
  std::lock_guard<std::mutex> lk(overlay_->mu);
  auto next = std::make_shared<Overlay>();
  if (overlay_->current != nullptr) next->deltas = overlay_->current->deltas;
  next->deltas.push_back(std::move(delta));
  overlay_->current = std::move(next);
}

void Env::clearOverlay() {
  std::lock_guard<std::mutex> lk(overlay_->mu);
  overlay_->current.reset();
}

std::shared_ptr<const Overlay> Env::overlay() const {
  std::lock_guard<std::mutex> lk(overlay_->mu);
  return overlay_->current;
}

std::size_t Env::overlayGroups() const {
  std::lock_guard<std::mutex> lk(overlay_->mu);
  return overlay_->current == nullptr ? 0 : overlay_->current->deltas.size();
}

MDB_dbi Env::dbHandle(std::string_view name) const {
  for (std::size_t i = 0; i < names_->size(); ++i) {
    if ((*names_)[i] == name) return MDB_dbi(i);
  }
  return kAbsentDb;
}

Txn Env::beginWrite() {
  if (logOwned_.load()) {
    throw Error("a write transaction outside the group log while its redo log runs (its writer holds LMDB's)",
                EINVAL);
  }
  return beginLogWrite();
}

Txn Env::beginLogWrite() {
  MDB_txn* t = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, 0, &t);
  if (rc != 0) throwError("mdb_txn_begin(write)", rc);
  return Txn(t);
}

void Env::deferSync(bool on) {
  // The environment's flag: the transaction flags of these names are not
  // honoured by the meta-page write of Debian's 0.9.24 (strace: the meta
  // page still went through the O_DSYNC descriptor).
  int rc = mdb_env_set_flags(env_, MDB_NOSYNC, on ? 1 : 0);
  if (rc != 0) throwError("mdb_env_set_flags(MDB_NOSYNC)", rc);
}

void Env::sync() {
  int rc = mdb_env_sync(env_, 1);
  if (rc != 0) throwError("mdb_env_sync", rc);
}

Txn Env::beginNested(Txn& parent) {
  MDB_txn* t = nullptr;
  int rc = mdb_txn_begin(env_, parent.raw(), 0, &t);
  if (rc != 0) throwError("mdb_txn_begin(nested)", rc);
  Txn n(t);
  if (parent.recording()) {
    n.names_ = names_.get();
    n.redo_ = parent.redo_;
    n.redoMark_ = parent.redo_->size();
  }
  return n;
}

Txn Env::beginRecordedNested(Txn& parent) {
  MDB_txn* t = nullptr;
  int rc = mdb_txn_begin(env_, parent.raw(), 0, &t);
  if (rc != 0) throwError("mdb_txn_begin(nested, recorded)", rc);
  Txn n(t);
  n.names_ = names_.get();
  n.ownRedo_ = std::make_unique<std::string>();
  n.redo_ = n.ownRedo_.get();
  return n;
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
  if (names_->size() <= dbi) names_->resize(dbi + 1);
  (*names_)[dbi] = name;
  return dbi;
}

double Env::fill() const {
  MDB_envinfo info;
  MDB_stat st;
  mdb_env_info(env_, &info);
  mdb_env_stat(env_, &st);
  return double(info.me_last_pgno + 1) * st.ms_psize / double(info.me_mapsize);
}

namespace {
// mdb_reader_list's callback: the lowest snapshot (txnid) any reader holds.
// Its lines are "PID THREAD TXNID" (TXNID "-" for a slot not reading),
// after a header line.
int lowestReaderTxnid(const char* line, void* ctx) {
  auto* lowest = static_cast<std::uint64_t*>(ctx);
  unsigned long long pid = 0, txnid = 0;
  char thread[64];
  if (std::sscanf(line, "%llu %63s %llu", &pid, thread, &txnid) == 3) *lowest = std::min<std::uint64_t>(*lowest, txnid);
  return 0;
}
}  // namespace

double Env::usedFraction() const {
  auto r = beginRead();
  MDB_txn* t = r.raw();
  // LMDB reuses the pages a transaction freed only once no reader's
  // snapshot is older than it: those records of the free list count as
  // free, the rest (a long reader's, a hot backup's) as in use. This
  // transaction is a reader too, at the last commit.
  std::uint64_t oldest = mdb_txn_id(t);
  mdb_reader_list(env_, lowestReaderTxnid, &oldest);
  std::uint64_t free = 0;
  MDB_cursor* c = nullptr;
  int rc = mdb_cursor_open(t, 0, &c);  // database 0: LMDB's free list
  if (rc == 0) {
    // Each record is the pages one transaction freed, keyed by its txnid:
    // a count, then the page numbers (mdb_stat -f adds them up the same way).
    MDB_val k, v;
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
      std::size_t freedBy = 0, n = 0;
      if (k.mv_size != sizeof freedBy || v.mv_size < sizeof n) continue;
      std::memcpy(&freedBy, k.mv_data, sizeof freedBy);
      if (freedBy >= oldest) break;  // keys ascend: the rest are held
      std::memcpy(&n, v.mv_data, sizeof n);
      free += n;
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) rc = 0;
  }
  MDB_envinfo info;
  MDB_stat st;
  mdb_env_info(env_, &info);
  mdb_env_stat(env_, &st);
  if (rc != 0) throwError("reading LMDB's free list", rc);
  double pages = double(info.me_mapsize) / double(st.ms_psize);
  double used = double(info.me_last_pgno + 1) - double(free);
  return std::max(0.0, used) / pages;
}

double Env::usedFractionOrFill() const {
  try {
    return usedFraction();
  } catch (const Error&) {
    return fill();
  }
}

std::size_t Env::mapSize() const {
  MDB_envinfo info;
  mdb_env_info(env_, &info);
  return info.me_mapsize;
}

}  // namespace keel::lmdb
