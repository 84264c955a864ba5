// keelctl's renderings of what a peer sent: whatever it sent, --json prints
// one valid JSON document.

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
  EXPECT_EQ(printForgotten(out, 2, {Xid{5, 1}}, /*json=*/true), kExitRefused);
  Json doc = JsonReader::parse(out.str());
  EXPECT_EQ(doc["refused"].array().at(0).str(), "5.1");
  EXPECT_EQ(doc["code"].whole(), std::uint64_t(kExitRefused));
}

}  // namespace
}  // namespace keel::ctl
