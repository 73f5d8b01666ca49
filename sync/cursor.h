#ifndef HAMLET_SYNC_CURSOR_H_
#define HAMLET_SYNC_CURSOR_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hamlet::sync {

// Where a device stands in one server's change index. Clients see it as opaque
// bytes; the server decodes it, checks it issued it, and checks it belongs to
// the scope asked for.
//
// Encoding (version 2), all integers big-endian:
//   cursor    := payload tag:16
//   payload   := version:u8(=2) server_id_len:u8 server_id epoch:u64 seq:u64
//                scope_len:u8 scope
// `tag` is the first 16 bytes of HMAC-SHA256 over `payload` under the
// issuing server's cursor key; the server makes and checks it (this code
// takes no key and only places it). Version 1 had no tag; a server answers
// one as a cursor from before its history (CURSOR_INVALIDATED), so a device
// pulls again from the start. Changing the layout means a new version byte.
struct Cursor {
  std::string server_id;  // The server's identity, fixed when its data dir is made.
  uint64_t epoch = 0;     // Changes when the server's history is rewound (restore).
  std::string scope;      // The scope_unit_code the cursor was issued for.
  uint64_t seq = 0;       // Every change with a sequence number <= seq was delivered.
  std::string tag;        // kCursorTagBytes bytes (EncodeCursor pads or cuts it).

  friend bool operator==(const Cursor& a, const Cursor& b) {
    return a.server_id == b.server_id && a.epoch == b.epoch && a.scope == b.scope && a.seq == b.seq && a.tag == b.tag;
  }
};

inline constexpr size_t kCursorTagBytes = 16;
inline constexpr uint8_t kUntaggedCursorVersion = 1;

// True if `bytes` is laid out exactly as a version 1 cursor (no tag).
bool IsUntaggedCursor(absl::string_view bytes);

// The bytes the tag covers.
std::string CursorPayload(const Cursor& cursor);

// CursorPayload(cursor) followed by its tag, padded with zero bytes or cut to
// kCursorTagBytes.
std::string EncodeCursor(const Cursor& cursor);

// INVALID_ARGUMENT if `bytes` is not laid out as a version 2 cursor. Does not
// check the tag.
absl::StatusOr<Cursor> DecodeCursor(absl::string_view bytes);

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_CURSOR_H_
