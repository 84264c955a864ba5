// The coordinator WAL's request ids: the row rides with the interaction's
// record in one transaction, is found by id, and the retention purge drops
// only rows first seen before its cut-off. Plus the request fingerprint and
// request id checks they rely on.

#include "coordinator/wal_store.h"
#include "coordinator/archive.h"

#include <gtest/gtest.h>
#include <kj/async-io.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "tests/unit/test_util.h"

namespace keel {
namespace {

InteractionRecord record(std::uint64_t seq, const std::string& requestId) {
  InteractionRecord r;
  r.seq = seq;
  r.requestId = requestId;
  r.requestTimeUs = 1'000;
  r.state = InteractionRecord::State::Committing;
  r.decision = InteractionRecord::Decision::Commit;
  return r;
}

class WalStoreTest : public ::testing::Test {
 public:
  ~WalStoreTest() noexcept override {}

 protected:
  kj::AsyncIoContext io_ = kj::setupAsyncIo();
  test::TempDir dir_;
  std::unique_ptr<WalStore> wal_;
  void SetUp() override {
    std::filesystem::create_directories(dir_.path());
    wal_ = std::make_unique<WalStore>(dir_.path(), std::size_t(64) << 20);
  }
};

TEST_F(WalStoreTest, RequestRowRidesWithTheRecordAndIsFoundById) {
  RequestRecord row{makeSeq(1, 5), 0xabcdef, 1'000, 2'000};
  wal_->save(record(row.seq, "req-1"), nullptr, false, &row).wait(io_.waitScope);
  auto found = wal_->findRequest("req-1");
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->seq, row.seq);
  EXPECT_EQ(found->fingerprint, 0xabcdefu);
  EXPECT_EQ(found->requestTimeUs, 1'000u);
  EXPECT_FALSE(wal_->findRequest("req-2").has_value());
  EXPECT_FALSE(wal_->findRequest("").has_value());
  // A later save without the row leaves it as it was.
  auto rec = record(row.seq, "req-1");
  rec.state = InteractionRecord::State::Committed;
  wal_->save(rec, nullptr, true).wait(io_.waitScope);
  EXPECT_EQ(wal_->findRequest("req-1")->seq, row.seq);
  EXPECT_TRUE(wal_->checkAll().empty());
}

TEST_F(WalStoreTest, PurgeDropsOnlyRowsOfFinishedInteractionsCreatedBeforeTheCutOff) {
  for (std::uint64_t i = 1; i <= 6; ++i) {
    auto rec = record(makeSeq(1, i), "req-" + std::to_string(i));
    rec.createdUs = i * 1'000;  // created at 1000, 2000, ... 6000 us
    rec.state = i == 2 ? InteractionRecord::State::Committing : InteractionRecord::State::Committed;
    RequestRecord row{rec.seq, i, 100, rec.createdUs};
    wal_->save(rec, nullptr, false, &row).wait(io_.waitScope);
  }
  auto p = wal_->purgeRequests(3'500, 100).wait(io_.waitScope);
  EXPECT_EQ(p.dropped, 2u);  // 1000 and 3000; 2000 is unfinished and keeps its row
  EXPECT_FALSE(p.more);
  EXPECT_FALSE(wal_->findRequest("req-1").has_value());
  EXPECT_TRUE(wal_->findRequest("req-2").has_value());
  EXPECT_FALSE(wal_->findRequest("req-3").has_value());
  EXPECT_TRUE(wal_->findRequest("req-4").has_value());
  // It goes on from where it stopped, a bounded batch at a time.
  p = wal_->purgeRequests(10'000, 2).wait(io_.waitScope);
  EXPECT_EQ(p.dropped, 2u);
  EXPECT_TRUE(p.more);
  p = wal_->purgeRequests(10'000, 2).wait(io_.waitScope);
  EXPECT_EQ(p.dropped, 1u);
  EXPECT_FALSE(wal_->findRequest("req-6").has_value());
  EXPECT_EQ(wal_->purgeRequests(10'000, 2).wait(io_.waitScope).dropped, 0u);
  // The interactions themselves stay: only the id index goes.
  EXPECT_TRUE(wal_->get(makeSeq(1, 1)).has_value());
  // A row an id was given again after its old interaction is kept: the
  // purge drops only the row its own interaction made.
  auto again = record(makeSeq(1, 7), "req-1");
  again.createdUs = 20'000;
  RequestRecord row{again.seq, 1, 100, again.createdUs};
  wal_->save(again, nullptr, false, &row).wait(io_.waitScope);
  EXPECT_EQ(wal_->purgeRequests(10'000, 100).wait(io_.waitScope).dropped, 0u);
  EXPECT_EQ(wal_->findRequest("req-1")->seq, makeSeq(1, 7));
}

// An export pages through the whole table in seq order, keeps only the
// records created in the range, carries their rollback records, and says
// where the next page starts until the table is done.
TEST_F(WalStoreTest, ExportPagesCoverTheTableAndKeepOnlyTheRange) {
  auto saves = kj::heapArrayBuilder<kj::Promise<void>>(1300);  // in flight together: group commits
  for (std::uint64_t i = 1; i <= 1300; ++i) {
    auto rec = record(makeSeq(1, i), "");
    rec.createdUs = Micros(i) * 1000;
    RollbackRecord rb;
    rb.seq = rec.seq;
    rb.reason = "r";
    saves.add(wal_->save(rec, i % 10 == 0 ? &rb : nullptr, true));
  }
  kj::joinPromises(saves.finish()).wait(io_.waitScope);
  // Created in [100 ms, 1100 ms): seqs 100 .. 1099.
  std::uint64_t after = 0, scanned = 0, kept = 0, withRollback = 0, pages = 0, lastSeq = 0;
  do {
    auto p = wal_->exportPage(after, 100'000, 1'100'000, 512);
    ++pages;
    scanned += p.scanned;
    EXPECT_EQ(p.total, 1300u);
    EXPECT_TRUE(p.damaged.empty());
    for (const auto& r : p.records) {
      auto rec = decodeInteraction(r.interaction);
      EXPECT_GT(rec.seq, lastSeq);
      lastSeq = rec.seq;
      EXPECT_GE(rec.createdUs, 100'000u);
      EXPECT_LT(rec.createdUs, 1'100'000u);
      ++kept;
      if (!r.rollback.empty()) {
        EXPECT_EQ(decodeRollback(r.rollback).seq, rec.seq);
        ++withRollback;
      }
    }
    after = p.next;
  } while (after != 0);
  EXPECT_EQ(pages, 3u);
  EXPECT_EQ(scanned, 1300u);
  EXPECT_EQ(kept, 1000u);
  EXPECT_EQ(withRollback, 100u);
}

// Seqs of one node are in creation order: an export of a narrow range
// starts there (bisection) and leaves each node's seqs soon after it, so it
// scans about what the range holds, in every node's segment.
TEST_F(WalStoreTest, ExportOfANarrowRangeScansAboutTheRangeInEachNodesSeqs) {
  auto saves = kj::heapArrayBuilder<kj::Promise<void>>(4000);
  for (std::uint16_t node : {1, 2}) {
    for (std::uint64_t i = 1; i <= 2000; ++i) {
      auto rec = record(makeSeq(node, i), "");
      rec.createdUs = Micros(i) * 10'000;  // 10 ms apart: 0.01 s .. 20 s
      saves.add(wal_->save(rec, nullptr, true));
    }
  }
  kj::joinPromises(saves.finish()).wait(io_.waitScope);
  std::uint64_t after = 0, scanned = 0, kept = 0;
  std::set<std::uint16_t> nodes;
  do {
    auto p = wal_->exportPage(after, 10'000'000, 11'000'000, 512);
    scanned += p.scanned;
    for (const auto& r : p.records) {
      auto rec = decodeInteraction(r.interaction);
      EXPECT_GE(rec.createdUs, 10'000'000u);
      EXPECT_LT(rec.createdUs, 11'000'000u);
      nodes.insert(seqNode(rec.seq));
      ++kept;
    }
    after = p.next;
  } while (after != 0);
  EXPECT_EQ(kept, 200u);  // 100 per node
  EXPECT_EQ(nodes, (std::set<std::uint16_t>{1, 2}));
  // The range and its slack (1 s each side): 300 per node, not 4000.
  EXPECT_LE(scanned, 2u * 301u);
  EXPECT_GE(scanned, 200u);
  // A range before everything and one after everything: nothing, at once.
  EXPECT_TRUE(wal_->exportPage(0, 100'000'000, 200'000'000, 512).records.empty());
  EXPECT_EQ(wal_->exportPage(0, 100'000'000, 200'000'000, 512).scanned, 0u);
  auto early = wal_->exportPage(0, 1, 5'000, 512);
  EXPECT_TRUE(early.records.empty());
  EXPECT_EQ(early.next, 0u);
}

// ---------------------------------------------------------------- archive

constexpr Micros kDay = 86'400'000'000;
constexpr Micros kDay1 = 20'000 * kDay;  // 2024-10-04, 00:00 UTC

InteractionRecord finished(std::uint64_t n, Micros createdUs, InteractionRecord::State st) {
  auto r = record(makeSeq(1, n), "req-" + std::to_string(n));
  r.state = st;
  r.createdUs = createdUs;
  r.completedUs = createdUs + 1000;
  return r;
}

// The archiver's two steps on the hot WAL: which records may leave
// (finished, not heuristic, created before the line; a node's seqs are
// left at the first younger one), and dropping exactly what the archive
// holds; afterwards get and findRequest find them in the archive.
TEST_F(WalStoreTest, ArchivedInteractionsLeaveTheHotWalAndAreStillFound) {
  using S = InteractionRecord::State;
  for (std::uint64_t i = 1; i <= 30; ++i) {
    S st = i <= 20 ? (i % 2 ? S::Committed : S::RolledBack) : i <= 25 ? S::Committing : i == 26 ? S::HeuristicMixed : S::Committed;
    Micros created = kDay1 + Micros(i) * 1'000'000 + (i > 10 && i <= 20 ? kDay : 0);  // 11..20 the next day
    if (i > 26) created += 2 * kDay;  // 27..30: younger than the line
    auto rec = finished(i, created, st);
    RequestRecord row{rec.seq, i, created, created};
    RollbackRecord rb;
    rb.seq = rec.seq;
    wal_->save(rec, st == S::RolledBack ? &rb : nullptr, false, &row).wait(io_.waitScope);
  }
  const Micros line = kDay1 + kDay + 30'000'000;
  auto c = wal_->archiveCandidates(line, 100);
  ASSERT_EQ(c.size(), 20u);  // 21..25 unfinished, 26 heuristic, 27.. younger
  for (std::size_t k = 0; k < c.size(); ++k) {
    EXPECT_EQ(c[k].seq, makeSeq(1, k + 1));
    EXPECT_FALSE(c[k].requestRow.empty());
    EXPECT_EQ(c[k].rollback.empty(), (k + 1) % 2 == 1);
  }
  EXPECT_EQ(wal_->archiveCandidates(line, 7).size(), 7u);

  Archive archive(dir_.path() + "/archive", std::size_t(64) << 20);
  archive.append(c);
  wal_->setArchive(&archive);
  // Seq 3 changed after it was picked (reopened): it stays in the hot WAL.
  auto changed = finished(3, c[2].createdUs, S::Committed);
  changed.error = "reopened";
  wal_->save(changed, nullptr).wait(io_.waitScope);
  EXPECT_EQ(wal_->dropArchived(c).wait(io_.waitScope), 19u);
  EXPECT_EQ(wal_->exportPage(0, 0, ~Micros(0) >> 1, 512).total, 11u);  // 3, 21..30
  EXPECT_EQ(decodeInteraction(wal_->get(makeSeq(1, 3))->interaction).error, "reopened");  // the hot one first
  auto five = wal_->get(makeSeq(1, 5));
  ASSERT_TRUE(five.has_value());
  EXPECT_EQ(five->interaction, c[4].interaction);
  auto four = wal_->get(makeSeq(1, 4));
  ASSERT_TRUE(four.has_value());
  EXPECT_EQ(decodeRollback(four->rollback).seq, makeSeq(1, 4));
  ASSERT_TRUE(wal_->findRequest("req-15").has_value());
  EXPECT_EQ(wal_->findRequest("req-15")->seq, makeSeq(1, 15));
  EXPECT_FALSE(wal_->findRequest("req-15", line + 1).has_value()) << "a request sent after the archive's newest "
                                                                     "interaction cannot name one of them";
  EXPECT_FALSE(wal_->get(makeSeq(1, 99)).has_value());
  EXPECT_TRUE(wal_->checkAll().empty());

  // Two periods, read back in creation order, a page of 7 at a time.
  auto periods = archive.periods();
  ASSERT_EQ(periods.size(), 2u);
  EXPECT_EQ(periods[0].name, Archive::periodOf(kDay1));
  EXPECT_EQ(periods[0].interactions + periods[1].interactions, 20u);
  std::vector<std::uint64_t> seen;
  std::string cursor;
  int pages = 0;
  do {
    auto p = archive.exportPage(cursor, kDay1, kDay1 + kDay + 15'000'000, 7);
    for (auto& r : p.records) seen.push_back(decodeInteraction(r.interaction).seq);
    cursor = p.next;
    ++pages;
  } while (!cursor.empty() && pages < 20);
  std::vector<std::uint64_t> want;
  for (std::uint64_t i = 1; i <= 14; ++i) want.push_back(makeSeq(1, i));  // 11..14 on the next day, <= +14 s
  EXPECT_EQ(seen, want);

  // Opened again: the same, and its newest creation time known.
  Archive again(dir_.path() + "/archive", std::size_t(64) << 20);
  EXPECT_EQ(again.newestCreatedUs(), kDay1 + kDay + 20'000'000);
  ASSERT_TRUE(again.get(makeSeq(1, 12)).has_value());
  // A damaged period is named; the others still answer.
  std::filesystem::create_directories(dir_.path() + "/archive/2024-01-01");
  std::ofstream(dir_.path() + "/archive/2024-01-01/data.mdb") << "not an LMDB file, not at all, no";
  Archive damaged(dir_.path() + "/archive", std::size_t(64) << 20);
  auto listed = damaged.periods();
  ASSERT_EQ(listed.size(), 3u);
  EXPECT_EQ(listed[0].name, "2024-01-01");
  EXPECT_FALSE(listed[0].damaged.empty());
  EXPECT_TRUE(damaged.get(makeSeq(1, 12)).has_value());
}

// A search's filter reads the archive's by_state or by_participant index:
// only the matching entries are read (scanned counts them), in creation
// order across periods, a page at a time. A period begun before the
// indexes (no mark) is read by time instead: a superset, filtered by the
// caller.
TEST(ArchiveIndexes, AFilterReadsOnlyItsMatchesAndOldPeriodsStillAnswer) {
  using S = InteractionRecord::State;
  test::TempDir dir;
  auto batch = [](std::uint64_t from, std::uint64_t to, Micros day) {
    std::vector<ArchivedInteraction> out;
    for (std::uint64_t i = from; i <= to; ++i) {
      auto rec = finished(i, day + Micros(i) * 1'000'000, i % 10 == 0 ? S::RolledBack : S::Committed);
      for (const char* p : {"bank-a", i % 2 ? "bank-b" : "bank-c"}) {
        rec.branches.emplace_back();
        rec.branches.back().participant = p;
      }
      ArchivedInteraction a;
      a.seq = rec.seq;
      a.createdUs = rec.createdUs;
      a.interaction = encode(rec);
      out.push_back(std::move(a));
    }
    return out;
  };
  const Micros all = ~Micros(0) >> 1;
  auto seqsOf = [](const Archive::Page& p) {
    std::vector<std::uint64_t> out;
    for (auto& r : p.records) out.push_back(seqCounter(decodeInteraction(r.interaction).seq));
    return out;
  };
  {
    Archive archive(dir.path() + "/archive", std::size_t(64) << 20);
    archive.append(batch(1, 100, kDay1));
    archive.append(batch(101, 200, kDay1 + kDay));
    Archive::Filter rolledBack;
    rolledBack.state = std::uint8_t(S::RolledBack);
    auto p = archive.exportPage("", 0, all, 1000, rolledBack);
    EXPECT_EQ(p.scanned, 20u) << "read more than the index's matches";
    std::vector<std::uint64_t> want;
    for (std::uint64_t i = 10; i <= 200; i += 10) want.push_back(i);
    EXPECT_EQ(seqsOf(p), want);
    Archive::Filter bankC;
    bankC.participant = "bank-c";
    std::vector<std::uint64_t> seen;
    std::string cursor;
    int pages = 0;
    do {  // 7 at a time, across both periods, in creation order
      auto page = archive.exportPage(cursor, kDay1 + 50'000'000, all, 7, bankC);
      EXPECT_LE(page.scanned, 7u);
      for (auto s : seqsOf(page)) seen.push_back(s);
      cursor = page.next;
    } while (!cursor.empty() && ++pages < 100);
    want.clear();
    for (std::uint64_t i = 50; i <= 200; i += 2) want.push_back(i);
    EXPECT_EQ(seen, want);
    Archive::Filter nobody;
    nobody.participant = "bank-z";
    EXPECT_EQ(archive.exportPage("", 0, all, 1000, nobody).scanned, 0u);
    EXPECT_EQ(archive.exportPage("", 0, all, 1000).scanned, 200u);  // no filter: by time
  }
  // The second day's period as one from before the indexes: its mark gone.
  {
    lmdb::Env env(dir.path() + "/archive/" + Archive::periodOf(kDay1 + kDay), lmdb::EnvOptions{std::size_t(64) << 20, 8});
    auto meta = env.openDb("meta");
    auto txn = env.beginWrite();
    txn.del(meta, "indexes");
    txn.commit();
  }
  Archive reopened(dir.path() + "/archive", std::size_t(64) << 20);
  Archive::Filter rolledBack;
  rolledBack.state = std::uint8_t(S::RolledBack);
  auto p = reopened.exportPage("", 0, all, 1000, rolledBack);
  EXPECT_EQ(p.scanned, 10u + 100u);  // the indexed day by its index, the other by time
  auto got = seqsOf(p);
  std::vector<std::uint64_t> matches;
  for (auto s : got) {
    if (s % 10 == 0) matches.push_back(s);
  }
  EXPECT_EQ(matches.size(), 20u);
  EXPECT_EQ(got.size(), 110u);
}

TEST(RequestIds, FingerprintIsStableAndTellsOperationsApart) {
  std::vector<Op> a{Op{"bank-a", OpKind::Debit, "alice", 10}, Op{"bank-b", OpKind::Credit, "bob", 10}};
  auto b = a;
  b[1].amount = 11;
  auto c = a;
  std::swap(c[0], c[1]);
  EXPECT_EQ(requestFingerprint(a, false), requestFingerprint(a, false));
  EXPECT_NE(requestFingerprint(a, false), requestFingerprint(b, false));
  EXPECT_NE(requestFingerprint(a, false), requestFingerprint(c, false));
  EXPECT_NE(requestFingerprint({}, true), requestFingerprint({}, false));
  // Field boundaries count: ("ab","c") is not ("a","bc").
  std::vector<Op> d{Op{"ab", OpKind::Debit, "c", 1}}, e{Op{"a", OpKind::Debit, "bc", 1}};
  EXPECT_NE(requestFingerprint(d, false), requestFingerprint(e, false));
  // The same on every build: a fixed value for a fixed request.
  EXPECT_EQ(requestFingerprint({}, false), requestFingerprint({}, false));
  EXPECT_EQ(requestFingerprint({Op{"p", OpKind::Credit, "x", 1}}, false), 0xc0a17c45a358aa6cull);
}

TEST(RequestIds, IdsAreCheckedForSizeAndCharacters) {
  EXPECT_EQ(checkRequestId("0000018c2f-abc_DEF.1:2"), "");
  EXPECT_NE(checkRequestId(std::string(129, 'x')), "");
  EXPECT_EQ(checkRequestId(std::string(128, 'x')), "");
  EXPECT_NE(checkRequestId("has space"), "");
  EXPECT_NE(checkRequestId(std::string("nul\0x", 5)), "");
  EXPECT_NE(checkRequestId("caf\xc3\xa9"), "");
}

// keel-coordinator --check-wal opens the WAL read-only: on a WAL written
// before some tables existed it checks what is there and writes nothing.
TEST(WalStoreReadOnly, ChecksAnOlderWalWithoutCreatingItsMissingTables) {
  test::TempDir dir;
  {
    lmdb::Env env(dir.path(), {});
    auto interactions = env.openDb("interactions");
    env.openDb("meta");
    env.openDb("active");
    auto t = env.beginWrite();
    t.put(interactions, u64Key(7), "not a record");
    t.commit();
  }
  auto read = [&] {
    std::ifstream f(dir.sub("data.mdb"), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  const std::string before = read();
  WalStore wal(dir.path(), std::size_t(64) << 20, /*readOnly=*/true);
  auto bad = wal.checkAll();
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_EQ(bad[0].rfind("interaction 0:7: ", 0), 0u) << bad[0];
  EXPECT_TRUE(wal.loadUnfinished().empty());
  EXPECT_EQ(read(), before);
}

}  // namespace
}  // namespace keel
