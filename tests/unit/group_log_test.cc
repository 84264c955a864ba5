// GroupCommitLog: grouping, per-job rollback, durability across SIGKILL and
// the KJ (event loop) path.

#include "common/group_log.h"

#include <gtest/gtest.h>
#include <kj/async-io.h>
#include <kj/async.h>
#include <kj/vector.h>

#include <atomic>
#include <chrono>
#include <future>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/failpoint.h"
#include "common/types.h"
#include "tests/unit/test_util.h"

namespace keel {
namespace {

// A job built from a function, completing a std::promise: lets a test queue
// jobs without blocking (submit) and look at each outcome.
class FnJob final : public GroupCommitLog::Job {
 public:
  explicit FnJob(std::function<void(lmdb::Txn&)> fn) : fn_(std::move(fn)) {}
  void apply(lmdb::Txn& txn) override { fn_(txn); }
  void done(std::exception_ptr err) noexcept override {
    if (err) {
      promise_.set_exception(err);
    } else {
      promise_.set_value();
    }
  }
  std::future<void> future() { return promise_.get_future(); }

 private:
  std::function<void(lmdb::Txn&)> fn_;
  std::promise<void> promise_;
};

std::future<void> submitFn(GroupCommitLog& log, std::function<void(lmdb::Txn&)> fn) {
  auto job = std::make_unique<FnJob>(std::move(fn));
  auto fut = job->future();
  log.submit(std::move(job));
  return fut;
}

// Holds the writer thread inside a job until release(): everything
// submitted meanwhile queues up and is taken as one group.
class WriterGate {
 public:
  explicit WriterGate(GroupCommitLog& log) {
    auto opened = std::make_shared<std::promise<void>>();
    auto entered = opened->get_future();
    auto gate = gate_.get_future().share();
    done_ = submitFn(log, [opened, gate](lmdb::Txn&) {
      opened->set_value();
      gate.wait();
    });
    entered.wait();  // the writer is inside the gate job now
  }
  void release() {
    gate_.set_value();
    done_.get();
  }

 private:
  std::promise<void> gate_;
  std::future<void> done_;
};

std::string recordKey(std::uint64_t thread, std::uint64_t i) { return u64Key((thread << 32) | i); }

class GroupLogTest : public ::testing::Test {
 protected:
  test::TempDir dir_;
};

TEST_F(GroupLogTest, RunSyncReturnsTheJobResultOnceDurable) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  int r = log.runSync([db](lmdb::Txn& txn) {
    txn.put(db, "k", "v");
    return 42;
  });
  EXPECT_EQ(r, 42);
  auto read = env.beginRead();
  EXPECT_EQ(read.get(db, "k"), "v");
  EXPECT_EQ(log.stats().jobs.load(), 1u);
  EXPECT_EQ(log.stats().commits.load(), 1u);
}

TEST_F(GroupLogTest, ConcurrentSubmittersAllCompleteInFewerCommitsThanJobs) {
  constexpr int kThreads = 8;
  constexpr int kJobs = 500;
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  std::atomic<int> acknowledged{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kJobs; ++i) {
        log.runSync([&, t, i](lmdb::Txn& txn) {
          txn.put(db, recordKey(std::uint64_t(t), std::uint64_t(i)), std::string(100, char('a' + t)));
        });
        acknowledged.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();

  const std::uint64_t total = kThreads * kJobs;
  RecordProperty("durable_commits", std::to_string(log.stats().commits.load()));
  EXPECT_EQ(acknowledged.load(), int(total));
  EXPECT_EQ(log.stats().jobs.load(), total);
  EXPECT_EQ(log.stats().failedJobs.load(), 0u);
  // Group commit actually groups: one durable commit served several jobs.
  EXPECT_LT(log.stats().commits.load(), total);
  EXPECT_GE(log.stats().commits.load(), std::uint64_t(kJobs));  // a thread waits for each of its jobs
  auto read = env.beginRead();
  EXPECT_EQ(read.count(db), std::size_t(total));
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kJobs; ++i) {
      ASSERT_EQ(read.get(db, recordKey(std::uint64_t(t), std::uint64_t(i))), std::string(100, char('a' + t)));
    }
  }
}

