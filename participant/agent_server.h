#pragma once
// ParticipantImpl: the thin Cap'n Proto shell around Agent. It reads
// parameters, calls the agent, fills results; no protocol logic here.

#include "common/backup.h"
#include "common/config.h"
#include "common/rpc.h"
#include "participant/agent_metrics.h"
#include "participant/backend.h"
#include "schemas/keel.capnp.h"

namespace keel {

class ParticipantImpl final : public wire::Participant::Server, private kj::TaskSet::ErrorHandler {
 public:
  // backups: serves backup() (null: refused with the reason).
  explicit ParticipantImpl(ParticipantBackend& agent, BackupServer* backups = nullptr)
      : agent_(agent), backups_(backups), tasks_(*this) {}

  kj::Promise<void> prepare(PrepareContext ctx) override;
  kj::Promise<void> execute(ExecuteContext ctx) override;
  kj::Promise<void> commit(CommitContext ctx) override;
  kj::Promise<void> rollback(RollbackContext ctx) override;
  kj::Promise<void> commitOnePhase(CommitOnePhaseContext ctx) override;
  kj::Promise<void> recover(RecoverContext ctx) override;
  kj::Promise<void> inspect(InspectContext ctx) override;
  kj::Promise<void> status(StatusContext ctx) override;
  kj::Promise<void> forget(ForgetContext ctx) override;
  kj::Promise<void> release(ReleaseContext ctx) override;
  kj::Promise<void> listBranches(ListBranchesContext ctx) override;
  kj::Promise<void> prepareBatch(PrepareBatchContext ctx) override;
  kj::Promise<void> batching(BatchingContext ctx) override;
  kj::Promise<void> statements(StatementsContext ctx) override;
  kj::Promise<void> backup(BackupContext ctx) override;

  // Counts calls, votes and outcomes there (null: not counted); outlives this.
  void setMetrics(AgentMetrics* m) { metrics_ = m; }

 private:
  void taskFailed(kj::Exception&&) override {}  // a vote sink that went away: the answer carries the votes
  ParticipantBackend& agent_;
  BackupServer* backups_;
  AgentMetrics* metrics_ = nullptr;
  kj::TaskSet tasks_;  // streamed votes (prepareBatch with a sink)
};

// Roles on an agent (docs/security.md): identities in [tls] coordinators
// make every call (and only they can raise an epoch fence); identities in
// [tls] operators may look (inspect, status, listBranches, batching,
// statements, backup, and recover / forget with epoch 0); anyone else is refused every call.
// Insecure (plaintext): every peer makes every call.
AccessPolicy agentAccess(const TlsConfig& tls, const std::string& agentName);
// The calls an operator may make on an agent (the operator row of the table
// above), whoever the caller; `refused(method)` words the refusal of any other.
CallFilter operatorAgentCalls(std::function<std::string(const std::string& method)> refused);
// `agent` as an operator may call it (operatorAgentCalls): what the
// coordinator hands out for an embedded participant (embeddedParticipant).
wire::Participant::Client operatorView(wire::Participant::Client agent, const std::string& agentName);

}  // namespace keel
