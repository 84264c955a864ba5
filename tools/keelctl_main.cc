// keelctl: the Keel command-line client.
//
//   keelctl [-c HOST:PORT] open bank-a:alice 1000
//   keelctl [-c HOST:PORT] transfer bank-a:alice bank-b:bob 250
//   keelctl [-c HOST:PORT] balance bank-a:alice [bank-b:bob ...]
//   keelctl [-c HOST:PORT] query SEQ [--json]
//   keelctl [-c HOST:PORT] list [--limit N] [--json]
//   keelctl [-c HOST:PORT] info [--json]
//
// Exit status: 0 done/committed, 1 rolled back or not found, 2 bad usage or
// invalid request, 3 unreachable, in doubt or unavailable.

#include <CLI/CLI.hpp>
#include <kj/async-io.h>

#include <iostream>

#include "common/client.h"

namespace {

int outcomeExit(keel::ClientOutcome o) {
  switch (o) {
    case keel::ClientOutcome::Committed: return 0;
    case keel::ClientOutcome::RolledBack: return 1;
    case keel::ClientOutcome::Invalid: return 2;
    default: return 3;
  }
}

void printOutcome(const keel::SubmitOutcome& o, bool json) {
  if (json) {
    std::cout << "{\"seq\":" << o.seq << ",\"outcome\":\"" << keel::clientOutcomeName(o.outcome)
              << "\",\"reason\":\"" << keel::jsonEscape(o.reason) << "\"}\n";
    return;
  }
  std::cout << "seq " << o.seq << ": " << keel::clientOutcomeName(o.outcome);
  if (!o.reason.empty()) std::cout << " (" << o.reason << ")";
  std::cout << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keelctl: Keel command-line client"};
  app.require_subcommand(1);
  std::string coordinator = "127.0.0.1:7400";
  bool json = false;
  app.add_option("-c,--coordinator", coordinator, "coordinator address host:port")->capture_default_str();
  app.add_flag("--json", json, "machine-readable output");

  std::string openRef;
  std::int64_t openAmount = 0;
  auto* open = app.add_subcommand("open", "open an account with an opening balance");
  open->add_option("account", openRef, "PARTICIPANT:ACCOUNT")->required();
  open->add_option("amount", openAmount, "opening balance (>= 0)");

  std::string from, to;
  std::int64_t amount = 0;
  auto* transfer = app.add_subcommand("transfer", "move money between two accounts atomically");
  transfer->add_option("from", from, "PARTICIPANT:ACCOUNT to debit")->required();
  transfer->add_option("to", to, "PARTICIPANT:ACCOUNT to credit")->required();
  transfer->add_option("amount", amount, "amount (> 0)")->required();

  std::vector<std::string> balanceRefs;
  auto* balance = app.add_subcommand("balance", "read account balances");
  balance->add_option("accounts", balanceRefs, "PARTICIPANT:ACCOUNT ...")->required();

  std::uint64_t seq = 0;
  auto* query = app.add_subcommand("query", "show an interaction and its rollback record");
  query->add_option("seq", seq, "interaction sequence number")->required();

  std::uint32_t limit = 100;
  auto* list = app.add_subcommand("list", "list unfinished interactions");
  list->add_option("--limit", limit, "at most this many")->capture_default_str();

  auto* info = app.add_subcommand("info", "coordinator identity and counters");

  for (auto* sub : {open, transfer, balance, query, list, info}) {
    sub->add_flag("--json", json, "machine-readable output");
  }
  CLI11_PARSE(app, argc, argv);

  std::vector<keel::Op> ops;
  try {
    if (open->parsed()) {
      auto [p, a] = keel::splitAccount(openRef);
      ops.push_back(keel::Op{p, keel::OpKind::OpenAccount, a, openAmount});
    } else if (transfer->parsed()) {
      ops = keel::transferOps(from, to, amount);
    } else if (balance->parsed()) {
      for (auto& r : balanceRefs) {
        auto [p, a] = keel::splitAccount(r);
        ops.push_back(keel::Op{p, keel::OpKind::ReadBalance, a, 0});
      }
    }
  } catch (const std::invalid_argument& e) {
    std::cerr << "keelctl: " << e.what() << "\n";
    return 2;
  }

  try {
    auto io = kj::setupAsyncIo();
    auto client = keel::KeelClient::connect(io, coordinator).wait(io.waitScope);
    if (!ops.empty()) {
      auto o = client->submit(ops).wait(io.waitScope);
      if (balance->parsed() && o.outcome == keel::ClientOutcome::Committed) {
        for (std::size_t i = 0; i < balanceRefs.size(); ++i) {
          if (json) {
            std::cout << "{\"account\":\"" << keel::jsonEscape(balanceRefs[i]) << "\",\"balance\":"
                      << o.results[i].balance << ",\"available\":" << o.results[i].available << "}\n";
          } else {
            std::cout << balanceRefs[i] << "  balance " << o.results[i].balance << "  available "
                      << o.results[i].available << "\n";
          }
        }
        return 0;
      }
      printOutcome(o, json);
      return outcomeExit(o.outcome);
    }
    if (query->parsed()) {
      auto q = client->query(seq).wait(io.waitScope);
      if (!q) {
        std::cerr << "keelctl: no interaction " << seq << "\n";
        return 1;
      }
      if (json) {
        std::cout << "{\"interaction\":" << keel::toJson(q->interaction)
                  << ",\"rollback\":" << (q->rollback ? keel::toJson(*q->rollback) : "null") << "}\n";
      } else {
        std::cout << keel::toText(q->interaction);
        if (q->rollback) std::cout << keel::toText(*q->rollback);
      }
      return 0;
    }
    if (list->parsed()) {
      auto items = client->listUnfinished(limit).wait(io.waitScope);
      if (json) {
        std::cout << "[";
        for (std::size_t i = 0; i < items.size(); ++i) std::cout << (i ? "," : "") << keel::toJson(items[i]);
        std::cout << "]\n";
      } else {
        auto now = keel::wallMicros();
        std::cout << items.size() << " unfinished interaction(s)\n";
        for (auto& r : items) {
          std::cout << "  " << r.seq << "  " << keel::stateName(r.state) << "  age "
                    << (now > r.createdUs ? (now - r.createdUs) / 1000 : 0) << " ms  waiting on:";
          for (auto& b : r.branches) {
            if (b.state != keel::InteractionRecord::BranchState::Committed &&
                b.state != keel::InteractionRecord::BranchState::RolledBack &&
                b.state != keel::InteractionRecord::BranchState::ReadOnly) {
              std::cout << " " << b.participant;
            }
          }
          if (!r.error.empty()) std::cout << "  (" << r.error << ")";
          std::cout << "\n";
        }
      }
      return 0;
    }
    if (info->parsed()) {
      auto i = client->info().wait(io.waitScope);
      if (json) {
        std::cout << "{\"node_id\":" << i.nodeId << ",\"epoch\":" << i.epoch << ",\"committed\":" << i.committed
                  << ",\"rolled_back\":" << i.rolledBack << ",\"unfinished\":" << i.unfinished << "}\n";
      } else {
        std::cout << "node " << i.nodeId << "  epoch " << i.epoch << "\n  participants:";
        for (auto& p : i.participants) std::cout << " " << p;
        std::cout << "\n  committed " << i.committed << "  rolled back " << i.rolledBack << "  unfinished "
                  << i.unfinished << " (since start)\n";
      }
      return 0;
    }
  } catch (const kj::Exception& e) {
    std::cerr << "keelctl: " << coordinator << ": " << e.getDescription().cStr() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "keelctl: " << e.what() << "\n";
    return 3;
  }
  return 0;
}
