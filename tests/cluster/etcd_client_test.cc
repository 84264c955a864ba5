// The etcd client against a real 3-member cluster that no test disturbs:
// KV, transactions, the async API on a KJ loop, leases and watches. One
// cluster per test process (ctest runs each test in its own process); every
// test works under a key prefix of its own.

#include "common/etcd/etcd_client.h"
#include "tests/cluster/etcd_test_util.h"
#include "tools/etcd_cluster.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <thread>

namespace keel::etcd {
namespace {

using keel::test::EtcdCluster;
using keel::test::KjLoop;
using keel::test::numbered;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

class EtcdClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new EtcdCluster();
    cluster_->start();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(cluster_, nullptr); }

  static EtcdCluster* cluster_;
};

EtcdCluster* EtcdClientTest::cluster_ = nullptr;

TEST_F(EtcdClientTest, PutRangeDeleteRoundTripWithPrefixesAndLimits) {
  Client c(cluster_->endpoints());
  std::int64_t rev = c.putSync("kv/a", "1");
  EXPECT_GT(rev, 0);
  auto one = c.rangeSync("kv/a");
  ASSERT_EQ(one.kvs.size(), 1u);
  EXPECT_EQ(one.kvs[0].key, "kv/a");
  EXPECT_EQ(one.kvs[0].value, "1");
  EXPECT_EQ(one.kvs[0].createRevision, rev);
  EXPECT_EQ(one.kvs[0].modRevision, rev);
  EXPECT_EQ(one.kvs[0].version, 1);
  EXPECT_GE(one.revision, rev);

  std::int64_t rev2 = c.putSync("kv/a", "2");
  EXPECT_GT(rev2, rev);
  one = c.rangeSync("kv/a");
  ASSERT_EQ(one.kvs.size(), 1u);
  EXPECT_EQ(one.kvs[0].value, "2");
  EXPECT_EQ(one.kvs[0].createRevision, rev);
  EXPECT_EQ(one.kvs[0].version, 2);

  // A prefix: keys under kv/p/ only, not kv/p0 or kv/q.
  for (int i = 0; i < 10; ++i) c.putSync(numbered("kv/p/", i), "v" + std::to_string(i));
  c.putSync("kv/p0", "outside");
  c.putSync("kv/q", "outside");
  auto all = c.rangeSync("kv/p/", prefixEnd("kv/p/"));
  ASSERT_EQ(all.kvs.size(), 10u);
  EXPECT_FALSE(all.more);
  EXPECT_EQ(all.count, 10);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(all.kvs[std::size_t(i)].key, numbered("kv/p/", i));
    EXPECT_EQ(all.kvs[std::size_t(i)].value, "v" + std::to_string(i));
  }

  auto limited = c.rangeSync("kv/p/", prefixEnd("kv/p/"), 3);
  ASSERT_EQ(limited.kvs.size(), 3u);
  EXPECT_TRUE(limited.more);
  EXPECT_EQ(limited.count, 10);
  EXPECT_EQ(limited.kvs[2].key, numbered("kv/p/", 2));

  EXPECT_TRUE(c.rangeSync("kv/none").kvs.empty());
  EXPECT_EQ(c.deleteRangeSync("kv/none"), 0);
  EXPECT_EQ(c.deleteRangeSync("kv/a"), 1);
  EXPECT_TRUE(c.rangeSync("kv/a").kvs.empty());
  EXPECT_EQ(c.deleteRangeSync("kv/p/", prefixEnd("kv/p/")), 10);
  EXPECT_EQ(c.rangeSync("kv/p/", prefixEnd("kv/p/")).count, 0);
  EXPECT_EQ(c.rangeSync("kv/p0").kvs.size(), 1u);
  EXPECT_EQ(c.rangeSync("kv/q").kvs.size(), 1u);
}

