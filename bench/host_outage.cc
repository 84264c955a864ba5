#include "bench/host_outage.h"

#include <algorithm>
#include <csignal>
#include <cstdio>

#include "common/wire.h"

namespace keel::bench {

namespace {

kj::Duration secondsToKj(double s) { return std::int64_t(s * 1e6) * kj::MICROSECONDS; }

// The interactions still unfinished right after the kill: more than the
// load keeps outstanding, so all of them.
constexpr std::uint32_t kListLimit = 100000;
// Queries in flight at once.
constexpr std::size_t kQueryWave = 256;
// How often, and how long at most, the agent is asked about the branches
// that voted NO during the outage.
constexpr auto kFollowPoll = 10 * kj::MILLISECONDS;
constexpr auto kFollowLimit = 30 * kj::SECONDS;
constexpr std::size_t kFollowSample = 2000;  // host branches that voted NO followed to their cancels

// The coordinator's records of `seqs` (those it knows).
std::vector<QueryResult> queryAll(kj::AsyncIoContext& io, KeelClient& coordinator, const std::vector<std::uint64_t>& seqs) {
  std::vector<QueryResult> out;
  for (std::size_t i = 0; i < seqs.size(); i += kQueryWave) {
    kj::Vector<kj::Promise<std::optional<QueryResult>>> wave;
    for (std::size_t k = i; k < std::min(seqs.size(), i + kQueryWave); ++k) wave.add(coordinator.query(seqs[k]));
    for (auto& q : kj::joinPromises(wave.releaseAsArray()).wait(io.waitScope)) {
      if (q) out.push_back(std::move(*q));
    }
  }
  return out;
}

// Sorts `us` and sets its count, median, p99 and max.
void fillPercentiles(std::vector<std::uint64_t>& us, std::uint64_t& count, std::uint64_t& p50, std::uint64_t& p99,
                     std::uint64_t& max) {
  std::sort(us.begin(), us.end());
  count = us.size();
  if (us.empty()) return;
  auto rank = [&](double p) { return us[std::min(us.size() - 1, std::size_t(p * double(us.size())))]; };
  p50 = rank(0.5);
  p99 = rank(0.99);
  max = us.back();
}

}  // namespace

HostOutage::HostOutage(HostProcess& host, std::string coordinator, std::pair<std::string, std::string> hostAgent,
                       double atS, double downS)
    : host_(host), coordinator_(std::move(coordinator)), hostAgent_(std::move(hostAgent)), atS_(atS), downS_(downS) {
  r_.plannedS = downS;
  r_.atS = atS;
}

HostOutage::~HostOutage() { join(); }

void HostOutage::begin() { thread_ = std::thread([this] { run(); }); }

void HostOutage::join() {
  if (thread_.joinable()) thread_.join();
}

void HostOutage::run() {
  try {
    auto io = kj::setupAsyncIo();
    auto& timer = io.provider->getTimer();
    auto client = KeelClient::connect(io, coordinator_).wait(io.waitScope);
    timer.afterDelay(secondsToKj(atS_)).wait(io.waitScope);
    const bool wasRunning = host_.running();
    std::fprintf(stderr, "\nkeel-bench: SIGKILL keel-host (pid %d), restarting it after %.1f s\n", int(host_.pid()),
                 downS_);
    auto killMono = monoMicros();
    killUs_.store(wallMicros());
    host_.kill(SIGKILL);
    auto unfinished = client->listUnfinished(kListLimit).wait(io.waitScope);
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& rec : unfinished) seqs_.push_back(rec.seq);
    }
    timer.afterDelay(secondsToKj(downS_)).wait(io.waitScope);
    // The host branches of what was rolled back so far (they voted NO).
    // At most the last kFollowSample of them are followed: a host known
    // down makes prepares vote NO at once, so a closed-loop load answers
    // tens of thousands a second, and looking them all up would delay the
    // restart (and load the coordinator) by seconds. The rest are counted
    // as not followed.
    std::vector<std::uint64_t> noSeqs;
    std::size_t allNo = 0;
    {
      std::lock_guard<std::mutex> lk(mu_);
      allNo = noSeqs_.size();
      auto from = noSeqs_.size() > kFollowSample ? noSeqs_.end() - kFollowSample : noSeqs_.begin();
      noSeqs.assign(from, noSeqs_.end());
    }
    std::vector<Xid> xids;
    for (auto& q : queryAll(io, *client, noSeqs)) {
      for (const auto& b : q.interaction.branches) {
        if (b.participant == hostAgent_.first) xids.push_back(Xid{q.interaction.seq, b.branch});
      }
    }
    host_.waitExit(std::chrono::milliseconds(5000));
    host_.start();  // returns once it serves (its ready file)
    backUs_.store(wallMicros());
    {
      std::lock_guard<std::mutex> lk(mu_);
      r_.downS = double(monoMicros() - killMono) / 1e6;
      r_.fired = wasRunning;
      // Beyond the sample, and rolled back during the lookup and the restart.
      r_.agentCancelNotFollowed += (allNo - noSeqs.size()) + (noSeqs_.size() - allNo);
      if (!wasRunning) r_.error = "keel-host was not running when the outage was due";
      std::fprintf(stderr,
                   "keel-bench: keel-host serving again after %.2f s (%zu interactions unfinished at the kill, %zu "
                   "host branches voted NO meanwhile)\n",
                   r_.downS, unfinished.size(), xids.size());
    }
    followCancels(io, std::move(xids));
  } catch (const kj::Exception& e) {
    std::lock_guard<std::mutex> lk(mu_);
    r_.error = std::string("host outage: ") + e.getDescription().cStr();
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk(mu_);
    r_.error = std::string("host outage: ") + e.what();
  }
}

