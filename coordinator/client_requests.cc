#include "coordinator/client_requests.h"

#include <algorithm>
#include <string_view>

#include "common/config.h"
#include "common/statements.h"

namespace keel {

std::optional<std::string> validateOps(const std::vector<Op>& ops, bool allowEmpty,
                                       const std::function<bool(const std::string&)>& known,
                                       const std::function<const Statements*(const std::string&)>& declared) {
  if (ops.empty() && !allowEmpty) return "the interaction has no operations";
  if (ops.size() > Limits::kMaxOpsPerInteraction) {  // read from the network: at most one more (readOps)
    return "the interaction has more than " + std::to_string(Limits::kMaxOpsPerInteraction) +
           " operations; the limit is " + std::to_string(Limits::kMaxOpsPerInteraction);
  }
  // Distinct participants, counted without allocating (a request names few).
  std::vector<std::string_view> participants;
  auto where = [](std::size_t i) { return "operation " + std::to_string(i + 1) + ": "; };
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    if (!known(op.participant)) {
      return where(i) + "unknown participant '" + op.participant + "'";
    }
    if (std::find(participants.begin(), participants.end(), op.participant) == participants.end()) {
      participants.push_back(op.participant);
    }
    if (std::uint8_t(op.kind) > std::uint8_t(OpKind::Sql)) return where(i) + "unknown operation kind";
    if (op.kind == OpKind::Sql) {
      // The agent checks the call against its declaration (it trusts no
      // coordinator); what needs no declaration is refused here already.
      if (!op.sql.empty()) return where(i) + kFreeSqlRefused;
      if (!validName(op.statementName)) {
        return where(i) + "statement name '" + op.statementName +
               "' is missing or invalid (1-64 chars of A-Z a-z 0-9 _ . -)";
      }
      if (auto big = checkParamLimits(op.params)) return where(i) + *big;
      if (op.expectRows < -1) return where(i) + "expected row count must be -1 (any) or >= 0";
      // What the participant declared, when it said (at connect).
      if (const Statements* st = declared ? declared(op.participant) : nullptr) {
        auto it = st->find(op.statementName);
        if (it == st->end()) {
          return where(i) + notDeclared(*st, op.statementName, op.participant);
        }
        if (auto bad = checkCall(it->second, op)) return where(i) + *bad;
      }
      continue;
    }
    if (op.account.empty()) return where(i) + "account name is empty";
    if (op.account.size() > Limits::kMaxAccountName) return where(i) + "account name is too long";
    if (op.kind == OpKind::Credit || op.kind == OpKind::Debit) {
      if (op.amount <= 0) return where(i) + "amount must be positive, got " + std::to_string(op.amount);
    }
    if (op.kind == OpKind::OpenAccount && op.amount < 0) return where(i) + "opening balance must not be negative";
    if (op.amount > Limits::kMaxAmount) {
      return where(i) + "amount " + std::to_string(op.amount) + " exceeds the limit " +
             std::to_string(Limits::kMaxAmount);
    }
  }
  if (participants.size() > Limits::kMaxParticipants) return "too many participants in one interaction";
  return std::nullopt;
}

}  // namespace keel
