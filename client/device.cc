#include "client/device.h"

#include <map>
#include <unordered_map>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "client/protocol.h"
#include "google/protobuf/util/time_util.h"
#include "storage/atomic_file.h"
#include "storage/bundle.h"
#include "sync/change.h"
#include "sync/lifecycle.h"
#include "sync/roles.h"
#include "sync/stamp.h"
#include "sync/status_macros.h"
#include "sync/uuid.h"

namespace hamlet::field {

using google::protobuf::util::TimeUtil;
using hamlet::v1::Record;

FieldDevice::FieldDevice(std::unique_ptr<storage::DeviceStore> store, const sync::PhysicalClock* clock)
    : store_(std::move(store)), clock_(clock, store_->device_id()) {}

absl::StatusOr<std::unique_ptr<FieldDevice>> FieldDevice::Open(const std::string& dir,
                                                               const sync::PhysicalClock* clock) {
  absl::BitGen gen;
  HAMLET_ASSIGN_OR_RETURN(std::unique_ptr<storage::DeviceStore> store,
                          storage::DeviceStore::Open(dir, sync::NewUuid(gen)));
  HAMLET_ASSIGN_OR_RETURN(hamlet::v1::Stamp last, store->GetClock());
  HAMLET_ASSIGN_OR_RETURN(hamlet::v1::Role role, store->GetRole());
  std::unique_ptr<FieldDevice> device(new FieldDevice(std::move(store), clock));
  device->clock_.Restore(last);
  if (role != hamlet::v1::ROLE_UNSPECIFIED) device->role_ = role;
  return device;
}

absl::Status FieldDevice::SaveEdit(const Record& change, Record state) {
  // The device holds itself to the same lifecycle rules the server enforces,
  // so an illegal move is refused here rather than after a sync.
  HAMLET_RETURN_IF_ERROR(
      sync::CheckLifecycleMoves(state, change, sync::LifecycleAuthority(role_), sync::Vantage::kWriterSawState));
  sync::MergeRecord(change, &state);
  return store_->SaveLocalEdit(state, change, clock_.Last());
}

absl::StatusOr<Record> FieldDevice::Create(Record draft, const sync::FieldNumbers& fields) {
  if (draft.id().empty()) {
    absl::BitGen gen;
    draft.set_id(sync::NewUuid(gen));
  }
  const google::protobuf::Message* body = sync::RecordBody(draft);
  if (body == nullptr) return absl::InvalidArgumentError("a new record needs a body");
  HAMLET_ASSIGN_OR_RETURN(std::optional<Record> existing, store_->GetRecord(draft.id()));
  if (existing.has_value()) return absl::AlreadyExistsError(absl::StrCat("record ", draft.id(), " exists"));
  sync::FieldNumbers named = fields;
  std::vector<const google::protobuf::FieldDescriptor*> set_fields;
  body->GetReflection()->ListFields(*body, &set_fields);
  for (const auto* field : set_fields) named.insert(static_cast<uint32_t>(field->number()));
  HAMLET_ASSIGN_OR_RETURN(Record change, sync::BuildChange(Record(), *body, named, clock_.Now()));
  change.set_id(draft.id());
  change.set_unit_code(draft.unit_code());
  change.set_author(draft.author());
  *change.mutable_create_time() = TimeUtil::MillisecondsToTimestamp(clock_.physical().NowMs());
  change.set_sensitivity(draft.sensitivity() == hamlet::v1::SENSITIVITY_UNSPECIFIED ? hamlet::v1::SENSITIVITY_NORMAL
                                                                                    : draft.sensitivity());
  HAMLET_RETURN_IF_ERROR(SaveEdit(change, Record()));
  return change;
}

absl::StatusOr<Record> FieldDevice::Edit(const std::string& id, const google::protobuf::Message& body,
                                         const sync::FieldNumbers& fields) {
  HAMLET_ASSIGN_OR_RETURN(std::optional<Record> state, store_->GetRecord(id));
  if (!state.has_value()) return absl::NotFoundError(absl::StrCat("no record ", id, " on this device"));
  HAMLET_ASSIGN_OR_RETURN(Record change, sync::BuildChange(*state, body, fields, clock_.Now()));
  HAMLET_RETURN_IF_ERROR(SaveEdit(change, *state));
  HAMLET_ASSIGN_OR_RETURN(std::optional<Record> saved, store_->GetRecord(id));
  return *saved;
}

absl::Status FieldDevice::Delete(const std::string& id) {
  HAMLET_ASSIGN_OR_RETURN(std::optional<Record> state, store_->GetRecord(id));
  if (!state.has_value()) return absl::NotFoundError(absl::StrCat("no record ", id, " on this device"));
  Record change = sync::EmptyChangeOf(*state);
  change.set_deleted(true);
  *change.mutable_deleted_stamp() = clock_.Now();
  return SaveEdit(change, *state);
}

namespace {

absl::Status NotEnrolled(const std::string& device_id) {
  return absl::FailedPreconditionError(
      absl::StrCat("device ", device_id,
                   " is not enrolled: an admin enrols it (tools/hamlet-admin devices enroll "
                   "--device-id=",
                   device_id,
                   " --person=... --role=... --unit=...) and its token is saved with "
                   "`hamlet-field set-token TOKEN --role=ROLE`"));
}

}  // namespace

absl::StatusOr<FieldDevice::SyncReport> FieldDevice::Sync(hamlet::v1::SyncService::StubInterface& stub,
                                                          const SyncOptions& options) {
  HAMLET_ASSIGN_OR_RETURN(token_, store_->GetToken());
  if (token_.empty()) return NotEnrolled(device_id());
  SyncReport report;
  // One pace for the whole sync: what the push learns of the link sizes the
  // pull's first page.
  LinkPace pace(options.pace);
  // What a restored server lacks goes first, before newer edits (the pull
  // that finds a restore saves its history for this).
  HAMLET_RETURN_IF_ERROR(Reoffer(stub, options, &pace, &report));
  HAMLET_RETURN_IF_ERROR(PushOutbox(stub, options, &pace, &report));
  HAMLET_RETURN_IF_ERROR(PullAll(stub, options, &pace, &report));
  HAMLET_RETURN_IF_ERROR(Reoffer(stub, options, &pace, &report));
  return report;
}

namespace {

// The estimated time left at `rate` bytes a second.
absl::Duration TimeLeft(uint64_t done, uint64_t total, double rate) {
  if (rate <= 0 || total < done) return absl::InfiniteDuration();
  return absl::Seconds(static_cast<double>(total - done) / rate);
}

// The retry policy of a paced call: its deadline is the pace's for `bytes`,
// and a timeout comes back to the caller, which makes the call smaller.
RetryPolicy Paced(const RetryPolicy& policy, const LinkPace& pace, size_t bytes) {
  RetryPolicy paced = policy;
  paced.call_timeout = pace.DeadlineFor(bytes);
  paced.on_deadline = RetryPolicy::OnDeadline::kReturn;
  return paced;
}

}  // namespace

Record FieldDevice::LeanChange(const Record& change) const {
  Record lean = change;
  sync::LeanStamps(&lean, device_id());
  return lean;
}

absl::Status FieldDevice::SplitPendingBatch(const std::vector<storage::OutboxItem>& items) {
  if (items.size() < 2) return absl::OkStatus();
  absl::BitGen gen;
  storage::PendingBatch half;
  half.set_batch_id(sync::NewUuid(gen));
  half.set_last_outbox_seq(items[(items.size() + 1) / 2 - 1].seq);
  HAMLET_ASSIGN_OR_RETURN(std::vector<storage::PendingBatch> queued, store_->GetQueuedBatches());
  if (queued.empty()) return store_->SetPendingBatch(half);  // The rest goes in the batches formed after.
  // Batches are fixed after this one (a bundle carries them): the rest of
  // this one becomes a batch of its own ahead of them, so theirs stay as
  // they were.
  storage::PendingBatch rest;
  rest.set_batch_id(sync::NewUuid(gen));
  rest.set_last_outbox_seq(items.back().seq);
  queued.insert(queued.begin(), rest);
  return store_->SetBatches(half, queued);
}

hamlet::v1::PushRequest FieldDevice::PushOf(const storage::PendingBatch& batch,
                                            const std::vector<storage::OutboxItem>& items, size_t pending_after,
                                            const SyncOptions& options) const {
  hamlet::v1::PushRequest request;
  request.set_device_id(device_id());
  request.set_batch_id(batch.batch_id());
  request.set_app_version(options.app_version);
  request.set_set_aside_refused(true);
  for (const storage::OutboxItem& item : items) *request.add_changes() = LeanChange(item.change);
  request.set_pending_changes(static_cast<uint32_t>(pending_after));
  return request;
}

absl::Status FieldDevice::PushOutbox(hamlet::v1::SyncService::StubInterface& stub, const SyncOptions& options,
                                     LinkPace* pace, SyncReport* report) {
  const absl::Time start = absl::Now();
  SyncProgress progress;
  progress.phase = SyncProgress::Phase::kPush;
  {
    HAMLET_ASSIGN_OR_RETURN(std::vector<storage::OutboxItem> outbox, store_->ReadOutbox(SIZE_MAX));
    progress.records_total = outbox.size();
    for (const storage::OutboxItem& item : outbox) progress.bytes_total += LeanChange(item.change).ByteSizeLong();
  }
  const auto tell = [&] {
    if (!options.on_progress) return;
    progress.bytes_per_second = pace->bytes_per_second();
    progress.elapsed = absl::Now() - start;
    progress.left = TimeLeft(progress.bytes_done, progress.bytes_total, progress.bytes_per_second);
    options.on_progress(progress);
  };
  if (progress.records_total > 0) tell();  // Nothing to push: no push to show.
  int timeouts = 0;
  while (true) {
    HAMLET_ASSIGN_OR_RETURN(std::optional<storage::PendingBatch> pending, store_->GetPendingBatch());
    if (!pending.has_value()) {
      HAMLET_ASSIGN_OR_RETURN(std::vector<storage::OutboxItem> items,
                              store_->ReadOutbox(static_cast<size_t>(options.batch_records)));
      if (items.empty()) {
        return store_->PruneSent(absl::ToUnixMillis(absl::Now() - options.keep_sent), options.keep_sent_bytes);
      }
      // As many changes as the pace allows, and at least one.
      size_t take = 0, bytes = 0;
      while (take < items.size()) {
        const size_t next = LeanChange(items[take].change).ByteSizeLong();
        if (take > 0 && bytes + next > pace->budget_bytes()) break;
        bytes += next;
        ++take;
      }
      // The batch is fixed on disk before it is sent, so that after a crash the
      // retry carries the same id and the same content.
      absl::BitGen gen;
      pending.emplace();
      pending->set_batch_id(sync::NewUuid(gen));
      pending->set_last_outbox_seq(items[take - 1].seq);
      HAMLET_RETURN_IF_ERROR(store_->SetPendingBatch(*pending));
    }
    HAMLET_ASSIGN_OR_RETURN(std::vector<storage::OutboxItem> items,
                            store_->ReadOutboxThrough(pending->last_outbox_seq()));
    HAMLET_ASSIGN_OR_RETURN(size_t outbox, store_->OutboxSize());
    const hamlet::v1::PushRequest request =
        PushOf(*pending, items, outbox - std::min<size_t>(outbox, items.size()), options);
    const size_t request_bytes = request.ByteSizeLong();
    hamlet::v1::PushResponse response;
    const absl::Time sent = absl::Now();
    CallResult result =
        CallWithRetry(Paced(options.retry, *pace, request_bytes), token_,
                      [&](grpc::ClientContext* context) { return stub.Push(context, request, &response); });
    if (result.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      // Too big for the link as it is now: smaller, not the same again.
      if (++timeouts >= options.retry.max_attempts) {
        return FromGrpc(result.status, absl::StrCat("push of batch ", pending->batch_id(), " (", timeouts,
                                                    " attempts, each smaller, ran out of time)"));
      }
      pace->TimedOut();
      HAMLET_RETURN_IF_ERROR(SplitPendingBatch(items));
      continue;
    }
    timeouts = 0;
    if (Refused(result.status.error_code()) && result.reason != "CLOCK_SKEW") {
      // Sending it again cannot succeed: set the batch's edits aside where the
      // user can see them, and go on with the rest of the outbox.
      HAMLET_RETURN_IF_ERROR(store_->RejectPendingBatch(
          absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(result.status.error_code())), ": ",
                       result.status.error_message())));
      ++report->batches_rejected;
      continue;
    }
    if (!result.status.ok()) return FromGrpc(result.status, absl::StrCat("push of batch ", pending->batch_id()));
    pace->Finished(request_bytes, absl::Now() - sent);
    // The changes the server set aside go where the user can see them, with
    // its reason; the rest of the batch arrived.
    std::map<uint32_t, std::string> set_aside;
    for (const hamlet::v1::SetAsideChange& refused : response.set_aside()) {
      set_aside[refused.index()] = absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(refused.code())),
                                                ": ", refused.message());
    }
    // Kept a while, for a server restored from an older backup: what the
    // server applied, without sealed records, which stay on the phone only
    // until the server has them (a batch that lost changes here is kept
    // under a new id: it is no longer the same batch).
    storage::SentCall acked;
    hamlet::v1::PushRequest& again = *acked.mutable_push();
    again.set_device_id(request.device_id());
    again.set_batch_id(request.batch_id());
    again.set_app_version(request.app_version());
    again.set_set_aside_refused(true);
    auto* kept = again.mutable_changes();
    for (int i = 0; i < request.changes_size(); ++i) {
      const Record& change = request.changes(i);
      if (set_aside.count(static_cast<uint32_t>(i)) > 0 || change.has_informant_identity() ||
          change.sensitivity() == hamlet::v1::SENSITIVITY_SEALED) {
        continue;
      }
      *kept->Add() = change;
    }
    if (kept->size() != request.changes_size()) {
      absl::BitGen gen;
      again.set_batch_id(sync::NewUuid(gen));
    }
    acked.set_server_id(response.server_id());
    acked.set_epoch(response.epoch());
    acked.set_server_seq(response.server_seq());
    acked.set_acked_ms(absl::ToUnixMillis(absl::Now()));
    HAMLET_RETURN_IF_ERROR(store_->AckPendingBatch(set_aside, kept->empty() ? nullptr : &acked));
    // A sealed record stays on the phone only until the server has it.
    bool forgot = false;
    for (int i = 0; i < request.changes_size(); ++i) {
      const Record& change = request.changes(i);
      if (!change.has_informant_identity() || set_aside.count(static_cast<uint32_t>(i)) > 0) continue;
      HAMLET_RETURN_IF_ERROR(store_->ForgetRecord(change.id()));
      forgot = true;
    }
    if (forgot) HAMLET_RETURN_IF_ERROR(store_->Scrub());
    ++report->batches_pushed;
    report->records_pushed += request.changes_size() - set_aside.size();
    report->changes_set_aside += set_aside.size();
    progress.records_done += request.changes_size();
    for (const Record& change : request.changes()) progress.bytes_done += change.ByteSizeLong();
    tell();
  }
}

