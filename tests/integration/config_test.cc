// Bad configuration: the process exits non-zero naming the file and the
// problem; keelctl works against a live cluster.

#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include "common/config.h"
#include "common/daemon.h"
#include "tests/integration/cluster_fixture.h"
#include "tools/bank_sql.h"
#include "tools/host_process.h"

namespace keel::test {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = makeTempDir("keel-cfg"); }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  std::string dir_;
};

TEST_F(ConfigTest, CoordinatorRejectsMalformedConfigs) {
  struct Case {
    std::string toml, expect;
  };
  std::vector<Case> cases = {
      {"[coordinator]\nlisten = \"127.0.0.1:0\"\n", "[participants] is missing or empty"},
      {"[coordinator]\nlisten = \"localhost\"\n[participants]\na = \"127.0.0.1:1\"\n", "must be host:port"},
      {"[coordinator]\nnode_id = 70000\n[participants]\na = \"127.0.0.1:1\"\n", "out of range"},
      {"[coordinator]\nbogus = 1\n[participants]\na = \"127.0.0.1:1\"\n", "unknown key 'bogus'"},
      {"[coordinator]\n[participants]\n\"bad name!\" = \"127.0.0.1:1\"\n", "not a valid name"},
      {"[coordinator]\n[participants]\na = \"127.0.0.1:99999\"\n", "out of range"},
      {"[coordinator\n", "coordinator.toml:1"},
      {"[participants]\na = \"127.0.0.1:1\"\n", "missing section [coordinator]"},
      {"[coordinator]\n[participants]\na = \"127.0.0.1:1\"\n[cluster]\netcd = []\n",
       "[cluster] etcd must be a non-empty list"},
      {"[coordinator]\n[participants]\na = \"127.0.0.1:1\"\n[cluster]\netcd = [\"etcd1\"]\n", "must be host:port"},
      {"[coordinator]\n[participants]\na = \"127.0.0.1:1\"\n[cluster]\netcd = [\"127.0.0.1:2379\"]\nlease_ttl_s = 1\n",
       "out of range"},
      {"[coordinator]\n[participants]\na = \"127.0.0.1:1\"\n[cluster]\netcd = [\"127.0.0.1:2379\"]\nprefix = \"keel\"\n",
       "[cluster] prefix must start with '/'"},
      {"[coordinator]\n[participants]\na = \"127.0.0.1:1\"\n[cluster]\netcd = [\"127.0.0.1:2379\"]\nttl = 5\n",
       "unknown key 'ttl'"},
      {"[coordinator]\n[participants]\na = \"127.0.0.1:1\"\n[cluster]\netcd = [\"127.0.0.1:2379\"]\n"
       "decision_gather_ms = 5000\n",
       "out of range"},
  };
  for (auto& c : cases) {
    auto path = write("coordinator.toml", c.toml);
    auto r = run(binDir() + "/keel-coordinator --config " + path + " --data-dir " + dir_ + "/wal");
    EXPECT_EQ(r.exitCode, 2) << c.toml << r.output;
    EXPECT_NE(r.output.find(path), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/wal"));  // nothing written
  auto r = run(binDir() + "/keel-coordinator --config " + dir_ + "/absent.toml");
  EXPECT_EQ(r.exitCode, 2);
  EXPECT_NE(r.output.find("absent.toml"), std::string::npos) << r.output;
}

// --restore-from starts an embedded participant in its own process to ask
// it what it holds, but only once the backup passed its checks: a bad
// backup is refused with nothing made, the participant's data directory
// included.
TEST_F(ConfigTest, RestoreWithAnEmbeddedParticipantChecksTheBackupBeforeStartingIt) {
  write("bank-a.toml", "[agent]\nname = \"bank-a\"\ndata_dir = \"" + dir_ + "/bank-a\"\n");
  std::string cfg = write("coordinator.toml", "[coordinator]\ndata_dir = \"" + dir_ +
                                                  "/coordinator\"\n[participants]\nbank-a = \"embedded:bank-a.toml\"\n"
                                                  "[tls]\ninsecure = true\n");
  auto r = run(binDir() + "/keel-coordinator --config " + cfg + " --restore-from " + dir_ + "/no-backup");
  EXPECT_EQ(r.exitCode, kExitBadConfig) << r.output;
  EXPECT_NE(r.output.find("backup " + dir_ + "/no-backup is not a directory"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/coordinator"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/bank-a"));
}

TEST_F(ConfigTest, AgentRejectsMalformedConfigs) {
  auto path = write("agent.toml", "[agent]\nname = \"bank-a\"\nadapter = \"oracle\"\n");
  auto r = run(binDir() + "/keel-agent --config " + path);
  EXPECT_EQ(r.exitCode, 2);
  EXPECT_NE(r.output.find("adapter 'oracle' is not known"), std::string::npos) << r.output;
  path = write("agent.toml", "[agent]\nlisten = \"127.0.0.1:0\"\n");
  r = run(binDir() + "/keel-agent --config " + path);
  EXPECT_EQ(r.exitCode, 2);
  EXPECT_NE(r.output.find("name is required"), std::string::npos) << r.output;
  r = run(binDir() + "/keel-agent --listen 127.0.0.1:0");
  EXPECT_EQ(r.exitCode, 2);
  EXPECT_NE(r.output.find("agent name"), std::string::npos) << r.output;
}

// Every bad declaration stops a postgres agent before it touches anything,
// with exit status 2 and a message naming the file and the key. The
// connection string points nowhere: the agent must stop before using it.
TEST_F(ConfigTest, PostgresAgentRejectsBadStatementDeclarations) {
  struct Case {
    std::string toml, expect;
  };
  std::vector<Case> cases = {
      {"[statements.debit]\nsql = \"UPDATE a SET b = b - $1\"\nparams = [\"int4\"]\n",
       "[statements.debit] params: $1 'int4' is not a known type (known: int8, text, float8, bool"},
      {"[statements.debit]\nsql = \"UPDATE a SET b = b - $1\"\nparams = [8]\n",
       "[statements.debit] params: $1 (not a string) is not a known type"},
      {"[statements.debit]\nsql = \"UPDATE a SET b = $2 WHERE c = $1\"\nparams = [\"int8\"]\n",
       "[statements.debit]: sql uses $2 but params declares 1 parameter(s)"},
      {"[statements.debit]\nsql = \"UPDATE a SET b = 1 WHERE c = $1\"\nparams = [\"text\", \"int8\"]\n",
       "[statements.debit]: params declares 2 parameter(s) but sql never uses $2"},
      {"[statements.debit]\nsql = \"  \"\n", "[statements.debit]: sql is empty"},
      {"[statements.debit]\nparams = []\n", "[statements.debit] sql is required"},
      {"[statements.debit]\nsql = \"SELECT 1\"\n[statements.debit]\nsql = \"SELECT 2\"\n",
       "statements.toml:3"},  // a duplicate: TOML itself refuses it, at its line
      {"[statements.\"bad name\"]\nsql = \"SELECT 1\"\n",
       "[statements.bad name]: 'bad name' is not a valid statement name"},
      {"[statements.debit]\nsql = \"SELECT 1\"\nexpect_rows = -2\n",
       "[statements.debit] expect_rows = -2 is out of range [-1,"},
      {"[statements.debit]\nsql = \"SELECT 1\"\nrows = 1\n", "[statements.debit] unknown key 'rows'"},
      {"[statements]\ndebit = \"SELECT 1\"\n", "[statements.debit] must be a table (sql, params, expect_rows)"},
      {"[agent]\nname = \"x\"\n", "unknown section [agent] (a statements file holds [statements.NAME] tables only)"},
  };
  const std::string agent = binDir() + "/keel-agent --name bank-a --adapter postgres --postgres 'host=/nonexistent' "
                                       "--listen 127.0.0.1:0 --data-dir " + dir_ + "/data --init";
  for (auto& c : cases) {
    auto path = write("statements.toml", c.toml);
    auto r = run(agent + " --statements " + path);
    EXPECT_EQ(r.exitCode, 2) << c.toml << r.output;
    EXPECT_NE(r.output.find(path), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << r.output;
  }
  // No statements at all (no file, or an empty one): refused too.
  for (const std::string& flag : {std::string(""), " --statements " + write("empty.toml", "")}) {
    auto r = run(agent + flag);
    EXPECT_EQ(r.exitCode, 2) << r.output;
    EXPECT_NE(r.output.find("adapter postgres needs the statements clients may call: --statements FILE or "
                            "[statements.NAME] tables in the config"),
              std::string::npos)
        << r.output;
  }
  // The same tables in the agent's own config are read as well; statements
  // on a ledger agent are a mistake.
  auto path = write("agent.toml", "[agent]\nname = \"bank-a\"\nlisten = \"127.0.0.1:0\"\n"
                                  "[statements.debit]\nsql = \"SELECT $1\"\n");
  auto r = run(binDir() + "/keel-agent --config " + path + " --data-dir " + dir_ + "/data --init");
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_NE(r.output.find("[statements.debit]: sql uses $1 but params declares 0 parameter(s)"), std::string::npos)
      << r.output;
  path = write("agent.toml", "[agent]\nname = \"bank-a\"\nlisten = \"127.0.0.1:0\"\n"
                             "[statements.one]\nsql = \"SELECT 1\"\n");
  r = run(binDir() + "/keel-agent --config " + path + " --data-dir " + dir_ + "/data --init");
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_NE(r.output.find("declared statements are for adapter postgres; this agent's adapter is ledger"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/data"));  // nothing written
}

TEST_F(ConfigTest, StatementDeclarationsAreRead) {
  auto s = loadStatements(write("statements.toml", R"(
[statements.debit]
sql = "UPDATE accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2"
params = ["text", "int8"]
expect_rows = 1

[statements."notes.set"]
sql = "UPDATE accounts SET note = $2 WHERE id = $1"
params = ["text", "text?"]
)"));
  ASSERT_EQ(s.size(), 2u);
  const auto& d = s.at("debit");
  EXPECT_EQ(d.name, "debit");
  EXPECT_EQ(d.sql, "UPDATE accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2");
  ASSERT_EQ(d.params.size(), 2u);
  EXPECT_EQ(paramTypeName(d.params[0]), "text");
  EXPECT_EQ(paramTypeName(d.params[1]), "int8");
  EXPECT_EQ(d.expectRows, 1);
  const auto& n = s.at("notes.set");
  EXPECT_EQ(paramTypeName(n.params[1]), "text?");
  EXPECT_EQ(n.expectRows, -1);  // the default: any
}

// A cluster whose folder is given relative to the working directory
// (keel-chaos --out chaos-out, its default): every path written into a
// config file is absolute, so the coordinator finds its embedded agents'
// files (it read them relative to its own config file's folder, doubled)
// and a transfer commits.
class RelativeBaseDirTest : public ClusterTest {
 protected:
  ClusterOptions clusterOptions() override {
    auto o = ClusterTest::clusterOptions();
    o.embedded = {"bank-a", "bank-b"};
    previous_ = std::filesystem::current_path();
    std::filesystem::current_path(std::filesystem::path(dir_).parent_path());
    o.baseDir = std::filesystem::path(dir_).filename().string() + "/./";
    return o;
  }
  void TearDown() override {
    ClusterTest::TearDown();
    if (!previous_.empty()) std::filesystem::current_path(previous_);
  }
  std::filesystem::path previous_;
};

TEST_F(RelativeBaseDirTest, EmbeddedAgentsAreFoundAndATransferCommits) {
  EXPECT_EQ(cluster_->baseDir(), dir_);
  EXPECT_EQ(cluster_->agentAddress("bank-a"), "embedded:" + dir_ + "/bank-a.embedded.toml");
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
  EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
}

TEST(ExampleConfigs, DocumentedExamplesLoad) {
  auto c = loadCoordinatorConfig(std::string(KEEL_SOURCE_DIR) + "/docs/examples/coordinator.toml");
  EXPECT_EQ(c.participants.size(), 2u);
  EXPECT_EQ(c.retryMaxMs, 2000u);
  auto a = loadAgentConfig(std::string(KEEL_SOURCE_DIR) + "/docs/examples/agent.toml");
  EXPECT_EQ(a.name, "bank-a");
}

// docs/examples/agent-postgres.toml declares the bank's statements exactly as
// the tools do (bank::statementsToml).
TEST_F(ConfigTest, PostgresExampleDeclaresTheBanksStatements) {
  auto a = loadAgentConfig(std::string(KEEL_SOURCE_DIR) + "/docs/examples/agent-postgres.toml");
  EXPECT_EQ(a.adapter, "postgres");
  auto tools = loadStatements(write("bank.toml", bank::statementsToml()));
  ASSERT_EQ(a.statements.size(), tools.size());
  for (auto& [name, d] : tools) {
    ASSERT_EQ(a.statements.count(name), 1u) << name;
    const auto& e = a.statements.at(name);
    EXPECT_EQ(e.sql, d.sql) << name;
    EXPECT_EQ(e.params, d.params) << name;
    EXPECT_EQ(e.expectRows, d.expectRows) << name;
  }
}

// docs/examples/agent-host.toml maps both operations onto keel-host's
// endpoints, as the tools' operations file does (writeHostOperations).
TEST_F(ConfigTest, HostExampleLoadsAndMatchesTheTools) {
  auto a = loadAgentConfig(std::string(KEEL_SOURCE_DIR) + "/docs/examples/agent-host.toml");
  EXPECT_EQ(a.adapter, "host");
  EXPECT_EQ(a.host.url, "http://127.0.0.1:7600");
  EXPECT_EQ(a.host.tryBudgetMs, 1500u);
  auto tools = loadHostOperations(writeHostOperations(dir_));
  ASSERT_EQ(a.host.operations.size(), tools.size());
  for (auto& [name, op] : tools) {
    ASSERT_EQ(a.host.operations.count(name), 1u) << name;
    EXPECT_EQ(a.host.operations.at(name).tryPath, op.tryPath) << name;
    EXPECT_EQ(a.host.operations.at(name).confirmPath, op.confirmPath) << name;
    EXPECT_EQ(a.host.operations.at(name).cancelPath, op.cancelPath) << name;
  }
}

TEST_F(ConfigTest, HostSectionRejectsBadValues) {
  const std::string agent = "[agent]\nname = \"card\"\nadapter = \"host\"\n";
  const std::string ops = "[host.operations.debit]\ntry = \"/t\"\nconfirm = \"/c\"\ncancel = \"/x\"\n";
  struct Case {
    std::string toml, expect;
  } cases[] = {
      {agent + "[host]\nurl = \"https://h:1\"\n", "https is not supported"},
      {agent + "[host]\nurl = \"ftp://h:1\"\n", "must be http://HOST:PORT"},
      {agent + "[host]\nurl = \"http://h:1/api\"\n", "no path"},
      {agent + "[host]\nurl = \"http://127.0.0.1:99999\"\n", "out of range"},
      {agent + "[host]\ncall_timeout_ms = 0\n", "[host] call_timeout_ms = 0 is out of range"},
      {agent + "[host]\nretry_initial_ms = 500\nretry_max_ms = 100\n", "retry_max_ms = 100 is below retry_initial_ms"},
      {agent + "[host]\nmax_body_bytes = 10\n", "out of range"},
      {agent + "[host]\nbogus = 1\n", "[host] unknown key 'bogus'"},
      {agent + "[host.operations.refund]\ntry = \"/t\"\nconfirm = \"\"\ncancel = \"/x\"\n", "'refund' is not an operation"},
      {agent + "[host.operations.debit]\ntry = \"/t\"\nconfirm = \"\"\n", "[host.operations.debit] cancel is required"},
      {agent + "[host.operations.debit]\ntry = \"/t x\"\nconfirm = \"\"\ncancel = \"/x\"\n", "must be a path"},
      {agent + "[host.operations.debit]\ntry = \"/t?a=1\"\nconfirm = \"\"\ncancel = \"/x\"\n", "must be a path"},
      {"[agent]\nname = \"a\"\n[host]\nurl = \"http://h:1\"\n" + ops, "[host] is for adapter = \"host\""},
  };
  for (auto& c : cases) {
    std::string_view text(c.toml);
    try {
      parseAgentConfig("agent.toml", &text);
      ADD_FAILURE() << "accepted:\n" << c.toml;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(c.expect), std::string::npos) << e.what() << "\nfor:\n" << c.toml;
    }
  }
}

TEST_F(ConfigTest, ClusterSectionIsRead) {
  auto path = write("coordinator.toml",
                    "[coordinator]\n[participants]\na = \"127.0.0.1:1\"\n[cluster]\n"
                    "etcd = [\"127.0.0.1:2379\", \"127.0.0.1:2380\"]\nlease_ttl_s = 3\ndecision_gather_ms = 7\n");
  auto c = loadCoordinatorConfig(path);
  ASSERT_TRUE(c.cluster.enabled());
  EXPECT_EQ(c.cluster.etcdEndpoints.size(), 2u);
  EXPECT_EQ(c.cluster.leaseTtlS, 3u);
  EXPECT_EQ(c.cluster.decisionGatherMs, 7u);
  EXPECT_EQ(c.cluster.maxTxnOps, 128u);  // the default
  EXPECT_EQ(loadCoordinatorConfig(write("plain.toml", "[coordinator]\n[participants]\na = \"127.0.0.1:1\"\n"))
                .cluster.decisionGatherMs,
            0u);
}

TEST_F(ClusterTest, KeelctlDrivesTheCluster) {
  std::string ctl = binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " ";
  EXPECT_EQ(run(ctl + "open bank-a:alice 500").exitCode, 0);
  EXPECT_EQ(run(ctl + "open bank-b:bob 0").exitCode, 0);
  auto t = run(ctl + "transfer bank-a:alice bank-b:bob 120 --json");
  ASSERT_EQ(t.exitCode, 0) << t.output;
  EXPECT_NE(t.output.find("\"outcome\":\"committed\""), std::string::npos) << t.output;
  auto seqPos = t.output.find("\"seq\":");
  ASSERT_NE(seqPos, std::string::npos);
  std::uint64_t seq = std::stoull(t.output.substr(seqPos + 6));
  auto over = run(ctl + "transfer bank-a:alice bank-b:bob 100000");
  EXPECT_EQ(over.exitCode, 1) << over.output;
  EXPECT_NE(over.output.find("insufficient funds"), std::string::npos) << over.output;
  EXPECT_TRUE(eventually([&] { return run(ctl + "balance bank-b:bob").output.find("balance 120") != std::string::npos; }));
  auto q = run(ctl + "query " + std::to_string(seq) + " --json");
  EXPECT_EQ(q.exitCode, 0);
  EXPECT_NE(q.output.find("\"seq\":" + std::to_string(seq)), std::string::npos) << q.output;
  EXPECT_NE(q.output.find("\"decision\":\"commit\""), std::string::npos) << q.output;
  auto human = run(ctl + "query " + std::to_string(seq));
  EXPECT_NE(human.output.find("interaction " + seqText(seq) + "\n"), std::string::npos) << human.output;
  EXPECT_EQ(run(ctl + "query 42").exitCode, 1);
  EXPECT_EQ(run(ctl + "list").exitCode, 0);
  EXPECT_EQ(run(ctl + "transfer bank-a:alice bank-x:bob 1").exitCode, 2);
  EXPECT_EQ(run(ctl + "transfer alice bank-b:bob 1").exitCode, 2);
  EXPECT_EQ(run(binDir() + "/keelctl -c 127.0.0.1:1 info").exitCode, 3);
}

}  // namespace
}  // namespace keel::test
