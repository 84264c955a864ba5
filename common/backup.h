#pragma once
// Hot backup: a consistent, compacted copy of a process's LMDB environment
// made while the process keeps serving (docs/operations.md, "Backup").
//
// The serving side (BackupServer, in the coordinator and every agent):
// mdb_env_copyfd2(MDB_CP_COMPACT) runs on a thread of its own and writes
// into a pipe; the event loop reads the pipe and streams the bytes into the
// caller's BackupSink. Cap'n Proto streaming holds the copy back when the
// caller is slow (the pipe fills, the copy thread waits), so memory stays
// bounded. The copy is one read snapshot: LMDB cannot reuse pages freed
// after it began until it ends, so a backup that is slow to drain grows
// the file meanwhile (docs/operations.md says how big it may get).
//
// The receiving side (BackupTarget, keelctl backup): the bytes go to
// DIR.partial-PID/data.mdb; then the copy is marked as a backup (meta key
// `backup_manifest`), manifest.json is written beside it, both are
// fsynced, and the directory is renamed to DIR. On any failure nothing is
// left at DIR and the partial directory is removed.
//
// Why the mark: an old WAL started as it is would issue again every seq
// handed out after the backup (its seq high-water mark is old), and an old
// branch log would forget prepared branches. So WalStore, BranchLog and
// DataDir refuse an environment that carries it (refuseBackupCopy), with
// a message that names the backup; docs/recovery.md says how to restore.

#include <lmdb.h>

#include <kj/async-io.h>
#include <kj/debug.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "schemas/keel.capnp.h"

namespace keel {

// ------------------------------------------------------------ serving side

struct BackupDone {
  std::uint64_t bytes = 0;
  std::uint64_t micros = 0;  // from the copy's start to its last byte sent
};

class BackupServer {
 public:
  // `env`: the process's environment; `identityText`: its data directory's
  // keel.identity (sent to the caller for the manifest). Ignores SIGPIPE
  // process-wide: a caller that goes away must fail the copy's write, not
  // kill the process.
  BackupServer(kj::LowLevelAsyncIoProvider& io, MDB_env* env, std::string identityText);
  ~BackupServer();

  // Streams a compacted copy into `sink`. One at a time: a second call
  // while one runs fails with the reason. The copy stops when a write to
  // the sink fails (the caller gone) or the returned promise is dropped.
  kj::Promise<BackupDone> run(wire::BackupSink::Client sink);

  // Called on the copy's thread before it takes its snapshot: a group log
  // in redo mode checkpoints there (GroupCommitLog::checkpointSync), so
  // that the copy holds every group made durable before the backup began.
  void setBeforeCopy(std::function<void()> f) { beforeCopy_ = std::move(f); }

 private:
  struct Job;
  kj::LowLevelAsyncIoProvider& io_;
  MDB_env* env_;
  std::function<void()> beforeCopy_;
  std::string identityText_;
  bool running_ = false;
};

// The backup call of both servers (Coordinator.backup, Participant.backup):
// `server` null means the process does not serve backups.
template <typename Context>
kj::Promise<void> serveBackup(BackupServer* server, Context ctx) {
  if (server == nullptr) return KJ_EXCEPTION(FAILED, "this process does not serve backups");
  return server->run(ctx.getParams().getSink()).then([ctx](BackupDone d) mutable {
    auto r = ctx.getResults();
    r.setBytes(d.bytes);
    r.setMicros(d.micros);
  });
}

// ------------------------------------------------------------ receiving side

// A refused backup target or a failed write; what() is for the operator.
class BackupError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What manifest.json holds (docs/operations.md, "Backup").
struct BackupManifest {
  std::string kind;        // "coordinator" or "agent" (from the identity)
  std::string name;        // "coordinator" or the agent's name
  std::uint16_t nodeId = 0;
  std::string instanceId;  // of the data directory copied
  std::string source;      // the address it was taken from
  std::uint64_t madeUs = 0;  // unix microseconds when the copy ended
  std::uint64_t bytes = 0;
  std::uint64_t copyMicros = 0;
  // From the copy itself (its own meta tables), so they describe exactly
  // what the copy holds.
  std::uint64_t seqHwm = 0;      // coordinator: counters below it may have been issued
  std::uint64_t epoch = 0;       // coordinator: its epoch; agent: the highest fence it had
  std::uint64_t records = 0;     // coordinator: interaction records; agent: branch records
  std::uint64_t unfinished = 0;  // coordinator: active interactions; agent: unfinished branches
};
std::string manifestJson(const BackupManifest& m);

class BackupTarget {
 public:
  using Progress = std::function<void(std::uint64_t written, std::uint64_t estimate)>;

  // Refuses (BackupError) a `dir` that exists, or whose parent is missing
  // or not writable, before anything is created; then makes the partial
  // directory. `progress` is called after each chunk written.
  BackupTarget(std::string dir, Progress progress);
  ~BackupTarget();  // removes the partial directory unless committed
  BackupTarget(const BackupTarget&) = delete;
  BackupTarget& operator=(const BackupTarget&) = delete;

  // The capability to pass in the backup call (served by this object).
  wire::BackupSink::Client sink();

  // After the backup call answered: checks the byte count, fsyncs, marks
  // the copy, writes the manifest and renames the directory to `dir`.
  BackupManifest commit(const std::string& source, const BackupDone& done);


 private:
  class Sink;
  std::string dir_, partial_;
  Progress progress_;
  int fd_ = -1;
  std::uint64_t written_ = 0, estimate_ = 0;
  std::string identity_;
  bool started_ = false, committed_ = false;
};

// ------------------------------------------------------------ the mark

// The meta key a backup copy carries (value: its manifest JSON).
inline constexpr const char* kBackupManifestKey = "backup_manifest";

// Throws DataDirError when the environment's meta database (`meta`, in an
// open transaction) carries the backup mark. `what`: the process's data
// directory, for the message.
void refuseBackupCopy(MDB_txn* txn, MDB_dbi meta, const std::string& what);

// The refusal's text: `what` (the data directory) holds a backup copy
// described by `manifest`.
std::string backupCopyRefusal(const std::string& what, const std::string& manifest);

// Read-only look into an environment directory that has no identity
// (DataDir's checks, before its lock): the manifest if it is a marked
// backup copy. Opens without LMDB's lock file, so it creates nothing.
std::optional<std::string> backupMarkIn(const std::string& dir);

}  // namespace keel
