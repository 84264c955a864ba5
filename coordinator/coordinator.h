#pragma once
// Coordinator: presumed-abort two-phase commit over participant agents.
//
// Life of an interaction (see docs/protocol.md and InteractionRecord):
//   submit -> validate (bad input: answer `invalid`, write nothing)
//          -> request id known? answer that interaction's seq and outcome
//             (waiting while undecided), run nothing (requests.cc)
//          -> seq assigned
//          -> one participant: its record made durable, then commitOnePhase
//             (the participant decides); several: prepare on all in parallel
//             (work + prepare in one call), nothing written yet
//          -> all YES: COMMIT decision made durable (group commit), THEN the
//             client hears "committed"; phase 2 retried until acknowledged
//          -> any NO / error / deadline: ABORT; the rollback record made
//             durable, THEN the client hears "rolled back"; the rollback
//             driver retries until every participant confirmed
//          -> every branch settled: final state (committed, rolled-back, or
//             heuristic-mixed / heuristic-unknown when the branches did not
//             all end as decided) written, the interaction leaves memory
// Every answer a client gets rests on a record that is already durable and
// names the seq (and the request id).
// Recovery on start (recovery.cc) re-drives everything the WAL lists as
// unfinished and sweeps every participant for in-doubt branches.
//
// Files: coordinator.cc (submit, one-shot drive, decide, abort, finish),
// interactive.cc (begin/execute/commit/rollback), drivers.cc (phase 2,
// rollback driver, participant health), requests.cc (request ids),
// operator.cc (operator calls), recovery.cc (start-up).
//
// Threads: everything here runs on the one KJ event loop of the process;
// durable writes run on the WalStore's writer thread and come back here.
// Nothing here sees a Cap'n Proto type: ParticipantLink and
// coordinator_server.cc translate.

#include <kj/async-io.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/config.h"
#include "common/records.h"
#include "common/seq.h"
#include "coordinator/archive.h"
#include "coordinator/cluster.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/participant_link.h"
#include "coordinator/wal_store.h"

namespace keel {

class ClusterMember;

class Coordinator final : private kj::TaskSet::ErrorHandler {
 public:
  // cluster: null in single-node mode (decisions in the local WAL); else
  // COMMIT decisions are made in etcd through it (docs/cluster.md).
  Coordinator(const CoordinatorConfig& cfg, kj::AsyncIoContext& io, WalStore& wal, ClusterMember* cluster = nullptr);
  ~Coordinator();
  // Expires when this object starts to go. A capability that may outlive
  // it checks it before calling in: the RPC system can drop an interactive
  // transaction as late as the event loop's own destruction (a detached
  // call's promise), after the coordinator is gone.
  std::weak_ptr<const void> lifetime() const { return life_; }

  // An embedded participant's in-process capability ([participants] NAME =
  // "embedded:FILE"; participant/embedded.h): its link calls it instead of
  // connecting. Before recover(), once per embedded participant.
  // `operatorView`: the same agent as an operator may call it
  // (EmbeddedParticipant::operatorClient), handed out by
  // embeddedOperatorView.
  void serveEmbedded(const std::string& participant, wire::Participant::Client cap,
                     wire::Participant::Client operatorView);
  // An embedded participant's operator view (keelctl branches / forget /
  // backup --embedded NAME); nullopt: `participant` is not one.
  std::optional<wire::Participant::Client> embeddedOperatorView(const std::string& participant);
  bool hasParticipant(const std::string& participant) const { return links_.count(participant) != 0; }

  // Recovery state machine (recovery.cc). Resolves once new work may be
  // served; the participant sweep goes on in the background. `unfinished`:
  // the WAL's unfinished work (WalStore::loadUnfinished, every record
  // decoded before anything is written), passed by refuseMissingParticipants.
  kj::Promise<void> recover(std::vector<WalStore::Unfinished> unfinished);

