#pragma once
// etcd's own cost of one decision, measured on the bench's etcd in the same
// run as the load (`keel-bench --cluster N --etcd-floor`): the median of
// `samples` sequential create-if-absent txns (compare: the key is absent;
// success: put it; failure: get it), each on a fresh key under a scratch
// prefix that is deleted afterwards. Two ways, as the coordinator could
// issue it: blocking (txnSync) and through the KJ loop (txn, one
// outstanding), which adds the hop from the client's completion-queue
// thread back to the loop.

#include <kj/async-io.h>

#include <cstdint>
#include <string>
#include <vector>

namespace keel::bench {

struct EtcdFloorResult {
  double syncUs = 0, asyncUs = 0;
  std::uint32_t samples = 0;
};

EtcdFloorResult measureEtcdFloor(kj::AsyncIoContext& io, const std::vector<std::string>& endpoints,
                                 std::uint32_t samples);

}  // namespace keel::bench
