#include "common/data_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>

#include "common/backup.h"
#include "common/log.h"
#include "common/types.h"

namespace keel {

namespace fs = std::filesystem;

namespace {

constexpr const char* kLmdbData = "data.mdb";

std::string absolutePath(const std::string& path) {
  std::string p = fs::absolute(fs::path(path)).lexically_normal().string();
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::optional<std::string> readSmallFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    throw DataDirError("cannot read " + path + ": " + errnoText(errno));
  }
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0 && out.size() < (1u << 16)) out.append(buf, std::size_t(n));
  int err = errno;
  ::close(fd);
  if (n < 0) throw DataDirError("cannot read " + path + ": " + errnoText(err));
  return out;
}

void fsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    throw DataDirError("cannot sync " + path + ": " + errnoText(err));
  }
  ::close(fd);
}

// Write a temporary file, sync it, rename it over `name`, sync the directory:
// after a crash the file is either absent or whole.
void writeDurably(const std::string& dir, const std::string& name, const std::string& content) {
  std::string tmp = dir + "/" + name + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw DataDirError("cannot write " + tmp + ": " + errnoText(errno));
  std::size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      throw DataDirError("cannot write " + tmp + ": " + errnoText(err));
    }
    done += std::size_t(n);
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    throw DataDirError("cannot sync " + tmp + ": " + errnoText(err));
  }
  ::close(fd);
  if (::rename(tmp.c_str(), (dir + "/" + name).c_str()) != 0) {
    throw DataDirError("cannot rename " + tmp + ": " + errnoText(errno));
  }
  fsyncPath(dir);
}

std::string randomInstanceId() {
  std::random_device rd;  // getrandom(2) / /dev/urandom on Linux
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 4; ++i) {
    std::uint32_t v = rd();
    for (int j = 0; j < 8; ++j) out.push_back(hex[(v >> (28 - 4 * j)) & 0xF]);
  }
  return out;
}

