#include "server/sync_service.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/io/coded_stream.h"
#include "server/log.h"
#include "sync/status_macros.h"

namespace hamlet::server {

grpc::Status ToGrpc(const absl::Status& status, grpc::ServerContextBase* context) {
  if (status.ok()) return grpc::Status::OK;
  status.ForEachPayload([context](absl::string_view key, const absl::Cord& value) {
    context->AddTrailingMetadata(std::string(key), std::string(value));
  });
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<Caller> Authenticate(const DeviceRegistry& devices, const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  const absl::string_view value =
      it == metadata.end() ? absl::string_view() : absl::string_view(it->second.data(), it->second.size());
  const auto auth = context.auth_context();
  return devices.Authenticate(value, context.peer(), auth != nullptr && auth->IsPeerAuthenticated());
}

namespace {

// A write the client has stopped waiting for is not applied: the client will
// send it again under the same id, and applying it now would only load a
// server that is probably already slow.
absl::Status StillAwaited(const grpc::ServerContextBase& context) {
  if (context.deadline() <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError(
        "the call's deadline passed before the server began applying it; nothing was written. Send it again "
        "with the same id and a longer deadline");
  }
  if (context.IsCancelled()) {
    return absl::CancelledError("the call was cancelled before the server began applying it; nothing was written");
  }
  return absl::OkStatus();
}

constexpr char kPushMethod[] = "/hamlet.v1.SyncService/Push";
constexpr char kPullMethod[] = "/hamlet.v1.SyncService/Pull";
constexpr char kWatchMethod[] = "/hamlet.v1.SyncService/Watch";
constexpr char kResolveConflictMethod[] = "/hamlet.v1.SyncService/ResolveConflict";

// The answer to a request that does not parse as `method`'s message.
grpc::Status Unparsable(absl::string_view method, const grpc::ServerContextBase& context) {
  LogLine(absl::StrCat("refused an unparsable request to ", method, " from ", context.peer()));
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("the request to ", method,
                                   " could not be parsed: it is not that method's protobuf message, or a string "
                                   "field in it is not valid UTF-8 (use bytes for binary data). Fix the client; do "
                                   "not retry as is"));
}

// The answer to a call whose request could not be read: its client gave up
// (its deadline passed while the request was still arriving over a slow link,
// or it cancelled) and left no request, or the request does not parse.
// `arrived` is false when no request message came at all (a callback method
// learns so before the call is marked cancelled).
grpc::Status Unreadable(absl::string_view method, const grpc::ServerContextBase& context, bool arrived = true) {
  if (!arrived || context.IsCancelled()) {
    LogLine(absl::StrCat("call to ", method, " from ", context.peer(),
                         " ended by its client (deadline or cancel) before its request had arrived"));
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client ended the call before its request arrived");
  }
  return Unparsable(method, context);
}

// Reads a unary call's request, answers it with `answer(request, &response)`
// and sends the response if the answer is OK.
template <typename Request, typename Response, typename Answer>
grpc::Status AnswerUnary(absl::string_view method, grpc::ServerContext* context,
                         grpc::ServerUnaryStreamer<Request, Response>* stream, Answer answer) {
  Request request;
  if (!stream->Read(&request)) return Unreadable(method, *context);
  Response response;
  const grpc::Status status = answer(request, &response);
  // A failed write means the client has gone; the status then goes nowhere.
  if (status.ok()) (void)stream->Write(response);
  return status;
}

// A message as the bytes a raw method sends, serialized into gRPC's slices.
grpc::ByteBuffer Serialized(const google::protobuf::Message& message) {
  grpc::ByteBuffer buffer;
  bool own = false;
  (void)grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, &buffer, &own);
  return buffer;
}

// The PullResponse a PulledPage is, as bytes in one slice: the response's
// own fields, then each record copied as it is, as a length-delimited field
// 1 (`records`; a repeated field's elements may come anywhere in a message).
grpc::ByteBuffer SerializedPull(const PulledPage& page) {
  using google::protobuf::io::CodedOutputStream;
  constexpr uint32_t kRecordTag = (hamlet::v1::PullResponse::kRecordsFieldNumber << 3) | 2;
  const size_t head = page.response.ByteSizeLong();
  size_t size = head;
  for (const std::string& record : page.records) {
    size += CodedOutputStream::VarintSize32(kRecordTag) +
            CodedOutputStream::VarintSize32(static_cast<uint32_t>(record.size())) + record.size();
  }
  grpc::Slice slice(size);
  uint8_t* out = const_cast<uint8_t*>(slice.begin());
  out = page.response.SerializeWithCachedSizesToArray(out);
  for (const std::string& record : page.records) {
    out = CodedOutputStream::WriteTagToArray(kRecordTag, out);
    out = CodedOutputStream::WriteVarint32ToArray(static_cast<uint32_t>(record.size()), out);
    out = CodedOutputStream::WriteRawToArray(record.data(), static_cast<int>(record.size()), out);
  }
  return grpc::ByteBuffer(&slice, 1);
}

// Parses a raw method's request; false if it is not a `Request`.
template <typename Request>
bool Parsed(const grpc::ByteBuffer& bytes, Request* request) {
  grpc::ByteBuffer copy(bytes);  // Shares the slices; parsing consumes the copy.
  return grpc::SerializationTraits<Request>::Deserialize(&copy, request).ok();
}

// Pull reader threads: enough to keep the disk and both cores of a small
// server busy while some wait on reads.
size_t ReaderThreads() { return std::max<size_t>(4, 2 * std::thread::hardware_concurrency()); }

}  // namespace

