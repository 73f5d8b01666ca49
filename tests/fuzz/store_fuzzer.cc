// A town store or a device store whose RocksDB holds arbitrary keys and
// values, as a damaged disk or a bug could leave it: opening it and every
// read (and a commit on top) must return an error, never crash. The key
// decoders (change index, index counts, report tallies, outbox) live inside
// the stores, so this is the way to reach them; the value decoders are also
// fuzzed on their own (decode_fuzzer.cc).
//
// Input:
//   input := kind:u8 entry*
//   kind  := bit 0: 0 a town store, 1 a device store
//            bit 1: the town store has no sealing key
//            bit 2: the device store's pending batch is refused, not acknowledged
//   entry := family:u8 key_len:u8 key value_len:be16 value
// `family` indexes the store's column families (modulo their number, in the
// order of docs/STORAGE.md). A cut-off entry ends the input.
//
// Checked: every call returns OK or DATA_LOSS or FAILED_PRECONDITION, the
// codes the stores' headers give for damage, an unknown format and sealed
// records without a key. A key read past its end lies inside one of RocksDB's
// blocks, where ASan cannot see it; it is caught when the read goes through
// absl::string_view's operator[] (Debian builds Abseil hardened), not when
// code makes a view of the bytes itself.
//
// The stores live in a scratch directory on /dev/shm (or $TMPDIR), emptied
// before every input and removed at exit (a crashed run's, by the next run). Run it with -detect_leaks=0
// (tools/fuzz does): RocksDB keeps memory from input to input.

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"
#include "storage/device_store.h"
#include "storage/sealing.h"
#include "storage/town_store.h"
#include "tests/fuzz/fuzz_support.h"

namespace hamlet::fuzz {
namespace {

using absl::StatusCode;
using hamlet::v1::Record;

const std::vector<std::string> kTownFamilies = {"default",    "records", "changes",     "commune_changes",
                                                "devices",    "batches", "enrolments",  "audit",
                                                "conflicted", "tallies", "index_counts"};
const std::vector<std::string> kDeviceFamilies = {"default", "records", "outbox", "rejected"};

struct Entry {
  size_t family;
  std::string key;
  std::string value;
};

std::vector<Entry> ParseEntries(const uint8_t* data, size_t size, size_t families) {
  std::vector<Entry> entries;
  size_t at = 0;
  while (at + 2 <= size) {
    const size_t family = data[at] % families;
    const size_t key_len = data[at + 1];
    at += 2;
    if (at + key_len + 2 > size) break;
    std::string key(reinterpret_cast<const char*>(data + at), key_len);
    at += key_len;
    const size_t value_len = (static_cast<size_t>(data[at]) << 8) | data[at + 1];
    at += 2;
    if (at + value_len > size) break;
    entries.push_back({family, std::move(key), std::string(reinterpret_cast<const char*>(data + at), value_len)});
    at += value_len;
  }
  return entries;
}

// This process's scratch directory, removed at exit. A crashed run cannot
// remove its own, so the directories of processes that are gone go first.
const std::string& ScratchDir() {
  static const std::string* dir = [] {
    namespace fs = std::filesystem;
    std::string base = "/dev/shm";
    if (::access(base.c_str(), W_OK) != 0) base = std::getenv("TMPDIR") != nullptr ? std::getenv("TMPDIR") : "/tmp";
    const std::string prefix = "hamlet-store-fuzz-";
    std::error_code error;
    for (const auto& entry : fs::directory_iterator(base, error)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(prefix, 0) != 0) continue;
      const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
      if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) fs::remove_all(entry.path(), error);
    }
    auto* made = new std::string(absl::StrCat(base, "/", prefix, ::getpid()));
    fs::remove_all(*made, error);
    if (!fs::create_directories(*made, error)) Violation("a scratch directory can be made", *made);
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(ScratchDir(), ignored);
    });
    return made;
  }();
  return *dir;
}

