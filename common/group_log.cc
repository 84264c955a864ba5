#include "common/group_log.h"

#include <vector>

#include <kj/debug.h>

#include "common/failpoint.h"
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

GroupCommitLog::GroupCommitLog(lmdb::Env& env, Options opts)
    : env_(env), opts_(opts), writer_([this] { writerLoop(); }) {}

GroupCommitLog::~GroupCommitLog() {
  *alive_ = false;  // a flush still scheduled on the loop does nothing
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  writer_.join();
}

void GroupCommitLog::submit(std::unique_ptr<Job> job) { enqueue(std::move(job), false); }

void GroupCommitLog::submitLazy(std::unique_ptr<Job> job) { enqueue(std::move(job), true); }

void GroupCommitLog::enqueue(std::unique_ptr<Job> job, bool lazy) {
  bool wake;
  {
    std::lock_guard<std::mutex> lk(mu_);
    // A lazy job needs the writer only to learn its deadline (first in queue).
    wake = !lazy || queue_.empty();
    if (queue_.empty()) queuedSince_ = std::chrono::steady_clock::now();
    if (!lazy) ++forcedQueued_;
    queue_.push_back(Queued{std::move(job), lazy});
  }
  if (wake) cv_.notify_one();
}

void GroupCommitLog::writerLoop() {
  std::vector<std::unique_ptr<Job>> group;
  std::vector<Job*> applied;
  for (;;) {
    group.clear();
    applied.clear();
    {
      std::unique_lock<std::mutex> lk(mu_);
      // Only lazy jobs queued: they start a group once the oldest waited
      // lazyDelay (or at shutdown); any other job takes them along at once.
      for (;;) {
        if (stopping_ || forcedQueued_ > 0) break;
        if (queue_.empty()) {
          cv_.wait(lk);
        } else if (cv_.wait_until(lk, queuedSince_ + opts_.lazyDelay) == std::cv_status::timeout) {
          break;
        }
      }
      if (queue_.empty()) return;  // stopping and drained
      while (!queue_.empty() && group.size() < opts_.maxBatch) {
        if (!queue_.front().lazy) --forcedQueued_;
        group.push_back(std::move(queue_.front().job));
        queue_.pop_front();
      }
      if (!queue_.empty()) queuedSince_ = std::chrono::steady_clock::now();
    }

    auto groupStarted = std::chrono::steady_clock::now();
    lmdb::Txn outer;
    try {
      outer = env_.beginWrite();
    } catch (...) {
      auto err = std::current_exception();
      for (auto& j : group) j->done(err);
      stats_.failedJobs.fetch_add(group.size(), std::memory_order_relaxed);
      continue;
    }
    for (auto& j : group) {
      try {
        lmdb::Txn inner = env_.beginNested(outer);
        j->apply(inner);
        inner.commit();
        applied.push_back(j.get());
      } catch (...) {
        // The nested transaction was aborted: this job left no trace.
        rolledBack();  // before the caller hears of it
        j->done(std::current_exception());
        stats_.failedJobs.fetch_add(1, std::memory_order_relaxed);
      }
    }
    try {
      KEEL_FAILPOINT("log.before_group_commit");
      outer.commit();  // durability point for every job in `applied`
    } catch (...) {
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

void GroupCommitLog::rolledBack() noexcept {
  if (opts_.onRolledBack) opts_.onRolledBack();
}

// ------------------------------------------------------------ loop bundles

// What a bundle hands back to the loop: its items (so that they are
// destroyed there, where their fulfillers belong) and the group's outcome.
struct BundleResult {
  std::vector<std::unique_ptr<GroupCommitLog::LoopItem>> items;
  std::exception_ptr groupErr;  // the group commit failed: nothing is durable
};

// One writer job carrying the loop items of one event-loop turn.
class GroupCommitLog::Bundle final : public Job {
 public:
  Bundle(GroupCommitLog& log, std::vector<std::unique_ptr<LoopItem>> items,
         kj::Own<kj::CrossThreadPromiseFulfiller<BundleResult>> f)
      : log_(log), items_(std::move(items)), fulfiller_(kj::mv(f)) {}
  ~Bundle() noexcept override {}
  void apply(lmdb::Txn& txn) override {
    for (auto& item : items_) {
      try {
        lmdb::Txn inner = log_.env_.beginNested(txn);
        item->apply(inner);
        inner.commit();
        ++applied_;
      } catch (...) {
        // The nested transaction was aborted: this item left no trace.
        log_.rolledBack();
        item->err = std::current_exception();
        log_.stats_.failedJobs.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  void done(std::exception_ptr err) noexcept override {
    fulfiller_->fulfill(BundleResult{std::move(items_), err});
  }
  std::size_t count() const override { return applied_; }

 private:
  GroupCommitLog& log_;
  std::vector<std::unique_ptr<LoopItem>> items_;
  kj::Own<kj::CrossThreadPromiseFulfiller<BundleResult>> fulfiller_;
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
    auto paf = kj::newPromiseAndCrossThreadFulfiller<BundleResult>();
    std::vector<std::unique_ptr<LoopItem>> items;
    items.swap(loopPending_);
    bool lazy = !loopForced_;
    loopForced_ = false;
    enqueue(std::make_unique<Bundle>(*this, std::move(items), kj::mv(paf.fulfiller)), lazy);
    return paf.promise.then([](BundleResult r) {
      for (auto& item : r.items) item->complete(r.groupErr ? r.groupErr : item->err);
    });
  }).detach([](kj::Exception&& e) { KJ_LOG(ERROR, "log bundle completion failed", e); });
}

}  // namespace keel
