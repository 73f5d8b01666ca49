#include "tests/support/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "httplib.h"

namespace hamlet::testing {

std::unique_ptr<ServerProcess> ServerProcess::Start(const std::string& data_dir, std::vector<std::string> flags) {
  auto server = std::unique_ptr<ServerProcess>(new ServerProcess());
  server->log_path_ = data_dir + ".log";
  const std::string ready = data_dir + ".ready";
  unlink(ready.c_str());
  server->data_dir_ = data_dir;
  std::vector<std::string> argv = {HAMLETD_PATH,
                                   "--listen=127.0.0.1:0",
                                   "--admin_listen=127.0.0.1:0",
                                   "--metrics_listen=127.0.0.1:0",
                                   "--data_dir=" + data_dir,
                                   "--ready_file=" + ready};
  // Every test server seals informant identities, with a key next to its data
  // (kept across restarts), unless the test says otherwise.
  const bool key_given = std::any_of(flags.begin(), flags.end(),
                                     [](const std::string& f) { return f.rfind("--sealed_key_file", 0) == 0; });
  if (!key_given) {
    const std::string key_file = data_dir + ".key";
    if (ReadFile(key_file).empty()) {
      std::ofstream key(key_file, std::ios::binary);
      std::ifstream random("/dev/urandom", std::ios::binary);
      char bytes[32];
      random.read(bytes, sizeof(bytes));
      key.write(bytes, sizeof(bytes));
    }
    argv.push_back("--sealed_key_file=" + key_file);
  }
  argv.insert(argv.end(), flags.begin(), flags.end());
  server->pid_ = Spawn(argv, server->log_path_);
  if (server->pid_ < 0) return nullptr;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    // Three lines: the device, admin and metrics addresses.
    const std::vector<std::string> lines = absl::StrSplit(ReadFile(ready), '\n');
    if (lines.size() == 4 && lines[3].empty()) {
      server->address_ = lines[0];
      server->admin_address_ = lines[1];
      server->metrics_address_ = lines[2];
      return server;
    }
    if (waitpid(server->pid_, nullptr, WNOHANG) == server->pid_) {
      server->pid_ = -1;
      return nullptr;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return nullptr;
}

std::string ServerProcess::admin_token() const {
  std::string token = ReadFile(data_dir_ + "/admin.token");
  while (!token.empty() && token.back() == '\n') token.pop_back();
  return token;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Kill();
}

void ServerProcess::ExpectNotCrashed() const {
  if (const std::optional<harness::Ending> ended = harness::EndedByItself(pid_, log_path_); ended && ended->crashed) {
    ADD_FAILURE() << "hamletd " << ended->text;
  }
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  ExpectNotCrashed();
  kill(pid_, SIGKILL);
  WaitExit(pid_);
  pid_ = -1;
}

int ServerProcess::Stop() {
  if (pid_ <= 0) return -1;
  ExpectNotCrashed();
  kill(pid_, SIGTERM);
  const int code = WaitExit(pid_);
  pid_ = -1;
  return code;
}

double ServerProcess::Metric(const std::string& series) const {
  const size_t colon = metrics_address_.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(metrics_address_.substr(colon + 1), &port)) return -1;
  httplib::Client client(metrics_address_.substr(0, colon), port);
  httplib::Result response = client.Get("/metrics");
  if (!response || response->status != 200) return -1;
  for (absl::string_view line : absl::StrSplit(response->body, '\n')) {
    double value = -1;
    if (absl::ConsumePrefix(&line, series + " ") && absl::SimpleAtod(line, &value)) return value;
  }
  return -1;
}

}  // namespace hamlet::testing
