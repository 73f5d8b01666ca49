// Backup with progress over the admin service, and restore to a new epoch.

#include <grpcpp/grpcpp.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "hamlet/v1/admin.grpc.pb.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "sync/clock.h"
#include "tests/support/admin.h"
#include "tests/support/records.h"
#include "tests/support/server_process.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::ServerProcess;
using hamlet::v1::Record;

constexpr char kDevice[] = "0b6e1f7a-3c2d-4e5f-8a9b-0c1d2e3f4a5b";
constexpr char kPolice[] = "0b6e1f7a-3c2d-4e5f-8a9b-00000000cafe";
std::string Uuid(int n) { return absl::StrFormat("00000000-0000-4000-8000-%012d", n); }
int64_t NowMs() { return sync::SystemClock::Get()->NowMs(); }

grpc::Status Push(const ServerProcess& server, const std::string& device, const std::string& token, int batch,
                  std::vector<Record> records) {
  auto stub = hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + token);
  hamlet::v1::PushRequest request;
  request.set_device_id(device);
  request.set_batch_id(Uuid(900000 + batch));
  for (Record& r : records) *request.add_changes() = std::move(r);
  hamlet::v1::PushResponse response;
  return stub->Push(&context, request, &response);
}

// Pulls everything from `cursor`; returns the status of the first failing page.
grpc::Status Pull(const ServerProcess& server, const std::string& token, std::string* cursor, size_t* count,
                  std::string* reason = nullptr) {
  auto stub = hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  *count = 0;
  while (true) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + token);
    hamlet::v1::PullRequest request;
    request.set_device_id(kDevice);
    request.set_cursor(*cursor);
    hamlet::v1::PullResponse response;
    const grpc::Status status = stub->Pull(&context, request, &response);
    if (!status.ok()) {
      if (reason != nullptr) {
        auto it = context.GetServerTrailingMetadata().find("hamlet-error-reason");
        if (it != context.GetServerTrailingMetadata().end()) *reason = std::string(it->second.data(), it->second.size());
      }
      return status;
    }
    *count += response.records_size();
    *cursor = response.next_cursor();
    if (response.remaining() == 0) return status;
  }
}

bool AnyFileContains(const std::string& root, const std::string& needle) {
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    if (content.str().find(needle) != std::string::npos) return true;
  }
  return false;
}

TEST(BackupE2eTest, BackupShowsProgressAndARestoreStartsANewEpoch) {
  hamlet::testing::TempDir dir;
  auto server = ServerProcess::Start(dir.Sub("data"));
  ASSERT_NE(server, nullptr);
  std::string token, police_token;
  {
    hamlet::testing::AdminClient admin(*server);
    token = admin.Enroll(kDevice, hamlet::v1::ROLE_REPLICATION_NODE, "206", "replica");
    police_token = admin.Enroll(kPolice, hamlet::v1::ROLE_COMMUNE_POLICE, "07132", "ca-01");
  }
  std::vector<Record> records;
  for (int i = 0; i < 100; ++i) records.push_back(hamlet::testing::NewCase(Uuid(i), "07132", MakeStamp(NowMs(), 0, kDevice)));
  ASSERT_TRUE(Push(*server, kDevice, token, 1, records).ok());
  Record informant;
  informant.set_id(Uuid(5000));
  informant.set_unit_code("07132");
  informant.set_author("ca-01");
  informant.mutable_create_time()->set_seconds(NowMs() / 1000);
  informant.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
  informant.mutable_informant_identity()->set_name("CANARY-Lê-Văn-Kín-19c2");
  sync::SetFieldStamp(&informant, 1, MakeStamp(NowMs(), 0, kPolice));
  ASSERT_TRUE(Push(*server, kPolice, police_token, 2, {informant}).ok());

  // Back up, watching the progress.
  const std::string backup = dir.Sub("backup-1");
  std::vector<hamlet::v1::CreateBackupResponse> progress;
  {
    hamlet::testing::AdminClient admin(*server);
    hamlet::v1::CreateBackupRequest request;
    request.set_directory(backup);
    auto context = admin.Context();
    auto reader = admin.stub().CreateBackup(context.get(), request);
    hamlet::v1::CreateBackupResponse message;
    while (reader->Read(&message)) progress.push_back(message);
    const grpc::Status status = reader->Finish();
    ASSERT_TRUE(status.ok()) << status.error_message();
    // The same directory again is refused.
    auto again_context = admin.Context();
    auto again = admin.stub().CreateBackup(again_context.get(), request);
    while (again->Read(&message)) {
    }
    EXPECT_EQ(again->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  ASSERT_GE(progress.size(), 2u);
  for (size_t i = 1; i < progress.size(); ++i) EXPECT_GE(progress[i].bytes_copied(), progress[i - 1].bytes_copied());
  EXPECT_TRUE(progress.back().done());
  EXPECT_EQ(progress.back().bytes_copied(), progress.back().bytes_total());
  EXPECT_EQ(progress.back().files_copied(), progress.back().files_total());
  EXPECT_GT(progress.back().bytes_total(), 0u);
  EXPECT_FALSE(AnyFileContains(backup, "CANARY-Lê-Văn-Kín-19c2")) << "a backup holds a sealed name in the clear";

  // Life goes on after the backup; a device's cursor moves past it.
  records.clear();
  for (int i = 100; i < 110; ++i) records.push_back(hamlet::testing::NewCase(Uuid(i), "07132", MakeStamp(NowMs(), 0, kDevice)));
  ASSERT_TRUE(Push(*server, kDevice, token, 3, records).ok());
  std::string cursor;
  size_t count = 0;
  ASSERT_TRUE(Pull(*server, token, &cursor, &count).ok());
  EXPECT_EQ(count, 289u + 110u);  // The informant identity is not the replica's to read.
  server->Kill();

  // Restore into a new data dir: refused over a non-empty one.
  const auto restore = [&](const std::string& data_dir) {
    const std::string log = dir.Sub("restore.log");
    const pid_t pid = hamlet::testing::Spawn({HAMLETD_PATH_FOR_TESTS, "--restore_from=" + backup,
                                              "--data_dir=" + data_dir,
                                              "--sealed_key_file=" + dir.Sub("data.key")},
                                             log);
    return hamlet::testing::WaitExit(pid);
  };
  EXPECT_EQ(restore(dir.Sub("data")), 1);
  EXPECT_THAT(hamlet::testing::ReadFile(dir.Sub("restore.log")),
              ::testing::HasSubstr("is not empty; restore into a new one"));
  ASSERT_EQ(restore(dir.Sub("restored")), 0) << hamlet::testing::ReadFile(dir.Sub("restore.log"));
  EXPECT_THAT(hamlet::testing::ReadFile(dir.Sub("restore.log")), ::testing::HasSubstr("restoring: "));
  std::filesystem::copy_file(dir.Sub("data.key"), dir.Sub("restored.key"));
  server = ServerProcess::Start(dir.Sub("restored"));
  ASSERT_NE(server, nullptr) << hamlet::testing::ReadFile(dir.Sub("restored.log"));

  // The old cursor points past the restored history: start over.
  std::string reason;
  EXPECT_EQ(Pull(*server, token, &cursor, &count, &reason).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(reason, "CURSOR_INVALIDATED");
  cursor.clear();
  ASSERT_TRUE(Pull(*server, token, &cursor, &count).ok());
  EXPECT_EQ(count, 289u + 100u) << "the restored store is the store as of the backup";
}

}  // namespace
}  // namespace hamlet
