#include "tools/etcd_cluster.h"

#include "schemas/etcd.grpc.pb.h"
#include "tools/child_process.h"
#include "tools/free_port.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <thread>

extern char** environ;

namespace keel::test {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// Our environment minus ETCD_* (etcd reads those as flags).
std::vector<std::string> childEnv() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!std::string_view(*e).starts_with("ETCD_")) env.emplace_back(*e);
  }
  return env;
}

// Maintenance.Status of one member, or nullopt if it does not answer within
// `timeout`.
std::optional<etcdserverpb::StatusResponse> memberStatus(const std::string& endpoint, milliseconds timeout) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = etcdserverpb::Maintenance::NewStub(
      grpc::CreateCustomChannel(endpoint, grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  etcdserverpb::StatusResponse resp;
  if (!stub->Status(&ctx, etcdserverpb::StatusRequest(), &resp).ok()) return std::nullopt;
  return resp;
}

}  // namespace

EtcdCluster::EtcdCluster(EtcdClusterOptions opts) : opts_(std::move(opts)) {
  if (opts_.members == 0) throw std::invalid_argument("EtcdCluster: no members");
  binary_ = opts_.etcdBinary;
  if (binary_.empty()) {
    const char* env = std::getenv("KEEL_ETCD_BIN");
    binary_ = env != nullptr && *env != '\0' ? env : "/usr/bin/etcd";
  }
  if (::access(binary_.c_str(), X_OK) != 0) {
    throw std::runtime_error("EtcdCluster: no executable " + binary_ +
                             ": install etcd-server (scripts/install-deps.sh) or set KEEL_ETCD_BIN");
  }
  std::string parent = opts_.parentDir;
  if (parent.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    parent = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string tmpl = parent + "/keel-etcd-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error("EtcdCluster: mkdtemp in " + parent + ": " + std::strerror(errno));
  }
  baseDir_ = tmpl;

  std::mt19937_64 rng(std::random_device{}());
  std::ostringstream token;
  token << "keel-" << ::getpid() << "-" << std::hex << rng();
  token_ = token.str();

  std::set<unsigned> taken;
  auto freshPort = [&] {
    for (;;) {
      unsigned p = pickFreePort();
      if (taken.insert(p).second) return p;
    }
  };
  for (std::size_t i = 0; i < opts_.members; ++i) {
    Member m;
    m.name = "m" + std::to_string(i);
    std::string dir = baseDir_ + "/" + m.name;
    fs::create_directories(dir);
    m.dataDir = dir + "/data";
    m.logFile = dir + "/etcd.log";
    m.clientPort = freshPort();
    m.peerPort = freshPort();
    initialCluster_ += (i == 0 ? "" : ",") + m.name + "=http://127.0.0.1:" + std::to_string(m.peerPort);
    members_.push_back(std::move(m));
  }
}

EtcdCluster::~EtcdCluster() {
  for (auto& m : members_) {
    if (m.pid <= 0) continue;
    if (m.paused) ::kill(m.pid, SIGCONT);
    ::kill(m.pid, SIGKILL);
    reap(m, milliseconds(5000));
  }
  const char* keep = std::getenv("KEEL_ETCD_KEEP");
  if (keep != nullptr && std::string(keep) == "1") {
    std::cerr << "KEEL_ETCD_KEEP=1: etcd data and logs kept in " << baseDir_ << "\n";
    return;
  }
  std::error_code ec;
  fs::remove_all(baseDir_, ec);
}

EtcdCluster::Member& EtcdCluster::at(std::size_t i) {
  if (i >= members_.size()) throw std::out_of_range("EtcdCluster: no member " + std::to_string(i));
  return members_[i];
}

const EtcdCluster::Member& EtcdCluster::at(std::size_t i) const {
  if (i >= members_.size()) throw std::out_of_range("EtcdCluster: no member " + std::to_string(i));
  return members_[i];
}

std::vector<std::string> EtcdCluster::endpoints() const {
  std::vector<std::string> eps;
  for (std::size_t i = 0; i < members_.size(); ++i) eps.push_back(endpoint(i));
  return eps;
}

std::string EtcdCluster::endpoint(std::size_t i) const { return "127.0.0.1:" + std::to_string(at(i).clientPort); }

pid_t EtcdCluster::pid(std::size_t i) const { return at(i).pid; }

