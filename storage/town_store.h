#ifndef HAMLET_STORAGE_TOWN_STORE_H_
#define HAMLET_STORAGE_TOWN_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "hamlet/v1/admin.pb.h"
#include "hamlet/v1/sync.pb.h"
#include "storage/sealing.h"
#include "storage/storage.pb.h"
#include "sync/access.h"
#include "sync/clock.h"
#include "sync/report.h"

namespace rocksdb {
class ColumnFamilyHandle;
class Env;
class WriteBatch;
}  // namespace rocksdb

namespace hamlet::storage {
namespace internal {
struct OpenedDb;
}  // namespace internal

struct TownStoreOptions {
  // Sync the write-ahead log before CommitPush returns. Default true: a push is
  // acknowledged only once it would survive a power cut. False only for tests
  // that measure what syncing costs.
  bool sync_writes = true;
  // Seals sealed records (informant identities, and any record with
  // SENSITIVITY_SEALED) at rest. Without one the store refuses to write them
  // (FAILED_PRECONDITION). Default none.
  std::shared_ptr<const Sealer> sealer;
  // The environment RocksDB does its file I/O through. Default (null):
  // rocksdb::Env::Default(). Set by tests that inject faults
  // (tests/support/fault_fs.h). Not owned; must outlive the store, and its
  // SystemClock must outlive the process: the block cache that every store
  // shares keeps a pointer to the clock of a store that collected its
  // statistics (tests/support/fault_fs.cc, QuickRetry).
  rocksdb::Env* env = nullptr;
  // Wall-clock time of backups and restores. Default (null):
  // sync::SystemClock::Get(). Not owned; must outlive the store.
  const sync::PhysicalClock* clock = nullptr;
};

// Which part of the change index to read.
class ChangeScope {
 public:
  // Every record of the server.
  static ChangeScope WholeServer() { return ChangeScope({}, true); }
  // One commune's records (its own and its villages'), plus the records above
  // commune level (admin units, town teams) that every commune needs.
  static ChangeScope Commune(std::string code) { return ChangeScope({std::move(code), ""}, false); }
  // Only the records above commune level.
  static ChangeScope AboveCommune() { return ChangeScope({""}, false); }

  bool whole_server() const { return whole_server_; }
  // Commune buckets to merge; "" is the bucket of records above commune level.
  const std::vector<std::string>& buckets() const { return buckets_; }

 private:
  ChangeScope(std::vector<std::string> buckets, bool whole) : buckets_(std::move(buckets)), whole_server_(whole) {}
  std::vector<std::string> buckets_;
  bool whole_server_;
};

// One record written by a push.
struct RecordWrite {
  // The merged state to store. CommitPush sets its server_seq.
  hamlet::v1::Record state;
  // The commune bucket of the record's unit; "" above commune level.
  std::string commune;
  // The stored state's server_seq before this write; 0 for a new record.
  uint64_t previous_seq = 0;
  // The stored state before this write (empty for a new record), whose report
  // tallies the write replaces.
  hamlet::v1::Record previous;
};

// Everything one push changes, written as one atomic batch.
struct PushCommit {
  std::string device_id;
  std::string batch_id;
  std::vector<RecordWrite> records;
  DeviceState device;
  // The server's hybrid clock after the push, so a restart never issues a
  // smaller stamp.
  hamlet::v1::Stamp clock;
  // Audit entries written with the push (their seq is assigned on commit).
  std::vector<hamlet::v1::AuditEntry> audit;
};

class TownStore;

// The commits of one group (TownStore::Submit) staged into one WriteBatch, and
// the store as they leave it: a read through the group sees what the commits
// before it in the group staged, else what is stored. Lives on the commit
// thread, for the `stage` functions of one group.
class CommitGroup {
 public:
  ~CommitGroup();
  CommitGroup(const CommitGroup&) = delete;
  CommitGroup& operator=(const CommitGroup&) = delete;

