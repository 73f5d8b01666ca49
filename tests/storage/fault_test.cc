// Storage faults at the level that answers a client: a Town on a TownStore
// whose RocksDB does its I/O through tests/support/fault_fs.h. The contract
// under test (docs/STORAGE.md, "Durability"):
//   1. A push whose write or sync failed never returns OK.
//   2. After a crash or power cut and a reopen, every acknowledged push is
//      there, byte for byte, and what is there is a prefix, in commit order,
//      of what was applied: whole batches, sequence numbers 1..last_seq with
//      no gap.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "google/protobuf/util/message_differencer.h"
#include "hamlet/v1/sync.pb.h"
#include "rocksdb/db.h"
#include "server/town.h"
#include "storage/town_store.h"
#include "sync/clock.h"
#include "sync/merge.h"
#include "tests/support/fault_fs.h"
#include "tests/support/records.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace hamlet::server {
namespace {

using google::protobuf::util::MessageDifferencer;
using hamlet::testing::FaultEnv;
using hamlet::testing::FaultFiles;
using hamlet::testing::FaultRepeat;
using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::testing::StatusIs;
using hamlet::testing::TornWrite;
using hamlet::testing::UnsyncedLoss;
using hamlet::v1::PushRequest;
using hamlet::v1::PushResponse;
using hamlet::v1::Record;
using storage::ChangePage;
using storage::ChangeScope;
using storage::TownStore;
using storage::TownStoreOptions;
using ::testing::HasSubstr;

constexpr int64_t kNowMs = 1'700'000'000'000;  // The server's (fake) clock.

// Distinct id spaces for devices, batches and records.
std::string Uuid(uint32_t space, uint64_t n) { return absl::StrFormat("%08x-0000-4000-8000-%012x", space, n); }
constexpr uint32_t kDevices = 0xde;
constexpr uint32_t kBatches = 0xba;
constexpr uint32_t kRecords = 0x5c;

// A member's phone in ward 07132 of Quảng Yên (town 206, the default).
Caller Phone(int n) {
  Caller caller;
  caller.device_id = Uuid(kDevices, n);
  caller.principal = {hamlet::v1::ROLE_MEMBER, "07132", "person-1"};
  caller.peer = "fault-test";
  return caller;
}

// A new mediation case, record number `n`.
Record CaseNo(uint64_t n) {
  return NewCase(Uuid(kRecords, n), "07132", MakeStamp(kNowMs - 60'000, 0, "phone"), absl::StrCat("vụ việc ", n));
}

// A change to a case's summary, stamped later than its creation.
Record SummaryEdit(const Record& existing, const std::string& summary, int tick) {
  Record change = sync::EmptyChangeOf(existing);
  change.mutable_mediation_case()->set_summary(summary);
  sync::SetFieldStamp(&change, hamlet::v1::MediationCase::kSummaryFieldNumber,
                      MakeStamp(kNowMs - 30'000 + tick, 0, "phone"));
  return change;
}

PushRequest Batch(const Caller& phone, uint64_t batch, const std::vector<Record>& changes) {
  PushRequest request;
  request.set_device_id(phone.device_id);
  request.set_batch_id(Uuid(kBatches, batch));
  request.set_app_version("fault-test");
  for (const Record& change : changes) *request.add_changes() = change;
  return request;
}

// One push and what came of it.
struct Attempt {
  PushRequest request;
  Caller caller;
  absl::StatusOr<PushResponse> result;
  // The batch's records as the store held them when the push returned
  // (those it held): applied, even if not acknowledged.
  std::map<std::string, Record> held;
};

bool Same(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  return MessageDifferencer::Equals(a, b);
}

// The server_seq of every record in the change index, in index order.
std::vector<uint64_t> IndexSeqs(const TownStore& store) {
  std::vector<uint64_t> seqs;
  uint64_t after = 0;
  while (true) {
    absl::StatusOr<ChangePage> page =
        store.ReadChanges(ChangeScope::WholeServer(), after, 1000, 64 << 20, storage::CountRemaining::kNo);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok() || page->records.empty()) return seqs;
    for (const Record& record : page->records) seqs.push_back(record.server_seq());
    after = page->through_seq;
  }
}

// Checks the contract on a reopened store: every acknowledged push is there
// as it was answered and stored; every batch is there whole or not at all;
// the batches there (and the `seeded` admin units, seqs 1..seeded) cover
// 1..last_seq with no gap, as does the change index. A batch may appear in
// several attempts (retries).
// REQUIRES: every change in `attempts` creates a record that no other batch
// touches.
void ExpectGapFreePrefix(const TownStore& store, uint64_t seeded, const std::vector<Attempt>& attempts) {
  std::map<std::string, std::vector<const Attempt*>> batches;  // By batch id.
  for (const Attempt& attempt : attempts) batches[attempt.request.batch_id()].push_back(&attempt);
  std::vector<std::pair<uint64_t, uint64_t>> ranges = {{1, seeded}};
  int acknowledged = 0;
  int present = 0;
  for (const auto& [batch_id, tries] : batches) {
    const PushRequest& request = tries.front()->request;
    const bool acked = std::any_of(tries.begin(), tries.end(), [](const Attempt* a) { return a->result.ok(); });
    SCOPED_TRACE(absl::StrCat("batch ", batch_id, acked ? " (acknowledged)" : " (never acknowledged)"));
    absl::StatusOr<std::optional<storage::BatchReceipt>> receipt = store.GetBatchReceipt(request.device_id(), batch_id);
    ASSERT_TRUE(receipt.ok()) << receipt.status();
    if (acked) {
      ++acknowledged;
      EXPECT_TRUE(receipt->has_value()) << "an acknowledged push is gone";
    }
    if (!receipt->has_value()) {
      for (const Record& change : request.changes()) {
        absl::StatusOr<std::optional<Record>> record = store.GetRecord(change.id());
        ASSERT_TRUE(record.ok()) << record.status();
        EXPECT_FALSE(record->has_value()) << "record " << change.id() << " of a batch with no receipt: partial batch";
      }
      continue;
    }
    ++present;
    PushResponse response;
    ASSERT_TRUE(response.ParseFromString((*receipt)->response()));
    for (const Attempt* attempt : tries) {
      if (!attempt->result.ok()) continue;
      EXPECT_TRUE(Same(response, *attempt->result))
          << "stored " << response.ShortDebugString() << ", answered " << attempt->result->ShortDebugString();
    }
    const uint64_t first = response.server_seq() + 1 - response.applied_records();
    ranges.emplace_back(first, response.server_seq());
    for (const Record& change : request.changes()) {
      absl::StatusOr<std::optional<Record>> record = store.GetRecord(change.id());
      ASSERT_TRUE(record.ok()) << record.status();
      ASSERT_TRUE(record->has_value()) << "record " << change.id() << " missing from a stored batch: partial batch";
      EXPECT_GE((*record)->server_seq(), first);
      EXPECT_LE((*record)->server_seq(), response.server_seq());
      for (const Attempt* attempt : tries) {
        auto held = attempt->held.find(change.id());
        if (held == attempt->held.end()) continue;
        EXPECT_TRUE(Same(**record, held->second)) << "record " << change.id() << " changed across the reopen";
      }
    }
  }
  std::sort(ranges.begin(), ranges.end());
  uint64_t next = 1;
  for (const auto& [first, last] : ranges) {
    EXPECT_EQ(first, next) << "a gap or an overlap in the batches' sequence numbers";
    next = last + 1;
  }
  EXPECT_EQ(next - 1, store.last_seq());
  std::vector<uint64_t> expected(store.last_seq());
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(IndexSeqs(store), expected) << "the change index is not 1..last_seq";
  std::cout << "[ recover  ] " << acknowledged << " acknowledged, " << present << " present of " << batches.size()
            << " batches; last_seq " << store.last_seq() << "\n";
}

class StoreFaultTest : public ::testing::Test {
 protected:
  // Opens the store in the data dir through `env` (null: RocksDB's default)
  // and a town on it.
  absl::Status Open(rocksdb::Env* env) {
    TownStoreOptions options;
    options.env = env;
    absl::StatusOr<std::unique_ptr<TownStore>> store = TownStore::Open(data_dir_, options);
    if (!store.ok()) return store.status();
    store_ = std::move(*store);
    feed_ = std::make_unique<ChangeFeed>(store_->last_seq());
    absl::StatusOr<std::unique_ptr<Town>> town = Town::Create(store_.get(), feed_.get(), &clock_, TownOptions());
    if (!town.ok()) return town.status();
    town_ = std::move(*town);
    return absl::OkStatus();
  }
  // The process ends: the town, then its store.
  void Close() {
    town_.reset();
    feed_.reset();
    store_.reset();
  }
  // A clean restart of the process: close, reopen on a healthy disk.
  void Restart() {
    Close();
    fault_.fs().Heal();
    ASSERT_TRUE(Open(fault_.env()).ok());
  }
  // The power goes: nothing from now reaches the disk, the process dies,
  // and the disk keeps what was synced (and, with kRandomTail, some of the
  // rest). Then the machine comes back up. Returns the bytes lost.
  uint64_t PowerCut(UnsyncedLoss loss, uint32_t seed) {
    fault_.fs().CutPower();
    return Crash(loss, seed);
  }
  // The rest of a power cut, once CutPower was called.
  uint64_t Crash(UnsyncedLoss loss, uint32_t seed) {
    Close();
    const uint64_t dropped = fault_.fs().DropUnsyncedData(loss, seed);
    fault_.fs().Heal();
    return dropped;
  }
  Attempt Push(const PushRequest& request, const Caller& caller) {
    Attempt attempt{request, caller, town_->Push(request, caller), {}};
    for (const Record& change : request.changes()) {
      absl::StatusOr<std::optional<Record>> record = store_->GetRecord(change.id());
      if (record.ok() && record->has_value()) attempt.held[change.id()] = **record;
    }
    return attempt;
  }

  FaultEnv fault_;  // Outlives the store.
  hamlet::testing::TempDir dir_;
  std::string data_dir_ = dir_.path();
  sync::FakeClock clock_{kNowMs};
  std::unique_ptr<TownStore> store_;
  std::unique_ptr<ChangeFeed> feed_;
  std::unique_ptr<Town> town_;
};

// A failed WAL sync: the push that waited on it fails, and so does every
// later push and every retry, until the server restarts (a sync failure
// may have lost data the kernel already dropped; nothing after it can be
// trusted to be durable).
TEST_F(StoreFaultTest, FailedWalSyncFailsThePushAndEveryLaterOneUntilRestart) {
  ASSERT_TRUE(Open(fault_.env()).ok());
  const uint64_t seeded = store_->last_seq();
  const Caller phone = Phone(1);
  std::vector<Attempt> attempts;

  const uint64_t syncs_before = fault_.fs().syncs(FaultFiles::kWal);
  attempts.push_back(Push(Batch(phone, 1, {CaseNo(1), CaseNo(2)}), phone));
  ASSERT_TRUE(attempts.back().result.ok()) << attempts.back().result.status();
  EXPECT_EQ(fault_.fs().syncs(FaultFiles::kWal), syncs_before + 1) << "an acknowledged push syncs the WAL once";

  fault_.fs().FailSync(FaultFiles::kWal, 1, FaultRepeat::kOnce);
  attempts.push_back(Push(Batch(phone, 2, {CaseNo(3)}), phone));
  EXPECT_THAT(attempts.back().result, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("write-ahead log")));
  EXPECT_EQ(fault_.fs().injected(), 1u);
  EXPECT_FALSE(store_->store_error().ok());

  // The disk is fine again, but the store is not: a later push is refused
  // (before it is written), and so is a retry of the failed one.
  attempts.push_back(Push(Batch(phone, 3, {CaseNo(4)}), phone));
  EXPECT_THAT(attempts.back().result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(attempts.back().held.empty()) << "a push after a failed sync was written";
  attempts.push_back(Push(attempts[1].request, phone));
  EXPECT_THAT(attempts.back().result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(fault_.fs().injected(), 1u) << "only one fault was injected: the refusals are the store's";

  Restart();
  ExpectGapFreePrefix(*store_, seeded, attempts);
  // After the restart the store works, and a retry gets the same answer
  // whether or not the first attempt made it.
  Attempt retried = Push(attempts[1].request, phone);
  ASSERT_TRUE(retried.result.ok()) << retried.result.status();
  Attempt later = Push(Batch(phone, 3, {CaseNo(4)}), phone);
  ASSERT_TRUE(later.result.ok()) << later.result.status();
}

// The same, but the power goes right after the failed sync: the failed
// push's data was never synced, and the disk may not have it.
TEST_F(StoreFaultTest, FailedWalSyncThenPowerCutKeepsWhatWasAcknowledged) {
  ASSERT_TRUE(Open(fault_.env()).ok());
  const uint64_t seeded = store_->last_seq();
  const Caller phone = Phone(1);
  std::vector<Attempt> attempts;
  for (int i = 1; i <= 3; ++i) {
    attempts.push_back(Push(Batch(phone, i, {CaseNo(2 * i), CaseNo(2 * i + 1)}), phone));
    ASSERT_TRUE(attempts.back().result.ok()) << attempts.back().result.status();
  }
  fault_.fs().FailSync(FaultFiles::kWal, 1, FaultRepeat::kFromThenOn);
  attempts.push_back(Push(Batch(phone, 4, {CaseNo(100)}), phone));
  EXPECT_THAT(attempts.back().result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(attempts.back().held.empty()) << "a push whose sync failed was visible";
  const uint64_t dropped = PowerCut(UnsyncedLoss::kAll, 0);
  EXPECT_GT(dropped, 0u) << "the failed push's WAL record was never synced";
  ASSERT_TRUE(Open(fault_.env()).ok());
  ExpectGapFreePrefix(*store_, seeded, attempts);
}

class FailedWalAppendTest : public StoreFaultTest, public ::testing::WithParamInterface<TornWrite> {};

// A failed WAL append: the push fails and nothing of it is stored, whether
// the failed append wrote nothing or half a record.
TEST_P(FailedWalAppendTest, FailsThePushAndStoresNothingOfIt) {
  ASSERT_TRUE(Open(fault_.env()).ok());
  const uint64_t seeded = store_->last_seq();
  const Caller phone = Phone(1);
  std::vector<Attempt> attempts;
  attempts.push_back(Push(Batch(phone, 1, {CaseNo(1), CaseNo(2)}), phone));
  ASSERT_TRUE(attempts.back().result.ok()) << attempts.back().result.status();

  fault_.fs().FailAppend(FaultFiles::kWal, 1, FaultRepeat::kOnce, GetParam());
  attempts.push_back(Push(Batch(phone, 2, {CaseNo(3), CaseNo(4)}), phone));
  EXPECT_THAT(attempts.back().result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(attempts.back().held.empty()) << "a push whose write failed is visible";
  EXPECT_TRUE(fault_.fs().append_fault_fired());
  // The store says so (hamletd turns its health NOT_SERVING on it), and says
  // what to do.
  EXPECT_THAT(store_->store_error(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("restart hamletd")));
  // The disk works again, but RocksDB takes no more writes until the store
  // is reopened: a torn record followed by acknowledged ones would cost
  // those on recovery, which stops at the torn one.
  for (int i = 3; i <= 4; ++i) {
    attempts.push_back(Push(Batch(phone, i, {CaseNo(2 * i + 1)}), phone));
    EXPECT_THAT(attempts.back().result, StatusIs(absl::StatusCode::kUnavailable));
  }
  attempts.push_back(Push(attempts[1].request, phone));
  EXPECT_THAT(attempts.back().result, StatusIs(absl::StatusCode::kUnavailable));

  Restart();
  ExpectGapFreePrefix(*store_, seeded, attempts);
  // And again after a power cut, which takes whatever was not synced.
  PowerCut(UnsyncedLoss::kAll, 0);
  ASSERT_TRUE(Open(fault_.env()).ok());
  ExpectGapFreePrefix(*store_, seeded, attempts);
}

INSTANTIATE_TEST_SUITE_P(Torn, FailedWalAppendTest, ::testing::Values(TornWrite::kNone, TornWrite::kHalf),
                         [](const ::testing::TestParamInfo<TornWrite>& info) {
                           return info.param == TornWrite::kNone ? "NothingWritten" : "HalfWritten";
                         });

// A full disk: RESOURCE_EXHAUSTED (the client should retry later), nothing
// stored, and the contract holds after space is freed and after a restart.
TEST_F(StoreFaultTest, FullDiskRefusesPushesWithResourceExhausted) {
  ASSERT_TRUE(Open(fault_.env()).ok());
  const uint64_t seeded = store_->last_seq();
  const Caller phone = Phone(1);
  std::vector<Attempt> attempts;
  attempts.push_back(Push(Batch(phone, 1, {CaseNo(1)}), phone));
  ASSERT_TRUE(attempts.back().result.ok()) << attempts.back().result.status();

  fault_.fs().FillDisk();
  for (int i = 2; i <= 3; ++i) {
    attempts.push_back(Push(Batch(phone, i, {CaseNo(i)}), phone));
    EXPECT_THAT(attempts.back().result, StatusIs(absl::StatusCode::kResourceExhausted));
    EXPECT_TRUE(attempts.back().held.empty());
  }
  // Freeing space is not enough: RocksDB stays stopped until the store is
  // reopened (TownStore does not call DB::Resume).
  fault_.fs().FreeDisk();
  attempts.push_back(Push(Batch(phone, 4, {CaseNo(4)}), phone));
  EXPECT_THAT(attempts.back().result, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("restart hamletd")));
  EXPECT_THAT(store_->store_error(), StatusIs(absl::StatusCode::kResourceExhausted));

  Restart();
  ExpectGapFreePrefix(*store_, seeded, attempts);
  Attempt after = Push(Batch(phone, 5, {CaseNo(5)}), phone);
  EXPECT_TRUE(after.result.ok()) << after.result.status();
}

// Power cuts at random points while phones push concurrently (group commit:
// several pushes share a WAL sync). Every acknowledged push survives, and
// what survives has no gap. Then every phone retries what it pushed, as a
// client does: an acknowledged batch gets the same answer again.
TEST_F(StoreFaultTest, PowerCutDuringConcurrentPushesKeepsAGapFreePrefix) {
  constexpr int kPhones = 6;
  constexpr int kBatchesPerPhone = 30;
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    data_dir_ = dir_.Sub(absl::StrCat("round-", seed));
    ASSERT_TRUE(Open(fault_.env()).ok());
    // A disk's flush takes time: pushes pile up behind a sync in flight.
    fault_.fs().SetSyncDelay(std::chrono::milliseconds(1));
    const uint64_t seeded = store_->last_seq();
    std::mt19937 random(seed);
    const int cut_after = std::uniform_int_distribution<int>(1, kPhones * kBatchesPerPhone * 3 / 4)(random);
    const uint64_t syncs_before = fault_.fs().syncs(FaultFiles::kWal);
    std::atomic<int> acknowledged{0};
    std::atomic<int> phones_done{0};
    std::vector<std::vector<Attempt>> pushed(kPhones);
    std::vector<std::thread> phones;
    for (int p = 0; p < kPhones; ++p) {
      phones.emplace_back([&, p] {
        const Caller phone = Phone(p + 1);
        for (int b = 0; b < kBatchesPerPhone; ++b) {
          const uint64_t batch = seed * 100'000 + p * 1'000 + b;
          std::vector<Record> changes;
          for (int r = 0; r <= b % 3; ++r) changes.push_back(CaseNo(batch * 10 + r));
          pushed[p].push_back(Push(Batch(phone, batch, changes), phone));
          if (!pushed[p].back().result.ok()) break;  // The server is down.
          ++acknowledged;
        }
        ++phones_done;
      });
    }
    while (acknowledged.load() < cut_after && phones_done.load() < kPhones) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    fault_.fs().CutPower();
    for (std::thread& phone : phones) phone.join();
    const uint64_t syncs = fault_.fs().syncs(FaultFiles::kWal) - syncs_before;
    const UnsyncedLoss loss = seed % 2 == 1 ? UnsyncedLoss::kAll : UnsyncedLoss::kRandomTail;
    const uint64_t dropped = Crash(loss, seed);
    std::cout << "[ cut      ] seed " << seed << ": cut after " << acknowledged.load() << " acknowledged pushes ("
              << syncs << " WAL syncs); " << dropped << " unsynced bytes lost\n";
    EXPECT_GE(acknowledged.load(), cut_after);

    ASSERT_TRUE(Open(fault_.env()).ok());
    std::vector<Attempt> attempts;
    for (const auto& phone : pushed) attempts.insert(attempts.end(), phone.begin(), phone.end());
    ExpectGapFreePrefix(*store_, seeded, attempts);
    if (HasFatalFailure()) return;

    fault_.fs().SetSyncDelay(std::chrono::microseconds(0));
    std::vector<Attempt> retries;
    for (const Attempt& attempt : attempts) {
      retries.push_back(Push(attempt.request, attempt.caller));
      ASSERT_TRUE(retries.back().result.ok()) << retries.back().result.status();
      if (attempt.result.ok()) {
        EXPECT_TRUE(Same(*retries.back().result, *attempt.result))
            << "a retry of an acknowledged push got " << retries.back().result->ShortDebugString();
      }
    }
    ExpectGapFreePrefix(*store_, seeded, retries);
    Close();
  }
}

// A storage error is UNAVAILABLE (retry later) wherever the data lives. A
// held LOCK file is FAILED_PRECONDITION, and the reference client sets a
// batch refused with FAILED_PRECONDITION aside for good
// (client/device.cc), so the difference decides whether a phone's edits
// reach the server.
TEST_F(StoreFaultTest, FailedSyncIsUnavailableEvenWhenTheDataDirNameSaysLock) {
  data_dir_ = dir_.Sub("block-storage");
  ASSERT_TRUE(Open(fault_.env()).ok());
  const Caller phone = Phone(1);
  fault_.fs().FailSync(FaultFiles::kWal, 1, FaultRepeat::kOnce);
  Attempt failed = Push(Batch(phone, 1, {CaseNo(1)}), phone);
  EXPECT_THAT(failed.result, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("block-storage")));
}

// RocksDB 7.8 as Debian 12 builds it has its assertions compiled in. When a
// push was applied without a sync and waited for a separate SyncWAL, a WAL
// append failing meanwhile (a full disk, another phone's push) aborted the
// process in that SyncWAL (file/writable_file_writer.h:312). A commit group
// is one synced write now, so that order cannot arise: pushes queued
// together when the disk fills are all answered RESOURCE_EXHAUSTED, nothing
// of them written, and what was acknowledged before stays.
TEST_F(StoreFaultTest, PushesQueuedTogetherOnAFullDiskAreAllRefusedAndNothingAcknowledgedIsLost) {
  ASSERT_TRUE(Open(fault_.env()).ok());
  TownStore& store = *store_;
  const auto commit = [](int n) {
    storage::PushCommit commit;
    commit.device_id = Phone(n).device_id;
    commit.batch_id = Uuid(kBatches, n);
    commit.records.push_back({CaseNo(n), "07132", 0, Record()});
    commit.device.set_device_id(commit.device_id);
    return commit;
  };
  const auto receipt = [](uint64_t) { return storage::BatchReceipt(); };
  ASSERT_TRUE(store.CommitPush(commit(1), receipt).ok());
  absl::Notification holding, release;
  store.Submit(
      [&](storage::CommitGroup&) {
        holding.Notify();
        release.WaitForNotification();
        return absl::OkStatus();
      },
      [](const absl::Status&) {});
  holding.WaitForNotification();
  absl::BlockingCounter answered(2);
  std::vector<absl::Status> answers(2);
  for (int n : {2, 3}) {
    store.Submit([&, n](storage::CommitGroup& group) { return group.Stage(commit(n), receipt).status(); },
                 [&, n](const absl::Status& status) {
                   answers[n - 2] = status;
                   answered.DecrementCount();
                 });
  }
  fault_.fs().FillDisk();
  release.Notify();
  answered.Wait();
  EXPECT_THAT(answers[0], StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(answers[1], StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(store.store_error(), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("restart hamletd")));
  Restart();
  for (int n : {1, 2, 3}) {
    absl::StatusOr<std::optional<Record>> record = store_->GetRecord(CaseNo(n).id());
    ASSERT_TRUE(record.ok()) << record.status();
    EXPECT_EQ(record->has_value(), n == 1) << "record " << n;
  }
}

// The contract for single failures at each point of a small history: the
// Nth append (or the Nth half-written append to a log), or the Nth sync, of
// any file RocksDB reads back, for the N the history reaches (Positions
// samples a long run of like calls); then the process restarts, or the
// power goes. After reopening on a healthy disk the store must reopen, and
// be exactly as it was after some applied push no earlier than the last
// acknowledged one.
class FaultSweepTest : public StoreFaultTest {
 protected:
  // Where in the history the fault may hit.
  enum class Phase {
    // Opening a store (units seeded, one push acknowledged, its log already
    // in tables) and making four pushes, edits among them.
    kPushing,
    // Reopening the store after those four pushes, which replays its log
    // into new tables.
    kRecovering,
    // Creating the store and seeding the units, then five pushes. Creating
    // eleven column families makes this mostly the same few MANIFEST and
    // OPTIONS writes, and RocksDB's background compactions race with the
    // faults (a failed one waits a second before closing can go on).
    kCreating,
  };

  void SetUp() override {
    const Caller phone = Phone(1);
    const Record case1 = CaseNo(1);
    const Record case2 = CaseNo(2);
    const Record case3 = CaseNo(3);
    batches_ = {
        Batch(phone, 1, {case1, case2}),
        Batch(phone, 2, {SummaryEdit(case1, "sửa lần 1", 1), case3}),
        Batch(phone, 3, {CaseNo(4)}),
        Batch(phone, 4, {SummaryEdit(case2, "sửa", 2), SummaryEdit(case1, "sửa lần 2", 3)}),
        Batch(phone, 5, {SummaryEdit(case3, "sửa", 4)}),
    };
    ids_ = {case1.id(), case2.id(), case3.id(), CaseNo(4).id()};
  }

  void Sweep(Phase phase) {
    const Caller phone = Phone(1);
    // The store each run starts from, made once on a healthy disk.
    const std::string original = dir_.Sub("original");
    State before;
    if (phase != Phase::kCreating) {
      data_dir_ = original;
      ASSERT_TRUE(Open(nullptr).ok());
      seeded_ = store_->last_seq();
      ASSERT_TRUE(town_->Push(batches_[0], phone).ok());
      before = {store_->last_seq(), Dump(*store_)};
      Close();
      Settle(original);
    }
    const Fault faults[] = {
        {"append",
         [](hamlet::testing::FaultFileSystem& fs, int n) {
           fs.FailAppend(FaultFiles::kDurable, n, FaultRepeat::kOnce, TornWrite::kNone);
         },
         [](const hamlet::testing::FaultFileSystem& fs) { return fs.appends(FaultFiles::kDurable); }},
        // A torn write matters where RocksDB reads a file back record by
        // record: the logs.
        {"torn-wal-append",
         [](hamlet::testing::FaultFileSystem& fs, int n) {
           fs.FailAppend(FaultFiles::kWal, n, FaultRepeat::kOnce, TornWrite::kHalf);
         },
         [](const hamlet::testing::FaultFileSystem& fs) { return fs.appends(FaultFiles::kWal); }},
        {"sync",
         [](hamlet::testing::FaultFileSystem& fs, int n) { fs.FailSync(FaultFiles::kDurable, n, FaultRepeat::kOnce); },
         [](const hamlet::testing::FaultFileSystem& fs) { return fs.syncs(FaultFiles::kDurable); }},
    };
    int runs = 0;
    for (const Fault& fault : faults) {
      // A run without the fault counts the calls it could hit.
      const uint64_t calls = CountCalls(phase, original, fault);
      if (HasFatalFailure()) return;
      int fired_runs = 0;
      // Opening starts with the MANIFEST; the pushes come last. Reopening
      // starts with the new tables, one per column family.
      const bool recovering = phase == Phase::kRecovering;
      for (int n : Positions(static_cast<int>(calls), recovering ? 10 : 3, recovering ? 4 : 8)) {
        for (Ending ending : {Ending::kRestart, Ending::kPowerCut}) {
          // When recovering, the endings take turns, to keep the time down.
          if (phase == Phase::kRecovering && (ending == Ending::kRestart) != (n % 2 == 1)) continue;
          const std::string run =
              absl::StrCat(fault.name, "-", n, ending == Ending::kRestart ? "-restart" : "-powercut");
          SCOPED_TRACE(run);
          ++runs;
          data_dir_ = dir_.Sub(run);
          if (phase != Phase::kCreating) {
            std::error_code error;
            std::filesystem::copy(original, data_dir_, std::filesystem::copy_options::recursive, error);
            ASSERT_FALSE(error) << error.message();
          }
          // What the store held after each push that changed it, and which
          // of those states the phone was told about.
          std::vector<State> states;
          if (phase != Phase::kCreating) states.push_back(before);
          size_t acknowledged = 0;
          // The records of the push that failed on the fault, if one did.
          std::set<std::string> unseen;
          if (phase != Phase::kRecovering) fault.arm(fault_.fs(), n);
          const absl::Status opened = Open(fault_.env());
          if (opened.ok()) {
            if (phase == Phase::kCreating) {
              seeded_ = store_->last_seq();
              states.push_back({seeded_, Dump(*store_)});
            }
            for (size_t i = phase == Phase::kCreating ? 0 : 1; i < batches_.size(); ++i) {
              for (int attempt = 0; attempt < 2; ++attempt) {
                absl::StatusOr<PushResponse> result = town_->Push(batches_[i], phone);
                if (store_->last_seq() != states.back().last_seq) {
                  states.push_back({store_->last_seq(), Dump(*store_)});
                }
                // A commit whose log record was written but not synced was
                // never visible, yet a restart may replay it.
                if (!result.ok() && !store_->store_error().ok() && unseen.empty()) {
                  for (const Record& change : batches_[i].changes()) unseen.insert(change.id());
                }
                if (result.ok()) {
                  acknowledged = states.size() - 1;
                  break;
                }
              }
            }
          }
          absl::Status recovered = absl::OkStatus();
          if (phase == Phase::kRecovering) {
            ASSERT_TRUE(opened.ok()) << opened;
            ASSERT_EQ(acknowledged, states.size() - 1) << "a push failed on a healthy disk";
            Close();
            fault.arm(fault_.fs(), n);
            recovered = Open(fault_.env());
            // Only the reopening is under test, not what RocksDB does after.
            fault_.fs().Heal();
          }
          if (fault_.fs().append_fault_fired() || fault_.fs().sync_fault_fired()) ++fired_runs;
          if (ending == Ending::kRestart) {
            Close();
            fault_.fs().Heal();
          } else {
            fault_.fs().CutPower();
            Crash(UnsyncedLoss::kAll, n);
          }
          const absl::Status reopened = Open(fault_.env());
          ASSERT_TRUE(reopened.ok()) << "the store does not reopen: " << reopened << " (the fault hit "
                                     << (!opened.ok()      ? absl::StrCat("opening: ", opened.ToString())
                                         : !recovered.ok() ? absl::StrCat("reopening: ", recovered.ToString())
                                                           : "elsewhere")
                                     << ")";
          if (states.empty()) {
            // Never created: nothing was acknowledged; the units are seeded now.
            seeded_ = store_->last_seq();
            states.push_back({seeded_, Dump(*store_)});
          }
          ExpectOneOf(states, acknowledged, unseen);
          Close();
          if (HasFatalFailure()) return;
        }
      }
      std::cout << "[ sweep    ] " << fault.name << ": " << calls << " calls, " << fired_runs
                << " runs where the fault hit\n";
    }
    std::cout << "[ sweep    ] " << runs << " runs\n";
  }

 private:
  struct Fault {
    const char* name;
    void (*arm)(hamlet::testing::FaultFileSystem& fs, int n);
    // The calls the fault counts, so far.
    uint64_t (*count)(const hamlet::testing::FaultFileSystem& fs);
  };
  enum class Ending { kRestart, kPowerCut };
  // The scenario's records (by id) at one sequence number.
  struct State {
    uint64_t last_seq = 0;
    std::map<std::string, Record> records;
  };

  // The positions to fail: every call among the first `head` and the last
  // `tail`, and every eighth between. The middle is RocksDB writing a new
  // MANIFEST as it opens, one record per column family, each like the next.
  static std::vector<int> Positions(int calls, int head, int tail) {
    std::vector<int> positions;
    for (int n = 1; n <= calls; ++n) {
      if (n <= head || n > calls - tail || n % 8 == 0) positions.push_back(n);
    }
    return positions;
  }

  // How many calls `fault` could hit in `phase`, from a run without it.
  uint64_t CountCalls(Phase phase, const std::string& original, const Fault& fault) {
    const Caller phone = Phone(1);
    data_dir_ = dir_.Sub(absl::StrCat("count-", fault.name));
    if (phase != Phase::kCreating) {
      std::error_code error;
      std::filesystem::copy(original, data_dir_, std::filesystem::copy_options::recursive, error);
      EXPECT_FALSE(error) << error.message();
    }
    const bool recovering = phase == Phase::kRecovering;
    uint64_t start = fault.count(fault_.fs());
    EXPECT_TRUE(Open(fault_.env()).ok());
    if (town_ == nullptr) return 0;
    for (size_t i = phase == Phase::kCreating ? 0 : 1; i < batches_.size(); ++i) {
      EXPECT_TRUE(town_->Push(batches_[i], phone).ok());
    }
    if (recovering) {
      Close();
      start = fault.count(fault_.fs());
      EXPECT_TRUE(Open(fault_.env()).ok());
    }
    const uint64_t calls = fault.count(fault_.fs()) - start;
    Close();
    return calls;
  }

  // Replays the store's log into tables and compacts them to the last level
  // (RocksDB directly, on a healthy disk), so that opening it again starts
  // no background compaction for a fault to race with: the positions of a
  // run's I/O are the same every time.
  static void Settle(const std::string& dir) {
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), dir, &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (const std::string& name : names) families.emplace_back(name, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir, families, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    rocksdb::CompactRangeOptions compact;
    compact.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
    for (rocksdb::ColumnFamilyHandle* handle : handles) {
      EXPECT_TRUE(db->CompactRange(compact, handle, nullptr, nullptr).ok());
      EXPECT_TRUE(db->DestroyColumnFamilyHandle(handle).ok());
    }
    EXPECT_TRUE(db->Close().ok());
  }

  std::map<std::string, Record> Dump(const TownStore& store) const {
    std::map<std::string, Record> records;
    for (const std::string& id : ids_) {
      absl::StatusOr<std::optional<Record>> record = store.GetRecord(id);
      EXPECT_TRUE(record.ok()) << record.status();
      if (record.ok() && record->has_value()) records[id] = **record;
    }
    return records;
  }

  // The reopened store is exactly one of `states`, no earlier than
  // states[acknowledged], or the last of them with the whole of the failed
  // push whose records are `unseen` (replayed from its unsynced log record);
  // and its change index holds each record once, in sequence order.
  void ExpectOneOf(const std::vector<State>& states, size_t acknowledged, const std::set<std::string>& unseen) {
    const TownStore& store = *store_;
    const std::map<std::string, Record> now = Dump(store);
    auto state =
        std::find_if(states.begin(), states.end(), [&](const State& s) { return s.last_seq == store.last_seq(); });
    if (state == states.end() && !unseen.empty() && store.last_seq() > states.back().last_seq) {
      for (const std::string& id : unseen) EXPECT_EQ(now.count(id), 1u) << "the replayed push lacks record " << id;
      for (const auto& [id, record] : states.back().records) {
        auto found = now.find(id);
        ASSERT_NE(found, now.end()) << "record " << id << " is gone";
        if (unseen.count(id) == 0) EXPECT_TRUE(Same(found->second, record)) << "record " << id << " differs";
      }
      for (const auto& [id, record] : now) {
        EXPECT_TRUE(states.back().records.count(id) == 1 || unseen.count(id) == 1)
            << "record " << id << " came from nowhere";
      }
    } else {
      ASSERT_NE(state, states.end()) << "last_seq " << store.last_seq() << " is no state the store was in";
      EXPECT_GE(static_cast<size_t>(state - states.begin()), acknowledged) << "an acknowledged push is gone";
      EXPECT_EQ(now.size(), state->records.size());
      for (const auto& [id, record] : state->records) {
        auto found = now.find(id);
        ASSERT_NE(found, now.end()) << "record " << id << " is gone";
        EXPECT_TRUE(Same(found->second, record)) << "record " << id << " differs";
      }
    }
    std::set<std::string> indexed;
    uint64_t previous_seq = 0;
    uint64_t after = 0;
    while (true) {
      absl::StatusOr<ChangePage> page =
          store.ReadChanges(ChangeScope::WholeServer(), after, 1000, 64 << 20, storage::CountRemaining::kNo);
      ASSERT_TRUE(page.ok()) << page.status();
      if (page->records.empty()) break;
      for (const Record& record : page->records) {
        EXPECT_TRUE(indexed.insert(record.id()).second) << "record " << record.id() << " is in the index twice";
        EXPECT_GT(record.server_seq(), previous_seq) << "record " << record.id() << " is out of place in the index";
        previous_seq = record.server_seq();
      }
      after = page->through_seq;
    }
    EXPECT_EQ(indexed.size(), seeded_ + now.size());
  }

  std::vector<PushRequest> batches_;
  std::vector<std::string> ids_;
  uint64_t seeded_ = 0;
};

TEST_F(FaultSweepTest, SingleFailuresWhilePushing) { Sweep(Phase::kPushing); }
TEST_F(FaultSweepTest, SingleFailuresWhileRecovering) { Sweep(Phase::kRecovering); }
// About 70 more runs (15 s); run it with --gtest_also_run_disabled_tests.
TEST_F(FaultSweepTest, DISABLED_SingleFailuresWhileCreating) { Sweep(Phase::kCreating); }

}  // namespace
}  // namespace hamlet::server
