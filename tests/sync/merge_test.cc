#include "sync/merge.h"

#include <algorithm>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "absl/strings/str_cat.h"
#include "sync/stamp.h"
#include "tests/support/records.h"

namespace hamlet::sync {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::v1::MediationCase;
using hamlet::v1::Record;

constexpr char kId[] = "6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c71";

std::string Bytes(const Record& r) {
  std::string out;
  r.SerializeToString(&out);
  return out;
}

Record Merged(std::initializer_list<const Record*> changes) {
  Record state;
  for (const Record* c : changes) MergeRecord(*c, &state);
  return state;
}

TEST(MergeTest, LaterStampWinsPerField) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record state = Merged({&created});
  Record newer = hamlet::testing::CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_ASSIGNED,
                                                   MakeStamp(2000, 0, "b"));
  Record older = hamlet::testing::CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_WITHDRAWN,
                                                   MakeStamp(1500, 0, "c"));
  EXPECT_TRUE(MergeRecord(newer, &state));
  EXPECT_FALSE(MergeRecord(older, &state));
  EXPECT_EQ(state.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_ASSIGNED);
  // Fields the changes did not stamp keep their values.
  EXPECT_EQ(state.mediation_case().summary(), created.mediation_case().summary());
  EXPECT_EQ(state.mediation_case().round(), 1u);
}

TEST(MergeTest, EqualPhysicalTimeIsBrokenByNode) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record from_b = hamlet::testing::CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_ASSIGNED,
                                                    MakeStamp(2000, 0, "b"));
  Record from_c = hamlet::testing::CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_WITHDRAWN,
                                                    MakeStamp(2000, 0, "c"));
  EXPECT_EQ(Merged({&created, &from_b, &from_c}).mediation_case().status(), hamlet::v1::MEDIATION_STATUS_WITHDRAWN);
  EXPECT_EQ(Merged({&created, &from_c, &from_b}).mediation_case().status(), hamlet::v1::MEDIATION_STATUS_WITHDRAWN);
}

TEST(MergeTest, StampedFieldAbsentFromBodyIsCleared) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record clear = EmptyChangeOf(created);
  SetFieldStamp(&clear, MediationCase::kSummaryFieldNumber, MakeStamp(2000, 0, "a"));
  Record state = Merged({&created, &clear});
  EXPECT_EQ(state.mediation_case().summary(), "");
  EXPECT_EQ(FindFieldStamp(state, MediationCase::kSummaryFieldNumber)->physical_ms(), 2000);
}

TEST(MergeTest, KeepLocalFieldsAreNotOverwritten) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record state = Merged({&created});
  Record pulled = hamlet::testing::CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_CLOSED,
                                                    MakeStamp(9000, 0, "b"));
  pulled.mutable_mediation_case()->set_summary("server summary");
  SetFieldStamp(&pulled, MediationCase::kSummaryFieldNumber, MakeStamp(9000, 0, "b"));
  MergeRecord(pulled, &state, {MediationCase::kStatusFieldNumber});
  EXPECT_EQ(state.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_RECEIVED);
  EXPECT_EQ(state.mediation_case().summary(), "server summary");
}

TEST(MergeTest, DeletionSticksAndKeepsEarliestStamp) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record del_late = EmptyChangeOf(created);
  del_late.set_deleted(true);
  *del_late.mutable_deleted_stamp() = MakeStamp(3000, 0, "b");
  Record del_early = del_late;
  *del_early.mutable_deleted_stamp() = MakeStamp(2000, 0, "c");
  Record edit_after = hamlet::testing::CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_ASSIGNED,
                                                        MakeStamp(4000, 0, "a"));
  Record state = Merged({&created, &del_late, &edit_after, &del_early});
  EXPECT_TRUE(state.deleted());
  EXPECT_EQ(state.deleted_stamp().physical_ms(), 2000);
  // The later edit is kept in the fields, recoverable.
  EXPECT_EQ(state.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_ASSIGNED);
}

// ---------------------------------------------------------------------------
// Properties. Changes to one case come from three devices with clocks that
// collide on physical time, so ties are common; a (node, logical) pair is never
// reused, as a real clock guarantees.

