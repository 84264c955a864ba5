#pragma once
// Runs build/bin/keel-bench for the end-to-end benchmark tests and picks
// out its JSON line.

#include <sys/wait.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "common/strict_json.h"

namespace keel::test {

struct Output {
  int exitCode;
  std::string out;
};

// `tool` from build/bin (keel-bench unless said).
inline Output runTool(const std::string& tool, const std::string& args, bool withStderr) {
  std::string cmd = std::string(KEEL_BIN_DIR) + "/" + tool + " " + args + (withStderr ? " 2>&1" : " 2>/dev/null");
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

inline Output run(const std::string& args, bool withStderr) { return runTool("keel-bench", args, withStderr); }

inline std::string lastLine(const std::string& s) {
  auto end = s.find_last_not_of('\n');
  if (end == std::string::npos) return "";
  auto start = s.rfind('\n', end);
  return s.substr(start == std::string::npos ? 0 : start + 1, end - (start == std::string::npos ? 0 : start + 1) + 1);
}

// A run that must succeed: its exit status, what it printed (stdout), its
// JSON line's top-level fields, and which of `required` are missing.
struct JsonRun {
  int exitCode = -1;
  std::string out;
  Json fields;
  std::vector<std::string> missing;
};

inline JsonRun runJson(const std::string& args, std::initializer_list<const char*> required) {
  auto r = run(args, false);
  JsonRun j{r.exitCode, r.out, {}, {}};
  if (r.exitCode != 0) return j;
  j.fields = JsonReader::parse(lastLine(r.out));
  for (const char* k : required) {
    if (!j.fields.has(k)) j.missing.emplace_back(k);
  }
  return j;
}

// What a failed run left: keel-bench keeps its folder when a run fails and
// says "data and logs kept in DIR" on stderr; the last `lines` lines of
// each *.log there, for a failure message (empty when nothing was kept).
inline std::string keptLogs(const std::string& out, std::size_t lines = 40) {
  const std::string said = "data and logs kept in ";
  std::string all;
  for (auto at = out.find(said); at != std::string::npos; at = out.find(said, at + 1)) {
    auto start = at + said.size();
    std::string dir = out.substr(start, out.find('\n', start) - start);
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator(dir, ec)) {
      if (!e.is_regular_file() || e.path().extension() != ".log") continue;
      std::ifstream f(e.path());
      std::deque<std::string> tail;
      for (std::string l; std::getline(f, l);) {
        tail.push_back(l);
        if (tail.size() > lines) tail.pop_front();
      }
      all += "--- " + e.path().string() + " (last " + std::to_string(tail.size()) + " lines)\n";
      for (auto& l : tail) all += l + "\n";
    }
  }
  return all;
}

// keel-bench refuses `args` before starting anything: exit status 2 and a
// message that contains `says`.
inline void expectRefused(const std::string& args, const std::string& says) {
  auto r = run(args, true);
  EXPECT_EQ(r.exitCode, 2) << "keel-bench " << args << ": " << r.out;
  EXPECT_NE(r.out.find(says), std::string::npos) << "keel-bench " << args << ": " << r.out;
}

}  // namespace keel::test
