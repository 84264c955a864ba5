#include "participant/coordinator_requests.h"

#include "common/fault.h"
#include "common/wire.h"

namespace keel {

std::vector<Xid> readXids(capnp::List<wire::Xid>::Reader list) {
  std::vector<Xid> out;
  out.reserve(list.size());
  for (auto x : list) out.push_back(readXid(x));
  return out;
}

std::vector<Xid> readFencedXids(capnp::List<wire::Xid>::Reader list, const char* call) {
  auto xids = readXids(list);
  for (const auto& x : xids) {
    if (seqNode(x.seq) != seqNode(xids.front().seq)) {
      throw faultException(std::string(call) + ": one call must name the XIDs of one coordinator node (" +
                           xids.front().str() + " and " + x.str() + " differ)");
    }
  }
  return xids;
}

}  // namespace keel
