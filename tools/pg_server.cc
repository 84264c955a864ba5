#include "tools/pg_server.h"

#include "tools/child_process.h"
#include "tools/free_port.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string_view>
#include <thread>

#ifndef KEEL_PG_BIN_DIR
#define KEEL_PG_BIN_DIR "/usr/lib/postgresql/15/bin"
#endif

extern char** environ;

namespace keel::test {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// Who runs initdb, postgres and pg_ctl: the postgres system user when we are
// root (PostgreSQL refuses root), else ourselves.
struct Identity {
  bool drop = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;
  std::string home;
};

Identity serverIdentity() {
  Identity id;
  if (::geteuid() != 0) return id;
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  int rc = ::getpwnam_r("postgres", &pw, buf.data(), buf.size(), &found);
  if (rc != 0 || found == nullptr) {
    throw std::runtime_error(
        "PgServer: running as root, but there is no 'postgres' system user to run PostgreSQL as "
        "(PostgreSQL refuses root; install postgresql-15, which creates it)");
  }
  id.drop = true;
  id.uid = pw.pw_uid;
  id.gid = pw.pw_gid;
  id.name = pw.pw_name;
  id.home = pw.pw_dir;
  return id;
}

// Our environment minus anything that steers PostgreSQL tools (PGDATA,
// PGPORT, PGHOST, ...), with the C locale so messages are predictable.
std::vector<std::string> childEnv(const Identity& id) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view v(*e);
    if (v.starts_with("PG") || v.starts_with("LC_ALL=") || v.starts_with("LANG=")) continue;
    if (id.drop && (v.starts_with("HOME=") || v.starts_with("USER=") || v.starts_with("LOGNAME="))) continue;
    env.emplace_back(v);
  }
  env.emplace_back("LC_ALL=C");
  env.emplace_back("LANG=C");
  if (id.drop) {
    env.push_back("HOME=" + id.home);
    env.push_back("USER=" + id.name);
    env.push_back("LOGNAME=" + id.name);
  }
  return env;
}

// Starts args[0] as `id` with the environment it needs (childEnv).
pid_t spawn(const Identity& id, const std::vector<std::string>& args, const std::string& logFile, int deathSig) {
  ChildUser user{id.uid, id.gid, id.name};
  return spawnChild("PgServer", args, childEnv(id), logFile, deathSig, id.drop ? &user : nullptr);
}

std::string joinArgs(const std::vector<std::string>& args) {
  std::string s;
  for (auto& a : args) s += (s.empty() ? "" : " ") + a;
  return s;
}

// Processes whose working directory is `dir`: every PostgreSQL process
// chdirs to its data directory, so these are the ones still holding it
// (e.g. children of a SIGKILLed postmaster that have not noticed yet).
std::vector<pid_t> processesIn(const std::string& dir) {
  std::vector<pid_t> pids;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    std::error_code linkEc;
    fs::path cwd = fs::read_symlink(it->path() / "cwd", linkEc);
    if (!linkEc && cwd == dir) pids.push_back(pid_t(std::stol(name)));
  }
  return pids;
}

long long msSince(Clock::time_point t0) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count();
}

