#include "participant/adapters/pg_loop.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include <kj/debug.h>

#include "common/fault.h"
#include "common/log.h"

namespace keel::pg {

namespace {

// How long a wait for the socket lasts before libpq is asked again anyway
// (see the header): a lost edge costs this much, never a hang.
constexpr auto kSafetyPoll = 200 * kj::MILLISECONDS;
// A connect that has not finished by then fails (PostgreSQL unreachable,
// packets dropped): the call fails and the next one tries again. The
// conninfo's own connect_timeout, when it sets one, is used instead.
constexpr auto kConnectTimeout = std::chrono::seconds(10);

// libpq's connect_timeout as a non-blocking connect must enforce it itself
// (PQconnectPoll does not): seconds, 1 counting as 2 as in libpq; unset, 0
// or negative give Keel's default, so that no connect holds a slot forever.
std::chrono::seconds connectTimeoutOf(PGconn* c) {
  std::chrono::seconds t = kConnectTimeout;
  PQconninfoOption* opts = PQconninfo(c);
  for (PQconninfoOption* o = opts; o != nullptr && o->keyword != nullptr; ++o) {
    if (std::string_view(o->keyword) != "connect_timeout" || o->val == nullptr) continue;
    char* end = nullptr;
    long v = std::strtol(o->val, &end, 10);
    if (end != o->val && *end == '\0' && v > 0) t = std::chrono::seconds(std::max(v, 2L));
  }
  PQconninfoFree(opts);
  return t;
}

std::string trimmed(std::string msg) {
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  return msg;
}

}  // namespace

SocketWatch::SocketWatch(kj::UnixEventPort& port, int fd, uint flags) : fd_(::fcntl(fd, F_DUPFD_CLOEXEC, 0)) {
  if (fd_ < 0) kj::throwFatalException(faultException(std::string("cannot watch PostgreSQL's socket: ") + std::strerror(errno)));
  obs_ = kj::heap<kj::UnixEventPort::FdObserver>(port, fd_, flags);
}

SocketWatch::~SocketWatch() {
  obs_ = nullptr;  // deregistered while the duplicate is still open
  ::close(fd_);
}

LoopConn::LoopConn(kj::UnixEventPort& port, kj::Timer& timer, PGconn* c) : timer_(timer), c_(c) {
  if (PQsetnonblocking(c_, 1) != 0) {
    std::string msg = trimmed(PQerrorMessage(c_));  // c_ stays the caller's to close
    kj::throwFatalException(faultException("cannot put the connection in non-blocking mode: " + msg));
  }
  watch_ = kj::heap<SocketWatch>(port, PQsocket(c_), kj::UnixEventPort::FdObserver::OBSERVE_READ_WRITE);
}

LoopConn::~LoopConn() {
  watch_ = nullptr;
  PQfinish(c_);
  if (pool_ != nullptr) pool_->connClosed();
}

const std::string* LoopConn::statementName(const std::string& text) const {
  auto it = named_.find(text);
  return it == named_.end() ? nullptr : &it->second;
}

std::optional<std::string> LoopConn::newStatementName() {
  if (named_.size() >= kMaxNamedStatements) return std::nullopt;
  return "keel_" + std::to_string(++nextName_);
}

void LoopConn::statementPrepared(const std::string& text, std::string name) { named_.emplace(text, std::move(name)); }

void LoopConn::lost(const char* what) {
  poisoned_ = true;
  kj::throwFatalException(faultException("connection to PostgreSQL lost (" + std::string(what) +
                                         "): " + trimmed(PQerrorMessage(c_))));
}

kj::Promise<void> LoopConn::readable() {
  return watch_->observer().whenBecomesReadable().exclusiveJoin(timer_.afterDelay(kSafetyPoll));
}

kj::Promise<void> LoopConn::flush() {
  int r = PQflush(c_);
  if (r == 0) return kj::READY_NOW;
  if (r < 0) lost("sending to PostgreSQL");
  // The kernel's buffer is full: wait until it drains (or PostgreSQL
  // answers, which may be what it needs before it reads more).
  return watch_->observer().whenBecomesWritable()
      .exclusiveJoin(timer_.afterDelay(kSafetyPoll))
      .then([this] {
        if (PQconsumeInput(c_) != 1) lost("reading from PostgreSQL");
        return flush();
      });
}

kj::Promise<std::vector<Result>> LoopConn::collectPipeline() {
  struct State {
    std::vector<Result> out;
    bool inQuery = false;  // took a query's first result; the rest until NULL are dropped
  };
  auto st = kj::heap<State>();
  State& s = *st;
  // One step: everything libpq has parsed is taken; then it either saw the
  // Sync's result (done) or waits for the socket. The first step does not
  // read: it runs right after flush() (header), before the loop next asks
  // the kernel for events, so an answer cannot have come and had its edge
  // reported unseen; what a flush that had to wait read meanwhile is in
  // libpq's buffer and taken here. A read there would find nothing: one
  // system call per round trip saved.
  struct Step {
    static kj::Promise<void> run(LoopConn& self, State& s, bool read = true) {
      if (read && PQconsumeInput(self.c_) != 1) self.lost("reading from PostgreSQL");
      while (PQisBusy(self.c_) == 0) {
        PGresult* r = PQgetResult(self.c_);
        if (r == nullptr) {
          s.inQuery = false;  // the end of one query's results
          continue;
        }
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
          s.out.emplace_back(r);
          return kj::READY_NOW;
        }
        if (s.inQuery) {
          PQclear(r);
        } else {
          s.out.emplace_back(r);
          s.inQuery = true;
        }
      }
      if (!self.ok()) self.lost("PostgreSQL connection");
      return self.readable().then([&self, &s] { return run(self, s); });
    }
  };
  return Step::run(*this, s, false).then([&s]() mutable { return kj::mv(s.out); }).attach(kj::mv(st));
}

