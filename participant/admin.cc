#include "participant/admin.h"

#include <memory>
#include <sstream>

#include "common/admin_plane.h"
#include "common/metrics.h"
#include "tools/keelctl/output.h"

namespace keel {

AgentGauges agentGauges(const ParticipantBackend& agent) {
  AgentGauges g;
  const BranchLog& log = agent.branchLog();
  g.counts = log.counts();
  g.fill = log.fill();
  g.used = log.envConst().usedFractionOrFill();
  g.mapBytes = log.envConst().mapSize();
  g.fences = log.fences();
  for (const auto& f : log.releaseFloors()) g.floors[f.node] = f.floor;
  g.unavailable = agent.unavailable().has_value();
  return g;
}

std::string renderAgentMetrics(const std::vector<AgentMetricsSource>& agents, bool labelled) {
  MetricsText t;
  // Every sample of one source, with agent="NAME" first when labelled.
  auto L = [labelled](const AgentMetricsSource& a, Labels labels = {}) {
    if (labelled) labels.insert(labels.begin(), {"agent", a.name});
    return labels;
  };
  t.family("keel_agent_info", "gauge", "This agent (always 1; its name as a label).");
  for (const auto& a : agents) t.sample({{"agent", a.name}}, 1);
  t.family("keel_agent_votes_total", "counter", "Prepare votes given (vote fault: the item failed on its own).");
  for (const auto& a : agents) {
    for (std::uint8_t v = 0; v <= kMaxVote; ++v) {
      t.sample(L(a, {{"vote", snakeCase(voteName(Vote(v)))}}), double(a.metrics->votes[v].value()));
    }
    t.sample(L(a, {{"vote", "fault"}}), double(a.metrics->votes[kMaxVote + 1].value()));
  }
  t.family("keel_agent_branch_outcomes_total", "counter", "Branch outcomes answered, by call and outcome.");
  for (const auto& a : agents) {
    for (std::uint8_t o = 0; o <= kMaxBranchOutcome; ++o) {
      std::string on = snakeCase(outcomeName(BranchOutcome(o)));
      t.sample(L(a, {{"call", "commit"}, {"outcome", on}}), double(a.metrics->commits[o].value()));
      t.sample(L(a, {{"call", "rollback"}, {"outcome", on}}), double(a.metrics->rollbacks[o].value()));
      t.sample(L(a, {{"call", "one_phase"}, {"outcome", on}}), double(a.metrics->onePhase[o].value()));
    }
  }
  t.family("keel_agent_executes_total", "counter", "Interactive execute calls.");
  for (const auto& a : agents) t.sample(L(a), double(a.metrics->executes.value()));
  t.family("keel_agent_call_seconds", "histogram", "One message received to answered (a prepareBatch: every vote).");
  for (const auto& a : agents) {
    t.histogram(L(a, {{"call", "prepare"}}), *a.metrics->prepareSeconds);
    t.histogram(L(a, {{"call", "commit"}}), *a.metrics->commitSeconds);
    t.histogram(L(a, {{"call", "rollback"}}), *a.metrics->rollbackSeconds);
    t.histogram(L(a, {{"call", "one_phase"}}), *a.metrics->onePhaseSeconds);
    t.histogram(L(a, {{"call", "execute"}}), *a.metrics->executeSeconds);
  }
  t.family("keel_agent_prepare_batch_size", "histogram", "Items per prepareBatch message.");
  for (const auto& a : agents) t.histogram(L(a), *a.metrics->prepareBatch);
  t.family("keel_agent_phase2_batch_size", "histogram", "Branches per commit or rollback message.");
  for (const auto& a : agents) t.histogram(L(a), *a.metrics->phase2Batch);

  t.family("keel_agent_branches", "gauge", "Branch records by state (committed and rolled back: kept, not released).");
  for (const auto& a : agents) {
    const auto& c = a.gauges.counts;
    t.sample(L(a, {{"state", "active"}}), c.active);
    t.sample(L(a, {{"state", "prepared"}}), c.prepared);
    t.sample(L(a, {{"state", "committed"}}), c.committed);
    t.sample(L(a, {{"state", "rolled_back"}}), c.rolledBack);
  }
  t.family("keel_agent_fence_epoch", "gauge", "Newest epoch seen from each coordinator node.");
  for (const auto& a : agents) {
    for (const auto& [node, epoch] : a.gauges.fences) t.sample(L(a, {{"node", std::to_string(node)}}), double(epoch));
  }
  t.family("keel_agent_release_floor", "gauge", "Each coordinator node's release floor held here (a seq).");
  for (const auto& a : agents) {
    for (const auto& [node, floor] : a.gauges.floors) t.sample(L(a, {{"node", std::to_string(node)}}), double(floor));
  }
  t.family("keel_agent_host_up", "gauge", "1 while the host system behind answers (host adapter; ledger and postgres agents always 1).");
  for (const auto& a : agents) t.sample(L(a), a.gauges.unavailable ? 0 : 1);

  t.family("keel_agent_log_commits_total", "counter", "Durable (fsync-bearing) commits of the branch log.");
  for (const auto& a : agents) t.sample(L(a), double(a.log->commits.load(std::memory_order_relaxed)));
  t.family("keel_agent_log_jobs_total", "counter", "Records (jobs) those commits carried.");
  for (const auto& a : agents) t.sample(L(a), double(a.log->jobs.load(std::memory_order_relaxed)));
  t.family("keel_agent_log_group_size", "histogram", "Jobs per durable commit (group commit).");
  for (const auto& a : agents) t.histogram(L(a), *a.log->groupSize);
  t.family("keel_agent_log_commit_seconds", "histogram", "One group commit on the writer thread, fsync included.");
  for (const auto& a : agents) t.histogram(L(a), *a.log->commitLatency);
  t.family("keel_agent_log_checkpoint_seconds", "histogram",
           "Redo mode: one checkpoint (LMDB's commit behind redo.log; its flush runs on a second thread); the writer takes no group meanwhile.");
  for (const auto& a : agents) t.histogram(L(a), *a.log->checkpointLatency);
  t.family("keel_agent_log_map_bytes", "gauge", "The branch log's LMDB map size (map_size_mb).");
  for (const auto& a : agents) t.sample(L(a), double(a.gauges.mapBytes));
  t.family("keel_agent_log_high_water_bytes", "gauge",
           "Of it, the high-water mark: it never drops (LMDB reuses the pages freed below it). New branches are refused from 90% while more than 80% is in use.");
  for (const auto& a : agents) t.sample(L(a), a.gauges.fill * double(a.gauges.mapBytes));
  t.family("keel_agent_log_used_bytes", "gauge",
           "Of it, in use: the high-water mark less the free pages LMDB can reuse. New branches are refused above 80% once the mark is past 90%.");
  for (const auto& a : agents) t.sample(L(a), a.gauges.used * double(a.gauges.mapBytes));
  return t.take();
}

void addAgentRoutes(AdminHttpServer& server, const kj::Executor& loop, ParticipantBackend& agent, AgentMetrics& metrics,
                    AgentClient& client) {
  // Every read of the loop's state goes through it: bounded in time (common/admin_plane.h).
  auto calls = std::make_shared<LoopCaller>(loop);
  server.route("GET", "/metrics", [calls, &agent, &metrics](const HttpRequest&) {
    return guardedAnswer("agent", [&] {
      auto g = calls->call([&agent]() { return agentGauges(agent); });
      return HttpResponse::text(
          200, kPrometheusText,
          renderAgentMetrics({AgentMetricsSource{agent.name(), &metrics, g, &agent.branchLog().log().stats()}},
                             /*labelled=*/false));
    });
  });
  server.route("GET", "/api/branches", [calls, &client](const HttpRequest&) {
    return guardedAnswer("agent", [&] {
      auto both = calls->call([&client]() { return client.booksAndUnfinished(); });
      std::ostringstream out;
      ctl::printBranches(out, both.first, both.second, true);
      return HttpResponse::json(200, out.str());
    });
  });
}

}  // namespace keel
