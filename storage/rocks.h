#ifndef HAMLET_STORAGE_ROCKS_H_
#define HAMLET_STORAGE_ROCKS_H_

// Plumbing shared by the stores in this folder. Not for use outside storage/.

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message_lite.h"
#include "rocksdb/db.h"

namespace hamlet::storage::internal {

// Maps a RocksDB status to an absl::Status. Corruption becomes DATA_LOSS, a
// full disk RESOURCE_EXHAUSTED, other I/O errors UNAVAILABLE.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what);

// A database opened with named column families ("default" is always first).
struct OpenedDb {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> families;  // Same order as `names`.

  OpenedDb() = default;
  OpenedDb(OpenedDb&&) = default;
  OpenedDb& operator=(OpenedDb&&) = default;
  ~OpenedDb();
};

// Opens (creating if missing) the database in `dir` with the column families
// `names`, which must start with "default". FAILED_PRECONDITION if another
// process holds the database. `env` is where RocksDB does its I/O: null for
// rocksdb::Env::Default(), else (tests injecting faults) not owned, and must
// outlive the database. The families named in `looked_up` are read mostly by
// key, and often for keys they do not hold (a new record, a new batch): their
// memtables keep a bloom filter of whole keys, so such a read skips them.
absl::StatusOr<OpenedDb> OpenDb(const std::string& dir, const std::vector<std::string>& names,
                                rocksdb::Env* env = nullptr, const std::set<std::string>& looked_up = {});

// Debian's Abseil has its own string_view, distinct from std::string_view.
inline absl::string_view View(const rocksdb::Slice& s) { return absl::string_view(s.data(), s.size()); }

// Stored values are a format version byte followed by a serialized proto.
constexpr uint8_t kValueFormatV1 = 1;
std::string EncodeValue(const google::protobuf::MessageLite& message);
// DATA_LOSS if the version is unknown or the bytes do not parse.
absl::Status DecodeValue(absl::string_view bytes, google::protobuf::MessageLite* message);

}  // namespace hamlet::storage::internal

#endif  // HAMLET_STORAGE_ROCKS_H_
