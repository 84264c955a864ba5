// DataDir: a data directory is created only with --init, carries an
// identity that every start checks, and belongs to one process at a time.
// Every refusal names what the directory is and what was asked, and leaves
// the directory as it was.

#include "common/data_dir.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "common/lmdb.h"
#include "tests/unit/test_util.h"

namespace keel {
namespace {

namespace fs = std::filesystem;

DataDirOwner agent(const std::string& name) { return {DataDirKind::Agent, name, 0, "keel-test"}; }
DataDirOwner coordinator(std::uint16_t node) { return {DataDirKind::Coordinator, "coordinator", node, "keel-test"}; }

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::set<std::string> entries(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

class DataDirTest : public ::testing::Test {
 protected:
  // The message of the DataDirError that opening `path` as `owner` throws.
  std::string refusal(const std::string& path, const DataDirOwner& owner, bool init) {
    try {
      DataDir d(path, owner, init);
    } catch (const DataDirError& e) {
      return e.what();
    }
    ADD_FAILURE() << "opened " << path;
    return "";
  }
  void initialise(const std::string& path, const DataDirOwner& owner) { DataDir d(path, owner, true); }

  test::TempDir tmp_;
};

TEST_F(DataDirTest, InitCreatesTheDirectoryWithItsIdentity) {
  std::string path = tmp_.sub("a/bank-a");
  DataDir d(path, agent("bank-a"), true);
  EXPECT_TRUE(d.initialised());
  EXPECT_EQ(d.path(), path);
  EXPECT_EQ(d.identity().kind, DataDirKind::Agent);
  EXPECT_EQ(d.identity().name, "bank-a");
  EXPECT_EQ(d.identity().format, DataDir::kFormat);
  EXPECT_EQ(d.identity().instanceId.size(), 32u);
  EXPECT_GT(d.identity().createdUs, 0u);
  EXPECT_EQ(entries(path), (std::set<std::string>{"keel.identity", "keel.lock"}));
  auto onDisk = parseIdentity(slurp(path + "/keel.identity"), "x");
  EXPECT_EQ(onDisk.instanceId, d.identity().instanceId);
  EXPECT_EQ(onDisk.createdUs, d.identity().createdUs);
}

TEST_F(DataDirTest, PathIsMadeAbsolute) {
  std::string cwd = fs::current_path().string();
  fs::current_path(tmp_.path());
  try {
    DataDir d("./rel/../bank-a/", agent("bank-a"), true);
    EXPECT_EQ(d.path(), tmp_.sub("bank-a"));
  } catch (...) {
    fs::current_path(cwd);
    throw;
  }
  fs::current_path(cwd);
}

TEST_F(DataDirTest, ReopenFindsTheSameIdentityAndInitAgainIsHarmless) {
  std::string path = tmp_.sub("c");
  std::string id;
  {
    DataDir d(path, coordinator(3), true);
    id = d.identity().instanceId;
  }
  std::string identityBytes = slurp(path + "/keel.identity");
  {
    DataDir d(path, coordinator(3), false);
    EXPECT_FALSE(d.initialised());
    EXPECT_EQ(d.identity().instanceId, id);
    EXPECT_EQ(d.identity().nodeId, 3);
  }
  DataDir again(path, coordinator(3), true);
  EXPECT_FALSE(again.initialised());
  EXPECT_EQ(again.identity().instanceId, id);
  EXPECT_EQ(slurp(path + "/keel.identity"), identityBytes);
}

TEST_F(DataDirTest, MissingDirectoryWithoutInitIsRefusedAndNotCreated) {
  std::string path = tmp_.sub("missing/wal");
  EXPECT_EQ(refusal(path, coordinator(1), false),
            "data directory " + path +
                " does not exist; start with --init to create a new coordinator there (check data_dir / --data-dir)");
  EXPECT_FALSE(fs::exists(tmp_.sub("missing")));
}

TEST_F(DataDirTest, EmptyDirectoryWithoutInitIsRefusedAndLeftEmpty) {
  std::string path = tmp_.mkdir("empty");
  EXPECT_EQ(refusal(path, agent("bank-a"), false),
            "data directory " + path +
                " is empty; start with --init to create a new agent there (check data_dir / --data-dir)");
  EXPECT_TRUE(entries(path).empty());
  DataDir d(path, agent("bank-a"), true);
  EXPECT_TRUE(d.initialised());
}

TEST_F(DataDirTest, AFileIsNotADirectory) {
  std::ofstream(tmp_.sub("file")) << "x";
  EXPECT_EQ(refusal(tmp_.sub("file"), agent("bank-a"), true),
            "data directory " + tmp_.sub("file") + " exists but is not a directory");
}

TEST_F(DataDirTest, MismatchesNameWhatTheDirectoryIsAndWhatWasAsked) {
  std::string a = tmp_.sub("bank-a"), c = tmp_.sub("coord");
  initialise(a, agent("bank-a"));
  initialise(c, coordinator(1));
  for (bool init : {false, true}) {  // --init never overrides an identity
    EXPECT_EQ(refusal(a, agent("bank-b"), init),
              "data directory " + a +
                  " belongs to agent bank-a, not agent bank-b (check --name and --data-dir, or name and data_dir in "
                  "the config)");
    EXPECT_EQ(refusal(a, coordinator(1), init),
              "data directory " + a + " belongs to agent bank-a, not a coordinator (check data_dir / --data-dir)");
    EXPECT_EQ(refusal(c, agent("bank-a"), init),
              "data directory " + c + " belongs to a coordinator (node 1), not an agent (check data_dir / --data-dir)");
    EXPECT_EQ(refusal(c, coordinator(2), init),
              "data directory " + c +
                  " belongs to coordinator node 1, not node 2 (check node_id and data_dir in the config, or "
                  "--data-dir)");
  }
}

TEST_F(DataDirTest, AMismatchLeavesEvenTheLockFileAlone) {
  std::string a = tmp_.sub("bank-a");
  initialise(a, agent("bank-a"));
  std::ofstream(a + "/keel.lock", std::ios::trunc) << "1 earlier-holder\n";
  struct stat before;
  ASSERT_EQ(::stat((a + "/keel.lock").c_str(), &before), 0);
  refusal(a, agent("bank-b"), true);
  struct stat after;
  ASSERT_EQ(::stat((a + "/keel.lock").c_str(), &after), 0);
  EXPECT_EQ(slurp(a + "/keel.lock"), "1 earlier-holder\n");
  EXPECT_EQ(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
  EXPECT_EQ(before.st_mtim.tv_sec, after.st_mtim.tv_sec);
}

TEST_F(DataDirTest, ASecondOpenIsRefusedNamingTheHoldersPid) {
  std::string path = tmp_.sub("bank-a");
  {
    DataDir first(path, agent("bank-a"), true);
    // flock conflicts between two open file descriptions, even in one process.
    EXPECT_EQ(refusal(path, agent("bank-a"), true), "data directory " + path + " is in use by pid " +
                                                         std::to_string(::getpid()) +
                                                         " (keel-test); one directory belongs to one process");
  }
  DataDir next(path, agent("bank-a"), false);  // released with the first
  EXPECT_EQ(next.identity().name, "bank-a");
}

TEST_F(DataDirTest, TheLockDiesWithAKilledHolder) {
  std::string path = tmp_.sub("bank-a");
  initialise(path, agent("bank-a"));
  auto child = test::forkChild([&](int fd) {
    DataDir d(path, agent("bank-a"), false);
    test::reportU64(fd, 1);
    for (;;) ::pause();  // holds the lock until SIGKILL
    return 0;
  });
  std::uint64_t ready = 0;
  ASSERT_TRUE(child.readU64(ready));
  EXPECT_NE(refusal(path, agent("bank-a"), false).find("in use by pid " + std::to_string(child.pid) + " (keel-test)"),
            std::string::npos);
  ::kill(child.pid, SIGKILL);
  ASSERT_TRUE(test::killedBy(child.wait(), SIGKILL));
  DataDir after(path, agent("bank-a"), false);
  EXPECT_FALSE(after.initialised());
}

TEST_F(DataDirTest, AnEarlierVersionsDirectoryIsAdoptedOnlyWithInit) {
  std::string path = tmp_.mkdir("old");
  {
    lmdb::Env env(path, {});
    auto db = env.openDb("branches");
    auto t = env.beginWrite();
    t.put(db, "k", "v");
    t.commit();
  }
  std::string data = slurp(path + "/data.mdb");
  EXPECT_EQ(refusal(path, agent("bank-a"), false),
            "data directory " + path +
                " holds Keel data but no keel.identity (made by an earlier Keel version); if it is the agent's "
                "directory, start once with --init to adopt it");
  EXPECT_FALSE(fs::exists(path + "/keel.lock"));
  DataDir d(path, agent("bank-a"), true);
  EXPECT_TRUE(d.initialised());
  EXPECT_EQ(d.identity().name, "bank-a");
  EXPECT_EQ(slurp(path + "/data.mdb"), data);
}

TEST_F(DataDirTest, ADirectoryOfOtherFilesIsNeverInitialised) {
  std::string path = tmp_.mkdir("home");
  std::ofstream(path + "/notes.txt") << "mine";
  EXPECT_EQ(refusal(path, agent("bank-a"), true),
            "data directory " + path +
                " is not a Keel data directory (it holds 'notes.txt' and no keel.identity); choose an empty or new "
                "directory");
  EXPECT_EQ(entries(path), std::set<std::string>{"notes.txt"});
}

TEST_F(DataDirTest, ADamagedOrNewerIdentityIsRefusedSayingWhatToDo) {
  std::string path = tmp_.sub("bank-a");
  initialise(path, agent("bank-a"));
  std::ofstream(path + "/keel.identity", std::ios::trunc) << "format = 1\nkind = agent\n";
  auto msg = refusal(path, agent("bank-a"), true);
  EXPECT_NE(msg.find(path + "/keel.identity is damaged (no 'name')"), std::string::npos) << msg;
  EXPECT_NE(msg.find("remove keel.identity and start once with --init"), std::string::npos) << msg;

  DataDirIdentity future{DataDirKind::Agent, "bank-a", 0, std::string(32, 'a'), 1, DataDir::kFormat + 1};
  std::ofstream(path + "/keel.identity", std::ios::trunc) << formatIdentity(future);
  msg = refusal(path, agent("bank-a"), false);
  EXPECT_NE(msg.find("written by a newer Keel"), std::string::npos) << msg;
}

TEST_F(DataDirTest, IdentityTextRoundTrips) {
  DataDirIdentity id{DataDirKind::Coordinator, "coordinator", 65535, "0123456789abcdef0123456789abcdef",
                     1764547200123456, DataDir::kFormat};
  std::string text = formatIdentity(id);
  EXPECT_NE(text.find("created = 2025-12-01T00:00:00Z"), std::string::npos) << text;
  auto back = parseIdentity(text, "f");
  EXPECT_EQ(back.kind, id.kind);
  EXPECT_EQ(back.name, id.name);
  EXPECT_EQ(back.nodeId, id.nodeId);
  EXPECT_EQ(back.instanceId, id.instanceId);
  EXPECT_EQ(back.createdUs, id.createdUs);
  EXPECT_EQ(back.format, id.format);
  for (std::string bad : {"node_id = 65536", "node_id = -1", "instance_id = xyz", "kind = oracle", "garbage"}) {
    std::string t = text;
    auto key = bad.substr(0, bad.find(' '));
    auto at = t.find(key + " = ");
    if (at != std::string::npos) t.erase(at, t.find('\n', at) - at + 1);
    t += bad + "\n";
    EXPECT_THROW(parseIdentity(t, "f"), DataDirError) << bad;
  }
}

TEST_F(DataDirTest, AHostDirectoryIsOwnedLikeAnAgentsAndRefusedToOthers) {
  DataDirOwner host{DataDirKind::Host, "host", 0, "keel-host"};
  std::string path = tmp_.sub("host");
  {
    DataDir d(path, host, true);
    EXPECT_EQ(d.identity().kind, DataDirKind::Host);
    EXPECT_NE(slurp(path + "/keel.identity").find("kind = host\n"), std::string::npos);
    auto msg = refusal(path, host, false);  // the lock: one process per directory
    EXPECT_NE(msg.find("is in use by pid"), std::string::npos) << msg;
  }
  DataDir again(path, host, false);
  EXPECT_EQ(parseIdentity(slurp(path + "/keel.identity"), "f").kind, DataDirKind::Host);
  auto msg = refusal(path, agent("bank-a"), false);
  EXPECT_NE(msg.find("belongs to host host, not an agent"), std::string::npos) << msg;
  std::string a = tmp_.sub("bank-a");
  initialise(a, agent("bank-a"));
  msg = refusal(a, host, false);
  EXPECT_NE(msg.find("belongs to agent bank-a, not a host (keel-host)"), std::string::npos) << msg;
}

TEST_F(DataDirTest, InspectReadsWithoutTheLockAndRefusesWhatIsNotThere) {
  std::string c = tmp_.sub("coord");
  DataDir live(c, coordinator(1), true);
  // No data yet: nothing to check.
  EXPECT_THROW(DataDir::inspect(c, coordinator(1)), DataDirError);
  {
    lmdb::Env env(c, {});
    env.openDb("meta");
  }
  EXPECT_EQ(DataDir::inspect(c, coordinator(1)), c);  // beside the live holder
  EXPECT_THROW(DataDir::inspect(c, coordinator(2)), DataDirError);
  try {
    DataDir::inspect(tmp_.sub("nowhere"), coordinator(1));
    FAIL();
  } catch (const DataDirError& e) {
    EXPECT_EQ(std::string(e.what()),
              "data directory " + tmp_.sub("nowhere") + " does not exist (check data_dir / --data-dir)");
  }
  EXPECT_FALSE(fs::exists(tmp_.sub("nowhere")));
}

}  // namespace
}  // namespace keel
