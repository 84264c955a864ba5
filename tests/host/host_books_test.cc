// HostBooks against docs/hosts.md: every row of the try, confirm and cancel
// tables, idempotency, the tombstone, one way to end a key, credits pending
// until confirm (or, in the posting mode, posted at try and reversed by
// cancel), and money conserved across it all.

#include "tools/host/host_books.h"

#include <gtest/gtest.h>

#include <memory>

#include "common/strict_json.h"
#include "common/temp_dir.h"

namespace keel::host {
namespace {

constexpr std::int64_t kBalance = 1000;

class HostBooksTest : public ::testing::Test {
 protected:
  HostBooksTest() { open(); }
  void open(CreditMode credits = CreditMode::Pending) {
    books_.reset();
    books_ = std::make_unique<HostBooks>(dir_.path(), std::size_t(64) << 20, credits);
    write([&](lmdb::Txn& t) { return Answer{200, std::to_string(books_->ensureAccounts(t, 3, kBalance))}; });
  }
  // One call in its own committed write transaction, as keel-host's writer
  // would commit it.
  template <typename Fn>
  Answer write(Fn fn) {
    auto txn = books_->env().beginWrite();
    Answer a = fn(txn);
    txn.commit();
    return a;
  }
  Answer tryOp(const std::string& key, OpKind kind, const std::string& account, std::int64_t amount) {
    auto slash = key.find('/');
    TryCall c{key, key.substr(0, slash), std::stoull(key.substr(slash + 1)), kind, account, amount};
    return write([&](lmdb::Txn& t) { return books_->tryOp(t, c); });
  }
  Answer debit(const std::string& key, const std::string& account, std::int64_t amount) {
    return tryOp(key, OpKind::Debit, account, amount);
  }
  Answer credit(const std::string& key, const std::string& account, std::int64_t amount) {
    return tryOp(key, OpKind::Credit, account, amount);
  }
  Answer confirm(const std::string& key) {
    return write([&](lmdb::Txn& t) { return books_->confirm(t, key); });
  }
  Answer cancel(const std::string& key) {
    return write([&](lmdb::Txn& t) { return books_->cancel(t, key); });
  }
  Account acct(const std::string& name) { return books_->account(name).value(); }
  // balance + held is unchanged by a hold; the sum of balances changes only
  // by what was posted.
  std::int64_t totalBalance() {
    std::int64_t sum = 0;
    for (const auto& a : books_->accounts()) sum += a.balance;
    return sum;
  }

