// Owned storage with real processes: a data directory belongs to one
// process and one purpose, and a refused start changes nothing (the WAL's
// epoch and seq mark stay, no agent is contacted, the live process keeps
// serving).

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <iterator>

#include "common/lmdb.h"
#include "common/redo_log.h"
#include "common/seq.h"
#include "common/strict_json.h"
#include "common/wire.h"
#include "coordinator/wal_store.h"
#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

// A listening socket nobody accepts on: it holds a port, and tells whether
// anyone connected (a participant address no process should contact).
class Listener {
 public:
  Listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd_, 16) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      throw std::runtime_error("test listener failed");
    }
    port_ = ntohs(a.sin_port);
  }
  ~Listener() { ::close(fd_); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  bool contacted() {
    int c = ::accept(fd_, nullptr, nullptr);
    if (c < 0) return false;
    ::close(c);
    return true;
  }

 private:
  int fd_ = -1;
  unsigned port_ = 0;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// What a refused start must not change: the WAL's epoch and seq mark, and
// every byte of its data file.
struct WalState {
  std::uint64_t epoch = 0, seqHwm = 0;
  std::string data;
  bool operator==(const WalState&) const = default;
};

class OwnedStorageTest : public ClusterTest {
 protected:
  std::string coordinatorDir() const { return dir_ + "/coordinator"; }

  // Read-only, beside a live coordinator if there is one.
  WalState walState() {
    lmdb::EnvOptions o;
    o.readOnly = true;
    auto env = openEnvRecovering(coordinatorDir(), o);  // redo mode: with the groups past the checkpoint
    auto meta = env.openDb("meta");
    auto txn = env.beginRead();
    WalState s;
    if (auto e = txn.get(meta, "epoch")) s.epoch = keyU64(*e);
    if (auto h = txn.get(meta, kSeqHwmKey)) s.seqHwm = keyU64(*h);
    s.data = slurp(coordinatorDir() + "/data.mdb");
    return s;
  }

  // A coordinator config on this cluster's WAL whose participants are
  // `trap` (so any contact shows) and whose listen address is `listen`.
  std::string trapConfig(Listener& trap, const std::string& listen = "127.0.0.1:0") {
    std::string path = dir_ + "/trap.toml";
    std::ofstream(path) << "[coordinator]\nnode_id = 1\nlisten = \"" << listen << "\"\ndata_dir = \""
                        << coordinatorDir() << "\"\n\n[participants]\n\"bank-a\" = \"" << trap.address()
                        << "\"\n\"bank-b\" = \"" << trap.address() << "\"\n\n[tls]\ninsecure = true\n";
    return path;
  }

  // Runs a Keel binary that must refuse to start (`timeout`: a start that
  // is not refused fails the test instead of hanging it).
  RunResult refusedRun(const std::string& args) { return run("timeout 20 " + binDir() + "/" + args); }

  static void expectNoInternals(const std::string& output) {
    for (const char* leak : {"bind(", "kj/", ".c++", "KJ_"}) {
      EXPECT_EQ(output.find(leak), std::string::npos) << "'" << leak << "' in: " << output;
    }
  }

  void transferCommits() {
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
    EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  }

  void checkWalBesideALiveCoordinator();
};

TEST_F(OwnedStorageTest, ASecondCoordinatorOnALiveDirectoryIsRefusedAndTheLiveOneKeepsServing) {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  auto before = walState();
  auto epoch = client_->info().wait(io_.waitScope).epoch;
  Listener trap;
  // The same data_dir with another listen port: the typo the lock is for.
  for (const char* init : {"", " --init"}) {
    auto r = refusedRun("keel-coordinator --config " + trapConfig(trap) + init);
    EXPECT_EQ(r.exitCode, 3) << r.output;
    EXPECT_NE(r.output.find("data directory " + coordinatorDir() + " is in use by pid " +
                            std::to_string(cluster_->coordinatorPid()) +
                            " (keel-coordinator); one directory belongs to one process"),
              std::string::npos)
        << r.output;
    expectNoInternals(r.output);
  }
  EXPECT_FALSE(trap.contacted());
  auto after = walState();
  EXPECT_EQ(after.epoch, before.epoch);
  EXPECT_EQ(after.seqHwm, before.seqHwm);
  // The agents were not fenced against the live coordinator: its work commits.
  EXPECT_EQ(client_->info().wait(io_.waitScope).epoch, epoch);
  transferCommits();
  EXPECT_TRUE(eventually([&] { return account("bank-b", "bob") == bal(10, 0); }));
}

TEST_F(OwnedStorageTest, ADirectoryServesOnlyTheProcessItWasMadeFor) {
  std::string bankA = dir_ + "/bank-a";
  for (const char* init : {"", " --init"}) {  // --init never overrides an identity
    auto r = refusedRun("keel-agent --insecure --name bank-x --listen 127.0.0.1:0 --data-dir " + coordinatorDir() + init);
    EXPECT_EQ(r.exitCode, 3) << r.output;
    EXPECT_NE(r.output.find("data directory " + coordinatorDir() + " belongs to a coordinator (node 1), not an agent"),
              std::string::npos)
        << r.output;

    r = refusedRun("keel-agent --insecure --name bank-b --listen 127.0.0.1:0 --data-dir " + bankA + init);
    EXPECT_EQ(r.exitCode, 3) << r.output;
    EXPECT_NE(r.output.find("data directory " + bankA + " belongs to agent bank-a, not agent bank-b"),
              std::string::npos)
        << r.output;

    Listener trap;
    r = refusedRun("keel-coordinator --config " + trapConfig(trap) + " --data-dir " + bankA + init);
    EXPECT_EQ(r.exitCode, 3) << r.output;
    EXPECT_NE(r.output.find("data directory " + bankA + " belongs to agent bank-a, not a coordinator"),
              std::string::npos)
        << r.output;
    EXPECT_FALSE(trap.contacted());
    expectNoInternals(r.output);
  }
  open("bank-a", "alice", 100);  // bank-a still serves as bank-a
  EXPECT_EQ(account("bank-a", "alice"), bal(100, 0));
}

TEST_F(OwnedStorageTest, ACoordinatorWhosePortIsTakenChangesNothing) {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  cluster_->stopCoordinator();
  auto before = walState();
  Listener taken, trap;
  for (int attempt = 0; attempt < 2; ++attempt) {  // as a supervisor would restart it
    auto r = refusedRun("keel-coordinator --config " + trapConfig(trap, taken.address()));
    EXPECT_EQ(r.exitCode, 1) << r.output;
    EXPECT_NE(r.output.find("cannot listen on " + taken.address() + ": address already in use"), std::string::npos)
        << r.output;
    expectNoInternals(r.output);
  }
  EXPECT_FALSE(trap.contacted());  // no participant swept
  EXPECT_TRUE(walState() == before) << "the WAL changed";
  cluster_->startCoordinator();  // the next good start is the next epoch
  reconnect();
  EXPECT_EQ(client_->info().wait(io_.waitScope).epoch, before.epoch + 1);
  transferCommits();
}

TEST_F(OwnedStorageTest, ADamagedWalRecordIsRefusedWithEpochAndSeqMarkUnchanged) {
  auto seq = damagedUnfinishedInteraction();
  auto before = walState();
  Listener trap;
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto r = refusedRun("keel-coordinator --config " + trapConfig(trap));
    EXPECT_EQ(r.exitCode, 1) << r.output;
    EXPECT_NE(r.output.find("damaged WAL record: interaction " + seqText(seq) + ": "), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("bump-epoch"), std::string::npos) << r.output;
  }
  EXPECT_FALSE(trap.contacted());
  EXPECT_TRUE(walState() == before) << "the WAL changed";
  EXPECT_EQ(unfinishedAt("bank-a").size(), 1u);  // the branch still waits
}

