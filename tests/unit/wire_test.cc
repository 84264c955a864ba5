// Reading operations from the wire (common/wire.h) and the coordinator's
// checks of a client's request (coordinator/client_requests.h). Regression
// tests for what tests/fuzz found (docs/fuzzing.md).

#include <capnp/message.h>
#include <gtest/gtest.h>

#include "common/wire.h"
#include "coordinator/client_requests.h"
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

}  // namespace
}  // namespace keel
