// keel-coordinator: the Keel transaction coordinator.
//
//   keel-coordinator --config coordinator.toml [--listen ADDR] [--data-dir DIR]
//
// Exits non-zero with a message naming the file and the problem on a bad
// config, and refuses to start on a damaged WAL record (naming its key).

#include <CLI/CLI.hpp>
#include <kj/async-io.h>

#include <iostream>

#include "common/config.h"
#include "common/daemon.h"
#include "common/failpoint.h"
#include "common/log.h"
#include "common/rpc.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/wal_store.h"

int main(int argc, char** argv) {
  CLI::App app{"keel-coordinator: Keel two-phase-commit coordinator"};
  std::string configPath, listen, dataDir, readyFile;
  app.add_option("--config", configPath, "TOML config file ([coordinator] and [participants])")->required();
  app.add_option("--listen", listen, "host:port for clients (overrides the config; port 0 = any)");
  app.add_option("--data-dir", dataDir, "WAL directory (overrides the config)");
  app.add_option("--ready-file", readyFile, "write the bound host:port here once serving");
  bool checkWal = false;
  app.add_flag("--check-wal", checkWal, "decode every WAL record, list the damaged ones and exit (1 if any)");
  CLI11_PARSE(app, argc, argv);

  keel::CoordinatorConfig cfg;
  try {
    cfg = keel::loadCoordinatorConfig(configPath);
    if (!listen.empty()) {
      keel::checkAddress("--listen", listen);
      cfg.listen = listen;
    }
    if (!dataDir.empty()) cfg.dataDir = dataDir;
    keel::failpoint::initFromEnv();
  } catch (const std::exception& e) {
    std::cerr << "keel-coordinator: " << e.what() << "\n";
    return 2;
  }

  keel::initLogging("coordinator");
  if (checkWal) {
    try {
      keel::WalStore wal(cfg.dataDir, cfg.mapSizeMb << 20);
      auto bad = wal.checkAll();
      for (auto& b : bad) std::cout << "damaged: " << b << "\n";
      std::cout << bad.size() << " damaged record(s) in " << cfg.dataDir << "\n";
      return bad.empty() ? 0 : 1;
    } catch (const std::exception& e) {
      std::cerr << "keel-coordinator: " << e.what() << "\n";
      return 1;
    }
  }
  try {
    keel::captureTerminationSignals();
    auto io = kj::setupAsyncIo();
    keel::WalStore wal(cfg.dataDir, cfg.mapSizeMb << 20);
    keel::Coordinator coordinator(cfg, io, wal);
    coordinator.recover().wait(io.waitScope);
    keel::RpcServer server(io, kj::heap<keel::CoordinatorImpl>(coordinator, wal.log().stats()));
    keel::serveUntilTerminated(io, server, cfg.listen, readyFile,
                               "clients with " + std::to_string(cfg.participants.size()) + " participants");
  } catch (const kj::Exception& e) {
    KEEL_LOG_ERROR("fatal: {}", e.getDescription().cStr());
    return 1;
  } catch (const keel::CorruptRecord& e) {
    KEEL_LOG_ERROR("fatal: damaged WAL record: {} (nothing was changed; `keel-coordinator --config {} --check-wal` "
                   "lists every damaged record, docs/recovery.md says what to do)",
                   e.what(), configPath);
    return 1;
  } catch (const std::exception& e) {
    KEEL_LOG_ERROR("fatal: {}", e.what());
    return 1;
  }
  return 0;
}
