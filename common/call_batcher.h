#pragma once
// CallBatcher: many small calls to one peer carried in one RPC message.
//
// NOTES.md measures ~50 µs of CPU per Cap'n Proto call (both sides), while
// the work of one prepare or commit is a few µs: per-message cost, not the
// work, would bound throughput. So calls to the same peer are queued and
// leave together:
//   - a call made when fewer than `maxInFlight` batches are out leaves at
//     the end of the current event-loop turn, with every other call made in
//     that turn (low load: a call leaves alone, one turn later);
//   - while `maxInFlight` batches are out, new calls wait and leave with the
//     next batch, as soon as one comes back (high load: batches grow by
//     themselves, the way group commit does for fsyncs). A batch counts as
//     out only until its first reply (replies may stream back early), and
//     at most `slotHold` (with a timer): one slow item, a PostgreSQL row
//     lock say, then keeps no other call waiting behind it for long.
// A batch carries at most `maxItems` calls and `maxWeight` of their weight
// (an estimate of their size on the wire, so a batch stays far below the
// receiver's message limits).
//
// `send` gets the batch and answers one reply per item, in item order; if
// it fails, every item of the batch still unanswered fails with its
// exception. `send` may answer items early through its Deliver callback
// (streamed replies), so that one slow item holds up no other. An item whose
// caller stopped waiting before it left (its promise was dropped, e.g. on a
// deadline) is not sent.
//
// Thread: one KJ event loop. Destroying the batcher cancels batches in
// flight; their callers' promises are rejected.

#include <kj/async.h>
#include <kj/debug.h>
#include <kj/function.h>
#include <kj/timer.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

namespace keel {

template <typename Item, typename Reply>
class CallBatcher final : private kj::TaskSet::ErrorHandler {
 public:
  // Answers item i of the batch before the whole batch is answered (a reply
  // for an item already answered is ignored). Safe to call after the batch
  // ended.
  using Deliver = std::function<void(std::size_t, Reply&&)>;
  using SendFn = kj::Function<kj::Promise<std::vector<Reply>>(std::vector<Item>&&, Deliver)>;
  using WeightFn = kj::Function<std::size_t(const Item&)>;

  struct Options {
    std::size_t maxItems = 256;
    std::size_t maxWeight = std::size_t(1) << 20;
    std::size_t maxInFlight = 2;
    kj::Timer* timer = nullptr;                 // for slotHold; none: a batch holds its slot until answered
    kj::Duration slotHold = 5 * kj::MILLISECONDS;
  };

  CallBatcher(Options opts, SendFn send, WeightFn weight)
      : opts_(opts), send_(kj::mv(send)), weight_(kj::mv(weight)), tasks_(*this) {
    KJ_REQUIRE(opts_.maxItems > 0 && opts_.maxInFlight > 0);
  }
  ~CallBatcher() noexcept(false) { *alive_ = false; }

  kj::Promise<Reply> add(Item item) {
    auto paf = kj::newPromiseAndFulfiller<Reply>();
    queue_.push_back(Pending{kj::mv(item), kj::mv(paf.fulfiller)});
    schedule();
    return kj::mv(paf.promise);
  }

  // Changes how many calls a message carries and how many messages are out
  // at once (the participant asked for its own: see Participant.batching).
  // Calls already queued leave under the new limits.
  void setLimits(std::size_t maxItems, std::size_t maxInFlight) {
    KJ_REQUIRE(maxItems > 0 && maxInFlight > 0);
    opts_.maxItems = maxItems;
    opts_.maxInFlight = maxInFlight;
    if (!queue_.empty()) schedule();
  }
  std::size_t maxItems() const { return opts_.maxItems; }
  std::size_t maxInFlight() const { return opts_.maxInFlight; }

  // Counters for benchmarks and tests.
  std::uint64_t batchesSent() const { return batches_; }
  std::uint64_t itemsSent() const { return items_; }
  std::size_t queued() const { return queue_.size(); }

