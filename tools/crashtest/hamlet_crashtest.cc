// hamlet-crashtest: kills the real hamletd with SIGKILL at random moments while
// devices push, restarts it on the same data, and checks it against an oracle
// of what was acknowledged. docs/RELIABILITY.md records the long runs.
//
// Each cycle: start hamletd on the data dir (the restart must open it without
// repair), check, let D devices push for a random time, SIGKILL it.
//
// Each device pushes batches of new mediation cases plus edits of its own
// earlier cases, one batch at a time, as a phone empties its outbox. A batch
// whose push returned OK is acknowledged; one cut off by the kill is pending:
// the device sends it again, same batch id and content, after the restart.
//
// The check after every restart, before any device pushes:
//  1. Acknowledged: for every device, the server holds exactly the records the
//     device's acknowledged batches wrote, each with the body of its latest
//     acknowledged edit; or, if a batch was pending, exactly that state with
//     the whole pending batch applied. Anything else (a lost acknowledged
//     batch, a pending batch half applied, a record no batch wrote) fails.
//  2. Nothing doubled: a pull from the beginning returns each record once.
//  3. Cursors hold: a reader pulling on from its cursor of the previous cycle
//     ends with the same records as the pull from the beginning.
// A retried pending batch must be answered OK (idempotent by batch id).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "sync/merge.h"
#include "sync/uuid.h"
#include "tools/harness/hamletd_process.h"
#include "tools/harness/program_flags.h"

ABSL_FLAG(int, cycles, 30, "Kill and restart cycles.");
ABSL_FLAG(int, devices, 4, "Devices pushing at once, each on its own connection.");
ABSL_FLAG(int, new_per_batch, 3, "New cases in each batch.");
ABSL_FLAG(int, edits_per_batch, 2, "Edits of the device's earlier cases in each batch.");
ABSL_FLAG(int, min_run_ms, 50, "Shortest time between the server being ready and the kill.");
ABSL_FLAG(int, max_run_ms, 700, "Longest time between the server being ready and the kill.");
ABSL_FLAG(int, fresh_every, 100,
          "Start on a new data dir every this many cycles, so that checks (a full pull) stay fast in long runs.");
ABSL_FLAG(uint64_t, seed, 0, "Seed for kill times and edits; 0 picks one (printed, to repeat a run).");
ABSL_FLAG(std::string, hamletd, "", "Path of hamletd (default: ../server/hamletd next to this program).");
ABSL_FLAG(std::string, work_dir, "",
          "Directory for the data (default: a new directory under /tmp, removed if all pass).");

namespace hamlet::crashtest {
namespace {

using google::protobuf::util::MessageDifferencer;
using google::protobuf::util::TimeUtil;
using hamlet::v1::PushRequest;
using hamlet::v1::Record;
using harness::Device;
using harness::Hamletd;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// What the server must hold of one device's records: id -> latest body.
using DeviceState = std::map<std::string, hamlet::v1::MediationCase>;

void Apply(const PushRequest& batch, DeviceState* state) {
  for (const Record& change : batch.changes()) {
    hamlet::v1::MediationCase& body = (*state)[change.id()];
    if (change.has_create_time()) {
      body = change.mediation_case();
    } else {
      body.set_summary(change.mediation_case().summary());
    }
  }
}

// One simulated phone: its enrolment, what it knows was acknowledged, and the
// batch it is still sending, if any.
class Phone {
 public:
  Phone(Device device, uint64_t seed) : device_(std::move(device)), gen_(std::seed_seq{seed}) {}

  const Device& device() const { return device_; }
  const DeviceState& acknowledged() const { return acknowledged_; }
  const std::optional<PushRequest>& pending() const { return pending_; }
  uint64_t acked_batches() const { return acked_batches_; }

  // Pushes until `stop` or until the server is gone. Returns an error message
  // if the server answered something a correct server never answers here.
  std::string PushUntilGone(const std::string& address, const std::atomic<bool>& stop) {
    grpc::ChannelArguments args;
    args.SetInt("hamlet.crashtest.device", static_cast<int>(std::hash<std::string>()(device_.id) & 0x7fffffff));
    auto stub =
        hamlet::v1::SyncService::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
    while (!stop.load()) {
      if (!pending_) pending_ = NextBatch();
      grpc::ClientContext context;
      context.AddMetadata("authorization", "Bearer " + device_.token);
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      hamlet::v1::PushResponse response;
      const grpc::Status status = stub->Push(&context, *pending_, &response);
      if (status.ok()) {
        Apply(*pending_, &acknowledged_);
        pending_.reset();
        ++acked_batches_;
        std::this_thread::sleep_for(std::chrono::milliseconds(absl::Uniform(gen_, 0, 8)));
        continue;
      }
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
          status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
          status.error_code() == grpc::StatusCode::CANCELLED) {
        return "";  // The server was killed: keep the batch, send it again after the restart.
      }
      return absl::StrCat("device ", device_.id, " batch ", pending_->batch_id(), ": ", status.error_code(), " ",
                          status.error_message());
    }
    return "";
  }

