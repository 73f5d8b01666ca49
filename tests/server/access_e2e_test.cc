// Who may see what, end to end: every RPC of both services, for every role,
// on records of its own commune and of another, against the real hamletd.
// The expectations below restate docs/DOMAIN.md ("Who may see what") on their own;
// they are not derived from sync/access.cc, so a wrong row there fails here.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_format.h"
#include "hamlet/v1/admin.grpc.pb.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "sync/clock.h"
#include "sync/merge.h"
#include "tests/support/admin.h"
#include "tests/support/records.h"
#include "tests/support/server_process.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::ServerProcess;
using hamlet::v1::Record;
using hamlet::v1::Role;

int64_t NowMs() { return sync::SystemClock::Get()->NowMs(); }
std::string Uuid(int a, int b) { return absl::StrFormat("00000000-%04d-4000-8000-%012d", a, b); }

enum class Side { kOwn, kOther };
const char* Village(Side s) { return s == Side::kOwn ? "07132-K01" : "07135-K01"; }

struct Seeded {
  std::string type;  // Record body field name.
  Side side;
  bool referred = false;  // A mediation case transferred to the commune police.
  std::string id;
};

// What each role may do with a record made by someone else, per docs/DOMAIN.md.
// Every role sits in commune 07132 or at the town; "own" records are in
// village 07132-K01, "other" in 07135-K01.
struct Expect {
  bool read;
  bool write;
};

Expect Expected(Role role, const Seeded& r) {
  const bool own = r.side == Side::kOwn;
  const std::string& t = r.type;
  switch (role) {
    case hamlet::v1::ROLE_MEMBER:
    case hamlet::v1::ROLE_TEAM_LEADER: {
      const bool leader = role == hamlet::v1::ROLE_TEAM_LEADER;
      if (t == "mediation_case" || t == "household_registration") return {own, own};
      if (t == "security_tip") return {own && leader, false};  // Members read only tips they wrote.
      if (t == "team") return {true, own && leader};
      return {false, false};  // Informant identity.
    }
    case hamlet::v1::ROLE_COMMUNE_POLICE:
      if (t == "mediation_case") return {own && r.referred, false};
      if (t == "security_tip" || t == "informant_identity") return {own, own};
      if (t == "household_registration") return {own, false};
      if (t == "team") return {true, own};
      return {false, false};
    case hamlet::v1::ROLE_COMMUNE_JUSTICE:
      if (t == "mediation_case") return {own, false};
      if (t == "team") return {true, own};
      return {false, false};
    case hamlet::v1::ROLE_TOWN_OFFICER:
      if (t == "informant_identity") return {false, false};
      return {true, t == "team"};
    case hamlet::v1::ROLE_PROVINCE_OFFICER:
      if (t == "mediation_case" || t == "security_tip" || t == "team") return {true, false};
      return {false, false};  // Households: counts only; informants: never.
    case hamlet::v1::ROLE_REPLICATION_NODE:
      return {t != "informant_identity", t != "informant_identity"};
    default:  // Admins manage devices, not records.
      return {false, false};
  }
}

// May the role create a record of this type in its own unit, as its author?
bool ExpectedCreate(Role role, const std::string& type) {
  switch (role) {
    case hamlet::v1::ROLE_MEMBER:
      return type == "mediation_case" || type == "security_tip" || type == "informant_identity" ||
             type == "household_registration";
    case hamlet::v1::ROLE_TEAM_LEADER:
      return type == "mediation_case" || type == "security_tip" || type == "household_registration" || type == "team";
    case hamlet::v1::ROLE_COMMUNE_POLICE:
      return type == "security_tip" || type == "informant_identity" || type == "team";
    case hamlet::v1::ROLE_COMMUNE_JUSTICE:
      return type == "team";
    case hamlet::v1::ROLE_TOWN_OFFICER:
      return type == "team";
    case hamlet::v1::ROLE_REPLICATION_NODE:
      return type != "informant_identity";
    default:
      return false;
  }
}

bool SeesWholeServer(Role role) {
  return role == hamlet::v1::ROLE_TOWN_OFFICER || role == hamlet::v1::ROLE_PROVINCE_OFFICER ||
         role == hamlet::v1::ROLE_REPLICATION_NODE;
}

const std::vector<std::string> kTypes = {"mediation_case", "security_tip", "informant_identity",
                                         "household_registration", "team"};

