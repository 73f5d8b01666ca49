#include "storage/town_store.h"

#include <algorithm>

#include <openssl/rand.h>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"
#include "storage/rocks.h"
#include "sync/big_endian.h"
#include "sync/merge.h"
#include "sync/report.h"
#include "sync/stamp.h"
#include "sync/status_macros.h"
#include "sync/uuid.h"

namespace hamlet::storage {

using hamlet::v1::Record;
using internal::DecodeValue;
using internal::EncodeValue;
using internal::FromRocks;
using sync::GetBigEndian64;
using sync::PutBigEndian64;

// Key layout (docs/STORAGE.md). Column families and their keys:
//
//   default          meta_key -> value
//     "format"       -> "2"                     DO NOT CHANGE the layout without
//     "server_id"    -> UUID text                 bumping "format".
//     "epoch"        -> be64
//     "cursor_key"   -> 32 random bytes (added to older stores when opened)
//     "last_seq"     -> be64
//     "clock"        -> v1 Stamp
//     "holds_sealed" -> "1" once a sealed record was written
//     "replication"  -> v1 ReplicationState
//     "history"      -> v1 ServerHistory (earlier epochs, restore and backup
//                       times), written by a restore
//   records          record_id -> v1 Record (current merged state, lean stamps), or
//                    for a sealed record: 0x02 key_id:8 nonce:12 AES-256-GCM(Record)
//                    tag:16 with the record id as additional data (storage/sealing.h)
//   changes          be64(seq) -> v1 ChangeEntry          one entry per record,
//   commune_changes  u8(len) commune be64(seq) -> v1 ChangeEntry   at its latest seq
//   devices          device_id -> v1 DeviceState
//   batches          device_id 0x00 batch_id -> v1 BatchReceipt
//   enrolments       device_id -> v1 Enrolment
//   audit            be64(audit_seq) -> v1 AuditEntry
//   conflicted       record_id -> commune      records with an open conflict
//   index_counts     (0xff | u8(len) commune) be64(seq / 4096) -> be64 count of
//                    change index entries in that block ("index_counts" in meta
//                    says they are complete)
//   tallies          unit 0x00 be32(YYYYMM) metric -> be64(int64 count)   report sums
//                    (sync/report.h); "tallies" in meta says they are complete
//
// "v1 X" is the byte 0x01 followed by the serialized proto X (storage/rocks.h).
namespace {

constexpr char kFormat[] = "2";
// The format before records kept lean stamps and index entries their
// records' access facts; Open migrates it.
constexpr char kFormatBeforeFacts[] = "1";
// A store whose migration to format 2 has begun: no hamletd before format 2
// opens it (half its records and entries are new), and Open carries on.
constexpr char kFormatMigrating[] = "1-to-2";
constexpr size_t kCursorKeyBytes = 32;

absl::StatusOr<std::string> NewCursorKey() {
  std::string key(kCursorKeyBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), static_cast<int>(key.size())) != 1) {
    return absl::InternalError("no randomness for the cursor key");
  }
  return key;
}

const std::vector<std::string>& FamilyNames() {
  static const auto* names =
      new std::vector<std::string>{"default",    "records", "changes",    "commune_changes", "devices",     "batches",
                                   "enrolments", "audit",   "conflicted", "tallies",         "index_counts"};
  return *names;
}

std::string SeqKey(uint64_t seq) {
  std::string key;
  PutBigEndian64(&key, seq);
  return key;
}

std::string BucketPrefix(const std::string& commune) {
  std::string prefix(1, static_cast<char>(commune.size()));
  prefix.append(commune);
  return prefix;
}

// Index entries are counted per block of kCountBlock sequence numbers, so a
// pull counts what remains after its page by scanning at most two blocks and
// summing the counts of the blocks between (docs/STORAGE.md).
constexpr uint64_t kCountBlock = 4096;
constexpr char kIndexCountsVersion[] = "1";
// The counts of the whole-server index; commune buckets use BucketPrefix.
const std::string& WholeCountPrefix() {
  static const auto* prefix = new std::string(1, '\xff');
  return *prefix;
}
std::string CountKey(const std::string& prefix, uint64_t seq) { return prefix + SeqKey(seq / kCountBlock); }

// Adds `n` to the count under `key` in `batch`, reading it from `db`.
absl::Status AddToCount(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* counts, const std::string& key, int64_t n,
                        rocksdb::WriteBatch* batch) {
  std::string value;
  rocksdb::Status got = db->Get(rocksdb::ReadOptions(), counts, key, &value);
  if (!got.IsNotFound()) HAMLET_RETURN_IF_ERROR(FromRocks(got, "reading an index count"));
  int64_t count = value.empty() ? 0 : static_cast<int64_t>(GetBigEndian64(value));
  if ((!value.empty() && value.size() != 8) || __builtin_add_overflow(count, n, &count)) {
    return absl::DataLossError("a stored index count is damaged");
  }
  // Below zero only if a record's commune changed under it (a village moved):
  // its old entry stays in the old bucket (town_store.h, ApplyPush).
  if (count <= 0) {
    batch->Delete(counts, key);
  } else {
    batch->Put(counts, key, SeqKey(static_cast<uint64_t>(count)));
  }
  return absl::OkStatus();
}

std::string BatchKey(const std::string& device_id, const std::string& batch_id) {
  return absl::StrCat(device_id, std::string(1, '\0'), batch_id);
}

constexpr uint8_t kSealedFormatV1 = 2;

constexpr char kTalliesVersion[] = "1";

std::string TallyKeyBytes(const sync::TallyKey& key) {
  std::string out = key.unit;
  out.push_back('\0');
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((key.month >> shift) & 0xff));
  out.append(key.metric);
  return out;
}

bool IsSealed(const Record& record) {
  return record.has_informant_identity() || record.sensitivity() == hamlet::v1::SENSITIVITY_SEALED;
}

// The change index value of a record's latest change.
std::string IndexValue(const Record& state) {
  ChangeEntry entry;
  entry.set_record_id(state.id());
  entry.set_whole_size(state.ByteSizeLong());
  if (IsSealed(state)) {
    entry.set_sealed(true);
    return EncodeValue(entry);
  }
  const sync::AccessFacts facts = sync::AccessFactsOf(state);
  entry.set_type(static_cast<int32_t>(facts.type));
  entry.set_sensitivity(facts.sensitivity);
  entry.set_unit_code(facts.unit_code);
  entry.set_author(facts.author);
  entry.set_referred_to_police(facts.referred_to_police);
  entry.set_sole_writer(sync::SoleWriter(state));
  return EncodeValue(entry);
}

