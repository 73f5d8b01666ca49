#include "server/town.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <map>
#include <set>

#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/time_util.h"
#include "server/sha256.h"
#include "sync/lifecycle.h"
#include "sync/merge.h"
#include "sync/roles.h"
#include "sync/schema.h"
#include "sync/stamp.h"
#include "sync/status_macros.h"
#include "sync/uuid.h"
#include "sync/validate.h"

namespace hamlet::server {

using google::protobuf::util::TimeUtil;
using hamlet::v1::Record;

namespace {

absl::Status WithReason(absl::Status status, absl::string_view reason) {
  status.SetPayload(kReasonKey, absl::Cord(reason));
  return status;
}

// SHA-256 over the changes as serialized, each prefixed by its length.
std::string ContentHash(const hamlet::v1::PushRequest& request) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream out(&stream);
    out.SetSerializationDeterministic(true);
    for (const Record& change : request.changes()) {
      out.WriteVarint64(change.ByteSizeLong());
      change.SerializeWithCachedSizes(&out);
    }
  }
  return Sha256(bytes);
}

// A stable UUID for a reference record, so every server that seeds the same
// unit gives it the same id: SHA-256 of the name, shaped as a version-8 UUID.
std::string NameUuid(absl::string_view name) { return sync::FormatUuid(Sha256(name), 8); }

// The scope of PullRequest.reference_only; not a unit code.
constexpr char kReferenceScope[] = "*reference";

// Every server seeds the reference admin units as the same records, stamps
// included (2000-01-01, node "hamlet-reference"), so a town and its province
// start out agreeing and any later edit by the province wins.
constexpr int64_t kReferenceStampMs = 946684800000;
constexpr char kReferenceNode[] = "hamlet-reference";

hamlet::v1::UnitLevel ServedLevel(Tier tier) {
  return tier == Tier::kProvince ? hamlet::v1::UNIT_LEVEL_PROVINCE : hamlet::v1::UNIT_LEVEL_DISTRICT;
}

}  // namespace

Town::Town(storage::TownStore* store, ChangeFeed* feed, const sync::PhysicalClock* clock, const TownOptions& options)
    : store_(store), options_(options), clock_(clock, store_->server_id()), feed_(feed) {
  clock_.Restore(store_->persisted_clock());
}

absl::StatusOr<std::unique_ptr<Town>> Town::Create(storage::TownStore* store, ChangeFeed* feed,
                                                   const sync::PhysicalClock* clock, const TownOptions& options) {
  std::unique_ptr<Town> town(new Town(store, feed, clock, options));
  HAMLET_RETURN_IF_ERROR(town->LoadUnits());
  bool seeded;
  {
    absl::MutexLock lock(&town->units_mu_);
    seeded = town->units_.size() > 0;
  }
  if (!seeded) {
    bool known = false;
    for (const auto& unit : sync::ReferenceUnits()) {
      known = known || (unit.code() == options.unit_code && unit.level() == ServedLevel(options.tier));
    }
    if (!known) {
      return absl::FailedPreconditionError(absl::StrCat(
          options.unit_code, " is not a ", options.tier == Tier::kProvince ? "province" : "district-level unit (town)",
          " of the reference admin units this server seeds"));
    }
    HAMLET_RETURN_IF_ERROR(town->SeedUnits());
  }
  absl::MutexLock lock(&town->units_mu_);
  const hamlet::v1::AdminUnit* unit = town->units_.Find(options.unit_code);
  if (unit == nullptr || unit->level() != ServedLevel(options.tier)) {
    return absl::FailedPreconditionError(absl::StrCat(
        options.unit_code, " is not a ", options.tier == Tier::kProvince ? "province" : "district-level unit (town)",
        " in this server's admin units"));
  }
  return town;
}

absl::Status Town::LoadUnits() {
  uint64_t seq = 0;
  while (true) {
    HAMLET_ASSIGN_OR_RETURN(storage::ChangePage page, store_->ReadChanges(storage::ChangeScope::AboveCommune(), seq,
                                                                          1000, 1 << 24, storage::CountRemaining::kNo));
    absl::MutexLock lock(&units_mu_);
    for (const Record& record : page.records) {
      if (record.has_admin_unit() && !record.deleted()) units_.Put(record.admin_unit());
    }
    if (page.records.empty()) return absl::OkStatus();
    seq = page.through_seq;
  }
}

absl::Status Town::SeedUnits() {
  // The reference units go in as one push from the server itself, so they reach
  // devices (and the province) the way every other record does.
  storage::PushCommit commit;
  commit.device_id = store_->server_id();
  commit.batch_id = "seed-admin-units";
  for (const hamlet::v1::AdminUnit& unit : sync::ReferenceUnits()) {
    {
      absl::MutexLock lock(&units_mu_);
      units_.Put(unit);
    }
    Record record;
    record.set_id(NameUuid(absl::StrCat("hamlet:admin-unit:", unit.code())));
    record.set_unit_code(sync::kReferenceProvinceCode);
    record.set_author("hamletd");
    *record.mutable_create_time() = TimeUtil::MillisecondsToTimestamp(kReferenceStampMs);
    record.set_sensitivity(hamlet::v1::SENSITIVITY_NORMAL);
    *record.mutable_admin_unit() = unit;
    std::vector<const google::protobuf::FieldDescriptor*> fields;
    unit.GetReflection()->ListFields(unit, &fields);
    hamlet::v1::Stamp stamp;
    stamp.set_physical_ms(kReferenceStampMs);
    stamp.set_node(kReferenceNode);
    for (const auto* field : fields) sync::SetFieldStamp(&record, field->number(), stamp);
    commit.records.push_back({std::move(record), "", 0, Record()});
  }
  commit.device.set_device_id(store_->server_id());
  commit.device.set_last_batch_id(commit.batch_id);
  commit.clock = clock_.Last();
  HAMLET_ASSIGN_OR_RETURN(uint64_t seq,
                          store_->CommitPush(std::move(commit), [](uint64_t) { return storage::BatchReceipt(); }));
  feed_->Publish(seq, {""});
  return absl::OkStatus();
}

