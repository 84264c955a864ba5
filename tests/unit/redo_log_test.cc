// RedoLog (common/redo_log.h): the group log's redo mode. Groups made
// durable by the redo log alone survive a killed process; readers see them
// before the checkpoint; a torn record, a stale chain after a rewind, an
// older data file, a full log file and a checkpoint whose meta page was lost
// are each handled as the header says.

#include "common/redo_log.h"
#include "common/records.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/failpoint.h"
#include "common/group_log.h"
#include "common/types.h"
#include "tests/unit/test_util.h"

namespace keel {
namespace {

namespace fs = std::filesystem;

lmdb::EnvOptions envOpts() {
  lmdb::EnvOptions o;
  o.mapSize = std::size_t(64) << 20;
  return o;
}

std::string key(std::uint64_t i) { return u64Key(i); }
std::string value(std::uint64_t i, std::size_t bytes) {
  std::string v = "value-" + std::to_string(i);
  if (v.size() < bytes) v.resize(bytes, char('a' + i % 26));
  return v;
}

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

RedoLog::Options noCheckpoints() {
  RedoLog::Options o;
  o.fileBytes = std::uint64_t(1) << 20;
  o.checkpointEvery = std::chrono::hours(1);
  o.checkpointIdle = std::chrono::hours(1);
  return o;
}

GroupCommitLog::Options redoLog(RedoLog::Options ro) {
  GroupCommitLog::Options lo;
  lo.redo = true;
  lo.redoOptions = ro;
  return lo;
}

// A child that runs a redo-mode group log on `dir`, writes groups first..last
// (key i -> value(i)), reports each once durable, and is killed (no
// destructor: no last checkpoint) unless `cleanStop`.
struct ChildRun {
  std::vector<std::uint64_t> durable;
  int status = 0;
};
ChildRun runChild(const std::string& dir, int first, int last, RedoLog::Options ro, std::size_t valueBytes = 100,
                  const std::string& failpoints = "", bool cleanStop = false) {
  auto child = test::forkChild([&](int fd) {
    if (!failpoints.empty()) failpoint::configure(failpoints);
    auto env = openEnvRecovering(dir, envOpts());
    MDB_dbi db = env.openDb("t");
    {
      GroupCommitLog log(env, redoLog(ro));
      for (int i = first; i <= last; ++i) {
        log.runSync([&](lmdb::Txn& t) { t.put(db, key(i), value(i, valueBytes)); });
        test::reportU64(fd, std::uint64_t(i));
      }
      if (!cleanStop) ::raise(SIGKILL);
    }
    return 0;
  });
  ChildRun r;
  r.durable = child.readAll();
  r.status = child.wait();
  return r;
}

std::vector<std::string> readKeys(lmdb::Env& env, int n) {
  MDB_dbi db = env.openDb("t");
  auto txn = env.beginRead();
  std::vector<std::string> out;
  for (int i = 1; i <= n; ++i) out.push_back(txn.get(db, key(i)).value_or(""));
  return out;
}

// LMDB's committed state only, without the overlay: a raw read transaction
// of `env`, or of the directory opened on its own when no Env is given.
std::optional<std::string> lmdbOnly(lmdb::Env& env, MDB_dbi db, std::uint64_t k) {
  MDB_txn* t = nullptr;
  if (mdb_txn_begin(env.raw(), nullptr, MDB_RDONLY, &t) != 0) throw std::runtime_error("mdb_txn_begin");
  std::string kb = key(k);
  MDB_val kv{kb.size(), kb.data()}, v;
  int rc = mdb_get(t, db, &kv, &v);
  std::optional<std::string> out;
  if (rc == 0) out.emplace(static_cast<const char*>(v.mv_data), v.mv_size);
  mdb_txn_abort(t);
  return out;
}
std::optional<std::string> lmdbOnly(const std::string& dir, std::uint64_t k) {
  lmdb::EnvOptions o = envOpts();
  o.readOnly = true;
  lmdb::Env ro(dir, o);
  MDB_dbi db = ro.openDb("t");
  if (db == lmdb::kAbsentDb) return std::nullopt;
  return lmdbOnly(ro, db, k);
}

// LMDB's two meta pages (data.mdb's pages 0 and 1): the MDB_meta after the
// 16-byte page header, its txnid the last field (mdb.c, 0.9.x).
constexpr std::size_t kMetaAt = 16, kMetaBytes = 136, kTxnidAt = kMetaAt + 128;

// What a crash right after a checkpoint's data flush leaves when the meta
// page it wrote (without a flush: MDB_NOMETASYNC) never reached the disk:
// the slot of the newest commit holds the commit before it again.
void loseNewestMetaPage(const std::string& dir) {
  int fd = ::open((dir + "/data.mdb").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
  std::string meta[2];
  std::uint64_t txnid[2];
  for (int i = 0; i < 2; ++i) {
    meta[i].resize(kMetaBytes);
    ASSERT_EQ(::pread(fd, meta[i].data(), kMetaBytes, off_t(i * page + kMetaAt)), ssize_t(kMetaBytes));
    std::memcpy(&txnid[i], meta[i].data() + (kTxnidAt - kMetaAt), 8);
  }
  int newest = txnid[1] > txnid[0] ? 1 : 0;
  ASSERT_EQ(txnid[newest], txnid[1 - newest] + 1) << "not two consecutive commits in the meta pages";
  ASSERT_EQ(::pwrite(fd, meta[1 - newest].data(), kMetaBytes, off_t(newest * page + kMetaAt)), ssize_t(kMetaBytes));
  ::close(fd);
}

std::uint64_t lmdbLsn(const std::string& dir) {
  lmdb::EnvOptions o = envOpts();
  o.readOnly = true;
  lmdb::Env ro(dir, o);
  MDB_dbi db = ro.openDb("redo");
  auto v = ro.beginRead().get(db, "lsn");
  std::uint64_t lsn = 0;
  if (v && v->size() == 8) std::memcpy(&lsn, v->data(), 8);
  return lsn;
}

// data.mdb's newest meta page's txnid, and redo.pending's.
std::uint64_t newestTxnid(const std::string& dir) {
  int fd = ::open((dir + "/data.mdb").c_str(), O_RDONLY);
  if (fd < 0) return 0;
  const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
  std::uint64_t t[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    if (::pread(fd, &t[i], 8, off_t(i * page + kTxnidAt)) != 8) t[i] = 0;
  }
  ::close(fd);
  return std::max(t[0], t[1]);
}
std::uint64_t pendingTxnid(const std::string& dir) {
  std::string b = readFile(RedoLog::pendingPath(dir));
  std::uint64_t v = 0;
  if (b.size() >= 16) std::memcpy(&v, b.data() + 8, 8);
  return v;
}

class RedoLogTest : public ::testing::Test {
 protected:
  test::TempDir dir_;
  std::string path() const { return dir_.path(); }
};

TEST(RedoRecording, ANestedTransactionHandsItsWritesUpOnCommitAndDropsThemOnAbort) {
  test::TempDir dir;
  lmdb::Env env(dir.path(), envOpts());
  MDB_dbi a = env.openDb("a");
  MDB_dbi b = env.openDb("b");
  auto top = env.beginWrite();
  auto outer = env.beginRecordedNested(top);
  {
    auto n = env.beginNested(outer);
    n.put(a, "k1", "v1");
    n.commit();
  }
  {
    auto n = env.beginNested(outer);
    n.put(a, "lost", "x");
    n.abort();
  }
  outer.put(b, "k2", "v2");
  EXPECT_TRUE(outer.del(a, "k1"));
  EXPECT_FALSE(outer.del(a, "never-there"));  // nothing deleted: nothing recorded
  auto ops = lmdb::decodeRedoOps(outer.takeRedo());
  ASSERT_EQ(ops.size(), 3u);
  EXPECT_TRUE(ops[0].put);
  EXPECT_EQ(ops[0].db, "a");
  EXPECT_EQ(ops[0].key, "k1");
  EXPECT_EQ(ops[0].value, "v1");
  EXPECT_EQ(ops[1].db, "b");
  EXPECT_EQ(ops[1].value, "v2");
  EXPECT_FALSE(ops[2].put);
  EXPECT_EQ(ops[2].key, "k1");
  outer.abort();
  top.abort();

  EXPECT_THROW(lmdb::decodeRedoOps(std::string("P\x05") + "ab"), lmdb::Error);  // truncated
  EXPECT_THROW(lmdb::decodeRedoOps("Z"), lmdb::Error);                         // unknown kind
}

// Three levels, as the group log nests them (group, bundle, item, and a
// job's own): a grandchild committed into a child that then aborts leaves
// nothing; one committed into a child that commits stays, in order, after
// writes its parent made before it began. The delta a reader gets says the
// same, a later write to a key winning.
TEST(RedoRecording, AnAbortedLevelDropsWhatItsCommittedChildrenWroteAndTheDeltaAgrees) {
  test::TempDir dir;
  lmdb::Env env(dir.path(), envOpts());
  MDB_dbi a = env.openDb("a");
  MDB_dbi b = env.openDb("b");
  auto top = env.beginWrite();
  auto g = env.beginRecordedNested(top);
  g.put(a, "first", "1");
  {
    auto child = env.beginNested(g);
    child.put(a, "child", "c");
    {
      auto grandchild = env.beginNested(child);
      grandchild.put(b, "gone", "g");
      grandchild.commit();
    }
    child.abort();
  }
  {
    auto child = env.beginNested(g);
    child.put(b, "kept", "k");
    {
      auto grandchild = env.beginNested(child);
      grandchild.put(b, "deep", "d");
      grandchild.put(a, "first", "2");  // overwrites g's own write
      grandchild.commit();
    }
    {
      auto failed = env.beginNested(child);
      failed.put(b, "kept", "lost");
    }  // destroyed uncommitted: aborted
    child.commit();
  }
  std::string bytes = g.takeRedo();
  auto ops = lmdb::decodeRedoOps(bytes);
  std::vector<std::string> keys;
  for (const auto& op : ops) keys.push_back(op.db + "/" + op.key + "=" + op.value);
  EXPECT_EQ(keys, (std::vector<std::string>{"a/first=1", "b/kept=k", "b/deep=d", "a/first=2"}));

  auto delta = lmdb::toDelta(env, bytes);
  ASSERT_EQ(delta->dbs.size(), 2u);
  EXPECT_EQ(delta->dbs.at(a).at("first"), std::optional<std::string>("2"));
  EXPECT_EQ(delta->dbs.at(a).count("child"), 0u);
  EXPECT_EQ(delta->dbs.at(b).at("kept"), std::optional<std::string>("k"));
  EXPECT_EQ(delta->dbs.at(b).count("gone"), 0u);
  EXPECT_EQ(delta->dbs.at(b).size(), 2u);
  g.abort();
  top.abort();
}

// Taken from a nested transaction, the record is that transaction's own
// writes only; what its parent recorded before it stays the parent's.
TEST(RedoRecording, TakingANestedRecordTakesItsOwnWritesOnly) {
  test::TempDir dir;
  lmdb::Env env(dir.path(), envOpts());
  MDB_dbi a = env.openDb("a");
  auto top = env.beginWrite();
  auto g = env.beginRecordedNested(top);
  g.put(a, "parent", "p");
  auto child = env.beginNested(g);
  child.put(a, "child", "c");
  auto mine = lmdb::decodeRedoOps(child.takeRedo());
  ASSERT_EQ(mine.size(), 1u);
  EXPECT_EQ(mine[0].key, "child");
  child.abort();
  auto rest = lmdb::decodeRedoOps(g.takeRedo());
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].key, "parent");
  g.abort();
  top.abort();
}

TEST(RedoRecording, Crc32cMatchesTheStandardCheckValue) {
  EXPECT_EQ(crc32c(0, "123456789"), 0xE3069283u);  // RFC 3720's check value
  EXPECT_EQ(crc32c(crc32c(0, "1234"), "56789"), 0xE3069283u);
}

TEST_F(RedoLogTest, GroupsOfAKilledProcessAreReplayed) {
  auto r = runChild(path(), 1, 20, noCheckpoints());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_EQ(r.durable.size(), 20u);
  EXPECT_FALSE(lmdbOnly(path(), 20).has_value()) << "the groups were in LMDB already: nothing to show";

  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_TRUE(rec.present);
  EXPECT_EQ(rec.groups, 20u);
  EXPECT_EQ(rec.ops, 20u);
  auto keys = readKeys(env, 20);
  for (int i = 1; i <= 20; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
}

TEST_F(RedoLogTest, ReadersSeeADurableGroupBeforeItsCheckpointAndLmdbHoldsItAfter) {
  auto env = openEnvRecovering(path(), envOpts());
  MDB_dbi db = env.openDb("t");
  {
    lmdb::Txn t = env.beginWrite();
    for (int i : {2, 4, 6}) t.put(db, key(i), "lmdb");
    t.commit();
  }
  RedoLog::Options ro = noCheckpoints();
  {
    GroupCommitLog log(env, redoLog(ro));
    log.runSync([&](lmdb::Txn& t) {
      t.put(db, key(1), "new");
      t.put(db, key(4), "changed");
      t.del(db, key(6));
    });
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(7), "later"); });
    EXPECT_EQ(env.overlayGroups(), 2u);
    EXPECT_FALSE(lmdbOnly(env, db, 1).has_value()) << "already checkpointed: the overlay is not what is read";

