#pragma once
// Keel mode: client threads, each with its own KJ event loop and its share
// of the connections to the coordinator(s), keep `concurrency` interactions
// outstanding (spread evenly over the connections; connection c goes to
// coordinator c mod the number of coordinators) through KeelClient::submit,
// while the driver thread runs the window and reads the coordinators' and
// agents' durable-log counters (and a cluster's etcd txn counters) at both
// ends.

#include <kj/async-io.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "bench/run.h"
#include "bench/workload.h"
#include "common/types.h"

namespace keel::bench {

struct Deployment {
  // host:port of each coordinator: one, or the members of a coordinator
  // cluster (connections are spread over them in turn).
  std::vector<std::string> coordinators;
  std::vector<std::pair<std::string, std::string>> agents;  // participant name, host:port
  std::vector<WatchedProcess> processes;                    // CPU accounted for
};

// Told of every answer the load gets (called from the client threads).
class AnswerObserver {
 public:
  virtual ~AnswerObserver() = default;
  // Wall-clock microseconds of the submit and of its answer.
  virtual void answered(std::uint64_t seq, ClientOutcome outcome, Micros submittedUs, Micros answeredUs) = 0;
};

struct LoadOptions {
  std::uint32_t concurrency = 64;
  std::uint32_t connections = 4;
  std::uint32_t threads = 1;  // client threads (at most one per connection)
  bool batch = true;          // KeelClient::enableBatching: submits travel in submitBatch messages
  std::uint32_t batchInFlight = 2;  // ... with at most this many submitBatch messages out per connection
  bool requestIds = false;    // every submit carries a fresh request id (newRequestId)
  WindowOptions window;
  std::uint64_t seed = 1;
  AnswerObserver* observer = nullptr;  // not owned; may be null
  std::function<void()> atWindowStart;  // on the driver thread, right after the window opens
};

// Runs on the caller's thread (`io` is its event loop) plus opts.threads
// client threads. Throws std::runtime_error if the coordinator cannot be
// reached.
RunResult runKeelLoad(kj::AsyncIoContext& io, const Deployment& d, const WorkloadSpec& spec, const LoadOptions& opts);

}  // namespace keel::bench
