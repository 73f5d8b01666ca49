#include "tools/bench/field_bench.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/device.h"
#include "google/protobuf/util/json_util.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "storage/device_store.h"
#include "sync/clock.h"
#include "sync/merge.h"
#include "tools/bench/pouch_server.h"
#include "tools/field/week.h"
#include "tools/harness/fault_proxy.h"
#include "tools/harness/hamletd_process.h"
#include "tools/harness/spawn.h"

namespace hamlet::bench {
namespace {

using hamlet::v1::Record;

[[noreturn]] void Fail(const std::string& why) {
  std::fprintf(stderr, "hamlet-bench: %s\n", why.c_str());
  std::exit(1);
}

// One sync through the link: what the client said, and what the proxy counted.
struct LinkRun {
  double seconds = 0;  // See Through().
  uint64_t up = 0, down = 0, connections = 0, cuts = 0;
  uint64_t records = 0;  // Records (documents) the client reports it moved.
  int attempts = 1;
  std::string output;
};

// Runs `argv` (with "{link}" replaced by the proxy's address) through a new
// hamlet-faultproxy in front of `target` with `link`'s flags. `seconds` is
// the client process's wall time.
LinkRun Through(const FieldBenchOptions& o, const std::string& name, const std::string& target,
                const std::vector<std::string>& link, std::vector<std::string> argv) {
  std::vector<std::string> flags = link;
  flags.push_back(absl::StrCat("--seed=", o.seed));
  auto proxy = harness::FaultProxy::Start(o.faultproxy, o.work + "/" + name + "-link", target, flags);
  if (proxy == nullptr) Fail("hamlet-faultproxy did not start; see " + o.work + "/" + name + "-link.log");
  for (std::string& arg : argv) {
    const size_t at = arg.find("{link}");
    if (at != std::string::npos) arg.replace(at, 6, proxy->address());
  }
  const std::string log = o.work + "/" + name + ".out";
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = harness::Spawn(argv, log);
  const int code = pid < 0 ? -1 : harness::WaitExit(pid);
  LinkRun run;
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  proxy->Stop();
  run.output = harness::ReadFile(log);
  if (code != 0) Fail(absl::StrCat(name, " failed (exit ", code, "):\n", run.output));
  const std::map<std::string, uint64_t> stats = proxy->Stats();
  run.up = stats.at("bytes_up");
  run.down = stats.at("bytes_down");
  run.connections = stats.at("connections");
  run.cuts = stats.at("cuts");
  return run;
}

// `hamlet-field sync` through the link; records = pushed + pulled.
LinkRun HamletSync(const FieldBenchOptions& o, const std::string& name, const std::string& store,
                   const std::string& server, const std::vector<std::string>& link) {
  LinkRun run = Through(o, name, server, link, {o.field, "--store=" + store, "--server={link}", "sync"});
  std::smatch m;
  if (!std::regex_search(run.output, m, std::regex(R"(synced: pushed (\d+) records.*pulled (\d+) records)"))) {
    Fail(name + ": no summary line in\n" + run.output);
  }
  run.records = std::stoull(m[1]) + std::stoull(m[2]);
  return run;
}

// tools/bench/pouchdb/field.js through the link; `seconds` is the replication
// alone, as the script times it (no node start-up, no local writes).
LinkRun PouchSync(const FieldBenchOptions& o, const std::string& name, int port, const std::vector<std::string>& link,
                  std::vector<std::string> args) {
  std::vector<std::string> argv = {"/usr/bin/env", "NODE_PATH=" + o.pouchdb_install + "/node_modules", "node",
                                   PouchServer::ToolPath("pouchdb/field.js")};
  argv.insert(argv.end(), args.begin(), args.end());
  LinkRun run = Through(o, name, absl::StrCat("127.0.0.1:", port), link, argv);
  std::smatch m;
  const std::string& out = run.output;
  const auto number = [&](const char* key) -> std::optional<double> {
    if (!std::regex_search(out, m, std::regex(absl::StrCat("\"", key, R"(\":\s*([0-9.]+))")))) return std::nullopt;
    return std::stod(m[1]);
  };
  const auto seconds = number("seconds");
  if (!seconds) Fail(name + ": no result line in\n" + out);
  run.seconds = *seconds;
  run.records = static_cast<uint64_t>(number("docs_written").value_or(0) + number("docs_read").value_or(0));
  run.attempts = static_cast<int>(number("attempts").value_or(1));
  return run;
}

// A device store for an enrolled phone.
std::unique_ptr<field::FieldDevice> NewPhone(const std::string& dir, const harness::Device& device,
                                             hamlet::v1::Role role) {
  std::filesystem::create_directories(std::filesystem::path(dir).parent_path());
  if (auto store = storage::DeviceStore::Open(dir, device.id); !store.ok()) Fail(store.status().ToString());
  auto phone = field::FieldDevice::Open(dir, sync::SystemClock::Get());
  if (!phone.ok()) Fail(phone.status().ToString());
  if (absl::Status s = (*phone)->store().SetEnrolment(device.token, role); !s.ok()) Fail(s.ToString());
  (*phone)->set_role(role);
  return *std::move(phone);
}

// The phone's outbox as PouchDB documents: each created record as a document
// (the envelope's fields and the body's, flat), and each later edit as a new
// summary for a document, applied by field.js as an update.
std::string PouchDocs(field::FieldDevice& phone) {
  auto outbox = phone.store().ReadOutbox(SIZE_MAX);
  if (!outbox.ok()) Fail(outbox.status().ToString());
  google::protobuf::util::JsonPrintOptions json;
  json.preserve_proto_field_names = true;
  std::vector<std::string> docs, edits;
  std::set<std::string> created;
  for (const storage::OutboxItem& item : *outbox) {
    const Record& change = item.change;
    const google::protobuf::Message* body = sync::RecordBody(change);
    std::string fields;
    if (!google::protobuf::util::MessageToJsonString(*body, &fields, json).ok()) Fail("cannot write a body as JSON");
    fields = fields.substr(1, fields.size() - 2);  // The body's fields, without braces.
    if (created.insert(change.id()).second) {
      std::string envelope;
      Record bare = change;
      bare.clear_id();
      bare.clear_field_stamps();
      bare.clear_body();
      if (!google::protobuf::util::MessageToJsonString(bare, &envelope, json).ok()) Fail("cannot write JSON");
      docs.push_back(absl::StrCat(R"({"_id":")", change.id(), R"(","type":")", body->GetDescriptor()->name(), "\",",
                                  envelope.substr(1, envelope.size() - 2), ",", fields, "}"));
    } else {
      edits.push_back(absl::StrCat(R"({"_id":")", change.id(), "\",", fields, "}"));
    }
  }
  return absl::StrCat(R"({"docs":[)", absl::StrJoin(docs, ",\n"),
                      "],\n"
                      R"("edits":[)",
                      absl::StrJoin(edits, ",\n"), "]}\n");
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) Fail("cannot write " + path);
}

