// The access rules that decide what crosses between tiers: what a town's
// replication node may write at the province, and what leaves a town at all.
// (Every role against every RPC is tested end to end in
// tests/server/access_e2e_test.cc.)

#include "sync/access.h"

#include <gtest/gtest.h>

#include "sync/merge.h"
#include "tests/support/records.h"

namespace hamlet::sync {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::v1::Record;

constexpr char kId[] = "6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c71";

class AccessTest : public ::testing::Test {
 protected:
  AccessTest() {
    for (const auto& unit : ReferenceUnits()) units_.Put(unit);
  }
  static Principal Replicator(const std::string& unit) { return {hamlet::v1::ROLE_REPLICATION_NODE, unit, "r"}; }
  UnitDirectory units_;
};

TEST_F(AccessTest, AReplicationNodeWritesOnlyWithinItsOwnTown) {
  const Record quang_yen_case = NewCase(kId, "07132-K01", MakeStamp(1000, 0, "dev"));
  const Record co_to_case = NewCase(kId, "07195", MakeStamp(1000, 0, "dev"));
  EXPECT_EQ(ReachOf(Replicator("206"), quang_yen_case, units_), Reach::kWrite);
  EXPECT_EQ(ReachOf(Replicator("206"), co_to_case, units_), Reach::kNone);
  EXPECT_EQ(ReachOf(Replicator("207"), co_to_case, units_), Reach::kWrite);
  // A province-level node (an auditor's replica) reaches every town.
  EXPECT_EQ(ReachOf(Replicator("22"), quang_yen_case, units_), Reach::kWrite);
  EXPECT_EQ(ReachOf(Replicator("22"), co_to_case, units_), Reach::kWrite);
}

TEST_F(AccessTest, AReplicationNodeReadsAdminUnitsButNeverWritesThem) {
  Record unit;
  unit.set_id(kId);
  unit.set_unit_code("22");
  unit.mutable_admin_unit()->set_code("07138");
  EXPECT_EQ(ReachOf(Replicator("206"), unit, units_), Reach::kRead);
}

// A phone carries the admin units its person's work names, not the province's tree: the units
// above its own, and those of its commune (or, for an officer, of the town it serves).
TEST_F(AccessTest, EachPersonReadsTheAdminUnitsTheirWorkNames) {
  const auto reads = [this](const Principal& p, const std::string& code) {
    Record unit;
    unit.set_id(kId);
    unit.set_unit_code("22");
    *unit.mutable_admin_unit() = *units_.Find(code);
    return ReachOf(p, unit, units_) >= Reach::kRead;
  };
  const Principal member{hamlet::v1::ROLE_MEMBER, "07132-K03", "m"};
  for (const char* code : {"22", "206", "07132", "07132-K03", "07132-K12"}) EXPECT_TRUE(reads(member, code)) << code;
  for (const char* code : {"07135", "07135-K01", "207", "07192"}) EXPECT_FALSE(reads(member, code)) << code;

  const Principal justice{hamlet::v1::ROLE_COMMUNE_JUSTICE, "07132", "j"};
  EXPECT_TRUE(reads(justice, "07132-K07"));
  EXPECT_FALSE(reads(justice, "07138"));

  const Principal town{hamlet::v1::ROLE_TOWN_OFFICER, "206", "t"};
  for (const char* code : {"22", "206", "07135", "07189-K12"}) EXPECT_TRUE(reads(town, code)) << code;
  for (const char* code : {"207", "07192", "07195-K01"}) EXPECT_FALSE(reads(town, code)) << code;
  const Principal province{hamlet::v1::ROLE_PROVINCE_OFFICER, "22", "p"};
  EXPECT_TRUE(reads(province, "07195-K01"));

  // A commune merged into the member's stays theirs: older records still name it.
  hamlet::v1::AdminUnit merged = *units_.Find("07138");
  merged.set_valid_to("2025-07-01");
  merged.add_successor_codes("07132");
  units_.Put(merged);
  EXPECT_TRUE(reads(member, "07138"));
  EXPECT_FALSE(reads(member, "07138-K01")) << "its villages were not merged with it";
}

TEST_F(AccessTest, SealedRecordsAndAdminUnitsNeverLeaveTheTown) {
  Record informant = NewCase(kId, "07132", MakeStamp(1000, 0, "dev"));
  informant.mutable_informant_identity()->set_name("Nguyễn Văn A");
  EXPECT_FALSE(PrepareForProvince(&informant));
  EXPECT_EQ(ReachOf(Replicator("206"), informant, units_), Reach::kNone) << "the province refuses one too";

  Record sealed_case = NewCase(kId, "07132", MakeStamp(1000, 0, "dev"));
  sealed_case.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
  EXPECT_FALSE(PrepareForProvince(&sealed_case));
  EXPECT_EQ(ReachOf(Replicator("206"), sealed_case, units_), Reach::kNone);

  Record unit;
  unit.mutable_admin_unit()->set_code("07138");
  EXPECT_FALSE(PrepareForProvince(&unit));
}

TEST_F(AccessTest, PersonalDataIsRedactedBeforeItLeavesAndStampsStay) {
  Record c = NewCase(kId, "07132", MakeStamp(1000, 0, "dev"));
  auto* party = c.mutable_mediation_case()->add_parties();
  party->set_id("p1");
  party->set_name("Trần Thị B");
  party->set_age(52);
  party->set_address("Khu 3");
  party->set_role(hamlet::v1::PARTY_ROLE_REQUESTER);
  auto* lost = c.add_superseded();
  lost->mutable_value()->mutable_mediation_case()->add_parties()->set_name("Trần Thị B (cũ)");
  const int stamps = c.field_stamps_size();
  ASSERT_TRUE(PrepareForProvince(&c));
  ASSERT_EQ(c.mediation_case().parties_size(), 1);
  EXPECT_EQ(c.mediation_case().parties(0).id(), "p1") << "the party stays, so counts and roles do";
  EXPECT_EQ(c.mediation_case().parties(0).role(), hamlet::v1::PARTY_ROLE_REQUESTER);
  EXPECT_TRUE(c.mediation_case().parties(0).name().empty());
  EXPECT_EQ(c.mediation_case().parties(0).age(), 0u);
  EXPECT_TRUE(c.mediation_case().parties(0).address().empty());
  EXPECT_TRUE(c.superseded(0).value().mediation_case().parties(0).name().empty());
  EXPECT_EQ(c.field_stamps_size(), stamps);

  Record house;
  house.set_id(kId);
  house.set_unit_code("07132-K01");
  auto* h = house.mutable_household_registration();
  h->set_household("Hộ ông C");
  h->set_head("Lê Văn C");
  h->set_village("07132-K01");
  h->set_evaluation(hamlet::v1::HOUSEHOLD_EVALUATION_PASS);
  ASSERT_TRUE(PrepareForProvince(&house));
  EXPECT_TRUE(house.household_registration().household().empty());
  EXPECT_TRUE(house.household_registration().head().empty());
  EXPECT_EQ(house.household_registration().village(), "07132-K01");
  EXPECT_EQ(house.household_registration().evaluation(), hamlet::v1::HOUSEHOLD_EVALUATION_PASS);
}

// A pull decides from the change index's facts alone (ReachOfFacts) whom a
// record reaches: for every role, unit, author, type, sensitivity and
// referral here, the facts give what the whole record gives; an admin unit is
// left to the record.
TEST_F(AccessTest, TheFactsOfARecordReachWhomTheRecordReaches) {
  const std::vector<std::string> units = {"07132-K01", "07132-K03", "07132", "07195", "206", "207", "22", ""};
  const std::vector<hamlet::v1::Role> roles = {
      hamlet::v1::ROLE_UNSPECIFIED,      hamlet::v1::ROLE_MEMBER,          hamlet::v1::ROLE_TEAM_LEADER,
      hamlet::v1::ROLE_COMMUNE_POLICE,   hamlet::v1::ROLE_COMMUNE_JUSTICE, hamlet::v1::ROLE_TOWN_OFFICER,
      hamlet::v1::ROLE_PROVINCE_OFFICER, hamlet::v1::ROLE_ADMIN,           hamlet::v1::ROLE_REPLICATION_NODE};
  std::vector<Record> records;
  for (const std::string& unit : units) {
    for (const char* author : {"p", "q"}) {
      for (int type = 0; type < 7; ++type) {
        for (auto sensitivity :
             {hamlet::v1::SENSITIVITY_NORMAL, hamlet::v1::SENSITIVITY_CONFIDENTIAL, hamlet::v1::SENSITIVITY_SEALED}) {
          Record record;
          record.set_id(kId);
          record.set_unit_code(unit);
          record.set_author(author);
          record.set_sensitivity(sensitivity);
          switch (type) {
            case 0:
              record.mutable_mediation_case();
              break;
            case 1:
              record.mutable_mediation_case()->set_transferred_to(hamlet::v1::TRANSFER_TARGET_COMMUNE_POLICE);
              break;
            case 2:
              record.mutable_security_tip();
              break;
            case 3:
              record.mutable_informant_identity();
              break;
            case 4:
              record.mutable_household_registration();
              break;
            case 5:
              record.mutable_team();
              break;
            default:
              break;  // No body.
          }
          records.push_back(record);
        }
      }
    }
  }
  int compared = 0, reached = 0;
  for (const hamlet::v1::Role role : roles) {
    for (const std::string& unit : units) {
      const Principal p{role, unit, "p"};
      for (const Record& record : records) {
        const std::optional<Reach> facts = ReachOfFacts(p, AccessFactsOf(record), units_);
        ASSERT_TRUE(facts.has_value());
        ASSERT_EQ(*facts, ReachOf(p, record, units_))
            << hamlet::v1::Role_Name(role) << " of " << unit << " on " << record.ShortDebugString();
        ++compared;
        if (*facts >= Reach::kRead) ++reached;
      }
    }
  }
  EXPECT_GT(reached, compared / 10);  // The table grants reads, not only refusals.
  EXPECT_LT(reached, compared / 2);
  Record unit;
  unit.set_id(kId);
  unit.set_unit_code("22");
  *unit.mutable_admin_unit() = *units_.Find("07132");
  EXPECT_EQ(ReachOfFacts({hamlet::v1::ROLE_MEMBER, "07132-K01", "p"}, AccessFactsOf(unit), units_), std::nullopt);
}

}  // namespace
}  // namespace hamlet::sync
