// The etcd client without etcd: key ranges, endpoint checks, and what calls,
// keepers and watchers do when no endpoint answers (ports nobody listens
// on). The tests against real clusters are in tests/cluster.

#include "common/etcd/etcd_client.h"
#include "tests/cluster/etcd_test_util.h"
#include "tools/free_port.h"

#include <gtest/gtest.h>
#include <kj/debug.h>

namespace keel::etcd {
namespace {

using keel::test::KjLoop;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

std::string deadEndpoint() { return "127.0.0.1:" + std::to_string(keel::pickFreePort()); }

TEST(EtcdClient, PrefixEndIsTheFirstKeyPastThePrefix) {
  EXPECT_EQ(prefixEnd("a"), "b");
  EXPECT_EQ(prefixEnd("kv/p/"), "kv/p0");
  EXPECT_EQ(prefixEnd(std::string("a\xff", 2)), "b");
  EXPECT_EQ(prefixEnd(std::string("a\xfe", 2)), std::string("a\xff", 2));
  EXPECT_EQ(prefixEnd(std::string("\xff\xff", 2)), std::string(1, '\0'));  // every key
  EXPECT_EQ(prefixEnd(""), std::string(1, '\0'));
}

TEST(EtcdClient, CompareAndOpHelpers) {
  auto a = Compare::absent("k");
  EXPECT_EQ(a.key, "k");
  EXPECT_EQ(a.target, Compare::Target::Create);
  EXPECT_EQ(a.result, Compare::Result::Equal);
  EXPECT_EQ(a.number, 0);
  auto v = Compare::valueIs("k", "x");
  EXPECT_EQ(v.target, Compare::Target::Value);
  EXPECT_EQ(v.value, "x");
  auto m = Compare::modRevisionIs("k", 42);
  EXPECT_EQ(m.target, Compare::Target::Mod);
  EXPECT_EQ(m.number, 42);
  auto p = Op::put("k", "v", 7);
  EXPECT_EQ(p.kind, Op::Kind::Put);
  EXPECT_EQ(p.lease, 7);
  auto d = Op::del("k", prefixEnd("k"));
  EXPECT_EQ(d.kind, Op::Kind::Delete);
  EXPECT_EQ(d.rangeEnd, "l");
  EXPECT_EQ(Op::get("k").kind, Op::Kind::Range);
}

TEST(EtcdClient, EndpointsAreCheckedUpFront) {
  EXPECT_THROW(Client({}), std::invalid_argument);
  for (const char* bad : {"127.0.0.1", "127.0.0.1:", ":2379", "127.0.0.1:abc", "127.0.0.1:0", "127.0.0.1:70000",
                          "http://127.0.0.1:2379", "::1:2379"}) {
    EXPECT_THROW(Client({bad}), std::invalid_argument) << bad;
  }
  Client c({"127.0.0.1:1", "localhost:2", "[::1]:3"});  // lazy: nothing is dialled
  EXPECT_EQ(c.endpoints().size(), 3u);
  EXPECT_EQ(c.endpoints()[2], "[::1]:3");
}

TEST(EtcdClient, NoAnswerIsAClearErrorAndMovesToTheNextEndpoint) {
  std::string a = deadEndpoint(), b = deadEndpoint();
  Options opts;
  opts.callTimeout = milliseconds(500);
  Client c({a, b}, opts);
  auto t0 = Clock::now();
  try {
    c.txnSync({Compare::absent("k")}, {Op::put("k", "v")}, {});
    FAIL() << "a txn with no etcd went through";
  } catch (const EtcdError& e) {
    EXPECT_EQ(e.grpcCode(), 14);  // UNAVAILABLE
    EXPECT_TRUE(e.unknownOutcome());
    EXPECT_EQ(std::string(e.what()),
              "etcd " + a + ": Txn: unavailable: connection refused [gRPC UNAVAILABLE; outcome unknown]");
  }
  EXPECT_LT(Clock::now() - t0, milliseconds(1000));
  try {
    c.rangeSync("k");
    FAIL() << "a range with no etcd went through";
  } catch (const EtcdError& e) {
    EXPECT_FALSE(e.unknownOutcome());  // reads never have an unknown outcome
    EXPECT_EQ(std::string(e.what()), "etcd " + b + ": Range: unavailable: connection refused [gRPC UNAVAILABLE]");
  }
  EXPECT_THROW(c.putSync("k", "v"), EtcdError);  // back to the first
  EXPECT_THROW(c.grantSync(5), EtcdError);
  EXPECT_THROW(c.revokeSync(1), EtcdError);
  EXPECT_THROW(c.deleteRangeSync("k"), EtcdError);

  // The same through promises; the EtcdError comes back out.
  KjLoop loop;
  try {
    loop.wait(c.txn({Compare::absent("k")}, {Op::put("k", "v")}, {}));
    FAIL() << "a txn with no etcd went through";
  } catch (const kj::Exception& e) {
    auto err = etcdErrorOf(e);
    ASSERT_TRUE(err.has_value()) << e.getDescription().cStr();
    EXPECT_EQ(err->grpcCode(), 14);
    EXPECT_TRUE(err->unknownOutcome());
    EXPECT_EQ(std::string(err->what()), e.getDescription().cStr());
  }
  try {
    loop.wait(c.range("k"));
    FAIL() << "a range with no etcd went through";
  } catch (const kj::Exception& e) {
    auto err = etcdErrorOf(e);
    ASSERT_TRUE(err.has_value()) << e.getDescription().cStr();
    EXPECT_FALSE(err->unknownOutcome());
  }
  EXPECT_FALSE(etcdErrorOf(KJ_EXCEPTION(FAILED, "something else")).has_value());
  EXPECT_FALSE(etcdErrorOf(KJ_EXCEPTION(DISCONNECTED, "etcd x: y [gRPC NOT_A_CODE]")).has_value());
}

TEST(EtcdClient, AKeeperThatCannotRenewReportsTheLossAfterOneTtl) {
  KjLoop loop;
  Client c({deadEndpoint(), deadEndpoint()});
  int lost = 0;
  auto t0 = Clock::now();
  auto keeper = c.keepAlive(Lease{12345, 1}, [&] { ++lost; });
  EXPECT_FALSE(keeper->lost());
  ASSERT_TRUE(loop.runUntil([&] { return lost > 0; }, milliseconds(3000)));
  auto after = Clock::now() - t0;
  EXPECT_GE(after, milliseconds(950));
  EXPECT_LT(after, milliseconds(1500));
  EXPECT_TRUE(keeper->lost());
  loop.runFor(milliseconds(200));
  EXPECT_EQ(lost, 1);
}

TEST(EtcdClient, DestroyedKeepersAndWatchersStopPromptlyAndStaySilent) {
  KjLoop loop;
  Client c({deadEndpoint()});
  bool called = false;
  auto keeper = c.keepAlive(Lease{1, 1}, [&] { called = true; });
  auto watcher = c.watch("k", "", 0, [&](std::vector<Event>) { called = true; }, [&](std::string) { called = true; });
  loop.runFor(milliseconds(100));
  auto t0 = Clock::now();
  keeper.reset();
  watcher.reset();
  EXPECT_LT(Clock::now() - t0, milliseconds(300));
  loop.runFor(milliseconds(1500));  // past the lease's TTL
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace keel::etcd
