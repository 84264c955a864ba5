// keel-chaos: the bank test under kills, pauses and network faults.
//
//   keel-chaos --seed 7 --duration 120 [--agents 3] [--out DIR]
//   keel-chaos --cluster --seed 7 --duration 120 [--coordinators 3] [--lease-ttl 2]
//   keel-chaos --coordinator HOST:PORT --agent NAME=HOST:PORT ... (a deployment of yours; no faults)
//
// Starts a coordinator and ledger agents on loopback, each agent behind a
// fault-injecting TCP proxy (tools/chaos/fault_proxy.h), opens accounts,
// runs transfers of two and three branches from many client connections,
// and injects faults on a schedule drawn from the seed: SIGKILL + restart
// and SIGSTOP/SIGCONT of the coordinator and of agents, latency, resets,
// blackholes, one-way loss and refused connections between the coordinator
// and each agent, failpoint crashes at random protocol steps, and a slow
// disk (a delay before every group commit). Then it heals everything, waits
// for resolution, checks the bank's invariants (tools/chaos/checker.h) and
// writes report.json and timeline.svg into the output folder. The last line
// is "violations: N"; the exit status is 1 if N > 0.
//
// --adapter postgres: the agents are postgres agents, each on its own
// database of one PostgreSQL server (tools/chaos/pg_host.h), the transfers
// are calls of the bank's declared statements (tools/sql_bank.h, written to
// cluster/bank-statements.toml for --statements), and killing or freezing PostgreSQL
// itself joins the faults.
//
// --adapter host: every agent is a host agent (docs/hosts.md) in front of
// its own keel-host (tools/chaos/host_side.h), sent debits and credits only;
// keel-host is killed, frozen, made to lose answers and to fail calls too,
// and the checker reads the hosts' books and every key's state.
// --adapter mixed: the agents cycle ledger, host, postgres.
//
// --embedded (with --adapter postgres): the postgres agents run inside the
// coordinator's process ([participants] NAME = "embedded:FILE";
// docs/operations.md, "Embedded participants"): no agent processes and no
// proxies, so the faults are the process's — killed, frozen, crashed at a
// coordinator's or an agent's failpoint, a slow disk — and PostgreSQL's.
// After healing the coordinator is stopped and each agent started as a
// keel-agent on its own config file, so the checker reads its branches as
// usual; then the coordinator is started again and read.
//
// --cluster: a coordinator cluster (docs/cluster.md) of --coordinators on a
// 3-member etcd (tools/chaos/etcd_side.h); clients spread over them and
// fail over; coordinators and etcd members are killed and frozen, and a
// coordinator is cut off from etcd; the checker also holds etcd's
// decisions and request fates against the agents, and the report times
// every takeover from its fault.

#include <CLI/CLI.hpp>
#include <kj/async-io.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <deque>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/client.h"
#include "common/tls.h"
#include "tools/chaos/checker.h"
#include "tools/chaos/etcd_side.h"
#include "tools/chaos/fault_proxy.h"
#include "tools/chaos/host_side.h"
#include "tools/chaos/pg_host.h"
#include "tools/chaos/report.h"
#include "tools/bank.h"
#include "tools/chaos/workload.h"
#include "tools/certs.h"
#include "tools/cluster.h"
#include "tools/pg_server.h"
#include "tools/sql_bank.h"

namespace keel::chaos {
namespace {

// Every protocol step a failpoint crash may hit, by process.
const std::vector<std::string> kCoordinatorPoints = {
    "coord.after_seq_assigned", "coord.before_prepare",           "coord.after_prepare",
    "coord.after_votes",        "coord.before_decision_durable",  "coord.after_decision_durable",
    "coord.before_phase2",      "coord.after_phase2",             "coord.before_complete",
    "log.before_group_commit"};
const std::vector<std::string> kAgentPoints = {
    "agent.before_execute",         "agent.after_execute",        "agent.before_prepared_durable",
    "agent.after_prepared_durable", "agent.before_commit_durable", "agent.after_commit_durable",
    "agent.before_rollback_durable", "agent.after_rollback_durable", "log.before_group_commit"};

// Every kind of fault the injector draws; postgres mode adds two.
const std::vector<std::string> kFaultKinds = {"kill",      "pause",         "latency",         "reset",
                                              "blackhole", "loss-to-agent", "loss-from-agent", "refuse",
                                              "failpoint", "slow-disk"};
const std::vector<std::string> kPostgresFaultKinds = {"postgres-kill", "postgres-pause"};
// Host agents' own: their keel-host killed or frozen, losing the answers of
// calls it applied, failing calls it did not apply.
const std::vector<std::string> kHostFaultKinds = {"host-kill", "host-pause", "host-drop", "host-fail"};
// --cluster adds these; its "kill" and "pause" are of agents only (a
// coordinator's are coordinator-kill and coordinator-pause).
const std::vector<std::string> kClusterFaultKinds = {"coordinator-kill", "coordinator-pause", "etcd-kill",
                                                     "etcd-pause", "etcd-partition"};

// --embedded: the agents are inside the coordinator's process (no proxies).
const std::vector<std::string> kEmbeddedFaultKinds = {"kill", "pause", "failpoint", "slow-disk"};

std::vector<std::string> faultKinds(bool postgres, bool host, bool cluster, bool embedded = false) {
  auto k = embedded ? kEmbeddedFaultKinds : kFaultKinds;
  if (postgres) k.insert(k.end(), kPostgresFaultKinds.begin(), kPostgresFaultKinds.end());
  if (host) k.insert(k.end(), kHostFaultKinds.begin(), kHostFaultKinds.end());
  if (cluster) k.insert(k.end(), kClusterFaultKinds.begin(), kClusterFaultKinds.end());
  return k;
}

// --cluster: each kind's share of the draw (0..49; 50..99 go to the agents'
// faults and coordinator failpoints). A forced kind (--require-faults) takes
// a number of its own range, so it runs the same code as a drawn one.
const std::map<std::string, std::pair<std::uint32_t, std::uint32_t>> kClusterRanges = {
    {"coordinator-kill:early", {0, 6}}, {"coordinator-kill:late", {7, 13}}, {"coordinator-pause", {14, 21}},
    {"etcd-kill:leader", {22, 27}},     {"etcd-kill", {28, 33}},            {"etcd-pause", {34, 41}},
    {"etcd-partition", {42, 49}}};

// The run's options; the workload's (seed, accounts, clients, retries)
// are its base.
struct Options : WorkloadOptions {
  std::uint32_t durationS = 60;
  std::uint32_t agents = 3;
  std::uint32_t healTimeoutS = 60;
  std::uint32_t mapSizeMb = 8192;  // long runs write millions of records
  std::string out;
  std::string adapter = "ledger";  // ledger, postgres, host or mixed
  std::string firstFault;  // postgres mode: force the first fault's kind
  Minimums minimums;  // the least a run must have done (the ctests set them)
  std::string requireFaults;  // --require-faults: "all" or kinds, comma-separated
  bool selfCheck = false;
  bool tls = false;  // every link on mutual TLS (throwaway certificates); the checker dials as an operator
  bool faults = true;
  bool cluster = false;            // --cluster: a coordinator cluster on etcd
  bool embedded = false;           // --embedded: postgres agents inside the coordinator's process
  std::uint32_t coordinators = 3;  // --cluster: how many
  std::uint32_t leaseTtlS = 2;     // --cluster: the members' lease TTL
  std::string externalCoordinator;
  std::vector<std::string> externalAgents;  // name=host:port
};

// ------------------------------------------------------------------ faults

// Injects one fault at a time on a schedule drawn from the seed, from its
// own thread (restarts block while a process starts up). With `pg` (the
// postgres mode) PostgreSQL itself is killed or frozen too. Every other fault
// applies to postgres agents unchanged: their failpoints are the same named
// protocol steps, and the slow disk delays their branch log's group commit.
//
// `cover`: kinds that must fire; the first faults are these, one each (a
// kill, a pause and a failpoint once on the coordinator and once on an
// agent), in an order drawn from the seed (after --first-fault, if given),
// then the draw goes on as usual. A fault counts only once it took effect:
// a kill or a pause of a process that is not running is skipped, not
// counted.
//
// With `etcd` (--cluster) half the draw goes to the cluster's own faults:
// coordinators killed (restarted before their lease expired, or once a
// survivor took their work over) or frozen past their lease TTL, etcd
// members killed or frozen (the leader among them), a coordinator cut off
// from etcd past its TTL. One fault at a time, each healed before the next:
// never two etcd members down, and a coordinator is never stopped while
// another one is down. A coordinator that stopped by itself (a lost lease
// is fail-stop) is restarted before the next fault.
//
// The thread lives from start() to finish(), past the end of the schedule:
// it also heals (heal()), so every process it restarted (etcd members,
// PostgreSQL: started with a parent-death signal tied to the starting
// thread) lives until the run is over.
class FaultInjector {
 public:
  FaultInjector(const Options& o, LocalCluster& cluster, std::map<std::string, std::unique_ptr<FaultProxy>>& proxies,
                Timeline& timeline, PgHost* pg, HostSide* hosts, EtcdSide* etcd, std::vector<std::string> cover)
      : o_(o), cluster_(cluster), proxies_(proxies), timeline_(timeline), pg_(pg), hosts_(hosts), etcd_(etcd),
        rng_(o.seed) {
    if (!o.firstFault.empty()) forced_.push_back(o.firstFault);
    std::vector<std::string> rest;
    for (auto& k : cover) {
      if (k == o.firstFault) continue;
      if (etcd_ != nullptr && (k == "kill" || k == "pause")) {
        rest.push_back(k + ":agent");  // a coordinator's are kinds of their own here
      } else if (o.embedded && (k == "kill" || k == "pause")) {
        rest.push_back(k + ":coordinator");  // the agents' process is the coordinator's
      } else if (k == "kill" || k == "pause" || k == "failpoint") {
        rest.push_back(k + ":coordinator");
        rest.push_back(k + ":agent");
      } else if (k == "coordinator-kill") {
        rest.push_back(k + ":early");
        rest.push_back(k + ":late");
      } else if (k == "etcd-kill") {
        rest.push_back(k + ":leader");
      } else {
        rest.push_back(k);
      }
    }
    std::shuffle(rest.begin(), rest.end(), rng_);
    forced_.insert(forced_.end(), rest.begin(), rest.end());
  }
  ~FaultInjector() {
    stop();
    finish();
  }

