#pragma once
// keel-chaos --cluster: the etcd side of a run. A real 3-member etcd
// cluster on loopback (tools/etcd_cluster.h) in a fresh folder, and for
// each coordinator a fault proxy in front of every member, so that one
// coordinator can be cut off from etcd while it still reaches the agents.
// It also reads what the coordinators left in etcd for the checker: the
// decision keys, sampled once a second during the run (a decision is
// created once and never changed, so every value seen is that seq's
// decision for good), and the request fates, every 30 s and after healing
// (each lives ~5 minutes under a lease).
//
// Threads: etcd() is driven by one thread, the fault injector's (members it
// restarts get SIGKILL when the thread that started them exits: see
// tools/etcd_cluster.h). cut(), reconnect() and heal() are called from that
// thread too. The sampler runs on a thread of its own; read(), plantAbort()
// and keepLogs() are for the main thread once the sampler has stopped.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/etcd/etcd_client.h"
#include "tools/chaos/checker.h"
#include "tools/chaos/fault_proxy.h"
#include "tools/etcd_cluster.h"

namespace keel::chaos {

class EtcdSide {
 public:
  // Starts the etcd cluster (its folder made under `parentDir`) and the
  // proxies of `coordinators` coordinators. Every key of the run lives under
  // `prefix`.
  EtcdSide(const std::string& parentDir, std::size_t coordinators, std::uint32_t leaseTtlS, std::string prefix);
  ~EtcdSide();
  EtcdSide(const EtcdSide&) = delete;
  EtcdSide& operator=(const EtcdSide&) = delete;

  // Coordinator i's [cluster] section: its etcd endpoints are its proxies.
  std::string clusterToml(std::size_t i) const;
  const std::string& prefix() const { return prefix_; }
  test::EtcdCluster& etcd() { return etcd_; }

  // Coordinator i cut off from etcd: its proxies forward nothing (the
  // connections stay open, as in a partition). reconnect(): forwarding
  // again, the cut connections reset (their streams lost bytes).
  void cut(std::size_t i);
  void reconnect(std::size_t i);
  // Every coordinator reconnected, paused members continued, stopped ones
  // restarted.
  void heal();

  void startSampling();
  void stopSampling();
  // After healing (sampling stopped): every decision seen, with those read
  // now, and every request fate.
  EtcdView read();
  // Of the last read(): decision keys still there.
  std::size_t decisionsLeft() const { return left_; }
  // The self-check's plant: ABORT for `seq` (a committed interaction's),
  // created only if no decision key of it exists. False if one did.
  bool plantAbort(std::uint64_t seq);
  // Each member's logs copied into `dir` (the etcd folder goes with this
  // object).
  void keepLogs(const std::string& dir) const;

 private:
  // One read of every decision key into decisions_; of every request fate
  // into requests_.
  void readDecisions(etcd::Client& c);
  void readRequests(etcd::Client& c);
  std::string decisionsPrefix() const { return prefix_ + "/decisions/"; }

  std::string prefix_;
  std::uint32_t leaseTtlS_;
  test::EtcdCluster etcd_;
  std::vector<std::vector<std::unique_ptr<FaultProxy>>> proxies_;  // [coordinator][member]
  std::set<std::size_t> cut_;
  std::unique_ptr<etcd::Client> reader_;  // main thread
  std::mutex mu_;
  std::map<std::uint64_t, EtcdDecision> decisions_;  // GUARDED_BY(mu_)
  std::map<std::string, EtcdRequestFate> requests_;  // GUARDED_BY(mu_)
  std::size_t left_ = 0;
  std::atomic<bool> samplerStop_{false};
  std::thread sampler_;
};

}  // namespace keel::chaos
