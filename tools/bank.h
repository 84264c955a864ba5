#pragma once
// The bank workload's building blocks in Keel operations, shared by
// keel-demo and keel-bench: ledger accounts opened through the coordinator,
// and the calls of the declared debit, credit and balance read statements
// for postgres agents (texts and names in tools/bank_sql.h).

#include <kj/async-io.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/client.h"
#include "common/types.h"
#include "tools/bank_sql.h"

namespace keel {
class LocalCluster;
namespace test {
class PgServer;
}
}  // namespace keel

namespace keel::bank {

// One transfer of a two-bank workload, drawn before the run so that Keel and
// every baseline move the same money between the same accounts in the same
// order: account `from` of bank `fromBank` (0 or 1) pays account `to` of the
// other bank.
struct PlannedTransfer {
  std::size_t fromBank = 0;
  std::uint32_t from = 0, to = 0;
  std::int64_t amount = 0;
  bool overdraw = false;  // on purpose: more than any balance, must be rolled back
};
// The amount of an overdraft on purpose (no balance comes near it).
inline constexpr std::int64_t kOverdraftAmount = 1'000'000'000;
// `count` transfers between accounts 0..accounts-1 of two banks, direction
// and accounts uniform, amounts 1..200, `overdrawPercent` % overdrafts.
std::vector<PlannedTransfer> planTransfers(std::uint32_t count, std::uint32_t accounts,
                                           std::uint32_t overdrawPercent, std::uint64_t seed);
// The chance that a transfer shares an account with one of the other
// `inFlight - 1` transfers in flight, when each touches one uniformly drawn
// account of each of two banks of `accounts` accounts: the workload's
// contention, stated beside its results.
double sharedAccountChance(std::uint32_t accounts, std::uint32_t inFlight);

// Guarded debit / credit / read of `account` on postgres participant `p`:
// calls of the statements statementsToml declares.
Op sqlDebit(const std::string& p, const std::string& account, std::int64_t amount);
Op sqlCredit(const std::string& p, const std::string& account, std::int64_t amount);
Op sqlRead(const std::string& p, const std::string& account);

// Opens acct-0 .. acct-(accounts-1) on every ledger participant in
// `participants` with `opening` each, several accounts per interaction (one
// participant each: one-phase). An account that already exists is kept as
// it is. Throws std::runtime_error naming the first failure.
void openLedgerAccounts(kj::WaitScope& ws, KeelClient& client, const std::vector<std::string>& participants,
                        std::uint32_t accounts, std::int64_t opening);

// Money, holds and branches summed over every agent of `cluster`, read from
// each agent's Participant.inspect (ledger accounts only: a postgres agent's
// money is in its database).
struct AgentTotals {
  std::int64_t money = 0, held = 0, negative = 0;  // negative: accounts below zero
  std::uint32_t prepared = 0, active = 0;          // branches not finished
};
AgentTotals agentTotals(kj::AsyncIoContext& io, const LocalCluster& cluster);

// The PostgreSQL database of a postgres agent: its name with '-' as '_'
// ("bank-a" -> "bank_a"). The server must be started with these databases.
std::string databaseFor(const std::string& agent);

// Writes <dir>/bank-statements.toml: the bank's declared statements
// (statementsToml) and then `extraToml`; returns its path, for keel-agent
// --statements. Throws std::runtime_error when it cannot be written.
std::string writeStatementsFile(const std::string& dir, const std::string& extraToml = "");

// A keel-agent config file's text for a postgres agent named `agent` on
// `conninfo` with its data in `dataDir`, declaring the bank's statements
// (statementsToml) and `extraToml` after them: what an embedded participant
// is configured with (LocalCluster::setEmbeddedConfig). poolSize 0: the
// agent's default; mapSizeMb 0: the default.
std::string postgresAgentToml(const std::string& agent, const std::string& dataDir, const std::string& conninfo,
                              std::uint32_t poolSize = 0, std::size_t mapSizeMb = 0,
                              const std::string& extraToml = "");

// For every agent of `cluster`: creates its accounts table (createAccountsSql)
// in databaseFor(agent) on `pg` and makes the agent a postgres participant
// on that database declaring the bank's statements (writeStatementsFile in
// the cluster's base directory), with a pool of `poolSize` connections (0 =
// the agent's default); an embedded agent of `cluster` gets the same as its
// config file (postgresAgentToml).
void setUpPostgresBanks(test::PgServer& pg, LocalCluster& cluster, std::uint32_t accounts, std::int64_t opening,
                        std::uint32_t poolSize = 0);
// The same with each agent's database given as a libpq connection string
// (one per agent of `cluster`, by name): servers of its own, or databases a
// user already has. An accounts table found there is replaced only if it is
// one this function made (its comment says so); any other refuses with
// std::runtime_error, touching nothing.
void setUpPostgresBanks(const std::map<std::string, std::string>& conninfoByAgent, LocalCluster& cluster,
                        std::uint32_t accounts, std::int64_t opening, std::uint32_t poolSize = 0);

// What a run asks of the PostgreSQL servers behind its agents.
struct PgNeeds {
  std::uint32_t connectionsPerAgent = 0;     // the agent's pools as a transfer load opens them
  std::uint32_t connectionsPerDatabase = 0;  // a baseline client's (raw2pc) per agent's database; 0 = none
  std::uint32_t preparedPerAgent = 0;        // prepared transactions in flight per agent
  std::string why;                           // how the numbers were reached, for the message
};
// Checks, before anything is changed, that every server behind
// `conninfoByAgent` (agents sharing a server count together) has room for
// `needs`: free connections (max_connections less the superuser-reserved
// ones and those in use) and max_prepared_transactions. Throws
// std::runtime_error naming the server, its settings and what to change.
void checkPostgresRoom(const std::map<std::string, std::string>& conninfoByAgent, const PgNeeds& needs);

}  // namespace keel::bank
