#include "tools/child_process.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <thread>

namespace keel::test {

namespace {

void childWrite(const std::string& s) {
  ssize_t ignored = ::write(2, s.data(), s.size());
  (void)ignored;
}

}  // namespace

pid_t spawnChild(const std::string& who, const std::vector<std::string>& args, const std::vector<std::string>& env,
                 const std::string& logFile, int deathSignal, const ChildUser* user) {
  std::vector<std::string> argsCopy = args, envCopy = env;
  std::vector<char*> argv, envp;
  for (auto& a : argsCopy) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : envCopy) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string execFailed = "keel " + who + ": cannot exec " + args.at(0) + "\n";
  const std::string dropFailed = "keel " + who + ": cannot switch to user " + (user ? user->name : "") + "\n";

  int logFd = ::open(logFile.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (logFd < 0) throw std::runtime_error(who + ": cannot open " + logFile + ": " + std::strerror(errno));
  int nullFd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (nullFd < 0) {
    ::close(logFd);
    throw std::runtime_error(who + ": cannot open /dev/null: " + std::strerror(errno));
  }
  long maxFd = ::sysconf(_SC_OPEN_MAX);
  pid_t parent = ::getpid();

  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(nullFd, 0);
    ::dup2(logFd, 1);
    ::dup2(logFd, 2);
    if (::close_range(3, ~0U, 0) != 0) {
      for (long fd = 3; fd < maxFd; ++fd) ::close(int(fd));
    }
    if (user != nullptr) {
      if (::setgroups(1, &user->gid) != 0 || ::setgid(user->gid) != 0 || ::setuid(user->uid) != 0) {
        childWrite(dropFailed);
        ::_exit(126);
      }
    }
    // After setuid: a change of credentials clears the death signal.
    ::prctl(PR_SET_PDEATHSIG, deathSignal);
    if (::getppid() != parent) ::_exit(1);  // the parent is already gone
    ::execve(argv[0], argv.data(), envp.data());
    childWrite(execFailed);
    ::_exit(127);
  }
  int forkErr = errno;
  ::close(logFd);
  ::close(nullFd);
  if (pid < 0) throw std::runtime_error(who + ": fork failed: " + std::strerror(forkErr));
  return pid;
}

std::optional<int> waitChild(pid_t pid, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return 0;  // not our child any more (already reaped)
    if (std::chrono::steady_clock::now() >= until) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::string describeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("signal ") + ::strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

std::optional<std::string> lastLinesOf(const std::string& file, std::size_t lines) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return std::nullopt;
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  in.seekg(std::max<std::streamoff>(0, size - 65536));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t pos = text.size();
  if (pos > 0 && text[pos - 1] == '\n') --pos;
  for (std::size_t n = 0; n < lines && pos != std::string::npos && pos > 0; ++n) pos = text.rfind('\n', pos - 1);
  return pos == std::string::npos ? text : text.substr(pos + 1);
}

}  // namespace keel::test
