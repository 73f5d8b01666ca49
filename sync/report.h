#ifndef HAMLET_SYNC_REPORT_H_
#define HAMLET_SYNC_REPORT_H_

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

#include "hamlet/v1/sync.pb.h"

namespace hamlet::sync {

// Reports (docs/DOMAIN.md, "Reports") are sums of tallies that each record
// contributes to its unit and month, kept up to date as records change, so a
// report reads the tallies of its units and months and never the records.
//
// A tally is (unit, month, metric) -> count. Metric names are stable API:
//   mediation.cases                      mediation.outcome.<outcome>
//   mediation.dispute.<type>
//   tips.received                        tips.category.<category>
//   tips.result.<result>                 tips.wanted.<outcome>
//   tips.forwarded  tips.days_to_forward (sum of whole days received→forwarded)
//   tips.resulted   tips.days_to_result  (sum of whole days received→result)
//   households.registered                households.evaluation.<evaluation>
//   households.commitment_signed         teams.<type>
// <...> is the enum value's name without its type prefix, in lower case
// (MEDIATION_OUTCOME_SUCCESSFUL -> successful). Deleted and sealed records
// count for nothing.
struct TallyKey {
  std::string unit;   // The record's unit code (a village or a commune).
  int32_t month = 0;  // YYYYMM of the record's date (received, registered, ...).
  std::string metric;
  friend bool operator<(const TallyKey& a, const TallyKey& b) {
    return std::tie(a.unit, a.month, a.metric) < std::tie(b.unit, b.month, b.metric);
  }
};
using Tallies = std::map<TallyKey, int64_t>;

// What `record` adds to the reports.
Tallies TalliesOf(const hamlet::v1::Record& record);

// Adds to `delta` what changing a record from `before` (empty if new) to
// `after` changes in the tallies; entries that cancel out are dropped.
void AddTallyDelta(const hamlet::v1::Record& before, const hamlet::v1::Record& after, Tallies* delta);

// YYYYMM of an ISO date ("2017-08-24"), or 0 if it is not one.
int32_t MonthOfDate(const std::string& date);

// True when a count must be withheld: reports that leave the town (for the
// province) show no count of 1 or 2 for units below commune level, so that no
// one can be picked out of a village's figures.
bool Suppressed(int64_t count, bool below_commune, bool leaves_town);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_REPORT_H_
