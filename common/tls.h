#pragma once
// Mutual TLS on every Keel link (docs/security.md), on kj-tls (OpenSSL).
//
// A process loads one set of credentials (the CA it trusts, its own
// certificate and key) and uses it both ways: as a server it requires a
// client certificate signed by the CA and learns the peer's identity (the
// certificate's common name); as a client it presents its certificate and
// checks that the server's names the peer it meant to reach.
//
// The credentials in use are process-wide and replaced whole on a reload
// (SIGHUP): new connections take the new ones, open connections keep the
// ones they began with (each holds a reference), so no work is dropped.

#include <kj/async-io.h>
#include <kj/compat/tls.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/config.h"

namespace keel {

class TlsCredentials {
 public:
  // Reads and checks the PEM files of `cfg` (ca, cert, key): each readable,
  // the certificate signed by the CA and not expired, the key its key.
  // Throws ConfigError naming the file and what is wrong. `timer` bounds
  // handshakes of accepted connections (cfg.handshakeTimeoutMs); a client
  // that accepts nothing may pass null.
  static std::shared_ptr<TlsCredentials> load(const TlsConfig& cfg, kj::Timer* timer);
  ~TlsCredentials();

  kj::TlsContext& context() { return *context_; }
  // Our certificate's common name and expiry (unix seconds), for logs.
  const std::string& ownName() const { return ownName_; }
  std::int64_t notAfter() const { return notAfter_; }

 private:
  TlsCredentials() = default;
  kj::Own<kj::TlsKeypair> keypair_;
  kj::Array<kj::TlsCertificate> trusted_;
  kj::Own<kj::TlsContext> context_;
  std::string ownName_;
  std::int64_t notAfter_ = 0;
};

// The credentials new connections use (null: plaintext).
void installTls(std::shared_ptr<TlsCredentials> creds);
std::shared_ptr<TlsCredentials> currentTls();

// The certificate name a client expects of a coordinator it dials, when the
// address does not say ("NAME@host:port" does). Default "keel-coordinator".
void setCoordinatorName(std::string name);
std::string coordinatorName();

// A client process's TLS set-up from its flags or environment: files given
// → loaded and installed; none → plaintext. Some but not all given, or a
// file that does not load: ConfigError saying which.
void installClientTls(const std::string& ca, const std::string& cert, const std::string& key);

// Loads `cfg` (TLS or insecure, checkTransport() already passed) and
// installs it; logs what the process is and until when its certificate
// is valid. Then, until `io` ends, SIGHUP reloads the files: a good set
// replaces the old one for new connections, a bad one is logged and the
// old one kept. Call captureTerminationSignals() (which also captures
// SIGHUP) before kj::setupAsyncIo(). The returned promise is the reload
// loop: keep it (it never resolves).
kj::Promise<void> startTls(kj::AsyncIoContext& io, const TlsConfig& cfg);

}  // namespace keel
