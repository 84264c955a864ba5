#include "common/group_log.h"

#include <algorithm>
#include <vector>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <kj/debug.h>

#include "common/failpoint.h"
#include "common/log.h"
#include "common/fault.h"

namespace keel {

kj::Exception toKjException(std::exception_ptr err) {
  try {
    std::rethrow_exception(err);
  } catch (const kj::Exception& e) {
    return e;
  } catch (const std::exception& e) {
    return faultException(e.what());  // the text as it is, no source text around it
  } catch (...) {
    return KJ_EXCEPTION(FAILED, "unknown exception in log writer");
  }
}

// What a bundle hands back to the loop: its items (so that they are
// destroyed there, where their fulfillers belong) and the group's outcome.
struct BundleResult {
  std::vector<std::unique_ptr<GroupCommitLog::LoopItem>> items;
  std::exception_ptr groupErr;  // the group commit failed: nothing is durable
};

// Where done bundles wait for the bundling loop. The writer puts each
// bundle's result in `ready` as the bundle is told (Bundle::done) and wakes
// the loop once the whole group was told (wakeLoop): one cross-thread
// wake-up per group however many turns' bundles it held. Shared with the
// loop's waiting promise, so that it outlives the log: bundles done while
// the log is destroyed are still completed on the loop, as before.
//
// No lost wake-up: the loop, when it arms (armMailbox), takes results
// already waiting at once; otherwise it leaves `waker`, and the writer
// fulfils it only when `ready` is not empty. Both under `mu`.
//
// The mailbox is armed on one event loop, the bundling loop, which must
// outlive the bundles it handed over (in Keel: the process's one loop,
// which outlives its logs). A loop destroyed while bundles were out would
// leave it armed on a promise that no longer exists.
struct GroupCommitLog::LoopMailbox {
  explicit LoopMailbox(std::function<void()> took) : tookResults(std::move(took)) {}
  const std::function<void()> tookResults;  // Options::loopTookResults
  std::mutex mu;
  std::vector<BundleResult> ready;                       // GUARDED_BY(mu)
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> waker;  // GUARDED_BY(mu): the loop waits on it
  // The bundling loop's thread only:
  std::size_t outstanding = 0;  // bundles handed to the writer, not yet completed here
  bool armed = false;           // a promise waits on `waker` (or on results already there)
};

void GroupCommitLog::wakeLoop() {
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> waker;
  {
    std::lock_guard<std::mutex> lk(mailbox_->mu);
    if (mailbox_->ready.empty() || !mailbox_->waker) return;
    waker = kj::mv(mailbox_->waker);
  }
  stats_.loopWakeups.fetch_add(1, std::memory_order_relaxed);
  waker->fulfill();
}

void GroupCommitLog::armMailbox(std::shared_ptr<LoopMailbox> mb) {
  mb->armed = true;
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  {
    std::lock_guard<std::mutex> lk(mb->mu);
    if (mb->ready.empty()) {
      mb->waker = kj::mv(paf.fulfiller);
    } else {
      paf.fulfiller->fulfill();  // results came while the loop was not waiting: no wake-up needed
    }
  }
  paf.promise
      .then([mb]() {
        mb->armed = false;
        std::vector<BundleResult> done;
        {
          std::lock_guard<std::mutex> lk(mb->mu);
          done.swap(mb->ready);
        }
        // Tests: the writer hands back more while the loop is here, not
        // armed (its results must be taken when the loop arms again).
        if (mb->tookResults) mb->tookResults();
        mb->outstanding -= done.size();
        // Armed again for the bundles still out even if a completion throws
        // (the throw is logged below): they must not wait for good.
        KJ_DEFER(if (mb->outstanding > 0 && !mb->armed) armMailbox(mb));
        // Completing may run new jobs; their bundles are handed over at the
        // end of this turn (scheduleLoopFlush) and arm the mailbox then.
        for (auto& r : done) {
          for (auto& item : r.items) item->complete(r.groupErr ? r.groupErr : item->err);
        }
      })
      .detach([](kj::Exception&& e) { KJ_LOG(ERROR, "log bundle completion failed", e); });
}

GroupCommitLog::GroupCommitLog(lmdb::Env& env, Options opts)
    : env_(env),
      opts_(opts),
      mailbox_(std::make_shared<LoopMailbox>(opts.loopTookResults)),
      redo_(opts.redo ? std::make_unique<RedoLog>(env, opts.redoOptions) : nullptr),
      flusher_(opts.redo ? std::thread([this] { flusherLoop(); }) : std::thread()),
      writer_([this] { writerLoop(); }) {
  if (redo_) env_.setLogOwned(true);
}

void GroupCommitLog::flusherLoop() {
  std::unique_lock<std::mutex> lk(flushMu_);
  for (;;) {
    flushCv_.wait(lk, [&] { return flushStop_ || flushAsked_ > flushDone_; });
    if (flushAsked_ == flushDone_) return;  // stopping, nothing left
    std::uint64_t upTo = flushAsked_;
    lk.unlock();
    try {
      env_.sync();  // the checkpoint's pages and meta page: durable now
    } catch (const std::exception& e) {
      failStop("redo log: checkpoint flush", e);
    }
    lk.lock();
    flushDone_ = upTo;
    flushCv_.notify_all();
  }
}

void GroupCommitLog::askFlush() {
  {
    std::lock_guard<std::mutex> lk(flushMu_);
    ++flushAsked_;
  }
  flushCv_.notify_all();
}

void GroupCommitLog::waitFlushed() {
  std::unique_lock<std::mutex> lk(flushMu_);
  flushCv_.wait(lk, [&] { return flushDone_ == flushAsked_; });
}

void GroupCommitLog::stopFlusher() {
  if (!flusher_.joinable()) return;
  {
    std::lock_guard<std::mutex> lk(flushMu_);
    flushStop_ = true;
  }
  flushCv_.notify_all();
  flusher_.join();
}

GroupCommitLog::~GroupCommitLog() {
  *alive_ = false;  // a flush still scheduled on the loop does nothing
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  writer_.join();  // in redo mode after a last checkpoint: nothing left to replay
  stopFlusher();
  env_.setLogOwned(false);
}

void GroupCommitLog::failStop(const char* where, const std::exception& e) noexcept {
  // Whether the group reached the disk is unknown: nobody may be told
  // anything. The restart's recovery decides from what is on disk.
  std::fprintf(stderr, "keel: FATAL: %s failed: %s; stopping the process (the next start recovers)\n", where,
               e.what());
  std::fflush(stderr);
  std::abort();
}

void GroupCommitLog::submit(std::unique_ptr<Job> job) { enqueue(std::move(job), false); }

void GroupCommitLog::submitLazy(std::unique_ptr<Job> job) { enqueue(std::move(job), true); }

void GroupCommitLog::enqueue(std::unique_ptr<Job> job, bool lazy) {
  bool wake;
  {
    std::lock_guard<std::mutex> lk(mu_);
    // A lazy job needs the writer only to learn its deadline (first in
    // queue), and not even that when the writer will look at the queue
    // before the deadline anyway (writerLooksAt_): the lazy records of one
    // client's interactions (an agent's COMMITTED, the coordinator's final
    // record) then cost no wake-up of their own, they ride with the next
    // forced group.
    auto now = std::chrono::steady_clock::now();
    wake = !lazy || (queue_.empty() && writerLooksAt_ > now + opts_.lazyDelay);
    if (queue_.empty()) queuedSince_ = now;
    if (!lazy) ++forcedQueued_;
    queue_.push_back(Queued{std::move(job), lazy});
  }
  if (wake) {
    stats_.writerWakeups.fetch_add(1, std::memory_order_relaxed);
    cv_.notify_one();
  }
}

void GroupCommitLog::writerLoop() {
  std::vector<std::unique_ptr<Job>> group;
  std::vector<Job*> applied;
  lmdb::Txn outer;  // redo mode: open from the first group after a checkpoint to the next checkpoint
  // Until when an idle writer waits before it sleeps for good: lazyDelay
  // after its last group started (see enqueue).
  auto idleLook = std::chrono::steady_clock::time_point::min();
  if (redo_) env_.deferSync(true);  // checkpoints: flushed by the flusher thread
  if (redo_) {
    lastFill_ = env_.fill();
    // Until a checkpoint has measured it: a redo byte is taken to cost
    // kMapBytesPerRedoBytePrior bytes of map (measured: about 1 in the
    // coordinator's WAL; with a 1 GiB map the guess never triggers
    // anything, a redo.log half fills first).
    fillPerRedoByte_ = kMapBytesPerRedoBytePrior / double(env_.mapSize());
  }
  if (redo_ && lastFill_ >= kDirectAtFill) {
    lastFill_ = roomFill();  // a high-water mark from an earlier burst: what is in use now
    if (lastFill_ >= kDirectAtFill) enterDirect("the map is nearly full at the start", true);
  }
  for (;;) {
    // Every path through a group (and the stop) comes back here: no bundle
    // it told waits unwoken. Only a redo group wakes the loop sooner, before
    // a checkpoint (runRedoGroup).
    wakeLoop();
    group.clear();
    applied.clear();
    {
      std::unique_lock<std::mutex> lk(mu_);
      // Only lazy jobs queued: they start a group once the oldest waited
      // lazyDelay (or at shutdown); any other job takes them along at once.
      // Redo mode: a checkpoint that falls due meanwhile is made here.
      // Every wait says until when (writerLooksAt_), so that enqueue wakes
      // the writer for a lazy job only if it would look too late; an idle
      // writer looks once more lazyDelay after its last group (idleLook)
      // before it sleeps without a deadline.
      using Clock = std::chrono::steady_clock;
      auto waitUntil = [&](Clock::time_point until) {
        writerLooksAt_ = until;
        auto status = std::cv_status::no_timeout;
        if (until == Clock::time_point::max()) {
          cv_.wait(lk);
        } else {
          status = cv_.wait_until(lk, until);
        }
        writerLooksAt_ = Clock::time_point::min();
        return status;
      };
      for (;;) {
        if (stopping_ || forcedQueued_ > 0) break;
        bool checkpointWaits = redo_ && redo_->pending() > 0;
        if (queue_.empty() && !checkpointWaits) {
          waitUntil(Clock::now() < idleLook ? idleLook : Clock::time_point::max());
          continue;
        }
        // Nothing queued: an idle writer checkpoints sooner.
        auto due = [&] { return queue_.empty() ? redo_->checkpointDueIdle() : redo_->checkpointDue(); };
        auto until = queue_.empty() ? due() : queuedSince_ + opts_.lazyDelay;
        if (checkpointWaits) until = std::min(until, due());
        if (queue_.empty() && Clock::now() < idleLook) until = std::min(until, idleLook);
        if (waitUntil(until) == std::cv_status::timeout) {
          if (redo_ && redo_->pending() > 0 && std::chrono::steady_clock::now() >= due()) {
            lk.unlock();
            checkpoint(outer);
            lk.lock();
            continue;
          }
          if (!queue_.empty()) break;
        }
      }
      if (queue_.empty()) {  // stopping and drained
        lk.unlock();
        if (redo_) {
          // Nothing left to replay: the last checkpoint is flushed even
          // when no group came after it.
          checkpoint(outer, Durable::kNow);
          waitFlushed();
          syncOrStop("redo log: the last flush");
          try {
            redo_->markPending(0);  // a clean stop leaves nothing pending
          } catch (const std::exception& e) {
            failStop("redo log: clearing the pending checkpoint", e);
          }
          env_.deferSync(false);
        }
        return;
      }
      while (!queue_.empty() && group.size() < opts_.maxBatch) {
        if (!queue_.front().lazy) --forcedQueued_;
        group.push_back(std::move(queue_.front().job));
        queue_.pop_front();
      }
      if (!queue_.empty()) queuedSince_ = std::chrono::steady_clock::now();
    }

    auto groupStarted = std::chrono::steady_clock::now();
    idleLook = groupStarted + opts_.lazyDelay;
    if (redo_) {
      runRedoGroup(group, applied, outer, groupStarted);
      continue;
    }
    lmdb::Txn txn;
    try {
      txn = env_.beginWrite();
    } catch (...) {
      auto err = std::current_exception();
      for (auto& j : group) j->done(err);
      stats_.failedJobs.fetch_add(group.size(), std::memory_order_relaxed);
      continue;
    }
    for (auto& j : group) {
      try {
        lmdb::Txn inner = env_.beginNested(txn);
        j->apply(inner);
        inner.commit();
        applied.push_back(j.get());
      } catch (...) {
        failJob(*j, std::current_exception());
      }
    }
    try {
      KEEL_FAILPOINT("log.before_group_commit");
      txn.commit();  // durability point for every job in `applied`
    } catch (...) {
      txn.abort();
      auto err = std::current_exception();
      rolledBack();  // before the callers hear of it
      for (Job* j : applied) j->done(err);
      stats_.failedJobs.fetch_add(applied.size(), std::memory_order_relaxed);
      continue;
    }
    stats_.commits.fetch_add(1, std::memory_order_relaxed);
    stats_.commitLatency->observe(std::uint64_t(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - groupStarted).count()));
    std::size_t jobs = 0;
    for (Job* j : applied) jobs += j->count();
    stats_.jobs.fetch_add(jobs, std::memory_order_relaxed);
    stats_.groupSize->observe(jobs);
    for (Job* j : applied) j->done(nullptr);
  }
}

