#pragma once
// PgAgent: the participant agent beside a PostgreSQL database, using its own
// two-phase commit. Operations are calls of the statements declared in the
// agent's configuration (by name, with typed parameters, checked against the
// declaration before anything runs), run in one database transaction per
// branch. Free SQL text from clients is refused.
//
//   prepare   BEGIN; statements; SELECT txid_current(); PREPARE TRANSACTION
//             'keel:<agent>:<seq>:<branch>:<incarnation>', in one round trip
//             (a checked row count is checked by PostgreSQL, pg_row_check.h;
//             where it cannot be, PREPARE TRANSACTION is a second trip).
//             PostgreSQL's prepared transaction is the durable PREPARED
//             state, so the vote leaves then; the branch log's PREPARED
//             record (with the txid) follows lazily (forced first for a
//             coordinator epoch not yet durable here). A tombstone found
//             before the vote, or by the lazy write (the rollback overtook
//             the prepare), undoes PostgreSQL's half.
//   commit    the PREPARED record made durable if it is still on its way,
//             COMMIT PREPARED, then the branch log says committed
//   rollback  ROLLBACK PREPARED, for a branch never seen too (a prepare that
//             failed after PREPARE TRANSACTION leaves no record but may leave
//             PostgreSQL's prepared transaction), then a tombstone for it
//   one-phase BEGIN; statements; txid_current(); INSERT INTO keel_one_phase
//             (gid), in one round trip, while the intent (ACTIVE, durable,
//             no txid) is written; COMMIT once both are in; "committed";
//             recorded committed lazily. After a crash in between, the
//             marker row tells what PostgreSQL did: it exists if and only if
//             the transaction committed, and an INSERT of it (rolled back)
//             waits for a transaction still holding it (probeMarker).
//             txid_status() alone cannot: a txid whose WAL was not yet
//             flushed when PostgreSQL crashed is handed out again after its
//             recovery, and may then read 'committed' for another
//             transaction (an intent with a txid, written before, is still
//             settled by it and the row). Markers of recorded outcomes are
//             deleted in batches by the keeper (and at start-up).
//
// Recovery at start-up reconciles PostgreSQL's prepared transactions of this
// agent (pg_prepared_xacts, this database, this agent's gid prefix only)
// with the branch log: one the log does not hold at all may have been voted
// YES (its lazy record lost) and is recorded PREPARED, in doubt, with its
// txid, for the coordinator to decide; one the log holds as rolled back is
// rolled back; one it holds as committed is committed. The same sweep runs
// while the agent is up.
//
// The gid carries the agent's incarnation (BranchLog::incarnation, one more
// at every start), so that a prepared transaction without a record is told
// from one whose prepare is still on its way here: a gid of an earlier
// incarnation (or of the form before incarnations, keel:<agent>:<seq>:
// <branch>) can have no prepare running any more and is in doubt at once; a
// gid of this incarnation is in doubt only once no prepare of its branch is
// in flight in this process (preparing_, pending_). The branch's record
// keeps the incarnation of its gid (hostIncarnation), so a later
// incarnation commits or rolls back the gid that was prepared; with no
// record, the gids of a branch are looked up by prefix.
//
// A gid PostgreSQL no longer holds is never taken as proof of an outcome
// (a DBA may have run COMMIT PREPARED or ROLLBACK PREPARED by hand): the
// recorded txid's txid_status() says what PostgreSQL did, and where nothing
// says it the answer is Unknown and no outcome is written. docs/postgres.md
// lists every case.
//
// Interactive mode (execute) is not offered by this adapter yet: it would
// need one connection held per open branch.
//
// Threads: the event loop calls these methods. A prepare, the commit of a
// PREPARED branch and a one-phase commit run on the loop itself: libpq in
// non-blocking mode on connections the loop watches (pg::LoopPool), the
// branch log's writes as promises; no thread hop and no wake-up beyond
// PostgreSQL's answer and the group commit's. Rollbacks (and the settling
// of one-phase branches they ask about), the rare commits (no record, a
// gid PostgreSQL no longer holds) and the keeper's work run SQL on the
// finish pool's worker threads, which also wait for the log's writes; the
// start-up reconcile, on the starting thread with a connection of its own.
//
// Files: pg_agent.cc the protocol (prepare, commit, rollback, one-phase);
// pg_agent_recovery.cc the gids, the start-up reconcile and the keeper
// thread (the sweep, and retries of COMMIT / ROLLBACK PREPARED that failed).