    auto txn = env.beginRead();
    EXPECT_EQ(txn.get(db, key(1)).value_or(""), "new");
    EXPECT_EQ(txn.get(db, key(2)).value_or(""), "lmdb");
    EXPECT_EQ(txn.get(db, key(4)).value_or(""), "changed");
    EXPECT_FALSE(txn.get(db, key(6)).has_value()) << "a delete in the overlay hides LMDB's value";
    std::vector<std::string> seen;
    txn.scan(db, "", [&](std::string_view k, std::string_view v) {
      seen.push_back(std::to_string(keyU64(k)) + "=" + std::string(v));
      return true;
    });
    EXPECT_EQ(seen, (std::vector<std::string>{"1=new", "2=lmdb", "4=changed", "7=later"}));
    seen.clear();
    txn.scan(db, key(3), [&](std::string_view k, std::string_view) {
      seen.push_back(std::to_string(keyU64(k)));
      return seen.size() < 2;
    });
    EXPECT_EQ(seen, (std::vector<std::string>{"4", "7"}));
    EXPECT_EQ(txn.count(db), 4u);
  }  // the stop checkpoints
  EXPECT_EQ(env.overlayGroups(), 0u);
  EXPECT_EQ(lmdbOnly(env, db, 4).value_or(""), "changed");
  EXPECT_FALSE(lmdbOnly(env, db, 6).has_value());
}

