#pragma once
// keelctl's own parsing of numbers, durations, addresses and ids: the whole
// text must be consumed and the value must lie in the accepted range, or
// the command stops with a UsageError naming the argument (exit status 2)
// before anything is sent.

#include <kj/time.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "common/types.h"

namespace keel::ctl {

// Bad usage: the message is printed after "keelctl: " and the exit status is 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A whole number in [lo, hi], written in decimal with an optional sign.
// `what` names the argument in the message:
//   amount '1.5' is not a whole number
//   amount 9223372036854775808 is out of range (1..1000000000000000)
std::uint64_t parseWhole(std::string_view what, std::string_view text, std::uint64_t lo, std::uint64_t hi);

// A duration: a whole number and a unit, ms, s, m or h ("500ms", "30s",
// "2m"); "0" needs none. In [lo, hi].
kj::Duration parseDuration(std::string_view what, std::string_view text, kj::Duration lo, kj::Duration hi);
// "30 s", "500 ms": how messages show a duration.
std::string formatDuration(kj::Duration d);

// A seq argument: NODE:COUNTER or the 64-bit number (parseSeqText), not 0:
//   seq '1:' is not NODE:COUNTER (such as 1:5) or a whole number
//   seq '70000:5': node 70000 is out of range (0..65535)
std::uint64_t parseSeq(std::string_view text);

// SEQ.BRANCH, for keelctl forget: 1:5.2 or 281474976710661.2.
Xid parseXid(std::string_view text);

// A point in time for keelctl export, in UTC: 2026-12-03T10:00:00Z (the Z
// may be left out), 2026-12-03 (its midnight), or now. Unix microseconds.
//   --from '03/12/2026' is not a time (2026-12-03T10:00:00Z, 2026-12-03 or now)
Micros parseTime(std::string_view what, std::string_view text);


// HOST:PORT for -c and --agent.
void checkPeerAddress(std::string_view what, const std::string& addr);

// A request id as the coordinator accepts it (1..128 printable ASCII
// characters, no spaces).
void checkRequestIdArg(const std::string& id);

}  // namespace keel::ctl
