// How long a report takes as the data grows. docs/BENCHMARKS.md ("Reports")
// records a run and reads it.
//
// Reports are sums of running tallies (sync/report.h) that TownStore::CommitPush
// keeps up to date, so a report reads the tallies of its units and months
// (TownStore::SumTallies) and never the records. For each N this program fills
// a fresh store with N records of Quảng Yên's villages, 2012–2017, and times,
// as the median of --runs runs each:
//   town     SumTallies over the town and every unit below it (the units
//            GetReport reads for "206"), 2012-01..2017-12;
//   commune  SumTallies over one commune and its 12 villages, same months;
//   scan     what a report without tallies costs: every record read through
//            ReadChanges(WholeServer) page by page and its TalliesOf summed.
// Before any figure is printed for N, the town sums must equal the scan's
// sums, unit by unit and metric by metric, or the program aborts.
//
// Records are built the way phones build them (sync::BuildChange with every
// body field named), checked with sync::ValidateChange and merged into an
// empty state with sync::MergeRecord, which gives the state a server stores
// for a created record. A case or tip is created in its final status in one
// change; a real one gets there in several pushes, which changes the stamps'
// values but not the stored record's shape or size. Every --edit_every'th
// record is then edited once more (a later change, merged, and committed with
// its previous state) so that the tallies are also kept up by subtraction.
//
// The store is written with TownStoreOptions.sync_writes = false: the fill is
// setup, this measures reads. After the fill the store is closed and opened
// again, so the reads find the data in table files rather than in memtables,
// as on a server that has been running; the block cache starts empty.
//
// A plain main() and std::chrono::steady_clock rather than Google Benchmark:
// each N needs one fill (minutes at a million records) that every measurement
// shares, a scan takes seconds, so there is nothing for Benchmark's iteration
// control to do, and the output is one table across the sizes with a
// correctness check in between.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include "hamlet/v1/sync.pb.h"
#include "storage/storage.pb.h"
#include "storage/town_store.h"
#include "sync/change.h"
#include "sync/merge.h"
#include "sync/report.h"
#include "sync/units.h"
#include "sync/uuid.h"
#include "sync/validate.h"

ABSL_FLAG(std::string, sizes, "10000,100000,1000000", "Record counts to fill and measure, comma-separated.");
ABSL_FLAG(bool, quick, false, "Measure 10,000 and 100,000 records only (replaces --sizes).");
ABSL_FLAG(int, runs, 9, "Runs of each measurement; the table shows their median.");
ABSL_FLAG(int, edit_every, 50, "Edit every n-th record once after the fill; 0 for no edits.");
ABSL_FLAG(std::string, dir, "", "Where to make the stores (one at a time, removed after use); default the temp dir.");

namespace hamlet {
namespace {

using google::protobuf::util::TimeUtil;
using hamlet::v1::Record;
using hamlet::v1::Stamp;
using storage::ChangeScope;
using storage::TownStore;

// unit -> metric -> count, the shape TownStore::SumTallies returns.
using UnitSums = std::map<std::string, std::map<std::string, int64_t>>;

constexpr char kTown[] = "206";
constexpr char kCommune[] = "07159";  // Xã Tân An.
constexpr int32_t kFromMonth = 201201;
constexpr int32_t kToMonth = 201712;
constexpr int kFirstYear = 2012;
constexpr int kMonths = 72;  // 2012-01 .. 2017-12.
constexpr size_t kBatchRecords = 1000;
// A pull's default page (server/town.h, Town::Options).
constexpr size_t kPageRecords = 500;
constexpr size_t kPageBytes = 1 << 20;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "report_bench: %s\n", what.c_str());
  std::abort();
}

void CheckOk(const absl::Status& status, const std::string& what) {
  if (!status.ok()) Fail(absl::StrCat(what, ": ", status.ToString()));
}

double MsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// ---------------------------------------------------------------------------
// The records.

const char* const kFamilyNames[] = {"Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Ngô"};
const char* const kMiddleNames[] = {"Văn", "Thị", "Đức", "Minh", "Thanh", "Quang", "Ngọc", "Hữu"};
const char* const kGivenNames[] = {"Hùng",  "Lan", "Dũng", "Hương", "Tuấn", "Mai",
                                   "Thắng", "Hà",  "Nam",  "Yến",   "Sơn",  "Hoa"};
