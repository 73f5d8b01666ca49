#include "sync/cursor.h"

#include <algorithm>

#include "absl/status/status.h"
#include "sync/big_endian.h"

namespace hamlet::sync {
namespace {

constexpr uint8_t kCursorVersion = 2;

bool GetU64(absl::string_view* in, uint64_t* v) {
  if (in->size() < 8) return false;
  *v = GetBigEndian64(*in);
  in->remove_prefix(8);
  return true;
}

bool GetShortString(absl::string_view* in, std::string* s) {
  if (in->empty()) return false;
  const size_t len = static_cast<uint8_t>((*in)[0]);
  in->remove_prefix(1);
  if (in->size() < len) return false;
  s->assign(in->data(), len);
  in->remove_prefix(len);
  return true;
}

// Reads a payload of `version` from the front of `bytes`; false if it is not one.
bool GetPayload(absl::string_view* bytes, uint8_t version, Cursor* cursor) {
  if (bytes->empty() || static_cast<uint8_t>((*bytes)[0]) != version) return false;
  bytes->remove_prefix(1);
  return GetShortString(bytes, &cursor->server_id) && GetU64(bytes, &cursor->epoch) && GetU64(bytes, &cursor->seq) &&
         GetShortString(bytes, &cursor->scope);
}

}  // namespace

std::string CursorPayload(const Cursor& cursor) {
  std::string out;
  out.push_back(static_cast<char>(kCursorVersion));
  out.push_back(static_cast<char>(std::min<size_t>(cursor.server_id.size(), 255)));
  out.append(cursor.server_id.substr(0, 255));
  PutBigEndian64(&out, cursor.epoch);
  PutBigEndian64(&out, cursor.seq);
  out.push_back(static_cast<char>(std::min<size_t>(cursor.scope.size(), 255)));
  out.append(cursor.scope.substr(0, 255));
  return out;
}

std::string EncodeCursor(const Cursor& cursor) {
  std::string out = CursorPayload(cursor);
  std::string tag = cursor.tag.substr(0, kCursorTagBytes);
  tag.resize(kCursorTagBytes, '\0');
  return out + tag;
}

absl::StatusOr<Cursor> DecodeCursor(absl::string_view bytes) {
  Cursor cursor;
  if (!GetPayload(&bytes, kCursorVersion, &cursor) || bytes.size() != kCursorTagBytes) {
    return absl::InvalidArgumentError(
        "cursor is not one this server issued; send back next_cursor unchanged, or an empty cursor to start over");
  }
  cursor.tag = std::string(bytes);
  return cursor;
}

bool IsUntaggedCursor(absl::string_view bytes) {
  Cursor cursor;
  return GetPayload(&bytes, kUntaggedCursorVersion, &cursor) && bytes.empty();
}

}  // namespace hamlet::sync
