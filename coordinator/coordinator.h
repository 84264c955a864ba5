#pragma once
// Coordinator: presumed-abort two-phase commit over participant agents.
//
// Life of an interaction (see docs/protocol.md and InteractionRecord):
//   submit -> validate (bad input: answer `invalid`, write nothing)
//          -> seq assigned, interaction record queued (not forced)
//          -> one participant: commitOnePhase (the participant decides)
//             several: prepare on all in parallel (work + prepare in one call)
//          -> all YES: COMMIT decision made durable (group commit), THEN the
//             client hears "committed"; phase 2 retried until acknowledged
//          -> any NO / error / deadline: ABORT; rollback record written, the
//             client hears "rolled back" at once; the rollback driver retries
//             until every participant confirmed
// Recovery on start (coordinator/recovery.cc) re-drives everything the WAL
// lists as unfinished and sweeps every participant for in-doubt branches.
//
// Threads: everything here runs on the one KJ event loop of the process;
// durable writes run on the WalStore's writer thread and come back here.

#include <kj/async-io.h>

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/records.h"
#include "common/seq.h"
#include "coordinator/participant_link.h"
#include "coordinator/wal_store.h"

namespace keel {

class Coordinator final : private kj::TaskSet::ErrorHandler {
 public:
  Coordinator(const CoordinatorConfig& cfg, kj::AsyncIoContext& io, WalStore& wal);
  ~Coordinator();

  // Recovery state machine (recovery.cc). Resolves once new work may be
  // served; the participant sweep goes on in the background.
  kj::Promise<void> recover();

  kj::Promise<SubmitOutcome> submit(std::vector<Op> ops, std::uint32_t deadlineMs);

  // Interactive mode. begin() answers the seq; the rest take it.
  kj::Promise<std::uint64_t> begin(std::uint32_t deadlineMs);
  kj::Promise<SubmitOutcome> execute(std::uint64_t seq, std::vector<Op> ops);
  kj::Promise<SubmitOutcome> commitInteractive(std::uint64_t seq);
  kj::Promise<SubmitOutcome> rollbackInteractive(std::uint64_t seq, std::string reason);
  // The client's transaction capability went away: roll back if still open.
  void abandon(std::uint64_t seq);

  std::optional<StoredInteraction> query(std::uint64_t seq) const;
  std::vector<std::string> listUnfinished(std::size_t limit) const;

  struct Info {
    std::uint16_t nodeId;
    std::uint64_t epoch;
    std::vector<std::string> participants;
    std::uint64_t committed, rolledBack, unfinished;
  };
  Info info() const;
  bool sweepDone() const { return sweepPending_ == 0; }

  // Agent asking for the outcome of a branch in doubt.
  enum class Decided : std::uint8_t { Committed = 0, RolledBack = 1, Pending = 2, Unknown = 3 };
  Decided outcome(std::uint64_t seq) const;

  struct WindowStats {
    std::uint64_t count = 0, p50Us = 0, p99Us = 0, maxUs = 0, inDoubt = 0, oldestUs = 0;
    std::uint64_t rollbacks = 0, retriedCommits = 0;
  };
  WindowStats stats() const;

  // Operator control (keelctl). retryNow: seq 0 = every unfinished one.
  std::uint32_t retryNow(std::uint64_t seq);
  struct ResolveResult {
    bool done = false;
    std::string reason;
  };
  kj::Promise<ResolveResult> resolve(std::uint64_t seq, bool commit, std::string who, std::string why, bool override);
  std::vector<AuditRecord> audit(std::size_t limit) const { return wal_.listAudit(limit); }

 private:
  struct Interaction;
  using State = InteractionRecord::State;
  using BState = InteractionRecord::BranchState;

  void taskFailed(kj::Exception&& e) override;

  // Validation of a request; returns an error text or nullopt.
  std::optional<std::string> validate(const std::vector<Op>& ops, bool allowEmpty) const;
  ParticipantLink& link(const std::string& participant);
  kj::Duration callDeadline() const;

  Interaction& create(std::uint64_t seq, bool interactive, std::uint32_t deadlineMs);
  // Adds ops to the interaction's branches (creating branches as needed);
  // returns, per op, (branch index, index of the op inside the branch).
  std::vector<std::pair<std::size_t, std::size_t>> assign(Interaction& it, const std::vector<Op>& ops);
  // Queues both records; durable when it resolves. lazy: nobody waits on it
  // being forced (it rides with the next group commit; see WalStore::save).
  kj::Promise<void> persist(Interaction& it, bool lazy = false);

  void drive(Interaction& it);  // one-shot: prepare, decide, phase 2 (owned by tasks_)
  kj::Promise<void> guardFirstPhase(std::uint64_t seq, kj::Promise<void> work);
  kj::Promise<void> guardDriver(std::uint64_t seq, kj::Promise<void> work, bool commit);
  kj::Promise<void> runOnePhase(Interaction& it);
  kj::Promise<bool> prepareAll(Interaction& it, std::vector<std::vector<Op>> opsPerBranch);
  kj::Promise<void> decide(Interaction& it, bool allYes);
  void startAbort(Interaction& it, const std::string& reason);
  void answer(Interaction& it, ClientOutcome o, const std::string& reason);

  // Background drivers: retried with capped exponential backoff until done.
  kj::Promise<void> driveCommit(std::uint64_t seq);
  kj::Promise<void> driveRollback(std::uint64_t seq);
  kj::Promise<void> finish(std::uint64_t seq);
  kj::Duration backoff(std::uint32_t attempt) const;
  kj::Promise<void> pause(Interaction& it, kj::Duration d);
  // A participant that failed a phase-2 or rollback call is probed every
  // probe_ms until it answers; then every driver waiting on it is woken at
  // once, instead of after its backoff.
  void watch(const std::string& participant);
  kj::Promise<void> probe(ParticipantLink& l);
  std::uint32_t wakeWaitingOn(const std::string& participant);
  std::optional<std::string> storageFull() const;

  // recovery.cc
  void redrive(InteractionRecord rec, std::optional<RollbackRecord> rb);
  kj::Promise<void> sweep(ParticipantLink& link, std::uint32_t attempt);
  void settleUnknownBranch(ParticipantLink& link, Xid xid);
  void adoptBranch(Interaction& it, const std::string& participant, Xid xid);

  Interaction* find(std::uint64_t seq);

  const CoordinatorConfig cfg_;
  kj::AsyncIoContext& io_;
  WalStore& wal_;
  std::unique_ptr<SeqAllocator> seqs_;
  std::uint64_t epoch_ = 0;
  std::map<std::string, std::unique_ptr<ParticipantLink>> links_;
  std::map<std::uint64_t, std::unique_ptr<Interaction>> live_;  // unfinished
  std::uint64_t committed_ = 0, rolledBack_ = 0;
  std::uint32_t sweepPending_ = 0;
  std::set<std::string> probing_;
  Micros fullUntilUs_ = 0;  // a write failed with MDB_MAP_FULL: refuse new work until then
  static constexpr double kRefuseNewAtFill = 0.9;
  kj::TaskSet tasks_;  // declared last: destroyed first, before what it uses
};

}  // namespace keel