bool EtcdCluster::paused(std::size_t i) const { return at(i).paused; }

const std::string& EtcdCluster::logFile(std::size_t i) const { return at(i).logFile; }

std::string EtcdCluster::logTail(std::size_t i, std::size_t lines) const {
  const Member& m = at(i);
  std::string tail = lastLinesOf(m.logFile, lines).value_or("");
  // What etcd said before its logger was up (bad flags), and our own notes.
  std::string out = lastLinesOf(m.logFile + ".out", lines).value_or("");
  if (!out.empty()) tail += (tail.empty() ? "" : "\n") + std::string("--- ") + m.logFile + ".out ---\n" + out;
  return tail.empty() ? "(" + m.logFile + " is empty)" : tail;
}

void EtcdCluster::note(const Member& m, const std::string& what) const {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::system_clock::now().time_since_epoch()).count();
  std::time_t secs = std::time_t(us / 1000000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  std::ofstream out(m.logFile + ".out", std::ios::app);
  out << stamp << "." << std::setw(6) << std::setfill('0') << us % 1000000 << "Z keel EtcdCluster: " << what << "\n";
}

void EtcdCluster::fail(const Member& m, const std::string& what) const {
  std::size_t i = std::size_t(&m - members_.data());
  throw std::runtime_error("EtcdCluster (" + baseDir_ + ") member " + m.name + " (" + endpoint(i) + "): " + what +
                           "\n--- last lines of " + m.logFile + " ---\n" + logTail(i));
}

bool EtcdCluster::running(std::size_t i) {
  Member& m = at(i);
  if (m.pid <= 0) return false;
  int status = 0;
  pid_t r = ::waitpid(m.pid, &status, WNOHANG);
  if (r == 0) return true;
  if (r == m.pid) note(m, "pid " + std::to_string(m.pid) + " ended: " + describeWaitStatus(status));
  m.pid = -1;
  m.paused = false;
  return false;
}

bool EtcdCluster::reap(Member& m, milliseconds timeout) {
  if (m.pid <= 0) return true;
  auto status = waitChild(m.pid, timeout);
  if (!status) return false;
  note(m, "pid " + std::to_string(m.pid) + " ended: " + describeWaitStatus(*status));
  m.pid = -1;
  m.paused = false;
  return true;
}

void EtcdCluster::launch(Member& m) {
  auto url = [](unsigned port) { return "http://127.0.0.1:" + std::to_string(port); };
  std::vector<std::string> args{binary_,
                                "--name", m.name,
                                "--data-dir", m.dataDir,
                                "--listen-client-urls", url(m.clientPort),
                                "--advertise-client-urls", url(m.clientPort),
                                "--listen-peer-urls", url(m.peerPort),
                                "--initial-advertise-peer-urls", url(m.peerPort),
                                "--initial-cluster", initialCluster_,
                                // Ignored by a member whose data directory
                                // is initialised: a restart rejoins.
                                "--initial-cluster-state", "new",
                                "--initial-cluster-token", token_,
                                "--heartbeat-interval", std::to_string(opts_.heartbeatMs),
                                "--election-timeout", std::to_string(opts_.electionTimeoutMs),
                                "--pre-vote",
                                "--auto-compaction-retention", opts_.autoCompactionRetention,
                                "--logger", "zap",
                                "--log-outputs", m.logFile};
  args.insert(args.end(), opts_.extraArgs.begin(), opts_.extraArgs.end());
  std::string cmd;
  for (auto& a : args) cmd += (cmd.empty() ? "" : " ") + a;
  note(m, "launch " + cmd);
  m.pid = spawnChild("EtcdCluster", args, childEnv(), m.logFile + ".out", SIGKILL);
  m.paused = false;
}

