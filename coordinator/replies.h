#pragma once
// What participants answer, read defensively.
//
// Nothing a participant sends is trusted: every count, index and enum value
// in a reply is checked here before the coordinator acts on it. A reply that
// breaks the protocol's shape (more results than operations, a vote or an
// outcome the schema does not define, a batch answered with the wrong
// number of items) throws MalformedReply: that call's fault, handled exactly
// like a call that failed (the branch counts as failed, the driver retries),
// never memory corruption and never a state the protocol does not have.
//
// These are the only functions that read a participant's reply messages;
// ParticipantLink calls them and hands Keel's own types to the coordinator.

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/records.h"
#include "common/statements.h"
#include "common/types.h"
#include "schemas/keel.capnp.h"

namespace keel {

class MalformedReply : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One branch's vote (prepare, a prepareBatch item, or interactive execute).
struct PrepareReply {
  Vote vote = Vote::No;
  std::string reason;
  std::vector<OpResult> results;  // empty, or one per operation sent
  // Non-empty: this item failed on the agent as a fault (its state there is
  // unknown, so the branch counts as failed, never as a NO vote).
  std::string error;
  // A YES vote's host transaction id (a postgres agent's txid), kept in the
  // COMMIT record and sent back with commit; 0 = none (and for any other vote).
  std::uint64_t hostTxid = 0;
};

// A one-phase call's answer: the participant decided.
struct OnePhaseReply {
  BranchOutcome outcome = BranchOutcome::RolledBack;
  std::string reason;
  std::vector<OpResult> results;
};

// One branch from a participant's recover() answer: its own record.
struct RecoveredBranch {
  Xid xid;
  BranchStatus state = BranchStatus::Prepared;
  std::uint64_t epoch = 0;
  Micros createdUs = 0, preparedUs = 0;
  std::vector<Op> ops;
};

// `opsSent`: how many operations the call carried (a YES or READ-ONLY vote
// carries no results or exactly one per operation).
PrepareReply readPrepareVote(wire::PrepareVote::Reader v, std::size_t opsSent);
// A prepareBatch answer: exactly one vote per item sent.
std::vector<PrepareReply> readPrepareBatch(capnp::List<wire::PrepareVote>::Reader votes,
                                           const std::vector<std::size_t>& opsSent);
PrepareReply readExecute(wire::Participant::ExecuteResults::Reader r, std::size_t opsSent);
OnePhaseReply readOnePhase(wire::Participant::CommitOnePhaseResults::Reader r, std::size_t opsSent);
// commit / rollback: exactly one outcome per XID sent.
std::vector<BranchOutcome> readOutcomes(capnp::List<wire::BranchOutcome>::Reader l, std::size_t expected);
std::vector<RecoveredBranch> readRecovered(capnp::List<wire::BranchInfo>::Reader l);
// Participant.statements: nullopt when the participant declares none (it
// runs no SQL); otherwise every name valid and once, every type known, at
// most Limits::kMaxSqlParams each, expectRows >= -1.
std::optional<Statements> readDeclaredStatements(wire::Participant::StatementsResults::Reader r);

}  // namespace keel
