// keelctl --json as a script reads it: every command prints exactly one
// JSON document on stdout, read here by a strict reader (strict_json.h), the
// answer or {"error":…,"code":…} with the exit status; stderr keeps its text.

#include <set>
#include <sstream>

#include "common/strict_json.h"
#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

TEST(StrictJsonTest, ReadsOneDocumentAndNothingElse) {
  auto v = JsonReader::parse(" {\"a\":[1,-0.5e+3,\"x\\u00e9\\ud83d\\ude00\\n\",true,null],\"b\":{\"c\":[]}}\n");
  ASSERT_EQ(v["a"].array().size(), 5u);
  EXPECT_EQ(v["a"].array()[0].whole(), 1u);
  EXPECT_EQ(v["a"].array()[1].text, "-0.5e+3");
  EXPECT_EQ(v["a"].array()[2].str(), "x\xc3\xa9\xf0\x9f\x98\x80\n");
  EXPECT_TRUE(v["a"].array()[3].flag());
  EXPECT_EQ(v["a"].array()[4].kind, Json::Kind::Null);
  EXPECT_TRUE(v["b"]["c"].array().empty());
  EXPECT_EQ(JsonReader::parse("\"\xe2\x82\xac\"").str(), "\xe2\x82\xac");
  EXPECT_EQ(JsonReader::parse(R"("\"\\\/\b\f\n\r\t")").str(), "\"\\/\b\f\n\r\t");
  const char* bad[] = {
      "",                                   // nothing
      "\n",                                 // nothing but a line
      "{}\n{}\n",                           // two documents
      "{\"a\":1}{\"a\":2}",                 // two documents on one line
      "seq 5: committed (request id x)\n",  // text
      "keelctl: no interaction 5\n",        // text
      "{\"a\":1,}",
      "[1,]",
      "[1 2]",
      "{\"a\":1,\"a\":2}",  // a member named twice
      "{'a':1}",
      "{a:1}",
      "01",
      ".5",
      "+1",
      "-",
      "1.",
      "1e",
      "NaN",
      "tru",
      "\"tab\there\"",
      "\"unterminated",
      "\"\\x\"",
      "\"\\",
      "\"\\u12\"",
      "\"\\ud800\"",
      "\"\\udc00\"",
      "\"\xff\"",
      "\"\xc0\xaf\"",          // overlong '/'
      "\"\xed\xa0\x80\"",      // a surrogate in UTF-8
      "\"\xf4\x90\x80\x80\"",  // past U+10FFFF
      "\"\xe2\x82\"",          // cut short
  };
  for (const char* text : bad) EXPECT_THROW(JsonReader::parse(text), JsonError) << text;
  EXPECT_THROW(v["missing"], JsonError);
  EXPECT_THROW(v["a"].str(), JsonError);
  EXPECT_THROW(v["a"].array()[1].whole(), JsonError);
}

class KeelctlJsonTest : public ClusterTest {
 protected:
  // An interaction left open stays open while the test looks at it.
  std::string coordinatorToml() override { return ClusterTest::coordinatorToml() + "interaction_timeout_ms = 60000\n"; }

  // "-c COORDINATOR ": what most lines start with.
  std::string c() { return "-c " + cluster_->coordinatorAddress() + " "; }
  std::string agentA() { return cluster_->agentAddress("bank-a"); }
  std::string errPath() { return dir_ + "/keelctl.stderr"; }

  // Runs `keelctl LINE --json`. Its stdout must be exactly one JSON
  // document and its exit status `status`; "error" and "code" are in the
  // document exactly when the status is not 0, "code" equal to it.
  // Returns the document (null when it was not one: the test has failed).
  Json ctl(const std::string& line, int status) {
    SCOPED_TRACE("keelctl " + line + " --json");
    auto r = runStdout(binDir() + "/keelctl " + line + " --json 2>" + errPath());
    std::string err = readFile(errPath());
    noteSubcommand(line);
    EXPECT_EQ(r.exitCode, status) << "stdout: " << r.output << "\nstderr: " << err;
    Json doc;
    try {
      doc = JsonReader::parse(r.output);
    } catch (const JsonError& e) {
      ADD_FAILURE() << e.what() << "\nstdout: " << r.output << "\nstderr: " << err;
      return doc;
    }
    EXPECT_TRUE(doc.isObject()) << r.output;
    if (status == 0) {
      EXPECT_FALSE(doc.has("error") || doc.has("code")) << r.output;
      EXPECT_EQ(err, "");
    } else {
      EXPECT_TRUE(doc.has("error") && doc.has("code")) << r.output;
      if (doc.has("code")) {
        EXPECT_EQ(doc["code"].whole(), std::uint64_t(status)) << r.output;
      }
    }
    return doc;
  }