// A StoredChange from a change index entry; DATA_LOSS if it does not parse.
absl::Status ReadIndexValue(absl::string_view value, StoredChange* change) {
  ChangeEntry entry;
  HAMLET_RETURN_IF_ERROR(DecodeValue(value, &entry));
  change->record_id = std::move(*entry.mutable_record_id());
  change->facts.type = static_cast<Record::BodyCase>(entry.type());
  change->facts.sensitivity = entry.sensitivity();
  change->facts.unit_code = std::move(*entry.mutable_unit_code());
  change->facts.author = std::move(*entry.mutable_author());
  change->facts.referred_to_police = entry.referred_to_police();
  change->sole_writer = std::move(*entry.mutable_sole_writer());
  change->sealed = entry.sealed();
  change->whole_size = entry.whole_size();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> TownStore::EncodeRecord(const Record& record) const {
  Record lean = record;
  sync::LeanStamps(&lean, "");
  if (!IsSealed(record)) return EncodeValue(lean);
  if (options_.sealer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("record ", record.id(),
                     " is sealed, and this server has no sealing key (--sealed_key_file); it cannot "
                     "store informant identities"));
  }
  HAMLET_ASSIGN_OR_RETURN(std::string sealed, options_.sealer->Seal(lean.SerializeAsString(), record.id()));
  return std::string(1, static_cast<char>(kSealedFormatV1)) + sealed;
}

absl::Status TownStore::DecodeRecord(absl::string_view value, const std::string& id, Record* record) const {
  if (value.empty() || static_cast<uint8_t>(value[0]) != kSealedFormatV1) {
    HAMLET_RETURN_IF_ERROR(DecodeValue(value, record));
    sync::ExpandStamps(record, "");
    return absl::OkStatus();
  }
  StoredChange change;
  change.record_id = id;
  change.record = std::string(value);
  HAMLET_RETURN_IF_ERROR(OpenRecordValue(&change.record, id, &change.sealed));
  return ParseStoredRecord(change, record);
}

absl::Status TownStore::OpenRecordValue(std::string* value, const std::string& id, bool* encrypted) const {
  *encrypted = !value->empty() && static_cast<uint8_t>((*value)[0]) == kSealedFormatV1;
  if (!*encrypted) {
    if (value->empty() || static_cast<uint8_t>((*value)[0]) != internal::kValueFormatV1) {
      return absl::DataLossError(absl::StrCat("stored record ", id, " has unknown format version ",
                                              value->empty() ? -1 : static_cast<uint8_t>((*value)[0])));
    }
    value->erase(0, 1);
    return absl::OkStatus();
  }
  if (options_.sealer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("record ", id, " is sealed, and this server has no sealing key (--sealed_key_file)"));
  }
  absl::StatusOr<std::string> plain = options_.sealer->Open(absl::string_view(*value).substr(1), id);
  if (!plain.ok()) {
    return absl::Status(plain.status().code(), absl::StrCat("record ", id, ": ", plain.status().message()));
  }
  *value = std::move(*plain);
  return absl::OkStatus();
}

absl::Status TownStore::ParseStoredRecord(const StoredChange& change, Record* record) {
  if (!record->ParseFromString(change.record)) {
    return absl::DataLossError(
        absl::StrCat(change.sealed ? "sealed record " : "stored record ", change.record_id, " is damaged"));
  }
  sync::ExpandStamps(record, "");
  return absl::OkStatus();
}

absl::Status TownStore::MigrateFromFormat1() {
  rocksdb::WriteOptions write;
  write.sync = true;
  HAMLET_RETURN_IF_ERROR(
      FromRocks(db_->db->Put(write, meta_, "format", kFormatMigrating), "starting the migration to format 2"));
  write.sync = false;
  constexpr size_t kKeysABatch = 1000;
  rocksdb::WriteBatch batch;
  const auto flush = [&]() -> absl::Status {
    HAMLET_RETURN_IF_ERROR(FromRocks(db_->db->Write(write, &batch), "migrating the store to format 2"));
    batch.Clear();
    return absl::OkStatus();
  };
  // Records: decoded (whole stamps) and encoded again (lean). An informant
  // identity kept in the clear from before sealing existed is sealed now if
  // the server has a key, and else left as it is (it is never sent as
  // stored, and reads whole or lean alike).
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), records_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    Record record;
    HAMLET_RETURN_IF_ERROR(DecodeRecord(internal::View(it->value()), it->key().ToString(), &record));
    if (IsSealed(record) && options_.sealer == nullptr) continue;
    HAMLET_ASSIGN_OR_RETURN(std::string encoded, EncodeRecord(record));
    if (static_cast<uint8_t>(encoded[0]) == kSealedFormatV1) batch.Put(meta_, "holds_sealed", "1");
    batch.Put(records_, it->key(), encoded);
    if (batch.Count() >= kKeysABatch) HAMLET_RETURN_IF_ERROR(flush());
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "reading records to migrate"));
  // Index entries: a bare record id becomes its ChangeEntry. An entry that
  // is one already (a migration cut short) is read for its id.
  for (rocksdb::ColumnFamilyHandle* index : {changes_, commune_changes_}) {
    it.reset(db_->db->NewIterator(rocksdb::ReadOptions(), index));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      StoredChange change;
      const absl::string_view value = internal::View(it->value());
      if (!value.empty() && static_cast<uint8_t>(value[0]) == internal::kValueFormatV1) {
        HAMLET_RETURN_IF_ERROR(ReadIndexValue(value, &change));
      } else {
        change.record_id = std::string(value);
      }
      HAMLET_ASSIGN_OR_RETURN(std::optional<Record> record, GetRecord(change.record_id));
      if (!record.has_value()) {
        return absl::DataLossError(
            absl::StrCat("the change index names record ", change.record_id, ", which is not stored"));
      }
      batch.Put(index, it->key(), IndexValue(*record));
      if (batch.Count() >= kKeysABatch) HAMLET_RETURN_IF_ERROR(flush());
    }
    HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "reading the change index to migrate"));
  }
  // The earlier batches are in the log before this one: synced, it holds them.
  batch.Put(meta_, "format", kFormat);
  write.sync = true;
  return flush();
}

