// Sync with no link at all: bundles carried by hand between a phone and the
// real hamletd, both ways, with the refusals a lost or doctored stick meets.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "client/device.h"
#include "hamlet/v1/admin.grpc.pb.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "sync/clock.h"
#include "tests/support/admin.h"
#include "tests/support/records.h"
#include "tests/support/server_process.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::AdminClient;
using hamlet::testing::ServerProcess;
using hamlet::testing::StatusIs;
using hamlet::v1::Record;

constexpr char kCommune[] = "07132";
constexpr char kVillage[] = "07132-K05";

// A phone of the commune, enrolled as a member.
std::unique_ptr<field::FieldDevice> EnrolledPhone(const std::string& dir, AdminClient& admin, const std::string& person,
                                                  const sync::PhysicalClock* clock = sync::SystemClock::Get()) {
  auto phone = field::FieldDevice::Open(dir, clock);
  EXPECT_TRUE(phone.ok()) << phone.status();
  if (!phone.ok()) return nullptr;
  const std::string token = admin.Enroll((*phone)->device_id(), hamlet::v1::ROLE_MEMBER, kCommune, person);
  EXPECT_TRUE((*phone)->store().SetEnrolment(token, hamlet::v1::ROLE_MEMBER).ok());
  return std::move(*phone);
}

Record NewCase(field::FieldDevice& phone, const std::string& person, const std::string& summary) {
  Record draft;
  draft.set_unit_code(kVillage);
  draft.set_author(person);
  draft.mutable_mediation_case()->set_summary(summary);
  absl::StatusOr<Record> created = phone.Create(draft);
  EXPECT_TRUE(created.ok()) << created.status();
  return created.value_or(Record());
}

struct Imported {
  grpc::Status status;
  std::vector<hamlet::v1::ImportBundleResponse> progress;
};

Imported Import(AdminClient& admin, const std::string& path) {
  hamlet::v1::ImportBundleRequest request;
  request.set_path(path);
  auto context = admin.Context();
  auto reader = admin.stub().ImportBundle(context.get(), request);
  Imported out;
  hamlet::v1::ImportBundleResponse message;
  while (reader->Read(&message)) out.progress.push_back(message);
  out.status = reader->Finish();
  return out;
}

grpc::Status Export(AdminClient& admin, const std::string& device_id, const std::string& path,
                    hamlet::v1::ExportBundleResponse* last = nullptr) {
  hamlet::v1::ExportBundleRequest request;
  request.set_device_id(device_id);
  request.set_path(path);
  auto context = admin.Context();
  auto reader = admin.stub().ExportBundle(context.get(), request);
  hamlet::v1::ExportBundleResponse message;
  while (reader->Read(&message)) {
    if (last != nullptr) *last = message;
  }
  return reader->Finish();
}

uint64_t LastSeq(AdminClient& admin) {
  hamlet::v1::GetServerStatsResponse stats;
  const grpc::Status status =
      admin.stub().GetServerStats(admin.Context().get(), hamlet::v1::GetServerStatsRequest(), &stats);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return stats.last_seq();
}

std::unique_ptr<hamlet::v1::SyncService::Stub> SyncStub(const ServerProcess& server) {
  return hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
}

class BundleE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = ServerProcess::Start(dir_.Sub("data"));
    ASSERT_NE(server_, nullptr) << hamlet::testing::ReadFile(dir_.Sub("data.log"));
    admin_ = std::make_unique<AdminClient>(*server_);
  }

  hamlet::testing::TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<AdminClient> admin_;
};

