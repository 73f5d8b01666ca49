// A town server that loses its disk loses nothing a phone still holds: phones keep what they
// pushed for a while after it was acknowledged, and offer it again to a server restored from a
// backup that did not hold it (docs/PROTOCOL.md, "After a restore"; docs/RELIABILITY.md).

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/device.h"
#include "google/protobuf/util/message_differencer.h"
#include "hamlet/v1/admin.grpc.pb.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "storage/device_store.h"
#include "sync/clock.h"
#include "sync/merge.h"
#include "tests/support/admin.h"
#include "tests/support/server_process.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::AdminClient;
using hamlet::testing::ServerProcess;
using hamlet::v1::Record;

struct Phone {
  std::string name;
  std::string id;
  hamlet::v1::Role role;
  std::string unit;
  std::unique_ptr<field::FieldDevice> device;
};

class RestoreE2eTest : public ::testing::Test {
 protected:
  void Enrol(Phone* phone) {
    const std::string store = dir_.Sub(phone->name);
    ASSERT_TRUE(storage::DeviceStore::Open(store, phone->id).ok());
    auto device = field::FieldDevice::Open(store, sync::SystemClock::Get());
    ASSERT_TRUE(device.ok()) << device.status();
    phone->device = *std::move(device);
    const std::string token = AdminClient(*server_).Enroll(phone->id, phone->role, phone->unit, phone->name);
    ASSERT_TRUE(phone->device->store().SetEnrolment(token, phone->role).ok());
    phone->device->set_role(phone->role);
  }
  field::FieldDevice::SyncReport Sync(Phone& phone) {
    auto stub =
        hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
    auto report = phone.device->Sync(*stub, field::FieldDevice::SyncOptions());
    EXPECT_TRUE(report.ok()) << phone.name << ": " << report.status();
    return report.ok() ? *report : field::FieldDevice::SyncReport();
  }
  std::string CreateCase(Phone& phone, const std::string& summary) {
    Record draft;
    draft.set_unit_code(phone.unit);
    draft.set_author(phone.name);
    auto* c = draft.mutable_mediation_case();
    c->set_summary(summary);
    c->set_status(hamlet::v1::MEDIATION_STATUS_RECEIVED);
    c->set_round(1);
    auto created = phone.device->Create(draft);
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? created->id() : "";
  }
  void Edit(Phone& phone, const std::string& id, const hamlet::v1::MediationCase& body,
            const sync::FieldNumbers& fields) {
    auto edited = phone.device->Edit(id, body, fields);
    ASSERT_TRUE(edited.ok()) << phone.name << ": " << edited.status();
  }
  // Every record a town officer reads, by id, without server_seq.
  std::map<std::string, Record> ServerRecords() {
    const std::string officer = "0ff1ce00-0000-4000-8000-000000000206";
    const std::string token = AdminClient(*server_).Enroll(officer, hamlet::v1::ROLE_TOWN_OFFICER, "206", "officer");
    auto stub =
        hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
    std::map<std::string, Record> records;
    std::string cursor;
    while (true) {
      grpc::ClientContext context;
      context.AddMetadata("authorization", "Bearer " + token);
      hamlet::v1::PullRequest request;
      request.set_device_id(officer);
      request.set_cursor(cursor);
      hamlet::v1::PullResponse response;
      const grpc::Status status = stub->Pull(&context, request, &response);
      EXPECT_TRUE(status.ok()) << status.error_message();
      if (!status.ok()) return records;
      for (Record r : response.records()) {
        if (r.has_admin_unit()) continue;
        r.clear_server_seq();
        EXPECT_TRUE(records.emplace(r.id(), r).second) << "pulled twice: " << r.id();
      }
      cursor = response.next_cursor();
      if (response.remaining() == 0) return records;
    }
  }
  hamlet::v1::GetServerStatsResponse Stats() {
    AdminClient admin(*server_);
    hamlet::v1::GetServerStatsResponse stats;
    auto context = admin.Context();
    EXPECT_TRUE(admin.stub().GetServerStats(context.get(), {}, &stats).ok());
    return stats;
  }

  hamlet::testing::TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
};

