// PgAgent's recovery side: the gids, the start-up reconcile, the keeper
// thread, and what the in-doubt resolver hears. The protocol side (prepare,
// commit, rollback) is pg_agent.cc; docs/postgres.md says what each step
// does and why.
//
// The keeper (keeper_, one thread) has two jobs:
//   sweep    PostgreSQL's prepared transactions of this agent against the
//            branch log (sweepPrepared), every kSweepPeriod, and every
//            kFastSweepPeriod for settleWindow() after start-up and after a
//            pool connected again: a prepare whose pipeline was in flight
//            when its agent (or its connection) died may still complete in
//            PostgreSQL for about a lock_timeout per statement. A sweep that
//            fails (PostgreSQL unreachable) is tried again after backoff(),
//            capped at kProbeMaxMs: it is what finds PostgreSQL back.
//   retries  owed_: a branch whose COMMIT PREPARED or ROLLBACK PREPARED
//            failed, done again as a finish-pool job after backoff(attempt)
//            (20 ms doubling to 1 s, like the coordinator's phase-2 retries
//            with a lower cap), and at once when a pool connects again or a
//            sweep succeeds after failing; held back while PostgreSQL is
//            unreachable (the sweep probes it). What the coordinator asked
//            is asked again (commitOne and rollbackOne are idempotent)
//            unless the record is final by then; a branch whose record is
//            final while PostgreSQL may still hold its gid is settled as the
//            record says.
// Neither decides a branch: they apply a record (committed, rolled back) or
// a decision the coordinator sent, and record in doubt what has no record.

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "common/data_dir.h"
#include "common/log.h"
#include "participant/adapters/pg_sql.h"
#include "participant/pg_agent.h"

