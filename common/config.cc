#include "common/config.h"

#include <toml++/toml.h>

#include <filesystem>
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

bool getBool(const std::string& path, const toml::table& t, const char* section, const char* key, bool def) {
  auto node = t[key];
  if (!node) return def;
  auto v = node.value<bool>();
  if (!v || !node.is_boolean()) fail(path, std::string("[") + section + "] " + key + " must be true or false");
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

std::vector<std::string> getNames(const std::string& path, const toml::table& t, const char* section,
                                  const char* key) {
  auto node = t[key];
  if (!node) return {};
  auto* arr = node.as_array();
  auto bad = [&]() {
    fail(path, std::string("[") + section + "] " + key +
                   " must be a list of identities (certificate common names), e.g. [\"ops-alice\"]");
  };
  if (arr == nullptr) bad();
  std::vector<std::string> out;
  for (auto&& e : *arr) {
    auto v = e.value<std::string>();
    if (!v || v->empty() || v->size() > 255) bad();
    out.push_back(*v);
  }
  return out;
}

// The [statements] tables of `root` (none: empty).
Statements readStatements(const std::string& path, const toml::table& root) {
  Statements out;
  auto node = root["statements"];
  if (!node) return out;
  const auto* all = node.as_table();
  if (all == nullptr) fail(path, "statements must be tables: [statements.NAME]");
  for (auto&& [k, v] : *all) {
    std::string name(k.str());
    std::string section = "statements." + name;
    std::string key = "[" + section + "]";
    if (!validName(name)) {
      fail(path, key + ": '" + name + "' is not a valid statement name (1-64 chars of A-Z a-z 0-9 _ . -)");
    }
    const auto* t = v.as_table();
    if (t == nullptr) fail(path, key + " must be a table (sql, params, expect_rows)");
    rejectUnknown(path, *t, section.c_str(), {"sql", "params", "expect_rows"});
    DeclaredStatement d;
    d.name = name;
    d.sql = getString(path, *t, section.c_str(), "sql", "", true);
    if (auto p = (*t)["params"]) {
      const auto* list = p.as_array();
      if (list == nullptr) fail(path, key + " params must be a list of types, such as [\"text\", \"int8\"]");
      if (list->size() > Limits::kMaxSqlParams) {
        fail(path, key + " params declares " + std::to_string(list->size()) + " parameters; the limit is " +
                       std::to_string(Limits::kMaxSqlParams));
      }
      for (std::size_t i = 0; i < list->size(); ++i) {
        auto type = list->get(i)->value<std::string>();
        auto param = type ? parseParamType(*type) : std::nullopt;
        if (!param) {
          fail(path, key + " params: $" + std::to_string(i + 1) + " " +
                         (type ? "'" + *type + "'" : std::string("(not a string)")) + " is not a known type (known: " +
                         knownParamTypes() + ")");
        }
        d.params.push_back(*param);
      }
    }
    if (auto bad = checkSql(d.sql, d.params.size()); !bad.empty()) fail(path, key + ": " + bad);
    d.expectRows = getInt<std::int64_t>(path, *t, section.c_str(), "expect_rows", -1, -1,
                                        std::numeric_limits<std::int64_t>::max());
    out.emplace(name, std::move(d));
  }
  return out;
}

// [log], the same key for coordinator and agent. Checked here, before
// logging is set up: a bad format is reported on stderr as every config
// error is, and the process does not start.
void loadLog(const std::string& path, const toml::table& root, LogConfig& log) {
  if (auto* l = root["log"].as_table()) {
    rejectUnknown(path, *l, "log", {"format"});
    log.format = getString(path, *l, "log", "format", "");
    if (log.format != "text" && log.format != "json") {
      fail(path, "[log] format '" + log.format + "' is not known (known: text, json)");
    }
  } else if (root["log"]) {
    fail(path, "[log] must be a table");
  }
}

// [tls] and [limits], the same keys for coordinator and agent (`clients`
// only on a coordinator, `coordinators` only on an agent).
void loadSecurity(const std::string& path, const toml::table& root, ServerRole role, TlsConfig& tls,
                  ConnLimits& limits, AdminConfig& admin) {
  if (auto* t = root["tls"].as_table()) {
    if (role == ServerRole::Coordinator) {
      rejectUnknown(path, *t, "tls", {"ca", "cert", "key", "insecure", "operators", "clients", "coordinator_name",
                                      "handshake_timeout_ms"});
    } else {
      rejectUnknown(path, *t, "tls", {"ca", "cert", "key", "insecure", "operators", "coordinators",
                                      "coordinator_name", "handshake_timeout_ms"});
    }
    tls.ca = getString(path, *t, "tls", "ca", "");
    tls.cert = getString(path, *t, "tls", "cert", "");
    tls.key = getString(path, *t, "tls", "key", "");
    if (auto n = (*t)["insecure"]) {
      auto v = n.value<bool>();
      if (!v || !n.is_boolean()) fail(path, "[tls] insecure must be true or false");
      tls.insecure = *v;
    }
    tls.operators = getNames(path, *t, "tls", "operators");
    tls.clients = getNames(path, *t, "tls", "clients");
    tls.coordinators = getNames(path, *t, "tls", "coordinators");
    tls.coordinatorName = getString(path, *t, "tls", "coordinator_name", tls.coordinatorName);
    if (tls.coordinatorName.empty()) fail(path, "[tls] coordinator_name must not be empty");
    tls.handshakeTimeoutMs =
        getInt<std::uint32_t>(path, *t, "tls", "handshake_timeout_ms", tls.handshakeTimeoutMs, 100, 600000);
  }
  if (auto* a = root["admin"].as_table()) {
    rejectUnknown(path, *a, "admin", {"listen", "remote", "actions", "hosts"});
    admin.listen = getString(path, *a, "admin", "listen", "");
    if (auto n = (*a)["hosts"]) {
      auto* arr = n.as_array();
      if (arr == nullptr) fail(path, "[admin] hosts must be a list of host names, e.g. [\"keel-admin.example\"]");
      for (auto&& e : *arr) {
        auto v = e.value<std::string>();
        if (!v || v->empty() || v->size() > 253 || v->find_first_of(":/ ") != std::string::npos) {
          fail(path, "[admin] hosts must be a list of host names without ports, e.g. [\"keel-admin.example\"]");
        }
        std::string lower = *v;
        for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
        admin.hosts.push_back(lower);
      }
    }
    for (auto [key, flag] : {std::pair<const char*, bool*>{"remote", &admin.remote}, {"actions", &admin.actions}}) {
      if (auto n = (*a)[key]) {
        auto v = n.value<bool>();
        if (!v || !n.is_boolean()) fail(path, std::string("[admin] ") + key + " must be true or false");
        *flag = *v;
      }
    }
    checkAdmin(path + ": [admin]", admin);
  } else if (root["admin"]) {
    fail(path, "[admin] must be a table");
  }
  if (auto* l = root["limits"].as_table()) {
    rejectUnknown(path, *l, "limits",
                  {"max_connections", "max_connections_per_peer", "max_calls_in_flight", "idle_timeout_s"});
    limits.maxConnections = getInt<std::uint32_t>(path, *l, "limits", "max_connections", limits.maxConnections, 1,
                                                  1000000);
    limits.maxConnectionsPerPeer = getInt<std::uint32_t>(path, *l, "limits", "max_connections_per_peer",
                                                         limits.maxConnectionsPerPeer, 1, 1000000);
    limits.maxCallsInFlight = getInt<std::uint32_t>(path, *l, "limits", "max_calls_in_flight",
                                                    limits.maxCallsInFlight, 1, 1000000);
    limits.idleTimeoutS = getInt<std::uint32_t>(path, *l, "limits", "idle_timeout_s", limits.idleTimeoutS, 0,
                                                30 * 86400);
  }
}

}  // namespace

