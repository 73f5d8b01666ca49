#include "server/replicator.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "server/log.h"
#include "server/sha256.h"
#include "sync/access.h"
#include "sync/status_macros.h"
#include "sync/uuid.h"

namespace hamlet::server {

using google::protobuf::util::TimeUtil;
using hamlet::v1::Record;

absl::StatusOr<std::unique_ptr<Replicator>> Replicator::Start(Town* town, storage::TownStore* store,
                                                              const ChangeFeed* feed, const sync::PhysicalClock* clock,
                                                              ReplicatorOptions options) {
  if (options.upstream.empty()) return absl::InvalidArgumentError("replication needs an upstream address");
  if (options.token.empty()) return absl::InvalidArgumentError("replication needs the upstream's token");
  HAMLET_ASSIGN_OR_RETURN(storage::ReplicationState state, store->GetReplicationState());
  if (state.upstream() != options.upstream) {
    if (!state.upstream().empty()) {
      LogLine(absl::StrCat("replication: upstream changed from ", state.upstream(), " to ", options.upstream,
                           "; sending everything again from the beginning"));
    }
    state = storage::ReplicationState();
    state.set_upstream(options.upstream);
    HAMLET_RETURN_IF_ERROR(store->PutReplicationState(state));
  }
  std::unique_ptr<Replicator> replicator(
      new Replicator(town, store, feed, clock, std::move(options), std::move(state)));
  replicator->thread_ = std::thread([r = replicator.get()] { r->Run(); });
  return replicator;
}

Replicator::Replicator(Town* town, storage::TownStore* store, const ChangeFeed* feed, const sync::PhysicalClock* clock,
                       ReplicatorOptions options, storage::ReplicationState state)
    : town_(town), store_(store), feed_(feed), clock_(clock), options_(std::move(options)), state_(std::move(state)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options_.max_message_bytes);
  args.SetMaxSendMessageSize(options_.max_message_bytes);
  // gRPC waits up to 120 s between connection attempts after failures by
  // default, which after a long outage would keep a town from its returned
  // province longer than its own backoff does; the two are capped alike.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(options_.max_backoff), INT32_MAX)));
  channel_ = grpc::CreateCustomChannel(
      options_.upstream, options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(), args);
  stub_ = hamlet::v1::SyncService::NewStub(channel_);
  LogLine(absl::StrCat("replication: to ", options_.upstream, " as device ", store_->server_id(), ", from seq ",
                       state_.acked_seq(), state_.paused() ? " (paused)" : ""));
}

Replicator::~Replicator() { Stop(); }

void Replicator::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  canceller_.Cancel();
  if (thread_.joinable()) thread_.join();
}

void Replicator::Sleep(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || woken_; };
  mu_.AwaitWithTimeout(absl::Condition(&wake), timeout);
  woken_ = false;
}

absl::Status Replicator::SaveState(const storage::ReplicationState& state) {
  HAMLET_RETURN_IF_ERROR(store_->PutReplicationState(state));
  state_ = state;
  return absl::OkStatus();
}

absl::Status Replicator::Pause() { return SetPaused(true); }
absl::Status Replicator::Resume() { return SetPaused(false); }

absl::Status Replicator::SetPaused(bool paused) {
  absl::MutexLock lock(&mu_);
  storage::ReplicationState next = state_;
  next.set_paused(paused);
  HAMLET_RETURN_IF_ERROR(SaveState(next));
  woken_ = true;
  return absl::OkStatus();
}

