// hamlet-field: the reference device client on the command line. It keeps a
// phone's local store in --store and works offline; `sync` talks to --server.

#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/device.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "sync/merge.h"
#include "tools/harness/program_flags.h"

ABSL_FLAG(std::string, store, "./field-device", "Directory of this device's local store; created if missing.");
ABSL_FLAG(std::string, server, "127.0.0.1:7420", "Server address for `sync`.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA to verify the server with; set it to talk TLS (the server runs with --tls_cert_file).");
ABSL_FLAG(std::string, scope, "", "Commune code to pull on `sync`; empty for everything this device may see.");
ABSL_FLAG(std::string, unit, "", "Admin unit code of a new record (`create`).");
ABSL_FLAG(std::string, author, "", "Person id of the author of a new record (`create`).");
ABSL_FLAG(std::string, id, "", "Id of a new record (`create`); generated if empty.");
ABSL_FLAG(std::string, json, "{}",
          "Body fields as JSON for `create` and `edit`, e.g. '{\"summary\":\"...\",\"status\":"
          "\"MEDIATION_STATUS_RECEIVED\"}'. Every key present is set; others are left alone.");
ABSL_FLAG(std::string, role, "ROLE_MEMBER", "Role the device was enrolled with (`set-token`).");
ABSL_FLAG(int, field, 0, "Lifecycle field number in conflict (`resolve`), e.g. 9 for MediationCase.status.");
ABSL_FLAG(std::string, resolver, "", "Person id of who settles a conflict (`resolve`).");
ABSL_FLAG(int, attempts, 8, "Attempts per call on `sync` while the server is unreachable.");
ABSL_FLAG(int, batch_records, 200, "Most records per push on `sync`.");
ABSL_FLAG(int, page_size, 500, "Records per pull page on `sync`.");
ABSL_FLAG(std::string, out, "", "File to write the bundle to (`export`); replaced whole if it exists.");

namespace {

using hamlet::v1::Record;

constexpr char kUsage[] =
    "Reference Hamlet device client.\n"
    "Usage: hamlet-field [--store=DIR] COMMAND [ARGS]\n"
    "Commands:\n"
    "  create TYPE --unit=CODE --author=PERSON [--json=BODY] [--id=UUID]\n"
    "      TYPE: mediation_case, security_tip, informant_identity, household_registration, team, admin_unit.\n"
    "      Prints the new record's id.\n"
    "  edit ID --json=BODY     set the fields named in BODY\n"
    "  delete ID               mark the record deleted\n"
    "  show ID                 print the record as JSON\n"
    "  list                    one line per record: id, type, unit, state\n"
    "  status                  device id, enrolment, unsynced and rejected edits, cursor\n"
    "  set-token TOKEN [--role=ROLE]   save the token an admin issued for this device\n"
    "  sync [--server=ADDR] [--scope=COMMUNE]   push the outbox, then pull until caught up\n"
    "  conflicts               records with an open conflict, with every competing value\n"
    "  resolve ID --field=N --json=VALUE --resolver=PERSON [--server=ADDR]\n"
    "                          settle a conflict (team leaders and commune roles)\n"
    "  rejected                edits the server refused for good, with its reason\n"
    "  export --out=FILE       write the unsynced edits into a sealed bundle for the server, to carry by hand\n"
    "                          (an admin applies it with `hamlet-admin import FILE`)\n"
    "  import FILE             apply a bundle the server wrote for this device (`hamlet-admin export`)\n"
    "All but sync and resolve work with no server.";

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "hamlet-field: %s\n", status.ToString().c_str());
  return status.code() == absl::StatusCode::kUnavailable || status.code() == absl::StatusCode::kDeadlineExceeded ? 3
                                                                                                                 : 2;
}

// 1200 -> "1,200".
std::string WithThousands(uint64_t n) {
  std::string digits = absl::StrCat(n);
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) digits.insert(static_cast<size_t>(i), ",");
  return digits;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.add_whitespace = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) return "{}";
  return out;
}

