#pragma once
// Test fixture: a real coordinator and two real ledger agents (separate
// processes) on ephemeral loopback ports, data in a temporary folder that
// is removed when the test passes (kept, with logs, when it fails).

#include <gtest/gtest.h>
#include <kj/async-io.h>

#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "common/client.h"
#include "common/lmdb.h"
#include "common/redo_log.h"
#include "tools/cluster.h"

namespace keel::test {

inline std::string binDir() { return KEEL_BIN_DIR; }

struct RunResult {
  int exitCode;
  std::string output;  // stdout and stderr (run), or stdout alone (runStdout)
};

// Runs a shell command and collects what it prints on stdout.
inline RunResult runStdout(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

// Runs a shell command and collects what it prints.
inline RunResult run(const std::string& cmd) { return runStdout(cmd + " 2>&1"); }

inline std::string readFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// (balance, held) of an account, as ClusterTest::account returns it.
inline std::pair<std::int64_t, std::int64_t> bal(std::int64_t balance, std::int64_t held) { return {balance, held}; }

// [coordinator] lines for drivers and probes that wait a minute: whatever
// settles work sooner is the agent's resolver or an operator.
inline const char* const kSlowDriversToml =
    "call_timeout_ms = 1000\nretry_initial_ms = 60000\nretry_max_ms = 60000\nprobe_ms = 60000\n";

class ClusterTest : public ::testing::Test {
 public:
  ~ClusterTest() noexcept override {}

 protected:
  // Extra lines for [coordinator]: short timeouts keep failure tests quick.
  virtual std::string coordinatorToml() {
    return "call_timeout_ms = 1000\nretry_initial_ms = 20\nretry_max_ms = 200\n";
  }

  virtual ClusterOptions clusterOptions() {
    ClusterOptions o;
    o.binDir = binDir();
    o.baseDir = dir_;
    o.coordinatorExtraToml = coordinatorToml();
    o.embedded = embeddedAgents();
    return o;
  }
  // Agents run inside the coordinator ([participants] NAME = "embedded:FILE").
  virtual std::set<std::string> embeddedAgents() const { return {}; }

  // Last chance to configure the cluster (per-agent arguments) before it starts.
  virtual void beforeStart(LocalCluster&) {}

  void SetUp() override {
    dir_ = makeTempDir("keel-it");
    cluster_ = std::make_unique<LocalCluster>(clusterOptions());
    beforeStart(*cluster_);
    cluster_->startAll();
    reconnect();
  }

  void TearDown() override {
    client_ = nullptr;
    cluster_->stopAll();
    cluster_.reset();
    if (!HasFailure()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    } else {
      std::cerr << "logs kept in " << dir_ << "\n";
    }
  }

  void reconnect() { client_ = KeelClient::connect(io_, cluster_->coordinatorAddress()).wait(io_.waitScope); }

  SubmitOutcome submit(const std::vector<Op>& ops) { return client_->submit(ops).wait(io_.waitScope); }

  void open(const std::string& participant, const std::string& account, std::int64_t amount) {
    auto o = submit({Op{participant, OpKind::OpenAccount, account, amount}});
    ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  }

  // bank-a:alice opened with 1000 and bank-b:bob with 0 (two one-phase
  // interactions), `n` transfers of 10 alice -> bob committed, then one of
  // 5000 rolled back (bank-a votes no: more than alice has).
  void transfersThenAnOverdraw(int n) {
    ASSERT_NO_FATAL_FAILURE(open("bank-a", "alice", 1000));
    ASSERT_NO_FATAL_FAILURE(open("bank-b", "bob", 0));
    for (int i = 0; i < n; ++i) {
      auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
      ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
    }
    auto no = submit(transferOps("bank-a:alice", "bank-b:bob", 5000));
    ASSERT_EQ(no.outcome, ClientOutcome::RolledBack) << no.reason;
  }

  AgentSnapshot inspect(const std::string& agent) {
    auto c = AgentClient::connect(io_, cluster_->agentAddress(agent)).wait(io_.waitScope);
    return c->inspect().wait(io_.waitScope);
  }

  // Committed balance and hold of one account (-1, -1 if absent).
  std::pair<std::int64_t, std::int64_t> account(const std::string& agent, const std::string& name) {
    for (auto& [n, a] : inspect(agent).accounts) {
      if (n == name) return {a.balance, a.held};
    }
    return {-1, -1};
  }

  // An interactive transaction (60 s deadline) with `op` executed: open,
  // its branch ACTIVE at op's participant.
  KeelClient::Begun beginWith(const Op& op) {
    SubmitRequest longer;
    longer.deadlineMs = 60000;
    auto b = client_->begin(longer).wait(io_.waitScope);
    EXPECT_TRUE(b.txn.get() != nullptr);
    if (b.txn.get() == nullptr) return b;
    auto e = b.txn->execute({op}).wait(io_.waitScope);
    EXPECT_EQ(e.outcome, ClientOutcome::Committed) << e.reason;
    return b;
  }

  // The coordinator's WAL record of `seq`, read once the process is gone
  // (in redo mode with the groups past the checkpoint replayed first).
  InteractionRecord storedRecord(std::uint64_t seq) {
    auto env = openEnvRecovering(dir_ + "/coordinator", lmdb::EnvOptions{});
    auto dbi = env.openDb("interactions");
    auto txn = env.beginRead();
    auto v = txn.get(dbi, u64Key(seq));
    if (!v) throw std::runtime_error("no WAL record for seq " + seqText(seq));
    return decodeInteraction(*v);
  }

  std::vector<Xid> unfinishedAt(const std::string& agent) {
    auto c = AgentClient::connect(io_, cluster_->agentAddress(agent)).wait(io_.waitScope);
    auto req = c->capability().recoverRequest();
    auto resp = req.send().wait(io_.waitScope);
    std::vector<Xid> out;
    for (auto b : resp.getBranches()) out.push_back(Xid{b.getXid().getSeq(), b.getXid().getBranch()});
    return out;
  }

  // Restarts the coordinator with `failpoint` set, submits `ops` (the call
  // must fail: the coordinator dies) and waits until the process is gone.
  void crashCoordinatorDuring(const std::string& failpoint, const std::vector<Op>& ops) {
    cluster_->stopCoordinator();
    cluster_->startCoordinator(failpoint);
    reconnect();
    EXPECT_ANY_THROW(submit(ops));
    ASSERT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(5)));
  }

