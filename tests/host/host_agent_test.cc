// The host adapter end to end (label host): a coordinator, a ledger agent
// (bank-a) and a host agent (card) in front of keel-host, all real
// processes on loopback. Every test ends with the money conserved and no
// reservation left open on the host, whatever failed on the way.

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "tests/integration/cluster_fixture.h"
#include "common/strict_json.h"
#include "common/wire.h"
#include "tools/host_process.h"

namespace keel::test {
namespace {

constexpr std::int64_t kHostAccounts = 10, kHostBalance = 1000;

class HostAgentTest : public ClusterTest {
 protected:
  // A prepare deadline above the agent's try_budget_ms (1500 ms): the
  // agent's own NO, with its reason, reaches the coordinator.
  std::string coordinatorToml() override { return "call_timeout_ms = 3000\nretry_initial_ms = 20\nretry_max_ms = 200\n"; }

  ClusterOptions clusterOptions() override {
    auto o = ClusterTest::clusterOptions();
    o.agents = {"bank-a", "card"};
    return o;
  }

  // keel-host's flags for its first start.
  virtual std::vector<std::string> hostArgs() { return {}; }
  // The card agent's host flags; tests may change the operations file.
  virtual std::vector<std::string> cardArgs() {
    return {"--adapter", "host", "--host", host_->url(), "--host-operations", writeHostOperations(dir_)};
  }

  void beforeStart(LocalCluster& c) override {
    HostOptions ho;
    ho.binDir = binDir();
    ho.dir = dir_;
    ho.accounts = kHostAccounts;
    ho.balance = kHostBalance;
    host_ = std::make_unique<HostProcess>(ho);
    host_->start(hostArgs());
    c.setAgentArgs("card", cardArgs());
  }

  void SetUp() override {
    ClusterTest::SetUp();
    open("bank-a", "alice", 1000);
  }

  void TearDown() override {
    if (host_) host_->stop();
    ClusterTest::TearDown();
  }

  // Ledger + host money: what every test must end with.
  std::int64_t totalMoney() { return account("bank-a", "alice").first + host_->books().total(); }
  static constexpr std::int64_t kTotal = 1000 + kHostAccounts * kHostBalance;

  // Waits until the host has no open try, no hold, and both agents have no
  // unfinished branch; then checks the money.
  void expectSettled(std::chrono::milliseconds timeout = std::chrono::seconds(15)) {
    bool settled = eventually(
        [&] {
          auto b = host_->books();
          return b.open == 0 && b.held() == 0 && unfinishedAt("card").empty() && unfinishedAt("bank-a").empty();
        },
        timeout);
    auto b = host_->books();
    EXPECT_TRUE(settled) << "host open tries " << b.open << ", held " << b.held() << ", card unfinished "
                         << unfinishedAt("card").size();
    EXPECT_EQ(totalMoney(), kTotal);
  }

  // A finished interaction's final state, polled.
  InteractionRecord::State finalState(std::uint64_t seq) {
    InteractionRecord::State s = InteractionRecord::State::Preparing;
    eventually([&] {
      auto q = query(seq);
      if (!q) return false;
      s = q->interaction.state;
      return q->interaction.finished();
    });
    return s;
  }

