// keelctl: the Keel command-line client.
//
//   keelctl [GLOBAL] open PARTICIPANT:ACCOUNT [AMOUNT] [--request-id ID]
//   keelctl [GLOBAL] transfer FROM TO AMOUNT [--request-id ID]
//   keelctl [GLOBAL] balance PARTICIPANT:ACCOUNT... [--request-id ID]
//   keelctl [GLOBAL] query SEQ | query --request-id ID
//   keelctl [GLOBAL] list [--limit N]
//   keelctl [GLOBAL] info
//   keelctl [GLOBAL] stats
//   keelctl [GLOBAL] retry [SEQ]
//   keelctl [GLOBAL] resolve SEQ --commit|--abort --why TEXT [--who NAME] [--override]
//   keelctl [GLOBAL] resolve SEQ --reconciled --why TEXT [--who NAME]   (a heuristic one)
//   keelctl [GLOBAL] audit [--limit N]
//   keelctl [GLOBAL] forget --agent HOST:PORT|--embedded NAME SEQ.BRANCH...
//   keelctl [GLOBAL] branches --agent HOST:PORT|--embedded NAME
//   keelctl [GLOBAL] backup --to DIR [--agent HOST:PORT|--embedded NAME]
//   keelctl [GLOBAL] export --from TIME --to TIME [--format jsonl|csv] [--out FILE]
//   keelctl [GLOBAL] search --from TIME --to TIME [--participant P] [--state S] [--limit N]
//   keelctl [GLOBAL] archive list
//   keelctl [GLOBAL] archive drop --before YYYY-MM-DD --why TEXT [--who NAME]
//
// GLOBAL (accepted before or after the command): -c/--coordinator HOST:PORT,
// --timeout DURATION (default 30s: every exchange with a coordinator or an
// agent, connecting included), --retry-for DURATION (default 30s; 0 = no
// retry: how long open/transfer/balance retry a lost answer with the same
// request id), --json. DURATION is a whole number and a unit: 500ms, 30s,
// 2m, 1h. SEQ is NODE:COUNTER (1:5) or the seq's 64-bit number
// (281474976710661): both name the same interaction.
//
// With --json, stdout holds exactly one JSON document: the answer, or
// {"error":MESSAGE,"code":STATUS} when the command could not finish (bad
// usage included); stderr keeps its text lines either way (output.h).
//
// Exit status:
//   0 committed / done
//   1 rolled back, not found, or refused (resolve, forget)
//   2 bad usage or invalid request (nothing was sent, or nothing ran)
//   3 coordinator/agent unreachable, no answer within --timeout, or unavailable
//   4 in doubt: the outcome is not known yet (query it later)
//   5 heuristic outcome (heuristic-mixed or heuristic-unknown)

#include <CLI/CLI.hpp>
#include <kj/async-io.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>

#include "common/client.h"
#include "common/config.h"
#include "common/tls.h"
#include "common/fault.h"
#include "tools/keelctl/commands.h"
#include "tools/keelctl/output.h"
#include "tools/keelctl/parse.h"

namespace {

using keel::ctl::parseWhole;
using keel::ctl::UsageError;

constexpr std::uint64_t kMaxAmount = keel::Limits::kMaxAmount;
constexpr std::uint32_t kMaxListLimit = 10000;  // the coordinator's own cap

// A command that could not finish: "keelctl: MESSAGE" on stderr and, with
// --json, {"error":MESSAGE,"code":STATUS} on stdout. Returns STATUS.
int failed(bool json, const std::string& message, int status) {
  std::cerr << "keelctl: " << message << "\n";
  if (json) keel::ctl::printError(std::cout, message, status);
  return status;
}

// Whether --json was given, for an error found while parsing (the parser
// has not set the flag then): a word "--json" before any "--".
bool jsonAsked(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) return false;
    if (std::strcmp(argv[i], "--json") == 0) return true;
  }
  return false;
}

std::int64_t amountArg(const std::string& text, std::uint64_t lo) {
  return static_cast<std::int64_t>(parseWhole("amount", text, lo, kMaxAmount));
}

