#ifndef HAMLET_SYNC_MERGE_H_
#define HAMLET_SYNC_MERGE_H_

#include <cstdint>
#include <set>
#include <string>

#include "absl/strings/string_view.h"
#include "hamlet/v1/sync.pb.h"

namespace hamlet::sync {

// Body field numbers, e.g. the fields a device still has unsynced edits for.
using FieldNumbers = std::set<uint32_t>;

// How many superseded values a record keeps (newest stamps first).
inline constexpr int kMaxSuperseded = 32;

// Merges a record change (or a whole record state) into a record state, field
// by field, by the rules declared in the schema (proto/hamlet/v1/merge.proto,
// read by sync/schema.h):
//
//   LAST_WRITER_WINS  the value with the greater stamp wins, whole.
//   LIFECYCLE (+ its LIFECYCLE_PARTs, merged as one value)
//                     the value with the greater (round, rank) wins; values at
//                     the same (round, rank) that differ are all kept in
//                     Record.conflicts and the one with the greatest stamp is
//                     shown; values stamped at or below the field's
//                     `supersedes` watermark (set by a resolution) are settled.
//   ADD_WINS_SET      per element key: last writer wins on the element's value;
//                     the element is present while its stamp is greater than
//                     the newest stamp a removal had seen.
//   APPEND_ONLY       per element key: the first write (least stamp) stays.
//   deletion          once deleted, always deleted; the earliest deletion
//                     stamp is kept. Later edits still merge into the fields.
//
// Every value that loses goes to Record.superseded (the 32 newest by stamp),
// so what a device recorded is recoverable, not silently dropped.
//
// Laws (tests/sync/merge_test.cc checks them as properties for every policy
// and for whole records of every type): writing a ⊔ b for "merge b into a",
//   a ⊔ b == b ⊔ a,  (a ⊔ b) ⊔ c == a ⊔ (b ⊔ c),  a ⊔ a == a,
// compared as serialized bytes: replicas that saw the same changes in any
// order, with any duplicates, hold identical bytes.
//
// If `state` has no body yet, it first takes the change's envelope.
// Fields in `keep_local` are left as they are in `state`: a device uses it so a
// pulled record never overwrites its own unsynced edits.
//
// REQUIRES: change and state are the same record (same id and body type) or
// state is empty; the change passed ValidateChange (sync/validate.h).
// Returns true if `state` changed.
bool MergeRecord(const hamlet::v1::Record& change, hamlet::v1::Record* state, const FieldNumbers& keep_local = {});

// The body message of a record, or nullptr if none is set.
const google::protobuf::Message* RecordBody(const hamlet::v1::Record& record);
google::protobuf::Message* MutableRecordBody(hamlet::v1::Record* record);

// A change for `record` that changes nothing yet: its envelope (id, unit,
// author, create time, sensitivity) and an empty body of its type.
hamlet::v1::Record EmptyChangeOf(const hamlet::v1::Record& record);

// The stamp entry of a body field (key "") or of one set element, or nullptr.
const hamlet::v1::FieldStamp* FindFieldStamp(const hamlet::v1::Record& record, uint32_t field,
                                             const std::string& key = "");

// Sets the stamp of a body field, keeping field_stamps ordered by (field, key).
void SetFieldStamp(hamlet::v1::Record* record, uint32_t field, const hamlet::v1::Stamp& stamp);
// Sets a whole stamp entry (element stamps, removals, supersedes).
void PutFieldStamp(hamlet::v1::Record* record, const hamlet::v1::FieldStamp& entry);

// The open conflict on lifecycle field `field`, or nullptr.
const hamlet::v1::Conflict* FindConflict(const hamlet::v1::Record& record, uint32_t field);

// True if every value `state` holds was written by `node`: it has a stamp,
// and every stamp in it (field, element, removal, supersedes, deletion, and
// those of superseded values) names `node`, with no open conflict. The device
// `node` then holds this state already, but for server_seq: it wrote each
// value, and its own copy merged the same changes in the same order
// (MergeRecord is deterministic), so a pull need not send it back.
bool WrittenOnlyBy(const hamlet::v1::Record& state, absl::string_view node);

// The node that every value of `state` was written by, as WrittenOnlyBy
// reads it, or "" if there is none (more than one writer, an open conflict,
// or no stamp). WrittenOnlyBy(state, n) == (!n.empty() && SoleWriter(state) == n).
std::string SoleWriter(const hamlet::v1::Record& state);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_MERGE_H_
