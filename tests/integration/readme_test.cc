// The README's commands, run as written (issue 18). The ```sh blocks of
// README.md are read when the test runs (KEEL_README, from CMake), so editing
// the README changes what is tested. Their lines run in order against the
// build's binaries, on free loopback ports, with data in a temporary folder.
// A line the test does not understand fails it, naming the line: nothing is
// skipped but the make lines below.
//
// Rewritten, mechanically, and nothing else:
// - `build/bin/` at the start of a command: the build's bin directory.
// - the port of every 127.0.0.1:PORT, in the commands and in a file given
//   with --config: a free loopback port (one per README port, throughout).
// - `/var/lib/keel`: a folder of that name in the temporary folder (not made
//   in advance: --init creates the data directories with their parents).
// - a file given with --config (a path in the source tree): a copy in the
//   temporary folder with the two rewrites above.
// - keelctl without -c: `-c` and keelctl's own default (from keelctl --help,
//   127.0.0.1:7400, a port the README's config names), rewritten.
// - a word of one capital letter (N, X) is a placeholder: the value an
//   earlier command's promised output gave it (below).
// Skipped: `make` (build only; the test runs on the build), `make demo` (ctest
// demo.coordinator_kill runs it) and `make test` (ctest itself).
//
// Checked:
// - a line ending in ` &` starts a server (keel-agent, keel-coordinator):
//   it must log "serving ... on 127.0.0.1:P", P a port the test gave, and
//   still run when the last line has run.
// - every keelctl command exits 0, and a quoted text in its comment is the
//   output it promises ("seq N: committed (request id X)"): capitals are the
//   placeholders, captured for later lines.
// - open, transfer: committed; the test keeps the balances they leave.
// - balance: each account as those opens and transfers left it.
// - query SEQ, query --request-id ID: a transfer of these lines, committed,
//   its seq and request id.
// - list: no unfinished and no heuristic interaction ("0 unfinished", alone).
// A transfer is answered once its decision is durable, its commits follow
// (docs/protocol.md), so the reads (balance, query, list) run again, for up
// to 10 s, until they show the settled state; open and transfer run once.
// The seq is taken as printed (a number today, NODE:COUNTER may come).
// At the end: a coordinator and an agent were started, and each keelctl
// command the README names at the top ran (open, transfer, balance, query by
// seq and by request id, list): the test cannot pass on a block gone empty.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <regex>
#include <set>
#include <utility>

#include "common/temp_dir.h"
#include "tests/integration/cluster_fixture.h"
#include "tools/child_process.h"

extern char** environ;

namespace keel::test {
namespace {

using Clock = std::chrono::steady_clock;

// One command line of a ```sh block.
struct ReadmeLine {
  int number = 0;                  // in README.md
  std::string text;                // as written
  std::vector<std::string> words;  // the command, without comment and '&'
  std::string comment;             // after '#'
  bool background = false;         // ends in '&'
};

[[noreturn]] void refuse(const ReadmeLine& l, const std::string& why) {
  throw std::runtime_error("README.md:" + std::to_string(l.number) + ": " + l.text + "\n  " + why);
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

// The command lines of the ```sh blocks of `markdown`, in order. Shell syntax
// beyond plain words and a final '&' is refused: the test runs words.
std::vector<ReadmeLine> shCommands(const std::string& markdown) {
  std::istringstream in(markdown);
  std::vector<ReadmeLine> out;
  enum { kText, kSh, kOtherBlock } where = kText;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.rfind("```", 0) == 0) {
      where = where != kText ? kText : line == "```sh" ? kSh : kOtherBlock;
      continue;
    }
    if (where != kSh) continue;
    ReadmeLine l;
    l.number = number;
    l.text = line;
    std::string command = line;
    for (std::size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '#' && (i == 0 || line[i - 1] == ' ' || line[i - 1] == '\t')) {
        l.comment = trim(line.substr(i + 1));
        command = line.substr(0, i);
        break;
      }
    }
    command = trim(command);
    if (command.empty()) continue;
    if (command.back() == '&') {
      l.background = true;
      command = trim(command.substr(0, command.size() - 1));
    }
    if (command.find_first_of("|;<>$`'\"\\(){}*?~&=") != std::string::npos) {
      refuse(l,
             "shell syntax the test does not run (it runs plain words, no quotes, pipes, variables or '=', "
             "and a final '&')");
    }
    std::istringstream words(command);
    for (std::string w; words >> w;) l.words.push_back(w);
    out.push_back(l);
  }
  if (where != kText) throw std::runtime_error("README.md: a ``` block is not closed");
  return out;
}

