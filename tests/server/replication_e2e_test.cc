// Town → province replication with the real hamletd: two town servers and a
// province server on loopback, phones (the reference client library) pushing
// to the towns, and the province and one town killed with SIGKILL and
// restarted at random moments meanwhile (docs/REPLICATION.md).

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/device.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "hamlet/v1/admin.grpc.pb.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "sync/access.h"
#include "sync/change.h"
#include "sync/clock.h"
#include "sync/uuid.h"
#include "sync/validate.h"
#include "tests/support/admin.h"
#include "tests/support/records.h"
#include "tests/support/server_process.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using google::protobuf::util::TimeUtil;
using hamlet::testing::AdminClient;
using hamlet::testing::ReadFile;
using hamlet::testing::ServerProcess;
using hamlet::v1::Record;

// Written into the personal fields the province must never receive.
constexpr char kPartyCanary[] = "CANARY-PARTY";
constexpr char kHeadCanary[] = "CANARY-HEAD";
constexpr char kInformantCanary[] = "CANARY-INFORMANT";

// One hamletd that can be killed and started again on the same ports, from
// another thread than the one using its addresses.
class Node {
 public:
  Node(std::string data_dir, std::vector<std::string> flags)
      : data_dir_(std::move(data_dir)), flags_(std::move(flags)) {
    process_ = ServerProcess::Start(data_dir_, flags_);
    if (process_ == nullptr) return;
    address_ = process_->address();
    admin_address_ = process_->admin_address();
    flags_.push_back("--listen=" + address_);
    flags_.push_back("--admin_listen=" + admin_address_);
  }
  bool up() const {
    std::lock_guard<std::mutex> lock(mu_);
    return process_ != nullptr;
  }
  void Kill() {
    std::lock_guard<std::mutex> lock(mu_);
    if (process_ != nullptr) process_->Kill();
    process_.reset();
  }
  // Starts it again if down; false if it does not come up.
  bool EnsureUp() {
    std::lock_guard<std::mutex> lock(mu_);
    for (int attempt = 0; process_ == nullptr && attempt < 5; ++attempt) {
      process_ = ServerProcess::Start(data_dir_, flags_);  // The port may need a moment to be free again.
      if (process_ == nullptr) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return process_ != nullptr;
  }
  const std::string& address() const { return address_; }
  const std::string& admin_address() const { return admin_address_; }
  std::string admin_token() const { return ReadFile(data_dir_ + "/admin.token").substr(0, 47); }
  std::string Log() const { return ReadFile(data_dir_ + ".log"); }
  const std::string& data_dir() const { return data_dir_; }
  // REQUIRES: up().
  ServerProcess& process() { return *process_; }

 private:
  const std::string data_dir_;
  std::vector<std::string> flags_;
  std::string address_;
  std::string admin_address_;
  mutable std::mutex mu_;
  std::unique_ptr<ServerProcess> process_;
};

std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
  return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

// Every record `token`'s device may see in the whole server (or its
// reference data), by id; fails the test on a record seen twice.
std::map<std::string, Record> PullAll(const std::string& address, const std::string& device_id,
                                      const std::string& token, bool reference_only = false) {
  auto stub = hamlet::v1::SyncService::NewStub(Channel(address));
  std::map<std::string, Record> records;
  hamlet::v1::PullRequest request;
  request.set_device_id(device_id);
  request.set_reference_only(reference_only);
  request.set_page_size(1000);
  while (true) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + token);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    hamlet::v1::PullResponse response;
    const grpc::Status status = stub->Pull(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok()) return records;
    for (const Record& record : response.records()) {
      EXPECT_TRUE(records.emplace(record.id(), record).second) << "record " << record.id() << " pulled twice";
    }
    request.set_cursor(response.next_cursor());
    if (response.remaining() == 0) return records;
  }
}

// What the admin listener's health service says of "hamlet.replication".
grpc::health::v1::HealthCheckResponse::ServingStatus ReplicationHealth(const Node& node) {
  auto stub = grpc::health::v1::Health::NewStub(Channel(node.admin_address()));
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("hamlet.replication");
  grpc::health::v1::HealthCheckResponse response;
  EXPECT_TRUE(stub->Check(&context, request, &response).ok());
  return response.status();
}

hamlet::v1::ReplicationStatus ReplicationOf(const Node& node) {
  auto stub = hamlet::v1::AdminService::NewStub(Channel(node.admin_address()));
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + node.admin_token());
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  hamlet::v1::GetReplicationStatusResponse response;
  const grpc::Status status = stub->GetReplicationStatus(&context, {}, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.status();
}

// Polls the town's replication status until `done` holds or `patience`
// runs out; returns the last status.
hamlet::v1::ReplicationStatus WaitForReplication(const Node& town,
                                                 const std::function<bool(const hamlet::v1::ReplicationStatus&)>& done,
                                                 absl::Duration patience) {
  const absl::Time deadline = absl::Now() + patience;
  hamlet::v1::ReplicationStatus status;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = ReplicationOf(town);
  } while (!done(status) && absl::Now() < deadline);
  return status;
}

// Running with nothing left to send.
bool CaughtUp(const hamlet::v1::ReplicationStatus& status) {
  return status.lag_records() == 0 && status.state() == hamlet::v1::REPLICATION_STATE_RUNNING;
}

