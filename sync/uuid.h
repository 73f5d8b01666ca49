#ifndef HAMLET_SYNC_UUID_H_
#define HAMLET_SYNC_UUID_H_

#include <string>

#include "absl/random/bit_gen_ref.h"

namespace hamlet::sync {

// A random (version 4) UUID in 8-4-4-4-12 lower-case hex, from `gen`.
std::string NewUuid(absl::BitGenRef gen);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_UUID_H_
