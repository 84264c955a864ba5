#include "common/etcd/etcd_client.h"

#include "schemas/etcd.grpc.pb.h"

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <kj/exception.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <unordered_set>
#include <utility>

namespace keel::etcd {

namespace pb = ::etcdserverpb;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ============================================================ plain values

std::string prefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    auto last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();  // "a\xff" ends where "a" does: at "b"
  }
  return std::string(1, '\0');  // etcd's "to the end of the keyspace"
}

Compare Compare::absent(std::string key) {
  Compare c;
  c.key = std::move(key);
  c.target = Target::Create;
  c.result = Result::Equal;
  c.number = 0;
  return c;
}

Compare Compare::valueIs(std::string key, std::string value) {
  Compare c;
  c.key = std::move(key);
  c.target = Target::Value;
  c.result = Result::Equal;
  c.value = std::move(value);
  return c;
}

Compare Compare::modRevisionIs(std::string key, std::int64_t rev) {
  Compare c;
  c.key = std::move(key);
  c.target = Target::Mod;
  c.result = Result::Equal;
  c.number = rev;
  return c;
}

Op Op::get(std::string key) {
  Op o;
  o.kind = Kind::Range;
  o.key = std::move(key);
  return o;
}

Op Op::put(std::string key, std::string value, std::int64_t lease) {
  Op o;
  o.kind = Kind::Put;
  o.key = std::move(key);
  o.value = std::move(value);
  o.lease = lease;
  return o;
}

Op Op::del(std::string key, std::string rangeEnd) {
  Op o;
  o.kind = Kind::Delete;
  o.key = std::move(key);
  o.rangeEnd = std::move(rangeEnd);
  return o;
}

// ============================================================ errors

namespace {

const char* codeName(int code) {
  static const char* const kNames[] = {
      "OK",        "CANCELLED",     "UNKNOWN",      "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
      "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",     "UNAVAILABLE",        "DATA_LOSS",         "UNAUTHENTICATED"};
  return code >= 0 && code < int(std::size(kNames)) ? kNames[code] : "UNKNOWN";
}

// The server refused the request before applying anything.
bool refusedBeforeApplying(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::UNIMPLEMENTED:
      return true;
    default:
      return false;
  }
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// What went wrong, in words: etcd's own message where it sent one, a plain
// name for the usual transport failures, gRPC's text only as a last resort.
std::string describeStatus(const grpc::Status& st, milliseconds timeout) {
  const std::string& m = st.error_message();
  if (m.rfind("etcdserver: ", 0) == 0 || m.rfind("mvcc: ", 0) == 0) return m;
  switch (st.error_code()) {
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "deadline exceeded after " + std::to_string(timeout.count()) + " ms";
    case grpc::StatusCode::CANCELLED:
      return "cancelled (the client is shutting down)";
    case grpc::StatusCode::UNAVAILABLE:
      if (contains(m, "Connection refused")) return "unavailable: connection refused";
      if (contains(m, "Connection reset")) return "unavailable: connection reset";
      if (contains(m, "Socket closed") || contains(m, "Broken pipe") || contains(m, "GOAWAY")) {
        return "unavailable: connection closed";
      }
      return m.empty() ? "unavailable" : "unavailable: " + m;
    default:
      return m.empty() ? std::string("failed") : m;
  }
}

const char* const kTagOpen = " [gRPC ";
const char* const kTagUnknown = "; outcome unknown]";

EtcdError makeError(const std::string& endpoint, const char* method, const grpc::Status& st, bool write,
                    milliseconds timeout) {
  bool unknown = write && !refusedBeforeApplying(st.error_code());
  int code = int(st.error_code());
  std::string what = "etcd " + endpoint + ": " + method + ": " + describeStatus(st, timeout) + kTagOpen +
                     codeName(code) + (unknown ? kTagUnknown : "]");
  return EtcdError(what, code, unknown);
}

// An answer that is well-formed gRPC but not what etcd would send.
EtcdError badAnswer(const std::string& endpoint, const char* method, const std::string& why) {
  return EtcdError("etcd " + endpoint + ": " + method + ": " + why + kTagOpen + "INTERNAL]",
                   int(grpc::StatusCode::INTERNAL), false);
}

kj::Exception toKj(const EtcdError& e) {
  return kj::Exception(kj::Exception::Type::FAILED, "etcd", 0, kj::heapString(e.what()));
}

kj::Exception toKj(std::exception_ptr err) {
  try {
    std::rethrow_exception(err);
  } catch (const EtcdError& e) {
    return toKj(e);
  } catch (const std::exception& e) {
    return kj::Exception(kj::Exception::Type::FAILED, "etcd", 0, kj::heapString(e.what()));
  } catch (...) {
    return kj::Exception(kj::Exception::Type::FAILED, "etcd", 0, kj::heapString("unknown exception"));
  }
}

}  // namespace

