#pragma once
// GroupCommitLog: one writer thread owns every LMDB write transaction.
//
// Callers hand it jobs (a function run against a write transaction). The
// writer drains everything queued, runs each job in its own nested
// transaction (a job that throws is rolled back alone: "a batch fails as a
// whole", and only that batch), then commits the outer transaction durably
// ONCE for the whole group and only then completes every job. This is
// LevelDB's BuildBatchGroup idea with LMDB's single writer: the cost of one
// fsync pair is shared by everything that arrived while the previous commit
// was syncing.
//
// Durability point: a job's promise resolves only after the group's
// mdb_txn_commit returned, i.e. after the data is on disk. In redo mode
// (Options::redo, common/redo_log.h) the writer keeps one LMDB write
// transaction open between checkpoints, each group in a nested one; the
// group's writes appended to the redo log and flushed are its durability
// point, and it is published to readers (lmdb::Env::publish) before its
// callers are told; a checkpoint commits LMDB behind it without a flush,
// and the flusher thread flushes it (common/redo_log.h: pending
// checkpoints, and what recovery does with one).
//
// Threads: submit()/run() may be called from any thread. run() must be
// called on a thread with a KJ event loop; its promise resolves back on
// that loop (cross-thread fulfiller), never on the writer thread.
//
// Loop bundles: on the first thread that calls run() (the process's main
// event loop), the jobs run() in one event-loop turn are handed to the
// writer as ONE job, then each caller's promise resolves on the loop. The
// bundles a group commit made durable (several turns' worth, when the
// loop turned while the previous group was being written) are handed back
// through one mailbox with ONE cross-thread wake-up per group, not one per
// bundle (docs/performance.md, "twenty-third sitting"). Each still fails alone (the
// bundle's items run in one nested transaction; if one throws, that is
// rolled back and each runs again in its own); durability is unchanged (the bundle is
// durable when its group commit returned). This keeps the per-job cost of
// queueing, waking and completing off the hot path: under load a turn
// carries dozens of jobs (the interactions of one client batch, the
// prepares of one participant batch).

#include <kj/async.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

#include "common/lmdb.h"
#include "common/metrics.h"
#include "common/redo_log.h"
#include "common/types.h"

namespace keel {

class GroupCommitLog {
 public:
  class Job {
   public:
    virtual ~Job() = default;
    // Runs on the writer thread inside a nested write transaction.
    virtual void apply(lmdb::Txn& txn) = 0;
    // Called once on the writer thread: err == nullptr means durable.
    virtual void done(std::exception_ptr err) noexcept = 0;
    // How many callers' jobs this is (Stats::jobs); a loop bundle is many.
    virtual std::size_t count() const { return 1; }
  };

  struct Options {
    std::size_t maxBatch = 8192;  // jobs per durable commit at most
    // A lazy job (runLazy) waits at most this long for a group to ride
    // along with; then it is committed on its own.
    std::chrono::microseconds lazyDelay{2000};
    // Called on the writer thread each time something was rolled back
    // instead of committed: a job's nested transaction (the job threw), an
    // item of a loop bundle, or a whole group (its commit failed). State a
    // job keeps outside LMDB in step with its writes (the ledger's holds,
    // participant/adapters/ledger.h) is then out of step and must be read
    // again from LMDB by the next job. Runs before the failed job's caller
    // hears of the failure. Must not throw.
    std::function<void()> onRolledBack;
    // Tests only: called on the bundling loop each time it has taken the
    // results the writer handed back, before it completes them (a test
    // holds the loop there while the writer hands back more:
    // group_log_test.cc). Not a failpoint, so that the crash matrix,
    // which crashes every failpoint, does not crash here: it would be
    // log.after_redo_durable's case again.
    std::function<void()> loopTookResults;
    // How long a count of the map's free pages stands (roomRefusal: only
    // while the high-water mark is past kRefuseNewAtFill).
    std::chrono::milliseconds roomCountEvery{250};
    // Redo mode (common/redo_log.h): one flush per group instead of two.
    // The env must be opened by openEnvRecovering (a previous run's redo
    // log replayed), and nothing else may write it while the log runs.
    bool redo = false;
    RedoLog::Options redoOptions;
  };

