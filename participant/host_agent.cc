#include "participant/host_agent.h"

#include <algorithm>

#include <kj/debug.h>

#include "common/failpoint.h"
#include "common/log.h"

namespace keel {

namespace {

std::uint8_t step(HostStep s) { return std::uint8_t(s); }

// A call the host's state keeps from finishing now. FAILED, not
// DISCONNECTED: the agent answered, so the coordinator keeps its
// connection and retries (a DISCONNECTED would make it reconnect).
kj::Exception hostPending(const std::string& what) {
  return KJ_EXCEPTION(FAILED, kj::str(what.c_str()));
}

}  // namespace

HostAgent::HostAgent(kj::AsyncIoProvider& io, HostAgentOptions opts)
    : io_(io), opts_(std::move(opts)), log_(opts_.dataDir, opts_.mapSizeBytes, opts_.redo), http_(io, opts_.host), tasks_(*this) {
  log_.check();
}

HostAgent::~HostAgent() noexcept = default;

void HostAgent::taskFailed(kj::Exception&& e) {
  KEEL_LOG_ERROR("host driver: {}", e.getDescription().cStr());
}

void HostAgent::start() {
  log_.start();
  // What an earlier run left: tries whose answers were never recorded are
  // cancelled (the branch never voted, so nobody was promised anything);
  // decided branches go on being confirmed or cancelled.
  struct Resume {
    Xid xid;
    bool confirm;
    std::vector<Op> ops;
  };
  auto resume = log_.log().runSync([this](lmdb::Txn& txn) {
    std::vector<Resume> out;
    for (auto& rec : log_.unfinished(txn)) {
      if (rec.state == BranchStatus::Active) {
        if (rec.hostStep != step(HostStep::Cancelling)) {
          rec.hostStep = step(HostStep::Cancelling);
          rec.reason = "agent restarted before the branch was prepared";
          log_.put(txn, rec);
        }
        out.push_back({rec.xid, false, rec.ops});
      } else if (rec.hostStep == step(HostStep::Confirming) || rec.hostStep == step(HostStep::Cancelling)) {
        out.push_back({rec.xid, rec.hostStep == step(HostStep::Confirming), rec.ops});
      }
    }
    return out;
  });
  std::size_t confirms = 0;
  for (auto& r : resume) {
    confirms += r.confirm ? 1 : 0;
    enqueue(r.xid, r.confirm, std::move(r.ops));
  }
  if (!resume.empty()) {
    KEEL_LOG_INFO("resuming {} branch(es) with the host {}: {} to confirm, {} to cancel", resume.size(), http_.url(),
                  confirms, resume.size() - confirms);
  }
}

// ------------------------------------------------------------ checks and bodies

std::optional<std::string> HostAgent::validate(const std::vector<Op>& ops) const {
  if (ops.empty()) return "a host branch needs at least one operation";
  if (ops.size() > kMaxHostOpsPerBranch) {
    return "too many operations in one host branch (" + std::to_string(ops.size()) + "; at most " +
           std::to_string(kMaxHostOpsPerBranch) + ", each is a call to the host)";
  }
  if (auto full = log_.fullReason(opts_.name)) return full;
  std::string declared;
  for (auto& [n, _] : opts_.host.operations) declared += (declared.empty() ? "" : ", ") + n;
  for (const auto& op : ops) {
    if (!op.participant.empty() && op.participant != opts_.name) {
      return "operation addressed to participant " + op.participant + ", this agent is " + opts_.name;
    }
    if (op.kind != OpKind::Debit && op.kind != OpKind::Credit) {
      return std::string("operation ") + opKindName(op.kind) + " is not one a host adapter maps (it maps " +
             knownHostOperations() + ")";
    }
    const char* name = op.kind == OpKind::Debit ? "debit" : "credit";
    if (opts_.host.operations.count(name) == 0) {
      return std::string("operation ") + name + " is not declared by agent " + opts_.name + "'s [host.operations] (" +
             (declared.empty() ? "none declared" : "declared: " + declared) + ")";
    }
    if (op.account.empty() || op.account.size() > Limits::kMaxAccountName) {
      return "account name must be 1.." + std::to_string(Limits::kMaxAccountName) + " bytes";
    }
    if (op.amount <= 0) return "amount must be positive, got " + std::to_string(op.amount);
  }
  return std::nullopt;
}

const HostOperation& HostAgent::operation(const Op& op) const {
  return opts_.host.operations.at(op.kind == OpKind::Debit ? "debit" : "credit");
}

std::string HostAgent::body(Xid xid, std::size_t index, const Op* op) const {
  std::string x = xid.str();
  std::string b = "{\"key\":\"" + x + "/" + std::to_string(index) + "\",\"xid\":\"" + x +
                  "\",\"index\":" + std::to_string(index);
  if (op != nullptr) {
    b += ",\"account\":\"" + jsonEscape(op->account) + "\",\"amount\":" + std::to_string(op->amount);
  }
  return b + "}";
}

// ------------------------------------------------------------ prepare

kj::Promise<PrepareResult> HostAgent::prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  return prepareBranch(epoch, xid, std::move(ops), false);
}

