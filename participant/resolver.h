#pragma once
// InDoubtResolver: the agent's side of resolution. A branch PREPARED for
// longer than `threshold` asks the coordinator for its outcome and applies
// it (commit or rollback), instead of waiting for the coordinator's drivers
// or sweep. A branch known to be in doubt already is asked at once: one
// prepared under an epoch older than the newest this agent has seen from
// its coordinator node (that incarnation is gone; its successor's recovery
// sweep may have asked for the in-doubt list before the branch was
// recorded), or one the backend says so of (ParticipantBackend::
// knownInDoubt). Rounds run at start, every threshold / 4 (at least 100
// ms; every 100 ms for kSettleWindow after a newer epoch, while the old
// incarnation's prepares still land), when the backend has recorded a
// branch it knows to be in doubt, and when a newer epoch is seen. The coordinator answers from its WAL
// (coordinator/operator.cc): committed only when the COMMIT decision is
// durable; rolled back when it aborted or never recorded the interaction
// (presumed abort); pending while it is still deciding.
//
// Thread: the agent's event loop.

#include <kj/async-io.h>

#include <string>

#include "common/client.h"
#include "participant/backend.h"

namespace keel {

class InDoubtResolver final : private kj::TaskSet::ErrorHandler {
 public:
  InDoubtResolver(kj::AsyncIoContext& io, ParticipantBackend& agent, std::string coordinator, Micros threshold);
  ~InDoubtResolver();
  void start();
  std::uint64_t resolved() const { return resolved_; }

 private:
  void taskFailed(kj::Exception&& e) override;
  kj::Promise<void> loop();
  kj::Promise<void> round();
  void newerEpoch();

  kj::AsyncIoContext& io_;
  ParticipantBackend& agent_;
  const std::string coordinator_;
  const Micros threshold_;
  kj::Own<KeelClient> client_;  // null until connected; dropped on error
  std::uint64_t resolved_ = 0;
  Micros fastUntil_ = 0;                      // monoMicros: rounds every 100 ms until then
  kj::Own<kj::PromiseFulfiller<void>> wake_;  // the wait between rounds, cut short by newerEpoch()
  kj::TaskSet tasks_;
};

}  // namespace keel
