// Mutual TLS, roles and limits with real processes (docs/security.md):
// every refusal is clear, writes nothing, and the server keeps serving the
// peers that are allowed.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>

#include "common/tls.h"
#include "tests/integration/cluster_fixture.h"
#include "tools/certs.h"

namespace keel::test {
namespace {

std::string what(const kj::Exception& e) { return e.getDescription().cStr(); }

// The coordinator and both agents on mutual TLS; this test process is a
// client (`keel-client`) unless a test installs other credentials.
class TlsTest : public ClusterTest {
 protected:
  ClusterOptions clusterOptions() override {
    auto o = ClusterTest::clusterOptions();
    certs_ = dir_ + "/certs";
    makeCertificates(certs_, {"keel-coordinator", "keel-operator", "bank-a", "bank-b", "keel-client"});
    makeCertificates(dir_ + "/other-ca", {"keel-operator", "keel-coordinator"}, "some-other-ca");
    o.tlsDir = certs_;
    o.tlsExtraToml = tlsToml();
    o.coordinatorTailToml = limitsToml();
    as("keel-client");
    return o;
  }
  virtual std::string tlsToml() { return "handshake_timeout_ms = 500\n"; }
  virtual std::string limitsToml() { return ""; }
  void TearDown() override {
    ClusterTest::TearDown();
    installTls(nullptr);
  }
  // New connections of this process present `name`'s certificate.
  void as(const std::string& name, const std::string& dir = "") {
    auto t = certificateFiles(dir.empty() ? certs_ : dir, name);
    installClientTls(t.ca, t.cert, t.key);
  }
  kj::Own<AgentClient> agent(const std::string& name) {
    return AgentClient::connect(io_, name + "@" + cluster_->agentAddress(name)).wait(io_.waitScope);
  }
  std::string ctl(const std::string& who) {
    auto t = certificateFiles(certs_, who);
    return binDir() + "/keelctl --tls-ca " + t.ca + " --tls-cert " + t.cert + " --tls-key " + t.key + " -c " +
           cluster_->coordinatorAddress() + " ";
  }
  std::string certs_;
};

TEST_F(TlsTest, TransfersRunOverMutualTls) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 250));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  // Phase 2 runs after the answer.
  EXPECT_TRUE(eventually([&] { return query(o.seq)->interaction.state == InteractionRecord::State::Committed; }));
  as("keel-operator");
  EXPECT_TRUE(eventually([&] { return agent("bank-b")->inspect().wait(io_.waitScope).total() == 250; }));
}

TEST_F(TlsTest, ClientIdentityCannotMakeOperatorCalls) {
  open("bank-a", "alice", 1000);
  for (auto cmd : {"list", "audit", "retry", "resolve 1:1 --commit --why x", "export --from 2020-01-01 --to now",
                   "search --from 2020-01-01 --to now", "branches --embedded bank-a"}) {
    auto r = run(ctl("keel-client") + cmd);
    EXPECT_NE(r.exitCode, 0) << cmd;
    EXPECT_NE(r.output.find("permission denied"), std::string::npos) << cmd << ": " << r.output;
    EXPECT_NE(r.output.find("'keel-client' is not an operator of this coordinator"), std::string::npos) << r.output;
  }
  // A backup copies every client's interactions: an operator call too.
  auto b = run(ctl("keel-client") + "backup --to " + dir_ + "/by-client");
  EXPECT_NE(b.exitCode, 0) << b.output;
  EXPECT_NE(b.output.find("permission denied: backup is an operator call"), std::string::npos) << b.output;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/by-client"));
  auto ob = run(ctl("keel-operator") + "backup --to " + dir_ + "/by-operator");
  EXPECT_EQ(ob.exitCode, 0) << ob.output;
  auto l = run(ctl("keel-operator") + "list");
  EXPECT_EQ(l.exitCode, 0) << l.output;
  auto t = run(ctl("keel-client") + "transfer bank-a:alice bank-a:alice 1");
  EXPECT_EQ(t.exitCode, 0) << t.output;  // the client calls still work on that identity
}

TEST_F(TlsTest, PlaintextClientIsRefusedAndOthersAreServed) {
  open("bank-a", "alice", 1000);
  installTls(nullptr);
  auto plain = KeelClient::connect(io_, cluster_->coordinatorAddress()).wait(io_.waitScope);
  EXPECT_ANY_THROW(plain->info().wait(io_.waitScope));
  as("keel-client");
  reconnect();
  EXPECT_EQ(client_->info().wait(io_.waitScope).committed, 1u);  // nothing else was written
  EXPECT_TRUE(eventually([&] {
    return readFile(cluster_->coordinatorLog()).find("TLS handshake from 127.0.0.1") != std::string::npos;
  }));
}

