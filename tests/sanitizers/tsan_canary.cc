// A deliberate data race, for proving that the ThreadSanitizer run still sees
// races in Hamlet's own memory despite tools/sanitizers/tsan.supp and the
// uninstrumented gRPC and Abseil it runs on (docs/RELIABILITY.md).
//
// It serves hamlet.v1.SyncService the way server/sync_service.cc does (Push
// a "streamed unary" handler on one of gRPC's synchronous threads, Watch a
// callback method run on one of gRPC's callback threads) on a loopback port,
// and calls both at once. Each handler touches one plain counter with no lock:
// Push increments it, Watch reads it, each a few times over ~100 ms while
// sleeping in between, so the accesses overlap in time and nothing either
// thread does between them can order them. Under TSan the run must end with a
// "data race" report naming CanaryLedger (the ctest entry checks that, with
// the suppressions and options of tools/sanitize); built without TSan it just
// exits 0.

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "hamlet/v1/sync.grpc.pb.h"

namespace hamlet::canary {

// Hamlet-owned memory that the two handlers share without synchronization.
struct CanaryLedger {
  long pushes = 0;
};
CanaryLedger ledger;

constexpr int kTouches = 20;
constexpr auto kBetweenTouches = std::chrono::milliseconds(5);

__attribute__((noinline)) void CountPush() { ++ledger.pushes; }
__attribute__((noinline)) long ReadPushes() { return ledger.pushes; }

class CanarySyncService final
    : public hamlet::v1::SyncService::WithStreamedUnaryMethod_Push<
          hamlet::v1::SyncService::WithCallbackMethod_Watch<hamlet::v1::SyncService::Service>> {
 public:
  grpc::Status StreamedPush(
      grpc::ServerContext*,
      grpc::ServerUnaryStreamer<hamlet::v1::PushRequest, hamlet::v1::PushResponse>* stream) override {
    hamlet::v1::PushRequest request;
    if (!stream->Read(&request)) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unparsable");
    for (int i = 0; i < kTouches; ++i) {
      CountPush();
      std::this_thread::sleep_for(kBetweenTouches);
    }
    hamlet::v1::PushResponse response;
    response.set_applied_records(1);
    stream->Write(response);
    return grpc::Status::OK;
  }

  grpc::ServerWriteReactor<hamlet::v1::WatchResponse>* Watch(grpc::CallbackServerContext*,
                                                             const hamlet::v1::WatchRequest*) override {
    class Reactor final : public grpc::ServerWriteReactor<hamlet::v1::WatchResponse> {
     public:
      Reactor() {
        long seen = 0;
        for (int i = 0; i < kTouches; ++i) {
          seen += ReadPushes();
          std::this_thread::sleep_for(kBetweenTouches);
        }
        message_.set_server_seq(static_cast<uint64_t>(seen));
        StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
      }
      void OnDone() override { delete this; }

     private:
      hamlet::v1::WatchResponse message_;
    };
    return new Reactor();
  }
};

int Run() {
  CanarySyncService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "tsan_canary: cannot listen on loopback\n");
    return 1;
  }
  auto stub = hamlet::v1::SyncService::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  for (int round = 0; round < 3; ++round) {
    std::thread pusher([&] {
      grpc::ClientContext context;
      hamlet::v1::PushResponse response;
      (void)stub->Push(&context, hamlet::v1::PushRequest(), &response);
    });
    grpc::ClientContext context;
    auto reader = stub->Watch(&context, hamlet::v1::WatchRequest());
    hamlet::v1::WatchResponse message;
    while (reader->Read(&message)) {
    }
    (void)reader->Finish();
    pusher.join();
  }
  server->Shutdown();
  std::printf("tsan_canary: done without a report (expected only when built without TSan)\n");
  return 0;
}

}  // namespace hamlet::canary

int main() { return hamlet::canary::Run(); }
