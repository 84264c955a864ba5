// The RAII LMDB wrappers: values, key order, transaction lifetimes and the
// operator-facing map-full error.

#include "common/lmdb.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <thread>
#include <string>
#include <vector>

#include "common/types.h"
#include "tests/unit/test_util.h"

namespace keel {
namespace {

class LmdbTest : public ::testing::Test {
 protected:
  // Writes k = v into database "data" of dir_, committed, and closes the env.
  void writeAndClose(const std::string& k, const std::string& v) {
    lmdb::Env env(dir_.path(), {});
    MDB_dbi db = env.openDb("data");
    auto t = env.beginWrite();
    t.put(db, k, v);
    t.commit();
  }

  test::TempDir dir_;
};

TEST_F(LmdbTest, PutGetDelRoundTrip) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  {
    auto t = env.beginWrite();
    EXPECT_FALSE(t.get(db, "alpha").has_value());
    t.put(db, "alpha", "one");
    t.put(db, "beta", std::string("t\0o", 3));  // binary values survive
    EXPECT_EQ(t.get(db, "alpha"), "one");
    t.put(db, "alpha", "uno");  // overwrite
    EXPECT_EQ(t.get(db, "alpha"), "uno");
    EXPECT_TRUE(t.del(db, "beta"));
    EXPECT_FALSE(t.del(db, "beta"));  // absent is a value, not an error
    t.put(db, "beta", std::string("t\0o", 3));
    t.commit();
    EXPECT_FALSE(t);  // the handle is gone after commit
  }
  auto r = env.beginRead();
  EXPECT_EQ(r.get(db, "alpha"), "uno");
  EXPECT_EQ(r.get(db, "beta"), std::string("t\0o", 3));
  EXPECT_EQ(r.count(db), 2u);
  EXPECT_FALSE(r.get(db, "gamma").has_value());
}

TEST_F(LmdbTest, BigEndianU64KeysScanInNumericOrder) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  const std::vector<std::uint64_t> keys = {256, 1, 65536, 255, 1ull << 40, 0, 257, ~0ull};
  {
    auto t = env.beginWrite();
    for (auto k : keys) t.put(db, u64Key(k), std::to_string(k));
    t.commit();
  }
  auto r = env.beginRead();
  std::vector<std::uint64_t> seen;
  r.scan(db, "", [&](std::string_view k, std::string_view v) {
    seen.push_back(keyU64(k));
    EXPECT_EQ(std::string(v), std::to_string(keyU64(k)));
    return true;
  });
  EXPECT_EQ(seen, (std::vector<std::uint64_t>{0, 1, 255, 256, 257, 65536, 1ull << 40, ~0ull}));

  // From a key (inclusive), stopping when fn returns false.
  seen.clear();
  r.scan(db, u64Key(256), [&](std::string_view k, std::string_view) {
    seen.push_back(keyU64(k));
    return seen.size() < 3;
  });
  EXPECT_EQ(seen, (std::vector<std::uint64_t>{256, 257, 65536}));

  // From a key that is absent: starts at the next larger one.
  seen.clear();
  r.scan(db, u64Key(1000), [&](std::string_view k, std::string_view) {
    seen.push_back(keyU64(k));
    return true;
  });
  EXPECT_EQ(seen, (std::vector<std::uint64_t>{65536, 1ull << 40, ~0ull}));

  // Past the last key: fn is never called.
  int calls = 0;
  r.scan(db, std::string(9, '\xff'), [&](std::string_view, std::string_view) {
    ++calls;
    return true;
  });
  EXPECT_EQ(calls, 0);
}

TEST_F(LmdbTest, XidKeysRoundTripAndSortBySeqThenBranch) {
  Xid a{5, 300}, b{6, 1};
  EXPECT_EQ(keyXid(xidKey(a)), a);
  EXPECT_LT(xidKey(a), xidKey(b));
  EXPECT_LT(xidKey(Xid{5, 1}), xidKey(a));
  EXPECT_THROW(keyXid("short"), std::runtime_error);
  EXPECT_THROW(keyU64("1234567"), std::runtime_error);
}

