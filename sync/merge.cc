#include "sync/merge.h"

#include <algorithm>
#include <map>
#include <memory>
#include <vector>

#include "sync/schema.h"
#include "sync/stamp.h"

namespace hamlet::sync {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using hamlet::v1::FieldStamp;
using hamlet::v1::Record;
using hamlet::v1::Stamp;

namespace {

const FieldDescriptor* BodyField(const Record& record) {
  static const auto* oneof = Record::descriptor()->FindOneofByName("body");
  return record.GetReflection()->GetOneofFieldDescriptor(record, oneof);
}

bool FieldStampLess(const FieldStamp& a, uint32_t field, const std::string& key) {
  return a.field() != field ? a.field() < field : a.key() < key;
}

int FindElement(const Message& body, const FieldRule& rule, const std::string& key) {
  const int size = body.GetReflection()->FieldSize(body, rule.field);
  for (int i = 0; i < size; ++i) {
    if (ElementKey(body, rule, i) == key) return i;
  }
  return -1;
}

void RemoveElement(Message* body, const FieldRule& rule, int index) {
  const Reflection* r = body->GetReflection();
  const int last = r->FieldSize(*body, rule.field) - 1;
  if (index != last) r->SwapElements(body, rule.field, index, last);
  r->RemoveLast(body, rule.field);
}

// Sets element `key` of `to` to element `index` of `from`.
void PutElement(const Message& from, int index, Message* to, const FieldRule& rule, const std::string& key) {
  const Reflection* r = to->GetReflection();
  const int at = FindElement(*to, rule, key);
  if (rule.key == nullptr) {
    if (at < 0) r->AddString(to, rule.field, key);
    return;
  }
  const Message& element = from.GetReflection()->GetRepeatedMessage(from, rule.field, index);
  if (at >= 0) {
    r->MutableRepeatedMessage(to, rule.field, at)->CopyFrom(element);
  } else {
    r->AddMessage(to, rule.field)->CopyFrom(element);
  }
}

// Elements in key order, so that equal sets are equal bytes.
void SortElements(Message* body, const FieldRule& rule) {
  const Reflection* r = body->GetReflection();
  const int size = r->FieldSize(*body, rule.field);
  for (int i = 1; i < size; ++i) {
    for (int j = i; j > 0 && ElementKey(*body, rule, j) < ElementKey(*body, rule, j - 1); --j) {
      r->SwapElements(body, rule.field, j, j - 1);
    }
  }
}

// A value on its own: a record with only the body type and `fields` of `body`.
Record PartialOf(const Record& like, const Message& body, const std::vector<const FieldDescriptor*>& fields) {
  Record value;
  Message* out = value.GetReflection()->MutableMessage(&value, BodyField(like));
  for (const FieldDescriptor* f : fields) CopyField(body, out, f);
  return value;
}

// Fields of a newer app, which this build's descriptors lack, travel in the
// body's unknown fields; each is kept as a plain value (last writer wins).
void CopyNewerAppField(const Message& from, Message* to, uint32_t number) {
  google::protobuf::UnknownFieldSet* out = to->GetReflection()->MutableUnknownFields(to);
  out->DeleteByNumber(static_cast<int>(number));
  const google::protobuf::UnknownFieldSet& in = from.GetReflection()->GetUnknownFields(from);
  for (int i = 0; i < in.field_count(); ++i) {
    if (in.field(i).number() == static_cast<int>(number)) out->AddField(in.field(i));
  }
  // In field order, so that equal states are equal bytes whatever order the
  // writes arrived in.
  std::vector<google::protobuf::UnknownField> fields;
  for (int i = 0; i < out->field_count(); ++i) fields.push_back(out->field(i));
  std::stable_sort(fields.begin(), fields.end(), [](const auto& a, const auto& b) { return a.number() < b.number(); });
  google::protobuf::UnknownFieldSet sorted;
  for (const auto& f : fields) sorted.AddField(f);
  out->Clear();
  out->MergeFrom(sorted);
}

Record NewerAppValueOf(const Record& like, const Message& body, uint32_t number) {
  Record value;
  CopyNewerAppField(body, value.GetReflection()->MutableMessage(&value, BodyField(like)), number);
  return value;
}

// One element on its own.
Record ElementOf(const Record& like, const Message& body, const FieldRule& rule, int index) {
  Record value;
  Message* out = value.GetReflection()->MutableMessage(&value, BodyField(like));
  PutElement(body, index, out, rule, ElementKey(body, rule, index));
  return value;
}

Stamp MaxStamp(const Stamp& a, const Stamp& b) { return CompareStamps(a, b) >= 0 ? a : b; }
bool IsSet(const Stamp& s) { return s.physical_ms() != 0 || s.logical() != 0 || !s.node().empty(); }

std::string StampKey(const Stamp& s) { return StampToString(s); }

// One write competing for a value.
struct Candidate {
  Record value;  // Partial record.
  Stamp stamp;
};

class Merger {
 public:
  Merger(const Record& change, Record* state, const FieldNumbers& keep_local)
      : change_(change), state_(state), keep_local_(keep_local) {}

