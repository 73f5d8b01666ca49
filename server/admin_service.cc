#include "server/admin_service.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "server/bundles.h"
#include "server/log.h"
#include "server/reports.h"
#include "server/sync_service.h"
#include "storage/atomic_file.h"
#include "storage/bundle.h"
#include "sync/status_macros.h"
#include "sync/validate.h"

namespace hamlet::server {

using google::protobuf::util::TimeUtil;

namespace {

size_t PageSize(uint32_t requested) { return requested == 0 ? 100 : std::min<uint32_t>(requested, 1000); }

// Page tokens are the last key of the previous page, which is not secret.
absl::StatusOr<uint64_t> SeqToken(const std::string& token) {
  uint64_t seq = 0;
  if (!token.empty() && !absl::SimpleAtoi(token, &seq)) {
    return absl::InvalidArgumentError("page_token is not one this server issued");
  }
  return seq;
}

// Backups and bundles are written and read by the server, on its own machine.
absl::Status AbsolutePath(absl::string_view what, const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be an absolute path on the server's machine"));
  }
  return absl::OkStatus();
}

absl::Status AbsoluteDirectory(const std::string& directory) { return AbsolutePath("directory", directory); }

}  // namespace

grpc::Status AdminServiceImpl::AsAdmin(grpc::ServerContext* context, absl::string_view action,
                                       const std::function<absl::Status(const Caller&)>& body) const {
  absl::StatusOr<Caller> caller = Authenticate(*devices_, *context);
  if (!caller.ok()) return ToGrpc(caller.status(), context);
  if (caller->principal.role != hamlet::v1::ROLE_ADMIN) {
    return ToGrpc(
        absl::PermissionDeniedError(absl::StrCat("the admin service needs an admin's token; device ", caller->device_id,
                                                 " is enrolled as ", hamlet::v1::Role_Name(caller->principal.role))),
        context);
  }
  LogLine(absl::StrCat("admin ", action, " by device=", caller->device_id, " peer=", context->peer()));
  return ToGrpc(body(*caller), context);
}

