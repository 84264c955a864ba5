#pragma once
// Logging: spdlog to stderr, one line per event, with the process name.
// Two formats (docs/operations.md, "Logs"):
//   text  2026-12-03T12:00:00.123 coordinator info: message        (default)
//   json  {"time":"2026-12-03T12:00:00.123456Z","level":"info","component":"coordinator",
//          "seq":"1:42","request_id":"r-7","msg":"..."}
// `seq` and `request_id` are taken from the message itself (its first
// `seq N:M` and `request id X`): the call sites stay as they are.
//
// Repeats are rate limited in both formats: more than RepeatLimit::lines of
// the same message (same level, same text once digits are masked) within
// RepeatLimit::window are not written but counted, and one summary line at
// that level says how many were left out: "<the last one left out> ...
// repeated K more times in the last 10 s (suppressed)" (JSON: the same
// object with "suppressed":K). Nothing is dropped without being counted.

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

namespace keel {

enum class LogFormat { Text, Json };

// "text" or "json"; nullopt for anything else.
std::optional<LogFormat> parseLogFormat(std::string_view name);
// The format a process logs in: `chosen` (--log-format, else the config's
// [log] format; "" when neither says) or else KEEL_LOG_FORMAT or else text.
// Throws std::runtime_error naming the value when `chosen` or
// KEEL_LOG_FORMAT is neither text nor json: called while the config is
// checked, so a typo refuses the start like any other config error.
LogFormat chooseLogFormat(const std::string& chosen);

struct RepeatLimit {
  std::size_t lines = 10;                  // lines of one key written per window; 0 = no limit
  std::chrono::milliseconds window{10000};  // counted from the key's first line
  std::size_t maxKeys = 1024;              // keys remembered; past it the oldest window is closed early
  // The clock windows are measured on (tests give their own).
  std::function<std::chrono::steady_clock::time_point()> now;
};

// Sets the process-wide logger ("coordinator", "agent bank-a", ...) writing
// to stderr. Level from KEEL_LOG (trace, debug, info, warn, error); default
// info. Summaries of repeats whose window has ended are written on the next
// line logged, by spdlog's flusher thread within a second when nothing else
// is logged, and at exit (the logger's destruction; std::_Exit skips it).
void initLogging(const std::string& processName, LogFormat format);
// Tools: the format of KEEL_LOG_FORMAT (text when unset; a bad value logs
// as text and says so in a warning).
void initLogging(const std::string& processName);

// The logger initLogging installs, writing to `out` instead of stderr: for
// tests. Lines are written whole, one write each, under the sink's lock.
std::shared_ptr<spdlog::logger> makeLogger(const std::string& processName, LogFormat format, std::ostream& out,
                                           RepeatLimit limit = {});

// strerror(err) in lower case, to end an operator-facing message:
// "cannot listen on 127.0.0.1:7400: address already in use".
std::string errnoText(int err);
}  // namespace keel

#define KEEL_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define KEEL_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define KEEL_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)
#define KEEL_LOG_DEBUG(...) ::spdlog::debug(__VA_ARGS__)
