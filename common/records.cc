#include "common/records.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <sstream>

#include "common/wire.h"
#include "schemas/wal.capnp.h"

namespace keel {

// ------------------------------------------------------------ CRC-32C

namespace {

std::array<std::uint32_t, 256> makeCrcTable() {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // Castagnoli
    t[i] = c;
  }
  return t;
}

}  // namespace

namespace {

std::uint32_t crc32cTable(std::uint32_t c, std::string_view data) {
  static const auto table = makeCrcTable();
  for (unsigned char b : data) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
// The same CRC-32C with SSE4.2's crc32 instruction, 8 bytes a step (every
// record is checksummed on write and on read; the table walk was ~4% of the
// coordinator's CPU under load).
__attribute__((target("sse4.2"))) std::uint32_t crc32cHw(std::uint32_t c, std::string_view data) {
  const char* p = data.data();
  std::size_t n = data.size();
  std::uint64_t c64 = c;
  for (; n >= 8; p += 8, n -= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
  }
  c = std::uint32_t(c64);
  for (; n > 0; ++p, --n) c = __builtin_ia32_crc32qi(c, std::uint8_t(*p));
  return c;
}
#endif

}  // namespace

std::uint32_t crc32c(std::string_view data) { return crc32c(0, data); }

std::uint32_t crc32c(std::uint32_t crc, std::string_view data) {
  std::uint32_t c = crc ^ 0xFFFFFFFFu;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  c = hw ? crc32cHw(c, data) : crc32cTable(c, data);
#else
  c = crc32cTable(c, data);
#endif
  return c ^ 0xFFFFFFFFu;
}

// ------------------------------------------------------------ envelope

namespace {

constexpr std::size_t kHeader = 12;

void putLe32(char* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = char((v >> (8 * i)) & 0xff);
}
std::uint32_t getLe32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | std::uint8_t(p[i]);
  return v;
}

std::string seal(RecordType type, capnp::MessageBuilder& msg) {
  // Serialised straight into the record's string: no intermediate array.
  std::size_t bytes = capnp::computeSerializedSizeInWords(msg) * sizeof(capnp::word);
  std::string out(kHeader + bytes, '\0');
  out[0] = 'K';
  out[1] = 'L';
  out[2] = char(kFormatVersion);
  out[3] = char(type);
  putLe32(&out[4], std::uint32_t(bytes));
  kj::ArrayOutputStream os(kj::arrayPtr(reinterpret_cast<kj::byte*>(&out[kHeader]), bytes));
  capnp::writeMessage(os, msg);
  putLe32(&out[8], crc32c(std::string_view(&out[kHeader], bytes)));
  return out;
}

// A message builder whose first segment is a reused, per-thread buffer:
// records are small, and MallocMessageBuilder's default first segment is an
// 8 KiB calloc per record (a large share of the coordinator's malloc time).
class RecordBuilder {
 public:
  RecordBuilder() {
    if (inUse()) {  // nested use on this thread: allocate as usual
      msg_.emplace();
      return;
    }
    inUse() = usingScratch_ = true;
    msg_.emplace(kj::arrayPtr(scratch(), kWords));
  }
  ~RecordBuilder() {
    msg_.reset();  // zeroes what it used of the scratch buffer, ready for the next record
    if (usingScratch_) inUse() = false;
  }
  RecordBuilder(const RecordBuilder&) = delete;
  RecordBuilder& operator=(const RecordBuilder&) = delete;
  capnp::MallocMessageBuilder& msg() { return *msg_; }

