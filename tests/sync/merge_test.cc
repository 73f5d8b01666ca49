#include "sync/merge.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "sync/access.h"
#include "sync/clock.h"
#include "sync/schema.h"
#include "sync/stamp.h"
#include "sync/validate.h"
#include "tests/support/records.h"

namespace hamlet::sync {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using hamlet::testing::CaseStatusChange;
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

bool HasSuperseded(const Record& r, uint32_t field, const std::string& key, int64_t physical_ms) {
  for (const auto& v : r.superseded()) {
    if (v.field() == field && v.key() == key && v.stamp().physical_ms() == physical_ms) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// Last writer wins.

TEST(MergeTest, LaterStampWinsAPlainFieldAndTheLoserIsKept) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"), "first summary");
  Record edit_b = EmptyChangeOf(created);
  edit_b.mutable_mediation_case()->set_summary("B's summary");
  SetFieldStamp(&edit_b, MediationCase::kSummaryFieldNumber, MakeStamp(3000, 0, "b"));
  Record edit_c = EmptyChangeOf(created);
  edit_c.mutable_mediation_case()->set_summary("C's summary");
  SetFieldStamp(&edit_c, MediationCase::kSummaryFieldNumber, MakeStamp(2000, 0, "c"));
  Record state = Merged({&created, &edit_b, &edit_c});
  EXPECT_EQ(state.mediation_case().summary(), "B's summary");
  EXPECT_TRUE(HasSuperseded(state, MediationCase::kSummaryFieldNumber, "", 1000));
  EXPECT_TRUE(HasSuperseded(state, MediationCase::kSummaryFieldNumber, "", 2000));
  EXPECT_EQ(Bytes(state), Bytes(Merged({&edit_c, &created, &edit_b})));
}

TEST(MergeTest, EqualTimesAreBrokenByNode) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record from_b = EmptyChangeOf(created);
  from_b.mutable_mediation_case()->set_summary("b");
  SetFieldStamp(&from_b, MediationCase::kSummaryFieldNumber, MakeStamp(2000, 0, "b"));
  Record from_c = from_b;
  from_c.mutable_mediation_case()->set_summary("c");
  SetFieldStamp(&from_c, MediationCase::kSummaryFieldNumber, MakeStamp(2000, 0, "c"));
  EXPECT_EQ(Merged({&created, &from_b, &from_c}).mediation_case().summary(), "c");
  EXPECT_EQ(Merged({&created, &from_c, &from_b}).mediation_case().summary(), "c");
}

TEST(MergeTest, StampedFieldAbsentFromBodyIsCleared) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record clear = EmptyChangeOf(created);
  SetFieldStamp(&clear, MediationCase::kSummaryFieldNumber, MakeStamp(2000, 0, "a"));
  Record state = Merged({&created, &clear});
  EXPECT_EQ(state.mediation_case().summary(), "");
  EXPECT_EQ(FindFieldStamp(state, MediationCase::kSummaryFieldNumber)->stamp().physical_ms(), 2000);
}

// ---------------------------------------------------------------------------
// Lifecycle.

TEST(MergeTest, LifecycleMovesOnlyForwardWhateverTheStamps) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  // B closed the case with an old clock; A later re-assigns it. Rank wins.
  Record withdrawn = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_WITHDRAWN, MakeStamp(1500, 0, "b"));
  Record assigned = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_ASSIGNED, MakeStamp(9000, 0, "a"));
  Record state = Merged({&created, &withdrawn, &assigned});
  EXPECT_EQ(state.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_WITHDRAWN);
  EXPECT_EQ(state.conflicts_size(), 0);
  EXPECT_TRUE(HasSuperseded(state, MediationCase::kStatusFieldNumber, "", 9000));
  EXPECT_EQ(Bytes(state), Bytes(Merged({&assigned, &withdrawn, &created})));
}

TEST(MergeTest, NextRoundOutranksEveryStateOfThePreviousRound) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record closed = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_CLOSED, MakeStamp(2000, 0, "a"));
  Record reopened = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_IN_MEDIATION, MakeStamp(1500, 0, "b"), 2);
  Record state = Merged({&created, &closed, &reopened});
  EXPECT_EQ(state.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_IN_MEDIATION);
  EXPECT_EQ(state.mediation_case().round(), 2u);
}

