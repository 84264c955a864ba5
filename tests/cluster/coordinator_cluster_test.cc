// The coordinator cluster end to end: a 3-member etcd on loopback, two
// coordinators (node ids 1 and 2) sharing it, two ledger agents. Each test
// kills a coordinator at one step of an interaction and checks that the
// survivor finished its work as etcd's decision says, within a lease TTL
// and a few seconds, and that a returning coordinator contradicts nothing.

#include <sys/wait.h>

#include <csignal>
#include <fstream>
#include <sstream>

#include "common/etcd/etcd_client.h"
#include "tests/integration/cluster_fixture.h"
#include "tools/chaos/fault_proxy.h"
#include "tools/etcd_cluster.h"

namespace keel::test {
namespace {

constexpr int kLeaseTtlS = 2;

class CoordinatorClusterTest : public ClusterTest {
 public:
  static void SetUpTestSuite() {
    etcd_ = new EtcdCluster(EtcdClusterOptions{});
    etcd_->start();
  }
  static void TearDownTestSuite() {
    delete etcd_;
    etcd_ = nullptr;
  }

 protected:
  ClusterOptions clusterOptions() override {
    auto o = ClusterTest::clusterOptions();
    o.coordinators = 2;
    // A prefix per test: tests share the etcd cluster, never its keys.
    prefix_ = "/keel-test-" + std::to_string(::getpid()) + "-" + std::to_string(++counter_);
    o.clusterToml = clusterSection(*etcd_, prefix_, kLeaseTtlS);
    return o;
  }

  void SetUp() override {
    ClusterTest::SetUp();
    etcdClient_ = std::make_unique<etcd::Client>(etcd_->endpoints());
    open("bank-a", "alice", 1000);
    open("bank-b", "bob", 0);
  }

  void TearDown() override {
    etcdClient_.reset();
    ClusterTest::TearDown();
  }

  KeelClient& via(int i) {
    auto& c = clients_[i];
    if (!c) c = KeelClient::connect(io_, cluster_->coordinatorAddress(i)).wait(io_.waitScope);
    return *c;
  }

  // Keys under the test's prefix starting with `sub` ("/decisions/1/").
  std::vector<etcd::KeyValue> keys(const std::string& sub) {
    auto p = prefix_ + sub;
    return etcdClient_->rangeSync(p, etcd::prefixEnd(p)).kvs;
  }

  std::size_t countInLog(int coordinator, const std::string& needle) {
    std::ifstream f(cluster_->coordinatorLog(coordinator));
    std::string line;
    std::size_t n = 0;
    while (std::getline(f, line)) n += line.find(needle) != std::string::npos;
    return n;
  }

  // Coordinator 0 (node 1) restarted with `failpoint`, a transfer sent to
  // it, and the process gone (the failpoint crashed it).
  void crashNode1During(const std::string& failpoint) {
    clients_[0] = nullptr;
    client_ = nullptr;
    cluster_->stopCoordinator(0);
    cluster_->startCoordinator(failpoint, 0);
    EXPECT_ANY_THROW(via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 10)).wait(io_.waitScope));
    clients_[0] = nullptr;
    ASSERT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(5), 0));
    crashedAt_ = std::chrono::steady_clock::now();
  }

  // alice -> bob with a fresh request id, as a client that retries sends it.
  static SubmitRequest transferRequest(std::int64_t amount) {
    SubmitRequest req;
    req.ops = transferOps("bank-a:alice", "bank-b:bob", amount);
    req.requestId = newRequestId();
    req.requestTimeUs = wallMicros();
    return req;
  }

  // Waits until no branch is unfinished at either agent.
  bool settled(std::chrono::milliseconds timeout) {
    return eventually([&] { return unfinishedAt("bank-a").empty() && unfinishedAt("bank-b").empty(); }, timeout);
  }

  static EtcdCluster* etcd_;
  static int counter_;
  std::string prefix_;
  std::unique_ptr<etcd::Client> etcdClient_;
  std::map<int, kj::Own<KeelClient>> clients_;
  std::chrono::steady_clock::time_point crashedAt_;
};

