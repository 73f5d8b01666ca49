#ifndef HAMLET_CLIENT_DEVICE_H_
#define HAMLET_CLIENT_DEVICE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/protocol.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "storage/device_store.h"
#include "sync/clock.h"
#include "sync/merge.h"

namespace hamlet::field {

// What a phone does, for tests, load tools and the upstream replicator: a local
// store of records, an outbox of edits made offline, and sync with a server.
//
// Edits never need a server. Sync pushes the outbox in batches whose ids are
// saved before sending, so a retry (after a lost answer or a crash) resends the
// same batch and the server applies it once; then it pulls pages up to the
// newest cursor, saving each page with its cursor so an interrupted pull
// resumes where it stopped. A pulled record never overwrites a field the device
// still has an unsynced edit for.
//
// Not thread-safe.
class FieldDevice {
 public:
  // Opens (or creates, with a new device id) the device store in `dir`.
  // `clock` must outlive the device.
  static absl::StatusOr<std::unique_ptr<FieldDevice>> Open(const std::string& dir, const sync::PhysicalClock* clock);

  const std::string& device_id() const { return store_->device_id(); }

  // The role the device's user acts in, for the lifecycle checks made before
  // an edit is saved. Default: member.
  void set_role(hamlet::v1::Role role) { role_ = role; }
  storage::DeviceStore& store() { return *store_; }

  // Creates a record. `draft` carries unit_code, author and a body; the id is
  // generated if empty; create_time is set to now. `fields` are the body fields
  // the edit sets (fields set in the body are always included).
  absl::StatusOr<hamlet::v1::Record> Create(hamlet::v1::Record draft, const sync::FieldNumbers& fields = {});

  // Sets `fields` of record `id` to their values in `body` (a message of the
  // record's body type; a listed field absent from it is cleared; a set field
  // is the whole new set). See sync::BuildChange. FAILED_PRECONDITION for an
  // illegal lifecycle move.
  // NOT_FOUND if the device has no such record; INVALID_ARGUMENT if `body` is of
  // another type or a field number is unknown.
  absl::StatusOr<hamlet::v1::Record> Edit(const std::string& id, const google::protobuf::Message& body,
                                          const sync::FieldNumbers& fields);

  // Marks record `id` deleted. NOT_FOUND if the device has no such record.
  absl::Status Delete(const std::string& id);

  // Where a sync stands, for a progress display.
  struct SyncProgress {
    enum class Phase { kPush, kPull };
    Phase phase = Phase::kPush;
    // Push: changes the server has of those in the outbox when the push
    // began. Pull: records pulled, and that plus what the server says remains.
    uint64_t records_done = 0;
    uint64_t records_total = 0;
    // Bytes moved in this phase, as serialized (gRPC may compress them on the
    // wire), and the phase's total: exact for a push, estimated for a pull
    // from the records' average size so far.
    uint64_t bytes_done = 0;
    uint64_t bytes_total = 0;
    // The rate the link has shown (LinkPace), bytes a second; 0 before the first call.
    double bytes_per_second = 0;
    absl::Duration elapsed;
    // Estimated time to the end of the phase; InfiniteDuration() if unknown.
    absl::Duration left = absl::InfiniteDuration();
  };
  struct SyncOptions {
    // Commune code to pull, or "" for everything the server lets this device see.
    std::string scope_unit_code;
    // Most changes in one push and records in one pull page; the bytes of
    // each call are set by `pace`.
    int batch_records = 200;
    int page_size = 500;
    // How calls are sized in bytes and given deadlines (LinkPace).
    LinkPace::Options pace;
    // Attempts and backoff of each call (and the deadline of unpaced calls).
    RetryPolicy retry;
    std::string app_version = "hamlet-field/0.1";
    // Told when each phase starts and after each call of it.
    std::function<void(const SyncProgress&)> on_progress;
    // How long acknowledged calls are kept, and how many bytes of them at
    // most, to be offered again to a server restored from an older backup.
    absl::Duration keep_sent = absl::Hours(24 * 30);
    uint64_t keep_sent_bytes = 64 << 20;
  };
  struct SyncReport {
    uint64_t batches_pushed = 0;
    uint64_t records_pushed = 0;
    uint64_t records_pulled = 0;
    // Batches the server refused for good; their edits are set aside in the
    // store's rejected list, not lost.
    uint64_t batches_rejected = 0;
    // Single changes the server refused while applying the rest of their
    // batch; also in the rejected list, with the server's reason.
    uint64_t changes_set_aside = 0;
    bool cursor_reset = false;
    // After the server was restored from a backup: kept calls it did not
    // hold, offered again and acknowledged; and those it refused for good.
    uint64_t calls_reoffered = 0;
    uint64_t reoffers_refused = 0;
  };
  // Settles an open conflict on the device's copy of record `record_id`:
  // `value` (a body of the record's type) holds the lifecycle field `field` and
  // the fields written with it. Needs a role with authority (sync/roles.h).
  // Returns the server's record after the resolution; the device's own copy
  // follows on its next pull.
  absl::StatusOr<hamlet::v1::Record> ResolveConflict(hamlet::v1::SyncService::StubInterface& stub,
                                                     const std::string& record_id, uint32_t field,
                                                     const google::protobuf::Message& value,
                                                     const std::string& resolver, const SyncOptions& options);

