#include "sync/lifecycle.h"

#include <gtest/gtest.h>

#include "sync/change.h"
#include "sync/merge.h"
#include "sync/schema.h"
#include "tests/support/records.h"
#include "tests/support/status_matchers.h"

namespace hamlet::sync {
namespace {

using hamlet::testing::CaseStatusChange;
using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::testing::StatusIs;
using hamlet::v1::MediationCase;
using hamlet::v1::Record;
using ::testing::HasSubstr;

constexpr char kId[] = "6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c71";
const absl::StatusCode kPrecondition = absl::StatusCode::kFailedPrecondition;

Record At(hamlet::v1::MediationStatus status, uint32_t round = 1) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record state;
  MergeRecord(created, &state);
  if (status != hamlet::v1::MEDIATION_STATUS_RECEIVED) {
    MergeRecord(CaseStatusChange(created, status, MakeStamp(2000, 0, "a"), round), &state);
  }
  return state;
}

TEST(LifecycleTest, DeclaredMovesAreLegal) {
  const Record received = At(hamlet::v1::MEDIATION_STATUS_RECEIVED);
  for (auto next : {hamlet::v1::MEDIATION_STATUS_ASSIGNED, hamlet::v1::MEDIATION_STATUS_WITHDRAWN,
                    hamlet::v1::MEDIATION_STATUS_OUT_OF_SCOPE}) {
    EXPECT_TRUE(CheckLifecycleMoves(received, CaseStatusChange(received, next, MakeStamp(3000, 0, "a")),
                                    Authority::kTeam, Vantage::kWriterSawState)
                    .ok());
  }
  const Record unsuccessful = At(hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL);
  EXPECT_TRUE(CheckLifecycleMoves(
                  unsuccessful,
                  CaseStatusChange(unsuccessful, hamlet::v1::MEDIATION_STATUS_IN_MEDIATION, MakeStamp(3000, 0, "a"), 2),
                  Authority::kTeam, Vantage::kWriterSawState)
                  .ok());
}

TEST(LifecycleTest, SkippingStatesIsRefusedWithWhatIsAllowed) {
  const Record received = At(hamlet::v1::MEDIATION_STATUS_RECEIVED);
  const absl::Status status = CheckLifecycleMoves(
      received, CaseStatusChange(received, hamlet::v1::MEDIATION_STATUS_CLOSED, MakeStamp(3000, 0, "a")),
      Authority::kTeam, Vantage::kServer);
  EXPECT_THAT(status, StatusIs(kPrecondition, HasSubstr("is MEDIATION_STATUS_RECEIVED (round 1)")));
  EXPECT_THAT(status, StatusIs(kPrecondition, HasSubstr("MEDIATION_STATUS_ASSIGNED (same round)")));
}

TEST(LifecycleTest, ANewRoundMustBeTheNextOne) {
  const Record unsuccessful = At(hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL);
  EXPECT_THAT(CheckLifecycleMoves(
                  unsuccessful,
                  CaseStatusChange(unsuccessful, hamlet::v1::MEDIATION_STATUS_IN_MEDIATION, MakeStamp(3000, 0, "a"), 3),
                  Authority::kTeam, Vantage::kServer),
              StatusIs(kPrecondition));
}

TEST(LifecycleTest, OnlyACommuneRoleReopensAClosedCase) {
  const Record closed = At(hamlet::v1::MEDIATION_STATUS_CLOSED);
  const Record reopen = CaseStatusChange(closed, hamlet::v1::MEDIATION_STATUS_IN_MEDIATION, MakeStamp(3000, 0, "a"), 2);
  EXPECT_THAT(CheckLifecycleMoves(closed, reopen, Authority::kTeam, Vantage::kServer),
              StatusIs(kPrecondition, HasSubstr("only a commune-level role")));
  EXPECT_TRUE(CheckLifecycleMoves(closed, reopen, Authority::kCommune, Vantage::kServer).ok());
  EXPECT_TRUE(OnlyLifecycle(reopen));
}

TEST(LifecycleTest, ANewCaseStartsReceivedInRoundOne) {
  const Record fresh = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  EXPECT_TRUE(CheckLifecycleMoves(Record(), fresh, Authority::kTeam, Vantage::kServer).ok());
  Record round_two = fresh;
  round_two.mutable_mediation_case()->set_round(2);
  EXPECT_THAT(CheckLifecycleMoves(Record(), round_two, Authority::kTeam, Vantage::kServer), StatusIs(kPrecondition));
  Record closed = fresh;
  closed.mutable_mediation_case()->set_status(hamlet::v1::MEDIATION_STATUS_CLOSED);
  EXPECT_THAT(CheckLifecycleMoves(Record(), closed, Authority::kTeam, Vantage::kServer), StatusIs(kPrecondition));
}

TEST(LifecycleTest, TheWriterMayNotMoveBackFromWhatItSees) {
  const Record successful = At(hamlet::v1::MEDIATION_STATUS_SUCCESSFUL);
  const Record back = CaseStatusChange(successful, hamlet::v1::MEDIATION_STATUS_ASSIGNED, MakeStamp(3000, 0, "a"));
  EXPECT_THAT(CheckLifecycleMoves(successful, back, Authority::kTeam, Vantage::kWriterSawState),
              StatusIs(kPrecondition, HasSubstr("can only move forward")));
  // On the server the same change is just late: the merge orders it.
  EXPECT_TRUE(CheckLifecycleMoves(successful, back, Authority::kTeam, Vantage::kServer).ok());
  // Staying put is no move.
  const Record same = CaseStatusChange(successful, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, MakeStamp(3000, 0, "a"));
  EXPECT_TRUE(CheckLifecycleMoves(successful, same, Authority::kTeam, Vantage::kWriterSawState).ok());
}

// Phone A closes the case; phone B, offline, recorded "unsuccessful" and then
// started a second round. B moved legally from what it saw; the server knows
// that state from the superseded values and takes B's round.
TEST(LifecycleTest, AMoveFromAStateOthersOvertookIsStillLegal) {
  const Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record server;
  MergeRecord(created, &server);
  for (auto status : {hamlet::v1::MEDIATION_STATUS_ASSIGNED, hamlet::v1::MEDIATION_STATUS_IN_MEDIATION}) {
    MergeRecord(CaseStatusChange(created, status, MakeStamp(1100 + status, 0, "a")), &server);
  }
  const Record a_ok = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, MakeStamp(2000, 0, "a"));
  const Record a_closed = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_CLOSED, MakeStamp(2100, 0, "a"));
  const Record b_not_ok = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL, MakeStamp(2050, 0, "b"));
  const Record b_round_two =
      CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_IN_MEDIATION, MakeStamp(2150, 0, "b"), 2);
  for (const Record* change : {&a_ok, &a_closed, &b_not_ok, &b_round_two}) {
    ASSERT_TRUE(CheckLifecycleMoves(server, *change, Authority::kTeam, Vantage::kServer).ok());
    MergeRecord(*change, &server);
  }
  EXPECT_EQ(server.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_IN_MEDIATION);
  EXPECT_EQ(server.mediation_case().round(), 2u);
}

