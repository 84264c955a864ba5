#include "coordinator/participant_link.h"

#include <algorithm>

#include "common/fault.h"
#include "common/log.h"
#include "common/wire.h"

namespace keel {

ParticipantLink::ParticipantLink(kj::AsyncIoContext& io, std::string name, std::string address, LinkOptions opts)
    : io_(io),
      name_(std::move(name)),
      address_(std::move(address)),
      opts_(opts),
      tasks_(*this),
      prepares_({opts.maxBatch, std::size_t(1) << 20, opts.maxInFlight, &io.provider->getTimer()},
                [this](std::vector<PrepareItem>&& items, auto deliver) {
                  return sendPrepares(kj::mv(items), kj::mv(deliver));
                },
                [](const PrepareItem& i) { return wireWeight(i.ops); }),
      commits_({opts.maxBatch * 8, std::size_t(1) << 20, opts.maxInFlight, &io.provider->getTimer()},
               [this](std::vector<XidItem>&& items, auto) { return sendPhase2(true, kj::mv(items)); },
               [](const XidItem&) { return std::size_t(16); }),
      rollbacks_({opts.maxBatch * 8, std::size_t(1) << 20, opts.maxInFlight, &io.provider->getTimer()},
                 [this](std::vector<XidItem>&& items, auto) { return sendPhase2(false, kj::mv(items)); },
                 [](const XidItem&) { return std::size_t(16); }) {}

ParticipantLink::~ParticipantLink() noexcept(false) {
  auto avg = [](std::uint64_t items, std::uint64_t batches) { return batches == 0 ? 0.0 : double(items) / batches; };
  KEEL_LOG_INFO("{}: {} prepares in {} messages ({:.1f} each), {} commits in {} ({:.1f}), {} rollbacks in {} ({:.1f})",
                name_, prepares_.itemsSent(), prepares_.batchesSent(), avg(prepares_.itemsSent(), prepares_.batchesSent()),
                commits_.itemsSent(), commits_.batchesSent(), avg(commits_.itemsSent(), commits_.batchesSent()),
                rollbacks_.itemsSent(), rollbacks_.batchesSent(),
                avg(rollbacks_.itemsSent(), rollbacks_.batchesSent()));
}

// ------------------------------------------------------------ connection

kj::Promise<wire::Participant::Client> ParticipantLink::client() {
  KJ_IF_MAYBE(c, cap_) { return *c; }
  KJ_IF_MAYBE(p, connecting_) {
    return p->addBranch().then([this]() -> kj::Promise<wire::Participant::Client> { return client(); });
  }
  auto gen = ++generation_;
  // The participant's capability and the connection it came over (none for
  // an embedded participant: its calls never leave this process).
  using Reached = std::pair<wire::Participant::Client, kj::Own<RpcConnection>>;
  kj::Promise<Reached> reached = nullptr;
  KJ_IF_MAYBE(l, local_) {
    reached = Reached(*l, kj::Own<RpcConnection>());
  } else {
    reached = rpcConnect(io_, address_, name_)  // over TLS the agent must present a certificate naming it
                  .then([](kj::Own<RpcConnection> conn) {
                    auto cap = conn->bootstrap<wire::Participant>();
                    return Reached(kj::mv(cap), kj::mv(conn));
                  });
  }
  auto fork = reached
                  .then([this, gen](Reached r) -> kj::Promise<void> {
                    if (gen != generation_) return kj::READY_NOW;  // reset meanwhile
                    auto cap = kj::mv(r.first);
                    auto conn = kj::mv(r.second);
                    // Before the first call: how this participant wants its
                    // calls batched. An agent that does not know the call
                    // (older), or does not answer in time, gets the
                    // coordinator's own settings.
                    auto ask = io_.provider->getTimer()
                                   .timeoutAfter(opts_.callDeadline, cap.batchingRequest().send().then([this, gen](auto r) {
                                     applyBatching(r.getMaxBatch(), r.getMaxInFlight());
                                     if (gen == generation_) preparedVisible_ = r.getPreparedVisible();
                                   }))
                                   .catch_([](kj::Exception&&) {});
                    // And the statements it runs for clients (none known:
                    // every call goes to the agent, which decides).
                    auto declared = io_.provider->getTimer()
                                        .timeoutAfter(opts_.callDeadline,
                                                      cap.statementsRequest().send().then([this, gen](auto r) {
                                                        if (gen != generation_) return;
                                                        statements_ = readDeclaredStatements(r);
                                                      }))
                                        .catch_([](kj::Exception&&) {});
                    ask = ask.then([declared = kj::mv(declared)]() mutable { return kj::mv(declared); });
                    return ask.then([this, gen, cap, conn = kj::mv(conn)]() mutable {
                      if (gen != generation_) return;
                      cap_ = cap;
                      if (conn.get() == nullptr) {  // embedded
                        connecting_ = nullptr;
                        return;
                      }
                      tasks_.add(conn->onDisconnect().then(
                          [this, gen]() {
                            if (gen == generation_) reset();
                          },
                          [this, gen](kj::Exception&&) {
                            if (gen == generation_) reset();
                          }));
                      conn_ = kj::mv(conn);
                      connecting_ = nullptr;
                    });
                  },
                        [this, gen](kj::Exception&& e) {
                          if (gen == generation_) connecting_ = nullptr;
                          kj::throwFatalException(kj::mv(e));
                        })
                  .fork();
  auto branch = fork.addBranch();
  connecting_ = kj::mv(fork);
  return branch.then([this]() -> kj::Promise<wire::Participant::Client> {
    KJ_IF_MAYBE(c, cap_) { return *c; }
    return kj::Exception(kj::Exception::Type::DISCONNECTED, "keel", 0, kj::str("connection to ", name_, " lost"));
  });
}

void ParticipantLink::applyBatching(std::uint32_t maxBatch, std::uint32_t maxInFlight) {
  std::size_t batch = maxBatch != 0 ? maxBatch : opts_.maxBatch;
  std::size_t inFlight = maxInFlight != 0 ? maxInFlight : opts_.maxInFlight;
  // The participant's wish is bounded by what its own limits allow.
  batch = std::min<std::size_t>(batch, 4096);
  inFlight = std::min<std::size_t>(inFlight, 64);
  if (batch == prepares_.maxItems() && inFlight == prepares_.maxInFlight()) return;
  KEEL_LOG_INFO("{}: the participant asks for at most {} prepare(s) per message and {} message(s) in flight "
                "(coordinator settings: batch_max = {}, batch_in_flight = {})",
                name_, batch, inFlight, opts_.maxBatch, opts_.maxInFlight);
  prepares_.setLimits(batch, inFlight);
  commits_.setLimits(batch * 8, inFlight);
  rollbacks_.setLimits(batch * 8, inFlight);
}

void ParticipantLink::reset() {
  ++generation_;
  statements_.reset();
  preparedVisible_ = false;
  cap_ = nullptr;
  connecting_ = nullptr;
  // Destroying the connection from inside its own disconnect callback is not
  // safe; hand it to the event loop to drop on a later turn.
  if (conn_.get() != nullptr) {
    tasks_.add(kj::evalLater([old = kj::mv(conn_)]() {}));
  }
}

// ------------------------------------------------------------ calls and health

template <typename T, typename Fn>
kj::Promise<T> ParticipantLink::call(kj::Duration deadline, Fn&& fn) {
  Micros started = monoMicros();
  return io_.provider->getTimer()
      .timeoutAfter(deadline, client().then([fn = kj::fwd<Fn>(fn)](wire::Participant::Client c) mutable
                                            -> kj::Promise<T> { return fn(c); }))
      .then(
          [this, started](T v) -> T {
            if (metrics_ != nullptr) metrics_->callLatency->observe(monoMicros() - started);
            answered();
            return kj::mv(v);
          },
          [this, started](kj::Exception&& e) -> T {
            if (metrics_ != nullptr) {
              metrics_->callLatency->observe(monoMicros() - started);
              metrics_->callFailures.inc();
            }
            kj::throwFatalException(failed(kj::mv(e)));
          });
}

kj::Exception ParticipantLink::failed(kj::Exception&& e) {
  switch (e.getType()) {
    case kj::Exception::Type::DISCONNECTED:
    case kj::Exception::Type::OVERLOADED: {
      // Refused, lost, or no answer in time: the peer may be slow, or the
      // connection may be dead without either side having noticed (a
      // half-open TCP connection never reports anything). Start afresh
      // next time.
      reset();
      if (up_) {
        up_ = false;
        if (metrics_ != nullptr) metrics_->up = false;
        downSinceUs_ = wallMicros();
        if (healthChanged_) healthChanged_(false, describeFault(e));
      }
      return kj::mv(e);
    }
    default:
      // The participant answered, with a refusal of its own (stale epoch,
      // say): it is up.
      markUp();
      return kj::mv(e);
  }
}

void ParticipantLink::answered() { markUp(); }

void ParticipantLink::markUp() {
  if (up_) return;
  up_ = true;
  if (metrics_ != nullptr) metrics_->up = true;
  if (healthChanged_) healthChanged_(true, "");
}

namespace {

// Reads a reply with `read`; a malformed one becomes a FAILED exception
// naming the participant, logged once per participant and kind of fault.
template <typename Fn>
auto readReply(const std::string& name, std::set<std::string>& logged, const char* what, Fn&& read)
    -> decltype(read()) {
  try {
    return read();
  } catch (const MalformedReply& e) {
    std::string kind = std::string(what) + ": " + e.what();
    if (logged.insert(kind).second) {
      KEEL_LOG_ERROR("malformed {} reply from {}: {} (the call counts as failed; logged once)", what, name,
                     e.what());
    }
    throw faultException("malformed reply from " + name + ": " + e.what());
  }
}

}  // namespace

// ------------------------------------------------------------ batched calls

kj::Promise<PrepareReply> ParticipantLink::prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  return prepares_.add(PrepareItem{epoch, xid, std::move(ops)}).then([this](PrepareReply r) -> kj::Promise<PrepareReply> {
    if (!r.error.empty()) return faultException(name_ + ": " + r.error);
    return kj::mv(r);
  });
}