// Opens the database in `dir` with `families`, creating what is missing,
// writes `entries` and closes it.
void WriteEntries(const std::string& dir, const std::vector<std::string>& families, const std::vector<Entry>& entries) {
  rocksdb::DBOptions options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  // Each costs time per open and buys nothing here: a thread per table file
  // to open, and log space reserved ahead (zeroed pages on tmpfs).
  options.max_file_opening_threads = 1;
  options.allow_fallocate = false;
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : families) descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, descriptors, &handles, &raw);
  if (!s.ok()) Violation("a scratch database opens", s.ToString());
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteBatch batch;
  for (const Entry& e : entries) batch.Put(handles[e.family], e.key, e.value);
  s = db->Write(rocksdb::WriteOptions(), &batch);
  if (!s.ok()) Violation("the entries are written", s.ToString());
  for (auto* handle : handles) db->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
  db->Close().PermitUncheckedError();
}

// Makes `dir` a database holding only `entries`. Creating the column
// families costs far more than the rest of an input (RocksDB rewrites its
// OPTIONS file for each), so an empty database with them is made once and
// copied.
void WriteRaw(const std::string& dir, const std::vector<std::string>& families, const std::vector<Entry>& entries) {
  namespace fs = std::filesystem;
  const std::string empty = dir + ".empty";
  if (!fs::exists(empty)) WriteEntries(empty, families, {});
  std::error_code error;
  fs::remove_all(dir, error);
  fs::copy(empty, dir, fs::copy_options::recursive, error);
  if (error) Violation("the empty database is copied", error.message());
  WriteEntries(dir, families, entries);
}

constexpr std::initializer_list<StatusCode> kDamage = {StatusCode::kDataLoss, StatusCode::kFailedPrecondition};

template <typename T>
void CheckDamage(const absl::StatusOr<T>& result, absl::string_view call) {
  CheckCode(result.status(), kDamage, call);
}
void CheckDamage(const absl::Status& status, absl::string_view call) { CheckCode(status, kDamage, call); }

