// keel-bench: drives a Keel deployment (self-started on loopback, or given
// by address) with a workload and reports throughput, latency, CPU seconds
// per process and durable log commits per interaction; optionally the
// physical floor, the raw2pc baseline on PostgreSQL and a concurrency sweep;
// with --cluster N, N coordinators sharing a 3-member etcd, their etcd txns
// per interaction and etcd's own txn latency (--etcd-floor).
// The last line of stdout is one JSON object. See docs/performance.md.

#include <CLI/CLI.hpp>
#include <kj/async-io.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "bench/etcd_floor.h"
#include "bench/floor.h"
#include "bench/folder_reaper.h"
#include "bench/backup_run.h"
#include "bench/host_outage.h"
#include "bench/keel_load.h"
#include "bench/metrics_scrape.h"
#include "bench/raw2pc.h"
#include "bench/report.h"
#include "bench/sweep.h"
#include "common/tls.h"
#include "tools/bank.h"
#include "tools/certs.h"
#include "tools/cluster.h"
#include "tools/etcd_cluster.h"
#include "tools/free_port.h"
#include "tools/host_process.h"
#include "tools/pg_server.h"

namespace {

using namespace keel::bench;

struct Flags {
  std::string coordinator;
  std::vector<std::string> agentAddrs;  // NAME=HOST:PORT
  std::vector<std::string> pids;        // NAME=PID
  std::uint32_t agents = 0;             // self-started; 0 = what the workload needs, at least 2
  std::string adapter = "ledger";
  std::string mode = "keel";
  bool compare = false;
  WorkloadSpec spec;
  std::uint32_t concurrency = 64, connections = 4, threads = 1;
  double duration = 10, warmup = 2;
  bool floor = false;
  std::uint32_t floorSamples = 2000;
  bool sweep = false;
  std::vector<std::uint32_t> sweepLevels = {1, 8, 32, 64, 128};
  std::string out = "keel-bench-out";
  bool keep = false, quiet = false;
  bool noBatch = false;
  bool requestIds = false;
  bool tls = false;  // self-started processes on mutual TLS (throwaway certificates)
  bool embedded = false;  // --embedded: the postgres agents run inside the coordinator
  bool rawPrepared = false;  // raw2pc: debit and credit as named prepared statements
  std::uint32_t batchInFlight = 2;
  std::vector<std::string> coordinatorSet;  // "key = value" lines for a self-started coordinator
  bool redo = false;                        // self-started coordinator and agents in redo mode (the default)
  bool noRedo = false;                      // ... without it: every group commit an LMDB commit
  std::vector<std::string> clusterSet;      // ... for its [cluster] section (--cluster)
  std::uint64_t seed = 1;
  std::uint32_t cluster = 0;  // coordinators of a self-started cluster on etcd; 0: one coordinator, no etcd
  int leaseTtl = 2;
  std::string etcdDir;  // where the etcd members' data goes; empty: $TMPDIR or /tmp
  bool etcdFloor = false;
  std::uint32_t etcdFloorSamples = 200;
  double hostOutage = 0;  // --adapter host: seconds keel-host is down during the load; 0: no outage
  double backupAt = 0;    // --backup-at: a hot backup of the coordinator this far into the window; 0: none
  double scrapeMetrics = 0;  // --scrape-metrics: admin planes on, /metrics of each scraped this often (s); 0: off
  bool scrapeCompare = false;  // --scrape-compare: windows without and with the scraper, alternated
  std::uint32_t scrapeRounds = 3;  // --scrape-rounds: scraped windows of --scrape-compare
  std::vector<std::string> pgDatabases;  // --pg NAME=CONNINFO: existing databases, one per agent
  std::uint32_t pgServers = 1;           // --pg-servers: PostgreSQL servers started, agents' databases spread over them
};

std::pair<std::string, std::string> splitEq(const std::string& s, const char* flag) {
  auto eq = s.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == s.size()) {
    throw CLI::ValidationError(flag, "'" + s + "' is not NAME=VALUE");
  }
  return {s.substr(0, eq), s.substr(eq + 1)};
}

// Everything a run needs, self-started or external.
struct Setup {
  std::string baseDir;  // data, logs, floor scratch
  bool ownBaseDir = false;
  std::vector<std::unique_ptr<keel::test::PgServer>> pgs;  // started here (none with --pg)
  std::unique_ptr<keel::test::EtcdCluster> etcd;  // --cluster: outlives the coordinators
  std::unique_ptr<keel::LocalCluster> cluster;
  std::unique_ptr<keel::HostProcess> host;  // --adapter host: the host system behind bank-b
  Deployment deployment;
  std::vector<std::string> conninfo;  // postgres: one per agent
  std::vector<unsigned> adminPorts;   // --scrape-metrics: the coordinator's admin plane, then each agent's
};

std::string agentName(std::size_t i) { return std::string("bank-") + char('a' + i); }

// --adapter host: bank-a is a ledger agent, bank-b a host agent.
const std::string kHostAgent = "bank-b";