hamlet::v1::GetReportResponse Report(const Node& node, const std::string& unit, const std::string& from,
                                     const std::string& to, hamlet::v1::ReportAudience audience) {
  auto stub = hamlet::v1::AdminService::NewStub(Channel(node.admin_address()));
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + node.admin_token());
  hamlet::v1::GetReportRequest request;
  request.set_unit_code(unit);
  request.set_from_date(from);
  request.set_to_date(to);
  request.set_audience(audience);
  hamlet::v1::GetReportResponse response;
  const grpc::Status status = stub->GetReport(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

std::map<std::string, int64_t> ReportFigures(const Node& node, const std::string& unit, uint32_t* villages_registered) {
  const hamlet::v1::GetReportResponse response =
      Report(node, unit, "2026-01-01", "2026-12-31", hamlet::v1::REPORT_AUDIENCE_UNSPECIFIED);
  std::map<std::string, int64_t> figures;
  for (const auto& figure : response.figures()) figures[figure.metric()] = figure.count();
  *villages_registered = response.villages_registered();
  return figures;
}

// How many times `needle` occurs in the files under `dir`.
int CountInFiles(const std::string& dir, const std::string& needle) {
  int hits = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    const std::string content = ReadFile(entry.path().string());
    for (size_t at = content.find(needle); at != std::string::npos; at = content.find(needle, at + 1)) ++hits;
  }
  return hits;
}

// A phone: the reference client with its own store, enrolled at a town.
struct Phone {
  std::unique_ptr<field::FieldDevice> device;
  std::string unit;
  std::string person;
  const Node* town;
};

class ReplicationE2eTest : public ::testing::Test {
 protected:
  bool StartProvince() {
    province_ = std::make_unique<Node>(dir_.Sub("province"), std::vector<std::string>{"--tier=province"});
    return province_->up();
  }

  // Learns a new town's server id without serving (hamletd --print_server_id), enrols that id
  // at the province as the town's replication node, and starts the town replicating.
  std::unique_ptr<Node> StartTown(const std::string& name, const std::string& code) {
    const std::string data_dir = dir_.Sub(name);
    const std::string id_file = data_dir + ".id";
    const pid_t printer = hamlet::testing::Spawn(
        {HAMLETD_PATH, "--data_dir=" + data_dir, "--town_code=" + code, "--print_server_id"}, id_file);
    EXPECT_EQ(hamlet::testing::WaitExit(printer), 0) << ReadFile(id_file);
    const std::string printed = ReadFile(id_file);
    const size_t line = printed.rfind('\n', printed.size() - 2);
    std::string server_id = printed.substr(line == std::string::npos ? 0 : line + 1);
    server_id = server_id.substr(0, server_id.find('\n'));
    EXPECT_TRUE(sync::IsUuid(server_id)) << printed;
    const std::string token = AdminClient(province_->process())
                                  .Enroll(server_id, hamlet::v1::ROLE_REPLICATION_NODE, code, "replicator-" + code);
    const std::string token_file = dir_.Sub(name + ".upstream-token");
    std::ofstream(token_file) << token << "\n";
    auto town = std::make_unique<Node>(
        data_dir, std::vector<std::string>{"--town_code=" + code, "--upstream=" + province_->address(),
                                           "--upstream_token_file=" + token_file, "--replication_poll=300ms"});
    EXPECT_TRUE(town->up()) << town->Log();
    {
      AdminClient admin(town->process());
      hamlet::v1::GetServerStatsResponse stats;
      EXPECT_TRUE(admin.stub().GetServerStats(admin.Context().get(), {}, &stats).ok());
      EXPECT_EQ(stats.server_id(), server_id) << "the printed id is the id the town serves with";
    }
    return town;
  }

  Phone NewPhone(const Node& town, hamlet::v1::Role role, const std::string& unit, const std::string& person) {
    Phone phone;
    auto device = field::FieldDevice::Open(dir_.Sub(absl::StrCat("phone-", phones_++)), sync::SystemClock::Get());
    EXPECT_TRUE(device.ok()) << device.status();
    phone.device = std::move(*device);
    AdminClient admin(*ServerProcessOf(town));
    const std::string token = admin.Enroll(phone.device->device_id(), role, unit, person);
    EXPECT_TRUE(phone.device->store().SetEnrolment(token, role).ok());
    phone.device->set_role(role);
    phone.unit = unit;
    phone.person = person;
    phone.town = &town;
    return phone;
  }

  // The town's process for the set-up steps, which run before any chaos.
  ServerProcess* ServerProcessOf(const Node& town) { return &const_cast<Node&>(town).process(); }

