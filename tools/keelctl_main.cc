// keelctl: the Keel command-line client.
//
//   keelctl [-c HOST:PORT] open bank-a:alice 1000
//   keelctl [-c HOST:PORT] transfer bank-a:alice bank-b:bob 250
//   keelctl [-c HOST:PORT] balance bank-a:alice [bank-b:bob ...]
//   keelctl [-c HOST:PORT] query SEQ [--json]
//   keelctl [-c HOST:PORT] list [--limit N] [--json]
//   keelctl [-c HOST:PORT] info [--json]
//   keelctl [-c HOST:PORT] stats [--json]
//   keelctl [-c HOST:PORT] retry [SEQ]
//   keelctl [-c HOST:PORT] resolve SEQ --commit|--abort --why TEXT [--who NAME] [--override]
//   keelctl [-c HOST:PORT] audit [--json]
//   keelctl forget --agent HOST:PORT SEQ.BRANCH...
//   keelctl branches --agent HOST:PORT [--json]
//
// Exit status: 0 done/committed, 1 rolled back or not found, 2 bad usage or
// invalid request, 3 unreachable, in doubt or unavailable.

#include <CLI/CLI.hpp>
#include <kj/async-io.h>

#include <cstdlib>
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
  auto* stats = app.add_subcommand("stats", "window of inconsistency and what is in doubt now");

  std::uint64_t retrySeq = 0;
  auto* retry = app.add_subcommand("retry", "retry unfinished work now instead of after its backoff");
  retry->add_option("seq", retrySeq, "one interaction (default: all)");

  std::uint64_t resolveSeq = 0;
  bool forceCommit = false, forceAbort = false, override = false;
  std::string who, why;
  auto* resolve = app.add_subcommand("resolve", "force the decision of an unfinished interaction (audited)");
  resolve->add_option("seq", resolveSeq, "interaction")->required();
  auto* commitFlag = resolve->add_flag("--commit", forceCommit, "force commit");
  auto* abortFlag = resolve->add_flag("--abort", forceAbort, "force abort (roll back)");
  commitFlag->excludes(abortFlag);
  resolve->add_option("--why", why, "reason, kept in the audit entry")->required();
  resolve->add_option("--who", who, "operator name (default: $USER)");
  resolve->add_flag("--override", override, "allow contradicting a decision already taken");

  auto* auditCmd = app.add_subcommand("audit", "operator actions recorded in the WAL");

  std::string agentAddr;
  std::vector<std::string> forgetXids;
  auto* forget = app.add_subcommand("forget", "drop finished branch records on an agent");
  forget->add_option("--agent", agentAddr, "agent host:port")->required();
  forget->add_option("xids", forgetXids, "SEQ.BRANCH ...")->required();

  std::string branchesAgent;
  auto* branches = app.add_subcommand("branches", "an agent's unfinished (in-doubt) branches and its accounts");
  branches->add_option("--agent", branchesAgent, "agent host:port")->required();

  for (auto* sub : {open, transfer, balance, query, list, info, stats, retry, resolve, auditCmd, forget, branches}) {
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

  if (resolve->parsed() && !forceCommit && !forceAbort) {
    std::cerr << "keelctl: resolve needs --commit or --abort\n";
    return 2;
  }
  if (resolve->parsed() && who.empty()) {
    const char* u = std::getenv("USER");
    who = u != nullptr ? u : "unknown";
  }
  std::vector<keel::Xid> xids;
  for (auto& x : forgetXids) {
    auto dot = x.find('.');
    try {
      if (dot == std::string::npos) throw std::invalid_argument(x);
      xids.push_back(keel::Xid{std::stoull(x.substr(0, dot)), std::uint16_t(std::stoul(x.substr(dot + 1)))});
    } catch (const std::exception&) {
      std::cerr << "keelctl: '" << x << "' is not SEQ.BRANCH\n";
      return 2;
    }
  }

  try {
    auto io = kj::setupAsyncIo();
    if (branches->parsed()) {
      auto agent = keel::AgentClient::connect(io, branchesAgent).wait(io.waitScope);
      auto req = agent->capability().recoverRequest();
      req.setEpoch(0);  // an operator looking: not fenced
      auto resp = req.send().wait(io.waitScope);
      auto snap = agent->inspect().wait(io.waitScope);
      auto now = keel::wallMicros();
      if (json) {
        std::cout << "{\"agent\":\"" << keel::jsonEscape(snap.name) << "\",\"unfinished\":[";
        bool first = true;
        for (auto b : resp.getBranches()) {
          std::cout << (first ? "" : ",") << "{\"xid\":\"" << b.getXid().getSeq() << "." << b.getXid().getBranch()
                    << "\",\"state\":\"" << (b.getState() == keel::wire::BranchState::PREPARED ? "prepared" : "active")
                    << "\",\"epoch\":" << b.getEpoch() << ",\"prepared_us\":" << b.getPreparedAtUs() << "}";
          first = false;
        }
        std::cout << "],\"held\":" << snap.held() << ",\"total\":" << snap.total() << "}\n";
      } else {
        std::cout << snap.name << ": " << resp.getBranches().size() << " unfinished branch(es), money held "
                  << snap.held() << ", balances total " << snap.total() << "\n";
        for (auto b : resp.getBranches()) {
          std::cout << "  " << b.getXid().getSeq() << "." << b.getXid().getBranch() << "  "
                    << (b.getState() == keel::wire::BranchState::PREPARED ? "prepared" : "active") << "  epoch "
                    << b.getEpoch();
          if (b.getPreparedAtUs() != 0 && now > b.getPreparedAtUs()) {
            std::cout << "  for " << (now - b.getPreparedAtUs()) / 1000 << " ms";
          }
          std::cout << "\n";
        }
      }
      return 0;
    }
    if (forget->parsed()) {
      auto agent = keel::AgentClient::connect(io, agentAddr).wait(io.waitScope);
      auto req = agent->capability().forgetRequest();
      req.setEpoch(0);  // an operator, not a coordinator: no epoch, no fencing
      auto l = req.initXids(xids.size());
      for (unsigned i = 0; i < xids.size(); ++i) {
        l[i].setSeq(xids[i].seq);
        l[i].setBranch(xids[i].branch);
      }
      auto resp = req.send().wait(io.waitScope);
      std::cout << "forgotten " << resp.getForgotten();
      for (auto x : resp.getRefused()) std::cout << "\n  refused " << x.getSeq() << "." << x.getBranch() << " (not finished)";
      std::cout << "\n";
      return resp.getRefused().size() == 0 ? 0 : 1;
    }
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
    if (stats->parsed()) {
      auto s = client->capability().statsRequest().send().wait(io.waitScope).getStats();
      if (json) {
        std::cout << "{\"count\":" << s.getCount() << ",\"p50_us\":" << s.getP50Us() << ",\"p99_us\":" << s.getP99Us()
                  << ",\"max_us\":" << s.getMaxUs() << ",\"rollbacks\":" << s.getRollbacks()
                  << ",\"retried_commits\":" << s.getRetriedCommits() << ",\"heuristic\":" << s.getHeuristic()
                  << ",\"in_doubt\":" << s.getInDoubt()
                  << ",\"oldest_in_doubt_us\":" << s.getOldestUs() << "}\n";
      } else {
        auto ms = [](std::uint64_t us) { return std::to_string(us / 1000) + "." + std::to_string(us / 100 % 10) + " ms"; };
        std::cout << "window of inconsistency (failure -> last participant confirmed), over " << s.getCount()
                  << " failed interactions (" << s.getRollbacks() << " rolled back, " << s.getRetriedCommits()
                  << " committed after retries, " << s.getHeuristic() << " heuristic)\n"
                  << "  median " << ms(s.getP50Us()) << "   p99 " << ms(s.getP99Us()) << "   max " << ms(s.getMaxUs())
                  << "\n"
                  << "in doubt now: " << s.getInDoubt() << " (oldest " << ms(s.getOldestUs()) << ")\n";
      }
      return 0;
    }
    if (retry->parsed()) {
      auto req = client->capability().retryNowRequest();
      req.setSeq(retrySeq);
      std::cout << "woke " << req.send().wait(io.waitScope).getWoken() << " waiting driver(s)\n";
      return 0;
    }
    if (resolve->parsed()) {
      auto req = client->capability().resolveRequest();
      req.setSeq(resolveSeq);
      req.setCommit(forceCommit);
      req.setWho(who);
      req.setWhy(why);
      req.setOverride(override);
      auto resp = req.send().wait(io.waitScope);
      std::cout << (resp.getDone() ? "done: " : "refused: ") << resp.getReason().cStr() << "\n";
      return resp.getDone() ? 0 : 1;
    }
    if (auditCmd->parsed()) {
      auto req = client->capability().auditRequest();
      req.setLimit(limit);
      auto resp = req.send().wait(io.waitScope);
      for (auto e : resp.getEntries()) std::cout << e.cStr() << "\n";
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
