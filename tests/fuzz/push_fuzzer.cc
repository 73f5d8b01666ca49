// What a town server does with a device's bytes before they reach storage:
// the sync layer's checks, called in the order server/town.cc calls them, on
// requests decoded from arbitrary bytes. Push: ValidatePushedChange,
// MaxStampMs, then per record CheckSameRecord or CheckCreatable, ReachOf,
// CheckLifecycleMoves, MergeRecord, and the report tallies the commit counts.
// Pull: the scope, then DecodeCursor. No gRPC, no storage: the records a push
// merges into live in a map.
//
// Input: one control byte, then a serialized PushRequest, or (control bit 7)
// a serialized PullRequest.
//   bits 0-2  the caller's role: ROLE_MEMBER (1) .. ROLE_REPLICATION_NODE (8)
//   bits 3-4  the caller's unit: a village, its commune, another commune, the town
//
// Besides "no crash, no sanitizer report", it checks what the headers promise:
//   - each check returns OK or the status code its header names;
//   - a change valid from a device is valid as a resolution, and a change
//     valid as a resolution is valid from a replica (each origin allows more);
//   - a decoded cursor encodes back to the same bytes;
//   - merging a change again, or a state into itself, changes nothing;
//   - every state a device's push leaves, prepared for the province as the
//     replicator sends it, passes the province's validation of a replica's
//     change.

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "hamlet/v1/sync.pb.h"
#include "sync/access.h"
#include "sync/cursor.h"
#include "sync/lifecycle.h"
#include "sync/merge.h"
#include "sync/report.h"
#include "sync/roles.h"
#include "sync/validate.h"
#include "tests/fuzz/fuzz_support.h"