void GroupCommitLog::runRedoGroup(std::vector<std::unique_ptr<Job>>& group, std::vector<Job*>& applied,
                                  lmdb::Txn& outer, std::chrono::steady_clock::time_point started) {
  lmdb::Txn g;
  // The group's recorded transaction; if it cannot begin, every job fails.
  auto beginGroup = [&] {
    try {
      if (!outer) outer = env_.beginLogWrite();
      g = env_.beginRecordedNested(outer);
      return true;
    } catch (...) {
      auto err = std::current_exception();
      stats_.failedJobs.fetch_add(group.size(), std::memory_order_relaxed);
      for (auto& j : group) j->done(err);
      return false;
    }
  };
  if (!beginGroup()) return;
  // Optimistically every job straight in the group's transaction, as a
  // bundle does with its items (Bundle::apply): a nested transaction per
  // job costs its page lists. Jobs rarely throw. When one does, the
  // group's transaction is aborted (its recorded writes with it), the
  // state kept beside LMDB marked stale (once), the job that threw fails
  // with its error without running again, and the group runs again job by
  // job, each in a nested transaction of its own; a full map is not
  // blamed on a job: the job by job run handles it (a checkpoint first).
  std::size_t failed = 0;
  std::exception_ptr failedErr;
  mapFullRetryable_ = true;  // a bundle hands a full map up, to the job by job run
  try {
    for (; failed < group.size(); ++failed) group[failed]->apply(g);
  } catch (const lmdb::MapFullError&) {
  } catch (...) {
    failedErr = std::current_exception();
  }
  if (failed == group.size()) {
    for (auto& j : group) applied.push_back(j.get());
  } else {
    g.abort();
    rolledBack();
    if (!beginGroup()) return;
  }
  for (std::size_t i = 0; failed < group.size() && i < group.size(); ++i) {
    auto& j = group[i];
    if (i == failed && failedErr) {
      stats_.failedJobs.fetch_add(1, std::memory_order_relaxed);
      j->done(failedErr);  // rolled back above, with the group's transaction
      continue;
    }
    for (int attempt = 0;; ++attempt) {
      mapFullRetryable_ = attempt == 0;
      try {
        lmdb::Txn inner = env_.beginNested(g);
        j->apply(inner);
        inner.commit();
        applied.push_back(j.get());
      } catch (const lmdb::MapFullError&) {
        if (attempt == 0 && redo_->pending() + applied.size() > 0) {
          rolledBack();
          if (!makeRoomByCheckpoint(outer, g)) {
            // The jobs applied before this one went with the long
            // transaction: nothing of theirs is durable.
            auto err = std::make_exception_ptr(lmdb::MapFullError(
                "mdb_txn_commit: MDB_MAP_FULL: the map filled up at a checkpoint (the LMDB map is full: raise "
                "map_size in the config)"));
            for (Job* a : applied) a->done(err);
            stats_.failedJobs.fetch_add(applied.size(), std::memory_order_relaxed);
            applied.clear();
          }
          continue;
        }
        failJob(*j, std::current_exception());
      } catch (...) {
        failJob(*j, std::current_exception());
      }
      break;
    }
  }
  std::string ops = g.takeRedo();
  bool durable = false;  // appended to the redo log
  try {
    KEEL_FAILPOINT("log.before_group_commit");
  } catch (...) {
    // As a failed commit: the group leaves no trace (the long transaction
    // never saw it).
    auto err = std::current_exception();
    g.abort();
    rolledBack();
    for (Job* j : applied) j->done(err);
    stats_.failedJobs.fetch_add(applied.size(), std::memory_order_relaxed);
    return;
  }
  std::shared_ptr<const lmdb::Delta> delta;
  try {
    if (!ops.empty()) {
      delta = lmdb::toDelta(env_, ops);
      durable = !direct_ && redo_->append(ops);  // durability point for every job in `applied`
      if (durable) redoBytesSince_ += ops.size();
    }
  } catch (const std::exception& e) {
    failStop("redo log: append", e);
  }
  if (durable) {
    try {
      KEEL_FAILPOINT("log.after_redo_durable");  // crash tests; an error here is a failed process too
    } catch (const std::exception& e) {
      failStop("redo log: after the group was durable", e);
    }
  }
  try {
    g.commit();  // into the long transaction: LMDB's at the next checkpoint
  } catch (const std::exception& e) {
    failStop("redo log: nested commit after the group was durable", e);
  }
  if (!ops.empty()) {
    if (durable) {
      env_.publish(std::move(delta));  // readers see it before any caller is told
    } else if (!checkpoint(outer, Durable::kNow)) {  // the half is full: LMDB's commit and a flush make the group durable
      // A full map took the group with the long transaction.
      auto err = std::make_exception_ptr(lmdb::MapFullError(
          "mdb_txn_commit: MDB_MAP_FULL: the map filled up at a checkpoint (the LMDB map is full: raise map_size "
          "in the config)"));
      rolledBack();
      for (Job* j : applied) j->done(err);
      stats_.failedJobs.fetch_add(applied.size(), std::memory_order_relaxed);
      return;
    }
    stats_.commits.fetch_add(1, std::memory_order_relaxed);
  }
  stats_.commitLatency->observe(std::uint64_t(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started).count()));
  if (checkpointAsked_) {
    checkpointAsked_ = false;
    checkpoint(outer, Durable::kNow);  // before checkpointSync's caller hears
  }
  std::size_t jobs = 0;
  for (Job* j : applied) jobs += j->count();
  stats_.jobs.fetch_add(jobs, std::memory_order_relaxed);
  stats_.groupSize->observe(jobs);
  for (Job* j : applied) j->done(nullptr);
  wakeLoop();  // before a checkpoint, which may take milliseconds
  if (redo_->pending() > 0 && (std::chrono::steady_clock::now() >= redo_->checkpointDue() || roomCheckpointWanted())) {
    checkpoint(outer);
  }
}