// A plain text field of each type, edited to test writes.
int TextField(const std::string& type) {
  if (type == "mediation_case") return hamlet::v1::MediationCase::kSummaryFieldNumber;
  if (type == "security_tip") return hamlet::v1::SecurityTip::kSummaryFieldNumber;
  if (type == "informant_identity") return hamlet::v1::InformantIdentity::kNameFieldNumber;
  if (type == "household_registration") return hamlet::v1::HouseholdRegistration::kHeadFieldNumber;
  return hamlet::v1::Team::kNameFieldNumber;
}

Record NewRecord(const std::string& id, const std::string& type, const std::string& unit, const std::string& author,
                 const std::string& text, const std::string& node) {
  Record r;
  r.set_id(id);
  r.set_unit_code(unit);
  r.set_author(author);
  r.mutable_create_time()->set_seconds(NowMs() / 1000);
  r.set_sensitivity(type == "informant_identity" ? hamlet::v1::SENSITIVITY_SEALED : hamlet::v1::SENSITIVITY_NORMAL);
  auto* body = r.GetReflection()->MutableMessage(&r, Record::descriptor()->FindFieldByName(type));
  const auto* text_field = body->GetDescriptor()->FindFieldByNumber(TextField(type));
  body->GetReflection()->SetString(body, text_field, text);
  sync::SetFieldStamp(&r, TextField(type), MakeStamp(NowMs(), 0, node));
  return r;
}

class Device {
 public:
  Device(const ServerProcess& server, const std::string& id, const std::string& token)
      : id_(id),
        token_(token),
        sync_(hamlet::v1::SyncService::NewStub(
            grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()))),
        admin_(hamlet::v1::AdminService::NewStub(
            grpc::CreateChannel(server.admin_address(), grpc::InsecureChannelCredentials()))) {}

  std::unique_ptr<grpc::ClientContext> Context() const {
    auto context = std::make_unique<grpc::ClientContext>();
    if (!token_.empty()) context->AddMetadata("authorization", "Bearer " + token_);
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return context;
  }
  grpc::Status Push(std::vector<Record> changes) {
    hamlet::v1::PushResponse response;
    return sync_->Push(Context().get(), Batch(std::move(changes)), &response);
  }
  // A new batch of `changes`, with a batch id of its own.
  hamlet::v1::PushRequest Batch(std::vector<Record> changes) {
    hamlet::v1::PushRequest request;
    request.set_device_id(id_);
    request.set_batch_id(Uuid(9999, ++batches_ + 1000 * static_cast<int>(id_.back())));
    for (Record& c : changes) *request.add_changes() = std::move(c);
    return request;
  }
  grpc::Status Pull(const std::string& scope, std::vector<Record>* out) {
    std::string cursor;
    while (true) {
      hamlet::v1::PullRequest request;
      request.set_device_id(id_);
      request.set_scope_unit_code(scope);
      request.set_cursor(cursor);
      hamlet::v1::PullResponse response;
      grpc::Status status = sync_->Pull(Context().get(), request, &response);
      if (!status.ok()) return status;
      for (const Record& r : response.records()) out->push_back(r);
      cursor = response.next_cursor();
      if (response.remaining() == 0) return status;
    }
  }
  const std::string& id() const { return id_; }
  hamlet::v1::SyncService::Stub& sync() { return *sync_; }
  hamlet::v1::AdminService::Stub& admin() { return *admin_; }

 private:
  std::string id_;
  std::string token_;
  std::unique_ptr<hamlet::v1::SyncService::Stub> sync_;
  std::unique_ptr<hamlet::v1::AdminService::Stub> admin_;
  int batches_ = 0;
};

