#pragma once
// The ledger resource adapter: accounts in the agent's own LMDB, escrow
// style. Prepare checks the rule (no overdraft) and places a hold; commit
// applies; rollback releases. Holds are per account amounts, so independent
// transfers on one account run concurrently without locks.
//
// Every function runs on the agent's log writer thread inside a write
// transaction that also carries the branch state change, so a branch's
// state and its effect on balances commit atomically.
//
// Holds live in memory (Holds below), not in the accounts tree: a hold is
// exactly the debits of a branch that is ACTIVE or PREPARED, and that
// branch's record — durable with the state that placed it — lists them. So
// the hold is as durable as before, a prepare writes no account leaf (only
// the commit does, once, for the balance), and a start rebuilds the table
// from the unfinished branches. Agents before this change kept the hold in
// AccountRecord::held; the first start of this version sets those to 0 in
// the same write that rebuilds the table (participant/agent.cc).
//
// Account invariants (checked by tests): 0 <= held <= balance for an open
// account; balance only changes at commit.

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
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

// What the ACTIVE and PREPARED branches among `branches` hold on each
// account (the sum of their debits; accounts without a hold absent).
std::unordered_map<std::string, std::int64_t> holdsOf(const std::vector<BranchRecord>& branches);

// The table of holds the prepares check against: what ACTIVE and PREPARED
// branches hold on each account. Used and changed only on the log's writer
// thread, by the functions below, in step with the transaction they run in.
// (Views of the accounts do not read it: they take the holds from the
// unfinished branches in their own read transaction, holdsOf, so that they
// show durable state only.)
//
// A transaction rolled back after it changed the table (a job that threw, a
// group whose commit failed) leaves the table out of step with LMDB: the
// log's Options::onRolledBack calls markStale(), and the next job's
// refresh() rebuilds the table from the unfinished branches it can see. A
// ledger function that fails a rule undoes its own changes before it
// returns (prepareOps).
class Holds {
 public:
  std::int64_t of(const std::string& account) const;
  std::int64_t total() const;
  std::size_t accounts() const { return held_.size(); }  // accounts with a hold
  // Any thread (the log's rollback hook).
  void markStale() noexcept { stale_.store(true, std::memory_order_relaxed); }
  // First thing in every job that reads or changes holds: rebuilds from
  // `unfinished()` (the branch log's ACTIVE and PREPARED records as the
  // job's transaction sees them, fetched only when needed) if stale.
  template <typename Fetch>
  void refresh(Fetch&& unfinished) {
    if (stale_.exchange(false, std::memory_order_relaxed)) rebuild(unfinished());
  }
  // Replaces the whole table by holdsOf(branches) (no longer stale).
  void rebuild(const std::vector<BranchRecord>& branches);

  void add(const std::string& account, std::int64_t amount);
  // Throws std::logic_error (changing nothing) if less than `amount` is held.
  void release(const std::string& account, std::int64_t amount);

 private:
  std::unordered_map<std::string, std::int64_t> held_;  // only accounts with a hold
  std::atomic<bool> stale_{true};                        // built by the first job
};

// Checks an operation's shape (kind, account name, amount) without touching
// storage. Returns an error text, or nullopt when well formed.
std::optional<std::string> checkOp(const Op& op);

// Prepare-time effects of `ops` for branch `xid`: places holds, creates
// opening accounts. On failure the holds it placed are released again and
// the caller must discard the transaction.
ExecOutcome prepareOps(lmdb::Txn& txn, MDB_dbi accounts, Holds& holds, Xid xid, const std::vector<Op>& ops);
// Commit-time effects of ops prepared earlier by prepareOps.
void commitOps(lmdb::Txn& txn, MDB_dbi accounts, Holds& holds, Xid xid, const std::vector<Op>& ops);
// Releases what prepareOps placed.
void rollbackOps(lmdb::Txn& txn, MDB_dbi accounts, Holds& holds, Xid xid, const std::vector<Op>& ops);

std::optional<AccountRecord> readAccount(const lmdb::Txn& txn, MDB_dbi accounts, const std::string& name);

}  // namespace keel::ledger
