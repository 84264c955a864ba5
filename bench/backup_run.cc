#include "bench/backup_run.h"

#include <kj/async-io.h>

#include <chrono>
#include <filesystem>

#include "common/backup.h"
#include "common/client.h"
#include "common/fault.h"

namespace keel::bench {

BackupDuringLoad::BackupDuringLoad(std::string coordinator, std::string targetDir, std::string walFile, double atS,
                                   double windowS)
    : coordinator_(std::move(coordinator)),
      targetDir_(std::move(targetDir)),
      walFile_(std::move(walFile)),
      atS_(atS),
      buckets_(std::size_t((windowS + 120) * 1e6) / kBucketUs) {}

BackupDuringLoad::~BackupDuringLoad() {
  if (thread_.joinable()) thread_.join();
}

void BackupDuringLoad::begin() {
  startUs_ = wallMicros();
  thread_ = std::thread([this] { run(); });
}

void BackupDuringLoad::answered(std::uint64_t, ClientOutcome, Micros, Micros answeredUs) {
  Micros start = startUs_.load(std::memory_order_relaxed);
  if (start == 0 || answeredUs < start) return;
  std::size_t i = std::size_t((answeredUs - start) / kBucketUs);
  if (i < buckets_.size()) buckets_[i].fetch_add(1, std::memory_order_relaxed);
}

void BackupDuringLoad::run() {
  std::this_thread::sleep_for(std::chrono::microseconds(Micros(atS_ * 1e6)));
  try {
    auto io = kj::setupAsyncIo();
    auto client = KeelClient::connect(io, coordinator_).wait(io.waitScope);
    BackupTarget target(targetDir_, nullptr);
    beganUs_ = wallMicros();
    auto req = client->capability().backupRequest();
    req.setSink(target.sink());
    auto resp = req.send().wait(io.waitScope);
    endedUs_ = wallMicros();
    auto m = target.commit(coordinator_, BackupDone{resp.getBytes(), resp.getMicros()});
    result_.bytes = m.bytes;
    result_.fired = true;
    std::error_code ec;
    if (!walFile_.empty()) result_.walBytes = std::filesystem::file_size(walFile_, ec);
    if (ec) result_.walBytes = 0;
  } catch (const kj::Exception& e) {
    result_.error = describeFault(e);
  } catch (const std::exception& e) {
    result_.error = e.what();
  }
}

std::uint64_t BackupDuringLoad::count(Micros from, Micros to) const {
  Micros start = startUs_.load();
  std::uint64_t n = 0;
  for (std::size_t i = std::size_t((from - start) / kBucketUs); i < buckets_.size(); ++i) {
    if (start + Micros(i) * kBucketUs >= to) break;
    n += buckets_[i].load();
  }
  return n;
}

BackupRunResult BackupDuringLoad::finish(double windowS) {
  if (thread_.joinable()) thread_.join();
  BackupRunResult r = result_;
  if (!r.fired) return r;
  Micros start = startUs_.load(), end = start + Micros(windowS * 1e6);
  r.atS = double(beganUs_ - start) / 1e6;
  r.seconds = double(endedUs_ - beganUs_) / 1e6;
  auto rate = [&](Micros from, Micros to) { return to > from ? double(count(from, to)) / (double(to - from) / 1e6) : 0.0; };
  r.beforePerS = rate(start, beganUs_);
  r.duringPerS = rate(beganUs_, endedUs_);
  r.afterPerS = rate(std::min(endedUs_, end), end);
  if (endedUs_ >= end) r.error = "the backup outlasted the measured window: raise --duration";
  return r;
}

void printBackupRun(std::FILE* out, const BackupRunResult& r) {
  if (!r.fired) {
    std::fprintf(out, "backup: did not run (%s)\n", r.error.c_str());
    return;
  }
  std::fprintf(out,
               "backup: %.1f MiB (live WAL %.1f MiB) copied in %.2f s, %.1f s into the window; answers/s "
               "before %.0f, during %.0f (%.2f of before), after %.0f%s%s\n",
               double(r.bytes) / double(1 << 20), double(r.walBytes) / double(1 << 20), r.seconds, r.atS, r.beforePerS,
               r.duringPerS, r.ratio(), r.afterPerS, r.error.empty() ? "" : "; ", r.error.c_str());
}

void addBackupRunFields(JsonObject& j, const BackupRunResult& r) {
  j.addRaw("backup_fired", r.fired ? "true" : "false");
  if (!r.error.empty()) j.add("backup_error", r.error);
  if (!r.fired) return;
  j.add("backup_bytes", r.bytes);
  j.add("backup_wal_bytes", r.walBytes);
  j.add("backup_at_s", r.atS);
  j.add("backup_s", r.seconds);
  j.add("backup_before_per_s", r.beforePerS);
  j.add("backup_during_per_s", r.duringPerS);
  j.add("backup_after_per_s", r.afterPerS);
  j.add("backup_during_over_before", r.ratio());
}

}  // namespace keel::bench
