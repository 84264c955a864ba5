// keel-coordinator: the Keel transaction coordinator.
//
//   keel-coordinator --config coordinator.toml [--listen ADDR] [--data-dir DIR] [--init] [--log-format json]
//   keel-coordinator --config coordinator.toml [--data-dir DIR] --restore-from BACKUP
//                                (coordinator/restore.h; then start as usual)
//
// Start-up order, so that a refused start changes nothing: config → the
// admin address ([admin] listen, bound before anything else) → embedded
// participants' hosts (participant/embedded.h) → data directory (lock and
// identity; created only with --init) → open the WAL → embedded
// participants' data directories and logs → bind the listen address →
// their start-up writes → recovery (decodes every unfinished record before
// the epoch is bumped, then contacts the agents) → accept clients.
// Exit statuses: common/daemon.h (kExit*), docs/operations.md.

#include <CLI/CLI.hpp>
#include <kj/async-io.h>
#include <kj/common.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <utility>

#include "common/admin_http.h"
#include "common/admin_plane.h"
#include "common/config.h"
#include "common/daemon.h"
#include "common/data_dir.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/tls.h"
#include "coordinator/admin.h"
#include "coordinator/cluster.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/restore.h"
#include "coordinator/wal_store.h"
#include "participant/embedded.h"

