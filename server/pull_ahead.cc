#include "server/pull_ahead.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace hamlet::server {

struct PullAhead::Page {
  enum class State { kQueued, kReading, kRead, kDropped };
  std::string key;
  uint64_t last_seq = 0;
  // Which Start made it: the smallest is the oldest.
  uint64_t order = 0;
  State state = State::kQueued;
  // Set once read, if the read succeeded.
  std::optional<PulledPage> page;
};

PullAhead::PullAhead(WorkPool* readers, size_t max_pages, std::function<void(const char* outcome)> counted)
    : readers_(readers), max_pages_(max_pages), counted_(std::move(counted)) {}

void PullAhead::Count(uint64_t Counts::*count, const char* outcome) {
  ++(counts_.*count);
  if (counted_) counted_(outcome);
}

std::string PullAhead::KeyOf(const hamlet::v1::PullRequest& request, const Caller& caller) {
  const sync::Principal& who = caller.principal;
  return absl::StrCat(caller.device_id, std::string(1, '\0'), static_cast<int>(who.role), std::string(1, '\0'),
                      who.unit_code, std::string(1, '\0'), who.person_id, std::string(1, '\0'),
                      request.SerializeAsString());
}

void PullAhead::Drop(Page& page) {
  Count(&Counts::unused, "unused");
  // A read not begun will not be; one under way ends unseen.
  if (page.state == Page::State::kQueued) page.state = Page::State::kDropped;
  page.page.reset();
}

void PullAhead::Start(const hamlet::v1::PullRequest& next, const Caller& caller, uint64_t last_seq, Read read) {
  auto page = std::make_shared<Page>();
  page->key = KeyOf(next, caller);
  page->last_seq = last_seq;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = pages_.find(caller.device_id); it != pages_.end()) {
      Drop(*it->second);
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
      Drop(*oldest->second);
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
                                          uint64_t last_seq) {
  absl::MutexLock lock(&mu_);
  auto it = pages_.find(caller.device_id);
  if (it == pages_.end()) return std::nullopt;
  std::shared_ptr<Page> page = std::move(it->second);
  pages_.erase(it);
  // Not read yet: reading it here is sooner than waiting for a reader.
  if (page->key != KeyOf(request, caller) || page->state == Page::State::kQueued) {
    Drop(*page);
    return std::nullopt;
  }
  const auto read = [&page]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return page->state == Page::State::kRead; };
  mu_.Await(absl::Condition(&read));
  if (!page->page.has_value()) {
    Count(&Counts::unused, "unused");  // Its read failed.
    return std::nullopt;
  }
  if (page->last_seq != last_seq) {
    Count(&Counts::stale, "stale");
    return std::nullopt;
  }
  Count(&Counts::served, "served");
  return std::move(page->page);
}

PullAhead::Counts PullAhead::counts() const {
  absl::MutexLock lock(&mu_);
  return counts_;
}

}  // namespace hamlet::server
