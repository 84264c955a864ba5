#include "common/config.h"

#include <toml++/toml.h>

#include <limits>

#include "common/types.h"

namespace keel {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw ConfigError(path + ": " + what);
}

// `text` null: read the file at `path`; else parse `text`, named `path`.
toml::table parseFile(const std::string& path, const std::string_view* text = nullptr) {
  try {
    return text != nullptr ? toml::parse(*text, path) : toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    std::string msg = std::string(e.description());
    const auto& src = e.source();
    throw ConfigError(path + ":" + std::to_string(src.begin.line) + ":" +
                      std::to_string(src.begin.column) + ": " + msg);
  }
}

std::string getString(const std::string& path, const toml::table& t, const char* section,
                      const char* key, const std::string& def, bool required = false) {
  auto node = t[key];
  if (!node) {
    if (required) fail(path, std::string("[") + section + "] " + key + " is required");
    return def;
  }
  auto v = node.value<std::string>();
  if (!v) fail(path, std::string("[") + section + "] " + key + " must be a string");
  return *v;
}

template <typename T>
T getInt(const std::string& path, const toml::table& t, const char* section, const char* key, T def,
         std::int64_t lo, std::int64_t hi) {
  auto node = t[key];
  if (!node) return def;
  // is_integer first: value<std::int64_t>() converts a float, and one out of
  // int64's range (2E56) is undefined behaviour (found by fuzz_config).
  if (!node.is_integer()) fail(path, std::string("[") + section + "] " + key + " must be an integer");
  auto v = node.value<std::int64_t>();
  if (!v) fail(path, std::string("[") + section + "] " + key + " must be an integer");
  if (*v < lo || *v > hi) {
    fail(path, std::string("[") + section + "] " + key + " = " + std::to_string(*v) +
                   " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return T(*v);
}

void rejectUnknown(const std::string& path, const toml::table& t, const char* section,
                   std::initializer_list<const char*> known) {
  for (auto&& [k, v] : t) {
    bool ok = false;
    for (auto* n : known) ok = ok || k.str() == n;
    if (!ok) fail(path, std::string("[") + section + "] unknown key '" + std::string(k.str()) + "'");
  }
}

const toml::table& section(const std::string& path, const toml::table& root, const char* name) {
  auto* s = root[name].as_table();
  if (s == nullptr) fail(path, std::string("missing section [") + name + "]");
  return *s;
}

}  // namespace

bool validName(const std::string& name) {
  if (name.empty() || name.size() > Limits::kMaxParticipantName) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

void checkAddress(const std::string& where, const std::string& addr) {
  auto colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == addr.size()) {
    throw ConfigError(where + ": address '" + addr + "' must be host:port");
  }
  std::string port = addr.substr(colon + 1);
  for (char c : port) {
    if (c < '0' || c > '9') throw ConfigError(where + ": port in '" + addr + "' is not a number");
  }
  if (port.size() > 5 || std::stoul(port) > 65535) {
    throw ConfigError(where + ": port in '" + addr + "' is out of range");
  }
}

CoordinatorConfig loadCoordinatorConfig(const std::string& path) { return parseCoordinatorConfig(path, nullptr); }

CoordinatorConfig parseCoordinatorConfig(const std::string& path, const std::string_view* text) {
  auto root = parseFile(path, text);
  for (auto&& [k, v] : root) {
    if (k.str() != "coordinator" && k.str() != "participants" && k.str() != "cluster") {
      fail(path, "unknown section [" + std::string(k.str()) + "]");
    }
  }
  CoordinatorConfig c;
  const auto& s = section(path, root, "coordinator");
  rejectUnknown(path, s, "coordinator",
                {"node_id", "listen", "data_dir", "map_size_mb", "call_timeout_ms",
                 "interaction_timeout_ms", "max_interaction_ms", "request_id_retention_s", "request_clock_skew_ms",
                 "retry_initial_ms", "retry_max_ms", "probe_ms", "seq_block", "batch_max", "batch_in_flight"});
  c.nodeId = getInt<std::uint16_t>(path, s, "coordinator", "node_id", c.nodeId, 0, 65535);
  c.listen = getString(path, s, "coordinator", "listen", c.listen);
  checkAddress(path + ": [coordinator] listen", c.listen);
  c.dataDir = getString(path, s, "coordinator", "data_dir", c.dataDir);
  c.mapSizeMb = getInt<std::size_t>(path, s, "coordinator", "map_size_mb", c.mapSizeMb, 1, 1 << 20);
  c.callTimeoutMs = getInt<std::uint32_t>(path, s, "coordinator", "call_timeout_ms", c.callTimeoutMs, 1, 600000);
  c.interactionTimeoutMs = getInt<std::uint32_t>(path, s, "coordinator", "interaction_timeout_ms",
                                                 c.interactionTimeoutMs, 1, 3600000);
  c.maxInteractionMs =
      getInt<std::uint32_t>(path, s, "coordinator", "max_interaction_ms", c.maxInteractionMs, 1, 3600000);
  if (c.maxInteractionMs < c.interactionTimeoutMs) {
    if (s["max_interaction_ms"]) fail(path, "[coordinator] max_interaction_ms must be >= interaction_timeout_ms");
    c.maxInteractionMs = c.interactionTimeoutMs;  // only the default was lower: the configured default wins
  }
  c.requestIdRetentionS = getInt<std::uint32_t>(path, s, "coordinator", "request_id_retention_s",
                                                c.requestIdRetentionS, 60, 90 * 86400);
  c.requestClockSkewMs = getInt<std::uint32_t>(path, s, "coordinator", "request_clock_skew_ms",
                                               c.requestClockSkewMs, 0, 3600000);
  c.retryInitialMs = getInt<std::uint32_t>(path, s, "coordinator", "retry_initial_ms", c.retryInitialMs, 1, 600000);
  c.retryMaxMs = getInt<std::uint32_t>(path, s, "coordinator", "retry_max_ms", c.retryMaxMs, 1, 3600000);
  if (c.retryMaxMs < c.retryInitialMs) fail(path, "[coordinator] retry_max_ms must be >= retry_initial_ms");
  c.probeMs = getInt<std::uint32_t>(path, s, "coordinator", "probe_ms", c.probeMs, 1, 600000);
  c.seqBlock = getInt<std::uint32_t>(path, s, "coordinator", "seq_block", c.seqBlock, 16, 1 << 24);
  c.batchMax = getInt<std::uint32_t>(path, s, "coordinator", "batch_max", c.batchMax, 1, 4096);
  c.batchInFlight = getInt<std::uint32_t>(path, s, "coordinator", "batch_in_flight", c.batchInFlight, 1, 64);

  auto* parts = root["participants"].as_table();
  if (parts == nullptr || parts->empty()) {
    fail(path, "section [participants] is missing or empty (name = \"host:port\" per participant)");
  }
  if (parts->size() > Limits::kMaxParticipants * 32) fail(path, "too many participants");
  for (auto&& [k, v] : *parts) {
    std::string name(k.str());
    if (!validName(name)) {
      fail(path, "[participants] '" + name + "' is not a valid name (1-64 chars of A-Z a-z 0-9 _ . -)");
    }
    auto addr = v.value<std::string>();
    if (!addr) fail(path, "[participants] " + name + " must be a \"host:port\" string");
    checkAddress(path + ": [participants] " + name, *addr);
    c.participants[name] = *addr;
  }
  if (auto* cl = root["cluster"].as_table()) {
    rejectUnknown(path, *cl, "cluster", {"etcd", "prefix", "lease_ttl_s", "max_txn_ops", "call_timeout_ms",
                                             "decision_gather_ms", "advertise"});
    auto* eps = (*cl)["etcd"].as_array();
    if (eps == nullptr || eps->empty()) {
      fail(path, "[cluster] etcd must be a non-empty list of \"host:port\" strings (the etcd members)");
    }
    for (auto&& e : *eps) {
      auto ep = e.value<std::string>();
      if (!ep) fail(path, "[cluster] etcd must list \"host:port\" strings");
      checkAddress(path + ": [cluster] etcd", *ep);
      c.cluster.etcdEndpoints.push_back(*ep);
    }
    c.cluster.prefix = getString(path, *cl, "cluster", "prefix", c.cluster.prefix);
    if (c.cluster.prefix.empty() || c.cluster.prefix.front() != '/' || c.cluster.prefix.back() == '/') {
      fail(path, "[cluster] prefix must start with '/' and not end with one, e.g. \"/keel\"");
    }
    c.cluster.leaseTtlS = getInt<std::uint32_t>(path, *cl, "cluster", "lease_ttl_s", c.cluster.leaseTtlS, 2, 600);
    c.cluster.maxTxnOps = getInt<std::uint32_t>(path, *cl, "cluster", "max_txn_ops", c.cluster.maxTxnOps, 1, 10000);
    c.cluster.callTimeoutMs =
        getInt<std::uint32_t>(path, *cl, "cluster", "call_timeout_ms", c.cluster.callTimeoutMs, 10, 600000);
    c.cluster.decisionGatherMs =
        getInt<std::uint32_t>(path, *cl, "cluster", "decision_gather_ms", c.cluster.decisionGatherMs, 0, 1000);
    c.cluster.advertise = getString(path, *cl, "cluster", "advertise", "");
    if (!c.cluster.advertise.empty()) checkAddress(path + ": [cluster] advertise", c.cluster.advertise);
  }
  return c;
}

AgentConfig loadAgentConfig(const std::string& path) { return parseAgentConfig(path, nullptr); }

AgentConfig parseAgentConfig(const std::string& path, const std::string_view* text) {
  auto root = parseFile(path, text);
  for (auto&& [k, v] : root) {
    if (k.str() != "agent") fail(path, "unknown section [" + std::string(k.str()) + "]");
  }
  AgentConfig c;
  const auto& s = section(path, root, "agent");
  rejectUnknown(path, s, "agent",
                {"name", "listen", "data_dir", "adapter", "map_size_mb", "coordinator", "in_doubt_query_ms",
                 "postgres", "pool_size"});
  c.name = getString(path, s, "agent", "name", "", true);
  if (!validName(c.name)) fail(path, "[agent] name '" + c.name + "' is not a valid name (1-64 chars of A-Z a-z 0-9 _ . -)");
  c.listen = getString(path, s, "agent", "listen", c.listen);
  checkAddress(path + ": [agent] listen", c.listen);
  c.dataDir = getString(path, s, "agent", "data_dir", c.dataDir);
  c.adapter = getString(path, s, "agent", "adapter", c.adapter);
  if (c.adapter != "ledger" && c.adapter != "postgres") {
    fail(path, "[agent] adapter '" + c.adapter + "' is not known (known: ledger, postgres)");
  }
  c.postgres = getString(path, s, "agent", "postgres", c.postgres);
  if (c.adapter == "postgres" && c.postgres.empty()) {
    fail(path, "[agent] adapter = \"postgres\" needs postgres = \"<libpq connection string>\"");
  }
  c.poolSize = getInt<std::uint32_t>(path, s, "agent", "pool_size", c.poolSize, 1, 256);
  c.mapSizeMb = getInt<std::size_t>(path, s, "agent", "map_size_mb", c.mapSizeMb, 1, 1 << 20);
  c.coordinator = getString(path, s, "agent", "coordinator", c.coordinator);
  if (!c.coordinator.empty()) checkAddress(path + ": [agent] coordinator", c.coordinator);
  c.inDoubtQueryMs = getInt<std::uint32_t>(path, s, "agent", "in_doubt_query_ms", c.inDoubtQueryMs, 10, 86400000);
  return c;
}

}  // namespace keel