TEST(MergeTest, DifferentOutcomesAtOneRankAreAConflictWithEveryValueKept) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record ok = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, MakeStamp(2000, 0, "a"), 1,
                               hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
  Record not_ok = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL, MakeStamp(2500, 0, "b"), 1,
                                   hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
  Record state = Merged({&created, &ok, &not_ok});
  ASSERT_EQ(state.conflicts_size(), 1);
  const auto& conflict = state.conflicts(0);
  EXPECT_EQ(conflict.field(), MediationCase::kStatusFieldNumber);
  ASSERT_EQ(conflict.values_size(), 2);
  EXPECT_EQ(conflict.values(0).value().mediation_case().status(), hamlet::v1::MEDIATION_STATUS_SUCCESSFUL);
  EXPECT_EQ(conflict.values(0).stamp().node(), "a");
  EXPECT_EQ(conflict.values(1).value().mediation_case().outcome(), hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
  // The visible value is deterministic: the greatest stamp.
  EXPECT_EQ(state.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL);
  EXPECT_EQ(Bytes(state), Bytes(Merged({&not_ok, &created, &ok})));

  // A resolution supersedes both; it is the only value left.
  Record resolution = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, MakeStamp(3000, 0, "leader"),
                                       1, hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
  hamlet::v1::FieldStamp lead = *FindFieldStamp(resolution, MediationCase::kStatusFieldNumber);
  *lead.mutable_supersedes() = MakeStamp(2500, 0, "b");
  PutFieldStamp(&resolution, lead);
  Record resolved = state;
  MergeRecord(resolution, &resolved);
  EXPECT_EQ(resolved.conflicts_size(), 0);
  EXPECT_EQ(resolved.mediation_case().status(), hamlet::v1::MEDIATION_STATUS_SUCCESSFUL);
  EXPECT_TRUE(HasSuperseded(resolved, MediationCase::kStatusFieldNumber, "", 2000));
  EXPECT_TRUE(HasSuperseded(resolved, MediationCase::kStatusFieldNumber, "", 2500));
  // A device that pulled the conflict but not the resolution converges too.
  EXPECT_EQ(Bytes(resolved), Bytes(Merged({&resolution, &not_ok, &created, &ok})));
}

TEST(MergeTest, TheSameStateWrittenTwiceIsNoConflict) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record a = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_ASSIGNED, MakeStamp(2000, 0, "a"));
  Record b = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_ASSIGNED, MakeStamp(2100, 0, "b"));
  Record state = Merged({&created, &a, &b});
  EXPECT_EQ(state.conflicts_size(), 0);
  EXPECT_EQ(FindFieldStamp(state, MediationCase::kStatusFieldNumber)->stamp().node(), "b");
}

// ---------------------------------------------------------------------------
// Sets and append-only lists.

Record WithParty(const Record& base, const std::string& id, const std::string& name, const hamlet::v1::Stamp& stamp) {
  Record r = EmptyChangeOf(base);
  auto* p = r.mutable_mediation_case()->add_parties();
  p->set_id(id);
  p->set_name(name);
  hamlet::v1::FieldStamp fs;
  fs.set_field(MediationCase::kPartiesFieldNumber);
  fs.set_key(id);
  *fs.mutable_stamp() = stamp;
  PutFieldStamp(&r, fs);
  return r;
}

Record WithoutParty(const Record& base, const std::string& id, const hamlet::v1::Stamp& seen) {
  Record r = EmptyChangeOf(base);
  hamlet::v1::FieldStamp fs;
  fs.set_field(MediationCase::kPartiesFieldNumber);
  fs.set_key(id);
  *fs.mutable_stamp() = seen;
  *fs.mutable_removed() = seen;
  PutFieldStamp(&r, fs);
  return r;
}

TEST(MergeTest, PartiesAddedOnTwoPhonesAreBothKept) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record a = WithParty(created, "p2", "Trần Thị B", MakeStamp(2000, 0, "a"));
  Record b = WithParty(created, "p1", "Nguyễn Văn A", MakeStamp(2000, 0, "b"));
  Record state = Merged({&created, &a, &b});
  ASSERT_EQ(state.mediation_case().parties_size(), 2);
  EXPECT_EQ(state.mediation_case().parties(0).id(), "p1");  // Key order.
  EXPECT_EQ(Bytes(state), Bytes(Merged({&b, &created, &a})));
}

