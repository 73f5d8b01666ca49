#include "sync/report.h"

#include <gtest/gtest.h>

#include "tests/support/records.h"

namespace hamlet::sync {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::v1::Record;

int64_t Get(const Tallies& t, const std::string& unit, int32_t month, const std::string& metric) {
  auto it = t.find({unit, month, metric});
  return it == t.end() ? 0 : it->second;
}

TEST(ReportTest, MonthsOfDates) {
  EXPECT_EQ(MonthOfDate("2017-08-24"), 201708);
  EXPECT_EQ(MonthOfDate("2017-13-01"), 0);
  EXPECT_EQ(MonthOfDate("17-08-24"), 0);
  EXPECT_EQ(MonthOfDate(""), 0);
}

TEST(ReportTest, AMediationCaseCountsByOutcomeAndDisputeType) {
  Record c = NewCase("6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c71", "07132-K03", MakeStamp(1000, 0, "a"));
  c.mutable_mediation_case()->set_date_received("2016-03-09");
  c.mutable_mediation_case()->set_dispute_type(hamlet::v1::DISPUTE_TYPE_LAND);
  c.mutable_mediation_case()->set_outcome(hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
  const Tallies t = TalliesOf(c);
  EXPECT_EQ(Get(t, "07132-K03", 201603, "mediation.cases"), 1);
  EXPECT_EQ(Get(t, "07132-K03", 201603, "mediation.dispute.land"), 1);
  EXPECT_EQ(Get(t, "07132-K03", 201603, "mediation.outcome.successful"), 1);
  EXPECT_EQ(t.size(), 3u);
}

TEST(ReportTest, ATipCountsItsDaysToForwardAndResult) {
  Record tip;
  tip.set_unit_code("07135");
  auto* t = tip.mutable_security_tip();
  t->mutable_received_time()->set_seconds(1'483'228'800);  // 2017-01-01 00:00 UTC
  t->mutable_forwarded_time()->set_seconds(1'483'228'800 + 3 * 86400);
  t->mutable_result_time()->set_seconds(1'483'228'800 + 20 * 86400 + 5);
  t->set_category(hamlet::v1::TIP_CATEGORY_DRUGS);
  t->set_result(hamlet::v1::TIP_RESULT_PROSECUTED);
  t->set_wanted_person_outcome(hamlet::v1::WANTED_PERSON_OUTCOME_SURRENDERED);
  const Tallies tallies = TalliesOf(tip);
  EXPECT_EQ(Get(tallies, "07135", 201701, "tips.received"), 1);
  EXPECT_EQ(Get(tallies, "07135", 201701, "tips.category.drugs"), 1);
  EXPECT_EQ(Get(tallies, "07135", 201701, "tips.result.prosecuted"), 1);
  EXPECT_EQ(Get(tallies, "07135", 201701, "tips.wanted.surrendered"), 1);
  EXPECT_EQ(Get(tallies, "07135", 201701, "tips.days_to_forward"), 3);
  EXPECT_EQ(Get(tallies, "07135", 201701, "tips.days_to_result"), 20);
}

// Found with tests/fuzz/push_fuzzer (input: tests/fuzz/regressions/push/
// tip_days_overflow): a device's tip with times at the ends of int64 made the
// days between them a signed overflow, undefined behaviour in every push of it.
TEST(ReportTest, TimesTooFarApartAddNoDays) {
  Record tip;
  tip.set_unit_code("07132-K01");
  tip.mutable_create_time()->set_seconds(1'796'000'000);
  auto* t = tip.mutable_security_tip();
  t->mutable_received_time()->set_seconds(INT64_MIN);
  t->mutable_forwarded_time()->set_seconds(INT64_MAX);
  t->mutable_result_time()->set_seconds(INT64_MAX);
  Tallies delta;
  AddTallyDelta(Record(), tip, &delta);
  int64_t forwarded = 0, days = 0;
  for (const auto& [key, n] : delta) {
    if (key.metric == "tips.forwarded") forwarded += n;
    if (key.metric == "tips.days_to_forward" || key.metric == "tips.days_to_result") days += n;
  }
  EXPECT_EQ(forwarded, 1);
  EXPECT_EQ(days, 0);
}

TEST(ReportTest, AChangeMovesCountsAndADeletionOrSealRemovesThem) {
  Record before = NewCase("6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c71", "07132", MakeStamp(1000, 0, "a"));
  before.mutable_mediation_case()->set_date_received("2016-03-09");
  before.mutable_mediation_case()->set_outcome(hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
  Record after = before;
  after.mutable_mediation_case()->set_outcome(hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
  Tallies delta;
  AddTallyDelta(before, after, &delta);
  EXPECT_EQ(delta.size(), 2u) << "the case count itself does not change";
  EXPECT_EQ(Get(delta, "07132", 201603, "mediation.outcome.unsuccessful"), -1);
  EXPECT_EQ(Get(delta, "07132", 201603, "mediation.outcome.successful"), 1);
  Record deleted = after;
  deleted.set_deleted(true);
  Tallies gone;
  AddTallyDelta(after, deleted, &gone);
  EXPECT_EQ(Get(gone, "07132", 201603, "mediation.cases"), -1);
  Record sealed = after;
  sealed.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
  EXPECT_TRUE(TalliesOf(sealed).empty());
}

TEST(ReportTest, SmallCountsBelowCommuneLevelAreWithheldFromTheProvince) {
  EXPECT_TRUE(Suppressed(1, true, true));
  EXPECT_TRUE(Suppressed(2, true, true));
  EXPECT_FALSE(Suppressed(3, true, true));
  EXPECT_FALSE(Suppressed(0, true, true));
  EXPECT_FALSE(Suppressed(2, false, true));
  EXPECT_FALSE(Suppressed(2, true, false));
}

}  // namespace
}  // namespace hamlet::sync