TEST_F(LmdbTest, WriteTxnNotCommittedIsAbortedOnDestruction) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  {
    auto t = env.beginWrite();
    t.put(db, "k", "v");
  }  // destroyed without commit
  {
    auto r = env.beginRead();
    EXPECT_FALSE(r.get(db, "k").has_value());
  }
  // The write lock was released: another write transaction can start and
  // sees none of the aborted data.
  auto t = env.beginWrite();
  EXPECT_FALSE(t.get(db, "k").has_value());
  t.put(db, "k2", "v2");
  // Move-assigning over a live transaction aborts the old one first.
  t = lmdb::Txn();
  EXPECT_FALSE(t);
  auto r = env.beginRead();
  EXPECT_FALSE(r.get(db, "k2").has_value());
}

// Read transactions are reset and renewed, not freed and begun again
// (Env::beginRead): a renewed one sees the latest commit, not the snapshot
// it had before, and one ended on one thread is renewed on another.
TEST_F(LmdbTest, ARenewedReadTransactionSeesTheLatestCommitOnAnyThread) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  MDB_txn* first = nullptr;
  {
    auto r = env.beginRead();
    first = r.raw();
    EXPECT_FALSE(r.get(db, "k").has_value());
  }
  for (int i = 0; i < 3; ++i) {
    auto t = env.beginWrite();
    t.put(db, "k", std::to_string(i));
    t.commit();
    auto r = env.beginRead();
    EXPECT_EQ(r.raw(), first);  // the same handle, renewed
    EXPECT_EQ(r.get(db, "k"), std::to_string(i));
  }
  std::optional<std::string> seen;
  MDB_txn* there = nullptr;
  std::thread other([&] {
    auto r = env.beginRead();
    there = r.raw();
    seen = r.get(db, "k");
  });
  other.join();
  EXPECT_EQ(there, first);
  EXPECT_EQ(seen, "2");
  // Two at once on two threads: the second is begun afresh, and both go
  // back to the pool when they end.
  auto mine = env.beginRead();
  std::thread second([&] {
    auto r = env.beginRead();
    there = r.raw();
    seen = r.get(db, "k");
  });
  second.join();
  EXPECT_NE(there, mine.raw());
  EXPECT_EQ(seen, "2");
}

// A renew that fails (here: the reader table is full, the one slot held
// by the thread that reset the transaction) throws naming it, frees the
// handle rather than pooling it again, and leaves the pool usable.
TEST_F(LmdbTest, AFailedRenewThrowsAndTheNextReadStillWorks) {
  lmdb::EnvOptions o;
  o.maxReaders = 1;
  lmdb::Env env(dir_.path(), o);
  MDB_dbi db = env.openDb("data");
  {
    auto t = env.beginWrite();
    t.put(db, "k", "v");
    t.commit();
  }
  { auto r = env.beginRead(); }  // takes this thread's reader slot, the only one, and pools its handle
  std::string error;
  std::thread other([&] {
    try {
      auto r = env.beginRead();  // the pooled handle: renewing it needs a slot of this thread's own
      ADD_FAILURE() << "renewed with the reader table full";
    } catch (const lmdb::Error& e) {
      error = e.what();
    }
  });
  other.join();
  EXPECT_NE(error.find("mdb_txn_renew"), std::string::npos) << error;
  EXPECT_NE(error.find("MDB_READERS_FULL"), std::string::npos) << error;
  auto r = env.beginRead();  // begun afresh on this thread's slot: the failed handle was not pooled again
  EXPECT_NE(r.raw(), nullptr);
  EXPECT_EQ(r.get(db, "k"), "v");
}

TEST_F(LmdbTest, NestedAbortLeavesParentUnchanged) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  auto parent = env.beginWrite();
  parent.put(db, "a", "1");
  parent.put(db, "d", "keep");
  {
    auto child = env.beginNested(parent);
    child.put(db, "a", "2");
    child.put(db, "b", "3");
    EXPECT_TRUE(child.del(db, "d"));
    EXPECT_EQ(child.get(db, "a"), "2");
    child.abort();
  }
  EXPECT_EQ(parent.get(db, "a"), "1");
  EXPECT_FALSE(parent.get(db, "b").has_value());
  EXPECT_EQ(parent.get(db, "d"), "keep");
  {
    auto child = env.beginNested(parent);
    child.put(db, "c", "4");
  }  // a nested transaction not committed is aborted too
  EXPECT_FALSE(parent.get(db, "c").has_value());
  {
    auto child = env.beginNested(parent);
    child.put(db, "c", "5");
    child.commit();  // folds into the parent only
  }
  EXPECT_EQ(parent.get(db, "c"), "5");
  parent.commit();
  auto r = env.beginRead();
  EXPECT_EQ(r.get(db, "a"), "1");
  EXPECT_EQ(r.get(db, "c"), "5");
  EXPECT_FALSE(r.get(db, "b").has_value());
}