  // Records what a member records in a day: a mediation case with a party, a
  // registered household and a tip with the informant's identity; and moves
  // an earlier case on. Returns the ids created that the province must get;
  // the informant identity's id goes to `sealed`.
  std::vector<std::string> RecordADay(Phone& phone, int day, std::vector<std::string>* sealed) {
    std::vector<std::string> ids;
    absl::BitGen gen;
    Record draft;
    draft.set_unit_code(phone.unit);
    draft.set_author(phone.person);
    auto* mediation = draft.mutable_mediation_case();
    mediation->set_summary(absl::StrCat("Tranh chấp lối đi, ngày ", day));
    mediation->set_status(hamlet::v1::MEDIATION_STATUS_RECEIVED);
    mediation->set_round(1);
    mediation->set_date_received(absl::StrFormat("2026-%02d-15", 1 + day % 11));
    mediation->set_dispute_type(day % 2 == 0 ? hamlet::v1::DISPUTE_TYPE_LAND : hamlet::v1::DISPUTE_TYPE_NEIGHBOUR);
    auto* party = mediation->add_parties();
    party->set_id(sync::NewUuid(gen));
    party->set_name(absl::StrCat(kPartyCanary, "-", day));
    party->set_age(40 + day);
    party->set_address(absl::StrCat(kPartyCanary, "-address-", day));
    auto created = phone.device->Create(draft);
    EXPECT_TRUE(created.ok()) << created.status();
    ids.push_back(created->id());
    cases_[phone.device.get()].push_back(created->id());

    Record house;
    house.set_unit_code(phone.unit);
    house.set_author(phone.person);
    auto* h = house.mutable_household_registration();
    h->set_household(absl::StrCat("Hộ ", kHeadCanary, "-", day));
    h->set_head(absl::StrCat(kHeadCanary, "-", day));
    h->set_village(phone.unit);
    h->set_year(2026);
    h->set_registered_date(absl::StrFormat("2026-%02d-02", 1 + day % 11));
    h->set_commitment_signed(true);
    h->set_evaluation(hamlet::v1::HOUSEHOLD_EVALUATION_PASS);
    created = phone.device->Create(house);
    EXPECT_TRUE(created.ok()) << created.status();
    ids.push_back(created->id());

    Record informant;
    informant.set_unit_code(phone.unit);
    informant.set_author(phone.person);
    informant.set_sensitivity(hamlet::v1::SENSITIVITY_SEALED);
    informant.mutable_informant_identity()->set_name(absl::StrCat(kInformantCanary, "-", day));
    created = phone.device->Create(informant);
    EXPECT_TRUE(created.ok()) << created.status();
    const std::string informant_id = created->id();
    sealed->push_back(informant_id);

    Record tip;
    tip.set_unit_code(phone.unit);
    tip.set_author(phone.person);
    auto* t = tip.mutable_security_tip();
    *t->mutable_received_time() = TimeUtil::MillisecondsToTimestamp(1767225600000 + day * 86400000LL);
    t->set_receiving_member(phone.person);
    t->set_category(hamlet::v1::TIP_CATEGORY_THEFT);
    t->set_summary(absl::StrCat("Mất trộm xe máy, ngày ", day));
    t->set_informant_ref(informant_id);
    created = phone.device->Create(tip);
    EXPECT_TRUE(created.ok()) << created.status();
    ids.push_back(created->id());

    // An earlier case gets its mediator: the province must see the later state.
    auto& cases = cases_[phone.device.get()];
    if (cases.size() > 1) {
      hamlet::v1::MediationCase moved;
      moved.set_status(hamlet::v1::MEDIATION_STATUS_ASSIGNED);
      moved.set_round(1);
      const std::string id = cases[cases.size() - 2];
      auto edited = phone.device->Edit(
          id, moved,
          {hamlet::v1::MediationCase::kStatusFieldNumber, hamlet::v1::MediationCase::kRoundFieldNumber,
           hamlet::v1::MediationCase::kOutcomeFieldNumber});
      EXPECT_TRUE(edited.ok()) << edited.status();
    }
    return ids;
  }

