#ifndef HAMLET_SYNC_STAMP_H_
#define HAMLET_SYNC_STAMP_H_

#include <string>

#include "hamlet/v1/sync.pb.h"

namespace hamlet::sync {

// Total order on stamps: physical_ms, then logical, then node bytewise.
// Returns <0, 0 or >0 like strcmp. An unset stamp (all zero, empty node) is the
// least of all stamps.
int CompareStamps(const hamlet::v1::Stamp& a, const hamlet::v1::Stamp& b);

inline bool StampLess(const hamlet::v1::Stamp& a, const hamlet::v1::Stamp& b) {
  return CompareStamps(a, b) < 0;
}

// "1732960000000.3@device" — for logs and error messages.
std::string StampToString(const hamlet::v1::Stamp& s);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_STAMP_H_
