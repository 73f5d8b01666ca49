#include "storage/sealing.h"

#include <gtest/gtest.h>

#include <fstream>

#include "storage/town_store.h"
#include "tests/support/records.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace hamlet::storage {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::StatusIs;

const std::string kKeyA(32, 'a');
const std::string kKeyB(32, 'b');

TEST(SealerTest, OpensWhatItSealed) {
  auto sealer = Sealer::Create(kKeyA);
  ASSERT_TRUE(sealer.ok());
  auto sealed = (*sealer)->Seal("Nguyễn Văn Tố Giác", "record-1");
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(sealed->find("Nguyễn"), std::string::npos);
  auto opened = (*sealer)->Open(*sealed, "record-1");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(*opened, "Nguyễn Văn Tố Giác");
  // Two seals of the same text differ (fresh nonce).
  EXPECT_NE(*sealed, *(*sealer)->Seal("Nguyễn Văn Tố Giác", "record-1"));
}

TEST(SealerTest, AlteredOrMovedValuesAreDataLossNeverGarbage) {
  auto sealer = *Sealer::Create(kKeyA);
  const std::string sealed = *sealer->Seal("bí mật", "record-1");
  for (size_t i = 8; i < sealed.size(); ++i) {
    std::string altered = sealed;
    altered[i] ^= 0x01;
    EXPECT_THAT(sealer->Open(altered, "record-1"), StatusIs(absl::StatusCode::kDataLoss)) << "byte " << i;
  }
  EXPECT_THAT(sealer->Open(sealed, "record-2"), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(sealer->Open(sealed.substr(0, 20), "record-1"), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(SealerTest, KeysRotate) {
  auto old_sealer = *Sealer::Create(kKeyA);
  const std::string sealed = *old_sealer->Seal("bí mật", "r");
  auto without_old = *Sealer::Create(kKeyB);
  EXPECT_THAT(without_old->Open(sealed, "r"), StatusIs(absl::StatusCode::kFailedPrecondition));
  auto rotated = *Sealer::Create(kKeyB, {kKeyA});
  EXPECT_EQ(*rotated->Open(sealed, "r"), "bí mật");
  EXPECT_FALSE(rotated->IsCurrent(sealed));
  EXPECT_TRUE(rotated->IsCurrent(*rotated->Seal("x", "r")));
  EXPECT_THAT(Sealer::Create("short"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SealerTest, ReadsRawAndHexKeyFiles) {
  hamlet::testing::TempDir dir;
  std::ofstream(dir.Sub("raw"), std::ios::binary) << kKeyA;
  std::ofstream(dir.Sub("hex")) << std::string(64, 'f') << "\n";
  std::ofstream(dir.Sub("bad")) << "not a key";
  EXPECT_EQ(*Sealer::ReadKeyFile(dir.Sub("raw")), kKeyA);
  EXPECT_EQ(*Sealer::ReadKeyFile(dir.Sub("hex")), std::string(32, '\xff'));
  EXPECT_THAT(Sealer::ReadKeyFile(dir.Sub("bad")), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Sealer::ReadKeyFile(dir.Sub("missing")), StatusIs(absl::StatusCode::kFailedPrecondition));
}

hamlet::v1::Record Informant(const std::string& id) {
  hamlet::v1::Record r;
  r.set_id(id);
  r.set_unit_code("07132");
  r.set_author("p");
  r.mutable_create_time()->set_seconds(1);
  r.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
  r.mutable_informant_identity()->set_name("CANARY Đặng Thị Kín");
  sync::SetFieldStamp(&r, 1, MakeStamp(1000, 0, "d"));
  return r;
}

absl::StatusOr<uint64_t> CommitOne(TownStore& store, const hamlet::v1::Record& r) {
  PushCommit commit;
  commit.device_id = "d";
  commit.batch_id = r.id();
  commit.records.push_back({r, "07132", 0, hamlet::v1::Record()});
  return store.CommitPush(std::move(commit), [](uint64_t) { return BatchReceipt(); });
}

TEST(TownStoreSealingTest, SealedRecordsNeedAKeyAndReadBackWhole) {
  hamlet::testing::TempDir dir;
  {
    auto store = *TownStore::Open(dir.path(), TownStoreOptions());
    EXPECT_THAT(CommitOne(*store, Informant("00000000-0000-4000-8000-000000000001")),
                StatusIs(absl::StatusCode::kFailedPrecondition));
    EXPECT_EQ(store->last_seq(), 0u) << "a refused commit writes nothing";
  }
  TownStoreOptions sealed;
  sealed.sealer = *Sealer::Create(kKeyA);
  {
    auto store = *TownStore::Open(dir.path(), sealed);
    ASSERT_TRUE(CommitOne(*store, Informant("00000000-0000-4000-8000-000000000001")).ok());
    auto read = store->GetRecord("00000000-0000-4000-8000-000000000001");
    ASSERT_TRUE(read.ok() && read->has_value());
    EXPECT_EQ((*read)->informant_identity().name(), "CANARY Đặng Thị Kín");
  }
  // The data dir now holds sealed records: no key, no start.
  EXPECT_THAT(TownStore::Open(dir.path(), TownStoreOptions()), StatusIs(absl::StatusCode::kFailedPrecondition));
  // Rotation: a new key that keeps the old one opens and reseals.
  TownStoreOptions rotated;
  rotated.sealer = *Sealer::Create(kKeyB, {kKeyA});
  {
    auto store = *TownStore::Open(dir.path(), rotated);
    EXPECT_EQ(*store->Reseal(), 1u);
    EXPECT_EQ(*store->Reseal(), 0u);
  }
  TownStoreOptions only_new;
  only_new.sealer = *Sealer::Create(kKeyB);
  auto store = *TownStore::Open(dir.path(), only_new);
  auto read = store->GetRecord("00000000-0000-4000-8000-000000000001");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ((*read)->informant_identity().name(), "CANARY Đặng Thị Kín");
}

TEST(SealerTest, BundleSecretsAreSealedAtRestAndResealedWithTheRecords) {
  hamlet::testing::TempDir dir;
  const std::string secret(32, 'S');
  Enrolment enrolment;
  enrolment.mutable_device()->set_device_id("00000000-0000-4000-8000-0000000000e1");
  enrolment.set_bundle_secret(secret);
  // Enrolled while the server had no key: kept in the clear, then sealed by
  // the first reseal under a key.
  {
    auto store = *TownStore::Open(dir.path(), TownStoreOptions());
    ASSERT_TRUE(store->PutEnrolment(enrolment, hamlet::v1::AuditEntry()).ok());
  }
  TownStoreOptions sealed;
  sealed.sealer = *Sealer::Create(kKeyA);
  {
    auto store = *TownStore::Open(dir.path(), sealed);
    EXPECT_EQ(*store->Reseal(), 1u);
    EXPECT_EQ(*store->Reseal(), 0u);
  }
  // Rotated to key B, keeping A: resealed; then B alone opens it.
  TownStoreOptions rotated;
  rotated.sealer = *Sealer::Create(kKeyB, {kKeyA});
  {
    auto store = *TownStore::Open(dir.path(), rotated);
    EXPECT_EQ(*store->Reseal(), 1u);
  }
  TownStoreOptions only_new;
  only_new.sealer = *Sealer::Create(kKeyB);
  auto store = *TownStore::Open(dir.path(), only_new);
  auto listed = store->ListEnrolments();
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].bundle_secret(), secret);
}

}  // namespace
}  // namespace hamlet::storage