  // Start-up, before anything is written (recovery.cc): throws ConfigError
  // if an unfinished interaction still has to call a participant that
  // `known` (the config's [participants]) lacks, naming each such
  // participant and its seqs. Nothing could ever finish those interactions,
  // so the start is refused rather than leaving them to wait forever; the
  // operator puts the participant back (docs/recovery.md, "A participant
  // removed from the config"). keel-coordinator calls it right after
  // opening the WAL, before its embedded participants start, and hands the
  // same list to recover(). A cluster member also passes `etcdCommits`
  // (etcdCommitsToRedrive, read before it joins): etcd's COMMITs that its
  // recovery would redrive, whose branches are needed just the same.
  static void refuseMissingParticipants(const std::vector<WalStore::Unfinished>& unfinished,
                                        const std::function<bool(const std::string&)>& known,
                                        const std::map<std::uint64_t, ClusterDecision>& etcdCommits = {});

  // Cluster start-up, before join() (recovery.cc): etcd's COMMIT decisions
  // of `node`'s earlier incarnations that `wal` holds no finished record
  // of, i.e. those recover() would redrive (reconcileFromEtcd reads them
  // again after the join, when the list is final). Read-only on both.
  static std::map<std::uint64_t, ClusterDecision> etcdCommitsToRedrive(ClusterMember& cluster, std::uint16_t node,
                                                                       WalStore& wal);

  // What `wal` holds of `seq`, for a decision etcd holds of it (recovery.cc;
  // etcdCommitsToRedrive and reconcileFromEtcd). A damaged record counts
  // as unfinished: etcd's decision decides it (logged when `logDamage`, so
  // once per start: by reconcileFromEtcd).
  enum class WalHolds { Nothing, Unfinished, Finished };
  static WalHolds walHolds(WalStore& wal, std::uint64_t seq, bool logDamage);

  kj::Promise<SubmitOutcome> submit(SubmitRequest req);

  // Cluster: finishes the work of dead coordinator node `node` under the
  // epoch this member won for it (takeover.cc): every branch of that node
  // the participants hold is committed or rolled back as etcd's decision
  // says (ABORT written when there is none). Resolves when all are done.
  kj::Promise<void> takeOver(std::uint16_t node, std::uint64_t epoch);

  // Interactive mode. begin() answers the seq once the interaction's record
  // is durable, or, for a request id already known, that interaction's
  // outcome (no transaction is opened). The rest take the seq.
  struct Begun {
    std::uint64_t seq = 0;                // 0 when `replay` is set
    std::optional<SubmitOutcome> replay;  // the request id named an earlier interaction
  };
  kj::Promise<Begun> begin(SubmitRequest req);
  kj::Promise<SubmitOutcome> execute(std::uint64_t seq, std::vector<Op> ops);
  kj::Promise<SubmitOutcome> commitInteractive(std::uint64_t seq);
  kj::Promise<SubmitOutcome> rollbackInteractive(std::uint64_t seq, std::string reason);
  // The client's transaction capability went away: roll back if still open.
  void abandon(std::uint64_t seq);

  std::optional<StoredInteraction> query(std::uint64_t seq) const;
  // Cluster: another node's seq is asked of that node's coordinator, or,
  // when it is not up, answered from etcd's decision (takeover.cc).
  kj::Promise<std::optional<StoredInteraction>> queryAnywhere(std::uint64_t seq);
  std::optional<StoredInteraction> queryRequest(const std::string& requestId) const;
  std::vector<std::string> listUnfinished(std::size_t limit) const;
  std::vector<std::string> listHeuristic(std::size_t limit) const { return wal_.listHeuristic(limit); }

  struct Info {
    std::uint16_t nodeId;
    std::uint64_t epoch;
    std::vector<std::string> participants;
    std::uint64_t committed, rolledBack, unfinished, heuristic;
    // Cluster: branches of dead nodes this member finished by takeover.
    std::uint64_t takeoverCommitted = 0, takeoverRolledBack = 0;
    bool clustered = false;
    std::uint64_t etcdTxns = 0, etcdDecisions = 0;
  };
  Info info() const;
  bool sweepDone() const { return sweepPending_ == 0; }

  // Agent asking for the outcome of a branch in doubt.
  enum class Decided : std::uint8_t { Committed = 0, RolledBack = 1, Pending = 2, Unknown = 3 };
  Decided outcome(std::uint64_t seq) const;