  void start() {
    thread_ = std::thread([this] {
      run();
      serve();
    });
  }
  // The schedule ends (the fault under way is cut short).
  void stop() {
    stop_ = true;
    std::unique_lock<std::mutex> lk(jobMu_);
    jobCv_.wait(lk, [this] { return serving_ || !thread_.joinable(); });
  }
  // Everything back to normal, on the injector's thread.
  void heal() {
    std::unique_lock<std::mutex> lk(jobMu_);
    job_ = [this] { healAll(); };
    jobCv_.notify_all();
    jobCv_.wait(lk, [this] { return !job_; });
  }
  // The thread ends; what it restarted may go with it (the run is over).
  void finish() {
    {
      std::lock_guard<std::mutex> lk(jobMu_);
      finish_ = true;
    }
    jobCv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  std::map<std::string, std::uint64_t> counts() const {
    std::lock_guard<std::mutex> lk(mu_);
    return counts_;
  }
  // Failpoint faults whose process did die at the failpoint.
  std::uint64_t failpointsReached() const {
    std::lock_guard<std::mutex> lk(mu_);
    return failpointsReached_;
  }
  // --cluster: every SIGKILL, SIGSTOP or etcd cut of a coordinator, for
  // timing takeovers; coordinators found stopped by themselves and
  // restarted; pauses and cuts past the TTL that did not stop theirs.
  std::vector<CoordinatorFault> coordinatorFaults() const {
    std::lock_guard<std::mutex> lk(mu_);
    return coordinatorFaults_;
  }
  std::uint64_t restartedAfterStop() const {
    std::lock_guard<std::mutex> lk(mu_);
    return restartedAfterStop_;
  }
  std::uint64_t keptRunning() const {
    std::lock_guard<std::mutex> lk(mu_);
    return keptRunning_;
  }

 private:
  bool sleepFor(std::chrono::milliseconds d) {
    auto until = std::chrono::steady_clock::now() + d;
    while (!stop_ && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return !stop_;
  }
  std::uint32_t between(std::uint32_t lo, std::uint32_t hi) { return lo + std::uint32_t(rng_() % (hi - lo + 1)); }
  const std::string& pick(const std::vector<std::string>& v) { return v[rng_() % v.size()]; }

  bool restartAgent(const std::string& name, const std::string& failpoints) {
    try {
      cluster_.startAgent(name, failpoints);
      return true;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "keel-chaos: restarting %s: %s\n", name.c_str(), e.what());
      return false;
    }
  }
  void healPostgres() {
    try {
      pg_->heal();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "keel-chaos: restarting PostgreSQL: %s\n", e.what());
    }
  }
  bool restartCoordinator(const std::string& failpoints, int i = 0) {
    try {
      cluster_.startCoordinator(failpoints, i);
      return true;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "keel-chaos: restarting %s: %s\n", LocalCluster::coordinatorName(i).c_str(), e.what());
      return false;
    }
  }

  // After the schedule: runs heal() requests until finish().
  void serve() {
    std::unique_lock<std::mutex> lk(jobMu_);
    serving_ = true;
    jobCv_.notify_all();
    for (;;) {
      jobCv_.wait(lk, [this] { return finish_ || bool(job_); });
      if (!job_) return;
      auto job = job_;
      lk.unlock();
      job();
      lk.lock();
      job_ = nullptr;
      jobCv_.notify_all();
    }
  }

  // Everything back to normal: proxies healed, paused processes resumed,
  // dead ones restarted clean; in a cluster etcd first (the coordinators
  // need it to start).
  void healAll() {
    if (pg_ != nullptr) healPostgres();  // before the agents: they need it to start
    if (hosts_ != nullptr) hosts_->heal();
    if (etcd_ != nullptr) etcd_->heal();
    for (auto& [n, p] : proxies_) p->heal();
    for (auto& n : cluster_.agentNames()) {
      if (!cluster_.embedded(n) && cluster_.agentRunning(n)) cluster_.killAgent(n, SIGCONT);
    }
    for (int i = 0; i < cluster_.coordinatorCount(); ++i) {
      if (cluster_.coordinatorRunning(i)) cluster_.killCoordinator(SIGCONT, i);
    }
    for (auto& n : cluster_.agentNames()) {
      if (!cluster_.embedded(n) && !cluster_.agentRunning(n)) restartAgent(n, "");
    }
    for (int i = 0; i < cluster_.coordinatorCount(); ++i) {
      if (!cluster_.coordinatorRunning(i)) restartCoordinator("", i);
    }
  }
  // A fault that could not take effect (its process was not running, or
  // would not start with the failpoint): in the log, not in the counts.
  void skipped(const std::string& kind, const std::string& target, const std::string& why = "it was not running") {
    std::fprintf(stderr, "keel-chaos: %s of %s skipped: %s\n", kind.c_str(), target.c_str(), why.c_str());
  }