class AccessE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new hamlet::testing::TempDir();
    server_ = ServerProcess::Start(dir_->Sub("data")).release();
    ASSERT_NE(server_, nullptr);
    hamlet::testing::AdminClient admin(*server_);
    // Records of every type in both communes, written by a replication node.
    const std::string seeder_id = Uuid(1, 1);
    Device seeder(*server_, seeder_id, admin.Enroll(seeder_id, hamlet::v1::ROLE_REPLICATION_NODE, "206", "seeder"));
    seeded_ = new std::vector<Seeded>();
    int n = 0;
    std::vector<Record> records;
    for (const std::string& type : kTypes) {
      for (Side side : {Side::kOwn, Side::kOther}) {
        Seeded s{type, side, false, Uuid(2, ++n)};
        Record record = NewRecord(s.id, type, Village(side), "author-x", "Nguyễn Văn Mật", "seeder");
        seeded_->push_back(s);
        if (type != "informant_identity") {
          records.push_back(std::move(record));
          continue;
        }
        // Informant identities never reach a replication node: each commune's
        // police records its own.
        const std::string police_id = Uuid(1, 10 + n);
        Device police(*server_, police_id,
                      admin.Enroll(police_id, hamlet::v1::ROLE_COMMUNE_POLICE, side == Side::kOwn ? "07132" : "07135",
                                   "author-x"));
        const grpc::Status pushed = police.Push({record});
        ASSERT_TRUE(pushed.ok()) << pushed.error_message();
      }
    }
    Seeded referred{"mediation_case", Side::kOwn, true, Uuid(2, ++n)};
    Record referred_case =
        NewRecord(referred.id, "mediation_case", Village(Side::kOwn), "author-x", "chuyển công an", "seeder");
    referred_case.mutable_mediation_case()->set_transferred_to(hamlet::v1::TRANSFER_TARGET_COMMUNE_POLICE);
    sync::SetFieldStamp(&referred_case, hamlet::v1::MediationCase::kTransferredToFieldNumber,
                        MakeStamp(NowMs(), 0, "seeder"));
    auto* party = referred_case.mutable_mediation_case()->add_parties();
    party->set_id("p1");
    party->set_name("Trần Thị Bí Mật");
    party->set_address("Khu 1");
    hamlet::v1::FieldStamp fs;
    fs.set_field(hamlet::v1::MediationCase::kPartiesFieldNumber);
    fs.set_key("p1");
    *fs.mutable_stamp() = MakeStamp(NowMs(), 0, "seeder");
    sync::PutFieldStamp(&referred_case, fs);
    records.push_back(referred_case);
    seeded_->push_back(referred);
    const grpc::Status pushed = seeder.Push(records);
    ASSERT_TRUE(pushed.ok()) << pushed.error_message();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete seeded_;
    delete dir_;
  }

  std::unique_ptr<Device> DeviceFor(Role role, int n) {
    const std::string id = Uuid(3, n);
    const std::string unit = role == hamlet::v1::ROLE_MEMBER || role == hamlet::v1::ROLE_TEAM_LEADER ||
                                     role == hamlet::v1::ROLE_COMMUNE_POLICE || role == hamlet::v1::ROLE_COMMUNE_JUSTICE
                                 ? "07132"
                                 : "206";
    hamlet::testing::AdminClient admin(*server_);
    return std::make_unique<Device>(*server_, id, admin.Enroll(id, role, unit, absl::StrCat("person-", n)));
  }

  static hamlet::testing::TempDir* dir_;
  static ServerProcess* server_;
  static std::vector<Seeded>* seeded_;
};

hamlet::testing::TempDir* AccessE2eTest::dir_ = nullptr;
ServerProcess* AccessE2eTest::server_ = nullptr;
std::vector<Seeded>* AccessE2eTest::seeded_ = nullptr;

const google::protobuf::ServiceDescriptor* SyncServiceDescriptor() {
  return hamlet::v1::PushRequest::descriptor()->file()->FindServiceByName("SyncService");
}
const google::protobuf::ServiceDescriptor* AdminServiceDescriptor() {
  return hamlet::v1::EnrollDeviceRequest::descriptor()->file()->FindServiceByName("AdminService");
}

const std::vector<Role> kRoles = {hamlet::v1::ROLE_MEMBER,         hamlet::v1::ROLE_TEAM_LEADER,
                                  hamlet::v1::ROLE_COMMUNE_POLICE, hamlet::v1::ROLE_COMMUNE_JUSTICE,
                                  hamlet::v1::ROLE_TOWN_OFFICER,   hamlet::v1::ROLE_PROVINCE_OFFICER,
                                  hamlet::v1::ROLE_ADMIN,          hamlet::v1::ROLE_REPLICATION_NODE};

