// Coordinator: release floors, what keeps the agents' branch logs bounded.
//
// An agent keeps a record of every branch it saw, finished ones included,
// because a finished record (a tombstone above all) is what refuses a late
// duplicate prepare of its branch. Once this node has archived an
// interaction, it is finished at every participant, durably, and no call
// for it is needed any more; so every few seconds this node tells each
// participant its release floor (Participant.release): every seq of this
// node below it, except the `keep` list, is released. The agent then
// refuses any prepare, execute or one-phase call of a released seq and
// drops its finished records of them.
//
// The floor is the smallest of:
//   - the first record of this node in the hot WAL that is not passed over
//     (WalStore::releaseScan: a finished one not archived yet, or a young
//     unfinished one); unfinished or heuristic records older than
//     hot_retention_s never leave the hot WAL on their own, so they are
//     passed over into `keep` (at most 1024) rather than holding every
//     agent's log back for as long as they stay;
//   - the first interaction in memory (live_) not kept: one in its first
//     phase has no record yet;
//   - the next seq as it was at the previous pass (>= 5 s ago): a seq
//     handed out but whose interaction is not in memory yet (its
//     continuation not run) is below the next seq, never below that.
// So everything below the floor and not kept is archived, or never left
// this coordinator. Refusing a prepare is always safe (a NO vote), so a
// floor that is too high costs aborts, never a wrong outcome; one too low
// only keeps records longer.
//
// A coordinator restored from a backup releases nothing until its sweep is
// done and every seq the lost WAL may have decided is settled: the agents'
// finished records are its evidence (Coordinator::settleRestored).
// docs/protocol.md ("Release") states the rule; docs/operations.md shows
// what an operator sees.

#include <algorithm>

#include "common/fault.h"
#include "common/log.h"
#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"

namespace keel {

Coordinator::ReleasePlan Coordinator::releasePlan() {
  ReleasePlan plan;
  const std::uint16_t node = cfg_.nodeId;
  const std::uint64_t nextNow = seqs_->nextSeq();
  const std::uint64_t cap = releaseNextCap_;
  releaseNextCap_ = nextNow;
  if (cap == 0) return plan;  // the first pass only samples the next seq
  if (restored_ && (!sweepDone() || !settlingRestored_.empty())) return plan;
  Micros now = wallMicros();
  Micros keep = Micros(cfg_.hotRetentionS) * 1'000'000;
  auto scan = wal_.releaseScan(node, now > keep ? now - keep : 0, kMaxReleaseKeep);
  std::uint64_t floor = std::min(cap, scan.stop.value_or(cap));
  for (auto it = live_.lower_bound(makeSeq(node, 0)); it != live_.end() && seqNode(it->first) == node; ++it) {
    if (it->first >= floor) break;
    if (!std::binary_search(scan.keep.begin(), scan.keep.end(), it->first)) {
      floor = it->first;
      break;
    }
  }
  if (seqCounter(floor) == 0) return plan;
  plan.floor = floor;
  for (auto k : scan.keep) {
    if (k < floor) plan.keep.push_back(k);
  }
  return plan;
}

kj::Promise<void> Coordinator::releaseFloors() {
  auto again = [this](kj::Duration d) {
    return io_.provider->getTimer().afterDelay(d).then([this]() { return releaseFloors(); });
  };
  ReleasePlan plan = releasePlan();
  if (plan.floor == 0) return again(kReleaseEvery);
  auto more = std::make_shared<bool>(false);
  kj::Vector<kj::Promise<void>> calls;
  for (auto& [name, l] : links_) {
    auto& sent = releaseSent_[name];
    if (sent.floor == plan.floor && sent.keep == plan.keep && !sent.more) continue;
    calls.add(l->release(epoch_, cfg_.nodeId, plan.floor, plan.keep, callDeadline())
                  .then(
                      [this, name = name, plan, more](ParticipantLink::ReleaseReply r) {
                        auto& s = releaseSent_[name];
                        s.floor = plan.floor;
                        s.keep = plan.keep;
                        s.more = r.more;
                        *more = *more || r.more;
                        s.dropped += r.dropped;
                        releaseDropped_ += r.dropped;
                      },
                      [name = name](kj::Exception&& e) {
                        // Tried again at the next pass; the agent keeps its
                        // records meanwhile, which is always safe.
                        KEEL_LOG_DEBUG("release: {} did not take the floor ({})", name, describeFault(e));
                      })
                  .eagerlyEvaluate(nullptr));
  }
  return kj::joinPromises(calls.releaseAsArray()).then([this, more, plan, again]() {
    Micros t = wallMicros();
    if (releaseDropped_ > 0 && t - releaseLogUs_ >= 60'000'000) {
      KEEL_LOG_INFO("release: participants dropped {} finished branch record(s) below seq {} ({} kept above it)",
                    releaseDropped_, seqText(plan.floor), plan.keep.size());
      releaseDropped_ = 0;
      releaseLogUs_ = t;
    }
    return again(*more ? 100 * kj::MILLISECONDS : kReleaseEvery);
  });
}

}  // namespace keel