TEST_F(EtcdClientTest, TxnCreateIfAbsentSucceedsOnceAndTooManyOpsIsAClearError) {
  Client c(cluster_->endpoints());
  auto first = c.txnSync({Compare::absent("tx/d")}, {Op::put("tx/d", "first")}, {Op::get("tx/d")});
  EXPECT_TRUE(first.succeeded);
  EXPECT_GT(first.revision, 0);
  ASSERT_EQ(first.responses.size(), 1u);  // the put's
  EXPECT_TRUE(first.responses[0].kvs.empty());

  auto second = c.txnSync({Compare::absent("tx/d")}, {Op::put("tx/d", "second")}, {Op::get("tx/d")});
  EXPECT_FALSE(second.succeeded);
  ASSERT_EQ(second.responses.size(), 1u);
  ASSERT_EQ(second.responses[0].kvs.size(), 1u);
  EXPECT_EQ(second.responses[0].kvs[0].value, "first");
  EXPECT_EQ(second.responses[0].kvs[0].modRevision, first.revision);
  EXPECT_EQ(c.rangeSync("tx/d").kvs.at(0).value, "first");

  // The other compares.
  auto byValue = c.txnSync({Compare::valueIs("tx/d", "first")}, {Op::put("tx/d", "third")}, {});
  EXPECT_TRUE(byValue.succeeded);
  auto staleMod = c.txnSync({Compare::modRevisionIs("tx/d", first.revision)}, {Op::del("tx/d")}, {});
  EXPECT_FALSE(staleMod.succeeded);
  auto mod = c.txnSync({Compare::modRevisionIs("tx/d", byValue.revision)}, {Op::del("tx/d")}, {});
  EXPECT_TRUE(mod.succeeded);
  ASSERT_EQ(mod.responses.size(), 1u);
  EXPECT_EQ(mod.responses[0].count, 1);  // one key deleted
  EXPECT_TRUE(c.rangeSync("tx/d").kvs.empty());

  // etcd's default --max-txn-ops is 128.
  std::vector<Op> ops;
  for (int i = 0; i < 129; ++i) ops.push_back(Op::put(numbered("tx/many/", i), "x"));
  try {
    c.txnSync({}, ops, {});
    FAIL() << "a txn of 129 ops went through";
  } catch (const EtcdError& e) {
    EXPECT_FALSE(e.unknownOutcome());
    EXPECT_EQ(e.grpcCode(), 3);  // INVALID_ARGUMENT
    std::string what = e.what();
    EXPECT_NE(what.find("too many operations in txn request"), std::string::npos) << what;
    EXPECT_EQ(what.rfind("etcd 127.0.0.1:", 0), 0u) << what;
    EXPECT_NE(what.find(": Txn: "), std::string::npos) << what;
  }
  EXPECT_EQ(c.rangeSync("tx/many/", prefixEnd("tx/many/")).count, 0);

  // The same through a promise: the EtcdError comes back out of the
  // kj::Exception.
  KjLoop loop;
  try {
    loop.wait(c.txn({}, ops, {}));
    FAIL() << "a txn of 129 ops went through";
  } catch (const kj::Exception& e) {
    auto err = etcdErrorOf(e);
    ASSERT_TRUE(err.has_value()) << e.getDescription().cStr();
    EXPECT_FALSE(err->unknownOutcome());
    EXPECT_EQ(err->grpcCode(), 3);
    EXPECT_NE(std::string(err->what()).find("too many operations"), std::string::npos);
  }
}

