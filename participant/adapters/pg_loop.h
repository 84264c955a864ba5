#pragma once
// LoopConn and LoopPool: libpq connections driven by the agent's own KJ
// event loop, in non-blocking mode, for the two-phase hot path (prepare,
// COMMIT PREPARED). A call sends its queries, and the loop goes on with
// other work until PostgreSQL's socket has the answer: no worker thread, no
// cross-thread wake-up, no blocking poll() per call. (pg::Pool, the thread
// pool, stays for the rare and blocking work: sweeps, retries, start-up.)
//
// Waiting: KJ watches the socket edge-triggered, so a wait starts only after
// libpq has read everything the socket had (PQconsumeInput reads until the
// kernel has no more). A safety timer (kSafetyPoll) retries the read in
// case a TLS layer kept bytes that no new edge will announce.
//
// Connecting: PQconnectStart / PQconnectPoll on the loop, so an unreachable
// server never blocks the agent (host names are resolved by PQconnectStart
// itself, as libpq does; loopback addresses and sockets resolve at once).
// A connect not done within the conninfo's connect_timeout (10 s when it
// sets none) fails its call: a server that takes the TCP connection and
// never answers holds a slot no longer than that.
//
// Failure: a call whose connection broke (or that failed in a way that may
// leave the session in an unknown state) closes it; the pool opens a new
// one for the next call. PostgreSQL rolls back whatever that session had
// open and not prepared; a prepared transaction survives (the agent's
// recovery owns those).
//
// Threads: everything here runs on the event loop that made the pool.

#include <kj/async-unix.h>
#include <kj/async.h>
#include <kj/function.h>
#include <libpq-fe.h>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "participant/adapters/pg_pool.h"

namespace keel::pg {

class LoopPool;

// A socket of libpq's watched by the event loop through a duplicate of its
// descriptor: libpq closes its own descriptor when the connection fails,
// and the loop must never be left watching (or deregistering) a closed or
// reused number.
class SocketWatch {
 public:
  SocketWatch(kj::UnixEventPort& port, int fd, uint flags);
  ~SocketWatch();
  SocketWatch(const SocketWatch&) = delete;
  SocketWatch& operator=(const SocketWatch&) = delete;
  kj::UnixEventPort::FdObserver& observer() { return *obs_; }

 private:
  int fd_;
  kj::Own<kj::UnixEventPort::FdObserver> obs_;
};

class LoopConn {
 public:
  // Takes `c` (connected) once constructed (a failure leaves it the
  // caller's); puts it in non-blocking mode.
  LoopConn(kj::UnixEventPort& port, kj::Timer& timer, PGconn* c);
  ~LoopConn();
  LoopConn(const LoopConn&) = delete;
  LoopConn& operator=(const LoopConn&) = delete;

  PGconn* get() const { return c_; }
  bool ok() const { return PQstatus(c_) == CONNECTION_OK; }

  // Sends what libpq has queued (PQsend*, PQpipelineSync).
  kj::Promise<void> flush();
  // In pipeline mode, after PQpipelineSync: the first result of each query
  // sent, in order, then the PGRES_PIPELINE_SYNC result. Throws PgError
  // when the connection broke. Called in the continuation of flush() (no
  // other wait in between): it waits for the socket before it reads.
  kj::Promise<std::vector<Result>> collectPipeline();
  // One command without parameters, not in pipeline mode: its result (the
  // first that failed, if any did; errorIn tells). Fails only when the
  // connection broke.
  kj::Promise<Result> query(std::string sql);
  // Once the loop has closed its connection (a call failed), it is not
  // reused.
  void poison() { poisoned_ = true; }
  // The connection broke while `what`: poisons it and fails the call with
  // a fault that says so (KJ keeps only the text of a std::exception).
  [[noreturn]] void lost(const char* what);
  bool poisoned() const { return poisoned_; }

  // Named prepared statements of this connection (the hot path's
  // statements are parsed and planned once per connection, not per call):
  // the name of `text` once PostgreSQL confirmed its Parse, else null.
  const std::string* statementName(const std::string& text) const;
  // A fresh name for `text`, to send with PQsendPrepare; null when this
  // connection holds kMaxNamedStatements already (the caller sends the
  // text unnamed: a client cannot grow a session without bound).
  std::optional<std::string> newStatementName();
  // PostgreSQL confirmed the Parse of `text` as `name`.
  void statementPrepared(const std::string& text, std::string name);
  static constexpr std::size_t kMaxNamedStatements = 128;