  // Whether Run changed the state. Each step knows whether it did, from the
  // stamps it compared, so the state is never serialized to find out.
  bool changed() const { return changed_; }

  void Run() {
    const Message* change_body = RecordBody(change_);
    Message* state_body = MutableRecordBody(state_);
    if (change_body != nullptr && state_body != nullptr) {
      const BodySchema& schema = BodySchema::For(state_body->GetDescriptor());
      for (const FieldRule& rule : schema.rules()) {
        if (keep_local_.count(rule.field->number()) > 0) continue;
        if (rule.leader != nullptr && rule.leader != rule.field) continue;  // Merged with its lifecycle.
        if (rule.policy == hamlet::v1::MERGE_POLICY_LIFECYCLE) {
          MergeLifecycle(schema, rule, *change_body, state_body);
        } else if (rule.is_set()) {
          MergeElements(rule, *change_body, state_body);
        } else {
          MergeRegister(rule, *change_body, state_body);
        }
      }
      for (const FieldStamp& fs : change_.field_stamps()) {
        if (state_body->GetDescriptor()->FindFieldByNumber(static_cast<int>(fs.field())) == nullptr) {
          MergeNewerAppField(fs.field(), *change_body, state_body);
        }
      }
    }
    MergeDeletion();
    MergeSuperseded();
  }

 private:
  void Supersede(uint32_t field, const std::string& key, const Stamp& stamp, Record value) {
    hamlet::v1::SupersededValue lost;
    lost.set_field(field);
    lost.set_key(key);
    *lost.mutable_stamp() = stamp;
    *lost.mutable_value() = std::move(value);
    lost_.push_back(std::move(lost));
  }

  void MergeRegister(const FieldRule& rule, const Message& change_body, Message* state_body) {
    const uint32_t number = static_cast<uint32_t>(rule.field->number());
    const FieldStamp* incoming = FindFieldStamp(change_, number);
    if (incoming == nullptr) return;
    const FieldStamp* current = FindFieldStamp(*state_, number);
    const int order = current == nullptr ? 1 : CompareStamps(incoming->stamp(), current->stamp());
    if (order == 0) return;  // The same write.
    if (order < 0) {
      Supersede(number, "", incoming->stamp(), PartialOf(*state_, change_body, {rule.field}));
      return;
    }
    if (current != nullptr) Supersede(number, "", current->stamp(), PartialOf(*state_, *state_body, {rule.field}));
    CopyField(change_body, state_body, rule.field);
    SetFieldStamp(state_, number, incoming->stamp());
    changed_ = true;  // A newer stamp, at least.
  }

  // As MergeRegister, for a field only a newer app knows.
  void MergeNewerAppField(uint32_t number, const Message& change_body, Message* state_body) {
    if (keep_local_.count(number) > 0) return;
    const FieldStamp* incoming = FindFieldStamp(change_, number);
    const FieldStamp* current = FindFieldStamp(*state_, number);
    const int order = current == nullptr ? 1 : CompareStamps(incoming->stamp(), current->stamp());
    if (order == 0) return;
    if (order < 0) {
      Supersede(number, "", incoming->stamp(), NewerAppValueOf(*state_, change_body, number));
      return;
    }
    if (current != nullptr) Supersede(number, "", current->stamp(), NewerAppValueOf(*state_, *state_body, number));
    CopyNewerAppField(change_body, state_body, number);
    SetFieldStamp(state_, number, incoming->stamp());
    changed_ = true;
  }

