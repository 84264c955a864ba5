#pragma once
// HostBooks: keel-host's accounts and its answers per idempotency key, the
// try / confirm / cancel contract of docs/hosts.md as plain logic (no HTTP).
//
// One LMDB environment in the host's data directory:
//
//   accounts  name -> balance, held, incoming (int64 each). Available =
//             balance - held: neither a hold nor a pending credit can be spent.
//   keys      idempotency key -> what the host did for it (KeyRecord): the
//             state the key ended in and the operation it was tried with, so
//             a repeated call gets the same answer and no second effect.
//   meta      the next reference number ("H-<n>") and the counters of
//             /v1/stats.
//
// Effects per operation:
//   debit   try holds the amount (held += a); confirm posts the hold
//           (balance -= a, held -= a); cancel releases it (held -= a).
//   credit  by default a pending credit at try (incoming += a), posted at
//           confirm (balance += a, incoming -= a), dropped at cancel
//           (incoming -= a): nobody sees or spends money the decision may
//           still take away. With CreditMode::PostAtTry (keel-host
//           --post-credits-at-try, a host that posts at once) it is posted
//           at try (balance += a); confirm changes nothing but the key's
//           state; cancel reverses it (balance -= a). A reversal is applied
//           even if the account has spent the credit meanwhile: the balance
//           may go negative (a real host would book an overdraft; refusing
//           would leave a credit Keel rolled back in place). That is the
//           isolation caveat of docs/hosts.md, shown on purpose. Each key
//           remembers how its try was applied, so a restart in the other
//           mode still confirms and cancels it right.
//
// A key's states (KeyState):
//   Tried      a try was applied (held or posted) and waits for confirm or
//              cancel; the host never ends it on its own.
//   Refused    the try was refused (422) and changed nothing; the same try
//              is refused again with the same reason; cancel answers 200,
//              confirm 409 cancelled (nothing was ever applied).
//   Confirmed  final: a repeated confirm answers 200, a cancel 409 confirmed.
//   Cancelled  a tried key's effect undone: final; a repeated cancel answers
//              200, a confirm or a try 409 cancelled.
//   Tombstone  a cancel came before any try ("cancel before try"): a later
//              try answers 409 cancelled and changes nothing.
//
// Writes take the caller's write transaction: their answer holds only once
// that transaction commits, so it must be durable before reply (keel-host
// runs them as GroupCommitLog jobs and answers after the group commit).
// Reads open their own short read transaction. Not thread-safe beyond what
// LMDB gives: one writer thread, readers on any thread.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/lmdb.h"

namespace keel::host {

enum class OpKind : std::uint8_t { Debit, Credit };
const char* opKindName(OpKind k);  // "debit" / "credit"

enum class KeyState : std::uint8_t { Tried, Refused, Confirmed, Cancelled, Tombstone };
const char* keyStateName(KeyState s);  // "tried", "refused", "confirmed", "cancelled", "tombstone"

// One HTTP answer: status and JSON body.
struct Answer {
  int status = 200;
  std::string body;
};

// The fields of a try (docs/hosts.md, "try").
struct TryCall {
  std::string key;  // "<xid>/<index>"
  std::string xid;
  std::uint64_t index = 0;
  OpKind kind = OpKind::Debit;
  std::string account;
  std::int64_t amount = 0;
};

struct Account {
  std::string name;
  std::int64_t balance = 0;
  std::int64_t held = 0;      // debits tried, not yet confirmed or cancelled
  std::int64_t incoming = 0;  // credits tried (pending mode), not yet confirmed or cancelled
};

// How a credit's try is applied (see the header comment).
enum class CreditMode : std::uint8_t { Pending, PostAtTry };

// What the host keeps per key.
struct KeyRecord {
  KeyState state = KeyState::Tombstone;
  OpKind kind = OpKind::Debit;
  std::int64_t amount = 0;
  std::string account;
  std::string ref;     // "H-<n>" for an applied try
  std::string reason;  // a refusal's reason
  bool posted = false;  // a credit posted at try (CreditMode::PostAtTry)
};

// A try in state Tried (GET /v1/open).
struct OpenTry {
  std::string key;
  OpKind kind = OpKind::Debit;
  std::string account;
  std::int64_t amount = 0;
  std::string ref;
};

// GET /v1/stats. Keys counted by what happened to them: tried = tries
// applied (open + confirmed + cancelled), cancelled = applied tries undone,
// tombstones = cancels before any try. calls = every try, confirm and cancel
// the books answered, repeats included. commits = durable group commits of
// this process (not kept across restarts; keel-host fills it from its
// GroupCommitLog): well below calls under concurrent load.
struct Stats {
  std::uint64_t tried = 0, confirmed = 0, cancelled = 0, refused = 0, tombstones = 0, open = 0, calls = 0;
  std::uint64_t commits = 0;
};

class HostBooks {
 public:
  static constexpr std::int64_t kMaxAmount = 1'000'000'000'000'000;  // 10^15
  static constexpr std::size_t kMaxName = 256;  // bytes of a key or an account name (LMDB keys: 511)

