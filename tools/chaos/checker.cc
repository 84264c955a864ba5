#include "tools/chaos/checker.h"

#include <set>

#include "tools/sql_bank.h"

namespace keel::chaos {

namespace {

using IState = InteractionRecord::State;

struct SeqView {
  std::vector<const AgentBranch*> branches;
  bool anyCommitted() const {
    for (auto* b : branches) {
      if (b->state == BranchStatus::Committed) return true;
    }
    return false;
  }
  bool anyRolledBack() const {
    for (auto* b : branches) {
      if (b->state == BranchStatus::RolledBack) return true;
    }
    return false;
  }
};

}  // namespace

std::vector<Violation> check(const Input& in) {
  std::vector<Violation> v;
  auto add = [&](std::uint64_t seq, std::string what) { v.push_back(Violation{seq, std::move(what)}); };

  std::map<std::uint64_t, SeqView> bySeq;
  for (const auto& b : in.branches) {
    bySeq[b.xid.seq].branches.push_back(&b);
    if (b.state == BranchStatus::Prepared || b.state == BranchStatus::Active) {
      add(b.xid.seq, "branch " + b.xid.str() + " at " + b.agent + " left " + branchStatusName(b.state));
    }
  }

  // Atomicity, from the agents' own records.
  for (const auto& [seq, sv] : bySeq) {
    if (sv.anyCommitted() && sv.anyRolledBack()) {
      std::string detail;
      for (auto* b : sv.branches) detail += " " + b->xid.str() + "@" + b->agent + "=" + branchStatusName(b->state);
      add(seq, "not atomic: some branches committed, some rolled back:" + detail);
    }
  }

  // What clients were told.
  for (const auto& a : in.attempts) {
    if (!a.answer) continue;
    const auto& o = *a.answer;
    if (o.outcome == ClientOutcome::Committed) {
      // Read-only interactions leave no branch; everything else must be
      // committed at as many agents as it had participants.
      std::set<std::string> participants;
      bool writes = false;
      for (const auto& op : a.ops) {
        participants.insert(op.participant);
        writes = writes || op.kind != OpKind::ReadBalance;
      }
      if (!writes) continue;
      auto it = bySeq.find(o.seq);
      std::size_t committed = 0;
      if (it != bySeq.end()) {
        for (auto* b : it->second.branches) committed += b->state == BranchStatus::Committed ? 1 : 0;
      }
      if (committed != participants.size()) {
        add(o.seq, "acknowledged commit, but " + std::to_string(committed) + " of " +
                       std::to_string(participants.size()) + " branches are committed at the agents");
      }
      auto rec = in.coordinator.interactions.find(o.seq);
      if (rec == in.coordinator.interactions.end() || rec->second.state != IState::Committed) {
        add(o.seq, "acknowledged commit, but the coordinator's record says " +
                       std::string(rec == in.coordinator.interactions.end() ? "nothing"
                                                                           : stateName(rec->second.state)));
      }
    } else if (o.outcome == ClientOutcome::RolledBack) {
      auto it = bySeq.find(o.seq);
      if (it != bySeq.end() && it->second.anyCommitted()) {
        add(o.seq, "answered rolled back, but a branch is committed at an agent");
      }
      auto rb = in.coordinator.rollbacks.find(o.seq);
      if (rb == in.coordinator.rollbacks.end()) {
        add(o.seq, "answered rolled back, but the coordinator has no rollback record");
      } else if (rb->second.completedUs == 0 || !rb->second.pending.empty()) {
        add(o.seq, "rollback record not completed after healing");
      }
    }
  }

  // The coordinator's tables against the agents.
  for (const auto& [seq, rec] : in.coordinator.interactions) {
    if (!rec.finished()) {
      add(seq, std::string("interaction left unfinished (") + stateName(rec.state) + ")");
      continue;
    }
    auto it = bySeq.find(seq);
    if (it == bySeq.end()) continue;
    if (rec.state == IState::Committed) {
      for (auto* b : it->second.branches) {
        if (b->state == BranchStatus::RolledBack) {
          add(seq, "coordinator says committed, but " + b->xid.str() + " at " + b->agent + " is rolled back");
        }
      }
    } else if (it->second.anyCommitted()) {
      add(seq, "coordinator says rolled back, but a branch is committed at an agent");
    }
  }
  for (const auto& [seq, sv] : bySeq) {
    if (in.coordinator.interactions.count(seq) == 0) {
      for (auto* b : sv.branches) {
        if (b->state == BranchStatus::Committed) {
          add(seq, "branch " + b->xid.str() + " committed at " + b->agent + " but the coordinator has no record");
        }
      }
    }
  }
  if (in.coordinator.unfinished != 0) {
    add(0, std::to_string(in.coordinator.unfinished) + " interactions unfinished at the coordinator after healing");
  }

  // The books.
  std::int64_t total = 0, held = 0;
  for (const auto& b : in.books) {
    if (b.prepared != 0 || b.active != 0) {
      add(0, b.agent + " still has " + std::to_string(b.prepared) + " prepared and " + std::to_string(b.active) +
                 " active branches");
    }
    for (const auto& [name, a] : b.accounts) {
      total += a.balance;
      held += a.held;
      if (a.balance < 0) add(0, "negative balance " + std::to_string(a.balance) + " in " + b.agent + ":" + name);
    }
  }
  if (total != in.startTotal) {
    add(0, "money not conserved: started with " + std::to_string(in.startTotal) + ", ended with " +
               std::to_string(total));
  }
  if (held != 0) add(0, "money still held after healing: " + std::to_string(held));
  for (const auto& b : in.books) {
    for (const auto& gid : b.hostPrepared) add(0, b.agent + "'s host still holds prepared transaction " + gid);
  }

  // Every account against its committed history.
  if (!in.startBalances.empty()) {
    std::map<std::string, std::int64_t> expected = in.startBalances;
    for (const auto& [seq, rec] : in.coordinator.interactions) {
      if (rec.state != IState::Committed) continue;
      for (const auto& br : rec.branches) {
        for (const auto& raw : br.ops) {
          auto op = raw.kind == OpKind::Sql ? sqlbank::fromSql(raw) : std::optional<Op>(raw);
          if (!op || (op->kind != OpKind::Debit && op->kind != OpKind::Credit)) continue;
          expected[op->participant + ":" + op->account] += op->kind == OpKind::Credit ? op->amount : -op->amount;
        }
      }
    }
    std::map<std::string, std::int64_t> actual;
    for (const auto& b : in.books) {
      for (const auto& [name, a] : b.accounts) actual[b.agent + ":" + name] = a.balance;
    }
    for (const auto& [acct, want] : expected) {
      auto it = actual.find(acct);
      if (it == actual.end()) {
        add(0, "account " + acct + " is missing at the end");
      } else if (it->second != want) {
        add(0, "account " + acct + " holds " + std::to_string(it->second) + ", its committed history says " +
                   std::to_string(want));
      }
    }
  }
  if (in.lowestBalanceSeen < 0) {
    add(0, "a balance went negative during the run: " + std::to_string(in.lowestBalanceSeen));
  }
  return v;
}

}  // namespace keel::chaos
