#pragma once
// Logging: spdlog to stderr, one line per event, with the process name.

#include <spdlog/spdlog.h>

#include <string>

namespace keel {
// Sets the process-wide logger ("coordinator", "agent bank-a", ...).
// Level from KEEL_LOG (trace, debug, info, warn, error); default info.
void initLogging(const std::string& processName);
// strerror(err) in lower case, to end an operator-facing message:
// "cannot listen on 127.0.0.1:7400: address already in use".
std::string errnoText(int err);
}  // namespace keel

#define KEEL_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define KEEL_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define KEEL_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)
#define KEEL_LOG_DEBUG(...) ::spdlog::debug(__VA_ARGS__)
