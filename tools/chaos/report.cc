#include "tools/chaos/report.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <set>
#include <sstream>
#include <stdexcept>

#include "common/records.h"

namespace keel::chaos {

void Timeline::start(Micros t0) {
  std::lock_guard<std::mutex> lk(mu_);
  t0_ = t0;
}

void Timeline::addCommit(Micros at) {
  std::lock_guard<std::mutex> lk(mu_);
  if (at < t0_) return;
  std::size_t s = (at - t0_) / 1'000'000;
  if (s >= perSecond_.size()) perSecond_.resize(s + 1, 0);
  ++perSecond_[s];
}

void Timeline::addFault(const std::string& kind, const std::string& target, Micros start, Micros end) {
  std::lock_guard<std::mutex> lk(mu_);
  faults_.push_back(Fault{kind, target, double(start - t0_) / 1e6, double(end - t0_) / 1e6});
}

std::vector<std::uint64_t> Timeline::commitsPerSecond() const {
  std::lock_guard<std::mutex> lk(mu_);
  return perSecond_;
}

std::vector<Timeline::Fault> Timeline::faults() const {
  std::lock_guard<std::mutex> lk(mu_);
  return faults_;
}

namespace {
std::string ms(std::uint64_t us) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f ms", us / 1e3);
  return b;
}

// "(N): p50 A ms, p99 B ms, max C ms" of durations in ms.
std::string spread(const std::vector<std::uint64_t>& v) {
  return "(" + std::to_string(v.size()) + "): p50 " + std::to_string(percentile(v, 0.5)) + " ms, p99 " +
         std::to_string(percentile(v, 0.99)) + " ms, max " + std::to_string(percentile(v, 1.0)) + " ms";
}

std::vector<std::uint64_t> workMs(const Takeovers& t) {
  std::vector<std::uint64_t> v;
  for (const auto& d : t.done) v.push_back(d.workMs);
  return v;
}

// The cluster's lines of the text report (each starts with a newline: the
// faults line before them is left open).
std::string clusterText(const Report::Cluster& c) {
  const auto& t = c.takeovers;
  std::uint64_t branches = 0, committed = 0, rolledBack = 0;
  for (const auto& d : t.done) {
    branches += d.branches;
    committed += d.committed;
    rolledBack += d.rolledBack;
  }
  std::ostringstream o;
  o << "\n  cluster                " << c.coordinators << " coordinators on etcd (" << c.etcdMembers
    << " members), lease TTL " << c.leaseTtlS << " s, prefix " << c.prefix << "\n"
    << "  takeovers              " << t.done.size() << " done (" << branches << " branches: " << committed
    << " committed, " << rolledBack << " rolled back), " << t.stopped << " stopped (the node came back), "
    << t.unattributed << " not after a fault injected on that coordinator\n"
    << "  takeover time          fault (SIGKILL, SIGSTOP, etcd cut) to the survivor's done line "
    << spread(t.fromFaultMs) << "\n"
    << "  takeover work          election to done " << spread(workMs(t)) << "\n"
    << "  fail-stops             " << t.failStops << " (a coordinator stopped itself on a lost lease); "
    << c.restartedAfterStop << " found stopped and restarted between faults, " << c.pausedKeptRunning
    << " kept running after a pause or cut longer than the TTL\n"
    << "  etcd                   " << c.decisionsSeen << " decisions read (each second during the run, and after "
    << "healing: " << c.decisionsLeft << " left), " << c.requestFates << " request fates read after healing";
  return o.str();
}

std::string clusterJson(const Report::Cluster& c) {
  const auto& t = c.takeovers;
  auto list = [](const std::vector<std::uint64_t>& v) {
    std::string s;
    for (auto x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
    return "[" + s + "]";
  };
  std::ostringstream o;
  o << ",\"cluster\":{\"coordinators\":" << c.coordinators << ",\"etcd_members\":" << c.etcdMembers
    << ",\"lease_ttl_s\":" << c.leaseTtlS << ",\"prefix\":\"" << jsonEscape(c.prefix) << "\""
    << ",\"takeovers\":{\"done\":" << t.done.size() << ",\"started\":" << t.started << ",\"stopped\":" << t.stopped
    << ",\"unattributed\":" << t.unattributed << ",\"from_fault_ms\":" << list(t.fromFaultMs)
    << ",\"from_fault_p50_ms\":" << percentile(t.fromFaultMs, 0.5) << ",\"from_fault_p99_ms\":"
    << percentile(t.fromFaultMs, 0.99) << ",\"from_fault_max_ms\":" << percentile(t.fromFaultMs, 1.0)
    << ",\"work_ms\":" << list(workMs(t)) << "},\"fail_stops\":" << t.failStops
    << ",\"restarted_after_stop\":" << c.restartedAfterStop << ",\"paused_kept_running\":" << c.pausedKeptRunning
    << ",\"decisions_seen\":" << c.decisionsSeen << ",\"decisions_left\":" << c.decisionsLeft
    << ",\"request_fates\":" << c.requestFates << "}";
  return o.str();
}
}  // namespace

namespace {
// "C of A (P%)" for the kinds in `kinds` together; empty if none was drawn.
std::string commitShare(const Report& r, std::initializer_list<Mix> kinds) {
  std::uint64_t attempted = 0, committed = 0;
  for (Mix m : kinds) {
    auto it = r.byMix.find(mixName(m));
    if (it == r.byMix.end()) continue;
    attempted += it->second.attempted;
    committed += it->second.committed;
  }
  if (attempted == 0) return "";
  char buf[96];
  std::snprintf(buf, sizeof buf, "%llu of %llu (%.1f%%)", (unsigned long long)committed,
                (unsigned long long)attempted, 100.0 * double(committed) / double(attempted));
  return buf;
}

}  // namespace

void countAttempts(Report& r, const std::vector<Attempt>& attempts, const CoordinatorView& coordinator) {
  r.attempted = attempts.size();
  std::set<std::uint64_t> inDoubtSeqs;
  for (const auto& a : attempts) {
    auto& m = r.byMix[mixName(a.mix)];
    ++m.attempted;
    r.threeBranch += a.mix == Mix::ThreeBranch ? 1 : 0;
    bool lostOne = false;
    for (const auto& t : a.tries) {
      if (!t.answer) {
        ++r.lost;
        lostOne = true;
      } else if (t.answer->outcome == ClientOutcome::InDoubt && t.answer->seq != 0) {
        inDoubtSeqs.insert(t.answer->seq);
      }
    }
    if (a.mix == Mix::Interactive) {
      ++(a.end == ClientEnd::Commit ? r.interactiveCommit : a.end == ClientEnd::Rollback ? r.interactiveRollback
                                                                                         : r.interactiveDrop);
    }
    if (!a.answer) {
      ++(a.dropped ? m.dropped : m.unanswered);
      if (!a.dropped && r.unansweredSamples.size() < 10) {
        std::string lostAt;
        for (const auto& t : a.tries) lostAt += (lostAt.empty() ? "" : ", ") + formatMicros(t.atUs);
        r.unansweredSamples.push_back(std::string(mixName(a.mix)) + " request id " + a.requestId +
                                      (a.seq != 0 ? " seq " + seqText(a.seq) : std::string()) + ": " +
                                      std::to_string(a.tries.size()) + " tries lost (" + lostAt + "), " +
                                      std::to_string(a.notSent) + " found no coordinator");
      }
    } else {
      switch (a.answer->outcome) {
        case ClientOutcome::Committed: ++m.committed; break;
        case ClientOutcome::RolledBack: ++m.rolledBack; break;
        case ClientOutcome::InDoubt: ++m.inDoubt; break;
        default:
          ++m.other;
          if (r.firstOther.empty()) {
            r.firstOther = std::string(clientOutcomeName(a.answer->outcome)) + ": " + a.answer->reason;
          }
          break;
      }
    }
    if (lostOne) {
      // A transaction dropped as planned after a lost begin: its retry got
      // through and opened it anew.
      ++r.retried;
      ++(a.dropped                    ? r.retriedNew
         : !a.answer                  ? r.retriedUnanswered
         : a.answer->replayed         ? r.retriedReplayed
                                      : r.retriedNew);
    }
  }
  r.committed = r.rolledBack = r.inDoubt = r.unanswered = r.other = 0;
  for (const auto& [k, m] : r.byMix) {
    r.committed += m.committed;
    r.rolledBack += m.rolledBack;
    r.inDoubt += m.inDoubt;
    r.unanswered += m.unanswered;
    r.other += m.other;
  }
  for (auto seq : inDoubtSeqs) {
    auto it = coordinator.interactions.find(seq);
    auto state = it == coordinator.interactions.end() ? InteractionRecord::State::Preparing : it->second.state;
    ++(state == InteractionRecord::State::Committed    ? r.inDoubtCommitted
       : state == InteractionRecord::State::RolledBack ? r.inDoubtRolledBack
                                                       : r.inDoubtOther);
  }
}

std::vector<std::string> unmetMinimums(const Report& r, const Minimums& m) {
  std::vector<std::string> out;
  auto need = [&](const std::string& what, std::uint64_t got, std::uint64_t want, const char* flag) {
    if (got < want) {
      out.push_back(what + " " + std::to_string(got) + ", fewer than " + std::to_string(want) + " (" + flag + ")");
    }
  };
  need("committed", r.committed, m.committed, "--min-committed");
  need("rolled back", r.rolledBack, m.rolledBack, "--min-rolled-back");
  for (const auto& [kind, c] : r.byMix) need(kind + " interactions answered", c.answered(), m.perKind, "--min-per-kind");
  need("interactions retried after a lost answer", r.retried, m.retried, "--min-retried");
  if (r.cluster) need("takeovers", r.cluster->takeovers.done.size(), m.takeovers, "--min-takeovers");
  std::uint64_t fired = 0;
  for (const auto& [kind, n] : r.faults) fired += n;
  need("faults that took effect", fired, m.anyFaults, "a run that injects faults must fire one");
  for (const auto& f : m.faults) {
    auto it = r.faults.find(f);
    if (it == r.faults.end() || it->second == 0) out.push_back("fault " + f + " never fired (--require-faults)");
  }
  return out;
}

std::string textReport(const Report& r) {
  std::ostringstream o;
  std::uint64_t faults = 0;
  for (auto& [k, n] : r.faults) faults += n;
  o << "keel-chaos report (seed " << r.seed << ", " << r.durationS << " s, " << r.agents << " " << r.adapter
    << " agents" << (r.selfCheck ? ", self-check" : "") << ")\n"
    << "  interactions attempted " << r.attempted << " (" << r.threeBranch << " with three branches)\n"
    << "    committed            " << r.committed << "\n"
    << "    rolled back          " << r.rolledBack << "\n"
    << "    in doubt (1PC)       " << r.inDoubt << "\n"
    << "    answer lost          " << r.lost << "  (tries whose answer never came; retried with the same request id)\n"
    << "    never answered       " << r.unanswered << "\n";
  for (const auto& u : r.unansweredSamples) o << "      " << u << "\n";
  if (r.other != 0) o << "    other answers        " << r.other << "  (first: " << r.firstOther << ")\n";
  char line[160];
  std::snprintf(line, sizeof line, "  %-16s %10s %10s %12s %9s %15s %8s\n", "by kind", "attempted", "committed",
                "rolled back", "in doubt", "never answered", "dropped");
  o << line;
  for (const auto& [kind, c] : r.byMix) {
    std::snprintf(line, sizeof line, "    %-14s %10llu %10llu %12llu %9llu %15llu %8llu\n", kind.c_str(),
                  (unsigned long long)c.attempted, (unsigned long long)c.committed, (unsigned long long)c.rolledBack,
                  (unsigned long long)c.inDoubt, (unsigned long long)c.unanswered, (unsigned long long)c.dropped);
    o << line;
  }
  if (r.byMix.count(mixName(Mix::Interactive)) != 0) {
    o << "  interactive, meant to end: commit " << r.interactiveCommit << ", rollback " << r.interactiveRollback
      << ", drop " << r.interactiveDrop << "\n";
  }
  if (auto s = commitShare(r, {Mix::Transfer, Mix::ThreeBranch}); !s.empty()) {
    o << "  commit share           transfers and three-branch (meant to commit): " << s << " committed";
    if (auto hot = commitShare(r, {Mix::HotTransfer}); !hot.empty()) {
      o << "; hot-transfer (contended on purpose): " << hot;
    }
    o << "\n";
  }
  o << "  lost answers retried   " << r.retried << " interactions: " << r.retriedReplayed << " replayed ("
    << "a retry got the first run's seq and outcome), " << r.retriedNew << " ran anew, " << r.retriedUnanswered
    << " never answered\n"
    << "  in doubt answers       " << r.inDoubtCommitted + r.inDoubtRolledBack + r.inDoubtOther
    << " interactions: ended committed " << r.inDoubtCommitted << ", rolled back " << r.inDoubtRolledBack;
  if (r.inDoubtOther != 0) o << ", otherwise " << r.inDoubtOther;
  o << "\n"
    << "  not sent (no coordinator to send to, retried every 100 ms) " << r.notSent << "\n"
    << "  throughput             " << (r.loadSeconds > 0 ? std::uint64_t(r.committed / r.loadSeconds) : 0)
    << " commits/s under faults\n"
    << "  faults injected        " << faults << ":";
  for (auto& [k, n] : r.faults) o << " " << k << " " << n;
  if (r.faults.count("failpoint") != 0) o << " (" << r.failpointsCrashed << " failpoints reached)";
  if (r.cluster) o << clusterText(*r.cluster);
  o << "\n  window of inconsistency over " << r.windowCount << " failed interactions: median " << ms(r.windowP50Us)
    << ", p99 " << ms(r.windowP99Us) << ", max " << ms(r.windowMaxUs) << "\n"
    << "  resolution after healing " << (r.resolved ? std::to_string(r.resolutionMs) + " ms" : "NOT REACHED") << "\n";
  for (const auto& u : r.unmet) o << "  minimum not met: " << u << "\n";
  if (r.selfCheck) o << "  self-check             " << r.selfCheckVerdict << "\n";
  o << "  violations             " << r.violations.size() << "\n";
  std::size_t shown = 0;
  for (auto& v : r.violations) {
    if (++shown > 50) {
      o << "    ... " << r.violations.size() - 50 << " more in report.json\n";
      break;
    }
    o << "    [" << violationKindName(v.kind) << "] " << (v.seq ? "seq " + seqText(v.seq) + ": " : "")
      << v.what << "\n";
  }
  return o.str();
}

std::string jsonReport(const Report& r, const Timeline& t) {
  std::ostringstream o;
  o << "{\"seed\":" << r.seed << ",\"duration_s\":" << r.durationS << ",\"agents\":" << r.agents
    << ",\"adapter\":\"" << jsonEscape(r.adapter) << "\""
    << ",\"self_check\":" << (r.selfCheck ? "true" : "false") << ",\"attempted\":" << r.attempted
    << ",\"three_branch\":" << r.threeBranch << ",\"committed\":" << r.committed
    << ",\"rolled_back\":" << r.rolledBack << ",\"in_doubt\":" << r.inDoubt << ",\"answer_lost\":" << r.lost
    << ",\"never_answered\":" << r.unanswered << ",\"other\":" << r.other << ",\"not_sent\":" << r.notSent
    << ",\"never_answered_samples\":[";
  for (std::size_t i = 0; i < r.unansweredSamples.size(); ++i) {
    o << (i ? "," : "") << "\"" << jsonEscape(r.unansweredSamples[i]) << "\"";
  }
  o << "]"
    << ",\"by_kind\":{";
  bool first = true;
  for (const auto& [kind, c] : r.byMix) {
    o << (first ? "" : ",") << "\"" << jsonEscape(kind) << "\":{\"attempted\":" << c.attempted
      << ",\"committed\":" << c.committed << ",\"rolled_back\":" << c.rolledBack << ",\"in_doubt\":" << c.inDoubt
      << ",\"never_answered\":" << c.unanswered << ",\"dropped\":" << c.dropped << ",\"other\":" << c.other << "}";
    first = false;
  }
  o << "},\"interactive_meant\":{\"commit\":" << r.interactiveCommit << ",\"rollback\":" << r.interactiveRollback
    << ",\"drop\":" << r.interactiveDrop << "},\"retried\":{\"interactions\":" << r.retried
    << ",\"replayed\":" << r.retriedReplayed << ",\"new\":" << r.retriedNew
    << ",\"never_answered\":" << r.retriedUnanswered << "},\"in_doubt_ended\":{\"committed\":" << r.inDoubtCommitted
    << ",\"rolled_back\":" << r.inDoubtRolledBack << ",\"other\":" << r.inDoubtOther << "},\"faults\":{";
  first = true;
  for (auto& [k, n] : r.faults) {
    o << (first ? "" : ",") << "\"" << jsonEscape(k) << "\":" << n;
    first = false;
  }
  o << "},\"failpoints_reached\":" << r.failpointsCrashed;
  if (r.cluster) o << clusterJson(*r.cluster);
  o << ",\"window_of_inconsistency\":{\"count\":" << r.windowCount << ",\"p50_us\":" << r.windowP50Us
    << ",\"p99_us\":" << r.windowP99Us << ",\"max_us\":" << r.windowMaxUs << "},\"resolved\":"
    << (r.resolved ? "true" : "false") << ",\"resolution_ms\":" << r.resolutionMs << ",\"unmet_minimums\":[";
  for (std::size_t i = 0; i < r.unmet.size(); ++i) o << (i ? "," : "") << "\"" << jsonEscape(r.unmet[i]) << "\"";
  o << "]";
  if (r.selfCheck) o << ",\"self_check_verdict\":\"" << jsonEscape(r.selfCheckVerdict) << "\"";
  o << ",\"violations\":[";
  for (std::size_t i = 0; i < r.violations.size(); ++i) {
    std::uint64_t seq = r.violations[i].seq;
    o << (i ? "," : "") << "{\"seq\":" << seq << ",\"seq_text\":" << (seq != 0 ? "\"" + seqText(seq) + "\"" : "null")
      << ",\"kind\":\"" << violationKindName(r.violations[i].kind) << "\",\"what\":\""
      << jsonEscape(r.violations[i].what) << "\"}";
  }
  o << "],\"commits_per_second\":[";
  auto per = t.commitsPerSecond();
  for (std::size_t i = 0; i < per.size(); ++i) o << (i ? "," : "") << per[i];
  o << "],\"fault_timeline\":[";
  auto fs = t.faults();
  for (std::size_t i = 0; i < fs.size(); ++i) {
    char b[64];
    std::snprintf(b, sizeof b, "\"start_s\":%.3f,\"end_s\":%.3f", fs[i].startS, fs[i].endS);
    o << (i ? "," : "") << "{\"kind\":\"" << jsonEscape(fs[i].kind) << "\",\"target\":\"" << jsonEscape(fs[i].target)
      << "\"," << b << "}";
  }
  o << "]}\n";
  return o.str();
}

std::string svgTimeline(const Report& r, const Timeline& t) {
  auto per = t.commitsPerSecond();
  auto fs = t.faults();
  const double W = 1000, H = 360, left = 60, right = 20, top = 30, plotH = 220;
  double secs = std::max<double>(r.durationS, double(per.size()));
  for (auto& f : fs) secs = std::max(secs, f.endS);
  if (secs <= 0) secs = 1;
  std::uint64_t peak = 1;
  for (auto v : per) peak = std::max(peak, v);
  auto x = [&](double s) { return left + (W - left - right) * s / secs; };
  auto y = [&](double v) { return top + plotH - plotH * v / double(peak); };
  static const std::map<std::string, std::string> colours = {
      {"kill", "#d62728"},      {"pause", "#ff7f0e"},         {"latency", "#bcbd22"},
      {"reset", "#8c564b"},     {"blackhole", "#7f7f7f"},     {"loss-to-agent", "#9467bd"},
      {"loss-from-agent", "#e377c2"}, {"refuse", "#17becf"}, {"failpoint", "#2ca02c"},
      {"slow-disk", "#1f77b4"}, {"postgres-kill", "#000000"}, {"postgres-pause", "#c49c94"},
      {"coordinator-kill", "#8b0000"}, {"coordinator-pause", "#ffbb78"}, {"etcd-kill", "#393b79"},
      {"etcd-pause", "#9c9ede"},        {"etcd-partition", "#637939"}};
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << left << "\" y=\"18\" font-size=\"13\">keel-chaos seed " << r.seed << ": commits per second, "
    << "faults below (" << r.violations.size() << " violations)</text>\n";
  // Faults as bands in lanes under the plot, and faint over the plot.
  int lane = 0;
  for (auto& f : fs) {
    auto c = colours.count(f.kind) ? colours.at(f.kind) : std::string("#444444");
    double x0 = x(f.startS), x1 = std::max(x(f.endS), x0 + 2);
    o << "<rect x=\"" << x0 << "\" y=\"" << top << "\" width=\"" << x1 - x0 << "\" height=\"" << plotH
      << "\" fill=\"" << c << "\" opacity=\"0.12\"/>\n";
    o << "<rect x=\"" << x0 << "\" y=\"" << top + plotH + 8 + 10 * lane << "\" width=\"" << x1 - x0
      << "\" height=\"8\" fill=\"" << c << "\"><title>" << f.kind << " " << f.target << "</title></rect>\n";
    lane = (lane + 1) % 4;
  }
  // Axes.
  o << "<line x1=\"" << left << "\" y1=\"" << top + plotH << "\" x2=\"" << W - right << "\" y2=\"" << top + plotH
    << "\" stroke=\"black\"/>\n<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\""
    << top + plotH << "\" stroke=\"black\"/>\n";
  o << "<text x=\"5\" y=\"" << top + 10 << "\">" << peak << "/s</text>\n<text x=\"5\" y=\"" << top + plotH
    << "\">0</text>\n";
  for (int s = 0; s <= int(secs); s += std::max(1, int(secs / 10))) {
    o << "<text x=\"" << x(s) - 5 << "\" y=\"" << top + plotH + 58 << "\">" << s << "s</text>\n";
  }
  // Throughput.
  o << "<polyline fill=\"none\" stroke=\"black\" stroke-width=\"1.5\" points=\"";
  for (std::size_t i = 0; i < per.size(); ++i) o << x(i + 0.5) << "," << y(double(per[i])) << " ";
  o << "\"/>\n";
  // Legend.
  // (only the kinds that fired: the cluster's kinds would not fit beside all the others)
  double lx = left;
  std::set<std::string> fired;
  for (auto& f : fs) fired.insert(f.kind);
  for (auto& [k, c] : colours) {
    if (fired.count(k) == 0) continue;
    o << "<rect x=\"" << lx << "\" y=\"" << H - 22 << "\" width=\"10\" height=\"10\" fill=\"" << c << "\"/>"
      << "<text x=\"" << lx + 13 << "\" y=\"" << H - 13 << "\">" << k << "</text>\n";
    lx += 13 + 7.0 * double(k.size()) + 14;
  }
  o << "</svg>\n";
  return o.str();
}

void writeReport(const Report& r, const Timeline& t, const std::string& dir) {
  std::ofstream(dir + "/report.json") << jsonReport(r, t);
  std::ofstream(dir + "/timeline.svg") << svgTimeline(r, t);
  std::ofstream(dir + "/report.txt") << textReport(r) << "violations: " << r.violations.size() << "\n";
}

}  // namespace keel::chaos
