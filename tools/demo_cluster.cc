#include "tools/demo_cluster.h"
#include "tools/demo_progress.h"

#include <kj/async-io.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/client.h"
#include "tools/bank.h"
#include "tools/cluster.h"
#include "tools/etcd_cluster.h"

namespace keel::demo {

namespace {

constexpr auto kPollEvery = 20 * kj::MILLISECONDS;
constexpr Micros kSettleLimitUs = 60'000'000;  // waiting until nothing is unfinished anywhere

std::string nodeName(int i) { return LocalCluster::coordinatorName(i) + " (node " + std::to_string(i + 1) + ")"; }

// What a transfer finally heard: from its first try, or after a lost answer
// from submitWithRetry through the other coordinators.
struct Answer {
  bool answered = true;
  SubmitOutcome outcome;
  bool retried = false;
  unsigned retries = 0;  // tries after the first
  std::string error;     // why the retries got no answer
};

// How the lost answers ended.
struct RetryTally {
  std::uint64_t replayed = 0;    // the first try had committed: its answer, nothing ran again
  std::uint64_t committed = 0;   // ran again through another coordinator and committed
  std::uint64_t rolledBack = 0;  // ... and was rolled back
  std::uint64_t other = 0;       // in doubt or another outcome
  std::uint64_t unanswered = 0;  // no try got an answer
  std::uint64_t tries = 0;
  std::string firstUnanswered;
};

struct NodeTally {
  std::uint64_t committed = 0, rolledBack = 0;
};

// The survivor's "takeover of node N (epoch E) done in X ms: ..." line.
struct TakeoverLine {
  int coordinator = -1;  // index of the survivor whose log has it; -1: none
  std::string text;      // from "takeover of node" on
  long ms = -1;
};

TakeoverLine findTakeoverLine(const LocalCluster& cluster, int dead) {
  const std::string head = "takeover of node " + std::to_string(dead + 1) + " (epoch ";
  for (int i = 0; i < cluster.coordinatorCount(); ++i) {
    if (i == dead) continue;
    std::ifstream f(cluster.coordinatorLog(i));
    std::string line;
    while (std::getline(f, line)) {
      auto at = line.find(head);
      auto done = line.find(" done in ");
      if (at == std::string::npos || done == std::string::npos) continue;
      TakeoverLine t{i, line.substr(at), -1};
      t.ms = std::strtol(line.c_str() + done + 9, nullptr, 10);
      return t;
    }
  }
  return {};
}

struct ClusterDemo {
  ClusterDemo(kj::AsyncIoContext& io, LocalCluster& cluster, const ClusterDemoOptions& o)
      : io(io), cluster(cluster), o(o), n(cluster.coordinatorCount()), victim(n - 1), broken(n, false),
        inFlight(n, 0), byNode(n) {}

  kj::AsyncIoContext& io;
  LocalCluster& cluster;
  const ClusterDemoOptions& o;
  const int n;
  const int victim;  // the coordinator SIGKILLed (the last: agents ask the first about branches in doubt)
  std::mt19937_64 rng{20261202};

  std::vector<kj::Own<KeelClient>> clients;  // one per coordinator
  std::vector<bool> broken;                  // a call on that client failed: workers go elsewhere
  std::vector<std::uint32_t> inFlight;       // first tries out, per coordinator
  std::vector<kj::Own<AgentClient>> agents;

  std::uint32_t next = 0, done = 0;
  std::uint64_t committed = 0, rolledBack = 0, overdrawRolledBack = 0, inDoubt = 0, unexpected = 0, lost = 0;
  std::vector<NodeTally> byNode;  // by the answer's seq: the node that ran the interaction
  RetryTally retries;
  Micros startUs = 0, lastDoneUs = 0;

  // The kill and the takeover.
  bool killed = false, killFired = false;
  std::uint32_t killInFlight = 0, killAtDone = 0;
  Micros killUs = 0;
  Micros takeoverUs = 0;  // kill -> no branch of the dead node unfinished at any agent; 0: not seen
  std::size_t branchesAtKill = 0;  // the victim's, at the agents, just before the kill
  std::size_t leftAtKill = 0, polls = 0;
  kj::Maybe<kj::ForkedPromise<void>> takeover;

  std::uint16_t deadNode() const { return std::uint16_t(victim + 1); }