namespace {

// Whether a restored server's history holds the call a device kept.
bool HistoryHolds(const hamlet::v1::ServerHistory& history, const storage::SentCall& call) {
  if (call.server_id() != history.server_id()) return false;  // Unknown (an older server's answer): offer it.
  if (call.epoch() == history.epoch()) return true;
  for (const hamlet::v1::EpochHeld& held : history.earlier()) {
    if (held.epoch() == call.epoch()) return call.server_seq() <= held.through_seq();
  }
  return false;
}

}  // namespace

absl::Status FieldDevice::Reoffer(hamlet::v1::SyncService::StubInterface& stub, const SyncOptions& options,
                                  LinkPace* pace, SyncReport* report) {
  HAMLET_ASSIGN_OR_RETURN(std::optional<hamlet::v1::ServerHistory> due, store_->GetReofferDue());
  if (!due.has_value()) return absl::OkStatus();
  HAMLET_ASSIGN_OR_RETURN(auto kept, store_->ListSent());
  bool waiting = false;  // A resolution that may succeed once others have offered theirs.
  for (auto& kept_call : kept) {
    const auto& key = kept_call.first;
    auto& call = kept_call.second;  // (A structured binding cannot be captured by the lambdas below.)
    if (HistoryHolds(*due, call)) continue;
    const size_t bytes = call.ByteSizeLong();
    const absl::Time sent = absl::Now();
    CallResult result;
    uint64_t seq = 0;
    std::string server_id;
    uint64_t epoch = 0;
    if (call.has_push()) {
      hamlet::v1::PushRequest request = call.push();
      request.set_reoffer(true);
      request.set_set_aside_refused(true);
      hamlet::v1::PushResponse response;
      result = CallWithRetry(Paced(options.retry, *pace, bytes), token_,
                             [&](grpc::ClientContext* context) { return stub.Push(context, request, &response); });
      seq = response.server_seq();
      server_id = response.server_id();
      epoch = response.epoch();
      // A lifecycle move from a state the server does not have back yet
      // (another device has still to offer it) is set aside as
      // FAILED_PRECONDITION: kept, under a new batch id, for the next sync.
      // Any other refusal is final.
      storage::SentCall later = call;
      later.mutable_push()->clear_changes();
      for (const hamlet::v1::SetAsideChange& refused : response.set_aside()) {
        if (refused.code() != static_cast<int32_t>(grpc::StatusCode::FAILED_PRECONDITION)) {
          ++report->reoffers_refused;
          continue;
        }
        *later.mutable_push()->add_changes() = call.push().changes(static_cast<int>(refused.index()));
      }
      if (result.status.ok() && later.push().changes_size() > 0) {
        absl::BitGen gen;
        later.mutable_push()->set_batch_id(sync::NewUuid(gen));
        HAMLET_RETURN_IF_ERROR(store_->RetainSent(later));
        waiting = true;
      }
    } else if (call.has_resolve()) {
      hamlet::v1::ResolveConflictResponse response;
      result = CallWithRetry(Paced(options.retry, *pace, bytes), token_, [&](grpc::ClientContext* context) {
        return stub.ResolveConflict(context, call.resolve(), &response);
      });
      seq = response.record().server_seq();
      server_id = response.server_id();
      epoch = response.epoch();
      if (result.status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        // No open conflict (yet): the values it settled may still be on
        // their way back from other devices. Try again at the next sync.
        waiting = true;
        continue;
      }
    } else {
      continue;
    }
    if (Refused(result.status.error_code())) {
      // The server's ordinary checks refuse it now (a device revoked, a
      // record moved on): it cannot be given back. Counted, and not offered
      // again.
      ++report->reoffers_refused;
      server_id = due->server_id();
      epoch = due->epoch();
    } else if (!result.status.ok()) {
      return FromGrpc(result.status, "offering again what the restored server lacks");
    } else {
      pace->Finished(bytes, absl::Now() - sent);
      ++report->calls_reoffered;
    }
    call.set_server_id(server_id);
    call.set_epoch(epoch);
    call.set_server_seq(seq);
    HAMLET_RETURN_IF_ERROR(store_->UpdateSent(key, call));
  }
  return waiting ? absl::OkStatus() : store_->SetReofferDue(std::nullopt);
}

