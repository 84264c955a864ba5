// Logging (common/log.h): the JSON format read back with the strict reader,
// the fields taken from messages, the text format as it was, and the repeat
// limit (nothing left out without being counted, from several threads too).

#include "common/log.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include "common/strict_json.h"

namespace keel {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> linesOf(const std::string& out) {
  std::vector<std::string> lines;
  std::size_t at = 0;
  while (at < out.size()) {
    std::size_t nl = out.find('\n', at);
    EXPECT_NE(nl, std::string::npos) << "a line without its newline: " << out.substr(at);
    if (nl == std::string::npos) break;
    lines.push_back(out.substr(at, nl - at));
    at = nl + 1;
  }
  return lines;
}

// A clock the test moves: windows end when it says so, not after 10 s.
struct FakeClock {
  Clock::time_point t = Clock::time_point{} + std::chrono::hours(1);
  RepeatLimit limit(std::size_t lines = 10, std::size_t maxKeys = 1024) {
    RepeatLimit l;
    l.lines = lines;
    l.maxKeys = maxKeys;
    l.now = [this] { return t; };
    return l;
  }
};

// The one JSON line `log` writes for `msg`.
Json jsonOf(const std::string& msg) {
  std::ostringstream out;
  auto logger = makeLogger("coordinator", LogFormat::Json, out);
  logger->info("{}", msg);
  auto lines = linesOf(out.str());
  EXPECT_EQ(lines.size(), 1u) << out.str();
  return JsonReader::parse(lines.at(0));
}

TEST(Log, JsonLinesParseStrictlyAndCarryTimeLevelComponentAndMessage) {
  std::ostringstream out;
  auto logger = makeLogger("agent bank-a", LogFormat::Json, out);
  logger->info("listening on {}", "127.0.0.1:7401");
  logger->warn("participant {} is slow", "bank-b");
  logger->error("fatal: {}", "disk full");
  auto lines = linesOf(out.str());
  ASSERT_EQ(lines.size(), 3u) << out.str();
  const std::regex rfc3339(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)");
  std::vector<std::pair<std::string, std::string>> want = {
      {"info", "listening on 127.0.0.1:7401"},
      {"warning", "participant bank-b is slow"},
      {"error", "fatal: disk full"}};
  for (std::size_t i = 0; i < lines.size(); ++i) {
    Json j = JsonReader::parse(lines[i]);
    EXPECT_TRUE(std::regex_match(j["time"].str(), rfc3339)) << j["time"].str();
    EXPECT_EQ(j["level"].str(), want[i].first);
    EXPECT_EQ(j["component"].str(), "agent bank-a");
    EXPECT_EQ(j["msg"].str(), want[i].second);
    EXPECT_FALSE(j.has("seq")) << lines[i];
    EXPECT_FALSE(j.has("request_id")) << lines[i];
    EXPECT_FALSE(j.has("suppressed")) << lines[i];
    EXPECT_EQ(j.members.front().first, "time") << "time comes first: " << lines[i];
  }
}

TEST(Log, TheFirstSeqAndRequestIdOfAMessageBecomeFields) {
  Json j = jsonOf("request id r-10 was committed as seq 1:42; seq 2:7 is another");
  EXPECT_EQ(j["seq"].str(), "1:42");
  EXPECT_EQ(j["request_id"].str(), "r-10");
  EXPECT_EQ(j["msg"].str(), "request id r-10 was committed as seq 1:42; seq 2:7 is another");
  // Order in the object: time, level, component, seq, request_id, msg.
  std::vector<std::string> names;
  for (auto& m : j.members) names.push_back(m.first);
  EXPECT_EQ(names, (std::vector<std::string>{"time", "level", "component", "seq", "request_id", "msg"}));

  EXPECT_EQ(jsonOf("seq 1:42: damaged record (crc)")["seq"].str(), "1:42");
  EXPECT_EQ(jsonOf("restore: seq 65535:281474976710655: in doubt")["seq"].str(), "65535:281474976710655");
  EXPECT_EQ(jsonOf("seq 70000:1 is out of range, seq 3:4 is not")["seq"].str(), "3:4");
  EXPECT_EQ(jsonOf("request id 'ord-9': damaged row in the requests table")["request_id"].str(), "ord-9");
  EXPECT_EQ(jsonOf("request id 'a-1' then request id 'b-2'")["request_id"].str(), "a-1");
  EXPECT_EQ(jsonOf("retry of request id K7, answered")["request_id"].str(), "K7");
  // Not a seq or a request id: prose that looks a little like one.
  for (const char* msg : {"subseq 1:2 is not a seq", "seq 12 items", "seq 1: nothing", "seq 1:2x",
                          "request ids: 5 past request_id_retention_s dropped", "request id is 130 bytes long",
                          "its request id's row is damaged", "request id ''"}) {
    Json k = jsonOf(msg);
    EXPECT_FALSE(k.has("seq")) << msg;
    EXPECT_FALSE(k.has("request_id")) << msg;
    EXPECT_EQ(k["msg"].str(), msg);
  }
}

TEST(Log, JsonEscapesQuotesControlCharactersAndInvalidUtf8) {
  std::string msg = std::string("say \"hi\" \\ path\nsecond line\tcol\r\x01\x1f end caf\xc3\xa9 bad:\xff\xc0\xaf!");
  std::ostringstream out;
  auto logger = makeLogger("coordinator", LogFormat::Json, out);
  logger->error("{}", msg);
  std::string text = out.str();
  ASSERT_EQ(text.find('\n'), text.size() - 1) << "one line, newline only at its end: " << text;
  for (char c : text.substr(0, text.size() - 1)) EXPECT_GE(static_cast<unsigned char>(c), 0x20) << text;
  EXPECT_NE(text.find("\\u0001\\u001f"), std::string::npos) << text;
  Json j = JsonReader::parse(text);  // the strict reader refuses raw control bytes and invalid UTF-8
  EXPECT_EQ(j["msg"].str(), "say \"hi\" \\ path\nsecond line\tcol\r\x01\x1f end caf\xc3\xa9 bad:"
                            "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd!");
  EXPECT_EQ(j["level"].str(), "error");
  // The component is escaped too.
  std::ostringstream out2;
  makeLogger("agent \"x\"", LogFormat::Json, out2)->info("m");
  EXPECT_EQ(JsonReader::parse(out2.str())["component"].str(), "agent \"x\"");
}

TEST(Log, TextFormatIsUnchanged) {
  std::ostringstream out;
  auto logger = makeLogger("coordinator", LogFormat::Text, out);
  logger->info("seq {} committed", "1:42");
  logger->warn("slow");
  logger->error("refused: {}", "data directory /x does not exist");
  auto lines = linesOf(out.str());
  ASSERT_EQ(lines.size(), 3u) << out.str();
  const std::string stamp = R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} )";
  EXPECT_TRUE(std::regex_match(lines[0], std::regex(stamp + "coordinator info: seq 1:42 committed"))) << lines[0];
  EXPECT_TRUE(std::regex_match(lines[1], std::regex(stamp + "coordinator warning: slow"))) << lines[1];
  EXPECT_TRUE(
      std::regex_match(lines[2], std::regex(stamp + "coordinator error: refused: data directory /x does not exist")))
      << lines[2];
}

