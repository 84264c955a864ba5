@0xec7bd7444997289b;
# Keel wire protocol: the coordinator's client API and the participant API.
#
# Protocol outcomes (a NO vote, an unknown branch, a rolled-back interaction)
# are values in these structs, never RPC exceptions. An exception means a
# fault: the connection broke, a deadline passed, or a bug.

$import "/capnp/c++.capnp".namespace("keel::wire");

# ---------------------------------------------------------------- operations

enum LedgerOpKind {
  openAccount @0;   # create `account` holding `amount` (>= 0) as its first balance
  credit @1;        # add `amount` (> 0) at commit
  debit @2;         # hold `amount` (> 0) at prepare, take it at commit; never overdraws
  readBalance @3;   # read-only: result carries the committed balance
  sql @4;           # postgres adapter: call the declared `statement` with `params` (never spliced)
}

# A typed SQL parameter ($1, $2, ...).
struct SqlValue {
  union {
    null @0 :Void;
    int @1 :Int64;
    text @2 :Text;
    float @3 :Float64;
    bool @4 :Bool;
  }
}

struct Operation {
  participant @0 :Text;     # name of the participant (host system) it runs on
  kind @1 :LedgerOpKind;
  account @2 :Text;         # ledger kinds
  amount @3 :Int64;         # ledger kinds
  sql @4 :Text;             # kind sql: free SQL text; refused (kept so old records decode)
  params @5 :List(SqlValue);  # kind sql: $1, $2, ... of the statement
  expectRows @6 :Int64 = -1;  # kind sql: rows it must touch (or return), -1 = any; only tightens
                              # the declaration's expected rows
  statement @7 :Text;       # kind sql: name of a statement the agent declares (docs/postgres.md)
}

struct SqlCell {
  union {
    null @0 :Void;
    value @1 :Text;         # PostgreSQL's text form
  }
}

struct OpResult {
  balance @0 :Int64;        # readBalance: committed balance; others: 0
  available @1 :Int64;      # readBalance: balance minus holds of prepared debits
  rows @2 :List(List(SqlCell));  # kind sql: result rows
  affected @3 :Int64;       # kind sql: rows touched (or returned)
}

struct Xid {
  seq @0 :UInt64;           # interaction sequence number
  branch @1 :UInt16;        # branch number inside the interaction
}

# ---------------------------------------------------------------- participant API

enum Vote {
  yes @0;         # PREPARED is durable: the branch will commit if told to
  no @1;          # the branch is rolled back (reason says why)
  readOnly @2;    # nothing to commit; the branch is finished already
}

enum BranchOutcome {
  committed @0;
  rolledBack @1;
  unknown @2;            # commit for an XID the agent never prepared
  notPrepared @3;        # commit for a branch still ACTIVE (never voted)
  conflict @4;           # commit of a rolled-back branch: a protocol violation
  released @5;           # the branch is below its coordinator node's release
                         # floor (`release`): its interaction was finished and
                         # archived, the agent no longer holds its record
}

enum BranchState {
  active @0;       # interactive work done, not yet voted
  prepared @1;     # voted YES, holds are durable, waiting for the decision
  committed @2;
  rolledBack @3;
}

struct BranchInfo {
  xid @0 :Xid;
  state @1 :BranchState;
  epoch @2 :UInt64;         # coordinator epoch that prepared it
  preparedAtUs @3 :UInt64;  # unix microseconds
  tombstone @4 :Bool;       # rolled back before it was ever seen
  createdAtUs @5 :UInt64;   # first seen by the agent (unix microseconds)
  operations @6 :List(Operation);  # the branch's operations (recover only: the
                                   # coordinator's sweep tells the whole story)
  hostStep @7 :Text;        # adapter host: trying / tried / confirming / cancelling ("" otherwise)
  hostRefs @8 :List(Text);  # adapter host: the host's reference per operation
  reason @9 :Text;          # why it ended as it did, or why it is being cancelled
}

struct AccountInfo {
  name @0 :Text;
  balance @1 :Int64;
  held @2 :Int64;           # sum of prepared (uncommitted) debits
}

struct NodeEpoch {
  node @0 :UInt16;
  epoch @1 :UInt64;
}

struct NodeFloor {
  node @0 :UInt16;
  floor @1 :UInt64;         # the node's release floor held here (Participant.release)
  kept @2 :UInt32;          # how many seqs below it the node asked to keep
}

interface Participant {
  # Executes `operations` and prepares the branch in one call. Adds to an
  # ACTIVE branch created by `execute` if there is one.
  prepare @0 (epoch :UInt64, xid :Xid, operations :List(Operation))
      -> (vote :Vote, reason :Text, results :List(OpResult), hostTxid :UInt64);

