#include "tools/chaos/checker.h"

#include <algorithm>
#include <set>

#include "tools/sql_bank.h"

namespace keel::chaos {

const char* mixName(Mix m) {
  switch (m) {
    case Mix::Transfer: return "transfer";
    case Mix::ThreeBranch: return "three-branch";
    case Mix::Overdraft: return "overdraft";
    case Mix::OnePhase: return "one-phase";
    case Mix::Interactive: return "interactive";
    case Mix::ReadOnly: return "read-only";
    case Mix::HotTransfer: return "hot-transfer";
  }
  return "?";
}

const char* violationKindName(ViolationKind k) {
  switch (k) {
    case ViolationKind::NotAtomic: return "not-atomic";
    case ViolationKind::Unsettled: return "unsettled";
    case ViolationKind::CommitNotKept: return "commit-not-kept";
    case ViolationKind::RollbackNotKept: return "rollback-not-kept";
    case ViolationKind::CoordinatorDisagrees: return "coordinator-disagrees";
    case ViolationKind::Money: return "money";
    case ViolationKind::AccountHistory: return "account-history";
    case ViolationKind::InDoubtUnresolved: return "in-doubt-unresolved";
    case ViolationKind::RequestCommittedTwice: return "request-committed-twice";
    case ViolationKind::AnswerDisagrees: return "answer-disagrees";
    case ViolationKind::Heuristic: return "heuristic";
    case ViolationKind::EtcdDisagrees: return "etcd-disagrees";
  }
  return "?";
}

namespace {

using IState = InteractionRecord::State;
using K = ViolationKind;

struct SeqView {
  std::vector<const AgentBranch*> branches;
  std::size_t count(BranchStatus s) const {
    std::size_t n = 0;
    for (auto* b : branches) n += b->state == s ? 1 : 0;
    return n;
  }
  bool anyCommitted() const { return count(BranchStatus::Committed) > 0; }
  bool anyRolledBack() const { return count(BranchStatus::RolledBack) > 0; }
};

bool writes(const std::vector<Op>& ops) {
  for (const auto& op : ops) {
    if (op.kind != OpKind::ReadBalance) return true;
  }
  return false;
}

std::size_t participants(const std::vector<Op>& ops) {
  std::set<std::string> p;
  for (const auto& op : ops) p.insert(op.participant);
  return p.size();
}

bool definitive(ClientOutcome o) {
  return o == ClientOutcome::Committed || o == ClientOutcome::RolledBack || o == ClientOutcome::InDoubt ||
         o == ClientOutcome::HeuristicMixed || o == ClientOutcome::HeuristicUnknown;
}

class Checker {
 public:
  explicit Checker(const Input& in) : in_(in) {
    for (const auto& b : in.branches) bySeq_[b.xid.seq].branches.push_back(&b);
  }

  std::vector<Violation> run() {
    agentsOwnRecords();
    for (const auto& a : in_.attempts) answers(a);
    for (const auto& a : in_.attempts) requestIds(a);
    requestIdsByRecord();
    if (in_.etcd) {
      etcdDecisions();
      etcdRequestFates();
    }
    coordinatorAgainstAgents();
    if (!in_.hostKeys.empty()) hostKeys();
    books();
    history();
    return std::move(v_);
  }

 private:
  void add(K kind, std::uint64_t seq, std::string what) { v_.push_back(Violation{seq, std::move(what), kind}); }

  const InteractionRecord* record(std::uint64_t seq) const {
    auto it = in_.coordinator.interactions.find(seq);
    return it == in_.coordinator.interactions.end() ? nullptr : &it->second;
  }
  const SeqView* view(std::uint64_t seq) const {
    auto it = bySeq_.find(seq);
    return it == bySeq_.end() ? nullptr : &it->second;
  }
  std::string recordSays(std::uint64_t seq) const {
    const auto* r = record(seq);
    return r == nullptr ? "nothing" : stateName(r->state);
  }

