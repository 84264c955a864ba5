#include "tools/chaos/host_side.h"

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "common/strict_json.h"

namespace keel::chaos {

HostSide::HostSide(const std::string& binDir, const std::string& dir, const std::vector<std::string>& agents,
                   std::uint32_t accounts, std::int64_t balance)
    : agents_(agents) {
  std::string hostsDir = dir + "/hosts";
  std::filesystem::create_directories(hostsDir);
  operations_ = writeHostOperations(hostsDir);
  for (const auto& a : agents) {
    HostOptions o;
    o.binDir = binDir;
    o.dir = hostsDir;
    o.name = a;
    o.accounts = accounts;
    o.balance = balance;
    hosts_[a].process = std::make_unique<HostProcess>(o);
  }
}

HostSide::~HostSide() {
  for (auto& [a, h] : hosts_) {
    if (h.paused) h.process->kill(SIGCONT);  // a stopped process cannot shut down
    h.process->stop();
  }
}

void HostSide::start() {
  for (auto& [a, h] : hosts_) {
    h.process->start();
    h.address = h.process->address();
  }
}

std::vector<std::string> HostSide::agentArgs(const std::string& agent) const {
  return {"--adapter", "host", "--host", "http://" + hosts_.at(agent).address, "--host-operations", operations_};
}

bool HostSide::kill(const std::string& agent) {
  auto& h = hosts_.at(agent);
  bool serving = h.process->running() && !h.paused;
  h.process->kill(SIGKILL);
  h.process->waitExit(std::chrono::milliseconds(2000));
  h.paused = false;
  return serving;
}

bool HostSide::restart(const std::string& agent) {
  try {
    hosts_.at(agent).process->start();
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keel-chaos: restarting keel-host of %s: %s\n", agent.c_str(), e.what());
    return false;
  }
}

bool HostSide::pause(const std::string& agent) {
  auto& h = hosts_.at(agent);
  if (!h.process->running() || h.paused) return false;
  h.process->kill(SIGSTOP);
  h.paused = true;
  return true;
}

void HostSide::resume(const std::string& agent) {
  auto& h = hosts_.at(agent);
  if (h.paused) h.process->kill(SIGCONT);
  h.paused = false;
}

bool HostSide::setFaults(const std::string& agent, const std::string& json) {
  try {
    hosts_.at(agent).process->setFaults(json);
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keel-chaos: %s\n", e.what());
    return false;
  }
}

void HostSide::heal() {
  for (const auto& a : agents_) {
    resume(a);
    if (!hosts_.at(a).process->running()) restart(a);
    setFaults(a, R"({"slow_ms":0,"drop_answers":0,"fail_rate":0,"crash_at":null})");
  }
}

std::string HostSide::get(const std::string& agent, const std::string& path) const {
  const auto& address = hosts_.at(agent).address;
  auto r = httpCall(address, "GET", path, "", std::chrono::milliseconds(30000));
  if (r.status != 200) {
    throw std::runtime_error("keel-host of " + agent + " at " + address + ": GET " + path + " answered " +
                             std::to_string(r.status) + " " + r.body + r.error);
  }
  return r.body;
}

HostProcess::Books HostSide::books(const std::string& agent) const { return hosts_.at(agent).process->books(); }

std::vector<std::string> HostSide::openKeys(const std::string& agent) const {
  std::vector<std::string> out;
  Json open = JsonReader::parse(get(agent, "/v1/open"));  // kept: the loop reads into it
  for (const auto& t : open["open"].array()) out.push_back(t["key"].str());
  return out;
}

std::map<std::string, std::string> HostSide::keyStates(const std::string& agent) const {
  std::map<std::string, std::string> out;
  Json keys = JsonReader::parse(get(agent, "/v1/keys"));
  for (const auto& k : keys["keys"].array()) out[k["key"].str()] = k["state"].str();
  return out;
}

}  // namespace keel::chaos
