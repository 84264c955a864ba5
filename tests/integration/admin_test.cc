// The admin plane (coordinator/admin.h, participant/admin.h): /metrics
// counts what happened, the JSON API answers exactly what keelctl --json
// prints, bad input is refused with the reason, and a taken admin address
// refuses the start before anything is touched.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <regex>
#include <thread>

#include "cluster_fixture.h"
#include "common/strict_json.h"
#include "tools/bank.h"
#include "tools/free_port.h"

namespace keel::test {
namespace {

struct HttpAnswer {
  int status = 0;
  std::string headers;
  std::string body;
};

// One request on its own connection (Connection: close), read to EOF.
HttpAnswer httpRequest(unsigned port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(std::uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    throw std::runtime_error("admin plane on port " + std::to_string(port) + " refused the connection");
  }
  std::size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += std::size_t(n);
  }
  std::string raw;
  char buf[65536];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) raw.append(buf, std::size_t(n));
  ::close(fd);
  HttpAnswer r;
  auto end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) throw std::runtime_error("not HTTP: " + raw);
  r.status = std::stoi(raw.substr(9, 3));
  r.headers = raw.substr(0, end);
  r.body = raw.substr(end + 4);
  return r;
}

HttpAnswer get(unsigned port, const std::string& target) {
  return httpRequest(port, "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
}

// The value of the sample `name` (with its labels as written), or -1.
double sampleOf(const std::string& text, const std::string& name) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 && line[name.size()] == ' ') {
      return std::stod(line.substr(name.size() + 1));
    }
  }
  return -1;
}

class AdminTest : public ClusterTest {
 protected:
  ClusterOptions clusterOptions() override {
    coordPort_ = pickFreePort();
    agentPort_ = pickFreePort();
    auto o = ClusterTest::clusterOptions();
    o.coordinatorTailToml = "[admin]\nlisten = \"127.0.0.1:" + std::to_string(coordPort_) + "\"\n";
    // Explicit either way: the counts below differ (redo mode, the
    // default, checkpoints).
    o.coordinatorExtraToml += redoMode() ? "redo = true\n" : "redo = false\n";
    o.agentExtraArgs.push_back(redoMode() ? "--redo" : "--no-redo");
    return o;
  }
  virtual bool redoMode() const { return false; }
  void beforeStart(LocalCluster& c) override {
    c.setAgentArgs("bank-a", {"--admin-listen", "127.0.0.1:" + std::to_string(agentPort_)});
  }

  std::string keelctl(const std::string& line) {
    return runStdout(binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " " + line + " --json").output;
  }

  unsigned coordPort_ = 0, agentPort_ = 0;
};