 private:
  struct Pending {
    Item item;
    kj::Own<kj::PromiseFulfiller<Reply>> reply;
  };

  void taskFailed(kj::Exception&& e) override { KJ_LOG(ERROR, "call batcher task failed", e); }

  void schedule() {
    if (scheduled_ || inFlight_ >= opts_.maxInFlight) return;
    scheduled_ = true;
    tasks_.add(kj::evalLater([this]() {
      scheduled_ = false;
      flush();
    }));
  }

  void flush() {
    while (inFlight_ < opts_.maxInFlight && !queue_.empty()) {
      std::vector<Item> items;
      std::vector<kj::Own<kj::PromiseFulfiller<Reply>>> replies;
      std::size_t weight = 0, taken = 0;
      for (; taken < queue_.size() && items.size() < opts_.maxItems; ++taken) {
        Pending& p = queue_[taken];
        if (!p.reply->isWaiting()) continue;  // its caller gave up: never sent
        std::size_t w = weight_(p.item);
        if (!items.empty() && weight + w > opts_.maxWeight) break;
        weight += w;
        items.push_back(kj::mv(p.item));
        replies.push_back(kj::mv(p.reply));
      }
      queue_.erase(queue_.begin(), queue_.begin() + std::ptrdiff_t(taken));
      if (items.empty()) continue;
      ++inFlight_;
      ++batches_;
      items_ += items.size();
      auto rs = std::make_shared<std::vector<kj::Own<kj::PromiseFulfiller<Reply>>>>(kj::mv(replies));
      auto slot = std::make_shared<bool>(true);  // this batch holds an in-flight slot
      Deliver deliver = [this, rs, slot, alive = alive_](std::size_t i, Reply&& r) {
        if (i < rs->size() && (*rs)[i]->isWaiting()) (*rs)[i]->fulfill(kj::mv(r));
        if (*alive && *slot) {  // the peer is making progress on it: let the next batch go
          *slot = false;
          done();
        }
      };
      if (opts_.timer != nullptr) {
        tasks_.add(opts_.timer->afterDelay(opts_.slotHold).then([this, slot]() {
          if (*slot) {  // slow to answer: stop holding up the calls queued behind it
            *slot = false;
            done();
          }
        }));
      }
      tasks_.add(kj::evalNow([&]() { return send_(kj::mv(items), deliver); })
                     .then(
                         [this, rs, slot](std::vector<Reply> out) {
                           if (out.size() != rs->size()) {
                             // A malformed answer: every call it carried failed.
                             fail(*rs, *slot,
                                  kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                                                kj::str("malformed reply: ", out.size(), " answers for ",
                                                        rs->size(), " calls")));
                             return;
                           }
                           for (std::size_t i = 0; i < out.size(); ++i) {
                             if ((*rs)[i]->isWaiting()) (*rs)[i]->fulfill(kj::mv(out[i]));
                           }
                           if (*slot) done();
                           *slot = false;
                         },
                         [this, rs, slot](kj::Exception&& e) {
                           fail(*rs, *slot, kj::mv(e));
                           *slot = false;
                         }));
    }
  }

  void fail(std::vector<kj::Own<kj::PromiseFulfiller<Reply>>>& rs, bool holdsSlot, kj::Exception&& e) {
    for (auto& r : rs) {
      if (r->isWaiting()) r->reject(kj::cp(e));
    }
    if (holdsSlot) done();
  }

  void done() {
    --inFlight_;
    schedule();
  }

  Options opts_;
  SendFn send_;
  WeightFn weight_;
  std::vector<Pending> queue_;
  std::size_t inFlight_ = 0;
  bool scheduled_ = false;
  std::uint64_t batches_ = 0, items_ = 0;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for Deliver calls after destruction
  kj::TaskSet tasks_;  // declared last: destroyed first
};

}  // namespace keel