std::optional<EtcdError> etcdErrorOf(const kj::Exception& e) {
  std::string d = e.getDescription().cStr();
  if (d.rfind("etcd ", 0) != 0 || d.empty() || d.back() != ']') return std::nullopt;
  auto open = d.rfind(kTagOpen);
  if (open == std::string::npos) return std::nullopt;
  std::string tag = d.substr(open + std::strlen(kTagOpen));
  tag.pop_back();  // ']'
  bool unknown = false;
  auto semi = tag.find(';');
  if (semi != std::string::npos) {
    unknown = tag.substr(semi) == std::string(kTagUnknown).substr(0, std::strlen(kTagUnknown) - 1);
    tag.erase(semi);
  }
  for (int code = 0; code <= 16; ++code) {
    if (tag == codeName(code)) return EtcdError(d, code, unknown);
  }
  return std::nullopt;
}

// ============================================================ endpoints

namespace {

void checkEndpoint(const std::string& ep) {
  auto colon = ep.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == ep.size()) {
    throw std::invalid_argument("etcd endpoint '" + ep + "' is not host:port");
  }
  std::string host = ep.substr(0, colon), port = ep.substr(colon + 1);
  if (!std::all_of(port.begin(), port.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }) ||
      port.size() > 5 || std::stoul(port) == 0 || std::stoul(port) > 65535) {
    throw std::invalid_argument("etcd endpoint '" + ep + "': bad port '" + port + "'");
  }
  bool bracketed = host.size() > 2 && host.front() == '[' && host.back() == ']';
  if (!bracketed && host.find_first_of(":/ []") != std::string::npos) {
    throw std::invalid_argument("etcd endpoint '" + ep + "': bad host '" + host +
                                "' (host:port, no scheme; IPv6 as [addr]:port)");
  }
}

}  // namespace

// The channels and stubs, one per endpoint, and which endpoint calls go to.
// Shared by the client and its keepers and watchers, which may outlive it.
struct Endpoints {
  Options opts;
  std::vector<std::string> names;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<pb::KV::Stub>> kv;
  std::vector<std::unique_ptr<pb::Lease::Stub>> lease;
  std::vector<std::unique_ptr<pb::Watch::Stub>> watch;
  std::atomic<std::size_t> current{0};

  Endpoints(std::vector<std::string> eps, Options o) : opts(o), names(std::move(eps)) {
    if (names.empty()) throw std::invalid_argument("etcd::Client: no endpoints");
    for (auto& ep : names) checkEndpoint(ep);
    for (auto& ep : names) {
      grpc::ChannelArguments args;
      // A restarted member is reachable again within a second.
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
      // HTTP/2 pings while a call or stream is open, so that a stream to a
      // member that stopped answering (SIGSTOP, a dead host) breaks. etcd
      // refuses pings closer than 5 s (its keepalive enforcement policy).
      args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
      args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 3000);
      // Its own connections: one client's failures never wedge another's.
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      auto ch = grpc::CreateCustomChannel(ep, grpc::InsecureChannelCredentials(), args);
      kv.push_back(pb::KV::NewStub(ch));
      lease.push_back(pb::Lease::NewStub(ch));
      watch.push_back(pb::Watch::NewStub(ch));
      channels.push_back(std::move(ch));
    }
  }

  std::size_t pick() const { return current.load(std::memory_order_relaxed); }

  // A call on endpoint `idx` met UNAVAILABLE or DEADLINE_EXCEEDED: later
  // calls go to the next endpoint (once, however many calls failed there).
  void failedOn(std::size_t idx) {
    std::size_t expected = idx;
    current.compare_exchange_strong(expected, (idx + 1) % names.size());
  }

  EtcdError error(std::size_t idx, const char* method, const grpc::Status& st, bool write) {
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      failedOn(idx);
    }
    return makeError(names[idx], method, st, write, opts.callTimeout);
  }
};

// ============================================================ messages

