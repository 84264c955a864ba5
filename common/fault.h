#pragma once
// Faults as people read them. Every reason a client, an operator or a log
// line shows for a failed call goes through describeFault: it says what
// happened (no answer in time, connection refused or lost, the peer's own
// refusal) without KJ internals or source text.

#include <kj/exception.h>

#include <string>

namespace keel {

std::string describeFault(const kj::Exception& e);

// A FAILED exception carrying `message` as it is (no source text added).
kj::Exception faultException(const std::string& message);

}  // namespace keel
