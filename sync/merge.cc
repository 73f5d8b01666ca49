#include "sync/merge.h"

#include <algorithm>
#include <memory>

#include "sync/stamp.h"

namespace hamlet::sync {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using hamlet::v1::Record;
using hamlet::v1::Stamp;

const Message* RecordBody(const Record& record) {
  const auto* oneof = Record::descriptor()->FindOneofByName("body");
  const FieldDescriptor* field = record.GetReflection()->GetOneofFieldDescriptor(record, oneof);
  if (field == nullptr) return nullptr;
  return &record.GetReflection()->GetMessage(record, field);
}

Message* MutableRecordBody(Record* record) {
  const auto* oneof = Record::descriptor()->FindOneofByName("body");
  const FieldDescriptor* field = record->GetReflection()->GetOneofFieldDescriptor(*record, oneof);
  if (field == nullptr) return nullptr;
  return record->GetReflection()->MutableMessage(record, field);
}

const Stamp* FindFieldStamp(const Record& record, uint32_t field) {
  const auto& stamps = record.field_stamps();
  auto it = std::lower_bound(stamps.begin(), stamps.end(), field,
                             [](const hamlet::v1::FieldStamp& fs, uint32_t f) { return fs.field() < f; });
  if (it == stamps.end() || it->field() != field) return nullptr;
  return &it->stamp();
}

void SetFieldStamp(Record* record, uint32_t field, const Stamp& stamp) {
  auto* stamps = record->mutable_field_stamps();
  auto it = std::lower_bound(stamps->begin(), stamps->end(), field,
                             [](const hamlet::v1::FieldStamp& fs, uint32_t f) { return fs.field() < f; });
  if (it != stamps->end() && it->field() == field) {
    *it->mutable_stamp() = stamp;
    return;
  }
  const int index = static_cast<int>(it - stamps->begin());
  hamlet::v1::FieldStamp* added = stamps->Add();
  added->set_field(field);
  *added->mutable_stamp() = stamp;
  // Move the new element from the end to its place.
  for (int i = stamps->size() - 1; i > index; --i) stamps->SwapElements(i, i - 1);
}

Record EmptyChangeOf(const Record& record) {
  Record change;
  change.set_id(record.id());
  change.set_unit_code(record.unit_code());
  change.set_author(record.author());
  *change.mutable_create_time() = record.create_time();
  change.set_sensitivity(record.sensitivity());
  const auto* oneof = Record::descriptor()->FindOneofByName("body");
  const FieldDescriptor* body_field = record.GetReflection()->GetOneofFieldDescriptor(record, oneof);
  if (body_field != nullptr) change.GetReflection()->MutableMessage(&change, body_field);
  return change;
}

bool MergeRecord(const Record& change, Record* state, const FieldNumbers& keep_local) {
  bool changed = false;
  if (RecordBody(*state) == nullptr && RecordBody(change) != nullptr) {
    *state = EmptyChangeOf(change);
    changed = true;
  }

  const Message* change_body = RecordBody(change);
  Message* state_body = MutableRecordBody(state);
  if (change_body != nullptr && state_body != nullptr && change.field_stamps_size() > 0) {
    // Winning fields are swapped out of a scratch copy, so each merge copies the
    // change's body once however many fields win.
    std::unique_ptr<Message> scratch;
    const auto* descriptor = state_body->GetDescriptor();
    const auto* reflection = state_body->GetReflection();
    for (const auto& fs : change.field_stamps()) {
      if (keep_local.count(fs.field()) > 0) continue;
      const Stamp* current = FindFieldStamp(*state, fs.field());
      if (current != nullptr && CompareStamps(fs.stamp(), *current) <= 0) continue;
      const FieldDescriptor* field = descriptor->FindFieldByNumber(static_cast<int>(fs.field()));
      if (field == nullptr) continue;  // Validation refuses these before a merge.
      if (!scratch) {
        scratch.reset(change_body->New());
        scratch->CopyFrom(*change_body);
      }
      reflection->SwapFields(scratch.get(), state_body, {field});
      SetFieldStamp(state, fs.field(), fs.stamp());
      changed = true;
    }
  }

  if (change.deleted() &&
      (!state->deleted() || CompareStamps(change.deleted_stamp(), state->deleted_stamp()) < 0)) {
    state->set_deleted(true);
    *state->mutable_deleted_stamp() = change.deleted_stamp();
    changed = true;
  }
  return changed;
}

}  // namespace hamlet::sync
