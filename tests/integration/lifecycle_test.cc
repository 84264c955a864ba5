// KEEL_STOP_WITH_PARENT (common/daemon.h): a server started by a harness
// stops once the harness is gone, however it ended (SIGKILL included);
// a bad value refuses the start with nothing touched.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/integration/cluster_fixture.h"

namespace keel::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// 'R', 'S', 'Z', ... from /proc/PID/stat; 0 when there is no such process.
char processState(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return 0;
  auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() ? 0 : line[close + 2];
}

bool exited(pid_t pid) {
  char s = processState(pid);
  return s == 0 || s == 'Z' || s == 'X';  // gone, or a zombie nobody reaped yet
}

class StopWithParentTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = makeTempDir("keel-life"); }
  void TearDown() override {
    if (shell_ > 0) {
      ::kill(-shell_, SIGKILL);  // its process group: the server too, if a check failed first
      ::waitpid(shell_, nullptr, 0);
    }
    if (server_ > 0 && !exited(server_)) ::kill(server_, SIGKILL);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Starts `command` in the background from a shell (the stand-in harness,
  // in a process group of its own) with KEEL_STOP_WITH_PARENT naming that
  // shell, and waits until the server wrote `ready`. The server's pid is
  // server_, the shell's shell_.
  void startUnderShell(const std::string& command, const std::string& ready) {
    std::string pidFile = dir_ + "/server.pid";
    std::string script = "KEEL_STOP_WITH_PARENT=$$ " + command + " > " + dir_ + "/server.log 2>&1 & echo $! > " +
                         pidFile + "; while :; do sleep 1; done";
    shell_ = ::fork();
    ASSERT_GE(shell_, 0);
    if (shell_ == 0) {
      ::setpgid(0, 0);
      ::execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    auto until = std::chrono::steady_clock::now() + 30s;
    while (!fs::exists(ready) && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
    ASSERT_TRUE(fs::exists(ready)) << "the server never got ready: " << readFile(dir_ + "/server.log");
    std::ifstream(pidFile) >> server_;
    ASSERT_GT(server_, 0);
  }

  // Kills the shell with SIGKILL; the server must stop on its own, and say
  // why.
  void killShellAndExpectTheServerToStop() {
    std::this_thread::sleep_for(300ms);
    ASSERT_FALSE(exited(server_)) << "the server stopped while its harness was still there: "
                                  << readFile(dir_ + "/server.log");
    ASSERT_EQ(::kill(shell_, SIGKILL), 0);
    ::waitpid(shell_, nullptr, 0);
    shell_ = -1;
    auto until = std::chrono::steady_clock::now() + 15s;
    while (!exited(server_) && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
    EXPECT_TRUE(exited(server_)) << "still running 15 s after its harness was killed";
    std::string log = readFile(dir_ + "/server.log");
    EXPECT_NE(log.find("(KEEL_STOP_WITH_PARENT) has exited: stopping"), std::string::npos) << log;
  }

  std::string dir_;
  pid_t shell_ = -1;
  pid_t server_ = -1;
};

TEST_F(StopWithParentTest, AnAgentStopsWhenItsHarnessIsKilled) {
  std::string ready = dir_ + "/agent.ready";
  startUnderShell(binDir() + "/keel-agent --name bank-a --listen 127.0.0.1:0 --data-dir " + dir_ +
                      "/bank-a --ready-file " + ready + " --insecure --init",
                  ready);
  killShellAndExpectTheServerToStop();
  EXPECT_NE(readFile(dir_ + "/server.log").find("stopping"), std::string::npos);
}

TEST_F(StopWithParentTest, KeelHostStopsWhenItsHarnessIsKilled) {
  std::string ready = dir_ + "/host.ready";
  startUnderShell(binDir() + "/keel-host --listen 127.0.0.1:0 --data-dir " + dir_ + "/host --init --ready-file " + ready,
                  ready);
  killShellAndExpectTheServerToStop();
}

// Named a process that is already gone (a child of ours, reaped), a server
// starts, says so, and stops at once with status 0 (timeout's 124 would
// mean it kept running).
TEST_F(StopWithParentTest, AServerWhoseHarnessIsAlreadyGoneStopsAtOnce) {
  pid_t gone = ::fork();
  ASSERT_GE(gone, 0);
  if (gone == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(gone, nullptr, 0), gone);
  std::string env = "KEEL_STOP_WITH_PARENT=" + std::to_string(gone) + " timeout 30 ";
  auto agent = run(env + binDir() + "/keel-agent --name bank-a --listen 127.0.0.1:0 --data-dir " + dir_ +
                   "/bank-a --insecure --init");
  EXPECT_EQ(agent.exitCode, 0) << agent.output;
  EXPECT_NE(agent.output.find("(KEEL_STOP_WITH_PARENT) has already exited: stopping"), std::string::npos)
      << agent.output;
  auto host = run(env + binDir() + "/keel-host --listen 127.0.0.1:0 --data-dir " + dir_ + "/host --init");
  EXPECT_EQ(host.exitCode, 0) << host.output;
  EXPECT_NE(host.output.find("(KEEL_STOP_WITH_PARENT) has already exited: stopping"), std::string::npos)
      << host.output;
}

TEST_F(StopWithParentTest, ABadValueRefusesTheStartWithNothingTouched) {
  for (const char* bad : {"abc", "12x", "0", "-5", "99999999999"}) {
    auto agent = run(std::string("KEEL_STOP_WITH_PARENT=") + bad + " " + binDir() +
                     "/keel-agent --name bank-a --listen 127.0.0.1:0 --data-dir " + dir_ + "/bank-a --insecure --init");
    EXPECT_EQ(agent.exitCode, 2) << bad << ": " << agent.output;
    EXPECT_NE(agent.output.find(std::string("KEEL_STOP_WITH_PARENT=") + bad + ": not a process id"),
              std::string::npos)
        << agent.output;
    auto host = run(std::string("KEEL_STOP_WITH_PARENT=") + bad + " " + binDir() +
                    "/keel-host --listen 127.0.0.1:0 --data-dir " + dir_ + "/host --init");
    EXPECT_EQ(host.exitCode, 2) << bad << ": " << host.output;
    EXPECT_NE(host.output.find("not a process id"), std::string::npos) << host.output;
  }
  EXPECT_FALSE(fs::exists(dir_ + "/bank-a"));
  EXPECT_FALSE(fs::exists(dir_ + "/host"));
}

}  // namespace
}  // namespace keel::test
