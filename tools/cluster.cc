#include "tools/cluster.h"

#include "common/config.h"
#include "tools/certs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace keel {

namespace fs = std::filesystem;

void ChildProcess::start(const std::string& exe, const std::vector<std::string>& args, const std::string& logFile,
                         const std::vector<std::string>& env) {
  if (running()) throw std::logic_error(exe + " is already running");
  std::vector<std::string> argvS{exe};
  argvS.insert(argvS.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argvS) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::vector<std::string> envS;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "KEEL_FAILPOINTS=", 16) != 0 && std::strncmp(*e, "KEEL_STOP_WITH_PARENT=", 22) != 0) {
      envS.emplace_back(*e);
    }
  }
  // Keel's servers stop once this process is gone, however it ended
  // (common/daemon.h): a harness killed with SIGKILL leaves nothing behind.
  envS.push_back("KEEL_STOP_WITH_PARENT=" + std::to_string(::getpid()));
  envS.insert(envS.end(), env.begin(), env.end());
  std::vector<char*> envp;
  for (auto& e : envS) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, logFile.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  // Nothing else of ours leaks into the child: an inherited socket (a
  // listener, or a proxied connection) would outlive our own close and keep
  // a peer's connection open with nobody reading it.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  pid_t pid;
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("cannot start " + exe + ": " + std::strerror(rc));
  pid_ = pid;
}

