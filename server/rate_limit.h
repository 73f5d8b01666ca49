#ifndef HAMLET_SERVER_RATE_LIMIT_H_
#define HAMLET_SERVER_RATE_LIMIT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "sync/clock.h"

namespace hamlet::server {

// Error payload of a refusal for rate (sent as trailing metadata, like those
// of server/town.h): how long, in milliseconds, until the device's next
// request would be admitted. With reason (hamlet-error-reason) RATE_LIMITED.
inline constexpr char kRetryAfterKey[] = "hamlet-retry-after-ms";

// A token bucket: it holds up to `burst` tokens, gains `rate` tokens a second
// and starts full; each request takes one. Time is given by the caller, in
// milliseconds, so the bucket itself reads no clock. Not thread-safe.
class TokenBucket {
 public:
  // REQUIRES: rate > 0, burst >= 1.
  TokenBucket(double rate, double burst, int64_t now_ms);

  // Takes a token if one is there at `now_ms` and returns zero; otherwise
  // takes nothing and returns how long until one will be (at least 1 ms).
  // A clock that went back counts as no time passed, never as a debt.
  absl::Duration Take(int64_t now_ms);

  // True if the bucket is full at `now_ms`: a new bucket would behave the same.
  bool FullAt(int64_t now_ms) const;

 private:
  double TokensAt(int64_t now_ms) const;

  double rate_per_ms_;
  double burst_;
  double tokens_;
  int64_t last_ms_;
};

// How many requests a second each device may make: one token bucket per
// device id, created on its first request. With a rate of 0 everything is
// admitted and nothing is kept. Buckets that have filled up again are dropped
// now and then, so memory follows the devices active in the last
// burst / rate seconds, not every device ever seen. Thread-safe.
class DeviceRateLimit {
 public:
  // `clock` must outlive the limit. REQUIRES: requests_per_second >= 0, and
  // burst >= 1 when requests_per_second > 0.
  DeviceRateLimit(const sync::PhysicalClock* clock, double requests_per_second, int burst);

  // OK if `device_id` may make a request now (and counts it); otherwise
  // RESOURCE_EXHAUSTED saying when to retry, with payloads
  // hamlet-error-reason = RATE_LIMITED and kRetryAfterKey. A refused request
  // is not counted.
  absl::Status Admit(absl::string_view device_id);

  bool enabled() const { return requests_per_second_ > 0; }
  // Buckets held now.
  size_t tracked_devices() const;

 private:
  const sync::PhysicalClock* const clock_;
  const double requests_per_second_;
  const int burst_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, TokenBucket> buckets_ ABSL_GUARDED_BY(mu_);
  // Full buckets are dropped when the map grows to this size.
  size_t next_prune_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_RATE_LIMIT_H_
