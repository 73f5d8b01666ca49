// The reference device client (library and hamlet-field CLI) against the real
// hamletd over loopback.

#include <signal.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/device.h"
#include "tests/support/admin.h"
#include "tests/support/records.h"
#include "tests/support/server_process.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::ReadFile;
using hamlet::testing::ServerProcess;
using hamlet::testing::Spawn;
using hamlet::testing::WaitExit;
using ::testing::HasSubstr;

struct FieldRun {
  int code;
  std::string output;
};

// Runs hamlet-field with `args` on the device store `store`.
FieldRun Field(const hamlet::testing::TempDir& dir, const std::string& store, std::vector<std::string> args) {
  static int counter = 0;
  const std::string log = dir.Sub(absl::StrCat("field-", ++counter, ".out"));
  std::vector<std::string> argv = {HAMLET_FIELD_PATH, "--store=" + dir.Sub(store)};
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t pid = Spawn(argv, log);
  if (pid < 0) return {-1, "spawn failed"};
  const int code = WaitExit(pid);
  return {code, ReadFile(log)};
}

std::string FirstLine(const std::string& s) { return s.substr(0, s.find('\n')); }

int Count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

class FieldE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = ServerProcess::Start(dir_.Sub("data"));
    ASSERT_NE(server_, nullptr) << ReadFile(dir_.Sub("data.log"));
  }
  std::string ServerFlag() const { return "--server=" + server_->address(); }
  // Enrols the phone whose store is `store` (creating it) and saves its token
  // there with `hamlet-field set-token`, as a phone's user would.
  void EnrollPhone(const std::string& store, hamlet::v1::Role role, const std::string& unit,
                   const std::string& person) {
    std::string device_id;
    {
      auto device = field::FieldDevice::Open(dir_.Sub(store), sync::SystemClock::Get());
      ASSERT_TRUE(device.ok()) << device.status();
      device_id = (*device)->device_id();
    }
    const std::string token = hamlet::testing::AdminClient(*server_).Enroll(device_id, role, unit, person);
    FieldRun saved = Field(dir_, store, {"set-token", token, "--role=" + hamlet::v1::Role_Name(role)});
    ASSERT_EQ(saved.code, 0) << saved.output;
  }
  // Every record a device holds, serialized, by id.
  std::map<std::string, std::string> Snapshot(const std::string& store) {
    std::map<std::string, std::string> records;
    auto opened = storage::DeviceStore::Open(dir_.Sub(store), "unused");
    EXPECT_TRUE(opened.ok()) << opened.status();
    if (!opened.ok()) return records;
    auto all = (*opened)->ListRecords();
    EXPECT_TRUE(all.ok()) << all.status();
    for (const hamlet::v1::Record& r : all.value_or(std::vector<hamlet::v1::Record>())) {
      records[r.id()] = r.SerializeAsString();
    }
    return records;
  }

  hamlet::testing::TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(FieldE2eTest, TwoDevicesEditOfflineSyncAndEndIdentical) {
  EnrollPhone("phone-a", hamlet::v1::ROLE_MEMBER, "07132", "hgv-01");
  EnrollPhone("phone-b", hamlet::v1::ROLE_TEAM_LEADER, "07132", "tv-07");
  // Offline: each phone records something.
  FieldRun a_case = Field(
      dir_, "phone-a",
      {"create", "mediation_case", "--unit=07132", "--author=hgv-01",
       R"(--json={"summary":"Tranh chấp lối đi chung","status":"MEDIATION_STATUS_RECEIVED","round":1,"dispute_type":"DISPUTE_TYPE_LAND"})"});
  ASSERT_EQ(a_case.code, 0) << a_case.output;
  const std::string case_id = FirstLine(a_case.output);
  FieldRun b_house = Field(
      dir_, "phone-b",
      {"create", "household_registration", "--unit=07132-K03", "--author=tv-07",
       R"(--json={"household":"Hộ ông Trần Văn Bình","head":"Trần Văn Bình","village":"07132-K03","year":2017})"});
  ASSERT_EQ(b_house.code, 0) << b_house.output;
  const std::string house_id = FirstLine(b_house.output);
  FieldRun doomed = Field(dir_, "phone-b",
                          {"create", "security_tip", "--unit=07132", "--author=tv-07",
                           R"(--json={"summary":"nghi vấn đánh bạc","category":"TIP_CATEGORY_GAMBLING"})"});
  ASSERT_EQ(doomed.code, 0);
  const std::string tip_id = FirstLine(doomed.output);

  for (const char* phone : {"phone-a", "phone-b", "phone-a"}) {
    FieldRun sync = Field(dir_, phone, {"sync", ServerFlag(), "--scope=07132"});
    ASSERT_EQ(sync.code, 0) << sync.output;
  }

  // Offline again: each edits the other's record, and B deletes its tip.
  ASSERT_EQ(Field(dir_, "phone-a", {"edit", house_id, R"(--json={"evaluation":"HOUSEHOLD_EVALUATION_PASS"})"}).code, 0);
  ASSERT_EQ(Field(dir_, "phone-b",
                  {"edit", case_id, R"(--json={"status":"MEDIATION_STATUS_ASSIGNED","mediators":["hgv-02"]})"})
                .code,
            0);
  ASSERT_EQ(Field(dir_, "phone-b", {"delete", tip_id}).code, 0);
  FieldRun status = Field(dir_, "phone-b", {"status"});
  EXPECT_THAT(status.output, HasSubstr("unsynced edits: 2"));

  for (const char* phone : {"phone-b", "phone-a", "phone-b"}) {
    FieldRun sync = Field(dir_, phone, {"sync", ServerFlag(), "--scope=07132"});
    ASSERT_EQ(sync.code, 0) << sync.output;
  }

  auto a = Snapshot("phone-a");
  auto b = Snapshot("phone-b");
  // B's tip is B's: a member reads only the tips they wrote.
  EXPECT_EQ(a.count(tip_id), 0u);
  ASSERT_EQ(b.count(tip_id), 1u);
  b.erase(tip_id);
  EXPECT_EQ(a.size(), hamlet::testing::kUnitsOfOneCommune + 2u);
  EXPECT_EQ(a, b);
  EXPECT_THAT(Field(dir_, "phone-a", {"show", case_id}).output,
              ::testing::AllOf(HasSubstr("MEDIATION_STATUS_ASSIGNED"), HasSubstr("Tranh chấp lối đi chung"),
                               HasSubstr("hgv-02")));
  EXPECT_THAT(Field(dir_, "phone-b", {"show", house_id}).output, HasSubstr("HOUSEHOLD_EVALUATION_PASS"));
  EXPECT_THAT(Field(dir_, "phone-b", {"show", tip_id}).output, HasSubstr("\"deleted\": true"));
  EXPECT_THAT(Field(dir_, "phone-a", {"status"}).output, HasSubstr("unsynced edits: 0"));
}

