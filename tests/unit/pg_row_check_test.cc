// Which declared statements PostgreSQL can check the row count of
// (participant/adapters/pg_row_check.h), the wrapped text, and reading the
// check's error back. That PostgreSQL runs the text and fails a wrong count
// is tested against a server in tests/pg (PgRowCheck).

#include "participant/adapters/pg_row_check.h"

#include <gtest/gtest.h>

#include "common/statements.h"

namespace keel {
namespace {

TEST(MaskSqlQuotes, BlanksQuotesAndCommentsKeepsLengthAndNewlines) {
  std::string sql = "UPDATE t SET a = 'x;y' -- returning\n, \"returning\" = $1 /* ; */ WHERE $$;$$ = $tag$a$tag$";
  std::string m = maskSqlQuotes(sql);
  ASSERT_EQ(m.size(), sql.size());
  EXPECT_EQ(m.find(';'), std::string::npos);
  EXPECT_EQ(m.find("returning"), std::string::npos);
  EXPECT_NE(m.find('\n'), std::string::npos);
  EXPECT_NE(m.find("$1"), std::string::npos);
  EXPECT_EQ(m.substr(0, 16), "UPDATE t SET a =");
  // An unterminated literal blanks to the end, no further.
  EXPECT_EQ(maskSqlQuotes("SELECT 'abc"), "SELECT     ");
}

TEST(PgRowCheck, OnlyALoneInsertUpdateOrDeleteWithoutReturningIsWrapped) {
  EXPECT_EQ(pg::rowCheckable("UPDATE a SET b = b - $1 WHERE k = $2"), "UPDATE a SET b = b - $1 WHERE k = $2");
  EXPECT_EQ(pg::rowCheckable("  delete from a where k = $1;  -- done\n"), "  delete from a where k = $1");
  EXPECT_TRUE(pg::rowCheckable("INSERT INTO a VALUES ($1) ON CONFLICT DO NOTHING"));
  EXPECT_TRUE(pg::rowCheckable("UPDATE a SET note = 'returning;' WHERE k = $1"));  // only inside a literal
  EXPECT_TRUE(pg::rowCheckable("/* lead */ UPDATE a SET b = 1"));
  EXPECT_FALSE(pg::rowCheckable("UPDATE a SET b = 1 RETURNING b"));
  EXPECT_FALSE(pg::rowCheckable("update a set b = 1 Returning *"));
  EXPECT_FALSE(pg::rowCheckable("SELECT balance FROM a WHERE k = $1"));
  EXPECT_FALSE(pg::rowCheckable("WITH x AS (SELECT 1) UPDATE a SET b = 1"));
  EXPECT_FALSE(pg::rowCheckable("UPDATE a SET b = 1; UPDATE a SET b = 2"));
  EXPECT_FALSE(pg::rowCheckable("SELECT pg_sleep($1)"));
  EXPECT_FALSE(pg::rowCheckable("   "));
  EXPECT_FALSE(pg::rowCheckable("-- only a comment"));
}

TEST(PgRowCheck, TheWrappedTextKeepsTheStatementAndItsCount) {
  std::string w = pg::rowCheckedSql("UPDATE a SET b = $1 -- tail", 3);
  EXPECT_NE(w.find("UPDATE a SET b = $1 -- tail\nRETURNING 1)"), std::string::npos) << w;
  EXPECT_NE(w.find("WHEN n = 3 THEN n"), std::string::npos) << w;
  EXPECT_EQ(w.rfind("WITH keel_rows AS (", 0), 0u) << w;
}

TEST(PgRowCheck, ReadsTheCountFromTheChecksErrorOnly) {
  EXPECT_EQ(pg::rowCheckFailure("22P02", "invalid input syntax for type bigint: \"keel_row_count=0\""), 0);
  EXPECT_EQ(pg::rowCheckFailure("22P02", "invalid input syntax for type bigint: \"keel_row_count=17\""), 17);
  EXPECT_FALSE(pg::rowCheckFailure("22P02", "invalid input syntax for type integer: \"abc\""));
  EXPECT_FALSE(pg::rowCheckFailure("23505", "invalid input syntax for type bigint: \"keel_row_count=0\""));
  EXPECT_FALSE(pg::rowCheckFailure("22P02", "invalid input syntax for type bigint: \"keel_row_count=\""));
  EXPECT_FALSE(pg::rowCheckFailure("22P02", "invalid input syntax for type bigint: \"keel_row_count=1x\""));
}

}  // namespace
}  // namespace keel
