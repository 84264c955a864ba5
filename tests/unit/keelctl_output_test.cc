// keelctl's renderings: whatever a peer sent, --json prints one valid JSON
// document; text names a seq as NODE:COUNTER, JSON has its number as well.

#include <gtest/gtest.h>

#include <sstream>

#include "common/strict_json.h"
#include "tools/keelctl/output.h"

namespace keel::ctl {
namespace {

TEST(KeelctlOutputTest, AuditEntriesThatAreNotJsonObjectsStayInsideOneDocument) {
  // What a damaged or foreign coordinator might send as audit entries.
  std::vector<std::string> entries{R"({"seq":7,"who":"op"})", "not json", R"({"a":1} {"b":2})", "[1,2]",
                                   std::string("{\"x\":\"\x01\"}"), ""};
  std::ostringstream out;
  printAudit(out, entries, /*json=*/true);
  Json doc = JsonReader::parse(out.str());  // throws unless exactly one valid document
  const auto& got = doc["entries"].array();
  ASSERT_EQ(got.size(), entries.size());
  EXPECT_EQ(got[0]["seq"].whole(), 7u);  // a good entry goes in as it is
  EXPECT_FALSE(got[0].has("unreadable"));
  for (std::size_t i = 1; i < entries.size(); ++i) {
    EXPECT_EQ(got[i]["unreadable"].str(), entries[i]) << "entry " << i;
  }
}

TEST(KeelctlOutputTest, InfoNamesTheParticipantsAndTheClusterCounters) {
  CoordinatorInfo info;
  info.nodeId = 2;
  info.participants = {"bank-a", "bank \"b\""};
  info.committed = 5;
  std::ostringstream plain;
  printInfo(plain, info, /*json=*/true);
  Json doc = JsonReader::parse(plain.str());
  ASSERT_EQ(doc["participants"].array().size(), 2u);
  EXPECT_EQ(doc["participants"].array()[1].str(), "bank \"b\"");
  EXPECT_EQ(doc["committed"].whole(), 5u);
  EXPECT_FALSE(doc.has("etcd_txns"));  // a single coordinator has no etcd counters
  info.clustered = true;
  info.etcdTxns = 9;
  std::ostringstream member;
  printInfo(member, info, /*json=*/true);
  EXPECT_EQ(JsonReader::parse(member.str())["etcd_txns"].whole(), 9u);
}

TEST(KeelctlOutputTest, AuditWithNoEntriesIsAnEmptyList) {
  std::ostringstream out;
  printAudit(out, {}, /*json=*/true);
  EXPECT_TRUE(JsonReader::parse(out.str())["entries"].array().empty());
}

TEST(KeelctlOutputTest, RefusedBranchesAreNamedSeqDotBranch) {
  std::ostringstream out;
  EXPECT_EQ(printForgotten(out, 2, {Xid{5, 1}, Xid{makeSeq(1, 5), 2}}, {"not finished: prepared", "a tombstone, kept"},
                           /*json=*/true),
            kExitRefused);
  Json doc = JsonReader::parse(out.str());
  EXPECT_EQ(doc["refused"].array().at(0).str(), "5.1");
  EXPECT_EQ(doc["refused"].array().at(1).str(), "281474976710661.2");
  EXPECT_EQ(doc["refused_text"].array().at(0).str(), "0:5.1");
  EXPECT_EQ(doc["refused_text"].array().at(1).str(), "1:5.2");
  EXPECT_EQ(doc["refused_reasons"].array().at(1).str(), "a tombstone, kept");
  EXPECT_EQ(doc["error"].str(), "refused 0:5.1 (not finished: prepared); 1:5.2 (a tombstone, kept)");
  EXPECT_EQ(doc["code"].whole(), std::uint64_t(kExitRefused));
  std::ostringstream text;
  printForgotten(text, 2, {Xid{makeSeq(1, 5), 2}}, {"not finished: active"}, /*json=*/false);
  EXPECT_EQ(text.str(), "forgotten 2\n  refused 1:5.2 (not finished: active)\n");
}

// A seq in text is NODE:COUNTER; JSON has the number and that text.
TEST(KeelctlOutputTest, AnOutcomeNamesItsSeqAsNodeAndCounter) {
  auto o = SubmitOutcome::of(makeSeq(1, 5), ClientOutcome::InDoubt, "no answer", "r-1");
  std::ostringstream text;
  EXPECT_EQ(printOutcome(text, o, /*json=*/false), kExitInDoubt);
  EXPECT_EQ(text.str(),
            "seq 1:5: in-doubt (request id r-1): no answer\n"
            "  the outcome is not known yet: look it up later with keelctl query 1:5\n");
  std::ostringstream json;
  printOutcome(json, o, /*json=*/true);
  Json doc = JsonReader::parse(json.str());
  EXPECT_EQ(doc["seq"].whole(), 281474976710661u);
  EXPECT_EQ(doc["seq_text"].str(), "1:5");

  std::ostringstream node0;
  printOutcome(node0, SubmitOutcome::of(5, ClientOutcome::Committed, ""), /*json=*/false);
  EXPECT_EQ(node0.str(), "seq 0:5: committed\n");
}

TEST(KeelctlOutputTest, AnInvalidRequestHasNoSeqText) {
  std::ostringstream json;
  EXPECT_EQ(printOutcome(json, SubmitOutcome::of(0, ClientOutcome::Invalid, "bad"), /*json=*/true), kExitUsage);
  Json doc = JsonReader::parse(json.str());
  EXPECT_EQ(doc["seq"].whole(), 0u);
  EXPECT_EQ(doc["seq_text"].kind, Json::Kind::Null);
  std::ostringstream text;
  printOutcome(text, SubmitOutcome::of(0, ClientOutcome::Invalid, "bad"), /*json=*/false);
  EXPECT_EQ(text.str(), "invalid: bad\n");
}

TEST(KeelctlOutputTest, BranchesAndUnfinishedNameSeqsAsNodeAndCounter) {
  AgentSnapshot snap;
  snap.name = "bank-a";
  BranchView prepared;
  prepared.xid = Xid{makeSeq(2, 7), 1};
  prepared.prepared = true;
  prepared.epoch = 3;
  std::ostringstream text;
  printBranches(text, snap, {prepared}, /*json=*/false);
  EXPECT_NE(text.str().find("\n  2:7.1  prepared  epoch 3\n"), std::string::npos) << text.str();
  std::ostringstream json;
  printBranches(json, snap, {prepared}, /*json=*/true);
  Json doc = JsonReader::parse(json.str());
  EXPECT_EQ(doc["unfinished"].array().at(0)["xid"].str(), std::to_string(makeSeq(2, 7)) + ".1");
  EXPECT_EQ(doc["unfinished"].array().at(0)["xid_text"].str(), "2:7.1");

  InteractionRecord r;
  r.seq = makeSeq(1, 5);
  r.state = InteractionRecord::State::Committing;
  std::ostringstream list;
  printUnfinished(list, {r}, {}, /*json=*/false);
  EXPECT_NE(list.str().find("\n  1:5  committing  age "), std::string::npos) << list.str();
  std::ostringstream listJson;
  printUnfinished(listJson, {r}, {}, /*json=*/true);
  Json l = JsonReader::parse(listJson.str());
  EXPECT_EQ(l["unfinished"].array().at(0)["seq"].whole(), 281474976710661u);
  EXPECT_EQ(l["unfinished"].array().at(0)["seq_text"].str(), "1:5");
}

}  // namespace
}  // namespace keel::ctl