kj::Promise<PrepareResult> HostAgent::execute(std::uint64_t epoch, Xid xid, std::vector<Op>) {
  log_.fence(seqNode(xid.seq), epoch);
  return PrepareResult{Vote::No,
                       "interactive interactions are not supported by adapter host: send the branch's operations "
                       "in one submit (docs/hosts.md)",
                       {}};
}

kj::Promise<PrepareResult> HostAgent::prepareBranch(std::uint64_t epoch, Xid xid, std::vector<Op> ops,
                                                    bool onePhase) {
  log_.fence(seqNode(xid.seq), epoch);
  KEEL_FAILPOINT("agent.before_execute");
  if (auto bad = validate(ops)) return PrepareResult{Vote::No, *bad, {}};
  if (hostDown_) {
    // A host known down: vote NO at once rather than after try_budget_ms,
    // except for one prepare per retry_max_ms (when no driver loop is
    // probing already), whose tries find out whether it is back.
    Micros now = monoMicros();
    if (probing_ || now - lastTryProbeUs_ < Micros(opts_.host.retryMaxMs) * 1000) {
      return PrepareResult{Vote::No, *unavailable(), {}};
    }
    lastTryProbeUs_ = now;
  }
  if (trying_.count(xid) != 0) {
    // The same prepare again while the first is still trying: a fault, so
    // the coordinator rolls the branch back (never a second vote).
    return kj::Promise<PrepareResult>(hostPending("branch " + xid.str() + " is being prepared already"));
  }
  struct Intent {
    std::optional<PrepareResult> answer;  // set: answered from the existing record
  };
  return log_.log()
      .run([this, epoch, xid, onePhase, ops](lmdb::Txn& txn) -> Intent {
        log_.storeEpoch(txn, seqNode(xid.seq), epoch);
        if (auto existing = log_.read(txn, xid)) {
          if (existing->state == BranchStatus::Prepared && existing->hostStep == step(HostStep::Tried) && !onePhase) {
            return Intent{PrepareResult{Vote::Yes, "", {}}};  // a repeated prepare: same answer
          }
          return Intent{PrepareResult{
              Vote::No,
              "branch " + xid.str() + " already " +
                  (existing->tombstone ? std::string("rolled back (before it arrived)")
                                       : std::string(branchStatusName(existing->state)) +
                                             (existing->hostStep != 0 ? std::string(" (") +
                                                                            hostStepName(existing->hostStep) + ")"
                                                                      : std::string())),
              {}}};
        }
        if (auto late = log_.releasedReason(xid)) {
          return Intent{PrepareResult{Vote::No, *late, {}}};
        }
        BranchRecord rec;
        rec.xid = xid;
        rec.epoch = epoch;
        rec.onePhase = onePhase;
        rec.createdUs = wallMicros();
        rec.ops = ops;
        rec.state = BranchStatus::Active;
        rec.hostStep = step(HostStep::Trying);
        log_.put(txn, rec);  // the intent: durable before the first try leaves
        return Intent{};
      })
      .then([this, epoch, xid, onePhase, ops = std::move(ops)](Intent in) mutable -> kj::Promise<PrepareResult> {
        if (in.answer) return kj::mv(*in.answer);
        KEEL_FAILPOINT("host.after_intent");
        trying_.insert(xid);
        return tryAll(xid, ops).then(
            [this, epoch, xid, onePhase, ops](TryOutcome t) mutable {
              trying_.erase(xid);
              KEEL_FAILPOINT("host.after_tries");
              return afterTries(epoch, xid, std::move(ops), onePhase, std::move(t));
            },
            [this, xid](kj::Exception&& e) -> kj::Promise<PrepareResult> {
              trying_.erase(xid);
              return kj::mv(e);
            });
      });
}