absl::Status TownStore::RebuildIndexCounts() {
  std::map<std::string, uint64_t> counts;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), changes_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key().size() != 8) return absl::DataLossError("a change index key is damaged");
    ++counts[CountKey(WholeCountPrefix(), GetBigEndian64(internal::View(it->key())))];
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "counting the change index"));
  it.reset(db_->db->NewIterator(rocksdb::ReadOptions(), commune_changes_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const absl::string_view key = internal::View(it->key());
    const size_t prefix = key.empty() ? 0 : 1 + static_cast<uint8_t>(key[0]);
    if (key.size() != prefix + 8) return absl::DataLossError("a commune change index key is damaged");
    ++counts[CountKey(std::string(key.substr(0, prefix)), GetBigEndian64(key.substr(prefix, 8)))];
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "counting the commune change index"));
  rocksdb::WriteBatch batch;
  batch.DeleteRange(index_counts_, std::string(), std::string(2, '\xff'));
  for (const auto& [key, n] : counts) batch.Put(index_counts_, key, SeqKey(n));
  batch.Put(meta_, "index_counts", kIndexCountsVersion);
  rocksdb::WriteOptions write;
  write.sync = true;
  return FromRocks(db_->db->Write(write, &batch), "writing index counts");
}

absl::Status TownStore::RebuildTallies() {
  sync::Tallies all;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), records_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    Record record;
    HAMLET_RETURN_IF_ERROR(DecodeRecord(internal::View(it->value()), it->key().ToString(), &record));
    sync::AddTallyDelta(Record(), record, &all);
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "reading records for report tallies"));
  rocksdb::WriteBatch batch;
  batch.DeleteRange(tallies_, std::string(), std::string(1, '\xff'));
  for (const auto& [key, n] : all) batch.Put(tallies_, TallyKeyBytes(key), SeqKey(static_cast<uint64_t>(n)));
  batch.Put(meta_, "tallies", kTalliesVersion);
  rocksdb::WriteOptions write;
  write.sync = true;
  return FromRocks(db_->db->Write(write, &batch), "writing report tallies");
}

absl::StatusOr<std::map<std::string, std::map<std::string, int64_t>>> TownStore::SumTallies(
    const std::vector<std::string>& units, int32_t from_month, int32_t to_month) const {
  std::map<std::string, std::map<std::string, int64_t>> out;
  rocksdb::ReadOptions read;
  const rocksdb::Snapshot* snapshot = db_->db->GetSnapshot();
  read.snapshot = snapshot;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(read, tallies_));
  absl::Status status;
  for (const std::string& unit : units) {
    const std::string start = TallyKeyBytes({unit, from_month, ""});
    const std::string end = TallyKeyBytes({unit, to_month + 1, ""});
    for (it->Seek(start); it->Valid() && it->key().compare(end) < 0; it->Next()) {
      const absl::string_view key = internal::View(it->key());
      int64_t* sum = nullptr;
      if (key.size() >= unit.size() + 1 + 4 && it->value().size() == 8) {
        sum = &out[unit][std::string(key.substr(unit.size() + 1 + 4))];
      }
      if (sum == nullptr ||
          __builtin_add_overflow(*sum, static_cast<int64_t>(GetBigEndian64(internal::View(it->value()))), sum)) {
        status = absl::DataLossError(absl::StrCat("report tally of unit ", unit, " is damaged"));
        break;
      }
    }
    if (!status.ok()) break;
    if (!it->status().ok()) {
      status = FromRocks(it->status(), "reading report tallies");
      break;
    }
  }
  it.reset();
  db_->db->ReleaseSnapshot(snapshot);
  HAMLET_RETURN_IF_ERROR(status);
  return out;
}

absl::StatusOr<uint64_t> TownStore::Reseal() {
  if (options_.sealer == nullptr) return absl::FailedPreconditionError("no sealing key to reseal with");
  absl::MutexLock lock(&commit_mu_);
  uint64_t count = 0;
  rocksdb::WriteBatch batch;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), records_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const absl::string_view value = internal::View(it->value());
    if (value.empty() || static_cast<uint8_t>(value[0]) != kSealedFormatV1) continue;
    if (options_.sealer->IsCurrent(value.substr(1))) continue;
    Record record;
    HAMLET_RETURN_IF_ERROR(DecodeRecord(value, it->key().ToString(), &record));
    HAMLET_ASSIGN_OR_RETURN(std::string encoded, EncodeRecord(record));
    batch.Put(records_, it->key(), encoded);
    ++count;
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "reading records to reseal"));
  // Bundle secrets too: sealed under an old key, or kept in the clear before
  // the server had a key.
  std::unique_ptr<rocksdb::Iterator> enrolments(db_->db->NewIterator(rocksdb::ReadOptions(), enrolments_));
  for (enrolments->SeekToFirst(); enrolments->Valid(); enrolments->Next()) {
    Enrolment enrolment;
    HAMLET_RETURN_IF_ERROR(DecodeValue(internal::View(enrolments->value()), &enrolment));
    if (enrolment.bundle_secret().empty() &&
        (enrolment.bundle_secret_sealed().empty() || options_.sealer->IsCurrent(enrolment.bundle_secret_sealed()))) {
      continue;
    }
    HAMLET_RETURN_IF_ERROR(OpenEnrolment(&enrolment));
    HAMLET_ASSIGN_OR_RETURN(Enrolment sealed, SealedEnrolment(std::move(enrolment)));
    batch.Put(enrolments_, enrolments->key(), EncodeValue(sealed));
    ++count;
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(enrolments->status(), "reading enrolments to reseal"));
  rocksdb::WriteOptions write;
  write.sync = true;
  HAMLET_RETURN_IF_ERROR(FromRocks(db_->db->Write(write, &batch), "resealing"));
  return count;
}

TownStore::~TownStore() {
  {
    absl::MutexLock lock(&queue_mu_);
    stopping_ = true;
  }
  // The commits already queued are written first.
  if (committer_.joinable()) committer_.join();
}

absl::StatusOr<std::unique_ptr<TownStore>> TownStore::Open(const std::string& dir, const TownStoreOptions& options) {
  HAMLET_ASSIGN_OR_RETURN(std::unique_ptr<TownStore> store, Load(dir, options));
  TownStore* started = store.get();
  store->committer_ = std::thread([started] { started->RunCommits(); });
  return store;
}

