// LinkPace (client/protocol.h): how the reference client sizes its calls
// and their deadlines from what the link has shown.
#include <gtest/gtest.h>

#include "client/protocol.h"

namespace hamlet::field {
namespace {

TEST(LinkPaceTest, StartsSmallWithADeadlineASlowLinkCanMeet) {
  LinkPace pace;
  EXPECT_EQ(pace.budget_bytes(), 16u << 10);
  EXPECT_EQ(pace.bytes_per_second(), 0);
  // 10 s, plus three times 16 KiB at the assumed 2,000 bytes a second.
  EXPECT_EQ(pace.DeadlineFor(16 << 10), absl::Seconds(10) + absl::Seconds(3.0 * 16384 / 2000));
}

TEST(LinkPaceTest, QuickCallsGrowTheNextUpToTheCeiling) {
  LinkPace::Options options;
  options.max_bytes = 64 << 10;
  LinkPace pace(options);
  pace.Finished(16 << 10, absl::Milliseconds(500));
  EXPECT_EQ(pace.budget_bytes(), 32u << 10);
  EXPECT_DOUBLE_EQ(pace.bytes_per_second(), 32768.0);
  pace.Finished(32 << 10, absl::Milliseconds(500));
  pace.Finished(64 << 10, absl::Milliseconds(500));
  EXPECT_EQ(pace.budget_bytes(), 64u << 10);
  // The deadline follows the measured rate now (an average of the calls'
  // rates, 90,112 bytes a second), not the cautious first guess.
  EXPECT_EQ(pace.DeadlineFor(64 << 10), absl::Seconds(10) + absl::Seconds(3.0 * 65536 / 90112));
  EXPECT_LT(pace.DeadlineFor(64 << 10), LinkPace().DeadlineFor(64 << 10) / 5);
}

TEST(LinkPaceTest, SlowCallsAndTimeoutsShrinkTheNextDownToTheFloor) {
  LinkPace pace;
  pace.Finished(16 << 10, absl::Seconds(3));  // Between quick and four times quick: unchanged.
  EXPECT_EQ(pace.budget_bytes(), 16u << 10);
  pace.Finished(16 << 10, absl::Seconds(9));
  EXPECT_EQ(pace.budget_bytes(), 8u << 10);
  const absl::Duration before = pace.DeadlineFor(8 << 10);
  pace.TimedOut();
  EXPECT_EQ(pace.budget_bytes(), 4u << 10);
  // What was measured overstated the link: the same bytes get longer.
  EXPECT_GT(pace.DeadlineFor(8 << 10), before);
  for (int i = 0; i < 10; ++i) pace.TimedOut();
  EXPECT_EQ(pace.budget_bytes(), 2u << 10);
}

TEST(LinkPaceTest, ATimeoutBeforeAnyMeasureHalvesTheAssumedRateAndDoublesTheAllowance) {
  LinkPace pace;
  const absl::Duration before = pace.DeadlineFor(4 << 10);
  pace.TimedOut();
  EXPECT_EQ(pace.DeadlineFor(4 << 10), before * 2);
  for (int i = 0; i < 10; ++i) pace.TimedOut();
  // The allowance stops at two minutes; the transfer part keeps growing.
  EXPECT_GT(pace.DeadlineFor(4 << 10), absl::Minutes(2));
  // A call that finishes halves the allowance back, and sets the rate.
  pace.Finished(4 << 10, absl::Seconds(1));
  EXPECT_EQ(pace.DeadlineFor(4 << 10), absl::Minutes(1) + absl::Seconds(3));
}

}  // namespace
}  // namespace hamlet::field