std::string regexEscape(const std::string& s) {
  static const std::string special = R"(\^$.|?*+()[]{})";
  std::string out;
  for (char c : s) {
    if (special.find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// A quoted text in a comment: the output promised, its capitals placeholders.
struct Promise {
  std::string text;
  std::regex pattern;
  std::vector<std::string> names;  // of the regex's groups, in order
};
std::optional<Promise> promiseIn(const std::string& comment) {
  auto open = comment.find('"');
  auto close = open == std::string::npos ? open : comment.find('"', open + 1);
  if (close == std::string::npos) return std::nullopt;
  std::string text = comment.substr(open + 1, close - open - 1);
  static const std::regex capital(R"(\b[A-Z]\b)");
  std::string pattern;
  std::vector<std::string> names;
  std::size_t at = 0;
  for (std::sregex_iterator m(text.begin(), text.end(), capital), end; m != end; ++m) {
    pattern += regexEscape(text.substr(at, m->position() - at));
    auto seen = std::find(names.begin(), names.end(), m->str());
    if (seen != names.end()) {
      pattern += "\\" + std::to_string(seen - names.begin() + 1);
    } else {
      pattern += R"((\S+))";  // a seq "281474976710661" or "1:5", a request id
      names.push_back(m->str());
    }
    at = m->position() + m->length();
  }
  pattern += regexEscape(text.substr(at));
  return Promise{text, std::regex(pattern), names};
}

// What open and transfer print when they commit: the seq as printed (a
// number, or NODE:COUNTER) and the request id.
const std::regex committedLine(R"(seq (\S+): committed \(request id (\S+)\))");

// A server a line started; stopped (SIGTERM, then SIGKILL) when it goes, and
// killed by the kernel if the test dies first.
struct Server {
  ReadmeLine line;
  std::string log;
  pid_t pid = -1;  // -1 once reaped

  Server(ReadmeLine l, std::vector<std::string> args, std::string logFile)
      : line(std::move(l)), log(std::move(logFile)) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "KEEL_FAILPOINTS=", 16) != 0) env.emplace_back(*e);
    }
    pid = spawnChild("readme_test", args, env, log, SIGKILL);
  }
  ~Server() {
    if (pid <= 0) return;
    ::kill(pid, SIGTERM);
    if (!waitChild(pid, std::chrono::seconds(5))) {
      ::kill(pid, SIGKILL);
      waitChild(pid, std::chrono::seconds(5));
    }
  }
  // Its wait status if it has exited.
  std::optional<int> exited() {
    auto st = pid > 0 ? waitChild(pid, std::chrono::milliseconds(0)) : std::nullopt;
    if (st) pid = -1;
    return st;
  }
  std::string logTail() const { return "its log (" + log + ") ends:\n" + lastLinesOf(log, 15).value_or("(none)"); }
};

// The README's lines run one after another, sharing servers, ports,
// placeholders and the balances the test expects.
class ReadmeSession {
 public:
  explicit ReadmeSession(std::string dir) : dir_(std::move(dir)) {}

