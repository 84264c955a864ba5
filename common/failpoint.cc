#include "common/failpoint.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>

namespace keel::failpoint {

std::atomic<bool> gArmed{false};

namespace {

enum class Action { Off, Crash, Delay, Error };

struct Point {
  Action action = Action::Off;
  unsigned delayMs = 0;
  long remaining = -1;  // -1: unlimited
  unsigned long skip = 0;  // hits let through before the action fires
  unsigned fired = 0;
};

std::mutex gMu;
std::map<std::string, Point> gPoints;  // GUARDED_BY(gMu)

std::string trim(std::string s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.erase(s.begin());
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.pop_back();
  return s;
}

// A whole decimal number without sign or trailing characters.
bool parseCount(const std::string& s, unsigned long& out) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  out = std::stoul(s);
  return true;
}

// A count prefix "N<sep>" of `a` (N positive), cut off and returned; 0 if
// `a` has no `sep`.
unsigned long takeCount(const std::string& entry, std::string& a, char sep) {
  auto at = a.find(sep);
  if (at == std::string::npos) return 0;
  unsigned long n = 0;
  if (!parseCount(trim(a.substr(0, at)), n) || n == 0) {
    throw std::invalid_argument("failpoint '" + entry + "': the count before '" + sep + "' must be a positive number");
  }
  a = trim(a.substr(at + 1));
  return n;
}

Point parseAction(const std::string& entry, std::string a) {
  Point p;
  // "M+" first: the first M hits pass untouched (e.g. the second commit of
  // a batch fails, the first goes through): "1+1*error". Then "N*": the
  // action fires on N hits only.
  p.skip = takeCount(entry, a, '+');
  if (unsigned long n = takeCount(entry, a, '*'); n > 0) p.remaining = long(n);
  if (a == "crash") {
    p.action = Action::Crash;
  } else if (a == "error") {
    p.action = Action::Error;
  } else if (a == "off") {
    p.action = Action::Off;
  } else if (a.rfind("delay(", 0) == 0 && a.back() == ')') {
    p.action = Action::Delay;
    unsigned long ms = 0;
    if (!parseCount(trim(a.substr(6, a.size() - 7)), ms)) {
      throw std::invalid_argument("failpoint '" + entry + "': delay needs whole milliseconds, e.g. delay(50)");
    }
    p.delayMs = unsigned(ms);
  } else {
    throw std::invalid_argument("failpoint '" + entry +
                                "': unknown action (use crash, delay(MS), error or off)");
  }
  return p;
}

}  // namespace

void configure(const std::string& spec) {
  std::map<std::string, Point> points;
  std::size_t pos = 0;
  while (pos <= spec.size()) {
    auto comma = spec.find(',', pos);
    std::string entry = trim(spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
    if (!entry.empty()) {
      auto eq = entry.find('=');
      if (eq == std::string::npos || eq == 0) {
        throw std::invalid_argument("failpoint '" + entry + "': expected name=action");
      }
      points[trim(entry.substr(0, eq))] = parseAction(entry, trim(entry.substr(eq + 1)));
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  std::lock_guard<std::mutex> lk(gMu);
  gPoints = std::move(points);
  gArmed.store(!gPoints.empty(), std::memory_order_relaxed);
}

void initFromEnv() {
  const char* v = std::getenv("KEEL_FAILPOINTS");
  configure(v != nullptr ? v : "");
}

namespace {

// The action of `name` (crash and error taken here); the milliseconds of a
// delay, which the caller sleeps or waits.
unsigned fire(const char* name) {
  Action action;
  unsigned delayMs;
  {
    std::lock_guard<std::mutex> lk(gMu);
    auto it = gPoints.find(name);
    if (it == gPoints.end() || it->second.action == Action::Off || it->second.remaining == 0) return 0;
    Point& p = it->second;
    if (p.skip > 0) {
      --p.skip;
      return 0;
    }
    if (p.remaining > 0) --p.remaining;
    ++p.fired;
    action = p.action;
    delayMs = p.delayMs;
  }
  switch (action) {
    case Action::Crash: {
      std::string msg = std::string("keel: failpoint ") + name + ": crash\n";
      (void)!::write(2, msg.data(), msg.size());
      ::kill(::getpid(), SIGKILL);
      ::_exit(137);  // not reached
    }
    case Action::Delay:
      return delayMs;
    case Action::Error:
      throw InjectedError(std::string("failpoint ") + name + ": injected error");
    case Action::Off:
      return 0;
  }
  return 0;
}

}  // namespace

void hitSlow(const char* name) {
  if (unsigned ms = fire(name); ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

unsigned hitDeferredSlow(const char* name) { return fire(name); }

unsigned firedCount(const std::string& name) {
  std::lock_guard<std::mutex> lk(gMu);
  auto it = gPoints.find(name);
  return it == gPoints.end() ? 0 : it->second.fired;
}

}  // namespace keel::failpoint