  struct WindowStats {
    std::uint64_t count = 0, p50Us = 0, p99Us = 0, maxUs = 0, inDoubt = 0, oldestUs = 0;
    std::uint64_t rollbacks = 0, retriedCommits = 0, heuristic = 0;
  };
  WindowStats stats() const;

  // /metrics (coordinator/admin.cc): the counters, updated as things happen
  // and readable from any thread; and what has to be counted on the event
  // loop at the moment of a scrape (call it there).
  CoordinatorMetrics& metrics() { return metrics_; }
  struct Gauges {
    std::uint64_t live = 0;          // interactions in memory (unfinished)
    std::uint64_t inDoubt = 0;       // of those, failed and not yet settled (keelctl stats' "in doubt")
    std::uint64_t oldestInDoubtUs = 0;
    std::uint64_t rollbackQueue = 0;    // aborting, rollback driven until every participant confirms
    std::uint64_t committing = 0;       // COMMIT decided, phase 2 not done
    // The WAL's map, its high-water mark, and what of it is in use (the
    // mark less the free pages LMDB can reuse: lmdb::Env::usedFraction;
    // the mark when they cannot be counted now).
    std::uint64_t walMapBytes = 0, walHighWaterBytes = 0, walUsedBytes = 0;
    bool sweepDone = false;
  };
  Gauges gauges() const;
  // Each configured participant as the console shows it (call on the loop).
  struct ParticipantView {
    std::string name, address;
    bool up = true;
    Micros downSinceUs = 0;   // when it was found silent (while down)
    std::size_t waiting = 0;  // drivers waiting for it to answer
  };
  std::vector<ParticipantView> participantViews() const;

  // Operator control (keelctl). retryNow: seq 0 = every unfinished one.
  std::uint32_t retryNow(std::uint64_t seq);
  // retryNow with an audit entry ("retry", who, why) made durable first:
  // the console's action (coordinator/admin.cc). Resolves to the drivers
  // woken; refused (with the reason) without who and why.
  struct Retried {
    bool done = false;
    std::uint32_t woken = 0;
    std::string reason;
  };
  kj::Promise<Retried> retryAudited(std::uint64_t seq, std::string who, std::string why);
  struct ResolveResult {
    bool done = false;
    std::string reason;
  };
  kj::Promise<ResolveResult> resolve(std::uint64_t seq, bool commit, std::string who, std::string why, bool override);
  std::vector<AuditRecord> audit(std::size_t limit) const { return wal_.listAudit(limit); }
  // One page of an export or a search (keelctl export, search): the hot
  // WAL's records of the range (WalStore::exportPage), then the archive's
  // (Archive::exportPage; a record still in the hot WAL too, archived just
  // before a crash, is given once).
  struct JournalCursor {
    bool archive = false;      // the hot WAL is done
    std::uint64_t after = 0;   // hot WAL: the last seq looked at
    std::string archiveAt;     // archive: its page's `next`
  };
  struct JournalPage {
    std::vector<StoredInteraction> records;
    std::vector<std::uint64_t> damaged;  // hot WAL seqs whose record does not decode
    std::uint64_t scanned = 0, total = 0;
    std::optional<JournalCursor> next;  // nullopt: the range is done
  };
  // `filter` (a search's state and participant) lets the archive read its
  // indexes; the records still need the caller's filtering.
  JournalPage journalPage(const JournalCursor& at, Micros fromUs, Micros toUs,
                          const Archive::Filter& filter = {}) const;
  // The archive's periods, and an operator's drop of those before `before`
  // (YYYY-MM-DD), each older than archive_retention_days: the audit entry
  // is durable before any is removed (operator.cc).
  std::vector<Archive::PeriodInfo> archivePeriods() const { return archive_->periods(); }
  struct ArchiveDrop {
    std::vector<std::string> dropped;
    std::string refused;  // "" = done
  };
  kj::Promise<ArchiveDrop> dropArchive(std::string before, std::string who, std::string why);
  static constexpr std::size_t kExportPageRecords = 512;
  // The hosts of heuristic interaction `seq` were reconciled by hand.
  kj::Promise<ResolveResult> reconciled(std::uint64_t seq, std::string who, std::string why);