// A resolution settles the competing values, not a later state the resolver
// never saw.
TEST(LifecycleTest, AResolutionDoesNotSettleALaterStateItNeverSaw) {
  const Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  const Record ok = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, MakeStamp(2000, 0, "a"));
  const Record not_ok = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL, MakeStamp(2100, 0, "b"));
  const Record closed_offline = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_CLOSED, MakeStamp(2200, 0, "c"));
  Record resolution = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, MakeStamp(3000, 0, "leader"));
  hamlet::v1::FieldStamp lead = *FindFieldStamp(resolution, MediationCase::kStatusFieldNumber);
  *lead.mutable_supersedes() = MakeStamp(2300, 0, "b");
  PutFieldStamp(&resolution, lead);
  Record a, b;
  for (const Record* c : std::vector<const Record*>{&created, &ok, &not_ok, &resolution, &closed_offline}) {
    MergeRecord(*c, &a);
  }
  for (const Record* c : std::vector<const Record*>{&closed_offline, &resolution, &not_ok, &created, &ok}) {
    MergeRecord(*c, &b);
  }
  EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString());
  EXPECT_EQ(a.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_CLOSED);
  EXPECT_EQ(a.conflicts_size(), 0);
}

TEST(BuildChangeTest, SetsAreDiffedAndRemovalsTombstoned) {
  Record state = At(hamlet::v1::MEDIATION_STATUS_RECEIVED);
  MediationCase body;
  body.add_mediators("hgv-01");
  body.add_mediators("hgv-02");
  auto change = BuildChange(state, body, {MediationCase::kMediatorsFieldNumber}, MakeStamp(3000, 0, "a"));
  ASSERT_TRUE(change.ok()) << change.status();
  MergeRecord(*change, &state);
  body.clear_mediators();
  body.add_mediators("hgv-02");
  auto removal = BuildChange(state, body, {MediationCase::kMediatorsFieldNumber}, MakeStamp(4000, 0, "a"));
  ASSERT_TRUE(removal.ok());
  EXPECT_EQ(removal->mediation_case().mediators_size(), 0) << "an unchanged element is not sent again";
  const auto* tombstone = FindFieldStamp(*removal, MediationCase::kMediatorsFieldNumber, "hgv-01");
  ASSERT_NE(tombstone, nullptr);
  EXPECT_EQ(tombstone->removed().physical_ms(), 3000);
  MergeRecord(*removal, &state);
  ASSERT_EQ(state.mediation_case().mediators_size(), 1);
  EXPECT_EQ(state.mediation_case().mediators(0), "hgv-02");
}