TEST_F(AdminTest, MetricsCountWhatHappenedInPrometheusText) {
  ASSERT_NO_FATAL_FAILURE(transfersThenAnOverdraw(5));

  // The rolled-back one is answered once its rollback record is durable; it
  // is finished once bank-b confirmed too.
  HttpAnswer m;
  EXPECT_TRUE(eventually([&] {
    m = get(coordPort_, "/metrics");
    return sampleOf(m.body, "keel_interactions_finished_total{state=\"rolled_back\"}") == 1 &&
           sampleOf(m.body, "keel_interactions_live") == 0;
  }));
  ASSERT_EQ(m.status, 200) << m.body;
  EXPECT_NE(m.headers.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << m.headers;
  // The two opens are one-phase, the transfers two-phase; all answered.
  EXPECT_EQ(sampleOf(m.body, "keel_answers_total{outcome=\"committed\"}"), 7);
  EXPECT_EQ(sampleOf(m.body, "keel_answers_total{outcome=\"rolled_back\"}"), 1) << m.body;
  EXPECT_EQ(sampleOf(m.body, "keel_interactions_finished_total{state=\"committed\"}"), 7);
  EXPECT_EQ(sampleOf(m.body, "keel_interactions_finished_total{state=\"rolled_back\"}"), 1);
  EXPECT_EQ(sampleOf(m.body, "keel_submit_to_answer_seconds_count"), 8);
  EXPECT_EQ(sampleOf(m.body, "keel_prepare_seconds_count"), 6);        // the two-phase ones
  EXPECT_EQ(sampleOf(m.body, "keel_decision_write_seconds_count"), 5);  // the committed transfers
  EXPECT_EQ(sampleOf(m.body, "keel_phase2_seconds_count"), 5);
  EXPECT_EQ(sampleOf(m.body, "keel_inconsistency_window_seconds_count"), 1);  // the one that failed
  EXPECT_GE(sampleOf(m.body, "keel_rollback_attempts_total"), 1);
  EXPECT_EQ(sampleOf(m.body, "keel_in_doubt"), 0);
  EXPECT_EQ(sampleOf(m.body, "keel_participant_up{participant=\"bank-a\"}"), 1);
  EXPECT_EQ(sampleOf(m.body, "keel_participant_up{participant=\"bank-b\"}"), 1);
  EXPECT_GE(sampleOf(m.body, "keel_participant_call_seconds_count{participant=\"bank-b\"}"), 6);
  EXPECT_GE(sampleOf(m.body, "keel_wal_commits_total"), 1);
  EXPECT_GE(sampleOf(m.body, "keel_wal_group_size_count"), 1);
  EXPECT_GT(sampleOf(m.body, "keel_wal_map_bytes"), 0);
  // What is in use (the free pages LMDB can reuse left out) is at most the
  // high-water mark, and something is.
  EXPECT_GT(sampleOf(m.body, "keel_wal_high_water_bytes"), 0);
  EXPECT_GT(sampleOf(m.body, "keel_wal_used_bytes"), 0);
  EXPECT_LE(sampleOf(m.body, "keel_wal_used_bytes"), sampleOf(m.body, "keel_wal_high_water_bytes"));
  EXPECT_EQ(sampleOf(m.body, "keel_wal_checkpoint_seconds_count"), 0);  // not in redo mode: no checkpoints
  EXPECT_EQ(sampleOf(m.body, "keel_recovery_sweep_done"), 1);
  // Agents in processes of their own: their families are on their planes.
  EXPECT_EQ(m.body.find("keel_agent_"), std::string::npos);
  // No per-interaction label anywhere; every sample line well formed.
  EXPECT_EQ(m.body.find("seq="), std::string::npos);
  EXPECT_EQ(m.body.find("request_id="), std::string::npos);
  std::regex sample(R"(^[a-z_][a-z0-9_]*(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? [-+0-9.eInf]+$)");
  std::istringstream lines(m.body);
  std::string line;
  int samples = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("# ", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
    ++samples;
  }
  EXPECT_GT(samples, 100);

  // The agent's: bank-a voted yes five times and no once, committed five.
  auto a = get(agentPort_, "/metrics");
  ASSERT_EQ(a.status, 200) << a.body;
  EXPECT_EQ(sampleOf(a.body, "keel_agent_info{agent=\"bank-a\"}"), 1);
  EXPECT_EQ(sampleOf(a.body, "keel_agent_votes_total{vote=\"yes\"}"), 5) << a.body;
  EXPECT_EQ(sampleOf(a.body, "keel_agent_votes_total{vote=\"no\"}"), 1);
  EXPECT_EQ(sampleOf(a.body, "keel_agent_branch_outcomes_total{call=\"commit\",outcome=\"committed\"}"), 5);
  EXPECT_EQ(sampleOf(a.body, "keel_agent_branch_outcomes_total{call=\"one_phase\",outcome=\"committed\"}"), 1);
  EXPECT_EQ(sampleOf(a.body, "keel_agent_branches{state=\"prepared\"}"), 0);
  EXPECT_GT(sampleOf(a.body, "keel_agent_log_used_bytes"), 0);
  EXPECT_LE(sampleOf(a.body, "keel_agent_log_used_bytes"), sampleOf(a.body, "keel_agent_log_high_water_bytes"));
  EXPECT_GE(sampleOf(a.body, "keel_agent_log_commits_total"), 1);
  EXPECT_EQ(sampleOf(a.body, "keel_agent_log_checkpoint_seconds_count"), 0);
  EXPECT_EQ(sampleOf(a.body, "keel_agent_host_up"), 1);
}

// Embedded participants ([participants] NAME = "embedded:FILE") have no
// admin plane of their own: the coordinator's /metrics carries their
// keel_agent_* families, every sample labelled agent="NAME", each family
// declared once.
class EmbeddedAdminTest : public ClusterTest {
 protected:
  ClusterOptions clusterOptions() override {
    coordPort_ = pickFreePort();
    auto o = ClusterTest::clusterOptions();
    o.embedded = {"bank-a", "bank-b"};
    o.coordinatorTailToml = "[admin]\nlisten = \"127.0.0.1:" + std::to_string(coordPort_) + "\"\n";
    return o;
  }
  unsigned coordPort_ = 0;
};

TEST_F(EmbeddedAdminTest, TheCoordinatorsMetricsCarryEachEmbeddedParticipants) {
  ASSERT_NO_FATAL_FAILURE(transfersThenAnOverdraw(3));
  HttpAnswer m;
  EXPECT_TRUE(eventually([&] {
    m = get(coordPort_, "/metrics");
    return sampleOf(m.body, "keel_agent_branch_outcomes_total{agent=\"bank-b\",call=\"commit\",outcome=\"committed\"}") ==
               3 &&
           sampleOf(m.body, "keel_interactions_live") == 0;
  })) << m.body;
  ASSERT_EQ(m.status, 200) << m.body;
  for (const char* a : {"bank-a", "bank-b"}) {
    std::string l = std::string("{agent=\"") + a + "\"";
    EXPECT_EQ(sampleOf(m.body, "keel_agent_info" + l + "}"), 1) << a;
    EXPECT_EQ(sampleOf(m.body, "keel_agent_branch_outcomes_total" + l + ",call=\"one_phase\",outcome=\"committed\"}"), 1)
        << a;
    EXPECT_GE(sampleOf(m.body, "keel_agent_log_commits_total" + l + "}"), 1) << a;
    EXPECT_GE(sampleOf(m.body, "keel_agent_call_seconds_count" + l + ",call=\"prepare\"}"), 1) << a;
    EXPECT_EQ(sampleOf(m.body, "keel_agent_branches" + l + ",state=\"prepared\"}"), 0) << a;
    EXPECT_GT(sampleOf(m.body, "keel_agent_log_map_bytes" + l + "}"), 0) << a;
    EXPECT_EQ(sampleOf(m.body, "keel_agent_host_up" + l + "}"), 1) << a;
  }
  EXPECT_EQ(sampleOf(m.body, "keel_agent_votes_total{agent=\"bank-a\",vote=\"yes\"}"), 3) << m.body;
  EXPECT_EQ(sampleOf(m.body, "keel_agent_votes_total{agent=\"bank-a\",vote=\"no\"}"), 1);
  EXPECT_EQ(sampleOf(m.body, "keel_agent_votes_total{agent=\"bank-b\",vote=\"yes\"}"), 4);
  // The coordinator's own families are all still there, and no family is
  // declared twice (a scraper refuses the whole page for that).
  EXPECT_EQ(sampleOf(m.body, "keel_answers_total{outcome=\"committed\"}"), 5);
  std::map<std::string, int> types;
  std::istringstream lines(m.body);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("# TYPE ", 0) == 0) ++types[line.substr(7, line.find(' ', 7) - 7)];
  }
  EXPECT_EQ(types["keel_agent_votes_total"], 1);
  EXPECT_EQ(types["keel_agent_log_commit_seconds"], 1);
  for (const auto& [family, n] : types) EXPECT_EQ(n, 1) << family;
}

