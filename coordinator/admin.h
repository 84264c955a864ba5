#pragma once
// The coordinator's admin plane (docs/operations.md, "Admin plane"): the
// routes its AdminHttpServer serves.
//
//   GET /metrics                      Prometheus text: coordinator_metrics.h, the WAL's group commits, gauges,
//                                     and each embedded participant's keel_agent_* (agent="NAME")
//   GET /api/info                     = keelctl --json info
//   GET /api/stats                    = keelctl --json stats
//   GET /api/list?limit=N             = keelctl --json list (unfinished and heuristic)
//   GET /api/query?seq=S              = keelctl --json query S (NODE:COUNTER or the number)
//   GET /api/query?request_id=ID      = keelctl --json query --request-id ID
//   GET /api/audit?limit=N            = keelctl --json audit
//   GET /api/branches?participant=P   = keelctl --json branches --embedded P (an embedded participant's)
//   GET /                             the console (coordinator/console.html, embedded)
//   GET /api/live                     the console's live numbers: counters, gauges, latency buckets
//   GET /api/participants             each participant: address, up/down, drivers waiting, calls
//   POST /api/retry?seq=S&who=&why=   retry now, audited ([admin] actions = true)
//   POST /api/resolve?seq=S&decision=commit|rollback&who=&why=[&override=true]
//                                     = keelctl resolve, audited ([admin] actions = true)
//
// Threads: the handlers run on the admin plane's own thread. Counters are
// read there directly (atomics). Everything else is asked of the event
// loop through `loop` (kj::Executor): the JSON reads call the coordinator's
// own RPC object in-process through `client`, the same calls and the same
// renderings keelctl uses, so no read exists twice; the gauges are counted
// in one short pass there. The loop is never blocked by the admin plane:
// it only runs these calls between its own events, as it would a
// keelctl's.

#include <kj/async.h>

#include <functional>
#include <string>

#include "common/admin_http.h"
#include "common/client.h"
#include "common/group_log.h"
#include "coordinator/coordinator.h"

namespace keel {

// /metrics' text from the counters, the gauges counted on the loop and
// the WAL's group-commit statistics.
std::string renderCoordinatorMetrics(const CoordinatorMetrics& m, const Coordinator::Gauges& g,
                                     const GroupCommitLog::Stats& wal, std::uint16_t nodeId);

// The embedded participants' keel_agent_* families, appended to /metrics
// (coordinator_main: EmbeddedParticipant::metricsSource). Called on the
// loop at every scrape, where it counts the gauges only the loop may read;
// the renderer it returns runs on the admin plane's thread, as the
// coordinator's own rendering does.
using EmbeddedMetrics = std::function<std::function<std::string()>()>;

// Registers the routes above on `server` (before its start()). Everything
// passed must outlive the server's stop(); `client` is used on the loop only.
// `actions`: [admin] actions, the console's POST routes allowed.
void addCoordinatorRoutes(AdminHttpServer& server, const kj::Executor& loop, Coordinator& coordinator,
                          KeelClient& client, const GroupCommitLog::Stats& wal, std::uint16_t nodeId, bool actions,
                          EmbeddedMetrics embeddedMetrics = nullptr);

}  // namespace keel
