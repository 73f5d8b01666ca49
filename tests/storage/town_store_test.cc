#include "storage/town_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "rocksdb/db.h"
#include "sync/big_endian.h"

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
  // Returns once the commit thread is held by a commit of nothing, which ends
  // when `release` is notified: the commits submitted meanwhile queue behind it.
  void HoldCommitThread(absl::Notification* release) {
    // Shared, so that it outlives this function while Notify() returns.
    auto holding = std::make_shared<absl::Notification>();
    store_->Submit(
        [holding, release](CommitGroup&) {
          holding->Notify();
          release->WaitForNotification();
          return absl::OkStatus();
        },
        [](const absl::Status&) {});
    holding->WaitForNotification();
  }
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

// docs/STORAGE.md names the town store's column families in the order Open creates them; a store
// on disk has exactly those.
TEST_F(TownStoreTest, StorageMdListsTheColumnFamiliesInOrder) {
  store_.reset();
  std::vector<std::string> on_disk;
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), dir_.path(), &on_disk).ok());
  std::ifstream doc(HAMLET_SOURCE_DIR "/docs/STORAGE.md");
  std::stringstream text;
  text << doc.rdbuf();
  const std::string all = text.str();
  const size_t start = all.find("column families, opened in this order by `TownStore::Open`");
  ASSERT_NE(start, std::string::npos) << "STORAGE.md no longer lists the town store's column families";
  const std::string sentence = all.substr(start, all.find('.', all.find("`default`", start)) - start);
  std::vector<std::string> documented;
  for (size_t at = sentence.find("`default`"); at != std::string::npos; at = sentence.find('`', at)) {
    const size_t end = sentence.find('`', at + 1);
    documented.push_back(sentence.substr(at + 1, end - at - 1));
    at = end + 1;
  }
  EXPECT_EQ(documented, on_disk);
}

TEST_F(TownStoreTest, NewStoreHasIdentityAndNoChanges) {
  EXPECT_EQ(store_->server_id().size(), 36u);
  EXPECT_EQ(store_->epoch(), 1u);
  EXPECT_EQ(store_->last_seq(), 0u);
  ChangePage page = Read(ChangeScope::WholeServer(), 0);
  EXPECT_TRUE(page.records.empty());
  EXPECT_EQ(page.remaining, 0u);
}