TEST_F(RedoLogTest, ACheckpointFallsDueWhileTheWriterIsIdle) {
  auto env = openEnvRecovering(path(), envOpts());
  MDB_dbi db = env.openDb("t");
  RedoLog::Options ro = noCheckpoints();  // none every hour under load...
  ro.checkpointIdle = std::chrono::milliseconds(20);  // ... but 20 ms after a group when nothing is queued
  GroupCommitLog log(env, redoLog(ro));
  log.runSync([&](lmdb::Txn& t) { t.put(db, key(1), "x"); });
  // The checkpoint's commit, then the overlay emptied, then the counter.
  for (int i = 0; i < 200 && log.stats().checkpointLatency->snapshot().count == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(lmdbOnly(env, db, 1).value_or(""), "x") << "no checkpoint within 2 s with nothing else to do";
  EXPECT_GE(log.stats().checkpointLatency->snapshot().count, 1u);
  EXPECT_EQ(env.overlayGroups(), 0u);
}

TEST_F(RedoLogTest, CheckpointSyncLeavesEveryGroupInLmdbForACopy) {
  // What a hot backup calls before copying data.mdb (common/backup.h).
  auto env = openEnvRecovering(path(), envOpts());
  MDB_dbi db = env.openDb("t");
  GroupCommitLog log(env, redoLog(noCheckpoints()));
  for (int i = 1; i <= 3; ++i) log.runSync([&](lmdb::Txn& t) { t.put(db, key(i), value(i, 10)); });
  ASSERT_FALSE(lmdbOnly(env, db, 3).has_value()) << "checkpointed already: nothing to show";
  log.checkpointSync();
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(lmdbOnly(env, db, i).value_or(""), value(i, 10)) << "key " << i;
  EXPECT_EQ(env.overlayGroups(), 0u);
  EXPECT_EQ(log.stats().checkpointLatency->snapshot().count, 1u);
  EXPECT_GT(log.stats().checkpointLatency->snapshot().sum, 0);  // what /metrics shows as the stall
}

TEST(RedoOff, CheckpointSyncDoesNothingWithoutARedoLog) {
  test::TempDir dir;
  lmdb::Env env(dir.path(), envOpts());
  GroupCommitLog log(env);
  log.checkpointSync();
  EXPECT_EQ(log.stats().commits.load(), 0u);
  EXPECT_EQ(log.stats().checkpointLatency->snapshot().count, 0u);
}

TEST_F(RedoLogTest, StaleRecordsAfterARewindAreNotReplayed) {
  RedoLog::Options every = noCheckpoints();
  every.checkpointEvery = std::chrono::milliseconds(0);  // a checkpoint (and a rewind) after every group
  every.checkpointIdle = std::chrono::milliseconds(0);
  auto first = runChild(path(), 1, 10, every, 2048, "", /*cleanStop=*/true);
  ASSERT_EQ(first.status, 0);
  EXPECT_EQ(pendingTxnid(path()), 0u) << "a clean stop after its last checkpoint left it pending";
  auto second = runChild(path(), 11, 12, noCheckpoints(), 10);
  ASSERT_TRUE(test::killedBy(second.status, SIGKILL)) << second.status;
  ASSERT_EQ(second.durable.size(), 2u);

  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_EQ(rec.groups, 2u) << "only the newest chain, above LMDB's checkpoint, counts";
  auto keys = readKeys(env, 12);
  for (int i = 1; i <= 10; ++i) EXPECT_EQ(keys[i - 1], value(i, 2048)) << "key " << i;
  EXPECT_EQ(keys[10], value(11, 10));
  EXPECT_EQ(keys[11], value(12, 10));
}

TEST_F(RedoLogTest, AGroupDurableInTheRedoLogOnlyIsReplayed) {
  // The third group's record is flushed, then the process dies before its
  // caller was told: recovery keeps it (as for an LMDB commit that
  // returned just before a crash).
  auto r = runChild(path(), 1, 5, noCheckpoints(), 100, "log.after_redo_durable=2+crash");
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL) || test::killedBy(r.status, SIGABRT)) << r.status;
  ASSERT_EQ(r.durable.size(), 2u);
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_EQ(rec.groups, 3u);
  EXPECT_EQ(readKeys(env, 3)[2], value(3, 100));
}

TEST_F(RedoLogTest, ATornLastRecordIsNotReplayed) {
  auto r = runChild(path(), 1, 6, noCheckpoints());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  std::string file = RedoLog::path(path());
  std::string bytes = readFile(file);
  std::size_t off = 0, last = 0;
  int records = 0;
  while (off + 32 <= bytes.size()) {
    std::uint32_t magic, len;
    std::memcpy(&magic, bytes.data() + off, 4);
    if (magic != 0x4F44524Bu) break;
    std::memcpy(&len, bytes.data() + off + 24, 4);
    last = off;
    off += 32 + len;
    ++records;
  }
  ASSERT_EQ(records, 6);
  {
    int fd = ::open(file.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c = '\x5A';
    ASSERT_EQ(::pwrite(fd, &c, 1, off_t(last + 40)), 1);
    ::close(fd);
  }
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_EQ(rec.groups, 5u);
  auto keys = readKeys(env, 6);
  EXPECT_EQ(keys[4], value(5, 100));
  EXPECT_EQ(keys[5], "") << "the torn record's group must not come back";
}

// Groups 1-10 checkpointed by a clean stop, 11-12 in redo.log only (the
// writer killed), then data.mdb made to look older: it holds groups up to
// 5 only, so redo.log does not continue it.
void makeDataFileOlderThanItsLog(const std::string& dir) {
  RedoLog::Options every = noCheckpoints();
  every.checkpointEvery = std::chrono::milliseconds(0);
  every.checkpointIdle = std::chrono::milliseconds(0);
  ASSERT_EQ(runChild(dir, 1, 10, every, 100, "", true).status, 0);
  auto r = runChild(dir, 11, 12, noCheckpoints());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_EQ(r.durable.size(), 2u);
  lmdb::Env env(dir, envOpts());
  MDB_dbi redo = env.openDb("redo");
  auto t = env.beginWrite();
  std::string five(8, '\0');
  five[0] = 5;
  t.put(redo, "lsn", five);
  t.commit();
}

TEST_F(RedoLogTest, ADataFileOlderThanTheLogIsRefusedAndNothingChanges) {
  ASSERT_NO_FATAL_FAILURE(makeDataFileOlderThanItsLog(path()));
  std::string data = readFile(path() + "/data.mdb");
  std::string log = readFile(RedoLog::path(path()));
  try {
    openEnvRecovering(path(), envOpts());
    FAIL() << "a data file older than its redo log was opened";
  } catch (const lmdb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("older"), std::string::npos) << e.what();
  }
  EXPECT_EQ(readFile(path() + "/data.mdb"), data);
  EXPECT_EQ(readFile(RedoLog::path(path())), log);
}

TEST_F(RedoLogTest, ADataFileThatNamesNoLogIsRefused) {
  auto r = runChild(path(), 1, 2, noCheckpoints());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  fs::remove(path() + "/data.mdb");
  fs::remove(path() + "/lock.mdb");
  try {
    openEnvRecovering(path(), envOpts());
    FAIL() << "a redo log was applied to a data file that does not name it";
  } catch (const lmdb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("names no redo log"), std::string::npos) << e.what();
  }
}

TEST_F(RedoLogTest, AFullLogFileCheckpointsInsteadOfAppending) {
  RedoLog::Options small = noCheckpoints();
  small.fileBytes = 64 << 10;
  // 20 KiB a group: each half of the file holds one; every second group is
  // made durable by a checkpoint (and a flush), and the log goes on in the
  // other half.
  auto r = runChild(path(), 1, 10, small, 20 << 10);
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_EQ(r.durable.size(), 10u);
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_LT(rec.groups, 4u);
  auto keys = readKeys(env, 10);
  for (int i = 1; i <= 10; ++i) EXPECT_EQ(keys[i - 1], value(i, 20 << 10)) << "key " << i;
}

TEST_F(RedoLogTest, AGroupThatFailsBeforeItsAppendLeavesNoTrace) {
  failpoint::configure("log.before_group_commit=1+1*error");
  auto env = openEnvRecovering(path(), envOpts());
  MDB_dbi db = env.openDb("t");
  auto read = [&](int k) { return env.beginRead().get(db, key(k)).value_or(""); };
  {
    GroupCommitLog log(env, redoLog(noCheckpoints()));
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(1), "one"); });
    EXPECT_THROW(log.runSync([&](lmdb::Txn& t) { t.put(db, key(2), "two"); }), std::exception);
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(3), "three"); });
    EXPECT_EQ(read(2), "");
    EXPECT_EQ(read(3), "three");
  }
  failpoint::configure("");
  EXPECT_EQ(read(1), "one");
  EXPECT_EQ(read(2), "") << "the failed group reached LMDB through the long transaction";
  EXPECT_EQ(read(3), "three");
  EXPECT_EQ(lmdbOnly(env, db, 3).value_or(""), "three");
}

TEST_F(RedoLogTest, AFullMapIsCuredByACheckpointWhenThePagesTheLongTransactionFreedAreEnough) {
  // 2 MiB map (512 pages). 400 keys of 1.5 KiB are committed; then, in redo
  // mode with no timed checkpoint, one group deletes them all and 15 groups
  // insert 300 new ones. The long transaction cannot reuse the pages it
  // freed itself, so without a checkpoint the map is full at the 5th group
  // (measured); the checkpoint a full map asks for (and the small commit
  // after it: LMDB reuses a page two commits after the one that freed it)
  // makes them reusable, and every group fits.
  lmdb::EnvOptions small = envOpts();
  small.mapSize = std::size_t(2) << 20;
  auto env = openEnvRecovering(path(), small);
  MDB_dbi db = env.openDb("t");
  {
    lmdb::Txn t = env.beginWrite();
    for (int i = 1; i <= 400; ++i) t.put(db, key(i), value(i, 1500));
    t.commit();
  }
  GroupCommitLog log(env, redoLog(noCheckpoints()));
  log.runSync([&](lmdb::Txn& t) {
    for (int i = 1; i <= 400; ++i) t.del(db, key(i));
  });
  for (int g = 0; g < 15; ++g) {
    ASSERT_NO_THROW(log.runSync([&](lmdb::Txn& t) {
      for (int i = 1; i <= 20; ++i) t.put(db, key(1000 + g * 20 + i), value(g * 20 + i, 1500));
    })) << "group " << g;
  }
  EXPECT_GE(log.stats().checkpointLatency->snapshot().count, 1u);
  auto txn = env.beginRead();
  EXPECT_EQ(txn.count(db), 300u);
  EXPECT_EQ(txn.get(db, key(1300)).value_or(""), value(300, 1500));
  EXPECT_FALSE(txn.get(db, key(1)).has_value());
}

