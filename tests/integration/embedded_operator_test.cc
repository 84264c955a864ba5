// An embedded participant ([participants] NAME = "embedded:FILE") has no
// address of its own: keelctl's agent commands (branches, forget, backup)
// reach it through the coordinator that runs it (--embedded NAME), which
// hands out a view of it that takes an operator's calls only
// (Coordinator.embeddedParticipant; docs/operations.md, "Embedded
// participants").

#include <filesystem>

#include "common/strict_json.h"
#include "common/wire.h"
#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

// bank-b runs inside the coordinator, bank-a is a keel-agent.
class EmbeddedOperatorTest : public ClusterTest {
 protected:
  std::set<std::string> embeddedAgents() const override { return {"bank-b"}; }
  RunResult ctl(const std::string& args) {
    return run("timeout 60 " + binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " " + args);
  }
  RunResult ctlJson(const std::string& args) {
    return runStdout("timeout 60 " + binDir() + "/keelctl --json -c " + cluster_->coordinatorAddress() + " " + args +
                     " 2>/dev/null");
  }
  // bank-b's operator view, asked of the coordinator as keelctl asks it.
  wire::Participant::Client viewOfB() {
    auto req = client_->capability().embeddedParticipantRequest();
    req.setName("bank-b");
    return req.send().wait(io_.waitScope).getParticipant();
  }
};

TEST_F(EmbeddedOperatorTest, BranchesForgetAndBackupReachTheEmbeddedParticipantThroughTheCoordinator) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  std::uint64_t last = 0;
  for (int i = 0; i < 5; ++i) {
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 10));
    ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
    last = o.seq;
  }
  ASSERT_TRUE(eventually([&] { return query(last)->interaction.finished(); }));

  // Its books and unfinished branches, as `branches --agent` shows a keel-agent's.
  auto b = ctl("branches --embedded bank-b");
  EXPECT_EQ(b.exitCode, 0) << b.output;
  EXPECT_NE(b.output.find("bank-b: 0 unfinished branch(es), money held 0, balances total 50"), std::string::npos)
      << b.output;
  auto bj = ctlJson("branches --embedded bank-b");
  ASSERT_EQ(bj.exitCode, 0) << bj.output;
  auto doc = JsonReader::parse(bj.output);
  EXPECT_EQ(doc["agent"].str(), "bank-b");
  EXPECT_EQ(doc["total"].number(), 50);
  EXPECT_GE(doc["finished_records"]["committed"].number(), 6);  // the open and 5 credits

  // forget goes to the agent with epoch 0, and the agent answers as it
  // would a keel-agent's operator: a finished branch of the running
  // coordinator's incarnation is kept.
  auto f = ctl("forget --embedded bank-b " + seqText(last) + ".2");
  EXPECT_EQ(f.exitCode, 1) << f.output;
  EXPECT_NE(f.output.find("a finished branch, kept while a late prepare of it may still arrive"), std::string::npos)
      << f.output;

  // A hot backup of its branch log and books, made while it serves.
  std::string target = dir_ + "/bank-b-backup";
  auto k = ctlJson("backup --embedded bank-b --to " + target);
  ASSERT_EQ(k.exitCode, 0) << k.output;
  auto m = JsonReader::parse(k.output);
  EXPECT_EQ(m["kind"].str(), "agent");
  EXPECT_EQ(m["name"].str(), "bank-b");
  EXPECT_GE(m["records"].number(), 6);
  EXPECT_EQ(m["unfinished"].number(), 0);
  EXPECT_TRUE(std::filesystem::exists(target + "/data.mdb"));
  EXPECT_NE(JsonReader::parse(readFile(target + "/manifest.json"))["source"].str().find("(embedded bank-b)"),
            std::string::npos);
  EXPECT_EQ(submit(transferOps("bank-a:alice", "bank-b:bob", 1)).outcome, ClientOutcome::Committed);  // still serving
}

