#pragma once
// Plain value types shared by the coordinator, the agent and the tools.
// Domain code uses these; Cap'n Proto types stay at the RPC and disk edges
// (common/wire.h converts between them).

#include <compare>
#include <optional>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace keel {

// Unix time in microseconds: every timestamp in a record uses it.
using Micros = std::uint64_t;
Micros wallMicros();
// Monotonic microseconds, for durations.
Micros monoMicros();

enum class OpKind : std::uint8_t { OpenAccount = 0, Credit = 1, Debit = 2, ReadBalance = 3, Sql = 4 };
// What readOp makes of a kind the schema does not define (common/wire.h).
constexpr OpKind kUndefinedOpKind = OpKind(0xff);
const char* opKindName(OpKind k);

// A typed SQL parameter.
struct SqlValue {
  enum class Type : std::uint8_t { Null, Int, Text, Float, Bool };
  Type type = Type::Null;
  std::int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string text;
  bool operator==(const SqlValue&) const = default;
  static SqlValue ofInt(std::int64_t v) { return SqlValue{Type::Int, v, 0, false, {}}; }
  static SqlValue ofText(std::string v) { return SqlValue{Type::Text, 0, 0, false, std::move(v)}; }
  static SqlValue ofFloat(double v) { return SqlValue{Type::Float, 0, v, false, {}}; }
  static SqlValue ofBool(bool v) { return SqlValue{Type::Bool, 0, 0, v, {}}; }
  static SqlValue null() { return SqlValue{}; }
};

// One operation addressed to a participant (host system): a ledger
// operation (account, amount) or, for the postgres adapter, a call of one of
// the statements the agent declares (common/statements.h), with typed
// parameters.
struct Op {
  Op() = default;
  // A ledger operation.
  Op(std::string participant, OpKind kind, std::string account, std::int64_t amount)
      : participant(std::move(participant)), kind(kind), account(std::move(account)), amount(amount) {}
  // A call of the statement `name` declared by the postgres agent
  // `participant` (docs/postgres.md, "Declared statements"). `expectRows`
  // may tighten a declaration that allows any row count, never loosen one.
  static Op statement(std::string participant, std::string name, std::vector<SqlValue> params = {},
                      std::int64_t expectRows = -1) {
    Op op(std::move(participant), OpKind::Sql, "", 0);
    op.statementName = std::move(name);
    op.params = std::move(params);
    op.expectRows = expectRows;
    return op;
  }

  std::string participant;
  OpKind kind = OpKind::ReadBalance;
  std::string account;
  std::int64_t amount = 0;
  std::string statementName;  // sql: the declared statement it calls
  // sql: free SQL text, as clients sent it before statements were declared.
  // Still read from old records; the coordinator and the agents refuse it.
  std::string sql;
  std::vector<SqlValue> params;
  std::int64_t expectRows = -1;  // rows it must touch or return; -1 = any
  bool operator==(const Op&) const = default;
};

struct OpResult {
  std::int64_t balance = 0;
  std::int64_t available = 0;
  std::vector<std::vector<std::optional<std::string>>> rows;  // sql: result rows (nullopt = NULL)
  std::int64_t affected = 0;                                  // sql: rows touched or returned
};

// Branch identifier: (interaction seq, branch number).
struct Xid {
  std::uint64_t seq = 0;
  std::uint16_t branch = 0;
  auto operator<=>(const Xid&) const = default;
  // NODE:COUNTER.BRANCH ("1:5.2"), as people read it.
  std::string str() const;
};

// What a client hears about an interaction. Same numbering as wire::Outcome.
//  HeuristicMixed   the branches did not all end as decided (an operator's
//                   override, or a host acting on its own): see the record
//  HeuristicUnknown a participant cannot tell how its branch ended
enum class ClientOutcome : std::uint8_t {
  Committed = 0, RolledBack = 1, InDoubt = 2, Invalid = 3, Unavailable = 4, HeuristicMixed = 5, HeuristicUnknown = 6
};
constexpr std::uint8_t kMaxClientOutcome = 6;
const char* clientOutcomeName(ClientOutcome o);

struct SubmitOutcome {
  std::uint64_t seq = 0;  // 0 when invalid: no seq was assigned
  ClientOutcome outcome = ClientOutcome::Invalid;
  std::string reason;
  std::vector<OpResult> results;  // one per operation, in request order
  std::string requestId;          // the request id it answers ("" = none)
  bool replayed = false;          // an earlier request's answer: nothing ran again

