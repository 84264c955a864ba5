#include "tools/chaos/pg_host.h"

#include <algorithm>
#include <csignal>
#include <future>

#include "tools/pg_server.h"

namespace keel::chaos {

PgHost::PgHost(std::vector<std::string> databases, std::uint32_t outstanding) : databases_(databases) {
  test::PgServerOptions o;
  // Connections per agent: a pool of 8 and 2 for phase 2 (keel-agent's
  // defaults); plus the checker's own.
  int n = int(databases.size());
  o.maxPreparedTransactions = test::preparedTransactionsFor(outstanding);
  o.settings = {"max_connections=" + std::to_string(std::max(100, 12 * n + 20))};
  o.databases = std::move(databases);
  server_ = std::make_unique<test::PgServer>("", o);
  owner_ = std::thread([this] { ownerLoop(); });
}

PgHost::~PgHost() {
  try {
    // Continued first: a stopped postmaster cannot shut down.
    onOwner([this] {
      if (paused_) server_->signalAll(SIGCONT);
      server_.reset();
    });
  } catch (const std::exception&) {
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  owner_.join();
}

void PgHost::ownerLoop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

void PgHost::onOwner(std::function<void()> fn) {
  auto done = std::make_shared<std::promise<void>>();
  auto f = done->get_future();
  {
    std::lock_guard<std::mutex> lk(mu_);
    jobs_.push_back([fn = std::move(fn), done] {
      try {
        fn();
        done->set_value();
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
  }
  cv_.notify_one();
  f.get();
}

void PgHost::start() {
  onOwner([this] { server_->start(); });
}

void PgHost::crash(bool sigkill) {
  onOwner([this, sigkill] {
    if (sigkill) {
      server_->kill9();
    } else {
      server_->stopImmediate();
    }
  });
}

void PgHost::pause() {
  onOwner([this] {
    server_->signalAll(SIGSTOP);
    paused_ = true;
  });
}

void PgHost::resume() {
  onOwner([this] {
    server_->signalAll(SIGCONT);
    paused_ = false;
  });
}

void PgHost::heal() {
  onOwner([this] {
    if (paused_) server_->signalAll(SIGCONT);
    paused_ = false;
    if (!server_->running()) server_->start();
  });
}

std::string PgHost::connString(const std::string& db) const { return server_->connString(db); }

bool PgHost::has(const std::string& db) const {
  return std::find(databases_.begin(), databases_.end(), db) != databases_.end();
}

const std::string& PgHost::logFile() const { return server_->logFile(); }

std::map<std::string, std::int64_t> PgHost::balances(const std::string& db) const {
  std::map<std::string, std::int64_t> out;
  for (auto& row : test::pgQuery(connString(db) + " connect_timeout=2", "SELECT name, balance FROM accounts")) {
    out[row[0]] = std::stoll(row[1]);
  }
  return out;
}

std::vector<std::string> PgHost::prepared(const std::string& db) const {
  std::vector<std::string> out;
  for (auto& row : test::pgQuery(connString(db) + " connect_timeout=2",
                                 "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")) {
    out.push_back(row[0]);
  }
  return out;
}

}  // namespace keel::chaos
