// keel-bench-micro, continued: the ledger agent's branch work and a Cap'n
// Proto round trip, each without the network or other processes.
//
// BM_LedgerPrepareCommit/N: N branches of one debit each prepared at once
// through the Agent (participant/agent.h), then committed in one call, on a
// durable branch log in /tmp. Reports branches per second and the branch
// log's durable commits per branch (group commit shares them).
//
// BM_RpcRoundTrip/pipe and /tcp: one Participant.status call with an empty
// list, client and a trivial server on one event loop, over an in-process
// pipe or a loopback TCP connection: the CPU cost of a round trip with no
// thread switch (the floor's RTT is measured between processes).

#include <benchmark/benchmark.h>
#include <kj/async-io.h>

#include <memory>

#include "common/temp_dir.h"
#include "common/rpc.h"
#include "participant/agent.h"
#include "schemas/keel.capnp.h"

namespace keel {
namespace {

constexpr std::uint64_t kEpoch = 1;

void BM_LedgerPrepareCommit(benchmark::State& state) {
  const auto batch = std::size_t(state.range(0));
  TempDir dir("keel-bench");
  auto io = kj::setupAsyncIo();
  {
    Agent agent(AgentOptions{"bank-a", dir.mkdir("agent"), std::size_t(256) << 20});
    agent.start();
    constexpr std::size_t kAccounts = 64;
    std::uint64_t seq = 1;
    std::vector<Op> opens;
    for (std::size_t i = 0; i < kAccounts; ++i) {
      opens.push_back(Op{"bank-a", OpKind::OpenAccount, "acct-" + std::to_string(i), 1'000'000'000});
    }
    auto opened = agent.commitOnePhase(kEpoch, Xid{makeSeq(1, seq++), 0}, opens).wait(io.waitScope);
    if (opened.outcome != BranchOutcome::Committed) {
      state.SkipWithError(("opening accounts failed: " + opened.reason).c_str());
      return;
    }
    const auto commitsBefore = agent.log().stats().commits.load();
    std::uint64_t branches = 0;
    for (auto _ : state) {
      std::vector<Xid> xids;
      kj::Vector<kj::Promise<PrepareResult>> votes;
      for (std::size_t i = 0; i < batch; ++i) {
        Xid x{makeSeq(1, seq++), 0};
        xids.push_back(x);
        votes.add(agent.prepare(kEpoch, x, {Op{"bank-a", OpKind::Debit, "acct-" + std::to_string(seq % kAccounts), 1}}));
      }
      for (auto& v : kj::joinPromises(votes.releaseAsArray()).wait(io.waitScope)) {
        if (v.vote != Vote::Yes) {
          state.SkipWithError(("prepare voted no: " + v.reason).c_str());
          return;
        }
      }
      auto outcomes = agent.commit(kEpoch, xids).wait(io.waitScope);
      for (auto o : outcomes) {
        if (o != BranchOutcome::Committed) state.SkipWithError("commit did not answer committed");
      }
      branches += batch;
    }
    state.SetItemsProcessed(std::int64_t(branches));
    state.counters["log_commits_per_branch"] =
        branches ? double(agent.log().stats().commits.load() - commitsBefore) / double(branches) : 0;
  }
}
BENCHMARK(BM_LedgerPrepareCommit)
    ->ArgName("batch")
    ->Arg(1)
    ->Arg(16)
    ->Arg(128)
    ->UseRealTime()  // mostly waiting for fsync
    ->MinTime(0.5)
    ->Unit(benchmark::kMicrosecond);

// Answers status with nothing; every other method is unimplemented.
class StatusOnly final : public wire::Participant::Server {
 protected:
  kj::Promise<void> status(StatusContext ctx) override {
    ctx.getResults().initBranches(0);
    ctx.getResults().initKnown(0);
    return kj::READY_NOW;
  }
};

void roundTrips(benchmark::State& state, kj::AsyncIoContext& io, wire::Participant::Client cap) {
  for (auto _ : state) {
    auto req = cap.statusRequest();
    req.initXids(0);
    req.send().wait(io.waitScope);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_RpcRoundTripPipe(benchmark::State& state) {
  auto io = kj::setupAsyncIo();
  auto pipe = io.provider->newTwoWayPipe();
  capnp::TwoPartyServer server(kj::heap<StatusOnly>());
  server.accept(kj::mv(pipe.ends[1]));
  RpcConnection client(kj::mv(pipe.ends[0]), io.provider->getTimer());
  roundTrips(state, io, client.bootstrap<wire::Participant>());
}
BENCHMARK(BM_RpcRoundTripPipe)->Name("BM_RpcRoundTrip/pipe")->MinTime(0.5)->Unit(benchmark::kMicrosecond);

void BM_RpcRoundTripTcp(benchmark::State& state) {
  auto io = kj::setupAsyncIo();
  RpcServer server(io, kj::heap<StatusOnly>());
  unsigned port = server.listen("127.0.0.1:0").wait(io.waitScope);
  auto conn = rpcConnect(io, "127.0.0.1:" + std::to_string(port)).wait(io.waitScope);
  roundTrips(state, io, conn->bootstrap<wire::Participant>());
  // Hang up first and let the server see the disconnect: tearing a server
  // down under a live connection crashes inside capnp 0.9.2's RpcSystem.
  conn = nullptr;
  io.provider->getTimer().afterDelay(10 * kj::MILLISECONDS).wait(io.waitScope);
}
BENCHMARK(BM_RpcRoundTripTcp)->Name("BM_RpcRoundTrip/tcp")->MinTime(0.5)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace keel