std::string quoteIdent(const std::string& s) {
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace

PgServer::PgServer(std::string baseDir, PgServerOptions opts) : opts_(std::move(opts)) {
  if (opts_.maxPreparedTransactions < 0) throw std::invalid_argument("PgServer: maxPreparedTransactions < 0");
  if (opts_.port >= 65536) throw std::invalid_argument("PgServer: port out of range");
  binDir_ = opts_.binDir;
  if (binDir_.empty()) {
    const char* env = std::getenv("KEEL_PG_BIN_DIR");
    binDir_ = env != nullptr && *env != '\0' ? env : KEEL_PG_BIN_DIR;
  }
  for (const char* tool : {"initdb", "postgres", "pg_ctl"}) {
    if (::access((binDir_ + "/" + tool).c_str(), X_OK) != 0) {
      throw std::runtime_error("PgServer: no executable " + binDir_ + "/" + tool +
                               ": install postgresql-15 (scripts/install-deps.sh) or set KEEL_PG_BIN_DIR");
    }
  }
  serverIdentity();  // fail early if there is no user to run PostgreSQL as

  if (baseDir.empty()) {
    char tmpl[] = "/tmp/keel-pg-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error(std::string("PgServer: mkdtemp: ") + std::strerror(errno));
    baseDir = tmpl;
    ownBaseDir_ = true;
  } else {
    std::error_code ec;
    ownBaseDir_ = fs::create_directories(baseDir, ec);
    if (ec) throw std::runtime_error("PgServer: cannot create " + baseDir + ": " + ec.message());
  }
  try {
    prepareDirs(baseDir);
  } catch (...) {
    std::error_code ec;
    if (ownBaseDir_) fs::remove_all(baseDir, ec);
    throw;
  }
}

void PgServer::prepareDirs(const std::string& baseDir) {
  Identity id = serverIdentity();
  baseDir_ = fs::canonical(baseDir).string();
  dataDir_ = baseDir_ + "/data";
  logFile_ = baseDir_ + "/server.log";
  // Made here, so PostgreSQL's user needs only to pass through baseDir.
  fs::create_directories(dataDir_);
  fs::permissions(dataDir_, fs::perms::owner_all, fs::perm_options::replace);
  int fd = ::open(logFile_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd >= 0) ::close(fd);
  if (id.drop) {
    for (const std::string& p : {ownBaseDir_ ? baseDir_ : std::string(), dataDir_, logFile_}) {
      if (!p.empty() && ::chown(p.c_str(), id.uid, id.gid) != 0) {
        throw std::runtime_error("PgServer: chown " + p + ": " + std::strerror(errno));
      }
    }
  }
  initialized_ = fs::exists(dataDir_ + "/PG_VERSION");
}

PgServer::~PgServer() {
  try {
    if (running()) {
      opts_.stopTimeout = std::min(opts_.stopTimeout, milliseconds(10000));
      try {
        pgCtlStop("immediate");
      } catch (const std::exception&) {
      }
      if (running()) {
        ::kill(pid_, SIGKILL);
        reap(milliseconds(5000));
      }
    }
    // Children of a killed postmaster, or a server this object lost track of.
    auto until = Clock::now() + milliseconds(5000);
    for (auto pids = processesIn(dataDir_); !pids.empty() && Clock::now() < until; pids = processesIn(dataDir_)) {
      for (pid_t p : pids) ::kill(p, SIGKILL);
      std::this_thread::sleep_for(milliseconds(10));
    }
  } catch (const std::exception&) {
  }
  const char* keep = std::getenv("KEEL_PG_KEEP");
  if (keep != nullptr && std::string(keep) == "1") {
    std::cerr << "KEEL_PG_KEEP=1: PostgreSQL data and log kept in " << baseDir_ << "\n";
    return;
  }
  std::error_code ec;
  if (ownBaseDir_) {
    fs::remove_all(baseDir_, ec);
  } else {
    fs::remove_all(dataDir_, ec);
    fs::remove(logFile_, ec);
  }
}

std::string PgServer::connString(const std::string& db) const {
  if (port_ == 0) throw std::logic_error("PgServer::connString before the first start()");
  return "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=" + db + " user=postgres";
}

bool PgServer::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) lastStatus_ = status;
  pid_ = -1;
  return false;
}

bool PgServer::reap(milliseconds timeout) {
  if (pid_ <= 0) return true;
  auto status = waitChild(pid_, timeout);
  if (!status) return false;
  lastStatus_ = *status;
  pid_ = -1;
  return true;
}

std::string PgServer::logTail(std::size_t lines) const {
  auto tail = lastLinesOf(logFile_, lines);
  return tail ? *tail : "(no log at " + logFile_ + ")";
}

void PgServer::note(const std::string& what) const {
  // Our own trace lines, in order with the server's messages.
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::system_clock::now().time_since_epoch()).count();
  std::time_t secs = std::time_t(us / 1000000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
  std::ofstream log(logFile_, std::ios::app);
  log << stamp << "." << std::setw(3) << std::setfill('0') << (us / 1000) % 1000 << " UTC keel PgServer: " << what
      << "\n";
}

void PgServer::fail(const std::string& what) const {
  throw std::runtime_error("PgServer (" + baseDir_ + "): " + what + "\n--- last lines of " + logFile_ + " ---\n" +
                           logTail());
}

