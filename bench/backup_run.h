#pragma once
// keel-bench --backup-at SECONDS: that far into the measured window, a hot
// backup of the coordinator's WAL (Coordinator.backup, what `keelctl
// backup` calls, here through an in-process BackupTarget into the run's
// directory) runs while the load goes on. Reported: the bytes copied, how
// long it took, and the load's answers per second during it against the
// part of the window before it (and after it), so the cost of a backup
// under load is one ratio (docs/performance.md, "Backup under load").
//
// Threads: the backup runs on its own thread with its own event loop and
// connection; answered() is called from the client threads (10 ms buckets
// of atomics); finish() runs on the caller's thread after the load.

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/keel_load.h"
#include "bench/report.h"

namespace keel::bench {

struct BackupRunResult {
  bool fired = false;
  std::string error;
  double atS = 0, seconds = 0;  // when it began in the window, how long it took
  std::uint64_t bytes = 0;      // the compacted copy
  std::uint64_t walBytes = 0;   // the live WAL file when it ended (0: not known)
  double beforePerS = 0, duringPerS = 0, afterPerS = 0;  // answers per second
  double ratio() const { return beforePerS > 0 ? duringPerS / beforePerS : 0; }
};

class BackupDuringLoad final : public AnswerObserver {
 public:
  // `walFile`: the coordinator's data.mdb, for its size (may be empty).
  BackupDuringLoad(std::string coordinator, std::string targetDir, std::string walFile, double atS, double windowS);
  ~BackupDuringLoad() override;

  void begin();  // the measured window opens (LoadOptions::atWindowStart)
  void answered(std::uint64_t seq, ClientOutcome outcome, Micros submittedUs, Micros answeredUs) override;
  BackupRunResult finish(double windowS);

 private:
  void run();
  std::uint64_t count(Micros from, Micros to) const;

  const std::string coordinator_, targetDir_, walFile_;
  const double atS_;
  static constexpr Micros kBucketUs = 10'000;
  std::vector<std::atomic<std::uint32_t>> buckets_;
  std::atomic<Micros> startUs_{0};
  std::thread thread_;
  BackupRunResult result_;
  Micros beganUs_ = 0, endedUs_ = 0;
};

void printBackupRun(std::FILE* out, const BackupRunResult& r);
void addBackupRunFields(JsonObject& j, const BackupRunResult& r);

}  // namespace keel::bench