// One change the server refuses (a case filed in another commune, which a
// member may not write) costs the phone none of the others in its batch: they
// arrive, and the refused one is kept aside with the server's reason.
TEST_F(FieldE2eTest, ARefusedChangeIsSetAsideAndTheRestOfTheBatchArrives) {
  EnrollPhone("phone-a", hamlet::v1::ROLE_MEMBER, "07132", "hgv-01");
  EnrollPhone("phone-b", hamlet::v1::ROLE_TEAM_LEADER, "07132", "tv-07");
  std::vector<std::string> ids;
  for (const char* unit : {"07132-K01", "07135-K01", "07132-K02"}) {
    FieldRun created =
        Field(dir_, "phone-a",
              {"create", "mediation_case", absl::StrCat("--unit=", unit), "--author=hgv-01",
               R"(--json={"summary":"Tranh chấp ranh giới","status":"MEDIATION_STATUS_RECEIVED","round":1})"});
    ASSERT_EQ(created.code, 0) << created.output;
    ids.push_back(FirstLine(created.output));
  }
  ASSERT_EQ(Field(dir_, "phone-a", {"edit", ids[0], R"(--json={"summary":"Tranh chấp lối đi"})"}).code, 0);

  FieldRun sync = Field(dir_, "phone-a", {"sync", ServerFlag(), "--scope=07132"});
  ASSERT_EQ(sync.code, 0) << sync.output;
  EXPECT_THAT(sync.output, HasSubstr("pushed 3 records in 1 batches"));
  EXPECT_THAT(sync.output, HasSubstr("some edits were refused"));
  FieldRun rejected = Field(dir_, "phone-a", {"rejected"});
  EXPECT_EQ(rejected.output, absl::StrCat(ids[1], " PERMISSION_DENIED: record ", ids[1],
                                          " (MediationCase in unit 07135-K01) is not writable by ROLE_MEMBER of unit "
                                          "07132\n"));
  FieldRun status = Field(dir_, "phone-a", {"status"});
  EXPECT_THAT(status.output, HasSubstr("unsynced edits: 0"));
  EXPECT_THAT(status.output, HasSubstr("rejected edits: 1"));

  // The other two arrived: the team leader pulls them, the edit included.
  ASSERT_EQ(Field(dir_, "phone-b", {"sync", ServerFlag(), "--scope=07132"}).code, 0);
  const std::map<std::string, std::string> leader = Snapshot("phone-b");
  EXPECT_EQ(leader.count(ids[0]), 1u);
  EXPECT_EQ(leader.count(ids[2]), 1u);
  EXPECT_EQ(leader.count(ids[1]), 0u);
  EXPECT_THAT(Field(dir_, "phone-b", {"show", ids[0]}).output, HasSubstr("Tranh chấp lối đi"));
  // Nothing is sent again.
  FieldRun again = Field(dir_, "phone-a", {"sync", ServerFlag(), "--scope=07132"});
  EXPECT_THAT(again.output, HasSubstr("pushed 0 records in 0 batches"));
}

