#include "common/client.h"

#include <cstdio>
#include <random>
#include <stdexcept>

#include "common/fault.h"
#include "common/tls.h"
#include "common/wire.h"

namespace keel {

SubmitOutcome readSubmitResult(wire::SubmitResult::Reader r, std::size_t opsSent) {
  SubmitOutcome o;
  o.seq = r.getSeq();
  auto oc = std::uint16_t(r.getOutcome());
  if (oc > kMaxClientOutcome) throw std::runtime_error("malformed answer: unknown outcome " + std::to_string(oc));
  o.outcome = static_cast<ClientOutcome>(oc);
  o.reason = r.getReason().cStr();
  auto results = r.getResults();
  if (results.size() != 0 && results.size() != opsSent) {
    throw std::runtime_error("malformed answer: " + std::to_string(results.size()) + " results for " +
                             std::to_string(opsSent) + " operations");
  }
  for (auto x : results) o.results.push_back(readOpResult(x));
  o.requestId = std::string(r.getRequestId().begin(), r.getRequestId().size());
  o.replayed = r.getReplayed();
  return o;
}

KeelClient::KeelClient(kj::Own<RpcConnection> conn)
    : conn_(kj::mv(conn)), cap_(conn_->bootstrap<wire::Coordinator>()) {}

kj::Promise<kj::Own<KeelClient>> KeelClient::connect(kj::AsyncIoContext& io, const std::string& address) {
  // Over TLS a coordinator presents the process-wide coordinator name
  // (common/tls.h) unless the address names another (NAME@host:port).
  return rpcConnect(io, address, coordinatorName()).then([](kj::Own<RpcConnection> c) { return kj::heap<KeelClient>(kj::mv(c)); });
}

kj::Promise<SubmitOutcome> KeelClient::submit(const std::vector<Op>& ops, std::uint32_t deadlineMs) {
  SubmitRequest req;
  req.ops = ops;
  req.deadlineMs = deadlineMs;
  return submit(std::move(req));
}

kj::Promise<SubmitOutcome> KeelClient::submit(SubmitRequest req) {
  if (!req.requestId.empty() && req.requestTimeUs == 0) req.requestTimeUs = wallMicros();
  if (batcher_.get() != nullptr) return batcher_->add(std::move(req));
  auto call = cap_.submitRequest(messageSizeHint(64 + wireWeight(req.ops) + req.requestId.size()));
  fillOps(call.initOperations(req.ops.size()), req.ops);
  call.setDeadlineMs(req.deadlineMs);
  call.setRequestId(req.requestId);
  call.setRequestTimeUs(req.requestTimeUs);
  std::size_t n = req.ops.size();
  return call.send().then([n](auto resp) { return readSubmitResult(resp.getResult(), n); });
}

kj::Promise<KeelClient::Begun> KeelClient::begin(SubmitRequest req) {
  if (!req.requestId.empty() && req.requestTimeUs == 0) req.requestTimeUs = wallMicros();
  auto call = cap_.beginRequest();
  call.setDeadlineMs(req.deadlineMs);
  call.setRequestId(req.requestId);
  call.setRequestTimeUs(req.requestTimeUs);
  return call.send().then([](auto resp) -> kj::Promise<Begun> {
    if (resp.hasReplay()) return Begun{kj::Own<KeelTransaction>(), readSubmitResult(resp.getReplay(), 0)};
    auto txn = resp.getTxn();
    return txn.seqRequest().send().then([txn](auto s) mutable {
      return Begun{kj::heap<KeelTransaction>(kj::mv(txn), s.getSeq()), std::nullopt};
    });
  });
}

kj::Promise<SubmitOutcome> KeelTransaction::execute(const std::vector<Op>& ops) {
  auto req = cap_.executeRequest();
  fillOps(req.initOperations(ops.size()), ops);
  std::size_t n = ops.size();
  return req.send().then([n](auto resp) { return readSubmitResult(resp.getResult(), n); });
}

kj::Promise<SubmitOutcome> KeelTransaction::commit() {
  return cap_.commitRequest().send().then([](auto resp) { return readSubmitResult(resp.getResult(), 0); });
}

kj::Promise<SubmitOutcome> KeelTransaction::rollback() {
  return cap_.rollbackRequest().send().then([](auto resp) { return readSubmitResult(resp.getResult(), 0); });
}

void KeelClient::enableBatching(std::size_t maxBatch, std::size_t inFlight) {
  using Batcher = CallBatcher<SubmitRequest, SubmitOutcome>;
  Batcher::Options o;
  o.maxItems = maxBatch;
  o.maxInFlight = inFlight;
  batcher_ = kj::heap<Batcher>(
      o, [this](std::vector<SubmitRequest>&& items, auto) { return sendBatch(kj::mv(items)); },
      [](const SubmitRequest& i) { return wireWeight(i.ops) + i.requestId.size(); });
}

kj::Promise<std::vector<SubmitOutcome>> KeelClient::sendBatch(std::vector<SubmitRequest>&& items) {
  std::size_t bytes = 32;
  for (const auto& i : items) bytes += 64 + wireWeight(i.ops) + i.requestId.size();
  auto req = cap_.submitBatchRequest(messageSizeHint(bytes));
  auto l = req.initItems(items.size());
  std::vector<std::size_t> opsSent;
  opsSent.reserve(items.size());
  for (unsigned i = 0; i < items.size(); ++i) {
    fillOps(l[i].initOperations(items[i].ops.size()), items[i].ops);
    l[i].setDeadlineMs(items[i].deadlineMs);
    l[i].setRequestId(items[i].requestId);
    l[i].setRequestTimeUs(items[i].requestTimeUs);
    opsSent.push_back(items[i].ops.size());
  }
  return req.send().then([opsSent = std::move(opsSent)](auto resp) {
    std::vector<SubmitOutcome> out;
    auto rs = resp.getResults();
    if (rs.size() != opsSent.size()) {
      throw std::runtime_error("malformed answer: " + std::to_string(rs.size()) + " results for " +
                               std::to_string(opsSent.size()) + " submits");
    }
    out.reserve(rs.size());
    for (unsigned i = 0; i < rs.size(); ++i) out.push_back(readSubmitResult(rs[i], opsSent[i]));
    return out;
  });
}

namespace {

std::string_view asView(capnp::Data::Reader d) {
  return std::string_view(reinterpret_cast<const char*>(d.begin()), d.size());
}

// query / queryRequest answers: both records as the WAL holds them.
template <typename Reader>
std::optional<QueryResult> readStory(Reader resp) {
  if (!resp.getFound()) return std::nullopt;
  QueryResult q;
  q.interaction = decodeInteraction(asView(resp.getInteraction()));
  if (resp.getRollback().size() > 0) q.rollback = decodeRollback(asView(resp.getRollback()));
  return q;
}

}  // namespace

std::optional<QueryResult> readQueryAnswer(wire::Coordinator::QueryResults::Reader r) { return readStory(r); }
std::optional<QueryResult> readQueryAnswer(wire::Coordinator::QueryRequestResults::Reader r) { return readStory(r); }

std::vector<InteractionRecord> readRecordList(capnp::List<capnp::Data>::Reader l) {
  std::vector<InteractionRecord> out;
  for (auto d : l) out.push_back(decodeInteraction(asView(d)));
  return out;
}

kj::Promise<std::optional<QueryResult>> KeelClient::query(std::uint64_t seq) {
  auto req = cap_.queryRequest();
  req.setSeq(seq);
  return req.send().then([](auto resp) { return readQueryAnswer(resp); });
}

kj::Promise<std::optional<QueryResult>> KeelClient::queryRequest(const std::string& requestId) {
  auto req = cap_.queryRequestRequest();
  req.setRequestId(requestId);
  return req.send().then([](auto resp) { return readQueryAnswer(resp); });
}

kj::Promise<std::vector<InteractionRecord>> KeelClient::listUnfinished(std::uint32_t limit) {
  auto req = cap_.listUnfinishedRequest();
  req.setLimit(limit);
  return req.send().then([](auto resp) { return readRecordList(resp.getInteractions()); });
}

kj::Promise<std::vector<InteractionRecord>> KeelClient::listHeuristic(std::uint32_t limit) {
  auto req = cap_.listHeuristicRequest();
  req.setLimit(limit);
  return req.send().then([](auto resp) { return readRecordList(resp.getInteractions()); });
}

KeelClient::KeelClient(wire::Coordinator::Client cap) : cap_(kj::mv(cap)) {}

kj::Promise<CoordinatorStats> KeelClient::stats() {
  return cap_.statsRequest().send().then([](auto resp) {
    auto s = resp.getStats();
    CoordinatorStats v;
    v.count = s.getCount();
    v.p50Us = s.getP50Us();
    v.p99Us = s.getP99Us();
    v.maxUs = s.getMaxUs();
    v.rollbacks = s.getRollbacks();
    v.retriedCommits = s.getRetriedCommits();
    v.heuristic = s.getHeuristic();
    v.inDoubt = s.getInDoubt();
    v.oldestUs = s.getOldestUs();
    return v;
  });
}

kj::Promise<std::vector<std::string>> KeelClient::audit(std::uint32_t limit) {
  auto req = cap_.auditRequest();
  req.setLimit(limit);
  return req.send().then([](auto resp) {
    std::vector<std::string> entries;
    for (auto e : resp.getEntries()) entries.emplace_back(e.cStr());
    return entries;
  });
}

kj::Promise<CoordinatorInfo> KeelClient::info() {
  return cap_.infoRequest().send().then([](auto resp) {
    CoordinatorInfo i;
    i.nodeId = resp.getNodeId();
    i.epoch = resp.getEpoch();
    for (auto p : resp.getParticipants()) i.participants.emplace_back(p.cStr());
    i.committed = resp.getCommitted();
    i.rolledBack = resp.getRolledBack();
    i.unfinished = resp.getUnfinished();
    i.heuristic = resp.getHeuristic();
    i.logCommits = resp.getLogCommits();
    i.logJobs = resp.getLogJobs();
    i.logCheckpoints = resp.getLogCheckpoints();
    i.logCheckpointMicros = resp.getLogCheckpointMicros();
    i.clustered = resp.getClustered();
    i.takeoverCommitted = resp.getTakeoverCommitted();
    i.takeoverRolledBack = resp.getTakeoverRolledBack();
    i.etcdTxns = resp.getEtcdTxns();
    i.etcdDecisions = resp.getEtcdDecisions();
    return i;
  });
}

std::int64_t AgentSnapshot::total() const {
  std::int64_t t = 0;
  for (auto& [n, a] : accounts) t += a.balance;
  return t;
}

std::int64_t AgentSnapshot::held() const {
  std::int64_t t = 0;
  for (auto& [n, a] : accounts) t += a.held;
  return t;
}

AgentClient::AgentClient(kj::Own<RpcConnection> conn)
    : conn_(kj::mv(conn)), cap_(conn_->bootstrap<wire::Participant>()) {}

AgentClient::AgentClient(wire::Participant::Client cap) : cap_(kj::mv(cap)) {}

kj::Promise<std::pair<AgentSnapshot, std::vector<UnfinishedBranch>>> AgentClient::booksAndUnfinished() {
  return inspect().then([this](AgentSnapshot snap) {
    return unfinished().then([snap = std::move(snap)](std::vector<UnfinishedBranch> b) mutable {
      return std::make_pair(std::move(snap), std::move(b));
    });
  });
}

kj::Promise<std::vector<UnfinishedBranch>> AgentClient::unfinished() {
  auto req = cap_.recoverRequest();
  req.setEpoch(0);  // an operator looking: not fenced
  return req.send().then([](auto resp) {
    std::vector<UnfinishedBranch> branches;
    for (auto b : resp.getBranches()) {
      UnfinishedBranch v;
      v.xid = Xid{b.getXid().getSeq(), b.getXid().getBranch()};
      v.prepared = b.getState() == wire::BranchState::PREPARED;
      v.epoch = b.getEpoch();
      v.preparedUs = b.getPreparedAtUs();
      v.hostStep = std::string(b.getHostStep().cStr()).substr(0, 32);
      for (auto ref : b.getHostRefs()) {
        if (v.hostRefs.size() == 64) break;
        v.hostRefs.emplace_back(std::string(ref.cStr()).substr(0, 256));
      }
      v.reason = std::string(b.getReason().cStr()).substr(0, 1024);
      branches.push_back(std::move(v));
    }
    return branches;
  });
}

kj::Promise<kj::Own<AgentClient>> AgentClient::connect(kj::AsyncIoContext& io, const std::string& address) {
  return rpcConnect(io, address).then([](kj::Own<RpcConnection> c) { return kj::heap<AgentClient>(kj::mv(c)); });
}

kj::Promise<AgentSnapshot> AgentClient::inspect() {
  return cap_.inspectRequest().send().then([](auto resp) {
    AgentSnapshot s;
    s.name = resp.getName().cStr();
    for (auto a : resp.getAccounts()) {
      AccountRecord r;
      r.balance = a.getBalance();
      r.held = a.getHeld();
      s.accounts.emplace_back(a.getName().cStr(), r);
    }
    s.prepared = resp.getPrepared();
    s.active = resp.getActive();
    s.committed = resp.getCommitted();
    s.rolledBack = resp.getRolledBack();
    s.logCommits = resp.getLogCommits();
    s.logJobs = resp.getLogJobs();
    s.logCheckpoints = resp.getLogCheckpoints();
    s.logCheckpointMicros = resp.getLogCheckpointMicros();
    for (auto f : resp.getFences()) s.fences[f.getNode()] = std::max(s.fences[f.getNode()], f.getEpoch());
    for (auto f : resp.getFloors()) s.floors[f.getNode()] = {f.getFloor(), f.getKept()};
    return s;
  });
}

std::pair<std::string, std::string> splitAccount(const std::string& ref) {
  auto colon = ref.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == ref.size()) {
    throw std::invalid_argument("'" + ref + "' is not PARTICIPANT:ACCOUNT (for example bank-a:alice)");
  }
  return {ref.substr(0, colon), ref.substr(colon + 1)};
}

