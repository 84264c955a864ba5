#include "participant/agent.h"

#include "common/failpoint.h"
#include "common/log.h"
#include "participant/adapters/ledger.h"

namespace keel {

Agent::Agent(AgentOptions opts) : opts_(std::move(opts)), log_(opts_.dataDir, opts_.mapSizeBytes, opts_.redo) {
  accounts_ = log_.env().openDb("accounts");
  // Check every account decodes before serving: a damaged ledger must stop
  // the agent, not be skipped (start() does the same for branches).
  {
    auto txn = log_.env().beginRead();
    txn.scan(accounts_, "", [this](std::string_view k, std::string_view v) {
      try {
        if (decodeAccount(v).held != 0) legacyHeld_.emplace_back(k);
      } catch (const CorruptRecord& e) {
        throw CorruptRecord("account " + std::string(k) + ": " + e.what());
      }
      return true;
    });
  }
  log_.check();
  GroupCommitLog::Options lo;
  lo.onRolledBack = [this]() noexcept { holds_.markStale(); };
  log_.setLogOptions(lo);
}

void Agent::start() {
  log_.start();
  auto accounts = accounts_;
  std::size_t dropped = log_.log().runSync([this, accounts](lmdb::Txn& txn) {
    // The holds: the debits of every ACTIVE and PREPARED branch.
    auto unfinished = log_.unfinished(txn);
    holds_.rebuild(unfinished);
    // An older agent kept them in the accounts too: no longer read, zeroed
    // so that nothing reads a stale copy.
    for (const auto& name : legacyHeld_) {
      if (auto a = ledger::readAccount(txn, accounts, name)) {
        a->held = 0;
        txn.put(accounts, name, encode(*a));
      }
    }
    // ACTIVE branches from before a restart never voted: nobody was
    // promised anything, so the agent rolls them back on its own (their
    // holds go).
    std::size_t n = 0;
    for (auto& rec : unfinished) {
      if (rec.state != BranchStatus::Active) continue;
      ledger::rollbackOps(txn, accounts, holds_, rec.xid, rec.ops);
      rec.reason = "agent restarted before the branch was prepared";
      log_.finish(txn, rec, BranchStatus::RolledBack, 0);
      ++n;
    }
    return n;
  });
  if (dropped > 0) KEEL_LOG_INFO("rolled back {} unprepared (ACTIVE) branches left by the previous run", dropped);
  if (!legacyHeld_.empty()) {
    KEEL_LOG_INFO("moved the holds of {} accounts from the ledger into memory (rebuilt from the branch records)",
                  legacyHeld_.size());
    legacyHeld_.clear();
  }
}

Agent::~Agent() = default;

std::optional<std::string> Agent::validate(const std::vector<Op>& ops) const {
  if (ops.size() > Limits::kMaxOpsPerInteraction) return "too many operations in one branch";
  // New work is refused while the log is nearly full, so that commits and
  // rollbacks of what is prepared still fit.
  if (auto full = log_.fullReason(opts_.name)) return full;
  for (const auto& op : ops) {
    if (!op.participant.empty() && op.participant != opts_.name) {
      return "operation addressed to participant " + op.participant + ", this agent is " + opts_.name;
    }
    if (auto bad = ledger::checkOp(op)) return bad;
  }
  return std::nullopt;
}

kj::Promise<PrepareResult> Agent::prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  return work(epoch, xid, std::move(ops), true);
}

kj::Promise<PrepareResult> Agent::execute(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  return work(epoch, xid, std::move(ops), false);
}