  // A command that could not finish: exactly {"error":MESSAGE,"code":status},
  // MESSAGE holding `message`, and stderr says it as well.
  void expectError(const std::string& line, int status, const std::string& message) {
    auto doc = ctl(line, status);
    if (!doc.has("error")) return;
    EXPECT_EQ(doc.members.size(), 2u) << line;
    EXPECT_NE(doc["error"].str().find(message), std::string::npos) << line << "\n" << doc["error"].str();
    std::string err = readFile(errPath());
    EXPECT_NE(err.find(doc["error"].str()), std::string::npos) << line << "\n" << err;
  }

  // keelctl's subcommands, as its --help lists them.
  std::set<std::string> subcommands() {
    const std::string heading = "\nSubcommands:\n";
    auto help = runStdout(binDir() + "/keelctl --help").output;
    std::set<std::string> out;
    auto at = help.find(heading);
    if (at == std::string::npos) return out;
    std::istringstream lines(help.substr(at + heading.size()));
    std::string line;
    while (std::getline(lines, line) && line.rfind("  ", 0) == 0) {
      std::istringstream words(line);
      std::string name;
      words >> name;
      out.insert(name);
    }
    return out;
  }

  // The subcommands the lines run name, for the check that every one ran.
  void noteSubcommand(const std::string& line) {
    if (known_.empty()) known_ = subcommands();
    std::istringstream words(line);
    std::string w;
    while (words >> w) {
      if (known_.count(w) != 0) {
        ran_.insert(w);
        return;
      }
    }
  }

  // An interactive interaction left open: a debit of 5 from alice executed
  // at bank-a (its branch active), never committed.
  KeelClient::Begun openInteraction() {
    auto b = client_->begin(SubmitRequest{}).wait(io_.waitScope);
    EXPECT_TRUE(b.txn.get() != nullptr);
    auto e = b.txn->execute({Op{"bank-a", OpKind::Debit, "alice", 5}}).wait(io_.waitScope);
    EXPECT_EQ(e.outcome, ClientOutcome::Committed) << e.reason;
    return b;
  }

  std::set<std::string> known_, ran_;
};

void expectCommitted(const Json& doc) {
  if (!doc.isObject()) return;
  EXPECT_EQ(doc["outcome"].str(), "committed");
  EXPECT_GT(doc["seq"].whole(), 0u);
  EXPECT_FALSE(doc["request_id"].str().empty());
  EXPECT_FALSE(doc["replayed"].flag());
}