void HostOutage::followCancels(kj::AsyncIoContext& io, std::vector<Xid> xids) {
  auto agent = AgentClient::connect(io, hostAgent_.first + "@" + hostAgent_.second).wait(io.waitScope);
  auto& timer = io.provider->getTimer();
  const Micros back = backUs_.load();
  const auto until = timer.now() + kFollowLimit;
  std::vector<std::uint64_t> after;
  std::uint64_t noRecord = 0;
  while (!xids.empty() && timer.now() < until) {
    auto req = agent->capability().statusRequest();
    auto l = req.initXids(unsigned(xids.size()));
    for (unsigned i = 0; i < xids.size(); ++i) fillXid(l[i], xids[i]);
    std::vector<Xid> open;
    try {
      auto resp = req.send().wait(io.waitScope);
      const Micros now = wallMicros();
      auto infos = resp.getBranches();
      auto known = resp.getKnown();
      for (unsigned i = 0; i < xids.size(); ++i) {
        if (i >= known.size() || !known[i]) {
          ++noRecord;  // voted NO before recording an intent: no try left the agent
          continue;
        }
        auto st = i < infos.size() ? infos[i].getState() : wire::BranchState::ACTIVE;
        if (st == wire::BranchState::COMMITTED || st == wire::BranchState::ROLLED_BACK) {
          after.push_back(now > back ? now - back : 0);
        } else {
          open.push_back(xids[i]);
        }
      }
      xids = std::move(open);
    } catch (const kj::Exception&) {
      // The call failed (the agent busy or gone): ask again. (Only the
      // empty status, the coordinator's health probe, is refused while the
      // host is down; a status for branches is answered.)
    }
    if (!xids.empty()) timer.afterDelay(kFollowPoll).wait(io.waitScope);
  }
  std::lock_guard<std::mutex> lk(mu_);
  r_.agentCancelUnfinished = xids.size();
  r_.agentCancelNoRecord = noRecord;
  fillPercentiles(after, r_.agentCancelCount, r_.agentCancelP50Us, r_.agentCancelP99Us, r_.agentCancelMaxUs);
}

void HostOutage::answered(std::uint64_t seq, ClientOutcome outcome, Micros submittedUs, Micros answeredUs) {
  const Micros kill = killUs_.load(std::memory_order_relaxed);
  const Micros back = backUs_.load(std::memory_order_relaxed);
  if (kill == 0 || answeredUs < kill || (back != 0 && submittedUs >= back)) return;
  std::lock_guard<std::mutex> lk(mu_);
  if (seq != 0) seqs_.push_back(seq);
  if (back != 0 && answeredUs >= back) return;  // answered after the outage
  switch (outcome) {
    case ClientOutcome::Committed: ++r_.answeredCommitted; break;
    case ClientOutcome::RolledBack:
      ++r_.answeredRolledBack;
      if (back == 0) {
        noSeqs_.push_back(seq);
      } else {
        ++r_.agentCancelNotFollowed;  // after the lookup before the restart
      }
      break;
    case ClientOutcome::InDoubt: ++r_.answeredInDoubt; break;
    default: ++r_.answeredOther;
  }
}