void checkAdmin(const std::string& where, const AdminConfig& admin) {
  if (admin.listen.empty()) return;
  checkAddress(where + " listen", admin.listen);
  if (!admin.remote && !loopbackHost(admin.listen)) {
    throw ConfigError(where + " listen " + admin.listen +
                      " is not a loopback address: the admin plane serves interactions' stories and the audit log "
                      "without authentication; put it on loopback, or set remote = true if the network in front "
                      "of it is trusted (docs/operations.md, \"Admin plane\")");
  }
}

bool loopbackHost(const std::string& addr) {
  auto colon = addr.rfind(':');
  std::string host = colon == std::string::npos ? addr : addr.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

void checkTransport(const TlsConfig& tls, const std::string& listen, ServerRole role) {
  bool any = !tls.ca.empty() || !tls.cert.empty() || !tls.key.empty();
  if (any && tls.insecure) {
    throw ConfigError("[tls] gives certificates and insecure = true: choose one (docs/security.md)");
  }
  if (tls.insecure) {
    if (!loopbackHost(listen)) {
      throw ConfigError("insecure (plaintext) is refused on the non-loopback address " + listen +
                        ": configure [tls] ca, cert and key (docs/security.md)");
    }
    return;
  }
  if (!any) {
    throw ConfigError("no TLS configured: set [tls] ca, cert and key (or --tls-ca, --tls-cert, --tls-key; "
                      "docs/security.md), or insecure = true (--insecure) for plaintext on loopback");
  }
  if (tls.ca.empty() || tls.cert.empty() || tls.key.empty()) {
    throw ConfigError(std::string("[tls] needs all of ca, cert and key; missing: ") +
                      (tls.ca.empty() ? "ca " : "") + (tls.cert.empty() ? "cert " : "") +
                      (tls.key.empty() ? "key" : ""));
  }
  if (role == ServerRole::Agent && tls.coordinators.empty()) {
    throw ConfigError("[tls] coordinators is empty: name the identities (certificate common names) of the "
                      "coordinators allowed to call this agent, e.g. coordinators = [\"keel-coordinator\"]");
  }
}

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
    if (k.str() != "coordinator" && k.str() != "participants" && k.str() != "cluster" && k.str() != "tls" &&
        k.str() != "limits" && k.str() != "admin" && k.str() != "log") {
      fail(path, "unknown section [" + std::string(k.str()) + "]");
    }
  }
  CoordinatorConfig c;
  const auto& s = section(path, root, "coordinator");
  rejectUnknown(path, s, "coordinator",
                {"node_id", "listen", "data_dir", "map_size_mb", "call_timeout_ms",
                 "interaction_timeout_ms", "max_interaction_ms", "request_id_retention_s", "request_clock_skew_ms",
                 "hot_retention_s", "archive_map_size_mb", "archive_retention_days",
                 "retry_initial_ms", "retry_max_ms", "probe_ms", "seq_block", "batch_max", "batch_in_flight", "redo", "staged_commit"});
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
  c.hotRetentionS = getInt<std::uint32_t>(path, s, "coordinator", "hot_retention_s", c.hotRetentionS, 1, 365 * 86400);
  c.archiveMapSizeMb = getInt<std::size_t>(path, s, "coordinator", "archive_map_size_mb", c.archiveMapSizeMb, 16,
                                           std::size_t(1) << 20);
  c.archiveRetentionDays = getInt<std::uint32_t>(path, s, "coordinator", "archive_retention_days",
                                                 c.archiveRetentionDays, 0, 36500);
  c.retryInitialMs = getInt<std::uint32_t>(path, s, "coordinator", "retry_initial_ms", c.retryInitialMs, 1, 600000);
  c.retryMaxMs = getInt<std::uint32_t>(path, s, "coordinator", "retry_max_ms", c.retryMaxMs, 1, 3600000);
  if (c.retryMaxMs < c.retryInitialMs) fail(path, "[coordinator] retry_max_ms must be >= retry_initial_ms");
  c.probeMs = getInt<std::uint32_t>(path, s, "coordinator", "probe_ms", c.probeMs, 1, 600000);
  c.seqBlock = getInt<std::uint32_t>(path, s, "coordinator", "seq_block", c.seqBlock, 16, 1 << 24);
  c.redo = getBool(path, s, "coordinator", "redo", c.redo);
  c.stagedCommit = getBool(path, s, "coordinator", "staged_commit", c.stagedCommit);
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
    if (!addr) fail(path, "[participants] " + name + " must be a \"host:port\" or \"embedded:FILE\" string");
    if (isEmbedded(*addr)) {
      std::filesystem::path file = embeddedConfigFile(*addr);
      if (file.empty()) fail(path, "[participants] " + name + ": \"embedded:\" needs the agent's config file after it");
      if (file.is_relative()) file = std::filesystem::absolute(std::filesystem::path(path).parent_path() / file);
      c.participants[name] = kEmbeddedPrefix + file.lexically_normal().string();
      continue;
    }
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
  if (c.cluster.enabled()) {
    for (const auto& [name, addr] : c.participants) {
      if (isEmbedded(addr)) {
        fail(path, "[participants] " + name + " is embedded: not with [cluster] (a participant inside one member "
                   "cannot be reached by the member that takes its work over; run it as a keel-agent)");
      }
    }
  }
  loadSecurity(path, root, ServerRole::Coordinator, c.tls, c.limits, c.admin);
  loadLog(path, root, c.log);
  return c;
}