kj::Promise<BranchOutcome> ParticipantLink::commit(std::uint64_t epoch, Xid xid, std::uint64_t hostTxid) {
  return commits_.add(XidItem{epoch, xid, hostTxid});
}

kj::Promise<BranchOutcome> ParticipantLink::rollback(std::uint64_t epoch, Xid xid) {
  return rollbacks_.add(XidItem{epoch, xid});
}

namespace {

// Hears a prepareBatch's votes as the agent has them (see VoteSink).
class VoteSinkImpl final : public wire::VoteSink::Server {
 public:
  VoteSinkImpl(std::string name, std::vector<std::size_t> opsSent,
               std::function<void(std::size_t, PrepareReply&&)> deliver)
      : name_(std::move(name)), opsSent_(std::move(opsSent)), deliver_(std::move(deliver)) {}
  kj::Promise<void> votes(VotesContext ctx) override {
    for (auto iv : ctx.getParams().getVotes()) {
      std::size_t i = iv.getIndex();
      if (i >= opsSent_.size()) {
        KEEL_LOG_WARN("{}: streamed vote for item {} of a batch of {}; ignored (the answer carries every vote)",
                      name_, i, opsSent_.size());
        continue;
      }
      try {
        deliver_(i, readPrepareVote(iv.getVote(), opsSent_[i]));
      } catch (const MalformedReply& e) {
        // The batch's answer repeats every vote; that one is judged there.
        KEEL_LOG_WARN("{}: malformed streamed vote ({}); waiting for the batch's answer", name_, e.what());
      }
    }
    return kj::READY_NOW;
  }