EtcdCluster* CoordinatorClusterTest::etcd_ = nullptr;
int CoordinatorClusterTest::counter_ = 0;

TEST_F(CoordinatorClusterTest, EveryCoordinatorServesAndDecisionKeysGoOnceFinished) {
  for (int i = 0; i < 2; ++i) {
    for (int k = 0; k < 5; ++k) {
      auto o = via(i).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
      ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
      EXPECT_EQ(seqNode(o.seq), i + 1) << "coordinator " << i << " hands out seqs of its own node id";
    }
  }
  ASSERT_TRUE(settled(std::chrono::seconds(10)));  // phase 2 runs after the answer
  EXPECT_EQ(account("bank-a", "alice"), bal(990, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(10, 0));
  // Both nodes are members, each with its epoch.
  EXPECT_EQ(keys("/members/").size(), 2u);
  // Every decision key is deleted once its branches acknowledged.
  EXPECT_TRUE(eventually([&] { return keys("/decisions/").empty(); }))
      << keys("/decisions/").size() << " decision keys left";
}

TEST_F(CoordinatorClusterTest, AnyMemberAnswersAQueryOfAnotherNodesSeq) {
  auto o = via(1).submit(transferOps("bank-a:alice", "bank-b:bob", 3)).wait(io_.waitScope);
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_EQ(seqNode(o.seq), 2);
  std::optional<QueryResult> q;
  ASSERT_TRUE(eventually([&] {
    q = via(0).query(o.seq).wait(io_.waitScope);  // asked of node 1, answered by node 2's WAL
    return q && q->interaction.finished();
  }));
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::Committed);
  EXPECT_EQ(q->interaction.recoveredBy, "");
}

TEST_F(CoordinatorClusterTest, ACoordinatorStartsWhileTheFirstEtcdMemberItKnowsIsDown) {
  // keel-chaos --cluster found it: the start-up's first call went to the
  // dead member, failed, and the start was given up (exit 1).
  clients_[0] = nullptr;
  client_ = nullptr;
  cluster_->stopCoordinator(0);
  etcd_->kill9(0);
  cluster_->startCoordinator("", 0);
  EXPECT_GE(countInLog(0, "trying again"), 1u) << "the dead member was never asked: the test tests nothing";
  auto o = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
  EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  etcd_->restart(0);
}

TEST_F(CoordinatorClusterTest, ACleanStopGivesTheNodeIdBackAtOnce) {
  clients_[0] = nullptr;
  cluster_->stopCoordinator(0);
  EXPECT_GE(countInLog(0, "left the cluster (lease revoked)"), 1u);
  EXPECT_TRUE(keys("/members/1").empty()) << "the member key outlived a clean stop";
  cluster_->startCoordinator("", 0);
  EXPECT_EQ(countInLog(0, "is still held"), 0u) << "the restart waited for a lease that should be gone";
  auto o = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
  EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
}

TEST_F(CoordinatorClusterTest, SecondCoordinatorWithTheSameNodeIdIsRefused) {
  // A copy of node 1's config with its own data directory and port.
  std::ifstream in(dir_ + "/coordinator.toml");
  std::stringstream cfg;
  cfg << in.rdbuf();
  std::string text = cfg.str();
  auto at = text.find("/coordinator\"");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 13, "/twin\"");
  std::ofstream(dir_ + "/twin.toml") << text;
  auto started = std::chrono::steady_clock::now();
  auto r = run(binDir() + "/keel-coordinator --config " + dir_ + "/twin.toml --init --listen 127.0.0.1:0");
  auto took = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(r.exitCode, 3) << r.output;
  EXPECT_NE(r.output.find("node id 1 is held by a live coordinator"), std::string::npos) << r.output;
  EXPECT_LT(took, std::chrono::seconds(kLeaseTtlS + 6)) << "refused only after waiting out one lease";
  // The live node 1 was not disturbed: its epoch is unchanged and it serves.
  auto o = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
  EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
}

