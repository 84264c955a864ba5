#include "tools/keelctl/commands.h"

#include <unistd.h>

#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <iostream>
#include <memory>

#include "common/backup.h"
#include "common/client.h"
#include "common/fault.h"
#include "tools/keelctl/output.h"
#include "tools/keelctl/parse.h"

namespace keel::ctl {

namespace {

// describeFault leaves a failed name lookup in KJ's words.
std::string plainFault(std::string why) {
  if (why.rfind("DNS lookup failed", 0) == 0) return "host name not found";
  return why;
}

// An id made by newRequestId() starts with the unix microseconds of its
// first try (16 hex digits, '-', 16 hex digits). 0: not such an id.
std::uint64_t madeAt(const std::string& id) {
  if (id.size() != 33 || id[16] != '-') return 0;
  for (std::size_t i = 0; i < id.size(); ++i) {
    if (i != 16 && !std::isxdigit(static_cast<unsigned char>(id[i]))) return 0;
  }
  std::uint64_t us = 0;
  std::from_chars(id.data(), id.data() + 16, us, 16);
  return us;
}

// One command's exchange with one peer: every wait, connecting included,
// ends when --timeout has passed since the exchange began. A fault or the
// deadline becomes a Failure with exit status 3 that names the peer and
// says what happened, never KJ's own text.
class Exchange {
 public:
  Exchange(kj::AsyncIoContext& io, std::string address, kj::Duration timeout)
      : io_(io), address_(std::move(address)), timeout_(timeout), deadline_(io.provider->getTimer().now() + timeout) {}

  template <typename T>
  T wait(kj::Promise<T> p) {
    bool expired = false;
    auto bounded = p.exclusiveJoin(io_.provider->getTimer().atTime(deadline_).then([&expired]() -> kj::Promise<T> {
      expired = true;
      return KJ_EXCEPTION(OVERLOADED, "keelctl --timeout");
    }));
    return settle(kj::mv(bounded), expired);
  }

  // As wait, but --timeout counts from the last extend(): a long exchange
  // that keeps making progress (a backup) is cut off only when it stalls.
  template <typename T>
  T waitActive(kj::Promise<T> p) {
    bool expired = false;
    auto bounded = p.exclusiveJoin(watchdog(expired).then([]() -> kj::Promise<T> {
      return KJ_EXCEPTION(OVERLOADED, "keelctl --timeout");
    }));
    return settle(kj::mv(bounded), expired);
  }
  void extend() { deadline_ = io_.provider->getTimer().now() + timeout_; }
  const std::string& address() const { return address_; }

 private:
  kj::Promise<void> watchdog(bool& expired) {
    return io_.provider->getTimer().atTime(deadline_).then([this, &expired]() -> kj::Promise<void> {
      if (io_.provider->getTimer().now() < deadline_) return watchdog(expired);
      expired = true;
      return kj::READY_NOW;
    });
  }

  template <typename T>
  T settle(kj::Promise<T> bounded, bool& expired) {
    try {
      return bounded.wait(io_.waitScope);
    } catch (const kj::Exception& e) {
      if (expired) {
        throw Failure(kExitUnreachable, "no answer from " + address_ + " within " + formatDuration(timeout_));
      }
      if (e.getType() == kj::Exception::Type::DISCONNECTED) {
        throw Failure(kExitUnreachable, "no answer from " + address_ + " (" + plainFault(describeFault(e)) + ")");
      }
      throw Failure(kExitUnreachable, address_ + ": " + plainFault(describeFault(e)));
    }
  }

