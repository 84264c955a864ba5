// keel-chaos: the bank test under kills, pauses and network faults.
//
//   keel-chaos --seed 7 --duration 120 [--agents 3] [--out DIR]
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
// are guarded SQL (tools/sql_bank.h), and killing or freezing PostgreSQL
// itself joins the faults.

#include <CLI/CLI.hpp>
#include <kj/async-io.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <deque>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/client.h"
#include "tools/chaos/checker.h"
#include "tools/chaos/fault_proxy.h"
#include "tools/chaos/pg_host.h"
#include "tools/chaos/report.h"
#include "tools/chaos/workload.h"
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

std::vector<std::string> faultKinds(bool postgres) {
  auto k = kFaultKinds;
  if (postgres) k.insert(k.end(), kPostgresFaultKinds.begin(), kPostgresFaultKinds.end());
  return k;
}

// The run's options; the workload's (seed, accounts, clients, retries)
// are its base.
struct Options : WorkloadOptions {
  std::uint32_t durationS = 60;
  std::uint32_t agents = 3;
  std::uint32_t healTimeoutS = 60;
  std::uint32_t mapSizeMb = 8192;  // long runs write millions of records
  std::string out;
  std::string adapter = "ledger";
  std::string firstFault;  // postgres mode: force the first fault's kind
  Minimums minimums;  // the least a run must have done (the ctests set them)
  std::string requireFaults;  // --require-faults: "all" or kinds, comma-separated
  bool selfCheck = false;
  bool faults = true;
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
class FaultInjector {
 public:
  FaultInjector(const Options& o, LocalCluster& cluster, std::map<std::string, std::unique_ptr<FaultProxy>>& proxies,
                Timeline& timeline, PgHost* pg, std::vector<std::string> cover)
      : o_(o), cluster_(cluster), proxies_(proxies), timeline_(timeline), pg_(pg), rng_(o.seed) {
    if (!o.firstFault.empty()) forced_.push_back(o.firstFault);
    std::vector<std::string> rest;
    for (auto& k : cover) {
      if (k == o.firstFault) continue;
      if (k == "kill" || k == "pause" || k == "failpoint") {
        rest.push_back(k + ":coordinator");
        rest.push_back(k + ":agent");
      } else {
        rest.push_back(k);
      }
    }
    std::shuffle(rest.begin(), rest.end(), rng_);
    forced_.insert(forced_.end(), rest.begin(), rest.end());
  }