kj::Promise<HostAgent::TryOutcome> HostAgent::tryAll(Xid xid, std::vector<Op> ops) {
  Micros deadline = monoMicros() + Micros(opts_.host.tryBudgetMs) * 1000;
  kj::Vector<kj::Promise<HostAnswer>> calls;
  for (std::size_t i = 0; i < ops.size(); ++i) calls.add(tryOne(xid, i, ops[i], deadline, 0));
  return kj::joinPromises(calls.releaseAsArray()).then([this](kj::Array<HostAnswer> answers) {
    TryOutcome t;
    t.allTried = true;
    for (std::size_t i = 0; i < answers.size(); ++i) {
      auto& a = answers[i];
      t.refs.push_back(a.ref);
      if (a.kind == HostAnswer::Kind::Tried) {
        t.needCancel = true;  // cancelled again if another op failed
        continue;
      }
      t.allTried = false;
      // A fault or a breach may hide a try the host applied: cancel it.
      if (a.kind == HostAnswer::Kind::Fault || a.kind == HostAnswer::Kind::Breach) t.needCancel = true;
      if (t.reason.empty() || a.kind == HostAnswer::Kind::Refused) {
        std::string why;
        switch (a.kind) {
          case HostAnswer::Kind::Refused: why = "host refused: " + a.reason; break;
          case HostAnswer::Kind::Cancelled: why = "host had cancelled it before the try arrived"; break;
          case HostAnswer::Kind::Fault:
            why = "host " + http_.url() + " did not answer the try within try_budget_ms (" +
                  std::to_string(opts_.host.tryBudgetMs) + "): " + a.reason;
            break;
          default: why = "host broke the contract: " + a.reason; break;
        }
        if (t.reason.empty() || a.kind == HostAnswer::Kind::Refused) t.reason = why;
      }
    }
    return t;
  });
}

kj::Promise<HostAnswer> HostAgent::tryOne(Xid xid, std::size_t index, Op op, Micros deadlineUs,
                                          std::uint32_t attempt) {
  std::string path = operation(op).tryPath;
  return http_.post(HostCall::Try, path, body(xid, index, &op))
      .then([this, xid, index, op = kj::mv(op), deadlineUs, attempt](HostAnswer a) mutable -> kj::Promise<HostAnswer> {
        if (a.kind != HostAnswer::Kind::Fault) {
          hostAnswered();
          return kj::mv(a);
        }
        bool wasDown = hostDown_;
        noteFault(a);
        auto wait = backoff(attempt + 1);
        // The host was known down before this answer (another call failed
        // too), or the budget is spent: give up; the branch votes NO and this
        // try is cancelled. A first fault of a host thought up is retried.
        if (wasDown || monoMicros() + wait / kj::MICROSECONDS >= deadlineUs) return kj::mv(a);
        return io_.getTimer().afterDelay(wait).then([this, xid, index, op = kj::mv(op), deadlineUs, attempt]() mutable {
          return tryOne(xid, index, kj::mv(op), deadlineUs, attempt + 1);
        });
      });
}

