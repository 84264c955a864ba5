#include "common/backup.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/data_dir.h"
#include "common/lmdb.h"
#include "common/log.h"
#include "common/records.h"
#include "common/types.h"

namespace keel {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kChunk = 256 * 1024;  // bytes per streamed write (well under any message limit)

std::string sysError(const std::string& what, int err) { return what + ": " + std::strerror(err); }

}  // namespace

// ------------------------------------------------------------ serving side

// One running copy. Destroyed when the copy's promise settles or is
// dropped: closing the pipe's read end first makes a copy thread blocked
// on the pipe fail its write (EPIPE), so the join below is short.
struct BackupServer::Job {
  std::thread thread;
  std::atomic<int> rc{0};
  kj::Own<kj::AsyncInputStream> in;
  kj::Array<kj::byte> buf = kj::heapArray<kj::byte>(kChunk);
  std::uint64_t bytes = 0;
  Micros startedUs = 0;
  bool* running = nullptr;
  kj::Maybe<wire::BackupSink::Client> sink;

  // Pipe -> sink, one chunk at a time; streaming's flow control paces it.
  kj::Promise<void> pump() {
    return in->tryRead(buf.begin(), 1, buf.size()).then([this](std::size_t n) -> kj::Promise<void> {
      if (n == 0) return kj::READY_NOW;
      bytes += n;
      KJ_IF_MAYBE (s, sink) {
        auto w = s->writeRequest();
        w.setBytes(kj::arrayPtr(buf.begin(), n));  // copied into the message here
        return w.send().then([this]() { return pump(); });
      }
      return KJ_EXCEPTION(FAILED, "backup: no sink");
    });
  }

  ~Job() {
    in = nullptr;
    if (thread.joinable()) thread.join();
    if (running != nullptr) *running = false;
  }
};

BackupServer::BackupServer(kj::LowLevelAsyncIoProvider& io, MDB_env* env, std::string identityText)
    : io_(io), env_(env), identityText_(std::move(identityText)) {
  std::signal(SIGPIPE, SIG_IGN);
}

BackupServer::~BackupServer() = default;

kj::Promise<BackupDone> BackupServer::run(wire::BackupSink::Client sink) {
  if (running_) {
    return KJ_EXCEPTION(FAILED, "a backup of this process is already running (one at a time; try again when it ends)");
  }
  // An upper bound of the compacted copy: the pages in use.
  MDB_envinfo info{};
  MDB_stat st{};
  mdb_env_info(env_, &info);
  mdb_env_stat(env_, &st);
  std::uint64_t estimate = (std::uint64_t(info.me_last_pgno) + 1) * st.ms_psize;

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return KJ_EXCEPTION(FAILED, sysError("backup: pipe", errno));
  auto job = kj::heap<Job>();
  running_ = true;
  job->running = &running_;
  job->startedUs = wallMicros();
  job->in = io_.wrapInputFd(fds[0], kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
                                        kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC);
  // The copy: one read snapshot, written in order into the pipe. Closing
  // the write end after it is what ends the stream (EOF).
  job->thread = std::thread([env = env_, wfd = fds[1], rc = &job->rc, before = beforeCopy_]() {
    if (before) {
      try {
        before();
      } catch (const std::exception& e) {
        KEEL_LOG_WARN("backup: the checkpoint before the copy failed ({}); copying what LMDB holds", e.what());
      }
    }
    int r = mdb_env_copyfd2(env, wfd, MDB_CP_COMPACT);
    rc->store(r);
    ::close(wfd);
  });
  KEEL_LOG_INFO("backup: started (about {} MiB in use)", estimate >> 20);

  auto& j = *job;
  auto start = sink.startRequest();
  start.setEstimateBytes(estimate);
  start.setIdentity(identityText_);
  j.sink = kj::mv(sink);
  return start.send()
      .then([&j](auto&&) { return j.pump(); })
      .then([&j]() -> BackupDone {
        j.thread.join();  // the pipe is at EOF: the copy thread has closed it and is ending
        int rc = j.rc.load();
        if (rc != 0) {
          throw KJ_EXCEPTION(FAILED, std::string("backup: mdb_env_copyfd2 failed: ") + mdb_strerror(rc));
        }
        BackupDone d{j.bytes, wallMicros() - j.startedUs};
        KEEL_LOG_INFO("backup: {} bytes sent in {} ms", d.bytes, d.micros / 1000);
        return d;
      })
      .attach(kj::mv(job))
      .catch_([](kj::Exception&& e) -> kj::Promise<BackupDone> {
        KEEL_LOG_WARN("backup: stopped: {}", e.getDescription().cStr());
        return kj::mv(e);
      });
}

// ------------------------------------------------------------ receiving side

