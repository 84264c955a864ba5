#include "participant/adapters/host_http.h"

#include <cstdlib>

#include "common/fault.h"
#include "common/strict_json.h"

namespace keel {

namespace {

// Text from the host as it may appear in a reason, a log line or a record:
// at most `max` bytes, control characters (a forged log line) and, for text
// that is not JSON-checked, bytes outside printable ASCII replaced.
std::string printable(std::string_view s, std::size_t max, bool asciiOnly) {
  // Never cut a UTF-8 sequence in two: back up to the start of the
  // character at the cut.
  if (s.size() > max) {
    while (max > 0 && (static_cast<unsigned char>(s[max]) & 0xC0) == 0x80) --max;
  }
  std::string out;
  for (char c : s.substr(0, max)) {
    auto u = static_cast<unsigned char>(c);
    bool bad = u < 0x20 || u == 0x7f || (asciiOnly && u >= 0x80);
    out.push_back(bad ? ' ' : c);
  }
  return out;
}

}  // namespace

const char* hostAnswerName(HostAnswer::Kind k) {
  switch (k) {
    case HostAnswer::Kind::Tried: return "tried";
    case HostAnswer::Kind::Refused: return "refused";
    case HostAnswer::Kind::Confirmed: return "confirmed";
    case HostAnswer::Kind::Cancelled: return "cancelled";
    case HostAnswer::Kind::Unknown: return "unknown";
    case HostAnswer::Kind::Fault: return "fault";
    case HostAnswer::Kind::Breach: return "breach";
  }
  return "?";
}

const char* hostCallName(HostCall c) {
  switch (c) {
    case HostCall::Try: return "try";
    case HostCall::Confirm: return "confirm";
    case HostCall::Cancel: return "cancel";
  }
  return "?";
}

HostHttp::HostHttp(kj::AsyncIoProvider& io, const HostConfig& cfg)
    : io_(io), cfg_(cfg), url_(cfg.url) {
  if (!url_.empty() && url_.back() == '/') url_.pop_back();
  kj::HttpClientSettings settings;
  settings.idleTimeout = 30 * kj::SECONDS;
  client_ = kj::newHttpClient(io_.getTimer(), table_, io_.getNetwork(), nullptr, settings);
}

HostHttp::~HostHttp() = default;

kj::Promise<kj::Own<HostHttp::Slot>> HostHttp::slot() {
  if (inFlight_ < cfg_.maxConnections) {
    ++inFlight_;
    return kj::heap<Slot>(*this);
  }
  auto paf = kj::newPromiseAndFulfiller<kj::Own<Slot>>();
  waiting_.push_back(kj::mv(paf.fulfiller));
  return kj::mv(paf.promise);
}

void HostHttp::release() {
  // The place goes to the first waiter still waiting (one whose call timed
  // out meanwhile is skipped); else it is free.
  while (!waiting_.empty()) {
    auto f = kj::mv(waiting_.front());
    waiting_.pop_front();
    if (f->isWaiting()) {
      f->fulfill(kj::heap<Slot>(*this));
      return;
    }
  }
  --inFlight_;
}

kj::Promise<HostAnswer> HostHttp::post(HostCall call, const std::string& path, std::string body) {
  std::string target = url_ + path;
  std::uint64_t limit = cfg_.maxBodyBytes;
  auto work = slot().then([this, call, limit, target = kj::mv(target), body = kj::mv(body)](kj::Own<Slot> held) mutable {
    kj::HttpHeaders headers(table_);
    headers.set(kj::HttpHeaderId::CONTENT_TYPE, "application/json");
    auto req = client_->request(kj::HttpMethod::POST, kj::StringPtr(target.c_str()), headers, body.size());
    // A kj::String keeps its bytes where they are when moved (a short
    // std::string would not): the write reads them until it completes.
    auto bytes = kj::heapString(body.data(), body.size());
    auto sent = req.body->write(bytes.begin(), bytes.size()).attach(kj::mv(req.body), kj::mv(bytes));
    return sent.then([resp = kj::mv(req.response)]() mutable { return kj::mv(resp); })
        .then([call, limit](kj::HttpClient::Response r) {
          unsigned status = r.statusCode;
          auto tooLong = [status, limit]() {
            return HostAnswer{HostAnswer::Kind::Breach, "",
                              "answer of status " + std::to_string(status) + " is longer than max_body_bytes (" +
                                  std::to_string(limit) + ")"};
          };
          // A declared length over the limit is refused before reading it.
          KJ_IF_MAYBE(len, r.headers->get(kj::HttpHeaderId::CONTENT_LENGTH)) {
            char* end = nullptr;
            unsigned long long n = std::strtoull(len->cStr(), &end, 10);
            if (end != nullptr && *end == '\0' && n > limit) return kj::Promise<HostAnswer>(tooLong());
          }
          // One byte over the limit tells "too long" from "exactly the limit";
          // kj stops reading there (and says so by an exception).
          auto body = r.body->readAllText(limit + 1);
          return body.attach(kj::mv(r.body))
              .then(
                  [call, status, limit, tooLong](kj::String text) {
                    if (text.size() > limit) return tooLong();
                    return readHostAnswer(call, status, std::string_view(text.cStr(), text.size()));
                  },
                  [tooLong](kj::Exception&& e) -> HostAnswer {
                    if (e.getDescription().startsWith("Reached limit")) return tooLong();
                    kj::throwFatalException(kj::mv(e));
                  });
        })
        .attach(kj::mv(held));
  });
  return io_.getTimer()
      .timeoutAfter(cfg_.callTimeoutMs * kj::MILLISECONDS, kj::mv(work))
      .catch_([this](kj::Exception&& e) {
        std::string why = e.getType() == kj::Exception::Type::OVERLOADED
                              ? "no answer within call_timeout_ms (" + std::to_string(cfg_.callTimeoutMs) + ")"
                              : printable(describeFault(e), 512, true);  // may quote the host's bytes
        return HostAnswer{HostAnswer::Kind::Fault, "", why, false};
      });
}

HostAnswer readHostAnswer(HostCall call, unsigned status, std::string_view text) {
  using K = HostAnswer::Kind;
  auto statusText = "status " + std::to_string(status);
  if (status >= 500 || status == 429) {
    std::string snippet = printable(text, 200, true);
    return HostAnswer{K::Fault, "", statusText + (snippet.empty() ? "" : ": " + snippet)};
  }
  Json body;
  try {
    body = JsonReader::parse(text);
    if (!body.isObject()) throw JsonError("not a JSON object");
  } catch (const JsonError& e) {
    return HostAnswer{K::Breach, "", statusText + " with a body that is not one JSON object (" + e.what() + ")"};
  }
  std::string result;
  if (body.has("result") && body["result"].kind == Json::Kind::String) result = body["result"].str();
  auto breach = [&]() {
    return HostAnswer{K::Breach, "",
                      std::string(hostCallName(call)) + " answered " + statusText +
                          (result.empty() ? " without a \"result\"" : " \"" + printable(result, 64, false) + "\"") +
                          ", not in the contract (docs/hosts.md)"};
  };
  switch (call) {
    case HostCall::Try:
      if (status == 200 && result == "tried") {
        std::string ref;
        if (body.has("ref")) {
          if (body["ref"].kind != Json::Kind::String || body["ref"].str().size() > 256) {
            return HostAnswer{K::Breach, "", "try answered a \"ref\" that is not a string of at most 256 bytes"};
          }
          ref = printable(body["ref"].str(), 256, false);
        }
        return HostAnswer{K::Tried, ref, ""};
      }
      if (status == 422 && result == "refused") {
        std::string reason = "refused by the host";
        if (body.has("reason") && body["reason"].kind == Json::Kind::String) {
          reason = printable(body["reason"].str(), 512, false);  // UTF-8 checked by the JSON reader
        }
        return HostAnswer{K::Refused, "", reason};
      }
      if (status == 409 && result == "cancelled") return HostAnswer{K::Cancelled, "", "cancelled before the try arrived"};
      return breach();
    case HostCall::Confirm:
      if (status == 200 && result == "confirmed") return HostAnswer{K::Confirmed, "", ""};
      if (status == 409 && result == "cancelled") return HostAnswer{K::Cancelled, "", "the host had cancelled it"};
      if (status == 404 && result == "unknown") return HostAnswer{K::Unknown, "", "the host never saw the try"};
      return breach();
    case HostCall::Cancel:
      if (status == 200 && result == "cancelled") return HostAnswer{K::Cancelled, "", ""};
      if (status == 409 && result == "confirmed") return HostAnswer{K::Confirmed, "", "the host had confirmed it"};
      return breach();
  }
  return breach();
}

}  // namespace keel
