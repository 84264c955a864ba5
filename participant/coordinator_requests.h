#pragma once
// What a coordinator (or keelctl) sends an agent, read into Keel's own
// types: the XID lists of commit, rollback, status and forget. The server
// (agent_server.cc) and the fuzz target tests/fuzz/agent_request_fuzz.cc run
// exactly these functions; operations go through readOps (common/wire.h).

#include <vector>

#include "common/types.h"
#include "schemas/keel.capnp.h"

namespace keel {

std::vector<Xid> readXids(capnp::List<wire::Xid>::Reader list);

// Phase 2 is fenced by the epoch of one coordinator node: the node of the
// first XID. A batch naming XIDs of several nodes would slip the others past
// their fences (or raise one node's fence with another's epoch), so it is
// refused whole (a kj::Exception naming `call`), before anything is done.
std::vector<Xid> readFencedXids(capnp::List<wire::Xid>::Reader list, const char* call);

}  // namespace keel