namespace keel {

using pg::quoteLiteral;

namespace {

constexpr auto kSweepPeriod = std::chrono::seconds(1);
constexpr auto kFastSweepPeriod = std::chrono::milliseconds(100);
constexpr std::uint64_t kRetryInitialMs = 20, kRetryMaxMs = 1000;
// A failed sweep is the probe that finds PostgreSQL back (the retries wait
// for it), so its back-off stops lower: one refused connect every 250 ms.
constexpr std::uint64_t kProbeMaxMs = 250;
// One-phase markers waiting for their delete (one gid is ~40 bytes).
constexpr std::size_t kMaxMarkersQueued = 1'000'000;

// The wait before attempt `failed` + 1: a refused connect to a server that
// is down costs little, and the wait after it is back is what heals slowly.
std::chrono::milliseconds backoff(std::uint32_t failed, std::uint64_t maxMs = kRetryMaxMs) {
  std::uint64_t ms = kRetryInitialMs;
  for (std::uint32_t i = 1; i < failed && ms < maxMs; ++i) ms *= 2;
  return std::chrono::milliseconds(std::min(ms, maxMs));
}

// A decimal number and nothing else.
template <typename T>
std::optional<T> decimal(std::string_view s) {
  T v{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// What the agent needs of its database: prepared transactions enabled,
// and the one-phase marker table (created here if missing) with the rights
// to use it. Throws with the fix.
void checkPreparedTransactions(PGconn* c, const PgAgentOptions& opts) {
  auto r = pg::exec(c, "SHOW max_prepared_transactions");
  int max = std::atoi(PQgetvalue(r.get(), 0, 0));
  if (max == 0) {
    throw std::runtime_error(
        "PostgreSQL has max_prepared_transactions = 0, so it cannot prepare transactions: set "
        "max_prepared_transactions to at least " +
        std::to_string(opts.poolSize) + " (the agent's pool_size) in postgresql.conf and restart PostgreSQL");
  }
  if (std::size_t(max) < opts.poolSize) {
    KEEL_LOG_WARN("max_prepared_transactions = {} is below pool_size = {}: prepares may fail", max, opts.poolSize);
  }
}

void ensureMarkerTable(PGconn* c, const PgAgentOptions& opts) {
  const std::string table = kMarkerTable;
  auto fix = [&] {
    return "run `" + std::string(kMarkerTableSql) + "` in this database as a role that may, and grant the agent's role " +
           "SELECT, INSERT and DELETE on " + table + " (docs/postgres.md, \"One participant only\")";
  };
  auto exists = pg::exec(c, "SELECT to_regclass(" + pg::quoteLiteral(table) + ") IS NOT NULL");
  if (std::string(PQgetvalue(exists.get(), 0, 0)) != "t") {
    try {
      pg::exec(c, kMarkerTableSql);
      KEEL_LOG_INFO("postgres: created the one-phase marker table {}", table);
    } catch (const pg::PgError& e) {
      // Another agent on this database created it at the same moment.
      if (e.sqlstate() != "23505" && e.sqlstate() != "42P07") {
        if (e.connectionLost()) throw;
        throw std::runtime_error("postgres agent " + opts.name + " cannot create its one-phase marker table " + table +
                                 " (" + describePgError(e) + "): " + fix());
      }
    }
  }
  auto may = pg::exec(c, "SELECT has_table_privilege(" + pg::quoteLiteral(table) + ", 'SELECT, INSERT, DELETE')");
  if (std::string(PQgetvalue(may.get(), 0, 0)) != "t") {
    throw std::runtime_error("postgres agent " + opts.name + " may not read, insert and delete rows of " + table +
                             ": " + fix());
  }
}

void checkDatabase(PGconn* c, const PgAgentOptions& opts) {
  checkPreparedTransactions(c, opts);
  ensureMarkerTable(c, opts);
}

// A connection of its own for one start-up step (preflight, reconcile),
// closed when it ends; throws with PostgreSQL's reason.
std::unique_ptr<PGconn, decltype(&PQfinish)> connectForStart(const PgAgentOptions& opts) {
  std::unique_ptr<PGconn, decltype(&PQfinish)> c(PQconnectdb(opts.conninfo.c_str()), &PQfinish);
  if (PQstatus(c.get()) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(c.get());
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    throw std::runtime_error("postgres agent " + opts.name + " cannot connect to PostgreSQL: " + msg);
  }
  return c;
}

}  // namespace

void PgAgent::preflight(const PgAgentOptions& opts) { checkDatabase(connectForStart(opts).get(), opts); }

std::string pgSessionPrefix(const std::string& dataDir) {
  std::ifstream f(dataDir + "/" + DataDir::kIdentityFile);
  if (!f) return "";
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  try {
    return "keel " + parseIdentity(text, dataDir).instanceId;
  } catch (const std::exception&) {
    return "";  // DataDir refused it already, or will
  }
}

std::string pgSessionName(const std::string& prefix, const std::string& agent) {
  if (prefix.empty()) return "";
  return (prefix + " " + agent).substr(0, 63);  // NAMEDATALEN - 1: PostgreSQL cuts the rest
}

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

bool PgAgent::knownInDoubt(const BranchRecord& rec) const {
  return rec.state == BranchStatus::Prepared && !rec.onePhase && rec.hostIncarnation != log_.incarnation();
}

kj::Promise<void> PgAgent::inDoubtRecorded() {
  std::lock_guard<std::mutex> lk(mu_);
  if (inDoubtNew_) {
    inDoubtNew_ = false;
    return kj::READY_NOW;
  }
  if (inDoubtWake_.get() != nullptr) inDoubtWake_->fulfill();  // a waiter before this one: it looks again
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  inDoubtWake_ = kj::mv(paf.fulfiller);
  return kj::mv(paf.promise);
}

void PgAgent::noteKnownInDoubt() {
  std::lock_guard<std::mutex> lk(mu_);
  if (inDoubtWake_.get() != nullptr && inDoubtWake_->isWaiting()) {
    inDoubtWake_->fulfill();
    inDoubtWake_ = nullptr;
  } else {
    inDoubtNew_ = true;
  }
}

bool PgAgent::prepareInFlight(Xid xid) {
  std::lock_guard<std::mutex> lk(mu_);
  return preparing_.count(xid) != 0 || pending_.count(xid) != 0;
}

std::chrono::milliseconds PgAgent::settleWindow() const {
  return std::chrono::milliseconds(std::max<std::uint64_t>(2000, 3ull * opts_.lockTimeoutMs));
}

void PgAgent::reconcile() {
  // On a connection of its own, gone once the start is done (the hot path's
  // are on the loop, phase 2's and the keeper's in finishPool_).
  {
    auto conn = connectForStart(opts_);
    PGconn* c = conn.get();
    pg::exec(c, "SET lock_timeout = " + std::to_string(opts_.lockTimeoutMs));
    checkDatabase(c, opts_);
    endEarlierSessions(c);
    auto swept = sweepPrepared(c);
    std::size_t settled = 0;
    for (auto& rec : log_.unfinishedBranches()) {
      if (rec.state == BranchStatus::Active && rec.onePhase && settleOnePhase(c, rec)) ++settled;
    }
    std::size_t dropped = dropStaleMarkers(c);
    KEEL_LOG_INFO(
        "postgres reconcile: {} prepared kept, {} recovered in doubt (no record yet), {} rolled back, {} committed, {} "
        "one-phase settled, {} one-phase marker(s) of earlier outcomes deleted; incarnation {}",
        swept.kept, swept.recovered, swept.rolledBack, swept.committed, settled, dropped, log_.incarnation());
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto now = Clock::now();
    fastUntil_ = now + settleWindow();
    nextSweep_ = now + kFastSweepPeriod;
  }
  keeper_ = std::thread([this] { keeperLoop(); });
}

void PgAgent::endEarlierSessions(PGconn* c) {
  if (sessionPrefix_.empty()) return;
  // Ours are not connected yet (every pool connects on first use), and
  // this connection is not named: every session so named is an earlier
  // run's. PostgreSQL 14 and later wait for each to be gone (up to 5 s).
  const std::string wait = PQserverVersion(c) >= 140000 ? ", 5000" : "";
  try {
    auto r = pg::exec(c, "SELECT pid, pg_terminate_backend(pid" + wait + "), coalesce(state, '') FROM " +
                             "pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND " +
                             "application_name LIKE " + quoteLiteral(sessionPrefix_ + " %"));
    int n = PQntuples(r.get());
    if (n == 0) return;
    std::string pids;
    int ended = 0;
    for (int i = 0; i < n; ++i) {
      pids += std::string(pids.empty() ? "" : ", ") + PQgetvalue(r.get(), i, 0) + " (" + PQgetvalue(r.get(), i, 2) +
              ")";
      if (std::string(PQgetvalue(r.get(), i, 1)) == "t") ++ended;
    }
    // pg_terminate_backend is false for a session that ended by itself in
    // between (a dead client it noticed at last), and for one still there
    // after the wait.
    KEEL_LOG_WARN("postgres reconcile: found {} session(s) an earlier run of this agent left open and ended {} (any "
                  "other had ended by itself, or was still there after 5 s): {}; the locks their transactions held "
                  "are free, what they had not committed is rolled back",
                  n, ended, pids);
  } catch (const pg::PgError& e) {
    if (e.connectionLost()) throw;
    KEEL_LOG_WARN("postgres reconcile: could not end the sessions an earlier run of this agent left open ({}): "
                  "their locks stay until PostgreSQL finds them gone (tcp_keepalives_idle); grant this agent's "
                  "role pg_signal_backend, or end them by hand",
                  e.what());
  }
}

void PgAgent::markerDone(std::string gid) {
  std::lock_guard<std::mutex> lk(mu_);
  // Bounded while PostgreSQL is unreachable; what is left out here is
  // deleted at the next start (dropStaleMarkers).
  if (markersDone_.size() < kMaxMarkersQueued) markersDone_.push_back(std::move(gid));
}

void PgAgent::dropMarkers(PGconn* c) {
  for (;;) {
    std::vector<std::string> batch;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (markersDone_.empty()) return;
      std::size_t n = std::min<std::size_t>(markersDone_.size(), 1000);
      batch.assign(std::make_move_iterator(markersDone_.end() - std::ptrdiff_t(n)),
                   std::make_move_iterator(markersDone_.end()));
      markersDone_.resize(markersDone_.size() - n);
    }
    std::string in;
    for (const auto& g : batch) in += (in.empty() ? "" : ", ") + pg::quoteLiteral(g);
    try {
      pg::exec(c, std::string("DELETE FROM ") + kMarkerTable + " WHERE gid IN (" + in + ")");
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& g : batch) {
        if (markersDone_.size() < kMaxMarkersQueued) markersDone_.push_back(std::move(g));
      }
      throw;
    }
  }
}

std::size_t PgAgent::dropStaleMarkers(PGconn* c) {
  // Every marker of ours but those of one-phase branches still ACTIVE
  // (their outcome not yet settled: the row is what will tell it).
  const std::string prefix = "keel:" + opts_.name + ":";
  std::string keep;
  for (const auto& rec : log_.unfinishedBranches()) {
    if (rec.state == BranchStatus::Active && rec.onePhase && rec.hostMarker) {
      keep += (keep.empty() ? "" : ", ") + pg::quoteLiteral(gidOf(rec));
    }
  }
  auto r = pg::exec(c, std::string("DELETE FROM ") + kMarkerTable + " WHERE left(gid, " +
                           std::to_string(prefix.size()) + ") = " + pg::quoteLiteral(prefix) +
                           (keep.empty() ? "" : " AND gid NOT IN (" + keep + ")"));
  return std::size_t(std::atoll(PQcmdTuples(r.get())));
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
  if (log_.read(txn, h.names.xid) || log_.released(h.names.xid)) return false;
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
  if (out.recoveredEarlier > 0) noteKnownInDoubt();
  return out;
}

bool PgAgent::settleHeldOf(PGconn* c, Xid xid) {
  Swept out;
  for (const Held& h : heldPreparedOf(c, xid)) settleHeld(c, h, out);
  if (out.recoveredEarlier > 0) noteKnownInDoubt();
  return out.recovered + out.rolledBack + out.committed > 0;
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
  if (!rec && log_.released(xid)) {
    // Below its node's release floor: the interaction finished at every
    // participant (this branch with its record) before it was released, so
    // this is a late duplicate prepare that PostgreSQL finished after its
    // check. Never in doubt: undone.
    KEEL_LOG_WARN("branch {}: PostgreSQL holds {} but the branch was released (its interaction finished and "
                  "archived): a late duplicate, rolled back",
                  xid.str(), h.gid);
    if (pg::rollbackPrepared(c, h.gid)) ++out.rolledBack;
    return;
  }
  if (!rec) {
    // Prepared in PostgreSQL with no record: the lazy PREPARED record was
    // lost with an earlier start (the vote may have left, so the
    // coordinator may have decided COMMIT), a prepare's pipeline finished in
    // PostgreSQL after the agent or the connection that sent it died, or a
    // prepare failed after PREPARE TRANSACTION. In doubt: recorded PREPARED,
    // and the coordinator's phase 2 or the in-doubt resolver's question
    // settles it (never rolled back on our own). Of an earlier incarnation,
    // the resolver asks at once (knownInDoubt).
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
    if (pg::commitPrepared(c, h.gid)) ++out.committed;  // false: its commit finished it meanwhile
  } else {
    // Decided rolled back (a tombstone, refused, or rolled back): every
    // PostgreSQL half of the branch is undone, whatever start prepared it.
    // Also the case of a prepare that PostgreSQL finished after the
    // rollback had looked for it.
    if (pg::rollbackPrepared(c, h.gid)) ++out.rolledBack;  // false: finished meanwhile
  }
}

bool PgAgent::runSweep() {
  try {
    auto swept = finishPool_->runSync<Swept>([&](PGconn* c) {
      auto out = sweepPrepared(c);
      dropMarkers(c);
      return out;
    });
    if (swept.recovered + swept.rolledBack + swept.committed > 0) {
      KEEL_LOG_INFO(
          "postgres sweep: {} prepared transaction(s) without a record recorded in doubt ({} of an earlier start), {} "
          "rolled back, {} committed (as their records say)",
          swept.recovered, swept.recoveredEarlier, swept.rolledBack, swept.committed);
    }
    return true;
  } catch (const std::exception& e) {
    KEEL_LOG_DEBUG("postgres sweep failed: {}", e.what());
    return false;
  }
}

void PgAgent::keeperLoop() {
  std::unique_lock<std::mutex> lk(mu_);
  auto reported = Clock::now();
  while (!stopping_) {
    auto now = Clock::now();
    if (retriedDone_ > 0 && now - reported >= std::chrono::seconds(1)) {
      KEEL_LOG_INFO("postgres: {} branch(es) finished in PostgreSQL by the agent's own retry", retriedDone_);
      retriedDone_ = 0;
      reported = now;
    }
    // Retries that are due run side by side on the finish pool; none while
    // PostgreSQL is unreachable: the sweep's back-off probes it meanwhile
    // (one failed connect, not one per branch), and everything owed is due
    // again once it answers.
    std::vector<std::pair<Xid, Owed>> due;
    auto wake = nextSweep_;
    for (auto it = owed_.begin(); !hostDown_ && it != owed_.end();) {
      if (it->second.due <= now) {
        due.emplace_back(*it);
        it = owed_.erase(it);
      } else {
        wake = std::min(wake, it->second.due);
        ++it;
      }
    }
    if (!due.empty()) {
      lk.unlock();
      for (auto& [xid, o] : due) {
        finishPool_->post([this, xid = xid, o = o](PGconn* c) { retryOwed(c, xid, o); });
      }
      lk.lock();
      continue;
    }
    if (now < nextSweep_) {
      keeperCv_.wait_until(lk, wake);
      continue;
    }
    lk.unlock();
    bool swept = runSweep();
    pruneUnrecorded();  // the sweep records such branches in doubt
    lk.lock();
    now = Clock::now();
    sweepFailures_ = swept ? 0 : sweepFailures_ + 1;
    nextSweep_ = now + (!swept ? backoff(sweepFailures_, kProbeMaxMs)
                               : std::chrono::milliseconds(now < fastUntil_ ? kFastSweepPeriod : kSweepPeriod));
    if (swept && hostDown_) {
      for (auto& [xid, o] : owed_) o.due = now;
    }
    hostDown_ = !swept;
  }
}

void PgAgent::owe(Xid xid, Owe what, std::uint64_t epoch, std::uint32_t failed, bool unreachable,
                  std::uint64_t hostTxid) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return;  // the next start's reconcile (or the coordinator's retry) finishes it
    auto [it, fresh] = owed_.try_emplace(xid);
    Owed& o = it->second;
    if (what != Owe::Settle) {
      o.what = what;
      o.epoch = epoch;
      if (hostTxid != 0) o.hostTxid = hostTxid;
    }
    o.settle = o.settle || what == Owe::Settle;
    o.failed = std::max(o.failed, failed);
    o.due = Clock::now() + (o.failed == 0 ? std::chrono::milliseconds(0) : backoff(o.failed));
    hostDown_ = hostDown_ || unreachable;
  }
  keeperCv_.notify_one();
}