std::optional<double> GroupCommitLog::usedBelow(double fill, bool& counted) const {
  std::lock_guard<std::mutex> lk(roomMu_);
  counted = true;
  Micros now = monoMicros();
  Micros every = Micros(std::chrono::duration_cast<std::chrono::microseconds>(opts_.roomCountEvery).count());
  if (room_.at == 0 || now - room_.at >= every) {
    try {
      // The high-water mark first: a commit in between can only make the
      // count look older (it grew since), never fresher.
      double f = env_.fill();
      room_ = RoomMeasure{env_.usedFraction(), f, now};
    } catch (const std::exception& e) {
      // A caller with a read transaction open, most likely: the last
      // measure stands, and refuses once the mark moves past it.
      KEEL_LOG_DEBUG("log: cannot measure the map's free pages now: {}", e.what());
      if (room_.at == 0) {
        counted = false;
        return std::nullopt;
      }
    }
  }
  if (fill > room_.fill) return std::nullopt;  // grew since: the free list did not serve it
  return room_.used;
}

std::optional<std::string> GroupCommitLog::roomRefusal() const {
  double fill = env_.fill();
  bool short_ = shortOfRoom();
  if (fill < kRefuseNewAtFill && !short_) return std::nullopt;
  std::optional<double> used;
  bool counted = true;
  if (!short_) {
    used = usedBelow(fill, counted);
    if (used && *used < kRefuseNewAtUsed) return std::nullopt;
  }
  std::string how =
      std::to_string(int(fill * 100)) + "% full (map_size_mb = " + std::to_string(env_.mapSize() >> 20) + ")";
  if (used) how += ", " + std::to_string(int(*used * 100)) + "% of it in use";
  if (fill < kRefuseNewAtFill) {
    return how + " and its redo log has just turned direct for want of room: new work is refused for " +
           std::to_string(kShortOfRoomGraceUs / 1'000'000) + " s; raise map_size_mb";
  }
  if (used) {
    return how + ": new work is refused until less than " + std::to_string(int(kRefuseNewAtUsed * 100)) +
           "% is in use (as finished records are released) or map_size_mb is raised";
  }
  if (!counted) return how + " and its free pages cannot be counted now: new work is refused until map_size_mb is raised";
  return how + " and growing: new work is refused until its free pages are counted again (" +
         std::to_string(opts_.roomCountEvery.count()) + " ms) or map_size_mb is raised";
}

