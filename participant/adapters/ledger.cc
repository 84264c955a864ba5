#include "participant/adapters/ledger.h"

namespace keel::ledger {

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

ExecOutcome prepareOps(lmdb::Txn& txn, MDB_dbi accounts, Xid xid, const std::vector<Op>& ops) {
  ExecOutcome out;
  out.results.resize(ops.size());
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    if (auto bad = checkOp(op)) return ExecOutcome{false, *bad, {}, false};
    auto acct = readAccount(txn, accounts, op.account);
    if (op.kind == OpKind::OpenAccount) {
      if (acct) return ExecOutcome{false, "account " + op.account + " already exists", {}, false};
      AccountRecord a;
      a.opening = true;
      a.openedBy = xid;
      write(txn, accounts, op.account, a);
      out.readOnly = false;
      continue;
    }
    if (!acct || !usable(*acct, xid)) {
      return ExecOutcome{false, "unknown account " + op.account, {}, false};
    }
    switch (op.kind) {
      case OpKind::Credit:
        if (acct->balance > Limits::kMaxAmount * 1000 - op.amount) {
          return ExecOutcome{false, "credit would overflow account " + op.account, {}, false};
        }
        out.readOnly = false;  // applied at commit
        break;
      case OpKind::Debit: {
        std::int64_t available = acct->balance - acct->held;
        if (available < op.amount) {
          return ExecOutcome{false,
                             "insufficient funds in " + op.account + ": available " +
                                 std::to_string(available) + ", debit " + std::to_string(op.amount),
                             {}, false};
        }
        acct->held += op.amount;  // the hold: durable with the PREPARED state
        write(txn, accounts, op.account, *acct);
        out.readOnly = false;
        break;
      }
      case OpKind::Sql:
        break;
      case OpKind::ReadBalance:
        out.results[i].balance = acct->balance;
        out.results[i].available = acct->balance - acct->held;
        break;
      case OpKind::OpenAccount:
        break;
    }
  }
  return out;
}

void commitOps(lmdb::Txn& txn, MDB_dbi accounts, Xid xid, const std::vector<Op>& ops) {
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
        acct->held -= op.amount;
        break;
      case OpKind::ReadBalance:
      case OpKind::Sql:
        break;
    }
    write(txn, accounts, op.account, *acct);
  }
}

void rollbackOps(lmdb::Txn& txn, MDB_dbi accounts, Xid xid, const std::vector<Op>& ops) {
  for (const Op& op : ops) {
    if (op.kind != OpKind::Debit && op.kind != OpKind::OpenAccount) continue;
    auto acct = readAccount(txn, accounts, op.account);
    if (!acct) continue;
    if (op.kind == OpKind::OpenAccount) {
      if (acct->opening && acct->openedBy == xid) txn.del(accounts, op.account);
    } else {
      acct->held -= op.amount;
      write(txn, accounts, op.account, *acct);
    }
  }
}

}  // namespace keel::ledger
