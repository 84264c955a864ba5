#pragma once
// The row check PostgreSQL makes itself (docs/postgres.md, "Only what passed
// its checks is prepared"). A statement whose row count is checked
// (expect_rows) used to be checked by the agent after it ran, so PREPARE
// TRANSACTION could not ride the prepare's one pipeline: a refused branch
// would be prepared before it was refused. Wrapped as
//
//   WITH keel_rows AS (<the statement> RETURNING 1)
//   SELECT CASE WHEN n = <required> THEN n
//               ELSE ('keel_row_count=' || n)::bigint END
//   FROM (SELECT count(*) AS n FROM keel_rows) keel_count
//
// a wrong count is an error inside PostgreSQL (the cast fails: SQLSTATE
// 22P02), which stops the pipeline before its PREPARE TRANSACTION; a right
// one comes back as one row holding the count. No object is created in the
// user's database, and the statement's parameters are the same $1..$n.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace keel::pg {

// The statement cut to what the wrapping takes (a trailing ';' and what
// follows it dropped), or nullopt when it cannot be wrapped: only a lone
// INSERT, UPDATE or DELETE without a RETURNING clause of its own can (a
// WITH in front, a RETURNING, a SELECT or a second statement cannot). The
// agent keeps the row check of its own, and PREPARE TRANSACTION as a
// second round trip, for the rest.
std::optional<std::string> rowCheckable(std::string_view sql);

// The wrapped text of a checkable statement (`cut` from rowCheckable) that
// must touch exactly `required` (>= 0) rows.
std::string rowCheckedSql(const std::string& cut, std::int64_t required);

// The row count a wrapped statement touched when its check failed, read
// from the error PostgreSQL sent (SQLSTATE, primary message); nullopt when
// the error is not the check's.
std::optional<std::int64_t> rowCheckFailure(std::string_view sqlstate, std::string_view message);

}  // namespace keel::pg
