#ifndef HAMLET_STORAGE_DEVICE_STORE_H_
#define HAMLET_STORAGE_DEVICE_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hamlet/v1/sync.pb.h"
#include "storage/storage.pb.h"

namespace rocksdb {
class WriteBatch;
}  // namespace rocksdb

namespace hamlet::storage {
namespace internal {
struct OpenedDb;
}  // namespace internal

struct OutboxItem {
  uint64_t seq = 0;  // Local order of the edit.
  hamlet::v1::Record change;
};

// A device's local database: its records as it sees them, the outbox of edits
// not yet acknowledged by the server, the pull cursor and the batch in flight.
// Every write is synced: an edit saved on a phone survives a battery pull.
//
// Key layout (docs/STORAGE.md):
//   default  "format" -> "1"; "device_id" -> UUID text; "cursor" -> v1 PullPosition;
//            "token" -> bearer token text; "role" -> decimal hamlet.v1.Role;
//            "outbox_next" -> be64; "pending" -> v1 PendingBatch; "clock" -> v1 Stamp;
//            "sent_next" -> be64; "reoffer_due" -> v1 ServerHistory;
//            "queued" -> QueuedBatches
//   records  record_id -> v1 Record
//   outbox   be64(seq) -> v1 OutboxEntry
//   rejected be64(seq) -> v1 RejectedEdit   (seq: the edit's outbox seq)
//   sent     be64(n)   -> v1 SentCall       (n: from "sent_next" in default)
//
// Not thread-safe: one sync client owns a store at a time (RocksDB's lock
// keeps a second process out).
class DeviceStore {
 public:
  // Opens the store in `dir`; a new store takes `new_device_id` as its id.
  // FAILED_PRECONDITION if another process has it open or it has a format this
  // code does not know.
  static absl::StatusOr<std::unique_ptr<DeviceStore>> Open(const std::string& dir, absl::string_view new_device_id);
  ~DeviceStore();

  const std::string& device_id() const { return device_id_; }

  // nullopt if the device has no record with that id.
  absl::StatusOr<std::optional<hamlet::v1::Record>> GetRecord(const std::string& id) const;
  // Every record, in id order.
  absl::StatusOr<std::vector<hamlet::v1::Record>> ListRecords() const;

  // Saves a local edit atomically: the record's new state, and the change at the
  // end of the outbox; also the device clock after the edit.
  absl::Status SaveLocalEdit(const hamlet::v1::Record& state, const hamlet::v1::Record& change,
                             const hamlet::v1::Stamp& clock);

  // Up to `max` outbox entries, oldest first.
  absl::StatusOr<std::vector<OutboxItem>> ReadOutbox(size_t max) const;
  // Every outbox entry up to sequence number `last`, oldest first.
  absl::StatusOr<std::vector<OutboxItem>> ReadOutboxThrough(uint64_t last) const;
  absl::StatusOr<size_t> OutboxSize() const;

  // The batch being pushed, or nullopt if none.
  absl::StatusOr<std::optional<PendingBatch>> GetPendingBatch() const;
  absl::Status SetPendingBatch(const PendingBatch& batch);
  // Batches fixed after the pending one (a bundle carries them), in order;
  // each holds the outbox entries after the one before it. Settling the
  // pending batch makes the first of them pending.
  absl::StatusOr<std::vector<PendingBatch>> GetQueuedBatches() const;
  // Sets the pending batch and the queue after it in one write.
  absl::Status SetBatches(const PendingBatch& pending, const std::vector<PendingBatch>& queued);
  // The server acknowledged the pending batch: drops it and its outbox
  // entries, except that those it set aside (keyed by their position in the
  // batch, with the server's reason) move to the rejected list.
  // `sent`, if given, is kept in the same write (RetainSent).
  absl::Status AckPendingBatch(const std::map<uint32_t, std::string>& set_aside = {}, const SentCall* sent = nullptr);

