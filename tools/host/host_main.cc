// keel-host: the reference host system of docs/hosts.md (try / confirm /
// cancel over HTTP/JSON), with switches to misbehave.
//
//   keel-host --listen 127.0.0.1:7600 --data-dir DIR [--init] [--accounts N --balance B]
//             [--map-size-mb M] [--ready-file F] [--idle-ms N] [--max-connections N]
//             [--slow-ms N] [--drop-answers P] [--fail-rate P] [--crash-at CALL:WHEN] [--seed S]
//
// Start-up order, so that a refused start changes nothing: flags → data
// directory (lock and identity; created only with --init) → open the books
// → bind the listen address → the first write (--accounts, durable before
// serving) → serve until SIGTERM / SIGINT. Exit statuses as keel-agent's
// (common/daemon.h, kExit*), and 86 for --crash-at.

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <csignal>
#include <iostream>
#include <optional>
#include <random>

#include "common/daemon.h"
#include "common/data_dir.h"
#include "common/group_log.h"
#include "common/log.h"
#include "tools/host/host_books.h"
#include "tools/host/host_http.h"
#include "tools/host/host_service.h"

int main(int argc, char** argv) {
  CLI::App app{"keel-host: the reference try/confirm/cancel host of docs/hosts.md"};
  std::string listen, dataDir, readyFile, crashAt;
  bool init = false;
  std::size_t accounts = 0, mapSizeMb = 1024;
  std::int64_t balance = 1'000'000;
  std::optional<std::uint64_t> seed;
  keel::host::Faults faults;
  app.add_option("--listen", listen, "host:port to serve HTTP on (port 0 = any free port)")->required();
  app.add_option("--data-dir", dataDir, "directory of the host's LMDB environment")->required();
  app.add_flag("--init", init, "create the data directory (or initialise an empty one) on this first start");
  app.add_option("--accounts", accounts, "create acct-0 .. acct-(N-1) if missing (durable before serving)");
  app.add_option("--balance", balance, "balance of each account --accounts creates (default 1000000)")
      ->check(CLI::Range(std::int64_t(0), keel::host::HostBooks::kMaxAmount));
  app.add_option("--map-size-mb", mapSizeMb, "LMDB map size in MiB (default 1024)")->check(CLI::PositiveNumber);
  app.add_option("--ready-file", readyFile, "write the bound host:port here once serving");
  keel::host::HttpServer::Limits limits;
  std::int64_t idleMs = limits.idle.count();
  app.add_option("--idle-ms", idleMs, "close a connection idle this long (default 60000)")
      ->check(CLI::Range(std::int64_t(1), std::int64_t(86'400'000)));
  app.add_option("--max-connections", limits.maxConnections,
                 "connections served at once; one more is closed at once (default 1024)")
      ->check(CLI::PositiveNumber);
  app.add_option("--slow-ms", faults.slowMs, "FAULT: delay every answer to a contract call this long")
      ->check(CLI::Range(std::int64_t(0), std::int64_t(600000)));
  app.add_option("--drop-answers", faults.dropAnswers,
                 "FAULT: probability 0..1 of applying a call durably, then closing the connection unanswered")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--fail-rate", faults.failRate, "FAULT: probability 0..1 of answering 500 without applying")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--crash-at", crashAt,
                 "FAULT: CALL:WHEN (try|confirm|cancel|any : before|after): exit with status 86 on the first "
                 "matching call, before applying it or after it is durable but before answering");
  bool postCredits = false;
  app.add_flag("--post-credits-at-try", postCredits,
               "post a credit at try and reverse it at cancel, as hosts that post at once do (default: a pending "
               "credit, posted at confirm; docs/hosts.md, \"Isolation\")");
  app.add_option("--seed", seed, "seed of the fault switches' randomness (default: random, logged)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keel::kExitBadConfig;
  }
  try {
    if (!crashAt.empty()) faults.crashAt = keel::host::parseCrashAt(crashAt);
  } catch (const std::invalid_argument& e) {
    std::cerr << "keel-host: --" << e.what() << "\n";
    return keel::kExitBadConfig;
  }
  if (auto colon = listen.rfind(':'); colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) {
    std::cerr << "keel-host: --listen '" << listen << "' is not host:port\n";
    return keel::kExitBadConfig;
  }

  const pid_t stopWithPid = keel::stopWithPidFromEnv();  // a bad value exits here, before anything is touched

  keel::initLogging("host");
  try {
    keel::DataDir dir(dataDir, keel::DataDirOwner{keel::DataDirKind::Host, "host", 0, "keel-host"},
                      init);  // held until exit
    keel::host::HostBooks books(dir.path(), mapSizeMb << 20,
                                postCredits ? keel::host::CreditMode::PostAtTry : keel::host::CreditMode::Pending);
    asio::io_context io;  // outlives the writer below: its answers are posted here
    keel::GroupCommitLog log(books.env());
    std::uint64_t s = seed ? *seed : std::random_device{}();
    keel::host::HostService service(io, books, log, faults, s);
    limits.idle = std::chrono::milliseconds(idleMs);
    keel::host::HttpServer server(io, service, limits);
    std::string bound = keel::withPort(listen, server.bind(listen));
    if (accounts > 0) {
      std::size_t created = log.runSync([&](keel::lmdb::Txn& txn) {  // the first write of this start
        return books.ensureAccounts(txn, accounts, balance);
      });
      KEEL_LOG_INFO("accounts acct-0 .. acct-{}: {} created with balance {}", accounts - 1, created, balance);
    }
    auto stop = [&]() {
      server.stop();
      io.stop();
    };
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](std::error_code ec, int sig) {
      if (ec) return;
      KEEL_LOG_INFO("signal {}: stopping", sig);
      stop();
    });
    // KEEL_STOP_WITH_PARENT (common/daemon.h): stop once that process is gone.
    keel::ParentWatch parent = keel::watchParent(stopWithPid);
    std::optional<asio::posix::stream_descriptor> parentWatch;  // owns parent.fd
    if (parent.fd >= 0) {
      parentWatch.emplace(io, parent.fd);
      parentWatch->async_wait(asio::posix::stream_descriptor::wait_read, [&](std::error_code ec) {
        if (ec) return;
        keel::logParentExited(stopWithPid);
        stop();
      });
    } else if (parent.gone) {
      asio::post(io, stop);
    }
    server.startAccepting();
    if (!readyFile.empty()) keel::writeFileAtomically(readyFile, bound);
    KEEL_LOG_INFO("serving host on {} (data {}), faults {}, seed {}", bound, dir.path(), keel::host::faultsJson(faults),
                  s);
    io.run();
  } catch (const keel::DataDirError& e) {
    KEEL_LOG_ERROR("refused: {}", e.what());
    return keel::kExitDataDirRefused;
  } catch (const std::exception& e) {
    KEEL_LOG_ERROR("fatal: {}", e.what());
    return keel::kExitFailed;
  }
  return keel::kExitStopped;
}
