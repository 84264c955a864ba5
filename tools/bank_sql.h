#pragma once
// The bank's SQL, shared by everything that moves money on PostgreSQL: the
// postgres agents' declared statements (keel-demo, keel-bench, keel-chaos,
// the postgres tests), keel-bench's raw2pc
// baseline and the plain local-transaction baseline. One text each, so every
// comparison runs the same statements.
//
// Parameters: $1 amount (bigint), $2 account name. The debit is guarded: it
// touches one row only if the balance covers the amount, so an overdraft
// shows as "0 rows" (the agent votes NO; a raw client rolls back).

#include <cstdint>
#include <string>

namespace keel::bank {

// The balance can never go below zero, whatever reaches the table.
inline constexpr const char* kSqlCreateTable =
    "CREATE TABLE accounts (name text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));";
inline constexpr const char* kSqlDebit =
    "UPDATE accounts SET balance = balance - $1::bigint WHERE name = $2 AND balance >= $1::bigint";
inline constexpr const char* kSqlCredit = "UPDATE accounts SET balance = balance + $1::bigint WHERE name = $2";
inline constexpr const char* kSqlRead = "SELECT balance FROM accounts WHERE name = $1";

// The names postgres agents declare these statements under (keel-agent
// --statements; docs/examples/agent-postgres.toml holds the same).
inline constexpr const char* kDebitStatement = "debit";
inline constexpr const char* kCreditStatement = "credit";
inline constexpr const char* kReadStatement = "read_balance";

// The bank's declarations as a statements file ([statements."debit"] and
// the rest), each to touch (or return) exactly one row.
inline std::string statementsToml() {
  auto quoted = [](const std::string& text) {  // a TOML basic string
    std::string out = "\"";
    for (char c : text) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    return out + "\"";
  };
  auto declare = [&](const char* name, const char* sql, const char* params) {
    return "[statements." + quoted(name) + "]\nsql = " + quoted(sql) + "\nparams = " + params + "\nexpect_rows = 1\n\n";
  };
  return declare(kDebitStatement, kSqlDebit, "[\"int8\", \"text\"]") +
         declare(kCreditStatement, kSqlCredit, "[\"int8\", \"text\"]") +
         declare(kReadStatement, kSqlRead, "[\"text\"]");
}

// Account i of a bank: "acct-<i>" (ledger and PostgreSQL alike).
inline std::string accountName(std::size_t i) { return "acct-" + std::to_string(i); }

// Creates the accounts table with acct-0 .. acct-(accounts-1), each holding
// `opening`.
inline std::string createAccountsSql(std::uint32_t accounts, std::int64_t opening) {
  return std::string(kSqlCreateTable) + "INSERT INTO accounts SELECT 'acct-' || i, " +
         std::to_string(opening) + " FROM generate_series(0, " + std::to_string(accounts - 1) + ") i;";
}

}  // namespace keel::bank
