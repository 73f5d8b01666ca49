// Writes small valid inputs for each fuzz target into DIR/<target>/ (the
// input formats are described at the top of each *_fuzzer.cc):
//   fuzz_seeds DIR
// tests/fuzz/corpus is its output. Records come from the same builders the
// tests use; the store seeds are dumps of stores written through their APIs.

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/message_lite.h"
#include "rocksdb/db.h"
#include "storage/device_store.h"
#include "storage/rocks.h"
#include "storage/sealing.h"
#include "storage/town_store.h"
#include "sync/cursor.h"
#include "sync/merge.h"
#include "tests/support/records.h"

namespace hamlet::fuzz {
namespace {

using hamlet::testing::CaseStatusChange;
using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::v1::MediationCase;
using hamlet::v1::Record;

constexpr char kCase[] = "6f1c3a52-0d7e-4c1b-9a43-2b8f0e6d5c71";
constexpr char kTip[] = "0b7e54d1-3c2a-4f6e-8d9b-7a1c2e3f4a5b";
constexpr char kDevice[] = "3f2a9c4e-7b1d-4e8a-9c55-1d2e3f4a5b6c";
constexpr char kBatch[] = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
constexpr char kServer[] = "1e2d3c4b-5a69-4788-8796-a5b4c3d2e1f0";

std::string out_dir;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  std::filesystem::create_directories(out_dir + "/" + target);
  std::ofstream(out_dir + "/" + target + "/" + name, std::ios::binary) << bytes;
}

std::string WithControl(uint8_t control, const google::protobuf::MessageLite& message) {
  return std::string(1, static_cast<char>(control)) + message.SerializeAsString();
}

Record WithParty(const Record& base, const std::string& id, const std::string& name, const hamlet::v1::Stamp& stamp) {
  Record r = sync::EmptyChangeOf(base);
  auto* p = r.mutable_mediation_case()->add_parties();
  p->set_id(id);
  p->set_name(name);
  hamlet::v1::FieldStamp fs;
  fs.set_field(MediationCase::kPartiesFieldNumber);
  fs.set_key(id);
  *fs.mutable_stamp() = stamp;
  sync::PutFieldStamp(&r, fs);
  return r;
}

Record WithoutParty(const Record& base, const std::string& id, const hamlet::v1::Stamp& seen) {
  Record r = sync::EmptyChangeOf(base);
  hamlet::v1::FieldStamp fs;
  fs.set_field(MediationCase::kPartiesFieldNumber);
  fs.set_key(id);
  *fs.mutable_stamp() = seen;
  *fs.mutable_removed() = seen;
  sync::PutFieldStamp(&r, fs);
  return r;
}

Record SummaryEdit(const Record& base, const std::string& summary, const hamlet::v1::Stamp& stamp) {
  Record r = sync::EmptyChangeOf(base);
  r.mutable_mediation_case()->set_summary(summary);
  sync::SetFieldStamp(&r, MediationCase::kSummaryFieldNumber, stamp);
  return r;
}

Record NewTip(const hamlet::v1::Stamp& stamp) {
  Record r;
  r.set_id(kTip);
  r.set_unit_code("07132-K01");
  r.set_author("person-2");
  r.mutable_create_time()->set_seconds(stamp.physical_ms() / 1000);
  r.set_sensitivity(hamlet::v1::SENSITIVITY_CONFIDENTIAL);
  auto* tip = r.mutable_security_tip();
  tip->mutable_received_time()->set_seconds(stamp.physical_ms() / 1000);
  tip->mutable_forwarded_time()->set_seconds(stamp.physical_ms() / 1000 + 3 * 86400);
  tip->set_category(hamlet::v1::TipCategory(1));
  tip->set_status(hamlet::v1::TIP_STATUS_NEW);
  for (uint32_t field : {1u, 6u, 11u, 13u, 14u, 15u}) sync::SetFieldStamp(&r, field, stamp);
  return r;
}

void PushSeeds() {
  const Record created = NewCase(kCase, "07132-K01", MakeStamp(1'796'000'000'000, 0, "a"));
  hamlet::v1::PushRequest push;
  push.set_device_id(kDevice);
  push.set_batch_id(kBatch);
  *push.add_changes() = created;
  *push.add_changes() =
      CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_ASSIGNED, MakeStamp(1'796'000'001'000, 0, "a"));
  *push.add_changes() = WithParty(created, "p1", "Nguyễn Văn A", MakeStamp(1'796'000'002'000, 0, "a"));
  Write("push", "case_by_team_leader", WithControl(0x01, push));  // ROLE_TEAM_LEADER of 07132-K01