// Phones push for a while; a backup is taken; they push more (new cases, edits, a conflict that
// a team leader resolves); the disk dies. Restored from the backup, the server gets every
// acknowledged record and edit back from the phones, once, with the conflict settled as it was,
// and names the device it has not heard from since.
TEST_F(RestoreE2eTest, PhonesGiveBackWhatTheServerAcknowledgedAfterTheBackup) {
  server_ = ServerProcess::Start(dir_.Sub("data"));
  ASSERT_NE(server_, nullptr);
  Phone a{"hgv-a", "0a000000-0000-4000-8000-0000000000aa", hamlet::v1::ROLE_MEMBER, "07132-K01", nullptr};
  Phone b{"hgv-b", "0b000000-0000-4000-8000-0000000000bb", hamlet::v1::ROLE_MEMBER, "07132-K01", nullptr};
  Phone leader{"tt-1", "0c000000-0000-4000-8000-0000000000cc", hamlet::v1::ROLE_TEAM_LEADER, "07132", nullptr};
  Phone quiet{"hgv-d", "0d000000-0000-4000-8000-0000000000dd", hamlet::v1::ROLE_MEMBER, "07132-K02", nullptr};
  for (Phone* p : {&a, &b, &leader, &quiet}) ASSERT_NO_FATAL_FAILURE(Enrol(p));

  // Before the backup.
  std::vector<std::string> a_cases, b_cases;
  for (int i = 0; i < 10; ++i) a_cases.push_back(CreateCase(a, absl::StrCat("Vụ việc A-", i)));
  for (int i = 0; i < 10; ++i) b_cases.push_back(CreateCase(b, absl::StrCat("Vụ việc B-", i)));
  CreateCase(quiet, "Vụ việc D-0");
  for (Phone* p : {&a, &b, &quiet, &leader}) Sync(*p);
  const size_t at_backup = ServerRecords().size();

  const std::string backup = dir_.Sub("backup");
  {
    AdminClient admin(*server_);
    hamlet::v1::CreateBackupRequest request;
    request.set_directory(backup);
    auto context = admin.Context();
    auto reader = admin.stub().CreateBackup(context.get(), request);
    hamlet::v1::CreateBackupResponse message;
    while (reader->Read(&message)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }

  // After the backup: new cases, edits of older ones (A's and B's), and a case moved on by both
  // phones to different results, which the team leader settles.
  for (int i = 10; i < 25; ++i) a_cases.push_back(CreateCase(a, absl::StrCat("Vụ việc A-", i)));
  for (int i = 10; i < 15; ++i) b_cases.push_back(CreateCase(b, absl::StrCat("Vụ việc B-", i)));
  for (int i = 0; i < 5; ++i) {
    hamlet::v1::MediationCase body;
    body.set_summary(absl::StrCat("Đã hoà giải xong, lần ", i));
    ASSERT_NO_FATAL_FAILURE(Edit(a, a_cases[i], body, {hamlet::v1::MediationCase::kSummaryFieldNumber}));
    ASSERT_NO_FATAL_FAILURE(Edit(b, a_cases[i + 5], body, {hamlet::v1::MediationCase::kSummaryFieldNumber}));
  }
  const std::string disputed = b_cases[0];
  {
    hamlet::v1::MediationCase assigned;
    assigned.set_status(hamlet::v1::MEDIATION_STATUS_ASSIGNED);
    assigned.add_mediators("hgv-b");
    ASSERT_NO_FATAL_FAILURE(Edit(b, disputed, assigned, {9, 7}));
    hamlet::v1::MediationCase started;
    started.set_status(hamlet::v1::MEDIATION_STATUS_IN_MEDIATION);
    ASSERT_NO_FATAL_FAILURE(Edit(b, disputed, started, {9}));
  }
  for (Phone* p : {&a, &b}) Sync(*p);
  Sync(a);
  {
    hamlet::v1::MediationCase success;
    success.set_status(hamlet::v1::MEDIATION_STATUS_SUCCESSFUL);
    success.set_outcome(hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
    ASSERT_NO_FATAL_FAILURE(Edit(a, disputed, success, {9, 11}));
    hamlet::v1::MediationCase failure;
    failure.set_status(hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL);
    failure.set_outcome(hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
    ASSERT_NO_FATAL_FAILURE(Edit(b, disputed, failure, {9, 11}));
  }
  for (Phone* p : {&a, &b, &leader}) Sync(*p);
  {
    auto held = leader.device->store().GetRecord(disputed);
    ASSERT_TRUE(held.ok() && held->has_value());
    ASSERT_EQ((*held)->conflicts_size(), 1) << "the two results are a conflict";
    hamlet::v1::MediationCase settled;
    settled.set_status(hamlet::v1::MEDIATION_STATUS_SUCCESSFUL);
    settled.set_outcome(hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
    settled.set_round(1);
    auto stub =
        hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
    auto resolved =
        leader.device->ResolveConflict(*stub, disputed, 9, settled, "tt-1", field::FieldDevice::SyncOptions());
    ASSERT_TRUE(resolved.ok()) << resolved.status();
  }
  for (Phone* p : {&a, &b, &leader}) Sync(*p);
  const std::map<std::string, Record> before_loss = ServerRecords();
  ASSERT_EQ(before_loss.at(disputed).conflicts_size(), 0);
  ASSERT_EQ(before_loss.at(disputed).mediation_case().outcome(), hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);

  // The disk dies; the server is restored from the backup.
  server_->Kill();
  std::filesystem::remove_all(dir_.Sub("data"));
  {
    const std::string log = dir_.Sub("restore.log");
    const pid_t pid =
        hamlet::testing::Spawn({HAMLETD_PATH_FOR_TESTS, "--restore_from=" + backup,
                                "--data_dir=" + dir_.Sub("restored"), "--sealed_key_file=" + dir_.Sub("data.key")},
                               log);
    ASSERT_EQ(hamlet::testing::WaitExit(pid), 0) << hamlet::testing::ReadFile(log);
  }
  std::filesystem::copy_file(dir_.Sub("data.key"), dir_.Sub("restored.key"));
  server_ = ServerProcess::Start(dir_.Sub("restored"));
  ASSERT_NE(server_, nullptr);
  const std::map<std::string, Record> restored = ServerRecords();
  EXPECT_EQ(restored.size(), at_backup);
  const size_t lost = before_loss.size() - restored.size();

  // The admins see whom the server has not heard from since.
  hamlet::v1::GetServerStatsResponse stats = Stats();
  ASSERT_TRUE(stats.history().has_restore_time());
  ASSERT_EQ(stats.history().earlier_size(), 1);
  EXPECT_THAT(stats.devices_not_heard_since_restore(), ::testing::Contains(a.id));
  EXPECT_TRUE(stats.devices_heard_since_restore().empty());

  // The phones sync as they would any day, in an unkind order: the team leader first (its
  // resolution has nothing to settle yet), then A (whose result moves the case on from a state
  // only B can give back), then B; and again, until none has anything left to offer.
  std::map<std::string, uint64_t> reoffered;
  uint64_t refused = 0;
  int rounds = 0;
  for (bool due = true; due && rounds < 5; ++rounds) {
    due = false;
    for (Phone* p : {&leader, &a, &b}) {
      const field::FieldDevice::SyncReport report = Sync(*p);
      reoffered[p->name] += report.calls_reoffered;
      refused += report.reoffers_refused;
    }
    for (Phone* p : {&leader, &a, &b}) {
      auto pending = p->device->store().GetReofferDue();
      ASSERT_TRUE(pending.ok());
      due = due || pending->has_value();
    }
  }
  EXPECT_LE(rounds, 3) << "every phone has given back all it can";
  EXPECT_GT(reoffered["hgv-a"], 0u);
  EXPECT_GT(reoffered["hgv-b"], 0u);
  EXPECT_EQ(reoffered["tt-1"], 1u) << "the resolution, once the conflict was back";
  EXPECT_EQ(refused, 0u);
  for (Phone* p : {&a, &b, &leader}) Sync(*p);  // Everyone pulls what the others gave back.

  // Every record and every acknowledged edit is back, once, with the conflict settled as it was
  // (the settled value is stamped anew by the server that applied it again).
  const std::map<std::string, Record> recovered = ServerRecords();
  ASSERT_EQ(recovered.size(), before_loss.size());
  for (const auto& [id, was] : before_loss) {
    ASSERT_EQ(recovered.count(id), 1u) << id;
    const Record& now = recovered.at(id);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*sync::RecordBody(now), *sync::RecordBody(was)))
        << id << "\nbefore:\n"
        << was.DebugString() << "now:\n"
        << now.DebugString();
    EXPECT_EQ(now.conflicts_size(), was.conflicts_size()) << id;
    if (id != disputed) {
      EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(now, was)) << id;
    }
  }
  EXPECT_EQ(recovered.at(disputed).mediation_case().outcome(), hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);

  stats = Stats();
  EXPECT_THAT(stats.devices_heard_since_restore(), ::testing::IsSupersetOf({a.id, b.id, leader.id}));
  EXPECT_THAT(stats.devices_not_heard_since_restore(), ::testing::Contains(quiet.id));
  EXPECT_THAT(server_->Log(), ::testing::HasSubstr("reoffer=acknowledged-before-the-restore"));
  // Records created or changed after the backup, and how many of them are back as they were.
  size_t changed_after = 0, back = 0;
  for (const auto& [id, was] : before_loss) {
    auto in_backup = restored.find(id);
    if (in_backup != restored.end() && google::protobuf::util::MessageDifferencer::Equals(in_backup->second, was)) {
      continue;
    }
    ++changed_after;
    const Record& now = recovered.at(id);
    back += google::protobuf::util::MessageDifferencer::Equals(*sync::RecordBody(now), *sync::RecordBody(was)) &&
                    now.conflicts_size() == was.conflicts_size()
                ? 1
                : 0;
  }
  EXPECT_EQ(back, changed_after);
  std::cout << "[ restore  ] " << before_loss.size() << " records before the disk died, " << restored.size()
            << " in the backup; " << changed_after << " created or changed after it (" << lost
            << " new), all acknowledged; back as they were: " << back << " of " << changed_after << ", in " << rounds
            << " rounds of syncs; calls offered again: hgv-a " << reoffered["hgv-a"] << ", hgv-b " << reoffered["hgv-b"]
            << ", tt-1 " << reoffered["tt-1"] << "\n";
}

}  // namespace
}  // namespace hamlet
