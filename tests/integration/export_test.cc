// keelctl export: the interaction and rollback records of a time range, as
// jsonl or csv, streamed page by page from the coordinator's WAL.

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/strict_json.h"
#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

class ExportTest : public ClusterTest {
 protected:
  RunResult ctl(const std::string& args) {
    return runStdout("timeout 30 " + binDir() + "/keelctl -c " + cluster_->coordinatorAddress() + " " + args +
                     " 2>" + dir_ + "/stderr");
  }
  std::string err() {
    std::ifstream f(dir_ + "/stderr");
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
};

TEST_F(ExportTest, BothTablesOfARangeAsJsonlAndCsv) {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  int committed = 2, rolledBack = 0;
  for (int i = 0; i < 6; ++i) {
    // Every third overdraws: rolled back, with a rollback record.
    auto o = submit(transferOps("bank-a:alice", "bank-b:bob", i % 3 == 2 ? 1000 : 5));
    (o.outcome == ClientOutcome::Committed ? committed : rolledBack)++;
  }
  ASSERT_EQ(rolledBack, 2);
  // Rollback records are written once the rollback is confirmed; wait for
  // every interaction to be finished in the WAL.
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));

  auto j = ctl("export --from 2020-01-01 --to 2100-01-01");
  ASSERT_EQ(j.exitCode, 0) << err();
  auto ls = lines(j.output);
  ASSERT_EQ(ls.size(), std::size_t(committed + rolledBack)) << j.output;
  int withRollback = 0;
  for (const auto& l : ls) {
    auto doc = JsonReader::parse(l);
    EXPECT_GT(doc["interaction"]["seq"].whole(), 0u);
    if (doc["rollback"].kind != Json::Kind::Null) {
      ++withRollback;
      EXPECT_EQ(doc["interaction"]["state"].str(), "rolled-back") << l;
    }
  }
  EXPECT_EQ(withRollback, rolledBack);
  EXPECT_NE(err().find("exported 8 interactions and 2 rollback records to stdout"), std::string::npos) << err();

  auto c = ctl("export --from 2020-01-01T00:00:00Z --to 2100-01-01 --format csv");
  ASSERT_EQ(c.exitCode, 0) << err();
  auto rows = lines(c.output);
  ASSERT_EQ(rows.size(), std::size_t(1 + committed + 2 * rolledBack)) << c.output;
  EXPECT_EQ(rows[0].rfind("table,seq,seq_text,request_id,state,decision,created", 0), 0u) << rows[0];
  int rollbackRows = 0;
  for (const auto& r : rows) rollbackRows += r.rfind("rollback,", 0) == 0;
  EXPECT_EQ(rollbackRows, rolledBack);

  // An empty range: nothing but the csv header, exit 0.
  auto none = ctl("export --from 2000-01-01 --to 2000-01-02");
  EXPECT_EQ(none.exitCode, 0) << err();
  EXPECT_EQ(none.output, "");
  auto noneCsv = ctl("export --from 2000-01-01 --to 2000-01-02 --format csv");
  EXPECT_EQ(lines(noneCsv.output).size(), 1u);

  // --out with --json: the file holds the records, stdout the summary.
  std::string file = dir_ + "/export.jsonl";
  auto o = ctl("--json export --from 2020-01-01 --to 2100-01-01 --out " + file);
  ASSERT_EQ(o.exitCode, 0) << err();
  auto sum = JsonReader::parse(o.output);
  EXPECT_EQ(sum["interactions"].whole(), std::uint64_t(committed + rolledBack));
  EXPECT_EQ(sum["rollbacks"].whole(), std::uint64_t(rolledBack));
  std::ifstream f(file);
  EXPECT_EQ(lines(std::string(std::istreambuf_iterator<char>(f), {})).size(), std::size_t(committed + rolledBack));
  for (const auto& e : fs::directory_iterator(dir_)) {
    EXPECT_EQ(e.path().filename().string().find(".partial-"), std::string::npos) << e.path();
  }
}