TEST_F(EmbeddedOperatorTest, ANameThatIsNotAnEmbeddedParticipantIsRefusedAndNothingIsSent) {
  auto notEmbedded = ctl("branches --embedded bank-a");
  EXPECT_EQ(notEmbedded.exitCode, 2) << notEmbedded.output;
  EXPECT_NE(notEmbedded.output.find("participant bank-a is not embedded in this coordinator: ask its keel-agent"),
            std::string::npos)
      << notEmbedded.output;
  auto unknown = ctl("backup --embedded bank-z --to " + dir_ + "/never");
  EXPECT_EQ(unknown.exitCode, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("this coordinator has no participant bank-z"), std::string::npos) << unknown.output;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/never"));
  auto neither = ctl("branches");
  EXPECT_EQ(neither.exitCode, 2) << neither.output;
  EXPECT_NE(neither.output.find("branches needs --agent HOST:PORT (a keel-agent) or --embedded NAME"),
            std::string::npos)
      << neither.output;
  auto both = ctl("branches --embedded bank-b --agent " + cluster_->agentAddress("bank-a"));
  EXPECT_EQ(both.exitCode, 2) << both.output;
}

// Whoever holds the view (on a plaintext coordinator: anyone) can only
// look, list and forget with epoch 0 and back up: a prepare, a decision, a
// release or an epoch (which would fence the coordinator's own calls) is
// refused before it reaches the agent, and changes nothing there.
TEST_F(EmbeddedOperatorTest, TheViewRefusesEveryCoordinatorsCall) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  auto view = viewOfB();
  auto refused = [&](auto&& req, const std::string& call) {
    try {
      req.send().wait(io_.waitScope);
      ADD_FAILURE() << call << " went through the operator view";
    } catch (const kj::Exception& e) {
      EXPECT_NE(std::string(e.getDescription().cStr())
                    .find("permission denied: " + call + " is a coordinator's call; embedded participant bank-b "
                                                          "takes only an operator's calls"),
                std::string::npos)
          << e.getDescription().cStr();
    }
  };
  const Xid xid{(std::uint64_t(9) << 48) | 1, 1};
  {
    auto req = view.prepareRequest();
    req.setEpoch(1000);
    fillXid(req.initXid(), xid);
    fillOps(req.initOperations(1), {Op{"bank-b", OpKind::Credit, "bob", 500}});
    refused(req, "prepare");
  }
  {
    auto req = view.commitOnePhaseRequest();
    req.setEpoch(0);
    fillXid(req.initXid(), xid);
    fillOps(req.initOperations(1), {Op{"bank-b", OpKind::Credit, "bob", 500}});
    refused(req, "commitOnePhase");
  }
  {
    auto req = view.rollbackRequest();
    fillXid(req.initXids(1)[0], xid);
    refused(req, "rollback");
  }
  {
    auto req = view.recoverRequest();
    req.setEpoch(1000);  // would fence node 0 at epoch 1000
    refused(req, "recover");
  }
  {
    auto req = view.forgetRequest();
    req.setEpoch(1000);
    refused(req, "forget");
  }
  {
    auto req = view.releaseRequest();
    req.setEpoch(1000);
    req.setFloor(1);
    refused(req, "release");
  }
  // What an operator may do goes through: its own name and books, and a
  // look at its branches (epoch 0, no fence).
  auto inspected = view.inspectRequest().send().wait(io_.waitScope);
  EXPECT_EQ(std::string(inspected.getName().cStr()), "bank-b");
  for (auto f : inspected.getFences()) EXPECT_LT(f.getEpoch(), 1000u) << "node " << f.getNode();
  auto looked = view.recoverRequest();
  looked.setEpoch(0);
  EXPECT_EQ(looked.send().wait(io_.waitScope).getBranches().size(), 0u);
  // Nothing of the refused calls happened, and the coordinator still runs
  // transfers through bank-b (no fence of its epoch was raised).
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 7));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed) << o.reason;
  // bob's 7 once phase 2 ran (after the answer), and no refused credit of 500.
  AgentClient books(viewOfB());
  std::int64_t total = -1;
  EXPECT_TRUE(eventually([&] { return (total = books.inspect().wait(io_.waitScope).total()) == 7; })) << total;
}

}  // namespace
}  // namespace keel::test
