#include "common/client.h"

#include <stdexcept>

#include "common/wire.h"

namespace keel {

SubmitOutcome readSubmitResult(wire::SubmitResult::Reader r) {
  SubmitOutcome o;
  o.seq = r.getSeq();
  o.outcome = static_cast<ClientOutcome>(r.getOutcome());
  o.reason = r.getReason().cStr();
  for (auto x : r.getResults()) o.results.push_back(readOpResult(x));
  return o;
}

KeelClient::KeelClient(kj::Own<RpcConnection> conn)
    : conn_(kj::mv(conn)), cap_(conn_->bootstrap<wire::Coordinator>()) {}

kj::Promise<kj::Own<KeelClient>> KeelClient::connect(kj::AsyncIoContext& io, const std::string& address) {
  return rpcConnect(io, address).then([](kj::Own<RpcConnection> c) { return kj::heap<KeelClient>(kj::mv(c)); });
}

kj::Promise<SubmitOutcome> KeelClient::submit(const std::vector<Op>& ops, std::uint32_t deadlineMs) {
  if (batcher_.get() != nullptr) return batcher_->add(SubmitItem{ops, deadlineMs});
  auto req = cap_.submitRequest();
  fillOps(req.initOperations(ops.size()), ops);
  req.setDeadlineMs(deadlineMs);
  return req.send().then([](auto resp) { return readSubmitResult(resp.getResult()); });
}

void KeelClient::enableBatching(std::size_t maxBatch, std::size_t inFlight) {
  using Batcher = CallBatcher<SubmitItem, SubmitOutcome>;
  Batcher::Options o;
  o.maxItems = maxBatch;
  o.maxInFlight = inFlight;
  batcher_ = kj::heap<Batcher>(
      o, [this](std::vector<SubmitItem>&& items, auto) { return sendBatch(kj::mv(items)); },
      [](const SubmitItem& i) { return wireWeight(i.ops); });
}

kj::Promise<std::vector<SubmitOutcome>> KeelClient::sendBatch(std::vector<SubmitItem>&& items) {
  auto req = cap_.submitBatchRequest();
  auto l = req.initItems(items.size());
  for (unsigned i = 0; i < items.size(); ++i) {
    fillOps(l[i].initOperations(items[i].ops.size()), items[i].ops);
    l[i].setDeadlineMs(items[i].deadlineMs);
  }
  return req.send().then([](auto resp) {
    std::vector<SubmitOutcome> out;
    out.reserve(resp.getResults().size());
    for (auto r : resp.getResults()) out.push_back(readSubmitResult(r));
    return out;
  });
}

namespace {
std::string_view asView(capnp::Data::Reader d) {
  return std::string_view(reinterpret_cast<const char*>(d.begin()), d.size());
}
}  // namespace

kj::Promise<std::optional<QueryResult>> KeelClient::query(std::uint64_t seq) {
  auto req = cap_.queryRequest();
  req.setSeq(seq);
  return req.send().then([](auto resp) -> std::optional<QueryResult> {
    if (!resp.getFound()) return std::nullopt;
    QueryResult q;
    q.interaction = decodeInteraction(asView(resp.getInteraction()));
    if (resp.getRollback().size() > 0) q.rollback = decodeRollback(asView(resp.getRollback()));
    return q;
  });
}

kj::Promise<std::vector<InteractionRecord>> KeelClient::listUnfinished(std::uint32_t limit) {
  auto req = cap_.listUnfinishedRequest();
  req.setLimit(limit);
  return req.send().then([](auto resp) {
    std::vector<InteractionRecord> out;
    for (auto d : resp.getInteractions()) out.push_back(decodeInteraction(asView(d)));
    return out;
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
    i.logCommits = resp.getLogCommits();
    i.logJobs = resp.getLogJobs();
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

std::vector<Op> transferOps(const std::string& from, const std::string& to, std::int64_t amount) {
  auto [fp, fa] = splitAccount(from);
  auto [tp, ta] = splitAccount(to);
  return {Op{fp, OpKind::Debit, fa, amount}, Op{tp, OpKind::Credit, ta, amount}};
}

}  // namespace keel
