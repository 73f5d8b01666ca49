// `hamlet-bench --mode=field`: Hamlet and PouchDB over the same shaped link
// (hamlet-faultproxy: bandwidth, delay, cuts), the same documents, in one run.
// docs/BENCHMARKS.md ("Field link") records a run and reads it.
#ifndef HAMLET_TOOLS_BENCH_FIELD_BENCH_H_
#define HAMLET_TOOLS_BENCH_FIELD_BENCH_H_

#include <cstdint>
#include <string>
#include <vector>

namespace hamlet::bench {

struct FieldBenchOptions {
  std::string hamletd;     // Binaries of this build.
  std::string field;       // hamlet-field
  std::string faultproxy;  // hamlet-faultproxy
  std::string work;        // Where the servers, phones and logs go.
  bool pouchdb = true;     // Also measure PouchDB (npm install on first use).
  std::string pouchdb_install;
  // The week of work phone 1 recorded offline.
  int cases = 360, tips = 140, edits = 170;
  // The link both systems go through (hamlet-faultproxy flags): 100 kbit/s
  // each way, 200 ms one way, and a cut in 5% of connections.
  std::vector<std::string> link = {"--rate_kbit=100", "--delay_ms=200", "--cut=0.05"};
  // The same link undisturbed (no cuts), and cutting half of its connections
  // (each within its first 3 s), for what cuts cost phone 1.
  std::vector<std::string> steady_link = {"--rate_kbit=100", "--delay_ms=200"};
  std::vector<std::string> cutting_link = {"--rate_kbit=100", "--delay_ms=200", "--cut=0.5", "--cut_within_ms=3000"};
  uint64_t seed = 1;  // Of the link's faults.
};

// Prints the table and the target ratios; returns the exit code.
int RunFieldBench(const FieldBenchOptions& options);

}  // namespace hamlet::bench

#endif  // HAMLET_TOOLS_BENCH_FIELD_BENCH_H_
