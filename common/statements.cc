#include "common/statements.h"

#include <algorithm>
#include <cctype>

namespace keel {

const char* const kFreeSqlRefused =
    "free SQL text is not accepted: name a statement declared in the agent's config (docs/postgres.md, "
    "\"Declared statements\")";

namespace {

struct TypeName {
  const char* name;
  SqlValue::Type type;
};
constexpr TypeName kTypes[] = {{"int8", SqlValue::Type::Int},
                               {"text", SqlValue::Type::Text},
                               {"float8", SqlValue::Type::Float},
                               {"bool", SqlValue::Type::Bool}};

// What a client's value is, as a reason says it.
const char* valueTypeName(SqlValue::Type t) {
  switch (t) {
    case SqlValue::Type::Null: return "null";
    case SqlValue::Type::Int: return "int";
    case SqlValue::Type::Text: return "text";
    case SqlValue::Type::Float: return "float";
    case SqlValue::Type::Bool: return "bool";
  }
  return "?";
}

bool identChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// At sql[i] == '$': the end of a dollar quote's opening tag ("$$", "$tag$"),
// or npos when it is not one (a parameter, or a '$' inside a word).
std::size_t dollarTagEnd(std::string_view sql, std::size_t i) {
  std::size_t k = i + 1;
  if (k < sql.size() && std::isdigit(static_cast<unsigned char>(sql[k]))) return std::string_view::npos;
  while (k < sql.size() && identChar(sql[k])) ++k;
  return k < sql.size() && sql[k] == '$' ? k : std::string_view::npos;
}

}  // namespace

std::optional<StatementParam> parseParamType(std::string_view name) {
  StatementParam p;
  if (!name.empty() && name.back() == '?') {
    p.nullable = true;
    name.remove_suffix(1);
  }
  for (const auto& t : kTypes) {
    if (name == t.name) {
      p.type = t.type;
      return p;
    }
  }
  return std::nullopt;
}

std::string paramTypeName(StatementParam p) {
  for (const auto& t : kTypes) {
    if (t.type == p.type) return std::string(t.name) + (p.nullable ? "?" : "");
  }
  return "?";
}

const char* knownParamTypes() { return "int8, text, float8, bool (a '?' after one allows null: text?)"; }

std::string maskSqlQuotes(std::string_view sql) {
  std::string out(sql);
  std::size_t i = 0;
  auto blank = [&](std::size_t from, std::size_t to) {  // [from, to) becomes spaces, newlines kept
    for (std::size_t k = from; k < to && k < out.size(); ++k) {
      if (out[k] != '\n') out[k] = ' ';
    }
  };
  auto skipTo = [&](std::string_view end) {  // past the next `end`, or to the end of the text
    auto at = sql.find(end, i);
    i = at == std::string_view::npos ? sql.size() : at + end.size();
  };
  while (i < sql.size()) {
    const std::size_t from = i;
    char c = sql[i];
    if (c == '\'') {  // a string literal; E'...' also escapes with a backslash
      bool escapes = i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e') && (i < 2 || !identChar(sql[i - 2]));
      for (++i; i < sql.size(); ++i) {
        if (escapes && sql[i] == '\\') {
          ++i;
        } else if (sql[i] == '\'') {
          if (i + 1 < sql.size() && sql[i + 1] == '\'') {
            ++i;  // '' inside the literal
          } else {
            break;
          }
        }
      }
      i = std::min(i + 1, sql.size());
      blank(from, i);
    } else if (c == '"') {
      ++i;
      skipTo("\"");
      blank(from, i);
    } else if (c == '-' && i + 1 < sql.size() && sql[i + 1] == '-') {
      skipTo("\n");
      blank(from, i);
    } else if (c == '/' && i + 1 < sql.size() && sql[i + 1] == '*') {
      i += 2;
      skipTo("*/");
      blank(from, i);
    } else if (c == '$' && (i == 0 || !identChar(sql[i - 1])) && dollarTagEnd(sql, i) != std::string_view::npos) {
      std::size_t tagEnd = dollarTagEnd(sql, i);  // a dollar-quoted string: to the same tag again
      std::string_view tag = sql.substr(i, tagEnd + 1 - i);
      i = tagEnd + 1;
      skipTo(tag);
      blank(from, i);
    } else {
      ++i;
    }
  }
  return out;
}

std::string checkSql(std::string_view sql, std::size_t paramCount) {
  if (sql.find_first_not_of(" \t\r\n") == std::string_view::npos) return "sql is empty";
  if (sql.size() > Limits::kMaxSqlBytes) {
    return "sql is " + std::to_string(sql.size()) + " bytes long; the limit is " + std::to_string(Limits::kMaxSqlBytes);
  }
  // Only the SQL itself: $n inside quotes and comments is no parameter.
  const std::string code = maskSqlQuotes(sql);
  std::vector<bool> used(paramCount, false);
  for (std::size_t i = 0; i < code.size(); ++i) {
    if (code[i] != '$' || (i > 0 && identChar(code[i - 1]))) continue;
    std::size_t k = i + 1;
    while (k < code.size() && std::isdigit(static_cast<unsigned char>(code[k]))) ++k;
    if (k == i + 1) continue;
    std::string_view digits = std::string_view(code).substr(i + 1, k - i - 1);
    std::size_t n = digits.size() > 6 ? std::size_t(-1) : std::stoul(std::string(digits));
    if (n == 0 || n > paramCount) {
      return "sql uses $" + std::string(digits) + " but params declares " + std::to_string(paramCount) +
             " parameter(s)";
    }
    used[n - 1] = true;
    i = k - 1;
  }
  for (std::size_t n = 0; n < paramCount; ++n) {
    if (!used[n]) {
      return "params declares " + std::to_string(paramCount) + " parameter(s) but sql never uses $" +
             std::to_string(n + 1);
    }
  }
  return "";
}

std::optional<std::string> checkParamLimits(const std::vector<SqlValue>& params) {
  if (params.size() > Limits::kMaxSqlParams) {
    // Read from the network, a list stops one past the limit (readOp): say
    // "more than", not a count the sender did not send.
    return "more than " + std::to_string(Limits::kMaxSqlParams) + " SQL parameters; the limit is " +
           std::to_string(Limits::kMaxSqlParams);
  }
  for (std::size_t k = 0; k < params.size(); ++k) {
    if (params[k].text.size() > Limits::kMaxSqlParamBytes) {
      return "SQL parameter $" + std::to_string(k + 1) + " is " + std::to_string(params[k].text.size()) +
             " bytes long; the limit is " + std::to_string(Limits::kMaxSqlParamBytes);
    }
  }
  return std::nullopt;
}

std::optional<std::string> checkCall(const DeclaredStatement& decl, const Op& op) {
  const std::string what = "statement '" + decl.name + "'";
  if (!op.sql.empty()) return std::string(kFreeSqlRefused);
  if (auto big = checkParamLimits(op.params)) return what + ": " + *big;
  if (op.params.size() != decl.params.size()) {
    return what + " takes " + std::to_string(decl.params.size()) + " parameter(s), got " +
           std::to_string(op.params.size());
  }
  for (std::size_t k = 0; k < op.params.size(); ++k) {
    const SqlValue& v = op.params[k];
    const StatementParam& p = decl.params[k];
    std::string param = what + " parameter $" + std::to_string(k + 1) + " is " + paramTypeName(p);
    if (v.type == SqlValue::Type::Null) {
      if (!p.nullable) return param + ", got null (declare it " + paramTypeName({p.type, true}) + " to allow null)";
    } else if (v.type != p.type) {
      return param + ", got " + valueTypeName(v.type);
    }
  }
  if (op.expectRows < -1) return what + ": expected row count must be -1 (any) or >= 0";
  if (decl.expectRows >= 0 && op.expectRows >= 0 && op.expectRows != decl.expectRows) {
    return what + " is declared to touch " + std::to_string(decl.expectRows) + " row(s); the operation asks for " +
           std::to_string(op.expectRows);
  }
  return std::nullopt;
}

std::int64_t requiredRows(const DeclaredStatement& decl, const Op& op) {
  return decl.expectRows >= 0 ? decl.expectRows : op.expectRows;
}

std::string notDeclared(const Statements& declared, const std::string& statement, const std::string& agent) {
  constexpr std::size_t kShown = 20;
  std::string names;
  std::size_t n = 0;
  for (const auto& [name, decl] : declared) {
    if (n++ == kShown) {
      names += ", ... (" + std::to_string(declared.size()) + " in all)";
      break;
    }
    names += (names.empty() ? "" : ", ") + name;
  }
  return "statement '" + statement + "' is not declared by agent " + agent + " (its config declares: " + names + ")";
}

}  // namespace keel
