// Starting a helper program that cannot outlive the program that started it.
#ifndef HAMLET_TOOLS_HARNESS_SPAWN_H_
#define HAMLET_TOOLS_HARNESS_SPAWN_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace hamlet::harness {

// Starts argv[0] (a path) with argv, stdin from /dev/null, and stdout and
// stderr appended to `log`; returns its pid, or -1 if it cannot be started.
//
// The child is killed (SIGKILL) when this process ends by any path: a failed
// check's exit(), an abort, a sanitizer's report, or SIGKILL. Tests and tools
// therefore never leave a server running after they fail. Thread-safe.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log);

// The whole file (a child's log, say), or "" if it cannot be read.
std::string ReadFile(const std::string& path);

// Waits for child `pid` to end; returns its exit code, or 128 + the signal
// that ended it.
int WaitExit(pid_t pid);

// How a child ended by itself.
struct Ending {
  bool crashed = false;  // Killed by a signal (an abort: a failed check, a sanitizer's report).
  std::string text;      // How it ended, and the end of its log.
};

// Nothing while child `pid` runs (or once it has been waited for). Once it has
// ended by itself: its exit code or signal and the end of `log`, from a
// sanitizer's first report when there is one. The child is not reaped, so a
// later WaitExit() or kill() still names it.
std::optional<Ending> EndedByItself(pid_t pid, const std::string& log);

}  // namespace hamlet::harness

#endif  // HAMLET_TOOLS_HARNESS_SPAWN_H_
