#ifndef HAMLET_SERVER_REPORTS_H_
#define HAMLET_SERVER_REPORTS_H_

#include "absl/status/statusor.h"
#include "hamlet/v1/admin.pb.h"
#include "server/devices.h"
#include "server/town.h"

namespace hamlet::server {

// docs/DOMAIN.md's report for one unit and period (admin.proto GetReport), summed
// from the store's running tallies. INVALID_ARGUMENT for an unknown unit or a
// malformed or reversed period.
// `store` is the one `town` commits to.
absl::StatusOr<hamlet::v1::GetReportResponse> BuildReport(const Town& town, const storage::TownStore& store,
                                                          const DeviceRegistry& devices,
                                                          const hamlet::v1::GetReportRequest& request, int64_t now_ms);

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_REPORTS_H_
