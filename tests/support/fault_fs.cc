#include "tests/support/fault_fs.h"

#include <algorithm>
#include <cassert>
#include <filesystem>
#include <random>
#include <set>
#include <system_error>
#include <thread>
#include <utility>

#include "rocksdb/system_clock.h"

namespace hamlet::testing {

using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

namespace internal {

// What the file system knows of one file it wrote. Guarded by the file
// system's mutex.
struct FaultFileState {
  // The file's current name, for error messages (as RocksDB's own give).
  std::string name;
  bool wal = false;
  bool durable = false;
  // Bytes written through the file system (or found on reopening).
  uint64_t size = 0;
  // Bytes known to be on disk: what a successful sync had seen written.
  uint64_t synced = 0;
};

}  // namespace internal

namespace {

constexpr uint64_t kAtEnd = ~uint64_t{0};

std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

IOStatus PowerIsOff(const std::string& fname) { return IOStatus::IOError("injected: the power is cut", fname); }

}  // namespace

// A writable file whose appends and syncs go through the fault file system.
class FaultWritableFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultWritableFile(std::unique_ptr<rocksdb::FSWritableFile> target, FaultFileSystem* fs,
                    std::shared_ptr<internal::FaultFileState> state)
      : FSWritableFileOwnerWrapper(std::move(target)), fs_(fs), state_(std::move(state)) {}

  IOStatus Append(const Slice& data, const IOOptions& options, IODebugContext* dbg) override {
    return fs_->Append(state_.get(), data, kAtEnd,
                       [&](const Slice& part) { return target()->Append(part, options, dbg); });
  }
  IOStatus Append(const Slice& data, const IOOptions& options, const rocksdb::DataVerificationInfo& info,
                  IODebugContext* dbg) override {
    return fs_->Append(state_.get(), data, kAtEnd, [&](const Slice& part) {
      // A checksum covers the whole data: a torn part is written without it.
      return part.size() == data.size() ? target()->Append(part, options, info, dbg)
                                        : target()->Append(part, options, dbg);
    });
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                            IODebugContext* dbg) override {
    return fs_->Append(state_.get(), data, offset,
                       [&](const Slice& part) { return target()->PositionedAppend(part, offset, options, dbg); });
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                            const rocksdb::DataVerificationInfo& info, IODebugContext* dbg) override {
    return fs_->Append(state_.get(), data, offset, [&](const Slice& part) {
      return part.size() == data.size() ? target()->PositionedAppend(part, offset, options, info, dbg)
                                        : target()->PositionedAppend(part, offset, options, dbg);
    });
  }
  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override { return fs_->Sync(state_.get()); }
  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override { return fs_->Sync(state_.get()); }
  IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const IOOptions& options, IODebugContext* dbg) override {
    return IOStatus::OK();  // A hint; it makes nothing durable here.
  }
  IOStatus Truncate(uint64_t size, const IOOptions& options, IODebugContext* dbg) override {
    if (fs_->PowerIsCut()) return IOStatus::OK();  // Dropped, like an append.
    IOStatus s = target()->Truncate(size, options, dbg);
    if (s.ok()) fs_->Truncated(state_.get(), size);
    return s;
  }
  IOStatus Allocate(uint64_t offset, uint64_t len, const IOOptions& options, IODebugContext* dbg) override {
    return fs_->Allocate(state_.get(), [&] { return target()->Allocate(offset, len, options, dbg); });
  }

 private:
  FaultFileSystem* const fs_;
  const std::shared_ptr<internal::FaultFileState> state_;
};

// A directory whose fsyncs are counted as done (directory entries are not
// modelled) and fail once the power is cut.
class FaultDirectory : public rocksdb::FSDirectoryWrapper {
 public:
  FaultDirectory(std::unique_ptr<rocksdb::FSDirectory> target, FaultFileSystem* fs, std::string name)
      : FSDirectoryWrapper(std::move(target)), fs_(fs), name_(std::move(name)) {}

  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override { return fs_->PowerCheck(name_); }
  IOStatus FsyncWithDirOptions(const IOOptions& options, IODebugContext* dbg,
                               const rocksdb::DirFsyncOptions& dir_fsync_options) override {
    return fs_->PowerCheck(name_);
  }

 private:
  FaultFileSystem* const fs_;
  const std::string name_;
};

