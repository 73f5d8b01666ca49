#include "client/protocol.h"

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
    const bool timed_out = result.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (result.status.ok() || !Retryable(result.status.error_code()) || attempt >= policy.max_attempts ||
        (timed_out && policy.on_deadline == RetryPolicy::OnDeadline::kReturn)) {
      return result;
    }
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff * absl::Uniform(gen, 0.5, 1.5)));
    backoff = std::min(backoff * 2, policy.max_backoff);
  }
}

LinkPace::LinkPace(const Options& options)
    : options_(options),
      budget_(std::clamp(options.first_bytes, options.min_bytes, options.max_bytes)),
      overhead_(options.overhead) {}

absl::Duration LinkPace::DeadlineFor(size_t bytes) const {
  const double rate = rate_ > 0 ? rate_ : options_.assumed_bytes_per_second;
  return overhead_ + absl::Seconds(options_.slack * static_cast<double>(bytes) / rate);
}

void LinkPace::Finished(size_t bytes, absl::Duration took) {
  // The time includes the round trips, so a small call understates the
  // rate: deadlines err long, which is the safe side.
  const double seconds = std::max(absl::ToDoubleSeconds(took), 1e-3);
  const double sample = static_cast<double>(bytes) / seconds;
  rate_ = rate_ > 0 ? (rate_ + sample) / 2 : sample;
  overhead_ = std::max(overhead_ / 2, options_.overhead);
  if (took < options_.quick) {
    budget_ = std::min(budget_ * 2, options_.max_bytes);
  } else if (took > options_.quick * 4) {
    budget_ = std::max(budget_ / 2, options_.min_bytes);
  }
}

void LinkPace::TimedOut() {
  budget_ = std::max(budget_ / 2, options_.min_bytes);
  overhead_ = std::min(overhead_ * 2, std::max(options_.max_overhead, options_.overhead));
  // Whatever was measured, or assumed, overstated what the link does now.
  if (rate_ > 0) {
    rate_ /= 2;
  } else {
    options_.assumed_bytes_per_second /= 2;
  }
}

}  // namespace hamlet::field
