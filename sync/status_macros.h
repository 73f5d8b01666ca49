#ifndef HAMLET_SYNC_STATUS_MACROS_H_
#define HAMLET_SYNC_STATUS_MACROS_H_

// Abseil 20220623 has no RETURN_IF_ERROR / ASSIGN_OR_RETURN; these stand in for
// them under names that can later give way to Abseil's.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define HAMLET_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    const absl::Status hamlet_status_ = (expr);      \
    if (!hamlet_status_.ok()) return hamlet_status_; \
  } while (0)

#define HAMLET_CONCAT_INNER_(a, b) a##b
#define HAMLET_CONCAT_(a, b) HAMLET_CONCAT_INNER_(a, b)

#define HAMLET_ASSIGN_OR_RETURN(lhs, expr) \
  HAMLET_ASSIGN_OR_RETURN_IMPL_(HAMLET_CONCAT_(hamlet_statusor_, __LINE__), lhs, expr)

#define HAMLET_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // HAMLET_SYNC_STATUS_MACROS_H_
