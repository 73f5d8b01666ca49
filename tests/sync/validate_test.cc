#include "sync/validate.h"

#include <gtest/gtest.h>

#include "sync/merge.h"
#include "tests/support/records.h"
#include "tests/support/status_matchers.h"

namespace hamlet::sync {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::testing::StatusIs;
using hamlet::v1::Record;
using ::testing::HasSubstr;

constexpr char kId[] = "6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c71";
const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

class ValidateTest : public ::testing::Test {
 protected:
  ValidateTest() {
    for (const auto& unit : ReferenceUnits()) units_.Put(unit);
  }
  Record Valid() const { return NewCase(kId, "07132", MakeStamp(1000, 0, "dev")); }
  UnitDirectory units_;
};

TEST_F(ValidateTest, AcceptsAWellFormedCase) { EXPECT_TRUE(ValidateChange(Valid(), units_).ok()); }

TEST_F(ValidateTest, RefusesBadIds) {
  Record r = Valid();
  r.set_id("case-1");
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("not a UUID")));
  EXPECT_TRUE(IsUuid("6F1C3A52-0D7E-4C1B-9A43-2B8F0E6D5C71"));
  EXPECT_FALSE(IsUuid("6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c7"));
  EXPECT_FALSE(IsUuid("6f1c3a52x0d7e-4c1b-9a43-2b8f0e6d5c71"));
}

TEST_F(ValidateTest, RefusesUnknownOrMissingUnit) {
  Record r = Valid();
  r.set_unit_code("99999");
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("does not exist")));
  r.clear_unit_code();
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("unit_code is required")));
}

TEST_F(ValidateTest, RefusesMissingBody) {
  Record r = Valid();
  r.clear_mediation_case();
  r.clear_field_stamps();
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("no body")));
}

TEST_F(ValidateTest, RefusesUnstampedField) {
  Record r = Valid();
  r.mutable_mediation_case()->set_ledger_number("12/2017");
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("ledger_number is set but has no stamp")));
}

// A newer app's field arrives in the body's unknown fields, stamped like any
// other; it is kept as a plain value.
TEST_F(ValidateTest, AcceptsAStampedFieldOfANewerApp) {
  Record r = Valid();
  r.mutable_mediation_case()
      ->GetReflection()
      ->MutableUnknownFields(r.mutable_mediation_case())
      ->AddLengthDelimited(99, "a newer app's note");
  SetFieldStamp(&r, 99, MakeStamp(1000, 0, "dev"));
  EXPECT_TRUE(ValidateChange(r, units_).ok());
  // Cleared by the newer app: a stamp without a value.
  r = Valid();
  SetFieldStamp(&r, 99, MakeStamp(1000, 0, "dev"));
  EXPECT_TRUE(ValidateChange(r, units_).ok());
}

TEST_F(ValidateTest, RefusesWhatANewerAppFieldCannotBe) {
  Record r = Valid();
  r.mutable_mediation_case()
      ->GetReflection()
      ->MutableUnknownFields(r.mutable_mediation_case())
      ->AddLengthDelimited(99, "unstamped");
  EXPECT_THAT(ValidateChange(r, units_),
              StatusIs(kInvalid, HasSubstr("field 99 (unknown to this server) is set but has no stamp")));
  r = Valid();
  hamlet::v1::FieldStamp keyed;
  keyed.set_field(99);
  keyed.set_key("k");
  *keyed.mutable_stamp() = MakeStamp(1000, 0, "dev");
  PutFieldStamp(&r, keyed);
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("takes no key, removed or supersedes")));
  r = Valid();
  SetFieldStamp(&r, 19500, MakeStamp(1000, 0, "dev"));  // Protobuf's own reserved range.
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("stamp for field 19500")));
  // A known field number with another wire type: the schemas disagree.
  r = Valid();
  r.mutable_mediation_case()
      ->GetReflection()
      ->MutableUnknownFields(r.mutable_mediation_case())
      ->AddLengthDelimited(hamlet::v1::MediationCase::kRoundFieldNumber, "not a number");
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("another wire type")));
  // A newer app's envelope field cannot be merged: refused, not dropped.
  r = Valid();
  r.GetReflection()->MutableUnknownFields(&r)->AddVarint(77, 1);
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("Record field 77 is unknown")));
}