// A child that writes groups 1..5, waits for an idle checkpoint (committed
// without a flush, then flushed by the flusher thread) and for that flush,
// writes 6 and 7, and is killed.
ChildRun runPastACheckpoint(const std::string& dir) {
  RedoLog::Options ro = noCheckpoints();
  ro.checkpointIdle = std::chrono::milliseconds(50);
  auto child = test::forkChild([&](int fd) {
    auto env = openEnvRecovering(dir, envOpts());
    MDB_dbi db = env.openDb("t");
    GroupCommitLog log(env, redoLog(ro));
    auto put = [&](int i) {
      log.runSync([&](lmdb::Txn& t) { t.put(db, key(i), value(i, 100)); });
      test::reportU64(fd, std::uint64_t(i));
    };
    for (int i = 1; i <= 5; ++i) put(i);
    for (int n = 0; n < 500 && log.stats().checkpointLatency->snapshot().count == 0; ++n) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (log.stats().checkpointLatency->snapshot().count == 0) return 3;  // no idle checkpoint within 5 s
    std::this_thread::sleep_for(std::chrono::milliseconds(100));      // its flush, long done
    put(6);
    put(7);
    ::raise(SIGKILL);  // no last checkpoint
    return 0;
  });
  ChildRun r;
  r.durable = child.readAll();
  r.status = child.wait();
  return r;
}

