#ifndef HAMLET_SERVER_TOWN_H_
#define HAMLET_SERVER_TOWN_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hamlet/v1/sync.pb.h"
#include "server/change_feed.h"
#include "server/devices.h"
#include "storage/town_store.h"
#include "sync/clock.h"
#include "sync/cursor.h"
#include "sync/units.h"
#include "sync/validate.h"

namespace hamlet::server {

// Error payloads: an absl::Status from Town may carry these, and the gRPC layer
// sends them to the client as trailing metadata of the same name, so a client
// can act without parsing the message.
//   hamlet-error-reason: CLOCK_SKEW | CURSOR_INVALIDATED
//   hamlet-server-time-ms: the server's clock, with CLOCK_SKEW
inline constexpr char kReasonKey[] = "hamlet-error-reason";
inline constexpr char kServerTimeKey[] = "hamlet-server-time-ms";

// Which tier a server is. A town serves the phones of its communes and
// replicates up; a province receives what its towns replicate, serves its
// officers, and owns the admin units it sends down. Both run the same code.
enum class Tier { kTown, kProvince };

struct TownOptions {
  Tier tier = Tier::kTown;
  // Code of the unit this server serves: a district-level town, or for a
  // province server the province. Default "206".
  std::string unit_code = "206";
  // Stamps further ahead of the server's clock than this are refused.
  absl::Duration max_clock_skew = absl::Minutes(5);
  // Most records one push may carry.
  int max_batch_records = 500;
  // Pull page defaults and ceilings.
  int default_page_size = 500;
  int max_page_size = 5000;
  int default_page_bytes = 1 << 20;
  int max_page_bytes = 3 << 20;
};

// A pull's answer: the response but for its records, and each record as a
// serialized hamlet.v1.Record, in the order of their changes.
struct PulledPage {
  hamlet::v1::PullResponse response;  // records is empty.
  std::vector<std::string> records;
  // The ids of the sealed records among them (Town::ReadPull).
  std::vector<std::string> sealed_reads;
};

// A town server's sync logic: validates, merges and commits pushes, serves
// pulls and tells watchers about changes. Thread-safe.
class Town {
 public:
  // Seeds the reference admin units into an empty store. `store`, `feed`
  // (made at the store's last_seq) and `clock` must outlive the Town; the Town
  // is the store's only writer of records and publishes each commit to `feed`.
  static absl::StatusOr<std::unique_ptr<Town>> Create(storage::TownStore* store, ChangeFeed* feed,
                                                      const sync::PhysicalClock* clock, const TownOptions& options);

  // Idempotent by (device_id, batch_id). A change refused for a reason of
  // its own record (INVALID_ARGUMENT, PERMISSION_DENIED or FAILED_PRECONDITION
  // below, clock skew aside) is set aside and named in the response's
  // set_aside when the request has set_aside_refused, the rest being applied;
  // without it the first such change refuses the whole batch (nothing
  // written). Errors:
  //   INVALID_ARGUMENT     malformed request or record (nothing written)
  //   PERMISSION_DENIED    a record the caller may not write (the first is
  //                        named), or another device's id
  //   ALREADY_EXISTS       batch id reused for different content
  //   FAILED_PRECONDITION  a stamp too far ahead (reason CLOCK_SKEW), or a change
  //                        that contradicts the stored record (type, unit, author)
  //   UNAVAILABLE, RESOURCE_EXHAUSTED, DATA_LOSS   from the store
  //   FAILED_PRECONDITION  also: an illegal lifecycle move (sync/lifecycle.h)
  // Lean stamps are filled in first (sync::ExpandStamps), so a batch is the
  // same batch, for its receipt too, in its lean and its whole form.
  //
  // The push is checked on the calling thread, then merged and written on the
  // store's commit thread with the pushes arriving with it (one synced
  // write: storage::TownStore::Submit); `done` is called there once it is
  // durable, or refused. It must be quick and must not wait for another push.
  using PushDone = std::function<void(absl::StatusOr<hamlet::v1::PushResponse>)>;
  void Push(hamlet::v1::PushRequest request, const Caller& caller, PushDone done);
  // Push, waiting for `done`.
  absl::StatusOr<hamlet::v1::PushResponse> Push(const hamlet::v1::PushRequest& request, const Caller& caller);

  // Push of a batch a bundle carried (AdminService.ImportBundle), waiting for
  // it: judged as of `written_ms`, when the bundle was written, so its stamps
  // may be ahead of that time (not of now) by the allowed skew. `held` is
  // true if the server held the batch already and answered from its receipt.
  struct Carried {
    hamlet::v1::PushResponse response;
    bool held = false;
  };
  absl::StatusOr<Carried> PushCarried(const hamlet::v1::PushRequest& request, const Caller& caller, int64_t written_ms);

