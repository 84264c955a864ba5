#pragma once
// EtcdClient: the small part of etcd's v3 API that the coordinator cluster
// uses (KV Range/Put/DeleteRange/Txn, Lease Grant/KeepAlive/Revoke, Watch),
// spoken over gRPC C++ with stubs generated at build time from
// schemas/etcd.proto (a subset written from etcd's API reference).
//
// Threads
// - Every call is issued on gRPC's async API. One completion-queue thread
//   owned by the client finishes calls; nothing here blocks a KJ event
//   loop. The kj::Promise calls must be made on a thread that runs a KJ
//   event loop; their promises resolve on that thread (cross-thread
//   fulfillers), so callers never see the completion-queue thread.
// - The blocking calls (suffix Sync) are for tools, tests and start-up:
//   they wait on the calling thread. Never call them on an event loop that
//   serves work.
// - Lease keep-alive and watches run on the client's own thread(s) and
//   report through callbacks that are posted to the KJ loop of the thread
//   that created them (kj::Executor), never run on a gRPC thread.
//
// Endpoints and failures
// - Several endpoints ("127.0.0.1:2379"); one gRPC channel each. A call that
//   fails with UNAVAILABLE (or DEADLINE_EXCEEDED) moves the client to the
//   next endpoint for later calls, and the call fails with EtcdError whose
//   `unknownOutcome` says whether the request may have been applied. The
//   client never retries a call on its own: callers make their writes safe
//   to repeat (create-if-absent, then read back and compare).
// - Every call has a deadline (Options::callTimeout).
// - A kj::Promise call fails with a kj::Exception (KJ carries no C++
//   exception types across promises) whose description is the EtcdError's
//   text; etcdErrorOf() turns it back into the EtcdError, with grpcCode and
//   unknownOutcome.
// - Which codes leave the outcome unknown: for a write (Put, DeleteRange,
//   Txn, LeaseGrant, LeaseRevoke) every failure except a refusal the server
//   makes before applying anything (INVALID_ARGUMENT, FAILED_PRECONDITION,
//   NOT_FOUND, ALREADY_EXISTS, OUT_OF_RANGE, PERMISSION_DENIED,
//   UNAUTHENTICATED, UNIMPLEMENTED). gRPC cannot tell whether a request
//   that met UNAVAILABLE was ever sent, so that counts as unknown too. A
//   Range never has an unknown outcome. A Txn whose compares fail is no
//   error at all (TxnResult::succeeded == false).

#include <kj/async.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace keel::etcd {

struct KeyValue {
  std::string key;
  std::string value;
  std::int64_t createRevision = 0;
  std::int64_t modRevision = 0;
  std::int64_t version = 0;
  std::int64_t lease = 0;
};

// One comparison of a Txn (etcd Compare): key's target `result` operand.
struct Compare {
  enum class Target : std::uint8_t { Version, Create, Mod, Value, Lease };
  enum class Result : std::uint8_t { Equal, Greater, Less, NotEqual };
  std::string key;
  Target target = Target::Create;
  Result result = Result::Equal;
  std::int64_t number = 0;  // version / create / mod revision / lease
  std::string value;        // Target::Value

  // create_revision == 0: the key does not exist.
  static Compare absent(std::string key);
  static Compare valueIs(std::string key, std::string value);
  static Compare modRevisionIs(std::string key, std::int64_t rev);
};

// One operation of a Txn.
struct Op {
  enum class Kind : std::uint8_t { Range, Put, Delete };
  Kind kind = Kind::Range;
  std::string key;
  std::string rangeEnd;  // empty: the key alone; prefixEnd(key): every key under it
  std::string value;     // Put
  std::int64_t lease = 0;  // Put
  std::int64_t limit = 0;  // Range, 0 = no limit

  static Op get(std::string key);
  static Op put(std::string key, std::string value, std::int64_t lease = 0);
  static Op del(std::string key, std::string rangeEnd = {});
};

struct RangeResult {
  std::vector<KeyValue> kvs;
  bool more = false;
  std::int64_t count = 0;
  std::int64_t revision = 0;  // the store's revision when read
};

struct TxnResult {
  bool succeeded = false;     // the compares held: `success` ran, else `failure`
  std::int64_t revision = 0;  // revision after the txn
  // One per op of the branch that ran, in order. Range ops fill kvs; Put
  // and Delete leave them empty (Delete sets `count` to how many went).
  std::vector<RangeResult> responses;
};

struct Lease {
  std::int64_t id = 0;
  std::int64_t ttlSeconds = 0;  // as granted
};