  absl::StatusOr<std::optional<hamlet::v1::Record>> GetRecord(const std::string& id) const;
  absl::StatusOr<std::optional<BatchReceipt>> GetBatchReceipt(const std::string& device_id,
                                                              const std::string& batch_id) const;
  absl::StatusOr<std::optional<DeviceState>> GetDevice(const std::string& device_id) const;
  // Stages a commit: its records (each getting the next sequence number, its
  // old index entries removed so that the index holds each record once), the
  // receipt `make_receipt` makes from the last sequence number, the device
  // state, the audit entries and the clock. Nothing is staged on error.
  // Returns the last sequence number assigned (the group's latest if no record).
  // REQUIRES: each record id appears at most once in `commit.records`, and
  // `commune`, `previous_seq` and `previous` are what the record was indexed
  // under and held, as read through this group. A record never changes unit;
  // if a village moved to another commune, its records would keep an index
  // entry in the old bucket until rewritten.
  absl::StatusOr<uint64_t> Stage(PushCommit commit, const std::function<BatchReceipt(uint64_t last_seq)>& make_receipt);

 private:
  friend class TownStore;
  explicit CommitGroup(TownStore* store);

  TownStore* const store_;
  uint64_t seq_;
  std::unique_ptr<rocksdb::WriteBatch> batch_;
  // What the staged commits wrote, for reads through the group. Every
  // commit stages a receipt: none means nothing to write.
  std::map<std::string, hamlet::v1::Record> records_;
  std::map<std::string, BatchReceipt> receipts_;
  std::map<std::string, DeviceState> devices_;
  // Added to the stored counts and tallies when the group is written.
  std::map<std::string, int64_t> count_delta_;
  sync::Tallies tally_delta_;
  // Given their sequence numbers when the group is written.
  std::vector<hamlet::v1::AuditEntry> audit_;
  std::optional<hamlet::v1::Stamp> clock_;
};

// Whether ReadChanges counts the changes left after its page (costs one key
// read per change left).
enum class CountRemaining { kNo, kYes };

// One change as a pull sends it: the change index entry, with what the
// access check reads of its record, and the record's bytes as stored.
struct StoredChange {
  uint64_t seq = 0;
  std::string record_id;
  sync::AccessFacts facts;
  // The device that wrote every value of the record (sync::SoleWriter), or "".
  std::string sole_writer;
  // True for a sealed record (an informant identity, or SENSITIVITY_SEALED):
  // its index entry holds no facts (`facts` and `sole_writer` are empty), and
  // `record` is its opened plaintext.
  bool sealed = false;
  // The record's size with whole stamps, as its index entry says.
  uint64_t whole_size = 0;
  // The record as a serialized hamlet.v1.Record with lean stamps
  // (sync::LeanStamps(record, "")), as the store keeps it: what a pull that
  // asks for lean stamps sends. ParseStoredRecord reads it back.
  std::string record;
};

struct StoredPage {
  // The changes the read wanted, in seq order.
  std::vector<StoredChange> changes;
  // As in ChangePage.
  uint64_t through_seq = 0;
  uint64_t remaining = 0;
};

struct ChangePage {
  // Records at their latest state, in order of server_seq.
  std::vector<hamlet::v1::Record> records;
  // Every change in scope with a sequence number up to this one is in this page
  // or was before `after_seq`.
  uint64_t through_seq = 0;
  // Changes in scope after through_seq, counted in the same snapshot (0 when
  // not counted).
  uint64_t remaining = 0;
};

// How far a backup or restore has got. While a backup runs, files are not
// counted and bytes_total is the size of the store; the last report has the
// backup's own figures (BackupSummary).
struct CopyProgress {
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  uint32_t files_done = 0;
  uint32_t files_total = 0;
};
using ProgressCallback = std::function<void(const CopyProgress&)>;

// One backup in a backup directory.
struct BackupSummary {
  uint32_t backup_id = 0;  // 1, 2, ... in the order they were made.
  int64_t time_ms = 0;     // When it was started.
  // The backup's files: what a restore reads.
  uint64_t bytes_total = 0;
  uint32_t files_total = 0;
  // Of those, what making it copied; the rest it shares with the earlier
  // backups in the same directory.
  uint64_t bytes_copied = 0;
  uint32_t files_copied = 0;
};

// One backup checked against the checksums recorded when it was made.
struct BackupCheck {
  BackupSummary backup;  // bytes_copied and files_copied are 0.
  // OK, or DATA_LOSS naming what is missing, truncated or changed.
  absl::Status status;
};

// The town server's database: current records, the change index, device state,
// batch receipts and server metadata. docs/STORAGE.md gives the key layout.
//
// Thread-safe. Reads see a consistent snapshot of durable writes; commits go
// through one queue (Submit), so that a commit that reads, merges and writes
// sees every commit before it.
class TownStore {
 public:
  // Opens the store in `dir`, creating it (with a new server id, epoch 1) if
  // missing. FAILED_PRECONDITION if another process has it open or it was
  // written by an unknown format version; DATA_LOSS if it is damaged.
  static absl::StatusOr<std::unique_ptr<TownStore>> Open(const std::string& dir, const TownStoreOptions& options);
  ~TownStore();