// Parses --json into `body` and returns the numbers of the fields it names.
absl::StatusOr<hamlet::sync::FieldNumbers> ParseBody(const std::string& json, google::protobuf::Message* body) {
  google::protobuf::Struct keys;
  if (auto s = google::protobuf::util::JsonStringToMessage(json, &keys); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--json is not a JSON object: ", s.ToString()));
  }
  hamlet::sync::FieldNumbers fields;
  for (const auto& [key, value] : keys.fields()) {
    const auto* field = body->GetDescriptor()->FindFieldByName(key);
    if (field == nullptr) field = body->GetDescriptor()->FindFieldByCamelcaseName(key);
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(body->GetDescriptor()->name(), " has no field \"", key, "\""));
    }
    fields.insert(field->number());
  }
  if (auto s = google::protobuf::util::JsonStringToMessage(json, body); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--json does not fit ", body->GetDescriptor()->name(), ": ", s.ToString()));
  }
  return fields;
}

int Create(hamlet::field::FieldDevice& device, const std::string& type) {
  const auto* field = Record::descriptor()->FindFieldByName(type);
  if (field == nullptr || field->containing_oneof() == nullptr) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("unknown record type \"", type, "\"")));
  }
  Record draft;
  draft.set_id(absl::GetFlag(FLAGS_id));
  draft.set_unit_code(absl::GetFlag(FLAGS_unit));
  draft.set_author(absl::GetFlag(FLAGS_author));
  if (draft.unit_code().empty() || draft.author().empty()) {
    return Fail(absl::InvalidArgumentError("create needs --unit and --author"));
  }
  google::protobuf::Message* body = draft.GetReflection()->MutableMessage(&draft, field);
  auto fields = ParseBody(absl::GetFlag(FLAGS_json), body);
  if (!fields.ok()) return Fail(fields.status());
  auto created = device.Create(draft, *fields);
  if (!created.ok()) return Fail(created.status());
  std::printf("%s\n", created->id().c_str());
  return 0;
}

int Edit(hamlet::field::FieldDevice& device, const std::string& id) {
  auto record = device.store().GetRecord(id);
  if (!record.ok()) return Fail(record.status());
  if (!record->has_value()) return Fail(absl::NotFoundError(absl::StrCat("no record ", id, " on this device")));
  const google::protobuf::Message* current = hamlet::sync::RecordBody(**record);
  std::unique_ptr<google::protobuf::Message> body(current->New());
  auto fields = ParseBody(absl::GetFlag(FLAGS_json), body.get());
  if (!fields.ok()) return Fail(fields.status());
  auto edited = device.Edit(id, *body, *fields);
  return edited.ok() ? 0 : Fail(edited.status());
}

std::unique_ptr<hamlet::v1::SyncService::Stub> Connect() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // Requests go gzip-compressed; the server compresses its answers for any
  // client that accepts gzip (gRPC's own negotiation).
  args.SetCompressionAlgorithm(GRPC_COMPRESS_GZIP);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (const std::string ca = absl::GetFlag(FLAGS_tls_ca_file); !ca.empty()) {
    std::ifstream in(ca);
    std::stringstream pem;
    pem << in.rdbuf();
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = pem.str();
    credentials = grpc::SslCredentials(options);
  }
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_server), credentials, args);
  return hamlet::v1::SyncService::NewStub(channel);
}

hamlet::field::FieldDevice::SyncOptions OptionsFromFlags() {
  hamlet::field::FieldDevice::SyncOptions options;
  options.scope_unit_code = absl::GetFlag(FLAGS_scope);
  options.retry.max_attempts = absl::GetFlag(FLAGS_attempts);
  return options;
}

int Resolve(hamlet::field::FieldDevice& device, const std::string& id) {
  auto record = device.store().GetRecord(id);
  if (!record.ok()) return Fail(record.status());
  if (!record->has_value()) return Fail(absl::NotFoundError(absl::StrCat("no record ", id, " on this device")));
  std::unique_ptr<google::protobuf::Message> value(hamlet::sync::RecordBody(**record)->New());
  auto fields = ParseBody(absl::GetFlag(FLAGS_json), value.get());
  if (!fields.ok()) return Fail(fields.status());
  auto stub = Connect();
  auto resolved = device.ResolveConflict(*stub, id, static_cast<uint32_t>(absl::GetFlag(FLAGS_field)), *value,
                                         absl::GetFlag(FLAGS_resolver), OptionsFromFlags());
  if (!resolved.ok()) return Fail(resolved.status());
  std::printf("resolved; %d conflicts left on the record (sync to get it)\n", resolved->conflicts_size());
  return 0;
}

std::string Kilobytes(uint64_t bytes) { return absl::StrCat(WithThousands((bytes + 512) / 1024), " KB"); }

// Prints a sync's progress to stderr: after each call, and every 2 s while a
// call is in flight, so that a slow link never leaves the user without news.
class ProgressLine {
 public:
  using SyncProgress = hamlet::field::FieldDevice::SyncProgress;

