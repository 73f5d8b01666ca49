#include "sync/stamp.h"

#include <map>

#include "absl/strings/str_cat.h"

namespace hamlet::sync {

int CompareStamps(const hamlet::v1::Stamp& a, const hamlet::v1::Stamp& b) {
  if (a.physical_ms() != b.physical_ms()) return a.physical_ms() < b.physical_ms() ? -1 : 1;
  if (a.logical() != b.logical()) return a.logical() < b.logical() ? -1 : 1;
  return a.node().compare(b.node());
}

std::string StampToString(const hamlet::v1::Stamp& s) {
  return absl::StrCat(s.physical_ms(), ".", s.logical(), "@", s.node());
}

namespace {

using hamlet::v1::Record;
using hamlet::v1::Stamp;

bool IsSetStamp(const Stamp& stamp) { return stamp.physical_ms() != 0 || stamp.logical() != 0; }

// Calls `visit` with every set stamp of `record`, its nested values' too.
template <typename Visit>
void ForEachSetStamp(const Record& record, const Visit& visit) {
  const auto each = [&](bool has, const Stamp& stamp) {
    if (has && IsSetStamp(stamp)) visit(stamp);
  };
  for (const auto& fs : record.field_stamps()) {
    each(fs.has_stamp(), fs.stamp());
    each(fs.has_removed(), fs.removed());
    each(fs.has_supersedes(), fs.supersedes());
  }
  each(record.has_deleted_stamp(), record.deleted_stamp());
  for (const auto& conflict : record.conflicts()) {
    for (const auto& value : conflict.values()) {
      each(value.has_stamp(), value.stamp());
      ForEachSetStamp(value.value(), visit);
    }
  }
  for (const auto& lost : record.superseded()) {
    each(lost.has_stamp(), lost.stamp());
    ForEachSetStamp(lost.value(), visit);
  }
}

// The same walk, for changing the stamps. It creates no message that was
// not there (a mutable_ accessor would).
template <typename Visit>
void ForEachSetStamp(Record* record, const Visit& visit) {
  const auto each = [&](bool has, const auto& mutable_stamp) {
    if (has && IsSetStamp(*mutable_stamp())) visit(mutable_stamp());
  };
  for (auto& fs : *record->mutable_field_stamps()) {
    each(fs.has_stamp(), [&] { return fs.mutable_stamp(); });
    each(fs.has_removed(), [&] { return fs.mutable_removed(); });
    each(fs.has_supersedes(), [&] { return fs.mutable_supersedes(); });
  }
  each(record->has_deleted_stamp(), [&] { return record->mutable_deleted_stamp(); });
  for (auto& conflict : *record->mutable_conflicts()) {
    for (auto& value : *conflict.mutable_values()) {
      each(value.has_stamp(), [&] { return value.mutable_stamp(); });
      if (value.has_value()) ForEachSetStamp(value.mutable_value(), visit);
    }
  }
  for (auto& lost : *record->mutable_superseded()) {
    each(lost.has_stamp(), [&] { return lost.mutable_stamp(); });
    if (lost.has_value()) ForEachSetStamp(lost.mutable_value(), visit);
  }
}

}  // namespace

void ExpandStamps(Record* record, absl::string_view implied_node) {
  const std::string node = record->default_node().empty() ? std::string(implied_node) : record->default_node();
  record->clear_default_node();
  if (node.empty()) return;
  ForEachSetStamp(record, [&](Stamp* stamp) {
    if (stamp->node().empty()) stamp->set_node(node);
  });
}

void LeanStamps(Record* record, absl::string_view implied_node) {
  std::map<std::string, int> writes;
  ForEachSetStamp(*record, [&](const Stamp& stamp) {
    if (!stamp.node().empty()) ++writes[stamp.node()];
  });
  // The most frequent writer; the first in byte order among equals.
  const std::pair<const std::string, int>* most = nullptr;
  for (const auto& entry : writes) {
    if (most == nullptr || entry.second > most->second) most = &entry;
  }
  if (most == nullptr) return;
  const bool implied = most->first == implied_node;
  // Naming the writer once costs about what one stamp saves.
  if (!implied && most->second < 2) return;
  const std::string node = most->first;
  ForEachSetStamp(record, [&](Stamp* stamp) {
    if (stamp->node() == node) stamp->clear_node();
  });
  if (!implied) record->set_default_node(node);
}

bool HasLeanStamps(const Record& record) {
  bool lean = false;
  ForEachSetStamp(record, [&](const Stamp& stamp) { lean = lean || stamp.node().empty(); });
  return lean;
}

}  // namespace hamlet::sync