  // Settles an open conflict (see sync.proto). Errors: INVALID_ARGUMENT,
  // PERMISSION_DENIED (the caller's role may not resolve), NOT_FOUND (no such
  // record), FAILED_PRECONDITION (no open conflict on that field, or a value
  // ranking below the competing ones, or an illegal move), ALREADY_EXISTS
  // (request id reused for another resolution).
  absl::StatusOr<hamlet::v1::ResolveConflictResponse> ResolveConflict(const hamlet::v1::ResolveConflictRequest& request,
                                                                      const Caller& caller);

  // Only the records the caller may read, redacted for it (sync/access.h);
  // sealed reads are audited. Errors: INVALID_ARGUMENT (bad scope or malformed
  // cursor), PERMISSION_DENIED (a scope beyond the caller's reach, or another
  // device's id), FAILED_PRECONDITION with reason CURSOR_INVALIDATED (cursor
  // from another server or epoch).
  //
  // A record goes out as the store keeps it when that is what the caller
  // gets: it asked for lean stamps and its role sees records whole. It is
  // sent unparsed when the change index's access facts decide its reach;
  // a sealed record (whose entry holds none) or an admin unit (whose reach
  // needs the unit) is parsed and checked first. For any other caller each
  // record is parsed, redacted and encoded again.
  absl::StatusOr<PulledPage> Pull(const hamlet::v1::PullRequest& request, const Caller& caller);
  // Pull in two steps, for a page that may be read before it is sent
  // (PullAhead): ReadPull reads it and names its sealed records;
  // AuditSealedReads writes their audit entries, once it is sent.
  absl::StatusOr<PulledPage> ReadPull(const hamlet::v1::PullRequest& request, const Caller& caller);
  absl::Status AuditSealedReads(const PulledPage& page, const Caller& caller);
  // The last seq published to watchers. It moves after every commit that
  // changes what a pull returns, once the commit is visible and the unit
  // directory holds the units it wrote: a page read at one value is what a
  // read would return for as long as it stays.
  uint64_t published_seq() const { return feed_->last_seq(); }

  // Notes where a device's pulls stand: the cursor a pull call gave it, or
  // what a bundle from it says. For LastPull; kept in memory only.
  void NotePull(const std::string& device_id, const std::string& scope_unit_code, const std::string& cursor);
  // Where `device_id`'s last pull call of records since this server started
  // ended: its scope and the cursor it was given; nullopt if none was noted.
  std::optional<storage::PullPosition> LastPull(const std::string& device_id) const;

  // Merges admin units pulled from the upstream (the province owns them) as
  // they are, stamps and all, and commits them. Other records are ignored.
  // Idempotent: a state already held changes nothing. Returns how many
  // records changed. INVALID_ARGUMENT for a malformed record.
  absl::StatusOr<size_t> ApplyUpstreamUnits(std::vector<hamlet::v1::Record> records);

  // Checks a watch request; returns the scope and the sequence number to watch from.
  struct WatchStart {
    storage::ChangeScope scope;
    uint64_t seq;
  };
  absl::StatusOr<WatchStart> StartWatch(const hamlet::v1::WatchRequest& request, const Caller& caller);

  bool KnowsUnit(const std::string& code) const;
  // True for the unit this server serves and every unit below it.
  bool ServesUnit(const std::string& code) const;
  // `code` and every unit below it (sync::UnitDirectory::Within).
  std::vector<std::string> UnitsWithin(const std::string& code) const;
  hamlet::v1::UnitLevel UnitLevel(const std::string& code) const;
  const TownOptions& options() const { return options_; }