  # Interactive mode: run operations in an ACTIVE branch without voting.
  execute @1 (epoch :UInt64, xid :Xid, operations :List(Operation))
      -> (ok :Bool, reason :Text, results :List(OpResult));

  # Phase 2. Idempotent per XID; takes many XIDs so phase 2 can be batched.
  # hostTxids: empty, or one per XID (0 = none): the hostTxid each branch
  # voted YES with, from the coordinator's durable COMMIT record. A
  # postgres agent then need not wait for its own PREPARED record before
  # COMMIT PREPARED (docs/postgres.md, "The txid in the vote").
  commit @2 (epoch :UInt64, xids :List(Xid), hostTxids :List(UInt64)) -> (outcomes :List(BranchOutcome));
  rollback @3 (epoch :UInt64, xids :List(Xid)) -> (outcomes :List(BranchOutcome));

  # Single-participant interaction: execute and commit in one step. The
  # participant decides: committed, or rolledBack with a reason.
  commitOnePhase @4 (epoch :UInt64, xid :Xid, operations :List(Operation))
      -> (outcome :BranchOutcome, reason :Text, results :List(OpResult));

  # Branches not finished (ACTIVE or PREPARED): the in-doubt list for recovery.
  # epoch 0 = an operator looking (keelctl branches): not fenced.
  recover @5 (epoch :UInt64, node :UInt16) -> (branches :List(BranchInfo));

  # Operator and test view: every account and the branch count by state.
  inspect @6 () -> (name :Text, accounts :List(AccountInfo),
                    prepared :UInt32, active :UInt32, committed :UInt32,
                    rolledBack :UInt32,
                    logCommits :UInt64, logJobs :UInt64,
                    fences :List(NodeEpoch), floors :List(NodeFloor),
                    logCheckpoints :UInt64, logCheckpointMicros :UInt64);
  # fences: the newest epoch this agent has seen from each coordinator node
  # (older ones are refused as stale); a restore starts above them.
  # logCommits / logJobs: the branch log's durable LMDB commits (each one
  # fsync-bearing) and the jobs they carried, since the agent started.
  # floors: each coordinator node's release floor held here.
  # logCheckpoints / logCheckpointMicros: redo mode, the branch log's
  # checkpoints and the time they took (its writer takes no group meanwhile)
  # since the agent started; 0 without redo mode.

  # Outcome of given branches as the agent knows them (no change made).
  status @7 (xids :List(Xid)) -> (branches :List(BranchInfo), known :List(Bool));

  # Drops the records of FINISHED branches (committed or rolled back) that
  # no prepare can reach any more: below their node's release floor, or
  # older than an epoch of their node fenced since. Unfinished ones are
  # kept, and so is any finished one (a tombstone above all) while a late
  # prepare of it may still arrive (reasons: one per refused xid, why).
  # epoch 0 = an operator's request (keelctl forget): not fenced.
  forget @8 (epoch :UInt64, xids :List(Xid)) -> (forgotten :UInt32, refused :List(Xid), reasons :List(Text));

  # Every branch record in XID order, a page at a time, starting after
  # `after` (all zero = from the start): the agent's own account of what
  # happened, for checkers such as keel-chaos.
  # floors: the release floors held here; a seq below its node's floor
  # whose record is absent was finished and released (docs/protocol.md).
  listBranches @9 (after :Xid, limit :UInt32) -> (branches :List(BranchInfo), more :Bool, floors :List(NodeFloor));

  # Many prepares in one message: the coordinator sends here every prepare
  # it has for this participant in one event-loop turn (or queued while
  # earlier batches are out). Each item is its own branch with its own vote,
  # exactly as if sent alone by `prepare`; `votes` is in item order, and the
  # answer leaves when every item has voted (each YES durable first).
  #
  # `sink`, if given, hears votes as they become ready, before the answer:
  # one slow item (a PostgreSQL row lock, say) then holds up no other
  # item's vote, and no other interaction's decision. The answer still
  # carries every vote.
  prepareBatch @10 (epoch :UInt64, items :List(PrepareItem), sink :VoteSink)
      -> (votes :List(PrepareVote));

