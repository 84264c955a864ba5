#pragma once
// PgHost: the PostgreSQL server behind keel-chaos's postgres agents, one
// database per agent, which the fault injector kills, freezes and restarts.
//
// Every start of the server runs on one thread owned by this object and
// alive as long as it is: PgServer has the postmaster killed when the thread
// that started it exits (PR_SET_PDEATHSIG), so a restart made from the
// fault injector's thread would die with that thread. Server control calls
// (start, crash, pause, resume, heal) are queued to that thread and block
// until done; reads (balances, prepared) are plain libpq clients and may
// run on any thread.

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace keel::test {
class PgServer;
}

namespace keel::chaos {

class PgHost final {
 public:
  // A fresh folder in /tmp for data and log (removed by the destructor:
  // copy logFile() first to keep it); `databases` are created at start(),
  // with room for every agent's connections and for the prepared
  // transactions of `outstanding` interactions in flight.
  PgHost(std::vector<std::string> databases, std::uint32_t outstanding);
  ~PgHost();  // stops the server, ends the owner thread
  PgHost(const PgHost&) = delete;
  PgHost& operator=(const PgHost&) = delete;

  void start();
  // A crash: SIGKILL of the postmaster alone (sigkill) or pg_ctl stop -m
  // immediate. No checkpoint either way; the next start runs WAL recovery.
  void crash(bool sigkill);
  // SIGSTOP / SIGCONT of every server process.
  void pause();
  void resume();
  // Back to serving: resumed if paused, started if down.
  void heal();

  std::string connString(const std::string& db) const;  // valid after start()
  bool has(const std::string& db) const;  // one of its databases
  // Reads over a fresh connection with a 2 s connect timeout; throw if the
  // server does not answer.
  std::map<std::string, std::int64_t> balances(const std::string& db) const;
  std::vector<std::string> prepared(const std::string& db) const;  // pg_prepared_xacts gids of that database
  const std::string& logFile() const;

 private:
  void onOwner(std::function<void()> fn);
  void ownerLoop();

  std::vector<std::string> databases_;
  std::unique_ptr<test::PgServer> server_;  // driven on owner_ only
  bool paused_ = false;                     // owner_ only
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                   // GUARDED_BY(mu_)
  std::thread owner_;
};

}  // namespace keel::chaos
