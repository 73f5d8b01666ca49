#ifndef HAMLET_SYNC_VALIDATE_H_
#define HAMLET_SYNC_VALIDATE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "hamlet/v1/sync.pb.h"
#include "sync/units.h"

namespace hamlet::sync {

// True for a UUID written as 8-4-4-4-12 hex digits (either case).
bool IsUuid(absl::string_view s);

// Who made a change: devices may not settle conflicts; a resolution may; a
// lower-tier server replicating its merged states sends them whole, with
// their conflicts, superseded values and settled stamps.
enum class ChangeOrigin { kDevice, kResolution, kReplica };

// Checks one record change on its own. INVALID_ARGUMENT, naming the record and
// the field, when: the id is not a UUID; the unit code is empty or not in
// `units`; no body is set; a stamp names a field the body type does not have,
// repeats a (field, key), is out of order, or has no node; a stamp has a key
// and the field is not a set, or the reverse; a body field is set but not
// stamped; a set element is in the body but not stamped as present, or stamped
// as present and missing; an append-only element is removed; a lifecycle field
// and the fields written with it are not stamped together with one stamp; a
// device sets `supersedes`, conflicts or superseded values (a replica may, when
// every value in them has the record's body type); a lifecycle state or a
// sensitivity this server does not know; a Record field this server does not
// know, or a newer app's body field that is unstamped, stamped with a key,
// removed or supersedes, or of another wire type than this server's field of
// that number (a stamped one is kept: docs/PROTOCOL.md, "Fields and values
// from a newer app"); a stamp, the create time,
// or a conflict or superseded value's wrapper or stamp carries a field this
// server does not know (they are merged whole, outside the body, where a
// newer app's fields are kept); the record is deleted without a deletion stamp.
absl::Status ValidateChange(const hamlet::v1::Record& change, const UnitDirectory& units,
                            ChangeOrigin origin = ChangeOrigin::kDevice);

// Checks that a change may be merged into an existing record: same body type,
// unit, sensitivity, author and create time (when the change carries them).
// FAILED_PRECONDITION naming the record and what differs.
absl::Status CheckSameRecord(const hamlet::v1::Record& change, const hamlet::v1::Record& existing);

// Checks that a change may create a record: author and create time are set.
// INVALID_ARGUMENT otherwise.
absl::Status CheckCreatable(const hamlet::v1::Record& change);

// The largest physical_ms of any stamp in the change (field, removal,
// supersedes and deletion stamps).
int64_t MaxStampMs(const hamlet::v1::Record& change);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_VALIDATE_H_
