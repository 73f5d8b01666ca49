// How a helper process that ended by itself is reported (tools/harness/spawn.h):
// what a failed test or benchmark prints when its hamletd died under it.
#include "tools/harness/spawn.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/support/temp_dir.h"

namespace hamlet::harness {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Waits (up to 10 s) for child `pid` to end by itself.
std::optional<Ending> AwaitEnd(pid_t pid, const std::string& log) {
  for (int i = 0; i < 1000; ++i) {
    if (std::optional<Ending> ended = EndedByItself(pid, log)) return ended;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return std::nullopt;
}

TEST(SpawnTest, AChildThatAbortedIsACrashShownFromItsSanitizerReport) {
  hamlet::testing::TempDir dir;
  const std::string log = dir.Sub("child.log");
  const pid_t pid = Spawn({"/bin/sh", "-c",
                           "echo serving; echo '=================='; echo 'WARNING: ThreadSanitizer: data race'; "
                           "echo '  Write of size 8 by thread T1'; kill -ABRT $$"},
                          log);
  ASSERT_GT(pid, 0);
  const std::optional<Ending> ended = AwaitEnd(pid, log);
  ASSERT_TRUE(ended.has_value());
  EXPECT_TRUE(ended->crashed);
  EXPECT_THAT(ended->text, HasSubstr("killed by signal 6"));
  EXPECT_THAT(ended->text, HasSubstr("WARNING: ThreadSanitizer: data race\n  Write of size 8 by thread T1"));
  EXPECT_THAT(ended->text, Not(HasSubstr("serving")));  // From the report on, not the lines before it.
  EXPECT_EQ(WaitExit(pid), 128 + SIGABRT);              // Not reaped: still the caller's to wait for.
}

TEST(SpawnTest, AChildThatExitedIsNotACrashAndARunningOneHasNotEnded) {
  hamlet::testing::TempDir dir;
  const std::string log = dir.Sub("child.log");
  const pid_t running = Spawn({"/bin/sleep", "30"}, log);
  ASSERT_GT(running, 0);
  EXPECT_FALSE(EndedByItself(running, log).has_value());
  kill(running, SIGKILL);
  WaitExit(running);

  const pid_t pid = Spawn({"/bin/sh", "-c", "echo 'cannot open the store'; exit 3"}, log);
  ASSERT_GT(pid, 0);
  const std::optional<Ending> ended = AwaitEnd(pid, log);
  ASSERT_TRUE(ended.has_value());
  EXPECT_FALSE(ended->crashed);
  EXPECT_THAT(ended->text, HasSubstr("exited with code 3"));
  EXPECT_THAT(ended->text, HasSubstr("cannot open the store"));
  EXPECT_EQ(WaitExit(pid), 3);
}

}  // namespace
}  // namespace hamlet::harness