TEST_F(TlsTest, CertificateOfAnotherCaIsRefused) {
  as("keel-operator", dir_ + "/other-ca");
  try {
    KeelClient::connect(io_, cluster_->coordinatorAddress()).wait(io_.waitScope)->info().wait(io_.waitScope);
    ADD_FAILURE() << "a certificate of another CA was served";
  } catch (const kj::Exception& e) {
    EXPECT_NE(what(e).find("TLS handshake with 'keel-coordinator'"), std::string::npos) << what(e);
  }
  as("keel-client");
  reconnect();
  EXPECT_EQ(client_->info().wait(io_.waitScope).committed, 0u);
}

TEST_F(TlsTest, ServerMustPresentTheExpectedName) {
  // bank-a's address, but bank-b expected: the client refuses the server.
  try {
    AgentClient::connect(io_, "bank-b@" + cluster_->agentAddress("bank-a")).wait(io_.waitScope);
    ADD_FAILURE() << "bank-a's certificate passed for bank-b";
  } catch (const kj::Exception& e) {
    EXPECT_NE(what(e).find("TLS handshake with 'bank-b'"), std::string::npos) << what(e);
  }
  try {
    AgentClient::connect(io_, cluster_->agentAddress("bank-a")).wait(io_.waitScope);
    ADD_FAILURE() << "a TLS connection without a name to expect";
  } catch (const kj::Exception& e) {
    EXPECT_NE(what(e).find("write the address as NAME@"), std::string::npos) << what(e);
  }
}

TEST_F(TlsTest, AgentAdmitsCoordinatorCallsOnlyFromCoordinators) {
  open("bank-a", "alice", 100);
  auto forged = [&](std::uint64_t epoch) {
    auto c = agent("bank-a");
    auto req = c->capability().prepareRequest();
    req.setEpoch(epoch);
    req.getXid().setSeq(makeSeq(1, 999999));
    req.getXid().setBranch(1);
    auto op = req.initOperations(1)[0];
    op.setKind(wire::LedgerOpKind::DEBIT);
    op.setAccount("alice");
    op.setAmount(10);
    req.send().wait(io_.waitScope);
  };
  for (auto who : {"keel-client", "keel-operator"}) {
    as(who);
    try {
      forged(~std::uint64_t(0) >> 1);  // a forged huge epoch would fence the real coordinator out
      ADD_FAILURE() << who << " made a coordinator call";
    } catch (const kj::Exception& e) {
      EXPECT_NE(what(e).find("permission denied"), std::string::npos) << what(e);
    }
  }
  // An operator may look, with epoch 0 only.
  as("keel-operator");
  auto c = agent("bank-a");
  auto snap = c->inspect().wait(io_.waitScope);
  EXPECT_EQ(snap.accounts.size(), 1u);
  auto look = c->capability().recoverRequest();
  look.setEpoch(0);
  EXPECT_NO_THROW(look.send().wait(io_.waitScope));
  auto fence = c->capability().recoverRequest();
  fence.setEpoch(1000000);
  fence.setNode(1);
  EXPECT_ANY_THROW(fence.send().wait(io_.waitScope));
  // A client may not even look.
  as("keel-client");
  EXPECT_ANY_THROW(agent("bank-a")->inspect().wait(io_.waitScope));
  // Nothing was prepared, no fence raised: the real coordinator still works.
  reconnect();
  auto o = submit(transferOps("bank-a:alice", "bank-a:alice", 1));
  EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  as("keel-operator");
  EXPECT_EQ(agent("bank-a")->inspect().wait(io_.waitScope).prepared, 0u);
}

TEST_F(TlsTest, AuditNamesTheCertificateNotTheClaimedOperator) {
  auto seq = stuckCommit(/*restart=*/false);
  auto r = run(ctl("keel-operator") + "resolve " + seqText(seq) + " --abort --override --who mallory --why 'host gone'");
  EXPECT_EQ(r.exitCode, 0) << r.output;
  auto audit = run(ctl("keel-operator") + "audit --json");
  EXPECT_NE(audit.output.find("\"who\":\"keel-operator\""), std::string::npos) << audit.output;
  EXPECT_EQ(audit.output.find("mallory"), std::string::npos) << audit.output;
  cluster_->startAgent("bank-b");
}

