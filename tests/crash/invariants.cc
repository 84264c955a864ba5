#include "tests/crash/invariants.h"

#include <lmdb.h>

#include <algorithm>
#include <stdexcept>

#include "common/wire.h"

namespace keel::crash {

namespace {

std::string describeOps(const std::vector<Op>& ops) {
  std::string s;
  for (const Op& op : ops) {
    if (!s.empty()) s += ", ";
    s += std::string(opKindName(op.kind)) + " " + op.participant + ":" + op.account + " " + std::to_string(op.amount);
  }
  return s;
}

std::string answerStr(const Answer& a) {
  return std::string(clientOutcomeName(a.outcome)) + (a.reason.empty() ? "" : " (" + a.reason + ")") + " for [" +
         describeOps(a.ops) + "]";
}

// A branch of one seq as found at one agent.
struct Found {
  std::string agent;
  std::uint16_t branch = 0;
  BranchView view;
  std::string str(std::uint64_t seq) const {
    return agent + " has " + Xid{seq, branch}.str() + " " + branchStatusName(view.state) +
           (view.tombstone ? " (tombstone)" : "");
  }
};

const BranchView* branchAt(const ClusterView& view, const std::string& agent, Xid xid) {
  for (const auto& a : view.agents) {
    if (a.name != agent) continue;
    auto it = a.branches.find(xid);
    return it == a.branches.end() ? nullptr : &it->second;
  }
  return nullptr;
}

// (participant, branch number) of each branch a request creates: numbers
// start at 1 in the order participants first appear (docs/protocol.md).
std::vector<std::pair<std::string, std::uint16_t>> impliedBranches(const std::vector<Op>& ops) {
  std::vector<std::pair<std::string, std::uint16_t>> out;
  for (const Op& op : ops) {
    bool seen = std::any_of(out.begin(), out.end(), [&](const auto& b) { return b.first == op.participant; });
    if (!seen) out.emplace_back(op.participant, std::uint16_t(out.size() + 1));
  }
  return out;
}

}  // namespace

std::set<std::uint64_t> seqsToProbe(const RunRecord& rec, std::uint64_t margin) {
  std::set<std::uint64_t> known = rec.seenSeqs;
  known.insert(rec.durableCommits.begin(), rec.durableCommits.end());
  for (const auto* list : {&rec.opens, &rec.transfers}) {
    for (const auto& a : *list) {
      if (!a.lost && a.seq != 0) known.insert(a.seq);
    }
  }
  // Seqs of one incarnation are consecutive counters and incarnations are a
  // whole seq block apart, so known seqs close together belong to one run of
  // consecutive seqs: probe every seq of each run, widened by `margin`.
  std::set<std::uint64_t> out;
  auto addRange = [&](std::uint64_t first, std::uint64_t last) {
    std::uint16_t node = seqNode(first);
    std::uint64_t lo = seqCounter(first), hi = seqCounter(last);
    lo = lo > margin ? lo - margin : 1;  // counter 0 is never used
    hi = std::min(hi + margin, kMaxSeqCounter);
    for (std::uint64_t c = lo; c <= hi; ++c) out.insert(makeSeq(node, c));
  };
  std::optional<std::pair<std::uint64_t, std::uint64_t>> run;
  for (std::uint64_t seq : known) {
    if (run && seqNode(seq) == seqNode(run->second) && seq - run->second <= 2 * margin) {
      run->second = seq;
      continue;
    }
    if (run) addRange(run->first, run->second);
    run = std::make_pair(seq, seq);
  }
  if (run) addRange(run->first, run->second);
  return out;
}

ClusterView observe(kj::AsyncIoContext& io, const LocalCluster& cluster, KeelClient& client,
                    const std::set<std::uint64_t>& seqs) {
  auto& ws = io.waitScope;
  ClusterView view;
  view.info = client.info().wait(ws);
  view.unfinished = client.listUnfinished(10000).wait(ws);
  {
    kj::Vector<kj::Promise<void>> queries;
    for (std::uint64_t seq : seqs) {
      queries.add(client.query(seq).then([&view, seq](std::optional<QueryResult> q) { view.records[seq] = std::move(q); }));
    }
    kj::joinPromises(queries.releaseAsArray()).wait(ws);
  }
  for (const std::string& name : cluster.agentNames()) {
    AgentView a;
    a.name = name;
    auto c = AgentClient::connect(io, cluster.agentAddress(name)).wait(ws);
    a.snapshot = c->inspect().wait(ws);
    {
      auto req = c->capability().recoverRequest();
      req.setEpoch(view.info.epoch);
      auto resp = req.send().wait(ws);
      for (auto b : resp.getBranches()) a.unfinished.push_back(readXid(b.getXid()));
    }
    std::set<Xid> probe(a.unfinished.begin(), a.unfinished.end());
    for (auto& [seq, q] : view.records) {
      for (std::uint16_t b = 1; b <= kProbeBranches; ++b) probe.insert(Xid{seq, b});
      if (!q) continue;
      for (const auto& br : q->interaction.branches) {
        if (br.participant == name) probe.insert(Xid{seq, br.branch});
      }
    }
    std::vector<Xid> xids(probe.begin(), probe.end());
    auto req = c->capability().statusRequest();
    auto l = req.initXids(xids.size());
    for (unsigned i = 0; i < xids.size(); ++i) fillXid(l[i], xids[i]);
    auto resp = req.send().wait(ws);
    auto infos = resp.getBranches();
    auto known = resp.getKnown();
    KJ_REQUIRE(infos.size() == xids.size() && known.size() == xids.size(), "status answered a different count");
    for (unsigned i = 0; i < xids.size(); ++i) {
      BranchView bv;
      bv.known = known[i];
      if (bv.known) {
        bv.state = static_cast<BranchStatus>(infos[i].getState());
        bv.tombstone = infos[i].getTombstone();
      }
      a.branches[xids[i]] = bv;
    }
    view.agents.push_back(std::move(a));
  }
  return view;
}

std::vector<InteractionRecord> readStoppedCoordinatorWal(const std::string& dataDir) {
  // Raw LMDB, read-only: keel::lmdb::Env opens databases in a write
  // transaction, and this must not touch the WAL it inspects.
  struct Handles {
    MDB_env* env = nullptr;
    MDB_txn* txn = nullptr;
    MDB_cursor* cursor = nullptr;
    ~Handles() {
      if (cursor != nullptr) mdb_cursor_close(cursor);
      if (txn != nullptr) mdb_txn_abort(txn);
      if (env != nullptr) mdb_env_close(env);
    }
  } h;
  auto check = [&](int rc, const char* what) {
    if (rc != 0) throw std::runtime_error(std::string(what) + " on " + dataDir + ": " + mdb_strerror(rc));
  };
  check(mdb_env_create(&h.env), "mdb_env_create");
  check(mdb_env_set_maxdbs(h.env, 16), "mdb_env_set_maxdbs");
  check(mdb_env_open(h.env, dataDir.c_str(), MDB_RDONLY, 0644), "mdb_env_open");
  check(mdb_txn_begin(h.env, nullptr, MDB_RDONLY, &h.txn), "mdb_txn_begin");
  MDB_dbi dbi;
  check(mdb_dbi_open(h.txn, "interactions", 0, &dbi), "mdb_dbi_open(interactions)");
  check(mdb_cursor_open(h.txn, dbi, &h.cursor), "mdb_cursor_open");
  std::vector<InteractionRecord> out;
  MDB_val k, v;
  for (int rc = mdb_cursor_get(h.cursor, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(h.cursor, &k, &v, MDB_NEXT)) {
    out.push_back(decodeInteraction(std::string_view(static_cast<const char*>(v.mv_data), v.mv_size)));
  }
  return out;
}

std::vector<std::string> checkInvariants(const RunRecord& rec, const ClusterView& view) {
  std::vector<std::string> out;
  auto add = [&](std::string s) { out.push_back(std::move(s)); };

  // (a) money -------------------------------------------------------------
  std::int64_t total = 0;
  for (const auto& a : view.agents) {
    for (const auto& [name, acct] : a.snapshot.accounts) {
      total += acct.balance;
      if (acct.balance < 0) add("(a) money: " + a.name + ":" + name + " has a negative balance " + std::to_string(acct.balance));
      if (acct.held != 0) add("(a) money: " + a.name + ":" + name + " still holds " + std::to_string(acct.held));
    }
    auto want = rec.accountsPerAgent.find(a.name);
    if (want != rec.accountsPerAgent.end() && want->second != a.snapshot.accounts.size()) {
      add("(a) money: " + a.name + " has " + std::to_string(a.snapshot.accounts.size()) + " accounts, " +
          std::to_string(want->second) + " were opened");
    }
  }
  if (total != rec.startTotal) {
    add("(a) money: balances sum to " + std::to_string(total) + " but the accounts were opened with " +
        std::to_string(rec.startTotal) + " (difference " + std::to_string(total - rec.startTotal) + ")");
  }

  // (b) nothing left unfinished -------------------------------------------
  for (const auto& a : view.agents) {
    if (a.snapshot.prepared != 0 || a.snapshot.active != 0) {
      add("(b) finished: " + a.name + " counts " + std::to_string(a.snapshot.prepared) + " PREPARED and " +
          std::to_string(a.snapshot.active) + " ACTIVE branches");
    }
    for (Xid x : a.unfinished) add("(b) finished: " + a.name + " recover() still lists " + x.str());
  }
  if (view.info.unfinished != 0) {
    add("(b) finished: coordinator info() reports " + std::to_string(view.info.unfinished) + " unfinished interactions");
  }
  for (const auto& r : view.unfinished) {
    add("(b) finished: coordinator listUnfinished() has seq " + seqText(r.seq) + " in state " + stateName(r.state) +
        (r.error.empty() ? "" : " (" + r.error + ")"));
  }

  // Branches at the agents, by seq.
  std::map<std::uint64_t, std::vector<Found>> bySeq;
  for (const auto& a : view.agents) {
    for (const auto& [xid, bv] : a.branches) {
      if (bv.known) bySeq[xid.seq].push_back(Found{a.name, xid.branch, bv});
    }
  }
  std::map<std::uint64_t, const Answer*> answered;
  for (const auto* list : {&rec.opens, &rec.transfers}) {
    for (const auto& a : *list) {
      if (!a.lost && a.seq != 0) answered[a.seq] = &a;
    }
  }

  // (e) atomicity of every probed seq, and the record agreeing with it ------
  for (const auto& [seq, q] : view.records) {
    auto ans = answered.find(seq);
    bool toldCommitted = ans != answered.end() && ans->second->outcome == ClientOutcome::Committed;
    bool toldRolledBack = ans != answered.end() && ans->second->outcome == ClientOutcome::RolledBack;
    const char* tagCommit = toldCommitted ? "(c) committed" : "(e) atomic";
    const char* tagAbort = toldRolledBack ? "(d) rolledback" : "(e) atomic";
    std::vector<const Found*> committed, rolledBack;
    for (const auto& f : bySeq[seq]) {
      switch (f.view.state) {
        case BranchStatus::Committed: committed.push_back(&f); break;
        case BranchStatus::RolledBack: rolledBack.push_back(&f); break;
        case BranchStatus::Prepared:
        case BranchStatus::Active:
          add("(b) finished: seq " + seqText(seq) + ": " + f.str(seq));
          break;
      }
    }
    if (!committed.empty() && !rolledBack.empty()) {
      add("(e) atomic: seq " + seqText(seq) + " is half done: " + committed.front()->str(seq) + " but " +
          rolledBack.front()->str(seq));
    }
    if (!q) {
      if (!committed.empty()) {
        add(std::string(tagAbort) + ": seq " + seqText(seq) + " is unknown to the coordinator (presumed abort) but " +
            committed.front()->str(seq));
      }
      continue;
    }
    const InteractionRecord& r = q->interaction;
    if (r.seq != seq) add("(e) atomic: query(" + seqText(seq) + ") returned the record of seq " + seqText(r.seq)
);
    if (!r.finished()) {
      add("(b) finished: seq " + seqText(seq) + " record is still " + stateName(r.state) +
          (r.error.empty() ? "" : " (" + r.error + ")"));
    }
    if (r.error.rfind("HEURISTIC", 0) == 0) add("(e) atomic: seq " + seqText(seq) + " recorded a heuristic outcome: " + r.error);
    if (r.state == InteractionRecord::State::Committed) {
      for (const auto& b : r.branches) {
        if (b.state == InteractionRecord::BranchState::ReadOnly) continue;
        const BranchView* bv = branchAt(view, b.participant, Xid{seq, b.branch});
        if (bv == nullptr || !bv->known) {
          add(std::string(tagCommit) + ": seq " + seqText(seq) + " is committed at the coordinator but " + b.participant +
              " never heard of branch " + Xid{seq, b.branch}.str());
        } else if (bv->state != BranchStatus::Committed) {
          add(std::string(tagCommit) + ": seq " + seqText(seq) + " is committed at the coordinator but " + b.participant +
              " has branch " + Xid{seq, b.branch}.str() + " " + branchStatusName(bv->state));
        }
      }
      for (const Found* f : rolledBack) {
        add(std::string(tagCommit) + ": seq " + seqText(seq) + " is committed at the coordinator but " + f->str(seq));
      }
    } else if (r.state == InteractionRecord::State::RolledBack) {
      for (const Found* f : committed) {
        add(std::string(tagAbort) + ": seq " + seqText(seq) + " is rolled back at the coordinator but " + f->str(seq));
      }
      if (!q->rollback) {
        add(std::string(tagAbort) + ": seq " + seqText(seq) + " is rolled back without a rollback record");
      } else if (q->rollback->completedUs == 0) {
        std::string pending;
        for (const auto& p : q->rollback->pending) pending += (pending.empty() ? "" : ", ") + p;
        add(std::string(tagAbort) + ": seq " + seqText(seq) + " rollback record not completed (pending: " + pending +
            "; last error: " + q->rollback->lastError + ")");
      }
    }
  }

  // (f) durable COMMIT decisions seen in a crashed coordinator's WAL --------
  for (std::uint64_t seq : rec.durableCommits) {
    auto it = view.records.find(seq);
    if (it == view.records.end()) {
      add("checker: seq " + seqText(seq) + " with a durable COMMIT was not probed");
      continue;
    }
    const auto& q = it->second;
    if (!q) {
      add("(f) durable: seq " + seqText(seq) + " had a durable COMMIT decision, now the coordinator has no record");
      continue;
    }
    if (q->interaction.state != InteractionRecord::State::Committed ||
        q->interaction.decision != InteractionRecord::Decision::Commit) {
      add("(f) durable: seq " + seqText(seq) + " had a durable COMMIT decision when the coordinator crashed, now it is " +
          stateName(q->interaction.state) + " with decision " + decisionName(q->interaction.decision) +
          (q->interaction.error.empty() ? "" : " (" + q->interaction.error + ")"));
    }
    for (const auto& b : q->interaction.branches) {
      if (b.state == InteractionRecord::BranchState::ReadOnly) continue;
      const BranchView* bv = branchAt(view, b.participant, Xid{seq, b.branch});
      if (bv == nullptr || !bv->known || bv->state != BranchStatus::Committed) {
        add("(f) durable: seq " + seqText(seq) + " had a durable COMMIT decision but " + b.participant +
            (bv == nullptr || !bv->known ? " never heard of branch " + Xid{seq, b.branch}.str()
                                         : " has branch " + Xid{seq, b.branch}.str() + " " + branchStatusName(bv->state)));
      }
    }
  }

  // (c) / (d) what each answered client was told --------------------------
  for (const auto& [seq, a] : answered) {
    auto it = view.records.find(seq);
    if (it == view.records.end()) {
      add("checker: answered seq " + seqText(seq) + " was not probed");
      continue;
    }
    const auto& q = it->second;
    switch (a->outcome) {
      case ClientOutcome::Committed:
        if (!q) {
          add("(c) committed: seq " + seqText(seq) + " was answered " + answerStr(*a) + " but the coordinator has no record");
        } else if (q->interaction.state != InteractionRecord::State::Committed) {
          add("(c) committed: seq " + seqText(seq) + " was answered " + answerStr(*a) + " but the coordinator says " +
              stateName(q->interaction.state) + (q->interaction.error.empty() ? "" : " (" + q->interaction.error + ")"));
        }
        // Independently of the record: the branches the request implies
        // (numbered by first appearance of each participant) are committed.
        for (const auto& [participant, branch] : impliedBranches(a->ops)) {
          if (a->ops.size() == 1 && a->ops[0].kind == OpKind::ReadBalance) break;
          const BranchView* bv = branchAt(view, participant, Xid{seq, branch});
          if (bv == nullptr || !bv->known || bv->state != BranchStatus::Committed) {
            add("(c) committed: seq " + seqText(seq) + " was answered " + answerStr(*a) + " but " + participant +
                (bv == nullptr || !bv->known ? " never heard of branch " + Xid{seq, branch}.str()
                                             : " has branch " + Xid{seq, branch}.str() + " " + branchStatusName(bv->state)));
          }
        }
        break;
      case ClientOutcome::RolledBack:
        if (q && q->interaction.state == InteractionRecord::State::Committed) {
          add("(d) rolledback: seq " + seqText(seq) + " was answered " + answerStr(*a) + " but the coordinator says committed");
        }
        if (q && q->interaction.heuristic()) {
          add("(d) rolledback: seq " + seqText(seq) + " was answered " + answerStr(*a) + " but ended " +
              stateName(q->interaction.state) + " (" + q->interaction.error + ")");
        }
        break;
      case ClientOutcome::HeuristicMixed:
      case ClientOutcome::HeuristicUnknown:
        // Nobody overrides a decision here and every host keeps its word:
        // a heuristic outcome is a broken protocol.
        add("answer: seq " + seqText(seq) + " was answered " + answerStr(*a) + " with no operator or host acting on its own");
        break;
      case ClientOutcome::InDoubt:
      case ClientOutcome::Invalid:
        if (a->ops.size() > 1) add("answer: seq " + seqText(seq) + " got an unexpected answer " + answerStr(*a));
        break;
      case ClientOutcome::Unavailable:
        break;  // "retry later" is allowed at any time
    }
  }
  for (const auto& a : rec.opens) {
    if (a.lost || a.outcome != ClientOutcome::Committed) add("setup: an account opening was answered " + answerStr(a));
  }
  return out;
}

std::vector<std::string> coverageNotes(const ClusterView& view) {
  std::vector<std::string> out;
  for (const auto& a : view.agents) {
    std::size_t known = 0;
    for (const auto& [xid, bv] : a.branches) known += bv.known ? 1 : 0;
    std::size_t total = a.snapshot.committed + a.snapshot.rolledBack + a.snapshot.prepared + a.snapshot.active;
    if (known < total) {
      out.push_back(a.name + ": " + std::to_string(total - known) + " of " + std::to_string(total) +
                    " branch records belong to seqs outside the probed set");
    }
  }
  return out;
}

}  // namespace keel::crash
