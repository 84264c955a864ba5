#include "common/seq.h"

#include <algorithm>

#include "common/fault.h"
#include "common/log.h"

namespace keel {

SeqAllocator::SeqAllocator(GroupCommitLog& log, MDB_dbi meta, std::uint16_t node, std::uint32_t block,
                           std::uint64_t floor, Mirror mirror)
    : log_(log), meta_(meta), node_(node), block_(block), mirror_(std::move(mirror)), tasks_(*this) {
  auto [start, limit] = log_.runSync([meta, block, floor](lmdb::Txn& txn) {
    auto v = txn.get(meta, kSeqHwmKey);
    std::uint64_t hwm = std::max<std::uint64_t>(v ? keyU64(*v) : 1, floor);  // seq counter 0 is never used
    if (hwm == 0) hwm = 1;
    txn.put(meta, kSeqHwmKey, u64Key(hwm + block));  // must be durable before any use
    return std::pair<std::uint64_t, std::uint64_t>(hwm, hwm + block);
  });
  first_ = next_ = start;
  limit_ = limit;
  reservations_ = 1;
}

kj::Promise<std::uint64_t> SeqAllocator::next() {
  if (!reserving_ && limit_ - next_ <= block_ / 2) reserveMore();
  if (next_ < limit_) return makeSeq(node_, next_++);
  auto paf = kj::newPromiseAndFulfiller<std::uint64_t>();
  waiters_.push_back(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

void SeqAllocator::reserveMore() {
  reserving_ = true;
  auto meta = meta_;
  std::uint64_t ours = limit_, block = block_;
  tasks_.add(log_.run([meta, ours, block](lmdb::Txn& txn) {
                   // Re-read the mark inside the reserving transaction: the
                   // block starts at the stored mark, never below it, even if
                   // some other writer of this meta database moved it.
                   auto v = txn.get(meta, kSeqHwmKey);
                   std::uint64_t base = std::max(v ? keyU64(*v) : 0, ours);
                   txn.put(meta, kSeqHwmKey, u64Key(base + block));  // durable before use
                   return base;
                 })
                 .then([this](std::uint64_t base) -> kj::Promise<std::uint64_t> {
                   if (!mirror_) return base;
                   return mirror_(base + block_).then([base]() { return base; });
                 })
                 .then([this](std::uint64_t base) {
                   if (base > limit_) {
                     // Only another writer (a second process on this WAL, or
                     // a second allocator) can have moved the mark: counters
                     // below it may be theirs, so none of them is handed out.
                     KEEL_LOG_ERROR("seq high-water mark moved from {} to {} behind this allocator's back (another "
                                    "writer on this WAL?): skipping to {}",
                                    limit_, base, base);
                     next_ = std::max(next_, base);
                   }
                   limit_ = base + block_;
                   reserving_ = false;
                   ++reservations_;
                   while (!waiters_.empty() && next_ < limit_) {
                     waiters_.front()->fulfill(makeSeq(node_, next_++));
                     waiters_.pop_front();
                   }
                   if (!waiters_.empty()) reserveMore();
                 }));
}

void SeqAllocator::taskFailed(kj::Exception&& e) {
  reserving_ = false;
  KEEL_LOG_ERROR("seq reservation failed: {}", describeFault(e));
  for (auto& w : waiters_) w->reject(kj::cp(e));
  waiters_.clear();
}

}  // namespace keel