  // The seqs the requests table names for `id`; names(id, 0): it names
  // none. In a cluster every coordinator's table, and etcd's fate of the
  // id: a retry through any coordinator hears that one (a node's own row
  // rides with its lazy local record, which a crash may lose: etcd's
  // decision then rebuilds the record, without the request id).
  std::set<std::uint64_t> rows(const std::string& id) const {
    if (in_.etcd) {
      auto it = in_.coordinator.requestRows.find(id);
      auto out = it == in_.coordinator.requestRows.end() ? std::set<std::uint64_t>{} : it->second;
      if (auto f = in_.etcd->requests.find(id); f != in_.etcd->requests.end() && f->second.seq != 0) {
        out.insert(f->second.seq);
      }
      return out;
    }
    auto row = in_.coordinator.requests.find(id);
    if (row == in_.coordinator.requests.end() || row->second == 0) return {};
    return {row->second};
  }
  bool names(const std::string& id, std::uint64_t seq) const {
    auto r = rows(id);
    return seq == 0 ? r.empty() : r.count(seq) != 0;
  }
  std::string tableSays(const std::string& id) const {
    std::string list;
    for (auto s : rows(id)) list += (list.empty() ? "seq " : ", seq ") + seqText(s);
    if (list.empty()) list = "none";
    return in_.etcd ? "the coordinators' requests tables and etcd name " + list
                     : "the coordinator's requests table names " + list;
  }

  void agentsOwnRecords() {
    for (const auto& b : in_.branches) {
      if (b.state == BranchStatus::Prepared || b.state == BranchStatus::Active) {
        add(K::Unsettled, b.xid.seq, "branch " + b.xid.str() + " at " + b.agent + " left " + branchStatusName(b.state));
      }
    }
    for (const auto& [seq, sv] : bySeq_) {
      if (sv.anyCommitted() && sv.anyRolledBack()) {
        std::string detail;
        for (auto* b : sv.branches) detail += " " + b->xid.str() + "@" + b->agent + "=" + branchStatusName(b->state);
        add(K::NotAtomic, seq, "not atomic: some branches committed, some rolled back:" + detail);
      }
    }
  }

  // Every answer of every try (an attempt recorded with its answer alone
  // counts as one try); the same (seq, outcome) is checked once.
  void answers(const Attempt& a) {
    std::vector<Try> single;
    if (a.tries.empty() && a.answer) single.push_back(Try{a.endUs, a.answer});
    for (const auto& t : a.tries.empty() ? single : a.tries) {
      if (!t.answer) continue;
      const auto& o = *t.answer;
      if (o.replayed && !names(a.requestId, o.seq)) {
        add(K::AnswerDisagrees, o.seq, "a retry of request id " + a.requestId + " was answered as seq " +
                                           seqText(o.seq) + ", but " + tableSays(a.requestId));
      }
      if (o.seq == 0 || !definitive(o.outcome) || !checked_.insert({o.seq, o.outcome}).second) continue;
      switch (o.outcome) {
        case ClientOutcome::Committed: committedAnswer(a, o.seq); break;
        case ClientOutcome::RolledBack: rolledBackAnswer(o.seq); break;
        case ClientOutcome::InDoubt: inDoubtAnswer(o.seq); break;
        default:
          if (!in_.heuristicExpected) {
            add(K::Heuristic, o.seq, std::string("a client was answered ") + clientOutcomeName(o.outcome));
          }
          break;
      }
    }
    if (a.dropped && a.seq != 0) {
      const auto* r = record(a.seq);
      if (r != nullptr && r->state != IState::RolledBack && !r->heuristic()) {
        add(K::RollbackNotKept, a.seq,
            "interactive transaction dropped before commit, but its record says " + recordSays(a.seq));
      }
      if (const auto* sv = view(a.seq); sv != nullptr && sv->anyCommitted()) {
        add(K::RollbackNotKept, a.seq, "interactive transaction dropped before commit, but a branch is committed");
      }
    }
  }