class BackupTarget::Sink final : public wire::BackupSink::Server {
 public:
  explicit Sink(BackupTarget& t) : t_(t) {}

  kj::Promise<void> start(StartContext ctx) override {
    auto p = ctx.getParams();
    if (t_.started_) return KJ_EXCEPTION(FAILED, "backup sink: start called twice");
    t_.started_ = true;
    t_.estimate_ = p.getEstimateBytes();
    t_.identity_ = std::string(p.getIdentity().cStr()).substr(0, 4096);
    return kj::READY_NOW;
  }

  kj::Promise<void> write(WriteContext ctx) override {
    if (!t_.started_) return KJ_EXCEPTION(FAILED, "backup sink: write before start");
    auto bytes = ctx.getParams().getBytes();
    const kj::byte* p = bytes.begin();
    std::size_t left = bytes.size();
    while (left > 0) {
      ssize_t n = ::write(t_.fd_, p, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        // Fails the write: the server stops the copy.
        return KJ_EXCEPTION(FAILED, sysError("writing " + t_.partial_ + "/data.mdb", errno));
      }
      p += n;
      left -= std::size_t(n);
    }
    t_.written_ += bytes.size();
    if (t_.progress_) t_.progress_(t_.written_, t_.estimate_);
    return kj::READY_NOW;
  }

 private:
  BackupTarget& t_;
};

BackupTarget::BackupTarget(std::string dir, Progress progress) : dir_(std::move(dir)), progress_(std::move(progress)) {
  if (dir_.empty()) throw BackupError("backup target: an empty path");
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  std::error_code ec;
  if (fs::symlink_status(dir_, ec).type() != fs::file_type::not_found) {
    throw BackupError("backup target " + dir_ + " exists; a backup never overwrites (name a new directory)");
  }
  fs::path parent = fs::absolute(fs::path(dir_), ec).parent_path();
  if (!fs::is_directory(parent, ec)) {
    throw BackupError("backup target's parent directory " + parent.string() + " does not exist");
  }
  if (::access(parent.c_str(), W_OK | X_OK) != 0) {
    throw BackupError(sysError("backup target's parent directory " + parent.string() + " is not writable", errno));
  }
  partial_ = dir_ + ".partial-" + std::to_string(::getpid());
  if (::mkdir(partial_.c_str(), 0700) != 0) throw BackupError(sysError("creating " + partial_, errno));
  fd_ = ::open((partial_ + "/data.mdb").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    int err = errno;
    fs::remove_all(partial_, ec);
    throw BackupError(sysError("creating " + partial_ + "/data.mdb", err));
  }
}

BackupTarget::~BackupTarget() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(partial_, ec);
  }
}

wire::BackupSink::Client BackupTarget::sink() { return kj::heap<Sink>(*this); }