TEST_F(ValidateTest, RefusesStampsOutOfOrderOrWithoutNode) {
  Record r = Valid();
  r.mutable_field_stamps()->SwapElements(0, 1);
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("ordered by (field, key)")));
  r = Valid();
  r.mutable_field_stamps(0)->mutable_stamp()->clear_node();
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("needs a positive physical_ms and a node")));
}

TEST_F(ValidateTest, KeepsANewerAppsEnumValuesButNotItsLifecycleStatesOrSensitivities) {
  Record r = Valid();
  r.mutable_mediation_case()->set_dispute_type(static_cast<hamlet::v1::DisputeType>(42));
  SetFieldStamp(&r, hamlet::v1::MediationCase::kDisputeTypeFieldNumber, MakeStamp(1000, 0, "dev"));
  auto* party = r.mutable_mediation_case()->add_parties();
  party->set_id("p1");
  party->set_role(static_cast<hamlet::v1::PartyRole>(9));
  hamlet::v1::FieldStamp fs;
  fs.set_field(hamlet::v1::MediationCase::kPartiesFieldNumber);
  fs.set_key("p1");
  *fs.mutable_stamp() = MakeStamp(1000, 0, "dev");
  PutFieldStamp(&r, fs);
  EXPECT_TRUE(ValidateChange(r, units_).ok());

  r = Valid();
  r.mutable_mediation_case()->set_status(static_cast<hamlet::v1::MediationStatus>(42));
  EXPECT_THAT(ValidateChange(r, units_),
              StatusIs(kInvalid, HasSubstr("status = 42 is a state this server does not know")));
  r = Valid();
  r.set_sensitivity(static_cast<hamlet::v1::Sensitivity>(7));
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("sensitivity 7 is unknown")));
}

TEST_F(ValidateTest, RefusesSetElementsWithoutMatchingStamps) {
  Record r = Valid();
  r.mutable_mediation_case()->add_mediators("hgv-02");
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("element \"hgv-02\" has no stamp")));
  SetFieldStamp(&r, hamlet::v1::MediationCase::kMediatorsFieldNumber, MakeStamp(1000, 0, "dev"));
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("is a set: stamp each element")));

  Record removed = Valid();
  removed.mutable_mediation_case()->add_mediators("hgv-02");
  hamlet::v1::FieldStamp fs;
  fs.set_field(hamlet::v1::MediationCase::kMediatorsFieldNumber);
  fs.set_key("hgv-02");
  *fs.mutable_stamp() = MakeStamp(1000, 0, "dev");
  *fs.mutable_removed() = MakeStamp(1000, 0, "dev");
  PutFieldStamp(&removed, fs);
  EXPECT_THAT(ValidateChange(removed, units_), StatusIs(kInvalid, HasSubstr("stamped as removed but still there")));
  removed.mutable_mediation_case()->clear_mediators();
  EXPECT_TRUE(ValidateChange(removed, units_).ok());
}

TEST_F(ValidateTest, RefusesRemovalFromAnAppendOnlyList) {
  Record r = Valid();
  hamlet::v1::FieldStamp fs;
  fs.set_field(hamlet::v1::MediationCase::kSessionsFieldNumber);
  fs.set_key("s1");
  *fs.mutable_stamp() = MakeStamp(1000, 0, "dev");
  *fs.mutable_removed() = MakeStamp(1000, 0, "dev");
  PutFieldStamp(&r, fs);
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("elements cannot be removed")));
}

TEST_F(ValidateTest, LifecycleFieldsTravelTogether) {
  Record r = Valid();
  r.mutable_field_stamps()->RemoveLast();  // outcome (11) loses its stamp.
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("status, round, outcome")));
  r = Valid();
  SetFieldStamp(&r, hamlet::v1::MediationCase::kRoundFieldNumber, MakeStamp(1001, 0, "dev"));
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("with one stamp")));
}

