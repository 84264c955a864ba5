#pragma once
// keel-coordinator --config C --restore-from BACKUP: turns a backup made by
// `keelctl backup` (common/backup.h) into the coordinator's data directory
// without ever issuing a seq twice or contradicting a decision taken after
// the backup (docs/recovery.md, "Restoring a backup").
//
//   1 check      the backup (manifest, identity, the mark; this node's) and
//                the target (data_dir missing or empty); nothing written
//   2 ask        every participant in the config, which must all answer:
//                its epoch fence for this node and the highest seq of this
//                node it holds a record of (tombstones included); an
//                embedded one is started in this process and asked there
//   3 build      in DATA_DIR.restoring-PID: a new identity, the backup's
//                data with its mark removed, then, in one LMDB commit:
//                  seq_hwm   above the backup's mark, above every seq the
//                            participants hold, and above what the node
//                            could have issued since the backup at
//                            kMaxSeqsPerSecond;
//                  epoch     the highest of the backup's and every fence
//                            (the next start adds one);
//                  restore_floor / restored_at_us / restored_from: the
//                            mark recovery reads (WalStore::RestoreMark);
//                  an audit entry "restore";
//                then renamed to DATA_DIR: a whole restored directory or
//                none.
//
// The coordinator is then started as usual. Its recovery decides every seq
// below the floor that the restored WAL holds no decision for by what the
// participants hold (Coordinator::settleRestored), and it refuses request
// ids first sent before the restore (they may have run under the lost WAL).
//
// Cluster members: etcd keeps the seq floor and the epoch and the
// decisions of unfinished interactions; restore works the same way and
// the start takes the higher of both.

#include <kj/async-io.h>

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <stdexcept>
#include <string>

#include "common/config.h"
#include "schemas/keel.capnp.h"

namespace keel {

// A restore that cannot be done; what() is for the operator, `status` the
// exit status (kExitBadConfig: the backup; kExitDataDirRefused: the
// target; kExitFailed: a participant did not answer, or I/O failed).
class RestoreError : public std::runtime_error {
 public:
  RestoreError(int status, const std::string& what) : std::runtime_error(what), status(status) {}
  int status;
};

// The bound the time-based part of the seq jump assumes: no coordinator
// node hands out more seqs than this per second (today's ~20,000/s is 50
// times below it; 2^48 counters last 8 years at this rate).
inline constexpr std::uint64_t kMaxSeqsPerSecond = 1'000'000;

struct RestoreReport {
  std::string dataDir;           // absolute
  std::string backupInstance;    // the directory the backup was taken of
  std::string instance;          // the restored directory's new identity
  std::uint64_t backupHwm = 0;   // seq counter mark in the backup
  std::uint64_t agentsHwm = 0;   // highest counter any participant holds (+1)
  std::uint64_t timeHwm = 0;     // backup mark + elapsed seconds * kMaxSeqsPerSecond
  std::uint64_t floor = 0;       // the new mark: seqs of this node below it may have been issued
  std::uint64_t epoch = 0;       // stored; the next start runs at epoch + 1
  std::uint64_t unfinished = 0;  // unfinished interactions the backup holds
};

// Runs the three steps; throws RestoreError. Progress lines go to `log`.
// `startInProcess`: called once the checks of step 1 passed, it starts the
// embedded participants ([participants] NAME = "embedded:FILE") in this
// process and returns their capabilities, through which step 2 asks them
// (it throws RestoreError if one cannot start); every other participant is
// asked at its address.
using InProcessParticipants = std::map<std::string, wire::Participant::Client>;
RestoreReport restoreFromBackup(kj::AsyncIoContext& io, const CoordinatorConfig& cfg, const std::string& backupDir,
                                std::ostream& log, std::function<InProcessParticipants()> startInProcess = nullptr);

}  // namespace keel