namespace hamlet::fuzz {
namespace {

using absl::StatusCode;
using hamlet::v1::Record;

// As server/town.h's default TownOptions.
constexpr char kTownCode[] = "206";

sync::Principal PrincipalOf(uint8_t control) {
  static const char* const kUnits[] = {"07132-K01", "07132", "07135", kTownCode};
  sync::Principal principal;
  principal.role = static_cast<hamlet::v1::Role>(1 + (control & 7));
  principal.unit_code = kUnits[(control >> 3) & 3];
  principal.person_id = "person-1";
  return principal;
}

// Town::ValidatePushedChange.
absl::Status ValidatePushed(const Record& change, sync::ChangeOrigin origin) {
  const sync::UnitDirectory& units = ReferenceDirectory();
  absl::Status device = sync::ValidateChange(change, units, sync::ChangeOrigin::kDevice);
  absl::Status resolution = sync::ValidateChange(change, units, sync::ChangeOrigin::kResolution);
  absl::Status replica = sync::ValidateChange(change, units, sync::ChangeOrigin::kReplica);
  CheckCode(device, {StatusCode::kInvalidArgument}, "ValidateChange");
  CheckCode(resolution, {StatusCode::kInvalidArgument}, "ValidateChange");
  CheckCode(replica, {StatusCode::kInvalidArgument}, "ValidateChange");
  Check(!device.ok() || resolution.ok(), "a change valid from a device is valid as a resolution",
        absl::StrCat(resolution.ToString(), "\n", change.DebugString()));
  Check(!resolution.ok() || replica.ok(), "a change valid as a resolution is valid from a replica",
        absl::StrCat(replica.ToString(), "\n", change.DebugString()));
  absl::Status status = origin == sync::ChangeOrigin::kReplica ? replica : device;
  if (!status.ok()) return status;
  if (!change.has_admin_unit() && !units.IsWithin(change.unit_code(), kTownCode)) {
    return absl::InvalidArgumentError("unit not served here");
  }
  if (change.has_admin_unit() && !units.CommuneOf(change.unit_code()).empty()) {
    return absl::InvalidArgumentError("admin unit filed in a commune");
  }
  return absl::OkStatus();
}

void FuzzPush(uint8_t control, const uint8_t* data, size_t size) {
  hamlet::v1::PushRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  const sync::Principal principal = PrincipalOf(control);
  const bool replica = principal.role == hamlet::v1::ROLE_REPLICATION_NODE;
  const sync::ChangeOrigin origin = replica ? sync::ChangeOrigin::kReplica : sync::ChangeOrigin::kDevice;
  const sync::UnitDirectory& units = ReferenceDirectory();
  sync::IsUuid(request.device_id());
  sync::IsUuid(request.batch_id());

  // Town::MergeChanges, with the server refusing only the changes that fail
  // (it refuses the whole batch) so that the rest still reach the merge.
  std::map<std::string, Record> states;
  int merged = 0;
  for (const Record& change : request.changes()) {
    if (++merged > 64) break;
    if (!ValidatePushed(change, origin).ok()) continue;
    sync::MaxStampMs(change);
    units.CommuneOf(change.unit_code());
    Record& state = states[change.id()];
    const bool exists = sync::RecordBody(state) != nullptr;
    if (exists) {
      const absl::Status same = sync::CheckSameRecord(change, state);
      CheckCode(same, {StatusCode::kFailedPrecondition}, "CheckSameRecord");
      if (!same.ok()) continue;
    } else {
      const absl::Status creatable = sync::CheckCreatable(change);
      CheckCode(creatable, {StatusCode::kInvalidArgument}, "CheckCreatable");
      if (!creatable.ok()) {
        states.erase(change.id());
        continue;
      }
    }
    sync::ReachOf(principal, exists ? state : change, units);
    sync::OnlyLifecycle(change);
    const sync::Authority authority = sync::LifecycleAuthority(principal.role);
    const absl::Status seen = sync::CheckLifecycleMoves(state, change, authority, sync::Vantage::kWriterSawState);
    CheckCode(seen, {StatusCode::kFailedPrecondition}, "CheckLifecycleMoves");
    if (!replica) {
      const absl::Status moves = sync::CheckLifecycleMoves(state, change, authority, sync::Vantage::kServer);
      CheckCode(moves, {StatusCode::kFailedPrecondition}, "CheckLifecycleMoves");
      if (!moves.ok()) continue;
    }
    const Record before = state;
    sync::MergeRecord(change, &state);
    // What the store's commit then counts for the reports (storage/town_store.cc).
    sync::Tallies delta;
    sync::AddTallyDelta(exists ? before : Record(), state, &delta);
    const std::string after = state.SerializeAsString();
    Check(!sync::MergeRecord(change, &state) && state.SerializeAsString() == after,
          "merging a change a second time changes nothing (idempotent)",
          absl::StrCat("change:\n", change.DebugString(), "state:\n", state.DebugString()));
  }

  for (auto& [id, state] : states) {
    if (sync::RecordBody(state) == nullptr) continue;  // Its creation was refused.
    const std::string bytes = state.SerializeAsString();
    const Record copy = state;
    Check(!sync::MergeRecord(copy, &state) && state.SerializeAsString() == bytes,
          "merging a state into itself changes nothing (idempotent)", copy.DebugString());
    // What server/replicator.cc sends up from a town, and the province's
    // check of it. (Only for states merged from devices' changes: validation
    // holds a replica's conflicts and superseded values to their type alone.)
    Record up = state;
    if (!replica && sync::PrepareForProvince(&up)) {
      up.clear_server_seq();
      const absl::Status valid = sync::ValidateChange(up, units, sync::ChangeOrigin::kReplica);
      Check(valid.ok(), "a merged state, prepared for the province, is a valid replica change",
            absl::StrCat(valid.ToString(), "\n", up.DebugString()));
    }
    if (sync::ReachOf(principal, state, units) >= sync::Reach::kRead) {
      Record pulled = state;
      sync::Redact(principal, &pulled);
    }
  }
}

void FuzzPull(uint8_t control, const uint8_t* data, size_t size) {
  hamlet::v1::PullRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  const sync::Principal principal = PrincipalOf(control);
  const sync::UnitDirectory& units = ReferenceDirectory();
  sync::IsUuid(request.device_id());
  // Town::ResolveScope, then Town::CursorSeq.
  std::string commune = request.scope_unit_code();
  if (commune.empty() && !sync::SeesWholeServer(principal.role)) commune = units.CommuneOf(principal.unit_code);
  units.Find(request.scope_unit_code());
  sync::MayReadScope(principal, commune, units);
  if (request.cursor().empty()) return;
  absl::StatusOr<sync::Cursor> cursor = sync::DecodeCursor(request.cursor());
  CheckCode(cursor.status(), {StatusCode::kInvalidArgument}, "DecodeCursor");
  if (!cursor.ok()) return;
  Check(sync::EncodeCursor(*cursor) == request.cursor(), "a decoded cursor encodes back to the same bytes");
}

}  // namespace
}  // namespace hamlet::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  hamlet::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  if (data[0] & 0x80) {
    hamlet::fuzz::FuzzPull(data[0], data + 1, size - 1);
  } else {
    hamlet::fuzz::FuzzPush(data[0], data + 1, size - 1);
  }
  return 0;
}