  void MergeElements(const FieldRule& rule, const Message& change_body, Message* state_body) {
    const uint32_t number = static_cast<uint32_t>(rule.field->number());
    const bool append_only = rule.policy == hamlet::v1::MERGE_POLICY_APPEND_ONLY;
    bool touched = false;
    for (const FieldStamp& incoming : change_.field_stamps()) {
      if (incoming.field() != number) continue;
      const std::string& key = incoming.key();
      const FieldStamp* found = FindFieldStamp(*state_, number, key);
      // The same stamps as stored: the same write, already merged (as most
      // elements are when a whole state merges into a like one).
      if (found != nullptr && CompareStamps(found->stamp(), incoming.stamp()) == 0 &&
          CompareStamps(found->removed(), incoming.removed()) == 0 && found->has_removed() == incoming.has_removed()) {
        continue;
      }
      touched = true;
      const int change_at = FindElement(change_body, rule, key);
      const int state_at = FindElement(*state_body, rule, key);

      // Every value written for this element, by stamp (one write, one stamp).
      std::map<std::string, Candidate> candidates;
      if (state_at >= 0 && found != nullptr) {
        candidates[StampKey(found->stamp())] = {ElementOf(*state_, *state_body, rule, state_at), found->stamp()};
      }
      if (change_at >= 0) {
        candidates.emplace(StampKey(incoming.stamp()),
                           Candidate{ElementOf(*state_, change_body, rule, change_at), incoming.stamp()});
      }
      FieldStamp merged = incoming;
      if (found != nullptr) {
        if (append_only) {
          if (CompareStamps(found->stamp(), incoming.stamp()) < 0) *merged.mutable_stamp() = found->stamp();
        } else {
          *merged.mutable_stamp() = MaxStamp(found->stamp(), incoming.stamp());
          *merged.mutable_removed() = MaxStamp(found->removed(), incoming.removed());
        }
      }
      if (!IsSet(merged.removed())) merged.clear_removed();
      // The same stamps as stored mean the same write, and so the same
      // element (or its absence): only the stamps can tell a change.
      if (found == nullptr || found->SerializeAsString() != merged.SerializeAsString()) changed_ = true;
      const bool present = !IsSet(merged.removed()) || CompareStamps(merged.stamp(), merged.removed()) > 0;
      const Candidate* winner = nullptr;
      if (present) {
        auto it = candidates.find(StampKey(merged.stamp()));
        if (it != candidates.end()) winner = &it->second;
      }
      for (auto& [stamp_key, candidate] : candidates) {
        if (&candidate == winner) continue;
        Supersede(number, key, candidate.stamp, candidate.value);
      }
      if (winner != nullptr) {
        const Message& value_body = *RecordBody(winner->value);
        PutElement(value_body, 0, state_body, rule, key);
      } else if (state_at >= 0) {
        RemoveElement(state_body, rule, state_at);
      }
      PutFieldStamp(state_, merged);
    }
    if (touched) SortElements(state_body, rule);
  }