grpc::Status AdminServiceImpl::EnrollDevice(grpc::ServerContext* context,
                                            const hamlet::v1::EnrollDeviceRequest* request,
                                            hamlet::v1::EnrollDeviceResponse* response) {
  return AsAdmin(context, "EnrollDevice", [&](const Caller& admin) -> absl::Status {
    if (!request->unit_code().empty() && !town_->ServesUnit(request->unit_code())) {
      return absl::InvalidArgumentError(
          absl::StrCat("unit ", request->unit_code(), " is not ", town_->options().unit_code,
                       " or a unit within it; enrol the device at the server of its own town"));
    }
    absl::StatusOr<hamlet::v1::EnrollDeviceResponse> result = devices_->Enroll(*request, admin);
    if (!result.ok()) return result.status();
    *response = std::move(*result);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::RevokeDevice(grpc::ServerContext* context,
                                            const hamlet::v1::RevokeDeviceRequest* request,
                                            hamlet::v1::RevokeDeviceResponse* response) {
  return AsAdmin(context, "RevokeDevice", [&](const Caller& admin) -> absl::Status {
    absl::StatusOr<hamlet::v1::Device> device = devices_->Revoke(request->device_id(), request->reason(), admin);
    if (!device.ok()) return device.status();
    *response->mutable_device() = std::move(*device);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::ListDevices(grpc::ServerContext* context, const hamlet::v1::ListDevicesRequest* request,
                                           hamlet::v1::ListDevicesResponse* response) {
  return AsAdmin(context, "ListDevices", [&](const Caller& admin) -> absl::Status {
    if (!request->page_token().empty() && !sync::IsUuid(request->page_token())) {
      return absl::InvalidArgumentError("page_token is not one this server issued");
    }
    const size_t max = PageSize(request->page_size());
    // Open conflicts by unit, to count each device's (conflicts are few).
    auto conflicted = store_->ListConflicted("", "", std::numeric_limits<size_t>::max());
    if (!conflicted.ok()) return conflicted.status();
    std::map<std::string, uint32_t> conflicts_by_unit;
    for (const hamlet::v1::Record& record : *conflicted) ++conflicts_by_unit[record.unit_code()];
    for (hamlet::v1::Device& device : devices_->List()) {
      if (!request->page_token().empty() && device.device_id() <= request->page_token()) continue;
      if (static_cast<size_t>(response->devices_size()) == max) {
        response->set_next_page_token(response->devices(response->devices_size() - 1).device_id());
        break;
      }
      absl::StatusOr<std::optional<storage::DeviceState>> state = store_->GetDevice(device.device_id());
      if (!state.ok()) return state.status();
      if (state->has_value()) {
        const storage::DeviceState& s = **state;
        *device.mutable_last_seen_time() = TimeUtil::MillisecondsToTimestamp(s.last_seen_ms());
        device.set_app_version(s.app_version());
        device.set_batches_applied(s.batches_applied());
        device.set_records_applied(s.records_applied());
        device.set_pending_changes(s.pending_changes());
        device.set_batches_reoffered(s.batches_reoffered());
        if (s.last_reoffer_ms() > 0) {
          *device.mutable_last_reoffer_time() = TimeUtil::MillisecondsToTimestamp(s.last_reoffer_ms());
        }
      }
      for (const std::string& unit : town_->UnitsWithin(device.unit_code())) {
        auto count = conflicts_by_unit.find(unit);
        if (count != conflicts_by_unit.end()) device.set_open_conflicts(device.open_conflicts() + count->second);
      }
      *response->add_devices() = std::move(device);
    }
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::GetServerStats(grpc::ServerContext* context,
                                              const hamlet::v1::GetServerStatsRequest* request,
                                              hamlet::v1::GetServerStatsResponse* response) {
  return AsAdmin(context, "GetServerStats", [&](const Caller& admin) -> absl::Status {
    const storage::TownStore& store = *store_;
    response->set_server_id(store.server_id());
    response->set_epoch(store.epoch());
    response->set_last_seq(store.last_seq());
    absl::StatusOr<uint64_t> records = store.CountRecords();
    if (!records.ok()) return records.status();
    response->set_records(*records);
    absl::StatusOr<uint64_t> conflicts = store.CountConflicted();
    if (!conflicts.ok()) return conflicts.status();
    response->set_open_conflicts(*conflicts);
    const int64_t now_ms = clock_->NowMs();
    *response->mutable_history() = store.history();
    const bool restored = store.history().has_restore_time();
    const int64_t restore_ms = TimeUtil::TimestampToMilliseconds(store.history().restore_time());
    for (const hamlet::v1::Device& device : devices_->List()) {
      if (device.has_revoke_time() || TimeUtil::TimestampToMilliseconds(device.expire_time()) <= now_ms) {
        response->set_devices_revoked(response->devices_revoked() + 1);
        continue;
      }
      response->set_devices_enrolled(response->devices_enrolled() + 1);
      if (!restored) continue;
      absl::StatusOr<std::optional<storage::DeviceState>> state = store.GetDevice(device.device_id());
      if (!state.ok()) return state.status();
      const bool heard = state->has_value() && (*state)->last_seen_ms() >= restore_ms;
      *(heard ? response->add_devices_heard_since_restore() : response->add_devices_not_heard_since_restore()) =
          device.device_id();
    }
    *response->mutable_start_time() = TimeUtil::MillisecondsToTimestamp(start_ms_);
    response->set_town_code(town_->options().unit_code);
    *response->mutable_replication() = ReplicationStatus();
    return absl::OkStatus();
  });
}

hamlet::v1::ReplicationStatus AdminServiceImpl::ReplicationStatus() const {
  if (replicator_ != nullptr) return replicator_->Status();
  hamlet::v1::ReplicationStatus status;
  status.set_state(hamlet::v1::REPLICATION_STATE_OFF);
  status.set_device_id(store_->server_id());
  status.set_last_seq(store_->last_seq());
  return status;
}

grpc::Status AdminServiceImpl::GetReplicationStatus(grpc::ServerContext* context,
                                                    const hamlet::v1::GetReplicationStatusRequest* /*request*/,
                                                    hamlet::v1::GetReplicationStatusResponse* response) {
  return AsAdmin(context, "GetReplicationStatus", [&](const Caller& admin) -> absl::Status {
    *response->mutable_status() = ReplicationStatus();
    return absl::OkStatus();
  });
}

absl::Status AdminServiceImpl::SetReplicationPaused(const Caller& admin, bool paused, const std::string& reason) {
  if (replicator_ == nullptr) {
    return absl::FailedPreconditionError("this server has no upstream (start it with --upstream)");
  }
  HAMLET_RETURN_IF_ERROR(paused ? replicator_->Pause() : replicator_->Resume());
  const char* action = paused ? "pause_replication" : "resume_replication";
  HAMLET_RETURN_IF_ERROR(
      store_->AppendAudit(AuditOf(admin, action, replicator_->Status().upstream(), reason, clock_->NowMs())).status());
  LogLine(absl::StrCat("replication ", paused ? "paused: " : "resumed", reason));
  return absl::OkStatus();
}

grpc::Status AdminServiceImpl::PauseReplication(grpc::ServerContext* context,
                                                const hamlet::v1::PauseReplicationRequest* request,
                                                hamlet::v1::PauseReplicationResponse* response) {
  return AsAdmin(context, "PauseReplication", [&](const Caller& admin) -> absl::Status {
    if (request->reason().empty()) {
      return absl::InvalidArgumentError("reason is required (it goes to the audit log)");
    }
    if (absl::Status paused = SetReplicationPaused(admin, /*paused=*/true, request->reason()); !paused.ok()) {
      return paused;
    }
    *response->mutable_status() = ReplicationStatus();
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::ResumeReplication(grpc::ServerContext* context,
                                                 const hamlet::v1::ResumeReplicationRequest* /*request*/,
                                                 hamlet::v1::ResumeReplicationResponse* response) {
  return AsAdmin(context, "ResumeReplication", [&](const Caller& admin) -> absl::Status {
    if (absl::Status resumed = SetReplicationPaused(admin, /*paused=*/false, ""); !resumed.ok()) return resumed;
    *response->mutable_status() = ReplicationStatus();
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::ListConflicts(grpc::ServerContext* context,
                                             const hamlet::v1::ListConflictsRequest* request,
                                             hamlet::v1::ListConflictsResponse* response) {
  return AsAdmin(context, "ListConflicts", [&](const Caller& admin) -> absl::Status {
    if (!request->page_token().empty() && !sync::IsUuid(request->page_token())) {
      return absl::InvalidArgumentError("page_token is not one this server issued");
    }
    if (!request->unit_code().empty() && !town_->KnowsUnit(request->unit_code())) {
      return absl::InvalidArgumentError(absl::StrCat("unit ", request->unit_code(), " does not exist"));
    }
    const size_t max = PageSize(request->page_size());
    auto records = store_->ListConflicted(request->unit_code(), request->page_token(), max + 1);
    if (!records.ok()) return records.status();
    for (size_t i = 0; i < records->size() && i < max; ++i) *response->add_records() = std::move((*records)[i]);
    if (records->size() > max) response->set_next_page_token(response->records(response->records_size() - 1).id());
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::ResolveConflict(grpc::ServerContext* context,
                                               const hamlet::v1::AdminServiceResolveConflictRequest* request,
                                               hamlet::v1::AdminServiceResolveConflictResponse* response) {
  return AsAdmin(context, "ResolveConflict", [&](const Caller& admin) -> absl::Status {
    absl::StatusOr<hamlet::v1::ResolveConflictResponse> result = town_->ResolveConflict(request->resolution(), admin);
    if (!result.ok()) return result.status();
    *response->mutable_record() = std::move(*result->mutable_record());
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::ListAuditEntries(grpc::ServerContext* context,
                                                const hamlet::v1::ListAuditEntriesRequest* request,
                                                hamlet::v1::ListAuditEntriesResponse* response) {
  return AsAdmin(context, "ListAuditEntries", [&](const Caller& admin) -> absl::Status {
    absl::StatusOr<uint64_t> after = SeqToken(request->page_token());
    if (!after.ok()) return after.status();
    const size_t max = PageSize(request->page_size());
    auto entries = store_->ListAudit(*after, max + 1);
    if (!entries.ok()) return entries.status();
    for (size_t i = 0; i < entries->size() && i < max; ++i) *response->add_entries() = std::move((*entries)[i]);
    if (entries->size() > max) {
      response->set_next_page_token(absl::StrCat(response->entries(response->entries_size() - 1).seq()));
    }
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::GetReport(grpc::ServerContext* context, const hamlet::v1::GetReportRequest* request,
                                         hamlet::v1::GetReportResponse* response) {
  return AsAdmin(context, "GetReport", [&](const Caller& admin) -> absl::Status {
    absl::StatusOr<hamlet::v1::GetReportResponse> report =
        BuildReport(*town_, *store_, *devices_, *request, clock_->NowMs());
    if (!report.ok()) return report.status();
    *response = std::move(*report);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::CreateBackup(grpc::ServerContext* context,
                                            const hamlet::v1::CreateBackupRequest* request,
                                            grpc::ServerWriter<hamlet::v1::CreateBackupResponse>* writer) {
  return AsAdmin(context, "CreateBackup", [&](const Caller& admin) -> absl::Status {
    HAMLET_RETURN_IF_ERROR(AbsoluteDirectory(request->directory()));
    const auto start = std::chrono::steady_clock::now();
    hamlet::v1::CreateBackupResponse message;
    absl::StatusOr<storage::BackupSummary> backup =
        store_->Backup(request->directory(), [&](const storage::CopyProgress& p) {
          message.set_bytes_copied(p.bytes_done);
          message.set_bytes_total(p.bytes_total);
          message.set_files_copied(p.files_done);
          message.set_files_total(p.files_total);
          writer->Write(message);  // A client that went away only misses progress.
        });
    absl::Status status = backup.status();
    const std::string figures =
        backup.ok() ? absl::StrCat("backup ", backup->backup_id, ": ", backup->bytes_total, " bytes in ",
                                   backup->files_total, " files, of which ", backup->bytes_copied, " bytes in ",
                                   backup->files_copied, " files copied")
                    : "";
    if (status.ok()) {
      status = store_->AppendAudit(AuditOf(admin, "backup", request->directory(), figures, clock_->NowMs())).status();
    }
    LogLine(absl::StrCat("backup to ", request->directory(), ": ", status.ok() ? figures : status.ToString(), " in ",
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), " s"));
    if (!status.ok()) return status;
    // The store's last progress report held the backup's own figures.
    message.set_backup_id(backup->backup_id);
    message.set_done(true);
    writer->Write(message);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::VerifyBackups(grpc::ServerContext* context,
                                             const hamlet::v1::VerifyBackupsRequest* request,
                                             grpc::ServerWriter<hamlet::v1::VerifyBackupsResponse>* writer) {
  return AsAdmin(context, "VerifyBackups", [&](const Caller& admin) -> absl::Status {
    HAMLET_RETURN_IF_ERROR(AbsoluteDirectory(request->directory()));
    const auto start = std::chrono::steady_clock::now();
    int damaged = 0;
    absl::StatusOr<size_t> checked =
        storage::TownStore::VerifyBackups(request->directory(), [&](const storage::BackupCheck& check) {
          hamlet::v1::VerifyBackupsResponse message;
          message.set_backup_id(check.backup.backup_id);
          *message.mutable_backup_time() = TimeUtil::MillisecondsToTimestamp(check.backup.time_ms);
          message.set_bytes(check.backup.bytes_total);
          message.set_files(check.backup.files_total);
          message.set_ok(check.status.ok());
          if (!check.status.ok()) {
            ++damaged;
            message.set_problem(std::string(check.status.message()));
          }
          writer->Write(message);
        });
    LogLine(absl::StrCat(
        "verify backups in ", request->directory(), ": ",
        checked.ok() ? absl::StrCat(*checked, " checked, ", damaged, " damaged") : checked.status().ToString(), " in ",
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), " s"));
    return checked.status();
  });
}

grpc::Status AdminServiceImpl::ImportBundle(grpc::ServerContext* context,
                                            const hamlet::v1::ImportBundleRequest* request,
                                            grpc::ServerWriter<hamlet::v1::ImportBundleResponse>* writer) {
  return AsAdmin(context, "ImportBundle", [&](const Caller& admin) -> absl::Status {
    std::string from = "the request";
    std::string bundle;
    if (request->has_path()) {
      HAMLET_RETURN_IF_ERROR(AbsolutePath("path", request->path()));
      HAMLET_ASSIGN_OR_RETURN(bundle, storage::ReadBundleFile(request->path()));
      from = request->path();
    } else if (request->has_bundle()) {
      bundle = request->bundle();
    } else {
      return absl::InvalidArgumentError("give the bundle: path (a file on the server's machine) or bundle (its bytes)");
    }
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<hamlet::v1::ImportBundleResponse> imported =
        server::ImportBundle(bundle, *town_, *devices_, *clock_, [&](const hamlet::v1::ImportBundleResponse& m) {
          writer->Write(m);  // A client that went away only misses progress.
        });
    const std::string figures =
        imported.ok() ? absl::StrCat("device ", imported->device_id(), ": ", imported->batches_total(), " batches, ",
                                     imported->records_applied(), " records changed, ", imported->changes_set_aside(),
                                     " changes set aside, ", imported->batches_refused(), " batches refused")
                      : imported.status().ToString();
    LogLine(absl::StrCat("import bundle from ", from, " (", bundle.size(), " bytes): ", figures, " in ",
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), " s"));
    if (!imported.ok()) {
      // A refused bundle is audited too: a lost phone's bundle turning up is news.
      absl::StatusOr<hamlet::v1::BundleHeader> header = storage::ReadBundleHeader(bundle);
      (void)store_->AppendAudit(AuditOf(admin, "import_bundle_refused", header.ok() ? header->device_id() : "", figures,
                                        clock_->NowMs()));  // The refusal's own status is what matters.
      return imported.status();
    }
    return store_
        ->AppendAudit(AuditOf(admin, "import_bundle", imported->device_id(),
                              absl::StrCat(figures, "; written ", TimeUtil::ToString(imported->export_time())),
                              clock_->NowMs()))
        .status();
  });
}

grpc::Status AdminServiceImpl::ExportBundle(grpc::ServerContext* context,
                                            const hamlet::v1::ExportBundleRequest* request,
                                            grpc::ServerWriter<hamlet::v1::ExportBundleResponse>* writer) {
  return AsAdmin(context, "ExportBundle", [&](const Caller& admin) -> absl::Status {
    if (!request->path().empty()) HAMLET_RETURN_IF_ERROR(AbsolutePath("path", request->path()));
    const auto start = std::chrono::steady_clock::now();
    HAMLET_ASSIGN_OR_RETURN(ExportedBundle exported,
                            server::ExportBundle(request->device_id(), store_->server_id(), *town_, *devices_, *clock_,
                                                 [&](const hamlet::v1::ExportBundleResponse& m) { writer->Write(m); }));
    if (request->path().empty()) {
      constexpr size_t kChunk = 1 << 20;
      hamlet::v1::ExportBundleResponse chunk;
      for (size_t at = 0; at < exported.bytes.size(); at += kChunk) {
        chunk.set_bundle_chunk(exported.bytes.substr(at, kChunk));
        if (!writer->Write(chunk)) return absl::CancelledError("the client went away before the bundle was sent");
      }
    } else {
      HAMLET_RETURN_IF_ERROR(storage::WriteFileAtomically(request->path(), exported.bytes, 0600));
    }
    const hamlet::v1::ExportBundleResponse& summary = exported.summary;
    const std::string figures =
        absl::StrCat(summary.records(), " records in ", summary.bytes(), " bytes, scope \"", summary.scope_unit_code(),
                     "\" from ", summary.from_beginning() ? "the beginning" : "its last pull");
    LogLine(absl::StrCat("export bundle for device ", request->device_id(), " to ",
                         request->path().empty() ? "the response" : request->path(), ": ", figures, " in ",
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), " s"));
    HAMLET_RETURN_IF_ERROR(
        store_->AppendAudit(AuditOf(admin, "export_bundle", request->device_id(), figures, clock_->NowMs())).status());
    writer->Write(summary);
    return absl::OkStatus();
  });
}

}  // namespace hamlet::server