keel::Op accountOp(const std::string& ref, keel::OpKind kind, std::int64_t amount) {
  auto [p, a] = keel::splitAccount(ref);
  return keel::Op{p, kind, a, amount};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keelctl: Keel command-line client"};
  app.require_subcommand(1);
  app.fallthrough();  // global options also after the command
  keel::ctl::Globals g;
  std::string timeoutArg = "30s", retryForArg = "30s";
  app.add_option("-c,--coordinator", g.coordinator, "coordinator address, or several separated by commas (a cluster)")
      ->type_name("HOST:PORT")
      ->capture_default_str();
  app.add_option("--timeout", timeoutArg,
                 "give up on a coordinator or agent that has not answered within this (500ms, 30s, 2m, 1h)")
      ->type_name("DURATION")
      ->capture_default_str();
  app.add_option("--retry-for", retryForArg,
                 "open/transfer/balance: retry a lost answer with the same request id this long (0 = never)")
      ->type_name("DURATION")
      ->capture_default_str();
  app.add_flag("--json", g.json, "machine-readable output");
  std::string tlsCa, tlsCert, tlsKey, coordinatorCertName = "keel-coordinator";
  app.add_option("--tls-ca", tlsCa, "mutual TLS: PEM file of the CA (docs/security.md)")
      ->envname("KEEL_TLS_CA")
      ->type_name("FILE");
  app.add_option("--tls-cert", tlsCert, "mutual TLS: PEM certificate of this operator or client")
      ->envname("KEEL_TLS_CERT")
      ->type_name("FILE");
  app.add_option("--tls-key", tlsKey, "mutual TLS: PEM private key of --tls-cert")->envname("KEEL_TLS_KEY")->type_name("FILE");
  app.add_option("--coordinator-name", coordinatorCertName,
                 "mutual TLS: the name the coordinator's certificate carries (an agent's: --agent NAME@HOST:PORT)")
      ->envname("KEEL_COORDINATOR_NAME")
      ->capture_default_str();

  std::string requestId;
  auto addRequestId = [&](CLI::App* sub, const char* help) {
    sub->add_option("--request-id", requestId, help)->type_name("ID");
  };

  std::string openRef, openAmount = "0";
  auto* open = app.add_subcommand("open", "open an account with an opening balance");
  open->add_option("account", openRef, "PARTICIPANT:ACCOUNT")->required();
  open->add_option("amount", openAmount, "opening balance (0..10^15, default 0)")->type_name("AMOUNT");
  addRequestId(open, "request id (default: a new one)");

  std::string from, to, transferAmount;
  auto* transfer = app.add_subcommand("transfer", "move money between two accounts atomically");
  transfer->add_option("from", from, "account to debit")->type_name("PARTICIPANT:ACCOUNT")->required();
  transfer->add_option("to", to, "account to credit")->type_name("PARTICIPANT:ACCOUNT")->required();
  transfer->add_option("amount", transferAmount, "amount (1..10^15)")->type_name("AMOUNT")->required();
  addRequestId(transfer, "request id (default: a new one)");

  std::vector<std::string> balanceRefs;
  auto* balance = app.add_subcommand("balance", "read account balances");
  balance->add_option("accounts", balanceRefs, "PARTICIPANT:ACCOUNT ...")->required();
  addRequestId(balance, "request id (default: a new one)");

  std::string querySeq;
  auto* query = app.add_subcommand("query", "show an interaction and its rollback record");
  query->add_option("seq", querySeq, "interaction sequence number: NODE:COUNTER (1:5) or the number")
      ->type_name("SEQ");
  addRequestId(query, "the interaction this request id names");

  std::string limitArg;
  auto* list = app.add_subcommand("list", "list unfinished interactions");
  list->add_option("--limit", limitArg, "at most this many (1..10000, default 100)")->type_name("N");

  auto* info = app.add_subcommand("info", "coordinator identity and counters");
  auto* stats = app.add_subcommand("stats", "window of inconsistency and what is in doubt now");

  std::string retrySeq;
  auto* retry = app.add_subcommand("retry", "retry unfinished work now instead of after its backoff");
  retry->add_option("seq", retrySeq, "one interaction (default: all)")->type_name("SEQ");

  std::string resolveSeq;
  bool forceCommit = false, forceAbort = false, override = false, reconciled = false;
  std::string who, why;
  auto* resolve = app.add_subcommand("resolve", "force the decision of an unfinished interaction (audited)");
  resolve->add_option("seq", resolveSeq, "interaction")->type_name("SEQ")->required();
  auto* commitFlag = resolve->add_flag("--commit", forceCommit, "force commit");
  auto* abortFlag = resolve->add_flag("--abort", forceAbort, "force abort (roll back)");
  auto* reconciledFlag =
      resolve->add_flag("--reconciled", reconciled, "a heuristic interaction's hosts were reconciled by hand");
  commitFlag->excludes(abortFlag);
  reconciledFlag->excludes(commitFlag)->excludes(abortFlag);
  resolve->add_option("--why", why, "reason, kept in the audit entry")->required();
  resolve->add_option("--who", who, "operator name (default: $USER)");
  resolve->add_flag("--override", override, "allow contradicting a decision already taken");

  auto* auditCmd = app.add_subcommand("audit", "operator actions recorded in the WAL");
  auditCmd->add_option("--limit", limitArg, "at most this many (1..10000, default 1000)")->type_name("N");

  keel::ctl::AgentRef agentRef;
  // --agent HOST:PORT or --embedded NAME (a participant inside the coordinator).
  auto agentOptions = [&agentRef](CLI::App* cmd) {
    auto* a = cmd->add_option("--agent", agentRef.address, "a keel-agent, at this address (over TLS: NAME@HOST:PORT)")
                  ->type_name("HOST:PORT");
    cmd->add_option("--embedded", agentRef.embedded,
                    "an embedded participant, run inside the coordinator (--coordinator) as [participants] NAME = "
                    "\"embedded:FILE\"")
        ->type_name("NAME")
        ->excludes(a);
  };
  std::vector<std::string> forgetXids;
  auto* forget = app.add_subcommand("forget", "drop finished branch records on an agent");
  agentOptions(forget);
  forget->add_option("xids", forgetXids, "SEQ.BRANCH ...")->required();

  auto* branches = app.add_subcommand("branches", "an agent's unfinished (in-doubt) branches and its accounts");
  agentOptions(branches);

  std::string backupDir;
  auto* backupCmd = app.add_subcommand(
      "backup", "hot backup of the coordinator's WAL (or, with --agent / --embedded, an agent's log) into DIR");
  backupCmd->add_option("--to", backupDir, "a new directory (refused if it exists)")->type_name("DIR")->required();
  agentOptions(backupCmd);

  std::string exportFrom, exportTo, exportFormat = "jsonl", exportOut;
  auto* exportCmd = app.add_subcommand("export", "interaction and rollback records created in a time range, as jsonl or csv");
  exportCmd->add_option("--from", exportFrom, "first creation time (UTC: 2026-12-03T10:00:00Z, 2026-12-03 or now)")
      ->type_name("TIME")
      ->required();
  exportCmd->add_option("--to", exportTo, "end of the range, not included")->type_name("TIME")->required();
  exportCmd->add_option("--format", exportFormat, "jsonl (default) or csv")->type_name("jsonl|csv");
  exportCmd->add_option("--out", exportOut, "write here (refused if it exists) instead of stdout")->type_name("FILE");

  std::string searchFrom, searchTo, searchParticipant, searchState;
  auto* searchCmd = app.add_subcommand("search", "interactions created in a time range, by participant and state");
  searchCmd->add_option("--from", searchFrom, "first creation time (UTC: 2026-12-03T10:00:00Z, 2026-12-03 or now)")
      ->type_name("TIME")
      ->required();
  searchCmd->add_option("--to", searchTo, "end of the range, not included")->type_name("TIME")->required();
  searchCmd->add_option("--participant", searchParticipant, "only those with a branch at this participant");
  searchCmd->add_option("--state", searchState,
                        "only those in this state (preparing, committing, aborting, committed, rolled-back, "
                        "heuristic-mixed, heuristic-unknown)");
  searchCmd->add_option("--limit", limitArg, "at most this many (1..10000, default 100)")->type_name("N");

  auto* archiveCmd = app.add_subcommand("archive", "the coordinator's archive of finished interactions: list, drop");
  archiveCmd->require_subcommand(1);
  auto* archiveList = archiveCmd->add_subcommand("list", "the archive's periods (one per UTC day), oldest first");
  auto* archiveDrop = archiveCmd->add_subcommand("drop", "drop the periods before a day (audited; archive_retention_days)");
  std::string dropBefore;
  archiveDrop->add_option("--before", dropBefore, "drop the periods before this day, not included")
      ->type_name("YYYY-MM-DD")
      ->required();
  archiveDrop->add_option("--why", why, "reason, kept in the audit entry")->required();
  archiveDrop->add_option("--who", who, "operator name (default: $USER)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // A word where the command should be is an unknown command (CLI11 only
    // says that a subcommand is required).
    if (app.get_subcommands().empty()) {
      for (const auto& word : app.remaining()) {
        if (word.empty() || word[0] == '-') continue;
        std::string names;
        for (const auto* sub : app.get_subcommands({})) names += (names.empty() ? "" : ", ") + sub->get_name();
        std::string msg = "unknown command '" + word + "' (the commands are " + names + "; keelctl --help)";
        std::cerr << "keelctl: " << msg << "\n";
        if (g.json || jsonAsked(argc, argv)) keel::ctl::printError(std::cout, msg, keel::ctl::kExitUsage);
        return keel::ctl::kExitUsage;
      }
    }
    // --help prints and exits 0; every other parse error is bad usage.
    // app.exit prints the help, or the error on stderr.
    if (app.exit(e) == 0) return 0;
    if (g.json || jsonAsked(argc, argv)) keel::ctl::printError(std::cout, e.what(), keel::ctl::kExitUsage);
    return keel::ctl::kExitUsage;
  }

  try {
    // Everything is checked before anything is sent.
    g.timeout = keel::ctl::parseDuration("--timeout", timeoutArg, 1 * kj::MILLISECONDS, 1 * kj::HOURS);
    g.retryFor = keel::ctl::parseDuration("--retry-for", retryForArg, 0 * kj::SECONDS, 24 * kj::HOURS);
    for (const auto& c : keel::ctl::coordinatorList(g.coordinator)) keel::ctl::checkPeerAddress("--coordinator", c);
    try {
      keel::installClientTls(tlsCa, tlsCert, tlsKey);  // none given: plaintext
      keel::setCoordinatorName(coordinatorCertName);
    } catch (const keel::ConfigError& e) {
      throw UsageError(e.what());
    }
    if (!agentRef.address.empty()) keel::ctl::checkPeerAddress("--agent", agentRef.address);
    if ((*branches || *forget) && agentRef.empty()) {
      throw UsageError(std::string(*branches ? "branches" : "forget") +
                       " needs --agent HOST:PORT (a keel-agent) or --embedded NAME (a participant inside the "
                       "coordinator)");
    }
    if (!agentRef.embedded.empty() && !keel::validName(agentRef.embedded)) {
      throw UsageError("--embedded '" + agentRef.embedded +
                       "' is not a participant name (1-64 chars of A-Z a-z 0-9 _ . -)");
    }
    std::size_t idsGiven = 0;
    for (auto* sub : {open, transfer, balance, query}) idsGiven += sub->count("--request-id");
    if (idsGiven > 0) keel::ctl::checkRequestIdArg(requestId);
    std::uint32_t limit = 0;
    if (!limitArg.empty()) limit = std::uint32_t(parseWhole("--limit", limitArg, 1, kMaxListLimit));
    auto seqArg = [](const std::string& text) -> std::uint64_t {
      return text.empty() ? 0 : keel::ctl::parseSeq(text);
    };
    std::uint64_t seq = 0;  // query, retry, resolve

    keel::SubmitRequest req;
    req.requestId = requestId;
    std::vector<keel::Xid> xids;
    if (*open) {
      req.ops.push_back(accountOp(openRef, keel::OpKind::OpenAccount, amountArg(openAmount, 0)));
    } else if (*transfer) {
      req.ops = keel::transferOps(from, to, amountArg(transferAmount, 1));
    } else if (*balance) {
      for (auto& r : balanceRefs) req.ops.push_back(accountOp(r, keel::OpKind::ReadBalance, 0));
    } else if (*query) {
      if (querySeq.empty() == (idsGiven == 0)) throw UsageError("query needs SEQ or --request-id ID (one of them)");
      seq = seqArg(querySeq);
    } else if (*retry) {
      seq = seqArg(retrySeq);
    } else if (*resolve) {
      seq = seqArg(resolveSeq);
      if (!forceCommit && !forceAbort && !reconciled) {
        throw UsageError("resolve needs --commit, --abort or --reconciled");
      }
      if (who.empty()) {
        const char* u = std::getenv("USER");
        who = u != nullptr ? u : "unknown";
      }
    } else if (*forget) {
      for (auto& x : forgetXids) xids.push_back(keel::ctl::parseXid(x));
    } else if (*archiveDrop) {
      if (!keel::isDayText(dropBefore)) throw UsageError("--before '" + dropBefore + "' is not a day (YYYY-MM-DD)");
      if (who.empty()) {
        const char* u = std::getenv("USER");
        who = u != nullptr ? u : "unknown";
      }
    }

    keel::Micros exportFromUs = 0, exportToUs = 0;
    if (*exportCmd) {
      if (exportFormat != "jsonl" && exportFormat != "csv") {
        throw UsageError("--format '" + exportFormat + "' is not jsonl or csv");
      }
      exportFromUs = keel::ctl::parseTime("--from", exportFrom);
      exportToUs = keel::ctl::parseTime("--to", exportTo);
      if (exportFromUs >= exportToUs) throw UsageError("--from must be before --to");
      if (g.json && exportOut.empty()) {
        throw UsageError("--json with export needs --out FILE: the records go there, the summary is the JSON answer");
      }
    }

    keel::Micros searchFromUs = 0, searchToUs = 0;
    if (*searchCmd) {
      searchFromUs = keel::ctl::parseTime("--from", searchFrom);
      searchToUs = keel::ctl::parseTime("--to", searchTo);
      if (searchFromUs >= searchToUs) throw UsageError("--from must be before --to");
      static const char* const kStates[] = {"preparing", "committing", "aborting", "committed", "rolled-back",
                                            "heuristic-mixed", "heuristic-unknown"};
      if (!searchState.empty() &&
          std::find(std::begin(kStates), std::end(kStates), searchState) == std::end(kStates)) {
        throw UsageError("--state '" + searchState +
                         "' is not a state (preparing, committing, aborting, committed, rolled-back, "
                         "heuristic-mixed, heuristic-unknown)");
      }
      if (!searchParticipant.empty() && !keel::validName(searchParticipant)) {
        throw UsageError("--participant '" + searchParticipant + "' is not a participant name");
      }
    }

    auto io = kj::setupAsyncIo();
    // The answer is shown only once the command has returned: a command that
    // fails half-way shows its error alone.
    std::ostringstream answer;
    keel::ctl::Commands run(io, g, answer);
    auto command = [&]() -> int {
      if (*open || *transfer) return run.submit(std::move(req), nullptr);
      if (*balance) return run.submit(std::move(req), &balanceRefs);
      if (*query) return seq == 0 ? run.queryRequest(requestId) : run.query(seq);
      if (*list) return run.list(limit == 0 ? 100 : limit);
      if (*info) return run.info();
      if (*stats) return run.stats();
      if (*retry) return run.retry(seq);
      if (*resolve && reconciled) return run.reconciled(seq, who, why);
      if (*resolve) return run.resolve(seq, forceCommit, who, why, override);
      if (*auditCmd) return run.audit(limit == 0 ? 1000 : limit);
      if (*branches) return run.branches(agentRef);
      if (*forget) return run.forget(agentRef, xids);
      if (*backupCmd) return run.backup(agentRef, backupDir);
      if (*exportCmd) return run.exportRange(exportFromUs, exportToUs, exportFormat, exportOut, std::cout);
      if (*archiveList) return run.archivePeriods();
      if (*archiveDrop) return run.dropArchive(dropBefore, who, why);
      if (*searchCmd) return run.search(searchFromUs, searchToUs, searchParticipant, searchState, limit == 0 ? 100 : limit);
      return keel::ctl::kExitDone;
    };
    int status = command();
    std::cout << answer.str();
    return status;
  } catch (const UsageError& e) {
    return failed(g.json, e.what(), keel::ctl::kExitUsage);
  } catch (const std::invalid_argument& e) {  // splitAccount: not PARTICIPANT:ACCOUNT
    return failed(g.json, e.what(), keel::ctl::kExitUsage);
  } catch (const keel::ctl::Failure& e) {
    return failed(g.json, e.what(), e.status);
  } catch (const kj::Exception& e) {  // not expected: the commands turn faults into Failure
    return failed(g.json, keel::describeFault(e), keel::ctl::kExitUnreachable);
  }
}
