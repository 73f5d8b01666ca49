#ifndef HAMLET_SERVER_SHA256_H_
#define HAMLET_SERVER_SHA256_H_

#include <string>

#include "absl/strings/string_view.h"

namespace hamlet::server {

// The 32-byte SHA-256 digest of `data` (OpenSSL).
std::string Sha256(absl::string_view data);

// The 32-byte HMAC-SHA256 of `data` under `key` (OpenSSL).
std::string HmacSha256(absl::string_view key, absl::string_view data);

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_SHA256_H_
