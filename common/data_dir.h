#pragma once
// DataDir: which process owns a data directory, and what the directory is.
//
// Every Keel data directory (the coordinator's WAL, each agent's branch log)
// is made for one purpose and used by one process at a time:
//
//   keel.lock      exclusive flock(2), taken without waiting and held for the
//                  whole life of the process; it names the holder (pid and
//                  program) so a second process is refused with who has it.
//                  The kernel drops the lock when the process dies (SIGKILL
//                  included), so a restart after a crash just works.
//   keel.identity  written once, atomically, when the directory is
//                  initialised: kind, name, node id, a random instance id,
//                  creation time and format version. Every start compares
//                  kind, name and node id with what the process was started
//                  as and refuses a mismatch.
//
// A directory is created (or an empty one initialised) only when the
// operator asks with --init: a typo in data_dir never starts a fresh, empty
// log. A directory with Keel's LMDB files but no identity (made before
// identities existed) is adopted with --init, refused without.
//
// A refused open changes nothing: a missing directory is not created, and
// the identity is checked (read-only) before the lock file is even opened.
//
// Ownership: a DataDir owns the lock's file descriptor; the lock lasts
// exactly as long as the object. main() opens it before anything else and
// keeps it until exit. Constant after construction.

#include <cstdint>
#include <stdexcept>
#include <string>

namespace keel {

// Host: keel-host, the reference try/confirm/cancel host (tools/host/).
enum class DataDirKind : std::uint8_t { Coordinator, Agent, Host };
const char* dataDirKindName(DataDirKind k);  // "coordinator" / "agent" / "host"

// What a directory is: the content of keel.identity.
struct DataDirIdentity {
  DataDirKind kind = DataDirKind::Agent;
  std::string name;             // the agent's name; "coordinator" for a coordinator, "host" for keel-host
  std::uint16_t nodeId = 0;     // the coordinator's node_id; 0 for an agent
  std::string instanceId;       // 32 hex digits, random, fixed at creation
  std::uint64_t createdUs = 0;  // unix time of creation
  std::uint32_t format = 0;     // layout version of the directory
};

// What the opening process was started as.
struct DataDirOwner {
  DataDirKind kind = DataDirKind::Agent;
  std::string name;
  std::uint16_t nodeId = 0;
  std::string program;  // "keel-coordinator", "keel-agent", "keel-host": written into keel.lock
};

// A refused directory; what() is the message for the operator.
class DataDirError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class DataDir {
 public:
  static constexpr const char* kLockFile = "keel.lock";
  static constexpr const char* kIdentityFile = "keel.identity";
  static constexpr std::uint32_t kFormat = 1;

  // Checks the identity, takes the lock and, with `init`, creates the
  // directory or writes its identity. Logs the absolute path and what the
  // directory is. Throws DataDirError (nothing changed) on any refusal.
  DataDir(const std::string& path, const DataDirOwner& owner, bool init);
  ~DataDir();  // releases the lock
  DataDir(const DataDir&) = delete;
  DataDir& operator=(const DataDir&) = delete;

  // Read-only, no lock (it may run beside the live owner): the directory
  // must exist, hold an LMDB environment and, if it has an identity, match
  // `owner`. Returns the absolute path. For keel-coordinator --check-wal.
  static std::string inspect(const std::string& path, const DataDirOwner& owner);

  const std::string& path() const { return path_; }  // absolute
  const DataDirIdentity& identity() const { return identity_; }
  bool initialised() const { return initialised_; }  // identity written by this open

 private:
  std::string path_;
  DataDirIdentity identity_;
  bool initialised_ = false;
  int lockFd_ = -1;
};

// The identity file's text, and back (exposed for tests). parseIdentity
// throws DataDirError naming what is wrong.
std::string formatIdentity(const DataDirIdentity& id);
DataDirIdentity parseIdentity(const std::string& text, const std::string& where);

}  // namespace keel