bool GroupCommitLog::roomCheckpointWanted() const {
  // Between checkpoints the map's fill is not known (LMDB's file grows at
  // its commits); the redo bytes since the last one, at what a redo byte
  // cost in map over the last ones, say how far it may have grown. Once
  // that may have reached kDirectAtFill, checkpoint now: the fill is then
  // read, and the log turns direct if it is that full, before a burst
  // admitted against the old fill can fill the map (a 1 MiB map at
  // thousands of interactions a second: TinyWalTest).
  return !direct_ && fillPerRedoByte_ > 0 && lastFill_ + double(redoBytesSince_) * fillPerRedoByte_ >= kDirectAtFill;
}

bool GroupCommitLog::makeRoomByCheckpoint(lmdb::Txn& outer, lmdb::Txn& g) {
  // The long transaction cannot reuse the pages it freed itself until it
  // commits: the jobs of `g` so far are made durable by a checkpoint
  // (LMDB's commit and a flush, not the redo log), and LMDB reuses a page only two
  // commits after the one that freed it (the previous snapshot stays
  // whole), so one more small commit follows.
  try {
    g.takeRedo();
    g.commit();
  } catch (const std::exception& e) {
    failStop("redo log: making room in a full map", e);
  }
  bool kept = checkpoint(outer, Durable::kNow);
  try {
    outer = env_.beginLogWrite();
    redo_->stamp(outer);
    // Pending like a checkpoint: without a flush before its meta page, a
    // power loss could leave the meta page without its pages.
    redo_->markPending(outer.id());
    try {
      outer.commit();
      env_.sync();
    } catch (const lmdb::MapFullError&) {
      // Nothing needed it: it only let the freed pages be reused.
    }
    redo_->markPending(0);
  } catch (const std::exception& e) {
    failStop("redo log: making room in a full map", e);
  }
  enterDirect("a write met a full map");
  try {
    outer = env_.beginLogWrite();
    g = env_.beginRecordedNested(outer);
  } catch (const std::exception& e) {
    failStop("redo log: making room in a full map", e);
  }
  return kept;
}