 private:
  hamlet::v1::Stamp NextStamp() {
    const int64_t now = NowMs();
    if (now > last_ms_) {
      last_ms_ = now;
      logical_ = 0;
    } else {
      ++logical_;
    }
    hamlet::v1::Stamp stamp;
    stamp.set_physical_ms(last_ms_);
    stamp.set_logical(logical_);
    stamp.set_node(device_.id);
    return stamp;
  }

  PushRequest NextBatch() {
    PushRequest batch;
    batch.set_device_id(device_.id);
    batch.set_batch_id(sync::NewUuid(gen_));
    const hamlet::v1::Stamp stamp = NextStamp();
    for (int i = 0; i < absl::GetFlag(FLAGS_new_per_batch); ++i) {
      Record* r = batch.add_changes();
      r->set_id(sync::NewUuid(gen_));
      r->set_unit_code(device_.unit);
      r->set_author(device_.id);
      *r->mutable_create_time() = TimeUtil::MillisecondsToTimestamp(stamp.physical_ms());
      r->set_sensitivity(hamlet::v1::SENSITIVITY_CONFIDENTIAL);
      auto* c = r->mutable_mediation_case();
      c->set_date_received("2026-11-30");
      c->set_dispute_type(hamlet::v1::DISPUTE_TYPE_LAND);
      c->set_summary(absl::StrCat("created in batch ", batch.batch_id()));
      c->set_status(hamlet::v1::MEDIATION_STATUS_RECEIVED);
      c->set_round(1);
      for (uint32_t field :
           {hamlet::v1::MediationCase::kDateReceivedFieldNumber, hamlet::v1::MediationCase::kDisputeTypeFieldNumber,
            hamlet::v1::MediationCase::kSummaryFieldNumber, hamlet::v1::MediationCase::kStatusFieldNumber,
            hamlet::v1::MediationCase::kRoundFieldNumber, hamlet::v1::MediationCase::kOutcomeFieldNumber}) {
        sync::SetFieldStamp(r, field, stamp);
      }
    }
    // Edits of earlier acknowledged cases, never of one in this batch.
    std::vector<std::string> ids;
    for (const auto& [id, body] : acknowledged_) ids.push_back(id);
    for (int i = 0; i < absl::GetFlag(FLAGS_edits_per_batch) && !ids.empty(); ++i) {
      const size_t pick = absl::Uniform<size_t>(gen_, 0, ids.size());
      Record* r = batch.add_changes();
      r->set_id(ids[pick]);
      r->set_unit_code(device_.unit);
      r->mutable_mediation_case()->set_summary(absl::StrCat("edited in batch ", batch.batch_id()));
      sync::SetFieldStamp(r, hamlet::v1::MediationCase::kSummaryFieldNumber, stamp);
      ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(pick));
    }
    return batch;
  }

  Device device_;
  absl::BitGen gen_;
  DeviceState acknowledged_;
  std::optional<PushRequest> pending_;
  uint64_t acked_batches_ = 0;
  int64_t last_ms_ = 0;
  uint32_t logical_ = 0;
};

// A town officer's view: pulls from a cursor it keeps across restarts.
class Reader {
 public:
  explicit Reader(Device device) : device_(std::move(device)) {}

  // Pulls from `cursor` until caught up into `records` (id -> record);
  // counts each id returned more than once in one pull from the beginning.
  std::string Pull(const std::string& address, std::string* cursor, std::map<std::string, Record>* records,
                   int* doubled) const {
    auto stub = hamlet::v1::SyncService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    std::map<std::string, int> seen;
    for (;;) {
      hamlet::v1::PullRequest request;
      request.set_device_id(device_.id);
      request.set_cursor(*cursor);
      request.set_page_size(5000);
      request.set_max_page_bytes(4 << 20);
      grpc::ClientContext context;
      context.AddMetadata("authorization", "Bearer " + device_.token);
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      hamlet::v1::PullResponse response;
      const grpc::Status status = stub->Pull(&context, request, &response);
      if (!status.ok()) return absl::StrCat("pull: ", status.error_code(), " ", status.error_message());
      for (const Record& r : response.records()) {
        if (r.body_case() != Record::kMediationCase) continue;
        if (++seen[r.id()] == 2 && doubled != nullptr) ++*doubled;
        (*records)[r.id()] = r;
      }
      *cursor = response.next_cursor();
      if (response.remaining() == 0) return "";
    }
  }

 private:
  Device device_;
};