  void connect() {
    for (int i = 0; i < n; ++i) {
      clients.push_back(KeelClient::connect(io, cluster.coordinatorAddress(i)).wait(io.waitScope));
      if (o.batch) clients.back()->enableBatching();
    }
    for (auto& name : cluster.agentNames()) {
      agents.push_back(AgentClient::connect(io, cluster.agentPeer(name)).wait(io.waitScope));
    }
  }

  std::string account(std::size_t agent, std::size_t i) {
    return cluster.agentNames()[agent] + ":" + bank::accountName(i);
  }

  // A transfer between the two agents with a fresh request id; `overdraw`
  // makes it ask for more than any account holds (it must be rolled back).
  SubmitRequest transfer(bool overdraw) {
    std::size_t a = rng() % 2;
    std::int64_t amount = overdraw ? 1'000'000'000 : std::int64_t(1 + rng() % 200);
    SubmitRequest req;
    req.ops = transferOps(account(a, rng() % o.accountsPerAgent), account(1 - a, rng() % o.accountsPerAgent), amount);
    req.requestId = newRequestId();
    req.requestTimeUs = wallMicros();
    return req;
  }

  // The first try went through coordinator `failedAt` and its answer was
  // lost: the same request (id and time) through the others, in turn.
  kj::Promise<Answer> retry(SubmitRequest req, int failedAt) {
    ++lost;
    std::vector<std::string> order;
    for (int k = 1; k <= n; ++k) order.push_back(cluster.coordinatorAddress((failedAt + k) % n));
    RetryOptions ro;
    ro.callTimeout = 10 * kj::SECONDS;
    ro.retryFor = 30 * kj::SECONDS;
    ro.pause = 50 * kj::MILLISECONDS;
    ro.maxPause = 1 * kj::SECONDS;
    return submitWithRetry(io, std::move(order), std::move(req), ro).then([](RetriedOutcome r) {
      return Answer{r.answered, std::move(r.outcome), true, r.attempts, r.lastError};
    });
  }

  void count(const Answer& a, bool overdraw) {
    if (a.retried) {
      retries.tries += a.retries;
      if (!a.answered) {
        ++retries.unanswered;
        if (retries.firstUnanswered.empty()) retries.firstUnanswered = a.error;
        return;
      }
      switch (a.outcome.outcome) {
        case ClientOutcome::Committed: ++(a.outcome.replayed ? retries.replayed : retries.committed); break;
        case ClientOutcome::RolledBack: ++retries.rolledBack; break;
        default: ++retries.other;
      }
    }
    const auto& out = a.outcome;
    auto node = seqNode(out.seq);
    NodeTally* tally = node >= 1 && node <= n ? &byNode[node - 1] : nullptr;
    switch (out.outcome) {
      case ClientOutcome::Committed:
        ++committed;
        if (tally != nullptr) ++tally->committed;
        if (overdraw) ++unexpected;  // an overdraft must never commit
        break;
      case ClientOutcome::RolledBack:
        ++rolledBack;
        if (tally != nullptr) ++tally->rolledBack;
        if (overdraw) ++overdrawRolledBack;
        break;
      case ClientOutcome::InDoubt: ++inDoubt; break;
      default:
        ++unexpected;
        std::fprintf(stderr, "\nunexpected answer for seq %s: %s %s\n", seqText(out.seq).c_str(),
                     clientOutcomeName(out.outcome), out.reason.c_str());
    }
  }

  // Transfers one after another through coordinator `home`, until all are
  // sent; a worker whose coordinator broke moves on to the next one.
  kj::Promise<void> worker(int home) {
    if (next >= o.transfers) return kj::READY_NOW;
    ++next;
    for (int k = 0; k < n && broken[home]; ++k) home = (home + 1) % n;
    bool overdraw = (rng() % 100) < o.overdrawPercent;
    SubmitRequest req = transfer(overdraw);
    ++inFlight[home];
    return clients[home]
        ->submit(req)
        .then(
            [this, home, req](SubmitOutcome out) mutable -> kj::Promise<Answer> {
              --inFlight[home];
              if (out.outcome == ClientOutcome::Unavailable) return retry(std::move(req), home);
              Answer a;
              a.outcome = std::move(out);
              return a;
            },
            [this, home, req](kj::Exception&&) mutable -> kj::Promise<Answer> {
              --inFlight[home];
              broken[home] = true;
              return retry(std::move(req), home);
            })
        .then([this, home, overdraw](Answer a) {
          count(a, overdraw);
          ++done;
          lastDoneUs = monoMicros();
          return worker(home);
        });
  }

