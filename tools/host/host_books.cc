#include "tools/host/host_books.h"

#include <cstring>
#include <stdexcept>

#include "common/records.h"  // jsonEscape

namespace keel::host {
namespace {

// Records are little-endian fixed fields followed by length-prefixed
// strings; LMDB gives no alignment promise, so everything is copied out.
void putU64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(char(v >> (8 * i)));
}
void putString(std::string& out, std::string_view s) {
  putU64(out, s.size());
  out.append(s);
}

class Reader {
 public:
  Reader(std::string_view s, std::string_view what) : s_(s), what_(what) {}
  std::uint64_t u64() {
    need(8);
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t(static_cast<unsigned char>(s_[at_ + i])) << (8 * i);
    at_ += 8;
    return v;
  }
  std::uint8_t byte() {
    need(1);
    return static_cast<std::uint8_t>(s_[at_++]);
  }
  bool more() const { return at_ < s_.size(); }
  std::string string() {
    std::uint64_t n = u64();
    need(n);
    std::string out(s_.substr(at_, n));
    at_ += n;
    return out;
  }

 private:
  void need(std::uint64_t n) const {
    if (s_.size() - at_ < n) throw std::runtime_error("keel-host: damaged " + std::string(what_) + " record");
  }
  std::string_view s_;
  std::string_view what_;
  std::size_t at_ = 0;
};

KeyRecord decodeKey(std::string_view v) {
  Reader rd(v, "key");
  KeyRecord r;
  r.state = KeyState(rd.byte());
  r.kind = OpKind(rd.byte());
  r.amount = std::int64_t(rd.u64());
  r.account = rd.string();
  r.ref = rd.string();
  r.reason = rd.string();
  if (rd.more()) r.posted = rd.byte() != 0;  // absent in records of the first version: not posted
  return r;
}

Account decodeAccount(std::string_view name, std::string_view v) {
  Reader r(v, "account");
  Account a{std::string(name), 0, 0, 0};
  a.balance = std::int64_t(r.u64());
  a.held = std::int64_t(r.u64());
  if (r.more()) a.incoming = std::int64_t(r.u64());
  return a;
}

std::string q(std::string_view s) { return "\"" + jsonEscape(s) + "\""; }

Answer refused(std::string_view reason) { return {422, "{\"result\":\"refused\",\"reason\":" + q(reason) + "}"}; }
Answer tried(std::string_view ref) { return {200, "{\"result\":\"tried\",\"ref\":" + q(ref) + "}"}; }
const Answer kCancelled409{409, "{\"result\":\"cancelled\"}"};
const Answer kCancelled200{200, "{\"result\":\"cancelled\"}"};
const Answer kConfirmed200{200, "{\"result\":\"confirmed\"}"};
const Answer kConfirmed409{409, "{\"result\":\"confirmed\"}"};
const Answer kUnknown404{404, "{\"result\":\"unknown\"}"};

// The meta counter of keys in each state.
const char* stateCounter(KeyState s) {
  switch (s) {
    case KeyState::Tried: return "n.tried";
    case KeyState::Refused: return "n.refused";
    case KeyState::Confirmed: return "n.confirmed";
    case KeyState::Cancelled: return "n.cancelled";
    case KeyState::Tombstone: break;
  }
  return "n.tombstone";
}

}  // namespace

const char* opKindName(OpKind k) { return k == OpKind::Debit ? "debit" : "credit"; }

const char* keyStateName(KeyState s) {
  switch (s) {
    case KeyState::Tried: return "tried";
    case KeyState::Refused: return "refused";
    case KeyState::Confirmed: return "confirmed";
    case KeyState::Cancelled: return "cancelled";
    case KeyState::Tombstone: break;
  }
  return "tombstone";
}

HostBooks::HostBooks(const std::string& dir, std::size_t mapSizeBytes, CreditMode credits)
    : env_(dir, lmdb::EnvOptions{.mapSize = mapSizeBytes}), credits_(credits) {
  accounts_ = env_.openDb("accounts");
  keys_ = env_.openDb("keys");
  meta_ = env_.openDb("meta");
}

