#include "storage/town_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <iostream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

#include "tests/support/records.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace hamlet::storage {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::testing::StatusIs;
using hamlet::v1::Record;

std::string Id(int n) { return absl::StrFormat("00000000-0000-4000-8000-%012d", n); }

class TownStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }
  void Reopen() {
    store_.reset();
    auto opened = TownStore::Open(dir_.path(), TownStoreOptions());
    ASSERT_TRUE(opened.ok()) << opened.status();
    store_ = std::move(*opened);
  }
  // Commits one push writing `records` (commune of each given), returns last seq.
  uint64_t Commit(const std::string& batch, std::vector<std::pair<Record, std::string>> records) {
    PushCommit commit;
    commit.device_id = "device-1";
    commit.batch_id = batch;
    for (auto& [record, commune] : records) {
      auto existing = store_->GetRecord(record.id());
      EXPECT_TRUE(existing.ok());
      const uint64_t previous = existing->has_value() ? (*existing)->server_seq() : 0;
      commit.records.push_back({record, commune, previous, existing->value_or(Record())});
    }
    commit.device.set_device_id("device-1");
    commit.clock = MakeStamp(5000, 0, "server");
    auto seq = store_->CommitPush(std::move(commit), [&](uint64_t last) {
      BatchReceipt receipt;
      receipt.set_content_hash(batch);
      receipt.set_commit_time_ms(static_cast<int64_t>(last));
      return receipt;
    });
    EXPECT_TRUE(seq.ok()) << seq.status();
    return seq.value_or(0);
  }
  ChangePage Read(const ChangeScope& scope, uint64_t after, size_t max = 100) {
    auto page = store_->ReadChanges(scope, after, max, 1 << 20, CountRemaining::kYes);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.value_or(ChangePage());
  }

  hamlet::testing::TempDir dir_;
  std::unique_ptr<TownStore> store_;
};

TEST_F(TownStoreTest, NewStoreHasIdentityAndNoChanges) {
  EXPECT_EQ(store_->server_id().size(), 36u);
  EXPECT_EQ(store_->epoch(), 1u);
  EXPECT_EQ(store_->last_seq(), 0u);
  ChangePage page = Read(ChangeScope::WholeServer(), 0);
  EXPECT_TRUE(page.records.empty());
  EXPECT_EQ(page.remaining, 0u);
}

// Group commit: an applied push is readable by the merge that follows it but
// not by pulls until a sync has made it durable; concurrent pushes share syncs.
TEST_F(TownStoreTest, AppliedPushesAreHiddenFromPullsUntilDurable) {
  PushCommit commit;
  commit.device_id = "device-1";
  commit.batch_id = "b1";
  commit.records.push_back({NewCase(Id(1), "07132", MakeStamp(1, 0, "d")), "07132", 0, Record()});
  commit.device.set_device_id("device-1");
  auto applied = store_->ApplyPush(std::move(commit), [](uint64_t) { return BatchReceipt(); });
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(applied->last_seq, 1u);
  auto record = store_->GetRecord(Id(1));
  ASSERT_TRUE(record.ok() && record->has_value()) << "a later merge must see it";
  EXPECT_TRUE(Read(ChangeScope::WholeServer(), 0).records.empty()) << "a pull must not see it yet";
  EXPECT_EQ(store_->durable_seq(), 0u);
  ASSERT_TRUE(store_->WaitDurable(applied->write).ok());
  EXPECT_EQ(store_->durable_seq(), 1u);
  EXPECT_EQ(Read(ChangeScope::WholeServer(), 0).records.size(), 1u);

  // A record rewritten by an unsynced push has lost its old index entry in
  // the snapshot: a pull must stop below it rather than step over it.
  Commit("b2", {{NewCase(Id(2), "07132", MakeStamp(1, 0, "d")), "07132"}});  // Seq 2, durable.
  PushCommit rewrite;
  rewrite.device_id = "device-1";
  rewrite.batch_id = "b3";
  auto stored = store_->GetRecord(Id(1));
  ASSERT_TRUE(stored.ok() && stored->has_value());
  rewrite.records.push_back({NewCase(Id(1), "07132", MakeStamp(2, 0, "d"), "sửa"), "07132", 1, **stored});
  rewrite.device.set_device_id("device-1");
  applied = store_->ApplyPush(std::move(rewrite), [](uint64_t) { return BatchReceipt(); });
  ASSERT_TRUE(applied.ok()) << applied.status();
  ChangePage page = Read(ChangeScope::WholeServer(), 0);
  EXPECT_TRUE(page.records.empty());
  EXPECT_EQ(page.through_seq, 0u) << "the cursor must not pass record 1's old place";
  ASSERT_TRUE(store_->WaitDurable(applied->write).ok());
  page = Read(ChangeScope::WholeServer(), 0);
  ASSERT_EQ(page.records.size(), 2u);
  EXPECT_EQ(page.records[1].id(), Id(1));
  EXPECT_EQ(page.through_seq, 3u);
}

