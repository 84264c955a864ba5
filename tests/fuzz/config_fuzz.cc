// Configuration files: the coordinator's and the agent's TOML, parsed by
// common/config.h's parseCoordinatorConfig / parseAgentConfig (the code
// loadCoordinatorConfig / loadAgentConfig run on a file's contents). Byte 0
// picks which; the rest is the file. A bad file must end in ConfigError,
// nothing else.

#include <string_view>

#include "common/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  if (size < 1) return 0;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (data[0] % 2 == 0) {
      (void)parseCoordinatorConfig("fuzz.toml", &text);
    } else {
      (void)parseAgentConfig("fuzz.toml", &text);
    }
  } catch (const ConfigError&) {
    // refused, with file and key named
  }
  return 0;
}
