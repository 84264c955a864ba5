#include "common/types.h"

#include <charconv>
#include <chrono>
#include <cstring>
#include <stdexcept>

namespace keel {

Micros wallMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Micros monoMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

const char* opKindName(OpKind k) {
  switch (k) {
    case OpKind::OpenAccount: return "open";
    case OpKind::Credit: return "credit";
    case OpKind::Debit: return "debit";
    case OpKind::ReadBalance: return "read";
    case OpKind::Sql: return "sql";
  }
  return "?";
}

const char* clientOutcomeName(ClientOutcome o) {
  switch (o) {
    case ClientOutcome::Committed: return "committed";
    case ClientOutcome::RolledBack: return "rolled-back";
    case ClientOutcome::InDoubt: return "in-doubt";
    case ClientOutcome::Invalid: return "invalid";
    case ClientOutcome::Unavailable: return "unavailable";
    case ClientOutcome::HeuristicMixed: return "heuristic-mixed";
    case ClientOutcome::HeuristicUnknown: return "heuristic-unknown";
  }
  return "?";
}

const char* voteName(Vote v) {
  switch (v) {
    case Vote::Yes: return "yes";
    case Vote::No: return "no";
    case Vote::ReadOnly: return "read-only";
  }
  return "?";
}

const char* outcomeName(BranchOutcome o) {
  switch (o) {
    case BranchOutcome::Committed: return "committed";
    case BranchOutcome::RolledBack: return "rolled-back";
    case BranchOutcome::Unknown: return "unknown";
    case BranchOutcome::NotPrepared: return "not-prepared";
    case BranchOutcome::Conflict: return "conflict";
    case BranchOutcome::Released: return "released";
  }
  return "?";
}

std::string checkRequestId(std::string_view id) {
  if (id.size() > Limits::kMaxRequestId) {
    return "request id is " + std::to_string(id.size()) + " bytes long; the limit is " +
           std::to_string(Limits::kMaxRequestId);
  }
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return "request id may hold only printable ASCII characters without spaces";
  }
  return "";
}

namespace {

// FNV-1a, 64 bits: stable across builds and platforms (unlike std::hash).
struct Fnv {
  std::uint64_t h = 14695981039346656037ull;
  void bytes(std::string_view s) {
    u64(s.size());  // length first: ("ab","c") and ("a","bc") differ
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
  }
  void u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  }
};

}  // namespace

std::uint64_t requestFingerprint(const std::vector<Op>& ops, bool interactive) {
  Fnv f;
  f.u64(interactive ? 1 : 0);
  f.u64(ops.size());
  for (const Op& op : ops) {
    f.bytes(op.participant);
    f.u64(std::uint64_t(op.kind));
    f.bytes(op.account);
    f.u64(std::uint64_t(op.amount));
    f.bytes(op.sql);
    // Only when set: the fingerprints of requests from before statement
    // names (ledger operations, free SQL) stay what they were.
    if (!op.statementName.empty()) f.bytes(op.statementName);
    f.u64(std::uint64_t(op.expectRows));
    f.u64(op.params.size());
    for (const SqlValue& p : op.params) {
      f.u64(std::uint64_t(p.type));
      f.u64(std::uint64_t(p.i));
      std::uint64_t bits = 0;
      static_assert(sizeof(bits) == sizeof(p.f));
      std::memcpy(&bits, &p.f, sizeof bits);
      f.u64(bits);
      f.u64(p.b ? 1 : 0);
      f.bytes(p.text);
    }
  }
  return f.h;
}

std::string Xid::str() const { return seqText(seq) + "." + std::to_string(branch); }

std::string seqText(std::uint64_t seq) {
  return std::to_string(seqNode(seq)) + ":" + std::to_string(seqCounter(seq));
}

namespace {

bool allDigits(std::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
}

// One or more decimal digits and nothing else, as a number (nullopt: not
// such digits, or more than 64 bits).
std::optional<std::uint64_t> decimal(std::string_view s) {
  if (!allDigits(s)) return std::nullopt;
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

std::optional<std::uint64_t> parseSeqText(std::string_view text, std::string* why) {
  auto refuse = [&](const std::string& what) -> std::optional<std::uint64_t> {
    if (why != nullptr) *why = "'" + std::string(text) + "'" + what;
    return std::nullopt;
  };
  auto colon = text.find(':');
  std::string_view node = colon == std::string_view::npos ? std::string_view() : text.substr(0, colon);
  std::string_view counter = colon == std::string_view::npos ? text : text.substr(colon + 1);
  if (!allDigits(counter) || (colon != std::string_view::npos && !allDigits(node))) {
    if (!text.empty() && text[0] == '-') {
      return refuse(" is negative: a seq is NODE:COUNTER (such as 1:5) or a whole number");
    }
    return refuse(" is not NODE:COUNTER (such as 1:5) or a whole number");
  }
  if (colon == std::string_view::npos) {
    if (auto v = decimal(counter)) return v;
    return refuse(" is out of range (0.." + std::to_string(~std::uint64_t(0)) + ")");
  }
  auto n = decimal(node);
  if (!n || *n > 0xffff) return refuse(": node " + std::string(node) + " is out of range (0..65535)");
  auto c = decimal(counter);
  if (!c || *c > kMaxSeqCounter) {
    return refuse(": counter " + std::string(counter) + " is out of range (0.." + std::to_string(kMaxSeqCounter) + ")");
  }
  return makeSeq(std::uint16_t(*n), *c);
}

std::string u64Key(std::uint64_t v) {
  std::string k(8, '\0');
  for (int i = 7; i >= 0; --i) {
    k[i] = char(v & 0xff);
    v >>= 8;
  }
  return k;
}

std::uint64_t keyU64(std::string_view k) {
  if (k.size() < 8) throw std::runtime_error("key shorter than 8 bytes");
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | std::uint8_t(k[i]);
  return v;
}

std::string xidKey(Xid x) {
  std::string k = u64Key(x.seq);
  k.push_back(char(x.branch >> 8));
  k.push_back(char(x.branch & 0xff));
  return k;
}

Xid keyXid(std::string_view k) {
  if (k.size() != 10) throw std::runtime_error("xid key must be 10 bytes");
  return Xid{keyU64(k), std::uint16_t((std::uint8_t(k[8]) << 8) | std::uint8_t(k[9]))};
}

bool isDayText(std::string_view t) {
  if (t.size() != 10 || t[4] != '-' || t[7] != '-') return false;
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (i != 4 && i != 7 && (t[i] < '0' || t[i] > '9')) return false;
  }
  int month = (t[5] - '0') * 10 + (t[6] - '0'), day = (t[8] - '0') * 10 + (t[9] - '0');
  return month >= 1 && month <= 12 && day >= 1 && day <= 31;
}

}  // namespace keel
