#pragma once
// WAL and branch-log records as plain C++ values, and their on-disk form.
//
// On disk every record is an envelope (schemas/wal.capnp describes it):
//   bytes 0-1  magic "KL"
//   byte  2    format version (kFormatVersion)
//   byte  3    record type (RecordType)
//   bytes 4-7  payload length, little endian
//   bytes 8-11 CRC-32C of the payload, little endian
//   bytes 12-  payload: one Cap'n Proto message as a flat array
// decode*() throws CorruptRecord on a bad magic, version, type, length or
// checksum: a damaged record is never silently taken for a valid one.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/types.h"

namespace keel {

constexpr std::uint8_t kFormatVersion = 1;

enum class RecordType : std::uint8_t {
  Interaction = 1,
  Rollback = 2,
  Branch = 3,
  Account = 4,
  Audit = 5,
  Request = 6,
};

class CorruptRecord : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------ coordinator

// The coordinator's view of one interaction (the "interaction table" row).
struct InteractionRecord {
  // State machine of an interaction:
  //  Preparing  -> seq assigned, prepares (or interactive work) in flight.
  //               A crash here means no decision: recovery aborts it.
  //  Committing -> the COMMIT decision is durable; phase 2 is retried until
  //               every prepared participant acknowledged.
  //  Aborting   -> ABORT decided (need not be durable: presumed abort); the
  //               rollback driver runs until every participant confirmed.
  //  Committed / RolledBack -> final; every branch ended as decided.
  //  HeuristicMixed -> final; the branches did not all end as decided (an
  //               operator's override, a host committing or rolling back on
  //               its own): some committed, some rolled back. Told as such,
  //               never folded into committed or rolled back.
  //  HeuristicUnknown -> final; a participant could not tell how its branch
  //               ended (it never saw it, or its host lost it). An operator
  //               reconciles that host (docs/recovery.md).
  //  Final states are removed from the `active` index.
  enum class State : std::uint8_t { Preparing, Committing, Aborting, Committed, RolledBack, HeuristicMixed, HeuristicUnknown };
  enum class Decision : std::uint8_t { None, Commit, Abort };
  enum class BranchState : std::uint8_t {
    Pending, Preparing, Prepared, ReadOnly, VotedNo, Failed, Committed, RolledBack, Unknown
  };
  struct Branch {
    std::string participant;
    std::uint16_t branch = 0;
    BranchState state = BranchState::Pending;
    std::string reason;
    std::vector<Op> ops;
    std::uint64_t hostTxid = 0;  // its YES vote's (postgres), sent back with commit; 0 = none
  };

  std::uint64_t seq = 0;
  std::uint64_t epoch = 0;
  bool interactive = false;
  bool onePhase = false;
  State state = State::Preparing;
  Decision decision = Decision::None;
  std::string error;
  Micros createdUs = 0, votesUs = 0, decidedUs = 0, completedUs = 0;
  std::vector<Branch> branches;
  std::uint32_t phase2Attempts = 0;
  // When the first failure was seen (abort decided, a phase-2 call failed,
  // or the crash that recovery found); 0 = none. With completedUs it gives
  // the window of inconsistency.
  Micros failedUs = 0;
  std::string requestId;           // the client's request id ("" = none)
  std::uint64_t requestTimeUs = 0;  // when the client first sent it
  std::uint32_t deadlineMs = 0;    // the deadline in force
  std::string recoveredBy;         // "" or "sweep": rebuilt from the agents' branch records; "etcd": from a cluster decision
  // Staged commit (docs/protocol.md): this record was made durable in
  // parallel with the prepares, before any vote. Without a decision after
  // a crash it is settled by what the participants hold (every branch
  // prepared or committed: COMMIT; one missing or rolled back: ABORT),
  // never presumed aborted, for the client may have heard "committed".
  bool staged = false;
  // Staged and not decided: recovery settles it from the participants.
  bool stagedUndecided() const {
    return staged && decision == Decision::None && !onePhase && !interactive && !finished();
  }

