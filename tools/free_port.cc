#include "tools/free_port.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>

namespace keel {

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