namespace {

void fillCompare(pb::Compare& out, const Compare& c) {
  out.set_key(c.key);
  switch (c.result) {
    case Compare::Result::Equal: out.set_result(pb::Compare::EQUAL); break;
    case Compare::Result::Greater: out.set_result(pb::Compare::GREATER); break;
    case Compare::Result::Less: out.set_result(pb::Compare::LESS); break;
    case Compare::Result::NotEqual: out.set_result(pb::Compare::NOT_EQUAL); break;
  }
  switch (c.target) {
    case Compare::Target::Version:
      out.set_target(pb::Compare::VERSION);
      out.set_version(c.number);
      break;
    case Compare::Target::Create:
      out.set_target(pb::Compare::CREATE);
      out.set_create_revision(c.number);
      break;
    case Compare::Target::Mod:
      out.set_target(pb::Compare::MOD);
      out.set_mod_revision(c.number);
      break;
    case Compare::Target::Value:
      out.set_target(pb::Compare::VALUE);
      out.set_value(c.value);
      break;
    case Compare::Target::Lease:
      out.set_target(pb::Compare::LEASE);
      out.set_lease(c.number);
      break;
  }
}

pb::RangeRequest rangeRequest(const std::string& key, const std::string& rangeEnd, std::int64_t limit) {
  pb::RangeRequest r;
  r.set_key(key);
  r.set_range_end(rangeEnd);
  r.set_limit(limit);
  return r;
}

pb::PutRequest putRequest(const std::string& key, const std::string& value, std::int64_t lease) {
  pb::PutRequest r;
  r.set_key(key);
  r.set_value(value);
  r.set_lease(lease);
  return r;
}

pb::DeleteRangeRequest deleteRequest(const std::string& key, const std::string& rangeEnd) {
  pb::DeleteRangeRequest r;
  r.set_key(key);
  r.set_range_end(rangeEnd);
  return r;
}

void fillOp(pb::RequestOp& out, const Op& op) {
  switch (op.kind) {
    case Op::Kind::Range: *out.mutable_request_range() = rangeRequest(op.key, op.rangeEnd, op.limit); break;
    case Op::Kind::Put: *out.mutable_request_put() = putRequest(op.key, op.value, op.lease); break;
    case Op::Kind::Delete: *out.mutable_request_delete_range() = deleteRequest(op.key, op.rangeEnd); break;
  }
}

pb::TxnRequest txnRequest(const std::vector<Compare>& compares, const std::vector<Op>& success,
                          const std::vector<Op>& failure) {
  pb::TxnRequest r;
  for (auto& c : compares) fillCompare(*r.add_compare(), c);
  for (auto& op : success) fillOp(*r.add_success(), op);
  for (auto& op : failure) fillOp(*r.add_failure(), op);
  return r;
}

KeyValue toKeyValue(const pb::KeyValue& kv) {
  KeyValue out;
  out.key = kv.key();
  out.value = kv.value();
  out.createRevision = kv.create_revision();
  out.modRevision = kv.mod_revision();
  out.version = kv.version();
  out.lease = kv.lease();
  return out;
}

RangeResult toRangeResult(const pb::RangeResponse& r, std::int64_t revisionIfUnset = 0) {
  RangeResult out;
  out.kvs.reserve(std::size_t(r.kvs_size()));
  for (auto& kv : r.kvs()) out.kvs.push_back(toKeyValue(kv));
  out.more = r.more();
  out.count = r.count();
  out.revision = r.has_header() && r.header().revision() != 0 ? r.header().revision() : revisionIfUnset;
  return out;
}

TxnResult toTxnResult(const pb::TxnResponse& r) {
  TxnResult out;
  out.succeeded = r.succeeded();
  out.revision = r.header().revision();
  out.responses.reserve(std::size_t(r.responses_size()));
  for (auto& op : r.responses()) {
    RangeResult one;
    switch (op.response_case()) {
      case pb::ResponseOp::kResponseRange:
        one = toRangeResult(op.response_range(), out.revision);
        break;
      case pb::ResponseOp::kResponseDeleteRange:
        one.count = op.response_delete_range().deleted();
        one.revision = out.revision;
        break;
      default:  // Put (and nested txns, which this client never sends)
        one.revision = out.revision;
        break;
    }
    out.responses.push_back(std::move(one));
  }
  return out;
}

Lease toLease(const pb::LeaseGrantResponse& r, const std::string& endpoint) {
  if (!r.error().empty()) throw badAnswer(endpoint, "LeaseGrant", "etcd refused the lease: " + r.error());
  return Lease{r.id(), r.ttl()};
}

pb::LeaseGrantRequest grantRequest(std::int64_t ttlSeconds) {
  pb::LeaseGrantRequest r;
  r.set_ttl(ttlSeconds);
  return r;
}

pb::LeaseRevokeRequest revokeRequest(std::int64_t leaseId) {
  pb::LeaseRevokeRequest r;
  r.set_id(leaseId);
  return r;
}

std::chrono::system_clock::time_point deadlineIn(milliseconds d) { return std::chrono::system_clock::now() + d; }

}  // namespace

// ============================================================ unary calls

namespace {

// One asynchronous unary call: the completion queue's tag. Owned by the
// completion-queue thread once started; deleted after complete().
class PendingCall {
 public:
  virtual ~PendingCall() = default;
  virtual void complete() noexcept = 0;
  grpc::ClientContext ctx;
  grpc::Status status;
};

template <typename Resp, typename T>
class UnaryCall final : public PendingCall {
 public:
  using Convert = std::function<T(const Resp&, const std::string& endpoint)>;
  UnaryCall(std::shared_ptr<Endpoints> eps, std::size_t idx, const char* method, bool write, Convert convert,
            kj::Own<kj::CrossThreadPromiseFulfiller<T>> fulfiller)
      : eps_(std::move(eps)), idx_(idx), method_(method), write_(write), convert_(std::move(convert)),
        fulfiller_(kj::mv(fulfiller)) {}
  ~UnaryCall() noexcept override {}  // kj::Own's destructor is noexcept(false)

  Resp resp;
  std::unique_ptr<grpc::ClientAsyncResponseReader<Resp>> reader;

  void complete() noexcept override {
    try {
      if (!status.ok()) throw eps_->error(idx_, method_, status, write_);
      if constexpr (std::is_void_v<T>) {
        convert_(resp, eps_->names[idx_]);
        fulfiller_->fulfill();
      } else {
        fulfiller_->fulfill(convert_(resp, eps_->names[idx_]));
      }
    } catch (...) {
      fulfiller_->reject(toKj(std::current_exception()));
    }
  }

 private:
  std::shared_ptr<Endpoints> eps_;
  std::size_t idx_;
  const char* method_;
  bool write_;
  Convert convert_;
  kj::Own<kj::CrossThreadPromiseFulfiller<T>> fulfiller_;
};

}  // namespace

