// Coordinator recovery: an explicit state machine with a log line per phase.
//
//   1 open-wal     the WAL environment is open (WalStore constructor);
//                  records of unfinished work decode, and every participant
//                  they still need is in the config, or start-up stops
//                  (keel-coordinator, before anything is written)
//   2 bump-epoch   epoch+1 made durable: every call of this incarnation
//                  carries it, so agents can tell a stale coordinator.
//                  Cluster: the node id is claimed and the epoch raised in
//                  etcd first, then etcd's decisions of this node's earlier
//                  incarnations are read (they override the WAL's, whose
//                  COMMIT record is lazy there)
//   3 redrive      every interaction in `active` is re-driven:
//                    COMMIT decided      -> phase 2 again (commit is idempotent)
//                    ABORT decided       -> rollback driver
//                    no decision, 2PC    -> ABORT (presumed abort)
//                    no decision, 1PC    -> ask the participant via rollback:
//                                           it answers committed or rolled back
//   4 sweep        (background) every participant's unfinished branches:
//                  those of this node's earlier incarnations that the WAL
//                  does not list as live are settled by the WAL's outcome,
//                  or rolled back when the WAL never heard of them
//   5 serving      new interactions are accepted (from phase 4 on: seqs of
//                  this incarnation are above everything the sweep touches)
//
// Where it can get stuck: phase 1/2 on a damaged or full WAL (start-up fails
// with the key named); phase 4 retries an unreachable participant forever
// with capped backoff, while serving; see docs/recovery.md.

#include <algorithm>
#include <map>
#include <set>

#include "common/fault.h"
#include "common/log.h"
#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"