  kj::AsyncIoContext& io_;
  std::string address_;
  kj::Duration timeout_;
  kj::TimePoint deadline_;
};

}  // namespace

std::vector<std::string> coordinatorList(const std::string& arg) {
  std::vector<std::string> out;
  std::size_t at = 0;
  for (;;) {
    auto comma = arg.find(',', at);
    out.push_back(arg.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) return out;
    at = comma + 1;
  }
}

namespace {

// Several coordinators (a cluster): the first that accepts a connection
// serves the command; each gets its own --timeout.
std::pair<std::unique_ptr<Exchange>, kj::Own<KeelClient>> connectAny(kj::AsyncIoContext& io, const Globals& g) {
  auto addrs = coordinatorList(g.coordinator);
  for (std::size_t i = 0;; ++i) {
    auto ex = std::make_unique<Exchange>(io, addrs[i], g.timeout);
    try {
      auto client = ex->wait(KeelClient::connect(io, addrs[i]));
      return {std::move(ex), kj::mv(client)};
    } catch (const Failure& f) {
      if (i + 1 == addrs.size()) throw;
      std::cerr << "keelctl: " << f.what() << "; trying " << addrs[i + 1] << "\n";
    }
  }
}

// An agent to talk to (AgentRef), connected. `coordinator` holds the
// connection an embedded participant is reached through.
struct AgentSession {
  std::unique_ptr<Exchange> ex;
  kj::Own<KeelClient> coordinator;
  kj::Own<AgentClient> agent;
  std::string source;  // how messages and a backup's manifest name it
};

AgentSession connectAgent(kj::AsyncIoContext& io, const Globals& g, const AgentRef& ref) {
  AgentSession s;
  if (ref.embedded.empty()) {
    s.ex = std::make_unique<Exchange>(io, ref.address, g.timeout);
    s.agent = s.ex->wait(AgentClient::connect(io, ref.address));
    s.source = ref.address;
    return s;
  }
  std::tie(s.ex, s.coordinator) = connectAny(io, g);
  auto req = s.coordinator->capability().embeddedParticipantRequest();
  req.setName(ref.embedded);
  // The coordinator's refusal (no such participant, not an embedded one, not
  // an operator) is an answer, not a lost peer: nothing reached any agent.
  using Got = std::pair<kj::Maybe<wire::Participant::Client>, std::string>;
  auto got = s.ex->wait(req.send().then(
      [](capnp::Response<wire::Coordinator::EmbeddedParticipantResults> r) {
        return Got{r.getParticipant(), ""};
      },
      [](kj::Exception&& e) -> Got {
        if (e.getType() != kj::Exception::Type::FAILED) kj::throwFatalException(kj::mv(e));
        return Got{nullptr, describeFault(e)};
      }));
  KJ_IF_MAYBE (cap, got.first) {
    s.agent = kj::heap<AgentClient>(kj::mv(*cap));
  } else {
    throw Failure(kExitUsage, "--embedded " + ref.embedded + ": " + s.ex->address() + ": " + got.second);
  }
  s.source = s.ex->address() + " (embedded " + ref.embedded + ")";
  return s;
}

}  // namespace

int Commands::submit(SubmitRequest req, const std::vector<std::string>* balanceRefs) {
  if (req.requestId.empty()) req.requestId = newRequestId();
  // A retry must send the time of the first try: a request id the
  // coordinator no longer knows is then refused as too old, never run again.
  // For an id keelctl made (this run or an earlier one) that time is in it.
  req.requestTimeUs = madeAt(req.requestId);
  const std::string id = req.requestId;
  std::string timeoutText = formatDuration(g_.timeout);
  // What a lost answer was, as the retry lines and the final message say it.
  auto lost = [&](const std::string& why, bool namePeer) -> std::string {
    std::string from = namePeer ? " from " + g_.coordinator : "";
    if (why == "no answer within the deadline") return "no answer" + from + " within --timeout " + timeoutText;
    if (why.rfind("coordinator unavailable", 0) == 0) return why;
    return "no answer" + from + " (" + plainFault(why) + ")";
  };
  RetryOptions ro;
  ro.callTimeout = g_.timeout;
  ro.retryFor = g_.retryFor;
  ro.onRetry = [&](unsigned attempt, const std::string& why) {
    std::cerr << "keelctl: " << lost(why, false) << "; retrying request " << id << " (attempt " << attempt << ")\n";
  };
  auto r = submitWithRetry(io_, coordinatorList(g_.coordinator), std::move(req), std::move(ro)).wait(io_.waitScope);
  if (!r.answered) {
    std::string what = g_.retryFor == 0 * kj::SECONDS ? lost(r.lastError, true)
                                                      : "no answer within --retry-for " + formatDuration(g_.retryFor);
    throw Failure(kExitUnreachable, what + "; request id " + id +
                                        " may or may not have run: look it up with keelctl query --request-id " + id);
  }
  SubmitOutcome& o = r.outcome;
  if (o.requestId.empty()) o.requestId = id;
  return balanceRefs != nullptr ? printBalances(out_, o, *balanceRefs, g_.json) : printOutcome(out_, o, g_.json);
}

int Commands::query(std::uint64_t seq) {
  auto [ex, client] = connectAny(io_, g_);
  auto q = ex->wait(client->query(seq));
  if (!q) throw Failure(kExitRefused, "no interaction " + seqText(seq));
  printQuery(out_, *q, g_.json);
  return kExitDone;
}

int Commands::queryRequest(const std::string& requestId) {
  auto [ex, client] = connectAny(io_, g_);
  auto q = ex->wait(client->queryRequest(requestId));
  if (!q) throw Failure(kExitRefused, "no interaction has request id " + requestId);
  printQuery(out_, *q, g_.json);
  return kExitDone;
}

int Commands::list(std::uint32_t limit) {
  auto [ex, client] = connectAny(io_, g_);
  auto unfinished = ex->wait(client->listUnfinished(limit));
  auto heuristic = ex->wait(client->listHeuristic(limit));
  printUnfinished(out_, unfinished, heuristic, g_.json);
  return kExitDone;
}

int Commands::info() {
  auto [ex, client] = connectAny(io_, g_);
  printInfo(out_, ex->wait(client->info()), g_.json);
  return kExitDone;
}

int Commands::stats() {
  auto [ex, client] = connectAny(io_, g_);
  printStats(out_, ex->wait(client->stats()), g_.json);
  return kExitDone;
}

int Commands::retry(std::uint64_t seq) {
  auto [ex, client] = connectAny(io_, g_);
  auto req = client->capability().retryNowRequest();
  req.setSeq(seq);
  printWoken(out_, ex->wait(req.send()).getWoken(), g_.json);
  return kExitDone;
}

int Commands::resolve(std::uint64_t seq, bool commit, const std::string& who, const std::string& why, bool override) {
  auto [ex, client] = connectAny(io_, g_);
  auto req = client->capability().resolveRequest();
  req.setSeq(seq);
  req.setCommit(commit);
  req.setWho(who);
  req.setWhy(why);
  req.setOverride(override);
  auto resp = ex->wait(req.send());
  return printDone(out_, resp.getDone(), resp.getReason().cStr(), g_.json);
}

int Commands::reconciled(std::uint64_t seq, const std::string& who, const std::string& why) {
  auto [ex, client] = connectAny(io_, g_);
  auto req = client->capability().reconciledRequest();
  req.setSeq(seq);
  req.setWho(who);
  req.setWhy(why);
  auto resp = ex->wait(req.send());
  return printDone(out_, resp.getDone(), resp.getReason().cStr(), g_.json);
}

int Commands::audit(std::uint32_t limit) {
  auto [ex, client] = connectAny(io_, g_);
  printAudit(out_, ex->wait(client->audit(limit)), g_.json);  // each entry a JSON object already
  return kExitDone;
}

int Commands::branches(const AgentRef& ref) {
  auto s = connectAgent(io_, g_, ref);
  auto both = s.ex->wait(s.agent->booksAndUnfinished());
  printBranches(out_, both.first, both.second, g_.json);
  return kExitDone;
}

int Commands::forget(const AgentRef& ref, const std::vector<Xid>& xids) {
  auto s = connectAgent(io_, g_, ref);
  auto& ex = s.ex;
  auto req = s.agent->capability().forgetRequest();
  req.setEpoch(0);  // an operator, not a coordinator: no epoch, no fencing
  auto l = req.initXids(xids.size());
  for (unsigned i = 0; i < xids.size(); ++i) {
    l[i].setSeq(xids[i].seq);
    l[i].setBranch(xids[i].branch);
  }
  auto resp = ex->wait(req.send());
  std::vector<Xid> refused;
  for (auto x : resp.getRefused()) refused.push_back(Xid{x.getSeq(), x.getBranch()});
  std::vector<std::string> reasons;
  for (auto r : resp.getReasons()) reasons.emplace_back(r.cStr());
  reasons.resize(refused.size(), "not finished");  // an agent from before reasons
  return printForgotten(out_, resp.getForgotten(), refused, reasons, g_.json);
}

namespace {

// Progress of a backup on stderr: at most one line per 10% or per 2 s,
// from the first second on (a small backup prints only its answer).
class BackupProgress {
 public:
  void operator()(std::uint64_t written, std::uint64_t estimate) {
    auto now = std::chrono::steady_clock::now();
    if (now - began_ < std::chrono::seconds(1)) return;
    int tenth = estimate == 0 ? 0 : int(std::min<std::uint64_t>(written * 10 / estimate, 10));
    if (tenth == lastTenth_ && now - last_ < std::chrono::seconds(2)) return;
    lastTenth_ = tenth;
    last_ = now;
    char line[128];
    if (estimate == 0) {
      std::snprintf(line, sizeof line, "keelctl: backup: %.1f MiB", double(written) / double(1 << 20));
    } else {
      // The estimate is the pages in use; the compacted copy is smaller.
      std::snprintf(line, sizeof line, "keelctl: backup: %.1f MiB of at most %.1f MiB",
                    double(written) / double(1 << 20), double(estimate) / double(1 << 20));
    }
    std::cerr << line << std::endl;
  }

