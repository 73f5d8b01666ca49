#include "storage/device_store.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"
#include "storage/rocks.h"
#include "sync/big_endian.h"
#include "sync/status_macros.h"

namespace hamlet::storage {

using hamlet::v1::Record;
using internal::DecodeValue;
using internal::EncodeValue;
using internal::FromRocks;

namespace {

constexpr int kMeta = 0;
constexpr int kRecords = 1;
constexpr int kOutbox = 2;
constexpr int kRejected = 3;
constexpr int kSent = 4;
constexpr char kFormat[] = "1";

std::string SeqKey(uint64_t seq) {
  std::string key;
  sync::PutBigEndian64(&key, seq);
  return key;
}

rocksdb::WriteOptions Synced() {
  rocksdb::WriteOptions write;
  write.sync = true;
  return write;
}

}  // namespace

DeviceStore::~DeviceStore() = default;

absl::StatusOr<std::unique_ptr<DeviceStore>> DeviceStore::Open(const std::string& dir,
                                                               absl::string_view new_device_id) {
  HAMLET_ASSIGN_OR_RETURN(internal::OpenedDb opened,
                          internal::OpenDb(dir, {"default", "records", "outbox", "rejected", "sent"}));
  std::unique_ptr<DeviceStore> store(new DeviceStore());
  store->db_ = std::make_unique<internal::OpenedDb>(std::move(opened));
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> format, store->GetMeta("format"));
  if (format.has_value() && *format != kFormat) {
    return absl::FailedPreconditionError(
        absl::StrCat("device store in ", dir, " has format ", *format, "; this client reads format ", kFormat));
  }
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> id, store->GetMeta("device_id"));
  if (id.has_value()) {
    store->device_id_ = *id;
  } else {
    store->device_id_ = std::string(new_device_id);
    rocksdb::WriteBatch batch;
    batch.Put(store->db_->families[kMeta], "format", kFormat);
    batch.Put(store->db_->families[kMeta], "device_id", store->device_id_);
    HAMLET_RETURN_IF_ERROR(FromRocks(store->db_->db->Write(Synced(), &batch), "creating device store"));
  }
  return store;
}

absl::StatusOr<std::optional<std::string>> DeviceStore::GetMeta(const std::string& key) const {
  std::string value;
  rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), db_->families[kMeta], key, &value);
  if (s.IsNotFound()) return std::nullopt;
  HAMLET_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("reading ", key)));
  return value;
}

absl::StatusOr<std::optional<Record>> DeviceStore::GetRecord(const std::string& id) const {
  std::string value;
  rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), db_->families[kRecords], id, &value);
  if (s.IsNotFound()) return std::nullopt;
  HAMLET_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("reading record ", id)));
  Record record;
  HAMLET_RETURN_IF_ERROR(DecodeValue(value, &record));
  return record;
}

absl::StatusOr<std::vector<Record>> DeviceStore::ListRecords() const {
  std::vector<Record> records;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->families[kRecords]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    Record record;
    HAMLET_RETURN_IF_ERROR(DecodeValue(internal::View(it->value()), &record));
    records.push_back(std::move(record));
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "listing records"));
  return records;
}

absl::Status DeviceStore::SaveLocalEdit(const Record& state, const Record& change, const hamlet::v1::Stamp& clock) {
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> next, GetMeta("outbox_next"));
  if (next.has_value() && next->size() != 8) return absl::DataLossError("stored outbox_next is damaged");
  const uint64_t seq = next.has_value() ? sync::GetBigEndian64(*next) : 1;
  OutboxEntry entry;
  *entry.mutable_change() = change;
  rocksdb::WriteBatch batch;
  batch.Put(db_->families[kRecords], state.id(), EncodeValue(state));
  batch.Put(db_->families[kOutbox], SeqKey(seq), EncodeValue(entry));
  batch.Put(db_->families[kMeta], "outbox_next", SeqKey(seq + 1));
  batch.Put(db_->families[kMeta], "clock", EncodeValue(clock));
  return FromRocks(db_->db->Write(Synced(), &batch), "saving local edit");
}

