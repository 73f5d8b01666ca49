#include "sync/change.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "sync/schema.h"

namespace hamlet::sync {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using hamlet::v1::FieldStamp;
using hamlet::v1::Record;

namespace {

// Serialized elements of a set field by key.
std::map<std::string, std::string> ElementsByKey(const Message& body, const FieldRule& rule) {
  std::map<std::string, std::string> out;
  const auto* r = body.GetReflection();
  for (int i = 0; i < r->FieldSize(body, rule.field); ++i) {
    out[ElementKey(body, rule, i)] =
        rule.key == nullptr ? std::string() : r->GetRepeatedMessage(body, rule.field, i).SerializeAsString();
  }
  return out;
}

// True if the edit names the round of `rule`'s lifecycle and changes it.
bool NewRound(const BodySchema& schema, const FieldRule& rule, const Message& current, const Message& body,
              const FieldNumbers& fields) {
  const FieldDescriptor* round = schema.round(rule.leader);
  if (round == nullptr || fields.count(static_cast<uint32_t>(round->number())) == 0) return false;
  return body.GetReflection()->GetUInt32(body, round) != current.GetReflection()->GetUInt32(current, round);
}

}  // namespace

absl::StatusOr<Record> BuildChange(const Record& state, const Message& body, const FieldNumbers& fields,
                                   const hamlet::v1::Stamp& stamp) {
  const Message* current = RecordBody(state);
  if (current != nullptr && current->GetDescriptor() != body.GetDescriptor()) {
    return absl::InvalidArgumentError(absl::StrCat("record ", state.id(), " is a ", current->GetDescriptor()->name(),
                                                   ", not a ", body.GetDescriptor()->name()));
  }
  const BodySchema& schema = BodySchema::For(body.GetDescriptor());
  FieldNumbers expanded;
  for (uint32_t number : fields) {
    const FieldRule* rule = schema.find(static_cast<int>(number));
    if (rule == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(body.GetDescriptor()->name(), " has no field ", number));
    }
    if (rule->leader == nullptr) {
      expanded.insert(number);
      continue;
    }
    for (const FieldDescriptor* f : schema.group(rule->leader)) expanded.insert(static_cast<uint32_t>(f->number()));
  }

  const FieldDescriptor* body_field = RecordBodyField(body.GetDescriptor());
  if (body_field == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(body.GetDescriptor()->name(), " is not a record body"));
  }
  Record change = current != nullptr ? EmptyChangeOf(state) : Record();
  Message* out = change.GetReflection()->MutableMessage(&change, body_field);
  for (uint32_t number : expanded) {
    const FieldRule& rule = schema.rule(static_cast<int>(number));
    const std::string name = absl::StrCat(body.GetDescriptor()->name(), ".", rule.field->name());
    if (!rule.is_set()) {
      // A lifecycle partner the user did not name keeps the record's value,
      // except in a new round, which starts without the last round's outcome.
      const bool named = fields.count(number) > 0;
      if (named || current == nullptr) {
        CopyField(body, out, rule.field);
      } else if (!(rule.in_lifecycle() && NewRound(schema, rule, *current, body, fields))) {
        CopyField(*current, out, rule.field);
      }
      SetFieldStamp(&change, number, stamp);
      continue;
    }
    const bool append_only = rule.policy == hamlet::v1::MERGE_POLICY_APPEND_ONLY;
    const std::map<std::string, std::string> before =
        current != nullptr ? ElementsByKey(*current, rule) : std::map<std::string, std::string>();
    const std::map<std::string, std::string> after = ElementsByKey(body, rule);
    const auto* r = body.GetReflection();
    for (int i = 0; i < r->FieldSize(body, rule.field); ++i) {
      const std::string key = ElementKey(body, rule, i);
      if (key.empty()) return absl::InvalidArgumentError(absl::StrCat(name, " elements need a key"));
      auto old = before.find(key);
      if (old != before.end() && old->second == after.at(key)) continue;  // Unchanged.
      if (append_only && old != before.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " is append-only: element \"", key, "\" cannot be changed; add a new one"));
      }
      if (rule.key == nullptr) {
        out->GetReflection()->AddString(out, rule.field, key);
      } else {
        out->GetReflection()->AddMessage(out, rule.field)->CopyFrom(r->GetRepeatedMessage(body, rule.field, i));
      }
      FieldStamp entry;
      entry.set_field(number);
      entry.set_key(key);
      *entry.mutable_stamp() = stamp;
      PutFieldStamp(&change, entry);
    }
    for (const auto& [key, unused] : before) {
      if (after.count(key) > 0) continue;
      if (append_only) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " is append-only: element \"", key, "\" cannot be removed"));
      }
      const FieldStamp* seen = FindFieldStamp(state, number, key);
      if (seen == nullptr) continue;
      FieldStamp entry;
      entry.set_field(number);
      entry.set_key(key);
      *entry.mutable_stamp() = seen->stamp();
      *entry.mutable_removed() = seen->stamp();
      PutFieldStamp(&change, entry);
    }
  }
  return change;
}

}  // namespace hamlet::sync