TEST(MergeTest, AnEditTheRemoverHadNotSeenWinsOverTheRemoval) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record add = WithParty(created, "p1", "Nguyễn Văn A", MakeStamp(2000, 0, "a"));
  Record remove = WithoutParty(created, "p1", MakeStamp(2000, 0, "a"));              // B saw the add, removed it.
  Record edit = WithParty(created, "p1", "Nguyễn Văn An", MakeStamp(2500, 0, "c"));  // C edited, unseen by B.
  Record state = Merged({&created, &add, &remove, &edit});
  ASSERT_EQ(state.mediation_case().parties_size(), 1);
  EXPECT_EQ(state.mediation_case().parties(0).name(), "Nguyễn Văn An");
  EXPECT_EQ(Bytes(state), Bytes(Merged({&edit, &remove, &created, &add})));

  // Without the unseen edit, the removal holds and the value is kept aside.
  Record removed = Merged({&created, &add, &remove});
  EXPECT_EQ(removed.mediation_case().parties_size(), 0);
  EXPECT_TRUE(HasSuperseded(removed, MediationCase::kPartiesFieldNumber, "p1", 2000));
  EXPECT_EQ(Bytes(removed), Bytes(Merged({&remove, &add, &created})));
}

TEST(MergeTest, SessionsAreAppendOnly) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  const auto session = [&](const std::string& id, const std::string& notes, const hamlet::v1::Stamp& stamp) {
    Record r = EmptyChangeOf(created);
    auto* s = r.mutable_mediation_case()->add_sessions();
    s->set_id(id);
    s->set_notes(notes);
    hamlet::v1::FieldStamp fs;
    fs.set_field(MediationCase::kSessionsFieldNumber);
    fs.set_key(id);
    *fs.mutable_stamp() = stamp;
    PutFieldStamp(&r, fs);
    return r;
  };
  Record s1 = session("s1", "hoà giải lần 1", MakeStamp(2000, 0, "a"));
  Record s2 = session("s2", "hoà giải lần 2", MakeStamp(2100, 0, "b"));
  Record rewrite = session("s1", "rewritten", MakeStamp(3000, 0, "c"));
  Record state = Merged({&created, &s1, &s2, &rewrite});
  ASSERT_EQ(state.mediation_case().sessions_size(), 2);
  EXPECT_EQ(state.mediation_case().sessions(0).notes(), "hoà giải lần 1");
  EXPECT_TRUE(HasSuperseded(state, MediationCase::kSessionsFieldNumber, "s1", 3000));
  EXPECT_EQ(Bytes(state), Bytes(Merged({&rewrite, &s2, &s1, &created})));
}

// ---------------------------------------------------------------------------
// Deletion and local edits.

TEST(MergeTest, DeletionSticksAndKeepsEarliestStamp) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record del_late = EmptyChangeOf(created);
  del_late.set_deleted(true);
  *del_late.mutable_deleted_stamp() = MakeStamp(3000, 0, "b");
  Record del_early = del_late;
  *del_early.mutable_deleted_stamp() = MakeStamp(2000, 0, "c");
  Record edit_after = EmptyChangeOf(created);
  edit_after.mutable_mediation_case()->set_summary("edited after deletion");
  SetFieldStamp(&edit_after, MediationCase::kSummaryFieldNumber, MakeStamp(4000, 0, "a"));
  Record state = Merged({&created, &del_late, &edit_after, &del_early});
  EXPECT_TRUE(state.deleted());
  EXPECT_EQ(state.deleted_stamp().physical_ms(), 2000);
  // The later edit is kept in the fields, recoverable.
  EXPECT_EQ(state.mediation_case().summary(), "edited after deletion");
}

TEST(MergeTest, KeepLocalFieldsAreNotOverwritten) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record state = Merged({&created});
  Record pulled = EmptyChangeOf(created);
  pulled.mutable_mediation_case()->set_summary("server summary");
  SetFieldStamp(&pulled, MediationCase::kSummaryFieldNumber, MakeStamp(9000, 0, "b"));
  pulled.mutable_mediation_case()->set_ledger_number("12/2017");
  SetFieldStamp(&pulled, MediationCase::kLedgerNumberFieldNumber, MakeStamp(9000, 0, "b"));
  MergeRecord(pulled, &state, {MediationCase::kSummaryFieldNumber});
  EXPECT_EQ(state.mediation_case().summary(), created.mediation_case().summary());
  EXPECT_EQ(state.mediation_case().ledger_number(), "12/2017");
}

