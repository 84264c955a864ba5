#pragma once
// SeqAllocator: interaction sequence numbers that never repeat, across
// crashes too, without an fsync per number.
//
// The `meta` database holds the high-water mark `seq_hwm`: every counter
// below it may have been handed out. Numbers are handed out only below a
// hwm that is already durable; when fewer than half a block remain, the next
// block is reserved in the background (one durable write per block). After
// a crash, counting resumes at the durable hwm: numbers reserved but never
// used are skipped, none is reused. Every reservation re-reads the stored
// hwm in its own write transaction and starts at or above it, so even two
// writers of one meta database (which DataDir's lock exists to prevent)
// never hand out the same number.
//
// The top 16 bits of a seq carry the node id (see makeSeq in types.h).
// Thread: the event loop that calls next(); the log's writer does the I/O.

#include <kj/async.h>

#include <deque>
#include <functional>

#include "common/group_log.h"
#include "common/types.h"

namespace keel {

class SeqAllocator final : private kj::TaskSet::ErrorHandler {
 public:
  // Also told of every reservation before its numbers are handed out (the
  // cluster records it in etcd, so that a node whose disk was lost never
  // reissues a seq); the block is used once its promise resolved.
  using Mirror = std::function<kj::Promise<void>(std::uint64_t limit)>;

  // Blocking: reads the durable hwm and durably reserves the first block,
  // starting at `floor` at least (counters below it may have been handed
  // out by an incarnation this WAL never saw).
  SeqAllocator(GroupCommitLog& log, MDB_dbi meta, std::uint16_t node, std::uint32_t block,
               std::uint64_t floor = 0, Mirror mirror = nullptr);

  // The next seq. Resolves at once unless the reserved block is used up.
  kj::Promise<std::uint64_t> next();

  // The first seq of this incarnation: any smaller seq of this node was
  // handed out by an earlier incarnation.
  std::uint64_t firstOfIncarnation() const { return makeSeq(node_, first_); }
  std::uint64_t reservations() const { return reservations_; }
  // The seq next() hands out next: every smaller one of this node has been
  // handed out (or skipped).
  std::uint64_t nextSeq() const { return makeSeq(node_, next_); }
  // Counters below it are reserved (durably, and mirrored).
  std::uint64_t limit() const { return limit_; }

 private:
  void reserveMore();
  void taskFailed(kj::Exception&& e) override;

  GroupCommitLog& log_;
  const MDB_dbi meta_;
  const std::uint16_t node_;
  const std::uint32_t block_;
  Mirror mirror_;
  std::uint64_t first_ = 0;
  std::uint64_t next_ = 0;   // next counter to hand out
  std::uint64_t limit_ = 0;  // durable hwm: counters < limit_ may be handed out
  bool reserving_ = false;
  std::uint64_t reservations_ = 0;
  std::deque<kj::Own<kj::PromiseFulfiller<std::uint64_t>>> waiters_;
  kj::TaskSet tasks_;
};

// Key of the high-water mark in the meta database.
inline constexpr const char* kSeqHwmKey = "seq_hwm";

}  // namespace keel