bool isEmbedded(const std::string& participantAddress) {
  return participantAddress.rfind(kEmbeddedPrefix, 0) == 0;
}

std::string embeddedConfigFile(const std::string& participantAddress) {
  if (!isEmbedded(participantAddress)) return "";
  return participantAddress.substr(std::string(kEmbeddedPrefix).size());
}

std::map<std::string, AgentConfig> loadEmbeddedAgents(const CoordinatorConfig& cfg) {
  namespace fs = std::filesystem;
  std::map<std::string, AgentConfig> out;
  std::map<std::string, std::string> dirs;  // absolute data dir -> whose
  dirs[fs::absolute(cfg.dataDir).lexically_normal().string()] = "the coordinator";
  for (const auto& [name, addr] : cfg.participants) {
    if (!isEmbedded(addr)) continue;
    std::string file = embeddedConfigFile(addr);
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) {
      throw ConfigError("[participants] " + name + " = \"" + addr + "\": no such config file");
    }
    AgentConfig a = loadAgentConfig(file);
    if (a.name != name) {
      throw ConfigError(file + ": [agent] name is '" + a.name + "' but the coordinator's [participants] calls it '" +
                        name + "' (the names must match: the agent's data directory belongs to that name)");
    }
    checkAdapter(file, a);
    std::string dir = fs::absolute(a.dataDir).lexically_normal().string();
    if (auto [it, fresh] = dirs.emplace(dir, "participant " + name); !fresh) {
      throw ConfigError(file + ": [agent] data_dir " + dir + " is also " + it->second +
                        "'s: every participant needs a data directory of its own");
    }
    out.emplace(name, std::move(a));
  }
  return out;
}