  # How the coordinator should batch its calls to this participant, asked
  # once per connection: at most `maxBatch` calls per message and
  # `maxInFlight` messages out at once per kind. 0 = no preference (the
  # coordinator's batch_max / batch_in_flight). A postgres agent asks for
  # one prepare per message and as many in flight as its pool has
  # connections: a prepare can wait on a row lock, and sharing a message
  # would hold the others' votes.
  #
  # `preparedVisible`: every branch this participant voted YES on is listed
  # by `listBranches` (as prepared, or as ended) from before the vote leaves
  # until the coordinator releases it, across restarts of the agent. Only
  # then may the coordinator answer a client "committed" on the staged
  # record and the YES votes alone, without a COMMIT record first
  # (docs/protocol.md, "Staged commit"): its recovery reads the votes back
  # with listBranches. A ledger or host agent says true (its PREPARED record
  # is durable before the YES); a postgres agent says false (its record is
  # lazy: PostgreSQL's prepared transaction is what is durable); an older
  # agent, which does not send it, reads as false.
  batching @11 () -> (maxBatch :UInt32, maxInFlight :UInt32, preparedVisible :Bool);

  # The statements this agent runs for clients (a postgres agent's declared
  # statements; docs/postgres.md). Asked once per connection, so that the
  # coordinator answers a call that does not fit them `invalid` (nothing
  # written, no seq) instead of the agent voting no. `declared` false: the
  # agent runs no SQL (a ledger agent). The agent still checks every call.
  statements @12 () -> (declared :Bool, statements :List(StatementDeclaration));

  # Operator: a hot backup of the agent's branch log (and, for a ledger
  # agent, its books), streamed into `sink` (see BackupSink).
  backup @13 (sink :BackupSink) -> (bytes :UInt64, micros :UInt64);

  # Coordinator node `node` (at `epoch`, fenced like every call) releases
  # its seqs below `floor`, except `keep` (at most 1024, each below the
  # floor): their interactions are finished at every participant and
  # archived. The agent refuses any prepare, execute or one-phase call of a
  # released seq from then on, and drops its finished records of them, at
  # most 20,000 per call (`more`: call again). Sent after each archive pass
  # (docs/protocol.md, "Release"). A floor below the one held changes
  # nothing; `floor` in the answer is the one in force.
  release @14 (epoch :UInt64, node :UInt16, floor :UInt64, keep :List(UInt64))
      -> (dropped :UInt32, more :Bool, floor :UInt64);
}

# Where a hot backup goes (keelctl backup serves it). The server copies its
# LMDB environment compacted (mdb_env_copyfd2, MDB_CP_COMPACT) from one read
# snapshot while it keeps serving: `start` once, then the copy's bytes in
# order; the backup call's answer comes after the last write. A failed
# write (the caller gone) stops the copy.
interface BackupSink {
  # `estimateBytes`: an upper bound of the copy's size (the map's used
  # pages), for progress. `identity`: the data directory's keel.identity.
  start @0 (estimateBytes :UInt64, identity :Text) -> ();
  write @1 (bytes :Data) -> stream;
}

struct StatementDeclaration {
  name @0 :Text;
  params @1 :List(Text);    # declared types: int8, text, float8, bool; '?' allows null
  expectRows @2 :Int64;     # -1 = any
}

interface VoteSink {
  votes @0 (votes :List(IndexedVote)) -> ();
}

struct IndexedVote {
  index @0 :UInt32;       # the item's position in its prepareBatch
  vote @1 :PrepareVote;
}

struct PrepareItem {
  xid @0 :Xid;
  operations @1 :List(Operation);
}

struct PrepareVote {
  vote @0 :Vote;
  reason @1 :Text;
  results @2 :List(OpResult);
  error @3 :Text;   # non-empty: this item failed as a fault (as if its own
                    # `prepare` call had raised); its vote means nothing
  hostTxid @4 :UInt64;  # YES from a postgres agent: the branch's PostgreSQL
                        # transaction id (0 = none); sent back with commit
}

# Why a participant refused a call as a whole (the call's answer carries it
# as an RPC error of type FAILED whose description starts with these words).
#   "stale epoch":  the call carries an epoch older than the newest this
#                   agent has seen from that coordinator node (fencing).

# ---------------------------------------------------------------- client API

enum Outcome {
  committed @0;
  rolledBack @1;     # every effect undone or being undone; see the rollback record
  inDoubt @2;        # one-phase call lost: the participant decides; query later
  invalid @3;        # bad request: nothing was written, no seq was assigned
  unavailable @4;    # the coordinator cannot take work now (retry later)
  heuristicMixed @5;    # branches ended differently (some committed, some rolled
                        # back, or not as decided): see the interaction record
  heuristicUnknown @6;  # a branch's outcome cannot be known: see the record
}

struct SubmitResult {
  seq @0 :UInt64;            # 0 when outcome is invalid
  outcome @1 :Outcome;
  reason @2 :Text;
  results @3 :List(OpResult);   # one per operation, in request order
  requestId @4 :Text;        # the request id the client gave (empty: none)
  replayed @5 :Bool;         # the answer of an earlier request with this id:
                             # nothing ran again (results are not repeated)
}