namespace keel {

Coordinator::WalHolds Coordinator::walHolds(WalStore& wal, std::uint64_t seq, bool logDamage) {
  auto stored = wal.get(seq);
  if (!stored) return WalHolds::Nothing;
  try {
    return decodeInteraction(stored->interaction).finished() ? WalHolds::Finished : WalHolds::Unfinished;
  } catch (const CorruptRecord& e) {
    if (logDamage) KEEL_LOG_ERROR("seq {}: damaged record ({}); etcd's decision decides", seqText(seq), e.what());
    return WalHolds::Unfinished;
  }
}

void Coordinator::refuseMissingParticipants(const std::vector<WalStore::Unfinished>& unfinished,
                                            const std::function<bool(const std::string&)>& known,
                                            const std::map<std::uint64_t, ClusterDecision>& etcdCommits) {
  // Participant -> the seqs that still need it: the rollback record's
  // pending participants, every branch a driver may still call (phase 2
  // or the rollback driver), for a staged record without a decision every
  // branch (its votes are read back from all of them), and every branch of
  // a COMMIT in etcd that recovery will redrive.
  std::map<std::string, std::set<std::uint64_t>> missing;
  bool fromWal = false, fromEtcd = false;
  for (const auto& u : unfinished) {
    std::set<std::string> needs;
    if (u.rollback) needs.insert(u.rollback->pending.begin(), u.rollback->pending.end());
    bool staged = u.interaction.stagedUndecided();
    for (const auto& b : u.interaction.branches) {
      if (staged || unsettled(b.state)) needs.insert(b.participant);
    }
    for (const auto& name : needs) {
      if (!known(name)) {
        missing[name].insert(u.interaction.seq);
        fromWal = true;
      }
    }
  }
  for (const auto& [seq, d] : etcdCommits) {
    if (!d.commit) continue;
    for (const auto& [name, branch] : d.branches) {
      if (!known(name)) {
        missing[name].insert(seq);
        fromEtcd = true;
      }
    }
  }
  if (missing.empty()) return;
  std::string what;
  for (const auto& [name, seqs] : missing) {
    constexpr std::size_t kShown = 5;
    std::string list;
    std::size_t i = 0;
    for (auto it = seqs.begin(); it != seqs.end() && i < kShown; ++it, ++i) list += (i == 0 ? "" : ", ") + seqText(*it);
    if (seqs.size() > kShown) list += " and " + std::to_string(seqs.size() - kShown) + " more";
    what += (what.empty() ? "" : "; ") + ("'" + name + "' (" + std::to_string(seqs.size()) + " unfinished: " + list + ")");
  }
  throw ConfigError(std::string(fromWal && fromEtcd ? "the WAL and etcd's COMMIT decisions of this node hold"
                                : fromEtcd         ? "etcd's COMMIT decisions of this node hold"
                                                   : "the WAL holds") +
                    " unfinished interactions that still need participants missing from [participants]: " + what +
                    ". Nothing could finish them, so nothing was started or changed: put each one back in "
                    "[participants] (reachable, so its branches can be committed or rolled back), start, wait "
                    "until `keelctl list` no longer shows them, then remove it (docs/recovery.md, \"A participant "
                    "removed from the config\")");
}

std::map<std::uint64_t, ClusterDecision> Coordinator::etcdCommitsToRedrive(ClusterMember& cluster, std::uint16_t node,
                                                                           WalStore& wal) {
  std::map<std::uint64_t, ClusterDecision> out;
  for (auto& [seq, d] : cluster.decisionsOfSync(node)) {
    if (d.commit && walHolds(wal, seq, /*logDamage=*/false) != WalHolds::Finished) out.emplace(seq, std::move(d));
  }
  return out;
}

kj::Promise<void> Coordinator::recover(std::vector<WalStore::Unfinished> unfinished) {
  // `unfinished` was read and checked before anything was written (the
  // caller: every record decoded, CorruptRecord naming a damaged key, and
  // every participant it still needs in the config).
  KEEL_LOG_INFO("recovery 1/5 open-wal: node {} data {}", cfg_.nodeId, cfg_.dataDir);
  std::map<std::uint64_t, ClusterDecision> fromEtcd;
  if (cluster_ == nullptr) {
    epoch_ = wal_.openIncarnation(cfg_.nodeId);
    seqs_ = wal_.makeSeqAllocator(cfg_.nodeId, cfg_.seqBlock);
  } else {
    // Cluster: the node id is claimed and the epoch raised in etcd first
    // (a refusal there changes nothing here); seqs start above what etcd
    // says any incarnation of this node may have handed out.
    auto joined = cluster_->join(wal_.storedEpoch());
    epoch_ = wal_.openIncarnation(cfg_.nodeId, joined.epoch);
    seqs_ = wal_.makeSeqAllocator(cfg_.nodeId, cfg_.seqBlock, joined.seqFloor,
                                  [this](std::uint64_t limit) { return cluster_->reserveSeqs(limit); });
    cluster_->reserveSeqsSync(seqs_->limit());
    fromEtcd = reconcileFromEtcd();
  }
  KEEL_LOG_INFO("recovery 2/5 bump-epoch: epoch {}, first seq of this incarnation {}", epoch_,
                seqText(seqs_->firstOfIncarnation()));
  restored_ = wal_.restoreMark();
  if (restored_) {
    KEEL_LOG_WARN("this WAL was restored from a backup at {}: seqs below {} that it holds no decision for are "
                  "decided by what the participants hold, never presumed aborted (docs/recovery.md)",
                  formatMicros(restored_->atUs), seqText(makeSeq(cfg_.nodeId, restored_->floor)));
  }
  std::size_t commits = 0, aborts = 0, staged = 0;
  for (auto& u : unfinished) {
    std::uint64_t seq = u.interaction.seq;
    bool keyed = false;
    if (auto f = fromEtcd.find(seq); f != fromEtcd.end()) {
      // etcd's decision is the decision (the local COMMIT record is lazy).
      u.interaction.decision =
          f->second.commit ? InteractionRecord::Decision::Commit : InteractionRecord::Decision::Abort;
      fromEtcd.erase(f);
      keyed = true;
    }
    if (!keyed && restoredUndecided(seq, &u.interaction)) {
      settleRestored(seq, std::move(u.interaction));
      continue;
    }
    if (!keyed && u.interaction.stagedUndecided()) {
      ++staged;
      settleStaged(std::move(u.interaction));
      continue;
    }
    (u.interaction.decision == InteractionRecord::Decision::Commit ? commits : aborts)++;
    redrive(std::move(u.interaction), std::move(u.rollback));
    if (Interaction* p = find(seq); p != nullptr && keyed) p->decisionKey = true;
  }
  for (auto& [seq, d] : fromEtcd) {
    // A COMMIT in etcd that this WAL never recorded (the lazy local record
    // was lost with the crash): its story starts from etcd's copy.
    InteractionRecord rec;
    rec.seq = seq;
    rec.decision = d.commit ? InteractionRecord::Decision::Commit : InteractionRecord::Decision::Abort;
    rec.recoveredBy = "etcd";
    rec.epoch = d.epoch;
    rec.createdUs = wallMicros();
    for (auto& [participant, branch] : d.branches) {
      InteractionRecord::Branch b;
      b.participant = participant;
      b.branch = branch;
      b.state = BState::Prepared;
      rec.branches.push_back(std::move(b));
    }
    auto unknown = std::find_if(rec.branches.begin(), rec.branches.end(),
                                [&](const auto& b) { return links_.count(b.participant) == 0; });
    if (unknown != rec.branches.end()) {
      // keel-coordinator refused the start for any such COMMIT read before
      // the join (etcdCommitsToRedrive); only one written between that read
      // and the join gets here, and no one writes a COMMIT of a node whose
      // data directory this process holds. Kept as a defence: logged, left.
      KEEL_LOG_ERROR("seq {}: etcd's COMMIT names participant {}, which this coordinator's config lacks: left "
                     "to an operator (docs/recovery.md, \"A participant removed from the config\")",
                     seqText(seq), unknown->participant);
      continue;
    }
    ++commits;
    redrive(std::move(rec), std::nullopt);
    if (Interaction* p = find(seq)) p->decisionKey = true;
  }
  KEEL_LOG_INFO("recovery 3/5 redrive: {} unfinished interactions ({} to commit, {} to roll back, {} staged and "
                "undecided: settled by the votes their participants hold)",
                unfinished.size(), commits, aborts, staged);
  for (auto& [name, l] : links_) {
    ++sweepPending_;
    tasks_.add(sweep(*l, 0));
  }
  KEEL_LOG_INFO("recovery 4/5 sweep: asking {} participants for in-doubt branches (background)", links_.size());
  tasks_.add(purgeRequests());
  tasks_.add(archiveOld());
  tasks_.add(releaseFloors());
  KEEL_LOG_INFO("recovery 5/5 serving");
  return kj::READY_NOW;
}

Coordinator::Interaction& Coordinator::install(InteractionRecord rec, std::optional<RollbackRecord> rb) {
  std::uint64_t seq = rec.seq;
  auto owned = std::make_unique<Interaction>();
  auto& it = *owned;
  it.rec = std::move(rec);
  it.rb = std::move(rb);
  it.deadlineMs = it.rec.deadlineMs != 0 ? it.rec.deadlineMs : cfg_.interactionTimeoutMs;
  it.closing = true;
  it.requestQueued = true;  // its row is in the WAL already (with its first record)
  live_[seq] = std::move(owned);
  if (!it.rec.requestId.empty()) {
    // Retries of its request id wait on it, as before the restart.
    try {
      if (auto row = wal_.findRequest(it.rec.requestId)) it.fingerprint = row->fingerprint;
    } catch (const CorruptRecord& e) {
      KEEL_LOG_ERROR("seq {}: its request id's row is damaged ({})", seqText(seq), e.what());
    }
    bindRequest(it);
  }
  return it;
}

void Coordinator::redrive(InteractionRecord rec, std::optional<RollbackRecord> rb) {
  std::uint64_t seq = rec.seq;
  auto& it = install(std::move(rec), std::move(rb));
  // The crash (or whatever left it unfinished) happened after the last step
  // the record shows, and its branches have held their effects since their
  // prepare, which came after it was created: the window of inconsistency
  // counts from there at the latest.
  if (it.rec.failedUs == 0) it.rec.failedUs = it.rec.createdUs != 0 ? it.rec.createdUs : wallMicros();
  switch (it.rec.decision) {
    case InteractionRecord::Decision::Commit:
      it.rec.state = State::Committing;
      it.commitDurable = true;
      it.told = SubmitOutcome{seq, ClientOutcome::Committed, "", {}, it.rec.requestId, false};
      tasks_.add(driveCommit(seq));
      return;
    case InteractionRecord::Decision::Abort:
      startAbort(it, it.rec.error.empty() ? "aborted before the coordinator restarted" : it.rec.error);
      return;
    case InteractionRecord::Decision::None:
      startAbort(it, it.rec.onePhase
                         ? "coordinator restarted during a one-phase call: the participant's outcome is asked"
                         : "coordinator restarted before a decision (presumed abort)");
      return;
  }
}

kj::Promise<void> Coordinator::sweep(ParticipantLink& l, std::uint32_t attempt) {
  return l.recover(epoch_, cfg_.nodeId, callDeadline())
      .then(
          [this, &l](std::vector<RecoveredBranch> branches) -> kj::Promise<void> {
            std::size_t settled = 0;
            for (auto& b : branches) {
              if (Interaction* p = find(b.xid.seq)) {
                // A driver owns it; make sure it knows this branch (an
                // interaction first found at another participant may not).
                if (b.xid.seq < seqs_->firstOfIncarnation()) adoptBranch(*p, l.name(), b);
                continue;
              }
              if (seqNode(b.xid.seq) != cfg_.nodeId) {
                KEEL_LOG_WARN("sweep: {} holds branch {} of another coordinator node {}; left alone", l.name(),
                              b.xid.str(), seqNode(b.xid.seq));
                continue;
              }
              if (b.xid.seq >= seqs_->firstOfIncarnation()) continue;  // this incarnation's work
              settleUnknownBranch(l, b);
              ++settled;
            }
            --sweepPending_;
            KEEL_LOG_INFO("sweep: {} reported {} unfinished branches, {} settled from the WAL", l.name(),
                          branches.size(), settled);
            return kj::READY_NOW;
          },
          [this, &l, attempt](kj::Exception&& e) -> kj::Promise<void> {
            KEEL_LOG_WARN("sweep: {} unreachable ({}); retrying", l.name(), describeFault(e));
            return io_.provider->getTimer().afterDelay(backoff(attempt + 1)).then([this, &l, attempt]() {
              return sweep(l, attempt + 1);
            });
          });
}

namespace {

// The story a participant's branch record tells, joined into the
// interaction's: its operations, when it was prepared, under which epoch.
void joinStory(InteractionRecord& rec, InteractionRecord::Branch& branch, const RecoveredBranch& b) {
  if (branch.ops.empty()) branch.ops = b.ops;
  if (b.createdUs != 0 && (rec.createdUs == 0 || b.createdUs < rec.createdUs)) rec.createdUs = b.createdUs;
  Micros prepared = b.preparedUs != 0 ? b.preparedUs : b.createdUs;
  // The window of inconsistency counts from the first prepare: from then on
  // the branch held its effects (escrow) while nobody decided.
  if (prepared != 0 && rec.recoveredBy == "sweep" && (rec.failedUs == 0 || prepared < rec.failedUs)) {
    rec.failedUs = prepared;
  }
  if (rec.epoch == 0) rec.epoch = b.epoch;
}

}  // namespace

void Coordinator::adoptBranch(Interaction& it, const std::string& participant, const RecoveredBranch& b) {
  for (auto& br : it.rec.branches) {
    if (br.participant == participant && br.branch == b.xid.branch) {
      joinStory(it.rec, br, b);
      return;
    }
  }
  // A branch the record does not list took no part in the decision: it is
  // rolled back whatever was decided. While the rollback driver runs, it
  // joins the interaction (its story and the driver's retries).
  // An aborted interaction already finishing (its final record on its way:
  // another participant's sweep answered first and its rollback was
  // quick) takes it once that record is durable: finish() hands it to
  // settleUnknownBranch, which reopens the stored record, so the story
  // names every branch.
  if (it.rec.completedUs != 0 && it.rec.decision != InteractionRecord::Decision::Commit) {
    KEEL_LOG_INFO("sweep: {} at {} joins interaction {} once its final record is durable", b.xid.str(),
                  participant, seqText(b.xid.seq));
    it.lateBranches.emplace_back(participant, b);
    return;
  }
  // One that is committing (an interactive one whose last operations were
  // not durable when the coordinator stopped) cannot take it: it is rolled
  // back on its own.
  if (it.rec.state != State::Aborting || !it.rb) {
    KEEL_LOG_WARN("sweep: {} at {} is not part of interaction {} ({}); rolling it back on its own", b.xid.str(),
                  participant, seqText(b.xid.seq), stateName(it.rec.state));
    tasks_.add(rollBackStray(link(participant), b.xid, 0));
    return;
  }
  InteractionRecord::Branch br;
  br.participant = participant;
  br.branch = b.xid.branch;
  br.state = BState::Prepared;
  joinStory(it.rec, br, b);
  it.rec.branches.push_back(std::move(br));
  it.branchResults.emplace_back();
  if (std::find(it.rb->pending.begin(), it.rb->pending.end(), participant) == it.rb->pending.end()) {
    it.rb->pending.push_back(participant);
  }
  KEEL_LOG_INFO("sweep: {} joins interaction {} at {}", b.xid.str(), seqText(b.xid.seq), participant);
}

kj::Promise<void> Coordinator::rollBackStray(ParticipantLink& l, Xid xid, std::uint32_t attempt) {
  return l.rollback(epoch_, xid).then(
      [this, &l, xid](BranchOutcome o) -> kj::Promise<void> {
        if (o == BranchOutcome::RolledBack) {
          KEEL_LOG_INFO("sweep: {} at {} rolled back", xid.str(), l.name());
        } else {
          KEEL_LOG_ERROR("sweep: HEURISTIC: {} at {} was to be rolled back but answered {}", xid.str(), l.name(),
                         outcomeName(o));
        }
        return kj::READY_NOW;
      },
      [this, &l, xid, attempt](kj::Exception&& e) -> kj::Promise<void> {
        KEEL_LOG_WARN("sweep: rolling back {} at {} failed ({}); retrying", xid.str(), l.name(), describeFault(e));
        return io_.provider->getTimer().afterDelay(backoff(attempt + 1)).then([this, &l, xid, attempt]() {
          return rollBackStray(l, xid, attempt + 1);
        });
      });
}

void Coordinator::settleUnknownBranch(ParticipantLink& l, const RecoveredBranch& b) {
  std::uint64_t seq = b.xid.seq;
  auto stored = wal_.get(seq);
  InteractionRecord rec;
  std::optional<RollbackRecord> rb;
  if (stored) rec = decodeInteraction(stored->interaction);
  if (restoredUndecided(seq, stored ? &rec : nullptr)) {
    settleRestored(seq, stored ? std::optional<InteractionRecord>(std::move(rec)) : std::nullopt);
    return;
  }
  if (stored && rec.stagedUndecided()) {
    settleStaged(std::move(rec));  // never presumed aborted: the client may have heard "committed"
    return;
  }
  if (stored) {
    if (!stored->rollback.empty()) rb = decodeRollback(stored->rollback);
  } else {
    // The interaction record never became durable (a two-phase interaction
    // writes nothing before its decision): no decision can exist. Its story
    // comes from the agents' branch records.
    rec.seq = seq;
    rec.recoveredBy = "sweep";
    rec.error = "branch found at " + l.name() + " by the recovery sweep; unknown to the WAL (presumed abort)";
  }
  bool known = false;
  for (auto& br : rec.branches) {
    if (br.participant == l.name() && br.branch == b.xid.branch) {
      known = true;
      br.state = BState::Prepared;
      joinStory(rec, br, b);
    }
  }
  if (!known) {
    InteractionRecord::Branch br;
    br.participant = l.name();
    br.branch = b.xid.branch;
    br.state = BState::Prepared;
    joinStory(rec, br, b);
    rec.branches.push_back(std::move(br));
  }
  if (rec.createdUs == 0) rec.createdUs = wallMicros();
  if (rec.decision != InteractionRecord::Decision::Commit) {
    rec.decision = InteractionRecord::Decision::Abort;
    rec.completedUs = 0;  // reopened: finished again once this branch is rolled back
    if (rb) {
      rb->completedUs = 0;
      rb->pending.push_back(l.name());
    }
  }
  KEEL_LOG_INFO("sweep: settling {} at {} by {}", b.xid.str(), l.name(),
                rec.decision == InteractionRecord::Decision::Commit ? "commit" : "rollback");
  redrive(std::move(rec), std::move(rb));
}

// ------------------------------------------------------------ a restored WAL

bool Coordinator::restoredUndecided(std::uint64_t seq, const InteractionRecord* stored) const {
  if (!restored_ || seqNode(seq) != cfg_.nodeId || seqCounter(seq) >= restored_->floor) return false;
  if (stored == nullptr) return true;
  // A decision or an end the backup already held stands; a one-phase
  // interaction is asked of its participant anyway (it decided).
  return stored->decision == InteractionRecord::Decision::None && !stored->finished() && !stored->onePhase;
}

void Coordinator::settleRestored(std::uint64_t seq, std::optional<InteractionRecord> known) {
  if (find(seq) != nullptr || !settlingRestored_.insert(seq).second) return;
  KEEL_LOG_INFO("restore: seq {} may have been decided after the backup: asking every participant", seqText(seq));
  tasks_.add(gatherEvidence(seq, std::move(known), 0));
}

namespace {

struct Evidence {
  std::string participant;
  bool answered = false;
  std::string fault;
  std::vector<RecoveredBranch> branches;
  bool released = false;  // below this node's release floor there (its records may be gone)
};

// Each participant's branches of `seq` (listBranches), or why it did not
// answer; a null link: not in this coordinator's config.
kj::Promise<kj::Array<Evidence>> askForBranches(std::uint64_t seq,
                                               const std::vector<std::pair<std::string, ParticipantLink*>>& who,
                                               kj::Duration deadline) {
  auto asks = kj::heapArrayBuilder<kj::Promise<Evidence>>(who.size());
  for (const auto& [name, l] : who) {
    if (l == nullptr) {
      asks.add(Evidence{name, false, "not in this coordinator's config", {}});
      continue;
    }
    std::string n = name;
    asks.add(l->branchesOf(seq, deadline)
                 .then([n](ParticipantLink::SeqRecords r) {
                         return Evidence{n, true, "", std::move(r.branches), r.belowFloor};
                       },
                       [n](kj::Exception&& e) { return Evidence{n, false, describeFault(e), {}}; }));
  }
  return kj::joinPromises(asks.finish());
}

}  // namespace

kj::Promise<void> Coordinator::gatherEvidence(std::uint64_t seq, std::optional<InteractionRecord> known,
                                              std::uint32_t attempt) {
  std::vector<std::pair<std::string, ParticipantLink*>> all;
  for (auto& [name, l] : links_) all.emplace_back(name, l.get());
  return askForBranches(seq, all, callDeadline())
      .then([this, seq, known = std::move(known), attempt](kj::Array<Evidence> evidence) mutable -> kj::Promise<void> {
        bool committed = false, rolledBack = false, any = false;
        std::string committedAt, rolledBackAt, silent, releasedAt;
        for (const auto& e : evidence) {
          if (!e.answered) silent += (silent.empty() ? "" : ", ") + e.participant + " (" + e.fault + ")";
          if (e.released && releasedAt.empty()) releasedAt = e.participant;
          for (const auto& b : e.branches) {
            any = true;
            if (b.state == BranchStatus::Committed && !committed) {
              committed = true;
              committedAt = e.participant;
            }
            if (b.state == BranchStatus::RolledBack && !rolledBack) {
              rolledBack = true;
              rolledBackAt = e.participant;
            }
          }
        }
        if (!committed && !rolledBack && !silent.empty()) {
          KEEL_LOG_WARN("restore: seq {}: no participant that answered has decided it; waiting for {}", seqText(seq),
                        silent);
          return io_.provider->getTimer().afterDelay(backoff(attempt + 1)).then([this, seq, known, attempt]() mutable {
            return gatherEvidence(seq, std::move(known), attempt + 1);
          });
        }
        settlingRestored_.erase(seq);
        if (find(seq) != nullptr) return kj::READY_NOW;  // an operator or a sweep got there first
        InteractionRecord rec;
        if (known) {
          rec = std::move(*known);
        } else {
          rec.seq = seq;
          rec.recoveredBy = "restore";
          rec.createdUs = 0;
        }
        for (const auto& e : evidence) {
          for (const auto& b : e.branches) {
            InteractionRecord::Branch* br = nullptr;
            for (auto& x : rec.branches) {
              if (x.participant == e.participant && x.branch == b.xid.branch) br = &x;
            }
            if (br == nullptr) {
              rec.branches.emplace_back();
              br = &rec.branches.back();
              br->participant = e.participant;
              br->branch = b.xid.branch;
            }
            br->state = b.state == BranchStatus::Committed    ? BState::Committed
                        : b.state == BranchStatus::RolledBack ? BState::RolledBack
                                                              : BState::Prepared;
            joinStory(rec, *br, b);
          }
        }
        if (rec.createdUs == 0) rec.createdUs = wallMicros();
        std::string note = "restored from a backup that did not hold its decision: ";
        bool decided = true;
        if (committed) {
          rec.decision = InteractionRecord::Decision::Commit;
          note += "committed at " + committedAt + ", so the COMMIT was decided after the backup";
        } else if (rolledBack) {
          rec.decision = InteractionRecord::Decision::Abort;
          note += "rolled back at " + rolledBackAt + ", so it was aborted";
        } else if (!any && !releasedAt.empty()) {
          // The lost WAL finished it and had it archived: every participant
          // dropped its records (docs/protocol.md, "Release"). Nothing is
          // held anywhere, and nothing here tells how it ended.
          note += "released at " + releasedAt +
                  ": the lost coordinator finished and archived it after the backup, so no participant holds a "
                  "record of it and its outcome is not known here (it was in the lost WAL's archive); nothing is "
                  "held";
          for (auto& b : rec.branches) {
            b.state = BState::Unknown;
            b.reason = "released: finished before the restore, outcome unknown here";
          }
          if (rec.branches.empty()) {
            rec.branches.emplace_back();
            rec.branches.back().participant = releasedAt;
            rec.branches.back().state = BState::Unknown;
            rec.branches.back().reason = "released: finished before the restore, outcome unknown here";
          }
          rec.error = rec.error.empty() ? note : rec.error + "; " + note;
          KEEL_LOG_ERROR("restore: seq {}: {}", seqText(seq), note);
          install(std::move(rec), std::nullopt);
          return finish(seq);  // heuristic-unknown: listed for an operator to reconcile
        } else if (!any) {
          rec.decision = InteractionRecord::Decision::Abort;
          note += "no participant holds a branch of it, so no COMMIT can have been decided";
        } else {
          decided = false;
        }
        rec.error = rec.error.empty() ? note : rec.error + "; " + note;
        if (decided) {
          KEEL_LOG_WARN("restore: seq {}: {}", seqText(seq), note);
          redrive(std::move(rec), std::nullopt);
          return kj::READY_NOW;
        }
        // Every branch is prepared (or active) and nobody decided: the lost
        // WAL may hold a COMMIT its client was told. Only an operator who
        // knows can decide; it waits, durable, in the unfinished list.
        rec.state = State::Preparing;
        rec.decision = InteractionRecord::Decision::None;
        rec.error += "every participant holds its branch prepared and none has committed or rolled back, so the "
                     "COMMIT may have been decided (and answered) after the backup: IN DOUBT until an operator "
                     "decides (keelctl resolve " +
                     seqText(seq) + " --commit|--abort --why ...)";
        KEEL_LOG_ERROR("restore: seq {}: in doubt: {}", seqText(seq), rec.error);
        auto& it = install(std::move(rec), std::nullopt);
        if (it.rec.failedUs == 0) it.rec.failedUs = it.rec.createdUs;
        return persist(it);
      });
}

}  // namespace keel

