// Config parsing (common/config.h) from text. Regression tests for what
// tests/fuzz found (docs/fuzzing.md).

#include "common/config.h"

#include <gtest/gtest.h>

#include <string>

namespace keel {
namespace {

std::string errorOf(std::string_view text) {
  try {
    parseCoordinatorConfig("c.toml", &text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

// Found by fuzz_config: an integer key given a float out of int64's range
// was converted to int64 before its type was checked (undefined behaviour;
// UBSan stops the unit tests of build-asan on it).
TEST(Config, AFloatWhereAnIntegerBelongsIsRefusedBeforeAnyConversion) {
  for (const char* v : {"2E56", "-2E56", "1.5", "inf", "nan"}) {
    std::string text = std::string("[coordinator]\nbatch_max = ") + v + "\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
    EXPECT_EQ(errorOf(text), "c.toml: [coordinator] batch_max must be an integer") << v;
  }
}

TEST(Config, TextParsesAsAFileDoes) {
  std::string_view text = "[coordinator]\nbatch_max = 64\n[participants]\nbank-a = \"127.0.0.1:7401\"\n";
  auto c = parseCoordinatorConfig("c.toml", &text);
  EXPECT_EQ(c.batchMax, 64u);
  EXPECT_EQ(c.participants.at("bank-a"), "127.0.0.1:7401");
}

}  // namespace
}  // namespace keel
