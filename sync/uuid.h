#ifndef HAMLET_SYNC_UUID_H_
#define HAMLET_SYNC_UUID_H_

#include <string>

#include "absl/random/bit_gen_ref.h"

namespace hamlet::sync {

// A random (version 4) UUID in 8-4-4-4-12 lower-case hex, from `gen`.
std::string NewUuid(absl::BitGenRef gen);

// 16 bytes as a UUID of `version` (4 random, 8 derived from a name):
// 8-4-4-4-12 lower-case hex with the version and RFC 4122 variant bits set.
// REQUIRES: bytes.size() >= 16.
std::string FormatUuid(std::string bytes, int version);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_UUID_H_
