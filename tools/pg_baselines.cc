#include "tools/pg_baselines.h"

#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "tools/bank_sql.h"
#include "tools/pg_calls.h"

namespace keel::bank {

namespace {

using pgcall::Answer;
using pgcall::gidLiteral;
using pgcall::run;
using pgcall::runBoth;

enum class Ended { Committed, Overdrawn, Failed };

struct Outcome {
  Ended ended = Ended::Committed;
  std::string why;  // Failed: the reason
};

// One libpq connection, closed with its owner.
using Conn = std::unique_ptr<PGconn, decltype(&PQfinish)>;

Conn connect(const std::string& conninfo, std::uint32_t lockTimeoutMs) {
  Conn c(PQconnectdb(conninfo.c_str()), &PQfinish);
  if (PQstatus(c.get()) != CONNECTION_OK) {
    throw std::runtime_error("baseline: cannot connect to " + conninfo + ": " + PQerrorMessage(c.get()));
  }
  PQclear(PQexec(c.get(), ("SET lock_timeout = " + std::to_string(lockTimeoutMs)).c_str()));
  return c;
}

// Runs the plan from o.clients threads; `makeClient` gives each thread its
// transfer function (its own connections inside).
using TransferFn = std::function<Outcome(const PlannedTransfer&)>;
BaselineResult runPlan(const std::vector<PlannedTransfer>& plan, const BaselineOptions& o,
                       const std::function<TransferFn(std::uint32_t client)>& makeClient) {
  std::vector<TransferFn> clients;
  for (std::uint32_t i = 0; i < o.clients; ++i) clients.push_back(makeClient(i));  // connects (may throw)
  std::atomic<std::size_t> next{0};
  std::mutex mu;
  BaselineResult res;
  std::vector<std::uint64_t> latencies;
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (auto& fn : clients) {
    threads.emplace_back([&, fn]() {
      std::vector<std::uint64_t> mine;
      std::uint64_t committed = 0, overdrawn = 0, failed = 0;
      std::string firstFailure;
      for (std::size_t i; (i = next.fetch_add(1)) < plan.size();) {
        auto t0 = std::chrono::steady_clock::now();
        Outcome out = fn(plan[i]);
        auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
        switch (out.ended) {
          case Ended::Committed:
            ++committed;
            mine.push_back(std::uint64_t(us.count()));
            break;
          case Ended::Overdrawn: ++overdrawn; break;
          case Ended::Failed:
            ++failed;
            if (firstFailure.empty()) firstFailure = out.why;
            break;
        }
      }
      std::lock_guard<std::mutex> lk(mu);
      latencies.insert(latencies.end(), mine.begin(), mine.end());
      res.committed += committed;
      res.overdrawn += overdrawn;
      res.failed += failed;
      if (res.firstFailure.empty()) res.firstFailure = firstFailure;
    });
  }
  for (auto& th : threads) th.join();
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::sort(latencies.begin(), latencies.end());
  if (!latencies.empty()) {
    res.p50Us = latencies[latencies.size() / 2];
    res.p99Us = latencies[std::min(latencies.size() - 1, latencies.size() * 99 / 100)];
  }
  return res;
}

}  // namespace

BaselineResult raw2pcBaseline(const std::vector<std::string>& banks, const std::vector<PlannedTransfer>& plan,
                              const BaselineOptions& o) {
  if (banks.size() != 2) throw std::invalid_argument("raw2pcBaseline: two banks");
  return runPlan(plan, o, [&](std::uint32_t client) -> TransferFn {
    auto conns = std::make_shared<std::vector<Conn>>();
    for (auto& b : banks) conns->push_back(connect(b, o.lockTimeoutMs));
    auto n = std::make_shared<std::uint64_t>(0);
    std::string gidBase = "demo-raw2pc-" + std::to_string(::getpid()) + "-" + std::to_string(client) + "-";
    return [conns, n, gidBase](const PlannedTransfer& t) -> Outcome {
      PGconn* payer = (*conns)[t.fromBank].get();
      PGconn* payee = (*conns)[1 - t.fromBank].get();
      std::string amount = std::to_string(t.amount);
      std::string gid = gidBase + std::to_string(++*n);
      auto undo = [&]() { runBoth(payer, {"ROLLBACK", {}}, payee, {"ROLLBACK", {}}); };
      auto begun = runBoth(payer, {"BEGIN", {}}, payee, {"BEGIN", {}});
      if (!begun.first.ok || !begun.second.ok) {
        undo();
        return {Ended::Failed, begun.first.ok ? begun.second.error : begun.first.error};
      }
      // Both statements in flight at once, as Keel prepares both branches.
      auto [debit, credit] =
          runBoth(payer, {kSqlDebit, {amount, accountName(t.from)}}, payee, {kSqlCredit, {amount, accountName(t.to)}});
      if (!debit.ok || !credit.ok || debit.rows != "1" || credit.rows != "1") {
        undo();
        if (debit.ok && debit.rows == "0" && t.overdraw) return {Ended::Overdrawn, ""};
        return {Ended::Failed, !debit.ok ? debit.error : !credit.ok ? credit.error : "a statement touched no row"};
      }
      auto prepared = runBoth(payer, {"PREPARE TRANSACTION " + gidLiteral(gid + "-a"), {}}, payee,
                              {"PREPARE TRANSACTION " + gidLiteral(gid + "-b"), {}});
      if (!prepared.first.ok || !prepared.second.ok) {
        // A failed PREPARE rolled its own transaction back; undo the other.
        if (prepared.first.ok) run(payer, {"ROLLBACK PREPARED " + gidLiteral(gid + "-a"), {}});
        if (prepared.second.ok) run(payee, {"ROLLBACK PREPARED " + gidLiteral(gid + "-b"), {}});
        return {Ended::Failed, prepared.first.ok ? prepared.second.error : prepared.first.error};
      }
      auto done = runBoth(payer, {"COMMIT PREPARED " + gidLiteral(gid + "-a"), {}}, payee,
                          {"COMMIT PREPARED " + gidLiteral(gid + "-b"), {}});
      if (!done.first.ok || !done.second.ok) {
        return {Ended::Failed, "COMMIT PREPARED failed: " + (done.first.ok ? done.second.error : done.first.error)};
      }
      return {Ended::Committed, ""};
    };
  });
}

BaselineResult oneDatabaseBaseline(const std::string& conn, std::uint32_t accounts,
                                   const std::vector<PlannedTransfer>& plan, const BaselineOptions& o) {
  return runPlan(plan, o, [&](std::uint32_t) -> TransferFn {
    auto c = std::make_shared<Conn>(connect(conn, o.lockTimeoutMs));
    return [c, accounts](const PlannedTransfer& t) -> Outcome {
      PGconn* pg = c->get();
      std::uint32_t payer = t.fromBank == 0 ? t.from : accounts + t.from;
      std::uint32_t payee = t.fromBank == 0 ? accounts + t.to : t.to;
      std::string amount = std::to_string(t.amount);
      auto begun = run(pg, {"BEGIN", {}});
      if (!begun.ok) {
        if (PQstatus(pg) != CONNECTION_OK) PQreset(pg);
        return {Ended::Failed, begun.error};
      }
      // Rows locked lower account first: opposite transfers never wait on
      // each other in a cycle.
      Answer debit, credit;
      if (payer < payee) {
        debit = run(pg, {kSqlDebit, {amount, accountName(payer)}});
        if (debit.ok && debit.rows == "1") credit = run(pg, {kSqlCredit, {amount, accountName(payee)}});
      } else {
        credit = run(pg, {kSqlCredit, {amount, accountName(payee)}});
        if (credit.ok) debit = run(pg, {kSqlDebit, {amount, accountName(payer)}});
      }
      if (debit.ok && debit.rows == "1" && credit.ok && credit.rows == "1") {
        auto committed = run(pg, {"COMMIT", {}});
        return committed.ok ? Outcome{Ended::Committed, ""} : Outcome{Ended::Failed, committed.error};
      }
      run(pg, {"ROLLBACK", {}});
      if (debit.ok && debit.rows == "0" && t.overdraw) return {Ended::Overdrawn, ""};
      return {Ended::Failed, !credit.ok && !credit.error.empty() ? credit.error
                             : !debit.ok                         ? debit.error
                                                                 : "a statement touched no row"};
    };
  });
}

}  // namespace keel::bank
