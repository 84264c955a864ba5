#pragma once
// InDoubtResolver: the agent's side of resolution. A branch PREPARED for
// longer than `threshold`, or one the backend knows to be in doubt already
// (ParticipantBackend::knownInDoubt: asked at once), asks the coordinator
// for its outcome and applies it (commit or rollback), instead of waiting
// for the coordinator's drivers or sweep. Rounds run at start, every
// threshold / 4 (at least 100 ms), and when the backend has recorded a
// branch it knows to be in doubt. The coordinator answers from its WAL
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
  void start();
  std::uint64_t resolved() const { return resolved_; }

 private:
  void taskFailed(kj::Exception&& e) override;
  kj::Promise<void> loop();
  kj::Promise<void> round();

  kj::AsyncIoContext& io_;
  ParticipantBackend& agent_;
  const std::string coordinator_;
  const Micros threshold_;
  kj::Own<KeelClient> client_;  // null until connected; dropped on error
  std::uint64_t resolved_ = 0;
  kj::TaskSet tasks_;
};

}  // namespace keel
