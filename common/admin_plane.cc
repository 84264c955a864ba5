#include "common/admin_plane.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <memory>
#include <thread>
#include <utility>

namespace keel {

std::uint32_t limitParam(const HttpRequest& r, std::uint32_t dflt, std::uint32_t max) {
  auto v = r.param("limit");
  if (!v) return dflt;
  std::string range = "a whole number from 1 to " + std::to_string(max);
  if (v->empty() || v->size() > 9) throw BadParam{"limit '" + *v + "' is not " + range};
  std::uint64_t n = 0;
  for (char c : *v) {
    if (c < '0' || c > '9') throw BadParam{"limit '" + *v + "' is not " + range};
    n = n * 10 + std::uint64_t(c - '0');
  }
  if (n == 0 || n > max) throw BadParam{"limit " + *v + " is out of range: " + range};
  return std::uint32_t(n);
}

struct LoopCaller::Shared {
  kj::Own<const kj::Executor> loop;
  std::chrono::milliseconds limit;
  std::mutex m;
  std::condition_variable cv;
  std::function<void(const kj::Executor&)> job;  // handed over, not yet taken by the worker
  bool busy = false;                              // a job handed over and not finished
  bool stopping = false;
  std::uint64_t finished = 0;                     // jobs finished
  // What the last finished job threw, as a value: a KJ exception object
  // must not be destroyed on a thread other than the one that threw it.
  std::unique_ptr<kj::Exception> error;
  std::chrono::steady_clock::time_point since;    // when the busy job was handed over
};

LoopCaller::LoopCaller(const kj::Executor& loop, std::chrono::milliseconds limit)
    : shared_(std::make_shared<Shared>()) {
  shared_->loop = loop.addRef();
  shared_->limit = limit;
  // The worker holds the shared state, never this object.
  worker_ = std::thread([sh = shared_]() {
    for (;;) {
      std::function<void(const kj::Executor&)> job;
      {
        std::unique_lock l(sh->m);
        sh->cv.wait(l, [&] { return sh->stopping || sh->job != nullptr; });
        if (sh->job == nullptr) return;
        job = std::move(sh->job);
        sh->job = nullptr;
      }
      std::unique_ptr<kj::Exception> error;
      KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { job(*sh->loop); })) {
        error = std::make_unique<kj::Exception>(kj::mv(*e));
      }
      {
        std::lock_guard l(sh->m);
        sh->busy = false;
        sh->error = std::move(error);
        ++sh->finished;
      }
      sh->cv.notify_all();
    }
  });
}

LoopCaller::~LoopCaller() {
  bool busy;
  {
    std::lock_guard l(shared_->m);
    shared_->stopping = true;
    busy = shared_->busy;
  }
  shared_->cv.notify_all();
  // A call the loop never answered keeps its worker: it ends when the loop
  // answers or is destroyed (executeSync then throws).
  if (busy) {
    worker_.detach();
  } else {
    worker_.join();
  }
}

void LoopCaller::run(std::function<void(const kj::Executor&)> job) {
  auto& sh = *shared_;
  std::unique_lock l(sh.m);
  auto now = std::chrono::steady_clock::now();
  if (sh.busy) {
    auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(now - sh.since).count();
    throw faultException("the event loop has not answered an earlier call for " + std::to_string(waited) +
                         " ms (stuck or very busy): refused without waiting");
  }
  sh.busy = true;
  sh.since = now;
  sh.job = std::move(job);
  std::uint64_t ticket = sh.finished + 1;
  sh.cv.notify_all();
  if (!sh.cv.wait_for(l, sh.limit, [&] { return sh.finished >= ticket; })) {
    throw faultException("the event loop did not answer within " + std::to_string(sh.limit.count()) +
                         " ms (stuck or very busy); an action asked for may still take effect when it does: "
                         "look it up before asking again");
  }
  if (auto e = std::move(sh.error)) {
    l.unlock();
    kj::throwFatalException(kj::mv(*e));
  }
}

void stopAdminServer(AdminHttpServer& server, kj::WaitScope& ws) {
  std::atomic<bool> done{false};
  std::thread stopper([&]() {
    server.stop();
    done = true;
  });
  // Cross-thread calls are events of this loop: poll() runs them.
  while (!done) {
    ws.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  stopper.join();
}

}  // namespace keel
