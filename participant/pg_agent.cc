#include "participant/pg_agent.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <map>
#include <thread>

#include <kj/vector.h>

#include "common/failpoint.h"
#include "common/fault.h"
#include "common/log.h"
#include "participant/adapters/pg_row_check.h"
#include "participant/adapters/pg_sql.h"

namespace keel {

using pg::kUndefinedObject;
using pg::quoteLiteral;
using pg::rollbackPrepared;

namespace {

// Type OIDs of the parameters we send: the declared types.
constexpr Oid kInt8 = 20, kText = 25, kBool = 16, kFloat8 = 701;

// The name of `SELECT txid_current()` on the prepare connections (their
// set-up SQL prepares it); the declared statements' names are keel_<n>.
constexpr const char* kTxidStatement = "keel_txid";

// txid_status() of a transaction: "committed", "aborted", "in progress", or
// "" when PostgreSQL cannot tell (no txid recorded, NULL: too old to tell, or
// a txid this server has not reached). Throws while PostgreSQL is unreachable.
std::string txidStatus(PGconn* c, std::uint64_t txid) {
  if (txid == 0) return "";
  try {
    auto r = pg::exec(c, "SELECT txid_status(" + std::to_string(txid) + ")");
    return PQgetisnull(r.get(), 0, 0) ? "" : PQgetvalue(r.get(), 0, 0);
  } catch (const pg::PgError& e) {
    if (e.sqlstate() != "22023") throw;  // "transaction ID ... is in the future"
    return "";
  }
}

// How a txid's status reads in a reason.
std::string statusText(std::uint64_t txid, const std::string& status) {
  if (txid == 0) return "no txid recorded for it";
  return "txid_status(" + std::to_string(txid) + ") is " + (status.empty() ? "NULL" : "'" + status + "'");
}

}  // namespace

bool commitErrorMeansRolledBack(const pg::PgError& e) {
  if (e.connectionLost()) return false;
  const std::string& st = e.sqlstate();
  // Class 40: transaction rollback (serialization failure, deadlock);
  // class 23: a deferred constraint checked at COMMIT. Both are raised
  // before the commit record is written.
  return st.rfind("40", 0) == 0 || st.rfind("23", 0) == 0;
}

std::string describePgError(const pg::PgError& e) {
  const std::string& st = e.sqlstate();
  std::string what = e.what();
  if (e.connectionLost()) return "connection to PostgreSQL lost: " + what;
  if (st == "40001") return "serialization failure: " + what;
  if (st == "40P01") return "deadlock detected: " + what;
  if (st.rfind("23", 0) == 0) return "constraint violation: " + what;
  if (st == "55P03") return "lock not available in time: " + what;
  return what + " (SQLSTATE " + st + ")";
}

PgAgent::PgAgent(PgAgentOptions opts, kj::AsyncIoContext& io)
    : opts_(std::move(opts)), log_(opts_.dataDir, opts_.mapSizeBytes, opts_.redo), timer_(io.provider->getTimer()) {
  if (opts_.statements.empty()) {
    throw std::runtime_error("postgres agent " + opts_.name +
                             " declares no statements: clients could call none (docs/postgres.md, \"Declared "
                             "statements\")");
  }
  log_.check();
  for (const auto& [name, decl] : opts_.statements) {
    if (auto cut = pg::rowCheckable(decl.sql)) {
      std::string wrapped = decl.expectRows >= 0 ? pg::rowCheckedSql(*cut, decl.expectRows) : "";
      checkable_.emplace(name, RowCheckable{std::move(*cut), std::move(wrapped)});
    }
  }
  GroupCommitLog::Options lo;
  lo.lazyDelay = std::chrono::milliseconds(opts_.lazyDelayMs);
  log_.setLogOptions(lo);
  sessionPrefix_ = pgSessionPrefix(opts_.dataDir);
  const std::string named = sessionPrefix_.empty()
                                ? ""
                                : "SET application_name = " + quoteLiteral(pgSessionName(sessionPrefix_, opts_.name));
  // Any pool connecting again means PostgreSQL is back: what failed
  // meanwhile is retried, and the keeper sweeps, at once.
  // Phase 2 gets connections of its own, as many as the prepares have: each
  // COMMIT PREPARED waits for PostgreSQL's WAL flush, and a batch of them
  // from the coordinator runs side by side (PostgreSQL flushes concurrent
  // commits together), not one after another.
  finishPool_ = std::make_unique<pg::Pool>(opts_.conninfo, std::max<std::uint32_t>(2, opts_.poolSize), named,
                                           [this] { reconnected(); });
  // The same on the loop, for the hot path (pg_loop.h).
  // Its connections also hold `SELECT txid_current()` as a named
  // statement (kTxidStatement), sent with every prepare.
  loopPrepare_ = std::make_unique<pg::LoopPool>(io.unixEventPort, timer_, opts_.conninfo, opts_.poolSize,
                                                (named.empty() ? "" : named + "; ") + "SET lock_timeout = " +
                                                    std::to_string(opts_.lockTimeoutMs) + "; PREPARE " +
                                                    kTxidStatement + " AS SELECT txid_current()",
                                                [this] { reconnected(); });
  loopFinish_ = std::make_unique<pg::LoopPool>(io.unixEventPort, timer_, opts_.conninfo,
                                               std::max<std::size_t>(2, opts_.poolSize), named, [this] { reconnected(); });
}

void PgAgent::start() {
  log_.start();
  reconcile();
}

PgAgent::~PgAgent() noexcept {
  // Calls still running are cancelled first, while the pools they lease
  // connections from exist: a caller that gave up on a call (a deadline, a
  // connection closed) may leave its promise to the event loop, which
  // destroys it only when it is itself torn down, after this agent.
  // (keel-chaos found the heap corrupted at a stop under load; ASan named
  // a LoopPool lease given back to a destroyed pool.)
  canceler_.cancel("the postgres agent is stopping");
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  keeperCv_.notify_all();
  if (keeper_.joinable()) keeper_.join();
  loopPrepare_.reset();  // no prepare queues a PREPARED record after this
  loopFinish_.reset();
  // Every lazy PREPARED record is written (and its done() has run, which may
  // post to the finish pool) once a forced job queued after them is durable.
  try {
    if (log_.started()) log_.log().runSync([](lmdb::Txn&) {});  // not started: a refused start
  } catch (const std::exception& e) {
    KEEL_LOG_WARN("postgres agent: last branch-log flush failed: {}", e.what());
  }
  finishPool_.reset();
}

std::optional<std::string> PgAgent::validate(const std::vector<Op>& ops) const {
  if (ops.size() > Limits::kMaxOpsPerInteraction) return "too many operations in one branch";
  if (auto full = log_.fullReason(opts_.name)) return full;
  for (const auto& op : ops) {
    if (!op.participant.empty() && op.participant != opts_.name) {
      return "operation addressed to participant " + op.participant + ", this agent is " + opts_.name;
    }
    if (op.kind != OpKind::Sql) {
      return std::string("the postgres adapter runs declared SQL statements, not ") + opKindName(op.kind) +
             " operations";
    }
    // Nothing from the coordinator is trusted: the call is checked against
    // this agent's own declaration before anything reaches PostgreSQL.
    if (!op.sql.empty()) return std::string(kFreeSqlRefused);
    auto it = opts_.statements.find(op.statementName);
    if (it == opts_.statements.end()) {
      return notDeclared(opts_.statements, op.statementName, opts_.name);
    }
    if (auto bad = checkCall(it->second, op)) return bad;
  }
  return std::nullopt;
}

const DeclaredStatement& PgAgent::declared(const Op& op) const { return opts_.statements.at(op.statementName); }

const PgAgent::RowCheckable* PgAgent::checkableSql(const Op& op) const {
  auto it = checkable_.find(op.statementName);
  return it == checkable_.end() ? nullptr : &it->second;
}

// One call of a declared statement as libpq takes it: the declaration's SQL
// text, its parameters in text format with the declared types, and the row
// count it must touch (-1 = any). The call was checked (validate).
// `checkable`: the statement prepared for PostgreSQL's own row check
// (pg_row_check.h), or null when it cannot have one; with a required count
// and a checkable statement, the wrapped text runs instead (the declared
// count's made once, an operation's own count's here), and PostgreSQL
// fails a wrong count itself.
struct PgAgent::Call {
  const std::string& name;
  const std::string& sql;
  std::int64_t requiredRows;
  // The wrapped text (serverChecked): the agent's for the declared count,
  // or made for this call's own count.
  const std::string* sharedChecked = nullptr;
  std::string ownChecked;
  // sendOneTrip: the name this call's text is being parsed under in its
  // pipeline (a result of its own comes before the statement's), or "".
  std::string parsing;
  std::vector<Oid> types;
  std::vector<std::string> texts;
  std::vector<const char*> values;
  Call(const Op& op, const DeclaredStatement& decl, const RowCheckable* checkable = nullptr)
      : name(decl.name), sql(decl.sql), requiredRows(keel::requiredRows(decl, op)) {
    if (checkable != nullptr && requiredRows >= 0) {
      if (requiredRows == decl.expectRows) {
        sharedChecked = &checkable->wrapped;
      } else {
        ownChecked = pg::rowCheckedSql(checkable->cut, requiredRows);
      }
    }
    texts.reserve(op.params.size());
    for (std::size_t k = 0; k < op.params.size(); ++k) {
      const auto& p = op.params[k];
      switch (decl.params[k].type) {
        case SqlValue::Type::Int: types.push_back(kInt8); break;
        case SqlValue::Type::Float: types.push_back(kFloat8); break;
        case SqlValue::Type::Bool: types.push_back(kBool); break;
        default: types.push_back(kText); break;
      }
      switch (p.type) {
        case SqlValue::Type::Null: texts.emplace_back(); break;
        case SqlValue::Type::Int: texts.push_back(std::to_string(p.i)); break;
        case SqlValue::Type::Text: texts.push_back(p.text); break;
        case SqlValue::Type::Float: texts.push_back(floatText(p.f)); break;
        case SqlValue::Type::Bool: texts.push_back(p.b ? "true" : "false"); break;
      }
    }
    for (std::size_t k = 0; k < op.params.size(); ++k) {
      values.push_back(op.params[k].type == SqlValue::Type::Null ? nullptr : texts[k].c_str());
    }
  }
  int count() const { return int(values.size()); }
  // PostgreSQL checks the row count (the wrapped text runs).
  bool serverChecked() const { return sharedChecked != nullptr || !ownChecked.empty(); }
  const std::string& text() const {
    if (sharedChecked != nullptr) return *sharedChecked;
    if (!ownChecked.empty()) return ownChecked;
    return sql;
  }
  // No row count to check, or PostgreSQL checks it: PREPARE TRANSACTION
  // may follow in the same pipeline.
  bool checkedBeforePrepare() const { return requiredRows < 0 || serverChecked(); }
  // The shortest text that reads back as the same double ("0.1", "1e-09").
  static std::string floatText(double f) {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, f);
    return std::string(buf, r.ptr);
  }
};