const char* const kDisputes[] = {
    "tranh chấp ranh giới đất giữa hai hộ liền kề: tường rào lấn sang thửa bên cạnh khoảng 0,5 m",
    "mâu thuẫn vợ chồng về việc chia tài sản chung sau khi ly thân, hai bên chưa thống nhất",
    "tranh chấp khoản vay 30 triệu đồng quá hạn hai năm, bên vay đề nghị trả dần theo tháng",
    "hàng xóm phản ánh tiếng ồn karaoke sau 22 giờ và nước thải chảy sang ngõ chung",
    "tranh chấp lối đi chung vào khu nuôi trồng thuỷ sản ven sông Chanh",
};
const char* const kTipSummaries[] = {
    "Phát hiện nhóm thanh niên tụ tập sử dụng ma tuý tại khu nhà bỏ hoang cuối xóm",
    "Mất trộm xe máy đỗ trước cửa nhà lúc rạng sáng, có người thấy hai đối tượng lạ",
    "Có dấu hiệu tổ chức đánh bạc ăn tiền tại quán nước đầu khu vào buổi tối",
    "Người dân cung cấp thông tin về đối tượng đang bị truy nã xuất hiện tại địa bàn",
};

// Makes the records of a synthetic Quảng Yên, deterministically from `seed`:
// the same seed gives the same records, ids included.
class SyntheticTown {
 public:
  SyntheticTown(const sync::UnitDirectory& units, uint64_t seed) : units_(units), rng_(seed) {
    for (const auto& unit : sync::ReferenceUnits()) {
      if (unit.level() != hamlet::v1::UNIT_LEVEL_VILLAGE || !units.IsWithin(unit.code(), "206")) continue;
      villages_.push_back(unit.code());
      devices_.push_back(sync::NewUuid(rng_));
      leaders_.push_back(sync::NewUuid(rng_));
    }
  }

  size_t villages() const { return villages_.size(); }

