#pragma once
// PgPool: a fixed set of PostgreSQL connections, each owned by its own
// worker thread, so that blocking libpq calls never run on the agent's event
// loop. A job is a function run with one connection; its result comes back
// on the caller's event loop (cross-thread fulfiller), like GroupCommitLog.
//
// A connection that breaks is reset before its next job; the job that saw
// it break fails with PgConnectionLost. Jobs are taken first come, first
// served by whichever worker is free. `onReconnect` (optional) runs on the
// worker that connects again after a failed connect or a broken connection
// in this pool: PostgreSQL (or the way to it) is back. It must not wait for
// this pool's jobs.

#include <kj/async.h>
#include <kj/debug.h>
#include <libpq-fe.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <chrono>
#include <thread>
#include <vector>

#include "common/fault.h"

namespace keel::pg {

// A PostgreSQL error, with its SQLSTATE ("" when the connection broke).
class PgError : public std::runtime_error {
 public:
  PgError(const std::string& what, std::string sqlstate) : std::runtime_error(what), sqlstate_(std::move(sqlstate)) {}
  const std::string& sqlstate() const { return sqlstate_; }
  bool connectionLost() const { return sqlstate_.empty() || sqlstate_.rfind("08", 0) == 0; }

 private:
  std::string sqlstate_;
};

// A libpq result that frees itself.
class Result {
 public:
  explicit Result(PGresult* r) : r_(r) {}
  Result(Result&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  Result(const Result&) = delete;
  ~Result() {
    if (r_ != nullptr) PQclear(r_);
  }
  PGresult* get() const { return r_; }

 private:
  PGresult* r_;
};

// Connection failures, logged at most once a second with how many went
// unlogged (while PostgreSQL is down every call fails to connect). Any
// thread.
class FailureLog {
 public:
  void warn(const std::string& what);

 private:
  std::mutex mu_;
  std::chrono::steady_clock::time_point last_;  // GUARDED_BY(mu_)
  std::uint64_t unlogged_ = 0;                  // GUARDED_BY(mu_)
};

// The error a failed result carries: its message and SQLSTATE.
PgError resultError(const PGresult* r);

// Runs a command without parameters; throws PgError unless it succeeds.
Result exec(PGconn* c, const std::string& sql);

class Pool {
 public:
  // `initSql` runs on every new connection (session settings).
  Pool(std::string conninfo, std::size_t size, std::string initSql = "", std::function<void()> onReconnect = {});
  ~Pool();  // finishes queued jobs, closes the connections

  template <typename T>
  kj::Promise<T> run(std::function<T(PGconn*)> fn);
  // Blocking, for start-up.
  template <typename T>
  T runSync(std::function<T(PGconn*)> fn);
  // Fire and forget, from any thread (no event loop needed): fn runs on a
  // worker with its connection (nullptr when PostgreSQL cannot be reached);
  // what it throws is logged and dropped.
  void post(std::function<void(PGconn*)> fn);

  std::size_t size() const { return workers_.size(); }

 private:
  using Job = std::function<void(PGconn*)>;
  void submit(Job job);
  void workerLoop();
  PGconn* connect();

  const std::string conninfo_;
  const std::string initSql_;
  const std::function<void()> onReconnect_;
  std::atomic<bool> lost_{false};  // a connect failed or a connection broke since the last good connect
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;  // GUARDED_BY(mu_)
  FailureLog failures_;
  bool stopping_ = false;  // GUARDED_BY(mu_)
  std::vector<std::thread> workers_;
};

template <typename T>
kj::Promise<T> Pool::run(std::function<T(PGconn*)> fn) {
  auto paf = kj::newPromiseAndCrossThreadFulfiller<T>();
  auto f = std::make_shared<kj::Own<kj::CrossThreadPromiseFulfiller<T>>>(kj::mv(paf.fulfiller));
  submit([fn = std::move(fn), f](PGconn* c) {
    try {
      if (c == nullptr) throw PgError("cannot connect to PostgreSQL", "");
      if constexpr (std::is_void_v<T>) {
        fn(c);
        (*f)->fulfill();
      } else {
        (*f)->fulfill(fn(c));
      }
    } catch (const std::exception& e) {
      (*f)->reject(faultException(e.what()));
    }
  });
  return kj::mv(paf.promise);
}

template <typename T>
T Pool::runSync(std::function<T(PGconn*)> fn) {
  auto p = std::make_shared<std::promise<T>>();
  auto fut = p->get_future();
  submit([fn = std::move(fn), p](PGconn* c) {
    try {
      if (c == nullptr) throw PgError("cannot connect to PostgreSQL", "");
      if constexpr (std::is_void_v<T>) {
        fn(c);
        p->set_value();
      } else {
        p->set_value(fn(c));
      }
    } catch (...) {
      p->set_exception(std::current_exception());
    }
  });
  return fut.get();
}

}  // namespace keel::pg
