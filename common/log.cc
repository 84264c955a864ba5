#include "common/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>

#include <pthread.h>
#include <signal.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include "common/records.h"  // jsonEscape, formatMicros
#include "common/types.h"    // parseSeqText, checkRequestId

namespace keel {

namespace {

// The text format, as it has always been: operators' greps depend on it.
constexpr const char* kTextPattern = "%Y-%m-%dT%H:%M:%S.%e %n %^%l%$: %v";
// A repeat key holds at most this much of a message: 1024 keys stay
// within half a MiB whatever the messages carry (error texts, SQL).
constexpr std::size_t kMaxKeyBytes = 512;

using Writer = std::function<void(std::string_view)>;
using Clock = std::chrono::steady_clock;

bool isDigit(char c) { return c >= '0' && c <= '9'; }
bool isWordChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; }
// `at` begins a word of `s`: "subseq 1:2" is not "seq 1:2".
bool wordStart(std::string_view s, std::size_t at) { return at == 0 || !isWordChar(s[at - 1]); }

// The first "seq NODE:COUNTER" of a message ("seq 1:42: damaged record"
// gives "1:42"); empty when there is none. A seq written as the bare 64-bit
// number is not taken: in prose a number after "seq" may be a count.
std::string_view findSeq(std::string_view s) {
  for (std::size_t at = s.find("seq "); at != std::string_view::npos; at = s.find("seq ", at + 1)) {
    if (!wordStart(s, at)) continue;
    std::size_t b = at + 4, e = b;
    while (e < s.size() && isDigit(s[e])) ++e;
    if (e == b || e == s.size() || s[e] != ':') continue;
    std::size_t colon = e++;
    while (e < s.size() && isDigit(s[e])) ++e;
    if (e == colon + 1 || (e < s.size() && isWordChar(s[e]))) continue;
    std::string_view seq = s.substr(b, e - b);
    if (parseSeqText(seq)) return seq;  // node and counter in range
  }
  return {};
}

// The first "request id X" of a message: X quoted ('r-7', as most messages
// write it) or bare (r-7). A bare word of lower-case letters only is prose,
// not an id ("request id is 130 bytes long"); such an id is found quoted.
std::string_view findRequestId(std::string_view s) {
  constexpr std::string_view kLead = "request id ";
  for (std::size_t at = s.find(kLead); at != std::string_view::npos; at = s.find(kLead, at + 1)) {
    if (!wordStart(s, at)) continue;
    std::size_t b = at + kLead.size(), e = b;
    while (e < s.size() && s[e] > 0x20 && s[e] < 0x7f) ++e;  // ids are printable ASCII without spaces
    std::string_view id = s.substr(b, e - b);
    if (id.size() >= 2 && id.front() == '\'') {
      std::size_t close = id.rfind('\'');  // 'r-7': or 'r-7'), whatever follows the quote
      if (close == 0) continue;
      id = id.substr(1, close - 1);
    } else {
      while (!id.empty() && std::strchr(",;:.)", id.back()) != nullptr) id.remove_suffix(1);
      bool prose = !id.empty();
      for (char c : id) prose = prose && c >= 'a' && c <= 'z';
      if (prose) continue;
    }
    if (!id.empty() && checkRequestId(id).empty()) return id;
  }
  return {};
}

// "10 s", "250 ms": the window as the summary line says it.
std::string windowText(std::chrono::milliseconds w) {
  if (w.count() % 1000 == 0) return std::to_string(w.count() / 1000) + " s";
  return std::to_string(w.count()) + " ms";
}

// One sink does both formats and the repeat limit. spdlog calls it from any
// thread that logs (the event loop, the WAL writer, the admin plane's HTTP
// thread, spdlog's flusher); base_sink holds its mutex around sink_it_ and
// flush_, which is what keeps the windows below consistent.
class KeelSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  KeelSink(Writer write, LogFormat format, RepeatLimit limit)
      : write_(std::move(write)), format_(format), limit_(std::move(limit)) {
    if (!limit_.now) limit_.now = [] { return Clock::now(); };
    if (limit_.maxKeys == 0) limit_.maxKeys = 1;
    formatter_ = std::make_unique<spdlog::pattern_formatter>(kTextPattern);
  }
  // Repeats still being counted are reported now, window ended or not:
  // the process is stopping and nothing else will say them.
  ~KeelSink() override {
    std::lock_guard<std::mutex> lock(mutex_);
    closeWindows(Clock::time_point::max());
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    // debug and trace are asked for (KEEL_LOG): whoever asks wants them all.
    if (limit_.lines == 0 || msg.level < spdlog::level::info) {
      write(msg, 0);
      return;
    }
    auto now = limit_.now();
    closeWindows(now);  // summaries first, so that lines stay in time order
    std::string key = repeatKey(msg);
    auto it = byKey_.find(key);
    if (it == byKey_.end()) {
      if (windows_.size() >= limit_.maxKeys) closeOldest();
      Window& w = windows_.emplace_back();
      w.key = std::move(key);
      w.start = now;
      byKey_.emplace(w.key, std::prev(windows_.end()));
      write(msg, 0);
      return;
    }
    Window& w = *it->second;
    if (++w.lines <= limit_.lines) {
      write(msg, 0);
      return;
    }
    // Counted, and the last one kept for the summary: its seq, request id
    // and wording are the freshest.
    ++w.suppressed;
    w.level = msg.level;
    w.logger.assign(msg.logger_name.data(), msg.logger_name.size());
    w.text.assign(msg.payload.data(), msg.payload.size());
  }

