#pragma once
// The bank's SQL, shared by everything that moves money on PostgreSQL: the
// postgres agents' operations (keel-demo, keel-bench), keel-bench's raw2pc
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

// Account i of a bank: "acct-<i>" (ledger and PostgreSQL alike).
inline std::string accountName(std::size_t i) { return "acct-" + std::to_string(i); }

// Creates the accounts table with acct-0 .. acct-(accounts-1), each holding
// `opening`.
inline std::string createAccountsSql(std::uint32_t accounts, std::int64_t opening) {
  return std::string(kSqlCreateTable) + "INSERT INTO accounts SELECT 'acct-' || i, " +
         std::to_string(opening) + " FROM generate_series(0, " + std::to_string(accounts - 1) + ") i;";
}

}  // namespace keel::bank