  void committedAnswer(const Attempt& a, std::uint64_t seq) {
    // Read-only interactions leave no branch; everything else must be
    // committed at as many agents as it had participants.
    if (writes(a.ops)) {
      const auto* sv = view(seq);
      std::size_t committed = sv == nullptr ? 0 : sv->count(BranchStatus::Committed);
      std::size_t want = participants(a.ops);
      if (committed != want) {
        add(K::CommitNotKept, seq, "acknowledged commit, but " + std::to_string(committed) + " of " +
                                       std::to_string(want) + " branches are committed at the agents");
      }
    }
    const auto* r = record(seq);
    if (r == nullptr || r->state != IState::Committed) {
      add(K::CommitNotKept, seq, "acknowledged commit, but the coordinator's record says " + recordSays(seq));
    }
  }

  void rolledBackAnswer(std::uint64_t seq) {
    if (const auto* sv = view(seq); sv != nullptr && sv->anyCommitted()) {
      add(K::RollbackNotKept, seq, "answered rolled back, but a branch is committed at an agent");
    }
    const auto* r = record(seq);
    if (r != nullptr && r->state != IState::RolledBack && !r->heuristic()) {
      add(K::RollbackNotKept, seq, "answered rolled back, but the coordinator's record says " + recordSays(seq));
    }
    auto rb = in_.coordinator.rollbacks.find(seq);
    if (rb == in_.coordinator.rollbacks.end()) {
      add(K::RollbackNotKept, seq, "answered rolled back, but the coordinator has no rollback record");
    } else if (rb->second.completedUs == 0 || !rb->second.pending.empty()) {
      add(K::RollbackNotKept, seq, "rollback record not completed after healing");
    }
  }

  // "In doubt" (a one-phase call lost): the interaction must have ended
  // committed or rolled back, and every agent holding a branch of it alike.
  void inDoubtAnswer(std::uint64_t seq) {
    const auto* r = record(seq);
    if (r == nullptr || (r->state != IState::Committed && r->state != IState::RolledBack)) {
      add(K::InDoubtUnresolved, seq, "answered in doubt, and the coordinator's record says " + recordSays(seq) +
                                         " after healing (must be committed or rolled-back)");
      return;
    }
    const auto* sv = view(seq);
    if (sv == nullptr) {
      if (r->state == IState::Committed) {
        add(K::InDoubtUnresolved, seq, "answered in doubt, ended committed, but no agent holds a branch of it");
      }
      return;
    }
    BranchStatus want = r->state == IState::Committed ? BranchStatus::Committed : BranchStatus::RolledBack;
    for (auto* b : sv->branches) {
      if (b->state != want) {
        add(K::InDoubtUnresolved, seq, "answered in doubt, ended " + std::string(stateName(r->state)) + ", but " +
                                           b->xid.str() + " at " + b->agent + " is " + branchStatusName(b->state));
      }
    }
  }

  // One request id: one seq among the answers, at most one committed
  // interaction among every seq the client heard for it, the requests row
  // names that one, and the last answer names the row's seq.
  void requestIds(const Attempt& a) {
    if (a.requestId.empty()) return;
    std::set<std::uint64_t> seqs;
    if (a.seq != 0) seqs.insert(a.seq);
    if (a.answer && a.answer->seq != 0) seqs.insert(a.answer->seq);
    for (const auto& t : a.tries) {
      if (t.answer && t.answer->seq != 0) seqs.insert(t.answer->seq);
    }
    if (seqs.size() > 1) {
      // A request is retried only when no answer came (or "unavailable",
      // which names no seq), so every seq it heard must be the same one.
      std::string list;
      for (auto s : seqs) list += (list.empty() ? "" : ", ") + seqText(s);
      add(K::AnswerDisagrees, *seqs.rbegin(), "request id " + a.requestId + " was answered with several seqs: " + list);
    }
    // In a cluster every coordinator's row counts too: a retry through
    // another coordinator ran under a seq of its own.
    std::set<std::uint64_t> candidates = seqs;
    if (in_.etcd) {
      for (auto s : rows(a.requestId)) candidates.insert(s);
    }
    std::vector<std::uint64_t> committed;
    for (auto s : candidates) {
      if (const auto* r = record(s); r != nullptr && r->state == IState::Committed) committed.push_back(s);
    }
    committedOf_[a.requestId].insert(committed.begin(), committed.end());
    if (committed.size() > 1) {
      twice(a.requestId, committed);
    } else if (committed.size() == 1 && !names(a.requestId, committed[0])) {
      add(K::AnswerDisagrees, committed[0],
          "request id " + a.requestId + " committed as seq " + seqText(committed[0]) + ", but " +
              tableSays(a.requestId) + " (a retry would hear another story)");
    }
    if (a.answer && a.answer->seq != 0 && definitive(a.answer->outcome) && !names(a.requestId, a.answer->seq)) {
      add(K::AnswerDisagrees, a.answer->seq,
          "request id " + a.requestId + " was last answered as seq " + seqText(a.answer->seq) + " (" +
              clientOutcomeName(a.answer->outcome) + "), but " + tableSays(a.requestId));
    }
    if (in_.etcd && committed.size() == 1) committedElsewhere(a, committed[0]);
  }

