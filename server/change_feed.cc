#include "server/change_feed.h"

#include <algorithm>

namespace hamlet::server {

namespace {
constexpr size_t kRememberedCommits = 4096;
}  // namespace

void ChangeFeed::Publish(uint64_t seq, const std::vector<std::string>& communes) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (const std::string& commune : communes) {
    uint64_t& latest = latest_by_commune_[commune];
    latest = std::max(latest, seq);
  }
  if (!communes.empty()) ++publications_;
  if (seq <= last_seq_) return;
  last_seq_ = seq;
  if (commits_.size() >= kRememberedCommits) {
    // Keep every other commit: a dropped commit's time is then read from the
    // remembered one before it, which is earlier, so a lag is never understated.
    std::deque<std::pair<uint64_t, absl::Time>> kept;
    for (size_t i = 0; i < commits_.size(); i += 2) kept.push_back(commits_[i]);
    commits_.swap(kept);
    thinned_ = true;
  }
  commits_.emplace_back(seq, now);
}

uint64_t ChangeFeed::LatestIn(const storage::ChangeScope& scope) const {
  absl::MutexLock lock(&mu_);
  if (scope.whole_server()) return last_seq_;
  uint64_t latest = first_seq_;
  for (const std::string& bucket : scope.buckets()) {
    if (auto it = latest_by_commune_.find(bucket); it != latest_by_commune_.end())
      latest = std::max(latest, it->second);
  }
  return latest;
}

uint64_t ChangeFeed::last_seq() const {
  absl::MutexLock lock(&mu_);
  return last_seq_;
}

absl::Time ChangeFeed::FirstCommitAfter(uint64_t seq) const {
  absl::MutexLock lock(&mu_);
  if (seq >= last_seq_) return absl::InfiniteFuture();
  if (seq < first_seq_) return start_;
  // The commit holding seq + 1 is the first remembered one at or above it,
  // or (if thinned away) lies after the remembered one before that.
  auto it = std::lower_bound(commits_.begin(), commits_.end(), seq + 1,
                             [](const auto& commit, uint64_t s) { return commit.first < s; });
  if (it == commits_.end()) return start_;
  if (!thinned_ || it == commits_.begin()) return it->second;
  return std::prev(it)->second;
}

uint64_t ChangeFeed::WaitAbove(uint64_t seen, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  const auto moved = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || last_seq_ > seen; };
  mu_.AwaitWithTimeout(absl::Condition(&moved), timeout);
  return last_seq_;
}

uint64_t ChangeFeed::WaitForPublication(uint64_t seen, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  const auto moved = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || publications_ > seen; };
  mu_.AwaitWithTimeout(absl::Condition(&moved), timeout);
  return publications_;
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
