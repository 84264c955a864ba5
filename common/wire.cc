#include "common/wire.h"

#include <algorithm>

namespace keel {

void fillOp(wire::Operation::Builder b, const Op& op) {
  b.setParticipant(op.participant);
  b.setKind(static_cast<wire::LedgerOpKind>(op.kind));
  b.setAccount(op.account);
  b.setAmount(op.amount);
  if (op.kind == OpKind::Sql) {
    b.setStatement(op.statementName);
    if (!op.sql.empty()) b.setSql(op.sql);
    b.setExpectRows(op.expectRows);
    auto ps = b.initParams(op.params.size());
    for (unsigned i = 0; i < op.params.size(); ++i) {
      const auto& p = op.params[i];
      switch (p.type) {
        case SqlValue::Type::Null: ps[i].setNull(); break;
        case SqlValue::Type::Int: ps[i].setInt(p.i); break;
        case SqlValue::Type::Text: ps[i].setText(p.text); break;
        case SqlValue::Type::Float: ps[i].setFloat(p.f); break;
        case SqlValue::Type::Bool: ps[i].setBool(p.b); break;
      }
    }
  }
}

Op readOp(wire::Operation::Reader r, bool whole) {
  Op op;
  op.participant = r.getParticipant().cStr();
  // The wire's enum has 16 bits, OpKind 8: an undefined kind (the schema's
  // next, or a malformed message) must stay undefined, never wrap onto a
  // defined one (260 onto sql, 257 onto credit). kUndefinedOpKind is refused
  // by every check (Coordinator::validate, the adapters).
  auto kind = std::uint16_t(r.getKind());
  op.kind = kind > std::uint16_t(OpKind::Sql) ? kUndefinedOpKind : static_cast<OpKind>(kind);
  op.account = r.getAccount().cStr();
  op.amount = r.getAmount();
  if (op.kind == OpKind::Sql) {
    op.statementName = r.getStatement().cStr();
    op.sql = r.getSql().cStr();
    op.expectRows = r.getExpectRows();
    auto params = r.getParams();
    std::size_t n = whole ? params.size() : std::min<std::size_t>(params.size(), kReadParamsLimit);
    op.params.reserve(n);
    for (unsigned i = 0; i < n; ++i) {
      auto p = params[i];
      SqlValue v;
      switch (p.which()) {
        case wire::SqlValue::NULL_: v.type = SqlValue::Type::Null; break;
        case wire::SqlValue::INT: v = SqlValue::ofInt(p.getInt()); break;
        case wire::SqlValue::TEXT: v = SqlValue::ofText(p.getText().cStr()); break;
        case wire::SqlValue::FLOAT: v.type = SqlValue::Type::Float; v.f = p.getFloat(); break;
        case wire::SqlValue::BOOL: v.type = SqlValue::Type::Bool; v.b = p.getBool(); break;
      }
      op.params.push_back(std::move(v));
    }
  }
  return op;
}

void fillOpResult(wire::OpResult::Builder b, const OpResult& r) {
  b.setBalance(r.balance);
  b.setAvailable(r.available);
  b.setAffected(r.affected);
  if (!r.rows.empty()) {
    auto rows = b.initRows(r.rows.size());
    for (unsigned i = 0; i < r.rows.size(); ++i) {
      auto cells = rows.init(i, r.rows[i].size());
      for (unsigned k = 0; k < r.rows[i].size(); ++k) {
        if (r.rows[i][k]) {
          cells[k].setValue(*r.rows[i][k]);
        } else {
          cells[k].setNull();
        }
      }
    }
  }
}

OpResult readOpResult(wire::OpResult::Reader r) {
  OpResult o;
  o.balance = r.getBalance();
  o.available = r.getAvailable();
  o.affected = r.getAffected();
  for (auto row : r.getRows()) {
    std::vector<std::optional<std::string>> cells;
    for (auto c : row) {
      if (c.isValue()) {
        cells.emplace_back(c.getValue().cStr());
      } else {
        cells.emplace_back(std::nullopt);
      }
    }
    o.rows.push_back(std::move(cells));
  }
  return o;
}

std::vector<Op> readOps(capnp::List<wire::Operation>::Reader list) {
  std::size_t n = std::min<std::size_t>(list.size(), kReadOpsLimit);
  std::vector<Op> ops;
  ops.reserve(n);
  for (unsigned i = 0; i < n; ++i) ops.push_back(readOp(list[i]));
  return ops;
}

std::vector<Op> readAllOps(capnp::List<wire::Operation>::Reader list) {
  std::vector<Op> ops;
  ops.reserve(list.size());
  for (auto o : list) ops.push_back(readOp(o, true));
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

std::size_t wireWeight(const std::vector<Op>& ops) {
  std::size_t w = 64;
  for (const Op& op : ops) {
    w += 96 + op.participant.size() + op.account.size() + op.statementName.size() + op.sql.size() +
         24 * op.params.size();
  }
  return w;
}

}  // namespace keel
