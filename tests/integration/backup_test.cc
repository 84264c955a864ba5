// Hot backups (keelctl backup, common/backup.h) with real processes: the
// copy is consistent, compacted, described by its manifest and marked so
// that no process starts on it as it is; a bad target is refused before
// anything is sent and nothing half-written is ever left at the target.

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "common/backup.h"
#include "common/data_dir.h"
#include "common/lmdb.h"
#include "common/seq.h"
#include "common/strict_json.h"
#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

namespace fs = std::filesystem;

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Nothing but DIR itself may be left next to it (no DIR.partial-PID).
std::vector<std::string> leftovers(const std::string& parent) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(parent)) {
    if (e.path().filename().string().find(".partial-") != std::string::npos) out.push_back(e.path().string());
  }
  return out;
}

class BackupTest : public ClusterTest {
 protected:
  RunResult keelctl(const std::string& args) {
    return run("timeout 60 " + binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " " + args);
  }
  RunResult keelctlJson(const std::string& args) {
    return runStdout("timeout 60 " + binDir() + "/keelctl --json -c " + cluster_->coordinatorAddress() + " " + args +
                     " 2>/dev/null");
  }
  DataDirIdentity identityOf(const std::string& dataDir) {
    return parseIdentity(slurp(dataDir + "/" + DataDir::kIdentityFile), dataDir);
  }
};

TEST_F(BackupTest, CoordinatorBackupWhileServingHoldsEveryAnsweredInteractionAndIsMarked) {
  open("bank-a", "alice", 100000);
  open("bank-b", "bob", 0);
  std::vector<std::uint64_t> answered;
  for (int i = 0; i < 200; ++i) {
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 1));
    ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
    answered.push_back(o.seq);
  }
  // The backup runs in keelctl while this client keeps submitting.
  std::string target = dir_ + "/backup-1";
  std::atomic<bool> done{false};
  RunResult r;
  std::thread backup([&] {
    r = keelctl("backup --to " + target);
    done = true;
  });
  int during = 0;
  while (!done && during < 5000) {
    ASSERT_EQ(submit(transferOps("bank-a:alice", "bank-b:bob", 1)).outcome, ClientOutcome::Committed);
    ++during;
  }
  backup.join();
  ASSERT_EQ(r.exitCode, 0) << r.output;
  EXPECT_GT(during, 0) << "no transfer ran while the backup was made";
  EXPECT_NE(r.output.find("backup of coordinator node 1"), std::string::npos) << r.output;
  EXPECT_TRUE(leftovers(dir_).empty());
  EXPECT_TRUE(fs::exists(target + "/identity.txt"));
  EXPECT_FALSE(fs::exists(target + "/lock.mdb"));

  // The manifest describes the copy; the copy holds every interaction
  // answered before the backup began, and its seq mark covers them.
  auto m = JsonReader::parse(slurp(target + "/manifest.json"));
  EXPECT_EQ(m["kind"].str(), "coordinator");
  EXPECT_EQ(m["instance_id"].str(), identityOf(dir_ + "/coordinator").instanceId);
  // What the server streamed; the mark written into the copy afterwards
  // may have grown the file.
  EXPECT_GT(m["bytes"].number(), 0);
  EXPECT_LE(m["bytes"].number(), double(fs::file_size(target + "/data.mdb")));
  lmdb::EnvOptions ro;
  ro.readOnly = true;
  {
    lmdb::Env copy(target, ro);
    auto meta = copy.openDb("meta");
    auto interactions = copy.openDb("interactions");
    auto txn = copy.beginRead();
    EXPECT_EQ(double(txn.count(interactions)), m["records"].number());
    EXPECT_GE(txn.count(interactions), answered.size() + 2);
    for (auto seq : answered) EXPECT_TRUE(txn.get(interactions, u64Key(seq))) << seqText(seq) << " missing";
    auto hwm = keyU64(*txn.get(meta, kSeqHwmKey));
    EXPECT_EQ(double(hwm), m["seq_hwm"].number());
    EXPECT_GT(makeSeq(1, hwm), answered.back());
    ASSERT_TRUE(txn.get(meta, kBackupManifestKey));
  }
  // LMDB's own tool reads it (lmdb-utils, installed by the test set-up).
  auto stat = run("mdb_stat -a " + target);
  EXPECT_EQ(stat.exitCode, 0) << stat.output;
  EXPECT_NE(stat.output.find("Status of interactions"), std::string::npos) << stat.output;
  // Compacted: no bigger than the live file.
  EXPECT_LE(fs::file_size(target + "/data.mdb"), fs::file_size(dir_ + "/coordinator/data.mdb"));

  // Started as it is, the copy is refused and left as it was.
  auto before = slurp(target + "/data.mdb");
  std::string toml = dir_ + "/on-backup.toml";
  std::ofstream(toml) << "[coordinator]\nnode_id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = \"" << target
                      << "\"\n\n[participants]\n\"bank-a\" = \"" << cluster_->agentAddress("bank-a")
                      << "\"\n\n[tls]\ninsecure = true\n";
  for (const char* init : {"", " --init"}) {
    auto refused = run("timeout 20 " + binDir() + "/keel-coordinator --config " + toml + init);
    EXPECT_EQ(refused.exitCode, 3) << refused.output;
    EXPECT_NE(refused.output.find("holds a backup copy made by keelctl backup"), std::string::npos)
        << refused.output;
  }
  EXPECT_EQ(slurp(target + "/data.mdb"), before);
  EXPECT_FALSE(fs::exists(target + "/" + DataDir::kIdentityFile));
  EXPECT_FALSE(fs::exists(target + "/keel.lock"));
  // ... also when someone gave it an identity by hand.
  fs::copy_file(dir_ + "/coordinator/" + DataDir::kIdentityFile, target + "/" + DataDir::kIdentityFile);
  auto refused = run("timeout 20 " + binDir() + "/keel-coordinator --config " + toml);
  EXPECT_EQ(refused.exitCode, 3) << refused.output;
  EXPECT_NE(refused.output.find("holds a backup copy made by keelctl backup"), std::string::npos) << refused.output;
  EXPECT_EQ(slurp(target + "/data.mdb"), before);

  // The live coordinator kept serving throughout.
  EXPECT_EQ(submit(transferOps("bank-a:alice", "bank-b:bob", 1)).outcome, ClientOutcome::Committed);
}

