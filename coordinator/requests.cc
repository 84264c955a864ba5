// Coordinator: request ids (idempotency keys).
//
// Invariant: for one request id at most one interaction ever commits,
// across crashes and restarts. How:
//   - While an interaction is in memory, its id is in requests_ (from the
//     moment its seq is being assigned): a retry waits on it and runs
//     nothing.
//   - The WAL's `requests` table maps the id to its seq. The row rides with
//     the interaction's first durable record (the COMMIT decision, the
//     abort's rollback record, a one-phase or interactive record): no write
//     of its own, never an extra forced one. So any interaction that can
//     have committed has its row durable: a two-phase one commits only
//     after its decision is durable (the row with it); a one-phase one's
//     record is durable before its call leaves.
//   - What has no row was lost before any decision (a two-phase interaction
//     in flight when the coordinator crashed): presumed abort rolls it back
//     (the recovery sweep), it can never commit, so a retry runs as a new
//     interaction with a new seq — the only one of the two that can commit.
//   - Rows are kept for request_id_retention_s (plus twice the allowed clock
//     skew) after their interaction was created; a retry whose first-sent
//     time is older than the retention and whose row is gone is refused,
//     never run again silently. The purge walks the interactions table
//     (seq order is creation order), so the rows need no index of their own.
// docs/protocol.md ("Request ids") says what a client gets in each case.

#include "coordinator/coordinator.h"
#include "coordinator/interaction.h"

#include "common/fault.h"
#include "common/log.h"

