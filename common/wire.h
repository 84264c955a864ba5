#pragma once
// Conversions between Keel's plain value types and their Cap'n Proto form.

#include <capnp/message.h>

#include <vector>

#include "common/types.h"
#include "schemas/keel.capnp.h"

namespace keel {

void fillOp(wire::Operation::Builder b, const Op& op);
// How much of one list a network message is decoded: one operation, and one
// SQL parameter per operation, more than any check accepts, so an
// over-long list is still refused by that check (Coordinator::validate, the
// agents), while a message of a few bytes declaring a million operations or
// parameters (a list of empty structs costs nothing on the wire) no longer
// makes a million of them: found by tests/fuzz (docs/fuzzing.md).
constexpr std::size_t kReadOpsLimit = Limits::kMaxOpsPerInteraction + 1;
constexpr std::size_t kReadParamsLimit = Limits::kMaxSqlParams + 1;
// `whole`: every parameter, however many (records).
Op readOp(wire::Operation::Reader r, bool whole = false);
// From the network: at most kReadOpsLimit operations and kReadParamsLimit
// parameters of each.
std::vector<Op> readOps(capnp::List<wire::Operation>::Reader list);
// From a record (checksummed: what Keel wrote): everything, as written.
std::vector<Op> readAllOps(capnp::List<wire::Operation>::Reader list);
void fillOps(capnp::List<wire::Operation>::Builder b, const std::vector<Op>& ops);
// A rough upper estimate of ops' size in a message (CallBatcher weights).
std::size_t wireWeight(const std::vector<Op>& ops);
void fillOpResult(wire::OpResult::Builder b, const OpResult& r);
OpResult readOpResult(wire::OpResult::Reader r);

// The first segment a message is built in (the sizeHint of a request or of
// a call's results): Cap'n Proto's default is 1,024 words, an 8 KiB calloc
// per message (zeroed, and served from glibc's large bins) where a prepare
// or a commit of a few branches needs a few hundred bytes. An estimate of
// `bytes`: too small only means a second segment.
inline capnp::MessageSize messageSizeHint(std::size_t bytes, unsigned caps = 0) {
  return capnp::MessageSize{bytes / sizeof(capnp::word) + 8, caps};
}

inline Xid readXid(wire::Xid::Reader r) { return Xid{r.getSeq(), r.getBranch()}; }
inline void fillXid(wire::Xid::Builder b, Xid x) {
  b.setSeq(x.seq);
  b.setBranch(x.branch);
}

// Limits for every message read from the network: 8 MiB of words traversed
// and nesting depth 32; an interaction is far smaller than that.
capnp::ReaderOptions networkReaderOptions();

}  // namespace keel
