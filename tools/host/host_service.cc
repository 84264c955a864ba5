#include "tools/host/host_service.h"

#include <spdlog/fmt/fmt.h>

#include <charconv>
#include <cstdlib>
#include <stdexcept>

#include "common/log.h"
#include "common/strict_json.h"

namespace keel::host {
namespace {

// A request body that is not what the endpoint reads: 400 with this reason.
class BadRequest : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Json parseObject(const std::string& body) {
  Json j = JsonReader::parse(body);  // JsonError says where it is not JSON
  if (!j.isObject()) throw BadRequest("the body is not a JSON object");
  return j;
}

const Json& member(const Json& j, const std::string& name) {
  for (const auto& [k, v] : j.members) {
    if (k == name) return v;
  }
  throw BadRequest("missing member '" + name + "'");
}

std::string text(const Json& j, const std::string& name, std::size_t maxBytes) {
  const Json& v = member(j, name);
  if (v.kind != Json::Kind::String) throw BadRequest("member '" + name + "' must be a string");
  if (v.text.empty() || v.text.size() > maxBytes) {
    throw BadRequest("member '" + name + "' must be 1.." + std::to_string(maxBytes) + " bytes");
  }
  return v.text;
}

std::int64_t integer(const Json& j, const std::string& name) {
  const Json& v = member(j, name);
  if (v.kind != Json::Kind::Number) throw BadRequest("member '" + name + "' must be a number");
  std::int64_t out = 0;
  auto [end, ec] = std::from_chars(v.text.data(), v.text.data() + v.text.size(), out);
  if (ec == std::errc::result_out_of_range) throw BadRequest("member '" + name + "' is out of range: " + v.text);
  if (ec != std::errc() || end != v.text.data() + v.text.size()) {
    throw BadRequest("member '" + name + "' must be a whole number, not " + v.text);
  }
  return out;
}

double probability(const Json& v, const std::string& name) {
  if (v.kind != Json::Kind::Number || v.number() < 0 || v.number() > 1) {
    throw BadRequest("member '" + name + "' must be a number from 0 to 1");
  }
  return v.number();
}

// An account name a client may open: it is also a path segment.
bool validAccountName(const std::string& n) {
  return !n.empty() && n.size() <= 64 &&
         n.find_first_not_of(
             "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
             "0123456789_.-") == std::string::npos;
}

template <typename Apply, typename Done>
class HostJob final : public GroupCommitLog::Job {
 public:
  HostJob(asio::io_context& io, Apply apply, Done done) : io_(io), apply_(std::move(apply)), done_(std::move(done)) {}
  void apply(lmdb::Txn& txn) override { answer_ = apply_(txn); }
  // Writer thread, after the group commit (err == nullptr: durable) or
  // after this job was rolled back alone.
  void done(std::exception_ptr err) noexcept override {
    bool failed = err != nullptr;
    Answer a = std::move(answer_);
    if (failed) {
      try {
        std::rethrow_exception(err);
      } catch (const std::exception& e) {
        a = jsonError(500, std::string("not applied: ") + e.what());
      } catch (...) {
        a = jsonError(500, "not applied");
      }
    }
    asio::post(io_, [d = std::move(done_), a = std::move(a), failed]() mutable { d(std::move(a), failed); });
  }

