#include "sync/clock.h"

#include <algorithm>
#include <chrono>
#include <limits>

namespace hamlet::sync {

int64_t SystemClock::NowMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const SystemClock* SystemClock::Get() {
  static const SystemClock* clock = new SystemClock();
  return clock;
}

HybridClock::HybridClock(const PhysicalClock* physical, std::string node)
    : physical_(physical), node_(std::move(node)) {}

hamlet::v1::Stamp HybridClock::Now() {
  const int64_t pt = physical_->NowMs();
  absl::MutexLock lock(&mu_);
  if (pt > last_physical_ms_) {
    Set(pt, 0);
  } else {
    Set(last_physical_ms_, uint64_t{last_logical_} + 1);
  }
  hamlet::v1::Stamp s;
  s.set_physical_ms(last_physical_ms_);
  s.set_logical(last_logical_);
  s.set_node(node_);
  return s;
}

void HybridClock::Observe(const hamlet::v1::Stamp& remote) {
  const int64_t pt = physical_->NowMs();
  absl::MutexLock lock(&mu_);
  const int64_t l = std::max({last_physical_ms_, remote.physical_ms(), pt});
  if (l == last_physical_ms_ && l == remote.physical_ms()) {
    Set(l, uint64_t{std::max(last_logical_, remote.logical())} + 1);
  } else if (l == last_physical_ms_) {
    Set(l, uint64_t{last_logical_} + 1);
  } else if (l == remote.physical_ms()) {
    Set(l, uint64_t{remote.logical()} + 1);
  } else {
    Set(l, 0);
  }
}

void HybridClock::Set(int64_t physical_ms, uint64_t logical) {
  // A logical counter past its 32 bits carries into the millisecond, so that
  // the clock never goes back (a stamp of logical 2^32-1 must be followed by a
  // greater one, not by logical 0 of the same millisecond).
  if (logical > std::numeric_limits<uint32_t>::max()) {
    ++physical_ms;
    logical = 0;
  }
  last_physical_ms_ = physical_ms;
  last_logical_ = static_cast<uint32_t>(logical);
}

hamlet::v1::Stamp HybridClock::Last() const {
  absl::MutexLock lock(&mu_);
  hamlet::v1::Stamp s;
  s.set_physical_ms(last_physical_ms_);
  s.set_logical(last_logical_);
  s.set_node(node_);
  return s;
}

void HybridClock::Restore(const hamlet::v1::Stamp& last) { Observe(last); }

}  // namespace hamlet::sync
