#ifndef HAMLET_SERVER_CHANGE_FEED_H_
#define HAMLET_SERVER_CHANGE_FEED_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace hamlet::server {

// Tells Watch streams that the store's last sequence number moved. Thread-safe.
class ChangeFeed {
 public:
  explicit ChangeFeed(uint64_t last_seq) : last_seq_(last_seq) {}

  // A commit reached `seq`.
  void Publish(uint64_t seq);

  // Blocks until the last sequence number is above `seen`, the feed is closed,
  // or `timeout` passes. Returns the last sequence number.
  uint64_t WaitAbove(uint64_t seen, absl::Duration timeout);

  // Wakes every waiter for good (server shutdown).
  void Close();
  bool closed() const;

 private:
  mutable absl::Mutex mu_;
  uint64_t last_seq_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_CHANGE_FEED_H_