// A cluster member whose disk is lost is restored from a backup made under
// load (40 transfers in flight through it; issue 13): etcd and the agents know what came after the backup, so
// no seq is issued twice and no acknowledged commit is undone, while the
// other member kept serving meanwhile.
TEST_F(CoordinatorClusterTest, MemberRestoredFromABackupReissuesNoSeqAndUndoesNoCommit) {
  std::vector<std::uint64_t> committed;
  auto transfer = [&](int via_) {
    auto o = via(via_).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
    ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
    committed.push_back(o.seq);
  };
  for (int i = 0; i < 5; ++i) transfer(0);
  // The backup runs while 40 transfers are on their way through node 1.
  kj::Vector<kj::Promise<SubmitOutcome>> inFlight;
  for (int i = 0; i < 40; ++i) inFlight.add(via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)));
  io_.waitScope.poll();
  const std::string backup = dir_ + "/backup-node-1";
  auto b = run("timeout 30 " + binDir() + "/keelctl -c " + cluster_->coordinatorAddress(0) + " backup --to " + backup);
  ASSERT_EQ(b.exitCode, 0) << b.output;
  for (auto& o : kj::joinPromises(inFlight.releaseAsArray()).wait(io_.waitScope)) {
    ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
    committed.push_back(o.seq);
  }
  // After the backup: node 1's work the backup never sees.
  std::uint64_t lastOfNode1 = 0;
  for (int i = 0; i < 15; ++i) {
    transfer(0);
    lastOfNode1 = std::max(lastOfNode1, committed.back());
  }
  clients_[0] = nullptr;
  client_ = nullptr;
  cluster_->killCoordinator(SIGKILL, 0);
  ASSERT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(5), 0));
  std::filesystem::remove_all(dir_ + "/coordinator");
  for (int i = 0; i < 5; ++i) transfer(1);  // the other member serves on

  auto r = run("timeout 60 " + binDir() + "/keel-coordinator --config " + dir_ + "/coordinator.toml --restore-from " +
               backup);
  ASSERT_EQ(r.exitCode, 0) << r.output;
  cluster_->startCoordinator("", 0);
  // No seq reissued: node 1's next seq is above every one it answered.
  auto after = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
  ASSERT_EQ(after.outcome, ClientOutcome::Committed) << after.reason;
  EXPECT_EQ(seqNode(after.seq), 1u);
  EXPECT_GT(after.seq, lastOfNode1) << "a seq at or below one answered before the loss";
  committed.push_back(after.seq);
  // No acknowledged commit undone, whichever member is asked.
  for (std::uint64_t seq : committed) {
    for (int m : {0, 1}) {
      auto q = via(m).query(seq).wait(io_.waitScope);
      ASSERT_TRUE(q) << "seq " << seqText(seq) << " unknown to member " << m;
      EXPECT_EQ(q->interaction.decision, InteractionRecord::Decision::Commit) << seqText(seq) << " via " << m;
    }
  }
  ASSERT_TRUE(settled(std::chrono::seconds(10)));
  auto n = std::int64_t(committed.size());
  EXPECT_EQ(account("bank-a", "alice"), bal(1000 - n, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(n, 0));
}

