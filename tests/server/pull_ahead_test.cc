#include "server/pull_ahead.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace hamlet::server {
namespace {

using hamlet::v1::PullRequest;

PullRequest Request(const std::string& cursor) {
  PullRequest request;
  request.set_device_id("d1");
  request.set_cursor(cursor);
  request.set_lean_stamps(true);
  return request;
}

Caller Member(const std::string& device_id) {
  Caller caller;
  caller.device_id = device_id;
  caller.principal = {hamlet::v1::ROLE_MEMBER, "07132", "person-1"};
  return caller;
}

// A page whose one record names what it was read for.
PulledPage Page(const std::string& what) {
  PulledPage page;
  page.records.push_back(what);
  page.response.set_remaining(1);
  return page;
}

class PullAheadTest : public ::testing::Test {
 protected:
  // A read that counts itself and returns Page(what).
  PullAhead::Read Reading(const std::string& what) {
    return [this, what]() -> absl::StatusOr<PulledPage> {
      ++reads_;
      return Page(what);
    };
  }
  // How many pages ended as `outcome`.
  size_t Ended(const std::string& outcome) const { return std::count(outcomes_.begin(), outcomes_.end(), outcome); }
  // Returns once the one reader is held by a task that ends when `free` is
  // notified: what is added meanwhile queues behind it.
  void HoldReader(absl::Notification* free) {
    // Shared, so that it outlives this function while Notify() returns.
    auto busy = std::make_shared<absl::Notification>();
    pool_.Add([busy, free] {
      busy->Notify();
      free->WaitForNotification();
    });
    busy->WaitForNotification();
  }
  // Waits until the reader pool has run everything added so far.
  void Settle() {
    absl::Notification done;
    pool_.Add([&] { done.Notify(); });
    done.WaitForNotification();
  }

