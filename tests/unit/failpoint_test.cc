// Failpoints: spec parsing, each action's effect, counts, and crash as a
// real SIGKILL.

#include "common/failpoint.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "tests/unit/test_util.h"

namespace keel {
namespace {

// The registry is process-global: every test starts and ends disarmed.
class FailpointTest : public ::testing::Test {
 protected:
  void SetUp() override { failpoint::configure(""); }
  void TearDown() override {
    failpoint::configure("");
    ::unsetenv("KEEL_FAILPOINTS");
  }
};

void expectRejected(const std::string& spec, const std::string& entry) {
  try {
    failpoint::configure(spec);
    ADD_FAILURE() << "spec '" << spec << "' was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'" + entry + "'"), std::string::npos)
        << "message does not name the entry '" << entry << "': " << e.what();
  }
}

TEST_F(FailpointTest, UnsetIsDisarmedAndHitsDoNothing) {
  EXPECT_FALSE(failpoint::gArmed.load());
  EXPECT_NO_THROW(KEEL_FAILPOINT("anything"));
  EXPECT_EQ(failpoint::firedCount("anything"), 0u);
}

TEST_F(FailpointTest, ParsesEveryActionWithSpacesAndCounts) {
  EXPECT_NO_THROW(failpoint::configure(" a=crash , b = delay(5),c=error,d=off,e=2*error,f=3*delay(1), "));
  EXPECT_TRUE(failpoint::gArmed.load());
  EXPECT_THROW(KEEL_FAILPOINT("c"), failpoint::InjectedError);
  EXPECT_NO_THROW(KEEL_FAILPOINT("d"));
  EXPECT_EQ(failpoint::firedCount("d"), 0u);  // off never fires
  EXPECT_NO_THROW(KEEL_FAILPOINT("not-configured"));
  EXPECT_EQ(failpoint::firedCount("c"), 1u);
  EXPECT_NO_THROW(KEEL_FAILPOINT("f"));
  EXPECT_EQ(failpoint::firedCount("f"), 1u);
}

TEST_F(FailpointTest, MalformedEntriesThrowNamingTheEntry) {
  expectRejected("good=error,noequals", "noequals");
  expectRejected("=crash", "=crash");
  expectRejected("a=explode", "a=explode");
  expectRejected("a=", "a=");
  expectRejected("a=0*crash", "a=0*crash");
  expectRejected("a=-1*error", "a=-1*error");
  expectRejected("a=x*crash", "a=x*crash");
  expectRejected("a=2*", "a=2*");
  expectRejected("a=delay()", "a=delay()");
  expectRejected("a=delay(abc)", "a=delay(abc)");
  expectRejected("a=delay(5", "a=delay(5");
  expectRejected("a=crash,b=CRASH", "b=CRASH");
  expectRejected("a=0+error", "a=0+error");
  expectRejected("a=x+error", "a=x+error");
  expectRejected("a=+error", "a=+error");
  expectRejected("a=2+", "a=2+");
  expectRejected("a=1+0*error", "a=1+0*error");
}

TEST_F(FailpointTest, MalformedSpecKeepsThePreviousSet) {
  failpoint::configure("keep=error");
  EXPECT_THROW(failpoint::configure("keep=off,bad=nonsense"), std::invalid_argument);
  EXPECT_THROW(KEEL_FAILPOINT("keep"), failpoint::InjectedError);
}

TEST_F(FailpointTest, ErrorThrowsInjectedErrorNamingThePoint) {
  failpoint::configure("agent.before_commit_durable=error");
  try {
    KEEL_FAILPOINT("agent.before_commit_durable");
    FAIL() << "error action did not throw";
  } catch (const failpoint::InjectedError& e) {
    EXPECT_NE(std::string(e.what()).find("agent.before_commit_durable"), std::string::npos) << e.what();
  }
  // Every hit fires without a count.
  for (int i = 0; i < 5; ++i) EXPECT_THROW(KEEL_FAILPOINT("agent.before_commit_durable"), failpoint::InjectedError);
  EXPECT_EQ(failpoint::firedCount("agent.before_commit_durable"), 6u);
}

TEST_F(FailpointTest, CountedErrorFiresTwiceThenStops) {
  failpoint::configure("p=2*error");
  EXPECT_THROW(KEEL_FAILPOINT("p"), failpoint::InjectedError);
  EXPECT_THROW(KEEL_FAILPOINT("p"), failpoint::InjectedError);
  for (int i = 0; i < 5; ++i) EXPECT_NO_THROW(KEEL_FAILPOINT("p"));
  EXPECT_EQ(failpoint::firedCount("p"), 2u);
}

