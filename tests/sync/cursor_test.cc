#include "sync/cursor.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "tests/support/status_matchers.h"

namespace hamlet::sync {
namespace {

using hamlet::testing::StatusIs;

RC_GTEST_PROP(CursorTest, RoundTrips, (const std::string& server_id, uint64_t epoch, const std::string& scope,
                                       uint64_t seq)) {
  RC_PRE(server_id.size() < 256 && scope.size() < 256);
  const Cursor cursor{server_id, epoch, scope, seq};
  const auto decoded = DecodeCursor(EncodeCursor(cursor));
  RC_ASSERT(decoded.ok());
  RC_ASSERT(*decoded == cursor);
}

RC_GTEST_PROP(CursorTest, TruncatedCursorIsRefused, (const std::string& scope, uint64_t seq)) {
  RC_PRE(scope.size() < 256);
  const std::string bytes = EncodeCursor({"server", 1, scope, seq});
  const size_t cut = *rc::gen::inRange<size_t>(0, bytes.size());
  RC_ASSERT(DecodeCursor(bytes.substr(0, cut)).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST(CursorTest, GarbageIsInvalidArgument) {
  EXPECT_THAT(DecodeCursor("not a cursor"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeCursor(""), StatusIs(absl::StatusCode::kInvalidArgument));
  std::string trailing = EncodeCursor({"s", 1, "07132", 5}) + "x";
  EXPECT_THAT(DecodeCursor(trailing), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace hamlet::sync