// The commit queue: commits waiting together form one group; each reads what
// those before it staged; a refused one leaves nothing while the rest land;
// nothing is visible to a pull until the group's one synced write.
TEST_F(TownStoreTest, CommitsWaitingTogetherAreOneGroupVisibleOnlyOnceWritten) {
  // Holds the commit thread, so that the commits below queue behind it.
  absl::Notification release;
  HoldCommitThread(&release);

  const auto create = [&](int n, const std::string& batch) {
    PushCommit commit;
    commit.device_id = "device-1";
    commit.batch_id = batch;
    commit.records.push_back({NewCase(Id(n), "07132", MakeStamp(1, 0, "d")), "07132", 0, Record()});
    commit.device.set_device_id("device-1");
    commit.device.set_batches_applied(1);
    return commit;
  };
  std::vector<absl::Status> done(4);
  absl::BlockingCounter finished(4);
  const auto tell = [&](int i) {
    return [&, i](const absl::Status& status) {
      done[i] = status;
      finished.DecrementCount();
    };
  };
  bool pull_saw_staged = true;
  store_->Submit(
      [&](CommitGroup& group) {
        return group.Stage(create(1, "b1"), [](uint64_t) { return BatchReceipt(); }).status();
      },
      tell(0));
  store_->Submit(
      [&](CommitGroup& group) -> absl::Status {
        // The record and the device as commit 1 left them, seen through the group only.
        auto record = group.GetRecord(Id(1));
        auto device = group.GetDevice("device-1");
        auto receipt = group.GetBatchReceipt("device-1", "b1");
        if (!record.ok() || !record->has_value() || (*record)->server_seq() != 1) {
          return absl::InternalError("commit 1's record is not seen through the group");
        }
        if (!device.ok() || !device->has_value() || !receipt.ok() || !receipt->has_value()) {
          return absl::InternalError("commit 1's device or receipt is not seen through the group");
        }
        pull_saw_staged = !Read(ChangeScope::WholeServer(), 0).records.empty() || store_->last_seq() != 0 ||
                          store_->GetRecord(Id(1))->has_value();
        PushCommit rewrite = create(1, "b2");
        rewrite.records[0] = {NewCase(Id(1), "07132", MakeStamp(2, 0, "d"), "sửa"), "07132", 1, **record};
        return group.Stage(std::move(rewrite), [](uint64_t) { return BatchReceipt(); }).status();
      },
      tell(1));
  // Refused: a sealed record, and this store has no sealing key.
  store_->Submit(
      [&](CommitGroup& group) {
        PushCommit sealed = create(3, "b3");
        sealed.records[0].state.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
        return group.Stage(std::move(sealed), [](uint64_t) { return BatchReceipt(); }).status();
      },
      tell(2));
  store_->Submit(
      [&](CommitGroup& group) {
        return group.Stage(create(4, "b4"), [](uint64_t) { return BatchReceipt(); }).status();
      },
      tell(3));
  const uint64_t syncs_before = store_->wal_syncs();
  release.Notify();
  finished.Wait();

  EXPECT_TRUE(done[0].ok()) << done[0];
  EXPECT_TRUE(done[1].ok()) << done[1];
  EXPECT_THAT(done[2], StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(done[3].ok()) << done[3];
  EXPECT_FALSE(pull_saw_staged) << "a staged commit was visible before its group was written";
  EXPECT_EQ(store_->wal_syncs() - syncs_before, 1u) << "the four commits were not one group";
  EXPECT_EQ(store_->last_seq(), 3u);
  ChangePage page = Read(ChangeScope::WholeServer(), 0);
  ASSERT_EQ(page.records.size(), 2u) << "the change index holds each record once";
  EXPECT_EQ(page.records[0].id(), Id(1));
  EXPECT_EQ(page.records[0].server_seq(), 2u);
  EXPECT_EQ(page.records[1].id(), Id(4));
  EXPECT_EQ(page.records[1].server_seq(), 3u);
  EXPECT_EQ(page.remaining, 0u);
  EXPECT_FALSE(store_->GetRecord(Id(3))->has_value()) << "the refused commit left something";
  Reopen();
  EXPECT_EQ(store_->last_seq(), 3u);
  EXPECT_EQ(Read(ChangeScope::WholeServer(), 0).records.size(), 2u);
  EXPECT_EQ(*store_->CountRecords(), 2u) << "the index counts of the group are off";
}

// A group takes no more once its batch holds 2 MiB: the commits after that
// wait for the next group, in the order they came, so that a burst of large
// pushes does not gather in memory as one batch.
TEST_F(TownStoreTest, AFullGroupLeavesTheRestToTheNextInOrder) {
  absl::Notification release;
  HoldCommitThread(&release);
  // Six commits of a record of about 700 KB each: three fill a group. The
  // first one's answer, on the commit thread once the first group is
  // written, submits a seventh, which must come after the three put back.
  constexpr int kCommits = 7;
  const std::string summary(700 << 10, 'x');
  std::vector<absl::StatusOr<uint64_t>> done(kCommits, absl::UnknownError("not answered"));
  absl::BlockingCounter finished(kCommits);
  std::function<void(int)> submit = [&](int i) {
    store_->Submit(
        [&, i](CommitGroup& group) {
          PushCommit commit;
          commit.device_id = "device-1";
          commit.batch_id = absl::StrCat("b", i);
          commit.records.push_back({NewCase(Id(i + 1), "07132", MakeStamp(1, 0, "d"), summary), "07132", 0, Record()});
          commit.device.set_device_id("device-1");
          done[i] = group.Stage(std::move(commit), [](uint64_t) { return BatchReceipt(); });
          return done[i].status();
        },
        [&, i](const absl::Status&) {
          if (i == 0) submit(kCommits - 1);
          finished.DecrementCount();
        });
  };
  for (int i = 0; i < kCommits - 1; ++i) submit(i);
  const uint64_t syncs_before = store_->wal_syncs();
  release.Notify();
  finished.Wait();
  for (int i = 0; i < kCommits; ++i) {
    ASSERT_TRUE(done[i].ok()) << i << ": " << done[i].status();
    EXPECT_EQ(*done[i], static_cast<uint64_t>(i + 1)) << "commit " << i << " was not staged in its turn";
  }
  EXPECT_EQ(store_->wal_syncs() - syncs_before, 3u) << "seven commits of 700 KB should make three groups";
  Reopen();
  std::vector<std::string> ids;
  for (uint64_t at = 0;;) {
    ChangePage page = Read(ChangeScope::WholeServer(), at);
    if (page.records.empty()) break;
    for (const Record& record : page.records) ids.push_back(record.id());
    at = page.through_seq;
  }
  std::vector<std::string> expected;
  for (int i = 0; i < kCommits; ++i) expected.push_back(Id(i + 1));
  EXPECT_EQ(ids, expected);
}

TEST_F(TownStoreTest, ConcurrentPushesShareWalSyncs) {
  constexpr int kThreads = 16;
  constexpr int kPushes = 20;
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
        if (!store_->CommitPush(std::move(commit), [](uint64_t) { return BatchReceipt(); }).ok()) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store_->last_seq(), static_cast<uint64_t>(kThreads * kPushes));
  const uint64_t syncs = store_->wal_syncs() - syncs_before;
  EXPECT_LT(syncs, static_cast<uint64_t>(kThreads * kPushes)) << "no sync was shared";
  std::cout << "[ group    ] " << kThreads * kPushes << " pushes, " << syncs << " WAL syncs\n";
  Reopen();
  EXPECT_EQ(Read(ChangeScope::WholeServer(), 0, 1000).records.size(), static_cast<size_t>(kThreads * kPushes));
}

