// A week of a member's offline work, recorded on a phone as the app would:
// the workload of the rural-link test and of `hamlet-bench --mode=field`.
#ifndef HAMLET_TOOLS_FIELD_WEEK_H_
#define HAMLET_TOOLS_FIELD_WEEK_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/device.h"

namespace hamlet::field {

// Vietnamese words drawn at random, at least `length` bytes: text that
// compresses as real text does, not as one repeated phrase.
std::string VietnameseText(std::mt19937_64& gen, size_t length);

struct WeekOfWork {
  std::vector<std::string> ids;  // The records created, in order.
  int edits = 0;
};

// Records on `phone`, through FieldDevice::Create and Edit (so into its
// outbox): `cases` mediation cases with summaries of 200 to 600 characters
// and two parties each, spread over the 12 villages of commune 07132; then
// `tips` security tips; then `edits` later edits of the cases' summaries.
// The same `seed` gives the same texts (the ids differ), so two weeks weigh
// alike.
absl::StatusOr<WeekOfWork> RecordWeekOfWork(FieldDevice& phone, int cases, int tips, int edits,
                                            const std::string& author, uint64_t seed = 1);

}  // namespace hamlet::field

#endif  // HAMLET_TOOLS_FIELD_WEEK_H_