  // Fixed when the data dir is created.
  const std::string& server_id() const { return server_id_; }
  // Changes when history is rewound (a restore), which invalidates cursors.
  uint64_t epoch() const { return epoch_; }
  // 32 random bytes made when the store is first opened by a hamletd that
  // keeps one, kept in backups: the key that authenticates the cursors this
  // server issues.
  const std::string& cursor_key() const { return cursor_key_; }
  // What this store's history holds of earlier epochs (after a restore from
  // a backup), with its server id and epoch.
  const hamlet::v1::ServerHistory& history() const { return history_; }
  // Sequence number of the latest committed change; 0 for an empty store.
  uint64_t last_seq() const { return last_seq_.load(); }
  // The server clock persisted by the latest commit (unset for a new store).
  const hamlet::v1::Stamp& persisted_clock() const { return persisted_clock_; }

  // The record's current state, or nullopt if no record has that id.
  absl::StatusOr<std::optional<hamlet::v1::Record>> GetRecord(const std::string& id) const;

  // The receipt of an applied batch, or nullopt if the device never pushed it.
  absl::StatusOr<std::optional<BatchReceipt>> GetBatchReceipt(const std::string& device_id,
                                                              const std::string& batch_id) const;

  absl::StatusOr<std::optional<DeviceState>> GetDevice(const std::string& device_id) const;

  // Commits go through one queue, served by one commit thread (in the style
  // of LevelDB's DBImpl::Write): the thread takes every commit waiting, runs
  // each one's `stage` in order over one CommitGroup (each sees what those
  // before it staged), writes the group as one WriteBatch synced to disk, and
  // only then calls each one's `done`, in order. So a change is visible to
  // reads exactly when it is durable, and commits arriving together share one
  // sync.
  //
  // `stage` reads what it needs through the group and stages its commit
  // (CommitGroup::Stage), or returns an error having staged nothing. `done`
  // gets OK, the error `stage` returned, or the group's write error (then
  // nothing of the group was written). Both run on the commit thread: `done`
  // must be quick and must not wait for another commit. After a failed log
  // write or sync (UNAVAILABLE, or RESOURCE_EXHAUSTED for a full disk) every
  // commit is refused with that error until the store is reopened.
  using StageFn = std::function<absl::Status(CommitGroup& group)>;
  using DoneFn = std::function<void(const absl::Status& status)>;
  void Submit(StageFn stage, DoneFn done);
  // Submit, then wait for `done`'s status.
  absl::Status Commit(StageFn stage);
  // Commit of one PushCommit (CommitGroup::Stage). Returns the last sequence
  // number assigned.
  absl::StatusOr<uint64_t> CommitPush(PushCommit commit,
                                      const std::function<BatchReceipt(uint64_t last_seq)>& make_receipt);
  // Commit groups written since the store was opened: each one WAL sync.
  uint64_t wal_syncs() const { return wal_syncs_.load(); }
  // OK, or the error of a failed log write or WAL sync (UNAVAILABLE, or
  // RESOURCE_EXHAUSTED for a full disk), after which the store takes no more
  // commits and must be reopened.
  absl::Status store_error() const;

  // Saves an enrolment (new, renewed or revoked) with its audit entry, in one
  // synced write. With a sealer, the bundle secret is stored sealed; listed
  // enrolments have it open again. Reseal reseals it under the current key.
  absl::Status PutEnrolment(const Enrolment& enrolment, hamlet::v1::AuditEntry audit);
  // Every enrolment, in device id order.
  absl::StatusOr<std::vector<Enrolment>> ListEnrolments() const;

  // Replication to the upstream server: the saved state (empty if none was
  // ever saved), and a synced save of it.
  absl::StatusOr<ReplicationState> GetReplicationState() const;
  absl::Status PutReplicationState(const ReplicationState& state);
  // Records in the change index durably changed after `after_seq` (from the
  // index's block counts, as ReadChanges counts what remains).
  absl::StatusOr<uint64_t> CountChangesAfter(uint64_t after_seq) const;

