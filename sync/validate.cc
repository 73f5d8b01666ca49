#include "sync/validate.h"

#include <algorithm>
#include <cctype>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/message_differencer.h"
#include "sync/merge.h"
#include "sync/schema.h"
#include "sync/stamp.h"

namespace hamlet::sync {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using hamlet::v1::FieldStamp;
using hamlet::v1::Record;

bool IsUuid(absl::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(s[i]))) {
      return false;
    }
  }
  return true;
}

namespace {

// A field number this build's `body` type does not have and a newer app's
// may: in the range protobuf allows, not reserved.
bool IsNewerAppField(const google::protobuf::Descriptor& body, uint32_t number) {
  if (number < 1 || number > static_cast<uint32_t>(FieldDescriptor::kMaxNumber)) return false;
  if (number >= static_cast<uint32_t>(FieldDescriptor::kFirstReservedNumber) &&
      number <= static_cast<uint32_t>(FieldDescriptor::kLastReservedNumber)) {
    return false;
  }
  const int n = static_cast<int>(number);
  return body.FindFieldByNumber(n) == nullptr && !body.IsReservedNumber(n);
}

// True if `m`, or a message in it, holds fields this build does not know.
bool HoldsUnknownFields(const Message& m) {
  const google::protobuf::Reflection* r = m.GetReflection();
  if (r->GetUnknownFields(m).field_count() > 0) return true;
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (!f->is_repeated()) {
      if (HoldsUnknownFields(r->GetMessage(m, f))) return true;
      continue;
    }
    for (int i = 0; i < r->FieldSize(m, f); ++i) {
      if (HoldsUnknownFields(r->GetRepeatedMessage(m, f, i))) return true;
    }
  }
  return false;
}

// The stamps and the envelope messages of `change` outside its body: merged
// by comparing and copying them whole, so a field in them this build does
// not know would make equal writes unequal bytes.
bool EnvelopeHoldsUnknownFields(const Record& change) {
  if (HoldsUnknownFields(change.create_time()) || HoldsUnknownFields(change.deleted_stamp())) return true;
  for (const FieldStamp& fs : change.field_stamps()) {
    if (HoldsUnknownFields(fs)) return true;
  }
  for (const auto& conflict : change.conflicts()) {
    if (conflict.GetReflection()->GetUnknownFields(conflict).field_count() > 0) return true;
    for (const auto& value : conflict.values()) {
      if (value.GetReflection()->GetUnknownFields(value).field_count() > 0 || HoldsUnknownFields(value.stamp())) {
        return true;
      }
    }
  }
  for (const auto& lost : change.superseded()) {
    if (lost.GetReflection()->GetUnknownFields(lost).field_count() > 0 || HoldsUnknownFields(lost.stamp())) {
      return true;
    }
  }
  return false;
}

}  // namespace