std::string newRequestId() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx-%016llx", static_cast<unsigned long long>(wallMicros()),
                static_cast<unsigned long long>(rng()));
  return buf;
}

namespace {

struct RetryState {
  kj::AsyncIoContext& io;
  std::vector<std::string> addresses;  // tried in turn: a failed try moves to the next
  std::size_t current = 0;
  SubmitRequest req;
  RetryOptions opts;
  kj::TimePoint until;
  RetriedOutcome out;
  kj::Own<KeelClient> client;
};

kj::Promise<void> tryOnce(RetryState& st) {
  ++st.out.attempts;
  kj::Promise<void> ready = kj::READY_NOW;
  if (st.client.get() == nullptr) {
    ready = KeelClient::connect(st.io, st.addresses[st.current % st.addresses.size()])
                .then([&st](kj::Own<KeelClient> c) { st.client = kj::mv(c); });
  }
  auto attempt = ready.then([&st]() { return st.client->submit(st.req); });
  return st.io.provider->getTimer()
      .timeoutAfter(st.opts.callTimeout, kj::mv(attempt))
      .then(
          [&st](SubmitOutcome o) {
            if (o.outcome == ClientOutcome::Unavailable && st.io.provider->getTimer().now() < st.until) {
              st.out.lastError = "coordinator unavailable: " + o.reason;  // nothing ran: try again
              st.client = nullptr;
              ++st.current;  // perhaps another coordinator can
              return;
            }
            st.out.answered = true;
            st.out.outcome = std::move(o);
          },
          [&st](kj::Exception&& e) {
            st.client = nullptr;  // connect afresh: the connection may be dead
            st.out.lastError = describeFault(e);
            if (st.addresses.size() > 1) {  // which coordinator, when there is a choice
              st.out.lastError = st.addresses[st.current % st.addresses.size()] + ": " + st.out.lastError;
            }
            ++st.current;  // the next try goes to the next coordinator (same request id)
          });
}

kj::Promise<void> retryLoop(RetryState& st) {
  return tryOnce(st).then([&st]() -> kj::Promise<void> {
    if (st.out.answered) return kj::READY_NOW;
    auto& timer = st.io.provider->getTimer();
    if (timer.now() + st.opts.pause >= st.until) return kj::READY_NOW;  // out of time: not answered
    if (st.opts.onRetry) st.opts.onRetry(st.out.attempts + 1, st.out.lastError);
    auto wait = st.opts.pause;
    st.opts.pause = std::min(st.opts.pause * 2, st.opts.maxPause);  // a coordinator that is down is not hammered
    return timer.afterDelay(wait).then([&st]() { return retryLoop(st); });
  });
}

}  // namespace