 private:
  static constexpr std::size_t kWords = 512;
  static bool& inUse() {
    thread_local bool used = false;
    return used;
  }
  static capnp::word* scratch() {
    thread_local capnp::word words[kWords] = {};
    return words;
  }
  bool usingScratch_ = false;
  std::optional<capnp::MallocMessageBuilder> msg_;
};

// Checks the envelope and copies the payload into word-aligned memory.
kj::Array<capnp::word> open(RecordType type, std::string_view in) {
  if (in.size() < kHeader || in[0] != 'K' || in[1] != 'L') {
    throw CorruptRecord("record has no Keel envelope (bad magic or too short)");
  }
  if (std::uint8_t(in[2]) != kFormatVersion) {
    throw CorruptRecord("record format version " + std::to_string(std::uint8_t(in[2])) +
                        " is not supported (this build reads version " +
                        std::to_string(kFormatVersion) + ")");
  }
  if (std::uint8_t(in[3]) != std::uint8_t(type)) {
    throw CorruptRecord("record type " + std::to_string(std::uint8_t(in[3])) + " where type " +
                        std::to_string(std::uint8_t(type)) + " was expected");
  }
  std::uint32_t len = getLe32(&in[4]);
  if (len != in.size() - kHeader || len % sizeof(capnp::word) != 0) {
    throw CorruptRecord("record payload length " + std::to_string(len) + " does not match its size " +
                        std::to_string(in.size() - kHeader));
  }
  std::string_view payload = in.substr(kHeader);
  if (crc32c(payload) != getLe32(&in[8])) throw CorruptRecord("record checksum mismatch");
  auto words = kj::heapArray<capnp::word>(len / sizeof(capnp::word));
  std::memcpy(words.begin(), payload.data(), len);
  return words;
}

capnp::ReaderOptions diskReaderOptions() {
  capnp::ReaderOptions o;
  o.traversalLimitInWords = 16 * 1024 * 1024;
  o.nestingLimit = 16;
  return o;
}

// An enum read from disk, refused when out of range (a record written by a
// newer format, or damage the checksum did not catch).
template <typename E, typename W>
E checkedEnum(W v, E max, const char* what) {
  if (std::uint16_t(v) > std::uint16_t(max)) {
    throw CorruptRecord(std::string("record has an unknown ") + what + " " + std::to_string(std::uint16_t(v)));
  }
  return static_cast<E>(v);
}

// A branch's operations as written, bounded. The coordinator never writes
// more than Limits::kMaxOpsPerInteraction operations for an interaction nor
// an operation of more than Limits::kMaxSqlParams parameters; an agent's
// branch grows by checked calls. kMaxRecordOps is far above anything
// written, so a record beyond it is damaged: refused before it is read into
// memory (fuzz_records: a record declaring millions of operations took
// seconds and gigabytes to read).
constexpr std::size_t kMaxRecordOps = 65536;

std::vector<Op> recordOps(capnp::List<wire::Operation>::Reader list) {
  if (list.size() > kMaxRecordOps) {
    throw CorruptRecord("record has " + std::to_string(list.size()) + " operations in one branch; no record of "
                        "more than " + std::to_string(kMaxRecordOps) + " is ever written");
  }
  for (auto o : list) {
    if (o.getParams().size() > Limits::kMaxSqlParams) {
      throw CorruptRecord("record has an operation of " + std::to_string(o.getParams().size()) +
                          " SQL parameters; at most " + std::to_string(Limits::kMaxSqlParams) + " are ever written");
    }
  }
  return readAllOps(list);
}

template <typename Fn>
auto withReader(RecordType type, std::string_view bytes, Fn fn) {
  auto words = open(type, bytes);
  try {
    capnp::FlatArrayMessageReader reader(words, diskReaderOptions());
    return fn(reader);
  } catch (const kj::Exception& e) {
    throw CorruptRecord(std::string("record payload does not decode: ") + e.getDescription().cStr());
  }
}

}  // namespace

// ------------------------------------------------------------ interaction

std::string encode(const InteractionRecord& r) {
  RecordBuilder rb;
  auto& msg = rb.msg();
  auto b = msg.initRoot<disk::InteractionRecord>();
  b.setSeq(r.seq);
  b.setEpoch(r.epoch);
  b.setInteractive(r.interactive);
  b.setOnePhase(r.onePhase);
  b.setState(static_cast<disk::InteractionRecord::State>(r.state));
  b.setDecision(static_cast<disk::InteractionRecord::Decision>(r.decision));
  b.setError(r.error);
  b.setCreatedUs(r.createdUs);
  b.setVotesUs(r.votesUs);
  b.setDecidedUs(r.decidedUs);
  b.setCompletedUs(r.completedUs);
  b.setPhase2Attempts(r.phase2Attempts);
  b.setFailedUs(r.failedUs);
  b.setRequestId(r.requestId);
  b.setRequestTimeUs(r.requestTimeUs);
  b.setDeadlineMs(r.deadlineMs);
  b.setRecoveredBy(r.recoveredBy);
  b.setStaged(r.staged);
  auto bl = b.initBranches(r.branches.size());
  for (unsigned i = 0; i < r.branches.size(); ++i) {
    const auto& br = r.branches[i];
    auto x = bl[i];
    x.setParticipant(br.participant);
    x.setBranch(br.branch);
    x.setState(static_cast<disk::InteractionRecord::BranchState>(br.state));
    x.setReason(br.reason);
    fillOps(x.initOperations(br.ops.size()), br.ops);
    x.setHostTxid(br.hostTxid);
  }
  return seal(RecordType::Interaction, msg);
}