 private:
  int lastTenth_ = -1;
  std::chrono::steady_clock::time_point began_ = std::chrono::steady_clock::now(), last_{};
};

}  // namespace

int Commands::backup(const AgentRef& ref, const std::string& dir) {
  // The target is checked (and its partial directory made) before anything
  // is sent; on any failure below the partial directory is removed.
  std::unique_ptr<BackupTarget> target;
  Exchange* active = nullptr;
  BackupProgress shown;
  try {
    target = std::make_unique<BackupTarget>(dir, [&](std::uint64_t written, std::uint64_t estimate) {
      if (active != nullptr) active->extend();
      shown(written, estimate);
    });
  } catch (const BackupError& e) {
    throw Failure(kExitUsage, e.what());
  }
  std::string source;
  BackupDone done;
  if (ref.empty()) {
    auto [ex, client] = connectAny(io_, g_);
    active = ex.get();
    source = ex->address();
    auto req = client->capability().backupRequest();
    req.setSink(target->sink());
    auto resp = ex->waitActive(req.send());
    done = BackupDone{resp.getBytes(), resp.getMicros()};
  } else {
    auto s = connectAgent(io_, g_, ref);
    active = s.ex.get();
    source = s.source;
    auto req = s.agent->capability().backupRequest();
    req.setSink(target->sink());
    auto resp = s.ex->waitActive(req.send());
    done = BackupDone{resp.getBytes(), resp.getMicros()};
  }
  BackupManifest m;
  try {
    m = target->commit(source, done);
  } catch (const BackupError& e) {
    throw Failure(kExitRefused, std::string("backup not kept: ") + e.what());
  }
  printBackup(out_, m, dir, g_.json);
  return kExitDone;
}

namespace {

// Writes each page of an export as it arrives (the coordinator waits for
// each page to be taken: memory stays bounded whatever the range).
class ExportWriter final : public wire::ExportSink::Server {
 public:
  using Progress = std::function<void(std::uint64_t scanned, std::uint64_t total)>;
  ExportWriter(std::ostream& out, std::string format, Progress progress)
      : out_(out), format_(std::move(format)), progress_(std::move(progress)) {}