TEST_F(GroupLogTest, ThrowingJobIsRolledBackAloneWithinItsGroup) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);

  WriterGate gate(log);
  auto a = submitFn(log, [db](lmdb::Txn& txn) { txn.put(db, "a", "1"); });
  auto b = submitFn(log, [db](lmdb::Txn& txn) {
    txn.put(db, "b", "2");
    txn.put(db, "a", "overwritten by the failing job");
    throw std::runtime_error("rule violated in b");
  });
  auto c = submitFn(log, [db](lmdb::Txn& txn) { txn.put(db, "c", "3"); });
  const auto commitsBefore = log.stats().commits.load();
  gate.release();  // the gate's own group commits; a, b, c form the next

  EXPECT_NO_THROW(a.get());
  try {
    b.get();
    FAIL() << "the failing job's future did not throw";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "rule violated in b");
  }
  EXPECT_NO_THROW(c.get());
  // One commit for the gate's group, one for {a, b, c}: a and c were made
  // durable by the same commit that rolled b back.
  EXPECT_EQ(log.stats().commits.load() - commitsBefore, 1u + 1u);
  EXPECT_EQ(log.stats().failedJobs.load(), 1u);

  auto read = env.beginRead();
  EXPECT_EQ(read.get(db, "a"), "1");
  EXPECT_FALSE(read.get(db, "b").has_value());
  EXPECT_EQ(read.get(db, "c"), "3");
}

TEST_F(GroupLogTest, JobThatFillsTheMapFailsAloneWithMapFullError) {
  lmdb::EnvOptions opts;
  opts.mapSize = 256 * 1024;
  lmdb::Env env(dir_.path(), opts);
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  WriterGate gate(log);
  auto a = submitFn(log, [db](lmdb::Txn& txn) { txn.put(db, "a", "1"); });
  auto big = submitFn(log, [db](lmdb::Txn& txn) { txn.put(db, "big", std::string(1 << 20, 'x')); });
  auto c = submitFn(log, [db](lmdb::Txn& txn) { txn.put(db, "c", "3"); });
  gate.release();
  EXPECT_NO_THROW(a.get());
  try {
    big.get();
    FAIL() << "a 1 MiB value fitted in a 256 KiB map";
  } catch (const lmdb::MapFullError& e) {
    EXPECT_NE(std::string(e.what()).find("map_size"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(c.get());
  auto read = env.beginRead();
  EXPECT_EQ(read.get(db, "a"), "1");
  EXPECT_FALSE(read.get(db, "big").has_value());
  EXPECT_EQ(read.get(db, "c"), "3");
}

TEST_F(GroupLogTest, MaxBatchBoundsTheGroupSize) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog::Options opts;
  opts.maxBatch = 4;
  GroupCommitLog log(env, opts);
  WriterGate gate(log);
  std::vector<std::future<void>> futures;
  for (int i = 0; i < 20; ++i) {
    futures.push_back(submitFn(log, [db, i](lmdb::Txn& txn) { txn.put(db, u64Key(std::uint64_t(i)), "x"); }));
  }
  gate.release();
  for (auto& f : futures) f.get();
  // 1 commit for the gate, then 20 queued jobs in groups of at most 4.
  EXPECT_EQ(log.stats().commits.load(), 1u + 5u);
  EXPECT_EQ(log.stats().jobs.load(), 21u);
}

TEST_F(GroupLogTest, DestructorFinishesEveryQueuedJob) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  std::vector<std::future<void>> futures;
  {
    GroupCommitLog log(env);
    WriterGate gate(log);
    for (int i = 0; i < 100; ++i) {
      futures.push_back(submitFn(log, [db, i](lmdb::Txn& txn) { txn.put(db, u64Key(std::uint64_t(i)), "x"); }));
    }
    gate.release();
  }  // ~GroupCommitLog drains the queue before the writer stops
  for (auto& f : futures) {
    ASSERT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::ready);
    f.get();
  }
  auto read = env.beginRead();
  EXPECT_EQ(read.count(db), 100u);
}

TEST_F(GroupLogTest, RunResolvesOnTheCallersEventLoop) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  auto io = kj::setupAsyncIo();

  const auto loopThread = std::this_thread::get_id();
  std::thread::id continuationThread;
  auto writerThread = log.run([db](lmdb::Txn& txn) {
                            txn.put(db, "k", "v");
                            return std::this_thread::get_id();
                          })
                          .then([&](std::thread::id writer) {
                            continuationThread = std::this_thread::get_id();
                            return writer;
                          })
                          .wait(io.waitScope);
  EXPECT_NE(writerThread, loopThread);  // the job ran on the writer thread
  EXPECT_EQ(continuationThread, loopThread);  // and came back on our loop
  auto read = env.beginRead();
  EXPECT_EQ(read.get(db, "k"), "v");  // durable by the time it resolved
}