namespace {

using Call = PgAgent::Call;

// The error a failed result carries, named after what failed.
pg::PgError errorOf(const PGresult* r, const std::string& what) {
  auto e = pg::resultError(r);
  return pg::PgError(what + ": " + e.what(), e.sqlstate());
}

// The PgError of a statement that touched `got` rows where it must touch
// `call.requiredRows`: SQLSTATE "KEEL1".
pg::PgError wrongRowCount(const std::string& what, const Call& call, std::int64_t got) {
  return pg::PgError(what + " touched " + std::to_string(got) + " rows, " + std::to_string(call.requiredRows) +
                         " required",
                     "KEEL1");
}

// The outcome of statement i (0-based) from its result; throws PgError with
// its SQLSTATE, or "KEEL1" when it touched a number of rows it must not
// (found here, or by PostgreSQL for a serverChecked call). Reasons name it
// "statement 2 (debit)".
OpResult resultOf(PGresult* r, const Call& call, std::size_t i) {
  const std::string what = "statement " + std::to_string(i + 1) + " (" + call.name + ")";
  auto st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    if (call.serverChecked()) {
      const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
      const char* primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
      if (state != nullptr && primary != nullptr) {
        if (auto got = pg::rowCheckFailure(state, primary)) throw wrongRowCount(what, call, *got);
      }
    }
    throw errorOf(r, what);
  }
  OpResult out;
  if (call.serverChecked()) {
    // One row: the count PostgreSQL checked (it touched no rows to return).
    if (st != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) != 1 || PQgetisnull(r, 0, 0)) {
      throw pg::PgError(what + ": the row check returned no count", "KEEL2");
    }
    out.affected = std::atoll(PQgetvalue(r, 0, 0));
  } else if (st == PGRES_TUPLES_OK) {
    out.affected = PQntuples(r);
    for (int row = 0; row < PQntuples(r); ++row) {
      std::vector<std::optional<std::string>> cells;
      for (int col = 0; col < PQnfields(r); ++col) {
        if (PQgetisnull(r, row, col)) {
          cells.emplace_back(std::nullopt);
        } else {
          cells.emplace_back(std::string(PQgetvalue(r, row, col), PQgetlength(r, row, col)));
        }
      }
      out.rows.push_back(std::move(cells));
    }
  } else {
    out.affected = std::atoll(PQcmdTuples(r));
  }
  if (call.requiredRows >= 0 && out.affected != call.requiredRows) throw wrongRowCount(what, call, out.affected);
  return out;
}

// A one-phase branch's marker row (docs/postgres.md, "One participant only").
std::string markerInsertSql(const std::string& gid) {
  return std::string("INSERT INTO ") + kMarkerTable + " (gid) VALUES (" + quoteLiteral(gid) + ")";
}
constexpr const char* kMarkerInsertWhat = "INSERT INTO keel_one_phase";
// What ends a prepare's trip (or follows it, sendOneTrip).
std::string prepareTransactionSql(const std::string& gid) { return "PREPARE TRANSACTION " + quoteLiteral(gid); }

}  // namespace

bool PgAgent::sendOneTrip(pg::LoopConn& lc, const std::vector<Op>& ops, std::vector<Call>& calls,
                          const std::string& closing) {
  PGconn* c = lc.get();
  // BEGIN, the statements and PREPARE TRANSACTION go out in one pipeline
  // with one Sync: one round trip instead of two plus one per statement.
  // An error stops PostgreSQL at that statement (the rest come back
  // "aborted"), so nothing is prepared.
  //
  // Every transaction this agent prepares must have passed its checks:
  // a branch refused for its row count but prepared first (and undone
  // after) leaves, if we crash in between, a prepared transaction without
  // a record that start-up's reconcile cannot tell from a YES vote whose
  // lazy record was lost — which a staged interaction's recovery reads as
  // a YES and commits (keel-chaos --embedded found an overdraft committed
  // so). So a checked row count is checked by PostgreSQL itself where the
  // statement can be wrapped for it (pg_row_check.h): a wrong count is an
  // error that stops the pipeline before PREPARE TRANSACTION. Where it
  // cannot (a SELECT, a RETURNING of its own), the count is seen only here
  // after the pipeline ran, so PREPARE TRANSACTION is a second round trip,
  // sent only once every count is right (prepareOnLoop).
  if (PQenterPipelineMode(c) != 1) lc.lost("entering pipeline mode");
  auto send = [&](const std::string& sql, const Call* p) {
    int ok = p != nullptr ? PQsendQueryParams(c, sql.c_str(), p->count(), p->types.data(), p->values.data(), nullptr,
                                              nullptr, 0)
                          : PQsendQueryParams(c, sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0);
    if (ok != 1) lc.lost("sending a statement");
  };
  // A declared statement runs as a named prepared statement of the
  // connection: parsed and planned by PostgreSQL once per connection (its
  // Parse rides the first pipeline that needs it), not once per call.
  std::map<std::string, std::string> parsingHere;  // text -> name, Parse sent in this pipeline
  auto sendCall = [&](Call& k) {
    const std::string& text = k.text();
    const std::string* name = lc.statementName(text);
    if (name == nullptr) {
      auto here = parsingHere.find(text);
      if (here != parsingHere.end()) {
        name = &here->second;
      } else if (auto fresh = lc.newStatementName()) {
        if (PQsendPrepare(c, fresh->c_str(), text.c_str(), k.count(), k.types.data()) != 1) {
          lc.lost("sending a statement");
        }
        k.parsing = *fresh;
        name = &parsingHere.emplace(text, std::move(*fresh)).first->second;
      }
    }
    if (name == nullptr) return send(text, &k);
    if (PQsendQueryPrepared(c, name->c_str(), k.count(), k.values.data(), nullptr, nullptr, 0) != 1) {
      lc.lost("sending a statement");
    }
  };
  send("BEGIN", nullptr);
  calls.clear();
  calls.reserve(ops.size());
  for (const auto& op : ops) {
    calls.emplace_back(op, declared(op), checkableSql(op));
    sendCall(calls.back());
  }
  // The txid goes into the PREPARED record: once the gid is gone, its
  // txid_status tells whether PostgreSQL committed or rolled it back.
  // (SELECT txid_current(), prepared when the connection was opened.)
  if (PQsendQueryPrepared(c, kTxidStatement, 0, nullptr, nullptr, nullptr, 0) != 1) lc.lost("sending a statement");
  bool withPrepare = std::all_of(calls.begin(), calls.end(), [](const Call& k) { return k.checkedBeforePrepare(); });
  if (withPrepare) send(closing, nullptr);
  if (PQpipelineSync(c) != 1) lc.lost("sending the pipeline");
  return withPrepare;
}

