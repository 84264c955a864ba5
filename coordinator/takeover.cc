// Coordinator in a cluster: the COMMIT decision in etcd, a node's own
// decisions reconciled at start, and the takeover of a dead node's work.
// ClusterMember (cluster.cc) speaks to etcd; this file decides what to do.
// docs/cluster.md has the state machines.

#include <kj/vector.h>

#include <algorithm>

#include "common/client.h"
#include "common/config.h"
#include "common/failpoint.h"
#include "common/fault.h"
#include "common/log.h"
#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"

namespace keel {

// ------------------------------------------------------------ decision

kj::Promise<void> Coordinator::decideInCluster(Interaction& it) {
  std::uint64_t seq = it.rec.seq;
  ClusterDecision want;
  want.commit = true;
  want.by = cfg_.nodeId;
  want.epoch = epoch_;
  for (const auto& b : it.rec.branches) {
    if (b.state == BState::Prepared) want.branches.emplace_back(b.participant, b.branch);
  }
  // Durability point (cluster): the create-if-absent COMMIT acknowledged by
  // etcd. The local record follows lazily: after a crash the sweep finds
  // the prepared branches and etcd's decision settles them.
  Micros queuedMono = monoMicros();
  return cluster_->decide(cfg_.nodeId, epoch_, seq, std::move(want), it.rec.requestId)
      .then(
          [this, seq, queuedMono](ClusterMember::Outcome o) {
            metrics_.decisionWrite->observe(monoMicros() - queuedMono);
            Interaction* p = find(seq);
            if (p == nullptr) return;
            p->decisionKey = (!o.fenced || o.ours) && o.requestTakenBy == 0;
            if (o.requestTakenBy != 0 && o.requestCommitted) {
              // A retry of this request, sent to another coordinator, was
              // committed there: the client hears that one (this one's
              // branches are rolled back in the background).
              answerWith(*p, SubmitOutcome::of(o.requestTakenBy, ClientOutcome::Committed, "", p->rec.requestId));
              p->rec.decision = InteractionRecord::Decision::None;
              startAbort(*p, "request id " + p->rec.requestId + " was committed as seq " +
                                 seqText(o.requestTakenBy) + " (a retry through another coordinator)");
              return;
            }
            if (o.requestTakenBy != 0) {
              p->rec.decision = InteractionRecord::Decision::None;
              startAbort(*p, "request id " + p->rec.requestId + " was rolled back as seq " +
                                 seqText(o.requestTakenBy) + " (a retry through another coordinator)");
              return;
            }
            if (o.decision.commit) {
              p->commitDurable = true;
              p->commitDurableMono = monoMicros();
              KEEL_FAILPOINT("coord.after_decision_durable");
              answer(*p, ClientOutcome::Committed, "");
              tasks_.add(persist(*p, true));
              tasks_.add(driveCommit(seq));
              return;
            }
            p->rec.decision = InteractionRecord::Decision::None;
            startAbort(*p, o.fenced ? "this coordinator's node was taken over by another member of the cluster "
                                      "before the COMMIT reached etcd (nothing was committed)"
                                    : "etcd holds ABORT for it, written by node " + std::to_string(o.decision.by));
          },
          [this, seq](kj::Exception&& e) {
            Interaction* p = find(seq);
            if (p == nullptr) return;
            KEEL_LOG_ERROR("seq {}: COMMIT decision not made in etcd ({}); aborting", seqText(seq), describeFault(e));
            p->rec.decision = InteractionRecord::Decision::None;
            startAbort(*p, "the COMMIT decision could not be made in etcd: " + describeFault(e));
          });
}

void Coordinator::answerWith(Interaction& it, SubmitOutcome out) {
  if (it.told) return;
  out.replayed = true;
  it.told = out;
  if (it.answer.get() != nullptr && it.answer->isWaiting()) it.answer->fulfill(SubmitOutcome(out));
  for (auto& r : it.replays) {
    if (r->isWaiting()) r->fulfill(SubmitOutcome(out));
  }
  it.replays.clear();
}

kj::Promise<void> Coordinator::answerRolledBack(std::uint64_t seq, std::string reason) {
  Interaction* it = find(seq);
  if (it == nullptr) return kj::READY_NOW;
  if (cluster_ == nullptr || it->rec.requestId.empty() || it->told) {
    answer(*it, ClientOutcome::RolledBack, reason);
    return kj::READY_NOW;
  }
  // The request id's fate is decided in etcd first: a retry of it through
  // another coordinator may have committed, and then that is the answer.
  return cluster_->claimRolledBack(it->rec.requestId, seq)
      .then([this, seq, reason](ClusterMember::RequestFate f) {
        Interaction* p = find(seq);
        if (p == nullptr) return;
        if (f.committed && f.seq != seq) {
          answerWith(*p, SubmitOutcome::of(f.seq, ClientOutcome::Committed, "", p->rec.requestId));
        } else {
          answer(*p, ClientOutcome::RolledBack, reason);
        }
      });
}

// ------------------------------------------------------------ reads

kj::Promise<std::optional<StoredInteraction>> Coordinator::queryAnywhere(std::uint64_t seq) {
  std::uint16_t node = seqNode(seq);
  if (cluster_ == nullptr || node == cfg_.nodeId) return query(seq);
  // Another node's interaction: its own coordinator tells the whole story
  // while it is up; when it is not, etcd's decision is what is known.
  return cluster_->etcd()
      .range(cluster_->memberKey(node))
      .then([this, seq](etcd::RangeResult r) -> kj::Promise<std::optional<StoredInteraction>> {
        std::string addr;
        if (!r.kvs.empty() && r.kvs.front().value.rfind("addr=", 0) == 0) {
          auto& v = r.kvs.front().value;
          addr = v.substr(5, v.find(' ') == std::string::npos ? std::string::npos : v.find(' ') - 5);
          try {
            checkAddress("member " + std::to_string(seqNode(seq)), addr);
          } catch (const ConfigError&) {
            addr.clear();  // nothing read from etcd is trusted
          }
        }
        if (addr.empty()) return queryFromEtcd(seq);
        auto asked = KeelClient::connect(io_, addr).then([seq](kj::Own<KeelClient> c) {
          auto q = c->query(seq);
          return q.attach(kj::mv(c));
        });
        return io_.provider->getTimer()
            .timeoutAfter(callDeadline(), kj::mv(asked))
            .then(
                [](std::optional<QueryResult> q) -> kj::Promise<std::optional<StoredInteraction>> {
                  if (!q) return std::optional<StoredInteraction>();
                  StoredInteraction s;
                  s.interaction = encode(q->interaction);
                  if (q->rollback) s.rollback = encode(*q->rollback);
                  return std::optional<StoredInteraction>(std::move(s));
                },
                [this, seq, addr](kj::Exception&& e) {
                  KEEL_LOG_WARN("query {}: its coordinator at {} did not answer ({}); answering from etcd",
                                seqText(seq), addr, describeFault(e));
                  return queryFromEtcd(seq);
                });
      });
}

kj::Promise<std::optional<StoredInteraction>> Coordinator::queryFromEtcd(std::uint64_t seq) {
  return cluster_->lookup(seq).then([seq](std::optional<ClusterDecision> d) -> std::optional<StoredInteraction> {
    if (!d) return std::nullopt;
    InteractionRecord rec;
    rec.seq = seq;
    rec.decision = d->commit ? InteractionRecord::Decision::Commit : InteractionRecord::Decision::Abort;
    rec.state = d->commit ? InteractionRecord::State::Committing : InteractionRecord::State::Aborting;
    rec.epoch = d->epoch;
    rec.recoveredBy = "etcd";
    rec.error = "coordinator node " + std::to_string(seqNode(seq)) + " is not up: this is etcd's decision (written by node " +
                std::to_string(d->by) + "); that node's WAL holds the rest of the story";
    for (auto& [participant, branch] : d->branches) {
      InteractionRecord::Branch b;
      b.participant = participant;
      b.branch = branch;
      b.state = InteractionRecord::BranchState::Prepared;
      rec.branches.push_back(std::move(b));
    }
    StoredInteraction s;
    s.interaction = encode(rec);
    return s;
  });
}

// ------------------------------------------------------------ start-up

std::map<std::uint64_t, ClusterDecision> Coordinator::reconcileFromEtcd() {
  // Read after join() raised the epoch: no earlier incarnation (nor a
  // survivor that took this node over) can add a decision for an earlier
  // seq any more, so what is read here is final.
  auto all = cluster_->decisionsOfSync(cfg_.nodeId);
  std::map<std::uint64_t, ClusterDecision> out;
  std::size_t forgotten = 0;
  for (auto& [seq, d] : all) {
    if (seq >= seqs_->firstOfIncarnation()) continue;
    auto holds = walHolds(wal_, seq, /*logDamage=*/true);
    bool finished = holds == WalHolds::Finished;
    if (finished || (!d.commit && holds == WalHolds::Nothing)) {
      // Finished here, or an ABORT the WAL never heard of: with no COMMIT
      // possible any more, the key says nothing presumed abort does not.
      if (!finished) {
        // The story of an interaction this node never recorded: a survivor
        // settled it while the node was away.
        KEEL_LOG_INFO("reconcile: seq {} was aborted in etcd by node {} (epoch {})", seqText(seq), d.by, d.epoch);
      }
      cluster_->forget(seq);
      ++forgotten;
      continue;
    }
    out.emplace(seq, d);  // unfinished here, or a COMMIT the WAL lacks: the redrive follows it
  }
  KEEL_LOG_INFO("reconcile: etcd holds {} decisions of this node's earlier incarnations ({} no longer needed)",
                out.size() + forgotten, forgotten);
  return out;
}

// ------------------------------------------------------------ takeover

namespace {

struct TakeoverState {
  std::uint16_t node = 0;
  std::uint64_t epoch = 0;
  std::map<std::string, std::unique_ptr<ParticipantLink>> links;  // own links: own (node, epoch) batches
  std::map<std::uint64_t, ClusterDecision> decided;               // etcd's decisions of the node
  std::uint64_t committed = 0, rolledBack = 0, branches = 0;
  Micros startedUs = 0;
};

}  // namespace

kj::Promise<void> Coordinator::takeOver(std::uint16_t node, std::uint64_t epoch) {
  auto st = std::make_shared<TakeoverState>();
  st->node = node;
  st->epoch = epoch;
  st->startedUs = monoMicros();
  // Links of their own: a phase-2 batch carries one epoch, and the agent
  // fences the node of its first XID with it, so the dead node's calls
  // never share a batch with this node's.
  for (const auto& [name, addr] : cfg_.participants) {
    st->links[name] = std::make_unique<ParticipantLink>(io_, name, addr, linkOptions());
  }
  return cluster_->decisionsOf(node)
      .then([this, st](std::map<std::uint64_t, ClusterDecision> decided) {
        st->decided = std::move(decided);
        KEEL_LOG_INFO("takeover of node {}: etcd holds {} of its decisions; asking {} participants (epoch {})",
                      st->node, st->decided.size(), st->links.size(), st->epoch);
        kj::Vector<kj::Promise<void>> work;
        for (auto& [name, l] : st->links) {
          auto* link = l.get();
          // Raises the node's fence at the agent, then lists what is left.
          work.add(recoverRetry(*link, st->epoch, st->node, 0).then([this, st, link](std::vector<RecoveredBranch> branches) {
            kj::Vector<kj::Promise<void>> each;
            for (auto& b : branches) {
              if (seqNode(b.xid.seq) != st->node) continue;
              ++st->branches;
              Xid xid = b.xid;
              kj::Promise<bool> decision = nullptr;
              auto known = st->decided.find(xid.seq);
              if (known != st->decided.end()) {
                decision = known->second.commit;
              } else {
                // No decision: ABORT, unless the dead node's COMMIT got
                // there first (create-if-absent says which).
                ClusterDecision abort;
                abort.by = cfg_.nodeId;
                abort.epoch = st->epoch;
                decision = cluster_->decide(st->node, st->epoch, xid.seq, abort)
                               .then([st, xid](ClusterMember::Outcome o) {
                                 if (o.fenced && !o.ours && !o.decision.commit) {
                                   // The node came back (or another survivor
                                   // moved on): its work is no longer ours.
                                   return kj::Promise<bool>(faultException(
                                       "node " + std::to_string(st->node) + " was claimed again; takeover stops"));
                                 }
                                 st->decided[xid.seq] = o.decision;
                                 return kj::Promise<bool>(o.decision.commit);
                               });
              }
              // Eager: KJ 0.9's joinPromises runs a branch's continuation
              // only once every branch is ready.
              each.add(decision
                           .then([this, st, link, xid](bool commit) {
                             return finishBranch(*link, st->epoch, xid, commit, 0).then([st, commit]() {
                               ++(commit ? st->committed : st->rolledBack);
                             });
                           })
                           .eagerlyEvaluate(nullptr));
            }
            return kj::joinPromises(each.releaseAsArray());
          }).eagerlyEvaluate(nullptr));
        }
        return kj::joinPromises(work.releaseAsArray());
      })
      .then([this, st]() {
        takeoverCommitted_ += st->committed;
        takeoverRolledBack_ += st->rolledBack;
        KEEL_LOG_WARN("takeover of node {} (epoch {}) done in {} ms: {} branches, {} committed, {} rolled back",
                      st->node, st->epoch, (monoMicros() - st->startedUs) / 1000, st->branches, st->committed,
                      st->rolledBack);
      })
      .attach(kj::mv(st));
}

kj::Promise<std::vector<RecoveredBranch>> Coordinator::recoverRetry(ParticipantLink& l, std::uint64_t epoch,
                                                                    std::uint16_t node, std::uint32_t attempt) {
  return l.recover(epoch, node, callDeadline())
      .catch_([this, &l, epoch, node, attempt](kj::Exception&& e) -> kj::Promise<std::vector<RecoveredBranch>> {
        if (attempt % 10 == 0) {
          KEEL_LOG_WARN("takeover of node {}: {} unreachable ({}); retrying", node, l.name(), describeFault(e));
        }
        return io_.provider->getTimer().afterDelay(backoff(attempt + 1)).then([this, &l, epoch, node, attempt]() {
          return recoverRetry(l, epoch, node, attempt + 1);
        });
      });
}

kj::Promise<void> Coordinator::finishBranch(ParticipantLink& l, std::uint64_t epoch, Xid xid, bool commit,
                                            std::uint32_t attempt) {
  auto call = commit ? l.commit(epoch, xid) : l.rollback(epoch, xid);
  return call.then(
      [xid, commit, &l](BranchOutcome o) -> kj::Promise<void> {
        // Released: finished and archived under the one decision etcd holds.
        bool asDecided = o == BranchOutcome::Unknown || o == BranchOutcome::Released ||
                         (commit ? o == BranchOutcome::Committed : o == BranchOutcome::RolledBack);
        if (!asDecided) {
          KEEL_LOG_ERROR("takeover: HEURISTIC: {} at {} was to be {} but answered {}", xid.str(), l.name(),
                         commit ? "committed" : "rolled back", outcomeName(o));
        }
        return kj::READY_NOW;
      },
      [this, &l, epoch, xid, commit, attempt](kj::Exception&& e) -> kj::Promise<void> {
        if (attempt % 10 == 0) {
          KEEL_LOG_WARN("takeover: {} of {} at {} failed ({}); retrying", commit ? "commit" : "rollback", xid.str(),
                        l.name(), describeFault(e));
        }
        return io_.provider->getTimer().afterDelay(backoff(attempt + 1)).then([this, &l, epoch, xid, commit, attempt]() {
          return finishBranch(l, epoch, xid, commit, attempt + 1);
        });
      });
}

}  // namespace keel