  // Appends to the audit log (synced); returns the entry's sequence number.
  absl::StatusOr<uint64_t> AppendAudit(hamlet::v1::AuditEntry entry);
  // Up to `max` audit entries after `after_seq`, oldest first.
  absl::StatusOr<std::vector<hamlet::v1::AuditEntry>> ListAudit(uint64_t after_seq, size_t max) const;

  // Up to `max` records with an open conflict, in id order after `after_id`,
  // in commune `commune` ("" for all).
  absl::StatusOr<std::vector<hamlet::v1::Record>> ListConflicted(const std::string& commune,
                                                                 const std::string& after_id, size_t max) const;
  // How many records have an open conflict.
  absl::StatusOr<uint64_t> CountConflicted() const;
  // Records held, tombstones included: exactly the durable entries of the
  // change index (one per record), from its block counts.
  absl::StatusOr<uint64_t> CountRecords() const { return CountChangesAfter(0); }

  // Adds a backup of the store to `dir` (created if missing), with RocksDB's
  // BackupEngine: the memtables are flushed, then each file the store needs
  // is copied with its checksum, unless an earlier backup in `dir` holds it
  // already, so a second backup of a store that changed little copies
  // little. `progress` is told after every MiB copied. Pushes go on
  // meanwhile; the backup holds the store as of its start. Sealed records
  // stay sealed; the key is not in the backup. FAILED_PRECONDITION if `dir`
  // holds something else than Hamlet backups (or a backup of another
  // server); UNAVAILABLE/RESOURCE_EXHAUSTED on I/O.
  absl::StatusOr<BackupSummary> Backup(const std::string& dir, const ProgressCallback& progress);

  // Checks every backup in `dir`: each file there, its size and its
  // checksum, against what was recorded when it was made; `checked` is told
  // of each backup as it is done (those whose record cannot be read first,
  // then the rest from the oldest). Reads every byte: slow on a large store.
  // Returns how many were checked; NOT_FOUND if `dir` holds no backup.
  static absl::StatusOr<size_t> VerifyBackups(const std::string& dir,
                                              const std::function<void(const BackupCheck&)>& checked);

  // Makes `data_dir` (which must not exist, or be empty) the store of backup
  // `backup_id` in `backup_dir` (0: the latest), then moves it to a new epoch,
  // so that every cursor issued before the restore is refused and devices
  // pull again from zero. A directory written by a Hamlet before BackupEngine
  // (a copy with a BACKUP_COMPLETE marker) restores too. FAILED_PRECONDITION
  // for a directory with no complete backup or a non-empty data_dir;
  // NOT_FOUND for a backup id it does not hold; DATA_LOSS for a damaged backup.
  static absl::Status Restore(const std::string& backup_dir, uint32_t backup_id, const std::string& data_dir,
                              const TownStoreOptions& options, const ProgressCallback& progress);

  // Report tallies (sync/report.h) of `units`, summed over months
  // from..to (YYYYMM, inclusive), by unit and metric. Reads only the tallies.
  absl::StatusOr<std::map<std::string, std::map<std::string, int64_t>>> SumTallies(
      const std::vector<std::string>& units, int32_t from_month, int32_t to_month) const;

  // Seals again, under the current key, every sealed record sealed under an
  // older one (key rotation), and every enrolment's bundle secret sealed
  // under an older key or kept in the clear. Returns how many values were
  // rewritten.
  absl::StatusOr<uint64_t> Reseal();

  // Up to `max_records` records changed after `after_seq` in `scope`, stopping
  // once their encoded size (with whole stamps) reaches `max_bytes` (a page
  // always holds at least one record if any remain).
  absl::StatusOr<ChangePage> ReadChanges(const ChangeScope& scope, uint64_t after_seq, size_t max_records,
                                         size_t max_bytes, CountRemaining count) const;

  // ReadChanges for a pull that sends records as they are stored. `wanted`
  // sees each change's index entry (its `record` still empty); only the
  // records of the changes it wants are read and returned. Every change read
  // counts toward `max_records`, and toward `max_bytes` with its index
  // entry's size, or its record's whole size if wanted: so a page reads at
  // most that many index entries, and one that passes over many unwanted
  // changes ends as soon as their entries fill its bytes (returning nothing,
  // but passing them).
  using WantedFn = std::function<bool(const StoredChange& change)>;
  absl::StatusOr<StoredPage> ReadStoredChanges(const ChangeScope& scope, uint64_t after_seq, size_t max_records,
                                               size_t max_bytes, CountRemaining count, const WantedFn& wanted) const;

