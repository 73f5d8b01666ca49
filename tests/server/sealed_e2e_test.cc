// Informant identities, end to end: sealed at rest, readable only by the
// commune police (every read audited), gone from the phone once acknowledged,
// and nowhere on disk in the clear.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "client/device.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "sync/clock.h"
#include "sync/merge.h"
#include "sync/stamp.h"
#include "tests/support/admin.h"
#include "tests/support/records.h"
#include "tests/support/server_process.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::ServerProcess;
using hamlet::v1::Record;

constexpr char kCanaryName[] = "CANARY-Đặng-Thị-Kín-7f3a";
constexpr char kCanaryContact[] = "CANARY-0912-345-678";

// Every occurrence of `needle` in the files below `root` (and `extra`).
std::vector<std::string> FilesContaining(const std::string& root, const std::vector<std::string>& extra,
                                         const std::string& needle) {
  std::vector<std::string> paths = extra;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
    if (entry.is_regular_file()) paths.push_back(entry.path().string());
  }
  std::vector<std::string> hits;
  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    if (content.str().find(needle) != std::string::npos) hits.push_back(path);
  }
  return hits;
}

std::vector<Record> PullAll(const ServerProcess& server, const std::string& device_id, const std::string& token,
                            bool lean = false) {
  auto stub =
      hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  std::vector<Record> out;
  std::string cursor;
  while (true) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + token);
    hamlet::v1::PullRequest request;
    request.set_device_id(device_id);
    request.set_cursor(cursor);
    request.set_lean_stamps(lean);
    hamlet::v1::PullResponse response;
    const grpc::Status status = stub->Pull(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok()) return out;
    for (const Record& r : response.records()) out.push_back(r);
    cursor = response.next_cursor();
    if (response.remaining() == 0) return out;
  }
}

TEST(SealedE2eTest, InformantNamesNeverReachTheDiskOrAnyoneButThePolice) {
  hamlet::testing::TempDir dir;
  auto server = ServerProcess::Start(dir.Sub("data"));
  ASSERT_NE(server, nullptr) << hamlet::testing::ReadFile(dir.Sub("data.log"));
  hamlet::testing::AdminClient admin(*server);

  // A member's phone records a tip and, sealed, who gave it.
  auto phone = field::FieldDevice::Open(dir.Sub("phone"), sync::SystemClock::Get());
  ASSERT_TRUE(phone.ok());
  ASSERT_TRUE((*phone)
                  ->store()
                  .SetEnrolment(admin.Enroll((*phone)->device_id(), hamlet::v1::ROLE_MEMBER, "07132", "tv-01"),
                                hamlet::v1::ROLE_MEMBER)
                  .ok());
  Record identity;
  identity.set_unit_code("07132-K05");
  identity.set_author("tv-01");
  identity.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
  identity.mutable_informant_identity()->set_name(kCanaryName);
  identity.mutable_informant_identity()->set_contact(kCanaryContact);
  identity.mutable_informant_identity()->set_protection_requested(true);
  auto created = (*phone)->Create(identity);
  ASSERT_TRUE(created.ok()) << created.status();
  Record tip;
  tip.set_unit_code("07132-K05");
  tip.set_author("tv-01");
  tip.mutable_security_tip()->set_summary("nghi vấn buôn bán ma tuý");
  tip.mutable_security_tip()->set_category(hamlet::v1::TIP_CATEGORY_DRUGS);
  tip.mutable_security_tip()->set_informant_ref(created->id());
  ASSERT_TRUE((*phone)->Create(tip).ok());
  {
    auto stub =
        hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
    auto synced = (*phone)->Sync(*stub, {});
    ASSERT_TRUE(synced.ok()) << synced.status();
  }
  // Acknowledged: the identity is gone from the phone; the tip stays.
  EXPECT_FALSE((*phone)->store().GetRecord(created->id())->has_value());

  // Only the commune police read it, and each read is audited.
  const std::string police_id = "00000000-0000-4000-8000-00000000aaaa";
  const std::string police_token = admin.Enroll(police_id, hamlet::v1::ROLE_COMMUNE_POLICE, "07132", "ca-01");
  bool police_sees = false;
  const std::vector<Record> whole = PullAll(*server, police_id, police_token);
  for (const Record& r : whole) {
    police_sees = police_sees || (r.id() == created->id() && r.informant_identity().name() == kCanaryName);
  }
  EXPECT_TRUE(police_sees);
  // A lean pull gets the same records in the same order: the tip as the
  // server stores it, the sealed identity opened, checked and audited.
  std::vector<Record> lean = PullAll(*server, police_id, police_token, /*lean=*/true);
  ASSERT_EQ(lean.size(), whole.size());
  for (size_t i = 0; i < lean.size(); ++i) {
    sync::ExpandStamps(&lean[i], "");
    EXPECT_EQ(lean[i].SerializeAsString(), whole[i].SerializeAsString()) << whole[i].id();
    if (i > 0) EXPECT_LT(whole[i - 1].server_seq(), whole[i].server_seq());
  }
  const std::string officer_id = "00000000-0000-4000-8000-00000000bbbb";
  for (const Record& r :
       PullAll(*server, officer_id, admin.Enroll(officer_id, hamlet::v1::ROLE_TOWN_OFFICER, "206", "town"))) {
    EXPECT_FALSE(r.has_informant_identity()) << "a town officer received an informant identity";
  }
  hamlet::v1::ListAuditEntriesRequest audit_request;
  audit_request.set_page_size(1000);
  hamlet::v1::ListAuditEntriesResponse audit;
  ASSERT_TRUE(admin.stub().ListAuditEntries(admin.Context().get(), audit_request, &audit).ok());
  int sealed_reads = 0;
  for (const auto& entry : audit.entries()) {
    if (entry.action() == "sealed_read" && entry.target() == created->id()) {
      ++sealed_reads;
      EXPECT_EQ(entry.device_id(), police_id);
      EXPECT_EQ(entry.person_id(), "ca-01");
    }
  }
  EXPECT_EQ(sealed_reads, 2);  // The whole pull and the lean one.
  phone->reset();              // Closes the phone's store, as the app would.

  // Stop (RocksDB closes and flushes what it will), restart: still readable.
  ASSERT_EQ(server->Stop(), 0);
  server = ServerProcess::Start(dir.Sub("data"));
  ASSERT_NE(server, nullptr);
  police_sees = false;
  for (const Record& r : PullAll(*server, police_id, police_token)) {
    police_sees = police_sees || r.informant_identity().name() == kCanaryName;
  }
  EXPECT_TRUE(police_sees);
  ASSERT_EQ(server->Stop(), 0);

  // Not one plaintext byte of it anywhere: database files, WAL, logs,
  // the phone's store, the audit log (inside the database).
  for (const char* canary : {kCanaryName, kCanaryContact}) {
    EXPECT_EQ(FilesContaining(dir.path(), {}, canary), std::vector<std::string>()) << canary;
  }
  // The test is able to see a name when it is there in the clear.
  EXPECT_FALSE(FilesContaining(dir.path(), {}, "nghi vấn buôn bán ma tuý").empty());

  // Without the key, the server refuses to start rather than serve sealed
  // records it cannot open.
  auto keyless = ServerProcess::Start(dir.Sub("data"), {"--sealed_key_file=" + dir.Sub("no-such-key")});
  EXPECT_EQ(keyless, nullptr);
}

}  // namespace
}  // namespace hamlet