// Every method of both services refuses a call without a token, whatever the
// request. Taken from the descriptors: a new RPC is covered without a change here.
TEST_F(AccessE2eTest, EveryRpcRefusesCallsWithoutAValidToken) {
  for (const auto* service : {SyncServiceDescriptor(), AdminServiceDescriptor()}) {
    const std::string address = service == AdminServiceDescriptor() ? server_->admin_address() : server_->address();
    grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    for (int i = 0; i < service->method_count(); ++i) {
      const std::string method = absl::StrCat("/", service->full_name(), "/", service->method(i)->name());
      for (const std::string& token :
           {std::string(), std::string("Bearer hmt_not-a-real-token"), std::string("Basic dXNlcjpwYXNz")}) {
        SCOPED_TRACE(method + " with \"" + token + "\"");
        grpc::ClientContext context;
        if (!token.empty()) context.AddMetadata("authorization", token);
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        grpc::ByteBuffer empty_request(nullptr, 0);
        grpc::ByteBuffer response;
        grpc::Status status;
        if (service->method(i)->server_streaming()) {
          grpc::CompletionQueue cq;
          auto call = stub.PrepareCall(&context, method, &cq);
          call->StartCall(reinterpret_cast<void*>(1));
          void* tag;
          bool ok;
          cq.Next(&tag, &ok);
          grpc::Slice slice;
          grpc::ByteBuffer request(&slice, 0);
          call->Write(request, reinterpret_cast<void*>(2));
          cq.Next(&tag, &ok);
          call->WritesDone(reinterpret_cast<void*>(3));
          cq.Next(&tag, &ok);
          call->Finish(&status, reinterpret_cast<void*>(4));
          while (cq.Next(&tag, &ok) && tag != reinterpret_cast<void*>(4)) {
          }
          cq.Shutdown();
          while (cq.Next(&tag, &ok)) {
          }
        } else {
          std::mutex mu;
          std::condition_variable done_cv;
          bool done = false;
          stub.UnaryCall(&context, method, grpc::StubOptions(), &empty_request, &response, [&](grpc::Status s) {
            std::lock_guard<std::mutex> lock(mu);
            status = s;
            done = true;
            done_cv.notify_one();
          });
          std::unique_lock<std::mutex> lock(mu);
          done_cv.wait(lock, [&] { return done; });
        }
        EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
      }
    }
  }
}