// `conflicted` holds exactly the records with an open conflict: an entry
// comes with a conflict and goes with it, across a reopen and within one
// group; records that never had one are not listed.
TEST_F(TownStoreTest, ConflictedHoldsTheRecordsWithAnOpenConflict) {
  Record disputed = NewCase(Id(1), "07132", MakeStamp(1, 0, "d"));
  hamlet::v1::Conflict* conflict = disputed.add_conflicts();
  conflict->set_field(9);
  conflict->add_values()->mutable_stamp()->set_node("a");
  conflict->add_values()->mutable_stamp()->set_node("b");
  Commit("b1", {{disputed, "07132"}, {NewCase(Id(2), "07132", MakeStamp(1, 0, "d")), "07132"}});
  Commit("b2", {{NewCase(Id(3), "07135", MakeStamp(1, 0, "d")), "07135"}});
  EXPECT_EQ(*store_->CountConflicted(), 1u);
  auto listed = store_->ListConflicted("07132", "", 10);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id(), Id(1));
  EXPECT_TRUE(store_->ListConflicted("07135", "", 10)->empty());

  // Rewritten with its conflict still open, it stays; resolved, it goes.
  Commit("b3", {{disputed, "07132"}, {NewCase(Id(2), "07132", MakeStamp(2, 0, "d"), "sửa"), "07132"}});
  EXPECT_EQ(*store_->CountConflicted(), 1u);
  Record resolved = disputed;
  resolved.clear_conflicts();
  Commit("b4", {{resolved, "07132"}});
  EXPECT_EQ(*store_->CountConflicted(), 0u);
  EXPECT_TRUE(store_->ListConflicted("", "", 10)->empty());
  Reopen();
  EXPECT_EQ(*store_->CountConflicted(), 0u);

  // Given a conflict and resolved in one group: the second commit's previous
  // state is the first one's, read through the group.
  absl::Notification release;
  HoldCommitThread(&release);
  absl::BlockingCounter finished(2);
  std::vector<absl::Status> done(2);
  const auto stage = [&](int i, const Record& state) {
    store_->Submit(
        [&, i, state](CommitGroup& group) -> absl::Status {
          auto stored = group.GetRecord(state.id());
          if (!stored.ok() || !stored->has_value()) return absl::InternalError("the record is not read back");
          PushCommit commit;
          commit.device_id = "device-1";
          commit.batch_id = absl::StrCat("g", i);
          commit.records.push_back({state, "07132", (*stored)->server_seq(), **stored});
          commit.device.set_device_id("device-1");
          return group.Stage(std::move(commit), [](uint64_t) { return BatchReceipt(); }).status();
        },
        [&, i](const absl::Status& status) {
          done[i] = status;
          finished.DecrementCount();
        });
  };
  stage(0, disputed);
  stage(1, resolved);
  const uint64_t syncs_before = store_->wal_syncs();
  release.Notify();
  finished.Wait();
  EXPECT_TRUE(done[0].ok()) << done[0];
  EXPECT_TRUE(done[1].ok()) << done[1];
  EXPECT_EQ(store_->wal_syncs() - syncs_before, 1u) << "the two commits were not one group";
  EXPECT_EQ(*store_->CountConflicted(), 0u);
  Reopen();
  EXPECT_EQ(*store_->CountConflicted(), 0u);
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

