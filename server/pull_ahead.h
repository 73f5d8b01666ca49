#ifndef HAMLET_SERVER_PULL_AHEAD_H_
#define HAMLET_SERVER_PULL_AHEAD_H_

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
// caller, and nothing was committed since (Town::published_seq is the value
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

  // `readers` runs the reads and must outlive every read: destroy it first.
  // `counted`, if set, is told how each page ended: "served" (to the pull it
  // was read for), "stale" (a commit came after its read began) or "unused"
  // (another pull came, or none; its read had not begun; or it failed).
  // It is called under PullAhead's lock, so it must not call back.
  PullAhead(WorkPool* readers, size_t max_pages, std::function<void(const char* outcome)> counted = nullptr);

  // Reads `next` for `caller` ahead with `read`, unless no place is free.
  // `published_seq`: the town's, before `read` runs.
  void Start(const hamlet::v1::PullRequest& next, const Caller& caller, uint64_t published_seq, Read read);
  // The page read ahead for `request` from `caller`, if the town's
  // published seq is still `published_seq`; waits for its read if that has
  // begun. nullopt if there is none, and then any page kept for the device
  // is dropped.
  std::optional<PulledPage> Take(const hamlet::v1::PullRequest& request, const Caller& caller, uint64_t published_seq);

 private:
  struct Page;
  // What a page read ahead answers: caller and request, as one string.
  static std::string KeyOf(const hamlet::v1::PullRequest& request, const Caller& caller);
  // Ends `page`, taken out of the map, as `outcome`; a read of it not begun
  // will not be.
  void End(Page& page, const char* outcome) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  WorkPool* const readers_;
  const size_t max_pages_;
  const std::function<void(const char* outcome)> counted_;
  absl::Mutex mu_;
  // By device id.
  std::map<std::string, std::shared_ptr<Page>> pages_ ABSL_GUARDED_BY(mu_);
  uint64_t started_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_PULL_AHEAD_H_
