// hamlet-field: the reference device client on the command line. It keeps a
// phone's local store in --store and works offline; `sync` talks to --server.

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "sync/merge.h"
#include "tools/field/device.h"

ABSL_FLAG(std::string, store, "./field-device", "Directory of this device's local store; created if missing.");
ABSL_FLAG(std::string, server, "127.0.0.1:7420", "Server address for `sync`.");
ABSL_FLAG(std::string, scope, "", "Commune code to pull on `sync`; empty for the whole town.");
ABSL_FLAG(std::string, unit, "", "Admin unit code of a new record (`create`).");
ABSL_FLAG(std::string, author, "", "Person id of the author of a new record (`create`).");
ABSL_FLAG(std::string, id, "", "Id of a new record (`create`); generated if empty.");
ABSL_FLAG(std::string, json, "{}",
          "Body fields as JSON for `create` and `edit`, e.g. '{\"summary\":\"...\",\"status\":"
          "\"MEDIATION_STATUS_RECEIVED\"}'. Every key present is set; others are left alone.");
ABSL_FLAG(int, attempts, 8, "Attempts per call on `sync` while the server is unreachable.");
ABSL_FLAG(int, batch_records, 200, "Most records per push on `sync`.");
ABSL_FLAG(int, page_size, 500, "Records per pull page on `sync`.");

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
    "  status                  device id, unsynced edits, cursor\n"
    "  sync [--server=ADDR] [--scope=COMMUNE]   push the outbox, then pull until caught up\n"
    "All but sync work with no server.";

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
    return absl::InvalidArgumentError(absl::StrCat("--json does not fit ", body->GetDescriptor()->name(), ": ",
                                                   s.ToString()));
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

int Sync(hamlet::field::FieldDevice& device) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials(), args);
  auto stub = hamlet::v1::SyncService::NewStub(channel);
  hamlet::field::FieldDevice::SyncOptions options;
  options.scope_unit_code = absl::GetFlag(FLAGS_scope);
  options.max_attempts = absl::GetFlag(FLAGS_attempts);
  options.batch_records = absl::GetFlag(FLAGS_batch_records);
  options.page_size = absl::GetFlag(FLAGS_page_size);
  options.on_pull_progress = [](uint64_t pulled, uint64_t total) {
    std::fprintf(stderr, "pulled %s of %s records\n", WithThousands(pulled).c_str(), WithThousands(total).c_str());
  };
  auto report = device.Sync(*stub, options);
  if (!report.ok()) return Fail(report.status());
  std::printf("synced: pushed %d records in %d batches, pulled %d records%s\n",
              static_cast<int>(report->records_pushed), static_cast<int>(report->batches_pushed),
              static_cast<int>(report->records_pulled),
              report->cursor_reset ? " (server asked for a fresh pull)" : "");
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
    if (!outbox.ok()) return Fail(outbox.status());
    if (!cursor.ok()) return Fail(cursor.status());
    if (!pending.ok()) return Fail(pending.status());
    std::printf("device %s\nunsynced edits: %d\nbatch in flight: %s\npulled scope \"%s\" before: %s\n", d.device_id().c_str(),
                static_cast<int>(*outbox), pending->has_value() ? (*pending)->batch_id().c_str() : "none",
                absl::GetFlag(FLAGS_scope).c_str(), cursor->empty() ? "no" : "yes");
    return 0;
  }
  if (command == "sync") return Sync(d);
  std::fprintf(stderr, "unknown command \"%s\"\n%s\n", command.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  return Run(args);
}