absl::StatusOr<std::unique_ptr<TownStore>> TownStore::Load(const std::string& dir, const TownStoreOptions& options) {
  HAMLET_ASSIGN_OR_RETURN(internal::OpenedDb opened,
                          internal::OpenDb(dir, FamilyNames(), options.env, {"records", "batches"}));
  std::unique_ptr<TownStore> store(new TownStore());
  store->options_ = options;
  store->db_ = std::make_unique<internal::OpenedDb>(std::move(opened));
  auto& families = store->db_->families;
  store->meta_ = families[0];
  store->records_ = families[1];
  store->changes_ = families[2];
  store->commune_changes_ = families[3];
  store->devices_ = families[4];
  store->batches_ = families[5];
  store->enrolments_ = families[6];
  store->audit_ = families[7];
  store->conflicted_ = families[8];
  store->tallies_ = families[9];
  store->index_counts_ = families[10];
  rocksdb::DB* db = store->db_->db.get();

  {
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), store->audit_));
    it->SeekToLast();
    if (it->Valid() && it->key().size() == 8) store->last_audit_seq_ = GetBigEndian64(internal::View(it->key()));
    HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "reading audit log"));
  }
  std::string value;
  rocksdb::Status s = db->Get(rocksdb::ReadOptions(), store->meta_, "format", &value);
  if (s.IsNotFound()) {
    // A new store: its identity is written once, durably, before any use.
    absl::BitGen gen;
    rocksdb::WriteBatch batch;
    store->server_id_ = sync::NewUuid(gen);
    store->epoch_ = 1;
    HAMLET_ASSIGN_OR_RETURN(store->cursor_key_, NewCursorKey());
    batch.Put(store->meta_, "cursor_key", store->cursor_key_);
    batch.Put(store->meta_, "format", kFormat);
    batch.Put(store->meta_, "server_id", store->server_id_);
    batch.Put(store->meta_, "epoch", SeqKey(store->epoch_));
    batch.Put(store->meta_, "last_seq", SeqKey(0));
    batch.Put(store->meta_, "tallies", kTalliesVersion);
    batch.Put(store->meta_, "index_counts", kIndexCountsVersion);
    rocksdb::WriteOptions write;
    write.sync = true;
    HAMLET_RETURN_IF_ERROR(FromRocks(db->Write(write, &batch), "creating store"));
    return store;
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(s, "reading store format"));
  const bool before_facts = value == kFormatBeforeFacts || value == kFormatMigrating;
  if (value != kFormat && !before_facts) {
    return absl::FailedPreconditionError(absl::StrCat("data dir ", dir, " has store format ", value,
                                                      "; this hamletd reads formats ", kFormatBeforeFacts, " and ",
                                                      kFormat, ". Use the hamletd that wrote it."));
  }
  // Written with "format" in one batch: a store without them is damaged.
  const auto get_identity = [&](const char* key, std::string* out) {
    const rocksdb::Status got = db->Get(rocksdb::ReadOptions(), store->meta_, key, out);
    if (got.IsNotFound()) return absl::DataLossError(absl::StrCat("stored ", key, " is missing"));
    return FromRocks(got, absl::StrCat("reading ", key));
  };
  HAMLET_RETURN_IF_ERROR(get_identity("server_id", &store->server_id_));
  HAMLET_RETURN_IF_ERROR(get_identity("epoch", &value));
  if (value.size() != 8) return absl::DataLossError("stored epoch is damaged");
  store->epoch_ = GetBigEndian64(value);
  HAMLET_RETURN_IF_ERROR(get_identity("last_seq", &value));
  if (value.size() != 8) return absl::DataLossError("stored last_seq is damaged");
  store->last_seq_ = GetBigEndian64(value);
  // Whatever the log held is on disk now: opening replays it into tables.
  HAMLET_RETURN_IF_ERROR(FromRocks(db->SyncWAL(), "syncing the write-ahead log"));
  // A store made before cursors were authenticated gets its key now.
  if (const rocksdb::Status got = db->Get(rocksdb::ReadOptions(), store->meta_, "cursor_key", &store->cursor_key_);
      got.IsNotFound()) {
    HAMLET_ASSIGN_OR_RETURN(store->cursor_key_, NewCursorKey());
    rocksdb::WriteOptions write;
    write.sync = true;
    HAMLET_RETURN_IF_ERROR(
        FromRocks(db->Put(write, store->meta_, "cursor_key", store->cursor_key_), "saving the cursor key"));
  } else {
    HAMLET_RETURN_IF_ERROR(FromRocks(got, "reading the cursor key"));
    if (store->cursor_key_.size() != kCursorKeyBytes) return absl::DataLossError("stored cursor_key is damaged");
  }
  if (options.sealer == nullptr &&
      !db->Get(rocksdb::ReadOptions(), store->meta_, "holds_sealed", &value).IsNotFound()) {
    return absl::FailedPreconditionError(
        absl::StrCat("data dir ", dir, " holds sealed records (informant identities): start with --sealed_key_file"));
  }
  if (before_facts) HAMLET_RETURN_IF_ERROR(store->MigrateFromFormat1());
  if (db->Get(rocksdb::ReadOptions(), store->meta_, "tallies", &value).IsNotFound() || value != kTalliesVersion) {
    HAMLET_RETURN_IF_ERROR(store->RebuildTallies());
  }
  if (db->Get(rocksdb::ReadOptions(), store->meta_, "index_counts", &value).IsNotFound() ||
      value != kIndexCountsVersion) {
    HAMLET_RETURN_IF_ERROR(store->RebuildIndexCounts());
  }
  s = db->Get(rocksdb::ReadOptions(), store->meta_, "clock", &value);
  if (!s.IsNotFound()) {
    HAMLET_RETURN_IF_ERROR(FromRocks(s, "reading clock"));
    HAMLET_RETURN_IF_ERROR(DecodeValue(value, &store->persisted_clock_));
  }
  s = db->Get(rocksdb::ReadOptions(), store->meta_, "history", &value);
  if (!s.IsNotFound()) {
    HAMLET_RETURN_IF_ERROR(FromRocks(s, "reading the restore history"));
    HAMLET_RETURN_IF_ERROR(DecodeValue(value, &store->history_));
  }
  store->history_.set_server_id(store->server_id_);
  store->history_.set_epoch(store->epoch_);
  return store;
}