PgAgent::OneTrip PgAgent::readOneTrip(pg::LoopConn& lc, std::vector<pg::Result>& rs, const std::vector<Call>& calls,
                                      std::vector<OpResult>& results, bool withPrepare, const char* closingWhat) {
  PGconn* c = lc.get();
  // rs: the first result of BEGIN, of each statement (after its Parse's
  // where it is parsed in this pipeline: Call::parsing), of SELECT
  // txid_current() and (withPrepare) of PREPARE TRANSACTION, then the Sync's.
  results.clear();
  OneTrip out;
  std::size_t parses = std::count_if(calls.begin(), calls.end(), [](const Call& k) { return !k.parsing.empty(); });
  if (rs.size() != calls.size() + parses + (withPrepare ? 4 : 3) ||
      PQresultStatus(rs.back().get()) != PGRES_PIPELINE_SYNC) {
    lc.lost("the pipeline's results");
  }
  std::optional<pg::PgError> statementError;
  PGresult* begun = rs[0].get();
  if (PQresultStatus(begun) != PGRES_COMMAND_OK) statementError.emplace(errorOf(begun, "BEGIN"));
  std::size_t at = 1;  // the next result to read
  for (std::size_t i = 0; i < calls.size(); ++i) {
    if (!calls[i].parsing.empty()) {
      PGresult* parsed = rs[at++].get();
      auto pst = PQresultStatus(parsed);
      if (pst == PGRES_COMMAND_OK) {
        lc.statementPrepared(calls[i].text(), calls[i].parsing);
      } else if (pst != PGRES_PIPELINE_ABORTED && !statementError) {
        statementError.emplace(errorOf(parsed, "statement " + std::to_string(i + 1) + " (" + calls[i].name + ")"));
      }
    }
    PGresult* r = rs[at++].get();
    if (statementError || PQresultStatus(r) == PGRES_PIPELINE_ABORTED) continue;
    try {
      results.push_back(resultOf(r, calls[i], i));
    } catch (const pg::PgError& e) {
      if (e.sqlstate() == "KEEL1") {
        // Found by PostgreSQL (serverChecked: the rest of the pipeline
        // comes back aborted) or here (PREPARE TRANSACTION is not in this
        // pipeline; PostgreSQL carried on).
        out.wrongRows = e.what();
      } else {
        statementError.emplace(e);
      }
    }
  }
  PGresult* txid = rs[at].get();
  if (!statementError && PQresultStatus(txid) == PGRES_TUPLES_OK && PQntuples(txid) == 1) {
    out.txid = std::stoull(PQgetvalue(txid, 0, 0));
  } else if (!statementError && PQresultStatus(txid) != PGRES_PIPELINE_ABORTED) {
    statementError.emplace(errorOf(txid, "SELECT txid_current()"));
  }
  if (withPrepare) {
    PGresult* prepared = rs[at + 1].get();
    auto pst = PQresultStatus(prepared);
    if (pst == PGRES_COMMAND_OK) {
      out.prepared = true;
    } else if (pst != PGRES_PIPELINE_ABORTED && !statementError) {
      auto e = errorOf(prepared, closingWhat);
      if (e.connectionLost()) lc.lost(closingWhat);
      out.prepareFailed = describePgError(e);
    }
  }
  if (PQexitPipelineMode(c) != 1) lc.lost("leaving pipeline mode");
  if (statementError) {
    if (statementError->connectionLost()) lc.lost("a statement");
    // "cached plan must not change result type": a table under a named
    // statement changed shape. A new session parses it afresh.
    if (statementError->sqlstate() == "0A000") lc.poison();
    out.refused = describePgError(*statementError);
  }
  return out;
}

kj::Promise<void> PgAgent::failpointOnLoop(const char* name) {
  unsigned ms = failpoint::hitDeferred(name);
  if (ms == 0) return kj::READY_NOW;
  return timer_.afterDelay(ms * kj::MILLISECONDS);
}

kj::Promise<PrepareResult> PgAgent::prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  log_.fence(seqNode(xid.seq), epoch);
  KEEL_FAILPOINT("agent.before_execute");
  if (auto bad = validate(ops)) return PrepareResult{Vote::No, *bad, {}};
  if (auto pendingT = pendingTxid(xid)) {  // repeated, its record not yet written
    PrepareResult r{Vote::Yes, "", {}};
    r.hostTxid = *pendingT;
    return r;
  }
  if (auto late = log_.releasedReason(xid)) return PrepareResult{Vote::No, *late, {}};
  if (auto existing = log_.branches({xid})[0]) {
    if (existing->state == BranchStatus::Prepared) {  // repeated
      PrepareResult r{Vote::Yes, "", {}};
      r.hostTxid = existing->hostTxid;
      return r;
    }
    return PrepareResult{Vote::No,
                         std::string("branch ") + xid.str() + " already " + branchStatusName(existing->state) +
                             (existing->tombstone ? " (rolled back before it arrived)" : ""),
                         {}};
  }
  return canceler_.wrap(
      loopPrepare_
          ->run<PrepareResult>([this, epoch, xid, ops = std::move(ops)](pg::LoopConn& lc) mutable {
            return prepareOnLoop(lc, epoch, xid, std::move(ops));
          })
          .then([](PrepareResult r) {
            if (r.vote == Vote::Yes) KEEL_FAILPOINT("agent.after_prepared_durable");
            return r;
          }));
}

// What one prepare carries from step to step on the loop.
struct PgAgent::PrepareState {
  std::uint64_t epoch;
  Xid xid;
  std::vector<Op> ops;
  std::string gid;
  std::vector<Call> calls;
  std::vector<OpResult> results;
  bool withPrepare = true;  // PREPARE TRANSACTION in the pipeline (sendOneTrip)
  OneTrip trip;
  std::optional<std::string> why;  // refused: the NO vote's reason
};

kj::Promise<PrepareResult> PgAgent::prepareOnLoop(pg::LoopConn& lc, std::uint64_t epoch, Xid xid,
                                                  std::vector<Op> ops) {
  auto st = kj::heap<PrepareState>(PrepareState{epoch, xid, std::move(ops), gid(xid), {}, {}, true, {}, {}});
  PrepareState& s = *st;
  // In flight from before PREPARE TRANSACTION until the record is durable
  // or on its way (pending_): the keeper's sweep leaves this branch's gid
  // to us meanwhile.
  {
    std::lock_guard<std::mutex> lk(mu_);
    preparing_.insert(xid);
  }
  auto inFlight = kj::defer([this, xid] {
    std::lock_guard<std::mutex> lk(mu_);
    preparing_.erase(xid);
  });
  // ROLLBACK PREPARED of this branch's gid on `lc`; fails (a fault) when
  // PostgreSQL fails it; a gid it does not hold is fine.
  auto rollbackPreparedOnLoop = [&lc, &s] {
    return lc.query("ROLLBACK PREPARED " + quoteLiteral(s.gid)).then([](pg::Result r) {
      auto e = pg::errorIn(r);
      if (e && e->sqlstate() != kUndefinedObject) kj::throwFatalException(faultException(describePgError(*e)));
    });
  };
  return failpointOnLoop("agent.after_execute")  // before the one round trip that runs and prepares
      .then([this, &lc, &s] {
        s.withPrepare = sendOneTrip(lc, s.ops, s.calls, prepareTransactionSql(s.gid));
        return lc.flush();
      })
      .then([&lc] { return lc.collectPipeline(); })
      .then([this, &lc, &s](std::vector<pg::Result> rs) -> kj::Promise<void> {
        s.trip = readOneTrip(lc, rs, s.calls, s.results, s.withPrepare);
        if (!s.withPrepare && !s.trip.refused && !s.trip.wrongRows) {
          // Every row count right: now PREPARE TRANSACTION (sendOneTrip).
          return lc.query(prepareTransactionSql(s.gid)).then([&lc, &s](pg::Result r) {
            if (auto e = pg::errorIn(r)) {
              if (e->connectionLost()) lc.lost("PREPARE TRANSACTION");
              s.trip.prepareFailed = describePgError(*e);  // it became a ROLLBACK
              return;
            }
            s.trip.prepared = true;
          });
        }
        // An error inside the transaction block leaves it aborted; a wrong
        // row count leaves it open; a failed PREPARE TRANSACTION already
        // rolled it back (ROLLBACK then only warns).
        if (s.trip.prepared) return kj::READY_NOW;
        return lc.query("ROLLBACK").ignoreResult();
      })
      .then([&s, rollbackPreparedOnLoop]() -> kj::Promise<void> {
        s.why = s.trip.refused ? s.trip.refused : s.trip.wrongRows;
        if (s.why) KEEL_FAILPOINT("pg.before_no_vote");  // refused, its NO not yet on file nor sent
        // Never both prepared and refused now (sendOneTrip); kept as the
        // last line of defence: undone before the NO vote.
        if (s.trip.prepared && s.why) return rollbackPreparedOnLoop();
        return kj::READY_NOW;
      })
      .then([this, &s, rollbackPreparedOnLoop]() -> kj::Promise<PrepareResult> {
        if (s.why) {
          // Refused: PostgreSQL rolled it back; the branch log says so too.
          // The job takes copies: it runs on the log's writer even when
          // this call is cancelled meanwhile (the coordinator gave up on
          // it), which frees `s` (kj::heap, attached below).
          return log_.log()
              .run([this, xid = s.xid, epoch = s.epoch, why = *s.why](lmdb::Txn& txn) {
                log_.storeEpoch(txn, seqNode(xid.seq), epoch);
                if (log_.read(txn, xid)) return;
                BranchRecord rec;
                rec.xid = xid;
                rec.createdUs = wallMicros();
                rec.reason = why;
                log_.finish(txn, rec, BranchStatus::RolledBack, epoch);
              })
              .then([&s] { return PrepareResult{Vote::No, *s.why, {}}; });
        }
        if (!s.trip.prepared) {
          return PrepareResult{Vote::No, "PREPARE TRANSACTION failed: " + s.trip.prepareFailed.value_or("?"), {}};
        }
        return failpointOnLoop("pg.after_host_prepare").then([this, &s, rollbackPreparedOnLoop] {
          // PostgreSQL's prepared transaction is the durable PREPARED
          // state: its gid names this branch, it survives a crash of
          // PostgreSQL and of this agent, and start-up's reconcile turns a
          // gid without a record into a PREPARED record in doubt (asked of
          // the coordinator, never rolled back on its own). So the vote
          // need not wait for a durable write of ours; the record is
          // written lazily (see recordPrepared). The one exception is a
          // coordinator epoch not yet durable here: the fence must survive
          // a crash before we vote under it.
          // A record here already is a rollback's tombstone: the rollback
          // overtook us and may have looked for PostgreSQL's prepared
          // transaction before we made it. Undo it and vote NO.
          kj::Promise<bool> ours = false;
          if (!log_.branches({s.xid})[0] && !log_.released(s.xid)) {
            ours = recordPrepared(s.epoch, s.xid, s.ops, s.trip.txid,
                                  /*force=*/epochNeedsForce(seqNode(s.xid.seq), s.epoch));
          }
          return ours.then([this, &s, rollbackPreparedOnLoop](bool mine) -> kj::Promise<PrepareResult> {
            if (mine) {
              PrepareResult r{Vote::Yes, "", std::move(s.results)};
              r.hostTxid = s.trip.txid;  // the coordinator keeps it and sends it back with commit
              return r;
            }
            return rollbackPreparedOnLoop().then(
                [&s] {
                  return PrepareResult{Vote::No, "branch " + s.xid.str() + " was rolled back before it was prepared",
                                       {}};
                },
                [this, &s](kj::Exception&& e) -> PrepareResult {
                  owe(s.xid, Owe::Settle, s.epoch, 1);  // the tombstone says rolled back: retried until PostgreSQL answers
                  kj::throwFatalException(kj::mv(e));
                });
          });
        });
      })
      .attach(kj::mv(st), kj::mv(inFlight));
}

