#include "common/tls.h"

#include <kj/async-unix.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <signal.h>

#include <ctime>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "common/log.h"

namespace keel {

namespace {

std::mutex g_mutex;
std::shared_ptr<TlsCredentials> g_current;  // guarded by g_mutex
std::string g_coordinatorName = "keel-coordinator";

std::string readPem(const std::string& what, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ConfigError("[tls] " + what + ": cannot read " + path + ": " + errnoText(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  if (s.find("-----BEGIN") == std::string::npos) throw ConfigError("[tls] " + what + ": " + path + " is not PEM");
  return s;
}

std::string opensslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "not readable";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

struct BioDel {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Del {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Del>;

std::vector<X509Ptr> certsOf(const std::string& what, const std::string& path, const std::string& pem) {
  std::unique_ptr<BIO, BioDel> bio(BIO_new_mem_buf(pem.data(), int(pem.size())));
  std::vector<X509Ptr> out;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(x);
  ERR_clear_error();  // the read that ended the loop
  if (out.empty()) throw ConfigError("[tls] " + what + ": " + path + " holds no certificate");
  return out;
}

std::string commonName(X509* x) {
  char buf[256] = {};
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, sizeof buf);
  return n > 0 ? std::string(buf, std::size_t(n)) : std::string();
}

std::int64_t notAfterOf(X509* x) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) return 0;
  return std::int64_t(timegm(&tm));
}

}  // namespace

TlsCredentials::~TlsCredentials() = default;

std::shared_ptr<TlsCredentials> TlsCredentials::load(const TlsConfig& cfg, kj::Timer* timer) {
  std::string caPem = readPem("ca", cfg.ca), certPem = readPem("cert", cfg.cert), keyPem = readPem("key", cfg.key);
  // Our own checks first, so that a mistake reads as what it is rather than
  // as a handshake failure later.
  auto cas = certsOf("ca", cfg.ca, caPem);
  auto chain = certsOf("cert", cfg.cert, certPem);
  std::unique_ptr<BIO, BioDel> keyBio(BIO_new_mem_buf(keyPem.data(), int(keyPem.size())));
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(keyBio.get(), nullptr, nullptr, nullptr);
  if (pkey == nullptr) throw ConfigError("[tls] key: " + cfg.key + " holds no private key: " + opensslError());
  bool matches = X509_check_private_key(chain[0].get(), pkey) == 1;
  EVP_PKEY_free(pkey);
  ERR_clear_error();
  if (!matches) throw ConfigError("[tls] key: " + cfg.key + " is not the key of the certificate in " + cfg.cert);
  {
    X509_STORE* store = X509_STORE_new();
    for (auto& c : cas) X509_STORE_add_cert(store, c.get());
    STACK_OF(X509)* untrusted = sk_X509_new_null();
    for (std::size_t i = 1; i < chain.size(); ++i) sk_X509_push(untrusted, chain[i].get());
    X509_STORE_CTX* ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store, chain[0].get(), untrusted);
    int ok = X509_verify_cert(ctx);
    std::string why = ok == 1 ? "" : X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
    X509_STORE_CTX_free(ctx);
    sk_X509_free(untrusted);
    X509_STORE_free(store);
    ERR_clear_error();
    if (ok != 1) throw ConfigError("[tls] cert: " + cfg.cert + " is not valid under the CA in " + cfg.ca + ": " + why);
  }
  std::shared_ptr<TlsCredentials> c(new TlsCredentials());
  c->ownName_ = commonName(chain[0].get());
  c->notAfter_ = notAfterOf(chain[0].get());
  if (c->ownName_.empty()) throw ConfigError("[tls] cert: " + cfg.cert + " has no common name (CN): Keel's identities are common names");
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    c->keypair_ = kj::heap<kj::TlsKeypair>(
        kj::TlsKeypair{kj::TlsPrivateKey(kj::StringPtr(keyPem.c_str())), kj::TlsCertificate(kj::StringPtr(certPem.c_str()))});
    // One trusted certificate per CA in the file (kj trusts the first of a
    // chain only): a bundle of the old and the new CA lets a CA be rotated.
    auto trusted = kj::heapArrayBuilder<kj::TlsCertificate>(cas.size());
    for (auto& ca : cas) {
      std::unique_ptr<BIO, BioDel> out(BIO_new(BIO_s_mem()));
      PEM_write_bio_X509(out.get(), ca.get());
      char* data = nullptr;
      long n = BIO_get_mem_data(out.get(), &data);
      std::string pem(data, std::size_t(n));
      trusted.add(kj::StringPtr(pem.c_str()));
    }
    c->trusted_ = trusted.finish();
    kj::TlsContext::Options o;
    o.useSystemTrustStore = false;  // only the configured CA
    o.verifyClients = true;         // mutual: a client without a certificate of the CA is refused
    o.trustedCertificates = c->trusted_;
    o.defaultKeypair = *c->keypair_;
    o.minVersion = kj::TlsVersion::TLS_1_2;
    if (timer != nullptr) {
      o.timer = *timer;
      o.acceptTimeout = cfg.handshakeTimeoutMs * kj::MILLISECONDS;
    }
    c->context_ = kj::heap<kj::TlsContext>(kj::mv(o));
  })) {
    throw ConfigError("[tls] cannot use " + cfg.cert + " / " + cfg.key + ": " + std::string(e->getDescription().cStr()));
  }
  return c;
}