TEST_F(GroupLogTest, RunOnAPlainEventLoopWithoutAsyncIo) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  kj::EventLoop loop;
  kj::WaitScope waitScope(loop);
  log.run([db](lmdb::Txn& txn) { txn.put(db, "k", "v"); }).wait(waitScope);
  EXPECT_EQ(log.run([db](lmdb::Txn& txn) { return *txn.get(db, "k"); }).wait(waitScope), "v");
}

TEST_F(GroupLogTest, ManyRunPromisesOnOneLoopShareCommits) {
  constexpr int kJobs = 1000;
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  auto io = kj::setupAsyncIo();
  kj::Vector<kj::Promise<int>> promises;
  for (int i = 0; i < kJobs; ++i) {
    promises.add(log.run([db, i](lmdb::Txn& txn) {
      txn.put(db, u64Key(std::uint64_t(i)), std::to_string(i));
      return i;
    }));
  }
  auto results = kj::joinPromises(promises.releaseAsArray()).wait(io.waitScope);
  ASSERT_EQ(results.size(), std::size_t(kJobs));
  RecordProperty("durable_commits", std::to_string(log.stats().commits.load()));
  for (int i = 0; i < kJobs; ++i) EXPECT_EQ(results[i], i);
  EXPECT_LT(log.stats().commits.load(), std::uint64_t(kJobs) / 10);
  auto read = env.beginRead();
  EXPECT_EQ(read.count(db), std::size_t(kJobs));
}

TEST_F(GroupLogTest, JobsRunInOneLoopTurnShareOneBundleAndOneCommit) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  kj::EventLoop loop;
  kj::WaitScope waitScope(loop);
  constexpr int kJobs = 50;
  kj::Vector<kj::Promise<int>> promises;
  std::atomic<int> sevenRan{0};
  for (int i = 0; i < kJobs; ++i) {
    promises.add(log.run([db, i, &sevenRan](lmdb::Txn& txn) {
      if (i == 7) {
        ++sevenRan;
        txn.put(db, "poison", "x");
        throw std::runtime_error("job 7 fails");
      }
      txn.put(db, u64Key(std::uint64_t(i)), std::to_string(i));
      return i;
    }));
  }
  auto all = kj::joinPromises(promises.releaseAsArray()).then(
      [](kj::Array<int>) { return std::string("no failure"); }, [](kj::Exception&& e) {
        return std::string(e.getDescription().cStr());
      });
  // The failing job rejects alone; every other job of the bundle is durable.
  EXPECT_NE(all.wait(waitScope).find("job 7 fails"), std::string::npos);
  EXPECT_EQ(log.stats().commits.load(), 1u);  // one turn, one bundle, one group commit
  EXPECT_EQ(log.stats().jobs.load(), std::uint64_t(kJobs - 1));
  EXPECT_EQ(log.stats().failedJobs.load(), 1u);
  auto read = env.beginRead();
  EXPECT_EQ(read.count(db), std::size_t(kJobs - 1));
  EXPECT_FALSE(read.get(db, "poison").has_value());
  // The bundle ran in one nested transaction first; the job that threw
  // there is not run again when the others are (a failpoint's count).
  EXPECT_EQ(sevenRan.load(), 1);
}

TEST_F(GroupLogTest, TheBundlesOfOneGroupAreHandedBackWithOneWakeUpOfTheLoop) {
  // Three loop turns each hand the writer a bundle while it is busy; it
  // takes the three as one group and wakes the loop once for all of them
  // (not once per bundle: each wake-up is an eventfd write, and may be a
  // switch to the loop and back).
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  kj::EventLoop loop;
  kj::WaitScope waitScope(loop);
  WriterGate gate(log);
  kj::Vector<kj::Promise<int>> promises;
  for (int turn = 0; turn < 3; ++turn) {
    for (int i = 0; i < 2; ++i) {
      int k = turn * 2 + i;
      promises.add(log.run([db, k](lmdb::Txn& txn) {
        txn.put(db, u64Key(std::uint64_t(k)), std::to_string(k));
        return k;
      }));
    }
    kj::evalLater([] {}).wait(waitScope);  // the turn ends: its bundle goes to the writer
  }
  gate.release();
  auto results = kj::joinPromises(promises.releaseAsArray()).wait(waitScope);
  ASSERT_EQ(results.size(), 6u);
  for (int k = 0; k < 6; ++k) EXPECT_EQ(results[k], k);
  EXPECT_EQ(log.stats().commits.load(), 2u) << "the gate's group, then the three bundles' group";
  EXPECT_EQ(log.stats().jobs.load(), 7u);
  EXPECT_EQ(log.stats().loopWakeups.load(), 1u) << "one wake-up for the group's three bundles";
  EXPECT_EQ(env.beginRead().count(db), 6u);
}

