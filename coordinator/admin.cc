#include "coordinator/admin.h"

#include <kj/exception.h>

#include <memory>
#include <sstream>

#include "common/admin_plane.h"
#include "common/records.h"
#include "common/types.h"
#include "console_html.h"  // kConsoleHtml, generated from coordinator/console.html
#include "tools/keelctl/output.h"

namespace keel {

namespace {

template <typename Fn>
HttpResponse guarded(Fn&& fn) {
  return guardedAnswer("coordinator", std::forward<Fn>(fn));
}

HttpResponse jsonFrom(const std::ostringstream& out) { return HttpResponse::json(200, out.str()); }

// ?seq=S: NODE:COUNTER or the number, not 0.
std::uint64_t seqParam(const HttpRequest& r) {
  auto text = r.param("seq");
  if (!text) throw BadParam{"seq=S is missing (NODE:COUNTER or the number)"};
  std::string why;
  auto seq = parseSeqText(*text, &why);
  if (!seq || *seq == 0) throw BadParam{"seq '" + *text + "': " + (why.empty() ? "not a seq" : why)};
  return *seq;
}

// An operator action from the console (POST): allowed only when [admin]
// actions = true, and only as the console sends it. A browser sends the
// X-Keel-Action header only from a script of the page's own origin (any
// other origin would need a CORS preflight, which this plane never
// grants), and an Origin it sends must be this plane's own: another site
// cannot make a visitor's browser act here. Returns the refusal, if any.
std::optional<HttpResponse> refuseAction(const HttpRequest& r, bool actionsOn) {
  if (!actionsOn) {
    return HttpResponse::error(403, "operator actions are off on this admin plane: [admin] actions = true turns them "
                                    "on (docs/operations.md, \"Console\")");
  }
  if (r.headers.find("x-keel-action") == r.headers.end()) {
    return HttpResponse::error(403, "an operator action must carry the X-Keel-Action header (the console sends it)");
  }
  auto origin = r.headers.find("origin");
  auto host = r.headers.find("host");
  if (origin != r.headers.end() &&
      (host == r.headers.end() || (origin->second != "http://" + host->second))) {
    return HttpResponse::error(403, "origin " + origin->second + " may not act on this admin plane");
  }
  return std::nullopt;
}

// Who an action is recorded as: the name the operator gave, and where the
// request came from (the plane has no identities of its own).
std::string actor(const HttpRequest& r) {
  auto who = r.param("who").value_or("");
  if (who.empty() || who.size() > 128) throw BadParam{"who=NAME is missing or longer than 128 characters"};
  return who + " (console at " + r.peer + ")";
}

std::string reasonParam(const HttpRequest& r) {
  auto why = r.param("why").value_or("");
  if (why.empty() || why.size() > 1024) throw BadParam{"why=REASON is missing or longer than 1024 characters"};
  return why;
}

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
  t.family("keel_wal_checkpoint_seconds", "histogram",
           "Redo mode: one checkpoint (LMDB's commit behind redo.log; its flush runs on a second thread); the writer takes no group meanwhile.");
  t.histogram(*wal.checkpointLatency);
  t.family("keel_wal_map_bytes", "gauge", "The hot WAL's LMDB map size (map_size_mb).");
  t.sample(double(g.walMapBytes));
  t.family("keel_wal_high_water_bytes", "gauge",
           "Of it, the high-water mark: it never drops (LMDB reuses the pages freed below it). New work is refused from 90% while more than 80% is in use.");
  t.sample(double(g.walHighWaterBytes));
  t.family("keel_wal_used_bytes", "gauge",
           "Of it, in use: the high-water mark less the free pages LMDB can reuse. New work is refused above 80% once the mark is past 90%.");
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

std::string liveJson(const CoordinatorMetrics& m, const Coordinator::Gauges& g, std::uint16_t nodeId, bool actions) {
  std::ostringstream o;
  o << "{\"now_us\":" << wallMicros() << ",\"node_id\":" << nodeId << ",\"actions\":" << (actions ? "true" : "false")
    << ",\"answers\":{";
  for (std::uint8_t i = 0; i <= kMaxClientOutcome; ++i) {
    o << (i ? "," : "") << "\"" << snakeCase(clientOutcomeName(ClientOutcome(i))) << "\":" << m.answers[i].value();
  }
  o << "},\"finished\":{\"committed\":" << m.committed.value() << ",\"rolled_back\":" << m.rolledBack.value()
    << ",\"heuristic_mixed\":" << m.heuristicMixed.value() << ",\"heuristic_unknown\":" << m.heuristicUnknown.value()
    << "},\"in_doubt\":" << g.inDoubt << ",\"oldest_in_doubt_us\":" << g.oldestInDoubtUs
    << ",\"rollback_queue\":" << g.rollbackQueue << ",\"phase2_queue\":" << g.committing << ",\"live\":" << g.live
    << ",\"wal_used\":" << (g.walMapBytes ? double(g.walUsedBytes) / double(g.walMapBytes) : 0.0)
    << ",\"wal_high_water\":" << (g.walMapBytes ? double(g.walHighWaterBytes) / double(g.walMapBytes) : 0.0);
  // submit -> answer: the cumulative buckets, for quantiles of any window
  // (the page subtracts two readings).
  auto h = m.submitToAnswer->snapshot();
  o << ",\"latency\":{\"le_us\":[";
  for (std::size_t i = 0; i < m.submitToAnswer->bounds().size(); ++i) {
    o << (i ? "," : "") << std::uint64_t(m.submitToAnswer->bounds()[i]);
  }
  o << "],\"cumulative\":[";
  for (std::size_t i = 0; i < h.cumulative.size(); ++i) o << (i ? "," : "") << h.cumulative[i];
  o << "],\"count\":" << h.count << "}}\n";
  return o.str();
}

void addCoordinatorRoutes(AdminHttpServer& server, const kj::Executor& loop, Coordinator& coordinator,
                          KeelClient& client, const GroupCommitLog::Stats& wal, std::uint16_t nodeId, bool actions,
                          EmbeddedMetrics embeddedMetrics) {
  // Every read of the loop's state goes through it: bounded in time (common/admin_plane.h).
  auto calls = std::make_shared<LoopCaller>(loop);
  server.route("GET", "/", [](const HttpRequest&) {
    auto page = HttpResponse::text(200, "text/html; charset=utf-8", kConsoleHtml);
    // The page's own inline script and style, calls to this plane only, no
    // framing by another site.
    page.headers.emplace_back("Content-Security-Policy",
                              "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                              "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                              "form-action 'self'");
    return page;
  });
  // Browsers ask for it on their own: nothing, rather than a 404 in the page's console.
  server.route("GET", "/favicon.ico", [](const HttpRequest&) { return HttpResponse::text(204, "image/x-icon", ""); });
  server.route("GET", "/api/live", [calls, &coordinator, nodeId, actions](const HttpRequest&) {
    return guarded([&] {
      auto g = calls->call([&coordinator]() { return coordinator.gauges(); });
      return HttpResponse::json(200, liveJson(coordinator.metrics(), g, nodeId, actions));
    });
  });
  server.route("GET", "/api/participants", [calls, &coordinator](const HttpRequest&) {
    return guarded([&] {
      auto views = calls->call([&coordinator]() { return coordinator.participantViews(); });
      std::ostringstream o;
      o << "{\"participants\":[";
      for (std::size_t i = 0; i < views.size(); ++i) {
        const auto& v = views[i];
        auto* pm = coordinator.metrics().participant(v.name);
        o << (i ? "," : "") << "{\"name\":\"" << jsonEscape(v.name) << "\",\"address\":\"" << jsonEscape(v.address)
          << "\",\"up\":" << (v.up ? "true" : "false") << ",\"down_since_us\":" << v.downSinceUs
          << ",\"waiting\":" << v.waiting << ",\"calls\":" << (pm ? pm->callLatency->snapshot().count : 0)
          << ",\"failures\":" << (pm ? pm->callFailures.value() : 0) << "}";
      }
      o << "]}\n";
      return HttpResponse::json(200, o.str());
    });
  });
  server.route("POST", "/api/retry", [calls, &coordinator, actions](const HttpRequest& r) {
    return guarded([&] {
      if (auto refused = refuseAction(r, actions)) return *refused;
      std::uint64_t seq = seqParam(r);
      std::string who = actor(r), why = reasonParam(r);
      auto done = calls->call([&coordinator, seq, who, why]() { return coordinator.retryAudited(seq, who, why); });
      std::ostringstream o;
      o << "{\"done\":" << (done.done ? "true" : "false") << ",\"woken\":" << done.woken << ",\"reason\":\""
        << jsonEscape(done.reason) << "\"}\n";
      return HttpResponse::json(done.done ? 200 : 409, o.str());
    });
  });
  server.route("POST", "/api/resolve", [calls, &client, actions](const HttpRequest& r) {
    return guarded([&] {
      if (auto refused = refuseAction(r, actions)) return *refused;
      std::uint64_t seq = seqParam(r);
      auto decision = r.param("decision").value_or("");
      if (decision != "commit" && decision != "rollback") throw BadParam{"decision must be commit or rollback"};
      auto override = r.param("override").value_or("false");
      if (override != "true" && override != "false") throw BadParam{"override must be true or false"};
      std::string who = actor(r), why = reasonParam(r);
      // The RPC object's resolve, as keelctl resolve calls it: the audit
      // entry is durable before the decision is acted on.
      auto resp = calls->call([&client, seq, decision, who, why, override]() {
        auto req = client.capability().resolveRequest();
        req.setSeq(seq);
        req.setCommit(decision == "commit");
        req.setWho(who);
        req.setWhy(why);
        req.setOverride(override == "true");
        return req.send().then([](auto res) { return std::make_pair(bool(res.getDone()), std::string(res.getReason().cStr())); });
      });
      std::ostringstream o;
      o << "{\"done\":" << (resp.first ? "true" : "false") << ",\"reason\":\"" << jsonEscape(resp.second) << "\"}\n";
      return HttpResponse::json(resp.first ? 200 : 409, o.str());
    });
  });
  server.route("GET", "/metrics", [calls, &coordinator, &wal, nodeId, embeddedMetrics](const HttpRequest&) {
    return guarded([&] {
      // One call into the loop counts the coordinator's gauges and the
      // embedded participants'; the text is rendered here.
      auto both = calls->call([&coordinator, &embeddedMetrics]() {
        return std::make_pair(coordinator.gauges(), embeddedMetrics ? embeddedMetrics() : nullptr);
      });
      return HttpResponse::text(200, kPrometheusText,
                                renderCoordinatorMetrics(coordinator.metrics(), both.first, wal, nodeId) +
                                    (both.second ? both.second() : std::string()));
    });
  });
  server.route("GET", "/api/info", [calls, &client](const HttpRequest&) {
    return guarded([&] {
      auto info = calls->call([&client]() { return client.info(); });
      std::ostringstream out;
      ctl::printInfo(out, info, true);
      return jsonFrom(out);
    });
  });
  server.route("GET", "/api/stats", [calls, &client](const HttpRequest&) {
    return guarded([&] {
      auto s = calls->call([&client]() { return client.stats(); });
      std::ostringstream out;
      ctl::printStats(out, s, true);
      return jsonFrom(out);
    });
  });
  server.route("GET", "/api/list", [calls, &client](const HttpRequest& r) {
    return guarded([&] {
      std::uint32_t limit = limitParam(r, 100, 10000);
      auto lists = calls->call([&client, limit]() {
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
  server.route("GET", "/api/query", [calls, &client](const HttpRequest& r) {
    return guarded([&] {
      auto requestId = r.param("request_id");
      if (r.param("seq").has_value() == requestId.has_value()) {
        throw BadParam{"give exactly one of seq=S (NODE:COUNTER or the number) and request_id=ID"};
      }
      std::optional<QueryResult> found;
      std::string what;
      if (!requestId) {
        std::uint64_t seq = seqParam(r);
        what = "no interaction " + keel::seqText(seq);
        found = calls->call([&client, seq]() { return client.query(seq); });
      } else {
        if (requestId->empty() || requestId->size() > 256) {
          throw BadParam{"request_id must be 1 to 256 characters"};
        }
        what = "no interaction has request id " + *requestId;
        found = calls->call([&client, id = *requestId]() { return client.queryRequest(id); });
      }
      if (!found) return HttpResponse::error(404, what);
      std::ostringstream out;
      ctl::printQuery(out, *found, true);
      return jsonFrom(out);
    });
  });
  // An embedded participant's books and unfinished branches, as its own
  // plane's /api/branches would give them (it has none): asked through
  // the operator view the coordinator holds of it.
  server.route("GET", "/api/branches", [calls, &coordinator](const HttpRequest& r) {
    return guarded([&] {
      auto name = r.param("participant");
      if (!name || name->empty() || name->size() > 64) {
        throw BadParam{"give participant=NAME, an embedded participant of this coordinator"};
      }
      auto both = calls->call([&coordinator, n = *name]() {
        auto view = coordinator.embeddedOperatorView(n);
        using Both = std::optional<std::pair<AgentSnapshot, std::vector<UnfinishedBranch>>>;
        if (!view) return kj::Promise<Both>(Both());
        auto agent = kj::heap<AgentClient>(kj::mv(*view));
        auto books = agent->booksAndUnfinished();
        return books.then([](auto both) { return Both(std::move(both)); }).attach(kj::mv(agent));
      });
      if (!both) {
        return HttpResponse::error(404, "no embedded participant " + *name +
                                            " here (a keel-agent serves /api/branches on its own admin plane)");
      }
      std::ostringstream out;
      ctl::printBranches(out, both->first, both->second, true);
      return jsonFrom(out);
    });
  });
  server.route("GET", "/api/audit", [calls, &client](const HttpRequest& r) {
    return guarded([&] {
      std::uint32_t limit = limitParam(r, 100, 10000);
      auto entries = calls->call([&client, limit]() { return client.audit(limit); });
      std::ostringstream out;
      ctl::printAudit(out, entries, true);
      return jsonFrom(out);
    });
  });
}

}  // namespace keel