enum class EventType : std::uint8_t { Put, Delete };
struct Event {
  EventType type = EventType::Put;
  KeyValue kv;  // for Delete: key and modRevision only
};

class EtcdError : public std::runtime_error {
 public:
  EtcdError(const std::string& what, int grpcCode, bool unknownOutcome)
      : std::runtime_error(what), grpcCode_(grpcCode), unknownOutcome_(unknownOutcome) {}
  int grpcCode() const { return grpcCode_; }
  // The request may have been applied (the answer was lost).
  bool unknownOutcome() const { return unknownOutcome_; }

 private:
  int grpcCode_;
  bool unknownOutcome_;
};

// The EtcdError a failed kj::Promise of this client carried (see above);
// nullopt for any other exception.
std::optional<EtcdError> etcdErrorOf(const kj::Exception& e);

// The smallest key greater than every key starting with `prefix`.
std::string prefixEnd(const std::string& prefix);

struct Options {
  std::chrono::milliseconds callTimeout{2000};
  // How long a keep-alive or watch stream may take to be answered on an
  // endpoint (its first renewal, the watch's creation) before it is
  // abandoned for the next endpoint. Unary calls are bounded by callTimeout
  // alone.
  std::chrono::milliseconds dialTimeout{2000};
};

// Keeps one lease alive by a LeaseKeepAlive stream (renewing at a third of
// its TTL). When a renewal is refused (the lease is gone: TTL 0) or no
// renewal succeeded for a whole TTL, `onLost` runs once on the owner's KJ
// loop and the keeper stops. Destroying the keeper stops renewals (it does
// not revoke); once it is destroyed, `onLost` never runs.
class LeaseKeeper {
 public:
  virtual ~LeaseKeeper() = default;
  // Time (steady clock) of the last successful renewal.
  virtual std::chrono::steady_clock::time_point lastRenewed() const = 0;
  virtual bool lost() const = 0;
};

// A watch on a key or range from `startRevision` (0: now). Events arrive in
// revision order through `onEvents` on the owner's KJ loop. If the stream
// breaks (endpoint down), the watcher reconnects from the revision after
// the last one it delivered; if that revision was compacted away,
// `onError` runs once and the watcher stops (the caller re-reads and
// watches again). etcd cancelling the watch is reported the same way. Once
// the watcher is destroyed, neither callback runs.
//
// Keepers and watchers may outlive the Client that made them (they share
// its channels); each has a thread and a completion queue of its own.
class Watcher {
 public:
  virtual ~Watcher() = default;
};

class Client {
 public:
  // Throws std::invalid_argument for an empty list or a malformed endpoint.
  // Connects lazily.
  Client(std::vector<std::string> endpoints, Options opts = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const std::vector<std::string>& endpoints() const;

  // ---- asynchronous (call on a KJ event-loop thread)
  kj::Promise<RangeResult> range(std::string key, std::string rangeEnd = {}, std::int64_t limit = 0);
  kj::Promise<std::int64_t> put(std::string key, std::string value, std::int64_t lease = 0);  // revision
  kj::Promise<std::int64_t> deleteRange(std::string key, std::string rangeEnd = {});          // deleted count
  kj::Promise<TxnResult> txn(std::vector<Compare> compares, std::vector<Op> success, std::vector<Op> failure);
  kj::Promise<Lease> grant(std::int64_t ttlSeconds);
  kj::Promise<void> revoke(std::int64_t leaseId);

  // Keep-alive and watch (call on a KJ event-loop thread; callbacks run
  // there).
  std::unique_ptr<LeaseKeeper> keepAlive(Lease lease, std::function<void()> onLost);
  std::unique_ptr<Watcher> watch(std::string key, std::string rangeEnd, std::int64_t startRevision,
                                 std::function<void(std::vector<Event>)> onEvents,
                                 std::function<void(std::string)> onError);

  // ---- blocking (tools, tests, start-up)
  RangeResult rangeSync(const std::string& key, const std::string& rangeEnd = {}, std::int64_t limit = 0);
  std::int64_t putSync(const std::string& key, const std::string& value, std::int64_t lease = 0);
  std::int64_t deleteRangeSync(const std::string& key, const std::string& rangeEnd = {});
  TxnResult txnSync(const std::vector<Compare>& compares, const std::vector<Op>& success,
                    const std::vector<Op>& failure);
  Lease grantSync(std::int64_t ttlSeconds);
  void revokeSync(std::int64_t leaseId);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::etcd
