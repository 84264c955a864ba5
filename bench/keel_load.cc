#include "bench/keel_load.h"

#include <kj/async-io.h>

#include <memory>
#include <stdexcept>
#include <thread>

#include "common/client.h"
#include "common/tls.h"

namespace keel::bench {

namespace {

// Interactions still unanswered this long after the window closed are
// counted as errors and abandoned, so a hung deployment cannot hang us.
constexpr auto kDrainLimit = 30 * kj::SECONDS;
// After a failed call, a worker waits this long before the next one (a
// dead connection fails at once: without the pause the loop would spin).
constexpr auto kErrorPause = 10 * kj::MILLISECONDS;

// One connection of a client thread: where it goes and how many workers
// keep an interaction outstanding on it.
struct Conn {
  std::string address;
  std::uint32_t workers = 0;
};

class ClientThread final : public LoadClient {
 public:
  ClientThread(const WorkloadSpec& spec, Live& live, std::vector<Conn> conns, std::uint64_t seed,
               std::uint32_t batchInFlight, bool requestIds, AnswerObserver* observer)
      : live_(live), conns_(std::move(conns)), workload_(spec, seed), batchInFlight_(batchInFlight),
        requestIds_(requestIds), observer_(observer) {}

  ~ClientThread() override { join(); }

 private:
  void run(std::latch& ready) override {
    bool counted = false;
    try {
      auto io = kj::setupAsyncIo();
      auto& timer = io.provider->getTimer();
      std::vector<kj::Own<KeelClient>> clients;
      for (auto& conn : conns_) {
        clients.push_back(KeelClient::connect(io, conn.address).wait(io.waitScope));
        if (batchInFlight_ > 0) clients.back()->enableBatching(256, batchInFlight_);
      }
      counted = true;
      ready.count_down();
      kj::Vector<kj::Promise<void>> workers;
      for (std::size_t c = 0; c < clients.size(); ++c) {
        for (std::uint32_t k = 0; k < conns_[c].workers; ++k) workers.add(loop(*clients[c], timer));
      }
      auto bound = untilStop(timer).then([&timer]() { return timer.afterDelay(kDrainLimit); }).then([this]() {
        live_.error("interactions still unanswered 30 s after the window closed");
      });
      kj::joinPromises(workers.releaseAsArray()).exclusiveJoin(kj::mv(bound)).wait(io.waitScope);
    } catch (const kj::Exception& e) {
      if (!counted) connectError_ = e.getDescription().cStr();
      live_.error(e.getDescription().cStr());
    } catch (const std::exception& e) {
      if (!counted) connectError_ = e.what();
      live_.error(e.what());
    }
    if (!counted) ready.count_down();
  }

  kj::Promise<void> untilStop(kj::Timer& timer) {
    if (live_.phase.load(std::memory_order_relaxed) == Phase::Stop) return kj::READY_NOW;
    return timer.afterDelay(20 * kj::MILLISECONDS).then([this, &timer]() { return untilStop(timer); });
  }

  kj::Promise<void> loop(KeelClient& client, kj::Timer& timer) {
    if (live_.phase.load(std::memory_order_relaxed) == Phase::Stop) return kj::READY_NOW;
    auto it = workload_.next();
    const bool intendRollback = it.intent == Interaction::Intent::Rollback;
    const auto t0 = monoMicros();
    const Micros wall0 = observer_ != nullptr ? wallMicros() : 0;
    SubmitRequest req;
    req.ops = std::move(it.ops);
    if (requestIds_) req.requestId = newRequestId();  // its time is set by submit
    return client.submit(std::move(req))
        .then(
            [this, intendRollback, t0, wall0, &timer](SubmitOutcome o) -> kj::Promise<void> {
              auto us = monoMicros() - t0;
              if (observer_ != nullptr) observer_->answered(o.seq, o.outcome, wall0, wallMicros());
              switch (o.outcome) {
                case ClientOutcome::Committed:
                  if (intendRollback) {
                    countError(live_, "seq " + seqText(o.seq) + ": an overdraft committed");
                  } else {
                    countAnswer(live_, hist_, us, true, false);
                  }
                  return kj::READY_NOW;
                case ClientOutcome::RolledBack:
                  countAnswer(live_, hist_, us, false, intendRollback);
                  if (!intendRollback) live_.unexpectedRollback("seq " + seqText(o.seq) + ": " + o.reason);
                  return kj::READY_NOW;
                default:
                  countError(live_, std::string(clientOutcomeName(o.outcome)) + ": " + o.reason);
                  return timer.afterDelay(kErrorPause);
              }
            },
            [this, &timer](kj::Exception&& e) -> kj::Promise<void> {
              countError(live_, e.getDescription().cStr());
              return timer.afterDelay(kErrorPause);
            })
        .then([this, &client, &timer]() { return loop(client, timer); });
  }

