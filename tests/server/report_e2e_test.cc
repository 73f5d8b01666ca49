// Reports end to end: Quảng Yên's 2012–2017 summary (docs/DOMAIN.md) is pushed as
// records, and the admin service's report gives the summary back.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "hamlet/v1/admin.grpc.pb.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "sync/clock.h"
#include "sync/merge.h"
#include "sync/units.h"
#include "tests/support/admin.h"
#include "tests/support/records.h"
#include "tests/support/server_process.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::ServerProcess;
using hamlet::v1::MediationCase;
using hamlet::v1::Record;

constexpr char kReplica[] = "00000000-0000-4000-8000-00000000d00d";

class Pusher {
 public:
  Pusher(const ServerProcess& server, std::string token)
      : stub_(hamlet::v1::SyncService::NewStub(
            grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()))),
        token_(std::move(token)) {}

  void Add(Record change) {
    pending_.push_back(std::move(change));
    if (pending_.size() >= 480) Flush();
  }
  void Flush() {
    if (pending_.empty()) return;
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + token_);
    hamlet::v1::PushRequest request;
    request.set_device_id(kReplica);
    request.set_batch_id(absl::StrFormat("00000000-0000-4000-8000-%012d", ++batches_));
    for (Record& r : pending_) *request.add_changes() = std::move(r);
    pending_.clear();
    hamlet::v1::PushResponse response;
    const grpc::Status status = stub_->Push(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  std::string NextId() { return absl::StrFormat("00000000-0001-4000-8000-%012d", ++ids_); }
  hamlet::v1::Stamp Stamp() { return MakeStamp(sync::SystemClock::Get()->NowMs() - 60'000, ++logical_, kReplica); }

 private:
  std::unique_ptr<hamlet::v1::SyncService::Stub> stub_;
  std::string token_;
  std::vector<Record> pending_;
  int batches_ = 0;
  int ids_ = 0;
  uint32_t logical_ = 0;
};

Record Base(const std::string& id, const std::string& unit) {
  Record r;
  r.set_id(id);
  r.set_unit_code(unit);
  r.set_author("import");
  r.mutable_create_time()->set_seconds(1'500'000'000);
  r.set_sensitivity(hamlet::v1::SENSITIVITY_NORMAL);
  return r;
}

void StampAll(Record* r, const hamlet::v1::Stamp& stamp) {
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  const auto* body = sync::RecordBody(*r);
  body->GetReflection()->ListFields(*body, &fields);
  for (const auto* f : fields) sync::SetFieldStamp(r, static_cast<uint32_t>(f->number()), stamp);
}

// The case moves through its lifecycle to `status`, one legal step at a time.
void AddCase(Pusher& p, const std::string& unit, const std::string& date, hamlet::v1::MediationOutcome outcome) {
  const std::string id = p.NextId();
  Record created = Base(id, unit);
  auto* c = created.mutable_mediation_case();
  c->set_date_received(date);
  c->set_dispute_type(hamlet::v1::DISPUTE_TYPE_LAND);
  c->set_status(hamlet::v1::MEDIATION_STATUS_RECEIVED);
  c->set_round(1);
  StampAll(&created, p.Stamp());
  sync::SetFieldStamp(&created, MediationCase::kOutcomeFieldNumber, created.field_stamps(0).stamp());
  p.Add(created);
  const auto final_status = outcome == hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL
                                ? hamlet::v1::MEDIATION_STATUS_SUCCESSFUL
                                : hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL;
  for (auto status : {hamlet::v1::MEDIATION_STATUS_ASSIGNED, hamlet::v1::MEDIATION_STATUS_IN_MEDIATION, final_status}) {
    p.Add(hamlet::testing::CaseStatusChange(
        created, status, p.Stamp(), 1, status == final_status ? outcome : hamlet::v1::MEDIATION_OUTCOME_UNSPECIFIED));
  }
}

void AddTip(Pusher& p, const std::string& unit, int64_t received_s, hamlet::v1::TipResult result,
            hamlet::v1::WantedPersonOutcome wanted) {
  Record tip = Base(p.NextId(), unit);
  auto* t = tip.mutable_security_tip();
  t->mutable_received_time()->set_seconds(received_s);
  t->mutable_forwarded_time()->set_seconds(received_s + 2 * 86400);
  t->set_category(wanted != hamlet::v1::WANTED_PERSON_OUTCOME_UNSPECIFIED ? hamlet::v1::TIP_CATEGORY_WANTED_PERSON
                                                                          : hamlet::v1::TIP_CATEGORY_THEFT);
  t->set_status(hamlet::v1::TIP_STATUS_NEW);
  StampAll(&tip, p.Stamp());
  for (uint32_t f :
       {hamlet::v1::SecurityTip::kResultFieldNumber, hamlet::v1::SecurityTip::kWantedPersonOutcomeFieldNumber}) {
    sync::SetFieldStamp(&tip, f, tip.field_stamps(0).stamp());
  }
  p.Add(tip);
  if (result == hamlet::v1::TIP_RESULT_UNSPECIFIED) return;
  for (auto status :
       {hamlet::v1::TIP_STATUS_FORWARDED, hamlet::v1::TIP_STATUS_VERIFYING, hamlet::v1::TIP_STATUS_HAS_RESULT}) {
    Record move = sync::EmptyChangeOf(tip);
    move.mutable_security_tip()->set_status(status);
    if (status == hamlet::v1::TIP_STATUS_HAS_RESULT) {
      move.mutable_security_tip()->set_result(result);
      move.mutable_security_tip()->set_wanted_person_outcome(wanted);
    }
    const auto stamp = p.Stamp();
    for (uint32_t f : {hamlet::v1::SecurityTip::kStatusFieldNumber, hamlet::v1::SecurityTip::kResultFieldNumber,
                       hamlet::v1::SecurityTip::kWantedPersonOutcomeFieldNumber}) {
      sync::SetFieldStamp(&move, f, stamp);
    }
    p.Add(move);
  }
}

std::map<std::string, int64_t> Figures(const hamlet::v1::GetReportResponse& report) {
  std::map<std::string, int64_t> out;
  for (const auto& f : report.figures()) out[f.metric()] = f.count();
  return out;
}

TEST(ReportE2eTest, QuangYenSummaryComesBackFromTheRecords) {
  hamlet::testing::TempDir dir;
  auto server = ServerProcess::Start(dir.Sub("data"));
  ASSERT_NE(server, nullptr);
  hamlet::testing::AdminClient admin(*server);
  Pusher p(*server, admin.Enroll(kReplica, hamlet::v1::ROLE_REPLICATION_NODE, "206", "import"));

  std::vector<std::string> villages;
  sync::UnitDirectory units;
  for (const auto& unit : sync::ReferenceUnits()) units.Put(unit);
  for (const std::string& code : units.Within("206")) {
    if (units.Find(code)->level() == hamlet::v1::UNIT_LEVEL_VILLAGE) villages.push_back(code);
  }
  // 572 mediations succeeded (and 60 did not), 2012–2017.
  for (int i = 0; i < 632; ++i) {
    AddCase(p, villages[i % villages.size()], absl::StrFormat("%04d-%02d-15", 2012 + i % 5, 1 + i % 12),
            i < 572 ? hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL : hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
  }
  // 226 tips: 62 prosecuted, 23 handled administratively, 5 wanted persons
  // (3 arrested, 2 surrendered) among the prosecuted.
  for (int i = 0; i < 226; ++i) {
    const auto result = i < 62    ? hamlet::v1::TIP_RESULT_PROSECUTED
                        : i < 85  ? hamlet::v1::TIP_RESULT_ADMINISTRATIVE
                        : i < 150 ? hamlet::v1::TIP_RESULT_NO_SIGN_OF_CRIME
                                  : hamlet::v1::TIP_RESULT_UNSPECIFIED;
    const auto wanted = i < 3   ? hamlet::v1::WANTED_PERSON_OUTCOME_ARRESTED
                        : i < 5 ? hamlet::v1::WANTED_PERSON_OUTCOME_SURRENDERED
                                : hamlet::v1::WANTED_PERSON_OUTCOME_UNSPECIFIED;
    AddTip(p, villages[(i * 7) % villages.size()], 1'330'000'000 + int64_t{i} * 600'000, result, wanted);
  }
  // 27,645 households in 179 villages; 194 self-management teams, 11 boards.
  for (int i = 0; i < 27'645; ++i) {
    Record h = Base(p.NextId(), villages[i % 179]);
    h.mutable_household_registration()->set_household(absl::StrCat("Hộ ", i));
    h.mutable_household_registration()->set_village(villages[i % 179]);
    h.mutable_household_registration()->set_registered_date(absl::StrFormat("%04d-06-01", 2012 + i % 5));
    h.mutable_household_registration()->set_commitment_signed(true);
    StampAll(&h, p.Stamp());
    p.Add(h);
  }
  for (int i = 0; i < 205; ++i) {
    Record team = Base(p.NextId(), villages[i % villages.size()]);
    team.mutable_team()->set_type(i < 194 ? hamlet::v1::TEAM_TYPE_SELF_MANAGEMENT
                                          : hamlet::v1::TEAM_TYPE_STREET_PROTECTION_BOARD);
    team.mutable_team()->set_valid_from("2012-02-01");
    StampAll(&team, p.Stamp());
    p.Add(team);
  }
  p.Flush();

  const auto report = [&](const std::string& unit, hamlet::v1::ReportAudience audience) {
    hamlet::v1::GetReportRequest request;
    request.set_unit_code(unit);
    request.set_from_date("2012-01-01");
    request.set_to_date("2017-08-24");
    request.set_audience(audience);
    hamlet::v1::GetReportResponse response;
    const grpc::Status status = admin.stub().GetReport(admin.Context().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  };
  const auto town = report("206", hamlet::v1::REPORT_AUDIENCE_TOWN);
  auto f = Figures(town);
  EXPECT_EQ(f["mediation.outcome.successful"], 572);
  EXPECT_EQ(f["mediation.cases"], 632);
  EXPECT_NEAR(town.mediation_success_percent(), 100.0 * 572 / 632, 1e-9);
  EXPECT_EQ(f["tips.received"], 226);
  EXPECT_EQ(f["tips.result.prosecuted"], 62);
  EXPECT_EQ(f["tips.result.administrative"], 23);
  EXPECT_EQ(f["tips.wanted.arrested"] + f["tips.wanted.surrendered"], 5);
  EXPECT_NEAR(town.average_days_to_forward(), 2.0, 1e-9);
  EXPECT_EQ(f["households.registered"], 27'645);
  EXPECT_EQ(town.villages_registered(), 179u);
  EXPECT_EQ(town.villages(), 19u * 12u);
  EXPECT_EQ(f["teams.self_management"], 194);
  EXPECT_EQ(f["teams.street_protection_board"], 11);
  EXPECT_EQ(town.from_month(), "2012-01");
  EXPECT_EQ(town.to_month(), "2017-08");

  // A commune is the sum of its villages.
  const auto commune = Figures(report("07132", hamlet::v1::REPORT_AUDIENCE_TOWN));
  std::map<std::string, int64_t> sum;
  for (int k = 1; k <= 12; ++k) {
    for (const auto& [metric, count] :
         Figures(report(absl::StrFormat("07132-K%02d", k), hamlet::v1::REPORT_AUDIENCE_TOWN))) {
      sum[metric] += count;
    }
  }
  EXPECT_EQ(commune, sum);

  // Small counts of a village are withheld from the province, not from the town.
  const auto village_town = report(villages[0], hamlet::v1::REPORT_AUDIENCE_TOWN);
  const auto village_province = report(villages[0], hamlet::v1::REPORT_AUDIENCE_PROVINCE);
  bool small = false;
  for (int i = 0; i < village_town.figures_size(); ++i) {
    const auto& t = village_town.figures(i);
    const auto& pv = village_province.figures(i);
    ASSERT_EQ(t.metric(), pv.metric());
    if (t.count() > 0 && t.count() < 3) {
      small = true;
      EXPECT_TRUE(pv.suppressed()) << t.metric();
      EXPECT_EQ(pv.count(), 0);
    } else {
      EXPECT_EQ(pv.count(), t.count()) << t.metric();
    }
  }
  EXPECT_TRUE(small) << "the test data has no small counts to withhold";

  // The tallies survive a restart.
  admin.stub();  // (the admin channel reconnects by itself)
  ASSERT_EQ(server->Stop(), 0);
  server = ServerProcess::Start(dir.Sub("data"));
  ASSERT_NE(server, nullptr);
  hamlet::testing::AdminClient again(*server);
  hamlet::v1::GetReportRequest request;
  request.set_unit_code("206");
  request.set_from_date("2012-01-01");
  request.set_to_date("2017-08-24");
  hamlet::v1::GetReportResponse after;
  ASSERT_TRUE(again.stub().GetReport(again.Context().get(), request, &after).ok());
  EXPECT_EQ(Figures(after), f);

  request.set_unit_code("99999");
  EXPECT_EQ(again.stub().GetReport(again.Context().get(), request, &after).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace hamlet