  // Branches of the victim's node unfinished (active or prepared) at the
  // agents, from their `recover` lists (epoch 0: a look, no fence).
  kj::Promise<std::size_t> victimBranches() {
    kj::Vector<kj::Promise<std::size_t>> counts;
    for (auto& a : agents) {
      counts.add(a->capability().recoverRequest().send().then([node = deadNode()](auto resp) {
        std::size_t k = 0;
        for (auto b : resp.getBranches()) k += seqNode(b.getXid().getSeq()) == node ? 1 : 0;
        return k;
      }));
    }
    return kj::joinPromises(counts.releaseAsArray()).then([](kj::Array<std::size_t> c) {
      std::size_t n = 0;
      for (auto k : c) n += k;
      return n;
    });
  }

  // Branches of the dead node still unfinished at the agents, every 20 ms
  // from the kill until there are none (or the limit passes).
  kj::Promise<void> pollTakeover(Micros limitUs) {
    return victimBranches().then([this, limitUs](std::size_t left) -> kj::Promise<void> {
      if (polls++ == 0) leftAtKill = left;
      if (left == 0) {
        takeoverUs = monoMicros() - killUs;
        endLine();
        std::printf("  >>> no branch of node %u unfinished at any agent any more, %.0f ms after the SIGKILL "
                    "(%u transfers answered meanwhile)\n",
                    unsigned(deadNode()), takeoverUs / 1e3, done - killAtDone);
        return kj::READY_NOW;
      }
      if (monoMicros() - killUs > limitUs) return kj::READY_NOW;
      return io.provider->getTimer().afterDelay(kPollEvery).then([this, limitUs]() {
        return pollTakeover(limitUs);
      });
    });
  }

  ProgressLine line;

  void progress(bool final) {
    line.print(done, o.transfers, committed, rolledBack, lost, double(monoMicros() - startUs) / 1e6, final);
  }
  void endLine() { line.end(); }

  void kill(std::size_t branches) {
    killed = true;
    endLine();
    killInFlight = next - done;
    killAtDone = done;
    branchesAtKill = branches;
    killFired = cluster.coordinatorRunning(victim) && done < o.transfers;
    std::printf("  >>> SIGKILL %s: %u transfers in flight, %u of them through it; %zu of its branches unfinished "
                "at the agents\n",
                nodeName(victim).c_str(), killInFlight, inFlight[victim], branches);
    killUs = monoMicros();
    cluster.killCoordinator(SIGKILL, victim);
    Micros limit = Micros(o.leaseTtlS) * 1'000'000 + 30'000'000;
    takeover = pollTakeover(limit).fork();
  }

  // Progress every 500 ms; the kill once 40% of the transfers are answered
  // and the victim has branches at the agents (its in-flight transfers may
  // all be waiting for its own log before they prepare: killing it then
  // leaves a survivor nothing to take over).
  std::uint32_t ticks = 0;
  kj::Promise<void> monitor() {
    return io.provider->getTimer().afterDelay(5 * kj::MILLISECONDS).then([this]() -> kj::Promise<void> {
      if (done >= o.transfers) return kj::READY_NOW;
      if (++ticks % 100 == 0) progress(false);
      if (killed || done < o.transfers * 2 / 5) return monitor();
      return victimBranches().then([this](std::size_t branches) {
        if (branches > 0 && !killed && done < o.transfers) kill(branches);
        return monitor();
      });
    });
  }

