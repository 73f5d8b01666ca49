// Micro-benchmarks of the merge engine (sync/merge.h) on a mediation case of
// typical size, next to a protobuf serialize+parse of the same case as the
// yardstick. docs/BENCHMARKS.md ("Merge engine") records a run and reads it.
//
// Every input is built the way a device builds it (sync::BuildChange from an
// edited body) and checked the way the town server checks a push
// (ValidateChange against Quảng Yên's units, CheckSameRecord,
// CheckLifecycleMoves) before it is merged; inputs that fail a check, or merges
// that do not give the expected result, abort before anything is timed.
//
// MergeRecord changes its state in place, so each merge benchmark copies its
// state every iteration. The BM_Copy* benchmarks time that copy (and the
// destruction of the copy) alone: subtract them to get the merge itself.

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "google/protobuf/util/time_util.h"
#include "hamlet/v1/sync.pb.h"
#include "sync/change.h"
#include "sync/lifecycle.h"
#include "sync/merge.h"
#include "sync/schema.h"
#include "sync/units.h"
#include "sync/validate.h"

namespace hamlet {
namespace {

using google::protobuf::util::TimeUtil;
using hamlet::v1::MediationCase;
using hamlet::v1::Record;
using hamlet::v1::Stamp;

constexpr char kCaseId[] = "3b0e7d6a-52c1-4f08-9e3d-7a1c64b2f915";
constexpr char kCommune[] = "07159";                // Xã Tân An.
constexpr int64_t kReceivedMs = 1'741'000'000'000;  // 2025-03-03.
constexpr int64_t kDayMs = 86'400'000;

// Stamp nodes are device ids.
constexpr char kLeaderPhone[] = "a41f0c2e-9b7d-4e15-8c60-2f3d91e7b0a4";
constexpr char kMediatorPhoneA[] = "c7d25e90-1a3b-4f6c-b8e2-5d09f4a7c31e";
constexpr char kMediatorPhoneB[] = "e90b3f71-6c2d-48a5-9f14-0b7e2c5d8a63";

constexpr char kPartyRequester[] = "0f6a2c1e-3d4b-4a5c-8e7f-9a0b1c2d3e4f";
constexpr char kPartyRespondent[] = "1a2b3c4d-5e6f-4708-9a1b-2c3d4e5f6a7b";
constexpr char kPartyRelated[] = "2b3c4d5e-6f70-4819-8b2c-3d4e5f6a7b8c";

[[noreturn]] void Fail(const std::string& what) {
  std::cerr << "merge_bench: bad benchmark input: " << what << "\n";
  std::abort();
}

void CheckOk(const absl::Status& status, const std::string& what) {
  if (!status.ok()) Fail(absl::StrCat(what, ": ", status.ToString()));
}

const sync::UnitDirectory& QuangYen() {
  static const sync::UnitDirectory* units = [] {
    auto* directory = new sync::UnitDirectory();
    for (const auto& unit : sync::ReferenceUnits()) directory->Put(unit);
    return directory;
  }();
  return *units;
}

Stamp At(int64_t ms, const char* device) {
  Stamp stamp;
  stamp.set_physical_ms(ms);
  stamp.set_node(device);
  return stamp;
}

// Code points, for reporting text sizes in characters rather than bytes.
size_t Characters(const std::string& utf8) {
  size_t n = 0;
  for (unsigned char c : utf8) n += (c & 0xC0) != 0x80;
  return n;
}

// The case summary as it is reworded over the case's life: the same opening
// and the latest development, about 200 characters in all.
std::string Summary(const std::string& latest) {
  return absl::StrCat(
      "Ông Nguyễn Văn Hùng đề nghị hoà giải tranh chấp ranh giới đất với hộ bà Trần Thị Lan: "
      "tường rào lấn 0,8 m sang thửa 214, tờ bản đồ số 9. ",
      latest);
}

hamlet::v1::Party MakeParty(const char* id, const std::string& name, uint32_t age, const std::string& address,
                            hamlet::v1::PartyRole role) {
  hamlet::v1::Party party;
  party.set_id(id);
  party.set_name(name);
  party.set_age(age);
  party.set_address(address);
  party.set_role(role);
  return party;
}

// A session with about 300 characters of notes.
hamlet::v1::MediationSession MakeSession(const char* id, const std::string& date, const std::string& happened,
                                         const std::string& result) {
  hamlet::v1::MediationSession session;
  session.set_id(id);
  session.set_date(date);
  session.set_place("Nhà văn hoá Khu 3, xã Tân An");
  session.add_attendees("Nguyễn Văn Hùng");
  session.add_attendees("Trần Thị Lan");
  session.add_attendees("Phạm Văn Đức (hoà giải viên)");
  session.set_notes(
      absl::StrCat("Hai bên trình bày ý kiến về ranh giới thửa 214. Hoà giải viên giải thích quy định của Luật Đất đai "
                   "và đối chiếu bản đồ địa chính năm 2014 do cán bộ địa chính xã cung cấp. Trưởng khu và một người "
                   "làm chứng cho biết tường được xây năm 2019. ",
                   happened));
  session.set_result(result);
  return session;
}

hamlet::v1::FollowUp MakeFollowUp(const char* id, const std::string& date, hamlet::v1::FollowUpState state,
                                  const std::string& notes) {
  hamlet::v1::FollowUp follow_up;
  follow_up.set_id(id);
  follow_up.set_date(date);
  follow_up.set_state(state);
  follow_up.set_notes(notes);
  return follow_up;
}

// One mediation case as its team's phones edit it. Each edit is built by
// sync::BuildChange from the whole edited body, checked as the server checks
// a push, and merged into the phone's copy.
class CaseHistory {
 public:
  // The first edit: creates the case with every field `body` sets.
  CaseHistory(const MediationCase& body, const Stamp& stamp) {
    std::vector<const google::protobuf::FieldDescriptor*> set_fields;
    body.GetReflection()->ListFields(body, &set_fields);
    sync::FieldNumbers named;
    for (const auto* field : set_fields) named.insert(static_cast<uint32_t>(field->number()));
    absl::StatusOr<Record> change = sync::BuildChange(Record(), body, named, stamp);
    CheckOk(change.status(), "creating the case");
    change->set_id(kCaseId);
    change->set_unit_code(kCommune);
    change->set_author("person-7d1e");
    *change->mutable_create_time() = TimeUtil::MillisecondsToTimestamp(stamp.physical_ms());
    change->set_sensitivity(hamlet::v1::SENSITIVITY_CONFIDENTIAL);
    Apply(*change);
  }