  // Counters; read with relaxed loads (monitoring and benchmarks).
  struct Stats {
    std::atomic<std::uint64_t> commits{0};     // durable LMDB commits (redo mode: durable appends)
    std::atomic<std::uint64_t> jobs{0};        // jobs made durable
    std::atomic<std::uint64_t> failedJobs{0};  // jobs rolled back
    // Times a caller woke the writer (a forced job, or a lazy one the
    // writer would otherwise have looked at too late: enqueue).
    std::atomic<std::uint64_t> writerWakeups{0};
    // Times the writer woke the bundling loop to hand bundles back: at
    // most once per group, however many loop turns' bundles it held.
    std::atomic<std::uint64_t> loopWakeups{0};
    // Jobs per durable commit (the group sizes, for /metrics).
    std::unique_ptr<Histogram> groupSize = Histogram::sizes();
    // Writer thread: first job taken -> the commit's fsync returned.
    std::unique_ptr<Histogram> commitLatency = Histogram::latency();
    // Redo mode: each checkpoint (LMDB's durable commit of the long
    // transaction; its count is the number of checkpoints), during which
    // the writer takes no group: the stall a job queued meanwhile waits out.
    std::unique_ptr<Histogram> checkpointLatency = Histogram::latency();
  };

  GroupCommitLog(lmdb::Env& env, Options opts);
  explicit GroupCommitLog(lmdb::Env& env) : GroupCommitLog(env, Options{}) {}
  // Finishes every queued job, then stops the writer thread.
  ~GroupCommitLog();
  GroupCommitLog(const GroupCommitLog&) = delete;
  GroupCommitLog& operator=(const GroupCommitLog&) = delete;

  void submit(std::unique_ptr<Job> job);
  void submitLazy(std::unique_ptr<Job> job);  // see runLazy
  void enqueue(std::unique_ptr<Job> job, bool lazy);

  // Runs fn(txn) on the writer thread; resolves with its result once durable.
  // fn may run more than once (its group or bundle runs again job by job
  // when another job in it throws, and after a full map in redo mode), each
  // time from a transaction without its earlier writes: it must do the
  // same each time — copy what it captured, never move it out — and keep
  // state beside LMDB only through Options::onRolledBack. The same holds
  // for runLazy, runSync and submitted jobs.
  template <typename Fn>
  auto run(Fn&& fn) -> kj::Promise<std::invoke_result_t<Fn&, lmdb::Txn&>>;

  // Like run(), for writes nobody waits on (records that need not be forced:
  // presumed abort). The job does not start a group commit of its own: it
  // rides along with the next group that other jobs start, or is committed
  // after Options::lazyDelay if none does. Under load this costs nothing;
  // at low load it keeps such writes out of the way of the forced ones (a
  // forced write never waits behind an fsync that only lazy records needed),
  // and it does not wake the writer when the writer looks at its queue
  // within the delay anyway (an idle writer does, lazyDelay after its last
  // group): one client's lazy records cost no wake-up of their own.
  // Measured: docs/performance.md, "nineteenth sitting".
  template <typename Fn>
  auto runLazy(Fn&& fn) -> kj::Promise<std::invoke_result_t<Fn&, lmdb::Txn&>>;

  // Blocking variant for start-up, tools and tests (no event loop needed).
  template <typename Fn>
  auto runSync(Fn&& fn) -> std::invoke_result_t<Fn&, lmdb::Txn&>;
  // Blocking and lazy (see runLazy): returns once durable.
  template <typename Fn>
  auto runSyncLazy(Fn&& fn) -> std::invoke_result_t<Fn&, lmdb::Txn&>;

