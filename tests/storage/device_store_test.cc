#include "storage/device_store.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "storage/rocks.h"
#include "tests/support/records.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace hamlet::storage {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::testing::StatusIs;

constexpr char kDevice[] = "0b6e1f7a-3c2d-4e5f-8a9b-0c1d2e3f4a5b";
constexpr char kCase[] = "00000000-0000-4000-8000-000000000001";

std::unique_ptr<DeviceStore> OpenStore(const std::string& dir, const std::string& new_id = kDevice) {
  auto store = DeviceStore::Open(dir, new_id);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

TEST(DeviceStoreTest, KeepsItsDeviceIdAcrossReopen) {
  hamlet::testing::TempDir dir;
  EXPECT_EQ(OpenStore(dir.path())->device_id(), kDevice);
  EXPECT_EQ(OpenStore(dir.path(), "another-id")->device_id(), kDevice);
}

TEST(DeviceStoreTest, OutboxBatchIsAcknowledgedOnlyUpToItsLastEntry) {
  hamlet::testing::TempDir dir;
  auto store = OpenStore(dir.path());
  auto record = NewCase(kCase, "07132", MakeStamp(1000, 0, kDevice));
  ASSERT_TRUE(store->SaveLocalEdit(record, record, MakeStamp(1000, 0, kDevice)).ok());
  ASSERT_TRUE(store->SaveLocalEdit(record, record, MakeStamp(1001, 0, kDevice)).ok());
  auto outbox = store->ReadOutbox(10);
  ASSERT_TRUE(outbox.ok());
  ASSERT_EQ(outbox->size(), 2u);
  EXPECT_LT((*outbox)[0].seq, (*outbox)[1].seq);

  PendingBatch pending;
  pending.set_batch_id("batch-1");
  pending.set_last_outbox_seq((*outbox)[0].seq);
  ASSERT_TRUE(store->SetPendingBatch(pending).ok());
  // An edit made while the batch is in flight is not part of it.
  ASSERT_TRUE(store->SaveLocalEdit(record, record, MakeStamp(1002, 0, kDevice)).ok());
  store.reset();
  store = OpenStore(dir.path());  // A crash before the answer: the batch is still pending.
  auto again = store->GetPendingBatch();
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->batch_id(), "batch-1");
  ASSERT_TRUE(store->AckPendingBatch().ok());
  EXPECT_EQ(*store->OutboxSize(), 2u);
  EXPECT_FALSE(store->GetPendingBatch()->has_value());
  EXPECT_EQ(store->GetClock()->physical_ms(), 1002);
}

TEST(DeviceStoreTest, QueuedBatchesBecomePendingInOrderAndKeepTheirIds) {
  hamlet::testing::TempDir dir;
  auto store = OpenStore(dir.path());
  auto record = NewCase(kCase, "07132", MakeStamp(1000, 0, kDevice));
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(store->SaveLocalEdit(record, record, MakeStamp(1000 + i, 0, kDevice)).ok());
  }
  const std::vector<OutboxItem> outbox = *store->ReadOutbox(10);
  const auto batch = [&](const std::string& id, size_t last) {
    PendingBatch b;
    b.set_batch_id(id);
    b.set_last_outbox_seq(outbox[last].seq);
    return b;
  };
  ASSERT_TRUE(store->SetBatches(batch("b1", 0), {batch("b2", 2), batch("b3", 4)}).ok());
  store.reset();
  store = OpenStore(dir.path());  // Fixed on disk: a bundle may carry them.
  EXPECT_EQ((*store->GetPendingBatch())->batch_id(), "b1");
  ASSERT_EQ(store->GetQueuedBatches()->size(), 2u);

  // Acknowledged, the first queued batch is pending, with the entries after b1.
  ASSERT_TRUE(store->AckPendingBatch().ok());
  EXPECT_EQ((*store->GetPendingBatch())->batch_id(), "b2");
  EXPECT_EQ(store->ReadOutboxThrough((*store->GetPendingBatch())->last_outbox_seq())->size(), 2u);
  // Refused for good, the next one is.
  ASSERT_TRUE(store->RejectPendingBatch("PERMISSION_DENIED: test").ok());
  EXPECT_EQ((*store->GetPendingBatch())->batch_id(), "b3");
  EXPECT_TRUE(store->GetQueuedBatches()->empty());
  EXPECT_EQ(store->ListRejected()->size(), 2u);
  ASSERT_TRUE(store->AckPendingBatch().ok());
  EXPECT_FALSE(store->GetPendingBatch()->has_value());
  EXPECT_EQ(*store->OutboxSize(), 0u);
}

