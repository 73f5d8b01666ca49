#ifndef HAMLET_SYNC_CLOCK_H_
#define HAMLET_SYNC_CLOCK_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "hamlet/v1/sync.pb.h"

namespace hamlet::sync {

// Source of physical time, injected so tests control it.
// Implementations must be thread-safe.
class PhysicalClock {
 public:
  virtual ~PhysicalClock() = default;
  // Milliseconds since the Unix epoch.
  virtual int64_t NowMs() const = 0;
};

// The machine's wall clock.
class SystemClock final : public PhysicalClock {
 public:
  int64_t NowMs() const override;
  // A process-wide instance; never destroyed.
  static const SystemClock* Get();
};

// A clock that moves only when told. Thread-safe.
class FakeClock final : public PhysicalClock {
 public:
  explicit FakeClock(int64_t now_ms) : now_ms_(now_ms) {}
  int64_t NowMs() const override { return now_ms_.load(); }
  void Set(int64_t now_ms) { now_ms_.store(now_ms); }
  void Advance(int64_t delta_ms) { now_ms_.fetch_add(delta_ms); }

 private:
  std::atomic<int64_t> now_ms_;
};

// A hybrid logical clock (Kulkarni et al., 2014) for one node.
//
// Laws, each tested in tests/sync/clock_test.cc:
//  1. Now() is strictly increasing, whatever the physical clock does.
//  2. After Observe(s), every later Now() is greater than s.
//  3. physical_ms of a stamp never runs behind the physical clock: it is
//     max(physical clock, largest physical_ms seen).
// So a node whose physical clock runs behind still orders its edits after
// everything it has seen, and a stamp far ahead of real time drags every clock
// that observes it forward. Servers therefore refuse stamps ahead of their own
// physical clock by more than a set skew before observing them.
//
// Thread-safe.
class HybridClock {
 public:
  // `physical` must outlive the clock. `node` is written into every stamp.
  HybridClock(const PhysicalClock* physical, std::string node);

  hamlet::v1::Stamp Now();
  void Observe(const hamlet::v1::Stamp& remote);

  // The latest stamp issued or observed (node as issued by this clock).
  hamlet::v1::Stamp Last() const;
  // Continue from a stamp persisted earlier, so a restarted node never issues a
  // stamp below one it issued before the restart.
  void Restore(const hamlet::v1::Stamp& last);

  const PhysicalClock& physical() const { return *physical_; }

 private:
  const PhysicalClock* const physical_;
  const std::string node_;
  mutable absl::Mutex mu_;
  void Set(int64_t physical_ms, uint64_t logical) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  int64_t last_physical_ms_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t last_logical_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace hamlet::sync

#endif  // HAMLET_SYNC_CLOCK_H_
