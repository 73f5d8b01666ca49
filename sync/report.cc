#include "sync/report.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"

namespace hamlet::sync {

using hamlet::v1::Record;

namespace {

// MEDIATION_OUTCOME_SUCCESSFUL of enum MediationOutcome -> "successful".
std::string ValueName(const google::protobuf::EnumDescriptor* type, int number) {
  const auto* value = type->FindValueByNumber(number);
  if (value == nullptr) return absl::StrCat(number);
  std::string prefix;
  for (char c : type->name()) {
    if (std::isupper(static_cast<unsigned char>(c)) && !prefix.empty()) prefix.push_back('_');
    prefix.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  std::string name = value->name();
  if (name.rfind(prefix + "_", 0) == 0) name = name.substr(prefix.size() + 1);
  return absl::AsciiStrToLower(name);
}

int32_t MonthOfTimestamp(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return 0;
  const absl::Time time = absl::FromUnixSeconds(t.seconds());
  const absl::TimeZone vietnam = absl::FixedTimeZone(7 * 3600);  // Reports count in local time.
  const absl::CivilDay day = absl::ToCivilDay(time, vietnam);
  return static_cast<int32_t>(day.year() * 100 + day.month());
}

// Whole days from `from` to `to`; 0 when the seconds between them overflow,
// which only times far outside google.protobuf.Timestamp's years 1-9999 do
// (nothing refuses those): such a tip adds no days.
int64_t DaysBetween(const google::protobuf::Timestamp& from, const google::protobuf::Timestamp& to) {
  int64_t seconds = 0;
  if (__builtin_sub_overflow(to.seconds(), from.seconds(), &seconds)) return 0;
  return seconds / 86400;
}

}  // namespace

int32_t MonthOfDate(const std::string& date) {
  int year = 0, month = 0;
  if (date.size() < 7 || date[4] != '-' || !absl::SimpleAtoi(date.substr(0, 4), &year) ||
      !absl::SimpleAtoi(date.substr(5, 2), &month) || month < 1 || month > 12) {
    return 0;
  }
  return year * 100 + month;
}

Tallies TalliesOf(const Record& record) {
  Tallies out;
  if (record.deleted() || record.sensitivity() == hamlet::v1::SENSITIVITY_SEALED) return out;
  const int32_t created = MonthOfTimestamp(record.create_time());
  const auto add = [&](int32_t month, const std::string& metric, int64_t n = 1) {
    if (month == 0) month = created;
    if (month != 0 && n != 0) out[{record.unit_code(), month, metric}] += n;
  };
  if (record.has_mediation_case()) {
    const auto& c = record.mediation_case();
    const int32_t month = MonthOfDate(c.date_received());
    add(month, "mediation.cases");
    if (c.outcome() != hamlet::v1::MEDIATION_OUTCOME_UNSPECIFIED) {
      add(month, "mediation.outcome." + ValueName(hamlet::v1::MediationOutcome_descriptor(), c.outcome()));
    }
    if (c.dispute_type() != hamlet::v1::DISPUTE_TYPE_UNSPECIFIED) {
      add(month, "mediation.dispute." + ValueName(hamlet::v1::DisputeType_descriptor(), c.dispute_type()));
    }
  } else if (record.has_security_tip()) {
    const auto& t = record.security_tip();
    const int32_t month = MonthOfTimestamp(t.received_time());
    add(month, "tips.received");
    if (t.category() != hamlet::v1::TIP_CATEGORY_UNSPECIFIED) {
      add(month, "tips.category." + ValueName(hamlet::v1::TipCategory_descriptor(), t.category()));
    }
    if (t.result() != hamlet::v1::TIP_RESULT_UNSPECIFIED) {
      add(month, "tips.result." + ValueName(hamlet::v1::TipResult_descriptor(), t.result()));
    }
    if (t.wanted_person_outcome() != hamlet::v1::WANTED_PERSON_OUTCOME_UNSPECIFIED) {
      add(month, "tips.wanted." + ValueName(hamlet::v1::WantedPersonOutcome_descriptor(), t.wanted_person_outcome()));
    }
    if (t.has_received_time() && t.has_forwarded_time()) {
      add(month, "tips.forwarded");
      add(month, "tips.days_to_forward", DaysBetween(t.received_time(), t.forwarded_time()));
    }
    if (t.has_received_time() && t.has_result_time()) {
      add(month, "tips.resulted");
      add(month, "tips.days_to_result", DaysBetween(t.received_time(), t.result_time()));
    }
  } else if (record.has_household_registration()) {
    const auto& h = record.household_registration();
    const int32_t month = MonthOfDate(h.registered_date());
    add(month, "households.registered");
    if (h.commitment_signed()) add(month, "households.commitment_signed");
    if (h.evaluation() != hamlet::v1::HOUSEHOLD_EVALUATION_UNSPECIFIED) {
      add(month, "households.evaluation." + ValueName(hamlet::v1::HouseholdEvaluation_descriptor(), h.evaluation()));
    }
  } else if (record.has_team()) {
    const auto& t = record.team();
    if (t.type() != hamlet::v1::TEAM_TYPE_UNSPECIFIED) {
      add(MonthOfDate(t.valid_from()), "teams." + ValueName(hamlet::v1::TeamType_descriptor(), t.type()));
    }
  }
  return out;
}

void AddTallyDelta(const Record& before, const Record& after, Tallies* delta) {
  for (const auto& [key, n] : TalliesOf(before)) (*delta)[key] -= n;
  for (const auto& [key, n] : TalliesOf(after)) (*delta)[key] += n;
  for (auto it = delta->begin(); it != delta->end();) {
    it = it->second == 0 ? delta->erase(it) : std::next(it);
  }
}

bool Suppressed(int64_t count, bool below_commune, bool leaves_town) {
  return leaves_town && below_commune && count > 0 && count < 3;
}

}  // namespace hamlet::sync
