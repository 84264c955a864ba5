// keel-demo: Keel's main job on the embedded default, end to end.
//
// Starts one coordinator and two ledger agents on loopback (data in a
// temporary folder), opens accounts, runs concurrent transfers between
// accounts on different agents (some deliberately overdrawing, so they are
// rolled back), kills the coordinator with SIGKILL in the middle and
// restarts it, waits until recovery has settled everything, then checks
// and prints: committed, rolled back, money before and after (must be
// equal), and one interaction's records looked up by its seq.
// Exits non-zero if any check fails, and also if the run proves nothing:
// the fault never fired (its process was not running, or the load ended
// before 40%), or fewer transfers than --min-answered-percent were answered.
// --cluster runs the coordinator-cluster demo instead (tools/demo_cluster.h).

#include <CLI/CLI.hpp>
#include <kj/async-io.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "common/client.h"
#include "common/config.h"
#include "common/tls.h"
#include "tools/bank.h"
#include "tools/certs.h"
#include "tools/cluster.h"
#include "tools/demo_cluster.h"
#include "tools/host_process.h"
#include "tools/demo_progress.h"
#include "tools/host_process.h"
#include "tools/pg_baselines.h"
#include "tools/pg_server.h"

namespace {

using keel::ClientOutcome;

struct Demo {
  Demo(kj::AsyncIoContext& io, keel::LocalCluster& cluster, std::vector<keel::bank::PlannedTransfer> plan)
      : io(io), cluster(cluster), plan(std::move(plan)), transfers(std::uint32_t(this->plan.size())) {}
  kj::AsyncIoContext& io;
  keel::LocalCluster& cluster;
  // Drawn before the run (keel::bank::planTransfers): the baselines of
  // --baseline run the very same transfers.
  const std::vector<keel::bank::PlannedTransfer> plan;
  const std::uint32_t transfers;

  kj::Own<keel::KeelClient> client;
  kj::ForkedPromise<void> up = kj::Promise<void>(kj::READY_NOW).fork();
  std::uint32_t next = 0, done = 0;
  std::uint64_t committed = 0, rolledBack = 0, overdrawRolledBack = 0, inDoubt = 0, interrupted = 0,
                unexpected = 0;
  std::uint64_t sampleRollbackSeq = 0, sampleCommitSeq = 0;
  bool killed = false;        // the monitor's turn to inject the fault has come
  bool faultFired = false;    // and it took effect: the process was running when signalled
  std::uint32_t faultInFlight = 0, faultAtDone = 0;  // transfers in flight and answered at that moment
  std::uint64_t startUs = 0, restartMs = 0;
  std::string fault = "coordinator-kill";
  std::uint32_t pauseSeconds = 10;
  keel::Micros healUs = 0;
  keel::Micros lastDoneUs = 0;  // when the last transfer got its answer                 // when the failed party was reachable again
  std::vector<std::uint64_t> failedSeqs;   // answered "rolled back"
  std::vector<std::uint64_t> latencies;    // of committed transfers, microseconds
  std::map<std::string, std::uint64_t> otherReasons;  // why transfers not meant to fail were rolled back
  bool pg = false;                         // postgres agents: transfers are SQL
  bool batch = true;                       // client submits travel in submitBatch messages
  keel::HostProcess* host = nullptr;       // --adapter host: bank-b's host system (host-kill)

  std::string account(std::size_t agent, std::size_t i) {
    return cluster.agentNames()[agent] + ":" + keel::bank::accountName(i);
  }