absl::StatusOr<Caller> SyncServiceImpl::Admit(const grpc::ServerContextBase& context, CallKind kind) {
  HAMLET_ASSIGN_OR_RETURN(Caller caller, Authenticate(*devices_, context));
  // A replication node carries a whole town's changes; a phone's rate would
  // hold back replication.
  if (caller.principal.role != hamlet::v1::ROLE_REPLICATION_NODE) {
    HAMLET_RETURN_IF_ERROR(rate_limit_->Admit(caller.device_id));
  }
  if (kind == CallKind::kWrite) HAMLET_RETURN_IF_ERROR(StillAwaited(context));
  return caller;
}

bool SyncServiceImpl::Enter() {
  if (calls_.fetch_add(1) < max_calls_) return true;
  calls_.fetch_sub(1);
  return false;
}

void SyncServiceImpl::Leave() { calls_.fetch_sub(1); }

namespace {

absl::Status Busy(int max_calls) {
  return absl::ResourceExhaustedError(absl::StrCat("the server has ", max_calls,
                                                   " pushes and pulls in flight (--max_calls); nothing was written. "
                                                   "Retry with backoff"));
}

}  // namespace

absl::Duration SyncServiceImpl::Counted(absl::string_view method, const absl::Status& status,
                                        std::chrono::steady_clock::time_point start) {
  const absl::Duration took = absl::FromChrono(std::chrono::steady_clock::now() - start);
  metrics_->CountCall(method, static_cast<grpc::StatusCode>(status.code()), took);
  return took;
}

grpc::Status SyncServiceImpl::StreamedResolveConflict(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<hamlet::v1::ResolveConflictRequest, hamlet::v1::ResolveConflictResponse>* stream) {
  return AnswerUnary(kResolveConflictMethod, context, stream, [&](const auto& request, auto* response) {
    return AnswerResolveConflict(context, request, response);
  });
}

grpc::ServerUnaryReactor* SyncServiceImpl::Push(grpc::CallbackServerContext* context, const grpc::ByteBuffer* bytes,
                                                grpc::ByteBuffer* response) {
  const auto start = std::chrono::steady_clock::now();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  hamlet::v1::PushRequest request;
  if (!Parsed(*bytes, &request)) {
    reactor->Finish(Unreadable(kPushMethod, *context, bytes->Valid()));
    return reactor;
  }
  PushSummary summary{request.device_id(), request.batch_id(), context->peer(), request.changes_size(),
                      request.reoffer()};
  if (!Enter()) {
    const absl::Status busy = Busy(max_calls_);
    Answered(summary, busy, Counted("Push", busy, start));
    reactor->Finish(ToGrpc(busy, context));
    return reactor;
  }
  // Called on the store's commit thread once the push is durable, or at once
  // if it is refused before.
  auto answer = [this, context, reactor, response, start,
                 summary = std::move(summary)](absl::StatusOr<hamlet::v1::PushResponse> result) {
    const absl::Duration took = Counted("Push", result.status(), start);
    Answered(summary, result, took);
    if (result.ok()) *response = Serialized(*result);
    Leave();
    reactor->Finish(ToGrpc(result.status(), context));
  };
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kWrite);
  if (!caller.ok()) {
    answer(caller.status());
  } else {
    town_->Push(std::move(request), *caller, std::move(answer));
  }
  return reactor;
}

