#include "sync/units.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hamlet::sync {

using hamlet::v1::AdminUnit;

void UnitDirectory::Put(const AdminUnit& unit) { units_[unit.code()] = unit; }

void UnitDirectory::Remove(absl::string_view code) {
  auto it = units_.find(code);
  if (it != units_.end()) units_.erase(it);
}

const AdminUnit* UnitDirectory::Find(absl::string_view code) const {
  auto it = units_.find(code);
  return it == units_.end() ? nullptr : &it->second;
}

std::vector<std::string> UnitDirectory::Within(absl::string_view code) const {
  std::vector<std::string> out;
  if (Find(code) == nullptr) return out;
  out.emplace_back(code);
  for (size_t i = 0; i < out.size(); ++i) {
    for (const auto& [child, unit] : units_) {
      if (unit.parent_code() == out[i]) out.push_back(child);
    }
  }
  return out;
}

std::string UnitDirectory::CommuneOf(absl::string_view code) const {
  const AdminUnit* unit = Find(code);
  if (unit == nullptr) return "";
  if (unit->level() == hamlet::v1::UNIT_LEVEL_COMMUNE) return unit->code();
  if (unit->level() == hamlet::v1::UNIT_LEVEL_VILLAGE) return unit->parent_code();
  return "";
}

std::vector<AdminUnit> QuangYenUnits() {
  struct Commune {
    const char* code;
    const char* name;
    bool ward;
  };
  static constexpr Commune kCommunes[] = {
      {"07132", "Quảng Yên", true},  {"07135", "Đông Mai", true},   {"07138", "Minh Thành", true},
      {"07150", "Cộng Hòa", true},   {"07159", "Tân An", true},     {"07162", "Yên Giang", true},
      {"07165", "Nam Hòa", true},    {"07168", "Hà An", true},      {"07174", "Phong Hải", true},
      {"07177", "Yên Hải", true},    {"07183", "Phong Cốc", true},  {"07144", "Sông Khoai", false},
      {"07147", "Hiệp Hòa", false},  {"07153", "Tiền An", false},   {"07156", "Hoàng Tân", false},
      {"07171", "Cẩm La", false},    {"07180", "Liên Hòa", false},  {"07186", "Liên Vị", false},
      {"07189", "Tiền Phong", false},
  };
  std::vector<AdminUnit> units;
  AdminUnit province;
  province.set_code("22");
  province.set_level(hamlet::v1::UNIT_LEVEL_PROVINCE);
  province.set_kind(hamlet::v1::UNIT_KIND_PROVINCE);
  province.set_name("Quảng Ninh");
  province.set_valid_from("1963-10-30");
  units.push_back(province);

  AdminUnit town;
  town.set_code("206");
  town.set_level(hamlet::v1::UNIT_LEVEL_DISTRICT);
  town.set_kind(hamlet::v1::UNIT_KIND_TOWN);
  town.set_name("Quảng Yên");
  town.set_parent_code("22");
  town.set_valid_from("2011-11-25");
  units.push_back(town);

  for (const Commune& c : kCommunes) {
    AdminUnit commune;
    commune.set_code(c.code);
    commune.set_level(hamlet::v1::UNIT_LEVEL_COMMUNE);
    commune.set_kind(c.ward ? hamlet::v1::UNIT_KIND_WARD : hamlet::v1::UNIT_KIND_COMMUNE);
    commune.set_name(absl::StrCat(c.ward ? "Phường " : "Xã ", c.name));
    commune.set_parent_code("206");
    commune.set_valid_from("2011-11-25");
    units.push_back(commune);
    for (int k = 1; k <= 12; ++k) {
      AdminUnit village;
      village.set_code(absl::StrFormat("%s-K%02d", c.code, k));
      village.set_level(hamlet::v1::UNIT_LEVEL_VILLAGE);
      village.set_kind(c.ward ? hamlet::v1::UNIT_KIND_NEIGHBOURHOOD : hamlet::v1::UNIT_KIND_VILLAGE);
      village.set_name(absl::StrCat("Khu ", k));
      village.set_parent_code(c.code);
      village.set_valid_from("2011-11-25");
      units.push_back(village);
    }
  }
  return units;
}

}  // namespace hamlet::sync
