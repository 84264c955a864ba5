#pragma once
// Runs build/bin/keel-bench for the end-to-end benchmark tests and picks
// out its JSON line.

#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "tests/bench/json_check.h"

namespace keel::test {

struct Output {
  int exitCode;
  std::string out;
};

inline Output run(const std::string& args, bool withStderr) {
  std::string cmd = std::string(KEEL_BIN_DIR) + "/keel-bench " + args + (withStderr ? " 2>&1" : " 2>/dev/null");
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

inline std::string lastLine(const std::string& s) {
  auto end = s.find_last_not_of('\n');
  if (end == std::string::npos) return "";
  auto start = s.rfind('\n', end);
  return s.substr(start == std::string::npos ? 0 : start + 1, end - (start == std::string::npos ? 0 : start + 1) + 1);
}

}  // namespace keel::test
