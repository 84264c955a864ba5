#pragma once
// Configuration files (TOML) of the coordinator and the agent.
// Every problem is reported as ConfigError naming the file and the key, and
// the process exits with that message: nothing starts on a bad config.

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/statements.h"

namespace keel {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// [cluster]: coordinators sharing decisions through etcd (docs/cluster.md).
// Absent (no endpoints): single-node mode, decisions in the local WAL.
struct ClusterConfig {
  std::vector<std::string> etcdEndpoints;   // "host:port" of etcd members; empty = no cluster
  std::string prefix = "/keel";             // every key Keel writes lives under it
  std::uint32_t leaseTtlS = 5;              // membership lease; a dead member is taken over after it
  std::uint32_t maxTxnOps = 128;            // decisions per etcd txn (etcd's --max-txn-ops)
  std::uint32_t callTimeoutMs = 2000;       // deadline of one etcd call
  std::uint32_t decisionGatherMs = 0;       // least time between two decision txns (0: next event-loop turn)
  std::string advertise;                    // address other members and clients are told (default: listen)
  bool enabled() const { return !etcdEndpoints.empty(); }
};

// [tls]: who this process is and whom it trusts (docs/security.md). Every
// link is mutual TLS; a peer's identity is its certificate's common name.
struct TlsConfig {
  std::string ca;    // PEM: the CA(s) whose certificates are trusted (the system's store is not)
  std::string cert;  // PEM: this process's certificate (chain)
  std::string key;   // PEM: its private key
  // Plaintext with no identities: every peer gets every role. Only with this
  // set explicitly, and only on a loopback listen address.
  bool insecure = false;
  std::vector<std::string> operators;     // identities given the operator interface
  std::vector<std::string> clients;       // coordinator: who may submit; empty = any certificate of the CA
  std::vector<std::string> coordinators;  // agent: who may make participant calls (and raise epoch fences)
  std::string coordinatorName = "keel-coordinator";  // the name on coordinators' certificates
  std::uint32_t handshakeTimeoutMs = 5000;            // a connection not through its handshake by then is closed
  bool enabled() const { return !cert.empty(); }
};

// [limits]: what one peer may hold of a server (docs/security.md, "Limits").
struct ConnLimits {
  std::uint32_t maxConnections = 4096;         // all peers together (handshakes included)
  std::uint32_t maxConnectionsPerPeer = 256;   // per certificate identity (TLS only)
  std::uint32_t maxCallsInFlight = 4096;       // per connection; beyond it a call fails `overloaded`
  std::uint32_t idleTimeoutS = 3600;           // a connection with no call this long is closed; 0 = never
};

// [admin]: the admin HTTP plane (/metrics, the JSON API; docs/operations.md,
// "Admin plane"), the same keys for coordinator and agent. Off unless
// `listen` is set. What it serves is read-only but not authenticated (the
// audit log, interactions' stories): a non-loopback address needs
// `remote = true`, saying the network in front of it is trusted.
struct AdminConfig {
  std::string listen;   // host:port; "" = no admin plane
  bool remote = false;  // allow a non-loopback listen address
  // The console's operator actions (retry now, resolve), each written to
  // the audit log: off unless said. The plane has no identities, so this
  // switch is the operator's decision that whoever reaches it may act.
  bool actions = false;
  // Host names the plane answers to besides its IP addresses and localhost
  // (a request naming any other is refused: DNS rebinding).
  std::vector<std::string> hosts;
};

// [log]: how the process logs (docs/operations.md, "Logs"), the same key
// for coordinator and agent. --log-format overrides it; neither given,
// KEEL_LOG_FORMAT decides, else text (keel::chooseLogFormat).
struct LogConfig {
  std::string format;  // "text" | "json"; "" = not set here
};

struct CoordinatorConfig {
  std::uint16_t nodeId = 1;                 // top 16 bits of every seq
  std::string listen = "127.0.0.1:7400";    // loopback unless configured otherwise
  std::string dataDir = "./keel-data/coordinator";
  std::size_t mapSizeMb = 1024;
  std::uint32_t callTimeoutMs = 2000;       // deadline of one participant call
  std::uint32_t interactionTimeoutMs = 10000;  // default deadline of an interaction
  std::uint32_t maxInteractionMs = 60000;      // a client's deadline is capped here
  std::uint32_t requestIdRetentionS = 86400;   // request ids are remembered this long
  std::uint32_t requestClockSkewMs = 300000;   // a request time this far ahead of ours is refused
  std::uint32_t hotRetentionS = 3600;          // finished interactions leave the hot WAL for the archive after this
  std::size_t archiveMapSizeMb = 65536;        // LMDB map of each archive period (sparse): ~110M interactions a day
  std::uint32_t archiveRetentionDays = 365;    // keelctl archive drop refuses periods younger than this
  std::uint32_t retryInitialMs = 50;        // phase-2 / rollback backoff: first delay
  std::uint32_t retryMaxMs = 2000;          // ... capped here
  std::uint32_t probeMs = 100;              // a participant that failed is probed this often until it answers
  std::uint32_t seqBlock = 65536;           // seqs reserved per durable reservation
  bool redo = true;                         // the WAL's redo mode (common/redo_log.h); false: LMDB commits
  // Staged commit (docs/protocol.md): a two-phase interaction's record is
  // written in parallel with its prepares, and "committed" rests on it and
  // the YES votes, without a COMMIT record on the client's path. Only with
  // participants that say their YES branches are visible (ledger, host) and
  // without a cluster; false: the COMMIT record is always written first.
  bool stagedCommit = true;
  std::uint32_t batchMax = 256;             // prepares (x8 for commits/rollbacks) per participant message
  std::uint32_t batchInFlight = 2;          // batch messages of one kind out at once per participant
  // name -> "host:port", or "embedded:FILE" for a participant run inside
  // the coordinator's own process (embeddedConfigFile; docs/operations.md,
  // "Embedded participants"), FILE made absolute at load.
  std::map<std::string, std::string> participants;
  ClusterConfig cluster;
  TlsConfig tls;
  ConnLimits limits;
  AdminConfig admin;
  LogConfig log;
};

// adapter host: how a host system's try / confirm / cancel calls are made
// (docs/hosts.md). One HostOperation per Keel operation the host serves.
struct HostOperation {
  std::string tryPath, confirmPath, cancelPath;  // confirm may be empty: the host posts at try
};
struct HostConfig {
  std::string url;                    // http://HOST:PORT of the host system
  std::uint32_t callTimeoutMs = 1000;  // deadline of one HTTP call
  std::uint32_t tryBudgetMs = 1500;    // a prepare retries its tries this long, then votes NO
  std::uint32_t phase2WaitMs = 1000;   // a commit or rollback call waits this long for the host
  std::uint32_t retryInitialMs = 20;   // backoff between retries of one call ...
  std::uint32_t retryMaxMs = 250;      // ... doubling up to here
  std::uint32_t maxBodyBytes = 65536;  // a longer answer breaches the contract
  std::uint32_t maxConnections = 32;   // calls in flight to the host at once (each holds a connection)
  std::map<std::string, HostOperation> operations;  // "debit" / "credit"
};
// The operations a host adapter can map (Keel's ledger operations).
const char* knownHostOperations();  // "debit, credit"

struct AgentConfig {
  std::string name;
  std::string listen = "127.0.0.1:7401";
  std::string dataDir = "./keel-data/agent";
  std::string adapter = "ledger";      // ledger | postgres
  std::string postgres;               // adapter postgres: libpq connection string
  std::uint32_t poolSize = 8;         // adapter postgres: connections (and threads)
  std::uint32_t lazyDelayMs = 10;     // adapter postgres: the longest its own records wait for a group commit
  bool redo = true;                   // the branch log's redo mode (common/redo_log.h); false: LMDB commits
  std::size_t mapSizeMb = 1024;
  std::string coordinator;             // host:port; empty = do not ask about branches in doubt
  std::uint32_t inDoubtQueryMs = 5000;  // a branch PREPARED this long asks the coordinator
  // adapter postgres: the statements clients may call ([statements.NAME]
  // tables, here or in the file of --statements; docs/postgres.md).
  Statements statements;
  HostConfig host;                    // adapter host: [host] and [host.operations.NAME]
  TlsConfig tls;
  ConnLimits limits;
  AdminConfig admin;
  LogConfig log;
};

CoordinatorConfig loadCoordinatorConfig(const std::string& path);
AgentConfig loadAgentConfig(const std::string& path);

// Embedded participants ([participants] NAME = "embedded:FILE"): the agent
// runs inside the coordinator's process and its calls are in-process
// capability calls (no agent process, no sockets). FILE is a keel-agent
// config file, relative paths taken from the coordinator's config file's
// folder; its [agent] listen, coordinator and in_doubt_query_ms, [tls],
// [limits] and [admin] are not used there (the coordinator's own apply).
// Not with [cluster]: a participant inside one member could not be reached
// by the member that takes its work over.
inline constexpr const char* kEmbeddedPrefix = "embedded:";
bool isEmbedded(const std::string& participantAddress);
// The FILE of "embedded:FILE" (empty for a network address).
std::string embeddedConfigFile(const std::string& participantAddress);
// Every embedded participant's config, read and checked (checkAdapter; the
// file's [agent] name must be the participant's name). Throws ConfigError
// naming the file and what is wrong.
std::map<std::string, AgentConfig> loadEmbeddedAgents(const CoordinatorConfig& cfg);
// What an adapter needs besides its section, checked once flags are
// applied (keel-agent) or as read (embedded): a postgres agent's
// statements, a host agent's URL and operations, and nothing that belongs
// to another adapter. Throws ConfigError prefixed with `where` (if any).
void checkAdapter(const std::string& where, const AgentConfig& cfg);
// A file of [statements.NAME] tables and nothing else (keel-agent
// --statements). Every bad declaration is a ConfigError naming the file and
// the key; an empty result is allowed here (the agent refuses to start a
// postgres adapter without statements).
Statements loadStatements(const std::string& path);
// A file of [host.operations.NAME] tables and nothing else (keel-agent
// --host-operations), checked as in an agent's config.
std::map<std::string, HostOperation> loadHostOperations(const std::string& path);
// "http://HOST:PORT" (a trailing "/" allowed); throws ConfigError saying
// what is wrong (https is not supported; no path, user or query).
void checkHostUrl(const std::string& where, const std::string& url);
// The same from `text` already in memory (named `path` in messages), or
// from the file at `path` when `text` is null: one code path for both
// (tests/fuzz/config_fuzz.cc).
CoordinatorConfig parseCoordinatorConfig(const std::string& path, const std::string_view* text);
AgentConfig parseAgentConfig(const std::string& path, const std::string_view* text);

// "host:port" with a numeric port 0..65535; throws ConfigError otherwise.
void checkAddress(const std::string& where, const std::string& addr);
// [admin] listen (when set): an address, loopback unless remote = true.
void checkAdmin(const std::string& where, const AdminConfig& admin);
// The checks every server runs on its [tls] once flags have been applied:
// TLS (ca, cert and key all given) or `insecure`, never both and never
// neither; insecure only on a loopback `listen`; an agent with TLS names
// its coordinators. Throws ConfigError saying what to set.
enum class ServerRole { Coordinator, Agent };
void checkTransport(const TlsConfig& tls, const std::string& listen, ServerRole role);
// 127.0.0.0/8, ::1 or localhost.
bool loopbackHost(const std::string& addr);

// Participant names: 1..64 chars of [A-Za-z0-9_.-].
bool validName(const std::string& name);

}  // namespace keel