Answer HostBooks::tryOp(lmdb::Txn& txn, const TryCall& call) {
  setMeta(txn, "calls", meta(txn, "calls") + 1);
  if (auto r = readKey(txn, call.key)) {
    if (r->state == KeyState::Tombstone || r->state == KeyState::Cancelled) return kCancelled409;
    if (r->kind != call.kind || r->account != call.account || r->amount != call.amount) {
      // Not remembered: the key keeps what it was tried with.
      return refused("key " + call.key + " was tried with a different operation");
    }
    if (r->state == KeyState::Refused) return refused(r->reason);
    return tried(r->ref);  // Tried or Confirmed: the same answer, no second effect
  }

  // A new key: refuse (and remember the refusal) or apply.
  KeyRecord rec;
  rec.kind = call.kind;
  rec.amount = call.amount;
  rec.account = call.account;
  auto acct = readAccount(txn, call.account);
  if (call.amount < 1 || call.amount > kMaxAmount) {
    rec.reason = "amount " + std::to_string(call.amount) + " is outside 1.." + std::to_string(kMaxAmount);
  } else if (!acct) {
    rec.reason = "no such account " + call.account;
  } else if (call.kind == OpKind::Debit && acct->balance - acct->held < call.amount) {
    rec.reason = "insufficient funds: " + call.account + " has " + std::to_string(acct->balance - acct->held) +
                 " available (balance " + std::to_string(acct->balance) + ", held " + std::to_string(acct->held) +
                 "), the debit is " + std::to_string(call.amount);
  }
  if (!rec.reason.empty()) {
    rec.state = KeyState::Refused;
    writeKey(txn, call.key, rec);
    count(txn, std::nullopt, KeyState::Refused);
    return refused(rec.reason);
  }
  if (call.kind == OpKind::Debit) {
    acct->held += call.amount;  // the hold
  } else if (credits_ == CreditMode::PostAtTry) {
    acct->balance += call.amount;  // posted at try
    rec.posted = true;
  } else {
    acct->incoming += call.amount;  // pending until confirm
  }
  writeAccount(txn, *acct);
  std::uint64_t n = meta(txn, "next_ref") + 1;
  setMeta(txn, "next_ref", n);
  rec.state = KeyState::Tried;
  rec.ref = "H-" + std::to_string(n);
  writeKey(txn, call.key, rec);
  count(txn, std::nullopt, KeyState::Tried);
  return tried(rec.ref);
}

Answer HostBooks::confirm(lmdb::Txn& txn, std::string_view key) {
  setMeta(txn, "calls", meta(txn, "calls") + 1);
  auto r = readKey(txn, key);
  if (!r) return kUnknown404;
  switch (r->state) {
    case KeyState::Confirmed: return kConfirmed200;
    case KeyState::Refused:
    case KeyState::Cancelled:
    case KeyState::Tombstone: return kCancelled409;
    case KeyState::Tried: break;
  }
  if (r->kind == OpKind::Debit || !r->posted) {
    auto acct = readAccount(txn, r->account);
    if (!acct) {
      throw std::runtime_error("keel-host: account " + r->account + " of key " + std::string(key) + " is gone");
    }
    if (r->kind == OpKind::Debit) {
      acct->balance -= r->amount;  // the hold becomes the posting
      acct->held -= r->amount;
    } else {
      acct->balance += r->amount;  // the pending credit is posted
      acct->incoming -= r->amount;
    }
    writeAccount(txn, *acct);
  }
  r->state = KeyState::Confirmed;
  writeKey(txn, key, *r);
  count(txn, KeyState::Tried, KeyState::Confirmed);
  return kConfirmed200;
}

