#include "server/sync_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"

namespace hamlet::server {

grpc::Status ToGrpc(const absl::Status& status, grpc::ServerContext* context) {
  if (status.ok()) return grpc::Status::OK;
  status.ForEachPayload([context](absl::string_view key, const absl::Cord& value) {
    context->AddTrailingMetadata(std::string(key), std::string(value));
  });
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<Caller> Authenticate(const DeviceRegistry& devices, const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  const absl::string_view value =
      it == metadata.end() ? absl::string_view() : absl::string_view(it->second.data(), it->second.size());
  const auto auth = context.auth_context();
  return devices.Authenticate(value, context.peer(), auth != nullptr && auth->IsPeerAuthenticated());
}

grpc::Status SyncServiceImpl::Push(grpc::ServerContext* context, const hamlet::v1::PushRequest* request,
                                   hamlet::v1::PushResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Caller> caller = Authenticate(*devices_, *context);
  absl::StatusOr<hamlet::v1::PushResponse> result =
      caller.ok() ? town_->Push(*request, *caller) : absl::StatusOr<hamlet::v1::PushResponse>(caller.status());
  const auto took = std::chrono::steady_clock::now() - start;
  const double ms = std::chrono::duration<double, std::milli>(took).count();
  metrics_->CountCall("Push", static_cast<grpc::StatusCode>(result.status().code()), absl::FromChrono(took));
  if (result.ok()) {
    *response = std::move(*result);
    metrics_->CountRecordsApplied(response->applied_records());
  }
  LogLine(absl::StrFormat("push device=%s batch=%s peer=%s records=%d applied=%d seq=%d result=%s time_ms=%.1f%s%s",
                          request->device_id(), request->batch_id(), context->peer(), request->changes_size(),
                          result.ok() ? response->applied_records() : 0, result.ok() ? response->server_seq() : 0,
                          absl::StatusCodeToString(result.status().code()), ms, result.ok() ? "" : " error=",
                          result.ok() ? "" : result.status().message()));
  return ToGrpc(result.status(), context);
}

grpc::Status SyncServiceImpl::Pull(grpc::ServerContext* context, const hamlet::v1::PullRequest* request,
                                   hamlet::v1::PullResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Caller> caller = Authenticate(*devices_, *context);
  absl::StatusOr<hamlet::v1::PullResponse> result =
      caller.ok() ? town_->Pull(*request, *caller) : absl::StatusOr<hamlet::v1::PullResponse>(caller.status());
  metrics_->CountCall("Pull", static_cast<grpc::StatusCode>(result.status().code()),
                      absl::FromChrono(std::chrono::steady_clock::now() - start));
  if (!result.ok()) {
    LogLine(absl::StrFormat("pull device=%s scope=%s result=%s error=%s", request->device_id(),
                            request->scope_unit_code(), absl::StatusCodeToString(result.status().code()),
                            result.status().message()));
    return ToGrpc(result.status(), context);
  }
  *response = std::move(*result);
  metrics_->CountRecordsPulled(static_cast<uint64_t>(response->records_size()));
  return grpc::Status::OK;
}

grpc::Status SyncServiceImpl::Watch(grpc::ServerContext* context, const hamlet::v1::WatchRequest* request,
                                    grpc::ServerWriter<hamlet::v1::WatchResponse>* writer) {
  absl::StatusOr<Caller> caller = Authenticate(*devices_, *context);
  if (!caller.ok()) return ToGrpc(caller.status(), context);
  absl::StatusOr<Town::WatchStart> start = town_->StartWatch(*request, *caller);
  if (!start.ok()) return ToGrpc(start.status(), context);
  uint64_t seen = start->seq;
  metrics_->WatchOpened();
  struct Closed {
    Metrics* metrics;
    ~Closed() { metrics->WatchClosed(); }
  } closed{metrics_};
  // Wake at least once a second to notice a cancelled call, a shutdown or a
  // revoked token.
  while (!context->IsCancelled() && !town_->feed().closed()) {
    const uint64_t last = town_->feed().WaitAbove(seen, absl::Seconds(1));
    if (absl::StatusOr<Caller> still = Authenticate(*devices_, *context); !still.ok()) {
      return ToGrpc(still.status(), context);
    }
    if (last <= seen) continue;
    absl::StatusOr<bool> has_changes = town_->HasChangesAfter(start->scope, seen);
    if (!has_changes.ok()) return ToGrpc(has_changes.status(), context);
    seen = last;
    if (!*has_changes) continue;
    hamlet::v1::WatchResponse message;
    message.set_server_seq(last);
    if (!writer->Write(message)) break;
  }
  return grpc::Status::OK;
}

grpc::Status SyncServiceImpl::ResolveConflict(grpc::ServerContext* context,
                                              const hamlet::v1::ResolveConflictRequest* request,
                                              hamlet::v1::ResolveConflictResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Caller> caller = Authenticate(*devices_, *context);
  absl::StatusOr<hamlet::v1::ResolveConflictResponse> result =
      caller.ok() ? town_->ResolveConflict(*request, *caller)
                  : absl::StatusOr<hamlet::v1::ResolveConflictResponse>(caller.status());
  metrics_->CountCall("ResolveConflict", static_cast<grpc::StatusCode>(result.status().code()),
                      absl::FromChrono(std::chrono::steady_clock::now() - start));
  LogLine(absl::StrFormat("resolve device=%s request=%s record=%s field=%d resolver=%s result=%s%s%s",
                          request->device_id(), request->request_id(), request->record_id(), request->field(),
                          request->resolver(), absl::StatusCodeToString(result.status().code()),
                          result.ok() ? "" : " error=", result.ok() ? "" : result.status().message()));
  if (result.ok()) *response = std::move(*result);
  return ToGrpc(result.status(), context);
}

}  // namespace hamlet::server