// ============================================================ loop inbox

namespace {

// Runs functions posted from any thread on the KJ loop of the thread that
// made it, in order. A detached promise on that loop waits for a
// cross-thread fulfiller, runs what has been posted, and waits again.
// close() (on the owner's thread) makes sure nothing more runs, even what
// was posted before: a closed inbox's owner may be gone.
class LoopInbox {
 public:
  LoopInbox() : st_(std::make_shared<State>()) {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    st_->wake = kj::mv(paf.fulfiller);
    drain(st_, kj::mv(paf.promise)).detach([](kj::Exception&&) {});
  }
  ~LoopInbox() { close(); }
  LoopInbox(const LoopInbox&) = delete;
  LoopInbox& operator=(const LoopInbox&) = delete;

  void post(std::function<void()> fn) const {
    std::lock_guard<std::mutex> lk(st_->mu);
    if (st_->closed) return;
    st_->items.push_back(std::move(fn));
    if (st_->wake) {
      st_->wake->fulfill();
      st_->wake = nullptr;
    }
  }

  void close() {
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> wake;
    {
      std::lock_guard<std::mutex> lk(st_->mu);
      if (st_->closed) return;
      st_->closed = true;
      st_->items.clear();
      wake = kj::mv(st_->wake);
    }
    if (wake) wake->fulfill();  // the waiting turn sees `closed` and ends
  }

 private:
  struct State {
    std::mutex mu;
    std::vector<std::function<void()>> items;
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> wake;  // null while a turn is running
    bool closed = false;
  };

  static kj::Promise<void> drain(std::shared_ptr<State> st, kj::Promise<void> woken) {
    return woken.then([st]() -> kj::Promise<void> {
      std::vector<std::function<void()>> items;
      auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
      {
        std::lock_guard<std::mutex> lk(st->mu);
        if (st->closed) return kj::READY_NOW;
        items.swap(st->items);
        st->wake = kj::mv(paf.fulfiller);
      }
      for (auto& fn : items) {
        {
          std::lock_guard<std::mutex> lk(st->mu);
          if (st->closed) return kj::READY_NOW;  // a callback destroyed the owner
        }
        fn();
      }
      return drain(st, kj::mv(paf.promise));
    });
  }

  std::shared_ptr<State> st_;
};

}  // namespace

// ============================================================ streams

namespace {

// A bidirectional stream kept open on one endpoint after another, driven by
// a thread and a completion queue of its own. One stream (a "session") at a
// time: a broken or abandoned one is cancelled and drained completely
// before the next is opened on the next endpoint. Subclasses say what to
// send when a stream opens, what a response means and when to give up;
// every hook runs on the worker thread.
template <typename Req, typename Resp>
class StreamWorker {
 public:
  StreamWorker(const StreamWorker&) = delete;
  StreamWorker& operator=(const StreamWorker&) = delete;

 protected:
  explicit StreamWorker(std::shared_ptr<Endpoints> eps) : eps_(std::move(eps)) {}
  virtual ~StreamWorker() = default;  // subclasses call stopAndJoin() first

  void startThread() {
    thread_ = std::thread([this] { run(); });
  }

  // From the owner's thread: stop at once (the worker wakes up, cancels
  // its stream and drains its queue) and join.
  void stopAndJoin() {
    stop_.store(true);
    {
      std::lock_guard<std::mutex> lk(cqMu_);
      if (cqOpen_) wake_.Set(&cq_, std::chrono::system_clock::now(), &wakeTag_);
    }
    if (thread_.joinable()) thread_.join();
  }

  virtual std::unique_ptr<grpc::ClientAsyncReaderWriter<Req, Resp>> open(std::size_t idx, grpc::ClientContext* ctx,
                                                                         grpc::CompletionQueue* cq) = 0;
  virtual void onOpen(Clock::time_point now) = 0;
  virtual void onResponse(const Resp& resp, Clock::time_point now) = 0;
  virtual void onTick(Clock::time_point now) = 0;
  virtual Clock::time_point nextTick(Clock::time_point now) = 0;
  virtual void onSessionEnd() {}

  // Queue a request on the open stream (dropped if none is open).
  void send(Req r) {
    if (!s_ || !s_->started || s_->broken) return;
    s_->outbox.push_back(std::move(r));
    pump();
  }
  // The stream did something useful: the next reconnect is immediate again.
  void healthy() { backoff_ = kFirstBackoff; }
  // Cancel the stream; open one on the next endpoint.
  void abandon() {
    if (s_) breakSession(true);
  }
  // Stop for good (lease lost, watch failed): the thread ends by itself.
  void finish() { finishing_ = true; }

  // A stream is open and not being torn down.
  bool sessionOpen() const { return s_ && !s_->broken; }
  bool sessionStarted() const { return s_ && s_->started && !s_->broken; }
  Clock::time_point sessionOpenedAt() const { return s_ ? s_->openedAt : Clock::time_point{}; }
  std::size_t sessionEndpoint() const { return s_ ? s_->endpoint : eps_->pick(); }

  std::shared_ptr<Endpoints> eps_;

 private:
  static constexpr milliseconds kFirstBackoff{50};
  static constexpr milliseconds kMaxBackoff{1000};

