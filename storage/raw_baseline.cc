#include "storage/raw_baseline.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hamlet::storage {

absl::StatusOr<double> RawSyncedWriteRate(const std::string& dir, size_t records, size_t value_bytes, size_t batch,
                                          size_t threads) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.error_if_exists = true;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status opened = rocksdb::DB::Open(options, dir, &raw);
  if (!opened.ok()) return absl::UnavailableError(absl::StrCat("opening ", dir, ": ", opened.ToString()));
  std::unique_ptr<rocksdb::DB> db(raw);
  const std::string value(value_bytes, 'v');
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  rocksdb::WriteOptions write;
  write.sync = true;
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> writers;
  for (size_t t = 0; t < threads; ++t) {
    writers.emplace_back([&] {
      while (true) {
        const size_t first = next.fetch_add(batch);
        if (first >= records) return;
        rocksdb::WriteBatch wb;
        for (size_t i = first; i < first + batch && i < records; ++i) wb.Put(absl::StrFormat("%016d", i), value);
        if (!db->Write(write, &wb).ok()) failed = true;
      }
    });
  }
  for (auto& writer : writers) writer.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (failed) return absl::UnavailableError("a raw RocksDB write failed");
  return static_cast<double>(records) / seconds;
}

}  // namespace hamlet::storage