 private:
  struct Interaction;
  using State = InteractionRecord::State;
  using BState = InteractionRecord::BranchState;

  void taskFailed(kj::Exception&& e) override;

  // Validation of a request; returns an error text or nullopt.
  std::optional<std::string> validate(const std::vector<Op>& ops, bool allowEmpty) const;
  ParticipantLink& link(const std::string& participant);
  kj::Duration callDeadline() const;
  // Options of every link to a participant (the node's own and a takeover's).
  LinkOptions linkOptions() const;
  // The client's deadline, defaulted and capped by max_interaction_ms.
  std::uint32_t effectiveDeadline(std::uint32_t askedMs) const;

  Interaction& create(std::uint64_t seq, bool interactive, const SubmitRequest& req, std::uint64_t fingerprint);
  // Adds ops to the interaction's branches (creating branches as needed);
  // returns, per op, (branch index, index of the op inside the branch).
  std::vector<std::pair<std::size_t, std::size_t>> assign(Interaction& it, const std::vector<Op>& ops);
  // Queues both records (and, the first time, the request id's row);
  // durable when it resolves. lazy: nobody waits on it being forced (it
  // rides with the next group commit; see WalStore::save).
  kj::Promise<void> persist(Interaction& it, bool lazy = false);

  // Marks open interactive `seq` closing; `answer` becomes what its client
  // will hear (or "not open", and nullptr is returned).
  Interaction* closeInteractive(std::uint64_t seq, kj::Promise<SubmitOutcome>& answer);
  void drive(Interaction& it);  // one-shot: prepare, decide, phase 2 (owned by tasks_)
  kj::Promise<void> guardFirstPhase(std::uint64_t seq, kj::Promise<void> work);
  kj::Promise<void> guardDriver(std::uint64_t seq, kj::Promise<void> work, bool commit);
  kj::Promise<void> runOnePhase(Interaction& it);
  kj::Promise<bool> prepareAll(Interaction& it, std::vector<std::vector<Op>> opsPerBranch);
  kj::Promise<void> decide(Interaction& it, bool allYes);
  // ABORT: the rollback record is written and, once durable, the client is
  // answered "rolled back" (one-phase: only if the participant refused);
  // the rollback driver starts at once.
  void startAbort(Interaction& it, const std::string& reason);
  // Tells the waiting client (and any retry of its request id) the outcome.
  // Call only once the record it rests on is durable.
  void answer(Interaction& it, ClientOutcome o, const std::string& reason);
  // The final state the branches' ends give (finish).
  static State finalState(const InteractionRecord& r);

  // Background drivers (drivers.cc): retried with capped exponential
  // backoff until done.
  kj::Promise<void> driveCommit(std::uint64_t seq);
  kj::Promise<void> driveRollback(std::uint64_t seq);
  kj::Promise<void> finish(std::uint64_t seq);
  kj::Duration backoff(std::uint32_t attempt) const;
  kj::Promise<void> pause(Interaction& it, kj::Duration d);
  // A participant that stopped answering is probed every probe_ms until it
  // answers; then every driver waiting on it is woken at once, instead of
  // after its backoff. Changes are logged once each (healthChanged).
  void watch(const std::string& participant);
  kj::Promise<void> probe(ParticipantLink& l);
  void healthChanged(ParticipantLink& l, bool up, const std::string& why);
  std::uint32_t wakeWaitingOn(const std::string& participant);
  std::size_t waitingOn(const std::string& participant) const;
  std::optional<std::string> storageFull() const;