absl::Status ValidateChange(const Record& change, const UnitDirectory& units, ChangeOrigin origin) {
  if (!IsUuid(change.id())) {
    return absl::InvalidArgumentError(
        absl::StrCat("record id \"", change.id(), "\" is not a UUID (8-4-4-4-12 hex digits); generate one per record"));
  }
  const std::string who = absl::StrCat("record ", change.id());
  if (change.unit_code().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": unit_code is required"));
  }
  if (units.Find(change.unit_code()) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, ": unit \"", change.unit_code(), "\" does not exist on this server; pull the admin units and pick one"));
  }
  const Message* body = RecordBody(change);
  if (body == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": no body set; exactly one of mediation_case, security_tip, ... is required"));
  }
  const auto* descriptor = body->GetDescriptor();
  const BodySchema& schema = BodySchema::For(descriptor);
  const FieldStamp* previous = nullptr;
  for (const FieldStamp& fs : change.field_stamps()) {
    const FieldRule* rule = schema.find(static_cast<int>(fs.field()));
    const bool newer = rule == nullptr && IsNewerAppField(*descriptor, fs.field());
    if (rule == nullptr && !newer) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": stamp for field ", fs.field(), ", which ", descriptor->name(), " does not have"));
    }
    const std::string name = newer
                                 ? absl::StrCat(descriptor->name(), " field ", fs.field(), " (unknown to this server)")
                                 : absl::StrCat(descriptor->name(), ".", rule->field->name());
    if (previous != nullptr &&
        (fs.field() < previous->field() || (fs.field() == previous->field() && fs.key() <= previous->key()))) {
      return absl::InvalidArgumentError(absl::StrCat(who,
                                                     ": field_stamps must be ordered by (field, key) without repeats; ",
                                                     name, " key \"", fs.key(), "\" is out of place"));
    }
    previous = &fs;
    if (fs.stamp().node().empty() || fs.stamp().physical_ms() <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": stamp of ", name, " needs a positive physical_ms and a node"));
    }
    if (newer) {
      if (!fs.key().empty() || fs.has_removed() || fs.has_supersedes()) {
        return absl::InvalidArgumentError(
            absl::StrCat(who, ": ", name,
                         " is kept as a plain value (last writer wins): its stamp takes no key, removed or "
                         "supersedes"));
      }
      continue;
    }
    if (rule->is_set() != !fs.key().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": ", name,
          rule->is_set() ? " is a set: stamp each element with its key" : " is not a set: its stamp takes no key"));
    }
    if (fs.has_removed() && rule->policy != hamlet::v1::MERGE_POLICY_ADD_WINS_SET) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": ", name, " elements cannot be removed"));
    }
    if (fs.has_supersedes() &&
        (origin == ChangeOrigin::kDevice || rule->policy != hamlet::v1::MERGE_POLICY_LIFECYCLE)) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": ", name, " stamp sets supersedes; only ResolveConflict settles conflicts"));
    }
    if (rule->is_set()) {
      const bool present = !fs.has_removed() || CompareStamps(fs.stamp(), fs.removed()) > 0;
      bool in_body = false;
      for (int i = 0; i < body->GetReflection()->FieldSize(*body, rule->field); ++i) {
        in_body = in_body || ElementKey(*body, *rule, i) == fs.key();
      }
      if (present != in_body) {
        return absl::InvalidArgumentError(
            absl::StrCat(who, ": ", name, " element \"", fs.key(), "\" is ",
                         present ? "stamped as present but missing" : "stamped as removed but still there"));
      }
    }
  }
  const google::protobuf::UnknownFieldSet& unknown = body->GetReflection()->GetUnknownFields(*body);
  for (int i = 0; i < unknown.field_count(); ++i) {
    const int number = unknown.field(i).number();
    if (!IsNewerAppField(*descriptor, static_cast<uint32_t>(number))) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": field ", number, " of ", descriptor->name(),
          " arrived with another wire type than this server's; the client's .proto files disagree with the server's"));
    }
    if (FindFieldStamp(change, static_cast<uint32_t>(number)) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": ", descriptor->name(), " field ", number,
                                                     " (unknown to this server) is set but has no stamp; stamp "
                                                     "every field you set"));
    }
  }
  if (const auto& envelope = change.GetReflection()->GetUnknownFields(change); envelope.field_count() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, ": Record field ", envelope.field(0).number(),
        " is unknown to this server; a newer app's record fields are kept only inside the body: update the server"));
  }
  if (EnvelopeHoldsUnknownFields(change)) {
    return absl::InvalidArgumentError(absl::StrCat(
        who,
        ": a stamp, create_time, conflict or superseded value carries a field unknown to this server; they are "
        "merged whole, so the server must know every field of them: update the server"));
  }
  if (!hamlet::v1::Sensitivity_IsValid(change.sensitivity())) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": sensitivity ", change.sensitivity(),
                                                   " is unknown to this server, which must know it to protect the "
                                                   "record; update the server"));
  }
  std::vector<const FieldDescriptor*> set_fields;
  body->GetReflection()->ListFields(*body, &set_fields);
  for (const FieldDescriptor* field : set_fields) {
    const FieldRule& rule = schema.rule(field->number());
    const uint32_t number = static_cast<uint32_t>(field->number());
    if (!rule.is_set()) {
      if (FindFieldStamp(change, number) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(who, ": field ", descriptor->name(), ".", field->name(),
                                                       " is set but has no stamp; stamp every field you set"));
      }
      continue;
    }
    std::set<std::string> keys;
    for (int i = 0; i < body->GetReflection()->FieldSize(*body, field); ++i) {
      const std::string key = ElementKey(*body, rule, i);
      if (key.empty() || !keys.insert(key).second) {
        return absl::InvalidArgumentError(absl::StrCat(who, ": ", descriptor->name(), ".", field->name(),
                                                       " elements need distinct, non-empty keys; \"", key,
                                                       "\" is empty or repeated"));
      }
      if (FindFieldStamp(change, number, key) == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(who, ": ", descriptor->name(), ".", field->name(), " element \"", key, "\" has no stamp"));
      }
    }
  }
  for (const FieldRule& rule : schema.rules()) {
    if (rule.policy != hamlet::v1::MERGE_POLICY_LIFECYCLE) continue;
    const FieldStamp* lead = FindFieldStamp(change, static_cast<uint32_t>(rule.field->number()));
    for (const FieldDescriptor* part : schema.group(rule.field)) {
      const FieldStamp* s = FindFieldStamp(change, static_cast<uint32_t>(part->number()));
      if ((s == nullptr) != (lead == nullptr) || (s != nullptr && CompareStamps(s->stamp(), lead->stamp()) != 0)) {
        std::vector<std::string> names;
        for (const FieldDescriptor* f : schema.group(rule.field)) names.push_back(f->name());
        return absl::InvalidArgumentError(absl::StrCat(who, ": ", absl::StrJoin(names, ", "), " of ",
                                                       descriptor->name(),
                                                       " are written together: stamp all of them with one stamp"));
      }
    }
  }
  if (origin != ChangeOrigin::kReplica && (change.conflicts_size() > 0 || change.superseded_size() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": conflicts and superseded are kept by the server; leave them out of a change"));
  }
  for (const auto& conflict : change.conflicts()) {
    for (const auto& value : conflict.values()) {
      if (value.value().body_case() != change.body_case()) {
        return absl::InvalidArgumentError(absl::StrCat(who, ": a conflicting value of another record type"));
      }
    }
  }
  for (const auto& lost : change.superseded()) {
    if (lost.value().body_case() != change.body_case()) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": a superseded value of another record type"));
    }
  }
  // Enum values of a newer app are kept (proto3 enums are open), except a
  // lifecycle's state: the server checks every move and ranks the states.
  for (const FieldRule& rule : schema.rules()) {
    if (rule.policy != hamlet::v1::MERGE_POLICY_LIFECYCLE || rule.field->type() != FieldDescriptor::TYPE_ENUM) {
      continue;
    }
    const int value = body->GetReflection()->GetEnumValue(*body, rule.field);
    if (rule.field->enum_type()->FindValueByNumber(value) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": ", descriptor->name(), ".", rule.field->name(), " = ", value,
          " is a state this server does not know, so it cannot check the move; update the server or send a known "
          "state"));
    }
  }
  if (change.deleted() && (change.deleted_stamp().node().empty() || change.deleted_stamp().physical_ms() <= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": deleted is set without a deleted_stamp"));
  }
  if (change.server_seq() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": server_seq is output only; leave it unset"));
  }
  return absl::OkStatus();
}