TEST_F(BackupTest, AgentBackupHoldsItsBranchesAndIsRefusedAsADataDirectory) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(submit(transferOps("bank-a:alice", "bank-b:bob", 1)).outcome, ClientOutcome::Committed);
  }
  std::string target = dir_ + "/bank-b-backup";
  auto j = keelctlJson("backup --agent " + cluster_->agentAddress("bank-b") + " --to " + target);
  ASSERT_EQ(j.exitCode, 0) << j.output;
  auto doc = JsonReader::parse(j.output);
  EXPECT_EQ(doc["dir"].str(), target);
  EXPECT_EQ(doc["kind"].str(), "agent");
  EXPECT_EQ(doc["name"].str(), "bank-b");
  EXPECT_GE(doc["records"].number(), 21);  // the open and 20 credits
  EXPECT_EQ(doc["unfinished"].number(), 0);
  EXPECT_GE(doc["epoch"].number(), 1);
  EXPECT_EQ(JsonReader::parse(slurp(target + "/manifest.json"))["instance_id"].str(), doc["instance_id"].str());

  auto before = slurp(target + "/data.mdb");
  for (const char* init : {"", " --init"}) {
    auto r = run("timeout 20 " + binDir() + "/keel-agent --insecure --name bank-b --listen 127.0.0.1:0 --data-dir " +
                 target + init);
    EXPECT_EQ(r.exitCode, 3) << r.output;
    EXPECT_NE(r.output.find("holds a backup copy made by keelctl backup"), std::string::npos) << r.output;
  }
  EXPECT_EQ(slurp(target + "/data.mdb"), before);
}

TEST_F(BackupTest, BadTargetsAreRefusedBeforeAnythingIsSent) {
  // A target that exists (even empty) is never overwritten.
  std::string existing = dir_ + "/exists";
  fs::create_directory(existing);
  auto r = keelctl("backup --to " + existing);
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_NE(r.output.find("exists; a backup never overwrites"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::is_empty(existing));
  // A parent that does not exist.
  r = keelctl("backup --to " + dir_ + "/no/such/dir");
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
  // A parent nobody may write in (root included: /proc).
  r = keelctl("backup --to /proc/keel-backup-test");
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_FALSE(fs::exists("/proc/keel-backup-test"));
  // Missing --to: usage.
  r = keelctl("backup");
  EXPECT_EQ(r.exitCode, 2) << r.output;
  // Nobody answering: exit 3, nothing left at or beside the target.
  cluster_->stopCoordinator();
  r = keelctl("--timeout 2s backup --to " + dir_ + "/never");
  EXPECT_EQ(r.exitCode, 3) << r.output;
  EXPECT_FALSE(fs::exists(dir_ + "/never"));
  EXPECT_TRUE(leftovers(dir_).empty());
}

}  // namespace
}  // namespace keel::test