// An embedded participant has no admin plane: the coordinator's
// /api/branches?participant=NAME gives what its own would, the same JSON
// as keelctl --json branches.
TEST_F(EmbeddedAdminTest, TheCoordinatorServesEachEmbeddedParticipantsBranches) {
  ASSERT_NO_FATAL_FAILURE(transfersThenAnOverdraw(3));
  HttpAnswer b;
  EXPECT_TRUE(eventually([&] {
    b = get(coordPort_, "/api/branches?participant=bank-b");
    return b.status == 200 && b.body.find("\"total\":30") != std::string::npos;  // phase 2 after the answers
  })) << b.status << " " << b.body;
  auto doc = JsonReader::parse(b.body);
  EXPECT_EQ(doc["agent"].str(), "bank-b");
  EXPECT_EQ(doc["unfinished"].array().size(), 0u);
  auto a = JsonReader::parse(get(coordPort_, "/api/branches?participant=bank-a").body);
  EXPECT_EQ(a["agent"].str(), "bank-a");
  EXPECT_EQ(a["total"].number(), 970);
  auto unknown = get(coordPort_, "/api/branches?participant=bank-z");
  EXPECT_EQ(unknown.status, 404) << unknown.body;
  EXPECT_NE(unknown.body.find("no embedded participant bank-z here"), std::string::npos) << unknown.body;
  EXPECT_EQ(get(coordPort_, "/api/branches").status, 400);
}