  // A new record in a random village and month of 2012–2017: half household
  // registrations, 30% mediation cases, 15% security tips, 5% teams.
  Record NewRecord() {
    const size_t village = Pick(villages_.size());
    const int month = static_cast<int>(Pick(kMonths));
    const absl::CivilDay day(kFirstYear + month / 12, 1 + month % 12, 1 + static_cast<int>(Pick(28)));
    const absl::Time created =
        absl::FromCivil(absl::CivilSecond(day.year(), day.month(), day.day(), 7 + static_cast<int>(Pick(12)),
                                          static_cast<int>(Pick(60)), 0),
                        Vietnam());
    const size_t kind = Pick(100);
    Record body_holder;
    if (kind < 50) {
      *body_holder.mutable_household_registration() = Household(village, day);
    } else if (kind < 80) {
      *body_holder.mutable_mediation_case() = Case(village, day);
    } else if (kind < 95) {
      *body_holder.mutable_security_tip() = Tip(village, created);
    } else {
      *body_holder.mutable_team() = TeamOf(village, day);
    }
    const google::protobuf::Message& body = *sync::RecordBody(body_holder);
    std::vector<const google::protobuf::FieldDescriptor*> set_fields;
    body.GetReflection()->ListFields(body, &set_fields);
    sync::FieldNumbers named;
    for (const auto* field : set_fields) named.insert(static_cast<uint32_t>(field->number()));
    absl::StatusOr<Record> change = sync::BuildChange(Record(), body, named, StampAt(created, village));
    CheckOk(change.status(), "building a new record");
    change->set_id(sync::NewUuid(rng_));
    change->set_unit_code(villages_[village]);
    change->set_author(leaders_[village]);
    *change->mutable_create_time() = TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(created));
    change->set_sensitivity(kind >= 50 && kind < 80 ? hamlet::v1::SENSITIVITY_CONFIDENTIAL
                                                    : hamlet::v1::SENSITIVITY_NORMAL);
    CheckOk(sync::ValidateChange(*change, units_), "a new record fails ValidateChange");
    CheckOk(sync::CheckCreatable(*change), "a new record fails CheckCreatable");
    Record state;
    if (!sync::MergeRecord(*change, &state)) Fail("a new record merged into nothing");
    return state;
  }

  // `state` after one more edit, 30 days after it was created, that moves
  // its tallies: an open case is settled, otherwise the dispute type, tip
  // category, household evaluation or team type changes.
  Record Edited(const Record& state) {
    Record edited_body = state;
    sync::FieldNumbers named;
    if (state.has_mediation_case()) {
      auto* c = edited_body.mutable_mediation_case();
      if (c->status() == hamlet::v1::MEDIATION_STATUS_IN_MEDIATION) {
        c->set_status(hamlet::v1::MEDIATION_STATUS_SUCCESSFUL);
        c->set_outcome(hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
        // Name the round and outcome too: BuildChange takes unnamed partners
        // of a lifecycle field from the state, not from the body.
        named = {hamlet::v1::MediationCase::kStatusFieldNumber, hamlet::v1::MediationCase::kRoundFieldNumber,
                 hamlet::v1::MediationCase::kOutcomeFieldNumber};
      } else {
        c->set_dispute_type(static_cast<hamlet::v1::DisputeType>(c->dispute_type() % 7 + 1));
        named = {hamlet::v1::MediationCase::kDisputeTypeFieldNumber};
      }
    } else if (state.has_security_tip()) {
      auto* t = edited_body.mutable_security_tip();
      t->set_category(static_cast<hamlet::v1::TipCategory>(t->category() % 9 + 1));
      named = {hamlet::v1::SecurityTip::kCategoryFieldNumber};
    } else if (state.has_household_registration()) {
      auto* h = edited_body.mutable_household_registration();
      h->set_evaluation(h->evaluation() == hamlet::v1::HOUSEHOLD_EVALUATION_PASS
                            ? hamlet::v1::HOUSEHOLD_EVALUATION_FAIL
                            : hamlet::v1::HOUSEHOLD_EVALUATION_PASS);
      named = {hamlet::v1::HouseholdRegistration::kEvaluationFieldNumber};
    } else if (state.has_team()) {
      auto* t = edited_body.mutable_team();
      t->set_type(static_cast<hamlet::v1::TeamType>(t->type() % 3 + 1));
      named = {hamlet::v1::Team::kTypeFieldNumber};
    } else {
      Fail(absl::StrCat("record ", state.id(), " has no body to edit"));
    }
    const auto village = std::find(villages_.begin(), villages_.end(), state.unit_code());
    if (village == villages_.end()) Fail(absl::StrCat("record ", state.id(), " is not in a village"));
    const absl::Time later = absl::FromUnixSeconds(state.create_time().seconds()) + absl::Hours(24 * 30);
    absl::StatusOr<Record> change = sync::BuildChange(state, *sync::RecordBody(edited_body), named,
                                                      StampAt(later, static_cast<size_t>(village - villages_.begin())));
    CheckOk(change.status(), "building an edit");
    CheckOk(sync::ValidateChange(*change, units_), "an edit fails ValidateChange");
    CheckOk(sync::CheckSameRecord(*change, state), "an edit fails CheckSameRecord");
    Record merged = state;
    if (!sync::MergeRecord(*change, &merged)) Fail(absl::StrCat("an edit of ", state.id(), " changed nothing"));
    return merged;
  }

  std::string NewUuid() { return sync::NewUuid(rng_); }

 private:
  static absl::TimeZone Vietnam() { return absl::FixedTimeZone(7 * 3600); }

  size_t Pick(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }

  Stamp StampAt(absl::Time time, size_t village) {
    Stamp stamp;
    stamp.set_physical_ms(absl::ToUnixMillis(time));
    stamp.set_node(devices_[village]);
    return stamp;
  }

  std::string PersonName() {
    return absl::StrCat(kFamilyNames[Pick(std::size(kFamilyNames))], " ", kMiddleNames[Pick(std::size(kMiddleNames))],
                        " ", kGivenNames[Pick(std::size(kGivenNames))]);
  }

  std::string Address(size_t village) {
    return absl::StrCat("Số ", 1 + Pick(120), ", ", units_.Find(villages_[village])->name(), ", ",
                        units_.Find(units_.CommuneOf(villages_[village]))->name(), ", thị xã Quảng Yên");
  }

  static std::string Date(absl::CivilDay day) { return absl::FormatCivilTime(day); }

  hamlet::v1::HouseholdRegistration Household(size_t village, absl::CivilDay day) {
    hamlet::v1::HouseholdRegistration h;
    const std::string head = PersonName();
    h.set_household(absl::StrCat("Hộ ông/bà ", head));
    h.set_head(head);
    h.set_village(villages_[village]);
    h.set_year(static_cast<uint32_t>(day.year()));
    h.set_registered_date(Date(day));
    h.set_commitment_signed(Pick(10) < 9);
    const size_t evaluation = Pick(10);
    if (evaluation < 5) {
      h.set_evaluation(hamlet::v1::HOUSEHOLD_EVALUATION_PASS);
    } else if (evaluation < 6) {
      h.set_evaluation(hamlet::v1::HOUSEHOLD_EVALUATION_FAIL);
    } else if (evaluation < 8) {
      h.set_evaluation(hamlet::v1::HOUSEHOLD_EVALUATION_NOT_YET);
    }
    return h;
  }

  // A case with two parties and two mediators; past the first session unless
  // still open: 70% successful, 10% unsuccessful, 5% withdrawn, 15% open.
  hamlet::v1::MediationCase Case(size_t village, absl::CivilDay day) {
    hamlet::v1::MediationCase c;
    c.set_ledger_number(absl::StrFormat("%d/%03d", day.year(), 1 + Pick(400)));
    c.set_date_received(Date(day));
    c.set_basis(hamlet::v1::MEDIATION_BASIS_PARTY_REQUEST);
    c.set_dispute_type(static_cast<hamlet::v1::DisputeType>(1 + Pick(7)));
    const std::string requester = PersonName();
    const std::string respondent = PersonName();
    c.set_summary(absl::StrCat(requester, " đề nghị hoà giải với ", respondent, ": ",
                               kDisputes[Pick(std::size(kDisputes))], "."));
    for (const auto& [name, role] : {std::pair{requester, hamlet::v1::PARTY_ROLE_REQUESTER},
                                     std::pair{respondent, hamlet::v1::PARTY_ROLE_RESPONDENT}}) {
      auto* party = c.add_parties();
      party->set_id(sync::NewUuid(rng_));
      party->set_name(name);
      party->set_age(static_cast<uint32_t>(25 + Pick(50)));
      party->set_address(Address(village));
      party->set_role(role);
    }
    c.add_mediators(sync::NewUuid(rng_));
    c.add_mediators(sync::NewUuid(rng_));
    c.set_round(1);
    const size_t fate = Pick(100);
    if (fate < 15) {
      c.set_status(hamlet::v1::MEDIATION_STATUS_IN_MEDIATION);
      return c;
    }
    if (fate < 85) {
      c.set_status(hamlet::v1::MEDIATION_STATUS_SUCCESSFUL);
      c.set_outcome(hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
      c.set_written_agreement("Hai bên thống nhất phương án và cam kết thực hiện trong 30 ngày.");
    } else if (fate < 95) {
      c.set_status(hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL);
      c.set_outcome(hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
    } else {
      c.set_status(hamlet::v1::MEDIATION_STATUS_WITHDRAWN);
      c.set_outcome(hamlet::v1::MEDIATION_OUTCOME_WITHDRAWN);
    }
    auto* session = c.add_sessions();
    session->set_id(sync::NewUuid(rng_));
    session->set_date(Date(day + 7));
    session->set_place(absl::StrCat("Nhà văn hoá ", units_.Find(villages_[village])->name()));
    session->add_attendees(requester);
    session->add_attendees(respondent);
    session->set_notes(
        "Hai bên trình bày ý kiến. Hoà giải viên giải thích quy định pháp luật liên quan, phân tích đúng sai và đề "
        "xuất phương án; trưởng khu và người làm chứng có mặt.");
    session->set_result(c.outcome() == hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL ? "Thành" : "Không thành");
    return c;
  }

  // 80% forwarded within 0–4 days; 60% with a police result 5–60 days after
  // they were received; a wanted person found in half the tips about one
  // that have a result.
  hamlet::v1::SecurityTip Tip(size_t village, absl::Time received) {
    hamlet::v1::SecurityTip t;
    *t.mutable_received_time() = TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(received));
    t.set_receiving_member(leaders_[village]);
    t.set_team_id(devices_[village]);
    t.set_channel(static_cast<hamlet::v1::TipChannel>(1 + Pick(4)));
    t.set_kind(static_cast<hamlet::v1::TipKind>(1 + Pick(2)));
    t.set_category(static_cast<hamlet::v1::TipCategory>(1 + Pick(9)));
    t.set_location(units_.Find(villages_[village])->name());
    t.set_summary(kTipSummaries[Pick(std::size(kTipSummaries))]);
    t.set_status(hamlet::v1::TIP_STATUS_NEW);
    if (Pick(10) < 8) {
      t.set_forwarded_to(hamlet::v1::TIP_FORWARD_TARGET_COMMUNE_POLICE);
      *t.mutable_forwarded_time() = TimeUtil::SecondsToTimestamp(
          absl::ToUnixSeconds(received + absl::Hours(static_cast<int64_t>(1 + Pick(24 * 4)))));
      t.set_status(hamlet::v1::TIP_STATUS_FORWARDED);
      if (Pick(4) < 3) {
        t.set_status(hamlet::v1::TIP_STATUS_HAS_RESULT);
        t.set_result(static_cast<hamlet::v1::TipResult>(1 + Pick(5)));
        if (t.category() == hamlet::v1::TIP_CATEGORY_WANTED_PERSON && Pick(2) == 0) {
          t.set_wanted_person_outcome(static_cast<hamlet::v1::WantedPersonOutcome>(1 + Pick(2)));
        }
        *t.mutable_result_time() = TimeUtil::SecondsToTimestamp(
            absl::ToUnixSeconds(received + absl::Hours(static_cast<int64_t>(24 * (5 + Pick(56))))));
        t.set_police_receipt_number(absl::StrCat("TB-", 1000 + Pick(9000)));
      }
    }
    return t;
  }

  // 70% self-management teams, 20% mediation teams, 10% street protection
  // boards; five members each.
  hamlet::v1::Team TeamOf(size_t village, absl::CivilDay day) {
    hamlet::v1::Team t;
    const size_t type = Pick(10);
    t.set_type(type < 7   ? hamlet::v1::TEAM_TYPE_SELF_MANAGEMENT
               : type < 9 ? hamlet::v1::TEAM_TYPE_MEDIATION
                          : hamlet::v1::TEAM_TYPE_STREET_PROTECTION_BOARD);
    t.set_name(absl::StrCat("Tổ ", 1 + Pick(9), " ", units_.Find(villages_[village])->name()));
    t.set_area(units_.Find(villages_[village])->name());
    for (int i = 0; i < 5; ++i) {
      auto* member = t.add_members();
      member->set_person_id(sync::NewUuid(rng_));
      member->set_name(PersonName());
      member->set_role(i == 0 ? hamlet::v1::TEAM_ROLE_LEADER : hamlet::v1::TEAM_ROLE_MEMBER);
    }
    t.set_valid_from(Date(day));
    return t;
  }

  const sync::UnitDirectory& units_;
  std::mt19937_64 rng_;
  std::vector<std::string> villages_;
  std::vector<std::string> devices_;  // One phone per village: the stamps' nodes.
  std::vector<std::string> leaders_;  // One team leader per village: the authors.
};

// ---------------------------------------------------------------------------
// Filling a store.

struct FillResult {
  double total_ms = 0;   // Making, checking and committing the new records.
  double commit_ms = 0;  // CommitPush alone.
  uint64_t batches = 0;
  uint64_t edits = 0;
  double edit_total_ms = 0;  // Reading, editing, checking and committing the edited records.
  double edit_commit_ms = 0;
};

// Commits `writes` as one push from the import device.
double Commit(TownStore& store, const std::string& device_id, SyntheticTown& town,
              std::vector<storage::RecordWrite> writes, uint64_t batch_number) {
  storage::PushCommit commit;
  commit.device_id = device_id;
  commit.batch_id = town.NewUuid();
  commit.device.set_device_id(device_id);
  commit.device.set_last_batch_id(commit.batch_id);
  commit.device.set_batches_applied(batch_number);
  commit.clock = writes.back().state.field_stamps(0).stamp();
  const size_t applied = writes.size();
  commit.records = std::move(writes);
  const std::string content_hash(32, '\x5a');
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<uint64_t> seq = store.CommitPush(std::move(commit), [&content_hash, applied](uint64_t last_seq) {
    storage::BatchReceipt receipt;
    receipt.set_content_hash(content_hash);
    hamlet::v1::PushResponse response;
    response.set_applied_records(static_cast<uint32_t>(applied));
    response.set_server_seq(last_seq);
    receipt.set_response(response.SerializeAsString());
    return receipt;
  });
  const double ms = MsSince(start);
  CheckOk(seq.status(), "CommitPush");
  return ms;
}

FillResult Fill(TownStore& store, const sync::UnitDirectory& units, uint64_t records, int edit_every) {
  FillResult result;
  SyntheticTown town(units, /*seed=*/20120101 + records);
  const std::string device_id = town.NewUuid();
  std::vector<std::string> to_edit;
  const auto start = std::chrono::steady_clock::now();
  std::vector<storage::RecordWrite> writes;
  for (uint64_t i = 0; i < records; ++i) {
    storage::RecordWrite write;
    write.state = town.NewRecord();
    write.commune = units.CommuneOf(write.state.unit_code());
    if (edit_every > 0 && i % static_cast<uint64_t>(edit_every) == 0) to_edit.push_back(write.state.id());
    writes.push_back(std::move(write));
    if (writes.size() == kBatchRecords || i + 1 == records) {
      result.commit_ms += Commit(store, device_id, town, std::move(writes), ++result.batches);
      writes.clear();
    }
    if ((i + 1) % 100'000 == 0) {
      std::printf("  filled %llu records, %.0f s\n", static_cast<unsigned long long>(i + 1), MsSince(start) / 1000);
      std::fflush(stdout);
    }
  }
  result.total_ms = MsSince(start);
  const auto edit_start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < to_edit.size(); ++i) {
    absl::StatusOr<std::optional<Record>> stored = store.GetRecord(to_edit[i]);
    CheckOk(stored.status(), "GetRecord");
    if (!stored->has_value()) Fail(absl::StrCat("record ", to_edit[i], " was committed and is not in the store"));
    storage::RecordWrite write;
    write.state = town.Edited(**stored);
    write.commune = units.CommuneOf(write.state.unit_code());
    write.previous_seq = (*stored)->server_seq();
    write.previous = **std::move(stored);
    writes.push_back(std::move(write));
    if (writes.size() == kBatchRecords || i + 1 == to_edit.size()) {
      result.edit_commit_ms += Commit(store, device_id, town, std::move(writes), ++result.batches);
      writes.clear();
    }
  }
  result.edits = to_edit.size();
  result.edit_total_ms = MsSince(edit_start);
  return result;
}

