#ifndef HAMLET_SERVER_SYNC_SERVICE_H_
#define HAMLET_SERVER_SYNC_SERVICE_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "server/devices.h"
#include "server/metrics.h"
#include "server/pull_ahead.h"
#include "server/rate_limit.h"
#include "server/town.h"
#include "server/work_pool.h"

namespace hamlet::server {

class WatchReactor;

// The gRPC face of a Town for devices: authenticates each call by its bearer
// token, maps requests to Town calls and absl::Status to gRPC status (with the
// payloads of server/town.h as trailing metadata), and logs one line per push.
//
// No call in flight holds a thread. Push, Pull and Watch are callback
// methods: a push is parsed and checked on gRPC's callback thread, then
// merged and written on the store's commit thread, which answers it once it
// is durable (Town::Push); a pull's reads, which wait on the disk, run on a
// small pool of reader threads (not gRPC's callback threads, which must not
// block). Watch streams stay open for as long as a phone is connected; one
// dispatcher thread tells them all about new changes (and re-checks their
// tokens once a second). ResolveConflict, which is rare, is a synchronous
// handler.
//
// Every method reads its own request, so a request that does not parse (not
// the method's protobuf message, or a proto3 `string` that is not UTF-8) is
// answered INVALID_ARGUMENT naming the method, and logged with the peer: gRPC
// alone would answer INTERNAL with no message, before any handler ran, which
// a client cannot tell from a server fault. Push, Pull and Watch are
// therefore raw callback methods and ResolveConflict a "streamed unary"
// handler (one read, one write, on the same synchronous thread).
//
// Push, Pull and ResolveConflict count against the caller's rate
// (`rate_limit`, keyed by device id, after authentication; replication nodes
// are exempt). A push or resolution whose client has already given up (deadline
// passed, or cancelled) by the time it would be applied is not applied:
// DEADLINE_EXCEEDED or CANCELLED, nothing written.
class SyncServiceImpl final
    : public hamlet::v1::SyncService::WithRawCallbackMethod_Push<hamlet::v1::SyncService::WithRawCallbackMethod_Pull<
          hamlet::v1::SyncService::WithStreamedUnaryMethod_ResolveConflict<
              hamlet::v1::SyncService::WithRawCallbackMethod_Watch<hamlet::v1::SyncService::Service>>>> {
 public:
  // `town`, the feed it publishes to, `devices`, `metrics` and `rate_limit`
  // must outlive the service. Starts the Watch dispatcher.
  // At most `max_calls` Push and Pull calls are in flight; more are refused
  // with RESOURCE_EXHAUSTED.
  SyncServiceImpl(Town* town, const ChangeFeed* feed, const DeviceRegistry* devices, Metrics* metrics,
                  DeviceRateLimit* rate_limit, int max_calls);
  // Stops the dispatcher. REQUIRES: the server using the service is shut down.
  ~SyncServiceImpl() override;

  grpc::ServerUnaryReactor* Push(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Watch(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request) override;
  grpc::Status StreamedResolveConflict(grpc::ServerContext* context,
                                       grpc::ServerUnaryStreamer<hamlet::v1::ResolveConflictRequest,
                                                                 hamlet::v1::ResolveConflictResponse>* stream) override;

 private:
  friend class WatchReactor;
  // Whether a call writes: a write is also refused once its client gave up.
  enum class CallKind { kRead, kWrite };
  // Counts a Push or Pull in flight until Leave(); false (not counted) when
  // max_calls are already.
  bool Enter();
  void Leave();
  // The caller of a sync call, once it is authenticated, within its rate and,
  // for a write, still awaited by its client.
  absl::StatusOr<Caller> Admit(const grpc::ServerContextBase& context, CallKind kind);
  // Counts a call of `method` that began at `start` and ended with `status`
  // in the metrics; returns its time, for the call's log line.
  absl::Duration Counted(absl::string_view method, const absl::Status& status,
                         std::chrono::steady_clock::time_point start);
  // The log line and metrics of a push, once answered.
  struct PushSummary {
    std::string device_id;
    std::string batch_id;
    std::string peer;
    int changes = 0;
    bool reoffer = false;
  };
  void Answered(const PushSummary& push, const absl::StatusOr<hamlet::v1::PushResponse>& result, absl::Duration took);
  // A pull, on a reader thread: its page (PageFor); then, if more remains
  // and the server is not busy, the next page is read ahead.
  void AnswerPull(grpc::CallbackServerContext* context, const hamlet::v1::PullRequest& request,
                  std::chrono::steady_clock::time_point start, grpc::ByteBuffer* response,
                  grpc::ServerUnaryReactor* reactor);
  // The page read ahead for the pull (PullAhead), else read now; its sealed
  // records audited.
  absl::StatusOr<PulledPage> PageFor(const hamlet::v1::PullRequest& request, const Caller& caller);
  grpc::Status AnswerResolveConflict(grpc::ServerContext* context, const hamlet::v1::ResolveConflictRequest& request,
                                     hamlet::v1::ResolveConflictResponse* response);
  void Dispatch();
  void Unregister(WatchReactor* watcher);

  Town* const town_;
  const ChangeFeed* const feed_;
  const DeviceRegistry* const devices_;
  Metrics* const metrics_;
  DeviceRateLimit* const rate_limit_;
  const int max_calls_;
  std::atomic<int> calls_{0};
  absl::Mutex watchers_mu_;
  std::set<WatchReactor*> watchers_ ABSL_GUARDED_BY(watchers_mu_);
  bool stopping_ ABSL_GUARDED_BY(watchers_mu_) = false;
  std::thread dispatcher_;
  const size_t reader_threads_;
  PullAhead pull_ahead_;
  // Declared last: destroyed first, so the pulls and reads ahead still queued
  // run while the rest of the service is there.
  WorkPool readers_;
};

// absl::Status -> grpc::Status; copies the status's payloads into `context`'s
// trailing metadata.
grpc::Status ToGrpc(const absl::Status& status, grpc::ServerContextBase* context);

// The caller of a call, from its `authorization` metadata.
absl::StatusOr<Caller> Authenticate(const DeviceRegistry& devices, const grpc::ServerContextBase& context);

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_SYNC_SERVICE_H_
