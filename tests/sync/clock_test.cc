#include "sync/clock.h"

#include <gtest/gtest.h>

#include <limits>

#include "sync/stamp.h"
#include "tests/support/records.h"

namespace hamlet::sync {
namespace {

using hamlet::testing::MakeStamp;

constexpr int64_t kNow = 1'796'000'000'000;  // 2026-11-30
constexpr int64_t kYearMs = 365LL * 24 * 3600 * 1000;

TEST(HybridClockTest, NowIsStrictlyIncreasingWhenPhysicalClockStandsStill) {
  FakeClock physical(kNow);
  HybridClock clock(&physical, "a");
  auto first = clock.Now();
  auto second = clock.Now();
  EXPECT_LT(CompareStamps(first, second), 0);
  EXPECT_EQ(second.physical_ms(), kNow);
  EXPECT_EQ(second.logical(), 1u);
}

TEST(HybridClockTest, NowIsStrictlyIncreasingWhenPhysicalClockGoesBack) {
  FakeClock physical(kNow);
  HybridClock clock(&physical, "a");
  auto before = clock.Now();
  physical.Set(kNow - 60'000);  // NTP stepped the clock back a minute.
  auto after = clock.Now();
  EXPECT_LT(CompareStamps(before, after), 0);
  EXPECT_EQ(after.physical_ms(), kNow);
}

TEST(HybridClockTest, FollowsPhysicalClockForward) {
  FakeClock physical(kNow);
  HybridClock clock(&physical, "a");
  clock.Now();
  physical.Advance(5);
  auto s = clock.Now();
  EXPECT_EQ(s.physical_ms(), kNow + 5);
  EXPECT_EQ(s.logical(), 0u);
  EXPECT_EQ(s.node(), "a");
}

TEST(HybridClockTest, AfterObservingARemoteStampNowIsGreater) {
  FakeClock physical(kNow);
  HybridClock clock(&physical, "a");
  auto remote = MakeStamp(kNow + 1000, 7, "b");
  clock.Observe(remote);
  auto s = clock.Now();
  EXPECT_GT(CompareStamps(s, remote), 0);
  EXPECT_EQ(s.physical_ms(), kNow + 1000);
  EXPECT_EQ(s.logical(), 9u);
}

// A phone whose clock is a year behind still orders its edits after everything
// it has pulled, because pulling observes the stamps.
TEST(HybridClockTest, PhoneAYearBehindOrdersItsEditsAfterWhatItPulled) {
  FakeClock phone_physical(kNow - kYearMs);
  HybridClock phone(&phone_physical, "phone");
  auto server_edit = MakeStamp(kNow, 0, "server");
  phone.Observe(server_edit);
  auto edit = phone.Now();
  EXPECT_GT(CompareStamps(edit, server_edit), 0);
  // Its stamps carry the observed time, not its own wrong clock.
  EXPECT_EQ(edit.physical_ms(), kNow);
}

// A phone a year behind that has pulled nothing loses every last-writer-wins
// race against correctly clocked devices; docs/PROTOCOL.md says so.
TEST(HybridClockTest, PhoneAYearBehindWithoutPullingStampsInThePast) {
  FakeClock phone_physical(kNow - kYearMs);
  HybridClock phone(&phone_physical, "phone");
  EXPECT_EQ(phone.Now().physical_ms(), kNow - kYearMs);
}

// Found by a review: the 32-bit logical counter wrapped to 0 and the server's
// next stamp sorted before one it had just observed.
TEST(HybridClockTest, ALogicalCounterAtItsLimitCarriesIntoTheMillisecond) {
  FakeClock physical(kNow);
  HybridClock clock(&physical, "server");
  hamlet::v1::Stamp remote = MakeStamp(kNow + 60'000, std::numeric_limits<uint32_t>::max(), "phone");
  clock.Observe(remote);
  const hamlet::v1::Stamp next = clock.Now();
  EXPECT_GT(CompareStamps(next, remote), 0) << next.DebugString();
  EXPECT_EQ(next.physical_ms(), kNow + 60'001);
  for (int i = 0; i < 3; ++i) EXPECT_GT(CompareStamps(clock.Now(), next), 0);
}

TEST(HybridClockTest, RestoreNeverIssuesBelowAPersistedStamp) {
  FakeClock physical(kNow - 10'000);
  HybridClock clock(&physical, "a");
  auto persisted = MakeStamp(kNow, 3, "a");
  clock.Restore(persisted);
  EXPECT_GT(CompareStamps(clock.Now(), persisted), 0);
}

TEST(StampTest, OrdersByPhysicalThenLogicalThenNode) {
  EXPECT_LT(CompareStamps(MakeStamp(1, 9, "z"), MakeStamp(2, 0, "a")), 0);
  EXPECT_LT(CompareStamps(MakeStamp(1, 1, "z"), MakeStamp(1, 2, "a")), 0);
  EXPECT_LT(CompareStamps(MakeStamp(1, 1, "a"), MakeStamp(1, 1, "b")), 0);
  EXPECT_EQ(CompareStamps(MakeStamp(1, 1, "a"), MakeStamp(1, 1, "a")), 0);
  EXPECT_LT(CompareStamps(hamlet::v1::Stamp(), MakeStamp(1, 0, "")), 0);
  EXPECT_EQ(StampToString(MakeStamp(12, 3, "n")), "12.3@n");
}

}  // namespace
}  // namespace hamlet::sync
