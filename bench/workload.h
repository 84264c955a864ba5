#pragma once
// Workload: what keel-bench submits. Each interaction touches `width`
// distinct participants chosen at random, one operation on one random
// account each (acct-0 .. acct-(accounts-1)), money conserving:
//   transfer  2 participants: debit one, credit the other (two-phase)
//   single    1 participant: a credit (the one-phase path)
//   multi     --participants N (1..5): one debit of (N-1)*amount, N-1 credits
// A share is rolled back on purpose (the debit overdraws, so its
// participant votes NO; for width 1 the credit becomes an overdrawing
// debit), and a share is read-only (a balance read on every participant).
// Ledger agents get ledger operations, postgres agents the bank's SQL.
//
// Not thread-safe: one Workload per client thread (own random stream).

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/types.h"

namespace keel::bench {

enum class Adapter : std::uint8_t { Ledger, Postgres };

struct WorkloadSpec {
  std::string kind = "transfer";          // transfer | single | multi
  std::uint32_t participants = 2;         // width of multi
  std::uint32_t rollbackPercent = 0;      // 0..100
  std::uint32_t readPercent = 0;          // 0..100, rollbackPercent + readPercent <= 100
  std::uint32_t accounts = 1000;          // per agent
  std::vector<std::string> agents;        // participant names
  Adapter adapter = Adapter::Ledger;

  // Participants per interaction.
  std::uint32_t width() const;
  // Empty when valid, else what is wrong (for the command line).
  std::string check() const;
};

// Amounts moved: small against the opening balance so that no planned
// commit runs out of money; an intended rollback asks for more than exists.
inline constexpr std::int64_t kOpeningBalance = 1'000'000'000;
inline constexpr std::int64_t kOverdraw = 100'000'000'000'000;

struct Interaction {
  enum class Intent : std::uint8_t { Commit, Rollback, Read };
  Intent intent = Intent::Commit;
  std::vector<Op> ops;
};

class Workload {
 public:
  Workload(const WorkloadSpec& spec, std::uint64_t seed);
  Interaction next();
  // One debit and one credit of the same amount and accounts, for the
  // raw2pc baseline (database index into spec.agents): transfer only.
  struct Transfer {
    std::size_t from, to;  // agent indexes, distinct
    std::string fromAccount, toAccount;
    std::int64_t amount;
    bool overdraw;
  };
  Transfer nextTransfer();

 private:
  std::vector<std::size_t> pick(std::uint32_t n);
  std::string account();

  const WorkloadSpec& spec_;
  std::mt19937_64 rng_;
};

}  // namespace keel::bench
