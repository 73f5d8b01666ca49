#include "sync/units.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hamlet::sync {

using hamlet::v1::AdminUnit;
using hamlet::v1::UnitKind;

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

bool UnitDirectory::IsWithin(absl::string_view code, absl::string_view ancestor) const {
  // Parent links form a tree; the bound guards against a cycle in bad data.
  for (int depth = 0; depth < 8 && !code.empty(); ++depth) {
    if (code == ancestor) return true;
    const AdminUnit* unit = Find(code);
    if (unit == nullptr) return false;
    code = unit->parent_code();
  }
  return false;
}

std::string UnitDirectory::CommuneOf(absl::string_view code) const {
  const AdminUnit* unit = Find(code);
  if (unit == nullptr) return "";
  if (unit->level() == hamlet::v1::UNIT_LEVEL_COMMUNE) return unit->code();
  if (unit->level() == hamlet::v1::UNIT_LEVEL_VILLAGE) return unit->parent_code();
  return "";
}

namespace {

struct Commune {
  const char* code;
  const char* name;
  UnitKind kind;
};

// A district-level unit of the reference province.
AdminUnit District(const char* code, UnitKind kind, const char* name, const char* valid_from) {
  AdminUnit unit;
  unit.set_code(code);
  unit.set_level(hamlet::v1::UNIT_LEVEL_DISTRICT);
  unit.set_kind(kind);
  unit.set_name(name);
  unit.set_parent_code(kReferenceProvinceCode);
  unit.set_valid_from(valid_from);
  return unit;
}

void AddTown(const AdminUnit& town, const std::vector<Commune>& communes, std::vector<AdminUnit>* units) {
  units->push_back(town);
  for (const Commune& c : communes) {
    const bool ward = c.kind == hamlet::v1::UNIT_KIND_WARD;
    AdminUnit commune;
    commune.set_code(c.code);
    commune.set_level(hamlet::v1::UNIT_LEVEL_COMMUNE);
    commune.set_kind(c.kind);
    commune.set_name(absl::StrCat(ward                                       ? "Phường "
                                  : c.kind == hamlet::v1::UNIT_KIND_TOWNSHIP ? "Thị trấn "
                                                                             : "Xã ",
                                  c.name));
    commune.set_parent_code(town.code());
    commune.set_valid_from(town.valid_from());
    units->push_back(commune);
    for (int k = 1; k <= 12; ++k) {
      AdminUnit village;
      village.set_code(absl::StrFormat("%s-K%02d", c.code, k));
      village.set_level(hamlet::v1::UNIT_LEVEL_VILLAGE);
      village.set_kind(ward ? hamlet::v1::UNIT_KIND_NEIGHBOURHOOD : hamlet::v1::UNIT_KIND_VILLAGE);
      village.set_name(absl::StrCat("Khu ", k));
      village.set_parent_code(c.code);
      village.set_valid_from(town.valid_from());
      units->push_back(village);
    }
  }
}

}  // namespace

std::vector<AdminUnit> ReferenceUnits() {
  std::vector<AdminUnit> units;
  AdminUnit province;
  province.set_code(kReferenceProvinceCode);
  province.set_level(hamlet::v1::UNIT_LEVEL_PROVINCE);
  province.set_kind(hamlet::v1::UNIT_KIND_PROVINCE);
  province.set_name("Quảng Ninh");
  province.set_valid_from("1963-10-30");
  units.push_back(province);

  constexpr auto kWard = hamlet::v1::UNIT_KIND_WARD;
  constexpr auto kCommune = hamlet::v1::UNIT_KIND_COMMUNE;
  AddTown(District("206", hamlet::v1::UNIT_KIND_TOWN, "Quảng Yên", "2011-11-25"),
          {{"07132", "Quảng Yên", kWard},
           {"07135", "Đông Mai", kWard},
           {"07138", "Minh Thành", kWard},
           {"07150", "Cộng Hòa", kWard},
           {"07159", "Tân An", kWard},
           {"07162", "Yên Giang", kWard},
           {"07165", "Nam Hòa", kWard},
           {"07168", "Hà An", kWard},
           {"07174", "Phong Hải", kWard},
           {"07177", "Yên Hải", kWard},
           {"07183", "Phong Cốc", kWard},
           {"07144", "Sông Khoai", kCommune},
           {"07147", "Hiệp Hòa", kCommune},
           {"07153", "Tiền An", kCommune},
           {"07156", "Hoàng Tân", kCommune},
           {"07171", "Cẩm La", kCommune},
           {"07180", "Liên Hòa", kCommune},
           {"07186", "Liên Vị", kCommune},
           {"07189", "Tiền Phong", kCommune}},
          &units);

  AddTown(District("207", hamlet::v1::UNIT_KIND_DISTRICT, "Cô Tô", "1994-03-23"),
          {{"07192", "Cô Tô", hamlet::v1::UNIT_KIND_TOWNSHIP},
           {"07195", "Đồng Tiến", kCommune},
           {"07198", "Thanh Lân", kCommune}},
          &units);
  return units;
}

}  // namespace hamlet::sync
