#pragma once
// keel-demo's progress line while transfers run: rewritten in place on a
// terminal, one line per report in a log.

#include <unistd.h>

#include <cstdint>
#include <cstdio>

namespace keel::demo {

class ProgressLine {
 public:
  // `final`: the last report (the line is closed).
  void print(std::uint32_t done, std::uint32_t total, std::uint64_t committed, std::uint64_t rolledBack,
             std::uint64_t lost, double secs, bool final) {
    std::printf("%s  transfers %5u/%u  committed %6llu  rolled back %5llu  answer lost %3llu  %6.0f/s%s",
                tty_ ? "\r" : "", done, total, (unsigned long long)committed, (unsigned long long)rolledBack,
                (unsigned long long)lost, secs > 0 ? done / secs : 0.0, (final || !tty_) ? "\n" : "");
    open_ = tty_ && !final;
    std::fflush(stdout);
  }
  // Before any other output: ends a line left open on a terminal.
  void end() {
    if (open_) std::printf("\n");
    open_ = false;
  }

 private:
  const bool tty_ = ::isatty(1) != 0;
  bool open_ = false;
};

}  // namespace keel::demo