TEST_F(BundleE2eTest, WorkCarriedToTheTownAndBackArrivesOnceAndSyncResumesAfterIt) {
  // A volunteer with no signal records two cases and edits one, then
  // exports the outbox to a stick.
  auto phone = EnrolledPhone(dir_.Sub("phone"), *admin_, "tv-01");
  ASSERT_NE(phone, nullptr);
  const Record first = NewCase(*phone, "tv-01", "tranh chấp ranh giới đất");
  const Record second = NewCase(*phone, "tv-01", "mâu thuẫn gia đình");
  hamlet::v1::MediationCase forwarded;
  forwarded.set_summary("tranh chấp ranh giới đất, hai hộ");
  ASSERT_TRUE(phone->Edit(first.id(), forwarded, {5}).ok());  // summary
  field::FieldDevice::SyncOptions options;
  options.batch_records = 2;  // Two batches, to carry more than one.
  absl::StatusOr<field::FieldDevice::BundleReport> exported = phone->ExportBundle(dir_.Sub("to-town.hlb"), options);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->batches, 2u);
  EXPECT_EQ(exported->changes, 3u);
  EXPECT_EQ(*phone->store().OutboxSize(), 3u) << "the outbox keeps what it exported until the server has it";

  // The town applies it, one progress message per batch.
  const uint64_t before = LastSeq(*admin_);
  Imported imported = Import(*admin_, dir_.Sub("to-town.hlb"));
  ASSERT_TRUE(imported.status.ok()) << imported.status.error_message();
  ASSERT_EQ(imported.progress.size(), 2u);
  EXPECT_EQ(imported.progress.back().device_id(), phone->device_id());
  EXPECT_TRUE(imported.progress.back().done());
  EXPECT_EQ(imported.progress.back().batches_refused(), 0u);
  EXPECT_EQ(imported.progress.back().records_applied(), 3u);
  const uint64_t after = LastSeq(*admin_);
  EXPECT_EQ(after, before + 3);  // One seq a record written.

  // Importing it again changes nothing.
  Imported again = Import(*admin_, dir_.Sub("to-town.hlb"));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  ASSERT_EQ(again.progress.size(), 2u);
  for (const auto& batch : again.progress) EXPECT_TRUE(batch.already_held()) << batch.batch_id();
  EXPECT_EQ(again.progress.back().records_applied(), 0u);
  EXPECT_EQ(LastSeq(*admin_), after);

  // Another phone of the commune, online, sees both cases.
  auto neighbour = EnrolledPhone(dir_.Sub("neighbour"), *admin_, "tv-02");
  ASSERT_NE(neighbour, nullptr);
  auto stub = SyncStub(*server_);
  ASSERT_TRUE(neighbour->Sync(*stub, {}).ok());
  absl::StatusOr<std::optional<Record>> seen = neighbour->store().GetRecord(first.id());
  ASSERT_TRUE(seen.ok() && seen->has_value());
  EXPECT_EQ((*seen)->mediation_case().summary(), "tranh chấp ranh giới đất, hai hộ");
  EXPECT_TRUE(neighbour->store().GetRecord(second.id())->has_value());

  // When the volunteer's phone finds signal, its batches are answered from
  // the receipts the import left: the outbox empties, nothing is written twice.
  absl::StatusOr<field::FieldDevice::SyncReport> synced = phone->Sync(*stub, {});
  ASSERT_TRUE(synced.ok()) << synced.status();
  EXPECT_EQ(synced->batches_pushed, 2u);
  EXPECT_EQ(synced->batches_rejected, 0u);
  EXPECT_EQ(*phone->store().OutboxSize(), 0u);
  EXPECT_EQ(LastSeq(*admin_), after);

  // The way back: a phone that has never pulled gets a bundle of all it may
  // see, and its next online sync has nothing left to pull.
  auto newcomer = EnrolledPhone(dir_.Sub("newcomer"), *admin_, "tv-03");
  ASSERT_NE(newcomer, nullptr);
  hamlet::v1::ExportBundleResponse summary;
  const grpc::Status written = Export(*admin_, newcomer->device_id(), dir_.Sub("to-newcomer.hlb"), &summary);
  ASSERT_TRUE(written.ok()) << written.error_message();
  EXPECT_TRUE(summary.done());
  EXPECT_TRUE(summary.from_beginning());
  EXPECT_EQ(summary.records(), 2 + hamlet::testing::kUnitsOfOneCommune);  // The two cases, and the commune's units.
  // Writing a bundle is not a pull: written again (the first was lost, say),
  // it starts from the same place.
  ASSERT_TRUE(Export(*admin_, newcomer->device_id(), dir_.Sub("to-newcomer.hlb"), &summary).ok());
  EXPECT_TRUE(summary.from_beginning());
  absl::StatusOr<field::FieldDevice::BundleReport> applied = newcomer->ImportBundle(dir_.Sub("to-newcomer.hlb"));
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(applied->records, summary.records());
  EXPECT_TRUE(applied->cursor_moved);
  absl::StatusOr<std::optional<Record>> carried = newcomer->store().GetRecord(first.id());
  ASSERT_TRUE(carried.ok() && carried->has_value());
  EXPECT_EQ((*carried)->mediation_case().summary(), "tranh chấp ranh giới đất, hai hộ");
  // Imported twice: the same records, the same cursor.
  const std::string cursor = *newcomer->store().GetCursor("");
  ASSERT_TRUE(newcomer->ImportBundle(dir_.Sub("to-newcomer.hlb")).ok());
  EXPECT_EQ(*newcomer->store().GetCursor(""), cursor);
  EXPECT_FALSE(cursor.empty());
  absl::StatusOr<field::FieldDevice::SyncReport> resumed = newcomer->Sync(*stub, {});
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->records_pulled, 0u);

  // A phone that pulled online gets only what changed after its last pull.
  const Record third = NewCase(*phone, "tv-01", "tranh chấp lối đi chung");
  ASSERT_TRUE(phone->Sync(*stub, {}).ok());
  ASSERT_TRUE(Export(*admin_, neighbour->device_id(), dir_.Sub("to-neighbour.hlb"), &summary).ok());
  EXPECT_FALSE(summary.from_beginning());
  EXPECT_EQ(summary.records(), 1u);
  ASSERT_TRUE(neighbour->ImportBundle(dir_.Sub("to-neighbour.hlb")).ok());
  EXPECT_TRUE(neighbour->store().GetRecord(third.id())->has_value());
  absl::StatusOr<field::FieldDevice::SyncReport> caught_up = neighbour->Sync(*stub, {});
  ASSERT_TRUE(caught_up.ok()) << caught_up.status();
  EXPECT_EQ(caught_up->records_pulled, 0u);
}

