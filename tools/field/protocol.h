#ifndef HAMLET_TOOLS_FIELD_PROTOCOL_H_
#define HAMLET_TOOLS_FIELD_PROTOCOL_H_

#include <functional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace hamlet::field {

// How a client calls a Hamlet server: shared by the reference device client
// (FieldDevice) and a server replicating to its upstream.

// How hard one call is tried.
struct RetryPolicy {
  // Deadline of one attempt.
  absl::Duration call_timeout = absl::Seconds(20);
  // Attempts in all when the server is unreachable or overloaded.
  int max_attempts = 8;
  // Sleep before the second attempt; doubled (with ±50% jitter) up to max_backoff.
  absl::Duration first_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
};

struct CallResult {
  grpc::Status status;
  // The hamlet-error-reason trailer (CLOCK_SKEW, CURSOR_INVALIDATED), if any.
  std::string reason;
};

// The server looked at the request and will never take it as it is.
bool Refused(grpc::StatusCode code);
// Worth sending again: the server was unreachable, overloaded or too slow.
bool Retryable(grpc::StatusCode code);
absl::Status FromGrpc(const grpc::Status& status, absl::string_view what);

// Lets another thread end a CallWithRetry early: the attempt in flight is
// cancelled and no other is made. Thread-safe.
class CallCanceller {
 public:
  void Cancel();
  // For CallWithRetry: registers the attempt's context; false once cancelled.
  bool Begin(grpc::ClientContext* context);
  void End();

 private:
  absl::Mutex mu_;
  grpc::ClientContext* current_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

// Runs `call` with a fresh context (deadline, and `token` as a bearer token
// unless empty) until it succeeds, fails for good, runs out of attempts or is
// cancelled (CANCELLED), sleeping with jittered exponential backoff in
// between.
CallResult CallWithRetry(const RetryPolicy& policy, const std::string& token,
                         const std::function<grpc::Status(grpc::ClientContext*)>& call,
                         CallCanceller* canceller = nullptr);

}  // namespace hamlet::field

#endif  // HAMLET_TOOLS_FIELD_PROTOCOL_H_