TEST_F(TownStoreTest, ConcurrentPushesShareWalSyncs) {
  constexpr int kThreads = 16;
  constexpr int kPushes = 20;
  absl::Mutex apply_mu;  // As the town's push_mu_: apply one at a time, sync outside.
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  const uint64_t syncs_before = store_->wal_syncs();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int p = 0; p < kPushes; ++p) {
        PushCommit commit;
        commit.device_id = absl::StrCat("device-", t);
        commit.batch_id = absl::StrCat("b", p);
        commit.records.push_back(
            {NewCase(Id(1 + t * kPushes + p), "07132", MakeStamp(1, 0, "d")), "07132", 0, Record()});
        commit.device.set_device_id(commit.device_id);
        absl::StatusOr<TownStore::Applied> applied;
        {
          absl::MutexLock lock(&apply_mu);
          applied = store_->ApplyPush(std::move(commit), [](uint64_t) { return BatchReceipt(); });
        }
        if (!applied.ok() || !store_->WaitDurable(applied->write).ok()) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store_->durable_seq(), static_cast<uint64_t>(kThreads * kPushes));
  const uint64_t syncs = store_->wal_syncs() - syncs_before;
  EXPECT_LT(syncs, static_cast<uint64_t>(kThreads * kPushes)) << "no sync was shared";
  std::cout << "[ group    ] " << kThreads * kPushes << " pushes, " << syncs << " WAL syncs\n";
  Reopen();
  EXPECT_EQ(Read(ChangeScope::WholeServer(), 0, 1000).records.size(), static_cast<size_t>(kThreads * kPushes));
}

// `remaining` comes from per-block counts of the change index (blocks of
// 4,096 sequence numbers): it must equal a plain count across many blocks,
// with records rewritten (their old entries gone) and after a rebuild.
TEST_F(TownStoreTest, RemainingCountsAcrossBlocksEqualAPlainCount) {
  constexpr int kRecords = 9000;
  std::vector<std::pair<Record, std::string>> batch;
  for (int i = 1; i <= kRecords; ++i) {
    const std::string commune = i % 3 == 0 ? "07135" : "07132";
    batch.push_back({NewCase(Id(i), commune, MakeStamp(1, 0, "d")), commune});
    if (batch.size() == 500) Commit(absl::StrCat("b", i), std::move(batch)), batch.clear();
  }
  // Rewrite every seventh record: its entry moves to a later block.
  for (int i = 7; i <= kRecords; i += 7) {
    const std::string commune = i % 3 == 0 ? "07135" : "07132";
    batch.push_back({NewCase(Id(i), commune, MakeStamp(2, 0, "d"), "sửa lại"), commune});
    if (batch.size() == 500) Commit(absl::StrCat("r", i), std::move(batch)), batch.clear();
  }
  if (!batch.empty()) Commit("last", std::move(batch));
  const auto plain = [&](const ChangeScope& scope, uint64_t after) {
    uint64_t n = 0;
    for (uint64_t at = after;;) {
      ChangePage page = Read(scope, at, 1000);
      n += page.records.size();
      if (page.records.empty()) return n;
      at = page.through_seq;
    }
  };
  const auto check = [&] {
    for (const ChangeScope& scope : {ChangeScope::WholeServer(), ChangeScope::Commune("07135")}) {
      for (uint64_t after : {0ul, 1ul, 4095ul, 4096ul, 5000ul, 8191ul, 9100ul, 10200ul}) {
        ChangePage page = Read(scope, after, 10);
        EXPECT_EQ(page.remaining, plain(scope, page.through_seq)) << "after " << after;
      }
    }
  };
  check();
  Reopen();  // Counts are stored, not kept in memory.
  check();
}

