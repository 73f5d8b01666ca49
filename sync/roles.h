#ifndef HAMLET_SYNC_ROLES_H_
#define HAMLET_SYNC_ROLES_H_

#include "hamlet/v1/records.pb.h"
#include "sync/lifecycle.h"

namespace hamlet::sync {

// What a role may do to a lifecycle (sync/lifecycle.h): commune-level roles and
// above may make commune-only moves such as reopening a closed case.
inline Authority LifecycleAuthority(hamlet::v1::Role role) {
  switch (role) {
    case hamlet::v1::ROLE_COMMUNE_POLICE:
    case hamlet::v1::ROLE_COMMUNE_JUSTICE:
    case hamlet::v1::ROLE_TOWN_OFFICER:
    case hamlet::v1::ROLE_ADMIN:
    // A lower-tier server carries moves made there by commune-level roles.
    case hamlet::v1::ROLE_REPLICATION_NODE:
      return Authority::kCommune;
    default:
      return Authority::kTeam;
  }
}

// Who may settle a conflict (docs/DOMAIN.md: team leaders resolve conflicting
// edits; commune-level roles supervise them).
inline bool MayResolveConflicts(hamlet::v1::Role role) {
  return role == hamlet::v1::ROLE_TEAM_LEADER || role == hamlet::v1::ROLE_COMMUNE_POLICE ||
         role == hamlet::v1::ROLE_COMMUNE_JUSTICE || role == hamlet::v1::ROLE_TOWN_OFFICER ||
         role == hamlet::v1::ROLE_ADMIN;
}

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_ROLES_H_
