// hamlet-faultproxy as a child process: a link with faults or a shape (rate,
// delay, cuts) between a client and a server, and its byte counts. Used by
// the reliability tests and by `hamlet-bench --mode=field`.
#ifndef HAMLET_TOOLS_HARNESS_FAULT_PROXY_H_
#define HAMLET_TOOLS_HARNESS_FAULT_PROXY_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace hamlet::harness {

class FaultProxy {
 public:
  // Starts `binary` (hamlet-faultproxy) in front of `target` with `flags`; its
  // files go to `prefix`.log, .ready and .stats. nullptr if it did not come
  // up within 10 s.
  static std::unique_ptr<FaultProxy> Start(const std::string& binary, const std::string& prefix,
                                           const std::string& target, const std::vector<std::string>& flags);
  ~FaultProxy() { Stop(); }
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  // host:port to connect to instead of the target.
  const std::string& address() const { return address_; }
  std::string Log() const;
  // The counters of the stats file: connections, responses, drops,
  // duplicates, cut_streams, cuts, bytes_up, bytes_down, target_failures.
  std::map<std::string, uint64_t> Stats() const;
  // SIGTERM, and waits; returns the exit code (0 when it stopped cleanly).
  int Stop();

 private:
  FaultProxy() = default;
  pid_t pid_ = -1;
  std::string address_;
  std::string log_path_;
  std::string stats_path_;
};

}  // namespace hamlet::harness

#endif  // HAMLET_TOOLS_HARNESS_FAULT_PROXY_H_
