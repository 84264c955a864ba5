// The archive (coordinator/archive.h): finished interactions older than
// hot_retention_s leave the hot WAL for <data-dir>/archive, and every way
// of asking about them still answers: query by seq and by request id, a
// retry of the request id, search and export; unfinished work stays hot.

#include <filesystem>
#include <fstream>
#include <sstream>

#include <set>

#include "common/strict_json.h"
#include "coordinator/archive.h"
#include "coordinator/wal_store.h"
#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

namespace fs = std::filesystem;

class ArchiveTest : public ClusterTest {
 protected:
  std::string coordinatorToml() override {
    return ClusterTest::coordinatorToml() + "hot_retention_s = 1\narchive_map_size_mb = 64\narchive_retention_days = " +
           std::to_string(retentionDays_) + "\n";
  }
  int retentionDays_ = 0;
  RunResult ctl(const std::string& args) {
    return runStdout("timeout 30 " + binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " " + args);
  }
  bool inLog(const std::string& needle) {
    std::ifstream f(cluster_->coordinatorLog());
    std::string log(std::istreambuf_iterator<char>(f), {});
    return log.find(needle) != std::string::npos;
  }
  // Whether the hot WAL itself still holds `seq` (read-only, beside the
  // running coordinator, without the archive).
  bool hot(std::uint64_t seq) {
    WalStore wal(dir_ + "/coordinator", std::size_t(1) << 30, /*readOnly=*/true);
    return wal.get(seq).has_value();
  }
};

TEST_F(ArchiveTest, FinishedInteractionsMoveToTheArchiveAndAreStillAnswered) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  SubmitRequest req;
  req.ops = transferOps("bank-a:alice", "bank-b:bob", 10);
  req.requestId = newRequestId();
  req.requestTimeUs = wallMicros();
  auto first = client_->submit(req).wait(io_.waitScope);
  ASSERT_EQ(first.outcome, ClientOutcome::Committed) << first.reason;
  std::vector<std::uint64_t> seqs{first.seq};
  for (int i = 0; i < 5; ++i) {
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", i == 2 ? 100000 : 1));  // one rolled back
    seqs.push_back(o.seq);
  }
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));

  // Moved: gone from the hot WAL, in a period of the archive.
  ASSERT_TRUE(eventually([&] { return !hot(first.seq) && !hot(seqs.back()); }, std::chrono::seconds(10)))
      << "not archived within 10 s with hot_retention_s = 1";
  EXPECT_TRUE(eventually([&] { return inLog("finished interaction(s) older than hot_retention_s = 1 moved to"); }));
  EXPECT_TRUE(fs::is_directory(dir_ + "/coordinator/archive/" + Archive::periodOf(wallMicros())));

  // Asked by seq and by request id: from the archive, whole.
  for (auto seq : seqs) {
    auto q = query(seq);
    ASSERT_TRUE(q) << seqText(seq);
    EXPECT_EQ(q->interaction.seq, seq);
  }
  auto rolledBack = query(seqs[3]);
  ASSERT_TRUE(rolledBack);
  EXPECT_EQ(rolledBack->interaction.state, InteractionRecord::State::RolledBack);
  ASSERT_TRUE(rolledBack->rollback.has_value()) << "the rollback record moved with it";
  auto byId = client_->queryRequest(req.requestId).wait(io_.waitScope);
  ASSERT_TRUE(byId);
  EXPECT_EQ(byId->interaction.seq, first.seq);
  auto text = ctl("query --request-id " + req.requestId);
  EXPECT_EQ(text.exitCode, 0) << text.output;
  EXPECT_NE(text.output.find(seqText(first.seq)), std::string::npos) << text.output;

  // A retry of the request id is answered from the archive and runs nothing.
  auto again = client_->submit(req).wait(io_.waitScope);
  EXPECT_EQ(again.outcome, ClientOutcome::Committed) << again.reason;
  EXPECT_EQ(again.seq, first.seq);
  EXPECT_TRUE(again.replayed);
  // ... and with other operations it is refused as reused.
  SubmitRequest other = req;
  other.ops = transferOps("bank-a:alice", "bank-b:bob", 11);
  EXPECT_EQ(client_->submit(other).wait(io_.waitScope).outcome, ClientOutcome::Invalid);
  EXPECT_EQ(account("bank-b", "bob"), bal(14, 0));  // 10 + 4 x 1: nothing ran twice

  // Search and export see them once each.
  auto s = ctl("--json search --from 2020-01-01 --to 2100-01-01 --participant bank-b");
  ASSERT_EQ(s.exitCode, 0) << s.output;
  EXPECT_EQ(JsonReader::parse(s.output)["interactions"].array().size(), 7u);  // the open and six transfers
  auto e = ctl("export --from 2020-01-01 --to 2100-01-01");
  ASSERT_EQ(e.exitCode, 0) << e.output;
  std::istringstream in(e.output);
  std::set<std::uint64_t> exported;
  std::size_t lines = 0;
  for (std::string l; std::getline(in, l); ++lines) exported.insert(JsonReader::parse(l)["interaction"]["seq"].whole());
  EXPECT_EQ(lines, exported.size()) << "an interaction exported twice";
  for (auto seq : seqs) EXPECT_TRUE(exported.count(seq)) << seqText(seq);

  // Across a restart the archive is found again.
  cluster_->stopCoordinator();
  cluster_->startCoordinator();
  reconnect();
  auto q = query(first.seq);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->interaction.requestId, req.requestId);
}

