#include "tools/chaos/takeovers.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <sstream>

namespace keel::chaos {

Micros parseLogTime(const std::string& line) {
  std::tm tm{};
  int ms = 0;
  if (line.size() < 23 || std::sscanf(line.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%3d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                                      &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7) {
    return 0;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  tm.tm_isdst = -1;  // local time, whatever the season
  std::time_t secs = std::mktime(&tm);
  if (secs == std::time_t(-1)) return 0;
  return Micros(secs) * 1'000'000 + Micros(ms) * 1000;
}

void scanCoordinatorLog(const std::string& text, Takeovers& t) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (auto at = line.find("takeover of node "); at != std::string::npos && line.find(" done in ", at) != std::string::npos) {
      TakeoverDone d;
      unsigned node = 0;
      unsigned long long epoch = 0, work = 0, branches = 0, committed = 0, rolledBack = 0;
      if (std::sscanf(line.c_str() + at,
                      "takeover of node %u (epoch %llu) done in %llu ms: %llu branches, %llu committed, %llu rolled back",
                      &node, &epoch, &work, &branches, &committed, &rolledBack) != 6) {
        continue;
      }
      d.atUs = parseLogTime(line);
      d.node = std::uint16_t(node);
      d.epoch = epoch;
      d.workMs = work;
      d.branches = branches;
      d.committed = committed;
      d.rolledBack = rolledBack;
      t.done.push_back(d);
    } else if (line.find("is gone (no member key); taking over its work") != std::string::npos) {
      ++t.started;
    } else if (line.find("is back; its takeover (epoch") != std::string::npos) {
      ++t.stopped;
    } else if (line.find("cluster: membership lease lost") != std::string::npos) {
      ++t.failStops;
    }
  }
}

void attributeTakeovers(Takeovers& t, const std::vector<CoordinatorFault>& faults, Micros windowUs) {
  std::sort(t.done.begin(), t.done.end(), [](const auto& a, const auto& b) { return a.atUs < b.atUs; });
  std::vector<bool> used(faults.size(), false);
  t.fromFaultMs.clear();
  t.unattributed = 0;
  for (const auto& d : t.done) {
    std::size_t best = faults.size();
    for (std::size_t i = 0; i < faults.size(); ++i) {
      const auto& f = faults[i];
      if (used[i] || f.node != d.node || f.startUs > d.atUs || d.atUs - f.startUs > windowUs) continue;
      if (best == faults.size() || f.startUs > faults[best].startUs) best = i;
    }
    if (best == faults.size()) {
      ++t.unattributed;
      continue;
    }
    used[best] = true;
    t.fromFaultMs.push_back(std::uint64_t(d.atUs - faults[best].startUs) / 1000);
  }
}

std::uint64_t percentile(std::vector<std::uint64_t> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t rank = std::size_t(q * double(v.size()) + 0.999999);
  return v[std::min(v.size(), std::max<std::size_t>(rank, 1)) - 1];
}

}  // namespace keel::chaos
