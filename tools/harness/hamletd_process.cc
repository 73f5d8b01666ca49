#include "tools/harness/hamletd_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "sync/uuid.h"
#include "tools/harness/spawn.h"

namespace hamlet::harness {
namespace {

[[noreturn]] void Fail(const std::string& why) {
  std::fprintf(stderr, "%s: %s\n", program_invocation_short_name, why.c_str());
  std::exit(1);
}

// The servers started and not yet killed, by pid, with their data directory.
absl::Mutex running_mu;
std::map<pid_t, std::string>& Running() ABSL_EXCLUSIVE_LOCKS_REQUIRED(running_mu) {
  static auto* running = new std::map<pid_t, std::string>();
  return *running;
}

}  // namespace

std::string DeadServers() {
  absl::MutexLock lock(&running_mu);
  std::string dead;
  for (const auto& [pid, dir] : Running()) {
    if (const std::optional<Ending> ended = EndedByItself(pid, dir + ".log")) {
      absl::StrAppend(&dead, "hamletd (pid ", pid, ", data ", dir, ") ", ended->text);
    }
  }
  return dead;
}

std::string ProgramDir() { return std::filesystem::canonical("/proc/self/exe").parent_path().string(); }

Rss RssOf(pid_t pid) {
  Rss rss;
  std::istringstream status(ReadFile(absl::StrCat("/proc/", pid, "/status")));
  for (std::string line; std::getline(status, line);) {
    double kb = 0;
    const auto value = [&](absl::string_view prefix) {
      std::vector<std::string> parts =
          absl::StrSplit(line.substr(prefix.size()), absl::ByAnyChar(" \t"), absl::SkipEmpty());
      return !parts.empty() && absl::SimpleAtod(parts[0], &kb);
    };
    if (absl::StartsWith(line, "VmHWM:") && value("VmHWM:")) rss.peak_mib = kb / 1024;
    if (absl::StartsWith(line, "VmRSS:") && value("VmRSS:")) rss.now_mib = kb / 1024;
  }
  return rss;
}

Hamletd::Hamletd(const std::string& binary, const std::string& dir, const std::vector<std::string>& extra_flags)
    : dir_(dir) {
  const std::string ready = dir + ".ready";
  std::remove(ready.c_str());  // A restart on the same data must not read the last run's ports.
  std::vector<std::string> argv = {binary,
                                   "--listen=127.0.0.1:0",
                                   "--admin_listen=127.0.0.1:0",
                                   "--metrics_listen=",
                                   "--data_dir=" + dir,
                                   "--ready_file=" + ready,
                                   "--max_batch_records=500"};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  pid_ = Spawn(argv, dir + ".log");
  if (pid_ < 0) Fail("cannot start " + binary);
  {
    absl::MutexLock lock(&running_mu);
    Running()[pid_] = dir;
  }
  for (int i = 0; i < 600; ++i) {
    std::vector<std::string> lines = absl::StrSplit(ReadFile(ready), '\n');
    if (lines.size() == 4) {
      address_ = lines[0];
      admin_ = hamlet::v1::AdminService::NewStub(grpc::CreateChannel(lines[1], grpc::InsecureChannelCredentials()));
      token_ = ReadFile(dir + "/admin.token");
      token_.erase(token_.find_last_not_of('\n') + 1);
      return;
    }
    if (const std::optional<Ending> ended = EndedByItself(pid_, dir + ".log")) {
      Fail("hamletd " + ended->text);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  Fail("hamletd did not come up in 30 s; see " + dir + ".log");
}

Hamletd::~Hamletd() { Kill(); }

void Hamletd::Kill() {
  if (pid_ < 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  absl::MutexLock lock(&running_mu);
  Running().erase(pid_);
  pid_ = -1;
}

Device Hamletd::Enroll(hamlet::v1::Role role, const std::string& unit) {
  absl::BitGen gen;
  hamlet::v1::EnrollDeviceRequest request;
  request.set_device_id(sync::NewUuid(gen));
  request.set_person_id(absl::StrCat("harness-", request.device_id().substr(0, 8)));
  request.set_role(role);
  request.set_unit_code(unit);
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + token_);
  hamlet::v1::EnrollDeviceResponse response;
  const grpc::Status status = admin_->EnrollDevice(&context, request, &response);
  if (!status.ok()) Fail("enrolment: " + status.error_message());
  return {response.device_id(), response.token(), unit, request.person_id()};
}

std::vector<Device> Hamletd::EnrollMembers(int n) {
  std::vector<Device> members;
  for (int i = 0; i < n; ++i) {
    members.push_back(Enroll(hamlet::v1::ROLE_MEMBER, absl::StrFormat("07132-K%02d", 1 + i % 12)));
  }
  return members;
}

double Hamletd::ReportMs() {
  std::vector<double> times;
  for (int i = 0; i < 5; ++i) {
    hamlet::v1::GetReportRequest request;
    request.set_unit_code("206");
    request.set_from_date("2026-01-01");
    request.set_to_date("2026-12-31");
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + token_);
    hamlet::v1::GetReportResponse response;
    const auto t0 = std::chrono::steady_clock::now();
    if (!admin_->GetReport(&context, request, &response).ok()) Fail("report failed");
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[2];
}

}  // namespace hamlet::harness
