#include "sync/uuid.h"

#include "absl/random/distributions.h"

namespace hamlet::sync {

std::string FormatUuid(std::string bytes, int version) {
  static constexpr char kHex[] = "0123456789abcdef";
  bytes[6] = static_cast<char>((bytes[6] & 0x0f) | (version << 4));
  bytes[8] = static_cast<char>((bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
  std::string out;
  out.reserve(36);
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    const auto b = static_cast<uint8_t>(bytes[i]);
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0x0f]);
  }
  return out;
}

std::string NewUuid(absl::BitGenRef gen) {
  std::string bytes(16, '\0');
  for (char& b : bytes) b = static_cast<char>(absl::Uniform<uint8_t>(gen));
  return FormatUuid(std::move(bytes), 4);
}

}  // namespace hamlet::sync