  // Cluster: the id committed as `seq`, so every definitive answer to it,
  // from whichever coordinator, says so.
  void committedElsewhere(const Attempt& a, std::uint64_t seq) {
    for (const auto& t : a.tries) {
      if (!t.answer || !definitive(t.answer->outcome)) continue;
      const auto& o = *t.answer;
      if (o.outcome == ClientOutcome::Committed && o.seq == seq) continue;
      if (o.outcome == ClientOutcome::InDoubt && o.seq == seq) continue;
      add(K::AnswerDisagrees, o.seq,
          "request id " + a.requestId + " committed as seq " + seqText(seq) + ", but a try was answered " +
              clientOutcomeName(o.outcome) + " as seq " + seqText(o.seq));
    }
  }

  // The same from the coordinator's side: its records carry the request id.
  void requestIdsByRecord() {
    std::map<std::string, std::vector<std::uint64_t>> committed;
    for (const auto& [seq, r] : in_.coordinator.interactions) {
      if (!r.requestId.empty() && r.state == IState::Committed) committed[r.requestId].push_back(seq);
    }
    for (const auto& [id, seqs] : committed) {
      committedOf_[id].insert(seqs.begin(), seqs.end());
      if (seqs.size() > 1) twice(id, seqs);
    }
  }

  // Cluster: every decision etcd held against the agents' final branches and
  // the coordinator's record of its seq.
  void etcdDecisions() {
    for (const auto& [seq, d] : in_.etcd->decisions) {
      if (d.malformed) {
        add(K::EtcdDisagrees, seq, "malformed decision in etcd: " + d.key + " = '" + d.value + "'");
        continue;
      }
      if (!d.laterValue.empty()) {
        add(K::EtcdDisagrees, seq, "decision " + d.key + " was read as '" + d.value + "' and later as '" + d.laterValue +
                                       "' (a decision is created once and never changed)");
      }
      std::string held = "etcd holds '" + d.value + "' for seq " + seqText(seq);
      const auto* sv = view(seq);
      std::vector<const AgentBranch*> none;
      const auto& branches = sv == nullptr ? none : sv->branches;
      const auto* r = record(seq);
      bool recordCounts = r != nullptr && !r->heuristic();
      if (d.commit) {
        for (const auto& [participant, number] : d.branches) {
          Xid xid{seq, number};
          auto at = std::find_if(branches.begin(), branches.end(),
                                 [&](const AgentBranch* b) { return b->agent == participant && b->xid == xid; });
          if (at == branches.end()) {
            add(K::EtcdDisagrees, seq, held + ", but " + participant + " has no record of its branch " + xid.str());
          } else if ((*at)->state != BranchStatus::Committed) {
            add(K::EtcdDisagrees, seq,
                held + ", but " + xid.str() + " at " + participant + " is " + branchStatusName((*at)->state));
          }
        }
        for (const auto* b : branches) {
          bool listed = std::any_of(d.branches.begin(), d.branches.end(), [&](const auto& l) {
            return l.first == b->agent && l.second == b->xid.branch;
          });
          if (!listed && b->state == BranchStatus::RolledBack) {
            add(K::EtcdDisagrees, seq, held + ", but " + b->xid.str() + " at " + b->agent + " is rolled back");
          }
        }
        if (recordCounts && r->state == IState::RolledBack) {
          add(K::EtcdDisagrees, seq, held + ", but the coordinator's record says rolled-back");
        }
      } else {
        for (const auto* b : branches) {
          if (b->state == BranchStatus::Committed) {
            add(K::EtcdDisagrees, seq, held + ", but " + b->xid.str() + " at " + b->agent + " is committed");
          }
        }
        if (recordCounts && r->state == IState::Committed) {
          add(K::EtcdDisagrees, seq, held + ", but the coordinator's record says committed");
        }
      }
    }
  }

