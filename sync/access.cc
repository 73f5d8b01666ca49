#include "sync/access.h"

#include <algorithm>

#include "sync/merge.h"

namespace hamlet::sync {

using hamlet::v1::Record;
using hamlet::v1::Role;

namespace {

// How a record stands to the principal.
enum class Relation {
  kAnyInServer,       // Every record the server holds.
  kOwnCommune,        // The record's unit lies in the principal's commune.
  kOwnUnit,           // The record's unit is the principal's unit or lies in it.
  kOwnUnitAuthored,   // kOwnUnit, and the principal wrote it.
  kReferredToPolice,  // A mediation case of the own commune transferred to the police.
  kWithinUnit,        // The record's unit lies anywhere below the principal's (a town, for its replicator).
  kUnitOfConcern,     // An admin unit the principal's work names: UnitOfConcern below.
};

struct Row {
  Record::BodyCase type;
  Role role;
  Relation relation;
  Reach reach;
};

// docs/DOMAIN.md, "Who may see what". Roles and record types not listed get nothing.
constexpr Row kRows[] = {
    // Mediation case: own team read/write; police the referred cases; justice
    // the commune; town reads; the province reads the non-sealed fields.
    {Record::kMediationCase, hamlet::v1::ROLE_MEMBER, Relation::kOwnUnit, Reach::kWrite},
    {Record::kMediationCase, hamlet::v1::ROLE_TEAM_LEADER, Relation::kOwnUnit, Reach::kWrite},
    {Record::kMediationCase, hamlet::v1::ROLE_COMMUNE_POLICE, Relation::kReferredToPolice, Reach::kRead},
    {Record::kMediationCase, hamlet::v1::ROLE_COMMUNE_JUSTICE, Relation::kOwnCommune, Reach::kRead},
    {Record::kMediationCase, hamlet::v1::ROLE_TOWN_OFFICER, Relation::kAnyInServer, Reach::kRead},
    {Record::kMediationCase, hamlet::v1::ROLE_PROVINCE_OFFICER, Relation::kAnyInServer, Reach::kRead},
    {Record::kMediationCase, hamlet::v1::ROLE_REPLICATION_NODE, Relation::kWithinUnit, Reach::kWrite},
    // Tip: a member creates and reads their own; the leader reads the team's;
    // commune police read and write the commune's; town reads.
    {Record::kSecurityTip, hamlet::v1::ROLE_MEMBER, Relation::kOwnUnitAuthored, Reach::kWrite},
    {Record::kSecurityTip, hamlet::v1::ROLE_TEAM_LEADER, Relation::kOwnUnitAuthored, Reach::kWrite},
    {Record::kSecurityTip, hamlet::v1::ROLE_TEAM_LEADER, Relation::kOwnUnit, Reach::kRead},
    {Record::kSecurityTip, hamlet::v1::ROLE_COMMUNE_POLICE, Relation::kOwnCommune, Reach::kWrite},
    {Record::kSecurityTip, hamlet::v1::ROLE_TOWN_OFFICER, Relation::kAnyInServer, Reach::kRead},
    {Record::kSecurityTip, hamlet::v1::ROLE_PROVINCE_OFFICER, Relation::kAnyInServer, Reach::kRead},
    {Record::kSecurityTip, hamlet::v1::ROLE_REPLICATION_NODE, Relation::kWithinUnit, Reach::kWrite},
    // Informant identity: members create it and never see it again; commune
    // police read it (every read audited). Nobody else, never the province.
    {Record::kInformantIdentity, hamlet::v1::ROLE_MEMBER, Relation::kOwnUnitAuthored, Reach::kCreateOnly},
    {Record::kInformantIdentity, hamlet::v1::ROLE_COMMUNE_POLICE, Relation::kOwnCommune, Reach::kWrite},
    // Household registration: the village reads and writes; police and town read.
    {Record::kHouseholdRegistration, hamlet::v1::ROLE_MEMBER, Relation::kOwnUnit, Reach::kWrite},
    {Record::kHouseholdRegistration, hamlet::v1::ROLE_TEAM_LEADER, Relation::kOwnUnit, Reach::kWrite},
    {Record::kHouseholdRegistration, hamlet::v1::ROLE_COMMUNE_POLICE, Relation::kOwnCommune, Reach::kRead},
    {Record::kHouseholdRegistration, hamlet::v1::ROLE_TOWN_OFFICER, Relation::kAnyInServer, Reach::kRead},
    {Record::kHouseholdRegistration, hamlet::v1::ROLE_REPLICATION_NODE, Relation::kWithinUnit, Reach::kWrite},
    // Teams: reference data everyone reads; leaders keep their own team,
    // commune officers their commune's, the town all.
    {Record::kTeam, hamlet::v1::ROLE_MEMBER, Relation::kAnyInServer, Reach::kRead},
    {Record::kTeam, hamlet::v1::ROLE_TEAM_LEADER, Relation::kAnyInServer, Reach::kRead},
    {Record::kTeam, hamlet::v1::ROLE_TEAM_LEADER, Relation::kOwnUnit, Reach::kWrite},
    {Record::kTeam, hamlet::v1::ROLE_COMMUNE_POLICE, Relation::kOwnCommune, Reach::kWrite},
    {Record::kTeam, hamlet::v1::ROLE_COMMUNE_POLICE, Relation::kAnyInServer, Reach::kRead},
    {Record::kTeam, hamlet::v1::ROLE_COMMUNE_JUSTICE, Relation::kOwnCommune, Reach::kWrite},
    {Record::kTeam, hamlet::v1::ROLE_COMMUNE_JUSTICE, Relation::kAnyInServer, Reach::kRead},
    {Record::kTeam, hamlet::v1::ROLE_TOWN_OFFICER, Relation::kAnyInServer, Reach::kWrite},
    {Record::kTeam, hamlet::v1::ROLE_PROVINCE_OFFICER, Relation::kAnyInServer, Reach::kRead},
    {Record::kTeam, hamlet::v1::ROLE_REPLICATION_NODE, Relation::kWithinUnit, Reach::kWrite},
    // Admin units: reference data; each person reads the units their work
    // names (a phone of one commune does not carry the province's tree);
    // admins and replication write.
    {Record::kAdminUnit, hamlet::v1::ROLE_MEMBER, Relation::kUnitOfConcern, Reach::kRead},
    {Record::kAdminUnit, hamlet::v1::ROLE_TEAM_LEADER, Relation::kUnitOfConcern, Reach::kRead},
    {Record::kAdminUnit, hamlet::v1::ROLE_COMMUNE_POLICE, Relation::kUnitOfConcern, Reach::kRead},
    {Record::kAdminUnit, hamlet::v1::ROLE_COMMUNE_JUSTICE, Relation::kUnitOfConcern, Reach::kRead},
    {Record::kAdminUnit, hamlet::v1::ROLE_TOWN_OFFICER, Relation::kUnitOfConcern, Reach::kRead},
    {Record::kAdminUnit, hamlet::v1::ROLE_PROVINCE_OFFICER, Relation::kUnitOfConcern, Reach::kRead},
    {Record::kAdminUnit, hamlet::v1::ROLE_ADMIN, Relation::kAnyInServer, Reach::kWrite},
    // A lower tier takes the admin units from the province; it never sends them up.
    {Record::kAdminUnit, hamlet::v1::ROLE_REPLICATION_NODE, Relation::kAnyInServer, Reach::kRead},
};

// The commune of a principal's unit; the unit itself above commune level.
std::string CommuneOfPrincipal(const Principal& p, const UnitDirectory& units) {
  const std::string commune = units.CommuneOf(p.unit_code);
  return commune.empty() ? p.unit_code : commune;
}

// True if `unit` is one the principal's work names: a unit above the
// principal's own (the town and province it reports to), or any unit in its
// area (its commune and villages; for a town or province officer, the town or
// province). Read from the unit itself, so a deleted unit's tombstone reaches
// whoever held it. A unit merged away (successor_codes) stays of concern while
// a successor is: older records still name it.
bool UnitOfConcern(const Principal& p, const hamlet::v1::AdminUnit& unit, const UnitDirectory& units, int depth = 0) {
  const std::string area = CommuneOfPrincipal(p, units);
  if (units.IsWithin(p.unit_code, unit.code()) || unit.code() == area || units.IsWithin(unit.parent_code(), area)) {
    return true;
  }
  if (depth >= 4) return false;  // The bound guards against a cycle of successors.
  return std::any_of(unit.successor_codes().begin(), unit.successor_codes().end(), [&](const std::string& code) {
    const hamlet::v1::AdminUnit* successor = units.Find(code);
    return successor != nullptr && UnitOfConcern(p, *successor, units, depth + 1);
  });
}

// `admin_unit` is the record's body if it is an admin unit, else nullptr.
bool Holds(Relation relation, const Principal& p, const AccessFacts& record, const hamlet::v1::AdminUnit* admin_unit,
           const UnitDirectory& units) {
  switch (relation) {
    case Relation::kAnyInServer:
      return true;
    case Relation::kOwnCommune: {
      const std::string commune = units.CommuneOf(record.unit_code);
      return !commune.empty() && commune == CommuneOfPrincipal(p, units);
    }
    case Relation::kOwnUnit:
    case Relation::kOwnUnitAuthored: {
      const bool in_unit = record.unit_code == p.unit_code ||
                           (units.CommuneOf(p.unit_code) == p.unit_code &&  // a commune covers its villages
                            units.CommuneOf(record.unit_code) == p.unit_code);
      return in_unit && (relation == Relation::kOwnUnit || record.author == p.person_id);
    }
    case Relation::kWithinUnit:
      return units.IsWithin(record.unit_code, p.unit_code);
    case Relation::kUnitOfConcern:
      return admin_unit != nullptr && UnitOfConcern(p, *admin_unit, units);
    case Relation::kReferredToPolice:
      return record.referred_to_police && Holds(Relation::kOwnCommune, p, record, admin_unit, units);
  }
  return false;
}

Reach ReachOf(const Principal& principal, const AccessFacts& facts, const hamlet::v1::AdminUnit* admin_unit,
              const UnitDirectory& units) {
  // Any sealed record is guarded like an informant's identity.
  const Record::BodyCase type =
      facts.sensitivity == hamlet::v1::SENSITIVITY_SEALED ? Record::kInformantIdentity : facts.type;
  Reach best = Reach::kNone;
  for (const Row& row : kRows) {
    if (row.type != type || row.role != principal.role) continue;
    if (Holds(row.relation, principal, facts, admin_unit, units)) best = std::max(best, row.reach);
  }
  return best;
}

}  // namespace

AccessFacts AccessFactsOf(const Record& record) {
  AccessFacts facts;
  facts.type = record.body_case();
  facts.sensitivity = record.sensitivity();
  facts.unit_code = record.unit_code();
  facts.author = record.author();
  facts.referred_to_police = record.has_mediation_case() &&
                             record.mediation_case().transferred_to() == hamlet::v1::TRANSFER_TARGET_COMMUNE_POLICE;
  return facts;
}

Reach ReachOf(const Principal& principal, const Record& record, const UnitDirectory& units) {
  return ReachOf(principal, AccessFactsOf(record), record.has_admin_unit() ? &record.admin_unit() : nullptr, units);
}

std::optional<Reach> ReachOfFacts(const Principal& principal, const AccessFacts& facts, const UnitDirectory& units) {
  if (facts.type == Record::kAdminUnit) return std::nullopt;
  return ReachOf(principal, facts, nullptr, units);
}

bool SeesWholeServer(Role role) {
  return role == hamlet::v1::ROLE_TOWN_OFFICER || role == hamlet::v1::ROLE_PROVINCE_OFFICER ||
         role == hamlet::v1::ROLE_REPLICATION_NODE;
}

bool MayReadScope(const Principal& principal, const std::string& commune, const UnitDirectory& units) {
  if (SeesWholeServer(principal.role)) return true;
  if (principal.role == hamlet::v1::ROLE_ADMIN) return false;
  return !commune.empty() && commune == CommuneOfPrincipal(principal, units);
}

namespace {

// Personal data the province does not see: the parties of a mediation case
// (names, ages, addresses), the head of a registered household, and any field
// of a newer app (this server cannot tell whether it is personal).
void RedactBody(google::protobuf::Message* body) {
  body->DiscardUnknownFields();
  if (auto* mediation = dynamic_cast<hamlet::v1::MediationCase*>(body)) {
    for (auto& party : *mediation->mutable_parties()) {
      party.clear_name();
      party.clear_age();
      party.clear_address();
    }
  }
  if (auto* household = dynamic_cast<hamlet::v1::HouseholdRegistration*>(body)) {
    household->clear_household();
    household->clear_head();
  }
}

void RedactForProvince(Record* record) {
  if (auto* body = MutableRecordBody(record)) RedactBody(body);
  for (auto& conflict : *record->mutable_conflicts()) {
    for (auto& value : *conflict.mutable_values()) {
      if (auto* body = MutableRecordBody(value.mutable_value())) RedactBody(body);
    }
  }
  for (auto& lost : *record->mutable_superseded()) {
    if (auto* body = MutableRecordBody(lost.mutable_value())) RedactBody(body);
  }
}

}  // namespace

bool RedactsNothing(Role role) { return role != hamlet::v1::ROLE_PROVINCE_OFFICER; }

void Redact(const Principal& principal, Record* record) {
  if (!RedactsNothing(principal.role)) RedactForProvince(record);
}

bool PrepareForProvince(Record* record) {
  if (record->has_informant_identity() || record->sensitivity() == hamlet::v1::SENSITIVITY_SEALED ||
      record->has_admin_unit()) {
    return false;
  }
  RedactForProvince(record);
  return true;
}

}  // namespace hamlet::sync
