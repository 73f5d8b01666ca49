#ifndef HAMLET_SERVER_PULL_AHEAD_H_
#define HAMLET_SERVER_PULL_AHEAD_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "hamlet/v1/sync.pb.h"
#include "server/devices.h"
#include "server/town.h"
#include "server/work_pool.h"

namespace hamlet::server {

// The page a catch-up asks for next, read while the device takes in the last.
//
// A catch-up is a chain of pulls: a device asks for the next page once it
// has received and parsed the last, and a server that reads a page only once
// asked leaves the disk idle while the device works, and the device idle
// while the server reads. Once a page with more to come is answered,
// PullAhead reads the next one (the same request with the new cursor) on a
// reader thread. If the device's next pull is that request, from the same
// caller, and nothing was committed since (the store's last_seq is the one
// the read began at), it gets that page, which is exactly what a read then
// would return; if the read is under way, it waits for it. Anything else
// drops the page and the pull is read as usual.
//
// One page is kept a device, and at most `max_pages` in all: a new page
// takes the place of the oldest one no reader is busy with, or is not read.
// Thread-safe.
class PullAhead {
 public:
  using Read = std::function<absl::StatusOr<PulledPage>()>;
  // What became of the pages read ahead (for metrics).
  struct Counts {
    uint64_t served = 0;  // taken by the pull they were read for
    uint64_t stale = 0;   // asked for, but a commit came after their read began
    uint64_t unused = 0;  // dropped: another pull came, their read had not begun or failed
  };

  // `readers` runs the reads and must outlive every read: destroy it first.
  // `counted`, if set, is told of each page's end: "served", "stale" or
  // "unused" (as in Counts).
  PullAhead(WorkPool* readers, size_t max_pages, std::function<void(const char* outcome)> counted = nullptr);

  // Reads `next` for `caller` ahead with `read`, unless no place is free.
  // `last_seq`: the store's, before `read` runs.
  void Start(const hamlet::v1::PullRequest& next, const Caller& caller, uint64_t last_seq, Read read);
  // The page read ahead for `request` from `caller`, if the store's last_seq
  // is still `last_seq`; waits for its read if that has begun. nullopt if
  // there is none, and then any page kept for the device is dropped.
  std::optional<PulledPage> Take(const hamlet::v1::PullRequest& request, const Caller& caller, uint64_t last_seq);

  Counts counts() const;

 private:
  struct Page;
  // What a page read ahead answers: caller and request, as one string.
  static std::string KeyOf(const hamlet::v1::PullRequest& request, const Caller& caller);
  // Counts `page`, taken out of the map, as unused; a read of it not begun
  // will not be.
  void Drop(Page& page) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Count(uint64_t Counts::*count, const char* outcome) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  WorkPool* const readers_;
  const size_t max_pages_;
  const std::function<void(const char* outcome)> counted_;
  mutable absl::Mutex mu_;
  // By device id.
  std::map<std::string, std::shared_ptr<Page>> pages_ ABSL_GUARDED_BY(mu_);
  uint64_t started_ ABSL_GUARDED_BY(mu_) = 0;
  Counts counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_PULL_AHEAD_H_