// The lazy write of a PREPARED record (see prepare): apply runs on the
// log's writer thread, done after its group commit.
class PgAgent::PreparedRecordJob final : public GroupCommitLog::Job {
 public:
  PreparedRecordJob(PgAgent& agent, std::uint64_t epoch, Xid xid, std::vector<Op> ops, std::uint64_t txid)
      : agent_(agent), epoch_(epoch), xid_(xid), ops_(std::move(ops)), txid_(txid) {}
  void apply(lmdb::Txn& txn) override {
    KEEL_FAILPOINT("pg.before_lazy_prepared_record");  // the vote may have left already
    written_ = agent_.writePrepared(txn, epoch_, xid_, ops_, txid_);
  }
  void done(std::exception_ptr err) noexcept override { agent_.preparedRecordDone(xid_, err, written_); }

 private:
  PgAgent& agent_;
  const std::uint64_t epoch_;
  const Xid xid_;
  std::vector<Op> ops_;
  const std::uint64_t txid_;
  bool written_ = false;
};

bool PgAgent::writePrepared(lmdb::Txn& txn, std::uint64_t epoch, Xid xid, const std::vector<Op>& ops,
                            std::uint64_t txid) const {
  log_.storeEpoch(txn, seqNode(xid.seq), epoch);
  // A record there already is a rollback's (its tombstone): it came first.
  // Released since the prepare began: a late duplicate, undone the same way.
  if (log_.read(txn, xid) || log_.released(xid)) return false;
  BranchRecord rec;
  rec.xid = xid;
  rec.epoch = epoch;
  rec.ops = ops;
  rec.state = BranchStatus::Prepared;
  rec.hostTxid = txid;
  rec.hostIncarnation = log_.incarnation();  // in gid(xid): what commit and rollback name
  rec.createdUs = rec.preparedUs = wallMicros();
  KEEL_FAILPOINT("agent.before_prepared_durable");
  log_.put(txn, rec);
  return true;
}

kj::Promise<bool> PgAgent::recordPrepared(std::uint64_t epoch, Xid xid, const std::vector<Op>& ops,
                                          std::uint64_t txid, bool force) {
  if (force) {
    return log_.log()
        .run([this, epoch, xid, ops, txid](lmdb::Txn& txn) { return writePrepared(txn, epoch, xid, ops, txid); })
        .then([this, epoch, xid](bool written) {
          std::lock_guard<std::mutex> lk(mu_);
          auto& d = durableEpochs_[seqNode(xid.seq)];
          d = std::max(d, epoch);
          return written;
        });
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    pending_[xid] = PendingVote{txid, epoch, wallMicros()};
  }
  log_.log().submitLazy(std::make_unique<PreparedRecordJob>(*this, epoch, xid, ops, txid));
  return true;
}

void PgAgent::preparedRecordDone(Xid xid, std::exception_ptr err, bool written) noexcept {
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = pending_.find(xid);
    // Failed: the vote has left and nothing is on file, but PostgreSQL
    // holds the branch prepared: still listed (unrecorded_) until recorded.
    if (err && it != pending_.end()) unrecorded_.insert(*it);
    if (it != pending_.end()) pending_.erase(it);
  }
  if (err) {
    KEEL_LOG_WARN(
        "branch {}: its PREPARED record was not written ({}); PostgreSQL holds it prepared, and its commit, "
        "rollback or start-up's reconcile records it",
        xid.str(), describeFault(toKjException(err)));
  } else if (!written) {
    // A rollback's tombstone landed first: it may have looked for
    // PostgreSQL's prepared transaction before we made it. Undo it (a crash
    // first leaves it to reconcile, which finds the tombstone; a failure,
    // to the keeper's retries).
    finishPool_->post([this, xid, g = gid(xid)](PGconn* c) {
      try {
        if (c == nullptr) throw pg::PgError("cannot connect to PostgreSQL", "");
        rollbackPrepared(c, g);
      } catch (const std::exception&) {
        owe(xid, Owe::Settle, 0, 1);
      }
    });
  }
}

bool PgAgent::pendingRecord(Xid xid) {
  std::lock_guard<std::mutex> lk(mu_);
  return pending_.count(xid) != 0;
}

std::optional<std::uint64_t> PgAgent::pendingTxid(Xid xid) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = pending_.find(xid);
  if (it == pending_.end()) return std::nullopt;
  return it->second.txid;
}

std::vector<BranchRecord> PgAgent::listBranches(Xid after, std::size_t limit, bool& more) const {
  // pending_ first, then the log: an entry leaves pending_ only after its
  // record is durable and visible to readers, so a vote missing from this
  // copy is in the log read after it (or had not left yet).
  std::vector<BranchRecord> lazy;
  {
    std::lock_guard<std::mutex> lk(mu_);
    // Both maps in XID order (they never share a branch), one more than a
    // page, so that a longer list says more.
    auto p = pending_.upper_bound(after), u = unrecorded_.upper_bound(after);
    while ((p != pending_.end() || u != unrecorded_.end()) && lazy.size() <= limit) {
      bool fromPending = u == unrecorded_.end() || (p != pending_.end() && p->first < u->first);
      auto& [xid, vote] = fromPending ? *p++ : *u++;
      BranchRecord r;
      r.xid = xid;
      r.state = BranchStatus::Prepared;
      r.epoch = vote.epoch;
      r.hostTxid = vote.txid;
      r.hostIncarnation = log_.incarnation();
      r.createdUs = r.preparedUs = vote.preparedUs;
      r.reason = fromPending ? "voted yes; its PREPARED record is on its way (PostgreSQL holds the prepared transaction)"
                             : "voted yes; its PREPARED record failed and it is not on file yet (PostgreSQL holds the "
                               "prepared transaction)";
      lazy.push_back(std::move(r));
    }
  }
  auto logged = log_.listBranches(after, limit, more);
  return mergeListed(std::move(logged), std::move(lazy), limit, more);
}

void PgAgent::pruneUnrecorded() {
  std::vector<Xid> xids;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (unrecorded_.empty()) return;
    for (auto& [xid, vote] : unrecorded_) xids.push_back(xid);
  }
  auto recs = log_.branches(xids);
  std::lock_guard<std::mutex> lk(mu_);
  for (std::size_t i = 0; i < xids.size(); ++i) {
    if (recs[i]) unrecorded_.erase(xids[i]);
  }
}

bool PgAgent::epochNeedsForce(std::uint16_t node, std::uint64_t epoch) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = durableEpochs_.find(node);
  return it == durableEpochs_.end() || it->second < epoch;
}

kj::Promise<PrepareResult> PgAgent::execute(std::uint64_t epoch, Xid xid, std::vector<Op>) {
  log_.fence(seqNode(xid.seq), epoch);
  return PrepareResult{Vote::No, "the postgres adapter does not offer interactive transactions yet: use submit", {}};
}

namespace {

// A commit's answer from the branch's record; nullopt while it is PREPARED.
std::optional<BranchOutcome> commitAnswerOf(const BranchRecord& rec) {
  switch (rec.state) {
    case BranchStatus::Committed: return BranchOutcome::Committed;
    case BranchStatus::RolledBack: return BranchOutcome::Conflict;
    case BranchStatus::Active: return BranchOutcome::NotPrepared;
    case BranchStatus::Prepared: break;
  }
  return std::nullopt;
}

}  // namespace

