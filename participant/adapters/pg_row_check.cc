#include "participant/adapters/pg_row_check.h"

#include <cctype>
#include <charconv>

#include "common/statements.h"

namespace keel::pg {

namespace {

constexpr std::string_view kMark = "keel_row_count=";

bool wordChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$'; }

}  // namespace

std::optional<std::string> rowCheckable(std::string_view sql) {
  const std::string code = maskSqlQuotes(sql);
  // A ';' is the end: only blanks (comments are blanks in `code`) after it.
  std::size_t end = code.find(';');
  if (end != std::string::npos && code.find_first_not_of(" \t\r\n", end + 1) != std::string::npos) return std::nullopt;
  if (end == std::string::npos) end = code.size();
  bool first = true;
  for (std::size_t i = 0; i < end;) {
    if (!wordChar(code[i])) {
      ++i;
      continue;
    }
    std::size_t k = i;
    std::string word;
    while (k < end && wordChar(code[k])) word.push_back(char(std::tolower(static_cast<unsigned char>(code[k++]))));
    if (first && word != "insert" && word != "update" && word != "delete") return std::nullopt;
    if (word == "returning") return std::nullopt;
    first = false;
    i = k;
  }
  if (first) return std::nullopt;  // no words at all
  return std::string(sql.substr(0, end));
}

std::string rowCheckedSql(const std::string& cut, std::int64_t required) {
  // The newlines end a "--" comment the statement may end with.
  const std::string n = std::to_string(required);
  return "WITH keel_rows AS (\n" + cut + "\nRETURNING 1)\nSELECT CASE WHEN n = " + n + " THEN n ELSE ('" +
         std::string(kMark) + "' || n)::bigint END FROM (SELECT count(*) AS n FROM keel_rows) keel_count";
}

std::optional<std::int64_t> rowCheckFailure(std::string_view sqlstate, std::string_view message) {
  if (sqlstate != "22P02") return std::nullopt;  // invalid_text_representation
  auto at = message.find(kMark);
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view digits = message.substr(at + kMark.size());
  std::int64_t got = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), got);
  if (ec != std::errc() || p == digits.data() || p == digits.data() + digits.size() || *p != '"') return std::nullopt;
  return got;
}

}  // namespace keel::pg