kj::Promise<PrepareResult> HostAgent::afterTries(std::uint64_t epoch, Xid xid, std::vector<Op> ops, bool onePhase,
                                                 TryOutcome t) {
  enum class Next { Answer, Cancel, Confirm };
  struct Step {
    PrepareResult r;
    Next next = Next::Answer;
  };
  return log_.log()
      .run([this, epoch, xid, onePhase, t](lmdb::Txn& txn) -> Step {
        auto rec = log_.read(txn, xid);
        if (!rec || rec->state != BranchStatus::Active || rec->hostStep != step(HostStep::Trying)) {
          // A rollback overtook the tries: it cancels them; no vote but NO.
          return Step{PrepareResult{Vote::No, "branch " + xid.str() + " was rolled back while its tries ran", {}}};
        }
        rec->hostRefs = t.refs;
        if (t.allTried) {
          rec->state = BranchStatus::Prepared;
          rec->preparedUs = wallMicros();
          // One-phase: the agent decides commit itself, durably, before
          // the first confirm; two-phase: PREPARED before the vote leaves.
          rec->hostStep = step(onePhase ? HostStep::Confirming : HostStep::Tried);
          log_.put(txn, *rec);
          return Step{PrepareResult{Vote::Yes, "", {}}, onePhase ? Next::Confirm : Next::Answer};
        }
        rec->reason = t.reason;
        if (!t.needCancel) {  // nothing reached the host that it kept
          log_.finish(txn, *rec, BranchStatus::RolledBack, epoch);
          return Step{PrepareResult{Vote::No, t.reason, {}}};
        }
        rec->hostStep = step(HostStep::Cancelling);  // durable before NO and before the first cancel
        log_.put(txn, *rec);
        return Step{PrepareResult{Vote::No, t.reason, {}}, Next::Cancel};
      })
      .then([this, xid, ops = std::move(ops)](Step s) mutable {
        if (s.next != Next::Answer) enqueue(xid, s.next == Next::Confirm, std::move(ops));
        if (s.r.vote == Vote::Yes) KEEL_FAILPOINT("agent.after_prepared_durable");
        return kj::mv(s.r);
      });
}

// ------------------------------------------------------------ phase 2

kj::Promise<std::vector<BranchOutcome>> HostAgent::commit(std::uint64_t epoch, std::vector<Xid> xids) {
  if (!xids.empty()) log_.fence(seqNode(xids[0].seq), epoch);
  struct Item {
    std::optional<BranchOutcome> now;  // answered from the record
    std::vector<Op> ops;               // else: driven
    bool confirm = true;               // false: its cancels had begun (its end will say so)
  };
  return log_.log()
      .run([this, epoch, xids](lmdb::Txn& txn) {
        if (!xids.empty()) log_.storeEpoch(txn, seqNode(xids[0].seq), epoch);
        std::vector<Item> out;
        for (Xid xid : xids) {
          auto rec = log_.read(txn, xid);
          if (!rec) {
            out.push_back({log_.released(xid) ? BranchOutcome::Released : BranchOutcome::Unknown, {}});
            continue;
          }
          switch (rec->state) {
            case BranchStatus::Committed: out.push_back({BranchOutcome::Committed, {}}); continue;
            case BranchStatus::RolledBack: out.push_back({BranchOutcome::Conflict, {}}); continue;
            case BranchStatus::Active: out.push_back({BranchOutcome::NotPrepared, {}}); continue;
            case BranchStatus::Prepared: break;
          }
          if (rec->hostStep == step(HostStep::Tried)) {
            bool anyConfirm = std::any_of(rec->ops.begin(), rec->ops.end(),
                                          [this](const Op& op) { return !operation(op).confirmPath.empty(); });
            if (!anyConfirm) {  // the host posted at try: nothing to call
              log_.finish(txn, *rec, BranchStatus::Committed, epoch);
              out.push_back({BranchOutcome::Committed, {}});
              continue;
            }
            KEEL_FAILPOINT("agent.before_commit_durable");
            rec->hostStep = step(HostStep::Confirming);  // durable before the first confirm
            log_.put(txn, *rec);
          }
          out.push_back({std::nullopt, rec->ops, rec->hostStep != step(HostStep::Cancelling)});
        }
        return out;
      })
      .then([this, xids](std::vector<Item> items) {
        kj::Vector<kj::Promise<BranchOutcome>> answers;
        for (std::size_t i = 0; i < items.size(); ++i) {
          if (items[i].now) {
            answers.add(*items[i].now);
            continue;
          }
          enqueue(xids[i], items[i].confirm, std::move(items[i].ops));
          answers.add(waitFor(xids[i]).then([](BranchOutcome end) {
            // A branch that ended rolled back although commit was decided
            // (the host had cancelled it): the coordinator reports it heuristic.
            return end == BranchOutcome::RolledBack ? BranchOutcome::Conflict : end;
          }));
        }
        return kj::joinPromises(answers.releaseAsArray());
      })
      .then([](kj::Array<BranchOutcome> a) {
        KEEL_FAILPOINT("agent.after_commit_durable");
        return std::vector<BranchOutcome>(a.begin(), a.end());
      });
}