TEST_F(KeelctlJsonTest, EveryCommandAnswersWithOneDocument) {
  expectCommitted(ctl(c() + "open bank-a:alice 1000", 0));
  expectCommitted(ctl(c() + "open bank-b:bob", 0));
  auto t = ctl(c() + "transfer bank-a:alice bank-b:bob 100 --request-id j-1", 0);
  expectCommitted(t);
  ASSERT_TRUE(t.isObject());
  EXPECT_EQ(t["request_id"].str(), "j-1");
  std::uint64_t seq = t["seq"].whole();
  EXPECT_EQ(t["seq_text"].str(), seqText(seq));
  std::string number = std::to_string(seq);

  // Balances: one document, one entry per account, with the outcome.
  auto two = ctl(c() + "balance bank-a:alice bank-b:bob", 0);
  expectCommitted(two);
  auto& b = two["balances"].array();
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0]["account"].str(), "bank-a:alice");
  EXPECT_EQ(b[0]["balance"].whole(), 900u);
  EXPECT_EQ(b[0]["available"].whole(), 900u);
  EXPECT_EQ(b[1]["account"].str(), "bank-b:bob");
  EXPECT_EQ(b[1]["balance"].whole(), 100u);
  auto one = ctl(c() + "balance bank-b:bob", 0);
  expectCommitted(one);
  EXPECT_EQ(one["balances"].array().size(), 1u);

  auto q = ctl(c() + "query " + t["seq_text"].str(), 0);
  EXPECT_EQ(q["interaction"]["seq"].whole(), seq);
  EXPECT_EQ(q["interaction"]["seq_text"].str(), seqText(seq));
  EXPECT_EQ(ctl(c() + "query " + number, 0)["interaction"]["seq"].whole(), seq);
  EXPECT_EQ(q["interaction"]["state"].str(), "committed");
  EXPECT_EQ(q["rollback"].kind, Json::Kind::Null);
  EXPECT_EQ(ctl(c() + "query --request-id j-1", 0)["interaction"]["seq"].whole(), seq);

  // Nothing to list is an empty list in the same document.
  EXPECT_TRUE(ctl(c() + "audit", 0)["entries"].array().empty());
  auto none = ctl(c() + "list", 0);
  EXPECT_TRUE(none["unfinished"].array().empty());
  EXPECT_TRUE(none["heuristic"].array().empty());
  auto i = ctl(c() + "info", 0);
  EXPECT_GT(i["node_id"].whole(), 0u);
  EXPECT_EQ(i["unfinished"].whole(), 0u);
  EXPECT_GE(i["committed"].whole(), 3u);
  auto s = ctl(c() + "stats", 0);
  EXPECT_EQ(s["in_doubt"].whole(), 0u);
  EXPECT_EQ(s["count"].whole(), 0u);
  EXPECT_EQ(ctl(c() + "retry", 0)["woken"].whole(), 0u);

  // An interaction left open: listed, its branch shown by the agent, then
  // rolled back by an operator (audited).
  auto open = openInteraction();
  std::string openSeq = std::to_string(open.txn->seq());
  std::string openSeqText = seqText(open.txn->seq());
  auto l = ctl(c() + "list --limit 10", 0);
  ASSERT_EQ(l["unfinished"].array().size(), 1u);
  EXPECT_EQ(l["unfinished"].array()[0]["seq"].whole(), open.txn->seq());
  EXPECT_EQ(l["unfinished"].array()[0]["seq_text"].str(), openSeqText);
  auto br = ctl("branches --agent " + agentA(), 0);
  EXPECT_EQ(br["agent"].str(), "bank-a");
  ASSERT_EQ(br["unfinished"].array().size(), 1u);
  EXPECT_EQ(br["unfinished"].array()[0]["xid"].str().rfind(openSeq + ".", 0), 0u);
  EXPECT_EQ(br["unfinished"].array()[0]["xid_text"].str().rfind(openSeqText + ".", 0), 0u);
  EXPECT_EQ(br["unfinished"].array()[0]["state"].str(), "active");
  EXPECT_EQ(br["held"].whole(), 5u);
  EXPECT_EQ(ctl(c() + "retry " + openSeq, 0)["woken"].kind, Json::Kind::Number);
  auto r = ctl(c() + "resolve " + openSeqText + " --abort --who tester --why 'json test'", 0);
  EXPECT_TRUE(r["done"].flag());
  EXPECT_FALSE(r["reason"].str().empty());
  auto a = ctl(c() + "audit --limit 5", 0);
  ASSERT_EQ(a["entries"].array().size(), 1u);
  EXPECT_EQ(a["entries"].array()[0]["action"].str(), "force-abort");
  EXPECT_EQ(a["entries"].array()[0]["seq"].whole(), open.txn->seq());
  EXPECT_EQ(a["entries"].array()[0]["seq_text"].str(), openSeqText);
  EXPECT_EQ(a["entries"].array()[0]["why"].str(), "json test");
  EXPECT_TRUE(eventually([&] { return unfinishedAt("bank-a").empty(); }));

  // The transfer's branch at bank-a is finished, but its coordinator's
  // incarnation lives and has not released it: forget keeps it.
  std::string xid;
  for (auto& branch : q["interaction"]["branches"].array()) {
    if (branch["participant"].str() == "bank-a") xid = number + "." + std::to_string(branch["branch"].whole());
  }
  ASSERT_FALSE(xid.empty()) << "no bank-a branch in the query of " << seq;
  auto f = ctl("forget --agent " + agentA() + " " + xid, 1);
  EXPECT_EQ(f["forgotten"].whole(), 0u);
  ASSERT_EQ(f["refused_reasons"].array().size(), 1u);
  EXPECT_NE(f["refused_reasons"].array()[0].str().find("a finished branch, kept while a late prepare"),
            std::string::npos)
      << f["refused_reasons"].array()[0].str();

  // A backup: one document with the manifest's fields and the directory.
  auto bk = ctl(c() + "backup --to " + dir_ + "/json-backup", 0);
  EXPECT_EQ(bk["dir"].str(), dir_ + "/json-backup");
  EXPECT_EQ(bk["kind"].str(), "coordinator");
  EXPECT_GE(bk["records"].whole(), 4u);
  EXPECT_GT(bk["bytes"].whole(), 0u);

  // An export to a file: the summary is the document.
  auto ex = ctl(c() + "export --from 2020-01-01 --to 2100-01-01 --out " + dir_ + "/json-export.jsonl", 0);
  EXPECT_GE(ex["interactions"].whole(), 4u);
  EXPECT_EQ(ex["out"].str(), dir_ + "/json-export.jsonl");

  // A search: the matches and whether there are more.
  auto found = ctl(c() + "search --from 2020-01-01 --to 2100-01-01 --limit 2", 0);
  EXPECT_EQ(found["interactions"].array().size(), 2u);
  EXPECT_TRUE(found["more"].flag());

  // The archive's periods (none yet: nothing is an hour old) and a drop
  // that finds none: each one document.
  EXPECT_TRUE(ctl(c() + "archive list", 0)["periods"].array().empty());
  auto drop = ctl(c() + "archive drop --before 2020-01-01 --why 'json test'", 1);
  EXPECT_FALSE(drop["done"].flag());
  EXPECT_NE(drop["reason"].str().find("no archive period before 2020-01-01"), std::string::npos) << drop["reason"].str();

  // Every subcommand keelctl --help lists ran above.
  EXPECT_EQ(ran_, subcommands());
  EXPECT_GE(ran_.size(), 16u);
}