absl::StatusOr<std::optional<Record>> TownStore::GetRecord(const std::string& id) const {
  std::string value;
  rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), records_, id, &value);
  if (s.IsNotFound()) return std::nullopt;
  HAMLET_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("reading record ", id)));
  Record record;
  HAMLET_RETURN_IF_ERROR(DecodeRecord(value, id, &record));
  return record;
}

absl::StatusOr<std::optional<BatchReceipt>> TownStore::GetBatchReceipt(const std::string& device_id,
                                                                       const std::string& batch_id) const {
  std::string value;
  rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), batches_, BatchKey(device_id, batch_id), &value);
  if (s.IsNotFound()) return std::nullopt;
  HAMLET_RETURN_IF_ERROR(FromRocks(s, "reading batch receipt"));
  BatchReceipt receipt;
  HAMLET_RETURN_IF_ERROR(DecodeValue(value, &receipt));
  return receipt;
}

absl::StatusOr<std::optional<DeviceState>> TownStore::GetDevice(const std::string& device_id) const {
  std::string value;
  rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), devices_, device_id, &value);
  if (s.IsNotFound()) return std::nullopt;
  HAMLET_RETURN_IF_ERROR(FromRocks(s, "reading device state"));
  DeviceState device;
  HAMLET_RETURN_IF_ERROR(DecodeValue(value, &device));
  return device;
}

namespace {

// The error of the write that failed, as every later commit is refused with it.
absl::Status Refusing(const absl::Status& failed) {
  return absl::Status(failed.code(), absl::StrCat(failed.message(),
                                                  "; the store takes no more writes: check the disk, then restart "
                                                  "hamletd"));
}

// Most commits one group takes, and the WriteBatch size after which it takes
// no more. A group holds what its commits write twice over (the batch, and
// the records for reads through the group) until it is written, so the bytes
// bound the server's memory under many large pushes: 256 pushes of 50 cases
// made groups of about 17 MB and a peak RSS of about 350 MiB, groups of 32
// about 270 MiB, at the same rate (docs/BENCHMARKS.md). 2 MiB is still about
// 30 such pushes, or every waiting push of one record, to one sync.
constexpr size_t kMaxGroup = 256;
constexpr size_t kMaxGroupBytes = 2 << 20;

}  // namespace

CommitGroup::CommitGroup(TownStore* store)
    : store_(store), seq_(store->last_seq_.load()), batch_(std::make_unique<rocksdb::WriteBatch>()) {}

CommitGroup::~CommitGroup() = default;

absl::StatusOr<std::optional<Record>> CommitGroup::GetRecord(const std::string& id) const {
  if (auto it = records_.find(id); it != records_.end()) return it->second;
  return store_->GetRecord(id);
}

absl::StatusOr<std::optional<BatchReceipt>> CommitGroup::GetBatchReceipt(const std::string& device_id,
                                                                         const std::string& batch_id) const {
  if (auto it = receipts_.find(BatchKey(device_id, batch_id)); it != receipts_.end()) return it->second;
  return store_->GetBatchReceipt(device_id, batch_id);
}

absl::StatusOr<std::optional<DeviceState>> CommitGroup::GetDevice(const std::string& device_id) const {
  if (auto it = devices_.find(device_id); it != devices_.end()) return it->second;
  return store_->GetDevice(device_id);
}

absl::StatusOr<uint64_t> CommitGroup::Stage(PushCommit commit,
                                            const std::function<BatchReceipt(uint64_t last_seq)>& make_receipt) {
  // Everything that can fail comes first, so that a refused commit leaves
  // nothing in the group.
  uint64_t seq = seq_;
  std::vector<std::string> encoded;
  encoded.reserve(commit.records.size());
  for (RecordWrite& write : commit.records) {
    write.state.set_server_seq(++seq);
    HAMLET_ASSIGN_OR_RETURN(encoded.emplace_back(), store_->EncodeRecord(write.state));
  }
  const BatchReceipt receipt = make_receipt(seq);

  rocksdb::WriteBatch& batch = *batch_;
  for (size_t i = 0; i < commit.records.size(); ++i) {
    RecordWrite& write = commit.records[i];
    const uint64_t at = write.state.server_seq();
    if (write.previous_seq != 0) {
      batch.Delete(store_->changes_, SeqKey(write.previous_seq));
      batch.Delete(store_->commune_changes_, BucketPrefix(write.commune) + SeqKey(write.previous_seq));
      --count_delta_[CountKey(WholeCountPrefix(), write.previous_seq)];
      --count_delta_[CountKey(BucketPrefix(write.commune), write.previous_seq)];
    }
    if (static_cast<uint8_t>(encoded[i][0]) == kSealedFormatV1) batch.Put(store_->meta_, "holds_sealed", "1");
    batch.Put(store_->records_, write.state.id(), encoded[i]);
    const std::string entry = IndexValue(write.state);
    batch.Put(store_->changes_, SeqKey(at), entry);
    batch.Put(store_->commune_changes_, BucketPrefix(write.commune) + SeqKey(at), entry);
    ++count_delta_[CountKey(WholeCountPrefix(), at)];
    ++count_delta_[CountKey(BucketPrefix(write.commune), at)];
    sync::AddTallyDelta(write.previous, write.state, &tally_delta_);
    if (write.state.conflicts_size() > 0) {
      batch.Put(store_->conflicted_, write.state.id(), write.commune);
    } else if (write.previous.conflicts_size() > 0) {
      // Only a record that had a conflict has an entry to delete: a delete
      // for every other record would leave a tombstone that counting and
      // listing conflicts step over until compaction.
      batch.Delete(store_->conflicted_, write.state.id());
    }
    records_[write.state.id()] = std::move(write.state);
  }
  const std::string batch_key = BatchKey(commit.device_id, commit.batch_id);
  batch.Put(store_->devices_, commit.device_id, EncodeValue(commit.device));
  batch.Put(store_->batches_, batch_key, EncodeValue(receipt));
  devices_[commit.device_id] = std::move(commit.device);
  receipts_[batch_key] = receipt;
  for (hamlet::v1::AuditEntry& entry : commit.audit) audit_.push_back(std::move(entry));
  clock_ = std::move(commit.clock);
  seq_ = seq;
  return seq;
}