  void MergeLifecycle(const BodySchema& schema, const FieldRule& rule, const Message& change_body,
                      Message* state_body) {
    const uint32_t number = static_cast<uint32_t>(rule.field->number());
    const auto& group = schema.group(rule.field);
    const FieldStamp* incoming = FindFieldStamp(change_, number);
    const hamlet::v1::Conflict* incoming_conflict = FindConflict(change_, number);
    if (incoming == nullptr && incoming_conflict == nullptr) return;
    // The group's values and stamps and the field's conflict: all this merge
    // can change (besides what it supersedes), a small part of the record.
    const auto lifecycle_bytes = [&]() {
      std::string bytes = PartialOf(*state_, *state_body, group).SerializeAsString();
      for (const FieldDescriptor* f : group) {
        if (const FieldStamp* s = FindFieldStamp(*state_, static_cast<uint32_t>(f->number()))) {
          bytes += s->SerializeAsString();
        }
        bytes.push_back('\0');
      }
      if (const hamlet::v1::Conflict* conflict = FindConflict(*state_, number)) bytes += conflict->SerializeAsString();
      return bytes;
    };
    const std::string before = lifecycle_bytes();

    std::map<std::string, Candidate> candidates;
    const auto add_from = [&](const Record& record, const Message& body) {
      if (const hamlet::v1::Conflict* conflict = FindConflict(record, number)) {
        for (const auto& v : conflict->values())
          candidates.emplace(StampKey(v.stamp()), Candidate{v.value(), v.stamp()});
      } else if (const FieldStamp* s = FindFieldStamp(record, number)) {
        candidates.emplace(StampKey(s->stamp()), Candidate{PartialOf(*state_, body, group), s->stamp()});
      }
    };
    add_from(*state_, *state_body);
    add_from(change_, change_body);
    Stamp watermark;
    if (const FieldStamp* s = FindFieldStamp(*state_, number)) watermark = s->supersedes();
    if (incoming != nullptr) watermark = MaxStamp(watermark, incoming->supersedes());

    // Values below the greatest (round, rank) lose. At the top, a resolution's
    // watermark settles the values stamped up to it, unless nothing newer is
    // there: a forward move the resolver never saw is not settled by it.
    LifecycleOrder top;
    for (const auto& [key, c] : candidates) top = std::max(top, OrderOf(*RecordBody(c.value), rule.field));
    bool unsettled_at_top = false;
    for (const auto& [key, c] : candidates) {
      unsettled_at_top = unsettled_at_top || (OrderOf(*RecordBody(c.value), rule.field) == top &&
                                              (!IsSet(watermark) || CompareStamps(c.stamp, watermark) > 0));
    }
    std::vector<Candidate> best;
    for (auto& [key, c] : candidates) {
      const bool below = OrderOf(*RecordBody(c.value), rule.field) < top;
      const bool settled = unsettled_at_top && IsSet(watermark) && CompareStamps(c.stamp, watermark) <= 0;
      if (below || settled) {
        Supersede(number, "", c.stamp, c.value);
      } else {
        best.push_back(std::move(c));
      }
    }
    // The same value written twice competes once, under its newest stamp.
    std::sort(best.begin(), best.end(),
              [](const Candidate& a, const Candidate& b) { return StampLess(a.stamp, b.stamp); });
    std::map<std::string, size_t> newest_by_value;
    for (size_t i = 0; i < best.size(); ++i) newest_by_value[best[i].value.SerializeAsString()] = i;
    std::vector<Candidate> competing;
    for (size_t i = 0; i < best.size(); ++i) {
      if (newest_by_value[best[i].value.SerializeAsString()] == i) {
        competing.push_back(best[i]);
      } else {
        Supersede(number, "", best[i].stamp, best[i].value);
      }
    }
    const Candidate& winner = competing.back();
    for (const FieldDescriptor* f : group) {
      CopyField(*RecordBody(winner.value), state_body, f);
      SetFieldStamp(state_, static_cast<uint32_t>(f->number()), winner.stamp);
    }
    FieldStamp leader = *FindFieldStamp(*state_, number);
    if (IsSet(watermark)) *leader.mutable_supersedes() = watermark;
    PutFieldStamp(state_, leader);

    auto* conflicts = state_->mutable_conflicts();
    for (int i = 0; i < conflicts->size(); ++i) {
      if (conflicts->Get(i).field() == number) {
        conflicts->DeleteSubrange(i, 1);
        break;
      }
    }
    if (competing.size() >= 2) {
      hamlet::v1::Conflict conflict;
      conflict.set_field(number);
      for (Candidate& c : competing) {
        auto* v = conflict.add_values();
        *v->mutable_value() = std::move(c.value);
        *v->mutable_stamp() = c.stamp;
      }
      // Conflicts in field order.
      int at = 0;
      while (at < conflicts->size() && conflicts->Get(at).field() < number) ++at;
      conflicts->Add(std::move(conflict));
      for (int i = conflicts->size() - 1; i > at; --i) conflicts->SwapElements(i, i - 1);
    }
    if (lifecycle_bytes() != before) changed_ = true;
  }