InteractionRecord decodeInteraction(std::string_view bytes) {
  return withReader(RecordType::Interaction, bytes, [](capnp::MessageReader& m) {
    auto x = m.getRoot<disk::InteractionRecord>();
    InteractionRecord r;
    r.seq = x.getSeq();
    r.epoch = x.getEpoch();
    r.interactive = x.getInteractive();
    r.onePhase = x.getOnePhase();
    r.state = checkedEnum<InteractionRecord::State>(x.getState(), InteractionRecord::State::HeuristicUnknown, "state");
    r.decision =
        checkedEnum<InteractionRecord::Decision>(x.getDecision(), InteractionRecord::Decision::Abort, "decision");
    r.error = x.getError().cStr();
    r.createdUs = x.getCreatedUs();
    r.votesUs = x.getVotesUs();
    r.decidedUs = x.getDecidedUs();
    r.completedUs = x.getCompletedUs();
    r.phase2Attempts = x.getPhase2Attempts();
    r.failedUs = x.getFailedUs();
    r.requestId = x.getRequestId().cStr();
    r.requestTimeUs = x.getRequestTimeUs();
    r.deadlineMs = x.getDeadlineMs();
    r.recoveredBy = x.getRecoveredBy().cStr();
    r.staged = x.getStaged();
    for (auto b : x.getBranches()) {
      InteractionRecord::Branch br;
      br.participant = b.getParticipant().cStr();
      br.branch = b.getBranch();
      br.state = checkedEnum<InteractionRecord::BranchState>(b.getState(), InteractionRecord::BranchState::Unknown,
                                                             "branch state");
      br.reason = b.getReason().cStr();
      br.ops = recordOps(b.getOperations());
      br.hostTxid = b.getHostTxid();
      r.branches.push_back(std::move(br));
    }
    return r;
  });
}

InteractionPeek peekInteraction(std::string_view bytes) {
  return withReader(RecordType::Interaction, bytes, [](capnp::MessageReader& m) {
    auto x = m.getRoot<disk::InteractionRecord>();
    InteractionPeek p;
    p.seq = x.getSeq();
    p.createdUs = x.getCreatedUs();
    p.requestId = x.getRequestId().cStr();
    auto st = std::uint16_t(x.getState());
    p.finished = st >= std::uint16_t(disk::InteractionRecord::State::COMMITTED);
    p.heuristic = st >= std::uint16_t(disk::InteractionRecord::State::HEURISTIC_MIXED);
    p.completedUs = x.getCompletedUs();
    return p;
  });
}

// ------------------------------------------------------------ rollback

std::string encode(const RollbackRecord& r) {
  RecordBuilder rb;
  auto& msg = rb.msg();
  auto b = msg.initRoot<disk::RollbackRecord>();
  b.setSeq(r.seq);
  b.setReason(r.reason);
  b.setRequestedUs(r.requestedUs);
  b.setAttempts(r.attempts);
  b.setLastError(r.lastError);
  b.setLastAttemptUs(r.lastAttemptUs);
  auto p = b.initPending(r.pending.size());
  for (unsigned i = 0; i < r.pending.size(); ++i) p.set(i, r.pending[i]);
  auto c = b.initConfirmed(r.confirmed.size());
  for (unsigned i = 0; i < r.confirmed.size(); ++i) {
    c[i].setParticipant(r.confirmed[i].participant);
    c[i].setAtUs(r.confirmed[i].atUs);
  }
  b.setCompletedUs(r.completedUs);
  return seal(RecordType::Rollback, msg);
}

RollbackRecord decodeRollback(std::string_view bytes) {
  return withReader(RecordType::Rollback, bytes, [](capnp::MessageReader& m) {
    auto x = m.getRoot<disk::RollbackRecord>();
    RollbackRecord r;
    r.seq = x.getSeq();
    r.reason = x.getReason().cStr();
    r.requestedUs = x.getRequestedUs();
    r.attempts = x.getAttempts();
    r.lastError = x.getLastError().cStr();
    r.lastAttemptUs = x.getLastAttemptUs();
    for (auto p : x.getPending()) r.pending.emplace_back(p.cStr());
    for (auto c : x.getConfirmed()) r.confirmed.push_back({c.getParticipant().cStr(), c.getAtUs()});
    r.completedUs = x.getCompletedUs();
    return r;
  });
}