  hamlet::v1::PushRequest tip;
  tip.set_device_id(kDevice);
  tip.set_batch_id(kBatch);
  *tip.add_changes() = NewTip(MakeStamp(1'796'000'000'000, 0, "b"));
  Write("push", "tip_by_member", WithControl(0x00, tip));  // ROLE_MEMBER of 07132-K01

  // A town's merged state, with a conflict, replicated up.
  Record state = created;
  sync::MergeRecord(CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL,
                                     MakeStamp(1'796'000'003'000, 0, "a"), 1, hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL),
                    &state);
  sync::MergeRecord(
      CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL, MakeStamp(1'796'000'003'500, 0, "b"), 1,
                       hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL),
      &state);
  hamlet::v1::PushRequest replica;
  replica.set_device_id(kDevice);
  replica.set_batch_id(kBatch);
  *replica.add_changes() = state;
  Write("push", "replica_state", WithControl(0x07 | 0x18, replica));  // ROLE_REPLICATION_NODE of 206

  hamlet::v1::PullRequest pull;
  pull.set_device_id(kDevice);
  pull.set_scope_unit_code("07132");
  pull.set_cursor(sync::EncodeCursor({kServer, 1, "07132", 42, ""}));
  Write("push", "pull_with_cursor", WithControl(0x80 | 0x04 | 0x18, pull));  // ROLE_TOWN_OFFICER of 206
}

void MergeSeeds() {
  const Record created = NewCase(kCase, "07132", MakeStamp(1000, 0, "a"), "first summary");
  const auto history = [](std::initializer_list<Record> changes) {
    hamlet::v1::PushRequest request;
    for (const Record& c : changes) *request.add_changes() = c;
    return request;
  };
  // Cuts: bits 1-3 and 4-6 of the control byte.
  Write("merge", "last_writer_wins",
        WithControl(0x02 | 0x10, history({created, SummaryEdit(created, "B's", MakeStamp(3000, 0, "b")),
                                          SummaryEdit(created, "C's", MakeStamp(2000, 0, "c"))})));

  const Record ok = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, MakeStamp(2000, 0, "a"), 1,
                                     hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
  const Record not_ok = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_UNSUCCESSFUL, MakeStamp(2500, 0, "b"), 1,
                                         hamlet::v1::MEDIATION_OUTCOME_UNSUCCESSFUL);
  Write("merge", "lifecycle_conflict", WithControl(0x02 | 0x10, history({created, ok, not_ok})));
  Record resolution = CaseStatusChange(created, hamlet::v1::MEDIATION_STATUS_SUCCESSFUL, MakeStamp(3000, 0, "leader"),
                                       1, hamlet::v1::MEDIATION_OUTCOME_SUCCESSFUL);
  hamlet::v1::FieldStamp lead = *sync::FindFieldStamp(resolution, MediationCase::kStatusFieldNumber);
  *lead.mutable_supersedes() = MakeStamp(2500, 0, "b#2");  // not_ok's stamp, as the fuzzer renames it
  sync::PutFieldStamp(&resolution, lead);
  Write("merge", "conflict_resolved", WithControl(0x01 | 0x04 | 0x20, history({created, ok, not_ok, resolution})));

  Write("merge", "party_set",
        WithControl(0x02 | 0x20, history({created, WithParty(created, "p1", "Nguyễn Văn A", MakeStamp(2000, 0, "a")),
                                          WithoutParty(created, "p1", MakeStamp(2000, 0, "a#1")),
                                          WithParty(created, "p1", "Nguyễn Văn An", MakeStamp(2500, 0, "c")),
                                          WithParty(created, "p2", "Trần Thị B", MakeStamp(2600, 0, "b"))})));

  Record deleted = sync::EmptyChangeOf(created);
  deleted.set_deleted(true);
  *deleted.mutable_deleted_stamp() = MakeStamp(3000, 0, "b");
  Record newer = sync::EmptyChangeOf(created);
  newer.mutable_mediation_case()
      ->GetReflection()
      ->MutableUnknownFields(newer.mutable_mediation_case())
      ->AddLengthDelimited(1000, "ghi chú");
  sync::SetFieldStamp(&newer, 1000, MakeStamp(2000, 0, "c"));
  Write("merge", "deleted_and_newer_field",
        WithControl(0x04 | 0x10,
                    history({created, deleted, newer, SummaryEdit(created, "after", MakeStamp(4000, 0, "a"))})));
}

