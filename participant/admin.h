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

#include "common/admin_http.h"
#include "common/client.h"
#include "participant/agent_metrics.h"
#include "participant/backend.h"

namespace keel {

// What /metrics counts on the loop at the moment of a scrape.
struct AgentGauges {
  BranchLog::Counts counts;
  double fill = 0;
  std::uint64_t mapBytes = 0;
  std::map<std::uint16_t, std::uint64_t> fences;  // newest epoch per coordinator node
  std::map<std::uint16_t, std::uint64_t> floors;  // release floor per coordinator node
  bool unavailable = false;                        // the host behind does not answer (postgres, host)
};
AgentGauges agentGauges(const ParticipantBackend& agent);

std::string renderAgentMetrics(const std::string& name, const AgentMetrics& m, const AgentGauges& g,
                               const GroupCommitLog::Stats& log);

void addAgentRoutes(AdminHttpServer& server, const kj::Executor& loop, ParticipantBackend& agent, AgentMetrics& metrics,
                    AgentClient& client);

}  // namespace keel
