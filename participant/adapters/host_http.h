#pragma once
// HostHttp: the host adapter's calls to a host system (docs/hosts.md, "The
// calls"): POST of one JSON object, the answer read into a HostAnswer that
// says which row of the contract's tables it is. It never throws for what a
// host answers: a fault (no answer, a 5xx, a timeout) and a breach of the
// contract (a redirect, an unknown status, bad JSON, an answer too long)
// are answers too, so the caller decides per call kind what each means.
//
// Thread: the agent's KJ event loop (kj-http, connections kept open and
// reused between calls).

#include <kj/async-io.h>
#include <kj/compat/http.h>

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

#include "common/config.h"

namespace keel {

struct HostAnswer {
  enum class Kind : std::uint8_t {
    Tried,      // try: 200 tried (ref)
    Refused,    // try: 422 refused (reason)
    Confirmed,  // confirm: 200; cancel: 409 confirmed
    Cancelled,  // cancel: 200; try or confirm: 409 cancelled
    Unknown,    // confirm: 404 unknown
    Fault,      // no answer, reset, timeout, 5xx, 429: retry
    Breach,     // an answer outside the contract (reason says which)
  };
  Kind kind = Kind::Fault;
  std::string ref;     // Tried: the host's reference ("" if it gave none)
  std::string reason;  // Refused: the host's; Fault / Breach: what happened
  // A Fault with an HTTP answer (5xx, 429): the host is up but failing this
  // call; without one (refused, reset, timeout) it may be down.
  bool answered = true;
};
const char* hostAnswerName(HostAnswer::Kind k);

enum class HostCall : std::uint8_t { Try, Confirm, Cancel };
const char* hostCallName(HostCall c);

// What an answer of `status` with body `text` to a `call` is, by the
// contract's tables; never throws (a fault or a breach is an answer too).
// Everything in it comes from the network: read defensively
// (tests/fuzz/host_answer_fuzz.cc).
HostAnswer readHostAnswer(HostCall call, unsigned status, std::string_view text);

class HostHttp {
 public:
  HostHttp(kj::AsyncIoProvider& io, const HostConfig& cfg);
  ~HostHttp();
  // POST `body` to cfg.url + `path`, within cfg.callTimeoutMs.
  kj::Promise<HostAnswer> post(HostCall call, const std::string& path, std::string body);
  const std::string& url() const { return url_; }

 private:
  // A place among the cfg.maxConnections calls in flight; given back when
  // destroyed (also when the call it waited for was dropped).
  class Slot {
   public:
    explicit Slot(HostHttp& h) : h_(h) {}
    ~Slot() { h_.release(); }

   private:
    HostHttp& h_;
  };
  kj::Promise<kj::Own<Slot>> slot();
  void release();

  kj::AsyncIoProvider& io_;
  const HostConfig& cfg_;
  std::string url_;  // without a trailing '/'
  kj::HttpHeaderTable table_;
  kj::Own<kj::HttpClient> client_;
  std::uint32_t inFlight_ = 0;
  std::deque<kj::Own<kj::PromiseFulfiller<kj::Own<Slot>>>> waiting_;
};

}  // namespace keel
