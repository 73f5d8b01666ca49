#ifndef HAMLET_STORAGE_RAW_BASELINE_H_
#define HAMLET_STORAGE_RAW_BASELINE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace hamlet::storage {

// The physical limit a push is measured against (tools/hamlet-bench): plain
// RocksDB writing `records` values of `value_bytes` into a fresh database in
// `dir`, in WriteBatches of `batch` records with sync on, from `threads`
// writer threads at once (RocksDB groups concurrent synced writers itself).
// No Hamlet code runs. Returns records per second.
absl::StatusOr<double> RawSyncedWriteRate(const std::string& dir, size_t records, size_t value_bytes, size_t batch,
                                          size_t threads);

}  // namespace hamlet::storage

#endif  // HAMLET_STORAGE_RAW_BASELINE_H_