Answer HostBooks::cancel(lmdb::Txn& txn, std::string_view key) {
  setMeta(txn, "calls", meta(txn, "calls") + 1);
  auto r = readKey(txn, key);
  if (!r) {
    // Cancel before try: the tombstone keeps a late try from applying.
    writeKey(txn, key, KeyRecord{});
    count(txn, std::nullopt, KeyState::Tombstone);
    return kCancelled200;
  }
  switch (r->state) {
    case KeyState::Confirmed: return kConfirmed409;
    case KeyState::Refused:
    case KeyState::Cancelled:
    case KeyState::Tombstone: return kCancelled200;
    case KeyState::Tried: break;
  }
  undo(txn, *r);
  r->state = KeyState::Cancelled;
  writeKey(txn, key, *r);
  count(txn, KeyState::Tried, KeyState::Cancelled);
  return kCancelled200;
}

void HostBooks::undo(lmdb::Txn& txn, const KeyRecord& r) {
  auto acct = readAccount(txn, r.account);
  if (!acct) throw std::runtime_error("keel-host: account " + r.account + " of a cancelled try is gone");
  if (r.kind == OpKind::Debit) {
    acct->held -= r.amount;  // release the hold
  } else if (r.posted) {
    acct->balance -= r.amount;  // reverse the posting (may go negative, see the header)
  } else {
    acct->incoming -= r.amount;  // drop the pending credit
  }
  writeAccount(txn, *acct);
}

Answer HostBooks::openAccount(lmdb::Txn& txn, std::string_view name, std::int64_t balance) {
  if (readAccount(txn, name)) return {409, "{\"error\":" + q("account " + std::string(name) + " exists") + "}"};
  Account a{std::string(name), balance, 0, 0};
  writeAccount(txn, a);
  return {200, accountJson(a)};
}

std::size_t HostBooks::ensureAccounts(lmdb::Txn& txn, std::size_t n, std::int64_t balance) {
  std::size_t created = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::string name = "acct-" + std::to_string(i);
    if (readAccount(txn, name)) continue;
    writeAccount(txn, Account{name, balance, 0, 0});
    ++created;
  }
  return created;
}

std::vector<Account> HostBooks::accounts() const {
  auto txn = env_.beginRead();
  std::vector<Account> out;
  txn.scan(accounts_, "", [&](std::string_view k, std::string_view v) {
    out.push_back(decodeAccount(k, v));
    return true;
  });
  return out;
}

std::optional<Account> HostBooks::account(std::string_view name) const {
  auto txn = env_.beginRead();
  return readAccount(txn, name);
}

std::optional<KeyRecord> HostBooks::keyRecord(std::string_view key) const {
  auto txn = env_.beginRead();
  return readKey(txn, key);
}

std::vector<OpenTry> HostBooks::openTries() const {
  auto txn = env_.beginRead();
  std::vector<OpenTry> out;
  // A scan of every key: fine for a reference host's checkers (open is
  // small once the system is quiet), not for a hot path.
  txn.scan(keys_, "", [&](std::string_view k, std::string_view v) {
    KeyRecord r = decodeKey(v);
    if (r.state == KeyState::Tried) out.push_back(OpenTry{std::string(k), r.kind, r.account, r.amount, r.ref});
    return true;
  });
  return out;
}

std::vector<std::pair<std::string, KeyState>> HostBooks::keyStates() const {
  auto txn = env_.beginRead();
  std::vector<std::pair<std::string, KeyState>> out;
  txn.scan(keys_, "", [&](std::string_view k, std::string_view v) {
    out.emplace_back(std::string(k), decodeKey(v).state);
    return true;
  });
  return out;
}

Stats HostBooks::stats() const {
  auto txn = env_.beginRead();
  Stats s;
  s.open = meta(txn, stateCounter(KeyState::Tried));
  s.confirmed = meta(txn, stateCounter(KeyState::Confirmed));
  s.cancelled = meta(txn, stateCounter(KeyState::Cancelled));
  s.refused = meta(txn, stateCounter(KeyState::Refused));
  s.tombstones = meta(txn, stateCounter(KeyState::Tombstone));
  s.tried = s.open + s.confirmed + s.cancelled;
  s.calls = meta(txn, "calls");
  return s;
}

