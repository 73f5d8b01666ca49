#ifndef HAMLET_SYNC_BIG_ENDIAN_H_
#define HAMLET_SYNC_BIG_ENDIAN_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace hamlet::sync {

// Big-endian so that byte order equals numeric order in sorted keys.
inline void PutBigEndian64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}

// REQUIRES: in.size() >= 8.
inline uint64_t GetBigEndian64(absl::string_view in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_BIG_ENDIAN_H_
