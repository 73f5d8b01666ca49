#ifndef HAMLET_SYNC_CHANGE_H_
#define HAMLET_SYNC_CHANGE_H_

#include "absl/status/statusor.h"
#include "hamlet/v1/sync.pb.h"
#include "sync/merge.h"

namespace hamlet::sync {

// Builds the change a device records when its user edits a record: `fields` of
// `state`'s body take their values from `body` (a message of the same type),
// all stamped with `stamp`.
//
//  - A lifecycle field and the fields written with it travel together: naming
//    any of them takes the others' values from `body` if named, else from
//    `state`.
//  - A set field in `body` is the whole new set: elements that are new or
//    changed are stamped; elements of `state` that are missing are removed
//    (tombstoned with the stamp the device saw).
//  - An append-only field in `body` must keep every element of `state`
//    unchanged; INVALID_ARGUMENT otherwise.
//
// `state` may be empty for a new record; then `body`'s envelope must be set by
// the caller on the result. INVALID_ARGUMENT if `body` is of another type or a
// field number is unknown.
absl::StatusOr<hamlet::v1::Record> BuildChange(const hamlet::v1::Record& state, const google::protobuf::Message& body,
                                               const FieldNumbers& fields, const hamlet::v1::Stamp& stamp);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_CHANGE_H_
