#include "bench/report.h"

#include <algorithm>
#include <cmath>

namespace keel::bench {

std::string jsonQuote(const std::string& s) {
  std::string o = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      default:
        if (ch < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          o += buf;
        } else {
          o += char(ch);
        }
    }
  }
  return o + "\"";
}

void JsonObject::key(const std::string& k) {
  if (!body_.empty()) body_ += ",";
  body_ += jsonQuote(k) + ":";
}

JsonObject& JsonObject::add(const std::string& k, double v) {
  key(k);
  if (!std::isfinite(v)) {
    body_ += "null";
    return *this;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  body_ += buf;
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, std::uint64_t v) {
  key(k);
  body_ += std::to_string(v);
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, const std::string& v) {
  key(k);
  body_ += jsonQuote(v);
  return *this;
}

JsonObject& JsonObject::addRaw(const std::string& k, const std::string& json) {
  key(k);
  body_ += json;
  return *this;
}

void addContextFields(JsonObject& j, const RunContext& c) {
  j.add("adapter", c.adapter)
      .add("workload", c.workload)
      .add("participants", c.participants)
      .add("agents", c.agents)
      .add("accounts", c.accounts)
      .add("rollback_percent", c.rollbackPercent)
      .add("read_percent", c.readPercent)
      .add("threads", c.threads)
      .add("warmup_s", c.warmupS)
      .add("duration_s", c.durationS)
      .addRaw("embedded_agents", c.embedded ? "true" : "false")
      .addRaw("raw2pc_prepared", c.rawPrepared ? "true" : "false");
}

double groupCpuUs(const RunResult& r, std::initializer_list<const char*> prefixes) {
  double s = 0;
  bool any = false;
  for (auto& c : r.cpu) {
    for (const char* p : prefixes) {
      if (c.seconds >= 0 && c.name.rfind(p, 0) == 0) {
        s += c.seconds;
        any = true;
      }
    }
  }
  if (!any || r.interactions() == 0) return -1;
  return s * 1e6 / double(r.interactions());
}

namespace {

// groupCpuUs for one group, 0 when not measured (the cluster lines).
double cpuUsPerInteraction(const RunResult& r, const char* group) { return std::max(0.0, groupCpuUs(r, {group})); }

// One process's CPU in microseconds per interaction of the window; < 0
// when not measured (the process was gone at one end of the window).
double cpuUsPerInteraction(const RunResult& r, const ProcessCpu& c) {
  if (c.seconds < 0) return -1;
  return r.interactions() ? c.seconds * 1e6 / double(r.interactions()) : 0;
}

// One process's context switches per interaction of the window; < 0 when
// not measured (gone, or a process tree such as PostgreSQL's).
double switchesPerInteraction(const RunResult& r, const ProcessCpu& c) {
  if (c.switches < 0) return -1;
  return r.interactions() ? c.switches / double(r.interactions()) : 0;
}

double ratio(double a, double b) { return b > 0 ? a / b : 0; }

}  // namespace

void addRunFields(JsonObject& j, const RunResult& r, const std::string& p) {
  j.add(p + "mode", r.mode)
      .add(p + "concurrency", r.concurrency)
      .add(p + "connections", r.connections)
      .addRaw(p + "client_batching", r.clientBatching ? "true" : "false")
      .addRaw(p + "tls", r.tls ? "true" : "false")
      .addRaw(p + "request_ids", r.requestIds ? "true" : "false")
      .add(p + "window_s", r.seconds)
      .add(p + "committed", r.committed)
      .add(p + "rolled_back", r.rolledBack)
      .add(p + "unexpected_rollbacks", r.unexpectedRollbacks)
      .add(p + "errors", r.errors)
      .add(p + "interactions_per_s", r.perSecond())
      .add(p + "committed_per_s", r.committedPerSecond())
      .add(p + "p50_us", r.latency.percentile(50))
      .add(p + "p90_us", r.latency.percentile(90))
      .add(p + "p99_us", r.latency.percentile(99))
      .add(p + "p999_us", r.latency.percentile(99.9))
      .add(p + "max_us", r.latency.max())
      .add(p + "mean_us", r.latency.mean());
  JsonObject cpu;
  for (auto& c : r.cpu) {
    if (c.seconds >= 0) {
      cpu.add(c.name, c.seconds);
    } else {
      cpu.addRaw(c.name, "null");
    }
  }
  j.addRaw(p + "cpu_s", cpu.str());
  JsonObject perInteraction;
  for (auto& c : r.cpu) {
    if (double us = cpuUsPerInteraction(r, c); us >= 0) {
      perInteraction.add(c.name, us);
    } else {
      perInteraction.addRaw(c.name, "null");
    }
  }
  j.addRaw(p + "cpu_us_per_interaction", perInteraction.str());
  JsonObject switches;
  for (auto& c : r.cpu) {
    if (double n = switchesPerInteraction(r, c); n >= 0) switches.add(c.name, n);
  }
  j.addRaw(p + "context_switches_per_interaction", switches.str());
  if (r.haveLogCounters) {
    j.add(p + "coordinator_log_commits", r.coordinatorLogCommits)
        .add(p + "coordinator_log_jobs", r.coordinatorLogJobs)
        .add(p + "coordinator_log_commits_per_interaction", r.coordinatorCommitsPerInteraction());
    if (r.agentLog.empty()) {
      j.addRaw(p + "agent_log_commits_per_interaction", "null");  // no agent process asked (--embedded)
    } else {
      j.add(p + "agent_log_commits_per_interaction", r.maxAgentCommitsPerInteraction());
    }
    JsonObject per;
    for (auto& a : r.agentLog) per.add(a.name, r.agentCommitsPerInteraction(a));
    j.addRaw(p + "agent_log_commits_per_interaction_by_agent", per.str());
    if (r.anyCheckpoints()) {
      // Redo mode: per process, checkpoints a second, their mean length and
      // the share of the window its writer stood still for them.
      JsonObject ck;
      auto one = [&](const std::string& name, std::uint64_t n, std::uint64_t us) {
        ck.addRaw(name, JsonObject()
                            .add("per_s", r.seconds > 0 ? double(n) / r.seconds : 0.0)
                            .add("mean_us", n ? double(us) / double(n) : 0.0)
                            .add("stalled_fraction", r.seconds > 0 ? double(us) / (r.seconds * 1e6) : 0.0)
                            .str());
      };
      one("coordinator", r.coordinatorCheckpoints, r.coordinatorCheckpointMicros);
      for (auto& a : r.agentLog) one(a.name, a.checkpoints, a.checkpointMicros);
      j.addRaw(p + "redo_checkpoints", ck.str());
    }
  }
  if (r.clustered) {
    j.add(p + "coordinators", r.coordinators)
        .add(p + "etcd_txns", r.etcdTxns)
        .add(p + "etcd_decisions", r.etcdDecisions)
        .add(p + "etcd_txns_per_interaction", r.etcdTxnsPerInteraction())
        .add(p + "etcd_decisions_per_txn", r.etcdDecisionsPerTxn())
        .add(p + "coordinators_cpu_us_per_interaction", cpuUsPerInteraction(r, "coordinator"))
        .add(p + "etcd_cpu_us_per_interaction", cpuUsPerInteraction(r, "etcd"));
  }
  if (!r.firstError.empty()) j.add(p + "first_error", r.firstError);
  if (!r.firstUnexpectedRollback.empty()) j.add(p + "first_unexpected_rollback", r.firstUnexpectedRollback);
}

void addFloorFields(JsonObject& j, const FloorResult& f, const RunResult* single) {
  j.add("floor_us", f.floorUs())
      .add("rtt_us", f.rttUs)
      .add("lmdb_commit_us", f.lmdbCommitUs)
      .add("redo_append_us", f.redoAppendUs)
      .add("floor_samples", f.samples);
  if (f.bracketed()) {
    j.add("floor_before_us", f.beforeUs).add("floor_after_us", f.afterUs).add("floor_spread", f.spread());
  }
  if (single != nullptr && f.floorUs() > 0) {
    double p50 = double(single->latency.percentile(50));
    j.add("p50_over_floor", p50 / f.floorUs());
    if (f.bracketed()) {
      j.add("p50_over_floor_before", p50 / f.beforeUs).add("p50_over_floor_after", p50 / f.afterUs);
    }
  }
}

bool answeredSomething(std::FILE* out, const RunResult& r) {
  if (r.committed + r.rolledBack > 0) return true;
  std::fprintf(out, "keel-bench: %s answered no interaction in its %.1f s window (errors %llu%s%s)\n", r.mode.c_str(),
               r.seconds, (unsigned long long)r.errors, r.firstError.empty() ? "" : ", the first: ",
               r.firstError.c_str());
  return false;
}

void printRun(std::FILE* out, const RunResult& r, const RunContext& c) {
  std::fprintf(out, "%s  %s/%s  concurrency %u over %u connections  window %.2f s\n", r.mode.c_str(),
               c.adapter.c_str(), c.workload.c_str(), r.concurrency, r.connections, r.seconds);
  if (c.embedded && r.mode == "keel") std::fprintf(out, "  agents embedded in the coordinator's process\n");
  if (c.rawPrepared && r.mode == "raw2pc") std::fprintf(out, "  debit and credit as named prepared statements (--raw-prepared)\n");
  std::fprintf(out, "  committed %llu  rolled back %llu (unexpected %llu)  errors %llu\n",
               (unsigned long long)r.committed, (unsigned long long)r.rolledBack,
               (unsigned long long)r.unexpectedRollbacks, (unsigned long long)r.errors);
  if (!r.firstError.empty()) std::fprintf(out, "  first error: %s\n", r.firstError.c_str());
  if (!r.firstUnexpectedRollback.empty()) {
    std::fprintf(out, "  first unexpected rollback: %s\n", r.firstUnexpectedRollback.c_str());
  }
  std::fprintf(out, "  %.0f interactions/s (%.0f committed/s)\n", r.perSecond(), r.committedPerSecond());
  std::fprintf(out, "  latency us  p50 %llu  p90 %llu  p99 %llu  p99.9 %llu  max %llu\n",
               (unsigned long long)r.latency.percentile(50), (unsigned long long)r.latency.percentile(90),
               (unsigned long long)r.latency.percentile(99), (unsigned long long)r.latency.percentile(99.9),
               (unsigned long long)r.latency.max());
  std::fprintf(out, "  CPU seconds:");
  for (auto& p : r.cpu) {
    if (p.seconds >= 0) {
      std::fprintf(out, "  %s %.2f", p.name.c_str(), p.seconds);
    } else {
      std::fprintf(out, "  %s ?", p.name.c_str());
    }
  }
  std::fprintf(out, "\n  CPU us per interaction:");
  for (auto& p : r.cpu) {
    if (double us = cpuUsPerInteraction(r, p); us >= 0) {
      std::fprintf(out, "  %s %.1f", p.name.c_str(), us);
    } else {
      std::fprintf(out, "  %s ?", p.name.c_str());
    }
  }
  if (c.adapter == "host") std::fprintf(out, "\n  (bank-a: the ledger agent, bank-b: the host agent in front of keel-host)");
  std::fprintf(out, "\n");
  bool anySwitches = false;
  for (auto& p : r.cpu) anySwitches = anySwitches || switchesPerInteraction(r, p) >= 0;
  if (anySwitches) {
    std::fprintf(out, "  context switches per interaction:");
    for (auto& p : r.cpu) {
      if (double n = switchesPerInteraction(r, p); n >= 0) std::fprintf(out, "  %s %.2f", p.name.c_str(), n);
    }
    std::fprintf(out, "\n");
  }
  if (r.haveLogCounters) {
    std::fprintf(out, "  durable log commits per interaction: coordinator %.3f (%llu commits, %llu jobs)",
                 r.coordinatorCommitsPerInteraction(), (unsigned long long)r.coordinatorLogCommits,
                 (unsigned long long)r.coordinatorLogJobs);
    for (auto& a : r.agentLog) std::fprintf(out, "  %s %.3f", a.name.c_str(), r.agentCommitsPerInteraction(a));
    std::fprintf(out, "\n");
    if (r.anyCheckpoints()) {
      auto one = [&](const std::string& name, std::uint64_t n, std::uint64_t us) {
        std::fprintf(out, "  %s %.0f/s, mean %.2f ms (%.1f %% of the window)", name.c_str(),
                     r.seconds > 0 ? double(n) / r.seconds : 0.0, n ? double(us) / double(n) / 1000 : 0.0,
                     r.seconds > 0 ? 100.0 * double(us) / (r.seconds * 1e6) : 0.0);
      };
      std::fprintf(out, "  redo checkpoints (the log's writer takes no group meanwhile):");
      one("coordinator", r.coordinatorCheckpoints, r.coordinatorCheckpointMicros);
      for (auto& a : r.agentLog) one(a.name, a.checkpoints, a.checkpointMicros);
      std::fprintf(out, "\n");
    }
  }
  if (r.clustered) {
    std::fprintf(out,
                 "  etcd: %llu txns for %llu decisions: %.4f txns per interaction, %.1f decisions per txn; CPU us per "
                 "interaction: %u coordinators %.1f, etcd %.1f\n",
                 (unsigned long long)r.etcdTxns, (unsigned long long)r.etcdDecisions, r.etcdTxnsPerInteraction(),
                 r.etcdDecisionsPerTxn(), r.coordinators, cpuUsPerInteraction(r, "coordinator"),
                 cpuUsPerInteraction(r, "etcd"));
  }
}

void addEtcdFloorFields(JsonObject& j, const EtcdFloorResult& f, const RunResult* single) {
  j.add("etcd_txn_us", f.syncUs).add("etcd_txn_async_us", f.asyncUs).add("etcd_floor_samples", f.samples);
  if (single != nullptr && f.asyncUs > 0) {
    j.add("p50_over_etcd_txn", double(single->latency.percentile(50)) / f.asyncUs);
  }
}

void printEtcdFloor(std::FILE* out, const EtcdFloorResult& f, const RunResult* single) {
  std::fprintf(out, "etcd create-if-absent txn (median of %u sequential): %.0f us blocking, %.0f us through the KJ loop\n",
               f.samples, f.syncUs, f.asyncUs);
  if (single != nullptr && f.asyncUs > 0) {
    std::fprintf(out, "  p50 at concurrency %u = %.2f x the etcd txn\n", single->concurrency,
                 double(single->latency.percentile(50)) / f.asyncUs);
  }
}

void printFloor(std::FILE* out, const FloorResult& f, const RunResult* single) {
  std::fprintf(out,
               "floor (median of %u): RPC round trip %.1f us, durable LMDB commit %.1f us, durable redo-log append %.1f us, "
               "floor = 2 x round trip + 2 x the cheaper write = %.1f us\n",
               f.samples, f.rttUs, f.lmdbCommitUs, f.redoAppendUs, f.floorUs());
  if (f.bracketed()) {
    std::fprintf(out, "  measured before the load (floor %.1f us) and after it (%.1f us), %.0f%% apart; each part above is the mean of the two",
                 f.beforeUs, f.afterUs, 100 * f.spread());
    if (f.spread() > kFloorSpreadWarn) {
      std::fprintf(out, ": more than %.0f%% apart, the machine changed during the run; do not judge a ratio against "
                   "the floor by this run", 100 * kFloorSpreadWarn);
    }
    std::fprintf(out, "\n");
  }
  if (single != nullptr && f.floorUs() > 0) {
    double p50 = double(single->latency.percentile(50));
    std::fprintf(out, "  p50 at concurrency %u = %.2f x floor", single->concurrency, p50 / f.floorUs());
    if (f.bracketed()) std::fprintf(out, " (%.2f x the floor before, %.2f x after)", p50 / f.beforeUs, p50 / f.afterUs);
    std::fprintf(out, "\n");
  }
}


void printHostOverLedger(std::FILE* out, const RunResult& host, const RunResult& ledger) {
  std::fprintf(out,
               "host / ledger (one invocation, same settings): throughput %.2f (%.0f vs %.0f interactions/s), "
               "p50 %.2f (%llu vs %llu us), p99 %.2f (%llu vs %llu us)\n",
               ratio(host.perSecond(), ledger.perSecond()), host.perSecond(), ledger.perSecond(),
               ratio(double(host.latency.percentile(50)), double(ledger.latency.percentile(50))),
               (unsigned long long)host.latency.percentile(50), (unsigned long long)ledger.latency.percentile(50),
               ratio(double(host.latency.percentile(99)), double(ledger.latency.percentile(99))),
               (unsigned long long)host.latency.percentile(99), (unsigned long long)ledger.latency.percentile(99));
}

void addHostOverLedgerFields(JsonObject& j, const RunResult& host, const RunResult& ledger) {
  j.add("host_over_ledger_interactions_per_s", ratio(host.perSecond(), ledger.perSecond()))
      .add("host_over_ledger_p50", ratio(double(host.latency.percentile(50)), double(ledger.latency.percentile(50))))
      .add("host_over_ledger_p99", ratio(double(host.latency.percentile(99)), double(ledger.latency.percentile(99))));
}

}  // namespace keel::bench