void checkAdapter(const std::string& whereOrEmpty, const AgentConfig& cfg) {
  const std::string where = whereOrEmpty.empty() ? "" : whereOrEmpty + ": ";
  if (cfg.adapter == "postgres" && cfg.postgres.empty()) {
    throw ConfigError(where + "adapter postgres needs a connection string (--postgres or [agent] postgres)");
  }
  if (cfg.adapter == "postgres" && cfg.statements.empty()) {
    throw ConfigError(where +
                      "adapter postgres needs the statements clients may call: --statements FILE or "
                      "[statements.NAME] tables in the config (docs/postgres.md, \"Declared statements\"); free "
                      "SQL from clients is not accepted");
  }
  if (cfg.adapter == "host") {
    if (cfg.host.url.empty()) throw ConfigError(where + "adapter host needs the host's URL (--host or [host] url)");
    checkHostUrl(whereOrEmpty.empty() ? "--host" : whereOrEmpty + ": [host] url", cfg.host.url);
    if (cfg.host.operations.empty()) {
      throw ConfigError(where +
                        "adapter host needs the operations the host serves: --host-operations FILE or "
                        "[host.operations.NAME] tables in the config (docs/hosts.md)");
    }
  } else if (!cfg.host.url.empty() || !cfg.host.operations.empty()) {
    throw ConfigError(where + "[host] and --host / --host-operations are for adapter host; this agent's adapter is " +
                      cfg.adapter);
  }
  if (cfg.adapter != "postgres" && !cfg.statements.empty()) {
    throw ConfigError(where + "declared statements are for adapter postgres; this agent's adapter is " +
                      cfg.adapter);
  }
}

const char* knownHostOperations() { return "debit, credit"; }