// `adapter`: f.adapter, or "ledger" for the host mode's ledger-only run.
void setUp(Setup& s, const Flags& f, const std::string& adapter, std::uint32_t maxConcurrency,
           kj::AsyncIoContext& io) {
  if (!f.coordinator.empty()) {
    s.baseDir = keel::makeTempDir("keel-bench");
    s.ownBaseDir = true;
    reaperOpen(s.baseDir, f.keep);
    s.deployment.coordinators = {f.coordinator};
    for (auto& a : f.agentAddrs) s.deployment.agents.push_back(splitEq(a, "--agent"));
    for (auto& p : f.pids) {
      auto [name, pid] = splitEq(p, "--pid");
      s.deployment.processes.push_back(WatchedProcess{name, pid_t(std::stol(pid)), false});
    }
  } else {
    s.baseDir = keel::makeTempDir("keel-bench");
    s.ownBaseDir = true;
    reaperOpen(s.baseDir, f.keep);
    keel::ClusterOptions copts;
    copts.binDir = keel::selfBinDir();
    copts.baseDir = s.baseDir;
    copts.agents.clear();
    for (std::uint32_t i = 0; i < f.agents; ++i) copts.agents.push_back(agentName(i));
    if (f.embedded) copts.embedded.insert(copts.agents.begin(), copts.agents.end());
    // (Postgres agents ask the coordinator for one prepare per message
    // themselves: Participant.batching, docs/postgres.md.)
    for (auto& kv : f.coordinatorSet) copts.coordinatorExtraToml += kv + "\n";
    if (f.redo) {
      copts.coordinatorExtraToml += "redo = true\n";
      copts.agentExtraArgs.push_back("--redo");
    }
    if (f.noRedo) {
      copts.coordinatorExtraToml += "redo = false\n";
      copts.agentExtraArgs.push_back("--no-redo");
    }
    if (f.tls) {
      // Every link on mutual TLS; this process dials as an operator.
      copts.tlsDir = s.baseDir + "/certs";
      std::vector<std::string> names = copts.agents;
      names.insert(names.end(), {"keel-coordinator", "keel-operator"});
      keel::makeCertificates(copts.tlsDir, names);
      auto me = keel::certificateFiles(copts.tlsDir, "keel-operator");
      keel::installClientTls(me.ca, me.cert, me.key);
    }
    if (f.cluster != 0) {
      std::fprintf(stderr, "keel-bench: starting a 3-member etcd cluster\n");
      keel::test::EtcdClusterOptions eo;
      eo.parentDir = f.etcdDir;
      s.etcd = std::make_unique<keel::test::EtcdCluster>(eo);
      s.etcd->start();
      copts.coordinators = int(f.cluster);
      copts.clusterToml = keel::test::clusterSection(*s.etcd, "/keel-bench", f.leaseTtl);
      for (auto& kv : f.clusterSet) copts.clusterToml += kv + "\n";
    }
    if (f.scrapeMetrics > 0) {
      // Admin planes on every process, on loopback ports of their own.
      s.adminPorts.push_back(keel::pickFreePort());
      copts.coordinatorTailToml += "[admin]\nlisten = \"127.0.0.1:" + std::to_string(s.adminPorts[0]) + "\"\n";
    }
    s.cluster = std::make_unique<keel::LocalCluster>(copts);
    if (f.scrapeMetrics > 0) {
      for (auto& a : copts.agents) {
        s.adminPorts.push_back(keel::pickFreePort());
        s.cluster->setAgentArgs(a, {"--admin-listen", "127.0.0.1:" + std::to_string(s.adminPorts.back())});
      }
    }
    if (adapter == "host") {
      keel::HostOptions ho;
      ho.binDir = copts.binDir;
      ho.dir = s.baseDir;
      ho.accounts = f.spec.accounts;
      ho.balance = kOpeningBalance;
      s.host = std::make_unique<keel::HostProcess>(ho);
      std::fprintf(stderr, "keel-bench: starting keel-host with %u accounts; %s is a host agent in front of it\n",
                   f.spec.accounts, kHostAgent.c_str());
      s.host->start();
      s.cluster->setAgentArgs(kHostAgent, {"--adapter", "host", "--host", s.host->url(), "--host-operations",
                                           keel::writeHostOperations(s.baseDir)});
    }
    if (adapter == "postgres") {
      std::map<std::string, std::string> conninfo;
      if (!f.pgDatabases.empty()) {
        for (auto& d : f.pgDatabases) conninfo.insert(splitEq(d, "--pg"));
        std::fprintf(stderr, "keel-bench: using the PostgreSQL databases given with --pg\n");
        // Servers of the user's: checked for room first (what the servers
        // started here are given; see below), so that a run does not fail
        // halfway with PostgreSQL's "too many clients".
        keel::bank::PgNeeds needs;
        needs.connectionsPerAgent = 2 * maxConcurrency;
        bool baseline = f.compare || f.mode == "raw2pc";
        needs.connectionsPerDatabase = baseline ? maxConcurrency : 0;
        needs.preparedPerAgent = maxConcurrency;
        needs.why = "per agent its two pools of " + std::to_string(maxConcurrency) + " connections" +
                    (baseline ? ", plus raw2pc's " + std::to_string(maxConcurrency) + " per database" : "");
        keel::bank::checkPostgresRoom(conninfo, needs);
      } else {
        // One server per f.pgServers; agent i's database on server i mod n.
        for (std::uint32_t k = 0; k < f.pgServers; ++k) {
          keel::test::PgServerOptions po;
          std::uint32_t here = 0;
          for (std::size_t i = k; i < copts.agents.size(); i += f.pgServers) {
            po.databases.push_back(keel::bank::databaseFor(copts.agents[i]));
            ++here;
          }
          // Room for every prepared branch, and for every connection: per
          // agent its two event-loop pools and two worker pools (each as
          // large as the concurrency; the workers' open only when needed),
          // plus raw2pc's own connection per database and client.
          po.maxPreparedTransactions = keel::test::preparedTransactionsFor(maxConcurrency);
          po.settings = {"max_connections=" + std::to_string(here * 5 * maxConcurrency + 50)};
          s.pgs.push_back(std::make_unique<keel::test::PgServer>("", po));  // its own folder, owned by postgres
        }
        std::fprintf(stderr, "keel-bench: starting %u PostgreSQL server%s\n", f.pgServers, f.pgServers > 1 ? "s" : "");
        for (auto& pg : s.pgs) pg->start();
        for (std::size_t i = 0; i < copts.agents.size(); ++i) {
          auto& a = copts.agents[i];
          conninfo[a] = s.pgs[i % s.pgs.size()]->connString(keel::bank::databaseFor(a));
        }
      }
      // The agents' pools as large as the load, so the pool is not the limit.
      keel::bank::setUpPostgresBanks(conninfo, *s.cluster, f.spec.accounts, kOpeningBalance, maxConcurrency);
      for (auto& a : copts.agents) s.conninfo.push_back(conninfo.at(a));
    }
    if (f.embedded) {
      std::fprintf(stderr, "keel-bench: starting the coordinator with %u agents embedded in it in %s%s\n", f.agents,
                   s.baseDir.c_str(), f.tls ? " (mutual TLS to clients)" : "");
    } else {
      std::fprintf(stderr, "keel-bench: starting %u agents and %s in %s%s\n", f.agents,
                   f.cluster ? (std::to_string(f.cluster) + " coordinators").c_str() : "the coordinator",
                   s.baseDir.c_str(), f.tls ? " (mutual TLS on every link)" : "");
    }
    s.cluster->startAll();
    s.deployment.coordinators = s.cluster->coordinatorAddresses();
    for (int i = 0; i < s.cluster->coordinatorCount(); ++i) {
      s.deployment.processes.push_back(
          WatchedProcess{keel::LocalCluster::coordinatorName(i), s.cluster->coordinatorPid(i), false});
    }
    for (std::size_t i = 0; s.etcd && i < s.etcd->size(); ++i) {
      s.deployment.processes.push_back(WatchedProcess{"etcd-" + std::to_string(i + 1), s.etcd->pid(i), false});
    }
    for (auto& a : copts.agents) {
      if (f.embedded) continue;  // in the coordinator's process: its CPU is the coordinator's
      s.deployment.agents.emplace_back(a, s.cluster->agentAddress(a));
      s.deployment.processes.push_back(WatchedProcess{a, s.cluster->agentPid(a), false});
    }
    for (std::size_t k = 0; k < s.pgs.size(); ++k) {
      std::string name = s.pgs.size() == 1 ? "postgres" : "postgres-" + std::to_string(k + 1);
      s.deployment.processes.push_back(WatchedProcess{name, s.pgs[k]->pid(), true});
    }
    if (s.host) s.deployment.processes.push_back(WatchedProcess{"keel-host", s.host->pid(), false});
  }
  s.deployment.processes.push_back(WatchedProcess{"keel-bench", ::getpid(), false});
  if ((adapter == "ledger" || adapter == "host") && f.mode == "keel") {
    auto client = keel::KeelClient::connect(io, s.deployment.coordinators.front()).wait(io.waitScope);
    std::vector<std::string> names;  // the host's accounts are keel-host's own
    for (auto& [n, a] : s.deployment.agents) {
      if (adapter == "ledger" || n != kHostAgent) names.push_back(n);
    }
    std::fprintf(stderr, "keel-bench: opening %u accounts on each agent\n", f.spec.accounts);
    keel::bank::openLedgerAccounts(io.waitScope, *client, names, f.spec.accounts, kOpeningBalance);
  }
}