  void run() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o_.durationS);
    // A quiet start so the first seconds show the undisturbed rate.
    if (!sleepFor(std::chrono::milliseconds(between(1000, 2000)))) return;
    while (!stop_ && std::chrono::steady_clock::now() < deadline) {
      inject();
      if (!sleepFor(std::chrono::milliseconds(between(300, 1500)))) return;
    }
  }

  void record(const std::string& kind, const std::string& target, Micros start, Micros end) {
    timeline_.addFault(kind, target, start, end);
    std::lock_guard<std::mutex> lk(mu_);
    ++counts_[kind];
  }

  // Postgres mode: 10% of faults kill PostgreSQL, 5% freeze it; false if
  // this draw is for the other faults. Drawn only in postgres mode, so the
  // ledger schedule of a seed stays what it was.
  bool injectPostgres(const std::string& forced) {
    if (!forced.empty() && forced != "postgres-kill" && forced != "postgres-pause") return false;
    std::uint32_t kind = forced == "postgres-kill" ? 0 : forced == "postgres-pause" ? 10 : between(0, 99);
    Micros t0 = wallMicros();
    if (kind < 10) {  // a crash: SIGKILL of the postmaster or an immediate shutdown, restart after a moment
      bool sigkill = rng_() % 2 == 0;
      try {
        pg_->crash(sigkill);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "keel-chaos: killing PostgreSQL: %s\n", e.what());
      }
      sleepFor(std::chrono::milliseconds(between(0, 1000)));
      healPostgres();
      record("postgres-kill", sigkill ? "postgres SIGKILL" : "postgres immediate shutdown", t0, wallMicros());
      return true;
    }
    if (kind < 15) {  // every server process stopped: connections open, nothing answers
      auto hold = std::chrono::milliseconds(between(200, 2000));
      pg_->pause();
      sleepFor(hold);
      pg_->resume();
      record("postgres-pause", "postgres", t0, wallMicros());
      return true;
    }
    return false;
  }

  // Host agents: a quarter of the draws go to their keel-hosts (8% killed,
  // 6% frozen, 6% losing answers, 5% failing calls), each on one host drawn;
  // false if this draw is for the other faults. Drawn only with host agents,
  // so the schedules of the other adapters stay what they were.
  bool injectHost(const std::string& forced) {
    static const std::map<std::string, std::pair<std::uint32_t, std::uint32_t>> ranges = {
        {"host-kill", {0, 7}}, {"host-pause", {8, 13}}, {"host-drop", {14, 19}}, {"host-fail", {20, 24}}};
    auto range = ranges.find(forced);
    if (!forced.empty() && range == ranges.end()) return false;
    std::uint32_t k = forced.empty() ? between(0, 99) : between(range->second.first, range->second.second);
    if (k >= 25) return false;
    const std::string& agent = pick(hosts_->agents());
    std::string target = "keel-host of " + agent;
    auto hold = std::chrono::milliseconds(between(200, 2000));
    Micros t0 = wallMicros();
    if (k < 8) {  // SIGKILL, restarted after a moment: what it made durable stays, its connections break
      bool serving = hosts_->kill(agent);
      sleepFor(std::chrono::milliseconds(between(0, 1500)));
      bool back = hosts_->restart(agent);
      serving && back ? record("host-kill", target, t0, wallMicros()) : skipped("host-kill", target);
    } else if (k < 14) {  // SIGSTOP: connections open, nothing answers (calls time out)
      bool paused = hosts_->pause(agent);
      sleepFor(hold);
      hosts_->resume(agent);
      paused ? record("host-pause", target, t0, wallMicros()) : skipped("host-pause", target);
    } else {  // host-drop: calls applied, their answers lost; host-fail: calls answered 500, not applied
      bool drop = k < 20;
      const char* kind = drop ? "host-drop" : "host-fail";
      const char* member = drop ? "drop_answers" : "fail_rate";
      std::uint32_t pct = between(20, 80);
      char on[64];
      std::snprintf(on, sizeof on, "{\"%s\":%u.%02u}", member, pct / 100, pct % 100);
      bool set = hosts_->setFaults(agent, on);
      sleepFor(hold);
      bool cleared = hosts_->setFaults(agent, std::string("{\"") + member + "\":0}");
      set&& cleared ? record(kind, target + " (" + std::to_string(pct) + "% of calls)", t0, wallMicros())
                    : skipped(kind, target, "its fault switch could not be set");
    }
    return true;
  }

  // A forced kind (with its target, for kills, pauses and failpoints) takes
  // a number of its own range of the draw, so it runs the same code as a
  // drawn one.
  std::uint32_t numberFor(const std::string& kind) {
    static const std::map<std::string, std::pair<std::uint32_t, std::uint32_t>> ranges = {
        {"kill:coordinator", {0, 9}},       {"kill:agent", {10, 21}},     {"pause:coordinator", {22, 27}},
        {"pause:agent", {28, 37}},          {"latency", {38, 47}},        {"reset", {48, 55}},
        {"blackhole", {56, 63}},            {"loss-to-agent", {64, 71}},  {"loss-from-agent", {64, 71}},
        {"refuse", {72, 77}},               {"failpoint:coordinator", {78, 85}},
        {"failpoint:agent", {86, 93}},      {"slow-disk", {94, 99}}};
    auto r = ranges.at(kind);
    return between(r.first, r.second);
  }

  void inject() {
    std::string forced;
    if (!forced_.empty()) {
      forced = forced_.front();
      forced_.pop_front();
    }
    if (pg_ != nullptr && injectPostgres(forced)) return;
    if (hosts_ != nullptr && injectHost(forced)) return;
    if (o_.embedded) {
      injectEmbedded(forced);
      return;
    }
    std::optional<std::uint32_t> drawn;  // --cluster: the number drawn for the faults below
    int coord = 0;                       // the coordinator of a coordinator failpoint
    if (etcd_ != nullptr) {
      restartStopped();
      auto range = kClusterRanges.find(forced);
      std::uint32_t k = range != kClusterRanges.end() ? between(range->second.first, range->second.second)
                        : forced.empty()               ? between(0, 99)
                                                       : 100;
      if (k < 50) {
        injectCluster(k);
        restartStopped();
        return;
      }
      if (k < 100) drawn = agentFaultNumber(k - 50);
      coord = int(rng_() % std::uint64_t(cluster_.coordinatorCount()));
    }
    const auto& agents = cluster_.agentNames();
    const std::string& agent = pick(agents);
    std::uint32_t kind = drawn ? *drawn : forced.empty() ? between(0, 99) : numberFor(forced);
    auto hold = std::chrono::milliseconds(between(200, 2000));
    Micros t0 = wallMicros();
    if (kind < 10) {  // coordinator SIGKILL, restart after a moment
      bool running = cluster_.coordinatorRunning();
      cluster_.killCoordinator(SIGKILL);
      sleepFor(std::chrono::milliseconds(between(0, 500)));
      restartCoordinator("");
      running ? record("kill", "coordinator", t0, wallMicros()) : skipped("kill", "coordinator");
    } else if (kind < 22) {  // agent SIGKILL
      bool running = cluster_.agentRunning(agent);
      cluster_.killAgent(agent, SIGKILL);
      sleepFor(std::chrono::milliseconds(between(0, 1000)));
      restartAgent(agent, "");
      running ? record("kill", agent, t0, wallMicros()) : skipped("kill", agent);
    } else if (kind < 28) {  // coordinator pause
      bool running = cluster_.coordinatorRunning();
      cluster_.killCoordinator(SIGSTOP);
      sleepFor(hold);
      cluster_.killCoordinator(SIGCONT);
      running ? record("pause", "coordinator", t0, wallMicros()) : skipped("pause", "coordinator");
    } else if (kind < 38) {  // agent pause
      bool running = cluster_.agentRunning(agent);
      cluster_.killAgent(agent, SIGSTOP);
      sleepFor(hold);
      cluster_.killAgent(agent, SIGCONT);
      running ? record("pause", agent, t0, wallMicros()) : skipped("pause", agent);
    } else if (kind < 48) {
      proxies_.at(agent)->setLatency(std::chrono::milliseconds(between(20, 400)));
      sleepFor(hold);
      proxies_.at(agent)->heal();
      record("latency", agent, t0, wallMicros());
    } else if (kind < 56) {
      proxies_.at(agent)->resetAll();
      record("reset", agent, t0, wallMicros());
    } else if (kind < 64) {
      proxies_.at(agent)->setBlackhole(true);
      sleepFor(hold);
      proxies_.at(agent)->heal();
      proxies_.at(agent)->resetAll();  // the stream lost bytes: start clean
      record("blackhole", agent, t0, wallMicros());
    } else if (kind < 72) {
      auto dir = forced == "loss-to-agent"     ? Direction::ClientToUpstream
                 : forced == "loss-from-agent" ? Direction::UpstreamToClient
                 : rng_() % 2                  ? Direction::ClientToUpstream
                                               : Direction::UpstreamToClient;
      proxies_.at(agent)->setDrop(dir, true);
      sleepFor(hold);
      proxies_.at(agent)->heal();
      proxies_.at(agent)->resetAll();
      record(dir == Direction::ClientToUpstream ? "loss-to-agent" : "loss-from-agent", agent, t0, wallMicros());
    } else if (kind < 78) {
      proxies_.at(agent)->setRefuse(true);
      proxies_.at(agent)->resetAll();
      sleepFor(hold);
      proxies_.at(agent)->heal();
      record("refuse", agent, t0, wallMicros());
    } else if (kind < 86) {  // failpoint crash in the coordinator
      // A failpoint may be reached during start-up (recovery re-drives the
      // step): the start then fails, and the crash is the fault.
      std::string point = pick(kCoordinatorPoints);
      if (etcd_ != nullptr && !othersRunning(coord)) {
        skipped("failpoint", nodeName(coord), "another coordinator is down");
        return;
      }
      cluster_.stopCoordinator(coord);
      bool started = restartCoordinator(point + "=1*crash", coord);
      sleepFor(hold);
      bool reached = !cluster_.coordinatorRunning(coord);
      if (!reached) cluster_.stopCoordinator(coord);
      restartCoordinator("", coord);
      recordFailpoint((etcd_ != nullptr ? nodeName(coord) : std::string("coordinator")) + " " + point, reached,
                      started, t0);
    } else if (kind < 94) {  // failpoint crash in an agent
      std::string point = pick(kAgentPoints);
      cluster_.stopAgent(agent);
      bool started = restartAgent(agent, point + "=1*crash");
      sleepFor(hold);
      bool reached = !cluster_.agentRunning(agent);
      if (!reached) cluster_.stopAgent(agent);
      restartAgent(agent, "");
      recordFailpoint(agent + " " + point, reached, started, t0);
    } else {  // slow disk: every group commit of that agent waits
      cluster_.stopAgent(agent);
      bool slowed = restartAgent(agent, "log.before_group_commit=delay(" + std::to_string(between(5, 50)) + ")");
      sleepFor(hold);
      cluster_.stopAgent(agent);
      restartAgent(agent, "");
      slowed ? record("slow-disk", agent, t0, wallMicros()) : skipped("slow-disk", agent);
    }
  }

  // --embedded: the faults of the one process that holds the coordinator
  // and its agents. 25 % SIGKILL + restart, 20 % SIGSTOP/SIGCONT, 20 % a
  // crash at a coordinator's failpoint, 25 % at an agent's, 10 % a slow
  // disk (a delay before every group commit of every log in the process).
  void injectEmbedded(const std::string& forced) {
    static const std::map<std::string, std::pair<std::uint32_t, std::uint32_t>> ranges = {
        {"kill:coordinator", {0, 24}},       {"pause:coordinator", {25, 44}}, {"failpoint:coordinator", {45, 64}},
        {"failpoint:agent", {65, 89}},       {"slow-disk", {90, 99}}};
    auto range = ranges.find(forced);
    std::uint32_t kind = range != ranges.end() ? between(range->second.first, range->second.second) : between(0, 99);
    const std::string target = "coordinator (embedded agents)";
    Micros t0 = wallMicros();
    if (kind < 25) {
      bool running = cluster_.coordinatorRunning();
      cluster_.killCoordinator(SIGKILL);
      sleepFor(std::chrono::milliseconds(between(0, 500)));
      restartCoordinator("");
      running ? record("kill", target, t0, wallMicros()) : skipped("kill", target);
    } else if (kind < 45) {
      bool running = cluster_.coordinatorRunning();
      cluster_.killCoordinator(SIGSTOP);
      sleepFor(std::chrono::milliseconds(between(200, 2000)));
      cluster_.killCoordinator(SIGCONT);
      running ? record("pause", target, t0, wallMicros()) : skipped("pause", target);
    } else if (kind < 90) {
      std::string point = kind < 65 ? pick(kCoordinatorPoints) : pick(kAgentPoints);
      cluster_.stopCoordinator();
      bool started = restartCoordinator(point + "=1*crash");
      sleepFor(std::chrono::milliseconds(between(200, 2000)));
      bool reached = !cluster_.coordinatorRunning();
      if (!reached) cluster_.stopCoordinator();
      restartCoordinator("");
      recordFailpoint(target + " " + point, reached, started, t0);
    } else {
      cluster_.stopCoordinator();
      bool slowed = restartCoordinator("log.before_group_commit=delay(" + std::to_string(between(5, 50)) + ")");
      sleepFor(std::chrono::milliseconds(between(200, 2000)));
      cluster_.stopCoordinator();
      restartCoordinator("");
      slowed ? record("slow-disk", target, t0, wallMicros()) : skipped("slow-disk", target);
    }
  }

  // The process ran with the failpoint armed either way (a restart is a
  // fault too); `reached`: it died there (during start-up if !started).
  void recordFailpoint(const std::string& target, bool reached, bool started, Micros t0) {
    record("failpoint", target + (!reached ? " (not reached)" : started ? " (reached)" : " (reached during start-up)"),
           t0, wallMicros());
    std::lock_guard<std::mutex> lk(mu_);
    failpointsReached_ += reached ? 1 : 0;
  }

  // ---------------------------------------------------------------- --cluster

  static std::string nodeName(int i) { return "node " + std::to_string(i + 1); }

  // --cluster: draws 50..99 are the faults of one coordinator's runs
  // without the coordinator's kill and pause (coordinator-kill and
  // coordinator-pause stand for them), spread evenly over their numbers.
  static std::uint32_t agentFaultNumber(std::uint32_t j) {
    static const std::vector<std::uint32_t> numbers = [] {
      std::vector<std::uint32_t> v;
      for (std::uint32_t n = 10; n < 100; ++n) {
        if (n < 22 || n >= 28) v.push_back(n);
      }
      return v;
    }();
    return numbers[j * numbers.size() / 50];
  }

  bool othersRunning(int c) {
    for (int i = 0; i < cluster_.coordinatorCount(); ++i) {
      if (i != c && !cluster_.coordinatorRunning(i)) return false;
    }
    return true;
  }

  // A coordinator that stopped by itself (fail-stop on a lost lease, or a
  // restart that was refused) serves again before the next fault.
  void restartStopped() {
    for (int i = 0; i < cluster_.coordinatorCount(); ++i) {
      if (cluster_.coordinatorRunning(i)) continue;
      std::fprintf(stderr, "keel-chaos: %s was found stopped; restarting it\n", nodeName(i).c_str());
      if (restartCoordinator("", i)) {
        std::lock_guard<std::mutex> lk(mu_);
        ++restartedAfterStop_;
      }
    }
  }

  void coordinatorDown(int c, Micros t0) {
    std::lock_guard<std::mutex> lk(mu_);
    coordinatorFaults_.push_back(CoordinatorFault{std::uint16_t(c + 1), t0});
  }

  // Where each coordinator's log ends now.
  std::vector<std::uintmax_t> logEnds() {
    std::vector<std::uintmax_t> ends;
    for (int i = 0; i < cluster_.coordinatorCount(); ++i) {
      std::error_code ec;
      auto n = std::filesystem::file_size(cluster_.coordinatorLog(i), ec);
      ends.push_back(ec ? 0 : n);
    }
    return ends;
  }

  // Until a survivor's log, past `ends`, says it finished coordinator c's
  // work (at most `timeout`).
  bool waitTakeover(int c, const std::vector<std::uintmax_t>& ends, std::chrono::milliseconds timeout) {
    std::string needle = "takeover of node " + std::to_string(c + 1) + " (epoch";
    auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      for (int i = 0; i < cluster_.coordinatorCount(); ++i) {
        if (i == c) continue;
        std::ifstream f(cluster_.coordinatorLog(i));
        f.seekg(std::streamoff(ends[std::size_t(i)]));
        for (std::string line; std::getline(f, line);) {
          if (line.find(needle) != std::string::npos && line.find(" done in ") != std::string::npos) return true;
        }
      }
      if (!sleepFor(std::chrono::milliseconds(100))) return false;
    }
    return false;
  }

  // After a pause or a cut longer than its lease TTL coordinator c must
  // stop itself (fail-stop); restarted if it did.
  bool restartIfStopped(int c) {
    bool stopped = cluster_.waitCoordinatorExit(std::chrono::milliseconds(3000), c);
    if (stopped) {
      restartCoordinator("", c);
    } else {
      std::lock_guard<std::mutex> lk(mu_);
      ++keptRunning_;
    }
    return stopped;
  }

  // One of the cluster's faults; k in 0..49 (kClusterRanges).
  void injectCluster(std::uint32_t k) {
    int c = int(rng_() % std::uint64_t(cluster_.coordinatorCount()));
    auto pastTtl = [&](std::uint32_t lo, std::uint32_t hi) {
      return std::chrono::milliseconds(o_.leaseTtlS * 1000 + between(lo, hi));
    };
    Micros t0 = wallMicros();
    if (k < 22 || k >= 42) {
      // A coordinator fault: never while another one is down.
      if (!othersRunning(c) || !cluster_.coordinatorRunning(c)) {
        skipped(k < 14 ? "coordinator-kill" : k < 22 ? "coordinator-pause" : "etcd-partition", nodeName(c),
                "a coordinator is down");
        return;
      }
    }
    if (k < 14) {  // SIGKILL; restarted before its lease expired, or once a survivor took over
      bool early = k < 7;
      auto ends = logEnds();
      cluster_.killCoordinator(SIGKILL, c);
      coordinatorDown(c, t0);
      bool tookOver = false;
      if (early) {
        sleepFor(std::chrono::milliseconds(between(200, 1500)));
      } else {
        tookOver = waitTakeover(c, ends, std::chrono::milliseconds(o_.leaseTtlS * 1000 + 10000));
      }
      restartCoordinator("", c);
      record("coordinator-kill",
             nodeName(c) + (early      ? " (restarted before its lease expired)"
                            : tookOver ? " (restarted once a survivor had taken over)"
                                       : " (restarted; no takeover seen in time)"),
             t0, wallMicros());
    } else if (k < 22) {  // SIGSTOP past the lease TTL: it must stop itself, or be fenced
      cluster_.killCoordinator(SIGSTOP, c);
      coordinatorDown(c, t0);
      sleepFor(pastTtl(500, 3000));
      cluster_.killCoordinator(SIGCONT, c);
      bool stopped = restartIfStopped(c);
      record("coordinator-pause", nodeName(c) + (stopped ? " (stopped itself; restarted)" : " (still running)"), t0,
             wallMicros());
    } else if (k < 42) {  // an etcd member killed or frozen, the leader or any
      etcdMember(k < 34, k < 34 ? k < 28 : k < 38, t0);
    } else {  // coordinator c cut off from etcd past its TTL, the agents still reachable
      etcd_->cut(std::size_t(c));
      coordinatorDown(c, t0);
      sleepFor(pastTtl(500, 2000));
      etcd_->reconnect(std::size_t(c));
      bool stopped = restartIfStopped(c);
      record("etcd-partition", nodeName(c) + (stopped ? " (stopped itself; restarted)" : " (still running)"), t0,
             wallMicros());
    }
  }

  void etcdMember(bool kill, bool leader, Micros t0) {
    auto& e = etcd_->etcd();
    for (std::size_t m = 0; m < e.size(); ++m) {  // one member down at most: the last fault's is back
      if (e.paused(m)) e.resume(m);
      if (e.running(m)) continue;
      try {
        e.restart(m);
      } catch (const std::exception& ex) {
        std::fprintf(stderr, "keel-chaos: restarting etcd member %zu: %s\n", m, ex.what());
        skipped(kill ? "etcd-kill" : "etcd-pause", "etcd", "a member is down");
        return;
      }
    }
    std::size_t any = std::size_t(rng_() % e.size());
    auto hold = std::chrono::milliseconds(between(500, 3000));
    int lead = e.leaderIndex(std::chrono::milliseconds(2000));
    std::size_t m = leader && lead >= 0 ? std::size_t(lead) : any;
    std::string target = "etcd m" + std::to_string(m) + (int(m) == lead ? " (leader)" : "");
    if (kill) {
      e.kill9(m);
      sleepFor(hold);
      try {
        e.restart(m);
      } catch (const std::exception& ex) {
        std::fprintf(stderr, "keel-chaos: restarting etcd member %zu: %s\n", m, ex.what());
      }
      record("etcd-kill", target, t0, wallMicros());
    } else {
      e.pause(m);
      sleepFor(hold);
      e.resume(m);
      record("etcd-pause", target, t0, wallMicros());
    }
  }

  const Options& o_;
  LocalCluster& cluster_;
  std::map<std::string, std::unique_ptr<FaultProxy>>& proxies_;
  Timeline& timeline_;
  PgHost* pg_;  // postgres mode only
  HostSide* hosts_;  // host agents' keel-hosts (--adapter host or mixed) only
  EtcdSide* etcd_;  // --cluster only
  std::mt19937_64 rng_;
  std::deque<std::string> forced_;  // kinds the next faults must be, in order
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::map<std::string, std::uint64_t> counts_;  // GUARDED_BY(mu_)
  std::uint64_t failpointsReached_ = 0;          // GUARDED_BY(mu_)
  std::vector<CoordinatorFault> coordinatorFaults_;  // GUARDED_BY(mu_)
  std::uint64_t restartedAfterStop_ = 0, keptRunning_ = 0;  // GUARDED_BY(mu_)
  // heal() and finish() for the thread once the schedule is over.
  std::mutex jobMu_;
  std::condition_variable jobCv_;
  std::function<void()> job_;  // GUARDED_BY(jobMu_)
  bool serving_ = false;       // GUARDED_BY(jobMu_)
  bool finish_ = false;        // GUARDED_BY(jobMu_)
};

