#include "common/redo_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "common/failpoint.h"
#include "common/log.h"
#include "common/records.h"

namespace keel {

namespace {

constexpr std::uint32_t kRecordMagic = 0x4F44524B;  // "KRDO"
constexpr std::size_t kHeader = 32;                 // magic, crc, lsn, id, length, 4 bytes 0
constexpr const char* kLsnKey = "lsn";              // in database "redo": the last group LMDB holds
constexpr const char* kIdKey = "id";                // in database "redo": the log's id
constexpr std::uint32_t kPendingMagic = 0x4450524B;  // "KRPD": redo.pending
constexpr std::size_t kPendingBytes = 32;           // magic, crc of the rest, txnid, boot id (16 bytes)
// LMDB 0.9's meta pages (data.mdb's pages 0 and 1, mdb.c): MDB_meta after
// the 16-byte page header; in it the magic first, the page size in the
// first MDB_db's md_pad (offset 24), the txnid last (offset 128).
constexpr std::size_t kMetaAt = 16, kMetaBytes = 136;
constexpr std::uint32_t kLmdbMagic = 0xBEEFC0DE;

template <typename T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void store(char* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

std::string u64Value(std::uint64_t v) {
  std::string s(8, '\0');
  store(s.data(), v);
  return s;
}

std::uint64_t readU64(const lmdb::Txn& txn, MDB_dbi db, const char* key) {
  auto v = txn.get(db, key);
  if (!v) return 0;
  if (v->size() != 8) {
    throw lmdb::Error(std::string("redo log: database 'redo' key '") + key + "' is not 8 bytes", EINVAL);
  }
  return load<std::uint64_t>(v->data());
}

[[noreturn]] void fail(const std::string& what, int err) {
  throw lmdb::Error("redo log: " + what + (err != 0 ? std::string(": ") + std::strerror(err) : std::string()),
                    err != 0 ? err : EIO);
}

void writeAll(int fd, const char* p, std::size_t n, std::uint64_t off, const std::string& what) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, off_t(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(what, errno);
    }
    p += w;
    n -= std::size_t(w);
    off += std::uint64_t(w);
  }
}

void syncDir(const std::string& dir) {
  int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0) fail("open " + dir, errno);
  int rc = ::fsync(d);
  int err = errno;
  ::close(d);
  if (rc != 0) fail("fsync " + dir, err);
}

struct Record {
  std::uint64_t lsn = 0;
  std::string payload;
};