  void flush_() override { closeWindows(limit_.now()); }

 private:
  struct Window {
    std::string key;
    Clock::time_point start;
    std::size_t lines = 1;       // of this key since `start`, written or not
    std::size_t suppressed = 0;  // of them not written
    spdlog::level::level_enum level = spdlog::level::info;
    std::string logger, text;    // the last one not written
  };

  // Level, logger and the text with every run of digits one '#': the same
  // message about another seq, count or port is the same message.
  static std::string repeatKey(const spdlog::details::log_msg& msg) {
    std::string k;
    k.reserve(std::min(msg.payload.size(), kMaxKeyBytes) + msg.logger_name.size() + 2);
    k += char('0' + int(msg.level));
    k.append(msg.logger_name.data(), msg.logger_name.size());
    k += '\0';
    bool digits = false;
    for (char c : std::string_view(msg.payload.data(), msg.payload.size())) {
      if (k.size() >= kMaxKeyBytes) break;
      if (isDigit(c)) {
        if (!digits) k += '#';
        digits = true;
      } else {
        k += c;
        digits = false;
      }
    }
    return k;
  }

  // Every window is as long, so the oldest is the first to end: the list's
  // front. Each ended window says what it left out, then is forgotten.
  void closeWindows(Clock::time_point now) {
    while (!windows_.empty() && (now == Clock::time_point::max() || now - windows_.front().start >= limit_.window)) {
      closeOldest();
    }
  }
  // Also how a full map makes room: the oldest window ends early, and its
  // count is reported (over less than a window: still "in the last 10 s").
  void closeOldest() {
    Window& w = windows_.front();
    if (w.suppressed > 0) {
      std::string text = w.text + " ... repeated " + std::to_string(w.suppressed) +
                         (w.suppressed == 1 ? " more time" : " more times") + " in the last " +
                         windowText(limit_.window) + " (suppressed)";
      spdlog::details::log_msg summary(spdlog::log_clock::now(), spdlog::source_loc{}, w.logger, w.level, text);
      write(summary, w.suppressed);
    }
    byKey_.erase(std::string_view(w.key));  // before the key it points into goes
    windows_.pop_front();
  }