TEST_F(FieldE2eTest, WorksOfflineAndSyncFailsClearlyWithoutServer) {
  EnrollPhone("phone", hamlet::v1::ROLE_MEMBER, "07132", "x");
  FieldRun created =
      Field(dir_, "phone", {"create", "mediation_case", "--unit=07132", "--author=x", R"(--json={"summary":"s"})"});
  ASSERT_EQ(created.code, 0) << created.output;
  FieldRun sync = Field(dir_, "phone", {"sync", "--server=127.0.0.1:1", "--attempts=2"});
  EXPECT_EQ(sync.code, 3) << sync.output;
  EXPECT_THAT(sync.output, HasSubstr("UNAVAILABLE"));
  EXPECT_THAT(Field(dir_, "phone", {"status"}).output, HasSubstr("unsynced edits: 1"));
  FieldRun bad =
      Field(dir_, "phone", {"create", "mediation_case", "--unit=07132", "--author=x", R"(--json={"no_such_field":1})"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_THAT(bad.output, HasSubstr("no field \"no_such_field\""));
}

// The heart of it: two phones, offline, record different outcomes for one
// case. Both sessions survive, the disagreement is kept and shown, a team
// leader settles it, and every phone converges on the settlement.
TEST_F(FieldE2eTest, ConflictingOutcomesAreKeptUntilTheTeamLeaderResolvesThem) {
  EnrollPhone("phone-a", hamlet::v1::ROLE_MEMBER, "07132", "hgv-01");
  EnrollPhone("phone-b", hamlet::v1::ROLE_MEMBER, "07132", "hgv-02");
  EnrollPhone("leader", hamlet::v1::ROLE_TEAM_LEADER, "07132", "tt-01");
  const auto sync_ok = [&](const std::string& phone) {
    FieldRun run = Field(dir_, phone, {"sync", ServerFlag()});
    ASSERT_EQ(run.code, 0) << phone << ": " << run.output;
  };
  FieldRun created =
      Field(dir_, "phone-a",
            {"create", "mediation_case", "--unit=07132-K04", "--author=hgv-01",
             R"(--json={"summary":"Tranh chấp ranh giới vườn","status":"MEDIATION_STATUS_RECEIVED","round":1})"});
  ASSERT_EQ(created.code, 0) << created.output;
  const std::string id = FirstLine(created.output);
  ASSERT_EQ(Field(dir_, "phone-a",
                  {"edit", id, R"(--json={"status":"MEDIATION_STATUS_ASSIGNED","mediators":["hgv-01","hgv-02"]})"})
                .code,
            0);
  ASSERT_EQ(Field(dir_, "phone-a", {"edit", id, R"(--json={"status":"MEDIATION_STATUS_IN_MEDIATION"})"}).code, 0);
  sync_ok("phone-a");
  sync_ok("phone-b");

  // Offline, each mediator holds a session and records a different outcome.
  FieldRun a_edit = Field(
      dir_, "phone-a",
      {"edit", id,
       R"(--json={"sessions":[{"id":"s-a","date":"2017-08-20","notes":"Hai bên đồng ý dời hàng rào"}],"status":"MEDIATION_STATUS_SUCCESSFUL","outcome":"MEDIATION_OUTCOME_SUCCESSFUL"})"});
  ASSERT_EQ(a_edit.code, 0) << a_edit.output;
  FieldRun b_edit = Field(
      dir_, "phone-b",
      {"edit", id,
       R"(--json={"sessions":[{"id":"s-b","date":"2017-08-21","notes":"Bên bị không đồng ý"}],"status":"MEDIATION_STATUS_UNSUCCESSFUL","outcome":"MEDIATION_OUTCOME_UNSUCCESSFUL"})"});
  ASSERT_EQ(b_edit.code, 0) << b_edit.output;
  sync_ok("phone-a");
  sync_ok("phone-b");
  sync_ok("phone-a");
  sync_ok("leader");

  auto leader = Snapshot("leader");
  hamlet::v1::Record record;
  ASSERT_TRUE(record.ParseFromString(leader.at(id)));
  ASSERT_EQ(record.mediation_case().sessions_size(), 2) << "both sessions are kept";
  ASSERT_EQ(record.conflicts_size(), 1);
  EXPECT_EQ(record.conflicts(0).field(), 9u);
  std::set<int> outcomes;
  for (const auto& v : record.conflicts(0).values()) outcomes.insert(v.value().mediation_case().outcome());
  EXPECT_EQ(outcomes,
            (std::set<int>{hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL, hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL}));
  EXPECT_THAT(Field(dir_, "phone-a", {"conflicts"}).output, HasSubstr("MEDIATION_OUTCOME_UNSUCCESSFUL"));

  // A member may not settle it; the team leader may.
  FieldRun refused =
      Field(dir_, "phone-a",
            {"resolve", id, ServerFlag(), "--field=9", "--resolver=hgv-01",
             R"(--json={"status":"MEDIATION_STATUS_SUCCESSFUL","round":1,"outcome":"MEDIATION_OUTCOME_SUCCESSFUL"})"});
  EXPECT_EQ(refused.code, 2);
  EXPECT_THAT(refused.output, HasSubstr("PERMISSION_DENIED"));
  FieldRun resolved = Field(
      dir_, "leader",
      {"resolve", id, ServerFlag(), "--field=9", "--resolver=tt-01",
       R"(--json={"status":"MEDIATION_STATUS_UNSUCCESSFUL","round":1,"outcome":"MEDIATION_OUTCOME_UNSUCCESSFUL"})"});
  ASSERT_EQ(resolved.code, 0) << resolved.output;
  for (const char* phone : {"leader", "phone-a", "phone-b"}) sync_ok(phone);

  const auto a = Snapshot("phone-a");
  const auto b = Snapshot("phone-b");
  const auto l = Snapshot("leader");
  EXPECT_EQ(a.at(id), b.at(id));
  EXPECT_EQ(a.at(id), l.at(id));
  ASSERT_TRUE(record.ParseFromString(a.at(id)));
  EXPECT_EQ(record.conflicts_size(), 0);
  EXPECT_EQ(record.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL);
  EXPECT_EQ(record.mediation_case().sessions_size(), 2);
  // The losing outcome is still on record.
  bool kept = false;
  for (const auto& lost : record.superseded()) {
    kept = kept || lost.value().mediation_case().outcome() == hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL;
  }
  EXPECT_TRUE(kept);
  EXPECT_THAT(server_->Log(), HasSubstr(absl::StrCat("resolve device=")));
}

// A device killed while pushing resumes with the same batch and nothing is
// doubled; a device killed while pulling resumes after its last saved page.
TEST_F(FieldE2eTest, KilledSyncResumesWithoutDuplicatesOrStartingOver) {
  constexpr int kRecords = 1500;
  EnrollPhone("phone-c", hamlet::v1::ROLE_MEMBER, "07132", "hgv-01");
  EnrollPhone("phone-d", hamlet::v1::ROLE_TEAM_LEADER, "07132", "tv-07");
  std::string device_id;
  {
    auto device = field::FieldDevice::Open(dir_.Sub("phone-c"), sync::SystemClock::Get());
    ASSERT_TRUE(device.ok()) << device.status();
    device_id = (*device)->device_id();
    for (int i = 0; i < kRecords; ++i) {
      hamlet::v1::Record draft;
      draft.set_unit_code("07132");
      draft.set_author("hgv-01");
      draft.mutable_mediation_case()->set_summary(absl::StrCat("vụ việc ", i));
      ASSERT_TRUE((*device)->Create(draft).ok());
    }
  }

  // Push in small batches and kill the client part-way.
  const std::string out = dir_.Sub("push.out");
  pid_t pid =
      Spawn({HAMLET_FIELD_PATH, "--store=" + dir_.Sub("phone-c"), "sync", ServerFlag(), "--batch_records=5"}, out);
  ASSERT_GT(pid, 0);
  const std::string pushed_line = "push device=" + device_id;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (Count(server_->Log(), pushed_line) < 20 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(pid, SIGKILL);
  WaitExit(pid);
  const int pushed_before_kill = Count(server_->Log(), pushed_line);
  ASSERT_LT(pushed_before_kill, kRecords / 5) << "the client finished before it could be interrupted";
  // The admins see what the phone said it still held.
  const auto pending_of = [&](const std::string& id) -> int64_t {
    hamlet::testing::AdminClient admin(*server_);
    hamlet::v1::ListDevicesResponse devices;
    EXPECT_TRUE(admin.stub().ListDevices(admin.Context().get(), {}, &devices).ok());
    for (const auto& d : devices.devices()) {
      if (d.device_id() == id) return static_cast<int64_t>(d.pending_changes());
    }
    return -1;
  };
  EXPECT_GT(pending_of(device_id), 0);

  FieldRun resumed = Field(dir_, "phone-c", {"sync", ServerFlag(), "--batch_records=5"});
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_THAT(Field(dir_, "phone-c", {"status"}).output, HasSubstr("unsynced edits: 0"));
  EXPECT_THAT(server_->Log(), ::testing::Not(HasSubstr("ALREADY_EXISTS")));
  EXPECT_EQ(pending_of(device_id), 0);

  // The server holds each record once. A pull in small pages, killed part-way,
  // resumes where it stopped.
  const std::string pull_out = dir_.Sub("pull.out");
  pid = Spawn({HAMLET_FIELD_PATH, "--store=" + dir_.Sub("phone-d"), "sync", ServerFlag(), "--page_size=20"}, pull_out);
  while (Count(ReadFile(pull_out), "pulled ") < 10 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(pid, SIGKILL);
  WaitExit(pid);
  FieldRun rest = Field(dir_, "phone-d", {"sync", ServerFlag(), "--page_size=500"});
  ASSERT_EQ(rest.code, 0) << rest.output;
  std::smatch m;
  const std::string first_progress = rest.output.substr(rest.output.find("pulled "));
  ASSERT_TRUE(std::regex_search(first_progress, m, std::regex(R"(pulled ([\d,]+) of ([\d,]+) records)")));
  const auto number = [](std::string s) {
    s.erase(std::remove(s.begin(), s.end(), ','), s.end());
    return std::stoi(s);
  };
  EXPECT_LT(number(m[2]), kRecords + hamlet::testing::kSeededUnits) << "the resumed pull started over";

  int cases = 0;
  std::map<std::string, int> summaries;
  FieldRun list = Field(dir_, "phone-d", {"list"});
  for (absl::string_view line : absl::StrSplit(list.output, '\n', absl::SkipEmpty())) {
    if (absl::StrContains(line, "MediationCase")) ++cases;
  }
  EXPECT_EQ(cases, kRecords);
  // Each record was applied once: the server's last sequence number is the
  // seeded units plus one per record.
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  auto stub = hamlet::v1::SyncService::NewStub(channel);
  grpc::ClientContext context;
  const std::string town_token =
      hamlet::testing::AdminClient(*server_).Enroll(device_id, hamlet::v1::ROLE_TOWN_OFFICER, "206", "officer");
  context.AddMetadata("authorization", "Bearer " + town_token);
  hamlet::v1::PullRequest request;
  request.set_device_id(device_id);
  request.set_page_size(1);
  hamlet::v1::PullResponse response;
  ASSERT_TRUE(stub->Pull(&context, request, &response).ok());
  EXPECT_EQ(response.remaining() + response.records_size(),
            static_cast<uint64_t>(hamlet::testing::kSeededUnits + kRecords));
  EXPECT_EQ(response.records(0).server_seq(), 1u);
}

}  // namespace
}  // namespace hamlet