class TlsLimitsTest : public TlsTest {
 protected:
  std::string limitsToml() override {
    return "[limits]\nmax_connections_per_peer = 3\nmax_calls_in_flight = 4\nmax_connections = 2000\n";
  }
};

// A connection that never starts its handshake is closed after the
// handshake timeout (500 ms here), not held.
TEST_F(TlsTest, SilentConnectionIsClosedAfterTheHandshakeTimeout) {
  auto addr = cluster_->coordinatorAddress();
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(std::uint16_t(std::stoi(addr.substr(addr.rfind(':') + 1))));
  ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  auto started = std::chrono::steady_clock::now();
  char b;
  auto n = ::recv(fd, &b, 1, 0);  // blocks until the server closes (or 10 s)
  auto took = std::chrono::steady_clock::now() - started;
  ::close(fd);
  EXPECT_LE(n, 0);
  EXPECT_GE(took, std::chrono::milliseconds(400));
  EXPECT_LT(took, std::chrono::seconds(5));
  EXPECT_EQ(client_->info().wait(io_.waitScope).epoch, 1u);  // still serving
}

// The CA file may hold several CAs (rotation: the old and the new one):
// each is trusted, not only the first.
TEST_F(TlsTest, EveryCaOfABundleIsTrusted) {
  std::string bundle = dir_ + "/bundle.pem";
  std::ofstream(bundle) << readFile(dir_ + "/other-ca/ca.pem") << readFile(certs_ + "/ca.pem");
  auto me = certificateFiles(certs_, "keel-client");
  installClientTls(bundle, me.cert, me.key);
  reconnect();
  EXPECT_EQ(client_->info().wait(io_.waitScope).epoch, 1u);
}

// An agent asks the coordinator about a branch in doubt over TLS too
// (it dials the coordinator name and presents its own certificate).
class TlsAgentAsksTest : public TlsTest {
 protected:
  std::string coordinatorToml() override {
    return kSlowDriversToml;
  }
  ClusterOptions clusterOptions() override {
    auto o = TlsTest::clusterOptions();
    o.agentInDoubtQueryMs = 200;
    return o;
  }
};

TEST_F(TlsAgentAsksTest, PreparedBranchAsksTheCoordinatorOverTls) {
  stuckCommit();
  EXPECT_TRUE(eventually(
      [&] { return readFile(cluster_->agentLog("bank-b")).find("coordinator says committed") != std::string::npos; },
      std::chrono::seconds(10)))
      << readFile(cluster_->agentLog("bank-b"));
  as("keel-operator");
  EXPECT_TRUE(eventually([&] { return agent("bank-b")->inspect().wait(io_.waitScope).total() == 100; }));
}

class TlsIdleTest : public TlsTest {
 protected:
  std::string limitsToml() override { return "[limits]\nidle_timeout_s = 1\n"; }
};

TEST_F(TlsLimitsTest, CallsBeyondTheInFlightLimitAreOverloaded) {
  open("bank-a", "alice", 1000);
  std::vector<kj::Promise<SubmitOutcome>> calls;
  for (int i = 0; i < 40; ++i) calls.push_back(client_->submit(transferOps("bank-a:alice", "bank-a:alice", 1)));
  int committed = 0, overloaded = 0;
  for (auto& p : calls) {
    try {
      auto o = p.wait(io_.waitScope);
      committed += o.outcome == ClientOutcome::Committed;
    } catch (const kj::Exception& e) {
      overloaded += what(e).find("overloaded: 4 calls already in flight") != std::string::npos;
    }
  }
  EXPECT_GE(committed, 4);
  EXPECT_GT(overloaded, 0);
  EXPECT_EQ(committed + overloaded, 40);
}

TEST_F(TlsLimitsTest, ConnectionsPerIdentityAreCapped) {
  std::vector<kj::Own<KeelClient>> held;
  for (int i = 0; i < 2; ++i) {  // client_ is the first
    held.push_back(KeelClient::connect(io_, cluster_->coordinatorAddress()).wait(io_.waitScope));
    held.back()->info().wait(io_.waitScope);
  }
  auto fourth = rpcConnect(io_, cluster_->coordinatorAddress(), "keel-coordinator").wait(io_.waitScope);
  try {
    fourth->bootstrap<wire::Coordinator>().infoRequest().send().wait(io_.waitScope);
    ADD_FAILURE() << "a fourth connection of one identity was served";
  } catch (const kj::Exception& e) {
    EXPECT_NE(what(e).find("'keel-client' already has 3 connections"), std::string::npos) << what(e);
  }
  // ... and closed soon after (2 s), so that it holds nothing.
  bool closed = io_.provider->getTimer()
                    .timeoutAfter(6 * kj::SECONDS, fourth->onDisconnect().then([]() { return true; }))
                    .catch_([](kj::Exception&&) { return false; })
                    .wait(io_.waitScope);
  EXPECT_TRUE(closed);
  as("keel-operator");  // another identity is not affected
  EXPECT_NO_THROW(KeelClient::connect(io_, cluster_->coordinatorAddress()).wait(io_.waitScope)->info().wait(io_.waitScope));
}