absl::Status Town::ValidatePushedChange(const Record& change, sync::ChangeOrigin origin) const {
  absl::MutexLock lock(&units_mu_);
  HAMLET_RETURN_IF_ERROR(sync::ValidateChange(change, units_, origin));
  // A town server keeps its own town's records; the admin units it knows of
  // other towns are reference data, not places to file records.
  if (!change.has_admin_unit() && !units_.IsWithin(change.unit_code(), options_.unit_code)) {
    return absl::InvalidArgumentError(absl::StrCat("record ", change.id(), ": unit ", change.unit_code(), " is not in ",
                                                   options_.unit_code,
                                                   ", which this server serves; send it to that unit's server"));
  }
  if (change.has_admin_unit() && !units_.CommuneOf(change.unit_code()).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "record ", change.id(), ": admin units are filed at the town or province, not in unit ", change.unit_code()));
  }
  return absl::OkStatus();
}

absl::Status Town::CheckChange(const Record& change, const Record& state, const Caller& caller, WriteCheck check,
                               LifecycleCheck lifecycle) const {
  // A record created earlier in the same batch counts as existing, as it
  // would if the batch had been split in two.
  const bool exists = sync::RecordBody(state) != nullptr;
  if (exists) {
    HAMLET_RETURN_IF_ERROR(sync::CheckSameRecord(change, state));
  } else {
    HAMLET_RETURN_IF_ERROR(sync::CheckCreatable(change));
  }
  if (check == WriteCheck::kPerRecord) HAMLET_RETURN_IF_ERROR(CheckWritable(change, exists ? &state : nullptr, caller));
  if (lifecycle == LifecycleCheck::kMoves) {
    HAMLET_RETURN_IF_ERROR(sync::CheckLifecycleMoves(state, change, sync::LifecycleAuthority(caller.principal.role),
                                                     sync::Vantage::kServer));
  }
  return absl::OkStatus();
}

absl::StatusOr<Town::Merged> Town::MergeChanges(storage::CommitGroup& group, const std::vector<const Record*>& changes,
                                                const Caller& caller, WriteCheck check, LifecycleCheck lifecycle,
                                                OnRefusal on_refusal) {
  Merged merged;
  std::map<std::string, storage::RecordWrite> writes;
  std::set<std::string> changed;
  std::vector<std::string> order;
  for (size_t i = 0; i < changes.size(); ++i) {
    const Record* change = changes[i];
    auto it = writes.find(change->id());
    if (it == writes.end()) {
      HAMLET_ASSIGN_OR_RETURN(std::optional<Record> existing, group.GetRecord(change->id()));
      storage::RecordWrite write;
      if (existing.has_value()) {
        write.previous_seq = existing->server_seq();
        write.previous = *existing;
        write.state = std::move(*existing);
      }
      {
        absl::MutexLock lock(&units_mu_);
        write.commune = units_.CommuneOf(change->unit_code());
      }
      it = writes.emplace(change->id(), std::move(write)).first;
      order.push_back(change->id());
    }
    Record& state = it->second.state;
    if (absl::Status checked = CheckChange(*change, state, caller, check, lifecycle); !checked.ok()) {
      if (on_refusal == OnRefusal::kRefuseBatch) return checked;
      merged.refused.emplace_back(i, std::move(checked));
      continue;
    }
    if (sync::MergeRecord(*change, &state)) changed.insert(change->id());
    for (const auto& fs : change->field_stamps()) clock_.Observe(fs.stamp());
    if (change->deleted()) clock_.Observe(change->deleted_stamp());
  }
  for (const std::string& id : order) {
    if (changed.count(id) == 0) continue;  // Nothing newer than what is stored: no new version.
    merged.writes.push_back(std::move(writes[id]));
  }
  return merged;
}

void Town::Published(const Committed& committed) {
  if (!committed.units.empty()) {
    absl::MutexLock lock(&units_mu_);
    for (const Record& unit : committed.units) {
      if (unit.deleted()) {
        units_.Remove(unit.admin_unit().code());
      } else {
        units_.Put(unit.admin_unit());
      }
    }
  }
  feed_->Publish(committed.last_seq, committed.communes);
}

absl::Status Town::CommitAndPublish(
    const std::function<absl::Status(storage::CommitGroup&, std::optional<Committed>*)>& stage) {
  std::optional<Committed> committed;
  absl::Notification finished;
  absl::Status result;
  store_->Submit([&](storage::CommitGroup& group) { return stage(group, &committed); },
                 [&](const absl::Status& status) {
                   if (status.ok() && committed.has_value()) Published(*committed);
                   result = status;
                   finished.Notify();
                 });
  finished.WaitForNotification();
  return result;
}

