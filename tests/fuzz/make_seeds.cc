// Writes the seed corpora of the fuzz targets: for each target, valid
// messages (or records, or config files) of every kind it reads, as the
// servers and clients make them, with the selector byte(s) the target
// expects in front. Run by hand after a schema change:
//   build-fuzz/bin/fuzz_make_seeds tests/fuzz/corpus
// (docs/fuzzing.md); the files are committed.

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/records.h"
#include "common/wire.h"
#include "schemas/keel.capnp.h"

namespace fs = std::filesystem;
using namespace keel;

namespace {

fs::path root;

void write(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(root / target);
  std::ofstream(root / target / name, std::ios::binary) << bytes;
}

// Selector bytes, then the message as a flat array.
std::string flat(std::string prefix, capnp::MessageBuilder& m) {
  auto words = capnp::messageToFlatArray(m);
  auto bytes = words.asBytes();
  prefix.append(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
  return prefix;
}

std::vector<Op> ledgerOps() {
  return {Op{"bank-a", OpKind::Debit, "alice", 5}, Op{"bank-b", OpKind::Credit, "bob", 5},
          Op{"bank-a", OpKind::ReadBalance, "alice", 0}, Op{"bank-b", OpKind::OpenAccount, "carol", 100}};
}

std::vector<Op> sqlOps() {
  Op op;
  op.participant = "pg";
  op.kind = OpKind::Sql;
  op.sql = "UPDATE accounts SET balance = balance + $1 WHERE name = $2";
  op.expectRows = 1;
  op.params = {SqlValue::ofInt(5), SqlValue::ofText("alice")};
  SqlValue f;
  f.type = SqlValue::Type::Float;
  f.f = 1.5;
  op.params.push_back(f);
  SqlValue b;
  b.type = SqlValue::Type::Bool;
  b.b = true;
  op.params.push_back(b);
  op.params.push_back(SqlValue{});
  return {op};
}

OpResult result(bool rows) {
  OpResult r;
  r.balance = 95;
  r.available = 90;
  if (rows) {
    r.affected = 1;
    r.rows = {{std::string("alice"), std::nullopt}};
  }
  return r;
}

void coordinatorRequest() {
  const char* t = "coordinator_request";
  for (int k = 0; k < 2; ++k) {
    auto ops = k == 0 ? ledgerOps() : sqlOps();
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<wire::Coordinator::SubmitParams>();
    fillOps(p.initOperations(ops.size()), ops);
    p.setDeadlineMs(5000);
    p.setRequestId("00062a1b2c3d4e5f-0123456789abcdef");
    p.setRequestTimeUs(1796000000000000);
    write(t, k == 0 ? "submit_ledger" : "submit_sql", flat(std::string(1, '\0'), m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto items = m.initRoot<wire::Coordinator::SubmitBatchParams>().initItems(2);
    auto a = ledgerOps(), b = sqlOps();
    fillOps(items[0].initOperations(a.size()), a);
    fillOps(items[1].initOperations(b.size()), b);
    items[1].setRequestId("req-2");
    items[1].setRequestTimeUs(1796000000000000);
    write(t, "submit_batch", flat(std::string(1, '\1'), m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<wire::Coordinator::BeginParams>();
    p.setDeadlineMs(10000);
    p.setRequestId("begin-1");
    p.setRequestTimeUs(1796000000000000);
    write(t, "begin", flat(std::string(1, '\2'), m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto ops = ledgerOps();
    fillOps(m.initRoot<wire::Transaction::ExecuteParams>().initOperations(ops.size()), ops);
    write(t, "execute", flat(std::string(1, '\3'), m));
  }
}

void fillVote(wire::PrepareVote::Builder v, wire::Vote vote, std::size_t results) {
  v.setVote(vote);
  v.setReason(vote == wire::Vote::NO ? "insufficient funds in alice" : "");
  auto l = v.initResults(results);
  for (unsigned i = 0; i < results; ++i) fillOpResult(l[i], result(i % 2 == 1));
}

void participantReply() {
  const char* t = "participant_reply";
  {
    capnp::MallocMessageBuilder m;
    auto votes = m.initRoot<wire::Participant::PrepareBatchResults>().initVotes(3);
    fillVote(votes[0], wire::Vote::YES, 2);
    fillVote(votes[1], wire::Vote::NO, 0);
    votes[2].setError("agent fault: disk full");
    write(t, "prepare_batch", flat(std::string{'\0', char(2 * 8 + 3)}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto votes = m.initRoot<wire::VoteSink::VotesParams>().initVotes(2);
    votes[0].setIndex(0);
    fillVote(votes[0].initVote(), wire::Vote::YES, 1);
    votes[1].setIndex(1);
    fillVote(votes[1].initVote(), wire::Vote::READ_ONLY, 0);
    write(t, "vote_sink", flat(std::string{'\1', '\2'}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<wire::Participant::ExecuteResults>();
    r.setOk(true);
    auto l = r.initResults(2);
    fillOpResult(l[0], result(false));
    fillOpResult(l[1], result(true));
    write(t, "execute", flat(std::string{'\2', '\2'}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<wire::Participant::CommitOnePhaseResults>();
    r.setOutcome(wire::BranchOutcome::COMMITTED);
    fillOpResult(r.initResults(1)[0], result(true));
    write(t, "one_phase", flat(std::string{'\3', '\1'}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto l = m.initRoot<wire::Participant::CommitResults>().initOutcomes(3);
    l.set(0, wire::BranchOutcome::COMMITTED);
    l.set(1, wire::BranchOutcome::UNKNOWN);
    l.set(2, wire::BranchOutcome::CONFLICT);
    write(t, "commit", flat(std::string{'\4', '\3'}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto l = m.initRoot<wire::Participant::RecoverResults>().initBranches(2);
    for (unsigned i = 0; i < 2; ++i) {
      fillXid(l[i].initXid(), Xid{(std::uint64_t(1) << 48) | (40 + i), std::uint16_t(i)});
      l[i].setState(i == 0 ? wire::BranchState::PREPARED : wire::BranchState::ACTIVE);
      l[i].setEpoch(3);
      l[i].setPreparedAtUs(1796000000000000);
      l[i].setCreatedAtUs(1796000000000000);
      auto ops = i == 0 ? ledgerOps() : sqlOps();
      fillOps(l[i].initOperations(ops.size()), ops);
    }
    write(t, "recover", flat(std::string{'\5', '\0'}, m));
  }
}

void agentRequest() {
  const char* t = "agent_request";
  Xid xid{(std::uint64_t(1) << 48) | 7, 1};
  {
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<wire::Participant::PrepareParams>();
    p.setEpoch(2);
    fillXid(p.initXid(), xid);
    auto ops = ledgerOps();
    fillOps(p.initOperations(ops.size()), ops);
    write(t, "prepare", flat(std::string(1, '\0'), m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<wire::Participant::PrepareBatchParams>();
    p.setEpoch(2);
    auto items = p.initItems(2);
    for (unsigned i = 0; i < 2; ++i) {
      fillXid(items[i].initXid(), Xid{xid.seq + i, 0});
      auto ops = i == 0 ? ledgerOps() : sqlOps();
      fillOps(items[i].initOperations(ops.size()), ops);
    }
    write(t, "prepare_batch", flat(std::string(1, '\1'), m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<wire::Participant::ExecuteParams>();
    fillXid(p.initXid(), xid);
    auto ops = sqlOps();
    fillOps(p.initOperations(ops.size()), ops);
    write(t, "execute", flat(std::string(1, '\2'), m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<wire::Participant::CommitOnePhaseParams>();
    fillXid(p.initXid(), xid);
    auto ops = ledgerOps();
    fillOps(p.initOperations(ops.size()), ops);
    write(t, "one_phase", flat(std::string(1, '\3'), m));
  }
  for (int k = 4; k <= 6; ++k) {
    capnp::MallocMessageBuilder m;
    capnp::List<wire::Xid>::Builder l = k == 4   ? m.initRoot<wire::Participant::CommitParams>().initXids(3)
                                        : k == 5 ? m.initRoot<wire::Participant::StatusParams>().initXids(3)
                                                 : m.initRoot<wire::Participant::ForgetParams>().initXids(3);
    for (unsigned i = 0; i < 3; ++i) fillXid(l[i], Xid{xid.seq + i, std::uint16_t(i)});
    write(t, k == 4 ? "commit" : k == 5 ? "status" : "forget", flat(std::string(1, char(k)), m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto p = m.initRoot<wire::Participant::ListBranchesParams>();
    fillXid(p.initAfter(), xid);
    p.setLimit(100);
    write(t, "list_branches", flat(std::string(1, '\7'), m));
  }
}

InteractionRecord interaction() {
  InteractionRecord r;
  r.seq = (std::uint64_t(1) << 48) | 42;
  r.epoch = 3;
  r.state = InteractionRecord::State::Committing;
  r.decision = InteractionRecord::Decision::Commit;
  r.createdUs = 1796000000000000;
  r.decidedUs = r.createdUs + 900;
  r.requestId = "00062a1b2c3d4e5f-0123456789abcdef";
  r.requestTimeUs = r.createdUs;
  r.deadlineMs = 10000;
  auto a = ledgerOps();
  r.branches.push_back({"bank-a", 0, InteractionRecord::BranchState::Prepared, "", {a[0], a[2]}});
  r.branches.push_back({"bank-b", 1, InteractionRecord::BranchState::Committed, "", {a[1], a[3]}});
  r.branches.push_back({"pg", 2, InteractionRecord::BranchState::VotedNo, "no \"row\"\n", sqlOps()});
  return r;
}

RollbackRecord rollback() {
  RollbackRecord r;
  r.seq = 43;
  r.reason = "bank-b refused: insufficient funds";
  r.requestedUs = 1796000000000000;
  r.attempts = 2;
  r.lastError = "bank-a: connection refused";
  r.pending = {"bank-a"};
  r.confirmed = {{"bank-b", 1796000000001000}};
  return r;
}

void coordinatorAnswer() {
  const char* t = "coordinator_answer";
  {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<wire::Coordinator::SubmitResults>().initResult();
    r.setSeq(42);
    r.setOutcome(wire::Outcome::COMMITTED);
    auto l = r.initResults(2);
    fillOpResult(l[0], result(false));
    fillOpResult(l[1], result(true));
    r.setRequestId("req-1");
    write(t, "submit", flat(std::string{'\0', '\2'}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto l = m.initRoot<wire::Coordinator::SubmitBatchResults>().initResults(2);
    l[0].setOutcome(wire::Outcome::ROLLED_BACK);
    l[0].setReason("bank-b refused");
    l[1].setOutcome(wire::Outcome::INVALID);
    write(t, "submit_batch", flat(std::string{'\1', char(16 + 2)}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<wire::Coordinator::BeginResults>().initReplay();
    r.setSeq(42);
    r.setOutcome(wire::Outcome::HEURISTIC_MIXED);
    r.setReplayed(true);
    write(t, "begin_replay", flat(std::string{'\2', '\0'}, m));
  }
  std::string irec = encode(interaction()), rrec = encode(rollback());
  auto bytes = [](const std::string& s) {
    return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size());
  };
  {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<wire::Coordinator::QueryResults>();
    r.setFound(true);
    r.setInteraction(bytes(irec));
    r.setRollback(bytes(rrec));
    write(t, "query", flat(std::string{'\3', '\0'}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<wire::Coordinator::QueryRequestResults>();
    r.setFound(true);
    r.setInteraction(bytes(irec));
    write(t, "query_request", flat(std::string{'\4', '\0'}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto l = m.initRoot<wire::Coordinator::ListUnfinishedResults>().initInteractions(1);
    l.set(0, bytes(irec));
    write(t, "list_unfinished", flat(std::string{'\5', '\0'}, m));
  }
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<wire::Coordinator::OutcomeResults>().setOutcome(wire::DecisionOutcome::COMMITTED);
    write(t, "outcome", flat(std::string{'\6', '\0'}, m));
  }
}

void records() {
  const char* t = "records";
  BranchRecord b;
  b.xid = Xid{(std::uint64_t(1) << 48) | 42, 1};
  b.state = BranchStatus::Prepared;
  b.epoch = 3;
  b.ops = ledgerOps();
  b.createdUs = 1796000000000000;
  b.preparedUs = b.createdUs + 500;
  b.hostTxid = 777;
  AccountRecord a;
  a.balance = 100;
  a.held = 5;
  a.opening = true;
  a.openedBy = b.xid;
  AuditRecord au;
  au.atUs = 1796000000000000;
  au.seq = 42;
  au.action = "force-commit";
  au.who = "ops";
  au.why = "ticket 7";
  au.previous = "committing/commit";
  RequestRecord rq{42, 0x1234567890abcdefull, 1796000000000000, 1796000000000100};
  const std::pair<const char*, std::string> all[] = {
      {"interaction", encode(interaction())}, {"rollback", encode(rollback())}, {"branch", encode(b)},
      {"account", encode(a)}, {"audit", encode(au)}, {"request", encode(rq)}};
  // Byte 0: the record type's index (type - 1), bit 3 for "whole record".
  for (unsigned i = 0; i < 6; ++i) {
    const std::string& rec = all[i].second;
    write(t, std::string(all[i].first) + "_payload", std::string(1, char(i)) + rec.substr(12));
    write(t, std::string(all[i].first) + "_whole", std::string(1, char(i | 8)) + rec);
  }
}

void config() {
  const char* t = "config";
  write(t, "coordinator", std::string(1, '\0') + R"([coordinator]
node_id = 1
listen = "127.0.0.1:7400"
data_dir = "./keel-data/coordinator"
call_timeout_ms = 2000
interaction_timeout_ms = 10000
max_interaction_ms = 60000
request_id_retention_s = 86400
retry_initial_ms = 50
retry_max_ms = 2000
batch_max = 256
batch_in_flight = 2

[participants]
bank-a = "127.0.0.1:7401"
bank-b = "127.0.0.1:7402"

[cluster]
etcd = ["127.0.0.1:2379", "127.0.0.1:2380"]
prefix = "/keel"
lease_ttl_s = 5
advertise = "127.0.0.1:7400"
)");
  write(t, "agent_ledger", std::string(1, '\1') + R"([agent]
name = "bank-a"
listen = "127.0.0.1:7401"
data_dir = "./keel-data/bank-a"
coordinator = "127.0.0.1:7400"
in_doubt_query_ms = 5000
)");
  write(t, "agent_postgres", std::string(1, '\1') + R"([agent]
name = "pg"
adapter = "postgres"
postgres = "host=127.0.0.1 port=5432 dbname=bank"
pool_size = 8
map_size_mb = 64
)");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  root = argv[1];
  coordinatorRequest();
  participantReply();
  agentRequest();
  coordinatorAnswer();
  records();
  config();
  return 0;
}