  // An answer without results.
  static SubmitOutcome of(std::uint64_t seq, ClientOutcome o, std::string reason, std::string requestId = "") {
    SubmitOutcome out;
    out.seq = seq;
    out.outcome = o;
    out.reason = std::move(reason);
    out.requestId = std::move(requestId);
    return out;
  }
};

// A participant's vote and its answer to commit / rollback. Same numbering
// as wire::Vote and wire::BranchOutcome.
enum class Vote : std::uint8_t { Yes = 0, No = 1, ReadOnly = 2 };
constexpr std::uint8_t kMaxVote = 2;
enum class BranchOutcome : std::uint8_t {
  Committed = 0,
  RolledBack = 1,
  Unknown = 2,
  NotPrepared = 3,
  Conflict = 4,
  Released = 5  // below its coordinator node's release floor: finished, archived, record dropped
};
constexpr std::uint8_t kMaxBranchOutcome = 5;
const char* voteName(Vote v);
const char* outcomeName(BranchOutcome o);

// A client's request: the operations (empty for an interactive begin), the
// deadline it asks for (0 = the coordinator's default) and its request id.
struct SubmitRequest {
  std::vector<Op> ops;
  std::uint32_t deadlineMs = 0;
  std::string requestId;      // "" = none: always a new interaction
  std::uint64_t requestTimeUs = 0;  // when the client first sent it (unix us, its clock)
};

// "" if `id` is a well-formed request id, else why not.
std::string checkRequestId(std::string_view id);
// A stable 64-bit fingerprint of a request's operations (FNV-1a over a
// canonical encoding; the same on every build), so that a request id reused
// with other operations is recognised. `interactive`: a begin.
std::uint64_t requestFingerprint(const std::vector<Op>& ops, bool interactive);

// Limits checked on every request before anything is written.
struct Limits {
  static constexpr std::size_t kMaxOpsPerInteraction = 256;
  static constexpr std::size_t kMaxParticipants = 32;
  static constexpr std::size_t kMaxAccountName = 128;
  static constexpr std::size_t kMaxParticipantName = 64;
  // 10^15 minor units: far beyond any single booking, and sums of many of
  // them still fit in int64 without overflow.
  static constexpr std::int64_t kMaxAmount = 1'000'000'000'000'000;
  static constexpr std::size_t kMaxSqlBytes = 64 * 1024;       // a declared statement's SQL text
  static constexpr std::size_t kMaxSqlParams = 256;
  static constexpr std::size_t kMaxSqlParamBytes = 64 * 1024;  // one text parameter
  static constexpr std::size_t kMaxRequestId = 128;
};

// Sequence numbers carry the coordinator's node id in the top 16 bits so
// that a cluster's coordinators never collide; the low 48 bits count.
constexpr int kSeqNodeShift = 48;
inline std::uint64_t makeSeq(std::uint16_t node, std::uint64_t counter) {
  return (std::uint64_t(node) << kSeqNodeShift) | (counter & ((1ull << kSeqNodeShift) - 1));
}
inline std::uint16_t seqNode(std::uint64_t seq) { return std::uint16_t(seq >> kSeqNodeShift); }
constexpr std::uint64_t kMaxSeqCounter = (1ull << kSeqNodeShift) - 1;
inline std::uint64_t seqCounter(std::uint64_t seq) { return seq & kMaxSeqCounter; }

// A seq as people read and type it: NODE:COUNTER ("1:5" is makeSeq(1, 5)).
// Every message, log line and report shows a seq this way; records, the
// wire and JSON's "seq" members keep the 64-bit number.
std::string seqText(std::uint64_t seq);
// A seq as typed: NODE:COUNTER (node 0..65535, counter 0..2^48-1) or the
// 64-bit number in decimal ("1:5" and "281474976710661" are one seq). No
// sign, no spaces. nullopt when it is neither; then `why`, if given, says
// what is wrong with `text`, naming it: "'1:' is not NODE:COUNTER (such as
// 1:5) or a whole number", "'70000:5': node 70000 is out of range (0..65535)".
std::optional<std::uint64_t> parseSeqText(std::string_view text, std::string* why = nullptr);

// Big-endian u64 key so LMDB's byte order is numeric order.
std::string u64Key(std::uint64_t v);
// A calendar day written YYYY-MM-DD (an archive period's name).
bool isDayText(std::string_view t);
std::uint64_t keyU64(std::string_view k);
std::string xidKey(Xid x);
Xid keyXid(std::string_view k);

}  // namespace keel
