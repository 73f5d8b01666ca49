#ifndef HAMLET_SERVER_REPLICATOR_H_
#define HAMLET_SERVER_REPLICATOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/protocol.h"
#include "hamlet/v1/admin.pb.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "server/town.h"
#include "storage/storage.pb.h"
#include "storage/town_store.h"
#include "sync/clock.h"

namespace hamlet::server {

struct ReplicatorOptions {
  // host:port of the upstream (province) server's device listener. Required.
  std::string upstream;
  // Plain text when null.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Bearer token of this server's enrolment at the upstream, as a
  // ROLE_REPLICATION_NODE for its unit, under this server's id as device id.
  std::string token;
  // Records per push (at most the upstream's batch limit) and a soft byte cap.
  int batch_records = 500;
  int batch_bytes = 2 << 20;
  // How often admin units are pulled from the upstream, and the longest wait
  // between attempts after a failure.
  absl::Duration poll_interval = absl::Seconds(5);
  absl::Duration max_backoff = absl::Seconds(30);
  // Each call: deadline and quick retries (protocol.h); longer outages are
  // handled by the replicator's own backoff, forever.
  field::RetryPolicy retry = {absl::Seconds(30), 3, absl::Milliseconds(200), absl::Seconds(2)};
  int max_message_bytes = 8 << 20;
};

// Replicates a town up to its province (docs/REPLICATION.md), on a thread of
// its own:
//
//  1. Up: reads its own change index after the acknowledged sequence number,
//     a page at a time, and pushes each record's merged state as it is
//     (original stamps, conflicts and superseded values) minus what never
//     leaves the town (sync::PrepareForProvince). The acknowledged number is
//     saved (synced) after each acknowledged push, so after a crash, restart
//     or outage it resumes exactly there; a page pushed twice merges to the
//     same state (merging is idempotent), so nothing is doubled.
//  2. Down: pulls the upstream's reference data (admin units) with a saved
//     cursor and merges them in.
//
// Nothing is queued: the change index holds each record once, so however long
// the upstream is away, the backlog is at most every record once on disk and
// one page in memory. Thread-safe.
class Replicator {
 public:
  // Loads the saved state (starting over if it was for another upstream)
  // and starts the thread. `town`, the store it commits to and `clock` must
  // outlive the replicator.
  static absl::StatusOr<std::unique_ptr<Replicator>> Start(Town* town, storage::TownStore* store,
                                                           const ChangeFeed* feed, const sync::PhysicalClock* clock,
                                                           ReplicatorOptions options);
  // Stops (see Stop).
  ~Replicator();

  // Cancels the call in flight, if any, and ends the thread.
  void Stop();

  // Saved across restarts. `reason` goes to the log by the caller.
  absl::Status Pause();
  absl::Status Resume();

  // Reads the lag in records from the change index's block counts.
  hamlet::v1::ReplicationStatus Status() const;
  // Running (not paused or failing) with no change waiting longer than
  // `max_lag`. Cheap: counts nothing.
  bool Healthy(absl::Duration max_lag) const;

 private:
  Replicator(Town* town, storage::TownStore* store, const ChangeFeed* feed, const sync::PhysicalClock* clock,
             ReplicatorOptions options, storage::ReplicationState state);
  void Run();
  // Pushes one page; sets *caught_up when nothing is left.
  absl::Status PushPage(bool* caught_up);
  absl::Status PullReference();
  absl::Status SaveState(const storage::ReplicationState& state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SetPaused(bool paused);
  // Waits up to `timeout` for a stop, a resume or a pause.
  void Sleep(absl::Duration timeout);

  Town* const town_;
  storage::TownStore* const store_;
  const ChangeFeed* const feed_;
  const sync::PhysicalClock* const clock_;
  const ReplicatorOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<hamlet::v1::SyncService::Stub> stub_;

  mutable absl::Mutex mu_;
  storage::ReplicationState state_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  uint64_t records_sent_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t units_received_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_reference_pull_ms_ ABSL_GUARDED_BY(mu_) = 0;
  field::CallCanceller canceller_;
  std::thread thread_;
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_REPLICATOR_H_
