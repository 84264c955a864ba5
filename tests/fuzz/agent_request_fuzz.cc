// What a coordinator (or keelctl) sends an agent: the params of prepare,
// prepareBatch, execute, commitOnePhase, commit, rollback, status, forget
// and listBranches, read the way participant/agent_server.cc reads them
// (readXid, readOps, participant/coordinator_requests.h), then each
// operation through the ledger adapter's check (ledger::checkOp) that
// Agent::validate runs before any work.

#include <vector>

#include "participant/adapters/ledger.h"
#include "participant/backend.h"
#include "participant/coordinator_requests.h"
#include "tests/fuzz/fuzz_util.h"

namespace keel {
namespace {

void work(Xid xid, const std::vector<Op>& ops) {
  (void)xid.str();
  for (const Op& op : ops) {
    if (!ledger::checkOp(op) && std::uint8_t(op.kind) > std::uint8_t(OpKind::ReadBalance)) {
      fuzz::violated("the ledger accepted an operation of an undefined kind");
    }
    (void)opKindName(op.kind);
  }
}

}  // namespace
}  // namespace keel

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  if (size < 1) return 0;
  fuzz::withMessage(data, size, 1, [&](capnp::MessageReader& m) {
    switch (data[0] % 8) {
      case 0: {  // prepare
        auto p = m.getRoot<wire::Participant::PrepareParams>();
        work(readXid(p.getXid()), readOps(p.getOperations()));
        break;
      }
      case 1: {  // prepareBatch
        auto items = m.getRoot<wire::Participant::PrepareBatchParams>().getItems();
        if (items.size() > kMaxPrepareBatch) return;  // refused whole, unread
        for (auto item : items) work(readXid(item.getXid()), readOps(item.getOperations()));
        break;
      }
      case 2: {  // execute
        auto p = m.getRoot<wire::Participant::ExecuteParams>();
        work(readXid(p.getXid()), readOps(p.getOperations()));
        break;
      }
      case 3: {  // commitOnePhase
        auto p = m.getRoot<wire::Participant::CommitOnePhaseParams>();
        work(readXid(p.getXid()), readOps(p.getOperations()));
        break;
      }
      case 4: {  // commit (rollback reads the same)
        auto xids = readFencedXids(m.getRoot<wire::Participant::CommitParams>().getXids(), "commit");
        for (const Xid& x : xids) {
          if (seqNode(x.seq) != seqNode(xids.front().seq)) fuzz::violated("commit: XIDs of two nodes passed");
        }
        break;
      }
      case 5: {  // status
        for (const Xid& x : readXids(m.getRoot<wire::Participant::StatusParams>().getXids())) (void)x.str();
        break;
      }
      case 6: {  // forget
        (void)readXids(m.getRoot<wire::Participant::ForgetParams>().getXids());
        break;
      }
      case 7: {  // listBranches
        (void)readXid(m.getRoot<wire::Participant::ListBranchesParams>().getAfter());
        break;
      }
    }
  });
  return 0;
}
