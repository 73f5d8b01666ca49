#include "sync/uuid.h"

#include "absl/random/distributions.h"

namespace hamlet::sync {

std::string NewUuid(absl::BitGenRef gen) {
  static constexpr char kHex[] = "0123456789abcdef";
  uint8_t bytes[16];
  for (uint8_t& b : bytes) b = absl::Uniform<uint8_t>(gen);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;  // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80;  // RFC 4122 variant
  std::string out;
  out.reserve(36);
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(kHex[bytes[i] >> 4]);
    out.push_back(kHex[bytes[i] & 0x0f]);
  }
  return out;
}

}  // namespace hamlet::sync