absl::StatusOr<std::vector<OutboxItem>> DeviceStore::ReadOutbox(size_t max) const {
  std::vector<OutboxItem> items;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->families[kOutbox]));
  for (it->SeekToFirst(); it->Valid() && items.size() < max; it->Next()) {
    if (it->key().size() != 8) return absl::DataLossError("an outbox key is damaged");
    OutboxEntry entry;
    HAMLET_RETURN_IF_ERROR(DecodeValue(internal::View(it->value()), &entry));
    items.push_back({sync::GetBigEndian64(internal::View(it->key())), std::move(*entry.mutable_change())});
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "reading outbox"));
  return items;
}

absl::StatusOr<std::vector<OutboxItem>> DeviceStore::ReadOutboxThrough(uint64_t last) const {
  std::vector<OutboxItem> items;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->families[kOutbox]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key().size() != 8) return absl::DataLossError("an outbox key is damaged");
    const uint64_t seq = sync::GetBigEndian64(internal::View(it->key()));
    if (seq > last) break;
    OutboxEntry entry;
    HAMLET_RETURN_IF_ERROR(DecodeValue(internal::View(it->value()), &entry));
    items.push_back({seq, std::move(*entry.mutable_change())});
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "reading outbox"));
  return items;
}

absl::StatusOr<size_t> DeviceStore::OutboxSize() const {
  size_t count = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->families[kOutbox]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++count;
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "counting outbox"));
  return count;
}

absl::StatusOr<std::optional<PendingBatch>> DeviceStore::GetPendingBatch() const {
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> value, GetMeta("pending"));
  if (!value.has_value()) return std::nullopt;
  PendingBatch batch;
  HAMLET_RETURN_IF_ERROR(DecodeValue(*value, &batch));
  return batch;
}

absl::Status DeviceStore::SetPendingBatch(const PendingBatch& batch) {
  return FromRocks(db_->db->Put(Synced(), db_->families[kMeta], "pending", EncodeValue(batch)), "saving pending batch");
}

absl::StatusOr<std::vector<PendingBatch>> DeviceStore::GetQueuedBatches() const {
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> value, GetMeta("queued"));
  if (!value.has_value()) return std::vector<PendingBatch>();
  QueuedBatches queued;
  HAMLET_RETURN_IF_ERROR(DecodeValue(*value, &queued));
  return std::vector<PendingBatch>(queued.batches().begin(), queued.batches().end());
}

namespace {

// Puts `queued` under "queued", or deletes the key when there are none.
void PutQueued(const std::vector<PendingBatch>& queued, rocksdb::ColumnFamilyHandle* meta, rocksdb::WriteBatch* batch) {
  if (queued.empty()) {
    batch->Delete(meta, "queued");
    return;
  }
  QueuedBatches value;
  for (const PendingBatch& each : queued) *value.add_batches() = each;
  batch->Put(meta, "queued", EncodeValue(value));
}

}  // namespace

absl::Status DeviceStore::SetBatches(const PendingBatch& pending, const std::vector<PendingBatch>& queued) {
  rocksdb::WriteBatch batch;
  batch.Put(db_->families[kMeta], "pending", EncodeValue(pending));
  PutQueued(queued, db_->families[kMeta], &batch);
  return FromRocks(db_->db->Write(Synced(), &batch), "saving the batches to push");
}

absl::Status DeviceStore::AckPendingBatch(const std::map<uint32_t, std::string>& set_aside, const SentCall* sent) {
  return SettlePendingBatch(
      [&](uint32_t index) -> const std::string* {
        auto it = set_aside.find(index);
        return it == set_aside.end() ? nullptr : &it->second;
      },
      sent);
}

absl::Status DeviceStore::RejectPendingBatch(const std::string& reason) {
  return SettlePendingBatch([&](uint32_t) { return &reason; });
}