TEST(MergeTest, SupersededValuesAreBounded) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"));
  Record state = Merged({&created});
  for (int i = 0; i < 50; ++i) {
    Record edit = EmptyChangeOf(created);
    edit.mutable_mediation_case()->set_summary(absl::StrCat("v", i));
    SetFieldStamp(&edit, MediationCase::kSummaryFieldNumber, MakeStamp(2000 + i, 0, "a"));
    MergeRecord(edit, &state);
  }
  ASSERT_EQ(state.superseded_size(), kMaxSuperseded);
  EXPECT_EQ(state.superseded(0).stamp().physical_ms(), 2048);  // Newest first.
  EXPECT_EQ(state.superseded(kMaxSuperseded - 1).stamp().physical_ms(), 2048 - kMaxSuperseded + 1);
}

// ---------------------------------------------------------------------------
// Fields and values of a newer app.

TEST(MergeTest, ANewerAppsFieldIsKeptAndMergedLikeAPlainField) {
  const auto with_note = [](Record r, const std::string& note, int64_t ms, const std::string& node) {
    auto* body = r.mutable_mediation_case();
    body->GetReflection()->MutableUnknownFields(body)->AddLengthDelimited(1000, note);
    SetFieldStamp(&r, 1000, MakeStamp(ms, 0, node));
    return r;
  };
  Record created = with_note(NewCase(kId, "07132", MakeStamp(1000, 0, "a"), "summary"), "first note", 1000, "a");
  created.mutable_mediation_case()->set_dispute_type(static_cast<hamlet::v1::DisputeType>(42));
  SetFieldStamp(&created, MediationCase::kDisputeTypeFieldNumber, MakeStamp(1000, 0, "a"));
  Record later = with_note(EmptyChangeOf(created), "later note", 3000, "b");
  Record earlier = with_note(EmptyChangeOf(created), "earlier note", 2000, "c");

  const Record state = Merged({&created, &later, &earlier});
  const auto& unknown = state.mediation_case().GetReflection()->GetUnknownFields(state.mediation_case());
  ASSERT_EQ(unknown.field_count(), 1);
  EXPECT_EQ(unknown.field(0).number(), 1000);
  EXPECT_EQ(unknown.field(0).length_delimited(), "later note");
  EXPECT_EQ(state.mediation_case().dispute_type(), 42);
  EXPECT_TRUE(HasSuperseded(state, 1000, "", 1000));
  EXPECT_TRUE(HasSuperseded(state, 1000, "", 2000));
  EXPECT_EQ(Bytes(state), Bytes(Merged({&earlier, &later, &created})));
  // What a province sees carries none of it: this server cannot tell whether it is personal.
  Record for_province = state;
  ASSERT_TRUE(PrepareForProvince(&for_province));
  EXPECT_EQ(
      for_province.mediation_case().GetReflection()->GetUnknownFields(for_province.mediation_case()).field_count(), 0);
}

// ---------------------------------------------------------------------------
// Properties over random histories, for every record type. Two to five devices
// with clocks skewed up to a day edit one record without seeing each other;
// each change is generated from the schema, so every policy is exercised.

const FieldDescriptor* BodyFieldOf(const std::string& name) { return Record::descriptor()->FindFieldByName(name); }

void RandomScalar(Message* m, const FieldDescriptor* f) {
  const auto* r = m->GetReflection();
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      r->SetString(m, f, *rc::gen::element<std::string>("", "đất", "nợ", "Khu 3"));
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      r->SetUInt32(m, f, *rc::gen::inRange<uint32_t>(0, 3));
      break;
    case FieldDescriptor::CPPTYPE_BOOL:
      r->SetBool(m, f, *rc::gen::arbitrary<bool>());
      break;
    case FieldDescriptor::CPPTYPE_ENUM: {
      const int index = *rc::gen::inRange(0, f->enum_type()->value_count());
      r->SetEnumValue(m, f, f->enum_type()->value(index)->number());
      break;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:  // google.protobuf.Timestamp
      r->MutableMessage(m, f)->GetReflection()->SetInt64(
          r->MutableMessage(m, f), f->message_type()->FindFieldByName("seconds"), *rc::gen::inRange(0, 3));
      break;
    default:
      break;
  }
}