std::string Kib(uint64_t bytes) { return absl::StrFormat("%.0f", static_cast<double>(bytes) / 1024); }

void PrintRun(const std::string& what, const LinkRun& run) {
  std::printf("  %-44s %8.1f s %9s %9s %7s %6llu %5llu %8llu\n", what.c_str(), run.seconds, Kib(run.up).c_str(),
              Kib(run.down).c_str(), Kib(run.up + run.down).c_str(), static_cast<unsigned long long>(run.connections),
              static_cast<unsigned long long>(run.cuts), static_cast<unsigned long long>(run.records));
  std::fflush(stdout);
}

struct Targets {
  std::vector<std::string> lines;
  bool all_met = true;
  void AtMost(const std::string& what, double ratio, double needed) {
    const bool met = ratio <= needed;
    all_met = all_met && met;
    lines.push_back(
        absl::StrFormat("  %-64s %6.2fx  (target <= %.2fx)  %s", what, ratio, needed, met ? "met" : "MISSED"));
  }
};

double Bytes(const LinkRun& run) { return static_cast<double>(run.up + run.down); }

}  // namespace

int RunFieldBench(const FieldBenchOptions& o) {
  std::filesystem::create_directories(o.work);
  std::printf("hamlet-bench --mode=field: data in %s\n", o.work.c_str());
  std::printf("link: %s (hamlet-faultproxy, seed %llu); without cuts: %s; cutting half: %s\n",
              absl::StrJoin(o.link, " ").c_str(), static_cast<unsigned long long>(o.seed),
              absl::StrJoin(o.steady_link, " ").c_str(), absl::StrJoin(o.cutting_link, " ").c_str());
  std::printf(
      "phone 1 recorded offline: %d mediation cases (two parties, 200-600 characters of Vietnamese), "
      "%d security tips, %d later edits of case summaries\n\n",
      o.cases, o.tips, o.edits);

  // Hamlet: phone 1 was set up in the office (the admin units came down on
  // the office's network), then worked a week offline, twice over: once for
  // the undisturbed link, once for the cutting one. The second phone is new.
  // Phone 1's twins (for the links without and with many cuts) each have a
  // server of their own, so that none downloads another's week.
  harness::Hamletd server(o.hamletd, o.work + "/hamletd");
  harness::Hamletd steady_server(o.hamletd, o.work + "/hamletd-steady");
  harness::Hamletd cut_server(o.hamletd, o.work + "/hamletd-cuts");
  std::string pouch_docs;
  std::vector<std::string> phone1_stores;
  for (harness::Hamletd* town : {&server, &steady_server, &cut_server}) {
    const harness::Device device = town->Enroll(hamlet::v1::ROLE_MEMBER, "07132");
    const std::string store = absl::StrCat(o.work, "/hamlet-phone1-", phone1_stores.size());
    auto phone = NewPhone(store, device, hamlet::v1::ROLE_MEMBER);
    auto stub =
        hamlet::v1::SyncService::NewStub(grpc::CreateChannel(town->address(), grpc::InsecureChannelCredentials()));
    if (auto office = phone->Sync(*stub, field::FieldDevice::SyncOptions()); !office.ok()) {
      Fail(office.status().ToString());
    }
    auto week = field::RecordWeekOfWork(*phone, o.cases, o.tips, o.edits, device.person);
    if (!week.ok()) Fail(week.status().ToString());
    if (pouch_docs.empty()) pouch_docs = PouchDocs(*phone);
    phone1_stores.push_back(store);
  }  // Each phone's store is closed here: hamlet-field opens it next.
  const harness::Device leader = server.Enroll(hamlet::v1::ROLE_TEAM_LEADER, "07132");
  const std::string phone2_store = o.work + "/hamlet-phone2";
  NewPhone(phone2_store, leader, hamlet::v1::ROLE_TEAM_LEADER);

  std::printf("  %-44s %10s %9s %9s %7s %6s %5s %8s\n", "", "time", "up KiB", "down KiB", "KiB", "conns", "cuts",
              "records");
  std::printf("Hamlet (hamlet-field sync, default flags; time is the whole process):\n");
  const LinkRun h1 = HamletSync(o, "hamlet-phone1", phone1_stores[0], server.address(), o.link);
  PrintRun("phone 1: push the week, then pull", h1);
  const LinkRun h2 = HamletSync(o, "hamlet-phone2", phone2_store, server.address(), o.link);
  PrintRun("new phone (team leader): first pull", h2);
  const LinkRun h1_steady =
      HamletSync(o, "hamlet-phone1-steady", phone1_stores[1], steady_server.address(), o.steady_link);
  PrintRun("phone 1 through the link without cuts", h1_steady);
  const LinkRun h1_cut = HamletSync(o, "hamlet-phone1-cuts", phone1_stores[2], cut_server.address(), o.cutting_link);
  PrintRun("phone 1 through the link cutting half", h1_cut);

  Targets targets;
  targets.AtMost("Hamlet phone 1, bytes with half the connections cut vs none cut", Bytes(h1_cut) / Bytes(h1_steady),
                 1.2);
  if (o.pouchdb) {
    PouchServer pouch(o.work + "/pouchdb-server", o.pouchdb_install, "field");
    const std::string docs = o.work + "/pouch-week.json";
    WriteFile(docs, pouch_docs);
    const std::string remote = "http://{link}/field";
    std::printf("PouchDB (tools/bench/pouchdb/field.js replicating to pouchdb-server; time is the replication):\n");
    const LinkRun p1 = PouchSync(o, "pouch-phone1", pouch.port(), o.link,
                                 {"push", "--docs=" + docs, "--remote=" + remote, "--db=" + o.work + "/pouch-phone1"});
    PrintRun("phone 1: push the week, then pull", p1);
    const LinkRun p2 = PouchSync(o, "pouch-phone2", pouch.port(), o.link,
                                 {"pull", "--remote=" + remote, "--db=" + o.work + "/pouch-phone2"});
    PrintRun("new phone: first pull", p2);
    PouchServer pouch_steady(o.work + "/pouchdb-server-steady", o.pouchdb_install, "field");
    const LinkRun p1_steady =
        PouchSync(o, "pouch-phone1-steady", pouch_steady.port(), o.steady_link,
                  {"push", "--docs=" + docs, "--remote=" + remote, "--db=" + o.work + "/pouch-phone1-steady"});
    PrintRun("phone 1 through the link without cuts", p1_steady);
    PouchServer pouch_cut(o.work + "/pouchdb-server-cuts", o.pouchdb_install, "field");
    const LinkRun p1_cut =
        PouchSync(o, "pouch-phone1-cuts", pouch_cut.port(), o.cutting_link,
                  {"push", "--docs=" + docs, "--remote=" + remote, "--db=" + o.work + "/pouch-phone1-cuts"});
    PrintRun(absl::StrCat("phone 1, link cutting half (", p1_cut.attempts, " tries)"), p1_cut);
    targets.AtMost("phone 1 wire bytes, Hamlet vs PouchDB", Bytes(h1) / Bytes(p1), 0.5);
    targets.AtMost("phone 1 wall time, Hamlet vs PouchDB", h1.seconds / p1.seconds, 0.5);
    targets.AtMost("new phone's first pull wire bytes, Hamlet vs PouchDB", Bytes(h2) / Bytes(p2), 0.7);
    targets.AtMost("new phone's first pull wall time, Hamlet vs PouchDB", h2.seconds / p2.seconds, 1.0);
    std::printf("  (PouchDB phone 1, bytes with half the connections cut vs none cut: %.2fx)\n",
                Bytes(p1_cut) / Bytes(p1_steady));
  }
  std::printf("\nratios (one run, this machine):\n");
  for (const std::string& line : targets.lines) std::printf("%s\n", line.c_str());
  return 0;
}

}  // namespace hamlet::bench
