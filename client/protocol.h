#ifndef HAMLET_CLIENT_PROTOCOL_H_
#define HAMLET_CLIENT_PROTOCOL_H_

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
  // Deadline of one attempt (of calls whose size is not paced: see LinkPace).
  absl::Duration call_timeout = absl::Seconds(20);
  // Attempts in all when the server is unreachable or overloaded.
  int max_attempts = 8;
  // Sleep before the second attempt; doubled (with ±50% jitter) up to max_backoff.
  absl::Duration first_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  // Whether an attempt that ran out of time is tried again as it is. A caller
  // that can make the call smaller (LinkPace) takes the timeout back instead.
  enum class OnDeadline { kRetry, kReturn };
  OnDeadline on_deadline = OnDeadline::kRetry;
};

// What the link to the server has shown it can carry, and so how many bytes
// the next call may move and how long to wait for it. A phone's link may be
// anything from 2G (about 30 kbit/s, 300 ms each way) to a LAN; this starts
// small and assumes the slow end, grows the calls while they finish quickly,
// and halves them when one times out. A deadline follows the call's size and
// the rate measured so far, never a fixed time a slow link cannot meet.
//
// Sizes are of the messages as serialized, before gRPC compresses them, so a
// rate is in those bytes too. Not thread-safe.
class LinkPace {
 public:
  struct Options {
    // Bytes the first call may move, and the bounds of every later one.
    size_t first_bytes = 16 << 10;
    size_t min_bytes = 2 << 10;
    size_t max_bytes = 1 << 20;
    // A call that took less than this makes the next one twice as big; one
    // that took more than four times this, half as big.
    absl::Duration quick = absl::Seconds(2);
    // Allowed on top of the transfer for round trips, connecting and the
    // server's work (its sync to disk). Doubled by each timeout (bytes a
    // cancelled call already sent still drain through the link's buffers
    // ahead of the next call), up to max_overhead, and halved back by each
    // call that finishes.
    absl::Duration overhead = absl::Seconds(10);
    absl::Duration max_overhead = absl::Minutes(2);
    // A deadline allows this many times the transfer time at the rate known.
    double slack = 3;
    // The rate assumed before a call was measured, in bytes a second (about
    // 16 kbit/s).
    double assumed_bytes_per_second = 2000;
  };
  LinkPace() : LinkPace(Options()) {}
  explicit LinkPace(const Options& options);

  // How many bytes the next call may move.
  size_t budget_bytes() const { return budget_; }
  // The deadline of a call moving `bytes`.
  absl::Duration DeadlineFor(size_t bytes) const;
  // The rate measured so far (0 before the first call finished).
  double bytes_per_second() const { return rate_; }

  void Finished(size_t bytes, absl::Duration took);
  void TimedOut();

 private:
  Options options_;
  size_t budget_;
  double rate_ = 0;
  absl::Duration overhead_;
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

#endif  // HAMLET_CLIENT_PROTOCOL_H_