// Stops what setUp started; removes its folder unless kept.
void tearDown(Setup& s, bool keep) {
  if (s.cluster) s.cluster->stopAll();
  if (s.host) s.host->stop();
  s.cluster.reset();
  s.host.reset();
  s.etcd.reset();
  s.pgs.clear();
  if (s.ownBaseDir) {
    if (keep) {
      std::fprintf(stderr, "keel-bench: data and logs kept in %s\n", s.baseDir.c_str());
    } else {
      std::error_code ec;
      std::filesystem::remove_all(s.baseDir, ec);
    }
    reaperClose(s.baseDir);
    s.ownBaseDir = false;
  }
}

// `observer` hears every answer and `atStart` runs when the window opens
// (--host-outage, --backup-at).
RunResult runOne(kj::AsyncIoContext& io, const Setup& s, const Flags& f, const std::string& mode,
                 std::uint32_t concurrency, AnswerObserver* observer = nullptr,
                 std::function<void()> atStart = nullptr) {
  WindowOptions w;
  w.warmupS = f.warmup;
  w.durationS = f.duration;
  w.progress = !f.quiet;
  w.label = (s.host ? "host " : "") + mode + " c=" + std::to_string(concurrency);
  if (mode == "raw2pc") {
    Raw2pcOptions o;
    o.conninfo = s.conninfo;
    o.concurrency = concurrency;
    o.window = w;
    o.seed = f.seed;
    o.prepared = f.rawPrepared;
    return runRaw2pc(f.spec, o, s.deployment.processes);
  }
  LoadOptions o;
  o.concurrency = concurrency;
  o.connections = f.connections;
  o.threads = f.threads;
  o.batch = !f.noBatch;
  o.requestIds = f.requestIds;
  o.batchInFlight = f.batchInFlight;
  o.window = w;
  o.seed = f.seed;
  o.observer = observer;
  o.atWindowStart = std::move(atStart);
  return runKeelLoad(io, s.deployment, f.spec, o);
}

// --scrape-metrics: the load while a scraper reads every /metrics once per
// interval. With --scrape-compare, windows without the scraper (the admin
// planes on but idle) and with it alternate: A B A B ... A, --scrape-rounds
// scraped windows in all. Each scraped window is compared with the mean of
// the two unscraped ones around it, and the median of those ratios is the
// answer: the machine's drift over a run (it is large on two shared cores)
// cancels out. Fails (1) when a scrape failed or none was made.
int runScraped(kj::AsyncIoContext& io, const Setup& s, const Flags& f, const RunContext& ctx, JsonObject& j) {
  addContextFields(j, ctx);
  std::uint32_t rounds = f.scrapeCompare ? f.scrapeRounds : 1;
  std::vector<RunResult> scraped, unscraped;
  keel::bench::ScrapeResult all, consoleCalls;
  auto plain = [&]() {
    unscraped.push_back(runOne(io, s, f, f.mode, f.concurrency));
    printRun(stdout, unscraped.back(), ctx);
  };
  if (f.scrapeCompare) plain();
  for (std::uint32_t i = 0; i < rounds; ++i) {
    // The console's calls ride along: the coordinator's plane is the first.
    keel::bench::MetricsScraper scraper(s.adminPorts, f.scrapeMetrics, s.adminPorts.front());
    scraper.start();
    scraped.push_back(runOne(io, s, f, f.mode, f.concurrency));
    auto sr = scraper.stop();
    auto cr = scraper.console();
    consoleCalls.scrapes += cr.scrapes;
    consoleCalls.failures += cr.failures;
    if (consoleCalls.firstFailure.empty()) consoleCalls.firstFailure = cr.firstFailure;
    consoleCalls.ms.insert(consoleCalls.ms.end(), cr.ms.begin(), cr.ms.end());
    std::printf("(scraped)\n");
    printRun(stdout, scraped.back(), ctx);
    all.scrapes += sr.scrapes;
    all.failures += sr.failures;
    if (all.firstFailure.empty()) all.firstFailure = sr.firstFailure;
    all.bytes = sr.bytes;
    all.ms.insert(all.ms.end(), sr.ms.begin(), sr.ms.end());
    if (f.scrapeCompare) plain();
  }
  std::printf("scraped /metrics of %zu admin planes every %.2f s: %llu answers, %llu failed, p50 %.2f ms, p99 %.2f "
              "ms, max %.2f ms, %llu bytes per round\n",
              s.adminPorts.size(), f.scrapeMetrics, (unsigned long long)all.scrapes, (unsigned long long)all.failures,
              all.percentile(50), all.percentile(99), all.percentile(100), (unsigned long long)all.bytes);
  if (!all.firstFailure.empty()) std::printf("first failed scrape: %s\n", all.firstFailure.c_str());
  std::printf("and the calls of an open console page (/api/live, /api/participants, /api/list, /api/audit): %llu "
              "answers, %llu failed, p50 %.2f ms, p99 %.2f ms\n",
              (unsigned long long)consoleCalls.scrapes, (unsigned long long)consoleCalls.failures,
              consoleCalls.percentile(50), consoleCalls.percentile(99));
  if (!consoleCalls.firstFailure.empty()) std::printf("first failed console call: %s\n", consoleCalls.firstFailure.c_str());
  j.add("console_calls", consoleCalls.scrapes);
  j.add("console_call_failures", consoleCalls.failures);
  j.add("console_call_p99_ms", consoleCalls.percentile(99));
  addRunFields(j, scraped.back());
  j.add("scrape_interval_s", f.scrapeMetrics);
  j.add("scrapes", all.scrapes);
  j.add("scrape_failures", all.failures);
  j.add("scrape_p50_ms", all.percentile(50));
  j.add("scrape_p99_ms", all.percentile(99));
  j.add("scrape_max_ms", all.percentile(100));
  j.add("scrape_bytes_per_round", all.bytes);
  if (f.scrapeCompare) {
    std::vector<double> ratios;
    std::string list;
    for (std::uint32_t i = 0; i < rounds; ++i) {
      double around = (unscraped[i].committedPerSecond() + unscraped[i + 1].committedPerSecond()) / 2;
      ratios.push_back(around > 0 ? scraped[i].committedPerSecond() / around : 0);
      char buf[96];
      std::snprintf(buf, sizeof buf, "%s%.0f / %.0f = %.3f", i ? ", " : "", scraped[i].committedPerSecond(), around,
                    ratios.back());
      list += buf;
    }
    std::vector<double> sorted = ratios;
    std::sort(sorted.begin(), sorted.end());
    double median = sorted[sorted.size() / 2];
    std::printf("scraped / not scraped (committed transfers per second, each scraped window against the mean of the "
                "unscraped ones around it): %s; median %.3f\n",
                list.c_str(), median);
    std::string arr = "[";
    for (std::size_t i = 0; i < ratios.size(); ++i) arr += (i ? "," : "") + std::to_string(ratios[i]);
    j.addRaw("scraped_ratios", arr + "]");
    j.add("scraped_ratio_median", median);
  }
  bool answered = true;  // every window answered something (no scrape ratio on empty work)
  for (const auto* runs : {&scraped, &unscraped}) {
    for (const auto& r : *runs) answered = answeredSomething(stderr, r) && answered;
  }
  if (!answered) return 2;
  return all.failures == 0 && all.scrapes > 0 && consoleCalls.failures == 0 && consoleCalls.scrapes > 0 ? 0 : 1;
}