std::optional<Account> HostBooks::readAccount(const lmdb::Txn& txn, std::string_view name) const {
  if (name.empty() || name.size() > kMaxName) return std::nullopt;  // no such account can exist
  auto v = txn.get(accounts_, name);
  if (!v) return std::nullopt;
  return decodeAccount(name, *v);
}

void HostBooks::writeAccount(lmdb::Txn& txn, const Account& a) {
  std::string v;
  putU64(v, std::uint64_t(a.balance));
  putU64(v, std::uint64_t(a.held));
  putU64(v, std::uint64_t(a.incoming));
  txn.put(accounts_, a.name, v);
}

std::optional<KeyRecord> HostBooks::readKey(const lmdb::Txn& txn, std::string_view key) const {
  auto v = txn.get(keys_, key);
  if (!v) return std::nullopt;
  return decodeKey(*v);
}

void HostBooks::writeKey(lmdb::Txn& txn, std::string_view key, const KeyRecord& r) {
  std::string v;
  v.push_back(char(r.state));
  v.push_back(char(r.kind));
  putU64(v, std::uint64_t(r.amount));
  putString(v, r.account);
  putString(v, r.ref);
  putString(v, r.reason);
  v.push_back(char(r.posted ? 1 : 0));
  txn.put(keys_, key, v);
}

void HostBooks::count(lmdb::Txn& txn, std::optional<KeyState> from, KeyState to) {
  if (from) setMeta(txn, stateCounter(*from), meta(txn, stateCounter(*from)) - 1);
  setMeta(txn, stateCounter(to), meta(txn, stateCounter(to)) + 1);
}

std::uint64_t HostBooks::meta(const lmdb::Txn& txn, std::string_view name) const {
  auto v = txn.get(meta_, name);
  return v ? Reader(*v, "meta").u64() : 0;
}

void HostBooks::setMeta(lmdb::Txn& txn, std::string_view name, std::uint64_t v) {
  std::string out;
  putU64(out, v);
  txn.put(meta_, name, out);
}

std::string accountJson(const Account& a) {
  return "{\"name\":" + q(a.name) + ",\"balance\":" + std::to_string(a.balance) +
         ",\"held\":" + std::to_string(a.held) + ",\"incoming\":" + std::to_string(a.incoming) + "}";
}

std::string accountsJson(const std::vector<Account>& all) {
  std::string out = "{\"accounts\":[";
  for (std::size_t i = 0; i < all.size(); ++i) out += (i ? "," : "") + accountJson(all[i]);
  return out + "]}";
}

std::string openJson(const std::vector<OpenTry>& open) {
  std::string out = "{\"open\":[";
  for (std::size_t i = 0; i < open.size(); ++i) {
    const auto& o = open[i];
    out += std::string(i ? "," : "") + "{\"key\":" + q(o.key) + ",\"op\":\"" + opKindName(o.kind) +
           "\",\"account\":" + q(o.account) + ",\"amount\":" + std::to_string(o.amount) + ",\"ref\":" + q(o.ref) + "}";
  }
  return out + "]}";
}

std::string keysJson(const std::vector<std::pair<std::string, KeyState>>& keys) {
  std::string out = "{\"keys\":[";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    out += std::string(i ? "," : "") + "{\"key\":" + q(keys[i].first) + ",\"state\":\"" +
           keyStateName(keys[i].second) + "\"}";
  }
  return out + "]}";
}

std::string statsJson(const Stats& s) {
  return "{\"tried\":" + std::to_string(s.tried) + ",\"confirmed\":" + std::to_string(s.confirmed) +
         ",\"cancelled\":" + std::to_string(s.cancelled) + ",\"refused\":" + std::to_string(s.refused) +
         ",\"tombstones\":" + std::to_string(s.tombstones) + ",\"open\":" + std::to_string(s.open) +
         ",\"calls\":" + std::to_string(s.calls) + ",\"commits\":" + std::to_string(s.commits) + "}";
}

}  // namespace keel::host
