#pragma once
// Failpoints: named places in the protocol where a test can make the
// process crash, stall or fail, switched on by environment variable:
//
//   KEEL_FAILPOINTS="coord.after_decision_durable=crash,agent.before_commit_durable=delay(50)"
//
// Actions: crash (SIGKILL to self, as hard as a power cut for the process),
// delay(MS) (sleeps MS milliseconds on the calling thread), error (throws,
// so the RPC call or log job fails), off. A prefix N* fires the action on
// the first N hits only (then off), e.g. "agent.after_prepared_durable=1*crash";
// a prefix M+ lets the first M hits through before the action starts, e.g.
// "agent.before_commit_durable=1+1*error" fails the second hit only.
//
// Cost when KEEL_FAILPOINTS is unset: one relaxed load of a bool per site.
// The registry is process-global on purpose: failpoints are a property of
// the process under test, set before main's first line of work.

#include <atomic>
#include <stdexcept>
#include <string>

namespace keel::failpoint {

extern std::atomic<bool> gArmed;

class InjectedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses KEEL_FAILPOINTS. Throws std::invalid_argument naming the bad entry.
void initFromEnv();
// Parses a spec string (same syntax); replaces the current set.
void configure(const std::string& spec);
void hitSlow(const char* name);
// Like hit(), but a delay is not slept: its milliseconds are returned (0
// for none), for code on an event loop to wait without blocking the loop.
unsigned hitDeferredSlow(const char* name);
// Number of times `name` fired (for tests).
unsigned firedCount(const std::string& name);

inline void hit(const char* name) {
  if (gArmed.load(std::memory_order_relaxed)) [[unlikely]] hitSlow(name);
}

inline unsigned hitDeferred(const char* name) {
  if (gArmed.load(std::memory_order_relaxed)) [[unlikely]] return hitDeferredSlow(name);
  return 0;
}

}  // namespace keel::failpoint

#define KEEL_FAILPOINT(name) ::keel::failpoint::hit(name)
