#pragma once
// HostAgent: a participant whose host system cannot prepare, only try,
// confirm and cancel over HTTP (adapter host; the contract: docs/hosts.md).
//
// A branch's operations (debit, credit) each map onto the calls the agent's
// [host.operations.NAME] declares. The branch log records intent before
// every call and the host's answer after it (BranchRecord::hostStep):
//
//  (none) --prepare--> ACTIVE trying       durable BEFORE the first try leaves
//  ACTIVE trying --every try 200--> PREPARED tried (refs)   durable, then YES
//  ACTIVE trying --refused / breach / budget spent--> ACTIVE cancelling
//                  (durable, then NO; the agent cancels what may have been
//                  tried, on its own) or ROLLED BACK when nothing reached
//                  the host
//  PREPARED tried --commit--> PREPARED confirming  durable BEFORE the first confirm
//  ACTIVE/PREPARED --rollback--> cancelling        durable BEFORE the first cancel
//                  (a branch already confirming goes on confirming: the
//                  host may have confirmed part of it; the answer says so)
//  confirming --every confirm acknowledged--> COMMITTED
//  cancelling --every cancel acknowledged--> ROLLED BACK
//
// Confirms and cancels are driven by the agent itself (the "driver") until
// the host acknowledges each, with capped backoff, surviving restarts (start()
// resumes every confirming and cancelling branch, and cancels what an
// earlier run left trying). A coordinator's commit or rollback call waits
// up to phase2_wait_ms for the driver and otherwise fails, to be retried; the
// coordinator's health probe (status) fails while the host is down, so its
// drivers wake the moment the host answers again.
//
// While the host is down one driver loop probes it and the others wait for
// its answer; prepares vote NO at once rather than wait out try_budget_ms
// (one per retry_max_ms is let through to probe when no driver loop does),
// and a try that fails while the host is known down is not retried.
// HostHttp keeps at most [host] max_connections calls in flight.
//
// Thread: the agent's KJ event loop; log jobs on the branch log's writer.

#include <kj/async-io.h>

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/config.h"
#include "participant/adapters/host_http.h"
#include "participant/backend.h"
#include "participant/branch_log.h"

namespace keel {

// HostStep (BranchRecord::hostStep) and hostStepName: common/records.h.

struct HostAgentOptions {
  std::string name;
  std::string dataDir;
  std::size_t mapSizeBytes = std::size_t(1) << 30;
  bool redo = false;  // the log's redo mode (common/redo_log.h)
  HostConfig host;
};

// At most this many operations in one host branch: each is an HTTP call.
constexpr std::size_t kMaxHostOpsPerBranch = 64;

class HostAgent final : public ParticipantBackend, private kj::TaskSet::ErrorHandler {
 public:
  // Opens the branch log and checks every record decodes: reads only.
  HostAgent(kj::AsyncIoProvider& io, HostAgentOptions opts);
  ~HostAgent() noexcept override;
  // Cancels what an earlier run left trying; resumes confirming and
  // cancelling branches (the driver runs once the event loop does).
  void start() override;

  const std::string& name() const override { return opts_.name; }
  kj::Promise<PrepareResult> prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) override;
  kj::Promise<PrepareResult> execute(std::uint64_t epoch, Xid xid, std::vector<Op> ops) override;
  kj::Promise<std::vector<BranchOutcome>> commit(std::uint64_t epoch, std::vector<Xid> xids) override;
  kj::Promise<std::vector<BranchOutcome>> rollback(std::uint64_t epoch, std::vector<Xid> xids) override;
  kj::Promise<OnePhaseResult> commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops) override;
  std::optional<std::string> unavailable() const override;
  // PREPARED (step tried, with the host's references) is durable before a YES.
  Batching batching() const override { return {0, 0, true}; }

  BranchLog& branchLog() override { return log_; }
  const BranchLog& branchLog() const override { return log_; }

  // Branches whose confirms or cancels are being driven (tests, status).
  std::size_t driving() const { return pending_.size(); }

 private:
  // A branch whose confirms (or cancels) the driver sends until the host
  // acknowledges each.
  struct Pending {
    bool confirm = false;
    std::vector<Op> ops;
    std::vector<bool> done;
    std::vector<HostAnswer::Kind> ends;
    std::uint32_t attempts = 0;
    std::string lastError;
    // The branch's end for waiting calls: Committed, RolledBack or Unknown.
    std::vector<kj::Own<kj::PromiseFulfiller<BranchOutcome>>> waiters;
  };
  struct TryOutcome {
    bool allTried = false;
    bool needCancel = false;  // some try may have reached the host
    std::string reason;
    std::vector<std::string> refs;
  };

  std::optional<std::string> validate(const std::vector<Op>& ops) const;
  const HostOperation& operation(const Op& op) const;
  std::string body(Xid xid, std::size_t index, const Op* op) const;
  // Intent record, the tries, then PREPARED (YES) or cancelling (NO).
  kj::Promise<PrepareResult> prepareBranch(std::uint64_t epoch, Xid xid, std::vector<Op> ops, bool onePhase);
  kj::Promise<TryOutcome> tryAll(Xid xid, std::vector<Op> ops);
  kj::Promise<HostAnswer> tryOne(Xid xid, std::size_t index, Op op, Micros deadlineUs, std::uint32_t attempt);
  kj::Promise<PrepareResult> afterTries(std::uint64_t epoch, Xid xid, std::vector<Op> ops, bool onePhase, TryOutcome t);

  // Starts driving `xid` (no-op if it is already driven).
  void enqueue(Xid xid, bool confirm, std::vector<Op> ops);
  // The branch's end, or a fault after phase2_wait_ms (the driver goes on).
  kj::Promise<BranchOutcome> waitFor(Xid xid);
  kj::Promise<void> drive(Xid xid);
  kj::Promise<void> settle(Xid xid);
  kj::Duration backoff(std::uint32_t attempts) const;

  // Host health, from every call's answer.
  void hostAnswered();
  void hostFault(const std::string& why);
  // A fault answer: hostFault when the host did not answer at all, else
  // hostAnswered (a 5xx is a failing call, not a host down).
  void noteFault(const HostAnswer& a);
  kj::Promise<void> hostBack();

  kj::AsyncIoProvider& io_;
  HostAgentOptions opts_;
  BranchLog log_;
  HostHttp http_;
  std::map<Xid, Pending> pending_;
  std::set<Xid> trying_;  // prepares whose tries are in flight
  bool hostDown_ = false;
  bool probing_ = false;  // one driver loop is probing the down host
  Micros downSinceUs_ = 0;
  Micros lastTryProbeUs_ = 0;  // the last prepare let through to probe a down host
  std::string lastError_;
  std::vector<kj::Own<kj::PromiseFulfiller<void>>> backWaiters_;
  void taskFailed(kj::Exception&& e) override;
  kj::TaskSet tasks_;
};

}  // namespace keel
