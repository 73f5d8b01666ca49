#include "sync/lifecycle.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sync/merge.h"
#include "sync/schema.h"

namespace hamlet::sync {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using hamlet::v1::Record;

namespace {

struct State {
  int value = 0;
  LifecycleOrder order;
};

State StateOf(const Message& body, const FieldDescriptor* leader) {
  return {body.GetReflection()->GetEnumValue(body, leader), OrderOf(body, leader)};
}

bool Contains(const google::protobuf::RepeatedPtrField<std::string>& names, const std::string& name) {
  for (const std::string& n : names) {
    if (n == name) return true;
  }
  return false;
}

std::string Describe(const FieldDescriptor* leader, const State& s) {
  const auto* value = leader->enum_type()->FindValueByNumber(s.value);
  std::string name = value == nullptr ? absl::StrCat(s.value) : value->name();
  if (BodySchema::For(leader->containing_type()).round(leader) != nullptr) {
    absl::StrAppend(&name, " (round ", s.order.round, ")");
  }
  return name;
}

}  // namespace

absl::Status CheckLifecycleMoves(const Record& state, const Record& change, Authority authority, Vantage vantage) {
  const Message* change_body = RecordBody(change);
  if (change_body == nullptr) return absl::OkStatus();
  const BodySchema& schema = BodySchema::For(change_body->GetDescriptor());
  for (const FieldRule& rule : schema.rules()) {
    if (rule.policy != hamlet::v1::MERGE_POLICY_LIFECYCLE) continue;
    const uint32_t number = static_cast<uint32_t>(rule.field->number());
    if (FindFieldStamp(change, number) == nullptr) continue;

    // What the record holds now: the visible value, or every competing one.
    std::vector<State> current;
    if (const hamlet::v1::Conflict* conflict = FindConflict(state, number)) {
      for (const auto& v : conflict->values()) current.push_back(StateOf(*RecordBody(v.value()), rule.field));
    } else if (FindFieldStamp(state, number) != nullptr && RecordBody(state) != nullptr) {
      current.push_back(StateOf(*RecordBody(state), rule.field));
    }
    const State next = StateOf(*change_body, rule.field);
    // A record that never had a state may be written without one (a tip whose
    // status nobody set yet).
    if (current.empty() && next.value == 0) continue;
    bool forward = true;
    for (const State& s : current) forward = forward && s.order < next.order;
    if (vantage == Vantage::kWriterSawState) {
      // The writer moves from exactly what it holds: staying put is fine,
      // anything else must be a legal move forward.
      if (current.size() == 1 && current[0].value == next.value && current[0].order == next.order) continue;
      if (!forward) {
        return absl::FailedPreconditionError(
            absl::StrCat("record ", change.id(), ": ", rule.field->containing_type()->name(), ".", rule.field->name(),
                         " can only move forward; it is ", Describe(rule.field, current.empty() ? State{} : current[0]),
                         " and cannot go back to ", Describe(rule.field, next)));
      }
    } else {
      if (!forward) continue;
      // The writer may have moved from an earlier state of the record, which
      // others have since overtaken: any state the record was in counts.
      for (const auto& lost : state.superseded()) {
        if (lost.field() == number && RecordBody(lost.value()) != nullptr) {
          current.push_back(StateOf(*RecordBody(lost.value()), rule.field));
        }
      }
    }
    if (current.empty()) {
      // A new lifecycle starts in the first round.
      const FieldDescriptor* round = schema.round(rule.field);
      current.push_back(State{0, LifecycleOrder{round != nullptr ? 1 : 0, -1}});
    }

    const std::string next_name = rule.field->enum_type()->FindValueByNumber(next.value)->name();
    bool commune_only = false;
    std::vector<std::string> allowed;
    for (const State& s : current) {
      const auto& moves =
          rule.field->enum_type()->FindValueByNumber(s.value)->options().GetExtension(hamlet::v1::lifecycle);
      const bool same_round = next.order.round == s.order.round;
      const bool next_round = next.order.round == s.order.round + 1;
      if (same_round && Contains(moves.next(), next_name)) return absl::OkStatus();
      if (next_round && Contains(moves.next_round(), next_name)) return absl::OkStatus();
      if (next_round && Contains(moves.commune_next_round(), next_name)) {
        if (authority == Authority::kCommune) return absl::OkStatus();
        commune_only = true;
      }
      for (const auto& n : moves.next()) allowed.push_back(absl::StrCat(n, " (same round)"));
      for (const auto& n : moves.next_round()) allowed.push_back(absl::StrCat(n, " (next round)"));
    }
    std::vector<std::string> from;
    for (const State& s : current) from.push_back(Describe(rule.field, s));
    const std::string where = absl::StrCat("record ", change.id(), ": ", rule.field->containing_type()->name(), ".",
                                           rule.field->name(), " is ", absl::StrJoin(from, " and "));
    if (commune_only) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, "; only a commune-level role may move it to ", Describe(rule.field, next)));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        where, "; it cannot move to ", Describe(rule.field, next),
        ". Allowed: ", allowed.empty() ? std::string("nothing (final state)") : absl::StrJoin(allowed, ", ")));
  }
  return absl::OkStatus();
}

bool OnlyLifecycle(const Record& change) {
  const Message* body = RecordBody(change);
  if (body == nullptr || change.field_stamps_size() == 0 || change.deleted()) return false;
  const BodySchema& schema = BodySchema::For(body->GetDescriptor());
  for (const auto& fs : change.field_stamps()) {
    const FieldRule* rule = schema.find(static_cast<int>(fs.field()));
    if (rule == nullptr || !rule->in_lifecycle()) return false;
  }
  return true;
}

}  // namespace hamlet::sync
