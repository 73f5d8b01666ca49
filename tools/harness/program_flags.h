// --help for the programs in tools/.
#ifndef HAMLET_TOOLS_HARNESS_PROGRAM_FLAGS_H_
#define HAMLET_TOOLS_HARNESS_PROGRAM_FLAGS_H_

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace hamlet::harness {

// Abseil's --help lists only the flags defined in a file named like the
// program, and these programs' files have an underscore where their names
// have a dash: --help would list nothing. Call before absl::ParseCommandLine
// with the name of the program's source file (e.g. "hamlet_field.cc").
inline void ListFlagsOf(const char* source_file) {
  static const char* file = source_file;
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) { return absl::EndsWith(path, file); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
}

}  // namespace hamlet::harness

#endif  // HAMLET_TOOLS_HARNESS_PROGRAM_FLAGS_H_
