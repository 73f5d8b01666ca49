#ifndef HAMLET_STORAGE_SEALING_H_
#define HAMLET_STORAGE_SEALING_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hamlet::storage {

// Seals (encrypts and authenticates) stored values with AES-256-GCM, so that
// sealed records — informant identities — are never on disk in the clear.
//
// Sealed value layout (after the stored value's version byte 0x02):
//   key_id:8  nonce:12  ciphertext  tag:16
// key_id is the first 8 bytes of SHA-256(key): it names the key without
// revealing it, so keys can rotate: a sealer holds the current key, which
// seals, and older keys, which only open. The additional authenticated data is
// the record id, so a sealed value cannot be moved to another record.
//
// Thread-safe (immutable after creation).
class Sealer {
 public:
  // Keys are 32 raw bytes. INVALID_ARGUMENT if a key has another length.
  static absl::StatusOr<std::unique_ptr<Sealer>> Create(const std::string& current_key,
                                                        const std::vector<std::string>& old_keys = {});
  // Reads a key file: 32 raw bytes, or 64 hex digits (whitespace around them
  // ignored). FAILED_PRECONDITION naming the file if unreadable or malformed.
  static absl::StatusOr<std::string> ReadKeyFile(const std::string& path);

  // key_id nonce ciphertext tag.
  absl::StatusOr<std::string> Seal(absl::string_view plaintext, absl::string_view aad) const;
  // FAILED_PRECONDITION if sealed under a key this sealer does not hold;
  // DATA_LOSS if the value was altered (authentication fails) or is cut short.
  absl::StatusOr<std::string> Open(absl::string_view sealed, absl::string_view aad) const;

  // Hex of the current key's id, for logs.
  std::string current_key_id() const;
  // True if `sealed` was sealed under the current key.
  bool IsCurrent(absl::string_view sealed) const;

 private:
  Sealer() = default;
  std::string current_id_;
  std::map<std::string, std::string> keys_;  // key_id -> key
};

}  // namespace hamlet::storage

#endif  // HAMLET_STORAGE_SEALING_H_
