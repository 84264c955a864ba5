#include "participant/resolver.h"

#include "common/fault.h"
#include "common/log.h"

namespace keel {

InDoubtResolver::InDoubtResolver(kj::AsyncIoContext& io, ParticipantBackend& agent, std::string coordinator, Micros threshold)
    : io_(io), agent_(agent), coordinator_(std::move(coordinator)), threshold_(threshold), tasks_(*this) {}

void InDoubtResolver::start() { tasks_.add(loop()); }

void InDoubtResolver::taskFailed(kj::Exception&& e) {
  KEEL_LOG_ERROR("in-doubt resolver stopped: {}", describeFault(e));
}

kj::Promise<void> InDoubtResolver::loop() {
  // The first round runs at once: a restarted agent's branches may have
  // been in doubt for as long as it was down.
  auto period = std::max<Micros>(threshold_ / 4, 100'000);
  return round()
      .catch_([this](kj::Exception&& e) {
        client_ = nullptr;  // reconnect next round
        KEEL_LOG_WARN("in-doubt resolver: coordinator {} not reachable: {}", coordinator_,
                      describeFault(e));
      })
      .then([this, period]() {
        auto recorded = agent_.inDoubtRecorded().catch_([](kj::Exception&&) -> kj::Promise<void> {
          return kj::NEVER_DONE;  // only the timer wakes us then
        });
        return io_.provider->getTimer().afterDelay(period * kj::MICROSECONDS).exclusiveJoin(kj::mv(recorded));
      })
      .then([this]() { return loop(); });
}

kj::Promise<void> InDoubtResolver::round() {
  Micros now = wallMicros();
  std::vector<BranchRecord> overdue;
  for (auto& b : agent_.unfinishedBranches()) {
    if (b.state != BranchStatus::Prepared) continue;
    if (b.preparedUs + threshold_ < now || agent_.knownInDoubt(b)) overdue.push_back(std::move(b));
  }
  if (overdue.empty()) return kj::READY_NOW;
  kj::Promise<void> ready = kj::READY_NOW;
  if (client_.get() == nullptr) {
    ready = KeelClient::connect(io_, coordinator_).then([this](kj::Own<KeelClient> c) { client_ = kj::mv(c); });
  }
  return ready.then([this, overdue = std::move(overdue)]() mutable {
    kj::Vector<kj::Promise<void>> asks;
    for (auto& b : overdue) {
      auto req = client_->capability().outcomeRequest();
      req.setSeq(b.xid.seq);
      Xid xid = b.xid;
      // Speak with the newest epoch of that coordinator this agent knows, so
      // that fencing does not refuse our own resolution.
      std::uint64_t epoch = std::max(b.epoch, agent_.newestEpoch(seqNode(b.xid.seq)));
      Micros age = wallMicros() - b.preparedUs;
      asks.add(req.send().then([this, xid, epoch, age](auto resp) -> kj::Promise<void> {
        auto o = resp.getOutcome();
        if (o == wire::DecisionOutcome::COMMITTED || o == wire::DecisionOutcome::ROLLED_BACK) {
          bool commit = o == wire::DecisionOutcome::COMMITTED;
          KEEL_LOG_INFO("branch {} in doubt for {} ms: coordinator says {}; applying", xid.str(), age / 1000,
                        commit ? "committed" : "rolled back");
          auto done = commit ? agent_.commit(epoch, {xid}) : agent_.rollback(epoch, {xid});
          return done.then([this](std::vector<BranchOutcome>) { ++resolved_; });
        }
        return kj::READY_NOW;  // pending or unknown: ask again next round
      }));
    }
    return kj::joinPromises(asks.releaseAsArray());
  });
}

}  // namespace keel