// ------------------------------------------------------------ branch, account

const char* hostStepName(std::uint8_t step) {
  switch (HostStep(step)) {
    case HostStep::None: return "";
    case HostStep::Trying: return "trying";
    case HostStep::Tried: return "tried";
    case HostStep::Confirming: return "confirming";
    case HostStep::Cancelling: return "cancelling";
  }
  return "?";
}

std::string encode(const BranchRecord& r) {
  RecordBuilder rb;
  auto& msg = rb.msg();
  auto b = msg.initRoot<disk::BranchRecord>();
  b.setSeq(r.xid.seq);
  b.setBranch(r.xid.branch);
  b.setState(static_cast<wire::BranchState>(r.state));
  b.setEpoch(r.epoch);
  b.setTombstone(r.tombstone);
  b.setOnePhase(r.onePhase);
  fillOps(b.initOperations(r.ops.size()), r.ops);
  b.setCreatedUs(r.createdUs);
  b.setPreparedUs(r.preparedUs);
  b.setFinishedUs(r.finishedUs);
  b.setReason(r.reason);
  b.setHostTxid(r.hostTxid);
  b.setHostIncarnation(r.hostIncarnation);
  b.setHostStep(r.hostStep);
  b.setHostMarker(r.hostMarker);
  if (!r.hostRefs.empty()) {
    auto refs = b.initHostRefs(r.hostRefs.size());
    for (unsigned i = 0; i < r.hostRefs.size(); ++i) refs.set(i, r.hostRefs[i]);
  }
  return seal(RecordType::Branch, msg);
}

BranchRecord decodeBranch(std::string_view bytes) {
  return withReader(RecordType::Branch, bytes, [](capnp::MessageReader& m) {
    auto x = m.getRoot<disk::BranchRecord>();
    BranchRecord r;
    r.xid = Xid{x.getSeq(), x.getBranch()};
    r.state = static_cast<BranchStatus>(x.getState());
    r.epoch = x.getEpoch();
    r.tombstone = x.getTombstone();
    r.onePhase = x.getOnePhase();
    r.ops = recordOps(x.getOperations());
    r.createdUs = x.getCreatedUs();
    r.preparedUs = x.getPreparedUs();
    r.finishedUs = x.getFinishedUs();
    r.reason = x.getReason().cStr();
    r.hostTxid = x.getHostTxid();
    r.hostIncarnation = x.getHostIncarnation();
    r.hostStep = x.getHostStep();
    r.hostMarker = x.getHostMarker();
    for (auto ref : x.getHostRefs()) r.hostRefs.emplace_back(ref.cStr());
    return r;
  });
}

std::string encode(const AccountRecord& r) {
  RecordBuilder rb;
  auto& msg = rb.msg();
  auto b = msg.initRoot<disk::AccountRecord>();
  b.setBalance(r.balance);
  b.setHeld(r.held);
  b.setOpening(r.opening);
  auto x = b.initOpenedBy();
  x.setSeq(r.openedBy.seq);
  x.setBranch(r.openedBy.branch);
  return seal(RecordType::Account, msg);
}

AccountRecord decodeAccount(std::string_view bytes) {
  return withReader(RecordType::Account, bytes, [](capnp::MessageReader& m) {
    auto x = m.getRoot<disk::AccountRecord>();
    AccountRecord r;
    r.balance = x.getBalance();
    r.held = x.getHeld();
    r.opening = x.getOpening();
    r.openedBy = Xid{x.getOpenedBy().getSeq(), x.getOpenedBy().getBranch()};
    return r;
  });
}

std::string encode(const AuditRecord& r) {
  RecordBuilder rb;
  auto& msg = rb.msg();
  auto b = msg.initRoot<disk::AuditRecord>();
  b.setAtUs(r.atUs);
  b.setSeq(r.seq);
  b.setAction(r.action);
  b.setWho(r.who);
  b.setWhy(r.why);
  b.setOverride(r.override);
  b.setPrevious(r.previous);
  return seal(RecordType::Audit, msg);
}