absl::Status FieldDevice::PullAll(hamlet::v1::SyncService::StubInterface& stub, const SyncOptions& options,
                                  LinkPace* pace, SyncReport* report) {
  const absl::Time start = absl::Now();
  SyncProgress progress;
  progress.phase = SyncProgress::Phase::kPull;
  const auto tell = [&](uint64_t remaining) {
    if (!options.on_progress) return;
    progress.records_done = report->records_pulled;
    progress.records_total = report->records_pulled + remaining;
    // What remains is estimated at the size of what came so far.
    progress.bytes_total =
        progress.records_done == 0 ? 0 : progress.bytes_done + progress.bytes_done * remaining / progress.records_done;
    progress.bytes_per_second = pace->bytes_per_second();
    progress.elapsed = absl::Now() - start;
    progress.left = progress.bytes_total == 0
                        ? absl::InfiniteDuration()
                        : TimeLeft(progress.bytes_done, progress.bytes_total, progress.bytes_per_second);
    options.on_progress(progress);
  };
  tell(0);
  int timeouts = 0;
  HAMLET_ASSIGN_OR_RETURN(const auto unsynced, UnsyncedFields());
  while (true) {
    HAMLET_ASSIGN_OR_RETURN(std::string cursor, store_->GetCursor(options.scope_unit_code));
    hamlet::v1::PullRequest request;
    request.set_device_id(device_id());
    request.set_scope_unit_code(options.scope_unit_code);
    request.set_cursor(cursor);
    request.set_page_size(static_cast<uint32_t>(options.page_size));
    // Its own pushes are merged into its copies already (SaveEdit).
    request.set_omit_own_writes(true);
    request.set_lean_stamps(true);
    const size_t budget = pace->budget_bytes();
    request.set_max_page_bytes(static_cast<uint32_t>(budget));
    hamlet::v1::PullResponse response;
    const absl::Time sent = absl::Now();
    CallResult result = CallWithRetry(Paced(options.retry, *pace, budget), token_, [&](grpc::ClientContext* context) {
      return stub.Pull(context, request, &response);
    });
    if (result.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      if (++timeouts >= options.retry.max_attempts) {
        return FromGrpc(result.status,
                        absl::StrCat("pull (", timeouts, " attempts, each asking for less, ran out of time)"));
      }
      pace->TimedOut();
      continue;
    }
    timeouts = 0;
    if (result.status.error_code() == grpc::StatusCode::FAILED_PRECONDITION && result.reason == "CURSOR_INVALIDATED" &&
        !report->cursor_reset) {
      // The server no longer knows our place (restored, or another server):
      // start over from zero. Records and outbox stay; merging is idempotent.
      HAMLET_RETURN_IF_ERROR(store_->ResetCursor());
      report->cursor_reset = true;
      continue;
    }
    if (!result.status.ok()) return FromGrpc(result.status, "pull");
    // A pull from zero tells what the server's history holds: after a
    // restore, what this device had acknowledged since the backup is due
    // to be offered again.
    if (response.has_history() && response.history().has_restore_time()) {
      HAMLET_RETURN_IF_ERROR(store_->SetReofferDue(response.history()));
    }
    const size_t response_bytes = response.ByteSizeLong();
    pace->Finished(response_bytes, absl::Now() - sent);
    progress.bytes_done += response_bytes;
    HAMLET_ASSIGN_OR_RETURN(
        std::vector<Record> states,
        MergePulled(std::vector<Record>(std::make_move_iterator(response.mutable_records()->begin()),
                                        std::make_move_iterator(response.mutable_records()->end())),
                    unsynced));
    HAMLET_RETURN_IF_ERROR(
        store_->SavePulledPage(states, options.scope_unit_code, response.next_cursor(), clock_.Last()));
    report->records_pulled += states.size();
    tell(response.remaining());
    if (response.remaining() == 0) return absl::OkStatus();
  }
}