kj::Promise<PrepareResult> Agent::work(std::uint64_t epoch, Xid xid, std::vector<Op> ops, bool vote) {
  log_.fence(seqNode(xid.seq), epoch);
  KEEL_FAILPOINT("agent.before_execute");
  if (auto bad = validate(ops)) return PrepareResult{Vote::No, *bad, {}};
  if (auto late = log_.releasedReason(xid)) return PrepareResult{Vote::No, *late, {}};
  auto accounts = accounts_;
  return log_.log()
      .run([this, accounts, epoch, xid, vote, ops = std::move(ops)](lmdb::Txn& txn) -> PrepareResult {
        holds_.refresh([&]() { return log_.unfinished(txn); });
        log_.storeEpoch(txn, seqNode(xid.seq), epoch);
        auto existing = log_.read(txn, xid);
        BranchRecord rec;
        if (existing) {
          rec = std::move(*existing);
          if (rec.state == BranchStatus::Prepared) {
            // A repeated prepare (the coordinator retried): same answer. New
            // work cannot join a branch that has voted.
            if (vote) return PrepareResult{Vote::Yes, "", {}};
            return PrepareResult{Vote::No, "branch " + xid.str() + " is already prepared", {}};
          }
          if (rec.state != BranchStatus::Active) {
            return PrepareResult{Vote::No,
                                 std::string("branch ") + xid.str() + " already " + branchStatusName(rec.state) +
                                     (rec.tombstone ? " (rolled back before it arrived)" : ""),
                                 {}};
          }
        } else {
          // Released since the check above (a release job ran first).
          if (auto late = log_.releasedReason(xid)) return PrepareResult{Vote::No, *late, {}};
          rec.xid = xid;
          rec.createdUs = wallMicros();
        }
        rec.epoch = epoch;
        // Run the operations in their own nested transaction, so that a rule
        // violation halfway leaves none of their effects.
        lmdb::Txn opsTxn = log_.env().beginNested(txn);
        auto outcome = ledger::prepareOps(opsTxn, accounts, holds_, xid, ops);
        if (!outcome.ok) {
          opsTxn.abort();
          if (existing) {
            // An ACTIVE branch whose new work failed is rolled back whole.
            ledger::rollbackOps(txn, accounts, holds_, xid, rec.ops);
          }
          rec.reason = outcome.reason;
          log_.finish(txn, rec, BranchStatus::RolledBack, epoch);
          return PrepareResult{Vote::No, outcome.reason, {}};
        }
        opsTxn.commit();
        KEEL_FAILPOINT("agent.after_execute");
        for (auto& op : ops) rec.ops.push_back(op);
        bool readOnly = true;
        for (auto& op : rec.ops) readOnly = readOnly && op.kind == OpKind::ReadBalance;
        if (vote && readOnly) {
          // Nothing to commit: the branch is finished, nothing is written.
          if (existing) {
            rec.reason = "read-only";
            log_.finish(txn, rec, BranchStatus::Committed, epoch);
          }
          return PrepareResult{Vote::ReadOnly, "", std::move(outcome.results)};
        }
        if (vote) {
          rec.state = BranchStatus::Prepared;
          rec.preparedUs = wallMicros();
          KEEL_FAILPOINT("agent.before_prepared_durable");
        } else {
          rec.state = BranchStatus::Active;
        }
        log_.put(txn, rec);  // PREPARED: must be durable before the vote
        return PrepareResult{Vote::Yes, "", std::move(outcome.results)};
      })
      .then([vote](PrepareResult r) {
        // Must be durable before reply: we are past the group commit here.
        if (vote && r.vote == Vote::Yes) KEEL_FAILPOINT("agent.after_prepared_durable");
        return r;
      });
}

kj::Promise<std::vector<BranchOutcome>> Agent::commit(std::uint64_t epoch, std::vector<Xid> xids) {
  if (!xids.empty()) log_.fence(seqNode(xids[0].seq), epoch);
  auto accounts = accounts_;
  // Lazy group commit: the COMMITTED record is still durable before the
  // acknowledgement leaves, but it rides with the next group another job
  // starts (typically the next prepares) instead of forcing one of its own:
  // phase 2 is off the client's path, and at low load a prepare then never
  // waits behind an fsync that only a commit needed.
  return log_.log()
      .runLazy([this, accounts, epoch, xids = std::move(xids)](lmdb::Txn& txn) {
        holds_.refresh([&]() { return log_.unfinished(txn); });
        if (!xids.empty()) log_.storeEpoch(txn, seqNode(xids[0].seq), epoch);
        std::vector<BranchOutcome> out;
        out.reserve(xids.size());
        for (Xid xid : xids) {
          auto rec = log_.read(txn, xid);
          if (!rec) {
            out.push_back(log_.released(xid) ? BranchOutcome::Released : BranchOutcome::Unknown);
            continue;
          }
          switch (rec->state) {
            case BranchStatus::Committed:
              out.push_back(BranchOutcome::Committed);
              break;
            case BranchStatus::RolledBack:
              out.push_back(BranchOutcome::Conflict);
              break;
            case BranchStatus::Active:
              out.push_back(BranchOutcome::NotPrepared);
              break;
            case BranchStatus::Prepared:
              KEEL_FAILPOINT("agent.before_commit_durable");
              ledger::commitOps(txn, accounts, holds_, xid, rec->ops);
              log_.finish(txn, *rec, BranchStatus::Committed, epoch);
              out.push_back(BranchOutcome::Committed);
              break;
          }
        }
        return out;
      })
      .then([](std::vector<BranchOutcome> out) {
        KEEL_FAILPOINT("agent.after_commit_durable");
        return out;
      });
}