uint64_t BytesUnder(const std::filesystem::path& dir) {
  uint64_t bytes = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) bytes += entry.file_size();
  }
  return bytes;
}

// ---------------------------------------------------------------------------
// Reading reports.

struct ScanResult {
  UnitSums sums;
  uint64_t records = 0;
  double read_ms = 0;         // Inside ReadChanges; the rest is TalliesOf, summing and freeing the pages.
  uint64_t record_bytes = 0;  // Serialized, counted only with `every_key`.
};

// What a report costs without tallies: every record of the server, page by
// page as a pull reads them, its TalliesOf summed for the months from..to.
// When `every_key` is set, also sums every (unit, month, metric).
ScanResult ScanAll(const TownStore& store, int32_t from_month, int32_t to_month, sync::Tallies* every_key) {
  ScanResult result;
  const uint64_t last_seq = store.last_seq();
  uint64_t after_seq = 0;
  while (after_seq < last_seq) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<storage::ChangePage> page = store.ReadChanges(ChangeScope::WholeServer(), after_seq, kPageRecords,
                                                                 kPageBytes, storage::CountRemaining::kNo);
    result.read_ms += MsSince(start);
    CheckOk(page.status(), "ReadChanges");
    for (const Record& record : page->records) {
      ++result.records;
      if (every_key != nullptr) result.record_bytes += record.ByteSizeLong();
      for (const auto& [key, n] : sync::TalliesOf(record)) {
        if (key.month >= from_month && key.month <= to_month) result.sums[key.unit][key.metric] += n;
        if (every_key != nullptr) (*every_key)[key] += n;
      }
    }
    if (page->records.empty()) break;
    after_seq = page->through_seq;
  }
  return result;
}