  // Cluster: every request id's fate in etcd against the interactions of
  // that id that committed.
  void etcdRequestFates() {
    static const std::set<std::uint64_t> kNone;
    for (const auto& [id, f] : in_.etcd->requests) {
      if (f.seq == 0) {
        add(K::EtcdDisagrees, 0, "malformed request fate in etcd for request id " + id + ": '" + f.value + "'");
        continue;
      }
      if (!f.laterValue.empty()) {
        add(K::EtcdDisagrees, f.seq, "the fate of request id " + id + " in etcd was read as '" + f.value +
                                         "' and later as '" + f.laterValue + "' (it is decided once)");
      }
      auto it = committedOf_.find(id);
      const auto& committed = it == committedOf_.end() ? kNone : it->second;
      std::string held = "etcd says request id " + id + (f.committed ? " committed as seq " : " was rolled back as seq ") +
                         seqText(f.seq);
      if (f.committed) {
        const auto* r = record(f.seq);
        if (r != nullptr && !r->heuristic() && r->state != IState::Committed) {
          add(K::EtcdDisagrees, f.seq, held + ", but the coordinator's record of it says " + recordSays(f.seq));
        }
        if (const auto* sv = view(f.seq); sv != nullptr && sv->anyRolledBack()) {
          add(K::EtcdDisagrees, f.seq, held + ", but a branch of it is rolled back at an agent");
        }
      }
      for (auto s : committed) {
        if (f.committed && s == f.seq) continue;
        add(K::EtcdDisagrees, s, held + ", but seq " + seqText(s) + " of that request id committed");
      }
    }
  }

  // "bank-1 debit, bank-2 credit": what a seq's record says it ran.
  std::string ran(std::uint64_t seq) const {
    const auto* r = record(seq);
    if (r == nullptr) return "?";
    std::string out;
    for (const auto& b : r->branches) {
      for (const auto& op : b.ops) out += (out.empty() ? "" : ", ") + b.participant + " " + opKindName(op.kind);
    }
    return out;
  }

  void twice(const std::string& id, const std::vector<std::uint64_t>& seqs) {
    if (!twice_.insert(id).second) return;
    std::string list;
    for (auto s : seqs) list += (list.empty() ? "" : ", ") + seqText(s) + " (" + ran(s) + ")";
    add(K::RequestCommittedTwice, seqs.back(), "request id " + id + " committed more than once: seqs " + list);
  }

  void coordinatorAgainstAgents() {
    for (const auto& [seq, rec] : in_.coordinator.interactions) {
      if (rec.heuristic()) {
        if (!in_.heuristicExpected) {
          add(K::Heuristic, seq, std::string("interaction ended ") + stateName(rec.state) + ": " + rec.error);
        }
        continue;
      }
      if (!rec.finished()) {
        add(K::Unsettled, seq, std::string("interaction left unfinished (") + stateName(rec.state) + ")");
        continue;
      }
      const auto* sv = view(seq);
      if (sv == nullptr) continue;
      if (rec.state == IState::Committed) {
        for (auto* b : sv->branches) {
          if (b->state == BranchStatus::RolledBack) {
            add(K::CoordinatorDisagrees, seq,
                "coordinator says committed, but " + b->xid.str() + " at " + b->agent + " is rolled back");
          }
        }
      } else if (sv->anyCommitted()) {
        add(K::CoordinatorDisagrees, seq, "coordinator says rolled back, but a branch is committed at an agent");
      }
    }
    for (const auto& [seq, sv] : bySeq_) {
      if (in_.coordinator.interactions.count(seq) != 0) continue;
      for (auto* b : sv.branches) {
        if (b->state == BranchStatus::Committed) {
          add(K::CoordinatorDisagrees, seq,
              "branch " + b->xid.str() + " committed at " + b->agent + " but the coordinator has no record");
        }
      }
    }
    if (in_.coordinator.unfinished != 0) {
      add(K::Unsettled, 0,
          std::to_string(in_.coordinator.unfinished) + " interactions unfinished at the coordinator after healing");
    }
  }