  std::atomic<int> reads_{0};
  std::vector<std::string> outcomes_;  // Told under PullAhead's lock.
  // One reader, so that a test can keep it busy. Destroyed before `ahead_`,
  // which its reads use.
  PullAhead ahead_{&pool_, 2, [this](const char* outcome) { outcomes_.push_back(outcome); }};
  WorkPool pool_{1};
};

TEST_F(PullAheadTest, TheSameRequestFromTheSameCallerAtTheSameSeqGetsThePage) {
  ahead_.Start(Request("c2"), Member("d1"), 7, Reading("page 2"));
  Settle();
  std::optional<PulledPage> page = ahead_.Take(Request("c2"), Member("d1"), 7);
  ASSERT_TRUE(page.has_value());
  EXPECT_EQ(page->records, std::vector<std::string>{"page 2"});
  EXPECT_EQ(reads_.load(), 1);
  EXPECT_EQ(Ended("served"), 1u);
  EXPECT_EQ(outcomes_, std::vector<std::string>{"served"});
  // Taken once: a second pull of the same page reads it itself.
  EXPECT_FALSE(ahead_.Take(Request("c2"), Member("d1"), 7).has_value());
}

// Stale whether or not its read has run: a pull after a commit neither
// gets the page nor waits for it, and a read not begun never runs.
TEST_F(PullAheadTest, ACommitSinceTheReadBeganMakesThePageStale) {
  ahead_.Start(Request("c2"), Member("d1"), 7, Reading("page 2"));
  Settle();
  EXPECT_FALSE(ahead_.Take(Request("c2"), Member("d1"), 8).has_value());
  EXPECT_EQ(Ended("stale"), 1u);

  absl::Notification free;
  HoldReader(&free);
  ahead_.Start(Request("c3"), Member("d1"), 8, Reading("page 3"));
  EXPECT_FALSE(ahead_.Take(Request("c3"), Member("d1"), 9).has_value());
  free.Notify();
  Settle();
  EXPECT_EQ(Ended("stale"), 2u);
  EXPECT_EQ(Ended("served"), 0u);
  EXPECT_EQ(reads_.load(), 1) << "a stale read not begun still ran";
}

TEST_F(PullAheadTest, AnotherRequestOrCallerDoesNotGetThePage) {
  ahead_.Start(Request("c2"), Member("d1"), 7, Reading("page 2"));
  Settle();
  EXPECT_FALSE(ahead_.Take(Request("c3"), Member("d1"), 7).has_value()) << "another cursor";
  EXPECT_EQ(Ended("unused"), 1u) << "the page is dropped";
  EXPECT_FALSE(ahead_.Take(Request("c2"), Member("d1"), 7).has_value()) << "dropped before";

  ahead_.Start(Request("c2"), Member("d1"), 7, Reading("page 2"));
  Settle();
  Caller leader = Member("d1");
  leader.principal.role = hamlet::v1::ROLE_TEAM_LEADER;  // Enrolled again with another role.
  EXPECT_FALSE(ahead_.Take(Request("c2"), leader, 7).has_value()) << "another role";
  PullRequest own = Request("c2");
  own.set_omit_own_writes(true);
  ahead_.Start(Request("c2"), Member("d1"), 7, Reading("page 2"));
  Settle();
  EXPECT_FALSE(ahead_.Take(own, Member("d1"), 7).has_value()) << "another option";
  EXPECT_EQ(Ended("unused"), 3u);
  EXPECT_EQ(Ended("served"), 0u);
}

// A pull that comes while its page is being read waits for that read rather
// than reading again; one that comes before the read began reads itself, and
// the read ahead never runs.
TEST_F(PullAheadTest, APullWaitsForAReadUnderWayButNotForOneNotBegun) {
  absl::Notification reading, release;
  ahead_.Start(Request("c2"), Member("d1"), 7, [&]() -> absl::StatusOr<PulledPage> {
    reading.Notify();
    release.WaitForNotification();
    ++reads_;
    return Page("page 2");
  });
  reading.WaitForNotification();
  std::optional<PulledPage> taken;
  std::thread pull([&] { taken = ahead_.Take(Request("c2"), Member("d1"), 7); });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(taken.has_value());
  release.Notify();
  pull.join();
  ASSERT_TRUE(taken.has_value()) << "the pull did not wait for the read under way";
  EXPECT_EQ(taken->records, std::vector<std::string>{"page 2"});

  // The one reader busy: a page started now is queued behind it.
  absl::Notification free;
  HoldReader(&free);
  ahead_.Start(Request("c3"), Member("d1"), 7, Reading("page 3"));
  EXPECT_FALSE(ahead_.Take(Request("c3"), Member("d1"), 7).has_value());
  free.Notify();
  Settle();
  EXPECT_EQ(reads_.load(), 1) << "a read ahead ran after its pull had read for itself";
  EXPECT_EQ(Ended("unused"), 1u);
}

// At most max_pages (2 here) are kept: a third device's page takes the place
// of the oldest; a device's new page takes the place of its last.
TEST_F(PullAheadTest, PagesAreBoundedAndTheOldestMakesRoom) {
  for (const char* device : {"d1", "d2", "d3"}) {
    ahead_.Start(Request("c2"), Member(device), 7, Reading(absl::StrCat(device, " page 2")));
    Settle();
  }
  EXPECT_FALSE(ahead_.Take(Request("c2"), Member("d1"), 7).has_value()) << "the oldest was kept";
  EXPECT_EQ(Ended("unused"), 1u);
  std::optional<PulledPage> d2 = ahead_.Take(Request("c2"), Member("d2"), 7);
  ASSERT_TRUE(d2.has_value());
  EXPECT_EQ(d2->records, std::vector<std::string>{"d2 page 2"});
  ahead_.Start(Request("c3"), Member("d3"), 7, Reading("d3 page 3"));
  Settle();
  EXPECT_EQ(Ended("unused"), 2u) << "d3's page 2 was kept beside its page 3";
  std::optional<PulledPage> d3 = ahead_.Take(Request("c3"), Member("d3"), 7);
  ASSERT_TRUE(d3.has_value());
  EXPECT_EQ(d3->records, std::vector<std::string>{"d3 page 3"});
  EXPECT_EQ(reads_.load(), 4);
  EXPECT_EQ(Ended("served"), 2u);
}

}  // namespace
}  // namespace hamlet::server