 private:
  // Resolves when the socket may have data (or after kSafetyPoll).
  kj::Promise<void> readable();
  friend class LoopPool;
  kj::Timer& timer_;
  PGconn* c_;
  LoopPool* pool_ = nullptr;  // told when this connection is closed
  kj::Own<SocketWatch> watch_;
  bool poisoned_ = false;
  std::map<std::string, std::string> named_;  // statement text -> its name in this session
  std::uint64_t nextName_ = 0;
};

// The error a result carries; nullopt when it succeeded.
std::optional<PgError> errorIn(const Result& r);  // resultError, for a result that may have succeeded

class LoopPool {
 public:
  // At most `size` connections, opened when first needed. `initSql` runs
  // on each new one; `onReconnect` runs when one opens after a connect
  // failed or a connection broke (PostgreSQL is back).
  LoopPool(kj::UnixEventPort& port, kj::Timer& timer, std::string conninfo, std::size_t size,
           std::string initSql = "", std::function<void()> onReconnect = {});
  ~LoopPool();

  // Runs fn with an idle connection, waiting for one if all are busy. If
  // fn fails, or leaves its connection broken, in pipeline mode or inside a
  // transaction, the connection is closed rather than reused.
  template <typename T>
  kj::Promise<T> run(kj::Function<kj::Promise<T>(LoopConn&)> fn);

  std::size_t size() const { return size_; }
  std::size_t open() const { return open_; }

 private:
  friend class LoopConn;
  class Lease;
  kj::Promise<kj::Own<LoopConn>> acquire();
  void release(kj::Own<LoopConn> c);
  kj::Promise<kj::Own<LoopConn>> connect();  // a new connection; the caller holds its slot
  void openOne();     // takes a slot and connects, as the pool's own task
  void connClosed();  // a connection was destroyed: its slot is free
  kj::Promise<void> pollConnect(PGconn* c, PostgresPollingStatusType st, std::chrono::steady_clock::time_point deadline,
                                std::chrono::seconds limit);
  // A slot freed (a connection closed or failed to open): a call still
  // waiting gets a new connection.
  void slotFreed();

  kj::UnixEventPort& port_;
  kj::Timer& timer_;
  const std::string conninfo_;
  const std::string initSql_;
  const std::function<void()> onReconnect_;
  const std::size_t size_;
  std::size_t open_ = 0;  // idle + in use + connecting
  bool lost_ = false;     // a connect failed or a connection broke since the last good connect
  bool stopping_ = false;
  std::vector<kj::Own<LoopConn>> idle_;
  std::deque<kj::Own<kj::PromiseFulfiller<kj::Own<LoopConn>>>> waiters_;
  class Errors;
  kj::Own<Errors> errors_;  // before tasks_, which uses it
  kj::TaskSet tasks_;
  FailureLog failures_;
};

// A connection lent to one call. It goes back to the pool the moment the
// call's own promise settles (not when the promise is destroyed: a caller
// may hold a settled promise for long, joinPromises holds every branch
// until the last one settles, and a batch larger than the pool would then
// wait for itself). Poisoned unless the call succeeded; a call cancelled
// halfway through a conversation with PostgreSQL gives back a poisoned
// connection when its promise is destroyed.
class LoopPool::Lease {
 public:
  Lease(LoopPool& pool, kj::Own<LoopConn> conn) : pool_(pool), conn_(kj::mv(conn)) {}
  ~Lease() { giveBack(false); }
  LoopConn& conn() { return *conn_; }
  void giveBack(bool clean) {
    if (conn_.get() == nullptr) return;
    if (!clean) conn_->poison();
    pool_.release(kj::mv(conn_));
  }

 private:
  LoopPool& pool_;
  kj::Own<LoopConn> conn_;
};

template <typename T>
kj::Promise<T> LoopPool::run(kj::Function<kj::Promise<T>(LoopConn&)> fn) {
  return acquire().then([this, fn = kj::mv(fn)](kj::Own<LoopConn> conn) mutable -> kj::Promise<T> {
    auto lease = kj::heap<Lease>(*this, kj::mv(conn));
    Lease& l = *lease;
    return kj::evalNow([&] { return fn(l.conn()); })
        .then(
            [&l](T v) -> T {
              l.giveBack(true);
              return kj::mv(v);
            },
            [&l](kj::Exception&& e) -> T {
              l.giveBack(false);
              kj::throwFatalException(kj::mv(e));
            })
        // KJ runs a .then() when its consumer asks for the value, not when
        // the value is ready: without this, a joinPromises over more calls
        // than connections would keep the first ones' connections until
        // the last call (which waits for one of them) is done.
        .eagerlyEvaluate(nullptr)
        .attach(kj::mv(lease));
  });
}

}  // namespace keel::pg