BranchOutcome PgAgent::commitOne(PGconn* c, Xid xid, std::uint64_t epoch, std::uint64_t hostTxid) {
  // Must be durable before COMMIT PREPARED: the PREPARED record with its
  // txid. A crash after PostgreSQL's commit and before our COMMITTED record
  // then leaves a record whose txid_status says what PostgreSQL did; a lazy
  // record lost with the crash would leave nothing to tell. So one still on
  // its way is forced now (off the client's path: phase 2).
  if (pendingRecord(xid)) log_.log().runSync([](lmdb::Txn&) {});
  auto rec = log_.branches({xid})[0];
  if (!rec && log_.released(xid)) {
    // Finished and archived before (docs/protocol.md, "Release"); a
    // prepared transaction of it now would be a late duplicate: undone.
    for (const Held& h : heldPreparedOf(c, xid)) rollbackPrepared(c, h.gid);
    return BranchOutcome::Released;
  }
  if (!rec) {
    // No record and none on its way: its lazy write failed, or this branch
    // never prepared here (an operator's forced commit). Only a prepared
    // transaction PostgreSQL holds under a gid of the branch (of whichever
    // incarnation) says that it prepared: it is recorded PREPARED first
    // (with its txid and incarnation, durable) and committed.
    auto held = heldPreparedOf(c, xid);
    if (held.empty() && hostTxid != 0) return commitByCoordinatorsTxid(c, xid, epoch, hostTxid);
    if (held.empty()) {
      return answerUnknown(xid,
                           "commit asked for a branch with no record here that PostgreSQL does not hold prepared "
                           "(never prepared here, or finished with its record lost)");
    }
    if (held.size() > 1) {
      return answerUnknown(xid, "commit asked for a branch with no record here of which PostgreSQL holds " +
                                    std::to_string(held.size()) + " prepared transactions (" + held[0].gid + ", " +
                                    held[1].gid + "): not committing either on a guess");
    }
    rec = log_.log().runSync([&](lmdb::Txn& txn) {
      recordInDoubt(txn, held[0],
                    "PostgreSQL held " + held[0].gid + " prepared with no PREPARED record here; recorded at its commit");
      return log_.read(txn, xid);
    });
  }
  if (auto done = commitAnswerOf(*rec)) return *done;
  const std::string g = gidOf(*rec);
  KEEL_FAILPOINT("agent.before_commit_durable");
  try {
    pg::exec(c, "COMMIT PREPARED " + quoteLiteral(g));
  } catch (const pg::PgError& e) {
    if (e.sqlstate() != kUndefinedObject) throw;
    // PostgreSQL no longer holds it: our own COMMIT PREPARED before a crash
    // lost its record, or a DBA's COMMIT / ROLLBACK PREPARED. Never taken
    // as committed on its own: the txid's status says which.
    std::string st = txidStatus(c, rec->hostTxid);
    if (st == "committed") {
      auto now = finishFromHost(xid, epoch, BranchStatus::Committed,
                                "PostgreSQL had committed it already (" + statusText(rec->hostTxid, st) +
                                    "): an earlier COMMIT PREPARED whose record was lost, or one outside Keel");
      return now ? commitAnswerOf(*now).value_or(BranchOutcome::Unknown) : BranchOutcome::Unknown;
    }
    if (st == "aborted") {
      KEEL_LOG_WARN("branch {}: commit refused: PostgreSQL rolled back {} outside Keel ({}); recorded rolled back",
                    xid.str(), g, statusText(rec->hostTxid, st));
      auto now = finishFromHost(xid, epoch, BranchStatus::RolledBack,
                                "ROLLBACK PREPARED outside Keel: PostgreSQL rolled back its prepared transaction (" +
                                    statusText(rec->hostTxid, st) + ") before the coordinator's commit");
      return now ? commitAnswerOf(*now).value_or(BranchOutcome::Unknown) : BranchOutcome::Unknown;
    }
    return answerUnknown(xid, "commit found PostgreSQL's prepared transaction gone and " +
                                  statusText(rec->hostTxid, st) +
                                  ": committed or rolled back outside this commit, nothing tells which");
  }
  KEEL_FAILPOINT("pg.after_host_commit");
  // Lazy: PostgreSQL's commit is durable already, and a COMMITTED record
  // lost in a crash leaves the PREPARED one with its txid, whose
  // txid_status settles the retried commit above. So this write need not
  // start a group commit: it rides with the next prepares' group (or
  // commits after lazy_delay), and the acknowledgement still waits for it.
  log_.log().runSyncLazy([&](lmdb::Txn& txn) { writeCommitted(txn, xid, epoch, hostTxid); });
  return BranchOutcome::Committed;
}

void PgAgent::writeCommitted(lmdb::Txn& txn, Xid xid, std::uint64_t epoch, std::uint64_t hostTxid) const {
  log_.storeEpoch(txn, seqNode(xid.seq), epoch);
  auto r = log_.read(txn, xid);
  if (r && r->state == BranchStatus::Prepared) {
    log_.finish(txn, *r, BranchStatus::Committed, epoch);
    return;
  }
  if (r || hostTxid == 0 || log_.released(xid)) return;
  // Committed on the coordinator's txid before our PREPARED record was
  // written, and that write failed: the finished record is made here, so
  // that the branch is on record (and a late duplicate prepare refused).
  BranchRecord rec;
  rec.xid = xid;
  rec.hostTxid = hostTxid;
  rec.hostIncarnation = log_.incarnation();
  rec.createdUs = wallMicros();
  rec.reason = "its PREPARED record was not written; recorded at its commit";
  log_.finish(txn, rec, BranchStatus::Committed, epoch);
}

BranchOutcome PgAgent::commitByCoordinatorsTxid(PGconn* c, Xid xid, std::uint64_t epoch, std::uint64_t hostTxid) {
  // No record here and no prepared transaction in PostgreSQL, but the
  // coordinator's COMMIT record holds the txid this branch voted YES with:
  // our COMMIT PREPARED ran on it before a crash took both our records
  // (commitPendingOnLoop does not wait for the PREPARED record). Its
  // txid_status says what PostgreSQL did, as the PREPARED record's txid
  // would have; that is recorded (durably) and answered.
  std::string st = txidStatus(c, hostTxid);
  if (st != "committed" && st != "aborted") {
    return answerUnknown(xid, "commit asked for a branch with no record here that PostgreSQL does not hold "
                              "prepared, and the coordinator's " + statusText(hostTxid, st));
  }
  bool committed = st == "committed";
  auto rec = log_.log().runSync([&](lmdb::Txn& txn) -> std::optional<BranchRecord> {
    log_.storeEpoch(txn, seqNode(xid.seq), epoch);
    if (auto r = log_.read(txn, xid)) return r;  // recorded meanwhile: that record answers
    if (log_.released(xid)) return std::nullopt;
    BranchRecord r;
    r.xid = xid;
    r.hostTxid = hostTxid;
    r.createdUs = wallMicros();
    r.reason = committed ? "PostgreSQL had committed it (" + statusText(hostTxid, st) +
                               ", the txid in the coordinator's COMMIT record): a COMMIT PREPARED whose records "
                               "were lost in a crash"
                         : "ROLLBACK PREPARED outside Keel: PostgreSQL rolled back its prepared transaction (" +
                               statusText(hostTxid, st) + ", the txid in the coordinator's COMMIT record)";
    log_.finish(txn, r, committed ? BranchStatus::Committed : BranchStatus::RolledBack, epoch);
    return r;
  });
  if (!rec) return BranchOutcome::Released;
  if (rec->state == BranchStatus::Prepared) {
    // Recorded PREPARED meanwhile (a late lazy write, or the keeper's
    // record of a held transaction): that record is the branch's, and
    // commitOne's normal path commits it (its own txid settles a gone gid).
    return commitOne(c, xid, epoch, hostTxid);
  }
  if (!committed) {
    KEEL_LOG_WARN("branch {}: commit refused: {}; recorded rolled back", xid.str(), rec->reason);
  }
  return commitAnswerOf(*rec).value_or(BranchOutcome::Unknown);
}

std::optional<BranchRecord> PgAgent::finishFromHost(Xid xid, std::uint64_t epoch, BranchStatus state,
                                                    const std::string& reason) {
  // Must be durable before reply: the answer rests on it.
  return log_.log().runSync([&](lmdb::Txn& txn) {
    log_.storeEpoch(txn, seqNode(xid.seq), epoch);
    auto r = log_.read(txn, xid);
    if (r && r->state == BranchStatus::Prepared) {
      r->reason = reason;
      log_.finish(txn, *r, state, epoch);
    }
    return r;
  });
}

BranchOutcome PgAgent::answerUnknown(Xid xid, const std::string& why) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (warnedUnknown_.size() >= 4096) warnedUnknown_.clear();  // bounded: at worst a warning again
    if (!warnedUnknown_.insert(xid).second) return BranchOutcome::Unknown;
  }
  KEEL_LOG_WARN("branch {}: outcome unknown: {}; answered unknown and recorded no outcome", xid.str(), why);
  // A PREPARED record keeps its state (nothing is known) and says why.
  log_.log().runSyncLazy([&](lmdb::Txn& txn) {
    auto r = log_.read(txn, xid);
    std::string reason = "outcome unknown: " + why;
    if (r && r->state == BranchStatus::Prepared && r->reason != reason) {
      r->reason = reason;
      log_.put(txn, *r);
    }
  });
  return BranchOutcome::Unknown;
}

