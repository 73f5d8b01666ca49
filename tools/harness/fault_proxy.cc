#include "tools/harness/fault_proxy.h"

#include <chrono>
#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "tools/harness/spawn.h"

namespace hamlet::harness {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

std::unique_ptr<FaultProxy> FaultProxy::Start(const std::string& binary, const std::string& prefix,
                                              const std::string& target, const std::vector<std::string>& flags) {
  auto proxy = std::unique_ptr<FaultProxy>(new FaultProxy());
  proxy->log_path_ = prefix + ".log";
  proxy->stats_path_ = prefix + ".stats";
  const std::string ready = prefix + ".ready";
  std::vector<std::string> argv = {binary, "--listen=127.0.0.1:0", "--target=" + target, "--ready_file=" + ready,
                                   "--stats_file=" + proxy->stats_path_};
  argv.insert(argv.end(), flags.begin(), flags.end());
  proxy->pid_ = Spawn(argv, proxy->log_path_);
  if (proxy->pid_ < 0) return nullptr;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string address = Slurp(ready);
    if (!address.empty() && address.back() == '\n') {
      proxy->address_ = address.substr(0, address.size() - 1);
      return proxy;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return nullptr;  // The destructor stops it.
}

std::string FaultProxy::Log() const { return Slurp(log_path_); }

std::map<std::string, uint64_t> FaultProxy::Stats() const {
  std::map<std::string, uint64_t> stats;
  for (absl::string_view item : absl::StrSplit(Slurp(stats_path_), absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    uint64_t value = 0;
    if (absl::SimpleAtoi(kv.second, &value)) stats[kv.first] = value;
  }
  return stats;
}

int FaultProxy::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  const int code = WaitExit(pid_);
  pid_ = -1;
  return code;
}

}  // namespace hamlet::harness
