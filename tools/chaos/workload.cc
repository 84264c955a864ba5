#include "tools/chaos/workload.h"

#include <algorithm>
#include <cstdlib>
#include <tuple>

#include "tools/bank.h"
#include "tools/sql_bank.h"

namespace keel::chaos {

namespace {

// A paused coordinator answers nothing: a try gives up on its answer after
// this (the answer counts as lost, and the request is retried).
constexpr auto kTryWait = 10 * kj::SECONDS;
// Between tries, and after finding no coordinator to send to.
constexpr auto kPause = 100 * kj::MILLISECONDS;
// The deadline every interaction asks for.
constexpr std::uint32_t kDeadlineMs = 5000;

}  // namespace

// One interaction from its plan to its last answer. Owned by the promise
// chain that runs it (every continuation holds a reference).
struct Workload::Flight {
  Plan plan;
  std::string requestId = newRequestId();
  Micros requestTimeUs = 0;        // set when first sent; every retry sends the same
  Micros startUs = wallMicros();
  std::optional<std::size_t> idx;  // into attempts_, once a try was sent
  bool sending = false;            // the current try went out
  ConnPtr used;                    // the connection it went out on (outlives txn: declared first)
  Micros retryUntilUs = 0;         // 0: no answer lost yet
  kj::Own<KeelTransaction> txn;    // interactive, while open
  std::size_t step = 0;            // interactive: the next execute
  std::size_t coord = 0;           // the coordinator the next try goes to
  bool pinned = false;             // finding out where its transaction lives: no failover
  std::size_t unsent = 0;          // coordinators tried that could not be reached (never sent yet)
};

Workload::Workload(WorkloadOptions o, kj::AsyncIoContext& io, std::vector<std::string> coordinators,
                   std::vector<std::string> agents, Timeline& timeline)
    : o_(o), io_(io), coordinators_(std::move(coordinators)), agents_(std::move(agents)), timeline_(timeline),
      rng_(o.seed * 7919 + 1), conns_(o.connections * coordinators_.size()) {
  allSql_ = !agents_.empty();
  for (std::size_t i = 0; i < agents_.size(); ++i) {
    AgentKind k = kind(agents_[i]);
    if (k != AgentKind::Host) readers_.push_back(i);
    if (k == AgentKind::Ledger) interactives_.push_back(i);
    allSql_ = allSql_ && k == AgentKind::Postgres;
    anySql_ = anySql_ || k == AgentKind::Postgres;
  }
}

AgentKind Workload::kind(const std::string& agent) const {
  auto it = o_.kinds.find(agent);
  return it == o_.kinds.end() ? AgentKind::Ledger : it->second;
}

std::pair<std::size_t, std::size_t> Workload::pair(const std::vector<std::size_t>& among, std::size_t a,
                                                   std::size_t b) {
  std::size_t m = among.size();
  if (m == agents_.size()) return {a, b};
  std::size_t i = rng_() % m;
  std::size_t j = m > 1 ? (i + 1 + rng_() % (m - 1)) % m : i;
  return {among[i], among[j]};
}

kj::Promise<void> Workload::run(Micros untilUs) {
  until_ = untilUs;
  kj::Vector<kj::Promise<void>> workers;
  for (std::uint32_t w = 0; w < o_.concurrency; ++w) workers.add(worker(w));
  return kj::joinPromises(workers.releaseAsArray());
}

std::vector<Mix> Workload::mixes() const {
  std::vector<Mix> m = {Mix::Transfer, Mix::Overdraft, Mix::OnePhase};
  if (!readers_.empty()) m.push_back(Mix::ReadOnly);
  if (agents_.size() >= 3) m.push_back(Mix::ThreeBranch);
  if (interactives_.size() >= 2) m.push_back(Mix::Interactive);
  if (allSql_) m.push_back(Mix::HotTransfer);
  return m;
}

// The mix, in draws out of 100: 10 overdrafts, 12 three-branch, 15
// one-phase, 18 interactive, 12 read-only, the rest (33) two-branch
// transfers; a kind the run cannot do (three branches on two agents,
// interactive without two ledger agents, reads on host agents only) falls
// through to the next; reads and interactive steps go only to the agents
// that take them (host agents: debits and credits only). On postgres
// agents 10 of the two-branch transfers are hot ones, between the first
// kHotAccounts accounts of each agent: there row locks are contended on
// purpose (waits, lock timeouts, deadlocks across databases), while the
// rest of the load spreads over many accounts and mostly commits.
Workload::Plan Workload::nextPlan() {
  std::size_t n = agents_.size();
  std::size_t a = rng_() % n;
  std::size_t b = (a + 1 + rng_() % (n - 1)) % n;
  auto acct = [&]() { return bank::accountName(rng_() % o_.accountsPerAgent); };
  auto ref = [&](std::size_t agent, const std::string& account) { return agents_[agent] + ":" + account; };
  std::int64_t amount = 1 + std::int64_t(rng_() % 500);
  std::int64_t overdraw = o_.opening * 1000;
  std::uint32_t kind = rng_() % 100;
  Plan p;
  if (kind < 10) {  // overdraft on purpose: must be rolled back
    p.mix = Mix::Overdraft;
    p.ops = transferOps(ref(a, acct()), ref(b, acct()), overdraw);
  } else if (kind < 22 && n >= 3) {  // three branches: a pays b and c
    std::size_t c = 0;
    while (c == a || c == b) ++c;
    p.mix = Mix::ThreeBranch;
    p.ops = {Op{agents_[a], OpKind::Debit, acct(), 2 * amount}, Op{agents_[b], OpKind::Credit, acct(), amount},
             Op{agents_[c], OpKind::Credit, acct(), amount}};
  } else if (kind < 37) {  // two accounts of one agent: one branch, one-phase; one in eight overdraws
    p.mix = Mix::OnePhase;
    std::size_t accounts = o_.accountsPerAgent;
    std::size_t from = rng_() % accounts;
    std::size_t to = accounts > 1 ? (from + 1 + rng_() % (accounts - 1)) % accounts : from;
    std::int64_t sum = rng_() % 8 == 0 ? overdraw : amount;
    p.ops = transferOps(ref(a, bank::accountName(from)), ref(a, bank::accountName(to)), sum);
  } else if (kind < 55 && interactives_.size() >= 2) {  // interactive: debit, credit, commit / rollback / drop
    p.mix = Mix::Interactive;
    auto [ia, ib] = pair(interactives_, a, b);
    std::int64_t sum = rng_() % 20 == 0 ? overdraw : amount;
    std::string from = acct(), to = acct();
    p.steps = {{Op{agents_[ia], OpKind::Debit, from, sum}}, {Op{agents_[ib], OpKind::Credit, to, sum}}};
    std::uint32_t end = rng_() % 100;
    p.end = end < 75 ? ClientEnd::Commit : end < 90 ? ClientEnd::Rollback : ClientEnd::Drop;
  } else if (kind < 67 && !readers_.empty()) {  // balance reads on one agent or two
    p.mix = Mix::ReadOnly;
    auto [ra, rb] = pair(readers_, a, b);
    p.ops = {Op{agents_[ra], OpKind::ReadBalance, acct(), 0}};
    if (rng_() % 2 == 0 && rb != ra) p.ops.push_back(Op{agents_[rb], OpKind::ReadBalance, acct(), 0});
  } else if (kind >= 90 && allSql_) {
    p.mix = Mix::HotTransfer;
    auto hot = [&]() { return bank::accountName(rng_() % std::min(kHotAccounts, o_.accountsPerAgent)); };
    p.ops = transferOps(ref(a, hot()), ref(b, hot()), amount);
  } else {
    p.mix = Mix::Transfer;
    p.ops = transferOps(ref(a, acct()), ref(b, acct()), amount);
  }
  return p;
}

std::vector<Op> Workload::onWire(const std::vector<Op>& ops) const {
  if (!anySql_) return ops;
  // Within one database the rows are locked in one order (by account), so
  // two transfers between the same two accounts of one agent never wait on
  // each other in a cycle: the workload makes no deadlock of its own.
  // Across databases no order helps: that is the hot transfers' part.
  std::vector<Op> ordered = ops;
  std::stable_sort(ordered.begin(), ordered.end(), [](const Op& x, const Op& y) {
    return std::tie(x.participant, x.account) < std::tie(y.participant, y.account);
  });
  std::vector<Op> out;
  out.reserve(ops.size());
  for (const auto& op : ordered) {
    if (kind(op.participant) != AgentKind::Postgres) {
      out.push_back(op);
    } else {
      out.push_back(op.kind == OpKind::ReadBalance ? bank::sqlRead(op.participant, op.account) : sqlbank::toSql(op));
    }
  }
  return out;
}

kj::Promise<Workload::ConnPtr> Workload::connection(std::size_t i, std::size_t coord) {
  std::size_t at = coord * o_.connections + i;
  if (conns_[at]) return conns_[at];
  return KeelClient::connect(io_, coordinators_[coord]).then([this, at](kj::Own<KeelClient> c) {
    if (!conns_[at]) conns_[at] = std::make_shared<Conn>(Conn{kj::mv(c)});
    return conns_[at];
  });
}

void Workload::dropConnection(std::size_t i, std::size_t coord, const ConnPtr& used) {
  // Only the one that failed: another worker may have connected afresh.
  std::size_t at = coord * o_.connections + i;
  if (used && conns_[at] == used) conns_[at] = nullptr;
}

void Workload::failOver(Flight& f) {
  if (!f.pinned) f.coord = (f.coord + 1) % coordinators_.size();
}

kj::Promise<void> Workload::worker(std::size_t w) {
  if (wallMicros() >= until_) return kj::READY_NOW;
  std::size_t conn = w % o_.connections;
  auto f = std::make_shared<Flight>();
  f->plan = nextPlan();
  f->coord = w % coordinators_.size();  // the workers are spread over the coordinators
  auto done = f->plan.mix == Mix::Interactive ? interactive(conn, f) : untilAnswered(conn, f, submitCall());
  return done.then([this, w]() { return worker(w); });
}

Attempt& Workload::attempt(Flight& f) {
  if (!f.idx) {
    f.idx = attempts_.size();
    Attempt a;
    a.mix = f.plan.mix;
    a.ops = f.plan.ops;  // interactive: each step's operations join as they are sent
    a.startUs = f.startUs;
    a.requestId = f.requestId;
    a.end = f.plan.end;
    attempts_.push_back(std::move(a));
  }
  return attempts_[*f.idx];
}

bool Workload::mayRetry(Flight& f) {
  Micros now = wallMicros();
  if (f.retryUntilUs == 0) f.retryUntilUs = now + Micros(o_.retryForMs) * 1000;
  return now < f.retryUntilUs;
}

void Workload::answered(Flight& f, SubmitOutcome o) {
  auto& a = attempt(f);
  a.endUs = wallMicros();
  if (o.outcome == ClientOutcome::Committed) {
    ++committed;
    timeline_.addCommit(a.endUs);
    noteReads(a.ops, o);
  } else if (o.outcome == ClientOutcome::RolledBack) {
    ++rolledBack;
  }
  a.answer = std::move(o);
}

void Workload::unanswered(Flight& f) {
  f.txn = nullptr;
  attempt(f).endUs = wallMicros();
}

void Workload::noteReads(const std::vector<Op>& ops, const SubmitOutcome& o) {
  // A replay carries no results; results are one per operation.
  for (std::size_t k = 0; k < o.results.size() && k < ops.size(); ++k) {
    if (ops[k].kind != OpKind::ReadBalance) continue;
    const auto& r = o.results[k];
    std::int64_t balance = r.balance;
    if (kind(ops[k].participant) == AgentKind::Postgres) {
      if (r.rows.empty() || r.rows[0].empty() || !r.rows[0][0]) continue;
      balance = std::strtoll(r.rows[0][0]->c_str(), nullptr, 10);
    }
    lowestRead_ = std::min(lowestRead_, balance);
  }
}

Workload::Call Workload::submitCall() {
  return [this](KeelClient& c, Flight& f) {
    SubmitRequest req{onWire(f.plan.ops), kDeadlineMs, f.requestId, f.requestTimeUs};
    return c.submit(std::move(req)).then([](SubmitOutcome o) { return std::optional<SubmitOutcome>(std::move(o)); });
  };
}

// A begin with the interaction's request id. The first opens the
// transaction (no outcome to record); `findingOut`: after a lost answer,
// asks for the outcome of the interaction that id already names, which the
// coordinator answers as a replay. Opening another transaction then would
// break the promise; it is dropped and recorded as an answer naming the
// new seq, which the checker reports (one request id, two seqs).
Workload::Call Workload::beginCall(bool findingOut) {
  return [this, findingOut](KeelClient& c, Flight& f) {
    SubmitRequest req{{}, kDeadlineMs, f.requestId, f.requestTimeUs};
    return c.begin(std::move(req)).then([this, &f, findingOut](KeelClient::Begun b) -> std::optional<SubmitOutcome> {
      if (b.replay) return std::move(*b.replay);
      if (!findingOut) {
        f.txn = kj::mv(b.txn);
        attempt(f).seq = f.txn->seq();
        return std::nullopt;
      }
      std::uint64_t seq = b.txn->seq();
      return SubmitOutcome{seq, ClientOutcome::Invalid,
                           "a begin with a request id already answered opened another transaction", {}, f.requestId,
                           false};
    });
  };
}

kj::Promise<void> Workload::untilAnswered(std::size_t conn, FlightPtr f, Call call) {
  f->sending = false;
  f->used = nullptr;
  auto again = [this, conn, f, call]() {
    return io_.provider->getTimer().afterDelay(kPause).then([this, conn, f, call]() {
      return untilAnswered(conn, f, call);
    });
  };
  return connection(conn, f->coord)
      .then([this, f, call](ConnPtr c) {
        f->used = std::move(c);
        if (f->requestTimeUs == 0) f->requestTimeUs = wallMicros();
        attempt(*f).tries.push_back(Try{wallMicros(), std::nullopt});
        f->sending = true;
        return io_.provider->getTimer().timeoutAfter(kTryWait, call(*f->used->client, *f));
      })
      .then(
          [this, f, again](std::optional<SubmitOutcome> o) -> kj::Promise<void> {
            auto& a = attempt(*f);
            if (!o) {  // a begin opened its transaction: no outcome yet
              a.tries.pop_back();
              return kj::READY_NOW;
            }
            a.tries.back().answer = *o;
            // "Unavailable": nothing ran; the same request may be sent again.
            if (o->outcome == ClientOutcome::Unavailable && mayRetry(*f)) {
              failOver(*f);
              return again();
            }
            answered(*f, std::move(*o));
            return kj::READY_NOW;
          },
          [this, conn, f, again](kj::Exception&&) -> kj::Promise<void> {
            dropConnection(conn, f->coord, f->used);
            failOver(*f);
            if (f->sending) {
              ++lost;  // the try stays without an answer
            } else {
              ++notSent;  // no coordinator to send to
              if (!f->idx) {
                // Never sent: the next coordinator, if any is left to try;
                // else the next plan.
                if (++f->unsent < coordinators_.size()) return again();
                return io_.provider->getTimer().afterDelay(kPause);
              }
              ++attempt(*f).notSent;
            }
            if (!mayRetry(*f)) {
              unanswered(*f);
              return kj::READY_NOW;
            }
            return again();
          });
}

kj::Promise<void> Workload::interactive(std::size_t conn, FlightPtr f) {
  return untilAnswered(conn, f, beginCall(false)).then([this, conn, f]() -> kj::Promise<void> {
    if (f->txn.get() == nullptr) return kj::READY_NOW;  // a replay answered it, or no begin got through
    return steps(conn, f);
  });
}

kj::Promise<void> Workload::steps(std::size_t conn, FlightPtr f) {
  auto& timer = io_.provider->getTimer();
  auto& a = attempt(*f);
  auto lostHere = [this, conn, f](Micros sentUs) {
    ++lost;
    f->txn = nullptr;  // before its connection goes
    dropConnection(conn, f->coord, f->used);
    attempt(*f).tries.push_back(Try{sentUs, std::nullopt});
    return findOut(conn, f);
  };
  Micros sentUs = wallMicros();
  if (f->step < f->plan.steps.size()) {
    const auto& ops = f->plan.steps[f->step++];
    a.ops.insert(a.ops.end(), ops.begin(), ops.end());
    return timer.timeoutAfter(kTryWait, f->txn->execute(onWire(ops)))
        .then(
            [this, conn, f, sentUs](SubmitOutcome o) -> kj::Promise<void> {
              if (o.outcome == ClientOutcome::Committed) return steps(conn, f);  // done so far
              // Anything else ended the transaction: that is its outcome.
              f->txn = nullptr;
              attempt(*f).tries.push_back(Try{sentUs, o});
              answered(*f, std::move(o));
              return kj::READY_NOW;
            },
            [lostHere, sentUs](kj::Exception&&) { return lostHere(sentUs); });
  }
  if (f->plan.end == ClientEnd::Drop) {
    f->txn = nullptr;  // released: the coordinator rolls it back
    a.dropped = true;
    a.endUs = wallMicros();
    return kj::READY_NOW;
  }
  auto call = f->plan.end == ClientEnd::Commit ? f->txn->commit() : f->txn->rollback();
  return timer.timeoutAfter(kTryWait, kj::mv(call))
      .then(
          [this, f, sentUs](SubmitOutcome o) -> kj::Promise<void> {
            f->txn = nullptr;
            attempt(*f).tries.push_back(Try{sentUs, o});
            answered(*f, std::move(o));
            return kj::READY_NOW;
          },
          [lostHere, sentUs](kj::Exception&&) { return lostHere(sentUs); });
}

// After a lost answer inside a transaction (its connection is gone with
// it): a begin with the same request id, retried like any lost answer,
// hears how the interaction ended. Only the coordinator that opened the
// transaction knows it (in a cluster, the one of its seq's node): every
// try goes there, waiting out its restart.
kj::Promise<void> Workload::findOut(std::size_t conn, FlightPtr f) {
  std::uint64_t seq = attempt(*f).seq;
  if (coordinators_.size() > 1 && seq != 0 && seqNode(seq) >= 1 && seqNode(seq) <= coordinators_.size()) {
    f->coord = seqNode(seq) - 1;
  }
  f->pinned = true;
  mayRetry(*f);  // the retry window starts at the first lost answer
  return io_.provider->getTimer().afterDelay(kPause).then([this, conn, f]() {
    return untilAnswered(conn, f, beginCall(true));
  });
}

}  // namespace keel::chaos
