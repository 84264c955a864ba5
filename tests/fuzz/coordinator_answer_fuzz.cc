// What a coordinator answers its clients (common/client.h: KeelClient,
// keelctl, the agent's in-doubt resolver): submit, submitBatch, begin,
// execute/commit/rollback results (readSubmitResult), query and
// queryRequest (readQueryAnswer: WAL records inside), listUnfinished /
// listHeuristic (readRecordList), then the renderings keelctl prints.
// A malformed answer must end in std::runtime_error ("malformed answer"),
// CorruptRecord or a kj::Exception, nothing else.

#include <stdexcept>
#include <vector>

#include "common/client.h"
#include "tests/fuzz/fuzz_util.h"

namespace keel {
namespace {

void render(const InteractionRecord& r) {
  (void)toJson(r);
  (void)toText(r);
}

void render(const std::optional<QueryResult>& q) {
  if (!q) return;
  render(q->interaction);
  if (q->rollback) {
    (void)toJson(*q->rollback);
    (void)toText(*q->rollback);
  }
}

void checked(const SubmitOutcome& o, std::size_t sent) {
  if (std::uint8_t(o.outcome) > kMaxClientOutcome) fuzz::violated("submit: outcome not checked");
  if (!o.results.empty() && o.results.size() != sent) fuzz::violated("submit: result count not checked");
}

}  // namespace
}  // namespace keel

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  if (size < 2) return 0;
  std::size_t sent = data[1];  // operations the client sent
  fuzz::withMessage(data, size, 2, [&](capnp::MessageReader& m) {
    try {
      switch (data[0] % 7) {
        case 0:  // submit, Transaction.execute / commit / rollback
          checked(readSubmitResult(m.getRoot<wire::Coordinator::SubmitResults>().getResult(), sent), sent);
          break;
        case 1: {  // submitBatch, as KeelClient::sendBatch reads it
          auto rs = m.getRoot<wire::Coordinator::SubmitBatchResults>().getResults();
          if (rs.size() != sent % 16) return;  // "malformed answer": count differs
          for (unsigned i = 0; i < rs.size(); ++i) checked(readSubmitResult(rs[i], sent / 16), sent / 16);
          break;
        }
        case 2: {  // begin: a replayed request's outcome
          auto r = m.getRoot<wire::Coordinator::BeginResults>();
          if (r.hasReplay()) checked(readSubmitResult(r.getReplay(), 0), 0);
          break;
        }
        case 3:
          render(readQueryAnswer(m.getRoot<wire::Coordinator::QueryResults>()));
          break;
        case 4:
          render(readQueryAnswer(m.getRoot<wire::Coordinator::QueryRequestResults>()));
          break;
        case 5:
          for (const auto& r : readRecordList(m.getRoot<wire::Coordinator::ListUnfinishedResults>().getInteractions())) {
            render(r);
          }
          break;
        case 6: {  // the agent's in-doubt resolver asks Coordinator.outcome
          auto o = m.getRoot<wire::Coordinator::OutcomeResults>().getOutcome();
          (void)(o == wire::DecisionOutcome::COMMITTED || o == wire::DecisionOutcome::ROLLED_BACK);
          break;
        }
      }
    } catch (const CorruptRecord&) {
    } catch (const std::runtime_error& e) {
      if (std::string(e.what()).rfind("malformed answer", 0) != 0) throw;
    }
  });
  return 0;
}