// ------------------------------------------------------------------ collection

kj::Promise<AgentBooks> books(kj::AsyncIoContext& io, const std::string& addr) {
  return AgentClient::connect(io, addr).then([](kj::Own<AgentClient> c) {
    return c->inspect().attach(kj::mv(c)).then([](AgentSnapshot s) {
      AgentBooks b;
      b.agent = s.name;
      for (auto& [n, a] : s.accounts) b.accounts[n] = a;
      b.prepared = s.prepared;
      b.active = s.active;
      return b;
    });
  });
}

// Postgres mode: agent bank-1's database is bank_1.
std::string dbName(const std::string& agent) {
  std::string db = agent;
  for (auto& ch : db) ch = ch == '-' ? '_' : ch;
  return db;
}

// An agent's books: its branch counts from its own log, its accounts from
// its ledger or, for a postgres agent, from its database, with the
// database's own prepared transactions, or, for a host agent, from its
// keel-host, whose holds and pending credits count as held and whose open
// tries as the host's prepared transactions.
AgentBooks readBooks(kj::AsyncIoContext& io, const std::string& name, const std::string& addr, PgHost* pg,
                     const HostSide* hosts) {
  // No address: an embedded agent while the coordinator holds it (its
  // database's side only).
  AgentBooks b;
  b.agent = name;
  if (!addr.empty()) b = books(io, addr).wait(io.waitScope);
  if (hosts != nullptr && hosts->has(name)) {
    b.accounts.clear();
    for (auto& [acct, a] : hosts->books(name).accounts) {
      b.accounts[acct] = AccountRecord{a.balance, a.held + a.incoming, false, {}};
    }
    b.hostPrepared = hosts->openKeys(name);
  } else if (pg != nullptr && pg->has(dbName(name))) {
    b.accounts.clear();
    for (auto& [acct, balance] : pg->balances(dbName(name))) b.accounts[acct].balance = balance;
    b.hostPrepared = pg->prepared(dbName(name));
  }
  return b;
}