TEST_F(CoordinatorClusterTest, OwnerKilledAfterTheDecisionTheSurvivorCommits) {
  crashNode1During("coord.after_decision_durable=crash");
  ASSERT_TRUE(settled(std::chrono::seconds(kLeaseTtlS + 8))) << "the survivor did not finish node 1's work";
  auto took = std::chrono::steady_clock::now() - crashedAt_;
  EXPECT_EQ(account("bank-a", "alice"), bal(990, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(10, 0));
  EXPECT_GE(countInLog(1, "takeover of node 1"), 1u);
  // The dead node's interaction can still be looked up on the survivor:
  // from etcd's decision while its own coordinator is down.
  auto d = keys("/decisions/1/");
  ASSERT_EQ(d.size(), 1u);
  std::uint64_t seq = std::stoull(d[0].key.substr(d[0].key.rfind('/') + 1));
  auto q = via(1).query(seq).wait(io_.waitScope);
  ASSERT_TRUE(q) << "seq " << seq << " not found through node 2";
  EXPECT_EQ(q->interaction.decision, InteractionRecord::Decision::Commit);
  EXPECT_EQ(q->interaction.recoveredBy, "etcd");
  EXPECT_EQ(q->interaction.branches.size(), 2u);
  std::cerr << "takeover finished " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
            << " ms after the kill (lease TTL " << kLeaseTtlS << " s)\n";
}

TEST_F(CoordinatorClusterTest, OwnerKilledDuringPhaseTwoTheSurvivorFinishesIt) {
  clients_[0] = nullptr;
  cluster_->stopCoordinator(0);
  cluster_->startCoordinator("coord.before_phase2=crash", 0);
  // The answer ("committed") leaves before phase 2: it may or may not
  // arrive before the crash; either way the transfer must end committed.
  auto o = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 10)).then(
      [](SubmitOutcome o) { return kj::Maybe<SubmitOutcome>(o); },
      [](kj::Exception&&) { return kj::Maybe<SubmitOutcome>(nullptr); });
  auto answer = o.wait(io_.waitScope);
  KJ_IF_MAYBE(a, answer) { EXPECT_EQ(a->outcome, ClientOutcome::Committed) << a->reason; }
  clients_[0] = nullptr;
  ASSERT_TRUE(cluster_->waitCoordinatorExit(std::chrono::seconds(5), 0));
  ASSERT_TRUE(settled(std::chrono::seconds(kLeaseTtlS + 8))) << "the survivor did not finish node 1's phase 2";
  EXPECT_EQ(account("bank-a", "alice"), bal(990, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(10, 0));
  EXPECT_GE(countInLog(1, "takeover of node 1"), 1u);
}

TEST_F(CoordinatorClusterTest, OwnerKilledBeforeTheDecisionTheSurvivorRollsBack) {
  crashNode1During("coord.after_votes=crash");
  ASSERT_TRUE(settled(std::chrono::seconds(kLeaseTtlS + 8))) << "the survivor did not finish node 1's work";
  EXPECT_EQ(account("bank-a", "alice"), bal(1000, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(0, 0));
  // The survivor wrote ABORT for it (create-if-absent), by node 2.
  auto d = keys("/decisions/1/");
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].value.rfind("abort by=2", 0), 0u) << d[0].value;
}

