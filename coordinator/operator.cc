// Coordinator: what agents and operators ask of it beyond submitting work —
// the outcome of a branch in doubt, the window-of-inconsistency statistics,
// "retry now", and forced decisions with their audit trail.

#include <algorithm>

#include "common/log.h"
#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"

namespace keel {

Coordinator::Decided Coordinator::outcome(std::uint64_t seq) const {
  if (seqNode(seq) != cfg_.nodeId) return Decided::Unknown;
  auto live = live_.find(seq);
  if (live != live_.end()) {
    const auto& it = *live->second;
    if (it.rec.decision == InteractionRecord::Decision::Commit) {
      return it.commitDurable ? Decided::Committed : Decided::Pending;
    }
    if (it.rec.state == State::Aborting) return Decided::RolledBack;
    return Decided::Pending;
  }
  auto stored = wal_.get(seq);
  if (stored) {
    try {
      auto rec = decodeInteraction(stored->interaction);
      // Restored from a backup without its decision: being decided by
      // what the participants hold (settleRestored), never presumed.
      if (restoredUndecided(seq, &rec)) return Decided::Pending;
      // Staged without a decision: being settled by its votes (settleStaged).
      if (rec.stagedUndecided()) return Decided::Pending;
      return rec.decision == InteractionRecord::Decision::Commit ? Decided::Committed : Decided::RolledBack;
    } catch (const CorruptRecord&) {
      return Decided::Pending;  // an operator must look at it first
    }
  }
  if (restoredUndecided(seq, nullptr)) return Decided::Pending;
  // Never recorded by an earlier incarnation: no decision can exist for it
  // (presumed abort). A seq of this incarnation is always live or recorded.
  return seq < seqs_->firstOfIncarnation() ? Decided::RolledBack : Decided::Unknown;
}

Coordinator::WindowStats Coordinator::stats() const {
  WindowStats s;
  auto w = wal_.windows();
  s.count = w.us.size();
  s.rollbacks = w.rollbacks;
  s.retriedCommits = w.retriedCommits;
  s.heuristic = w.heuristic;
  if (!w.us.empty()) {
    auto rank = [&](double q) {
      std::size_t idx = std::size_t(q * double(w.us.size()) + 0.999999);  // nearest rank
      return w.us[std::min(w.us.size(), std::max<std::size_t>(idx, 1)) - 1];
    };
    s.p50Us = rank(0.5);
    s.p99Us = rank(0.99);
    s.maxUs = w.us.back();
  }
  Micros now = wallMicros();
  for (auto& [seq, it] : live_) {
    if (it->rec.failedUs == 0) continue;  // in flight, nothing failed yet
    ++s.inDoubt;
    s.oldestUs = std::max<std::uint64_t>(s.oldestUs, now > it->rec.createdUs ? now - it->rec.createdUs : 0);
  }
  return s;
}

Coordinator::Gauges Coordinator::gauges() const {
  // Counted on the loop at the moment of a scrape: one pass over what is
  // in memory (what is unfinished, never the WAL's history).
  Gauges g;
  Micros now = wallMicros();
  g.live = live_.size();
  for (const auto& [seq, it] : live_) {
    switch (it->rec.state) {
      case State::Aborting: ++g.rollbackQueue; break;
      case State::Committing: ++g.committing; break;
      default: break;
    }
    if (it->rec.failedUs == 0) continue;
    ++g.inDoubt;
    g.oldestInDoubtUs = std::max<std::uint64_t>(g.oldestInDoubtUs, now > it->rec.createdUs ? now - it->rec.createdUs : 0);
  }
  g.walMapBytes = wal_.mapSize();
  g.walHighWaterBytes = std::uint64_t(wal_.fill() * double(g.walMapBytes));
  g.walUsedBytes = std::uint64_t(wal_.inUse() * double(g.walMapBytes));
  g.sweepDone = sweepDone();
  return g;
}

std::vector<Coordinator::ParticipantView> Coordinator::participantViews() const {
  std::vector<ParticipantView> out;
  for (const auto& [name, l] : links_) {
    ParticipantView v;
    v.name = name;
    v.address = l->address();
    v.up = l->up();
    v.downSinceUs = l->up() ? 0 : l->downSinceUs();
    v.waiting = waitingOn(name);
    out.push_back(std::move(v));
  }
  return out;
}

kj::Promise<Coordinator::Retried> Coordinator::retryAudited(std::uint64_t seq, std::string who, std::string why) {
  if (who.empty() || why.empty()) return Retried{false, 0, "say who you are and why"};
  if (seq != 0 && find(seq) == nullptr) {
    return Retried{false, 0, "interaction " + seqText(seq) + " is not unfinished here: nothing to retry"};
  }
  AuditRecord a;
  a.atUs = wallMicros();
  a.seq = seq;
  a.action = "retry";
  a.who = std::move(who);
  a.why = std::move(why);
  KEEL_LOG_WARN("operator {}: retry now of {} ({})", a.who, seq == 0 ? std::string("every unfinished interaction") : seqText(seq),
                a.why);
  // The audit entry is durable before the drivers are woken.
  return wal_.appendAudit(a).then([this, seq]() { return Retried{true, retryNow(seq), ""}; });
}

std::uint32_t Coordinator::retryNow(std::uint64_t seq) {
  std::uint32_t woken = 0;
  for (auto& [s, it] : live_) {
    if (seq != 0 && s != seq) continue;
    if (it->wake.get() != nullptr && it->wake->isWaiting()) {
      it->wake->fulfill();
      ++woken;
    }
  }
  return woken;
}

kj::Promise<Coordinator::ResolveResult> Coordinator::resolve(std::uint64_t seq, bool commit, std::string who,
                                                             std::string why, bool override) {
  Interaction* it = find(seq);
  if (it == nullptr) {
    auto stored = wal_.get(seq);
    if (!stored) return ResolveResult{false, "unknown interaction " + seqText(seq)};
    return ResolveResult{false, "interaction " + seqText(seq) + " is finished (" +
                                    stateName(decodeInteraction(stored->interaction).state) + "): nothing to resolve"};
  }
  if (who.empty() || why.empty()) return ResolveResult{false, "say who you are and why (--who, --why)"};
  auto& r = it->rec;
  std::string previous = std::string(stateName(r.state)) + ", decision " + decisionName(r.decision);
  if (commit) {
    if (r.state == State::Committing) return ResolveResult{false, "already committing: use retry to hurry it"};
    bool allYes = std::all_of(r.branches.begin(), r.branches.end(), [](const auto& b) {
      return b.state == BState::Prepared || b.state == BState::ReadOnly || b.state == BState::Committed;
    });
    if (!override && r.state == State::Aborting) {
      return ResolveResult{false, "interaction " + seqText(seq) +
                                      " was decided ABORT; forcing commit contradicts it (add --override)"};
    }
    if (!override && !allYes) {
      return ResolveResult{false, "not every participant voted YES; forcing commit would be a heuristic decision "
                                  "(add --override)"};
    }
  } else {
    if (r.state == State::Aborting) return ResolveResult{false, "already rolling back: use retry to hurry it"};
    if (!override && it->commitDurable) {
      return ResolveResult{false, "the COMMIT decision of " + seqText(seq) +
                                      " is durable; forcing abort contradicts it (add --override)"};
    }
  }
  AuditRecord a;
  a.atUs = wallMicros();
  a.seq = seq;
  a.action = commit ? "force-commit" : "force-abort";
  a.who = who;
  a.why = why;
  a.override = override;
  a.previous = previous;
  KEEL_LOG_WARN("operator {}: {} of {} ({}), was {}", who, a.action, seqText(seq), why, previous);
  // The audit entry is durable before the action is taken.
  return wal_.appendAudit(a).then([this, seq, commit, a]() -> kj::Promise<ResolveResult> {
    Interaction* p = find(seq);
    if (p == nullptr) return ResolveResult{false, "interaction finished meanwhile"};
    std::string note = a.action + " by " + a.who + ": " + a.why;
    p->closing = true;
    if (!commit) {
      p->rec.decision = InteractionRecord::Decision::None;
      startAbort(*p, note);
      return ResolveResult{true, "rolling back"};
    }
    p->rec.decision = InteractionRecord::Decision::Commit;
    p->rec.state = State::Committing;
    p->rec.error = note;
    p->rec.decidedUs = wallMicros();
    if (p->rec.failedUs == 0) p->rec.failedUs = p->rec.decidedUs;
    for (auto& b : p->rec.branches) {
      if (b.state == BState::Pending || b.state == BState::Preparing || b.state == BState::Failed ||
          b.state == BState::RolledBack || b.state == BState::VotedNo) {
        b.state = BState::Prepared;  // ask it to commit; it answers the truth
      }
    }
    return persist(*p).then([this, seq]() -> ResolveResult {
      Interaction* q = find(seq);
      if (q == nullptr) return ResolveResult{true, "committed"};
      q->commitDurable = true;
      answer(*q, ClientOutcome::Committed, "");
      tasks_.add(driveCommit(seq));
      return ResolveResult{true, "committing"};
    });
  });
}

kj::Promise<Coordinator::ResolveResult> Coordinator::reconciled(std::uint64_t seq, std::string who, std::string why) {
  if (who.empty() || why.empty()) return ResolveResult{false, "say who you are and why (--who, --why)"};
  auto stored = wal_.get(seq);
  if (!stored) return ResolveResult{false, "unknown interaction " + seqText(seq)};
  auto rec = decodeInteraction(stored->interaction);
  if (!rec.heuristic()) {
    return ResolveResult{false, "interaction " + seqText(seq) + " is " + stateName(rec.state) +
                                    ", not heuristic: nothing to reconcile"};
  }
  AuditRecord a;
  a.atUs = wallMicros();
  a.seq = seq;
  a.action = "reconciled";
  a.who = who;
  a.why = why;
  a.previous = stateName(rec.state);
  KEEL_LOG_WARN("operator {}: {} marked reconciled by hand ({}), was {}", who, seqText(seq), why, a.previous);
  return wal_.reconciled(seq, a).then([seq](bool listed) {
    if (!listed) return ResolveResult{false, "interaction " + seqText(seq) + " was marked reconciled already"};
    return ResolveResult{true, "marked reconciled"};
  });
}

kj::Promise<Coordinator::ArchiveDrop> Coordinator::dropArchive(std::string before, std::string who, std::string why) {
  ArchiveDrop out;
  if (!Archive::isPeriodName(before)) {
    out.refused = "'" + before + "' is not a day (YYYY-MM-DD)";
    return out;
  }
  if (why.empty()) {
    out.refused = "a drop needs a reason (--why), kept in the audit log";
    return out;
  }
  // The newest day that may go: archive_retention_days before today.
  std::string keepFrom = Archive::periodOf(wallMicros() - Micros(cfg_.archiveRetentionDays) * 86'400'000'000);
  if (before > keepFrom) {
    out.refused = "archive_retention_days = " + std::to_string(cfg_.archiveRetentionDays) +
                  " keeps every period from " + keepFrom + " on: --before may be " + keepFrom + " at the latest";
    return out;
  }
  std::vector<std::string> names;
  for (const auto& p : archive_->periods()) {
    if (p.name < before) names.push_back(p.name);
  }
  if (names.empty()) {
    out.refused = "no archive period before " + before;
    return out;
  }
  AuditRecord a;
  a.atUs = wallMicros();
  a.action = "archive-drop";
  a.who = who;
  a.why = why;
  a.previous = std::to_string(names.size()) + " period(s) " + names.front() + " .. " + names.back();
  KEEL_LOG_WARN("operator {}: dropping archive periods {} ({})", who, a.previous, why);
  // Audited first: a crash after this and before the removal leaves the
  // periods there, and the entry says what was asked.
  return wal_.appendAudit(a).then([this, names = std::move(names)]() mutable {
    ArchiveDrop done;
    for (const auto& n : names) {
      try {
        archive_->drop(n);
        done.dropped.push_back(n);
      } catch (const std::exception& e) {
        KEEL_LOG_ERROR("archive: dropping period {} failed: {}", n, e.what());
        done.refused = "dropping period " + n + " failed: " + e.what() + " (the ones before it were dropped)";
        break;
      }
    }
    return done;
  });
}

}  // namespace keel
