#pragma once
// HostService: keel-host's endpoints (docs/hosts.md and the read and admin
// endpoints below) on top of HostBooks, with the switches that make it
// misbehave on purpose.
//
//   POST /v1/{debit,credit}/{try,confirm,cancel}   the contract calls
//   GET  /v1/health, /v1/accounts, /v1/accounts/<name>, /v1/open, /v1/keys, /v1/stats
//   POST /v1/accounts {"name","balance"}           opens an account (409 if it exists)
//   GET  /admin/faults, POST /admin/faults {"slow_ms","drop_answers","fail_rate","crash_at"}
//
// Writes (the contract calls, opening an account) are GroupCommitLog jobs:
// the writer thread applies everything queued in one LMDB write
// transaction, commits once, and only then is each answer posted back to
// the io_context and written. Durability point: nothing is answered before
// the group commit that made it true returned. Reads use a read
// transaction on the io thread.
//
// Faults act on the contract calls only (reads and /admin never misbehave,
// so a checker can always look and a test can always turn faults off):
//   fail_rate     answer 500 {"error":"injected failure"}, apply nothing
//   crash_at      CALL:WHEN, exit at once with status 86 on the first
//                 matching call: before applying it, or after it is durable
//                 but before answering
//   drop_answers  apply durably, then close the connection unanswered
//   slow_ms       delay every answer this long
//
// Threads: everything on the io_context's thread except the jobs' apply
// (writer thread), which only touches HostBooks and the job itself: never
// the service, since the GroupCommitLog may finish queued jobs at shutdown
// after the service is gone (HostBooks and the io_context must outlive the
// GroupCommitLog; their answers are then never written).

#include <asio.hpp>
#include <cstdint>
#include <optional>
#include <random>
#include <string>

#include "common/group_log.h"
#include "tools/host/host_books.h"
#include "tools/host/host_http.h"

namespace keel::host {

inline constexpr int kCrashExitStatus = 86;  // --crash-at

// --crash-at CALL:WHEN.
struct CrashAt {
  std::string call;    // try, confirm, cancel or any
  bool after = false;  // after the call's effect is durable, before answering
};
// "try:after" -> CrashAt; throws std::invalid_argument saying what is wrong.
CrashAt parseCrashAt(const std::string& text);

struct Faults {
  std::int64_t slowMs = 0;
  double dropAnswers = 0;  // probability 0..1
  double failRate = 0;     // probability 0..1
  std::optional<CrashAt> crashAt;
};
std::string faultsJson(const Faults& f);

class HostService final : public HttpHandler {
 public:
  HostService(asio::io_context& io, HostBooks& books, GroupCommitLog& log, Faults faults, std::uint64_t seed);
  void handle(HttpRequest req, HttpReply reply) override;

 private:
  void contractCall(const std::string& op, const std::string& call, const std::string& body, HttpReply reply);
  Answer adminFaults(const std::string& body);
  // Runs `apply` on the writer thread; `done` gets its answer on the io
  // thread once durable (or a 500 if it failed and left nothing behind).
  template <typename Apply, typename Done>
  void write(Apply apply, Done done);
  bool chance(double p);

  asio::io_context& io_;
  HostBooks& books_;
  GroupCommitLog& log_;
  Faults faults_;  // changed at run time by POST /admin/faults
  std::mt19937_64 rng_;
};

}  // namespace keel::host
