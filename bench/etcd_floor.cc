#include "bench/etcd_floor.h"

#include <unistd.h>

#include <cstdio>

#include "bench/floor.h"
#include "common/etcd/etcd_client.h"
#include "common/types.h"

namespace keel::bench {

namespace {

constexpr std::uint32_t kWarmup = 20;

}  // namespace

EtcdFloorResult measureEtcdFloor(kj::AsyncIoContext& io, const std::vector<std::string>& endpoints,
                                 std::uint32_t samples) {
  etcd::Client client(endpoints);
  const std::string prefix = "/keel-bench-etcd-floor-" + std::to_string(::getpid()) + "/";
  auto key = [&prefix](const char* way, std::uint32_t i) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%s/%08u", way, i);
    return prefix + buf;
  };
  std::vector<std::uint64_t> syncUs, asyncUs;
  for (std::uint32_t i = 0; i < kWarmup + samples; ++i) {
    auto k = key("sync", i);
    auto t0 = monoMicros();
    client.txnSync({etcd::Compare::absent(k)}, {etcd::Op::put(k, "commit")}, {etcd::Op::get(k)});
    if (i >= kWarmup) syncUs.push_back(monoMicros() - t0);
  }
  for (std::uint32_t i = 0; i < kWarmup + samples; ++i) {
    auto k = key("async", i);
    auto t0 = monoMicros();
    client.txn({etcd::Compare::absent(k)}, {etcd::Op::put(k, "commit")}, {etcd::Op::get(k)}).wait(io.waitScope);
    if (i >= kWarmup) asyncUs.push_back(monoMicros() - t0);
  }
  client.deleteRangeSync(prefix, etcd::prefixEnd(prefix));
  return EtcdFloorResult{median(syncUs), median(asyncUs), samples};
}

}  // namespace keel::bench
