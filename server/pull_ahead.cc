#include "server/pull_ahead.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace hamlet::server {

struct PullAhead::Page {
  enum class State { kQueued, kReading, kRead, kDropped };
  std::string key;
  uint64_t published_seq = 0;
  // Which Start made it: the smallest is the oldest.
  uint64_t order = 0;
  State state = State::kQueued;
  // Set once read, if the read succeeded.
  std::optional<PulledPage> page;
};

PullAhead::PullAhead(WorkPool* readers, size_t max_pages, std::function<void(const char* outcome)> counted)
    : readers_(readers), max_pages_(max_pages), counted_(std::move(counted)) {}

std::string PullAhead::KeyOf(const hamlet::v1::PullRequest& request, const Caller& caller) {
  const sync::Principal& who = caller.principal;
  return absl::StrCat(caller.device_id, std::string(1, '\0'), static_cast<int>(who.role), std::string(1, '\0'),
                      who.unit_code, std::string(1, '\0'), who.person_id, std::string(1, '\0'),
                      request.SerializeAsString());
}

void PullAhead::End(Page& page, const char* outcome) {
  if (counted_) counted_(outcome);
  // A read not begun will not be; one under way ends unseen.
  if (page.state == Page::State::kQueued) page.state = Page::State::kDropped;
  page.page.reset();
}

void PullAhead::Start(const hamlet::v1::PullRequest& next, const Caller& caller, uint64_t published_seq, Read read) {
  auto page = std::make_shared<Page>();
  page->key = KeyOf(next, caller);
  page->published_seq = published_seq;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = pages_.find(caller.device_id); it != pages_.end()) {
      End(*it->second, "unused");
      pages_.erase(it);
    }
    if (pages_.size() >= max_pages_) {
      // The oldest page no reader is busy with makes room.
      auto oldest = pages_.end();
      for (auto it = pages_.begin(); it != pages_.end(); ++it) {
        if (it->second->state == Page::State::kReading) continue;
        if (oldest == pages_.end() || it->second->order < oldest->second->order) oldest = it;
      }
      if (oldest == pages_.end()) return;
      End(*oldest->second, "unused");
      pages_.erase(oldest);
    }
    page->order = ++started_;
    pages_[caller.device_id] = page;
  }
  readers_->Add([this, page, read = std::move(read)] {
    {
      absl::MutexLock lock(&mu_);
      if (page->state == Page::State::kDropped) return;
      page->state = Page::State::kReading;
    }
    absl::StatusOr<PulledPage> result = read();
    absl::MutexLock lock(&mu_);
    // An error is not kept: the pull that asks reads again, and answers it.
    if (result.ok()) page->page = *std::move(result);
    page->state = Page::State::kRead;
  });
}

std::optional<PulledPage> PullAhead::Take(const hamlet::v1::PullRequest& request, const Caller& caller,
                                          uint64_t published_seq) {
  absl::MutexLock lock(&mu_);
  auto it = pages_.find(caller.device_id);
  if (it == pages_.end()) return std::nullopt;
  std::shared_ptr<Page> page = std::move(it->second);
  pages_.erase(it);
  if (page->key != KeyOf(request, caller)) {
    End(*page, "unused");
    return std::nullopt;
  }
  // Decided before any wait: a commit since makes it stale, read or not.
  if (page->published_seq != published_seq) {
    End(*page, "stale");
    return std::nullopt;
  }
  // Not begun: reading it here is sooner than waiting for a reader.
  if (page->state == Page::State::kQueued) {
    End(*page, "unused");
    return std::nullopt;
  }
  const auto read = [&page]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return page->state == Page::State::kRead; };
  mu_.Await(absl::Condition(&read));
  if (!page->page.has_value()) {
    End(*page, "unused");  // Its read failed.
    return std::nullopt;
  }
  if (counted_) counted_("served");
  return std::move(page->page);
}

}  // namespace hamlet::server