  struct Session {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientAsyncReaderWriter<Req, Resp>> rw;
    Resp in;
    Req out;
    grpc::Status status;
    std::deque<Req> outbox;
    std::size_t endpoint = 0;
    Clock::time_point openedAt;
    int pending = 0;  // operations whose tags are still to come back
    bool started = false, writing = false, broken = false, rotate = false;
  };

  void run() {
    for (;;) {
      auto now = Clock::now();
      if (stop_.load()) finishing_ = true;
      if (!finishing_) {
        if (!s_ && now >= reconnectAt_) openSession(now);
        onTick(now);
      }
      if (finishing_ && s_ && !s_->broken) breakSession(false);
      if (finishing_ && !s_) break;
      auto deadline = now + milliseconds(500);
      if (!finishing_) {
        deadline = std::min(deadline, nextTick(now));
        if (!s_) deadline = std::min(deadline, reconnectAt_);
      }
      deadline = std::max(deadline, now + milliseconds(1));
      void* tag = nullptr;
      bool ok = false;
      auto r = cq_.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + (deadline - now));
      if (r == grpc::CompletionQueue::GOT_EVENT) handle(tag, ok);
    }
    {
      std::lock_guard<std::mutex> lk(cqMu_);
      cqOpen_ = false;
    }
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  void openSession(Clock::time_point now) {
    s_ = std::make_unique<Session>();
    s_->endpoint = eps_->pick();
    s_->openedAt = now;
    s_->rw = open(s_->endpoint, &s_->ctx, &cq_);
    s_->rw->StartCall(&startTag_);
    s_->pending = 1;
  }

  void handle(void* tag, bool ok) {
    if (tag == &wakeTag_) return;
    if (!s_) return;  // cannot happen: a session is drained before it goes
    Session& s = *s_;
    --s.pending;
    auto now = Clock::now();
    if (tag == &startTag_) {
      if (ok && !s.broken) {
        s.started = true;
        s.rw->Read(&s.in, &readTag_);
        ++s.pending;
        onOpen(now);
      } else if (!s.broken) {
        breakSession(true);
      }
    } else if (tag == &readTag_) {
      if (ok && !s.broken) {
        onResponse(s.in, now);
        if (s_ && !s.broken && !finishing_) {
          s.rw->Read(&s.in, &readTag_);
          ++s.pending;
        }
      } else if (!s.broken) {
        breakSession(true);
      }
    } else if (tag == &writeTag_) {
      s.writing = false;
      if (ok) {
        pump();
      } else if (!s.broken) {
        breakSession(true);
      }
    }
    // (finishTag_: nothing to do but count it)
    if (s_ && s_->broken && s_->pending == 0) endSession(now);
  }

  void pump() {
    Session& s = *s_;
    if (!s.started || s.broken || s.writing || s.outbox.empty()) return;
    s.out = std::move(s.outbox.front());
    s.outbox.pop_front();
    s.writing = true;
    s.rw->Write(s.out, &writeTag_);
    ++s.pending;
  }

  // Cancel the call (a no-op for one the server already ended) and ask for
  // its status; every outstanding operation then comes back promptly.
  void breakSession(bool rotate) {
    Session& s = *s_;
    if (s.broken) return;
    s.broken = true;
    s.rotate = rotate;
    s.ctx.TryCancel();
    s.rw->Finish(&s.status, &finishTag_);
    ++s.pending;
  }

  void endSession(Clock::time_point now) {
    if (s_->rotate) eps_->failedOn(s_->endpoint);
    s_.reset();
    onSessionEnd();
    reconnectAt_ = now + backoff_;
    backoff_ = std::min(backoff_ * 2, kMaxBackoff);
  }