#include <kj/async-io.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <thread>
#include <set>
#include <string>
#include <vector>

#include "common/statements.h"
#include "participant/adapters/pg_loop.h"
#include "participant/adapters/pg_pool.h"
#include "participant/backend.h"
#include "participant/branch_log.h"

namespace keel {

// What a gid of ours names: "keel:<agent>:<seq>:<branch>:<incarnation>", or
// "keel:<agent>:<seq>:<branch>" from an agent before incarnations
// (incarnation 0).
struct PgGid {
  Xid xid;
  std::uint64_t incarnation = 0;
};
std::string pgGid(const std::string& agent, Xid xid, std::uint64_t incarnation);
// How every PostgreSQL session of the agent whose data directory is
// `dataDir` is named (application_name) begins: "keel " + the directory's
// instance id (keel.identity). Only that directory's agent names its
// sessions so, and a directory has one live agent at a time (its lock): a
// session so named that is not the live agent's is an earlier run's. ""
// when the directory has no identity (a test's bare branch log): sessions
// are then not named, nor ended at start.
std::string pgSessionPrefix(const std::string& dataDir);
// The whole name: the prefix, a space and the agent's name, cut to
// PostgreSQL's 63 bytes ("" for no prefix).
std::string pgSessionName(const std::string& prefix, const std::string& agent);
// nullopt: not a gid of this agent's (another agent's, or malformed).
std::optional<PgGid> parsePgGid(const std::string& agent, const std::string& gid);

struct PgAgentOptions {
  std::string name;
  std::string dataDir;
  std::size_t mapSizeBytes = std::size_t(1) << 30;
  bool redo = false;  // the log's redo mode (common/redo_log.h)
  std::string conninfo;   // libpq connection string
  std::size_t poolSize = 8;
  // A statement waiting longer than this for a row lock fails the branch
  // (NO vote) instead of holding a connection past the coordinator's deadline.
  std::uint32_t lockTimeoutMs = 1000;
  // How long the agent's own records (PREPARED after the vote, COMMITTED
  // before phase 2's acknowledgement) may wait to ride a group commit
  // ([agent] lazy_delay_ms): fewer LMDB commits the longer, at the cost of
  // later acknowledgements (docs/postgres.md, "The txid in the vote").
  std::uint32_t lazyDelayMs = 10;
  // The statements clients may call (common/statements.h); at least one.
  Statements statements;
};

class PgAgent final : public ParticipantBackend {
 public:
  // Checks the branch log and connects. Throws with a message saying how to
  // fix what is wrong.
  // `io`: the event loop the agent's calls arrive on; prepares and commits
  // drive their PostgreSQL connections from it (pg::LoopPool).
  PgAgent(PgAgentOptions opts, kj::AsyncIoContext& io);
  // Connects once and checks what the agent needs of its database
  // (max_prepared_transactions above 0; the one-phase marker table, created
  // if missing, with the rights to use it). keel-agent runs it before the
  // data directory is touched, so that a refused start changes nothing;
  // start() checks again. Throws with the fix.
  static void preflight(const PgAgentOptions& opts);
  ~PgAgent() noexcept override;  // noexcept: inDoubtWake_ (a kj::Own) would make it noexcept(false)
  // Checks max_prepared_transactions, reconciles PostgreSQL's prepared
  // transactions with the branch log, starts the keeper (sweeps, retries).
  void start() override;