  kj::Promise<void> page(PageContext ctx) override {
    auto p = ctx.getParams();
    std::map<std::uint64_t, RollbackRecord> rollbacks;
    try {
      for (auto d : p.getRollbacks()) {
        auto rb = decodeRollback(std::string_view(reinterpret_cast<const char*>(d.begin()), d.size()));
        rollbacks[rb.seq] = std::move(rb);
      }
      for (auto d : p.getInteractions()) {
        auto r = decodeInteraction(std::string_view(reinterpret_cast<const char*>(d.begin()), d.size()));
        auto rb = rollbacks.find(r.seq);
        printExportRecord(out_, format_, r, rb == rollbacks.end() ? nullptr : &rb->second);
      }
    } catch (const CorruptRecord& e) {
      return KJ_EXCEPTION(FAILED, std::string("a record from the coordinator does not decode: ") + e.what());
    }
    if (!out_) return KJ_EXCEPTION(FAILED, "writing the export failed (disk full, or the reader went away)");
    if (progress_) progress_(p.getScanned(), p.getTotal());
    return kj::READY_NOW;
  }

 private:
  std::ostream& out_;
  std::string format_;
  Progress progress_;
};

}  // namespace

int Commands::exportRange(Micros fromUs, Micros toUs, const std::string& format, const std::string& outPath,
                          std::ostream& data) {
  std::ofstream file;
  std::string partial;
  std::ostream* out = &data;
  if (!outPath.empty()) {
    std::error_code ec;
    if (std::filesystem::symlink_status(outPath, ec).type() != std::filesystem::file_type::not_found) {
      throw Failure(kExitUsage, "export target " + outPath + " exists; an export never overwrites");
    }
    partial = outPath + ".partial-" + std::to_string(::getpid());
    file.open(partial, std::ios::out | std::ios::trunc);
    if (!file) throw Failure(kExitUsage, "cannot write " + partial + ": " + std::strerror(errno));
    out = &file;
  }
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      if (!path.empty()) std::remove(path.c_str());
    }
  } cleanup{partial};

  printExportHeader(*out, format);
  auto [ex, client] = connectAny(io_, g_);
  auto started = std::chrono::steady_clock::now();
  auto lastShown = started;
  Exchange* active = ex.get();
  auto req = client->capability().exportRangeRequest();
  req.setFromUs(fromUs);
  req.setToUs(toUs);
  req.setSink(kj::heap<ExportWriter>(*out, format, [&](std::uint64_t scanned, std::uint64_t total) {
    active->extend();
    auto now = std::chrono::steady_clock::now();
    if (now - started < std::chrono::seconds(1) || now - lastShown < std::chrono::seconds(2)) return;
    lastShown = now;
    std::cerr << "keelctl: export: " << scanned << " of " << total << " records looked at" << std::endl;
  }));
  auto resp = ex->waitActive(req.send());
  out->flush();
  if (!*out) throw Failure(kExitRefused, "writing the export failed");
  if (!outPath.empty()) {
    file.close();
    if (std::rename(partial.c_str(), outPath.c_str()) != 0) {
      throw Failure(kExitRefused, "renaming " + partial + " to " + outPath + ": " + std::strerror(errno));
    }
    cleanup.path.clear();
  }
  std::string where = outPath.empty() ? "stdout" : outPath;
  printExported(g_.json ? out_ : std::cerr, resp.getInteractions(), resp.getRollbacks(), resp.getScanned(),
                resp.getDamaged(), where, g_.json);
  return kExitDone;
}

