// Records: lossless round trips, a damaged record is always refused, and
// the JSON/text renderings.

#include "common/records.h"

#include <gtest/gtest.h>

#include <string>

namespace keel {
namespace {

constexpr std::size_t kHeader = 12;

InteractionRecord fullInteraction() {
  InteractionRecord r;
  r.seq = makeSeq(7, 123456789);
  r.epoch = 42;
  r.interactive = true;
  r.onePhase = true;
  r.staged = true;
  r.state = InteractionRecord::State::Committing;
  r.decision = InteractionRecord::Decision::Commit;
  r.error = "bank-b said \"no\"\nsecond line";
  r.createdUs = 1'700'000'000'000'001;
  r.votesUs = 1'700'000'000'000'002;
  r.decidedUs = 1'700'000'000'000'003;
  r.completedUs = 1'700'000'000'000'004;
  r.phase2Attempts = 3;
  InteractionRecord::Branch a;
  a.participant = "bank-a";
  a.branch = 1;
  a.state = InteractionRecord::BranchState::Prepared;
  a.reason = "";
  a.ops = {Op{"bank-a", OpKind::Debit, "alice", 250}, Op{"bank-a", OpKind::ReadBalance, "alice", 0}};
  a.hostTxid = 987654321012ull;
  InteractionRecord::Branch b;
  b.participant = "bank-b";
  b.branch = 65535;
  b.state = InteractionRecord::BranchState::VotedNo;
  b.reason = "insufficient funds";
  b.ops = {Op{"bank-b", OpKind::OpenAccount, "bob", 0}, Op{"bank-b", OpKind::Credit, "bob", 250}};
  r.branches = {a, b};
  return r;
}

RollbackRecord fullRollback() {
  RollbackRecord r;
  r.seq = 99;
  r.reason = "participant bank-b voted no";
  r.requestedUs = 11;
  r.attempts = 4;
  r.lastError = "connection refused";
  r.lastAttemptUs = 12;
  r.pending = {"bank-c", "bank-d"};
  r.confirmed = {{"bank-a", 13}, {"bank-b", 14}};
  r.completedUs = 15;
  return r;
}

BranchRecord fullBranch() {
  BranchRecord r;
  r.xid = Xid{makeSeq(2, 77), 3};
  r.state = BranchStatus::Prepared;
  r.epoch = 5;
  r.tombstone = true;
  r.onePhase = true;
  r.ops = {Op{"bank-a", OpKind::Debit, "alice", 10}, Op{"", OpKind::Credit, "carol", 1'000'000'000'000'000}};
  r.createdUs = 21;
  r.preparedUs = 22;
  r.finishedUs = 23;
  r.reason = "why not";
  r.hostTxid = (std::uint64_t(1) << 32) + 7;
  r.hostIncarnation = 12;
  return r;
}

AccountRecord fullAccount() {
  AccountRecord r;
  r.balance = -5;  // the encoding does not police the ledger's rules
  r.held = 1234567890123;
  r.opening = true;
  r.openedBy = Xid{0xFFFF000000000001ull, 65535};
  return r;
}

TEST(RecordsTest, InteractionRoundTripKeepsEveryField) {
  const auto in = fullInteraction();
  const auto out = decodeInteraction(encode(in));
  EXPECT_EQ(out.seq, in.seq);
  EXPECT_EQ(out.epoch, in.epoch);
  EXPECT_EQ(out.interactive, in.interactive);
  EXPECT_EQ(out.onePhase, in.onePhase);
  EXPECT_EQ(out.state, in.state);
  EXPECT_EQ(out.decision, in.decision);
  EXPECT_EQ(out.error, in.error);
  EXPECT_EQ(out.createdUs, in.createdUs);
  EXPECT_EQ(out.votesUs, in.votesUs);
  EXPECT_EQ(out.decidedUs, in.decidedUs);
  EXPECT_EQ(out.completedUs, in.completedUs);
  EXPECT_EQ(out.phase2Attempts, in.phase2Attempts);
  EXPECT_TRUE(out.staged);  // the fixture sets it: a field not written would read false
  ASSERT_EQ(out.branches.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(out.branches[i].participant, in.branches[i].participant);
    EXPECT_EQ(out.branches[i].branch, in.branches[i].branch);
    EXPECT_EQ(out.branches[i].state, in.branches[i].state);
    EXPECT_EQ(out.branches[i].reason, in.branches[i].reason);
    EXPECT_EQ(out.branches[i].ops, in.branches[i].ops);
    EXPECT_EQ(out.branches[i].hostTxid, in.branches[i].hostTxid);
  }
  EXPECT_NE(out.branches[0].hostTxid, 0u);  // the fixture sets one: a field not written would read 0
  EXPECT_TRUE(out.finished() == false);
}

TEST(RecordsTest, OnlyAStagedTwoPhaseRecordWithoutADecisionIsSettledByItsVotes) {
  InteractionRecord r;
  r.staged = true;
  EXPECT_TRUE(r.stagedUndecided());
  r.decision = InteractionRecord::Decision::Commit;
  EXPECT_FALSE(r.stagedUndecided());  // decided: redriven as such
  r.decision = InteractionRecord::Decision::None;
  r.onePhase = true;
  EXPECT_FALSE(r.stagedUndecided());  // the participant decides one-phase
  r.onePhase = false;
  r.state = InteractionRecord::State::RolledBack;
  EXPECT_FALSE(r.stagedUndecided());  // finished
  r.state = InteractionRecord::State::Preparing;
  r.staged = false;
  EXPECT_FALSE(r.stagedUndecided());  // presumed abort
}

TEST(RecordsTest, EveryInteractionStateRoundTrips) {
  using S = InteractionRecord::State;
  for (S s : {S::Preparing, S::Committing, S::Aborting, S::Committed, S::RolledBack}) {
    auto r = fullInteraction();
    r.state = s;
    EXPECT_EQ(decodeInteraction(encode(r)).state, s) << stateName(s);
  }
  using B = InteractionRecord::BranchState;
  for (B b : {B::Pending, B::Preparing, B::Prepared, B::ReadOnly, B::VotedNo, B::Failed, B::Committed,
              B::RolledBack}) {
    auto r = fullInteraction();
    r.branches[0].state = b;
    EXPECT_EQ(decodeInteraction(encode(r)).branches[0].state, b) << branchStateName(b);
  }
}

TEST(RecordsTest, RollbackRoundTripKeepsEveryField) {
  const auto in = fullRollback();
  const auto out = decodeRollback(encode(in));
  EXPECT_EQ(out.seq, in.seq);
  EXPECT_EQ(out.reason, in.reason);
  EXPECT_EQ(out.requestedUs, in.requestedUs);
  EXPECT_EQ(out.attempts, in.attempts);
  EXPECT_EQ(out.lastError, in.lastError);
  EXPECT_EQ(out.lastAttemptUs, in.lastAttemptUs);
  EXPECT_EQ(out.pending, in.pending);
  ASSERT_EQ(out.confirmed.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(out.confirmed[i].participant, in.confirmed[i].participant);
    EXPECT_EQ(out.confirmed[i].atUs, in.confirmed[i].atUs);
  }
  EXPECT_EQ(out.completedUs, in.completedUs);
}

TEST(RecordsTest, BranchRoundTripKeepsEveryField) {
  const auto in = fullBranch();
  const auto out = decodeBranch(encode(in));
  EXPECT_EQ(out.xid, in.xid);
  EXPECT_EQ(out.state, in.state);
  EXPECT_EQ(out.epoch, in.epoch);
  EXPECT_EQ(out.tombstone, in.tombstone);
  EXPECT_EQ(out.onePhase, in.onePhase);
  EXPECT_EQ(out.ops, in.ops);
  EXPECT_EQ(out.createdUs, in.createdUs);
  EXPECT_EQ(out.preparedUs, in.preparedUs);
  EXPECT_EQ(out.finishedUs, in.finishedUs);
  EXPECT_EQ(out.reason, in.reason);
  EXPECT_EQ(out.hostTxid, in.hostTxid);
  EXPECT_EQ(out.hostIncarnation, in.hostIncarnation);
  for (BranchStatus s : {BranchStatus::Active, BranchStatus::Prepared, BranchStatus::Committed,
                         BranchStatus::RolledBack}) {
    auto r = in;
    r.state = s;
    EXPECT_EQ(decodeBranch(encode(r)).state, s) << branchStatusName(s);
  }
}

// More operations (or parameters) than Keel ever writes: a damaged record,
// refused before it is read into memory (found by fuzz_records: a record
// declaring millions of operations took seconds and gigabytes).
TEST(RecordsTest, ARecordWithMoreOperationsThanEverWrittenIsCorrupt) {
  auto in = fullBranch();
  in.ops.assign(65536, in.ops.front());
  EXPECT_EQ(decodeBranch(encode(in)).ops.size(), 65536u);
  in.ops.push_back(in.ops.front());
  EXPECT_THROW(decodeBranch(encode(in)), CorruptRecord);
  auto sql = fullBranch();
  sql.ops = {Op::statement("pg", "debit", std::vector<SqlValue>(Limits::kMaxSqlParams + 1, SqlValue::ofInt(1)))};
  EXPECT_THROW(decodeBranch(encode(sql)), CorruptRecord);
}

TEST(RecordsTest, AccountRoundTripKeepsEveryField) {
  const auto in = fullAccount();
  const auto out = decodeAccount(encode(in));
  EXPECT_EQ(out.balance, in.balance);
  EXPECT_EQ(out.held, in.held);
  EXPECT_EQ(out.opening, in.opening);
  EXPECT_EQ(out.openedBy, in.openedBy);
}

TEST(RecordsTest, EnvelopeHeaderIsAsDocumented) {
  const std::string bytes = encode(fullAccount());
  ASSERT_GT(bytes.size(), kHeader);
  EXPECT_EQ(bytes.substr(0, 2), "KL");
  EXPECT_EQ(std::uint8_t(bytes[2]), kFormatVersion);
  EXPECT_EQ(std::uint8_t(bytes[3]), std::uint8_t(RecordType::Account));
  std::uint32_t len = std::uint8_t(bytes[4]) | std::uint8_t(bytes[5]) << 8 | std::uint8_t(bytes[6]) << 16 |
                      std::uint32_t(std::uint8_t(bytes[7])) << 24;
  EXPECT_EQ(len, bytes.size() - kHeader);
  std::uint32_t crc = std::uint8_t(bytes[8]) | std::uint8_t(bytes[9]) << 8 | std::uint8_t(bytes[10]) << 16 |
                      std::uint32_t(std::uint8_t(bytes[11])) << 24;
  EXPECT_EQ(crc, crc32c(std::string_view(bytes).substr(kHeader)));
}

TEST(RecordsTest, Crc32cMatchesTheCastagnoliCheckValue) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(""), 0u);
}

// The continuing form (the redo log checksums its header, then the ops)
// equals one pass over the whole, wherever the split falls, and both
// equal a bit-at-a-time CRC-32C: every length and alignment of the 8-byte
// steps and their tail is covered, so a redo.log written by any build
// reads back in any other.
TEST(RecordsTest, Crc32cContinuesAcrossAnySplitAndMatchesABitwiseReference) {
  auto bitwise = [](std::string_view d) {
    std::uint32_t c = 0xFFFFFFFFu;
    for (unsigned char b : d) {
      c ^= b;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
  };
  std::string data;
  for (int i = 0; i < 67; ++i) data.push_back(char((i * 131 + 7) & 0xFF));
  for (std::size_t n = 0; n <= data.size(); ++n) {
    std::string_view whole(data.data(), n);
    ASSERT_EQ(crc32c(whole), bitwise(whole)) << n;
    for (std::size_t cut = 0; cut <= n; ++cut) {
      ASSERT_EQ(crc32c(crc32c(0, whole.substr(0, cut)), whole.substr(cut)), crc32c(whole)) << n << " " << cut;
    }
  }
}

// Every single payload byte flipped is caught by the checksum.
TEST(RecordsTest, AnyFlippedPayloadByteIsCorrupt) {
  const std::string good = encode(fullInteraction());
  for (std::size_t i = kHeader; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = char(bad[i] ^ 0x01);
    try {
      decodeInteraction(bad);
      FAIL() << "flipped byte " << i << " decoded";
    } catch (const CorruptRecord& e) {
      EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
    }
  }
}

TEST(RecordsTest, FlippedChecksumByteIsCorrupt) {
  std::string bad = encode(fullBranch());
  bad[9] = char(bad[9] ^ 0x80);
  EXPECT_THROW(decodeBranch(bad), CorruptRecord);
}

TEST(RecordsTest, WrongVersionIsCorruptAndSaysSo) {
  std::string bad = encode(fullRollback());
  bad[2] = char(kFormatVersion + 1);
  try {
    decodeRollback(bad);
    FAIL() << "a future version decoded";
  } catch (const CorruptRecord& e) {
    EXPECT_NE(std::string(e.what()).find("version 2"), std::string::npos) << e.what();
  }
}

TEST(RecordsTest, WrongTypeIsCorrupt) {
  // A valid branch record read as an account, and a bad type byte.
  const std::string branch = encode(fullBranch());
  try {
    decodeAccount(branch);
    FAIL() << "a branch record decoded as an account";
  } catch (const CorruptRecord& e) {
    EXPECT_NE(std::string(e.what()).find("type 3"), std::string::npos) << e.what();
  }
  std::string bad = branch;
  bad[3] = char(200);
  EXPECT_THROW(decodeBranch(bad), CorruptRecord);
  EXPECT_THROW(decodeInteraction(encode(fullRollback())), CorruptRecord);
  EXPECT_THROW(decodeRollback(encode(fullInteraction())), CorruptRecord);
}

TEST(RecordsTest, TruncatedRecordIsCorruptAtEveryLength) {
  const std::string good = encode(fullBranch());
  for (std::size_t n = 0; n < good.size(); ++n) {
    EXPECT_THROW(decodeBranch(std::string_view(good).substr(0, n)), CorruptRecord) << "length " << n;
  }
  // Trailing garbage is refused too.
  EXPECT_THROW(decodeBranch(good + std::string(8, '\0')), CorruptRecord);
}

TEST(RecordsTest, BadMagicIsCorrupt) {
  std::string bad = encode(fullAccount());
  bad[0] = 'X';
  try {
    decodeAccount(bad);
    FAIL() << "bad magic decoded";
  } catch (const CorruptRecord& e) {
    EXPECT_NE(std::string(e.what()).find("magic"), std::string::npos) << e.what();
  }
  bad = encode(fullAccount());
  bad[1] = 'l';
  EXPECT_THROW(decodeAccount(bad), CorruptRecord);
  // Plain text that was never a Keel record.
  EXPECT_THROW(decodeAccount("balance=100 held=0 opening=false"), CorruptRecord);
}

TEST(RecordsTest, WellSealedGarbagePayloadIsCorrupt) {
  // A correct envelope around bytes that are no Cap'n Proto message: the
  // decoder's own failure is reported as CorruptRecord, not kj::Exception.
  // One segment of one word whose root pointer is all ones: not a struct.
  std::string payload("\0\0\0\0\1\0\0\0", 8);
  payload += std::string(8, '\xff');
  std::string rec = "KL";
  rec += char(kFormatVersion);
  rec += char(RecordType::Account);
  auto le32 = [](std::uint32_t v) {
    std::string s(4, '\0');
    for (int i = 0; i < 4; ++i) s[i] = char((v >> (8 * i)) & 0xff);
    return s;
  };
  rec += le32(std::uint32_t(payload.size()));
  rec += le32(crc32c(payload));
  rec += payload;
  try {
    decodeAccount(rec);
    FAIL() << "garbage payload decoded";
  } catch (const CorruptRecord& e) {
    EXPECT_NE(std::string(e.what()).find("does not decode"), std::string::npos) << e.what();
  }
}

TEST(RecordsTest, InteractionJsonHasTheFieldsAndEscapesStrings) {
  const auto r = fullInteraction();
  const std::string json = toJson(r);
  EXPECT_EQ(json.front(), '{');
  EXPECT_EQ(json.back(), '}');
  EXPECT_EQ(json.find('\n'), std::string::npos) << "raw newline in JSON";
  for (const char* part : {"\"seq\":", "\"epoch\":42", "\"interactive\":true", "\"one_phase\":true",
                           "\"state\":\"committing\"", "\"decision\":\"commit\"", "\"created_us\":1700000000000001",
                           "\"votes_us\":1700000000000002", "\"decided_us\":1700000000000003",
                           "\"completed_us\":1700000000000004", "\"phase2_attempts\":3",
                           "\"participant\":\"bank-a\"", "\"branch\":65535", "\"state\":\"voted-no\"",
                           "\"reason\":\"insufficient funds\"", "\"kind\":\"debit\"", "\"account\":\"alice\"",
                           "\"amount\":250", "\"kind\":\"open\"", "\"staged\":true"}) {
    EXPECT_NE(json.find(part), std::string::npos) << part << " missing from " << json;
  }
  EXPECT_NE(json.find("\"seq\":" + std::to_string(r.seq)), std::string::npos);
  EXPECT_NE(json.find("\"seq_text\":\"7:123456789\""), std::string::npos) << json;
  EXPECT_NE(json.find(R"("error":"bank-b said \"no\"\nsecond line")"), std::string::npos) << json;
}

// A declared statement's call says which statement and with what: its
// parameters are the only place the story of what it did lives.
TEST(RecordsTest, InteractionJsonNamesEachStatementAndItsParameters) {
  InteractionRecord r;
  r.seq = 5;
  InteractionRecord::Branch b;
  b.participant = "bank-a";
  b.branch = 1;
  b.ops = {Op::statement("bank-a", "debit", {SqlValue::ofInt(100000000), SqlValue::ofText("acct-\"38\"")}, 1),
           Op::statement("bank-a", "note", {SqlValue::null(), SqlValue::ofBool(true), SqlValue::ofFloat(0.5)})};
  r.branches.push_back(b);
  const std::string json = toJson(r);
  EXPECT_NE(json.find(R"("statement":"debit","params":[100000000,"acct-\"38\""],"expect_rows":1)"), std::string::npos)
      << json;
  EXPECT_NE(json.find(R"("statement":"note","params":[null,true,0.5])"), std::string::npos) << json;
}

TEST(RecordsTest, RollbackJsonHasTheFieldsAndEscapesStrings) {
  auto r = fullRollback();
  r.lastError = "tab\there, quote \" and backslash \\";
  const std::string json = toJson(r);
  for (const char* part : {"\"seq\":99", "\"seq_text\":\"0:99\"", "\"reason\":\"participant bank-b voted no\"",
                           "\"requested_us\":11", "\"attempts\":4", "\"last_attempt_us\":12",
                           "\"pending\":[\"bank-c\",\"bank-d\"]",
                           "\"confirmed\":[{\"participant\":\"bank-a\",\"at_us\":13},{\"participant\":\"bank-b\","
                           "\"at_us\":14}]",
                           "\"completed_us\":15"}) {
    EXPECT_NE(json.find(part), std::string::npos) << part << " missing from " << json;
  }
  EXPECT_NE(json.find(R"("last_error":"tab\there, quote \" and backslash \\")"), std::string::npos) << json;
}

TEST(RecordsTest, AuditJsonNamesTheSeqBothWays) {
  AuditRecord a;
  a.atUs = 16;
  a.seq = makeSeq(1, 5);
  a.action = "force-commit";
  a.who = "tester";
  a.why = "bank-b confirmed";
  const std::string json = toJson(a);
  EXPECT_NE(json.find("\"seq\":281474976710661,\"seq_text\":\"1:5\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"action\":\"force-commit\""), std::string::npos) << json;
}

TEST(RecordsTest, JsonEscapeHandlesControlCharacters) {
  EXPECT_EQ(jsonEscape("a\"b"), "a\\\"b");
  EXPECT_EQ(jsonEscape("\\"), "\\\\");
  EXPECT_EQ(jsonEscape("\r\n\t"), "\\r\\n\\t");
  EXPECT_EQ(jsonEscape(std::string("\x01\x1f", 2)), "\\u0001\\u001f");
  EXPECT_EQ(jsonEscape("caf\xc3\xa9"), "caf\xc3\xa9");  // UTF-8 passes through
}

TEST(RecordsTest, JsonEscapeReplacesBytesThatAreNotUtf8) {
  const std::string utf8 = "\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf";  // 2, 3, 4 bytes; U+10FFFF
  EXPECT_EQ(jsonEscape(utf8), utf8);
  EXPECT_EQ(jsonEscape("a\xff" "b"), "a\\ufffdb");
  EXPECT_EQ(jsonEscape("\xc0\xaf"), "\\ufffd\\ufffd");                      // overlong '/'
  EXPECT_EQ(jsonEscape("\xe0\x80\xaf"), "\\ufffd\\ufffd\\ufffd");             // overlong '/'
  EXPECT_EQ(jsonEscape("\xed\xa0\x80"), "\\ufffd\\ufffd\\ufffd");             // a surrogate
  EXPECT_EQ(jsonEscape("\xf4\x90\x80\x80"), "\\ufffd\\ufffd\\ufffd\\ufffd");  // past U+10FFFF
  EXPECT_EQ(jsonEscape("\xe2\x82"), "\\ufffd\\ufffd");                      // cut short
  EXPECT_EQ(jsonEscape("\xe2\x82\"x"), "\\ufffd\\ufffd\\\"x");               // cut short by a quote
}

TEST(RecordsTest, FormatMicrosIsUtcIso8601) {
  EXPECT_EQ(formatMicros(0), "-");
  EXPECT_EQ(formatMicros(1'000'000'123'456ull), "1970-01-12T13:46:40.123456Z");
  EXPECT_EQ(formatMicros(1'700'000'000'000'001ull), "2023-11-14T22:13:20.000001Z");
}

TEST(RecordsTest, TextRenderingsNameTheStateAndBranches) {
  const std::string text = toText(fullInteraction());
  EXPECT_EQ(text.rfind("interaction 7:123456789 (interactive) (one-phase)\n", 0), 0u) << text;
  EXPECT_NE(text.find("committing"), std::string::npos) << text;
  EXPECT_NE(text.find("branch 65535 @ bank-b: voted-no (insufficient funds)"), std::string::npos) << text;
  EXPECT_NE(text.find("phase-2 attempts 3"), std::string::npos) << text;
  const std::string rb = toText(fullRollback());
  EXPECT_EQ(rb.rfind("rollback 0:99\n", 0), 0u) << rb;
  EXPECT_NE(rb.find("confirmed  bank-a"), std::string::npos) << rb;
  EXPECT_NE(rb.find("bank-c bank-d"), std::string::npos) << rb;
}

}  // namespace
}  // namespace keel