kj::Promise<Result> LoopConn::query(std::string sql) {
  if (PQsendQuery(c_, sql.c_str()) != 1) lost("sending a command");
  struct State {
    std::string sql;
    std::optional<Result> kept;  // the first result that failed, else the last
  };
  auto st = kj::heap<State>();
  st->sql = kj::mv(sql);
  State& s = *st;
  struct Step {
    static bool failed(const Result& r) {
      auto status = PQresultStatus(r.get());
      return status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK;
    }
    static kj::Promise<void> run(LoopConn& self, State& s, bool read = true) {
      if (read && PQconsumeInput(self.c_) != 1) self.lost("reading from PostgreSQL");
      while (PQisBusy(self.c_) == 0) {
        PGresult* r = PQgetResult(self.c_);
        if (r == nullptr) return kj::READY_NOW;
        if (s.kept && failed(*s.kept)) {
          PQclear(r);
        } else {
          s.kept.emplace(r);
        }
      }
      if (!self.ok()) self.lost("PostgreSQL connection");
      return self.readable().then([&self, &s] { return run(self, s); });
    }
  };
  return flush()
      .then([this, &s] { return Step::run(*this, s, false); })
      .then([this, &s]() -> Result {
        if (!s.kept) lost(s.sql.c_str());
        return kj::mv(*s.kept);
      })
      .attach(kj::mv(st));
}

std::optional<PgError> errorIn(const Result& r) {
  auto status = PQresultStatus(r.get());
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return std::nullopt;
  return resultError(r.get());
}

class LoopPool::Errors final : public kj::TaskSet::ErrorHandler {
 public:
  void taskFailed(kj::Exception&& e) override {
    KEEL_LOG_WARN("postgres: {}", e.getDescription().cStr());
  }
};

LoopPool::LoopPool(kj::UnixEventPort& port, kj::Timer& timer, std::string conninfo, std::size_t size,
                   std::string initSql, std::function<void()> onReconnect)
    : port_(port),
      timer_(timer),
      conninfo_(std::move(conninfo)),
      initSql_(std::move(initSql)),
      onReconnect_(std::move(onReconnect)),
      size_(std::max<std::size_t>(1, size)),
      errors_(kj::heap<Errors>()),
      tasks_(*errors_) {}

LoopPool::~LoopPool() {
  stopping_ = true;  // the connections closing now give no slot back
  idle_.clear();
}

// Slots: open_ counts the connections that exist or are being opened. A
// connection gives its slot back when it is destroyed, wherever that
// happens (closed on release, or dropped with a cancelled call's promise),
// and a connect runs as the pool's own task, never cancelled with the call
// that asked for it: so no path leaks a slot.
kj::Promise<kj::Own<LoopConn>> LoopPool::acquire() {
  if (!idle_.empty()) {
    auto c = kj::mv(idle_.back());  // the most recently used: its caches are warm
    idle_.pop_back();
    return kj::mv(c);
  }
  auto paf = kj::newPromiseAndFulfiller<kj::Own<LoopConn>>();
  waiters_.push_back(kj::mv(paf.fulfiller));
  if (open_ < size_) openOne();
  return kj::mv(paf.promise);
}