  // Host systems: what the coordinator decided against each key's state
  // at the host (docs/hosts.md: the key of operation i of branch X is
  // "X/i"). A heuristic interaction's keys are excused either way.
  void hostKeys() {
    std::set<std::pair<std::string, std::string>> accounted;  // (agent, key) of a finished interaction's branch
    for (const auto& [seq, rec] : in_.coordinator.interactions) {
      bool committed = rec.state == IState::Committed;
      if (!rec.heuristic() && !committed && rec.state != IState::RolledBack) continue;
      for (const auto& br : rec.branches) {
        auto host = in_.hostKeys.find(br.participant);
        if (host == in_.hostKeys.end()) continue;
        std::string xid = Xid{seq, br.branch}.str();
        for (std::size_t i = 0; i < br.ops.size(); ++i) {
          std::string key = xid + "/" + std::to_string(i);
          accounted.insert({br.participant, key});
          if (rec.heuristic()) continue;
          auto k = host->second.find(key);
          std::string state = k == host->second.end() ? "unknown to it" : k->second;
          if (committed && state != "confirmed") {
            add(K::CommitNotKept, seq, "committed, but key " + key + " at " + br.participant + "'s host is " + state);
          } else if (!committed && state == "confirmed") {
            add(K::RollbackNotKept, seq, "rolled back, but key " + key + " at " + br.participant + "'s host is confirmed");
          }
        }
      }
    }
    for (const auto& [agent, keys] : in_.hostKeys) {
      for (const auto& [key, state] : keys) {
        if (state == "confirmed" && accounted.count({agent, key}) == 0) {
          add(K::CoordinatorDisagrees, 0,
              "key " + key + " is confirmed at " + agent + "'s host, but no finished interaction has it");
        }
      }
    }
  }

  void books() {
    std::int64_t total = 0, held = 0;
    for (const auto& b : in_.books) {
      if (b.prepared != 0 || b.active != 0) {
        add(K::Unsettled, 0, b.agent + " still has " + std::to_string(b.prepared) + " prepared and " +
                                 std::to_string(b.active) + " active branches");
      }
      for (const auto& [name, a] : b.accounts) {
        total += a.balance;
        held += a.held;
        if (a.balance < 0) add(K::Money, 0, "negative balance " + std::to_string(a.balance) + " in " + b.agent + ":" + name);
      }
    }
    if (total != in_.startTotal) {
      add(K::Money, 0, "money not conserved: started with " + std::to_string(in_.startTotal) + ", ended with " +
                           std::to_string(total));
    }
    if (held != 0) add(K::Money, 0, "money still held after healing: " + std::to_string(held));
    for (const auto& b : in_.books) {
      for (const auto& gid : b.hostPrepared) add(K::Unsettled, 0, b.agent + "'s host still holds prepared transaction " + gid);
    }
    if (in_.lowestBalanceSeen < 0) {
      add(K::Money, 0, "a balance went negative during the run: " + std::to_string(in_.lowestBalanceSeen));
    }
  }

