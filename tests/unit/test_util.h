#pragma once
// Helpers shared by the unit tests: a temporary directory that removes
// itself, and fork()ed children that report numbers over a pipe.
//
// Fork rules (LMDB must not be used across fork): a test forks BEFORE it
// opens any environment, the child opens its own, and the child never
// returns into GoogleTest: it leaves with _exit() or dies by a signal.

#include <signal.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/temp_dir.h"

namespace keel::test {

// A fresh directory under /tmp, removed with its contents.
class TempDir : public keel::TempDir {
 public:
  TempDir() : keel::TempDir("keel-unit") {}
};

// Writes one u64 to fd; a write of 8 bytes to a pipe is atomic.
inline void reportU64(int fd, std::uint64_t v) {
  const char* p = reinterpret_cast<const char*>(&v);
  std::size_t left = sizeof v;
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ::_exit(90);  // the parent went away
    p += n;
    left -= std::size_t(n);
  }
}

// A forked child whose stdout-like pipe carries u64 reports.
struct Child {
  pid_t pid = -1;
  int readFd = -1;

  // Reads one u64; false at end of stream (every writer closed or died).
  bool readU64(std::uint64_t& v) {
    char* p = reinterpret_cast<char*>(&v);
    std::size_t got = 0;
    while (got < sizeof v) {
      ssize_t n = ::read(readFd, p + got, sizeof v - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;  // a torn tail cannot happen: writes are atomic
      got += std::size_t(n);
    }
    return true;
  }
  std::vector<std::uint64_t> readAll() {
    std::vector<std::uint64_t> out;
    std::uint64_t v;
    while (readU64(v)) out.push_back(v);
    return out;
  }
  // Waits for the child and returns its wait status.
  int wait() {
    if (readFd >= 0) ::close(readFd);
    readFd = -1;
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
  }
};

// Forks; the child runs body(writeFd) and _exit()s with its result (or 99
// if it threw). The parent gets the pid and the read end of the pipe.
inline Child forkChild(const std::function<int(int)>& body) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  std::fflush(nullptr);  // do not let the child flush the parent's buffers
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::close(fds[0]);
    int rc = 99;
    try {
      rc = body(fds[1]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child failed: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "child failed\n");
    }
    ::_exit(rc);
  }
  ::close(fds[1]);
  return Child{pid, fds[0]};
}

inline bool killedBy(int status, int sig) { return WIFSIGNALED(status) && WTERMSIG(status) == sig; }

}  // namespace keel::test
