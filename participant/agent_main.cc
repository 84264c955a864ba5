// keel-agent: the participant agent deployed beside one host system.
//
//   keel-agent --config agent.toml
//   keel-agent --name bank-a --listen 127.0.0.1:7401 --data-dir /var/lib/keel/bank-a [--init]
//   keel-agent --name card --adapter host --host http://127.0.0.1:7600 --host-operations ops.toml ...
//
// Flags override the config file. Start-up order, so that a refused start
// changes nothing: config → certificates → PostgreSQL's side (postgres
// adapter: PgAgent::preflight) → data directory (lock and identity; created only
// with --init) → open the branch log and check every record → bind the
// listen address → the start-up writes (ParticipantBackend::start) → serve.
// Exit statuses: common/daemon.h (kExit*), docs/operations.md.

#include <CLI/CLI.hpp>
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>

#include <iostream>

#include "common/admin_http.h"
#include "common/admin_plane.h"
#include "common/config.h"
#include "common/daemon.h"
#include "common/data_dir.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/tls.h"
#include "participant/admin.h"
#include "participant/agent.h"
#include "participant/agent_server.h"
#include "participant/embedded.h"
#include "participant/resolver.h"

int main(int argc, char** argv) {
  keel::holdFreedHeapMemory();
  CLI::App app{"keel-agent: Keel participant agent (adapters: ledger, postgres, host)"};
  std::string configPath, name, listen, dataDir, readyFile;
  std::size_t mapSizeMb = 0;
  app.add_option("--config", configPath, "TOML config file ([agent] section)");
  app.add_option("--name", name, "participant name, as the coordinator's config knows it");
  app.add_option("--listen", listen, "host:port to listen on (port 0 = any free port)");
  std::string adminListen;
  app.add_option("--admin-listen", adminListen,
                 "host:port of the admin plane: /metrics and the JSON API (overrides [admin] listen; port 0 = any)");
  app.add_option("--data-dir", dataDir, "directory of the agent's LMDB environment");
  app.add_option("--map-size-mb", mapSizeMb, "LMDB map size in MiB");
  bool redo = false, noRedo = false;
  app.add_flag("--redo", redo,
               "redo mode (the default): one flush per group commit, LMDB synced behind a redo log (docs/operations.md, "
               "\"Redo log\")");
  app.add_flag("--no-redo", noRedo, "without the redo log: each group commit is an LMDB commit (two flushes)")
      ->excludes("--redo");
  app.add_option("--ready-file", readyFile, "write the bound host:port here once serving");
  std::string logFormat;
  app.add_option("--log-format", logFormat, "text (default) or json, one object a line (overrides [log] format)")
      ->check(CLI::IsMember({"text", "json"}));
  std::string coordinator, debugBreak, adapter, postgres;
  std::uint32_t poolSize = 0;
  app.add_option("--adapter", adapter, "resource adapter: ledger (default), postgres or host")
      ->check(CLI::IsMember({"ledger", "postgres", "host"}));
  std::string hostUrl, hostOpsPath;
  app.add_option("--host", hostUrl, "adapter host: the host system's base URL, http://HOST:PORT ([host] url)");
  app.add_option("--host-operations", hostOpsPath,
                 "adapter host: TOML file of [host.operations.NAME] tables, the try / confirm / cancel paths of each "
                 "operation (in place of the config file's; docs/hosts.md)");
  app.add_option("--postgres", postgres, "adapter postgres: libpq connection string");
  app.add_option("--pool-size", poolSize, "adapter postgres: connections to PostgreSQL");
  std::string statementsPath;
  app.add_option("--statements", statementsPath,
                 "adapter postgres: TOML file of [statements.NAME] tables, the statements clients may call "
                 "(in place of the config file's)");
  std::uint32_t inDoubtMs = 0;
  app.add_option("--debug-break", debugBreak, "TEST ONLY: break the protocol on purpose (commit-on-rollback)")
      ->check(CLI::IsMember({"commit-on-rollback"}));
  app.add_option("--coordinator", coordinator, "coordinator host:port to ask about branches in doubt");
  app.add_option("--in-doubt-query-ms", inDoubtMs, "ask the coordinator about a branch PREPARED this long");
  keel::TlsConfig tlsFlags;
  bool insecure = false;
  app.add_option("--tls-ca", tlsFlags.ca, "PEM file of the CA whose certificates are trusted ([tls] ca)");
  app.add_option("--tls-cert", tlsFlags.cert, "PEM certificate of this agent, its CN the agent's name ([tls] cert)");
  app.add_option("--tls-key", tlsFlags.key, "PEM private key of --tls-cert ([tls] key)");
  app.add_option("--tls-coordinator", tlsFlags.coordinators,
                 "identity (certificate CN) allowed to make coordinator calls; repeat for more ([tls] coordinators)");
  app.add_option("--tls-operator", tlsFlags.operators,
                 "identity allowed to look (inspect, branches, forget); repeat for more ([tls] operators)");
  app.add_flag("--insecure", insecure, "plaintext, no identities (loopback only): the same as [tls] insecure = true");
  bool init = false;
  app.add_flag("--init", init, "create the data directory (or initialise an empty one) on this first start");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keel::kExitBadConfig;
  }

  keel::AgentConfig cfg;
  keel::LogFormat format = keel::LogFormat::Text;
  try {
    if (!configPath.empty()) cfg = keel::loadAgentConfig(configPath);
    if (!name.empty()) cfg.name = name;
    if (!listen.empty()) cfg.listen = listen;
    if (!adminListen.empty()) {
      cfg.admin.listen = adminListen;
      keel::checkAdmin("--admin-listen", cfg.admin);
    }
    if (!dataDir.empty()) cfg.dataDir = dataDir;
    if (mapSizeMb != 0) cfg.mapSizeMb = mapSizeMb;
    if (redo) cfg.redo = true;
    if (noRedo) cfg.redo = false;
    if (!coordinator.empty()) cfg.coordinator = coordinator;
    if (!adapter.empty()) cfg.adapter = adapter;
    if (!postgres.empty()) cfg.postgres = postgres;
    if (poolSize != 0) cfg.poolSize = poolSize;
    if (!statementsPath.empty()) cfg.statements = keel::loadStatements(statementsPath);
    if (!hostUrl.empty()) cfg.host.url = hostUrl;
    if (!hostOpsPath.empty()) cfg.host.operations = keel::loadHostOperations(hostOpsPath);
    keel::checkAdapter("", cfg);
    if (!debugBreak.empty() && cfg.adapter != "ledger") throw keel::ConfigError("--debug-break is for adapter ledger");
    if (inDoubtMs != 0) cfg.inDoubtQueryMs = inDoubtMs;
    if (!tlsFlags.ca.empty()) cfg.tls.ca = tlsFlags.ca;
    if (!tlsFlags.cert.empty()) cfg.tls.cert = tlsFlags.cert;
    if (!tlsFlags.key.empty()) cfg.tls.key = tlsFlags.key;
    if (!tlsFlags.coordinators.empty()) cfg.tls.coordinators = tlsFlags.coordinators;
    if (!tlsFlags.operators.empty()) cfg.tls.operators = tlsFlags.operators;
    if (insecure) cfg.tls.insecure = true;
    if (!cfg.coordinator.empty()) keel::checkAddress("coordinator", cfg.coordinator);
    if (!keel::validName(cfg.name)) {
      throw keel::ConfigError("agent name '" + cfg.name +
                              "' is missing or invalid (--name or [agent] name; 1-64 chars of A-Z a-z 0-9 _ . -)");
    }
    keel::checkAddress("listen", cfg.listen);
    keel::checkTransport(cfg.tls, cfg.listen, keel::ServerRole::Agent);
    format = keel::chooseLogFormat(logFormat.empty() ? cfg.log.format : logFormat);
    keel::failpoint::initFromEnv();
  } catch (const std::exception& e) {
    std::cerr << "keel-agent: " << e.what() << "\n";
    return keel::kExitBadConfig;
  }

  keel::initLogging("agent " + cfg.name, format);
  try {
    keel::captureTerminationSignals();
    auto io = kj::setupAsyncIo();
    // Certificates are read before the data directory is touched: a bad one
    // refuses the start with nothing changed.
    auto tlsReload = keel::startTls(io, cfg.tls);
    // The admin address is bound first: taken, it refuses the start before
    // the data directory (or PostgreSQL) is touched.
    std::unique_ptr<keel::AdminHttpServer> admin;
    if (!cfg.admin.listen.empty()) {
      keel::AdminHttpServer::Limits limits;
      limits.hosts = cfg.admin.hosts;
      admin = std::make_unique<keel::AdminHttpServer>(cfg.admin.listen, limits);
    }
    keel::preflightBackend(cfg);  // the host's side (PostgreSQL), before the data directory
    keel::DataDir dir(cfg.dataDir, keel::DataDirOwner{keel::DataDirKind::Agent, cfg.name, 0, "keel-agent"},
                      init);  // held until exit
    cfg.dataDir = dir.path();
    std::unique_ptr<keel::ParticipantBackend> backend = keel::makeBackend(cfg, io);
    if (!debugBreak.empty()) {
      auto* ledger = dynamic_cast<keel::Agent*>(backend.get());  // checked with the config: a ledger
      KEEL_LOG_WARN("--debug-break {}: this agent BREAKS the protocol on purpose (test only)", debugBreak);
      ledger->setDebugBreak(debugBreak);
    }
    auto& agent = *backend;
    keel::RpcServer server(io);
    std::string bound = keel::withPort(cfg.listen, server.bind(cfg.listen));
    agent.start();  // the first write of this start
    keel::InDoubtResolver resolver(io, agent, cfg.coordinator, keel::Micros(cfg.inDoubtQueryMs) * 1000);
    if (!cfg.coordinator.empty()) {
      resolver.start();
      KEEL_LOG_INFO("branches prepared for over {} ms ask coordinator {} for their outcome", cfg.inDoubtQueryMs,
                    cfg.coordinator);
    }
    keel::BackupServer backups(*io.lowLevelProvider, agent.branchLog().env().raw(),
                               keel::formatIdentity(dir.identity()));
    backups.setBeforeCopy([&agent] { agent.branchLog().log().checkpointSync(); });  // redo mode: every group
    auto impl = kj::heap<keel::ParticipantImpl>(agent, &backups);
    auto& target = *impl;
    keel::AgentMetrics metrics;
    target.setMetrics(&metrics);
    capnp::Capability::Client keep = kj::mv(impl);
    // The admin plane's reads go to the same RPC object, in-process.
    keel::AgentClient self(keep.castAs<keel::wire::Participant>());
    if (admin) {
      keel::addAgentRoutes(*admin, kj::getCurrentThreadExecutor(), agent, metrics, self);
      admin->start();
      KEEL_LOG_INFO("admin plane on http://{} (/metrics, /api/branches)", admin->bound());
    }
    KJ_DEFER(if (admin) keel::stopAdminServer(*admin, io.waitScope));
    keel::serveUntilTerminated(io, server, target, kj::mv(keep), keel::agentAccess(cfg.tls, cfg.name), cfg.limits,
                               bound, readyFile,
                               cfg.name + " (data " + cfg.dataDir + ")");
  } catch (const keel::ConfigError& e) {
    KEEL_LOG_ERROR("refused: {}", e.what());
    return keel::kExitBadConfig;
  } catch (const keel::AdminListenError& e) {
    KEEL_LOG_ERROR("refused: {} (nothing was changed)", e.what());
    return keel::kExitFailed;
  } catch (const keel::DataDirError& e) {
    KEEL_LOG_ERROR("refused: {}", e.what());
    return keel::kExitDataDirRefused;
  } catch (const kj::Exception& e) {
    KEEL_LOG_ERROR("fatal: {}", e.getDescription().cStr());
    return keel::kExitFailed;
  } catch (const std::exception& e) {
    KEEL_LOG_ERROR("fatal: {}", e.what());
    return keel::kExitFailed;
  }
  return keel::kExitStopped;
}