  grpc::CompletionQueue cq_;
  grpc::Alarm wake_;
  std::mutex cqMu_;
  bool cqOpen_ = true;
  std::atomic<bool> stop_{false};
  bool finishing_ = false;
  std::unique_ptr<Session> s_;
  Clock::time_point reconnectAt_{};
  milliseconds backoff_{kFirstBackoff};
  char startTag_ = 0, readTag_ = 0, writeTag_ = 0, finishTag_ = 0, wakeTag_ = 0;
  std::thread thread_;
};

// ------------------------------------------------------------ LeaseKeeper

class LeaseKeeperImpl final : public LeaseKeeper,
                              private StreamWorker<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse> {
 public:
  LeaseKeeperImpl(std::shared_ptr<Endpoints> eps, Lease lease, std::function<void()> onLost)
      : StreamWorker(std::move(eps)),
        lease_(lease),
        ttl_(milliseconds(std::max<std::int64_t>(lease.ttlSeconds, 1) * 1000)),
        interval_(std::max(ttl_ / 3, milliseconds(100))),
        onLost_(std::make_shared<std::function<void()>>(std::move(onLost))) {
    lastRenewed_.store(Clock::now().time_since_epoch().count());
    startThread();
  }

  ~LeaseKeeperImpl() override {
    stopAndJoin();
    inbox_.close();
  }

  std::chrono::steady_clock::time_point lastRenewed() const override {
    return Clock::time_point(Clock::duration(lastRenewed_.load()));
  }
  bool lost() const override { return lost_.load(); }

 private:
  std::unique_ptr<grpc::ClientAsyncReaderWriter<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>> open(
      std::size_t idx, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) override {
    waitingSince_ = Clock::now();  // connecting counts as waiting for an answer
    return eps_->lease[idx]->PrepareAsyncLeaseKeepAlive(ctx, cq);
  }

  void onOpen(Clock::time_point now) override { renew(now); }

  void onResponse(const pb::LeaseKeepAliveResponse& r, Clock::time_point now) override {
    if (r.ttl() <= 0) {
      declareLost();
      return;
    }
    lastRenewed_.store(now.time_since_epoch().count());
    waitingSince_.reset();
    healthy();
  }

  void onTick(Clock::time_point now) override {
    if (now - lastRenewed() >= ttl_) {
      declareLost();
      return;
    }
    if (sessionStarted() && now >= nextRenew_) renew(now);
    // A member that stopped answering (paused, partitioned): try another
    // while the lease still has time.
    if (sessionOpen() && waitingSince_ && now - *waitingSince_ >= std::min(interval_, eps_->opts.dialTimeout)) {
      abandon();
    }
  }

  Clock::time_point nextTick(Clock::time_point now) override {
    auto t = lastRenewed() + ttl_;
    if (sessionStarted()) t = std::min(t, nextRenew_);
    if (sessionOpen() && waitingSince_) t = std::min(t, *waitingSince_ + std::min(interval_, eps_->opts.dialTimeout));
    return std::max(t, now);
  }

  void onSessionEnd() override { waitingSince_.reset(); }

  void renew(Clock::time_point now) {
    pb::LeaseKeepAliveRequest req;
    req.set_id(lease_.id);
    send(std::move(req));
    nextRenew_ = now + interval_;
    if (!waitingSince_) waitingSince_ = now;
  }

  void declareLost() {
    if (lost_.exchange(true)) return;
    inbox_.post([cb = onLost_] { (*cb)(); });
    finish();
  }

  Lease lease_;
  milliseconds ttl_;
  milliseconds interval_;
  std::shared_ptr<std::function<void()>> onLost_;
  LoopInbox inbox_;  // made on the owner's loop thread (this constructor's)
  std::atomic<Clock::rep> lastRenewed_{0};
  std::atomic<bool> lost_{false};
  // Worker thread only:
  Clock::time_point nextRenew_{};
  std::optional<Clock::time_point> waitingSince_;
};

// ------------------------------------------------------------ Watcher

class WatcherImpl final : public Watcher, private StreamWorker<pb::WatchRequest, pb::WatchResponse> {
 public:
  WatcherImpl(std::shared_ptr<Endpoints> eps, std::string key, std::string rangeEnd, std::int64_t startRevision,
              std::function<void(std::vector<Event>)> onEvents, std::function<void(std::string)> onError)
      : StreamWorker(std::move(eps)),
        key_(std::move(key)),
        rangeEnd_(std::move(rangeEnd)),
        nextRev_(std::max<std::int64_t>(startRevision, 0)),
        onEvents_(std::make_shared<std::function<void(std::vector<Event>)>>(std::move(onEvents))),
        onError_(std::make_shared<std::function<void(std::string)>>(std::move(onError))) {
    startThread();
  }

  ~WatcherImpl() override {
    stopAndJoin();
    inbox_.close();
  }

 private:
  std::unique_ptr<grpc::ClientAsyncReaderWriter<pb::WatchRequest, pb::WatchResponse>> open(
      std::size_t idx, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) override {
    created_ = false;
    return eps_->watch[idx]->PrepareAsyncWatch(ctx, cq);
  }

  void onOpen(Clock::time_point) override {
    pb::WatchRequest req;
    auto* c = req.mutable_create_request();
    c->set_key(key_);
    c->set_range_end(rangeEnd_);
    c->set_start_revision(nextRev_);  // 0 (now) until a revision is known
    send(std::move(req));
  }

  void onResponse(const pb::WatchResponse& r, Clock::time_point) override {
    const std::string& ep = eps_->names[sessionEndpoint()];
    if (r.compact_revision() > 0) {
      fail("etcd " + ep + ": watch " + key_ + ": revision " + std::to_string(nextRev_) +
           " was compacted away (the oldest left is " + std::to_string(r.compact_revision()) + ")");
      return;
    }
    if (r.canceled()) {
      fail("etcd " + ep + ": watch " + key_ + " canceled by etcd" +
           (r.cancel_reason().empty() ? std::string() : ": " + r.cancel_reason()));
      return;
    }
    if (r.created()) {
      created_ = true;
      // Watching "now": later events are those after the creation's revision.
      if (nextRev_ == 0) nextRev_ = r.header().revision() + 1;
      healthy();
    }
    std::vector<Event> events;
    events.reserve(std::size_t(r.events_size()));
    for (auto& e : r.events()) {
      if (e.kv().mod_revision() < nextRev_) continue;  // delivered before a reconnect
      Event ev;
      ev.type = e.type() == pb::Event::DELETE ? EventType::Delete : EventType::Put;
      ev.kv = toKeyValue(e.kv());
      events.push_back(std::move(ev));
    }
    if (events.empty()) return;
    nextRev_ = events.back().kv.modRevision + 1;
    inbox_.post([cb = onEvents_, evs = std::move(events)]() mutable { (*cb)(std::move(evs)); });
  }