std::vector<AgentBranch> allBranches(kj::AsyncIoContext& io, const std::string& name, const std::string& addr) {
  std::vector<AgentBranch> out;
  auto c = AgentClient::connect(io, addr).wait(io.waitScope);
  Xid after{0, 0};
  for (;;) {
    auto req = c->capability().listBranchesRequest();
    req.getAfter().setSeq(after.seq);
    req.getAfter().setBranch(after.branch);
    req.setLimit(5000);
    auto resp = req.send().wait(io.waitScope);
    for (auto b : resp.getBranches()) {
      AgentBranch ab;
      ab.agent = name;
      ab.xid = Xid{b.getXid().getSeq(), b.getXid().getBranch()};
      ab.state = static_cast<BranchStatus>(b.getState());
      ab.tombstone = b.getTombstone();
      out.push_back(ab);
      after = ab.xid;
    }
    if (!resp.getMore()) break;
  }
  return out;
}

// Polls until no coordinator has anything unfinished, no agent holds a
// prepared or active branch and hostSettled() says the host systems hold no
// prepared transaction; returns false on timeout.
bool waitResolved(kj::AsyncIoContext& io, const std::vector<std::string>& coordinators,
                  const std::map<std::string, std::string>& agents, std::chrono::seconds timeout,
                  const std::function<bool()>& hostSettled) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    try {
      bool done = true;
      for (auto& addr : coordinators) {
        auto c = KeelClient::connect(io, addr).wait(io.waitScope);
        done = done && c->info().wait(io.waitScope).unfinished == 0;
      }
      for (auto& [n, a] : agents) {
        auto b = books(io, a).wait(io.waitScope);
        done = done && b.prepared == 0 && b.active == 0;
      }
      if (done && hostSettled()) return true;
    } catch (const kj::Exception&) {
      // not up yet
    } catch (const std::exception&) {
      // PostgreSQL not answering yet
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// What the coordinators' tables say, into in.coordinator: the records of
// every seq in `seqs` at the coordinator of its node (coordinator i has node
// id i + 1; one coordinator has them all), and for every request id the seq
// each coordinator's requests table names. Seqs those tables name join
// `seqs`. Also the coordinators' windows of inconsistency, summed up: the
// count of all, the largest of their p50, p99 and max.
struct Windows {
  std::uint64_t count = 0, p50Us = 0, p99Us = 0, maxUs = 0;
  std::vector<std::string> unreachable;  // coordinators that did not answer (their records are missing)
};
Windows readCoordinators(kj::AsyncIoContext& io, const std::vector<std::string>& coordinators,
                         const std::vector<std::string>& requestIds, std::set<std::uint64_t>& seqs, Input& in,
                         const std::function<void(std::size_t)>& revive) {
  bool cluster = coordinators.size() > 1;
  std::vector<kj::Own<KeelClient>> clients;
  Windows w;
  // A cluster member may stop itself before or while it is read (its lease
  // lost when etcd stalls under the checker's own reads of a long run): it
  // is restarted by `revive`, as a supervisor would, and the read of that
  // part redone (queries change nothing).
  auto withRetry = [&](std::size_t i, const std::function<void(KeelClient&)>& read) {
    for (int attempt = 1;; ++attempt) {
      try {
        read(*clients[i]);
        return;
      } catch (const kj::Exception& e) {
        if (!cluster || attempt == 5) throw;
        std::fprintf(stderr, "keel-chaos: reading %s failed (%s); restarting it if it stopped, and again\n",
                     coordinators[i].c_str(), e.getDescription().cStr());
        revive(i);
        clients[i] = KeelClient::connect(io, coordinators[i]).wait(io.waitScope);
      }
    }
  };
  for (std::size_t i = 0; i < coordinators.size(); ++i) {
    const auto& a = coordinators[i];
    try {
      clients.push_back(KeelClient::connect(io, a).wait(io.waitScope));
    } catch (const kj::Exception&) {
      if (!cluster) throw;
      // Stopped between the healing and now: restarted once, as above.
      revive(i);
      try {
        clients.push_back(KeelClient::connect(io, a).wait(io.waitScope));
      } catch (const kj::Exception& e) {
        w.unreachable.push_back(a + " (" + std::string(e.getDescription().cStr()) + ")");
        clients.push_back(kj::Own<KeelClient>());
      }
    }
  }
  for (std::size_t c = 0; c < clients.size(); ++c) {
    if (clients[c].get() == nullptr) continue;
    withRetry(c, [&](KeelClient& client) {
      auto unfinished = client.info().wait(io.waitScope).unfinished;
      auto st = client.capability().statsRequest().send().wait(io.waitScope).getStats();
      in.coordinator.unfinished += unfinished;
      w.count += st.getCount();
      w.p50Us = std::max(w.p50Us, st.getP50Us());
      w.p99Us = std::max(w.p99Us, st.getP99Us());
      w.maxUs = std::max(w.maxUs, st.getMaxUs());
    });
  }
  for (std::size_t c = 0; c < clients.size(); ++c) {
    if (clients[c].get() == nullptr) continue;
    for (std::size_t i = 0; i < requestIds.size(); i += 256) {
      withRetry(c, [&](KeelClient& client) {
        kj::Vector<kj::Promise<void>> qs;
        for (std::size_t k = i; k < std::min(requestIds.size(), i + 256); ++k) {
          const std::string& id = requestIds[k];
          qs.add(client.queryRequest(id).then([&in, &seqs, id, cluster](std::optional<QueryResult> q) {
            if (!cluster) in.coordinator.requests[id] = q ? q->interaction.seq : 0;
            if (!q) return;
            if (cluster) in.coordinator.requestRows[id].insert(q->interaction.seq);
            seqs.insert(q->interaction.seq);
          }));
        }
        kj::joinPromises(qs.releaseAsArray()).wait(io.waitScope);
      });
    }
  }
  // Each seq from the coordinator of its node.
  std::vector<std::vector<std::uint64_t>> byOwner(clients.size());
  for (std::uint64_t seq : seqs) {
    std::size_t owner = cluster ? std::size_t(seqNode(seq)) - 1 : 0;
    // No coordinator of that node (node 0: a malformed seq), or it is down.
    if (owner >= clients.size() || clients[owner].get() == nullptr) continue;
    byOwner[owner].push_back(seq);
  }
  for (std::size_t c = 0; c < clients.size(); ++c) {
    const auto& list = byOwner[c];
    for (std::size_t i = 0; i < list.size(); i += 256) {
      withRetry(c, [&](KeelClient& client) {
        kj::Vector<kj::Promise<void>> qs;
        for (std::size_t k = i; k < std::min(list.size(), i + 256); ++k) {
          std::uint64_t seq = list[k];
          qs.add(client.query(seq).then([&in, seq](std::optional<QueryResult> q) {
            if (!q) return;
            in.coordinator.interactions[seq] = std::move(q->interaction);
            if (q->rollback) in.coordinator.rollbacks[seq] = std::move(*q->rollback);
          }));
        }
        kj::joinPromises(qs.releaseAsArray()).wait(io.waitScope);
      });
    }
  }
  return w;
}

// --cluster: what the coordinators' logs say about takeovers, timed from
// the injector's coordinator faults: those of the last lease TTL and 10 s
// (a survivor finishes within a TTL and a poll of the fault, and a killed
// coordinator is restarted within a TTL and 10 s); a takeover after none
// followed something else (a fail-stop on etcd trouble, a failpoint crash).
Takeovers readTakeovers(LocalCluster& cluster, const std::vector<CoordinatorFault>& faults, std::uint32_t leaseTtlS) {
  Takeovers t;
  for (int i = 0; i < cluster.coordinatorCount(); ++i) {
    std::ifstream f(cluster.coordinatorLog(i));
    std::stringstream text;
    text << f.rdbuf();
    scanCoordinatorLog(text.str(), t);
  }
  attributeTakeovers(t, faults, Micros(leaseTtlS + 10) * 1'000'000);
  return t;
}

// --cluster --self-check: ABORT planted in etcd for the last interaction a
// client heard committed that moved money and has no decision key (0: none
// could be planted).
std::uint64_t plantContradiction(EtcdSide& etcd, const std::vector<Attempt>& attempts) {
  int tries = 0;
  for (auto a = attempts.rbegin(); a != attempts.rend() && tries < 50; ++a) {
    if (!a->answer || a->answer->outcome != ClientOutcome::Committed || a->answer->seq == 0) continue;
    bool moves = std::any_of(a->ops.begin(), a->ops.end(), [](const Op& op) { return op.kind != OpKind::ReadBalance; });
    if (!moves) continue;
    ++tries;
    if (etcd.plantAbort(a->answer->seq)) return a->answer->seq;
  }
  return 0;
}

int runChaos(Options o) {
  std::filesystem::create_directories(o.out);
  Timeline timeline;
  std::unique_ptr<PgHost> pg;  // postgres agents; outlives the cluster's agents
  std::unique_ptr<HostSide> hosts;  // host agents' keel-hosts; outlive the cluster's agents
  std::map<std::string, AgentKind> kinds;  // every agent's (--adapter mixed: ledger, host, postgres in turn)
  std::unique_ptr<EtcdSide> etcd;  // --cluster; outlives the coordinators
  std::unique_ptr<LocalCluster> cluster;
  std::map<std::string, std::unique_ptr<FaultProxy>> proxies;
  std::map<std::string, std::string> agentAddrs;  // where checkers reach each agent directly
  std::vector<std::string> coordinators;

  if (o.externalCoordinator.empty()) {
    ClusterOptions copts;
    copts.binDir = selfBinDir();
    copts.baseDir = o.out + "/cluster";
    std::filesystem::remove_all(copts.baseDir);
    copts.agents.clear();
    for (std::uint32_t i = 1; i <= o.agents; ++i) {
      std::string name = "bank-" + std::to_string(i);
      copts.agents.push_back(name);
      static const AgentKind kCycle[] = {AgentKind::Ledger, AgentKind::Host, AgentKind::Postgres};
      kinds[name] = o.adapter == "postgres" ? AgentKind::Postgres
                    : o.adapter == "host"   ? AgentKind::Host
                    : o.adapter == "mixed"  ? kCycle[(i - 1) % 3]
                                            : AgentKind::Ledger;
    }
    copts.coordinatorExtraToml = "call_timeout_ms = 1000\nmap_size_mb = " + std::to_string(o.mapSizeMb) + "\n";
    copts.agentExtraArgs = {"--map-size-mb", std::to_string(o.mapSizeMb)};
    copts.agentInDoubtQueryMs = 3000;
    if (o.embedded) copts.embedded.insert(copts.agents.begin(), copts.agents.end());
    if (o.tls) {
      copts.tlsDir = o.out + "/certs";
      std::vector<std::string> names = copts.agents;
      names.insert(names.end(), {"keel-coordinator", "keel-operator"});
      makeCertificates(copts.tlsDir, names);
      auto me = certificateFiles(copts.tlsDir, "keel-operator");
      installClientTls(me.ca, me.cert, me.key);
    }
    if (o.cluster) {
      // etcd's folder goes with it at the end (its logs are copied beside
      // the others first); the prefix is the run's own.
      etcd = std::make_unique<EtcdSide>(o.out, o.coordinators, o.leaseTtlS, "/keel-chaos-" + std::to_string(o.seed));
      copts.coordinators = int(o.coordinators);
      for (std::uint32_t i = 0; i < o.coordinators; ++i) copts.clusterTomlFor[int(i)] = etcd->clusterToml(i);
    }
    cluster = std::make_unique<LocalCluster>(copts);
    if (o.selfCheck) cluster->setAgentArgs(copts.agents[0], {"--debug-break", "commit-on-rollback"});
    auto ofKind = [&](AgentKind k) {
      std::vector<std::string> out;
      for (auto& a : copts.agents) {
        if (kinds[a] == k) out.push_back(a);
      }
      return out;
    };
    if (auto pgAgents = ofKind(AgentKind::Postgres); !pgAgents.empty()) {
      std::vector<std::string> dbs;
      for (auto& a : pgAgents) dbs.push_back(dbName(a));
      pg = std::make_unique<PgHost>(dbs, o.concurrency);
      pg->start();
      std::string statements = bank::writeStatementsFile(copts.baseDir);
      for (auto& a : pgAgents) {
        test::pgQuery(pg->connString(dbName(a)), sqlbank::createAccounts(o.accountsPerAgent, o.opening));
        if (o.embedded) {
          cluster->setEmbeddedConfig(a, bank::postgresAgentToml(a, copts.baseDir + "/" + a, pg->connString(dbName(a)),
                                                                0, o.mapSizeMb));
          continue;
        }
        cluster->setAgentArgs(a, {"--adapter", "postgres", "--postgres", pg->connString(dbName(a)), "--statements",
                                  statements});
      }
    }
    if (auto hostAgents = ofKind(AgentKind::Host); !hostAgents.empty()) {
      // Each keel-host opens the accounts itself (--accounts, --balance).
      hosts = std::make_unique<HostSide>(copts.binDir, copts.baseDir, hostAgents, o.accountsPerAgent, o.opening);
      hosts->start();
      for (auto& a : hostAgents) cluster->setAgentArgs(a, hosts->agentArgs(a));
    }
    for (auto& a : copts.agents) {
      if (!o.embedded) cluster->startAgent(a);
    }
    for (auto& a : copts.agents) {
      if (o.embedded) {
        agentAddrs[a] = "";  // none while the coordinator holds it (see the header)
        continue;
      }
      const std::string& addr = cluster->agentAddress(a);
      auto colon = addr.rfind(':');
      proxies[a] = std::make_unique<FaultProxy>(addr.substr(0, colon), std::stoul(addr.substr(colon + 1)));
      cluster->setParticipantAddress(a, "127.0.0.1:" + std::to_string(proxies[a]->port()));
      agentAddrs[a] = a + "@" + addr;  // over TLS the agent must present its name
    }
    for (int i = 0; i < cluster->coordinatorCount(); ++i) cluster->startCoordinator("", i);
    coordinators = cluster->coordinatorAddresses();
    std::string list;
    for (auto& c : coordinators) list += (list.empty() ? "" : " ") + c;
    std::printf("keel-chaos: seed %llu, %u s, %s %s%s, %u %s agents %s%s%s\n",
                (unsigned long long)o.seed, o.durationS, o.cluster ? "coordinator cluster" : "coordinator",
                list.c_str(), o.cluster ? (" on etcd " + etcd->prefix() + " (lease TTL " + std::to_string(o.leaseTtlS) +
                                           " s)").c_str()
                                        : "",
                o.agents, o.adapter == "mixed" ? "mixed (ledger, host, postgres in turn)" : o.adapter.c_str(),
                o.embedded ? "embedded in the coordinator" : "behind fault proxies", o.tls ? ", mutual TLS on every link" : "",
                o.selfCheck ? ", SELF-CHECK: bank-1 commits what it is told to roll back" : "");
  } else {
    coordinators = {o.externalCoordinator};
    for (auto& spec : o.externalAgents) {
      auto eq = spec.find('=');
      if (eq == std::string::npos) throw std::invalid_argument("--agent wants NAME=HOST:PORT, got " + spec);
      agentAddrs[spec.substr(0, eq)] = spec.substr(0, eq) + "@" + spec.substr(eq + 1);
    }
    o.faults = false;
    std::printf("keel-chaos: seed %llu, %u s against coordinator %s and %zu agents (no fault injection)\n",
                (unsigned long long)o.seed, o.durationS, o.externalCoordinator.c_str(), agentAddrs.size());
  }
  std::vector<std::string> agentNames;
  for (auto& [n, a] : agentAddrs) agentNames.push_back(n);

  auto io = kj::setupAsyncIo();
  // Accounts: one per index on every agent, each with the opening balance
  // (postgres agents: the tables were filled above; host agents: their
  // keel-hosts opened them).
  {
    auto c = KeelClient::connect(io, coordinators[0]).wait(io.waitScope);
    kj::Vector<kj::Promise<SubmitOutcome>> opens;
    for (auto& n : agentNames) {
      if (kinds.count(n) != 0 && kinds[n] != AgentKind::Ledger) continue;
      for (std::uint32_t i = 0; i < o.accountsPerAgent; ++i) {
        opens.add(c->submit({Op{n, OpKind::OpenAccount, "acct-" + std::to_string(i), o.opening}}));
      }
    }
    for (auto& r : kj::joinPromises(opens.releaseAsArray()).wait(io.waitScope)) {
      if (r.outcome != ClientOutcome::Committed) {
        throw std::runtime_error("could not open an account: " + r.reason +
                                 " (against your own deployment, start from empty agents)");
      }
    }
  }
  std::int64_t startTotal = 0;
  std::map<std::string, std::int64_t> startBalances;
  for (auto& [n, a] : agentAddrs) {
    for (auto& [acct, rec] : readBooks(io, n, a, pg.get(), hosts.get()).accounts) {
      startTotal += rec.balance;
      startBalances[n + ":" + acct] = rec.balance;
    }
  }
  std::printf("keel-chaos: %zu accounts, total money %lld\n", agentNames.size() * o.accountsPerAgent,
              (long long)startTotal);

  Micros runStart = wallMicros();
  timeline.start(runStart);
  WorkloadOptions wo = o;
  wo.kinds = kinds;
  Workload workload(wo, io, coordinators, agentNames, timeline);
  std::unique_ptr<FaultInjector> injector;
  if (o.faults) {
    injector = std::make_unique<FaultInjector>(o, *cluster, proxies, timeline, pg.get(), hosts.get(), etcd.get(),
                                               o.minimums.faults);
    injector->start();
  }
  if (etcd) etcd->startSampling();
  // Postgres agents: the lowest balance in their databases, once a second,
  // from a thread of its own (a frozen server would stall the event loop).
  // (A keel-host never lets a balance go below its holds; its books are
  // checked after healing.)
  std::atomic<std::int64_t> pgLowest{0};
  std::atomic<bool> samplerStop{false};
  std::thread pgSampler;
  if (pg) {
    pgSampler = std::thread([&] {
      while (!samplerStop) {
        for (auto& n : agentNames) {
          if (!pg->has(dbName(n))) continue;
          try {
            for (auto& [acct, balance] : pg->balances(dbName(n))) {
              if (balance < pgLowest) pgLowest = balance;
            }
          } catch (const std::exception&) {
            // down or frozen: skip this sample
          }
        }
        for (int i = 0; i < 20 && !samplerStop; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  // Progress once a second, and the lowest balance seen while it runs.
  std::int64_t lowest = 0;
  Micros until = runStart + Micros(o.durationS) * 1'000'000;
  std::function<kj::Promise<void>()> monitor = [&]() -> kj::Promise<void> {
    if (wallMicros() >= until) return kj::READY_NOW;
    return io.provider->getTimer().afterDelay(1 * kj::SECONDS).then([&]() {
      std::printf("  %3llu s  attempted %6zu  committed %6llu  rolled back %5llu  answer lost %4llu  not sent %4llu\n",
                  (unsigned long long)((wallMicros() - runStart) / 1'000'000), workload.attempts().size(),
                  (unsigned long long)workload.committed, (unsigned long long)workload.rolledBack,
                  (unsigned long long)workload.lost, (unsigned long long)workload.notSent);
      std::fflush(stdout);
      kj::Vector<kj::Promise<void>> samples;
      for (auto& [n, a] : agentAddrs) {
        if (a.empty()) continue;  // embedded: its database is sampled above
        samples.add(io.provider->getTimer()
                        .timeoutAfter(300 * kj::MILLISECONDS, books(io, a))
                        .then([&](AgentBooks b) {
                          for (auto& [acct, rec] : b.accounts) lowest = std::min(lowest, rec.balance);
                        })
                        .catch_([](kj::Exception&&) {}));  // paused or restarting: skip this sample
      }
      return kj::joinPromises(samples.releaseAsArray()).then([&]() { return monitor(); });
    });
  };
  auto mon = monitor().eagerlyEvaluate(nullptr);
  workload.run(until).wait(io.waitScope);
  mon.wait(io.waitScope);
  if (injector) injector->stop();
  samplerStop = true;
  if (pgSampler.joinable()) pgSampler.join();
  lowest = std::min({lowest, std::int64_t(pgLowest), workload.lowestRead()});
  Micros loadEnd = wallMicros();

  std::printf("keel-chaos: healing everything, waiting for resolution (at most %u s)\n", o.healTimeoutS);
  Micros healStart = wallMicros();
  if (injector) injector->heal();
  auto hostSettled = [&]() {
    for (auto& n : agentNames) {
      if (pg && pg->has(dbName(n)) && !pg->prepared(dbName(n)).empty()) return false;
      if (hosts && hosts->has(n) && !hosts->openKeys(n).empty()) return false;
    }
    return true;
  };
  std::map<std::string, std::string> reachable;  // agents with an address of their own (not embedded)
  for (auto& [n, a] : agentAddrs) {
    if (!a.empty()) reachable[n] = a;
  }
  bool resolved = waitResolved(io, coordinators, reachable, std::chrono::seconds(o.healTimeoutS), hostSettled);
  Micros resolvedAt = wallMicros();
  if (o.embedded) {
    // The checker reads every agent's branches: the coordinator lets go of
    // their data directories, each runs as a keel-agent on its own config
    // file for the reads below, and the coordinator is started again (by
    // readCoordinators' revive) once they are stopped.
    cluster->stopCoordinator();
    for (auto& [n, a] : agentAddrs) a = n + "@" + cluster->startEmbeddedAsAgent(n);
  }
  std::uint64_t plantedSeq = 0;
  if (etcd) {
    etcd->stopSampling();
    if (o.selfCheck) plantedSeq = plantContradiction(*etcd, workload.attempts());
  }

  // Collect what everyone says.
  Input in;
  in.attempts = std::move(workload.attempts());
  in.startTotal = startTotal;
  in.lowestBalanceSeen = lowest;
  in.startBalances = startBalances;
  // The self-check's break may show as a heuristic outcome (a retried
  // rollback finds the branch it committed): caused on purpose.
  in.heuristicExpected = o.selfCheck;
  std::set<std::uint64_t> seqs;
  for (auto& [n, a] : agentAddrs) {
    auto list = allBranches(io, n, a);
    for (auto& b : list) seqs.insert(b.xid.seq);
    in.branches.insert(in.branches.end(), list.begin(), list.end());
    in.books.push_back(readBooks(io, n, a, pg.get(), hosts.get()));
    if (hosts && hosts->has(n)) in.hostKeys[n] = hosts->keyStates(n);
  }
  if (o.embedded) {
    for (auto& [n, a] : agentAddrs) cluster->stopAgent(n);
    cluster->startCoordinator();
  }
  std::vector<std::string> requestIds;
  for (auto& at : in.attempts) {
    if (at.seq != 0) seqs.insert(at.seq);
    for (auto& t : at.tries) {
      if (t.answer && t.answer->seq != 0) seqs.insert(t.answer->seq);
    }
    if (!at.requestId.empty()) requestIds.push_back(at.requestId);
  }
  if (etcd) {
    in.etcd = etcd->read();
    for (auto& [seq, d] : in.etcd->decisions) seqs.insert(seq);
    for (auto& [id, f] : in.etcd->requests) {
      if (f.seq != 0) seqs.insert(f.seq);
    }
  }
  Windows windows = readCoordinators(io, coordinators, requestIds, seqs, in, [&](std::size_t i) {
    if (!cluster || cluster->coordinatorRunning(int(i))) return;
    try {
      cluster->startCoordinator("", int(i));
    } catch (const std::exception& e) {
      // The next connect fails and says so (unreachable, or the read fails).
      std::fprintf(stderr, "keel-chaos: restarting %s to read it: %s\n", coordinators[i].c_str(), e.what());
    }
  });
  auto violations = check(in);
  for (auto& c : windows.unreachable) {
    violations.push_back(Violation{0, "coordinator " + c + " not reachable after healing: its records are missing",
                                   ViolationKind::Unsettled});
  }
  if (!resolved) {
    violations.push_back(Violation{0, "not resolved within " + std::to_string(o.healTimeoutS) + " s of healing",
                                   ViolationKind::Unsettled});
  }

  Report r;
  r.seed = o.seed;
  r.durationS = o.durationS;
  r.agents = agentNames.size();
  r.adapter = o.adapter;
  for (auto m : workload.mixes()) r.byMix[mixName(m)];
  countAttempts(r, in.attempts, in.coordinator);
  r.notSent = workload.notSent;
  if (injector) {
    r.faults = injector->counts();
    r.failpointsCrashed = injector->failpointsReached();
  }
  r.windowCount = windows.count;
  r.windowP50Us = windows.p50Us;
  r.windowP99Us = windows.p99Us;
  r.windowMaxUs = windows.maxUs;
  if (etcd) {
    Report::Cluster c;
    c.coordinators = coordinators.size();
    c.etcdMembers = etcd->etcd().size();
    c.leaseTtlS = o.leaseTtlS;
    c.prefix = etcd->prefix();
    c.takeovers = readTakeovers(*cluster, injector ? injector->coordinatorFaults() : std::vector<CoordinatorFault>{},
                                o.leaseTtlS);
    if (injector) {
      c.restartedAfterStop = injector->restartedAfterStop();
      c.pausedKeptRunning = injector->keptRunning();
    }
    c.decisionsSeen = in.etcd->decisions.size();
    c.decisionsLeft = etcd->decisionsLeft();
    c.requestFates = in.etcd->requests.size();
    r.cluster = std::move(c);
  }
  r.resolutionMs = (resolvedAt - healStart) / 1000;
  r.resolved = resolved;
  r.loadSeconds = double(loadEnd - runStart) / 1e6;
  r.violations = violations;
  r.selfCheck = o.selfCheck;
  // No passing on empty work: something committed, and a run that injects
  // faults had at least one take effect.
  o.minimums.committed = std::max<std::uint64_t>(o.minimums.committed, 1);
  if (injector) o.minimums.anyFaults = std::max<std::uint64_t>(o.minimums.anyFaults, 1);
  r.unmet = unmetMinimums(r, o.minimums);
  SelfCheckVerdict verdict;
  if (o.selfCheck && etcd && plantedSeq == 0) {
    verdict = {false, "no ABORT could be planted in etcd: no interaction heard committed without a decision key"};
    r.selfCheckVerdict = "FAILED: " + verdict.why;
  } else if (o.selfCheck) {
    verdict = judgeSelfCheck(violations, plantedSeq);
    r.selfCheckVerdict = std::string(verdict.passed ? "PASSED: " : "FAILED: ") + verdict.why;
  }
  writeReport(r, timeline, o.out);
  std::printf("%s", textReport(r).c_str());
  std::printf("keel-chaos: report.json and timeline.svg in %s\n", o.out.c_str());
  if (cluster) cluster->stopAll();
  if (injector) injector->finish();
  if (etcd) etcd->keepLogs(o.out + "/cluster");
  if (pg) {
    // The server's folder goes with it: keep its log beside the others.
    std::error_code ec;
    std::filesystem::copy_file(pg->logFile(), o.out + "/cluster/postgres.log",
                               std::filesystem::copy_options::overwrite_existing, ec);
  }
  // Exit status: the self-check passes (0) only on its planted violation;
  // a run passes on no violation. Either way every minimum must be met
  // (else 3: the run did too little to say anything).
  for (const auto& u : r.unmet) std::printf("keel-chaos: minimum not met: %s\n", u.c_str());
  if (o.selfCheck) std::printf("keel-chaos: self-check %s\n", r.selfCheckVerdict.c_str());
  std::printf("violations: %zu\n", violations.size());
  if (o.selfCheck) return !verdict.passed ? 1 : r.unmet.empty() ? 0 : 3;
  return !violations.empty() ? 1 : r.unmet.empty() ? 0 : 3;
}

}  // namespace
}  // namespace keel::chaos

int main(int argc, char** argv) {
  keel::chaos::Options o;
  CLI::App app{"keel-chaos: the bank test under kills, pauses and network faults"};
  app.add_option("--seed", o.seed, "seed of the fault schedule and the workload")->capture_default_str();
  app.add_option("--duration", o.durationS, "seconds of load and faults")->capture_default_str()->check(CLI::Range(1u, 86400u));
  app.add_option("--agents", o.agents, "ledger agents to start (>= 3 for three-branch interactions)")
      ->capture_default_str()
      ->check(CLI::Range(2u, 16u));
  app.add_option("--accounts", o.accountsPerAgent, "accounts per agent (--adapter postgres: 1000 unless given)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100000u));
  app.add_option("--connections", o.connections, "client connections")->capture_default_str()->check(CLI::Range(1u, 256u));
  app.add_option("--concurrency", o.concurrency, "interactions in flight")->capture_default_str()->check(CLI::Range(1u, 4096u));
  app.add_option("--heal-timeout", o.healTimeoutS, "seconds allowed for resolution after healing")->capture_default_str();
  app.add_option("--out", o.out, "output folder (default chaos-out/seed-N)");
  app.add_option("--map-size-mb", o.mapSizeMb, "LMDB map size of every process (long runs write a lot)")
      ->capture_default_str()
      ->check(CLI::Range(16u, 1u << 20));
  app.add_flag("--tls", o.tls, "every link on mutual TLS (throwaway certificates in OUT/certs; docs/security.md)");
  app.add_flag("--self-check", o.selfCheck,
               "break the protocol on purpose (an agent commits what it is told to roll back): must report violations");
  app.add_flag("!--no-faults", o.faults, "run the workload and the checks without injecting faults");
  app.add_option("--adapter", o.adapter,
                 "agents to start: ledger, postgres (one PostgreSQL server, a database per agent; "
                 "PostgreSQL is killed and frozen too), host (host agents, each in front of its own keel-host, "
                 "which is killed, frozen, made to lose answers and to fail calls too) or mixed (ledger, host, "
                 "postgres in turn; at least 3 agents)")
      ->capture_default_str()
      ->check(CLI::IsMember({"ledger", "postgres", "host", "mixed"}));
  app.add_option("--first-fault", o.firstFault,
                 "--adapter postgres or mixed: make the first fault this one (then as drawn)")
      ->check(CLI::IsMember({"postgres-kill", "postgres-pause"}));
  app.add_option("--retry-for", o.retryForMs,
                 "milliseconds a request whose answer was lost is retried with the same request id")
      ->capture_default_str()
      ->check(CLI::Range(0u, 600000u));
  app.add_option("--min-committed", o.minimums.committed,
                 "fail (exit 3) unless at least this many interactions were answered committed")
      ->capture_default_str();
  app.add_option("--min-rolled-back", o.minimums.rolledBack,
                 "fail (exit 3) unless at least this many interactions were answered rolled back")
      ->capture_default_str();
  app.add_option("--min-per-kind", o.minimums.perKind,
                 "fail (exit 3) unless every kind of the mix got at least this many answers")
      ->capture_default_str();
  app.add_option("--min-retried", o.minimums.retried,
                 "fail (exit 3) unless at least this many interactions were retried with their request id after a "
                 "lost answer")
      ->capture_default_str();
  app.add_option("--require-faults", o.requireFaults,
                 "fault kinds that must fire (comma-separated, or 'all' for every kind this run draws, or 'none'): "
                 "the first faults are these, one each, and the run fails (exit 3) if one never took effect; "
                 "--cluster requires coordinator-kill,etcd-kill unless told otherwise");
  app.add_flag("--cluster", o.cluster,
               "a coordinator cluster on a 3-member etcd: coordinators and etcd members are killed, frozen and cut "
               "off too, and etcd's decisions are checked against the agents (docs/chaos.md, \"--cluster\")");
  app.add_option("--coordinators", o.coordinators, "--cluster: coordinators (node ids 1..N)")
      ->capture_default_str()
      ->check(CLI::Range(2u, 8u));
  app.add_option("--lease-ttl", o.leaseTtlS, "--cluster: the coordinators' lease TTL in seconds (lease_ttl_s)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 60u));
  app.add_option("--min-takeovers", o.minimums.takeovers,
                 "--cluster: fail (exit 3) unless survivors finished at least this many dead coordinators' work")
      ->capture_default_str();
  app.add_flag("--embedded", o.embedded,
               "--adapter postgres: the agents run inside the coordinator's process (docs/chaos.md, \"--embedded\")");
  app.add_option("--coordinator", o.externalCoordinator, "use this running coordinator (no processes started)");
  app.add_option("--agent", o.externalAgents, "NAME=HOST:PORT of a running agent (with --coordinator)");
  CLI11_PARSE(app, argc, argv);
  if (o.out.empty()) o.out = "chaos-out/seed-" + std::to_string(o.seed);
  if (!o.externalCoordinator.empty() && o.externalAgents.size() < 2) {
    std::fprintf(stderr, "keel-chaos: --coordinator needs at least two --agent NAME=HOST:PORT\n");
    return 2;
  }
  if (o.connections > o.concurrency) o.connections = o.concurrency;
  // On PostgreSQL transfers that share an account wait for each other's row
  // locks: the load spreads over many accounts, and its hot transfers
  // (a few accounts, workload.cc) are the contention on purpose.
  bool withPostgres = o.adapter == "postgres" || o.adapter == "mixed";
  bool withHosts = o.adapter == "host" || o.adapter == "mixed";
  if (withPostgres && app.count("--accounts") == 0) o.accountsPerAgent = 1000;
  if (o.adapter != "ledger" && !o.externalCoordinator.empty()) {
    std::fprintf(stderr, "keel-chaos: --adapter %s starts its own cluster; against your own deployment the "
                         "agents are whatever you run\n", o.adapter.c_str());
    return 2;
  }
  if (o.adapter != "ledger" && o.selfCheck) {
    // The self-check relies on the ledger agent's --debug-break (commit what
    // it is told to roll back); postgres and host agents have no such switch.
    std::fprintf(stderr, "keel-chaos: --self-check breaks a ledger agent on purpose (bank-1's --debug-break); "
                         "--adapter %s has no such switch: run it with --adapter ledger\n", o.adapter.c_str());
    return 2;
  }
  if (o.adapter == "mixed") {
    if (app.count("--agents") == 0) o.agents = 3;
    if (o.agents < 3) {
      std::fprintf(stderr, "keel-chaos: --adapter mixed needs at least 3 agents (one ledger, one host, one postgres "
                           "agent; got --agents %u)\n", o.agents);
      return 2;
    }
  }
  if (o.cluster && (o.adapter != "ledger" || !o.externalCoordinator.empty())) {
    std::fprintf(stderr, "keel-chaos: --cluster starts its own coordinators, etcd and ledger agents (not with "
                         "--adapter %s or --coordinator)\n", o.adapter == "ledger" ? "postgres, host, mixed" : o.adapter.c_str());
    return 2;
  }
  if (o.embedded && (o.adapter != "postgres" || o.cluster || o.tls || !o.externalCoordinator.empty())) {
    std::fprintf(stderr, "keel-chaos: --embedded runs postgres agents inside one coordinator: --adapter postgres, "
                         "and not with --cluster, --tls or --coordinator\n");
    return 2;
  }
  if (o.cluster && o.requireFaults.empty() && o.faults) o.requireFaults = "coordinator-kill,etcd-kill";
  if (o.requireFaults == "none") o.requireFaults.clear();
  if (!o.firstFault.empty() && !withPostgres) {
    std::fprintf(stderr, "keel-chaos: --first-fault %s needs --adapter postgres or mixed\n", o.firstFault.c_str());
    return 2;
  }
  if (!o.requireFaults.empty()) {
    if (!o.externalCoordinator.empty() || !o.faults) {
      std::fprintf(stderr, "keel-chaos: --require-faults needs a run that injects faults (not --no-faults, not "
                           "--coordinator)\n");
      return 2;
    }
    auto drawn = keel::chaos::faultKinds(withPostgres, withHosts, o.cluster, o.embedded);
    if (o.requireFaults == "all") {
      o.minimums.faults = drawn;
    } else {
      std::stringstream list(o.requireFaults);
      for (std::string k; std::getline(list, k, ',');) {
        if (std::find(drawn.begin(), drawn.end(), k) == drawn.end()) {
          std::fprintf(stderr, "keel-chaos: --require-faults: '%s' is not a fault this run draws\n", k.c_str());
          return 2;
        }
        o.minimums.faults.push_back(k);
      }
    }
  }
  try {
    return keel::chaos::runChaos(o);
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "keel-chaos: %s\nviolations: unknown (the run did not complete)\n", e.getDescription().cStr());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keel-chaos: %s\nviolations: unknown (the run did not complete)\n", e.what());
  }
  return 2;
}