OutageResult HostOutage::settle(kj::AsyncIoContext& io, KeelClient& coordinator, kj::Duration limit) {
  join();
  std::lock_guard<std::mutex> lk(mu_);
  OutageResult r = r_;
  const Micros kill = killUs_.load(), back = backUs_.load();
  if (kill == 0 || back == 0) {
    if (r.error.empty()) r.error = "the outage did not happen (the load ended first?)";
    return r;
  }
  auto& timer = io.provider->getTimer();
  const auto until = timer.now() + limit;
  while (coordinator.info().wait(io.waitScope).unfinished != 0 && timer.now() < until) {
    timer.afterDelay(50 * kj::MILLISECONDS).wait(io.waitScope);
  }
  std::vector<std::uint64_t> seqs = seqs_;
  std::sort(seqs.begin(), seqs.end());
  seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
  std::vector<std::uint64_t> after;
  for (auto& q : queryAll(io, coordinator, seqs)) {
    const auto& it = q.interaction;
    // Complete before the kill, or begun after the host was back: not the
    // outage's.
    if ((it.completedUs != 0 && it.completedUs <= kill) || it.createdUs >= back) continue;
    ++r.touched;
    if (!it.finished() || it.completedUs == 0) {
      ++r.unsettled;
    } else if (it.completedUs < back) {
      ++r.completeBeforeBack;
    } else {
      after.push_back(it.completedUs - back);
    }
  }
  fillPercentiles(after, r.settledCount, r.settledP50Us, r.settledP99Us, r.settledMaxUs);
  return r;
}

void printOutage(std::FILE* out, const OutageResult& r) {
  std::fprintf(out, "host outage: keel-host SIGKILLed %.2f s into the window, serving again %.2f s later (asked %g s)%s%s\n",
               r.atS, r.downS, r.plannedS, r.fired ? "" : "  NOT FIRED", r.error.empty() ? "" : ("  " + r.error).c_str());
  std::fprintf(out, "  answered while it was down: committed %llu  rolled back %llu  in doubt %llu  other %llu\n",
               (unsigned long long)r.answeredCommitted, (unsigned long long)r.answeredRolledBack,
               (unsigned long long)r.answeredInDoubt, (unsigned long long)r.answeredOther);
  std::fprintf(out,
               "  settled after the host was back (completed - serving again), %llu interactions unfinished or "
               "failed while it was down:\n    median %.1f ms  p99 %.1f ms  max %.1f ms   (%llu complete before it was "
               "back, %llu still unfinished)\n",
               (unsigned long long)r.settledCount, r.settledP50Us / 1e3, r.settledP99Us / 1e3, r.settledMaxUs / 1e3,
               (unsigned long long)r.completeBeforeBack, (unsigned long long)r.unsettled);
  std::fprintf(out,
               "  the host agent's own cancels of the %llu host branches that voted NO meanwhile (their interactions "
               "completed at once), finished - serving again:\n    median %.1f ms  p99 %.1f ms  max %.1f ms   (%llu "
               "still unfinished, %llu rolled back during the restart not followed, %llu voted NO without a record: "
               "nothing to cancel)\n",
               (unsigned long long)r.agentCancelCount, r.agentCancelP50Us / 1e3, r.agentCancelP99Us / 1e3,
               r.agentCancelMaxUs / 1e3, (unsigned long long)r.agentCancelUnfinished,
               (unsigned long long)r.agentCancelNotFollowed, (unsigned long long)r.agentCancelNoRecord);
}

void addOutageFields(JsonObject& j, const OutageResult& r) {
  j.add("host_outage_s", r.plannedS)
      .addRaw("host_outage_fired", r.fired ? "true" : "false")
      .add("host_outage_at_s", r.atS)
      .add("host_outage_down_s", r.downS)
      .add("outage_answered_committed", r.answeredCommitted)
      .add("outage_answered_rolled_back", r.answeredRolledBack)
      .add("outage_answered_in_doubt", r.answeredInDoubt)
      .add("outage_answered_other", r.answeredOther)
      .add("outage_touched", r.touched)
      .add("outage_complete_before_back", r.completeBeforeBack)
      .add("outage_unsettled", r.unsettled)
      .add("settled_after_back_count", r.settledCount)
      .add("settled_after_back_p50_us", r.settledP50Us)
      .add("settled_after_back_p99_us", r.settledP99Us)
      .add("settled_after_back_max_us", r.settledMaxUs)
      .add("agent_cancels_count", r.agentCancelCount)
      .add("agent_cancels_after_back_p50_us", r.agentCancelP50Us)
      .add("agent_cancels_after_back_p99_us", r.agentCancelP99Us)
      .add("agent_cancels_after_back_max_us", r.agentCancelMaxUs)
      .add("agent_cancels_unfinished", r.agentCancelUnfinished)
      .add("agent_cancels_not_followed", r.agentCancelNotFollowed)
      .add("agent_cancels_no_record", r.agentCancelNoRecord);
  if (!r.error.empty()) j.add("host_outage_error", r.error);
}

}  // namespace keel::bench