TEST_F(BundleE2eTest, WithNoLinkAtAllEachBundleStartsWhereThePhoneStands) {
  // A phone that has never had a link: everything it may see comes on a
  // stick, and its own bundles tell the town where its pulls stand.
  auto phone = EnrolledPhone(dir_.Sub("phone"), *admin_, "tv-01");
  auto other = EnrolledPhone(dir_.Sub("other"), *admin_, "tv-02");
  ASSERT_NE(phone, nullptr);
  ASSERT_NE(other, nullptr);
  auto stub = SyncStub(*server_);
  NewCase(*other, "tv-02", "trước chuyến đi thứ nhất");
  ASSERT_TRUE(other->Sync(*stub, {}).ok());
  hamlet::v1::ExportBundleResponse first;
  ASSERT_TRUE(Export(*admin_, phone->device_id(), dir_.Sub("trip-1.hlb"), &first).ok());
  EXPECT_TRUE(first.from_beginning());
  ASSERT_TRUE(phone->ImportBundle(dir_.Sub("trip-1.hlb")).ok());

  // The phone's work goes to town, saying where its pulls now stand.
  NewCase(*phone, "tv-01", "ghi khi không có sóng");
  ASSERT_TRUE(phone->ExportBundle(dir_.Sub("to-town.hlb"), {}).ok());
  ASSERT_TRUE(Import(*admin_, dir_.Sub("to-town.hlb")).status.ok());
  const Record later = NewCase(*other, "tv-02", "sau chuyến đi thứ nhất");
  ASSERT_TRUE(other->Sync(*stub, {}).ok());

  // The second trip carries only what changed since the first.
  hamlet::v1::ExportBundleResponse second;
  ASSERT_TRUE(Export(*admin_, phone->device_id(), dir_.Sub("trip-2.hlb"), &second).ok());
  EXPECT_FALSE(second.from_beginning());
  EXPECT_EQ(second.records(), 1u);  // The other phone's new case; its own it holds.
  absl::StatusOr<field::FieldDevice::BundleReport> applied = phone->ImportBundle(dir_.Sub("trip-2.hlb"));
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_TRUE(applied->cursor_moved);
  EXPECT_TRUE(phone->store().GetRecord(later.id())->has_value());
}