RunContext contextOf(const Flags& f) {
  RunContext c;
  c.adapter = f.adapter;
  c.workload = f.spec.kind;
  c.participants = f.spec.width();
  c.accounts = f.spec.accounts;
  c.agents = std::uint32_t(f.spec.agents.size());
  c.threads = f.threads;
  c.rollbackPercent = f.spec.rollbackPercent;
  c.readPercent = f.spec.readPercent;
  c.warmupS = f.warmup;
  c.durationS = f.duration;
  c.embedded = f.embedded;
  c.rawPrepared = f.rawPrepared;
  return c;
}

// The machine's 1-minute load average (other work competes for the cores:
// a number measured at load 6 on 2 cores is not one measured at load 1).
double loadAverage() {
  double l = -1;
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1;
    std::fclose(f);
  }
  return l;
}

// How this machine's idle CPUs wait (a machine fact, like the load): a
// virtual machine whose idle vCPUs halt without polling first exits to its
// host on every idle and pays for it at every wake-up, a large part of
// one client's latency here (docs/performance.md, "twenty-fourth sitting":
// guest_halt_poll_ns 0 against the kernel's default 200000, one client
// 1.6 x slower). The cpuidle driver's name ("" when the kernel has no
// cpuidle), and with the haltpoll driver its poll limit in ns (-1 when not
// known).
struct IdlePolling {
  std::string driver;
  long long haltPollNs = -1;
};

IdlePolling idlePolling() {
  IdlePolling p;
  auto firstLine = [](const char* path) {
    std::string line;
    if (std::FILE* f = std::fopen(path, "r")) {
      char buf[128];
      if (std::fgets(buf, sizeof buf, f) != nullptr) line = buf;
      std::fclose(f);
    }
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    return line;
  };
  p.driver = firstLine("/sys/devices/system/cpu/cpuidle/current_driver");
  if (p.driver == "haltpoll") {
    std::string ns = firstLine("/sys/module/haltpoll/parameters/guest_halt_poll_ns");
    if (!ns.empty() && ns.find_first_not_of("0123456789") == std::string::npos && ns.size() < 19) {
      p.haltPollNs = std::stoll(ns);
    }
  }
  return p;
}

// Adds the idle-polling fields; at one client, where it matters most, says
// so when idle polling is off.
void reportIdlePolling(JsonObject& j, bool oneClient) {
  auto p = idlePolling();
  j.add("cpuidle_driver", p.driver);
  if (p.haltPollNs >= 0) j.add("guest_halt_poll_ns", std::uint64_t(p.haltPollNs));
  if (oneClient && p.driver == "haltpoll" && p.haltPollNs == 0) {
    std::printf("note: this virtual machine's idle CPUs do not poll before they halt (cpuidle haltpoll, "
                "guest_halt_poll_ns = 0): every wake-up of an idle CPU goes through the host, which slows one "
                "client down (docs/performance.md, \"twenty-fourth sitting\")\n");
  }
}

// --host-outage: the kill comes this long into the measured window.
double outageAt(const Flags& f) { return std::min(2.0, f.duration / 4); }