BranchOutcome PgAgent::rollbackOne(PGconn* c, Xid xid, std::uint64_t epoch) {
  auto rec = log_.branches({xid})[0];
  if (rec && rec->state == BranchStatus::Committed) return BranchOutcome::Committed;
  if (rec && rec->state == BranchStatus::RolledBack) return BranchOutcome::RolledBack;
  if (rec && rec->state == BranchStatus::Active && rec->onePhase) {
    // A one-phase branch whose outcome we do not have yet: PostgreSQL knows,
    // unless its COMMIT is still running (then the coordinator asks again).
    auto settled = settleOnePhase(c, *rec);
    if (!settled) {
      throw std::runtime_error("the one-phase commit of " + xid.str() +
                               " is still running in PostgreSQL; its outcome is not known yet");
    }
    return *settled == BranchStatus::Committed ? BranchOutcome::Committed : BranchOutcome::RolledBack;
  }
  if (!rec || rec->state == BranchStatus::Prepared) {
    KEEL_FAILPOINT("agent.before_rollback_durable");
    // No record yet PostgreSQL may hold it prepared: the prepare failed
    // after PREPARE TRANSACTION (its reply lost, or our PREPARED record not
    // written, perhaps by an earlier incarnation), which is why the
    // coordinator rolls back. Until PostgreSQL answers this throws, and the
    // coordinator retries (and so does the keeper).
    bool held = false;
    if (rec) {
      held = rollbackPrepared(c, gidOf(*rec));
    } else {
      for (const Held& h : heldPreparedOf(c, xid)) held = rollbackPrepared(c, h.gid) || held;
    }
    if (!held && rec) {
      // Recorded PREPARED, yet PostgreSQL no longer holds it: our own
      // ROLLBACK PREPARED before a crash lost its record, or a DBA's COMMIT
      // / ROLLBACK PREPARED. The txid's status says which.
      std::string st = txidStatus(c, rec->hostTxid);
      if (st == "committed") {
        KEEL_LOG_WARN("branch {}: rollback found it committed by COMMIT PREPARED outside Keel ({}); recorded committed",
                      xid.str(), statusText(rec->hostTxid, st));
        finishFromHost(xid, epoch, BranchStatus::Committed,
                       "COMMIT PREPARED outside Keel: PostgreSQL committed its prepared transaction (" +
                           statusText(rec->hostTxid, st) + ") before the coordinator's rollback");
      } else if (st != "aborted") {
        return answerUnknown(xid, "rollback found PostgreSQL's prepared transaction gone and " +
                                      statusText(rec->hostTxid, st) +
                                      ": committed or rolled back outside this rollback, nothing tells which");
      }
    }
  }
  bool committedMeanwhile = false;
  std::optional<BranchRecord> preparedMeanwhile;
  std::optional<BranchRecord> onePhaseMeanwhile;
  log_.log().runSync([&](lmdb::Txn& txn) {
    log_.storeEpoch(txn, seqNode(xid.seq), epoch);
    auto r = log_.read(txn, xid);
    if (r && r->state == BranchStatus::Active && r->onePhase) {
      onePhaseMeanwhile = r;  // a one-phase commit started after our first look: not ours to decide
    } else if (!r) {
      log_.tombstone(txn, xid, epoch);  // never seen: refuse a late prepare (not below the release floor)
    } else if (r->state == BranchStatus::Prepared) {
      // Either we rolled PostgreSQL's half back above, or the prepare's
      // record landed after our first look: then PostgreSQL holds a
      // prepared transaction we have not touched yet.
      if (!rec || rec->state != BranchStatus::Prepared) preparedMeanwhile = r;
      log_.finish(txn, *r, BranchStatus::RolledBack, epoch);
    } else if (r->state == BranchStatus::Committed) {
      committedMeanwhile = true;
    }
  });
  if (preparedMeanwhile) {
    // Recorded rolled back first: if we die before this, start-up's
    // reconcile rolls it back (the log says rolled back); if PostgreSQL
    // does not answer, the keeper's retries do, as soon as it is back.
    try {
      rollbackPrepared(c, gidOf(*preparedMeanwhile));
    } catch (const std::exception&) {
      owe(xid, Owe::Settle, epoch, 1);
      throw;
    }
  }
  if (onePhaseMeanwhile) {
    auto settled = settleOnePhase(c, *onePhaseMeanwhile);
    if (!settled) {
      throw std::runtime_error("the one-phase commit of " + xid.str() +
                               " is still running in PostgreSQL; its outcome is not known yet");
    }
    return *settled == BranchStatus::Committed ? BranchOutcome::Committed : BranchOutcome::RolledBack;
  }
  if (!rec && log_.released(xid) && !committedMeanwhile) return BranchOutcome::Released;
  return committedMeanwhile ? BranchOutcome::Committed : BranchOutcome::RolledBack;
}

kj::Promise<BranchOutcome> PgAgent::commitOnPool(Xid xid, std::uint64_t epoch, std::uint64_t hostTxid) {
  return finishPool_->run<BranchOutcome>(
      [this, xid, epoch, hostTxid](PGconn* c) { return commitOne(c, xid, epoch, hostTxid); });
}

kj::Promise<BranchOutcome> PgAgent::commitOnLoop(Xid xid, std::uint64_t epoch, std::uint64_t hostTxid) {
  // The common case on the loop: a PREPARED record and PostgreSQL holding
  // its gid. Everything else (no record, a repeated commit, a gid
  // PostgreSQL no longer holds) is commitOne's, on the finish pool.
  // Must be durable before COMMIT PREPARED: the branch's txid, so that a
  // crash after PostgreSQL's commit and before our COMMITTED record leaves
  // something whose txid_status says what PostgreSQL did (see commitOne).
  // The coordinator's COMMIT record holds it when the commit carries it:
  // then a PREPARED record still on its way is not waited for at all
  // (commitPendingOnLoop). Without it, that record is waited for, not
  // forced: it rides with the next group commit, at most lazy_delay away;
  // phase 2 is off the client's path, so that costs only a longer hold on
  // the branch's rows.
  auto pendingT = pendingTxid(xid);  // one look under the mutex
  if (pendingT && *pendingT != 0 && hostTxid == *pendingT && !log_.branches({xid})[0]) {
    return commitPendingOnLoop(xid, epoch, hostTxid);
  }
  kj::Promise<void> durable = kj::READY_NOW;
  if (pendingT) durable = log_.log().runLazy([](lmdb::Txn&) {});
  return durable.then([this, xid, epoch, hostTxid]() -> kj::Promise<BranchOutcome> {
    auto rec = log_.branches({xid})[0];
    if (!rec || rec->state != BranchStatus::Prepared) return commitOnPool(xid, epoch, hostTxid);
    return commitPreparedOnLoop(xid, epoch, gidOf(*rec), rec->hostTxid);
  });
}

kj::Promise<BranchOutcome> PgAgent::commitPendingOnLoop(Xid xid, std::uint64_t epoch, std::uint64_t hostTxid) {
  // Voted YES in this run (so its gid is this incarnation's), its PREPARED
  // record still on its way, and the coordinator's durable COMMIT record
  // holds the very txid we voted with: COMMIT PREPARED at once. A crash
  // before our records are durable leaves no record and no prepared
  // transaction; the coordinator's retry carries the txid again, and
  // commitByCoordinatorsTxid settles it by txid_status.
  return commitPreparedOnLoop(xid, epoch, gid(xid), hostTxid);
}

kj::Promise<BranchOutcome> PgAgent::commitPreparedOnLoop(Xid xid, std::uint64_t epoch, std::string g,
                                                         std::uint64_t hostTxid) {
  return loopFinish_
      ->run<pg::Result>([this, g](pg::LoopConn& lc) {
        return failpointOnLoop("agent.before_commit_durable").then([&lc, g] {
          return lc.query("COMMIT PREPARED " + quoteLiteral(g));
        });
      })
      .then([this, xid, epoch, hostTxid](pg::Result r) -> kj::Promise<BranchOutcome> {
        if (auto e = pg::errorIn(r)) {
          // Gone: our own COMMIT PREPARED before a crash lost its record,
          // or a DBA's; commitOne asks txid_status which.
          if (e->sqlstate() == kUndefinedObject) return commitOnPool(xid, epoch, hostTxid);
          kj::throwFatalException(faultException(e->what()));
        }
        return failpointOnLoop("pg.after_host_commit").then([this, xid, epoch, hostTxid] {
          // Lazy, as in commitOne: PostgreSQL's commit is durable already.
          return log_.log()
              .runLazy([this, xid, epoch, hostTxid](lmdb::Txn& txn) { writeCommitted(txn, xid, epoch, hostTxid); })
              .then([] { return BranchOutcome::Committed; });
        });
      });
}

kj::Promise<std::vector<BranchOutcome>> PgAgent::finishAll(std::vector<Xid> xids, bool commit, std::uint64_t epoch,
                                                           std::vector<std::uint64_t> hostTxids) {
  if (!xids.empty()) log_.fence(seqNode(xids[0].seq), epoch);
  // Each branch on its own connection (a commit on the loop's, a rollback
  // as a finish-pool job), so that a batch spreads over the connections;
  // the answer keeps the batch's order.
  kj::Vector<kj::Promise<BranchOutcome>> each(xids.size());
  for (std::size_t i = 0; i < xids.size(); ++i) {
    Xid x = xids[i];
    std::uint64_t t = i < hostTxids.size() ? hostTxids[i] : 0;
    auto one = commit ? kj::evalNow([&] { return commitOnLoop(x, epoch, t); })
                      : finishPool_->run<BranchOutcome>([this, x, epoch](PGconn* c) { return rollbackOne(c, x, epoch); });
    each.add(kj::mv(one).catch_([this, x, commit, epoch, t](kj::Exception&& e) -> BranchOutcome {
                   // PostgreSQL unreachable, most likely. The decision is
                   // known here now: the keeper retries it with backoff (and
                   // at once when a pool connects again), sooner than the
                   // coordinator's retry comes, which then finds it done.
                   owe(x, commit ? Owe::Commit : Owe::Rollback, epoch, 1, false, t);
                   kj::throwFatalException(kj::mv(e));
                 }).eagerlyEvaluate(nullptr));  // the keeper owes it at once, not when the batch is in
  }
  return canceler_.wrap(kj::joinPromises(each.releaseAsArray()).then([commit](kj::Array<BranchOutcome> a) {
    if (commit) {
      KEEL_FAILPOINT("agent.after_commit_durable");
    } else {
      KEEL_FAILPOINT("agent.after_rollback_durable");
    }
    return std::vector<BranchOutcome>(a.begin(), a.end());
  }));
}

kj::Promise<std::vector<BranchOutcome>> PgAgent::commit(std::uint64_t epoch, std::vector<Xid> xids) {
  return finishAll(std::move(xids), true, epoch);
}

kj::Promise<std::vector<BranchOutcome>> PgAgent::commitKnowing(std::uint64_t epoch, std::vector<Xid> xids,
                                                               std::vector<std::uint64_t> hostTxids) {
  return finishAll(std::move(xids), true, epoch, std::move(hostTxids));
}

kj::Promise<std::vector<BranchOutcome>> PgAgent::rollback(std::uint64_t epoch, std::vector<Xid> xids) {
  return finishAll(std::move(xids), false, epoch);
}