  std::unique_ptr<HostProcess> host_;
};

TEST_F(HostAgentTest, TransfersBothWaysAcrossLedgerAndHost) {
  // Ledger -> host: the host's credit is pending at try, posted at confirm.
  auto o = submit(transferOps("bank-a:alice", "card:acct-1", 100));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  // Host -> ledger: a hold at try, posted at confirm.
  auto p = submit(transferOps("card:acct-0", "bank-a:alice", 40));
  ASSERT_EQ(p.outcome, ClientOutcome::Committed) << p.reason;
  EXPECT_EQ(finalState(o.seq), InteractionRecord::State::Committed);
  EXPECT_EQ(finalState(p.seq), InteractionRecord::State::Committed);
  expectSettled();
  auto b = host_->books();
  EXPECT_EQ(b.accounts["acct-1"].balance, kHostBalance + 100);
  EXPECT_EQ(b.accounts["acct-0"].balance, kHostBalance - 40);
  EXPECT_EQ(account("bank-a", "alice").first, 1000 - 100 + 40);
  // The host's keys were closed: every try confirmed.
  auto stats = JsonReader::parse(host_->get("/v1/stats").body);
  EXPECT_EQ(stats["confirmed"].number(), 2);  // one host key per transfer
  EXPECT_EQ(stats["open"].number(), 0);
}

TEST_F(HostAgentTest, TwoOperationsOnTheHostAloneCommitInOnePhase) {
  auto o = submit({Op{"card", OpKind::Debit, "acct-2", 25}, Op{"card", OpKind::Credit, "acct-3", 25}});
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  auto q = query(o.seq);
  ASSERT_TRUE(q);
  EXPECT_TRUE(q->interaction.onePhase);
  expectSettled();
  auto b = host_->books();
  EXPECT_EQ(b.accounts["acct-2"].balance, kHostBalance - 25);
  EXPECT_EQ(b.accounts["acct-3"].balance, kHostBalance + 25);
}

TEST_F(HostAgentTest, HostRefusalVotesNoWithTheHostsReason) {
  auto o = submit(transferOps("card:acct-4", "bank-a:alice", kHostBalance + 1));
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(o.reason.find("host refused"), std::string::npos) << o.reason;
  EXPECT_NE(o.reason.find("insufficient"), std::string::npos) << o.reason;
  expectSettled();
  EXPECT_EQ(host_->books().accounts["acct-4"].balance, kHostBalance);
}

TEST_F(HostAgentTest, LedgerRefusalCancelsTheHostsTry) {
  // The host's credit is posted at try; the ledger's overdraft votes NO;
  // the cancel reverses the credit.
  auto o = submit(transferOps("bank-a:alice", "card:acct-5", 5000));
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  EXPECT_EQ(finalState(o.seq), InteractionRecord::State::RolledBack);
  expectSettled();
  EXPECT_EQ(host_->books().accounts["acct-5"].balance, kHostBalance);
}

TEST_F(HostAgentTest, OperationsTheHostDoesNotServeAreRefused) {
  auto o = submit({Op{"card", OpKind::OpenAccount, "acct-new", 5}});
  EXPECT_NE(o.outcome, ClientOutcome::Committed);
  EXPECT_NE(o.reason.find("not one a host adapter maps"), std::string::npos) << o.reason;
  auto r = submit({Op{"card", OpKind::ReadBalance, "acct-1", 0}});
  EXPECT_NE(r.outcome, ClientOutcome::Committed);
  expectSettled();
}

TEST_F(HostAgentTest, HostDownDuringTryRollsBackAndTheNextTransferCommits) {
  host_->stop();
  auto o = submit(transferOps("card:acct-0", "bank-a:alice", 10));
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  EXPECT_NE(o.reason.find("did not answer"), std::string::npos) << o.reason;
  host_->start();
  bool committed = eventually([&] {
    return submit(transferOps("card:acct-0", "bank-a:alice", 10)).outcome == ClientOutcome::Committed;
  });
  EXPECT_TRUE(committed);
  expectSettled();
}

TEST_F(HostAgentTest, HostDownDuringConfirmCommitsWhenItIsBack) {
  host_->stop();
  host_->start({"--crash-at", "confirm:before"});
  // The COMMIT decision is durable before the first confirm: committed.
  auto o = submit(transferOps("card:acct-6", "bank-a:alice", 30));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  EXPECT_NE(host_->waitExit(std::chrono::seconds(5)), -1) << "the host never crashed at confirm";
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // confirms fail meanwhile
  auto q = query(o.seq);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->interaction.state, InteractionRecord::State::Committing);
  // An operator sees where the branch is with the host, and its reference.
  auto shown = run(binDir() + "/keelctl branches --agent " + cluster_->agentAddress("card"));
  EXPECT_NE(shown.output.find("host confirming (refs H-"), std::string::npos) << shown.output;
  auto js = runStdout(binDir() + "/keelctl branches --json --agent " + cluster_->agentAddress("card"));
  auto j = JsonReader::parse(js.output);
  ASSERT_EQ(j["unfinished"].array().size(), 1u) << js.output;
  EXPECT_EQ(j["unfinished"].array()[0]["host_step"].str(), "confirming");
  host_->start();
  EXPECT_EQ(finalState(o.seq), InteractionRecord::State::Committed);
  expectSettled();
  EXPECT_EQ(host_->books().accounts["acct-6"].balance, kHostBalance - 30);
}

TEST_F(HostAgentTest, HostDownDuringCancelCancelsWhenItIsBack) {
  host_->stop();
  host_->start({"--crash-at", "cancel:before"});
  auto o = submit(transferOps("bank-a:alice", "card:acct-7", 5000));  // the ledger votes NO
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  EXPECT_NE(host_->waitExit(std::chrono::seconds(5)), -1) << "the host never crashed at cancel";
  host_->start();
  EXPECT_EQ(finalState(o.seq), InteractionRecord::State::RolledBack);
  expectSettled();
  EXPECT_EQ(host_->books().accounts["acct-7"].balance, kHostBalance);
}

// The agent dies after its intent is durable, before any try leaves: the
// restarted agent cancels keys the host never saw (tombstones).
TEST_F(HostAgentTest, AgentKilledAfterIntentCancelsOnRestart) {
  cluster_->stopAgent("card");
  cluster_->startAgent("card", "host.after_intent=crash");
  auto o = submit(transferOps("card:acct-8", "bank-a:alice", 20));
  EXPECT_NE(o.outcome, ClientOutcome::Committed);
  ASSERT_TRUE(cluster_->waitAgentExit("card", std::chrono::seconds(5)));
  cluster_->startAgent("card");
  expectSettled();
  auto stats = JsonReader::parse(host_->get("/v1/stats").body);
  EXPECT_GE(stats["tombstones"].number(), 1) << "the restarted agent did not cancel the intent";
  EXPECT_EQ(host_->books().accounts["acct-8"].balance, kHostBalance);
}

// The agent dies after the host applied the try, before it recorded the
// answer: the restarted agent cancels the try it cannot know the answer to.
TEST_F(HostAgentTest, AgentKilledAfterTheHostsAnswerCancelsOnRestart) {
  cluster_->stopAgent("card");
  cluster_->startAgent("card", "host.after_tries=crash");
  auto o = submit(transferOps("card:acct-9", "bank-a:alice", 20));
  EXPECT_NE(o.outcome, ClientOutcome::Committed);
  ASSERT_TRUE(cluster_->waitAgentExit("card", std::chrono::seconds(5)));
  EXPECT_EQ(host_->books().accounts["acct-9"].held, 20) << "the try never reached the host";
  cluster_->startAgent("card");
  expectSettled();
  EXPECT_EQ(host_->books().accounts["acct-9"].balance, kHostBalance);
}

// The agent dies after the host acknowledged the confirm, before its final
// record: the restarted agent confirms again and the host answers the
// repeat from its key, posting nothing twice.
TEST_F(HostAgentTest, AgentKilledBeforeItsFinalRecordConfirmsAgainOnRestart) {
  cluster_->stopAgent("card");
  cluster_->startAgent("card", "host.before_settled=crash");
  auto o = submit(transferOps("card:acct-5", "bank-a:alice", 25));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  ASSERT_TRUE(cluster_->waitAgentExit("card", std::chrono::seconds(5)));
  auto before = JsonReader::parse(host_->get("/v1/stats").body);
  EXPECT_EQ(before["confirmed"].number(), 1) << "the confirm never reached the host";
  cluster_->startAgent("card");
  EXPECT_EQ(finalState(o.seq), InteractionRecord::State::Committed);
  expectSettled();
  auto after = JsonReader::parse(host_->get("/v1/stats").body);
  EXPECT_GT(after["calls"].number(), before["calls"].number()) << "the restarted agent did not confirm again";
  EXPECT_EQ(after["confirmed"].number(), 1);
  EXPECT_EQ(host_->books().accounts["acct-5"].balance, kHostBalance - 25);
}

// A host slower than the agent's try budget: the agent votes NO and
// cancels while the try is still out; nothing stays held.
TEST_F(HostAgentTest, HostSlowerThanTheTryBudgetLeavesNothingHeld) {
  host_->setFaults(R"({"slow_ms": 2500})");
  auto o = submit(transferOps("card:acct-1", "bank-a:alice", 15));
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  EXPECT_NE(o.reason.find("did not answer"), std::string::npos) << o.reason;
  host_->setFaults(R"({"slow_ms": 0})");
  expectSettled(std::chrono::seconds(20));
  EXPECT_EQ(host_->books().accounts["acct-1"].balance, kHostBalance);
}

// The rollback of a branch reaches the agent before its prepare (the
// coordinator gave up on a prepare still in the network): the agent keeps
// a tombstone, the late prepare votes NO, and the host never sees a try.
TEST_F(HostAgentTest, CancelOvertakingTryRefusesTheLateTry) {
  auto info = client_->info().wait(io_.waitScope);
  auto c = AgentClient::connect(io_, cluster_->agentAddress("card")).wait(io_.waitScope);
  Xid xid{makeSeq(1, 0xfffff), 1};
  {
    auto req = c->capability().rollbackRequest();
    req.setEpoch(info.epoch);
    auto l = req.initXids(1);
    l[0].setSeq(xid.seq);
    l[0].setBranch(xid.branch);
    auto r = req.send().wait(io_.waitScope);
    EXPECT_EQ(r.getOutcomes()[0], wire::BranchOutcome::ROLLED_BACK);
  }
  auto req = c->capability().prepareRequest();
  req.setEpoch(info.epoch);
  req.initXid().setSeq(xid.seq);
  req.getXid().setBranch(xid.branch);
  fillOps(req.initOperations(1), {Op{"card", OpKind::Debit, "acct-1", 5}});
  auto r = req.send().wait(io_.waitScope);
  EXPECT_EQ(r.getVote(), wire::Vote::NO);
  EXPECT_NE(std::string(r.getReason().cStr()).find("before it arrived"), std::string::npos) << r.getReason().cStr();
  auto stats = JsonReader::parse(host_->get("/v1/stats").body);
  EXPECT_EQ(stats["tried"].number(), 0) << "the late prepare reached the host";
  expectSettled();
}

// A one-phase branch the agent decided to commit while its host was down:
// a rollback asking about it later (the coordinator never heard the
// answer) gets "committed", and the host's try is confirmed, not cancelled.
TEST_F(HostAgentTest, RollbackOfAOnePhaseBranchTheAgentCommittedAnswersCommitted) {
  host_->stop();
  host_->start({"--crash-at", "confirm:before"});
  auto info = client_->info().wait(io_.waitScope);
  auto c = AgentClient::connect(io_, cluster_->agentAddress("card")).wait(io_.waitScope);
  Xid xid{makeSeq(1, 0xffff0), 0};
  auto req = c->capability().commitOnePhaseRequest();
  req.setEpoch(info.epoch);
  req.initXid().setSeq(xid.seq);
  req.getXid().setBranch(xid.branch);
  fillOps(req.initOperations(2), {Op{"card", OpKind::Debit, "acct-3", 7}, Op{"card", OpKind::Credit, "acct-4", 7}});
  auto r = req.send().wait(io_.waitScope);
  EXPECT_EQ(r.getOutcome(), wire::BranchOutcome::COMMITTED) << r.getReason().cStr();
  EXPECT_NE(host_->waitExit(std::chrono::seconds(5)), -1) << "the host never crashed at confirm";
  host_->start();
  auto rb = c->capability().rollbackRequest();
  rb.setEpoch(info.epoch);
  auto l = rb.initXids(1);
  l[0].setSeq(xid.seq);
  l[0].setBranch(xid.branch);
  auto out = rb.send().wait(io_.waitScope);
  EXPECT_EQ(out.getOutcomes()[0], wire::BranchOutcome::COMMITTED);
  expectSettled();
  auto b = host_->books();
  EXPECT_EQ(b.accounts["acct-3"].balance, kHostBalance - 7);
  EXPECT_EQ(b.accounts["acct-4"].balance, kHostBalance + 7);
}

TEST_F(HostAgentTest, RepeatedConfirmAndCancelChangeNothing) {
  auto o = submit(transferOps("card:acct-2", "bank-a:alice", 12));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  expectSettled();
  // The card branch is branch 0 or 1: confirm both keys again, then try to
  // cancel them; the books do not move.
  auto before = host_->books();
  int confirmed = 0, refused = 0;
  for (int branch = 0; branch < 2; ++branch) {
    std::string xid = Xid{o.seq, std::uint16_t(branch)}.str();
    std::string body = R"({"key":")" + xid + R"(/0","xid":")" + xid + R"(","index":0})";
    auto c = host_->post("/v1/debit/confirm", body);
    if (c.status == 200) ++confirmed;
    auto x = host_->post("/v1/debit/cancel", body);
    if (x.status == 409) ++refused;
  }
  EXPECT_EQ(confirmed, 1);
  EXPECT_EQ(refused, 1);
  auto after = host_->books();
  EXPECT_EQ(after.total(), before.total());
  EXPECT_EQ(after.accounts["acct-2"].balance, kHostBalance - 12);
}

// A host agent whose config declares debit only.
class HostDebitOnlyTest : public HostAgentTest {
 protected:
  std::vector<std::string> cardArgs() override {
    std::ofstream(dir_ + "/debit-only.toml")
        << "[host.operations.debit]\ntry = \"/v1/debit/try\"\nconfirm = \"/v1/debit/confirm\"\ncancel = \"/v1/debit/cancel\"\n";
    return {"--adapter", "host", "--host", host_->url(), "--host-operations", dir_ + "/debit-only.toml"};
  }
};

TEST_F(HostDebitOnlyTest, AnOperationNotDeclaredVotesNo) {
  auto o = submit(transferOps("bank-a:alice", "card:acct-1", 10));
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack);
  EXPECT_NE(o.reason.find("operation credit is not declared by agent card"), std::string::npos) << o.reason;
  EXPECT_NE(o.reason.find("declared: debit"), std::string::npos) << o.reason;
  auto stats = JsonReader::parse(host_->get("/v1/stats").body);
  EXPECT_EQ(stats["tried"].number(), 0);
  expectSettled();
}

