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

  size_t size() const { return units_.size(); }

 private:
  std::map<std::string, hamlet::v1::AdminUnit, std::less<>> units_;
};

// Quảng Yên's reference data (DOMAIN.md): province 22, town 206, its 19
// communes and wards with their GSO codes, and generated villages
// "Khu 1".."Khu 12" per commune with codes "<commune>-K01".."<commune>-K12"
// (real village codes are not public).
std::vector<hamlet::v1::AdminUnit> QuangYenUnits();

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_UNITS_H_