void GroupCommitLog::failJob(Job& j, std::exception_ptr err) noexcept {
  // The job's nested transaction was aborted: it left no trace.
  rolledBack();  // before the caller hears of it, as the count is
  stats_.failedJobs.fetch_add(1, std::memory_order_relaxed);
  j.done(err);
}

void GroupCommitLog::checkpointSync() {
  if (!redo_) return;
  runSync([this](lmdb::Txn&) { checkpointAsked_ = true; });
}

bool GroupCommitLog::checkpoint(lmdb::Txn& outer, Durable durable) {
  if (!outer) return true;
  auto started = std::chrono::steady_clock::now();
  waitFlushed();  // at most one checkpoint unflushed: the one before this is durable
  bool kept = true;
  // Direct: LMDB's commit flushes itself (pages, then meta page): never pending.
  const bool deferred = !direct_;
  try {
    // Pending first: if this commit's meta page reaches the disk before
    // its flush confirmed its pages, recovery reverts it.
    if (deferred) redo_->markPending(outer.id());
    redo_->stamp(outer);
    try {
      KEEL_FAILPOINT("log.checkpoint_map_full");  // tests: this commit meets a full map
    } catch (const failpoint::InjectedError&) {
      throw lmdb::MapFullError("mdb_txn_commit: MDB_MAP_FULL (failpoint log.checkpoint_map_full)");
    }
    // LMDB now holds every group of the redo log, in the page cache: the
    // flusher thread (or the flush here) makes it durable; the redo log
    // keeps this half's records until the next checkpoint, which waits
    // for that flush.
    outer.commit();
  } catch (const lmdb::MapFullError&) {
    outer.abort();  // LMDB dropped it (a failed commit), or the stamp did not fit
    recommitOneByOne();
    kept = false;
  } catch (const std::exception& e) {
    failStop("redo log: checkpoint", e);
  }
  if (!deferred) {
    // Flushed by its commit.
  } else if (kept && durable == Durable::kNow) {
    syncOrStop("redo log: checkpoint flush");
    // Not pending any more: such a checkpoint may hold a group the redo
    // log does not (a full half, a full map), so recovery must never
    // revert it.
    try {
      redo_->markPending(0);
    } catch (const std::exception& e) {
      failStop("redo log: clearing the pending checkpoint", e);
    }
  } else if (kept) {
    askFlush();
  }
  env_.clearOverlay();
  redo_->checkpointed();
  std::uint64_t since = redoBytesSince_;
  redoBytesSince_ = 0;
  stats_.checkpointLatency->observe(std::uint64_t(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started).count()));
  if (!kept) {
    enterDirect("the map filled up at a checkpoint");
  } else if (direct_) {
    // Each group is a checkpoint now: count the map at most every
    // roomCountEvery, and only while it may have room again.
    Micros now = monoMicros();
    Micros every = Micros(std::chrono::duration_cast<std::chrono::microseconds>(opts_.roomCountEvery).count());
    if (now - directCountedAt_ >= every) {
      directCountedAt_ = now;
      double used = roomFill();
      if (used < kLeaveDirectAtUsed) leaveDirect(used);
    }
  } else {
    double fill = roomFill();
    double grew = std::max(0.0, fill - lastFill_);
    lastFill_ = fill;
    if (since > 0) {
      // What a redo byte cost in map since the last checkpoint; the larger
      // of now and a slowly fading past (roomCheckpointWanted).
      fillPerRedoByte_ = std::max(grew / double(since), fillPerRedoByte_ * 0.9);
    }
    if (fill >= kDirectAtFill) {
      enterDirect("the map is nearly full");
    } else if (fill + 2 * grew >= kDirectAtProjectedFill) {
      enterDirect("the map fills fast and may be nearly full at the next checkpoint");
    }
  }
  return kept;
}

