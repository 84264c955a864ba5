#pragma once
// The ledger resource adapter: accounts in the agent's own LMDB, escrow
// style. Prepare checks the rule (no overdraft) and places a durable hold;
// commit applies; rollback releases. Holds are per account amounts, so
// independent transfers on one account run concurrently without locks.
//
// Every function runs on the agent's log writer thread inside a write
// transaction that also carries the branch state change, so a branch's
// state and its effect on balances commit atomically.
//
// Account invariants (checked by tests): 0 <= held <= balance for an open
// account; balance only changes at commit.

#include <optional>
#include <string>
#include <vector>

#include "common/lmdb.h"
#include "common/records.h"
#include "common/types.h"

namespace keel::ledger {

struct ExecOutcome {
  bool ok = true;
  std::string reason;  // why not ok
  std::vector<OpResult> results;
  bool readOnly = true;  // no operation changes anything
};

// Checks an operation's shape (kind, account name, amount) without touching
// storage. Returns an error text, or nullopt when well formed.
std::optional<std::string> checkOp(const Op& op);

// Prepare-time effects of `ops` for branch `xid`: places holds, creates
// opening accounts. On failure the caller must discard the transaction.
ExecOutcome prepareOps(lmdb::Txn& txn, MDB_dbi accounts, Xid xid, const std::vector<Op>& ops);
// Commit-time effects of ops prepared earlier by prepareOps.
void commitOps(lmdb::Txn& txn, MDB_dbi accounts, Xid xid, const std::vector<Op>& ops);
// Releases what prepareOps placed.
void rollbackOps(lmdb::Txn& txn, MDB_dbi accounts, Xid xid, const std::vector<Op>& ops);

std::optional<AccountRecord> readAccount(const lmdb::Txn& txn, MDB_dbi accounts, const std::string& name);

}  // namespace keel::ledger
