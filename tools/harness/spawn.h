// Starting a helper program that cannot outlive the program that started it.
#ifndef HAMLET_TOOLS_HARNESS_SPAWN_H_
#define HAMLET_TOOLS_HARNESS_SPAWN_H_

#include <sys/types.h>

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

// Waits for child `pid` to end; returns its exit code, or 128 + the signal
// that ended it.
int WaitExit(pid_t pid);

}  // namespace hamlet::harness

#endif  // HAMLET_TOOLS_HARNESS_SPAWN_H_