  const Stats& stats() const { return stats_; }
  lmdb::Env& env() { return env_; }
  bool redo() const { return redo_ != nullptr; }
  // Redo mode: returns once a checkpoint made after every group queued so
  // far has committed (LMDB's file then holds them all: hot backups). Any
  // thread but the writer's; does nothing outside redo mode.
  void checkpointSync();
  // The map's fill at which redo mode turns direct (enterDirect), or that
  // the fill after the next checkpoint would reach if it grew twice as much
  // as over the last one (between checkpoints the long transaction cannot
  // reuse the pages it frees, so a small map fills in steps); new work is
  // refused at 0.9 (kRefuseNewAtFill), and what
  // is in flight must still find room.
  // Past kDirectAtFill the high-water mark alone says little (it never
  // drops, and a checkpoint's transaction takes the free pages LMDB can
  // reuse before it grows the map): what these rules then read is the share
  // in use (lmdb::Env::usedFraction; roomFill). A direct log goes back to
  // redo mode once less than kLeaveDirectAtUsed is in use, counted at most
  // every Options::roomCountEvery: one burst no longer costs two flushes per
  // group until the process stops, nor from the start of every run after.
  static constexpr double kDirectAtFill = 0.75;
  static constexpr double kDirectAtProjectedFill = 0.85;
  static constexpr double kLeaveDirectAtUsed = 0.6;
  // Redo mode committing each group to LMDB directly now (enterDirect).
  // Any thread.
  bool direct() const { return directNow_.load(std::memory_order_relaxed); }
  // Redo mode turned direct because the map is short of room (enterDirect)
  // less than kShortOfRoomGraceUs ago: new work should be refused for that
  // while, as at kRefuseNewAtFill. Until the switch the fill a caller reads
  // lags (LMDB's file grows only at checkpoints, ~10 a second, while a
  // burst may admit hundreds of interactions between two), so refusing at
  // the fill alone let a burst fill the map and left its own finishing
  // writes without room (CI, TinyWalTest, 2026-12-06). Once direct, every
  // group commits to LMDB and the fill is current again: after the grace
  // the 0.9 rule governs alone, as without redo. (Refusing for as long as
  // the process ran would make 75 % of the map the limit for good; the
  // high-water mark never drops, even while retention frees pages.) A
  // start on a map already past kDirectAtFill is direct from the first
  // group, its fill never lagged: no grace. Any thread.
  static constexpr Micros kShortOfRoomGraceUs = 3'000'000;
  bool shortOfRoom() const { return monoMicros() < shortOfRoomUntil_.load(std::memory_order_relaxed); }
  // New work (an interaction at the coordinator, a branch at an agent) is
  // refused at this fill, so that what is in flight can still finish: its
  // writes need room too.
  static constexpr double kRefuseNewAtFill = 0.9;
  // The high-water mark (lmdb::Env::fill) never drops: LMDB reuses the
  // pages that retention and finished work free below it. So a map whose
  // high-water mark once passed kRefuseNewAtFill (a burst, a participant
  // down for an hour and its backlog since drained) takes new work again
  // while what is really in use, the free pages LMDB can reuse left out
  // (lmdb::Env::usedFraction; pages a long reader such as a hot backup
  // still holds count as in use), is below kRefuseNewAtUsed: new pages
  // then come from the free list, not from the map's unused end. Counted
  // at most every Options::roomCountEvery, and only while the high-water
  // mark is at kRefuseNewAtFill or above. A mark that grew since the last
  // count refuses until the next one (the free list did not serve what
  // grew it).
  static constexpr double kRefuseNewAtUsed = 0.8;
  // Why new work should be refused now, or nothing: the map is
  // kRefuseNewAtFill full (as above), or short of room (shortOfRoom). Says
  // how full ("N% full (map_size_mb = M)"), for how long and what to do;
  // the caller names the store. Any thread without a read transaction of
  // this log's environment open.
  std::optional<std::string> roomRefusal() const;

  // One job of a loop bundle (see above); used by run().
  class LoopItem {
   public:
    virtual ~LoopItem() = default;
    virtual void apply(lmdb::Txn& txn) = 0;                // writer thread
    virtual void complete(std::exception_ptr err) = 0;     // the loop, after the group commit
    std::exception_ptr err;                                 // set by the writer if apply threw
  };

