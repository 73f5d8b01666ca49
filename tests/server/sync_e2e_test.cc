// End-to-end tests of the real hamletd binary over loopback gRPC.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "sync/clock.h"
#include "sync/cursor.h"
#include "sync/merge.h"
#include "sync/stamp.h"
#include "tests/support/admin.h"
#include "tests/support/records.h"
#include "tests/support/server_process.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::testing::ServerProcess;
using hamlet::testing::StatusIs;
using hamlet::v1::PullRequest;
using hamlet::v1::PullResponse;
using hamlet::v1::PushRequest;
using hamlet::v1::PushResponse;
using hamlet::v1::Record;
using ::testing::HasSubstr;

constexpr char kDevice[] = "0b6e1f7a-3c2d-4e5f-8a9b-0c1d2e3f4a5b";
constexpr int kSeededUnits = 289;

std::string Uuid(int n) { return absl::StrFormat("00000000-0000-4000-8000-%012d", n); }
int64_t NowMs() { return sync::SystemClock::Get()->NowMs(); }

class Client {
 public:
  Client(const std::string& address, const std::string& token)
      : stub_(hamlet::v1::SyncService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))),
        token_(token) {}

  // A context with the device's token and a deadline.
  std::unique_ptr<grpc::ClientContext> NewContext(std::chrono::seconds deadline = std::chrono::seconds(10)) const {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata("authorization", "Bearer " + token_);
    context->set_deadline(std::chrono::system_clock::now() + deadline);
    return context;
  }

  grpc::Status Push(const PushRequest& request, PushResponse* response,
                    std::map<std::string, std::string>* trailers = nullptr) {
    auto context = NewContext();
    grpc::Status status = stub_->Push(context.get(), request, response);
    if (trailers != nullptr) {
      for (const auto& [key, value] : context->GetServerTrailingMetadata()) {
        (*trailers)[std::string(key.data(), key.size())] = std::string(value.data(), value.size());
      }
    }
    return status;
  }
  grpc::Status Pull(const PullRequest& request, PullResponse* response, std::string* reason = nullptr) {
    auto context = NewContext();
    grpc::Status status = stub_->Pull(context.get(), request, response);
    if (reason != nullptr) {
      const auto& trailers = context->GetServerTrailingMetadata();
      auto it = trailers.find("hamlet-error-reason");
      *reason = it == trailers.end() ? "" : std::string(it->second.data(), it->second.size());
    }
    return status;
  }
  // Pulls `scope` from `cursor` to the end; returns every record in order.
  std::vector<Record> PullAll(const std::string& scope, std::string* cursor, int page_size = 500) {
    std::vector<Record> records;
    while (true) {
      PullRequest request;
      request.set_device_id(kDevice);
      request.set_scope_unit_code(scope);
      request.set_cursor(*cursor);
      request.set_page_size(page_size);
      PullResponse response;
      grpc::Status status = Pull(request, &response);
      EXPECT_TRUE(status.ok()) << status.error_message();
      if (!status.ok()) return records;
      for (const Record& r : response.records()) records.push_back(r);
      *cursor = response.next_cursor();
      if (response.remaining() == 0) return records;
    }
  }
  hamlet::v1::SyncService::Stub& stub() { return *stub_; }

 private:
  std::unique_ptr<hamlet::v1::SyncService::Stub> stub_;
  std::string token_;
};

PushRequest Batch(const std::string& batch_id, std::vector<Record> changes) {
  PushRequest request;
  request.set_device_id(kDevice);
  request.set_batch_id(batch_id);
  request.set_app_version("test/1");
  for (Record& r : changes) *request.add_changes() = std::move(r);
  return request;
}

class SyncE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = ServerProcess::Start(dir_.Sub("data"));
    ASSERT_NE(server_, nullptr) << hamlet::testing::ReadFile(dir_.Sub("data.log"));
    // These tests are about the protocol, not about who may do what
    // (access_e2e_test.cc): the device is a replication node, which reads and
    // writes every unit of the town.
    token_ = hamlet::testing::AdminClient(*server_).Enroll(kDevice, hamlet::v1::ROLE_REPLICATION_NODE, "206",
                                                           "replica-of-test");
    client_ = std::make_unique<Client>(server_->address(), token_);
    // Everything the server holds at the start: the seeded admin units.
    ASSERT_EQ(client_->PullAll("", &start_cursor_).size(), static_cast<size_t>(kSeededUnits));
  }
  // Records changed since the test started.
  std::vector<Record> NewSinceStart() {
    std::string cursor = start_cursor_;
    return client_->PullAll("", &cursor);
  }

  hamlet::testing::TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
  std::string token_;
  std::string start_cursor_;
};