// Redo mode (docs/operations.md, "Redo log"): every checkpoint is counted
// and timed on both admin planes, the stall a queued job can meet.
class RedoAdminTest : public AdminTest {
 protected:
  bool redoMode() const override { return true; }
};

TEST_F(RedoAdminTest, CheckpointsAreCountedAndTimedOnBothAdminPlanes) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  for (int i = 0; i < 3; ++i) {
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
    ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  }
  // A checkpoint falls due 10 ms after a group when the writer is idle.
  HttpAnswer m, a;
  EXPECT_TRUE(eventually([&] {
    m = get(coordPort_, "/metrics");
    a = get(agentPort_, "/metrics");
    return sampleOf(m.body, "keel_wal_checkpoint_seconds_count") >= 1 &&
           sampleOf(a.body, "keel_agent_log_checkpoint_seconds_count") >= 1;
  })) << m.body << a.body;
  EXPECT_GT(sampleOf(m.body, "keel_wal_checkpoint_seconds_sum"), 0);
  EXPECT_GT(sampleOf(a.body, "keel_agent_log_checkpoint_seconds_sum"), 0);
}

// A stuck event loop (here a failpoint's delay, which blocks the loop's
// thread, 10 s) does not hold the admin plane: /metrics answers 503 once the
// call's limit (5 s) has passed, a request meanwhile is refused at once
// instead of queueing, and the plane answers again once the loop does.
TEST_F(AdminTest, AStuckEventLoopGets503sInsteadOfAHungAdminPlane) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  cluster_->stopCoordinator();
  cluster_->startCoordinator("coord.after_seq_assigned=1*delay(10000)");
  reconnect();
  auto blocked = client_->submit(transferOps("bank-a:alice", "bank-b:bob", 10));
  // Send the call, then give the coordinator ample time to be inside the
  // delay (it logs nothing there); 10 s leaves 4 s after the first 503.
  for (int i = 0; i < 20; ++i) io_.waitScope.poll();
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  auto first = get(coordPort_, "/metrics");
  EXPECT_EQ(first.status, 503) << first.body;
  EXPECT_NE(first.body.find("did not answer within 5000 ms"), std::string::npos) << first.body;
  auto second = get(coordPort_, "/api/live");
  EXPECT_EQ(second.status, 503) << second.body;
  EXPECT_NE(second.body.find("has not answered an earlier call for"), std::string::npos) << second.body;
  // The delay ends: the transfer is answered (rolled back: 10 s is past its
  // calls' deadline) and the plane answers again, counting that answer.
  auto o = blocked.wait(io_.waitScope);
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  HttpAnswer again;
  EXPECT_TRUE(eventually([&] {
    again = get(coordPort_, "/metrics");
    return again.status == 200;
  })) << again.body;
  EXPECT_EQ(sampleOf(again.body, "keel_answers_total{outcome=\"rolled_back\"}"), 1) << again.body;
}