void SyncServiceImpl::Answered(const PushSummary& push, const absl::StatusOr<hamlet::v1::PushResponse>& result,
                               absl::Duration took) {
  if (result.ok()) metrics_->CountRecordsApplied(result->applied_records());
  // A change set aside is named with its reason, so an admin can see why a
  // phone's edit did not arrive.
  std::string set_aside;
  if (result.ok()) {
    for (const hamlet::v1::SetAsideChange& refused : result->set_aside()) {
      absl::StrAppend(&set_aside, " set_aside=", refused.index(), ":", refused.record_id(), ":",
                      absl::StatusCodeToString(static_cast<absl::StatusCode>(refused.code())));
    }
  }
  LogLine(absl::StrFormat("push device=%s batch=%s peer=%s records=%d applied=%d seq=%d result=%s time_ms=%.1f%s%s%s%s",
                          push.device_id, push.batch_id, push.peer, push.changes,
                          result.ok() ? result->applied_records() : 0, result.ok() ? result->server_seq() : 0,
                          absl::StatusCodeToString(result.status().code()), absl::ToDoubleMilliseconds(took),
                          push.reoffer ? " reoffer=acknowledged-before-the-restore" : "", set_aside,
                          result.ok() ? "" : " error=", result.ok() ? "" : result.status().message()));
}

grpc::ServerUnaryReactor* SyncServiceImpl::Pull(grpc::CallbackServerContext* context, const grpc::ByteBuffer* bytes,
                                                grpc::ByteBuffer* response) {
  const auto start = std::chrono::steady_clock::now();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  hamlet::v1::PullRequest request;
  if (!Parsed(*bytes, &request)) {
    reactor->Finish(Unreadable(kPullMethod, *context, bytes->Valid()));
    return reactor;
  }
  if (!Enter()) {
    const absl::Status busy = Busy(max_calls_);
    Counted("Pull", busy, start);
    reactor->Finish(ToGrpc(busy, context));
    return reactor;
  }
  readers_.Add([this, context, request = std::move(request), start, response, reactor] {
    AnswerPull(context, request, start, response, reactor);
  });
  return reactor;
}

void SyncServiceImpl::AnswerPull(grpc::CallbackServerContext* context, const hamlet::v1::PullRequest& request,
                                 std::chrono::steady_clock::time_point start, grpc::ByteBuffer* response,
                                 grpc::ServerUnaryReactor* reactor) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kRead);
  absl::StatusOr<PulledPage> result = caller.ok() ? PageFor(request, *caller) : caller.status();
  Counted("Pull", result.status(), start);
  if (!result.ok()) {
    LogLine(absl::StrFormat("pull device=%s scope=%s result=%s error=%s", request.device_id(),
                            request.scope_unit_code(), absl::StatusCodeToString(result.status().code()),
                            result.status().message()));
    Leave();
    reactor->Finish(ToGrpc(result.status(), context));
    return;
  }
  metrics_->CountRecordsPulled(result->records.size());
  // Where a bundle for it would start (reference data is a cursor of its own).
  if (!request.reference_only()) {
    town_->NotePull(caller->device_id, request.scope_unit_code(), result->response.next_cursor());
  }
  // The next page is read ahead before this one is sent, so that the read
  // overlaps the sending and the device's parsing of this one; but not on a
  // busy server, where it would take a reader from a pull that was asked for.
  if (result->response.remaining() > 0 && calls_.load() <= static_cast<int>(reader_threads_)) {
    hamlet::v1::PullRequest next = request;
    next.set_cursor(result->response.next_cursor());
    const uint64_t published_seq = town_->published_seq();
    pull_ahead_.Start(next, *caller, published_seq,
                      [this, next, caller = *caller] { return town_->ReadPull(next, caller); });
  }
  *response = SerializedPull(*result);
  Leave();
  reactor->Finish(grpc::Status::OK);
}

absl::StatusOr<PulledPage> SyncServiceImpl::PageFor(const hamlet::v1::PullRequest& request, const Caller& caller) {
  std::optional<PulledPage> ahead = pull_ahead_.Take(request, caller, town_->published_seq());
  HAMLET_ASSIGN_OR_RETURN(PulledPage page, ahead.has_value() ? *std::move(ahead) : town_->ReadPull(request, caller));
  HAMLET_RETURN_IF_ERROR(town_->AuditSealedReads(page, caller));
  return page;
}

// One Watch stream. Lives from Watch() until OnDone(), which deletes it; the
// dispatcher reaches it only while it is registered.
class WatchReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  WatchReactor(SyncServiceImpl* service, grpc::CallbackServerContext* context, storage::ChangeScope scope,
               uint64_t seen)
      : service_(service), context_(context), scope_(std::move(scope)), seen_(seen) {
    service_->metrics_->WatchOpened();
  }

  // From the dispatcher: ends the stream if the server is closing or the
  // token no longer works, else tells the device about changes in its scope
  // after the last one it was told about.
  void Poll(bool check_token, bool closing) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (closing) return FinishLocked(grpc::Status::OK);
    if (check_token) {
      if (absl::StatusOr<Caller> still = Authenticate(*service_->devices_, *context_); !still.ok()) {
        return FinishLocked(ToGrpc(still.status(), context_));
      }
    }
    if (writing_) return;
    const uint64_t latest = service_->feed_->LatestIn(scope_);
    if (latest <= seen_) return;
    seen_ = latest;
    hamlet::v1::WatchResponse message;
    message.set_server_seq(latest);
    message_ = Serialized(message);
    writing_ = true;
    StartWrite(&message_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) FinishLocked(grpc::Status::OK);  // The device went away.
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status::CANCELLED);
  }
  void OnDone() override {
    service_->Unregister(this);
    service_->metrics_->WatchClosed();
    delete this;
  }

 private:
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  SyncServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;
  const storage::ChangeScope scope_;
  absl::Mutex mu_;
  uint64_t seen_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ByteBuffer message_;  // A WatchResponse, kept until its write is done.
};

