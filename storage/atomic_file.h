#ifndef HAMLET_STORAGE_ATOMIC_FILE_H_
#define HAMLET_STORAGE_ATOMIC_FILE_H_

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace hamlet::storage {

// Writes `content` to `path` through a temporary file renamed over it, so a
// reader sees the old file or the whole new one, never a part; both the file
// and the rename are synced before it returns. The file is
// created with `mode` (less the umask); 0600 keeps a secret from other users
// from the first byte. UNAVAILABLE if it cannot be written.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view content, mode_t mode = 0644);

}  // namespace hamlet::storage

#endif  // HAMLET_STORAGE_ATOMIC_FILE_H_
