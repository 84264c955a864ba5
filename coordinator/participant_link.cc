#include "coordinator/participant_link.h"

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

kj::Promise<wire::Participant::Client> ParticipantLink::client() {
  KJ_IF_MAYBE(c, cap_) { return *c; }
  KJ_IF_MAYBE(p, connecting_) {
    return p->addBranch().then([this]() -> kj::Promise<wire::Participant::Client> { return client(); });
  }
  auto gen = ++generation_;
  auto fork = rpcConnect(io_, address_)
                  .then([this, gen](kj::Own<RpcConnection> conn) -> kj::Promise<void> {
                    if (gen != generation_) return kj::READY_NOW;  // reset meanwhile
                    auto cap = conn->bootstrap<wire::Participant>();
                    // Before the first call: how this participant wants its
                    // calls batched. An agent that does not know the call
                    // (older), or does not answer in time, gets the
                    // coordinator's own settings.
                    auto ask = io_.provider->getTimer()
                                   .timeoutAfter(opts_.callDeadline, cap.batchingRequest().send().then([this](auto r) {
                                     applyBatching(r.getMaxBatch(), r.getMaxInFlight());
                                   }))
                                   .catch_([](kj::Exception&&) {});
                    return ask.then([this, gen, cap, conn = kj::mv(conn)]() mutable {
                      if (gen != generation_) return;
                      cap_ = cap;
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
    return KJ_EXCEPTION(DISCONNECTED, "participant connection lost", name_);
  });
}

void ParticipantLink::applyBatching(std::uint32_t maxBatch, std::uint32_t maxInFlight) {
  std::size_t batch = maxBatch != 0 ? maxBatch : opts_.maxBatch;
  std::size_t inFlight = maxInFlight != 0 ? maxInFlight : opts_.maxInFlight;
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
  cap_ = nullptr;
  connecting_ = nullptr;
  // Destroying the connection from inside its own disconnect callback is not
  // safe; hand it to the event loop to drop on a later turn.
  if (conn_.get() != nullptr) {
    tasks_.add(kj::evalLater([old = kj::mv(conn_)]() {}));
  }
}


kj::Promise<ParticipantLink::PrepareReply> ParticipantLink::prepare(std::uint64_t epoch, Xid xid, std::vector<Op> ops) {
  return prepares_.add(PrepareItem{epoch, xid, std::move(ops)}).then([this](PrepareReply r) -> kj::Promise<PrepareReply> {
    if (!r.error.empty()) return KJ_EXCEPTION(FAILED, name_ + ": " + r.error);
    return kj::mv(r);
  });
}

kj::Promise<wire::BranchOutcome> ParticipantLink::commit(std::uint64_t epoch, Xid xid) {
  return commits_.add(XidItem{epoch, xid});
}

kj::Promise<wire::BranchOutcome> ParticipantLink::rollback(std::uint64_t epoch, Xid xid) {
  return rollbacks_.add(XidItem{epoch, xid});
}

namespace {

ParticipantLink::PrepareReply readVote(wire::PrepareVote::Reader v) {
  ParticipantLink::PrepareReply r;
  r.vote = v.getVote();
  r.reason = v.getReason().cStr();
  r.results.reserve(v.getResults().size());
  for (auto res : v.getResults()) r.results.push_back(readOpResult(res));
  r.error = v.getError().cStr();
  return r;
}

// Hears a prepareBatch's votes as the agent has them (see VoteSink).
class VoteSinkImpl final : public wire::VoteSink::Server {
 public:
  explicit VoteSinkImpl(std::function<void(std::size_t, ParticipantLink::PrepareReply&&)> deliver)
      : deliver_(std::move(deliver)) {}
  kj::Promise<void> votes(VotesContext ctx) override {
    for (auto iv : ctx.getParams().getVotes()) deliver_(iv.getIndex(), readVote(iv.getVote()));
    return kj::READY_NOW;
  }

 private:
  std::function<void(std::size_t, ParticipantLink::PrepareReply&&)> deliver_;
};

}  // namespace

kj::Promise<std::vector<ParticipantLink::PrepareReply>> ParticipantLink::sendPrepares(
    std::vector<PrepareItem>&& items, std::function<void(std::size_t, PrepareReply&&)> deliver) {
  return call<std::vector<PrepareReply>>(opts_.callDeadline, [items = kj::mv(items), deliver = std::move(deliver)](
                                                                 wire::Participant::Client& c) mutable {
    auto req = c.prepareBatchRequest();
    req.setEpoch(items.front().epoch);
    // A lone item's vote is the answer itself: no sink (a capability
    // exported per message costs its own Release message back).
    if (items.size() > 1) req.setSink(kj::heap<VoteSinkImpl>(std::move(deliver)));
    auto l = req.initItems(items.size());
    for (unsigned i = 0; i < items.size(); ++i) {
      fillXid(l[i].initXid(), items[i].xid);
      fillOps(l[i].initOperations(items[i].ops.size()), items[i].ops);
    }
    return req.send().then([](auto resp) {
      std::vector<PrepareReply> out;
      out.reserve(resp.getVotes().size());
      for (auto v : resp.getVotes()) out.push_back(readVote(v));
      return out;
    });
  });
}

kj::Promise<std::vector<wire::BranchOutcome>> ParticipantLink::sendPhase2(bool commit, std::vector<XidItem>&& items) {
  return call<std::vector<wire::BranchOutcome>>(opts_.callDeadline, [commit, items = kj::mv(items)](
                                                                        wire::Participant::Client& c) {
    auto fill = [&](auto req) {
      req.setEpoch(items.front().epoch);
      auto l = req.initXids(items.size());
      for (unsigned i = 0; i < items.size(); ++i) fillXid(l[i], items[i].xid);
      return req.send().then([](auto resp) {
        std::vector<wire::BranchOutcome> out;
        out.reserve(resp.getOutcomes().size());
        for (auto o : resp.getOutcomes()) out.push_back(o);
        return out;
      });
    };
    return commit ? fill(c.commitRequest()) : fill(c.rollbackRequest());
  });
}

}  // namespace keel