kj::Promise<std::vector<BranchOutcome>> HostAgent::rollback(std::uint64_t epoch, std::vector<Xid> xids) {
  if (!xids.empty()) log_.fence(seqNode(xids[0].seq), epoch);
  struct Item {
    std::optional<BranchOutcome> now;
    std::vector<Op> ops;
    bool confirm = false;  // a one-phase commit being confirmed: not cancelled
  };
  return log_.log()
      .run([this, epoch, xids](lmdb::Txn& txn) {
        if (!xids.empty()) log_.storeEpoch(txn, seqNode(xids[0].seq), epoch);
        std::vector<Item> out;
        for (Xid xid : xids) {
          auto rec = log_.read(txn, xid);
          if (!rec && log_.released(xid)) {
            out.push_back({BranchOutcome::Released, {}});
            continue;
          }
          if (!rec) {
            // Never seen: no try left this agent for it (the intent is
            // durable before any try), so a tombstone is all it needs.
            log_.tombstone(txn, xid, epoch);
            out.push_back({BranchOutcome::RolledBack, {}});
            continue;
          }
          if (rec->state == BranchStatus::Committed) {
            out.push_back({BranchOutcome::Committed, {}});
            continue;
          }
          if (rec->state == BranchStatus::RolledBack) {
            out.push_back({BranchOutcome::RolledBack, {}});
            continue;
          }
          if (rec->hostStep == step(HostStep::Confirming)) {
            // Its confirms have started (a one-phase branch the agent
            // decided to commit, whose answer the coordinator never heard;
            // or an operator's late override): the host may have confirmed
            // some already, so they go on, and the answer is the branch's
            // end as it is (committed: the coordinator tells an override
            // it came too late, as a heuristic outcome).
            out.push_back({std::nullopt, rec->ops, true});
            continue;
          }
          if (rec->hostStep != step(HostStep::Cancelling)) {
            KEEL_FAILPOINT("agent.before_rollback_durable");
            rec->hostStep = step(HostStep::Cancelling);  // durable before the first cancel
            if (rec->reason.empty()) rec->reason = "rolled back by the coordinator";
            log_.put(txn, *rec);
          }
          out.push_back({std::nullopt, rec->ops});
        }
        return out;
      })
      .then([this, xids](std::vector<Item> items) {
        kj::Vector<kj::Promise<BranchOutcome>> answers;
        for (std::size_t i = 0; i < items.size(); ++i) {
          if (items[i].now) {
            answers.add(*items[i].now);
            continue;
          }
          enqueue(xids[i], items[i].confirm, std::move(items[i].ops));
          answers.add(waitFor(xids[i]));
        }
        return kj::joinPromises(answers.releaseAsArray());
      })
      .then([](kj::Array<BranchOutcome> a) {
        KEEL_FAILPOINT("agent.after_rollback_durable");
        return std::vector<BranchOutcome>(a.begin(), a.end());
      });
}

