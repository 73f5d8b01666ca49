#ifndef HAMLET_SERVER_HOST_PORT_H_
#define HAMLET_SERVER_HOST_PORT_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hamlet::server {

// "host:port", "[v6]:port" as listeners and clients write them.
struct HostPort {
  std::string host;  // Without the brackets of an IPv6 address.
  int port = 0;
};

// INVALID_ARGUMENT unless `address` is host:port with a port of 0 to 65535.
absl::StatusOr<HostPort> SplitHostPort(absl::string_view address);

// `address`'s host (brackets kept) with `port`: what a listener asked for
// `address` (port 0 for any) actually listens on.
std::string WithPort(absl::string_view address, int port);

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_HOST_PORT_H_