absl::StatusOr<std::unordered_map<std::string, sync::FieldNumbers>> FieldDevice::UnsyncedFields() const {
  std::unordered_map<std::string, sync::FieldNumbers> unsynced;
  HAMLET_ASSIGN_OR_RETURN(std::vector<storage::OutboxItem> outbox, store_->ReadOutbox(SIZE_MAX));
  for (const storage::OutboxItem& item : outbox) {
    for (const auto& fs : item.change.field_stamps()) unsynced[item.change.id()].insert(fs.field());
  }
  return unsynced;
}

absl::StatusOr<std::vector<Record>> FieldDevice::MergePulled(
    std::vector<Record> pulled, const std::unordered_map<std::string, sync::FieldNumbers>& unsynced) {
  std::vector<Record> states;
  states.reserve(pulled.size());
  for (Record& record : pulled) {
    sync::ExpandStamps(&record, "");
    HAMLET_ASSIGN_OR_RETURN(std::optional<Record> local, store_->GetRecord(record.id()));
    Record state = local.value_or(Record());
    auto it = unsynced.find(record.id());
    sync::MergeRecord(record, &state, it == unsynced.end() ? sync::FieldNumbers() : it->second);
    state.set_server_seq(record.server_seq());
    for (const auto& fs : record.field_stamps()) clock_.Observe(fs.stamp());
    if (record.deleted()) clock_.Observe(record.deleted_stamp());
    states.push_back(std::move(state));
  }
  return states;
}

