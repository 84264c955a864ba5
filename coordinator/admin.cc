#include "coordinator/admin.h"

#include <kj/exception.h>

#include <sstream>

#include "common/admin_plane.h"
#include "common/records.h"
#include "common/types.h"
#include "tools/keelctl/output.h"

namespace keel {

namespace {

template <typename Fn>
HttpResponse guarded(Fn&& fn) {
  return guardedAnswer("coordinator", std::forward<Fn>(fn));
}

HttpResponse jsonFrom(const std::ostringstream& out) { return HttpResponse::json(200, out.str()); }

}  // namespace

std::string renderCoordinatorMetrics(const CoordinatorMetrics& m, const Coordinator::Gauges& g,
                                     const GroupCommitLog::Stats& wal, std::uint16_t nodeId) {
  MetricsText t;
  t.family("keel_coordinator_info", "gauge", "This coordinator node (always 1; the node id as a label).");
  t.sample({{"node", std::to_string(nodeId)}}, 1);

  t.family("keel_answers_total", "counter", "Answers clients heard, by outcome (retries of a request id included).");
  for (std::uint8_t o = 0; o <= kMaxClientOutcome; ++o) {
    t.sample({{"outcome", snakeCase(clientOutcomeName(ClientOutcome(o)))}}, double(m.answers[o].value()));
  }
  t.family("keel_interactions_finished_total", "counter",
           "Interactions finished (final record durable), by final state; heuristic ones need an operator.");
  t.sample({{"state", "committed"}}, double(m.committed.value()));
  t.sample({{"state", "rolled_back"}}, double(m.rolledBack.value()));
  t.sample({{"state", "heuristic_mixed"}}, double(m.heuristicMixed.value()));
  t.sample({{"state", "heuristic_unknown"}}, double(m.heuristicUnknown.value()));

  t.family("keel_submit_to_answer_seconds", "histogram", "Seq assigned to the client's answer.");
  t.histogram(*m.submitToAnswer);
  t.family("keel_prepare_seconds", "histogram", "Prepares sent to every vote in (or the first no).");
  t.histogram(*m.prepare);
  t.family("keel_decision_write_seconds", "histogram",
           "COMMIT decision queued to durable (the WAL's group commit, or etcd in a cluster).");
  t.histogram(*m.decisionWrite);
  t.family("keel_phase2_seconds", "histogram", "COMMIT decision durable to every branch committed.");
  t.histogram(*m.phase2);
  t.family("keel_inconsistency_window_seconds", "histogram",
           "Failed interactions: first failure to every branch confirmed (what keelctl stats reports).");
  t.histogram(*m.inconsistency);

  t.family("keel_in_doubt", "gauge", "Unfinished interactions that failed and are being settled (keelctl stats).");
  t.sample(double(g.inDoubt));
  t.family("keel_in_doubt_oldest_seconds", "gauge", "Age of the oldest of them (0 when none).");
  t.sample(double(g.oldestInDoubtUs) / 1e6);
  t.family("keel_rollback_queue", "gauge", "Interactions aborting: rollback driven until every participant confirms.");
  t.sample(double(g.rollbackQueue));
  t.family("keel_phase2_queue", "gauge", "Interactions whose COMMIT is durable and phase 2 is not done.");
  t.sample(double(g.committing));
  t.family("keel_interactions_live", "gauge", "Interactions in memory (not finished).");
  t.sample(double(g.live));
  t.family("keel_rollback_attempts_total", "counter", "Rollback driver rounds (the first one of each included).");
  t.sample(double(m.rollbackAttempts.value()));
  t.family("keel_phase2_retries_total", "counter", "Commit driver rounds after the first.");
  t.sample(double(m.phase2Retries.value()));
  t.family("keel_recovery_sweep_done", "gauge", "1 once the start-up sweep of every participant is done.");
  t.sample(g.sweepDone ? 1 : 0);

  t.family("keel_wal_commits_total", "counter", "Durable (fsync-bearing) commits of the hot WAL.");
  t.sample(double(wal.commits.load(std::memory_order_relaxed)));
  t.family("keel_wal_jobs_total", "counter", "Records (jobs) those commits carried.");
  t.sample(double(wal.jobs.load(std::memory_order_relaxed)));
  t.family("keel_wal_failed_jobs_total", "counter", "Jobs whose write failed (their callers were told).");
  t.sample(double(wal.failedJobs.load(std::memory_order_relaxed)));
  t.family("keel_wal_group_size", "histogram", "Jobs per durable commit (group commit).");
  t.histogram(*wal.groupSize);
  t.family("keel_wal_commit_seconds", "histogram", "One group commit on the writer thread, fsync included.");
  t.histogram(*wal.commitLatency);
  t.family("keel_wal_map_bytes", "gauge", "The hot WAL's LMDB map size (map_size_mb).");
  t.sample(double(g.walMapBytes));
  t.family("keel_wal_used_bytes", "gauge", "Of it, in use; new work is refused at 90%.");
  t.sample(double(g.walUsedBytes));

  t.family("keel_submit_batch_size", "histogram", "Interactions per submitBatch call from clients.");
  t.histogram(*m.submitBatch);
  t.family("keel_participant_up", "gauge", "1 while the participant answers, 0 from a call that found it silent.");
  for (const auto& [name, p] : m.participants) t.sample({{"participant", name}}, p->up ? 1 : 0);
  t.family("keel_participant_call_seconds", "histogram", "One message to the participant (a batch) to its answer.");
  for (const auto& [name, p] : m.participants) t.histogram({{"participant", name}}, *p->callLatency);
  t.family("keel_participant_call_failures_total", "counter", "Messages with no answer, refused or lost.");
  for (const auto& [name, p] : m.participants) t.sample({{"participant", name}}, double(p->callFailures.value()));
  t.family("keel_participant_prepare_batch_size", "histogram", "Prepares per prepareBatch message.");
  for (const auto& [name, p] : m.participants) t.histogram({{"participant", name}}, *p->prepareBatch);
  t.family("keel_participant_phase2_batch_size", "histogram", "Branches per commit or rollback message.");
  for (const auto& [name, p] : m.participants) t.histogram({{"participant", name}}, *p->phase2Batch);
  return t.take();
}

void addCoordinatorRoutes(AdminHttpServer& server, const kj::Executor& loop, Coordinator& coordinator,
                          KeelClient& client, const GroupCommitLog::Stats& wal, std::uint16_t nodeId) {
  server.route("GET", "/metrics", [&loop, &coordinator, &wal, nodeId](const HttpRequest&) {
    return guarded([&] {
      auto g = loop.executeSync([&coordinator]() { return coordinator.gauges(); });
      return HttpResponse::text(200, kPrometheusText,
                                renderCoordinatorMetrics(coordinator.metrics(), g, wal, nodeId));
    });
  });
  server.route("GET", "/api/info", [&loop, &client](const HttpRequest&) {
    return guarded([&] {
      auto info = loop.executeSync([&client]() { return client.info(); });
      std::ostringstream out;
      ctl::printInfo(out, info, true);
      return jsonFrom(out);
    });
  });
  server.route("GET", "/api/stats", [&loop, &client](const HttpRequest&) {
    return guarded([&] {
      auto s = loop.executeSync([&client]() { return client.stats(); });
      std::ostringstream out;
      ctl::printStats(out, s, true);
      return jsonFrom(out);
    });
  });
  server.route("GET", "/api/list", [&loop, &client](const HttpRequest& r) {
    return guarded([&] {
      std::uint32_t limit = limitParam(r, 100, 10000);
      auto lists = loop.executeSync([&client, limit]() {
        return client.listUnfinished(limit).then([&client, limit](std::vector<InteractionRecord> unfinished) {
          return client.listHeuristic(limit).then([u = std::move(unfinished)](std::vector<InteractionRecord> h) mutable {
            return std::make_pair(std::move(u), std::move(h));
          });
        });
      });
      std::ostringstream out;
      ctl::printUnfinished(out, lists.first, lists.second, true);
      return jsonFrom(out);
    });
  });
  server.route("GET", "/api/query", [&loop, &client](const HttpRequest& r) {
    return guarded([&] {
      auto seqText = r.param("seq");
      auto requestId = r.param("request_id");
      if (seqText.has_value() == requestId.has_value()) {
        throw BadParam{"give exactly one of seq=S (NODE:COUNTER or the number) and request_id=ID"};
      }
      std::optional<QueryResult> found;
      std::string what;
      if (seqText) {
        std::string why;
        auto seq = parseSeqText(*seqText, &why);
        if (!seq || *seq == 0) throw BadParam{"seq '" + *seqText + "': " + (why.empty() ? "not a seq" : why)};
        what = "no interaction " + keel::seqText(*seq);
        found = loop.executeSync([&client, s = *seq]() { return client.query(s); });
      } else {
        if (requestId->empty() || requestId->size() > 256) {
          throw BadParam{"request_id must be 1 to 256 characters"};
        }
        what = "no interaction has request id " + *requestId;
        found = loop.executeSync([&client, id = *requestId]() { return client.queryRequest(id); });
      }
      if (!found) return HttpResponse::error(404, what);
      std::ostringstream out;
      ctl::printQuery(out, *found, true);
      return jsonFrom(out);
    });
  });
  server.route("GET", "/api/audit", [&loop, &client](const HttpRequest& r) {
    return guarded([&] {
      std::uint32_t limit = limitParam(r, 100, 10000);
      auto entries = loop.executeSync([&client, limit]() { return client.audit(limit); });
      std::ostringstream out;
      ctl::printAudit(out, entries, true);
      return jsonFrom(out);
    });
  });
}

}  // namespace keel