  bool finished() const {
    return state == State::Committed || state == State::RolledBack || state == State::HeuristicMixed ||
           state == State::HeuristicUnknown;
  }
  bool heuristic() const { return state == State::HeuristicMixed || state == State::HeuristicUnknown; }
};

// The `requests` table's row: what a request id names.
struct RequestRecord {
  std::uint64_t seq = 0;
  std::uint64_t fingerprint = 0;    // requestFingerprint of its operations
  std::uint64_t requestTimeUs = 0;  // the client's first-sent time
  Micros firstSeenUs = 0;           // the coordinator's clock when first recorded
};

// The "rollback table" row: written when an interaction fails, updated as
// participants confirm.
struct RollbackRecord {
  struct Confirmation {
    std::string participant;
    Micros atUs = 0;
  };
  std::uint64_t seq = 0;
  std::string reason;
  Micros requestedUs = 0;
  std::uint32_t attempts = 0;
  std::string lastError;
  Micros lastAttemptUs = 0;
  std::vector<std::string> pending;
  std::vector<Confirmation> confirmed;
  Micros completedUs = 0;
};

// An operator's action on an interaction, kept in the WAL for audit.
struct AuditRecord {
  Micros atUs = 0;
  std::uint64_t seq = 0;
  std::string action;  // "force-commit" / "force-abort"
  std::string who, why;
  bool override = false;
  std::string previous;  // state and decision before the action
};

const char* stateName(InteractionRecord::State s);
// The state a name (stateName's text) stands for; nullopt for any other text.
std::optional<InteractionRecord::State> stateByName(std::string_view name);
// Every state's name, comma-separated, for an error message.
std::string stateNames();
const char* decisionName(InteractionRecord::Decision d);
const char* branchStateName(InteractionRecord::BranchState s);

// ------------------------------------------------------------ participant

enum class BranchStatus : std::uint8_t { Active = 0, Prepared = 1, Committed = 2, RolledBack = 3 };
const char* branchStatusName(BranchStatus s);

// BranchRecord::hostStep of adapter host (participant/host_agent.h: where a
// branch is in its calls to the host); None for the other adapters.
enum class HostStep : std::uint8_t { None = 0, Trying = 1, Tried = 2, Confirming = 3, Cancelling = 4 };
// "trying", "tried", "confirming", "cancelling"; "" for None; "?" otherwise.
const char* hostStepName(std::uint8_t step);

// One branch in the agent's branch log.
struct BranchRecord {
  Xid xid;
  BranchStatus state = BranchStatus::Active;
  std::uint64_t epoch = 0;
  bool tombstone = false;
  bool onePhase = false;
  std::vector<Op> ops;
  Micros createdUs = 0, preparedUs = 0, finishedUs = 0;
  std::string reason;
  std::uint64_t hostTxid = 0;  // postgres: PostgreSQL's txid, for txid_status()
  // postgres: the incarnation of the agent whose gid names PostgreSQL's
  // prepared transaction (participant/pg_agent.h; 0: the gid without one).
  std::uint64_t hostIncarnation = 0;
  // host (try / confirm / cancel, participant/host_agent.h): where the
  // branch is in its calls to the host (a HostStep; 0 for other adapters)
  // and the host's reference per operation from its try answers.
  std::uint8_t hostStep = 0;
  std::vector<std::string> hostRefs;
  // postgres one-phase: the transaction also inserted its gid into the
  // marker table keel_one_phase (participant/pg_agent.h), so a committed
  // marker row, not txid_status(), tells the outcome after a crash.
  bool hostMarker = false;
};

// One ledger account.
struct AccountRecord {
  std::int64_t balance = 0;
  // Debits of ACTIVE and PREPARED branches, not yet committed. Stored as 0:
  // the ledger keeps holds in memory (participant/adapters/ledger.h); agents
  // before 2026-12-04 stored them here. Views (Agent::accounts) fill it in.
  std::int64_t held = 0;
  bool opening = false;   // created by a prepared openAccount, not committed
  Xid openedBy;
};

// ------------------------------------------------------------ encoding

std::string encode(const InteractionRecord& r);
std::string encode(const RollbackRecord& r);
std::string encode(const BranchRecord& r);
std::string encode(const AccountRecord& r);
std::string encode(const AuditRecord& r);
std::string encode(const RequestRecord& r);

InteractionRecord decodeInteraction(std::string_view bytes);
// The few fields the request-id purge needs, read without decoding the
// branches (checksum still checked).
struct InteractionPeek {
  std::uint64_t seq = 0;
  Micros createdUs = 0;
  std::string requestId;
  bool finished = false;   // committed, rolled back or heuristic
  bool heuristic = false;  // heuristic-mixed or heuristic-unknown
  Micros completedUs = 0;
};
InteractionPeek peekInteraction(std::string_view bytes);
RollbackRecord decodeRollback(std::string_view bytes);
BranchRecord decodeBranch(std::string_view bytes);
AccountRecord decodeAccount(std::string_view bytes);
AuditRecord decodeAudit(std::string_view bytes);
RequestRecord decodeRequest(std::string_view bytes);

// JSON renderings (one object, no trailing newline) for keelctl --json and logs.
std::string toJson(const InteractionRecord& r);
std::string toJson(const RollbackRecord& r);
std::string toJson(const AuditRecord& r);
// Multi-line human renderings for keelctl.
std::string toText(const InteractionRecord& r);
std::string toText(const RollbackRecord& r);

// CRC-32C (Castagnoli) of `data`; the second form continues from `crc`
// (the first's result, or 0 to start), so crc32c(crc32c(a), b) ==
// crc32c(a + b). SSE4.2's crc32 instruction where the CPU has it.
std::uint32_t crc32c(std::string_view data);
std::uint32_t crc32c(std::uint32_t crc, std::string_view data);
// The inside of a JSON string: quotes, backslashes and control characters
// escaped, and each byte that is not part of a UTF-8 character replaced by
// \ufffd, so the result is valid JSON whatever `s` holds (a client's
// account name, an operator's argument).
std::string jsonEscape(std::string_view s);
std::string formatMicros(Micros us);  // "2026-11-28T04:11:01.123456Z" or "-"

}  // namespace keel
