#include "sync/cursor.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "tests/support/status_matchers.h"

namespace hamlet::sync {
namespace {

using hamlet::testing::StatusIs;

RC_GTEST_PROP(CursorTest, RoundTrips,
              (const std::string& server_id, uint64_t epoch, const std::string& scope, uint64_t seq)) {
  RC_PRE(server_id.size() < 256 && scope.size() < 256);
  const std::string tag = *rc::gen::container<std::string>(kCursorTagBytes, rc::gen::arbitrary<char>());
  const Cursor cursor{server_id, epoch, scope, seq, tag};
  const auto decoded = DecodeCursor(EncodeCursor(cursor));
  RC_ASSERT(decoded.ok());
  RC_ASSERT(*decoded == cursor);
}

RC_GTEST_PROP(CursorTest, TruncatedCursorIsRefused, (const std::string& scope, uint64_t seq)) {
  RC_PRE(scope.size() < 256);
  const std::string bytes = EncodeCursor({"server", 1, scope, seq, ""});
  const size_t cut = *rc::gen::inRange<size_t>(0, bytes.size());
  RC_ASSERT(DecodeCursor(bytes.substr(0, cut)).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST(CursorTest, TheTagGoesLastAfterThePayload) {
  const Cursor cursor{"s", 1, "07132", 5, "0123456789abcdef"};
  EXPECT_EQ(EncodeCursor(cursor), CursorPayload(cursor) + "0123456789abcdef");
  // An untagged version 1 cursor is not read as version 2.
  std::string v1 = CursorPayload(cursor);
  v1[0] = static_cast<char>(kUntaggedCursorVersion);
  EXPECT_THAT(DecodeCursor(v1), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsUntaggedCursor(v1));
  EXPECT_FALSE(IsUntaggedCursor(v1.substr(0, v1.size() - 1)));
  EXPECT_FALSE(IsUntaggedCursor(EncodeCursor(cursor)));
}

TEST(CursorTest, GarbageIsInvalidArgument) {
  EXPECT_THAT(DecodeCursor("not a cursor"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeCursor(""), StatusIs(absl::StatusCode::kInvalidArgument));
  std::string trailing = EncodeCursor({"s", 1, "07132", 5, ""}) + "x";
  EXPECT_THAT(DecodeCursor(trailing), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace hamlet::sync
