// The real hamletd as a child process, for the tools that drive it from
// outside: hamlet-bench (load) and hamlet-crashtest (SIGKILL loops). Tests use
// tests/support/server_process.h, which reports through GoogleTest instead.
//
// These are tool harnesses: a server that does not come up ends the program
// with a message naming its log.
#ifndef HAMLET_TOOLS_HARNESS_HAMLETD_PROCESS_H_
#define HAMLET_TOOLS_HARNESS_HAMLETD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "hamlet/v1/admin.grpc.pb.h"
#include "tools/harness/spawn.h"

namespace hamlet::harness {

// Directory of the running program (to find hamletd beside it in the build).
std::string ProgramDir();

// Peak and current resident set of a process, in MiB, from /proc.
struct Rss {
  double peak_mib = 0;
  double now_mib = 0;
};
Rss RssOf(pid_t pid);

// How each hamletd this program started and has not killed ended, if it did:
// its exit code or signal, and the end of its log (from a sanitizer's report
// when there is one). Empty while they all run. For a tool's failure message:
// a call refused with "Connection reset by peer" usually means the server died.
// Thread-safe.
std::string DeadServers();

// An enrolled device: what a phone keeps after enrolment.
struct Device {
  std::string id;
  std::string token;
  std::string unit;
  std::string person;  // The person id it was enrolled for.
};

// hamletd on loopback ports (device, admin) with its data in `dir`, its log in
// `dir`.log and no metrics listener. Destroying it kills the process with
// SIGKILL, and so does the end of this program (harness::Spawn). Not
// thread-safe.
class Hamletd {
 public:
  Hamletd(const std::string& binary, const std::string& dir, const std::vector<std::string>& extra_flags = {});
  ~Hamletd();
  Hamletd(const Hamletd&) = delete;
  Hamletd& operator=(const Hamletd&) = delete;

  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }

  // SIGKILL, as a power cut or the kernel's OOM killer would end it, and waits.
  void Kill();

  Device Enroll(hamlet::v1::Role role, const std::string& unit);
  // `n` members spread over the twelve villages of commune 07132.
  std::vector<Device> EnrollMembers(int n);
  // Milliseconds for the town's report over 2026 (median of 5).
  double ReportMs();

 private:
  std::string dir_;
  pid_t pid_ = -1;
  std::string address_;
  std::string token_;
  std::unique_ptr<hamlet::v1::AdminService::Stub> admin_;
};

}  // namespace hamlet::harness

#endif  // HAMLET_TOOLS_HARNESS_HAMLETD_PROCESS_H_