  void onTick(Clock::time_point now) override {
    if (sessionOpen() && !created_ && now - sessionOpenedAt() >= eps_->opts.dialTimeout) abandon();
  }

  Clock::time_point nextTick(Clock::time_point now) override {
    if (sessionOpen() && !created_) return std::max(now, sessionOpenedAt() + eps_->opts.dialTimeout);
    return now + milliseconds(500);
  }

  void fail(std::string why) {
    if (failed_) return;
    failed_ = true;
    inbox_.post([cb = onError_, why = std::move(why)] { (*cb)(why); });
    finish();
  }

  std::string key_;
  std::string rangeEnd_;
  std::int64_t nextRev_;  // the first revision not delivered yet; 0 = now
  std::shared_ptr<std::function<void(std::vector<Event>)>> onEvents_;
  std::shared_ptr<std::function<void(std::string)>> onError_;
  LoopInbox inbox_;
  bool created_ = false;
  bool failed_ = false;
};

}  // namespace

// ============================================================ Client

struct Client::Impl {
  std::shared_ptr<Endpoints> eps;
  grpc::CompletionQueue cq;
  std::mutex mu;
  bool closing = false;
  std::unordered_set<PendingCall*> inflight;
  std::thread thread;

  Impl(std::vector<std::string> endpoints, Options opts)
      : eps(std::make_shared<Endpoints>(std::move(endpoints), opts)) {
    thread = std::thread([this] { drain(); });
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> lk(mu);
      closing = true;
      for (auto* c : inflight) c->ctx.TryCancel();  // each still comes back once, as CANCELLED
    }
    cq.Shutdown();
    thread.join();
  }

  void drain() {
    void* tag = nullptr;
    bool ok = false;
    while (cq.Next(&tag, &ok)) {
      auto* call = static_cast<PendingCall*>(tag);
      {
        std::lock_guard<std::mutex> lk(mu);
        inflight.erase(call);
      }
      call->complete();
      delete call;
    }
  }

  // Starts `method` on the current endpoint; `prepare(idx, ctx, cq)` makes
  // the call's reader. The promise resolves on the caller's loop.
  template <typename Resp, typename T, typename Prepare>
  kj::Promise<T> start(const char* method, bool write, Prepare&& prepare,
                       typename UnaryCall<Resp, T>::Convert convert) {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<T>();
    std::size_t idx = eps->pick();
    auto call = std::make_unique<UnaryCall<Resp, T>>(eps, idx, method, write, std::move(convert),
                                                     kj::mv(paf.fulfiller));
    call->ctx.set_deadline(deadlineIn(eps->opts.callTimeout));
    // Under the lock, so that the queue cannot be shut down between the
    // check and the call's Finish (which would then never come back).
    std::lock_guard<std::mutex> lk(mu);
    if (closing) {
      return kj::Promise<T>(toKj(EtcdError("etcd: " + std::string(method) + ": the client is shutting down",
                                           int(grpc::StatusCode::CANCELLED), false)));
    }
    call->reader = prepare(idx, &call->ctx, &cq);
    call->reader->StartCall();
    auto* raw = call.release();
    inflight.insert(raw);
    raw->reader->Finish(&raw->resp, &raw->status, raw);
    return kj::mv(paf.promise);
  }

  // The blocking form: the same call on the sync stub, on this thread.
  template <typename Resp, typename Invoke>
  Resp call(const char* method, bool write, Invoke&& invoke) {
    std::size_t idx = eps->pick();
    grpc::ClientContext ctx;
    ctx.set_deadline(deadlineIn(eps->opts.callTimeout));
    Resp resp;
    grpc::Status st = invoke(idx, &ctx, &resp);
    if (!st.ok()) throw eps->error(idx, method, st, write);
    return resp;
  }
};

Client::Client(std::vector<std::string> endpoints, Options opts)
    : impl_(std::make_unique<Impl>(std::move(endpoints), opts)) {}

Client::~Client() = default;

const std::vector<std::string>& Client::endpoints() const { return impl_->eps->names; }

// ---- asynchronous

kj::Promise<RangeResult> Client::range(std::string key, std::string rangeEnd, std::int64_t limit) {
  auto req = rangeRequest(key, rangeEnd, limit);
  return impl_->start<pb::RangeResponse, RangeResult>(
      "Range", false,
      [&](std::size_t i, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
        return impl_->eps->kv[i]->PrepareAsyncRange(ctx, req, cq);
      },
      [](const pb::RangeResponse& r, const std::string&) { return toRangeResult(r); });
}

kj::Promise<std::int64_t> Client::put(std::string key, std::string value, std::int64_t lease) {
  auto req = putRequest(key, value, lease);
  return impl_->start<pb::PutResponse, std::int64_t>(
      "Put", true,
      [&](std::size_t i, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
        return impl_->eps->kv[i]->PrepareAsyncPut(ctx, req, cq);
      },
      [](const pb::PutResponse& r, const std::string&) { return r.header().revision(); });
}

