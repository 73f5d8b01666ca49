#include "storage/rocks.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "rocksdb/cache.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"

namespace hamlet::storage::internal {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", s.ToString());
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(message);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return absl::UnavailableError(message);
  if (s.IsIOError()) {
    // A held LOCK file shows up as an IOError naming it: "While lock file:
    // <dir>/LOCK: Resource temporarily unavailable" (another process), "lock
    // hold by current process, ...: <dir>/LOCK: No locks available". Only
    // the file name counts: any other I/O error is worth retrying, whatever
    // its path says ("/mnt/block-storage/...").
    if (s.ToString().find("/LOCK: ") != std::string::npos) return absl::FailedPreconditionError(message);
    return absl::UnavailableError(message);
  }
  if (s.IsInvalidArgument() || s.IsNotSupported()) return absl::FailedPreconditionError(message);
  return absl::InternalError(message);
}

OpenedDb::~OpenedDb() {
  if (!db) return;
  for (rocksdb::ColumnFamilyHandle* handle : families) {
    // Closing is best effort; the DB is already consistent on disk.
    db->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
  }
  db->Close().PermitUncheckedError();
}

absl::StatusOr<OpenedDb> OpenDb(const std::string& dir, const std::vector<std::string>& names, rocksdb::Env* env,
                                const std::set<std::string>& looked_up) {
  rocksdb::DBOptions options;
  if (env != nullptr) options.env = env;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  // Recovery replays the write-ahead log up to its first damaged record and
  // stops there (RocksDB's default). With every write synced, only a write cut
  // off by a crash can be damaged, and that write was never acknowledged.
  // Damage further back (a failing disk) would drop the acknowledged writes
  // after it without an error; the reliability work is to test and watch that.
  options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  options.keep_log_file_num = 5;
  // At most 64 MiB of memtables in all column families together (RocksDB's
  // default is 64 MiB a family, two of them while one flushes): a town
  // server's memory stays small beside whatever else the machine runs.
  options.db_write_buffer_size = 64 << 20;

  // One block cache for every column family (32 MiB in all, not per family),
  // and bloom filters so point lookups of records and receipts skip files.
  // Pushes of new records read back little, yet 20 s of 256 devices pushing
  // 50 new cases each left 41 MiB in the cache; a catch-up pull of a large
  // store reads its records' blocks in an order no cache of this size helps.
  // So the cache is kept small, and the server's memory with it.
  static const std::shared_ptr<rocksdb::Cache> cache = rocksdb::NewLRUCache(32 << 20);
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  for (const std::string& name : looked_up) {
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      return absl::InvalidArgumentError(absl::StrCat("no column family ", name, " to filter"));
    }
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : names) {
    rocksdb::ColumnFamilyOptions cf;
    cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
    if (looked_up.count(name) > 0) {
      // 2% of the family's write buffer (64 MiB by default): about 1.3 MiB of
      // bits for a memtable that the shared budget fills at 64 MiB in all.
      cf.memtable_whole_key_filtering = true;
      cf.memtable_prefix_bloom_size_ratio = 0.02;
    }
    descriptors.emplace_back(name, cf);
  }
  OpenedDb opened;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, descriptors, &opened.families, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("opening database in ", dir));
  opened.db.reset(raw);
  return opened;
}

std::string EncodeValue(const google::protobuf::MessageLite& message) {
  std::string out(1, static_cast<char>(kValueFormatV1));
  message.AppendToString(&out);
  return out;
}

absl::Status DecodeValue(absl::string_view bytes, google::protobuf::MessageLite* message) {
  if (bytes.empty() || static_cast<uint8_t>(bytes[0]) != kValueFormatV1) {
    return absl::DataLossError(absl::StrCat("stored ", message->GetTypeName(), " has unknown format version ",
                                            bytes.empty() ? -1 : static_cast<uint8_t>(bytes[0])));
  }
  bytes.remove_prefix(1);
  if (!message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(absl::StrCat("stored ", message->GetTypeName(), " does not parse"));
  }
  return absl::OkStatus();
}

}  // namespace hamlet::storage::internal