  void run(const ReadmeLine& l) {
    const auto& w = l.words;
    if (w[0] == "make") {
      if (w.size() > 2 || (w.size() == 2 && w[1] != "demo" && w[1] != "test")) {
        refuse(l, "a make target the test does not know");
      }
      ++skipped_;
      return;
    }
    if (w[0].rfind("build/bin/", 0) != 0) refuse(l, "neither make nor a build/bin/ program");
    std::string program = w[0].substr(std::string("build/bin/").size());
    std::vector<std::string> args{binDir() + "/" + program};
    for (std::size_t i = 1; i < w.size(); ++i) args.push_back(rewriteWord(l, w[i], w[i - 1]));
    bool server = program == "keel-agent" || program == "keel-coordinator";
    if (l.background != server) {
      refuse(l, server ? "a server without '&' never returns"
                       : "only keel-agent and keel-coordinator run in the background");
    }
    if (server) return startServer(l, program, args);
    if (program != "keelctl") refuse(l, "a program the test does not know");
    runKeelctl(l, args);
  }

  // Every server still runs (then all are stopped).
  void finish() {
    for (auto& s : servers_) {
      if (auto st = s->exited()) {
        refuse(s->line, "stopped before the last line: " + describeWaitStatus(*st) + "\n" + s->logTail());
      }
    }
    servers_.clear();
  }

  int started(const std::string& program) const { return int(started_.count(program)); }
  bool ran(const std::string& command) const { return ran_.count(command) > 0; }
  std::string summary() const {
    return std::to_string(started_.size()) + " servers started, " + std::to_string(keelctlRuns_) +
           " keelctl commands run, " + std::to_string(skipped_) + " make lines skipped";
  }

 private:
  // Ports and /var/lib/keel (the header's rewrites) in a word or a file.
  std::string rewrite(const std::string& text) {
    static const std::regex loopback(R"(127\.0\.0\.1:(\d+))");
    std::string out;
    std::size_t at = 0;
    for (std::sregex_iterator m(text.begin(), text.end(), loopback), end; m != end; ++m) {
      out += text.substr(at, m->position() - at) + "127.0.0.1:" + freePortFor((*m)[1]);
      at = m->position() + m->length();
    }
    out += text.substr(at);
    const std::string var = "/var/lib/keel";
    for (std::size_t p = 0; (p = out.find(var, p)) != std::string::npos; p += dir_.size() + var.size()) {
      out.insert(p, dir_);
    }
    return out;
  }

  std::string freePortFor(const std::string& readmePort) {
    auto [it, fresh] = ports_.try_emplace(readmePort);
    if (fresh) {
      it->second = std::to_string(pickFreePort());
      given_.insert(it->second);
    }
    return it->second;
  }

  std::string rewriteWord(const ReadmeLine& l, const std::string& word, const std::string& before) {
    if (word.size() == 1 && std::isupper(static_cast<unsigned char>(word[0]))) {
      auto v = placeholders_.find(word);
      if (v == placeholders_.end()) refuse(l, "placeholder " + word + ": no earlier line's promised output gave it");
      return v->second;
    }
    if (before != "--config") return rewrite(word);
    // Relative to the README's folder, where its commands are typed.
    std::string source = std::filesystem::path(KEEL_README).parent_path() / word;  // a path from '/' stays itself
    if (!std::filesystem::exists(source)) refuse(l, source + " does not exist");
    std::string copy = dir_ + "/" + std::filesystem::path(word).filename().string();
    std::ofstream(copy) << rewrite(readFile(source));
    return copy;
  }

