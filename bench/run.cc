#include "bench/run.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <stdexcept>
#include <thread>

#include "common/types.h"

namespace keel::bench {

void Live::error(const std::string& what) {
  std::lock_guard<std::mutex> lk(mu_);
  if (firstError_.empty()) firstError_ = what;
}

std::string Live::firstError() {
  std::lock_guard<std::mutex> lk(mu_);
  return firstError_;
}

void Live::unexpectedRollback(const std::string& reason) {
  std::lock_guard<std::mutex> lk(mu_);
  if (firstUnexpectedRollback_.empty()) firstUnexpectedRollback_ = reason;
}

std::string Live::firstUnexpectedRollback() {
  std::lock_guard<std::mutex> lk(mu_);
  return firstUnexpectedRollback_;
}

void countAnswer(Live& live, LatencyHistogram& h, std::uint64_t latencyUs, bool committed, bool intendedRollback) {
  live.answered.fetch_add(1, std::memory_order_relaxed);
  if (live.phase.load(std::memory_order_relaxed) != Phase::Measure) return;
  h.record(latencyUs);
  if (committed) {
    live.committed.fetch_add(1, std::memory_order_relaxed);
  } else {
    live.rolledBack.fetch_add(1, std::memory_order_relaxed);
    if (!intendedRollback) live.unexpectedRollbacks.fetch_add(1, std::memory_order_relaxed);
  }
}

void countError(Live& live, const std::string& what) {
  live.failed.fetch_add(1, std::memory_order_relaxed);
  if (live.phase.load(std::memory_order_relaxed) == Phase::Measure) live.errors.fetch_add(1, std::memory_order_relaxed);
  live.error(what);
}

double RunResult::coordinatorCommitsPerInteraction() const {
  return interactions() ? double(coordinatorLogCommits) / double(interactions()) : 0;
}

double RunResult::agentCommitsPerInteraction(const AgentLogCommits& a) const {
  return interactions() ? double(a.commits) / double(interactions()) : 0;
}

bool RunResult::anyCheckpoints() const {
  if (coordinatorCheckpoints > 0) return true;
  for (auto& a : agentLog) {
    if (a.checkpoints > 0) return true;
  }
  return false;
}

double RunResult::maxAgentCommitsPerInteraction() const {
  double m = 0;
  for (auto& a : agentLog) m = std::max(m, agentCommitsPerInteraction(a));
  return m;
}

namespace {

std::vector<double> readCpu(const std::vector<WatchedProcess>& ps) {
  std::vector<double> out;
  for (auto& p : ps) out.push_back(p.cpu().value_or(-1));
  return out;
}

std::vector<double> readSwitches(const std::vector<WatchedProcess>& ps) {
  std::vector<double> out;
  for (auto& p : ps) {
    auto n = p.switches();
    out.push_back(n ? double(*n) : -1);
  }
  return out;
}

}  // namespace

void driveWindow(Live& live, const WindowOptions& opts, const std::vector<WatchedProcess>& processes,
                 RunResult& result, const std::function<void()>& atStart, const std::function<void()>& atEnd) {
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  auto secsSince = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
  const bool tty = ::isatty(2) != 0;
  std::uint64_t lastAnswered = 0;
  auto lastTick = t0;
  auto progress = [&](const char* phase, double at, double of) {
    if (!opts.progress) return;
    std::uint64_t answered = live.answered.load(std::memory_order_relaxed);
    double dt = secsSince(lastTick);
    double rate = dt > 0 ? double(answered - lastAnswered) / dt : 0;
    lastAnswered = answered;
    lastTick = Clock::now();
    // In the window, also the average so far over the window.
    std::string sofar;
    if (live.phase.load(std::memory_order_relaxed) == Phase::Measure && at > 0) {
      sofar = "  window avg " +
              std::to_string(std::uint64_t(double(live.committed.load() + live.rolledBack.load()) / at)) + "/s";
    }
    std::fprintf(stderr, "%s[%s] %-9s %5.1f/%.0f s  %8.0f interactions/s%s  answered %llu  errors %llu%s",
                 tty ? "\r" : "", opts.label.c_str(), phase, at, of, rate, sofar.c_str(),
                 (unsigned long long)answered, (unsigned long long)live.failed.load(std::memory_order_relaxed),
                 tty ? "   " : "\n");
  };
  // Sleeps in steps of at most a second until `until`, printing progress.
  auto waitUntil = [&](Clock::time_point until, Clock::time_point from, const char* phase, double of) {
    while (Clock::now() < until) {
      auto step = std::min<Clock::duration>(until - Clock::now(), std::chrono::seconds(1));
      std::this_thread::sleep_for(step);
      progress(phase, secsSince(from), of);
    }
  };
  waitUntil(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.warmupS)), t0,
            "warm-up", opts.warmupS);

  live.phase.store(Phase::Measure);
  auto w0 = Clock::now();
  auto wEnd = w0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.durationS));
  auto cpu0 = readCpu(processes);
  auto sw0 = readSwitches(processes);
  // The window closes at wEnd even when atStart is still waiting (it reads
  // the counters of processes that may be stalled: a coordinator held by a
  // failpoint, an agent under a fault): a stopper thread ends it, so what a
  // stall releases late is never counted in a window it stretched.
  std::mutex stopMu;
  std::condition_variable stopCv;
  bool leave = false;  // GUARDED_BY(stopMu): stop now (the window is over, or atStart threw)
  Clock::time_point stoppedAt;  // written by the stopper, read after it joined
  std::thread stopper([&] {
    std::unique_lock<std::mutex> lk(stopMu);
    stopCv.wait_until(lk, wEnd, [&] { return leave; });
    live.phase.store(Phase::Stop);
    stoppedAt = Clock::now();
  });
  auto endStopper = [&] {
    {
      std::lock_guard<std::mutex> lk(stopMu);
      leave = true;
    }
    stopCv.notify_all();
    stopper.join();
  };
  try {
    if (atStart) atStart();
    waitUntil(wEnd, w0, "measuring", opts.durationS);
  } catch (...) {
    endStopper();
    throw;
  }
  endStopper();
  result.seconds = std::chrono::duration<double>(stoppedAt - w0).count();
  auto cpu1 = readCpu(processes);
  auto sw1 = readSwitches(processes);
  if (atEnd) atEnd();
  if (opts.progress && tty) std::fprintf(stderr, "\n");

  result.cpu.clear();
  for (std::size_t i = 0; i < processes.size(); ++i) {
    double s = (cpu0[i] < 0 || cpu1[i] < 0) ? -1 : cpu1[i] - cpu0[i];
    double sw = (sw0[i] < 0 || sw1[i] < sw0[i]) ? -1 : sw1[i] - sw0[i];
    result.cpu.push_back(ProcessCpu{processes[i].name, s, sw});
  }
  result.committed = live.committed.load();
  result.rolledBack = live.rolledBack.load();
  result.unexpectedRollbacks = live.unexpectedRollbacks.load();
  result.errors = live.errors.load();
  result.firstError = live.firstError();
  result.firstUnexpectedRollback = live.firstUnexpectedRollback();
}

void runClients(std::vector<std::unique_ptr<LoadClient>>& clients, Live& live, const std::string& what,
                const WindowOptions& opts, const std::vector<WatchedProcess>& processes, RunResult& result,
                const std::function<void()>& atStart, const std::function<void()>& atEnd) {
  std::latch ready(std::ptrdiff_t(clients.size()));
  for (auto& c : clients) c->start(ready);
  ready.wait();
  std::string err;
  for (auto& c : clients) {
    if (err.empty()) err = c->connectError();
  }
  if (!err.empty()) {
    live.phase.store(Phase::Stop);
    for (auto& c : clients) c->join();
    throw std::runtime_error(what + ": " + err);
  }
  driveWindow(live, opts, processes, result, atStart, atEnd);
  for (auto& c : clients) c->join();
  for (auto& c : clients) result.latency.merge(c->histogram());
}

}  // namespace keel::bench
