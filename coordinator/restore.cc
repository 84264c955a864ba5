#include "coordinator/restore.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <ostream>

#include "common/backup.h"
#include "common/daemon.h"
#include "common/data_dir.h"
#include "common/fault.h"
#include "common/lmdb.h"
#include "common/records.h"
#include "common/rpc.h"
#include "common/seq.h"
#include "common/strict_json.h"
#include "common/types.h"
#include "coordinator/wal_store.h"
#include "schemas/keel.capnp.h"

namespace keel {

namespace fs = std::filesystem;

namespace {

void syncDir(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// What one participant holds that bounds the lost WAL.
struct Held {
  std::uint64_t fence = 0;       // its epoch fence for this node
  std::uint64_t maxCounter = 0;  // highest seq counter of this node it has a record of (0: none)
  std::uint64_t records = 0;     // records of this node at or above the backup's mark
};

Held ask(kj::AsyncIoContext& io, wire::Participant::Client cap, std::uint16_t node, std::uint64_t fromCounter,
         kj::Duration deadline) {
  auto& timer = io.provider->getTimer();
  auto bounded = [&](auto promise) { return timer.timeoutAfter(deadline, kj::mv(promise)).wait(io.waitScope); };
  Held h;
  {
    auto resp = bounded(cap.inspectRequest().send());
    for (auto f : resp.getFences()) {
      if (f.getNode() == node) h.fence = std::max(h.fence, f.getEpoch());
    }
  }
  // Every record of this node from the backup's mark on, in XID order.
  Xid after{makeSeq(node, fromCounter), 0};
  for (;;) {
    auto req = cap.listBranchesRequest();
    req.getAfter().setSeq(after.seq);
    req.getAfter().setBranch(after.branch);
    req.setLimit(10000);
    auto resp = bounded(req.send());
    bool past = false;  // XID order: the next node's seqs come after this node's
    for (auto b : resp.getBranches()) {
      std::uint64_t seq = b.getXid().getSeq();
      if (seqNode(seq) != node) {
        past = true;
        break;
      }
      h.maxCounter = std::max(h.maxCounter, seqCounter(seq));
      h.fence = std::max(h.fence, b.getEpoch());
      ++h.records;
    }
    if (past || !resp.getMore() || resp.getBranches().size() == 0) break;
    auto last = resp.getBranches()[resp.getBranches().size() - 1].getXid();
    after = Xid{last.getSeq(), last.getBranch()};
  }
  return h;
}

}  // namespace

RestoreReport restoreFromBackup(kj::AsyncIoContext& io, const CoordinatorConfig& cfg, const std::string& backupDir,
                                std::ostream& log, std::function<InProcessParticipants()> startInProcess) {
  RestoreReport r;
  // ---- 1 check: nothing is written before every check passed.
  std::error_code ec;
  if (!fs::is_directory(backupDir, ec)) {
    throw RestoreError(kExitBadConfig, "backup " + backupDir + " is not a directory");
  }
  for (const char* f : {"data.mdb", "manifest.json", "identity.txt"}) {
    if (!fs::is_regular_file(backupDir + "/" + f, ec)) {
      throw RestoreError(kExitBadConfig, "backup " + backupDir + " has no " + f +
                                             ": it is not a backup made by keelctl backup (docs/operations.md, "
                                             "\"Backup\")");
    }
  }
  // The manifest stored inside the copy is the one that counts (the mark).
  std::optional<std::string> mark;
  try {
    mark = backupMarkIn(backupDir);
  } catch (const std::exception& e) {
    throw RestoreError(kExitBadConfig, "backup " + backupDir + ": its data does not open (" + e.what() + ")");
  }
  if (!mark) {
    throw RestoreError(kExitBadConfig, "backup " + backupDir +
                                           "/data.mdb carries no backup mark: it is not a copy made by keelctl "
                                           "backup, or not a whole one");
  }
  Json m;
  try {
    m = JsonReader::parse(*mark);
  } catch (const std::exception& e) {
    throw RestoreError(kExitBadConfig, "backup " + backupDir + ": its manifest is damaged (" + e.what() + ")");
  }
  if (m["kind"].str() != "coordinator") {
    throw RestoreError(kExitBadConfig, "backup " + backupDir + " is of " + m["kind"].str() + " " + m["name"].str() +
                                           ", not of a coordinator");
  }
  if (m["node_id"].whole() != cfg.nodeId) {
    throw RestoreError(kExitBadConfig, "backup " + backupDir + " is of coordinator node " +
                                           std::to_string(m["node_id"].whole()) + ", not node " +
                                           std::to_string(cfg.nodeId) + " (check node_id in the config)");
  }
  r.backupInstance = m["instance_id"].str();
  r.backupHwm = m["seq_hwm"].whole();
  r.unfinished = m["unfinished"].whole();
  std::uint64_t backupEpoch = m["epoch"].whole();
  Micros madeUs = m["made_us"].whole();

  r.dataDir = fs::absolute(cfg.dataDir, ec).lexically_normal().string();
  while (r.dataDir.size() > 1 && r.dataDir.back() == '/') r.dataDir.pop_back();
  if (fs::exists(r.dataDir, ec) && (!fs::is_directory(r.dataDir, ec) || !fs::is_empty(r.dataDir, ec))) {
    throw RestoreError(kExitDataDirRefused, "data directory " + r.dataDir +
                                                " is not empty: a restore never writes over a data directory (move "
                                                "it aside, or name a new data_dir / --data-dir)");
  }
  if (cfg.participants.empty()) throw RestoreError(kExitBadConfig, "the config names no participants");
  log << "restore 1/3 check: backup of coordinator node " << cfg.nodeId << " (instance " << r.backupInstance
      << ", made " << m["made"].str() << ", seq mark " << seqText(makeSeq(cfg.nodeId, r.backupHwm)) << ", epoch "
      << backupEpoch << ", " << r.unfinished << " unfinished) into " << r.dataDir << "\n";

  // ---- 2 ask every participant (the embedded ones started here first).
  InProcessParticipants inProcess;
  if (startInProcess) inProcess = startInProcess();
  std::uint64_t fence = backupEpoch;
  kj::Duration deadline = std::max<std::uint32_t>(cfg.callTimeoutMs, 5000) * kj::MILLISECONDS;
  for (const auto& [name, address] : cfg.participants) {
    Held h;
    try {
      auto local = inProcess.find(name);
      if (local != inProcess.end()) {
        h = ask(io, local->second, cfg.nodeId, r.backupHwm, deadline);
      } else {
        auto conn = io.provider->getTimer().timeoutAfter(deadline, rpcConnect(io, address, name)).wait(io.waitScope);
        h = ask(io, conn->bootstrap<wire::Participant>(), cfg.nodeId, r.backupHwm, deadline);
      }
    } catch (const kj::Exception& e) {
      throw RestoreError(kExitFailed, "participant " + name + " (" + address + ") did not answer (" +
                                          describeFault(e) +
                                          "): a restore needs every participant's records to know what the lost "
                                          "WAL issued. Start it and run the restore again; nothing was written");
    }
    fence = std::max(fence, h.fence);
    if (h.records > 0) r.agentsHwm = std::max(r.agentsHwm, h.maxCounter + 1);
    log << "restore 2/3 ask: " << name << " holds " << h.records << " branch records of node " << cfg.nodeId
        << " at or above the backup's mark"
        << (h.records > 0 ? ", the highest " + seqText(makeSeq(cfg.nodeId, h.maxCounter)) : std::string())
        << "; its epoch fence " << h.fence << "\n";
  }

  // ---- the jump.
  Micros now = wallMicros();
  std::uint64_t elapsedS = now > madeUs ? (now - madeUs + 999'999) / 1'000'000 : 0;
  r.timeHwm = r.backupHwm + std::min<std::uint64_t>(elapsedS, kMaxSeqCounter / kMaxSeqsPerSecond / 2) *
                                kMaxSeqsPerSecond;
  r.floor = std::max({r.backupHwm, r.agentsHwm, r.timeHwm});
  if (r.floor >= kMaxSeqCounter / 2) {
    throw RestoreError(kExitFailed, "the seq mark would jump to " + seqText(makeSeq(cfg.nodeId, r.floor)) +
                                        ", past half of node " + std::to_string(cfg.nodeId) +
                                        "'s seq space: run this node under a new node_id instead");
  }
  r.epoch = fence;

  // ---- 3 build beside the target, then rename.
  std::string tmp = r.dataDir + ".restoring-" + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  try {
    {
      DataDir dir(tmp, DataDirOwner{DataDirKind::Coordinator, "coordinator", cfg.nodeId, "keel-coordinator"}, true);
      r.instance = dir.identity().instanceId;
      fs::copy_file(backupDir + "/data.mdb", tmp + "/data.mdb");
      std::size_t mapSize = std::max<std::size_t>(cfg.mapSizeMb << 20, fs::file_size(tmp + "/data.mdb") + (64u << 20));
      {
        lmdb::EnvOptions eo;
        eo.mapSize = mapSize;
        eo.maxDbs = 32;
        lmdb::Env env(tmp, eo);
        MDB_dbi meta = env.openDb("meta");
        auto txn = env.beginWrite();
        txn.del(meta, kBackupManifestKey);
        txn.put(meta, kSeqHwmKey, u64Key(r.floor));
        txn.put(meta, "epoch", u64Key(r.epoch));
        txn.put(meta, kRestoreFloorKey, u64Key(r.floor));
        txn.put(meta, kRestoredAtKey, u64Key(now));
        txn.put(meta, kRestoredFromKey, *mark);
        txn.commit();
      }
      {
        // The operator action, in the audit log like any other.
        WalStore wal(tmp, mapSize);
        AuditRecord a;
        a.atUs = now;
        a.action = "restore";
        const char* user = std::getenv("USER");
        a.who = user != nullptr ? user : "unknown";
        a.why = "keel-coordinator --restore-from " + fs::absolute(backupDir, ec).string();
        a.previous = "backup of instance " + r.backupInstance + " made " + m["made"].str() + "; seq mark " +
                     seqText(makeSeq(cfg.nodeId, r.backupHwm)) + " -> " + seqText(makeSeq(cfg.nodeId, r.floor)) +
                     ", epoch " + std::to_string(r.epoch);
        wal.appendAudit(a).wait(io.waitScope);
      }
    }
    syncDir(tmp);
    if (::rename(tmp.c_str(), r.dataDir.c_str()) != 0) {
      throw RestoreError(kExitFailed, "renaming " + tmp + " to " + r.dataDir + ": " + std::strerror(errno));
    }
    syncDir(fs::path(r.dataDir).parent_path().string());
  } catch (const RestoreError&) {
    fs::remove_all(tmp, ec);
    throw;
  } catch (const std::exception& e) {
    fs::remove_all(tmp, ec);
    throw RestoreError(kExitFailed, std::string("restore failed, nothing was left at the data directory: ") + e.what());
  }
  log << "restore 3/3 build: seqs of node " << cfg.nodeId << " start above " << seqText(makeSeq(cfg.nodeId, r.floor))
      << " (backup " << r.backupHwm << ", participants " << r.agentsHwm << ", time bound " << r.timeHwm
      << "), epoch " << r.epoch << " (the next start runs at " << r.epoch + 1 << ")\n";
  return r;
}

}  // namespace keel
