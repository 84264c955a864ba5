#include "participant/pg_agent.h"

#include <algorithm>
#include <cstdlib>

#include <kj/vector.h>

#include "common/failpoint.h"
#include "common/log.h"

namespace keel {

namespace {

constexpr const char* kUndefinedObject = "42704";  // no such prepared transaction

// Type OIDs of the parameters we send (0 lets PostgreSQL infer, for text).
constexpr Oid kInt8 = 20, kBool = 16, kFloat8 = 701;

std::string quoteLiteral(const std::string& s) {
  // Only ever used with our own gids: [A-Za-z0-9_.:-], checked at start-up.
  return "'" + s + "'";
}

// ROLLBACK PREPARED; a gid PostgreSQL does not hold (never prepared, or
// already rolled back) is no error. Throws while PostgreSQL is unreachable.
void rollbackPrepared(PGconn* c, const std::string& gid) {
  try {
    pg::exec(c, "ROLLBACK PREPARED " + quoteLiteral(gid));
  } catch (const pg::PgError& e) {
    if (e.sqlstate() != kUndefinedObject) throw;
  }
}

}  // namespace

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

PgAgent::PgAgent(PgAgentOptions opts) : opts_(std::move(opts)), log_(opts_.dataDir, opts_.mapSizeBytes) {
  log_.start();
  pool_ = std::make_unique<pg::Pool>(opts_.conninfo, opts_.poolSize,
                                     "SET lock_timeout = " + std::to_string(opts_.lockTimeoutMs));
  // Phase 2 gets connections of its own, as many as the prepares have: each
  // COMMIT PREPARED waits for PostgreSQL's WAL flush, and a batch of them
  // from the coordinator runs side by side (PostgreSQL flushes concurrent
  // commits together), not one after another.
  finishPool_ = std::make_unique<pg::Pool>(opts_.conninfo, std::max<std::uint32_t>(2, opts_.poolSize));
  reconcile();
}

PgAgent::~PgAgent() {
  pool_.reset();
  finishPool_.reset();
}

std::string PgAgent::gid(Xid xid) const {
  return "keel:" + opts_.name + ":" + std::to_string(xid.seq) + ":" + std::to_string(xid.branch);
}

void PgAgent::reconcile() {
  auto name = opts_.name;
  pool_->runSync<void>([this](PGconn* c) {
    auto r = pg::exec(c, "SHOW max_prepared_transactions");
    int max = std::atoi(PQgetvalue(r.get(), 0, 0));
    if (max == 0) {
      throw std::runtime_error(
          "PostgreSQL has max_prepared_transactions = 0, so it cannot prepare transactions: set "
          "max_prepared_transactions to at least " +
          std::to_string(opts_.poolSize) + " (the agent's pool_size) in postgresql.conf and restart PostgreSQL");
    }
    if (std::size_t(max) < opts_.poolSize) {
      KEEL_LOG_WARN("max_prepared_transactions = {} is below pool_size = {}: prepares may fail", max,
                    opts_.poolSize);
    }
    std::string prefix = "keel:" + opts_.name + ":";
    auto q = pg::exec(c, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND left(gid, " +
                             std::to_string(prefix.size()) + ") = " + quoteLiteral(prefix));
    std::size_t rolled = 0, committed = 0, kept = 0;
    for (int i = 0; i < PQntuples(q.get()); ++i) {
      std::string g = PQgetvalue(q.get(), i, 0);
      auto rest = g.substr(prefix.size());
      auto colon = rest.find(':');
      if (colon == std::string::npos) continue;
      Xid xid{std::stoull(rest.substr(0, colon)), std::uint16_t(std::stoul(rest.substr(colon + 1)))};
      auto rec = log_.branches({xid})[0];
      if (rec && rec->state == BranchStatus::Prepared) {
        ++kept;
      } else if (rec && rec->state == BranchStatus::Committed) {
        pg::exec(c, "COMMIT PREPARED " + quoteLiteral(g));
        ++committed;
      } else {
        // Never voted on (crash before the PREPARED record), or decided
        // rolled back: PostgreSQL's half is undone.
        pg::exec(c, "ROLLBACK PREPARED " + quoteLiteral(g));
        ++rolled;
      }
    }
    std::size_t settled = 0;
    for (auto& rec : log_.unfinishedBranches()) {
      if (rec.state == BranchStatus::Active && rec.onePhase) {
        settleOnePhase(c, rec);
        ++settled;
      }
    }
    KEEL_LOG_INFO("postgres reconcile: {} prepared kept, {} rolled back, {} committed, {} one-phase settled", kept,
                  rolled, committed, settled);
  });
}

std::optional<std::string> PgAgent::validate(const std::vector<Op>& ops) const {
  if (ops.size() > Limits::kMaxOpsPerInteraction) return "too many operations in one branch";
  if (auto full = log_.fullReason(opts_.name)) return full;
  for (const auto& op : ops) {
    if (!op.participant.empty() && op.participant != opts_.name) {
      return "operation addressed to participant " + op.participant + ", this agent is " + opts_.name;
    }
    if (op.kind != OpKind::Sql) {
      return std::string("the postgres adapter runs SQL statements, not ") + opKindName(op.kind) + " operations";
    }
    if (op.sql.empty()) return "SQL statement is empty";
  }
  return std::nullopt;
}

std::optional<std::string> PgAgent::runStatements(PGconn* c, const std::vector<Op>& ops,
                                                  std::vector<OpResult>& results) {
  results.clear();
  try {
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      std::vector<Oid> types;
      std::vector<std::string> texts;
      std::vector<const char*> values;
      texts.reserve(op.params.size());
      for (const auto& p : op.params) {
        switch (p.type) {
          case SqlValue::Type::Null: types.push_back(0); texts.emplace_back(); break;
          case SqlValue::Type::Int: types.push_back(kInt8); texts.push_back(std::to_string(p.i)); break;
          case SqlValue::Type::Text: types.push_back(0); texts.push_back(p.text); break;
          case SqlValue::Type::Float: types.push_back(kFloat8); texts.push_back(std::to_string(p.f)); break;
          case SqlValue::Type::Bool: types.push_back(kBool); texts.push_back(p.b ? "true" : "false"); break;
        }
      }
      for (std::size_t k = 0; k < op.params.size(); ++k) {
        values.push_back(op.params[k].type == SqlValue::Type::Null ? nullptr : texts[k].c_str());
      }
      pg::Result r(PQexecParams(c, op.sql.c_str(), int(op.params.size()), types.data(), values.data(), nullptr,
                                nullptr, 0));
      auto st = PQresultStatus(r.get());
      if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char* code = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
        std::string msg = PQresultErrorMessage(r.get());
        while (!msg.empty() && msg.back() == '\n') msg.pop_back();
        throw pg::PgError("statement " + std::to_string(i + 1) + ": " + msg, code != nullptr ? code : "");
      }
      OpResult out;
      if (st == PGRES_TUPLES_OK) {
        out.affected = PQntuples(r.get());
        for (int row = 0; row < PQntuples(r.get()); ++row) {
          std::vector<std::optional<std::string>> cells;
          for (int col = 0; col < PQnfields(r.get()); ++col) {
            if (PQgetisnull(r.get(), row, col)) {
              cells.emplace_back(std::nullopt);
            } else {
              cells.emplace_back(std::string(PQgetvalue(r.get(), row, col), PQgetlength(r.get(), row, col)));
            }
          }
          out.rows.push_back(std::move(cells));
        }
      } else {
        out.affected = std::atoll(PQcmdTuples(r.get()));
      }
      if (op.expectRows >= 0 && out.affected != op.expectRows) {
        throw pg::PgError("statement " + std::to_string(i + 1) + " touched " + std::to_string(out.affected) +
                              " rows, " + std::to_string(op.expectRows) + " required",
                          "KEEL1");
      }
      results.push_back(std::move(out));
    }
    return std::nullopt;
  } catch (const pg::PgError& e) {
    if (PQstatus(c) == CONNECTION_OK) PQclear(PQexec(c, "ROLLBACK"));
    return e.sqlstate() == "KEEL1" ? std::string(e.what()) : describePgError(e);
  }
}