// --adapter host: the host run (with --host-outage, its outage and how
// fast what it touched settled); without an outage, then the same load on
// two ledger agents (`ledger`, started once the host deployment is
// stopped) and the ratios host / ledger.
void runHostMode(kj::AsyncIoContext& io, Setup& s, Setup& ledger, const Flags& f, const RunContext& ctx,
                 JsonObject& j) {
  std::unique_ptr<HostOutage> outage;
  if (f.hostOutage > 0) {
    std::pair<std::string, std::string> hostAgent;
    for (auto& a : s.deployment.agents) {
      if (a.first == kHostAgent) hostAgent = a;
    }
    outage = std::make_unique<HostOutage>(*s.host, s.deployment.coordinators.front(), hostAgent, outageAt(f),
                                          f.hostOutage);
  }
  auto* o = outage.get();
  auto r = o != nullptr ? runOne(io, s, f, f.mode, f.concurrency, o, [o] { o->begin(); })
                        : runOne(io, s, f, f.mode, f.concurrency);
  printRun(stdout, r, ctx);
  addContextFields(j, ctx);
  addRunFields(j, r);
  if (outage) {
    auto client = keel::KeelClient::connect(io, s.deployment.coordinators.front()).wait(io.waitScope);
    auto o = outage->settle(io, *client, 60 * kj::SECONDS);
    printOutage(stdout, o);
    addOutageFields(j, o);
    return;
  }
  std::fflush(stdout);
  tearDown(s, f.keep);
  std::fprintf(stderr, "keel-bench: the same load on two ledger agents, for the ratios\n");
  setUp(ledger, f, "ledger", f.concurrency, io);
  auto l = runOne(io, ledger, f, f.mode, f.concurrency);
  RunContext lctx = ctx;
  lctx.adapter = "ledger";
  printRun(stdout, l, lctx);
  addRunFields(j, l, "ledger_");
  printHostOverLedger(stdout, r, l);
  addHostOverLedgerFields(j, r, l);
}

// What each side spends per transfer: Keel's own processes (coordinator
// and agents) against the raw 2PC client (keel-bench itself, which is all
// there is of it), and PostgreSQL under each (when keel-bench started it).
void printCpuComparison(const RunResult& keelRun, const RunResult& raw) {
  double keelOwn = groupCpuUs(keelRun, {"coordinator", "bank-"});
  double rawClient = groupCpuUs(raw, {"keel-bench"});
  double pgKeel = groupCpuUs(keelRun, {"postgres"}), pgRaw = groupCpuUs(raw, {"postgres"});
  std::printf("CPU us per transfer: Keel's own processes (coordinator + agents) %.0f, the raw 2PC client %.0f", keelOwn,
              rawClient);
  if (pgKeel >= 0 && pgRaw >= 0) {
    std::printf("; PostgreSQL %.0f under Keel, %.0f under raw 2PC", pgKeel, pgRaw);
  } else {
    std::printf("; PostgreSQL not measured (databases given with --pg)");
  }
  std::printf("\n");
}