std::string utcTime(std::uint64_t us) {
  time_t t = time_t(us / 1000000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string kindWithArticle(DataDirKind k) {
  switch (k) {
    case DataDirKind::Agent: return "an agent";
    case DataDirKind::Host: return "a host (keel-host)";
    case DataDirKind::Coordinator: break;
  }
  return "a coordinator";
}

// How the identity reads in a message: "agent bank-a", "a coordinator (node 1)",
// "host host".
std::string describe(const DataDirIdentity& id) {
  switch (id.kind) {
    case DataDirKind::Agent: return "agent " + id.name;
    case DataDirKind::Host: return "host " + id.name;
    case DataDirKind::Coordinator: break;
  }
  return "a coordinator (node " + std::to_string(id.nodeId) + ")";
}

std::optional<std::string> mismatch(const std::string& path, const DataDirIdentity& id, const DataDirOwner& want) {
  std::string head = "data directory " + path + " belongs to ";
  if (id.kind != want.kind) {
    return head + describe(id) + ", not " + kindWithArticle(want.kind) + " (check data_dir / --data-dir)";
  }
  std::string hint = want.kind == DataDirKind::Agent         ? " (check --name and --data-dir, or name and data_dir in the config)"
                     : want.kind == DataDirKind::Coordinator ? " (check node_id and data_dir in the config, or --data-dir)"
                                                             : " (check --data-dir)";
  if (want.kind == DataDirKind::Coordinator && id.nodeId != want.nodeId) {
    return head + "coordinator node " + std::to_string(id.nodeId) + ", not node " + std::to_string(want.nodeId) + hint;
  }
  if (id.name != want.name) {
    std::string k = dataDirKindName(want.kind);
    return head + k + " " + id.name + ", not " + k + " " + want.name + hint;
  }
  return std::nullopt;
}

// What is in a directory, read-only.
struct Contents {
  bool identity = false;
  bool lmdb = false;
  std::string foreign;  // the first entry Keel did not put there, if any
};

Contents scanDir(const std::string& path) {
  Contents c;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(path, ec)) {
    std::string n = e.path().filename().string();
    if (n == DataDir::kIdentityFile) {
      c.identity = true;
    } else if (n == kLmdbData) {
      c.lmdb = true;
    } else if (n != DataDir::kLockFile && n != "lock.mdb" && n != std::string(DataDir::kIdentityFile) + ".tmp" &&
               n != "lost+found" && n != "archive" && c.foreign.empty()) {
      c.foreign = n;  // lost+found: a directory at a file system's root
    }
  }
  if (ec) throw DataDirError("cannot list data directory " + path + ": " + ec.message());
  return c;
}

std::optional<DataDirIdentity> readIdentity(const std::string& path) {
  std::string file = path + "/" + DataDir::kIdentityFile;
  auto text = readSmallFile(file);
  if (!text) return std::nullopt;
  return parseIdentity(*text, file);
}

// "1234 keel-coordinator" from the lock file, for the refusal message.
std::string holderOf(int fd) {
  char buf[256];
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string s(buf, n > 0 ? std::size_t(n) : 0);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  auto sp = s.find(' ');
  if (s.empty() || sp == std::string::npos) return "another process (its pid is not recorded yet)";
  return "pid " + s.substr(0, sp) + " (" + s.substr(sp + 1) + ")";
}

template <typename T>
bool parseNumber(const std::string& s, T& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

}  // namespace

const char* dataDirKindName(DataDirKind k) {
  switch (k) {
    case DataDirKind::Agent: return "agent";
    case DataDirKind::Host: return "host";
    case DataDirKind::Coordinator: break;
  }
  return "coordinator";
}

std::string formatIdentity(const DataDirIdentity& id) {
  return std::string("# Keel data directory identity: written once when the directory was initialised\n"
                     "# (--init). Keel refuses to start a process this file does not describe.\n") +
         "format = " + std::to_string(id.format) + "\n" + "kind = " + dataDirKindName(id.kind) + "\n" +
         "name = " + id.name + "\n" + "node_id = " + std::to_string(id.nodeId) + "\n" +
         "instance_id = " + id.instanceId + "\n" + "created_us = " + std::to_string(id.createdUs) + "\n" +
         "created = " + utcTime(id.createdUs) + "\n";
}

DataDirIdentity parseIdentity(const std::string& text, const std::string& where) {
  auto damaged = [&](const std::string& what) {
    return DataDirError(where + " is damaged (" + what + "); if you know what this directory is, remove " +
                        DataDir::kIdentityFile + " and start once with --init to write it again");
  };
  std::map<std::string, std::string> kv;
  std::size_t pos = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    std::string line = text.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    pos = end == std::string::npos ? text.size() : end + 1;
    if (line.empty() || line[0] == '#') continue;
    auto eq = line.find(" = ");
    if (eq == std::string::npos) throw damaged("line '" + line.substr(0, 40) + "' is not 'key = value'");
    kv[line.substr(0, eq)] = line.substr(eq + 3);
  }
  auto get = [&](const char* key) -> const std::string& {
    auto it = kv.find(key);
    if (it == kv.end()) throw damaged(std::string("no '") + key + "'");
    return it->second;
  };
  DataDirIdentity id;
  if (!parseNumber(get("format"), id.format) || id.format == 0) throw damaged("format is not a number");
  if (id.format > DataDir::kFormat) {
    throw DataDirError(where + " has format " + std::to_string(id.format) + ", written by a newer Keel (this one reads " +
                       std::to_string(DataDir::kFormat) + "): run the newer version");
  }
  const auto& kind = get("kind");
  if (kind == "agent") {
    id.kind = DataDirKind::Agent;
  } else if (kind == "coordinator") {
    id.kind = DataDirKind::Coordinator;
  } else if (kind == "host") {
    id.kind = DataDirKind::Host;
  } else {
    throw damaged("kind '" + kind + "' is not agent, coordinator or host");
  }
  id.name = get("name");
  if (id.name.empty()) throw damaged("name is empty");
  if (!parseNumber(get("node_id"), id.nodeId)) throw damaged("node_id is not a number 0..65535");
  id.instanceId = get("instance_id");
  if (id.instanceId.size() != 32 || id.instanceId.find_first_not_of("0123456789abcdef") != std::string::npos) {
    throw damaged("instance_id is not 32 hex digits");
  }
  if (!parseNumber(get("created_us"), id.createdUs)) throw damaged("created_us is not a number");
  return id;
}