absl::StatusOr<Town::Committed> Town::CommitMerged(storage::CommitGroup& group, const std::string& device_id,
                                                   const std::string& batch_id, const DeviceReport& report,
                                                   const std::string& content_hash, Merged merged,
                                                   const std::function<std::string(uint64_t)>& respond) {
  const int64_t now_ms = clock_.physical().NowMs();
  storage::PushCommit commit;
  commit.device_id = device_id;
  commit.batch_id = batch_id;
  Committed committed;
  for (storage::RecordWrite& write : merged.writes) {
    if (write.state.has_admin_unit()) committed.units.push_back(write.state);
    committed.communes.push_back(write.commune);
    commit.records.push_back(std::move(write));
  }
  HAMLET_ASSIGN_OR_RETURN(std::optional<storage::DeviceState> device, group.GetDevice(device_id));
  commit.device = device.value_or(storage::DeviceState());
  commit.device.set_device_id(device_id);
  commit.device.set_last_batch_id(batch_id);
  commit.device.set_last_seen_ms(now_ms);
  if (!report.app_version.empty()) commit.device.set_app_version(report.app_version);
  if (report.pending_changes.has_value()) commit.device.set_pending_changes(*report.pending_changes);
  commit.device.set_batches_applied(commit.device.batches_applied() + 1);
  if (report.reoffer) {
    commit.device.set_batches_reoffered(commit.device.batches_reoffered() + 1);
    commit.device.set_last_reoffer_ms(now_ms);
  }
  commit.device.set_records_applied(commit.device.records_applied() + commit.records.size());
  commit.clock = clock_.Last();
  commit.audit = std::move(merged.audit);
  HAMLET_ASSIGN_OR_RETURN(committed.last_seq, group.Stage(std::move(commit), [&](uint64_t last_seq) {
    storage::BatchReceipt receipt;
    receipt.set_content_hash(content_hash);
    receipt.set_response(respond(last_seq));
    receipt.set_commit_time_ms(now_ms);
    return receipt;
  }));
  return committed;
}

// A push on its way: the request, checked on the caller's thread, and what its
// merge in the commit group makes of it.
struct Town::PushJob {
  hamlet::v1::PushRequest request;
  Caller caller;
  PushDone done;
  bool replica = false;
  OnRefusal on_refusal = OnRefusal::kRefuseBatch;
  // The changes that pass validation, and each one's position in the batch.
  std::vector<const Record*> changes;
  std::vector<uint32_t> positions;
  std::vector<hamlet::v1::SetAsideChange> set_aside;
  std::string hash;
  // Set for a batch a bundle carried: when the bundle was written.
  std::optional<int64_t> written_ms;
  hamlet::v1::PushResponse response;
  // Set when the merge staged a commit (not for a retry's receipt).
  std::optional<Committed> committed;

  void SetAside(uint32_t index, const absl::Status& why) {
    hamlet::v1::SetAsideChange& refused = set_aside.emplace_back();
    refused.set_index(index);
    refused.set_record_id(request.changes(static_cast<int>(index)).id());
    refused.set_code(static_cast<int32_t>(why.code()));
    refused.set_message(std::string(why.message()));
  }
};

absl::StatusOr<hamlet::v1::PushResponse> Town::Push(const hamlet::v1::PushRequest& request, const Caller& caller) {
  HAMLET_ASSIGN_OR_RETURN(Carried pushed, PushAndWait(request, caller, std::nullopt));
  return std::move(pushed.response);
}

std::shared_ptr<Town::PushJob> Town::NewPushJob(hamlet::v1::PushRequest request, const Caller& caller, PushDone done,
                                                std::optional<int64_t> written_ms) {
  auto job = std::make_shared<PushJob>();
  job->request = std::move(request);
  job->caller = caller;
  job->done = std::move(done);
  job->written_ms = written_ms;
  // A batch is the same batch, for its receipt too, in its lean and its whole form.
  for (Record& change : *job->request.mutable_changes()) {
    if (!change.default_node().empty() || sync::HasLeanStamps(change)) {
      sync::ExpandStamps(&change, job->request.device_id());
    }
  }
  return job;
}

void Town::Push(hamlet::v1::PushRequest request, const Caller& caller, PushDone done) {
  if (absl::Status device = CheckDevice(request.device_id(), caller); !device.ok()) return done(device);
  PushWhole(NewPushJob(std::move(request), caller, std::move(done), std::nullopt));
}

absl::StatusOr<Town::Carried> Town::PushCarried(const hamlet::v1::PushRequest& request, const Caller& caller,
                                                int64_t written_ms) {
  return PushAndWait(request, caller, written_ms);
}

absl::StatusOr<Town::Carried> Town::PushAndWait(const hamlet::v1::PushRequest& request, const Caller& caller,
                                                std::optional<int64_t> written_ms) {
  HAMLET_RETURN_IF_ERROR(CheckDevice(request.device_id(), caller));
  absl::Notification finished;
  absl::StatusOr<hamlet::v1::PushResponse> result;
  std::shared_ptr<PushJob> job = NewPushJob(
      request, caller,
      [&](absl::StatusOr<hamlet::v1::PushResponse> response) {
        result = std::move(response);
        finished.Notify();
      },
      written_ms);
  PushWhole(job);
  finished.WaitForNotification();
  if (!result.ok()) return result.status();
  // A batch merged now stages a commit; one answered from its receipt does not.
  return Carried{*std::move(result), !job->committed.has_value()};
}