Record RandomChange(int index) {
  static const Record kBase = NewCase(kId, "07132", MakeStamp(1, 0, "origin"));
  Record change = EmptyChangeOf(kBase);
  MediationCase* body = change.mutable_mediation_case();
  const std::string node = *rc::gen::element<std::string>("a", "b", "c");
  const auto stamp = [&] {
    return MakeStamp(*rc::gen::inRange<int64_t>(1000, 1004), static_cast<uint32_t>(index * 16 + 1), node);
  };
  const auto stamp_once = stamp();
  const bool clears = *rc::gen::inRange(0, 8) == 0;
  if (*rc::gen::arbitrary<bool>()) {
    if (!clears) body->set_summary(*rc::gen::element<std::string>("đất", "nợ", "ranh giới", ""));
    SetFieldStamp(&change, MediationCase::kSummaryFieldNumber, stamp_once);
  }
  if (*rc::gen::arbitrary<bool>()) {
    body->set_status(static_cast<hamlet::v1::MediationStatus>(*rc::gen::inRange(1, 11)));
    SetFieldStamp(&change, MediationCase::kStatusFieldNumber, stamp_once);
  }
  if (*rc::gen::arbitrary<bool>()) {
    body->set_round(*rc::gen::inRange<uint32_t>(1, 4));
    SetFieldStamp(&change, MediationCase::kRoundFieldNumber, stamp_once);
  }
  if (*rc::gen::arbitrary<bool>()) {
    const int parties = *rc::gen::inRange(0, 3);
    for (int i = 0; i < parties; ++i) {
      auto* p = body->add_parties();
      p->set_id(absl::StrCat("party-", *rc::gen::inRange(0, 4)));
      p->set_name(*rc::gen::element<std::string>("Nguyễn Văn A", "Trần Thị B"));
    }
    SetFieldStamp(&change, MediationCase::kPartiesFieldNumber, stamp_once);
  }
  if (*rc::gen::inRange(0, 10) == 0) {
    change.set_deleted(true);
    *change.mutable_deleted_stamp() = stamp();
  }
  return change;
}

std::vector<Record> RandomChanges() {
  const int n = *rc::gen::inRange(1, 12);
  std::vector<Record> changes;
  for (int i = 0; i < n; ++i) changes.push_back(RandomChange(i));
  return changes;
}

RC_GTEST_PROP(MergeLaws, Commutative, ()) {
  const Record a = RandomChange(0);
  const Record b = RandomChange(1);
  RC_ASSERT(Bytes(Merged({&a, &b})) == Bytes(Merged({&b, &a})));
}

RC_GTEST_PROP(MergeLaws, Associative, ()) {
  const Record a = RandomChange(0);
  const Record b = RandomChange(1);
  const Record c = RandomChange(2);
  Record left = Merged({&a, &b});
  MergeRecord(c, &left);
  Record right = Merged({&b, &c});
  Record a_state = Merged({&a});
  MergeRecord(right, &a_state);
  RC_ASSERT(Bytes(left) == Bytes(a_state));
}

RC_GTEST_PROP(MergeLaws, Idempotent, ()) {
  const std::vector<Record> changes = RandomChanges();
  Record state;
  for (const Record& c : changes) MergeRecord(c, &state);
  const std::string before = Bytes(state);
  for (const Record& c : changes) RC_ASSERT(!MergeRecord(c, &state));
  Record copy = state;
  RC_ASSERT(!MergeRecord(copy, &state));
  RC_ASSERT(Bytes(state) == before);
}

// Any delivery order, with duplicates, converges on the same bytes; each field
// holds the value of its greatest stamp; a deletion is never undone.
RC_GTEST_PROP(MergeLaws, ConvergesInAnyDeliveryOrder, ()) {
  const std::vector<Record> changes = RandomChanges();
  std::vector<Record> delivery = changes;
  const int duplicates = *rc::gen::inRange(0, 5);
  for (int i = 0; i < duplicates; ++i) delivery.push_back(changes[*rc::gen::inRange<size_t>(0, changes.size())]);
  std::vector<Record> shuffled = delivery;
  for (size_t i = shuffled.size(); i > 1; --i) std::swap(shuffled[i - 1], shuffled[*rc::gen::inRange<size_t>(0, i)]);

  Record in_order;
  for (const Record& c : changes) MergeRecord(c, &in_order);
  Record other;
  for (const Record& c : shuffled) MergeRecord(c, &other);
  RC_ASSERT(Bytes(in_order) == Bytes(other));

  const bool any_deleted = std::any_of(changes.begin(), changes.end(), [](const Record& c) { return c.deleted(); });
  RC_ASSERT(other.deleted() == any_deleted);
  // The winning status is the one with the greatest stamp.
  const Record* winner = nullptr;
  for (const Record& c : changes) {
    const auto* s = FindFieldStamp(c, MediationCase::kStatusFieldNumber);
    if (s != nullptr && (winner == nullptr ||
                         CompareStamps(*s, *FindFieldStamp(*winner, MediationCase::kStatusFieldNumber)) > 0)) {
      winner = &c;
    }
  }
  if (winner != nullptr) RC_ASSERT(other.mediation_case().status() == winner->mediation_case().status());
}

}  // namespace
}  // namespace hamlet::sync