TEST_F(TlsIdleTest, IdleConnectionsAreClosed) {
  client_->info().wait(io_.waitScope);
  auto conn = rpcConnect(io_, cluster_->coordinatorAddress(), "keel-coordinator").wait(io_.waitScope);
  conn->bootstrap<wire::Coordinator>().infoRequest().send().wait(io_.waitScope);  // then nothing
  auto started = std::chrono::steady_clock::now();
  auto& timer = io_.provider->getTimer();
  bool closed = timer.timeoutAfter(5 * kj::SECONDS, conn->onDisconnect().then([]() { return true; }))
                    .catch_([](kj::Exception&&) { return false; })
                    .wait(io_.waitScope);
  EXPECT_TRUE(closed);
  EXPECT_GE(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(900));
  EXPECT_NE(readFile(cluster_->coordinatorLog()).find("closing idle connection from 127.0.0.1"), std::string::npos);
}

// 10,000 connections that never finish a TLS handshake: the coordinator
// drops what is beyond max_connections at once and the rest after the
// handshake timeout, keeps serving the client it had, and takes new ones.
TEST_F(TlsLimitsTest, TenThousandIdleConnectionsDoNotStopService) {
  rlimit r{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &r), 0);
  r.rlim_cur = std::max<rlim_t>(r.rlim_cur, std::min<rlim_t>(r.rlim_max, 12000));
  ::setrlimit(RLIMIT_NOFILE, &r);
  ASSERT_GE(r.rlim_cur, 10100u) << "the test needs 10,000 descriptors";
  open("bank-a", "alice", 1000);
  auto addr = cluster_->coordinatorAddress();
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(std::uint16_t(std::stoi(addr.substr(addr.rfind(':') + 1))));
  ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  std::vector<int> fds;
  for (int i = 0; i < 10000; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ASSERT_GE(fd, 0);
    ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);  // in progress; the backlog takes it
    fds.push_back(fd);
  }
  // The established client is served throughout.
  for (int i = 0; i < 5; ++i) {
    auto o = submit(transferOps("bank-a:alice", "bank-a:alice", 1));
    EXPECT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  }
  // Every flood connection ends: closed at once, or after the 500 ms handshake timeout.
  EXPECT_TRUE(eventually(
      [&] {
        std::size_t open = 0;
        for (int fd : fds) {
          char b;
          auto n = ::recv(fd, &b, 1, MSG_DONTWAIT);
          if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOTCONN)) ++open;
        }
        return open == 0;
      },
      std::chrono::seconds(60)));
  for (int fd : fds) ::close(fd);
  auto fresh = KeelClient::connect(io_, addr).wait(io_.waitScope);
  EXPECT_GE(fresh->info().wait(io_.waitScope).committed, 6u);
  // The flood reached the coordinator: it refused what was beyond
  // max_connections and timed out the handshakes it had taken.
  auto log = readFile(cluster_->coordinatorLog());
  EXPECT_NE(log.find("connections open ([limits] max_connections)"), std::string::npos) << log.substr(0, 4000);
  EXPECT_NE(log.find("TLS handshake from 127.0.0.1"), std::string::npos);
}

