// keel-bench end to end, briefly: a self-started deployment, a couple of
// seconds of load, and the JSON line checked for the fields and for counts
// that must hold (never for speed).

#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "tests/bench/bench_cli.h"
#include "tools/child_process.h"
#include "tools/cluster.h"

namespace keel::test {
namespace {

// --no-redo: every group commit an LMDB commit (redo mode, the default, is
// RedoRunReportsEachProcesssCheckpoints below).
TEST(KeelBench, ShortLedgerRunPrintsACompleteJsonLine) {
  auto r = run("--no-redo --duration 2 --warmup 1 --concurrency 4 --connections 2 --rollback-percent 10 "
               "--read-percent 10 --accounts 50 --floor --floor-samples 100 --quiet",
               false);
  ASSERT_EQ(r.exitCode, 0) << r.out;
  auto m = JsonReader::parse(lastLine(r.out));
  for (const char* k : {"interactions_per_s", "committed", "rolled_back", "errors", "p50_us", "p90_us", "p99_us",
                        "p999_us", "max_us", "cpu_s", "coordinator_log_commits_per_interaction",
                        "agent_log_commits_per_interaction", "floor_us", "rtt_us", "lmdb_commit_us", "redo_append_us"}) {
    EXPECT_TRUE(m.has(k)) << "missing " << k << " in " << lastLine(r.out);
  }
  EXPECT_GT(m["committed"].number(), 0);
  // 10% overdraw on purpose: some were rolled back, none by surprise.
  EXPECT_GT(m["rolled_back"].number(), 0);
  EXPECT_EQ(m["unexpected_rollbacks"].number(), 0);
  EXPECT_EQ(m["errors"].number(), 0);
  EXPECT_GT(m["interactions_per_s"].number(), 0);
  EXPECT_LE(m["p50_us"].number(), m["p99_us"].number());
  EXPECT_LE(m["p99_us"].number(), m["max_us"].number());
  // Every committed two-phase interaction forced at least its COMMIT
  // decision somewhere: the counters moved.
  EXPECT_GT(m["coordinator_log_commits_per_interaction"].number(), 0);
  EXPECT_GT(m["agent_log_commits_per_interaction"].number(), 0);
  EXPECT_GT(m["floor_us"].number(), 0);
  EXPECT_GT(m["redo_append_us"].number(), 0);
  EXPECT_NEAR(m["floor_us"].number(),
              2 * m["rtt_us"].number() + 2 * std::min(m["lmdb_commit_us"].number(), m["redo_append_us"].number()), 0.01);
  // Measured before the load and after it, both kept.
  EXPECT_GT(m["floor_before_us"].number(), 0) << lastLine(r.out);
  EXPECT_GT(m["floor_after_us"].number(), 0) << lastLine(r.out);
  EXPECT_NE(r.out.find("measured before the load (floor "), std::string::npos) << r.out;
  EXPECT_TRUE(m["cpu_s"].has("coordinator"));
  EXPECT_TRUE(m["cpu_s"].has("bank-b"));
  // Every process slept and woke at least once per interaction it took part
  // in (each waits for a message between calls): the counts moved.
  ASSERT_TRUE(m.has("context_switches_per_interaction")) << lastLine(r.out);
  for (const char* p : {"coordinator", "bank-a", "bank-b"}) {
    ASSERT_TRUE(m["context_switches_per_interaction"].has(p)) << p << " in " << lastLine(r.out);
    EXPECT_GT(m["context_switches_per_interaction"][p].number(), 0.5) << p;
  }
  EXPECT_NE(r.out.find("context switches per interaction:"), std::string::npos) << r.out;
  EXPECT_FALSE(m.has("redo_checkpoints")) << "no redo mode, no checkpoints: " << lastLine(r.out);
  // The machine's idle polling, as the kernel says it: the cpuidle driver
  // (empty without cpuidle) and, with haltpoll, its poll limit.
  auto sysLine = [](const char* path) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    return line;
  };
  ASSERT_TRUE(m.has("cpuidle_driver")) << lastLine(r.out);
  EXPECT_EQ(m["cpuidle_driver"].str(), sysLine("/sys/devices/system/cpu/cpuidle/current_driver"));
  if (m["cpuidle_driver"].str() == "haltpoll") {
    ASSERT_TRUE(m.has("guest_halt_poll_ns")) << lastLine(r.out);
    EXPECT_EQ(std::to_string(m["guest_halt_poll_ns"].whole()),
              sysLine("/sys/module/haltpoll/parameters/guest_halt_poll_ns"));
  }
}

// --redo (the default): every process's log checkpoints (at least every 50 ms), and the
// JSON says how often, how long and what share of the window they took.
TEST(KeelBench, RedoRunReportsEachProcesssCheckpoints) {
  auto r = run("--redo --duration 2 --warmup 1 --concurrency 4 --connections 2 --accounts 50 --quiet", false);
  ASSERT_EQ(r.exitCode, 0) << r.out;
  auto m = JsonReader::parse(lastLine(r.out));
  EXPECT_GT(m["committed"].number(), 0);
  ASSERT_TRUE(m.has("redo_checkpoints")) << lastLine(r.out);
  for (const char* p : {"coordinator", "bank-a", "bank-b"}) {
    ASSERT_TRUE(m["redo_checkpoints"].has(p)) << p << " in " << lastLine(r.out);
    const auto& c = m["redo_checkpoints"][p];
    EXPECT_GT(c["per_s"].number(), 0) << p;
    EXPECT_GT(c["mean_us"].number(), 0) << p;
    EXPECT_GT(c["stalled_fraction"].number(), 0) << p;
    EXPECT_LT(c["stalled_fraction"].number(), 1) << p;
  }
  EXPECT_NE(r.out.find("redo checkpoints (the log's writer takes no group meanwhile):"), std::string::npos) << r.out;
}

// --adapter host with a 1 s outage of keel-host: about a thousand transfers
// across a ledger agent and a host agent, the kill and the restart, and
// every interaction the outage touched settled afterwards.
//
// How many of them settle only after the host is back is the kill's luck: an
// interaction whose try was on the wire at the kill is cancelled once the
// host serves again, one whose try found the host already gone votes NO with
// nothing to cancel and completes at once. On a slow disk the 8 outstanding
// interactions can all be waiting on flushes at the kill (stop 43's CI saw
// 0), so the test asks that each touched interaction is counted once, in one
// of the two, and none is left unsettled.
TEST(KeelBench, HostAdapterRunSurvivesAHostOutage) {
  auto r = runJson("--adapter host --host-outage 1 --duration 3 --warmup 0.5 --concurrency 4 --connections 2 "
                   "--accounts 50 --quiet",
                   {"committed", "cpu_us_per_interaction", "host_outage_fired", "settled_after_back_count", "outage_touched",
                    "outage_complete_before_back", "outage_answered_rolled_back",
                    "settled_after_back_p99_us", "outage_unsettled"});
  ASSERT_EQ(r.exitCode, 0) << r.out;
  EXPECT_TRUE(r.missing.empty()) << "missing " << r.missing.front() << " in " << lastLine(r.out);
  EXPECT_EQ(r.fields["adapter"].str(), "host");
  EXPECT_GT(r.fields["committed"].number(), 0);
  EXPECT_TRUE(r.fields["host_outage_fired"].flag()) << lastLine(r.out);
  EXPECT_GT(r.fields["host_outage_down_s"].number(), 0.9);
  EXPECT_GT(r.fields["outage_touched"].number(), 0) << lastLine(r.out);
  EXPECT_GT(r.fields["outage_answered_rolled_back"].number(), 0) << "prepares to a host known down vote NO";
  EXPECT_EQ(r.fields["outage_unsettled"].number(), 0);
  EXPECT_EQ(r.fields["settled_after_back_count"].number() + r.fields["outage_complete_before_back"].number(),
            r.fields["outage_touched"].number())
      << lastLine(r.out);
  for (const char* p : {"coordinator", "bank-a", "bank-b", "keel-host"}) {
    EXPECT_TRUE(r.fields["cpu_us_per_interaction"].has(p)) << p;
  }
}

// keel-bench ended from outside in the middle of its load, in a TMPDIR of
// the test's own: the folder it ran its deployment in, and what stderr says
// about it (bench/folder_reaper.h).
struct Interrupted {
  std::string folder;  // the run's folder ("" if none appeared)
  std::string log;     // keel-bench's stdout and stderr
  bool exited = false;
  bool gone = false;   // the folder no longer there once the reaper spoke
};

Interrupted interruptMidLoad(int sig, const std::string& extra) {
  Interrupted r;
  auto tmp = makeTempDir("keel-reaper-test");
  std::vector<std::string> args{std::string(KEEL_BIN_DIR) + "/keel-bench", "--duration", "60", "--warmup", "0.5",
                                "--concurrency", "4", "--connections", "2", "--accounts", "50", "--quiet"};
  if (!extra.empty()) args.push_back(extra);
  pid_t pid = spawnChild("test", args, {"PATH=/usr/bin:/bin", "TMPDIR=" + tmp}, tmp + "/bench.log", SIGKILL);
  // The load runs once the coordinator is ready and a second has passed.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < until && r.folder.empty()) {
    for (auto& e : std::filesystem::directory_iterator(tmp)) {
      if (e.path().filename().string().rfind("keel-bench-", 0) == 0 &&
          std::filesystem::exists(e.path() / "coordinator.ready")) {
        r.folder = e.path().string();
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!r.folder.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ::kill(pid, sig);
  r.exited = waitChild(pid, std::chrono::seconds(30)).has_value();
  // The reaper ends up to 5 s after keel-bench (waiting for the folder's
  // writers); its last line is the one asked about.
  auto said = [&] {
    std::ifstream in(tmp + "/bench.log");
    std::stringstream ss;
    ss << in.rdbuf();
    r.log = ss.str();
    return r.log.find("keel-bench: interrupted") != std::string::npos ||
           r.log.find("keel-bench: ended before its tear-down") != std::string::npos;
  };
  until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (!said() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  r.gone = !r.folder.empty() && !std::filesystem::exists(r.folder);
  std::error_code ec;
  if (!r.folder.empty()) std::filesystem::remove_all(r.folder, ec);  // (kept ones: the test is done with them)
  std::filesystem::remove_all(tmp + "/bench.log", ec);
  std::filesystem::remove(tmp, ec);
  return r;
}

// Ctrl-C (SIGINT) or SIGTERM in the middle of a run: the folder goes (it
// used to stay, with the deployment's databases in it), and stderr says so.
TEST(KeelBench, AnInterruptedRunRemovesItsFolder) {
  for (int sig : {SIGINT, SIGTERM}) {
    auto r = interruptMidLoad(sig, "");
    ASSERT_FALSE(r.folder.empty()) << "the deployment never came up: " << r.log;
    EXPECT_TRUE(r.exited) << r.log;
    EXPECT_NE(r.log.find("keel-bench: interrupted: " + r.folder + " removed"), std::string::npos)
        << "signal " << sig << ": " << r.log;
    EXPECT_TRUE(r.gone) << r.folder;
  }
}

// --keep is kept even when interrupted; a SIGKILL (or a crash) keeps the
// folder for its logs and says where.
TEST(KeelBench, AKilledOrKeptRunKeepsItsFolderAndSaysWhere) {
  auto kept = interruptMidLoad(SIGINT, "--keep");
  ASSERT_FALSE(kept.folder.empty()) << kept.log;
  EXPECT_NE(kept.log.find("keel-bench: interrupted: data and logs kept in " + kept.folder), std::string::npos)
      << kept.log;
  EXPECT_FALSE(kept.gone);
  auto killed = interruptMidLoad(SIGKILL, "");
  ASSERT_FALSE(killed.folder.empty()) << killed.log;
  EXPECT_NE(killed.log.find("keel-bench: ended before its tear-down (killed or crashed): data and logs kept in " +
                            killed.folder),
            std::string::npos)
      << killed.log;
  EXPECT_FALSE(killed.gone);
}

// --backup-at: a hot backup of the coordinator's WAL in the middle of the
// load; it ran, copied something, and the load kept being answered.
TEST(KeelBench, BackupAtCopiesTheWalUnderTheLoad) {
  auto r = runJson("--duration 3 --warmup 0.5 --concurrency 8 --connections 2 --accounts 50 --backup-at 1.5 --quiet",
                   {"committed", "backup_fired", "backup_bytes", "backup_s", "backup_before_per_s",
                    "backup_during_per_s", "backup_after_per_s", "backup_during_over_before"});
  ASSERT_EQ(r.exitCode, 0) << r.out;
  EXPECT_TRUE(r.missing.empty()) << "missing " << r.missing.front() << " in " << lastLine(r.out);
  EXPECT_TRUE(r.fields["backup_fired"].flag()) << lastLine(r.out);
  EXPECT_GT(r.fields["backup_bytes"].number(), 0);
  EXPECT_GT(r.fields["backup_before_per_s"].number(), 0);
  EXPECT_GT(r.fields["backup_after_per_s"].number(), 0);
  EXPECT_GT(r.fields["committed"].number(), 0);
}

// A measured window that answered no interaction fails the run (exit 2),
// in a sweep as in a single run. The deployment is one of ours whose
// coordinator holds every interaction 3 s after its seq is assigned
// (failpoint; keel-bench passes no failpoints to what it starts itself;
// the hold blocks the coordinator's loop, so keel-bench's read of its
// counters at the window's start waits for it too); the window lasts 1 s
// and closes on time all the same (bench/run.cc, driveWindow). Before
// that, the stalled read stretched the window to the hold's 3 s and the
// held interaction's rollback could land inside it (CI, 2026-12-06).
TEST(KeelBench, ASweepLevelThatAnsweredNothingFailsTheRun) {
  char dir[] = "/tmp/keel-bench-nothing-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  {
    ClusterOptions o;
    o.binDir = KEEL_BIN_DIR;
    o.baseDir = std::string(dir) + "/cluster";
    LocalCluster c(o);
    for (const auto& a : c.agentNames()) c.startAgent(a);
    c.startCoordinator("coord.after_seq_assigned=delay(3000)");
    std::string args = "--coordinator " + c.coordinatorAddress() + " --sweep --sweep-levels 1 --duration 1 --warmup 0 "
                       "--floor-samples 20 --accounts 20 --quiet --out " + std::string(dir) + "/out";
    for (const auto& a : c.agentNames()) args += " --agent " + a + "=" + c.agentAddress(a);
    auto r = run(args, true);
    EXPECT_EQ(r.exitCode, 2) << r.out;
    EXPECT_NE(r.out.find("keel-bench: keel answered no interaction in its"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("window 1.00 s"), std::string::npos) << r.out;
    // The table is still written.
    EXPECT_EQ(::access((std::string(dir) + "/out/sweep.md").c_str(), F_OK), 0) << r.out;
    c.stopAll();
  }
  std::filesystem::remove_all(dir);
}

TEST(KeelBench, BadFlagsAreRefusedClearly) {
  expectRefused("--mode raw2pc", "need --adapter postgres");
  auto r = run("--workload multi --participants 9", true);
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.out.find("--participants"), std::string::npos) << r.out;
  expectRefused("--rollback-percent 70 --read-percent 40", "at most 100");
  expectRefused("--host-outage 5", "needs --adapter host");
  expectRefused("--adapter host --read-percent 10", "cannot read balances");
  expectRefused("--adapter host --workload single", "transfer workload");
  expectRefused("--adapter host --host-outage 10 --duration 5", "needs --duration of at least");
  expectRefused("--backup-at 9 --duration 5", "needs --duration of at least");
  expectRefused("--backup-at 2 --sweep", "--backup-at runs one keel-mode load");
  expectRefused("--embedded", "--embedded runs postgres agents inside one coordinator");
  expectRefused("--adapter postgres --embedded --floor", "--floor times a round trip to an agent process");
  expectRefused("--adapter postgres --raw-prepared", "--raw-prepared needs --compare or --mode raw2pc");
  expectRefused("--floor --floor-samples 1000000", "--floor-samples");
}

// keel-bench-journal on a small generated WAL, and on a small archive: every
// benchmark ran, found what it looked for (a range holds 1,000) and
// reports its percentiles.
class KeelBenchJournal : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(HotAndArchive, KeelBenchJournal, ::testing::Values("", "--archive --days 3"));

TEST_P(KeelBenchJournal, GeneratesAJournalAndReportsQueryPercentiles) {
  auto r = runTool("keel-bench-journal", std::string("--interactions 3000 --benchmark_format=json ") + GetParam(), false);
  ASSERT_EQ(r.exitCode, 0) << r.out;
  auto doc = JsonReader::parse(r.out);
  std::map<std::string, Json> byName;
  for (const auto& b : doc["benchmarks"].array()) {
    std::string name = b["name"].str();
    byName[name.substr(0, name.find('/'))] = b;
  }
  for (const char* name : {"BM_QueryBySeq", "BM_QueryByRequestId", "BM_Search1000"}) {
    ASSERT_TRUE(byName.count(name)) << name << " missing in " << r.out;
    const Json& b = byName[name];
    EXPECT_FALSE(b.has("error_occurred") && b["error_occurred"].flag()) << name << ": " << r.out;
    EXPECT_GT(b["p50_us"].number(), 0) << name;
    EXPECT_LE(b["p50_us"].number(), b["p99_us"].number()) << name;
    EXPECT_EQ(b["interactions"].number(), 3000) << name;
  }
  EXPECT_EQ(byName["BM_Search1000"]["results"].number(), 1000);
}

TEST(KeelBenchJournalFlags, BadValuesAreRefused) {
  auto bad = runTool("keel-bench-journal", "--interactions 5", true);
  EXPECT_EQ(bad.exitCode, 2);
  EXPECT_NE(bad.out.find("--interactions must be a whole number from 2000"), std::string::npos) << bad.out;
  bad = runTool("keel-bench-journal", "--archive --days 0", true);
  EXPECT_EQ(bad.exitCode, 2);
  EXPECT_NE(bad.out.find("--days must be a whole number from 1 to 3650"), std::string::npos) << bad.out;
}

}  // namespace
}  // namespace keel::test