  // Syncs until it succeeds or `patience` runs out.
  bool Sync(Phone& phone, absl::Duration patience) {
    field::FieldDevice::SyncOptions options;
    options.retry = {absl::Seconds(5), 2, absl::Milliseconds(50), absl::Milliseconds(200)};
    auto stub = hamlet::v1::SyncService::NewStub(Channel(phone.town->address()));
    const absl::Time deadline = absl::Now() + patience;
    while (true) {
      auto report = phone.device->Sync(*stub, options);
      if (report.ok()) return true;
      if (absl::Now() > deadline) {
        ADD_FAILURE() << "sync never succeeded: " << report.status();
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  hamlet::testing::TempDir dir_;
  std::unique_ptr<Node> province_;
  int phones_ = 0;
  std::map<field::FieldDevice*, std::vector<std::string>> cases_;
};

TEST_F(ReplicationE2eTest, EveryRecordReachesTheProvinceOnceThroughCrashesAndNoSealedFieldDoes) {
  ASSERT_TRUE(StartProvince()) << province_->Log();
  std::unique_ptr<Node> quang_yen = StartTown("quang-yen", "206");
  std::unique_ptr<Node> co_to = StartTown("co-to", "207");
  ASSERT_TRUE(quang_yen && quang_yen->up() && co_to && co_to->up());

  std::vector<Phone> phones;
  phones.push_back(NewPhone(*quang_yen, hamlet::v1::ROLE_MEMBER, "07132-K01", "hgv-qy-1"));
  phones.push_back(NewPhone(*quang_yen, hamlet::v1::ROLE_MEMBER, "07135-K02", "hgv-qy-2"));
  phones.push_back(NewPhone(*co_to, hamlet::v1::ROLE_MEMBER, "07192-K01", "hgv-ct-1"));
  phones.push_back(NewPhone(*co_to, hamlet::v1::ROLE_MEMBER, "07195-K03", "hgv-ct-2"));

  // The province owns the admin units: a merger like July 2025's, made there,
  // must reach both towns while they are being crashed.
  const std::string reader_id = absl::StrCat("00000000-0000-4000-8000-", "000000000022");
  const std::string reader_token =
      AdminClient(province_->process()).Enroll(reader_id, hamlet::v1::ROLE_REPLICATION_NODE, "22", "auditor-22");
  {
    const std::string admin_id = "00000000-0000-4000-8000-0000000000ad";
    const std::string admin_token =
        AdminClient(province_->process()).Enroll(admin_id, hamlet::v1::ROLE_ADMIN, "22", "admin-22");
    Record minh_thanh;
    for (auto& [id, record] : PullAll(province_->address(), reader_id, reader_token, /*reference_only=*/true)) {
      if (record.has_admin_unit() && record.admin_unit().code() == "07138") minh_thanh = record;
    }
    ASSERT_FALSE(minh_thanh.id().empty());
    hamlet::v1::AdminUnit merged = minh_thanh.admin_unit();
    merged.set_valid_to("2025-06-30");
    merged.add_successor_codes("07135");
    hamlet::v1::Stamp stamp;
    stamp.set_physical_ms(absl::ToUnixMillis(absl::Now()));
    stamp.set_node(admin_id);
    auto change = sync::BuildChange(
        minh_thanh, merged,
        {hamlet::v1::AdminUnit::kValidToFieldNumber, hamlet::v1::AdminUnit::kSuccessorCodesFieldNumber}, stamp);
    ASSERT_TRUE(change.ok()) << change.status();
    hamlet::v1::PushRequest push;
    push.set_device_id(admin_id);
    absl::BitGen gen;
    push.set_batch_id(sync::NewUuid(gen));
    *push.add_changes() = *change;
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + admin_token);
    hamlet::v1::PushResponse pushed;
    const grpc::Status status =
        hamlet::v1::SyncService::NewStub(Channel(province_->address()))->Push(&context, push, &pushed);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(pushed.applied_records(), 1u);
  }

  // Chaos: the province and Quảng Yên's server are killed with SIGKILL at
  // random moments and started again a moment later.
  std::atomic<bool> chaos_on{true};
  std::atomic<int> kills{0};
  std::thread chaos([&] {
    std::mt19937 rng(std::random_device{}());
    while (chaos_on) {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(300, 900)(rng)));
      if (!chaos_on) break;
      Node& victim = rng() % 2 == 0 ? *province_ : *quang_yen;
      victim.Kill();
      ++kills;
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(50, 400)(rng)));
      victim.EnsureUp();
    }
  });

  std::set<std::string> expected;
  std::vector<std::string> sealed;
  // At least ten days, and on until the servers were crashed a few times.
  int days = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (days < 10 || (kills < 6 && absl::Now() < give_up)) {
    const int day = ++days;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (Phone& phone : phones) {
      for (const std::string& id : RecordADay(phone, day, &sealed)) expected.insert(id);
      // A phone that cannot reach its town keeps its outbox for the next day.
      field::FieldDevice::SyncOptions options;
      options.retry = {absl::Seconds(3), 2, absl::Milliseconds(50), absl::Milliseconds(200)};
      auto stub = hamlet::v1::SyncService::NewStub(Channel(phone.town->address()));
      (void)phone.device->Sync(*stub, options);
    }
  }
  chaos_on = false;
  chaos.join();
  EXPECT_GE(kills.load(), 6) << "the run was too short to crash enough";
  std::cout << "[ chaos    ] " << days << " days recorded on 4 phones; servers killed " << kills << " times\n";
  ASSERT_TRUE(province_->EnsureUp()) << province_->Log();
  ASSERT_TRUE(quang_yen->EnsureUp()) << quang_yen->Log();
  for (Phone& phone : phones) ASSERT_TRUE(Sync(phone, absl::Seconds(60)));

  // Both towns catch up by themselves.
  for (const Node* town : {quang_yen.get(), co_to.get()}) {
    const hamlet::v1::ReplicationStatus status = WaitForReplication(*town, CaughtUp, absl::Seconds(60));
    EXPECT_EQ(status.lag_records(), 0u) << status.DebugString() << town->Log();
    EXPECT_EQ(status.state(), hamlet::v1::REPLICATION_STATE_RUNNING) << status.DebugString();
    EXPECT_EQ(status.acked_seq(), status.last_seq());
    EXPECT_DOUBLE_EQ(status.lag_seconds(), 0);
  }

  // Every record at the province exactly once (PullAll fails on a repeat),
  // at the same state as in its town less what never leaves the town.
  std::map<std::string, Record> at_province = PullAll(province_->address(), reader_id, reader_token);
  // A town officer's device at each town, to read the town's own copies.
  struct Officer {
    const Node* town;
    std::string id;
    std::string token;
  };
  std::vector<Officer> officers;
  for (const auto& [town, code] : {std::pair<const Node*, std::string>{quang_yen.get(), "206"}, {co_to.get(), "207"}}) {
    const std::string id = absl::StrCat("00000000-0000-4000-8000-000000000", code);
    officers.push_back(
        {town, id, AdminClient(*ServerProcessOf(*town)).Enroll(id, hamlet::v1::ROLE_TOWN_OFFICER, code, "officer")});
  }
  std::set<std::string> town_records;
  for (const Officer& officer : officers) {
    for (auto& [id, record] : PullAll(officer.town->address(), officer.id, officer.token)) {
      if (record.has_admin_unit()) continue;
      town_records.insert(id);
      Record expected_state = record;
      ASSERT_TRUE(sync::PrepareForProvince(&expected_state)) << id;
      expected_state.clear_server_seq();
      auto it = at_province.find(id);
      ASSERT_NE(it, at_province.end()) << "record " << id << " never reached the province";
      Record got = it->second;
      got.clear_server_seq();
      EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(got, expected_state))
          << "province:\n"
          << got.DebugString() << "town:\n"
          << expected_state.DebugString();
    }
  }
  std::set<std::string> province_records;
  for (const auto& [id, record] : at_province) {
    if (record.has_admin_unit()) continue;
    province_records.insert(id);
    EXPECT_FALSE(record.has_informant_identity()) << id;
    EXPECT_NE(record.sensitivity(), hamlet::v1::SENSITIVITY_SEALED) << id;
    for (const auto& party : record.mediation_case().parties()) EXPECT_TRUE(party.name().empty()) << id;
    EXPECT_TRUE(record.household_registration().head().empty()) << id;
  }
  EXPECT_EQ(province_records, expected);
  EXPECT_EQ(town_records, expected);
  for (const std::string& id : sealed)
    EXPECT_EQ(at_province.count(id), 0u) << "sealed record " << id << " left its town";

  // No byte of a personal or sealed field anywhere in the province's files.
  // (RocksDB may compress its table files; the record-by-record checks above
  // do not depend on this scan.) Cô Tô's server, never restarted, still holds
  // the names in its log files: the scan would see them if they were there.
  EXPECT_GT(CountInFiles(co_to->data_dir(), kPartyCanary), 0) << "the scan cannot see names in a data dir";
  for (const char* canary : {kPartyCanary, kHeadCanary, kInformantCanary}) {
    EXPECT_EQ(CountInFiles(province_->data_dir(), canary), 0) << canary;
  }

  // The province's report is the sum of the towns' reports.
  uint32_t qy_villages = 0, ct_villages = 0, province_villages = 0;
  std::map<std::string, int64_t> sum = ReportFigures(*quang_yen, "206", &qy_villages);
  for (const auto& [metric, count] : ReportFigures(*co_to, "207", &ct_villages)) sum[metric] += count;
  const std::map<std::string, int64_t> province_report = ReportFigures(*province_, "22", &province_villages);
  EXPECT_EQ(province_report, sum);
  EXPECT_EQ(province_villages, qy_villages + ct_villages);
  EXPECT_EQ(province_report.at("mediation.cases"), 4 * days);

  // A village's November (days 10 and 21 fall in it: one or two of each record) at the
  // province: its small counts are withheld unless the town audience is asked for by name,
  // as the town withholds them from the province.
  const std::string village = phones[0].unit;
  const auto month = [&](const Node& node, hamlet::v1::ReportAudience audience) {
    return Report(node, village, "2026-11-01", "2026-11-30", audience);
  };
  const auto in_town = month(*quang_yen, hamlet::v1::REPORT_AUDIENCE_TOWN);
  const auto by_default = month(*province_, hamlet::v1::REPORT_AUDIENCE_UNSPECIFIED);
  const auto for_province = month(*quang_yen, hamlet::v1::REPORT_AUDIENCE_PROVINCE);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(by_default, for_province))
      << "province, by default:\n"
      << by_default.DebugString() << "town, for the province:\n"
      << for_province.DebugString();
  EXPECT_TRUE(
      google::protobuf::util::MessageDifferencer::Equals(month(*province_, hamlet::v1::REPORT_AUDIENCE_TOWN), in_town));
  int small = 0;
  for (const auto& figure : in_town.figures()) small += figure.count() > 0 && figure.count() < 3;
  EXPECT_GT(small, 0) << "the village's month has no small count to withhold:\n" << in_town.DebugString();
  EXPECT_TRUE(by_default.suppressed());

  // The merger made at the province reached both towns. (Read by a replication node: a Cô Tô
  // officer's device does not carry Quảng Yên's units.)
  for (const Officer& officer : officers) {
    const std::string reader = absl::StrCat(officer.id.substr(0, officer.id.size() - 3), "999");
    const std::string token = AdminClient(*ServerProcessOf(*officer.town))
                                  .Enroll(reader, hamlet::v1::ROLE_REPLICATION_NODE,
                                          officer.town == quang_yen.get() ? "206" : "207", "units");
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    bool arrived = false;
    while (!arrived && absl::Now() < deadline) {
      for (auto& [id, record] : PullAll(officer.town->address(), reader, token, /*reference_only=*/true)) {
        arrived = arrived || (record.admin_unit().code() == "07138" && record.admin_unit().valid_to() == "2025-06-30" &&
                              record.admin_unit().successor_codes_size() == 1);
      }
      if (!arrived) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    EXPECT_TRUE(arrived) << officer.town->Log();
  }
}