  // The record of a StoredChange, with its stamps filled in (whole, as
  // ReadChanges returns them). DATA_LOSS if the bytes do not parse.
  static absl::Status ParseStoredRecord(const StoredChange& change, hamlet::v1::Record* record);

 private:
  friend class CommitGroup;
  TownStore() = default;
  // Open, without starting the commit thread.
  static absl::StatusOr<std::unique_ptr<TownStore>> Load(const std::string& dir, const TownStoreOptions& options);
  // Opens a restored store and moves it to a new epoch, recording in its
  // history the backup's epoch and last seq, and `backup_ms` (0: unknown).
  static absl::Status StartNewEpoch(const std::string& data_dir, const TownStoreOptions& options, int64_t backup_ms);
  // A record as stored: with lean stamps, sealed if it must be. And back,
  // with its stamps filled in.
  absl::StatusOr<std::string> EncodeRecord(const hamlet::v1::Record& record) const;
  absl::Status DecodeRecord(absl::string_view value, const std::string& id, hamlet::v1::Record* record) const;
  // Turns a stored record value into the serialized record, opening it if it
  // is encrypted (and saying so in `encrypted`).
  absl::Status OpenRecordValue(std::string* value, const std::string& id, bool* encrypted) const;
  // Rewrites a store of format 1 as format 2: records with lean stamps, and
  // change index entries that carry their records' access facts.
  // REQUIRES: nothing else uses the store yet.
  absl::Status MigrateFromFormat1();
  // An enrolment as stored: its bundle secret sealed if there is a sealer;
  // and back.
  absl::StatusOr<Enrolment> SealedEnrolment(Enrolment enrolment) const;
  absl::Status OpenEnrolment(Enrolment* enrolment) const;
  // Recomputes every tally from the records (for a store written before
  // tallies existed). REQUIRES: nothing else uses the store yet.
  absl::Status RebuildTallies();
  // Recounts the change index by blocks (for a store written before the
  // counts existed). REQUIRES: nothing else uses the store yet.
  absl::Status RebuildIndexCounts();

  std::unique_ptr<internal::OpenedDb> db_;
  rocksdb::ColumnFamilyHandle* meta_ = nullptr;
  rocksdb::ColumnFamilyHandle* records_ = nullptr;
  rocksdb::ColumnFamilyHandle* changes_ = nullptr;
  rocksdb::ColumnFamilyHandle* commune_changes_ = nullptr;
  rocksdb::ColumnFamilyHandle* devices_ = nullptr;
  rocksdb::ColumnFamilyHandle* batches_ = nullptr;
  rocksdb::ColumnFamilyHandle* enrolments_ = nullptr;
  rocksdb::ColumnFamilyHandle* audit_ = nullptr;
  rocksdb::ColumnFamilyHandle* conflicted_ = nullptr;
  rocksdb::ColumnFamilyHandle* tallies_ = nullptr;
  rocksdb::ColumnFamilyHandle* index_counts_ = nullptr;
  std::atomic<uint64_t> last_audit_seq_{0};
  absl::Mutex audit_mu_;
  TownStoreOptions options_;

  std::string server_id_;
  uint64_t epoch_ = 0;
  std::string cursor_key_;
  hamlet::v1::ServerHistory history_;
  hamlet::v1::Stamp persisted_clock_;
  // Held while a group is staged and written (and by Reseal): assigning
  // sequence numbers, the WriteBatch, last_seq.
  absl::Mutex commit_mu_;
  std::atomic<uint64_t> last_seq_{0};

  // The commit queue and its thread (Submit).
  struct Pending {
    StageFn stage;
    DoneFn done;
  };
  void RunCommits();
  // Stages the first of `pending` into one group, as many as fit in it, and
  // writes it; calls the `done` of each staged one. Returns how many.
  size_t CommitGroupOf(std::vector<Pending>& pending);
  // Writes a group: its staged batch, with the counts and tallies it changes,
  // the audit entries, last_seq and the clock, in one synced write.
  absl::Status WriteGroup(CommitGroup& group) ABSL_EXCLUSIVE_LOCKS_REQUIRED(commit_mu_);
  mutable absl::Mutex queue_mu_;
  std::vector<Pending> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  absl::Status store_error_ ABSL_GUARDED_BY(queue_mu_);
  std::atomic<uint64_t> wal_syncs_{0};
  std::thread committer_;
};

}  // namespace hamlet::storage

#endif  // HAMLET_STORAGE_TOWN_STORE_H_