interface Transaction {
  seq @0 () -> (seq :UInt64);
  execute @1 (operations :List(Operation)) -> (result :SubmitResult);
  commit @2 () -> (result :SubmitResult);
  rollback @3 () -> (result :SubmitResult);
}

# Request ids (idempotency keys). A client names each request with an id
# of its own choosing (1..128 printable ASCII characters, no spaces) and the
# time it first sent it (unix microseconds; a retry sends the same time).
# For one request id at most one interaction ever commits: a retry of an id
# whose interaction exists is answered with that interaction's seq and
# outcome (waiting while it is undecided), `replayed` set, and runs nothing.
# The same id with other operations is refused (invalid). Ids are kept for
# the coordinator's request_id_retention_s; an id first sent longer ago than
# that and no longer known is refused (invalid), never run again. An empty
# id means none: every submit is a new interaction. docs/protocol.md says
# what a retry gets in each case.

interface Coordinator {
  # One-shot interaction: all operations known up front.
  submit @0 (operations :List(Operation), deadlineMs :UInt32,
             requestId :Text, requestTimeUs :UInt64) -> (result :SubmitResult);

  # Interactive interaction: the returned capability is the transaction.
  # Dropping it before commit rolls the interaction back. With a request id
  # the coordinator already knows, no transaction is opened: `txn` is null
  # and `replay` carries that interaction's seq and outcome.
  begin @1 (deadlineMs :UInt32, requestId :Text, requestTimeUs :UInt64)
      -> (txn :Transaction, replay :SubmitResult);

  # The full story of one interaction: both records exactly as the WAL holds
  # them (envelope + checksum; decode with keel::decodeInteraction/Rollback).
  # `rollback` is empty when the interaction has no rollback record.
  query @2 (seq :UInt64) -> (found :Bool, interaction :Data, rollback :Data);

  # Interactions not yet complete, oldest first (encoded records).
  listUnfinished @3 (limit :UInt32) -> (interactions :List(Data));

  # Coordinator identity and counters.
  info @4 () -> (nodeId :UInt16, epoch :UInt64, participants :List(Text),
                 committed :UInt64, rolledBack :UInt64, unfinished :UInt64,
                 logCommits :UInt64, logJobs :UInt64, heuristic :UInt64,
                 clustered :Bool, takeoverCommitted :UInt64, takeoverRolledBack :UInt64,
                 etcdTxns :UInt64, etcdDecisions :UInt64,
                 logCheckpoints :UInt64, logCheckpointMicros :UInt64);
  # logCommits / logJobs: the WAL's durable LMDB commits (each one
  # fsync-bearing) and the jobs they carried, since the process started.
  # heuristic: interactions that ended heuristic since the process started.
  # clustered: a member of a coordinator cluster (docs/cluster.md); then
  # takeoverCommitted / takeoverRolledBack: branches of dead nodes this
  # member finished, and etcdTxns / etcdDecisions: the etcd txns it sent for
  # decisions, request ids and deletes, and the decisions they created.
  # logCheckpoints / logCheckpointMicros: redo mode, the WAL's checkpoints
  # and the time they took since the process started; 0 without redo mode.

  # Asked by an agent whose branch has been PREPARED too long.
  outcome @5 (seq :UInt64) -> (outcome :DecisionOutcome);

  # Window of inconsistency (failure -> last participant confirmed) over
  # every finished failed interaction in the WAL, and what is in doubt now.
  stats @6 () -> (stats :WindowStats);

  # Operator: wake the drivers of `seq` (0 = all) now instead of after backoff.
  retryNow @7 (seq :UInt64) -> (woken :UInt32);

  # Operator: force the decision of an unfinished interaction. Refused where
  # it contradicts a durable decision unless `override`. Leaves an audit
  # entry in the WAL either way it is carried out.
  resolve @8 (seq :UInt64, commit :Bool, who :Text, why :Text, override :Bool)
      -> (done :Bool, reason :Text);

  # Operator: audit entries, oldest first (encoded AuditRecord JSON lines).
  audit @9 (limit :UInt32) -> (entries :List(Text));

  # Many one-shot interactions in one message (the client library batches
  # submits made while earlier batches are out). Each item is an independent
  # interaction with its own seq, records and decision, exactly as if sent
  # by `submit`; `results` is in item order, and the answer leaves when every
  # item has been answered.
  submitBatch @10 (items :List(SubmitItem)) -> (results :List(SubmitResult));