TEST_F(ValidateTest, OnlyAResolutionMaySettleConflicts) {
  Record r = Valid();
  hamlet::v1::FieldStamp lead = *FindFieldStamp(r, hamlet::v1::MediationCase::kStatusFieldNumber);
  *lead.mutable_supersedes() = MakeStamp(999, 0, "x");
  PutFieldStamp(&r, lead);
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("only ResolveConflict")));
  EXPECT_TRUE(ValidateChange(r, units_, ChangeOrigin::kResolution).ok());
  Record with_conflict = Valid();
  with_conflict.add_conflicts()->set_field(9);
  EXPECT_THAT(ValidateChange(with_conflict, units_), StatusIs(kInvalid, HasSubstr("kept by the server")));
}

TEST_F(ValidateTest, AReplicaCarriesWholeStatesOfItsOwnType) {
  Record state = Valid();
  hamlet::v1::FieldStamp lead = *FindFieldStamp(state, hamlet::v1::MediationCase::kStatusFieldNumber);
  *lead.mutable_supersedes() = MakeStamp(999, 0, "x");
  PutFieldStamp(&state, lead);
  auto* value = state.add_conflicts()->add_values();
  value->mutable_value()->mutable_mediation_case()->set_status(hamlet::v1::MEDIATION_STATUS_SUCCESSFUL);
  state.add_superseded()->mutable_value()->mutable_mediation_case()->set_summary("older");
  EXPECT_TRUE(ValidateChange(state, units_, ChangeOrigin::kReplica).ok());
  EXPECT_THAT(ValidateChange(state, units_, ChangeOrigin::kDevice), StatusIs(kInvalid));

  Record mixed = state;
  mixed.mutable_superseded(0)->mutable_value()->mutable_security_tip()->set_summary("a tip");
  EXPECT_THAT(ValidateChange(mixed, units_, ChangeOrigin::kReplica),
              StatusIs(kInvalid, HasSubstr("superseded value of another record type")));
  mixed = state;
  mixed.mutable_conflicts(0)->mutable_values(0)->mutable_value()->mutable_team();
  EXPECT_THAT(ValidateChange(mixed, units_, ChangeOrigin::kReplica),
              StatusIs(kInvalid, HasSubstr("conflicting value of another record type")));
}

// Found by tests/fuzz/merge_fuzzer (input: tests/fuzz/regressions/merge/
// field_stamp_with_unknown_field). A stamp is compared and copied whole by
// the merge, so a field in it this server does not know made a change that
// was merged already change the state again (a ⊔ b ⊔ b != a ⊔ b): servers
// holding the same changes held different bytes.
TEST_F(ValidateTest, RefusesStampsWithFieldsUnknownToThisServer) {
  const Record created = Valid();
  Record edit = EmptyChangeOf(created);
  auto* party = edit.mutable_mediation_case()->add_parties();
  party->set_id("p1");
  party->set_name("Nguyễn Văn An");
  hamlet::v1::FieldStamp fs;
  fs.set_field(hamlet::v1::MediationCase::kPartiesFieldNumber);
  fs.set_key("p1");
  *fs.mutable_stamp() = MakeStamp(1, 0, "n#1");
  PutFieldStamp(&edit, fs);
  EXPECT_TRUE(ValidateChange(edit, units_).ok());
  // Field 6 {1: 2500, 3: "c"}, as the fuzzer sent it.
  fs.GetReflection()->MutableUnknownFields(&fs)->AddLengthDelimited(6, std::string("\x08\xc4\x13\x1a\x01\x63", 6));
  PutFieldStamp(&edit, fs);
  EXPECT_THAT(ValidateChange(edit, units_), StatusIs(kInvalid, HasSubstr("unknown to this server")));

  Record deleted = Valid();
  deleted.set_deleted(true);
  *deleted.mutable_deleted_stamp() = MakeStamp(2000, 0, "dev");
  EXPECT_TRUE(ValidateChange(deleted, units_).ok());
  deleted.mutable_deleted_stamp()
      ->GetReflection()
      ->MutableUnknownFields(deleted.mutable_deleted_stamp())
      ->AddVarint(4, 1);
  EXPECT_THAT(ValidateChange(deleted, units_), StatusIs(kInvalid, HasSubstr("unknown to this server")));

  Record created_at = Valid();
  created_at.mutable_create_time()
      ->GetReflection()
      ->MutableUnknownFields(created_at.mutable_create_time())
      ->AddVarint(3, 1);
  EXPECT_THAT(ValidateChange(created_at, units_), StatusIs(kInvalid, HasSubstr("unknown to this server")));

  Record state = Valid();
  auto* value = state.add_conflicts()->add_values();
  value->mutable_value()->mutable_mediation_case()->set_status(hamlet::v1::MEDIATION_STATUS_SUCCESSFUL);
  *value->mutable_stamp() = MakeStamp(1500, 0, "x");
  EXPECT_TRUE(ValidateChange(state, units_, ChangeOrigin::kReplica).ok());
  value->mutable_stamp()->GetReflection()->MutableUnknownFields(value->mutable_stamp())->AddVarint(9, 1);
  EXPECT_THAT(ValidateChange(state, units_, ChangeOrigin::kReplica),
              StatusIs(kInvalid, HasSubstr("unknown to this server")));
}