void LoopPool::openOne() {
  ++open_;
  tasks_.add(connect().then(
      [this](kj::Own<LoopConn> c) {
        c->pool_ = this;  // from now on its slot comes back when it is destroyed
        if (lost_) {
          lost_ = false;
          if (onReconnect_) onReconnect_();
        }
        release(kj::mv(c));
      },
      [this](kj::Exception&& e) {
        --open_;
        lost_ = true;
        failures_.warn(std::string("cannot connect: ") + e.getDescription().cStr());
        // The first call waiting hears why; the others wait for the next
        // connect (each try fails fast while PostgreSQL refuses).
        while (!waiters_.empty()) {
          auto w = kj::mv(waiters_.front());
          waiters_.pop_front();
          if (w->isWaiting()) {
            w->reject(faultException(std::string("cannot connect to PostgreSQL: ") + e.getDescription().cStr()));
            break;
          }
        }
        slotFreed();
      }));
}

void LoopPool::connClosed() {
  if (stopping_) return;
  --open_;
  slotFreed();
}

void LoopPool::release(kj::Own<LoopConn> c) {
  bool reusable = !c->poisoned() && c->ok() && PQpipelineStatus(c->get()) == PQ_PIPELINE_OFF &&
                  PQtransactionStatus(c->get()) == PQTRANS_IDLE;
  if (!reusable) {
    if (!c->ok()) lost_ = true;
    return;  // closed: its destructor gives the slot back
  }
  while (!waiters_.empty()) {
    auto w = kj::mv(waiters_.front());
    waiters_.pop_front();
    if (w->isWaiting()) {
      w->fulfill(kj::mv(c));
      return;
    }
  }
  idle_.push_back(kj::mv(c));
}

void LoopPool::slotFreed() {
  while (!waiters_.empty() && !waiters_.front()->isWaiting()) waiters_.pop_front();
  if (!waiters_.empty() && open_ < size_) openOne();
}

kj::Promise<void> LoopPool::pollConnect(PGconn* c, PostgresPollingStatusType st,
                                        std::chrono::steady_clock::time_point deadline, std::chrono::seconds limit) {
  if (st == PGRES_POLLING_OK) return kj::READY_NOW;
  if (st == PGRES_POLLING_FAILED) kj::throwFatalException(faultException(trimmed(PQerrorMessage(c))));
  if (std::chrono::steady_clock::now() > deadline) {
    kj::throwFatalException(faultException("no answer from the server within " + std::to_string(limit.count()) +
                                           " s (connect_timeout)"));
  }
  // The socket may change from one step to the next (another address of
  // the host): a fresh observer each time; epoll reports a socket that is
  // ready already when it is added.
  auto obs = kj::heap<SocketWatch>(port_, PQsocket(c),
                                   st == PGRES_POLLING_READING ? kj::UnixEventPort::FdObserver::OBSERVE_READ
                                                               : kj::UnixEventPort::FdObserver::OBSERVE_WRITE);
  auto ready = st == PGRES_POLLING_READING ? obs->observer().whenBecomesReadable()
                                           : obs->observer().whenBecomesWritable();
  return ready.exclusiveJoin(timer_.afterDelay(kSafetyPoll))
      .attach(kj::mv(obs))
      .then([this, c, deadline, limit] { return pollConnect(c, PQconnectPoll(c), deadline, limit); });
}

kj::Promise<kj::Own<LoopConn>> LoopPool::connect() {
  PGconn* c = PQconnectStart(conninfo_.c_str());
  if (c == nullptr) return faultException("out of memory");
  // Closes the connection unless a LoopConn took it.
  struct Closer {
    explicit Closer(PGconn* conn) : c(conn) {}
    Closer(const Closer&) = delete;
    Closer& operator=(const Closer&) = delete;
    ~Closer() {
      if (c != nullptr) PQfinish(c);
    }
    PGconn* c;
  };
  auto closer = kj::heap<Closer>(c);
  Closer& cl = *closer;
  auto limit = connectTimeoutOf(c);
  auto deadline = std::chrono::steady_clock::now() + limit;
  return kj::evalNow([this, c, deadline, limit] {
           if (PQstatus(c) == CONNECTION_BAD) {
             kj::throwFatalException(faultException(trimmed(PQerrorMessage(c))));
           }
           return pollConnect(c, PGRES_POLLING_WRITING, deadline, limit);
         })
      .then([this, &cl]() -> kj::Promise<kj::Own<LoopConn>> {
        auto conn = kj::heap<LoopConn>(port_, timer_, cl.c);
        cl.c = nullptr;  // the LoopConn owns it now
        if (initSql_.empty()) return kj::mv(conn);
        LoopConn& ref = *conn;
        return ref.query(initSql_).then([conn = kj::mv(conn)](Result r) mutable {
          if (auto e = errorIn(r)) kj::throwFatalException(faultException(std::string("session set-up failed: ") + e->what()));
          return kj::mv(conn);
        });
      })
      .attach(kj::mv(closer));
}

}  // namespace keel::pg