  void start() {
    thread_ = std::thread([this] { run(); });
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  // Everything back to normal: proxies healed, paused processes resumed,
  // dead ones restarted clean.
  void healAll() {
    if (pg_ != nullptr) healPostgres();  // before the agents: they need it to start
    for (auto& [n, p] : proxies_) p->heal();
    for (auto& n : cluster_.agentNames()) {
      if (cluster_.agentRunning(n)) cluster_.killAgent(n, SIGCONT);
    }
    if (cluster_.coordinatorRunning()) cluster_.killCoordinator(SIGCONT);
    for (auto& n : cluster_.agentNames()) {
      if (!cluster_.agentRunning(n)) restartAgent(n, "");
    }
    if (!cluster_.coordinatorRunning()) restartCoordinator("");
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
  bool restartCoordinator(const std::string& failpoints) {
    try {
      cluster_.startCoordinator(failpoints);
      return true;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "keel-chaos: restarting the coordinator: %s\n", e.what());
      return false;
    }
  }
  // A fault that could not take effect (its process was not running, or
  // would not start with the failpoint): in the log, not in the counts.
  void skipped(const std::string& kind, const std::string& target) {
    std::fprintf(stderr, "keel-chaos: %s of %s skipped: it was not running\n", kind.c_str(), target.c_str());
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
    const auto& agents = cluster_.agentNames();
    const std::string& agent = pick(agents);
    std::uint32_t kind = forced.empty() ? between(0, 99) : numberFor(forced);
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
      cluster_.stopCoordinator();
      bool started = restartCoordinator(point + "=1*crash");
      sleepFor(hold);
      bool reached = !cluster_.coordinatorRunning();
      if (!reached) cluster_.stopCoordinator();
      restartCoordinator("");
      recordFailpoint("coordinator " + point, reached, started, t0);
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

  // The process ran with the failpoint armed either way (a restart is a
  // fault too); `reached`: it died there (during start-up if !started).
  void recordFailpoint(const std::string& target, bool reached, bool started, Micros t0) {
    record("failpoint", target + (!reached ? " (not reached)" : started ? " (reached)" : " (reached during start-up)"),
           t0, wallMicros());
    std::lock_guard<std::mutex> lk(mu_);
    failpointsReached_ += reached ? 1 : 0;
  }

  const Options& o_;
  LocalCluster& cluster_;
  std::map<std::string, std::unique_ptr<FaultProxy>>& proxies_;
  Timeline& timeline_;
  PgHost* pg_;  // postgres mode only
  std::mt19937_64 rng_;
  std::deque<std::string> forced_;  // kinds the next faults must be, in order
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::map<std::string, std::uint64_t> counts_;  // GUARDED_BY(mu_)
  std::uint64_t failpointsReached_ = 0;          // GUARDED_BY(mu_)
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
// its ledger or, in postgres mode, from its database, with the database's
// own prepared transactions.
AgentBooks readBooks(kj::AsyncIoContext& io, const std::string& name, const std::string& addr, PgHost* pg) {
  auto b = books(io, addr).wait(io.waitScope);
  if (pg != nullptr) {
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

// Polls until the coordinator has nothing unfinished, no agent holds a
// prepared or active branch and hostSettled() says the host systems hold no
// prepared transaction; returns false on timeout.
bool waitResolved(kj::AsyncIoContext& io, const std::string& coordinator,
                  const std::map<std::string, std::string>& agents, std::chrono::seconds timeout,
                  const std::function<bool()>& hostSettled) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    try {
      auto c = KeelClient::connect(io, coordinator).wait(io.waitScope);
      bool done = c->info().wait(io.waitScope).unfinished == 0;
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

int runChaos(Options o) {
  std::filesystem::create_directories(o.out);
  Timeline timeline;
  std::unique_ptr<PgHost> pg;  // postgres mode; outlives the cluster's agents
  std::unique_ptr<LocalCluster> cluster;
  std::map<std::string, std::unique_ptr<FaultProxy>> proxies;
  std::map<std::string, std::string> agentAddrs;  // where checkers reach each agent directly
  std::string coordinator;

  if (o.externalCoordinator.empty()) {
    ClusterOptions copts;
    copts.binDir = selfBinDir();
    copts.baseDir = o.out + "/cluster";
    std::filesystem::remove_all(copts.baseDir);
    copts.agents.clear();
    for (std::uint32_t i = 1; i <= o.agents; ++i) copts.agents.push_back("bank-" + std::to_string(i));
    copts.coordinatorExtraToml = "call_timeout_ms = 1000\nmap_size_mb = " + std::to_string(o.mapSizeMb) + "\n";
    copts.agentExtraArgs = {"--map-size-mb", std::to_string(o.mapSizeMb)};
    copts.agentInDoubtQueryMs = 3000;
    cluster = std::make_unique<LocalCluster>(copts);
    if (o.selfCheck) cluster->setAgentArgs(copts.agents[0], {"--debug-break", "commit-on-rollback"});
    if (o.adapter == "postgres") {
      std::vector<std::string> dbs;
      for (auto& a : copts.agents) dbs.push_back(dbName(a));
      pg = std::make_unique<PgHost>(dbs);
      pg->start();
      for (auto& a : copts.agents) {
        test::pgQuery(pg->connString(dbName(a)), sqlbank::createAccounts(o.accountsPerAgent, o.opening));
        cluster->setAgentArgs(a, {"--adapter", "postgres", "--postgres", pg->connString(dbName(a))});
      }
    }
    for (auto& a : copts.agents) cluster->startAgent(a);
    for (auto& a : copts.agents) {
      const std::string& addr = cluster->agentAddress(a);
      auto colon = addr.rfind(':');
      proxies[a] = std::make_unique<FaultProxy>(addr.substr(0, colon), std::stoul(addr.substr(colon + 1)));
      cluster->setParticipantAddress(a, "127.0.0.1:" + std::to_string(proxies[a]->port()));
      agentAddrs[a] = addr;
    }
    cluster->startCoordinator();
    coordinator = cluster->coordinatorAddress();
    std::printf("keel-chaos: seed %llu, %u s, coordinator %s, %u %s agents behind fault proxies%s\n",
                (unsigned long long)o.seed, o.durationS, coordinator.c_str(), o.agents, o.adapter.c_str(),
                o.selfCheck ? ", SELF-CHECK: bank-1 commits what it is told to roll back" : "");
  } else {
    coordinator = o.externalCoordinator;
    for (auto& spec : o.externalAgents) {
      auto eq = spec.find('=');
      if (eq == std::string::npos) throw std::invalid_argument("--agent wants NAME=HOST:PORT, got " + spec);
      agentAddrs[spec.substr(0, eq)] = spec.substr(eq + 1);
    }
    o.faults = false;
    std::printf("keel-chaos: seed %llu, %u s against coordinator %s and %zu agents (no fault injection)\n",
                (unsigned long long)o.seed, o.durationS, coordinator.c_str(), agentAddrs.size());
  }
  std::vector<std::string> agentNames;
  for (auto& [n, a] : agentAddrs) agentNames.push_back(n);

  auto io = kj::setupAsyncIo();
  // Accounts: one per index on every agent, each with the opening balance
  // (postgres mode: the tables were filled above).
  if (!pg) {
    auto c = KeelClient::connect(io, coordinator).wait(io.waitScope);
    kj::Vector<kj::Promise<SubmitOutcome>> opens;
    for (auto& n : agentNames) {
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
    for (auto& [acct, rec] : readBooks(io, n, a, pg.get()).accounts) {
      startTotal += rec.balance;
      startBalances[n + ":" + acct] = rec.balance;
    }
  }
  std::printf("keel-chaos: %zu accounts, total money %lld\n", agentNames.size() * o.accountsPerAgent,
              (long long)startTotal);

  Micros runStart = wallMicros();
  timeline.start(runStart);
  WorkloadOptions wo = o;
  wo.sql = pg != nullptr;
  Workload workload(wo, io, coordinator, agentNames, timeline);
  std::unique_ptr<FaultInjector> injector;
  if (o.faults) {
    injector = std::make_unique<FaultInjector>(o, *cluster, proxies, timeline, pg.get(), o.minimums.faults);
    injector->start();
  }
  // Postgres mode: the lowest balance in the databases, once a second, from
  // a thread of its own (a frozen server would stall the event loop).
  std::atomic<std::int64_t> pgLowest{0};
  std::atomic<bool> samplerStop{false};
  std::thread pgSampler;
  if (pg) {
    pgSampler = std::thread([&] {
      while (!samplerStop) {
        for (auto& n : agentNames) {
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
  if (injector) injector->healAll();
  auto hostSettled = [&]() {
    if (!pg) return true;
    for (auto& n : agentNames) {
      if (!pg->prepared(dbName(n)).empty()) return false;
    }
    return true;
  };
  bool resolved = waitResolved(io, coordinator, agentAddrs, std::chrono::seconds(o.healTimeoutS), hostSettled);
  Micros resolvedAt = wallMicros();

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
    in.books.push_back(readBooks(io, n, a, pg.get()));
  }
  std::vector<std::string> requestIds;
  for (auto& at : in.attempts) {
    if (at.seq != 0) seqs.insert(at.seq);
    for (auto& t : at.tries) {
      if (t.answer && t.answer->seq != 0) seqs.insert(t.answer->seq);
    }
    if (!at.requestId.empty()) requestIds.push_back(at.requestId);
  }
  auto client = KeelClient::connect(io, coordinator).wait(io.waitScope);
  in.coordinator.unfinished = client->info().wait(io.waitScope).unfinished;
  // What the requests table names for every request id a client sent.
  for (std::size_t i = 0; i < requestIds.size(); i += 256) {
    kj::Vector<kj::Promise<void>> qs;
    for (std::size_t k = i; k < std::min(requestIds.size(), i + 256); ++k) {
      const std::string& id = requestIds[k];
      qs.add(client->queryRequest(id).then([&in, &seqs, id](std::optional<QueryResult> q) {
        in.coordinator.requests[id] = q ? q->interaction.seq : 0;
        if (q) seqs.insert(q->interaction.seq);
      }));
    }
    kj::joinPromises(qs.releaseAsArray()).wait(io.waitScope);
  }
  std::vector<std::uint64_t> seqList(seqs.begin(), seqs.end());
  for (std::size_t i = 0; i < seqList.size(); i += 256) {
    kj::Vector<kj::Promise<void>> qs;
    for (std::size_t k = i; k < std::min(seqList.size(), i + 256); ++k) {
      std::uint64_t seq = seqList[k];
      qs.add(client->query(seq).then([&in, seq](std::optional<QueryResult> q) {
        if (!q) return;
        in.coordinator.interactions[seq] = std::move(q->interaction);
        if (q->rollback) in.coordinator.rollbacks[seq] = std::move(*q->rollback);
      }));
    }
    kj::joinPromises(qs.releaseAsArray()).wait(io.waitScope);
  }
  auto violations = check(in);
  if (!resolved) {
    violations.push_back(Violation{0, "not resolved within " + std::to_string(o.healTimeoutS) + " s of healing",
                                   ViolationKind::Unsettled});
  }

  auto st = client->capability().statsRequest().send().wait(io.waitScope).getStats();
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
  r.windowCount = st.getCount();
  r.windowP50Us = st.getP50Us();
  r.windowP99Us = st.getP99Us();
  r.windowMaxUs = st.getMaxUs();
  r.resolutionMs = (resolvedAt - healStart) / 1000;
  r.resolved = resolved;
  r.loadSeconds = double(loadEnd - runStart) / 1e6;
  r.violations = violations;
  r.selfCheck = o.selfCheck;
  r.unmet = unmetMinimums(r, o.minimums);
  SelfCheckVerdict verdict;
  if (o.selfCheck) {
    verdict = judgeSelfCheck(violations);
    r.selfCheckVerdict = std::string(verdict.passed ? "PASSED: " : "FAILED: ") + verdict.why;
  }
  writeReport(r, timeline, o.out);
  std::printf("%s", textReport(r).c_str());
  std::printf("keel-chaos: report.json and timeline.svg in %s\n", o.out.c_str());
  if (cluster) cluster->stopAll();
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
  app.add_option("--accounts", o.accountsPerAgent, "accounts per agent")->capture_default_str()->check(CLI::Range(1u, 100000u));
  app.add_option("--connections", o.connections, "client connections")->capture_default_str()->check(CLI::Range(1u, 256u));
  app.add_option("--concurrency", o.concurrency, "interactions in flight")->capture_default_str()->check(CLI::Range(1u, 4096u));
  app.add_option("--heal-timeout", o.healTimeoutS, "seconds allowed for resolution after healing")->capture_default_str();
  app.add_option("--out", o.out, "output folder (default chaos-out/seed-N)");
  app.add_option("--map-size-mb", o.mapSizeMb, "LMDB map size of every process (long runs write a lot)")
      ->capture_default_str()
      ->check(CLI::Range(16u, 1u << 20));
  app.add_flag("--self-check", o.selfCheck,
               "break the protocol on purpose (an agent commits what it is told to roll back): must report violations");
  app.add_flag("!--no-faults", o.faults, "run the workload and the checks without injecting faults");
  app.add_option("--adapter", o.adapter,
                 "agents to start: ledger, or postgres (one PostgreSQL server, a database per agent; "
                 "PostgreSQL is killed and frozen too)")
      ->capture_default_str()
      ->check(CLI::IsMember({"ledger", "postgres"}));
  app.add_option("--first-fault", o.firstFault, "postgres mode: make the first fault this one (then as drawn)")
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
                 "fault kinds that must fire (comma-separated, or 'all' for every kind this run draws): the first "
                 "faults are these, one each, and the run fails (exit 3) if one never took effect");
  app.add_option("--coordinator", o.externalCoordinator, "use this running coordinator (no processes started)");
  app.add_option("--agent", o.externalAgents, "NAME=HOST:PORT of a running agent (with --coordinator)");
  CLI11_PARSE(app, argc, argv);
  if (o.out.empty()) o.out = "chaos-out/seed-" + std::to_string(o.seed);
  if (!o.externalCoordinator.empty() && o.externalAgents.size() < 2) {
    std::fprintf(stderr, "keel-chaos: --coordinator needs at least two --agent NAME=HOST:PORT\n");
    return 2;
  }
  if (o.connections > o.concurrency) o.connections = o.concurrency;
  if (o.adapter == "postgres" && !o.externalCoordinator.empty()) {
    std::fprintf(stderr, "keel-chaos: --adapter postgres starts its own cluster; against your own deployment the "
                         "agents are whatever you run\n");
    return 2;
  }
  if (o.adapter == "postgres" && o.selfCheck) {
    // The self-check relies on the ledger agent's --debug-break (commit what
    // it is told to roll back); the postgres agent has no such switch.
    std::fprintf(stderr, "keel-chaos: --self-check breaks a ledger agent on purpose; run it with --adapter ledger\n");
    return 2;
  }
  if (!o.firstFault.empty() && o.adapter != "postgres") {
    std::fprintf(stderr, "keel-chaos: --first-fault %s needs --adapter postgres\n", o.firstFault.c_str());
    return 2;
  }
  if (!o.requireFaults.empty()) {
    if (!o.externalCoordinator.empty() || !o.faults) {
      std::fprintf(stderr, "keel-chaos: --require-faults needs a run that injects faults (not --no-faults, not "
                           "--coordinator)\n");
      return 2;
    }
    auto drawn = keel::chaos::faultKinds(o.adapter == "postgres");
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