TEST_F(GroupLogTest, ABundleHandedBackWhileTheLoopTakesTheLastOnesIsNotLeftWaiting) {
  // The race the mailbox must not lose: the loop has taken bundle A's
  // result and is not waiting (a test hook holds it there for 300 ms)
  // when the writer hands back bundle B and goes idle. The loop, arming
  // again for B, must find it already there; were it only to wait, B
  // would wait for a wake-up that never comes (here: the timeout).
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog::Options o;
  o.maxBatch = 1;  // A and B in groups of their own
  int held = 0;
  o.loopTookResults = [&held] {
    if (held++ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  };
  GroupCommitLog log(env, o);
  auto io = kj::setupAsyncIo();
  auto a = log.run([db](lmdb::Txn& txn) { txn.put(db, "a", "1"); });
  kj::evalLater([] {}).wait(io.waitScope);  // A goes to the writer
  auto b = log.run([db](lmdb::Txn& txn) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // told while the loop is held
    txn.put(db, "b", "2");
  });
  auto both = kj::joinPromises(kj::arr(kj::mv(a), kj::mv(b)));
  io.provider->getTimer().timeoutAfter(10 * kj::SECONDS, kj::mv(both)).wait(io.waitScope);
  EXPECT_GE(held, 1) << "the loop was not held: the race was not run";
  EXPECT_EQ(log.stats().commits.load(), 2u);
  EXPECT_EQ(log.stats().loopWakeups.load(), 1u) << "B was taken when the loop armed again, without a wake-up";
}

TEST_F(GroupLogTest, BundlesHandedBackWhileTheLoopRunsAreNeverLeftWaiting) {
  // The writer hands bundles back while the loop is completing earlier
  // ones or handing over new ones: no interleaving may leave one in the
  // mailbox without a wake-up (a lost one would hang here: bounded by a
  // timeout). Jobs of random turns, some of them failing, some lazy.
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  auto io = kj::setupAsyncIo();
  constexpr int kTurns = 400;
  std::mt19937 rng(7);
  kj::Vector<kj::Promise<int>> promises;
  int expectedFailures = 0, next = 0;
  for (int turn = 0; turn < kTurns; ++turn) {
    int n = int(rng() % 5);
    for (int i = 0; i < n; ++i) {
      int k = next++;
      bool fail = rng() % 17 == 0;
      expectedFailures += fail ? 1 : 0;
      auto job = [db, k, fail](lmdb::Txn& txn) {
        if (fail) throw std::runtime_error("job fails");
        txn.put(db, u64Key(std::uint64_t(k)), "v");
        return k;
      };
      auto p = rng() % 3 == 0 ? log.runLazy(job) : log.run(job);
      promises.add(p.then([](int v) { return v; }, [](kj::Exception&&) { return -1; }));
    }
    if (rng() % 2 == 0) kj::evalLater([] {}).wait(io.waitScope);
    if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
  }
  auto all = kj::joinPromises(promises.releaseAsArray());
  auto results = io.provider->getTimer()
                     .timeoutAfter(60 * kj::SECONDS, kj::mv(all))
                     .wait(io.waitScope);
  ASSERT_EQ(results.size(), std::size_t(next));
  int failed = 0;
  for (int k = 0; k < next; ++k) {
    if (results[k] == -1) {
      ++failed;
    } else {
      EXPECT_EQ(results[k], k);
    }
  }
  EXPECT_EQ(failed, expectedFailures);
  EXPECT_GT(next, kTurns) << "the load ran";
  EXPECT_GT(log.stats().loopWakeups.load(), 0u);
  EXPECT_LE(log.stats().loopWakeups.load(), log.stats().commits.load() + log.stats().failedJobs.load())
      << "at most one wake-up per group";
  EXPECT_EQ(env.beginRead().count(db), std::size_t(next - expectedFailures));
}