  void MergeDeletion() {
    if (change_.deleted() &&
        (!state_->deleted() || CompareStamps(change_.deleted_stamp(), state_->deleted_stamp()) < 0)) {
      state_->set_deleted(true);
      *state_->mutable_deleted_stamp() = change_.deleted_stamp();
      changed_ = true;
    }
  }

  // Union of what both sides lost and what this merge lost; the newest
  // kMaxSuperseded by stamp stay.
  void MergeSuperseded() {
    if (lost_.empty() && change_.superseded_size() == 0) return;
    const auto& kept = state_->superseded();
    // A state this code wrote holds its values newest first, each once: the
    // values not yet there are found by binary search, and only they are
    // copied. Any other state takes the general path.
    if (std::adjacent_find(kept.begin(), kept.end(), [](const auto& a, const auto& b) { return !NewerFirst(a, b); }) !=
        kept.end()) {
      return MergeSupersededUnsorted();
    }
    std::vector<const hamlet::v1::SupersededValue*> fresh;
    const auto add = [&](const hamlet::v1::SupersededValue& v) {
      auto it = std::lower_bound(kept.begin(), kept.end(), v, NewerFirst);
      // One write, one stamp: the same (stamp, field, key) is the same value.
      if (it == kept.end() || NewerFirst(v, *it)) fresh.push_back(&v);
    };
    for (const auto& v : change_.superseded()) add(v);
    for (const auto& v : lost_) add(v);
    if (fresh.empty()) return;
    std::stable_sort(fresh.begin(), fresh.end(), [](const auto* a, const auto* b) { return NewerFirst(*a, *b); });
    fresh.erase(std::unique(fresh.begin(), fresh.end(),
                            [](const auto* a, const auto* b) { return !NewerFirst(*a, *b) && !NewerFirst(*b, *a); }),
                fresh.end());
    google::protobuf::RepeatedPtrField<hamlet::v1::SupersededValue> old;
    old.Swap(state_->mutable_superseded());
    size_t i = 0, j = 0;
    while (static_cast<size_t>(state_->superseded_size()) < static_cast<size_t>(kMaxSuperseded) &&
           (i < static_cast<size_t>(old.size()) || j < fresh.size())) {
      if (j == fresh.size() ||
          (i < static_cast<size_t>(old.size()) && NewerFirst(old.Get(static_cast<int>(i)), *fresh[j]))) {
        *state_->add_superseded() = std::move(*old.Mutable(static_cast<int>(i++)));
      } else {
        *state_->add_superseded() = *fresh[j++];
      }
    }
    // Unchanged only if every new value fell below the kMaxSuperseded newest.
    if (j > 0 || static_cast<size_t>(state_->superseded_size()) != static_cast<size_t>(old.size())) changed_ = true;
  }

  // Newest first, then by field and key: the order superseded values are kept in.
  static bool NewerFirst(const hamlet::v1::SupersededValue& a, const hamlet::v1::SupersededValue& b) {
    const int order = CompareStamps(a.stamp(), b.stamp());
    if (order != 0) return order > 0;
    if (a.field() != b.field()) return a.field() < b.field();
    return a.key() < b.key();
  }

  // Union of what both sides lost and what this merge lost; the newest
  // kMaxSuperseded stay. For a state whose values are not in order.
  void MergeSupersededUnsorted() {
    std::map<std::tuple<std::string, uint32_t, std::string>, hamlet::v1::SupersededValue> all;
    const auto add = [&all](const hamlet::v1::SupersededValue& v) {
      all.emplace(std::make_tuple(StampKey(v.stamp()), v.field(), v.key()), v);
    };
    for (const auto& v : state_->superseded()) add(v);
    for (const auto& v : change_.superseded()) add(v);
    for (const auto& v : lost_) add(v);
    std::vector<hamlet::v1::SupersededValue> sorted;
    for (auto& [key, v] : all) sorted.push_back(std::move(v));
    std::sort(sorted.begin(), sorted.end(), NewerFirst);
    if (sorted.size() > static_cast<size_t>(kMaxSuperseded)) sorted.resize(kMaxSuperseded);
    changed_ = true;  // It was out of order, at least.
    state_->clear_superseded();
    for (auto& v : sorted) *state_->add_superseded() = std::move(v);
  }

