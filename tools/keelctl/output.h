#pragma once
// keelctl's renderings: one human form and one JSON form per answer, and
// the exit status each outcome maps to. No Cap'n Proto types here: the
// commands read the wire answers into these plain structs first.
//
// With --json each command prints exactly one JSON document: its answer as
// one object, or printError's {"error":…,"code":…} when it could not finish.
// An answer whose exit status is not 0 (rolled back, refused) carries
// "error" (what the human form says) and "code" (the exit status) as well.
// The functions that return an int return that exit status.

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "common/backup.h"
#include "common/client.h"
#include "common/records.h"

namespace keel::ctl {

// keelctl's exit statuses (docs/operations.md, "keelctl").
enum Exit : int {
  kExitDone = 0,         // committed, done
  kExitRefused = 1,      // rolled back, not found, refused (resolve, forget)
  kExitUsage = 2,        // bad usage or an invalid request
  kExitUnreachable = 3,  // unreachable, no answer within --timeout, unavailable
  kExitInDoubt = 4,      // outcome not known yet: query later
  kExitHeuristic = 5,    // heuristic-mixed or heuristic-unknown
};
int exitStatus(ClientOutcome o);

// A command that could not finish, as JSON: {"error":MESSAGE,"code":STATUS}.
void printError(std::ostream& out, const std::string& message, int status);

// "seq 1:5: committed (request id X)", the reason and, for outcomes that
// need a next step (in doubt, heuristic), a line saying what to do. Text
// shows a seq as NODE:COUNTER; JSON keeps the number in "seq" and adds that
// form in "seq_text" ("xid" and "xid_text" likewise).
int printOutcome(std::ostream& out, const SubmitOutcome& o, bool json);
// A balance read: the outcome and, when committed, one line per account
// (JSON: the outcome's object with a "balances" list, empty unless committed).
int printBalances(std::ostream& out, const SubmitOutcome& o, const std::vector<std::string>& refs, bool json);

void printQuery(std::ostream& out, const QueryResult& q, bool json);
// Unfinished interactions, then heuristic ones waiting for an operator.
void printUnfinished(std::ostream& out, const std::vector<InteractionRecord>& items,
                     const std::vector<InteractionRecord>& heuristic, bool json);
// An operator call's answer (resolve, reconciled): done or refused.
struct ArchivePeriodLine {
  std::string name;
  std::uint64_t interactions = 0;
  std::string damaged;
};
void printArchivePeriods(std::ostream& out, const std::vector<ArchivePeriodLine>& periods, bool json);
int printDone(std::ostream& out, bool done, const std::string& reason, bool json);
// retry: how many waiting drivers were woken.
void printWoken(std::ostream& out, std::uint32_t woken, bool json);
// audit: the entries as the coordinator sends them, each a JSON object.
void printAudit(std::ostream& out, const std::vector<std::string>& entries, bool json);
void printInfo(std::ostream& out, const CoordinatorInfo& i, bool json);

// Coordinator.stats as keelctl shows it.
using StatsView = CoordinatorStats;
void printStats(std::ostream& out, const StatsView& s, bool json);

// An agent's unfinished branches (Participant.recover) and its books.
using BranchView = UnfinishedBranch;
void printBranches(std::ostream& out, const AgentSnapshot& snap, const std::vector<BranchView>& branches, bool json);
// forget: how many branch records were dropped and those refused (not finished).
// reasons: one per refused xid.
int printForgotten(std::ostream& out, std::uint32_t forgotten, const std::vector<Xid>& refused,
                   const std::vector<std::string>& reasons, bool json);

// A finished backup: where it went, its size and time, and what the copy
// holds (JSON: the manifest's fields and "dir").
void printBackup(std::ostream& out, const BackupManifest& m, const std::string& dir, bool json);

// keelctl export's formats (docs/operations.md, "Export").
// jsonl: one line per interaction, what `keelctl query --json` prints for it
//   ({"interaction":{...},"rollback":{...}|null}).
// csv: a header, then one row per interaction and one per rollback record
//   (column `table`: interaction | rollback).
void printExportHeader(std::ostream& out, const std::string& format);
void printExportRecord(std::ostream& out, const std::string& format, const InteractionRecord& r,
                       const RollbackRecord* rb);
// The summary (stdout with --json, else stderr's last line).
void printExported(std::ostream& out, std::uint64_t interactions, std::uint64_t rollbacks, std::uint64_t scanned,
                   std::uint64_t damaged, const std::string& where, bool json);

// keelctl search's answer: one line per interaction (seq, created, state,
// participants, request id), and whether the range holds more.
void printSearch(std::ostream& out, const std::vector<InteractionRecord>& found, bool more, std::uint64_t scanned,
                 bool json);

}  // namespace keel::ctl