  // The current body, to edit and pass to Edit.
  MediationCase body() const { return state_.mediation_case(); }
  const Record& state() const { return state_; }

  // Records an edit: `fields` of the case take their values from `body`.
  // Returns the change, as the phone would push it. Aborts unless every named
  // field then reads back as written. That catches a quiet mistake: BuildChange
  // takes lifecycle partners that are not named (round, outcome) from the
  // state, not from `body`, so naming only the status of a next-round move
  // writes a move backwards, which every check accepts and the merge keeps
  // only as a superseded value.
  Record Edit(const MediationCase& body, const sync::FieldNumbers& fields, const Stamp& stamp) {
    absl::StatusOr<Record> change = sync::BuildChange(state_, body, fields, stamp);
    CheckOk(change.status(), "building an edit");
    Apply(*change);
    for (uint32_t number : fields) {
      const auto* field = MediationCase::descriptor()->FindFieldByNumber(static_cast<int>(number));
      MediationCase written, held;
      sync::CopyField(body, &written, field);
      sync::CopyField(state_.mediation_case(), &held, field);
      if (written.SerializeAsString() != held.SerializeAsString()) {
        Fail(absl::StrCat("an edit of MediationCase.", field->name(), " did not take"));
      }
    }
    return *std::move(change);
  }