TEST_F(CoordinatorClusterTest, ReturningOwnerFollowsWhatTheSurvivorDid) {
  crashNode1During("coord.after_decision_durable=crash");
  ASSERT_TRUE(settled(std::chrono::seconds(kLeaseTtlS + 8)));
  cluster_->startCoordinator("", 0);
  // Its WAL does not know the interaction (the local COMMIT record is lazy
  // and the crash came first), etcd does: reconciled, then the key goes.
  EXPECT_TRUE(eventually([&] { return keys("/decisions/1/").empty(); }, std::chrono::seconds(10)));
  auto info = via(0).info().wait(io_.waitScope);
  EXPECT_EQ(info.unfinished, 0u);
  EXPECT_EQ(account("bank-a", "alice"), bal(990, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(10, 0));
  auto o = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
  EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  EXPECT_GT(o.seq, makeSeq(1, 65536)) << "a new incarnation's seqs start above the last one's reservation";
}

TEST_F(CoordinatorClusterTest, ReturningOwnerDropsAnAbortItNeverRecordedAndServes) {
  // An ABORT of node 1 for a seq of an earlier incarnation that its WAL never
  // recorded (a survivor settled a branch nobody had decided): the returning
  // node drops the key during its start-up, before it serves (that once
  // crashed it: the delete was timed on a loop it did not run yet).
  clients_[0] = nullptr;
  client_ = nullptr;
  cluster_->stopCoordinator(0);
  char digits[24];
  std::snprintf(digits, sizeof digits, "%020llu", static_cast<unsigned long long>(makeSeq(1, 42)));
  etcdClient_->putSync(prefix_ + "/decisions/1/" + digits, "abort by=2 epoch=1");
  ASSERT_EQ(keys("/decisions/1/").size(), 1u);
  cluster_->startCoordinator("", 0);
  EXPECT_TRUE(eventually([&] { return keys("/decisions/1/").empty(); })) << "the ABORT key was kept";
  // ... and says so in its log: the only trace of that interaction here.
  EXPECT_EQ(countInLog(0, "seq 1:42 was aborted in etcd by node 2")
, 1u);
  auto o = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
  EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  EXPECT_TRUE(cluster_->coordinatorRunning(0));
}

TEST_F(CoordinatorClusterTest, ReturningOwnerStartsAfterTheSurvivorAborted) {
  // The survivor's ABORT is a key of node 1 that node 1's WAL knows nothing
  // of: the returning node drops it during start-up (before it serves).
  crashNode1During("coord.after_votes=crash");
  ASSERT_TRUE(settled(std::chrono::seconds(kLeaseTtlS + 8)));
  ASSERT_EQ(keys("/decisions/1/").size(), 1u);
  cluster_->startCoordinator("", 0);
  EXPECT_TRUE(cluster_->coordinatorRunning(0));
  EXPECT_TRUE(eventually([&] { return keys("/decisions/1/").empty(); }, std::chrono::seconds(10)));
  auto o = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
  EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  EXPECT_TRUE(settled(std::chrono::seconds(10)));  // phase 2 runs after the answer
  EXPECT_EQ(account("bank-a", "alice"), bal(999, 0));
}

// Node 1 dies after its COMMIT is in etcd, with no survivor to finish it,
// and comes back with a config that lacks bank-b: its WAL has no record of
// the interaction (the local COMMIT record is lazy), etcd's COMMIT names
// bank-b, and nothing could ever finish it. The start is refused (exit 2)
// naming bank-b and the seq, before the join: etcd's epoch of node 1 and the
// decision are unchanged and both branches still wait. With bank-b back the
// transfer commits. (Before, the COMMIT was logged, skipped and left.)
TEST_F(CoordinatorClusterTest, ReturningOwnerMissingAParticipantOfAnEtcdCommitIsRefusedChangingNothing) {
  clients_[1] = nullptr;
  cluster_->stopCoordinator(1);  // no survivor
  crashNode1During("coord.after_decision_durable=crash");
  auto d = keys("/decisions/1/");
  ASSERT_EQ(d.size(), 1u);
  ASSERT_EQ(d[0].value.rfind("commit ", 0), 0u) << d[0].value;
  std::uint64_t seq = std::stoull(d[0].key.substr(d[0].key.rfind('/') + 1));
  auto epochBefore = keys("/nodes/1/epoch");
  ASSERT_EQ(epochBefore.size(), 1u);
  ASSERT_EQ(unfinishedAt("bank-b").size(), 1u);
  auto without = configWithout("coordinator.toml", "bank-b");
  ASSERT_FALSE(without.empty()) << "no bank-b line in the config";
  // (Bounded: a coordinator that started anyway would serve until killed.)
  auto r = run("timeout 20 " + binDir() + "/keel-coordinator --config " + without);
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_NE(r.output.find("etcd's COMMIT decisions of this node hold"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("'bank-b' (1 unfinished: " + seqText(seq) + ")"), std::string::npos) << r.output;
  // Nothing changed: not joined (the epoch in etcd is the same revision),
  // the decision kept, the branches still prepared.
  auto epochAfter = keys("/nodes/1/epoch");
  ASSERT_EQ(epochAfter.size(), 1u);
  EXPECT_EQ(epochAfter[0].value, epochBefore[0].value);
  EXPECT_EQ(epochAfter[0].modRevision, epochBefore[0].modRevision);
  EXPECT_EQ(keys("/decisions/1/").size(), 1u);
  EXPECT_EQ(unfinishedAt("bank-a").size(), 1u);
  EXPECT_EQ(unfinishedAt("bank-b").size(), 1u);
  // bank-b back in the config: the COMMIT is redriven.
  cluster_->startCoordinator("", 0);
  ASSERT_TRUE(settled(std::chrono::seconds(10)));
  EXPECT_EQ(account("bank-a", "alice"), bal(990, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(10, 0));
  EXPECT_TRUE(eventually([&] { return keys("/decisions/1/").empty(); }, std::chrono::seconds(10)));
}

TEST_F(CoordinatorClusterTest, RetryThroughAnotherCoordinatorCommitsOnce) {
  auto req = transferRequest(7);
  auto first = via(0).submit(req).wait(io_.waitScope);
  ASSERT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
  // The same request through node 2, as a client that lost the answer and
  // failed over would send it.
  auto again = via(1).submit(req).wait(io_.waitScope);
  EXPECT_EQ(again.outcome, ClientOutcome::Committed) << again.reason;
  EXPECT_EQ(again.seq, first.seq) << "the retry must name the interaction that committed";
  EXPECT_TRUE(again.replayed);
  EXPECT_TRUE(settled(std::chrono::seconds(10)));
  EXPECT_EQ(account("bank-a", "alice"), bal(993, 0)) << "the money moved twice";
  EXPECT_EQ(account("bank-b", "bob"), bal(7, 0));
}

TEST_F(CoordinatorClusterTest, RetryThatCannotPrepareAnyMoreStillHearsTheCommit) {
  // The first try moves all of alice's money; its retry through node 2 is
  // refused by bank-a (no funds left) and rolled back there, yet what the
  // client hears is the first try's commit: the id's fate is in etcd.
  auto req = transferRequest(1000);
  auto first = via(0).submit(req).wait(io_.waitScope);
  ASSERT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
  ASSERT_TRUE(settled(std::chrono::seconds(10)));
  auto again = via(1).submit(req).wait(io_.waitScope);
  EXPECT_EQ(again.outcome, ClientOutcome::Committed) << again.reason;
  EXPECT_EQ(again.seq, first.seq);
  EXPECT_TRUE(settled(std::chrono::seconds(10)));
  EXPECT_EQ(account("bank-a", "alice"), bal(0, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(1000, 0));
}

TEST_F(CoordinatorClusterTest, ReadOnlyRequestRetriedThroughAnotherCoordinatorRunsOnce) {
  // One participant and two: either way its request id is claimed in etcd.
  for (std::vector<Op> ops : {std::vector<Op>{Op{"bank-a", OpKind::ReadBalance, "alice", 0}},
                              std::vector<Op>{Op{"bank-a", OpKind::ReadBalance, "alice", 0},
                                              Op{"bank-b", OpKind::ReadBalance, "bob", 0}}}) {
    SubmitRequest req;
    req.ops = ops;
    req.requestId = newRequestId();
    req.requestTimeUs = wallMicros();
    auto first = via(0).submit(req).wait(io_.waitScope);
    ASSERT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
    ASSERT_EQ(first.results.size(), ops.size());
    EXPECT_EQ(first.results[0].balance, 1000);
    auto again = via(1).submit(req).wait(io_.waitScope);
    EXPECT_EQ(again.outcome, ClientOutcome::Committed) << again.reason;
    EXPECT_EQ(again.seq, first.seq) << "the read-only request ran again through node 2";
    EXPECT_TRUE(again.replayed);
  }
  EXPECT_TRUE(eventually([&] { return keys("/decisions/").empty(); })) << "a read-only decision key was left";
}

TEST_F(CoordinatorClusterTest, RequestRolledBackStaysRolledBackWhereverItIsRetried) {
  auto req = transferRequest(1500);
  auto first = via(0).submit(req).wait(io_.waitScope);
  ASSERT_EQ(first.outcome, ClientOutcome::RolledBack) << first.reason;
  // Now it could commit: alice got the money meanwhile.
  open("bank-a", "carol", 0);
  auto top = via(0).submit({Op{"bank-a", OpKind::Credit, "alice", 1000}}).wait(io_.waitScope);
  ASSERT_EQ(top.outcome, ClientOutcome::Committed) << top.reason;
  auto again = via(1).submit(req).wait(io_.waitScope);
  EXPECT_EQ(again.outcome, ClientOutcome::RolledBack)
      << "a request id answered 'rolled back' must never commit later: " << again.reason;
  EXPECT_TRUE(settled(std::chrono::seconds(10)));
  EXPECT_EQ(account("bank-a", "alice"), bal(2000, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(0, 0));
}

TEST_F(CoordinatorClusterTest, EtcdLeaderKilledUnderLoadLosesNoDecision) {
  // 1000 transfers with request ids through both coordinators; the etcd
  // leader is killed after the first 300 answers. Every answer must be
  // the truth and no coordinator may stop (a leader change extends leases).
  constexpr int kTransfers = 1000;
  RetryOptions ro;
  ro.callTimeout = 5 * kj::SECONDS;
  ro.retryFor = 30 * kj::SECONDS;
  int answered = 0, leader = -1;
  kj::Vector<kj::Promise<RetriedOutcome>> outs;
  for (int k = 0; k < kTransfers; ++k) {
    std::vector<std::string> order{cluster_->coordinatorAddress(k % 2), cluster_->coordinatorAddress((k + 1) % 2)};
    outs.add(submitWithRetry(io_, order, transferRequest(1), ro).then([&](RetriedOutcome r) {
      if (++answered == 300) {
        leader = etcd_->leaderIndex();
        if (leader >= 0) etcd_->kill9(std::size_t(leader));
      }
      return r;
    }));
  }
  auto results = kj::joinPromises(outs.releaseAsArray()).wait(io_.waitScope);
  ASSERT_GE(leader, 0) << "no etcd leader was found to kill";
  int committed = 0, rolledBack = 0;
  for (auto& r : results) {
    ASSERT_TRUE(r.answered) << r.lastError;
    if (r.outcome.outcome == ClientOutcome::Committed) ++committed;
    if (r.outcome.outcome == ClientOutcome::RolledBack && ++rolledBack <= 3) {
      std::cerr << "rolled back: " << r.outcome.reason << " (attempts " << r.attempts << ")\n";
    }
  }
  EXPECT_EQ(committed + rolledBack, kTransfers);
  EXPECT_GT(committed, kTransfers / 2);
  EXPECT_TRUE(cluster_->coordinatorRunning(0) && cluster_->coordinatorRunning(1));
  ASSERT_TRUE(settled(std::chrono::seconds(15)));
  EXPECT_EQ(account("bank-a", "alice"), bal(1000 - committed, 0)) << committed << " answered committed";
  EXPECT_EQ(account("bank-b", "bob"), bal(committed, 0));
  etcd_->restart(std::size_t(leader));
  std::uint64_t txns = 0, decisions = 0;
  for (int i = 0; i < 2; ++i) {
    auto info = via(i).info().wait(io_.waitScope);
    EXPECT_TRUE(info.clustered);
    txns += info.etcdTxns;
    decisions += info.etcdDecisions;
  }
  EXPECT_GE(decisions, std::uint64_t(committed)) << "every COMMIT is a decision in etcd";
  std::cerr << committed << " committed, " << rolledBack << " rolled back across the leader kill; " << txns
            << " etcd txns for " << decisions << " decisions\n";
}

// Node 1 reaches etcd only through fault proxies, the agents directly.
class CutOffFromEtcdTest : public CoordinatorClusterTest {
 protected:
  ClusterOptions clusterOptions() override {
    auto o = CoordinatorClusterTest::clusterOptions();
    std::vector<std::string> proxied;
    for (const auto& ep : etcd_->endpoints()) {
      auto colon = ep.rfind(':');
      proxies_.push_back(std::make_unique<chaos::FaultProxy>(ep.substr(0, colon), std::stoul(ep.substr(colon + 1))));
      proxied.push_back("127.0.0.1:" + std::to_string(proxies_.back()->port()));
    }
    o.clusterTomlFor[0] = clusterSection(proxied, prefix_, kLeaseTtlS);
    return o;
  }
  std::vector<std::unique_ptr<chaos::FaultProxy>> proxies_;
};

TEST_F(CutOffFromEtcdTest, ItStopsDecidingAndNothingItDecidedIsContradicted) {
  // Load through node 1; then etcd vanishes for it (the agents do not).
  std::vector<kj::Promise<SubmitOutcome>> before;
  for (int k = 0; k < 5; ++k) {
    auto o = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
    ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  }
  for (auto& p : proxies_) p->setBlackhole(true);
  auto cutAt = std::chrono::steady_clock::now();
  kj::Vector<kj::Promise<kj::Maybe<SubmitOutcome>>> during;
  for (int k = 0; k < 20; ++k) {
    during.add(via(0)
                   .submit(transferOps("bank-a:alice", "bank-b:bob", 1))
                   .then([](SubmitOutcome o) -> kj::Maybe<SubmitOutcome> { return o; },
                         [](kj::Exception&&) -> kj::Maybe<SubmitOutcome> { return nullptr; }));
  }
  auto answers = kj::joinPromises(during.releaseAsArray()).wait(io_.waitScope);
  int committed = 0, told = 0;
  for (auto& a : answers) {
    KJ_IF_MAYBE(o, a) {
      ++told;
      if (o->outcome == ClientOutcome::Committed) ++committed;
    }
  }
  EXPECT_EQ(committed, 0) << "a COMMIT cannot be decided without etcd";
  // Fail-stop once its lease could not be renewed for a TTL.
  int status = cluster_->coordinatorExitStatus(std::chrono::seconds(kLeaseTtlS + 5), 0);
  ASSERT_NE(status, -1) << "node 1 kept running without etcd";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << "status " << status;
  EXPECT_LT(std::chrono::steady_clock::now() - cutAt, std::chrono::seconds(kLeaseTtlS + 3));
  EXPECT_GE(countInLog(0, "membership lease lost"), 1u);
  // The survivor finishes (rolls back) what node 1 had in flight.
  ASSERT_TRUE(settled(std::chrono::seconds(kLeaseTtlS + 10)));
  EXPECT_EQ(account("bank-a", "alice"), bal(995, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(5, 0));
  // Back with etcd: node 1 rejoins and serves.
  for (auto& p : proxies_) p->setBlackhole(false);
  clients_[0] = nullptr;
  cluster_->startCoordinator("", 0);
  auto o = via(0).submit(transferOps("bank-a:alice", "bank-b:bob", 1)).wait(io_.waitScope);
  EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  std::cerr << told << " of 20 sent during the cut were answered (none committed)\n";
}

// Node 1 gathers decisions for 400 ms ([cluster] decision_gather_ms);
// node 2 sends them as they come.
class GatheredDecisionsTest : public CoordinatorClusterTest {
 protected:
  ClusterOptions clusterOptions() override {
    auto o = CoordinatorClusterTest::clusterOptions();
    o.clusterTomlFor[0] = o.clusterToml + "decision_gather_ms = 400\n";
    return o;
  }
};

TEST_F(GatheredDecisionsTest, DecisionsSpreadOverTheWindowGoInOneTxn) {
  // Ten transfers to each node, one every 20 ms (200 ms in all), none
  // waiting for another's answer.
  auto spread = [&](int node) {
    auto before = via(node).info().wait(io_.waitScope).etcdTxns;
    kj::Vector<kj::Promise<SubmitOutcome>> outs;
    for (int k = 0; k < 10; ++k) {
      outs.add(io_.provider->getTimer().afterDelay(k * 20 * kj::MILLISECONDS).then([this, node]() {
        return via(node).submit(transferOps("bank-a:alice", "bank-b:bob", 1));
      }));
    }
    for (auto& o : kj::joinPromises(outs.releaseAsArray()).wait(io_.waitScope)) {
      EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
    }
    return via(node).info().wait(io_.waitScope).etcdTxns - before;
  };
  via(0);
  via(1);
  auto gathered = spread(0), asTheyCome = spread(1);
  // Node 1: the first decision after a quiet spell at once, the other nine
  // together when the window ends; the batched deletes of finished
  // interactions' keys (every 250 ms) add one or two.
  EXPECT_LE(gathered, 4u);
  EXPECT_GE(gathered, 2u);
  std::cerr << "etcd txns for 10 transfers over 200 ms: " << gathered << " gathering 400 ms, " << asTheyCome
            << " without\n";
  ASSERT_TRUE(settled(std::chrono::seconds(10)));
  EXPECT_EQ(account("bank-a", "alice"), bal(980, 0));
  EXPECT_EQ(account("bank-b", "bob"), bal(20, 0));
}

}  // namespace
}  // namespace keel::test
