#include "common/group_log.h"

#include <vector>

#include <kj/debug.h>

#include "common/failpoint.h"

namespace keel {

kj::Exception toKjException(std::exception_ptr err) {
  try {
    std::rethrow_exception(err);
  } catch (const kj::Exception& e) {
    return e;
  } catch (const std::exception& e) {
    return KJ_EXCEPTION(FAILED, e.what());
  } catch (...) {
    return KJ_EXCEPTION(FAILED, "unknown exception in log writer");
  }
}

GroupCommitLog::GroupCommitLog(lmdb::Env& env, Options opts)
    : env_(env), opts_(opts), writer_([this] { writerLoop(); }) {}

GroupCommitLog::~GroupCommitLog() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  writer_.join();
}

void GroupCommitLog::submit(std::unique_ptr<Job> job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void GroupCommitLog::writerLoop() {
  std::vector<std::unique_ptr<Job>> group;
  std::vector<Job*> applied;
  for (;;) {
    group.clear();
    applied.clear();
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      while (!queue_.empty() && group.size() < opts_.maxBatch) {
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }

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
        j->done(std::current_exception());
        stats_.failedJobs.fetch_add(1, std::memory_order_relaxed);
      }
    }
    try {
      KEEL_FAILPOINT("log.before_group_commit");
      outer.commit();  // durability point for every job in `applied`
    } catch (...) {
      auto err = std::current_exception();
      for (Job* j : applied) j->done(err);
      stats_.failedJobs.fetch_add(applied.size(), std::memory_order_relaxed);
      continue;
    }
    stats_.commits.fetch_add(1, std::memory_order_relaxed);
    stats_.jobs.fetch_add(applied.size(), std::memory_order_relaxed);
    for (Job* j : applied) j->done(nullptr);
  }
}

}  // namespace keel