 private:
  class Bundle;
  struct LoopMailbox;
  void writerLoop();
  // Writer thread: wakes the bundling loop if bundles are waiting in its
  // mailbox (once per group, after every job of it was told).
  void wakeLoop();
  // The bundling loop: waits for the mailbox (LoopMailbox::armed).
  static void armMailbox(std::shared_ptr<LoopMailbox> mb);
  void rolledBack() noexcept;  // writer thread: Options::onRolledBack
  // Redo mode: one group in a nested transaction of the long one.
  void runRedoGroup(std::vector<std::unique_ptr<Job>>& group, std::vector<Job*>& applied, lmdb::Txn& outer,
                    std::chrono::steady_clock::time_point started);
  // Redo mode: commits the long transaction (fail-stop on error), marked
  // pending in the redo log first. kLater: flushed by the flusher thread
  // (the redo log keeps its groups, and recovery reverts it, until then);
  // kNow: flushed before this returns.
  // A full map (the commit needs pages for LMDB's free list that the map no
  // longer has): LMDB dropped the long transaction, so its durable groups
  // (the overlay) are committed one by one (recommitOneByOne) and false is
  // returned: whatever else it held (a group the redo log did not take, the
  // jobs makeRoomByCheckpoint moved into it) is gone, and its callers must
  // be told so. True: every write of the long transaction is LMDB's.
  enum class Durable { kLater, kNow };
  bool checkpoint(lmdb::Txn& outer, Durable durable = Durable::kLater);
  // Redo mode, a checkpoint hit a full map: each group since the last
  // checkpoint in a durable commit of its own (pending-marked, flushed),
  // with its LSN; fail-stop if one does not fit even alone.
  void recommitOneByOne();
  // Redo mode: Env::sync, fail-stop on error.
  void syncOrStop(const char* where);
  // Redo mode near a full map (roomFill() at kDirectAtFill, or a write or a
  // checkpoint met MDB_MAP_FULL): from now on, until leaveDirect (less
  // than kLeaveDirectAtUsed in use), each group is committed to LMDB with
  // LMDB's own two flushes, as
  // without a redo log, and is not appended: a group that no longer fits
  // then fails alone, before anyone is told, instead of a long transaction
  // of told groups failing at its checkpoint.
  void enterDirect(const char* why, bool atStart = false);
  // Direct, and less than kLeaveDirectAtUsed of the map in use (`used`):
  // groups are appended to the redo log again, one flush each.
  void leaveDirect(double used);
  // Writer thread: the map's share that redo mode's room rules go by: the
  // high-water mark below kDirectAtFill, the share in use above it (the
  // mark when the free pages cannot be counted).
  double roomFill() const;
  // Redo mode, a job hit a full map: checkpoint so the pages the long
  // transaction freed can be reused; `outer` and `g` begin anew. False:
  // the checkpoint met a full map and the jobs already applied in `g` are
  // lost (checkpoint above).
  bool makeRoomByCheckpoint(lmdb::Txn& outer, lmdb::Txn& g);
  // A job that threw: Options::onRolledBack, then its caller hears.
  void failJob(Job& j, std::exception_ptr err) noexcept;
  [[noreturn]] static void failStop(const char* where, const std::exception& e) noexcept;
  // True on the bundling loop's thread (the first thread that called run()).
  bool onBundlingLoop();
  // Hands this turn's bundles to the writer at the end of the turn.
  void scheduleLoopFlush();
  template <typename Fn>
  auto runOn(bool lazy, Fn&& fn) -> kj::Promise<std::invoke_result_t<Fn&, lmdb::Txn&>>;
  template <typename Fn>
  auto runSyncOn(bool lazy, Fn&& fn) -> std::invoke_result_t<Fn&, lmdb::Txn&>;