  const Record& change_;
  Record* const state_;
  const FieldNumbers& keep_local_;
  std::vector<hamlet::v1::SupersededValue> lost_;
  bool changed_ = false;
};

}  // namespace

const Message* RecordBody(const Record& record) {
  const FieldDescriptor* field = BodyField(record);
  if (field == nullptr) return nullptr;
  return &record.GetReflection()->GetMessage(record, field);
}

Message* MutableRecordBody(Record* record) {
  const FieldDescriptor* field = BodyField(*record);
  if (field == nullptr) return nullptr;
  return record->GetReflection()->MutableMessage(record, field);
}

const FieldStamp* FindFieldStamp(const Record& record, uint32_t field, const std::string& key) {
  const auto& stamps = record.field_stamps();
  auto it = std::lower_bound(stamps.begin(), stamps.end(), 0,
                             [&](const FieldStamp& fs, int) { return FieldStampLess(fs, field, key); });
  if (it == stamps.end() || it->field() != field || it->key() != key) return nullptr;
  return &*it;
}

void PutFieldStamp(Record* record, const FieldStamp& entry) {
  auto* stamps = record->mutable_field_stamps();
  auto it = std::lower_bound(stamps->begin(), stamps->end(), 0,
                             [&](const FieldStamp& fs, int) { return FieldStampLess(fs, entry.field(), entry.key()); });
  if (it != stamps->end() && it->field() == entry.field() && it->key() == entry.key()) {
    *it = entry;
    return;
  }
  const int index = static_cast<int>(it - stamps->begin());
  *stamps->Add() = entry;
  for (int i = stamps->size() - 1; i > index; --i) stamps->SwapElements(i, i - 1);
}

void SetFieldStamp(Record* record, uint32_t field, const Stamp& stamp) {
  FieldStamp entry;
  if (const FieldStamp* existing = FindFieldStamp(*record, field)) entry = *existing;
  entry.set_field(field);
  *entry.mutable_stamp() = stamp;
  PutFieldStamp(record, entry);
}

const hamlet::v1::Conflict* FindConflict(const Record& record, uint32_t field) {
  for (const auto& conflict : record.conflicts()) {
    if (conflict.field() == field) return &conflict;
  }
  return nullptr;
}

Record EmptyChangeOf(const Record& record) {
  Record change;
  change.set_id(record.id());
  change.set_unit_code(record.unit_code());
  change.set_author(record.author());
  *change.mutable_create_time() = record.create_time();
  change.set_sensitivity(record.sensitivity());
  const FieldDescriptor* body_field = BodyField(record);
  if (body_field != nullptr) change.GetReflection()->MutableMessage(&change, body_field);
  return change;
}

bool MergeRecord(const Record& change, Record* state, const FieldNumbers& keep_local) {
  const bool created = RecordBody(*state) == nullptr && RecordBody(change) != nullptr;
  if (created) *state = EmptyChangeOf(change);
  Merger merger(change, state, keep_local);
  merger.Run();
  return created || merger.changed();
}

std::string SoleWriter(const Record& state) {
  if (state.field_stamps_size() == 0 && !state.deleted()) return "";
  if (state.conflicts_size() > 0) return "";
  const std::string* node = nullptr;
  bool one = true;
  const auto by = [&node, &one](const hamlet::v1::Stamp& stamp) {
    if (node == nullptr) node = &stamp.node();
    one = one && stamp.node() == *node;
  };
  for (const hamlet::v1::FieldStamp& fs : state.field_stamps()) {
    by(fs.stamp());
    if (fs.has_removed()) by(fs.removed());
    if (fs.has_supersedes()) by(fs.supersedes());
  }
  if (state.deleted()) by(state.deleted_stamp());
  for (const hamlet::v1::SupersededValue& lost : state.superseded()) by(lost.stamp());
  return one && node != nullptr ? *node : "";
}

bool WrittenOnlyBy(const Record& state, absl::string_view node) { return !node.empty() && SoleWriter(state) == node; }

}  // namespace hamlet::sync