void Town::PushWhole(std::shared_ptr<PushJob> job) {
  const hamlet::v1::PushRequest& request = job->request;
  const Caller& caller = job->caller;
  if (!sync::IsUuid(request.batch_id())) {
    return job->done(absl::InvalidArgumentError("batch_id must be a UUID generated for this batch"));
  }
  if (request.changes_size() == 0) return job->done(absl::InvalidArgumentError("a push needs at least one change"));
  if (request.changes_size() > options_.max_batch_records) {
    return job->done(absl::InvalidArgumentError(absl::StrCat("a push may carry at most ", options_.max_batch_records,
                                                             " records; this one has ", request.changes_size(),
                                                             ". Split it into several batches")));
  }
  // A lower-tier server sends merged states with their original stamps; it
  // held them to the lifecycle rules when its devices pushed them, so they
  // are merged as they are. The clock-skew limit still holds: a stamp ahead
  // of this clock is refused until this clock catches up, and the replicator
  // retries until then.
  job->replica = caller.principal.role == hamlet::v1::ROLE_REPLICATION_NODE;
  job->on_refusal = request.set_aside_refused() ? OnRefusal::kSetAside : OnRefusal::kRefuseBatch;
  for (int i = 0; i < request.changes_size(); ++i) {
    const Record& change = request.changes(i);
    absl::Status valid =
        ValidatePushedChange(change, job->replica ? sync::ChangeOrigin::kReplica : sync::ChangeOrigin::kDevice);
    if (!valid.ok()) {
      if (job->on_refusal == OnRefusal::kRefuseBatch) return job->done(valid);
      job->SetAside(static_cast<uint32_t>(i), valid);
      continue;
    }
    job->changes.push_back(&change);
    job->positions.push_back(static_cast<uint32_t>(i));
  }
  const int64_t now_ms = std::min(clock_.physical().NowMs(), job->written_ms.value_or(INT64_MAX));
  const int64_t limit_ms = now_ms + absl::ToInt64Milliseconds(options_.max_clock_skew);
  for (const Record* each : job->changes) {
    const Record& change = *each;
    if (sync::MaxStampMs(change) > limit_ms) {
      absl::Status status = absl::FailedPreconditionError(
          absl::StrFormat("record %s has a stamp %d ms ahead of %s (%d ms since epoch); allowed skew is %d ms. "
                          "Correct the device clock and stamp the edits again",
                          change.id(), sync::MaxStampMs(change) - now_ms,
                          job->written_ms.has_value() ? "the time its bundle was written" : "the server clock", now_ms,
                          absl::ToInt64Milliseconds(options_.max_clock_skew)));
      status.SetPayload(kServerTimeKey, absl::Cord(absl::StrCat(now_ms)));
      return job->done(WithReason(status, "CLOCK_SKEW"));
    }
  }
  job->hash = ContentHash(request);
  store_->Submit([this, job](storage::CommitGroup& group) { return StagePush(*job, group); },
                 [this, job](const absl::Status& status) {
                   if (!status.ok()) return job->done(status);
                   if (job->committed.has_value()) Published(*job->committed);
                   job->done(std::move(job->response));
                 });
}

absl::Status Town::StagePush(PushJob& job, storage::CommitGroup& group) {
  const hamlet::v1::PushRequest& request = job.request;
  // A retried batch is answered from its receipt (durable once the group
  // that reads it is, if it is in the group); a new one is merged and staged.
  HAMLET_ASSIGN_OR_RETURN(std::optional<storage::BatchReceipt> receipt,
                          group.GetBatchReceipt(request.device_id(), request.batch_id()));
  if (receipt.has_value()) {
    if (receipt->content_hash() != job.hash) {
      return absl::AlreadyExistsError(absl::StrCat("batch ", request.batch_id(),
                                                   " was already applied with different content; "
                                                   "a new batch needs a new batch_id"));
    }
    if (!job.response.ParseFromString(receipt->response())) {
      return absl::DataLossError("stored push response is damaged");
    }
    return absl::OkStatus();
  }
  HAMLET_ASSIGN_OR_RETURN(Merged merged,
                          MergeChanges(group, job.changes, job.caller, WriteCheck::kPerRecord,
                                       job.replica ? LifecycleCheck::kNone : LifecycleCheck::kMoves, job.on_refusal));
  for (const auto& [i, why] : merged.refused) job.SetAside(job.positions[i], why);
  std::sort(job.set_aside.begin(), job.set_aside.end(),
            [](const auto& a, const auto& b) { return a.index() < b.index(); });
  hamlet::v1::PushResponse& response = job.response;
  for (hamlet::v1::SetAsideChange& refused : job.set_aside) *response.add_set_aside() = std::move(refused);
  response.set_applied_records(static_cast<uint32_t>(merged.writes.size()));
  HAMLET_ASSIGN_OR_RETURN(job.committed,
                          CommitMerged(group, request.device_id(), request.batch_id(),
                                       {request.app_version(), request.pending_changes(), request.reoffer()}, job.hash,
                                       std::move(merged), [&](uint64_t last_seq) {
                                         response.set_server_seq(last_seq);
                                         response.set_server_id(store_->server_id());
                                         response.set_epoch(store_->epoch());
                                         *response.mutable_server_time() =
                                             TimeUtil::MillisecondsToTimestamp(clock_.physical().NowMs());
                                         return response.SerializeAsString();
                                       }));
  return absl::OkStatus();
}

