#pragma once
// PgServer: a real PostgreSQL server on 127.0.0.1 for tests, with its data
// directory, Unix socket and log in one temporary folder. Tests start it,
// crash it (stopImmediate, kill9) and restart it on the same data and port
// to check what survives; pgQuery() inspects state over libpq.
//
// Ownership: a PgServer owns the postmaster it started (a child of this
// process) and the folder it created. The destructor stops the server
// (immediate, bounded), kills any of its processes still alive, and removes
// the folder unless KEEL_PG_KEEP=1. Not thread-safe: one thread drives it.
//
// Caveats
// - PostgreSQL refuses to run as root. When this process is root, initdb,
//   postgres and pg_ctl run as the `postgres` system user (created by the
//   Debian package postgresql-15); the folder is chowned to it, and every
//   parent of a caller-given folder must be searchable by it.
// - The postmaster gets SIGQUIT (immediate shutdown) when the thread that
//   started it exits (PR_SET_PDEATHSIG), so a test killed by a timeout does
//   not leak a server; its folder does stay behind in /tmp then. Start
//   servers from a thread that outlives them (GoogleTest's main thread).
// - kill9() kills the postmaster only, like a crash of it. Idle children
//   notice and exit within milliseconds, but a backend busy in a query runs
//   on until the query ends. PostgreSQL refuses to start while an old
//   process still holds the data directory's shared memory ("pre-existing
//   shared memory block ... is still in use"), so start()/restart() wait for
//   them up to stopTimeout, then fail naming their pids.
// - The server keeps fsync=on (durability is what tests check); only initdb
//   runs with --no-sync.
// - port 0 picks a loopback port below 32768 (32768-60999 is the kernel's
//   ephemeral range, where an outgoing connection could take it) at the
//   first start, retrying with another one if it was taken meanwhile. The
//   port then stays for the life of the object.

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <cstdint>
#include <utility>
#include <vector>

namespace keel::test {

// max_prepared_transactions for a server whose postgres agents serve
// `outstanding` interactions at once (all agents together: the setting is
// per server). Keel answers a client once its decision is durable and runs
// phase 2 afterwards, so more branches are prepared than interactions are
// outstanding; too small a value makes prepares fail with "maximum number of
// prepared transactions reached".
inline int preparedTransactionsFor(std::uint32_t outstanding) { return int(4 * outstanding + 256); }

struct PgServerOptions {
  unsigned port = 0;                       // 0 = pick a free one at the first start
  int maxPreparedTransactions = 64;        // > 0 enables PREPARE TRANSACTION
  std::vector<std::string> databases;      // created at the first start, e.g. {"bank_a", "bank_b"}
  std::vector<std::string> settings;       // extra "name=value" server settings (-c)
  // Where initdb, postgres and pg_ctl are; empty = $KEEL_PG_BIN_DIR, else
  // the build's default (/usr/lib/postgresql/15/bin).
  std::string binDir;
  std::chrono::milliseconds startTimeout{30000};  // until it accepts connections
  std::chrono::milliseconds stopTimeout{30000};   // pg_ctl stop, and waiting for processes to exit
};

class PgServer final {
 public:
  // baseDir empty: a fresh /tmp/keel-pg-XXXXXX. Otherwise that folder,
  // created if missing; the destructor removes it only if it created it
  // (else only data/ and server.log inside). A data/ already initialised
  // there is reused: no initdb, no database creation.
  explicit PgServer(std::string baseDir = "", PgServerOptions opts = {});
  ~PgServer();
  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

  // initdb (first time only), start the postmaster, wait until it accepts
  // connections, create the databases (first time only). Throws
  // std::runtime_error with the end of the server log on failure, and
  // std::logic_error if already running.
  void start();
  // Starts again on the same data directory and port; stops it fast first
  // if it is running.
  void restart();
  // pg_ctl stop -m fast: clean shutdown with a checkpoint. No-op if stopped.
  void stopFast();
  // pg_ctl stop -m immediate: a crash (no checkpoint; the next start runs
  // WAL recovery). No-op if stopped.
  void stopImmediate();
  // SIGKILL to the postmaster alone. No-op if stopped.
  void kill9();
  // Sends sig to the postmaster, then to every other process of this server
  // (backends, checkpointer, ...): SIGSTOP / SIGCONT freeze and thaw the
  // whole server. Returns how many processes got it.
  std::size_t signalAll(int sig);
  bool running();

  // Valid after the first start().
  unsigned port() const { return port_; }
  // "host=127.0.0.1 port=P dbname=<db> user=postgres"
  std::string connString(const std::string& db) const;
  pid_t pid() const { return pid_; }
  const std::string& baseDir() const { return baseDir_; }
  const std::string& dataDir() const { return dataDir_; }
  const std::string& logFile() const { return logFile_; }
  // The last `lines` lines of the server log (server, initdb and pg_ctl
  // output), for failure messages.
  std::string logTail(std::size_t lines = 30) const;

 private:
  void prepareDirs(const std::string& baseDir);
  void launch();
  void waitReady(const std::string& what);
  bool postmasterReady() const;
  void createDatabases();
  void pgCtlStop(const char* mode);
  bool reap(std::chrono::milliseconds timeout);
  void waitForOldProcesses();
  void note(const std::string& what) const;
  [[noreturn]] void fail(const std::string& what) const;

  PgServerOptions opts_;
  std::string binDir_;
  std::string baseDir_;
  std::string dataDir_;
  std::string logFile_;
  bool ownBaseDir_ = false;
  bool initialized_ = false;       // initdb done (or data/ was there already)
  bool databasesPending_ = false;  // initdb done by us, databases not created yet
  unsigned port_ = 0;
  pid_t pid_ = -1;       // the postmaster, our child; -1 when reaped
  int lastStatus_ = 0;   // its wait status once reaped
};

// A PostgreSQL error from pgQuery: message plus SQLSTATE (e.g. "42P01").
class PgError final : public std::runtime_error {
 public:
  PgError(const std::string& msg, std::string sqlstate)
      : std::runtime_error(msg), sqlstate_(std::move(sqlstate)) {}
  const std::string& sqlstate() const { return sqlstate_; }

 private:
  std::string sqlstate_;
};

// Runs sql on a new connection (simple protocol, so several statements in
// one string run in order) and returns the last statement's rows as text;
// NULL reads as "". Commands without rows return {}. Throws PgError with
// PostgreSQL's message. Bounded: connect_timeout=10 and statement_timeout
// 60 s unless conn sets them.
std::vector<std::vector<std::string>> pgQuery(const std::string& conn, const std::string& sql);

}  // namespace keel::test