void Replicator::Run() {
  absl::Duration backoff = absl::Seconds(1);
  absl::Time next_reference_pull = absl::InfinitePast();
  std::string reported_error;
  while (true) {
    uint64_t acked;
    bool paused;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      paused = state_.paused();
      if (paused) last_error_.clear();
      acked = state_.acked_seq();
    }
    if (paused) {
      Sleep(absl::Hours(1));  // Until resumed or stopped.
      continue;
    }
    bool caught_up = false;
    absl::Status status = PushPage(&caught_up);
    if (status.ok() && absl::Now() >= next_reference_pull) {
      status = PullReference();
      if (status.ok()) next_reference_pull = absl::Now() + options_.poll_interval;
    }
    {
      absl::MutexLock lock(&mu_);
      last_error_ = status.ok() ? "" : std::string(status.message());
    }
    if (!status.ok()) {
      // One log line per kind of failure, not one per attempt.
      if (reported_error != status.message()) {
        reported_error = std::string(status.message());
        LogLine(absl::StrCat("replication: ", status.ToString(), "; retrying with backoff up to ",
                             absl::FormatDuration(options_.max_backoff)));
      }
      Sleep(backoff);
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    if (!reported_error.empty()) {
      LogLine(absl::StrCat("replication: upstream ", options_.upstream, " reachable again"));
      reported_error.clear();
    }
    backoff = absl::Seconds(1);
    if (!caught_up) continue;
    // Caught up: wait for a local commit, the next reference pull, or a stop.
    const absl::Duration until_pull =
        std::max(absl::ZeroDuration(), std::min(next_reference_pull - absl::Now(), absl::Seconds(1)));
    if (feed_->closed()) {
      Sleep(until_pull);
    } else {
      feed_->WaitAbove(acked, until_pull);
    }
  }
}

absl::Status Replicator::PushPage(bool* caught_up) {
  uint64_t acked;
  {
    absl::MutexLock lock(&mu_);
    acked = state_.acked_seq();
  }
  HAMLET_ASSIGN_OR_RETURN(
      storage::ChangePage page,
      store_->ReadChanges(storage::ChangeScope::WholeServer(), acked, static_cast<size_t>(options_.batch_records),
                          static_cast<size_t>(options_.batch_bytes), storage::CountRemaining::kNo));
  *caught_up = page.records.empty();
  if (*caught_up) return absl::OkStatus();
  hamlet::v1::PushRequest request;
  request.set_device_id(store_->server_id());
  request.set_app_version("hamletd-replicator");
  for (Record& record : page.records) {
    if (!sync::PrepareForProvince(&record)) continue;
    record.clear_server_seq();
    *request.add_changes() = std::move(record);
  }
  const int sent = request.changes_size();
  if (sent > 0) {
    // The batch id is named after the content, so a retry of the same page
    // (after a lost answer or a restart) is answered as the first time, and a
    // page whose records moved on in between is a new batch.
    std::string content = store_->server_id();
    for (const Record& change : request.changes()) content += change.SerializeAsString();
    request.set_batch_id(sync::FormatUuid(Sha256(content), 8));
    hamlet::v1::PushResponse response;
    field::CallResult result = field::CallWithRetry(
        options_.retry, options_.token,
        [&](grpc::ClientContext* context) { return stub_->Push(context, request, &response); }, &canceller_);
    if (!result.status.ok()) {
      return field::FromGrpc(result.status, absl::StrCat("push of ", sent, " records to ", options_.upstream));
    }
  }
  absl::MutexLock lock(&mu_);
  storage::ReplicationState next = state_;
  next.set_acked_seq(page.through_seq);
  if (sent > 0) next.set_last_ack_ms(clock_->NowMs());
  HAMLET_RETURN_IF_ERROR(SaveState(next));
  records_sent_ += static_cast<uint64_t>(sent);
  return absl::OkStatus();
}