TEST_F(OwnedStorageTest, CheckWalReadsBesideALiveCoordinatorAndChangesNothing) { checkWalBesideALiveCoordinator(); }

void OwnedStorageTest::checkWalBesideALiveCoordinator() {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  auto before = walState();
  auto r = refusedRun("keel-coordinator --config " + dir_ + "/coordinator.toml --check-wal");
  EXPECT_EQ(r.exitCode, 0) << r.output;
  EXPECT_NE(r.output.find("0 damaged record(s) in " + coordinatorDir()), std::string::npos) << r.output;
  auto after = walState();  // the live coordinator may write meanwhile: compare what --check-wal could touch
  EXPECT_EQ(after.epoch, before.epoch);
  EXPECT_EQ(after.seqHwm, before.seqHwm);
  r = refusedRun("keel-coordinator --config " + dir_ + "/coordinator.toml --check-wal --data-dir " + dir_ + "/none");
  EXPECT_EQ(r.exitCode, 3) << r.output;
  EXPECT_NE(r.output.find("data directory " + dir_ + "/none does not exist"), std::string::npos) << r.output;
  r = refusedRun("keel-coordinator --config " + dir_ + "/coordinator.toml --check-wal --data-dir " + dir_ + "/bank-a");
  EXPECT_EQ(r.exitCode, 3) << r.output;
  EXPECT_NE(r.output.find("belongs to agent bank-a, not a coordinator"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/none"));
  transferCommits();
}

// Redo mode (the default; docs/operations.md, "Redo log"), said
// explicitly: what callers were told may be in redo.log only, past
// data.mdb's last checkpoint; --check-wal and every read-only open read it
// too.
class RedoOwnedStorageTest : public OwnedStorageTest {
 protected:
  std::string coordinatorToml() override { return OwnedStorageTest::coordinatorToml() + "redo = true\n"; }
};

// Without the redo log (redo = false; redo mode is the default).
class NoRedoOwnedStorageTest : public OwnedStorageTest {
 protected:
  std::string coordinatorToml() override { return OwnedStorageTest::coordinatorToml() + "redo = false\n"; }
};

TEST_F(NoRedoOwnedStorageTest, CheckWalReadsBesideALiveCoordinatorAndChangesNothing) {
  checkWalBesideALiveCoordinator();
}

TEST_F(RedoOwnedStorageTest, CheckWalAfterACrashReadsWhatOnlyTheRedoLogHolds) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  // The decision is durable (in redo.log) and the coordinator dies before
  // its next checkpoint (100 ms).
  crashCoordinatorDuring("coord.after_decision_durable=crash", transferOps("bank-a:alice", "bank-b:bob", 10));
  auto seq = unfinishedAt("bank-a").at(0).seq;
  std::string data = slurp(coordinatorDir() + "/data.mdb");
  {
    WalStore wal(coordinatorDir(), std::size_t(1) << 30, /*readOnly=*/true);
    ASSERT_TRUE(wal.redoRead().present);
    ASSERT_GE(wal.redoRead().groups, 1u) << "the decision was checkpointed before the crash: nothing to show";
    auto unfinished = wal.loadUnfinished();
    ASSERT_EQ(unfinished.size(), 1u) << "the unfinished interaction in redo.log was not read";
    EXPECT_EQ(unfinished[0].interaction.seq, seq);
  }
  auto r = refusedRun("keel-coordinator --config " + dir_ + "/coordinator.toml --check-wal");
  EXPECT_EQ(r.exitCode, 0) << r.output;
  EXPECT_NE(r.output.find("0 damaged record(s) in " + coordinatorDir()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("past data.mdb's last checkpoint read from redo.log"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("; 0 group(s)"), std::string::npos) << r.output;
  EXPECT_TRUE(slurp(coordinatorDir() + "/data.mdb") == data) << "a read-only open changed data.mdb";
  // The restart replays it and finishes the transfer.
  cluster_->startCoordinator();
  reconnect();
  EXPECT_TRUE(eventually([&] { return unfinishedAt("bank-a").empty() && unfinishedAt("bank-b").empty(); }));
}

// The agent binds before its first write: its port taken, the ACTIVE branch
// a restart would roll back is still there, every byte of the log unchanged.
TEST_F(OwnedStorageTest, AnAgentWhosePortIsTakenChangesNothing) {
  open("bank-b", "bob", 100);
  auto c = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
  auto req = c->capability().executeRequest();
  req.setEpoch(1);
  fillXid(req.initXid(), Xid{makeSeq(7, 1), 1});  // node 7: no coordinator here drives it
  fillOps(req.initOperations(1), {Op{"bank-b", OpKind::Debit, "bob", 30}});
  ASSERT_TRUE(req.send().wait(io_.waitScope).getOk());
  c = nullptr;
  EXPECT_EQ(account("bank-b", "bob"), bal(100, 30));
  cluster_->stopAgent("bank-b");
  std::string log = dir_ + "/bank-b/data.mdb";
  std::string before = slurp(log);
  {
    Listener taken;
    auto r = refusedRun("keel-agent --insecure --name bank-b --listen " + taken.address() + " --data-dir " + dir_ + "/bank-b");
    EXPECT_EQ(r.exitCode, 1) << r.output;
    EXPECT_NE(r.output.find("cannot listen on " + taken.address() + ": address already in use"), std::string::npos)
        << r.output;
    expectNoInternals(r.output);
  }
  EXPECT_TRUE(slurp(log) == before) << "the branch log changed";
  cluster_->startAgent("bank-b");  // a good start rolls the ACTIVE branch back
  EXPECT_EQ(account("bank-b", "bob"), bal(100, 0));
}

TEST(DataDirStart, AMissingDirectoryIsCreatedOnlyWithInit) {
  std::string base = makeTempDir("keel-dd");
  std::string missing = base + "/not/there";
  std::string cfg = base + "/c.toml";
  std::ofstream(cfg) << "[coordinator]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"" << missing
                     << "\"\n[participants]\na = \"127.0.0.1:1\"\n[tls]\ninsecure = true\n";
  auto r = run("timeout 20 " + binDir() + "/keel-coordinator --config " + cfg);
  EXPECT_EQ(r.exitCode, 3) << r.output;
  EXPECT_NE(r.output.find("data directory " + missing +
                          " does not exist; start with --init to create a new coordinator there (check data_dir / "
                          "--data-dir)"),
            std::string::npos)
      << r.output;
  // A relative path is reported as the absolute path it means.
  r = run("cd " + base + " && timeout 20 " + binDir() + "/keel-agent --insecure --name bank-a --listen 127.0.0.1:0 --data-dir rel");
  EXPECT_EQ(r.exitCode, 3) << r.output;
  EXPECT_NE(r.output.find("data directory " + base + "/rel does not exist; start with --init to create a new agent"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(base + "/not"));
  EXPECT_FALSE(std::filesystem::exists(base + "/rel"));
  std::filesystem::remove_all(base);
}

// --log-format json reaches the refusal too: stderr is JSON objects, one a
// line, the refusal among them at level error. A config error comes before
// logging is set up and stays a plain line, whatever the format.
TEST(DataDirStart, WithLogFormatJsonTheRefusalIsAJsonObjectAtLevelError) {
  std::string base = makeTempDir("keel-dd");
  std::string missing = base + "/not/there";
  std::string cfg = base + "/c.toml";
  std::ofstream(cfg) << "[coordinator]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"" << missing
                     << "\"\n[participants]\na = \"127.0.0.1:1\"\n[tls]\ninsecure = true\n";
  // stderr alone: 2>&1 first, then stdout away.
  auto stderrOf = [&](const std::string& args) {
    return runStdout("timeout 20 " + binDir() + "/keel-coordinator --config " + args + " 2>&1 >/dev/null");
  };
  auto r = stderrOf(cfg + " --log-format json");
  EXPECT_EQ(r.exitCode, 3) << r.output;
  int refusals = 0;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    try {
      Json j = JsonReader::parse(line);
      EXPECT_EQ(j["component"].str(), "coordinator") << line;
      if (j["msg"].str().find("refused: data directory " + missing + " does not exist") == 0) {
        EXPECT_EQ(j["level"].str(), "error") << line;
        ++refusals;
      }
    } catch (const JsonError& e) {
      ADD_FAILURE() << "not a JSON line (" << e.what() << "): " << line;
    }
  }
  EXPECT_EQ(refusals, 1) << r.output;

  // [log] format = "json" says the same; --log-format text overrides it.
  std::ofstream(cfg, std::ios::app) << "[log]\nformat = \"json\"\n";
  r = stderrOf(cfg);
  EXPECT_EQ(r.exitCode, 3) << r.output;
  EXPECT_EQ(r.output.rfind("{\"time\":\"", 0), 0u) << r.output;
  r = stderrOf(cfg + " --log-format text");
  EXPECT_EQ(r.exitCode, 3) << r.output;
  EXPECT_NE(r.output.find(" coordinator error: refused: data directory " + missing), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('{'), std::string::npos) << r.output;

  std::ofstream(base + "/bad.toml") << "[coordinator]\n[participants]\na = \"127.0.0.1:1\"\n[log]\nformat = \"xml\"\n";
  r = stderrOf(base + "/bad.toml --log-format json");
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_EQ(r.output, "keel-coordinator: " + base + "/bad.toml: [log] format 'xml' is not known (known: text, json)\n");
  r = stderrOf(cfg + " --log-format yaml");
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_FALSE(std::filesystem::exists(base + "/not"));
  std::filesystem::remove_all(base);
}

}  // namespace
}  // namespace keel::test