void PgServer::start() {
  if (running()) throw std::logic_error("PgServer::start: already running (pid " + std::to_string(pid_) + ")");
  Identity id = serverIdentity();
  auto t0 = Clock::now();
  if (!initialized_) {
    note("initdb");
    std::vector<std::string> args{binDir_ + "/initdb", "-D", dataDir_, "--auth=trust", "-U", "postgres",
                                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"};
    pid_t pid = spawn(id, args, logFile_, SIGKILL);
    auto status = waitChild(pid, milliseconds(120000));
    if (!status) {
      ::kill(pid, SIGKILL);
      waitChild(pid, milliseconds(5000));
      fail("initdb did not finish within 120 s");
    }
    if (*status != 0) fail(joinArgs(args) + " failed: " + describeWaitStatus(*status));
    initialized_ = true;
    databasesPending_ = true;
    note("initdb done in " + std::to_string(msSince(t0)) + " ms");
  }
  waitForOldProcesses();

  // A port we picked may be taken between our test bind and the server's:
  // pick another one then, but only before anyone could have seen it.
  const bool pickPort = port_ == 0 && opts_.port == 0;
  for (int attempt = 1;; ++attempt) {
    if (port_ == 0) port_ = opts_.port != 0 ? opts_.port : pickFreePort();
    std::uintmax_t logStart = fs::file_size(logFile_);
    launch();
    try {
      auto t1 = Clock::now();
      waitReady("postgres -p " + std::to_string(port_));
      note("accepting connections, pid " + std::to_string(pid_) + ", " + std::to_string(msSince(t1)) +
           " ms after launch");
      break;
    } catch (const std::runtime_error&) {
      if (running()) {  // half started (e.g. its first query failed): do not leave it behind
        ::kill(pid_, SIGKILL);
        reap(milliseconds(5000));
      }
      std::ifstream in(logFile_);
      in.seekg(std::streamoff(logStart));
      std::string newLog((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!pickPort || attempt >= 5 || newLog.find("Address already in use") == std::string::npos) throw;
      note("port " + std::to_string(port_) + " was taken meanwhile; picking another");
      port_ = 0;
    }
  }
  if (databasesPending_) {
    createDatabases();
    databasesPending_ = false;
  }
  note("started in " + std::to_string(msSince(t0)) + " ms");
}

void PgServer::restart() {
  if (running()) stopFast();
  start();
}

void PgServer::launch() {
  std::vector<std::string> args{binDir_ + "/postgres",
                                "-D", dataDir_,
                                "-p", std::to_string(port_),
                                "-c", "listen_addresses=127.0.0.1",
                                "-c", "unix_socket_directories=" + dataDir_,
                                "-c", "max_prepared_transactions=" + std::to_string(opts_.maxPreparedTransactions),
                                "-c", "fsync=on"};
  for (auto& s : opts_.settings) args.insert(args.end(), {"-c", s});
  note("launch " + joinArgs(args));
  // SIGQUIT = immediate shutdown: the postmaster takes its children along.
  pid_ = spawn(serverIdentity(), args, logFile_, SIGQUIT);
}

void PgServer::waitReady(const std::string& what) {
  const std::string ping = "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=postgres user=postgres connect_timeout=2";
  auto until = Clock::now() + opts_.startTimeout;
  for (;;) {
    if (!running()) fail(what + " exited during start-up (" + describeWaitStatus(lastStatus_) + ")");
    // Ready by its own account first (as pg_ctl -w checks), so a foreign
    // listener on the port can never pass for our server.
    if (postmasterReady() && PQping(ping.c_str()) == PQPING_OK) break;
    if (Clock::now() >= until) {
      ::kill(pid_, SIGKILL);
      reap(milliseconds(5000));
      fail(what + " did not accept connections within " + std::to_string(opts_.startTimeout.count()) + " ms");
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  // The port answers; make sure it is our server and not someone else's.
  std::string dir;
  try {
    auto rows = pgQuery(connString("postgres"), "SHOW data_directory");
    dir = rows.at(0).at(0);
  } catch (const std::exception& e) {
    fail(what + ": first query failed: " + e.what());
  }
  if (dir != dataDir_) fail("port " + std::to_string(port_) + " is served by another server (data directory " + dir + ")");
}

bool PgServer::postmasterReady() const {
  // postmaster.pid: line 1 the pid, line 8 the status ("starting",
  // "ready", ...). A crashed server leaves its old file, which the new
  // postmaster rewrites: hence the pid check.
  std::ifstream in(dataDir_ + "/postmaster.pid");
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (n == 1 && line != std::to_string(pid_)) return false;
    if (n == 8) return line.starts_with("ready");
  }
  return false;
}

void PgServer::createDatabases() {
  for (auto& db : opts_.databases) {
    try {
      pgQuery(connString("postgres"), "CREATE DATABASE " + quoteIdent(db));
    } catch (const std::exception& e) {
      fail("CREATE DATABASE " + db + ": " + e.what());
    }
  }
}

void PgServer::stopFast() { pgCtlStop("fast"); }

void PgServer::stopImmediate() { pgCtlStop("immediate"); }

void PgServer::kill9() {
  if (!running()) return;
  note("SIGKILL to postmaster " + std::to_string(pid_));
  ::kill(pid_, SIGKILL);
  if (!reap(opts_.stopTimeout)) fail("postmaster " + std::to_string(pid_) + " survived SIGKILL");
}

std::size_t PgServer::signalAll(int sig) {
  std::size_t n = 0;
  // The postmaster first, so it forks no new backend after the list is taken.
  if (running() && ::kill(pid_, sig) == 0) ++n;
  for (pid_t p : processesIn(dataDir_)) {
    if (p != pid_ && ::kill(p, sig) == 0) ++n;
  }
  return n;
}

void PgServer::pgCtlStop(const char* mode) {
  if (!running()) return;
  note(std::string("pg_ctl stop -m ") + mode);
  auto t0 = Clock::now();
  auto secs = std::max<long long>(1, std::chrono::duration_cast<std::chrono::seconds>(opts_.stopTimeout).count());
  std::vector<std::string> args{binDir_ + "/pg_ctl", "stop", "-D", dataDir_, "-m", mode, "-w", "-t", std::to_string(secs)};
  pid_t ctl = spawn(serverIdentity(), args, logFile_, SIGKILL);
  auto status = waitChild(ctl, opts_.stopTimeout + milliseconds(5000));
  if (!status) {
    ::kill(ctl, SIGKILL);
    waitChild(ctl, milliseconds(5000));
  }
  // pg_ctl waits for postmaster.pid to go; the process exits right after.
  bool stopped = reap(status && *status == 0 ? opts_.stopTimeout : milliseconds(0));
  if (!stopped) {
    ::kill(pid_, SIGKILL);
    reap(milliseconds(5000));
    fail(joinArgs(args) + " did not stop the server (" + (status ? describeWaitStatus(*status) : "timed out") +
         "); killed it");
  }
  if (!status || *status != 0) {
    fail(joinArgs(args) + " failed (" + (status ? describeWaitStatus(*status) : "timed out") +
         ") although the server exited");
  }
  note(std::string("stopped (") + mode + ") in " + std::to_string(msSince(t0)) + " ms");
}

void PgServer::waitForOldProcesses() {
  auto t0 = Clock::now();
  auto until = t0 + opts_.stopTimeout;
  for (bool waited = false;; waited = true) {
    auto pids = processesIn(dataDir_);
    if (pids.empty()) {
      if (waited) note("old server processes gone after " + std::to_string(msSince(t0)) + " ms");
      return;
    }
    if (!waited) note(std::to_string(pids.size()) + " old server processes still use the data directory; waiting");
    if (Clock::now() >= until) {
      std::string list;
      for (pid_t p : pids) list += " " + std::to_string(p);
      fail("processes still use the data directory after " + std::to_string(opts_.stopTimeout.count()) +
           " ms (pids" + list + "); PostgreSQL would refuse to start");
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
}

std::vector<std::vector<std::string>> pgQuery(const std::string& conn, const std::string& sql) {
  // Earlier entries are defaults: conn's own settings override them.
  const char* keys[] = {"connect_timeout", "options", "dbname", nullptr};
  const char* vals[] = {"10", "-c statement_timeout=60000", conn.c_str(), nullptr};
  std::unique_ptr<PGconn, decltype(&PQfinish)> c(PQconnectdbParams(keys, vals, 1), &PQfinish);
  if (!c) throw PgError("pgQuery: out of memory", "53200");
  if (PQstatus(c.get()) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(c.get());
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    throw PgError("pgQuery: cannot connect (" + conn + "): " + msg, "08001");
  }
  std::unique_ptr<PGresult, decltype(&PQclear)> r(PQexec(c.get(), sql.c_str()), &PQclear);
  ExecStatusType st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY) return {};
  if (st != PGRES_TUPLES_OK) {
    std::string msg = r ? PQresultErrorMessage(r.get()) : PQerrorMessage(c.get());
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    const char* state = r ? PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) : nullptr;
    throw PgError(msg + " [SQL: " + sql + "]", state != nullptr ? state : "");
  }
  std::vector<std::vector<std::string>> rows(std::size_t(PQntuples(r.get())));
  int cols = PQnfields(r.get());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    rows[i].reserve(std::size_t(cols));
    for (int j = 0; j < cols; ++j) rows[i].emplace_back(PQgetvalue(r.get(), int(i), j));
  }
  return rows;
}

}  // namespace keel::test
