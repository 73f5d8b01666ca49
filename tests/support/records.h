#ifndef HAMLET_TESTS_SUPPORT_RECORDS_H_
#define HAMLET_TESTS_SUPPORT_RECORDS_H_

// Builders for records in tests.

#include <cstdint>
#include <string>

#include "google/protobuf/util/time_util.h"
#include "hamlet/v1/sync.pb.h"
#include "sync/merge.h"

namespace hamlet::testing {

// How many of the 289 seeded admin units (sync::ReferenceUnits) each reader
// receives: a device of one commune gets the province, its town, its commune
// and the commune's 12 villages; a town officer of Quảng Yên (206) the
// province, the town and its 19 communes with their villages; a replication
// node all of them.
inline constexpr size_t kSeededUnits = 289;
inline constexpr size_t kUnitsOfOneCommune = 1 + 1 + 1 + 12;
inline constexpr size_t kUnitsOfQuangYen = 1 + 1 + 19 * 13;

inline hamlet::v1::Stamp MakeStamp(int64_t physical_ms, uint32_t logical, const std::string& node) {
  hamlet::v1::Stamp s;
  s.set_physical_ms(physical_ms);
  s.set_logical(logical);
  s.set_node(node);
  return s;
}

// A new mediation case with summary, status and round set and stamped.
inline hamlet::v1::Record NewCase(const std::string& id, const std::string& unit, const hamlet::v1::Stamp& stamp,
                                  const std::string& summary = "Tranh chấp ranh giới đất") {
  hamlet::v1::Record r;
  r.set_id(id);
  r.set_unit_code(unit);
  r.set_author("person-1");
  *r.mutable_create_time() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(stamp.physical_ms());
  r.set_sensitivity(hamlet::v1::SENSITIVITY_CONFIDENTIAL);
  auto* c = r.mutable_mediation_case();
  c->set_summary(summary);
  c->set_status(hamlet::v1::MEDIATION_STATUS_RECEIVED);
  c->set_round(1);
  // status, round and outcome are one lifecycle value: stamped together.
  for (uint32_t field :
       {hamlet::v1::MediationCase::kSummaryFieldNumber, hamlet::v1::MediationCase::kStatusFieldNumber,
        hamlet::v1::MediationCase::kRoundFieldNumber, hamlet::v1::MediationCase::kOutcomeFieldNumber}) {
    sync::SetFieldStamp(&r, field, stamp);
  }
  return r;
}

// A change to an existing case that moves its lifecycle (status, round,
// outcome), keeping the round unless one is given.
inline hamlet::v1::Record CaseStatusChange(
    const hamlet::v1::Record& existing, hamlet::v1::MediationStatus status, const hamlet::v1::Stamp& stamp,
    uint32_t round = 0, hamlet::v1::MediationOutcome outcome = hamlet::v1::MEDIATION_OUTCOME_UNSPECIFIED) {
  hamlet::v1::Record r = sync::EmptyChangeOf(existing);
  r.mutable_mediation_case()->set_status(status);
  r.mutable_mediation_case()->set_round(round != 0 ? round : existing.mediation_case().round());
  r.mutable_mediation_case()->set_outcome(outcome);
  for (uint32_t field : {hamlet::v1::MediationCase::kStatusFieldNumber, hamlet::v1::MediationCase::kRoundFieldNumber,
                         hamlet::v1::MediationCase::kOutcomeFieldNumber}) {
    sync::SetFieldStamp(&r, field, stamp);
  }
  return r;
}

}  // namespace hamlet::testing

#endif  // HAMLET_TESTS_SUPPORT_RECORDS_H_
