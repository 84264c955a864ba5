#pragma once
// Conversions between Keel's plain value types and their Cap'n Proto form.

#include <capnp/message.h>

#include <vector>

#include "common/types.h"
#include "schemas/keel.capnp.h"

namespace keel {

void fillOp(wire::Operation::Builder b, const Op& op);
Op readOp(wire::Operation::Reader r);
std::vector<Op> readOps(capnp::List<wire::Operation>::Reader list);
void fillOps(capnp::List<wire::Operation>::Builder b, const std::vector<Op>& ops);
// A rough upper estimate of ops' size in a message (CallBatcher weights).
std::size_t wireWeight(const std::vector<Op>& ops);
void fillOpResult(wire::OpResult::Builder b, const OpResult& r);
OpResult readOpResult(wire::OpResult::Reader r);

inline Xid readXid(wire::Xid::Reader r) { return Xid{r.getSeq(), r.getBranch()}; }
inline void fillXid(wire::Xid::Builder b, Xid x) {
  b.setSeq(x.seq);
  b.setBranch(x.branch);
}

// Limits for every message read from the network: 8 MiB of words traversed
// and nesting depth 32; an interaction is far smaller than that.
capnp::ReaderOptions networkReaderOptions();

}  // namespace keel