TEST_F(TownStoreTest, CommitAssignsSequenceNumbersAndSurvivesReopen) {
  const std::string server_id = store_->server_id();
  EXPECT_EQ(Commit("b1", {{NewCase(Id(1), "07132", MakeStamp(1, 0, "d")), "07132"},
                          {NewCase(Id(2), "07135", MakeStamp(1, 0, "d")), "07135"}}),
            2u);
  Reopen();
  EXPECT_EQ(store_->server_id(), server_id);
  EXPECT_EQ(store_->last_seq(), 2u);
  EXPECT_EQ(store_->persisted_clock().physical_ms(), 5000);
  auto record = store_->GetRecord(Id(2));
  ASSERT_TRUE(record.ok() && record->has_value());
  EXPECT_EQ((*record)->server_seq(), 2u);
  auto receipt = store_->GetBatchReceipt("device-1", "b1");
  ASSERT_TRUE(receipt.ok() && receipt->has_value());
  EXPECT_EQ((*receipt)->commit_time_ms(), 2);
  auto missing = store_->GetBatchReceipt("device-1", "b2");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
}

TEST_F(TownStoreTest, IndexHoldsOnlyTheLatestVersionOfARecord) {
  Record r = NewCase(Id(1), "07132", MakeStamp(1, 0, "d"));
  Commit("b1", {{r, "07132"}});
  Commit("b2", {{NewCase(Id(2), "07132", MakeStamp(1, 0, "d")), "07132"}});
  r.mutable_mediation_case()->set_summary("edited");
  Commit("b3", {{r, "07132"}});
  r.mutable_mediation_case()->set_summary("edited again");
  Commit("b4", {{r, "07132"}});

  for (const ChangeScope& scope : {ChangeScope::WholeServer(), ChangeScope::Commune("07132")}) {
    ChangePage page = Read(scope, 0);
    ASSERT_EQ(page.records.size(), 2u);
    EXPECT_EQ(page.records[0].id(), Id(2));
    EXPECT_EQ(page.records[1].id(), Id(1));
    EXPECT_EQ(page.records[1].mediation_case().summary(), "edited again");
    EXPECT_EQ(page.records[1].server_seq(), 4u);
    EXPECT_EQ(page.through_seq, 4u);
  }
}

TEST_F(TownStoreTest, CommuneScopeSeesItsCommuneAndTownLevelButNotOthers) {
  Commit("b1", {{NewCase(Id(1), "07132", MakeStamp(1, 0, "d")), "07132"},
                {NewCase(Id(2), "07135", MakeStamp(1, 0, "d")), "07135"},
                {NewCase(Id(3), "206", MakeStamp(1, 0, "d")), ""},
                {NewCase(Id(4), "07132-K01", MakeStamp(1, 0, "d")), "07132"}});
  ChangePage page = Read(ChangeScope::Commune("07132"), 0);
  std::vector<std::string> ids;
  for (const Record& r : page.records) ids.push_back(r.id());
  EXPECT_EQ(ids, (std::vector<std::string>{Id(1), Id(3), Id(4)}));
  // Caught up: the cursor moves to the newest change even though it is not ours.
  EXPECT_EQ(page.through_seq, 4u);
  EXPECT_EQ(Read(ChangeScope::AboveCommune(), 0).records.size(), 1u);
  EXPECT_EQ(Read(ChangeScope::WholeServer(), 0).records.size(), 4u);
}

TEST_F(TownStoreTest, PagesCountWhatRemains) {
  std::vector<std::pair<Record, std::string>> records;
  for (int i = 1; i <= 10; ++i) records.push_back({NewCase(Id(i), "07132", MakeStamp(1, 0, "d")), "07132"});
  Commit("b1", records);
  uint64_t after = 0;
  std::vector<uint64_t> remaining;
  size_t pulled = 0;
  while (true) {
    ChangePage page = Read(ChangeScope::Commune("07132"), after, 4);
    pulled += page.records.size();
    remaining.push_back(page.remaining);
    after = page.through_seq;
    if (page.remaining == 0) break;
  }
  EXPECT_EQ(pulled, 10u);
  EXPECT_EQ(remaining, (std::vector<uint64_t>{6, 2, 0}));
}

TEST_F(TownStoreTest, PageStopsAtByteLimitButHoldsAtLeastOneRecord) {
  std::vector<std::pair<Record, std::string>> records;
  for (int i = 1; i <= 5; ++i) records.push_back({NewCase(Id(i), "07132", MakeStamp(1, 0, "d")), "07132"});
  Commit("b1", records);
  auto page = store_->ReadChanges(ChangeScope::WholeServer(), 0, 100, 1, CountRemaining::kYes);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->records.size(), 1u);
  EXPECT_EQ(page->remaining, 4u);
  EXPECT_EQ(page->through_seq, 1u);
}

TEST_F(TownStoreTest, SecondOpenOfTheSameDirectoryIsRefused) {
  EXPECT_THAT(TownStore::Open(dir_.path(), TownStoreOptions()), StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace hamlet::storage
