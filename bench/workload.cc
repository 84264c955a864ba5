#include "bench/workload.h"

#include <algorithm>

#include "tools/bank.h"

namespace keel::bench {

std::uint32_t WorkloadSpec::width() const {
  if (kind == "single") return 1;
  if (kind == "multi") return participants;
  return 2;
}

std::string WorkloadSpec::check() const {
  if (kind != "transfer" && kind != "single" && kind != "multi") {
    return "--workload must be transfer, single or multi, not '" + kind + "'";
  }
  if (kind == "multi" && (participants < 1 || participants > 5)) return "--participants must be 1..5";
  if (rollbackPercent > 100 || readPercent > 100 || rollbackPercent + readPercent > 100) {
    return "--rollback-percent + --read-percent must be at most 100";
  }
  if (accounts < 1) return "--accounts must be at least 1";
  if (agents.size() < width()) {
    return "the workload needs " + std::to_string(width()) + " agents, the deployment has " +
           std::to_string(agents.size());
  }
  return {};
}

Workload::Workload(const WorkloadSpec& spec, std::uint64_t seed) : spec_(spec), rng_(seed) {}

std::vector<std::size_t> Workload::pick(std::uint32_t n) {
  // Partial Fisher-Yates over the agent indexes: n distinct participants.
  std::vector<std::size_t> idx(spec_.agents.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  for (std::uint32_t i = 0; i < n; ++i) std::swap(idx[i], idx[i + rng_() % (idx.size() - i)]);
  idx.resize(n);
  return idx;
}

std::string Workload::account() { return bank::accountName(rng_() % spec_.accounts); }

Interaction Workload::next() {
  Interaction it;
  auto roll = std::uint32_t(rng_() % 100);
  if (roll < spec_.rollbackPercent) {
    it.intent = Interaction::Intent::Rollback;
  } else if (roll < spec_.rollbackPercent + spec_.readPercent) {
    it.intent = Interaction::Intent::Read;
  }
  const bool pg = spec_.adapter == Adapter::Postgres;
  auto parts = pick(spec_.width());
  std::int64_t amount = std::int64_t(1 + rng_() % 100);
  for (std::size_t k = 0; k < parts.size(); ++k) {
    const std::string& p = spec_.agents[parts[k]];
    std::string acct = account();
    if (it.intent == Interaction::Intent::Read) {
      it.ops.push_back(pg ? bank::sqlRead(p, acct) : Op{p, OpKind::ReadBalance, acct, 0});
      continue;
    }
    // The first participant pays (for width 1 it only pays when the
    // interaction is meant to fail); the others are credited.
    bool debit = k == 0 && (parts.size() > 1 || it.intent == Interaction::Intent::Rollback);
    std::int64_t sum = it.intent == Interaction::Intent::Rollback ? kOverdraw
                                                                  : amount * std::int64_t(parts.size() - 1);
    if (debit) {
      it.ops.push_back(pg ? bank::sqlDebit(p, acct, sum) : Op{p, OpKind::Debit, acct, sum});
    } else {
      it.ops.push_back(pg ? bank::sqlCredit(p, acct, amount) : Op{p, OpKind::Credit, acct, amount});
    }
  }
  return it;
}

Workload::Transfer Workload::nextTransfer() {
  auto parts = pick(2);
  Transfer t{parts[0], parts[1], account(), account(), std::int64_t(1 + rng_() % 100), false};
  if (rng_() % 100 < spec_.rollbackPercent) {
    t.overdraw = true;
    t.amount = kOverdraw;
  }
  return t;
}

}  // namespace keel::bench