bool FaultFileSystem::Trigger::Fires(bool wal, bool durable) {
  if (!armed || !(files == FaultFiles::kWal ? wal : durable)) return false;
  if (fired) return true;  // Still armed after firing: kFromThenOn.
  if (--countdown > 0) return false;
  fired = true;
  if (repeat == FaultRepeat::kOnce) armed = false;
  return true;
}

FaultFileSystem::FaultFileSystem() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}
FaultFileSystem::~FaultFileSystem() = default;

void FaultFileSystem::FailAppend(FaultFiles files, int nth, FaultRepeat repeat, TornWrite torn) {
  absl::MutexLock lock(&mu_);
  append_fault_ = Trigger{true, files, std::max(nth, 1), repeat, false};
  torn_ = torn;
}

void FaultFileSystem::FailSync(FaultFiles files, int nth, FaultRepeat repeat) {
  absl::MutexLock lock(&mu_);
  sync_fault_ = Trigger{true, files, std::max(nth, 1), repeat, false};
}

void FaultFileSystem::FillDisk() {
  absl::MutexLock lock(&mu_);
  disk_full_ = true;
}

void FaultFileSystem::FreeDisk() {
  absl::MutexLock lock(&mu_);
  disk_full_ = false;
}

void FaultFileSystem::CutPower() {
  absl::MutexLock lock(&mu_);
  power_cut_ = true;
}

void FaultFileSystem::SetSyncDelay(std::chrono::microseconds delay) {
  absl::MutexLock lock(&mu_);
  sync_delay_ = delay;
}

void FaultFileSystem::Heal() {
  absl::MutexLock lock(&mu_);
  append_fault_.armed = false;
  sync_fault_.armed = false;
  disk_full_ = false;
  power_cut_ = false;
}

uint64_t FaultFileSystem::DropUnsyncedData(UnsyncedLoss loss, uint32_t seed) {
  absl::MutexLock lock(&mu_);
  std::mt19937_64 random(seed);
  std::set<FileState*> done;  // A hard-linked file is one file.
  uint64_t dropped = 0;
  for (const auto& [name, state] : files_) {
    if (!done.insert(state.get()).second) continue;
    std::error_code error;
    const uint64_t on_disk = std::filesystem::file_size(name, error);
    if (error) continue;  // Deleted behind our back: nothing to drop.
    uint64_t keep = std::min(state->synced, on_disk);
    if (loss == UnsyncedLoss::kRandomTail && on_disk > keep) keep += random() % (on_disk - keep + 1);
    if (keep < on_disk) {
      std::filesystem::resize_file(name, keep, error);
      if (!error) dropped += on_disk - keep;
    }
    state->size = keep;
    state->synced = keep;
  }
  return dropped;
}

uint64_t FaultFileSystem::appends(FaultFiles files) const {
  absl::MutexLock lock(&mu_);
  return files == FaultFiles::kWal ? wal_appends_ : durable_appends_;
}

uint64_t FaultFileSystem::syncs(FaultFiles files) const {
  absl::MutexLock lock(&mu_);
  return files == FaultFiles::kWal ? wal_syncs_ : durable_syncs_;
}

uint64_t FaultFileSystem::injected() const {
  absl::MutexLock lock(&mu_);
  return injected_;
}

bool FaultFileSystem::append_fault_fired() const {
  absl::MutexLock lock(&mu_);
  return append_fault_.fired;
}

bool FaultFileSystem::sync_fault_fired() const {
  absl::MutexLock lock(&mu_);
  return sync_fault_.fired;
}

bool FaultFileSystem::PowerIsCut() const {
  absl::MutexLock lock(&mu_);
  return power_cut_;
}

IOStatus FaultFileSystem::PowerCheck(const std::string& fname) const {
  return PowerIsCut() ? PowerIsOff(fname) : IOStatus::OK();
}

std::shared_ptr<FaultFileSystem::FileState> FaultFileSystem::Track(const std::string& fname, uint64_t size,
                                                                   uint64_t synced) {
  auto state = std::make_shared<FileState>();
  const std::string base = BaseName(fname);
  const bool info_log = base == "LOG" || base.rfind("LOG.old", 0) == 0;
  state->durable = !info_log;
  state->wal = !info_log && EndsWith(base, ".log");
  state->name = fname;
  state->size = size;
  state->synced = synced;
  files_[fname] = state;
  return state;
}