namespace {

// A Watch refused at the start.
class RefusedWatch final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit RefusedWatch(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

SyncServiceImpl::SyncServiceImpl(Town* town, const ChangeFeed* feed, const DeviceRegistry* devices, Metrics* metrics,
                                 DeviceRateLimit* rate_limit, int max_calls)
    : town_(town),
      feed_(feed),
      devices_(devices),
      metrics_(metrics),
      rate_limit_(rate_limit),
      max_calls_(max_calls),
      dispatcher_([this] { Dispatch(); }),
      reader_threads_(ReaderThreads()),
      // A page ahead for as many devices as there are readers.
      pull_ahead_(&readers_, reader_threads_, [metrics](const char* outcome) { metrics->CountPullAhead(outcome); }),
      readers_(reader_threads_) {}

SyncServiceImpl::~SyncServiceImpl() {
  {
    absl::MutexLock lock(&watchers_mu_);
    stopping_ = true;
  }
  dispatcher_.join();
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SyncServiceImpl::Watch(grpc::CallbackServerContext* context,
                                                                   const grpc::ByteBuffer* bytes) {
  hamlet::v1::WatchRequest request;
  if (!Parsed(*bytes, &request)) {
    return new RefusedWatch(Unreadable(kWatchMethod, *context, bytes->Valid()));
  }
  absl::StatusOr<Caller> caller = Authenticate(*devices_, *context);
  if (!caller.ok()) return new RefusedWatch(ToGrpc(caller.status(), context));
  absl::StatusOr<Town::WatchStart> start = town_->StartWatch(request, *caller);
  if (!start.ok()) return new RefusedWatch(ToGrpc(start.status(), context));
  auto* watcher = new WatchReactor(this, context, start->scope, start->seq);
  absl::MutexLock lock(&watchers_mu_);
  watchers_.insert(watcher);
  // Changes may already be waiting: tell it at once.
  watcher->Poll(/*check_token=*/false, /*closing=*/false);
  return watcher;
}

void SyncServiceImpl::Unregister(WatchReactor* watcher) {
  absl::MutexLock lock(&watchers_mu_);
  watchers_.erase(watcher);
}

void SyncServiceImpl::Dispatch() {
  uint64_t dispatched = 0;
  absl::Time tokens_checked = absl::Now();
  while (true) {
    // Wakes on each commit, and at least once a second for the tokens.
    const bool closing = feed_->closed();
    if (closing) {
      absl::SleepFor(absl::Milliseconds(100));
    } else {
      dispatched = feed_->WaitForPublication(dispatched, absl::Seconds(1));
    }
    const bool check_tokens = absl::Now() - tokens_checked >= absl::Seconds(1);
    if (check_tokens) tokens_checked = absl::Now();
    absl::MutexLock lock(&watchers_mu_);
    if (stopping_) return;
    for (WatchReactor* watcher : watchers_) watcher->Poll(check_tokens, closing);
  }
}

grpc::Status SyncServiceImpl::AnswerResolveConflict(grpc::ServerContext* context,
                                                    const hamlet::v1::ResolveConflictRequest& request,
                                                    hamlet::v1::ResolveConflictResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kWrite);
  absl::StatusOr<hamlet::v1::ResolveConflictResponse> result =
      caller.ok() ? town_->ResolveConflict(request, *caller)
                  : absl::StatusOr<hamlet::v1::ResolveConflictResponse>(caller.status());
  Counted("ResolveConflict", result.status(), start);
  LogLine(absl::StrFormat("resolve device=%s request=%s record=%s field=%d resolver=%s result=%s%s%s",
                          request.device_id(), request.request_id(), request.record_id(), request.field(),
                          request.resolver(), absl::StatusCodeToString(result.status().code()),
                          result.ok() ? "" : " error=", result.ok() ? "" : result.status().message()));
  if (result.ok()) *response = std::move(*result);
  return ToGrpc(result.status(), context);
}

}  // namespace hamlet::server
