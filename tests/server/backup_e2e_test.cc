// Backups with progress over the admin service, each sharing what the earlier ones in its
// directory hold, and a restore to a new epoch.

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
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
  auto stub =
      hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
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
  auto stub =
      hamlet::v1::SyncService::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
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
        if (it != context.GetServerTrailingMetadata().end())
          *reason = std::string(it->second.data(), it->second.size());
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
  // A store of some size (2,400 cases with summaries of about 700 characters,
  // about 1.5 MB), so that what a second backup shares is most of it.
  const char* const words[] = {"tranh", "chấp",  "ranh", "giới", "đất",  "hộ",  "ông",  "bà",   "lối", "đi",
                               "chung", "tường", "rào",  "nước", "thải", "hòa", "giải", "thôn", "xóm", "bên"};
  uint32_t seed = 7;
  std::vector<Record> records;
  for (int batch = 0; batch < 6; ++batch) {
    records.clear();
    for (int i = batch * 400; i < (batch + 1) * 400; ++i) {
      std::string summary;
      while (summary.size() < 700) {
        seed = seed * 1103515245 + 12345;
        absl::StrAppend(&summary, words[(seed >> 16) % 20], " ");
      }
      records.push_back(hamlet::testing::NewCase(Uuid(i), "07132", MakeStamp(NowMs(), 0, kDevice), summary));
    }
    ASSERT_TRUE(Push(*server, kDevice, token, batch, records).ok());
  }
  Record informant;
  informant.set_id(Uuid(5000));
  informant.set_unit_code("07132");
  informant.set_author("ca-01");
  informant.mutable_create_time()->set_seconds(NowMs() / 1000);
  informant.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
  informant.mutable_informant_identity()->set_name("CANARY-Lê-Văn-Kín-19c2");
  sync::SetFieldStamp(&informant, 1, MakeStamp(NowMs(), 0, kPolice));
  ASSERT_TRUE(Push(*server, kPolice, police_token, 100, {informant}).ok());

  // Back up, watching the progress.
  const std::string backup = dir.Sub("backups");
  const auto back_up = [&](const std::string& into, std::vector<hamlet::v1::CreateBackupResponse>* messages) {
    hamlet::testing::AdminClient admin(*server);
    hamlet::v1::CreateBackupRequest request;
    request.set_directory(into);
    auto context = admin.Context();
    auto reader = admin.stub().CreateBackup(context.get(), request);
    hamlet::v1::CreateBackupResponse message;
    while (reader->Read(&message)) messages->push_back(message);
    return reader->Finish();
  };
  std::vector<hamlet::v1::CreateBackupResponse> progress;
  {
    const grpc::Status status = back_up(backup, &progress);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  ASSERT_GE(progress.size(), 2u);
  for (size_t i = 1; i < progress.size(); ++i) EXPECT_GE(progress[i].bytes_copied(), progress[i - 1].bytes_copied());
  EXPECT_TRUE(progress.back().done());
  EXPECT_EQ(progress.back().bytes_copied(), progress.back().bytes_total());
  EXPECT_EQ(progress.back().files_copied(), progress.back().files_total());
  EXPECT_GT(progress.back().bytes_total(), 0u);
  EXPECT_EQ(progress.back().backup_id(), 1u);
  EXPECT_FALSE(AnyFileContains(backup, "CANARY-Lê-Văn-Kín-19c2")) << "a backup holds a sealed name in the clear";

  // The next day's backup of a store that did not change copies almost nothing.
  std::vector<hamlet::v1::CreateBackupResponse> again;
  {
    const grpc::Status status = back_up(backup, &again);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  ASSERT_FALSE(again.empty());
  const hamlet::v1::CreateBackupResponse& second = again.back();
  EXPECT_TRUE(second.done());
  EXPECT_EQ(second.backup_id(), 2u);
  EXPECT_GE(second.bytes_total(), progress.back().bytes_total() * 9 / 10);
  EXPECT_LT(second.bytes_copied() * 10, second.bytes_total())
      << "the second backup copied " << second.bytes_copied() << " of " << second.bytes_total() << " bytes";
  std::cout << "[ backups  ] first copied " << progress.back().bytes_copied() << " of " << progress.back().bytes_total()
            << " bytes (" << progress.back().files_copied() << " of " << progress.back().files_total()
            << " files); second " << second.bytes_copied() << " of " << second.bytes_total() << " ("
            << second.files_copied() << " of " << second.files_total() << ")\n";

  // A directory of other files is not a backup directory.
  std::filesystem::create_directories(dir.Sub("other"));
  std::ofstream(dir.Sub("other/notes.txt")) << "not a backup\n";
  {
    std::vector<hamlet::v1::CreateBackupResponse> refused;
    EXPECT_EQ(back_up(dir.Sub("other"), &refused).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }

  // Both backups check out whole; a changed byte in a shared table file spoils both.
  const auto verify = [&]() {
    hamlet::testing::AdminClient admin(*server);
    hamlet::v1::VerifyBackupsRequest request;
    request.set_directory(backup);
    auto context = admin.Context();
    auto reader = admin.stub().VerifyBackups(context.get(), request);
    std::vector<hamlet::v1::VerifyBackupsResponse> checked;
    hamlet::v1::VerifyBackupsResponse message;
    while (reader->Read(&message)) checked.push_back(message);
    EXPECT_TRUE(reader->Finish().ok());
    return checked;
  };
  std::vector<hamlet::v1::VerifyBackupsResponse> checked = verify();
  ASSERT_EQ(checked.size(), 2u);
  for (const auto& check : checked) EXPECT_TRUE(check.ok()) << check.problem();
  EXPECT_EQ(checked[1].backup_id(), 2u);
  EXPECT_EQ(checked[1].bytes(), second.bytes_total());

  // Life goes on after the backups; a device's cursor moves past them.
  records.clear();
  for (int i = 2400; i < 2410; ++i)
    records.push_back(hamlet::testing::NewCase(Uuid(i), "07132", MakeStamp(NowMs(), 0, kDevice)));
  ASSERT_TRUE(Push(*server, kDevice, token, 101, records).ok());
  std::string cursor;
  size_t count = 0;
  ASSERT_TRUE(Pull(*server, token, &cursor, &count).ok());
  EXPECT_EQ(count, 289u + 2410u);  // The informant identity is not the replica's to read.
  server->Kill();

  // Restore into a new data dir: refused over a non-empty one.
  const auto restore = [&](const std::string& data_dir, const std::string& id) {
    const std::string log = dir.Sub("restore.log");
    const pid_t pid =
        hamlet::testing::Spawn({HAMLETD_PATH_FOR_TESTS, "--restore_from=" + backup, "--restore_backup_id=" + id,
                                "--data_dir=" + data_dir, "--sealed_key_file=" + dir.Sub("data.key")},
                               log);
    return hamlet::testing::WaitExit(pid);
  };
  EXPECT_EQ(restore(dir.Sub("data"), "0"), 1);
  EXPECT_THAT(hamlet::testing::ReadFile(dir.Sub("restore.log")),
              ::testing::HasSubstr("is not empty; restore into a new one"));
  EXPECT_EQ(restore(dir.Sub("restored"), "3"), 1);
  EXPECT_THAT(hamlet::testing::ReadFile(dir.Sub("restore.log")), ::testing::HasSubstr("holds no backup 3"));
  ASSERT_EQ(restore(dir.Sub("restored"), "1"), 0) << hamlet::testing::ReadFile(dir.Sub("restore.log"));
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
  EXPECT_EQ(count, 289u + 2400u) << "the restored store is the store as of the backup";

  // A changed byte in a table file the two backups share is found in both.
  std::string table;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(backup)) {
    if (entry.path().extension() == ".sst" && entry.file_size() > 4096) table = entry.path().string();
  }
  ASSERT_FALSE(table.empty());
  {
    std::fstream file(table, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(1000);
    file.put('\x5a');
  }
  server->Kill();
  server = ServerProcess::Start(dir.Sub("restored"));
  ASSERT_NE(server, nullptr);
  checked = verify();
  ASSERT_EQ(checked.size(), 2u);
  for (const auto& check : checked) {
    EXPECT_FALSE(check.ok()) << "backup " << check.backup_id() << " shares the changed file";
    EXPECT_THAT(check.problem(), ::testing::HasSubstr(std::filesystem::path(table).filename().string()));
  }
}

}  // namespace
}  // namespace hamlet
