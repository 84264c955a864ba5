#include "tools/chaos/checker.h"

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
    coordinatorAgainstAgents();
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
      if (o.replayed) {
        auto row = in_.coordinator.requests.find(a.requestId);
        std::uint64_t named = row == in_.coordinator.requests.end() ? 0 : row->second;
        if (named != o.seq) {
          add(K::AnswerDisagrees, o.seq, "a retry of request id " + a.requestId + " was answered as seq " +
                                             std::to_string(o.seq) + ", but the coordinator's requests table names " +
                                             (named == 0 ? std::string("none") : "seq " + std::to_string(named)));
        }
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
      for (auto s : seqs) list += (list.empty() ? "" : ", ") + std::to_string(s);
      add(K::AnswerDisagrees, *seqs.rbegin(), "request id " + a.requestId + " was answered with several seqs: " + list);
    }
    std::vector<std::uint64_t> committed;
    for (auto s : seqs) {
      if (const auto* r = record(s); r != nullptr && r->state == IState::Committed) committed.push_back(s);
    }
    auto row = in_.coordinator.requests.find(a.requestId);
    std::uint64_t named = row == in_.coordinator.requests.end() ? 0 : row->second;
    if (committed.size() > 1) {
      twice(a.requestId, committed);
    } else if (committed.size() == 1 && named != committed[0]) {
      add(K::AnswerDisagrees, committed[0],
          "request id " + a.requestId + " committed as seq " + std::to_string(committed[0]) +
              ", but the coordinator's requests table names " +
              (named == 0 ? std::string("none") : "seq " + std::to_string(named)) + " (a retry would hear another story)");
    }
    if (a.answer && a.answer->seq != 0 && definitive(a.answer->outcome) && named != a.answer->seq) {
      add(K::AnswerDisagrees, a.answer->seq,
          "request id " + a.requestId + " was last answered as seq " + std::to_string(a.answer->seq) + " (" +
              clientOutcomeName(a.answer->outcome) + "), but the coordinator's requests table names " +
              (named == 0 ? std::string("none") : "seq " + std::to_string(named)));
    }
  }

  // The same from the coordinator's side: its records carry the request id.
  void requestIdsByRecord() {
    std::map<std::string, std::vector<std::uint64_t>> committed;
    for (const auto& [seq, r] : in_.coordinator.interactions) {
      if (!r.requestId.empty() && r.state == IState::Committed) committed[r.requestId].push_back(seq);
    }
    for (const auto& [id, seqs] : committed) {
      if (seqs.size() > 1) twice(id, seqs);
    }
  }

  void twice(const std::string& id, const std::vector<std::uint64_t>& seqs) {
    if (!twice_.insert(id).second) return;
    std::string list;
    for (auto s : seqs) list += (list.empty() ? "" : ", ") + std::to_string(s);
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
  void history() {
    if (in_.startBalances.empty()) return;
    std::map<std::string, std::int64_t> expected = in_.startBalances;
    for (const auto& [seq, rec] : in_.coordinator.interactions) {
      if (rec.state != IState::Committed && !rec.heuristic()) continue;
      for (const auto& br : rec.branches) {
        if (rec.heuristic() && br.state != InteractionRecord::BranchState::Committed) continue;
        for (const auto& raw : br.ops) {
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
  std::vector<Violation> v_;
};

}  // namespace

std::vector<Violation> check(const Input& in) { return Checker(in).run(); }

SelfCheckVerdict judgeSelfCheck(const std::vector<Violation>& v) {
  static const std::set<ViolationKind> explained = {K::NotAtomic, K::RollbackNotKept, K::CoordinatorDisagrees,
                                                    K::Money, K::AccountHistory};
  std::size_t planted = 0;
  for (const auto& x : v) {
    if (x.kind == K::NotAtomic) ++planted;
    if (explained.count(x.kind) == 0) {
      return {false, std::string("the checker reported a violation the planted break does not cause: [") +
                         violationKindName(x.kind) + "] " + (x.seq ? "seq " + std::to_string(x.seq) + ": " : "") +
                         x.what};
    }
  }
  if (planted == 0) {
    return {false, std::string("the checker did not report the planted break (no ") +
                       violationKindName(K::NotAtomic) + " violation among " + std::to_string(v.size()) + ")"};
  }
  return {true, "the checker found the planted break: " + std::to_string(planted) + " " +
                    violationKindName(K::NotAtomic) + " interactions (" + std::to_string(v.size()) +
                    " violations, all of kinds that break causes)"};
}

}  // namespace keel::chaos
