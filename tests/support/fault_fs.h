#ifndef HAMLET_TESTS_SUPPORT_FAULT_FS_H_
#define HAMLET_TESTS_SUPPORT_FAULT_FS_H_

// A RocksDB file system that fails on demand, for storage fault tests: the
// Nth append or sync fails, the disk fills up, or the power goes and takes
// with it every byte that was not synced.
//
//   FaultEnv fault;
//   TownStoreOptions options;
//   options.env = fault.env();
//   ... open, push ...
//   fault.fs().FailSync(FaultFiles::kWal, 1, FaultRepeat::kOnce);
//
// A power cut, in the order that reproduces one:
//   1. fault.fs().CutPower();   from here nothing reaches the disk
//   2. destroy the store        RocksDB closes; what it writes is dropped,
//                               its syncs fail
//   3. fault.fs().DropUnsyncedData(...);   the disk as the cut left it
//   4. fault.fs().Heal();       reopen and look
// Cutting first matters: a clean close could sync or write what a real cut
// would have lost.
//
// What is modelled: file contents. Each file written through this file
// system has a length known to be synced (what had been appended when a Sync
// or Fsync succeeded); a power cut keeps that much, or that much plus a
// random part of the rest (a torn tail). The page cache stands for the disk,
// so a sync is recorded, not passed on to the kernel: real fsyncs would
// change nothing a test can observe, only make it slow. Not modelled:
// directory entries (a created or renamed file is assumed to survive without
// a directory fsync), data on disk before the file system first saw the file
// (taken as synced), and RandomRW files (Hamlet's RocksDB setup uses none).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"

namespace hamlet::testing {

// Which files a fault applies to, by RocksDB's file names.
enum class FaultFiles {
  // Write-ahead logs (NNNNNN.log).
  kWal,
  // Every file RocksDB reads back: logs, tables, MANIFEST, CURRENT, OPTIONS;
  // everything but the informational LOG.
  kDurable,
};

// Whether an armed fault fires once, or on every matching call from the
// Nth on (a device that has failed for good).
enum class FaultRepeat { kOnce, kFromThenOn };

// What a failing append leaves in the file.
enum class TornWrite {
  // Nothing: the call fails before writing.
  kNone,
  // The first half of the data, then the call fails (a short write).
  kHalf,
};

// How much of what was not synced a power cut takes.
enum class UnsyncedLoss {
  // All of it: each file is cut back to its synced length.
  kAll,
  // A random part: each file keeps its synced length plus a random prefix of
  // the rest, as a disk that wrote some pages and not others.
  kRandomTail,
};

namespace internal {
struct FaultFileState;
}  // namespace internal

// Thread-safe: RocksDB calls it from its own threads while the test arms and
// disarms faults. Wraps rocksdb::FileSystem::Default().
class FaultFileSystem : public rocksdb::FileSystemWrapper {
 public:
  FaultFileSystem();
  ~FaultFileSystem() override;

  static const char* kClassName() { return "HamletFaultFileSystem"; }
  const char* Name() const override { return kClassName(); }

  // The `nth` append (Append or PositionedAppend) to `files` from now on
  // fails with an I/O error (nth >= 1), having written what `torn` says; with
  // kFromThenOn, so does every later one. Replaces any armed append fault.
  void FailAppend(FaultFiles files, int nth, FaultRepeat repeat, TornWrite torn = TornWrite::kNone);
  // The `nth` Sync or Fsync of `files` from now on fails with an I/O error
  // and syncs nothing; with kFromThenOn, so does every later one.
  void FailSync(FaultFiles files, int nth, FaultRepeat repeat);
  // Until FreeDisk, every append and allocation fails with NoSpace (the file
  // unchanged). Creating, syncing and deleting files still work.
  void FillDisk();
  void FreeDisk();
  // From now on nothing reaches the disk. Appends, allocations and file
  // truncations are accepted and dropped (the process cannot tell until it
  // syncs); every sync fails with an I/O error, and so does every file
  // creation, rename, link and deletion. A sync in flight when the power
  // goes counts as failed. Then close the database and DropUnsyncedData.
  void CutPower();
  // The disk as the power cut left it: every file this file system wrote is
  // cut back to what `loss` keeps. Returns how many bytes were dropped.
  // REQUIRES: no database open on this file system (its files closed).
  uint64_t DropUnsyncedData(UnsyncedLoss loss, uint32_t seed = 0);
  // Disarms every fault, frees the disk and restores the power. Counters,
  // what is known to be synced, and the sync delay stay.
  void Heal();
  // How long each sync takes from now on (default none): a disk's flush, so
  // that writes pile up behind a sync in flight as they do on a real disk.
  void SetSyncDelay(std::chrono::microseconds delay);