namespace keel {

// ------------------------------------------------------------ staged records

void Coordinator::handOverStagedReplays(std::uint64_t seq) {
  // Retries of its request id that waited while the votes were read back
  // now wait on the interaction like any retry: told at once if its outcome
  // is (a commit), else when it is (the rollback record durable; an
  // operator's decision).
  auto w = stagedReplays_.find(seq);
  if (w == stagedReplays_.end()) return;
  auto waiting = std::move(w->second);
  stagedReplays_.erase(w);
  Interaction* p = find(seq);
  if (p == nullptr) return;  // cannot be: each caller has just installed it
  for (auto& f : waiting) p->replays.push_back(kj::mv(f));
  if (p->told) answer(*p, p->told->outcome, p->told->reason);
}

void Coordinator::settleStaged(InteractionRecord rec) {
  std::uint64_t seq = rec.seq;
  if (find(seq) != nullptr || !settlingStaged_.insert(seq).second) return;
  KEEL_LOG_INFO("recovery: seq {} was staged and has no decision: reading its votes back from its participants",
                seqText(seq));
  tasks_.add(gatherStagedVotes(std::move(rec), 0));
}

kj::Promise<void> Coordinator::gatherStagedVotes(InteractionRecord rec, std::uint32_t attempt) {
  std::uint64_t seq = rec.seq;
  std::set<std::string> names;
  for (const auto& b : rec.branches) names.insert(b.participant);
  std::vector<std::pair<std::string, ParticipantLink*>> who;
  for (const auto& name : names) {
    auto l = links_.find(name);
    who.emplace_back(name, l == links_.end() ? nullptr : l->second.get());
  }
  return askForBranches(seq, who, callDeadline())
      .then([this, seq, rec = std::move(rec), attempt](kj::Array<Evidence> evidence) mutable -> kj::Promise<void> {
        std::string silent;
        for (const auto& e : evidence) {
          if (!e.answered) silent += (silent.empty() ? "" : ", ") + e.participant + " (" + e.fault + ")";
        }
        if (!silent.empty()) {
          // Without every participant's answer a missing vote cannot be
          // told from one not read: wait, never presume.
          KEEL_LOG_WARN("recovery: staged seq {}: waiting for {}", seqText(seq), silent);
          return io_.provider->getTimer().afterDelay(backoff(attempt + 1)).then([this, rec = std::move(rec), attempt]() mutable {
            return gatherStagedVotes(std::move(rec), attempt + 1);
          });
        }
        settlingStaged_.erase(seq);
        if (find(seq) != nullptr) {  // an operator got there first
          handOverStagedReplays(seq);
          return kj::READY_NOW;
        }
        // Each branch of the record against what its participant holds.
        bool committed = false, missing = false, rolledBack = false, released = false;
        std::string why;
        for (auto& br : rec.branches) {
          const Evidence* ev = nullptr;
          for (const auto& e : evidence) {
            if (e.participant == br.participant) ev = &e;
          }
          const RecoveredBranch* held = nullptr;
          for (const auto& b : ev->branches) {
            if (b.xid.branch == br.branch) held = &b;
          }
          std::string at = br.participant + " branch " + std::to_string(br.branch);
          if (held == nullptr) {
            if (ev->released) {
              released = true;
              why += (why.empty() ? "" : "; ") + at + ": released there (its record may be gone)";
              continue;
            }
            missing = true;
            br.state = BState::Pending;  // the rollback driver leaves a tombstone: a late prepare is refused
            why += (why.empty() ? "" : "; ") + at + ": not held (no vote)";
            continue;
          }
          joinStory(rec, br, *held);
          switch (held->state) {
            case BranchStatus::Prepared: br.state = BState::Prepared; break;
            case BranchStatus::Committed:
              br.state = BState::Committed;
              committed = true;
              break;
            case BranchStatus::RolledBack:
              br.state = BState::RolledBack;
              rolledBack = true;
              why += (why.empty() ? "" : "; ") + at + ": rolled back";
              break;
            case BranchStatus::Active:
              br.state = BState::Preparing;  // never voted: nobody was promised anything
              missing = true;
              why += (why.empty() ? "" : "; ") + at + ": active, never voted";
              break;
          }
        }
        if (rec.createdUs == 0) rec.createdUs = wallMicros();
        if (released && !committed) {
          // Cannot be read back: an operator decides (keelctl resolve).
          rec.error += std::string(rec.error.empty() ? "" : "; ") +
                       "staged, no decision, and a participant released the seq (" + why +
                       "): IN DOUBT until an operator decides (keelctl resolve " + seqText(seq) +
                       " --commit|--abort --why ...)";
          KEEL_LOG_ERROR("recovery: staged seq {}: {}", seqText(seq), rec.error);
          auto& it = install(std::move(rec), std::nullopt);
          if (it.rec.failedUs == 0) it.rec.failedUs = it.rec.createdUs;
          handOverStagedReplays(seq);
          return persist(it);
        }
        // Every vote was YES and is still held (or a branch already
        // committed, which only follows a COMMIT): the client may have heard
        // "committed", so it is. Anything else means some participant never
        // voted YES, so nobody heard "committed": roll back.
        bool commit = committed || (!missing && !rolledBack);
        std::string note = commit ? "staged; every participant holds its YES vote: committed after the restart"
                                  : "staged; not every participant voted yes (" + why +
                                        "): no client heard committed, rolled back after the restart";
        rec.error = rec.error.empty() ? note : rec.error + "; " + note;
        rec.decision = commit ? InteractionRecord::Decision::Commit : InteractionRecord::Decision::Abort;
        if (!commit) {
          for (auto& br : rec.branches) {
            if (br.state == BState::RolledBack) br.state = BState::VotedNo;  // confirmed: the agent holds it rolled back
          }
        }
        KEEL_LOG_WARN("recovery: seq {}: {}", seqText(seq), note);
        redrive(std::move(rec), std::nullopt);
        handOverStagedReplays(seq);
        return kj::READY_NOW;
      });
}

}  // namespace keel