std::string readWhole(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("open " + path, errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("stat " + path, err);
  }
  std::string data(std::size_t(st.st_size), '\0');
  std::size_t got = 0;
  while (got < data.size()) {
    ssize_t r = ::pread(fd, data.data() + got, data.size() - got, off_t(got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += std::size_t(r);
  }
  ::close(fd);
  if (got != data.size()) fail("read " + path, EIO);
  return data;
}

// The chain of `id`'s records that starts at `start`: while each is whole,
// passes its CRC and follows the previous one's LSN.
std::vector<Record> scanChain(const std::string& data, std::size_t start, std::uint64_t id) {
  std::vector<Record> out;
  std::size_t off = start;
  while (off <= data.size() && data.size() - off >= kHeader) {
    const char* h = data.data() + off;
    if (load<std::uint32_t>(h) != kRecordMagic) break;
    std::uint32_t len = load<std::uint32_t>(h + 24);
    if (len > data.size() - off - kHeader) break;
    std::uint32_t crc = crc32c(0, std::string_view(h + 8, kHeader - 8));
    crc = crc32c(crc, std::string_view(h + kHeader, len));
    if (crc != load<std::uint32_t>(h + 4)) break;
    if (load<std::uint64_t>(h + 16) != id) break;
    Record r;
    r.lsn = load<std::uint64_t>(h + 8);
    if (!out.empty() && r.lsn != out.back().lsn + 1) break;
    r.payload.assign(h + kHeader, len);
    out.push_back(std::move(r));
    off += kHeader + len;
  }
  return out;
}

// The records above `after` that recovery replays, in LSN order: the
// chains at the start of each half, merged. The first half's chain is read
// on past the middle (a file written before the halves held one chain from
// offset 0); a record found in both is the same record.
std::vector<Record> chainAbove(const std::string& data, std::uint64_t id, std::uint64_t after) {
  std::map<std::uint64_t, Record> byLsn;
  for (std::size_t start : {std::size_t(0), data.size() / 2}) {
    for (auto& r : scanChain(data, start, id)) {
      if (r.lsn > after) byLsn.emplace(r.lsn, std::move(r));
    }
  }
  std::vector<Record> out;
  for (auto& [lsn, r] : byLsn) {
    if (!out.empty() && lsn != out.back().lsn + 1) break;  // a gap: what follows is not reachable
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

std::string RedoLog::path(const std::string& dir) { return dir + "/redo.log"; }
std::string RedoLog::pendingPath(const std::string& dir) { return dir + "/redo.pending"; }

namespace {

// This boot of the machine (the kernel's boot_id, 16 bytes; zeros if it
// cannot be read). A pending mark names the boot it was written in: on the
// same boot the page cache still holds every page a checkpoint wrote, so
// a read-only open may read it even before its flush finished.
using BootId = std::array<char, 16>;
BootId bootId() {
  BootId id{};
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string text;
  std::getline(f, text);
  std::size_t n = 0;
  int half = -1;
  for (char c : text) {
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0 || n >= id.size()) continue;
    if (half < 0) {
      half = v;
    } else {
      id[n++] = char(half << 4 | v);
      half = -1;
    }
  }
  if (n != id.size()) id.fill(0);
  return id;
}

// Read once per process: a process never outlives its boot, and every
// checkpoint marks one (ten a second), each of which read the file.
const BootId& thisBoot() {
  static const BootId id = bootId();
  return id;
}

void writePending(int fd, std::uint64_t txnid, const std::string& file) {
  char b[kPendingBytes] = {};
  store<std::uint32_t>(b, kPendingMagic);
  store<std::uint64_t>(b + 8, txnid);
  const BootId& boot = thisBoot();
  std::memcpy(b + 16, boot.data(), boot.size());
  store<std::uint32_t>(b + 4, crc32c(0, std::string_view(b + 8, kPendingBytes - 8)));
  writeAll(fd, b, kPendingBytes, 0, "write " + file);
  if (::fdatasync(fd) != 0) fail("fdatasync " + file, errno);
}

// The pending checkpoint in `dir`: its txnid, 0 when there is none (no
// file, or a torn one: its write did not finish, so its commit never
// started), and the boot it was marked in (zeros: unknown, as in the files
// of versions before the boot id).
struct PendingMark {
  std::uint64_t txnid = 0;
  BootId boot{};
};
PendingMark readPending(const std::string& dir) {
  PendingMark m;
  std::string file = RedoLog::pendingPath(dir);
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) return m;
  std::string b = readWhole(file);
  if (b.size() < kPendingBytes || load<std::uint32_t>(b.data()) != kPendingMagic) return m;
  if (load<std::uint32_t>(b.data() + 4) != crc32c(0, std::string_view(b.data() + 8, kPendingBytes - 8))) return m;
  m.txnid = load<std::uint64_t>(b.data() + 8);
  std::memcpy(m.boot.data(), b.data() + 16, m.boot.size());
  return m;
}

// data.mdb's two meta pages, as LMDB 0.9 lays them out.
struct MetaPages {
  char m[2][kMetaBytes];
  std::uint32_t psize = 0;
  std::uint64_t txnid(int i) const { return load<std::uint64_t>(m[i] + 128); }
  int newest() const { return txnid(1) > txnid(0) ? 1 : 0; }
};
// Nullopt when data.mdb has no commit yet; throws, naming the file, when
// it does not hold LMDB's meta pages.
std::optional<MetaPages> readMetaPages(int fd, const std::string& data) {
  MetaPages p;
  if (::pread(fd, p.m[0], kMetaBytes, off_t(kMetaAt)) != ssize_t(kMetaBytes)) return std::nullopt;  // no commit yet
  p.psize = load<std::uint32_t>(p.m[0] + 24);
  if (load<std::uint32_t>(p.m[0]) != kLmdbMagic || p.psize < 512 || p.psize > 65536 ||
      (p.psize & (p.psize - 1)) != 0) {
    throw lmdb::Error("redo log: " + data + " does not start with an LMDB meta page; nothing was changed", EINVAL);
  }
  if (::pread(fd, p.m[1], kMetaBytes, off_t(p.psize + kMetaAt)) != ssize_t(kMetaBytes) ||
      load<std::uint32_t>(p.m[1]) != kLmdbMagic) {
    throw lmdb::Error("redo log: " + data + "'s second meta page is unreadable; nothing was changed", EINVAL);
  }
  return p;
}

// A checkpoint committed without a flush is marked pending first
// (RedoLog::markPending). If data.mdb's newest meta page is that commit,
// its flush may not have finished: a power loss can leave the meta page on
// disk without all the pages it points to. The older meta page (the
// previous commit, flushed before this one began) is copied into its slot,
// so LMDB opens at the previous checkpoint; its pages are whole (LMDB
// reuses a page only two commits after the one that freed it), and
// redo.log's two halves hold every group after it. A commit whose flush
// did finish is reverted just the same: its groups are replayed. Returns
// the reverted txnid, 0 when nothing was done. Refuses, changing nothing,
// when the meta pages are not what a pending checkpoint leaves.
std::uint64_t revertPendingCheckpoint(const std::string& dir) {
  std::uint64_t pending = readPending(dir).txnid;
  if (pending == 0) return 0;
  std::string data = dir + "/data.mdb";
  int fd = ::open(data.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return 0;
    fail("open " + data, errno);
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  auto metas = readMetaPages(fd, data);
  if (!metas) return 0;
  int newest = metas->newest();
  std::uint64_t tn = metas->txnid(newest), to = metas->txnid(1 - newest);
  const char* m0 = metas->m[0];
  const char* m1 = metas->m[1];
  std::uint32_t psize = metas->psize;
  if (tn != pending) return 0;  // the pending commit never reached the meta page, or others came after it
  if (to + 1 != tn) {
    throw lmdb::Error("redo log: " + data + "'s meta pages hold transactions " + std::to_string(to) + " and " +
                          std::to_string(tn) + ", not a pending checkpoint and the one before it; nothing was changed",
                      EINVAL);
  }
  std::error_code ec;
  if (!std::filesystem::exists(RedoLog::path(dir), ec)) {
    throw lmdb::Error("redo log: checkpoint " + std::to_string(pending) + " of " + data +
                          " is pending but redo.log, which holds its groups, is missing; nothing was changed",
                      EINVAL);
  }
  writeAll(fd, newest ? m0 : m1, kMetaBytes, std::uint64_t(newest) * psize + kMetaAt, "revert the meta page of " + data);
  if (::fdatasync(fd) != 0) fail("fdatasync " + data, errno);
  return pending;
}

}  // namespace

RedoLog::RedoLog(lmdb::Env& env, Options opts) : env_(env), opts_(opts) {
  if (opts_.fileBytes < (std::uint64_t(64) << 10)) fail("file size below 64 KiB", EINVAL);
  halfBytes_ = opts_.fileBytes / 2;
  const char* p = nullptr;
  mdb_env_get_path(env.raw(), &p);
  dir_ = p;
  db_ = env_.openDb("redo");
  {
    auto txn = env_.beginRead();
    id_ = readU64(txn, db_, kIdKey);
    lsn_ = readU64(txn, db_, kLsnKey);
  }
  if (id_ == 0) {
    // Durable before the file exists: a redo.log is only ever read against
    // the data.mdb that names its id.
    std::random_device rd;
    while (id_ == 0) id_ = (std::uint64_t(rd()) << 32) ^ rd();
    auto txn = env_.beginWrite();
    txn.put(db_, kIdKey, u64Value(id_));
    txn.commit();
  }
  create();
  std::string pending = pendingPath(dir_);
  std::error_code ec;
  bool existed = std::filesystem::exists(pending, ec);
  pendingFd_ = ::open(pending.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (pendingFd_ < 0) fail("open " + pending, errno);
  if (!existed) {
    writePending(pendingFd_, 0, pending);
    syncDir(dir_);
  }
}

RedoLog::~RedoLog() {
  if (fd_ >= 0) ::close(fd_);
  if (pendingFd_ >= 0) ::close(pendingFd_);
}

void RedoLog::markPending(std::uint64_t txnid) { writePending(pendingFd_, txnid, pendingPath(dir_)); }

void RedoLog::create() {
  std::string file = path(dir_);
  struct stat st;
  if (::stat(file.c_str(), &st) != 0 || std::uint64_t(st.st_size) != opts_.fileBytes) {
    // Zero-filled, so that appends overwrite allocated blocks and
    // fdatasync has no file metadata to write.
    std::string tmp = file + ".tmp";
    int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("create " + tmp, errno);
    std::string zeros(std::size_t(1) << 20, '\0');
    try {
      for (std::uint64_t off = 0; off < opts_.fileBytes; off += zeros.size()) {
        writeAll(fd, zeros.data(), std::size_t(std::min<std::uint64_t>(zeros.size(), opts_.fileBytes - off)), off,
                 "zero-fill " + tmp);
      }
      if (::fsync(fd) != 0) fail("fsync " + tmp, errno);
    } catch (...) {
      ::close(fd);
      ::unlink(tmp.c_str());
      throw;
    }
    ::close(fd);
    if (::rename(tmp.c_str(), file.c_str()) != 0) fail("rename " + tmp, errno);
    syncDir(dir_);
  }
  fd_ = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) fail("open " + file, errno);
  half_ = 0;
  off_ = 0;
}

bool RedoLog::append(std::string_view ops) {
  if (off_ + kHeader + ops.size() > halfBytes_) return false;
  buf_.assign(kHeader, '\0');
  buf_.append(ops);
  char* h = buf_.data();
  store<std::uint32_t>(h, kRecordMagic);
  store<std::uint64_t>(h + 8, lsn_ + 1);
  store<std::uint64_t>(h + 16, id_);
  store<std::uint32_t>(h + 24, std::uint32_t(ops.size()));
  std::uint32_t crc = crc32c(0, std::string_view(h + 8, kHeader - 8));
  store<std::uint32_t>(h + 4, crc32c(crc, ops));
  writeAll(fd_, buf_.data(), buf_.size(), half_ * halfBytes_ + off_, "write " + path(dir_));
  if (::fdatasync(fd_) != 0) fail("fdatasync " + path(dir_), errno);
  off_ += buf_.size();
  ++lsn_;
  if (pending_++ == 0) firstPendingAt_ = std::chrono::steady_clock::now();
  return true;
}

void RedoLog::stampAt(lmdb::Txn& txn, std::uint64_t lsn) { txn.put(db_, kLsnKey, u64Value(lsn)); }

void RedoLog::checkpointed() {
  // LMDB's commit holds every record of this half, but its meta page may
  // not be on disk yet: the half is kept, and the next record goes at the
  // start of the other one. That half's records are all at or below the
  // previous checkpoint's LSN, and the commit just made flushed that
  // checkpoint's meta page with its own data pages, so none is needed any
  // more; its LSNs are below every new one, so a scan stops at the first
  // stale record.
  half_ ^= 1;
  off_ = 0;
  pending_ = 0;
}

namespace {

// Read-only, after a restart of the machine: a checkpoint still marked
// pending (its flush never confirmed) may have reached the disk as a meta
// page without all its pages, and only a writable open can put the meta
// page before it back (revertPendingCheckpoint). On the boot that marked
// it the page cache holds every page it wrote (a killed process loses
// none), so a read-only open goes on; on another boot it is refused.
void refuseUnflushedCheckpointAfterRestart(const std::string& dir) {
  PendingMark mark = readPending(dir);
  if (mark.txnid == 0) return;
  std::string data = dir + "/data.mdb";
  int fd = ::open(data.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // LMDB's own open says what is wrong
  std::optional<MetaPages> metas;
  try {
    metas = readMetaPages(fd, data);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  if (!metas || metas->txnid(metas->newest()) != mark.txnid) return;
  const BootId& now = thisBoot();
  if (mark.boot == now && now != BootId{}) return;
  throw lmdb::Error("redo log: the last checkpoint of " + data + " (LMDB transaction " + std::to_string(mark.txnid) +
                        ") was never confirmed flushed, and the machine has restarted since, so its pages may be "
                        "missing: start its coordinator or agent once (recovery puts the checkpoint before it back "
                        "and replays redo.log), then read it; nothing was changed",
                    EINVAL);
}

// Read-only beside (or after) a redo-mode writer: the groups redo.log holds
// above LMDB's checkpoint are read once and shown by every read
// transaction above its own snapshot's LSN (lmdb::Env::setReadView). A
// live writer may checkpoint while the file is read: the chain must then
// still begin right after the LSN read before it, or it is read again.
void readRedoView(lmdb::Env& env, const std::string& dir, RedoLog::Recovered& r) {
  std::string file = RedoLog::path(dir);
  MDB_dbi db = env.openDb("redo");
  constexpr int kAttempts = 20;
  std::vector<Record> chain;
  for (int attempt = 1;; ++attempt) {
    std::uint64_t id = 0, lsn = 0;
    if (db != lmdb::kAbsentDb) {
      auto txn = env.beginRead();
      id = readU64(txn, db, kIdKey);
      lsn = readU64(txn, db, kLsnKey);
    }
    if (id == 0) {
      throw lmdb::Error("redo log: " + file +
                            " is there but data.mdb names no redo log (a replaced or restored data file?); "
                            "nothing was read",
                        EINVAL);
    }
    chain = chainAbove(readWhole(file), id, lsn);
    r.checkpoint = lsn;
    if (chain.empty() || chain.front().lsn == lsn + 1) break;
    if (attempt == kAttempts) {
      throw lmdb::Error("redo log: " + file + " continues at group " + std::to_string(chain.front().lsn) +
                            " but data.mdb holds groups up to " + std::to_string(lsn) + " only, in " +
                            std::to_string(kAttempts) +
                            " reads (a writer checkpointing faster than it can be read, or an older data.mdb); "
                            "nothing was read",
                        EINVAL);
    }
    // Two checkpoints between reading the LSN and the file: read again.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::vector<std::shared_ptr<const lmdb::Delta>> groups;
  for (const Record& rec : chain) {
    for (const std::string& name : lmdb::redoDbNames(rec.payload)) {
      if (env.dbHandle(name) != lmdb::kAbsentDb) continue;
      if (name.empty() || env.openDb(name.c_str()) == lmdb::kAbsentDb) {
        throw lmdb::Error("redo log: group " + std::to_string(rec.lsn) + " in " + file + " writes database '" + name +
                              "', which data.mdb does not hold yet: start its coordinator or agent once (it "
                              "replays redo.log), then read it; nothing was changed",
                          EINVAL);
      }
    }
    groups.push_back(lmdb::toDelta(env, rec.payload, rec.lsn));
    r.ops += lmdb::decodeRedoOps(rec.payload).size();
    ++r.groups;
  }
  env.setReadView(db, kLsnKey, std::move(groups));
}

}  // namespace

lmdb::Env openEnvRecovering(const std::string& dir, const lmdb::EnvOptions& opts, RedoLog::Recovered* recovered) {
  if (opts.readOnly) {
    std::error_code ec;
    if (!std::filesystem::exists(RedoLog::path(dir), ec)) return lmdb::Env(dir, opts);
    refuseUnflushedCheckpointAfterRestart(dir);
    lmdb::Env env(dir, opts);
    RedoLog::Recovered r;
    r.present = true;
    readRedoView(env, dir, r);
    if (recovered != nullptr) *recovered = r;
    return env;
  }
  std::uint64_t reverted = revertPendingCheckpoint(dir);  // before LMDB reads a meta page
  if (reverted != 0) {
    KEEL_LOG_WARN("redo log: checkpoint {} of {} was not confirmed flushed; LMDB opens at the one before it", reverted,
                  dir);
  }
  lmdb::Env env(dir, opts);
  std::string file = RedoLog::path(dir);
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) return env;
  RedoLog::Recovered r;
  r.present = true;
  r.reverted = reverted;
  MDB_dbi db = env.openDb("redo");
  std::uint64_t id, lsn;
  {
    auto txn = env.beginRead();
    id = readU64(txn, db, kIdKey);
    lsn = readU64(txn, db, kLsnKey);
  }
  r.checkpoint = lsn;
  if (id == 0) {
    throw lmdb::Error("redo log: " + file +
                          " is there but data.mdb names no redo log (a replaced or restored data file?); "
                          "nothing was changed",
                      EINVAL);
  }
  auto chain = chainAbove(readWhole(file), id, lsn);
  if (!chain.empty() && chain.front().lsn != lsn + 1) {
    throw lmdb::Error("redo log: " + file + " continues at group " + std::to_string(chain.front().lsn) +
                          " but data.mdb holds groups up to " + std::to_string(lsn) +
                          " only (an older data.mdb?); nothing was changed",
                      EINVAL);
  }
  if (!chain.empty()) {
    try {
      auto txn = env.beginWrite();
      for (std::size_t i = 0; i < chain.size(); ++i) {
        auto ops = lmdb::decodeRedoOps(chain[i].payload);
        lmdb::applyRedoOps(txn, ops);
        r.ops += ops.size();
        ++r.groups;
      }
      txn.put(db, kLsnKey, u64Value(chain.back().lsn));
      try {
        KEEL_FAILPOINT("log.replay_map_full");  // tests: this commit meets a full map
      } catch (const failpoint::InjectedError&) {
        throw lmdb::MapFullError("mdb_txn_commit: MDB_MAP_FULL (failpoint log.replay_map_full)");
      }
      txn.commit();  // durable: the groups are LMDB's now
    } catch (const lmdb::MapFullError&) {
      // One commit of every group needs more pages than the map has left
      // (the pages it frees are reused only by later commits): one durable
      // commit per group, each with its LSN, so a crash in between goes on
      // from the last one.
      r.groups = r.ops = 0;
      for (const Record& rec : chain) {
        auto ops = lmdb::decodeRedoOps(rec.payload);
        try {
          auto txn = env.beginWrite();
          lmdb::applyRedoOps(txn, ops);
          txn.put(db, kLsnKey, u64Value(rec.lsn));
          txn.commit();
        } catch (const lmdb::MapFullError& e) {
          throw lmdb::MapFullError("redo log: group " + std::to_string(rec.lsn) + " of " + file +
                                   " does not fit in the map even on its own (" + e.what() +
                                   "); the groups before it are in data.mdb now, the rest stay in redo.log");
        }
        r.ops += ops.size();
        ++r.groups;
      }
      r.oneByOne = true;
      KEEL_LOG_WARN("redo log: the map is nearly full: replayed the groups one commit each");
    }
    KEEL_LOG_WARN("redo log: replayed {} groups ({} writes) after checkpoint {} in {}", r.groups, r.ops, lsn, dir);
  } else {
    // The last run's last checkpoint may be in the page cache only (a
    // killed process: no last flush). Flushed before this run's first
    // record overwrites the groups it holds.
    env.sync();
  }
  // Nothing is pending any more: LMDB's state is flushed. (A crash before
  // this line reverts the same txnid again and replays the same groups.)
  if (std::filesystem::exists(RedoLog::pendingPath(dir), ec)) {
    std::string pending = RedoLog::pendingPath(dir);
    int fd = ::open(pending.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) fail("open " + pending, errno);
    try {
      writePending(fd, 0, pending);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
  }
  if (recovered != nullptr) *recovered = r;
  return env;
}

}  // namespace keel