std::optional<bool> PgAgent::probeMarker(PGconn* c, const std::string& gid) {
  // Inserting the row itself, in a transaction always rolled back: if a
  // transaction still holds it (its COMMIT in flight, or a crashed agent's
  // session not reaped yet) the INSERT waits for its end, then finds the
  // row committed or not there. Up to a lock_timeout: then it is still
  // running, and we ask again later.
  pg::exec(c, "BEGIN");
  try {
    pg::exec(c, "SET LOCAL lock_timeout = " + std::to_string(std::max<std::uint32_t>(opts_.lockTimeoutMs, 100)));
    auto r = pg::exec(c, markerInsertSql(gid) + " ON CONFLICT DO NOTHING");
    bool inserted = std::atoll(PQcmdTuples(r.get())) == 1;
    pg::exec(c, "ROLLBACK");
    return !inserted;
  } catch (const pg::PgError& e) {
    if (e.connectionLost()) throw;
    pg::exec(c, "ROLLBACK");
    if (e.sqlstate() == "55P03") return std::nullopt;  // lock_not_available: still running
    throw;
  }
}

bool PgAgent::onePhaseRunningHere(Xid xid) const {
  std::lock_guard<std::mutex> lk(mu_);
  return onePhaseRunning_.count(xid) != 0;
}

std::optional<BranchStatus> PgAgent::settleOnePhase(PGconn* c, BranchRecord& rec) {
  KEEL_FAILPOINT("pg.before_one_phase_settle");  // `rec` read ACTIVE, PostgreSQL not asked yet
  // Its call still running in this process: between its intent and COMMIT
  // the marker row may not even be inserted yet, and the call may still
  // commit. Asking PostgreSQL now would be a guess.
  if (onePhaseRunningHere(rec.xid)) return std::nullopt;
  if (rec.hostMarker && rec.hostTxid == 0) {
    // An intent written while the trip ran (no txid yet): the marker row
    // alone tells, probed so that a transaction still holding it is waited
    // for. No COMMIT is sent before the row's INSERT returned, so an
    // INSERT of ours that finds no row and waits for nobody means no
    // COMMIT can come any more.
    const std::string gid = gidOf(rec);
    auto present = probeMarker(c, gid);
    if (!present) return std::nullopt;
    return recordSettled(rec, *present ? BranchStatus::Committed : BranchStatus::RolledBack,
                         std::string("one-phase outcome from its marker row: ") + (*present ? "present" : "absent") +
                             " (probed)");
  }
  std::string status = txidStatus(c, rec.hostTxid);
  // Still running: our own COMMIT is in flight (a rollback raced it), or the
  // session of a crashed agent has not been reaped yet. Deciding now would
  // be a guess that COMMIT may prove wrong a moment later. (After a crash
  // of PostgreSQL the txid may run again for another transaction: then we
  // wait for that one too, which costs a retry, never a wrong answer.)
  if (status == "in progress") return std::nullopt;
  BranchStatus final;
  std::string reason;
  if (rec.hostMarker) {
    // Not running any more, so its marker row is there exactly when it
    // committed: the row commits with it and nothing else writes it.
    const std::string gid = gidOf(rec);
    auto markerThere = [&] {
      auto q = pg::exec(c, std::string("SELECT 1 FROM ") + kMarkerTable + " WHERE gid = " + pg::quoteLiteral(gid));
      return PQntuples(q.get()) > 0;
    };
    bool there = markerThere();
    // A commit is marked in PostgreSQL's commit log a moment before it
    // leaves the proc array, and until then a new snapshot does not see
    // its rows; a txid_status that reads the commit log first says
    // 'committed' in that moment while the marker row reads absent. Taken
    // as "rolled back", a rollback was confirmed to the coordinator for a
    // one-phase commit that then completed (keel-chaos --embedded seed 7:
    // docs/postgres.md, "One participant only"). So an absent marker under
    // 'committed' is looked at again once that moment has passed; absent
    // still, the txid is another transaction's (handed out again after a
    // PostgreSQL crash) and ours is gone.
    for (int i = 0; !there && status == "committed" && i < 10; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      there = markerThere();
      if (there) KEEL_LOG_WARN("branch {}: one-phase marker row visible only on a second look", rec.xid.str());
    }
    final = there ? BranchStatus::Committed : BranchStatus::RolledBack;
    reason = std::string("one-phase outcome from its marker row: ") +
             (final == BranchStatus::Committed ? "present" : "absent") + " (" + statusText(rec.hostTxid, status) + ")";
  } else {
    // A record written before markers: txid_status is all there is.
    final = status == "committed" ? BranchStatus::Committed : BranchStatus::RolledBack;
    reason = "one-phase outcome from txid_status: " + (status.empty() ? std::string("unknown") : status);
  }
  return recordSettled(rec, final, reason);
}

std::optional<BranchStatus> PgAgent::recordSettled(const BranchRecord& rec, BranchStatus final,
                                                   const std::string& reason) {
  Xid xid = rec.xid;
  std::uint64_t epoch = rec.epoch;
  // `rec` was read before PostgreSQL was asked. Recorded final meanwhile
  // (the call's own lazy COMMITTED record, or another settle), the record
  // is the answer, not what was read here: once a committed branch's
  // record is durable its marker row is deleted (markerDone), and a look
  // after that reads "absent", which would be taken for "rolled back".
  std::optional<BranchStatus> recorded;
  log_.log().runSync([&](lmdb::Txn& txn) {
    auto cur = log_.read(txn, xid);
    if (cur && cur->state == BranchStatus::Active) {
      cur->reason = reason;
      log_.finish(txn, *cur, final, epoch);
    } else if (cur && (cur->state == BranchStatus::Committed || cur->state == BranchStatus::RolledBack)) {
      recorded = cur->state;
    }
  });
  if (recorded) {
    if (*recorded != final) {
      KEEL_LOG_WARN("branch {}: one-phase outcome recorded {} while PostgreSQL was asked; that record stands ({})",
                    xid.str(), *recorded == BranchStatus::Committed ? "committed" : "rolled back", reason);
    }
    return recorded;
  }
  if (final == BranchStatus::Committed && rec.hostMarker) markerDone(gidOf(rec));
  return final;
}

kj::Promise<OnePhaseResult> PgAgent::commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  log_.fence(seqNode(xid.seq), epoch);
  KEEL_FAILPOINT("agent.before_execute");
  if (auto bad = validate(ops)) return OnePhaseResult{BranchOutcome::RolledBack, *bad, {}};
  if (auto late = log_.releasedReason(xid)) return OnePhaseResult{BranchOutcome::Released, *late, {}};
  if (auto existing = log_.branches({xid})[0]) {
    if (existing->state == BranchStatus::Committed) return OnePhaseResult{BranchOutcome::Committed, "", {}};
    if (existing->state == BranchStatus::RolledBack) {
      return OnePhaseResult{BranchOutcome::RolledBack,
                            existing->reason.empty() ? "branch already rolled back" : existing->reason, {}};
    }
    return OnePhaseResult{BranchOutcome::Conflict, "branch " + xid.str() + " is in use", {}};
  }
  {
    // Running here until the call's promise is gone: a rollback's question
    // meanwhile is not answered (settleOnePhase), and a second call of the
    // same branch is a conflict.
    std::lock_guard<std::mutex> lk(mu_);
    if (!onePhaseRunning_.insert(xid).second) {
      return OnePhaseResult{BranchOutcome::Conflict, "branch " + xid.str() + " is in use", {}};
    }
  }
  auto running = kj::defer([this, xid] {
    std::lock_guard<std::mutex> lk(mu_);
    onePhaseRunning_.erase(xid);
  });
  return canceler_
      .wrap(loopPrepare_->run<OnePhaseResult>([this, epoch, xid, ops = std::move(ops)](pg::LoopConn& lc) mutable {
        return onePhaseOnLoop(lc, epoch, xid, std::move(ops));
      }))
      .attach(kj::mv(running));
}

void PgAgent::writeOnePhaseFinal(lmdb::Txn& txn, Xid xid, std::uint64_t epoch, const std::vector<Op>& ops,
                                 BranchStatus st, const std::string& reason, std::uint64_t txid) const {
  log_.storeEpoch(txn, seqNode(xid.seq), epoch);
  auto rec = log_.read(txn, xid).value_or(BranchRecord{});
  if (st == BranchStatus::Committed && rec.state == BranchStatus::RolledBack && !rec.tombstone) {
    // Settled "rolled back" meanwhile (a rollback's settleOnePhase)
    // although PostgreSQL committed: recorded as PostgreSQL has it, and
    // said loudly — the coordinator may have heard otherwise.
    KEEL_LOG_ERROR("branch {}: one-phase commit committed in PostgreSQL after it was settled rolled back ({}); "
                   "recorded committed",
                   xid.str(), rec.reason);
  }
  rec.xid = xid;
  rec.onePhase = true;
  rec.ops = ops;
  rec.reason = reason;
  rec.hostTxid = txid;
  if (rec.createdUs == 0) rec.createdUs = wallMicros();
  log_.finish(txn, rec, st, epoch);
}

// A committed one-phase branch's final record, lazily: its "committed"
// has left already, resting on PostgreSQL's durable commit, the marker row
// it committed with and the ACTIVE record forced before COMMIT (after a
// crash the marker row settles the ACTIVE record committed). So it rides
// with the next group commit instead of costing one of its own, and its
// marker row may go once it is durable. Its apply and done run on the
// log's writer; it holds copies only (the call may be gone by then).
class PgAgent::OnePhaseCommittedJob final : public GroupCommitLog::Job {
 public:
  OnePhaseCommittedJob(PgAgent& agent, Xid xid, std::uint64_t epoch, std::vector<Op> ops, std::uint64_t txid,
                       std::string marker)
      : agent_(agent), xid_(xid), epoch_(epoch), ops_(std::move(ops)), txid_(txid), marker_(std::move(marker)) {}
  void apply(lmdb::Txn& txn) override {
    KEEL_FAILPOINT("pg.before_lazy_one_phase_final");  // "committed" has left already
    agent_.writeOnePhaseFinal(txn, xid_, epoch_, ops_, BranchStatus::Committed, "", txid_);
  }
  void done(std::exception_ptr err) noexcept override {
    if (!err) {
      agent_.markerDone(std::move(marker_));
      return;
    }
    KEEL_LOG_WARN(
        "branch {}: its one-phase COMMITTED record was not written ({}); PostgreSQL committed it and its marker "
        "row says so: the record stays ACTIVE until a rollback's question or the next start settles it committed",
        xid_.str(), describeFault(toKjException(err)));
  }