void TownStore::Submit(StageFn stage, DoneFn done) {
  {
    absl::MutexLock lock(&queue_mu_);
    if (!stopping_) {
      queue_.push_back({std::move(stage), std::move(done)});
      return;
    }
  }
  done(absl::UnavailableError("the store is closing; send the change again"));
}

absl::Status TownStore::Commit(StageFn stage) {
  absl::Notification finished;
  absl::Status result;
  Submit(std::move(stage), [&](const absl::Status& status) {
    result = status;
    finished.Notify();
  });
  finished.WaitForNotification();
  return result;
}

absl::StatusOr<uint64_t> TownStore::CommitPush(PushCommit commit,
                                               const std::function<BatchReceipt(uint64_t last_seq)>& make_receipt) {
  uint64_t last_seq = 0;
  HAMLET_RETURN_IF_ERROR(Commit([&](CommitGroup& group) -> absl::Status {
    HAMLET_ASSIGN_OR_RETURN(last_seq, group.Stage(std::move(commit), make_receipt));
    return absl::OkStatus();
  }));
  return last_seq;
}

absl::Status TownStore::store_error() const {
  absl::MutexLock lock(&queue_mu_);
  return store_error_;
}

void TownStore::RunCommits() {
  while (true) {
    std::vector<Pending> pending;
    {
      absl::MutexLock lock(&queue_mu_);
      const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) { return stopping_ || !queue_.empty(); };
      queue_mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // Stopping, and nothing left to commit.
      const size_t take = std::min(queue_.size(), kMaxGroup);
      std::move(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(take), std::back_inserter(pending));
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(take));
    }
    const size_t done = CommitGroupOf(pending);
    if (done < pending.size()) {
      // The group was full: the rest go back to the head of the queue, in order.
      absl::MutexLock lock(&queue_mu_);
      queue_.insert(queue_.begin(), std::make_move_iterator(pending.begin() + static_cast<std::ptrdiff_t>(done)),
                    std::make_move_iterator(pending.end()));
    }
  }
}

size_t TownStore::CommitGroupOf(std::vector<Pending>& pending) {
  std::vector<absl::Status> staged;
  absl::Status written = store_error();
  if (written.ok()) {
    absl::MutexLock lock(&commit_mu_);
    CommitGroup group(this);
    while (staged.size() < pending.size() && group.batch_->GetDataSize() < kMaxGroupBytes) {
      staged.push_back(pending[staged.size()].stage(group));
    }
    if (!group.receipts_.empty()) written = WriteGroup(group);
  } else {
    staged.resize(pending.size());
  }
  for (size_t i = 0; i < staged.size(); ++i) pending[i].done(staged[i].ok() ? written : staged[i]);
  return staged.size();
}

absl::Status TownStore::WriteGroup(CommitGroup& group) {
  rocksdb::WriteBatch& batch = *group.batch_;
  for (const auto& [key, n] : group.count_delta_) {
    if (n != 0) HAMLET_RETURN_IF_ERROR(AddToCount(db_->db.get(), index_counts_, key, n, &batch));
  }
  for (const auto& [key, n] : group.tally_delta_) {
    const std::string bytes = TallyKeyBytes(key);
    std::string value;
    rocksdb::Status got = db_->db->Get(rocksdb::ReadOptions(), tallies_, bytes, &value);
    if (!got.IsNotFound()) HAMLET_RETURN_IF_ERROR(FromRocks(got, "reading a report tally"));
    int64_t count = value.empty() ? 0 : static_cast<int64_t>(GetBigEndian64(value));
    if ((!value.empty() && value.size() != 8) || __builtin_add_overflow(count, n, &count)) {
      return absl::DataLossError("a stored report tally is damaged");
    }
    // A count back at zero is no count: its key goes.
    if (count == 0) {
      batch.Delete(tallies_, bytes);
    } else {
      batch.Put(tallies_, bytes, SeqKey(static_cast<uint64_t>(count)));
    }
  }
  batch.Put(meta_, "last_seq", SeqKey(group.seq_));
  if (group.clock_.has_value()) batch.Put(meta_, "clock", EncodeValue(*group.clock_));
  absl::MutexLock audit_lock(&audit_mu_);
  uint64_t audit_seq = last_audit_seq_.load();
  for (hamlet::v1::AuditEntry& entry : group.audit_) {
    entry.set_seq(++audit_seq);
    batch.Put(audit_, SeqKey(audit_seq), EncodeValue(entry));
  }
  // One synced write: visible to reads only once it is durable.
  rocksdb::WriteOptions write;
  write.sync = options_.sync_writes;
  absl::Status written = FromRocks(db_->db->Write(write, &batch), "writing a commit to the write-ahead log");
  if (!written.ok()) {
    // RocksDB takes no writes after a failed log write or sync (an I/O error
    // or a full disk), and neither does the store: a later acknowledged write
    // after a torn log record would be dropped by recovery.
    if (absl::IsUnavailable(written) || absl::IsResourceExhausted(written)) {
      absl::MutexLock lock(&queue_mu_);
      store_error_ = Refusing(written);
      return store_error_;
    }
    return written;
  }
  wal_syncs_.fetch_add(1);
  last_audit_seq_.store(audit_seq);
  last_seq_.store(group.seq_);
  return absl::OkStatus();
}

namespace {

// The additional data a bundle secret is sealed with: its device, in a
// namespace of its own, so that it can never be opened as a record's value.
std::string BundleSecretAad(const Enrolment& enrolment) {
  return absl::StrCat("bundle_secret/", enrolment.device().device_id());
}

}  // namespace

absl::StatusOr<Enrolment> TownStore::SealedEnrolment(Enrolment enrolment) const {
  if (options_.sealer == nullptr || enrolment.bundle_secret().empty()) return enrolment;
  HAMLET_ASSIGN_OR_RETURN(*enrolment.mutable_bundle_secret_sealed(),
                          options_.sealer->Seal(enrolment.bundle_secret(), BundleSecretAad(enrolment)));
  enrolment.clear_bundle_secret();
  return enrolment;
}

