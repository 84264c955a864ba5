// The etcd client while members die: watches that move to another member,
// calls that fail once and then go elsewhere, no quorum, and a killed
// leader under a loop of create-if-absent transactions. Each test runs its
// own 3-member cluster and kills members of it.

#include "common/etcd/etcd_client.h"
#include "tests/cluster/etcd_test_util.h"
#include "tools/etcd_cluster.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <thread>

namespace keel::etcd {
namespace {

using keel::test::EtcdCluster;
using keel::test::KjLoop;
using keel::test::msSince;
using keel::test::numbered;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// Creates key=value, repeating the create-if-absent on errors (an election
// may be under way) until it is known to be there: exactly one write, so
// exactly one watch event, whatever failed on the way.
void createSurely(Client& c, const std::string& key, const std::string& value) {
  for (int attempt = 0;; ++attempt) {
    try {
      auto r = c.txnSync({Compare::absent(key)}, {Op::put(key, value)}, {Op::get(key)});
      if (r.succeeded) return;
      if (r.responses.at(0).kvs.at(0).value == value) return;  // an earlier attempt was applied
      throw std::runtime_error(key + " holds another value");
    } catch (const EtcdError& e) {
      if (attempt >= 50) throw;
      std::this_thread::sleep_for(milliseconds(100));
    }
  }
}

TEST(EtcdFailover, WatchContinuesWithoutLossAcrossAKilledAndRestartedMember) {
  EtcdCluster cluster;
  cluster.start();
  KjLoop loop;
  Client c(cluster.endpoints());  // the watch goes to member 0
  Client writer({cluster.endpoint(1), cluster.endpoint(2)});
  std::vector<Event> seen;
  std::vector<std::string> errors;
  auto w = c.watch(
      "wk/", prefixEnd("wk/"), 0, [&](std::vector<Event> evs) { seen.insert(seen.end(), evs.begin(), evs.end()); },
      [&](std::string e) { errors.push_back(std::move(e)); });
  loop.runFor(milliseconds(300));

  int n = 0;
  for (; n < 5; ++n) createSurely(writer, numbered("wk/", n), std::to_string(n));
  ASSERT_TRUE(loop.runUntil([&] { return seen.size() == 5; }, milliseconds(3000)));

  cluster.kill9(0);
  for (; n < 15; ++n) createSurely(writer, numbered("wk/", n), std::to_string(n));
  EXPECT_TRUE(loop.runUntil([&] { return seen.size() >= 15; }, milliseconds(8000)))
      << "the watch did not move on from the killed member: " << seen.size() << " events";

  cluster.restart(0);
  for (; n < 20; ++n) createSurely(writer, numbered("wk/", n), std::to_string(n));
  ASSERT_TRUE(loop.runUntil([&] { return seen.size() >= 20; }, milliseconds(8000))) << seen.size() << " events";
  loop.runFor(milliseconds(200));

  EXPECT_TRUE(errors.empty()) << errors.front();
  ASSERT_EQ(seen.size(), 20u);
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(seen[std::size_t(i)].type, EventType::Put);
    EXPECT_EQ(seen[std::size_t(i)].kv.key, numbered("wk/", i));
    EXPECT_EQ(seen[std::size_t(i)].kv.value, std::to_string(i));
    if (i > 0) {
      EXPECT_GT(seen[std::size_t(i)].kv.modRevision, seen[std::size_t(i) - 1].kv.modRevision);
    }
  }
}

TEST(EtcdFailover, AKilledMemberCostsAtMostOneFailedCallAndNoQuorumFailsWithinTheDeadline) {
  EtcdCluster cluster;
  cluster.start();
  int leader = cluster.leaderIndex();
  ASSERT_GE(leader, 0);
  // Endpoint 0 of the clients is a follower: killing it needs no election,
  // so what is measured is the client's failover alone.
  std::size_t follower = std::size_t(leader + 1) % 3, other = std::size_t(leader + 2) % 3;
  std::vector<std::string> eps{cluster.endpoint(follower), cluster.endpoint(std::size_t(leader)),
                               cluster.endpoint(other)};
  Options opts;
  opts.callTimeout = milliseconds(1000);
  Client sync(eps, opts);
  Client async(eps, opts);
  KjLoop loop;
  ASSERT_TRUE(sync.txnSync({Compare::absent("fo/warm-sync")}, {Op::put("fo/warm-sync", "x")}, {}).succeeded);
  ASSERT_TRUE(loop.wait(async.txn({Compare::absent("fo/warm-async")}, {Op::put("fo/warm-async", "x")}, {})).succeeded);

  cluster.kill9(follower);
  auto create = [](const std::string& key) {
    return std::tuple{std::vector<Compare>{Compare::absent(key)}, std::vector<Op>{Op::put(key, "x")},
                      std::vector<Op>{}};
  };
  int failed = 0, created = 0;
  for (int i = 0; i < 20; ++i) {
    auto [cmp, ok, ko] = create(numbered("fo/sync/", i));
    try {
      if (sync.txnSync(cmp, ok, ko).succeeded) ++created;
    } catch (const EtcdError& e) {
      ++failed;
      EXPECT_EQ(i, 0) << "a failure after the first: " << e.what();
      EXPECT_TRUE(e.unknownOutcome()) << e.what();  // a write that met UNAVAILABLE
      EXPECT_EQ(e.grpcCode(), 14) << e.what();
      EXPECT_NE(std::string(e.what()).find("etcd " + cluster.endpoint(follower) + ": Txn: unavailable"),
                std::string::npos)
          << e.what();
    }
  }
  EXPECT_LE(failed, 1);
  EXPECT_EQ(created, 20 - failed);
  const int createdSync = created;
  failed = created = 0;
  for (int i = 0; i < 20; ++i) {
    auto [cmp, ok, ko] = create(numbered("fo/async/", i));
    try {
      if (loop.wait(async.txn(cmp, ok, ko)).succeeded) ++created;
    } catch (const kj::Exception& e) {
      ++failed;
      auto err = etcdErrorOf(e);
      ASSERT_TRUE(err.has_value()) << e.getDescription().cStr();
      EXPECT_EQ(i, 0) << "a failure after the first: " << err->what();
      EXPECT_TRUE(err->unknownOutcome()) << err->what();
    }
  }
  EXPECT_LE(failed, 1);
  EXPECT_EQ(created, 20 - failed);
  // The failed calls were refused by a dead member: nothing of theirs is
  // there.
  EXPECT_EQ(sync.rangeSync("fo/", prefixEnd("fo/")).count, 2 + createdSync + created);

  // Two of three gone: no quorum. Every call fails, each within the
  // deadline (plus a margin), with a message that says where and what.
  cluster.kill9(std::size_t(leader));
  for (int i = 0; i < 3; ++i) {
    auto t0 = Clock::now();
    try {
      sync.txnSync({Compare::absent("fo/nq")}, {Op::put("fo/nq", "x")}, {});
      ADD_FAILURE() << "a txn went through without quorum";
    } catch (const EtcdError& e) {
      EXPECT_LT(msSince(t0), 1500) << e.what();
      EXPECT_TRUE(e.unknownOutcome()) << e.what();
      std::string what = e.what();
      EXPECT_EQ(what.rfind("etcd 127.0.0.1:", 0), 0u) << what;
      EXPECT_NE(what.find(": Txn: "), std::string::npos) << what;
      std::printf("no quorum, attempt %d after %lld ms: %s\n", i, msSince(t0), what.c_str());
    }
  }
  for (int i = 0; i < 2; ++i) {
    auto t0 = Clock::now();
    try {
      sync.rangeSync("fo/nq");
      ADD_FAILURE() << "a linearizable read went through without quorum";
    } catch (const EtcdError& e) {
      EXPECT_LT(msSince(t0), 1500) << e.what();
      EXPECT_FALSE(e.unknownOutcome()) << e.what();  // a read changes nothing
    }
  }
  auto t0 = Clock::now();
  try {
    loop.wait(async.txn({Compare::absent("fo/nq")}, {Op::put("fo/nq", "x")}, {}), milliseconds(10000));
    ADD_FAILURE() << "a txn went through without quorum";
  } catch (const kj::Exception& e) {
    EXPECT_LT(msSince(t0), 1500) << e.getDescription().cStr();
    auto err = etcdErrorOf(e);
    ASSERT_TRUE(err.has_value()) << e.getDescription().cStr();
    EXPECT_TRUE(err->unknownOutcome());
  }
}

TEST(EtcdFailover, AHungMemberCostsOneDeadlineAndTheLeaseKeeperMovesOn) {
  EtcdCluster cluster;
  cluster.start();
  int leader = cluster.leaderIndex();
  ASSERT_GE(leader, 0);
  std::size_t follower = std::size_t(leader + 1) % 3, other = std::size_t(leader + 2) % 3;
  Options opts;
  opts.callTimeout = milliseconds(500);
  Client c({cluster.endpoint(follower), cluster.endpoint(std::size_t(leader)), cluster.endpoint(other)}, opts);
  KjLoop loop;
  Lease lease = c.grantSync(2);
  c.putSync("hung/leased", "x", lease.id);
  bool lost = false;
  auto keeper = c.keepAlive(lease, [&] { lost = true; });
  loop.runFor(milliseconds(300));

  cluster.pause(follower);  // SIGSTOP: its connections stay open, nothing answers
  auto t0 = Clock::now();
  try {
    c.txnSync({Compare::absent("hung/k")}, {Op::put("hung/k", "x")}, {});
    ADD_FAILURE() << "a txn on a stopped member went through";
  } catch (const EtcdError& e) {
    EXPECT_EQ(e.grpcCode(), 4) << e.what();  // DEADLINE_EXCEEDED
    EXPECT_TRUE(e.unknownOutcome());
    EXPECT_EQ(std::string(e.what()), "etcd " + cluster.endpoint(follower) +
                                         ": Txn: deadline exceeded after 500 ms [gRPC DEADLINE_EXCEEDED; outcome "
                                         "unknown]");
    EXPECT_LT(msSince(t0), 2000);  // one deadline (500 ms), with room for a busy machine; never a hang
  }
  // The next call goes to another member and through. (A key of its own:
  // the first txn's outcome is unknown, and had the stop reached the
  // member a moment after the request did, "hung/k" would be there.)
  EXPECT_TRUE(c.txnSync({Compare::absent("hung/k2")}, {Op::put("hung/k2", "x")}, {}).succeeded);

  // The keeper's stream was on the stopped member too: it gives up on it
  // within a renewal interval and renews elsewhere before the TTL runs out.
  loop.runFor(milliseconds(4000));
  EXPECT_FALSE(lost);
  EXPECT_FALSE(keeper->lost());
  EXPECT_LT(Clock::now() - keeper->lastRenewed(), milliseconds(2000));  // within the TTL
  EXPECT_EQ(c.rangeSync("hung/leased").kvs.size(), 1u);
  cluster.resume(follower);
}

// Create-if-absent with retries, as the coordinator decides: a key whose
// txn failed is tried again until an answer says whether it is there, and
// a key found there must hold our value (nobody else writes these keys).
struct CreateLoop {
  CreateLoop(Client& client, kj::Timer& t) : c(client), timer(t) {}
  Client& c;
  kj::Timer& timer;
  bool stop = false;
  int next = 0;
  bool afterKill = false;
  int ackedAfterKill = 0;
  std::map<int, std::string> acked;  // key index -> "created" / "found ours"
  std::vector<std::string> wrong;
  std::vector<int> unresolved;
  int failures = 0, unknown = 0;
  std::string lastError;

