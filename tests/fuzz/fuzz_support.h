#ifndef HAMLET_TESTS_FUZZ_FUZZ_SUPPORT_H_
#define HAMLET_TESTS_FUZZ_FUZZ_SUPPORT_H_

// Shared by the libFuzzer targets in this folder. A broken promise is reported
// on stderr and stops the process with __builtin_trap(), which libFuzzer
// records as a crash and saves the input of.

#include <cstdio>
#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/stubs/logging.h"
#include "sync/units.h"

namespace hamlet::fuzz {

[[noreturn]] inline void Violation(absl::string_view promise, absl::string_view detail = "") {
  std::fprintf(stderr, "\n*** broken promise: %.*s\n%.*s\n", static_cast<int>(promise.size()), promise.data(),
               static_cast<int>(detail.size()), detail.data());
  std::fflush(stderr);
  __builtin_trap();
}

inline void Check(bool holds, absl::string_view promise, absl::string_view detail = "") {
  if (!holds) Violation(promise, detail);
}

// The status is OK or has one of `codes`: what the function's header says it
// returns on bad input.
inline void CheckCode(const absl::Status& status, std::initializer_list<absl::StatusCode> codes,
                      absl::string_view function) {
  if (status.ok()) return;
  for (absl::StatusCode code : codes) {
    if (status.code() == code) return;
  }
  Violation(std::string(function) + " returned a status code its header does not promise", status.ToString());
}

// Protobuf logs every string field with invalid UTF-8 it refuses to parse:
// noise, and time, when the bytes are random. Called from each target's
// LLVMFuzzerInitialize.
inline void SilenceProtobufLogs() { google::protobuf::SetLogHandler(nullptr); }

// The reference admin units (sync/units.h), as a server starts with them.
inline const sync::UnitDirectory& ReferenceDirectory() {
  static const sync::UnitDirectory* units = [] {
    auto* directory = new sync::UnitDirectory();
    for (const auto& unit : sync::ReferenceUnits()) directory->Put(unit);
    return directory;
  }();
  return *units;
}

}  // namespace hamlet::fuzz

#endif  // HAMLET_TESTS_FUZZ_FUZZ_SUPPORT_H_
