#include "server/rate_limit.h"

#include <algorithm>
#include <cassert>
#include <cmath>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/town.h"

namespace hamlet::server {
namespace {

// Below this many buckets nothing is pruned.
constexpr size_t kMinPruneSize = 1024;
// Tokens are summed in floating point: a request arriving exactly when the
// last refusal said may find 0.999999999 of a token. It gets it.
constexpr double kTokenSlack = 1e-9;

}  // namespace

TokenBucket::TokenBucket(double rate, double burst, int64_t now_ms)
    : rate_per_ms_(rate / 1000.0), burst_(burst), tokens_(burst), last_ms_(now_ms) {
  assert(rate > 0 && burst >= 1);
}

double TokenBucket::TokensAt(int64_t now_ms) const {
  const int64_t elapsed_ms = std::max<int64_t>(0, now_ms - last_ms_);
  return std::min(burst_, tokens_ + static_cast<double>(elapsed_ms) * rate_per_ms_);
}

absl::Duration TokenBucket::Take(int64_t now_ms) {
  tokens_ = TokensAt(now_ms);
  // After a step back the clock counts from where it is now; keeping the old
  // mark would starve the device until the clock caught up with it.
  last_ms_ = now_ms;
  if (tokens_ + kTokenSlack >= 1) {
    tokens_ = std::max(0.0, tokens_ - 1);
    return absl::ZeroDuration();
  }
  const double wait_ms = std::ceil((1 - tokens_) / rate_per_ms_ - 1e-6);
  return absl::Milliseconds(std::max(1.0, wait_ms));
}

bool TokenBucket::FullAt(int64_t now_ms) const { return TokensAt(now_ms) >= burst_; }

DeviceRateLimit::DeviceRateLimit(const sync::PhysicalClock* clock, double requests_per_second, int burst)
    : clock_(clock), requests_per_second_(requests_per_second), burst_(burst), next_prune_(kMinPruneSize) {
  assert(requests_per_second >= 0);
  assert(requests_per_second == 0 || burst >= 1);
}

absl::Status DeviceRateLimit::Admit(absl::string_view device_id) {
  if (!enabled()) return absl::OkStatus();
  const int64_t now_ms = clock_->NowMs();
  absl::Duration wait;
  {
    absl::MutexLock lock(&mu_);
    if (buckets_.size() >= next_prune_) {
      absl::erase_if(buckets_, [now_ms](const auto& entry) { return entry.second.FullAt(now_ms); });
      next_prune_ = std::max(kMinPruneSize, 2 * buckets_.size());
    }
    auto it = buckets_.find(device_id);
    if (it == buckets_.end()) {
      it = buckets_.try_emplace(std::string(device_id), requests_per_second_, burst_, now_ms).first;
    }
    wait = it->second.Take(now_ms);
  }
  if (wait == absl::ZeroDuration()) return absl::OkStatus();
  const int64_t wait_ms = absl::ToInt64Milliseconds(wait);
  absl::Status status = absl::ResourceExhaustedError(
      absl::StrFormat("device %s is over its rate of %g requests/s (bursts of %d); retry after ~%d ms", device_id,
                      requests_per_second_, burst_, wait_ms));
  status.SetPayload(kReasonKey, absl::Cord("RATE_LIMITED"));
  status.SetPayload(kRetryAfterKey, absl::Cord(absl::StrCat(wait_ms)));
  return status;
}

size_t DeviceRateLimit::tracked_devices() const {
  absl::MutexLock lock(&mu_);
  return buckets_.size();
}

}  // namespace hamlet::server