 private:
  void Apply(const Record& change) {
    CheckOk(sync::ValidateChange(change, QuangYen()), "ValidateChange");
    if (sync::RecordBody(state_) != nullptr) CheckOk(sync::CheckSameRecord(change, state_), "CheckSameRecord");
    CheckOk(sync::CheckLifecycleMoves(state_, change, sync::Authority::kTeam, sync::Vantage::kWriterSawState),
            "CheckLifecycleMoves");
    if (!sync::MergeRecord(change, &state_)) Fail("an edit changed nothing");
  }

  Record state_;
};

constexpr uint32_t kSummary = MediationCase::kSummaryFieldNumber;
constexpr uint32_t kParties = MediationCase::kPartiesFieldNumber;
constexpr uint32_t kMediators = MediationCase::kMediatorsFieldNumber;
constexpr uint32_t kInvitees = MediationCase::kInviteesFieldNumber;
constexpr uint32_t kStatus = MediationCase::kStatusFieldNumber;
constexpr uint32_t kRound = MediationCase::kRoundFieldNumber;
constexpr uint32_t kOutcome = MediationCase::kOutcomeFieldNumber;
constexpr uint32_t kWrittenAgreement = MediationCase::kWrittenAgreementFieldNumber;
constexpr uint32_t kFollowUps = MediationCase::kFollowUpsFieldNumber;
constexpr uint32_t kSessions = MediationCase::kSessionsFieldNumber;

void SetLifecycle(MediationCase* body, hamlet::v1::MediationStatus status, uint32_t round,
                  hamlet::v1::MediationOutcome outcome) {
  body->set_status(status);
  body->set_round(round);
  body->set_outcome(outcome);
}

std::string Bytes(const Record& record) { return record.SerializeAsString(); }

// The records the benchmarks merge, all of one case.
struct Inputs {
  // The case after nine changes from three phones: a first round that ended
  // in an agreement, two follow-ups, reopened as round 2 (IN_MEDIATION).
  // 3 parties, 2 mediators, 3 sessions, 2 follow-ups, 10 superseded values.
  Record typical;
  // Mediator A's next edit: summary reworded, a fourth session, SUCCESSFUL
  // (status, round and outcome move together).
  Record edit;
  // typical ⊔ edit: the server's state after A's push.
  Record edited;
  // Mediator B's concurrent edit from `typical`: UNSUCCESSFUL, the same
  // (round, rank) as A's SUCCESSFUL with another outcome, so a conflict.
  Record rival_outcome;
  // The leader's phone: `typical` plus the leader's own unpushed edit (a
  // party's address, an invitee). It pulls `edited` whole.
  Record leader_phone;
};

Inputs BuildInputs() {
  const auto day = [](int n) { return kReceivedMs + n * kDayMs; };
  MediationCase body;
  body.set_ledger_number("07/2025");
  body.set_date_received("2025-03-03");
  body.set_basis(hamlet::v1::MEDIATION_BASIS_PARTY_REQUEST);
  body.set_dispute_type(hamlet::v1::DISPUTE_TYPE_LAND);
  body.set_summary(Summary("Đã nhận đơn, chưa phân công."));
  *body.add_parties() =
      MakeParty(kPartyRequester, "Nguyễn Văn Hùng", 58, "Số 12, Khu 3, xã Tân An", hamlet::v1::PARTY_ROLE_REQUESTER);
  *body.add_parties() =
      MakeParty(kPartyRespondent, "Trần Thị Lan", 51, "Số 14, Khu 3, xã Tân An", hamlet::v1::PARTY_ROLE_RESPONDENT);
  SetLifecycle(&body, hamlet::v1::MEDIATION_STATUS_RECEIVED, 1, hamlet::v1::MEDIATION_OUTCOME_UNSPECIFIED);
  CaseHistory history(body, At(day(0), kLeaderPhone));

  // The leader assigns two mediators.
  body = history.body();
  body.add_mediators("person-3c9a");
  body.add_mediators("person-8f21");
  SetLifecycle(&body, hamlet::v1::MEDIATION_STATUS_ASSIGNED, 1, hamlet::v1::MEDIATION_OUTCOME_UNSPECIFIED);
  history.Edit(body, {kMediators, kStatus, kRound, kOutcome}, At(day(1), kLeaderPhone));

  // Mediator A opens mediation: a related party, the first session.
  body = history.body();
  *body.add_parties() =
      MakeParty(kPartyRelated, "Nguyễn Văn Tú", 31, "Số 12, Khu 3, xã Tân An", hamlet::v1::PARTY_ROLE_RELATED);
  body.set_summary(Summary("Đã phân công hai hoà giải viên, mời con trai ông Hùng tham gia."));
  *body.add_sessions() =
      MakeSession("5e1d0a7c-2b4f-4c3e-9d8a-6f7b0c1d2e3a", "2025-03-10",
                  "Bà Lan cho rằng tường xây đúng mốc cũ; ông Hùng không đồng ý.", "Chưa thống nhất, hẹn đo đạc lại.");
  SetLifecycle(&body, hamlet::v1::MEDIATION_STATUS_IN_MEDIATION, 1, hamlet::v1::MEDIATION_OUTCOME_UNSPECIFIED);
  history.Edit(body, {kParties, kSummary, kSessions, kStatus, kRound, kOutcome}, At(day(7), kMediatorPhoneA));

  // Mediator B corrects an address and records the second session.
  body = history.body();
  body.mutable_parties(1)->set_address("Số 16, Khu 3, xã Tân An");
  *body.add_sessions() = MakeSession("6f2e1b8d-3c5a-4d4f-8e9b-7a8c1d2e3f4b", "2025-03-17",
                                     "Cán bộ địa chính đo lại: tường lấn 0,6 m. Bà Lan đồng ý lùi tường.",
                                     "Thống nhất lùi tường trong 30 ngày.");
  history.Edit(body, {kParties, kSessions}, At(day(14), kMediatorPhoneB));

  // Mediator A records the agreement.
  body = history.body();
  body.set_written_agreement("Bà Lan lùi tường rào về mốc cũ trước ngày 17/4/2025; ông Hùng chịu một nửa chi phí.");
  SetLifecycle(&body, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, 1, hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
  history.Edit(body, {kWrittenAgreement, kStatus, kRound, kOutcome}, At(day(14) + 3'600'000, kMediatorPhoneA));

  // The leader follows the agreement up.
  body = history.body();
  *body.add_follow_ups() = MakeFollowUp("7a3f2c9e-4d6b-4e5a-9fac-8b9d2e3f4a5c", "2025-04-01",
                                        hamlet::v1::FOLLOW_UP_STATE_COMPLYING, "Đã tháo dỡ một phần tường.");
  SetLifecycle(&body, hamlet::v1::MEDIATION_STATUS_FOLLOW_UP, 1, hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
  history.Edit(body, {kFollowUps, kStatus, kRound, kOutcome}, At(day(29), kLeaderPhone));

  // Mediator B finds the agreement is not kept.
  body = history.body();
  *body.add_follow_ups() =
      MakeFollowUp("8b4a3d0f-5e7c-4f6b-8abd-9cae3f4a5b6d", "2025-04-20", hamlet::v1::FOLLOW_UP_STATE_NOT_COMPLYING,
                   "Quá hạn, phần tường còn lại chưa được lùi; hai bên lại xô xát.");
  body.set_summary(Summary("Hoà giải thành lần 1 nhưng bà Lan chưa thực hiện đủ thoả thuận."));
  history.Edit(body, {kFollowUps, kSummary}, At(day(48), kMediatorPhoneB));

  // The leader reopens the case: round 2.
  body = history.body();
  SetLifecycle(&body, hamlet::v1::MEDIATION_STATUS_IN_MEDIATION, 2, hamlet::v1::MEDIATION_OUTCOME_UNSPECIFIED);
  history.Edit(body, {kStatus, kRound, kOutcome}, At(day(49), kLeaderPhone));

  // Mediator A: the requester moved, summary updated, the first session of round 2.
  body = history.body();
  body.mutable_parties(0)->set_address("Số 3, ngõ 5, Khu 4, xã Tân An");
  body.set_summary(Summary("Mở lại vòng 2 do không thực hiện thoả thuận; ông Hùng đã chuyển sang Khu 4."));
  *body.add_sessions() = MakeSession("9c5b4e1a-6f8d-4a7c-9bce-0dbf4a5b6c7e", "2025-04-28",
                                     "Bà Lan nêu khó khăn về kinh phí; ông Hùng đề nghị UBND xã hỗ trợ cắm mốc.",
                                     "Hẹn buổi sau có cán bộ địa chính.");
  history.Edit(body, {kParties, kSummary, kSessions}, At(day(56), kMediatorPhoneA));

  Inputs in;
  in.typical = history.state();

  // Two phones edit `typical` concurrently: mediator A (the typical edit) and
  // mediator B (a different outcome at the same rank); the leader's phone
  // edits its own copy and pulls A's edit afterwards.
  CaseHistory phone_a = history;
  CaseHistory phone_b = history;
  CaseHistory leader = history;

  body = phone_a.body();
  body.set_summary(Summary("Vòng 2: hai bên ký biên bản cắm mốc, bà Lan lùi tường trong 15 ngày."));
  *body.add_sessions() =
      MakeSession("ad6c5f2b-7a9e-4b8d-8cdf-1ec05b6c7d8f", "2025-05-05",
                  "Cán bộ địa chính cắm mốc mới có chữ ký hai bên; bà Lan đồng ý lùi tường.", "Hoà giải thành vòng 2.");
  SetLifecycle(&body, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, 2, hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
  in.edit = phone_a.Edit(body, {kSummary, kSessions, kStatus, kRound, kOutcome}, At(day(63), kMediatorPhoneA));
  in.edited = phone_a.state();

  body = phone_b.body();
  SetLifecycle(&body, hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL, 2, hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
  in.rival_outcome = phone_b.Edit(body, {kStatus, kRound, kOutcome}, At(day(63) + 600'000, kMediatorPhoneB));

  body = leader.body();
  body.mutable_parties(2)->set_address("Số 3, ngõ 5, Khu 4, xã Tân An");
  body.add_invitees("person-51b0");  // The head of Khu 3.
  leader.Edit(body, {kParties, kInvitees}, At(day(60), kLeaderPhone));
  in.leader_phone = leader.state();

  // What the benchmarks rely on.
  const MediationCase& c = in.typical.mediation_case();
  if (c.parties_size() != 3 || c.mediators_size() != 2 || c.sessions_size() != 3 || c.follow_ups_size() != 2 ||
      c.status() != hamlet::v1::MEDIATION_STATUS_IN_MEDIATION || c.round() != 2 || in.typical.superseded_size() != 10 ||
      in.typical.conflicts_size() != 0) {
    Fail("the typical case does not have the shape documented on Inputs");
  }
  Record merged = in.typical;
  if (!sync::MergeRecord(in.edit, &merged) || Bytes(merged) != Bytes(in.edited)) {
    Fail("typical ⊔ edit is not the edited state");
  }
  merged = in.edited;
  if (!sync::MergeRecord(in.rival_outcome, &merged) || merged.conflicts_size() != 1) {
    Fail("the rival outcome does not open a conflict");
  }
  CheckOk(sync::CheckLifecycleMoves(in.edited, in.rival_outcome, sync::Authority::kTeam, sync::Vantage::kServer),
          "CheckLifecycleMoves of the rival outcome against the edited state");
  Record pulled = in.leader_phone;
  Record pushed = in.edited;
  if (!sync::MergeRecord(in.edited, &pulled) || !sync::MergeRecord(in.leader_phone, &pushed) ||
      Bytes(pulled) != Bytes(pushed)) {
    Fail("merging the two whole states does not commute");
  }
  merged = in.edited;
  if (sync::MergeRecord(in.edit, &merged)) Fail("merging an edit twice changed the state");
  return in;
}

const Inputs& TheInputs() {
  static const Inputs* inputs = new Inputs(BuildInputs());
  return *inputs;
}

void CopyLoop(benchmark::State& state, const Record& record) {
  for (auto _ : state) {
    Record copy = record;
    benchmark::DoNotOptimize(copy);
  }
  state.SetItemsProcessed(state.iterations());
}

// Merges `change` into a fresh copy of `into` each iteration.
void MergeLoop(benchmark::State& state, const Record& change, const Record& into) {
  for (auto _ : state) {
    Record target = into;
    const bool changed = sync::MergeRecord(change, &target);
    benchmark::DoNotOptimize(changed);
    benchmark::DoNotOptimize(target);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_CopyTypicalCase(benchmark::State& state) { CopyLoop(state, TheInputs().typical); }
BENCHMARK(BM_CopyTypicalCase);

void BM_MergeTypicalCaseEdit(benchmark::State& state) { MergeLoop(state, TheInputs().edit, TheInputs().typical); }
BENCHMARK(BM_MergeTypicalCaseEdit);

void BM_CopyEditedCase(benchmark::State& state) { CopyLoop(state, TheInputs().edited); }
BENCHMARK(BM_CopyEditedCase);

void BM_MergeConcurrentOutcomes(benchmark::State& state) {
  MergeLoop(state, TheInputs().rival_outcome, TheInputs().edited);
}
BENCHMARK(BM_MergeConcurrentOutcomes);

void BM_CopyLeaderPhoneCase(benchmark::State& state) { CopyLoop(state, TheInputs().leader_phone); }
BENCHMARK(BM_CopyLeaderPhoneCase);

void BM_MergeWholeStates(benchmark::State& state) { MergeLoop(state, TheInputs().edited, TheInputs().leader_phone); }
BENCHMARK(BM_MergeWholeStates);

// In place, no copy: the state does not change.
void BM_MergeNoOp(benchmark::State& state) {
  Record target = TheInputs().edited;
  for (auto _ : state) {
    const bool changed = sync::MergeRecord(TheInputs().edit, &target);
    benchmark::DoNotOptimize(changed);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MergeNoOp);

// The yardstick: what storing and loading the typical case costs anyway.
void BM_SerializeParseTypicalCase(benchmark::State& state) {
  const Record& typical = TheInputs().typical;
  for (auto _ : state) {
    std::string bytes;
    typical.SerializeToString(&bytes);
    Record parsed;
    if (!parsed.ParseFromString(bytes)) state.SkipWithError("parse failed");
    benchmark::DoNotOptimize(parsed);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SerializeParseTypicalCase);

}  // namespace
}  // namespace hamlet

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  // Built and checked before anything is timed; aborts on a bad input.
  const hamlet::Inputs& in = hamlet::TheInputs();
  benchmark::AddCustomContext("typical_case_bytes", std::to_string(in.typical.ByteSizeLong()));
  benchmark::AddCustomContext("edit_bytes", std::to_string(in.edit.ByteSizeLong()));
  benchmark::AddCustomContext("edited_case_bytes", std::to_string(in.edited.ByteSizeLong()));
  benchmark::AddCustomContext("leader_phone_case_bytes", std::to_string(in.leader_phone.ByteSizeLong()));
  benchmark::AddCustomContext("summary_chars",
                              std::to_string(hamlet::Characters(in.typical.mediation_case().summary())));
  benchmark::AddCustomContext("session_notes_chars",
                              std::to_string(hamlet::Characters(in.typical.mediation_case().sessions(0).notes())));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
