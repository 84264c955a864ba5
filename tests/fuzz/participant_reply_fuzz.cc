// What an agent answers the coordinator: prepare votes (prepareBatch and
// its streamed VoteSink votes), execute, commitOnePhase, commit/rollback
// outcomes and recover's branches, read by coordinator/replies.h, the only
// functions ParticipantLink reads them with. A malformed answer must end in
// MalformedReply (or a kj::Exception from Cap'n Proto), nothing else.

#include <vector>

#include "coordinator/replies.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  if (size < 2) return 0;
  // Byte 0: which answer; byte 1: how many operations (or XIDs) the
  // coordinator sent, which the answer is checked against.
  std::size_t sent = data[1];
  fuzz::withMessage(data, size, 2, [&](capnp::MessageReader& m) {
    try {
      switch (data[0] % 7) {
        case 0: {  // Participant.prepareBatch: one vote per item sent
          auto votes = m.getRoot<wire::Participant::PrepareBatchResults>().getVotes();
          std::vector<std::size_t> opsSent(sent % 8, sent / 8);
          auto r = readPrepareBatch(votes, opsSent);
          if (r.size() != opsSent.size()) fuzz::violated("prepareBatch: vote count not checked");
          break;
        }
        case 1: {  // VoteSink.votes: streamed votes of a batch of `sent` items
          for (auto iv : m.getRoot<wire::VoteSink::VotesParams>().getVotes()) {
            if (iv.getIndex() >= sent) continue;  // ignored, as ParticipantLink does
            try {
              (void)readPrepareVote(iv.getVote(), 1);
            } catch (const MalformedReply&) {
            }
          }
          break;
        }
        case 2: {  // Participant.execute
          auto r = readExecute(m.getRoot<wire::Participant::ExecuteResults>(), sent);
          if (!r.results.empty() && r.results.size() != sent) fuzz::violated("execute: result count not checked");
          break;
        }
        case 3: {  // Participant.commitOnePhase
          auto r = readOnePhase(m.getRoot<wire::Participant::CommitOnePhaseResults>(), sent);
          if (std::uint8_t(r.outcome) > kMaxBranchOutcome) fuzz::violated("one-phase: outcome not checked");
          break;
        }
        case 4: {  // Participant.commit / rollback
          auto r = readOutcomes(m.getRoot<wire::Participant::CommitResults>().getOutcomes(), sent);
          for (auto o : r) {
            if (std::uint8_t(o) > kMaxBranchOutcome) fuzz::violated("commit: outcome not checked");
          }
          break;
        }
        case 5: {  // Participant.recover
          for (const auto& b : readRecovered(m.getRoot<wire::Participant::RecoverResults>().getBranches())) {
            (void)b.xid.str();
            (void)branchStatusName(b.state);
          }
          break;
        }
        case 6: {  // Participant.statements: what the coordinator checks clients' calls against
          if (auto st = readDeclaredStatements(m.getRoot<wire::Participant::StatementsResults>())) {
            for (const auto& [name, d] : *st) {
              if (d.expectRows < -1 || d.params.size() > Limits::kMaxSqlParams) fuzz::violated("statements not checked");
              (void)notDeclared(*st, name + "x", "pg");
            }
          }
          break;
        }
      }
    } catch (const MalformedReply&) {
      // refused: that call's fault
    }
  });
  return 0;
}
