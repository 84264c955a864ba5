#include "bench/raw2pc.h"

#include <libpq-fe.h>
#include <unistd.h>

#include <memory>
#include <stdexcept>
#include <thread>

#include "common/types.h"
#include "tools/bank_sql.h"
#include "tools/pg_calls.h"

namespace keel::bench {

namespace {

using pgcall::gidLiteral;
using pgcall::runBoth;

constexpr const char* kDebit = "raw_debit";  // --raw-prepared: the statements' names
constexpr const char* kCredit = "raw_credit";

class RawClient final : public LoadClient {
 public:
  RawClient(const WorkloadSpec& spec, const Raw2pcOptions& opts, Live& live, std::uint32_t id)
      : opts_(opts), live_(live), id_(id), workload_(spec, opts.seed * 1000003 + id) {}
  ~RawClient() override {
    join();
    for (auto* c : conns_) PQfinish(c);
  }

 private:
  void run(std::latch& ready) override {
    for (auto& ci : opts_.conninfo) {
      PGconn* c = PQconnectdb(ci.c_str());
      conns_.push_back(c);
      if (PQstatus(c) != CONNECTION_OK) {
        connectError_ = ci + ": " + PQerrorMessage(c);
        break;
      }
      PQclear(PQexec(c, ("SET lock_timeout = " + std::to_string(opts_.lockTimeoutMs)).c_str()));
      if (opts_.prepared) {
        for (auto [name, sql] : {std::pair{kDebit, bank::kSqlDebit}, std::pair{kCredit, bank::kSqlCredit}}) {
          PGresult* r = PQprepare(c, name, sql, 0, nullptr);
          bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
          if (!ok) connectError_ = ci + ": preparing " + name + ": " + PQresultErrorMessage(r);
          PQclear(r);
          if (!ok) break;
        }
        if (!connectError_.empty()) break;
      }
    }
    ready.count_down();
    if (!connectError_.empty()) return;
    while (live_.phase.load(std::memory_order_relaxed) != Phase::Stop) transfer();
  }

  void transfer() {
    auto t = workload_.nextTransfer();
    PGconn* a = conns_[t.from];
    PGconn* b = conns_[t.to];
    std::string gid = "raw2pc-" + std::to_string(::getpid()) + "-" + std::to_string(id_) + "-" + std::to_string(++n_);
    std::string amount = std::to_string(t.amount);
    const auto t0 = monoMicros();
    auto begun = runBoth(a, {"BEGIN", {}}, b, {"BEGIN", {}});
    if (!begun.first.ok || !begun.second.ok) return fail(a, b, begun.first.ok ? begun.second.error : begun.first.error);
    auto moved = runBoth(a, {bank::kSqlDebit, {amount, t.fromAccount}, opts_.prepared ? kDebit : nullptr}, b,
                         {bank::kSqlCredit, {amount, t.toAccount}, opts_.prepared ? kCredit : nullptr});
    bool applied = moved.first.ok && moved.second.ok && moved.first.rows == "1" && moved.second.rows == "1";
    if (!applied) {
      runBoth(a, {"ROLLBACK", {}}, b, {"ROLLBACK", {}});
      // An overdraft touches no row; a lock timeout fails the statement.
      bool intended = t.overdraw && moved.first.ok;
      countAnswer(live_, hist_, monoMicros() - t0, false, intended);
      if (!intended) live_.unexpectedRollback(moved.first.ok ? moved.second.error : moved.first.error);
      return;
    }
    auto prepared = runBoth(a, {"PREPARE TRANSACTION " + gidLiteral(gid + "-a"), {}}, b,
                         {"PREPARE TRANSACTION " + gidLiteral(gid + "-b"), {}});
    if (!prepared.first.ok || !prepared.second.ok) {
      // A failed PREPARE has rolled its transaction back; undo the other.
      if (prepared.first.ok) pgcall::run(a, {"ROLLBACK PREPARED " + gidLiteral(gid + "-a"), {}});
      if (prepared.second.ok) pgcall::run(b, {"ROLLBACK PREPARED " + gidLiteral(gid + "-b"), {}});
      countAnswer(live_, hist_, monoMicros() - t0, false, false);
      live_.unexpectedRollback("PREPARE TRANSACTION failed: " +
                               (prepared.first.ok ? prepared.second.error : prepared.first.error));
      return;
    }
    auto done = runBoth(a, {"COMMIT PREPARED " + gidLiteral(gid + "-a"), {}}, b,
                     {"COMMIT PREPARED " + gidLiteral(gid + "-b"), {}});
    if (!done.first.ok || !done.second.ok) {
      countError(live_, "COMMIT PREPARED failed: " + (done.first.ok ? done.second.error : done.first.error));
      return;
    }
    countAnswer(live_, hist_, monoMicros() - t0, true, false);
  }

  void fail(PGconn* a, PGconn* b, const std::string& why) {
    countError(live_, why);
    for (PGconn* c : {a, b}) {
      if (PQstatus(c) != CONNECTION_OK) {
        PQreset(c);
      } else {
        PQclear(PQexec(c, "ROLLBACK"));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  const Raw2pcOptions& opts_;
  Live& live_;
  const std::uint32_t id_;
  Workload workload_;
  std::vector<PGconn*> conns_;
  std::uint64_t n_ = 0;
};

}  // namespace

RunResult runRaw2pc(const WorkloadSpec& spec, const Raw2pcOptions& opts, const std::vector<WatchedProcess>& processes) {
  if (spec.kind != "transfer" || spec.readPercent != 0) {
    throw std::invalid_argument("raw2pc runs the transfer workload only (--workload transfer, --read-percent 0)");
  }
  if (opts.conninfo.size() != spec.agents.size()) throw std::invalid_argument("raw2pc: one database per agent");
  Live live;
  std::vector<std::unique_ptr<LoadClient>> clients;
  for (std::uint32_t i = 0; i < opts.concurrency; ++i) clients.push_back(std::make_unique<RawClient>(spec, opts, live, i));
  RunResult r;
  r.mode = "raw2pc";
  r.concurrency = opts.concurrency;
  r.connections = opts.concurrency * std::uint32_t(opts.conninfo.size());
  runClients(clients, live, "raw2pc: cannot connect", opts.window, processes, r, nullptr, nullptr);
  return r;
}

}  // namespace keel::bench