AuditRecord decodeAudit(std::string_view bytes) {
  return withReader(RecordType::Audit, bytes, [](capnp::MessageReader& m) {
    auto x = m.getRoot<disk::AuditRecord>();
    AuditRecord r;
    r.atUs = x.getAtUs();
    r.seq = x.getSeq();
    r.action = x.getAction().cStr();
    r.who = x.getWho().cStr();
    r.why = x.getWhy().cStr();
    r.override = x.getOverride();
    r.previous = x.getPrevious().cStr();
    return r;
  });
}

std::string encode(const RequestRecord& r) {
  RecordBuilder rb;
  auto& msg = rb.msg();
  auto b = msg.initRoot<disk::RequestRecord>();
  b.setSeq(r.seq);
  b.setFingerprint(r.fingerprint);
  b.setRequestTimeUs(r.requestTimeUs);
  b.setFirstSeenUs(r.firstSeenUs);
  return seal(RecordType::Request, msg);
}

RequestRecord decodeRequest(std::string_view bytes) {
  return withReader(RecordType::Request, bytes, [](capnp::MessageReader& m) {
    auto x = m.getRoot<disk::RequestRecord>();
    RequestRecord r;
    r.seq = x.getSeq();
    r.fingerprint = x.getFingerprint();
    r.requestTimeUs = x.getRequestTimeUs();
    r.firstSeenUs = x.getFirstSeenUs();
    return r;
  });
}

// ------------------------------------------------------------ names

const char* stateName(InteractionRecord::State s) {
  switch (s) {
    case InteractionRecord::State::Preparing: return "preparing";
    case InteractionRecord::State::Committing: return "committing";
    case InteractionRecord::State::Aborting: return "aborting";
    case InteractionRecord::State::Committed: return "committed";
    case InteractionRecord::State::RolledBack: return "rolled-back";
    case InteractionRecord::State::HeuristicMixed: return "heuristic-mixed";
    case InteractionRecord::State::HeuristicUnknown: return "heuristic-unknown";
  }
  return "?";
}

std::optional<InteractionRecord::State> stateByName(std::string_view name) {
  for (std::uint8_t s = 0; s <= std::uint8_t(InteractionRecord::State::HeuristicUnknown); ++s) {
    if (name == stateName(InteractionRecord::State(s))) return InteractionRecord::State(s);
  }
  return std::nullopt;
}

std::string stateNames() {
  std::string out;
  for (std::uint8_t s = 0; s <= std::uint8_t(InteractionRecord::State::HeuristicUnknown); ++s) {
    out += (out.empty() ? "" : ", ") + std::string(stateName(InteractionRecord::State(s)));
  }
  return out;
}

const char* decisionName(InteractionRecord::Decision d) {
  switch (d) {
    case InteractionRecord::Decision::None: return "none";
    case InteractionRecord::Decision::Commit: return "commit";
    case InteractionRecord::Decision::Abort: return "abort";
  }
  return "?";
}

const char* branchStateName(InteractionRecord::BranchState s) {
  using B = InteractionRecord::BranchState;
  switch (s) {
    case B::Pending: return "pending";
    case B::Preparing: return "preparing";
    case B::Prepared: return "prepared";
    case B::ReadOnly: return "read-only";
    case B::VotedNo: return "voted-no";
    case B::Failed: return "failed";
    case B::Committed: return "committed";
    case B::RolledBack: return "rolled-back";
    case B::Unknown: return "unknown";
  }
  return "?";
}

const char* branchStatusName(BranchStatus s) {
  switch (s) {
    case BranchStatus::Active: return "active";
    case BranchStatus::Prepared: return "prepared";
    case BranchStatus::Committed: return "committed";
    case BranchStatus::RolledBack: return "rolled-back";
  }
  return "?";
}

// ------------------------------------------------------------ rendering

namespace {

// The length of the UTF-8 character `s` starts with (2..4 bytes), or 0 when
// its first byte does not start one: no overlong form, no surrogate,
// nothing past U+10FFFF.
std::size_t utf8Length(std::string_view s) {
  auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(s[i]); };
  std::uint8_t lead = byte(0);
  std::size_t n = 0;
  if (lead >= 0xC2 && lead <= 0xDF) n = 2;
  if (lead >= 0xE0 && lead <= 0xEF) n = 3;
  if (lead >= 0xF0 && lead <= 0xF4) n = 4;
  if (n == 0 || n > s.size()) return 0;
  for (std::size_t i = 1; i < n; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return 0;
  }
  // The second byte's range is narrower after these leads.
  if ((lead == 0xE0 && byte(1) < 0xA0) || (lead == 0xF0 && byte(1) < 0x90)) return 0;  // overlong
  if (lead == 0xED && byte(1) > 0x9F) return 0;                                        // a surrogate
  if (lead == 0xF4 && byte(1) > 0x8F) return 0;                                        // past U+10FFFF
  return n;
}

}  // namespace