UnitSums SumReport(const TownStore& store, const std::vector<std::string>& units) {
  absl::StatusOr<UnitSums> sums = store.SumTallies(units, kFromMonth, kToMonth);
  CheckOk(sums.status(), "SumTallies");
  return *std::move(sums);
}

// Drops zero counts and units left with nothing, returning how many zero
// counts there were.
size_t DropZeros(UnitSums* sums) {
  size_t zeros = 0;
  for (auto unit = sums->begin(); unit != sums->end();) {
    for (auto metric = unit->second.begin(); metric != unit->second.end();) {
      if (metric->second == 0) {
        ++zeros;
        metric = unit->second.erase(metric);
      } else {
        ++metric;
      }
    }
    unit = unit->second.empty() ? sums->erase(unit) : std::next(unit);
  }
  return zeros;
}

UnitSums Restrict(const UnitSums& sums, const std::vector<std::string>& units) {
  UnitSums out;
  for (const std::string& unit : units) {
    auto it = sums.find(unit);
    if (it != sums.end()) out.insert(*it);
  }
  return out;
}

// Aborts, naming the first difference, unless the sums are equal.
void CheckEqual(const UnitSums& tallies, const UnitSums& scanned, const std::string& what) {
  if (tallies == scanned) return;
  for (const auto& [unit, metrics] : scanned) {
    for (const auto& [metric, count] : metrics) {
      auto u = tallies.find(unit);
      const int64_t got = u == tallies.end() || u->second.count(metric) == 0 ? 0 : u->second.at(metric);
      if (got != count) {
        Fail(absl::StrCat(what, ": SumTallies gives ", unit, " ", metric, " = ", got, ", the records give ", count));
      }
    }
  }
  Fail(absl::StrCat(what, ": SumTallies gives counts that no record contributes"));
}