void checkHostUrl(const std::string& where, const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind("https://", 0) == 0) {
    throw ConfigError(where + " '" + url + "': https is not supported yet; run the agent beside the host and "
                      "use http:// on loopback or a private network (docs/hosts.md)");
  }
  if (url.rfind(scheme, 0) != 0) throw ConfigError(where + " '" + url + "' must be http://HOST:PORT");
  std::string rest = url.substr(scheme.size());
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.find_first_of("/?#@") != std::string::npos) {
    throw ConfigError(where + " '" + url + "' must be http://HOST:PORT with no path, query or user (the paths are "
                      "the operations')");
  }
  if (rest.find(':') == std::string::npos) throw ConfigError(where + " '" + url + "' needs a port: http://HOST:PORT");
  checkAddress(where, rest);
}

namespace {

std::map<std::string, HostOperation> readHostOperations(const std::string& path, const toml::table& host) {
  std::map<std::string, HostOperation> out;
  auto node = host["operations"];
  if (!node) return out;
  const auto* all = node.as_table();
  if (all == nullptr) fail(path, "host operations must be tables: [host.operations.debit]");
  for (auto&& [k, v] : *all) {
    std::string name(k.str());
    std::string section = "host.operations." + name;
    if (name != "debit" && name != "credit") {
      fail(path, "[" + section + "]: '" + name + "' is not an operation a host adapter maps (known: " +
                     knownHostOperations() + ")");
    }
    const auto* t = v.as_table();
    if (t == nullptr) fail(path, "[" + section + "] must be a table (try, confirm, cancel)");
    rejectUnknown(path, *t, section.c_str(), {"try", "confirm", "cancel"});
    HostOperation op;
    op.tryPath = getString(path, *t, section.c_str(), "try", "", true);
    op.confirmPath = getString(path, *t, section.c_str(), "confirm", "", true);
    op.cancelPath = getString(path, *t, section.c_str(), "cancel", "", true);
    auto checkPath = [&](const char* key, const std::string& p, bool mayBeEmpty) {
      if (p.empty() && mayBeEmpty) return;
      bool ok = !p.empty() && p[0] == '/' && p.size() <= 1024;
      for (char c : p) ok = ok && c > 0x20 && c < 0x7f && c != '?' && c != '#';
      if (!ok) {
        fail(path, "[" + section + "] " + key + " = '" + p + "' must be a path starting with '/' (printable, no "
                       "spaces, query or fragment, at most 1024 bytes)" + (mayBeEmpty ? ", or empty" : ""));
      }
    };
    checkPath("try", op.tryPath, false);
    checkPath("confirm", op.confirmPath, true);
    checkPath("cancel", op.cancelPath, false);
    out[name] = std::move(op);
  }
  return out;
}

void readHost(const std::string& path, const toml::table& root, HostConfig& h) {
  const auto* host = root["host"].as_table();
  if (host == nullptr) {
    if (root["host"]) fail(path, "[host] must be a table");
    return;
  }
  rejectUnknown(path, *host, "host",
                {"url", "call_timeout_ms", "try_budget_ms", "phase2_wait_ms", "retry_initial_ms", "retry_max_ms",
                 "max_body_bytes", "max_connections", "operations"});
  h.url = getString(path, *host, "host", "url", h.url);
  if (!h.url.empty()) checkHostUrl(path + ": [host] url", h.url);
  h.callTimeoutMs = getInt<std::uint32_t>(path, *host, "host", "call_timeout_ms", h.callTimeoutMs, 10, 600000);
  h.tryBudgetMs = getInt<std::uint32_t>(path, *host, "host", "try_budget_ms", h.tryBudgetMs, 10, 600000);
  h.phase2WaitMs = getInt<std::uint32_t>(path, *host, "host", "phase2_wait_ms", h.phase2WaitMs, 0, 600000);
  h.retryInitialMs = getInt<std::uint32_t>(path, *host, "host", "retry_initial_ms", h.retryInitialMs, 1, 60000);
  h.retryMaxMs = getInt<std::uint32_t>(path, *host, "host", "retry_max_ms", h.retryMaxMs, 1, 600000);
  if (h.retryMaxMs < h.retryInitialMs) {
    fail(path, "[host] retry_max_ms = " + std::to_string(h.retryMaxMs) + " is below retry_initial_ms = " +
                   std::to_string(h.retryInitialMs));
  }
  h.maxBodyBytes = getInt<std::uint32_t>(path, *host, "host", "max_body_bytes", h.maxBodyBytes, 256, 16 << 20);
  h.maxConnections = getInt<std::uint32_t>(path, *host, "host", "max_connections", h.maxConnections, 1, 4096);
  h.operations = readHostOperations(path, *host);
}

}  // namespace

