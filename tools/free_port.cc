#include "tools/free_port.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>

namespace keel {

unsigned pickFreePort() {
  static std::mt19937 rng(std::random_device{}());
  for (int attempt = 0; attempt < 500; ++attempt) {
    unsigned port = 16384 + rng() % (32768 - 16384);
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error(std::string("pickFreePort: socket: ") + std::strerror(errno));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(std::uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::close(fd);
    if (rc == 0) return port;
  }
  throw std::runtime_error("no free loopback port below 32768 (500 tried)");
}

}  // namespace keel
