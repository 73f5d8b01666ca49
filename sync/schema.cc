#include "sync/schema.h"

#include "hamlet/v1/sync.pb.h"

#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>

namespace hamlet::sync {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

namespace {

[[noreturn]] void SchemaError(const FieldDescriptor* field, const std::string& what) {
  std::cerr << "hamlet: bad merge declaration on " << field->full_name() << ": " << what << "\n";
  std::abort();
}

}  // namespace

const BodySchema* BuildSchema(const Descriptor* body) {
  auto* schema = new BodySchema();
  for (int i = 0; i < body->field_count(); ++i) {
    const FieldDescriptor* field = body->field(i);
    const hamlet::v1::FieldMerge& declared = field->options().GetExtension(hamlet::v1::merge);
    FieldRule rule;
    rule.field = field;
    rule.policy = declared.policy() == hamlet::v1::MERGE_POLICY_UNSPECIFIED ? hamlet::v1::MERGE_POLICY_LAST_WRITER_WINS
                                                                            : declared.policy();
    switch (rule.policy) {
      case hamlet::v1::MERGE_POLICY_ADD_WINS_SET:
      case hamlet::v1::MERGE_POLICY_APPEND_ONLY:
        if (!field->is_repeated()) SchemaError(field, "a set must be a repeated field");
        if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
          rule.key = field->message_type()->FindFieldByName(declared.key_field());
          if (rule.key == nullptr || rule.key->cpp_type() != FieldDescriptor::CPPTYPE_STRING) {
            SchemaError(field, "key_field must name a string field of the element");
          }
        } else if (field->cpp_type() != FieldDescriptor::CPPTYPE_STRING) {
          SchemaError(field, "a set of scalars must hold strings");
        } else if (rule.policy == hamlet::v1::MERGE_POLICY_APPEND_ONLY) {
          SchemaError(field, "append-only fields hold messages with a key_field");
        }
        break;
      case hamlet::v1::MERGE_POLICY_LIFECYCLE:
        if (field->is_repeated() || field->enum_type() == nullptr) SchemaError(field, "a lifecycle must be an enum");
        rule.leader = field;
        break;
      case hamlet::v1::MERGE_POLICY_LIFECYCLE_PART: {
        rule.leader = body->FindFieldByNumber(static_cast<int>(declared.lifecycle_field()));
        if (rule.leader == nullptr ||
            rule.leader->options().GetExtension(hamlet::v1::merge).policy() != hamlet::v1::MERGE_POLICY_LIFECYCLE) {
          SchemaError(field, "lifecycle_field must name a LIFECYCLE field of the same message");
        }
        if (field->is_repeated()) SchemaError(field, "a lifecycle part must be singular");
        break;
      }
      default:
        break;
    }
    schema->rules_.push_back(rule);
  }
  for (const FieldRule& rule : schema->rules_) {
    if (rule.policy != hamlet::v1::MERGE_POLICY_LIFECYCLE) continue;
    BodySchema::Group group{rule.field, {rule.field}, nullptr};
    for (const FieldRule& part : schema->rules_) {
      if (part.policy != hamlet::v1::MERGE_POLICY_LIFECYCLE_PART || part.leader != rule.field) continue;
      group.fields.push_back(part.field);
      if (part.field->options().GetExtension(hamlet::v1::merge).is_round()) {
        if (part.field->cpp_type() != FieldDescriptor::CPPTYPE_UINT32) SchemaError(part.field, "a round is a uint32");
        group.round = part.field;
      }
    }
    schema->groups_.push_back(std::move(group));
  }
  return schema;
}

const BodySchema& BodySchema::For(const Descriptor* body) {
  static std::mutex mu;
  static auto* schemas = new std::map<const Descriptor*, const BodySchema*>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = schemas->find(body);
  if (it == schemas->end()) it = schemas->emplace(body, BuildSchema(body)).first;
  return *it->second;
}

const FieldRule* BodySchema::find(int number) const {
  for (const FieldRule& rule : rules_) {
    if (rule.field->number() == number) return &rule;
  }
  return nullptr;
}

const FieldRule& BodySchema::rule(int number) const { return *find(number); }

const std::vector<const FieldDescriptor*>& BodySchema::group(const FieldDescriptor* leader) const {
  for (const Group& g : groups_) {
    if (g.leader == leader) return g.fields;
  }
  static const std::vector<const FieldDescriptor*> kNone;
  return kNone;
}

const FieldDescriptor* BodySchema::round(const FieldDescriptor* leader) const {
  for (const Group& g : groups_) {
    if (g.leader == leader) return g.round;
  }
  return nullptr;
}

