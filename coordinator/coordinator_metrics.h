#pragma once
// What the coordinator counts for /metrics (coordinator/admin.cc renders it;
// docs/operations.md, "Metrics", says what each number means).
//
// Updated on the event loop where each event happens (coordinator.cc,
// drivers.cc, participant_link.cc, coordinator_server.cc); read by the admin
// plane's thread. Everything here is an atomic, and the set of participants
// is fixed when the coordinator is made (its config), so nothing here is
// ever resized while a scrape reads it.

#include <array>
#include <map>
#include <memory>
#include <string>

#include "common/metrics.h"
#include "common/types.h"

namespace keel {

// One participant as the coordinator sees it: its calls (each message, a
// batch of prepares or phase-2 XIDs, counts once) and its health.
struct ParticipantMetrics {
  std::unique_ptr<Histogram> callLatency = Histogram::latency();  // message sent -> answer (or failure)
  Counter callFailures;                                            // no answer, refused, lost
  std::unique_ptr<Histogram> prepareBatch = Histogram::sizes();   // prepares per prepareBatch message
  std::unique_ptr<Histogram> phase2Batch = Histogram::sizes();    // XIDs per commit / rollback message
  std::atomic<bool> up{true};
};

struct CoordinatorMetrics {
  // Answers clients heard, by outcome (ClientOutcome; replays of a request
  // id included).
  std::array<Counter, kMaxClientOutcome + 1> answers;
  // Interactions finished (final record durable), by final state.
  Counter committed, rolledBack, heuristicMixed, heuristicUnknown;
  // Latencies, monotonic clock.
  std::unique_ptr<Histogram> submitToAnswer = Histogram::latency();  // seq assigned -> the client's answer
  std::unique_ptr<Histogram> prepare = Histogram::latency();         // prepares sent -> all votes (or the first NO)
  std::unique_ptr<Histogram> decisionWrite = Histogram::latency();   // COMMIT decision queued -> durable
  std::unique_ptr<Histogram> phase2 = Histogram::latency();          // COMMIT durable -> every branch committed
  // Window of inconsistency of a failed interaction: its first failure ->
  // every branch confirmed (wall clock; what `keelctl stats` reports).
  std::unique_ptr<Histogram> inconsistency = Histogram::latency();
  Counter rollbackAttempts;  // rollback driver rounds (the first one included)
  Counter phase2Retries;     // commit driver rounds after the first
  std::unique_ptr<Histogram> submitBatch = Histogram::sizes();  // interactions per submitBatch call

  // Participants by name (the config's, made before serving; never changed after).
  std::map<std::string, std::unique_ptr<ParticipantMetrics>> participants;
  ParticipantMetrics* participant(const std::string& name) {
    auto at = participants.find(name);
    return at == participants.end() ? nullptr : at->second.get();
  }
};

}  // namespace keel
