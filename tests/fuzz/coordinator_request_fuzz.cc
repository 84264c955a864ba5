// What a client sends the coordinator: submit, submitBatch, begin and
// Transaction.execute params, read and checked by the coordinator's own
// functions (coordinator/client_requests.h) before anything runs, then the
// request id check and fingerprint (common/types.h) that come next.

#include <string>

#include "coordinator/client_requests.h"
#include "tests/fuzz/fuzz_util.h"

namespace keel {
namespace {

// Participants the fuzzed coordinator knows (the seeds name them).
bool known(const std::string& p) { return p == "bank-a" || p == "bank-b" || p == "pg"; }

void check(const SubmitRequest& req, capnp::List<wire::Operation>::Reader wireOps, bool allowEmpty) {
  auto bad = validateOps(req.ops, allowEmpty, known);
  // Accepted operations are exactly what the client sent: no undefined
  // kind may pass as a defined one (the wire's enum has 16 bits, OpKind 8).
  if (!bad) {
    for (unsigned i = 0; i < wireOps.size(); ++i) {
      if (std::uint16_t(wireOps[i].getKind()) != std::uint16_t(req.ops[i].kind)) {
        fuzz::violated("an operation of an undefined kind was accepted as a defined one");
      }
    }
  }
  (void)checkRequestId(req.requestId);
  (void)requestFingerprint(req.ops, false);
}

}  // namespace
}  // namespace keel

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  if (size < 1) return 0;
  fuzz::withMessage(data, size, 1, [&](capnp::MessageReader& m) {
    switch (data[0] % 4) {
      case 0: {  // Coordinator.submit
        auto p = m.getRoot<wire::Coordinator::SubmitParams>();
        check(readSubmitRequest(p), p.getOperations(), false);
        break;
      }
      case 1: {  // Coordinator.submitBatch: each item on its own
        auto items = m.getRoot<wire::Coordinator::SubmitBatchParams>().getItems();
        if (items.size() > kMaxSubmitBatch) return;  // refused whole, unread
        for (auto item : items) check(readSubmitRequest(item), item.getOperations(), false);
        break;
      }
      case 2: {  // Coordinator.begin
        auto req = readRequestFields(m.getRoot<wire::Coordinator::BeginParams>());
        (void)checkRequestId(req.requestId);
        break;
      }
      case 3: {  // Transaction.execute
        auto p = m.getRoot<wire::Transaction::ExecuteParams>();
        SubmitRequest req;
        req.ops = readOps(p.getOperations());
        check(req, p.getOperations(), false);
        break;
      }
    }
  });
  return 0;
}
