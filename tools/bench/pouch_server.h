// pouchdb-server as a child process (started by tools/bench/pouchdb-server,
// which installs it with npm first): the classic offline-first server that
// hamlet-bench compares Hamlet against.
#ifndef HAMLET_TOOLS_BENCH_POUCH_SERVER_H_
#define HAMLET_TOOLS_BENCH_POUCH_SERVER_H_

#include <sys/types.h>

#include <string>

namespace hamlet::bench {

class PouchServer {
 public:
  // Starts pouchdb-server on a loopback port with its data in `dir`, installed
  // in `install`, and creates the database `database`. Ends the program with
  // a message if it does not come up.
  PouchServer(const std::string& dir, const std::string& install, const std::string& database);
  ~PouchServer();
  PouchServer(const PouchServer&) = delete;
  PouchServer& operator=(const PouchServer&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  // Where pouchdb-server and its npm packages are installed.
  const std::string& install() const { return install_; }

  // tools/bench/<name> in the source tree this program was built from, or
  // relative to the working directory if that tree is not found.
  static std::string ToolPath(const std::string& name);
  // Default install dir: build/pouchdb, next to this program's build dir.
  static std::string DefaultInstall();

 private:
  int port_ = 0;
  pid_t pid_ = -1;
  std::string install_;
};

}  // namespace hamlet::bench

#endif  // HAMLET_TOOLS_BENCH_POUCH_SERVER_H_