std::map<std::string, HostOperation> loadHostOperations(const std::string& path) {
  auto root = parseFile(path);
  for (auto&& [k, v] : root) {
    if (k.str() != "host") fail(path, "unknown section [" + std::string(k.str()) + "] (a host operations file holds [host.operations.NAME] tables only)");
  }
  const auto* host = root["host"].as_table();
  if (host == nullptr) return {};
  rejectUnknown(path, *host, "host", {"operations"});
  return readHostOperations(path, *host);
}

AgentConfig loadAgentConfig(const std::string& path) { return parseAgentConfig(path, nullptr); }

AgentConfig parseAgentConfig(const std::string& path, const std::string_view* text) {
  auto root = parseFile(path, text);
  for (auto&& [k, v] : root) {
    if (k.str() != "agent" && k.str() != "statements" && k.str() != "tls" && k.str() != "limits" &&
        k.str() != "host" && k.str() != "admin" && k.str() != "log") {
      fail(path, "unknown section [" + std::string(k.str()) + "]");
    }
  }
  AgentConfig c;
  const auto& s = section(path, root, "agent");
  rejectUnknown(path, s, "agent",
                {"name", "listen", "data_dir", "adapter", "map_size_mb", "coordinator", "in_doubt_query_ms",
                 "postgres", "pool_size", "lazy_delay_ms", "redo"});
  c.name = getString(path, s, "agent", "name", "", true);
  if (!validName(c.name)) fail(path, "[agent] name '" + c.name + "' is not a valid name (1-64 chars of A-Z a-z 0-9 _ . -)");
  c.listen = getString(path, s, "agent", "listen", c.listen);
  checkAddress(path + ": [agent] listen", c.listen);
  c.dataDir = getString(path, s, "agent", "data_dir", c.dataDir);
  c.adapter = getString(path, s, "agent", "adapter", c.adapter);
  if (c.adapter != "ledger" && c.adapter != "postgres" && c.adapter != "host") {
    fail(path, "[agent] adapter '" + c.adapter + "' is not known (known: ledger, postgres, host)");
  }
  c.postgres = getString(path, s, "agent", "postgres", c.postgres);
  if (c.adapter == "postgres" && c.postgres.empty()) {
    fail(path, "[agent] adapter = \"postgres\" needs postgres = \"<libpq connection string>\"");
  }
  c.poolSize = getInt<std::uint32_t>(path, s, "agent", "pool_size", c.poolSize, 1, 256);
  c.lazyDelayMs = getInt<std::uint32_t>(path, s, "agent", "lazy_delay_ms", c.lazyDelayMs, 1, 1000);
  c.redo = getBool(path, s, "agent", "redo", c.redo);
  c.mapSizeMb = getInt<std::size_t>(path, s, "agent", "map_size_mb", c.mapSizeMb, 1, 1 << 20);
  c.coordinator = getString(path, s, "agent", "coordinator", c.coordinator);
  if (!c.coordinator.empty()) checkAddress(path + ": [agent] coordinator", c.coordinator);
  c.inDoubtQueryMs = getInt<std::uint32_t>(path, s, "agent", "in_doubt_query_ms", c.inDoubtQueryMs, 10, 86400000);
  c.statements = readStatements(path, root);
  readHost(path, root, c.host);
  if (root["host"] && c.adapter != "host") fail(path, "[host] is for adapter = \"host\"; this agent's adapter is " + c.adapter);
  loadSecurity(path, root, ServerRole::Agent, c.tls, c.limits, c.admin);
  loadLog(path, root, c.log);
  return c;
}

Statements loadStatements(const std::string& path) {
  auto root = parseFile(path);
  for (auto&& [k, v] : root) {
    if (k.str() != "statements") {
      fail(path, "unknown section [" + std::string(k.str()) + "] (a statements file holds [statements.NAME] tables only)");
    }
  }
  return readStatements(path, root);
}

}  // namespace keel
