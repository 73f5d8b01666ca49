#include "sync/validate.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"
#include "sync/merge.h"

namespace hamlet::sync {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
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

// Finds an enum value that this build's descriptors do not know, anywhere in
// `message`. Returns the field's full path, or "" if every value is known.
std::string FindUnknownEnum(const Message& message, const std::string& path) {
  const auto* reflection = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    const std::string here = path.empty() ? field->name() : absl::StrCat(path, ".", field->name());
    if (field->type() == FieldDescriptor::TYPE_ENUM) {
      const int count = field->is_repeated() ? reflection->FieldSize(message, field) : 1;
      for (int i = 0; i < count; ++i) {
        const int value = field->is_repeated() ? reflection->GetRepeatedEnumValue(message, field, i)
                                               : reflection->GetEnumValue(message, field);
        if (field->enum_type()->FindValueByNumber(value) == nullptr) {
          return absl::StrCat(here, " = ", value);
        }
      }
    } else if (field->type() == FieldDescriptor::TYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
          std::string found = FindUnknownEnum(reflection->GetRepeatedMessage(message, field, i),
                                              absl::StrCat(here, "[", i, "]"));
          if (!found.empty()) return found;
        }
      } else {
        std::string found = FindUnknownEnum(reflection->GetMessage(message, field), here);
        if (!found.empty()) return found;
      }
    }
  }
  return "";
}

}  // namespace

absl::Status ValidateChange(const Record& change, const UnitDirectory& units) {
  if (!IsUuid(change.id())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "record id \"", change.id(), "\" is not a UUID (8-4-4-4-12 hex digits); generate one per record"));
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
  uint32_t previous = 0;
  for (const auto& fs : change.field_stamps()) {
    if (descriptor->FindFieldByNumber(static_cast<int>(fs.field())) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": stamp for field ", fs.field(), ", which ",
                                                     descriptor->name(), " does not have"));
    }
    if (fs.field() <= previous) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": field_stamps must be in increasing field order without repeats; field ", fs.field(),
          " comes after ", previous));
    }
    previous = fs.field();
    if (fs.stamp().node().empty() || fs.stamp().physical_ms() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": stamp of field ", fs.field(), " needs a positive physical_ms and a node"));
    }
  }
  std::vector<const FieldDescriptor*> set_fields;
  body->GetReflection()->ListFields(*body, &set_fields);
  for (const FieldDescriptor* field : set_fields) {
    if (FindFieldStamp(change, static_cast<uint32_t>(field->number())) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": field ", descriptor->name(), ".", field->name(),
                                                     " is set but has no stamp; stamp every field you set"));
    }
  }
  if (std::string unknown = FindUnknownEnum(*body, descriptor->name()); !unknown.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, ": ", unknown, " is not a value this server knows; update the server or send a known value"));
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
    return absl::FailedPreconditionError(absl::StrCat(
        who, " exists as ", RecordBody(existing)->GetDescriptor()->name(), "; its type cannot change"));
  }
  if (change.unit_code() != existing.unit_code()) {
    return absl::FailedPreconditionError(absl::StrCat(who, " belongs to unit ", existing.unit_code(),
                                                      "; a record's unit cannot change"));
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
    return absl::InvalidArgumentError(absl::StrCat(
        "record ", change.id(), " is new here, so it needs author and create_time"));
  }
  return absl::OkStatus();
}

int64_t MaxStampMs(const Record& change) {
  int64_t max_ms = change.deleted() ? change.deleted_stamp().physical_ms() : 0;
  for (const auto& fs : change.field_stamps()) max_ms = std::max(max_ms, fs.stamp().physical_ms());
  return max_ms;
}

}  // namespace hamlet::sync