  ProgressLine() : ticker_([this] { Tick(); }) {}
  ~ProgressLine() {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    ticker_.join();
  }

  void Update(const SyncProgress& progress) {
    absl::MutexLock lock(&mu_);
    last_ = progress;
    updated_ = absl::Now();
    PrintLocked();
  }

 private:
  // Wakes every 250 ms and prints if the next wake would be more than 2 s
  // after the last line: no two lines are more than 2 s apart.
  void Tick() {
    absl::MutexLock lock(&mu_);
    while (!mu_.AwaitWithTimeout(absl::Condition(&done_), kTick)) {
      if (last_.has_value() && absl::Now() - printed_ >= absl::Seconds(2) - kTick) PrintLocked();
    }
  }
  static constexpr absl::Duration kTick = absl::Milliseconds(250);

  void PrintLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const SyncProgress& p = *last_;
    const bool push = p.phase == SyncProgress::Phase::kPush;
    const absl::Duration elapsed = p.elapsed + (absl::Now() - updated_);
    std::string line =
        absl::StrCat(push ? "pushed " : "pulled ", WithThousands(p.records_done), " of ",
                     WithThousands(p.records_total), push ? " changes" : " records", ", ", Kilobytes(p.bytes_done));
    if (p.bytes_total > 0) absl::StrAppend(&line, " of ", push ? "" : "~", Kilobytes(p.bytes_total));
    if (p.bytes_per_second > 0) {
      absl::StrAppend(&line, ", ", Kilobytes(static_cast<uint64_t>(p.bytes_per_second)), "/s");
    }
    absl::StrAppend(&line, ", ", absl::FormatDuration(absl::Trunc(elapsed, absl::Seconds(1))));
    if (p.left != absl::InfiniteDuration()) {
      absl::StrAppend(&line, ", about ", absl::FormatDuration(absl::Ceil(p.left, absl::Seconds(1))), " left");
    }
    std::fprintf(stderr, "%s\n", line.c_str());
    printed_ = absl::Now();
  }

  absl::Mutex mu_;
  std::optional<SyncProgress> last_ ABSL_GUARDED_BY(mu_);
  absl::Time updated_ ABSL_GUARDED_BY(mu_);
  absl::Time printed_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread ticker_;
};

int Sync(hamlet::field::FieldDevice& device) {
  auto stub = Connect();
  hamlet::field::FieldDevice::SyncOptions options = OptionsFromFlags();
  options.batch_records = absl::GetFlag(FLAGS_batch_records);
  options.page_size = absl::GetFlag(FLAGS_page_size);
  ProgressLine progress;
  options.on_progress = [&progress](const ProgressLine::SyncProgress& p) { progress.Update(p); };
  auto report = device.Sync(*stub, options);
  if (!report.ok()) return Fail(report.status());
  std::printf("synced: pushed %d records in %d batches, pulled %d records%s%s\n",
              static_cast<int>(report->records_pushed), static_cast<int>(report->batches_pushed),
              static_cast<int>(report->records_pulled), report->cursor_reset ? " (server asked for a fresh pull)" : "",
              report->batches_rejected + report->changes_set_aside > 0
                  ? "; some edits were refused: see `hamlet-field rejected`"
                  : "");
  return 0;
}

