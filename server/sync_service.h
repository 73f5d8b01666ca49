#ifndef HAMLET_SERVER_SYNC_SERVICE_H_
#define HAMLET_SERVER_SYNC_SERVICE_H_

#include "hamlet/v1/sync.grpc.pb.h"
#include "server/devices.h"
#include "server/metrics.h"
#include "server/town.h"

namespace hamlet::server {

// The gRPC face of a Town for devices: authenticates each call by its bearer
// token, maps requests to Town calls and absl::Status to gRPC status (with the
// payloads of server/town.h as trailing metadata), and logs one line per push.
class SyncServiceImpl final : public hamlet::v1::SyncService::Service {
 public:
  // `town`, `devices` and `metrics` must outlive the service.
  SyncServiceImpl(Town* town, const DeviceRegistry* devices, Metrics* metrics)
      : town_(town), devices_(devices), metrics_(metrics) {}

  grpc::Status Push(grpc::ServerContext* context, const hamlet::v1::PushRequest* request,
                    hamlet::v1::PushResponse* response) override;
  grpc::Status Pull(grpc::ServerContext* context, const hamlet::v1::PullRequest* request,
                    hamlet::v1::PullResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context, const hamlet::v1::WatchRequest* request,
                     grpc::ServerWriter<hamlet::v1::WatchResponse>* writer) override;
  grpc::Status ResolveConflict(grpc::ServerContext* context, const hamlet::v1::ResolveConflictRequest* request,
                               hamlet::v1::ResolveConflictResponse* response) override;

 private:
  Town* const town_;
  const DeviceRegistry* const devices_;
  Metrics* const metrics_;
};

// absl::Status -> grpc::Status; copies the status's payloads into `context`'s
// trailing metadata.
grpc::Status ToGrpc(const absl::Status& status, grpc::ServerContext* context);

// The caller of a call, from its `authorization` metadata.
absl::StatusOr<Caller> Authenticate(const DeviceRegistry& devices, const grpc::ServerContext& context);

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_SYNC_SERVICE_H_