  // A committed transfer alice -> bob of 100 whose phase 2 at bank-b failed:
  // bank-b died on the way into its commit (a failpoint). The COMMIT is
  // durable and bank-a committed; bank-b's branch is PREPARED. With
  // `restart` bank-b is started again (its branch waits for the driver),
  // without it bank-b stays down.
  std::uint64_t stuckCommit(bool restart = true) {
    open("bank-a", "alice", 1000);
    open("bank-b", "bob", 0);
    cluster_->stopAgent("bank-b");
    cluster_->startAgent("bank-b", "agent.before_commit_durable=crash");
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 100));
    EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
    EXPECT_TRUE(cluster_->waitAgentExit("bank-b", std::chrono::seconds(5)));
    if (restart) cluster_->startAgent("bank-b");
    return o.seq;
  }

  std::optional<QueryResult> query(std::uint64_t seq) { return client_->query(seq).wait(io_.waitScope); }

  // Leaves the coordinator dead with one unfinished interaction (a transfer
  // alice -> bob whose COMMIT decision is durable) and flips one payload
  // byte of its WAL record, so its checksum no longer matches. Returns its seq.
  std::uint64_t damagedUnfinishedInteraction() {
    open("bank-a", "alice", 1000);
    open("bank-b", "bob", 0);
    // After the decision the record is surely durable (it was forced).
    crashCoordinatorDuring("coord.after_decision_durable=crash", transferOps("bank-a:alice", "bank-b:bob", 10));
    auto seq = unfinishedAt("bank-a").at(0).seq;
    // In redo mode the record may be in redo.log only: replayed first.
    auto env = openEnvRecovering(dir_ + "/coordinator", lmdb::EnvOptions{});
    auto dbi = env.openDb("interactions");
    auto txn = env.beginWrite();
    auto v = txn.get(dbi, u64Key(seq));
    if (!v) throw std::runtime_error("no WAL record for seq " + seqText(seq));
    (*v)[v->size() - 3] ^= 0x5a;
    txn.put(dbi, u64Key(seq), *v);
    txn.commit();
    return seq;
  }

  // A copy of `config` (a coordinator's toml under dir_) without the
  // [participants] line of `participant`, written beside it as
  // without-PARTICIPANT.toml; returns its path ("" if there was no line).
  std::string configWithout(const std::string& config, const std::string& participant) {
    std::ifstream in(dir_ + "/" + config);
    std::string line, without;
    bool dropped = false;
    while (std::getline(in, line)) {
      if (line.rfind("\"" + participant + "\" = ", 0) == 0) {
        dropped = true;
        continue;
      }
      without += line + "\n";
    }
    if (!dropped) return "";
    std::string path = dir_ + "/without-" + participant + ".toml";
    std::ofstream(path) << without;
    return path;
  }

  // Polls `pred` every 20 ms until it holds or `timeout` passes.
  bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return pred();
  }

  kj::AsyncIoContext io_ = kj::setupAsyncIo();
  std::string dir_;
  std::unique_ptr<LocalCluster> cluster_;
  kj::Own<KeelClient> client_;
};

}  // namespace keel::test