  // Request ids (requests.cc).
  // Checks the id and its time; "" when well formed.
  std::string checkRequest(const SubmitRequest& req) const;
  // An earlier interaction under this id: its outcome (now, or once
  // decided), or `invalid` when reused with other operations or too old to
  // be known. nullptr: the id is new.
  kj::Maybe<kj::Promise<SubmitOutcome>> replay(const SubmitRequest& req, std::uint64_t fingerprint);
  // The interaction the id names is decided: what a retry hears.
  static std::optional<SubmitOutcome> replayOutcome(const InteractionRecord& rec);
  void claimRequest(const std::string& id, std::uint64_t fingerprint);
  void bindRequest(Interaction& it);            // the claim gets its seq
  void releaseRequest(const std::string& id, const kj::Exception* why);  // no interaction came of the claim
  void forgetRequest(const Interaction& it);    // the interaction left memory
  kj::Promise<void> purgeRequests();            // retention, every minute
  // The archiver (archive.h): finished interactions older than
  // hot_retention_s move to <data-dir>/archive, a batch at a time.
  kj::Promise<void> archiveOld();
  // Release floors (release.cc): every kReleaseEvery, each participant
  // hears which of this node's seqs are finished and archived, so that it
  // drops their branch records (Participant.release).
  struct ReleasePlan {
    std::uint64_t floor = 0;  // 0: nothing to release now
    std::vector<std::uint64_t> keep;
  };
  ReleasePlan releasePlan();
  kj::Promise<void> releaseFloors();
  static constexpr kj::Duration kReleaseEvery = 5 * kj::SECONDS;
  static constexpr std::size_t kMaxReleaseKeep = 1024;

  // Cluster (cluster.cc, recovery.cc): the COMMIT decision made in etcd.
  kj::Promise<void> decideInCluster(Interaction& it);
  kj::Promise<std::optional<StoredInteraction>> queryFromEtcd(std::uint64_t seq);
  // Tells the client (and waiting retries) `out`, an answer naming another
  // interaction under the same request id.
  void answerWith(Interaction& it, SubmitOutcome out);
  // "rolled back" for `seq`, once its rollback record is durable. Cluster,
  // with a request id: once the id's fate is decided in etcd too (if a retry
  // through another coordinator committed, the client hears that one).
  kj::Promise<void> answerRolledBack(std::uint64_t seq, std::string reason);
  // Decisions of this node's earlier incarnations in etcd (read at start).
  std::map<std::uint64_t, ClusterDecision> reconcileFromEtcd();
  // Takeover steps, each retried with backoff until the participant answers.
  kj::Promise<std::vector<RecoveredBranch>> recoverRetry(ParticipantLink& l, std::uint64_t epoch, std::uint16_t node,
                                                         std::uint32_t attempt);
  kj::Promise<void> finishBranch(ParticipantLink& l, std::uint64_t epoch, Xid xid, bool commit, std::uint32_t attempt);

  // recovery.cc
  void redrive(InteractionRecord rec, std::optional<RollbackRecord> rb);
  kj::Promise<void> sweep(ParticipantLink& link, std::uint32_t attempt);
  void settleUnknownBranch(ParticipantLink& link, const RecoveredBranch& b);
  void adoptBranch(Interaction& it, const std::string& participant, const RecoveredBranch& b);
  // A branch of an earlier incarnation that no interaction can take: rolled
  // back, retried with backoff until the participant answers.
  kj::Promise<void> rollBackStray(ParticipantLink& l, Xid xid, std::uint32_t attempt);
  // The interaction in memory from its record (no driver started).
  Interaction& install(InteractionRecord rec, std::optional<RollbackRecord> rb);

  // A WAL restored from a backup (WalStore::RestoreMark): `seq` is one the
  // lost WAL may have decided after the backup, and this WAL holds no
  // decision for it.
  bool restoredUndecided(std::uint64_t seq, const InteractionRecord* stored) const;
  // Decides such a seq by what the participants hold, never by presumed
  // abort: a committed branch anywhere -> commit the rest; a rolled-back
  // one -> roll back; only prepared ones -> in doubt, left to an operator
  // (keelctl resolve). Retried with backoff while a participant that could
  // tell does not answer. `known`: its record in this WAL, if any.
  void settleRestored(std::uint64_t seq, std::optional<InteractionRecord> known);
  kj::Promise<void> gatherEvidence(std::uint64_t seq, std::optional<InteractionRecord> known, std::uint32_t attempt);