double GroupCommitLog::roomFill() const {
  double fill = env_.fill();
  if (fill < kDirectAtFill) return fill;
  // A walk of LMDB's free list: a few records, ~90 us at 10,000
  // (BM_CountFreePages). The writer has no read transaction open, so it
  // can count; the mark stands in if it cannot.
  return std::min(fill, env_.usedFractionOrFill());
}

void GroupCommitLog::leaveDirect(double used) {
  if (!direct_) return;
  // Every group since enterDirect is LMDB's (each was a checkpoint of its
  // own, flushed by its commit), and the redo log holds nothing pending:
  // the next group is appended as before the switch.
  direct_ = false;
  directNow_.store(false, std::memory_order_relaxed);
  env_.deferSync(true);
  lastFill_ = used;
  redoBytesSince_ = 0;
  KEEL_LOG_INFO("redo log: {}% of the map in use ({}% high-water mark): each group is appended to the redo log "
                "again, one flush",
                int(used * 100), int(env_.fill() * 100));
}

void GroupCommitLog::enterDirect(const char* why, bool atStart) {
  if (direct_) return;
  direct_ = true;
  directNow_.store(true, std::memory_order_relaxed);
  directCountedAt_ = monoMicros();
  if (!atStart) shortOfRoomUntil_.store(monoMicros() + kShortOfRoomGraceUs, std::memory_order_relaxed);
  waitFlushed();
  try {
    redo_->markPending(0);  // the last checkpoint is flushed
  } catch (const std::exception& e) {
    failStop("redo log: clearing the pending checkpoint", e);
  }
  env_.deferSync(false);
  KEEL_LOG_WARN("redo log: {} ({}% of map_size): each group is now committed to LMDB directly, with two flushes, "
                "until less than {}% of the map is in use (as finished records are released); raise map_size",
                why, int(env_.fill() * 100), int(kLeaveDirectAtUsed * 100));
}

