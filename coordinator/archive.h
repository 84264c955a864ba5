#pragma once
// Archive: finished interactions that left the hot WAL (wal_store.h) once
// they were older than hot_retention_s, kept per period so that old ones
// stay answerable and a whole period can be moved or dropped at once.
//
// Layout: <data-dir>/archive/<YYYY-MM-DD>/ (the UTC day the interaction
// was created), one LMDB environment each, with these databases:
//   interactions  seq -> InteractionRecord bytes, as the hot WAL held them
//   rollbacks     seq -> RollbackRecord bytes (if it had one)
//   requests      request id -> RequestRecord bytes (the hot row, moved)
//   by_time       createdUs ++ seq (16 bytes, big-endian) -> ""
//   by_state      final state (1 byte) ++ createdUs ++ seq -> ""
//   by_participant  participant name ++ NUL ++ createdUs ++ seq -> "" (one
//                 entry per participant the interaction had a branch at)
//   meta          "indexes": present when every record of the period is in
//                 by_state and by_participant (a period begun before those
//                 indexes existed lacks it: its searches read by_time)
// Every write is one durable LMDB transaction per period (append), made
// before the hot WAL drops the records (WalStore::dropArchived): a crash in
// between leaves a record in both, which the next pass archives again
// (the same bytes) and drops.
//
// Threads: append runs on the archiver's thread; the readers on any
// thread. A period whose environment does not open is named (damaged())
// and skipped; the others are served.

#include <kj/async.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <thread>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/lmdb.h"
#include "common/types.h"
#include "coordinator/wal_store.h"

namespace keel {

struct ArchivedInteraction {
  std::uint64_t seq = 0;
  Micros createdUs = 0;
  std::string requestId;
  std::string interaction;  // encoded bytes, as in the hot WAL
  std::string rollback;     // empty if none
  std::string requestRow;   // its request id's row (RequestRecord bytes), if the hot WAL still had it
};

class Archive {
 public:
  // `dir` (<data-dir>/archive) is created on the first append. Opens every
  // period present.
  Archive(std::string dir, std::size_t mapSizeBytes);
  ~Archive();
  Archive(const Archive&) = delete;
  Archive& operator=(const Archive&) = delete;

  // The period an interaction created at `us` belongs to ("2026-12-03").
  static std::string periodOf(Micros us);
  static bool isPeriodName(const std::string& name);  // YYYY-MM-DD

  // Removes a period: no longer served at once; its files go (readers
  // still in it finish first: the environment closes with the last one).
  void drop(const std::string& name);

  // Writes the batch durably, one transaction per period; the same seq
  // again overwrites it (idempotent). Throws on a write error.
  void append(const std::vector<ArchivedInteraction>& batch);
  // Runs `job` on the archive's own thread (reading a batch and an LMDB
  // durable commit, an fsync, never on the event loop); resolves on the
  // caller's loop, or rejects with what the job threw.
  kj::Promise<void> onWorker(std::function<void()> job);

  // Newest period first.
  std::optional<StoredInteraction> get(std::uint64_t seq) const;
  std::optional<RequestRecord> findRequest(const std::string& requestId) const;
  // The latest creation time archived so far (0: nothing): an interaction
  // created after it is not in the archive.
  Micros newestCreatedUs() const;

  // One page of an export or search: records created in [fromUs, toUs),
  // oldest period first, by creation time. `cursor` is "" at the start and
  // the page's `next` afterwards; `next` is "" when done. With a filter,
  // an indexed period reads only its by_participant (or by_state) entries
  // in the range; the records are a superset of the matches either way
  // (a participant filter does not check the state): the caller filters.
  struct Page {
    std::vector<StoredInteraction> records;
    std::uint64_t scanned = 0;
    std::string next;
  };
  struct Filter {
    std::optional<std::uint8_t> state;  // InteractionRecord::State
    std::string participant;            // "" = any
  };
  Page exportPage(const std::string& cursor, Micros fromUs, Micros toUs, std::size_t maxScanned,
                  const Filter& filter = {}) const;

  struct PeriodInfo {
    std::string name;
    std::uint64_t interactions = 0;
    std::string damaged;  // why it does not open ("" = fine)
  };
  std::vector<PeriodInfo> periods() const;
  const std::string& dir() const { return dir_; }

 private:
  struct Period;
  std::shared_ptr<Period> open(const std::string& name, bool create) const;
  std::vector<std::shared_ptr<Period>> snapshot() const;  // oldest first

  std::string dir_;
  std::size_t mapSize_;
  mutable std::mutex mu_;
  mutable std::map<std::string, std::shared_ptr<Period>> periods_;  // GUARDED_BY(mu_)
  mutable std::map<std::string, std::string> damaged_;              // GUARDED_BY(mu_)
  Micros newest_ = 0;                                               // GUARDED_BY(mu_)

  // onWorker's thread, started on first use.
  struct Job {
    std::function<void()> run;
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> done;
  };
  void work();
  std::mutex jobsMu_;
  std::condition_variable jobsCv_;
  std::deque<Job> jobs_;  // GUARDED_BY(jobsMu_)
  bool stopping_ = false;  // GUARDED_BY(jobsMu_)
  std::thread worker_;
};

}  // namespace keel