bool ChildProcess::running() {
  if (pid_ <= 0) return false;
  pid_t r = ::waitpid(pid_, &status_, WNOHANG);
  if (r == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

int ChildProcess::waitExit(std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (running()) {
    if (std::chrono::steady_clock::now() > until) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return status_;
}

void ChildProcess::signal(int sig) {
  if (!running()) return;
  ::kill(pid_, sig);
  if (sig == SIGKILL) waitExit(std::chrono::milliseconds(10000));
}

void ChildProcess::stop(std::chrono::milliseconds grace) {
  if (!running()) return;
  ::kill(pid_, SIGCONT);  // a paused process cannot handle SIGTERM
  ::kill(pid_, SIGTERM);
  if (waitExit(grace) == -1) signal(SIGKILL);
}

LocalCluster::LocalCluster(ClusterOptions opts) : opts_(std::move(opts)) {
  fs::create_directories(opts_.baseDir);
  // Absolute: every path below goes into config files (an embedded
  // agent's, relative to the coordinator's config file's directory, data
  // directories) and to children; a relative one (keel-chaos --out
  // chaos-out, its default) was read relative to the wrong directory.
  opts_.baseDir = fs::absolute(opts_.baseDir).lexically_normal().string();
  while (opts_.baseDir.size() > 1 && opts_.baseDir.back() == '/') opts_.baseDir.pop_back();
  for (auto& a : opts_.agents) agents_[a];
  for (auto& a : opts_.embedded) {
    if (!agents_.count(a)) throw std::runtime_error("embedded agent " + a + " is not one of the agents");
    setEmbeddedConfig(a, "[agent]\nname = \"" + a + "\"\ndata_dir = \"" + opts_.baseDir + "/" + a +
                             "\"\nadapter = \"ledger\"\n");
  }
  // Fixed before anything starts, so agents know where to ask about
  // branches in doubt.
  for (int i = 0; i < std::max(1, opts_.coordinators); ++i) {
    coordinator_.push_back(std::make_unique<ChildProcess>());
    coordAddr_.push_back("127.0.0.1:" + std::to_string(pickFreePort()));
  }
  opts_.coordinators = int(coordinator_.size());
}

LocalCluster::~LocalCluster() { stopAll(); }

void LocalCluster::setEmbeddedConfig(const std::string& name, const std::string& toml) {
  if (!embedded(name)) throw std::runtime_error("agent " + name + " is not embedded");
  std::string path = opts_.baseDir + "/" + name + ".embedded.toml";
  std::ofstream f(path, std::ios::trunc);
  f << toml;
  f.close();
  if (!f) throw std::runtime_error("cannot write " + path);
  agentAddr_[name] = kEmbeddedPrefix + path;
}

std::string LocalCluster::startEmbeddedAsAgent(const std::string& name) {
  if (!embedded(name)) throw std::runtime_error("agent " + name + " is not embedded");
  std::string ready = opts_.baseDir + "/" + name + ".ready";
  fs::remove(ready);
  std::string config = embeddedConfigFile(agentAddr_.at(name));
  agents_.at(name).start(opts_.binDir + "/keel-agent",
                         {"--config", config, "--listen", "127.0.0.1:0", "--insecure", "--ready-file", ready},
                         agentLog(name), {});
  return waitReady(ready, agents_.at(name), "agent " + name + " (its embedded config as keel-agent)");
}

void LocalCluster::startAll() {
  for (auto& a : opts_.agents) {
    if (!embedded(a)) startAgent(a);
  }
  for (int i = 0; i < opts_.coordinators; ++i) startCoordinator("", i);
}

void LocalCluster::stopAll() {
  for (auto& c : coordinator_) c->stop();
  for (auto& [n, p] : agents_) p.stop();
}

std::string waitForReadyFile(const std::string& readyFile, ChildProcess& p, const std::string& what,
                             std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    std::ifstream f(readyFile);
    std::string addr;
    if (f && std::getline(f, addr) && !addr.empty()) return addr;
    if (!p.running()) {
      int st = p.waitExit(std::chrono::milliseconds(0));
      std::string how = WIFEXITED(st)     ? "with status " + std::to_string(WEXITSTATUS(st))
                        : WIFSIGNALED(st) ? "killed by signal " + std::to_string(WTERMSIG(st))
                                          : "";
      throw std::runtime_error(what + " exited during start-up " + how + " (see its log)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  throw std::runtime_error(what + " did not become ready in time (see its log)");
}

std::string LocalCluster::waitReady(const std::string& readyFile, ChildProcess& p, const std::string& what) {
  return waitForReadyFile(readyFile, p, what, opts_.startTimeout);
}

void LocalCluster::startAgent(const std::string& name, const std::string& failpoints) {
  if (embedded(name)) throw std::runtime_error("agent " + name + " is embedded: it starts with the coordinator");
  auto it = agentAddr_.find(name);
  std::string listen = it == agentAddr_.end() ? "127.0.0.1:0" : it->second;
  std::string ready = opts_.baseDir + "/" + name + ".ready";
  fs::remove(ready);
  std::vector<std::string> env;
  if (!failpoints.empty()) env.push_back("KEEL_FAILPOINTS=" + failpoints);
  std::vector<std::string> args{"--name", name, "--listen", listen, "--data-dir", opts_.baseDir + "/" + name,
                                "--ready-file", ready};
  if (opts_.agentInDoubtQueryMs != 0) {
    args.insert(args.end(), {"--coordinator", coordAddr_[0], "--in-doubt-query-ms",
                             std::to_string(opts_.agentInDoubtQueryMs)});
  }
  if (opts_.tlsDir.empty()) {
    args.push_back("--insecure");
  } else {
    auto t = certificateFiles(opts_.tlsDir, name);
    args.insert(args.end(), {"--tls-ca", t.ca, "--tls-cert", t.cert, "--tls-key", t.key, "--tls-coordinator",
                             "keel-coordinator", "--tls-operator", "keel-operator"});
  }
  args.insert(args.end(), opts_.agentExtraArgs.begin(), opts_.agentExtraArgs.end());
  if (auto extra = agentArgs_.find(name); extra != agentArgs_.end()) {
    args.insert(args.end(), extra->second.begin(), extra->second.end());
  }
  if (!servedOnce_.count(name)) args.push_back("--init");
  agents_.at(name).start(opts_.binDir + "/keel-agent", args, agentLog(name), env);
  agentAddr_[name] = waitReady(ready, agents_.at(name), "agent " + name);
  servedOnce_.insert(name);
}

void LocalCluster::writeCoordinatorConfig(int i) {
  std::ofstream f(opts_.baseDir + "/" + coordinatorName(i) + ".toml", std::ios::trunc);
  f << "[coordinator]\nnode_id = " << i + 1 << "\nlisten = \"127.0.0.1:0\"\ndata_dir = \"" << opts_.baseDir << "/"
    << coordinatorName(i) << "\"\n"
    << opts_.coordinatorExtraToml << "\n\n"
    << (opts_.clusterTomlFor.count(i) ? opts_.clusterTomlFor.at(i) : opts_.clusterToml) << "\n\n[participants]\n";
  for (auto& [n, addr] : agentAddr_) {
    auto over = participantAddr_.find(n);
    f << "\"" << n << "\" = \"" << (over != participantAddr_.end() ? over->second : addr) << "\"\n";
  }
  if (opts_.tlsDir.empty()) {
    f << "\n[tls]\ninsecure = true\n";
  } else {
    auto t = certificateFiles(opts_.tlsDir, "keel-coordinator");
    f << "\n[tls]\nca = \"" << t.ca << "\"\ncert = \"" << t.cert << "\"\nkey = \"" << t.key
      << "\"\noperators = [\"keel-operator\"]\n"
      << opts_.tlsExtraToml << "\n";
  }
  f << "\n" << opts_.coordinatorTailToml << "\n";
}

void LocalCluster::startCoordinator(const std::string& failpoints, int i) {
  writeCoordinatorConfig(i);
  std::string name = coordinatorName(i);
  std::string ready = opts_.baseDir + "/" + name + ".ready";
  fs::remove(ready);
  std::vector<std::string> args{"--config", opts_.baseDir + "/" + name + ".toml", "--ready-file", ready,
                                "--listen", coordAddr_[i]};
  if (!servedOnce_.count(" " + name)) args.push_back("--init");
  std::vector<std::string> env;
  if (!failpoints.empty()) env.push_back("KEEL_FAILPOINTS=" + failpoints);
  coordinator_[i]->start(opts_.binDir + "/keel-coordinator", args, coordinatorLog(i), env);
  coordAddr_[i] = waitReady(ready, *coordinator_[i], name);
  servedOnce_.insert(" " + name);
}

void LocalCluster::killAgent(const std::string& name, int sig) { agents_.at(name).signal(sig); }
void LocalCluster::killCoordinator(int sig, int i) { coordinator_[i]->signal(sig); }
void LocalCluster::stopAgent(const std::string& name) { agents_.at(name).stop(); }
void LocalCluster::stopCoordinator(int i) { coordinator_[i]->stop(); }
bool LocalCluster::coordinatorRunning(int i) { return coordinator_[i]->running(); }
bool LocalCluster::agentRunning(const std::string& name) { return agents_.at(name).running(); }

bool LocalCluster::waitCoordinatorExit(std::chrono::milliseconds timeout, int i) {
  return coordinator_[i]->waitExit(timeout) != -1;
}

bool LocalCluster::waitAgentExit(const std::string& name, std::chrono::milliseconds timeout) {
  return agents_.at(name).waitExit(timeout) != -1;
}

std::string selfBinDir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) throw std::runtime_error("cannot read /proc/self/exe");
  buf[n] = '\0';
  return fs::path(buf).parent_path().string();
}

std::string makeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/" + prefix + "-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + templ);
  return buf.data();
}

}  // namespace keel