TEST(Log, TheEleventhRepeatInAWindowIsSuppressedAndCountedWhenTheWindowEnds) {
  FakeClock clock;
  std::ostringstream out;
  auto logger = makeLogger("coordinator", LogFormat::Json, out, clock.limit());
  // Digits aside, one message: seqs and counts differ, the key does not.
  for (int i = 1; i <= 25; ++i) logger->error("seq 1:{}: HEURISTIC outcome (attempt {})", i, i);
  auto lines = linesOf(out.str());
  ASSERT_EQ(lines.size(), 10u) << out.str();
  EXPECT_EQ(JsonReader::parse(lines[9])["msg"].str(), "seq 1:10: HEURISTIC outcome (attempt 10)");

  clock.t += std::chrono::seconds(9);
  logger->flush();
  EXPECT_EQ(linesOf(out.str()).size(), 10u) << "the window has not ended: " << out.str();
  clock.t += std::chrono::seconds(1);
  logger->flush();  // what spdlog's flusher thread does once a second
  lines = linesOf(out.str());
  ASSERT_EQ(lines.size(), 11u) << out.str();
  Json s = JsonReader::parse(lines[10]);
  EXPECT_EQ(s["level"].str(), "error");
  EXPECT_EQ(s["suppressed"].whole(), 15u);
  EXPECT_EQ(s["seq"].str(), "1:25") << "the summary quotes the last one left out";
  EXPECT_EQ(s["msg"].str(),
            "seq 1:25: HEURISTIC outcome (attempt 25) ... repeated 15 more times in the last 10 s (suppressed)");

  // A new window: ten more are written again.
  for (int i = 0; i < 11; ++i) logger->error("seq 1:{}: HEURISTIC outcome (attempt {})", i, i);
  EXPECT_EQ(linesOf(out.str()).size(), 21u) << out.str();
}