TEST_F(SyncE2eTest, PushedRecordIsPulledWithItsStamps) {
  const Record created = NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice));
  PushResponse response;
  ASSERT_TRUE(client_->Push(Batch(Uuid(100), {created}), &response).ok());
  EXPECT_EQ(response.applied_records(), 1u);
  EXPECT_EQ(response.server_seq(), static_cast<uint64_t>(kSeededUnits + 1));

  std::vector<Record> pulled = NewSinceStart();
  ASSERT_EQ(pulled.size(), 1u);
  Record expected = created;
  expected.set_server_seq(response.server_seq());
  EXPECT_EQ(pulled[0].SerializeAsString(), expected.SerializeAsString());
  EXPECT_THAT(server_->Log(), HasSubstr(absl::StrCat("push device=", kDevice, " batch=", Uuid(100))));
}

// A phone on a newer app version sends a field and an enum value this server
// was built without: both are stored and come back on pull, byte for byte,
// and a later edit from the newer app replaces the field.
TEST_F(SyncE2eTest, ANewerAppsFieldsAndEnumValuesComeBackOnPull) {
  constexpr int kNewField = 1000;
  Record created = NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice));
  auto* body = created.mutable_mediation_case();
  body->set_dispute_type(static_cast<hamlet::v1::DisputeType>(42));
  body->GetReflection()->MutableUnknownFields(body)->AddLengthDelimited(kNewField, "số điện thoại hoà giải viên");
  sync::SetFieldStamp(&created, hamlet::v1::MediationCase::kDisputeTypeFieldNumber, MakeStamp(NowMs(), 0, kDevice));
  sync::SetFieldStamp(&created, kNewField, MakeStamp(NowMs(), 0, kDevice));
  PushResponse response;
  ASSERT_TRUE(client_->Push(Batch(Uuid(100), {created}), &response).ok());

  std::vector<Record> pulled = NewSinceStart();
  ASSERT_EQ(pulled.size(), 1u);
  EXPECT_EQ(pulled[0].mediation_case().dispute_type(), 42);
  EXPECT_EQ(pulled[0].mediation_case().SerializeAsString(), created.mediation_case().SerializeAsString());

  Record edit = sync::EmptyChangeOf(created);
  auto* edited = edit.mutable_mediation_case();
  edited->GetReflection()->MutableUnknownFields(edited)->AddLengthDelimited(kNewField, "edited later");
  sync::SetFieldStamp(&edit, kNewField, MakeStamp(NowMs() + 1, 0, kDevice));
  ASSERT_TRUE(client_->Push(Batch(Uuid(101), {edit}), &response).ok());
  pulled = NewSinceStart();
  ASSERT_EQ(pulled.size(), 1u);
  const auto& unknown = pulled[0].mediation_case().GetReflection()->GetUnknownFields(pulled[0].mediation_case());
  ASSERT_EQ(unknown.field_count(), 1);
  EXPECT_EQ(unknown.field(0).length_delimited(), "edited later");
  EXPECT_EQ(pulled[0].superseded_size(), 1) << "the first value is kept as superseded";

  // A lifecycle state the server does not know is refused, and writes nothing.
  Record unknown_state = NewCase(Uuid(2), "07132", MakeStamp(NowMs(), 0, kDevice));
  unknown_state.mutable_mediation_case()->set_status(static_cast<hamlet::v1::MediationStatus>(99));
  EXPECT_THAT(client_->Push(Batch(Uuid(102), {unknown_state}), &response),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("a state this server does not know")));
  EXPECT_EQ(NewSinceStart().size(), 1u);
}

