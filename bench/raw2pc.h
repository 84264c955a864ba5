#pragma once
// raw2pc: the unsafe lower bound on PostgreSQL. The benchmark process itself
// runs the same transfer as Keel's postgres agents, on the same databases,
// with no transaction manager and no log: per transfer, on both databases
// at once (one libpq connection to each per client),
//   BEGIN; guarded debit / credit (tools/bank_sql.h);
//   PREPARE TRANSACTION 'gid'; then COMMIT PREPARED 'gid'.
// A debit that touches no row (overdraft) or a statement that fails (lock
// timeout) rolls both back. One thread per client, `concurrency` clients.
// Nothing survives a crash of this client in a known state: that is what
// Keel adds.

#include <string>
#include <vector>

#include "bench/run.h"
#include "bench/workload.h"

namespace keel::bench {

struct Raw2pcOptions {
  std::vector<std::string> conninfo;  // one per spec.agents entry, same order
  std::uint32_t concurrency = 8;
  std::uint32_t lockTimeoutMs = 1000;  // the postgres agents' default
  WindowOptions window;
  std::uint64_t seed = 1;
  // The debit and credit as named prepared statements of each connection
  // (PQprepare once, then bind and execute), as the postgres agents send
  // declared statements; false: as text, parsed by PostgreSQL every time.
  bool prepared = false;
};

// spec.kind must be "transfer" with read-percent 0 (std::invalid_argument
// otherwise); throws std::runtime_error if a client cannot connect.
RunResult runRaw2pc(const WorkloadSpec& spec, const Raw2pcOptions& opts, const std::vector<WatchedProcess>& processes);

}  // namespace keel::bench