kj::Promise<std::int64_t> Client::deleteRange(std::string key, std::string rangeEnd) {
  auto req = deleteRequest(key, rangeEnd);
  return impl_->start<pb::DeleteRangeResponse, std::int64_t>(
      "DeleteRange", true,
      [&](std::size_t i, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
        return impl_->eps->kv[i]->PrepareAsyncDeleteRange(ctx, req, cq);
      },
      [](const pb::DeleteRangeResponse& r, const std::string&) { return r.deleted(); });
}

kj::Promise<TxnResult> Client::txn(std::vector<Compare> compares, std::vector<Op> success, std::vector<Op> failure) {
  auto req = txnRequest(compares, success, failure);
  return impl_->start<pb::TxnResponse, TxnResult>(
      "Txn", true,
      [&](std::size_t i, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
        return impl_->eps->kv[i]->PrepareAsyncTxn(ctx, req, cq);
      },
      [](const pb::TxnResponse& r, const std::string&) { return toTxnResult(r); });
}

kj::Promise<Lease> Client::grant(std::int64_t ttlSeconds) {
  auto req = grantRequest(ttlSeconds);
  return impl_->start<pb::LeaseGrantResponse, Lease>(
      "LeaseGrant", true,
      [&](std::size_t i, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
        return impl_->eps->lease[i]->PrepareAsyncLeaseGrant(ctx, req, cq);
      },
      [](const pb::LeaseGrantResponse& r, const std::string& ep) { return toLease(r, ep); });
}

kj::Promise<void> Client::revoke(std::int64_t leaseId) {
  auto req = revokeRequest(leaseId);
  return impl_->start<pb::LeaseRevokeResponse, void>(
      "LeaseRevoke", true,
      [&](std::size_t i, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
        return impl_->eps->lease[i]->PrepareAsyncLeaseRevoke(ctx, req, cq);
      },
      [](const pb::LeaseRevokeResponse&, const std::string&) {});
}

std::unique_ptr<LeaseKeeper> Client::keepAlive(Lease lease, std::function<void()> onLost) {
  return std::make_unique<LeaseKeeperImpl>(impl_->eps, lease, std::move(onLost));
}

std::unique_ptr<Watcher> Client::watch(std::string key, std::string rangeEnd, std::int64_t startRevision,
                                       std::function<void(std::vector<Event>)> onEvents,
                                       std::function<void(std::string)> onError) {
  return std::make_unique<WatcherImpl>(impl_->eps, std::move(key), std::move(rangeEnd), startRevision,
                                       std::move(onEvents), std::move(onError));
}

// ---- blocking

RangeResult Client::rangeSync(const std::string& key, const std::string& rangeEnd, std::int64_t limit) {
  auto req = rangeRequest(key, rangeEnd, limit);
  return toRangeResult(impl_->call<pb::RangeResponse>(
      "Range", false, [&](std::size_t i, grpc::ClientContext* ctx, pb::RangeResponse* resp) {
        return impl_->eps->kv[i]->Range(ctx, req, resp);
      }));
}

std::int64_t Client::putSync(const std::string& key, const std::string& value, std::int64_t lease) {
  auto req = putRequest(key, value, lease);
  return impl_
      ->call<pb::PutResponse>("Put", true,
                              [&](std::size_t i, grpc::ClientContext* ctx, pb::PutResponse* resp) {
                                return impl_->eps->kv[i]->Put(ctx, req, resp);
                              })
      .header()
      .revision();
}

std::int64_t Client::deleteRangeSync(const std::string& key, const std::string& rangeEnd) {
  auto req = deleteRequest(key, rangeEnd);
  return impl_
      ->call<pb::DeleteRangeResponse>("DeleteRange", true,
                                      [&](std::size_t i, grpc::ClientContext* ctx, pb::DeleteRangeResponse* resp) {
                                        return impl_->eps->kv[i]->DeleteRange(ctx, req, resp);
                                      })
      .deleted();
}

TxnResult Client::txnSync(const std::vector<Compare>& compares, const std::vector<Op>& success,
                          const std::vector<Op>& failure) {
  auto req = txnRequest(compares, success, failure);
  return toTxnResult(impl_->call<pb::TxnResponse>(
      "Txn", true, [&](std::size_t i, grpc::ClientContext* ctx, pb::TxnResponse* resp) {
        return impl_->eps->kv[i]->Txn(ctx, req, resp);
      }));
}

Lease Client::grantSync(std::int64_t ttlSeconds) {
  auto req = grantRequest(ttlSeconds);
  std::size_t idx = impl_->eps->pick();
  auto resp = impl_->call<pb::LeaseGrantResponse>(
      "LeaseGrant", true, [&](std::size_t i, grpc::ClientContext* ctx, pb::LeaseGrantResponse* r) {
        idx = i;
        return impl_->eps->lease[i]->LeaseGrant(ctx, req, r);
      });
  return toLease(resp, impl_->eps->names[idx]);
}

void Client::revokeSync(std::int64_t leaseId) {
  auto req = revokeRequest(leaseId);
  impl_->call<pb::LeaseRevokeResponse>("LeaseRevoke", true,
                                       [&](std::size_t i, grpc::ClientContext* ctx, pb::LeaseRevokeResponse* resp) {
                                         return impl_->eps->lease[i]->LeaseRevoke(ctx, req, resp);
                                       });
}

}  // namespace keel::etcd
