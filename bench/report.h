#pragma once
// keel-bench's output: the human summary of a run and its one-line JSON
// object (flat keys, numbers as numbers; see docs/performance.md for what
// each field means).

#include <cstdio>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "bench/etcd_floor.h"
#include "bench/floor.h"
#include "bench/run.h"

namespace keel::bench {

// A flat JSON object built field by field, in insertion order.
class JsonObject {
 public:
  JsonObject& add(const std::string& key, double v);
  JsonObject& add(const std::string& key, std::uint64_t v);
  JsonObject& add(const std::string& key, std::uint32_t v) { return add(key, std::uint64_t(v)); }
  JsonObject& add(const std::string& key, const std::string& v);
  JsonObject& add(const std::string& key, const char* v) { return add(key, std::string(v)); }
  JsonObject& addRaw(const std::string& key, const std::string& json);  // a nested object or array
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& k);
  std::string body_;
};

std::string jsonQuote(const std::string& s);

// What the run was, for the report (not measured).
struct RunContext {
  std::string adapter, workload;
  std::uint32_t participants = 2, accounts = 0, agents = 0, threads = 1;
  std::uint32_t rollbackPercent = 0, readPercent = 0;
  double warmupS = 0, durationS = 0;
  bool embedded = false;  // --embedded: the agents ran inside the coordinator's process
  bool rawPrepared = false;  // --raw-prepared: raw2pc sent named prepared statements
};

// The run's fields (prefix "" for keel; "raw2pc_" for the baseline's own
// fields in a comparison).
// CPU microseconds per interaction of the window, summed over the
// processes whose name starts with one of `prefixes` ("coordinator",
// "bank-", "etcd", "postgres"); < 0 when none of them was measured.
double groupCpuUs(const RunResult& r, std::initializer_list<const char*> prefixes);

void addRunFields(JsonObject& j, const RunResult& r, const std::string& prefix = "");
void addFloorFields(JsonObject& j, const FloorResult& f, const RunResult* singleClient);
void addContextFields(JsonObject& j, const RunContext& c);
// etcd's own create-if-absent txn latency; with a single-client run, its
// p50 in multiples of it.
void addEtcdFloorFields(JsonObject& j, const EtcdFloorResult& f, const RunResult* singleClient);

void printRun(std::FILE* out, const RunResult& r, const RunContext& c);
// Whether r's window answered an interaction (committed or rolled back).
// One that answered none measured nothing (a stall, or every request
// failing): says so on `out` with the first error, and keel-bench fails the
// run so that its logs are kept.
bool answeredSomething(std::FILE* out, const RunResult& r);
// --adapter host against its ledger-only run of the same invocation:
// throughput, p50 and p99 as ratios host / ledger.
void printHostOverLedger(std::FILE* out, const RunResult& host, const RunResult& ledger);
void addHostOverLedgerFields(JsonObject& j, const RunResult& host, const RunResult& ledger);
void printFloor(std::FILE* out, const FloorResult& f, const RunResult* singleClient);
void printEtcdFloor(std::FILE* out, const EtcdFloorResult& f, const RunResult* singleClient);

}  // namespace keel::bench
