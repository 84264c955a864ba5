#pragma once
// LocalCluster: starts a coordinator and ledger agents as real processes on
// loopback, with data in one folder, for keel-demo and the integration
// tests. Ports are picked by the kernel on first start (port 0) and kept
// across restarts, so a restarted process is found where it was.
//
// Every process it started is stopped by stopAll() or the destructor
// (SIGTERM, then SIGKILL after a grace period).
//
// A process's starts say --init until it has once served, so its data
// directory is created by the first start; a restart without it finds the
// directory or is refused (as in production).

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "tools/free_port.h"  // pickFreePort

namespace keel {

class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { stop(); }

  // Starts exe with args; stdout and stderr are appended to logFile. Extra
  // environment entries ("NAME=value") are added to the inherited ones.
  void start(const std::string& exe, const std::vector<std::string>& args, const std::string& logFile,
             const std::vector<std::string>& env = {});
  bool running();
  // Sends sig; waits for the exit when sig is SIGKILL.
  void signal(int sig);
  // SIGTERM, wait up to `grace`, then SIGKILL.
  void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(3000));
  // Waits until the process exited; returns its wait status, or -1 on timeout.
  int waitExit(std::chrono::milliseconds timeout);
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int status_ = 0;
};

struct ClusterOptions {
  std::string binDir;                      // where keel-coordinator / keel-agent are
  std::string baseDir;                     // data and logs; created if missing
  std::vector<std::string> agents = {"bank-a", "bank-b"};
  std::string coordinatorExtraToml;        // lines added to [coordinator]
  // Coordinators: more than one needs a [cluster] section (clusterToml,
  // e.g. from EtcdCluster). Coordinator i has node id i + 1.
  int coordinators = 1;
  std::string clusterToml;                 // a whole [cluster] section, or empty
  // Coordinator i's own [cluster] section, in place of clusterToml (keel-chaos
  // gives each coordinator its own fault proxies in front of etcd, so the
  // endpoints differ). Same shape as clusterToml; only the named ones.
  std::map<int, std::string> clusterTomlFor;
  std::chrono::milliseconds startTimeout{15000};
  // Agents ask the coordinator about branches PREPARED this long (0 = never).
  std::uint32_t agentInDoubtQueryMs = 2000;
  std::vector<std::string> agentExtraArgs;  // added to every keel-agent command line
  // Mutual TLS (docs/security.md): a folder of certificates made by
  // makeCertificates() (tools/certs.h) with at least "keel-coordinator",
  // "keel-operator" and every agent's name. The coordinator presents
  // keel-coordinator and takes keel-operator as its operator; each agent
  // presents its name and admits keel-coordinator. Empty: every process is
  // started insecure (plaintext on loopback).
  std::string tlsDir;
  std::string coordinatorTailToml;  // whole sections added at the end of the coordinator's config ([limits])
  // Agents run inside the coordinator ([participants] NAME =
  // "embedded:FILE", participant/embedded.h) rather than as keel-agent
  // processes: a ledger agent on <baseDir>/NAME unless setEmbeddedConfig
  // says otherwise. startAgent and the agent-process calls are not for them.
  std::set<std::string> embedded;
  std::string tlsExtraToml;         // lines added to the coordinator's [tls] (TLS only)
};

class LocalCluster {
 public:
  explicit LocalCluster(ClusterOptions opts);
  ~LocalCluster();

  // Starts every agent, then the coordinator; waits until each serves.
  void startAll();
  void stopAll();

