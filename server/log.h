#ifndef HAMLET_SERVER_LOG_H_
#define HAMLET_SERVER_LOG_H_

#include "absl/strings/string_view.h"

namespace hamlet::server {

// Writes one line to stderr: "2026-11-30T12:00:00.123Z hamletd: <message>".
// Lines from concurrent threads do not interleave. Abseil 20220623 has no
// absl/log; this is the small stand-in.
void LogLine(absl::string_view message);

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_LOG_H_