// The count of records is exact however often records are rewritten, and
// after a reopen that replays the log (RocksDB's key estimate is not).
TEST_F(TownStoreTest, RecordCountIsExactAcrossRewritesAndReopen) {
  std::vector<Record> records;
  for (int i = 1; i <= 300; ++i) records.push_back(NewCase(Id(i), "07132", MakeStamp(1, 0, "d")));
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 300; i += 50) {
      std::vector<std::pair<Record, std::string>> batch;
      for (int j = i; j < i + 50; ++j) {
        records[j].mutable_mediation_case()->set_summary(absl::StrCat("round ", round));
        batch.push_back({records[j], "07132"});
      }
      Commit(absl::StrCat("b", round, "-", i), std::move(batch));
    }
  }
  auto count = store_->CountRecords();
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 300u);
  Reopen();
  count = store_->CountRecords();
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 300u);
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

// ---------------------------------------------------------------------------
// A damaged store (what a bad disk or a bug could leave in RocksDB) is
// DATA_LOSS, never a crash, a read past a key, or another code. Each case was
// found by tests/fuzz/store_fuzzer; its input is in tests/fuzz/regressions/store.

std::string Be64(uint64_t v) {
  std::string out;
  sync::PutBigEndian64(&out, v);
  return out;
}

class DamagedTownStoreTest : public TownStoreTest {
 protected:
  // What to write straight into a column family; no value deletes the key.
  struct RawWrite {
    std::string family;
    std::string key;
    std::optional<std::string> value;
  };
  // Closes the store and applies `writes` to its RocksDB, bypassing the store.
  void Damage(const std::vector<RawWrite>& writes) {
    store_.reset();
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), dir_.path(), &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const std::string& name : names) descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir_.path(), descriptors, &handles, &db).ok());
    for (const RawWrite& w : writes) {
      const size_t f = std::find(names.begin(), names.end(), w.family) - names.begin();
      ASSERT_LT(f, names.size()) << w.family;
      const rocksdb::Status s = w.value.has_value() ? db->Put(rocksdb::WriteOptions(), handles[f], w.key, *w.value)
                                                    : db->Delete(rocksdb::WriteOptions(), handles[f], w.key);
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
    for (rocksdb::ColumnFamilyHandle* handle : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(handle).ok());
    ASSERT_TRUE(db->Close().ok());
    delete db;
  }
  absl::StatusOr<std::unique_ptr<TownStore>> OpenDamaged() { return TownStore::Open(dir_.path(), TownStoreOptions()); }
  static constexpr absl::StatusCode kDataLoss = absl::StatusCode::kDataLoss;
};

// Was INTERNAL ("reading server id: NotFound").
TEST_F(DamagedTownStoreTest, MissingIdentityIsDataLoss) {
  for (const char* key : {"server_id", "epoch", "last_seq"}) {
    Reopen();
    Damage({{"default", key, std::nullopt}});
    EXPECT_THAT(OpenDamaged(), StatusIs(kDataLoss)) << key;
    Damage({{"default", key, key == std::string("server_id") ? "x" : Be64(1)}});
  }
}

