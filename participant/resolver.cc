#include "participant/resolver.h"

#include "common/fault.h"
#include "common/log.h"

namespace keel {

InDoubtResolver::InDoubtResolver(kj::AsyncIoContext& io, ParticipantBackend& agent, std::string coordinator, Micros threshold)
    : io_(io), agent_(agent), coordinator_(std::move(coordinator)), threshold_(threshold), tasks_(*this) {}

namespace {

// How long after a newer epoch the old incarnation's prepares may still be
// landing here (a postgres pipeline waits up to a lock_timeout per
// statement): rounds run every 100 ms meanwhile.
constexpr Micros kSettleWindow = 2'000'000;

}  // namespace

InDoubtResolver::~InDoubtResolver() { agent_.branchLog().onNewerEpoch(nullptr); }

void InDoubtResolver::start() {
  agent_.branchLog().onNewerEpoch([this] { newerEpoch(); });
  tasks_.add(loop());
}

void InDoubtResolver::newerEpoch() {
  fastUntil_ = monoMicros() + kSettleWindow;
  if (wake_.get() != nullptr && wake_->isWaiting()) wake_->fulfill();
}

void InDoubtResolver::taskFailed(kj::Exception&& e) {
  KEEL_LOG_ERROR("in-doubt resolver stopped: {}", describeFault(e));
}

kj::Promise<void> InDoubtResolver::loop() {
  // The first round runs at once: a restarted agent's branches may have
  // been in doubt for as long as it was down.
  return round()
      .catch_([this](kj::Exception&& e) {
        client_ = nullptr;  // reconnect next round
        KEEL_LOG_WARN("in-doubt resolver: coordinator {} not reachable: {}", coordinator_,
                      describeFault(e));
      })
      .then([this]() {
        Micros period = monoMicros() < fastUntil_ ? 100'000 : std::max<Micros>(threshold_ / 4, 100'000);
        auto recorded = agent_.inDoubtRecorded().catch_([](kj::Exception&&) -> kj::Promise<void> {
          return kj::NEVER_DONE;  // only the timer wakes us then
        });
        auto paf = kj::newPromiseAndFulfiller<void>();
        wake_ = kj::mv(paf.fulfiller);
        return io_.provider->getTimer()
            .afterDelay(period * kj::MICROSECONDS)
            .exclusiveJoin(kj::mv(recorded))
            .exclusiveJoin(kj::mv(paf.promise));
      })
      .then([this]() { return loop(); });
}

kj::Promise<void> InDoubtResolver::round() {
  Micros now = wallMicros();
  std::vector<BranchRecord> overdue;
  for (auto& b : agent_.unfinishedBranches()) {
    if (b.state != BranchStatus::Prepared) continue;
    bool orphaned = b.epoch < agent_.newestEpoch(seqNode(b.xid.seq));  // its coordinator incarnation is gone
    if (b.preparedUs + threshold_ < now || orphaned || agent_.knownInDoubt(b)) overdue.push_back(std::move(b));
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
      }).eagerlyEvaluate(nullptr));  // applied when its answer comes, not when the slowest ask's does
    }
    return kj::joinPromises(asks.releaseAsArray());
  });
}

}  // namespace keel