DataDir::DataDir(const std::string& path, const DataDirOwner& owner, bool init) : path_(absolutePath(path)) {
  const std::string kind = dataDirKindName(owner.kind);
  struct stat st;
  bool exists = ::stat(path_.c_str(), &st) == 0;
  if (!exists && errno != ENOENT) throw DataDirError("cannot open data directory " + path_ + ": " + errnoText(errno));
  if (exists && !S_ISDIR(st.st_mode)) throw DataDirError("data directory " + path_ + " exists but is not a directory");
  if (!exists && !init) {
    throw DataDirError("data directory " + path_ + " does not exist; start with --init to create a new " + kind +
                       " there (check data_dir / --data-dir)");
  }

  // Read-only checks first: a refusal leaves even the lock file alone. The
  // identity never changes once written, so checking it unlocked is sound;
  // it is checked again under the lock below.
  if (exists) {
    Contents c = scanDir(path_);
    if (c.identity) {
      if (auto bad = mismatch(path_, *readIdentity(path_), owner)) throw DataDirError(*bad);
    } else if (auto mark = c.lmdb ? backupMarkIn(path_) : std::nullopt) {
      // A backup copy is never adopted as it is (common/backup.h).
      throw DataDirError(backupCopyRefusal("data directory " + path_, *mark));
    } else if (!c.foreign.empty() && !c.lmdb) {
      throw DataDirError("data directory " + path_ + " is not a Keel data directory (it holds '" + c.foreign +
                         "' and no " + kIdentityFile + "); choose an empty or new directory");
    } else if (!init && c.lmdb) {
      throw DataDirError("data directory " + path_ + " holds Keel data but no " + kIdentityFile +
                         " (made by an earlier Keel version); if it is the " + kind + "'s directory, start once with "
                         "--init to adopt it");
    } else if (!init) {
      throw DataDirError("data directory " + path_ + " is empty; start with --init to create a new " + kind +
                         " there (check data_dir / --data-dir)");
    }
  } else {
    std::error_code ec;
    fs::create_directories(path_, ec);
    if (ec) throw DataDirError("cannot create data directory " + path_ + ": " + ec.message());
    fsyncPath(fs::path(path_).parent_path().string());  // the new entry survives a crash
  }

  std::string lockPath = path_ + "/" + kLockFile;
  lockFd_ = ::open(lockPath.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lockFd_ < 0) throw DataDirError("cannot open " + lockPath + ": " + errnoText(errno));
  try {
    if (::flock(lockFd_, LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        throw DataDirError("data directory " + path_ + " is in use by " + holderOf(lockFd_) +
                           "; one directory belongs to one process");
      }
      throw DataDirError("cannot lock " + lockPath + ": " + errnoText(errno));
    }
    std::string holder = std::to_string(::getpid()) + " " + owner.program + "\n";
    if (::ftruncate(lockFd_, 0) != 0 || ::pwrite(lockFd_, holder.data(), holder.size(), 0) != ssize_t(holder.size())) {
      throw DataDirError("cannot write " + lockPath + ": " + errnoText(errno));
    }

    if (auto id = readIdentity(path_)) {
      if (auto bad = mismatch(path_, *id, owner)) throw DataDirError(*bad);
      identity_ = *id;
    } else {
      // Only reachable with init (checked above).
      bool adopt = scanDir(path_).lmdb;
      identity_.kind = owner.kind;
      identity_.name = owner.name;
      identity_.nodeId = owner.nodeId;
      identity_.instanceId = randomInstanceId();
      identity_.createdUs = wallMicros();
      identity_.format = kFormat;
      writeDurably(path_, kIdentityFile, formatIdentity(identity_));
      initialised_ = true;
      KEEL_LOG_INFO("data directory {}: {} as {} (instance {})", path_,
                    adopt ? "adopted (made by an earlier Keel version)" : "initialised", describe(identity_),
                    identity_.instanceId);
      return;
    }
  } catch (...) {
    ::close(lockFd_);
    lockFd_ = -1;
    throw;
  }
  KEEL_LOG_INFO("data directory {}: {}, instance {}, created {}", path_, describe(identity_), identity_.instanceId,
                utcTime(identity_.createdUs));
}

DataDir::~DataDir() {
  if (lockFd_ >= 0) ::close(lockFd_);  // closing the last descriptor drops the flock
}

std::string DataDir::inspect(const std::string& path, const DataDirOwner& owner) {
  std::string abs = absolutePath(path);
  struct stat st;
  if (::stat(abs.c_str(), &st) != 0) {
    if (errno == ENOENT) throw DataDirError("data directory " + abs + " does not exist (check data_dir / --data-dir)");
    throw DataDirError("cannot open data directory " + abs + ": " + errnoText(errno));
  }
  if (!S_ISDIR(st.st_mode)) throw DataDirError("data directory " + abs + " exists but is not a directory");
  Contents c = scanDir(abs);
  if (c.identity) {
    if (auto bad = mismatch(abs, *readIdentity(abs), owner)) throw DataDirError(*bad);
  }
  if (!c.lmdb) throw DataDirError("data directory " + abs + " holds no Keel data (no " + kLmdbData + ")");
  return abs;
}

}  // namespace keel