// A store written before index entries carried access facts (format 1:
// records with whole stamps, each index entry the bare record id) is
// rewritten when opened: the same records come back, kept lean, and each
// index entry names its record's unit, author and sole writer.
TEST_F(DamagedTownStoreTest, AStoreOfFormatOneIsMigratedWhenOpened) {
  Record own = NewCase(Id(1), "07132-K01", MakeStamp(1000, 0, "a"));
  own.set_author("person-a");
  Commit("b1", {{own, "07132"}});
  Record shared = NewCase(Id(2), "07132-K03", MakeStamp(1000, 0, "a"));
  Commit("b2", {{shared, "07132"}});
  shared.mutable_mediation_case()->set_summary("B's summary");
  shared.mutable_field_stamps(0)->mutable_stamp()->set_node("b");
  Commit("b3", {{shared, "07132"}});
  const ChangePage before = Read(ChangeScope::WholeServer(), 0);
  ASSERT_EQ(before.records.size(), 2u);
  // And an informant identity from before sealing existed, kept in the
  // clear; this store has no sealing key.
  Record identity;
  identity.set_id(Id(3));
  identity.set_unit_code("07132-K01");
  identity.set_author("person-a");
  identity.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
  identity.mutable_informant_identity()->set_name("Người báo tin");
  hamlet::v1::FieldStamp* stamp = identity.add_field_stamps();
  stamp->set_field(hamlet::v1::InformantIdentity::kNameFieldNumber);
  *stamp->mutable_stamp() = MakeStamp(1000, 0, "a");
  identity.set_server_seq(before.records.back().server_seq() + 1);
  std::vector<Record> all = before.records;
  all.push_back(identity);
  std::vector<RawWrite> format_one = {{"default", "format", "1"}, {"default", "last_seq", Be64(identity.server_seq())}};
  for (const Record& record : all) {
    format_one.push_back({"records", record.id(), "\x01" + record.SerializeAsString()});
    format_one.push_back({"changes", Be64(record.server_seq()), record.id()});
    format_one.push_back({"commune_changes",
                          "\x05"
                          "07132" +
                              Be64(record.server_seq()),
                          record.id()});
  }
  Damage(format_one);
  std::unique_ptr<TownStore> store;
  for (const char* opened_at : {"1", "1-to-2"}) {  // A migration cut short carries on.
    if (opened_at == std::string("1-to-2")) {
      store.reset();
      Damage({{"default", "format", opened_at}});
    }
    auto opened = OpenDamaged();
    ASSERT_TRUE(opened.ok()) << opened.status();
    store = std::move(*opened);
  }
  for (const ChangeScope& scope : {ChangeScope::WholeServer(), ChangeScope::Commune("07132")}) {
    auto after = store->ReadChanges(scope, 0, 10, 1 << 20, CountRemaining::kYes);
    ASSERT_TRUE(after.ok()) << after.status();
    ASSERT_EQ(after->records.size(), 3u);
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(after->records[i].SerializeAsString(), all[i].SerializeAsString());
    auto stored = store->ReadStoredChanges(scope, 0, 10, 1 << 20, CountRemaining::kYes, TownStore::WantedFn());
    ASSERT_TRUE(stored.ok()) << stored.status();
    ASSERT_EQ(stored->changes.size(), 3u);
    // The identity's entry names no author, unit or writer: those stay in the record.
    const StoredChange& sealed = stored->changes[2];
    EXPECT_TRUE(sealed.sealed);
    EXPECT_EQ(sealed.facts.author, "");
    EXPECT_EQ(sealed.facts.unit_code, "");
    EXPECT_EQ(sealed.sole_writer, "");
    EXPECT_EQ(sealed.whole_size, identity.ByteSizeLong());
    const StoredChange& first = stored->changes[0];
    EXPECT_EQ(first.record_id, Id(1));
    EXPECT_EQ(first.facts.type, Record::kMediationCase);
    EXPECT_EQ(first.facts.unit_code, "07132-K01");
    EXPECT_EQ(first.facts.author, "person-a");
    EXPECT_EQ(first.sole_writer, "a");
    EXPECT_EQ(stored->changes[1].sole_writer, "") << "two writers";
    Record lean;
    ASSERT_TRUE(lean.ParseFromString(first.record));
    EXPECT_EQ(lean.default_node(), "a") << "kept with lean stamps";
    EXPECT_LT(first.record.size(), before.records[0].ByteSizeLong());
  }
}