// Refused starts: nothing is created, the reason is printed, exit status 2.
class TlsStartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = makeTempDir("keel-tls-start");
    makeCertificates(dir_ + "/certs", {"keel-coordinator", "bank-a"});
    makeCertificates(dir_ + "/other", {"bank-a"}, "some-other-ca");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  RunResult coordinator(const std::string& tls, const std::string& listen = "127.0.0.1:0") {
    std::string path = dir_ + "/c.toml";
    std::ofstream(path) << "[coordinator]\nlisten = \"" << listen << "\"\ndata_dir = \"" << dir_
                        << "/wal\"\n[participants]\na = \"127.0.0.1:1\"\n"
                        << tls;
    return run("timeout 20 " + binDir() + "/keel-coordinator --init --config " + path);
  }
  RunResult agent(const std::string& flags) {
    return run("timeout 20 " + binDir() + "/keel-agent --init --name bank-a --listen 127.0.0.1:0 --data-dir " + dir_ +
               "/agent " + flags);
  }
  std::string files(const std::string& ca, const std::string& name) {
    return "[tls]\nca = \"" + dir_ + "/" + ca + "/ca.pem\"\ncert = \"" + dir_ + "/" + ca + "/" + name +
           ".pem\"\nkey = \"" + dir_ + "/" + ca + "/" + name + ".key\"\n";
  }
  std::string dir_;
};

TEST_F(TlsStartTest, EveryBadSetUpIsRefusedWithNothingWritten) {
  struct Case {
    RunResult r;
    std::string expect;
  };
  std::string certs = dir_ + "/certs";
  Case cases[] = {
      {coordinator(""), "no TLS configured"},
      {coordinator("[tls]\ninsecure = true\n", "0.0.0.0:0"), "insecure (plaintext) is refused on the non-loopback"},
      {coordinator(files("certs", "keel-coordinator") + "insecure = true\n"), "choose one"},
      {coordinator("[tls]\nca = \"" + certs + "/ca.pem\"\n"), "missing: cert key"},
      {coordinator("[tls]\nca = \"" + certs + "/ca.pem\"\ncert = \"" + dir_ + "/other/bank-a.pem\"\nkey = \"" + dir_ +
                   "/other/bank-a.key\"\n"),
       "is not valid under the CA"},
      {coordinator("[tls]\nca = \"" + certs + "/ca.pem\"\ncert = \"" + certs + "/bank-a.pem\"\nkey = \"" + certs +
                   "/keel-coordinator.key\"\n"),
       "is not the key of the certificate"},
      {coordinator("[tls]\nca = \"" + certs + "/nope.pem\"\ncert = \"" + certs + "/bank-a.pem\"\nkey = \"" + certs +
                   "/bank-a.key\"\n"),
       "cannot read " + certs + "/nope.pem"},
      {agent("--tls-ca " + certs + "/ca.pem --tls-cert " + certs + "/bank-a.pem --tls-key " + certs + "/bank-a.key"),
       "[tls] coordinators is empty"},
      {agent(""), "no TLS configured"},
  };
  for (auto& c : cases) {
    EXPECT_EQ(c.r.exitCode, 2) << c.r.output;
    EXPECT_NE(c.r.output.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << c.r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/wal"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/agent"));
}

// SIGHUP: new certificates for new connections, open ones undisturbed; a
// bad set is refused and the old one kept.
TEST_F(TlsTest, SighupReloadsCertificatesWithoutDroppingWork) {
  open("bank-a", "alice", 1000);
  std::filesystem::copy_file(certs_ + "/keel-coordinator.pem", dir_ + "/old.pem");
  std::filesystem::copy_file(certs_ + "/keel-coordinator.key", dir_ + "/old.key");
  std::ofstream(certs_ + "/keel-coordinator.key") << "not a key\n";
  ::kill(cluster_->coordinatorPid(), SIGHUP);
  ASSERT_TRUE(eventually([&] {
    return readFile(cluster_->coordinatorLog()).find("SIGHUP reload failed, the old certificates stay in use") !=
           std::string::npos;
  }));
  EXPECT_EQ(submit(transferOps("bank-a:alice", "bank-a:alice", 1)).outcome, ClientOutcome::Committed);
  std::filesystem::copy_file(dir_ + "/old.pem", certs_ + "/keel-coordinator.pem",
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy_file(dir_ + "/old.key", certs_ + "/keel-coordinator.key",
                             std::filesystem::copy_options::overwrite_existing);
  ::kill(cluster_->coordinatorPid(), SIGHUP);
  ASSERT_TRUE(eventually([&] {
    return readFile(cluster_->coordinatorLog()).find("reloaded on SIGHUP: new connections use certificate "
                                                     "'keel-coordinator'") != std::string::npos;
  }));
  // The connection made before both reloads still works, and new ones do.
  EXPECT_EQ(submit(transferOps("bank-a:alice", "bank-a:alice", 1)).outcome, ClientOutcome::Committed);
  reconnect();
  EXPECT_EQ(client_->info().wait(io_.waitScope).committed, 3u);
}

}  // namespace
}  // namespace keel::test