 private:
  std::string name_;
  std::vector<std::size_t> opsSent_;
  std::function<void(std::size_t, PrepareReply&&)> deliver_;
};

}  // namespace

kj::Promise<std::vector<PrepareReply>> ParticipantLink::sendPrepares(
    std::vector<PrepareItem>&& items, std::function<void(std::size_t, PrepareReply&&)> deliver) {
  if (metrics_ != nullptr) metrics_->prepareBatch->observe(items.size());
  std::vector<std::size_t> opsSent;
  opsSent.reserve(items.size());
  for (auto& i : items) opsSent.push_back(i.ops.size());
  return call<std::vector<PrepareReply>>(
      opts_.callDeadline, [this, items = kj::mv(items), opsSent = std::move(opsSent),
                           deliver = std::move(deliver)](wire::Participant::Client& c) mutable {
        std::size_t bytes = 32;
        for (const auto& i : items) bytes += 48 + wireWeight(i.ops);
        auto req = c.prepareBatchRequest(messageSizeHint(bytes, items.size() > 1 ? 1 : 0));
        req.setEpoch(items.front().epoch);
        // A lone item's vote is the answer itself: no sink (a capability
        // exported per message costs its own Release message back).
        if (items.size() > 1) req.setSink(kj::heap<VoteSinkImpl>(name_, opsSent, std::move(deliver)));
        auto l = req.initItems(items.size());
        for (unsigned i = 0; i < items.size(); ++i) {
          fillXid(l[i].initXid(), items[i].xid);
          fillOps(l[i].initOperations(items[i].ops.size()), items[i].ops);
        }
        return req.send().then([this, opsSent = std::move(opsSent)](auto resp) {
          return readReply(name_, malformedLogged_, "prepare",
                           [&] { return readPrepareBatch(resp.getVotes(), opsSent); });
        });
      });
}

kj::Promise<std::vector<BranchOutcome>> ParticipantLink::sendPhase2(bool commit, std::vector<XidItem>&& items) {
  if (metrics_ != nullptr) metrics_->phase2Batch->observe(items.size());
  return call<std::vector<BranchOutcome>>(opts_.callDeadline, [this, commit, items = kj::mv(items)](
                                                                  wire::Participant::Client& c) {
    auto fill = [&](auto req) {
      req.setEpoch(items.front().epoch);
      auto l = req.initXids(items.size());
      for (unsigned i = 0; i < items.size(); ++i) fillXid(l[i], items[i].xid);
      std::size_t n = items.size();
      if constexpr (requires { req.initHostTxids(0u); }) {  // commit, not rollback
        // Only when a branch has one: a ledger's commit message stays as it was.
        if (std::any_of(items.begin(), items.end(), [](const XidItem& x) { return x.hostTxid != 0; })) {
          auto t = req.initHostTxids(n);
          for (unsigned i = 0; i < n; ++i) t.set(i, items[i].hostTxid);
        }
      }
      return req.send().then([this, n, commit](auto resp) {
        return readReply(name_, malformedLogged_, commit ? "commit" : "rollback",
                         [&] { return readOutcomes(resp.getOutcomes(), n); });
      });
    };
    auto hint = messageSizeHint(64 + 40 * items.size());
    return commit ? fill(c.commitRequest(hint)) : fill(c.rollbackRequest(hint));
  });
}

