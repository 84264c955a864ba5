#pragma once
// keel-bench --adapter host --host-outage SECONDS: keel-host is killed
// (SIGKILL) while the load runs, kept down for SECONDS and started again on
// its data; afterwards every interaction the outage touched is looked up at
// the coordinator, and the time from "the host serves again" to the
// interaction's completion (every branch confirmed or cancelled) is
// measured.
//
// Touched: unfinished at the coordinator right after the kill
// (listUnfinished), or submitted before the host was back and answered
// after the kill (the load's answers, via AnswerObserver).
//
// An interaction whose host branch voted NO during the outage (its tries
// were not answered) completes at the coordinator at once: the host agent
// cancels those tries on its own once the host is back. Their settling is
// measured at the agent: right before the restart the outage thread looks
// up the host branches of the rolled-back answers so far, then polls the
// agent's status for them every 10 ms until each is finished.
//
// Threads: the outage runs on its own thread with its own event loop and
// coordinator connection; answered() is called from the client threads;
// settle() runs on the caller's after join().

#include <kj/async-io.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench/keel_load.h"
#include "bench/report.h"
#include "common/client.h"
#include "tools/host_process.h"

namespace keel::bench {

struct OutageResult {
  bool fired = false;      // keel-host was running when killed, and served again
  std::string error;       // why not, or what went wrong settling
  double plannedS = 0;     // --host-outage
  double downS = 0;        // measured: the kill to serving again
  double atS = 0;          // the kill, seconds into the measured window
  // Answers the load got while keel-host was down, by outcome.
  std::uint64_t answeredCommitted = 0, answeredRolledBack = 0, answeredInDoubt = 0, answeredOther = 0;
  // The interactions the outage touched, once settled: how many, how many
  // were already complete before the host was back, and how many were
  // still unfinished when settle() gave up.
  std::uint64_t touched = 0, completeBeforeBack = 0, unsettled = 0;
  // completedUs - the moment keel-host served again, over the touched
  // interactions completed after it (microseconds).
  std::uint64_t settledCount = 0, settledP50Us = 0, settledP99Us = 0, settledMaxUs = 0;
  // The host branches that voted NO during the outage, at the agent: the
  // first status poll that saw each finished - serving again (10 ms
  // polls); how many were still unfinished when polling gave up, and how
  // many rolled-back answers came after the lookup (not followed).
  std::uint64_t agentCancelCount = 0, agentCancelP50Us = 0, agentCancelP99Us = 0, agentCancelMaxUs = 0;
  // ... and how many the agent has no record of (it voted NO at once
  // because the host was known down: no try left it, nothing to cancel).
  std::uint64_t agentCancelUnfinished = 0, agentCancelNotFollowed = 0, agentCancelNoRecord = 0;
};

class HostOutage final : public AnswerObserver {
 public:
  // The kill comes atS seconds after begin(); keel-host stays down downS.
  // hostAgent: the host agent's participant name and host:port.
  HostOutage(HostProcess& host, std::string coordinator, std::pair<std::string, std::string> hostAgent, double atS,
             double downS);
  ~HostOutage() override;

  void begin();  // the measured window has opened: starts the outage thread
  void join();   // waits for the outage (the kill and the restart) to be over

  void answered(std::uint64_t seq, ClientOutcome outcome, Micros submittedUs, Micros answeredUs) override;

  // After join() and the end of the load: waits (up to `limit`) until the
  // coordinator has no unfinished interaction, then queries every touched
  // one.
  OutageResult settle(kj::AsyncIoContext& io, KeelClient& coordinator, kj::Duration limit);

 private:
  void run();
  // After the restart: polls the agent until each of `xids` is finished.
  void followCancels(kj::AsyncIoContext& io, std::vector<Xid> xids);

  HostProcess& host_;
  std::string coordinator_;
  std::pair<std::string, std::string> hostAgent_;
  double atS_, downS_;
  std::thread thread_;
  std::atomic<Micros> killUs_{0}, backUs_{0};  // 0: not yet
  std::mutex mu_;
  std::vector<std::uint64_t> seqs_;    // GUARDED_BY(mu_) touched, maybe repeated
  std::vector<std::uint64_t> noSeqs_;  // GUARDED_BY(mu_) answered rolled back while the host was down
  OutageResult r_;                   // GUARDED_BY(mu_) until join()
};

void printOutage(std::FILE* out, const OutageResult& r);
void addOutageFields(JsonObject& j, const OutageResult& r);

}  // namespace keel::bench
