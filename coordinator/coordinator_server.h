#pragma once
// CoordinatorImpl / TransactionImpl: thin Cap'n Proto shells around
// Coordinator. They read parameters, call the engine, fill results.

#include <memory>

#include "common/backup.h"
#include "common/config.h"
#include "common/group_log.h"
#include "coordinator/client_requests.h"
#include "common/rpc.h"
#include "coordinator/coordinator.h"
#include "schemas/keel.capnp.h"

namespace keel {

class CoordinatorImpl final : public wire::Coordinator::Server {
 public:
  // logStats: the WAL's group-commit counters, reported by info().
  // backups: serves backup() (null: refused with the reason).
  CoordinatorImpl(Coordinator& c, const GroupCommitLog::Stats& logStats, BackupServer* backups = nullptr)
      : c_(c), logStats_(logStats), backups_(backups) {}
  kj::Promise<void> submit(SubmitContext ctx) override;
  kj::Promise<void> begin(BeginContext ctx) override;
  kj::Promise<void> query(QueryContext ctx) override;
  kj::Promise<void> listUnfinished(ListUnfinishedContext ctx) override;
  kj::Promise<void> info(InfoContext ctx) override;
  kj::Promise<void> outcome(OutcomeContext ctx) override;
  kj::Promise<void> stats(StatsContext ctx) override;
  kj::Promise<void> retryNow(RetryNowContext ctx) override;
  kj::Promise<void> resolve(ResolveContext ctx) override;
  kj::Promise<void> audit(AuditContext ctx) override;
  kj::Promise<void> submitBatch(SubmitBatchContext ctx) override;
  kj::Promise<void> queryRequest(QueryRequestContext ctx) override;
  kj::Promise<void> listHeuristic(ListHeuristicContext ctx) override;
  kj::Promise<void> reconciled(ReconciledContext ctx) override;
  kj::Promise<void> backup(BackupContext ctx) override;
  kj::Promise<void> exportRange(ExportRangeContext ctx) override;
  kj::Promise<void> search(SearchContext ctx) override;
  kj::Promise<void> archivePeriods(ArchivePeriodsContext ctx) override;
  kj::Promise<void> dropArchive(DropArchiveContext ctx) override;
  kj::Promise<void> embeddedParticipant(EmbeddedParticipantContext ctx) override;

 private:
  Coordinator& c_;
  const GroupCommitLog::Stats& logStats_;
  BackupServer* backups_;
};

// The capability returned by begin(): it IS the interactive transaction.
// Dropping it before commit or rollback rolls the interaction back.
class TransactionImpl final : public wire::Transaction::Server {
 public:
  TransactionImpl(Coordinator& c, std::uint64_t seq) : c_(c), seq_(seq), life_(c.lifetime()) {}
  ~TransactionImpl() noexcept(false);
  kj::Promise<void> seq(SeqContext ctx) override;
  kj::Promise<void> execute(ExecuteContext ctx) override;
  kj::Promise<void> commit(CommitContext ctx) override;
  kj::Promise<void> rollback(RollbackContext ctx) override;

 private:
  Coordinator& c_;
  const std::uint64_t seq_;
  std::weak_ptr<const void> life_;  // dropped after the coordinator went: nothing to roll back in it
};

// Roles on a coordinator (docs/security.md): identities in [tls] operators
// get every call; other identities of the CA (or only those in [tls]
// clients, when given) get the client calls (submit, begin, query, info,
// stats, outcome); the operator calls fail "permission denied" for them.
// Insecure (plaintext): every peer gets every call.
AccessPolicy coordinatorAccess(const TlsConfig& tls);

void fillSubmitResult(wire::SubmitResult::Builder b, const SubmitOutcome& o);

}  // namespace keel
