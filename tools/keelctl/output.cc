#include "tools/keelctl/output.h"

#include <algorithm>
#include <ostream>

#include "common/strict_json.h"

namespace keel::ctl {

int exitStatus(ClientOutcome o) {
  switch (o) {
    case ClientOutcome::Committed: return kExitDone;
    case ClientOutcome::RolledBack: return kExitRefused;
    case ClientOutcome::Invalid: return kExitUsage;
    case ClientOutcome::Unavailable: return kExitUnreachable;
    case ClientOutcome::InDoubt: return kExitInDoubt;
    case ClientOutcome::HeuristicMixed:
    case ClientOutcome::HeuristicUnknown: return kExitHeuristic;
  }
  return kExitUnreachable;
}

namespace {

std::string q(std::string_view s) { return "\"" + jsonEscape(s) + "\""; }

// What to do next, for the outcomes that need an operator or a later look.
std::string hint(const SubmitOutcome& o) {
  std::string seq = seqText(o.seq);
  switch (o.outcome) {
    case ClientOutcome::InDoubt:
      return "the outcome is not known yet: look it up later with keelctl query " + seq;
    case ClientOutcome::HeuristicMixed:
      return "the branches did not all end as decided: see keelctl query " + seq + "; docs/recovery.md";
    case ClientOutcome::HeuristicUnknown:
      return "a participant cannot tell how its branch ended: see keelctl query " + seq + "; docs/recovery.md";
    default:
      return "";
  }
}

// The JSON fields every submit answer carries. "seq_text" is null when no
// seq was assigned ("seq" 0: an invalid request).
std::string outcomeFields(const SubmitOutcome& o) {
  return "\"seq\":" + std::to_string(o.seq) + ",\"seq_text\":" + (o.seq != 0 ? q(seqText(o.seq)) : "null") +
         ",\"outcome\":" + q(clientOutcomeName(o.outcome)) +
         ",\"reason\":" + q(o.reason) + ",\"request_id\":" + q(o.requestId) +
         ",\"replayed\":" + (o.replayed ? "true" : "false");
}

// The members an answer with a non-zero exit status adds: what went wrong,
// as the human form says it, and the status. Nothing for status 0.
std::string statusFields(int status, const std::string& message) {
  if (status == kExitDone) return "";
  return ",\"error\":" + q(message) + ",\"code\":" + std::to_string(status);
}

// A submit's outcome and reason, as its human form's first line says them.
std::string outcomeMessage(const SubmitOutcome& o) {
  std::string m = clientOutcomeName(o.outcome);
  return o.reason.empty() ? m : m + ": " + o.reason;
}

bool auditEntryReadable(const std::string& entry) {
  try {
    return JsonReader::parse(entry).isObject();
  } catch (const JsonError&) {
    return false;
  }
}

// SEQ.BRANCH with the seq's 64-bit number, as JSON's "xid" members keep it
// (Xid::str() is the NODE:COUNTER.BRANCH form people read).
std::string xidNumber(Xid x) { return std::to_string(x.seq) + "." + std::to_string(x.branch); }

std::string ms(std::uint64_t us) { return std::to_string(us / 1000) + "." + std::to_string(us / 100 % 10) + " ms"; }

}  // namespace

void printError(std::ostream& out, const std::string& message, int status) {
  out << "{\"error\":" << q(message) << ",\"code\":" << status << "}\n";
}

int printOutcome(std::ostream& out, const SubmitOutcome& o, bool json) {
  int status = exitStatus(o.outcome);
  if (json) {
    out << "{" << outcomeFields(o) << statusFields(status, outcomeMessage(o)) << "}\n";
    return status;
  }
  if (o.seq != 0) out << "seq " << seqText(o.seq) << ": ";
  out << clientOutcomeName(o.outcome);
  if (!o.requestId.empty()) {
    out << " (request id " << o.requestId << (o.replayed ? ", answered by an earlier try" : "") << ")";
  }
  if (!o.reason.empty()) out << ": " << o.reason;
  out << "\n";
  if (auto h = hint(o); !h.empty()) out << "  " << h << "\n";
  return status;
}

int printBalances(std::ostream& out, const SubmitOutcome& o, const std::vector<std::string>& refs, bool json) {
  int status = exitStatus(o.outcome);
  // Balances read by an interaction that did not commit are not shown.
  std::size_t n = o.outcome == ClientOutcome::Committed ? std::min(refs.size(), o.results.size()) : 0;
  if (json) {
    out << "{" << outcomeFields(o) << ",\"balances\":[";
    for (std::size_t i = 0; i < n; ++i) {
      out << (i ? "," : "") << "{\"account\":" << q(refs[i]) << ",\"balance\":" << o.results[i].balance
          << ",\"available\":" << o.results[i].available << "}";
    }
    out << "]" << statusFields(status, outcomeMessage(o)) << "}\n";
    return status;
  }
  printOutcome(out, o, false);
  for (std::size_t i = 0; i < n; ++i) {
    out << refs[i] << "  balance " << o.results[i].balance << "  available " << o.results[i].available << "\n";
  }
  return status;
}

void printQuery(std::ostream& out, const QueryResult& r, bool json) {
  if (json) {
    out << "{\"interaction\":" << toJson(r.interaction)
        << ",\"rollback\":" << (r.rollback ? toJson(*r.rollback) : "null") << "}\n";
    return;
  }
  out << toText(r.interaction);
  if (r.rollback) out << toText(*r.rollback);
  if (r.interaction.heuristic()) {
    out << "  the branches did not all end as decided: reconcile the hosts by hand (docs/recovery.md)\n";
  }
}

void printUnfinished(std::ostream& out, const std::vector<InteractionRecord>& items,
                     const std::vector<InteractionRecord>& heuristic, bool json) {
  if (json) {
    out << "{\"unfinished\":[";
    for (std::size_t i = 0; i < items.size(); ++i) out << (i ? "," : "") << toJson(items[i]);
    out << "],\"heuristic\":[";
    for (std::size_t i = 0; i < heuristic.size(); ++i) out << (i ? "," : "") << toJson(heuristic[i]);
    out << "]}\n";
    return;
  }
  auto now = wallMicros();
  out << items.size() << " unfinished interaction(s)\n";
  for (auto& r : items) {
    out << "  " << seqText(r.seq) << "  " << stateName(r.state) << "  age "
        << (now > r.createdUs ? (now - r.createdUs) / 1000 : 0) << " ms  waiting on:";
    for (auto& b : r.branches) {
      using BS = InteractionRecord::BranchState;
      if (b.state != BS::Committed && b.state != BS::RolledBack && b.state != BS::ReadOnly) {
        out << " " << b.participant;
      }
    }
    if (!r.requestId.empty()) out << "  request id " << r.requestId;
    if (!r.error.empty()) out << "  (" << r.error << ")";
    out << "\n";
  }
  if (heuristic.empty()) return;
  out << heuristic.size()
      << " heuristic interaction(s) to reconcile by hand (docs/recovery.md; then keelctl resolve SEQ --reconciled)\n";
  for (auto& r : heuristic) {
    out << "  " << seqText(r.seq) << "  " << stateName(r.state) << "  ended " << formatMicros(r.completedUs) << ":";
    for (auto& b : r.branches) out << " " << b.participant << " " << branchStateName(b.state);
    if (!r.requestId.empty()) out << "  request id " << r.requestId;
    out << "\n";
  }
}

void printArchivePeriods(std::ostream& out, const std::vector<ArchivePeriodLine>& periods, bool json) {
  if (json) {
    out << "{\"periods\":[";
    for (std::size_t i = 0; i < periods.size(); ++i) {
      out << (i ? "," : "") << "{\"name\":" << q(periods[i].name) << ",\"interactions\":" << periods[i].interactions
          << ",\"damaged\":" << q(periods[i].damaged) << "}";
    }
    out << "]}\n";
    return;
  }
  if (periods.empty()) out << "the archive holds no period yet\n";
  for (const auto& p : periods) {
    out << p.name << "  " << p.interactions << " interaction(s)";
    if (!p.damaged.empty()) out << "  DAMAGED: " << p.damaged;
    out << "\n";
  }
}

int printDone(std::ostream& out, bool done, const std::string& reason, bool json) {
  int status = done ? kExitDone : kExitRefused;
  std::string line = (done ? "done: " : "refused: ") + reason;
  if (json) {
    out << "{\"done\":" << (done ? "true" : "false") << ",\"reason\":" << q(reason) << statusFields(status, line)
        << "}\n";
  } else {
    out << line << "\n";
  }
  return status;
}

void printWoken(std::ostream& out, std::uint32_t woken, bool json) {
  if (json) {
    out << "{\"woken\":" << woken << "}\n";
  } else {
    out << "woke " << woken << " waiting driver(s)\n";
  }
}

void printAudit(std::ostream& out, const std::vector<std::string>& entries, bool json) {
  if (json) {
    // Each entry comes from the coordinator, a JSON object by its word: one
    // that is not (a damaged record, a coordinator of another build) goes
    // in as {"unreadable": its text}, so that the document stays one valid
    // JSON value.
    out << "{\"entries\":[";
    for (std::size_t i = 0; i < entries.size(); ++i) {
      out << (i ? "," : "");
      if (auditEntryReadable(entries[i])) {
        out << entries[i];
      } else {
        out << "{\"unreadable\":" << q(entries[i]) << "}";
      }
    }
    out << "]}\n";
    return;
  }
  for (auto& e : entries) out << e << "\n";  // one JSON object a line, as the coordinator keeps them
}

void printInfo(std::ostream& out, const CoordinatorInfo& i, bool json) {
  if (json) {
    out << "{\"node_id\":" << i.nodeId << ",\"epoch\":" << i.epoch << ",\"participants\":[";
    for (std::size_t k = 0; k < i.participants.size(); ++k) out << (k ? "," : "") << q(i.participants[k]);
    out << "],\"committed\":" << i.committed << ",\"rolled_back\":" << i.rolledBack << ",\"heuristic\":" << i.heuristic
        << ",\"unfinished\":" << i.unfinished << ",\"log_commits\":" << i.logCommits << ",\"log_jobs\":" << i.logJobs
        << ",\"clustered\":" << (i.clustered ? "true" : "false");
    if (i.clustered) {
      out << ",\"takeover_committed\":" << i.takeoverCommitted << ",\"takeover_rolled_back\":" << i.takeoverRolledBack
          << ",\"etcd_txns\":" << i.etcdTxns << ",\"etcd_decisions\":" << i.etcdDecisions;
    }
    out << "}\n";
    return;
  }
  out << "node " << i.nodeId << "  epoch " << i.epoch << "\n  participants:";
  for (auto& p : i.participants) out << " " << p;
  out << "\n  committed " << i.committed << "  rolled back " << i.rolledBack << "  heuristic " << i.heuristic
      << "  unfinished " << i.unfinished << " (since start)\n";
}

void printStats(std::ostream& out, const StatsView& s, bool json) {
  if (json) {
    out << "{\"count\":" << s.count << ",\"p50_us\":" << s.p50Us << ",\"p99_us\":" << s.p99Us
        << ",\"max_us\":" << s.maxUs << ",\"rollbacks\":" << s.rollbacks << ",\"retried_commits\":" << s.retriedCommits
        << ",\"heuristic\":" << s.heuristic << ",\"in_doubt\":" << s.inDoubt << ",\"oldest_in_doubt_us\":" << s.oldestUs
        << "}\n";
    return;
  }
  out << "window of inconsistency (failure -> last participant confirmed), over " << s.count << " failed interactions ("
      << s.rollbacks << " rolled back, " << s.retriedCommits << " committed after retries, " << s.heuristic
      << " heuristic)\n"
      << "  median " << ms(s.p50Us) << "   p99 " << ms(s.p99Us) << "   max " << ms(s.maxUs) << "\n"
      << "in doubt now: " << s.inDoubt << " (oldest " << ms(s.oldestUs) << ")\n";
}

void printBranches(std::ostream& out, const AgentSnapshot& snap, const std::vector<BranchView>& branches, bool json) {
  if (json) {
    out << "{\"agent\":" << q(snap.name) << ",\"unfinished\":[";
    bool first = true;
    for (auto& b : branches) {
      out << (first ? "" : ",") << "{\"xid\":" << q(xidNumber(b.xid)) << ",\"xid_text\":" << q(b.xid.str())
          << ",\"state\":\"" << (b.prepared ? "prepared" : "active") << "\",\"epoch\":" << b.epoch
          << ",\"prepared_us\":" << b.preparedUs;
      if (!b.hostStep.empty()) {
        out << ",\"host_step\":" << q(b.hostStep) << ",\"host_refs\":[";
        for (std::size_t i = 0; i < b.hostRefs.size(); ++i) out << (i ? "," : "") << q(b.hostRefs[i]);
        out << "]";
      }
      if (!b.reason.empty()) out << ",\"reason\":" << q(b.reason);
      out << "}";
      first = false;
    }
    out << "],\"held\":" << snap.held() << ",\"total\":" << snap.total() << ",\"finished_records\":{\"committed\":"
        << snap.committed << ",\"rolled_back\":" << snap.rolledBack << "},\"release_floors\":[";
    first = true;
    for (auto& [node, f] : snap.floors) {
      out << (first ? "" : ",") << "{\"node\":" << node << ",\"floor\":" << f.first
          << ",\"floor_text\":" << q(seqText(f.first)) << ",\"kept\":" << f.second << "}";
      first = false;
    }
    out << "]}\n";
    return;
  }
  auto now = wallMicros();
  out << snap.name << ": " << branches.size() << " unfinished branch(es), money held " << snap.held()
      << ", balances total " << snap.total() << "\n";
  out << "  finished records kept: " << snap.committed << " committed, " << snap.rolledBack << " rolled back";
  for (auto& [node, f] : snap.floors) {
    out << "; released below " << seqText(f.first) << " (node " << node;
    if (f.second > 0) out << ", " << f.second << " kept below it";
    out << ")";
  }
  out << "\n";
  for (auto& b : branches) {
    out << "  " << b.xid.str() << "  " << (b.prepared ? "prepared" : "active") << "  epoch " << b.epoch;
    if (b.preparedUs != 0 && now > b.preparedUs) out << "  for " << (now - b.preparedUs) / 1000 << " ms";
    if (!b.hostStep.empty()) {
      out << "  host " << b.hostStep;
      std::string refs;
      for (auto& r : b.hostRefs) {
        if (!r.empty()) refs += (refs.empty() ? "" : ",") + r;
      }
      if (!refs.empty()) out << " (refs " << refs << ")";
    }
    if (!b.reason.empty()) out << "  " << b.reason;
    out << "\n";
  }
}

int printForgotten(std::ostream& out, std::uint32_t forgotten, const std::vector<Xid>& refused,
                   const std::vector<std::string>& reasons, bool json) {
  int status = refused.empty() ? kExitDone : kExitRefused;
  if (json) {
    std::string message = "refused";
    std::string numbers, texts, whys;
    for (std::size_t i = 0; i < refused.size(); ++i) {
      numbers += (i ? "," : "") + q(xidNumber(refused[i]));
      texts += (i ? "," : "") + q(refused[i].str());
      whys += (i ? "," : "") + q(reasons[i]);
      message += (i ? "; " : " ") + refused[i].str() + " (" + reasons[i] + ")";
    }
    out << "{\"forgotten\":" << forgotten << ",\"refused\":[" << numbers << "],\"refused_text\":[" << texts
        << "],\"refused_reasons\":[" << whys << "]" << statusFields(status, message) << "}\n";
    return status;
  }
  out << "forgotten " << forgotten;
  for (std::size_t i = 0; i < refused.size(); ++i) out << "\n  refused " << refused[i].str() << " (" << reasons[i] << ")";
  out << "\n";
  return status;
}

void printBackup(std::ostream& out, const BackupManifest& m, const std::string& dir, bool json) {
  if (json) {
    std::string manifest = manifestJson(m);
    out << "{\"dir\":" << q(dir) << "," << manifest.substr(1) << "\n";
    return;
  }
  char size[32];
  if (m.bytes < (1u << 20)) {
    std::snprintf(size, sizeof size, "%.1f KiB", double(m.bytes) / 1024.0);
  } else {
    std::snprintf(size, sizeof size, "%.1f MiB", double(m.bytes) / double(1 << 20));
  }
  char took[32];
  std::snprintf(took, sizeof took, "%.3f s", double(m.copyMicros) / 1e6);
  bool coordinator = m.kind == "coordinator";
  out << "backup of " << (coordinator ? "coordinator node " + std::to_string(m.nodeId) : "agent " + m.name)
      << " (instance " << m.instanceId << ") from " << m.source << "\n";
  out << "  in " << dir << ": " << size << ", copied in " << took << " while serving\n";
  if (coordinator) {
    out << "  seq high-water mark " << seqText(makeSeq(m.nodeId, m.seqHwm)) << ", epoch " << m.epoch << ", "
        << m.records << " interaction records (" << m.unfinished << " unfinished)\n";
  } else {
    out << "  " << m.records << " branch records (" << m.unfinished << " unfinished), highest epoch fence "
        << m.epoch << "\n";
  }
  out << "  marked as a backup: no process starts on it as it is (docs/recovery.md, \"Restoring a backup\")\n";
}

namespace {

std::string csvCell(const std::string& v) {
  bool quote = v.find_first_of(",\"\n\r") != std::string::npos;
  if (!quote) return v;
  std::string out = "\"";
  for (char c : v) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string csvTime(Micros us) { return us == 0 ? std::string() : formatMicros(us); }

}  // namespace

void printExportHeader(std::ostream& out, const std::string& format) {
  if (format != "csv") return;
  out << "table,seq,seq_text,request_id,state,decision,created,decided,completed,failed,participants,attempts,"
         "pending,confirmed,reason\n";
}

void printExportRecord(std::ostream& out, const std::string& format, const InteractionRecord& r,
                       const RollbackRecord* rb) {
  if (format == "jsonl") {
    out << "{\"interaction\":" << toJson(r) << ",\"rollback\":" << (rb != nullptr ? toJson(*rb) : "null") << "}\n";
    return;
  }
  std::string participants;
  for (const auto& b : r.branches) {
    participants += (participants.empty() ? "" : ";") + b.participant + ":" + branchStateName(b.state);
  }
  out << "interaction," << r.seq << "," << seqText(r.seq) << "," << csvCell(r.requestId) << "," << stateName(r.state)
      << "," << decisionName(r.decision) << "," << csvTime(r.createdUs) << "," << csvTime(r.decidedUs) << ","
      << csvTime(r.completedUs) << "," << csvTime(r.failedUs) << "," << csvCell(participants) << ","
      << r.phase2Attempts << ",,," << csvCell(r.error) << "\n";
  if (rb == nullptr) return;
  std::string pending, confirmed;
  for (const auto& p : rb->pending) pending += (pending.empty() ? "" : ";") + p;
  for (const auto& c : rb->confirmed) {
    confirmed += (confirmed.empty() ? "" : ";") + c.participant + "@" + formatMicros(c.atUs);
  }
  std::string reason = rb->reason + (rb->lastError.empty() ? "" : " (last error: " + rb->lastError + ")");
  out << "rollback," << rb->seq << "," << seqText(rb->seq) << ",,,," << csvTime(rb->requestedUs) << ",,"
      << csvTime(rb->completedUs) << ",,," << rb->attempts << "," << csvCell(pending) << "," << csvCell(confirmed)
      << "," << csvCell(reason) << "\n";
}

void printExported(std::ostream& out, std::uint64_t interactions, std::uint64_t rollbacks, std::uint64_t scanned,
                   std::uint64_t damaged, const std::string& where, bool json) {
  if (json) {
    out << "{\"interactions\":" << interactions << ",\"rollbacks\":" << rollbacks << ",\"scanned\":" << scanned
        << ",\"damaged\":" << damaged << ",\"out\":" << q(where) << "}\n";
    return;
  }
  out << "keelctl: exported " << interactions << " interactions and " << rollbacks << " rollback records to "
      << where << " (" << scanned << " records looked at";
  if (damaged > 0) out << "; " << damaged << " damaged records skipped: keel-coordinator --check-wal names them";
  out << ")\n";
}

void printSearch(std::ostream& out, const std::vector<InteractionRecord>& found, bool more, std::uint64_t scanned,
                 bool json) {
  if (json) {
    out << "{\"interactions\":[";
    for (std::size_t i = 0; i < found.size(); ++i) out << (i ? "," : "") << toJson(found[i]);
    out << "],\"more\":" << (more ? "true" : "false") << ",\"scanned\":" << scanned << "}\n";
    return;
  }
  out << found.size() << " interaction(s) (" << scanned << " records looked at)\n";
  for (const auto& r : found) {
    out << "  " << seqText(r.seq) << "  " << formatMicros(r.createdUs) << "  " << stateName(r.state) << " ";
    for (const auto& b : r.branches) out << " " << b.participant;
    if (!r.requestId.empty()) out << "  request id " << r.requestId;
    out << "\n";
  }
  if (more) out << "  ... and more: raise --limit or narrow the range\n";
}

}  // namespace keel::ctl
