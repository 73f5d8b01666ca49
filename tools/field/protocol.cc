#include "tools/field/protocol.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"

namespace hamlet::field {

bool Refused(grpc::StatusCode code) {
  return code == grpc::StatusCode::INVALID_ARGUMENT || code == grpc::StatusCode::FAILED_PRECONDITION ||
         code == grpc::StatusCode::ALREADY_EXISTS || code == grpc::StatusCode::PERMISSION_DENIED;
}

bool Retryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::RESOURCE_EXHAUSTED || code == grpc::StatusCode::ABORTED;
}

absl::Status FromGrpc(const grpc::Status& status, absl::string_view what) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

void CallCanceller::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (current_ != nullptr) current_->TryCancel();
}

bool CallCanceller::Begin(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  current_ = context;
  return true;
}

void CallCanceller::End() {
  absl::MutexLock lock(&mu_);
  current_ = nullptr;
}

CallResult CallWithRetry(const RetryPolicy& policy, const std::string& token,
                         const std::function<grpc::Status(grpc::ClientContext*)>& call, CallCanceller* canceller) {
  absl::BitGen gen;
  absl::Duration backoff = policy.first_backoff;
  CallResult result;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(policy.call_timeout));
    if (!token.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
    if (canceller != nullptr && !canceller->Begin(&context)) {
      result.status = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
      result.reason.clear();
      return result;
    }
    result.status = call(&context);
    if (canceller != nullptr) canceller->End();
    result.reason.clear();
    const auto& trailers = context.GetServerTrailingMetadata();
    if (auto it = trailers.find("hamlet-error-reason"); it != trailers.end()) {
      result.reason.assign(it->second.data(), it->second.size());
    }
    if (result.status.ok() || !Retryable(result.status.error_code()) || attempt >= policy.max_attempts) {
      return result;
    }
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff * absl::Uniform(gen, 0.5, 1.5)));
    backoff = std::min(backoff * 2, policy.max_backoff);
  }
}

}  // namespace hamlet::field