  const std::string& name() const override { return opts_.name; }
  kj::Promise<PrepareResult> prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) override;
  kj::Promise<PrepareResult> execute(std::uint64_t epoch, Xid xid, std::vector<Op> ops) override;
  kj::Promise<std::vector<BranchOutcome>> commit(std::uint64_t epoch, std::vector<Xid> xids) override;
  kj::Promise<std::vector<BranchOutcome>> commitKnowing(std::uint64_t epoch, std::vector<Xid> xids,
                                                        std::vector<std::uint64_t> hostTxids) override;
  kj::Promise<std::vector<BranchOutcome>> rollback(std::uint64_t epoch, std::vector<Xid> xids) override;
  kj::Promise<OnePhaseResult> commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops) override;

  // Small prepare batches (at most 8 per message), as many messages in
  // flight as the pool has connections. A prepare can wait on a row lock:
  // the others' votes stream back as each is ready (ParticipantImpl::
  // prepareBatch), so a blocked one holds back only its own vote and its
  // message's in-flight slot. Measured against one per message: docs/
  // postgres.md, "Batching".
  // preparedVisible: a YES vote's branch is listed from before the vote
  // leaves — its PREPARED record if durable, else as PREPARED from memory
  // (pending_, or unrecorded_ if that record failed); after a crash,
  // start-up's reconcile records PostgreSQL's prepared transaction before
  // the agent serves (listBranches).
  Batching batching() const override { return {8, std::uint32_t(opts_.poolSize), true}; }
  // The branch log's list with the YES votes not on file yet (pending_,
  // unrecorded_) merged in as PREPARED (mergeListed).
  std::vector<BranchRecord> listBranches(Xid after, std::size_t limit, bool& more) const override;
  const Statements* declaredStatements() const override { return &opts_.statements; }

  BranchLog& branchLog() override { return log_; }
  const BranchLog& branchLog() const override { return log_; }

  // The gid of a branch prepared by this start of the agent.
  std::string gid(Xid xid) const;
  // A PREPARED branch whose gid is of an earlier incarnation: whatever
  // prepared it is gone, so the in-doubt resolver asks about it at once.
  bool knownInDoubt(const BranchRecord& rec) const override;
  kj::Promise<void> inDoubtRecorded() override;

 private:
  // Why `ops` are refused (not SQL, free SQL text, a statement this agent
  // does not declare or a call that does not fit its declaration), before
  // anything reaches PostgreSQL.
  std::optional<std::string> validate(const std::vector<Op>& ops) const;
  const DeclaredStatement& declared(const Op& op) const;  // of a validated op
  // The statement of a validated op cut for PostgreSQL's own row check
  // (pg_row_check.h), or null when it cannot have one.
  struct RowCheckable {
    std::string cut;      // the statement cut for the wrapping (pg::rowCheckable)
    std::string wrapped;  // wrapped for the declared expect_rows; "" when it declares none
  };
  const RowCheckable* checkableSql(const Op& op) const;
  void reconcile();
  // Start-up: ends the PostgreSQL sessions an earlier run of this agent left
  // (its process gone, its sessions not noticed gone yet: a machine that
  // died leaves no TCP reset), which hold their open transactions' row
  // locks and marker rows. Found by their application_name (sessionPrefix_).
  void endEarlierSessions(PGconn* c);
  // PostgreSQL's prepared transactions of this agent against the branch
  // log: committed or rolled back as the log says, kept when PREPARED, and
  // recorded PREPARED in doubt when the log has no record and no prepare of
  // it is in flight here. At start-up and then by the keeper: a prepare
  // whose pipeline PostgreSQL finished after its agent (or its connection)
  // died, or a ROLLBACK PREPARED that failed after the record said rolled
  // back, is cleaned up without a restart.
  struct Swept {
    std::size_t kept = 0, recovered = 0, recoveredEarlier = 0, rolledBack = 0, committed = 0;
  };
  struct Held;
  Swept sweepPrepared(PGconn* c);
  void settleHeld(PGconn* c, const Held& h, Swept& out);
  // The sweep for the gids of one branch (a retry after its COMMIT PREPARED
  // or ROLLBACK PREPARED failed); true if it did something.
  bool settleHeldOf(PGconn* c, Xid xid);
  // The keeper thread: sweeps (every kSweepPeriod; every kFastSweepPeriod
  // for a while after start-up and after the pools reconnect), and retries
  // the branches it owes PostgreSQL with capped exponential backoff.
  void keeperLoop();
  bool runSweep();  // false: PostgreSQL unreachable
  // How long after start-up or a reconnect a prepare that was in flight may
  // still complete in PostgreSQL: sweeps run every kFastSweepPeriod meanwhile.
  std::chrono::milliseconds settleWindow() const;
  // A branch whose COMMIT PREPARED / ROLLBACK PREPARED failed (PostgreSQL
  // unreachable): what the coordinator asked is done again (Commit,
  // Rollback), or the branch's held gids are settled as its final record
  // says (Settle). `unreachable`: the failure says PostgreSQL is. Any thread.
  enum class Owe : std::uint8_t { Settle, Commit, Rollback };
  struct Owed;
  void owe(Xid xid, Owe what, std::uint64_t epoch, std::uint32_t failed, bool unreachable = false,
           std::uint64_t hostTxid = 0);
  void retryOwed(PGconn* c, Xid xid, Owed o);  // a finish-pool job; c null: unreachable
  // PostgreSQL (or the way to it) is back: retries and a sweep now.
  void reconnected();
  // The sweep recorded a branch knownInDoubt says is in doubt: wakes the
  // resolver (inDoubtRecorded). Any thread.
  void noteKnownInDoubt();
  // BEGIN; statements; SELECT txid_current(); PREPARE TRANSACTION in one
  // pipelined round trip: sendOneTrip queues it (pipeline mode), the loop
  // sends it and collects the results, readOneTrip reads them (and leaves
  // pipeline mode). Either fails with a fault when the connection broke
  // (PostgreSQL may have prepared it all the same).
 public:
  struct Call;  // one call of a declared statement as libpq takes it
 private:
  // One-phase (`closing` the INSERT of the branch's marker row,
  // markerInsertSql, instead of PREPARE TRANSACTION): the
  // transaction stays open for the intent record and COMMIT
  // (onePhaseOnLoop); `prepared` and `prepareFailed` then speak of that
  // INSERT.
  struct OneTrip {
    bool prepared = false;                     // PREPARE TRANSACTION succeeded
    std::optional<std::string> refused;        // a statement failed: nothing prepared
    std::optional<std::string> wrongRows;      // a row count the op forbids (nothing prepared)
    std::optional<std::string> prepareFailed;  // PREPARE TRANSACTION itself failed
    std::uint64_t txid = 0;                    // txid_current() of the prepared transaction
  };
  // `closing` ends the trip: PREPARE TRANSACTION with the branch's gid,
  // or a one-phase branch's marker row INSERT. Returns whether it went in
  // the pipeline: not when a statement's row count is checked by the
  // agent, not by PostgreSQL (sendOneTrip says why). readOneTrip names the
  // closing statement `closingWhat` in its errors.
  bool sendOneTrip(pg::LoopConn& lc, const std::vector<Op>& ops, std::vector<Call>& calls, const std::string& closing);
  OneTrip readOneTrip(pg::LoopConn& lc, std::vector<pg::Result>& rs, const std::vector<Call>& calls,
                      std::vector<OpResult>& results, bool withPrepare,
                      const char* closingWhat = "PREPARE TRANSACTION");
  // A one-phase branch on a connection of the loop (docs/postgres.md, "One
  // participant only"): the statements and the marker row in one
  // pipelined trip, the ACTIVE intent record forced, COMMIT, then the
  // answer; a committed branch's final record follows lazily
  // (OnePhaseCommittedJob), a rolled-back one's is forced.
  struct OnePhaseState;
  kj::Promise<OnePhaseResult> onePhaseOnLoop(pg::LoopConn& lc, std::uint64_t epoch, Xid xid, std::vector<Op> ops);
  class OnePhaseCommittedJob;
  // A one-phase branch's final record: committed or rolled back, as
  // PostgreSQL has it. Writer thread.
  void writeOnePhaseFinal(lmdb::Txn& txn, Xid xid, std::uint64_t epoch, const std::vector<Op>& ops, BranchStatus st,
                          const std::string& reason, std::uint64_t txid) const;
  // A prepare on a connection of the loop: the one trip, the NO vote's
  // record or the lazy PREPARED record, a ROLLBACK PREPARED where the
  // branch was refused after PostgreSQL prepared it or a rollback overtook it.
  struct PrepareState;
  kj::Promise<PrepareResult> prepareOnLoop(pg::LoopConn& lc, std::uint64_t epoch, Xid xid, std::vector<Op> ops);
  // A commit of a PREPARED branch on a connection of the loop; the rare
  // cases go to commitOne on the finish pool (commitOnPool). hostTxid: the
  // txid the coordinator's COMMIT record holds for the branch (0 = none).
  kj::Promise<BranchOutcome> commitOnLoop(Xid xid, std::uint64_t epoch, std::uint64_t hostTxid);
  kj::Promise<BranchOutcome> commitOnPool(Xid xid, std::uint64_t epoch, std::uint64_t hostTxid);
  // COMMIT PREPARED of a branch whose PREPARED record is still on its way,
  // on the coordinator's word for its txid: not waiting for that record.
  kj::Promise<BranchOutcome> commitPendingOnLoop(Xid xid, std::uint64_t epoch, std::uint64_t hostTxid);
  // COMMIT PREPARED of gid `g` on the loop, then the lazy COMMITTED record.
  kj::Promise<BranchOutcome> commitPreparedOnLoop(Xid xid, std::uint64_t epoch, std::string g,
                                                  std::uint64_t hostTxid);
  // The COMMITTED record after PostgreSQL's commit: the PREPARED record
  // finished, or, when that was never written, a finished record made here.
  void writeCommitted(lmdb::Txn& txn, Xid xid, std::uint64_t epoch, std::uint64_t hostTxid) const;
  // commitOne's case of no record and no prepared transaction, with the
  // coordinator's txid for the branch: settled by its txid_status.
  BranchOutcome commitByCoordinatorsTxid(PGconn* c, Xid xid, std::uint64_t epoch, std::uint64_t hostTxid);
  // A failpoint on the loop: a delay waits on the timer instead of
  // stopping the loop (other calls go on meanwhile, as on a pool thread).
  kj::Promise<void> failpointOnLoop(const char* name);
  // What PostgreSQL did with a one-phase branch whose outcome we lost.
  // nullopt: PostgreSQL still runs it ('in progress': its COMMIT is in
  // flight, or its session has not noticed our crash yet); ask again later.
  std::optional<BranchStatus> settleOnePhase(PGconn* c, BranchRecord& rec);
  // settleOnePhase's end: `final` recorded over the ACTIVE record, unless
  // the record was finished meanwhile (then that stands and is returned).
  std::optional<BranchStatus> recordSettled(const BranchRecord& rec, BranchStatus final, const std::string& reason);
  // Whether a one-phase branch's marker row is committed (true) or not
  // there (false), waiting for a transaction that still holds it; nullopt
  // if one still does after a lock_timeout. Worker thread.
  std::optional<bool> probeMarker(PGconn* c, const std::string& gid);
  // A one-phase call of `xid` is running in this process (onePhaseRunning_).
  bool onePhaseRunningHere(Xid xid) const;
  // A committed one-phase branch's marker row is no longer needed once its
  // COMMITTED record is durable: queued here, deleted by the keeper's sweep
  // in batches (dropMarkers). At start-up every marker of ours but those of
  // ACTIVE records is deleted (dropStaleMarkers).
  void markerDone(std::string gid);
  void dropMarkers(PGconn* c);
  std::size_t dropStaleMarkers(PGconn* c);
  BranchOutcome commitOne(PGconn* c, Xid xid, std::uint64_t epoch, std::uint64_t hostTxid = 0);
  // A prepared transaction of ours that PostgreSQL holds: its gid, what the
  // gid names, and its txid.
  struct Held {
    std::string gid;
    PgGid names;
    std::uint64_t txid = 0;
  };
  // This database's prepared transactions whose gid meets `gidCondition`
  // (SQL) and is one of ours (others are skipped).
  std::vector<Held> heldPrepared(PGconn* c, const std::string& gidCondition);
  // Every gid of the branch that PostgreSQL holds, whatever its incarnation.
  std::vector<Held> heldPreparedOf(PGconn* c, Xid xid);
  // A gid PostgreSQL holds that has no record: recorded PREPARED, in doubt,
  // with its txid and incarnation (false if a record is there already).
  bool recordInDoubt(lmdb::Txn& txn, const Held& h, const std::string& reason) const;
  // The gid PostgreSQL prepared for a recorded branch.
  std::string gidOf(const BranchRecord& rec) const;
  // The PREPARED branch's final state from what PostgreSQL did (not what we
  // were asked), with the reason why; what the log holds afterwards.
  std::optional<BranchRecord> finishFromHost(Xid xid, std::uint64_t epoch, BranchStatus state,
                                             const std::string& reason);
  // Nothing tells what became of the branch: logged once, its PREPARED
  // record (if any) says so in its reason, no outcome is written.
  BranchOutcome answerUnknown(Xid xid, const std::string& why);
  // The PREPARED record, lazily (or forced when `force`: a coordinator epoch
  // not yet durable here). False when, forced, it found a rollback's
  // tombstone (lazily, preparedRecordDone undoes PostgreSQL's half).
  class PreparedRecordJob;
  kj::Promise<bool> recordPrepared(std::uint64_t epoch, Xid xid, const std::vector<Op>& ops, std::uint64_t txid,
                                   bool force);
  bool writePrepared(lmdb::Txn& txn, std::uint64_t epoch, Xid xid, const std::vector<Op>& ops,
                     std::uint64_t txid) const;
  void preparedRecordDone(Xid xid, std::exception_ptr err, bool written) noexcept;
  bool pendingRecord(Xid xid);
  void pruneUnrecorded();  // drops unrecorded_ entries whose branch has a record now
  std::optional<std::uint64_t> pendingTxid(Xid xid);  // the txid of a record in pending_; nullopt if none
  // Between PREPARE TRANSACTION (sent) and a record in the log: preparing_
  // or pending_.
  bool prepareInFlight(Xid xid);
  bool epochNeedsForce(std::uint16_t node, std::uint64_t epoch);
  BranchOutcome rollbackOne(PGconn* c, Xid xid, std::uint64_t epoch);
  // Commits (or rolls back) each branch as its own finish-pool job.
  kj::Promise<std::vector<BranchOutcome>> finishAll(std::vector<Xid> xids, bool commit, std::uint64_t epoch,
                                                    std::vector<std::uint64_t> hostTxids = {});

  PgAgentOptions opts_;
  BranchLog log_;
  kj::Timer& timer_;
  // The hot path's connections, driven by the event loop: prepares, and
  // the commits of PREPARED branches. Each as large as the pool size.
  std::string sessionPrefix_;  // pgSessionPrefix: how every connection's application_name begins
  std::unique_ptr<pg::LoopPool> loopPrepare_;
  std::unique_ptr<pg::LoopPool> loopFinish_;
  // ROLLBACK PREPARED, the rare commits (commitOne), the keeper's sweeps
  // and retries, on connections of their own: they release the locks that
  // statements may be waiting for, so they must never queue behind them.
  std::unique_ptr<pg::Pool> finishPool_;
  // Every call's promise handed out (prepare, commit, rollback, one-phase)
  // is wrapped here; the destructor cancels what is still running before
  // the pools go (see ~PgAgent).
  kj::Canceler canceler_;
  mutable std::mutex mu_;
  std::set<Xid> preparing_;  // GUARDED_BY(mu_): a prepare's pool job is running
  std::set<Xid> onePhaseRunning_;  // GUARDED_BY(mu_): a one-phase call is running (commitOnePhase)
  // Voted YES, PREPARED record not yet durable (lazy): what listBranches
  // shows of it meanwhile.
  struct PendingVote {
    std::uint64_t txid = 0, epoch = 0;
    Micros preparedUs = 0;
  };
  // Declared statements PostgreSQL can check the row count of, by name
  // (set at construction, read-only after): the wrapped text of a declared
  // count is made once, not per call.
  std::map<std::string, RowCheckable> checkable_;
  std::map<Xid, PendingVote> pending_;  // GUARDED_BY(mu_)
  // Voted YES, and the lazy PREPARED record failed (an LMDB error the
  // process survived): PostgreSQL holds the branch prepared, so
  // listBranches goes on listing it until a record is on file (the
  // keeper's sweep records it in doubt; a commit or rollback records it),
  // then pruneUnrecorded drops it. Not "in flight": the sweep takes it.
  std::map<Xid, PendingVote> unrecorded_;  // GUARDED_BY(mu_)
  std::map<std::uint16_t, std::uint64_t> durableEpochs_;  // GUARDED_BY(mu_): per coordinator node
  bool stopping_ = false;                                 // GUARDED_BY(mu_)
  std::set<Xid> warnedUnknown_;                           // GUARDED_BY(mu_): answered Unknown, logged once
  std::set<std::string> warnedStray_;                     // GUARDED_BY(mu_): a gid its record does not name
  std::vector<std::string> markersDone_;                  // GUARDED_BY(mu_): marker rows to delete

  // The keeper's state, GUARDED_BY(mu_).
  using Clock = std::chrono::steady_clock;
  struct Owed {
    Owe what = Owe::Settle;  // the coordinator's decision, or none
    bool settle = false;     // and settle the held gids as the record says
    std::uint64_t epoch = 0;
    std::uint64_t hostTxid = 0;  // commit: the coordinator's txid for the branch (0 = none)
    std::uint32_t failed = 0;  // attempts that failed so far
    Clock::time_point due;
  };
  std::map<Xid, Owed> owed_;           // not being retried right now
  bool hostDown_ = false;              // the last attempt found PostgreSQL unreachable: retries wait
  std::uint64_t retriedDone_ = 0;      // finished by a retry since the last log line
  Clock::time_point nextSweep_;        // the next sweep
  Clock::time_point fastUntil_;        // sweeps every kFastSweepPeriod until then
  std::uint32_t sweepFailures_ = 0;    // in a row
  // The resolver's wake-up, GUARDED_BY(mu_).
  bool inDoubtNew_ = false;  // recorded since the resolver last waited
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> inDoubtWake_;  // the resolver waits on it
  std::condition_variable keeperCv_;
  std::thread keeper_;
};

