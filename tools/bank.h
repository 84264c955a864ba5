#pragma once
// The bank workload's building blocks in Keel operations, shared by
// keel-demo and keel-bench: ledger accounts opened through the coordinator,
// and the SQL forms of a debit, a credit and a balance read for postgres
// agents (texts in tools/bank_sql.h).

#include <kj/async-io.h>

#include <cstdint>
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

// Guarded debit / credit / read of `account` on postgres participant `p`.
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

// For every agent of `cluster`: creates its accounts table (createAccountsSql)
// in databaseFor(agent) on `pg` and makes the agent a postgres participant
// on that database (pool of `poolSize` connections, 0 = the agent's default).
void setUpPostgresBanks(test::PgServer& pg, LocalCluster& cluster, std::uint32_t accounts, std::int64_t opening,
                        std::uint32_t poolSize = 0);

}  // namespace keel::bank