kj::Promise<PrepareResult> PgAgent::prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  log_.fence(seqNode(xid.seq), epoch);
  KEEL_FAILPOINT("agent.before_execute");
  if (auto bad = validate(ops)) return PrepareResult{Vote::No, *bad, {}};
  if (auto existing = log_.branches({xid})[0]) {
    if (existing->state == BranchStatus::Prepared) return PrepareResult{Vote::Yes, "", {}};  // repeated
    return PrepareResult{Vote::No,
                         std::string("branch ") + xid.str() + " already " + branchStatusName(existing->state) +
                             (existing->tombstone ? " (rolled back before it arrived)" : ""),
                         {}};
  }
  return pool_
      ->run<PrepareResult>([this, epoch, xid, ops = std::move(ops)](PGconn* c) {
        std::string g = gid(xid);
        pg::exec(c, "BEGIN");
        std::vector<OpResult> results;
        if (auto why = runStatements(c, ops, results)) {
          // Refused: PostgreSQL rolled it back; the branch log says so too.
          log_.log().runSync([&](lmdb::Txn& txn) {
            log_.storeEpoch(txn, seqNode(xid.seq), epoch);
            if (log_.read(txn, xid)) return;
            BranchRecord rec;
            rec.xid = xid;
            rec.createdUs = wallMicros();
            rec.reason = *why;
            log_.finish(txn, rec, BranchStatus::RolledBack, epoch);
          });
          return PrepareResult{Vote::No, *why, {}};
        }
        KEEL_FAILPOINT("agent.after_execute");
        // Always prepared, even when the statements only read: PostgreSQL
        // does not tell cheaply whether a transaction wrote anything.
        try {
          pg::exec(c, "PREPARE TRANSACTION " + quoteLiteral(g));
        } catch (const pg::PgError& e) {
          // Connection lost: PostgreSQL may have prepared it all the same.
          // The call fails instead of voting NO, so that the coordinator
          // sends this branch a rollback (it sends none to a NO voter), and
          // rollbackOne finishes whatever PostgreSQL holds.
          if (e.connectionLost()) throw;
          PQclear(PQexec(c, "ROLLBACK"));
          return PrepareResult{Vote::No, "PREPARE TRANSACTION failed: " + describePgError(e), {}};
        }
        // PREPARED must be durable in our log before the vote leaves; a
        // tombstone here means the rollback overtook us: undo.
        bool recorded = log_.log().runSync([&](lmdb::Txn& txn) {
          log_.storeEpoch(txn, seqNode(xid.seq), epoch);
          if (log_.read(txn, xid)) return false;
          BranchRecord rec;
          rec.xid = xid;
          rec.epoch = epoch;
          rec.ops = ops;
          rec.state = BranchStatus::Prepared;
          rec.createdUs = rec.preparedUs = wallMicros();
          KEEL_FAILPOINT("agent.before_prepared_durable");
          log_.put(txn, rec);
          return true;
        });
        if (!recorded) {
          rollbackPrepared(c, g);  // the rollback may have finished it already
          return PrepareResult{Vote::No, "branch " + xid.str() + " was rolled back before it was prepared", {}};
        }
        return PrepareResult{Vote::Yes, "", std::move(results)};
      })
      .then([](PrepareResult r) {
        if (r.vote == Vote::Yes) KEEL_FAILPOINT("agent.after_prepared_durable");
        return r;
      });
}