// A PostgreSQL error as a reason a branch was refused.
std::string describePgError(const pg::PgError& e);

// The table whose rows mark one-phase commits (docs/postgres.md, "One
// participant only"), and the SQL that creates it.
inline constexpr const char* kMarkerTable = "keel_one_phase";
inline constexpr const char* kMarkerTableSql =
    "CREATE TABLE IF NOT EXISTS keel_one_phase (gid text PRIMARY KEY, created timestamptz NOT NULL DEFAULT now())";

// Whether an error from COMMIT proves that PostgreSQL rolled the
// transaction back (a serialization failure, a deferred constraint): any
// other error (the connection lost, the server shutting down or crashing:
// SQLSTATE 57P01, 57P02...) may arrive after the commit record is durable.
bool commitErrorMeansRolledBack(const pg::PgError& e);

// The 64-bit txid of a 32-bit xid (pg_prepared_xacts.transaction): the one
// nearest to `reference`, a current 64-bit txid (txid_snapshot_xmax of a
// current snapshot). A live transaction's xid is always less than 2^31 away
// from it (PostgreSQL's wraparound protection), on either side: a snapshot's
// xmax is the latest completed txid + 1, so a prepared transaction may be
// above it. The epoch is right across a wraparound of the low 32 bits. 0 if
// the nearest would be below txid 1.
std::uint64_t fullTxid(std::uint64_t reference, std::uint32_t xid);

}  // namespace keel