TEST_F(LmdbTest, CommittedDataSurvivesReopen) {
  writeAndClose("k", "durable");
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  auto r = env.beginRead();
  EXPECT_EQ(r.get(db, "k"), "durable");
}

TEST_F(LmdbTest, EnvReportsMapSize) {
  lmdb::EnvOptions opts;
  opts.mapSize = std::size_t(8) << 20;
  lmdb::Env env(dir_.path(), opts);
  EXPECT_TRUE(std::filesystem::exists(dir_.sub("data.mdb")));
  EXPECT_EQ(env.mapSize(), opts.mapSize);
}

// Creating a data directory is DataDir's decision (--init), never a side
// effect of opening LMDB.
TEST_F(LmdbTest, EnvDoesNotCreateAMissingDirectory) {
  try {
    lmdb::Env env(dir_.sub("a/b"), {});
    FAIL() << "opened an environment in a missing directory";
  } catch (const lmdb::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir_.sub("a/b")), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.sub("a")));
}

TEST_F(LmdbTest, ReadOnlyEnvReadsWhatIsThereAndWritesNothing) {
  writeAndClose("k", "v");
  auto sizeBefore = std::filesystem::file_size(dir_.sub("data.mdb"));
  lmdb::EnvOptions ro;
  ro.readOnly = true;
  lmdb::Env env(dir_.path(), ro);
  MDB_dbi db = env.openDb("data");
  EXPECT_EQ(env.beginRead().get(db, "k"), "v");
  EXPECT_THROW(env.beginWrite(), lmdb::Error);
  // A database this layout does not have yet reads as empty.
  MDB_dbi absent = env.openDb("absent");
  EXPECT_EQ(absent, lmdb::kAbsentDb);
  auto r = env.beginRead();
  EXPECT_FALSE(r.get(absent, "k").has_value());
  EXPECT_EQ(r.count(absent), 0u);
  int seen = 0;
  r.scan(absent, "", [&](std::string_view, std::string_view) { return ++seen, true; });
  EXPECT_EQ(seen, 0);
  EXPECT_EQ(std::filesystem::file_size(dir_.sub("data.mdb")), sizeBefore);
}

TEST_F(LmdbTest, MapFullErrorTellsTheOperatorToRaiseMapSize) {
  lmdb::EnvOptions opts;
  opts.mapSize = 64 * 1024;
  lmdb::Env env(dir_.path(), opts);
  MDB_dbi db = env.openDb("data");
  const std::string value(1024, 'x');
  int written = 0;
  bool full = false;
  std::string message;
  int code = 0;
  for (int i = 0; i < 10000 && !full; ++i) {
    try {
      auto t = env.beginWrite();
      t.put(db, u64Key(std::uint64_t(i)), value);
      t.commit();
      ++written;
    } catch (const lmdb::MapFullError& e) {
      full = true;
      message = e.what();
      code = e.code();
    }
  }
  ASSERT_TRUE(full) << "64 KiB map never filled after " << written << " KiB";
  EXPECT_GT(written, 0);
  EXPECT_LT(written, 64);
  EXPECT_EQ(code, MDB_MAP_FULL);
  EXPECT_NE(message.find("map_size"), std::string::npos) << message;
  // The environment stays usable: what was committed before is intact.
  auto r = env.beginRead();
  EXPECT_EQ(r.count(db), std::size_t(written));
  EXPECT_EQ(r.get(db, u64Key(0)), value);
}

TEST_F(LmdbTest, MapFullIsAnLmdbError) {
  // Callers that catch lmdb::Error see the map-full case too.
  try {
    lmdb::throwError("mdb_put", MDB_MAP_FULL);
    FAIL() << "throwError returned";
  } catch (const lmdb::Error& e) {
    EXPECT_EQ(e.code(), MDB_MAP_FULL);
    EXPECT_NE(dynamic_cast<const lmdb::MapFullError*>(&e), nullptr);
  }
  try {
    lmdb::throwError("mdb_get", MDB_CORRUPTED);
    FAIL() << "throwError returned";
  } catch (const lmdb::Error& e) {
    EXPECT_EQ(e.code(), MDB_CORRUPTED);
    EXPECT_EQ(dynamic_cast<const lmdb::MapFullError*>(&e), nullptr);
    EXPECT_NE(std::string(e.what()).find("mdb_get"), std::string::npos);
  }
}

}  // namespace
}  // namespace keel
