#include "common/wire.h"

namespace keel {

void fillOp(wire::Operation::Builder b, const Op& op) {
  b.setParticipant(op.participant);
  b.setKind(static_cast<wire::LedgerOpKind>(op.kind));
  b.setAccount(op.account);
  b.setAmount(op.amount);
}

Op readOp(wire::Operation::Reader r) {
  Op op;
  op.participant = r.getParticipant().cStr();
  op.kind = static_cast<OpKind>(r.getKind());
  op.account = r.getAccount().cStr();
  op.amount = r.getAmount();
  return op;
}

std::vector<Op> readOps(capnp::List<wire::Operation>::Reader list) {
  std::vector<Op> ops;
  ops.reserve(list.size());
  for (auto o : list) ops.push_back(readOp(o));
  return ops;
}

void fillOps(capnp::List<wire::Operation>::Builder b, const std::vector<Op>& ops) {
  for (unsigned i = 0; i < ops.size(); ++i) fillOp(b[i], ops[i]);
}

capnp::ReaderOptions networkReaderOptions() {
  capnp::ReaderOptions o;
  o.traversalLimitInWords = 1024 * 1024;  // 8 MiB
  o.nestingLimit = 32;
  return o;
}

}  // namespace keel