TEST_F(FailpointTest, SkippedHitsPassThenTheCountedActionFires) {
  failpoint::configure("p=2+1*error,q=1+error");
  EXPECT_NO_THROW(KEEL_FAILPOINT("p"));
  EXPECT_NO_THROW(KEEL_FAILPOINT("p"));
  EXPECT_EQ(failpoint::firedCount("p"), 0u);  // a skipped hit does not count as fired
  EXPECT_THROW(KEEL_FAILPOINT("p"), failpoint::InjectedError);
  for (int i = 0; i < 5; ++i) EXPECT_NO_THROW(KEEL_FAILPOINT("p"));
  EXPECT_EQ(failpoint::firedCount("p"), 1u);
  // Without a count, every hit after the skipped ones fires.
  EXPECT_NO_THROW(KEEL_FAILPOINT("q"));
  for (int i = 0; i < 3; ++i) EXPECT_THROW(KEEL_FAILPOINT("q"), failpoint::InjectedError);
  EXPECT_EQ(failpoint::firedCount("q"), 3u);
}

TEST_F(FailpointTest, CountIsExactUnderConcurrentHits) {
  failpoint::configure("hot=100*error");
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        try {
          KEEL_FAILPOINT("hot");
        } catch (const failpoint::InjectedError&) {
          errors.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 100);
  EXPECT_EQ(failpoint::firedCount("hot"), 100u);
}

TEST_F(FailpointTest, DelaySleepsOnTheCallingThread) {
  failpoint::configure("slow=delay(5),slower=1*delay(60)");
  auto t0 = std::chrono::steady_clock::now();
  KEEL_FAILPOINT("slow");
  auto t1 = std::chrono::steady_clock::now();
  EXPECT_GE(t1 - t0, std::chrono::milliseconds(5));
  KEEL_FAILPOINT("slower");
  auto t2 = std::chrono::steady_clock::now();
  EXPECT_GE(t2 - t1, std::chrono::milliseconds(60));
  KEEL_FAILPOINT("slower");  // count used up: no more delay (fired once, below)
  EXPECT_EQ(failpoint::firedCount("slow"), 1u);
  EXPECT_EQ(failpoint::firedCount("slower"), 1u);
}

TEST_F(FailpointTest, ReconfigureReplacesTheSetAndResetsCounts) {
  failpoint::configure("a=error");
  EXPECT_THROW(KEEL_FAILPOINT("a"), failpoint::InjectedError);
  failpoint::configure("b=error");
  EXPECT_NO_THROW(KEEL_FAILPOINT("a"));
  EXPECT_EQ(failpoint::firedCount("a"), 0u);
  failpoint::configure("");
  EXPECT_FALSE(failpoint::gArmed.load());
  EXPECT_NO_THROW(KEEL_FAILPOINT("b"));
}

TEST_F(FailpointTest, InitFromEnvReadsKeelFailpoints) {
  ::setenv("KEEL_FAILPOINTS", "from.env=1*error", 1);
  failpoint::initFromEnv();
  EXPECT_THROW(KEEL_FAILPOINT("from.env"), failpoint::InjectedError);
  ::setenv("KEEL_FAILPOINTS", "from.env=bogus", 1);
  EXPECT_THROW(failpoint::initFromEnv(), std::invalid_argument);
  ::unsetenv("KEEL_FAILPOINTS");
  failpoint::initFromEnv();
  EXPECT_FALSE(failpoint::gArmed.load());
}

TEST_F(FailpointTest, CrashKillsTheProcessWithSigkill) {
  auto child = test::forkChild([](int fd) {
    failpoint::configure("boom=crash");
    test::reportU64(fd, 1);
    KEEL_FAILPOINT("boom");
    test::reportU64(fd, 2);  // not reached
    return 0;
  });
  auto reports = child.readAll();
  int status = child.wait();
  EXPECT_TRUE(test::killedBy(status, SIGKILL)) << "status " << status;
  EXPECT_EQ(reports, std::vector<std::uint64_t>{1});
}

TEST_F(FailpointTest, CountedCrashSparesLaterHitsOfOtherPoints) {
  // "1*crash" on one point: a hit of a different point does not crash.
  auto child = test::forkChild([](int) {
    failpoint::configure("boom=1*crash");
    KEEL_FAILPOINT("other");
    return 7;
  });
  int status = child.wait();
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 7);
}

// Counts and delays are whole unsigned numbers: "delay(-5)" once became a
// ~50-day delay through std::stoul.
TEST_F(FailpointTest, NegativeDelayAndTrailingGarbageAreRejected) {
  expectRejected("a=delay(-5)", "a=delay(-5)");
  expectRejected("a=delay(5ms)", "a=delay(5ms)");
  expectRejected("a=2x*error", "a=2x*error");
}

}  // namespace
}  // namespace keel