// Lean stamps on the wire (docs/PROTOCOL.md, "Lean stamps"): a push whose stamps leave out the
// pushing device's id is stored with whole stamps; it is the same batch as its whole form (a
// retry in the other form is answered from the receipt); a pull that asks for lean stamps names
// each record's most frequent writer once, and one that does not gets every stamp whole.
TEST_F(SyncE2eTest, LeanStampsArriveWholeAndTravelLeanToThoseWhoAsk) {
  const Record whole = NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice));
  Record lean = whole;
  for (auto& fs : *lean.mutable_field_stamps()) fs.mutable_stamp()->clear_node();
  ASSERT_GE(lean.field_stamps_size(), 2);
  PushResponse first, again;
  ASSERT_TRUE(client_->Push(Batch(Uuid(100), {lean}), &first).ok());
  ASSERT_TRUE(client_->Push(Batch(Uuid(100), {whole}), &again).ok()) << "the same batch in its whole form";
  EXPECT_EQ(first.SerializeAsString(), again.SerializeAsString());

  std::vector<Record> pulled = NewSinceStart();
  ASSERT_EQ(pulled.size(), 1u);
  Record expected = whole;
  expected.set_server_seq(first.server_seq());
  EXPECT_EQ(pulled[0].SerializeAsString(), expected.SerializeAsString());

  // Another writer's edit: the lean pull names the creator once and the editor in its stamp.
  const std::string editor = Uuid(77);
  Record edit = sync::EmptyChangeOf(whole);
  edit.mutable_mediation_case()->set_summary("Hai bên đã thống nhất");
  sync::SetFieldStamp(&edit, hamlet::v1::MediationCase::kSummaryFieldNumber, MakeStamp(NowMs() + 1, 0, ""));
  edit.set_default_node(editor);
  ASSERT_TRUE(client_->Push(Batch(Uuid(101), {edit}), &first).ok());
  PullRequest request;
  request.set_device_id(kDevice);
  request.set_cursor(start_cursor_);
  request.set_lean_stamps(true);
  PullResponse response;
  ASSERT_TRUE(client_->Pull(request, &response).ok());
  ASSERT_EQ(response.records_size(), 1);
  const Record got = response.records(0);
  EXPECT_EQ(got.default_node(), kDevice);
  int named = 0;
  for (const auto& fs : got.field_stamps()) {
    if (fs.stamp().node().empty()) continue;
    ++named;
    EXPECT_EQ(fs.stamp().node(), editor);
  }
  EXPECT_EQ(named, 1);
  Record expanded = got;
  sync::ExpandStamps(&expanded, "");
  request.set_lean_stamps(false);
  ASSERT_TRUE(client_->Pull(request, &response).ok());
  EXPECT_EQ(expanded.SerializeAsString(), response.records(0).SerializeAsString());
  EXPECT_LT(got.ByteSizeLong(), response.records(0).ByteSizeLong());
}

TEST_F(SyncE2eTest, RetriedBatchIsAppliedOnceAndAnsweredAlike) {
  const PushRequest request = Batch(Uuid(100), {NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice))});
  PushResponse first, second;
  ASSERT_TRUE(client_->Push(request, &first).ok());
  ASSERT_TRUE(client_->Push(request, &second).ok());
  EXPECT_EQ(first.SerializeAsString(), second.SerializeAsString());
  std::vector<Record> pulled = NewSinceStart();
  ASSERT_EQ(pulled.size(), 1u);
  EXPECT_EQ(pulled[0].server_seq(), first.server_seq());
}

TEST_F(SyncE2eTest, BatchIdReusedForOtherContentIsRefusedAndWritesNothing) {
  PushResponse response;
  ASSERT_TRUE(
      client_->Push(Batch(Uuid(100), {NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice))}), &response).ok());
  const grpc::Status status =
      client_->Push(Batch(Uuid(100), {NewCase(Uuid(2), "07132", MakeStamp(NowMs(), 0, kDevice))}), &response);
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("new batch needs a new batch_id")));
  std::vector<Record> pulled = NewSinceStart();
  ASSERT_EQ(pulled.size(), 1u);
  EXPECT_EQ(pulled[0].id(), Uuid(1));
}