  lmdb::Env& env_;
  const Options opts_;
  Stats stats_;
  std::mutex mu_;
  std::condition_variable cv_;
  // Jobs in submission order (lazy or not: a group keeps that order, so a
  // later write to a key always wins). GUARDED_BY(mu_).
  struct Queued {
    std::unique_ptr<Job> job;
    bool lazy;
  };
  std::deque<Queued> queue_;
  std::size_t forcedQueued_ = 0;                     // GUARDED_BY(mu_): non-lazy jobs in queue_
  std::chrono::steady_clock::time_point queuedSince_;  // GUARDED_BY(mu_): when queue_ stopped being empty
  // GUARDED_BY(mu_): when the writer, waiting, looks at the queue next
  // without being woken (max: it sleeps until woken; min: it is not
  // waiting, it looks as soon as its group is done).
  std::chrono::steady_clock::time_point writerLooksAt_ = std::chrono::steady_clock::time_point::min();
  bool stopping_ = false;                   // GUARDED_BY(mu_)
  // Loop bundling: touched only by the bundling loop's thread.
  std::atomic<std::thread::id> loopThread_{};
  std::vector<std::unique_ptr<LoopItem>> loopPending_;
  bool loopForced_ = false;  // this turn's bundle holds a non-lazy item
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for flushes scheduled on the loop
  std::shared_ptr<LoopMailbox> mailbox_;  // bundles done, on their way back to the loop
  std::unique_ptr<RedoLog> redo_;  // redo mode; used by the writer thread only once it runs
  bool checkpointAsked_ = false;   // writer thread: checkpointSync's job ran in this group
  bool mapFullRetryable_ = false;  // writer thread: a full map may still be cured by a checkpoint
  bool direct_ = false;            // writer thread: enterDirect ran, leaveDirect did not since
  std::atomic<bool> directNow_{false};  // direct_, for direct()
  Micros directCountedAt_ = 0;     // writer thread: leaveDirect's last count of the map (monoMicros)
  std::atomic<Micros> shortOfRoomUntil_{0};  // see shortOfRoom (monoMicros)
  // roomRefusal's last measure of the map, GUARDED_BY(roomMu_): the share
  // in use (usedFraction) and the high-water mark (fill) then; at == 0:
  // never measured.
  struct RoomMeasure {
    double used = 1, fill = 1;
    Micros at = 0;
  };
  mutable std::mutex roomMu_;
  mutable RoomMeasure room_;
  // The share of the map in use below a high-water mark of `fill` (see
  // kRefuseNewAtUsed), counted now if the last count is too old; nothing
  // when the high-water mark grew since the last count, or there has been
  // none (`counted` false: this thread could not count).
  std::optional<double> usedBelow(double fill, bool& counted) const;
  double lastFill_ = 0;            // writer thread: the map's fill after the last checkpoint
  std::uint64_t redoBytesSince_ = 0;  // writer thread: bytes appended to the redo log since the last checkpoint
  double fillPerRedoByte_ = 0;        // writer thread: see roomCheckpointWanted
  bool roomCheckpointWanted() const;  // writer thread, redo mode
  static constexpr double kMapBytesPerRedoBytePrior = 16;
  // Redo mode: the flusher thread flushes data.mdb after each checkpoint
  // committed without a flush; the writer waits for it only before the
  // next checkpoint (at most one unflushed). GUARDED_BY(flushMu_).
  std::mutex flushMu_;
  std::condition_variable flushCv_;
  std::uint64_t flushAsked_ = 0, flushDone_ = 0;
  bool flushStop_ = false;
  std::thread flusher_;  // before writer_: started first, so that the writer can count on it
  void flusherLoop();
  void askFlush();
  void waitFlushed();
  void stopFlusher();
  std::thread writer_;
};

// Converts a writer-side exception into a KJ exception, keeping the text.
kj::Exception toKjException(std::exception_ptr err);

namespace detail {

// A job that runs fn(txn) and keeps its result until done().
template <typename T, typename Fn>
class ResultJob : public GroupCommitLog::Job {
 public:
  explicit ResultJob(Fn fn) : fn_(std::move(fn)) {}
  void apply(lmdb::Txn& txn) override {
    if constexpr (std::is_void_v<T>) {
      fn_(txn);
    } else {
      result_.emplace(fn_(txn));
    }
  }

 protected:
  Fn fn_;
  std::optional<std::conditional_t<std::is_void_v<T>, int, T>> result_;
};

template <typename T, typename Fn>
class KjJob final : public ResultJob<T, Fn> {
 public:
  KjJob(Fn fn, kj::Own<kj::CrossThreadPromiseFulfiller<T>> f)
      : ResultJob<T, Fn>(std::move(fn)), fulfiller_(kj::mv(f)) {}
  ~KjJob() noexcept override {}
  void done(std::exception_ptr err) noexcept override {
    if (err) {
      fulfiller_->reject(toKjException(err));
    } else if constexpr (std::is_void_v<T>) {
      fulfiller_->fulfill();
    } else {
      fulfiller_->fulfill(std::move(*this->result_));
    }
  }