TEST_F(KeelctlJsonTest, EveryErrorIsOneDocumentWithTheExitStatus) {
  ASSERT_EQ(ctl(c() + "open bank-a:alice 1000", 0)["outcome"].str(), "committed");
  ASSERT_EQ(ctl(c() + "open bank-b:bob", 0)["outcome"].str(), "committed");

  // Bad usage, by keelctl's own checks and by CLI11's: exit 2, nothing sent.
  std::string t = c() + "transfer bank-a:alice bank-b:bob ";
  expectError(t + "1.5", 2, "amount '1.5' is not a whole number");
  expectError(t + "0", 2, "amount 0 is out of range (1..1000000000000000)");
  expectError(t + "5 --request-id ''", 2, "--request-id is empty");
  expectError(t + "5 --retry-for 25h", 2, "--retry-for 25h is out of range (0ms..24h)");
  expectError(c() + "transfer alice bank-b:bob 1", 2, "'alice' is not PARTICIPANT:ACCOUNT");
  expectError(c() + "--timeout 30 info", 2, "--timeout '30' has no unit");
  expectError("-c nonsense info", 2, "--coordinator: address 'nonsense' must be host:port");
  expectError(c() + "query", 2, "query needs SEQ or --request-id ID");
  expectError(c() + "resolve 5 --why x", 2, "resolve needs --commit, --abort or --reconciled");
  expectError(c() + "list --limit 0", 2, "--limit 0 is out of range (1..10000)");
  expectError("forget --agent " + agentA() + " 5", 2, "'5' is not SEQ.BRANCH");
  expectError(c() + "query 1:", 2, "seq '1:' is not NODE:COUNTER (such as 1:5) or a whole number");
  expectError(c() + "retry 65536:5", 2, "seq '65536:5': node 65536 is out of range (0..65535)");
  expectError(c() + "resolve 1:281474976710656 --abort --why x", 2,
              "seq '1:281474976710656': counter 281474976710656 is out of range (0..281474976710655)");
  expectError(c() + "query 18446744073709551616", 2,
              "seq '18446744073709551616' is out of range (0..18446744073709551615)");
  expectError("forget --agent " + agentA() + " x:5.1", 2,
              "'x:5.1': seq 'x:5' is not NODE:COUNTER (such as 1:5) or a whole number");
  expectError(t, 2, "amount is required");
  expectError(c() + "balance", 2, "accounts is required");
  expectError(c() + "frobnicate", 2, "unknown command 'frobnicate' (the commands are open, transfer,");
  expectError(c() + "info --no-such-flag", 2, "--no-such-flag");
  expectError(c() + "resolve 5 --commit --abort --why x", 2, "excludes");
  // --json before the command works the same.
  auto first = runStdout(binDir() + "/keelctl --json " + c() + "query 0 2>/dev/null");
  EXPECT_EQ(first.exitCode, 2);
  EXPECT_EQ(first.output, "{\"error\":\"seq 0 is out of range (no interaction has seq 0)\",\"code\":2}\n");

  // An argument that is not UTF-8 still makes valid JSON: U+FFFD stands in
  // for the bytes, here and in what the coordinator answers about them.
  auto notUtf8 = ctl(c() + "transfer \"$(printf 'x\\377')\" bank-b:bob 1", 2);
  EXPECT_EQ(notUtf8["error"].str(), "'x\xef\xbf\xbd' is not PARTICIPANT:ACCOUNT (for example bank-a:alice)");
  auto unknown = ctl(c() + "transfer \"$(printf 'bank-\\377:alice')\" bank-b:bob 1", 2);
  EXPECT_EQ(unknown["outcome"].str(), "invalid");
  EXPECT_NE(unknown["reason"].str().find("'bank-\xef\xbf\xbd'"), std::string::npos) << unknown["reason"].str();

  // Nothing to find: exit 1.
  expectError(c() + "query 999", 1, "no interaction 0:999");
  expectError(c() + "query --request-id nope", 1, "no interaction has request id nope");

  // Nobody answers: exit 3, for the coordinator and for an agent.
  expectError("-c 127.0.0.1:1 info", 3, "no answer from 127.0.0.1:1 (connection refused)");
  expectError("-c 127.0.0.1:1 audit", 3, "no answer from 127.0.0.1:1 (connection refused)");
  expectError("-c 127.0.0.1:1 transfer bank-a:alice bank-b:bob 1 --retry-for 0 --request-id t-1", 3,
              "request id t-1 may or may not have run");
  expectError("branches --agent 127.0.0.1:1", 3, "no answer from 127.0.0.1:1 (connection refused)");
  expectError("forget --agent 127.0.0.1:1 5.1", 3, "no answer from 127.0.0.1:1 (connection refused)");

  // The coordinator's and the agent's refusals: the answer as usual, with
  // the error and the exit status added.
  auto over = ctl(t + "100000", 1);
  EXPECT_EQ(over["outcome"].str(), "rolled-back");
  EXPECT_NE(over["error"].str().find("insufficient funds"), std::string::npos) << over["error"].str();
  std::uint64_t rolledBack = over["seq"].whole();
  auto invalid = ctl(c() + "transfer bank-a:alice bank-x:bob 1", 2);
  EXPECT_EQ(invalid["outcome"].str(), "invalid");
  ctl(t + "5 --request-id r-1", 0);
  auto reused = ctl(t + "6 --request-id r-1", 2);
  EXPECT_NE(reused["error"].str().find("reused with other operations"), std::string::npos) << reused["error"].str();
  auto noBalance = ctl(c() + "balance bank-a:nobody", 1);
  EXPECT_EQ(noBalance["outcome"].str(), "rolled-back");
  EXPECT_TRUE(noBalance["balances"].array().empty());

  auto finished = ctl(c() + "resolve " + std::to_string(rolledBack) + " --commit --why x", 1);
  EXPECT_FALSE(finished["done"].flag());
  EXPECT_NE(finished["error"].str().find("is finished"), std::string::npos) << finished["error"].str();
  auto notHeuristic = ctl(c() + "resolve " + std::to_string(rolledBack) + " --reconciled --why x", 1);
  EXPECT_FALSE(notHeuristic["done"].flag());

  auto open = openInteraction();
  auto xids = unfinishedAt("bank-a");
  ASSERT_EQ(xids.size(), 1u);
  std::string xid = std::to_string(xids[0].seq) + "." + std::to_string(xids[0].branch);
  auto refused = ctl("forget --agent " + agentA() + " " + xid, 1);
  EXPECT_EQ(refused["forgotten"].whole(), 0u);
  ASSERT_EQ(refused["refused"].array().size(), 1u);
  EXPECT_EQ(refused["refused"].array()[0].str(), xid);
  ASSERT_EQ(refused["refused_text"].array().size(), 1u);
  EXPECT_EQ(refused["refused_text"].array()[0].str(), xids[0].str());
  ASSERT_EQ(refused["refused_reasons"].array().size(), 1u);
  EXPECT_EQ(refused["refused_reasons"].array()[0].str(), "not finished: active");
  EXPECT_EQ(refused["error"].str(), "refused " + xids[0].str() + " (not finished: active)");
  ASSERT_TRUE(open.txn->rollback().wait(io_.waitScope).outcome == ClientOutcome::RolledBack);
}

}  // namespace
}  // namespace keel::test