std::string Selected(uint8_t decoder, const std::string& bytes) {
  return std::string(1, static_cast<char>(decoder)) + bytes;
}

void DecodeSeeds() {
  using storage::internal::EncodeValue;
  const Record created = NewCase(kCase, "07132", MakeStamp(1000, 0, "a"));
  Write("decode", "record", Selected(0, EncodeValue(created)));
  storage::DeviceState device;
  device.set_device_id(kDevice);
  device.set_last_batch_id(kBatch);
  device.set_batches_applied(3);
  Write("decode", "device_state", Selected(1, EncodeValue(device)));
  storage::BatchReceipt receipt;
  receipt.set_content_hash(std::string(32, '\x5a'));
  receipt.set_commit_time_ms(1'796'000'000'000);
  Write("decode", "batch_receipt", Selected(2, EncodeValue(receipt)));
  storage::Enrolment enrolment;
  enrolment.mutable_device()->set_device_id(kDevice);
  enrolment.mutable_device()->set_role(hamlet::v1::ROLE_MEMBER);
  enrolment.set_token_sha256(std::string(32, '\x11'));
  Write("decode", "enrolment", Selected(3, EncodeValue(enrolment)));
  hamlet::v1::AuditEntry audit;
  audit.set_seq(7);
  audit.set_action("enroll");
  audit.set_target(kDevice);
  Write("decode", "audit_entry", Selected(4, EncodeValue(audit)));
  storage::ReplicationState replication;
  replication.set_upstream("province:7443");
  replication.set_acked_seq(12);
  replication.set_down_cursor(sync::EncodeCursor({kServer, 2, "~reference", 9, ""}));
  Write("decode", "replication_state", Selected(5, EncodeValue(replication)));
  storage::PullPosition position;
  position.set_scope("07132");
  position.set_cursor(sync::EncodeCursor({kServer, 1, "07132", 42, ""}));
  Write("decode", "pull_position", Selected(6, EncodeValue(position)));
  storage::PendingBatch pending;
  pending.set_batch_id(kBatch);
  pending.set_last_outbox_seq(4);
  Write("decode", "pending_batch", Selected(7, EncodeValue(pending)));
  storage::OutboxEntry outbox;
  *outbox.mutable_change() = SummaryEdit(created, "edit", MakeStamp(2000, 0, "a"));
  Write("decode", "outbox_entry", Selected(8, EncodeValue(outbox)));
  storage::RejectedEdit rejected;
  *rejected.mutable_change() = outbox.change();
  rejected.set_batch_id(kBatch);
  rejected.set_reason("PERMISSION_DENIED: not yours");
  Write("decode", "rejected_edit", Selected(9, EncodeValue(rejected)));
  Write("decode", "stamp", Selected(10, EncodeValue(MakeStamp(1'796'000'000'000, 3, "node"))));
  Write("decode", "cursor", Selected(11, sync::EncodeCursor({kServer, 1, "07132", 42, ""})));
  auto sealer = storage::Sealer::Create(std::string(32, 'k'), {std::string(32, 'o')});
  Write("decode", "sealed", Selected(12, *(*sealer)->Seal(created.SerializeAsString(), kCase)));
  Write("decode", "sealed_tail", Selected(13, (*sealer)->Seal("x", kCase)->substr(20)));
}

// input := kind entry*;  entry := family:u8 key_len:u8 key value_len:be16 value
std::string Dump(uint8_t kind, const std::string& dir, const std::vector<std::string>& families,
                 const std::vector<std::string>& skip_meta = {}) {
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : families) descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(), dir, descriptors, &handles, &raw);
  if (!s.ok()) {
    std::cerr << "fuzz_seeds: " << s.ToString() << "\n";
    std::exit(1);
  }
  std::string out(1, static_cast<char>(kind));
  for (size_t f = 0; f < handles.size(); ++f) {
    std::unique_ptr<rocksdb::Iterator> it(raw->NewIterator(rocksdb::ReadOptions(), handles[f]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (f == 0 && std::find(skip_meta.begin(), skip_meta.end(), it->key().ToString()) != skip_meta.end()) continue;
      out.push_back(static_cast<char>(f));
      out.push_back(static_cast<char>(it->key().size()));
      out.append(it->key().data(), it->key().size());
      out.push_back(static_cast<char>(it->value().size() >> 8));
      out.push_back(static_cast<char>(it->value().size() & 0xff));
      out.append(it->value().data(), it->value().size());
    }
  }
  for (auto* handle : handles) raw->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
  delete raw;
  return out;
}

