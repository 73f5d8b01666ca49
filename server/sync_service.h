#ifndef HAMLET_SERVER_SYNC_SERVICE_H_
#define HAMLET_SERVER_SYNC_SERVICE_H_

#include <memory>
#include <set>
#include <string>
#include <thread>

#include <grpcpp/support/server_interceptor.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
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
// Push, Pull and ResolveConflict count against the caller's rate
// (`rate_limit`, keyed by device id, after authentication; replication nodes
// are exempt). A push or resolution whose client has already given up (deadline
// passed, or cancelled) by the time it would be applied is not applied:
// DEADLINE_EXCEEDED or CANCELLED, nothing written.
class SyncServiceImpl final
    : public hamlet::v1::SyncService::WithCallbackMethod_Watch<hamlet::v1::SyncService::Service> {
 public:
  // `town`, `devices`, `metrics` and `rate_limit` must outlive the service.
  // Starts the Watch dispatcher.
  SyncServiceImpl(Town* town, const DeviceRegistry* devices, Metrics* metrics, DeviceRateLimit* rate_limit);
  // Stops the dispatcher. REQUIRES: the server using the service is shut down.
  ~SyncServiceImpl() override;

  grpc::Status Push(grpc::ServerContext* context, const hamlet::v1::PushRequest* request,
                    hamlet::v1::PushResponse* response) override;
  grpc::Status Pull(grpc::ServerContext* context, const hamlet::v1::PullRequest* request,
                    hamlet::v1::PullResponse* response) override;
  grpc::ServerWriteReactor<hamlet::v1::WatchResponse>* Watch(grpc::CallbackServerContext* context,
                                                            const hamlet::v1::WatchRequest* request) override;
  grpc::Status ResolveConflict(grpc::ServerContext* context, const hamlet::v1::ResolveConflictRequest* request,
                               hamlet::v1::ResolveConflictResponse* response) override;

 private:
  friend class WatchReactor;
  // Whether a call writes: a write is also refused once its client gave up.
  enum class CallKind { kRead, kWrite };
  // The caller of a sync call, once it is authenticated, within its rate and,
  // for a write, still awaited by its client.
  absl::StatusOr<Caller> Admit(const grpc::ServerContext& context, CallKind kind);
  void Dispatch();
  void Unregister(WatchReactor* watcher);

  Town* const town_;
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

// gRPC answers a request it cannot parse (not protobuf wire format, or a
// proto3 `string` field that is not valid UTF-8) with INTERNAL and an empty
// message, before any handler runs: a client cannot tell that from a server
// fault. Installed on a server, this makes that answer INVALID_ARGUMENT
// naming the method, and logs it with the peer. Every other status passes
// unchanged.
class UnparsableRequestInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_SYNC_SERVICE_H_