// keelctl search: the same pages, filtered by participant and state, cut
// at --limit with "more" said.
TEST_F(ExportTest, SearchFiltersByParticipantAndStateAndSaysWhenThereIsMore) {
  open("bank-a", "alice", 100);
  open("bank-b", "bob", 0);
  for (int i = 0; i < 6; ++i) submit(transferOps("bank-a:alice", "bank-b:bob", i % 3 == 2 ? 1000 : 5));
  ASSERT_TRUE(eventually([&] { return client_->info().wait(io_.waitScope).unfinished == 0; }));
  auto parse = [&](const std::string& args) {
    auto r = ctl("--json search --from 2020-01-01 --to 2100-01-01 " + args);
    EXPECT_EQ(r.exitCode, 0) << args << ": " << r.output << err();
    return JsonReader::parse(r.output);
  };
  auto all = parse("");
  EXPECT_EQ(all["interactions"].array().size(), 8u);
  EXPECT_FALSE(all["more"].flag());
  auto rolled = parse("--state rolled-back");
  ASSERT_EQ(rolled["interactions"].array().size(), 2u);
  for (const auto& i : rolled["interactions"].array()) EXPECT_EQ(i["state"].str(), "rolled-back");
  // bank-b: its open and the six transfers (the rolled-back ones too: bank-b had a branch).
  EXPECT_EQ(parse("--participant bank-b")["interactions"].array().size(), 7u);
  EXPECT_EQ(parse("--participant bank-c")["interactions"].array().size(), 0u);
  auto cut = parse("--limit 3");
  EXPECT_EQ(cut["interactions"].array().size(), 3u);
  EXPECT_TRUE(cut["more"].flag());
  auto text = ctl("search --from 2020-01-01 --to 2100-01-01 --state committed --limit 2");
  EXPECT_EQ(text.exitCode, 0) << err();
  EXPECT_NE(text.output.find("2 interaction(s)"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("and more: raise --limit"), std::string::npos) << text.output;
  for (const char* bad : {"--state done", "--participant 'a b'", "--limit 0"}) {
    auto r = ctl(std::string("search --from 2020-01-01 --to 2100-01-01 ") + bad);
    EXPECT_EQ(r.exitCode, 2) << bad << ": " << r.output << err();
  }
  // The coordinator checks the state itself (a client other than keelctl).
  auto req = client_->capability().searchRequest();
  req.setFromUs(1);
  req.setToUs(~std::uint64_t(0) >> 1);
  req.setLimit(10);
  req.setState("done");
  try {
    req.send().wait(io_.waitScope);
    ADD_FAILURE() << "an unknown state was searched for";
  } catch (const kj::Exception& e) {
    EXPECT_NE(std::string(e.getDescription().cStr()).find("search: unknown state 'done' (preparing, committing"),
              std::string::npos)
        << e.getDescription().cStr();
  }
}

TEST_F(ExportTest, BadArgumentsAreRefusedBeforeAnythingIsSent) {
  std::string existing = dir_ + "/exists.jsonl";
  std::ofstream(existing) << "keep me\n";
  struct Case {
    std::string args, says;
  } cases[] = {
      {"export --from 2026-12-03 --to 2026-12-02", "--from must be before --to"},
      {"export --from 03/12/2026 --to now", "is not a time"},
      {"export --from 2026-02-30 --to now", "is not a time"},
      {"export --from 2026-12-01 --to now --format xml", "is not jsonl or csv"},
      {"export --from 2026-12-01 --to now --out " + existing, "exists; an export never overwrites"},
      {"--json export --from 2026-12-01 --to now", "needs --out FILE"},
      {"export --to now", "--from"},
  };
  for (const auto& c : cases) {
    auto r = ctl(c.args);
    EXPECT_EQ(r.exitCode, 2) << c.args << ": " << r.output << err();
    EXPECT_NE((r.output + err()).find(c.says), std::string::npos) << c.args << ": " << r.output << err();
  }
  std::ifstream f(existing);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(f), {}), "keep me\n");
}

}  // namespace
}  // namespace keel::test