absl::Status TownStore::OpenEnrolment(Enrolment* enrolment) const {
  if (enrolment->bundle_secret_sealed().empty()) return absl::OkStatus();
  if (options_.sealer == nullptr) {
    return absl::FailedPreconditionError(
        "enrolments hold bundle secrets sealed with a sealing key this server was not given (--sealed_key_file)");
  }
  HAMLET_ASSIGN_OR_RETURN(*enrolment->mutable_bundle_secret(),
                          options_.sealer->Open(enrolment->bundle_secret_sealed(), BundleSecretAad(*enrolment)));
  enrolment->clear_bundle_secret_sealed();
  return absl::OkStatus();
}

absl::Status TownStore::PutEnrolment(const Enrolment& enrolment, hamlet::v1::AuditEntry audit) {
  absl::MutexLock lock(&audit_mu_);
  const uint64_t audit_seq = last_audit_seq_.load() + 1;
  audit.set_seq(audit_seq);
  HAMLET_ASSIGN_OR_RETURN(Enrolment stored, SealedEnrolment(enrolment));
  rocksdb::WriteBatch batch;
  batch.Put(enrolments_, enrolment.device().device_id(), EncodeValue(stored));
  batch.Put(audit_, SeqKey(audit_seq), EncodeValue(audit));
  rocksdb::WriteOptions write;
  write.sync = true;
  HAMLET_RETURN_IF_ERROR(FromRocks(db_->db->Write(write, &batch), "saving enrolment"));
  last_audit_seq_.store(audit_seq);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Enrolment>> TownStore::ListEnrolments() const {
  std::vector<Enrolment> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), enrolments_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    Enrolment enrolment;
    HAMLET_RETURN_IF_ERROR(DecodeValue(internal::View(it->value()), &enrolment));
    HAMLET_RETURN_IF_ERROR(OpenEnrolment(&enrolment));
    out.push_back(std::move(enrolment));
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "listing enrolments"));
  return out;
}

absl::StatusOr<uint64_t> TownStore::AppendAudit(hamlet::v1::AuditEntry entry) {
  absl::MutexLock lock(&audit_mu_);
  const uint64_t audit_seq = last_audit_seq_.load() + 1;
  entry.set_seq(audit_seq);
  rocksdb::WriteOptions write;
  write.sync = true;
  HAMLET_RETURN_IF_ERROR(
      FromRocks(db_->db->Put(write, audit_, SeqKey(audit_seq), EncodeValue(entry)), "writing audit log"));
  last_audit_seq_.store(audit_seq);
  return audit_seq;
}

absl::StatusOr<ReplicationState> TownStore::GetReplicationState() const {
  ReplicationState state;
  std::string value;
  rocksdb::Status s = db_->db->Get(rocksdb::ReadOptions(), meta_, "replication", &value);
  if (s.IsNotFound()) return state;
  HAMLET_RETURN_IF_ERROR(FromRocks(s, "reading replication state"));
  HAMLET_RETURN_IF_ERROR(DecodeValue(value, &state));
  return state;
}

absl::Status TownStore::PutReplicationState(const ReplicationState& state) {
  rocksdb::WriteOptions write;
  write.sync = options_.sync_writes;
  return FromRocks(db_->db->Put(write, meta_, "replication", EncodeValue(state)), "saving replication state");
}

absl::StatusOr<uint64_t> TownStore::CountChangesAfter(uint64_t after_seq) const {
  // One record read, the rest counted from the index's block counts.
  HAMLET_ASSIGN_OR_RETURN(ChangePage page,
                          ReadChanges(ChangeScope::WholeServer(), after_seq, 1, 1, CountRemaining::kYes));
  return page.remaining + page.records.size();
}

absl::StatusOr<std::vector<hamlet::v1::AuditEntry>> TownStore::ListAudit(uint64_t after_seq, size_t max) const {
  std::vector<hamlet::v1::AuditEntry> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), audit_));
  for (it->Seek(SeqKey(after_seq + 1)); it->Valid() && out.size() < max; it->Next()) {
    hamlet::v1::AuditEntry entry;
    HAMLET_RETURN_IF_ERROR(DecodeValue(internal::View(it->value()), &entry));
    out.push_back(std::move(entry));
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "reading audit log"));
  return out;
}

absl::StatusOr<std::vector<Record>> TownStore::ListConflicted(const std::string& commune, const std::string& after_id,
                                                              size_t max) const {
  std::vector<Record> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), conflicted_));
  for (after_id.empty() ? it->SeekToFirst() : it->Seek(after_id + std::string(1, '\0'));
       it->Valid() && out.size() < max; it->Next()) {
    if (!commune.empty() && internal::View(it->value()) != commune) continue;
    HAMLET_ASSIGN_OR_RETURN(std::optional<Record> record, GetRecord(it->key().ToString()));
    if (record.has_value()) out.push_back(std::move(*record));
  }
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "listing conflicts"));
  return out;
}