// keelctl archive list and drop: a period older than archive_retention_days
// goes, audited; today's never does; bad input is refused before anything
// is sent.
// Release floors (coordinator/release.cc): once the coordinator has
// archived interactions, the agents drop their finished branch records,
// refuse a late prepare of them, and keep what is unfinished (an open
// interactive transaction, passed over into the keep list) until it ends.
TEST_F(ArchiveTest, AgentsDropTheBranchRecordsOfArchivedInteractions) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  auto held = beginWith(Op{"bank-a", OpKind::Debit, "alice", 7});
  ASSERT_TRUE(held.txn.get() != nullptr);
  std::vector<std::uint64_t> seqs;
  for (int i = 0; i < 20; ++i) {
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", i == 4 ? 100000 : 1));  // one rolled back
    ASSERT_NE(o.seq, 0u);
    seqs.push_back(o.seq);
  }
  const auto before = inspect("bank-b");
  ASSERT_GE(before.committed + before.rolledBack, 20u);
  auto agent = AgentClient::connect(io_, cluster_->agentAddress("bank-b")).wait(io_.waitScope);
  auto knownAtB = [&](std::uint64_t seq) {  // bank-b's branch is the transfer's second
    auto req = agent->capability().statusRequest();
    auto x = req.initXids(1)[0];
    x.setSeq(seq);
    x.setBranch(2);
    return req.send().wait(io_.waitScope).getKnown()[0];
  };
  ASSERT_TRUE(knownAtB(seqs[0]));
  ASSERT_TRUE(knownAtB(seqs.back()));

  // Archived, then released: bank-b keeps no finished record of them.
  ASSERT_TRUE(eventually([&] { return !hot(seqs.back()); }, std::chrono::seconds(15)));
  ASSERT_TRUE(eventually(
      [&] {
        auto s = inspect("bank-b");
        return s.committed + s.rolledBack <= before.committed + before.rolledBack - 20;
      },
      std::chrono::seconds(30)))
      << "bank-b still holds " << inspect("bank-b").committed << " committed records";
  EXPECT_TRUE(eventually([&] { return inLog("release: participants dropped"); }));
  auto shown = runStdout("timeout 30 " + binDir() + "/keelctl branches --agent " + cluster_->agentAddress("bank-b"));
  EXPECT_NE(shown.output.find("; released below 1:"), std::string::npos) << shown.output;
  for (auto seq : seqs) EXPECT_FALSE(knownAtB(seq)) << seqText(seq) << " still known at bank-b";
  // Their story is still told, from the archive.
  auto q = query(seqs[0]);
  ASSERT_TRUE(q);
  EXPECT_TRUE(q->interaction.finished());

  // A late prepare of a released branch, even under the live epoch: refused.
  auto epoch = client_->info().wait(io_.waitScope).epoch;
  auto req = agent->capability().prepareRequest();
  req.setEpoch(epoch);
  req.getXid().setSeq(seqs[0]);
  req.getXid().setBranch(2);
  auto op = req.initOperations(1)[0];
  op.setKind(wire::LedgerOpKind::CREDIT);
  op.setAccount("bob");
  op.setAmount(1000);
  auto vote = req.send().wait(io_.waitScope);
  EXPECT_EQ(vote.getVote(), wire::Vote::NO);
  EXPECT_NE(std::string(vote.getReason().cStr()).find("release floor"), std::string::npos) << vote.getReason().cStr();
  EXPECT_EQ(account("bank-b", "bob"), bal(19, 0));

  // The open interaction's branch was kept, and commits.
  EXPECT_EQ(unfinishedAt("bank-a").size(), 1u);
  auto c = held.txn->commit().wait(io_.waitScope);
  EXPECT_EQ(c.outcome, ClientOutcome::Committed) << c.reason;
  EXPECT_TRUE(eventually([&] { return account("bank-a", "alice") == bal(1000 - 19 - 7, 0); }))
      << account("bank-a", "alice").first << " held " << account("bank-a", "alice").second;
}