void CopyField(const Message& from, Message* to, const FieldDescriptor* f) {
  const Reflection* in = from.GetReflection();
  const Reflection* out = to->GetReflection();
  out->ClearField(to, f);
  if (f->is_repeated()) {
    for (int i = 0; i < in->FieldSize(from, f); ++i) {
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_MESSAGE:
          out->AddMessage(to, f)->CopyFrom(in->GetRepeatedMessage(from, f, i));
          break;
        case FieldDescriptor::CPPTYPE_STRING:
          out->AddString(to, f, in->GetRepeatedString(from, f, i));
          break;
        case FieldDescriptor::CPPTYPE_ENUM:
          out->AddEnumValue(to, f, in->GetRepeatedEnumValue(from, f, i));
          break;
        case FieldDescriptor::CPPTYPE_BOOL:
          out->AddBool(to, f, in->GetRepeatedBool(from, f, i));
          break;
        case FieldDescriptor::CPPTYPE_INT32:
          out->AddInt32(to, f, in->GetRepeatedInt32(from, f, i));
          break;
        case FieldDescriptor::CPPTYPE_INT64:
          out->AddInt64(to, f, in->GetRepeatedInt64(from, f, i));
          break;
        case FieldDescriptor::CPPTYPE_UINT32:
          out->AddUInt32(to, f, in->GetRepeatedUInt32(from, f, i));
          break;
        case FieldDescriptor::CPPTYPE_UINT64:
          out->AddUInt64(to, f, in->GetRepeatedUInt64(from, f, i));
          break;
        case FieldDescriptor::CPPTYPE_DOUBLE:
          out->AddDouble(to, f, in->GetRepeatedDouble(from, f, i));
          break;
        case FieldDescriptor::CPPTYPE_FLOAT:
          out->AddFloat(to, f, in->GetRepeatedFloat(from, f, i));
          break;
      }
    }
    return;
  }
  if (!in->HasField(from, f)) return;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_MESSAGE:
      out->MutableMessage(to, f)->CopyFrom(in->GetMessage(from, f));
      break;
    case FieldDescriptor::CPPTYPE_STRING:
      out->SetString(to, f, in->GetString(from, f));
      break;
    case FieldDescriptor::CPPTYPE_ENUM:
      out->SetEnumValue(to, f, in->GetEnumValue(from, f));
      break;
    case FieldDescriptor::CPPTYPE_BOOL:
      out->SetBool(to, f, in->GetBool(from, f));
      break;
    case FieldDescriptor::CPPTYPE_INT32:
      out->SetInt32(to, f, in->GetInt32(from, f));
      break;
    case FieldDescriptor::CPPTYPE_INT64:
      out->SetInt64(to, f, in->GetInt64(from, f));
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      out->SetUInt32(to, f, in->GetUInt32(from, f));
      break;
    case FieldDescriptor::CPPTYPE_UINT64:
      out->SetUInt64(to, f, in->GetUInt64(from, f));
      break;
    case FieldDescriptor::CPPTYPE_DOUBLE:
      out->SetDouble(to, f, in->GetDouble(from, f));
      break;
    case FieldDescriptor::CPPTYPE_FLOAT:
      out->SetFloat(to, f, in->GetFloat(from, f));
      break;
  }
}

const FieldDescriptor* RecordBodyField(const Descriptor* body) {
  const auto* oneof = hamlet::v1::Record::descriptor()->FindOneofByName("body");
  for (int i = 0; i < oneof->field_count(); ++i) {
    if (oneof->field(i)->message_type() == body) return oneof->field(i);
  }
  return nullptr;
}

std::string ElementKey(const google::protobuf::Message& body, const FieldRule& rule, int index) {
  const auto* reflection = body.GetReflection();
  if (rule.key == nullptr) return reflection->GetRepeatedString(body, rule.field, index);
  const auto& element = reflection->GetRepeatedMessage(body, rule.field, index);
  return element.GetReflection()->GetString(element, rule.key);
}

LifecycleOrder OrderOf(const google::protobuf::Message& body, const FieldDescriptor* leader) {
  LifecycleOrder order;
  const auto* reflection = body.GetReflection();
  const int value = reflection->GetEnumValue(body, leader);
  const auto* enum_value = leader->enum_type()->FindValueByNumber(value);
  if (value != 0 && enum_value != nullptr) {
    order.rank = enum_value->options().GetExtension(hamlet::v1::lifecycle).rank();
  }
  const FieldDescriptor* round = BodySchema::For(body.GetDescriptor()).round(leader);
  if (round != nullptr) order.round = reflection->GetUInt32(body, round);
  return order;
}

}  // namespace hamlet::sync