  # The full story of the interaction a request id names (as `query`).
  queryRequest @11 (requestId :Text) -> (found :Bool, interaction :Data, rollback :Data);

  # Interactions that ended heuristic-mixed or heuristic-unknown and that no
  # operator has marked reconciled yet, oldest first (encoded records).
  listHeuristic @12 (limit :UInt32) -> (interactions :List(Data));

  # Operator: the hosts of a heuristic interaction were reconciled by hand;
  # it leaves listHeuristic. Leaves an audit entry in the WAL.
  reconciled @13 (seq :UInt64, who :Text, why :Text) -> (done :Bool, reason :Text);

  # Operator: a hot backup of the WAL, streamed into `sink` (BackupSink).
  # One at a time; the coordinator keeps serving meanwhile.
  backup @14 (sink :BackupSink) -> (bytes :UInt64, micros :UInt64);

  # Operator: every interaction record the WAL holds created in
  # [fromUs, toUs), with its rollback record, streamed into `sink` a page
  # at a time in seq order (one short read transaction per page; the event
  # loop serves others between pages). The answer comes after the last page.
  exportRange @15 (fromUs :UInt64, toUs :UInt64, sink :ExportSink)
      -> (interactions :UInt64, rollbacks :UInt64, scanned :UInt64, damaged :UInt64);

  # Operator: the interactions created in [fromUs, toUs), in seq order, that
  # have a branch at `participant` (empty: any) and are in `state` (a state
  # name as records.h spells it, empty: any); at most `limit` (1..10000).
  # `more`: the range holds further matches. Read a page at a time like
  # exportRange.
  search @16 (fromUs :UInt64, toUs :UInt64, participant :Text, state :Text, limit :UInt32)
      -> (interactions :List(Data), scanned :UInt64, more :Bool);

  # Operator: the archive's periods (coordinator/archive.h), oldest first.
  archivePeriods @17 () -> (periods :List(ArchivePeriod));

  # Operator: drops the archive periods before `before` (YYYY-MM-DD, not
  # included), each older than archive_retention_days; audited ("archive-
  # drop", durable before anything is removed). `refused`: why nothing was
  # dropped ("" when it was done).
  dropArchive @18 (before :Text, who :Text, why :Text) -> (dropped :List(Text), refused :Text);

  # Operator: an embedded participant's agent ([participants] NAME =
  # "embedded:FILE"), which has no address of its own, for what an operator
  # may call on a keel-agent: inspect, status, listBranches, batching,
  # statements, backup, and recover and forget with epoch 0. Every other
  # call on it is refused, whoever holds it (it never fences, prepares or
  # decides anything). Fails for a name that is not an embedded participant
  # of this coordinator (a keel-agent: ask it at its own address).
  embeddedParticipant @19 (name :Text) -> (participant :Participant);
}

struct ArchivePeriod {
  name @0 :Text;            # YYYY-MM-DD, the UTC day its interactions were created
  interactions @1 :UInt64;
  damaged @2 :Text;         # why it does not open ("" = fine)
}

interface ExportSink {
  # Encoded records as the WAL holds them (decode with
  # keel::decodeInteraction / decodeRollback); `rollbacks` holds the
  # rollback records of those interactions that have one. `scanned` /
  # `total`: records looked at so far / in the table, for progress. A
  # damaged record is skipped (counted in the answer's `damaged`, logged
  # by the coordinator; keel-coordinator --check-wal names it).
  page @0 (interactions :List(Data), rollbacks :List(Data), scanned :UInt64, total :UInt64) -> stream;
}

struct SubmitItem {
  operations @0 :List(Operation);
  deadlineMs @1 :UInt32;
  requestId @2 :Text;
  requestTimeUs @3 :UInt64;
}

enum DecisionOutcome {
  committed @0;     # COMMIT is durable: commit the branch
  rolledBack @1;    # aborted, or never decided by an earlier incarnation: roll back
  pending @2;       # still being decided: ask again later
  unknown @3;       # not this coordinator's seq
}

struct WindowStats {
  count @0 :UInt64;        # failed interactions finished (rollbacks + phase 2 retried)
  p50Us @1 :UInt64;
  p99Us @2 :UInt64;
  maxUs @3 :UInt64;
  inDoubt @4 :UInt64;      # unfinished interactions now
  oldestUs @5 :UInt64;     # age of the oldest of them
  rollbacks @6 :UInt64;    # of `count`: rolled back
  retriedCommits @7 :UInt64;  # of `count`: committed after phase-2 retries
  heuristic @8 :UInt64;       # of `count`: ended heuristic-mixed or heuristic-unknown
}