TEST_F(EtcdClientTest, AsyncTxnsResolveOnTheLoopThread) {
  KjLoop loop;
  Client c(cluster_->endpoints());
  const auto loopThread = std::this_thread::get_id();
  constexpr int kTxns = 500;
  int onLoop = 0, offLoop = 0, created = 0;
  kj::Vector<kj::Promise<void>> all;
  for (int i = 0; i < kTxns; ++i) {
    std::string key = numbered("async/", i);
    all.add(c.txn({Compare::absent(key)}, {Op::put(key, "v" + std::to_string(i))}, {Op::get(key)})
                .then([&, loopThread](TxnResult r) {
                  (std::this_thread::get_id() == loopThread ? onLoop : offLoop)++;
                  if (r.succeeded) ++created;
                }));
  }
  loop.wait(kj::joinPromises(all.releaseAsArray()));
  EXPECT_EQ(onLoop, kTxns);
  EXPECT_EQ(offLoop, 0);
  EXPECT_EQ(created, kTxns);

  // Again: every one finds its key and reads the first value back.
  int sawFirst = 0;
  kj::Vector<kj::Promise<void>> again;
  for (int i = 0; i < kTxns; ++i) {
    std::string key = numbered("async/", i);
    again.add(c.txn({Compare::absent(key)}, {Op::put(key, "other")}, {Op::get(key)}).then([&, i](TxnResult r) {
      if (!r.succeeded && r.responses.size() == 1 && r.responses[0].kvs.size() == 1 &&
          r.responses[0].kvs[0].value == "v" + std::to_string(i)) {
        ++sawFirst;
      }
    }));
  }
  loop.wait(kj::joinPromises(again.releaseAsArray()));
  EXPECT_EQ(sawFirst, kTxns);

  // The other calls, once each.
  EXPECT_EQ(loop.wait(c.range("async/", prefixEnd("async/"), 1)).count, kTxns);
  std::int64_t rev = loop.wait(c.put("async-x", "1"));
  EXPECT_GT(rev, 0);
  EXPECT_EQ(loop.wait(c.deleteRange("async/", prefixEnd("async/"))), kTxns);
  Lease l = loop.wait(c.grant(5));
  EXPECT_GT(l.id, 0);
  EXPECT_GE(l.ttlSeconds, 5);
  loop.wait(c.revoke(l.id));
  try {
    loop.wait(c.revoke(l.id));
    FAIL() << "revoking a revoked lease succeeded";
  } catch (const kj::Exception& e) {
    auto err = etcdErrorOf(e);
    ASSERT_TRUE(err.has_value()) << e.getDescription().cStr();
    EXPECT_FALSE(err->unknownOutcome());  // NOT_FOUND: refused, nothing applied
    EXPECT_NE(std::string(err->what()).find("lease not found"), std::string::npos) << err->what();
  }
}

TEST_F(EtcdClientTest, CreateIfAbsentLatency) {
  // Not a benchmark with a bound: the medians go to the test's output (and
  // its XML properties) so that a run shows what one decision costs.
  constexpr int kRounds = 200;
  Client c(cluster_->endpoints());
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::vector<double> syncUs, asyncUs;
  for (int i = 0; i < kRounds; ++i) {
    std::string key = numbered("lat/sync/", i);
    auto t0 = Clock::now();
    auto r = c.txnSync({Compare::absent(key)}, {Op::put(key, "decided")}, {Op::get(key)});
    syncUs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    ASSERT_TRUE(r.succeeded);
  }
  KjLoop loop;
  for (int i = 0; i < kRounds; ++i) {
    std::string key = numbered("lat/async/", i);
    auto t0 = Clock::now();
    auto r = loop.wait(c.txn({Compare::absent(key)}, {Op::put(key, "decided")}, {Op::get(key)}));
    asyncUs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    ASSERT_TRUE(r.succeeded);
  }
  double s = median(syncUs), a = median(asyncUs);
  std::printf("create-if-absent txn on a 3-member loopback cluster, median of %d: txnSync %.0f us, txn (async, 1 "
              "outstanding) %.0f us\n",
              kRounds, s, a);
  RecordProperty("txnSync_median_us", int(s));
  RecordProperty("txn_async_median_us", int(a));
  c.deleteRangeSync("lat/", prefixEnd("lat/"));
}

TEST_F(EtcdClientTest, LeaseKeptAliveOutlivesItsTtlAndExpiresWhenTheKeeperGoes) {
  KjLoop loop;
  Client c(cluster_->endpoints());
  Lease lease = c.grantSync(2);
  ASSERT_GT(lease.id, 0);
  ASSERT_EQ(lease.ttlSeconds, 2);
  c.putSync("lease/kept", "alive", lease.id);
  bool lostFired = false;
  auto keeper = c.keepAlive(lease, [&] { lostFired = true; });

  loop.runFor(milliseconds(6500));  // more than 3 TTLs
  EXPECT_FALSE(lostFired);
  EXPECT_FALSE(keeper->lost());
  EXPECT_LT(Clock::now() - keeper->lastRenewed(), milliseconds(1500));
  auto kept = c.rangeSync("lease/kept");
  ASSERT_EQ(kept.kvs.size(), 1u);
  EXPECT_EQ(kept.kvs[0].lease, lease.id);

  auto t0 = Clock::now();
  keeper.reset();
  EXPECT_LT(Clock::now() - t0, milliseconds(500)) << "destroying the keeper took long";
  bool gone = loop.runUntil([&] { return c.rangeSync("lease/kept").kvs.empty(); }, milliseconds(5000));
  EXPECT_TRUE(gone) << "the key outlived its lease by more than 3 s";
  EXPECT_GE(Clock::now() - t0, milliseconds(900)) << "the key went before its lease could have expired";
  EXPECT_FALSE(lostFired);  // the keeper was destroyed, its callback never runs
}