absl::StatusOr<uint64_t> TownStore::CountConflicted() const {
  uint64_t count = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->db->NewIterator(rocksdb::ReadOptions(), conflicted_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++count;
  HAMLET_RETURN_IF_ERROR(FromRocks(it->status(), "counting conflicts"));
  return count;
}

absl::StatusOr<ChangePage> TownStore::ReadChanges(const ChangeScope& scope, uint64_t after_seq, size_t max_records,
                                                  size_t max_bytes, CountRemaining count) const {
  HAMLET_ASSIGN_OR_RETURN(StoredPage stored,
                          ReadStoredChanges(scope, after_seq, max_records, max_bytes, count, WantedFn()));
  ChangePage page;
  page.through_seq = stored.through_seq;
  page.remaining = stored.remaining;
  page.records.resize(stored.changes.size());
  for (size_t i = 0; i < stored.changes.size(); ++i) {
    HAMLET_RETURN_IF_ERROR(ParseStoredRecord(stored.changes[i], &page.records[i]));
  }
  return page;
}

absl::StatusOr<StoredPage> TownStore::ReadStoredChanges(const ChangeScope& scope, uint64_t after_seq,
                                                        size_t max_records, size_t max_bytes, CountRemaining count,
                                                        const WantedFn& wanted) const {
  // Commits are visible only once durable, so a page never holds what a crash
  // could take back. Reading last_seq before taking the snapshot means the
  // snapshot holds every change up to it.
  const uint64_t last_seq = last_seq_.load();
  const rocksdb::Snapshot* snapshot = db_->db->GetSnapshot();
  struct Releaser {
    rocksdb::DB* db;
    const rocksdb::Snapshot* snapshot;
    ~Releaser() { db->ReleaseSnapshot(snapshot); }
  } releaser{db_->db.get(), snapshot};
  rocksdb::ReadOptions read;
  read.snapshot = snapshot;

  // One cursor per bucket; the page is their merge in seq order.
  struct Bucket {
    std::string prefix;
    std::unique_ptr<rocksdb::Iterator> it;
    bool Valid() const { return it->Valid() && it->key().starts_with(prefix); }
    // A key of another length than prefix + be64(seq) is damage: its Seq()
    // is beyond every range, which stops the bucket there, and the read
    // returns DATA_LOSS.
    bool Damaged() const { return Valid() && it->key().size() != prefix.size() + 8; }
    uint64_t Seq() const {
      return Damaged() ? UINT64_MAX : GetBigEndian64(absl::string_view(it->key().data() + prefix.size(), 8));
    }
  };
  const auto damaged = [](const std::vector<Bucket>& buckets) {
    for (const Bucket& b : buckets) {
      if (b.Damaged()) return absl::DataLossError("a change index key is damaged");
    }
    return absl::OkStatus();
  };
  std::vector<Bucket> buckets;
  if (scope.whole_server()) {
    buckets.push_back({"", std::unique_ptr<rocksdb::Iterator>(db_->db->NewIterator(read, changes_))});
  } else {
    for (const std::string& commune : scope.buckets()) {
      buckets.push_back(
          {BucketPrefix(commune), std::unique_ptr<rocksdb::Iterator>(db_->db->NewIterator(read, commune_changes_))});
    }
  }
  for (Bucket& b : buckets) {
    b.it->Seek(b.prefix + SeqKey(after_seq + 1));
    HAMLET_RETURN_IF_ERROR(FromRocks(b.it->status(), "reading change index"));
  }
  // Entries above the durable sequence number belong to commits not yet
  // synced; a later read sees them, and a cursor never gets ahead of them.
  const auto in_range = [last_seq](const Bucket& b) { return b.Valid() && b.Seq() <= last_seq; };
  const auto next_bucket = [&buckets, &in_range]() -> Bucket* {
    Bucket* best = nullptr;
    for (Bucket& b : buckets) {
      if (in_range(b) && (best == nullptr || b.Seq() < best->Seq())) best = &b;
    }
    return best;
  };

  StoredPage page;
  page.through_seq = std::max(after_seq, last_seq);
  size_t bytes = 0;
  size_t entries = 0;
  Bucket* b = nullptr;
  while ((b = next_bucket()) != nullptr) {
    if (entries >= std::max<size_t>(max_records, 1) || (entries > 0 && bytes >= max_bytes)) break;
    StoredChange change;
    change.seq = b->Seq();
    HAMLET_RETURN_IF_ERROR(ReadIndexValue(internal::View(b->it->value()), &change));
    ++entries;
    page.through_seq = change.seq;
    bytes += b->it->value().size();  // A change passed over costs its entry.
    b->it->Next();
    if (wanted && !wanted(change)) continue;
    // Counted with whole stamps, whichever form goes out: the index entry
    // says that size, so the records can be read all at once below.
    bytes += change.whole_size;
    page.changes.push_back(std::move(change));
  }
  HAMLET_RETURN_IF_ERROR(damaged(buckets));
  // The page's records in one MultiGet: RocksDB sorts the keys and looks
  // them up together, where a Get each would search every level once a key.
  const size_t n = page.changes.size();
  std::vector<rocksdb::Slice> keys;
  keys.reserve(n);
  for (const StoredChange& change : page.changes) keys.emplace_back(change.record_id);
  std::vector<rocksdb::PinnableSlice> values(n);
  std::vector<rocksdb::Status> got(n);
  db_->db->MultiGet(read, records_, n, keys.data(), values.data(), got.data());
  for (size_t i = 0; i < n; ++i) {
    StoredChange& change = page.changes[i];
    if (got[i].IsNotFound()) {
      return absl::DataLossError(
          absl::StrCat("the change index names record ", change.record_id, ", which is not stored"));
    }
    HAMLET_RETURN_IF_ERROR(FromRocks(got[i], absl::StrCat("reading record ", change.record_id)));
    change.record.assign(values[i].data(), values[i].size());
    values[i].Reset();
    bool encrypted = false;
    HAMLET_RETURN_IF_ERROR(OpenRecordValue(&change.record, change.record_id, &encrypted));
    change.sealed = change.sealed || encrypted;
  }
  if (b == nullptr) {
    // Caught up: everything up to the snapshot's last_seq has been seen.
    page.through_seq = std::max(after_seq, last_seq);
  }
  if (count == CountRemaining::kNo) return page;
  // What remains: the rest of the page's block and of the last block by
  // scanning, the blocks between from their counts.
  const uint64_t first_full = page.through_seq / kCountBlock + 1;
  const uint64_t last_block = last_seq / kCountBlock;
  std::unique_ptr<rocksdb::Iterator> counts(db_->db->NewIterator(read, index_counts_));
  for (Bucket& bucket : buckets) {
    const auto scan_through = [&](uint64_t limit) {
      for (; in_range(bucket) && bucket.Seq() <= limit; bucket.it->Next()) ++page.remaining;
    };
    scan_through(std::min(last_seq, first_full * kCountBlock - 1));
    if (last_block >= first_full) {
      const std::string prefix = scope.whole_server() ? WholeCountPrefix() : bucket.prefix;
      const std::string end = prefix + SeqKey(last_block);
      for (counts->Seek(prefix + SeqKey(first_full)); counts->Valid() && counts->key().compare(end) < 0;
           counts->Next()) {
        if (counts->value().size() != 8) return absl::DataLossError("a stored index count is damaged");
        page.remaining += GetBigEndian64(internal::View(counts->value()));
      }
      HAMLET_RETURN_IF_ERROR(FromRocks(counts->status(), "reading index counts"));
      bucket.it->Seek(bucket.prefix + SeqKey(last_block * kCountBlock));
      scan_through(last_seq);
    }
    HAMLET_RETURN_IF_ERROR(FromRocks(bucket.it->status(), "counting change index"));
  }
  HAMLET_RETURN_IF_ERROR(damaged(buckets));
  return page;
}

}  // namespace hamlet::storage