std::map<std::string, int64_t> Totals(const UnitSums& sums) {
  std::map<std::string, int64_t> totals;
  for (const auto& [unit, metrics] : sums) {
    for (const auto& [metric, count] : metrics) totals[metric] += count;
  }
  return totals;
}

struct Timings {
  std::vector<double> ms;  // In run order.
  double Median() const {
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    const size_t n = sorted.size();
    return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  }
  double Min() const { return *std::min_element(ms.begin(), ms.end()); }
  double Max() const { return *std::max_element(ms.begin(), ms.end()); }
};

std::string InOrder(const Timings& timings, int decimals) {
  std::string out;
  for (double ms : timings.ms) absl::StrAppend(&out, out.empty() ? "" : " ", absl::StrFormat("%.*f", decimals, ms));
  return out;
}

Timings TimeRuns(int runs, const std::function<void()>& run) {
  Timings timings;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    timings.ms.push_back(MsSince(start));
  }
  return timings;
}

// ---------------------------------------------------------------------------

struct SizeResult {
  uint64_t records = 0;
  size_t tally_keys = 0;
  size_t zero_counts = 0;
  Timings town, commune, scan;
  std::vector<double> scan_read_share;  // Per scan run, the part of its time inside ReadChanges.
};

SizeResult Measure(uint64_t records, const sync::UnitDirectory& units, const std::filesystem::path& parent, int runs,
                   int edit_every) {
  SizeResult result;
  result.records = records;
  const std::filesystem::path dir = parent / absl::StrCat("report_bench-", getpid(), "-", records);
  std::filesystem::remove_all(dir);
  storage::TownStoreOptions options;
  options.sync_writes = false;
  std::printf("\n== %llu records, store in %s\n", static_cast<unsigned long long>(records), dir.c_str());
  std::fflush(stdout);
  {
    absl::StatusOr<std::unique_ptr<TownStore>> store = TownStore::Open(dir.string(), options);
    CheckOk(store.status(), "opening a new store");
    const FillResult fill = Fill(**store, units, records, edit_every);
    std::printf(
        "  fill: %.1f s in all (making and checking records included), %.0f records/s; CommitPush alone %.1f s, "
        "%.0f records/s, %.1f ms per batch of %zu\n",
        fill.total_ms / 1000, records / (fill.total_ms / 1000), fill.commit_ms / 1000,
        records / (fill.commit_ms / 1000),
        fill.commit_ms / static_cast<double>((records + kBatchRecords - 1) / kBatchRecords), kBatchRecords);
    if (fill.edits > 0) {
      std::printf("  edits: %llu records edited once more, %.1f s in all; CommitPush alone %.1f s, %.0f records/s\n",
                  static_cast<unsigned long long>(fill.edits), fill.edit_total_ms / 1000, fill.edit_commit_ms / 1000,
                  fill.edits / (fill.edit_commit_ms / 1000));
    }
  }
  const auto reopen_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<TownStore>> opened = TownStore::Open(dir.string(), options);
  CheckOk(opened.status(), "opening the store again");
  const TownStore& store = **opened;
  std::printf("  closed and opened again in %.1f s; %.0f MiB on disk\n", MsSince(reopen_start) / 1000,
              BytesUnder(dir) / 1048576.0);
  std::fflush(stdout);

  const std::vector<std::string> town_units = units.Within(kTown);
  const std::vector<std::string> commune_units = units.Within(kCommune);
  result.town = TimeRuns(runs, [&] { SumReport(store, town_units); });
  result.commune = TimeRuns(runs, [&] { SumReport(store, commune_units); });
  result.scan = TimeRuns(runs, [&] {
    const auto start = std::chrono::steady_clock::now();
    const double read_ms = ScanAll(store, kFromMonth, kToMonth, nullptr).read_ms;
    result.scan_read_share.push_back(read_ms / MsSince(start));
  });

  // The check, after the timing so that it warms no cache for it.
  sync::Tallies every_key;
  ScanResult scanned = ScanAll(store, kFromMonth, kToMonth, &every_key);
  if (scanned.records != records) {
    Fail(absl::StrCat("the scan read ", scanned.records, " records; ", records, " were committed"));
  }
  for (auto it = every_key.begin(); it != every_key.end();) {
    it = it->second == 0 ? every_key.erase(it) : std::next(it);
  }
  result.tally_keys = every_key.size();
  DropZeros(&scanned.sums);
  UnitSums town = SumReport(store, town_units);
  result.zero_counts = DropZeros(&town);
  CheckEqual(town, scanned.sums, "town");
  if (Totals(town) != Totals(scanned.sums)) Fail("town totals differ from the records'");
  UnitSums commune = SumReport(store, commune_units);
  DropZeros(&commune);
  CheckEqual(commune, Restrict(scanned.sums, commune_units), "commune");
  const auto totals = Totals(town);
  std::printf(
      "  checked: town and commune SumTallies equal the scan's sums for every unit and metric (%zu units, "
      "%zu metrics; mediation.cases %lld, tips.received %lld, households.registered %lld); records average "
      "%.0f bytes serialized\n",
      town.size(), totals.size(), static_cast<long long>(totals.at("mediation.cases")),
      static_cast<long long>(totals.at("tips.received")), static_cast<long long>(totals.at("households.registered")),
      static_cast<double>(scanned.record_bytes) / static_cast<double>(scanned.records));
  if (result.zero_counts > 0) {
    std::printf(
        "  note: SumTallies returned %zu (unit, metric) counts of 0: tally keys whose count went back to 0 "
        "stay stored\n",
        result.zero_counts);
  }
  std::printf("  town %.2f ms, commune %.2f ms, scan %.0f ms (medians of %d)\n", result.town.Median(),
              result.commune.Median(), result.scan.Median(), runs);
  std::printf("  runs in order, ms: town %s; commune %s; scan %s\n", InOrder(result.town, 2).c_str(),
              InOrder(result.commune, 3).c_str(), InOrder(result.scan, 0).c_str());
  std::fflush(stdout);
  opened->reset();
  std::filesystem::remove_all(dir);
  return result;
}