 private:
  kj::Own<kj::CrossThreadPromiseFulfiller<T>> fulfiller_;
};

template <typename T, typename Fn>
class SyncJob final : public ResultJob<T, Fn> {
 public:
  explicit SyncJob(Fn fn) : ResultJob<T, Fn>(std::move(fn)) {}
  void done(std::exception_ptr err) noexcept override {
    if (err) {
      promise_.set_exception(err);
    } else if constexpr (std::is_void_v<T>) {
      promise_.set_value();
    } else {
      promise_.set_value(std::move(*this->result_));
    }
  }
  std::future<T> future() { return promise_.get_future(); }

 private:
  std::promise<T> promise_;
};

}  // namespace detail

namespace detail {

// A loop-bundle item: runs fn on the writer, resolves on the loop.
template <typename T, typename Fn>
class LoopJob final : public GroupCommitLog::LoopItem {
 public:
  LoopJob(Fn fn, kj::Own<kj::PromiseFulfiller<T>> f) : fn_(std::move(fn)), fulfiller_(kj::mv(f)) {}
  ~LoopJob() noexcept override {}
  void apply(lmdb::Txn& txn) override {
    if constexpr (std::is_void_v<T>) {
      fn_(txn);
    } else {
      result_.emplace(fn_(txn));
    }
  }
  void complete(std::exception_ptr e) override {
    if (e) {
      fulfiller_->reject(toKjException(e));
    } else if constexpr (std::is_void_v<T>) {
      fulfiller_->fulfill();
    } else {
      fulfiller_->fulfill(std::move(*result_));
    }
  }

 private:
  Fn fn_;
  std::optional<std::conditional_t<std::is_void_v<T>, int, T>> result_;
  kj::Own<kj::PromiseFulfiller<T>> fulfiller_;
};

}  // namespace detail

template <typename Fn>
auto GroupCommitLog::run(Fn&& fn) -> kj::Promise<std::invoke_result_t<Fn&, lmdb::Txn&>> {
  return runOn(false, std::forward<Fn>(fn));
}

template <typename Fn>
auto GroupCommitLog::runLazy(Fn&& fn) -> kj::Promise<std::invoke_result_t<Fn&, lmdb::Txn&>> {
  return runOn(true, std::forward<Fn>(fn));
}

template <typename Fn>
auto GroupCommitLog::runOn(bool lazy, Fn&& fn) -> kj::Promise<std::invoke_result_t<Fn&, lmdb::Txn&>> {
  using T = std::invoke_result_t<Fn&, lmdb::Txn&>;
  if (onBundlingLoop()) {
    auto local = kj::newPromiseAndFulfiller<T>();
    bool first = loopPending_.empty();
    loopPending_.push_back(
        std::make_unique<detail::LoopJob<T, std::decay_t<Fn>>>(std::forward<Fn>(fn), kj::mv(local.fulfiller)));
    loopForced_ = loopForced_ || !lazy;  // one bundle per turn, in order: lazy only if all of it is
    if (first) scheduleLoopFlush();
    return kj::mv(local.promise);
  }
  auto paf = kj::newPromiseAndCrossThreadFulfiller<T>();
  auto job = std::make_unique<detail::KjJob<T, std::decay_t<Fn>>>(std::forward<Fn>(fn), kj::mv(paf.fulfiller));
  if (lazy) {
    submitLazy(std::move(job));
  } else {
    submit(std::move(job));
  }
  return kj::mv(paf.promise);
}

template <typename Fn>
auto GroupCommitLog::runSync(Fn&& fn) -> std::invoke_result_t<Fn&, lmdb::Txn&> {
  return runSyncOn(false, std::forward<Fn>(fn));
}

template <typename Fn>
auto GroupCommitLog::runSyncLazy(Fn&& fn) -> std::invoke_result_t<Fn&, lmdb::Txn&> {
  return runSyncOn(true, std::forward<Fn>(fn));
}

template <typename Fn>
auto GroupCommitLog::runSyncOn(bool lazy, Fn&& fn) -> std::invoke_result_t<Fn&, lmdb::Txn&> {
  using T = std::invoke_result_t<Fn&, lmdb::Txn&>;
  auto job = std::make_unique<detail::SyncJob<T, std::decay_t<Fn>>>(std::forward<Fn>(fn));
  auto fut = job->future();
  enqueue(std::move(job), lazy);
  return fut.get();
}

}  // namespace keel
