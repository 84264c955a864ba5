// Reading operations from the wire (common/wire.h) and the coordinator's
// checks of a client's request (coordinator/client_requests.h). Regression
// tests for what tests/fuzz found (docs/fuzzing.md).

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>

#include "common/records.h"
#include "common/wire.h"
#include "coordinator/client_requests.h"
#include "coordinator/replies.h"
#include "participant/adapters/ledger.h"

namespace keel {
namespace {

// Found by fuzz_coordinator_request: the wire's LedgerOpKind has 16 bits,
// OpKind 8, and readOp cast one onto the other, so kind 260 was read as sql
// and 257 as credit: an operation of a kind the schema does not define
// passed every check as a defined one.
TEST(Wire, UndefinedOperationKindStaysUndefined) {
  for (std::uint16_t raw : {5, 255, 256, 257, 260, 65535}) {
    capnp::MallocMessageBuilder m;
    auto b = m.initRoot<wire::Operation>();
    b.setParticipant("bank-a");
    b.setKind(static_cast<wire::LedgerOpKind>(raw));
    b.setAccount("alice");
    b.setAmount(5);
    b.setSql("SELECT 1");
    Op op = readOp(b.asReader());
    EXPECT_EQ(op.kind, kUndefinedOpKind) << raw;
    EXPECT_TRUE(op.sql.empty()) << raw;  // read only for kind sql
    auto bad = validateOps({op}, false, [](const std::string&) { return true; });
    ASSERT_TRUE(bad) << raw;
    EXPECT_EQ(*bad, "operation 1: unknown operation kind");
    EXPECT_TRUE(ledger::checkOp(op)) << raw;
  }
}

TEST(Wire, DefinedOperationKindsReadAsSent) {
  for (std::uint16_t raw = 0; raw <= 4; ++raw) {
    capnp::MallocMessageBuilder m;
    auto b = m.initRoot<wire::Operation>();
    b.setKind(static_cast<wire::LedgerOpKind>(raw));
    EXPECT_EQ(std::uint16_t(readOp(b.asReader()).kind), raw);
  }
}

// Found by fuzz_coordinator_request (its executions per second fell to
// ~80): a Coordinator.submit message of 33 bytes declaring 1,000,000
// operations (a list of empty structs costs nothing on the wire, and the
// traversal limit allows a million) made the coordinator build a million
// Ops, some 300 MB and seconds, before refusing the request. The list is
// read only up to one operation past the limit now.
TEST(Wire, AListOfAMillionEmptyOperationsIsNotDecodedWhole) {
  // Half the traversal limit: the test reads the list twice.
  constexpr std::uint64_t kCount = 500000;
  const std::uint64_t raw[] = {
      std::uint64_t(3) << 32,         // segment table: one segment of 3 words
      std::uint64_t(1) << 48,         // root: SubmitParams, no data, 1 pointer
      1 | (std::uint64_t(7) << 32),   // operations: an inline-composite list ...
      kCount << 2,                    // ... its tag: kCount structs of 0 words
  };
  auto words = reinterpret_cast<const capnp::word*>(raw);
  capnp::FlatArrayMessageReader reader(kj::arrayPtr(words, 4), networkReaderOptions());
  auto p = reader.getRoot<wire::Coordinator::SubmitParams>();
  ASSERT_EQ(p.getOperations().size(), kCount);
  auto req = readSubmitRequest(p);
  EXPECT_EQ(req.ops.size(), kReadOpsLimit);
  auto bad = validateOps(req.ops, false, [](const std::string&) { return true; });
  ASSERT_TRUE(bad);
  EXPECT_EQ(*bad, "the interaction has more than 256 operations; the limit is 256");
}

TEST(Wire, SqlParametersAreReadUpToOnePastTheLimit) {
  capnp::MallocMessageBuilder m;
  auto b = m.initRoot<wire::Operation>();
  b.setParticipant("pg");
  b.setKind(wire::LedgerOpKind::SQL);
  b.setStatement("debit");
  b.initParams(1000);
  Op op = readOp(b.asReader());
  EXPECT_EQ(op.params.size(), kReadParamsLimit);
  auto bad = validateOps({op}, false, [](const std::string&) { return true; });
  ASSERT_TRUE(bad);
  EXPECT_EQ(*bad, "operation 1: more than 256 SQL parameters; the limit is 256");
  EXPECT_EQ(readOp(b.asReader(), true).params.size(), 1000u);  // a record: as written
}

// A participant's recovered branch longer than any branch can be is refused
// (readOps would cut it short), never taken cut.
TEST(Wire, ARecoveredBranchOfTooManyOperationsIsMalformed) {
  capnp::MallocMessageBuilder m;
  auto l = m.initRoot<wire::Participant::RecoverResults>().initBranches(1);
  l[0].initOperations(Limits::kMaxOpsPerInteraction + 1);
  EXPECT_THROW(readRecovered(m.getRoot<wire::Participant::RecoverResults>().asReader().getBranches()),
               MalformedReply);
  l[0].initOperations(Limits::kMaxOpsPerInteraction);
  EXPECT_EQ(readRecovered(m.getRoot<wire::Participant::RecoverResults>().asReader().getBranches())[0].ops.size(),
            Limits::kMaxOpsPerInteraction);
}

// Records are what Keel wrote (and checksummed): read whole.
TEST(Wire, RecordsKeepEveryOperation) {
  BranchRecord r;
  r.ops.assign(Limits::kMaxOpsPerInteraction + 10, Op{"bank-a", OpKind::Credit, "alice", 1});
  EXPECT_EQ(decodeBranch(encode(r)).ops.size(), r.ops.size());
}

}  // namespace
}  // namespace keel