TEST_F(SyncE2eTest, ConcurrentEditsMergeFieldByField) {
  const Record created = NewCase(Uuid(1), "07132", MakeStamp(NowMs() - 10'000, 0, kDevice));
  PushResponse response;
  ASSERT_TRUE(client_->Push(Batch(Uuid(100), {created}), &response).ok());
  // Two phones edit offline: A the summary and the status (to ASSIGNED), B
  // the status (to WITHDRAWN, with an older clock). Each field merges by its
  // rule: the summary is A's; the lifecycle only moves forward, so WITHDRAWN.
  Record phone_a = sync::EmptyChangeOf(created);
  phone_a.mutable_mediation_case()->set_summary("A's summary");
  sync::SetFieldStamp(&phone_a, 5, MakeStamp(NowMs() - 5'000, 0, "phone-a"));
  phone_a.mutable_mediation_case()->set_status(hamlet::v1::MEDIATION_STATUS_ASSIGNED);
  phone_a.mutable_mediation_case()->set_round(1);
  for (uint32_t f : {9, 10, 11}) sync::SetFieldStamp(&phone_a, f, MakeStamp(NowMs() - 4'000, 0, "phone-a"));
  Record phone_b = hamlet::testing::CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_WITHDRAWN,
                                                     MakeStamp(NowMs() - 6'000, 0, "phone-b"));
  ASSERT_TRUE(client_->Push(Batch(Uuid(101), {phone_a}), &response).ok());
  const uint64_t seq_after_a = response.server_seq();
  ASSERT_TRUE(client_->Push(Batch(Uuid(102), {phone_b}), &response).ok());
  EXPECT_EQ(response.applied_records(), 1u);
  const uint64_t seq_after_b = response.server_seq();
  EXPECT_GT(seq_after_b, seq_after_a);
  // A's edit sent again under a new batch id (a device that lost its pending
  // batch) changes nothing, so no new version is made for others to pull.
  ASSERT_TRUE(client_->Push(Batch(Uuid(103), {phone_a}), &response).ok());
  EXPECT_EQ(response.applied_records(), 0u);
  EXPECT_EQ(response.server_seq(), seq_after_b);
  // A stale edit loses, and is kept among the superseded values.
  Record stale = sync::EmptyChangeOf(created);
  stale.mutable_mediation_case()->set_summary("stale summary");
  sync::SetFieldStamp(&stale, 5, MakeStamp(NowMs() - 9'000, 0, "phone-c"));
  ASSERT_TRUE(client_->Push(Batch(Uuid(104), {stale}), &response).ok());
  std::vector<Record> pulled = NewSinceStart();
  ASSERT_EQ(pulled.size(), 1u);
  EXPECT_EQ(pulled[0].mediation_case().summary(), "A's summary");
  EXPECT_EQ(pulled[0].mediation_case().status(), hamlet::v1::MEDIATION_STATUS_WITHDRAWN);
  bool kept = false;
  for (const auto& lost : pulled[0].superseded()) {
    kept = kept || lost.value().mediation_case().summary() == "stale summary";
  }
  EXPECT_TRUE(kept);
}

// Each bad push gets its own precise status, and nothing of it is written.
TEST_F(SyncE2eTest, BadPushesGetPreciseErrorsAndWriteNothing) {
  const int64_t now = NowMs();
  const Record good = NewCase(Uuid(1), "07132", MakeStamp(now, 0, kDevice));
  PushResponse response;
  ASSERT_TRUE(client_->Push(Batch(Uuid(99), {NewCase(Uuid(50), "07135", MakeStamp(now, 0, kDevice))}), &response).ok());
  const Record existing_tip_id = NewCase(Uuid(50), "07135", MakeStamp(now, 1, kDevice));

  struct Case {
    std::string name;
    PushRequest request;
    absl::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  {
    PushRequest r = Batch(Uuid(100), {good});
    r.clear_device_id();
    cases.push_back({"missing device id", r, absl::StatusCode::kInvalidArgument, "device_id"});
  }
  cases.push_back({"batch id not a UUID", Batch("batch-1", {good}), absl::StatusCode::kInvalidArgument, "batch_id"});
  cases.push_back({"empty batch", Batch(Uuid(101), {}), absl::StatusCode::kInvalidArgument, "at least one change"});
  {
    std::vector<Record> many;
    for (int i = 0; i < 501; ++i) many.push_back(NewCase(Uuid(1000 + i), "07132", MakeStamp(now, 0, kDevice)));
    cases.push_back({"oversized batch", Batch(Uuid(102), many), absl::StatusCode::kInvalidArgument, "at most 500"});
  }
  {
    Record bad = NewCase(Uuid(2), "99999", MakeStamp(now, 0, kDevice));
    cases.push_back({"unknown unit hidden after a good record", Batch(Uuid(103), {good, bad}),
                     absl::StatusCode::kInvalidArgument, "unit \"99999\" does not exist"});
  }
  {
    Record bad = NewCase(Uuid(2), "07132", MakeStamp(now, 0, kDevice));
    bad.mutable_mediation_case()->set_status(static_cast<hamlet::v1::MediationStatus>(77));
    cases.push_back(
        {"unknown enum value", Batch(Uuid(104), {good, bad}), absl::StatusCode::kInvalidArgument, "status = 77"});
  }
  {
    Record bad = NewCase("not-a-uuid", "07132", MakeStamp(now, 0, kDevice));
    cases.push_back(
        {"record id not a UUID", Batch(Uuid(105), {good, bad}), absl::StatusCode::kInvalidArgument, "not a UUID"});
  }
  {
    Record bad = existing_tip_id;
    bad.set_unit_code("07132");
    cases.push_back({"existing record moved to another unit", Batch(Uuid(106), {good, bad}),
                     absl::StatusCode::kFailedPrecondition, "unit cannot change"});
  }
  {
    Record bad = NewCase(Uuid(3), "07132", MakeStamp(now + 60 * 60 * 1000, 0, kDevice));
    cases.push_back({"stamp an hour ahead", Batch(Uuid(107), {good, bad}), absl::StatusCode::kFailedPrecondition,
                     "ahead of the server clock"});
  }
  {
    Record bad = NewCase(Uuid(4), "07132", MakeStamp(now, 0, kDevice));
    bad.clear_author();
    cases.push_back({"new record without author", Batch(Uuid(108), {good, bad}), absl::StatusCode::kInvalidArgument,
                     "needs author"});
  }

  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::map<std::string, std::string> trailers;
    EXPECT_THAT(client_->Push(c.request, &response, &trailers), StatusIs(c.code, HasSubstr(c.message)));
    if (c.name == "stamp an hour ahead") {
      auto reason = trailers.find("hamlet-error-reason");
      ASSERT_NE(reason, trailers.end());
      EXPECT_EQ(reason->second, "CLOCK_SKEW");
      auto time = trailers.find("hamlet-server-time-ms");
      ASSERT_NE(time, trailers.end());
      EXPECT_NEAR(std::stoll(time->second), NowMs(), 60'000);
    }
  }
  std::vector<Record> pulled = NewSinceStart();
  ASSERT_EQ(pulled.size(), 1u) << "only the first, valid batch may have been written";
  EXPECT_EQ(pulled[0].id(), Uuid(50));
}

TEST_F(SyncE2eTest, OversizedMessageIsResourceExhausted) {
  Record huge = NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice));
  huge.mutable_mediation_case()->set_summary(std::string(9 << 20, 'x'));
  PushResponse response;
  EXPECT_THAT(client_->Push(Batch(Uuid(100), {huge}), &response), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_TRUE(NewSinceStart().empty());
}

TEST_F(SyncE2eTest, PullPagesCountDownAndCommuneScopeIsFiltered) {
  std::vector<Record> batch;
  for (int i = 0; i < 30; ++i)
    batch.push_back(NewCase(Uuid(i), i % 3 == 0 ? "07135" : "07132-K02", MakeStamp(NowMs(), 0, kDevice)));
  PushResponse response;
  ASSERT_TRUE(client_->Push(Batch(Uuid(100), batch), &response).ok());

  PullRequest request;
  request.set_device_id(kDevice);
  request.set_scope_unit_code("07135");
  request.set_page_size(4);
  std::vector<uint64_t> remaining;
  size_t cases = 0;
  while (true) {
    PullResponse page;
    ASSERT_TRUE(client_->Pull(request, &page).ok());
    for (const Record& r : page.records()) {
      if (r.has_mediation_case()) {
        EXPECT_EQ(r.unit_code(), "07135");
        ++cases;
      }
    }
    remaining.push_back(page.remaining());
    request.set_cursor(page.next_cursor());
    if (page.remaining() == 0) break;
  }
  EXPECT_EQ(cases, 10u);
  // 289 reference units + 10 cases, 4 a page: the count falls by 4 each page.
  EXPECT_EQ(remaining.front(), static_cast<uint64_t>(kSeededUnits + 10 - 4));
  for (size_t i = 1; i < remaining.size(); ++i) EXPECT_EQ(remaining[i], std::max<int64_t>(0, remaining[i - 1] - 4));
}

// A catch-up's next page is read while the device takes in the last one,
// and served only if nothing was committed since its read began: a record
// rewritten between two pulls comes once, in its new state, at its new place.
TEST_F(SyncE2eTest, APageReadAheadIsServedOnlyIfNothingWasCommittedSince) {
  std::vector<Record> batch;
  for (int i = 0; i < 12; ++i) batch.push_back(NewCase(Uuid(i), "07132", MakeStamp(NowMs(), 0, kDevice)));
  PushResponse pushed;
  ASSERT_TRUE(client_->Push(Batch(Uuid(100), batch), &pushed).ok());
  const auto count = [&](const char* outcome) {
    return std::max(0.0,
                    server_->Metric(absl::StrCat("hamlet_pull_pages_read_ahead_total{outcome=\"", outcome, "\"}")));
  };
  // Pulls pages of `page_size` from `cursor` until none remain (at most 10),
  // waiting `pause` after each: time for the next page's read ahead to
  // begin (a pull that comes first reads for itself, which is right but
  // shows nothing here). Returns the records' ids and the summary of Uuid(5).
  std::string summary;
  const auto pull_all = [&](std::string* cursor, int page_size, absl::Duration pause) {
    std::vector<std::string> ids;
    for (int pages = 0; pages < 10; ++pages) {
      PullRequest request;
      request.set_device_id(kDevice);
      request.set_cursor(*cursor);
      request.set_page_size(page_size);
      PullResponse page;
      const grpc::Status pulled = client_->Pull(request, &page);
      EXPECT_TRUE(pulled.ok()) << pulled.error_message();
      if (!pulled.ok()) break;
      for (const Record& record : page.records()) {
        ids.push_back(record.id());
        if (record.id() == Uuid(5)) summary = record.mediation_case().summary();
      }
      *cursor = page.next_cursor();
      if (page.remaining() == 0) break;
      absl::SleepFor(pause);
    }
    return ids;
  };

  // Nothing committed between the pages: those after the first are read
  // ahead, and at least one of the three is served.
  const double served = count("served");
  std::string cursor = start_cursor_;
  EXPECT_EQ(pull_all(&cursor, 3, absl::Milliseconds(200)).size(), 12u);
  EXPECT_GE(count("served") - served, 1) << "no page read ahead was served";

  // A rewrite of a record of the page read ahead, after the page before it
  // was answered: the page read ahead is stale, and the pull reads again.
  const double stale = count("stale");
  PullRequest request;
  request.set_device_id(kDevice);
  request.set_page_size(4);
  request.set_cursor(start_cursor_);
  PullResponse page;
  ASSERT_TRUE(client_->Pull(request, &page).ok());
  ASSERT_EQ(page.records_size(), 4);
  cursor = page.next_cursor();
  Record edit = sync::EmptyChangeOf(batch[5]);
  edit.mutable_mediation_case()->set_summary("sửa giữa hai trang");
  sync::SetFieldStamp(&edit, 5, MakeStamp(NowMs() + 1, 0, kDevice));
  const grpc::Status rewritten = client_->Push(Batch(Uuid(101), {edit}), &pushed);
  ASSERT_TRUE(rewritten.ok()) << rewritten.error_message();
  std::map<std::string, int> seen;
  for (const std::string& id : pull_all(&cursor, 4, absl::ZeroDuration())) ++seen[id];
  EXPECT_EQ(seen.size(), 8u);
  EXPECT_EQ(seen[Uuid(5)], 1) << "the rewritten record came in its old state too";
  EXPECT_EQ(summary, "sửa giữa hai trang");
  EXPECT_EQ(count("stale") - stale, 1) << "the page read ahead before the rewrite was not found stale";
}

TEST_F(SyncE2eTest, BadPullsGetPreciseErrors) {
  PullRequest request;
  request.set_device_id(kDevice);
  PullResponse response;
  std::string reason;

  request.set_scope_unit_code("07132-K01");
  EXPECT_THAT(client_->Pull(request, &response), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("scope")));
  request.set_scope_unit_code("07132");
  request.set_cursor("garbage");
  EXPECT_THAT(client_->Pull(request, &response), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cursor")));

  // A cursor of this server for another scope.
  request.set_cursor(start_cursor_);
  EXPECT_THAT(client_->Pull(request, &response),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("keep one cursor per scope")));
  // The town code and "" name the same scope.
  request.set_scope_unit_code("206");
  EXPECT_TRUE(client_->Pull(request, &response).ok());

  // A cursor from another server, or from an epoch this server is not at.
  auto cursor = sync::DecodeCursor(start_cursor_);
  ASSERT_TRUE(cursor.ok());
  sync::Cursor foreign = *cursor;
  foreign.server_id = Uuid(7);
  request.set_scope_unit_code("");
  request.set_cursor(sync::EncodeCursor(foreign));
  EXPECT_THAT(client_->Pull(request, &response, &reason),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("empty cursor")));
  EXPECT_EQ(reason, "CURSOR_INVALIDATED");
  // This server's cursor with its epoch or position changed by hand: not one
  // it issued (its tag no longer fits).
  sync::Cursor old_epoch = *cursor;
  old_epoch.epoch = 0;
  request.set_cursor(sync::EncodeCursor(old_epoch));
  EXPECT_THAT(client_->Pull(request, &response), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("issued")));
  sync::Cursor ahead = *cursor;
  ahead.seq += 1000;
  request.set_cursor(sync::EncodeCursor(ahead));
  EXPECT_THAT(client_->Pull(request, &response), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("issued")));
  // A cursor from before cursors were authenticated (version 1) starts over.
  std::string untagged = sync::CursorPayload(*cursor);
  untagged[0] = static_cast<char>(sync::kUntaggedCursorVersion);
  request.set_cursor(untagged);
  EXPECT_THAT(client_->Pull(request, &response, &reason), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(reason, "CURSOR_INVALIDATED");

  // Every single-bit change of a real cursor is refused: INVALID_ARGUMENT, or
  // CURSOR_INVALIDATED (a full pull again) where it alters the server id.
  request.set_cursor(start_cursor_);
  const std::string real = start_cursor_;
  int invalid = 0, invalidated = 0;
  for (size_t byte = 0; byte < real.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string altered = real;
      altered[byte] = static_cast<char>(altered[byte] ^ (1 << bit));
      request.set_cursor(altered);
      reason.clear();
      const grpc::Status status = client_->Pull(request, &response, &reason);
      const bool in_server_id = byte >= 2 && byte < 2 + cursor->server_id.size();
      if (in_server_id && status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        EXPECT_EQ(reason, "CURSOR_INVALIDATED") << "byte " << byte << " bit " << bit;
        ++invalidated;
      } else {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "byte " << byte << " bit " << bit;
        ++invalid;
      }
    }
  }
  EXPECT_EQ(invalid + invalidated, static_cast<int>(real.size() * 8));
  EXPECT_LE(invalidated, static_cast<int>(cursor->server_id.size() * 8));

  request.set_cursor("");
  request.clear_device_id();
  EXPECT_THAT(client_->Pull(request, &response), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("device_id")));
}

TEST_F(SyncE2eTest, WatchTellsAConnectedDeviceAboutNewChanges) {
  auto context = client_->NewContext(std::chrono::seconds(20));
  hamlet::v1::WatchRequest request;
  request.set_device_id(kDevice);
  request.set_scope_unit_code("07132");
  // The cursor of commune 07132 as of now, from a pull.
  PullRequest pull;
  pull.set_device_id(kDevice);
  pull.set_scope_unit_code("07132");
  PullResponse pulled;
  do {
    pull.set_cursor(pulled.next_cursor());
    ASSERT_TRUE(client_->Pull(pull, &pulled).ok());
  } while (pulled.remaining() > 0);
  request.set_cursor(pulled.next_cursor());
  auto reader = client_->stub().Watch(context.get(), request);

  // A change in another commune does not wake this watcher; one in 07132 does.
  std::thread pusher([this] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    PushResponse response;
    EXPECT_TRUE(
        client_->Push(Batch(Uuid(100), {NewCase(Uuid(1), "07135", MakeStamp(NowMs(), 0, kDevice))}), &response).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_TRUE(
        client_->Push(Batch(Uuid(101), {NewCase(Uuid(2), "07132", MakeStamp(NowMs(), 0, kDevice))}), &response).ok());
  });
  hamlet::v1::WatchResponse message;
  ASSERT_TRUE(reader->Read(&message));
  EXPECT_EQ(message.server_seq(), static_cast<uint64_t>(kSeededUnits + 2));
  pusher.join();
  context->TryCancel();
  while (reader->Read(&message)) {
  }
}

TEST_F(SyncE2eTest, SigtermStopsCleanlyAndDataAndCursorsSurviveRestart) {
  PushResponse response;
  ASSERT_TRUE(
      client_->Push(Batch(Uuid(100), {NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice))}), &response).ok());
  // A device stays connected, as phones do; the server still stops within its grace.
  EXPECT_EQ(server_->Stop(), 0);
  EXPECT_THAT(server_->Log(), HasSubstr("stopped cleanly"));
  server_ = ServerProcess::Start(dir_.Sub("data"));
  ASSERT_NE(server_, nullptr);
  client_ = std::make_unique<Client>(server_->address(), token_);
  std::vector<Record> pulled = NewSinceStart();
  ASSERT_EQ(pulled.size(), 1u);
  EXPECT_EQ(pulled[0].id(), Uuid(1));
  // The seeded units were not seeded twice.
  std::string cursor;
  EXPECT_EQ(client_->PullAll("", &cursor).size(), static_cast<size_t>(kSeededUnits + 1));
}

// Several devices push while the server is killed with SIGKILL. Every
// acknowledged batch must be there after restart, once; every batch must be
// all there or not there at all.
TEST_F(SyncE2eTest, AcknowledgedPushesSurviveKillNine) {
  constexpr int kDevices = 4;
  constexpr int kRecordsPerBatch = 5;
  absl::Mutex mu;
  std::map<std::string, PushRequest> sent;  // by batch id
  std::set<std::string> acked;
  std::atomic<bool> stop{false};
  std::vector<std::thread> devices;
  const std::string address = server_->address();
  for (int d = 0; d < kDevices; ++d) {
    devices.emplace_back([&, d] {
      Client client(address, token_);
      for (int b = 0; !stop.load(); ++b) {
        const std::string batch_id = absl::StrFormat("00000000-0000-4000-%04d-%012d", d, b);
        std::vector<Record> records;
        for (int r = 0; r < kRecordsPerBatch; ++r) {
          const std::string id = absl::StrFormat("11111111-%04d-4000-8000-%012d", d, b * kRecordsPerBatch + r);
          records.push_back(NewCase(id, "07132", MakeStamp(NowMs(), 0, kDevice)));
        }
        const PushRequest request = Batch(batch_id, records);
        {
          absl::MutexLock lock(&mu);
          sent[batch_id] = request;
        }
        PushResponse response;
        if (!client.Push(request, &response).ok()) return;  // The server is gone.
        absl::MutexLock lock(&mu);
        acked.insert(batch_id);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  server_->Kill();
  stop = true;
  for (auto& t : devices) t.join();
  ASSERT_GT(acked.size(), 10u) << "too few pushes were acknowledged to test anything";

  server_ = ServerProcess::Start(dir_.Sub("data"));
  ASSERT_NE(server_, nullptr) << "database did not reopen after SIGKILL";
  client_ = std::make_unique<Client>(server_->address(), token_);
  std::map<std::string, int> seen;
  for (const Record& r : NewSinceStart()) ++seen[r.id()];
  for (const auto& [id, count] : seen) EXPECT_EQ(count, 1) << id << " pulled more than once";
  size_t present = 0;
  for (const auto& [batch_id, request] : sent) {
    size_t here = 0;
    for (const Record& r : request.changes()) here += seen.count(r.id());
    if (acked.count(batch_id) > 0) {
      EXPECT_EQ(here, static_cast<size_t>(request.changes_size())) << "acknowledged batch " << batch_id << " lost";
    }
    EXPECT_TRUE(here == 0 || here == static_cast<size_t>(request.changes_size()))
        << "batch " << batch_id << " half applied";
    present += here;
  }
  EXPECT_EQ(present, seen.size()) << "records that no batch sent";

  // Retrying every batch after the crash (as devices do) applies each once.
  for (const auto& [batch_id, request] : sent) {
    PushResponse response;
    ASSERT_TRUE(client_->Push(request, &response).ok()) << batch_id;
  }
  std::map<std::string, int> after_retry;
  for (const Record& r : NewSinceStart()) ++after_retry[r.id()];
  EXPECT_EQ(after_retry.size(), sent.size() * kRecordsPerBatch);
  for (const auto& [id, count] : after_retry) EXPECT_EQ(count, 1) << id;
}

}  // namespace
}  // namespace hamlet