TEST_F(AdminTest, AParticipantThatStoppedAnsweringShowsDown) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  cluster_->stopAgent("bank-b");
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  auto m = get(coordPort_, "/metrics");
  EXPECT_EQ(sampleOf(m.body, "keel_participant_up{participant=\"bank-b\"}"), 0) << m.body;
  EXPECT_GE(sampleOf(m.body, "keel_participant_call_failures_total{participant=\"bank-b\"}"), 1);
  EXPECT_EQ(sampleOf(m.body, "keel_participant_up{participant=\"bank-a\"}"), 1);
  // Its rollback waits for bank-b: in the queue, in doubt, until bank-b is
  // back; then up again and the interaction finished.
  EXPECT_EQ(sampleOf(m.body, "keel_rollback_queue"), 1);
  EXPECT_EQ(sampleOf(m.body, "keel_in_doubt"), 1);
  EXPECT_EQ(sampleOf(m.body, "keel_interactions_finished_total{state=\"rolled_back\"}"), 0);
  cluster_->startAgent("bank-b");
  EXPECT_TRUE(eventually([&] {
    m = get(coordPort_, "/metrics");
    return sampleOf(m.body, "keel_interactions_finished_total{state=\"rolled_back\"}") == 1 &&
           sampleOf(m.body, "keel_participant_up{participant=\"bank-b\"}") == 1 &&
           sampleOf(m.body, "keel_rollback_queue") == 0 && sampleOf(m.body, "keel_in_doubt") == 0;
  })) << m.body;
}

TEST_F(AdminTest, TheJsonApiAnswersWhatKeelctlPrints) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  SubmitRequest req;
  req.ops = transferOps("bank-a:alice", "bank-b:bob", 10);
  req.requestId = newRequestId();
  auto o = client_->submit(req).wait(io_.waitScope);
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;

  // Phase 2 goes on after the answer: compare once it is finished.
  ASSERT_TRUE(eventually([&] {
    auto q = query(o.seq);
    return q && q->interaction.state == InteractionRecord::State::Committed;
  }));
  std::string s = seqText(o.seq);
  for (auto [api, line] : std::vector<std::pair<std::string, std::string>>{
           {"/api/query?seq=" + s, "query " + s},
           {"/api/query?seq=" + std::to_string(o.seq), "query " + s},
           {"/api/query?request_id=" + req.requestId, "query --request-id " + req.requestId},
           {"/api/info", "info"},
           {"/api/stats", "stats"},
           {"/api/list?limit=10", "list --limit 10"},
           {"/api/audit", "audit"}}) {
    auto r = get(coordPort_, api);
    EXPECT_EQ(r.status, 200) << api << ": " << r.body;
    EXPECT_NE(r.headers.find("Content-Type: application/json"), std::string::npos) << r.headers;
    EXPECT_EQ(r.body, keelctl(line)) << api;
    EXPECT_NO_THROW(JsonReader::parse(r.body)) << api << ": " << r.body;
  }
  auto q = JsonReader::parse(get(coordPort_, "/api/query?seq=" + s).body);
  EXPECT_EQ(q["interaction"]["request_id"].str(), req.requestId);

  // The agent's books and branches: keelctl branches --agent.
  auto b = get(agentPort_, "/api/branches");
  EXPECT_EQ(b.status, 200) << b.body;
  EXPECT_EQ(b.body, runStdout(binDir() + "/keelctl branches --agent " + cluster_->agentAddress("bank-a") + " --json")
                        .output);
  EXPECT_NE(b.body.find("\"total\":990"), std::string::npos) << b.body;
}

