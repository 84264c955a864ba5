#pragma once
// Participants made from an agent's config: the one function keel-agent and
// the coordinator both build a backend with (makeBackend), and
// EmbeddedParticipant, an agent run inside the coordinator's process
// ([participants] NAME = "embedded:FILE"; docs/operations.md, "Embedded
// participants").
//
// An embedded participant is the same agent as keel-agent's — the same
// backend, branch log, data directory (locked, with the participant's
// identity) and RPC object — reached through an in-process capability
// instead of a socket: the coordinator's calls to it are local Cap'n Proto
// calls on the coordinator's event loop, with no serialisation to bytes, no
// system calls and no other process to wake. The protocol, the records and
// recovery are unchanged: a coordinator restart restarts its embedded
// agents, which reconcile with their hosts before the coordinator's
// recovery asks them anything.

#include <kj/async-io.h>

#include <memory>
#include <string>

#include "common/config.h"
#include "common/data_dir.h"
#include "participant/admin.h"
#include "participant/agent_metrics.h"
#include "participant/agent_server.h"
#include "participant/backend.h"
#include "schemas/keel.capnp.h"

namespace keel {

// The host's side checked before anything is touched (PostgreSQL:
// PgAgent::preflight; nothing for the other adapters). Throws with the fix.
void preflightBackend(const AgentConfig& cfg);
// The adapter's backend over cfg.dataDir (already locked by a DataDir):
// opened and checked, nothing written yet (ParticipantBackend::start).
std::unique_ptr<ParticipantBackend> makeBackend(const AgentConfig& cfg, kj::AsyncIoContext& io);

class EmbeddedParticipant {
 public:
  // The data directory (created or initialised with `init`, refused as
  // keel-agent would refuse it) and the backend opened and checked: nothing
  // written. Throws DataDirError or the backend's refusal. `cfg` as
  // loadEmbeddedAgents made it; preflightBackend(cfg) already passed (the
  // coordinator runs every embedded participant's before it touches its
  // own data directory).
  EmbeddedParticipant(AgentConfig cfg, kj::AsyncIoContext& io, bool init);

  // The start-up writes (ParticipantBackend::start). Once, before client().
  void start();
  // The participant's capability, served in-process with every call
  // allowed (the coordinator is the only caller).
  wire::Participant::Client client() { return cap_.castAs<wire::Participant>(); }
  // The same agent as an operator may call it (operatorView: inspect,
  // branches, forget with epoch 0, backup...): what the coordinator's
  // embeddedParticipant hands keelctl. After start().
  wire::Participant::Client operatorClient() { return operatorView(client(), cfg_.name); }

  const std::string& name() const { return cfg_.name; }

  // Its side of the coordinator's /metrics (renderAgentMetrics, labelled
  // with its name): the keel_agent_* families keel-agent serves. On the
  // coordinator's loop (the gauges are counted there); after start().
  AgentMetricsSource metricsSource() const;

 private:
  AgentConfig cfg_;
  // Declared in the order they are made; destroyed the other way round:
  // the RPC object first, the lock on the data directory last.
  std::unique_ptr<DataDir> dir_;
  std::unique_ptr<ParticipantBackend> backend_;
  AgentMetrics metrics_;
  kj::AsyncIoContext& io_;
  std::unique_ptr<BackupServer> backups_;  // keelctl backup --embedded; reads the backend's log
  capnp::Capability::Client cap_;
};

}  // namespace keel
