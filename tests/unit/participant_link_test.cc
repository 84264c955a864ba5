// ParticipantLink against a participant that breaks the protocol's shape:
// every malformed reply fails that call with the participant's name and
// what was wrong, the link keeps working for the next call, and a silent
// participant is reported down once and up once.

#include "coordinator/participant_link.h"

#include <gtest/gtest.h>
#include <kj/async-io.h>

#include "common/rpc.h"
#include "common/wire.h"

namespace keel {
namespace {

// Answers with whatever `mode` says; everything else as a well-behaved agent.
class FakeParticipant final : public wire::Participant::Server {
 public:
  explicit FakeParticipant(std::string& mode) : mode_(mode) {}

  kj::Promise<void> prepareBatch(PrepareBatchContext ctx) override {
    auto items = ctx.getParams().getItems();
    std::size_t n = mode_ == "fewer-votes" ? items.size() - 1 : items.size();
    auto votes = ctx.getResults().initVotes(n);
    for (unsigned i = 0; i < n; ++i) {
      votes[i].setVote(mode_ == "unknown-vote" ? static_cast<wire::Vote>(9) : wire::Vote::YES);
      std::size_t results = items[i].getOperations().size() + (mode_ == "extra-results" ? 2 : 0);
      votes[i].initResults(results);
    }
    return kj::READY_NOW;
  }
  kj::Promise<void> commit(CommitContext ctx) override {
    auto n = ctx.getParams().getXids().size();
    auto l = ctx.getResults().initOutcomes(mode_ == "extra-outcomes" ? n + 1 : n);
    for (unsigned i = 0; i < l.size(); ++i) {
      l.set(i, mode_ == "unknown-outcome" ? static_cast<wire::BranchOutcome>(42) : wire::BranchOutcome::COMMITTED);
    }
    return kj::READY_NOW;
  }
  kj::Promise<void> batching(BatchingContext) override { return kj::READY_NOW; }
  kj::Promise<void> status(StatusContext) override { return kj::READY_NOW; }  // the probe

 private:
  std::string& mode_;
};

class ParticipantLinkTest : public ::testing::Test {
 public:
  ~ParticipantLinkTest() noexcept override {}

 protected:
  kj::AsyncIoContext io_ = kj::setupAsyncIo();
  std::string mode_;
  RpcServer server_{io_, kj::heap<FakeParticipant>(mode_)};
  std::unique_ptr<ParticipantLink> link_;
  std::vector<std::pair<bool, std::string>> health_;

  void TearDown() override {
    // Close our end and let the server see it before it goes (Cap'n Proto
    // 0.9.2 must not destroy a server with a connection open).
    link_.reset();
    io_.provider->getTimer().afterDelay(20 * kj::MILLISECONDS).wait(io_.waitScope);
  }

  void SetUp() override {
    unsigned port = server_.listen("127.0.0.1:0").wait(io_.waitScope);
    link_ = std::make_unique<ParticipantLink>(io_, "fake", "127.0.0.1:" + std::to_string(port));
    link_->onHealthChange([this](bool up, const std::string& why) { health_.emplace_back(up, why); });
  }

  std::string prepareError() {
    try {
      link_->prepare(1, Xid{makeSeq(1, 1), 1}, {Op{"fake", OpKind::Debit, "a", 1}}).wait(io_.waitScope);
    } catch (const kj::Exception& e) {
      return e.getDescription().cStr();
    }
    return "";
  }
  std::string commitError() {
    try {
      link_->commit(1, Xid{makeSeq(1, 1), 1}).wait(io_.waitScope);
    } catch (const kj::Exception& e) {
      return e.getDescription().cStr();
    }
    return "";
  }
};

TEST_F(ParticipantLinkTest, MalformedRepliesFailTheirCallAndTheLinkGoesOn) {
  mode_ = "extra-results";
  EXPECT_EQ(prepareError(), "malformed reply from fake: 3 results for 1 operations");
  mode_ = "unknown-vote";
  EXPECT_EQ(prepareError(), "malformed reply from fake: unknown vote 9");
  mode_ = "extra-outcomes";
  EXPECT_EQ(commitError(), "malformed reply from fake: 2 outcomes for 1 branches");
  mode_ = "unknown-outcome";
  EXPECT_EQ(commitError(), "malformed reply from fake: unknown branch outcome 42");
  mode_ = "";
  EXPECT_EQ(prepareError(), "");  // well-formed again: the link works
  EXPECT_EQ(commitError(), "");
  // A participant that answers (even wrongly) is up: no health change.
  EXPECT_TRUE(health_.empty());
}

TEST_F(ParticipantLinkTest, ABatchAnsweredWithTooFewVotesFailsEveryCallInIt) {
  mode_ = "fewer-votes";
  // Two prepares in one turn travel in one batch; the answer has one vote.
  auto a = link_->prepare(1, Xid{makeSeq(1, 1), 1}, {Op{"fake", OpKind::Debit, "a", 1}});
  auto b = link_->prepare(1, Xid{makeSeq(1, 2), 1}, {Op{"fake", OpKind::Debit, "b", 1}});
  for (auto* p : {&a, &b}) {
    try {
      p->wait(io_.waitScope);
      ADD_FAILURE() << "a batch with a missing vote answered";
    } catch (const kj::Exception& e) {
      EXPECT_EQ(std::string(e.getDescription().cStr()), "malformed reply from fake: 1 votes for 2 prepares");
    }
  }
}

TEST(ParticipantLinkHealth, ASilentParticipantIsReportedDownOnceAndUpOnce) {
  auto io = kj::setupAsyncIo();
  std::string mode;
  // Nothing listens on the port at first: connection refused.
  unsigned port;
  {
    RpcServer probe(io, kj::heap<FakeParticipant>(mode));
    port = probe.listen("127.0.0.1:0").wait(io.waitScope);
  }
  std::unique_ptr<RpcServer> server;  // destroyed after the link (its connection closes first)
  ParticipantLink link(io, "fake", "127.0.0.1:" + std::to_string(port));
  std::vector<std::pair<bool, std::string>> health;
  link.onHealthChange([&](bool up, const std::string& why) { health.emplace_back(up, why); });
  for (int i = 0; i < 3; ++i) EXPECT_ANY_THROW(link.probe(200 * kj::MILLISECONDS).wait(io.waitScope));
  ASSERT_EQ(health.size(), 1u);
  EXPECT_FALSE(health[0].first);
  EXPECT_EQ(health[0].second, "connection refused");
  EXPECT_FALSE(link.up());
  server = std::make_unique<RpcServer>(io, kj::heap<FakeParticipant>(mode));
  server->listen("127.0.0.1:" + std::to_string(port)).wait(io.waitScope);
  link.probe(kj::SECONDS).wait(io.waitScope);
  ASSERT_EQ(health.size(), 2u);
  EXPECT_TRUE(health[1].first);
  EXPECT_TRUE(link.up());
  link.reset();  // close our end and let the server see it before it goes
  io.provider->getTimer().afterDelay(20 * kj::MILLISECONDS).wait(io.waitScope);
}

}  // namespace
}  // namespace keel
