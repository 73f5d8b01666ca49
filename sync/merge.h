#ifndef HAMLET_SYNC_MERGE_H_
#define HAMLET_SYNC_MERGE_H_

#include <cstdint>
#include <set>

#include "hamlet/v1/sync.pb.h"

namespace hamlet::sync {

// Body field numbers, e.g. the fields a device still has unsynced edits for.
using FieldNumbers = std::set<uint32_t>;

// Merges a record change (or a whole record state) into a record state.
//
// Interim policy until the schema-declared merge rules land: every body field is
// a last-writer-wins register ordered by its stamp (sync/stamp.h); a repeated or
// message field is one register. The deletion marker is a flag that, once set,
// stays set; its stamp is the earliest deletion seen.
//
// Laws (tests/sync/merge_test.cc checks them as properties): for states a, b, c
// of one record, writing a ⊔ b for "merge b into a",
//   a ⊔ b == b ⊔ a,  (a ⊔ b) ⊔ c == a ⊔ (b ⊔ c),  a ⊔ a == a,
// compared as serialized bytes. So every replica that has seen the same set of
// changes holds the same bytes, whatever order they arrived in.
//
// If `state` has no body yet, it takes the change's envelope (id, unit, author,
// create time, sensitivity, body type) first.
// Fields in `keep_local` are left as they are in `state` whatever their stamps:
// a device uses it so a pulled record never overwrites its own unsynced edits.
//
// REQUIRES: change and state are the same record (same id and body type) or
// state is empty. Callers check with CheckSameRecord (sync/validate.h).
// Returns true if `state` changed.
bool MergeRecord(const hamlet::v1::Record& change, hamlet::v1::Record* state,
                 const FieldNumbers& keep_local = {});

// The body message of a record, or nullptr if none is set.
const google::protobuf::Message* RecordBody(const hamlet::v1::Record& record);
google::protobuf::Message* MutableRecordBody(hamlet::v1::Record* record);

// A change for `record` that changes nothing yet: its envelope (id, unit,
// author, create time, sensitivity) and an empty body of its type.
hamlet::v1::Record EmptyChangeOf(const hamlet::v1::Record& record);

// The stamp of one body field, or nullptr if the field is not stamped.
const hamlet::v1::Stamp* FindFieldStamp(const hamlet::v1::Record& record, uint32_t field);

// Sets the stamp of a body field, keeping field_stamps ordered by field number.
void SetFieldStamp(hamlet::v1::Record* record, uint32_t field, const hamlet::v1::Stamp& stamp);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_MERGE_H_