absl::StatusOr<std::vector<FieldDevice::Batch>> FieldDevice::FixBatches(size_t batch_records) {
  HAMLET_ASSIGN_OR_RETURN(std::vector<storage::OutboxItem> outbox, store_->ReadOutbox(SIZE_MAX));
  HAMLET_ASSIGN_OR_RETURN(std::optional<storage::PendingBatch> pending, store_->GetPendingBatch());
  HAMLET_ASSIGN_OR_RETURN(std::vector<storage::PendingBatch> fixed, store_->GetQueuedBatches());
  if (pending.has_value()) fixed.insert(fixed.begin(), *pending);
  const size_t already = fixed.size();
  // The rest of the outbox, after the last batch fixed, in new batches.
  const uint64_t covered = fixed.empty() ? 0 : fixed.back().last_outbox_seq();
  size_t next = 0;
  while (next < outbox.size() && outbox[next].seq <= covered) ++next;
  absl::BitGen gen;
  for (size_t end; next < outbox.size(); next = end) {
    end = std::min(outbox.size(), next + std::max<size_t>(batch_records, 1));
    storage::PendingBatch batch;
    batch.set_batch_id(sync::NewUuid(gen));
    batch.set_last_outbox_seq(outbox[end - 1].seq);
    fixed.push_back(std::move(batch));
  }
  if (fixed.size() > already) {
    HAMLET_RETURN_IF_ERROR(
        store_->SetBatches(fixed.front(), std::vector<storage::PendingBatch>(fixed.begin() + 1, fixed.end())));
  }
  std::vector<Batch> batches;
  size_t item = 0;
  for (const storage::PendingBatch& each : fixed) {
    Batch batch{each, {}};
    for (; item < outbox.size() && outbox[item].seq <= each.last_outbox_seq(); ++item) {
      batch.items.push_back(outbox[item]);
    }
    if (!batch.items.empty()) batches.push_back(std::move(batch));
  }
  return batches;
}