 private:
  PgAgent& agent_;
  const Xid xid_;
  const std::uint64_t epoch_;
  std::vector<Op> ops_;
  const std::uint64_t txid_;
  std::string marker_;
};

// What one one-phase branch carries from step to step on the loop.
struct PgAgent::OnePhaseState {
  std::uint64_t epoch;
  Xid xid;
  std::vector<Op> ops;
  std::string marker;  // the marker row's gid
  std::vector<Call> calls;
  std::vector<OpResult> results;
  bool markerInTrip = true;  // the INSERT of the marker row rode in the trip (sendOneTrip)
  OneTrip trip;
  kj::Promise<bool> intent = nullptr;  // the ACTIVE record, written while the trip runs: ours (no tombstone)
  bool intentTaken = false;            // `intent` moved into the chain (it may have failed there)
  std::optional<bool> ours;            // what `intent` said, once taken
  bool commitSent = false;             // COMMIT went to PostgreSQL: from then on the outcome may be either
};

kj::Promise<OnePhaseResult> PgAgent::onePhaseOnLoop(pg::LoopConn& lc, std::uint64_t epoch, Xid xid,
                                                    std::vector<Op> ops) {
  auto st = kj::heap<OnePhaseState>();
  OnePhaseState& s = *st;
  s.epoch = epoch;
  s.xid = xid;
  s.ops = std::move(ops);
  const std::uint64_t incarnation = log_.incarnation();
  s.marker = pgGid(opts_.name, xid, incarnation);
  // The final record of a branch that ends rolled back (forced; a
  // committed one's is lazy: OnePhaseCommittedJob). Every job given to the
  // log takes copies, never `s`: a job runs on the log's writer even when
  // this call is cancelled meanwhile (the coordinator gave up on it),
  // which frees `s` (keel-chaos --embedded seed 53 found records written
  // from a freed `s`).
  auto finalRecord = [this, &s](BranchStatus st, std::string why, std::uint64_t txid) {
    return log_.log().run([this, xid = s.xid, epoch = s.epoch, ops = s.ops, st, why, txid](lmdb::Txn& txn) {
      writeOnePhaseFinal(txn, xid, epoch, ops, st, why, txid);
    });
  };
  // The intent: the ACTIVE record, forced, written while the statements'
  // trip runs (one forced write fewer in series on the call's path). It
  // holds no txid: after a crash the marker row, probed with an INSERT
  // that waits for a transaction still holding it, tells the outcome
  // (settleOnePhase). COMMIT leaves only once both are in. A record there
  // already is a rollback's tombstone: the coordinator gave up on this
  // call (no answer in time) and rolled the branch back before the call
  // got its turn here. It stays rolled back: we never commit it.
  s.intent = failpointOnLoop("pg.before_one_phase_intent")
                 .then([this, xid = s.xid, epoch = s.epoch, ops = s.ops, incarnation] {
                   return log_.log().run([this, xid, epoch, ops, incarnation](lmdb::Txn& txn) {
                     if (log_.read(txn, xid) || log_.released(xid)) return false;
                     BranchRecord rec;
                     rec.xid = xid;
                     rec.epoch = epoch;
                     rec.onePhase = true;
                     rec.ops = ops;
                     rec.state = BranchStatus::Active;
                     rec.hostTxid = 0;  // settled by probing the marker row, not by txid_status
                     rec.hostIncarnation = incarnation;
                     rec.hostMarker = true;
                     rec.createdUs = wallMicros();
                     log_.put(txn, rec);
                     return true;
                   });
                 })
                 .eagerlyEvaluate(nullptr);
  // The branch ends rolled back before COMMIT was sent: PostgreSQL's
  // transaction is rolled back, then the record over the intent (or over
  // a tombstone, which says rolled back too: the same end).
  auto refuse = [&lc, finalRecord](std::string why, std::uint64_t txid) {
    return lc.query("ROLLBACK")
        .then([finalRecord, why, txid](pg::Result) { return finalRecord(BranchStatus::RolledBack, why, txid); })
        .then([why] { return OnePhaseResult{BranchOutcome::RolledBack, why, {}}; });
  };
  return kj::evalNow([this, &lc, &s] {
        // BEGIN, the statements, txid_current() and the marker row's
        // INSERT in one round trip. The marker row commits with the
        // statements or not at all: after a crash it, not txid_status (a
        // txid may run again after PostgreSQL's own crash), tells the
        // outcome. (A row count only the agent can check keeps the INSERT
        // out of the trip, as PREPARE TRANSACTION is kept out of a
        // prepare's; it follows once every count is right.)
        s.markerInTrip = sendOneTrip(lc, s.ops, s.calls, markerInsertSql(s.marker));
        return lc.flush();
      })
      .then([&lc] { return lc.collectPipeline(); })
      .then([this, &lc, &s](std::vector<pg::Result> rs) -> kj::Promise<void> {
        s.trip = readOneTrip(lc, rs, s.calls, s.results, s.markerInTrip, kMarkerInsertWhat);
        if (s.markerInTrip || s.trip.refused || s.trip.wrongRows) return kj::READY_NOW;
        return lc.query(markerInsertSql(s.marker)).then([&lc, &s](pg::Result r) {
          if (auto e = pg::errorIn(r)) {
            if (e->connectionLost()) lc.lost(kMarkerInsertWhat);
            s.trip.prepareFailed = describePgError(*e);
            return;
          }
          s.trip.prepared = true;
        });
      })
      .then([&s] {
        s.intentTaken = true;
        return kj::mv(s.intent);
      })
      .then([this, &lc, &s, refuse, finalRecord](bool ours) -> kj::Promise<OnePhaseResult> {
        s.ours = ours;
        if (!ours) {
          return lc.query("ROLLBACK").then([&s](pg::Result) {
            return OnePhaseResult{BranchOutcome::RolledBack,
                                  "branch " + s.xid.str() + " was rolled back before its one-phase commit could run",
                                  {}};
          });
        }
        if (s.trip.refused || s.trip.wrongRows) return refuse(s.trip.refused ? *s.trip.refused : *s.trip.wrongRows, 0);
        if (!s.trip.prepared) {
          return refuse("the one-phase marker row could not be written (" + s.trip.prepareFailed.value_or("?") +
                            "); the agent creates " + kMarkerTable + " at start-up (docs/postgres.md)",
                        0);
        }
        // Statements run, marker row in, the intent durable.
        return failpointOnLoop("agent.before_commit_durable")
            .then([&lc, &s] {
              s.commitSent = true;
              return lc.query("COMMIT");
            })
            .then([this, &s, finalRecord](pg::Result r) -> kj::Promise<OnePhaseResult> {
              if (auto e = pg::errorIn(r)) {
                // The server shutting down or crashing (57P01, 57P02)
                // after its commit record may be durable: the outcome is
                // unknown here and settled later from the marker row (a
                // lost connection fails the query itself: the same).
                if (!commitErrorMeansRolledBack(*e)) kj::throwFatalException(faultException(e->what()));
                std::string why = describePgError(*e);
                return finalRecord(BranchStatus::RolledBack, why, s.trip.txid).then([why] {
                  return OnePhaseResult{BranchOutcome::RolledBack, why, {}};
                });
              }
              return failpointOnLoop("pg.after_one_phase_commit")  // committed in PostgreSQL, ACTIVE in the log
                  .then([this, &s] {
                    // Durable in PostgreSQL, with its marker row, over a
                    // durable ACTIVE record: "committed" now, the final
                    // record lazily (OnePhaseCommittedJob).
                    log_.log().submitLazy(std::make_unique<OnePhaseCommittedJob>(*this, s.xid, s.epoch, s.ops,
                                                                                 s.trip.txid, s.marker));
                    return OnePhaseResult{BranchOutcome::Committed, "", std::move(s.results)};
                  });
            });
      })
      .catch_([this, &s, finalRecord](kj::Exception&& e) -> kj::Promise<OnePhaseResult> {
        // Failed after COMMIT was sent (the connection lost, the server
        // going down): either outcome is possible, settled later from the
        // marker row.
        if (s.commitSent) kj::throwFatalException(kj::mv(e));
        // Failed before: the connection is dropped (poisoned), and a
        // transaction whose COMMIT never left cannot commit. Rolled back,
        // recorded over the intent once that is in (a tombstone found by
        // it says the same already). An intent that failed itself leaves
        // nothing recorded to build on: the call fails, as it did.
        std::string why = "PostgreSQL failed before COMMIT was sent (" + describeFault(e) +
                          "); nothing of the branch committed";
        if (s.intentTaken && !s.ours) kj::throwFatalException(kj::mv(e));  // the intent's own failure
        auto intent = s.ours ? kj::Promise<bool>(*s.ours) : kj::mv(s.intent);
        return intent.then([finalRecord, why](bool ours) -> kj::Promise<OnePhaseResult> {
          kj::Promise<void> recorded = ours ? finalRecord(BranchStatus::RolledBack, why, 0) : kj::READY_NOW;
          return recorded.then([why] { return OnePhaseResult{BranchOutcome::RolledBack, why, {}}; });
        });
      })
      .attach(kj::mv(st));
}

}  // namespace keel