void EtcdCluster::waitReady(const std::vector<std::size_t>& which) {
  auto t0 = Clock::now();
  auto until = t0 + opts_.startTimeout;
  std::vector<std::size_t> left = which;
  while (!left.empty()) {
    for (auto it = left.begin(); it != left.end();) {
      Member& m = members_[*it];
      if (!running(*it)) fail(m, "exited during start-up");
      auto st = memberStatus(endpoint(*it), milliseconds(300));
      if (st && st->leader() != 0) {
        note(m, "answers (member id " + std::to_string(st->header().member_id()) + ", leader " +
                    std::to_string(st->leader()) + ") " +
                    std::to_string(std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count()) +
                    " ms after the wait began");
        it = left.erase(it);
      } else {
        ++it;
      }
    }
    if (left.empty()) break;
    if (Clock::now() >= until) {
      fail(members_[left.front()], "did not answer with a known leader within " +
                                       std::to_string(opts_.startTimeout.count()) + " ms");
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
}

void EtcdCluster::start() {
  std::vector<std::size_t> started;
  for (std::size_t i = 0; i < members_.size(); ++i) {
    if (running(i)) continue;
    launch(members_[i]);
    started.push_back(i);
  }
  try {
    waitReady(started);
  } catch (...) {
    for (std::size_t i : started) kill9(i);
    throw;
  }
}

void EtcdCluster::kill9(std::size_t i) {
  Member& m = at(i);
  if (!running(i)) return;
  note(m, "SIGKILL to pid " + std::to_string(m.pid));
  ::kill(m.pid, SIGKILL);
  if (!reap(m, milliseconds(5000))) fail(m, "pid " + std::to_string(m.pid) + " survived SIGKILL for 5 s");
}

void EtcdCluster::stop(std::size_t i) {
  Member& m = at(i);
  if (!running(i)) return;
  if (m.paused) resume(i);
  note(m, "SIGTERM to pid " + std::to_string(m.pid));
  ::kill(m.pid, SIGTERM);
  if (reap(m, opts_.stopTimeout)) return;
  note(m, "still running " + std::to_string(opts_.stopTimeout.count()) + " ms after SIGTERM: SIGKILL");
  kill9(i);
}

void EtcdCluster::restart(std::size_t i) {
  Member& m = at(i);
  if (running(i)) stop(i);
  launch(m);
  try {
    waitReady({i});
  } catch (...) {
    kill9(i);
    throw;
  }
}

void EtcdCluster::pause(std::size_t i) {
  Member& m = at(i);
  if (!running(i) || m.paused) return;
  note(m, "SIGSTOP to pid " + std::to_string(m.pid));
  ::kill(m.pid, SIGSTOP);
  m.paused = true;
  // Every thread stopped: /proc/PID/task/TID/stat's state (after the
  // command's closing parenthesis) reads 'T'.
  auto allStopped = [&] {
    std::error_code ec;
    bool any = false;
    for (const auto& t : std::filesystem::directory_iterator("/proc/" + std::to_string(m.pid) + "/task", ec)) {
      std::ifstream f(t.path() / "stat");
      std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      auto close = stat.rfind(')');
      if (close == std::string::npos || close + 2 >= stat.size()) continue;  // the thread is gone
      if (stat[close + 2] != 'T' && stat[close + 2] != 't') return false;
      any = true;
    }
    return any;
  };
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!allStopped()) {
    if (std::chrono::steady_clock::now() >= until) {
      note(m, "not every thread of pid " + std::to_string(m.pid) + " reads stopped after 2 s; going on");
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void EtcdCluster::resume(std::size_t i) {
  Member& m = at(i);
  if (!running(i) || !m.paused) return;
  note(m, "SIGCONT to pid " + std::to_string(m.pid));
  ::kill(m.pid, SIGCONT);
  m.paused = false;
}

int EtcdCluster::leaderIndex(milliseconds timeout) {
  auto until = Clock::now() + timeout;
  for (;;) {
    for (std::size_t i = 0; i < members_.size(); ++i) {
      if (!running(i) || members_[i].paused) continue;
      auto st = memberStatus(endpoint(i), milliseconds(300));
      if (st && st->leader() != 0 && st->leader() == st->header().member_id()) return int(i);
    }
    if (Clock::now() >= until) return -1;
    std::this_thread::sleep_for(milliseconds(50));
  }
}

std::string clusterSection(const std::vector<std::string>& endpoints, const std::string& prefix, int leaseTtlS) {
  std::ostringstream t;
  t << "[cluster]\netcd = [";
  for (std::size_t i = 0; i < endpoints.size(); ++i) t << (i ? ", " : "") << '"' << endpoints[i] << '"';
  t << "]\nprefix = \"" << prefix << "\"\nlease_ttl_s = " << leaseTtlS << "\n";
  return t.str();
}

std::string clusterSection(const EtcdCluster& etcd, const std::string& prefix, int leaseTtlS) {
  return clusterSection(etcd.endpoints(), prefix, leaseTtlS);
}

}  // namespace keel::test