// Check 1 for one phone; "" if the server's records are its acknowledged
// state, or that state with its whole pending batch applied.
std::string CheckPhone(const Phone& phone, const std::map<std::string, Record>& server, bool* pending_applied) {
  DeviceState with_pending = phone.acknowledged();
  if (phone.pending()) Apply(*phone.pending(), &with_pending);
  const auto matches = [&](const DeviceState& expected) -> std::string {
    for (const auto& [id, body] : with_pending) {
      const auto found = server.find(id);
      const auto want = expected.find(id);
      if (want == expected.end()) {
        if (found != server.end()) return absl::StrCat("record ", id, " is present but no acknowledged batch wrote it");
        continue;
      }
      if (found == server.end()) return absl::StrCat("record ", id, " is missing");
      if (!MessageDifferencer::Equals(found->second.mediation_case(), want->second)) {
        return absl::StrCat("record ", id, " has summary \"", found->second.mediation_case().summary(),
                            "\", expected \"", want->second.summary(), "\"");
      }
    }
    return "";
  };
  const std::string acked_only = matches(phone.acknowledged());
  *pending_applied = false;
  if (acked_only.empty()) return "";
  if (!phone.pending()) return absl::StrCat("device ", phone.device().id, ": ", acked_only);
  const std::string applied = matches(with_pending);
  if (applied.empty()) {
    *pending_applied = true;
    return "";
  }
  return absl::StrCat("device ", phone.device().id, " (pending batch ", phone.pending()->batch_id(),
                      "): neither the acknowledged state (", acked_only, ") nor it with the pending batch applied (",
                      applied, ")");
}

struct Totals {
  int kills = 0;
  uint64_t acked_batches = 0;
  int pending_at_kill = 0;
  int pending_found_applied = 0;
};

// The checks on the state a kill left (see the top of this file); the
// failures found, none if all hold.
std::vector<std::string> Check(const std::string& address, const std::vector<std::unique_ptr<Phone>>& phones,
                               const Reader& reader, std::string* reader_cursor,
                               std::map<std::string, Record>* reader_view, Totals* totals, size_t* records) {
  std::vector<std::string> failures;
  std::map<std::string, Record> full;
  std::string cursor;
  int doubled = 0;
  if (std::string e = reader.Pull(address, &cursor, &full, &doubled); !e.empty()) failures.push_back(e);
  if (doubled > 0) failures.push_back(absl::StrCat(doubled, " records pulled twice from the beginning"));
  if (std::string e = reader.Pull(address, reader_cursor, reader_view, nullptr); !e.empty()) {
    failures.push_back("resumed " + e);
  }
  if (reader_view->size() != full.size()) {
    failures.push_back(absl::StrCat("the reader pulling on from its cursor holds ", reader_view->size(),
                                    " cases, a pull from the beginning ", full.size()));
  } else {
    for (const auto& [id, record] : full) {
      if (!MessageDifferencer::Equals((*reader_view)[id], record)) {
        failures.push_back(absl::StrCat("record ", id, " differs between the resumed pull and a full pull"));
        break;
      }
    }
  }
  size_t expected = 0;
  for (const auto& phone : phones) {
    bool applied = false;
    if (std::string e = CheckPhone(*phone, full, &applied); !e.empty()) failures.push_back(e);
    DeviceState state = phone->acknowledged();
    if (applied) {
      ++totals->pending_found_applied;
      Apply(*phone->pending(), &state);
    }
    expected += state.size();
  }
  if (full.size() != expected) {
    failures.push_back(absl::StrCat("the server holds ", full.size(), " cases, the devices wrote ", expected));
  }
  *records = full.size();
  return failures;
}