absl::StatusOr<std::string> FieldDevice::BundleSecret() const {
  HAMLET_ASSIGN_OR_RETURN(std::string token, store_->GetToken());
  if (token.empty()) return NotEnrolled(device_id());
  return storage::BundleSecretOfToken(token);
}

absl::StatusOr<FieldDevice::BundleReport> FieldDevice::ExportBundle(const std::string& path,
                                                                    const SyncOptions& options) {
  HAMLET_ASSIGN_OR_RETURN(std::string secret, BundleSecret());
  HAMLET_ASSIGN_OR_RETURN(std::vector<Batch> batches, FixBatches(static_cast<size_t>(options.batch_records)));
  if (batches.empty()) return absl::FailedPreconditionError("the outbox is empty: there is nothing to carry");
  BundleReport report;
  for (const Batch& batch : batches) report.changes += batch.items.size();
  hamlet::v1::BundleContent content;
  *content.mutable_export_time() = TimeUtil::MillisecondsToTimestamp(clock_.physical().NowMs());
  HAMLET_ASSIGN_OR_RETURN(std::optional<storage::PullPosition> position, store_->GetPullPosition());
  if (position.has_value()) {
    content.set_pull_scope(position->scope());
    content.set_pull_cursor(position->cursor());
  }
  uint64_t written = 0;
  for (const Batch& batch : batches) {
    written += batch.items.size();
    *content.add_pushes() = PushOf(batch.batch, batch.items, report.changes - written, options);
  }
  HAMLET_ASSIGN_OR_RETURN(std::string bundle,
                          storage::SealBundle(hamlet::v1::BUNDLE_DIRECTION_TO_SERVER, device_id(), content, secret));
  HAMLET_RETURN_IF_ERROR(storage::WriteFileAtomically(path, bundle, 0600));
  report.batches = batches.size();
  report.bytes = bundle.size();
  return report;
}