TEST_F(ReplicationE2eTest, PauseHoldsChangesBackAndResumeSendsThem) {
  ASSERT_TRUE(StartProvince()) << province_->Log();
  std::unique_ptr<Node> town = StartTown("quang-yen", "206");
  ASSERT_TRUE(town && town->up());
  Phone phone = NewPhone(*town, hamlet::v1::ROLE_MEMBER, "07132-K01", "hgv-1");

  auto admin = hamlet::v1::AdminService::NewStub(Channel(town->admin_address()));
  const auto call = [&](auto method, const auto& request, auto* response) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + town->admin_token());
    return ((*admin).*method)(&context, request, response);
  };
  hamlet::v1::PauseReplicationRequest pause;
  hamlet::v1::PauseReplicationResponse paused;
  EXPECT_EQ(call(&hamlet::v1::AdminService::Stub::PauseReplication, pause, &paused).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT)
      << "a pause needs a reason for the audit log";
  pause.set_reason("province maintenance");
  ASSERT_TRUE(call(&hamlet::v1::AdminService::Stub::PauseReplication, pause, &paused).ok());
  EXPECT_EQ(paused.status().state(), hamlet::v1::REPLICATION_STATE_PAUSED);

  std::vector<std::string> sealed;
  std::vector<std::string> ids = RecordADay(phone, 1, &sealed);
  ASSERT_TRUE(Sync(phone, absl::Seconds(20)));
  std::this_thread::sleep_for(std::chrono::seconds(1));
  hamlet::v1::ReplicationStatus status = ReplicationOf(*town);
  EXPECT_EQ(status.state(), hamlet::v1::REPLICATION_STATE_PAUSED);
  EXPECT_GE(status.lag_records(), ids.size()) << status.DebugString();
  EXPECT_GT(status.lag_seconds(), 0.5) << status.DebugString();

  // A restart keeps the pause.
  ASSERT_EQ(town->process().Stop(), 0);
  town->Kill();
  ASSERT_TRUE(town->EnsureUp()) << town->Log();
  EXPECT_EQ(ReplicationOf(*town).state(), hamlet::v1::REPLICATION_STATE_PAUSED);

  hamlet::v1::ResumeReplicationResponse resumed;
  ASSERT_TRUE(
      call(&hamlet::v1::AdminService::Stub::ResumeReplication, hamlet::v1::ResumeReplicationRequest(), &resumed).ok());
  status = WaitForReplication(*town, CaughtUp, absl::Seconds(20));
  EXPECT_EQ(status.lag_records(), 0u) << status.DebugString();
  EXPECT_EQ(status.state(), hamlet::v1::REPLICATION_STATE_RUNNING);

  // Both acts are in the audit log.
  hamlet::v1::ListAuditEntriesResponse audit;
  ASSERT_TRUE(
      call(&hamlet::v1::AdminService::Stub::ListAuditEntries, hamlet::v1::ListAuditEntriesRequest(), &audit).ok());
  std::set<std::string> actions;
  for (const auto& entry : audit.entries()) actions.insert(entry.action());
  EXPECT_EQ(actions.count("pause_replication"), 1u);
  EXPECT_EQ(actions.count("resume_replication"), 1u);
}