int Commands::search(Micros fromUs, Micros toUs, const std::string& participant, const std::string& state,
                     std::uint32_t limit) {
  auto [ex, client] = connectAny(io_, g_);
  auto req = client->capability().searchRequest();
  req.setFromUs(fromUs);
  req.setToUs(toUs);
  req.setParticipant(participant);
  req.setState(state);
  req.setLimit(limit);
  auto resp = ex->wait(req.send());
  std::vector<InteractionRecord> found;
  for (auto d : resp.getInteractions()) {
    try {
      found.push_back(decodeInteraction(std::string_view(reinterpret_cast<const char*>(d.begin()), d.size())));
    } catch (const CorruptRecord& e) {
      throw Failure(kExitUnreachable, std::string("a record from the coordinator does not decode: ") + e.what());
    }
  }
  printSearch(out_, found, resp.getMore(), resp.getScanned(), g_.json);
  return kExitDone;
}

int Commands::archivePeriods() {
  auto [ex, client] = connectAny(io_, g_);
  auto resp = ex->wait(client->capability().archivePeriodsRequest().send());
  std::vector<ArchivePeriodLine> periods;
  for (auto p : resp.getPeriods()) periods.push_back({p.getName().cStr(), p.getInteractions(), p.getDamaged().cStr()});
  printArchivePeriods(out_, periods, g_.json);
  return kExitDone;
}

int Commands::dropArchive(const std::string& before, const std::string& who, const std::string& why) {
  auto [ex, client] = connectAny(io_, g_);
  auto req = client->capability().dropArchiveRequest();
  req.setBefore(before);
  req.setWho(who);
  req.setWhy(why);
  auto resp = ex->wait(req.send());
  std::vector<std::string> dropped;
  for (auto d : resp.getDropped()) dropped.emplace_back(d.cStr());
  std::string refused = resp.getRefused().cStr();
  std::string reason = !refused.empty() ? refused
                       : "dropped " + std::to_string(dropped.size()) + " period(s): " + dropped.front() +
                             (dropped.size() > 1 ? " .. " + dropped.back() : "");
  return printDone(out_, refused.empty(), reason, g_.json);
}

}  // namespace keel::ctl