  // Staged commit (docs/protocol.md, "Staged commit"). stageable: this
  // two-phase interaction's record may be written in parallel with its
  // prepares (not in a cluster, every participant says its YES branches
  // are visible to listBranches). settleStaged: after a restart, a staged
  // record without a decision is decided by what its participants hold
  // (listBranches): every branch prepared or committed -> COMMIT (the
  // client may have heard it); one missing, rolled back or never voted ->
  // ABORT (no client can have). Retried with backoff while a participant
  // does not answer; meanwhile outcome() says pending.
  bool stageable(const Interaction& it) const;
  void settleStaged(InteractionRecord rec);
  kj::Promise<void> gatherStagedVotes(InteractionRecord rec, std::uint32_t attempt);
  // Hands the request id's retries that waited during settleStaged to the
  // interaction now in memory.
  void handOverStagedReplays(std::uint64_t seq);

  Interaction* find(std::uint64_t seq);

  std::shared_ptr<const void> life_ = std::make_shared<int>(0);  // lifetime()
  const CoordinatorConfig cfg_;
  CoordinatorMetrics metrics_;  // before links_: they count into it
  kj::AsyncIoContext& io_;
  WalStore& wal_;
  // Where finished interactions go after hot_retention_s; declared before
  // tasks_ so that the archiver's task goes first.
  std::unique_ptr<Archive> archive_;
  std::uint64_t archived_ = 0;  // moved since the last log line
  Micros archivedLogUs_ = 0;
  std::uint64_t releaseNextCap_ = 0;  // the next seq at the previous release pass
  struct ReleaseSent {
    std::uint64_t floor = 0;
    std::vector<std::uint64_t> keep;
    bool more = false;
    std::uint64_t dropped = 0;
  };
  std::map<std::string, ReleaseSent> releaseSent_;  // per participant: what it took last
  std::uint64_t releaseDropped_ = 0;                // since the last log line
  Micros releaseLogUs_ = 0;
  ClusterMember* cluster_ = nullptr;
  std::uint64_t takeoverCommitted_ = 0, takeoverRolledBack_ = 0;
  std::unique_ptr<SeqAllocator> seqs_;
  std::uint64_t epoch_ = 0;
  std::map<std::string, std::unique_ptr<ParticipantLink>> links_;
  std::map<std::string, wire::Participant::Client> embeddedOperatorViews_;  // serveEmbedded
  std::map<std::uint64_t, std::unique_ptr<Interaction>> live_;  // unfinished
  // Request ids of interactions in memory (and ids being given a seq):
  // a retry finds them here before the WAL knows them (a two-phase
  // interaction writes nothing before its decision).
  struct LiveRequest {
    std::uint64_t seq = 0;  // 0 while the seq is being assigned
    std::uint64_t fingerprint = 0;
    std::vector<kj::Own<kj::PromiseFulfiller<SubmitOutcome>>> early;  // retries before the seq
  };
  std::unordered_map<std::string, LiveRequest> requests_;
  std::uint64_t committed_ = 0, rolledBack_ = 0, heuristic_ = 0;
  std::uint32_t sweepPending_ = 0;
  std::optional<WalStore::RestoreMark> restored_;  // this WAL was restored from a backup
  std::set<std::uint64_t> settlingRestored_;        // seqs whose evidence is being gathered
  std::set<std::uint64_t> settlingStaged_;          // staged seqs whose votes are being read back (settleStaged)
  // Retries of a request id whose staged interaction is being settled:
  // answered with its outcome once settled, never "in doubt" meanwhile.
  std::map<std::uint64_t, std::vector<kj::Own<kj::PromiseFulfiller<SubmitOutcome>>>> stagedReplays_;
  std::set<std::string> probing_;
  std::map<std::string, Micros> lastDownLogUs_;  // rate limit of "stopped answering" lines
  Micros fullUntilUs_ = 0;  // a write failed with MDB_MAP_FULL: refuse new work until then
  kj::TaskSet tasks_;  // declared last: destroyed first, before what it uses
};

}  // namespace keel