// A host that posts credits at try and needs no confirm (confirm = "").
class HostNoConfirmTest : public HostAgentTest {
 protected:
  std::vector<std::string> hostArgs() override { return {"--post-credits-at-try"}; }
  std::vector<std::string> cardArgs() override {
    std::ofstream(dir_ + "/no-confirm.toml")
        << "[host.operations.credit]\ntry = \"/v1/credit/try\"\nconfirm = \"\"\ncancel = \"/v1/credit/cancel\"\n";
    return {"--adapter", "host", "--host", host_->url(), "--host-operations", dir_ + "/no-confirm.toml"};
  }
};

TEST_F(HostNoConfirmTest, CommitCallsNothingWhenConfirmIsEmpty) {
  auto o = submit(transferOps("bank-a:alice", "card:acct-1", 10));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  EXPECT_EQ(finalState(o.seq), InteractionRecord::State::Committed);
  EXPECT_TRUE(eventually([&] { return unfinishedAt("card").empty(); }));
  auto stats = JsonReader::parse(host_->get("/v1/stats").body);
  EXPECT_EQ(stats["confirmed"].number(), 0) << "a confirm was sent although none is declared";
  EXPECT_EQ(host_->books().accounts["acct-1"].balance, kHostBalance + 10);
  EXPECT_EQ(totalMoney(), kTotal);
}

