// The merge engine's laws (sync/merge.h) on records decoded from arbitrary
// bytes. Writing a ⊔ b for "merge b into a", the header promises
//   a ⊔ b == b ⊔ a,  (a ⊔ b) ⊔ c == a ⊔ (b ⊔ c),  a ⊔ a == a,
// compared as serialized bytes, for changes that passed ValidateChange and
// belong to one record; and that every value that loses is kept (visible,
// competing in a conflict, or among the superseded), and that a deletion
// sticks. tests/sync/merge_test.cc checks the same laws on generated
// histories; here the changes are whatever the fuzzer makes of them.
//
// Input: one control byte, then a serialized PushRequest whose changes (up to
// kMaxChanges with a body of the first one's type) are the history.
//   bit 0     changes may be resolutions (stamps with `supersedes`)
//   bits 1-3  where the history is cut into a, b and c (with bits 4-6)
//
// The history is made to meet the premises of the laws first:
//   - one record: every change gets the same envelope (id, unit, author,
//     create time, sensitivity), as EmptyChangeOf gives a device;
//   - one write, one stamp: a hybrid clock never stamps two writes alike, so
//     each change's value-carrying stamps get its index appended to their
//     node. Stamps that only refer to other writes (a removal's, `removed`,
//     `supersedes`) are left as they are, so they can name those writes;
//   - a resolution settles what it has seen: its `supersedes` is below its
//     own stamp, as Town::ResolveConflict makes it.
// Changes are mended of what ValidateChange refuses for form alone (Repair);
// those that still fail it are dropped.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "hamlet/v1/sync.pb.h"
#include "sync/merge.h"
#include "sync/schema.h"
#include "sync/stamp.h"
#include "sync/validate.h"
#include "tests/fuzz/fuzz_support.h"

