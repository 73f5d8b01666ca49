// Makes gRPC's hand-off of a call's operations visible to ThreadSanitizer.
//
// Debian's libgrpc is not built with TSan. A call's operations are started on
// one thread (grpc_call_start_batch, with a tag) and their completion is taken
// from a completion queue on another (grpc_completion_queue_next or _pluck
// returns the tag), where gRPC runs the tag's callback or hands it to the
// application. gRPC guarantees that everything the starting thread did before
// the start happens before the completion is taken; it keeps that promise with
// locks and atomics inside libgrpc, which TSan cannot see. The per-call
// objects that live in gRPC's headers (compiled into Hamlet, so instrumented)
// are written on the first thread and read on the second, and TSan reported
// each such pair as a race: for instance a callback method's Finish, called
// on Hamlet's commit thread, sets its finish tag, which a gRPC thread then
// runs (docs/RELIABILITY.md, "TSan").
//
// Linked into every executable of a HAMLET_SANITIZE=thread build (with
// -rdynamic), the definitions below take the place of libgrpc's: each calls
// libgrpc's own function and tells TSan about the promise: a release on the
// tag when operations are started or a new call is requested, an acquire on
// the tag when its completion is taken. Nothing else changes: the same calls
// are made in the same order.
//
// Only for sanitizer builds: the build never compiles this file otherwise.

#include <grpc/grpc.h>
#include <sanitizer/tsan_interface.h>

#include "tools/sanitizers/real_symbol.h"

namespace {

using hamlet::sanitizers::Real;

// The completion of `event`'s tag happens after its start.
grpc_event Taken(grpc_event event) {
  if (event.type == GRPC_OP_COMPLETE && event.tag != nullptr) __tsan_acquire(event.tag);
  return event;
}

// Everything before a start happens before its tag completes.
void Started(void* tag) {
  if (tag != nullptr) __tsan_release(tag);
}

}  // namespace

extern "C" {

grpc_call_error grpc_call_start_batch(grpc_call* call, const grpc_op* ops, size_t nops, void* tag, void* reserved) {
  static auto real =
      Real<grpc_call_error (*)(grpc_call*, const grpc_op*, size_t, void*, void*)>("grpc_call_start_batch");
  Started(tag);
  return real(call, ops, nops, tag, reserved);
}

grpc_call_error grpc_server_request_call(grpc_server* server, grpc_call** call, grpc_call_details* details,
                                         grpc_metadata_array* request_metadata, grpc_completion_queue* cq_bound_to_call,
                                         grpc_completion_queue* cq_for_notification, void* tag_new) {
  static auto real =
      Real<grpc_call_error (*)(grpc_server*, grpc_call**, grpc_call_details*, grpc_metadata_array*,
                               grpc_completion_queue*, grpc_completion_queue*, void*)>("grpc_server_request_call");
  Started(tag_new);
  return real(server, call, details, request_metadata, cq_bound_to_call, cq_for_notification, tag_new);
}

grpc_call_error grpc_server_request_registered_call(grpc_server* server, void* registered_method, grpc_call** call,
                                                    gpr_timespec* deadline, grpc_metadata_array* request_metadata,
                                                    grpc_byte_buffer** optional_payload,
                                                    grpc_completion_queue* cq_bound_to_call,
                                                    grpc_completion_queue* cq_for_notification, void* tag_new) {
  static auto real =
      Real<grpc_call_error (*)(grpc_server*, void*, grpc_call**, gpr_timespec*, grpc_metadata_array*,
                               grpc_byte_buffer**, grpc_completion_queue*, grpc_completion_queue*, void*)>(
          "grpc_server_request_registered_call");
  Started(tag_new);
  return real(server, registered_method, call, deadline, request_metadata, optional_payload, cq_bound_to_call,
              cq_for_notification, tag_new);
}

grpc_event grpc_completion_queue_next(grpc_completion_queue* cq, gpr_timespec deadline, void* reserved) {
  static auto real = Real<grpc_event (*)(grpc_completion_queue*, gpr_timespec, void*)>("grpc_completion_queue_next");
  return Taken(real(cq, deadline, reserved));
}

grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag, gpr_timespec deadline, void* reserved) {
  static auto real =
      Real<grpc_event (*)(grpc_completion_queue*, void*, gpr_timespec, void*)>("grpc_completion_queue_pluck");
  return Taken(real(cq, tag, deadline, reserved));
}

}  // extern "C"