  // Calls that reached this file system (failed ones included), and how many
  // faults it has injected, since it was made.
  uint64_t appends(FaultFiles files) const;
  uint64_t syncs(FaultFiles files) const;
  uint64_t injected() const;
  // Whether the armed append or sync fault has fired yet.
  bool append_fault_fired() const;
  bool sync_fault_fired() const;

  // rocksdb::FileSystem.
  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& options,
                                 std::unique_ptr<rocksdb::FSDirectory>* result, rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& fname, const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& src, const std::string& target, const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus LinkFile(const std::string& src, const std::string& target, const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus Truncate(const std::string& fname, size_t size, const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override;

 private:
  friend class FaultWritableFile;
  friend class FaultDirectory;
  using FileState = internal::FaultFileState;

  // An armed append or sync fault.
  struct Trigger {
    bool armed = false;
    FaultFiles files = FaultFiles::kWal;
    int countdown = 0;
    FaultRepeat repeat = FaultRepeat::kOnce;
    bool fired = false;
    // Counts a call to a file of kind `wal`/durable; true if it must fail.
    bool Fires(bool wal, bool durable);
  };

  // Called by the files. `write` does the real append of what it is given.
  rocksdb::IOStatus Append(FileState* file, const rocksdb::Slice& data, uint64_t offset,
                           const std::function<rocksdb::IOStatus(const rocksdb::Slice&)>& write);
  rocksdb::IOStatus Sync(FileState* file);
  rocksdb::IOStatus Allocate(FileState* file, const std::function<rocksdb::IOStatus()>& allocate);
  void Truncated(FileState* file, uint64_t size);
  // The state of a file being (re)written, registered under its name.
  std::shared_ptr<FileState> Track(const std::string& fname, uint64_t size, uint64_t synced)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool PowerIsCut() const ABSL_LOCKS_EXCLUDED(mu_);
  // An I/O error naming `fname` once the power is cut.
  rocksdb::IOStatus PowerCheck(const std::string& fname) const ABSL_LOCKS_EXCLUDED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<FileState>> files_ ABSL_GUARDED_BY(mu_);
  Trigger append_fault_ ABSL_GUARDED_BY(mu_);
  TornWrite torn_ ABSL_GUARDED_BY(mu_) = TornWrite::kNone;
  Trigger sync_fault_ ABSL_GUARDED_BY(mu_);
  bool disk_full_ ABSL_GUARDED_BY(mu_) = false;
  std::chrono::microseconds sync_delay_ ABSL_GUARDED_BY(mu_){0};
  bool power_cut_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t wal_appends_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t durable_appends_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t wal_syncs_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t durable_syncs_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t injected_ ABSL_GUARDED_BY(mu_) = 0;
};

// A FaultFileSystem and the rocksdb::Env to open a database with: the file
// system, with Env::Default()'s threads and clock (rocksdb::NewCompositeEnv),
// except that no sleep lasts more than a millisecond (RocksDB pauses a second
// after a failed background job, and closing waits for it). The env must
// outlive every database opened with it.
class FaultEnv {
 public:
  FaultEnv();
  FaultEnv(const FaultEnv&) = delete;
  FaultEnv& operator=(const FaultEnv&) = delete;

  rocksdb::Env* env() const { return env_.get(); }
  FaultFileSystem& fs() const { return *fs_; }

 private:
  std::shared_ptr<FaultFileSystem> fs_;
  std::unique_ptr<rocksdb::Env> env_;
};

}  // namespace hamlet::testing

#endif  // HAMLET_TESTS_SUPPORT_FAULT_FS_H_