absl::Status DeviceStore::SettlePendingBatch(const std::function<const std::string*(uint32_t)>& refusal,
                                             const SentCall* sent) {
  HAMLET_ASSIGN_OR_RETURN(std::optional<PendingBatch> pending, GetPendingBatch());
  if (!pending.has_value()) return absl::OkStatus();
  HAMLET_ASSIGN_OR_RETURN(std::vector<OutboxItem> items, ReadOutboxThrough(pending->last_outbox_seq()));
  rocksdb::WriteBatch batch;
  if (sent != nullptr) HAMLET_RETURN_IF_ERROR(PutSent(*sent, &batch));
  for (uint32_t i = 0; i < items.size(); ++i) {
    const std::string* reason = refusal(i);
    if (reason == nullptr) continue;
    RejectedEdit rejected;
    *rejected.mutable_change() = std::move(items[i].change);
    rejected.set_batch_id(pending->batch_id());
    rejected.set_reason(*reason);
    batch.Put(db_->families[kRejected], SeqKey(items[i].seq), EncodeValue(rejected));
  }
  batch.DeleteRange(db_->families[kOutbox], SeqKey(0), SeqKey(pending->last_outbox_seq() + 1));
  // The next batch fixed for a bundle, if any, is pushed next.
  HAMLET_ASSIGN_OR_RETURN(std::vector<PendingBatch> queued, GetQueuedBatches());
  if (queued.empty()) {
    batch.Delete(db_->families[kMeta], "pending");
  } else {
    batch.Put(db_->families[kMeta], "pending", EncodeValue(queued.front()));
    queued.erase(queued.begin());
    PutQueued(queued, db_->families[kMeta], &batch);
  }
  return FromRocks(db_->db->Write(Synced(), &batch), "settling the pushed batch");
}

absl::Status DeviceStore::PutSent(const SentCall& sent, rocksdb::WriteBatch* batch) {
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> next, GetMeta("sent_next"));
  uint64_t n = next.has_value() && next->size() == 8 ? sync::GetBigEndian64(*next) : 1;
  batch->Put(db_->families[kSent], SeqKey(n), EncodeValue(sent));
  batch->Put(db_->families[kMeta], "sent_next", SeqKey(n + 1));
  return absl::OkStatus();
}

absl::Status DeviceStore::RetainSent(const SentCall& sent) {
  rocksdb::WriteBatch batch;
  HAMLET_RETURN_IF_ERROR(PutSent(sent, &batch));
  return FromRocks(db_->db->Write(Synced(), &batch), "keeping an acknowledged call");
}

absl::StatusOr<std::vector<std::pair<uint64_t, SentCall>>> DeviceStore::ListSent() const {
  std::vector<std::pair<uint64_t, SentCall>> sent;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->families[kSent]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key().size() != 8) return absl::DataLossError("a kept call's key is damaged");
    SentCall call;
    HAMLET_RETURN_IF_ERROR(DecodeValue(it->value().ToString(), &call));
    sent.emplace_back(sync::GetBigEndian64(it->key().ToString()), std::move(call));
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "listing kept calls"));
  return sent;
}

absl::Status DeviceStore::UpdateSent(uint64_t key, const SentCall& sent) {
  return FromRocks(db_->db->Put(Synced(), db_->families[kSent], SeqKey(key), EncodeValue(sent)),
                   "updating a kept call");
}

absl::Status DeviceStore::PruneSent(int64_t older_than_ms, uint64_t max_bytes) {
  HAMLET_ASSIGN_OR_RETURN(auto sent, ListSent());
  uint64_t bytes = 0;
  for (const auto& [key, call] : sent) bytes += call.ByteSizeLong();
  rocksdb::WriteBatch batch;
  for (const auto& [key, call] : sent) {
    if (call.acked_ms() >= older_than_ms && bytes <= max_bytes) break;
    batch.Delete(db_->families[kSent], SeqKey(key));
    bytes -= call.ByteSizeLong();
  }
  if (batch.Count() == 0) return absl::OkStatus();
  return FromRocks(db_->db->Write(Synced(), &batch), "dropping old acknowledged calls");
}

absl::Status DeviceStore::SetReofferDue(const std::optional<hamlet::v1::ServerHistory>& history) {
  if (!history.has_value()) {
    return FromRocks(db_->db->Delete(Synced(), db_->families[kMeta], "reoffer_due"), "clearing the re-offer");
  }
  return FromRocks(db_->db->Put(Synced(), db_->families[kMeta], "reoffer_due", EncodeValue(*history)),
                   "saving the re-offer");
}

absl::StatusOr<std::optional<hamlet::v1::ServerHistory>> DeviceStore::GetReofferDue() const {
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> value, GetMeta("reoffer_due"));
  if (!value.has_value()) return std::nullopt;
  hamlet::v1::ServerHistory history;
  HAMLET_RETURN_IF_ERROR(DecodeValue(*value, &history));
  return history;
}

