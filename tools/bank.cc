#include "tools/bank.h"

#include <charconv>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <stdexcept>

#include "tools/cluster.h"
#include "tools/pg_server.h"
#include "tools/sql_bank.h"

namespace keel::bank {

Op sqlDebit(const std::string& p, const std::string& account, std::int64_t amount) {
  return sqlbank::debit(p, account, amount);
}

Op sqlCredit(const std::string& p, const std::string& account, std::int64_t amount) {
  return sqlbank::credit(p, account, amount);
}

Op sqlRead(const std::string& p, const std::string& account) {
  return Op::statement(p, kReadStatement, {SqlValue::ofText(account)});
}

std::vector<PlannedTransfer> planTransfers(std::uint32_t count, std::uint32_t accounts,
                                           std::uint32_t overdrawPercent, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<PlannedTransfer> plan(count);
  for (auto& t : plan) {
    t.fromBank = rng() % 2;
    t.overdraw = (rng() % 100) < overdrawPercent;
    t.amount = t.overdraw ? kOverdraftAmount : std::int64_t(1 + rng() % 200);
    t.from = std::uint32_t(rng() % accounts);
    t.to = std::uint32_t(rng() % accounts);
  }
  return plan;
}

double sharedAccountChance(std::uint32_t accounts, std::uint32_t inFlight) {
  if (accounts == 0 || inFlight <= 1) return 0;
  // Each of the other transfers touches one account in each bank.
  return 1.0 - std::pow(1.0 - 1.0 / accounts, 2.0 * (inFlight - 1));
}

namespace {

constexpr std::size_t kOpensPerInteraction = 100;

bool onlyExists(const SubmitOutcome& o) { return o.reason.find("already exists") != std::string::npos; }

}  // namespace

void openLedgerAccounts(kj::WaitScope& ws, KeelClient& client, const std::vector<std::string>& participants,
                        std::uint32_t accounts, std::int64_t opening) {
  std::string failure;
  auto note = [&failure](const SubmitOutcome& o) {
    if (failure.empty()) failure = std::string(clientOutcomeName(o.outcome)) + ": " + o.reason;
  };
  // Chunks first; a chunk refused because an account exists (a deployment
  // opened before) is redone one account at a time.
  std::vector<std::vector<Op>> retry;
  kj::Vector<kj::Promise<void>> pending;
  for (auto& p : participants) {
    for (std::size_t first = 0; first < accounts; first += kOpensPerInteraction) {
      std::vector<Op> ops;
      for (std::size_t i = first; i < std::min<std::size_t>(accounts, first + kOpensPerInteraction); ++i) {
        ops.push_back(Op{p, OpKind::OpenAccount, accountName(i), opening});
      }
      pending.add(client.submit(ops).then([ops, &retry, note](SubmitOutcome o) {
        if (o.outcome == ClientOutcome::Committed) return;
        if (onlyExists(o)) {
          for (auto& op : ops) retry.push_back({op});
        } else {
          note(o);
        }
      }));
    }
  }
  kj::joinPromises(pending.releaseAsArray()).wait(ws);
  for (std::size_t first = 0; first < retry.size() && failure.empty(); first += 64) {
    kj::Vector<kj::Promise<void>> batch;
    for (std::size_t i = first; i < std::min(retry.size(), first + 64); ++i) {
      batch.add(client.submit(retry[i]).then([note](SubmitOutcome o) {
        if (o.outcome != ClientOutcome::Committed && !onlyExists(o)) note(o);
      }));
    }
    kj::joinPromises(batch.releaseAsArray()).wait(ws);
  }
  if (!failure.empty()) throw std::runtime_error("opening accounts failed: " + failure);
}

AgentTotals agentTotals(kj::AsyncIoContext& io, const LocalCluster& cluster) {
  AgentTotals t;
  for (auto& name : cluster.agentNames()) {
    auto agent = AgentClient::connect(io, cluster.agentPeer(name)).wait(io.waitScope);
    auto s = agent->inspect().wait(io.waitScope);
    t.money += s.total();
    t.held += s.held();
    for (auto& [n, a] : s.accounts) t.negative += a.balance < 0 ? 1 : 0;
    t.prepared += s.prepared;
    t.active += s.active;
  }
  return t;
}

std::string databaseFor(const std::string& agent) {
  std::string db = agent;
  for (auto& ch : db) {
    if (ch == '-') ch = '_';
  }
  return db;
}

std::string writeStatementsFile(const std::string& dir, const std::string& extraToml) {
  std::string path = dir + "/bank-statements.toml";
  std::ofstream f(path);
  f << statementsToml() << extraToml;
  f.close();
  if (!f) throw std::runtime_error("cannot write " + path);
  return path;
}

std::string postgresAgentToml(const std::string& agent, const std::string& dataDir, const std::string& conninfo,
                              std::uint32_t poolSize, std::size_t mapSizeMb, const std::string& extraToml) {
  auto quoted = [](const std::string& v) {
    std::string q = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    return q + "\"";
  };
  std::string toml = "[agent]\nname = " + quoted(agent) + "\ndata_dir = " + quoted(dataDir) +
                     "\nadapter = \"postgres\"\npostgres = " + quoted(conninfo) + "\n";
  if (poolSize != 0) toml += "pool_size = " + std::to_string(poolSize) + "\n";
  if (mapSizeMb != 0) toml += "map_size_mb = " + std::to_string(mapSizeMb) + "\n";
  return toml + "\n" + statementsToml() + extraToml;
}

void setUpPostgresBanks(test::PgServer& pg, LocalCluster& cluster, std::uint32_t accounts, std::int64_t opening,
                        std::uint32_t poolSize) {
  std::map<std::string, std::string> conninfo;
  for (auto& agent : cluster.agentNames()) conninfo[agent] = pg.connString(databaseFor(agent));
  setUpPostgresBanks(conninfo, cluster, accounts, opening, poolSize);
}

namespace {

// The comment that marks an accounts table as the bank's own (replaceable).
constexpr const char* kBankTableComment = "keel bank accounts (keel-bench, keel-demo): replaced on each run";

}  // namespace

void setUpPostgresBanks(const std::map<std::string, std::string>& conninfoByAgent, LocalCluster& cluster,
                        std::uint32_t accounts, std::int64_t opening, std::uint32_t poolSize) {
  // Every database is checked before any is changed.
  for (auto& agent : cluster.agentNames()) {
    auto it = conninfoByAgent.find(agent);
    if (it == conninfoByAgent.end()) throw std::runtime_error("no PostgreSQL database given for agent " + agent);
    auto rows = test::pgQuery(it->second,
                              "SELECT coalesce(obj_description(c.oid, 'pg_class'), '') FROM pg_class c "
                              "WHERE c.relname = 'accounts' AND c.relkind = 'r' AND pg_table_is_visible(c.oid)");
    if (!rows.empty() && rows[0][0] != kBankTableComment) {
      throw std::runtime_error("the database of " + agent + " (" + it->second +
                               ") already has a table named accounts that Keel's bank did not make: not touching "
                               "it; give an empty database, or drop that table yourself");
    }
  }
  std::string statements = writeStatementsFile(cluster.baseDir());
  for (auto& agent : cluster.agentNames()) {
    const std::string& conn = conninfoByAgent.at(agent);
    test::pgQuery(conn, std::string("DROP TABLE IF EXISTS accounts; ") + createAccountsSql(accounts, opening) +
                            "COMMENT ON TABLE accounts IS '" + kBankTableComment + "';");
    if (cluster.embedded(agent)) {
      cluster.setEmbeddedConfig(agent, postgresAgentToml(agent, cluster.baseDir() + "/" + agent, conn, poolSize));
      continue;
    }
    std::vector<std::string> args = {"--adapter", "postgres", "--postgres", conn, "--statements", statements};
    if (poolSize != 0) args.insert(args.end(), {"--pool-size", std::to_string(poolSize)});
    cluster.setAgentArgs(agent, args);
  }
}

void checkPostgresRoom(const std::map<std::string, std::string>& conninfoByAgent, const PgNeeds& needs) {
  struct Server {
    std::vector<std::string> agents;
    long maxConnections = 0, reserved = 0, inUse = 0, maxPrepared = 0;
  };
  std::map<std::string, Server> servers;  // by address and port as the server sees itself
  for (auto& [agent, conn] : conninfoByAgent) {
    auto rows = test::pgQuery(
        conn,
        "SELECT coalesce(host(inet_server_addr()), 'local socket ' || current_setting('unix_socket_directories')) "
        "|| ' port ' || current_setting('port'), current_setting('max_connections'), "
        "current_setting('superuser_reserved_connections'), "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
        "current_setting('max_prepared_transactions')");
    if (rows.size() != 1 || rows[0].size() != 5) throw std::runtime_error("cannot read the settings of " + conn);
    auto number = [&](std::size_t i, const char* what) {
      const std::string& t = rows[0][i];
      long v = 0;
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
      if (ec != std::errc() || end != t.data() + t.size()) {
        throw std::runtime_error("PostgreSQL at " + rows[0][0] + " (the database of " + agent + ") reports " + what +
                                 " as '" + t + "', not a whole number: cannot tell whether it has room for this run");
      }
      return v;
    };
    Server& s = servers[rows[0][0]];
    s.agents.push_back(agent);
    s.maxConnections = number(1, "max_connections");
    s.reserved = number(2, "superuser_reserved_connections");
    s.inUse = number(3, "the count of client connections") - 1;  // less this check's own connection
    s.maxPrepared = number(4, "max_prepared_transactions");
  }
  for (auto& [where, s] : servers) {
    std::string names;
    for (auto& a : s.agents) names += (names.empty() ? "" : ", ") + a;
    long n = long(s.agents.size());
    long room = s.maxConnections - s.reserved - s.inUse;
    long need = n * long(needs.connectionsPerAgent + needs.connectionsPerDatabase);
    if (need > room) {
      throw std::runtime_error(
          "PostgreSQL at " + where + " (the database of " + names + ") has room for " + std::to_string(room) +
          " more connections (max_connections " + std::to_string(s.maxConnections) + ", " +
          std::to_string(s.reserved) + " reserved for superusers, " + std::to_string(s.inUse) +
          " in use) and this run needs " + std::to_string(need) + " there (" + needs.why +
          "): raise max_connections or lower the concurrency; nothing was changed");
    }
    long prepared = n * long(needs.preparedPerAgent);
    if (s.maxPrepared < prepared) {
      throw std::runtime_error("PostgreSQL at " + where + " (the database of " + names +
                               ") has max_prepared_transactions = " + std::to_string(s.maxPrepared) +
                               (s.maxPrepared == 0 ? " (prepared transactions disabled)" : "") +
                               " and this run keeps up to " + std::to_string(prepared) +
                               " prepared there: set it to at least that (it needs a server restart); nothing "
                               "was changed");
    }
  }
}

}  // namespace keel::bank
