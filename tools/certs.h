#pragma once
// Throwaway certificates for demos and tests: a CA and one certificate per
// name (its common name and DNS subject alternative name), made with the
// `openssl` command (Debian's openssl package). Production certificates
// come from the bank's own CA: docs/security.md.

#include <string>
#include <vector>

#include "common/config.h"

namespace keel {

// Writes DIR/ca.pem (and ca.key) and, for each name, DIR/NAME.pem and
// DIR/NAME.key (EC P-256, valid `days`). `caName` is the CA's common name:
// two calls with different CA names make CAs that do not trust each other.
// Throws std::runtime_error with openssl's output when a step fails.
void makeCertificates(const std::string& dir, const std::vector<std::string>& names,
                      const std::string& caName = "keel-throwaway-ca", int days = 2);

// The [tls] of `name` under DIR as made above (ca, cert, key).
TlsConfig certificateFiles(const std::string& dir, const std::string& name);

}  // namespace keel
