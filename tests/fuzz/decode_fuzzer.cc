// The decoders of bytes a store reads back from RocksDB, on arbitrary bytes:
// each must return its error, never crash, and what it accepts must encode
// back to what it decoded.
//
// Input: one byte choosing the decoder (modulo their number), then the bytes.
//   0-10  storage::internal::DecodeValue of each stored message
//         (format byte 0x01 + proto; storage/rocks.h): DATA_LOSS on damage;
//         a decoded value encodes to bytes that decode to the same value.
//   11    sync::DecodeCursor (stored in PullPosition.cursor and
//         ReplicationState.down_cursor): INVALID_ARGUMENT on anything it did
//         not write; a decoded cursor encodes back to the same bytes.
//   12    storage::Sealer::Open of a sealed record's value after its format
//         byte 0x02 (storage/sealing.h): DATA_LOSS for a value altered or cut
//         short, FAILED_PRECONDITION for one sealed under an unknown key.
//   13    the same, the input's first byte appended to a real sealed value's
//         prefix (key id and nonce): bytes that reach the cipher.
//
// The key decoders live inside TownStore and DeviceStore (store_fuzzer.cc).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "google/protobuf/message_lite.h"
#include "hamlet/v1/admin.pb.h"
#include "hamlet/v1/sync.pb.h"
#include "storage/rocks.h"
#include "storage/sealing.h"
#include "storage/storage.pb.h"
#include "sync/cursor.h"
#include "tests/fuzz/fuzz_support.h"

namespace hamlet::fuzz {
namespace {

using absl::StatusCode;

template <typename Message>
void FuzzStoredValue(absl::string_view bytes) {
  Message decoded;
  const absl::Status status = storage::internal::DecodeValue(bytes, &decoded);
  CheckCode(status, {StatusCode::kDataLoss}, "DecodeValue");
  if (!status.ok()) return;
  const std::string encoded = storage::internal::EncodeValue(decoded);
  Message again;
  Check(storage::internal::DecodeValue(encoded, &again).ok(), "an encoded value decodes");
  Check(again.SerializeAsString() == decoded.SerializeAsString(), "a stored value round-trips", decoded.GetTypeName());
}

void FuzzCursor(absl::string_view bytes) {
  absl::StatusOr<sync::Cursor> cursor = sync::DecodeCursor(bytes);
  CheckCode(cursor.status(), {StatusCode::kInvalidArgument}, "DecodeCursor");
  if (!cursor.ok()) return;
  Check(sync::EncodeCursor(*cursor) == bytes, "a decoded cursor encodes back to the same bytes");
}

const storage::Sealer& FixedSealer() {
  static const storage::Sealer* sealer = [] {
    auto created = storage::Sealer::Create(std::string(32, 'k'), {std::string(32, 'o')});
    if (!created.ok()) Violation("a sealer with 32-byte keys is created", created.status().ToString());
    return created->release();
  }();
  return *sealer;
}

constexpr char kRecordId[] = "6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c71";

void FuzzSealed(absl::string_view sealed) {
  absl::StatusOr<std::string> plain = FixedSealer().Open(sealed, kRecordId);
  CheckCode(plain.status(), {StatusCode::kDataLoss, StatusCode::kFailedPrecondition}, "Sealer::Open");
  FixedSealer().IsCurrent(sealed);
}

void FuzzSealedBody(absl::string_view tail) {
  static const std::string* prefix = [] {
    absl::StatusOr<std::string> sealed = FixedSealer().Seal("", kRecordId);
    if (!sealed.ok()) Violation("an empty value seals", sealed.status().ToString());
    return new std::string(sealed->substr(0, 8 + 12));  // key id, nonce
  }();
  FuzzSealed(absl::StrCat(*prefix, tail));
}

}  // namespace
}  // namespace hamlet::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  hamlet::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hamlet;  // NOLINT: only the message types below.
  if (size < 1) return 0;
  // The bytes end where libFuzzer's buffer ends, so reading past them is caught.
  const absl::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 14) {
    case 0:
      fuzz::FuzzStoredValue<v1::Record>(bytes);
      break;
    case 1:
      fuzz::FuzzStoredValue<storage::DeviceState>(bytes);
      break;
    case 2:
      fuzz::FuzzStoredValue<storage::BatchReceipt>(bytes);
      break;
    case 3:
      fuzz::FuzzStoredValue<storage::Enrolment>(bytes);
      break;
    case 4:
      fuzz::FuzzStoredValue<v1::AuditEntry>(bytes);
      break;
    case 5:
      fuzz::FuzzStoredValue<storage::ReplicationState>(bytes);
      break;
    case 6:
      fuzz::FuzzStoredValue<storage::PullPosition>(bytes);
      break;
    case 7:
      fuzz::FuzzStoredValue<storage::PendingBatch>(bytes);
      break;
    case 8:
      fuzz::FuzzStoredValue<storage::OutboxEntry>(bytes);
      break;
    case 9:
      fuzz::FuzzStoredValue<storage::RejectedEdit>(bytes);
      break;
    case 10:
      fuzz::FuzzStoredValue<v1::Stamp>(bytes);
      break;
    case 11:
      fuzz::FuzzCursor(bytes);
      break;
    case 12:
      fuzz::FuzzSealed(bytes);
      break;
    case 13:
      fuzz::FuzzSealedBody(bytes);
      break;
  }
  return 0;
}