int Run() {
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (seed == 0) seed = absl::Uniform<uint64_t>(absl::BitGen(), 1, UINT64_MAX);
  absl::BitGen gen(std::seed_seq{seed});
  std::string hamletd = absl::GetFlag(FLAGS_hamletd);
  if (hamletd.empty()) hamletd = harness::ProgramDir() + "/../server/hamletd";
  std::string work = absl::GetFlag(FLAGS_work_dir);
  const bool own_work = work.empty();
  if (own_work) {
    std::string pattern = "/tmp/hamlet-crashtest-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      std::perror("mkdtemp");
      return 2;
    }
    work = pattern;
  }
  std::filesystem::create_directories(work);
  const int cycles = absl::GetFlag(FLAGS_cycles);
  const int fresh_every = std::max(1, absl::GetFlag(FLAGS_fresh_every));
  const int min_ms = absl::GetFlag(FLAGS_min_run_ms);
  const int max_ms = std::max(min_ms, absl::GetFlag(FLAGS_max_run_ms));
  std::printf("hamlet-crashtest: %d cycles, %d devices, seed %llu, data in %s\n", cycles, absl::GetFlag(FLAGS_devices),
              static_cast<unsigned long long>(seed), work.c_str());
  const auto fail = [&](int cycle, const std::vector<std::string>& failures) {
    for (const std::string& f : failures) std::fprintf(stderr, "FAIL after kill %d: %s\n", cycle, f.c_str());
    std::fprintf(stderr, "hamlet-crashtest: failed; repeat with --seed=%llu; data and logs kept in %s\n",
                 static_cast<unsigned long long>(seed), work.c_str());
    return 1;
  };

  Totals totals;
  std::vector<std::unique_ptr<Phone>> phones;
  std::unique_ptr<Reader> reader;
  std::string reader_cursor;
  std::map<std::string, Record> reader_view;
  std::string dir;
  const auto started = std::chrono::steady_clock::now();
  // Cycle n checks what kill n-1 left; the last start only checks.
  for (int cycle = 0; cycle <= cycles; ++cycle) {
    if (cycle % fresh_every == 0 && cycle < cycles) {
      if (!phones.empty()) {  // Check the old data's last kill before moving on.
        Hamletd last(hamletd, dir);
        size_t records = 0;
        if (auto f = Check(last.address(), phones, *reader, &reader_cursor, &reader_view, &totals, &records);
            !f.empty()) {
          return fail(cycle, f);
        }
      }
      dir = absl::StrFormat("%s/data-%04d", work, cycle);
      phones.clear();
    }
    Hamletd server(hamletd, dir);  // Exits with a message if the data does not open.
    size_t records = 0;
    if (phones.empty()) {
      uint64_t n = 0;
      for (const Device& d : server.EnrollMembers(absl::GetFlag(FLAGS_devices))) {
        phones.push_back(std::make_unique<Phone>(d, seed ^ (static_cast<uint64_t>(cycle) << 32 | ++n)));
      }
      reader = std::make_unique<Reader>(server.Enroll(hamlet::v1::ROLE_TOWN_OFFICER, "206"));
      reader_cursor.clear();
      reader_view.clear();
    } else if (auto f = Check(server.address(), phones, *reader, &reader_cursor, &reader_view, &totals, &records);
               !f.empty()) {
      return fail(cycle, f);
    }
    if (cycle == cycles) break;

    // Push until the kill.
    const int run_ms = absl::Uniform<int>(absl::IntervalClosed, gen, min_ms, max_ms);
    uint64_t acked_before = 0;
    for (const auto& phone : phones) acked_before += phone->acked_batches();
    std::atomic<bool> stop{false};
    std::mutex errors_mu;
    std::vector<std::string> errors;
    std::vector<std::thread> pushers;
    for (auto& phone : phones) {
      pushers.emplace_back([&, p = phone.get()] {
        std::string e = p->PushUntilGone(server.address(), stop);
        if (e.empty()) return;
        std::lock_guard<std::mutex> lock(errors_mu);
        errors.push_back(std::move(e));
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(run_ms));
    server.Kill();
    stop = true;
    for (auto& t : pushers) t.join();
    if (!errors.empty()) return fail(cycle, errors);
    int pending = 0;
    uint64_t acked = 0;
    for (const auto& phone : phones) {
      pending += phone->pending() ? 1 : 0;
      acked += phone->acked_batches();
    }
    ++totals.kills;
    totals.acked_batches += acked - acked_before;
    totals.pending_at_kill += pending;
    std::printf(
        "kill %4d after %3d ms: %6zu cases held before it; %4llu batches acknowledged in this run, %d cut off\n", cycle,
        run_ms, records, static_cast<unsigned long long>(acked - acked_before), pending);
    std::fflush(stdout);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf(
      "hamlet-crashtest: PASS: %d SIGKILLs in %.0f s, %llu batches acknowledged; every restart opened the data; "
      "every acknowledged batch present and identical, none half applied or doubled; %d batches cut off by a kill, "
      "%d of them found committed (acknowledgement lost) and answered OK when sent again\n",
      totals.kills, seconds, static_cast<unsigned long long>(totals.acked_batches), totals.pending_at_kill,
      totals.pending_found_applied);
  if (own_work) std::filesystem::remove_all(work);
  return 0;
}

}  // namespace
}  // namespace hamlet::crashtest

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Kills the real hamletd with SIGKILL at random moments while devices push, restarts it, and checks every "
      "acknowledged batch survived, none was half applied or doubled.\n"
      "  hamlet-crashtest --cycles=30        (what CI runs)\n"
      "  hamlet-crashtest --cycles=1000      (the long run in docs/RELIABILITY.md)");
  hamlet::harness::ListFlagsOf("hamlet_crashtest.cc");
  absl::ParseCommandLine(argc, argv);
  return hamlet::crashtest::Run();
}