 private:
  asio::io_context& io_;
  Apply apply_;
  Done done_;
  Answer answer_;
};

}  // namespace

CrashAt parseCrashAt(const std::string& text) {
  auto colon = text.find(':');
  CrashAt c;
  c.call = text.substr(0, colon);
  std::string when = colon == std::string::npos ? "" : text.substr(colon + 1);
  if ((c.call != "try" && c.call != "confirm" && c.call != "cancel" && c.call != "any") ||
      (when != "before" && when != "after")) {
    throw std::invalid_argument("crash-at '" + text +
                                "' is not CALL:WHEN (CALL try, confirm, cancel or any; WHEN before or after)");
  }
  c.after = when == "after";
  return c;
}

std::string faultsJson(const Faults& f) {
  std::string crash = f.crashAt ? "\"" + f.crashAt->call + (f.crashAt->after ? ":after\"" : ":before\"") : "null";
  return fmt::format("{{\"slow_ms\":{},\"drop_answers\":{},\"fail_rate\":{},\"crash_at\":{}}}", f.slowMs, f.dropAnswers,
                     f.failRate, crash);
}

HostService::HostService(asio::io_context& io, HostBooks& books, GroupCommitLog& log, Faults faults, std::uint64_t seed)
    : io_(io), books_(books), log_(log), faults_(std::move(faults)), rng_(seed) {}

template <typename Apply, typename Done>
void HostService::write(Apply apply, Done done) {
  log_.submit(std::make_unique<HostJob<Apply, Done>>(io_, std::move(apply), std::move(done)));
}

bool HostService::chance(double p) {
  if (p <= 0) return false;
  return p >= 1 || std::uniform_real_distribution<double>(0, 1)(rng_) < p;
}

void HostService::handle(HttpRequest req, HttpReply reply) {
  const std::string& m = req.method;
  const std::string& p = req.path;
  // True if the method is `allowed`; otherwise answers 405.
  auto only = [&](const char* allowed) {
    if (m == allowed) return true;
    reply.send(jsonError(405, "method " + m + " is not allowed on " + p + " (use " + allowed + ")"));
    return false;
  };
  try {
    if (p == "/v1/health") {
      if (only("GET")) reply.send({200, "{\"status\":\"ok\"}"});
    } else if (p == "/v1/accounts" && m == "POST") {
      Json j = parseObject(req.body);
      std::string name = text(j, "name", 64);
      if (!validAccountName(name)) throw BadRequest("account name '" + name + "' is not 1-64 of A-Z a-z 0-9 _ . -");
      std::int64_t balance = integer(j, "balance");
      if (balance < 0 || balance > HostBooks::kMaxAmount) throw BadRequest("balance must be 0..10^15");
      write([&books = books_, name, balance](lmdb::Txn& txn) { return books.openAccount(txn, name, balance); },
            [reply](Answer a, bool) mutable { reply.send(std::move(a)); });  // must be durable before reply
    } else if (p == "/v1/accounts") {
      if (only("GET")) reply.send({200, accountsJson(books_.accounts())});
    } else if (p.starts_with("/v1/accounts/")) {
      std::string name = p.substr(std::string_view("/v1/accounts/").size());
      if (!only("GET")) return;
      auto a = books_.account(name);
      reply.send(a ? Answer{200, accountJson(*a)} : jsonError(404, "no such account " + name));
    } else if (p == "/v1/open") {
      if (only("GET")) reply.send({200, openJson(books_.openTries())});
    } else if (p == "/v1/keys") {
      if (only("GET")) reply.send({200, keysJson(books_.keyStates())});
    } else if (p == "/v1/stats") {
      if (!only("GET")) return;
      Stats st = books_.stats();
      st.commits = log_.stats().commits.load(std::memory_order_relaxed);
      reply.send({200, statsJson(st)});
    } else if (p == "/admin/faults") {
      if (m == "POST") {
        reply.send(adminFaults(req.body));
      } else if (only("GET")) {
        reply.send({200, faultsJson(faults_)});
      }
    } else {
      // /v1/<op>/<call>
      for (const char* op : {"debit", "credit"}) {
        for (const char* call : {"try", "confirm", "cancel"}) {
          if (p != std::string("/v1/") + op + "/" + call) continue;
          if (only("POST")) contractCall(op, call, req.body, reply);
          return;
        }
      }
      reply.send(jsonError(404, "no such path " + p));
    }
  } catch (const BadRequest& e) {
    reply.send(jsonError(400, e.what()));
  } catch (const JsonError& e) {
    reply.send(jsonError(400, e.what()));
  }
}

void HostService::contractCall(const std::string& op, const std::string& call, const std::string& body,
                               HttpReply reply) {
  Json j = parseObject(body);
  TryCall t;
  t.key = text(j, "key", HostBooks::kMaxName);
  t.xid = text(j, "xid", HostBooks::kMaxName);
  std::int64_t index = integer(j, "index");
  if (index < 0) throw BadRequest("member 'index' must be 0 or more");
  t.index = std::uint64_t(index);
  if (t.key != t.xid + "/" + std::to_string(t.index)) {
    throw BadRequest("key '" + t.key + "' is not '<xid>/<index>' ('" + t.xid + "/" + std::to_string(t.index) + "')");
  }
  if (call == "try") {
    t.kind = op == "debit" ? OpKind::Debit : OpKind::Credit;
    t.account = text(j, "account", HostBooks::kMaxName);
    t.amount = integer(j, "amount");
  }

  auto crashes = [this, call](bool after) {
    const auto& c = faults_.crashAt;
    return c && c->after == after && (c->call == "any" || c->call == call);
  };
  if (crashes(false)) {
    KEEL_LOG_WARN("crash-at {}:before: exiting with status {} before applying {} {}", call, kCrashExitStatus, call,
                  t.key);
    std::_Exit(kCrashExitStatus);
  }
  if (chance(faults_.failRate))
    return reply.send(jsonError(500, "injected failure"), std::chrono::milliseconds(faults_.slowMs));

  write(
      [&books = books_, call, t](lmdb::Txn& txn) {
        if (call == "try") return books.tryOp(txn, t);
        return call == "confirm" ? books.confirm(txn, t.key) : books.cancel(txn, t.key);
      },
      // Runs once the group commit returned: the call's effect is durable.
      [this, reply, call, key = t.key, crashes](Answer a, bool failed) mutable {
        if (!failed && crashes(true)) {
          KEEL_LOG_WARN("crash-at {}:after: {} {} is durable; exiting with status {} before answering", call, call, key,
                        kCrashExitStatus);
          std::_Exit(kCrashExitStatus);
        }
        if (!failed && chance(faults_.dropAnswers)) return reply.drop();
        reply.send(std::move(a), std::chrono::milliseconds(faults_.slowMs));
      });
}

Answer HostService::adminFaults(const std::string& body) {
  Json j = parseObject(body);
  Faults f = faults_;
  for (const auto& [name, v] : j.members) {
    if (name == "slow_ms") {
      f.slowMs = integer(j, name);
      if (f.slowMs < 0 || f.slowMs > 600000) throw BadRequest("member 'slow_ms' must be 0..600000");
    } else if (name == "drop_answers") {
      f.dropAnswers = probability(v, name);
    } else if (name == "fail_rate") {
      f.failRate = probability(v, name);
    } else if (name == "crash_at") {
      if (v.kind == Json::Kind::Null || (v.kind == Json::Kind::String && v.text.empty())) {
        f.crashAt.reset();
      } else if (v.kind != Json::Kind::String) {
        throw BadRequest("member 'crash_at' must be a string CALL:WHEN or null");
      } else {
        try {
          f.crashAt = parseCrashAt(v.text);
        } catch (const std::invalid_argument& e) {
          throw BadRequest(e.what());
        }
      }
    } else {
      throw BadRequest("unknown member '" + name + "' (slow_ms, drop_answers, fail_rate, crash_at)");
    }
  }
  faults_ = f;
  KEEL_LOG_INFO("faults now {}", faultsJson(faults_));
  return {200, faultsJson(faults_)};
}

}  // namespace keel::host