kj::Promise<PrepareResult> PgAgent::execute(std::uint64_t epoch, Xid xid, std::vector<Op>) {
  log_.fence(seqNode(xid.seq), epoch);
  return PrepareResult{Vote::No, "the postgres adapter does not offer interactive transactions yet: use submit", {}};
}

BranchOutcome PgAgent::commitOne(PGconn* c, Xid xid, std::uint64_t epoch) {
  auto rec = log_.branches({xid})[0];
  if (!rec) return BranchOutcome::Unknown;
  switch (rec->state) {
    case BranchStatus::Committed: return BranchOutcome::Committed;
    case BranchStatus::RolledBack: return BranchOutcome::Conflict;
    case BranchStatus::Active: return BranchOutcome::NotPrepared;
    case BranchStatus::Prepared: break;
  }
  KEEL_FAILPOINT("agent.before_commit_durable");
  try {
    pg::exec(c, "COMMIT PREPARED " + quoteLiteral(gid(xid)));
  } catch (const pg::PgError& e) {
    // Gone already: our earlier COMMIT PREPARED went through before a crash.
    if (e.sqlstate() != kUndefinedObject) throw;
  }
  KEEL_FAILPOINT("pg.after_host_commit");
  // Lazy: PostgreSQL's commit is durable already, and a COMMITTED record
  // lost in a crash leaves a PREPARED one that PostgreSQL no longer holds,
  // which the in-doubt resolver settles by asking the coordinator (COMMIT
  // PREPARED of a gid that is gone is accepted above). So this write need
  // not start a group commit: it rides with the next prepares' group (or
  // commits after lazy_delay), and the acknowledgement still waits for it.
  log_.log().runSyncLazy([&](lmdb::Txn& txn) {
    log_.storeEpoch(txn, seqNode(xid.seq), epoch);
    auto r = log_.read(txn, xid);
    if (r && r->state == BranchStatus::Prepared) log_.finish(txn, *r, BranchStatus::Committed, epoch);
  });
  return BranchOutcome::Committed;
}

