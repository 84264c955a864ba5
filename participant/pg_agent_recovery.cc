// PgAgent's recovery side: the gids, the start-up reconcile and the sweep
// of PostgreSQL's prepared transactions against the branch log. The
// protocol side (prepare, commit, rollback) is pg_agent.cc;
// docs/postgres.md says what each step does and why.

#include <algorithm>
#include <cstdlib>

#include "common/log.h"
#include "participant/adapters/pg_sql.h"
#include "participant/pg_agent.h"

namespace keel {

using pg::kUndefinedObject;
using pg::quoteLiteral;
using pg::rollbackPrepared;

std::uint64_t fullTxid(std::uint64_t reference, std::uint32_t xid) {
  // The xid's distance from the reference's low 32 bits, as -2^31 .. 2^31 - 1.
  auto delta = std::int64_t(std::int32_t(xid - std::uint32_t(reference)));
  if (delta < 0 && std::uint64_t(-delta) >= reference) return 0;
  return reference + delta;
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
    auto swept = sweepPrepared(c, /*minAgeNoRecordS=*/0);
    std::size_t settled = 0;
    for (auto& rec : log_.unfinishedBranches()) {
      if (rec.state == BranchStatus::Active && rec.onePhase && settleOnePhase(c, rec)) ++settled;
    }
    KEEL_LOG_INFO(
        "postgres reconcile: {} prepared kept, {} recovered in doubt (no record yet), {} rolled back, {} committed, {} "
        "one-phase settled",
        swept.kept, swept.recovered, swept.rolledBack, swept.committed, settled);
  });
  sweeper_ = std::thread([this] { sweepLoop(); });
}

std::vector<PgAgent::Held> PgAgent::heldPrepared(PGconn* c, const std::string& gidCondition) {
  // pg_prepared_xacts gives the 32-bit xid; a current snapshot's xmax (64
  // bits) supplies its epoch (see fullTxid). txid_current() would too, but
  // would make every sweep a writing transaction.
  auto q = pg::exec(c,
                    "SELECT gid, extract(epoch FROM now() - prepared), transaction::text, "
                    "txid_snapshot_xmax(txid_current_snapshot()) FROM pg_prepared_xacts WHERE database = "
                    "current_database() AND " +
                        gidCondition);
  std::vector<Held> out;
  for (int i = 0; i < PQntuples(q.get()); ++i) {
    std::uint64_t next = std::stoull(PQgetvalue(q.get(), i, 3));
    auto xid = std::uint32_t(std::stoul(PQgetvalue(q.get(), i, 2)));
    out.push_back({PQgetvalue(q.get(), i, 0), std::atof(PQgetvalue(q.get(), i, 1)), fullTxid(next, xid)});
  }
  return out;
}

bool PgAgent::recordInDoubt(lmdb::Txn& txn, Xid xid, std::uint64_t txid, const std::string& reason) const {
  if (log_.read(txn, xid)) return false;
  BranchRecord r;
  r.xid = xid;
  r.state = BranchStatus::Prepared;
  r.hostTxid = txid;
  r.createdUs = r.preparedUs = wallMicros();
  r.reason = reason;
  log_.put(txn, r);
  return true;
}

PgAgent::Swept PgAgent::sweepPrepared(PGconn* c, double minAgeNoRecordS) {
  std::string prefix = "keel:" + opts_.name + ":";
  Swept out;
  for (const Held& h : heldPrepared(c, "left(gid, " + std::to_string(prefix.size()) + ") = " + quoteLiteral(prefix))) {
    const std::string& g = h.gid;
    auto rest = g.substr(prefix.size());
    auto colon = rest.find(':');
    if (colon == std::string::npos) continue;
    Xid xid{std::stoull(rest.substr(0, colon)), std::uint16_t(std::stoul(rest.substr(colon + 1)))};
    auto rec = log_.branches({xid})[0];
    if (rec && rec->state == BranchStatus::Prepared) {
      ++out.kept;  // waits for the coordinator (or the in-doubt resolver)
      if (rec->hostTxid == 0 && h.txid != 0) {
        // A record from before txids were kept: note it while PostgreSQL
        // still holds it, so that its end can be told (txid_status).
        log_.log().runSync([&](lmdb::Txn& txn) {
          auto r = log_.read(txn, xid);
          if (r && r->state == BranchStatus::Prepared && r->hostTxid == 0) {
            r->hostTxid = h.txid;
            log_.put(txn, *r);
          }
        });
      }
    } else if (rec && rec->state == BranchStatus::Committed) {
      try {
        pg::exec(c, "COMMIT PREPARED " + quoteLiteral(g));
      } catch (const pg::PgError& e) {
        if (e.sqlstate() != kUndefinedObject) throw;  // finished meanwhile
      }
      ++out.committed;
    } else if (!rec) {
      // Prepared in PostgreSQL with no record: its lazy PREPARED record was
      // lost in our crash (the vote may have left, so the coordinator may
      // have decided COMMIT), or a prepare's pipeline finished in
      // PostgreSQL after the agent that sent it died. In doubt: recorded
      // PREPARED, and the coordinator's phase 2 or the in-doubt resolver's
      // question settles it (never rolled back on our own). While running,
      // a young gid is left alone: its prepare may be about to record it.
      if (h.ageS < minAgeNoRecordS || pendingRecord(xid)) continue;
      log_.log().runSync([&](lmdb::Txn& txn) {
        recordInDoubt(txn, xid, h.txid,
                      "recovered from PostgreSQL's prepared transaction " + g +
                          " (no PREPARED record was durable): in doubt until the coordinator answers");
      });
      ++out.recovered;
    } else {
      // Decided rolled back (a tombstone, or refused): PostgreSQL's half is
      // undone. Also the case of a prepare that PostgreSQL finished after
      // the rollback had looked for it.
      rollbackPrepared(c, g);
      ++out.rolledBack;
    }
  }
  return out;
}

void PgAgent::sweepLoop() {
  // Never younger than the longest a live prepare can take between PREPARE
  // TRANSACTION and its record (a lock wait of its statements included).
  const double minAgeS = std::max(10.0, 3.0 * opts_.lockTimeoutMs / 1000.0);
  std::unique_lock<std::mutex> lk(mu_);
  while (!stopping_) {
    sweepCv_.wait_for(lk, std::chrono::seconds(5));
    if (stopping_) break;
    lk.unlock();
    try {
      auto swept = finishPool_->runSync<Swept>([&](PGconn* c) { return sweepPrepared(c, minAgeS); });
      if (swept.recovered + swept.rolledBack + swept.committed > 0) {
        KEEL_LOG_INFO(
            "postgres sweep: {} prepared transaction(s) without a record recorded in doubt, {} rolled back, {} "
            "committed (as their records say)",
            swept.recovered, swept.rolledBack, swept.committed);
      }
    } catch (const std::exception& e) {
      KEEL_LOG_DEBUG("postgres sweep skipped: {}", e.what());
    }
    lk.lock();
  }
}

}  // namespace keel