TEST_F(GroupLogTest, RunFromASecondLoopThreadStillCompletes) {
  // Only the first loop that calls run() bundles; another thread's loop
  // takes the direct path and must get its answer on its own loop.
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  kj::EventLoop loop;
  kj::WaitScope waitScope(loop);
  log.run([db](lmdb::Txn& txn) { txn.put(db, "main", "1"); }).wait(waitScope);
  std::string fromOther;
  std::thread other([&] {
    kj::EventLoop loop2;
    kj::WaitScope ws2(loop2);
    fromOther = log.run([db](lmdb::Txn& txn) {
                     txn.put(db, "other", "2");
                     return std::string("done");
                   }).wait(ws2);
  });
  other.join();
  EXPECT_EQ(fromOther, "done");
  auto read = env.beginRead();
  EXPECT_EQ(read.get(db, "other"), "2");
}

TEST_F(GroupLogTest, LazyJobRidesWithTheNextForcedGroupOrCommitsAfterItsDelay) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog::Options opts;
  opts.lazyDelay = std::chrono::milliseconds(1000);
  GroupCommitLog log(env, opts);
  kj::EventLoop loop;
  kj::WaitScope waitScope(loop);
  // Alone, a lazy job waits for its delay before a group commits it.
  auto t0 = std::chrono::steady_clock::now();
  log.runLazy([db](lmdb::Txn& txn) { txn.put(db, "lazy-1", "x"); }).wait(waitScope);
  auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(waited, std::chrono::milliseconds(900));
  EXPECT_EQ(log.stats().commits.load(), 1u);
  // Followed by a forced job in a later turn, it rides along: one group
  // commit for both (its own delay would have made it a group of its own).
  auto lazy = log.runLazy([db](lmdb::Txn& txn) { txn.put(db, "lazy-2", "y"); });
  kj::evalLater([] {}).wait(waitScope);  // the lazy bundle leaves in its own turn
  log.run([db](lmdb::Txn& txn) { txn.put(db, "forced", "z"); }).wait(waitScope);
  lazy.wait(waitScope);
  EXPECT_EQ(log.stats().commits.load(), 2u);
  auto read = env.beginRead();
  EXPECT_EQ(read.get(db, "lazy-2"), "y");
  EXPECT_EQ(read.get(db, "forced"), "z");
}

// A lazy job queued while the writer will look at its queue before the
// job's deadline anyway (within lazyDelay of its last group) does not wake
// it: at one client the lazy records (an agent's COMMITTED, the
// coordinator's final record) cost no wake-up of the writer of their own.
// Once the writer sleeps without a deadline (or, in redo mode, until a
// checkpoint far off), a lazy job wakes it, and still commits after its
// delay. Both modes: in redo mode the writer waits for its next
// checkpoint, and the lazy job must not count on that. Each part is timed
// so that a slow machine cannot make it fail: the first has a long delay
// and never waits for it, the second waits well past a short one.
void lazyWakeups(const std::string& dir, GroupCommitLog::Options opts) {
  kj::EventLoop loop;
  kj::WaitScope waitScope(loop);
  // Runs `part` against a log with `delay` over the same directory.
  auto withLog = [&](std::chrono::milliseconds delay, auto&& part) {
    lmdb::Env env = opts.redo ? openEnvRecovering(dir, {}) : lmdb::Env(dir, {});
    MDB_dbi db = env.openDb("data");
    opts.lazyDelay = delay;
    GroupCommitLog log(env, opts);
    part(env, db, log, log.stats());
  };
  // Within lazyDelay of a group: no wake-up; the lazy job rides with the
  // next forced one (one group for both).
  withLog(std::chrono::seconds(30), [&](lmdb::Env& env, MDB_dbi db, GroupCommitLog& log, auto& st) {
    log.run([db](lmdb::Txn& txn) { txn.put(db, "forced-1", "a"); }).wait(waitScope);
    EXPECT_EQ(st.writerWakeups.load(), 1u);
    auto lazy = log.runLazy([db](lmdb::Txn& txn) { txn.put(db, "lazy-1", "b"); });
    kj::evalLater([] {}).wait(waitScope);  // the lazy bundle leaves in its own turn
    EXPECT_EQ(st.writerWakeups.load(), 1u);
    log.run([db](lmdb::Txn& txn) { txn.put(db, "forced-2", "c"); }).wait(waitScope);
    lazy.wait(waitScope);
    EXPECT_EQ(st.writerWakeups.load(), 2u);
    EXPECT_EQ(st.commits.load(), 2u);
    EXPECT_EQ(env.beginRead().get(db, "lazy-1"), "b");
  });
  // Once the writer has looked again and gone to sleep, a lazy job wakes it
  // (it would look too late otherwise), and it is committed alone after
  // its delay.
  withLog(std::chrono::milliseconds(100), [&](lmdb::Env& env, MDB_dbi db, GroupCommitLog& log, auto& st) {
    log.run([db](lmdb::Txn& txn) { txn.put(db, "forced-3", "d"); }).wait(waitScope);
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    auto t0 = std::chrono::steady_clock::now();
    log.runLazy([db](lmdb::Txn& txn) { txn.put(db, "lazy-2", "e"); }).wait(waitScope);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(90));
    EXPECT_EQ(st.writerWakeups.load(), 2u);
    EXPECT_EQ(st.commits.load(), 2u);
    EXPECT_EQ(env.beginRead().get(db, "lazy-2"), "e");
  });
}