namespace {

void syncPath(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw BackupError(sysError("opening " + path + " to sync it", errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw BackupError(sysError("fsync " + path, err));
}

void writeFile(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw BackupError(sysError("creating " + path, errno));
  std::size_t at = 0;
  while (at < text.size()) {
    ssize_t n = ::write(fd, text.data() + at, text.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      throw BackupError(sysError("writing " + path, err));
    }
    at += std::size_t(n);
  }
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw BackupError(sysError("fsync " + path, err));
}

std::string utc(std::uint64_t us) {
  std::time_t secs = std::time_t(us / 1000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

std::string manifestJson(const BackupManifest& m) {
  auto q = [](const std::string& s) { return "\"" + jsonEscape(s) + "\""; };
  return std::string("{\"format\":1") + ",\"kind\":" + q(m.kind) + ",\"name\":" + q(m.name) +
         ",\"node_id\":" + std::to_string(m.nodeId) + ",\"instance_id\":" + q(m.instanceId) +
         ",\"source\":" + q(m.source) + ",\"made_us\":" + std::to_string(m.madeUs) + ",\"made\":" + q(utc(m.madeUs)) +
         ",\"bytes\":" + std::to_string(m.bytes) + ",\"copy_ms\":" + std::to_string(m.copyMicros / 1000) +
         ",\"seq_hwm\":" + std::to_string(m.seqHwm) + ",\"epoch\":" + std::to_string(m.epoch) +
         ",\"records\":" + std::to_string(m.records) + ",\"unfinished\":" + std::to_string(m.unfinished) + "}";
}

BackupManifest BackupTarget::commit(const std::string& source, const BackupDone& done) {
  if (!started_) throw BackupError("the backup ended without sending anything");
  if (done.bytes != written_) {
    throw BackupError("the backup sent " + std::to_string(done.bytes) + " bytes but " + std::to_string(written_) +
                      " arrived");
  }
  if (::fsync(fd_) != 0) throw BackupError(sysError("fsync " + partial_ + "/data.mdb", errno));
  ::close(fd_);
  fd_ = -1;

  BackupManifest m;
  DataDirIdentity id;
  try {
    id = parseIdentity(identity_, "the identity the server sent");
  } catch (const DataDirError& e) {
    throw BackupError(e.what());
  }
  m.kind = dataDirKindName(id.kind);
  m.name = id.name;
  m.nodeId = id.nodeId;
  m.instanceId = id.instanceId;
  m.source = source;
  m.madeUs = wallMicros();
  m.bytes = written_;
  m.copyMicros = done.micros;

  // Read the copy's own tables, then mark it, in one write transaction.
  try {
    lmdb::EnvOptions eo;
    eo.mapSize = std::size_t(written_) + (std::size_t(64) << 20);
    eo.maxDbs = 32;
    lmdb::Env env(partial_, eo);
    bool coordinator = id.kind == DataDirKind::Coordinator;
    // Opened before the write transaction (openDb runs its own).
    MDB_dbi meta = env.openDb("meta");
    MDB_dbi records = env.openDb(coordinator ? "interactions" : "branches");
    MDB_dbi unfinished = env.openDb(coordinator ? "active" : "unfinished");
    auto txn = env.beginWrite();
    m.records = txn.count(records);
    m.unfinished = txn.count(unfinished);
    if (coordinator) {
      if (auto v = txn.get(meta, "seq_hwm")) m.seqHwm = keyU64(*v);
      if (auto v = txn.get(meta, "epoch")) m.epoch = keyU64(*v);
    } else {
      txn.scan(meta, "epoch/", [&](std::string_view k, std::string_view v) {
        if (k.rfind("epoch/", 0) != 0) return false;
        m.epoch = std::max(m.epoch, keyU64(v));
        return true;
      });
    }
    txn.put(meta, kBackupManifestKey, manifestJson(m));
    txn.commit();  // durable (LMDB syncs the commit)
  } catch (const lmdb::Error& e) {
    throw BackupError("the copy does not open as an LMDB environment: " + std::string(e.what()));
  }
  std::error_code ec;
  fs::remove(partial_ + "/lock.mdb", ec);
  writeFile(partial_ + "/manifest.json", manifestJson(m) + "\n");
  writeFile(partial_ + "/identity.txt", identity_);
  syncPath(partial_, true);
  if (::rename(partial_.c_str(), dir_.c_str()) != 0) {
    throw BackupError(sysError("renaming " + partial_ + " to " + dir_, errno));
  }
  committed_ = true;
  syncPath(fs::absolute(fs::path(dir_)).parent_path().string(), true);
  return m;
}

// ------------------------------------------------------------ the mark

std::string backupCopyRefusal(const std::string& what, const std::string& manifest) {
  return what + " holds a backup copy made by keelctl backup (" + manifest.substr(0, 2048) +
         "); started as it is, it would issue seqs again and forget decisions taken after the backup. Restore it "
         "as docs/recovery.md (\"Restoring a backup\") says; nothing was changed";
}

void refuseBackupCopy(MDB_txn* txn, MDB_dbi meta, const std::string& what) {
  MDB_val k{std::strlen(kBackupManifestKey), const_cast<char*>(kBackupManifestKey)};
  MDB_val v{};
  int rc = mdb_get(txn, meta, &k, &v);
  if (rc == MDB_NOTFOUND) return;
  if (rc != 0) lmdb::throwError("mdb_get backup_manifest", rc);
  throw DataDirError(backupCopyRefusal(what, std::string(static_cast<const char*>(v.mv_data), v.mv_size)));
}

std::optional<std::string> backupMarkIn(const std::string& dir) {
  // Raw LMDB: read-only and without the lock file (nothing is created).
  MDB_env* env = nullptr;
  if (mdb_env_create(&env) != 0) return std::nullopt;
  std::optional<std::string> out;
  MDB_txn* txn = nullptr;
  MDB_dbi meta = 0;
  if (mdb_env_set_maxdbs(env, 32) == 0 && mdb_env_open(env, dir.c_str(), MDB_RDONLY | MDB_NOLOCK, 0644) == 0 &&
      mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn) == 0) {
    if (mdb_dbi_open(txn, "meta", 0, &meta) == 0) {
      MDB_val k{std::strlen(kBackupManifestKey), const_cast<char*>(kBackupManifestKey)};
      MDB_val v{};
      if (mdb_get(txn, meta, &k, &v) == 0) out = std::string(static_cast<const char*>(v.mv_data), v.mv_size);
    }
    mdb_txn_abort(txn);
  }
  mdb_env_close(env);
  return out;
}

}  // namespace keel
