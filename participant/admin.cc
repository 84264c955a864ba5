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
  g.mapBytes = log.envConst().mapSize();
  g.fences = log.fences();
  for (const auto& f : log.releaseFloors()) g.floors[f.node] = f.floor;
  g.unavailable = agent.unavailable().has_value();
  return g;
}

std::string renderAgentMetrics(const std::string& name, const AgentMetrics& m, const AgentGauges& g,
                               const GroupCommitLog::Stats& log) {
  MetricsText t;
  t.family("keel_agent_info", "gauge", "This agent (always 1; its name as a label).");
  t.sample({{"agent", name}}, 1);
  t.family("keel_agent_votes_total", "counter", "Prepare votes given (vote fault: the item failed on its own).");
  for (std::uint8_t v = 0; v <= kMaxVote; ++v) t.sample({{"vote", snakeCase(voteName(Vote(v)))}}, double(m.votes[v].value()));
  t.sample({{"vote", "fault"}}, double(m.votes[kMaxVote + 1].value()));
  t.family("keel_agent_branch_outcomes_total", "counter", "Branch outcomes answered, by call and outcome.");
  for (std::uint8_t o = 0; o <= kMaxBranchOutcome; ++o) {
    std::string on = snakeCase(outcomeName(BranchOutcome(o)));
    t.sample({{"call", "commit"}, {"outcome", on}}, double(m.commits[o].value()));
    t.sample({{"call", "rollback"}, {"outcome", on}}, double(m.rollbacks[o].value()));
    t.sample({{"call", "one_phase"}, {"outcome", on}}, double(m.onePhase[o].value()));
  }
  t.family("keel_agent_executes_total", "counter", "Interactive execute calls.");
  t.sample(double(m.executes.value()));
  t.family("keel_agent_call_seconds", "histogram", "One message received to answered (a prepareBatch: every vote).");
  t.histogram({{"call", "prepare"}}, *m.prepareSeconds);
  t.histogram({{"call", "commit"}}, *m.commitSeconds);
  t.histogram({{"call", "rollback"}}, *m.rollbackSeconds);
  t.histogram({{"call", "one_phase"}}, *m.onePhaseSeconds);
  t.histogram({{"call", "execute"}}, *m.executeSeconds);
  t.family("keel_agent_prepare_batch_size", "histogram", "Items per prepareBatch message.");
  t.histogram(*m.prepareBatch);
  t.family("keel_agent_phase2_batch_size", "histogram", "Branches per commit or rollback message.");
  t.histogram(*m.phase2Batch);

  t.family("keel_agent_branches", "gauge", "Branch records by state (committed and rolled back: kept, not released).");
  t.sample({{"state", "active"}}, g.counts.active);
  t.sample({{"state", "prepared"}}, g.counts.prepared);
  t.sample({{"state", "committed"}}, g.counts.committed);
  t.sample({{"state", "rolled_back"}}, g.counts.rolledBack);
  t.family("keel_agent_fence_epoch", "gauge", "Newest epoch seen from each coordinator node.");
  for (const auto& [node, epoch] : g.fences) t.sample({{"node", std::to_string(node)}}, double(epoch));
  t.family("keel_agent_release_floor", "gauge", "Each coordinator node's release floor held here (a seq).");
  for (const auto& [node, floor] : g.floors) t.sample({{"node", std::to_string(node)}}, double(floor));
  t.family("keel_agent_host_up", "gauge", "1 while the host system behind answers (host adapter; ledger and postgres agents always 1).");
  t.sample(g.unavailable ? 0 : 1);

  t.family("keel_agent_log_commits_total", "counter", "Durable (fsync-bearing) commits of the branch log.");
  t.sample(double(log.commits.load(std::memory_order_relaxed)));
  t.family("keel_agent_log_jobs_total", "counter", "Records (jobs) those commits carried.");
  t.sample(double(log.jobs.load(std::memory_order_relaxed)));
  t.family("keel_agent_log_group_size", "histogram", "Jobs per durable commit (group commit).");
  t.histogram(*log.groupSize);
  t.family("keel_agent_log_commit_seconds", "histogram", "One group commit on the writer thread, fsync included.");
  t.histogram(*log.commitLatency);
  t.family("keel_agent_log_checkpoint_seconds", "histogram",
           "Redo mode: one checkpoint (LMDB's commit behind redo.log; its flush runs on a second thread); the writer takes no group meanwhile.");
  t.histogram(*log.checkpointLatency);
  t.family("keel_agent_log_map_bytes", "gauge", "The branch log's LMDB map size (map_size_mb).");
  t.sample(double(g.mapBytes));
  t.family("keel_agent_log_used_bytes", "gauge", "Of it, in use; new branches are refused at 90%.");
  t.sample(g.fill * double(g.mapBytes));
  return t.take();
}

void addAgentRoutes(AdminHttpServer& server, const kj::Executor& loop, ParticipantBackend& agent, AgentMetrics& metrics,
                    AgentClient& client) {
  // Every read of the loop's state goes through it: bounded in time (common/admin_plane.h).
  auto calls = std::make_shared<LoopCaller>(loop);
  server.route("GET", "/metrics", [calls, &agent, &metrics](const HttpRequest&) {
    return guardedAnswer("agent", [&] {
      auto g = calls->call([&agent]() { return agentGauges(agent); });
      return HttpResponse::text(200, kPrometheusText,
                                renderAgentMetrics(agent.name(), metrics, g, agent.branchLog().log().stats()));
    });
  });
  server.route("GET", "/api/branches", [calls, &client](const HttpRequest&) {
    return guardedAnswer("agent", [&] {
      auto both = calls->call([&client]() {
        return client.inspect().then([&client](AgentSnapshot snap) {
          return client.unfinished().then([snap = std::move(snap)](std::vector<UnfinishedBranch> b) mutable {
            return std::make_pair(std::move(snap), std::move(b));
          });
        });
      });
      std::ostringstream out;
      ctl::printBranches(out, both.first, both.second, true);
      return HttpResponse::json(200, out.str());
    });
  });
}

}  // namespace keel