TEST(Log, TheSummaryComesWithTheNextLineAndInTextToo) {
  FakeClock clock;
  std::ostringstream out;
  auto logger = makeLogger("coordinator", LogFormat::Text, out, clock.limit());
  for (int i = 0; i < 11; ++i) logger->warn("participant bank-a unreachable");
  clock.t += std::chrono::seconds(10);
  logger->info("participant bank-a is back");
  auto lines = linesOf(out.str());
  ASSERT_EQ(lines.size(), 12u) << out.str();
  EXPECT_NE(lines[10].find("coordinator warning: participant bank-a unreachable ... repeated 1 more time in the "
                           "last 10 s (suppressed)"),
            std::string::npos)
      << lines[10];
  EXPECT_NE(lines[11].find("coordinator info: participant bank-a is back"), std::string::npos) << lines[11];
}

TEST(Log, DistinctMessagesLevelsAndDebugLinesAreNotSuppressed) {
  FakeClock clock;
  std::ostringstream out;
  auto logger = makeLogger("coordinator", LogFormat::Json, out, clock.limit());
  logger->set_level(spdlog::level::debug);
  std::size_t want = 0;
  for (char a = 'a'; a <= 'z'; ++a) {
    logger->info("participant bank-{} connected", std::string(2, a));
    ++want;
  }
  for (int i = 0; i < 10; ++i) {
    logger->info("same text");
    logger->warn("same text");
    logger->error("same text");
    want += 3;
  }
  for (int i = 0; i < 30; ++i) logger->debug("batch {} sent", i);  // asked for with KEEL_LOG=debug: all of it
  want += 30;
  logger->flush();
  EXPECT_EQ(linesOf(out.str()).size(), want) << out.str();
  EXPECT_EQ(out.str().find("suppressed"), std::string::npos) << out.str();
}

TEST(Log, AFullMapClosesTheOldestWindowEarlyAndReportsItsCount) {
  FakeClock clock;
  std::ostringstream out;
  auto logger = makeLogger("coordinator", LogFormat::Json, out, clock.limit(10, 4));
  for (int i = 0; i < 13; ++i) logger->error("HEURISTIC: participants disagree");
  for (const char* m : {"one", "two", "three"}) logger->info("{}", m);
  EXPECT_EQ(out.str().find("suppressed"), std::string::npos) << "four keys fit: " << out.str();
  logger->info("four");  // a fifth key: the oldest window makes room
  auto lines = linesOf(out.str());
  ASSERT_EQ(lines.size(), 15u) << out.str();
  Json s = JsonReader::parse(lines[13]);
  EXPECT_EQ(s["suppressed"].whole(), 3u);
  EXPECT_EQ(s["level"].str(), "error");
  EXPECT_EQ(JsonReader::parse(lines[14])["msg"].str(), "four");
}

TEST(Log, RepeatsStillCountedAreReportedWhenTheLoggerGoes) {
  std::ostringstream out;
  {
    auto logger = makeLogger("coordinator", LogFormat::Json, out);  // the real clock: 10 s will not pass
    for (int i = 0; i < 17; ++i) logger->error("HEURISTIC: seq 1:{} needs an operator", i);
  }
  auto lines = linesOf(out.str());
  ASSERT_EQ(lines.size(), 11u) << out.str();
  Json s = JsonReader::parse(lines[10]);
  EXPECT_EQ(s["suppressed"].whole(), 7u);
  EXPECT_EQ(s["seq"].str(), "1:16");
}

