#pragma once
// An agent's admin plane (docs/operations.md, "Admin plane"): the routes its
// AdminHttpServer serves.
//
//   GET /metrics        Prometheus text: agent_metrics.h, the branch log's group commits and records
//   GET /api/branches   = keelctl --json branches --agent (books, unfinished branches, floors)
//
// Threads as in coordinator/admin.h: counters are read on the admin
// plane's thread; the rest is asked of the event loop (kj::Executor), the
// JSON through the agent's own RPC object in-process (`client`).

#include <kj/async.h>

#include <string>
#include <vector>

#include "common/admin_http.h"
#include "common/client.h"
#include "participant/agent_metrics.h"
#include "participant/backend.h"

namespace keel {

// What /metrics counts on the loop at the moment of a scrape.
struct AgentGauges {
  BranchLog::Counts counts;
  double fill = 0;  // the map's high-water mark, 0..1
  double used = 0;  // of the map in use: the mark less the free pages LMDB can reuse (the mark if not counted)
  std::uint64_t mapBytes = 0;
  std::map<std::uint16_t, std::uint64_t> fences;  // newest epoch per coordinator node
  std::map<std::uint16_t, std::uint64_t> floors;  // release floor per coordinator node
  bool unavailable = false;                        // the host behind does not answer (postgres, host)
};
AgentGauges agentGauges(const ParticipantBackend& agent);

// One agent's side of /metrics: its counters (atomics, read on any
// thread), the gauges counted on its loop, its branch log's statistics.
struct AgentMetricsSource {
  std::string name;
  const AgentMetrics* metrics = nullptr;
  AgentGauges gauges;
  const GroupCommitLog::Stats* log = nullptr;
};

// The keel_agent_* families for `agents`. keel-agent: one source, its
// samples unlabelled (keel_agent_info names it). The coordinator's
// embedded participants (`labelled`): every sample also carries
// agent="NAME" first, so that several agents share one family each.
std::string renderAgentMetrics(const std::vector<AgentMetricsSource>& agents, bool labelled);

void addAgentRoutes(AdminHttpServer& server, const kj::Executor& loop, ParticipantBackend& agent, AgentMetrics& metrics,
                    AgentClient& client);

}  // namespace keel
