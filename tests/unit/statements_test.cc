// Declared statements (common/statements.h): the parameter types, the $n
// check of a declaration's SQL and the check of a call against its
// declaration.

#include "common/statements.h"

#include <gtest/gtest.h>

namespace keel {
namespace {

TEST(StatementParamTypes, KnownTypesAndNullable) {
  auto p = parseParamType("int8");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->type, SqlValue::Type::Int);
  EXPECT_FALSE(p->nullable);
  p = parseParamType("text?");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->type, SqlValue::Type::Text);
  EXPECT_TRUE(p->nullable);
  for (const char* name : {"int8", "text", "float8", "bool", "int8?", "text?", "float8?", "bool?"}) {
    auto t = parseParamType(name);
    ASSERT_TRUE(t) << name;
    EXPECT_EQ(paramTypeName(*t), name);
  }
  for (const char* name : {"", "?", "int", "int4", "bigint", "TEXT", "text??", " text", "null"}) {
    EXPECT_FALSE(parseParamType(name)) << name;
  }
}

TEST(StatementSql, EveryParameterUsedAndNoneBeyond) {
  EXPECT_EQ(checkSql("UPDATE t SET b = b - $2 WHERE id = $1 AND b >= $2", 2), "");
  EXPECT_EQ(checkSql("SELECT 1", 0), "");
  EXPECT_EQ(checkSql("SELECT $1", 2), "params declares 2 parameter(s) but sql never uses $2");
  EXPECT_EQ(checkSql("SELECT $1, $3", 2), "sql uses $3 but params declares 2 parameter(s)");
  EXPECT_EQ(checkSql("SELECT $0", 1), "sql uses $0 but params declares 1 parameter(s)");
  EXPECT_EQ(checkSql("SELECT $99999999999999999999", 1),
            "sql uses $99999999999999999999 but params declares 1 parameter(s)");
  EXPECT_EQ(checkSql("", 0), "sql is empty");
  EXPECT_EQ(checkSql(" \n\t", 0), "sql is empty");
  EXPECT_EQ(checkSql(std::string(Limits::kMaxSqlBytes + 1, ' ') + "SELECT 1", 0),
            "sql is 65545 bytes long; the limit is 65536");
}

TEST(StatementSql, DollarSignsThatAreNoParameters) {
  // In literals, quoted identifiers, comments and dollar quotes; in a word.
  EXPECT_EQ(checkSql("SELECT '$2', \"$3\", $1 -- $4\n", 1), "");
  EXPECT_EQ(checkSql("SELECT $1 /* $2 */", 1), "");
  EXPECT_EQ(checkSql("SELECT 'it''s $2', $1", 1), "");
  EXPECT_EQ(checkSql("SELECT E'\\' $2', $1", 1), "");
  EXPECT_EQ(checkSql("SELECT $$ $2 $$, $tag$ $3 $tag$, $1", 1), "");
  EXPECT_EQ(checkSql("SELECT a$2 FROM t WHERE x = $1", 1), "");
  // ...but the parameter right after one of them counts.
  EXPECT_EQ(checkSql("SELECT 'x'||$2", 1), "sql uses $2 but params declares 1 parameter(s)");
  EXPECT_EQ(checkSql("SELECT $$x$$, $1", 0), "sql uses $1 but params declares 0 parameter(s)");
}

DeclaredStatement debit() {
  DeclaredStatement d;
  d.name = "debit";
  d.sql = "UPDATE accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2";
  d.params = {*parseParamType("text"), *parseParamType("int8")};
  d.expectRows = 1;
  return d;
}

TEST(StatementCall, FitsItsDeclaration) {
  auto d = debit();
  auto call = Op::statement("bank-a", "debit", {SqlValue::ofText("alice"), SqlValue::ofInt(5)});
  EXPECT_EQ(checkCall(d, call), std::nullopt);
  EXPECT_EQ(requiredRows(d, call), 1);
  call.expectRows = 1;  // the same as declared
  EXPECT_EQ(checkCall(d, call), std::nullopt);
}

TEST(StatementCall, RefusedWithAReason) {
  auto d = debit();
  auto text = SqlValue::ofText("alice");
  auto amount = SqlValue::ofInt(5);
  struct Case {
    Op op;
    std::string expect;
  };
  Op freeSql = Op::statement("bank-a", "debit", {text, amount});
  freeSql.sql = "DELETE FROM accounts";
  std::vector<Case> cases = {
      {freeSql, kFreeSqlRefused},
      {Op::statement("bank-a", "debit", {text}), "statement 'debit' takes 2 parameter(s), got 1"},
      {Op::statement("bank-a", "debit", {text, amount, amount}), "statement 'debit' takes 2 parameter(s), got 3"},
      {Op::statement("bank-a", "debit", {amount, amount}), "statement 'debit' parameter $1 is text, got int"},
      {Op::statement("bank-a", "debit", {text, SqlValue::ofFloat(5)}),
       "statement 'debit' parameter $2 is int8, got float"},
      {Op::statement("bank-a", "debit", {text, SqlValue::ofBool(true)}),
       "statement 'debit' parameter $2 is int8, got bool"},
      {Op::statement("bank-a", "debit", {SqlValue::null(), amount}),
       "statement 'debit' parameter $1 is text, got null (declare it text? to allow null)"},
      {Op::statement("bank-a", "debit", {SqlValue::ofText(std::string(Limits::kMaxSqlParamBytes + 1, 'x')), amount}),
       "statement 'debit': SQL parameter $1 is 65537 bytes long; the limit is 65536"},
      {Op::statement("bank-a", "debit", std::vector<SqlValue>(Limits::kMaxSqlParams + 1, amount)),
       "statement 'debit': more than 256 SQL parameters; the limit is 256"},
      {Op::statement("bank-a", "debit", {text, amount}, 0),
       "statement 'debit' is declared to touch 1 row(s); the operation asks for 0"},
      {Op::statement("bank-a", "debit", {text, amount}, -2),
       "statement 'debit': expected row count must be -1 (any) or >= 0"},
  };
  for (auto& c : cases) {
    auto why = checkCall(d, c.op);
    ASSERT_TRUE(why) << c.expect;
    EXPECT_EQ(*why, c.expect);
  }
}

TEST(StatementCall, NullWhereDeclaredAndRowsTightenedOnlyWhereAnyIsDeclared) {
  DeclaredStatement d;
  d.name = "note";
  d.sql = "UPDATE t SET note = $2 WHERE id = $1";
  d.params = {*parseParamType("int8"), *parseParamType("text?")};
  auto call = Op::statement("db", "note", {SqlValue::ofInt(1), SqlValue::null()});
  EXPECT_EQ(checkCall(d, call), std::nullopt);
  EXPECT_EQ(requiredRows(d, call), -1);  // any, as declared
  call.expectRows = 3;                   // a client may ask for an exact count
  EXPECT_EQ(checkCall(d, call), std::nullopt);
  EXPECT_EQ(requiredRows(d, call), 3);
}

}  // namespace
}  // namespace keel