// A pull reads only the records it wants: the others are passed over by
// their index entries, and the page still ends where it read to.
TEST_F(TownStoreTest, ARecordNotWantedIsNotReadButItsChangeIsPassed) {
  Commit("b1", {{NewCase(Id(1), "07132-K01", MakeStamp(1000, 0, "a")), "07132"},
                {NewCase(Id(2), "07132-K03", MakeStamp(1000, 0, "b")), "07132"},
                {NewCase(Id(3), "07132-K01", MakeStamp(1000, 0, "b")), "07132"}});
  std::vector<std::string> seen;
  const auto wanted = [&](const StoredChange& change) {
    EXPECT_TRUE(change.record.empty());
    seen.push_back(change.record_id);
    return change.facts.unit_code == "07132-K01";
  };
  auto page = store_->ReadStoredChanges(ChangeScope::Commune("07132"), 0, 2, 1 << 20, CountRemaining::kYes, wanted);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(seen, (std::vector<std::string>{Id(1), Id(2)}));
  ASSERT_EQ(page->changes.size(), 1u);
  EXPECT_EQ(page->changes[0].record_id, Id(1));
  EXPECT_EQ(page->through_seq, 2u);
  EXPECT_EQ(page->remaining, 1u);
  Record record;
  ASSERT_TRUE(TownStore::ParseStoredRecord(page->changes[0], &record).ok());
  EXPECT_EQ(record.field_stamps(0).stamp().node(), "a") << "stamps filled in";
  // Changes passed over fill a page's bytes with their entries: a page of
  // one byte passes one, and returns nothing.
  page = store_->ReadStoredChanges(ChangeScope::Commune("07132"), 0, 100, 1, CountRemaining::kYes,
                                   [](const StoredChange&) { return false; });
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_TRUE(page->changes.empty());
  EXPECT_EQ(page->through_seq, 1u);
  EXPECT_EQ(page->remaining, 2u);
}

// Was INTERNAL ("reading record ...: NotFound").
TEST_F(DamagedTownStoreTest, ChangeIndexNamingAMissingRecordIsDataLoss) {
  Commit("b1", {{NewCase(Id(1), "07132", MakeStamp(1000, 0, "a")), "07132"}});
  Damage({{"records", Id(1), std::nullopt}});
  auto store = OpenDamaged();
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT((*store)->ReadChanges(ChangeScope::WholeServer(), 0, 10, 1 << 20, CountRemaining::kYes),
              StatusIs(kDataLoss));
}

// Were read 8 bytes from wherever the key ended, and a commune index key too
// short for its length byte threw std::out_of_range (abort) when the counts
// were rebuilt.
TEST_F(DamagedTownStoreTest, IndexKeysOfAnotherLengthAreDataLoss) {
  Commit("b1", {{NewCase(Id(1), "07132", MakeStamp(1000, 0, "a")), "07132"}});
  Damage({{"changes", std::string("\0\0\2", 3), Id(1)},
          {"commune_changes",
           "\5"
           "07132" +
               Be64(2) + "x",
           Id(1)}});
  auto store = OpenDamaged();
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT((*store)->ReadChanges(ChangeScope::WholeServer(), 0, 10, 1 << 20, CountRemaining::kNo),
              StatusIs(kDataLoss));
  EXPECT_THAT((*store)->ReadChanges(ChangeScope::Commune("07132"), 0, 10, 1 << 20, CountRemaining::kYes),
              StatusIs(kDataLoss));
  store->reset();
  Damage({{"default", "index_counts", std::nullopt}});
  EXPECT_THAT(OpenDamaged(), StatusIs(kDataLoss));  // The rebuild meets the keys.
  Damage({{"changes", std::string("\0\0\2", 3), std::nullopt}, {"commune_changes", "", Id(1)}});
  EXPECT_THAT(OpenDamaged(), StatusIs(kDataLoss));
}

// Threw std::out_of_range (abort): the key is within the months asked for
// but ends before its metric.
TEST_F(DamagedTownStoreTest, ReportTallyKeyCutShortIsDataLoss) {
  // 202401 is 00 03 16 a1 and 202513 (the end) 00 03 17 11: "07132" 00 00 03 17 lies between.
  Damage({{"tallies", std::string("07132\0\0\3\x17", 9), Be64(1)}});
  auto store = OpenDamaged();
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT((*store)->SumTallies({"07132"}, 202401, 202512), StatusIs(kDataLoss));
}

// Were signed overflows: a stored count near the int64 limit plus one.
TEST_F(DamagedTownStoreTest, CountsThatWouldOverflowAreDataLoss) {
  Commit("b1", {{NewCase(Id(1), "07132", MakeStamp(1000, 0, "a")), "07132"}});
  Damage({{"index_counts", "\xff" + Be64(0), Be64(INT64_MAX)}});
  Reopen();
  PushCommit commit;
  commit.device_id = "device-1";
  commit.batch_id = "b2";
  commit.records.push_back({NewCase(Id(2), "07132", MakeStamp(2000, 0, "a")), "07132", 0, Record()});
  EXPECT_THAT(store_->CommitPush(std::move(commit), [](uint64_t) { return BatchReceipt(); }), StatusIs(kDataLoss));
}

}  // namespace
}  // namespace hamlet::storage