TEST(BuildChangeTest, SessionsCannotBeRemovedOrRewritten) {
  Record state = At(hamlet::v1::MEDIATION_STATUS_IN_MEDIATION);
  MediationCase body;
  auto* session = body.add_sessions();
  session->set_id("s1");
  session->set_notes("lần 1");
  auto added = BuildChange(state, body, {MediationCase::kSessionsFieldNumber}, MakeStamp(3000, 0, "a"));
  ASSERT_TRUE(added.ok());
  MergeRecord(*added, &state);
  session->set_notes("viết lại");
  EXPECT_THAT(BuildChange(state, body, {MediationCase::kSessionsFieldNumber}, MakeStamp(4000, 0, "a")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot be changed")));
  body.clear_sessions();
  EXPECT_THAT(BuildChange(state, body, {MediationCase::kSessionsFieldNumber}, MakeStamp(4000, 0, "a")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot be removed")));
}

TEST(BuildChangeTest, LifecyclePartnersTravelAndANewRoundDropsTheOldOutcome) {
  Record state = At(hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL);
  state.mutable_mediation_case()->set_outcome(hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
  MediationCase body;
  body.set_status(hamlet::v1::MEDIATION_STATUS_CLOSED);
  auto close = BuildChange(state, body, {MediationCase::kStatusFieldNumber}, MakeStamp(3000, 0, "a"));
  ASSERT_TRUE(close.ok());
  EXPECT_EQ(close->mediation_case().round(), 1u);
  EXPECT_EQ(close->mediation_case().outcome(), hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
  EXPECT_NE(FindFieldStamp(*close, MediationCase::kOutcomeFieldNumber), nullptr);
  body.set_status(hamlet::v1::MEDIATION_STATUS_IN_MEDIATION);
  body.set_round(2);
  auto reopen = BuildChange(state, body, {MediationCase::kStatusFieldNumber, MediationCase::kRoundFieldNumber},
                            MakeStamp(3000, 0, "a"));
  ASSERT_TRUE(reopen.ok());
  EXPECT_EQ(reopen->mediation_case().outcome(), hamlet::v1::MEDIATION_OUTCOME_UNSPECIFIED);
}

TEST(SchemaTest, EveryRecordTypeHasWellFormedRules) {
  const auto* oneof = Record::descriptor()->FindOneofByName("body");
  for (int i = 0; i < oneof->field_count(); ++i) {
    const BodySchema& schema = BodySchema::For(oneof->field(i)->message_type());  // Aborts if malformed.
    EXPECT_EQ(schema.rules().size(), static_cast<size_t>(oneof->field(i)->message_type()->field_count()));
  }
  const BodySchema& cases = BodySchema::For(MediationCase::descriptor());
  const auto* status = MediationCase::descriptor()->FindFieldByName("status");
  ASSERT_EQ(cases.group(status).size(), 3u);
  EXPECT_EQ(cases.round(status)->name(), "round");
  EXPECT_EQ(cases.rule(MediationCase::kSessionsFieldNumber).policy, hamlet::v1::MERGE_POLICY_APPEND_ONLY);
  EXPECT_EQ(cases.rule(MediationCase::kPartiesFieldNumber).key->name(), "id");
  EXPECT_EQ(cases.rule(MediationCase::kMediatorsFieldNumber).key, nullptr);
  const BodySchema& tips = BodySchema::For(hamlet::v1::SecurityTip::descriptor());
  EXPECT_EQ(tips.group(hamlet::v1::SecurityTip::descriptor()->FindFieldByName("status")).size(), 3u);
}

}  // namespace
}  // namespace hamlet::sync
