// Config parsing (common/config.h) from text. Regression tests for what
// tests/fuzz found (docs/fuzzing.md).

#include "common/config.h"

#include <gtest/gtest.h>

#include <string>

namespace keel {
namespace {

std::string errorOf(std::string_view text) {
  try {
    parseCoordinatorConfig("c.toml", &text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

// Found by fuzz_config: an integer key given a float out of int64's range
// was converted to int64 before its type was checked (undefined behaviour;
// UBSan stops the unit tests of build-asan on it).
TEST(Config, AFloatWhereAnIntegerBelongsIsRefusedBeforeAnyConversion) {
  for (const char* v : {"2E56", "-2E56", "1.5", "inf", "nan"}) {
    std::string text = std::string("[coordinator]\nbatch_max = ") + v + "\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
    EXPECT_EQ(errorOf(text), "c.toml: [coordinator] batch_max must be an integer") << v;
  }
}

TEST(Config, TextParsesAsAFileDoes) {
  std::string_view text = "[coordinator]\nbatch_max = 64\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
  auto c = parseCoordinatorConfig("c.toml", &text);
  EXPECT_EQ(c.batchMax, 64u);
  EXPECT_EQ(c.participants.at("bank-a"), "127.0.0.1:7401");
}

// [participants] NAME = "embedded:FILE": FILE taken from the config file's
// folder when relative; never with [cluster].
TEST(Config, AnEmbeddedParticipantNamesItsFileFromTheConfigsFolder) {
  std::string_view text =
      "[coordinator]\n[participants]\nbank-a = \"embedded:agents/../bank-a.toml\"\n"
      "bank-b = \"embedded:/etc/keel/bank-b.toml\"\nbank-c = \"127.0.0.1:7403\"\n";
  auto c = parseCoordinatorConfig("/srv/keel/coordinator.toml", &text);
  EXPECT_EQ(c.participants.at("bank-a"), "embedded:/srv/keel/bank-a.toml");
  EXPECT_EQ(embeddedConfigFile(c.participants.at("bank-a")), "/srv/keel/bank-a.toml");
  EXPECT_EQ(c.participants.at("bank-b"), "embedded:/etc/keel/bank-b.toml");
  EXPECT_TRUE(isEmbedded(c.participants.at("bank-b")));
  EXPECT_FALSE(isEmbedded(c.participants.at("bank-c")));
  EXPECT_EQ(embeddedConfigFile(c.participants.at("bank-c")), "");
  EXPECT_EQ(errorOf("[coordinator]\n[participants]\nbank-a = \"embedded:\"\n"),
            "c.toml: [participants] bank-a: \"embedded:\" needs the agent's config file after it");
  EXPECT_NE(errorOf("[coordinator]\n[participants]\nbank-a = \"embedded:a.toml\"\n"
                    "[cluster]\netcd = [\"127.0.0.1:2379\"]\n")
                .find("[participants] bank-a is embedded: not with [cluster]"),
            std::string::npos);
}

TEST(Config, AgentLazyDelayDefaultsTo10MsAndIsBounded) {
  const std::string base = "[agent]\nname = \"bank-a\"\nadapter = \"postgres\"\npostgres = \"dbname=a\"\n";
  std::string_view plain = base;
  EXPECT_EQ(parseAgentConfig("a.toml", &plain).lazyDelayMs, 10u);
  std::string set = base + "lazy_delay_ms = 25\n";
  std::string_view t = set;
  EXPECT_EQ(parseAgentConfig("a.toml", &t).lazyDelayMs, 25u);
  for (const char* v : {"0", "1001", "-1"}) {
    std::string bad = base + "lazy_delay_ms = " + v + "\n";
    std::string_view b = bad;
    try {
      parseAgentConfig("a.toml", &b);
      ADD_FAILURE() << "lazy_delay_ms = " << v << " was taken";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("lazy_delay_ms"), std::string::npos) << e.what();
    }
  }
}

TEST(Config, StagedCommitIsOnByDefaultAndCanBeTurnedOff) {
  std::string_view plain = "[coordinator]\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
  EXPECT_TRUE(parseCoordinatorConfig("c.toml", &plain).stagedCommit);
  std::string_view off = "[coordinator]\nstaged_commit = false\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
  EXPECT_FALSE(parseCoordinatorConfig("c.toml", &off).stagedCommit);
  EXPECT_EQ(errorOf("[coordinator]\nstaged_commit = \"no\"\n[participants]\nbank-a = \"127.0.0.1:7401\"\n"),
            "c.toml: [coordinator] staged_commit must be true or false");
}

TEST(Config, RedoModeIsOnByDefaultAndTakesTrueOrFalseOnly) {
  const std::string coord = "[coordinator]\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
  std::string_view plain = coord;
  EXPECT_TRUE(parseCoordinatorConfig("c.toml", &plain).redo);
  std::string off = "[coordinator]\nredo = false\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
  std::string_view o = off;
  EXPECT_FALSE(parseCoordinatorConfig("c.toml", &o).redo);
  EXPECT_EQ(errorOf("[coordinator]\nredo = \"yes\"\n[participants]\nbank-a = \"127.0.0.1:7401\"\n"),
            "c.toml: [coordinator] redo must be true or false");
  EXPECT_EQ(errorOf("[coordinator]\nredo = 1\n[participants]\nbank-a = \"127.0.0.1:7401\"\n"),
            "c.toml: [coordinator] redo must be true or false");
  const std::string agent = "[agent]\nname = \"bank-a\"\n";
  std::string_view a = agent;
  EXPECT_TRUE(parseAgentConfig("a.toml", &a).redo);
  std::string agentOff = agent + "redo = false\n";
  std::string_view ao = agentOff;
  EXPECT_FALSE(parseAgentConfig("a.toml", &ao).redo);
  std::string agentBad = agent + "redo = \"on\"\n";
  std::string_view ab = agentBad;
  try {
    parseAgentConfig("a.toml", &ab);
    ADD_FAILURE() << "redo = \"on\" was taken";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "a.toml: [agent] redo must be true or false");
  }
}

TEST(Config, AdminPlaneIsOffByDefaultAndLoopbackUnlessRemoteIsSaid) {
  const std::string base = "[coordinator]\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
  std::string_view none = base;
  EXPECT_EQ(parseCoordinatorConfig("c.toml", &none).admin.listen, "");
  std::string onText = base + "[admin]\nlisten = \"127.0.0.1:9400\"\n";
  std::string_view on = onText;
  EXPECT_EQ(parseCoordinatorConfig("c.toml", &on).admin.listen, "127.0.0.1:9400");
  std::string remoteText = base + "[admin]\nlisten = \"0.0.0.0:9400\"\nremote = true\n";
  std::string_view remote = remoteText;
  auto c = parseCoordinatorConfig("c.toml", &remote);
  EXPECT_TRUE(c.admin.remote);
  EXPECT_EQ(c.admin.listen, "0.0.0.0:9400");

  auto err = errorOf(base + "[admin]\nlisten = \"0.0.0.0:9400\"\n");
  EXPECT_NE(err.find("is not a loopback address"), std::string::npos) << err;
  EXPECT_NE(err.find("remote = true"), std::string::npos) << err;
  EXPECT_EQ(errorOf(base + "[admin]\nlisten = \"localhost\"\n"),
            "c.toml: [admin] listen: address 'localhost' must be host:port");
  EXPECT_EQ(errorOf(base + "[admin]\nlisten = \"127.0.0.1:9400\"\nport = 1\n").find("c.toml: [admin]"), 0u);
  EXPECT_EQ(errorOf(base + "[admin]\nremote = \"yes\"\n"), "c.toml: [admin] remote must be true or false");
  EXPECT_EQ(errorOf("admin = 5\n" + base), "c.toml: [admin] must be a table");

  std::string hostsText = base + "[admin]\nlisten = \"127.0.0.1:9400\"\nhosts = [\"Keel-Admin.example\"]\n";
  std::string_view hosts = hostsText;
  EXPECT_EQ(parseCoordinatorConfig("c.toml", &hosts).admin.hosts, std::vector<std::string>{"keel-admin.example"});
  EXPECT_EQ(errorOf(base + "[admin]\nhosts = [\"a.example:80\"]\n").find("c.toml: [admin] hosts must be"), 0u);

  // The agent reads the same section.
  std::string agentText = "[agent]\nname = \"bank-a\"\n[admin]\nlisten = \"127.0.0.1:9401\"\n";
  std::string_view agent = agentText;
  EXPECT_EQ(parseAgentConfig("a.toml", &agent).admin.listen, "127.0.0.1:9401");
}

// [log] format: text or json, the same key for coordinator and agent; unset
// ("") lets --log-format or KEEL_LOG_FORMAT decide.
TEST(Config, LogFormatIsTextOrJsonAndAnythingElseIsRefusedNamingTheFile) {
  const std::string base = "[coordinator]\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
  std::string_view none = base;
  EXPECT_EQ(parseCoordinatorConfig("c.toml", &none).log.format, "");
  for (const char* f : {"text", "json"}) {
    std::string text = base + "[log]\nformat = \"" + f + "\"\n";
    std::string_view v = text;
    EXPECT_EQ(parseCoordinatorConfig("c.toml", &v).log.format, f);
  }
  EXPECT_EQ(errorOf(base + "[log]\nformat = \"JSON\"\n"),
            "c.toml: [log] format 'JSON' is not known (known: text, json)");
  EXPECT_EQ(errorOf(base + "[log]\nformat = \"\"\n"), "c.toml: [log] format '' is not known (known: text, json)");
  EXPECT_EQ(errorOf(base + "[log]\nformat = 1\n"), "c.toml: [log] format must be a string");
  EXPECT_EQ(errorOf(base + "[log]\nformat = \"json\"\nlevel = \"debug\"\n"), "c.toml: [log] unknown key 'level'");
  EXPECT_EQ(errorOf("log = \"json\"\n" + base), "c.toml: [log] must be a table");

  // The agent reads the same section, and refuses the same way.
  std::string agentText = "[agent]\nname = \"bank-a\"\n[log]\nformat = \"json\"\n";
  std::string_view agent = agentText;
  EXPECT_EQ(parseAgentConfig("a.toml", &agent).log.format, "json");
  std::string badText = "[agent]\nname = \"bank-a\"\n[log]\nformat = \"xml\"\n";
  std::string_view bad = badText;
  try {
    parseAgentConfig("a.toml", &bad);
    ADD_FAILURE() << "format xml accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "a.toml: [log] format 'xml' is not known (known: text, json)");
  }
}

}  // namespace
}  // namespace keel
