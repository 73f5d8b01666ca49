#ifndef HAMLET_SERVER_TOWN_H_
#define HAMLET_SERVER_TOWN_H_

#include <cstdint>
#include <functional>
#include <vector>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hamlet/v1/sync.pb.h"
#include "server/change_feed.h"
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

// Who is calling, as far as the server knows. Until devices are enrolled
// with tokens (the access-control work), every device call is a member's.
struct Caller {
  hamlet::v1::Role role = hamlet::v1::ROLE_MEMBER;
};

struct TownOptions {
  // Code of the town (district-level unit) this server serves. Default "206".
  std::string town_code = "206";
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

// A town server's sync logic: validates, merges and commits pushes, serves
// pulls and tells watchers about changes. Thread-safe.
class Town {
 public:
  // Takes the store; seeds the reference admin units into an empty store.
  // `clock` must outlive the Town.
  static absl::StatusOr<std::unique_ptr<Town>> Create(std::unique_ptr<storage::TownStore> store,
                                                      const sync::PhysicalClock* clock, const TownOptions& options);

  // All or nothing; idempotent by (device_id, batch_id). Errors:
  //   INVALID_ARGUMENT     malformed request or record (nothing written)
  //   ALREADY_EXISTS       batch id reused for different content
  //   FAILED_PRECONDITION  a stamp too far ahead (reason CLOCK_SKEW), or a change
  //                        that contradicts the stored record (type, unit, author)
  //   UNAVAILABLE, RESOURCE_EXHAUSTED, DATA_LOSS   from the store
  //   FAILED_PRECONDITION  also: an illegal lifecycle move (sync/lifecycle.h)
  absl::StatusOr<hamlet::v1::PushResponse> Push(const hamlet::v1::PushRequest& request, const Caller& caller);

  // Settles an open conflict (see sync.proto). Errors: INVALID_ARGUMENT,
  // PERMISSION_DENIED (the caller's role may not resolve), NOT_FOUND (no such
  // record), FAILED_PRECONDITION (no open conflict on that field, or a value
  // ranking below the competing ones, or an illegal move), ALREADY_EXISTS
  // (request id reused for another resolution).
  absl::StatusOr<hamlet::v1::ResolveConflictResponse> ResolveConflict(
      const hamlet::v1::ResolveConflictRequest& request, const Caller& caller);

  // Errors: INVALID_ARGUMENT (bad scope or malformed cursor), FAILED_PRECONDITION
  // with reason CURSOR_INVALIDATED (cursor from another server or epoch).
  absl::StatusOr<hamlet::v1::PullResponse> Pull(const hamlet::v1::PullRequest& request);

  // Checks a watch request; returns the scope and the sequence number to watch from.
  struct WatchStart {
    storage::ChangeScope scope;
    uint64_t seq;
  };
  absl::StatusOr<WatchStart> StartWatch(const hamlet::v1::WatchRequest& request);
  // True if `scope` has changes after `seq`.
  absl::StatusOr<bool> HasChangesAfter(const storage::ChangeScope& scope, uint64_t seq) const;

  ChangeFeed& feed() { return feed_; }
  const storage::TownStore& store() const { return *store_; }
  const TownOptions& options() const { return options_; }

 private:
  Town(std::unique_ptr<storage::TownStore> store, const sync::PhysicalClock* clock, const TownOptions& options);
  // A batch's merged records, only those that changed.
  struct Merged {
    std::vector<storage::RecordWrite> writes;
  };
  absl::Status ValidatePushedChange(const hamlet::v1::Record& change, sync::ChangeOrigin origin) const;
  // REQUIRES: push_mu_ held.
  absl::StatusOr<Merged> MergeChanges(const std::vector<const hamlet::v1::Record*>& changes, const Caller& caller);
  // Commits merged records with a receipt holding respond(last_seq).
  // REQUIRES: push_mu_ held.
  absl::StatusOr<uint64_t> CommitMerged(const std::string& device_id, const std::string& batch_id,
                                        const std::string& app_version, const std::string& content_hash,
                                        Merged merged, const std::function<std::string(uint64_t)>& respond);
  absl::Status LoadUnits();
  absl::Status SeedUnits();
  // The change-index scope for a pull or watch of `scope_unit_code`.
  absl::StatusOr<storage::ChangeScope> ResolveScope(const std::string& scope_unit_code) const;
  // The scope as cursors record it: "" for the whole town, whichever way it was named.
  std::string CanonicalScope(const std::string& scope_unit_code) const;
  // Decodes and checks a cursor; 0 for an empty one.
  absl::StatusOr<uint64_t> CursorSeq(const std::string& bytes, const std::string& scope_unit_code) const;
  std::string MakeCursor(const std::string& scope_unit_code, uint64_t seq) const;

  const std::unique_ptr<storage::TownStore> store_;
  const TownOptions options_;
  sync::HybridClock clock_;
  ChangeFeed feed_;

  // Held from reading the records a push touches until its commit, so that no
  // other push's merge is lost in between.
  absl::Mutex push_mu_;
  mutable absl::Mutex units_mu_;
  sync::UnitDirectory units_ ABSL_GUARDED_BY(units_mu_);
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_TOWN_H_