IOStatus FaultFileSystem::Append(FileState* file, const Slice& data, uint64_t offset,
                                 const std::function<IOStatus(const Slice&)>& write) {
  IOStatus failure;
  size_t written_before_failure = 0;
  {
    absl::MutexLock lock(&mu_);
    if (file->wal) ++wal_appends_;
    if (file->durable) ++durable_appends_;
    // The process cannot tell the power is gone until it syncs. (Failing
    // here instead would also trip an assertion in Debian's RocksDB 7.8 when
    // a concurrent SyncWAL met the failed log writer: see the test
    // DISABLED_FailedAppendWhileAnotherPushAwaitsItsSync.)
    if (power_cut_) return IOStatus::OK();
    if (disk_full_) {
      ++injected_;
      return IOStatus::NoSpace("injected: no space left on device", file->name);
    }
    if (append_fault_.Fires(file->wal, file->durable)) {
      ++injected_;
      failure = IOStatus::IOError("injected: append failed", file->name);
      if (torn_ == TornWrite::kHalf) written_before_failure = data.size() / 2;
    }
  }
  const Slice part = failure.ok() ? data : Slice(data.data(), written_before_failure);
  IOStatus s = part.empty() ? IOStatus::OK() : write(part);
  if (s.ok() && !part.empty()) {
    absl::MutexLock lock(&mu_);
    file->size = offset == kAtEnd ? file->size + part.size() : std::max(file->size, offset + part.size());
  }
  return failure.ok() ? s : failure;
}

IOStatus FaultFileSystem::Sync(FileState* file) {
  uint64_t seen;
  std::chrono::microseconds delay;
  {
    absl::MutexLock lock(&mu_);
    if (file->wal) ++wal_syncs_;
    if (file->durable) ++durable_syncs_;
    if (power_cut_) return PowerIsOff(file->name);
    if (sync_fault_.Fires(file->wal, file->durable)) {
      ++injected_;
      return IOStatus::IOError("injected: sync failed", file->name);
    }
    // Appends update `size` under mu_ once written: what it holds now was
    // written before this sync began.
    seen = file->size;
    delay = sync_delay_;
  }
  if (delay.count() > 0) std::this_thread::sleep_for(delay);
  absl::MutexLock lock(&mu_);
  // The power went while the disk was syncing: the sync never returned.
  if (power_cut_) return PowerIsOff(file->name);
  file->synced = std::max(file->synced, seen);
  return IOStatus::OK();
}

IOStatus FaultFileSystem::Allocate(FileState* file, const std::function<IOStatus()>& allocate) {
  {
    absl::MutexLock lock(&mu_);
    if (power_cut_) return IOStatus::OK();
    if (disk_full_) {
      ++injected_;
      return IOStatus::NoSpace("injected: no space left on device", file->name);
    }
  }
  return allocate();
}

void FaultFileSystem::Truncated(FileState* file, uint64_t size) {
  absl::MutexLock lock(&mu_);
  file->size = size;
  file->synced = std::min(file->synced, size);
}

IOStatus FaultFileSystem::NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                          std::unique_ptr<rocksdb::FSWritableFile>* result, IODebugContext* dbg) {
  if (IOStatus off = PowerCheck(fname); !off.ok()) return off;
  std::unique_ptr<rocksdb::FSWritableFile> file;
  IOStatus s = target()->NewWritableFile(fname, options, &file, dbg);
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  result->reset(new FaultWritableFile(std::move(file), this, Track(fname, 0, 0)));
  return s;
}

IOStatus FaultFileSystem::ReopenWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                             std::unique_ptr<rocksdb::FSWritableFile>* result, IODebugContext* dbg) {
  if (IOStatus off = PowerCheck(fname); !off.ok()) return off;
  std::unique_ptr<rocksdb::FSWritableFile> file;
  IOStatus s = target()->ReopenWritableFile(fname, options, &file, dbg);
  if (!s.ok()) return s;
  uint64_t size = 0;
  s = target()->GetFileSize(fname, IOOptions(), &size, dbg);
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  // What was there before this file system saw the file counts as synced.
  auto known = files_.find(fname);
  const uint64_t synced = known == files_.end() ? size : std::min(known->second->synced, size);
  result->reset(new FaultWritableFile(std::move(file), this, Track(fname, size, synced)));
  return s;
}

IOStatus FaultFileSystem::ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                            const rocksdb::FileOptions& options,
                                            std::unique_ptr<rocksdb::FSWritableFile>* result, IODebugContext* dbg) {
  if (IOStatus off = PowerCheck(fname); !off.ok()) return off;
  std::unique_ptr<rocksdb::FSWritableFile> file;
  IOStatus s = target()->ReuseWritableFile(fname, old_fname, options, &file, dbg);
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  files_.erase(old_fname);
  result->reset(new FaultWritableFile(std::move(file), this, Track(fname, 0, 0)));
  return s;
}