// ------------------------------------------------------------ a host that breaks the contract

// A one-connection-at-a-time HTTP server answering every try with `tryAnswer`
// (raw HTTP, or "" for no answer at all) and every other call with 200
// cancelled / confirmed as the contract says.
class FakeHost {
 public:
  explicit FakeHost(std::string tryAnswer) : tryAnswer_(std::move(tryAnswer)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    ::listen(fd_, 16);
    socklen_t len = sizeof sa;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeHost() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int tries() const { return tries_; }
  int cancels() const { return cancels_; }

 private:
  void serve() {
    while (!stop_) {
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      std::string in;
      char buf[4096];
      for (;;) {
        auto head = in.find("\r\n\r\n");
        if (head != std::string::npos) {
          auto cl = in.find("Content-Length: ");
          if (cl == std::string::npos) cl = in.find("content-length: ");
          std::size_t len = cl == std::string::npos ? 0 : std::stoul(in.substr(cl + 16));
          if (in.size() >= head + 4 + len) {
            std::string path = in.substr(5, in.find(' ', 5) - 5);
            std::string answer;
            if (path.find("/try") != std::string::npos) {
              ++tries_;
              answer = tryAnswer_;
            } else {
              if (path.find("/cancel") != std::string::npos) ++cancels_;
              std::string body = path.find("/cancel") != std::string::npos ? R"({"result":"cancelled"})"
                                                                           : R"({"result":"confirmed"})";
              answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body;
            }
            if (answer.empty()) break;  // never answers: the agent's deadline
            ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
            in.erase(0, head + 4 + len);
            continue;
          }
        }
        ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        in.append(buf, std::size_t(n));
      }
      if (tryAnswer_.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      ::close(c);
    }
  }

  std::string tryAnswer_;
  int fd_ = -1;
  unsigned port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> tries_{0}, cancels_{0};
  std::thread thread_;
};

std::string raw(int status, const std::string& body, const std::string& extra = "") {
  return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: application/json\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

struct BreachCase {
  const char* name;
  std::string answer;
  const char* reasonHas;
};
void PrintTo(const BreachCase& c, std::ostream* os) { *os << c.name; }

class HostBreachTest : public HostAgentTest, public ::testing::WithParamInterface<BreachCase> {
 protected:
  std::vector<std::string> cardArgs() override {
    fake_ = std::make_unique<FakeHost>(GetParam().answer);
    return {"--adapter", "host", "--host", fake_->url(), "--host-operations", writeHostOperations(dir_)};
  }
  std::unique_ptr<FakeHost> fake_;
};

TEST_P(HostBreachTest, EveryBreachAtTryIsANoAndTheTryIsCancelled) {
  auto o = submit(transferOps("card:acct-0", "bank-a:alice", 10));
  EXPECT_EQ(o.outcome, ClientOutcome::RolledBack) << o.reason;
  EXPECT_NE(o.reason.find(GetParam().reasonHas), std::string::npos) << o.reason;
  EXPECT_GE(fake_->tries(), 1);
  // Never a branch without a record: the card branch ends rolled back and
  // what may have been tried is cancelled.
  EXPECT_TRUE(eventually([&] { return unfinishedAt("card").empty(); }));
  EXPECT_GE(fake_->cancels(), 1);
  EXPECT_EQ(account("bank-a", "alice").first, 1000);
}

INSTANTIATE_TEST_SUITE_P(
    Answers, HostBreachTest,
    ::testing::Values(BreachCase{"MalformedJson", raw(200, "{\"result\": tried"), "not one JSON object"},
                      BreachCase{"UnknownStatus", raw(418, R"({"result":"teapot"})"), "not in the contract"},
                      BreachCase{"Redirect", raw(302, "{}", "Location: http://127.0.0.1:1/\r\n"), "not in the contract"},
                      BreachCase{"TooLong", raw(200, "{\"result\":\"tried\",\"ref\":\"" + std::string(70000, 'x') + "\"}"),
                                 "max_body_bytes"},
                      BreachCase{"NeverAnswers", "", "did not answer"}),
    [](const auto& info) { return std::string(info.param.name); });

// ------------------------------------------------------------ configuration

TEST(HostAgentConfig, BadHostFlagsAreRefusedBeforeAnythingIsWritten) {
  std::string dir = makeTempDir("keel-host-cfg");
  auto agent = binDir() + "/keel-agent --name card --listen 127.0.0.1:0 --insecure --init --data-dir " + dir + "/card";
  auto ops = writeHostOperations(dir);
  struct Case {
    std::string args, says;
  } cases[] = {
      {"--adapter host --host-operations " + ops, "needs the host's URL"},
      {"--adapter host --host http://127.0.0.1:7600", "needs the operations"},
      {"--adapter host --host https://127.0.0.1:7600 --host-operations " + ops, "https is not supported"},
      {"--adapter host --host http://127.0.0.1:7600/api --host-operations " + ops, "no path"},
      {"--adapter host --host http://127.0.0.1 --host-operations " + ops, "needs a port"},
      {"--host http://127.0.0.1:7600", "are for adapter host"},
  };
  for (auto& c : cases) {
    auto r = run(agent + " " + c.args);
    EXPECT_EQ(r.exitCode, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.says), std::string::npos) << c.args << "\n" << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/card")) << "a refused start created the data directory";
  std::ofstream(dir + "/bad-ops.toml") << "[host.operations.refund]\ntry = \"/x\"\nconfirm = \"\"\ncancel = \"/y\"\n";
  auto r = run(agent + " --adapter host --host http://127.0.0.1:7600 --host-operations " + dir + "/bad-ops.toml");
  EXPECT_EQ(r.exitCode, 2);
  EXPECT_NE(r.output.find("'refund' is not an operation a host adapter maps"), std::string::npos) << r.output;
  std::ofstream(dir + "/bad-path.toml") << "[host.operations.debit]\ntry = \"v1/try\"\nconfirm = \"\"\ncancel = \"/y\"\n";
  r = run(agent + " --adapter host --host http://127.0.0.1:7600 --host-operations " + dir + "/bad-path.toml");
  EXPECT_EQ(r.exitCode, 2);
  EXPECT_NE(r.output.find("must be a path starting with '/'"), std::string::npos) << r.output;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace keel::test