  // Pushes the whole outbox, then pulls until caught up. Returns the last
  // error if a call still fails after its attempts; what was done before it
  // stays done.
  absl::StatusOr<SyncReport> Sync(hamlet::v1::SyncService::StubInterface& stub, const SyncOptions& options);

  // Sync with no link: bundles carried by hand (docs/PROTOCOL.md, "Bundles").
  struct BundleReport {
    uint64_t batches = 0;
    // Export: changes written.
    uint64_t changes = 0;
    // Import: records the bundle held.
    uint64_t records = 0;
    uint64_t bytes = 0;
    // Import: the pull cursor moved to the bundle's end (else it was kept:
    // the device had pulled past the bundle's start since it was written).
    bool cursor_moved = false;
  };
  // Writes the whole outbox, as the batches Sync would push, into a sealed
  // bundle at `path` (mode 0600, replaced whole). The batches' ids are fixed
  // first, so that the same batches pushed online later are answered from
  // the server's receipts; the outbox keeps them until a push is
  // acknowledged. FAILED_PRECONDITION if the device is not enrolled or its
  // outbox is empty.
  absl::StatusOr<BundleReport> ExportBundle(const std::string& path, const SyncOptions& options);
  // Applies a bundle the server wrote for this device (hamlet-admin export)
  // as a pull would: its records merged, then its cursor, so the next sync
  // resumes after it. INVALID_ARGUMENT if `path` is not a bundle for a device;
  // FAILED_PRECONDITION if it is for another device; DATA_LOSS if it does not
  // open with this device's enrolment. Importing it again changes nothing.
  absl::StatusOr<BundleReport> ImportBundle(const std::string& path);

 private:
  FieldDevice(std::unique_ptr<storage::DeviceStore> store, const sync::PhysicalClock* clock);
  absl::Status SaveEdit(const hamlet::v1::Record& change, hamlet::v1::Record state);
  absl::Status PushOutbox(hamlet::v1::SyncService::StubInterface& stub, const SyncOptions& options, LinkPace* pace,
                          SyncReport* report);
  // Offers again the kept calls a restored server does not hold (its history
  // saved by PullAll), oldest first; clears the due history once all are.
  absl::Status Reoffer(hamlet::v1::SyncService::StubInterface& stub, const SyncOptions& options, LinkPace* pace,
                       SyncReport* report);
  absl::Status PullAll(hamlet::v1::SyncService::StubInterface& stub, const SyncOptions& options, LinkPace* pace,
                       SyncReport* report);
  // Replaces the pending batch (whose changes are `items`), which timed out,
  // by a new one holding the first half of them, so the next attempt is
  // smaller. Each change still reaches the server once in effect: if the old
  // batch did arrive, merging its changes again changes nothing.
  absl::Status SplitPendingBatch(const std::vector<storage::OutboxItem>& items);
  // The body fields of each record that have an edit still in the outbox: a
  // pulled value must not replace them.
  absl::StatusOr<std::unordered_map<std::string, sync::FieldNumbers>> UnsyncedFields() const;
  // Merges pulled records (lean stamps filled in first) into the device's
  // copies, the clock observing their stamps; returns the new states, to be
  // saved.
  absl::StatusOr<std::vector<hamlet::v1::Record>> MergePulled(
      std::vector<hamlet::v1::Record> pulled, const std::unordered_map<std::string, sync::FieldNumbers>& unsynced);
  // The batches an export carries: the pending one and those queued after
  // it, then new ones holding the rest of the outbox (at most
  // `batch_records` each), saved before return.
  struct Batch {
    storage::PendingBatch batch;
    std::vector<storage::OutboxItem> items;
  };
  absl::StatusOr<std::vector<Batch>> FixBatches(size_t batch_records);
  // The secret this device's bundles are sealed with, from its token;
  // FAILED_PRECONDITION before enrolment.
  absl::StatusOr<std::string> BundleSecret() const;
  // The push of a batch, as sent online and carried in a bundle.
  hamlet::v1::PushRequest PushOf(const storage::PendingBatch& batch, const std::vector<storage::OutboxItem>& items,
                                 size_t pending_after, const SyncOptions& options) const;
  // `change` as this device pushes it: with lean stamps, its own stamps
  // leaving out its id (the server reads it from PushRequest.device_id).
  hamlet::v1::Record LeanChange(const hamlet::v1::Record& change) const;

  std::unique_ptr<storage::DeviceStore> store_;
  sync::HybridClock clock_;
  hamlet::v1::Role role_ = hamlet::v1::ROLE_MEMBER;
  std::string token_;
};

}  // namespace hamlet::field

#endif  // HAMLET_CLIENT_DEVICE_H_