TEST_F(EtcdClientTest, RevokeRemovesTheKeyAtOnceAndTheKeeperReportsTheLoss) {
  KjLoop loop;
  Client c(cluster_->endpoints());
  Lease a = c.grantSync(30);
  c.putSync("lease/revoked", "x", a.id);
  ASSERT_EQ(c.rangeSync("lease/revoked").kvs.size(), 1u);
  c.revokeSync(a.id);
  EXPECT_TRUE(c.rangeSync("lease/revoked").kvs.empty());

  // Someone else revokes a lease this keeper renews: onLost, once.
  Lease b = c.grantSync(2);
  c.putSync("lease/other", "x", b.id);
  int lostCount = 0;
  std::thread::id lostOn;
  auto keeper = c.keepAlive(b, [&] {
    ++lostCount;
    lostOn = std::this_thread::get_id();
  });
  loop.runFor(milliseconds(800));
  EXPECT_EQ(lostCount, 0);
  Client other(cluster_->endpoints());
  other.revokeSync(b.id);
  EXPECT_TRUE(loop.runUntil([&] { return lostCount > 0; }, milliseconds(3000))) << "onLost never ran";
  loop.runFor(milliseconds(300));
  EXPECT_EQ(lostCount, 1);
  EXPECT_EQ(lostOn, std::this_thread::get_id());
  EXPECT_TRUE(keeper->lost());
  EXPECT_TRUE(c.rangeSync("lease/other").kvs.empty());
}

TEST_F(EtcdClientTest, WatchDeliversPutsAndDeletesUnderAPrefixInOrder) {
  KjLoop loop;
  Client c(cluster_->endpoints());
  c.putSync("wprefix/before", "not seen");  // before the watch: not an event
  std::vector<Event> seen;
  std::vector<std::string> errors;
  const auto loopThread = std::this_thread::get_id();
  bool offLoop = false;
  auto w = c.watch(
      "wprefix/", prefixEnd("wprefix/"), 0,
      [&](std::vector<Event> evs) {
        offLoop = offLoop || std::this_thread::get_id() != loopThread;
        seen.insert(seen.end(), evs.begin(), evs.end());
      },
      [&](std::string e) { errors.push_back(std::move(e)); });
  loop.runFor(milliseconds(300));  // let the watch be created ("now" is then)

  std::vector<std::int64_t> revs;
  for (int i = 0; i < 20; ++i) revs.push_back(c.putSync(numbered("wprefix/k", i), std::to_string(i)));
  c.putSync("wprefiy/outside", "x");  // just past the prefix
  revs.push_back(c.txnSync({}, {Op::del("wprefix/k0000")}, {}).revision);
  EXPECT_EQ(c.deleteRangeSync("wprefix/k0001"), 1);
  ASSERT_TRUE(loop.runUntil([&] { return seen.size() >= 22; }, milliseconds(5000)))
      << "saw " << seen.size() << " events";
  loop.runFor(milliseconds(200));
  ASSERT_EQ(seen.size(), 22u);
  EXPECT_TRUE(errors.empty());
  EXPECT_FALSE(offLoop);
  for (int i = 0; i < 20; ++i) {
    const Event& e = seen[std::size_t(i)];
    EXPECT_EQ(e.type, EventType::Put);
    EXPECT_EQ(e.kv.key, numbered("wprefix/k", i));
    EXPECT_EQ(e.kv.value, std::to_string(i));
    EXPECT_EQ(e.kv.modRevision, revs[std::size_t(i)]);
  }
  EXPECT_EQ(seen[20].type, EventType::Delete);
  EXPECT_EQ(seen[20].kv.key, "wprefix/k0000");
  EXPECT_EQ(seen[20].kv.modRevision, revs[20]);
  EXPECT_EQ(seen[21].type, EventType::Delete);
  EXPECT_EQ(seen[21].kv.key, "wprefix/k0001");
  for (std::size_t i = 1; i < seen.size(); ++i) EXPECT_GT(seen[i].kv.modRevision, seen[i - 1].kv.modRevision);

  // From a past revision: the history again, from there on.
  std::vector<Event> replay;
  auto w2 = c.watch(
      "wprefix/k0005", "", revs[0], [&](std::vector<Event> evs) { replay.insert(replay.end(), evs.begin(), evs.end()); },
      [&](std::string e) { errors.push_back(std::move(e)); });
  ASSERT_TRUE(loop.runUntil([&] { return !replay.empty(); }, milliseconds(3000)));
  ASSERT_EQ(replay.size(), 1u);
  EXPECT_EQ(replay[0].kv.value, "5");
  EXPECT_EQ(replay[0].kv.modRevision, revs[5]);

  auto t0 = Clock::now();
  w.reset();
  w2.reset();
  EXPECT_LT(Clock::now() - t0, milliseconds(500)) << "destroying the watchers took long";
  std::size_t before = seen.size();
  c.putSync("wprefix/after", "x");
  loop.runFor(milliseconds(300));
  EXPECT_EQ(seen.size(), before);  // a destroyed watcher delivers nothing
  EXPECT_TRUE(errors.empty());
}