  // Every account against its committed history: the operations of every
  // committed interaction (of a heuristic one, of its committed branches).
  //
  // Cluster: a record rebuilt from etcd's COMMIT after its coordinator
  // crashed (its own record was lazy) lists the branches but not their
  // operations; those come from the client's request that names the seq.
  void history() {
    if (in_.startBalances.empty()) return;
    std::map<std::uint64_t, const Attempt*> asked;  // seq -> the request a client heard it named in
    if (in_.etcd) {
      for (const auto& a : in_.attempts) {
        if (a.seq != 0) asked.emplace(a.seq, &a);
        for (const auto& t : a.tries) {
          if (t.answer && t.answer->seq != 0) asked.emplace(t.answer->seq, &a);
        }
      }
    }
    std::map<std::string, std::int64_t> expected = in_.startBalances;
    for (const auto& [seq, rec] : in_.coordinator.interactions) {
      if (rec.state != IState::Committed && !rec.heuristic()) continue;
      for (const auto& br : rec.branches) {
        if (rec.heuristic() && br.state != InteractionRecord::BranchState::Committed) continue;
        std::vector<Op> fromClient;
        if (in_.etcd && br.ops.empty()) {
          auto a = asked.find(seq);
          if (a == asked.end()) {
            add(K::AccountHistory, seq, "committed branch " + Xid{seq, br.branch}.str() + " at " + br.participant +
                                            ": neither its record nor a client's request says what it did");
            continue;
          }
          for (const auto& op : a->second->ops) {
            if (op.participant == br.participant) fromClient.push_back(op);
          }
        }
        for (const auto& raw : br.ops.empty() ? fromClient : br.ops) {
          auto op = raw.kind == OpKind::Sql ? sqlbank::fromSql(raw) : std::optional<Op>(raw);
          if (!op || (op->kind != OpKind::Debit && op->kind != OpKind::Credit)) continue;
          expected[op->participant + ":" + op->account] += op->kind == OpKind::Credit ? op->amount : -op->amount;
        }
      }
    }
    std::map<std::string, std::int64_t> actual;
    for (const auto& b : in_.books) {
      for (const auto& [name, a] : b.accounts) actual[b.agent + ":" + name] = a.balance;
    }
    for (const auto& [acct, want] : expected) {
      auto it = actual.find(acct);
      if (it == actual.end()) {
        add(K::AccountHistory, 0, "account " + acct + " is missing at the end");
      } else if (it->second != want) {
        add(K::AccountHistory, 0, "account " + acct + " holds " + std::to_string(it->second) +
                                      ", its committed history says " + std::to_string(want));
      }
    }
  }

  const Input& in_;
  std::map<std::uint64_t, SeqView> bySeq_;
  std::set<std::pair<std::uint64_t, ClientOutcome>> checked_;
  std::set<std::string> twice_;
  std::map<std::string, std::set<std::uint64_t>> committedOf_;  // request id -> its committed seqs, as found
  std::vector<Violation> v_;
};

}  // namespace

std::vector<Violation> check(const Input& in) { return Checker(in).run(); }

SelfCheckVerdict judgeSelfCheck(const std::vector<Violation>& v, std::uint64_t plantedSeq) {
  std::set<ViolationKind> explained = {K::NotAtomic, K::RollbackNotKept, K::CoordinatorDisagrees, K::Money,
                                       K::AccountHistory};
  if (plantedSeq != 0) explained.insert(K::EtcdDisagrees);
  std::size_t planted = 0;
  bool plantedDecision = false;
  for (const auto& x : v) {
    if (x.kind == K::NotAtomic) ++planted;
    if (x.kind == K::EtcdDisagrees && x.seq == plantedSeq) plantedDecision = true;
    if (explained.count(x.kind) == 0) {
      return {false, std::string("the checker reported a violation the planted break does not cause: [") +
                         violationKindName(x.kind) + "] " + (x.seq ? "seq " + seqText(x.seq) + ": " : "") +
                         x.what};
    }
  }
  if (planted == 0) {
    return {false, std::string("the checker did not report the planted break (no ") +
                       violationKindName(K::NotAtomic) + " violation among " + std::to_string(v.size()) + ")"};
  }
  if (plantedSeq != 0 && !plantedDecision) {
    return {false, "the checker did not report the ABORT planted in etcd for committed seq " +
                       seqText(plantedSeq) + " (no " + violationKindName(K::EtcdDisagrees) +
                       " violation naming it)"};
  }
  return {true, "the checker found the planted break: " + std::to_string(planted) + " " +
                    violationKindName(K::NotAtomic) + " interactions" +
                    (plantedSeq != 0 ? ", and the ABORT planted in etcd for seq " + seqText(plantedSeq) : "") +
                    " (" + std::to_string(v.size()) + " violations, all of kinds the plants cause)"};
}

}  // namespace keel::chaos
