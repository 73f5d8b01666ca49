// Backups of a TownStore with RocksDB's BackupEngine, and restores from them
// (docs/STORAGE.md, "Backups").

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "google/protobuf/util/time_util.h"
#include "rocksdb/utilities/backup_engine.h"
#include "rocksdb/write_batch.h"
#include "storage/rocks.h"
#include "storage/town_store.h"
#include "sync/big_endian.h"
#include "sync/status_macros.h"

namespace hamlet::storage {

using internal::EncodeValue;
using internal::FromRocks;
using sync::PutBigEndian64;

namespace {

namespace fs = std::filesystem;

// The marker of a backup written by Hamlet before BackupEngine: a plain copy
// of a checkpoint. Such directories can still be restored.
constexpr char kLegacyMarker[] = "BACKUP_COMPLETE";

// What a backup says of itself (BackupEngine's app metadata), one "key value"
// per line; DO NOT CHANGE the keys: restores read them.
struct BackupMetadata {
  std::string server_id;
  uint64_t epoch = 0;
  uint64_t last_seq_at_start = 0;
  int64_t time_ms = 0;

  std::string Encode() const {
    return absl::StrCat("server_id ", server_id, "\nepoch ", epoch, "\nlast_seq_at_start ", last_seq_at_start,
                        "\ntime_ms ", time_ms, "\n");
  }
  // Unknown keys are skipped, missing ones left at zero.
  static BackupMetadata Decode(absl::string_view text) {
    BackupMetadata m;
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(line, absl::MaxSplits(' ', 1));
      if (kv.first == "server_id") m.server_id = std::string(kv.second);
      if (kv.first == "epoch" && !absl::SimpleAtoi(kv.second, &m.epoch)) m.epoch = 0;
      if (kv.first == "last_seq_at_start" && !absl::SimpleAtoi(kv.second, &m.last_seq_at_start)) {
        m.last_seq_at_start = 0;
      }
      if (kv.first == "time_ms" && !absl::SimpleAtoi(kv.second, &m.time_ms)) m.time_ms = 0;
    }
    return m;
  }
};

rocksdb::BackupEngineOptions EngineOptions(const std::string& dir) {
  rocksdb::BackupEngineOptions options(dir);
  options.share_table_files = true;          // Unchanged table files are copied once...
  options.share_files_with_checksum = true;  // ...and known by their checksum.
  options.sync = true;
  options.callback_trigger_interval_size = 1 << 20;
  return options;
}

// A backup's figures from BackupEngine's record of it.
BackupSummary SummaryOf(const rocksdb::BackupInfo& info) {
  BackupSummary summary;
  summary.backup_id = info.backup_id;
  summary.time_ms = BackupMetadata::Decode(info.app_metadata).time_ms;
  if (summary.time_ms == 0) summary.time_ms = info.timestamp * 1000;
  summary.bytes_total = info.size;
  summary.files_total = info.number_files;
  return summary;
}

// The data files of a backup directory (not BackupEngine's meta files), by
// path relative to it, with their sizes.
std::map<std::string, uint64_t> DataFiles(const std::string& dir) {
  std::map<std::string, uint64_t> files;
  std::error_code error;
  for (auto it = fs::recursive_directory_iterator(dir, error); !error && it != fs::recursive_directory_iterator();
       it.increment(error)) {
    const std::string relative = fs::relative(it->path(), dir, error).string();
    if (relative.rfind("meta", 0) == 0 || !it->is_regular_file(error)) continue;
    files[relative] = it->file_size(error);
  }
  return files;
}

uint64_t BytesUnder(const std::string& dir) {
  uint64_t bytes = 0;
  for (const auto& [path, size] : DataFiles(dir)) bytes += size;
  return bytes;
}

absl::Status BackupFailure(const rocksdb::IOStatus& s, absl::string_view what) {
  // A backup file missing, short or changed is damage to the backup, however
  // BackupEngine words it.
  if (s.IsNotFound() || s.IsCorruption() || s.IsInvalidArgument()) {
    return absl::DataLossError(absl::StrCat(what, ": ", s.ToString()));
  }
  return FromRocks(s, what);
}

// Copies the regular files of `from` into `to` (created), each synced, then
// syncs `to`. Progress after every MiB and every file.
absl::Status CopyFiles(const std::string& from, const std::string& to, const ProgressCallback& progress) {
  std::error_code error;
  std::vector<fs::path> files;
  CopyProgress p;
  for (const auto& entry : fs::directory_iterator(from, error)) {
    if (!entry.is_regular_file()) continue;
    files.push_back(entry.path());
    p.bytes_total += entry.file_size();
  }
  if (error) return absl::UnavailableError(absl::StrCat("listing ", from, ": ", error.message()));
  p.files_total = static_cast<uint32_t>(files.size());
  fs::create_directories(to, error);
  if (error) return absl::UnavailableError(absl::StrCat("creating ", to, ": ", error.message()));
  if (progress) progress(p);
  std::vector<char> buffer(1 << 20);
  for (const fs::path& file : files) {
    const std::string target = (fs::path(to) / file.filename()).string();
    const int in = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    const int out = ::open(target.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (in < 0 || out < 0) {
      if (in >= 0) ::close(in);
      if (out >= 0) ::close(out);
      return absl::UnavailableError(absl::StrCat("copying ", file.string(), " to ", target, ": ", strerror(errno)));
    }
    ssize_t n;
    while ((n = ::read(in, buffer.data(), buffer.size())) > 0) {
      if (::write(out, buffer.data(), static_cast<size_t>(n)) != n) {
        const int saved = errno;
        ::close(in);
        ::close(out);
        return saved == ENOSPC ? absl::ResourceExhaustedError(absl::StrCat("disk full writing ", target))
                               : absl::UnavailableError(absl::StrCat("writing ", target, ": ", strerror(saved)));
      }
      p.bytes_done += static_cast<uint64_t>(n);
      if (progress) progress(p);
    }
    const bool synced = n == 0 && ::fsync(out) == 0;
    ::close(in);
    ::close(out);
    if (!synced) return absl::UnavailableError(absl::StrCat("copying ", file.string(), ": ", strerror(errno)));
    ++p.files_done;
    if (progress) progress(p);
  }
  const int dir = ::open(to.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BackupSummary> TownStore::Backup(const std::string& dir, const ProgressCallback& progress) {
  std::error_code error;
  if (fs::exists(fs::path(dir) / kLegacyMarker, error) ||
      (fs::exists(dir, error) && !fs::is_empty(dir, error) && !fs::exists(fs::path(dir) / "meta", error))) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir, " holds something other than Hamlet backups; name a new directory or one with earlier backups"));
  }
  rocksdb::BackupEngine* raw = nullptr;
  HAMLET_RETURN_IF_ERROR(FromRocks(rocksdb::BackupEngine::Open(EngineOptions(dir), db_->db->GetEnv(), &raw),
                                   absl::StrCat("opening backup directory ", dir)));
  std::unique_ptr<rocksdb::BackupEngine> engine(raw);
  std::vector<rocksdb::BackupInfo> earlier;
  engine->GetBackupInfo(&earlier);
  for (const rocksdb::BackupInfo& info : earlier) {
    const std::string other = BackupMetadata::Decode(info.app_metadata).server_id;
    if (other != server_id_) {
      return absl::FailedPreconditionError(absl::StrCat(dir, " holds backups of server ", other, ", not of this one (",
                                                        server_id_, "); name another directory"));
    }
  }

  BackupMetadata metadata;
  metadata.server_id = server_id_;
  metadata.epoch = epoch_;
  metadata.last_seq_at_start = last_seq_.load();
  metadata.time_ms = (options_.clock != nullptr ? options_.clock : sync::SystemClock::Get())->NowMs();
  const std::map<std::string, uint64_t> before = DataFiles(dir);
  CopyProgress p;
  p.bytes_total = BytesUnder(db_->db->GetName());
  rocksdb::CreateBackupOptions create;
  // The memtables become table files first, which the next backup shares;
  // otherwise each backup would copy the log holding them again.
  create.flush_before_backup = true;
  create.progress_callback = [&] {
    p.bytes_done = std::min(p.bytes_done + (1 << 20), p.bytes_total);
    if (progress) progress(p);
  };
  if (progress) progress(p);
  rocksdb::BackupID id = 0;
  HAMLET_RETURN_IF_ERROR(FromRocks(engine->CreateNewBackupWithMetadata(create, db_->db.get(), metadata.Encode(), &id),
                                   absl::StrCat("backing up to ", dir)));
  rocksdb::BackupInfo info;
  HAMLET_RETURN_IF_ERROR(FromRocks(engine->GetBackupInfo(id, &info), "reading the new backup's record"));
  BackupSummary summary = SummaryOf(info);
  for (const auto& [path, size] : DataFiles(dir)) {
    if (before.count(path) != 0) continue;
    ++summary.files_copied;
    summary.bytes_copied += size;
  }
  if (progress) progress({summary.bytes_copied, summary.bytes_total, summary.files_copied, summary.files_total});
  return summary;
}

absl::StatusOr<size_t> TownStore::VerifyBackups(const std::string& dir,
                                                const std::function<void(const BackupCheck&)>& checked) {
  std::error_code error;
  if (!fs::exists(fs::path(dir) / "meta", error)) {
    return absl::NotFoundError(absl::StrCat(dir, " holds no Hamlet backup made with BackupEngine"));
  }
  rocksdb::BackupEngineReadOnly* raw = nullptr;
  HAMLET_RETURN_IF_ERROR(
      FromRocks(rocksdb::BackupEngineReadOnly::Open(EngineOptions(dir), rocksdb::Env::Default(), &raw),
                absl::StrCat("opening backup directory ", dir)));
  std::unique_ptr<rocksdb::BackupEngineReadOnly> engine(raw);
  size_t checked_count = 0;
  std::vector<rocksdb::BackupID> corrupt;
  engine->GetCorruptedBackups(&corrupt);
  for (rocksdb::BackupID id : corrupt) {
    BackupCheck check;
    check.backup.backup_id = id;
    check.status = absl::DataLossError(absl::StrCat("backup ", id, " is damaged: its record cannot be read"));
    if (checked) checked(check);
    ++checked_count;
  }
  std::vector<rocksdb::BackupInfo> infos;
  engine->GetBackupInfo(&infos);
  for (const rocksdb::BackupInfo& info : infos) {
    BackupCheck check;
    check.backup = SummaryOf(info);
    check.status = BackupFailure(engine->VerifyBackup(info.backup_id, /*verify_with_checksum=*/true),
                                 absl::StrCat("backup ", info.backup_id));
    if (checked) checked(check);
    ++checked_count;
  }
  if (checked_count == 0) return absl::NotFoundError(absl::StrCat(dir, " holds no backup"));
  return checked_count;
}

absl::Status TownStore::Restore(const std::string& backup_dir, uint32_t backup_id, const std::string& data_dir,
                                const TownStoreOptions& options, const ProgressCallback& progress) {
  std::error_code error;
  if (fs::exists(data_dir, error) && !fs::is_empty(data_dir, error)) {
    return absl::FailedPreconditionError(absl::StrCat("data dir ", data_dir, " is not empty; restore into a new one"));
  }
  // When the backup was taken (0: unknown, for old backups that did not say).
  int64_t backup_ms = 0;
  if (fs::exists(fs::path(backup_dir) / kLegacyMarker, error)) {
    if (backup_id != 0) {
      return absl::NotFoundError(
          absl::StrCat(backup_dir, " holds one backup, of an older Hamlet; restore it without an id"));
    }
    fs::remove(data_dir, error);
    HAMLET_RETURN_IF_ERROR(CopyFiles(backup_dir, data_dir, progress));
    std::ifstream marker(fs::path(data_dir) / kLegacyMarker);
    const std::string text((std::istreambuf_iterator<char>(marker)), std::istreambuf_iterator<char>());
    backup_ms = BackupMetadata::Decode(text).time_ms;
    fs::remove(fs::path(data_dir) / kLegacyMarker, error);
  } else {
    if (!fs::exists(fs::path(backup_dir) / "meta", error)) {
      return absl::FailedPreconditionError(absl::StrCat(backup_dir, " holds no complete Hamlet backup"));
    }
    rocksdb::Env* env = options.env != nullptr ? options.env : rocksdb::Env::Default();
    rocksdb::BackupEngineReadOnly* raw = nullptr;
    HAMLET_RETURN_IF_ERROR(FromRocks(rocksdb::BackupEngineReadOnly::Open(EngineOptions(backup_dir), env, &raw),
                                     absl::StrCat("opening backup directory ", backup_dir)));
    std::unique_ptr<rocksdb::BackupEngineReadOnly> engine(raw);
    std::vector<rocksdb::BackupInfo> infos;
    engine->GetBackupInfo(&infos);
    if (infos.empty()) return absl::FailedPreconditionError(absl::StrCat(backup_dir, " holds no complete backup"));
    const rocksdb::BackupInfo* chosen = &infos.back();  // Listed oldest first.
    if (backup_id != 0) {
      chosen = nullptr;
      for (const rocksdb::BackupInfo& info : infos) chosen = info.backup_id == backup_id ? &info : chosen;
      if (chosen == nullptr) return absl::NotFoundError(absl::StrCat(backup_dir, " holds no backup ", backup_id));
    }
    backup_ms = SummaryOf(*chosen).time_ms;
    // BackupEngine says nothing while it copies: the data dir's size does.
    absl::Notification restored;
    std::thread reporter([&, total = chosen->size] {
      do {
        if (progress) progress({std::min(BytesUnder(data_dir), total), total, 0, chosen->number_files});
      } while (!restored.WaitForNotificationWithTimeout(absl::Milliseconds(250)));
    });
    const rocksdb::IOStatus copied = engine->RestoreDBFromBackup(chosen->backup_id, data_dir, data_dir);
    restored.Notify();
    reporter.join();
    HAMLET_RETURN_IF_ERROR(BackupFailure(copied, absl::StrCat("restoring backup ", chosen->backup_id)));
    if (progress) progress({chosen->size, chosen->size, chosen->number_files, chosen->number_files});
  }
  return StartNewEpoch(data_dir, options, backup_ms);
}

absl::Status TownStore::StartNewEpoch(const std::string& data_dir, const TownStoreOptions& options, int64_t backup_ms) {
  HAMLET_ASSIGN_OR_RETURN(std::unique_ptr<TownStore> store, Open(data_dir, options));
  // A new epoch: cursors handed out after the backup point into a history
  // this store no longer has. The restore time makes it one no earlier restore
  // of the same backup had.
  const int64_t now_ms = (options.clock != nullptr ? options.clock : sync::SystemClock::Get())->NowMs();
  const uint64_t epoch = std::max(store->epoch_ + 1, static_cast<uint64_t>(now_ms));
  // What the new epoch holds of the ones before it: the backed-up epoch
  // through the last change in the backup, and each earlier one through no
  // more than that.
  hamlet::v1::ServerHistory history = store->history_;
  history.clear_server_id();  // Open sets these from their own keys.
  history.clear_epoch();
  for (hamlet::v1::EpochHeld& earlier : *history.mutable_earlier()) {
    earlier.set_through_seq(std::min(earlier.through_seq(), store->last_seq_.load()));
  }
  hamlet::v1::EpochHeld& backed_up = *history.add_earlier();
  backed_up.set_epoch(store->epoch_);
  backed_up.set_through_seq(store->last_seq_.load());
  *history.mutable_restore_time() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(now_ms);
  if (backup_ms > 0) {
    *history.mutable_backup_time() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(backup_ms);
  } else {
    history.clear_backup_time();
  }
  std::string epoch_key;
  PutBigEndian64(&epoch_key, epoch);
  rocksdb::WriteBatch batch;
  batch.Put(store->meta_, "epoch", epoch_key);
  batch.Put(store->meta_, "history", EncodeValue(history));
  rocksdb::WriteOptions write;
  write.sync = true;
  HAMLET_RETURN_IF_ERROR(FromRocks(store->db_->db->Write(write, &batch), "moving to a new epoch"));
  return absl::OkStatus();
}

}  // namespace hamlet::storage