absl::StatusOr<size_t> Town::ApplyUpstreamUnits(std::vector<Record> records) {
  std::vector<const Record*> units;
  for (Record& record : records) {
    if (!record.has_admin_unit()) continue;
    record.clear_server_seq();  // The upstream's sequence, not ours.
    HAMLET_RETURN_IF_ERROR(ValidatePushedChange(record, sync::ChangeOrigin::kReplica));
    units.push_back(&record);
  }
  if (units.empty()) return 0;
  Caller upstream;
  upstream.device_id = store_->server_id();
  upstream.principal.role = hamlet::v1::ROLE_REPLICATION_NODE;
  upstream.peer = "upstream";
  absl::BitGen gen;
  const std::string batch_id = sync::NewUuid(gen);
  size_t changed = 0;
  HAMLET_RETURN_IF_ERROR(CommitAndPublish([&](storage::CommitGroup& group, std::optional<Committed>* committed) {
    HAMLET_ASSIGN_OR_RETURN(Merged merged, MergeChanges(group, units, upstream, WriteCheck::kAuthorityCheckedByCaller,
                                                        LifecycleCheck::kNone));
    changed = merged.writes.size();
    if (changed == 0) return absl::OkStatus();
    HAMLET_ASSIGN_OR_RETURN(*committed, CommitMerged(group, store_->server_id(), batch_id, DeviceReport(), "",
                                                     std::move(merged), [](uint64_t) { return std::string(); }));
    return absl::OkStatus();
  }));
  return changed;
}

absl::StatusOr<hamlet::v1::ResolveConflictResponse> Town::ResolveConflict(
    const hamlet::v1::ResolveConflictRequest& request, const Caller& caller) {
  if (options_.tier == Tier::kProvince) {
    // The province holds copies; a resolution here would never reach the
    // town, whose next state would bring the conflict back.
    return absl::FailedPreconditionError(
        "conflicts are resolved at the record's town server; the province's copy follows by replication");
  }
  if (!sync::IsUuid(request.device_id())) return absl::InvalidArgumentError("device_id must be the device's UUID");
  if (!sync::IsUuid(request.request_id())) {
    return absl::InvalidArgumentError("request_id must be a UUID generated for this resolution");
  }
  if (!sync::IsUuid(request.record_id())) return absl::InvalidArgumentError("record_id must be a record's UUID");
  if (request.resolver().empty()) return absl::InvalidArgumentError("resolver (the deciding person's id) is required");
  HAMLET_RETURN_IF_ERROR(CheckDevice(request.device_id(), caller));
  if (!sync::MayResolveConflicts(caller.principal.role)) {
    return absl::PermissionDeniedError(
        absl::StrCat("resolving a conflict needs a team leader or a commune-level "
                     "role; this device is enrolled as ",
                     hamlet::v1::Role_Name(caller.principal.role)));
  }
  const std::string hash = Sha256(request.SerializeAsString());

  hamlet::v1::ResolveConflictResponse response;
  HAMLET_RETURN_IF_ERROR(CommitAndPublish([&](storage::CommitGroup& group, std::optional<Committed>* committed) {
    return StageResolution(request, caller, hash, group, &response, committed);
  }));
  return response;
}