namespace keel {

namespace {

SubmitOutcome invalid(const std::string& id, std::string why) {
  return SubmitOutcome{0, ClientOutcome::Invalid, std::move(why), {}, id, false};
}

std::string reuseMessage(const std::string& id, std::uint64_t seq) {
  return "request id '" + id + "' reused with other operations (it names interaction " + seqText(seq) +
         "): nothing was run";
}

}  // namespace

std::string Coordinator::checkRequest(const SubmitRequest& req) const {
  if (auto bad = checkRequestId(req.requestId); !bad.empty()) return bad;
  if (req.requestTimeUs == 0) {
    return "a request id needs the time the request was first sent (requestTimeUs, unix microseconds; a retry "
           "sends the same time)";
  }
  Micros now = wallMicros();
  if (req.requestTimeUs > now + Micros(cfg_.requestClockSkewMs) * 1000) {
    return "request time " + formatMicros(req.requestTimeUs) + " is ahead of the coordinator's clock (" +
           formatMicros(now) + ") by more than request_clock_skew_ms = " + std::to_string(cfg_.requestClockSkewMs);
  }
  return "";
}

std::optional<SubmitOutcome> Coordinator::replayOutcome(const InteractionRecord& rec) {
  SubmitOutcome o{rec.seq, ClientOutcome::Committed, rec.error, {}, rec.requestId, true};
  switch (rec.state) {
    case State::Committed:
    case State::Committing:  // the COMMIT decision is durable
      o.outcome = ClientOutcome::Committed;
      o.reason.clear();
      return o;
    case State::RolledBack:
      o.outcome = ClientOutcome::RolledBack;
      return o;
    case State::HeuristicMixed:
      o.outcome = ClientOutcome::HeuristicMixed;
      return o;
    case State::HeuristicUnknown:
      o.outcome = ClientOutcome::HeuristicUnknown;
      return o;
    case State::Aborting:
      if (rec.onePhase) return std::nullopt;  // the participant decides: wait for it
      o.outcome = ClientOutcome::RolledBack;
      return o;
    case State::Preparing:
      return std::nullopt;
  }
  return std::nullopt;
}

kj::Maybe<kj::Promise<SubmitOutcome>> Coordinator::replay(const SubmitRequest& req, std::uint64_t fingerprint) {
  const std::string& id = req.requestId;
  auto lr = requests_.find(id);
  if (lr != requests_.end()) {
    if (lr->second.fingerprint != fingerprint) {
      return kj::Promise<SubmitOutcome>(invalid(id, reuseMessage(id, lr->second.seq)));
    }
    auto paf = kj::newPromiseAndFulfiller<SubmitOutcome>();
    if (lr->second.seq == 0) {  // its seq is being assigned: wait with it
      lr->second.early.push_back(kj::mv(paf.fulfiller));
      return kj::mv(paf.promise);
    }
    if (Interaction* p = find(lr->second.seq)) {
      if (p->told && p->told->outcome != ClientOutcome::InDoubt) {
        SubmitOutcome o = *p->told;
        o.results.clear();
        o.replayed = true;
        return kj::Promise<SubmitOutcome>(kj::mv(o));
      }
      p->replays.push_back(kj::mv(paf.fulfiller));  // answered with the original
      return kj::mv(paf.promise);
    }
  }
  std::optional<RequestRecord> row;
  try {
    // The archive is looked at only if it may hold the id: an interaction
    // is created after its request was first sent (within the clock skew).
    Micros skew = Micros(cfg_.requestClockSkewMs) * 1000;
    row = wal_.findRequest(id, req.requestTimeUs > skew ? req.requestTimeUs - skew : 0);
  } catch (const CorruptRecord& e) {
    KEEL_LOG_ERROR("request id '{}': damaged row in the requests table ({})", id, e.what());
    return kj::Promise<SubmitOutcome>(SubmitOutcome{
        0, ClientOutcome::Unavailable,
        "the coordinator's record of this request id is damaged: nothing was run (an operator must look)", {}, id,
        false});
  }
  if (row) {
    if (row->fingerprint != fingerprint) return kj::Promise<SubmitOutcome>(invalid(id, reuseMessage(id, row->seq)));
    if (settlingStaged_.count(row->seq) != 0) {
      // Staged and being settled from its votes (it may have been answered
      // "committed" before the restart): the retry waits for the outcome.
      auto paf = kj::newPromiseAndFulfiller<SubmitOutcome>();
      stagedReplays_[row->seq].push_back(kj::mv(paf.fulfiller));
      return kj::mv(paf.promise);
    }
    std::optional<SubmitOutcome> o;
    if (auto stored = wal_.get(row->seq)) {
      try {
        o = replayOutcome(decodeInteraction(stored->interaction));
      } catch (const CorruptRecord&) {
      }
    }
    if (!o) {
      o = SubmitOutcome{row->seq, ClientOutcome::InDoubt,
                        "interaction " + seqText(row->seq) + " of this request id is not settled; query it later",
                        {}, id, true};
    }
    return kj::Promise<SubmitOutcome>(kj::mv(*o));
  }
  Micros retention = Micros(cfg_.requestIdRetentionS) * 1'000'000;
  if (req.requestTimeUs + retention < wallMicros()) {
    return kj::Promise<SubmitOutcome>(invalid(
        id, "request id '" + id + "' was first sent at " + formatMicros(req.requestTimeUs) +
                ", longer ago than request_id_retention_s = " + std::to_string(cfg_.requestIdRetentionS) +
                " s, and the coordinator no longer knows it: nothing was run (look for it with keelctl query "
                "--request-id, or send a new request id)"));
  }
  // Restored from a backup: an id first sent before the restore (within
  // the allowed clock skew) may have run under the lost WAL. Never again.
  Micros until = restored_ ? restored_->atUs + Micros(cfg_.requestClockSkewMs) * 1000 : 0;
  if (req.requestTimeUs < until) {
    return kj::Promise<SubmitOutcome>(invalid(
        id, "request id '" + id + "' was first sent at " + formatMicros(req.requestTimeUs) +
                ", and this coordinator was restored from a backup at " + formatMicros(restored_->atUs) +
                ": the restored WAL does not know the id, and it may have run before the restore, so nothing was "
                "run. Request ids first sent before " + formatMicros(until) +
                " (the restore plus request_clock_skew_ms) are refused; a new request sent after that runs"));
  }
  return nullptr;
}

void Coordinator::claimRequest(const std::string& id, std::uint64_t fingerprint) {
  auto& lr = requests_[id];
  lr.seq = 0;
  lr.fingerprint = fingerprint;
}

void Coordinator::bindRequest(Interaction& it) {
  auto& lr = requests_[it.rec.requestId];
  lr.seq = it.rec.seq;
  lr.fingerprint = it.fingerprint;
  for (auto& f : lr.early) it.replays.push_back(kj::mv(f));
  lr.early.clear();
}

void Coordinator::releaseRequest(const std::string& id, const kj::Exception* why) {
  auto lr = requests_.find(id);
  if (lr == requests_.end() || lr->second.seq != 0) return;
  for (auto& f : lr->second.early) {
    f->fulfill(SubmitOutcome{0, ClientOutcome::Unavailable,
                             "no sequence number: " + (why != nullptr ? describeFault(*why) : std::string("?")),
                             {}, id, false});
  }
  requests_.erase(lr);
}

void Coordinator::forgetRequest(const Interaction& it) {
  if (it.rec.requestId.empty()) return;
  auto lr = requests_.find(it.rec.requestId);
  if (lr != requests_.end() && lr->second.seq == it.rec.seq) requests_.erase(lr);
}

kj::Promise<void> Coordinator::archiveOld() {
  // Picked (one read transaction of the hot WAL) and written durably to the
  // archive on the archive's thread, then dropped from the hot WAL (a lazy
  // write, on the loop) if still the same bytes. A crash between the last
  // two leaves a record in both places: the hot one is read first, and the
  // next pass moves it again. The request rows move with their
  // interactions, so a retry of an archived request id is still answered
  // from it.
  constexpr std::size_t kBatch = 2000;
  Micros now = wallMicros();
  Micros keep = Micros(cfg_.hotRetentionS) * 1'000'000;
  Micros before = now > keep ? now - keep : 0;
  auto moved = std::make_shared<std::vector<ArchivedInteraction>>();
  auto again = [this](kj::Duration d) {
    return io_.provider->getTimer().afterDelay(d).then([this]() { return archiveOld(); });
  };
  return archive_
      ->onWorker([this, moved, before] {
        *moved = wal_.archiveCandidates(before, kBatch);
        if (!moved->empty()) archive_->append(*moved);
      })
      .then([this, moved]() -> kj::Promise<std::size_t> {
        if (moved->empty()) return std::size_t(0);
        return wal_.dropArchived(*moved);
      })
      .then(
          [this, moved](std::size_t dropped) {
            bool full = moved->size() == kBatch;  // more may be waiting: the next batch soon
            moved->clear();
            archived_ += dropped;
            Micros t = wallMicros();
            if (archived_ > 0 && t - archivedLogUs_ >= 60'000'000) {
              KEEL_LOG_INFO("archive: {} finished interaction(s) older than hot_retention_s = {} moved to {}",
                            archived_, cfg_.hotRetentionS, archive_->dir());
              archived_ = 0;
              archivedLogUs_ = t;
            }
            return full ? 10 * kj::MILLISECONDS : 1 * kj::SECONDS;
          },
          [](kj::Exception&& e) {
            KEEL_LOG_WARN("archive: a batch failed ({}); the hot WAL keeps it, trying again in 5 s", describeFault(e));
            return 5 * kj::SECONDS;
          })
      .then([again](kj::Duration d) { return again(d); });
}

kj::Promise<void> Coordinator::purgeRequests() {
  // Rows of interactions created longer ago than the retention, and twice
  // the allowed clock skew (a client's clock may be that far behind ours),
  // go; a bounded batch per lazy write, so the purge never holds up a group
  // commit for long.
  Micros keep = Micros(cfg_.requestIdRetentionS) * 1'000'000 + 2 * Micros(cfg_.requestClockSkewMs) * 1000;
  Micros now = wallMicros();
  Micros before = now > keep ? now - keep : 0;
  constexpr std::size_t kBatch = 10000;
  return wal_.purgeRequests(before, kBatch)
      .then(
          [](WalStore::Purged p) {
            if (p.dropped > 0) KEEL_LOG_INFO("request ids: {} past request_id_retention_s dropped", p.dropped);
            return p.more;
          },
          [](kj::Exception&& e) {
            KEEL_LOG_WARN("request ids: purge failed ({}); trying again later", describeFault(e));
            return false;
          })
      .then([this](bool more) {
        auto again = more ? 100 * kj::MILLISECONDS : 60 * kj::SECONDS;
        return io_.provider->getTimer().afterDelay(again).then([this]() { return purgeRequests(); });
      });
}

std::optional<StoredInteraction> Coordinator::queryRequest(const std::string& requestId) const {
  auto lr = requests_.find(requestId);
  if (lr != requests_.end() && lr->second.seq != 0) return query(lr->second.seq);
  auto row = wal_.findRequest(requestId);
  if (!row) return std::nullopt;
  return query(row->seq);
}

}  // namespace keel