void addComparison(JsonObject& j, const RunResult& keelRun, const RunResult& raw) {
  addRunFields(j, raw, "raw2pc_");
  j.add("keel_own_cpu_us_per_interaction", groupCpuUs(keelRun, {"coordinator", "bank-"}))
      .add("raw2pc_client_cpu_us_per_interaction", groupCpuUs(raw, {"keel-bench"}));
  if (double pg = groupCpuUs(keelRun, {"postgres"}); pg >= 0) j.add("keel_postgres_cpu_us_per_interaction", pg);
  if (double pg = groupCpuUs(raw, {"postgres"}); pg >= 0) j.add("raw2pc_postgres_cpu_us_per_interaction", pg);
  // Committed transfers per second: the work both sides are there to do (a
  // rollback is cheaper, so counting it would flatter the side with more).
  j.add("keel_over_raw2pc", raw.committedPerSecond() > 0 ? keelRun.committedPerSecond() / raw.committedPerSecond() : 0.0);
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"keel-bench: load, latency, CPU and durable log commits of a Keel deployment (see docs/performance.md)"};
  app.add_option("--coordinator", f.coordinator, "HOST:PORT of a running coordinator (default: start one on loopback)");
  app.add_option("--agent", f.agentAddrs, "NAME=HOST:PORT of a running agent (repeat; with --coordinator)");
  app.add_option("--pid", f.pids, "NAME=PID of a running Keel process, for its CPU seconds (repeat)");
  app.add_option("--agents", f.agents, "agents to start (default: 2, or --participants for multi)")
      ->check(CLI::Range(1u, 26u));
  app.add_option("--adapter", f.adapter,
                 "ledger, postgres (starts a PostgreSQL server, one database per agent) or host (bank-a a ledger "
                 "agent, bank-b a host agent in front of a keel-host; then the same load on two ledger agents, "
                 "and the ratios)")
      ->capture_default_str()
      ->check(CLI::IsMember({"ledger", "postgres", "host"}));
  app.add_option("--backup-at", f.backupAt,
                 "a hot backup of the coordinator's WAL this many seconds into the measured window, under the "
                 "load: its size, time, and the answers per second during it against before")
      ->type_name("SECONDS");
  app.add_option("--host-outage", f.hostOutage,
                 "--adapter host: SIGKILL keel-host during the load, restart it after SECONDS, and measure how "
                 "long after it served again the interactions it left unfinished settled")
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--mode", f.mode, "keel (through the coordinator) or raw2pc (libpq 2PC, no manager; postgres)")
      ->capture_default_str()
      ->check(CLI::IsMember({"keel", "raw2pc"}));
  app.add_flag("--compare", f.compare, "postgres: run keel, then raw2pc on the same databases; report the ratio");
  app.add_option("--pg", f.pgDatabases,
                 "postgres: NAME=CONNINFO, an existing database for agent NAME (bank-a, bank-b...; repeat, one per "
                 "agent) instead of a server keel-bench starts; it gets a table named accounts");
  app.add_option("--pg-servers", f.pgServers,
                 "postgres: PostgreSQL servers keel-bench starts, the agents' databases spread over them (two banks "
                 "rarely share a server, and one shared WAL flatters every number)")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  app.add_option("--workload", f.spec.kind, "transfer (2 agents), single (one-phase) or multi (--participants)")
      ->capture_default_str()
      ->check(CLI::IsMember({"transfer", "single", "multi"}));
  app.add_option("--participants", f.spec.participants, "participants per interaction for --workload multi")
      ->capture_default_str()
      ->check(CLI::Range(1u, 5u));
  app.add_option("--rollback-percent", f.spec.rollbackPercent, "share that overdraws on purpose (rolled back)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 100u));
  app.add_option("--read-percent", f.spec.readPercent, "share that only reads balances (read-only)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 100u));
  app.add_option("--accounts", f.spec.accounts, "accounts per agent (fewer = more contention)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1000000u));
  app.add_option("--concurrency", f.concurrency, "outstanding interactions")
      ->capture_default_str()
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--connections", f.connections, "connections to the coordinator (concurrency spread over them)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 256u));
  app.add_option("--threads", f.threads, "client threads, each with its own event loop and connections")
      ->capture_default_str()
      ->check(CLI::Range(1u, 64u));
  app.add_option("--duration", f.duration, "seconds measured")->capture_default_str()->check(CLI::Range(0.1, 3600.0));
  app.add_option("--warmup", f.warmup, "seconds of load before measuring")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 600.0));
  app.add_flag("--floor", f.floor, "measure the floor (RPC round trip, durable LMDB commit and redo-log append) before and after the load");
  // Bounded: the redo floor's scratch log holds every sample (two halves
  // of 256 bytes a sample: 100,000 make ~51 MB each).
  app.add_option("--floor-samples", f.floorSamples, "samples per floor median")
      ->capture_default_str()
      ->check(CLI::Range(10u, 100000u));
  app.add_flag("--sweep", f.sweep, "run each of --sweep-levels, write a table and a plot to --out (implies --floor, but with --embedded)");
  app.add_option("--sweep-levels", f.sweepLevels, "concurrency levels of --sweep")->delimiter(',')->capture_default_str()
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--out", f.out, "where --sweep writes sweep.md, sweep.csv and sweep.svg")->capture_default_str();
  app.add_flag("--keep", f.keep, "keep the data folder and logs");
  app.add_flag("--no-batch", f.noBatch, "one submit call per interaction (default: the client batches submits)");
  app.add_flag("--request-ids", f.requestIds, "every submit carries a fresh request id (idempotency key)");
  app.add_flag("--tls", f.tls, "self-started processes on mutual TLS (throwaway certificates; docs/security.md)");
  app.add_flag("--raw-prepared", f.rawPrepared,
               "raw2pc: send the debit and credit as named prepared statements (parsed once per connection, as the "
               "postgres agents do) instead of as text");
  app.add_flag("--embedded", f.embedded,
               "postgres: the agents run inside the coordinator's process ([participants] NAME = \"embedded:FILE\"; "
               "docs/operations.md, \"Embedded participants\")");
  auto* redoFlag = app.add_flag("--redo", f.redo,
                                "self-started coordinator and agents in redo mode, the default: one flush per group "
                                "commit (docs/operations.md, \"Redo log\")");
  app.add_flag("--no-redo", f.noRedo,
               "self-started coordinator and agents without the redo log: every group commit an LMDB commit (two "
               "flushes)")
      ->excludes(redoFlag);
  app.add_option("--coordinator-set", f.coordinatorSet,
                 "KEY=VALUE added to the self-started coordinator's [coordinator] section, e.g. batch_max=1 "
                 "(repeat; see docs/examples/coordinator.toml)")
      ->each([](const std::string& kv) {
        if (kv.find('=') == std::string::npos) throw CLI::ValidationError("--coordinator-set", kv + " is not KEY=VALUE");
      });
  app.add_option("--cluster-set", f.clusterSet,
                 "--cluster: KEY=VALUE added to every coordinator's [cluster] section, e.g. decision_gather_ms=5 "
                 "(repeat; see docs/cluster.md)")
      ->each([](const std::string& kv) {
        if (kv.find('=') == std::string::npos) throw CLI::ValidationError("--cluster-set", kv + " is not KEY=VALUE");
      });
  app.add_option("--batch-in-flight", f.batchInFlight, "submitBatch messages out at once per connection")
      ->capture_default_str()
      ->check(CLI::Range(1u, 64u));
  app.add_option("--cluster", f.cluster,
                 "start N coordinators sharing a 3-member etcd cluster (docs/cluster.md); connections are spread "
                 "over them (rounded up to a multiple of N)")
      ->check(CLI::Range(1u, 9u));
  app.add_option("--lease-ttl", f.leaseTtl, "--cluster: the members' lease TTL in seconds")
      ->capture_default_str()
      ->check(CLI::Range(1, 60));
  app.add_option("--etcd-dir", f.etcdDir,
                 "--cluster: the folder the etcd members' data goes in (default $TMPDIR or /tmp; /dev/shm puts etcd "
                 "on tmpfs)");
  app.add_flag("--etcd-floor", f.etcdFloor,
               "--cluster: measure etcd's own create-if-absent txn latency on the bench's etcd, before the load");
  app.add_option("--etcd-floor-samples", f.etcdFloorSamples, "sequential txns per --etcd-floor median")
      ->capture_default_str()
      ->check(CLI::Range(10u, 100000u));
  app.add_option("--scrape-metrics", f.scrapeMetrics,
                 "self-started: admin planes on; every SECONDS during the load, /metrics of each scraped and "
                 "the calls of an open console made (docs/performance.md, \"Admin plane\")")
      ->type_name("SECONDS")
      ->check(CLI::Range(0.05, 60.0));
  app.add_flag("--scrape-compare", f.scrapeCompare,
               "with --scrape-metrics: windows without and with the scraper alternated (A B A ... A), each scraped "
               "one compared with the two around it; the median ratio");
  app.add_option("--scrape-rounds", f.scrapeRounds, "scraped windows of --scrape-compare")
      ->capture_default_str()
      ->check(CLI::Range(1u, 50u));
  app.add_flag("--quiet", f.quiet, "no progress lines");
  app.add_option("--seed", f.seed, "workload random seed")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is 0; a bad flag or value is 2, as every other refusal here.
    return app.exit(e) == 0 ? 0 : 2;
  }

  auto usage = [&](const std::string& msg) {
    std::fprintf(stderr, "keel-bench: %s\n", msg.c_str());
    return 2;
  };
  if (!f.coordinator.empty() && f.agentAddrs.empty()) return usage("--coordinator needs --agent NAME=HOST:PORT for each agent");
  if (f.coordinator.empty() && !f.agentAddrs.empty()) return usage("--agent needs --coordinator");
  if (!f.coordinator.empty() && f.agents != 0) return usage("--agents starts a deployment; not with --coordinator");
  if (f.scrapeCompare && f.scrapeMetrics == 0) return usage("--scrape-compare needs --scrape-metrics SECONDS");
  if (f.scrapeMetrics > 0) {
    if (!f.coordinator.empty()) return usage("--scrape-metrics starts the admin planes: not with --coordinator");
    if (f.adapter == "host" || f.cluster != 0 || f.sweep || f.compare || f.backupAt > 0 || f.mode != "keel") {
      return usage("--scrape-metrics runs one keel load (ledger or postgres, one coordinator): not with --adapter "
                   "host, --cluster, --sweep, --compare, --backup-at or --mode raw2pc");
    }
  }
  if ((!f.pgDatabases.empty() || f.pgServers != 1) && f.adapter != "postgres") {
    return usage("--pg and --pg-servers need --adapter postgres");
  }
  if (!f.pgDatabases.empty() && f.pgServers != 1) {
    return usage("--pg gives the databases; --pg-servers starts servers for them: one or the other");
  }
  for (auto& d : f.pgDatabases) {
    try {
      splitEq(d, "--pg");
    } catch (const CLI::ValidationError& e) {
      return usage(e.what());
    }
  }
  if (!f.coordinator.empty() && f.adapter == "postgres") {
    return usage("--adapter postgres starts its own PostgreSQL and deployment; not with --coordinator");
  }
  if ((f.mode == "raw2pc" || f.compare) && f.adapter != "postgres") return usage("raw2pc and --compare need --adapter postgres");
  if (f.embedded && (f.adapter != "postgres" || f.cluster != 0 || f.redo || f.noRedo || f.scrapeMetrics > 0)) {
    return usage("--embedded runs postgres agents inside one coordinator: --adapter postgres, and not with --cluster, "
                 "--redo, --no-redo or --scrape-metrics");
  }
  if (f.compare && f.mode == "raw2pc") return usage("--compare runs both modes: leave --mode at keel");
  if (f.rawPrepared && !f.compare && f.mode != "raw2pc") return usage("--raw-prepared needs --compare or --mode raw2pc");
  if ((f.mode == "raw2pc" || f.compare) && (f.spec.kind != "transfer" || f.spec.readPercent != 0)) {
    return usage("raw2pc runs the transfer workload only (--workload transfer, --read-percent 0)");
  }
  if (f.spec.kind != "multi" && app.count("--participants")) return usage("--participants is for --workload multi");
  if (!f.coordinator.empty() && f.cluster != 0) return usage("--cluster starts a deployment; not with --coordinator");
  if (f.cluster == 0) {
    for (auto flag : {"--lease-ttl", "--etcd-dir", "--etcd-floor", "--etcd-floor-samples", "--cluster-set"}) {
      if (app.count(flag) != 0) return usage(std::string(flag) + " is for --cluster");
    }
  }
  if (f.cluster > 1 && f.connections % f.cluster != 0) {
    auto even = (f.connections + f.cluster - 1) / f.cluster * f.cluster;
    std::fprintf(stderr, "keel-bench: %u connections over %u coordinators: %u, so that each gets as many\n",
                 f.connections, f.cluster, even);
    f.connections = even;
  }
  if ((f.redo || f.noRedo) && !f.coordinator.empty()) {
    return usage(std::string(f.redo ? "--redo" : "--no-redo") +
                 " sets the self-started coordinator's and agents' redo mode: not with --coordinator (set redo there)");
  }
  if (f.adapter == "host") {
    if (!f.coordinator.empty()) return usage("--adapter host starts its own keel-host and deployment; not with --coordinator");
    if (f.spec.kind != "transfer") return usage("--adapter host runs the transfer workload (a ledger branch and a host branch)");
    if (f.spec.readPercent != 0) return usage("a host agent cannot read balances: --read-percent must be 0 with --adapter host");
    if (f.agents != 0 && f.agents != 2) return usage("--adapter host starts two agents (bank-a ledger, bank-b host): leave --agents out");
    for (auto flag : {"--sweep", "--cluster", "--tls"}) {
      if (app.count(flag) != 0) return usage(std::string(flag) + " is not available with --adapter host");
    }
  }
  if (f.backupAt > 0) {
    if (f.sweep || f.compare || f.adapter == "host" || f.mode != "keel" || f.tls) {
      return usage("--backup-at runs one keel-mode load without --sweep, --compare, --tls or --adapter host");
    }
    if (f.backupAt + 1 > f.duration) {
      return usage("--backup-at " + std::to_string(f.backupAt) + " needs --duration of at least " +
                   std::to_string(f.backupAt + 1) + " s (the backup must end inside the window)");
    }
  }
  if (f.hostOutage > 0) {
    if (f.adapter != "host") return usage("--host-outage kills the keel-host behind a host agent: it needs --adapter host");
    if (app.count("--duration") == 0) f.duration = std::max(f.duration, f.hostOutage + 8);
    if (outageAt(f) + f.hostOutage + 1 > f.duration) {
      char buf[200];
      std::snprintf(buf, sizeof buf,
                    "--host-outage %g needs --duration of at least %g s: the kill comes %g s into the window and the "
                    "load must outlast the restart by a second",
                    f.hostOutage, outageAt(f) + f.hostOutage + 1, outageAt(f));
      return usage(buf);
    }
  }
  if (f.coordinator.empty() && f.agents == 0) f.agents = std::max<std::uint32_t>(2, f.spec.width());
  if (f.coordinator.empty()) {
    for (std::uint32_t i = 0; i < f.agents; ++i) f.spec.agents.push_back(agentName(i));
  } else {
    for (auto& a : f.agentAddrs) f.spec.agents.push_back(splitEq(a, "--agent").first);
  }
  if (!f.pgDatabases.empty()) {
    std::set<std::string> given, wanted(f.spec.agents.begin(), f.spec.agents.end());
    for (auto& d : f.pgDatabases) {
      auto name = splitEq(d, "--pg").first;
      if (!given.insert(name).second) return usage("--pg gives " + name + " twice");
      if (!wanted.count(name)) {
        return usage("--pg names " + name + ", which is not an agent of this run (the agents are bank-a, bank-b...)");
      }
    }
    for (auto& a : wanted) {
      if (!given.count(a)) return usage("--pg gives no database for agent " + a + ": one --pg NAME=CONNINFO per agent");
    }
  }
  if (f.pgServers > f.agents && f.coordinator.empty()) {
    return usage("--pg-servers " + std::to_string(f.pgServers) + " is more than the " + std::to_string(f.agents) +
                 " agents: a server would hold no database");
  }
  f.spec.adapter = f.adapter == "postgres" ? Adapter::Postgres : Adapter::Ledger;
  if (auto err = f.spec.check(); !err.empty()) return usage(err);
  if (f.embedded && f.floor) return usage("--floor times a round trip to an agent process: not with --embedded");
  if (f.sweep && !f.embedded) f.floor = true;  // embedded: no agent process to time a round trip to
  std::uint32_t maxConcurrency = f.concurrency;
  if (f.sweep) maxConcurrency = *std::max_element(f.sweepLevels.begin(), f.sweepLevels.end());

  // Still one thread: the reaper is forked now (bench/folder_reaper.h).
  startFolderReaper();
  int rc = 0;
  Setup s, ledger;  // ledger: --adapter host's ledger-only run
  try {
    auto io = kj::setupAsyncIo();
    setUp(s, f, f.adapter, maxConcurrency, io);
    RunContext ctx = contextOf(f);
    std::optional<FloorResult> floor;
    std::string floorAgent;
    if (f.floor) {
      std::fprintf(stderr, "keel-bench: measuring the floor before the load (%u samples each)\n", f.floorSamples);
      floorAgent = s.deployment.agents.front().first + "@" + s.deployment.agents.front().second;
      floor = measureFloor(io, floorAgent, s.baseDir, f.floorSamples);
    }
    // The floor again once the load has run, both kept (FloorResult::bracket).
    auto floorAfter = [&] {
      if (!floor) return;
      std::fprintf(stderr, "keel-bench: measuring the floor after the load (%u samples each)\n", f.floorSamples);
      floor = bracket(*floor, measureFloor(io, floorAgent, s.baseDir, f.floorSamples));
    };
    std::optional<EtcdFloorResult> etcdFloor;
    if (f.etcdFloor) {
      std::fprintf(stderr, "keel-bench: measuring etcd's create-if-absent txn (%u samples each way)\n",
                   f.etcdFloorSamples);
      etcdFloor = measureEtcdFloor(io, s.etcd->endpoints(), f.etcdFloorSamples);
    }
    JsonObject j;
    if (f.sweep) {
      std::vector<SweepPoint> points;
      std::vector<std::string> lines;
      for (auto c : f.sweepLevels) {
        SweepPoint p{runOne(io, s, f, f.mode, c), std::nullopt};
        printRun(stdout, p.keel, ctx);
        if (!answeredSomething(stderr, p.keel)) rc = 2;  // the table is written; the run fails
        if (f.compare) {
          p.raw2pc = runOne(io, s, f, "raw2pc", c);
          printRun(stdout, *p.raw2pc, ctx);
          if (!answeredSomething(stderr, *p.raw2pc)) rc = 2;
          printCpuComparison(p.keel, *p.raw2pc);
        }
        JsonObject pj;
        addRunFields(pj, p.keel);
        if (p.raw2pc) addComparison(pj, p.keel, *p.raw2pc);
        lines.push_back(pj.str());
        points.push_back(std::move(p));
        std::fflush(stdout);
      }
      floorAfter();
      std::printf("\n%s", sweepMarkdown(points).c_str());
      const RunResult* single = nullptr;
      for (auto& p : points) {
        if (p.keel.concurrency == 1) single = &p.keel;
      }
      if (floor) printFloor(stdout, *floor, single);
      if (etcdFloor) printEtcdFloor(stdout, *etcdFloor, single);
      std::string title = "keel-bench " + f.adapter + "/" + f.spec.kind + (f.compare ? " vs raw2pc" : "") + ", " +
                          std::to_string(f.duration) .substr(0, 4) + " s per level";
      for (auto& path : writeSweep(f.out, points, title)) std::printf("wrote %s\n", path.c_str());
      addContextFields(j, ctx);
      if (floor) addFloorFields(j, *floor, single);
      if (etcdFloor) addEtcdFloorFields(j, *etcdFloor, single);
      std::string arr = "[";
      for (std::size_t i = 0; i < lines.size(); ++i) arr += (i ? "," : "") + lines[i];
      j.addRaw("sweep", arr + "]");
      // The headline fields at the top level too: those of the highest level.
      addRunFields(j, points.back().keel);
    } else if (f.adapter == "host") {
      runHostMode(io, s, ledger, f, ctx, j);
    } else if (f.backupAt > 0) {
      BackupDuringLoad backup(s.deployment.coordinators.front(), s.baseDir + "/backup",
                              f.coordinator.empty() ? s.baseDir + "/coordinator/data.mdb" : "", f.backupAt,
                              f.duration);
      auto r = runOne(io, s, f, f.mode, f.concurrency, &backup, [&backup] { backup.begin(); });
      auto b = backup.finish(f.duration);
      printRun(stdout, r, ctx);
      printBackupRun(stdout, b);
      addContextFields(j, ctx);
      addRunFields(j, r);
      addBackupRunFields(j, b);
      if (!b.fired || !b.error.empty()) rc = 1;
    } else if (f.scrapeMetrics > 0) {
      rc = runScraped(io, s, f, ctx, j);
    } else {
      auto r = runOne(io, s, f, f.mode, f.concurrency);
      printRun(stdout, r, ctx);
      addContextFields(j, ctx);
      addRunFields(j, r);
      if (!answeredSomething(stderr, r)) rc = 2;
      if (f.compare) {
        auto raw = runOne(io, s, f, "raw2pc", f.concurrency);
        printRun(stdout, raw, ctx);
        if (!answeredSomething(stderr, raw)) rc = 2;
        std::printf("keel / raw2pc: %.2f of the committed transfers per second, p50 %llu vs %llu us\n",
                    raw.committedPerSecond() > 0 ? r.committedPerSecond() / raw.committedPerSecond() : 0.0,
                    (unsigned long long)r.latency.percentile(50), (unsigned long long)raw.latency.percentile(50));
        printCpuComparison(r, raw);
        addComparison(j, r, raw);
      }
      floorAfter();
      if (floor) {
        printFloor(stdout, *floor, f.concurrency == 1 ? &r : nullptr);
        addFloorFields(j, *floor, f.concurrency == 1 ? &r : nullptr);
      }
      if (etcdFloor) {
        printEtcdFloor(stdout, *etcdFloor, f.concurrency == 1 ? &r : nullptr);
        addEtcdFloorFields(j, *etcdFloor, f.concurrency == 1 ? &r : nullptr);
      }
    }
    j.add("loadavg_1m_at_end", loadAverage());
    bool oneClient = f.sweep ? std::find(f.sweepLevels.begin(), f.sweepLevels.end(), 1u) != f.sweepLevels.end()
                             : f.concurrency == 1;
    reportIdlePolling(j, oneClient);
    std::printf("%s\n", j.str().c_str());
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "keel-bench: %s\n", e.getDescription().cStr());
    rc = 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keel-bench: %s\n", e.what());
    rc = 1;
  }
  tearDown(s, f.keep || rc != 0);
  tearDown(ledger, f.keep || rc != 0);
  return rc;
}
