#include "tools/harness/spawn.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>

namespace hamlet::harness {
namespace {

// The parent-death signal follows the thread that forked, not the process:
// every child is forked by this one thread, which lives as long as the
// process, so a child dies with the process and not before.
class Forker {
 public:
  static Forker& Get() {
    static Forker* forker = new Forker();  // Never destroyed: it must outlive every caller.
    return *forker;
  }

  pid_t Fork(std::function<pid_t()> fork) {
    std::packaged_task<pid_t()> task(std::move(fork));
    std::future<pid_t> pid = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    wake_.notify_one();
    return pid.get();
  }

 private:
  Forker() {
    std::thread([this] {
      while (true) {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [this] { return !tasks_.empty(); });
        std::packaged_task<pid_t()> task = std::move(tasks_.front());
        tasks_.pop_front();
        lock.unlock();
        task();
      }
    }).detach();
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::packaged_task<pid_t()>> tasks_;
};

// The part of a log worth showing: from a sanitizer's first report, else the
// last lines.
std::string LogEnd(const std::string& log) {
  for (const char* report :
       {"WARNING: ThreadSanitizer", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"}) {
    if (const size_t at = log.find(report); at != std::string::npos) {
      const size_t line = log.rfind('\n', at);
      return log.substr(line == std::string::npos ? 0 : line + 1, 8000);
    }
  }
  size_t from = log.size();
  for (int lines = 0; lines < 20 && from > 1; ++lines) from = log.rfind('\n', from - 2) + 1;
  return log.substr(from);
}

}  // namespace

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<Ending> EndedByItself(pid_t pid, const std::string& log) {
  siginfo_t info{};
  if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid != pid) {
    return std::nullopt;
  }
  Ending ending;
  ending.crashed = info.si_code != CLD_EXITED;
  std::ostringstream how;
  if (ending.crashed) {
    how << "was killed by signal " << info.si_status << " (" << strsignal(info.si_status) << ")";
  } else {
    how << "exited with code " << info.si_status;
  }
  how << "; its log " << log << " ends:\n" << LogEnd(ReadFile(log)) << "\n";
  ending.text = how.str();
  return ending;
}

pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  return Forker::Get().Fork([&] {
    // posix_spawn cannot ask for a parent-death signal; between fork and exec
    // the child makes only async-signal-safe calls.
    const pid_t pid = fork();
    if (pid != 0) return pid;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);  // The parent is already gone.
    const int out = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    const int in = open("/dev/null", O_RDONLY);
    if (out < 0 || in < 0 || dup2(in, STDIN_FILENO) < 0 || dup2(out, STDOUT_FILENO) < 0 ||
        dup2(out, STDERR_FILENO) < 0) {
      _exit(127);
    }
    execv(args[0], args.data());
    _exit(127);
  });
}

int WaitExit(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace hamlet::harness
