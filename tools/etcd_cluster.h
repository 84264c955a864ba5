#pragma once
// EtcdCluster: a real etcd cluster (N members of /usr/bin/etcd, 3 by
// default) on 127.0.0.1 for tests, demos and chaos runs. Each member has
// its own data directory and log under one temporary folder, a client and a
// peer port picked free at construction. Tests kill (kill9), stop, restart,
// pause and resume single members, and ask which one leads.
//
// Ownership: an EtcdCluster owns the etcd processes it started (children of
// this process) and the folder it created. The destructor kills every
// member still running (SIGKILL, after SIGCONT to a paused one) and removes
// the folder unless KEEL_ETCD_KEEP=1. Not thread-safe: one thread drives it.
//
// Caveats
// - A member gets SIGKILL when the thread that started it exits
//   (PR_SET_PDEATHSIG), so a test killed by a timeout leaks no etcd; its
//   folder does stay behind in /tmp then. Start members from a thread that
//   outlives them (GoogleTest's main thread).
// - Ports are picked below 32768 (outside the kernel's ephemeral range) and
//   stay for the life of the object, so restart() rejoins with the same
//   URLs. Another process could still take one between the pick and
//   etcd's bind: start() then fails with the member's log, which says
//   "address already in use".
// - Never port 2379/2380: a system etcd (Debian's etcd-server service) may
//   be there, and tests must not touch it.
// - Timing defaults are made for fast tests (heartbeat 50 ms, election 500
//   ms): a leader is elected within about a second, and a killed leader is
//   replaced about as fast. They are far too tight for a loaded machine in
//   production, which is not what this is for.
// - Members keep fsync (etcd 3.4 has no switch to turn it off); put the
//   folder on tmpfs (parentDir = "/dev/shm") for speed when durability
//   across a machine crash does not matter (a process crash keeps the data
//   either way).
// - ETCD_* variables of this process's environment are not passed on (etcd
//   would read them as flags).
// - leaderIndex() asks each member over gRPC (Maintenance.Status, from
//   schemas/etcd.proto) which member it follows; the answer is the member
//   that reports itself as the leader.

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace keel::test {

struct EtcdClusterOptions {
  std::size_t members = 3;
  // Where etcd is; empty = $KEEL_ETCD_BIN, else /usr/bin/etcd.
  std::string etcdBinary;
  // The folder the temporary folder is made in; empty = $TMPDIR, else /tmp.
  std::string parentDir;
  int heartbeatMs = 50;
  int electionTimeoutMs = 500;
  // etcd's --auto-compaction-retention (periodic mode): "1m" keeps a
  // minute of history; "0" is off. Keel reads only current values. Without
  // compaction every revision of a long run stays in etcd's index, and a
  // restarted member rebuilds it before it answers: after 60 s of
  // keel-bench --cluster 1 (118 MB) that took ~5 s against ~1 s empty, and
  // a 30-minute keel-chaos --cluster run's restart of a member outlasted
  // startTimeout.
  std::string autoCompactionRetention = "1m";
  std::vector<std::string> extraArgs;  // appended to every member's command line
  std::chrono::milliseconds startTimeout{20000};  // until every member answers and knows a leader
  std::chrono::milliseconds stopTimeout{10000};   // SIGTERM, then SIGKILL
};

class EtcdCluster final {
 public:
  explicit EtcdCluster(EtcdClusterOptions opts = {});
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  // Starts every member that is not running and waits until each answers
  // and knows a leader. Throws std::runtime_error naming the member, with
  // the end of its log, when one exits or does not answer in time.
  void start();

  std::size_t size() const { return members_.size(); }
  // "127.0.0.1:port" of each member's client URL, in member order.
  std::vector<std::string> endpoints() const;
  std::string endpoint(std::size_t i) const;

  // SIGKILL, and reap. No-op if the member is not running.
  void kill9(std::size_t i);
  // SIGTERM, and wait up to stopTimeout; SIGKILL after that.
  void stop(std::size_t i);
  // Starts member i again on its data directory and ports (it rejoins the
  // cluster with the state it had); stops it first if it is running. Waits
  // until it answers and knows a leader (startTimeout).
  void restart(std::size_t i);
  // SIGSTOP / SIGCONT: a member that hangs without dying. pause returns
  // once every thread of the member is stopped (at most 2 s): a signal
  // reaches a thread running on another CPU a moment later, and a request
  // sent in that moment could still be served.
  void pause(std::size_t i);
  void resume(std::size_t i);
  bool running(std::size_t i);
  bool paused(std::size_t i) const;

  // The index of the member that says it is the leader, asking the running,
  // unpaused members until one does or `timeout` passes; -1 then.
  int leaderIndex(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

  pid_t pid(std::size_t i) const;
  const std::string& baseDir() const { return baseDir_; }
  const std::string& logFile(std::size_t i) const;
  // The last `lines` lines of member i's log, for failure messages.
  std::string logTail(std::size_t i, std::size_t lines = 20) const;

 private:
  struct Member {
    std::string name;
    std::string dataDir;
    std::string logFile;
    unsigned clientPort = 0;
    unsigned peerPort = 0;
    pid_t pid = -1;  // our child; -1 when not running
    bool paused = false;
  };

  Member& at(std::size_t i);
  const Member& at(std::size_t i) const;
  void launch(Member& m);
  void waitReady(const std::vector<std::size_t>& which);
  bool reap(Member& m, std::chrono::milliseconds timeout);
  void note(const Member& m, const std::string& what) const;
  [[noreturn]] void fail(const Member& m, const std::string& what) const;

  EtcdClusterOptions opts_;
  std::string binary_;
  std::string baseDir_;
  std::string token_;
  std::string initialCluster_;
  std::vector<Member> members_;
};

// A coordinator's whole `[cluster]` section (docs/cluster.md) for the
// members of `etcd`: their endpoints, `prefix` and `lease_ttl_s`.
std::string clusterSection(const EtcdCluster& etcd, const std::string& prefix, int leaseTtlS);
// The same for other endpoints (e.g. fault proxies in front of the members).
std::string clusterSection(const std::vector<std::string>& endpoints, const std::string& prefix, int leaseTtlS);

}  // namespace keel::test