kj::Promise<OnePhaseResult> HostAgent::commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  // A retried one-phase call is answered from the record.
  auto existing = log_.branches({xid});
  if (!existing.empty() && existing[0]) {
    auto& rec = *existing[0];
    if (rec.state == BranchStatus::Committed || rec.hostStep == step(HostStep::Confirming)) {
      return OnePhaseResult{BranchOutcome::Committed, "", {}};
    }
    if (rec.state == BranchStatus::RolledBack || rec.hostStep == step(HostStep::Cancelling)) {
      return OnePhaseResult{BranchOutcome::RolledBack, rec.reason.empty() ? "branch already rolled back" : rec.reason,
                            {}};
    }
    return OnePhaseResult{BranchOutcome::Conflict, "branch " + xid.str() + " is in use", {}};
  }
  return prepareBranch(epoch, xid, std::move(ops), true).then([this, xid](PrepareResult r) -> kj::Promise<OnePhaseResult> {
    if (r.vote != Vote::Yes) return OnePhaseResult{BranchOutcome::RolledBack, r.reason, {}};
    // The commit decision is the agent's and is durable (confirming): the
    // driver confirms until the host acknowledges, whatever happens to this
    // call, so "committed" is true once the decision is recorded. Waiting
    // for the host only keeps the answer from outrunning it when it is up.
    return waitFor(xid).then(
        [](BranchOutcome end) {
          if (end == BranchOutcome::RolledBack) {
            return OnePhaseResult{BranchOutcome::Conflict, "the host had cancelled the try it was asked to confirm", {}};
          }
          return OnePhaseResult{end, "", {}};
        },
        [](kj::Exception&&) { return OnePhaseResult{BranchOutcome::Committed, "", {}}; });
  });
}

// ------------------------------------------------------------ the driver

void HostAgent::enqueue(Xid xid, bool confirm, std::vector<Op> ops) {
  if (pending_.count(xid) != 0) return;
  Pending p;
  p.confirm = confirm;
  p.done.assign(ops.size(), false);
  p.ends.assign(ops.size(), HostAnswer::Kind::Fault);
  p.ops = std::move(ops);
  pending_.emplace(xid, std::move(p));
  tasks_.add(drive(xid));
}

kj::Promise<BranchOutcome> HostAgent::waitFor(Xid xid) {
  auto it = pending_.find(xid);
  if (it == pending_.end()) {
    // Settled between the log job and here: read the end from the record.
    auto rec = log_.branches({xid});
    if (!rec.empty() && rec[0] && rec[0]->state == BranchStatus::Committed) return BranchOutcome::Committed;
    if (!rec.empty() && rec[0] && rec[0]->state == BranchStatus::RolledBack) return BranchOutcome::RolledBack;
    return kj::Promise<BranchOutcome>(hostPending("branch " + xid.str() + " has no confirm or cancel in progress"));
  }
  auto paf = kj::newPromiseAndFulfiller<BranchOutcome>();
  it->second.waiters.push_back(kj::mv(paf.fulfiller));
  bool confirm = it->second.confirm;
  return io_.getTimer()
      .timeoutAfter(opts_.host.phase2WaitMs * kj::MILLISECONDS, kj::mv(paf.promise))
      .catch_([this, xid, confirm](kj::Exception&&) -> kj::Promise<BranchOutcome> {
        std::string why = lastError_.empty() ? "" : ": " + lastError_;
        return hostPending("host " + http_.url() + " has not acknowledged the " + (confirm ? "confirm" : "cancel") +
                           " of " + xid.str() + " within phase2_wait_ms (" + std::to_string(opts_.host.phase2WaitMs) +
                           ")" + why + "; the agent keeps trying");
      });
}

