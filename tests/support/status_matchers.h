#ifndef HAMLET_TESTS_SUPPORT_STATUS_MATCHERS_H_
#define HAMLET_TESTS_SUPPORT_STATUS_MATCHERS_H_

// Abseil 20220623 ships no GoogleTest matchers for Status; this is a small
// StatusIs(code) that works on absl::Status, absl::StatusOr<T> and grpc::Status.

#include <gmock/gmock.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hamlet::testing {

inline absl::StatusCode CodeOf(const absl::Status& s) { return s.code(); }
template <typename T>
absl::StatusCode CodeOf(const absl::StatusOr<T>& s) {
  return s.status().code();
}
template <typename GrpcStatus, typename = decltype(std::declval<GrpcStatus>().error_code())>
absl::StatusCode CodeOf(const GrpcStatus& s) {
  return static_cast<absl::StatusCode>(s.error_code());
}

inline std::string MessageOf(const absl::Status& s) { return std::string(s.message()); }
template <typename T>
std::string MessageOf(const absl::StatusOr<T>& s) {
  return std::string(s.status().message());
}
template <typename GrpcStatus, typename = decltype(std::declval<GrpcStatus>().error_message())>
std::string MessageOf(const GrpcStatus& s) {
  return s.error_message();
}

MATCHER_P(StatusIs, code, absl::StrCat("has status ", absl::StatusCodeToString(code))) {
  const absl::StatusCode actual = CodeOf(arg);
  *result_listener << "status is " << absl::StatusCodeToString(actual) << ": " << MessageOf(arg);
  return actual == code;
}

MATCHER_P2(StatusIs, code, message_matcher, "") {
  const absl::StatusCode actual = CodeOf(arg);
  *result_listener << "status is " << absl::StatusCodeToString(actual) << ": " << MessageOf(arg);
  return actual == code && ::testing::ExplainMatchResult(message_matcher, MessageOf(arg), result_listener);
}

#define HAMLET_ASSERT_OK(expr) ASSERT_THAT((expr), ::hamlet::testing::StatusIs(absl::StatusCode::kOk))
#define HAMLET_EXPECT_OK(expr) EXPECT_THAT((expr), ::hamlet::testing::StatusIs(absl::StatusCode::kOk))

}  // namespace hamlet::testing

#endif  // HAMLET_TESTS_SUPPORT_STATUS_MATCHERS_H_
