#include "bench/folder_reaper.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

namespace keel::bench {

namespace {

int toReaper = -1;  // keel-bench's end of the socket pair; -1 without a reaper

// Messages, one a line: "o0 DIR" / "o1 DIR" (open; 1: keep), "c DIR"
// (closed), "i" (interrupted).
void say(const std::string& line) {
  if (toReaper < 0) return;
  std::string l = line + "\n";
  const char* p = l.data();
  std::size_t n = l.size();
  while (n > 0) {
    ssize_t w = ::send(toReaper, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  // the reaper is gone: nothing to tell
    p += w;
    n -= std::size_t(w);
  }
}

void onInterrupt(int sig) {
  if (toReaper >= 0) {
    ssize_t ignored = ::send(toReaper, "i\n", 2, MSG_NOSIGNAL);
    (void)ignored;
  }
  // SA_RESETHAND put the default action back: once this returns, the
  // signal (blocked while in here) ends keel-bench as it would have.
  ::raise(sig);
}

// Removes `dir`, waiting up to 5 s for the processes ending with keel-bench
// to stop writing into it.
bool removeWaiting(const std::string& dir) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    if (!ec && !std::filesystem::exists(dir, ec)) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

[[noreturn]] void reaperMain(int from) {
  // Ctrl-C reaches the whole process group: the reaper outlives it.
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
  std::signal(SIGHUP, SIG_IGN);
  // Whoever reads keel-bench's stdout to its end need not wait for this.
  int devNull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devNull >= 0) {
    ::dup2(devNull, STDIN_FILENO);
    ::dup2(devNull, STDOUT_FILENO);
  }
  std::map<std::string, bool> open;  // dir -> keep
  bool interrupted = false;
  std::string buf;
  char chunk[4096];
  for (;;) {
    ssize_t n = ::read(from, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // keel-bench ended, however it did
    buf.append(chunk, std::size_t(n));
    std::size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      if (line == "i") {
        interrupted = true;
      } else if (line.size() > 3 && line[0] == 'o') {
        open[line.substr(3)] = line[1] == '1';
      } else if (line.size() > 2 && line[0] == 'c') {
        open.erase(line.substr(2));
      }
    }
  }
  for (const auto& [dir, keep] : open) {
    if (interrupted && !keep) {
      if (removeWaiting(dir)) {
        std::fprintf(stderr, "keel-bench: interrupted: %s removed\n", dir.c_str());
      } else {
        std::fprintf(stderr, "keel-bench: interrupted: %s could not be removed (still in use?); remove it by hand\n",
                     dir.c_str());
      }
    } else {
      std::fprintf(stderr, "keel-bench: %s: data and logs kept in %s\n",
                   interrupted ? "interrupted" : "ended before its tear-down (killed or crashed)", dir.c_str());
    }
  }
  std::fflush(stderr);
  ::_exit(0);
}

}  // namespace

void startFolderReaper() {
  if (toReaper >= 0) return;
  // A socket pair, not a pipe: send(MSG_NOSIGNAL) to a reaper that is gone
  // fails without a SIGPIPE, and SIGPIPE's disposition (inherited by every
  // process keel-bench starts) stays as it was.
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    std::fprintf(stderr, "keel-bench: no folder reaper (socketpair: %s): an interrupted run leaves its folder\n",
                 std::strerror(errno));
    return;
  }
  std::fflush(nullptr);  // nothing buffered is written twice
  pid_t pid = ::fork();
  if (pid < 0) {
    std::fprintf(stderr, "keel-bench: no folder reaper (fork: %s): an interrupted run leaves its folder\n",
                 std::strerror(errno));
    ::close(fds[0]);
    ::close(fds[1]);
    return;
  }
  if (pid == 0) {
    ::close(fds[1]);
    reaperMain(fds[0]);
  }
  ::close(fds[0]);
  toReaper = fds[1];
  struct sigaction sa {};
  sa.sa_handler = onInterrupt;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
}

void reaperOpen(const std::string& dir, bool keep) { say(std::string("o") + (keep ? "1 " : "0 ") + dir); }

void reaperClose(const std::string& dir) { say("c " + dir); }

}  // namespace keel::bench
