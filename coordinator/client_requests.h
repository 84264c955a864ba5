#pragma once
// What a client sends the coordinator (submit, submitBatch items, begin,
// Transaction.execute), read into Keel's own types and checked. The server
// (coordinator_server.cc, Coordinator::validate) and the fuzz target
// tests/fuzz/coordinator_request_fuzz.cc run exactly these functions.

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/statements.h"
#include "common/types.h"
#include "common/wire.h"
#include "schemas/keel.capnp.h"

namespace keel {

// Interactions one submitBatch message may carry.
constexpr std::size_t kMaxSubmitBatch = 1024;

// A request's deadline, request id and time (submit, a submitBatch item,
// begin). A request id longer than the limit is kept here only for the
// answer's sake; checkRequestId refuses it.
template <typename R>
SubmitRequest readRequestFields(R r) {
  SubmitRequest req;
  req.deadlineMs = r.getDeadlineMs();
  auto id = r.getRequestId();
  req.requestId = std::string(id.begin(), id.size());
  req.requestTimeUs = r.getRequestTimeUs();
  return req;
}

// submit and submitBatch items: the fields above and the operations.
template <typename R>
SubmitRequest readSubmitRequest(R r) {
  auto ops = readOps(r.getOperations());
  SubmitRequest req = readRequestFields(r);
  req.ops = std::move(ops);
  return req;
}

// The checks every operation list passes before anything runs (submit and
// Transaction.execute): nullopt when fine, else why not. `known` says
// whether a participant name is configured; `declared` (when given) the
// statements a participant declared (null: not known, the agent decides),
// which a kind-sql operation must fit (name, parameters, row count).
std::optional<std::string> validateOps(
    const std::vector<Op>& ops, bool allowEmpty, const std::function<bool(const std::string&)>& known,
    const std::function<const Statements*(const std::string&)>& declared = nullptr);

}  // namespace keel
