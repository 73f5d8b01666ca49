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

CallResult CallWithRetry(const RetryPolicy& policy, const std::string& token,
                         const std::function<grpc::Status(grpc::ClientContext*)>& call) {
  absl::BitGen gen;
  absl::Duration backoff = policy.first_backoff;
  CallResult result;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(policy.call_timeout));
    if (!token.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
    result.status = call(&context);
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