  // Every running coordinator has nothing unfinished and no agent holds a
  // branch or money; false if that did not happen within the limit.
  bool waitSettled(bank::AgentTotals& totals) {
    auto until = monoMicros() + kSettleLimitUs;
    for (;;) {
      std::uint64_t unfinished = 0;
      for (int i = 0; i < n; ++i) {
        if (cluster.coordinatorRunning(i)) unfinished += clients[i]->info().wait(io.waitScope).unfinished;
      }
      totals = bank::agentTotals(io, cluster);
      bool settled = unfinished == 0 && totals.prepared == 0 && totals.active == 0 && totals.held == 0;
      if (settled || monoMicros() > until) return settled;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
};

std::string percentOf(std::uint64_t part, std::uint64_t whole) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f%%", whole ? 100.0 * double(part) / double(whole) : 0.0);
  return buf;
}

}  // namespace

int runClusterDemo(const ClusterDemoOptions& o) {
  if (o.coordinators < 2) throw std::invalid_argument("a coordinator cluster needs at least 2 coordinators");
  auto wallStart = monoMicros();
  std::printf("[1/7] starting a 3-member etcd cluster on loopback\n");
  test::EtcdClusterOptions eo;
  eo.parentDir = o.baseDir;
  test::EtcdCluster etcd(eo);
  etcd.start();
  std::printf("      etcd %s, %s, %s\n", etcd.endpoint(0).c_str(), etcd.endpoint(1).c_str(), etcd.endpoint(2).c_str());

  ClusterOptions copts;
  copts.binDir = selfBinDir();
  copts.baseDir = o.baseDir;
  copts.coordinators = o.coordinators;
  copts.clusterToml = test::clusterSection(etcd, "/keel-demo", o.leaseTtlS);
  copts.tlsDir = o.tlsDir;
  LocalCluster cluster(copts);
  std::printf("[2/7] starting agents bank-a, bank-b and %d coordinators sharing etcd (lease TTL %d s)\n",
              o.coordinators, o.leaseTtlS);
  cluster.startAll();
  auto io = kj::setupAsyncIo();
  ClusterDemo demo(io, cluster, o);
  demo.connect();
  std::vector<std::uint64_t> epochs;
  for (int i = 0; i < demo.n; ++i) {
    auto info = demo.clients[i]->info().wait(io.waitScope);
    epochs.push_back(info.epoch);
    std::printf("      %-28s %s  epoch %llu%s\n", nodeName(i).c_str(), cluster.coordinatorAddress(i).c_str(),
                (unsigned long long)info.epoch, info.clustered ? "" : "  NOT CLUSTERED");
  }
  std::printf("      bank-a %s, bank-b %s\n", cluster.agentAddress("bank-a").c_str(),
              cluster.agentAddress("bank-b").c_str());

  std::printf("[3/7] opening %u accounts on each agent with %lld each\n", o.accountsPerAgent, (long long)o.opening);
  bank::openLedgerAccounts(io.waitScope, *demo.clients[0], cluster.agentNames(), o.accountsPerAgent, o.opening);
  auto before = bank::agentTotals(io, cluster);
  std::printf("      total money: %lld\n", (long long)before.money);

  std::printf("[4/7] running %u transfers, %u at a time over %d coordinators (%u%% overdraw on purpose), every one "
              "with a request id; SIGKILL %s at 40%%\n",
              o.transfers, o.concurrency, demo.n, o.overdrawPercent, nodeName(demo.victim).c_str());
  demo.startUs = monoMicros();
  {
    kj::Vector<kj::Promise<void>> workers;
    for (std::uint32_t w = 0; w < o.concurrency; ++w) workers.add(demo.worker(int(w % std::uint32_t(demo.n))));
    auto monitor = demo.monitor().eagerlyEvaluate(nullptr);
    kj::joinPromises(workers.releaseAsArray()).wait(io.waitScope);
  }
  double loadSecs = double(demo.lastDoneUs - demo.startUs) / 1e6;
  demo.progress(true);

  std::printf("[5/7] the takeover of node %u: polling the agents every 20 ms for its unfinished branches\n",
              unsigned(demo.deadNode()));
  TakeoverLine line;
  KJ_IF_MAYBE(t, demo.takeover) {
    t->addBranch().wait(io.waitScope);
    // The survivor logs its line once its last branch is finished: a moment
    // after the agents show none.
    for (int k = 0; k < 100 && line.coordinator < 0; ++k) {
      line = findTakeoverLine(cluster, demo.victim);
      if (line.coordinator < 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::printf("      branches of node %u unfinished at the agents: %zu just before the kill, %zu at the first poll "
                "after it\n",
                unsigned(demo.deadNode()), demo.branchesAtKill, demo.leftAtKill);
    if (demo.takeoverUs != 0) {
      std::printf("      none left %.0f ms after the SIGKILL (%zu polls)\n", demo.takeoverUs / 1e3, demo.polls);
    } else {
      std::printf("      STILL UNFINISHED after %zu polls\n", demo.polls);
    }
    if (line.coordinator >= 0) {
      std::printf("      %s logged: %s\n", nodeName(line.coordinator).c_str(), line.text.c_str());
    } else {
      std::printf("      no survivor logged the takeover\n");
    }
  }

  std::printf("[6/7] waiting until every interaction is settled on every host\n");
  bank::AgentTotals after;
  bool settled = demo.waitSettled(after);
  std::uint64_t tkCommitted = 0, tkRolledBack = 0, etcdTxns = 0, etcdDecisions = 0;
  for (int i = 0; i < demo.n; ++i) {
    if (i == demo.victim) continue;
    auto info = demo.clients[i]->info().wait(io.waitScope);
    tkCommitted += info.takeoverCommitted;
    tkRolledBack += info.takeoverRolledBack;
    etcdTxns += info.etcdTxns;
    etcdDecisions += info.etcdDecisions;
  }

  // The killed coordinator comes back: a new epoch, reconciled from etcd.
  bool rejoined = true;
  if (o.restart && demo.killed) {
    std::printf("[7/7] restarting %s\n", nodeName(demo.victim).c_str());
    auto t0 = monoMicros();
    cluster.startCoordinator("", demo.victim);
    auto restartMs = (monoMicros() - t0) / 1000;
    auto c = KeelClient::connect(io, cluster.coordinatorAddress(demo.victim)).wait(io.waitScope);
    CoordinatorInfo info;
    for (int k = 0; k < 100; ++k) {
      info = c->info().wait(io.waitScope);
      if (info.unfinished == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    SubmitRequest req = demo.transfer(false);
    auto out = c->submit(req).wait(io.waitScope);
    bool ranThere = out.outcome == ClientOutcome::Committed && seqNode(out.seq) == demo.deadNode();
    rejoined = info.epoch > epochs[demo.victim] && info.unfinished == 0 && ranThere;
    std::printf("      serving again after %llu ms: epoch %llu -> %llu, unfinished %llu, a transfer through it %s "
                "(seq %s)\n",
                (unsigned long long)restartMs, (unsigned long long)epochs[demo.victim],
                (unsigned long long)info.epoch, (unsigned long long)info.unfinished, clientOutcomeName(out.outcome),
                seqText(out.seq).c_str());
    demo.clients[demo.victim] = kj::mv(c);
    settled = demo.waitSettled(after) && settled;
  } else {
    std::printf("[7/7] (the killed coordinator is not restarted)\n");
  }

  bool moneyOk = before.money == after.money;
  std::printf("\nsummary\n");
  std::printf("  transfers          %u in %.2f s  (%.0f transfers/s, including the kill)\n", o.transfers, loadSecs,
              loadSecs > 0 ? o.transfers / loadSecs : 0.0);
  std::printf("  committed          %llu\n", (unsigned long long)demo.committed);
  std::printf("  rolled back        %llu  (%llu deliberate overdrafts)\n", (unsigned long long)demo.rolledBack,
              (unsigned long long)demo.overdrawRolledBack);
  std::printf("  in doubt           %llu\n", (unsigned long long)demo.inDoubt);
  std::printf("  per coordinator (the node that ran it, from the answer's seq):\n");
  for (int i = 0; i < demo.n; ++i) {
    auto& t = demo.byNode[i];
    std::printf("    %-28s committed %6llu  rolled back %5llu%s\n", nodeName(i).c_str(),
                (unsigned long long)t.committed, (unsigned long long)t.rolledBack,
                i == demo.victim ? "  (killed)" : "");
  }
  auto& r = demo.retries;
  std::printf("  answers lost       %llu  (the coordinator died with the request in flight), each retried with "
              "its request id through the next coordinator: %llu tries\n",
              (unsigned long long)demo.lost, (unsigned long long)r.tries);
  std::printf("    committed before the kill, answer replayed    %llu\n", (unsigned long long)r.replayed);
  std::printf("    ran again elsewhere and committed             %llu\n", (unsigned long long)r.committed);
  std::printf("    ran again elsewhere and rolled back           %llu\n", (unsigned long long)r.rolledBack);
  if (r.other != 0) std::printf("    another answer                                %llu\n", (unsigned long long)r.other);
  std::printf("    no answer                                     %llu%s%s\n", (unsigned long long)r.unanswered,
              r.firstUnanswered.empty() ? "" : ": ", r.firstUnanswered.c_str());
  if (demo.killed) {
    std::printf("  kill               %s %s (after %u answers, %u transfers in flight)\n",
                nodeName(demo.victim).c_str(), demo.killFired ? "SIGKILLed" : "NOT KILLED", demo.killAtDone,
                demo.killInFlight);
  }
  if (demo.takeoverUs != 0 && demo.leftAtKill == 0) {
    // Nothing of the killed node was left at the agents by the first poll
    // (its last messages had finished its branches): no takeover to time.
    std::printf("  takeover           none to time: no branch of node %u unfinished at any agent at the first poll "
                "after the SIGKILL (%zu just before it; lease TTL %d s)\n",
                unsigned(demo.deadNode()), demo.branchesAtKill, o.leaseTtlS);
  } else {
    std::printf("  takeover           %s after the SIGKILL (no branch of node %u unfinished at any agent; lease TTL "
                "%d s)\n",
                demo.takeoverUs ? (std::to_string((demo.takeoverUs + 500) / 1000) + " ms").c_str() : "NOT SEEN",
                unsigned(demo.deadNode()), o.leaseTtlS);
  }
  if (line.coordinator >= 0) {
    std::printf("                     %s's own count: done in %ld ms from its election\n",
                nodeName(line.coordinator).c_str(), line.ms);
  }
  std::printf("  finished by the survivors  %llu branches of node %u: %llu committed, %llu rolled back%s\n",
              (unsigned long long)(tkCommitted + tkRolledBack), unsigned(demo.deadNode()), (unsigned long long)tkCommitted,
              (unsigned long long)tkRolledBack,
              demo.killed && tkCommitted + tkRolledBack == 0
                  ? " (none was left for them: the killed node's last messages finished its branches)"
                  : "");
  std::printf("  etcd               %llu txns, %llu decisions by the survivors (%.1f decisions per txn)\n",
              (unsigned long long)etcdTxns, (unsigned long long)etcdDecisions,
              etcdTxns ? double(etcdDecisions) / double(etcdTxns) : 0.0);
  std::printf("  money before       %lld\n", (long long)before.money);
  std::printf("  money after        %lld   %s\n", (long long)after.money, moneyOk ? "EQUAL" : "DIFFERENT!");
  std::printf("  money held         %lld\n", (long long)after.held);
  std::printf("  negative balances  %lld\n", (long long)after.negative);
  std::printf("  everything settled %s\n", settled ? "yes" : "NO");
  if (o.restart && demo.killed) std::printf("  rejoined           %s\n", rejoined ? "yes" : "NO");

  std::vector<std::string> failed;
  if (!moneyOk) failed.push_back("money before and after differ");
  if (!settled) failed.push_back("not everything settled (branches, holds or unfinished interactions left)");
  if (after.negative != 0) failed.push_back("a balance is negative");
  if (demo.unexpected != 0) failed.push_back(std::to_string(demo.unexpected) + " unexpected answers");
  if (r.unanswered != 0) failed.push_back(std::to_string(r.unanswered) + " lost answers got no answer on retry");
  std::uint64_t floor = std::uint64_t(o.transfers) * o.minCommittedPercent / 100;
  if (demo.committed < floor) {
    failed.push_back("only " + std::to_string(demo.committed) + " of " + std::to_string(o.transfers) +
                     " transfers committed (" + percentOf(demo.committed, o.transfers) + "), fewer than " +
                     std::to_string(o.minCommittedPercent) + "%: the load did not run");
  }
  if (!demo.killFired) {
    failed.push_back(demo.killed ? "the kill did not happen while transfers were in flight"
                                 : "nobody was killed: the load ended before 40% was seen, or before the victim had "
                                   "a branch at the agents");
  }
  if (demo.killed) {
    if (demo.takeoverUs == 0) failed.push_back("branches of the killed node were still unfinished");
    if (line.coordinator < 0) failed.push_back("no survivor logged the takeover");
  }
  if (!rejoined) failed.push_back("the restarted coordinator did not rejoin cleanly");
  for (const auto& f : failed) std::printf("keel-demo: FAILED: %s\n", f.c_str());
  cluster.stopAll();
  if (!failed.empty()) return 1;
  std::printf("keel-demo: OK in %.1f s\n", double(monoMicros() - wallStart) / 1e6);
  return 0;
}

}  // namespace keel::demo
