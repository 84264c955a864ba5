#include "tools/keelctl/parse.h"

#include <charconv>
#include <cstdio>
#include <ctime>

#include "common/config.h"
#include "common/rpc.h"

namespace keel::ctl {

namespace {

std::string str(std::string_view s) { return std::string(s); }

bool allDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// The shortest way to write `d` as a duration argument: "1ms", "30s", "2m", "1h".
std::string asArgument(kj::Duration d) {
  auto ms = d / kj::MILLISECONDS;
  if (ms != 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms != 0 && ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace

std::uint64_t parseWhole(std::string_view what, std::string_view text, std::uint64_t lo, std::uint64_t hi) {
  std::string_view digits = text;
  bool negative = false;
  if (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) {
    negative = digits[0] == '-';
    digits.remove_prefix(1);
  }
  if (!allDigits(digits)) throw UsageError(str(what) + " '" + str(text) + "' is not a whole number");
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  bool inRange =
      ec == std::errc() && end == digits.data() + digits.size() && (!negative || v == 0) && v >= lo && v <= hi;
  if (!inRange) {
    throw UsageError(str(what) + " " + str(text) + " is out of range (" + std::to_string(lo) + ".." +
                     std::to_string(hi) + ")");
  }
  return v;
}

kj::Duration parseDuration(std::string_view what, std::string_view text, kj::Duration lo, kj::Duration hi) {
  std::size_t n = 0;
  while (n < text.size() && text[n] >= '0' && text[n] <= '9') ++n;
  std::string_view digits = text.substr(0, n), unit = text.substr(n);
  auto bad = [&](const std::string& why) {
    return UsageError(str(what) + " '" + str(text) + "' " + why + " (write it as 500ms, 30s, 2m or 1h)");
  };
  if (digits.empty()) throw bad("is not a duration");
  std::uint64_t perUnit = 0;  // milliseconds
  if (unit == "ms") {
    perUnit = 1;
  } else if (unit == "s") {
    perUnit = 1000;
  } else if (unit == "m") {
    perUnit = 60'000;
  } else if (unit == "h") {
    perUnit = 3'600'000;
  } else if (!unit.empty()) {
    throw bad("has an unknown unit '" + str(unit) + "'");
  }
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  (void)end;
  if (unit.empty() && !(ec == std::errc() && v == 0)) throw bad("has no unit");
  // A bare 0 needs no unit; counted in milliseconds it is still 0 (and the
  // range check below never divides by zero: UBSan, build-asan).
  if (unit.empty()) perUnit = 1;
  std::uint64_t loMs = lo / kj::MILLISECONDS, hiMs = hi / kj::MILLISECONDS;
  if (ec != std::errc() || v > hiMs / perUnit || v * perUnit < loMs || v * perUnit > hiMs) {
    throw UsageError(str(what) + " " + str(text) + " is out of range (" + asArgument(lo) + ".." + asArgument(hi) + ")");
  }
  return v * perUnit * kj::MILLISECONDS;
}

std::string formatDuration(kj::Duration d) {
  auto ms = d / kj::MILLISECONDS;
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + " s";
  return std::to_string(ms) + " ms";
}

std::uint64_t parseSeq(std::string_view text) {
  std::string why;
  auto seq = parseSeqText(text, &why);
  if (!seq) throw UsageError("seq " + why);
  if (*seq == 0) throw UsageError("seq " + str(text) + " is out of range (no interaction has seq 0)");
  return *seq;
}

Xid parseXid(std::string_view text) {
  auto dot = text.rfind('.');
  if (dot == std::string_view::npos) {
    throw UsageError("'" + str(text) + "' is not SEQ.BRANCH (for example 1:5.2)");
  }
  Xid x;
  try {
    x.seq = parseSeq(text.substr(0, dot));
    x.branch = std::uint16_t(parseWhole("branch", text.substr(dot + 1), 1, 65535));
  } catch (const UsageError& e) {
    throw UsageError("'" + str(text) + "': " + e.what());
  }
  return x;
}

void checkPeerAddress(std::string_view what, const std::string& addr) {
  try {
    // NAME@host:port: NAME is the certificate name the peer must present (TLS).
    auto [name, hostPort] = splitNamedAddress(addr);
    if (addr.find('@') != std::string::npos && name.empty()) {
      throw ConfigError(str(what) + ": '" + addr + "' names no peer before '@' (NAME@HOST:PORT)");
    }
    checkAddress(str(what), hostPort);
  } catch (const ConfigError& e) {
    throw UsageError(e.what());
  }
}

void checkRequestIdArg(const std::string& id) {
  if (id.empty()) throw UsageError("--request-id is empty");
  if (auto why = checkRequestId(id); !why.empty()) throw UsageError("--request-id: " + why);
}

Micros parseTime(std::string_view what, std::string_view text) {
  std::string t(text);
  if (t == "now") return wallMicros();
  auto bad = [&]() {
    return UsageError(std::string(what) + " '" + t + "' is not a time (2026-12-03T10:00:00Z, 2026-12-03 or now)");
  };
  if (!t.empty() && t.back() == 'Z') t.pop_back();
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
  char tail = 0;
  int n = 0;
  if (t.size() == 10) {
    if (std::sscanf(t.c_str(), "%4d-%2d-%2d%n%c", &y, &mo, &d, &n, &tail) != 3 || n != 10) throw bad();
  } else if (t.size() == 19) {
    if (std::sscanf(t.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n%c", &y, &mo, &d, &h, &mi, &sec, &n, &tail) != 6 || n != 19) {
      throw bad();
    }
  } else {
    throw bad();
  }
  if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) throw bad();
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = sec;
  std::time_t secs = timegm(&tm);
  std::tm back{};
  gmtime_r(&secs, &back);
  if (back.tm_mday != d) throw bad();  // 2026-02-30
  return Micros(secs) * 1'000'000;
}

}  // namespace keel::ctl