TEST_F(RedoLogTest, ACheckpointWhoseMetaPageNeverReachedTheDiskLeavesItsGroupsInTheRedoLog) {
  // A crash that leaves the last checkpoint's meta page off the disk: LMDB
  // is at the commit before, and the redo log must still hold the groups
  // the checkpoint committed, beside the ones after it (the other half).
  auto r = runPastACheckpoint(path());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_EQ(r.durable.size(), 7u);
  std::uint64_t checkpointed = lmdbLsn(path());
  ASSERT_GE(checkpointed, 5u) << "the idle checkpoint did not commit the first five groups";

  loseNewestMetaPage(path());
  std::uint64_t before = lmdbLsn(path());
  ASSERT_LT(before, checkpointed) << "LMDB did not fall back to the commit before the checkpoint";

  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_EQ(rec.checkpoint, before);
  EXPECT_EQ(rec.groups, 7u - before) << "every group after the durable commit, on both sides of the lost one";
  auto keys = readKeys(env, 7);
  for (int i = 1; i <= 7; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
}

TEST_F(RedoLogTest, ACheckpointLeftPendingIsRevertedAndEveryGroupComesBack) {
  // The killed process's last checkpoint is still marked pending (its
  // flush may or may not have finished: recovery cannot tell), so recovery
  // puts the meta page before it back, and both halves of redo.log replay
  // every group after that one.
  auto r = runPastACheckpoint(path());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_EQ(r.durable.size(), 7u);
  std::uint64_t pending = pendingTxnid(path());
  ASSERT_NE(pending, 0u);
  ASSERT_EQ(newestTxnid(path()), pending) << "the last checkpoint is the newest LMDB commit";
  std::uint64_t checkpointed = lmdbLsn(path());
  ASSERT_GE(checkpointed, 5u);

  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_EQ(rec.reverted, pending);
  EXPECT_LT(rec.checkpoint, checkpointed) << "LMDB did not open at the checkpoint before the pending one";
  EXPECT_EQ(rec.groups, 7u - rec.checkpoint);
  auto keys = readKeys(env, 7);
  for (int i = 1; i <= 7; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
  EXPECT_EQ(pendingTxnid(path()), 0u) << "recovery left a checkpoint pending";
}

TEST_F(RedoLogTest, APendingCheckpointWithoutItsRedoLogIsRefusedAndNothingChanges) {
  // Putting the meta page back is only safe with the groups to replay.
  auto r = runPastACheckpoint(path());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_NE(pendingTxnid(path()), 0u);
  fs::remove(RedoLog::path(path()));
  std::string data = readFile(path() + "/data.mdb");
  try {
    openEnvRecovering(path(), envOpts());
    FAIL() << "a pending checkpoint was reverted without the redo log that holds its groups";
  } catch (const lmdb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("redo.log, which holds its groups, is missing"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(readFile(path() + "/data.mdb"), data);
  EXPECT_NE(pendingTxnid(path()), 0u);
}

TEST_F(RedoLogTest, MetaPagesThatAreNotAPendingCheckpointAndTheOneBeforeItAreRefused) {
  // A data.mdb edited by hand (or a copy mixed with another): the older
  // meta page is not the commit just before the pending one, so putting
  // it back could lose more than redo.log holds. Refused, nothing changed.
  auto r = runPastACheckpoint(path());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  std::uint64_t pending = pendingTxnid(path());
  ASSERT_NE(pending, 0u);
  ASSERT_EQ(newestTxnid(path()), pending);
  {
    int fd = ::open((path() + "/data.mdb").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
    std::uint64_t t[2];
    for (int i = 0; i < 2; ++i) ASSERT_EQ(::pread(fd, &t[i], 8, off_t(i * page + kTxnidAt)), 8);
    int older = t[0] < t[1] ? 0 : 1;
    ASSERT_EQ(t[older] + 1, pending);
    std::uint64_t edited = t[older] - 1;
    ASSERT_EQ(::pwrite(fd, &edited, 8, off_t(older * page + kTxnidAt)), 8);
    ::close(fd);
  }
  std::string data = readFile(path() + "/data.mdb");
  try {
    openEnvRecovering(path(), envOpts());
    FAIL() << "meta pages that are not a pending checkpoint and the one before it were reverted";
  } catch (const lmdb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a pending checkpoint and the one before it"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(readFile(path() + "/data.mdb"), data);
  EXPECT_EQ(pendingTxnid(path()), pending);
}

TEST_F(RedoLogTest, ACommitAfterThePendingCheckpointIsNeverReverted) {
  // Another writer after the killed one (redo mode off, a tool): its
  // commit is newer than the pending checkpoint, so nothing is reverted.
  auto r = runPastACheckpoint(path());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_NE(pendingTxnid(path()), 0u);
  {
    lmdb::Env plain(path(), envOpts());
    MDB_dbi db = plain.openDb("t");
    auto t = plain.beginWrite();
    t.put(db, key(100), "after");
    t.commit();
  }
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_EQ(rec.reverted, 0u);
  EXPECT_EQ(readKeys(env, 100)[99], "after");
  auto keys = readKeys(env, 7);
  for (int i = 1; i <= 7; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
}

TEST_F(RedoLogTest, ACheckpointFlushedAtOnceIsNotLeftPending) {
  // checkpointSync (and a full half, a full map, the stop) flushes its
  // checkpoint before returning and clears the mark: such a checkpoint
  // may hold a group the redo log does not, so it must never be reverted.
  auto child = test::forkChild([&](int fd) {
    auto env = openEnvRecovering(path(), envOpts());
    MDB_dbi db = env.openDb("t");
    GroupCommitLog log(env, redoLog(noCheckpoints()));
    for (int i = 1; i <= 3; ++i) {
      log.runSync([&](lmdb::Txn& t) { t.put(db, key(i), value(i, 100)); });
      test::reportU64(fd, std::uint64_t(i));
    }
    log.checkpointSync();
    ::raise(SIGKILL);
    return 0;
  });
  auto durable = child.readAll();
  ASSERT_TRUE(test::killedBy(child.wait(), SIGKILL));
  ASSERT_EQ(durable.size(), 3u);
  EXPECT_EQ(pendingTxnid(path()), 0u);
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_EQ(rec.reverted, 0u);
  EXPECT_EQ(rec.groups, 0u);
  EXPECT_EQ(readKeys(env, 3)[2], value(3, 100));
}

TEST_F(RedoLogTest, ACleanStopLeavesNothingToReplay) {
  ASSERT_EQ(runChild(path(), 1, 5, noCheckpoints(), 10, "", true).status, 0);
  EXPECT_EQ(lmdbOnly(path(), 5).value_or(""), value(5, 10));
  EXPECT_EQ(pendingTxnid(path()), 0u) << "a clean stop left a checkpoint pending";
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_TRUE(rec.present);
  EXPECT_EQ(rec.groups, 0u);
  EXPECT_EQ(rec.reverted, 0u);
}

TEST_F(RedoLogTest, WritesOutsideTheGroupLogAreRefusedWhileItRuns) {
  auto env = openEnvRecovering(path(), envOpts());
  MDB_dbi db = env.openDb("t");
  {
    GroupCommitLog log(env, redoLog(noCheckpoints()));
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(1), "x"); });
    EXPECT_THROW(env.beginWrite(), lmdb::Error);
  }
  auto t = env.beginWrite();  // the log stopped: allowed again
  t.abort();
}

// ---------------------------------------------------- read-only opens

lmdb::EnvOptions readOnlyOpts() {
  lmdb::EnvOptions o = envOpts();
  o.readOnly = true;
  return o;
}

// The files a read-only open must leave as they are.
std::string filesOf(const std::string& dir) {
  return readFile(dir + "/data.mdb") + readFile(RedoLog::path(dir)) + readFile(RedoLog::pendingPath(dir));
}

TEST_F(RedoLogTest, AReadOnlyOpenShowsTheGroupsOnlyTheRedoLogHoldsAndWritesNothing) {
  // --check-wal after a crash (or beside a live writer): what every caller
  // was told is in redo.log, not yet in data.mdb.
  auto r = runChild(path(), 1, 20, noCheckpoints());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_EQ(r.durable.size(), 20u);
  ASSERT_FALSE(lmdbOnly(path(), 1).has_value()) << "the groups were in LMDB already: nothing to show";
  std::string before = filesOf(path());
  {
    RedoLog::Recovered rec;
    auto env = openEnvRecovering(path(), readOnlyOpts(), &rec);
    EXPECT_TRUE(rec.present);
    EXPECT_EQ(rec.groups, 20u);
    EXPECT_EQ(rec.ops, 20u);
    auto keys = readKeys(env, 20);
    for (int i = 1; i <= 20; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
    MDB_dbi db = env.openDb("t");
    auto txn = env.beginRead();
    EXPECT_EQ(txn.count(db), 20u);
    int scanned = 0;
    txn.scan(db, "", [&](std::string_view, std::string_view) { return ++scanned > 0; });
    EXPECT_EQ(scanned, 20);
  }
  EXPECT_TRUE(filesOf(path()) == before) << "a read-only open changed a file";
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);  // a writable start still replays all of them
  EXPECT_EQ(rec.groups, 20u);
}

TEST_F(RedoLogTest, AReadOnlyViewDropsTheGroupsACheckpointSinceHolds) {
  // A read-only open beside a live writer reads redo.log once; the writer
  // then checkpoints those groups and writes newer values over them. A read
  // begun after that must show the checkpoint's values, not the old groups
  // on top of them; one begun before keeps its own consistent view.
  auto r = runChild(path(), 1, 3, noCheckpoints());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), readOnlyOpts(), &rec);
  ASSERT_EQ(rec.groups, 3u);
  MDB_dbi db = env.openDb("t");
  MDB_dbi redoDb = env.openDb("redo");
  // A read begun before (its own thread: LMDB keeps one per thread).
  std::promise<void> began, written;
  std::string oldBefore, oldAfter;
  std::thread reader([&] {
    auto old = env.beginRead();
    oldBefore = old.get(db, key(1)).value_or("");
    began.set_value();
    written.get_future().wait();
    oldAfter = old.get(db, key(1)).value_or("");
  });
  began.get_future().wait();

  // Another process: replays groups 1-3, writes key 1 anew (group 4) and
  // stops cleanly (its last checkpoint holds all four).
  int status = runChild(path(), 1, 1, noCheckpoints(), 300, "", true).status;
  written.set_value();
  reader.join();
  ASSERT_EQ(status, 0);

  auto now = env.beginRead();
  std::string four(8, '\0');
  four[0] = 4;
  ASSERT_EQ(now.get(redoDb, "lsn").value_or(""), four) << "the other process's last checkpoint holds groups 1-4";
  EXPECT_EQ(now.get(db, key(1)).value_or(""), value(1, 300)) << "an older group shadowed a newer checkpoint";
  EXPECT_EQ(now.get(db, key(3)).value_or(""), value(3, 100));
  EXPECT_EQ(now.count(db), 3u);
  EXPECT_EQ(oldBefore, value(1, 100));
  EXPECT_EQ(oldAfter, value(1, 100)) << "a read begun earlier changed under its reader";
}

// Rewrites redo.pending's boot id (bytes 16-31) as another boot's.
void markPendingOnAnotherBoot(const std::string& dir) {
  std::string b = readFile(RedoLog::pendingPath(dir));
  ASSERT_EQ(b.size(), 32u);
  for (std::size_t i = 16; i < 32; ++i) b[i] = char(b[i] ^ 0x5a);
  std::uint32_t crc = crc32c(0, std::string_view(b.data() + 8, 24));
  std::memcpy(b.data() + 4, &crc, 4);
  std::ofstream(RedoLog::pendingPath(dir), std::ios::binary | std::ios::trunc) << b;
}

TEST_F(RedoLogTest, AReadOnlyOpenRefusesACheckpointLeftUnflushedBeforeTheMachineRestarted) {
  // The killed writer's last checkpoint is still marked pending. On the
  // boot that marked it the page cache holds its pages: a read-only open
  // reads it and the two groups after it.
  auto r = runPastACheckpoint(path());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_EQ(r.durable.size(), 7u);
  ASSERT_NE(pendingTxnid(path()), 0u);
  ASSERT_EQ(newestTxnid(path()), pendingTxnid(path()));
  {
    RedoLog::Recovered rec;
    auto env = openEnvRecovering(path(), readOnlyOpts(), &rec);
    EXPECT_EQ(rec.groups, 7u - rec.checkpoint);
    auto keys = readKeys(env, 7);
    for (int i = 1; i <= 7; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
  }
  // After a restart of the machine its pages may be missing: refused,
  // reading and changing nothing, until a writable start reverts it.
  markPendingOnAnotherBoot(path());
  std::string before = filesOf(path());
  try {
    openEnvRecovering(path(), readOnlyOpts());
    ADD_FAILURE() << "a checkpoint left unflushed before a restart was read";
  } catch (const lmdb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("was never confirmed flushed, and the machine has restarted since"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("start its coordinator or agent once"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(filesOf(path()) == before) << "a refused read-only open changed a file";
  {
    RedoLog::Recovered rec;
    auto env = openEnvRecovering(path(), envOpts(), &rec);
    EXPECT_NE(rec.reverted, 0u);
  }
  auto env = openEnvRecovering(path(), readOnlyOpts());  // recovered: nothing pending any more
  auto keys = readKeys(env, 7);
  for (int i = 1; i <= 7; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
}

TEST_F(RedoLogTest, AReadOnlyOpenRefusesADataFileOlderThanTheLogAfterReadingItAgain) {
  // --check-wal on a data.mdb older than its redo.log (a restored copy):
  // the chain does not begin right after LMDB's LSN. Beside a live writer
  // that happens for a moment (it checkpointed between the two reads), so
  // the file is read again; once it never lines up, refused, reading and
  // changing nothing.
  ASSERT_NO_FATAL_FAILURE(makeDataFileOlderThanItsLog(path()));
  std::string before = filesOf(path());
  try {
    openEnvRecovering(path(), readOnlyOpts());
    ADD_FAILURE() << "a data file older than its redo log was read";
  } catch (const lmdb::Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find(" but data.mdb holds groups up to 5 only, in 20 reads"), std::string::npos) << what;
    EXPECT_NE(what.find("nothing was read"), std::string::npos) << what;
  }
  EXPECT_TRUE(filesOf(path()) == before) << "a refused read-only open changed a file";
}

TEST_F(RedoLogTest, AReadOnlyOpenRefusesAGroupWritingADatabaseDataMdbDoesNotHold) {
  // A group of redo.log writes a database data.mdb does not hold (here:
  // dropped from it by hand after the crash; a writable start creates it
  // as it replays). A read-only open cannot create it: refused, saying to
  // start the process once, and nothing changes. The writable start then
  // replays every group into it.
  auto r = runChild(path(), 1, 3, noCheckpoints());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  ASSERT_EQ(r.durable.size(), 3u);
  {
    lmdb::Env env(path(), envOpts());
    MDB_txn* t = nullptr;
    ASSERT_EQ(mdb_txn_begin(env.raw(), nullptr, 0, &t), 0);
    MDB_dbi dbi;
    ASSERT_EQ(mdb_dbi_open(t, "t", 0, &dbi), 0);
    ASSERT_EQ(mdb_drop(t, dbi, 1), 0);  // 1: the database itself goes
    ASSERT_EQ(mdb_txn_commit(t), 0);
  }
  std::string before = filesOf(path());
  try {
    openEnvRecovering(path(), readOnlyOpts());
    ADD_FAILURE() << "a group writing a database data.mdb does not hold was read";
  } catch (const lmdb::Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("writes database 't', which data.mdb does not hold yet"), std::string::npos) << what;
    EXPECT_NE(what.find("start its coordinator or agent once"), std::string::npos) << what;
  }
  EXPECT_TRUE(filesOf(path()) == before) << "a refused read-only open changed a file";
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_EQ(rec.groups, 3u);
  auto keys = readKeys(env, 3);
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
}

// ------------------------------------------------------------ a job that throws

// A group's jobs run straight in its transaction; one that throws there
// fails alone: it is not run again (a failpoint's count), the rest of its
// group is durable and there after a restart, nothing of it is, and the
// state kept beside LMDB is marked stale once.
TEST_F(RedoLogTest, AJobThatThrowsFailsAloneInItsGroupAndIsNotRunAgain) {
  int rolledBack = 0;
  std::atomic<int> badRan{0}, failures{0};
  {
    auto env = openEnvRecovering(path(), envOpts());
    MDB_dbi db = env.openDb("t");
    auto opts = redoLog(noCheckpoints());
    opts.onRolledBack = [&rolledBack]() noexcept { ++rolledBack; };
    GroupCommitLog log(env, opts);
    // The first job holds the writer so that the next five queue into one group.
    std::promise<void> entered, release;
    auto released = release.get_future().share();
    std::thread holder([&] {
      log.runSync([&](lmdb::Txn& t) {
        entered.set_value();
        released.wait();
        t.put(db, key(1), value(1, 100));
      });
    });
    entered.get_future().wait();
    std::vector<std::thread> writers;
    for (int i = 2; i <= 6; ++i) {
      writers.emplace_back([&, i] {
        try {
          log.runSync([&, i](lmdb::Txn& t) {
            t.put(db, key(i), i == 4 ? "poison" : value(i, 100));
            if (i == 4) {
              ++badRan;
              throw std::runtime_error("job 4 fails");
            }
          });
        } catch (const std::runtime_error&) {
          ++failures;
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // all five queued behind the holder
    release.set_value();
    holder.join();
    for (auto& w : writers) w.join();
    EXPECT_EQ(failures.load(), 1);
    EXPECT_EQ(badRan.load(), 1) << "the job that threw ran again";
    EXPECT_EQ(rolledBack, 1);
    EXPECT_EQ(log.stats().failedJobs.load(), 1u);
    EXPECT_EQ(log.stats().commits.load(), 2u) << "the five did not share one group: nothing tested";
  }
  auto env = openEnvRecovering(path(), envOpts());  // after a clean stop
  auto keys = readKeys(env, 6);
  for (int i : {1, 2, 3, 5, 6}) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
  EXPECT_EQ(keys[3], "") << "the failed job left a trace";
}

// ------------------------------------------------------------ full map

// Options of a 1 MiB map: full after a few hundred writes.
lmdb::EnvOptions oneMiBMap() {
  lmdb::EnvOptions o;
  o.mapSize = std::size_t(1) << 20;
  return o;
}

// The raw LMDB LSN of an open env (its committed state, no overlay).
std::uint64_t committedLsn(lmdb::Env& env) {
  MDB_dbi redo = env.dbHandle("redo");
  MDB_txn* t = nullptr;
  if (redo == lmdb::kAbsentDb || mdb_txn_begin(env.raw(), nullptr, MDB_RDONLY, &t) != 0) return 0;
  MDB_val k{3, const_cast<char*>("lsn")}, v;
  std::uint64_t lsn = 0;
  if (mdb_get(t, redo, &k, &v) == 0 && v.mv_size == 8) std::memcpy(&lsn, v.mv_data, 8);
  mdb_txn_abort(t);
  return lsn;
}

TEST_F(RedoLogTest, ACheckpointThatMeetsAFullMapCommitsItsGroupsOneByOneAndGoesOnDirect) {
  // The long transaction's commit needs pages the map no longer has: LMDB
  // drops it, but its groups are durable and told. Each is committed on
  // its own, with its LSN, and from then on every group is committed to
  // LMDB directly (its caller hears once LMDB holds it), not appended.
  failpoint::configure("log.checkpoint_map_full=1*error");
  {
    auto env = openEnvRecovering(path(), envOpts());
    MDB_dbi db = env.openDb("t");
    {
      GroupCommitLog log(env, redoLog(noCheckpoints()));
      for (int i = 1; i <= 5; ++i) log.runSync([&](lmdb::Txn& t) { t.put(db, key(i), value(i, 100)); });
      ASSERT_FALSE(lmdbOnly(env, db, 5).has_value()) << "checkpointed already: nothing to test";
      EXPECT_FALSE(log.shortOfRoom());
      log.checkpointSync();
      ASSERT_EQ(failpoint::firedCount("log.checkpoint_map_full"), 1u);
      // New work is refused for a grace while what was admitted against the
      // lagging fill finishes (GroupCommitLog::shortOfRoom)...
      EXPECT_TRUE(log.shortOfRoom()) << "turned direct for want of room, new work not refused";
      auto why = log.roomRefusal();
      ASSERT_TRUE(why.has_value()) << "short of room, but no reason to refuse";
      EXPECT_NE(why->find("has just turned direct for want of room: new work is refused for 3 s; raise map_size_mb"),
                std::string::npos)
          << *why;
      for (int i = 1; i <= 5; ++i) EXPECT_EQ(lmdbOnly(env, db, i).value_or(""), value(i, 100)) << "key " << i;
      EXPECT_EQ(committedLsn(env), 5u);
      EXPECT_EQ(pendingTxnid(path()), 0u) << "a commit of the one-by-one replay left pending";
      EXPECT_EQ(env.overlayGroups(), 0u);
      log.runSync([&](lmdb::Txn& t) { t.put(db, key(6), value(6, 100)); });
      EXPECT_EQ(lmdbOnly(env, db, 6).value_or(""), value(6, 100)) << "not direct after a full map";
      EXPECT_EQ(env.overlayGroups(), 0u);
      // ...and only for it: direct, the fill is current again, and the 0.9
      // rule governs alone (not 75 % for good).
      auto deadline = monoMicros() + GroupCommitLog::kShortOfRoomGraceUs + 2'000'000;
      while (log.shortOfRoom() && monoMicros() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      EXPECT_FALSE(log.shortOfRoom()) << "new work refused for good after the grace";
      EXPECT_FALSE(log.roomRefusal().has_value()) << *log.roomRefusal();
    }
  }
  failpoint::configure("");
  RedoLog::Recovered rec;
  auto env = openEnvRecovering(path(), envOpts(), &rec);
  EXPECT_EQ(rec.groups, 0u) << "LMDB held every group already";
  auto keys = readKeys(env, 6);
  for (int i = 1; i <= 6; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
}

// Between checkpoints the fill is not known; the redo bytes since the last
// one say how far it may have grown, and once that may be kDirectAtFill the
// log checkpoints before its time, reads the fill and turns direct, before
// any write meets a full map (GroupCommitLog::roomCheckpointWanted; here
// no time-based checkpoint ever falls due).
TEST_F(RedoLogTest, ALogThatMayHaveFilledTheMapChecksBeforeItsTimeAndTurnsDirect) {
  lmdb::EnvOptions small = oneMiBMap();
  auto env = openEnvRecovering(path(), small);
  MDB_dbi db = env.openDb("t");
  int i = 1;
  {
    GroupCommitLog log(env, redoLog(noCheckpoints()));
    for (; i <= 5000 && !log.shortOfRoom(); ++i) log.runSync([&](lmdb::Txn& t) { t.put(db, key(i), value(i, 200)); });
    ASSERT_TRUE(log.shortOfRoom()) << "never turned direct in " << i << " groups";
    EXPECT_LT(env.fill(), 0.95) << "turned direct only once a write met a full map";
    EXPECT_GE(env.fill(), GroupCommitLog::kDirectAtFill * 0.9);
    EXPECT_EQ(log.stats().failedJobs.load(), 0u);
  }
  auto keys = readKeys(env, i - 1);
  for (int k = 1; k < i; ++k) ASSERT_EQ(keys[k - 1], value(k, 200)) << "key " << k;
}

// A 1 MiB map written through a plain Env (no log) until its high-water
// mark is at least `upTo` (`inUse`: until that much is in use, its
// reusable free pages left out); returns the last key written.
int fillMapTo(const std::string& dir, double upTo, std::size_t valueBytes = 2000, bool inUse = false) {
  lmdb::EnvOptions small = oneMiBMap();
  lmdb::Env env(dir, small);
  MDB_dbi db = env.openDb("t");
  int i = 0;
  while ((inUse ? env.usedFraction() : env.fill()) < upTo) {
    if (++i > 10'000) throw std::runtime_error("the map never filled");
    auto t = env.beginWrite();
    t.put(db, key(i), value(i, valueBytes));
    t.commit();
  }
  return i;
}

// A start on a map already past kDirectAtFill goes direct from its first
// group: its fill never lagged, so new work is not refused for it (only
// the 0.9 rule applies, as without redo).
TEST_F(RedoLogTest, AStartOnANearlyFullMapGoesDirectWithoutRefusingNewWork) {
  // A little past it: opening for redo mode commits once more, which lets
  // LMDB reuse the pages the last fill freed.
  fillMapTo(path(), GroupCommitLog::kDirectAtFill + 0.03, 2000, /*inUse=*/true);
  lmdb::EnvOptions small = oneMiBMap();
  auto env = openEnvRecovering(path(), small);
  MDB_dbi db = env.openDb("t");
  ASSERT_GE(env.usedFraction(), GroupCommitLog::kDirectAtFill);
  GroupCommitLog log(env, redoLog(noCheckpoints()));
  log.runSync([&](lmdb::Txn& t) { t.put(db, key(100'000), value(1, 10)); });
  EXPECT_EQ(lmdbOnly(env, db, 100'000).value_or(""), value(1, 10)) << "not direct on a nearly full map";
  EXPECT_TRUE(log.direct());
  EXPECT_FALSE(log.shortOfRoom()) << "a start on a nearly full map refuses new work below 0.9";
  EXPECT_FALSE(log.roomRefusal().has_value()) << *log.roomRefusal();
}

// ------------------------------------------------ room below the high-water mark

// Deletes three keys in four of 1..last, a few per write: one write of all
// would need more pages for its copies than a nearly full map has left.
void releaseThreeInFour(GroupCommitLog& log, MDB_dbi db, int last) {
  for (int from = 1; from <= last; from += 8) {
    log.runSync([&](lmdb::Txn& t) {
      for (int i = from; i < from + 8 && i <= last; ++i) {
        if (i % 4 != 0) t.del(db, key(i));
      }
    });
  }
}

// The high-water mark of an earlier burst never drops: a start that went
// by it alone was direct (two flushes a group) on every run after, though
// most of the map was free. What counts past kDirectAtFill is what is in
// use (GroupCommitLog::roomFill).
TEST_F(RedoLogTest, AStartOnAMapWhoseMarkIsHighButWhichIsMostlyFreeAppendsToTheRedoLog) {
  int last = fillMapTo(path(), 0.92);
  lmdb::EnvOptions small = oneMiBMap();
  {
    lmdb::Env plain(path(), small);
    GroupCommitLog released(plain);  // without a redo log
    releaseThreeInFour(released, plain.openDb("t"), last);
  }
  auto env = openEnvRecovering(path(), small);
  MDB_dbi db = env.openDb("t");
  ASSERT_GE(env.fill(), 0.9);
  ASSERT_LT(env.usedFraction(), GroupCommitLog::kLeaveDirectAtUsed);
  {
    GroupCommitLog log(env, redoLog(noCheckpoints()));
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(100'000), value(1, 10)); });
    EXPECT_FALSE(log.direct()) << "direct on a map " << int(env.usedFraction() * 100) << "% in use";
    EXPECT_FALSE(lmdbOnly(env, db, 100'000).has_value()) << "committed to LMDB directly, not appended";
    EXPECT_EQ(env.beginRead().get(db, key(4)).value_or(""), value(4, 2000)) << "a key kept by the release is gone";
  }
  EXPECT_EQ(lmdbOnly(env, db, 100'000).value_or(""), value(1, 10)) << "the group was lost at the stop";
}

// A log that turned direct goes back to appending (one flush a group) once
// less than kLeaveDirectAtUsed of the map is in use, counted at most every
// roomCountEvery: not only at the next start.
TEST_F(RedoLogTest, ADirectLogAppendsToTheRedoLogAgainOnceLessOfTheMapIsInUse) {
  int last = fillMapTo(path(), 0.8, 2000, /*inUse=*/true);
  lmdb::EnvOptions small = oneMiBMap();
  auto env = openEnvRecovering(path(), small);
  MDB_dbi db = env.openDb("t");
  GroupCommitLog::Options o = redoLog(noCheckpoints());
  o.roomCountEvery = std::chrono::milliseconds(50);
  {
    GroupCommitLog log(env, o);
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(100'000), value(1, 10)); });
    ASSERT_TRUE(log.direct()) << "not direct on a map " << int(env.usedFraction() * 100) << "% in use";
    ASSERT_EQ(lmdbOnly(env, db, 100'000).value_or(""), value(1, 10));
    releaseThreeInFour(log, db, last);  // each group committed to LMDB, as direct does
    ASSERT_LT(env.usedFraction(), GroupCommitLog::kLeaveDirectAtUsed);
    // A group after roomCountEvery counts the map and leaves direct mode.
    int next = 100'000;
    auto deadline = monoMicros() + 5'000'000;
    while (log.direct() && monoMicros() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ++next;
      log.runSync([&](lmdb::Txn& t) { t.put(db, key(next), value(next, 10)); });
    }
    ASSERT_FALSE(log.direct()) << "still direct with " << int(env.usedFraction() * 100) << "% of the map in use";
    ++next;
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(next), value(next, 10)); });
    EXPECT_FALSE(lmdbOnly(env, db, next).has_value()) << "committed to LMDB directly after leaving direct mode";
    EXPECT_EQ(log.stats().failedJobs.load(), 0u);
    // Kept and new keys read back, through the overlay.
    auto t = env.beginRead();
    EXPECT_EQ(t.get(db, key(4)).value_or(""), value(4, 2000));
    EXPECT_EQ(t.get(db, key(next)).value_or(""), value(next, 10));
  }
  // The stop checkpoints: LMDB holds every group.
  EXPECT_EQ(lmdbOnly(env, db, 100'000).value_or(""), value(1, 10));
}

// A map whose high-water mark passed kRefuseNewAtFill takes new work again
// once what is in use, its free pages left out, is below kRefuseNewAtUsed
// (GroupCommitLog::roomRefusal): the mark never drops, and refusing by it
// alone refused for good after one burst. Freed pages are reused: the mark
// does not move while new work fills them, and the refusal comes back once
// they are in use again. `redo`: the log in redo mode (direct at this
// fill), else without a redo log.
void roomComesBackBelowTheHighWaterMark(const std::string& dir, bool redo) {
  int last = fillMapTo(dir, 0.92);
  lmdb::EnvOptions small = oneMiBMap();
  auto env = redo ? openEnvRecovering(dir, small) : lmdb::Env(dir, small);
  MDB_dbi db = env.openDb("t");
  GroupCommitLog::Options o = redo ? redoLog(noCheckpoints()) : GroupCommitLog::Options{};
  o.roomCountEvery = std::chrono::milliseconds(50);
  GroupCommitLog log(env, o);
  double mark = env.fill();
  ASSERT_GE(mark, GroupCommitLog::kRefuseNewAtFill);
  auto full = log.roomRefusal();
  ASSERT_TRUE(full.has_value()) << "a map " << int(mark * 100) << "% in use not refused";
  EXPECT_NE(full->find("% of it in use: new work is refused until less than 80% is in use"), std::string::npos)
      << *full;
  // Finished records released (here: deleted), three keys in four.
  releaseThreeInFour(log, db, last);
  double used = env.usedFraction();
  EXPECT_LT(used, 0.5) << "deleting three keys in four freed no pages";
  // The first deletes needed a few pages of their own (copies), before
  // any page they freed could be reused.
  EXPECT_LT(env.fill(), mark + 0.05) << "releasing records grew the high-water mark by more than a few pages";
  mark = env.fill();
  // Counted again at most roomCountEvery after the last count.
  std::optional<std::string> why = log.roomRefusal();
  auto deadline = monoMicros() + 2'000'000;
  while (why && monoMicros() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    why = log.roomRefusal();
  }
  EXPECT_FALSE(why.has_value()) << "refused with " << int(used * 100) << "% in use: " << *why;
  // New work fills the freed pages, not the map's unused end.
  int next = last;
  while (env.usedFraction() < 0.6) {
    ++next;
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(next), value(next, 2000)); });
  }
  EXPECT_EQ(env.fill(), mark) << "new work did not reuse the freed pages";
  // In use again past kRefuseNewAtUsed: refused again.
  while (env.usedFraction() < GroupCommitLog::kRefuseNewAtUsed + 0.02 && env.fill() < 0.95) {
    ++next;
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(next), value(next, 2000)); });
  }
  deadline = monoMicros() + 2'000'000;
  why = log.roomRefusal();
  while (!why && monoMicros() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    why = log.roomRefusal();
  }
  ASSERT_TRUE(why.has_value()) << int(env.usedFraction() * 100) << "% in use and not refused";
  EXPECT_NE(why->find("map_size_mb is raised"), std::string::npos) << *why;
  EXPECT_EQ(log.stats().failedJobs.load(), 0u);
}

TEST_F(RedoLogTest, AMapPastItsRefusalMarkTakesNewWorkOnceLessOfItIsInUse) {
  roomComesBackBelowTheHighWaterMark(path(), /*redo=*/true);
}

TEST_F(RedoLogTest, WithoutARedoLogAMapPastItsRefusalMarkTakesNewWorkOnceLessOfItIsInUse) {
  roomComesBackBelowTheHighWaterMark(path(), /*redo=*/false);
}

// Free pages a reader's snapshot still holds (a hot backup's, say) cannot
// be reused: they count as in use until it ends. And a high-water mark
// that grew since the last count (the free list did not serve it) refuses
// at once, before the next count.
TEST_F(RedoLogTest, PagesAReaderHoldsCountAsInUseAndAMarkGrownSinceTheCountRefuses) {
  int last = fillMapTo(path(), 0.70);
  lmdb::EnvOptions small = oneMiBMap();
  lmdb::Env env(path(), small);
  MDB_dbi db = env.openDb("t");
  double mark = 0;
  {
    GroupCommitLog::Options o;
    o.roomCountEvery = std::chrono::milliseconds(50);
    GroupCommitLog log(env, o);
    // The reader holds the snapshot of before the deletes free their pages
    // (its own thread: LMDB gives a thread one reader).
    std::promise<void> held, done;
    std::thread reader([&] {
      auto r = env.beginRead();
      held.set_value();
      done.get_future().wait();
    });
    bool released = false;
    auto release = [&] {
      if (released) return;
      released = true;
      done.set_value();
      reader.join();
    };
    auto atEnd = kj::defer(release);
    held.get_future().wait();
    // Records released while it reads: their pages are on the free list,
    // and held (the deletes' own copies grow the mark past the refusal mark).
    for (int from = 1; from <= last && env.fill() < GroupCommitLog::kRefuseNewAtFill; from += 4) {
      log.runSync([&](lmdb::Txn& t) {
        for (int i = from; i < from + 4 && i <= last; ++i) t.del(db, key(i));
      });
    }
    mark = env.fill();
    ASSERT_GE(mark, GroupCommitLog::kRefuseNewAtFill) << "releasing every record did not grow the mark";
    EXPECT_GE(env.usedFraction(), GroupCommitLog::kRefuseNewAtUsed) << "pages the reader holds counted as free";
    auto why = log.roomRefusal();
    ASSERT_TRUE(why.has_value()) << "refusal mark passed, the free pages held, and nothing refused";
    EXPECT_NE(why->find("% of it in use: new work is refused until less than 80% is in use"), std::string::npos)
        << *why;
    // The reader ends: the same pages are free now.
    release();
    auto deadline = monoMicros() + 2'000'000;
    while (why && monoMicros() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      why = log.roomRefusal();
    }
    EXPECT_FALSE(why.has_value()) << *why;
    EXPECT_LT(env.usedFraction(), 0.5);
  }
  // A count that stands for an hour: only the mark's growth can refuse.
  GroupCommitLog::Options o;
  o.roomCountEvery = std::chrono::hours(1);
  GroupCommitLog log(env, o);
  ASSERT_FALSE(log.roomRefusal().has_value()) << *log.roomRefusal();  // the count
  ASSERT_EQ(env.fill(), mark);
  // New work fills the free list; once it is used up, the mark grows.
  int next = last;
  while (env.fill() == mark) {
    ASSERT_LT(next, last + 2000) << "the mark never grew";
    ++next;
    log.runSync([&](lmdb::Txn& t) { t.put(db, key(next), value(next, 2000)); });
  }
  auto why = log.roomRefusal();
  ASSERT_TRUE(why.has_value()) << "the mark grew past the count and nothing was refused";
  EXPECT_NE(why->find("and growing: new work is refused until its free pages are counted again"), std::string::npos)
      << *why;
}

// The free pages cannot be counted on a thread with a read transaction of
// the map open (LMDB gives a thread one reader): with no count to go by,
// new work is refused, as by the high-water mark alone; the next call
// without it counts and takes new work.
TEST_F(RedoLogTest, AMapPastItsRefusalMarkWhoseFreePagesCannotBeCountedRefusesNewWork) {
  int last = fillMapTo(path(), 0.92);
  lmdb::EnvOptions small = oneMiBMap();
  lmdb::Env env(path(), small);
  MDB_dbi db = env.openDb("t");
  GroupCommitLog log(env);
  releaseThreeInFour(log, db, last);
  ASSERT_GE(env.fill(), GroupCommitLog::kRefuseNewAtFill);
  ASSERT_LT(env.usedFraction(), GroupCommitLog::kRefuseNewAtUsed);
  {
    auto reading = env.beginRead();
    EXPECT_THROW(env.usedFraction(), lmdb::Error);
    EXPECT_EQ(env.usedFractionOrFill(), env.fill()) << "a gauge without a count is not the high-water mark";
    auto why = log.roomRefusal();
    ASSERT_TRUE(why.has_value()) << "past the refusal mark, nothing counted, and new work taken";
    EXPECT_NE(why->find("and its free pages cannot be counted now: new work is refused until map_size_mb is raised"),
              std::string::npos)
        << *why;
  }
  EXPECT_FALSE(log.roomRefusal().has_value()) << *log.roomRefusal();
}

TEST_F(RedoLogTest, AReplayThatDoesNotFitInOneCommitCommitsEachGroupWithItsLsn) {
  // A process that died near a full map: one commit of all its groups
  // does not fit (the pages it frees are reused only by later commits), so
  // the start commits them one by one instead of refusing.
  auto r = runChild(path(), 1, 20, noCheckpoints());
  ASSERT_TRUE(test::killedBy(r.status, SIGKILL)) << r.status;
  failpoint::configure("log.replay_map_full=1*error");
  RedoLog::Recovered rec;
  {
    auto env = openEnvRecovering(path(), envOpts(), &rec);
    failpoint::configure("");
    EXPECT_TRUE(rec.oneByOne);
    EXPECT_EQ(rec.groups, 20u);
    auto keys = readKeys(env, 20);
    for (int i = 1; i <= 20; ++i) EXPECT_EQ(keys[i - 1], value(i, 100)) << "key " << i;
    EXPECT_EQ(committedLsn(env), 20u);
  }
  RedoLog::Recovered again;
  auto env = openEnvRecovering(path(), envOpts(), &again);
  EXPECT_EQ(again.groups, 0u);
}

}  // namespace
}  // namespace keel
