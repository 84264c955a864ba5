#pragma once
// keelctl's commands. Each talks to one peer (the coordinator, or an agent
// for `branches` and `forget`; an embedded one through the coordinator), writes its answer to the stream it was given
// and returns the exit status. Every wait on a peer, connecting included,
// ends at --timeout; submits are retried with the same request id within
// --retry-for. Progress (retries, the next coordinator tried) goes to stderr.
//
// A command that cannot finish throws Failure (message and exit status);
// main prints it as "keelctl: <message>" (and with --json as
// {"error":…,"code":…} on stdout instead of the answer: main shows the
// answer only when the command returns).

#include <kj/async-io.h>

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/types.h"

namespace keel::ctl {

class Failure : public std::runtime_error {
 public:
  Failure(int status, const std::string& message) : std::runtime_error(message), status(status) {}
  int status;
};

struct Globals {
  // One address, or several separated by commas (a coordinator cluster):
  // submits retry through the next, reads use the first that answers.
  std::string coordinator = "127.0.0.1:7400";
  kj::Duration timeout = 30 * kj::SECONDS;   // each peer's exchange, connecting included
  kj::Duration retryFor = 30 * kj::SECONDS;  // submits: retry a lost answer this long (0 = never)
  bool json = false;
};

// The agent of `branches`, `forget` and `backup --agent/--embedded`: a
// keel-agent at `address`, or the participant `embedded` that runs inside
// the coordinator (--coordinator), reached through it
// (Coordinator.embeddedParticipant: an operator's calls only).
struct AgentRef {
  std::string address;
  std::string embedded;
  bool empty() const { return address.empty() && embedded.empty(); }
};

class Commands {
 public:
  // `out` receives the answer (main's stdout).
  Commands(kj::AsyncIoContext& io, Globals g, std::ostream& out) : io_(io), g_(std::move(g)), out_(out) {}

  // open / transfer / balance: one interaction with a request id (made here
  // when `req.requestId` is empty). `balanceRefs`: print the balances read.
  int submit(SubmitRequest req, const std::vector<std::string>* balanceRefs);

  int query(std::uint64_t seq);
  int queryRequest(const std::string& requestId);
  int list(std::uint32_t limit);
  int info();
  int stats();
  int retry(std::uint64_t seq);  // 0 = every unfinished interaction
  int resolve(std::uint64_t seq, bool commit, const std::string& who, const std::string& why, bool override);
  // The hosts of a heuristic interaction were reconciled by hand (audited).
  int reconciled(std::uint64_t seq, const std::string& who, const std::string& why);
  int audit(std::uint32_t limit);
  int branches(const AgentRef& agent);
  int forget(const AgentRef& agent, const std::vector<Xid>& xids);
  // A hot backup of the coordinator (agent empty) or of an agent into the
  // new directory `dir` (common/backup.h); progress on stderr.
  int backup(const AgentRef& agent, const std::string& dir);
  // Every interaction (and rollback) record created in [fromUs, toUs), in
  // `format` ("jsonl" or "csv"), to `outPath` (refused if it exists) or,
  // when empty, to `data` (main's stdout). Progress on stderr.
  int exportRange(Micros fromUs, Micros toUs, const std::string& format, const std::string& outPath,
                  std::ostream& data);
  // The interactions created in [fromUs, toUs) with a branch at
  // `participant` and in `state` (empty: any), at most `limit`.
  int archivePeriods();
  int dropArchive(const std::string& before, const std::string& who, const std::string& why);
  int search(Micros fromUs, Micros toUs, const std::string& participant, const std::string& state,
             std::uint32_t limit);

 private:
  kj::AsyncIoContext& io_;
  Globals g_;
  std::ostream& out_;
};

// "a:1,b:2" -> {"a:1", "b:2"}.
std::vector<std::string> coordinatorList(const std::string& arg);

}  // namespace keel::ctl