void GroupCommitLog::recommitOneByOne() {
  // LMDB is at the last checkpoint (flushed: waitFlushed). The groups since
  // are durable in the redo log, told, and in the overlay, oldest first;
  // each commit here is marked pending like a checkpoint (a crash reverts
  // it to the one before, and the redo log still holds its group).
  auto ov = env_.overlay();
  std::size_t n = ov == nullptr ? 0 : ov->deltas.size();
  try {
    if (n != redo_->pending()) {
      throw lmdb::Error("the overlay holds " + std::to_string(n) + " groups, the redo log " +
                            std::to_string(redo_->pending()),
                        EINVAL);
    }
    std::uint64_t lsn = redo_->lsn() - n;
    for (std::size_t i = 0; i < n; ++i) {
      lmdb::Txn t = env_.beginLogWrite();
      lmdb::applyDelta(t, *ov->deltas[i]);
      redo_->stampAt(t, ++lsn);
      redo_->markPending(t.id());
      t.commit();
      env_.sync();
    }
    redo_->markPending(0);
  } catch (const std::exception& e) {
    failStop("redo log: the map is full at a checkpoint; committing its groups one by one", e);
  }
  KEEL_LOG_WARN("redo log: the map filled up at a checkpoint; its {} durable groups were committed one by one", n);
}

void GroupCommitLog::syncOrStop(const char* where) {
  try {
    env_.sync();
  } catch (const std::exception& e) {
    failStop(where, e);
  }
}

void GroupCommitLog::rolledBack() noexcept {
  if (opts_.onRolledBack) opts_.onRolledBack();
}

// ------------------------------------------------------------ loop bundles


