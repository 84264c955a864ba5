#include "participant/embedded.h"

#include "common/log.h"
#include "participant/agent.h"
#include "participant/agent_server.h"
#include "participant/host_agent.h"
#include "participant/pg_agent.h"

namespace keel {

namespace {

PgAgentOptions pgOptions(const AgentConfig& cfg) {
  PgAgentOptions po;
  po.name = cfg.name;
  po.dataDir = cfg.dataDir;
  po.mapSizeBytes = cfg.mapSizeMb << 20;
  po.conninfo = cfg.postgres;
  po.poolSize = cfg.poolSize;
  po.lazyDelayMs = cfg.lazyDelayMs;
  po.redo = cfg.redo;
  po.statements = cfg.statements;
  return po;
}

}  // namespace

void preflightBackend(const AgentConfig& cfg) {
  if (cfg.adapter == "postgres") PgAgent::preflight(pgOptions(cfg));
}

std::unique_ptr<ParticipantBackend> makeBackend(const AgentConfig& cfg, kj::AsyncIoContext& io) {
  if (cfg.adapter == "postgres") return std::make_unique<PgAgent>(pgOptions(cfg), io);
  if (cfg.adapter == "host") {
    HostAgentOptions ho;
    ho.name = cfg.name;
    ho.dataDir = cfg.dataDir;
    ho.mapSizeBytes = cfg.mapSizeMb << 20;
    ho.redo = cfg.redo;
    ho.host = cfg.host;
    return std::make_unique<HostAgent>(*io.provider, std::move(ho));
  }
  return std::make_unique<Agent>(AgentOptions{cfg.name, cfg.dataDir, cfg.mapSizeMb << 20, cfg.redo});
}

EmbeddedParticipant::EmbeddedParticipant(AgentConfig cfg, kj::AsyncIoContext& io, bool init)
    : cfg_(std::move(cfg)), io_(io), cap_(nullptr) {
  dir_ = std::make_unique<DataDir>(
      cfg_.dataDir, DataDirOwner{DataDirKind::Agent, cfg_.name, 0, "keel-coordinator (embedded " + cfg_.name + ")"},
      init);
  cfg_.dataDir = dir_->path();
  backend_ = makeBackend(cfg_, io);
}

void EmbeddedParticipant::start() {
  backend_->start();
  // keelctl backup --embedded NAME, as keel-agent serves keelctl backup --agent.
  backups_ = std::make_unique<BackupServer>(*io_.lowLevelProvider, backend_->branchLog().env().raw(),
                                            formatIdentity(dir_->identity()));
  backups_->setBeforeCopy([this] { backend_->branchLog().log().checkpointSync(); });  // redo mode: every group
  auto impl = kj::heap<ParticipantImpl>(*backend_, backups_.get());
  impl->setMetrics(&metrics_);
  cap_ = kj::mv(impl);
  KEEL_LOG_INFO("embedded participant {} ({} adapter, data {}) serving the coordinator in-process", cfg_.name,
                cfg_.adapter, cfg_.dataDir);
}

AgentMetricsSource EmbeddedParticipant::metricsSource() const {
  return AgentMetricsSource{cfg_.name, &metrics_, agentGauges(*backend_), &backend_->branchLog().log().stats()};
}

}  // namespace keel
