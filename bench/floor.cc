#include "bench/floor.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include "common/client.h"
#include "common/lmdb.h"
#include "common/types.h"

namespace keel::bench {

double median(std::vector<std::uint64_t> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? double(v[v.size() / 2]) : (double(v[v.size() / 2 - 1]) + double(v[v.size() / 2])) / 2;
}

namespace {

constexpr std::uint32_t kWarmup = 50;
constexpr std::uint32_t kKeys = 8;

}  // namespace

double medianRpcRoundTripUs(kj::AsyncIoContext& io, const std::string& agentAddr, std::uint32_t samples) {
  auto agent = AgentClient::connect(io, agentAddr).wait(io.waitScope);
  std::vector<std::uint64_t> us;
  us.reserve(samples);
  for (std::uint32_t i = 0; i < kWarmup + samples; ++i) {
    auto req = agent->capability().statusRequest();
    req.initXids(0);
    auto t0 = monoMicros();
    req.send().wait(io.waitScope);
    if (i >= kWarmup) us.push_back(monoMicros() - t0);
  }
  return median(us);
}

double medianLmdbCommitUs(const std::string& dir, std::uint32_t samples) {
  std::string envDir = dir + "/floor-lmdb-" + std::to_string(::getpid());
  std::vector<std::uint64_t> us;
  us.reserve(samples);
  {
    lmdb::EnvOptions o;
    o.mapSize = std::size_t(64) << 20;
    std::filesystem::create_directories(envDir);
    lmdb::Env env(envDir, o);  // default, durable flags
    auto dbi = env.openDb("floor");
    const std::string value(100, 'x');
    for (std::uint32_t i = 0; i < kWarmup + samples; ++i) {
      auto t0 = monoMicros();
      auto txn = env.beginWrite();
      // A few keys overwritten in turn: after the warm-up LMDB reuses freed
      // pages and the file stops growing, as in a long-running log (a
      // growing file would add a metadata journal commit to every sync).
      txn.put(dbi, u64Key(i % kKeys), value);
      txn.commit();  // durable: both syncs
      if (i >= kWarmup) us.push_back(monoMicros() - t0);
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(envDir, ec);
  return median(us);
}

FloorResult measureFloor(kj::AsyncIoContext& io, const std::string& agentAddr, const std::string& dir,
                         std::uint32_t samples) {
  FloorResult f;
  f.samples = samples;
  f.rttUs = medianRpcRoundTripUs(io, agentAddr, samples);
  f.lmdbCommitUs = medianLmdbCommitUs(dir, samples);
  return f;
}

}  // namespace keel::bench
