#include "tools/certs.h"

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace keel {

namespace {

// Runs `cmd` (a shell command line); throws with its output on failure.
void run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) throw std::runtime_error("cannot run: " + cmd);
  char buf[512];
  while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
  int st = ::pclose(p);
  if (st != 0) {
    throw std::runtime_error("making certificates failed (is the openssl package installed?): " + cmd + "\n" + out);
  }
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace

void makeCertificates(const std::string& dir, const std::vector<std::string>& names, const std::string& caName,
                      int days) {
  std::filesystem::create_directories(dir);
  const std::string curve = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  const std::string d = " -days " + std::to_string(days);
  run("openssl req -x509" + curve + d + " -keyout " + quoted(dir + "/ca.key") + " -out " + quoted(dir + "/ca.pem") +
      " -subj " + quoted("/CN=" + caName));
  for (const auto& n : names) {
    std::string base = dir + "/" + n;
    {
      std::ofstream ext(base + ".ext", std::ios::trunc);
      ext << "subjectAltName = DNS:" << n << "\nbasicConstraints = CA:FALSE\n"
          << "extendedKeyUsage = serverAuth, clientAuth\n";
    }
    run("openssl req" + curve + " -keyout " + quoted(base + ".key") + " -out " + quoted(base + ".csr") + " -subj " +
        quoted("/CN=" + n));
    run("openssl x509 -req" + d + " -in " + quoted(base + ".csr") + " -CA " + quoted(dir + "/ca.pem") + " -CAkey " +
        quoted(dir + "/ca.key") + " -CAcreateserial -out " + quoted(base + ".pem") + " -extfile " +
        quoted(base + ".ext"));
    std::filesystem::remove(base + ".csr");
    std::filesystem::remove(base + ".ext");
  }
}

TlsConfig certificateFiles(const std::string& dir, const std::string& name) {
  TlsConfig t;
  t.ca = dir + "/ca.pem";
  t.cert = dir + "/" + name + ".pem";
  t.key = dir + "/" + name + ".key";
  return t;
}

}  // namespace keel