std::string jsonEscape(std::string_view s) {
  std::string o;
  o.reserve(s.size() + 2);
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (std::uint8_t(c) >= 0x80) {
      std::size_t n = utf8Length(s.substr(i));
      if (n == 0) {
        o += "\\ufffd";
      } else {
        o += s.substr(i, n);
        i += n - 1;
      }
      continue;
    }
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      case '\r': o += "\\r"; break;
      default:
        if (std::uint8_t(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          o += buf;
        } else {
          o += c;
        }
    }
  }
  return o;
}

std::string formatMicros(Micros us) {
  if (us == 0) return "-";
  std::time_t secs = std::time_t(us / 1000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof out, "%s.%06uZ", buf, unsigned(us % 1000000));
  return out;
}

namespace {

std::string q(std::string_view s) { return "\"" + jsonEscape(s) + "\""; }

std::string opsJson(const std::vector<Op>& ops) {
  std::string o = "[";
  for (std::size_t i = 0; i < ops.size(); ++i) {
    if (i) o += ",";
    o += "{\"kind\":" + q(opKindName(ops[i].kind)) + ",\"account\":" + q(ops[i].account) +
         ",\"amount\":" + std::to_string(ops[i].amount);
    if (ops[i].kind == OpKind::Sql) {
      // A declared statement's call: which, with what (what it did to the
      // host's rows is only in these).
      o += ",\"statement\":" + q(ops[i].statementName) + ",\"params\":[";
      for (std::size_t k = 0; k < ops[i].params.size(); ++k) {
        const auto& v = ops[i].params[k];
        if (k) o += ",";
        switch (v.type) {
          case SqlValue::Type::Null: o += "null"; break;
          case SqlValue::Type::Int: o += std::to_string(v.i); break;
          case SqlValue::Type::Text: o += q(v.text); break;
          case SqlValue::Type::Bool: o += v.b ? "true" : "false"; break;
          case SqlValue::Type::Float: {
            char buf[40];
            std::snprintf(buf, sizeof buf, "%.17g", v.f);
            o += std::isfinite(v.f) ? buf : "null";
            break;
          }
        }
      }
      o += "]";
      if (ops[i].expectRows >= 0) o += ",\"expect_rows\":" + std::to_string(ops[i].expectRows);
    }
    o += "}";
  }
  return o + "]";
}

}  // namespace

std::string toJson(const InteractionRecord& r) {
  std::ostringstream o;
  o << "{\"seq\":" << r.seq << ",\"seq_text\":" << q(seqText(r.seq)) << ",\"epoch\":" << r.epoch
    << ",\"interactive\":" << (r.interactive ? "true" : "false")
    << ",\"one_phase\":" << (r.onePhase ? "true" : "false") << ",\"state\":" << q(stateName(r.state))
    << ",\"decision\":" << q(decisionName(r.decision)) << ",\"error\":" << q(r.error)
    << ",\"created_us\":" << r.createdUs << ",\"votes_us\":" << r.votesUs
    << ",\"decided_us\":" << r.decidedUs << ",\"completed_us\":" << r.completedUs
    << ",\"phase2_attempts\":" << r.phase2Attempts << ",\"failed_us\":" << r.failedUs
    << ",\"request_id\":" << q(r.requestId) << ",\"request_time_us\":" << r.requestTimeUs
    << ",\"deadline_ms\":" << r.deadlineMs << ",\"recovered_by\":" << q(r.recoveredBy)
    << ",\"staged\":" << (r.staged ? "true" : "false") << ",\"branches\":[";
  for (std::size_t i = 0; i < r.branches.size(); ++i) {
    const auto& b = r.branches[i];
    if (i) o << ",";
    o << "{\"participant\":" << q(b.participant) << ",\"branch\":" << b.branch
      << ",\"state\":" << q(branchStateName(b.state)) << ",\"reason\":" << q(b.reason)
      << ",\"operations\":" << opsJson(b.ops) << "}";
  }
  o << "]}";
  return o.str();
}

