#include "participant/adapters/pg_pool.h"

#include <kj/debug.h>

#include "common/log.h"

namespace keel::pg {

Result exec(PGconn* c, const std::string& sql) {
  Result r(PQexec(c, sql.c_str()));
  auto st = PQresultStatus(r.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    const char* code = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
    std::string msg = PQerrorMessage(c);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    throw PgError(msg.empty() ? "PostgreSQL error" : msg, code != nullptr ? code : "");
  }
  return r;
}

PgError resultError(const PGresult* r) {
  const char* code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  std::string msg = PQresultErrorMessage(r);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  return PgError(msg.empty() ? "PostgreSQL error" : msg, code != nullptr ? code : "");
}

Pool::Pool(std::string conninfo, std::size_t size, std::string initSql, std::function<void()> onReconnect)
    : conninfo_(std::move(conninfo)), initSql_(std::move(initSql)), onReconnect_(std::move(onReconnect)) {
  for (std::size_t i = 0; i < size; ++i) workers_.emplace_back([this] { workerLoop(); });
}

Pool::~Pool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void Pool::submit(Job job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void Pool::post(std::function<void(PGconn*)> fn) {
  submit([fn = std::move(fn)](PGconn* c) {
    try {
      fn(c);
    } catch (const std::exception& e) {
      KEEL_LOG_WARN("postgres pool: background job failed: {}", e.what());
    }
  });
}

void FailureLog::warn(const std::string& what) {
  std::lock_guard<std::mutex> lk(mu_);
  auto now = std::chrono::steady_clock::now();
  if (now - last_ < std::chrono::seconds(1)) {
    ++unlogged_;
    return;
  }
  if (unlogged_ > 0) {
    KEEL_LOG_WARN("postgres: {} ({} more such failures since the last message)", what, unlogged_);
  } else {
    KEEL_LOG_WARN("postgres: {}", what);
  }
  last_ = now;
  unlogged_ = 0;
}

PGconn* Pool::connect() {
  PGconn* c = PQconnectdb(conninfo_.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(c);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    failures_.warn("cannot connect: " + msg);
    PQfinish(c);
    lost_ = true;
    return nullptr;
  }
  if (!initSql_.empty()) {
    try {
      exec(c, initSql_);
    } catch (const PgError& e) {
      failures_.warn(std::string("session set-up failed: ") + e.what());
      PQfinish(c);
      lost_ = true;
      return nullptr;
    }
  }
  if (lost_.exchange(false) && onReconnect_) onReconnect_();
  return c;
}

void Pool::workerLoop() {
  PGconn* conn = nullptr;
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    if (conn != nullptr && PQstatus(conn) != CONNECTION_OK) {
      PQfinish(conn);
      conn = nullptr;
      lost_ = true;
    }
    if (conn == nullptr) conn = connect();
    job(conn);
  }
  if (conn != nullptr) PQfinish(conn);
}

}  // namespace keel::pg