absl::StatusOr<FieldDevice::BundleReport> FieldDevice::ImportBundle(const std::string& path) {
  HAMLET_ASSIGN_OR_RETURN(std::string bundle, storage::ReadBundleFile(path));
  HAMLET_ASSIGN_OR_RETURN(hamlet::v1::BundleHeader header, storage::ReadBundleHeader(bundle));
  if (header.direction() != hamlet::v1::BUNDLE_DIRECTION_TO_DEVICE) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is a bundle device ", header.device_id(),
                     " wrote for its server (hamlet-field export): carry it to the server (hamlet-admin import)"));
  }
  if (header.device_id() != device_id()) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is a bundle for device ", header.device_id(),
                                                      "; this is device ", device_id(), ". Nothing was applied"));
  }
  HAMLET_ASSIGN_OR_RETURN(std::string secret, BundleSecret());
  HAMLET_ASSIGN_OR_RETURN(hamlet::v1::BundleContent content, storage::OpenBundle(bundle, secret));
  HAMLET_ASSIGN_OR_RETURN(const auto unsynced, UnsyncedFields());
  // As a pull from zero tells it: after a restore, what this device had
  // acknowledged since the backup is due to be offered again.
  if (content.has_history() && content.history().has_restore_time()) {
    HAMLET_RETURN_IF_ERROR(store_->SetReofferDue(content.history()));
  }
  // The cursor moves to the bundle's end if the bundle starts where the
  // device's pulls stand, or at the beginning (it holds all the scope then;
  // if the device had pulled further online, its next sync pulls that part
  // again). A device whose pulls stand elsewhere keeps its cursor; the
  // records merge either way.
  HAMLET_ASSIGN_OR_RETURN(std::string cursor, store_->GetCursor(content.scope_unit_code()));
  BundleReport report;
  report.bytes = bundle.size();
  report.records = static_cast<uint64_t>(content.records_size());
  report.cursor_moved = content.from_cursor().empty() || content.from_cursor() == cursor;
  // In pages, as a pull saves them; the cursor with the last.
  constexpr int kPage = 500;
  auto* records = content.mutable_records();
  for (int start = 0; start < records->size() || start == 0; start += kPage) {
    const int end = std::min(records->size(), start + kPage);
    std::vector<Record> page;
    for (int i = start; i < end; ++i) page.push_back(std::move((*records)[i]));
    HAMLET_ASSIGN_OR_RETURN(std::vector<Record> states, MergePulled(std::move(page), unsynced));
    if (end == records->size() && report.cursor_moved) {
      HAMLET_RETURN_IF_ERROR(
          store_->SavePulledPage(states, content.scope_unit_code(), content.next_cursor(), clock_.Last()));
    } else {
      HAMLET_RETURN_IF_ERROR(store_->SaveMergedRecords(states, clock_.Last()));
    }
  }
  return report;
}

}  // namespace hamlet::field

