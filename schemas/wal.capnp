@0xcefa27e355f87f16;
# On-disk records of the coordinator WAL and the agent branch log.
#
# Every value stored in LMDB is an envelope (see common/records.h):
#   magic "KL" | format version u8 | record type u8 | payload length u32 |
#   CRC-32C of payload u32 | payload = one Cap'n Proto message (flat array)
# A reader refuses an unknown version or a checksum mismatch. Fields may only
# be added (Cap'n Proto rules); a change of meaning bumps the format version.

$import "/capnp/c++.capnp".namespace("keel::disk");

using Keel = import "keel.capnp";

struct InteractionRecord {
  enum State {
    preparing @0;    # seq assigned, prepares in flight (or interactive work)
    committing @1;   # COMMIT decided and durable; phase 2 in progress
    aborting @2;     # ABORT decided; the rollback driver is at work
    committed @3;    # every participant acknowledged commit
    rolledBack @4;   # every participant confirmed rollback
    heuristicMixed @5;    # final: branches ended differently (see branches)
    heuristicUnknown @6;  # final: a branch's outcome cannot be known
  }
  enum Decision { none @0; commit @1; abort @2; }

  struct Branch {
    participant @0 :Text;
    branch @1 :UInt16;
    state @2 :BranchState;
    reason @3 :Text;              # vote reason or last error
    operations @4 :List(Keel.Operation);
    hostTxid @5 :UInt64;          # the txid its YES vote carried (postgres; 0 = none), sent with commit
  }
  enum BranchState {
    pending @0;      # nothing sent yet
    preparing @1;    # prepare (or execute) sent, no vote yet
    prepared @2;     # voted YES
    readOnly @3;     # voted READ-ONLY: finished
    votedNo @4;      # voted NO: the agent rolled it back itself
    failed @5;       # no vote: error or deadline
    committed @6;    # commit acknowledged
    rolledBack @7;   # rollback confirmed
    unknown @8;      # the participant cannot tell how it ended (heuristic)
  }

  seq @0 :UInt64;
  epoch @1 :UInt64;          # coordinator incarnation that started it
  interactive @2 :Bool;
  onePhase @3 :Bool;
  state @4 :State;
  decision @5 :Decision;
  error @6 :Text;            # why it failed, when it did
  createdUs @7 :UInt64;      # unix microseconds of each step; 0 = not reached
  votesUs @8 :UInt64;
  decidedUs @9 :UInt64;
  completedUs @10 :UInt64;
  branches @11 :List(Branch);
  phase2Attempts @12 :UInt32;
  failedUs @13 :UInt64;      # first failure seen (abort, failed phase-2 call, crash); 0 = none
  requestId @14 :Text;       # the client's request id ("" = none)
  requestTimeUs @15 :UInt64; # when the client first sent it (its clock)
  deadlineMs @16 :UInt32;    # the deadline in force (capped by max_interaction_ms)
  recoveredBy @17 :Text;     # "" or how the record came to be ("sweep": from the agents' branches)
  staged @18 :Bool;          # written before the votes (staged commit): undecided, it is settled by the votes the participants hold, never presumed aborted
}

# The coordinator's `requests` table: request id -> the interaction it names.
struct RequestRecord {
  seq @0 :UInt64;
  fingerprint @1 :UInt64;     # of the request's operations (a reuse with others is refused)
  requestTimeUs @2 :UInt64;   # the client's first-sent time
  firstSeenUs @3 :UInt64;     # the coordinator's clock when it was first recorded
}

# Operator action on an interaction (keelctl resolve), kept for audit.
struct AuditRecord {
  atUs @0 :UInt64;
  seq @1 :UInt64;
  action @2 :Text;           # "force-commit" / "force-abort"
  who @3 :Text;
  why @4 :Text;
  override @5 :Bool;
  previous @6 :Text;         # state and decision before the action
}

struct RollbackRecord {
  struct Confirmation {
    participant @0 :Text;
    atUs @1 :UInt64;
  }
  seq @0 :UInt64;
  reason @1 :Text;
  requestedUs @2 :UInt64;
  attempts @3 :UInt32;
  lastError @4 :Text;
  lastAttemptUs @5 :UInt64;
  pending @6 :List(Text);            # participants still to confirm
  confirmed @7 :List(Confirmation);
  completedUs @8 :UInt64;            # 0 until every participant confirmed
}

# Agent branch log (participant side), keyed by XID.
struct BranchRecord {
  seq @0 :UInt64;
  branch @1 :UInt16;
  state @2 :Keel.BranchState;
  epoch @3 :UInt64;
  tombstone @4 :Bool;                # rolled back before it was ever seen
  onePhase @5 :Bool;
  operations @6 :List(Keel.Operation);
  createdUs @7 :UInt64;
  preparedUs @8 :UInt64;
  finishedUs @9 :UInt64;
  reason @10 :Text;
  hostTxid @11 :UInt64;              # postgres: the transaction id, to ask txid_status()
  hostIncarnation @12 :UInt64;       # postgres: the agent incarnation in its gid (0: a gid without one)
  hostStep @13 :UInt8;               # host: HostStep (participant/host_agent.h); 0 for other adapters
  hostRefs @14 :List(Text);          # host: the host's reference per operation, from its try answers
  hostMarker @15 :Bool;              # postgres one-phase: its COMMIT also commits the row
                                     # keel_one_phase(gid), which (not txid_status) tells the outcome
}

# Ledger account (participant side), keyed by account name.
struct AccountRecord {
  balance @0 :Int64;
  held @1 :Int64;          # prepared debits not yet committed
  opening @2 :Bool;        # created by a prepared openAccount, not yet committed
  openedBy @3 :Xid;
}

struct Xid {
  seq @0 :UInt64;
  branch @1 :UInt16;
}
