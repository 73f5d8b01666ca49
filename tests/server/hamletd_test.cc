// A whole server run in the test's own process (server/hamletd.h): it starts
// on free ports, takes its wall-clock time from the clock it is given, holds
// its data dir while it runs, and lets go of it when it shuts down, also after
// a start that failed.

#include "server/hamletd.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "google/protobuf/util/time_util.h"
#include "hamlet/v1/admin.grpc.pb.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace hamlet::server {
namespace {

using ::hamlet::testing::StatusIs;
using ::testing::HasSubstr;

constexpr int64_t kNowMs = 1'796'600'000'000;  // 2026-12-06, far from the machine's clock.

class HamletdTest : public ::testing::Test {
 protected:
  HamletdOptions Options() {
    HamletdOptions options;
    options.data_dir = dir_.Sub("data");
    options.listen = "127.0.0.1:0";
    options.admin_listen = "127.0.0.1:0";
    options.metrics_listen = "";
    options.clock = &clock_;
    return options;
  }

  hamlet::testing::TempDir dir_;
  sync::FakeClock clock_{kNowMs};
};

TEST_F(HamletdTest, ServesOnFreePortsWithTheClockItIsGivenAndLetsGoOfItsDataDir) {
  absl::StatusOr<std::unique_ptr<Hamletd>> server = Hamletd::Start(Options());
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_THAT((*server)->device_address(), ::testing::StartsWith("127.0.0.1:"));
  EXPECT_NE((*server)->device_address(), "127.0.0.1:0");
  EXPECT_TRUE((*server)->admin_token_is_new());
  struct stat token_file;
  ASSERT_EQ(stat((*server)->admin_token_file().c_str(), &token_file), 0);
  EXPECT_EQ(token_file.st_mode & 0777, 0600u) << "the admin token is readable by others";

  // The admin service answers with the token, and its start time is the given clock's.
  auto admin = hamlet::v1::AdminService::NewStub(
      grpc::CreateChannel((*server)->admin_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + (*server)->admin_token());
  hamlet::v1::GetServerStatsResponse stats;
  const grpc::Status status = admin->GetServerStats(&context, {}, &stats);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(google::protobuf::util::TimeUtil::TimestampToMilliseconds(stats.start_time()), kNowMs);
  EXPECT_EQ(stats.town_code(), "206");

  // While it runs, the data dir is its own.
  EXPECT_THAT(Hamletd::ServerId(Options()), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Hamletd::Start(Options()).status(), StatusIs(absl::StatusCode::kFailedPrecondition));

  (*server)->Shutdown(absl::Seconds(1));
  absl::StatusOr<std::string> id = Hamletd::ServerId(Options());
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, stats.server_id());

  // Started again, it keeps its identity and its admin token.
  server = Hamletd::Start(Options());
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_FALSE((*server)->admin_token_is_new());
}

TEST_F(HamletdTest, AStartThatFailsSaysWhyAndLetsGoOfTheDataDir) {
  HamletdOptions options = Options();
  options.limits.max_threads = 1;
  EXPECT_THAT(Hamletd::Start(options).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--max_threads must be at least 2")));
  options = Options();
  options.sealed_key_file = dir_.Sub("missing.key");
  EXPECT_THAT(Hamletd::Start(options).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("cannot use the sealing key")));
  EXPECT_TRUE(Hamletd::ServerId(Options()).ok()) << "a failed start kept the data dir locked";
}

}  // namespace
}  // namespace hamlet::server