TEST_F(EtcdClientTest, WatchFromACompactedRevisionReportsAnErrorOnce) {
  KjLoop loop;
  Client c(cluster_->endpoints());
  std::int64_t first = c.putSync("wcompact/k", "1");
  c.putSync("wcompact/k", "2");
  std::int64_t last = c.putSync("wcompact/k", "3");
  std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + cluster_->endpoint(0) + " compact " +
                    std::to_string(last) + " >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  std::vector<std::string> errors;
  int events = 0;
  auto w = c.watch(
      "wcompact/k", "", first, [&](std::vector<Event> evs) { events += int(evs.size()); },
      [&](std::string e) { errors.push_back(std::move(e)); });
  ASSERT_TRUE(loop.runUntil([&] { return !errors.empty(); }, milliseconds(3000)));
  c.putSync("wcompact/k", "4");
  loop.runFor(milliseconds(300));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(events, 0);
  EXPECT_NE(errors[0].find("compacted"), std::string::npos) << errors[0];
}

TEST_F(EtcdClientTest, DestroyingTheClientWithCallsInFlightIsSafe) {
  KjLoop loop;
  int resolved = 0, rejected = 0;
  kj::Vector<kj::Promise<void>> all;
  {
    Client c(cluster_->endpoints());
    for (int i = 0; i < 100; ++i) {
      std::string key = numbered("inflight/", i);
      all.add(c.txn({Compare::absent(key)}, {Op::put(key, "x")}, {})
                  .then([&](TxnResult) { ++resolved; }, [&](kj::Exception&&) { ++rejected; }));
    }
  }  // destroyed with (most of) them on the wire
  loop.wait(kj::joinPromises(all.releaseAsArray()), milliseconds(5000));
  EXPECT_EQ(resolved + rejected, 100);
  // Keepers and watchers outlive their client.
  std::unique_ptr<Watcher> w;
  std::vector<Event> seen;
  {
    Client c(cluster_->endpoints());
    w = c.watch("inflight/w", "", 0, [&](std::vector<Event> evs) { seen.insert(seen.end(), evs.begin(), evs.end()); },
                [](std::string) {});
  }
  loop.runFor(milliseconds(300));
  Client c(cluster_->endpoints());
  c.putSync("inflight/w", "1");
  EXPECT_TRUE(loop.runUntil([&] { return seen.size() == 1; }, milliseconds(3000)));
  c.deleteRangeSync("inflight/", prefixEnd("inflight/"));
}

}  // namespace
}  // namespace keel::etcd