kj::Promise<std::vector<BranchOutcome>> Agent::rollback(std::uint64_t epoch, std::vector<Xid> xids) {
  if (!xids.empty()) log_.fence(seqNode(xids[0].seq), epoch);
  auto accounts = accounts_;
  bool breakRollback = debugBreak_ == "commit-on-rollback";
  return log_.log()
      .run([this, accounts, epoch, breakRollback, xids = std::move(xids)](lmdb::Txn& txn) {
        holds_.refresh([&]() { return log_.unfinished(txn); });
        if (!xids.empty()) log_.storeEpoch(txn, seqNode(xids[0].seq), epoch);
        std::vector<BranchOutcome> out;
        out.reserve(xids.size());
        for (Xid xid : xids) {
          auto rec = log_.read(txn, xid);
          if (!rec) {
            if (log_.released(xid)) {
              out.push_back(BranchOutcome::Released);
              continue;
            }
            // Never seen: leave a tombstone so a late prepare is refused.
            log_.tombstone(txn, xid, epoch);
            out.push_back(BranchOutcome::RolledBack);
            continue;
          }
          switch (rec->state) {
            case BranchStatus::Committed:
              out.push_back(BranchOutcome::Committed);  // one-phase: already committed
              break;
            case BranchStatus::RolledBack:
              out.push_back(BranchOutcome::RolledBack);
              break;
            case BranchStatus::Active:
            case BranchStatus::Prepared:
              if (breakRollback && rec->state == BranchStatus::Prepared) {
                // Deliberately wrong (test-only): commit what we were told to roll back.
                ledger::commitOps(txn, accounts, holds_, xid, rec->ops);
                log_.finish(txn, *rec, BranchStatus::Committed, epoch);
                out.push_back(BranchOutcome::RolledBack);
                break;
              }
              KEEL_FAILPOINT("agent.before_rollback_durable");
              ledger::rollbackOps(txn, accounts, holds_, xid, rec->ops);
              log_.finish(txn, *rec, BranchStatus::RolledBack, epoch);
              out.push_back(BranchOutcome::RolledBack);
              break;
          }
        }
        return out;
      })
      .then([](std::vector<BranchOutcome> out) {
        KEEL_FAILPOINT("agent.after_rollback_durable");
        return out;
      });
}

kj::Promise<OnePhaseResult> Agent::commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  log_.fence(seqNode(xid.seq), epoch);
  KEEL_FAILPOINT("agent.before_execute");
  if (auto bad = validate(ops)) return OnePhaseResult{BranchOutcome::RolledBack, *bad, {}};
  if (auto late = log_.releasedReason(xid)) return OnePhaseResult{BranchOutcome::Released, *late, {}};
  auto accounts = accounts_;
  return log_.log().run([this, accounts, epoch, xid, ops = std::move(ops)](lmdb::Txn& txn) -> OnePhaseResult {
    holds_.refresh([&]() { return log_.unfinished(txn); });
    log_.storeEpoch(txn, seqNode(xid.seq), epoch);
    auto existing = log_.read(txn, xid);
    if (existing) {
      // A retried one-phase call: answer what happened the first time.
      if (existing->state == BranchStatus::Committed) return OnePhaseResult{BranchOutcome::Committed, "", {}};
      if (existing->state == BranchStatus::RolledBack) {
        return OnePhaseResult{BranchOutcome::RolledBack,
                              existing->reason.empty() ? "branch already rolled back" : existing->reason, {}};
      }
      // ACTIVE or PREPARED under this XID: not ours to decide, leave it alone.
      return OnePhaseResult{BranchOutcome::Conflict, "branch " + xid.str() + " is in use", {}};
    }
    if (auto late = log_.releasedReason(xid)) return OnePhaseResult{BranchOutcome::Released, *late, {}};
    BranchRecord rec;
    rec.xid = xid;
    rec.epoch = epoch;
    rec.onePhase = true;
    rec.createdUs = wallMicros();
    lmdb::Txn opsTxn = log_.env().beginNested(txn);
    auto outcome = ledger::prepareOps(opsTxn, accounts, holds_, xid, ops);
    if (!outcome.ok) {
      opsTxn.abort();
      rec.reason = outcome.reason;
      log_.finish(txn, rec, BranchStatus::RolledBack, epoch);
      return OnePhaseResult{BranchOutcome::RolledBack, outcome.reason, {}};
    }
    if (outcome.readOnly) {
      opsTxn.abort();
      return OnePhaseResult{BranchOutcome::Committed, "", std::move(outcome.results)};
    }
    KEEL_FAILPOINT("agent.before_commit_durable");
    ledger::commitOps(opsTxn, accounts, holds_, xid, ops);
    opsTxn.commit();
    rec.ops = std::move(ops);
    rec.preparedUs = wallMicros();
    log_.finish(txn, rec, BranchStatus::Committed, epoch);  // durable with its effect
    return OnePhaseResult{BranchOutcome::Committed, "", std::move(outcome.results)};
  });
}

std::vector<AccountView> Agent::accounts() const {
  std::vector<AccountView> out;
  auto txn = log_.envConst().beginRead();
  // The holds as of this read: the unfinished branches it sees (durable
  // state only; the writer's table may be ahead of it). ledger.h.
  auto held = ledger::holdsOf(log_.unfinished(txn));
  txn.scan(accounts_, "", [&](std::string_view k, std::string_view v) {
    AccountView a{std::string(k), decodeAccount(v)};
    auto h = held.find(a.name);
    a.record.held = h == held.end() ? 0 : h->second;
    out.push_back(std::move(a));
    return true;
  });
  return out;
}

}  // namespace keel