TEST_F(GroupLogTest, ALazyJobWakesTheWriterOnlyIfItWouldLookTooLate) { lazyWakeups(dir_.path(), {}); }

TEST_F(GroupLogTest, ALazyJobWakesTheWriterOnlyIfItWouldLookTooLateInRedoMode) {
  GroupCommitLog::Options opts;
  opts.redo = true;
  opts.redoOptions.checkpointEvery = std::chrono::hours(1);  // the writer waits for a checkpoint an hour off
  opts.redoOptions.checkpointIdle = std::chrono::hours(1);
  lazyWakeups(dir_.path(), opts);
}

TEST_F(GroupLogTest, LazyAndForcedWritesToOneKeyLandInSubmissionOrder) {
  // A later write must win even when an earlier forced one and a later lazy
  // one (or the reverse) share a group.
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  {
    WriterGate gate(log);  // hold the writer so everything below queues up
    std::thread other([&] {
      kj::EventLoop loop2;
      kj::WaitScope ws2(loop2);
      auto a = log.run([db](lmdb::Txn& txn) { txn.put(db, "k", "forced-first"); });
      auto b = log.runLazy([db](lmdb::Txn& txn) { txn.put(db, "k", "lazy-second"); });
      auto c = log.runLazy([db](lmdb::Txn& txn) { txn.put(db, "j", "lazy-first"); });
      auto d = log.run([db](lmdb::Txn& txn) { txn.put(db, "j", "forced-second"); });
      kj::evalLater([] {}).wait(ws2);
      std::thread([&gate] { gate.release(); }).detach();
      a.wait(ws2);
      b.wait(ws2);
      c.wait(ws2);
      d.wait(ws2);
    });
    other.join();
  }
  auto read = env.beginRead();
  EXPECT_EQ(read.get(db, "k"), "lazy-second");
  EXPECT_EQ(read.get(db, "j"), "forced-second");
}

// A bundle of one item runs in the job's own nested transaction (one
// fewer): when it throws it still leaves no trace, rejects with its text,
// is counted and rolled back once, and the next turn's bundle commits.
TEST_F(GroupLogTest, AOneItemBundleThatThrowsLeavesNoTrace) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  int rolledBack = 0;
  GroupCommitLog::Options opts;
  opts.onRolledBack = [&rolledBack]() noexcept { ++rolledBack; };
  GroupCommitLog log(env, opts);
  kj::EventLoop loop;
  kj::WaitScope waitScope(loop);
  auto bad = log.run([db](lmdb::Txn& txn) -> int {
    txn.put(db, "poison", "x");
    throw std::runtime_error("the only item fails");
  });
  try {
    bad.wait(waitScope);
    FAIL() << "the failing item resolved";
  } catch (const kj::Exception& e) {
    EXPECT_NE(std::string(e.getDescription().cStr()).find("the only item fails"), std::string::npos);
  }
  EXPECT_EQ(rolledBack, 1);
  EXPECT_EQ(log.stats().failedJobs.load(), 1u);
  log.run([db](lmdb::Txn& txn) { txn.put(db, "good", "y"); }).wait(waitScope);
  EXPECT_EQ(log.stats().jobs.load(), 1u);
  auto read = env.beginRead();
  EXPECT_FALSE(read.get(db, "poison").has_value());
  EXPECT_EQ(read.get(db, "good"), "y");
}