std::vector<uint64_t> Sizes() {
  if (absl::GetFlag(FLAGS_quick)) return {10'000, 100'000};
  std::vector<uint64_t> sizes;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_sizes), ',', absl::SkipEmpty())) {
    uint64_t n = 0;
    if (!absl::SimpleAtoi(part, &n) || n == 0) Fail(absl::StrCat("--sizes: not a record count: ", part));
    sizes.push_back(n);
  }
  if (sizes.empty()) Fail("--sizes is empty");
  return sizes;
}

void PrintTable(const std::vector<SizeResult>& results, int runs, size_t town_units, size_t commune_units) {
  std::printf(
      "\nMedians of %d runs, milliseconds. town = SumTallies over %zu units, commune = SumTallies over %zu "
      "units, scan = ReadChanges over every record + TalliesOf.\n\n",
      runs, town_units, commune_units);
  std::printf(
      "| records | tally keys | town report ms | commune report ms | full scan ms | scan / town | scan / commune |\n");
  std::printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const SizeResult& r : results) {
    std::printf("| %llu | %zu | %.2f | %.3f | %.0f | %.0f | %.0f |\n", static_cast<unsigned long long>(r.records),
                r.tally_keys, r.town.Median(), r.commune.Median(), r.scan.Median(), r.scan.Median() / r.town.Median(),
                r.scan.Median() / r.commune.Median());
  }
  std::printf("\nSpread (min – max over the runs) and the first run (block cache empty after the reopen):\n\n");
  std::printf(
      "| records | town min – max | town first | commune min – max | commune first | scan min – max | scan first |\n");
  std::printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const SizeResult& r : results) {
    std::printf("| %llu | %.2f – %.2f | %.2f | %.3f – %.3f | %.3f | %.0f – %.0f | %.0f |\n",
                static_cast<unsigned long long>(r.records), r.town.Min(), r.town.Max(), r.town.ms.front(),
                r.commune.Min(), r.commune.Max(), r.commune.ms.front(), r.scan.Min(), r.scan.Max(), r.scan.ms.front());
  }
  std::printf(
      "\nUnit costs (medians): the town report per tally key it reads, the scan per record, and the part of\n"
      "the scan spent inside ReadChanges (reading and parsing records) rather than in TalliesOf and summing.\n\n");
  std::printf("| records | town µs per tally key | scan µs per record | scan share in ReadChanges |\n");
  std::printf("| ---: | ---: | ---: | ---: |\n");
  for (const SizeResult& r : results) {
    Timings share;
    share.ms = r.scan_read_share;
    std::printf("| %llu | %.2f | %.1f | %.0f%% |\n", static_cast<unsigned long long>(r.records),
                1000 * r.town.Median() / static_cast<double>(r.tally_keys),
                1000 * r.scan.Median() / static_cast<double>(r.records), 100 * share.Median());
  }
  if (results.size() < 2) return;
  const SizeResult& a = results.front();
  const SizeResult& b = results.back();
  std::printf(
      "\nFrom %llu to %llu records (x%.0f): tally keys x%.1f, town report x%.1f, commune report x%.1f, "
      "full scan x%.1f\n",
      static_cast<unsigned long long>(a.records), static_cast<unsigned long long>(b.records),
      static_cast<double>(b.records) / a.records, static_cast<double>(b.tally_keys) / a.tally_keys,
      b.town.Median() / a.town.Median(), b.commune.Median() / a.commune.Median(), b.scan.Median() / a.scan.Median());
}

