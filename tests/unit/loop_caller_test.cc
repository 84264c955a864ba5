// LoopCaller: the admin plane's calls into an event loop answer within a
// limit, a stuck loop makes later calls fail at once instead of queueing,
// and the plane recovers when the loop does.

#include "common/admin_plane.h"

#include <gtest/gtest.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>

namespace keel {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// An event loop on a thread of its own that runs until told to stop; a
// call into it can be made to block the loop (stuck) until released.
class LoopThread {
 public:
  LoopThread() {
    std::promise<const kj::Executor*> ready;
    auto got = ready.get_future();
    thread_ = std::thread([this, &ready]() {
      auto io = kj::setupAsyncIo();
      auto paf = kj::newPromiseAndFulfiller<void>();
      stop_ = kj::mv(paf.fulfiller);
      ready.set_value(&kj::getCurrentThreadExecutor());
      paf.promise.wait(io.waitScope);
    });
    executor_ = got.get()->addRef();
  }
  ~LoopThread() {
    executor_->executeSync([this]() { stop_->fulfill(); });
    thread_.join();
  }
  const kj::Executor& executor() { return *executor_; }
  // Blocks the loop's thread until release() (as a stuck syscall would).
  std::atomic<bool> released{false};
  void release() { released = true; }

 private:
  std::thread thread_;
  kj::Own<kj::PromiseFulfiller<void>> stop_;
  kj::Own<const kj::Executor> executor_;
};

std::string faultOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const kj::Exception& e) {
    return e.getDescription().cStr();
  }
  return "";
}

TEST(LoopCaller, AnswersWhatTheLoopReturnsAndRethrowsWhatItThrows) {
  LoopThread loop;
  LoopCaller calls(loop.executor(), 2000ms);
  EXPECT_EQ(calls.call([]() { return 41 + 1; }), 42);
  // A promise is awaited on the loop, as executeSync does.
  EXPECT_EQ(calls.call([]() { return kj::Promise<std::string>(std::string("later")); }), "later");
  EXPECT_NE(faultOf([&] { calls.call([]() -> int { KJ_FAIL_REQUIRE("refused by the loop"); }); })
                .find("refused by the loop"),
            std::string::npos);
  EXPECT_EQ(calls.call([]() { return 7; }), 7) << "a call after a failed one";
}

TEST(LoopCaller, AStuckLoopTimesOutThenRefusesAtOnceAndRecovers) {
  LoopThread loop;
  LoopCaller calls(loop.executor(), 300ms);
  auto stuck = [&loop]() {
    while (!loop.released) std::this_thread::sleep_for(1ms);
    return 1;
  };
  auto t0 = Clock::now();
  auto first = faultOf([&] { calls.call(stuck); });
  EXPECT_NE(first.find("did not answer within 300 ms"), std::string::npos) << first;
  EXPECT_GE(Clock::now() - t0, 300ms);
  // While that call is outstanding a later one is refused without waiting
  // (that message comes only from the refusal that does not wait).
  auto second = faultOf([&] { calls.call([]() { return 2; }); });
  EXPECT_NE(second.find("has not answered an earlier call for"), std::string::npos) << second;
  // The loop comes back: the outstanding call ends, the next one answers.
  loop.release();
  bool answered = false;
  for (int i = 0; i < 200 && !answered; ++i) {
    try {
      answered = calls.call([]() { return 3; }) == 3;
    } catch (const kj::Exception&) {
      std::this_thread::sleep_for(10ms);
    }
  }
  EXPECT_TRUE(answered);
}

TEST(LoopCaller, DestroyedWhileACallIsOutstandingDoesNotHang) {
  LoopThread loop;
  {
    LoopCaller calls(loop.executor(), 100ms);
    EXPECT_FALSE(faultOf([&] {
                   calls.call([&loop]() {
                     while (!loop.released) std::this_thread::sleep_for(1ms);
                     return 0;
                   });
                 }).empty());
  }  // the worker is detached, not joined
  loop.release();
}

}  // namespace
}  // namespace keel
