#include "common/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <cctype>
#include <cstdlib>
#include <cstring>

namespace keel {

void initLogging(const std::string& processName) {
  auto logger = spdlog::stderr_logger_mt(processName);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %n %^%l%$: %v");
  const char* lvl = std::getenv("KEEL_LOG");
  logger->set_level(lvl != nullptr ? spdlog::level::from_str(lvl) : spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

std::string errnoText(int err) {
  std::string s = std::strerror(err);
  if (!s.empty()) s[0] = char(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

}  // namespace keel
