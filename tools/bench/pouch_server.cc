#include "tools/bench/pouch_server.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <httplib.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tools/harness/hamletd_process.h"

namespace hamlet::bench {

std::string PouchServer::ToolPath(const std::string& name) {
  const std::string beside = harness::ProgramDir() + "/../../tools/bench/" + name;
  return std::filesystem::exists(beside) ? beside : "tools/bench/" + name;
}

std::string PouchServer::DefaultInstall() { return harness::ProgramDir() + "/../pouchdb"; }

PouchServer::PouchServer(const std::string& dir, const std::string& install, const std::string& database)
    : install_(install) {
  static int servers = 0;
  port_ = 20000 + static_cast<int>((getpid() + 7919 * servers++) % 20000);
  const std::string out = dir + ".pid";
  const int rc = std::system(
      absl::StrCat("'", ToolPath("pouchdb-server"), "' ", port_, " '", dir, "' '", install, "' > '", out, "'").c_str());
  if (rc != 0 || !absl::SimpleAtoi(absl::StripAsciiWhitespace(harness::ReadFile(out)), &pid_)) {
    std::fprintf(stderr,
                 "hamlet-bench: pouchdb-server did not start (see %s/server.out); run with --pouchdb=false "
                 "to skip it\n",
                 dir.c_str());
    std::exit(1);
  }
  httplib::Client client("127.0.0.1", port_);
  auto created = client.Put("/" + database, "", "application/json");
  if (!created || created->status / 100 != 2) {
    std::fprintf(stderr, "hamlet-bench: pouchdb-server: cannot create the database %s\n", database.c_str());
    std::exit(1);
  }
}

PouchServer::~PouchServer() {
  kill(pid_, SIGTERM);
  waitpid(pid_, nullptr, 0);
}

}  // namespace hamlet::bench
