#include "tools/free_port.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>

namespace keel {

bool claimPort(unsigned port) {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string d = std::string(t != nullptr && *t != '\0' ? t : "/tmp") + "/keel-ports";
    if (::mkdir(d.c_str(), 01777) == 0) ::chmod(d.c_str(), 01777);  // shared by every user's tests, like /tmp
    return d;
  }();
  const std::string path = dir + "/" + std::to_string(port);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) return true;  // no folder to claim in: the bind probe decides alone
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const bool heldElsewhere = errno == EWOULDBLOCK;
    ::close(fd);
    return !heldElsewhere;
  }
  // Kept open, and so locked, until this process ends: the claim lasts as
  // long as the servers it started on the port may (they are its children,
  // or it is one). The descriptor is deliberately never closed.
  return true;
}

unsigned pickFreePort() {
  // A probe bind reserves nothing, so two picks in one process (a test's
  // admin port and its cluster's coordinator port, say) must not hand out
  // the same number: the picks are remembered and never repeated. Two
  // such picks once collided in CI, twice in one day, for a reason not
  // found; whatever the generator did, this makes it impossible.
  static std::mutex mu;
  static std::set<unsigned> given;
  static std::mt19937 rng = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), unsigned(::getpid()),
                      unsigned(std::chrono::steady_clock::now().time_since_epoch().count())};
    return std::mt19937(seq);
  }();
  std::lock_guard<std::mutex> lock(mu);
  for (int attempt = 0; attempt < 500; ++attempt) {
    unsigned port = 16384 + rng() % (32768 - 16384);
    if (given.count(port)) continue;
    // Another test program running at the same time may have picked it
    // (and not bound it yet): claimed across processes first.
    if (!claimPort(port)) {
      given.insert(port);  // claimed by someone else: not tried again here
      continue;
    }
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error(std::string("pickFreePort: socket: ") + std::strerror(errno));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(std::uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::close(fd);
    if (rc == 0) {
      given.insert(port);
      return port;
    }
  }
  throw std::runtime_error("no free loopback port below 32768 (500 tried)");
}

}  // namespace keel