Record CaseIn(const std::string& id, const std::string& unit) {
  Record r;
  r.set_id(id);
  r.set_unit_code(unit);
  r.set_author("person-1");
  r.mutable_create_time()->set_seconds(1'796'000'000);
  r.set_sensitivity(hamlet::v1::SENSITIVITY_NORMAL);
  r.mutable_mediation_case()->set_summary("fuzz");
  r.mutable_mediation_case()->set_date_received("2026-11-30");
  hamlet::v1::FieldStamp* fs = r.add_field_stamps();
  fs->set_field(hamlet::v1::MediationCase::kDateReceivedFieldNumber);
  fs->mutable_stamp()->set_physical_ms(1'796'000'000'000);
  fs->mutable_stamp()->set_node("fuzz");
  return r;
}

void FuzzTownStore(uint8_t kind, const std::vector<Entry>& entries) {
  const std::string dir = ScratchDir() + "/town";
  WriteRaw(dir, kTownFamilies, entries);
  storage::TownStoreOptions options;
  options.sync_writes = false;
  if ((kind & 2) == 0) {
    auto sealer = storage::Sealer::Create(std::string(32, 'k'), {std::string(32, 'o')});
    if (!sealer.ok()) Violation("a sealer with 32-byte keys is created");
    options.sealer = std::move(*sealer);
  }
  auto opened = storage::TownStore::Open(dir, options);
  CheckDamage(opened, "TownStore::Open");
  if (!opened.ok()) return;
  storage::TownStore& store = **opened;

  for (const Entry& e : entries) {
    if (e.family == 1) CheckDamage(store.GetRecord(e.key), "GetRecord");
    if (e.family == 4) CheckDamage(store.GetDevice(e.key), "GetDevice");
    if (e.family == 5) {
      const size_t zero = e.key.find('\0');
      if (zero != std::string::npos) {
        CheckDamage(store.GetBatchReceipt(e.key.substr(0, zero), e.key.substr(zero + 1)), "GetBatchReceipt");
      }
    }
  }
  const auto read_all = [&store](const storage::ChangeScope& scope) {
    uint64_t after = 0;
    for (int pages = 0; pages < 64; ++pages) {
      auto page = store.ReadChanges(scope, after, 3, 1 << 20, storage::CountRemaining::kYes);
      CheckDamage(page, "ReadChanges");
      if (!page.ok() || page->through_seq <= after) return;
      after = page->through_seq;
    }
  };
  read_all(storage::ChangeScope::WholeServer());
  read_all(storage::ChangeScope::Commune("07132"));
  read_all(storage::ChangeScope::AboveCommune());
  CheckDamage(store.CountChangesAfter(0), "CountChangesAfter");
  CheckDamage(store.ListAudit(0, 1000), "ListAudit");
  CheckDamage(store.ListEnrolments(), "ListEnrolments");
  CheckDamage(store.ListConflicted("", "", 1000), "ListConflicted");
  CheckDamage(store.ListConflicted("07132", "", 1000), "ListConflicted");
  CheckDamage(store.CountConflicted(), "CountConflicted");
  CheckDamage(store.GetReplicationState(), "GetReplicationState");
  CheckDamage(store.SumTallies({"07132", "07132-K01", "206", ""}, 190001, 299912), "SumTallies");
  CheckDamage(store.CountRecords(), "CountRecords");
  if (options.sealer != nullptr) CheckDamage(store.Reseal(), "Reseal");

  // A commit on top reads the stored counts and tallies it adds to.
  const std::string id = "00000000-0000-4000-8000-000000000001";
  auto existing = store.GetRecord(id);
  CheckDamage(existing, "GetRecord");
  if (!existing.ok()) return;
  storage::PushCommit commit;
  commit.device_id = "device-1";
  commit.batch_id = "batch-1";
  storage::RecordWrite write;
  write.state = CaseIn(id, "07132");
  write.commune = "07132";
  if (existing->has_value()) {
    write.previous = **existing;
    write.previous_seq = (*existing)->server_seq();
  }
  commit.records.push_back(std::move(write));
  commit.device.set_device_id("device-1");
  CheckDamage(store.CommitPush(std::move(commit), [](uint64_t) { return storage::BatchReceipt(); }), "CommitPush");
  read_all(storage::ChangeScope::Commune("07132"));
}

void FuzzDeviceStore(uint8_t kind, const std::vector<Entry>& entries) {
  const std::string dir = ScratchDir() + "/device";
  WriteRaw(dir, kDeviceFamilies, entries);
  auto opened = storage::DeviceStore::Open(dir, "device-new");
  CheckDamage(opened, "DeviceStore::Open");
  if (!opened.ok()) return;
  storage::DeviceStore& store = **opened;

  for (const Entry& e : entries) {
    if (e.family == 1) CheckDamage(store.GetRecord(e.key), "GetRecord");
  }
  CheckDamage(store.ListRecords(), "ListRecords");
  CheckDamage(store.ReadOutbox(1000), "ReadOutbox");
  CheckDamage(store.OutboxSize(), "OutboxSize");
  auto pending = store.GetPendingBatch();
  CheckDamage(pending, "GetPendingBatch");
  if (pending.ok() && pending->has_value()) {
    CheckDamage(store.ReadOutboxThrough((*pending)->last_outbox_seq()), "ReadOutboxThrough");
  }
  CheckDamage(store.ListRejected(), "ListRejected");
  CheckDamage(store.GetCursor("07132"), "GetCursor");
  CheckDamage(store.GetCursor(""), "GetCursor");
  CheckDamage(store.GetToken(), "GetToken");
  CheckDamage(store.GetRole(), "GetRole");
  CheckDamage(store.GetClock(), "GetClock");
  const Record edit = CaseIn("00000000-0000-4000-8000-000000000002", "07132");
  CheckDamage(store.SaveLocalEdit(edit, edit, edit.field_stamps(0).stamp()), "SaveLocalEdit");
  if (kind & 4) {
    CheckDamage(store.RejectPendingBatch("refused"), "RejectPendingBatch");
  } else {
    CheckDamage(store.AckPendingBatch(), "AckPendingBatch");
  }
  CheckDamage(store.ReadOutbox(1000), "ReadOutbox");
  CheckDamage(store.ListRejected(), "ListRejected");
}

}  // namespace
}  // namespace hamlet::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  hamlet::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t kind = data[0];
  const bool device = (kind & 1) != 0;
  const auto entries = hamlet::fuzz::ParseEntries(
      data + 1, size - 1, device ? hamlet::fuzz::kDeviceFamilies.size() : hamlet::fuzz::kTownFamilies.size());
  if (device) {
    hamlet::fuzz::FuzzDeviceStore(kind, entries);
  } else {
    hamlet::fuzz::FuzzTownStore(kind, entries);
  }
  return 0;
}