int main(int argc, char** argv) {
  keel::holdFreedHeapMemory();
  CLI::App app{"keel-coordinator: Keel two-phase-commit coordinator"};
  std::string configPath, listen, dataDir, readyFile;
  app.add_option("--config", configPath, "TOML config file ([coordinator] and [participants])")->required();
  app.add_option("--listen", listen, "host:port for clients (overrides the config; port 0 = any)");
  std::string adminListen;
  app.add_option("--admin-listen", adminListen,
                 "host:port of the admin plane: /metrics and the JSON API (overrides [admin] listen; port 0 = any)");
  app.add_option("--data-dir", dataDir, "WAL directory (overrides the config)");
  app.add_option("--ready-file", readyFile, "write the bound host:port here once serving");
  std::string logFormat;
  app.add_option("--log-format", logFormat, "text (default) or json, one object a line (overrides [log] format)")
      ->check(CLI::IsMember({"text", "json"}));
  bool checkWal = false, init = false, insecure = false;
  app.add_flag("--insecure", insecure, "plaintext, no identities (loopback only): the same as [tls] insecure = true");
  app.add_flag("--check-wal", checkWal, "decode every WAL record, list the damaged ones and exit (1 if any)");
  app.add_flag("--init", init, "create the data directory (or initialise an empty one) on this first start");
  std::string restoreFrom;
  app.add_option("--restore-from", restoreFrom,
                 "make the (missing or empty) data directory from this keelctl backup, safely, and exit "
                 "(docs/recovery.md, \"Restoring a backup\")")
      ->type_name("BACKUP");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keel::kExitBadConfig;
  }

  keel::CoordinatorConfig cfg;
  std::map<std::string, keel::AgentConfig> embeddedCfg;  // [participants] NAME = "embedded:FILE"
  keel::LogFormat format = keel::LogFormat::Text;
  try {
    cfg = keel::loadCoordinatorConfig(configPath);
    if (!listen.empty()) {
      keel::checkAddress("--listen", listen);
      cfg.listen = listen;
    }
    if (!dataDir.empty()) cfg.dataDir = dataDir;
    if (!adminListen.empty()) {
      cfg.admin.listen = adminListen;
      keel::checkAdmin("--admin-listen", cfg.admin);
    }
    if (insecure) cfg.tls.insecure = true;
    if (!checkWal) keel::checkTransport(cfg.tls, cfg.listen, keel::ServerRole::Coordinator);
    if (!checkWal) embeddedCfg = keel::loadEmbeddedAgents(cfg);
    format = keel::chooseLogFormat(logFormat.empty() ? cfg.log.format : logFormat);
    keel::failpoint::initFromEnv();
  } catch (const std::exception& e) {
    std::cerr << "keel-coordinator: " << e.what() << "\n";
    return keel::kExitBadConfig;
  }

  keel::initLogging("coordinator", format);
  const keel::DataDirOwner owner{keel::DataDirKind::Coordinator, "coordinator", cfg.nodeId, "keel-coordinator"};
  if (checkWal) {
    // Read-only and without the lock: it may run beside a live coordinator.
    try {
      std::string dir = keel::DataDir::inspect(cfg.dataDir, owner);
      keel::WalStore wal(dir, cfg.mapSizeMb << 20, /*readOnly=*/true);
      std::size_t checked = 0;
      auto bad = wal.checkAll(&checked);
      for (auto& b : bad) std::cout << "damaged: " << b << "\n";
      const auto& redo = wal.redoRead();
      std::cout << checked << " record(s) checked";
      if (redo.present) {
        std::cout << "; " << redo.groups << " group(s) (" << redo.ops
                  << " write(s)) past data.mdb's last checkpoint read from redo.log";
      }
      std::cout << "\n";
      std::cout << bad.size() << " damaged record(s) in " << dir << "\n";
      return bad.empty() ? 0 : 1;
    } catch (const keel::DataDirError& e) {
      std::cerr << "keel-coordinator: " << e.what() << "\n";
      return keel::kExitDataDirRefused;
    } catch (const std::exception& e) {
      std::cerr << "keel-coordinator: " << e.what() << "\n";
      return keel::kExitFailed;
    }
  }
  if (!restoreFrom.empty()) {
    if (checkWal || init) {
      std::cerr << "keel-coordinator: --restore-from makes the data directory itself: not with --check-wal or --init\n";
      return keel::kExitBadConfig;
    }
    try {
      keel::captureTerminationSignals();
      auto io = kj::setupAsyncIo();
      auto tlsReload = keel::startTls(io, cfg.tls);  // the participants are asked as this coordinator
      // Embedded participants are asked in this process: started as at a
      // coordinator's start (their hosts checked, their data directories
      // locked, their start-up reconcile run) once the backup and the target
      // passed their checks, stopped when the restore ends.
      std::vector<std::unique_ptr<keel::EmbeddedParticipant>> embedded;
      auto startEmbedded = [&]() {
        keel::InProcessParticipants inProcess;
        for (auto& [name, acfg] : embeddedCfg) {
          try {
            keel::preflightBackend(acfg);
            embedded.push_back(std::make_unique<keel::EmbeddedParticipant>(acfg, io, /*init=*/false));
            embedded.back()->start();
          } catch (const keel::DataDirError& e) {
            throw keel::RestoreError(keel::kExitDataDirRefused,
                                     "embedded participant " + name + ": " + e.what() +
                                         " (a restore needs every participant's records; the coordinator's data "
                                         "directory was not touched)");
          } catch (const std::exception& e) {
            throw keel::RestoreError(keel::kExitFailed,
                                     "embedded participant " + name + " did not start (" + e.what() +
                                         "): a restore needs every participant's records; the coordinator's data "
                                         "directory was not touched");
          }
          inProcess.emplace(name, embedded.back()->client());
        }
        return inProcess;
      };
      auto r = keel::restoreFromBackup(io, cfg, restoreFrom, std::cout, startEmbedded);
      std::cout << "restored " << r.dataDir << " (instance " << r.instance << ") from the backup of instance "
                << r.backupInstance << ". Start the coordinator as usual: unfinished work the backup does not "
                << "decide is settled by what the participants hold (docs/recovery.md)\n";
      return 0;
    } catch (const keel::RestoreError& e) {
      KEEL_LOG_ERROR("restore refused: {}", e.what());
      return e.status;
    } catch (const keel::ConfigError& e) {
      KEEL_LOG_ERROR("restore refused: {}", e.what());
      return keel::kExitBadConfig;
    } catch (const kj::Exception& e) {
      KEEL_LOG_ERROR("restore failed: {}", e.getDescription().cStr());
      return keel::kExitFailed;
    }
  }
  try {
    keel::captureTerminationSignals();
    auto io = kj::setupAsyncIo();
    // Certificates are read before the data directory is touched: a bad one
    // refuses the start with nothing changed.
    auto tlsReload = keel::startTls(io, cfg.tls);
    // The admin address is bound first: taken, it refuses the start before
    // the data directory is touched. It serves once recovery is done.
    std::unique_ptr<keel::AdminHttpServer> admin;
    if (!cfg.admin.listen.empty()) {
      keel::AdminHttpServer::Limits limits;
      limits.hosts = cfg.admin.hosts;
      admin = std::make_unique<keel::AdminHttpServer>(cfg.admin.listen, limits);
    }
    // Embedded participants' hosts (PostgreSQL) checked before any data
    // directory is touched.
    for (auto& [name, acfg] : embeddedCfg) keel::preflightBackend(acfg);
    keel::DataDir dir(cfg.dataDir, owner, init);  // held until exit
    cfg.dataDir = dir.path();
    keel::WalStore wal(dir.path(), cfg.mapSizeMb << 20, /*readOnly=*/false, cfg.redo);
    // Every unfinished record must decode (a damaged one stops the start
    // naming its key), and every participant one still needs must be in
    // the config: checked here, before any embedded participant writes.
    auto unfinished = wal.loadUnfinished();
    keel::Coordinator::refuseMissingParticipants(
        unfinished, [&cfg](const std::string& name) { return cfg.participants.count(name) != 0; });
    // Embedded participants: their hosts' side checked, their data
    // directories locked and their logs opened and checked, nothing written
    // yet. Declared before the coordinator: they outlive its calls.
    std::vector<std::unique_ptr<keel::EmbeddedParticipant>> embedded;
    for (auto& [name, acfg] : embeddedCfg) {
      embedded.push_back(std::make_unique<keel::EmbeddedParticipant>(acfg, io, init));
    }
    auto server = std::make_unique<keel::RpcServer>(io);
    std::string bound = keel::withPort(cfg.listen, server->bind(cfg.listen));
    std::unique_ptr<keel::ClusterMember> cluster;
    if (cfg.cluster.enabled()) {
      cluster = std::make_unique<keel::ClusterMember>(cfg, cfg.cluster.advertise.empty() ? bound : cfg.cluster.advertise,
                                                      io);
    }
    if (cluster) {
      // The same check for etcd's COMMITs of this node that recovery will
      // redrive (the WAL has no record of them when the crash came before
      // the lazy local one): read before the join, which writes to etcd.
      keel::Coordinator::refuseMissingParticipants(
          {}, [&cfg](const std::string& name) { return cfg.participants.count(name) != 0; },
          keel::Coordinator::etcdCommitsToRedrive(*cluster, cfg.nodeId, wal));
    }
    keel::Coordinator coordinator(cfg, io, wal, cluster.get());
    KJ_DEFER(if (cluster) cluster->stop());  // its takeovers call into the coordinator
    KJ_DEFER(server.reset());  // its connections call into the coordinator: they go first
    for (auto& e : embedded) {
      e->start();  // its start-up writes (reconciling its host) before recovery asks it anything
      coordinator.serveEmbedded(e->name(), e->client(), e->operatorClient());
    }
    coordinator.recover(std::move(unfinished)).wait(io.waitScope);
    if (cluster) {
      cluster->serve(
          []() {
            // Fail-stop: without its lease this member may already be taken
            // over; whatever it has in flight is finished by a survivor or by
            // its own next start (every decision is in etcd).
            KEEL_LOG_ERROR("cluster: membership lease lost (etcd unreachable for a whole lease TTL, or the lease "
                           "was revoked): stopping at once; a supervisor restart rejoins");
            std::_Exit(keel::kExitFailed);
          },
          [&coordinator](std::uint16_t node, std::uint64_t epoch) { return coordinator.takeOver(node, epoch); });
    }
    keel::BackupServer backups(*io.lowLevelProvider, wal.env().raw(), keel::formatIdentity(dir.identity()));
    backups.setBeforeCopy([&wal] { wal.log().checkpointSync(); });  // redo mode: the copy holds every group
    auto impl = kj::heap<keel::CoordinatorImpl>(coordinator, wal.log().stats(), &backups);
    auto& target = *impl;
    capnp::Capability::Client keep = kj::mv(impl);
    // The admin plane's reads go to the same RPC object, in-process.
    keel::KeelClient self(keep.castAs<keel::wire::Coordinator>());
    if (admin) {
      keel::EmbeddedMetrics embeddedMetrics;
      if (!embedded.empty()) {
        embeddedMetrics = [&embedded]() -> std::function<std::string()> {
          std::vector<keel::AgentMetricsSource> sources;
          for (auto& e : embedded) sources.push_back(e->metricsSource());  // gauges counted on the loop
          return [sources = std::move(sources)]() { return keel::renderAgentMetrics(sources, /*labelled=*/true); };
        };
      }
      keel::addCoordinatorRoutes(*admin, kj::getCurrentThreadExecutor(), coordinator, self, wal.log().stats(),
                                 cfg.nodeId, cfg.admin.actions, std::move(embeddedMetrics));
      admin->start();
      KEEL_LOG_INFO("admin plane on http://{} (/metrics, /api/...)", admin->bound());
    }
    KJ_DEFER(if (admin) keel::stopAdminServer(*admin, io.waitScope));
    keel::serveUntilTerminated(io, *server, target, kj::mv(keep), keel::coordinatorAccess(cfg.tls), cfg.limits, bound,
                               readyFile, "clients with " + std::to_string(cfg.participants.size()) + " participants");
  } catch (const keel::ConfigError& e) {
    KEEL_LOG_ERROR("refused: {}", e.what());
    return keel::kExitBadConfig;
  } catch (const keel::AdminListenError& e) {
    KEEL_LOG_ERROR("refused: {} (nothing was changed)", e.what());
    return keel::kExitFailed;
  } catch (const keel::DataDirError& e) {
    KEEL_LOG_ERROR("refused: {}", e.what());
    return keel::kExitDataDirRefused;
  } catch (const keel::ClusterError& e) {
    KEEL_LOG_ERROR("refused: {}", e.what());
    return keel::kExitDataDirRefused;
  } catch (const keel::etcd::EtcdError& e) {
    KEEL_LOG_ERROR("fatal: etcd: {} (is the [cluster] etcd list right, and are its members up?)", e.what());
    return keel::kExitFailed;
  } catch (const kj::Exception& e) {
    KEEL_LOG_ERROR("fatal: {}", e.getDescription().cStr());
    return keel::kExitFailed;
  } catch (const keel::CorruptRecord& e) {
    KEEL_LOG_ERROR("fatal: damaged WAL record: {} (nothing was changed; `keel-coordinator --config {} --check-wal` "
                   "lists every damaged record, docs/recovery.md says what to do)",
                   e.what(), configPath);
    return keel::kExitFailed;
  } catch (const std::exception& e) {
    KEEL_LOG_ERROR("fatal: {}", e.what());
    return keel::kExitFailed;
  }
  return keel::kExitStopped;
}
