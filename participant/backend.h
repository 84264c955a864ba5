#pragma once
// ParticipantBackend: what an agent does with its host system, whatever the
// resource adapter (the embedded ledger: participant/agent.h; PostgreSQL:
// participant/pg_agent.h). The RPC shell (agent_server.h) and the in-doubt
// resolver talk to this interface only.
//
// Every backend keeps its branches in a BranchLog and follows the same
// branch state machine (see agent.h): the vote leaves only after PREPARED is
// durable; commit and rollback are idempotent per XID; a rollback for an
// unknown XID leaves a tombstone.
//
// Thread: the agent's KJ event loop.

#include <kj/async.h>

#include <optional>
#include <string>
#include <vector>

#include "common/records.h"
#include "common/statements.h"
#include "participant/branch_log.h"

namespace keel {

// Vote and BranchOutcome: common/types.h (the coordinator reads them too).

struct PrepareResult {
  Vote vote = Vote::No;
  std::string reason;
  std::vector<OpResult> results;
  bool failed = false;  // prepareBatch only: the item raised a fault; `reason` says what
  std::uint64_t hostTxid = 0;  // YES: the host transaction's id (postgres), sent back with commit; 0 = none
};

// Items one prepareBatch message may carry (the coordinator sends at most
// its batch_max, 4096 at most).
constexpr std::size_t kMaxPrepareBatch = 4096;

struct OnePhaseResult {
  BranchOutcome outcome = BranchOutcome::RolledBack;
  std::string reason;
  std::vector<OpResult> results;
};

struct AccountView {
  std::string name;
  AccountRecord record;
};

class ParticipantBackend {
 public:
  virtual ~ParticipantBackend() = default;
  virtual const std::string& name() const = 0;
  // The constructor only opens and checks (a damaged record stops the agent
  // there); start() makes the start-up writes (index building, rolling back
  // what the previous run left unvoted, reconciling the host). main() binds
  // the listen address in between, so a refused start writes nothing. Call
  // once, before anything else.
  virtual void start() = 0;

  virtual kj::Promise<PrepareResult> prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) = 0;
  virtual kj::Promise<PrepareResult> execute(std::uint64_t epoch, Xid xid, std::vector<Op> ops) = 0;
  virtual kj::Promise<std::vector<BranchOutcome>> commit(std::uint64_t epoch, std::vector<Xid> xids) = 0;
  // commit, with the hostTxid each branch voted YES with (one per xid, 0 =
  // none), as the coordinator's durable COMMIT record holds it. Adapters
  // with no host transaction ids ignore them.
  virtual kj::Promise<std::vector<BranchOutcome>> commitKnowing(std::uint64_t epoch, std::vector<Xid> xids,
                                                                std::vector<std::uint64_t> hostTxids) {
    (void)hostTxids;
    return commit(epoch, std::move(xids));
  }
  virtual kj::Promise<std::vector<BranchOutcome>> rollback(std::uint64_t epoch, std::vector<Xid> xids) = 0;
  virtual kj::Promise<OnePhaseResult> commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops) = 0;
  // The ledger's accounts; other adapters have none to show.
  virtual std::vector<AccountView> accounts() const { return {}; }

  // What the coordinator is asked to batch (Participant.batching); 0 = no
  // preference.
  struct Batching {
    std::uint32_t maxBatch = 0, maxInFlight = 0;
    // Every branch it voted YES on is listed by listBranches from before
    // the vote leaves (its PREPARED record is durable and visible first):
    // the coordinator may then answer on its staged record and the votes
    // (Participant.batching in schemas/keel.capnp, docs/protocol.md).
    bool preparedVisible = false;
  };
  virtual Batching batching() const { return {}; }
  // The statements it runs for clients; null: none (no SQL at all).
  virtual const Statements* declaredStatements() const { return nullptr; }

  // Why the participant cannot serve now although the agent answers (the
  // host adapter: its host is not answering); nullopt when it can. The
  // coordinator's health probe (status with no XIDs) fails with it, so the
  // coordinator keeps probing and wakes its drivers once it is gone.
  virtual std::optional<std::string> unavailable() const { return std::nullopt; }

  virtual BranchLog& branchLog() = 0;
  virtual const BranchLog& branchLog() const = 0;

  // A PREPARED branch known to be in doubt already, which the in-doubt
  // resolver asks the coordinator about at once rather than after its
  // threshold (PgAgent: one prepared by an earlier start of the agent).
  virtual bool knownInDoubt(const BranchRecord&) const { return false; }
  // Resolves (on the event loop) once the backend has recorded, on its own,
  // a branch knownInDoubt() is true of (PgAgent's sweep), or at once if it
  // did since the last call; never for backends that do not. One waiter.
  virtual kj::Promise<void> inDoubtRecorded() { return kj::NEVER_DONE; }

  // Through the branch log, the same for every backend.
  void fence(std::uint16_t node, std::uint64_t epoch) { branchLog().fence(node, epoch); }
  std::uint64_t newestEpoch(std::uint16_t node) const { return branchLog().newestEpoch(node); }
  std::vector<BranchRecord> unfinishedBranches() const { return branchLog().unfinishedBranches(); }
  std::vector<std::optional<BranchRecord>> branches(const std::vector<Xid>& xids) const {
    return branchLog().branches(xids);
  }
  // The branches after `after` in XID order, at most `limit`. A backend
  // whose YES votes leave before their records are durable lists those
  // branches too (Batching::preparedVisible).
  virtual std::vector<BranchRecord> listBranches(Xid after, std::size_t limit, bool& more) const {
    return branchLog().listBranches(after, limit, more);
  }
  BranchLog::Counts counts() const { return branchLog().counts(); }
  // Drops finished branches' records (epoch 0: an operator, not fenced).
  kj::Promise<BranchLog::ForgetResult> forget(std::uint64_t epoch, std::vector<Xid> xids) {
    if (epoch != 0 && !xids.empty()) fence(seqNode(xids[0].seq), epoch);
    return branchLog().forget(std::move(xids));
  }
};

}  // namespace keel