TEST_F(ValidateTest, RefusesDeletionWithoutStampAndOutputOnlyFields) {
  Record r = Valid();
  r.set_deleted(true);
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("deleted_stamp")));
  r = Valid();
  r.set_server_seq(5);
  EXPECT_THAT(ValidateChange(r, units_), StatusIs(kInvalid, HasSubstr("output only")));
}

TEST_F(ValidateTest, ExistingRecordKeepsTypeUnitAndAuthor) {
  const Record existing = Valid();
  Record other_type = existing;
  other_type.clear_mediation_case();
  other_type.mutable_security_tip();
  EXPECT_THAT(CheckSameRecord(other_type, existing),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("type cannot change")));
  Record other_unit = existing;
  other_unit.set_unit_code("07135");
  EXPECT_THAT(CheckSameRecord(other_unit, existing),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("unit cannot change")));
  Record other_sensitivity = existing;
  other_sensitivity.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
  EXPECT_THAT(CheckSameRecord(other_sensitivity, existing),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("sensitivity cannot change")));
  Record other_author = existing;
  other_author.set_author("someone-else");
  EXPECT_THAT(CheckSameRecord(other_author, existing),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("author cannot change")));
  EXPECT_TRUE(CheckSameRecord(existing, existing).ok());
}

TEST_F(ValidateTest, NewRecordNeedsAuthorAndCreateTime) {
  Record r = Valid();
  r.clear_author();
  EXPECT_THAT(CheckCreatable(r), StatusIs(kInvalid, HasSubstr("needs author and create_time")));
}

TEST(UnitDirectoryTest, QuangYenHasNineteenCommunesWithTwelveVillagesEach) {
  UnitDirectory units;
  for (const auto& unit : ReferenceUnits()) units.Put(unit);
  int communes = 0;
  for (const std::string& code : units.Within("206")) {
    if (units.Find(code)->level() == hamlet::v1::UNIT_LEVEL_COMMUNE) ++communes;
  }
  EXPECT_EQ(communes, 19);
  EXPECT_EQ(units.Within("206").size(), 1u + 19u * 13u);
  EXPECT_EQ(units.Within("207").size(), 1u + 3u * 13u);
  EXPECT_EQ(units.size(), 1u + (1u + 19u * 13u) + (1u + 3u * 13u));
  EXPECT_TRUE(units.IsWithin("07132-K05", "22"));
  EXPECT_TRUE(units.IsWithin("07195", "207"));
  EXPECT_FALSE(units.IsWithin("07195", "206"));
  EXPECT_EQ(units.CommuneOf("07132-K05"), "07132");
  EXPECT_EQ(units.CommuneOf("07189"), "07189");
  EXPECT_EQ(units.CommuneOf("206"), "");
  EXPECT_EQ(units.Find("07144")->name(), "Xã Sông Khoai");
}

}  // namespace
}  // namespace hamlet::sync