void StoreSeeds(const std::string& scratch) {
  const std::vector<std::string> town_families = {"default",    "records", "changes",     "commune_changes",
                                                  "devices",    "batches", "enrolments",  "audit",
                                                  "conflicted", "tallies", "index_counts"};
  const std::string town_dir = scratch + "/town";
  {
    storage::TownStoreOptions options;
    options.sync_writes = false;
    options.sealer = std::move(*storage::Sealer::Create(std::string(32, 'k'), {std::string(32, 'o')}));
    auto store = std::move(*storage::TownStore::Open(town_dir, options));
    Record created = NewCase(kCase, "07132", MakeStamp(1'796'000'000'000, 0, "a"));
    created.mutable_mediation_case()->set_date_received("2026-11-30");
    sync::SetFieldStamp(&created, MediationCase::kDateReceivedFieldNumber, MakeStamp(1'796'000'000'000, 0, "a"));
    Record sealed;
    sealed.set_id("5c4b3a29-1807-4f6e-9d5c-4b3a29180706");
    sealed.set_unit_code("07132-K01");
    sealed.set_author("person-2");
    sealed.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
    sealed.mutable_informant_identity()->set_name("X");
    sync::SetFieldStamp(&sealed, 1, MakeStamp(1'796'000'000'000, 0, "b"));
    storage::PushCommit commit;
    commit.device_id = kDevice;
    commit.batch_id = kBatch;
    commit.records.push_back({created, "07132", 0, Record()});
    commit.records.push_back({sealed, "07132", 0, Record()});
    commit.device.set_device_id(kDevice);
    commit.clock = MakeStamp(1'796'000'000'000, 1, "server");
    if (!store->CommitPush(std::move(commit), [](uint64_t) { return storage::BatchReceipt(); }).ok()) std::exit(1);
    storage::ReplicationState replication;
    replication.set_acked_seq(1);
    if (!store->PutReplicationState(replication).ok()) std::exit(1);
    hamlet::v1::AuditEntry audit;
    audit.set_action("enroll");
    if (!store->AppendAudit(audit).ok()) std::exit(1);
  }
  Write("store", "town", Dump(0, town_dir, town_families));
  // Without the meta keys that say the counts and tallies are complete, the
  // store rebuilds them from the records and the change index when opened.
  Write("store", "town_rebuilds", Dump(0, town_dir, town_families, {"tallies", "index_counts"}));

  const std::string device_dir = scratch + "/device";
  {
    auto store = std::move(*storage::DeviceStore::Open(device_dir, kDevice));
    const Record created = NewCase(kCase, "07132", MakeStamp(1'796'000'000'000, 0, "a"));
    if (!store->SaveLocalEdit(created, created, MakeStamp(1'796'000'000'000, 0, kDevice)).ok()) std::exit(1);
    const Record edit = SummaryEdit(created, "edit", MakeStamp(1'796'000'001'000, 0, kDevice));
    Record state = created;
    sync::MergeRecord(edit, &state);
    if (!store->SaveLocalEdit(state, edit, MakeStamp(1'796'000'001'000, 0, kDevice)).ok()) std::exit(1);
    storage::PendingBatch pending;
    pending.set_batch_id(kBatch);
    pending.set_last_outbox_seq(1);
    if (!store->SetPendingBatch(pending).ok()) std::exit(1);
    if (!store
             ->SavePulledPage({}, "07132", sync::EncodeCursor({kServer, 1, "07132", 2, ""}),
                              MakeStamp(1'796'000'001'000, 1, kDevice))
             .ok()) {
      std::exit(1);
    }
    if (!store->SetEnrolment("token", hamlet::v1::ROLE_MEMBER).ok()) std::exit(1);
  }
  const std::vector<std::string> device_families = {"default", "records", "outbox", "rejected"};
  Write("store", "device", Dump(1, device_dir, device_families));
  Write("store", "device_rejects", Dump(1 | 4, device_dir, device_families));
}

}  // namespace
}  // namespace hamlet::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_seeds DIR\n";
    return 2;
  }
  hamlet::fuzz::out_dir = argv[1];
  const std::string scratch = std::filesystem::temp_directory_path() / absl::StrCat("hamlet-fuzz-seeds-", getpid());
  std::filesystem::remove_all(scratch);
  std::filesystem::create_directories(scratch);
  hamlet::fuzz::PushSeeds();
  hamlet::fuzz::MergeSeeds();
  hamlet::fuzz::DecodeSeeds();
  hamlet::fuzz::StoreSeeds(scratch);
  std::filesystem::remove_all(scratch);
  return 0;
}