  Live& live_;
  std::vector<Conn> conns_;
  Workload workload_;
  std::uint32_t batchInFlight_;  // 0: no client batching
  bool requestIds_;
  AnswerObserver* observer_;  // may be null
};

struct LogSnapshot {
  std::uint64_t coordCommits = 0, coordJobs = 0;
  std::uint64_t coordCheckpoints = 0, coordCheckpointMicros = 0;
  std::uint64_t etcdTxns = 0, etcdDecisions = 0;
  bool clustered = false;
  std::vector<AgentLogCommits> agents;
};

LogSnapshot readLogCounters(kj::AsyncIoContext& io, std::vector<kj::Own<KeelClient>>& coordinators,
                            std::vector<std::pair<std::string, kj::Own<AgentClient>>>& agents) {
  // All asked at once, so the snapshot is as close to one instant as it gets.
  kj::Vector<kj::Promise<CoordinatorInfo>> infos;
  for (auto& c : coordinators) infos.add(c->info());
  kj::Vector<kj::Promise<AgentSnapshot>> inspects;
  for (auto& [name, a] : agents) inspects.add(a->inspect());
  auto is = kj::joinPromises(infos.releaseAsArray()).wait(io.waitScope);
  auto snaps = kj::joinPromises(inspects.releaseAsArray()).wait(io.waitScope);
  LogSnapshot s;
  for (auto& i : is) {
    s.coordCommits += i.logCommits;
    s.coordJobs += i.logJobs;
    s.coordCheckpoints += i.logCheckpoints;
    s.coordCheckpointMicros += i.logCheckpointMicros;
    s.etcdTxns += i.etcdTxns;
    s.etcdDecisions += i.etcdDecisions;
    s.clustered = s.clustered || i.clustered;
  }
  for (std::size_t k = 0; k < agents.size(); ++k) {
    s.agents.push_back(AgentLogCommits{agents[k].first, snaps[k].logCommits, snaps[k].logJobs,
                                       snaps[k].logCheckpoints, snaps[k].logCheckpointMicros});
  }
  return s;
}

}  // namespace

RunResult runKeelLoad(kj::AsyncIoContext& io, const Deployment& d, const WorkloadSpec& spec, const LoadOptions& opts) {
  const std::uint32_t conns = std::max<std::uint32_t>(1, std::min(opts.connections, opts.concurrency));
  const std::uint32_t nThreads = std::max<std::uint32_t>(1, std::min(opts.threads, conns));
  if (d.coordinators.empty()) throw std::invalid_argument("runKeelLoad: no coordinator");
  // Connection c carries concurrency/conns workers (the first ones one
  // more), goes to coordinator c % coordinators and belongs to thread
  // c % nThreads.
  std::vector<std::vector<Conn>> perThread(nThreads);
  for (std::uint32_t c = 0; c < conns; ++c) {
    perThread[c % nThreads].push_back(Conn{d.coordinators[c % d.coordinators.size()],
                                           opts.concurrency / conns + (c < opts.concurrency % conns ? 1 : 0)});
  }

  std::vector<kj::Own<KeelClient>> coordinators;
  for (auto& addr : d.coordinators) coordinators.push_back(KeelClient::connect(io, addr).wait(io.waitScope));
  std::vector<std::pair<std::string, kj::Own<AgentClient>>> agents;
  for (auto& [name, addr] : d.agents) agents.emplace_back(name, AgentClient::connect(io, name + "@" + addr).wait(io.waitScope));

  Live live;
  std::vector<std::unique_ptr<LoadClient>> threads;
  for (std::uint32_t t = 0; t < nThreads; ++t) {
    threads.push_back(std::make_unique<ClientThread>(spec, live, perThread[t], opts.seed * 1000003 + t,
                                                     opts.batch ? opts.batchInFlight : 0, opts.requestIds,
                                                     opts.observer));
  }
  RunResult r;
  r.mode = "keel";
  r.concurrency = opts.concurrency;
  r.connections = conns;
  r.clientBatching = opts.batch;
  r.tls = currentTls() != nullptr;
  r.requestIds = opts.requestIds;
  LogSnapshot before, after;
  r.coordinators = std::uint32_t(d.coordinators.size());
  std::string where = d.coordinators[0];
  for (std::size_t i = 1; i < d.coordinators.size(); ++i) where += ", " + d.coordinators[i];
  runClients(
      threads, live, "cannot connect to the coordinator at " + where, opts.window, d.processes, r,
      [&] {
        before = readLogCounters(io, coordinators, agents);
        if (opts.atWindowStart) opts.atWindowStart();
      },
      [&] { after = readLogCounters(io, coordinators, agents); });

  r.haveLogCounters = true;
  r.coordinatorLogCommits = after.coordCommits - before.coordCommits;
  r.coordinatorLogJobs = after.coordJobs - before.coordJobs;
  r.coordinatorCheckpoints = after.coordCheckpoints - before.coordCheckpoints;
  r.coordinatorCheckpointMicros = after.coordCheckpointMicros - before.coordCheckpointMicros;
  r.clustered = after.clustered;
  r.etcdTxns = after.etcdTxns - before.etcdTxns;
  r.etcdDecisions = after.etcdDecisions - before.etcdDecisions;
  for (std::size_t k = 0; k < after.agents.size(); ++k) {
    const auto &a = after.agents[k], &b = before.agents[k];
    r.agentLog.push_back(AgentLogCommits{a.name, a.commits - b.commits, a.jobs - b.jobs,
                                         a.checkpoints - b.checkpoints, a.checkpointMicros - b.checkpointMicros});
  }
  return r;
}

}  // namespace keel::bench