  TempDir dir_{"keel-host-books"};
  std::unique_ptr<HostBooks> books_;
};

std::string result(const Answer& a) { return JsonReader::parse(a.body)["result"].str(); }

TEST_F(HostBooksTest, DebitTryHoldsConfirmPostsAndRepeatsAnswerTheSame) {
  Answer a = debit("1.1.1/0", "acct-0", 100);
  EXPECT_EQ(a.status, 200);
  auto j = JsonReader::parse(a.body);
  EXPECT_EQ(j["result"].str(), "tried");
  EXPECT_EQ(j["ref"].str().rfind("H-", 0), 0u) << a.body;
  EXPECT_EQ(acct("acct-0").balance, kBalance);
  EXPECT_EQ(acct("acct-0").held, 100);

  Answer again = debit("1.1.1/0", "acct-0", 100);  // the same answer, no second hold
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(again.body, a.body);
  EXPECT_EQ(acct("acct-0").held, 100);

  for (int i = 0; i < 2; ++i) {
    Answer c = confirm("1.1.1/0");
    EXPECT_EQ(c.status, 200);
    EXPECT_EQ(c.body, "{\"result\":\"confirmed\"}");
  }
  EXPECT_EQ(acct("acct-0").balance, kBalance - 100);
  EXPECT_EQ(acct("acct-0").held, 0);
  EXPECT_EQ(debit("1.1.1/0", "acct-0", 100).body, a.body);  // a late repeat of the try changes nothing
  EXPECT_EQ(acct("acct-0").balance, kBalance - 100);
  EXPECT_EQ(acct("acct-0").held, 0);
}

TEST_F(HostBooksTest, DebitCancelReleasesTheHoldAndRepeatsAnswerTheSame) {
  ASSERT_EQ(debit("1.2.1/0", "acct-1", 300).status, 200);
  for (int i = 0; i < 2; ++i) {
    Answer c = cancel("1.2.1/0");
    EXPECT_EQ(c.status, 200);
    EXPECT_EQ(c.body, "{\"result\":\"cancelled\"}");
  }
  EXPECT_EQ(acct("acct-1").balance, kBalance);
  EXPECT_EQ(acct("acct-1").held, 0);
  // A try after its cancel, and a confirm after it: 409 cancelled, nothing applied.
  Answer t = debit("1.2.1/0", "acct-1", 300);
  EXPECT_EQ(t.status, 409);
  EXPECT_EQ(t.body, "{\"result\":\"cancelled\"}");
  Answer c = confirm("1.2.1/0");
  EXPECT_EQ(c.status, 409);
  EXPECT_EQ(result(c), "cancelled");
  EXPECT_EQ(acct("acct-1").held, 0);
  EXPECT_EQ(acct("acct-1").balance, kBalance);
}

TEST_F(HostBooksTest, RefusalsAre422WithAReasonAndRemembered) {
  struct Case {
    std::string key, account;
    std::int64_t amount;
    std::string reason;
  };
  for (const auto& c : std::vector<Case>{
           {"2.1.1/0", "acct-9", 5, "no such account acct-9"},
           {"2.1.1/1", "acct-0", 0, "amount 0 is outside 1..1000000000000000"},
           {"2.1.1/2", "acct-0", -5, "amount -5 is outside 1..1000000000000000"},
           {"2.1.1/3", "acct-0", HostBooks::kMaxAmount + 1, "amount 1000000000000001 is outside 1..1000000000000000"},
           {"2.1.1/4", "acct-0", kBalance + 1,
            "insufficient funds: acct-0 has 1000 available (balance 1000, held 0), the debit is 1001"},
       }) {
    Answer a = debit(c.key, c.account, c.amount);
    EXPECT_EQ(a.status, 422) << c.key;
    auto j = JsonReader::parse(a.body);
    EXPECT_EQ(j["result"].str(), "refused");
    EXPECT_EQ(j["reason"].str(), c.reason);
    EXPECT_EQ(debit(c.key, c.account, c.amount).body, a.body) << "remembered: " << c.key;
  }
  // Funds held by another try are not available.
  ASSERT_EQ(debit("2.2.1/0", "acct-0", 600).status, 200);
  Answer a = debit("2.2.1/1", "acct-0", 500);
  EXPECT_EQ(a.status, 422);
  EXPECT_EQ(JsonReader::parse(a.body)["reason"].str(),
            "insufficient funds: acct-0 has 400 available (balance 1000, held 600), the debit is 500");
  // A refused key remembers its refusal even once funds are there again.
  ASSERT_EQ(cancel("2.2.1/0").status, 200);
  EXPECT_EQ(debit("2.2.1/1", "acct-0", 500).status, 422);
  // Confirm of a refused try: 409 cancelled; cancel of it: 200.
  EXPECT_EQ(confirm("2.2.1/1").status, 409);
  EXPECT_EQ(result(confirm("2.2.1/1")), "cancelled");
  Answer c = cancel("2.2.1/1");
  EXPECT_EQ(c.status, 200);
  EXPECT_EQ(result(c), "cancelled");
  EXPECT_EQ(acct("acct-0").held, 0);
  EXPECT_EQ(acct("acct-0").balance, kBalance);
  EXPECT_EQ(books_->stats().refused, 6u);
}

TEST_F(HostBooksTest, AKeyReusedForADifferentOperationIsRefusedAndKeepsItsOwn) {
  Answer first = debit("3.1.1/0", "acct-0", 10);
  ASSERT_EQ(first.status, 200);
  for (auto [kind, account, amount] : std::vector<std::tuple<OpKind, std::string, std::int64_t>>{
           {OpKind::Debit, "acct-0", 11}, {OpKind::Debit, "acct-1", 10}, {OpKind::Credit, "acct-0", 10}}) {
    Answer a = tryOp("3.1.1/0", kind, account, amount);
    EXPECT_EQ(a.status, 422);
    EXPECT_EQ(JsonReader::parse(a.body)["reason"].str(), "key 3.1.1/0 was tried with a different operation");
  }
  EXPECT_EQ(debit("3.1.1/0", "acct-0", 10).body, first.body);
  EXPECT_EQ(acct("acct-0").held, 10);
  EXPECT_EQ(acct("acct-1").held, 0);
  EXPECT_EQ(acct("acct-1").balance, kBalance);
}

TEST_F(HostBooksTest, CancelBeforeTryLeavesATombstoneALateTryCannotPass) {
  for (int i = 0; i < 2; ++i) {
    Answer c = cancel("4.1.1/0");
    EXPECT_EQ(c.status, 200);
    EXPECT_EQ(c.body, "{\"result\":\"cancelled\"}");
  }
  Answer t = debit("4.1.1/0", "acct-2", 50);
  EXPECT_EQ(t.status, 409);
  EXPECT_EQ(t.body, "{\"result\":\"cancelled\"}");
  EXPECT_EQ(credit("4.1.1/0", "acct-2", 50).status, 409);
  EXPECT_EQ(acct("acct-2").held, 0);
  EXPECT_EQ(acct("acct-2").balance, kBalance);
  EXPECT_EQ(confirm("4.1.1/0").status, 409);
  auto s = books_->stats();
  EXPECT_EQ(s.tombstones, 1u);
  EXPECT_EQ(s.tried, 0u);
}

TEST_F(HostBooksTest, AKeyEndsOneWay) {
  // Cancel after confirm answers 409 confirmed; confirm after cancel 409
  // cancelled; neither changes the account.
  for (bool confirmFirst : {true, false}) {
    std::string key = confirmFirst ? "5.1.1/0" : "5.1.1/1";
    ASSERT_EQ(debit(key, "acct-0", 10).status, 200);
    ASSERT_EQ((confirmFirst ? confirm(key) : cancel(key)).status, 200);
    Answer late = confirmFirst ? cancel(key) : confirm(key);
    EXPECT_EQ(late.status, 409) << key;
    EXPECT_EQ(late.body, confirmFirst ? "{\"result\":\"confirmed\"}" : "{\"result\":\"cancelled\"}");
  }
  EXPECT_EQ(acct("acct-0").balance, kBalance - 10);
  EXPECT_EQ(acct("acct-0").held, 0);
}

TEST_F(HostBooksTest, ConfirmOfAKeyNeverTriedIsUnknown) {
  Answer a = confirm("6.1.1/0");
  EXPECT_EQ(a.status, 404);
  EXPECT_EQ(a.body, "{\"result\":\"unknown\"}");
  EXPECT_FALSE(books_->keyRecord("6.1.1/0"));  // and leaves nothing behind
}

TEST_F(HostBooksTest, CreditIsPendingUntilConfirmAndCannotBeSpent) {
  ASSERT_EQ(credit("7.1.1/0", "acct-1", 500).status, 200);
  EXPECT_EQ(acct("acct-1").balance, kBalance);  // not visible before the decision
  EXPECT_EQ(acct("acct-1").incoming, 500);
  // Not spendable either: a debit beyond the balance is refused.
  EXPECT_EQ(debit("7.1.2/0", "acct-1", kBalance + 1).status, 422);
  ASSERT_EQ(credit("7.1.1/0", "acct-1", 500).status, 200);
  EXPECT_EQ(acct("acct-1").incoming, 500);  // once
  ASSERT_EQ(confirm("7.1.1/0").status, 200);
  ASSERT_EQ(confirm("7.1.1/0").status, 200);
  EXPECT_EQ(acct("acct-1").balance, kBalance + 500);  // posted once, at confirm
  EXPECT_EQ(acct("acct-1").incoming, 0);
  ASSERT_EQ(credit("7.3.1/0", "acct-2", 300).status, 200);
  ASSERT_EQ(cancel("7.3.1/0").status, 200);
  EXPECT_EQ(acct("acct-2").balance, kBalance);  // dropped, never posted
  EXPECT_EQ(acct("acct-2").incoming, 0);
}

TEST_F(HostBooksTest, PostingModeCreditIsPostedAtTryAndReversedByCancelEvenBelowZero) {
  open(CreditMode::PostAtTry);
  ASSERT_EQ(credit("7.1.1/0", "acct-1", 500).status, 200);
  EXPECT_EQ(acct("acct-1").balance, kBalance + 500);  // posted at try: visible before the decision
  EXPECT_EQ(acct("acct-1").held, 0);
  ASSERT_EQ(credit("7.1.1/0", "acct-1", 500).status, 200);
  EXPECT_EQ(acct("acct-1").balance, kBalance + 500);  // once
  ASSERT_EQ(confirm("7.1.1/0").status, 200);
  EXPECT_EQ(acct("acct-1").balance, kBalance + 500);  // confirm changes nothing

  // Spend the credit, then reverse it: the balance goes negative.
  ASSERT_EQ(credit("7.2.1/0", "acct-2", 400).status, 200);
  ASSERT_EQ(debit("7.2.2/0", "acct-2", kBalance + 400).status, 200);
  ASSERT_EQ(confirm("7.2.2/0").status, 200);
  ASSERT_EQ(cancel("7.2.1/0").status, 200);
  ASSERT_EQ(cancel("7.2.1/0").status, 200);  // reversed once
  EXPECT_EQ(acct("acct-2").balance, -400);
  EXPECT_EQ(confirm("7.2.1/0").status, 409);
}

TEST_F(HostBooksTest, MoneyIsConservedAndOpenTriesAreListed) {
  // Transfers: a debit from one account and a credit to another per xid,
  // some confirmed, some cancelled, some left open.
  std::int64_t total = totalBalance();
  for (int i = 0; i < 30; ++i) {
    std::string xid = "8." + std::to_string(i) + ".1";
    std::string from = "acct-" + std::to_string(i % 3), to = "acct-" + std::to_string((i + 1) % 3);
    ASSERT_EQ(debit(xid + "/0", from, 7).status, 200);
    ASSERT_EQ(credit(xid + "/1", to, 7).status, 200);
    if (i % 3 == 0) {
      confirm(xid + "/0");
      confirm(xid + "/1");
    } else if (i % 3 == 1) {
      cancel(xid + "/0");
      cancel(xid + "/1");
    }
  }
  // Open: ten debits held and ten credits pending: the balances have not
  // moved until those are confirmed.
  std::int64_t held = 0, incoming = 0;
  for (const auto& a : books_->accounts()) {
    held += a.held;
    incoming += a.incoming;
  }
  EXPECT_EQ(held, 70);
  EXPECT_EQ(incoming, 70);
  EXPECT_EQ(totalBalance(), total);
  auto open = books_->openTries();
  EXPECT_EQ(open.size(), 20u);  // ten debits, ten credits
  for (const auto& o : open) EXPECT_EQ(confirm(o.key).status, 200) << o.key;
  EXPECT_EQ(totalBalance(), total);
  for (const auto& a : books_->accounts()) {
    EXPECT_EQ(a.held, 0) << a.name;
    EXPECT_EQ(a.incoming, 0) << a.name;
  }
  auto s = books_->stats();
  EXPECT_EQ(s.tried, 60u);
  EXPECT_EQ(s.confirmed, 40u);
  EXPECT_EQ(s.cancelled, 20u);
  EXPECT_EQ(s.open, 0u);
  auto j = JsonReader::parse(statsJson(s));
  EXPECT_EQ(j["tried"].whole(), 60u);
  EXPECT_EQ(j["calls"].whole(), s.calls);
}

TEST_F(HostBooksTest, EverythingSurvivesReopening) {
  Answer t = debit("9.1.1/0", "acct-0", 25);
  ASSERT_EQ(debit("9.1.1/1", "acct-0", 5).status, 200);
  ASSERT_EQ(confirm("9.1.1/1").status, 200);
  ASSERT_EQ(cancel("9.1.1/2").status, 200);
  ASSERT_EQ(write([&](lmdb::Txn& txn) { return books_->openAccount(txn, "acct-x", 7); }).status, 200);
  auto before = books_->stats();
  open();
  EXPECT_EQ(acct("acct-0").held, 25);
  EXPECT_EQ(acct("acct-0").balance, kBalance - 5);
  EXPECT_EQ(acct("acct-x").balance, 7);
  EXPECT_EQ(debit("9.1.1/0", "acct-0", 25).body, t.body);
  EXPECT_EQ(debit("9.1.1/2", "acct-0", 1).status, 409);  // the tombstone is durable
  Answer exists = write([&](lmdb::Txn& txn) { return books_->openAccount(txn, "acct-x", 7); });
  EXPECT_EQ(exists.status, 409);
  EXPECT_EQ(JsonReader::parse(exists.body)["error"].str(), "account acct-x exists");
  auto after = books_->stats();
  EXPECT_EQ(after.open, before.open);
  EXPECT_EQ(after.tombstones, before.tombstones);
  // A new try after reopening gets a new reference, never one already given.
  Answer n = debit("9.1.1/3", "acct-1", 1);
  EXPECT_NE(JsonReader::parse(n.body)["ref"].str(), JsonReader::parse(t.body)["ref"].str());
  EXPECT_EQ(JsonReader::parse(accountsJson(books_->accounts()))["accounts"].array().size(), 4u);
  EXPECT_EQ(JsonReader::parse(openJson(books_->openTries()))["open"].array().size(), 2u);
}

}  // namespace
}  // namespace keel::host
