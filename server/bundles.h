#ifndef HAMLET_SERVER_BUNDLES_H_
#define HAMLET_SERVER_BUNDLES_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hamlet/v1/admin.pb.h"
#include "server/devices.h"
#include "server/town.h"
#include "sync/clock.h"

namespace hamlet::server {

// Sync carried by hand, at the server's end (docs/PROTOCOL.md, "Bundles"):
// the work of AdminService.ImportBundle and ExportBundle, without the gRPC.

// Applies a bundle a device wrote (hamlet-field export): checks the whole
// bundle first (it opens with the secret of the device it names, that device
// was enrolled and not revoked when the bundle was written, the time it
// claims is not ahead of this clock by more than the allowed skew, every
// batch is that device's), then pushes each batch as that device, judged as
// of the bundle's time, telling `progress` after each. A refused batch is
// reported and the rest go on, as a device's own sync goes on after a
// refused batch. Returns the last progress message (done = true).
absl::StatusOr<hamlet::v1::ImportBundleResponse> ImportBundle(
    absl::string_view bundle, Town& town, const DeviceRegistry& devices, const sync::PhysicalClock& clock,
    const std::function<void(const hamlet::v1::ImportBundleResponse&)>& progress);

// What ExportBundle wrote.
struct ExportedBundle {
  std::string bytes;
  hamlet::v1::ExportBundleResponse summary;  // done = true
};
// A bundle for `device_id` (hamlet-field import) holding what its pulls
// would bring it from where they stand (Town::LastPull: its last pull call
// since this server started, or its last bundle's word), else from the
// beginning, or from the beginning again if that place is no longer valid;
// read page by page as the device itself, telling `progress` after each
// page. FAILED_PRECONDITION for a revoked or expired device.
absl::StatusOr<ExportedBundle> ExportBundle(
    const std::string& device_id, const std::string& server_id, Town& town, const DeviceRegistry& devices,
    const sync::PhysicalClock& clock, const std::function<void(const hamlet::v1::ExportBundleResponse&)>& progress);

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_BUNDLES_H_