TEST_F(ReplicationE2eTest, AProvinceDownForAWhileIsCaughtUpAndHealthSaysSo) {
  ASSERT_TRUE(StartProvince()) << province_->Log();
  std::unique_ptr<Node> town = StartTown("quang-yen", "206");
  ASSERT_TRUE(town && town->up());
  Phone phone = NewPhone(*town, hamlet::v1::ROLE_MEMBER, "07132-K01", "hgv-1");

  province_->Kill();
  std::vector<std::string> sealed;
  for (int day = 1; day <= 3; ++day) RecordADay(phone, day, &sealed);
  ASSERT_TRUE(Sync(phone, absl::Seconds(20)));
  // The town works on; replication says it is failing, and why.
  hamlet::v1::ReplicationStatus status = WaitForReplication(
      *town, [](const auto& s) { return s.state() == hamlet::v1::REPLICATION_STATE_FAILING; }, absl::Seconds(20));
  EXPECT_EQ(status.state(), hamlet::v1::REPLICATION_STATE_FAILING) << status.DebugString();
  EXPECT_THAT(status.last_error(), ::testing::HasSubstr(province_->address()));
  EXPECT_GT(status.lag_records(), 0u);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // Health is refreshed every second.
  EXPECT_EQ(ReplicationHealth(*town), grpc::health::v1::HealthCheckResponse::NOT_SERVING);

  ASSERT_TRUE(province_->EnsureUp()) << province_->Log();
  status = WaitForReplication(*town, CaughtUp, absl::Seconds(60));
  EXPECT_EQ(status.lag_records(), 0u) << status.DebugString();
  EXPECT_EQ(status.state(), hamlet::v1::REPLICATION_STATE_RUNNING);
  EXPECT_GT(status.records_sent(), 0u);
  EXPECT_THAT(town->Log(), ::testing::HasSubstr("reachable again"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_EQ(ReplicationHealth(*town), grpc::health::v1::HealthCheckResponse::SERVING);
}

// A province restored from a backup has lost what it acknowledged after the
// backup; the town notices (its cursor is refused) and sends everything again.
TEST_F(ReplicationE2eTest, AProvinceRestoredFromBackupIsSentEverythingAgain) {
  ASSERT_TRUE(StartProvince()) << province_->Log();
  std::unique_ptr<Node> town = StartTown("quang-yen", "206");
  ASSERT_TRUE(town && town->up());
  Phone phone = NewPhone(*town, hamlet::v1::ROLE_MEMBER, "07132-K01", "hgv-1");
  const std::string reader_id = "00000000-0000-4000-8000-000000000022";
  const std::string reader_token =
      AdminClient(province_->process()).Enroll(reader_id, hamlet::v1::ROLE_REPLICATION_NODE, "22", "auditor-22");
  const auto caught_up = [&] { return WaitForReplication(*town, CaughtUp, absl::Seconds(30)).lag_records() == 0; };
  std::vector<std::string> sealed;
  std::set<std::string> ids;
  for (const std::string& id : RecordADay(phone, 1, &sealed)) ids.insert(id);
  ASSERT_TRUE(Sync(phone, absl::Seconds(20)));
  ASSERT_TRUE(caught_up());

  const std::string backup = dir_.Sub("province-backup");
  {
    AdminClient admin(province_->process());
    hamlet::v1::CreateBackupRequest request;
    request.set_directory(backup);
    auto context = admin.Context();  // Must outlive the stream.
    auto reader = admin.stub().CreateBackup(context.get(), request);
    hamlet::v1::CreateBackupResponse progress;
    while (reader->Read(&progress)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  for (const std::string& id : RecordADay(phone, 2, &sealed)) ids.insert(id);
  ASSERT_TRUE(Sync(phone, absl::Seconds(20)));
  ASSERT_TRUE(caught_up());

  // The province's disk is lost; it comes back from the backup.
  province_->Kill();
  std::filesystem::rename(province_->data_dir(), dir_.Sub("province-lost"));
  const pid_t restore = hamlet::testing::Spawn(
      {HAMLETD_PATH, "--tier=province", "--restore_from=" + backup, "--data_dir=" + province_->data_dir()},
      dir_.Sub("restore.log"));
  ASSERT_EQ(hamlet::testing::WaitExit(restore), 0) << ReadFile(dir_.Sub("restore.log"));
  ASSERT_TRUE(province_->EnsureUp()) << province_->Log();

  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::set<std::string> at_province;
  while (absl::Now() < deadline) {
    at_province.clear();
    for (const auto& [id, record] : PullAll(province_->address(), reader_id, reader_token)) {
      if (!record.has_admin_unit()) at_province.insert(id);
    }
    if (at_province == ids) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(at_province, ids);
  EXPECT_THAT(town->Log(), ::testing::HasSubstr("sending everything again"));
}

// A town server files only its own town's records and enrols only its own
// people; the province's copies are settled at their towns.
TEST_F(ReplicationE2eTest, EachServerKeepsToItsOwnUnits) {
  ASSERT_TRUE(StartProvince()) << province_->Log();
  std::unique_ptr<Node> town = StartTown("quang-yen", "206");
  ASSERT_TRUE(town && town->up());
  {
    AdminClient admin(town->process());
    hamlet::v1::EnrollDeviceRequest request;
    request.set_person_id("hgv-ct");
    request.set_role(hamlet::v1::ROLE_MEMBER);
    request.set_unit_code("07192");  // Cô Tô's, not Quảng Yên's.
    hamlet::v1::EnrollDeviceResponse response;
    const grpc::Status status = admin.stub().EnrollDevice(admin.Context().get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), ::testing::HasSubstr("not 206 or a unit within it"));
  }
  // A town officer may write teams anywhere in the town, but not in another town.
  const std::string officer = "00000000-0000-4000-8000-0000000000a1";
  const std::string token = AdminClient(town->process()).Enroll(officer, hamlet::v1::ROLE_TOWN_OFFICER, "206", "o");
  hamlet::v1::Stamp stamp;
  stamp.set_physical_ms(absl::ToUnixMillis(absl::Now()));
  stamp.set_node(officer);
  absl::BitGen gen;
  hamlet::v1::PushRequest push;
  push.set_device_id(officer);
  push.set_batch_id(sync::NewUuid(gen));
  *push.add_changes() = hamlet::testing::NewCase(sync::NewUuid(gen), "07192", stamp);
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + token);
  hamlet::v1::PushResponse pushed;
  const grpc::Status status = hamlet::v1::SyncService::NewStub(Channel(town->address()))->Push(&context, push, &pushed);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("unit 07192 is not in 206"));

  // At the province, a town has one replication node: a second enrolment for 206 is refused
  // (it could write the town's records too) until the first is revoked; the town's own node may
  // be enrolled again for a new token.
  AdminClient admin(province_->process());
  {
    hamlet::v1::GetServerStatsResponse stats;
    ASSERT_TRUE(AdminClient(town->process())
                    .stub()
                    .GetServerStats(AdminClient(town->process()).Context().get(), {}, &stats)
                    .ok());
    hamlet::v1::EnrollDeviceRequest second;
    second.set_device_id("00000000-0000-4000-8000-000000000b06");
    second.set_person_id("another-206");
    second.set_role(hamlet::v1::ROLE_REPLICATION_NODE);
    second.set_unit_code("206");
    hamlet::v1::EnrollDeviceResponse response;
    const grpc::Status refused = admin.stub().EnrollDevice(admin.Context().get(), second, &response);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(refused.error_message(),
                ::testing::HasSubstr(absl::StrCat("already has a replication node, ", stats.server_id())));
    hamlet::v1::EnrollDeviceRequest again = second;
    again.set_device_id(stats.server_id());
    EXPECT_TRUE(admin.stub().EnrollDevice(admin.Context().get(), again, &response).ok());
    EXPECT_TRUE(admin.Revoke(stats.server_id(), "replaced").ok());
    EXPECT_TRUE(admin.stub().EnrollDevice(admin.Context().get(), second, &response).ok())
        << "once the first is revoked, another may take its place";
  }

  // At the province, a conflict is not settled on the copy.
  hamlet::v1::AdminServiceResolveConflictResponse resolved;
  const grpc::Status resolve = admin.stub().ResolveConflict(admin.Context().get(), {}, &resolved);
  EXPECT_EQ(resolve.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(resolve.error_message(), ::testing::HasSubstr("resolved at the record's town server"));
}

// Not a test: the replication-lag figures of docs/BENCHMARKS.md. Devices push
// batches of new cases to a town for HAMLET_LAG_SECONDS (default 30), as fast
// as the town takes them or at HAMLET_LAG_RATE records/s in all; the town's
// replication lag is sampled every 250 ms. Run with
// --gtest_also_run_disabled_tests.
TEST_F(ReplicationE2eTest, DISABLED_LagUnderSustainedPushLoad) {
  const char* env_seconds = std::getenv("HAMLET_LAG_SECONDS");
  const int seconds = env_seconds != nullptr ? std::atoi(env_seconds) : 30;
  const char* env_rate = std::getenv("HAMLET_LAG_RATE");
  const double rate = env_rate != nullptr ? std::atof(env_rate) : 0;
  constexpr int kPushers = 8;
  constexpr int kBatch = 50;
  ASSERT_TRUE(StartProvince()) << province_->Log();
  std::unique_ptr<Node> town = StartTown("quang-yen", "206");
  ASSERT_TRUE(town && town->up());
  std::vector<std::pair<std::string, std::string>> devices;  // id, token
  {
    AdminClient admin(town->process());
    for (int i = 0; i < kPushers; ++i) {
      const std::string id = absl::StrFormat("00000000-0000-4000-8000-%012d", i + 1);
      devices.emplace_back(id, admin.Enroll(id, hamlet::v1::ROLE_MEMBER, "07132", absl::StrCat("hgv-", i)));
    }
  }
  std::atomic<bool> loading{true};
  std::atomic<uint64_t> pushed_records{0}, failed{0};
  std::vector<std::thread> pushers;
  for (const auto& [id, token] : devices) {
    pushers.emplace_back([&, id = id, token = token] {
      auto stub = hamlet::v1::SyncService::NewStub(Channel(town->address()));
      absl::BitGen gen;
      // Each pusher's share of the rate, as the time one batch may take.
      const absl::Duration period = rate > 0 ? absl::Seconds(kPushers * kBatch / rate) : absl::ZeroDuration();
      absl::Time next = absl::Now();
      while (loading) {
        if (period > absl::ZeroDuration()) {
          absl::SleepFor(next - absl::Now());
          next += period;
        }
        hamlet::v1::PushRequest request;
        request.set_device_id(id);
        request.set_batch_id(sync::NewUuid(gen));
        for (int r = 0; r < kBatch; ++r) {
          hamlet::v1::Stamp stamp;
          stamp.set_physical_ms(absl::ToUnixMillis(absl::Now()));
          stamp.set_logical(static_cast<uint32_t>(r));
          stamp.set_node(id);
          Record c = hamlet::testing::NewCase(sync::NewUuid(gen), "07132-K01", stamp,
                                              std::string(900, 'x'));  // About 1 KB a record.
          c.set_author(id);
          *request.add_changes() = std::move(c);
        }
        grpc::ClientContext context;
        context.AddMetadata("authorization", "Bearer " + token);
        hamlet::v1::PushResponse response;
        if (stub->Push(&context, request, &response).ok()) {
          pushed_records += kBatch;
        } else {
          ++failed;
        }
      }
    });
  }
  std::vector<double> lag_seconds;
  uint64_t max_lag_records = 0;
  const absl::Time start = absl::Now();
  while (absl::Now() - start < absl::Seconds(seconds)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    const hamlet::v1::ReplicationStatus status = ReplicationOf(*town);
    lag_seconds.push_back(status.lag_seconds());
    max_lag_records = std::max(max_lag_records, status.lag_records());
  }
  loading = false;
  for (auto& t : pushers) t.join();
  const double load_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const absl::Time drain_start = absl::Now();
  hamlet::v1::ReplicationStatus status;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    status = ReplicationOf(*town);
  } while (status.lag_records() > 0 && absl::Now() - drain_start < absl::Minutes(5));
  const double drain = absl::ToDoubleSeconds(absl::Now() - drain_start);
  EXPECT_EQ(status.lag_records(), 0u);
  EXPECT_EQ(failed.load(), 0u);
  std::sort(lag_seconds.begin(), lag_seconds.end());
  const auto at = [&](double q) { return lag_seconds[static_cast<size_t>(q * (lag_seconds.size() - 1))]; };
  std::cout << absl::StrFormat(
      "[ lag      ] %d pushers x %d records (~1 KB) for %.0f s: %.0f records/s pushed to the town (%llu in all)\n"
      "[ lag      ] replication lag, sampled every 250 ms: p50 %.2f s, p90 %.2f s, max %.2f s; "
      "at most %llu records behind\n"
      "[ lag      ] caught up %.2f s after the load stopped (%llu records sent up)\n",
      kPushers, kBatch, load_seconds, pushed_records / load_seconds,
      static_cast<unsigned long long>(pushed_records.load()), at(0.5), at(0.9), lag_seconds.back(),
      static_cast<unsigned long long>(max_lag_records), drain, static_cast<unsigned long long>(status.records_sent()));
}

// The metrics endpoint speaks the Prometheus text format, as promtool checks.
TEST_F(ReplicationE2eTest, MetricsPassPromtoolAndCountWhatHappened) {
  ASSERT_TRUE(StartProvince()) << province_->Log();
  std::unique_ptr<Node> town = StartTown("quang-yen", "206");
  ASSERT_TRUE(town && town->up());
  Phone phone = NewPhone(*town, hamlet::v1::ROLE_MEMBER, "07132-K01", "hgv-1");
  std::vector<std::string> sealed;
  RecordADay(phone, 1, &sealed);
  ASSERT_TRUE(Sync(phone, absl::Seconds(20)));

  const std::string address = town->process().metrics_address();
  const size_t colon = address.rfind(':');
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(address.substr(colon + 1), &port)) << address;
  httplib::Client client(address.substr(0, colon), port);
  auto response = client.Get("/metrics");
  ASSERT_TRUE(response) << "no answer from " << address;
  ASSERT_EQ(response->status, 200);
  const std::string text = response->body;
  EXPECT_THAT(text, ::testing::HasSubstr("hamlet_rpcs_total{code=\"OK\",method=\"Push\"} 1"));
  EXPECT_THAT(text, ::testing::HasSubstr("hamlet_rpc_duration_seconds_count{method=\"Push\"} 1"));
  EXPECT_THAT(text, ::testing::HasSubstr("hamlet_replication_up"));
  EXPECT_THAT(text, ::testing::HasSubstr("hamlet_replication_lag_records"));
  EXPECT_THAT(text, ::testing::HasSubstr("hamlet_open_conflicts 0"));

  const std::string file = dir_.Sub("metrics.txt");
  std::ofstream(file) << text;
  const std::string out = dir_.Sub("promtool.out");
  const pid_t pid = hamlet::testing::Spawn({"/bin/sh", "-c", "promtool check metrics < " + file}, out);
  ASSERT_GT(pid, 0);
  EXPECT_EQ(hamlet::testing::WaitExit(pid), 0) << ReadFile(out);
  EXPECT_EQ(ReadFile(out), "") << "promtool found problems";
}

}  // namespace
}  // namespace hamlet
