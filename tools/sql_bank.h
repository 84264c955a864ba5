#pragma once
// The bank on PostgreSQL: its accounts table and its transfers as calls of
// the guarded SQL statements postgres agents declare (bank::statementsToml). One definition shared by keel-demo,
// keel-chaos (which also reads the statements back to check what committed)
// and the postgres tests.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/types.h"
#include "tools/bank_sql.h"

namespace keel::sqlbank {

// The statements' texts and names live in tools/bank_sql.h (shared with
// keel-bench's raw2pc baseline, which runs the texts without Keel).
inline constexpr const char* kCreateTable = bank::kSqlCreateTable;
// "Debit only if the balance stays >= 0": a guarded UPDATE declared to touch one row.
inline constexpr const char* kDebit = bank::kDebitStatement;
inline constexpr const char* kCredit = bank::kCreditStatement;

inline Op debit(const std::string& participant, const std::string& account, std::int64_t amount) {
  return Op::statement(participant, kDebit, {SqlValue::ofInt(amount), SqlValue::ofText(account)});
}
inline Op credit(const std::string& participant, const std::string& account, std::int64_t amount) {
  return Op::statement(participant, kCredit, {SqlValue::ofInt(amount), SqlValue::ofText(account)});
}

// The table with accounts acct-0 .. acct-(count-1), `opening` each.
inline std::string createAccounts(std::uint32_t count, std::int64_t opening) {
  return bank::createAccountsSql(count, opening);
}

// A ledger Debit or Credit as its SQL statement (the same account name).
inline Op toSql(const Op& op) {
  switch (op.kind) {
    case OpKind::Debit: return debit(op.participant, op.account, op.amount);
    case OpKind::Credit: return credit(op.participant, op.account, op.amount);
    default: throw std::invalid_argument(std::string("sqlbank: no SQL form for ") + opKindName(op.kind));
  }
}
inline std::vector<Op> toSql(const std::vector<Op>& ops) {
  std::vector<Op> out;
  out.reserve(ops.size());
  for (const auto& op : ops) out.push_back(toSql(op));
  return out;
}

// The reverse: a call of one of our two statements as the ledger Debit or
// Credit it stands for; nullopt for any other operation.
inline std::optional<Op> fromSql(const Op& op) {
  if (op.kind != OpKind::Sql || op.params.size() != 2 || op.params[0].type != SqlValue::Type::Int ||
      op.params[1].type != SqlValue::Type::Text) {
    return std::nullopt;
  }
  if (op.statementName == kDebit) return Op(op.participant, OpKind::Debit, op.params[1].text, op.params[0].i);
  if (op.statementName == kCredit) return Op(op.participant, OpKind::Credit, op.params[1].text, op.params[0].i);
  return std::nullopt;
}

}  // namespace keel::sqlbank
