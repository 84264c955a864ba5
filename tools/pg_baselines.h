#pragma once
// What the same transfers cost on PostgreSQL without Keel, for keel-demo's
// comparison: the planned transfers (tools/bank.h) run from `clients`
// threads, each with its own connections, with the bank's guarded SQL
// (tools/bank_sql.h) and the postgres agents' lock_timeout.
//
//  - raw 2PC: the two databases Keel ran on, each transfer one transaction
//    per database (BEGIN; its statement; PREPARE TRANSACTION on both, then
//    COMMIT PREPARED on both), driven by the client with no log. Atomic only
//    while the client lives: a client crash between PREPARE and COMMIT
//    PREPARED leaves prepared transactions that nothing resolves.
//  - one database: both banks' accounts in one database, each transfer one
//    local transaction whose two UPDATEs lock their rows in one global order
//    (lower account first), so two transfers never deadlock. Atomic, but it
//    is not the deployment Keel is for: the two banks are one system.

#include <cstdint>
#include <string>
#include <vector>

#include "tools/bank.h"

namespace keel::bank {

struct BaselineResult {
  double seconds = 0;
  std::uint64_t committed = 0;
  std::uint64_t overdrawn = 0;  // planned overdrafts, rolled back as they must be
  std::uint64_t failed = 0;     // anything else that did not commit (lock timeout, error)
  std::string firstFailure;     // the first such reason
  std::uint64_t p50Us = 0, p99Us = 0;  // of committed transfers, as the client saw them
  double perSecond() const { return seconds > 0 ? double(committed + overdrawn + failed) / seconds : 0; }
};

struct BaselineOptions {
  std::uint32_t clients = 32;
  std::uint32_t lockTimeoutMs = 1000;  // the postgres agents' default
};

// `banks`: the libpq connection strings of bank 0 and bank 1, whose
// accounts tables hold acct-0 .. acct-(accounts-1). Throws
// std::runtime_error when a client cannot connect.
BaselineResult raw2pcBaseline(const std::vector<std::string>& banks, const std::vector<PlannedTransfer>& plan,
                              const BaselineOptions& o);

// The accounts of bank 0 as acct-0 .. acct-(accounts-1) and those of bank 1
// as acct-accounts .. acct-(2 accounts - 1), in the one database of `conn`
// (createAccountsSql(2 * accounts, ...)).
BaselineResult oneDatabaseBaseline(const std::string& conn, std::uint32_t accounts,
                                   const std::vector<PlannedTransfer>& plan, const BaselineOptions& o);

}  // namespace keel::bank
