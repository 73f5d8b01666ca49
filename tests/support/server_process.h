#ifndef HAMLET_TESTS_SUPPORT_SERVER_PROCESS_H_
#define HAMLET_TESTS_SUPPORT_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "tools/harness/spawn.h"

namespace hamlet::testing {

// Runs a program as a child process that dies with the test, and waits for
// one to end; reads a file whole (see tools/harness/spawn.h).
using harness::ReadFile;
using harness::Spawn;
using harness::WaitExit;

// The real hamletd binary, started on a free loopback port.
class ServerProcess {
 public:
  // Starts hamletd with its data in `data_dir` plus `flags`, and waits (up to 20
  // s) until it listens. Returns nullptr if it did not come up; its log says why.
  static std::unique_ptr<ServerProcess> Start(const std::string& data_dir, std::vector<std::string> flags = {});
  // Kills the server if it still runs. A server that crashed by itself (a
  // signal: a failed check, or a sanitizer's report) fails the test, with the
  // end of its log; so do Kill() and Stop().
  ~ServerProcess();

  // The device listener.
  const std::string& address() const { return address_; }
  // The admin listener.
  const std::string& admin_address() const { return admin_address_; }
  // The Prometheus endpoint (GET /metrics).
  const std::string& metrics_address() const { return metrics_address_; }
  // The value of the metric line that starts with `series` (a name with its
  // labels, as exposed: `name{label="value"}`), or -1 if there is none.
  double Metric(const std::string& series) const;
  // The admin token the server wrote into its data dir.
  std::string admin_token() const;
  const std::string& log_path() const { return log_path_; }
  std::string Log() const { return ReadFile(log_path_); }
  // The server's process id while it runs (for /proc), else -1.
  pid_t pid() const { return pid_; }

  // SIGKILL, as a crash or power cut would.
  void Kill();
  // SIGTERM; returns the exit code.
  int Stop();

 private:
  // Fails the test if the server crashed by itself.
  void ExpectNotCrashed() const;

  pid_t pid_ = -1;
  std::string address_;
  std::string admin_address_;
  std::string metrics_address_;
  std::string data_dir_;
  std::string log_path_;
};

}  // namespace hamlet::testing

#endif  // HAMLET_TESTS_SUPPORT_SERVER_PROCESS_H_