TEST_F(GroupLogTest, RunRejectsWithTheJobsErrorText) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  auto io = kj::setupAsyncIo();
  auto failing = log.run([db](lmdb::Txn& txn) -> int {
    txn.put(db, "bad", "x");
    throw std::runtime_error("no such account: zed");
  });
  auto good = log.run([db](lmdb::Txn& txn) { txn.put(db, "good", "y"); });
  try {
    failing.wait(io.waitScope);
    FAIL() << "the failing job resolved";
  } catch (const kj::Exception& e) {
    EXPECT_NE(std::string(e.getDescription().cStr()).find("no such account: zed"), std::string::npos);
  }
  good.wait(io.waitScope);
  auto read = env.beginRead();
  EXPECT_FALSE(read.get(db, "bad").has_value());
  EXPECT_EQ(read.get(db, "good"), "y");
}

// A child writes records with runSync and reports each acknowledged one;
// whatever it reported must be on disk after it is SIGKILLed.
int writeAndReport(const std::string& path, int fd, int threads, std::uint64_t perThread, bool killSelf) {
  lmdb::Env env(path, {});
  MDB_dbi db = env.openDb("data");
  GroupCommitLog log(env);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < perThread; ++i) {
        std::uint64_t id = (std::uint64_t(t) << 32) | i;
        log.runSync([&](lmdb::Txn& txn) { txn.put(db, u64Key(id), "record " + std::to_string(id)); });
        test::reportU64(fd, id);  // acknowledged: durable
      }
    });
  }
  for (auto& th : ts) th.join();
  if (killSelf) ::raise(SIGKILL);  // no destructor, no shutdown write
  return 0;
}

void expectAllPresent(const std::string& path, const std::vector<std::uint64_t>& acked) {
  lmdb::Env env(path, {});
  MDB_dbi db = env.openDb("data");
  auto read = env.beginRead();
  for (auto id : acked) {
    ASSERT_EQ(read.get(db, u64Key(id)), "record " + std::to_string(id)) << "acknowledged record " << id << " lost";
  }
}

TEST_F(GroupLogTest, AcknowledgedRecordsSurviveSigkillOfTheWriter) {
  // Fork before any environment exists in this process.
  constexpr std::uint64_t kRecords = 200;
  auto child = test::forkChild([&](int fd) { return writeAndReport(dir_.path(), fd, 1, kRecords, true); });
  auto acked = child.readAll();
  int status = child.wait();
  ASSERT_TRUE(test::killedBy(status, SIGKILL)) << "child status " << status;
  ASSERT_EQ(acked.size(), kRecords);
  expectAllPresent(dir_.path(), acked);
}

TEST_F(GroupLogTest, AcknowledgedRecordsSurviveSigkillMidStream) {
  // Four writer threads in the child; the parent kills it while jobs are in
  // flight, so some groups are cut off before or during their commit.
  auto child = test::forkChild([&](int fd) { return writeAndReport(dir_.path(), fd, 4, 1'000'000, false); });
  std::vector<std::uint64_t> acked;
  std::uint64_t id;
  while (acked.size() < 300 && child.readU64(id)) acked.push_back(id);
  ASSERT_EQ(acked.size(), 300u) << "child stopped early";
  ::kill(child.pid, SIGKILL);
  while (child.readU64(id)) acked.push_back(id);  // acks written before it died
  int status = child.wait();
  ASSERT_TRUE(test::killedBy(status, SIGKILL)) << "child status " << status;
  std::set<std::uint64_t> unique(acked.begin(), acked.end());
  EXPECT_EQ(unique.size(), acked.size());
  expectAllPresent(dir_.path(), acked);
}

