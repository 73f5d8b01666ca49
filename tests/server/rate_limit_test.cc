#include "server/rate_limit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/town.h"
#include "sync/clock.h"
#include "tests/support/status_matchers.h"

namespace hamlet::server {
namespace {

using hamlet::testing::StatusIs;
using ::testing::HasSubstr;

constexpr int64_t kNow = 1'796'000'000'000;  // 2026-11-30

TEST(TokenBucketTest, ABurstIsAdmittedThenTheRateHolds) {
  TokenBucket bucket(/*rate=*/2, /*burst=*/3, kNow);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(bucket.Take(kNow), absl::ZeroDuration()) << i;
  EXPECT_EQ(bucket.Take(kNow), absl::Milliseconds(500));
  EXPECT_EQ(bucket.Take(kNow + 499), absl::Milliseconds(1));
  EXPECT_EQ(bucket.Take(kNow + 500), absl::ZeroDuration());
  EXPECT_EQ(bucket.Take(kNow + 500), absl::Milliseconds(500));
}

TEST(TokenBucketTest, AnIdleDeviceSavesUpNoMoreThanTheBurst) {
  TokenBucket bucket(/*rate=*/10, /*burst=*/4, kNow);
  const int64_t later = kNow + 3'600'000;
  EXPECT_TRUE(bucket.FullAt(later));
  int admitted = 0;
  while (bucket.Take(later) == absl::ZeroDuration()) ++admitted;
  EXPECT_EQ(admitted, 4);
  EXPECT_FALSE(bucket.FullAt(later));
}

TEST(TokenBucketTest, ASlowRateAsksForALongWait) {
  TokenBucket bucket(/*rate=*/0.5, /*burst=*/1, kNow);
  EXPECT_EQ(bucket.Take(kNow), absl::ZeroDuration());
  EXPECT_EQ(bucket.Take(kNow), absl::Seconds(2));
  EXPECT_EQ(bucket.Take(kNow + 1500), absl::Milliseconds(500));
}

TEST(TokenBucketTest, AClockSteppedBackIsNotADebt) {
  TokenBucket bucket(/*rate=*/4, /*burst=*/1, kNow);
  EXPECT_EQ(bucket.Take(kNow), absl::ZeroDuration());
  // NTP steps the clock back an hour: the device waits one interval, not an hour.
  const int64_t back = kNow - 3'600'000;
  EXPECT_EQ(bucket.Take(back), absl::Milliseconds(250));
  EXPECT_EQ(bucket.Take(back + 250), absl::ZeroDuration());
}

// Over any window from the start, admitted requests never exceed the burst
// plus what the rate earned; a refusal's wait is exact: a request after it is
// admitted, and one a millisecond earlier is not.
RC_GTEST_PROP(TokenBucketLaws, NeverAdmitsMoreThanBurstPlusRateAndWaitsAreExact, ()) {
  const int rate = *rc::gen::inRange(1, 200);
  const int burst = *rc::gen::inRange(1, 50);
  const auto steps = *rc::gen::container<std::vector<int>>(rc::gen::inRange(0, 300));
  TokenBucket bucket(rate, burst, kNow);
  int64_t now = kNow;
  int admitted = 0;
  for (int step : steps) {
    now += step;
    const absl::Duration wait = bucket.Take(now);
    if (wait == absl::ZeroDuration()) {
      ++admitted;
    } else {
      RC_ASSERT(wait >= absl::Milliseconds(1));
      const int64_t wait_ms = absl::ToInt64Milliseconds(wait);
      TokenBucket probe = bucket;
      RC_ASSERT(probe.Take(now + wait_ms - 1) != absl::ZeroDuration() || wait_ms == 1);
      RC_ASSERT(bucket.Take(now + wait_ms) == absl::ZeroDuration());
      now += wait_ms;
      ++admitted;
    }
    const double earned = static_cast<double>(now - kNow) * rate / 1000.0;
    RC_ASSERT(admitted <= burst + earned + 1e-6);
  }
}

TEST(DeviceRateLimitTest, ARateOfZeroAdmitsEverythingAndKeepsNothing) {
  sync::FakeClock clock(kNow);
  DeviceRateLimit limit(&clock, 0, 1);
  EXPECT_FALSE(limit.enabled());
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(limit.Admit("a").ok());
  EXPECT_EQ(limit.tracked_devices(), 0u);
}

TEST(DeviceRateLimitTest, ADeviceOverItsRateIsToldWhenToRetryAndOthersAreNotHeldBack) {
  sync::FakeClock clock(kNow);
  DeviceRateLimit limit(&clock, /*requests_per_second=*/2, /*burst=*/2);
  EXPECT_TRUE(limit.Admit("phone-a").ok());
  EXPECT_TRUE(limit.Admit("phone-a").ok());
  const absl::Status refused = limit.Admit("phone-a");
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted,
                                "device phone-a is over its rate of 2 requests/s (bursts of 2); retry after ~500 ms"));
  EXPECT_EQ(refused.GetPayload(kReasonKey).value_or(absl::Cord()), "RATE_LIMITED");
  EXPECT_EQ(refused.GetPayload(kRetryAfterKey).value_or(absl::Cord()), "500");

  EXPECT_TRUE(limit.Admit("phone-b").ok());
  EXPECT_TRUE(limit.Admit("phone-b").ok());

  // A refused request costs nothing: after the wait, one more is admitted.
  clock.Advance(499);
  EXPECT_THAT(limit.Admit("phone-a"), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("~1 ms")));
  clock.Advance(1);
  EXPECT_TRUE(limit.Admit("phone-a").ok());
}

TEST(DeviceRateLimitTest, DevicesGoneQuietAreForgotten) {
  sync::FakeClock clock(kNow);
  DeviceRateLimit limit(&clock, /*requests_per_second=*/10, /*burst=*/5);
  for (int i = 0; i < 3000; ++i) ASSERT_TRUE(limit.Admit(absl::StrCat("old-", i)).ok());
  EXPECT_EQ(limit.tracked_devices(), 3000u);
  clock.Advance(1000);  // Every old bucket has filled up again.
  for (int i = 0; i < 2000; ++i) ASSERT_TRUE(limit.Admit(absl::StrCat("new-", i)).ok());
  EXPECT_LT(limit.tracked_devices(), 3000u);
  EXPECT_GE(limit.tracked_devices(), 2000u);
  // A device still within its burst is never forgotten early.
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(limit.Admit("new-0").ok());
  EXPECT_THAT(limit.Admit("new-0"), StatusIs(absl::StatusCode::kResourceExhausted));
}

}  // namespace
}  // namespace hamlet::server
