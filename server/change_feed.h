#ifndef HAMLET_SERVER_CHANGE_FEED_H_
#define HAMLET_SERVER_CHANGE_FEED_H_

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/town_store.h"

namespace hamlet::server {

// Tells Watch streams (and the replicator) that the store's last sequence
// number moved, and remembers roughly when each commit happened. Thread-safe.
class ChangeFeed {
 public:
  explicit ChangeFeed(uint64_t last_seq) : last_seq_(last_seq), start_(absl::Now()) {}

  // A durable commit reached `seq`, changing records of `communes` ("" for
  // records above commune level).
  void Publish(uint64_t seq, const std::vector<std::string>& communes);

  // The latest change published in `scope` (the last sequence number when
  // the feed was created, for every scope, until one is published there), so
  // a watcher knows without reading the store.
  uint64_t LatestIn(const storage::ChangeScope& scope) const;
  uint64_t last_seq() const;

  // When the first commit after `seq` happened: exact while fewer than 4096
  // commits are remembered, coarser (never later) beyond; the time the feed
  // was created for commits from before it. InfiniteFuture if nothing was
  // committed after `seq`.
  absl::Time FirstCommitAfter(uint64_t seq) const;

  // Blocks until the last sequence number is above `seen`, the feed is closed,
  // or `timeout` passes. Returns the last sequence number.
  uint64_t WaitAbove(uint64_t seen, absl::Duration timeout) const;
  // Blocks until more than `seen` publications were made (commits may publish
  // out of order, so a commune can move while the last sequence number does
  // not), the feed is closed, or `timeout` passes. Returns the count.
  uint64_t WaitForPublication(uint64_t seen, absl::Duration timeout) const;

  // Wakes every waiter for good (server shutdown).
  void Close();
  bool closed() const;

 private:
  mutable absl::Mutex mu_;
  uint64_t last_seq_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t, std::less<>> latest_by_commune_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t publications_ ABSL_GUARDED_BY(mu_) = 0;
  const uint64_t first_seq_ = last_seq_;
  const absl::Time start_;
  // (seq, time) of commits in seq order; thinned to every other entry when full.
  std::deque<std::pair<uint64_t, absl::Time>> commits_ ABSL_GUARDED_BY(mu_);
  bool thinned_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_CHANGE_FEED_H_
