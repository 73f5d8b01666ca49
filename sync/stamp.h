#ifndef HAMLET_SYNC_STAMP_H_
#define HAMLET_SYNC_STAMP_H_

#include <string>

#include "absl/strings/string_view.h"
#include "hamlet/v1/sync.pb.h"

namespace hamlet::sync {

// Total order on stamps: physical_ms, then logical, then node bytewise.
// Returns <0, 0 or >0 like strcmp. An unset stamp (all zero, empty node) is the
// least of all stamps.
int CompareStamps(const hamlet::v1::Stamp& a, const hamlet::v1::Stamp& b);

inline bool StampLess(const hamlet::v1::Stamp& a, const hamlet::v1::Stamp& b) { return CompareStamps(a, b) < 0; }

// "1732960000000.3@device" — for logs and error messages.
std::string StampToString(const hamlet::v1::Stamp& s);

// Lean stamps (docs/PROTOCOL.md, "Lean stamps"). A stamp that is set (a
// physical_ms or logical) but names no node was written by its record's
// default_node, or, where that is empty too, by `implied_node`: the pushing
// device, in a push. Every stamp of a record counts, those of its conflicts'
// and superseded values included; only the top-level record's default_node
// is read.

// Fills in the node of every lean stamp and clears default_node. A lean stamp
// with neither a default_node nor an `implied_node` stays lean (and fails
// validation).
void ExpandStamps(hamlet::v1::Record* record, absl::string_view implied_node);

// The inverse: leaves out the node of every stamp its most frequent writer
// made, and names that writer in default_node unless it is `implied_node`.
// ExpandStamps(LeanStamps(r, n), n) == r for a record whose stamps all name a
// node and whose default_node is empty.
void LeanStamps(hamlet::v1::Record* record, absl::string_view implied_node);

// True if some stamp of `record` is lean.
bool HasLeanStamps(const hamlet::v1::Record& record);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_STAMP_H_