TEST(DeviceStoreTest, CursorBelongsToOneScope) {
  hamlet::testing::TempDir dir;
  auto store = OpenStore(dir.path());
  EXPECT_EQ(*store->GetCursor("07132"), "");
  auto record = NewCase(kCase, "07132", MakeStamp(1000, 0, "server"));
  ASSERT_TRUE(store->SavePulledPage({record}, "07132", "cursor-bytes", MakeStamp(1000, 0, "server")).ok());
  EXPECT_EQ(*store->GetCursor("07132"), "cursor-bytes");
  EXPECT_EQ(*store->GetCursor(""), "");
  EXPECT_TRUE(store->GetRecord(kCase)->has_value());
  ASSERT_TRUE(store->ResetCursor().ok());
  EXPECT_EQ(*store->GetCursor("07132"), "");
  EXPECT_EQ(store->ListRecords()->size(), 1u);
}

// Found by tests/fuzz/store_fuzzer (tests/fuzz/regressions/store): an outbox
// key of another length than 8 was read past its end as the edit's seq.
TEST(DeviceStoreTest, OutboxKeyOfAnotherLengthIsDataLoss) {
  hamlet::testing::TempDir dir;
  auto record = NewCase(kCase, "07132", MakeStamp(1000, 0, kDevice));
  ASSERT_TRUE(OpenStore(dir.path())->SaveLocalEdit(record, record, MakeStamp(1000, 0, kDevice)).ok());
  {
    const std::vector<std::string> names = {"default", "records", "outbox", "rejected", "sent"};
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const std::string& name : names) descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir.path(), descriptors, &handles, &db).ok());
    OutboxEntry entry;
    *entry.mutable_change() = record;
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), handles[2], "\x01", internal::EncodeValue(entry)).ok());
    for (rocksdb::ColumnFamilyHandle* handle : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(handle).ok());
    ASSERT_TRUE(db->Close().ok());
    delete db;
  }
  auto store = OpenStore(dir.path());
  EXPECT_THAT(store->ReadOutbox(10), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(store->ReadOutboxThrough(10), StatusIs(absl::StatusCode::kDataLoss));
}

// Acknowledged calls are kept with the acknowledgement, in order, and dropped when older than the
// retention window, or oldest first while they weigh more than the byte bound.
TEST(DeviceStoreTest, KeptCallsArePrunedByAgeThenBySize) {
  hamlet::testing::TempDir dir;
  auto store = OpenStore(dir.path());
  auto record = NewCase(kCase, "07132", MakeStamp(1000, 0, kDevice));
  ASSERT_TRUE(store->SaveLocalEdit(record, record, MakeStamp(1000, 0, kDevice)).ok());
  PendingBatch pending;
  pending.set_batch_id("batch-0");
  pending.set_last_outbox_seq(1);
  ASSERT_TRUE(store->SetPendingBatch(pending).ok());
  SentCall acked;
  acked.mutable_push()->set_batch_id("batch-0");
  *acked.mutable_push()->add_changes() = record;
  acked.set_epoch(1);
  acked.set_server_seq(290);
  acked.set_acked_ms(1000);
  ASSERT_TRUE(store->AckPendingBatch({}, &acked).ok());
  for (int i = 1; i <= 3; ++i) {
    SentCall later = acked;
    later.mutable_push()->set_batch_id(absl::StrCat("batch-", i));
    later.set_acked_ms(1000 + i * 1000);
    ASSERT_TRUE(store->RetainSent(later).ok());
  }
  auto kept = store->ListSent();
  ASSERT_TRUE(kept.ok());
  ASSERT_EQ(kept->size(), 4u);
  EXPECT_EQ((*kept)[0].second.push().batch_id(), "batch-0") << "kept in the write that settled the batch";
  EXPECT_EQ(*store->OutboxSize(), 0u);

  ASSERT_TRUE(store->PruneSent(/*older_than_ms=*/2000, /*max_bytes=*/1 << 20).ok());
  kept = store->ListSent();
  ASSERT_EQ(kept->size(), 3u);
  EXPECT_EQ((*kept)[0].second.push().batch_id(), "batch-1");
  ASSERT_TRUE(store->PruneSent(0, (*kept)[0].second.ByteSizeLong() + 1).ok());
  kept = store->ListSent();
  ASSERT_EQ(kept->size(), 1u);
  EXPECT_EQ((*kept)[0].second.push().batch_id(), "batch-3");

  SentCall offered = (*kept)[0].second;
  offered.set_epoch(2);
  ASSERT_TRUE(store->UpdateSent((*kept)[0].first, offered).ok());
  EXPECT_EQ((*store->ListSent())[0].second.epoch(), 2u);
}

}  // namespace
}  // namespace hamlet::storage