absl::Status CheckSameRecord(const Record& change, const Record& existing) {
  const std::string who = absl::StrCat("record ", change.id());
  if (change.body_case() != existing.body_case()) {
    return absl::FailedPreconditionError(
        absl::StrCat(who, " exists as ", RecordBody(existing)->GetDescriptor()->name(), "; its type cannot change"));
  }
  if (change.sensitivity() != hamlet::v1::SENSITIVITY_UNSPECIFIED && change.sensitivity() != existing.sensitivity()) {
    return absl::FailedPreconditionError(absl::StrCat(who, " has sensitivity ",
                                                      hamlet::v1::Sensitivity_Name(existing.sensitivity()),
                                                      "; a record's sensitivity cannot change"));
  }
  if (change.unit_code() != existing.unit_code()) {
    return absl::FailedPreconditionError(
        absl::StrCat(who, " belongs to unit ", existing.unit_code(), "; a record's unit cannot change"));
  }
  if (!change.author().empty() && change.author() != existing.author()) {
    return absl::FailedPreconditionError(
        absl::StrCat(who, " was created by ", existing.author(), "; its author cannot change"));
  }
  if (change.has_create_time() &&
      !google::protobuf::util::MessageDifferencer::Equals(change.create_time(), existing.create_time())) {
    return absl::FailedPreconditionError(absl::StrCat(who, ": its create_time cannot change"));
  }
  return absl::OkStatus();
}

absl::Status CheckCreatable(const Record& change) {
  if (change.author().empty() || !change.has_create_time()) {
    return absl::InvalidArgumentError(
        absl::StrCat("record ", change.id(), " is new here, so it needs author and create_time"));
  }
  return absl::OkStatus();
}

int64_t MaxStampMs(const Record& change) {
  int64_t max_ms = change.deleted() ? change.deleted_stamp().physical_ms() : 0;
  for (const auto& fs : change.field_stamps()) {
    max_ms = std::max({max_ms, fs.stamp().physical_ms(), fs.removed().physical_ms(), fs.supersedes().physical_ms()});
  }
  return max_ms;
}

}  // namespace hamlet::sync
