#include "sync/stamp.h"

#include "absl/strings/str_cat.h"

namespace hamlet::sync {

int CompareStamps(const hamlet::v1::Stamp& a, const hamlet::v1::Stamp& b) {
  if (a.physical_ms() != b.physical_ms()) return a.physical_ms() < b.physical_ms() ? -1 : 1;
  if (a.logical() != b.logical()) return a.logical() < b.logical() ? -1 : 1;
  return a.node().compare(b.node());
}

std::string StampToString(const hamlet::v1::Stamp& s) {
  return absl::StrCat(s.physical_ms(), ".", s.logical(), "@", s.node());
}

}  // namespace hamlet::sync