absl::StatusOr<std::vector<RejectedEdit>> DeviceStore::ListRejected() const {
  std::vector<RejectedEdit> rejected;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), db_->families[kRejected]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    RejectedEdit edit;
    HAMLET_RETURN_IF_ERROR(DecodeValue(internal::View(it->value()), &edit));
    rejected.push_back(std::move(edit));
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "reading rejected edits"));
  return rejected;
}

absl::StatusOr<std::optional<PullPosition>> DeviceStore::GetPullPosition() const {
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> value, GetMeta("cursor"));
  if (!value.has_value()) return std::nullopt;
  PullPosition position;
  HAMLET_RETURN_IF_ERROR(DecodeValue(*value, &position));
  return position;
}

absl::StatusOr<std::string> DeviceStore::GetCursor(const std::string& scope) const {
  HAMLET_ASSIGN_OR_RETURN(std::optional<PullPosition> position, GetPullPosition());
  return position.has_value() && position->scope() == scope ? position->cursor() : "";
}

absl::Status DeviceStore::SavePulledPage(const std::vector<Record>& states, const std::string& scope,
                                         const std::string& next_cursor, const hamlet::v1::Stamp& clock) {
  rocksdb::WriteBatch batch;
  for (const Record& state : states) batch.Put(db_->families[kRecords], state.id(), EncodeValue(state));
  PullPosition position;
  position.set_scope(scope);
  position.set_cursor(next_cursor);
  batch.Put(db_->families[kMeta], "cursor", EncodeValue(position));
  batch.Put(db_->families[kMeta], "clock", EncodeValue(clock));
  return FromRocks(db_->db->Write(Synced(), &batch), "saving pulled page");
}

absl::Status DeviceStore::SaveMergedRecords(const std::vector<Record>& states, const hamlet::v1::Stamp& clock) {
  rocksdb::WriteBatch batch;
  for (const Record& state : states) batch.Put(db_->families[kRecords], state.id(), EncodeValue(state));
  batch.Put(db_->families[kMeta], "clock", EncodeValue(clock));
  return FromRocks(db_->db->Write(Synced(), &batch), "saving merged records");
}

absl::Status DeviceStore::ResetCursor() {
  return FromRocks(db_->db->Delete(Synced(), db_->families[kMeta], "cursor"), "resetting cursor");
}

absl::Status DeviceStore::SetEnrolment(const std::string& token, hamlet::v1::Role role) {
  rocksdb::WriteBatch batch;
  batch.Put(db_->families[kMeta], "token", token);
  batch.Put(db_->families[kMeta], "role", absl::StrCat(static_cast<int>(role)));
  return FromRocks(db_->db->Write(Synced(), &batch), "saving enrolment");
}

absl::StatusOr<std::string> DeviceStore::GetToken() const {
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> value, GetMeta("token"));
  return value.value_or("");
}

absl::StatusOr<hamlet::v1::Role> DeviceStore::GetRole() const {
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> value, GetMeta("role"));
  int role = 0;
  if (value.has_value() && (!absl::SimpleAtoi(*value, &role) || !hamlet::v1::Role_IsValid(role))) {
    return absl::DataLossError("stored role is damaged");
  }
  return static_cast<hamlet::v1::Role>(role);
}

absl::Status DeviceStore::ForgetRecord(const std::string& id) {
  return FromRocks(db_->db->Delete(Synced(), db_->families[kRecords], id), "forgetting record");
}

absl::Status DeviceStore::Scrub() {
  rocksdb::FlushOptions flush;
  flush.wait = true;
  HAMLET_RETURN_IF_ERROR(FromRocks(db_->db->Flush(flush, db_->families), "flushing"));
  rocksdb::CompactRangeOptions compact;
  compact.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  for (rocksdb::ColumnFamilyHandle* family : db_->families) {
    HAMLET_RETURN_IF_ERROR(FromRocks(db_->db->CompactRange(compact, family, nullptr, nullptr), "compacting"));
  }
  return absl::OkStatus();
}

absl::StatusOr<hamlet::v1::Stamp> DeviceStore::GetClock() const {
  HAMLET_ASSIGN_OR_RETURN(std::optional<std::string> value, GetMeta("clock"));
  hamlet::v1::Stamp clock;
  if (value.has_value()) HAMLET_RETURN_IF_ERROR(DecodeValue(*value, &clock));
  return clock;
}

}  // namespace hamlet::storage