TEST_F(GroupLogTest, GroupCrashedBeforeCommitLeavesNoTrace) {
  // The child commits 10 records, then crashes at the failpoint just before
  // the 11th record's group commit: the 11th must be absent after restart.
  auto child = test::forkChild([&](int fd) {
    lmdb::Env env(dir_.path(), {});
    MDB_dbi db = env.openDb("data");
    GroupCommitLog log(env);
    for (std::uint64_t i = 0; i < 10; ++i) {
      log.runSync([&](lmdb::Txn& txn) { txn.put(db, u64Key(i), "record " + std::to_string(i)); });
      test::reportU64(fd, i);
    }
    failpoint::configure("log.before_group_commit=crash");
    log.runSync([&](lmdb::Txn& txn) { txn.put(db, u64Key(10), "record 10"); });
    test::reportU64(fd, 10);  // not reached
    return 0;
  });
  auto acked = child.readAll();
  int status = child.wait();
  ASSERT_TRUE(test::killedBy(status, SIGKILL)) << "child status " << status;
  ASSERT_EQ(acked.size(), 10u);
  expectAllPresent(dir_.path(), acked);
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  auto read = env.beginRead();
  EXPECT_FALSE(read.get(db, u64Key(10)).has_value());
  EXPECT_EQ(read.count(db), 10u);
}

// An injected error just before the group commit fails that group's jobs,
// not the process (it once escaped the writer thread: std::terminate).
// Options::onRolledBack: called once for each job, bundle item or group
// that was rolled back instead of committed, never for one that committed.
TEST_F(GroupLogTest, OnRolledBackIsCalledForEveryRollbackAndNothingElse) {
  lmdb::Env env(dir_.path(), {});
  MDB_dbi db = env.openDb("data");
  std::atomic<int> rolledBack{0};
  GroupCommitLog::Options opts;
  opts.onRolledBack = [&rolledBack]() noexcept { rolledBack.fetch_add(1); };
  GroupCommitLog log(env, opts);

  log.runSync([db](lmdb::Txn& txn) { txn.put(db, "a", "1"); });
  EXPECT_EQ(rolledBack.load(), 0);
  EXPECT_THROW(log.runSync([db](lmdb::Txn& txn) {
    txn.put(db, "b", "2");
    throw std::runtime_error("b fails");
  }),
               std::runtime_error);
  EXPECT_EQ(rolledBack.load(), 1) << "a job that threw";

  // Items of one loop bundle: the failing one alone.
  kj::EventLoop loop;
  kj::WaitScope waitScope(loop);
  auto ok = log.run([db](lmdb::Txn& txn) { txn.put(db, "c", "3"); });
  auto bad = log.run([db](lmdb::Txn& txn) {
    txn.put(db, "d", "4");
    throw std::runtime_error("d fails");
  });
  ok.wait(waitScope);
  EXPECT_ANY_THROW(bad.wait(waitScope));
  EXPECT_EQ(rolledBack.load(), 2) << "a bundle item that threw";

  // A whole group whose commit fails (in a child with a log of its own:
  // failpoints are global, and a writer thread does not survive fork).
  std::string childDir = dir_.mkdir("child");
  auto child = test::forkChild([&](int) {
    lmdb::Env childEnv(childDir, {});
    MDB_dbi childDb = childEnv.openDb("data");
    int calls = 0;
    GroupCommitLog::Options childOpts;
    childOpts.onRolledBack = [&calls]() noexcept { ++calls; };
    GroupCommitLog childLog(childEnv, childOpts);
    failpoint::configure("log.before_group_commit=1*error");
    try {
      childLog.runSync([childDb](lmdb::Txn& txn) { txn.put(childDb, "e", "5"); });
      return 1;
    } catch (const failpoint::InjectedError&) {
    }
    return calls == 1 ? 0 : 2;
  });
  int status = child.wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: the failed group was reported durable, 2: onRolledBack not called once";
}

TEST_F(GroupLogTest, InjectedErrorBeforeGroupCommitFailsTheGroupNotTheProcess) {
  auto child = test::forkChild([&](int) {
    lmdb::Env env(dir_.path(), {});
    MDB_dbi db = env.openDb("data");
    GroupCommitLog log(env);
    failpoint::configure("log.before_group_commit=1*error");
    try {
      log.runSync([&](lmdb::Txn& txn) { txn.put(db, "k", "v"); });
      return 1;  // the job must not be reported durable
    } catch (const failpoint::InjectedError&) {
    }
    log.runSync([&](lmdb::Txn& txn) { txn.put(db, "k2", "v"); });  // the log still works
    return 0;
  });
  int status = child.wait();
  EXPECT_TRUE(WIFEXITED(status)) << "child killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace keel