  static std::string key(int i) { return numbered("chaos/", i); }
  static std::string value(int i) { return "decision-" + std::to_string(i); }

  kj::Promise<void> worker() {
    if (stop) return kj::READY_NOW;
    int i = next++;
    return attempt(i, 0).then([this] { return worker(); });
  }

  kj::Promise<void> attempt(int i, int tries) {
    return c.txn({Compare::absent(key(i))}, {Op::put(key(i), value(i))}, {Op::get(key(i))})
        .then(
            [this, i, tries](TxnResult r) -> kj::Promise<void> {
              if (r.succeeded) {
                acked[i] = "created";
              } else if (tries > 0 && r.responses.size() == 1 && r.responses[0].kvs.size() == 1 &&
                         r.responses[0].kvs[0].value == value(i)) {
                acked[i] = "found ours";  // an attempt whose answer was lost had been applied
              } else {
                wrong.push_back(key(i) + ": compare failed on the first attempt, or another value");
              }
              if (afterKill) ++ackedAfterKill;
              return kj::READY_NOW;
            },
            [this, i, tries](kj::Exception&& e) -> kj::Promise<void> {
              ++failures;
              auto err = etcdErrorOf(e);
              if (!err) {
                wrong.push_back(key(i) + ": not an EtcdError: " + e.getDescription().cStr());
                return kj::READY_NOW;
              }
              if (err->unknownOutcome()) ++unknown;
              lastError = err->what();
              if (tries >= 40) {
                unresolved.push_back(i);
                return kj::READY_NOW;
              }
              return timer.afterDelay(50 * kj::MILLISECONDS).then([this, i, tries] { return attempt(i, tries + 1); });
            });
  }
};

TEST(EtcdFailover, LeaderKilledUnderCreateIfAbsentLoopLosesNoAcknowledgedKey) {
  EtcdCluster cluster;
  cluster.start();
  int leader = cluster.leaderIndex();
  ASSERT_GE(leader, 0);
  KjLoop loop;
  Options opts;
  opts.callTimeout = milliseconds(1000);
  // The leader first: the client's calls are on it when it dies, so some
  // are cut off with their outcome unknown.
  std::vector<std::string> eps{cluster.endpoint(std::size_t(leader))};
  for (std::size_t i = 0; i < cluster.size(); ++i) {
    if (int(i) != leader) eps.push_back(cluster.endpoint(i));
  }
  Client c(eps, opts);
  CreateLoop run(c, loop.timer());
  kj::Vector<kj::Promise<void>> all;
  for (int w = 0; w < 4; ++w) all.add(run.worker());
  Clock::time_point killedAt;
  std::size_t ackedBeforeKill = 0;
  all.add(loop.timer()
              .afterDelay(500 * kj::MILLISECONDS)
              .then([&] {
                ackedBeforeKill = run.acked.size();
                cluster.kill9(std::size_t(leader));
                killedAt = Clock::now();
                run.afterKill = true;
                return loop.timer().afterDelay(2500 * kj::MILLISECONDS);
              })
              .then([&] { run.stop = true; })
              // A plain continuation runs when its result is asked for, and
              // joinPromises asks only once every branch is done: the
              // workers, which wait for this one.
              .eagerlyEvaluate(nullptr));
  try {
    loop.wait(kj::joinPromises(all.releaseAsArray()), milliseconds(20000));
  } catch (const kj::Exception& e) {
    ADD_FAILURE() << "the loop did not end: " << e.getDescription().cStr() << "; stop " << run.stop << " next "
                  << run.next << " acked " << run.acked.size() << " failures " << run.failures << " lastError "
                  << run.lastError;
  }
  std::size_t found = std::size_t(std::count_if(run.acked.begin(), run.acked.end(),
                                                [](auto& a) { return a.second == "found ours"; }));
  std::printf("keys tried %d, acknowledged %zu (%zu before the kill, %d after; %zu found applied by an attempt "
              "whose answer was lost), failed calls %d (%d of unknown outcome), leader was member %d\n",
              run.next, run.acked.size(), ackedBeforeKill, run.ackedAfterKill, found, run.failures, run.unknown,
              leader);

  EXPECT_GT(ackedBeforeKill, 0u);
  EXPECT_GT(run.ackedAfterKill, 0) << "no decision was acknowledged after the leader died";
  for (auto& w : run.wrong) ADD_FAILURE() << w;
  EXPECT_TRUE(run.unresolved.empty()) << run.unresolved.size() << " keys never got an answer";

  // Read back through the survivors: every acknowledged key is there with
  // its value, and nothing else is.
  std::vector<std::string> survivors;
  for (std::size_t i = 0; i < cluster.size(); ++i) {
    if (int(i) != leader) survivors.push_back(cluster.endpoint(i));
  }
  Client reader(survivors);
  RangeResult all_ = reader.rangeSync("chaos/", prefixEnd("chaos/"));
  std::map<std::string, std::string> stored;
  for (auto& kv : all_.kvs) stored[kv.key] = kv.value;
  for (auto& [i, how] : run.acked) {
    auto it = stored.find(CreateLoop::key(i));
    if (it == stored.end()) {
      ADD_FAILURE() << CreateLoop::key(i) << " was acknowledged (" << how << ") but is gone";
    } else {
      EXPECT_EQ(it->second, CreateLoop::value(i));
    }
  }
  for (auto& [k, v] : stored) {
    int i = std::stoi(k.substr(std::string("chaos/").size()));
    EXPECT_LT(i, run.next) << k;
    EXPECT_EQ(v, CreateLoop::value(i)) << k;
  }
  EXPECT_EQ(stored.size(), run.acked.size());
}

}  // namespace
}  // namespace keel::etcd