namespace hamlet::field {

absl::StatusOr<Record> FieldDevice::ResolveConflict(hamlet::v1::SyncService::StubInterface& stub,
                                                    const std::string& record_id, uint32_t field,
                                                    const google::protobuf::Message& value, const std::string& resolver,
                                                    const SyncOptions& options) {
  HAMLET_ASSIGN_OR_RETURN(token_, store_->GetToken());
  HAMLET_ASSIGN_OR_RETURN(std::optional<Record> local, store_->GetRecord(record_id));
  if (!local.has_value()) return absl::NotFoundError(absl::StrCat("no record ", record_id, " on this device"));
  hamlet::v1::ResolveConflictRequest request;
  request.set_device_id(device_id());
  absl::BitGen gen;
  request.set_request_id(sync::NewUuid(gen));
  request.set_record_id(record_id);
  request.set_field(field);
  request.set_resolver(resolver);
  Record holder = sync::EmptyChangeOf(*local);
  sync::MutableRecordBody(&holder)->CopyFrom(value);
  *request.mutable_value() = holder;
  hamlet::v1::ResolveConflictResponse response;
  CallResult result = CallWithRetry(options.retry, token_, [&](grpc::ClientContext* context) {
    return stub.ResolveConflict(context, request, &response);
  });
  if (!result.status.ok()) return FromGrpc(result.status, "resolving conflict");
  storage::SentCall sent;
  *sent.mutable_resolve() = request;
  sent.set_server_id(response.server_id());
  sent.set_epoch(response.epoch());
  sent.set_server_seq(response.record().server_seq());
  sent.set_acked_ms(absl::ToUnixMillis(absl::Now()));
  HAMLET_RETURN_IF_ERROR(store_->RetainSent(sent));
  // The device gets the resolved record on its next pull, like every device.
  return response.record();
}

}  // namespace hamlet::field
