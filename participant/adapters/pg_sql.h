#pragma once
// The few statements on prepared transactions that the postgres agent's
// files (participant/pg_agent.cc, pg_agent_recovery.cc) share. Each runs on
// a connection of a pg::Pool worker.

#include <string>

#include "participant/adapters/pg_pool.h"

namespace keel::pg {

constexpr const char* kUndefinedObject = "42704";  // no such prepared transaction

inline std::string quoteLiteral(const std::string& s) {
  // Only ever used with our own gids: [A-Za-z0-9_.:-], checked at start-up.
  return "'" + s + "'";
}

// COMMIT PREPARED or ROLLBACK PREPARED (`verb`). False if PostgreSQL does
// not hold the gid: never prepared, or finished already (how, and by whom,
// only txid_status can tell). Throws while PostgreSQL is unreachable.
inline bool finishPrepared(PGconn* c, const char* verb, const std::string& gid) {
  try {
    exec(c, std::string(verb) + " PREPARED " + quoteLiteral(gid));
    return true;
  } catch (const PgError& e) {
    if (e.sqlstate() != kUndefinedObject) throw;
    return false;
  }
}
inline bool rollbackPrepared(PGconn* c, const std::string& gid) { return finishPrepared(c, "ROLLBACK", gid); }
inline bool commitPrepared(PGconn* c, const std::string& gid) { return finishPrepared(c, "COMMIT", gid); }

}  // namespace keel::pg
