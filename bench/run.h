#pragma once
// What one measured run is made of, whatever drives the load (Keel through
// its coordinator, or the raw2pc baseline): the phases, the live counters
// the client threads bump, the window driver that runs warm-up and the
// measured window while printing progress, and the result.
//
// Threads: client threads write Live (atomics) and their own histogram;
// the driver thread reads Live and owns everything else.

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench/latency_histogram.h"
#include "bench/proc_cpu.h"

namespace keel::bench {

enum class Phase : int { Warmup = 0, Measure = 1, Stop = 2 };

struct Live {
  std::atomic<Phase> phase{Phase::Warmup};
  std::atomic<std::uint64_t> answered{0}, failed{0};  // every phase: for progress
  // Inside the measured window only.
  std::atomic<std::uint64_t> committed{0}, rolledBack{0}, unexpectedRollbacks{0}, errors{0};

  void error(const std::string& what);
  std::string firstError();
  // Why the first rollback nobody asked for happened (lock timeout, ...).
  void unexpectedRollback(const std::string& reason);
  std::string firstUnexpectedRollback();

 private:
  std::mutex mu_;
  std::string firstError_;               // GUARDED_BY(mu_)
  std::string firstUnexpectedRollback_;  // GUARDED_BY(mu_)
};

// Counts one answered interaction (and its latency, inside the window).
// intendedRollback: the workload meant it to fail.
void countAnswer(Live& live, LatencyHistogram& h, std::uint64_t latencyUs, bool committed, bool intendedRollback);

// Counts a failed interaction (no answer, or an answer that is not an
// outcome: in doubt, invalid, unavailable, an overdraft that committed).
void countError(Live& live, const std::string& what);

struct ProcessCpu {
  std::string name;
  double seconds = -1;  // < 0: not measured (process gone)
  double switches = -1;  // context switches in the window; < 0: not measured (gone, or a process tree)
};

struct AgentLogCommits {
  std::string name;
  std::uint64_t commits = 0, jobs = 0;
  std::uint64_t checkpoints = 0, checkpointMicros = 0;  // redo mode
};

struct RunResult {
  std::string mode;  // keel | raw2pc
  std::uint32_t concurrency = 0, connections = 0;
  bool clientBatching = false;  // keel mode: the client batched its submits
  bool tls = false;             // keel mode: the client's connections (and, self-started, every link) were TLS
  bool requestIds = false;      // keel mode: every submit carried a request id
  double seconds = 0;  // length of the measured window
  std::uint64_t committed = 0, rolledBack = 0, unexpectedRollbacks = 0, errors = 0;
  std::string firstError, firstUnexpectedRollback;
  LatencyHistogram latency;
  std::vector<ProcessCpu> cpu;
  // Durable log commits in the window (keel mode only).
  bool haveLogCounters = false;
  std::uint64_t coordinatorLogCommits = 0, coordinatorLogJobs = 0;  // summed over the coordinators
  // Redo mode: checkpoints in the window and the microseconds they took
  // (summed over the coordinators; the agents' in agentLog).
  std::uint64_t coordinatorCheckpoints = 0, coordinatorCheckpointMicros = 0;
  std::vector<AgentLogCommits> agentLog;
  // A coordinator cluster (keel mode): its members, and the etcd txns they
  // sent and the decisions those created in the window, summed.
  std::uint32_t coordinators = 1;
  bool clustered = false;
  std::uint64_t etcdTxns = 0, etcdDecisions = 0;

  std::uint64_t interactions() const { return committed + rolledBack; }
  double perSecond() const { return seconds > 0 ? double(interactions()) / seconds : 0; }
  double committedPerSecond() const { return seconds > 0 ? double(committed) / seconds : 0; }
  // Redo mode: some process checkpointed in the window.
  bool anyCheckpoints() const;
  double coordinatorCommitsPerInteraction() const;
  double agentCommitsPerInteraction(const AgentLogCommits& a) const;
  double maxAgentCommitsPerInteraction() const;
  double etcdTxnsPerInteraction() const { return interactions() ? double(etcdTxns) / double(interactions()) : 0; }
  double etcdDecisionsPerTxn() const { return etcdTxns ? double(etcdDecisions) / double(etcdTxns) : 0; }
};

struct WindowOptions {
  double warmupS = 1, durationS = 5;
  bool progress = true;
  std::string label;  // in the progress line, e.g. "keel c=64"
};

// Runs warm-up then the measured window on the calling thread while client
// threads work, printing progress about once a second on stderr, then sets
// Phase::Stop. atStart / atEnd run right after the window opens / closes
// (counter snapshots); CPU of `processes` is read at both ends into
// result.cpu. Fills result.seconds.
void driveWindow(Live& live, const WindowOptions& opts, const std::vector<WatchedProcess>& processes,
                 RunResult& result, const std::function<void()>& atStart, const std::function<void()>& atEnd);

// One client thread of a load (a Keel event loop, or raw2pc's libpq
// client). run() connects, counts `ready` down exactly once (with
// connectError_ set if it could not connect), then works until Phase::Stop.
class LoadClient {
 public:
  virtual ~LoadClient() = default;
  void start(std::latch& ready) {
    thread_ = std::thread([this, &ready] { run(ready); });
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  const LatencyHistogram& histogram() const { return hist_; }
  const std::string& connectError() const { return connectError_; }

 protected:
  virtual void run(std::latch& ready) = 0;
  LatencyHistogram hist_;       // written by the thread only, read after join()
  std::string connectError_;    // likewise

 private:
  std::thread thread_;
};

// Starts every client and waits until each is connected; if one is not,
// stops and joins them all and throws std::runtime_error ("<what>: ...").
// Then drives the window (driveWindow), joins the clients and merges their
// histograms into result.latency.
void runClients(std::vector<std::unique_ptr<LoadClient>>& clients, Live& live, const std::string& what,
                const WindowOptions& opts, const std::vector<WatchedProcess>& processes, RunResult& result,
                const std::function<void()>& atStart, const std::function<void()>& atEnd);

}  // namespace keel::bench