TEST(Log, FourThreadsLoseNoCount) {
  constexpr int kThreads = 4, kEach = 2000;
  std::ostringstream out;
  {
    auto logger = makeLogger("coordinator", LogFormat::Json, out);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&logger, t] {
        std::string own = "thread " + std::string(1, char('a' + t)) + " working on seq 1:{}";
        for (int i = 0; i < kEach; ++i) {
          logger->warn("participant bank-b timed out on seq 1:{}", i);
          logger->info(fmt::runtime(own), i);
          if (i % 100 == 0) logger->flush();  // the flusher thread, racing the writers
        }
      });
    }
    for (auto& th : threads) th.join();
  }  // the logger goes: the last counts are written
  std::map<std::string, std::uint64_t> seen;  // message without digits -> lines it stands for
  for (auto& line : linesOf(out.str())) {
    Json j = JsonReader::parse(line);
    std::string msg = j["msg"].str();
    msg = msg.substr(0, msg.find(" ... repeated"));
    msg = std::regex_replace(msg, std::regex("[0-9]+"), "#");
    seen[msg] += j.has("suppressed") ? j["suppressed"].whole() : 1;
  }
  EXPECT_EQ(seen["participant bank-b timed out on seq #:#"], std::uint64_t(kThreads * kEach));
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(seen["thread " + std::string(1, char('a' + t)) + " working on seq #:#"], std::uint64_t(kEach)) << t;
  }
  EXPECT_EQ(seen.size(), std::size_t(kThreads + 1));
}

// initLogging starts spdlog's flusher thread before a daemon captures
// SIGTERM, SIGINT and SIGHUP (in its own thread only). Were they open in the
// flusher, the kernel could hand them to it, and the default action would
// kill the daemon: no clean stop, no certificate reload. Read from /proc:
// sending the signal proves little, the main thread usually takes it first.
// Read for a while: a new thread starts with every signal blocked and sets
// the mask it inherited only once it runs.
TEST(Log, TheFlusherThreadBlocksEverySignal) {
  initLogging("coordinator", LogFormat::Text);
  auto until = Clock::now() + std::chrono::milliseconds(200);
  int others = 0;
  while (Clock::now() < until && !HasFailure()) {
    others = 0;
    for (auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
      if (task.path().filename() == std::to_string(::gettid())) continue;
      std::ifstream status(task.path() / "status");
      std::string line;
      std::uint64_t mask = 0;
      while (std::getline(status, line)) {
        if (line.rfind("SigBlk:", 0) == 0) mask = std::stoull(line.substr(7), nullptr, 16);
      }
      ++others;
      for (int sig : {SIGHUP, SIGINT, SIGTERM}) {
        EXPECT_NE(mask & (std::uint64_t(1) << (sig - 1)), 0u) << "thread " << task.path() << " takes signal " << sig;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(others, 1) << "no flusher thread";
}

TEST(Log, FormatIsTheFlagOrConfigElseKeelLogFormatElseText) {
  ::unsetenv("KEEL_LOG_FORMAT");
  EXPECT_EQ(chooseLogFormat(""), LogFormat::Text);
  EXPECT_EQ(chooseLogFormat("json"), LogFormat::Json);
  ::setenv("KEEL_LOG_FORMAT", "json", 1);
  EXPECT_EQ(chooseLogFormat(""), LogFormat::Json);
  EXPECT_EQ(chooseLogFormat("text"), LogFormat::Text) << "what is chosen beats the environment";
  ::setenv("KEEL_LOG_FORMAT", "xml", 1);
  EXPECT_THROW(chooseLogFormat(""), std::runtime_error);
  EXPECT_EQ(chooseLogFormat("text"), LogFormat::Text);
  ::unsetenv("KEEL_LOG_FORMAT");
  EXPECT_THROW(chooseLogFormat("yaml"), std::runtime_error);
  EXPECT_EQ(parseLogFormat("json"), LogFormat::Json);
  EXPECT_EQ(parseLogFormat("JSON"), std::nullopt);
}

}  // namespace
}  // namespace keel
