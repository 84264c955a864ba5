#include "common/types.h"

#include <chrono>
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
  }
  return "?";
}

std::string Xid::str() const { return std::to_string(seq) + "." + std::to_string(branch); }

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

}  // namespace keel
