#pragma once
// Declared statements: the only SQL a postgres agent runs for clients.
//
// An agent's configuration declares each statement once (name, SQL text
// with $1..$n parameters, parameter types, expected rows); a client's
// operation of kind sql names one and passes the parameters. The agent
// checks every call against the declaration before anything reaches
// PostgreSQL (checkCall); a bad declaration stops the agent at start
// (common/config.cc reads the TOML, checkSql / parseParamType check it).
// docs/postgres.md, "Declared statements".

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/types.h"

namespace keel {

// The declared type of one parameter: the SqlValue kind it must carry and
// whether null is allowed ("int8?"). `type` is never SqlValue::Type::Null.
struct StatementParam {
  SqlValue::Type type = SqlValue::Type::Text;
  bool nullable = false;
  bool operator==(const StatementParam&) const = default;
};

struct DeclaredStatement {
  std::string name;
  std::string sql;                       // $1..$n, n = params.size()
  std::vector<StatementParam> params;
  std::int64_t expectRows = -1;          // rows it must touch or return; -1 = any
};

// By name.
using Statements = std::map<std::string, DeclaredStatement>;

// The parameter types a declaration may name: int8, text, float8, bool,
// each with an optional '?' (null allowed). nullopt for anything else.
std::optional<StatementParam> parseParamType(std::string_view name);
// "int8", "text?", ... as declared.
std::string paramTypeName(StatementParam p);
// "int8, text, float8, bool (a '?' after one allows null: text?)".
const char* knownParamTypes();

// `sql` with every string literal, quoted identifier, dollar-quoted string
// and comment (quotes and markers included) turned into spaces, newlines
// kept: the same length, so a position in it is one in `sql`. What is left
// is the SQL's own words, operators and $n parameters.
std::string maskSqlQuotes(std::string_view sql);

// "" when `sql` fits a declaration of `paramCount` parameters: not empty
// (nor only blanks), at most Limits::kMaxSqlBytes, every $n it uses is 1..
// paramCount and each of $1..$paramCount is used. $n inside string
// literals, quoted identifiers, dollar-quoted strings and comments is not a
// parameter. Otherwise why not.
std::string checkSql(std::string_view sql, std::size_t paramCount);

// nullopt when `params` are within the limits (Limits::kMaxSqlParams of
// them, text of at most Limits::kMaxSqlParamBytes each), whatever the
// statement; otherwise why not.
std::optional<std::string> checkParamLimits(const std::vector<SqlValue>& params);

// nullopt when `op` (kind sql) is a valid call of `decl`: no free SQL text,
// as many parameters as declared, each of its declared type (null only
// where allowed), text no longer than Limits::kMaxSqlParamBytes, and an
// expectRows that does not loosen the declaration's. Otherwise why not.
std::optional<std::string> checkCall(const DeclaredStatement& decl, const Op& op);

// The row count an accepted call must touch: the declaration's, or the
// client's when the declaration allows any (-1 = any).
std::int64_t requiredRows(const DeclaredStatement& decl, const Op& op);

// Why a call of `statement` is refused when `declared` (agent `agent`'s)
// does not have it: "statement 'x' is not declared by agent bank-a (its
// config declares: credit, debit, ...)", at most 20 names shown. The
// coordinator (from what the agent told it) and the agent say the same.
std::string notDeclared(const Statements& declared, const std::string& statement, const std::string& agent);

// Why an operation with free SQL text is refused (the coordinator and the
// agent say the same).
extern const char* const kFreeSqlRefused;

}  // namespace keel