 private:
  struct PushJob;
  // A push on its way, its lean stamps filled in.
  std::shared_ptr<PushJob> NewPushJob(hamlet::v1::PushRequest request, const Caller& caller, PushDone done,
                                      std::optional<int64_t> written_ms);
  // Push or PushCarried, waiting for the answer.
  absl::StatusOr<Carried> PushAndWait(const hamlet::v1::PushRequest& request, const Caller& caller,
                                      std::optional<int64_t> written_ms);
  // Push, once every stamp names its writer.
  void PushWhole(std::shared_ptr<PushJob> job);
  // The merge and commit of a checked push, in its commit group.
  absl::Status StagePush(PushJob& job, storage::CommitGroup& group);
  Town(storage::TownStore* store, ChangeFeed* feed, const sync::PhysicalClock* clock, const TownOptions& options);
  // A batch's merged records, only those that changed.
  struct Merged {
    std::vector<storage::RecordWrite> writes;
    std::vector<hamlet::v1::AuditEntry> audit;
    // With OnRefusal::kSetAside: the changes refused, by their position in
    // the changes merged, and why.
    std::vector<std::pair<size_t, absl::Status>> refused;
  };
  // What a change refused for a reason of its own does to its batch.
  enum class OnRefusal { kRefuseBatch, kSetAside };
  enum class WriteCheck { kPerRecord, kAuthorityCheckedByCaller };
  // Replicated states were held to the lifecycle rules where they were
  // written; checking them again could only refuse what the origin accepted.
  enum class LifecycleCheck { kMoves, kNone };
  absl::Status ValidatePushedChange(const hamlet::v1::Record& change, sync::ChangeOrigin origin) const;
  // Each change is checked and merged into its record's state as left by the
  // changes before it that were not refused (as `group` holds it).
  absl::StatusOr<Merged> MergeChanges(storage::CommitGroup& group,
                                      const std::vector<const hamlet::v1::Record*>& changes, const Caller& caller,
                                      WriteCheck check, LifecycleCheck lifecycle = LifecycleCheck::kMoves,
                                      OnRefusal on_refusal = OnRefusal::kRefuseBatch);
  // The checks of one change against its record's state (empty if new):
  // same record, creatable, writable, lifecycle moves.
  absl::Status CheckChange(const hamlet::v1::Record& change, const hamlet::v1::Record& state, const Caller& caller,
                           WriteCheck check, LifecycleCheck lifecycle) const;
  // PERMISSION_DENIED unless the caller may write `change` (onto `existing`,
  // or as a new record when it is null).
  absl::Status CheckWritable(const hamlet::v1::Record& change, const hamlet::v1::Record* existing,
                             const Caller& caller) const;
  // What a device says of itself with a push, kept for the admins.
  struct DeviceReport {
    std::string app_version;
    // Unset when the call says nothing about the outbox (a resolution).
    std::optional<uint32_t> pending_changes;
    // The call offers again what this server acknowledged before a restore.
    bool reoffer = false;
  };
  // A staged commit: its last sequence number, the communes whose records
  // it changes, and the admin units among them.
  struct Committed {
    uint64_t last_seq = 0;
    std::vector<std::string> communes;
    std::vector<hamlet::v1::Record> units;
  };
  // Stages merged records in `group` with a receipt holding respond(last_seq).
  absl::StatusOr<Committed> CommitMerged(storage::CommitGroup& group, const std::string& device_id,
                                         const std::string& batch_id, const DeviceReport& report,
                                         const std::string& content_hash, Merged merged,
                                         const std::function<std::string(uint64_t)>& respond);
  // Once a commit is durable: the unit directory takes its admin units, and
  // watchers are told.
  void Published(const Committed& committed);
  // Submits `stage` to the store's commit queue and waits; what it commits
  // (`*committed`) is published once durable.
  absl::Status CommitAndPublish(
      const std::function<absl::Status(storage::CommitGroup&, std::optional<Committed>*)>& stage);
  // The merge and commit of a checked resolution, in its commit group.
  absl::Status StageResolution(const hamlet::v1::ResolveConflictRequest& request, const Caller& caller,
                               const std::string& hash, storage::CommitGroup& group,
                               hamlet::v1::ResolveConflictResponse* response, std::optional<Committed>* committed);
  absl::Status LoadUnits();
  absl::Status SeedUnits();
  // The commune a pull or watch of `scope_unit_code` reads ("" for the whole
  // server, kReferenceScope for reference data), after checking the caller may
  // read it. An empty scope means all the caller may see: the whole server for
  // town-level roles, else its commune.
  absl::StatusOr<std::string> ResolveScope(const std::string& scope_unit_code, bool reference_only,
                                           const Caller& caller) const;
  static storage::ChangeScope IndexScope(const std::string& commune);
  // Decodes and checks a cursor; 0 for an empty one.
  absl::StatusOr<uint64_t> CursorSeq(const std::string& bytes, const std::string& commune) const;
  std::string MakeCursor(const std::string& commune, uint64_t seq) const;
  // The tag that makes `cursor` this server's (sync/cursor.h).
  std::string CursorTag(const sync::Cursor& cursor) const;
  absl::Status CheckDevice(const std::string& device_id, const Caller& caller) const;

  storage::TownStore* const store_;
  const TownOptions options_;
  sync::HybridClock clock_;
  ChangeFeed* const feed_;

  mutable absl::Mutex last_pulls_mu_;
  absl::flat_hash_map<std::string, storage::PullPosition> last_pulls_ ABSL_GUARDED_BY(last_pulls_mu_);

  mutable absl::Mutex units_mu_;
  sync::UnitDirectory units_ ABSL_GUARDED_BY(units_mu_);
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_TOWN_H_