int Main() {
  const int runs = absl::GetFlag(FLAGS_runs);
  if (runs < 1) Fail("--runs must be at least 1");
  const int edit_every = absl::GetFlag(FLAGS_edit_every);
  const std::filesystem::path parent = absl::GetFlag(FLAGS_dir).empty()
                                           ? std::filesystem::temp_directory_path()
                                           : std::filesystem::path(absl::GetFlag(FLAGS_dir));
  const std::vector<uint64_t> sizes = Sizes();

  sync::UnitDirectory units;
  size_t villages = 0;
  for (const auto& unit : sync::ReferenceUnits()) {
    units.Put(unit);
  }
  for (const std::string& code : units.Within(kTown)) {
    if (units.Find(code)->level() == hamlet::v1::UNIT_LEVEL_VILLAGE) ++villages;
  }
  const std::vector<std::string> town_units = units.Within(kTown);
  const std::vector<std::string> commune_units = units.Within(kCommune);

  std::printf("report_bench: reports from tallies against a scan of every record.\n");
  std::printf(
      "Syncing is OFF (TownStoreOptions.sync_writes = false): this measures reads, and the fill figures are\n"
      "not push throughput (a server syncs every push).\n");
  std::printf(
      "Records: Quang Yen's %zu villages, 2012-01..2017-12, batches of %zu; every %d-th record edited once "
      "more. %u hardware threads.\n",
      villages, kBatchRecords, edit_every, std::thread::hardware_concurrency());
  std::printf("Town report: %zu units (UnitDirectory::Within(\"%s\")); commune report: %zu units (\"%s\").\n",
              town_units.size(), kTown, commune_units.size(), kCommune);
  std::fflush(stdout);

  std::vector<SizeResult> results;
  for (uint64_t n : sizes) results.push_back(Measure(n, units, parent, runs, edit_every));
  PrintTable(results, runs, town_units.size(), commune_units.size());
  return 0;
}

}  // namespace
}  // namespace hamlet

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Times reports (TownStore::SumTallies) against a scan of every record, for stores of growing size.\n"
      "Usage: report_bench [--quick | --sizes=10000,100000,1000000] [--runs=9] [--edit_every=50] [--dir=DIR]");
  absl::ParseCommandLine(argc, argv);
  return hamlet::Main();
}