void installTls(std::shared_ptr<TlsCredentials> creds) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_current = std::move(creds);
}

std::shared_ptr<TlsCredentials> currentTls() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_current;
}

void setCoordinatorName(std::string name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_coordinatorName = std::move(name);
}

std::string coordinatorName() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_coordinatorName;
}

void installClientTls(const std::string& ca, const std::string& cert, const std::string& key) {
  if (ca.empty() && cert.empty() && key.empty()) return;  // plaintext
  if (ca.empty() || cert.empty() || key.empty()) {
    throw ConfigError("TLS needs all of --tls-ca, --tls-cert and --tls-key (or KEEL_TLS_CA, KEEL_TLS_CERT, "
                      "KEEL_TLS_KEY)");
  }
  TlsConfig cfg;
  cfg.ca = ca;
  cfg.cert = cert;
  cfg.key = key;
  installTls(TlsCredentials::load(cfg, nullptr));
}

namespace {

void logCredentials(const char* what, const TlsCredentials& c) {
  auto days = (c.notAfter() - std::int64_t(std::time(nullptr))) / 86400;
  KEEL_LOG_INFO("tls: {} certificate '{}' (valid {} more day(s))", what, c.ownName(), days);
  if (days < 14) KEEL_LOG_WARN("tls: the certificate '{}' expires in {} day(s): rotate it (docs/security.md)", c.ownName(), days);
}

kj::Promise<void> reloadLoop(kj::AsyncIoContext& io, TlsConfig cfg) {
  return io.unixEventPort.onSignal(SIGHUP).then([&io, cfg](siginfo_t) mutable {
    if (!cfg.enabled()) {
      KEEL_LOG_INFO("SIGHUP: insecure (plaintext), no certificates to reload");
    } else {
      try {
        auto fresh = TlsCredentials::load(cfg, &io.provider->getTimer());
        installTls(fresh);
        logCredentials("reloaded on SIGHUP: new connections use", *fresh);
      } catch (const std::exception& e) {
        KEEL_LOG_ERROR("tls: SIGHUP reload failed, the old certificates stay in use: {}", e.what());
      }
    }
    return reloadLoop(io, cfg);
  });
}

}  // namespace

kj::Promise<void> startTls(kj::AsyncIoContext& io, const TlsConfig& cfg) {
  setCoordinatorName(cfg.coordinatorName);
  if (cfg.enabled()) {
    auto creds = TlsCredentials::load(cfg, &io.provider->getTimer());
    logCredentials("serving and calling as", *creds);
    installTls(std::move(creds));
  } else {
    KEEL_LOG_WARN("tls: insecure = true: plaintext, no identities, every peer has every role (loopback only)");
    installTls(nullptr);
  }
  return reloadLoop(io, cfg).eagerlyEvaluate([](kj::Exception&& e) {
    KEEL_LOG_ERROR("tls: the SIGHUP reload loop ended: {}", e.getDescription().cStr());
  });
}

}  // namespace keel