  // `failpoints` is a KEEL_FAILPOINTS value for this start only.
  void startAgent(const std::string& name, const std::string& failpoints = "");
  // i: which coordinator (0 .. coordinators-1).
  void startCoordinator(const std::string& failpoints = "", int i = 0);
  void killAgent(const std::string& name, int sig = 9);
  void killCoordinator(int sig = 9, int i = 0);
  void stopAgent(const std::string& name);
  void stopCoordinator(int i = 0);
  bool coordinatorRunning(int i = 0);
  bool agentRunning(const std::string& name);
  // Waits until the process exits by itself (e.g. a failpoint crash).
  bool waitCoordinatorExit(std::chrono::milliseconds timeout, int i = 0);
  // Its wait status once it exited by itself (-1 if still running after `timeout`).
  int coordinatorExitStatus(std::chrono::milliseconds timeout, int i = 0) { return coordinator_[i]->waitExit(timeout); }
  bool waitAgentExit(const std::string& name, std::chrono::milliseconds timeout);

  // The address the coordinator's config gives for a participant (default:
  // the agent's own address). keel-chaos puts a fault proxy in between.
  void setParticipantAddress(const std::string& name, const std::string& addr) { participantAddr_[name] = addr; }
  // An embedded agent's config file (a keel-agent config: [agent] and its
  // adapter's sections), written to <baseDir>/NAME.embedded.toml.
  void setEmbeddedConfig(const std::string& name, const std::string& toml);
  bool embedded(const std::string& name) const { return opts_.embedded.count(name) != 0; }
  // An embedded agent run as a keel-agent on its own config file (the
  // coordinator must be stopped: it holds the data directory), insecure on
  // a free loopback port; returns that address. stopAgent stops it.
  std::string startEmbeddedAsAgent(const std::string& name);
  // Extra command-line arguments for one agent's next starts.
  void setAgentArgs(const std::string& name, std::vector<std::string> args) { agentArgs_[name] = std::move(args); }
  pid_t coordinatorPid(int i = 0) const { return coordinator_[i]->pid(); }
  pid_t agentPid(const std::string& name) const { return agents_.at(name).pid(); }

  const std::string& coordinatorAddress(int i = 0) const { return coordAddr_[i]; }
  const std::vector<std::string>& coordinatorAddresses() const { return coordAddr_; }
  int coordinatorCount() const { return opts_.coordinators; }
  const std::string& agentAddress(const std::string& name) const { return agentAddr_.at(name); }
  // "NAME@host:port": what a client dials (over TLS the agent must present NAME).
  std::string agentPeer(const std::string& name) const { return name + "@" + agentAddr_.at(name); }
  const std::vector<std::string>& agentNames() const { return opts_.agents; }
  const std::string& baseDir() const { return opts_.baseDir; }
  std::string coordinatorLog(int i = 0) const { return opts_.baseDir + "/" + coordinatorName(i) + ".log"; }
  // "coordinator" for the first, "coordinator-2", "coordinator-3", ...
  static std::string coordinatorName(int i) { return i == 0 ? "coordinator" : "coordinator-" + std::to_string(i + 1); }
  std::string agentLog(const std::string& name) const { return opts_.baseDir + "/" + name + ".log"; }

 private:
  std::string waitReady(const std::string& readyFile, ChildProcess& p, const std::string& what);
  void writeCoordinatorConfig(int i);

  ClusterOptions opts_;
  std::map<std::string, ChildProcess> agents_;
  std::map<std::string, std::string> agentAddr_;
  std::map<std::string, std::string> participantAddr_;
  std::map<std::string, std::vector<std::string>> agentArgs_;
  std::vector<std::unique_ptr<ChildProcess>> coordinator_;
  std::vector<std::string> coordAddr_;
  // Processes (agent names, " " + coordinatorName(i)) that have served once
  // (no agent name has a space).
  std::set<std::string> servedOnce_;
};


// Waits until `p` wrote its --ready-file (its first line: the bound
// host:port) and returns it; throws if `p` exits first or `timeout` passes.
std::string waitForReadyFile(const std::string& readyFile, ChildProcess& p, const std::string& what,
                             std::chrono::milliseconds timeout);

// Directory of the running executable (build/bin for every Keel binary).
std::string selfBinDir();
// A fresh directory under $TMPDIR or /tmp, e.g. "/tmp/keel-demo-Ab12Cd".
std::string makeTempDir(const std::string& prefix);

}  // namespace keel
