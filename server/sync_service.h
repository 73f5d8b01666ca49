#ifndef HAMLET_SERVER_SYNC_SERVICE_H_
#define HAMLET_SERVER_SYNC_SERVICE_H_

#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "server/devices.h"
#include "server/metrics.h"
#include "server/rate_limit.h"
#include "server/town.h"

namespace hamlet::server {

class WatchReactor;

// The gRPC face of a Town for devices: authenticates each call by its bearer
// token, maps requests to Town calls and absl::Status to gRPC status (with the
// payloads of server/town.h as trailing metadata), and logs one line per push.
//
// Push, Pull and ResolveConflict are synchronous handlers. Watch streams stay
// open for as long as a phone is connected, so they hold no thread: they are
// callback reactors, and one dispatcher thread tells them all about new
// changes (and re-checks their tokens once a second).
//
// Every method reads its own request, so a request that does not parse (not
// the method's protobuf message, or a proto3 `string` that is not UTF-8) is
// answered INVALID_ARGUMENT naming the method, and logged with the peer: gRPC
// alone would answer INTERNAL with no message, before any handler ran, which
// a client cannot tell from a server fault. Push, Pull and ResolveConflict are
// therefore "streamed unary" handlers (one read, one write, on the same
// synchronous thread) and Watch a raw callback method.
//
// Push, Pull and ResolveConflict count against the caller's rate
// (`rate_limit`, keyed by device id, after authentication; replication nodes
// are exempt). A push or resolution whose client has already given up (deadline
// passed, or cancelled) by the time it would be applied is not applied:
// DEADLINE_EXCEEDED or CANCELLED, nothing written.
class SyncServiceImpl final
    : public hamlet::v1::SyncService::WithStreamedUnaryMethod_Push<
          hamlet::v1::SyncService::WithStreamedUnaryMethod_Pull<
              hamlet::v1::SyncService::WithStreamedUnaryMethod_ResolveConflict<
                  hamlet::v1::SyncService::WithRawCallbackMethod_Watch<hamlet::v1::SyncService::Service>>>> {
 public:
  // `town`, the feed it publishes to, `devices`, `metrics` and `rate_limit`
  // must outlive the service. Starts the Watch dispatcher.
  SyncServiceImpl(Town* town, const ChangeFeed* feed, const DeviceRegistry* devices, Metrics* metrics,
                  DeviceRateLimit* rate_limit);
  // Stops the dispatcher. REQUIRES: the server using the service is shut down.
  ~SyncServiceImpl() override;

  grpc::Status StreamedPush(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<hamlet::v1::PushRequest, hamlet::v1::PushResponse>* stream) override;
  grpc::Status StreamedPull(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<hamlet::v1::PullRequest, hamlet::v1::PullResponse>* stream) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Watch(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request) override;
  grpc::Status StreamedResolveConflict(grpc::ServerContext* context,
                                       grpc::ServerUnaryStreamer<hamlet::v1::ResolveConflictRequest,
                                                                 hamlet::v1::ResolveConflictResponse>* stream) override;

 private:
  friend class WatchReactor;
  // Whether a call writes: a write is also refused once its client gave up.
  enum class CallKind { kRead, kWrite };
  // The caller of a sync call, once it is authenticated, within its rate and,
  // for a write, still awaited by its client.
  absl::StatusOr<Caller> Admit(const grpc::ServerContext& context, CallKind kind);
  // What every sync call does around its own work: admits the caller, runs
  // `work` for it, and counts the call as `method` with its status and time
  // in the metrics. `*took` is that time, for the call's log line.
  template <typename Response>
  absl::StatusOr<Response> Measured(const grpc::ServerContext& context, CallKind kind, absl::string_view method,
                                    absl::FunctionRef<absl::StatusOr<Response>(const Caller&)> work,
                                    absl::Duration* took) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<Caller> caller = Admit(context, kind);
    absl::StatusOr<Response> result = caller.ok() ? work(*caller) : absl::StatusOr<Response>(caller.status());
    *took = absl::FromChrono(std::chrono::steady_clock::now() - start);
    metrics_->CountCall(method, static_cast<grpc::StatusCode>(result.status().code()), *took);
    return result;
  }
  // The methods, once their requests are read.
  grpc::Status AnswerPush(grpc::ServerContext* context, const hamlet::v1::PushRequest& request,
                          hamlet::v1::PushResponse* response);
  grpc::Status AnswerPull(grpc::ServerContext* context, const hamlet::v1::PullRequest& request,
                          hamlet::v1::PullResponse* response);
  grpc::Status AnswerResolveConflict(grpc::ServerContext* context, const hamlet::v1::ResolveConflictRequest& request,
                                     hamlet::v1::ResolveConflictResponse* response);
  void Dispatch();
  void Unregister(WatchReactor* watcher);

  Town* const town_;
  const ChangeFeed* const feed_;
  const DeviceRegistry* const devices_;
  Metrics* const metrics_;
  DeviceRateLimit* const rate_limit_;
  absl::Mutex watchers_mu_;
  std::set<WatchReactor*> watchers_ ABSL_GUARDED_BY(watchers_mu_);
  bool stopping_ ABSL_GUARDED_BY(watchers_mu_) = false;
  std::thread dispatcher_;
};

// absl::Status -> grpc::Status; copies the status's payloads into `context`'s
// trailing metadata.
grpc::Status ToGrpc(const absl::Status& status, grpc::ServerContextBase* context);

// The caller of a call, from its `authorization` metadata.
absl::StatusOr<Caller> Authenticate(const DeviceRegistry& devices, const grpc::ServerContextBase& context);

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_SYNC_SERVICE_H_