kj::Duration HostAgent::backoff(std::uint32_t attempts) const {
  std::uint64_t ms = opts_.host.retryInitialMs;
  for (std::uint32_t i = 1; i < attempts && ms < opts_.host.retryMaxMs; ++i) ms *= 2;
  return std::min<std::uint64_t>(ms, opts_.host.retryMaxMs) * kj::MILLISECONDS;
}

kj::Promise<void> HostAgent::drive(Xid xid) {
  auto it = pending_.find(xid);
  if (it == pending_.end()) return kj::READY_NOW;
  if (hostDown_ && probing_) {
    // Another loop is probing the host: wait for its news (or a while, in
    // case that loop ended without any).
    return hostBack()
        .exclusiveJoin(io_.getTimer().afterDelay(opts_.host.retryMaxMs * kj::MILLISECONDS))
        .then([this, xid]() { return drive(xid); });
  }
  bool probe = hostDown_;
  if (probe) probing_ = true;
  auto& p = it->second;
  p.attempts++;
  kj::Vector<kj::Promise<void>> calls;
  for (std::size_t i = 0; i < p.ops.size(); ++i) {
    if (p.done[i]) continue;
    const auto& op = operation(p.ops[i]);
    const std::string& path = p.confirm ? op.confirmPath : op.cancelPath;
    if (path.empty()) {  // confirm of an operation the host posts at try
      p.done[i] = true;
      p.ends[i] = HostAnswer::Kind::Confirmed;
      continue;
    }
    HostCall call = p.confirm ? HostCall::Confirm : HostCall::Cancel;
    calls.add(http_.post(call, path, body(xid, i, nullptr)).then([this, xid, i, call](HostAnswer a) {
      auto it = pending_.find(xid);
      if (it == pending_.end()) return;
      switch (a.kind) {
        case HostAnswer::Kind::Fault:
          noteFault(a);
          it->second.lastError = a.reason;
          return;
        case HostAnswer::Kind::Breach:
        case HostAnswer::Kind::Tried:
        case HostAnswer::Kind::Refused:
          // Not an acknowledgement: retried, and said in the driver's
          // periodic warning (only the host's acknowledgement ends a branch).
          hostAnswered();
          it->second.lastError = std::string(hostCallName(call)) + " of op " + std::to_string(i) +
                                 ": the host broke the contract: " + a.reason;
          return;
        default:
          hostAnswered();
          it->second.done[i] = true;
          it->second.ends[i] = a.kind;
          return;
      }
    }).eagerlyEvaluate(nullptr));  // the host's health and the op's end noted when it answers
  }
  return kj::joinPromises(calls.releaseAsArray()).then([this, xid, probe]() -> kj::Promise<void> {
    if (probe) probing_ = false;
    auto it = pending_.find(xid);
    if (it == pending_.end()) return kj::READY_NOW;
    auto& p = it->second;
    if (std::all_of(p.done.begin(), p.done.end(), [](bool d) { return d; })) return settle(xid);
    // Said after 8 attempts (one to two seconds) and every 40 after: a host
    // outage is logged once by the host's health (hostFault), not once per
    // branch waiting on it.
    if (!p.lastError.empty() && (p.attempts == 8 || p.attempts % 40 == 0)) {
      KEEL_LOG_WARN("{} of {} not acknowledged yet (attempt {}): {}; retrying", p.confirm ? "confirm" : "cancel",
                    xid.str(), p.attempts, p.lastError);
    }
    return io_.getTimer().afterDelay(backoff(p.attempts)).then([this, xid]() { return drive(xid); });
  });
}