  kj::Promise<void> worker() {
    if (next >= transfers) return kj::READY_NOW;
    const keel::bank::PlannedTransfer& t = plan[next++];
    std::size_t a = t.fromBank, b = 1 - a;
    bool overdraw = t.overdraw;
    std::vector<keel::Op> ops;
    if (pg) {
      // The same transfer as guarded SQL: the debit must touch one row.
      const auto& names = cluster.agentNames();
      ops = {keel::bank::sqlDebit(names[a], keel::bank::accountName(t.from), t.amount),
             keel::bank::sqlCredit(names[b], keel::bank::accountName(t.to), t.amount)};
    } else {
      ops = keel::transferOps(account(a, t.from), account(b, t.to), t.amount);
    }
    auto t0 = keel::monoMicros();
    return client->submit(ops)
        .then(
            [this, overdraw, t0](keel::SubmitOutcome o) -> kj::Promise<void> {
              switch (o.outcome) {
                case ClientOutcome::Committed:
                  ++committed;
                  latencies.push_back(keel::monoMicros() - t0);
                  if (overdraw) ++unexpected;  // an overdraft must never commit
                  if (sampleCommitSeq == 0) sampleCommitSeq = o.seq;
                  break;
                case ClientOutcome::RolledBack:
                  ++rolledBack;
                  failedSeqs.push_back(o.seq);
                  if (overdraw) {
                    ++overdrawRolledBack;
                    if (sampleRollbackSeq == 0) sampleRollbackSeq = o.seq;
                  } else {
                    ++otherReasons[o.reason];
                  }
                  break;
                case ClientOutcome::InDoubt: ++inDoubt; break;
                default:
                  ++unexpected;
                  std::cerr << "\nunexpected answer for seq " << keel::seqText(o.seq) << ": "
                            << keel::clientOutcomeName(o.outcome) << " " << o.reason << "\n";
              }
              ++done;
              lastDoneUs = keel::wallMicros();
              return kj::READY_NOW;
            },
            [this](kj::Exception&&) -> kj::Promise<void> {
              // The coordinator died with this request in flight: its outcome is
              // decided by recovery (checked through the totals below).
              ++interrupted;
              ++done;
              lastDoneUs = keel::wallMicros();
              return up.addBranch();
            })
        .then([this]() { return worker(); });
  }

  // On a terminal the progress line is rewritten in place; in a log, one
  // line per report.
  keel::demo::ProgressLine line;

  void progress(bool final) {
    line.print(done, transfers, committed, rolledBack, interrupted, double(keel::wallMicros() - startUs) / 1e6, final);
  }
  void endLine() { line.end(); }

  // bank-b fails while transfers run: killed and restarted at once, or
  // paused (SIGSTOP: connections stay open, nothing answers) for a while.
  kj::Promise<void> injectAgentFault() {
    if (fault == "host-kill") {
      // The host system itself dies; bank-b's agent stays up, its branches
      // wait, and its health probe tells the coordinator the host is gone.
      noteFault(host->running());
      std::printf("  >>> SIGKILL keel-host behind bank-b (%u transfers in flight), restarting it after %u s\n",
                  next - done, pauseSeconds);
      host->kill(SIGKILL);
      return io.provider->getTimer().afterDelay(pauseSeconds * kj::SECONDS).then([this]() {
        host->start();
        healUs = keel::wallMicros();
        endLine();
        std::printf("  >>> keel-host serving again: bank-b's branches are confirmed or cancelled\n");
      });
    }
    noteFault(cluster.agentRunning("bank-b"));
    if (fault == "agent-kill") {
      std::printf("  >>> SIGKILL bank-b (%u transfers in flight), restarting it at once\n", next - done);
      cluster.killAgent("bank-b", SIGKILL);
      auto t0 = keel::monoMicros();
      cluster.startAgent("bank-b");
      restartMs = (keel::monoMicros() - t0) / 1000;
      healUs = keel::wallMicros();
      std::printf("  >>> bank-b serving again after %llu ms\n", (unsigned long long)restartMs);
      return kj::READY_NOW;
    }
    std::printf("  >>> SIGSTOP bank-b for %u s (%u transfers in flight)\n", pauseSeconds, next - done);
    cluster.killAgent("bank-b", SIGSTOP);
    return io.provider->getTimer().afterDelay(pauseSeconds * kj::SECONDS).then([this]() {
      cluster.killAgent("bank-b", SIGCONT);
      healUs = keel::wallMicros();
      endLine();
      std::printf("  >>> SIGCONT bank-b: reachable again\n");
    });
  }

  // The fault fires now: it counts if its process was running and the load
  // was still going (transfers in flight).
  void noteFault(bool processRunning) {
    faultFired = processRunning && done < transfers;
    faultInFlight = next - done;
    faultAtDone = done;
  }