namespace hamlet::fuzz {
namespace {

using hamlet::v1::Record;
using sync::CompareStamps;
using sync::MergeRecord;

constexpr size_t kMaxChanges = 6;
constexpr char kId[] = "6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c71";

std::string Bytes(const Record& r) { return r.SerializeAsString(); }

// True if the stamp entry carries a value (a field's, or a set element's),
// rather than only recording what its writer saw removed.
bool CarriesValue(const hamlet::v1::FieldStamp& fs) {
  return !fs.has_removed() || CompareStamps(fs.stamp(), fs.removed()) > 0;
}

// Mends what ValidateChange would refuse for its form alone, so that more
// of the fuzzer's changes reach the merge: a device sends no server-kept
// fields, stamps in (field, key) order without repeats, every stamp set.
void Repair(Record* change) {
  change->clear_server_seq();
  change->clear_conflicts();
  change->clear_superseded();
  auto* stamps = change->mutable_field_stamps();
  std::stable_sort(stamps->begin(), stamps->end(), [](const auto& a, const auto& b) {
    return a.field() != b.field() ? a.field() < b.field() : a.key() < b.key();
  });
  for (int i = stamps->size() - 1; i > 0; --i) {
    if (stamps->Get(i).field() == stamps->Get(i - 1).field() && stamps->Get(i).key() == stamps->Get(i - 1).key()) {
      stamps->DeleteSubrange(i, 1);
    }
  }
  const auto mend = [](hamlet::v1::Stamp* s) {
    if (s->physical_ms() <= 0) s->set_physical_ms(1);
    if (s->node().empty()) s->set_node("n");
  };
  for (auto& fs : *stamps) mend(fs.mutable_stamp());
  if (change->deleted()) mend(change->mutable_deleted_stamp());
}

std::vector<Record> HistoryOf(const hamlet::v1::PushRequest& request, bool resolutions) {
  std::vector<Record> history;
  Record envelope;
  for (const Record& input : request.changes()) {
    if (history.size() >= kMaxChanges) break;
    if (sync::RecordBody(input) == nullptr) continue;
    if (!history.empty() && input.body_case() != history.front().body_case()) continue;
    Record change = input;
    if (history.empty()) {
      envelope.set_id(kId);
      envelope.set_unit_code("07132");
      envelope.set_author("person-1");
      envelope.mutable_create_time()->set_seconds(1'796'000'000);
      envelope.set_sensitivity(hamlet::v1::Sensitivity_IsValid(change.sensitivity()) ? change.sensitivity()
                                                                                     : hamlet::v1::SENSITIVITY_NORMAL);
    }
    change.set_id(envelope.id());
    change.set_unit_code(envelope.unit_code());
    change.set_author(envelope.author());
    *change.mutable_create_time() = envelope.create_time();
    change.set_sensitivity(envelope.sensitivity());
    Repair(&change);
    bool settles_unseen = false;
    for (auto& fs : *change.mutable_field_stamps()) {
      if (CarriesValue(fs)) fs.mutable_stamp()->mutable_node()->append(absl::StrCat("#", history.size()));
      settles_unseen = settles_unseen || (fs.has_supersedes() && CompareStamps(fs.supersedes(), fs.stamp()) >= 0);
    }
    if (settles_unseen) continue;
    const auto origin = resolutions ? sync::ChangeOrigin::kResolution : sync::ChangeOrigin::kDevice;
    if (!sync::ValidateChange(change, ReferenceDirectory(), origin).ok()) continue;
    history.push_back(std::move(change));
  }
  return history;
}

Record Fold(const std::vector<const Record*>& changes) {
  Record state;
  for (const Record* c : changes) MergeRecord(*c, &state);
  return state;
}

Record Join(const Record& a, const Record& b) {
  Record out = a;
  MergeRecord(b, &out);
  return out;
}

std::string Describe(const std::vector<Record>& history) {
  std::string out;
  for (size_t i = 0; i < history.size(); ++i) absl::StrAppend(&out, "change ", i, ":\n", history[i].DebugString());
  return out;
}

void CheckSame(const Record& left, const Record& right, absl::string_view law, const std::vector<Record>& history) {
  if (Bytes(left) == Bytes(right)) return;
  Violation(law, absl::StrCat(Describe(history), "left:\n", left.DebugString(), "right:\n", right.DebugString()));
}

// Every value written is visible, competing in a conflict, or superseded
// (while fewer than kMaxSuperseded are kept), as merge_test.cc's
// ConvergesAndLosesNothing states it.
void CheckNothingLost(const Record& state, const std::vector<Record>& history) {
  if (state.superseded_size() >= sync::kMaxSuperseded) return;
  const auto* body_type = sync::RecordBody(state)->GetDescriptor();
  const sync::BodySchema& schema = sync::BodySchema::For(body_type);
  for (const Record& change : history) {
    for (const auto& written : change.field_stamps()) {
      if (!CarriesValue(written)) continue;
      // Lifecycle parts are kept with their lifecycle field.
      const sync::FieldRule* rule = schema.find(static_cast<int>(written.field()));
      if (rule != nullptr && rule->leader != nullptr && rule->leader != rule->field) continue;
      const auto* fs = sync::FindFieldStamp(state, written.field(), written.key());
      bool found = fs != nullptr && CompareStamps(fs->stamp(), written.stamp()) == 0 && CarriesValue(*fs);
      if (const auto* conflict = sync::FindConflict(state, written.field())) {
        for (const auto& v : conflict->values()) found = found || CompareStamps(v.stamp(), written.stamp()) == 0;
      }
      for (const auto& v : state.superseded()) {
        found = found || (v.field() == written.field() && v.key() == written.key() &&
                          CompareStamps(v.stamp(), written.stamp()) == 0);
      }
      if (!found) {
        Violation("every value that loses is kept (sync/merge.h)",
                  absl::StrCat("lost field ", written.field(), " key \"", written.key(), "\" stamp ",
                               sync::StampToString(written.stamp()), "\n", Describe(history), "state:\n",
                               state.DebugString()));
      }
    }
  }
}

void FuzzMerge(uint8_t control, const uint8_t* data, size_t size) {
  hamlet::v1::PushRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  const std::vector<Record> history = HistoryOf(request, (control & 1) != 0);
  if (history.empty()) return;
  const size_t n = history.size();
  std::vector<const Record*> in_order;
  for (const Record& c : history) in_order.push_back(&c);
  const Record state = Fold(in_order);

  // a ⊔ a == a, for every change and for the state.
  for (const Record& c : history) {
    Record again = state;
    Check(!MergeRecord(c, &again), "a change merged again changes nothing (idempotent)",
          absl::StrCat(Describe(history), "state:\n", state.DebugString(), "after:\n", again.DebugString()));
  }
  Record self = state;
  Check(!MergeRecord(state, &self), "a state merged into itself changes nothing (idempotent)", state.DebugString());

  // a ⊔ b == b ⊔ a, for two changes and for two states.
  if (n >= 2) {
    CheckSame(Fold({&history[0], &history[1]}), Fold({&history[1], &history[0]}), "a ⊔ b == b ⊔ a (changes)", history);
  }
  const size_t cut1 = ((control >> 1) & 7) % (n + 1);
  const size_t cut2 = cut1 + ((control >> 4) & 7) % (n - cut1 + 1);
  std::vector<const Record*> slices[3];
  for (size_t i = 0; i < n; ++i) slices[i < cut1 ? 0 : i < cut2 ? 1 : 2].push_back(&history[i]);
  const Record a = Fold(slices[0]);
  const Record b = Fold(slices[1]);
  const Record c = Fold(slices[2]);
  CheckSame(Join(a, b), Join(b, a), "a ⊔ b == b ⊔ a (states)", history);

  // (a ⊔ b) ⊔ c == a ⊔ (b ⊔ c), and both are the whole history's state.
  const Record left = Join(Join(a, b), c);
  CheckSame(left, Join(a, Join(b, c)), "(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)", history);
  CheckSame(left, state, "the states of a history's parts join to the state of the history", history);

  // Any delivery order converges.
  std::vector<const Record*> reversed(in_order.rbegin(), in_order.rend());
  CheckSame(Fold(reversed), state, "changes delivered in any order converge", history);

  CheckNothingLost(state, history);
  bool any_deleted = false;
  for (const Record& change : history) any_deleted = any_deleted || change.deleted();
  Check(state.deleted() == any_deleted, "once deleted, always deleted", state.DebugString());

  // A merged state goes to other servers whole (validate.h, ChangeOrigin::kReplica).
  const absl::Status valid = sync::ValidateChange(state, ReferenceDirectory(), sync::ChangeOrigin::kReplica);
  Check(valid.ok(), "a merged state is a valid replica change",
        absl::StrCat(valid.ToString(), "\n", Describe(history), "state:\n", state.DebugString()));
}

}  // namespace
}  // namespace hamlet::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  hamlet::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  hamlet::fuzz::FuzzMerge(data[0], data + 1, size - 1);
  return 0;
}