BranchOutcome PgAgent::rollbackOne(PGconn* c, Xid xid, std::uint64_t epoch) {
  auto rec = log_.branches({xid})[0];
  if (rec && rec->state == BranchStatus::Committed) return BranchOutcome::Committed;
  if (rec && rec->state == BranchStatus::RolledBack) return BranchOutcome::RolledBack;
  if (rec && rec->state == BranchStatus::Active && rec->onePhase) {
    // A one-phase branch whose outcome we lost: PostgreSQL knows.
    return settleOnePhase(c, *rec) == BranchStatus::Committed ? BranchOutcome::Committed : BranchOutcome::RolledBack;
  }
  if (!rec || rec->state == BranchStatus::Prepared) {
    KEEL_FAILPOINT("agent.before_rollback_durable");
    // No record yet PostgreSQL may hold it prepared: the prepare failed
    // after PREPARE TRANSACTION (its reply lost, or our PREPARED record not
    // written), which is why the coordinator rolls back. Until PostgreSQL
    // answers this throws, and the coordinator retries.
    rollbackPrepared(c, gid(xid));
  }
  bool committedMeanwhile = false;
  bool preparedMeanwhile = false;
  log_.log().runSync([&](lmdb::Txn& txn) {
    log_.storeEpoch(txn, seqNode(xid.seq), epoch);
    auto r = log_.read(txn, xid);
    if (!r) {
      log_.tombstone(txn, xid, epoch);  // never seen: refuse a late prepare
    } else if (r->state == BranchStatus::Prepared) {
      // Either we rolled PostgreSQL's half back above, or the prepare's
      // record landed after our first look: then PostgreSQL holds a
      // prepared transaction we have not touched yet.
      preparedMeanwhile = !rec || rec->state != BranchStatus::Prepared;
      log_.finish(txn, *r, BranchStatus::RolledBack, epoch);
    } else if (r->state == BranchStatus::Committed) {
      committedMeanwhile = true;
    }
  });
  if (preparedMeanwhile) {
    // Recorded rolled back first: if we die before this, start-up's
    // reconcile rolls it back (the log says rolled back).
    rollbackPrepared(c, gid(xid));
  }
  return committedMeanwhile ? BranchOutcome::Committed : BranchOutcome::RolledBack;
}

kj::Promise<std::vector<BranchOutcome>> PgAgent::finishAll(std::vector<Xid> xids, bool commit, std::uint64_t epoch) {
  if (!xids.empty()) log_.fence(seqNode(xids[0].seq), epoch);
  // One finish-pool job per branch, so that a batch spreads over the
  // connections; the answer keeps the batch's order.
  kj::Vector<kj::Promise<BranchOutcome>> each(xids.size());
  for (Xid x : xids) {
    each.add(finishPool_->run<BranchOutcome>([this, x, commit, epoch](PGconn* c) {
      return commit ? commitOne(c, x, epoch) : rollbackOne(c, x, epoch);
    }));
  }
  return kj::joinPromises(each.releaseAsArray()).then([commit](kj::Array<BranchOutcome> a) {
    if (commit) {
      KEEL_FAILPOINT("agent.after_commit_durable");
    } else {
      KEEL_FAILPOINT("agent.after_rollback_durable");
    }
    return std::vector<BranchOutcome>(a.begin(), a.end());
  });
}

kj::Promise<std::vector<BranchOutcome>> PgAgent::commit(std::uint64_t epoch, std::vector<Xid> xids) {
  return finishAll(std::move(xids), true, epoch);
}

