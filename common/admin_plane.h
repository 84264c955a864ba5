#pragma once
// What the coordinator's and the agents' admin planes share on top of
// AdminHttpServer (coordinator/admin.h, participant/admin.h).

#include <kj/async.h>
#include <kj/exception.h>

#include <cstdint>
#include <string>

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

// Stops `server` from the event loop's own thread while that loop keeps
// running: a handler waiting on the loop (kj::Executor::executeSync) gets
// its answer and returns, so the server's thread can be joined. Call it
// before anything the handlers use goes.
void stopAdminServer(AdminHttpServer& server, kj::WaitScope& ws);

}  // namespace keel
