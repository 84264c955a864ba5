#include "coordinator/replies.h"

#include "common/config.h"
#include "common/wire.h"

namespace keel {

namespace {

std::vector<OpResult> readResults(capnp::List<wire::OpResult>::Reader l, std::size_t opsSent, Vote vote) {
  if (vote == Vote::No) return {};  // a refusal's results mean nothing
  if (l.size() != 0 && l.size() != opsSent) {
    throw MalformedReply(std::to_string(l.size()) + " results for " + std::to_string(opsSent) + " operations");
  }
  std::vector<OpResult> out;
  out.reserve(l.size());
  for (auto r : l) out.push_back(readOpResult(r));
  return out;
}

Vote readVote(wire::Vote v) {
  if (std::uint16_t(v) > kMaxVote) throw MalformedReply("unknown vote " + std::to_string(std::uint16_t(v)));
  return static_cast<Vote>(v);
}

BranchOutcome readOutcome(wire::BranchOutcome o) {
  if (std::uint16_t(o) > kMaxBranchOutcome) {
    throw MalformedReply("unknown branch outcome " + std::to_string(std::uint16_t(o)));
  }
  return static_cast<BranchOutcome>(o);
}

}  // namespace

PrepareReply readPrepareVote(wire::PrepareVote::Reader v, std::size_t opsSent) {
  PrepareReply r;
  r.error = v.getError().cStr();
  if (!r.error.empty()) return r;  // a fault on the agent: the vote means nothing
  r.vote = readVote(v.getVote());
  r.reason = v.getReason().cStr();
  r.results = readResults(v.getResults(), opsSent, r.vote);
  if (r.vote == Vote::Yes) r.hostTxid = v.getHostTxid();  // anything else has no use for one
  return r;
}

std::vector<PrepareReply> readPrepareBatch(capnp::List<wire::PrepareVote>::Reader votes,
                                           const std::vector<std::size_t>& opsSent) {
  if (votes.size() != opsSent.size()) {
    throw MalformedReply(std::to_string(votes.size()) + " votes for " + std::to_string(opsSent.size()) +
                         " prepares");
  }
  std::vector<PrepareReply> out;
  out.reserve(votes.size());
  for (unsigned i = 0; i < votes.size(); ++i) out.push_back(readPrepareVote(votes[i], opsSent[i]));
  return out;
}

PrepareReply readExecute(wire::Participant::ExecuteResults::Reader r, std::size_t opsSent) {
  PrepareReply out;
  out.vote = r.getOk() ? Vote::Yes : Vote::No;
  out.reason = r.getReason().cStr();
  out.results = readResults(r.getResults(), opsSent, out.vote);
  return out;
}

OnePhaseReply readOnePhase(wire::Participant::CommitOnePhaseResults::Reader r, std::size_t opsSent) {
  OnePhaseReply out;
  out.outcome = readOutcome(r.getOutcome());
  out.reason = r.getReason().cStr();
  out.results = readResults(r.getResults(), opsSent,
                            out.outcome == BranchOutcome::Committed ? Vote::Yes : Vote::No);
  return out;
}

std::vector<BranchOutcome> readOutcomes(capnp::List<wire::BranchOutcome>::Reader l, std::size_t expected) {
  if (l.size() != expected) {
    throw MalformedReply(std::to_string(l.size()) + " outcomes for " + std::to_string(expected) + " branches");
  }
  std::vector<BranchOutcome> out;
  out.reserve(l.size());
  for (auto o : l) out.push_back(readOutcome(o));
  return out;
}

std::vector<RecoveredBranch> readRecovered(capnp::List<wire::BranchInfo>::Reader l) {
  std::vector<RecoveredBranch> out;
  out.reserve(l.size());
  for (auto b : l) {
    auto st = b.getState();
    if (std::uint16_t(st) > std::uint16_t(wire::BranchState::ROLLED_BACK)) {
      throw MalformedReply("unknown branch state " + std::to_string(std::uint16_t(st)));
    }
    if (b.getOperations().size() > Limits::kMaxOpsPerInteraction) {  // readOps would cut it short
      throw MalformedReply("a branch of " + std::to_string(b.getOperations().size()) + " operations");
    }
    RecoveredBranch r;
    r.xid = readXid(b.getXid());
    r.state = static_cast<BranchStatus>(st);
    r.epoch = b.getEpoch();
    r.createdUs = b.getCreatedAtUs();
    r.preparedUs = b.getPreparedAtUs();
    r.ops = readOps(b.getOperations());
    out.push_back(std::move(r));
  }
  return out;
}

std::optional<Statements> readDeclaredStatements(wire::Participant::StatementsResults::Reader r) {
  if (!r.getDeclared()) return std::nullopt;
  constexpr std::size_t kMaxDeclared = 65536;
  auto l = r.getStatements();
  if (l.size() > kMaxDeclared) throw MalformedReply(std::to_string(l.size()) + " declared statements");
  Statements out;
  for (auto s : l) {
    DeclaredStatement d;
    d.name = s.getName().cStr();
    if (!validName(d.name)) throw MalformedReply("a declared statement named '" + d.name + "'");
    if (s.getParams().size() > Limits::kMaxSqlParams) throw MalformedReply("statement " + d.name + ": too many params");
    for (auto t : s.getParams()) {
      auto p = parseParamType(t.cStr());
      if (!p) throw MalformedReply("statement " + d.name + ": unknown parameter type '" + std::string(t.cStr()) + "'");
      d.params.push_back(*p);
    }
    d.expectRows = s.getExpectRows();
    if (d.expectRows < -1) throw MalformedReply("statement " + d.name + ": expect_rows " + std::to_string(d.expectRows));
    std::string name = d.name;
    if (!out.emplace(name, std::move(d)).second) throw MalformedReply("statement " + name + " declared twice");
  }
  return out;
}

}  // namespace keel
