#pragma once
// Plain libpq calls for the programs that drive PostgreSQL themselves, with
// no Keel in between: keel-bench's raw2pc and keel-demo's baselines
// (tools/pg_baselines.h). A statement is sent with its parameters as text
// (extended protocol) and its answer collected; two connections can have
// one each in flight at once.

#include <libpq-fe.h>

#include <string>
#include <utility>
#include <vector>

namespace keel::pgcall {

struct Stmt {
  std::string sql;
  std::vector<std::string> params;  // $1, $2, ... as text
  const char* prepared = nullptr;   // the name of `sql` prepared on the connection (PQprepare), or null: sent as text
};

// What one statement did: whether it ran, the rows it touched, and
// PostgreSQL's message (trailing white space dropped) when it did not.
struct Answer {
  bool ok = false;
  std::string rows;
  std::string error;
};

// Sends `s` on `c` without waiting for it.
inline bool send(PGconn* c, const Stmt& s) {
  std::vector<const char*> values;
  for (auto& p : s.params) values.push_back(p.c_str());
  if (s.prepared != nullptr) {
    return PQsendQueryPrepared(c, s.prepared, int(values.size()), values.data(), nullptr, nullptr, 0) == 1;
  }
  return PQsendQueryParams(c, s.sql.c_str(), int(values.size()), nullptr, values.data(), nullptr, nullptr, 0) == 1;
}

// Collects the answer to what was sent on `c`.
inline Answer take(PGconn* c) {
  Answer a{true, "", ""};
  bool any = false;
  while (PGresult* r = PQgetResult(c)) {
    any = true;
    auto st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
      a.rows = PQcmdTuples(r);
    } else {
      a.ok = false;
      a.error = PQresultErrorMessage(r);
    }
    PQclear(r);
  }
  if (!any) a = {false, "", PQerrorMessage(c)};
  while (!a.error.empty() && (a.error.back() == '\n' || a.error.back() == ' ')) a.error.pop_back();
  return a;
}

inline Answer run(PGconn* c, const Stmt& s) { return send(c, s) ? take(c) : Answer{false, "", PQerrorMessage(c)}; }

// One statement on each of two connections, both in flight at once.
inline std::pair<Answer, Answer> runBoth(PGconn* a, const Stmt& sa, PGconn* b, const Stmt& sb) {
  bool okA = send(a, sa), okB = send(b, sb);
  Answer ra = okA ? take(a) : Answer{false, "", PQerrorMessage(a)};
  Answer rb = okB ? take(b) : Answer{false, "", PQerrorMessage(b)};
  return {ra, rb};
}

// A gid of our own making as an SQL literal (no quotes inside).
inline std::string gidLiteral(const std::string& gid) { return "'" + gid + "'"; }

}  // namespace keel::pgcall
