#ifndef HAMLET_SYNC_UNITS_H_
#define HAMLET_SYNC_UNITS_H_

#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "hamlet/v1/records.pb.h"

namespace hamlet::sync {

// The admin units a server knows, by code. Not thread-safe: callers that share
// one across threads synchronize themselves.
class UnitDirectory {
 public:
  // Adds or replaces a unit.
  void Put(const hamlet::v1::AdminUnit& unit);
  void Remove(absl::string_view code);

  // nullptr if the code is unknown.
  const hamlet::v1::AdminUnit* Find(absl::string_view code) const;

  // The commune (or ward) a unit lies in: itself for a commune, its parent for a
  // village. "" for units above commune level and unknown codes.
  std::string CommuneOf(absl::string_view code) const;

  // `code` and every unit below it, `code` first. Empty if unknown.
  std::vector<std::string> Within(absl::string_view code) const;

  // True if unit `code` is `ancestor` or lies below it (following parents).
  bool IsWithin(absl::string_view code, absl::string_view ancestor) const;

  size_t size() const { return units_.size(); }

 private:
  std::map<std::string, hamlet::v1::AdminUnit, std::less<>> units_;
};

// The reference admin units every server starts from (the province owns them
// and sends its changes down): province 22 (Quảng Ninh); town 206 (Quảng Yên,
// docs/DOMAIN.md) with its 19 communes and wards; district 207 (Cô Tô) with its
// three communes, as a second town for multi-town deployments and tests; and
// generated villages "Khu 1".."Khu 12" per commune with codes
// "<commune>-K01".."<commune>-K12" (real village codes are not public).
// Units as they were before the July 2025 reform; its mergers are edits the
// province makes (valid_to, successor_codes), not part of this seed.
std::vector<hamlet::v1::AdminUnit> ReferenceUnits();

// Code of the province at the top of ReferenceUnits().
inline constexpr char kReferenceProvinceCode[] = "22";

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_UNITS_H_