std::string toJson(const RollbackRecord& r) {
  std::ostringstream o;
  o << "{\"seq\":" << r.seq << ",\"seq_text\":" << q(seqText(r.seq)) << ",\"reason\":" << q(r.reason)
    << ",\"requested_us\":" << r.requestedUs
    << ",\"attempts\":" << r.attempts << ",\"last_error\":" << q(r.lastError)
    << ",\"last_attempt_us\":" << r.lastAttemptUs << ",\"pending\":[";
  for (std::size_t i = 0; i < r.pending.size(); ++i) o << (i ? "," : "") << q(r.pending[i]);
  o << "],\"confirmed\":[";
  for (std::size_t i = 0; i < r.confirmed.size(); ++i) {
    o << (i ? "," : "") << "{\"participant\":" << q(r.confirmed[i].participant)
      << ",\"at_us\":" << r.confirmed[i].atUs << "}";
  }
  o << "],\"completed_us\":" << r.completedUs << "}";
  return o.str();
}

std::string toJson(const AuditRecord& r) {
  std::ostringstream o;
  o << "{\"at_us\":" << r.atUs << ",\"seq\":" << r.seq << ",\"seq_text\":" << q(seqText(r.seq))
    << ",\"action\":" << q(r.action) << ",\"who\":" << q(r.who) << ",\"why\":" << q(r.why)
    << ",\"override\":" << (r.override ? "true" : "false") << ",\"previous\":" << q(r.previous) << "}";
  return o.str();
}

std::string toText(const InteractionRecord& r) {
  std::ostringstream o;
  o << "interaction " << seqText(r.seq) << (r.interactive ? " (interactive)" : "")
    << (r.onePhase ? " (one-phase)" : "") << "\n"
    << "  state      " << stateName(r.state) << "   decision " << decisionName(r.decision)
    << "   epoch " << r.epoch << "\n";
  if (!r.requestId.empty()) {
    o << "  request id " << r.requestId << "   first sent " << formatMicros(r.requestTimeUs) << "\n";
  }
  if (!r.error.empty()) o << "  error      " << r.error << "\n";
  if (r.recoveredBy == "sweep") {
    o << "  recovered  from the agents' branch records by the recovery sweep (the coordinator had no record)\n";
  }
  o << "  created    " << formatMicros(r.createdUs) << "\n"
    << "  votes      " << formatMicros(r.votesUs) << "\n"
    << "  decided    " << formatMicros(r.decidedUs) << "\n"
    << "  completed  " << formatMicros(r.completedUs) << "\n";
  if (r.failedUs != 0) {
    o << "  failed     " << formatMicros(r.failedUs);
    if (r.completedUs > r.failedUs) o << "   window of inconsistency " << (r.completedUs - r.failedUs) / 1000 << " ms";
    o << "\n";
  }
  if (r.phase2Attempts) o << "  phase-2 attempts " << r.phase2Attempts << "\n";
  for (const auto& b : r.branches) {
    o << "  branch " << b.branch << " @ " << b.participant << ": " << branchStateName(b.state);
    if (!b.reason.empty()) o << " (" << b.reason << ")";
    o << "\n";
    for (const auto& op : b.ops) {
      if (op.kind == OpKind::Sql) {
        o << "      sql " << (op.statementName.empty() ? "(free SQL text)" : op.statementName) << " ("
          << op.params.size() << " parameter(s))";
      } else {
        o << "      " << opKindName(op.kind) << " " << op.account;
        if (op.kind != OpKind::ReadBalance) o << " " << op.amount;
      }
      o << "\n";
    }
  }
  return o.str();
}

std::string toText(const RollbackRecord& r) {
  std::ostringstream o;
  o << "rollback " << seqText(r.seq) << "\n"
    << "  reason     " << r.reason << "\n"
    << "  requested  " << formatMicros(r.requestedUs) << "\n"
    << "  attempts   " << r.attempts << "   last attempt " << formatMicros(r.lastAttemptUs) << "\n";
  if (!r.lastError.empty()) o << "  last error " << r.lastError << "\n";
  o << "  pending    ";
  for (const auto& p : r.pending) o << p << " ";
  o << (r.pending.empty() ? "(none)" : "") << "\n";
  for (const auto& c : r.confirmed) {
    o << "  confirmed  " << c.participant << " at " << formatMicros(c.atUs) << "\n";
  }
  o << "  completed  " << formatMicros(r.completedUs) << "\n";
  return o.str();
}

}  // namespace keel
