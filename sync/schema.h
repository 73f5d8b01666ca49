#ifndef HAMLET_SYNC_SCHEMA_H_
#define HAMLET_SYNC_SCHEMA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "hamlet/v1/merge.pb.h"

namespace hamlet::sync {

// How one body field merges, read from its (hamlet.v1.merge) option.
struct FieldRule {
  const google::protobuf::FieldDescriptor* field = nullptr;
  hamlet::v1::MergePolicy policy = hamlet::v1::MERGE_POLICY_LAST_WRITER_WINS;
  // ADD_WINS_SET of messages and APPEND_ONLY: the element's id field; nullptr
  // for a set of strings (the string is its own key).
  const google::protobuf::FieldDescriptor* key = nullptr;
  // LIFECYCLE and LIFECYCLE_PART: the lifecycle (leader) field.
  const google::protobuf::FieldDescriptor* leader = nullptr;

  bool is_set() const {
    return policy == hamlet::v1::MERGE_POLICY_ADD_WINS_SET || policy == hamlet::v1::MERGE_POLICY_APPEND_ONLY;
  }
  bool in_lifecycle() const { return leader != nullptr; }
};

// The merge rules of one body message type (MediationCase, SecurityTip, ...).
// Built once per type from the descriptors and cached for the process;
// thread-safe. A malformed declaration (a key_field that does not exist, a
// lifecycle part without its lifecycle field) aborts at first use: it is a bug
// in the .proto files, which SchemaTest (tests/sync/lifecycle_test.cc) catches
// for every type.
class BodySchema {
 public:
  static const BodySchema& For(const google::protobuf::Descriptor* body);

  // REQUIRES: `number` is a field of the body type.
  const FieldRule& rule(int number) const;
  const FieldRule* find(int number) const;

  // The fields merged as one value with lifecycle field `leader` (itself first).
  const std::vector<const google::protobuf::FieldDescriptor*>& group(
      const google::protobuf::FieldDescriptor* leader) const;
  // The round field of a lifecycle, or nullptr.
  const google::protobuf::FieldDescriptor* round(const google::protobuf::FieldDescriptor* leader) const;

  const std::vector<FieldRule>& rules() const { return rules_; }

 private:
  std::vector<FieldRule> rules_;  // Indexed by field index in the descriptor.
  struct Group {
    const google::protobuf::FieldDescriptor* leader;
    std::vector<const google::protobuf::FieldDescriptor*> fields;
    const google::protobuf::FieldDescriptor* round = nullptr;
  };
  std::vector<Group> groups_;
  friend const BodySchema* BuildSchema(const google::protobuf::Descriptor*);
};

// Copies field `f` whole from `from` to `to` (same message type): `to` ends
// with exactly `from`'s value, cleared if `from` has none.
void CopyField(const google::protobuf::Message& from, google::protobuf::Message* to,
               const google::protobuf::FieldDescriptor* f);

// The field of Record's `body` oneof that holds messages of type `body`, or nullptr.
const google::protobuf::FieldDescriptor* RecordBodyField(const google::protobuf::Descriptor* body);

// The element key of element `index` of set field `rule`.
std::string ElementKey(const google::protobuf::Message& body, const FieldRule& rule, int index);

// Lifecycle order of a state: (round, rank). The enum's zero value ranks below
// every state (rank -1).
struct LifecycleOrder {
  int64_t round = 0;
  int64_t rank = -1;
  friend bool operator<(const LifecycleOrder& a, const LifecycleOrder& b) {
    return a.round != b.round ? a.round < b.round : a.rank < b.rank;
  }
  friend bool operator==(const LifecycleOrder& a, const LifecycleOrder& b) {
    return a.round == b.round && a.rank == b.rank;
  }
};

// The order of the lifecycle state held in `body` for lifecycle field `leader`.
LifecycleOrder OrderOf(const google::protobuf::Message& body, const google::protobuf::FieldDescriptor* leader);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_SCHEMA_H_