// One writer job carrying the loop items of one event-loop turn.
class GroupCommitLog::Bundle final : public Job {
 public:
  Bundle(GroupCommitLog& log, std::vector<std::unique_ptr<LoopItem>> items, std::shared_ptr<LoopMailbox> mb)
      : log_(log), items_(std::move(items)), mailbox_(std::move(mb)) {}
  ~Bundle() noexcept override {}
  void apply(lmdb::Txn& txn) override {
    applied_ = 0;  // redo mode may run a bundle again (a full map, see runRedoGroup)
    for (auto& item : items_) item->err = nullptr;
    if (items_.size() == 1) {
      // One item (the usual bundle below a few clients): the job's own
      // nested transaction is the item's, one nested transaction fewer
      // (each allocates its page lists). A throw leaves the job: the
      // writer aborts that transaction and failJob tells the item through
      // done(), as its own nested transaction failing would; a full map
      // in redo mode runs the job again the same way.
      items_.front()->apply(txn);
      applied_ = 1;
      return;
    }
    // Optimistically every item in one nested transaction (each LMDB
    // nested transaction allocates its page lists, and the large requests
    // make glibc consolidate its fast bins: one per item cost more than
    // the writes). Items rarely throw. When one does, this transaction is
    // aborted, the state jobs keep beside LMDB is marked stale
    // (rolledBack), the item that threw fails with its error (not run
    // again: a failpoint that fired once must not be passed the second
    // time), and every other item runs again, each in a nested
    // transaction of its own, in order, as if the bundle had been run
    // item by item from the start.
    std::size_t failed = items_.size();  // the item that threw, if one did
    std::exception_ptr failedErr;
    try {
      lmdb::Txn all = log_.env_.beginNested(txn);
      for (failed = 0; failed < items_.size(); ++failed) items_[failed]->apply(all);
      all.commit();  // a throw here: no item to blame (failed == size), each runs again
      applied_ = items_.size();
      return;
    } catch (const lmdb::MapFullError&) {
      if (log_.mapFullRetryable_) throw;  // the whole bundle again, after a checkpoint
      failedErr = std::current_exception();
    } catch (...) {
      failedErr = std::current_exception();
    }
    log_.rolledBack();  // once, for the item that threw (or the commit) and the rest undone with it
    for (std::size_t i = 0; i < items_.size(); ++i) {
      auto& item = items_[i];
      if (i == failed) {
        item->err = failedErr;
        log_.stats_.failedJobs.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      try {
        lmdb::Txn inner = log_.env_.beginNested(txn);
        item->apply(inner);
        inner.commit();
        ++applied_;
      } catch (const lmdb::MapFullError&) {
        if (log_.mapFullRetryable_) throw;  // the whole bundle again, after a checkpoint
        log_.rolledBack();
        item->err = std::current_exception();
        log_.stats_.failedJobs.fetch_add(1, std::memory_order_relaxed);
      } catch (...) {
        // The nested transaction was aborted: this item left no trace.
        log_.rolledBack();
        item->err = std::current_exception();
        log_.stats_.failedJobs.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  // Into the mailbox; the writer wakes the loop once its group was told
  // (GroupCommitLog::wakeLoop).
  void done(std::exception_ptr err) noexcept override {
    std::lock_guard<std::mutex> lk(mailbox_->mu);
    mailbox_->ready.push_back(BundleResult{std::move(items_), err});
  }
  std::size_t count() const override { return applied_; }

 private:
  GroupCommitLog& log_;
  std::vector<std::unique_ptr<LoopItem>> items_;
  std::shared_ptr<LoopMailbox> mailbox_;
  std::size_t applied_ = 0;
};

bool GroupCommitLog::onBundlingLoop() {
  auto self = std::this_thread::get_id();
  std::thread::id none;
  if (loopThread_.compare_exchange_strong(none, self)) return true;
  return none == self;
}

void GroupCommitLog::scheduleLoopFlush() {
  kj::evalLater([this, alive = alive_]() -> kj::Promise<void> {
    if (!*alive || loopPending_.empty()) return kj::READY_NOW;
    std::vector<std::unique_ptr<LoopItem>> items;
    items.swap(loopPending_);
    bool lazy = !loopForced_;
    loopForced_ = false;
    ++mailbox_->outstanding;
    if (!mailbox_->armed) armMailbox(mailbox_);
    enqueue(std::make_unique<Bundle>(*this, std::move(items), mailbox_), lazy);
    return kj::READY_NOW;
  }).detach([](kj::Exception&& e) { KJ_LOG(ERROR, "log bundle hand-over failed", e); });
}

}  // namespace keel
