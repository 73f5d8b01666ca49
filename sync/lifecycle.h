#ifndef HAMLET_SYNC_LIFECYCLE_H_
#define HAMLET_SYNC_LIFECYCLE_H_

#include "absl/status/status.h"
#include "hamlet/v1/sync.pb.h"

namespace hamlet::sync {

// What a writer may do to a lifecycle beyond the ordinary moves.
enum class Authority {
  // A team member or leader: the moves declared in `next` and `next_round`.
  kTeam,
  // A commune-level role (commune police or justice, town officer, admin): also
  // `commune_next_round`, such as reopening a closed case.
  kCommune,
};

// From where a change is checked.
enum class Vantage {
  // The device making the edit: `state` is exactly what its user saw, so the
  // change must stay put or be a legal move forward from it.
  kWriterSawState,
  // The server: `state` may be ahead of what the writer saw.
  kServer,
};

// Checks that every lifecycle field `change` writes moves legally, by the
// moves declared on the enum values (hamlet.v1.lifecycle in records.proto).
// A new lifecycle starts in round 1 (for lifecycles with a round).
//
// On the server, only a change that would move the lifecycle forward — to a
// (round, rank) above every value the record holds — is checked, and it must be
// a legal move from one of the states the record was in: the visible value, a
// competing value of an open conflict, or an earlier state kept among the
// superseded values (the writer may have moved from a state others have since
// overtaken). A change at or below the current (round, rank) moves nothing:
// the merge orders it. So a device that made legal moves offline is not
// refused because another device moved the record meanwhile, unless the
// states it moved from have aged out of the superseded values.
//
// FAILED_PRECONDITION naming the record, the current state(s) and the moves
// allowed from them.
absl::Status CheckLifecycleMoves(const hamlet::v1::Record& state, const hamlet::v1::Record& change, Authority authority,
                                 Vantage vantage);

// True if `change` writes lifecycle fields (and the fields written with them)
// and nothing else.
bool OnlyLifecycle(const hamlet::v1::Record& change);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_LIFECYCLE_H_