// A random element of set field `rule` with key `key`.
void AddRandomElement(Message* body, const FieldRule& rule, const std::string& key) {
  const auto* r = body->GetReflection();
  if (rule.key == nullptr) {
    r->AddString(body, rule.field, key);
    return;
  }
  Message* element = r->AddMessage(body, rule.field);
  for (int i = 0; i < element->GetDescriptor()->field_count(); ++i) {
    const FieldDescriptor* f = element->GetDescriptor()->field(i);
    if (f->is_repeated() || *rc::gen::inRange(0, 2) == 0) continue;
    RandomScalar(element, f);
  }
  element->GetReflection()->SetString(element, rule.key, key);
}

// A field number none of this build's body types has.
constexpr uint32_t kNewerAppField = 1000;

struct Write {
  uint32_t field;
  std::string key;
  hamlet::v1::Stamp stamp;
};

// One random change to `base` stamped `stamp`; `writes` collects every value
// it writes, `added` every element stamp written so far (for removals).
Record RandomChange(const Record& base, const hamlet::v1::Stamp& stamp, std::vector<Write>* writes,
                    std::vector<hamlet::v1::FieldStamp>* added) {
  Record change = EmptyChangeOf(base);
  Message* body = MutableRecordBody(&change);
  const BodySchema& schema = BodySchema::For(body->GetDescriptor());
  for (const FieldRule& rule : schema.rules()) {
    if (rule.leader != nullptr && rule.leader != rule.field) continue;
    if (*rc::gen::inRange(0, 3) != 0) continue;
    const uint32_t number = static_cast<uint32_t>(rule.field->number());
    if (rule.policy == hamlet::v1::MERGE_POLICY_LIFECYCLE) {
      for (const FieldDescriptor* f : schema.group(rule.field)) {
        RandomScalar(body, f);
        SetFieldStamp(&change, static_cast<uint32_t>(f->number()), stamp);
      }
      writes->push_back({number, "", stamp});
    } else if (rule.is_set()) {
      const std::string key = *rc::gen::element<std::string>("k1", "k2", "k3");
      std::vector<hamlet::v1::FieldStamp> seen;
      for (const auto& fs : *added) {
        if (fs.field() == number && fs.key() == key) seen.push_back(fs);
      }
      hamlet::v1::FieldStamp entry;
      entry.set_field(number);
      entry.set_key(key);
      if (rule.policy == hamlet::v1::MERGE_POLICY_ADD_WINS_SET && !seen.empty() && *rc::gen::inRange(0, 3) == 0) {
        const auto& removed = seen[*rc::gen::inRange<size_t>(0, seen.size())];
        *entry.mutable_stamp() = removed.stamp();
        *entry.mutable_removed() = removed.stamp();
      } else {
        AddRandomElement(body, rule, key);
        *entry.mutable_stamp() = stamp;
        writes->push_back({number, key, stamp});
        added->push_back(entry);
      }
      PutFieldStamp(&change, entry);
    } else {
      if (rule.field->is_repeated()) {
        for (int i = *rc::gen::inRange(0, 3); i > 0; --i) {
          body->GetReflection()->AddString(body, rule.field, *rc::gen::element<std::string>("x", "y"));
        }
      } else {
        RandomScalar(body, rule.field);
      }
      SetFieldStamp(&change, number, stamp);
      writes->push_back({number, "", stamp});
    }
  }
  // Fields only a newer app knows (numbers no body type has): kept as plain
  // values in the body's unknown fields, merged by the same laws.
  for (const uint32_t number : {kNewerAppField, kNewerAppField + 1}) {
    if (*rc::gen::inRange(0, 3) != 0) continue;
    auto* unknown = body->GetReflection()->MutableUnknownFields(body);
    if (number == kNewerAppField) {
      unknown->AddLengthDelimited(static_cast<int>(number), *rc::gen::element<std::string>("", "ghi chú", "mới"));
    } else if (*rc::gen::inRange(0, 2) == 0) {  // Else cleared by the newer app.
      unknown->AddVarint(static_cast<int>(number), *rc::gen::inRange<uint64_t>(0, 3));
    }
    SetFieldStamp(&change, number, stamp);
    writes->push_back({number, "", stamp});
  }
  if (*rc::gen::inRange(0, 20) == 0) {
    change.set_deleted(true);
    *change.mutable_deleted_stamp() = stamp;
  }
  return change;
}

struct History {
  std::vector<Record> changes;
  std::vector<Write> writes;
};