IOStatus FaultFileSystem::NewDirectory(const std::string& name, const IOOptions& options,
                                       std::unique_ptr<rocksdb::FSDirectory>* result, IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSDirectory> dir;
  IOStatus s = target()->NewDirectory(name, options, &dir, dbg);
  if (s.ok()) result->reset(new FaultDirectory(std::move(dir), this, name));
  return s;
}

IOStatus FaultFileSystem::DeleteFile(const std::string& fname, const IOOptions& options, IODebugContext* dbg) {
  if (IOStatus off = PowerCheck(fname); !off.ok()) return off;
  IOStatus s = target()->DeleteFile(fname, options, dbg);
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    files_.erase(fname);
  }
  return s;
}

IOStatus FaultFileSystem::RenameFile(const std::string& src, const std::string& dest, const IOOptions& options,
                                     IODebugContext* dbg) {
  if (IOStatus off = PowerCheck(src); !off.ok()) return off;
  IOStatus s = target()->RenameFile(src, dest, options, dbg);
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    auto it = files_.find(src);
    if (it != files_.end()) {
      std::shared_ptr<FileState> state = std::move(it->second);
      files_.erase(it);
      state->name = dest;
      files_[dest] = std::move(state);
    } else {
      files_.erase(dest);
    }
  }
  return s;
}

IOStatus FaultFileSystem::LinkFile(const std::string& src, const std::string& dest, const IOOptions& options,
                                   IODebugContext* dbg) {
  if (IOStatus off = PowerCheck(src); !off.ok()) return off;
  IOStatus s = target()->LinkFile(src, dest, options, dbg);
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    auto it = files_.find(src);
    if (it != files_.end()) files_[dest] = it->second;
  }
  return s;
}

IOStatus FaultFileSystem::Truncate(const std::string& fname, size_t size, const IOOptions& options,
                                   IODebugContext* dbg) {
  if (IOStatus off = PowerCheck(fname); !off.ok()) return off;
  IOStatus s = target()->Truncate(fname, size, options, dbg);
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    auto it = files_.find(fname);
    if (it != files_.end()) {
      it->second->size = size;
      it->second->synced = std::min<uint64_t>(it->second->synced, size);
    }
  }
  return s;
}

namespace {

// RocksDB waits a second after a failed background job before it goes on
// (DBImpl::BackgroundCallCompaction), and closing the database waits with
// it. Faults make that common; a millisecond serves tests as well.
class QuickRetryClock : public rocksdb::SystemClockWrapper {
 public:
  QuickRetryClock() : SystemClockWrapper(rocksdb::SystemClock::Default()) {}
  static const char* kClassName() { return "HamletQuickRetryClock"; }
  const char* Name() const override { return kClassName(); }
  void SleepForMicroseconds(int micros) override { target_->SleepForMicroseconds(std::min(micros, 1000)); }
};

// Never destroyed, like SystemClock::Default(): the block cache that every
// store in the process shares keeps a pointer to the clock of a database
// that collected its statistics, after that database is gone.
const std::shared_ptr<rocksdb::SystemClock>& QuickRetry() {
  static const auto* clock = new std::shared_ptr<rocksdb::SystemClock>(std::make_shared<QuickRetryClock>());
  return *clock;
}

class QuickRetryEnv : public rocksdb::EnvWrapper {
 public:
  explicit QuickRetryEnv(std::unique_ptr<rocksdb::Env> target) : EnvWrapper(std::move(target)) {
    // An EnvWrapper would do its file I/O and keep time through adapters
    // around itself: use the fault file system directly, and the clock.
    file_system_ = this->target()->GetFileSystem();
    system_clock_ = QuickRetry();
  }
  static const char* kClassName() { return "HamletQuickRetryEnv"; }
  const char* Name() const override { return kClassName(); }
  void SleepForMicroseconds(int micros) override { system_clock_->SleepForMicroseconds(micros); }
};

}  // namespace

FaultEnv::FaultEnv()
    : fs_(std::make_shared<FaultFileSystem>()), env_(std::make_unique<QuickRetryEnv>(rocksdb::NewCompositeEnv(fs_))) {
  assert(env_->GetFileSystem().get() == fs_.get());
}

}  // namespace hamlet::testing