TEST_F(AdminTest, BadRequestsAreRefusedWithTheReason) {
  auto expectError = [&](unsigned port, const std::string& target, int status, const std::string& part) {
    auto r = get(port, target);
    EXPECT_EQ(r.status, status) << target << ": " << r.body;
    Json doc;
    ASSERT_NO_THROW(doc = JsonReader::parse(r.body)) << target << ": " << r.body;
    EXPECT_EQ(doc["status"].whole(), std::uint64_t(status));
    EXPECT_NE(doc["error"].str().find(part), std::string::npos) << target << ": " << r.body;
  };
  expectError(coordPort_, "/api/query", 400, "give exactly one of seq=S");
  expectError(coordPort_, "/api/query?seq=1&request_id=x", 400, "give exactly one of seq=S");
  expectError(coordPort_, "/api/query?seq=abc", 400, "seq 'abc'");
  expectError(coordPort_, "/api/query?seq=0", 400, "seq '0'");
  expectError(coordPort_, "/api/query?request_id=", 400, "request_id must be 1 to 256 characters");
  expectError(coordPort_, "/api/query?seq=1:999", 404, "no interaction 1:999");
  expectError(coordPort_, "/api/query?request_id=nobody", 404, "no interaction has request id nobody");
  expectError(coordPort_, "/api/list?limit=0", 400, "limit 0 is out of range");
  expectError(coordPort_, "/api/audit?limit=ten", 400, "limit 'ten' is not a whole number");
  expectError(coordPort_, "/api/list?limit=10001", 400, "out of range");
  expectError(coordPort_, "/nothing/here", 404, "no such path: /nothing/here");
  expectError(agentPort_, "/api/query", 404, "no such path");
  expectError(coordPort_, "/api/info?x=%zz", 400, "");
  expectError(coordPort_, "/api/info?" + std::string(5000, 'a'), 414, "");
  auto post = httpRequest(coordPort_, "POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(post.status, 405);
  EXPECT_NE(post.headers.find("Allow: GET"), std::string::npos) << post.headers;
  // A name other than an address or localhost in Host: refused (DNS rebinding).
  auto rebound = httpRequest(coordPort_, "GET /api/info HTTP/1.1\r\nHost: evil.example:" + std::to_string(coordPort_) +
                                             "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(rebound.status, 403) << rebound.body;
  EXPECT_NE(rebound.body.find("DNS rebinding"), std::string::npos) << rebound.body;
  auto local = httpRequest(coordPort_, "GET /api/info HTTP/1.1\r\nHost: localhost:" + std::to_string(coordPort_) +
                                           "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(local.status, 200) << local.body;
  // Operator actions are off unless [admin] actions = true.
  auto act = httpRequest(coordPort_, "POST /api/retry?seq=1:1&who=x&why=y HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Keel-Action: 1\r\n"
                                     "Content-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(act.status, 403) << act.body;
  EXPECT_NE(act.body.find("[admin] actions = true"), std::string::npos) << act.body;
  // Still serving.
  EXPECT_EQ(get(coordPort_, "/api/info").status, 200);
}

class AdminActionsTest : public AdminTest {
 protected:
  // Drivers that wait a minute: only the retry finishes the interaction.
  std::string coordinatorToml() override { return kSlowDriversToml; }
  ClusterOptions clusterOptions() override {
    auto o = AdminTest::clusterOptions();
    o.agentInDoubtQueryMs = 0;
    o.coordinatorTailToml += "actions = true\n";
    return o;
  }
  HttpAnswer post(const std::string& target, const std::string& headers) {
    return httpRequest(coordPort_, "POST " + target + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(coordPort_) +
                                       "\r\n" + headers + "Content-Length: 0\r\nConnection: close\r\n\r\n");
  }
};

TEST_F(AdminActionsTest, ActionsNeedTheConsolesHeaderItsOriginWhoAndWhy) {
  auto seq = stuckCommit(/*restart=*/true);  // in doubt until a driver retries
  std::string s = seqText(seq);
  const std::string ok = "X-Keel-Action: 1\r\n";
  auto r = post("/api/retry?seq=" + s + "&who=ann&why=test", "");
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_NE(r.body.find("X-Keel-Action"), std::string::npos) << r.body;
  r = post("/api/retry?seq=" + s + "&who=ann&why=test", ok + "Origin: http://evil.example\r\n");
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_NE(r.body.find("origin http://evil.example may not act"), std::string::npos) << r.body;
  r = post("/api/retry?seq=" + s + "&who=ann", ok);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("why=REASON is missing"), std::string::npos) << r.body;
  r = post("/api/retry?seq=" + s + "&why=x", ok);
  EXPECT_EQ(r.status, 400) << r.body;
  r = post("/api/resolve?seq=" + s + "&who=ann&why=x&decision=maybe", ok);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("decision must be commit or rollback"), std::string::npos) << r.body;
  r = post("/api/retry?seq=1:999999&who=ann&why=x", ok);
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_NE(r.body.find("not unfinished here"), std::string::npos) << r.body;
  // Refused actions wrote nothing.
  EXPECT_EQ(JsonReader::parse(get(coordPort_, "/api/audit").body)["entries"].array().size(), 0u);

  // The console's request, from its own origin: audited, then done.
  r = post("/api/retry?seq=" + s + "&who=ann&why=bank-b%20is%20back",
           ok + "Origin: http://127.0.0.1:" + std::to_string(coordPort_) + "\r\n");
  EXPECT_EQ(r.status, 200) << r.body;
  auto entries = JsonReader::parse(get(coordPort_, "/api/audit").body)["entries"].array();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0]["action"].str(), "retry");
  EXPECT_EQ(entries[0]["why"].str(), "bank-b is back");
  EXPECT_EQ(entries[0]["who"].str().rfind("ann (console at 127.0.0.1:", 0), 0u) << entries[0]["who"].str();
  // Resolving a committing interaction is refused as keelctl's is, and said so.
  r = post("/api/resolve?seq=" + s + "&who=ann&why=x&decision=rollback", ok);
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_NE(r.body.find("\"done\":false"), std::string::npos) << r.body;
  EXPECT_TRUE(eventually([&] {
    auto q = query(seq);
    return q && q->interaction.state == InteractionRecord::State::Committed;
  }));
}