// Each role: which records a pull returns, which edits a push takes, which
// creations, which scopes; and that the admin service is for admins only.
TEST_F(AccessE2eTest, EveryRoleGetsExactlyWhatDomainMdAllows) {
  // Every RPC must have its expectations here.
  const std::set<std::string> covered = {"hamlet.v1.SyncService.Push",
                                         "hamlet.v1.SyncService.Pull",
                                         "hamlet.v1.SyncService.Watch",
                                         "hamlet.v1.SyncService.ResolveConflict",
                                         "hamlet.v1.AdminService.EnrollDevice",
                                         "hamlet.v1.AdminService.RevokeDevice",
                                         "hamlet.v1.AdminService.ListDevices",
                                         "hamlet.v1.AdminService.GetServerStats",
                                         "hamlet.v1.AdminService.ListConflicts",
                                         "hamlet.v1.AdminService.ResolveConflict",
                                         "hamlet.v1.AdminService.ListAuditEntries",
                                         "hamlet.v1.AdminService.CreateBackup",
                                         "hamlet.v1.AdminService.VerifyBackups",
                                         "hamlet.v1.AdminService.GetReport",
                                         "hamlet.v1.AdminService.GetReplicationStatus",
                                         "hamlet.v1.AdminService.PauseReplication",
                                         "hamlet.v1.AdminService.ResumeReplication",
                                         "hamlet.v1.AdminService.ImportBundle",
                                         "hamlet.v1.AdminService.ExportBundle"};
  for (const auto* service : {SyncServiceDescriptor(), AdminServiceDescriptor()}) {
    for (int i = 0; i < service->method_count(); ++i) {
      EXPECT_EQ(covered.count(service->method(i)->full_name()), 1u)
          << service->method(i)->full_name() << " has no access expectations in this test";
    }
  }

  int n = 0;
  int unexpected_ok = 0;
  for (Role role : kRoles) {
    SCOPED_TRACE(hamlet::v1::Role_Name(role));
    auto device = DeviceFor(role, ++n);

    // Pull: exactly the readable records, nothing hidden leaks.
    std::vector<Record> pulled;
    const grpc::Status pull = device->Pull("", &pulled);
    if (role == hamlet::v1::ROLE_ADMIN) {
      EXPECT_EQ(pull.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    } else {
      ASSERT_TRUE(pull.ok()) << pull.error_message();
    }
    std::map<std::string, const Record*> by_id;
    for (const Record& r : pulled) by_id[r.id()] = &r;
    for (const Seeded& s : *seeded_) {
      const bool visible = by_id.count(s.id) > 0;
      // A pull of "" covers the own commune, or everything for town-level roles.
      const bool in_scope = s.side == Side::kOwn || SeesWholeServer(role);
      EXPECT_EQ(visible, Expected(role, s).read && in_scope)
          << s.type << (s.side == Side::kOwn ? " own" : " other") << (s.referred ? " referred" : "");
      if (visible && role == hamlet::v1::ROLE_PROVINCE_OFFICER) {
        for (const auto& party : by_id[s.id]->mediation_case().parties()) {
          EXPECT_EQ(party.name(), "") << "a party's name reached the province";
          EXPECT_EQ(party.address(), "");
        }
      }
    }
    for (const Record& r : pulled) {
      if (r.has_informant_identity()) {
        EXPECT_EQ(role, hamlet::v1::ROLE_COMMUNE_POLICE);
      }
    }

    // Scopes: another commune only for roles that see the whole server.
    std::vector<Record> other;
    const grpc::Status other_pull = device->Pull("07135", &other);
    EXPECT_EQ(other_pull.ok(), SeesWholeServer(role)) << other_pull.error_message();
    if (!other_pull.ok()) {
      EXPECT_EQ(other_pull.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    }
    {
      auto context = device->Context();
      hamlet::v1::WatchRequest request;
      request.set_device_id(device->id());
      request.set_scope_unit_code("07135");
      auto reader = device->sync().Watch(context.get(), request);
      if (SeesWholeServer(role)) {
        context->TryCancel();
      }
      hamlet::v1::WatchResponse message;
      while (reader->Read(&message)) {
      }
      const grpc::Status watch = reader->Finish();
      if (!SeesWholeServer(role)) {
        EXPECT_EQ(watch.error_code(), grpc::StatusCode::PERMISSION_DENIED);
      }
    }

    // Push: an edit of each seeded record, alone in its batch.
    for (const Seeded& s : *seeded_) {
      Record base = NewRecord(s.id, s.type, Village(s.side), "author-x", "", "x");
      Record edit = sync::EmptyChangeOf(base);
      edit.clear_create_time();  // Fixed at creation; a change need not repeat it.
      auto* body = sync::MutableRecordBody(&edit);
      body->GetReflection()->SetString(body, body->GetDescriptor()->FindFieldByNumber(TextField(s.type)),
                                       absl::StrCat("edited by ", hamlet::v1::Role_Name(role)));
      sync::SetFieldStamp(&edit, TextField(s.type), MakeStamp(NowMs(), 0, device->id()));
      const grpc::Status pushed = device->Push({edit});
      const bool allowed = Expected(role, s).write;
      EXPECT_EQ(pushed.ok(), allowed) << "edit " << s.type << (s.side == Side::kOwn ? " own" : " other") << ": "
                                      << pushed.error_message();
      if (!allowed) {
        EXPECT_EQ(pushed.error_code(), grpc::StatusCode::PERMISSION_DENIED);
        EXPECT_THAT(pushed.error_message(), ::testing::HasSubstr(s.id));
      }
      if (pushed.ok() && !allowed) ++unexpected_ok;
    }
    // Push: creating records of each type in its own unit, as their author.
    for (const std::string& type : kTypes) {
      const std::string unit = role == hamlet::v1::ROLE_MEMBER || role == hamlet::v1::ROLE_TEAM_LEADER ||
                                       role == hamlet::v1::ROLE_COMMUNE_POLICE ||
                                       role == hamlet::v1::ROLE_COMMUNE_JUSTICE
                                   ? "07132-K02"
                                   : "206";
      const std::string village = unit == "206" ? "07132-K02" : unit;
      Record created = NewRecord(Uuid(4, n * 10 + static_cast<int>(&type - &kTypes[0])), type, village,
                                 absl::StrCat("person-", n), "mới", device->id());
      const grpc::Status pushed = device->Push({created});
      EXPECT_EQ(pushed.ok(), ExpectedCreate(role, type)) << "create " << type << ": " << pushed.error_message();
      if (pushed.ok() && !ExpectedCreate(role, type)) ++unexpected_ok;
    }

    // ResolveConflict: refused outright for roles without authority.
    {
      hamlet::v1::ResolveConflictRequest request;
      request.set_device_id(device->id());
      request.set_request_id(Uuid(5, n));
      request.set_record_id((*seeded_)[0].id);
      request.set_field(9);
      request.set_resolver("someone");
      request.mutable_value()->mutable_mediation_case()->set_status(hamlet::v1::MEDIATION_STATUS_RECEIVED);
      hamlet::v1::ResolveConflictResponse response;
      const grpc::Status status = device->sync().ResolveConflict(device->Context().get(), request, &response);
      const bool may = role == hamlet::v1::ROLE_TEAM_LEADER || role == hamlet::v1::ROLE_COMMUNE_POLICE ||
                       role == hamlet::v1::ROLE_COMMUNE_JUSTICE || role == hamlet::v1::ROLE_TOWN_OFFICER ||
                       role == hamlet::v1::ROLE_ADMIN;
      if (!may) {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
      } else {
        // Allowed to try; the record has no conflict (or is out of reach).
        EXPECT_TRUE(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                    status.error_code() == grpc::StatusCode::PERMISSION_DENIED)
            << status.error_message();
      }
      EXPECT_FALSE(status.ok());
    }

    // The admin service: admins only.
    {
      const bool admin = role == hamlet::v1::ROLE_ADMIN;
      const auto expect_admin_only = [&](const grpc::Status& status, const char* method) {
        if (admin) {
          EXPECT_NE(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << method;
          EXPECT_NE(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << method;
        } else {
          EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << method;
          if (status.ok()) ++unexpected_ok;
        }
      };
      hamlet::v1::EnrollDeviceResponse enrolled;
      hamlet::v1::EnrollDeviceRequest enroll;
      enroll.set_person_id("intruder");
      enroll.set_role(hamlet::v1::ROLE_ADMIN);
      enroll.set_unit_code("206");
      expect_admin_only(device->admin().EnrollDevice(device->Context().get(), enroll, &enrolled), "EnrollDevice");
      hamlet::v1::RevokeDeviceRequest revoke;
      revoke.set_device_id(Uuid(1, 1));
      revoke.set_reason(admin ? "" : "takeover");  // An admin's empty reason is INVALID_ARGUMENT.
      hamlet::v1::RevokeDeviceResponse revoked;
      expect_admin_only(device->admin().RevokeDevice(device->Context().get(), revoke, &revoked), "RevokeDevice");
      hamlet::v1::ListDevicesResponse devices;
      expect_admin_only(device->admin().ListDevices(device->Context().get(), {}, &devices), "ListDevices");
      hamlet::v1::GetServerStatsResponse stats;
      expect_admin_only(device->admin().GetServerStats(device->Context().get(), {}, &stats), "GetServerStats");
      hamlet::v1::ListConflictsResponse conflicts;
      expect_admin_only(device->admin().ListConflicts(device->Context().get(), {}, &conflicts), "ListConflicts");
      hamlet::v1::AdminServiceResolveConflictResponse resolved;
      expect_admin_only(device->admin().ResolveConflict(device->Context().get(), {}, &resolved), "ResolveConflict");
      hamlet::v1::ListAuditEntriesResponse audit;
      expect_admin_only(device->admin().ListAuditEntries(device->Context().get(), {}, &audit), "ListAuditEntries");
      hamlet::v1::GetReportRequest report_request;
      report_request.set_unit_code("206");
      report_request.set_from_date("2012-01-01");
      report_request.set_to_date("2017-08-24");
      hamlet::v1::GetReportResponse report;
      expect_admin_only(device->admin().GetReport(device->Context().get(), report_request, &report), "GetReport");
      hamlet::v1::GetReplicationStatusResponse replication;
      expect_admin_only(device->admin().GetReplicationStatus(device->Context().get(), {}, &replication),
                        "GetReplicationStatus");
      hamlet::v1::PauseReplicationRequest pause;
      pause.set_reason("takeover");
      hamlet::v1::PauseReplicationResponse paused;
      expect_admin_only(device->admin().PauseReplication(device->Context().get(), pause, &paused), "PauseReplication");
      hamlet::v1::ResumeReplicationResponse resumed;
      expect_admin_only(device->admin().ResumeReplication(device->Context().get(), {}, &resumed), "ResumeReplication");
      {
        hamlet::v1::CreateBackupRequest backup;
        backup.set_directory(dir_->Sub(absl::StrCat("backup-by-", hamlet::v1::Role_Name(role))));
        auto context = device->Context();
        auto reader = device->admin().CreateBackup(context.get(), backup);
        hamlet::v1::CreateBackupResponse progress;
        while (reader->Read(&progress)) {
        }
        expect_admin_only(reader->Finish(), "CreateBackup");
      }
      {
        hamlet::v1::VerifyBackupsRequest verify;
        verify.set_directory(dir_->Sub("backups"));
        auto context = device->Context();
        auto reader = device->admin().VerifyBackups(context.get(), verify);
        hamlet::v1::VerifyBackupsResponse checked;
        while (reader->Read(&checked)) {
        }
        expect_admin_only(reader->Finish(), "VerifyBackups");
      }
      {
        hamlet::v1::ImportBundleRequest import;
        import.set_path(dir_->Sub("no-such-bundle.hlb"));
        auto context = device->Context();
        auto reader = device->admin().ImportBundle(context.get(), import);
        hamlet::v1::ImportBundleResponse progress;
        while (reader->Read(&progress)) {
        }
        expect_admin_only(reader->Finish(), "ImportBundle");
      }
      {
        // Another device's records, sealed for it: only an admin may.
        hamlet::v1::ExportBundleRequest export_request;
        export_request.set_device_id(Uuid(1, 1));
        export_request.set_path(dir_->Sub(absl::StrCat("bundle-by-", hamlet::v1::Role_Name(role))));
        auto context = device->Context();
        auto reader = device->admin().ExportBundle(context.get(), export_request);
        hamlet::v1::ExportBundleResponse progress;
        while (reader->Read(&progress)) {
        }
        expect_admin_only(reader->Finish(), "ExportBundle");
      }
    }
  }
  EXPECT_EQ(unexpected_ok, 0);
}

TEST_F(AccessE2eTest, AnExpiredTokenIsRefused) {
  hamlet::testing::AdminClient admin(*server_);
  hamlet::v1::EnrollDeviceRequest request;
  request.set_device_id(Uuid(8, 1));
  request.set_person_id("short-lived");
  request.set_role(hamlet::v1::ROLE_MEMBER);
  request.set_unit_code("07132");
  request.mutable_ttl()->set_seconds(1);
  hamlet::v1::EnrollDeviceResponse enrolled;
  ASSERT_TRUE(admin.stub().EnrollDevice(admin.Context().get(), request, &enrolled).ok());
  Device device(*server_, Uuid(8, 1), enrolled.token());
  std::vector<Record> pulled;
  ASSERT_TRUE(device.Pull("", &pulled).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const grpc::Status expired = device.Pull("", &pulled);
  EXPECT_EQ(expired.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(expired.error_message(), ::testing::HasSubstr("expired"));
}

TEST_F(AccessE2eTest, RevokedDeviceIsRefusedAtOnceAndABatchHidingAnotherCommuneWritesNothing) {
  auto member = DeviceFor(hamlet::v1::ROLE_MEMBER, 100);
  const Record mine = NewRecord(Uuid(6, 1), "mediation_case", "07132-K03", "person-100", "của tôi", member->id());
  const Record theirs =
      NewRecord(Uuid(6, 2), "mediation_case", "07135-K03", "person-100", "của người khác", member->id());
  const grpc::Status mixed = member->Push({mine, theirs});
  EXPECT_EQ(mixed.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(mixed.error_message(), ::testing::HasSubstr(Uuid(6, 2)));
  std::vector<Record> pulled;
  ASSERT_TRUE(member->Pull("", &pulled).ok());
  for (const Record& r : pulled) EXPECT_NE(r.id(), Uuid(6, 1)) << "part of a refused batch was written";

  // Another device's id with this token.
  hamlet::v1::PushRequest request;
  request.set_device_id(Uuid(1, 1));
  request.set_batch_id(Uuid(7, 1));
  *request.add_changes() = mine;
  hamlet::v1::PushResponse response;
  EXPECT_EQ(member->sync().Push(member->Context().get(), request, &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  hamlet::testing::AdminClient admin(*server_);
  ASSERT_TRUE(admin.Revoke(member->id(), "phone lost").ok());
  const grpc::Status after = member->Push({mine});
  EXPECT_EQ(after.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(after.error_message(), ::testing::HasSubstr("revoked"));

  hamlet::v1::ListAuditEntriesRequest audit_request;
  audit_request.set_page_size(1000);
  hamlet::v1::ListAuditEntriesResponse audit;
  ASSERT_TRUE(admin.stub().ListAuditEntries(admin.Context().get(), audit_request, &audit).ok());
  bool revoke_logged = false;
  for (const auto& entry : audit.entries()) {
    revoke_logged = revoke_logged || (entry.action() == "revoke" && entry.target() == member->id() &&
                                      entry.detail() == "phone lost" && entry.role() == hamlet::v1::ROLE_ADMIN);
  }
  EXPECT_TRUE(revoke_logged);
}

// A later change may leave out the author; a record created earlier in the
// same batch counts as existing for it, as it would in a later batch.
TEST_F(AccessE2eTest, AMemberMayCreateATipAndEditItInOneBatchWithoutRepeatingTheAuthor) {
  auto member = DeviceFor(hamlet::v1::ROLE_MEMBER, 101);
  const Record tip = NewRecord(Uuid(8, 1), "security_tip", "07132-K03", "person-101", "x", member->id());
  Record edit;
  edit.set_id(tip.id());
  edit.set_unit_code(tip.unit_code());
  edit.mutable_security_tip()->set_summary("y");
  sync::SetFieldStamp(&edit, hamlet::v1::SecurityTip::kSummaryFieldNumber, MakeStamp(NowMs() + 1, 0, member->id()));
  const grpc::Status pushed = member->Push({tip, edit});
  ASSERT_TRUE(pushed.ok()) << pushed.error_message();
  std::vector<Record> pulled;
  ASSERT_TRUE(member->Pull("", &pulled).ok());
  const auto it = std::find_if(pulled.begin(), pulled.end(), [&](const Record& r) { return r.id() == tip.id(); });
  ASSERT_NE(it, pulled.end());
  EXPECT_EQ(it->security_tip().summary(), "y");
  EXPECT_EQ(it->author(), "person-101");
}

// With set_aside_refused, a change the caller may not write is set aside with
// its reason and the rest of its batch is applied; the answer to a retry is
// the same, and nothing is applied twice.
TEST_F(AccessE2eTest, ARefusedChangeIsSetAsideAndTheRestOfItsBatchIsApplied) {
  auto member = DeviceFor(hamlet::v1::ROLE_MEMBER, 102);
  const Record mine = NewRecord(Uuid(8, 11), "mediation_case", "07132-K03", "person-102", "của tôi", member->id());
  const Record theirs =
      NewRecord(Uuid(8, 12), "mediation_case", "07135-K03", "person-102", "của người khác", member->id());
  const Record also_mine =
      NewRecord(Uuid(8, 13), "household_registration", "07132-K03", "person-102", "Hộ A", member->id());
  hamlet::v1::PushRequest request = member->Batch({mine, theirs, also_mine});
  request.set_set_aside_refused(true);
  hamlet::v1::PushResponse first;
  const grpc::Status pushed = member->sync().Push(member->Context().get(), request, &first);
  ASSERT_TRUE(pushed.ok()) << pushed.error_message();
  EXPECT_EQ(first.applied_records(), 2u);
  ASSERT_EQ(first.set_aside_size(), 1);
  EXPECT_EQ(first.set_aside(0).index(), 1u);
  EXPECT_EQ(first.set_aside(0).record_id(), theirs.id());
  EXPECT_EQ(first.set_aside(0).code(), static_cast<int32_t>(grpc::StatusCode::PERMISSION_DENIED));
  EXPECT_THAT(first.set_aside(0).message(), ::testing::HasSubstr("not writable by ROLE_MEMBER"));

  hamlet::v1::PushResponse again;
  ASSERT_TRUE(member->sync().Push(member->Context().get(), request, &again).ok());
  EXPECT_EQ(again.SerializeAsString(), first.SerializeAsString());

  std::vector<Record> pulled;
  ASSERT_TRUE(member->Pull("", &pulled).ok());
  std::map<std::string, int> seen;
  for (const Record& r : pulled) ++seen[r.id()];
  EXPECT_EQ(seen[mine.id()], 1);
  EXPECT_EQ(seen[also_mine.id()], 1);
  hamlet::testing::AdminClient admin(*server_);
  const std::string officer_id = Uuid(3, 103);
  Device officer(*server_, officer_id, admin.Enroll(officer_id, hamlet::v1::ROLE_TOWN_OFFICER, "206", "officer-103"));
  std::vector<Record> everything;
  ASSERT_TRUE(officer.Pull("", &everything).ok());
  for (const Record& r : everything) EXPECT_NE(r.id(), theirs.id()) << "a set-aside change was written";

  // A malformed change (a unit the server does not know) is set aside too.
  Record lost = NewRecord(Uuid(8, 14), "mediation_case", "99999", "person-102", "đơn vị lạ", member->id());
  hamlet::v1::PushRequest second =
      member->Batch({lost, NewRecord(Uuid(8, 15), "mediation_case", "07132-K03", "person-102", "tiếp", member->id())});
  second.set_set_aside_refused(true);
  hamlet::v1::PushResponse answer;
  ASSERT_TRUE(member->sync().Push(member->Context().get(), second, &answer).ok());
  EXPECT_EQ(answer.applied_records(), 1u);
  ASSERT_EQ(answer.set_aside_size(), 1);
  EXPECT_EQ(answer.set_aside(0).index(), 0u);
  EXPECT_EQ(answer.set_aside(0).code(), static_cast<int32_t>(grpc::StatusCode::INVALID_ARGUMENT));
}

// A scope names one of this server's communes; another town's commune (which
// the server knows only as reference data) is INVALID_ARGUMENT.
TEST_F(AccessE2eTest, APullScopeNamingAnotherTownsCommuneIsInvalid) {
  auto officer = DeviceFor(hamlet::v1::ROLE_TOWN_OFFICER, 104);
  std::vector<Record> pulled;
  const grpc::Status other_town = officer->Pull("07192", &pulled);
  EXPECT_EQ(other_town.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << other_town.error_message();
  EXPECT_TRUE(pulled.empty());
  EXPECT_TRUE(officer->Pull("07132", &pulled).ok());
}

}  // namespace
}  // namespace hamlet