TEST_F(BundleE2eTest, APhoneLearnsOfARestoreFromABundleAndGivesBackWhatTheBackupLacks) {
  auto phone = EnrolledPhone(dir_.Sub("phone"), *admin_, "tv-01");
  ASSERT_NE(phone, nullptr);
  auto stub = SyncStub(*server_);
  NewCase(*phone, "tv-01", "trước bản sao lưu");
  ASSERT_TRUE(phone->Sync(*stub, {}).ok());
  {
    hamlet::v1::CreateBackupRequest request;
    request.set_directory(dir_.Sub("backup"));
    auto context = admin_->Context();
    auto reader = admin_->stub().CreateBackup(context.get(), request);
    hamlet::v1::CreateBackupResponse message;
    while (reader->Read(&message)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  const Record after_backup = NewCase(*phone, "tv-01", "sau bản sao lưu");
  ASSERT_TRUE(phone->Sync(*stub, {}).ok());

  // The disk dies and the server is restored; the phone has no link, so it
  // hears of it from a bundle.
  server_->Kill();
  {
    const std::string log = dir_.Sub("restore.log");
    const pid_t pid =
        hamlet::testing::Spawn({HAMLETD_PATH_FOR_TESTS, "--restore_from=" + dir_.Sub("backup"),
                                "--data_dir=" + dir_.Sub("restored"), "--sealed_key_file=" + dir_.Sub("data.key")},
                               log);
    ASSERT_EQ(hamlet::testing::WaitExit(pid), 0) << hamlet::testing::ReadFile(log);
  }
  std::filesystem::copy_file(dir_.Sub("data.key"), dir_.Sub("restored.key"));
  server_ = ServerProcess::Start(dir_.Sub("restored"));
  ASSERT_NE(server_, nullptr);
  admin_ = std::make_unique<AdminClient>(*server_);
  ASSERT_TRUE(Export(*admin_, phone->device_id(), dir_.Sub("after-restore.hlb")).ok());
  ASSERT_TRUE(phone->ImportBundle(dir_.Sub("after-restore.hlb")).ok());
  EXPECT_TRUE(phone->store().GetReofferDue()->has_value());

  // Its next sync gives the case back.
  stub = SyncStub(*server_);
  absl::StatusOr<field::FieldDevice::SyncReport> synced = phone->Sync(*stub, {});
  ASSERT_TRUE(synced.ok()) << synced.status();
  EXPECT_EQ(synced->calls_reoffered, 1u);
  auto neighbour = EnrolledPhone(dir_.Sub("neighbour"), *admin_, "tv-02");
  ASSERT_NE(neighbour, nullptr);
  ASSERT_TRUE(neighbour->Sync(*stub, {}).ok());
  EXPECT_TRUE(neighbour->store().GetRecord(after_backup.id())->has_value());
}

TEST_F(BundleE2eTest, AnInformantCarriedOnAStickIsNeverInTheClearAndLeavesThePhoneOnceTheTownHasIt) {
  constexpr char kCanary[] = "CANARY-Trần-Thị-Báo-Tin-91c2";
  auto phone = EnrolledPhone(dir_.Sub("phone"), *admin_, "tv-01");
  ASSERT_NE(phone, nullptr);
  Record identity;
  identity.set_unit_code(kVillage);
  identity.set_author("tv-01");
  identity.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
  identity.mutable_informant_identity()->set_name(kCanary);
  absl::StatusOr<Record> created = phone->Create(identity);
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_TRUE(phone->ExportBundle(dir_.Sub("stick.hlb"), {}).ok());
  EXPECT_EQ(hamlet::testing::ReadFile(dir_.Sub("stick.hlb")).find(kCanary), std::string::npos);
  ASSERT_TRUE(Import(*admin_, dir_.Sub("stick.hlb")).status.ok());

  // Still on the phone until the phone learns the town has it: its next
  // sync is answered from the import's receipt, and then it forgets it.
  EXPECT_TRUE(phone->store().GetRecord(created->id())->has_value());
  auto stub = SyncStub(*server_);
  ASSERT_TRUE(phone->Sync(*stub, {}).ok());
  EXPECT_FALSE(phone->store().GetRecord(created->id())->has_value());

  // The commune police read it at the town.
  field::FieldDevice::SyncOptions options;
  auto police = field::FieldDevice::Open(dir_.Sub("police"), sync::SystemClock::Get());
  ASSERT_TRUE(police.ok());
  ASSERT_TRUE(
      (*police)
          ->store()
          .SetEnrolment(admin_->Enroll((*police)->device_id(), hamlet::v1::ROLE_COMMUNE_POLICE, kCommune, "ca-01"),
                        hamlet::v1::ROLE_COMMUNE_POLICE)
          .ok());
  ASSERT_TRUE((*police)->Sync(*stub, options).ok());
  absl::StatusOr<std::optional<Record>> read = (*police)->store().GetRecord(created->id());
  ASSERT_TRUE(read.ok() && read->has_value());
  EXPECT_EQ((*read)->informant_identity().name(), kCanary);
}

TEST_F(BundleE2eTest, ChangedForeignRevokedAndMisdirectedBundlesAreRefusedWithNothingApplied) {
  auto phone = EnrolledPhone(dir_.Sub("phone"), *admin_, "tv-01");
  ASSERT_NE(phone, nullptr);
  NewCase(*phone, "tv-01", "mất trộm xe máy");
  ASSERT_TRUE(phone->ExportBundle(dir_.Sub("before-revoke.hlb"), {}).ok());
  const uint64_t start = LastSeq(*admin_);

  // One byte changed on the stick.
  std::string bytes = hamlet::testing::ReadFile(dir_.Sub("before-revoke.hlb"));
  bytes[bytes.size() - 20] ^= 0x04;
  std::ofstream(dir_.Sub("changed.hlb"), std::ios::binary) << bytes;
  EXPECT_THAT(Import(*admin_, dir_.Sub("changed.hlb")).status, StatusIs(absl::StatusCode::kDataLoss));

  // A bundle from a phone this server never enrolled (its token made up).
  auto stranger = field::FieldDevice::Open(dir_.Sub("stranger"), sync::SystemClock::Get());
  ASSERT_TRUE(stranger.ok());
  ASSERT_TRUE((*stranger)->store().SetEnrolment("hmt_not-a-token-this-server-issued", hamlet::v1::ROLE_MEMBER).ok());
  NewCase(**stranger, "x", "giả mạo");
  ASSERT_TRUE((*stranger)->ExportBundle(dir_.Sub("stranger.hlb"), {}).ok());
  EXPECT_THAT(Import(*admin_, dir_.Sub("stranger.hlb")).status, StatusIs(absl::StatusCode::kFailedPrecondition));

  // A bundle the server wrote for a phone is not one for the server, and
  // another phone cannot open it.
  auto other = EnrolledPhone(dir_.Sub("other"), *admin_, "tv-02");
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(Export(*admin_, other->device_id(), dir_.Sub("for-other.hlb")).ok());
  EXPECT_THAT(Import(*admin_, dir_.Sub("for-other.hlb")).status, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(phone->ImportBundle(dir_.Sub("for-other.hlb")), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(phone->ImportBundle(dir_.Sub("before-revoke.hlb")), StatusIs(absl::StatusCode::kInvalidArgument));

  // The phone is lost and revoked. What it wrote after that is refused;
  // nothing is exported for it any more.
  ASSERT_TRUE(admin_->Revoke(phone->device_id(), "lost").ok());
  NewCase(*phone, "tv-01", "ghi sau khi bị thu hồi");
  ASSERT_TRUE(phone->ExportBundle(dir_.Sub("after-revoke.hlb"), {}).ok());
  Imported refused = Import(*admin_, dir_.Sub("after-revoke.hlb"));
  EXPECT_THAT(refused.status, StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_TRUE(refused.progress.empty());
  EXPECT_THAT(Export(*admin_, phone->device_id(), dir_.Sub("for-revoked.hlb")),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(LastSeq(*admin_), start) << "a refused bundle wrote something";

  // What it wrote while it was still enrolled, carried in before, still counts.
  Imported accepted = Import(*admin_, dir_.Sub("before-revoke.hlb"));
  ASSERT_TRUE(accepted.status.ok()) << accepted.status.error_message();
  EXPECT_EQ(accepted.progress.back().records_applied(), 1u);
}

TEST_F(BundleE2eTest, ClockSkewIsJudgedAtTheTimeTheBundleWasWritten) {
  // The phone's clock runs an hour behind when it exports, after edits
  // stamped at the right time: online they would pass, but they are an hour
  // ahead of the time the bundle claims.
  sync::FakeClock clock(sync::SystemClock::Get()->NowMs());
  auto phone = EnrolledPhone(dir_.Sub("phone"), *admin_, "tv-01", &clock);
  ASSERT_NE(phone, nullptr);
  NewCase(*phone, "tv-01", "tranh chấp nước tưới");
  clock.Advance(-3600 * 1000);
  ASSERT_TRUE(phone->ExportBundle(dir_.Sub("behind.hlb"), {}).ok());
  const uint64_t start = LastSeq(*admin_);
  Imported imported = Import(*admin_, dir_.Sub("behind.hlb"));
  ASSERT_TRUE(imported.status.ok()) << imported.status.error_message();
  ASSERT_EQ(imported.progress.size(), 1u);
  EXPECT_EQ(imported.progress[0].code(), static_cast<int32_t>(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_NE(imported.progress[0].message().find("the time its bundle was written"), std::string::npos)
      << imported.progress[0].message();
  EXPECT_EQ(imported.progress[0].batches_refused(), 1u);
  EXPECT_EQ(LastSeq(*admin_), start);

  // A bundle claiming to be written an hour from now is refused whole.
  clock.Advance(2 * 3600 * 1000);
  ASSERT_TRUE(phone->ExportBundle(dir_.Sub("ahead.hlb"), {}).ok());
  EXPECT_THAT(Import(*admin_, dir_.Sub("ahead.hlb")).status, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(LastSeq(*admin_), start);
}

}  // namespace
}  // namespace hamlet
