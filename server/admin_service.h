#ifndef HAMLET_SERVER_ADMIN_SERVICE_H_
#define HAMLET_SERVER_ADMIN_SERVICE_H_

#include <functional>

#include "hamlet/v1/admin.grpc.pb.h"
#include "server/devices.h"
#include "server/replicator.h"
#include "server/town.h"
#include "storage/town_store.h"
#include "sync/clock.h"

namespace hamlet::server {

// The admin service (admin.proto): every call needs an admin's token; calls
// that change something are written to the audit log, every call to the
// server's log.
class AdminServiceImpl final : public hamlet::v1::AdminService::Service {
 public:
  // All must outlive the service. `store` is the one `town` commits to;
  // `replicator` is null for a server without an upstream.
  AdminServiceImpl(Town* town, storage::TownStore* store, DeviceRegistry* devices, Replicator* replicator,
                   const sync::PhysicalClock* clock)
      : town_(town),
        store_(store),
        devices_(devices),
        replicator_(replicator),
        clock_(clock),
        start_ms_(clock->NowMs()) {}

  grpc::Status EnrollDevice(grpc::ServerContext* context, const hamlet::v1::EnrollDeviceRequest* request,
                            hamlet::v1::EnrollDeviceResponse* response) override;
  grpc::Status RevokeDevice(grpc::ServerContext* context, const hamlet::v1::RevokeDeviceRequest* request,
                            hamlet::v1::RevokeDeviceResponse* response) override;
  grpc::Status ListDevices(grpc::ServerContext* context, const hamlet::v1::ListDevicesRequest* request,
                           hamlet::v1::ListDevicesResponse* response) override;
  grpc::Status GetServerStats(grpc::ServerContext* context, const hamlet::v1::GetServerStatsRequest* request,
                              hamlet::v1::GetServerStatsResponse* response) override;
  grpc::Status ListConflicts(grpc::ServerContext* context, const hamlet::v1::ListConflictsRequest* request,
                             hamlet::v1::ListConflictsResponse* response) override;
  grpc::Status ResolveConflict(grpc::ServerContext* context,
                               const hamlet::v1::AdminServiceResolveConflictRequest* request,
                               hamlet::v1::AdminServiceResolveConflictResponse* response) override;
  grpc::Status ListAuditEntries(grpc::ServerContext* context, const hamlet::v1::ListAuditEntriesRequest* request,
                                hamlet::v1::ListAuditEntriesResponse* response) override;
  grpc::Status GetReport(grpc::ServerContext* context, const hamlet::v1::GetReportRequest* request,
                         hamlet::v1::GetReportResponse* response) override;
  grpc::Status CreateBackup(grpc::ServerContext* context, const hamlet::v1::CreateBackupRequest* request,
                            grpc::ServerWriter<hamlet::v1::CreateBackupResponse>* writer) override;
  grpc::Status VerifyBackups(grpc::ServerContext* context, const hamlet::v1::VerifyBackupsRequest* request,
                             grpc::ServerWriter<hamlet::v1::VerifyBackupsResponse>* writer) override;
  grpc::Status GetReplicationStatus(grpc::ServerContext* context,
                                    const hamlet::v1::GetReplicationStatusRequest* request,
                                    hamlet::v1::GetReplicationStatusResponse* response) override;
  grpc::Status PauseReplication(grpc::ServerContext* context, const hamlet::v1::PauseReplicationRequest* request,
                                hamlet::v1::PauseReplicationResponse* response) override;
  grpc::Status ResumeReplication(grpc::ServerContext* context, const hamlet::v1::ResumeReplicationRequest* request,
                                 hamlet::v1::ResumeReplicationResponse* response) override;
  grpc::Status ImportBundle(grpc::ServerContext* context, const hamlet::v1::ImportBundleRequest* request,
                            grpc::ServerWriter<hamlet::v1::ImportBundleResponse>* writer) override;
  grpc::Status ExportBundle(grpc::ServerContext* context, const hamlet::v1::ExportBundleRequest* request,
                            grpc::ServerWriter<hamlet::v1::ExportBundleResponse>* writer) override;

 private:
  // Every call's preamble and ending, in one place: runs `body` for the admin
  // behind the call (UNAUTHENTICATED or PERMISSION_DENIED otherwise, and
  // `body` does not run), logs the call as `action`, and maps the status to
  // gRPC's. (A gRPC C++ server interceptor cannot end a call before its
  // handler runs, so this is a wrapper, not an interceptor.)
  grpc::Status AsAdmin(grpc::ServerContext* context, absl::string_view action,
                       const std::function<absl::Status(const Caller&)>& body) const;

  Town* const town_;
  storage::TownStore* const store_;
  // Where replication stands; REPLICATION_STATE_OFF without a replicator.
  hamlet::v1::ReplicationStatus ReplicationStatus() const;
  // Pauses or resumes replication and writes the audit entry.
  // FAILED_PRECONDITION without an upstream.
  absl::Status SetReplicationPaused(const Caller& admin, bool paused, const std::string& reason);

  DeviceRegistry* const devices_;
  Replicator* const replicator_;
  const sync::PhysicalClock* const clock_;
  const int64_t start_ms_;
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_ADMIN_SERVICE_H_
