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

// Checks that every lifecycle field `change` writes moves legally, by the
// moves declared on the enum values (hamlet.v1.lifecycle in records.proto).
//
// Only a change that would move the lifecycle forward — to a (round, rank)
// above every value the record holds — is checked, and it must be a legal move
// from one of them (from any competing value while a conflict is open). A
// change at or below the current (round, rank) moves nothing: the merge
// orders it, so a device that made legal moves offline is never refused
// because another device moved the record meanwhile.
//
// FAILED_PRECONDITION naming the record, the current state(s) and the moves
// allowed from them.
absl::Status CheckLifecycleMoves(const hamlet::v1::Record& state, const hamlet::v1::Record& change,
                                 Authority authority);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_LIFECYCLE_H_