absl::Status Town::StageResolution(const hamlet::v1::ResolveConflictRequest& request, const Caller& caller,
                                   const std::string& hash, storage::CommitGroup& group,
                                   hamlet::v1::ResolveConflictResponse* response, std::optional<Committed>* committed) {
  HAMLET_ASSIGN_OR_RETURN(std::optional<storage::BatchReceipt> receipt,
                          group.GetBatchReceipt(request.device_id(), request.request_id()));
  if (receipt.has_value()) {
    if (receipt->content_hash() != hash) {
      return absl::AlreadyExistsError(
          absl::StrCat("request ", request.request_id(), " was already used for another resolution"));
    }
    // The receipt names the record but does not hold it (it may be sealed):
    // a retry gets the record as it is now.
    if (!response->ParseFromString(receipt->response())) return absl::DataLossError("stored response is damaged");
    HAMLET_ASSIGN_OR_RETURN(std::optional<Record> current, group.GetRecord(request.record_id()));
    if (current.has_value()) *response->mutable_record() = std::move(*current);
    return absl::OkStatus();
  }
  HAMLET_ASSIGN_OR_RETURN(std::optional<Record> record, group.GetRecord(request.record_id()));
  if (!record.has_value()) return absl::NotFoundError(absl::StrCat("no record ", request.record_id()));
  if (caller.principal.role != hamlet::v1::ROLE_ADMIN) {
    absl::MutexLock lock(&units_mu_);
    if (sync::ReachOf(caller.principal, *record, units_) < sync::Reach::kRead) {
      return absl::PermissionDeniedError(absl::StrCat("record ", request.record_id(), " is outside the reach of ",
                                                      hamlet::v1::Role_Name(caller.principal.role), " of unit ",
                                                      caller.principal.unit_code));
    }
  }
  const hamlet::v1::Conflict* conflict = sync::FindConflict(*record, request.field());
  if (conflict == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("record ", request.record_id(), " has no open conflict on field ",
                                                      request.field(), "; it may have been resolved already"));
  }
  const google::protobuf::Message* body = sync::RecordBody(*record);
  const google::protobuf::Message* value = sync::RecordBody(request.value());
  if (value == nullptr || value->GetDescriptor() != body->GetDescriptor()) {
    return absl::InvalidArgumentError(absl::StrCat("value must hold a ", body->GetDescriptor()->name()));
  }
  const sync::BodySchema& schema = sync::BodySchema::For(body->GetDescriptor());
  const google::protobuf::FieldDescriptor* leader = body->GetDescriptor()->FindFieldByNumber(request.field());
  sync::LifecycleOrder conflict_order;
  hamlet::v1::Stamp settled;
  for (const auto& v : conflict->values()) {
    conflict_order = std::max(conflict_order, sync::OrderOf(*sync::RecordBody(v.value()), leader));
    if (sync::CompareStamps(v.stamp(), settled) > 0) settled = v.stamp();
  }
  if (sync::OrderOf(*value, leader) < conflict_order) {
    return absl::FailedPreconditionError(
        "the settled value may not rank below the competing values; pick one of them or a later state");
  }
  Record change = sync::EmptyChangeOf(*record);
  const hamlet::v1::Stamp stamp = clock_.Now();
  for (const google::protobuf::FieldDescriptor* f : schema.group(leader)) {
    sync::CopyField(*value, sync::MutableRecordBody(&change), f);
    sync::SetFieldStamp(&change, static_cast<uint32_t>(f->number()), stamp);
  }
  hamlet::v1::FieldStamp lead = *sync::FindFieldStamp(change, request.field());
  *lead.mutable_supersedes() = settled;
  sync::PutFieldStamp(&change, lead);
  HAMLET_RETURN_IF_ERROR(ValidatePushedChange(change, sync::ChangeOrigin::kResolution));
  // The resolver's authority was checked above, in place of the write check.
  HAMLET_ASSIGN_OR_RETURN(Merged merged, MergeChanges(group, {&change}, caller, WriteCheck::kAuthorityCheckedByCaller));
  merged.audit.push_back(AuditOf(caller, "resolve_conflict", request.record_id(),
                                 absl::StrCat("field ", request.field(), " settled by ", request.resolver()),
                                 clock_.physical().NowMs()));
  const bool changes = !merged.writes.empty();
  *response->mutable_record() = changes ? merged.writes.front().state : *record;
  HAMLET_ASSIGN_OR_RETURN(*committed,
                          CommitMerged(group, request.device_id(), request.request_id(), DeviceReport(), hash,
                                       std::move(merged), [&](uint64_t last_seq) {
                                         // One record written: it took the last sequence number.
                                         if (changes) response->mutable_record()->set_server_seq(last_seq);
                                         response->set_server_id(store_->server_id());
                                         response->set_epoch(store_->epoch());
                                         hamlet::v1::ResolveConflictResponse receipt;
                                         receipt.mutable_record()->set_id(response->record().id());
                                         receipt.mutable_record()->set_server_seq(response->record().server_seq());
                                         receipt.set_server_id(response->server_id());
                                         receipt.set_epoch(response->epoch());
                                         return receipt.SerializeAsString();
                                       }));
  return absl::OkStatus();
}

absl::StatusOr<std::string> Town::ResolveScope(const std::string& scope_unit_code, bool reference_only,
                                               const Caller& caller) const {
  absl::MutexLock lock(&units_mu_);
  std::string commune;
  if (reference_only) {
    // Admin units and town-level teams: records each reader's access rows
    // filter like any other.
    if (!scope_unit_code.empty()) {
      return absl::InvalidArgumentError("reference_only pulls take no scope_unit_code");
    }
    return std::string(kReferenceScope);
  }
  if (scope_unit_code.empty()) {
    if (!sync::SeesWholeServer(caller.principal.role)) commune = units_.CommuneOf(caller.principal.unit_code);
  } else if (scope_unit_code != options_.unit_code) {
    const hamlet::v1::AdminUnit* unit = units_.Find(scope_unit_code);
    // The server keeps the admin units of other towns as reference data; a
    // commune of another town is not this server's to serve.
    if (unit == nullptr || unit->level() != hamlet::v1::UNIT_LEVEL_COMMUNE ||
        !units_.IsWithin(scope_unit_code, options_.unit_code)) {
      return absl::InvalidArgumentError(absl::StrCat("scope_unit_code \"", scope_unit_code,
                                                     "\" is neither this server's town (", options_.unit_code,
                                                     ") nor one of its communes"));
    }
    commune = scope_unit_code;
  }
  if (!sync::MayReadScope(caller.principal, commune, units_)) {
    return absl::PermissionDeniedError(absl::StrCat(
        hamlet::v1::Role_Name(caller.principal.role), " of unit ", caller.principal.unit_code, " may not read ",
        commune.empty() ? std::string("the whole server") : absl::StrCat("commune ", commune)));
  }
  return commune;
}