int Run(const std::vector<char*>& args) {
  if (args.size() < 2) {
    std::fprintf(stderr, "%s\n", kUsage);
    return 2;
  }
  const std::string command = args[1];
  auto device = hamlet::field::FieldDevice::Open(absl::GetFlag(FLAGS_store), hamlet::sync::SystemClock::Get());
  if (!device.ok()) return Fail(device.status());
  hamlet::field::FieldDevice& d = **device;
  const auto arg = [&args](size_t i) { return i < args.size() ? std::string(args[i]) : std::string(); };

  if (command == "create") return Create(d, arg(2));
  if (command == "edit") return Edit(d, arg(2));
  if (command == "delete") {
    absl::Status s = d.Delete(arg(2));
    return s.ok() ? 0 : Fail(s);
  }
  if (command == "show") {
    auto record = d.store().GetRecord(arg(2));
    if (!record.ok()) return Fail(record.status());
    if (!record->has_value()) return Fail(absl::NotFoundError(absl::StrCat("no record ", arg(2), " on this device")));
    std::printf("%s", ToJson(**record).c_str());
    return 0;
  }
  if (command == "list") {
    auto records = d.store().ListRecords();
    if (!records.ok()) return Fail(records.status());
    for (const Record& r : *records) {
      const auto* body = hamlet::sync::RecordBody(r);
      std::printf("%s %s %s %s\n", r.id().c_str(), body ? body->GetDescriptor()->name().c_str() : "-",
                  r.unit_code().c_str(), r.deleted() ? "deleted" : "live");
    }
    return 0;
  }
  if (command == "status") {
    auto outbox = d.store().OutboxSize();
    auto cursor = d.store().GetCursor(absl::GetFlag(FLAGS_scope));
    auto pending = d.store().GetPendingBatch();
    auto queued = d.store().GetQueuedBatches();
    auto rejected = d.store().ListRejected();
    auto token = d.store().GetToken();
    auto role = d.store().GetRole();
    for (const absl::Status& s : {outbox.status(), cursor.status(), pending.status(), queued.status(),
                                  rejected.status(), token.status(), role.status()}) {
      if (!s.ok()) return Fail(s);
    }
    std::printf(
        "device %s\nenrolled: %s\nunsynced edits: %d\nrejected edits: %d\nbatch in flight: %s\n"
        "batches fixed after it (a bundle carries them): %d\npulled scope \"%s\" before: %s\n",
        d.device_id().c_str(), token->empty() ? "no" : hamlet::v1::Role_Name(*role).c_str(), static_cast<int>(*outbox),
        static_cast<int>(rejected->size()), pending->has_value() ? (*pending)->batch_id().c_str() : "none",
        static_cast<int>(queued->size()), absl::GetFlag(FLAGS_scope).c_str(), cursor->empty() ? "no" : "yes");
    return 0;
  }
  if (command == "set-token") {
    hamlet::v1::Role role;
    if (!hamlet::v1::Role_Parse(absl::GetFlag(FLAGS_role), &role)) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("unknown role ", absl::GetFlag(FLAGS_role))));
    }
    if (arg(2).empty()) return Fail(absl::InvalidArgumentError("set-token needs the token"));
    absl::Status s = d.store().SetEnrolment(arg(2), role);
    return s.ok() ? 0 : Fail(s);
  }
  if (command == "conflicts") {
    auto records = d.store().ListRecords();
    if (!records.ok()) return Fail(records.status());
    for (const Record& r : *records) {
      if (r.conflicts_size() == 0) continue;
      hamlet::v1::Record only;
      only.set_id(r.id());
      *only.mutable_conflicts() = r.conflicts();
      std::printf("%s", ToJson(only).c_str());
    }
    return 0;
  }
  if (command == "rejected") {
    auto rejected = d.store().ListRejected();
    if (!rejected.ok()) return Fail(rejected.status());
    for (const auto& edit : *rejected) {
      std::printf("%s %s\n", edit.change().id().c_str(), edit.reason().c_str());
    }
    return 0;
  }
  if (command == "export") {
    if (absl::GetFlag(FLAGS_out).empty()) return Fail(absl::InvalidArgumentError("export needs --out=FILE"));
    hamlet::field::FieldDevice::SyncOptions options = OptionsFromFlags();
    options.batch_records = absl::GetFlag(FLAGS_batch_records);
    auto report = d.ExportBundle(absl::GetFlag(FLAGS_out), options);
    if (!report.ok()) return Fail(report.status());
    std::printf(
        "exported %s changes in %d batches to %s (%s bytes, sealed for this device's server); they stay in the "
        "outbox until the server has them\n",
        WithThousands(report->changes).c_str(), static_cast<int>(report->batches), absl::GetFlag(FLAGS_out).c_str(),
        WithThousands(report->bytes).c_str());
    return 0;
  }
  if (command == "import") {
    if (arg(2).empty()) return Fail(absl::InvalidArgumentError("import needs the bundle's file"));
    auto report = d.ImportBundle(arg(2));
    if (!report.ok()) return Fail(report.status());
    std::printf("imported %s records from %s; %s\n", WithThousands(report->records).c_str(), arg(2).c_str(),
                report->cursor_moved ? "the next sync resumes after them"
                                     : "the device had pulled past where the bundle starts, so its cursor is kept");
    return 0;
  }
  if (command == "resolve") return Resolve(d, arg(2));
  if (command == "sync") return Sync(d);
  std::fprintf(stderr, "unknown command \"%s\"\n%s\n", command.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  hamlet::harness::ListFlagsOf("hamlet_field.cc");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  return Run(args);
}