  void startServer(const ReadmeLine& l, const std::string& program, const std::vector<std::string>& args) {
    started_.insert(program);
    auto log = dir_ + "/" + program + "-line" + std::to_string(l.number) + ".log";
    servers_.push_back(std::make_unique<Server>(l, args, log));
    auto& s = *servers_.back();
    // A person waits for the servers before typing on; the test waits for
    // the line every Keel server logs once it serves.
    static const std::regex serving(R"(serving .* on 127\.0\.0\.1:(\d+))");
    for (auto until = Clock::now() + std::chrono::seconds(15); Clock::now() < until;) {
      std::smatch m;
      std::string text = readFile(log);
      if (std::regex_search(text, m, serving)) {
        if (!given_.count(m[1])) {
          refuse(l, "serves on port " + m[1].str() + ", one the test did not give\n" + s.logTail());
        }
        std::cout << "README.md:" << l.number << ": started " << m[0] << "\n";
        return;
      }
      if (auto st = s.exited()) refuse(l, "exited during start-up: " + describeWaitStatus(*st) + "\n" + s.logTail());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    refuse(l, "did not log 'serving ... on ...' within 15 s\n" + s.logTail());
  }

  // keelctl's default coordinator address, rewritten.
  std::string defaultCoordinator(const ReadmeLine& l) {
    if (!defaultCoordinator_.empty()) return defaultCoordinator_;
    auto help = test::run(binDir() + "/keelctl --help");
    std::smatch m;
    if (!std::regex_search(help.output, m, std::regex(R"(--coordinator HOST:PORT=127\.0\.0\.1:(\d+)\s)"))) {
      refuse(l, "keelctl --help names no default 127.0.0.1:PORT for --coordinator:\n" + help.output);
    }
    if (!ports_.count(m[1])) refuse(l, "keelctl's default port " + m[1].str() + " is none the README's lines gave");
    return defaultCoordinator_ = "127.0.0.1:" + ports_[m[1]];
  }

  // What keelctl's words are: the command, its positional words, --request-id.
  struct Keelctl {
    std::string command;
    std::vector<std::string> positional;
    std::string requestId;
    bool coordinatorGiven = false;
  };
  static Keelctl parseKeelctl(const ReadmeLine& l, const std::vector<std::string>& args) {
    static const std::set<std::string> valued = {"-c",          "--coordinator", "--timeout",
                                                 "--retry-for", "--request-id",  "--limit"};
    Keelctl k;
    for (std::size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--json") refuse(l, "--json: the test reads keelctl's human output");
      if (valued.count(args[i])) {
        if (i + 1 == args.size()) refuse(l, args[i] + " without its value");
        if (args[i] == "--request-id") k.requestId = args[i + 1];
        k.coordinatorGiven |= args[i] == "-c" || args[i] == "--coordinator";
        ++i;
      } else if (args[i][0] == '-') {
        refuse(l, "a keelctl option the test does not know: " + args[i]);
      } else if (k.command.empty()) {
        k.command = args[i];
      } else {
        k.positional.push_back(args[i]);
      }
    }
    if (k.command == "query" && !k.requestId.empty()) k.command = "query --request-id";
    return k;
  }

  struct Transfer {
    std::string seq, requestId;
  };
  const Transfer& transferNamed(const ReadmeLine& l, const std::string& seq, const std::string& requestId) {
    for (auto& t : transfers_) {
      if (seq.empty() ? t.requestId == requestId : t.seq == seq) return t;
    }
    refuse(l,
           "no transfer of the README's earlier lines has " + (seq.empty() ? "request id " + requestId : "seq " + seq));
  }

  std::int64_t balanceOf(const ReadmeLine& l, const std::string& account) {
    auto b = balances_.find(account);
    if (b == balances_.end()) refuse(l, account + " is not an account the README's earlier lines opened");
    return b->second;
  }

  // What a keelctl command must print, and what it did once it has.
  struct Expected {
    // "" when `output` shows it, else what is missing.
    std::function<std::string(const std::string& output)> check;
    std::function<void()> done = [] {};
  };
  // Every pattern found, or the first one's `what` that is not.
  static Expected showsAll(std::vector<std::pair<std::string, std::string>> patterns) {
    return {[patterns](const std::string& output) -> std::string {
      for (auto& [pattern, what] : patterns) {
        if (!std::regex_search(output, std::regex(pattern))) return "no " + what;
      }
      return "";
    }};
  }
  Expected expectedOf(const ReadmeLine& l, const Keelctl& k) {
    const auto& p = k.positional;
    if (k.command == "open" && (p.size() == 1 || p.size() == 2)) {
      auto e = showsAll({{R"(: committed \(request id )", "'committed'"}});
      e.done = [this, p] { balances_[p[0]] = p.size() == 2 ? std::stoll(p[1]) : 0; };
      return e;
    }
    if (k.command == "transfer" && p.size() == 3) {
      balanceOf(l, p[0]);
      balanceOf(l, p[1]);
      auto made = std::make_shared<Transfer>();
      auto check = [made](const std::string& output) -> std::string {
        std::smatch m;
        if (!std::regex_search(output, m, committedLine)) {
          return "no 'seq ...: committed (request id ...)'";
        }
        *made = Transfer{m[1], m[2]};
        return "";
      };
      return {check, [this, p, made] {
                transfers_.push_back(*made);
                balances_[p[0]] -= std::stoll(p[2]);
                balances_[p[1]] += std::stoll(p[2]);
              }};
    }
    if (k.command == "balance" && !p.empty()) {
      std::vector<std::pair<std::string, std::string>> accounts;
      for (auto& a : p) {
        auto b = std::to_string(balanceOf(l, a));
        accounts.push_back({"(^|\n)" + regexEscape(a) + R"(\s+balance )" + b + R"(\s+available )" + b + "\n",
                            a + " with balance " + b + " (all of it available)"});
      }
      return showsAll(accounts);
    }
    if ((k.command == "query" && p.size() == 1) || (k.command == "query --request-id" && p.empty())) {
      const Transfer& t = transferNamed(l, p.empty() ? "" : p[0], k.requestId);
      return showsAll(
          {{"(^|\n)interaction " + regexEscape(t.seq) + "[ \n]", "'interaction " + t.seq + "'"},
           {R"(\n\s+state\s+committed\s)", "'state committed'"},
           {R"(\n\s+request id )" + regexEscape(t.requestId) + R"(\s)", "'request id " + t.requestId + "'"}});
    }
    if (k.command == "list" && p.empty()) {
      // Nothing else: heuristic interactions would follow.
      return showsAll({{R"(^0 unfinished interaction\(s\)\n$)", "'0 unfinished interaction(s)' alone"}});
    }
    refuse(l,
           "keelctl " + k.command + " with " + std::to_string(p.size()) + " arguments: the test knows no check for it");
  }

  void runKeelctl(const ReadmeLine& l, std::vector<std::string> args) {
    Keelctl k = parseKeelctl(l, args);
    Expected expected = expectedOf(l, k);
    auto promise = promiseIn(l.comment);
    if (!k.coordinatorGiven) args.insert(args.begin() + 1, {"-c", defaultCoordinator(l)});
    std::string command;
    for (auto& a : args) command += (command.empty() ? "" : " ") + a;

    bool read = k.command != "open" && k.command != "transfer";
    RunResult r;
    std::string wrong;
    std::smatch m;
    int runs = 0;
    for (auto until = Clock::now() + std::chrono::seconds(10);;) {
      r = test::run(command);
      ++runs;
      if (r.exitCode != 0) {
        wrong = "exit status " + std::to_string(r.exitCode);
      } else if (promise && !std::regex_search(r.output, m, promise->pattern)) {
        wrong = "not the output its comment promises (\"" + promise->text + "\")";
      } else {
        wrong = expected.check(r.output);
      }
      if (wrong.empty() || !read || Clock::now() > until) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!wrong.empty()) refuse(l, "ran " + command + "\n  " + wrong + "; it printed:\n" + r.output);
    std::cout << "README.md:" << l.number << ": " << command
              << (runs > 1 ? " (run " + std::to_string(runs) + " times)" : "") << "\n"
              << r.output;
    for (std::size_t i = 0; promise && i < promise->names.size(); ++i) placeholders_[promise->names[i]] = m[i + 1];
    expected.done();
    ran_.insert(k.command);
    ++keelctlRuns_;
  }

  std::string dir_;
  std::map<std::string, std::string> ports_;  // README port -> free port
  std::set<std::string> given_;               // the free ports
  std::map<std::string, std::string> placeholders_;
  std::map<std::string, std::int64_t> balances_;
  std::vector<Transfer> transfers_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::multiset<std::string> started_;  // programs, once per start
  std::set<std::string> ran_;           // keelctl commands (Keelctl::command)
  std::string defaultCoordinator_;
  int keelctlRuns_ = 0, skipped_ = 0;
};

TEST(Readme, ShCommandsRunAsWritten) {
  std::string dir = makeTempDir("keel-readme");
  try {
    auto lines = shCommands(readFile(KEEL_README));
    if (lines.empty()) throw std::runtime_error(std::string(KEEL_README) + " has no ```sh block with a command");
    ReadmeSession session(dir);
    for (auto& l : lines) session.run(l);
    session.finish();
    std::cout << "README.md: " << session.summary() << "\n";
    EXPECT_GE(session.started("keel-coordinator"), 1);
    EXPECT_GE(session.started("keel-agent"), 1);
    for (auto c : {"open", "transfer", "balance", "query", "query --request-id", "list"}) {
      EXPECT_TRUE(session.ran(c)) << "README.md's ```sh lines never ran keelctl " << c;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  if (HasFailure()) {
    std::cerr << "logs kept in " << dir << "\n";
  } else {
    std::filesystem::remove_all(dir);
  }
}

// What the test refuses fails it, naming the README line (no server is
// started by these).
std::string refusal(const std::string& markdown) {
  TempDir dir("keel-readme");
  try {
    ReadmeSession session(dir.path());
    for (auto& l : shCommands(markdown)) session.run(l);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(not refused)";
}

TEST(Readme, TheSeqIsTakenAsPrinted) {
  auto promise = promiseIn(R"-(prints "seq N: committed (request id X)")-");
  ASSERT_TRUE(promise);
  EXPECT_EQ(promise->names, (std::vector<std::string>{"N", "X"}));
  for (auto [output, seq] : {std::pair{"seq 281474976710661: committed (request id a-1)\n", "281474976710661"},
                             std::pair{"seq 1:5: committed (request id a-1)\n", "1:5"}}) {
    for (const std::regex* pattern : {&std::as_const(promise->pattern), &committedLine}) {
      std::cmatch m;
      ASSERT_TRUE(std::regex_search(output, m, *pattern)) << output;
      EXPECT_EQ(m[1], seq);
      EXPECT_EQ(m[2], "a-1");
    }
  }
  EXPECT_FALSE(std::regex_search("seq 5: rolled-back (request id a-1): no\n", promise->pattern));
}

TEST(Readme, ALineNotUnderstoodFailsNamingIt) {
  auto sh = [](const std::string& lines) { return "# Keel\n\n```sh\n" + lines + "\n```\n"; };
  EXPECT_EQ(refusal(sh("build/bin/keelctl list | head")),
            "README.md:4: build/bin/keelctl list | head\n"
            "  shell syntax the test does not run (it runs plain words, no quotes, pipes, variables or '=', and a "
            "final '&')");
  EXPECT_EQ(refusal(sh("make\ncurl localhost:7400")),
            "README.md:5: curl localhost:7400\n  neither make nor a build/bin/ program");
  EXPECT_EQ(refusal(sh("make install")), "README.md:4: make install\n  a make target the test does not know");
  EXPECT_EQ(refusal(sh("build/bin/keelctl query N   # the story")),
            "README.md:4: build/bin/keelctl query N   # the story\n"
            "  placeholder N: no earlier line's promised output gave it");
  EXPECT_EQ(refusal(sh("build/bin/keelctl info")),
            "README.md:4: build/bin/keelctl info\n  keelctl info with 0 arguments: the test knows no check for it");
  EXPECT_EQ(refusal(sh("build/bin/keel-agent --name a")),
            "README.md:4: build/bin/keel-agent --name a\n  a server without '&' never returns");
  EXPECT_EQ(refusal(sh("build/bin/keelctl transfer a:x b:y 5")),
            "README.md:4: build/bin/keelctl transfer a:x b:y 5\n"
            "  a:x is not an account the README's earlier lines opened");
  EXPECT_EQ(refusal("```sh\nmake\n"), "README.md: a ``` block is not closed");
}

}  // namespace
}  // namespace keel::test
