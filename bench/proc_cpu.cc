#include "bench/proc_cpu.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace keel::bench {

namespace {

struct StatLine {
  pid_t ppid = 0;
  unsigned long long utime = 0, stime = 0, cutime = 0, cstime = 0;
};

std::optional<StatLine> readStat(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  // The command name (field 2) is in parentheses and may hold spaces: the
  // fields that follow start after the last ')'.
  auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 2));
  std::string state;
  StatLine s;
  long long skip;
  // fields 3..17: state ppid pgrp session tty tpgid flags minflt cminflt
  // majflt cmajflt utime stime cutime cstime
  rest >> state >> s.ppid;
  for (int i = 0; i < 9; ++i) rest >> skip;  // pgrp .. cmajflt
  rest >> s.utime >> s.stime >> s.cutime >> s.cstime;
  if (!rest) return std::nullopt;
  return s;
}

double ticks(unsigned long long t) { return double(t) / double(::sysconf(_SC_CLK_TCK)); }

}  // namespace

std::optional<double> processCpuSeconds(pid_t pid) {
  auto s = readStat(pid);
  if (!s) return std::nullopt;
  return ticks(s->utime + s->stime);
}

std::optional<double> processTreeCpuSeconds(pid_t root) {
  auto r = readStat(root);
  if (!r) return std::nullopt;
  std::multimap<pid_t, std::pair<pid_t, StatLine>> byParent;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const auto name = e.path().filename().string();
    char* end = nullptr;
    long pid = std::strtol(name.c_str(), &end, 10);
    if (end == name.c_str() || *end != '\0') continue;
    if (auto s = readStat(pid_t(pid))) byParent.emplace(s->ppid, std::pair{pid_t(pid), *s});
  }
  unsigned long long total = r->utime + r->stime + r->cutime + r->cstime;
  std::vector<pid_t> todo = {root};
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    auto [lo, hi] = byParent.equal_range(p);
    for (auto it = lo; it != hi; ++it) {
      total += it->second.second.utime + it->second.second.stime;
      todo.push_back(it->second.first);
    }
  }
  return ticks(total);
}

std::optional<std::uint64_t> processContextSwitches(pid_t pid) {
  std::error_code ec;
  std::filesystem::directory_iterator tasks("/proc/" + std::to_string(pid) + "/task", ec);
  if (ec) return std::nullopt;
  std::uint64_t total = 0;
  for (auto& t : tasks) {
    std::ifstream in(t.path() / "status");
    std::string line;
    while (std::getline(in, line)) {
      // "voluntary_ctxt_switches:\t12" and "nonvoluntary_ctxt_switches:\t3"
      if (line.find("ctxt_switches:") == std::string::npos) continue;
      total += std::strtoull(line.c_str() + line.find(':') + 1, nullptr, 10);
    }
  }
  return total;
}

}  // namespace keel::bench
