#pragma once
// HostProcess: a keel-host (the reference host system, tools/host/) on
// loopback, for the host tests, keel-demo, keel-chaos and keel-bench; and
// the small blocking HTTP client they read its books with.
//
// The port is picked on the first start and kept across restarts, so the
// agents in front of it find it where it was.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tools/cluster.h"

namespace keel {

// One HTTP/1.1 exchange on a fresh connection (Connection: close).
struct HttpReply {
  int status = 0;  // 0: no answer (refused, reset, timeout)
  std::string body;
  std::string error;  // why there was no answer
};
HttpReply httpCall(const std::string& hostPort, const std::string& method, const std::string& path,
                   const std::string& body = "", std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

// The [host.operations] of keel-host's endpoints (docs/hosts.md), for
// keel-agent --host-operations.
extern const char* const kHostOperationsToml;
// Writes kHostOperationsToml to `dir`/host-operations.toml; returns the path.
std::string writeHostOperations(const std::string& dir);

struct HostOptions {
  std::string binDir;        // where keel-host is
  std::string dir;           // its data directory is dir/host, its log dir/host.log
  std::string name = "host"; // the file names' stem
  std::uint32_t accounts = 100;
  std::int64_t balance = 100000;
  std::chrono::milliseconds startTimeout{15000};
};

class HostProcess {
 public:
  explicit HostProcess(HostOptions opts);
  ~HostProcess();

  // `args`: extra flags for this start (fault switches).
  void start(const std::vector<std::string>& args = {});
  void kill(int sig = 9);
  void stop();
  bool running() { return p_.running(); }
  int waitExit(std::chrono::milliseconds timeout) { return p_.waitExit(timeout); }
  pid_t pid() const { return p_.pid(); }
  const std::string& address() const { return addr_; }
  std::string url() const { return "http://" + addr_; }
  std::string log() const { return opts_.dir + "/" + opts_.name + ".log"; }

  HttpReply get(const std::string& path) const { return httpCall(addr_, "GET", path); }
  HttpReply post(const std::string& path, const std::string& body) const { return httpCall(addr_, "POST", path, body); }
  // POST /admin/faults; throws unless 200.
  void setFaults(const std::string& json) const;

  struct Account {
    std::int64_t balance = 0, held = 0, incoming = 0;  // incoming: credits tried, not yet confirmed
  };
  struct Books {
    std::map<std::string, Account> accounts;
    std::size_t open = 0;  // tries neither confirmed nor cancelled
    std::int64_t total() const;
    std::int64_t held() const;      // holds and pending credits: 0 once every try is confirmed or cancelled
  };
  // GET /v1/accounts and /v1/open; throws if the host does not answer.
  Books books() const;

 private:
  HostOptions opts_;
  ChildProcess p_;
  std::string addr_;
  bool servedOnce_ = false;
};

}  // namespace keel
