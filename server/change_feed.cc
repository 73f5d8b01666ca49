#include "server/change_feed.h"

#include <algorithm>

namespace hamlet::server {

void ChangeFeed::Publish(uint64_t seq) {
  absl::MutexLock lock(&mu_);
  last_seq_ = std::max(last_seq_, seq);
}

uint64_t ChangeFeed::WaitAbove(uint64_t seen, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const auto moved = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || last_seq_ > seen; };
  mu_.AwaitWithTimeout(absl::Condition(&moved), timeout);
  return last_seq_;
}

void ChangeFeed::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

bool ChangeFeed::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

}  // namespace hamlet::server
