// Crash matrix: every failpoint of the table in docs/operations.md, with the
// action `crash`, armed on the process it belongs to (coord.* on the
// coordinator, agent.* on each agent, log.* on all three, once at the first
// hit and once with the crash moved into the load), while clients run
// concurrent cross-agent transfers. The process is armed on a restart after
// the accounts are open, runs until it dies, is started again without the
// failpoint, and once the cluster is quiet the invariants of
// tests/crash/invariants.h must hold.
//
// Each case keeps its data directory (logs of every process included) when
// it fails and prints the path; a passing case removes it unless
// KEEL_CRASH_KEEP is set.

#include <gtest/gtest.h>
#include <kj/async-io.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <thread>

#include "common/client.h"
#include "common/wire.h"
#include "tests/crash/invariants.h"
#include "tools/cluster.h"

namespace keel::crash {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const std::string kCoordinator = "coordinator";
const std::vector<std::string> kAgents = {"bank-a", "bank-b"};

// ------------------------------------------------------------ the failpoint table

std::string readFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Names in the first column of the "## Failpoints" table of
// docs/operations.md, in table order.
std::vector<std::string> documentedFailpoints() {
  std::istringstream doc(readFile(std::string(KEEL_SOURCE_DIR) + "/docs/operations.md"));
  std::vector<std::string> out;
  bool inSection = false;
  std::string line;
  static const std::regex name("`([a-z0-9_]+\\.[a-z0-9_.]+)`");
  while (std::getline(doc, line)) {
    if (line.rfind("## ", 0) == 0) inSection = line.find("Failpoints") != std::string::npos;
    if (!inSection || line.rfind("| `", 0) != 0) continue;
    std::string firstCell = line.substr(1, line.find('|', 1) - 1);
    for (std::sregex_iterator m(firstCell.begin(), firstCell.end(), name), end; m != end; ++m) {
      out.push_back((*m)[1]);
    }
  }
  return out;
}

// Every KEEL_FAILPOINT("...") site in the code under test.
std::set<std::string> failpointsInCode() {
  std::set<std::string> out;
  // KEEL_FAILPOINT("name"), and failpointOnLoop("name"): the postgres
  // agent's sites on its event loop, where a delay waits on the loop's timer.
  static const std::regex site("(?:KEEL_FAILPOINT|failpointOnLoop)\\(\"([^\"]+)\"\\)");
  for (const char* dir : {"coordinator", "participant", "common"}) {
    for (const auto& e : fs::recursive_directory_iterator(std::string(KEEL_SOURCE_DIR) + "/" + dir)) {
      auto ext = e.path().extension();
      if (!e.is_regular_file() || (ext != ".cc" && ext != ".h")) continue;
      std::string text = readFile(e.path().string());
      for (std::sregex_iterator m(text.begin(), text.end(), site), end; m != end; ++m) out.insert((*m)[1]);
    }
  }
  return out;
}

struct CrashCase {
  std::string failpoint;
  std::string process;  // "coordinator", an agent name, or "" when the prefix is not known
  // Hits let through before the crash (the failpoint's "N+" prefix): a
  // log.* point is hit by the start-up's first durable write, so each also
  // runs with the crash moved into the load, where a group holds transfers.
  int skip = 0;
  // Every process without the redo log (redo = false, --no-redo): the
  // default mode's own durability point, the LMDB group commit.
  bool noRedo = false;
  std::string spec() const { return failpoint + "=" + (skip > 0 ? std::to_string(skip) + "+" : "") + "crash"; }
};

// Log points, crashed in the load: the start-up's durable writes (an
// agent's or a coordinator's first few groups) pass, the first batches'
// groups do not.
constexpr int kInLoadSkip = 6;

void PrintTo(const CrashCase& c, std::ostream* os) { *os << c.spec() << " on " << c.process << (c.noRedo ? " without redo" : ""); }

// Every documented failpoint, then any the code has but the table lacks
// (FailpointTable.DocumentsEveryFailpointInTheCode reports those; they are
// exercised all the same).
std::vector<CrashCase> matrixCases() {
  std::vector<CrashCase> out;
  auto names = documentedFailpoints();
  for (const auto& fp : failpointsInCode()) {
    if (std::find(names.begin(), names.end(), fp) == names.end()) names.push_back(fp);
  }
  for (const auto& fp : names) {
    // pg.*: the postgres adapter's own points; this matrix runs ledger
    // agents, and tests/pg crashes at them against a real PostgreSQL.
    if (fp.rfind("pg.", 0) == 0) continue;
    // host.*: the host adapter's points; tests/host/host_agent_test.cc
    // crashes a host agent at each of them against keel-host.
    if (fp.rfind("host.", 0) == 0) continue;
    // log.*_map_full: they inject MDB_MAP_FULL with `error` (a checkpoint's
    // commit in redo mode, a start's replay), tests/unit/redo_log_test.cc;
    // a transfer load reaches neither in the default mode.
    if (fp.size() > 9 && fp.compare(fp.size() - 9, 9, "_map_full") == 0) continue;
    if (fp.rfind("coord.", 0) == 0) {
      out.push_back({fp, kCoordinator});
    } else if (fp.rfind("agent.", 0) == 0) {
      for (const auto& a : kAgents) out.push_back({fp, a});
    } else if (fp.rfind("log.", 0) == 0) {
      for (bool noRedo : {false, true}) {
        // Without the redo log only the LMDB group commit is a log point.
        if (noRedo && fp != "log.before_group_commit") continue;
        for (int skip : {0, kInLoadSkip}) {
          out.push_back({fp, kCoordinator, skip, noRedo});
          for (const auto& a : kAgents) out.push_back({fp, a, skip, noRedo});
        }
      }
    } else {
      out.push_back({fp, ""});
    }
  }
  return out;
}

std::string caseName(const ::testing::TestParamInfo<CrashCase>& info) {
  std::string n = info.param.failpoint + "__" + (info.param.process.empty() ? "unknown" : info.param.process);
  if (info.param.skip > 0) n += "__in_load";
  if (info.param.noRedo) n += "__no_redo";
  for (char& ch : n) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return n;
}

// Failpoints a two-participant transfer does not reach, and why. A case for
// one of these passes when the process did not crash (the invariants are
// still checked). Nothing here yet: every documented point fires.
const std::map<std::string, std::string>& notReachedByTransfers() {
  static const std::map<std::string, std::string> m = {};
  return m;
}

std::size_t countOf(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

std::string join(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += "\n  " + l;
  return s;
}

// ------------------------------------------------------------ fixture

// A coordinator and two ledger agents as real processes, 4 accounts of 1000
// on each agent, and the bookkeeping the invariant checker needs.
class CrashClusterTest : public ::testing::Test {
 public:
  ~CrashClusterTest() noexcept override {}

 protected:
  // The cluster runs its logs in redo mode (coordinator redo = true, agents
  // --redo), or without it (redo = false, --no-redo); neither: the default
  // (redo mode).
  virtual bool redoMode() const { return false; }
  virtual bool noRedoMode() const { return false; }

  static constexpr int kAccountsPerAgent = 4;
  static constexpr std::int64_t kOpening = 1000;
  static constexpr int kTransfers = 40;
  static constexpr int kConcurrency = 8;
  static constexpr std::int64_t kOverdraw = 5000;  // above any balance: the debit side votes NO

  void SetUp() override {
    dir_ = makeTempDir("keel-crash");
    ClusterOptions opts;
    opts.binDir = KEEL_BIN_DIR;
    opts.baseDir = dir_;
    opts.agents = kAgents;
    // Short timeouts and retries (as the integration tests use) keep recovery quick.
    opts.coordinatorExtraToml = "call_timeout_ms = 1000\nretry_initial_ms = 20\nretry_max_ms = 200\n";
    if (redoMode()) {
      // The redo log's points (common/redo_log.h) exist in redo mode only:
      // every process runs in it for those cases.
      opts.coordinatorExtraToml += "redo = true\n";
      opts.agentExtraArgs.push_back("--redo");
    } else if (noRedoMode()) {
      opts.coordinatorExtraToml += "redo = false\n";
      opts.agentExtraArgs.push_back("--no-redo");
    }
    cluster_ = std::make_unique<LocalCluster>(std::move(opts));
    cluster_->startAll();
    reconnect();
  }

  void TearDown() override {
    client_ = nullptr;
    if (cluster_) cluster_->stopAll();
    cluster_.reset();
    if (!HasFailure() && std::getenv("KEEL_CRASH_KEEP") == nullptr) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    } else {
      std::cerr << "crash test data and logs kept in " << dir_ << "\n";
    }
  }

  void reconnect() {
    client_ = nullptr;
    client_ = KeelClient::connect(io_, cluster_->coordinatorAddress()).wait(io_.waitScope);
  }

  void openAccounts() {
    run_.accountsPerAgent.clear();
    for (const auto& agent : kAgents) {
      for (int i = 0; i < kAccountsPerAgent; ++i) {
        std::vector<Op> ops{Op{agent, OpKind::OpenAccount, accountName(agent, i), kOpening}};
        auto o = client_->submit(ops).wait(io_.waitScope);
        run_.opens.push_back(Answer{o.seq, o.outcome, o.reason, false, "", incarnation_, ops});
        ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
        run_.startTotal += kOpening;
        run_.accountsPerAgent[agent]++;
      }
    }
  }

  static std::string accountName(const std::string& agent, int i) {
    return std::string(1, agent.back()) + std::to_string(i);  // bank-a -> a0..a3
  }

  // The i-th transfer: alternating direction, every fifth one overdrawing.
  static std::vector<Op> transfer(int i) {
    bool aToB = i % 2 == 0;
    std::string from = aToB ? "bank-a:" + accountName("bank-a", i % 4) : "bank-b:" + accountName("bank-b", i % 4);
    std::string to =
        aToB ? "bank-b:" + accountName("bank-b", (i + 1) % 4) : "bank-a:" + accountName("bank-a", (i + 2) % 4);
    return transferOps(from, to, i % 5 == 3 ? kOverdraw : 10 + i);
  }

  // Submits transfers [first, last) concurrently; every call ends with an
  // answer or as lost (broken connection, or no answer within 5 s). Returns
  // how many were lost.
  int runBatch(int first, int last) {
    std::size_t before = run_.transfers.size();
    kj::Vector<kj::Promise<void>> calls;
    for (int i = first; i < last; ++i) {
      auto ops = transfer(i);
      int inc = incarnation_;
      kj::Promise<SubmitOutcome> call = client_ ? client_->submit(ops)
                                                : kj::Promise<SubmitOutcome>(KJ_EXCEPTION(DISCONNECTED, "no client"));
      calls.add(io_.provider->getTimer()
                    .timeoutAfter(5 * kj::SECONDS, kj::mv(call))
                    .then(
                        [this, ops, inc](SubmitOutcome o) {
                          run_.transfers.push_back(Answer{o.seq, o.outcome, o.reason, false, "", inc, ops});
                        },
                        [this, ops, inc](kj::Exception&& e) {
                          run_.transfers.push_back(
                              Answer{0, ClientOutcome::Invalid, "", true, e.getDescription().cStr(), inc, ops});
                        }));
    }
    kj::joinPromises(calls.releaseAsArray()).wait(io_.waitScope);
    int lost = 0;
    for (std::size_t i = before; i < run_.transfers.size(); ++i) lost += run_.transfers[i].lost ? 1 : 0;
    return lost;
  }

  bool running(const std::string& p) {
    return p == kCoordinator ? cluster_->coordinatorRunning() : cluster_->agentRunning(p);
  }

  std::string logOf(const std::string& p) {
    return p == kCoordinator ? cluster_->coordinatorLog() : cluster_->agentLog(p);
  }

  // Starts `p`; false when it exited during start-up (a failpoint on the
  // start-up path).
  bool start(const std::string& p, const std::string& failpoints = "") {
    try {
      if (p == kCoordinator) {
        cluster_->startCoordinator(failpoints);
        ++incarnation_;
        reconnect();
        // Records the restart re-drives: their seqs are worth probing.
        for (const auto& r : client_->listUnfinished(10000).wait(io_.waitScope)) run_.seenSeqs.insert(r.seq);
      } else {
        cluster_->startAgent(p, failpoints);
      }
      return true;
    } catch (const std::runtime_error&) {
      if (failpoints.empty()) throw;
      return false;
    }
  }

  void stop(const std::string& p) {
    if (p == kCoordinator) {
      client_ = nullptr;
      cluster_->stopCoordinator();
    } else {
      cluster_->stopAgent(p);
    }
  }

  // The in-doubt branches every live agent holds: seqs worth probing.
  void captureInDoubt() {
    for (const auto& a : kAgents) {
      if (!cluster_->agentRunning(a)) continue;
      try {
        auto c = AgentClient::connect(io_, cluster_->agentAddress(a)).wait(io_.waitScope);
        auto resp = c->capability().recoverRequest().send().wait(io_.waitScope);
        for (auto b : resp.getBranches()) run_.seenSeqs.insert(b.getXid().getSeq());
      } catch (const kj::Exception&) {
      }
    }
  }

  // While the coordinator is down: every seq its WAL recorded is worth
  // probing, and every durable COMMIT decision must end committed (f).
  void captureWal() {
    try {
      for (const auto& r : readStoppedCoordinatorWal(dir_ + "/coordinator")) {
        run_.seenSeqs.insert(r.seq);
        if (r.decision == InteractionRecord::Decision::Commit) run_.durableCommits.insert(r.seq);
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << "cannot read the stopped coordinator's WAL: " << e.what();
    }
  }

  // Polls until the coordinator has nothing unfinished and no agent holds a
  // PREPARED or ACTIVE branch; `why` says what was still open.
  bool waitQuiet(std::chrono::milliseconds timeout, std::string& why) {
    auto until = Clock::now() + timeout;
    for (;;) {
      why.clear();
      try {
        if (!client_) reconnect();
        auto i = client_->info().wait(io_.waitScope);
        if (i.unfinished != 0) why += "coordinator: " + std::to_string(i.unfinished) + " unfinished; ";
        for (const auto& a : kAgents) {
          auto c = AgentClient::connect(io_, cluster_->agentAddress(a)).wait(io_.waitScope);
          auto s = c->inspect().wait(io_.waitScope);
          if (s.prepared + s.active != 0) {
            why += a + ": " + std::to_string(s.prepared) + " prepared, " + std::to_string(s.active) + " active; ";
          }
        }
      } catch (const kj::Exception& e) {
        why = std::string("not reachable: ") + e.getDescription().cStr();
        client_ = nullptr;
      }
      if (why.empty()) return true;
      if (Clock::now() > until) return false;
      std::this_thread::sleep_for(50ms);
    }
  }

  ClusterView observeAll() {
    if (!client_) reconnect();
    return observe(io_, *cluster_, *client_, seqsToProbe(run_));
  }

  kj::AsyncIoContext io_ = kj::setupAsyncIo();
  std::string dir_;
  std::unique_ptr<LocalCluster> cluster_;
  kj::Own<KeelClient> client_;
  RunRecord run_;
  int incarnation_ = 0;  // coordinator starts seen by this test
};

// ------------------------------------------------------------ the matrix

class CrashMatrix : public CrashClusterTest, public ::testing::WithParamInterface<CrashCase> {
 protected:
  bool redoMode() const override { return GetParam().failpoint.find("redo") != std::string::npos; }
  bool noRedoMode() const override { return GetParam().noRedo; }

  // Checks every process after a batch: the armed one dying by its
  // failpoint is the expected event; any other exit is a finding. Dead
  // processes are started again (without failpoints), except that an agent
  // killed by its failpoint stays down for one more batch so the
  // coordinator has to deal with its absence.
  void reap(int batch, const std::string& when) {
    std::vector<std::string> all{kCoordinator};
    all.insert(all.end(), kAgents.begin(), kAgents.end());
    for (const auto& p : all) {
      if (running(p)) continue;
      if (p == downAgent_) {
        if (batch < restartAtBatch_) continue;  // kept down on purpose
        downAgent_.clear();
        ASSERT_TRUE(start(p)) << p << " did not start again";
        continue;
      }
      std::size_t lines = countOf(readFile(logOf(p)), "failpoint " + GetParam().failpoint + ": crash");
      bool byFailpoint = lines > crashLines_[p];
      crashLines_[p] = lines;
      bool expected = p == GetParam().process && byFailpoint && fired_.empty();
      if (expected) {
        fired_ = when;
      } else {
        unexpected_.push_back(p + " exited " + when +
                              (byFailpoint ? " by the failpoint a second time" : " without a failpoint crash line") +
                              " (see " + logOf(p) + ")");
      }
      captureInDoubt();
      if (p == kCoordinator) captureWal();
      if (expected && p != kCoordinator) {
        downAgent_ = p;
        restartAtBatch_ = batch + 1;
        continue;
      }
      if (expected) {
        // Down long enough that the agents' branches in doubt pass their
        // in-doubt query threshold: their resolvers ask while the
        // coordinator is away and again while it re-drives.
        std::this_thread::sleep_for(kCoordinatorDownTime);
      }
      ASSERT_TRUE(start(p)) << p << " did not start again";
    }
  }

  static constexpr auto kCoordinatorDownTime = 2500ms;  // > LocalCluster's default agentInDoubtQueryMs (2000)

  std::string fired_;                           // when the armed process died by its failpoint; "" = not yet
  std::vector<std::string> unexpected_;         // other exits
  std::map<std::string, std::size_t> crashLines_;
  std::string downAgent_;                       // agent kept down after its crash ...
  int restartAtBatch_ = 0;                      // ... until the reap after this batch
};

TEST_P(CrashMatrix, RecoversWithInvariantsIntact) {
  const CrashCase& c = GetParam();
  ASSERT_FALSE(c.process.empty()) << "failpoint " << c.failpoint
                                  << " has a prefix the matrix does not map to a process (coord., agent., log.)";
  auto t0 = Clock::now();
  ASSERT_NO_FATAL_FAILURE(openAccounts());
  std::string why;
  ASSERT_TRUE(waitQuiet(10s, why)) << "opening accounts did not finish: " << why;

  // Arm: restart the process with the failpoint.
  stop(c.process);
  if (!start(c.process, c.spec())) {
    ASSERT_EQ(c.skip, 0) << c.spec() << " on " << c.process << " fired during start-up although " << c.skip
                         << " hits were let through: raise kInLoadSkip, or this case tests start-up again";
    fired_ = "during start-up (its first durable write), before any transfer";
    crashLines_[c.process] = countOf(readFile(logOf(c.process)), "failpoint " + c.failpoint + ": crash");
    EXPECT_EQ(crashLines_[c.process], 1u) << c.process << " exited during start-up without the failpoint's crash line";
    captureInDoubt();
    if (c.process == kCoordinator) captureWal();
    ASSERT_TRUE(start(c.process)) << c.process << " did not start again";
  }

  // Load: bounded in count (kTransfers) and time.
  auto loadUntil = Clock::now() + 30s;
  int batch = 0;
  for (int next = 0; next < kTransfers && Clock::now() < loadUntil; next += kConcurrency, ++batch) {
    if (runBatch(next, std::min(next + kConcurrency, kTransfers)) > 0) {
      // Lost answers: the coordinator's socket closed, but the kernel may
      // not have reaped the process yet. Give it a moment to be gone.
      // If it stays alive the answers were lost to the client's timeout:
      // keep going on a fresh connection. If it died, reap() restarts it.
      if (!cluster_->waitCoordinatorExit(3s)) reconnect();
    }
    ASSERT_NO_FATAL_FAILURE(reap(batch, "in transfer batch " + std::to_string(batch)));
  }
  // Phase 2 and rollback drivers may still reach the point after the load.
  if (fired_.empty()) {
    auto until = Clock::now() + 2s;
    while (running(c.process) && Clock::now() < until) std::this_thread::sleep_for(20ms);
  }
  restartAtBatch_ = 0;  // nobody stays down from here on
  ASSERT_NO_FATAL_FAILURE(reap(batch, "after the load"));
  if (fired_.empty()) {
    // Never fired: take the failpoint away before judging the end state.
    stop(c.process);
    ASSERT_TRUE(start(c.process));
  }

  bool quiet = waitQuiet(15s, why);
  ClusterView view = observeAll();
  auto violations = checkInvariants(run_, view);
  if (!quiet) violations.insert(violations.begin(), "(b) finished: not quiet 15 s after recovery: " + why);
  for (const auto& u : unexpected_) violations.push_back("process: " + u);

  std::map<ClientOutcome, int> told;
  int lost = 0, presumed = 0;
  for (const auto& a : run_.transfers) {
    a.lost ? ++lost : ++told[a.outcome];
    auto r = view.records.find(a.seq);
    if (!a.lost && a.outcome == ClientOutcome::RolledBack && r != view.records.end() && !r->second) ++presumed;
  }
  auto secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::cout << "[crash] " << c.spec() << " on " << c.process << ": "
            << (fired_.empty() ? "did NOT fire" : "fired " + fired_) << "; " << run_.transfers.size()
            << " transfers: " << told[ClientOutcome::Committed] << " committed, " << told[ClientOutcome::RolledBack]
            << " rolled back (" << presumed << " of them unknown to the coordinator: presumed abort), "
            << told[ClientOutcome::InDoubt] << " in doubt, " << lost << " lost; "
            << incarnation_ + 1 << " coordinator starts; " << run_.durableCommits.size()
            << " durable COMMITs in a crashed WAL; " << view.records.size() << " seqs probed; "
            << violations.size() << " violations; " << secs << " s\n";
  for (const auto& n : coverageNotes(view)) std::cout << "[crash]   coverage: " << n << "\n";
  std::set<std::string> lostWhy;
  for (const auto& a : run_.transfers) {
    if (a.lost) lostWhy.insert(a.error);
  }
  for (const auto& w : lostWhy) std::cout << "[crash]   lost: " << w << "\n";

  if (fired_.empty()) {
    auto allowed = notReachedByTransfers().find(c.failpoint);
    EXPECT_NE(allowed, notReachedByTransfers().end())
        << c.spec() << " on " << c.process << " did not fire under " << run_.transfers.size()
        << " transfers, and it is not listed as a point transfers do not reach";
  }
  EXPECT_TRUE(violations.empty()) << c.spec() << " on " << c.process << ": " << violations.size()
                                  << " invariant violations:" << join(violations);
}

INSTANTIATE_TEST_SUITE_P(Failpoints, CrashMatrix, ::testing::ValuesIn(matrixCases()), caseName);

// ------------------------------------------------------------ the table itself

TEST(FailpointTable, DocumentsEveryFailpointInTheCode) {
  auto documented = documentedFailpoints();
  ASSERT_FALSE(documented.empty()) << "no failpoint table found in docs/operations.md";
  std::set<std::string> doc(documented.begin(), documented.end());
  auto code = failpointsInCode();
  for (const auto& n : code) EXPECT_TRUE(doc.count(n)) << n << " is in the code but not in docs/operations.md (so not in the crash matrix)";
  for (const auto& n : doc) EXPECT_TRUE(code.count(n)) << n << " is documented but no KEEL_FAILPOINT site uses it";
}

// ------------------------------------------------------------ the checker can fail

// A normal run checks clean; then bank-a is made to commit a branch of an
// interaction the coordinator rolled back, under a branch number bank-a
// never saw. The checker must say so.
TEST_F(CrashClusterTest, CheckerCatchesACommittedBranchOfARolledBackInteraction) {
  ASSERT_NO_FATAL_FAILURE(openAccounts());
  runBatch(0, kConcurrency);  // transfer 3 (bank-b -> bank-a) overdraws
  std::string why;
  ASSERT_TRUE(waitQuiet(10s, why)) << why;
  auto clean = checkInvariants(run_, observeAll());
  ASSERT_TRUE(clean.empty()) << "a clean run must check clean:" << join(clean);

  const Answer* rolledBack = nullptr;
  for (const auto& a : run_.transfers) {
    if (!a.lost && a.outcome == ClientOutcome::RolledBack && a.ops[0].participant == "bank-b") rolledBack = &a;
  }
  ASSERT_NE(rolledBack, nullptr) << "no rolled-back bank-b -> bank-a transfer to corrupt";
  // Branch 1 is bank-b's (the debit, first in the request); bank-a only ever
  // saw branch 2 of this seq.
  Xid forged{rolledBack->seq, 1};
  auto epoch = client_->info().wait(io_.waitScope).epoch;
  auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-a")).wait(io_.waitScope);
  {
    auto req = agent->capability().prepareRequest();
    req.setEpoch(epoch);
    fillXid(req.initXid(), forged);
    fillOps(req.initOperations(1), {Op{"bank-a", OpKind::Debit, "a0", 100}});
    auto resp = req.send().wait(io_.waitScope);
    ASSERT_EQ(resp.getVote(), wire::Vote::YES) << resp.getReason().cStr();
  }
  {
    auto req = agent->capability().commitRequest();
    req.setEpoch(epoch);
    fillXid(req.initXids(1)[0], forged);
    auto resp = req.send().wait(io_.waitScope);
    ASSERT_EQ(resp.getOutcomes()[0], wire::BranchOutcome::COMMITTED);
  }

  auto found = checkInvariants(run_, observeAll());
  auto has = [&](const std::string& a, const std::string& b) {
    return std::any_of(found.begin(), found.end(), [&](const std::string& v) {
      return v.find(a) != std::string::npos && v.find(b) != std::string::npos;
    });
  };
  EXPECT_TRUE(has("(a) money", "difference -100")) << join(found);
  EXPECT_TRUE(has("(d) rolledback", "bank-a has " + forged.str() + " committed"
)) << join(found);
  EXPECT_TRUE(has("(e) atomic", "half done")) << join(found);
}

// The pure checker on hand-made views: each kind of damage is named.
TEST(InvariantChecker, NamesEachKindOfDamage) {
  RunRecord rec;
  rec.startTotal = 100;
  rec.accountsPerAgent = {{"x", 1}, {"y", 1}};
  std::uint64_t s1 = makeSeq(1, 10), s2 = makeSeq(1, 11);
  rec.transfers.push_back(Answer{s1, ClientOutcome::Committed, "", false, "", 0, transferOps("x:p", "y:q", 5)});
  rec.transfers.push_back(Answer{s2, ClientOutcome::RolledBack, "no", false, "", 0, transferOps("x:p", "y:q", 5)});

  ClusterView view;
  view.info.unfinished = 1;
  QueryResult q1;
  q1.interaction.seq = s1;
  q1.interaction.state = InteractionRecord::State::Committing;  // never finished
  q1.interaction.branches = {{"x", 1, InteractionRecord::BranchState::Prepared, "", {}},
                             {"y", 2, InteractionRecord::BranchState::Prepared, "", {}}};
  view.records[s1] = q1;
  QueryResult q2;
  q2.interaction.seq = s2;
  q2.interaction.state = InteractionRecord::State::RolledBack;
  q2.rollback = RollbackRecord{};
  q2.rollback->pending = {"y"};  // completedUs == 0
  view.records[s2] = q2;
  AgentView x, y;
  x.name = "x";
  x.snapshot.accounts = {{"p", AccountRecord{95, 5, false, {}}}};
  x.snapshot.prepared = 1;
  x.branches[Xid{s1, 1}] = BranchView{true, BranchStatus::Prepared, false};
  x.unfinished = {Xid{s1, 1}};
  y.name = "y";
  y.snapshot.accounts = {{"q", AccountRecord{-1, 0, false, {}}}};
  y.branches[Xid{s2, 2}] = BranchView{true, BranchStatus::Committed, false};
  view.agents = {x, y};

  std::uint64_t s3 = makeSeq(1, 12);  // COMMIT was durable, the end state says rolled back
  rec.durableCommits = {s3};
  QueryResult q3;
  q3.interaction.seq = s3;
  q3.interaction.state = InteractionRecord::State::RolledBack;
  q3.interaction.decision = InteractionRecord::Decision::Abort;
  q3.rollback = RollbackRecord{};
  q3.rollback->completedUs = 1;
  view.records[s3] = q3;

  auto found = checkInvariants(rec, view);
  auto has = [&](const std::string& a, const std::string& b = "") {
    return std::any_of(found.begin(), found.end(), [&](const std::string& v) {
      return v.find(a) != std::string::npos && v.find(b) != std::string::npos;
    });
  };
  EXPECT_TRUE(has("(a) money: x:p still holds 5")) << join(found);
  EXPECT_TRUE(has("(a) money: y:q has a negative balance")) << join(found);
  EXPECT_TRUE(has("(a) money: balances sum to 94")) << join(found);
  EXPECT_TRUE(has("(b) finished: x recover() still lists")) << join(found);
  EXPECT_TRUE(has("(b) finished: coordinator info() reports 1")) << join(found);
  EXPECT_TRUE(has("record is still committing")) << join(found);
  EXPECT_TRUE(has("(c) committed: seq " + seqText(s1) + " ")) << join(found);
  EXPECT_TRUE(has("(d) rolledback: seq " + seqText(s2) + " ", "rollback record not completed")) << join(found);
  EXPECT_TRUE(has("is rolled back at the coordinator but y has")) << join(found);
  EXPECT_TRUE(has("(f) durable: seq " + seqText(s3) + " ", "now it is rolled-back")) << join(found);
}

}  // namespace
}  // namespace keel::crash
