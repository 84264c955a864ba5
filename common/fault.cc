#include "common/fault.h"

#include <string_view>

namespace keel {

namespace {

bool startsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

std::string describeFault(const kj::Exception& e) {
  std::string d = e.getDescription().cStr();
  // What the peer said is the interesting part: drop the wrappers RPC and KJ
  // put around it.
  for (bool stripped = true; stripped;) {
    stripped = false;
    for (std::string_view p : {"remote exception: ", "std::exception: "}) {
      if (startsWith(d, p)) {
        d.erase(0, p.size());
        stripped = true;
      }
    }
  }
  if (d.rfind("DNS lookup failed", 0) == 0) return "host name not found";
  if (d.find("PromiseFulfiller was destroyed") != std::string::npos) {
    return "the call was abandoned (its connection was reset or the process is stopping)";
  }
  switch (e.getType()) {
    case kj::Exception::Type::DISCONNECTED:
      if (d.find("Connection refused") != std::string::npos) return "connection refused";
      return "connection lost";
    case kj::Exception::Type::OVERLOADED:
      if (d.find("timed out") != std::string::npos) return "no answer within the deadline";
      return "overloaded: " + d;
    default:
      break;
  }
  // A KJ_REQUIRE/KJ_ASSERT text ("expected a < b [1 < 2]; what; a = 1"):
  // keep only the message.
  if (startsWith(d, "expected ")) {
    auto semi = d.find("; ");
    if (semi != std::string::npos) {
      d.erase(0, semi + 2);
      auto more = d.find("; ");
      if (more != std::string::npos) d.erase(more);
    }
  }
  return d;
}

kj::Exception faultException(const std::string& message) {
  return kj::Exception(kj::Exception::Type::FAILED, "keel", 0, kj::heapString(message));
}

}  // namespace keel
