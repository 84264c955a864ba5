#include "participant/adapters/ledger.h"

namespace keel::ledger {

std::unordered_map<std::string, std::int64_t> holdsOf(const std::vector<BranchRecord>& branches) {
  std::unordered_map<std::string, std::int64_t> held;
  for (const auto& rec : branches) {
    if (rec.state != BranchStatus::Active && rec.state != BranchStatus::Prepared) continue;
    for (const auto& op : rec.ops) {
      if (op.kind == OpKind::Debit) held[op.account] += op.amount;
    }
  }
  return held;
}

std::int64_t Holds::of(const std::string& account) const {
  auto it = held_.find(account);
  return it == held_.end() ? 0 : it->second;
}

std::int64_t Holds::total() const {
  std::int64_t t = 0;
  for (const auto& [name, amount] : held_) t += amount;
  return t;
}

void Holds::rebuild(const std::vector<BranchRecord>& branches) {
  stale_.store(false, std::memory_order_relaxed);
  held_ = holdsOf(branches);
}

void Holds::add(const std::string& account, std::int64_t amount) { held_[account] += amount; }

void Holds::release(const std::string& account, std::int64_t amount) {
  auto it = held_.find(account);
  // Releasing more than is held would mean a branch released twice: keep
  // the table from going negative (which would let a debit overdraw) and
  // fail the job; its rollback marks the table stale, and the next job
  // rebuilds it from the branch records.
  if (it == held_.end() || it->second < amount) {
    throw std::logic_error("ledger holds: releasing " + std::to_string(amount) + " on " + account + ", held " +
                           std::to_string(it == held_.end() ? 0 : it->second));
  }
  it->second -= amount;
  if (it->second == 0) held_.erase(it);
}

std::optional<std::string> checkOp(const Op& op) {
  if (op.kind == OpKind::Sql) return "the ledger adapter does not run SQL (use a postgres agent)";
  if (std::uint8_t(op.kind) > std::uint8_t(OpKind::ReadBalance)) {
    return "unknown operation kind " + std::to_string(int(op.kind));
  }
  if (op.account.empty()) return "account name is empty";
  if (op.account.size() > Limits::kMaxAccountName) {
    return "account name longer than " + std::to_string(Limits::kMaxAccountName) + " bytes";
  }
  switch (op.kind) {
    case OpKind::OpenAccount:
      if (op.amount < 0) return "opening balance of " + op.account + " is negative";
      break;
    case OpKind::Credit:
    case OpKind::Debit:
      if (op.amount <= 0) {
        return std::string(opKindName(op.kind)) + " of " + op.account + ": amount must be positive, got " +
               std::to_string(op.amount);
      }
      break;
    case OpKind::ReadBalance:
    case OpKind::Sql:
      break;
  }
  if (op.amount > Limits::kMaxAmount) {
    return std::string(opKindName(op.kind)) + " of " + op.account + ": amount " + std::to_string(op.amount) +
           " exceeds the limit " + std::to_string(Limits::kMaxAmount);
  }
  return std::nullopt;
}

std::optional<AccountRecord> readAccount(const lmdb::Txn& txn, MDB_dbi accounts, const std::string& name) {
  auto v = txn.get(accounts, name);
  if (!v) return std::nullopt;
  return decodeAccount(*v);
}

namespace {

void write(lmdb::Txn& txn, MDB_dbi accounts, const std::string& name, const AccountRecord& a) {
  txn.put(accounts, name, encode(a));
}

// An account usable by branch `xid`: open, or being opened by this branch.
bool usable(const AccountRecord& a, Xid xid) { return !a.opening || a.openedBy == xid; }

}  // namespace

ExecOutcome prepareOps(lmdb::Txn& txn, MDB_dbi accounts, Holds& holds, Xid xid, const std::vector<Op>& ops) {
  ExecOutcome out;
  out.results.resize(ops.size());
  // Holds placed so far by this call: released again if a later op fails.
  std::vector<const Op*> placed;
  auto fail = [&](std::string why) {
    for (const Op* p : placed) holds.release(p->account, p->amount);
    return ExecOutcome{false, std::move(why), {}, false};
  };
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    if (auto bad = checkOp(op)) return fail(*bad);
    auto acct = readAccount(txn, accounts, op.account);
    if (op.kind == OpKind::OpenAccount) {
      if (acct) return fail("account " + op.account + " already exists");
      AccountRecord a;
      a.opening = true;
      a.openedBy = xid;
      write(txn, accounts, op.account, a);
      out.readOnly = false;
      continue;
    }
    if (!acct || !usable(*acct, xid)) return fail("unknown account " + op.account);
    switch (op.kind) {
      case OpKind::Credit:
        if (acct->balance > Limits::kMaxAmount * 1000 - op.amount) {
          return fail("credit would overflow account " + op.account);
        }
        out.readOnly = false;  // applied at commit
        break;
      case OpKind::Debit: {
        std::int64_t available = acct->balance - holds.of(op.account);
        if (available < op.amount) {
          return fail("insufficient funds in " + op.account + ": available " + std::to_string(available) +
                      ", debit " + std::to_string(op.amount));
        }
        // The hold: in memory, durable as the debit in the branch's record.
        holds.add(op.account, op.amount);
        placed.push_back(&op);
        out.readOnly = false;
        break;
      }
      case OpKind::Sql:
        break;
      case OpKind::ReadBalance:
        out.results[i].balance = acct->balance;
        out.results[i].available = acct->balance - holds.of(op.account);
        break;
      case OpKind::OpenAccount:
        break;
    }
  }
  return out;
}

void commitOps(lmdb::Txn& txn, MDB_dbi accounts, Holds& holds, Xid xid, const std::vector<Op>& ops) {
  for (const Op& op : ops) {
    if (op.kind == OpKind::ReadBalance) continue;
    auto acct = readAccount(txn, accounts, op.account);
    if (!acct) throw std::logic_error("commit of " + xid.str() + ": account " + op.account + " vanished");
    switch (op.kind) {
      case OpKind::OpenAccount:
        if (acct->opening && acct->openedBy == xid) {
          acct->opening = false;
          acct->balance = op.amount;
        }
        break;
      case OpKind::Credit:
        acct->balance += op.amount;
        break;
      case OpKind::Debit:
        acct->balance -= op.amount;
        holds.release(op.account, op.amount);
        break;
      case OpKind::ReadBalance:
      case OpKind::Sql:
        break;
    }
    write(txn, accounts, op.account, *acct);
  }
}

void rollbackOps(lmdb::Txn& txn, MDB_dbi accounts, Holds& holds, Xid xid, const std::vector<Op>& ops) {
  for (const Op& op : ops) {
    if (op.kind == OpKind::Debit) {
      holds.release(op.account, op.amount);
    } else if (op.kind == OpKind::OpenAccount) {
      auto acct = readAccount(txn, accounts, op.account);
      if (acct && acct->opening && acct->openedBy == xid) txn.del(accounts, op.account);
    }
  }
}

}  // namespace keel::ledger