TEST_F(AdminTest, ATakenAdminAddressRefusesTheStartBeforeAnythingIsTouched) {
  // A listener of our own on a port, then a coordinator and an agent asked
  // to put their admin planes there, each with a data directory to create.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(std::uint16_t(pickFreePort()));
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  std::string taken = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  std::string fresh = dir_ + "/fresh-coordinator";
  auto r = run(binDir() + "/keel-coordinator --config " + dir_ + "/coordinator.toml --listen 127.0.0.1:0 --data-dir " +
               fresh + " --init --admin-listen " + taken);
  EXPECT_EQ(r.exitCode, 1) << r.output;
  EXPECT_NE(r.output.find("admin_listen " + taken), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("in use"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(fresh)) << "the refused start created its data directory";

  std::string freshAgent = dir_ + "/fresh-agent";
  r = run(binDir() + "/keel-agent --name bank-z --listen 127.0.0.1:0 --insecure --data-dir " + freshAgent +
          " --init --admin-listen " + taken);
  EXPECT_EQ(r.exitCode, 1) << r.output;
  EXPECT_NE(r.output.find("in use"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(freshAgent));
  ::close(fd);

  // A non-loopback admin address without [admin] remote = true: a config error.
  r = run(binDir() + "/keel-agent --name bank-z --listen 127.0.0.1:0 --insecure --data-dir " + freshAgent +
          " --init --admin-listen 0.0.0.0:9400");
  EXPECT_EQ(r.exitCode, 2) << r.output;
  EXPECT_NE(r.output.find("not a loopback address"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(freshAgent));
}

}  // namespace
}  // namespace keel::test