kj::Promise<RetriedOutcome> submitWithRetry(kj::AsyncIoContext& io, const std::string& address, SubmitRequest req,
                                            RetryOptions opts) {
  return submitWithRetry(io, std::vector<std::string>{address}, std::move(req), std::move(opts));
}

kj::Promise<RetriedOutcome> submitWithRetry(kj::AsyncIoContext& io, std::vector<std::string> addresses,
                                            SubmitRequest req, RetryOptions opts) {
  if (addresses.empty()) throw std::invalid_argument("submitWithRetry: no coordinator address");
  if (req.requestId.empty()) req.requestId = newRequestId();
  if (req.requestTimeUs == 0) req.requestTimeUs = wallMicros();
  auto until = io.provider->getTimer().now() + opts.retryFor;
  auto st = kj::heap<RetryState>(RetryState{io, std::move(addresses), 0, std::move(req), std::move(opts), until, {}, {}});
  st->out.requestId = st->req.requestId;
  RetryState* raw = st.get();
  return retryLoop(*raw).then([raw]() { return kj::mv(raw->out); }).attach(kj::mv(st));
}

std::vector<Op> transferOps(const std::string& from, const std::string& to, std::int64_t amount) {
  auto [fp, fa] = splitAccount(from);
  auto [tp, ta] = splitAccount(to);
  return {Op{fp, OpKind::Debit, fa, amount}, Op{tp, OpKind::Credit, ta, amount}};
}

}  // namespace keel