absl::Status Replicator::PullReference() {
  std::string cursor;
  {
    absl::MutexLock lock(&mu_);
    cursor = state_.down_cursor();
  }
  bool restarted = false;
  while (true) {
    hamlet::v1::PullRequest request;
    request.set_device_id(store_->server_id());
    request.set_reference_only(true);
    request.set_cursor(cursor);
    hamlet::v1::PullResponse response;
    field::CallResult result = field::CallWithRetry(
        options_.retry, options_.token,
        [&](grpc::ClientContext* context) { return stub_->Pull(context, request, &response); }, &canceller_);
    if (result.status.error_code() == grpc::StatusCode::FAILED_PRECONDITION && result.reason == "CURSOR_INVALIDATED" &&
        !restarted) {
      // The upstream was restored from a backup or replaced: it may have lost
      // what it acknowledged since. Send everything again (merging what it
      // still has changes nothing) and take its reference data again.
      LogLine(absl::StrCat("replication: ", options_.upstream,
                           " no longer knows our cursor (restored or replaced); sending everything again"));
      absl::MutexLock lock(&mu_);
      storage::ReplicationState next = state_;
      next.set_acked_seq(0);
      next.clear_down_cursor();
      HAMLET_RETURN_IF_ERROR(SaveState(next));
      cursor.clear();
      restarted = true;
      continue;
    }
    if (!result.status.ok()) return field::FromGrpc(result.status, absl::StrCat("pull from ", options_.upstream));
    std::vector<Record> records(std::make_move_iterator(response.mutable_records()->begin()),
                                std::make_move_iterator(response.mutable_records()->end()));
    HAMLET_ASSIGN_OR_RETURN(size_t changed, town_->ApplyUpstreamUnits(std::move(records)));
    if (changed > 0) LogLine(absl::StrCat("replication: ", changed, " admin units changed by ", options_.upstream));
    absl::MutexLock lock(&mu_);
    if (response.next_cursor() != state_.down_cursor()) {  // An idle upstream costs no write here.
      storage::ReplicationState next = state_;
      next.set_down_cursor(response.next_cursor());
      HAMLET_RETURN_IF_ERROR(SaveState(next));
    }
    cursor = response.next_cursor();
    units_received_ += changed;
    if (response.remaining() == 0) {
      last_reference_pull_ms_ = clock_->NowMs();
      return absl::OkStatus();
    }
  }
}

bool Replicator::Healthy(absl::Duration max_lag) const {
  uint64_t acked;
  {
    absl::MutexLock lock(&mu_);
    if (state_.paused() || !last_error_.empty()) return false;
    acked = state_.acked_seq();
  }
  const absl::Time oldest = feed_->FirstCommitAfter(acked);
  return oldest == absl::InfiniteFuture() || absl::Now() - oldest <= max_lag;
}

hamlet::v1::ReplicationStatus Replicator::Status() const {
  hamlet::v1::ReplicationStatus status;
  uint64_t acked;
  {
    absl::MutexLock lock(&mu_);
    status.set_state(state_.paused()       ? hamlet::v1::REPLICATION_STATE_PAUSED
                     : last_error_.empty() ? hamlet::v1::REPLICATION_STATE_RUNNING
                                           : hamlet::v1::REPLICATION_STATE_FAILING);
    status.set_upstream(options_.upstream);
    status.set_last_error(last_error_);
    status.set_records_sent(records_sent_);
    status.set_units_received(units_received_);
    if (state_.last_ack_ms() > 0) {
      *status.mutable_last_ack_time() = TimeUtil::MillisecondsToTimestamp(state_.last_ack_ms());
    }
    if (last_reference_pull_ms_ > 0) {
      *status.mutable_last_reference_pull_time() = TimeUtil::MillisecondsToTimestamp(last_reference_pull_ms_);
    }
    acked = state_.acked_seq();
  }
  status.set_device_id(store_->server_id());
  status.set_acked_seq(acked);
  status.set_last_seq(store_->last_seq());
  if (absl::StatusOr<uint64_t> lag = store_->CountChangesAfter(acked); lag.ok()) {
    status.set_lag_records(*lag);
  }
  const absl::Time oldest = feed_->FirstCommitAfter(acked);
  if (oldest != absl::InfiniteFuture() && status.lag_records() > 0) {
    status.set_lag_seconds(absl::ToDoubleSeconds(std::max(absl::ZeroDuration(), absl::Now() - oldest)));
  }
  return status;
}

}  // namespace hamlet::server
