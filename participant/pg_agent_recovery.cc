// PgAgent's recovery side: the gids, the start-up reconcile and the sweep
// of PostgreSQL's prepared transactions against the branch log. The
// protocol side (prepare, commit, rollback) is pg_agent.cc;
// docs/postgres.md says what each step does and why.

#include <algorithm>
#include <charconv>
#include <cstdlib>

#include "common/log.h"
#include "participant/adapters/pg_sql.h"
#include "participant/pg_agent.h"

namespace keel {

using pg::quoteLiteral;

namespace {

// A decimal number and nothing else.
template <typename T>
std::optional<T> decimal(std::string_view s) {
  T v{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

std::string pgGid(const std::string& agent, Xid xid, std::uint64_t incarnation) {
  std::string g = "keel:" + agent + ":" + std::to_string(xid.seq) + ":" + std::to_string(xid.branch);
  if (incarnation != 0) g += ":" + std::to_string(incarnation);
  return g;
}

std::optional<PgGid> parsePgGid(const std::string& agent, const std::string& gid) {
  const std::string prefix = "keel:" + agent + ":";
  if (gid.size() <= prefix.size() || gid.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  std::vector<std::string_view> parts;
  std::string_view rest(gid);
  rest.remove_prefix(prefix.size());
  for (std::size_t colon; (colon = rest.find(':')) != std::string_view::npos; rest.remove_prefix(colon + 1)) {
    parts.push_back(rest.substr(0, colon));
  }
  parts.push_back(rest);
  if (parts.size() != 2 && parts.size() != 3) return std::nullopt;
  auto seq = decimal<std::uint64_t>(parts[0]);
  auto branch = decimal<std::uint16_t>(parts[1]);
  auto incarnation = parts.size() == 3 ? decimal<std::uint64_t>(parts[2]) : std::optional<std::uint64_t>(0);
  if (!seq || !branch || !incarnation) return std::nullopt;
  PgGid out{Xid{*seq, *branch}, *incarnation};
  // Only the one spelling pgGid gives (no leading zeros, no ":0"), so that
  // the gid a record names is the gid PostgreSQL holds.
  if (pgGid(agent, out.xid, out.incarnation) != gid) return std::nullopt;
  return out;
}

std::uint64_t fullTxid(std::uint64_t reference, std::uint32_t xid) {
  // The xid's distance from the reference's low 32 bits, as -2^31 .. 2^31 - 1.
  auto delta = std::int64_t(std::int32_t(xid - std::uint32_t(reference)));
  if (delta < 0 && std::uint64_t(-delta) >= reference) return 0;
  return reference + delta;
}

std::string PgAgent::gid(Xid xid) const { return pgGid(opts_.name, xid, log_.incarnation()); }

std::string PgAgent::gidOf(const BranchRecord& rec) const { return pgGid(opts_.name, rec.xid, rec.hostIncarnation); }

bool PgAgent::prepareInFlight(Xid xid) {
  std::lock_guard<std::mutex> lk(mu_);
  return preparing_.count(xid) != 0 || pending_.count(xid) != 0;
}

void PgAgent::reconcile() {
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
    auto swept = sweepPrepared(c);
    std::size_t settled = 0;
    for (auto& rec : log_.unfinishedBranches()) {
      if (rec.state == BranchStatus::Active && rec.onePhase && settleOnePhase(c, rec)) ++settled;
    }
    KEEL_LOG_INFO(
        "postgres reconcile: {} prepared kept, {} recovered in doubt (no record yet), {} rolled back, {} committed, {} "
        "one-phase settled; incarnation {}",
        swept.kept, swept.recovered, swept.rolledBack, swept.committed, settled, log_.incarnation());
  });
  sweeper_ = std::thread([this] { sweepLoop(); });
}

std::vector<PgAgent::Held> PgAgent::heldPrepared(PGconn* c, const std::string& gidCondition) {
  // pg_prepared_xacts gives the 32-bit xid; a current snapshot's xmax (64
  // bits) supplies its epoch (see fullTxid). txid_current() would too, but
  // would make every sweep a writing transaction.
  auto q = pg::exec(c,
                    "SELECT gid, transaction::text, txid_snapshot_xmax(txid_current_snapshot()) FROM "
                    "pg_prepared_xacts WHERE database = current_database() AND " +
                        gidCondition);
  std::vector<Held> out;
  for (int i = 0; i < PQntuples(q.get()); ++i) {
    std::string g = PQgetvalue(q.get(), i, 0);
    auto names = parsePgGid(opts_.name, g);
    if (!names) continue;  // not one of ours (under our prefix by hand?): left alone
    std::uint64_t next = std::stoull(PQgetvalue(q.get(), i, 2));
    auto xid = std::uint32_t(std::stoul(PQgetvalue(q.get(), i, 1)));
    out.push_back({std::move(g), *names, fullTxid(next, xid)});
  }
  return out;
}

std::vector<PgAgent::Held> PgAgent::heldPreparedOf(PGconn* c, Xid xid) {
  // The gid before incarnations, or that followed by ":<incarnation>".
  std::string bare = pgGid(opts_.name, xid, 0);
  return heldPrepared(c, "(gid = " + quoteLiteral(bare) + " OR left(gid, " + std::to_string(bare.size() + 1) +
                             ") = " + quoteLiteral(bare + ":") + ")");
}

bool PgAgent::recordInDoubt(lmdb::Txn& txn, const Held& h, const std::string& reason) const {
  if (log_.read(txn, h.names.xid)) return false;
  BranchRecord r;
  r.xid = h.names.xid;
  r.state = BranchStatus::Prepared;
  r.hostTxid = h.txid;
  r.hostIncarnation = h.names.incarnation;
  r.createdUs = r.preparedUs = wallMicros();
  r.reason = reason;
  log_.put(txn, r);
  return true;
}

PgAgent::Swept PgAgent::sweepPrepared(PGconn* c) {
  std::string prefix = "keel:" + opts_.name + ":";
  Swept out;
  for (const Held& h : heldPrepared(c, "left(gid, " + std::to_string(prefix.size()) + ") = " + quoteLiteral(prefix))) {
    settleHeld(c, h, out);
  }
  return out;
}

void PgAgent::settleHeld(PGconn* c, const Held& h, Swept& out) {
  const Xid xid = h.names.xid;
  const bool earlier = h.names.incarnation != log_.incarnation();
  // A prepare of this start that is still on its way (statements run, its
  // record not yet durable) is left to it: it records the branch or undoes
  // PostgreSQL's half itself. Asked before the record is read: once no
  // prepare of the branch is in flight, its record is durable or will never
  // be written, so the read below tells which.
  if (!earlier && prepareInFlight(xid)) return;
  auto rec = log_.branches({xid})[0];
  if (!rec) {
    // Prepared in PostgreSQL with no record: the lazy PREPARED record was
    // lost with an earlier start (the vote may have left, so the
    // coordinator may have decided COMMIT), a prepare's pipeline finished in
    // PostgreSQL after the agent or the connection that sent it died, or a
    // prepare failed after PREPARE TRANSACTION. In doubt: recorded PREPARED,
    // and the coordinator's phase 2 or the in-doubt resolver's question
    // settles it (never rolled back on our own).
    bool wrote = log_.log().runSync([&](lmdb::Txn& txn) {
      return recordInDoubt(txn, h,
                           "recovered from PostgreSQL's prepared transaction " + h.gid +
                               (earlier ? " of an earlier start of this agent" : "") +
                               " (no PREPARED record was durable): in doubt until the coordinator answers");
    });
    if (wrote) {
      ++out.recovered;
      out.recoveredEarlier += earlier;
    }
    return;  // a record there by now (a rollback's tombstone): the next sweep
  }
  const bool named = h.gid == gidOf(*rec);  // the gid the record says was prepared
  if (rec->state == BranchStatus::Prepared || (rec->state == BranchStatus::Committed && !named)) {
    ++out.kept;  // waits for the coordinator (or the in-doubt resolver)
    if (!named) {
      // A second prepared transaction for one branch: the coordinator sends
      // a branch's prepare once, so this is not ours to settle.
      std::lock_guard<std::mutex> lk(mu_);
      if (warnedStray_.size() < 4096 && warnedStray_.insert(h.gid).second) {
        KEEL_LOG_WARN("branch {}: PostgreSQL also holds {}, which its record (gid {}) does not name; left for an "
                      "operator",
                      xid.str(), h.gid, gidOf(*rec));
      }
    } else if (rec->hostTxid == 0 && h.txid != 0) {
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
  } else if (rec->state == BranchStatus::Committed) {
    pg::commitPrepared(c, h.gid);  // false: finished meanwhile
    ++out.committed;
  } else {
    // Decided rolled back (a tombstone, refused, or rolled back): every
    // PostgreSQL half of the branch is undone, whatever start prepared it.
    // Also the case of a prepare that PostgreSQL finished after the
    // rollback had looked for it.
    pg::rollbackPrepared(c, h.gid);
    ++out.rolledBack;
  }
}

void PgAgent::sweepLoop() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stopping_) {
    sweepCv_.wait_for(lk, std::chrono::seconds(5));
    if (stopping_) break;
    lk.unlock();
    try {
      auto swept = finishPool_->runSync<Swept>([&](PGconn* c) { return sweepPrepared(c); });
      if (swept.recovered + swept.rolledBack + swept.committed > 0) {
        KEEL_LOG_INFO(
            "postgres sweep: {} prepared transaction(s) without a record recorded in doubt ({} of an earlier start), "
            "{} rolled back, {} committed (as their records say)",
            swept.recovered, swept.recoveredEarlier, swept.rolledBack, swept.committed);
      }
    } catch (const std::exception& e) {
      KEEL_LOG_DEBUG("postgres sweep skipped: {}", e.what());
    }
    lk.lock();
  }
}

}  // namespace keel