void PgAgent::retryOwed(PGconn* c, Xid xid, Owed o) {
  try {
    if (c == nullptr) throw pg::PgError("cannot connect to PostgreSQL", "");
    bool did = false;
    if (o.what != Owe::Settle) {
      // Done again unless the coordinator's own retry was first (the record
      // is final then, and its call did PostgreSQL's part or owes it here).
      auto rec = log_.branches({xid})[0];
      if (!rec || rec->state == BranchStatus::Prepared || rec->state == BranchStatus::Active) {
        if (o.what == Owe::Commit) {
          commitOne(c, xid, o.epoch, o.hostTxid);
        } else {
          rollbackOne(c, xid, o.epoch);
        }
        did = true;
      }
    }
    if (o.settle) did = settleHeldOf(c, xid) || did;
    if (did) {
      std::lock_guard<std::mutex> lk(mu_);
      ++retriedDone_;
    }
  } catch (const std::exception& e) {
    auto pe = dynamic_cast<const pg::PgError*>(&e);
    KEEL_LOG_DEBUG("branch {}: retry {} failed ({})", xid.str(), o.failed + 1, e.what());
    if (o.what != Owe::Settle) {
      owe(xid, o.what, o.epoch, o.failed + 1, pe != nullptr && pe->connectionLost(), o.hostTxid);
    }
    if (o.settle) owe(xid, Owe::Settle, o.epoch, o.failed + 1, pe != nullptr && pe->connectionLost());
  }
}

void PgAgent::reconnected() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return;
    auto now = Clock::now();
    fastUntil_ = now + settleWindow();
    nextSweep_ = std::min(nextSweep_, now);
    hostDown_ = false;
    for (auto& [xid, o] : owed_) o.due = now;
  }
  keeperCv_.notify_one();
  KEEL_LOG_INFO("postgres: connected again; retrying what failed meanwhile and sweeping now");
}

}  // namespace keel