kj::Promise<std::vector<BranchOutcome>> PgAgent::rollback(std::uint64_t epoch, std::vector<Xid> xids) {
  return finishAll(std::move(xids), false, epoch);
}

BranchStatus PgAgent::settleOnePhase(PGconn* c, BranchRecord& rec) {
  auto r = pg::exec(c, "SELECT txid_status(" + std::to_string(rec.hostTxid) + ")");
  std::string status = PQgetisnull(r.get(), 0, 0) ? "" : PQgetvalue(r.get(), 0, 0);
  // "in progress" cannot outlive our crash: the session that ran it is gone.
  BranchStatus final = status == "committed" ? BranchStatus::Committed : BranchStatus::RolledBack;
  Xid xid = rec.xid;
  std::uint64_t epoch = rec.epoch;
  log_.log().runSync([&](lmdb::Txn& txn) {
    auto cur = log_.read(txn, xid);
    if (cur && cur->state == BranchStatus::Active) {
      cur->reason = "one-phase outcome from txid_status: " + (status.empty() ? std::string("unknown") : status);
      log_.finish(txn, *cur, final, epoch);
    }
  });
  return final;
}

kj::Promise<OnePhaseResult> PgAgent::commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  log_.fence(seqNode(xid.seq), epoch);
  KEEL_FAILPOINT("agent.before_execute");
  if (auto bad = validate(ops)) return OnePhaseResult{BranchOutcome::RolledBack, *bad, {}};
  if (auto existing = log_.branches({xid})[0]) {
    if (existing->state == BranchStatus::Committed) return OnePhaseResult{BranchOutcome::Committed, "", {}};
    if (existing->state == BranchStatus::RolledBack) {
      return OnePhaseResult{BranchOutcome::RolledBack,
                            existing->reason.empty() ? "branch already rolled back" : existing->reason, {}};
    }
    return OnePhaseResult{BranchOutcome::Conflict, "branch " + xid.str() + " is in use", {}};
  }
  return pool_->run<OnePhaseResult>([this, epoch, xid, ops = std::move(ops)](PGconn* c) {
    pg::exec(c, "BEGIN");
    std::vector<OpResult> results;
    auto finishAs = [&](BranchStatus st, const std::string& reason, std::uint64_t txid) {
      log_.log().runSync([&](lmdb::Txn& txn) {
        log_.storeEpoch(txn, seqNode(xid.seq), epoch);
        auto rec = log_.read(txn, xid).value_or(BranchRecord{});
        rec.xid = xid;
        rec.onePhase = true;
        rec.ops = ops;
        rec.reason = reason;
        rec.hostTxid = txid;
        if (rec.createdUs == 0) rec.createdUs = wallMicros();
        log_.finish(txn, rec, st, epoch);
      });
    };
    if (auto why = runStatements(c, ops, results)) {
      finishAs(BranchStatus::RolledBack, *why, 0);
      return OnePhaseResult{BranchOutcome::RolledBack, *why, {}};
    }
    auto t = pg::exec(c, "SELECT txid_current()");
    std::uint64_t txid = std::stoull(PQgetvalue(t.get(), 0, 0));
    // Intent first: if we crash after COMMIT, txid_status() tells the outcome.
    log_.log().runSync([&](lmdb::Txn& txn) {
      BranchRecord rec;
      rec.xid = xid;
      rec.epoch = epoch;
      rec.onePhase = true;
      rec.ops = ops;
      rec.state = BranchStatus::Active;
      rec.hostTxid = txid;
      rec.createdUs = wallMicros();
      log_.put(txn, rec);
    });
    KEEL_FAILPOINT("agent.before_commit_durable");
    try {
      pg::exec(c, "COMMIT");
    } catch (const pg::PgError& e) {
      if (e.connectionLost()) throw;  // outcome unknown here; settled later through txid_status
      finishAs(BranchStatus::RolledBack, describePgError(e), txid);
      return OnePhaseResult{BranchOutcome::RolledBack, describePgError(e), {}};
    }
    finishAs(BranchStatus::Committed, "", txid);
    return OnePhaseResult{BranchOutcome::Committed, "", std::move(results)};
  });
}

}  // namespace keel
