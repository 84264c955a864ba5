#pragma once
// What the coordinator's and the agents' admin planes share on top of
// AdminHttpServer (coordinator/admin.h, participant/admin.h).

#include <kj/async.h>
#include <kj/exception.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>

#include "common/admin_http.h"
#include "common/fault.h"

namespace keel {

inline constexpr const char* kPrometheusText = "text/plain; version=0.0.4; charset=utf-8";

// A query parameter that cannot be used: 400 with the reason.
struct BadParam {
  std::string why;
};

// ?limit=N: a whole number from 1 to `max`; `dflt` when absent.
std::uint32_t limitParam(const HttpRequest& r, std::uint32_t dflt, std::uint32_t max);

// Runs a handler's body and turns what can go wrong into an answer: a bad
// parameter 400; a fault of the server's own (its event loop gone, a call
// that failed) 503 with the reason, `who` first.
template <typename Fn>
HttpResponse guardedAnswer(const char* who, Fn&& fn) {
  try {
    return fn();
  } catch (const BadParam& e) {
    return HttpResponse::error(400, e.why);
  } catch (const kj::Exception& e) {
    return HttpResponse::error(503, std::string(who) + ": " + describeFault(e));
  }
}

// The admin plane's calls into the event loop, bounded in time. A handler
// runs on the admin server's thread and reads the process's state on its
// event loop (kj::Executor::executeSync). If that loop is stuck (a blocked
// syscall, a bug) or the call's promise never resolves, a plain
// executeSync would hold the admin thread, and with it every later
// request, /metrics included, for as long. Here each call runs on a
// worker thread of this object's own; the handler waits at most `limit`
// and then answers 503 "the event loop did not answer within N ms",
// and while that call is still outstanding every later call is refused at
// once (503, saying for how long it has waited) instead of queueing. The
// outstanding call finishes (its result dropped) when the loop answers.
// What a call's function captures by reference must outlive this object.
// Called from one thread at a time (the admin server's).
class LoopCaller {
 public:
  static constexpr std::chrono::milliseconds kDefaultLimit{5000};
  explicit LoopCaller(const kj::Executor& loop, std::chrono::milliseconds limit = kDefaultLimit);
  // Joins the worker; a worker still inside a call the loop never answered
  // is detached (it holds only what it shares with this object and a
  // reference to the executor, which outlive the loop safely).
  ~LoopCaller();
  LoopCaller(const LoopCaller&) = delete;
  LoopCaller& operator=(const LoopCaller&) = delete;

  // fn's result, as executeSync gives it (a promise's is awaited). Throws
  // a kj::Exception (guardedAnswer: 503) when the loop does not answer in
  // time or an earlier call is still outstanding; what fn throws is
  // rethrown.
  template <typename Fn>
  auto call(Fn fn) {
    using T = std::decay_t<decltype(std::declval<const kj::Executor&>().executeSync(fn))>;
    auto slot = std::make_shared<std::optional<T>>();
    run([slot, fn = std::move(fn)](const kj::Executor& loop) mutable { slot->emplace(loop.executeSync(std::move(fn))); });
    return std::move(**slot);
  }

 private:
  struct Shared;
  // Hands `job` to the worker and waits for it, at most the limit.
  void run(std::function<void(const kj::Executor&)> job);
  std::shared_ptr<Shared> shared_;
  std::thread worker_;
};

// Stops `server` from the event loop's own thread while that loop keeps
// running: a handler waiting on the loop (kj::Executor::executeSync) gets
// its answer and returns, so the server's thread can be joined. Call it
// before anything the handlers use goes.
void stopAdminServer(AdminHttpServer& server, kj::WaitScope& ws);

}  // namespace keel
