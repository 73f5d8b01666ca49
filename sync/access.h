#ifndef HAMLET_SYNC_ACCESS_H_
#define HAMLET_SYNC_ACCESS_H_

#include <optional>
#include <string>

#include "hamlet/v1/sync.pb.h"
#include "sync/units.h"

namespace hamlet::sync {

// Who is asking: an enrolled device's person, role and unit.
struct Principal {
  hamlet::v1::Role role = hamlet::v1::ROLE_UNSPECIFIED;
  // Village, commune or town the person works in.
  std::string unit_code;
  std::string person_id;
};

// What a principal may do with one record.
enum class Reach {
  kNone,
  // May create it (as its author) but never read it back: a member recording
  // an informant's identity.
  kCreateOnly,
  kRead,
  kWrite,
};

// The one table that decides who may see and change what (docs/DOMAIN.md, "Who may
// see what"); the rows are in access.cc, one per (record type, role, relation).
// A reviewer holds those rows against docs/DOMAIN.md. Teams are identified with the
// unit they serve: "own team" is "own unit" (the village, or the commune and
// its villages, the person is enrolled for). A record of any type marked
// SENSITIVITY_SEALED is guarded like an informant identity.
Reach ReachOf(const Principal& principal, const hamlet::v1::Record& record, const UnitDirectory& units);

// What ReachOf reads of a record that is not an admin unit, small enough to
// keep beside each entry of the change index, so that a pull can decide
// whether a caller reads a record without reading the record.
struct AccessFacts {
  hamlet::v1::Record::BodyCase type = hamlet::v1::Record::BODY_NOT_SET;
  hamlet::v1::Sensitivity sensitivity = hamlet::v1::SENSITIVITY_UNSPECIFIED;
  std::string unit_code;
  std::string author;
  // A mediation case transferred to the commune police.
  bool referred_to_police = false;
};
AccessFacts AccessFactsOf(const hamlet::v1::Record& record);

// ReachOf(principal, record, units) for any record whose AccessFactsOf is
// `facts`; nullopt for an admin unit, whose reach depends on the unit's own
// fields (its code, parent and successors).
std::optional<Reach> ReachOfFacts(const Principal& principal, const AccessFacts& facts, const UnitDirectory& units);

// True if `principal` may pull or watch commune `commune` ("" = the whole
// server): its own commune, or any for town-level roles.
bool MayReadScope(const Principal& principal, const std::string& commune, const UnitDirectory& units);

// True for roles that see the whole server (town and province officers,
// replication nodes).
bool SeesWholeServer(hamlet::v1::Role role);

// Removes what `principal` may read of a record but not see: for the province,
// the parties' personal data (names, ages, addresses) and a household's name
// and head, in the body, conflicts and superseded values.
// REQUIRES: ReachOf(...) >= kRead.
void Redact(const Principal& principal, hamlet::v1::Record* record);

// True if Redact leaves every record as it is for principals of `role`
// (every role but the province officer).
bool RedactsNothing(hamlet::v1::Role role);

// What of a town's record goes up to the province (docs/DOMAIN.md): false for a
// record that never leaves the town (informant identities and any record
// marked SENSITIVITY_SEALED) and for admin units (the province owns them and
// sends them down); otherwise redacts `record` as for a province officer and
// returns true. The province thus never holds personal data its officers may
// not read (it keeps household registrations, redacted, only for its counts).
bool PrepareForProvince(hamlet::v1::Record* record);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_ACCESS_H_