kj::Promise<void> HostAgent::settle(Xid xid) {
  auto& p = pending_.at(xid);
  // The branch's end from the host's answers: the decision, unless the
  // host had ended an operation the other way (then the other way, with
  // why, and the coordinator reports the interaction heuristic).
  BranchStatus end = p.confirm ? BranchStatus::Committed : BranchStatus::RolledBack;
  bool unknown = false;
  std::string why;
  for (std::size_t i = 0; i < p.ends.size(); ++i) {
    auto k = p.ends[i];
    if (p.confirm && k == HostAnswer::Kind::Cancelled) {
      end = BranchStatus::RolledBack;
      why += "op " + std::to_string(i) + ": the host had cancelled it; ";
    } else if (p.confirm && k == HostAnswer::Kind::Unknown) {
      unknown = true;
      why += "op " + std::to_string(i) + ": the host never saw the try; ";
    } else if (!p.confirm && k == HostAnswer::Kind::Confirmed) {
      end = BranchStatus::Committed;
      why += "op " + std::to_string(i) + ": the host had confirmed it; ";
    }
  }
  if (unknown && end == BranchStatus::Committed) end = BranchStatus::RolledBack;
  if (!why.empty()) {
    why.resize(why.size() - 2);
    KEEL_LOG_ERROR("{}: HEURISTIC at the host: {}", xid.str(), why);
  }
  KEEL_FAILPOINT("host.before_settled");
  // Lazy: a lost final record only means the calls are made again after a
  // restart (the host answers them idempotently).
  return log_.log()
      .runLazy([this, xid, end, why](lmdb::Txn& txn) {
        auto rec = log_.read(txn, xid);
        if (!rec) return;
        if (rec->state == BranchStatus::Committed || rec->state == BranchStatus::RolledBack) return;
        if (!why.empty()) rec->reason = rec->reason.empty() ? why : rec->reason + "; " + why;
        log_.finish(txn, *rec, end, rec->epoch);
      })
      .then([this, xid, end, unknown]() {
        auto it = pending_.find(xid);
        if (it == pending_.end()) return;
        BranchOutcome o = unknown ? BranchOutcome::Unknown
                                  : end == BranchStatus::Committed ? BranchOutcome::Committed : BranchOutcome::RolledBack;
        for (auto& w : it->second.waiters) {
          if (w->isWaiting()) w->fulfill(BranchOutcome(o));
        }
        pending_.erase(it);
      });
}

// ------------------------------------------------------------ host health

void HostAgent::hostAnswered() {
  if (!hostDown_) return;
  hostDown_ = false;
  Micros down = monoMicros() - downSinceUs_;
  KEEL_LOG_INFO("host {} answers again after {:.1f} s; {} branch(es) to confirm or cancel", http_.url(), down / 1e6,
                pending_.size());
  for (auto& w : backWaiters_) {
    if (w->isWaiting()) w->fulfill();
  }
  backWaiters_.clear();
}

void HostAgent::noteFault(const HostAnswer& a) {
  // A 5xx or 429 is an answer: the host is up, failing this call (retried);
  // only no answer at all makes it "down".
  if (a.answered) {
    hostAnswered();
  } else {
    hostFault(a.reason);
  }
}

void HostAgent::hostFault(const std::string& why) {
  lastError_ = why;
  if (hostDown_) return;
  hostDown_ = true;
  downSinceUs_ = monoMicros();
  KEEL_LOG_WARN("host {} is not answering: {}; branches wait for it, new ones vote NO meanwhile", http_.url(), why);
}

kj::Promise<void> HostAgent::hostBack() {
  // Waiters that gave up (their timer won) are dropped here, so a host
  // down for hours does not grow the list.
  std::erase_if(backWaiters_, [](auto& w) { return !w->isWaiting(); });
  auto paf = kj::newPromiseAndFulfiller<void>();
  backWaiters_.push_back(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

std::optional<std::string> HostAgent::unavailable() const {
  if (!hostDown_) return std::nullopt;
  return "host " + http_.url() + " is not answering (for " +
         std::to_string((monoMicros() - downSinceUs_) / 1000) + " ms: " + lastError_ + ")";
}

}  // namespace keel