  // Checks every 5 ms whether the fault is due (the whole load can take
  // less than half a second), prints progress every 500 ms.
  std::uint32_t ticks = 0;
  kj::Promise<void> monitor() {
    if (done >= transfers) return kj::READY_NOW;
    return io.provider->getTimer().afterDelay(5 * kj::MILLISECONDS).then([this]() -> kj::Promise<void> {
      if (done < transfers && ++ticks % 100 == 0) progress(false);
      if (done >= transfers) return kj::READY_NOW;
      if (!killed && done >= transfers * 2 / 5 &&
          (fault == "agent-kill" || fault == "agent-pause" || fault == "host-kill")) {
        killed = true;
        endLine();
        return injectAgentFault().then([this]() { return monitor(); });
      }
      if (!killed && done >= transfers * 2 / 5 && fault == "coordinator-kill") {
        killed = true;
        auto paf = kj::newPromiseAndFulfiller<void>();
        up = paf.promise.fork();
        endLine();
        std::printf("  >>> SIGKILL coordinator (%u transfers in flight)\n", next - done);
        noteFault(cluster.coordinatorRunning());
        cluster.killCoordinator(9);
        auto t0 = keel::monoMicros();
        cluster.startCoordinator();
        restartMs = (keel::monoMicros() - t0) / 1000;
        healUs = keel::wallMicros();
        std::printf("  >>> coordinator restarted and serving in %llu ms; recovery re-drives what was in flight\n",
                    (unsigned long long)restartMs);
        return keel::KeelClient::connect(io, cluster.coordinatorAddress())
            .then([this, f = kj::mv(paf.fulfiller)](kj::Own<keel::KeelClient> c) mutable {
              client = kj::mv(c);
              if (batch) client->enableBatching();
              f->fulfill();
              return monitor();
            });
      }
      return monitor();
    });
  }
};

using Totals = keel::bank::AgentTotals;

// PostgreSQL mode: the databases hold the money; prepared = pg_prepared_xacts.
keel::test::PgServer* gPg = nullptr;
keel::HostProcess* gHost = nullptr;  // --adapter host: bank-b's host system

Totals snapshot(kj::AsyncIoContext& io, keel::LocalCluster& cluster) {
  Totals t = keel::bank::agentTotals(io, cluster);
  if (gHost != nullptr) {
    // bank-b is a host agent: its money is the host's books; a try neither
    // confirmed nor cancelled counts as prepared.
    auto b = gHost->books();
    t.money += b.total();
    t.held += b.held();
    for (auto& [n, a] : b.accounts) t.negative += a.balance < 0 ? 1 : 0;
    t.prepared += std::uint32_t(b.open);
  }
  if (gPg != nullptr) {
    t.money = 0;
    for (auto db : {"bank_a", "bank_b"}) {
      auto conn = gPg->connString(db);
      t.money += std::stoll(keel::test::pgQuery(conn, "SELECT coalesce(sum(balance), 0) FROM accounts")[0][0]);
      t.negative += std::stoll(keel::test::pgQuery(conn, "SELECT count(*) FROM accounts WHERE balance < 0")[0][0]);
      t.prepared += keel::test::pgQuery(conn, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()").size();
    }
  }
  return t;
}

// The data folder goes after a clean run unless --keep; returns rc.
int removeUnlessKept(const std::string& base, bool keep, int rc) {
  if (!keep && rc == 0) {
    std::error_code ec;
    std::filesystem::remove_all(base, ec);
  } else {
    std::printf("keel-demo: logs kept in %s\n", base.c_str());
  }
  return rc;
}

// One line of the --baseline comparison.
struct BaselineRow {
  const char* what;
  double perSecond;
  std::uint64_t p50Us, p99Us, committed, overdrawn, other;
};

void printRow(const BaselineRow& r) {
  std::printf("  %-26s %8.0f %9.2f %9.2f %10llu %11llu %7llu\n", r.what, r.perSecond, r.p50Us / 1e3, r.p99Us / 1e3,
              (unsigned long long)r.committed, (unsigned long long)r.overdrawn, (unsigned long long)r.other);
}

BaselineRow rowOf(const char* what, const keel::bank::BaselineResult& b) {
  return {what, b.perSecond(), b.p50Us, b.p99Us, b.committed, b.overdrawn, b.failed};
}

// --baseline: the transfers Keel just ran, again without Keel (raw 2PC on
// the same two databases, then one database holding both banks), side by
// side with Keel's run and what each one guarantees.
// Returns what makes the comparison void (a baseline that could not run
// the transfers), one line each.
std::vector<std::string> runBaselines(keel::test::PgServer& pg, const std::vector<keel::bank::PlannedTransfer>& plan,
                                      std::uint32_t accounts, std::uint32_t clients, const BaselineRow& keelRow) {
  keel::bank::BaselineOptions bo;
  bo.clients = clients;
  std::printf("[baseline 1/2] the same %zu transfers as raw 2PC driven by %u clients on bank_a and bank_b, no log\n",
              plan.size(), clients);
  auto raw = keel::bank::raw2pcBaseline({pg.connString("bank_a"), pg.connString("bank_b")}, plan, bo);
  std::printf("              %.2f s\n", raw.seconds);
  std::printf("[baseline 2/2] the same %zu transfers as local transactions in bank_local (both banks' %u accounts "
              "in one database, rows locked lower account first)\n",
              plan.size(), 2 * accounts);
  auto local = keel::bank::oneDatabaseBaseline(pg.connString("bank_local"), accounts, plan, bo);
  std::printf("              %.2f s\n", local.seconds);
  std::printf("[comparison] %zu transfers, %u clients, the same accounts and amounts in each run\n", plan.size(),
              clients);
  std::printf("  %-26s %8s %9s %9s %10s %11s %7s\n", "", "per s", "p50 ms", "p99 ms", "committed", "overdrafts",
              "other");
  printRow(keelRow);
  printRow(rowOf("raw 2PC (no log)", raw));
  printRow(rowOf("one database (local txn)", local));
  for (auto* b : {&raw, &local}) {
    if (!b->firstFailure.empty()) {
      std::printf("  %s: first other failure: %s\n", b == &raw ? "raw 2PC" : "one database", b->firstFailure.c_str());
    }
  }
  std::printf("  keel / raw 2PC %.2f, keel / one database %.2f of the throughput\n",
              keelRow.perSecond / raw.perSecond(), keelRow.perSecond / local.perSecond());
  std::printf("  connections per database: keel's agent %u (its default pool_size), each baseline %u (one per "
              "client)\n",
              keel::AgentConfig{}.poolSize, clients);
  std::printf("  what each guarantees:\n"
              "    keel          atomic across both databases through a crash of any process; each transfer has a\n"
              "                  seq, a request id and a story to look up\n"
              "    raw 2PC       atomic across both databases only while the client lives: if it dies between\n"
              "                  PREPARE and COMMIT PREPARED, prepared transactions stay locked until someone\n"
              "                  decides them by hand, and nothing records what was decided\n"
              "    one database  atomic, but only because both banks are one database: not the deployment Keel is for\n");
  std::vector<std::string> failed;
  for (auto* b : {&raw, &local}) {
    const char* name = b == &raw ? "raw 2PC" : "one database";
    if (b->committed == 0) failed.push_back(std::string("the ") + name + " baseline committed nothing");
    if (b->failed * 20 > plan.size()) {
      failed.push_back(std::string("the ") + name + " baseline failed " + std::to_string(b->failed) +
                       " transfers not meant to fail (over 5%)");
    }
  }
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-demo: a coordinator and two ledger agents doing transfers through a coordinator crash "
               "(--cluster: a coordinator cluster on etcd through the loss of one coordinator)"};
  std::uint32_t transfers = 4000, concurrency = 32, accounts = 20, overdraw = 10;
  std::int64_t opening = 10000;
  bool keep = false;
  std::uint32_t minAnsweredPercent = 50;
  app.add_option("--transfers", transfers, "transfers to run (--cluster: 12000, --adapter postgres: 10000)")->capture_default_str()->check(CLI::Range(10u, 10000000u));
  app.add_option("--concurrency", concurrency, "transfers in flight at once")->capture_default_str()->check(CLI::Range(1u, 4096u));
  app.add_option("--accounts", accounts, "accounts per agent (--adapter postgres: 1000 unless given)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100000u));
  app.add_option("--opening", opening, "opening balance of each account")->capture_default_str()->check(CLI::Range(0ll, 1000000000ll));
  app.add_option("--overdraw-percent", overdraw, "share of transfers that overdraw on purpose")->capture_default_str()->check(CLI::Range(0u, 100u));
  app.add_flag("--keep", keep, "keep the data folder and logs");
  bool insecure = false;
  app.add_flag("--insecure", insecure,
               "plaintext on loopback (default: mutual TLS with a throwaway CA made in the data folder)");
  app.add_option("--min-answered-percent", minAnsweredPercent,
                 "fail unless at least this share of the transfers got an answer (committed, rolled back or in "
                 "doubt): a load that did not run proves nothing")
      ->capture_default_str()
      ->check(CLI::Range(0u, 100u));
  bool noBatch = false;
  app.add_flag("--no-batch", noBatch, "one submit call per transfer (default: the client batches submits)");
  std::string fault = "coordinator-kill";
  std::uint32_t pauseSeconds = 10;
  app.add_option("--fault", fault, "what fails at 40%: coordinator-kill, agent-kill (SIGKILL bank-b, restart at once), "
                                   "agent-pause (SIGSTOP bank-b for --pause-seconds), host-kill (--adapter host: "
                                   "SIGKILL keel-host, restart after --pause-seconds), none")
      ->capture_default_str()
      ->check(CLI::IsMember({"coordinator-kill", "agent-kill", "agent-pause", "host-kill", "none"}));
  app.add_option("--pause-seconds", pauseSeconds, "how long agent-pause keeps bank-b stopped (host-kill: keel-host down)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 600u));
  std::string adapter = "ledger";
  bool baseline = false;
  app.add_option("--adapter", adapter,
                 "ledger (embedded), postgres (a PostgreSQL server with two databases) or host (bank-b is a host "
                 "system that can only try, confirm and cancel: keel-host, docs/hosts.md)")
      ->capture_default_str()
      ->check(CLI::IsMember({"ledger", "postgres", "host"}));
  app.add_flag("--baseline", baseline,
               "postgres: then run the same transfers without Keel, for comparison: raw 2PC driven by the client on "
               "the same two databases, and local transactions in one database holding both banks' accounts");
  bool clusterMode = false, noRestart = false;
  int coordinators = 3, leaseTtl = 2;
  std::uint32_t minCommittedPercent = 40;
  app.add_flag("--cluster", clusterMode,
               "a coordinator cluster on a 3-member etcd: transfers through every coordinator, one of them "
               "SIGKILLed at 40% and taken over by a survivor (make demo-cluster; docs/cluster.md)");
  app.add_option("--coordinators", coordinators, "--cluster: how many coordinators")
      ->capture_default_str()
      ->check(CLI::Range(2, 9));
  app.add_option("--lease-ttl", leaseTtl, "--cluster: the members' lease TTL in seconds (a dead one is taken over "
                                          "after it)")
      ->capture_default_str()
      ->check(CLI::Range(1, 60));
  app.add_flag("--no-restart", noRestart, "--cluster: leave the killed coordinator down at the end");
  app.add_option("--min-committed-percent", minCommittedPercent,
                 "--cluster: fail unless at least this share of the transfers committed")
      ->capture_default_str()
      ->check(CLI::Range(0u, 100u));
  CLI11_PARSE(app, argc, argv);
  for (auto flag : {"--coordinators", "--lease-ttl", "--no-restart", "--min-committed-percent"}) {
    if (!clusterMode && app.count(flag) != 0) {
      std::fprintf(stderr, "keel-demo: %s is for --cluster\n", flag);
      return 2;
    }
  }
  if (fault == "host-kill" && adapter != "host") {
    std::fprintf(stderr, "keel-demo: --fault host-kill kills the host system behind a host agent; it needs --adapter host\n");
    return 2;
  }
  if (baseline && adapter != "postgres") {
    std::fprintf(stderr, "keel-demo: --baseline compares with PostgreSQL without Keel; it needs --adapter postgres\n");
    return 2;
  }
  // Row locks: on PostgreSQL two transfers that share an account wait for
  // each other, so the postgres demo spreads its transfers over more
  // accounts (its contention is printed with the run).
  if (adapter == "postgres" && app.count("--accounts") == 0) accounts = 1000;
  // Enough transfers for steady rates in the --baseline comparison.
  if (adapter == "postgres" && app.count("--transfers") == 0) transfers = 10000;
  for (auto flag : {"--fault", "--pause-seconds", "--adapter", "--baseline", "--min-answered-percent"}) {
    if (clusterMode && app.count(flag) != 0) {
      std::fprintf(stderr, "keel-demo: --cluster runs ledger agents and its own fault (a coordinator SIGKILL); "
                           "%s does not apply\n", flag);
      return 2;
    }
  }

  std::string base = keel::makeTempDir("keel-demo");
  auto wallStart = keel::monoMicros();
  std::printf("keel-demo: data and logs in %s\n", base.c_str());
  int rc = 0;
  keel::demo::ClusterDemoOptions co;
  if (clusterMode) {
    // Enough transfers that the survivors still serve while the dead
    // coordinator's work is taken over (a lease TTL and more after the kill).
    if (app.count("--transfers") == 0) transfers = 12000;
    co.baseDir = base;
    co.transfers = transfers;
    co.concurrency = concurrency;
    co.accountsPerAgent = accounts;
    co.overdrawPercent = overdraw;
    co.opening = opening;
    co.coordinators = coordinators;
    co.leaseTtlS = leaseTtl;
    co.batch = !noBatch;
    co.restart = !noRestart;
    co.minCommittedPercent = minCommittedPercent;
  }
  try {
    // Mutual TLS unless --insecure: a throwaway CA and certificates for the
    // coordinator(s), each agent and this process (an operator: it lists
    // unfinished work), in the data folder (docs/security.md).
    std::string tlsDir;
    if (!insecure) {
      tlsDir = base + "/certs";
      keel::makeCertificates(tlsDir, {"keel-coordinator", "keel-operator", "bank-a", "bank-b"});
      auto me = keel::certificateFiles(tlsDir, "keel-operator");
      keel::installClientTls(me.ca, me.cert, me.key);
      std::printf("keel-demo: mutual TLS on every link (throwaway CA and certificates in %s; --insecure for plaintext)\n",
                  tlsDir.c_str());
    }
    co.tlsDir = tlsDir;
    if (clusterMode) return removeUnlessKept(base, keep, keel::demo::runClusterDemo(co));
    keel::ClusterOptions copts;
    copts.binDir = keel::selfBinDir();
    copts.baseDir = base;
    copts.tlsDir = tlsDir;
    keel::LocalCluster cluster(copts);
    std::unique_ptr<keel::test::PgServer> pgServer;
    if (adapter == "postgres") {
      keel::test::PgServerOptions po;
      po.databases = {"bank_a", "bank_b"};
      if (baseline) po.databases.push_back("bank_local");
      po.maxPreparedTransactions = keel::test::preparedTransactionsFor(concurrency);
      pgServer = std::make_unique<keel::test::PgServer>("", po);  // its own folder, owned by postgres
      std::printf("[0/6] starting PostgreSQL on loopback with databases bank_a and bank_b%s\n",
                  baseline ? " (and bank_local for the baseline)" : "");
      pgServer->start();
      gPg = pgServer.get();
      keel::bank::setUpPostgresBanks(*pgServer, cluster, accounts, opening);
      if (baseline) {
        keel::test::pgQuery(pgServer->connString("bank_local"), keel::bank::createAccountsSql(2 * accounts, opening));
      }
    }
    std::unique_ptr<keel::HostProcess> host;
    if (adapter == "host") {
      keel::HostOptions ho;
      ho.binDir = keel::selfBinDir();
      ho.dir = base;
      ho.accounts = accounts;
      ho.balance = opening;
      host = std::make_unique<keel::HostProcess>(ho);
      std::printf("[0/6] starting keel-host, the reference host system, with %u accounts of %lld; bank-b is a host "
                  "agent in front of it (try / confirm / cancel over HTTP, docs/hosts.md)\n",
                  accounts, (long long)opening);
      host->start();
      gHost = host.get();
      cluster.setAgentArgs("bank-b", {"--adapter", "host", "--host", host->url(), "--host-operations",
                                      keel::writeHostOperations(base)});
    }
    std::printf("[1/6] starting agents bank-a, bank-b and the coordinator on loopback\n");
    cluster.startAll();
    std::printf("      coordinator %s, bank-a %s, bank-b %s\n", cluster.coordinatorAddress().c_str(),
                cluster.agentAddress("bank-a").c_str(), cluster.agentAddress("bank-b").c_str());

    auto io = kj::setupAsyncIo();
    Demo demo(io, cluster, keel::bank::planTransfers(transfers, accounts, overdraw, 20261128));
    demo.fault = fault;
    demo.pg = pgServer != nullptr;
    demo.host = host.get();
    demo.pauseSeconds = pauseSeconds;
    demo.client = keel::KeelClient::connect(io, cluster.coordinatorAddress()).wait(io.waitScope);
    demo.batch = !noBatch;
    if (demo.batch) demo.client->enableBatching();

    std::printf("[2/6] opening %u accounts on each agent with %lld each\n", accounts, (long long)opening);
    if (host) {
      keel::bank::openLedgerAccounts(io.waitScope, *demo.client, {"bank-a"}, accounts, opening);  // bank-b's are the host's
    } else if (!demo.pg) {
      keel::bank::openLedgerAccounts(io.waitScope, *demo.client, cluster.agentNames(), accounts, opening);
    }
    Totals before = snapshot(io, cluster);
    std::printf("      total money: %lld\n", (long long)before.money);

    std::printf("[3/6] running %u transfers, %u at a time (%u%% overdraw on purpose); fault at 40%%: %s\n",
                transfers, concurrency, overdraw, fault.c_str());
    if (demo.pg) {
      std::printf("      contention: %u in flight over %u accounts per bank, so a transfer shares an account with "
                  "another in flight %.1f%% of the time and waits for its row lock; two that wait on each other "
                  "across the two databases are broken by lock_timeout (1 s) and rolled back (docs/postgres.md)\n",
                  concurrency, accounts, 100 * keel::bank::sharedAccountChance(accounts, concurrency));
    }
    demo.startUs = keel::wallMicros();
    {
      kj::Vector<kj::Promise<void>> workers;
      for (std::uint32_t i = 0; i < concurrency; ++i) workers.add(demo.worker());
      // The monitor (progress, fault injection) runs beside the workers and
      // is dropped once they are done, unless a fault it injected has yet to
      // heal.
      auto monitor = demo.monitor().eagerlyEvaluate(nullptr);
      kj::joinPromises(workers.releaseAsArray()).wait(io.waitScope);
      if (demo.killed && demo.healUs == 0) monitor.wait(io.waitScope);  // a pause still to end
    }
    double loadSecs = double(demo.lastDoneUs - demo.startUs) / 1e6;
    demo.progress(true);

    std::printf("[4/6] waiting until every interaction is settled on every host\n");
    auto until = keel::monoMicros() + 60'000'000;
    Totals after;
    keel::CoordinatorInfo info;
    for (;;) {
      info = demo.client->info().wait(io.waitScope);
      after = snapshot(io, cluster);
      // The same test as "everything settled" below: a host agent's branch
      // may still be cancelling (ACTIVE) after the holds are gone.
      if ((info.unfinished == 0 && after.prepared == 0 && after.held == 0 && after.active == 0) ||
          keel::monoMicros() > until) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::printf("      unfinished at the coordinator %llu, prepared branches %u, active branches %u, money held %lld\n",
                (unsigned long long)info.unfinished, after.prepared, after.active, (long long)after.held);
    if (gPg != nullptr && after.prepared != 0) {
      for (auto db : {"bank_a", "bank_b"}) {
        for (auto& row : keel::test::pgQuery(gPg->connString(db),
                                             "SELECT gid, prepared FROM pg_prepared_xacts WHERE database = current_database()")) {
          std::printf("      left prepared in %s: %s (since %s)\n", db, row[0].c_str(), row[1].c_str());
        }
      }
    }

    std::printf("[5/6] one interaction, looked up by its sequence number\n");
    std::uint64_t sample = demo.sampleRollbackSeq != 0 ? demo.sampleRollbackSeq : demo.sampleCommitSeq;
    bool sampleOk = false;
    if (sample != 0) {
      auto q = demo.client->query(sample).wait(io.waitScope);
      if (q) {
        std::printf("%s", keel::toText(q->interaction).c_str());
        if (q->rollback) std::printf("%s", keel::toText(*q->rollback).c_str());
        sampleOk = demo.sampleRollbackSeq == 0 || (q->rollback && q->rollback->completedUs != 0);
      }
    }

    bool moneyOk = before.money == after.money;
    bool settled = info.unfinished == 0 && after.prepared == 0 && after.held == 0 && after.active == 0;
    std::printf("[6/6] summary\n");
    std::printf("  transfers          %u in %.2f s  (%.0f transfers/s%s)\n", transfers, loadSecs, transfers / loadSecs,
                fault == "none" ? "" : ", including the fault");
    std::printf("  committed          %llu\n", (unsigned long long)demo.committed);
    std::printf("  rolled back        %llu  (%llu deliberate overdrafts, %llu others)\n",
                (unsigned long long)demo.rolledBack, (unsigned long long)demo.overdrawRolledBack,
                (unsigned long long)(demo.rolledBack - demo.overdrawRolledBack));
    {
      std::vector<std::pair<std::uint64_t, std::string>> why;
      for (auto& [reason, n] : demo.otherReasons) why.emplace_back(n, reason);
      std::sort(why.rbegin(), why.rend());
      for (std::size_t i = 0; i < why.size() && i < 3; ++i) {
        std::printf("                     %llu: %s\n", (unsigned long long)why[i].first, why[i].second.c_str());
      }
      if (why.size() > 3) std::printf("                     ... and %zu other reasons\n", why.size() - 3);
    }
    std::printf("  answer lost        %llu  (%s)\n", (unsigned long long)demo.interrupted,
                fault == "coordinator-kill" ? "in flight when the coordinator was killed; settled by recovery"
                                            : "the connection to the coordinator broke with the answer in flight");
    std::printf("  in doubt           %llu\n", (unsigned long long)demo.inDoubt);
    std::uint64_t keelP50 = 0, keelP99 = 0;
    {
      auto& l = demo.latencies;
      std::sort(l.begin(), l.end());
      if (!l.empty()) {
        keelP50 = l[l.size() / 2];
        keelP99 = l[std::min(l.size() - 1, l.size() * 99 / 100)];
        std::printf("  latency (committed, client view)  p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", keelP50 / 1e3,
                    keelP99 / 1e3, l.back() / 1e3);
      }
    }
    if (fault == "coordinator-kill" || fault == "agent-kill") {
      std::printf("  restart of the killed process %llu ms\n", (unsigned long long)demo.restartMs);
    }
    {
      auto st = demo.client->capability().statsRequest().send().wait(io.waitScope).getStats();
      std::printf("  window of inconsistency (failure -> every host confirmed), %llu failed interactions:\n"
                  "                     median %.1f ms  p99 %.1f ms  max %.1f ms\n",
                  (unsigned long long)st.getCount(), st.getP50Us() / 1e3, st.getP99Us() / 1e3, st.getMaxUs() / 1e3);
      if (demo.healUs != 0) {
        // For each interaction answered "rolled back": how long after the failed
        // party was reachable again did its last host confirm?
        std::vector<std::uint64_t> after;
        for (auto seq : demo.failedSeqs) {
          auto q = demo.client->query(seq).wait(io.waitScope);
          if (!q || q->interaction.completedUs == 0) continue;
          auto from = std::max<keel::Micros>(q->interaction.failedUs, demo.healUs);
          if (q->interaction.failedUs < demo.healUs && q->interaction.completedUs > demo.healUs) {
            after.push_back(q->interaction.completedUs - from);
          }
        }
        std::sort(after.begin(), after.end());
        if (!after.empty()) {
          auto rank = [&](double p) { return after[std::min(after.size() - 1, std::size_t(p * after.size()))]; };
          std::printf("  settled after the failed party was back, %zu interactions failed before it:\n"
                      "                     median %.1f ms  p99 %.1f ms  max %.1f ms\n",
                      after.size(), rank(0.5) / 1e3, rank(0.99) / 1e3, after.back() / 1e3);
        }
      }
    }
    std::printf("  money before       %lld\n", (long long)before.money);
    std::printf("  money after        %lld   %s\n", (long long)after.money, moneyOk ? "EQUAL" : "DIFFERENT!");
    std::printf("  negative balances  %lld\n", (long long)after.negative);
    std::printf("  everything settled %s\n", settled ? "yes" : "NO");
    std::uint64_t answered = demo.committed + demo.rolledBack + demo.inDoubt;
    std::uint64_t floor = std::uint64_t(transfers) * minAnsweredPercent / 100;
    if (fault != "none") {
      std::printf("  fault              %s %s", fault.c_str(), demo.faultFired ? "fired" : "NEVER FIRED");
      if (demo.killed) std::printf(" (after %u answers, %u transfers in flight)", demo.faultAtDone, demo.faultInFlight);
      std::printf("\n");
    }
    // Every reason the run proves nothing or broke a promise, one line each.
    std::vector<std::string> failed;
    if (!moneyOk) failed.push_back("money before and after differ");
    if (!settled) failed.push_back("not everything settled");
    if (after.negative != 0) failed.push_back("a balance is negative");
    if (demo.unexpected != 0) failed.push_back(std::to_string(demo.unexpected) + " unexpected answers");
    if (!sampleOk) failed.push_back("the sample interaction's records are missing or incomplete");
    if (demo.committed == 0) failed.push_back("nothing committed");
    // Without a fault, a transfer not meant to fail that is rolled back is
    // a lock timeout (contention) or a misconfiguration: a few are the
    // workload's nature, many are a problem to look at.
    std::uint64_t others = demo.rolledBack - demo.overdrawRolledBack;
    if (fault == "none" && others * 20 > transfers) {
      failed.push_back(std::to_string(others) + " transfers not meant to fail were rolled back (over 5%; reasons above)");
    }
    if (answered < floor) {
      failed.push_back("only " + std::to_string(answered) + " of " + std::to_string(transfers) +
                       " transfers were answered, fewer than --min-answered-percent " +
                       std::to_string(minAnsweredPercent) + "%");
    }
    if (fault != "none" && !demo.faultFired) {
      failed.push_back("the fault " + fault + " never fired" +
                       (demo.killed ? " (its process was not running, or the load had ended)"
                                    : " (the load ended before 40% was seen)"));
    }
    cluster.stopAll();
    if (pgServer && baseline) {
      BaselineRow keelRow{"keel (2PC, durable log)", transfers / loadSecs, keelP50, keelP99, demo.committed,
                          demo.overdrawRolledBack, others + demo.inDoubt};
      auto void_ = runBaselines(*pgServer, demo.plan, accounts, concurrency, keelRow);
      failed.insert(failed.end(), void_.begin(), void_.end());
    }
    for (const auto& f : failed) std::printf("keel-demo: FAILED: %s\n", f.c_str());
    if (!failed.empty()) {
      rc = 1;
    } else {
      std::printf("keel-demo: OK in %.1f s\n", double(keel::monoMicros() - wallStart) / 1e6);
    }
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "\nkeel-demo: %s\n", e.getDescription().cStr());
    rc = 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nkeel-demo: %s\n", e.what());
    rc = 1;
  }
  return removeUnlessKept(base, keep, rc);
}
