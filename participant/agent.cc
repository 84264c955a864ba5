#include "participant/agent.h"

#include "common/failpoint.h"
#include "common/log.h"
#include "participant/adapters/ledger.h"

namespace keel {

const char* voteName(Vote v) {
  switch (v) {
    case Vote::Yes: return "yes";
    case Vote::No: return "no";
    case Vote::ReadOnly: return "read-only";
  }
  return "?";
}

const char* outcomeName(BranchOutcome o) {
  switch (o) {
    case BranchOutcome::Committed: return "committed";
    case BranchOutcome::RolledBack: return "rolled-back";
    case BranchOutcome::Unknown: return "unknown";
    case BranchOutcome::NotPrepared: return "not-prepared";
    case BranchOutcome::Conflict: return "conflict";
  }
  return "?";
}

namespace {

lmdb::EnvOptions envOptions(const AgentOptions& o) {
  lmdb::EnvOptions e;
  e.mapSize = o.mapSizeBytes;
  return e;
}

std::optional<BranchRecord> readBranch(const lmdb::Txn& txn, MDB_dbi dbi, Xid xid) {
  auto v = txn.get(dbi, xidKey(xid));
  if (!v) return std::nullopt;
  return decodeBranch(*v);
}

// The branch log and its index of unfinished (ACTIVE/PREPARED) branches, so
// recovery and the in-doubt resolver never scan finished history.
struct BranchTables {
  MDB_dbi branches, unfinished;
  void put(lmdb::Txn& txn, const BranchRecord& rec) const {
    std::string key = xidKey(rec.xid);
    txn.put(branches, key, encode(rec));
    if (rec.state == BranchStatus::Active || rec.state == BranchStatus::Prepared) {
      txn.put(unfinished, key, "");
    } else {
      txn.del(unfinished, key);
    }
  }
};

// Final state of a branch, written in the same transaction as its effect on
// the ledger.
void finishBranch(lmdb::Txn& txn, BranchTables t, BranchRecord& rec, BranchStatus state, std::uint64_t epoch) {
  rec.state = state;
  rec.epoch = std::max(rec.epoch, epoch);
  rec.finishedUs = wallMicros();
  t.put(txn, rec);
}

std::string epochKey(std::uint16_t node) { return "epoch/" + std::to_string(node); }

// Remembers the newest epoch of a coordinator node durably (with the job).
void storeEpoch(lmdb::Txn& txn, MDB_dbi meta, std::uint16_t node, std::uint64_t epoch) {
  auto v = txn.get(meta, epochKey(node));
  if (!v || keyU64(*v) < epoch) txn.put(meta, epochKey(node), u64Key(epoch));
}

}  // namespace

Agent::Agent(AgentOptions opts) : opts_(std::move(opts)), env_(opts_.dataDir, envOptions(opts_)) {
  accounts_ = env_.openDb("accounts");
  branches_ = env_.openDb("branches");
  meta_ = env_.openDb("meta");
  unfinished_ = env_.openDb("unfinished");
  // Check every stored record decodes before serving: a damaged branch log
  // must stop the agent, not be skipped.
  {
    auto txn = env_.beginRead();
    txn.scan(branches_, "", [](std::string_view k, std::string_view v) {
      try {
        decodeBranch(v);
      } catch (const CorruptRecord& e) {
        throw CorruptRecord("branch " + keyXid(k).str() + ": " + e.what());
      }
      return true;
    });
    txn.scan(accounts_, "", [](std::string_view k, std::string_view v) {
      try {
        decodeAccount(v);
      } catch (const CorruptRecord& e) {
        throw CorruptRecord("account " + std::string(k) + ": " + e.what());
      }
      return true;
    });
  }
  {
    auto txn = env_.beginRead();
    txn.scan(meta_, "epoch/", [&](std::string_view k, std::string_view v) {
      if (k.rfind("epoch/", 0) != 0) return false;
      epochs_[std::uint16_t(std::stoul(std::string(k.substr(6))))] = keyU64(v);
      return true;
    });
  }
  log_ = std::make_unique<GroupCommitLog>(env_);
  // ACTIVE branches from before a restart never voted: nobody was promised
  // anything, so the agent rolls them back on its own (their holds go).
  auto accounts = accounts_;
  BranchTables tables{branches_, unfinished_};
  auto meta = meta_;
  std::size_t dropped = log_->runSync([=](lmdb::Txn& txn) {
    if (!txn.get(meta, "unfinished_index")) {
      // A branch log from before the index existed: build it once.
      std::vector<BranchRecord> all;
      txn.scan(tables.branches, "", [&](std::string_view, std::string_view v) {
        all.push_back(decodeBranch(v));
        return true;
      });
      for (auto& rec : all) tables.put(txn, rec);
      txn.put(meta, "unfinished_index", "1");
    }
    std::vector<BranchRecord> active;
    txn.scan(tables.unfinished, "", [&](std::string_view k, std::string_view) {
      auto v = txn.get(tables.branches, k);
      if (v) {
        auto rec = decodeBranch(*v);
        if (rec.state == BranchStatus::Active) active.push_back(std::move(rec));
      }
      return true;
    });
    for (auto& rec : active) {
      ledger::rollbackOps(txn, accounts, rec.xid, rec.ops);
      rec.reason = "agent restarted before the branch was prepared";
      finishBranch(txn, tables, rec, BranchStatus::RolledBack, 0);
    }
    return active.size();
  });
  if (dropped > 0) KEEL_LOG_INFO("rolled back {} unprepared (ACTIVE) branches left by the previous run", dropped);
}

Agent::~Agent() { log_.reset(); }

double Agent::fill() const {
  MDB_envinfo info;
  MDB_stat st;
  mdb_env_info(env_.raw(), &info);
  mdb_env_stat(env_.raw(), &st);
  return double(info.me_last_pgno + 1) * st.ms_psize / double(info.me_mapsize);
}

void Agent::fence(std::uint16_t node, std::uint64_t epoch) {
  auto& newest = epochs_[node];
  if (epoch < newest) {
    throw StaleEpoch("stale epoch " + std::to_string(epoch) + " of coordinator node " + std::to_string(node) +
                     ": this agent has seen epoch " + std::to_string(newest));
  }
  newest = epoch;
}

std::uint64_t Agent::newestEpoch(std::uint16_t node) const {
  auto it = epochs_.find(node);
  return it == epochs_.end() ? 0 : it->second;
}

std::optional<std::string> Agent::validate(const std::vector<Op>& ops) const {
  if (ops.size() > Limits::kMaxOpsPerInteraction) return "too many operations in one branch";
  // New work is refused while the log is nearly full, so that commits and
  // rollbacks of what is prepared still fit.
  if (double f = fill(); f >= kRefuseNewAtFill) {
    return "agent " + opts_.name + " storage is " + std::to_string(int(f * 100)) + "% full (map_size_mb = " +
           std::to_string(env_.mapSize() >> 20) + "): new work refused";
  }
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
  fence(seqNode(xid.seq), epoch);
  KEEL_FAILPOINT("agent.before_execute");
  if (auto bad = validate(ops)) return PrepareResult{Vote::No, *bad, {}};
  auto accounts = accounts_;
  auto branches = branches_;
  auto meta = meta_;
  BranchTables tables{branches_, unfinished_};
  auto* env = &env_;
  return log_
      ->run([=, ops = std::move(ops)](lmdb::Txn& txn) -> PrepareResult {
        storeEpoch(txn, meta, seqNode(xid.seq), epoch);
        auto existing = readBranch(txn, branches, xid);
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
          rec.xid = xid;
          rec.createdUs = wallMicros();
        }
        rec.epoch = epoch;
        // Run the operations in their own nested transaction, so that a rule
        // violation halfway leaves none of their effects.
        lmdb::Txn opsTxn = env->beginNested(txn);
        auto outcome = ledger::prepareOps(opsTxn, accounts, xid, ops);
        if (!outcome.ok) {
          opsTxn.abort();
          if (existing) {
            // An ACTIVE branch whose new work failed is rolled back whole.
            ledger::rollbackOps(txn, accounts, xid, rec.ops);
          }
          rec.reason = outcome.reason;
          finishBranch(txn, tables, rec, BranchStatus::RolledBack, epoch);
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
            txn.del(branches, xidKey(xid));
            txn.del(tables.unfinished, xidKey(xid));
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
        tables.put(txn, rec);  // PREPARED: must be durable before the vote
        return PrepareResult{Vote::Yes, "", std::move(outcome.results)};
      })
      .then([vote](PrepareResult r) {
        // Must be durable before reply: we are past the group commit here.
        if (vote && r.vote == Vote::Yes) KEEL_FAILPOINT("agent.after_prepared_durable");
        return r;
      });
}

kj::Promise<std::vector<BranchOutcome>> Agent::commit(std::uint64_t epoch, std::vector<Xid> xids) {
  if (!xids.empty()) fence(seqNode(xids[0].seq), epoch);
  auto accounts = accounts_;
  auto branches = branches_;
  auto meta = meta_;
  BranchTables tables{branches_, unfinished_};
  return log_
      ->run([=, xids = std::move(xids)](lmdb::Txn& txn) {
        if (!xids.empty()) storeEpoch(txn, meta, seqNode(xids[0].seq), epoch);
        std::vector<BranchOutcome> out;
        out.reserve(xids.size());
        for (Xid xid : xids) {
          auto rec = readBranch(txn, branches, xid);
          if (!rec) {
            out.push_back(BranchOutcome::Unknown);
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
              ledger::commitOps(txn, accounts, xid, rec->ops);
              finishBranch(txn, tables, *rec, BranchStatus::Committed, epoch);
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
  if (!xids.empty()) fence(seqNode(xids[0].seq), epoch);
  auto accounts = accounts_;
  auto branches = branches_;
  auto meta = meta_;
  BranchTables tables{branches_, unfinished_};
  bool breakRollback = debugBreak_ == "commit-on-rollback";
  return log_
      ->run([=, xids = std::move(xids)](lmdb::Txn& txn) {
        if (!xids.empty()) storeEpoch(txn, meta, seqNode(xids[0].seq), epoch);
        std::vector<BranchOutcome> out;
        out.reserve(xids.size());
        for (Xid xid : xids) {
          auto rec = readBranch(txn, branches, xid);
          if (!rec) {
            // Never seen: leave a tombstone so a late prepare is refused.
            BranchRecord t;
            t.xid = xid;
            t.state = BranchStatus::RolledBack;
            t.tombstone = true;
            t.epoch = epoch;
            t.createdUs = t.finishedUs = wallMicros();
            t.reason = "rollback arrived before prepare";
            txn.put(branches, xidKey(xid), encode(t));
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
                ledger::commitOps(txn, accounts, xid, rec->ops);
                finishBranch(txn, tables, *rec, BranchStatus::Committed, epoch);
                out.push_back(BranchOutcome::RolledBack);
                break;
              }
              KEEL_FAILPOINT("agent.before_rollback_durable");
              ledger::rollbackOps(txn, accounts, xid, rec->ops);
              finishBranch(txn, tables, *rec, BranchStatus::RolledBack, epoch);
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
  fence(seqNode(xid.seq), epoch);
  KEEL_FAILPOINT("agent.before_execute");
  if (auto bad = validate(ops)) return OnePhaseResult{BranchOutcome::RolledBack, *bad, {}};
  auto accounts = accounts_;
  auto branches = branches_;
  auto meta = meta_;
  auto* env = &env_;
  return log_->run([=, ops = std::move(ops)](lmdb::Txn& txn) -> OnePhaseResult {
    storeEpoch(txn, meta, seqNode(xid.seq), epoch);
    auto existing = readBranch(txn, branches, xid);
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
    BranchRecord rec;
    rec.xid = xid;
    rec.epoch = epoch;
    rec.onePhase = true;
    rec.createdUs = wallMicros();
    lmdb::Txn opsTxn = env->beginNested(txn);
    auto outcome = ledger::prepareOps(opsTxn, accounts, xid, ops);
    if (!outcome.ok) {
      opsTxn.abort();
      rec.state = BranchStatus::RolledBack;
      rec.reason = outcome.reason;
      rec.finishedUs = wallMicros();
      txn.put(branches, xidKey(xid), encode(rec));
      return OnePhaseResult{BranchOutcome::RolledBack, outcome.reason, {}};
    }
    if (outcome.readOnly) {
      opsTxn.abort();
      return OnePhaseResult{BranchOutcome::Committed, "", std::move(outcome.results)};
    }
    KEEL_FAILPOINT("agent.before_commit_durable");
    ledger::commitOps(opsTxn, accounts, xid, ops);
    opsTxn.commit();
    rec.ops = std::move(ops);
    rec.state = BranchStatus::Committed;
    rec.preparedUs = rec.finishedUs = wallMicros();
    txn.put(branches, xidKey(xid), encode(rec));
    return OnePhaseResult{BranchOutcome::Committed, "", std::move(outcome.results)};
  });
}

std::vector<BranchRecord> Agent::unfinishedBranches() const {
  std::vector<BranchRecord> out;
  auto txn = env_.beginRead();
  txn.scan(unfinished_, "", [&](std::string_view k, std::string_view) {
    if (auto v = txn.get(branches_, k)) out.push_back(decodeBranch(*v));
    return true;
  });
  return out;
}

kj::Promise<Agent::ForgetResult> Agent::forget(std::uint64_t epoch, std::vector<Xid> xids) {
  // epoch 0: an operator (keelctl forget); only finished branches go anyway.
  if (epoch != 0 && !xids.empty()) fence(seqNode(xids[0].seq), epoch);
  auto branches = branches_;
  return log_->run([=, xids = std::move(xids)](lmdb::Txn& txn) {
    ForgetResult r;
    for (Xid xid : xids) {
      auto rec = readBranch(txn, branches, xid);
      if (!rec) continue;  // already forgotten
      if (rec->state == BranchStatus::Active || rec->state == BranchStatus::Prepared) {
        r.refused.push_back(xid);
        continue;
      }
      txn.del(branches, xidKey(xid));
      ++r.forgotten;
    }
    return r;
  });
}

std::vector<std::optional<BranchRecord>> Agent::branches(const std::vector<Xid>& xids) const {
  std::vector<std::optional<BranchRecord>> out;
  auto txn = env_.beginRead();
  for (Xid x : xids) out.push_back(readBranch(txn, branches_, x));
  return out;
}

std::vector<BranchRecord> Agent::listBranches(Xid after, std::size_t limit, bool& more) const {
  std::vector<BranchRecord> out;
  more = false;
  auto txn = env_.beginRead();
  std::string from = (after.seq == 0 && after.branch == 0) ? "" : xidKey(after);
  txn.scan(branches_, from, [&](std::string_view k, std::string_view v) {
    if (!from.empty() && k == from) return true;  // strictly after
    if (out.size() == limit) {
      more = true;
      return false;
    }
    out.push_back(decodeBranch(v));
    return true;
  });
  return out;
}

std::vector<AccountView> Agent::accounts() const {
  std::vector<AccountView> out;
  auto txn = env_.beginRead();
  txn.scan(accounts_, "", [&](std::string_view k, std::string_view v) {
    out.push_back(AccountView{std::string(k), decodeAccount(v)});
    return true;
  });
  return out;
}

Agent::Counts Agent::counts() const {
  Counts c;
  auto txn = env_.beginRead();
  txn.scan(branches_, "", [&](std::string_view, std::string_view v) {
    switch (decodeBranch(v).state) {
      case BranchStatus::Active: ++c.active; break;
      case BranchStatus::Prepared: ++c.prepared; break;
      case BranchStatus::Committed: ++c.committed; break;
      case BranchStatus::RolledBack: ++c.rolledBack; break;
    }
    return true;
  });
  return c;
}

}  // namespace keel