bool Town::KnowsUnit(const std::string& code) const {
  absl::MutexLock lock(&units_mu_);
  return units_.Find(code) != nullptr;
}

bool Town::ServesUnit(const std::string& code) const {
  absl::MutexLock lock(&units_mu_);
  return units_.IsWithin(code, options_.unit_code);
}

std::vector<std::string> Town::UnitsWithin(const std::string& code) const {
  absl::MutexLock lock(&units_mu_);
  return units_.Within(code);
}

hamlet::v1::UnitLevel Town::UnitLevel(const std::string& code) const {
  absl::MutexLock lock(&units_mu_);
  const hamlet::v1::AdminUnit* unit = units_.Find(code);
  return unit == nullptr ? hamlet::v1::UNIT_LEVEL_UNSPECIFIED : unit->level();
}

storage::ChangeScope Town::IndexScope(const std::string& commune) {
  if (commune == kReferenceScope) return storage::ChangeScope::AboveCommune();
  return commune.empty() ? storage::ChangeScope::WholeServer() : storage::ChangeScope::Commune(commune);
}

absl::Status Town::CheckDevice(const std::string& device_id, const Caller& caller) const {
  if (!sync::IsUuid(device_id)) return absl::InvalidArgumentError("device_id must be the device's UUID");
  if (device_id != caller.device_id) {
    return absl::PermissionDeniedError(
        absl::StrCat("device_id ", device_id, " is not the device this token was issued to"));
  }
  return absl::OkStatus();
}

absl::Status Town::CheckWritable(const Record& change, const Record* existing, const Caller& caller) const {
  sync::Reach reach;
  {
    absl::MutexLock lock(&units_mu_);
    reach = sync::ReachOf(caller.principal, existing != nullptr ? *existing : change, units_);
  }
  // A create-only record (an informant identity) may be created, never changed.
  if (reach == sync::Reach::kWrite || (reach == sync::Reach::kCreateOnly && existing == nullptr)) {
    return absl::OkStatus();
  }
  // Commune-level roles supervise the lifecycle of the records they read:
  // they may move it (reopening a closed case), and nothing else.
  if (reach == sync::Reach::kRead && existing != nullptr &&
      sync::LifecycleAuthority(caller.principal.role) == sync::Authority::kCommune && sync::OnlyLifecycle(change)) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "record ", change.id(), " (", sync::RecordBody(change)->GetDescriptor()->name(), " in unit ", change.unit_code(),
      ") is not writable by ", hamlet::v1::Role_Name(caller.principal.role), " of unit ", caller.principal.unit_code));
}

std::string Town::CursorTag(const sync::Cursor& cursor) const {
  return HmacSha256(store_->cursor_key(), sync::CursorPayload(cursor)).substr(0, sync::kCursorTagBytes);
}

absl::StatusOr<uint64_t> Town::CursorSeq(const std::string& bytes, const std::string& commune) const {
  if (bytes.empty()) return 0;
  const auto invalidated = [](absl::string_view why) {
    return WithReason(
        absl::FailedPreconditionError(absl::StrCat(why, "; pull again from an empty cursor and keep your outbox")),
        "CURSOR_INVALIDATED");
  };
  if (sync::IsUntaggedCursor(bytes)) {
    return invalidated("the cursor was issued by an older hamletd, before cursors were authenticated");
  }
  HAMLET_ASSIGN_OR_RETURN(sync::Cursor cursor, sync::DecodeCursor(bytes));
  // Another server's cursor cannot be checked here, and is no use here
  // either: the device starts over (as it would if someone altered the
  // server id in a cursor, which can cost only that device a full pull).
  if (cursor.server_id != store_->server_id()) return invalidated("the cursor was issued by another server");
  if (CRYPTO_memcmp(cursor.tag.data(), CursorTag(cursor).data(), sync::kCursorTagBytes) != 0) {
    return absl::InvalidArgumentError(
        "cursor is not one this server issued; send back next_cursor unchanged, or an empty cursor to start over");
  }
  if (cursor.epoch != store_->epoch() || cursor.seq > store_->last_seq()) {
    return invalidated("the cursor does not fit this server's history, as after a restore from backup");
  }
  if (cursor.scope != commune) {
    return absl::InvalidArgumentError("cursor was issued for another scope; keep one cursor per scope");
  }
  return cursor.seq;
}

std::string Town::MakeCursor(const std::string& commune, uint64_t seq) const {
  sync::Cursor cursor{store_->server_id(), store_->epoch(), commune, seq, ""};
  cursor.tag = CursorTag(cursor);
  return sync::EncodeCursor(cursor);
}

absl::StatusOr<PulledPage> Town::Pull(const hamlet::v1::PullRequest& request, const Caller& caller) {
  HAMLET_ASSIGN_OR_RETURN(PulledPage pulled, ReadPull(request, caller));
  HAMLET_RETURN_IF_ERROR(AuditSealedReads(pulled, caller));
  return pulled;
}

