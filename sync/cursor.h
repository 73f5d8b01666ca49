#ifndef HAMLET_SYNC_CURSOR_H_
#define HAMLET_SYNC_CURSOR_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hamlet::sync {

// Where a device stands in one server's change index. Clients see it as opaque
// bytes; the server decodes it and checks it belongs to it.
//
// Encoding (version 1), all integers big-endian:
//   cursor    := version:u8(=1) server_id_len:u8 server_id epoch:u64 seq:u64
//                scope_len:u8 scope
// Changing the layout means a new version byte; old versions stay decodable.
struct Cursor {
  std::string server_id;  // The server's identity, fixed when its data dir is made.
  uint64_t epoch = 0;     // Changes when the server's history is rewound (restore).
  std::string scope;      // The scope_unit_code the cursor was issued for.
  uint64_t seq = 0;       // Every change with a sequence number <= seq was delivered.

  friend bool operator==(const Cursor& a, const Cursor& b) {
    return a.server_id == b.server_id && a.epoch == b.epoch && a.scope == b.scope && a.seq == b.seq;
  }
};

std::string EncodeCursor(const Cursor& cursor);

// INVALID_ARGUMENT if `bytes` is not a cursor this code wrote.
absl::StatusOr<Cursor> DecodeCursor(absl::string_view bytes);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_CURSOR_H_
