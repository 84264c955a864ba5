#pragma once
// HostSide: the host systems behind keel-chaos's host agents (--adapter host
// and mixed): one keel-host (tools/host/, the reference host of
// docs/hosts.md) per host agent, with acct-0 .. acct-(N-1) opened by its
// own --accounts / --balance, which the fault injector kills, freezes and
// makes lose or fail calls (POST /admin/faults), and which the checker reads
// after healing: balances, holds and pending credits, open tries, and every
// idempotency key's state (GET /v1/keys).
//
// Control (start, kill, pause, faults, heal) runs on the fault injector's
// thread once the run is under way: keel-host is started with a
// parent-death signal tied to the starting thread, like the agents the
// injector restarts. Reads are plain HTTP on the address fixed at the first
// start and may run on any thread.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tools/host_process.h"

namespace keel::chaos {

class HostSide final {
 public:
  // `dir`: the run's cluster folder (each host's data and log in
  // dir/hosts); `agents`: the host agents, one keel-host each.
  HostSide(const std::string& binDir, const std::string& dir, const std::vector<std::string>& agents,
           std::uint32_t accounts, std::int64_t balance);
  ~HostSide();
  HostSide(const HostSide&) = delete;
  HostSide& operator=(const HostSide&) = delete;

  void start();  // every host, the first time
  bool has(const std::string& agent) const { return hosts_.count(agent) != 0; }
  const std::vector<std::string>& agents() const { return agents_; }
  // keel-agent's flags in front of `agent`'s host.
  std::vector<std::string> agentArgs(const std::string& agent) const;

  // Faults; each false if it could not take effect (the host was not
  // serving). kill: SIGKILL; restart() brings it back.
  bool kill(const std::string& agent);
  bool restart(const std::string& agent);
  bool pause(const std::string& agent);
  void resume(const std::string& agent);
  bool setFaults(const std::string& agent, const std::string& json);
  // Back to serving, fault switches off: resumed if paused, started if down.
  void heal();

  // Reads (throw if the host does not answer).
  HostProcess::Books books(const std::string& agent) const;
  std::vector<std::string> openKeys(const std::string& agent) const;
  std::map<std::string, std::string> keyStates(const std::string& agent) const;  // key -> state
  std::string log(const std::string& agent) const { return hosts_.at(agent).process->log(); }

 private:
  struct Host {
    std::unique_ptr<HostProcess> process;
    std::string address;  // fixed at the first start
    bool paused = false;
  };
  std::string get(const std::string& agent, const std::string& path) const;

  std::string operations_;  // the --host-operations file
  std::vector<std::string> agents_;
  std::map<std::string, Host> hosts_;
};

}  // namespace keel::chaos