absl::StatusOr<PulledPage> Town::ReadPull(const hamlet::v1::PullRequest& request, const Caller& caller) {
  HAMLET_RETURN_IF_ERROR(CheckDevice(request.device_id(), caller));
  HAMLET_ASSIGN_OR_RETURN(std::string commune,
                          ResolveScope(request.scope_unit_code(), request.reference_only(), caller));
  HAMLET_ASSIGN_OR_RETURN(uint64_t after, CursorSeq(request.cursor(), commune));
  const int page_size =
      request.page_size() == 0
          ? options_.default_page_size
          : std::min<int>(static_cast<int>(std::min<uint32_t>(request.page_size(), 1u << 30)), options_.max_page_size);
  const int page_bytes = request.max_page_bytes() == 0
                             ? options_.default_page_bytes
                             : std::min<int>(static_cast<int>(std::min<uint32_t>(request.max_page_bytes(), 1u << 30)),
                                             options_.max_page_bytes);
  PulledPage pulled;
  storage::StoredPage page;
  // Records the caller may not read are skipped, and so are those it wrote
  // every value of if it asks (it holds them already: no echo of its push).
  // Both are decided from the change index before a record is read, but for
  // sealed records (whose entries hold no facts) and admin units (whose
  // reach needs the unit): those are decided once read. A page of nothing
  // but skipped records is followed by the next, so a device rarely gets an
  // empty page while changes remain: up to 8 pages, or as many as make 1 MiB
  // when pages are small (a slow link's), so that a phone that pushed a week
  // of work skips past it in a few calls while one call never reads more
  // than 8 pages of the largest size.
  // The changes `wanted` could not decide from their facts, by seq.
  absl::flat_hash_set<uint64_t> undecided;
  const auto wanted = [&](const storage::StoredChange& change) {
    std::optional<sync::Reach> reach;
    if (!change.sealed) {
      if (request.omit_own_writes() && !caller.device_id.empty() && change.sole_writer == caller.device_id) {
        return false;
      }
      absl::ReaderMutexLock lock(&units_mu_);
      reach = sync::ReachOfFacts(caller.principal, change.facts, units_);
    }
    if (!reach.has_value()) undecided.insert(change.seq);
    return !reach.has_value() || *reach >= sync::Reach::kRead;
  };
  const bool as_stored = request.lean_stamps() && sync::RedactsNothing(caller.principal.role);
  const int max_reads = std::clamp((1 << 20) / std::max(page_bytes, 1), 8, 64);
  for (int pages = 0; pages < max_reads && pulled.records.empty(); ++pages) {
    HAMLET_ASSIGN_OR_RETURN(page, store_->ReadStoredChanges(IndexScope(commune), after, page_size, page_bytes,
                                                            storage::CountRemaining::kYes, wanted));
    for (storage::StoredChange& change : page.changes) {
      const bool decided = !undecided.contains(change.seq);
      if (!decided || !as_stored) {
        Record record;
        HAMLET_RETURN_IF_ERROR(storage::TownStore::ParseStoredRecord(change, &record));
        if (!decided) {
          if (request.omit_own_writes() && sync::WrittenOnlyBy(record, caller.device_id)) continue;
          absl::ReaderMutexLock lock(&units_mu_);
          if (sync::ReachOf(caller.principal, record, units_) < sync::Reach::kRead) continue;
        }
        if (!as_stored) {  // Sent otherwise than stored: redacted, stamps as asked.
          sync::Redact(caller.principal, &record);
          if (request.lean_stamps()) sync::LeanStamps(&record, "");
          change.record = record.SerializeAsString();
        }
      }
      if (change.sealed) pulled.sealed_reads.push_back(change.record_id);
      pulled.records.push_back(std::move(change.record));
    }
    after = page.through_seq;
    if (page.remaining == 0) break;
  }
  hamlet::v1::PullResponse& response = pulled.response;
  response.set_next_cursor(MakeCursor(commune, page.through_seq));
  response.set_remaining(page.remaining);
  if (request.cursor().empty()) *response.mutable_history() = store_->history();
  return pulled;
}

absl::Status Town::AuditSealedReads(const PulledPage& page, const Caller& caller) {
  for (const std::string& id : page.sealed_reads) {
    HAMLET_RETURN_IF_ERROR(
        store_->AppendAudit(AuditOf(caller, "sealed_read", id, "sealed record pulled", clock_.physical().NowMs()))
            .status());
  }
  return absl::OkStatus();
}

void Town::NotePull(const std::string& device_id, const std::string& scope_unit_code, const std::string& cursor) {
  absl::MutexLock lock(&last_pulls_mu_);
  storage::PullPosition& last = last_pulls_[device_id];
  last.set_scope(scope_unit_code);
  last.set_cursor(cursor);
}

std::optional<storage::PullPosition> Town::LastPull(const std::string& device_id) const {
  absl::MutexLock lock(&last_pulls_mu_);
  auto it = last_pulls_.find(device_id);
  if (it == last_pulls_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<Town::WatchStart> Town::StartWatch(const hamlet::v1::WatchRequest& request, const Caller& caller) {
  HAMLET_RETURN_IF_ERROR(CheckDevice(request.device_id(), caller));
  HAMLET_ASSIGN_OR_RETURN(std::string commune, ResolveScope(request.scope_unit_code(), false, caller));
  HAMLET_ASSIGN_OR_RETURN(uint64_t seq, CursorSeq(request.cursor(), commune));
  return WatchStart{IndexScope(commune), seq};
}

}  // namespace hamlet::server