TEST_F(ArchiveTest, AnOperatorDropsOldPeriodsAuditedAndOnlyThose) {
  open("bank-a", "alice", 1000);
  open("bank-b", "bob", 0);
  auto o = submit(transferOps("bank-a:alice", "bank-b:bob", 1));
  ASSERT_EQ(o.outcome, ClientOutcome::Committed);
  const std::string today = Archive::periodOf(wallMicros());
  const std::string periods = dir_ + "/coordinator/archive";
  ASSERT_TRUE(eventually([&] { return fs::is_directory(periods + "/" + today) && !hot(o.seq); },
                         std::chrono::seconds(10)));
  // An old period, as an earlier year would have left it: today's copied
  // while the coordinator is stopped.
  cluster_->stopCoordinator();
  fs::copy(periods + "/" + today, periods + "/2020-01-01", fs::copy_options::recursive);
  cluster_->startCoordinator();
  reconnect();
  auto list = ctl("--json archive list");
  ASSERT_EQ(list.exitCode, 0) << list.output;
  auto ps = JsonReader::parse(list.output)["periods"].array();
  ASSERT_EQ(ps.size(), 2u) << list.output;
  EXPECT_EQ(ps[0]["name"].str(), "2020-01-01");
  EXPECT_GE(ps[0]["interactions"].whole(), 3u);  // the opens and the transfer, at least
  EXPECT_EQ(ps[1]["name"].str(), today);

  // Today's period is written to: never dropped, whatever the retention.
  auto tooNew = ctl("archive drop --before 2999-01-01 --why test");
  EXPECT_EQ(tooNew.exitCode, 1) << tooNew.output;
  EXPECT_NE(tooNew.output.find("archive_retention_days = 0 keeps every period from " + today), std::string::npos)
      << tooNew.output;
  auto none = ctl("archive drop --before 2019-06-01 --why test");
  EXPECT_EQ(none.exitCode, 1) << none.output;
  EXPECT_NE(none.output.find("no archive period before 2019-06-01"), std::string::npos) << none.output;
  for (const char* bad : {"archive drop --before 2020-13-01 --why x", "archive drop --before yesterday --why x",
                          "archive drop --before 2020-01-02", "archive"}) {
    EXPECT_EQ(ctl(bad).exitCode, 2) << bad;
  }

  auto dropped = ctl("archive drop --before 2020-01-02 --why 'retention of 2020 ended' --who auditor");
  EXPECT_EQ(dropped.exitCode, 0) << dropped.output;
  EXPECT_NE(dropped.output.find("dropped 1 period(s): 2020-01-01"), std::string::npos) << dropped.output;
  EXPECT_FALSE(fs::exists(periods + "/2020-01-01"));
  auto after = JsonReader::parse(ctl("--json archive list").output)["periods"].array();
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0]["name"].str(), today);
  auto audit = ctl("audit");
  EXPECT_NE(audit.output.find("\"action\":\"archive-drop\""), std::string::npos) << audit.output;
  EXPECT_NE(audit.output.find("retention of 2020 ended"), std::string::npos) << audit.output;
  EXPECT_NE(audit.output.find("auditor"), std::string::npos) << audit.output;
  ASSERT_TRUE(query(o.seq)) << "today's period still answers";
}

TEST_F(ArchiveTest, RetentionOutOfRangeIsRefusedBeforeAnythingStarts) {
  for (const char* bad : {"hot_retention_s = 0", "hot_retention_s = 40000000", "archive_map_size_mb = 1",
                          "archive_retention_days = -1", "archive_retention_days = 40000"}) {
    std::string cfg = dir_ + "/bad.toml";
    std::ofstream(cfg) << "[coordinator]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"" << dir_ << "/never\"\n" << bad
                       << "\n[participants]\n";
    auto r = run("timeout 10 " + binDir() + "/keel-coordinator --config " + cfg + " --init");
    EXPECT_EQ(r.exitCode, 2) << bad << ": " << r.output;
    std::string key = std::string(bad).substr(0, std::string(bad).find(' '));
    EXPECT_NE(r.output.find(key), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir_ + "/never")) << "a refused start changes nothing";
  }
}

}  // namespace
}  // namespace keel::test