History RandomHistory(int max_changes, int min_changes = 1) {
  static const std::vector<std::string> kTypes = {"mediation_case",         "security_tip", "informant_identity",
                                                  "household_registration", "team",         "admin_unit"};
  Record base;
  base.set_id(kId);
  base.set_unit_code("07132");
  base.set_author("person-1");
  base.mutable_create_time()->set_seconds(1'796'000'000);
  base.set_sensitivity(hamlet::v1::SENSITIVITY_NORMAL);
  base.GetReflection()->MutableMessage(&base, BodyFieldOf(*rc::gen::elementOf(kTypes)));

  const int devices = *rc::gen::inRange(2, 6);
  std::vector<std::unique_ptr<FakeClock>> physical;
  std::vector<std::unique_ptr<HybridClock>> clocks;
  for (int d = 0; d < devices; ++d) {
    const int64_t skew = *rc::gen::inRange<int64_t>(-86'400'000, 86'400'000);
    physical.push_back(std::make_unique<FakeClock>(1'796'000'000'000 + skew));
    clocks.push_back(std::make_unique<HybridClock>(physical.back().get(), absl::StrCat("device-", d)));
  }
  History history;
  std::vector<hamlet::v1::FieldStamp> added;
  const int n = *rc::gen::inRange(min_changes, max_changes + 1);
  UnitDirectory units;
  for (const auto& unit : ReferenceUnits()) units.Put(unit);
  for (int i = 0; i < n; ++i) {
    const int d = *rc::gen::inRange(0, devices);
    physical[d]->Advance(*rc::gen::inRange<int64_t>(0, 5'000));
    Record change = RandomChange(base, clocks[d]->Now(), &history.writes, &added);
    const absl::Status valid = ValidateChange(change, units);
    RC_ASSERT(valid.ok());
    history.changes.push_back(std::move(change));
  }
  return history;
}

// A history's changes as a network might deliver them: shuffled, with up to
// four of them twice.
std::vector<Record> Delivery(const History& h) {
  std::vector<Record> delivery = h.changes;
  for (int i = *rc::gen::inRange(0, 5); i > 0; --i) {
    delivery.push_back(h.changes[*rc::gen::inRange<size_t>(0, h.changes.size())]);
  }
  for (size_t i = delivery.size(); i > 1; --i) std::swap(delivery[i - 1], delivery[*rc::gen::inRange<size_t>(0, i)]);
  return delivery;
}

RC_GTEST_PROP(MergeLaws, Commutative, ()) {
  const History h = RandomHistory(2, 2);
  const Record& a = h.changes.front();
  const Record& b = h.changes.back();
  RC_ASSERT(Bytes(Merged({&a, &b})) == Bytes(Merged({&b, &a})));
}

RC_GTEST_PROP(MergeLaws, Associative, ()) {
  const History h = RandomHistory(6);
  const size_t cut1 = *rc::gen::inRange<size_t>(0, h.changes.size() + 1);
  const size_t cut2 = *rc::gen::inRange<size_t>(cut1, h.changes.size() + 1);
  // (a ⊔ b) ⊔ c, each of a, b, c the state of a slice of the history.
  Record a, b, c;
  for (size_t i = 0; i < h.changes.size(); ++i) MergeRecord(h.changes[i], i < cut1 ? &a : i < cut2 ? &b : &c);
  Record left = a;
  MergeRecord(b, &left);
  MergeRecord(c, &left);
  Record right_inner = b;
  MergeRecord(c, &right_inner);
  Record right = a;
  MergeRecord(right_inner, &right);
  RC_ASSERT(Bytes(left) == Bytes(right));
}

RC_GTEST_PROP(MergeLaws, Idempotent, ()) {
  const History h = RandomHistory(6);
  Record state;
  for (const Record& c : h.changes) MergeRecord(c, &state);
  const std::string before = Bytes(state);
  for (const Record& c : h.changes) RC_ASSERT(!MergeRecord(c, &state));
  const Record copy = state;
  RC_ASSERT(!MergeRecord(copy, &state));
  RC_ASSERT(Bytes(state) == before);
}

// MergeRecord says whether it changed the state without serializing it; it
// must say exactly what a comparison of the bytes would, for changes in any
// order, duplicates, and whole states relayed from another replica.
RC_GTEST_PROP(MergeLaws, SaysExactlyWhetherTheStateChanged, ()) {
  const History h = RandomHistory(8);
  const std::vector<Record> delivery = Delivery(h);
  Record server, phone;
  const auto merge = [](const Record& change, Record* state) {
    const std::string before = Bytes(*state);
    const bool said = MergeRecord(change, state);
    RC_ASSERT(said == (Bytes(*state) != before));
  };
  for (size_t i = 0; i < delivery.size(); ++i) {
    merge(delivery[i], i % 2 == 0 ? &server : &phone);
    if (*rc::gen::inRange(0, 4) == 0) merge(server, &phone);
    if (*rc::gen::inRange(0, 4) == 0) merge(phone, &server);
  }
  merge(server, &phone);
  merge(phone, &server);
  merge(phone, &server);
}

// Any delivery order, with duplicates, through any relay of partial states,
// converges on the same bytes; every value written is visible, competing in a
// conflict, or kept as superseded; a deletion is never undone.
RC_GTEST_PROP(MergeLaws, ConvergesAndLosesNothing, ()) {
  const History h = RandomHistory(8);
  const std::vector<Record> delivery = Delivery(h);

  Record in_order;
  for (const Record& c : h.changes) MergeRecord(c, &in_order);
  // A relay: half the changes reach a server, whose state reaches a phone
  // that already has the other half.
  Record server, phone;
  for (size_t i = 0; i < delivery.size(); ++i) MergeRecord(delivery[i], i % 2 == 0 ? &server : &phone);
  MergeRecord(server, &phone);
  RC_ASSERT(Bytes(in_order) == Bytes(phone));

  // A conflict holds at least two different values, all at one (round, rank).
  for (const auto& conflict : phone.conflicts()) {
    RC_ASSERT(conflict.values_size() >= 2);
    const auto* leader = RecordBody(phone)->GetDescriptor()->FindFieldByNumber(static_cast<int>(conflict.field()));
    std::set<std::string> distinct;
    for (const auto& v : conflict.values()) {
      distinct.insert(v.value().SerializeAsString());
      RC_ASSERT(OrderOf(*RecordBody(v.value()), leader) == OrderOf(*RecordBody(conflict.values(0).value()), leader));
    }
    RC_ASSERT(distinct.size() == static_cast<size_t>(conflict.values_size()));
  }

  const bool any_deleted = std::any_of(h.changes.begin(), h.changes.end(), [](const Record& c) { return c.deleted(); });
  RC_ASSERT(phone.deleted() == any_deleted);

  if (phone.superseded_size() < kMaxSuperseded) {
    for (const Write& w : h.writes) {
      bool found = false;
      const auto* fs = FindFieldStamp(phone, w.field, w.key);
      found = fs != nullptr && CompareStamps(fs->stamp(), w.stamp) == 0 &&
              (!fs->has_removed() || CompareStamps(fs->stamp(), fs->removed()) > 0);
      if (const auto* conflict = FindConflict(phone, w.field)) {
        for (const auto& v : conflict->values()) found = found || CompareStamps(v.stamp(), w.stamp) == 0;
      }
      for (const auto& v : phone.superseded()) {
        found = found || (v.field() == w.field && v.key() == w.key && CompareStamps(v.stamp(), w.stamp) == 0);
      }
      RC_ASSERT(found);
    }
  }
}

// The law behind a pull that sends no echo (WrittenOnlyBy): when every value
// of the server's state, merged from every device's changes in any order, was
// written by one device, that state is byte for byte the copy the device
// built from its own changes alone.
RC_GTEST_PROP(MergeLaws, AStateWrittenOnlyByOneDeviceIsThatDevicesOwnCopy, ()) {
  const History h = RandomHistory(8);
  std::vector<Record> delivery = h.changes;
  for (size_t i = delivery.size(); i > 1; --i) std::swap(delivery[i - 1], delivery[*rc::gen::inRange<size_t>(0, i)]);
  Record server;
  for (const Record& c : delivery) MergeRecord(c, &server);
  const auto node_of = [](const Record& change) {
    return change.field_stamps_size() > 0 ? change.field_stamps(0).stamp().node() : change.deleted_stamp().node();
  };
  const std::string node = node_of(h.changes[*rc::gen::inRange<size_t>(0, h.changes.size())]);
  Record own;
  for (const Record& c : h.changes) {
    if (node_of(c) == node) MergeRecord(c, &own);
  }
  const bool only = WrittenOnlyBy(server, node);
  RC_TAG(only ? "written only by the device" : "others' values too");
  if (only) RC_ASSERT(Bytes(server) == Bytes(own));
}

// Lean stamps (sync/stamp.h) lose nothing: a merged state, with its conflicts and superseded
// values, and each change, come back byte for byte from their lean form, whichever node the
// reader assumes; a lean state names its writer once and weighs less. So every merge law above
// holds unchanged for records that travel lean.
RC_GTEST_PROP(MergeLaws, LeanStampsComeBackWhole, ()) {
  const History h = RandomHistory(12, 4);
  Record state;
  for (const Record& c : h.changes) MergeRecord(c, &state);
  RC_TAG(state.conflicts_size() > 0 ? "with a conflict" : "no conflict",
         state.superseded_size() > 0 ? "with superseded values" : "none superseded");
  const std::string implied = *rc::gen::element<std::string>("", "device-0", "device-1");
  std::vector<Record> records = h.changes;
  records.push_back(state);
  for (const Record& whole : records) {
    Record lean = whole;
    LeanStamps(&lean, implied);
    RC_ASSERT(lean.ByteSizeLong() <= whole.ByteSizeLong());
    RC_ASSERT(!lean.default_node().empty() || !HasLeanStamps(lean) || !implied.empty());
    // The writer left out is named nowhere else in the lean bytes: not in a nested value either.
    const std::string writer = lean.default_node().empty() ? implied : lean.default_node();
    if (HasLeanStamps(lean)) {
      const std::string bytes = lean.SerializeAsString();
      size_t named = 0;
      for (size_t at = bytes.find(writer); at != std::string::npos; at = bytes.find(writer, at + 1)) ++named;
      RC_ASSERT(named == (lean.default_node().empty() ? 0u : 1u));
    }
    Record back = lean;
    ExpandStamps(&back, implied);
    RC_ASSERT(!HasLeanStamps(back));
    RC_ASSERT(Bytes(back) == Bytes(whole));
  }
}

TEST(MergeTest, LeanStampsNameTheMostFrequentWriterOnce) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "phone-a"), "first summary");
  Record edit = EmptyChangeOf(created);
  edit.mutable_mediation_case()->set_summary("B's summary");
  SetFieldStamp(&edit, MediationCase::kSummaryFieldNumber, MakeStamp(2000, 0, "phone-b"));
  Record state = Merged({&created, &edit});
  Record lean = state;
  LeanStamps(&lean, "");
  EXPECT_EQ(lean.default_node(), "phone-a");
  int named = 0;
  for (const auto& fs : lean.field_stamps()) named += fs.stamp().node().empty() ? 0 : 1;
  EXPECT_EQ(named, 1) << "only B's summary stamp names its writer";
  // A push leaves the pushing device's own id out altogether.
  Record change = created;
  LeanStamps(&change, "phone-a");
  EXPECT_TRUE(change.default_node().empty());
  EXPECT_TRUE(HasLeanStamps(change));
  ExpandStamps(&change, "phone-a");
  EXPECT_EQ(Bytes(change), Bytes(created));
  // A single stamp by another writer is cheaper left whole.
  Record one = edit;
  LeanStamps(&one, "someone-else");
  EXPECT_FALSE(HasLeanStamps(one));
  EXPECT_TRUE(one.default_node().empty());
}

TEST(MergeTest, WrittenOnlyByNamesTheOneWriterOfEveryValue) {
  Record created = NewCase(kId, "07132", MakeStamp(1000, 0, "a"), "first summary");
  EXPECT_TRUE(WrittenOnlyBy(created, "a"));
  EXPECT_FALSE(WrittenOnlyBy(created, "b"));
  EXPECT_FALSE(WrittenOnlyBy(Record(), "a"));
  EXPECT_EQ(SoleWriter(created), "a");
  EXPECT_EQ(SoleWriter(Record()), "");
  Record edit = EmptyChangeOf(created);
  edit.mutable_mediation_case()->set_summary("B's summary");
  SetFieldStamp(&edit, MediationCase::kSummaryFieldNumber, MakeStamp(2000, 0, "b"));
  Record state = Merged({&created, &edit});
  EXPECT_FALSE(WrittenOnlyBy(state, "b"));  // a's summary is kept as superseded.
  EXPECT_FALSE(WrittenOnlyBy(state, "a"));
  EXPECT_EQ(SoleWriter(state), "");
}

}  // namespace
}  // namespace hamlet::sync
