#include "bench/floor.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <vector>

#include "common/client.h"
#include "common/lmdb.h"
#include "common/redo_log.h"
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

namespace {

// Runs `sample(env, i)` kWarmup + samples times in a scratch LMDB
// environment `dir`/floor-NAME-PID (removed afterwards, also on a throw)
// and returns the median time of the samples after the warm-up.
template <typename Sample>
double medianInScratchEnv(const std::string& dir, const char* name, std::uint32_t samples, Sample sample) {
  std::string envDir = dir + "/floor-" + name + "-" + std::to_string(::getpid());
  struct Remover {
    std::string dir;
    ~Remover() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } remover{envDir};
  std::vector<std::uint64_t> us;
  us.reserve(samples);
  lmdb::EnvOptions o;
  o.mapSize = std::size_t(64) << 20;
  std::filesystem::create_directories(envDir);
  {
    lmdb::Env env(envDir, o);  // default, durable flags
    auto run = sample(env);
    for (std::uint32_t i = 0; i < kWarmup + samples; ++i) {
      auto t0 = monoMicros();
      run(i);
      if (i >= kWarmup) us.push_back(monoMicros() - t0);
    }
  }
  return median(us);
}

}  // namespace

double medianLmdbCommitUs(const std::string& dir, std::uint32_t samples) {
  return medianInScratchEnv(dir, "lmdb", samples, [](lmdb::Env& env) {
    auto dbi = env.openDb("floor");
    return [&env, dbi, value = std::string(100, 'x')](std::uint32_t i) {
      auto txn = env.beginWrite();
      // A few keys overwritten in turn: after the warm-up LMDB reuses freed
      // pages and the file stops growing, as in a long-running log (a
      // growing file would add a metadata journal commit to every sync).
      txn.put(dbi, u64Key(i % kKeys), value);
      txn.commit();  // durable: both syncs
    };
  });
}

double medianRedoAppendUs(const std::string& dir, std::uint32_t samples) {
  return medianInScratchEnv(dir, "redo", samples, [samples](lmdb::Env& env) {
    RedoLog::Options ro;
    // Each half holds every sample: the appends never wrap into a
    // checkpoint, which is not part of a group's durability point.
    ro.fileBytes = std::max<std::uint64_t>(ro.fileBytes, 2 * std::uint64_t(kWarmup + samples) * 256);
    return [log = std::make_shared<RedoLog>(env, ro), record = std::string(100, 'x')](std::uint32_t) {
      // durable: one write and one fdatasync
      if (!log->append(record)) throw std::runtime_error("floor: the redo log's half is full");
    };
  });
}

FloorResult measureFloor(kj::AsyncIoContext& io, const std::string& agentAddr, const std::string& dir,
                         std::uint32_t samples) {
  FloorResult f;
  f.samples = samples;
  f.rttUs = medianRpcRoundTripUs(io, agentAddr, samples);
  f.lmdbCommitUs = medianLmdbCommitUs(dir, samples);
  f.redoAppendUs = medianRedoAppendUs(dir, samples);
  return f;
}

FloorResult bracket(const FloorResult& before, const FloorResult& after) {
  FloorResult f;
  f.samples = before.samples;
  f.rttUs = (before.rttUs + after.rttUs) / 2;
  f.lmdbCommitUs = (before.lmdbCommitUs + after.lmdbCommitUs) / 2;
  f.redoAppendUs = (before.redoAppendUs + after.redoAppendUs) / 2;
  f.beforeUs = before.floorUs();
  f.afterUs = after.floorUs();
  return f;
}

}  // namespace keel::bench
