// The operator console in a real browser (label browser): a coordinator and
// two ledger agents, the console open in Debian's headless chromium driven
// by tests/browser/console_test.mjs (puppeteer-core, installed by make
// test into build/browser). The page must show live numbers while transfers
// run; an interaction this test puts in doubt must appear on it within 2 s;
// "Retry now" clicked on the page must finish it and land in the audit log.
// Screenshots: build/test-artifacts/console/.

#include <chrono>
#include <filesystem>
#include <thread>

#include "../integration/cluster_fixture.h"
#include "common/strict_json.h"
#include "tools/bank.h"
#include "tools/free_port.h"

namespace keel::test {
namespace {

namespace fs = std::filesystem;

class ConsoleTest : public ClusterTest {
 protected:
  // Drivers and probes that wait a minute: only the page's retry can
  // finish the interaction within the test.
  std::string coordinatorToml() override { return kSlowDriversToml; }
  ClusterOptions clusterOptions() override {
    port_ = pickFreePort();
    auto o = ClusterTest::clusterOptions();
    o.agentInDoubtQueryMs = 0;  // bank-b must not settle its branch by asking
    o.coordinatorTailToml = "[admin]\nlisten = \"127.0.0.1:" + std::to_string(port_) + "\"\nactions = true\n";
    return o;
  }

  void writeFile(const std::string& name, const std::string& text) {
    std::ofstream(artifacts_ + "/" + name + ".tmp") << text;
    fs::rename(artifacts_ + "/" + name + ".tmp", artifacts_ + "/" + name);
  }
  bool waitFor(const std::string& name, std::chrono::seconds limit, ChildProcess& node) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      if (fs::exists(artifacts_ + "/" + name)) return true;
      if (!node.running()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  unsigned port_ = 0;
  std::string artifacts_ = std::string(KEEL_ARTIFACT_DIR) + "/console";
};

TEST_F(ConsoleTest, LiveNumbersAnInDoubtInteractionWithin2sAndARetryFromThePage) {
  const std::string modules = std::string(KEEL_BROWSER_DIR) + "/node_modules/puppeteer-core";
  ASSERT_TRUE(fs::exists("/usr/bin/chromium")) << "no /usr/bin/chromium: scripts/install-deps.sh installs it";
  ASSERT_TRUE(fs::exists(modules)) << "no " << modules << ": `make test` installs it (npm ci in build/browser)";
  fs::remove_all(artifacts_);
  fs::create_directories(artifacts_);

  open("bank-a", "carol", 1'000'000);  // alice and bob are stuckCommit's
  open("bank-b", "dave", 0);
  // Transfers while the page loads, so that it has live numbers to show.
  std::atomic<bool> stop{false};
  std::atomic<int> committed{0};
  std::thread load([&]() {
    auto io = kj::setupAsyncIo();
    auto c = KeelClient::connect(io, cluster_->coordinatorAddress()).wait(io.waitScope);
    while (!stop) {
      auto o = c->submit(transferOps("bank-a:carol", "bank-b:dave", 1)).wait(io.waitScope);
      if (o.outcome == ClientOutcome::Committed) ++committed;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });

  // The script runs from build/browser, beside its node_modules (an ES
  // module finds packages only from where it lies).
  const std::string script = std::string(KEEL_BROWSER_DIR) + "/console_test.mjs";
  fs::copy_file(std::string(KEEL_SOURCE_DIR) + "/tests/browser/console_test.mjs", script,
                fs::copy_options::overwrite_existing);
  ChildProcess node;
  node.start("/usr/bin/node", {script, "--url=http://127.0.0.1:" + std::to_string(port_) + "/", "--dir=" + artifacts_},
             artifacts_ + "/node.log");
  bool ready = waitFor("page-ready", std::chrono::seconds(60), node);
  stop = true;
  load.join();
  ASSERT_TRUE(ready) << readFile(artifacts_ + "/node.log");
  EXPECT_GT(committed.load(), 0);

  // In doubt: the COMMIT is durable, bank-a committed, bank-b died on its
  // way into the commit and stays down.
  auto seq = stuckCommit(/*restart=*/false);
  writeFile("seq", seqText(seq));
  ASSERT_TRUE(waitFor("row-seen", std::chrono::seconds(30), node)) << readFile(artifacts_ + "/node.log");
  auto rowMs = std::stoi(readFile(artifacts_ + "/row-seen"));
  EXPECT_LE(rowMs, 2000);
  // Nothing moved it meanwhile: it waits for an operator (drivers back off a minute).
  auto before = query(seq);
  ASSERT_TRUE(before.has_value());
  EXPECT_EQ(before->interaction.state, InteractionRecord::State::Committing);

  cluster_->startAgent("bank-b");
  writeFile("retry-go", "1");
  int status = node.waitExit(std::chrono::seconds(60));
  ASSERT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "node: " << status << "\n" << readFile(artifacts_ + "/node.log");

  // The page's retry finished it, and the audit log says who did it and why.
  auto after = query(seq);
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->interaction.state, InteractionRecord::State::Committed);
  EXPECT_EQ(account("bank-b", "bob").first, 100);
  EXPECT_EQ(account("bank-b", "dave").first, std::int64_t(committed.load()));
  auto audit = client_->audit(10).wait(io_.waitScope);
  bool found = false;
  for (const auto& e : audit) {
    auto j = JsonReader::parse(e);
    if (j["action"].str() == "retry" && j["seq"].whole() == seq) {
      found = true;
      EXPECT_EQ(j["who"].str().rfind("browser-test (console at 127.0.0.1:", 0), 0u) << e;
      EXPECT_EQ(j["why"].str(), "bank-b is back (console browser test)");
    }
  }
  EXPECT_TRUE(found) << "no retry entry in the audit log";
  for (const char* shot : {"console-live.png", "console-in-doubt.png", "console-after-retry.png"}) {
    EXPECT_GT(fs::file_size(artifacts_ + "/" + shot), 10000u) << shot;
  }
}

}  // namespace
}  // namespace keel::test
