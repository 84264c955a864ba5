#pragma once
// What the etcd client tests share: a KJ event loop on the test's thread
// (run for a while, run until a condition holds, wait for a promise with a
// bound) and key names.

#include <kj/async-io.h>
#include <kj/timer.h>
#include <kj/vector.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

namespace keel::test {

// prefix + i as 4 digits, so that keys sort as their numbers do.
inline std::string numbered(const std::string& prefix, int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04d", i);
  return prefix + buf;
}

inline long long msSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
}

class KjLoop {
 public:
  KjLoop() : io_(kj::setupAsyncIo()) {}

  kj::WaitScope& ws() { return io_.waitScope; }
  kj::Timer& timer() { return io_.provider->getTimer(); }

  // Runs the loop (callbacks posted from other threads included) for `d`.
  void runFor(std::chrono::milliseconds d) { timer().afterDelay(d.count() * kj::MILLISECONDS).wait(ws()); }

  // Runs the loop until `done()` or `timeout`; whether `done()` held.
  bool runUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= until) return false;
      runFor(std::chrono::milliseconds(5));
    }
    return true;
  }

  // The promise's value; throws kj::Exception if it failed, or if it did not
  // settle within `timeout`.
  template <typename T>
  T wait(kj::Promise<T>&& p, std::chrono::milliseconds timeout = std::chrono::milliseconds(30000)) {
    return timer().timeoutAfter(timeout.count() * kj::MILLISECONDS, kj::mv(p)).wait(ws());
  }

 private:
  kj::AsyncIoContext io_;
};

}  // namespace keel::test