// ------------------------------------------------------------ unbatched calls

kj::Promise<PrepareReply> ParticipantLink::execute(std::uint64_t epoch, Xid xid, std::vector<Op> ops,
                                                   kj::Duration deadline) {
  return call<PrepareReply>(deadline, [this, epoch, xid, ops = std::move(ops)](wire::Participant::Client& c) {
    auto req = c.executeRequest();
    req.setEpoch(epoch);
    fillXid(req.initXid(), xid);
    fillOps(req.initOperations(ops.size()), ops);
    std::size_t n = ops.size();
    return req.send().then([this, n](auto resp) {
      return readReply(name_, malformedLogged_, "execute", [&] { return readExecute(resp, n); });
    });
  });
}

kj::Promise<OnePhaseReply> ParticipantLink::commitOnePhase(std::uint64_t epoch, Xid xid, std::vector<Op> ops,
                                                           kj::Duration deadline) {
  return call<OnePhaseReply>(deadline, [this, epoch, xid, ops = std::move(ops)](wire::Participant::Client& c) {
    auto req = c.commitOnePhaseRequest();
    req.setEpoch(epoch);
    fillXid(req.initXid(), xid);
    fillOps(req.initOperations(ops.size()), ops);
    std::size_t n = ops.size();
    return req.send().then([this, n](auto resp) {
      return readReply(name_, malformedLogged_, "one-phase commit", [&] { return readOnePhase(resp, n); });
    });
  });
}

kj::Promise<std::vector<RecoveredBranch>> ParticipantLink::recover(std::uint64_t epoch, std::uint16_t node,
                                                                   kj::Duration deadline) {
  return call<std::vector<RecoveredBranch>>(deadline, [this, epoch, node](wire::Participant::Client& c) {
    auto req = c.recoverRequest();
    req.setEpoch(epoch);
    req.setNode(node);
    return req.send().then([this](auto resp) {
      return readReply(name_, malformedLogged_, "recover", [&] { return readRecovered(resp.getBranches()); });
    });
  });
}

kj::Promise<ParticipantLink::ReleaseReply> ParticipantLink::release(std::uint64_t epoch, std::uint16_t node,
                                                                   std::uint64_t floor,
                                                                   const std::vector<std::uint64_t>& keep,
                                                                   kj::Duration deadline) {
  return call<ReleaseReply>(deadline, [epoch, node, floor, keep](wire::Participant::Client& c) {
    auto req = c.releaseRequest();
    req.setEpoch(epoch);
    req.setNode(node);
    req.setFloor(floor);
    auto l = req.initKeep(keep.size());
    for (unsigned i = 0; i < keep.size(); ++i) l.set(i, keep[i]);
    return req.send().then([](auto resp) {
      return ReleaseReply{resp.getDropped(), resp.getMore(), resp.getFloor()};
    });
  });
}

kj::Promise<ParticipantLink::SeqRecords> ParticipantLink::branchesOf(std::uint64_t seq, kj::Duration deadline) {
  return call<SeqRecords>(deadline, [this, seq](wire::Participant::Client& c) {
    auto req = c.listBranchesRequest();
    req.getAfter().setSeq(seq);
    req.getAfter().setBranch(0);
    req.setLimit(std::uint32_t(Limits::kMaxParticipants) * 2);  // far more than one interaction has there
    return req.send().then([this, seq](auto resp) {
      auto all = readReply(name_, malformedLogged_, "listBranches", [&] { return readRecovered(resp.getBranches()); });
      SeqRecords out;
      for (auto& b : all) {
        if (b.xid.seq == seq) out.branches.push_back(std::move(b));
      }
      for (auto f : resp.getFloors()) {
        if (f.getNode() == seqNode(seq) && f.getFloor() > seq) out.belowFloor = true;
      }
      return out;
    });
  });
}

kj::Promise<void> ParticipantLink::probe(kj::Duration deadline) {
  return call<bool>(deadline, [](wire::Participant::Client& c) {
           auto req = c.statusRequest();
           req.initXids(0);
           return req.send().then([](auto) { return true; });
         })
      .ignoreResult();
}

}  // namespace keel