  // Acknowledged calls kept for a server restored from an older backup
  // (SentCall): kept with Retain (or AckPendingBatch), listed oldest first
  // with their keys, updated once offered again, and dropped by PruneSent
  // when acknowledged before `older_than_ms`, and then the oldest while all
  // of them weigh more than `max_bytes`.
  absl::Status RetainSent(const SentCall& sent);
  absl::StatusOr<std::vector<std::pair<uint64_t, SentCall>>> ListSent() const;
  absl::Status UpdateSent(uint64_t key, const SentCall& sent);
  absl::Status PruneSent(int64_t older_than_ms, uint64_t max_bytes);
  // The history of a server found restored, while kept calls remain to be
  // offered to it again; nullopt when none are due.
  absl::Status SetReofferDue(const std::optional<hamlet::v1::ServerHistory>& history);
  absl::StatusOr<std::optional<hamlet::v1::ServerHistory>> GetReofferDue() const;
  // The server refused the pending batch for good: moves its outbox entries to
  // the rejected list with `reason`, and drops the batch.
  absl::Status RejectPendingBatch(const std::string& reason);
  // Edits the server refused, oldest first.
  absl::StatusOr<std::vector<RejectedEdit>> ListRejected() const;

  // Where the device's pulls stand (scope and cursor); nullopt before the
  // first pull.
  absl::StatusOr<std::optional<PullPosition>> GetPullPosition() const;
  // The pull cursor for `scope`; empty before the first pull of that scope.
  // The store keeps one cursor: pulling another scope starts it over.
  absl::StatusOr<std::string> GetCursor(const std::string& scope) const;
  // Stores a pulled page's merged records and the cursor after it, atomically,
  // so an interrupted pull resumes after the last page saved.
  // Also saves the device clock, which observed the page's stamps.
  absl::Status SavePulledPage(const std::vector<hamlet::v1::Record>& states, const std::string& scope,
                              const std::string& next_cursor, const hamlet::v1::Stamp& clock);
  // Stores merged records and the device clock, leaving the cursor as it is.
  absl::Status SaveMergedRecords(const std::vector<hamlet::v1::Record>& states, const hamlet::v1::Stamp& clock);
  // Forgets the cursor (the server said it is no longer valid); keeps the
  // records and the outbox.
  absl::Status ResetCursor();

  // The bearer token an admin issued for this device, and the role it was
  // enrolled with; empty / ROLE_UNSPECIFIED before enrolment.
  absl::Status SetEnrolment(const std::string& token, hamlet::v1::Role role);
  absl::StatusOr<std::string> GetToken() const;
  absl::StatusOr<hamlet::v1::Role> GetRole() const;

  // Drops a record from the device (a sealed record once the server has it).
  absl::Status ForgetRecord(const std::string& id);
  // Rewrites the database files so that forgotten records are physically gone
  // (flush, then compaction: a deleted value otherwise lingers in the log and
  // older files until RocksDB gets to it).
  absl::Status Scrub();

  // The device clock persisted by the latest edit or pull (unset for a new store).
  absl::StatusOr<hamlet::v1::Stamp> GetClock() const;

 private:
  DeviceStore() = default;
  absl::StatusOr<std::optional<std::string>> GetMeta(const std::string& key) const;
  // Drops the pending batch and its outbox entries in one write; the entry at
  // position i goes to the rejected list if refusal(i) names a reason.
  absl::Status SettlePendingBatch(const std::function<const std::string*(uint32_t)>& refusal,
                                  const SentCall* sent = nullptr);
  // Adds `sent` to `batch` under the next key.
  absl::Status PutSent(const SentCall& sent, rocksdb::WriteBatch* batch);

  std::unique_ptr<internal::OpenedDb> db_;
  std::string device_id_;
};

}  // namespace hamlet::storage

#endif  // HAMLET_STORAGE_DEVICE_STORE_H_