  void write(const spdlog::details::log_msg& msg, std::size_t suppressed) {
    if (format_ == LogFormat::Text) {
      spdlog::memory_buf_t buf;
      formatter_->format(msg, buf);
      write_(std::string_view(buf.data(), buf.size()));
      return;
    }
    std::string_view text(msg.payload.data(), msg.payload.size());
    auto micros = std::chrono::duration_cast<std::chrono::microseconds>(msg.time.time_since_epoch()).count();
    auto level = spdlog::level::to_string_view(msg.level);
    std::string line;
    line.reserve(text.size() + 160);
    line += "{\"time\":\"" + formatMicros(Micros(micros)) + "\",\"level\":\"";
    line.append(level.data(), level.size());
    line += "\",\"component\":\"" + jsonEscape(std::string_view(msg.logger_name.data(), msg.logger_name.size()));
    // Both are printable ASCII without quotes or backslashes once found;
    // escaped all the same, so a change to the finders cannot break a line.
    if (auto seq = findSeq(text); !seq.empty()) line += "\",\"seq\":\"" + jsonEscape(seq);
    if (auto id = findRequestId(text); !id.empty()) line += "\",\"request_id\":\"" + jsonEscape(id);
    line += "\",\"msg\":\"" + jsonEscape(text) + "\"";
    if (suppressed > 0) line += ",\"suppressed\":" + std::to_string(suppressed);
    line += "}\n";
    write_(line);
  }

  Writer write_;
  LogFormat format_;
  RepeatLimit limit_;
  std::list<Window> windows_;  // oldest first
  // Keys are views of the windows' own `key`: a list node never moves.
  std::unordered_map<std::string_view, std::list<Window>::iterator> byKey_;
};

std::shared_ptr<spdlog::logger> makeLoggerWith(const std::string& processName, LogFormat format, Writer write,
                                               RepeatLimit limit) {
  auto sink = std::make_shared<KeelSink>(std::move(write), format, std::move(limit));
  auto logger = std::make_shared<spdlog::logger>(processName, std::move(sink));
  const char* lvl = std::getenv("KEEL_LOG");
  logger->set_level(lvl != nullptr ? spdlog::level::from_str(lvl) : spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  return logger;
}

}  // namespace

std::optional<LogFormat> parseLogFormat(std::string_view name) {
  if (name == "text") return LogFormat::Text;
  if (name == "json") return LogFormat::Json;
  return std::nullopt;
}

LogFormat chooseLogFormat(const std::string& chosen) {
  if (!chosen.empty()) {
    if (auto f = parseLogFormat(chosen)) return *f;
    throw std::runtime_error("log format '" + chosen + "' is not known (known: text, json)");
  }
  const char* env = std::getenv("KEEL_LOG_FORMAT");
  if (env == nullptr || *env == '\0') return LogFormat::Text;
  if (auto f = parseLogFormat(env)) return *f;
  throw std::runtime_error(std::string("KEEL_LOG_FORMAT '") + env + "' is not known (known: text, json)");
}

std::shared_ptr<spdlog::logger> makeLogger(const std::string& processName, LogFormat format, std::ostream& out,
                                           RepeatLimit limit) {
  return makeLoggerWith(
      processName, format,
      [&out](std::string_view line) {
        out.write(line.data(), std::streamsize(line.size()));
        out.flush();
      },
      std::move(limit));
}

void initLogging(const std::string& processName, LogFormat format) {
  // stdio's stderr rather than std::cerr: the last summaries are written
  // while static objects are destroyed, where stdio is still safe to use.
  auto logger = makeLoggerWith(
      processName, format,
      [](std::string_view line) {
        std::fwrite(line.data(), 1, line.size(), stderr);
        std::fflush(stderr);
      },
      {});
  spdlog::set_default_logger(logger);
  // A window that ends with nothing more logged is still summarised: the
  // flusher thread calls the sink's flush_ once a second. It starts with
  // every signal blocked: a thread inherits its creator's mask, and the
  // daemons capture SIGTERM, SIGINT and SIGHUP later (captureTerminationSignals
  // blocks them in the event loop's thread only, which reads them from a
  // signalfd). A thread that could take them would take them instead, and
  // the default action would kill the process: no clean stop, no
  // certificate reload.
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, &old);
  spdlog::flush_every(std::chrono::seconds(1));
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void initLogging(const std::string& processName) {
  std::string bad;
  LogFormat format = LogFormat::Text;
  try {
    format = chooseLogFormat("");
  } catch (const std::exception& e) {
    bad = e.what();  // a tool runs on: it says so once, in text
  }
  initLogging(processName, format);
  if (!bad.empty()) KEEL_LOG_WARN("{}; logging as text", bad);
}

std::string errnoText(int err) {
  std::string s = std::strerror(err);
  if (!s.empty()) s[0] = char(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

}  // namespace keel
