#include "tools/chaos/etcd_side.h"

#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <sstream>

#include "coordinator/cluster.h"
#include "common/types.h"

namespace keel::chaos {

namespace {

test::EtcdClusterOptions etcdOptions(const std::string& parentDir) {
  test::EtcdClusterOptions o;
  o.members = 3;
  o.parentDir = parentDir;
  // A member restarted on a machine the load keeps busy may take a while to
  // rejoin; given up, it would stay down for the rest of the run.
  o.startTimeout = std::chrono::seconds(60);
  return o;
}

std::uint64_t digits(std::string_view s) {
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size() ? v : 0;
}

// Every key under `prefix`, a page at a time (a run leaves tens of
// thousands of request fates: more than one gRPC message holds). Pages are
// large: etcd 3.4 walks every key from a page's start to the range's end
// for each page (it counts them all, then cuts at the limit), so 1,000-key
// pages over the ~150,000 request fates of a 30-minute run cost ~150 such
// walks each time, enough to stall etcd past the coordinators' lease TTL.
void forEachKey(etcd::Client& c, const std::string& prefix, const std::function<void(const etcd::KeyValue&)>& fn) {
  std::string from = prefix;
  const std::string end = etcd::prefixEnd(prefix);
  for (;;) {
    auto r = c.rangeSync(from, end, 20000);
    for (const auto& kv : r.kvs) fn(kv);
    if (!r.more || r.kvs.empty()) break;
    from = r.kvs.back().key + '\0';
  }
}

}  // namespace

EtcdSide::EtcdSide(const std::string& parentDir, std::size_t coordinators, std::uint32_t leaseTtlS, std::string prefix)
    : prefix_(std::move(prefix)), leaseTtlS_(leaseTtlS), etcd_(etcdOptions(parentDir)) {
  etcd_.start();
  for (std::size_t c = 0; c < coordinators; ++c) {
    proxies_.emplace_back();
    for (std::size_t m = 0; m < etcd_.size(); ++m) {
      auto ep = etcd_.endpoint(m);
      auto colon = ep.rfind(':');
      proxies_.back().push_back(std::make_unique<FaultProxy>(ep.substr(0, colon), std::stoul(ep.substr(colon + 1))));
    }
  }
  reader_ = std::make_unique<etcd::Client>(etcd_.endpoints());
}

EtcdSide::~EtcdSide() { stopSampling(); }

std::string EtcdSide::clusterToml(std::size_t i) const {
  std::ostringstream t;
  t << "[cluster]\netcd = [";
  for (std::size_t m = 0; m < proxies_[i].size(); ++m) {
    t << (m ? ", " : "") << "\"127.0.0.1:" << proxies_[i][m]->port() << "\"";
  }
  t << "]\nprefix = \"" << prefix_ << "\"\nlease_ttl_s = " << leaseTtlS_ << "\n";
  return t.str();
}

void EtcdSide::cut(std::size_t i) {
  for (auto& p : proxies_[i]) p->setBlackhole(true);
  cut_.insert(i);
}

void EtcdSide::reconnect(std::size_t i) {
  for (auto& p : proxies_[i]) {
    p->heal();
    p->resetAll();
  }
  cut_.erase(i);
}

void EtcdSide::heal() {
  auto cut = cut_;
  for (auto i : cut) reconnect(i);
  for (std::size_t m = 0; m < etcd_.size(); ++m) {
    if (etcd_.paused(m)) etcd_.resume(m);
  }
  for (std::size_t m = 0; m < etcd_.size(); ++m) {
    if (etcd_.running(m)) continue;
    try {
      etcd_.restart(m);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "keel-chaos: restarting etcd member %zu: %s\n", m, e.what());
    }
  }
}

void EtcdSide::readDecisions(etcd::Client& c) {
  std::map<std::uint64_t, std::pair<std::string, std::string>> now;  // seq -> key, value
  forEachKey(c, decisionsPrefix(), [&](const etcd::KeyValue& kv) {
    auto slash = kv.key.rfind('/');
    now[digits(std::string_view(kv.key).substr(slash + 1))] = {kv.key, kv.value};
  });
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [seq, kv] : now) {
    auto [at, fresh] = decisions_.try_emplace(seq);
    EtcdDecision& d = at->second;
    if (!fresh) {
      if (kv.second != d.value && d.laterValue.empty()) d.laterValue = kv.second;
      continue;
    }
    d.key = kv.first;
    d.value = kv.second;
    auto decoded = ClusterDecision::decode(kv.second);
    d.malformed = !decoded || seq == 0;
    if (decoded) {
      d.commit = decoded->commit;
      d.branches = decoded->branches;
    }
  }
}

void EtcdSide::readRequests(etcd::Client& c) {
  const std::string requests = prefix_ + "/requests/";
  std::map<std::string, std::string> now;
  forEachKey(c, requests, [&](const etcd::KeyValue& kv) { now[kv.key.substr(requests.size())] = kv.value; });
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [id, value] : now) {
    auto [at, fresh] = requests_.try_emplace(id);
    EtcdRequestFate& f = at->second;
    if (!fresh) {
      if (value != f.value && f.laterValue.empty()) f.laterValue = value;
      continue;
    }
    f.value = value;
    bool abort = value.rfind("abort ", 0) == 0;
    f.seq = digits(std::string_view(value).substr(abort ? 6 : 0));
    f.committed = !abort;
  }
}

void EtcdSide::startSampling() {
  samplerStop_ = false;
  sampler_ = std::thread([this] {
    etcd::Client c(etcd_.endpoints());
    for (std::uint64_t round = 0; !samplerStop_; ++round) {
      try {
        readDecisions(c);
        if (round % 30 == 29) readRequests(c);
      } catch (const std::exception&) {
        // a member down or no leader: the next sample
      }
      for (int i = 0; i < 20 && !samplerStop_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
}

void EtcdSide::stopSampling() {
  samplerStop_ = true;
  if (sampler_.joinable()) sampler_.join();
}

EtcdView EtcdSide::read() {
  readDecisions(*reader_);
  EtcdView v;
  left_ = 0;
  forEachKey(*reader_, decisionsPrefix(), [&](const etcd::KeyValue&) { ++left_; });
  readRequests(*reader_);
  std::lock_guard<std::mutex> lk(mu_);
  v.decisions = decisions_;
  v.requests = requests_;
  return v;
}

bool EtcdSide::plantAbort(std::uint64_t seq) {
  // The key as coordinator/cluster.h names it: P/decisions/<node>/<seq, 20 digits>.
  char digits20[24];
  std::snprintf(digits20, sizeof digits20, "%020llu", static_cast<unsigned long long>(seq));
  std::string key = decisionsPrefix() + std::to_string(seqNode(seq)) + "/" + digits20;
  ClusterDecision abort;
  abort.by = seqNode(seq);
  abort.epoch = 1;
  return reader_->txnSync({etcd::Compare::absent(key)}, {etcd::Op::put(key, abort.encode())}, {}).succeeded;
}

void EtcdSide::keepLogs(const std::string& dir) const {
  for (std::size_t m = 0; m < etcd_.size(); ++m) {
    std::error_code ec;
    auto to = dir + "/etcd-m" + std::to_string(m);
    std::filesystem::copy_file(etcd_.logFile(m), to + ".log", std::filesystem::copy_options::overwrite_existing, ec);
    std::filesystem::copy_file(etcd_.logFile(m) + ".out", to + ".out", std::filesystem::copy_options::overwrite_existing,
                               ec);
  }
}

}  // namespace keel::chaos