  // Opens (creating) the environment in `dir`, an existing directory
  // (DataDir's job).
  HostBooks(const std::string& dir, std::size_t mapSizeBytes, CreditMode credits = CreditMode::Pending);

  lmdb::Env& env() { return env_; }

  // The contract calls (docs/hosts.md, "The calls"). Must be durable before
  // reply: the answer is only true once `txn` commits.
  Answer tryOp(lmdb::Txn& txn, const TryCall& call);
  Answer confirm(lmdb::Txn& txn, std::string_view key);
  Answer cancel(lmdb::Txn& txn, std::string_view key);

  // POST /v1/accounts: 200 with the account, 409 if it exists.
  Answer openAccount(lmdb::Txn& txn, std::string_view name, std::int64_t balance);
  // --accounts N --balance B: acct-0 .. acct-(N-1), those missing created
  // with `balance`. Returns how many were created.
  std::size_t ensureAccounts(lmdb::Txn& txn, std::size_t count, std::int64_t balance);

  // Reads, each in its own read transaction.
  std::vector<Account> accounts() const;
  std::optional<Account> account(std::string_view name) const;
  std::optional<KeyRecord> keyRecord(std::string_view key) const;
  std::vector<OpenTry> openTries() const;
  // Every key and its state, in key order (GET /v1/keys: a checker's read).
  std::vector<std::pair<std::string, KeyState>> keyStates() const;
  Stats stats() const;

 private:
  std::optional<Account> readAccount(const lmdb::Txn& txn, std::string_view name) const;
  void writeAccount(lmdb::Txn& txn, const Account& a);
  std::optional<KeyRecord> readKey(const lmdb::Txn& txn, std::string_view key) const;
  void writeKey(lmdb::Txn& txn, std::string_view key, const KeyRecord& r);
  // Moves one key into `to` (from `from`, if it had a state), keeping the
  // per-state counters in meta.
  void count(lmdb::Txn& txn, std::optional<KeyState> from, KeyState to);
  std::uint64_t meta(const lmdb::Txn& txn, std::string_view name) const;
  void setMeta(lmdb::Txn& txn, std::string_view name, std::uint64_t v);
  // Undoes an applied try's effect on its account (cancel).
  void undo(lmdb::Txn& txn, const KeyRecord& r);

  lmdb::Env env_;
  MDB_dbi accounts_, keys_, meta_;
  CreditMode credits_;
};

// JSON renderings for the read endpoints.
std::string accountJson(const Account& a);
std::string accountsJson(const std::vector<Account>& all);
std::string openJson(const std::vector<OpenTry>& open);
std::string keysJson(const std::vector<std::pair<std::string, KeyState>>& keys);
std::string statsJson(const Stats& s);

}  // namespace keel::host
