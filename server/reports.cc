#include "server/reports.h"

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/time_util.h"
#include "sync/report.h"
#include "sync/status_macros.h"

namespace hamlet::server {

using google::protobuf::util::TimeUtil;

absl::StatusOr<hamlet::v1::GetReportResponse> BuildReport(const Town& town, const storage::TownStore& store,
                                                          const DeviceRegistry& devices,
                                                          const hamlet::v1::GetReportRequest& request, int64_t now_ms) {
  const int32_t from = sync::MonthOfDate(request.from_date());
  const int32_t to = sync::MonthOfDate(request.to_date());
  if (from == 0 || to == 0 || from > to) {
    return absl::InvalidArgumentError("from_date and to_date must be dates (YYYY-MM-DD), from before to");
  }
  const std::vector<std::string> units = town.UnitsWithin(request.unit_code());
  if (units.empty()) return absl::InvalidArgumentError(absl::StrCat("unit ", request.unit_code(), " does not exist"));
  const std::set<std::string> unit_set(units.begin(), units.end());
  const hamlet::v1::UnitLevel level = town.UnitLevel(request.unit_code());
  const bool below_commune = level == hamlet::v1::UNIT_LEVEL_VILLAGE;
  // A province's reports are read above the towns: unless the town audience
  // is asked for by name, they withhold what the province audience withholds.
  const hamlet::v1::ReportAudience audience =
      request.audience() != hamlet::v1::REPORT_AUDIENCE_UNSPECIFIED ? request.audience()
      : town.options().tier == Tier::kProvince                      ? hamlet::v1::REPORT_AUDIENCE_PROVINCE
                                                                    : hamlet::v1::REPORT_AUDIENCE_TOWN;
  const bool leaves_town = audience == hamlet::v1::REPORT_AUDIENCE_PROVINCE;

  HAMLET_ASSIGN_OR_RETURN(auto by_unit, store.SumTallies(units, from, to));
  std::map<std::string, int64_t> totals;
  hamlet::v1::GetReportResponse response;
  for (const auto& [unit, metrics] : by_unit) {
    for (const auto& [metric, count] : metrics) totals[metric] += count;
    auto registered = metrics.find("households.registered");
    if (registered != metrics.end() && registered->second > 0 &&
        town.UnitLevel(unit) == hamlet::v1::UNIT_LEVEL_VILLAGE) {
      response.set_villages_registered(response.villages_registered() + 1);
    }
  }
  for (const std::string& unit : units) {
    if (town.UnitLevel(unit) == hamlet::v1::UNIT_LEVEL_VILLAGE) response.set_villages(response.villages() + 1);
  }
  response.set_unit_code(request.unit_code());
  response.set_from_month(absl::StrFormat("%04d-%02d", from / 100, from % 100));
  response.set_to_month(absl::StrFormat("%04d-%02d", to / 100, to % 100));
  bool any_suppressed = false;
  for (const auto& [metric, count] : totals) {
    if (count == 0) continue;
    auto* figure = response.add_figures();
    figure->set_metric(metric);
    if (sync::Suppressed(count, below_commune, leaves_town)) {
      figure->set_suppressed(true);
      any_suppressed = true;
    } else {
      figure->set_count(count);
    }
  }
  response.set_suppressed(any_suppressed);
  if (!any_suppressed) {
    int64_t outcomes = 0;
    for (const auto& [metric, count] : totals) {
      if (metric.rfind("mediation.outcome.", 0) == 0) outcomes += count;
    }
    const auto get = [&totals](const std::string& metric) {
      auto it = totals.find(metric);
      return it == totals.end() ? int64_t{0} : it->second;
    };
    if (outcomes > 0) {
      response.set_mediation_success_percent(100.0 * get("mediation.outcome.successful") / outcomes);
    }
    if (get("tips.forwarded") > 0) {
      response.set_average_days_to_forward(static_cast<double>(get("tips.days_to_forward")) / get("tips.forwarded"));
    }
    if (get("tips.resulted") > 0) {
      response.set_average_days_to_result(static_cast<double>(get("tips.days_to_result")) / get("tips.resulted"));
    }
  }

  // Sync health.
  const int64_t silent_ms = int64_t{request.silent_after_days() == 0 ? 7u : request.silent_after_days()} * 86400000;
  for (const hamlet::v1::Device& device : devices.List()) {
    // Admins do not sync like phones; revoked devices are gone.
    if (device.has_revoke_time() || unit_set.count(device.unit_code()) == 0 ||
        device.role() == hamlet::v1::ROLE_ADMIN) {
      continue;
    }
    HAMLET_ASSIGN_OR_RETURN(std::optional<storage::DeviceState> state, store.GetDevice(device.device_id()));
    if (!state.has_value() || now_ms - state->last_seen_ms() > silent_ms) {
      response.set_silent_devices(response.silent_devices() + 1);
    }
  }
  HAMLET_ASSIGN_OR_RETURN(std::vector<hamlet::v1::Record> conflicted,
                          store.ListConflicted("", "", std::numeric_limits<size_t>::max()));
  for (const hamlet::v1::Record& record : conflicted) {
    if (unit_set.count(record.unit_code()) > 0) response.set_open_conflicts(response.open_conflicts() + 1);
  }
  return response;
}

}  // namespace hamlet::server
