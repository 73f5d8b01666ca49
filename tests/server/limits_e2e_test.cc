// Bad input and the server's limits, against the real hamletd over loopback:
// expired deadlines, unparsable requests, stamps far off, floods of
// connections, and the stream, keepalive, thread and per-device rate limits
// (the flags in server/hamletd.cc).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "sync/clock.h"
#include "tests/support/admin.h"
#include "tests/support/records.h"
#include "tests/support/server_process.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::MakeStamp;
using hamlet::testing::NewCase;
using hamlet::testing::ServerProcess;
using hamlet::testing::StatusIs;
using hamlet::v1::PullRequest;
using hamlet::v1::PullResponse;
using hamlet::v1::PushRequest;
using hamlet::v1::PushResponse;
using hamlet::v1::Record;
using hamlet::v1::WatchRequest;
using ::testing::AnyOf;
using ::testing::HasSubstr;

// Enrolled as a replication node: writes and reads the whole town, and is
// exempt from the per-device rate.
constexpr char kDevice[] = "0b6e1f7a-3c2d-4e5f-8a9b-0c1d2e3f4a5b";
constexpr int kSeededUnits = 289;
constexpr char kPushMethod[] = "/hamlet.v1.SyncService/Push";
constexpr char kPullMethod[] = "/hamlet.v1.SyncService/Pull";

std::string Uuid(int n) { return absl::StrFormat("00000000-0000-4000-8000-%012d", n); }
int64_t NowMs() { return sync::SystemClock::Get()->NowMs(); }
std::chrono::system_clock::time_point In(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

// A channel of its own (not shared with other channels to the same address),
// so that connection-level effects stay on it.
std::shared_ptr<grpc::Channel> OwnChannel(const std::string& address, grpc::ChannelArguments args = {}) {
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

PushRequest Batch(const std::string& batch_id, std::vector<Record> changes) {
  PushRequest request;
  request.set_device_id(kDevice);
  request.set_batch_id(batch_id);
  request.set_app_version("test/1");
  for (Record& r : changes) *request.add_changes() = std::move(r);
  return request;
}

// A device's calls, each with its token and a deadline.
class Device {
 public:
  Device(std::shared_ptr<grpc::Channel> channel, std::string id, std::string token)
      : channel_(std::move(channel)),
        stub_(hamlet::v1::SyncService::NewStub(channel_)),
        id_(std::move(id)),
        token_(std::move(token)) {}

  void Prepare(grpc::ClientContext* context, absl::Duration deadline) const {
    context->AddMetadata("authorization", "Bearer " + token_);
    context->set_deadline(In(deadline));
  }
  grpc::Status Push(const PushRequest& request, PushResponse* response, absl::Duration deadline = absl::Seconds(10)) {
    grpc::ClientContext context;
    Prepare(&context, deadline);
    return stub_->Push(&context, request, response);
  }
  // A pull of everything the device may see, from `cursor`; the trailers of
  // the answer go to `trailers` if given.
  grpc::Status Pull(const std::string& cursor, PullResponse* response, absl::Duration deadline = absl::Seconds(10),
                    std::map<std::string, std::string>* trailers = nullptr) {
    grpc::ClientContext context;
    Prepare(&context, deadline);
    PullRequest request;
    request.set_device_id(id_);
    request.set_cursor(cursor);
    grpc::Status status = stub_->Pull(&context, request, response);
    if (trailers != nullptr) {
      for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
        (*trailers)[std::string(key.data(), key.size())] = std::string(value.data(), value.size());
      }
    }
    return status;
  }
  // Pulls from `*cursor` to the end, moving it; returns the records.
  std::vector<Record> PullAll(std::string* cursor) {
    std::vector<Record> records;
    while (true) {
      PullResponse response;
      const grpc::Status status = Pull(*cursor, &response);
      EXPECT_TRUE(status.ok()) << status.error_message();
      if (!status.ok()) return records;
      for (const Record& r : response.records()) records.push_back(r);
      *cursor = response.next_cursor();
      if (response.remaining() == 0) return records;
    }
  }

  const std::string& id() const { return id_; }
  const std::string& token() const { return token_; }
  grpc::Channel& channel() { return *channel_; }
  hamlet::v1::SyncService::Stub& stub() { return *stub_; }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<hamlet::v1::SyncService::Stub> stub_;
  std::string id_;
  std::string token_;
};

// One Watch stream, from the callback API so that opening it never blocks:
// it counts the messages it gets and keeps its final status.
class WatchStream final : public grpc::ClientReadReactor<hamlet::v1::WatchResponse> {
 public:
  WatchStream(Device& device, const std::string& scope = "") {
    context_.AddMetadata("authorization", "Bearer " + device.token());
    request_.set_device_id(device.id());
    request_.set_scope_unit_code(scope);
    device.stub().async()->Watch(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }
  ~WatchStream() override {
    context_.TryCancel();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    {
      absl::MutexLock lock(&mu_);
      ++messages_;
    }
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }

  void Cancel() { context_.TryCancel(); }
  // True once a message came within `timeout`.
  bool WaitForMessage(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(
                                    +[](int* n) { return *n > 0; }, &messages_),
                                timeout);
  }
  // The final status, once the stream ended within `timeout`.
  std::optional<grpc::Status> WaitForEnd(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&done_), timeout)) return std::nullopt;
    return status_;
  }
  int messages() {
    absl::MutexLock lock(&mu_);
    return messages_;
  }

 private:
  grpc::ClientContext context_;
  hamlet::v1::WatchRequest request_;
  hamlet::v1::WatchResponse response_;
  absl::Mutex mu_;
  int messages_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

// "127.0.0.1:port" as a socket address.
sockaddr_in Loopback(const std::string& address) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) << address;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

int ConnectTo(const std::string& address) {
  const sockaddr_in addr = Loopback(address);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// The body of GET `path` from a plain HTTP server.
std::string HttpGet(const std::string& address, const std::string& path) {
  const int fd = ConnectTo(address);
  if (fd < 0) return "";
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", address, "\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return "";
  }
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, static_cast<size_t>(n));
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

// The value of an unlabelled metric, or -1.
double Metric(const ServerProcess& server, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(HttpGet(server.metrics_address(), "/metrics"), '\n')) {
    if (absl::StartsWith(line, name + " ")) {
      double value = -1;
      if (absl::SimpleAtod(line.substr(name.size() + 1), &value)) return value;
    }
  }
  return -1;
}

size_t Occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Polls `condition` every 20 ms until it holds or `timeout` passes.
bool Eventually(absl::Duration timeout, const std::function<bool()>& condition) {
  const absl::Time end = absl::Now() + timeout;
  while (true) {
    if (condition()) return true;
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// Sockets a process holds open, from /proc.
int OpenSockets(pid_t pid) {
  int sockets = 0;
  for (const auto& entry : std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"))) {
    std::error_code error;
    const auto target = std::filesystem::read_symlink(entry.path(), error);
    if (!error && absl::StartsWith(target.string(), "socket:")) ++sockets;
  }
  return sockets;
}

// Resident memory of a process, in KiB, from /proc; -1 if unknown.
int64_t ResidentKiB(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      int64_t kib = -1;
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kib)) return kib;
    }
  }
  return -1;
}

// A TCP forwarder between a client and the server that can freeze: it then
// stops moving bytes either way but keeps both sockets open, as a phone that
// drops off the network without closing anything looks to the server.
class FreezableProxy {
 public:
  explicit FreezableProxy(const std::string& target) : target_(target) {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr = Loopback("127.0.0.1:0");
    bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listener_, 8);
    socklen_t len = sizeof(addr);
    getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    address_ = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
    thread_ = std::thread([this] { Run(); });
  }
  ~FreezableProxy() {
    stop_ = true;
    thread_.join();
    close(listener_);
    for (int fd : fds_) close(fd);
  }
  const std::string& address() const { return address_; }
  void Freeze() { frozen_ = true; }

 private:
  void Run() {
    while (!stop_) {
      std::vector<pollfd> polled = {{listener_, POLLIN, 0}};
      if (!frozen_) {
        for (int fd : fds_) polled.push_back({fd, POLLIN, 0});
      }
      if (poll(polled.data(), polled.size(), 20) <= 0) continue;
      if (polled[0].revents & POLLIN) {
        const int client = accept(listener_, nullptr, nullptr);
        const int server = ConnectTo(target_);
        if (client >= 0 && server >= 0) {
          fds_.push_back(client);
          fds_.push_back(server);
        }
        continue;
      }
      for (size_t i = 1; i < polled.size(); ++i) {
        if ((polled[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        const size_t index = i - 1;
        const int peer = fds_[index ^ 1];
        char buffer[16384];
        const ssize_t n = read(polled[i].fd, buffer, sizeof(buffer));
        if (n <= 0) {
          shutdown(peer, SHUT_WR);
          continue;
        }
        for (ssize_t sent = 0; sent < n;) {
          const ssize_t w = write(peer, buffer + sent, static_cast<size_t>(n - sent));
          if (w <= 0) break;
          sent += w;
        }
      }
    }
  }

  const std::string target_;
  int listener_ = -1;
  std::string address_;
  std::vector<int> fds_;  // Pairs: client, server.
  std::atomic<bool> frozen_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class LimitsE2eTest : public ::testing::Test {
 protected:
  // Starts hamletd with `flags` and enrols kDevice as a replication node.
  void Start(std::vector<std::string> flags = {}) {
    server_ = ServerProcess::Start(dir_.Sub("data"), std::move(flags));
    ASSERT_NE(server_, nullptr) << hamlet::testing::ReadFile(dir_.Sub("data.log"));
    admin_ = std::make_unique<hamlet::testing::AdminClient>(*server_);
    device_ =
        std::make_unique<Device>(OwnChannel(server_->address()), kDevice,
                                 admin_->Enroll(kDevice, hamlet::v1::ROLE_REPLICATION_NODE, "206", "replica-of-test"));
    ASSERT_EQ(device_->PullAll(&start_cursor_).size(), static_cast<size_t>(kSeededUnits));
  }
  // A town officer: reads the whole town, and is held to the device rate.
  std::unique_ptr<Device> Officer(int n) {
    const std::string id = Uuid(900000 + n);
    return std::make_unique<Device>(
        OwnChannel(server_->address()), id,
        admin_->Enroll(id, hamlet::v1::ROLE_TOWN_OFFICER, "206", absl::StrCat("officer-", n)));
  }
  std::vector<Record> NewSinceStart() {
    std::string cursor = start_cursor_;
    return device_->PullAll(&cursor);
  }

  hamlet::testing::TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<hamlet::testing::AdminClient> admin_;
  std::unique_ptr<Device> device_;
  std::string start_cursor_;
};

// A push whose deadline runs out while the server works on it either lands
// whole or not at all, and its retry under the same batch id lands it once.
TEST_F(LimitsE2eTest, ExpiredDeadlinesWriteTheBatchWholeOrNotAtAll) {
  Start();
  std::string cursor = start_cursor_;
  int expired = 0, expired_but_applied = 0;
  for (int deadline_ms = 1; deadline_ms <= 30; ++deadline_ms) {
    SCOPED_TRACE(absl::StrCat("deadline ", deadline_ms, " ms"));
    std::vector<Record> changes;
    std::set<std::string> ids;
    for (int i = 0; i < 500; ++i) {
      changes.push_back(
          NewCase(Uuid(deadline_ms * 1000 + i), i % 2 ? "07132" : "07135", MakeStamp(NowMs(), 0, kDevice)));
      ids.insert(changes.back().id());
    }
    const PushRequest batch = Batch(Uuid(100000 + deadline_ms), std::move(changes));
    PushResponse response;
    const grpc::Status first = device_->Push(batch, &response, absl::Milliseconds(deadline_ms));
    ASSERT_THAT(first, AnyOf(StatusIs(absl::StatusCode::kOk), StatusIs(absl::StatusCode::kDeadlineExceeded)));

    std::string peek = cursor;
    const size_t seen = device_->PullAll(&peek).size();
    EXPECT_TRUE(seen == 0 || seen == 500) << seen << " records of the batch are visible";
    if (first.ok()) {
      EXPECT_EQ(seen, 500u);
    } else {
      ++expired;
      if (seen == 500) ++expired_but_applied;
    }

    ASSERT_TRUE(device_->Push(batch, &response).ok());
    const std::vector<Record> pulled = device_->PullAll(&cursor);
    std::multiset<std::string> pulled_ids;
    for (const Record& r : pulled) pulled_ids.insert(r.id());
    EXPECT_EQ(pulled_ids, std::multiset<std::string>(ids.begin(), ids.end()));
  }
  std::cout << "deadlines 1..30 ms: " << expired << " expired, " << expired_but_applied
            << " of them applied anyway (the server had begun); the server refused "
            << Occurrences(server_->Log(), "result=DEADLINE_EXCEEDED") << " before applying them\n";
}

// Bytes a client's own library would never send: a proto3 string that is
// not UTF-8, or no protobuf at all. Sent raw, they get INVALID_ARGUMENT (not
// gRPC's own INTERNAL with no message) and write nothing.
TEST_F(LimitsE2eTest, UnparsableRequestsAreInvalidArgumentAndWriteNothing) {
  Start();
  grpc::GenericStub generic(OwnChannel(server_->address()));
  const auto call = [&](const char* method, const std::string& bytes, std::string* answer = nullptr) {
    grpc::ClientContext context;
    device_->Prepare(&context, absl::Seconds(10));
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::CompletionQueue cq;
    auto reader = generic.PrepareUnaryCall(&context, method, request, &cq);
    reader->StartCall();
    grpc::Status status;
    reader->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    if (answer != nullptr) {
      std::vector<grpc::Slice> slices;
      (void)response.Dump(&slices);
      for (const grpc::Slice& s : slices) answer->append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    return status;
  };
  // Replaces the first two bytes of `marker` in `bytes` with an invalid
  // UTF-8 sequence (a lead byte followed by an ASCII one) of the same length.
  const auto corrupt = [](std::string bytes, const std::string& marker) {
    const size_t at = bytes.find(marker);
    EXPECT_NE(at, std::string::npos) << marker;
    bytes.replace(at, 2, "\xC3\x28");
    return bytes;
  };
  const std::string summary = "zz-summary-to-corrupt";
  const PushRequest push = Batch(Uuid(100), {NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice), summary)});
  PullRequest pull;
  pull.set_device_id(kDevice);
  pull.set_scope_unit_code("07132");
  WatchRequest watch;
  watch.set_device_id(kDevice);
  watch.set_scope_unit_code("07132");

  struct Case {
    std::string name;
    const char* method;
    std::string bytes;
  };
  const std::vector<Case> cases = {
      {"a record's summary is not UTF-8", kPushMethod, corrupt(push.SerializeAsString(), summary)},
      {"the device id is not UTF-8", kPushMethod, corrupt(push.SerializeAsString(), kDevice)},
      {"not protobuf at all", kPushMethod, "\xff\xff\xff\xff garbage"},
      {"a pull's scope is not UTF-8", kPullMethod, corrupt(pull.SerializeAsString(), "07132")},
      {"a watch's scope is not UTF-8", "/hamlet.v1.SyncService/Watch", corrupt(watch.SerializeAsString(), "07132")},
      {"a resolution is not protobuf", "/hamlet.v1.SyncService/ResolveConflict", "\xff\xff\xff\xff garbage"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_THAT(call(c.method, c.bytes),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("could not be parsed")));
  }
  // A message of no bytes is a message, all of its fields unset: refused for
  // what it lacks, not taken for a call that ended before its request came.
  for (const char* method : {kPushMethod, kPullMethod}) {
    SCOPED_TRACE(method);
    EXPECT_THAT(call(method, ""), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("device_id must be")));
  }
  EXPECT_TRUE(NewSinceStart().empty());
  EXPECT_THAT(server_->Log(), HasSubstr(absl::StrCat("refused an unparsable request to ", kPushMethod)));

  // The same path with the bytes intact works: the refusals were the bytes'.
  std::string answer;
  EXPECT_TRUE(call(kPushMethod, push.SerializeAsString(), &answer).ok());
  PushResponse response;
  ASSERT_TRUE(response.ParseFromString(answer));
  EXPECT_EQ(response.applied_records(), 1u);
  EXPECT_EQ(NewSinceStart().size(), 1u);
}

// A gzip-compressed request that unfolds beyond --max_message_bytes (a
// decompression bomb: 9 MiB of one letter is about 9 KiB compressed) is
// RESOURCE_EXHAUSTED and writes nothing; the same client's ordinary
// compressed push, and the server's compressed answers, work.
TEST_F(LimitsE2eTest, ACompressedRequestIsLimitedByItsDecompressedSize) {
  Start();
  grpc::ChannelArguments args;
  args.SetCompressionAlgorithm(GRPC_COMPRESS_GZIP);
  Device gzip(OwnChannel(server_->address(), args), kDevice, device_->token());
  Record bomb = NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice));
  bomb.mutable_mediation_case()->set_summary(std::string(9 << 20, 'x'));
  PushResponse response;
  const grpc::Status refused = gzip.Push(Batch(Uuid(100), {bomb}), &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_TRUE(NewSinceStart().empty());
  const grpc::Status pushed =
      gzip.Push(Batch(Uuid(101), {NewCase(Uuid(2), "07132", MakeStamp(NowMs(), 0, kDevice))}), &response);
  ASSERT_TRUE(pushed.ok()) << pushed.error_message();
  std::string cursor = start_cursor_;
  EXPECT_EQ(gzip.PullAll(&cursor).size(), 1u);
}

// A stamp beyond the allowed skew, however far, is CLOCK_SKEW; one that is not
// positive is malformed. Either way the batch writes nothing.
TEST_F(LimitsE2eTest, StampsFarInTheFutureOrNotPositiveAreRefusedAndWriteNothing) {
  Start();
  const int64_t now = NowMs();
  // A new case created now whose field stamps say `physical_ms` (a create
  // time that far off would not even be a valid Timestamp).
  const auto with_stamp_at = [&](int n, int64_t physical_ms) {
    Record r = NewCase(Uuid(n), "07132", MakeStamp(now, 0, kDevice));
    for (auto& fs : *r.mutable_field_stamps()) fs.mutable_stamp()->set_physical_ms(physical_ms);
    return r;
  };
  const Record good = with_stamp_at(1, now);
  struct Case {
    std::string name;
    int64_t physical_ms;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"the year 3000", 32'503'680'000'000, absl::StatusCode::kFailedPrecondition, "ahead of the server clock"},
      {"the largest stamp there is", std::numeric_limits<int64_t>::max(), absl::StatusCode::kFailedPrecondition,
       "ahead of the server clock"},
      {"zero", 0, absl::StatusCode::kInvalidArgument, "positive physical_ms"},
      {"before 1970", -1, absl::StatusCode::kInvalidArgument, "positive physical_ms"},
      {"the smallest stamp there is", std::numeric_limits<int64_t>::min(), absl::StatusCode::kInvalidArgument,
       "positive physical_ms"},
  };
  int n = 10;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    grpc::ClientContext context;
    device_->Prepare(&context, absl::Seconds(10));
    PushResponse response;
    EXPECT_THAT(
        device_->stub().Push(&context, Batch(Uuid(100 + n), {good, with_stamp_at(n, c.physical_ms)}), &response),
        StatusIs(c.code, HasSubstr(c.message)));
    if (c.code == absl::StatusCode::kFailedPrecondition) {
      const auto& trailers = context.GetServerTrailingMetadata();
      auto reason = trailers.find("hamlet-error-reason");
      ASSERT_NE(reason, trailers.end());
      EXPECT_EQ(reason->second, "CLOCK_SKEW");
    }
    ++n;
  }
  EXPECT_TRUE(NewSinceStart().empty());
}

// A stamp from 1970 (a phone whose clock reset) is accepted: there is no
// lower bound. A new record is stored with it; an edit stamped that far back
// loses to the record's real stamps (last writer wins) and is kept only as a
// superseded value of the field.
TEST_F(LimitsE2eTest, StampsFromNineteenSeventyAreAcceptedAndLoseToNewerOnes) {
  Start();
  const int64_t now = NowMs();
  Record old = NewCase(Uuid(1), "07132", MakeStamp(1, 0, kDevice), "stamped in 1970");
  const Record current = NewCase(Uuid(2), "07132", MakeStamp(now, 0, kDevice), "stamped now");
  PushResponse response;
  ASSERT_TRUE(device_->Push(Batch(Uuid(100), {old, current}), &response).ok());
  EXPECT_EQ(response.applied_records(), 2u);

  Record edit = sync::EmptyChangeOf(current);
  edit.mutable_mediation_case()->set_summary("edited by a phone whose clock says 1970");
  sync::SetFieldStamp(&edit, hamlet::v1::MediationCase::kSummaryFieldNumber, MakeStamp(2, 0, kDevice));
  ASSERT_TRUE(device_->Push(Batch(Uuid(101), {edit}), &response).ok());
  const std::vector<Record> pulled = NewSinceStart();
  std::map<std::string, std::string> summaries;
  for (const Record& r : pulled) summaries[r.id()] = r.mediation_case().summary();
  EXPECT_EQ(summaries[Uuid(1)], "stamped in 1970");
  EXPECT_EQ(summaries[Uuid(2)], "stamped now");
  EXPECT_EQ(response.applied_records(), 1u);
  for (const Record& r : pulled) {
    if (r.id() != Uuid(2)) continue;
    ASSERT_EQ(r.superseded_size(), 1);
    EXPECT_EQ(r.superseded(0).field(), static_cast<uint32_t>(hamlet::v1::MediationCase::kSummaryFieldNumber));
    EXPECT_EQ(r.superseded(0).stamp().physical_ms(), 2);
    EXPECT_EQ(r.superseded(0).value().mediation_case().summary(), "edited by a phone whose clock says 1970");
  }
}

// Hundreds of sockets that never speak HTTP/2 and a hundred idle channels do
// not keep a device from syncing, the server's memory stays bounded, and
// the server sheds both: the sockets at the handshake timeout, the channels
// at the idle limit.
TEST_F(LimitsE2eTest, AFloodOfIdleConnectionsIsShedAndDevicesStillSync) {
  Start({"--handshake_timeout=2s", "--max_connection_idle=2s"});
  const int64_t rss_before = ResidentKiB(server_->pid());
  ASSERT_GT(rss_before, 0);
  const int sockets_before = OpenSockets(server_->pid());
  constexpr int kSockets = 400, kChannels = 100;
  std::vector<int> sockets;
  for (int i = 0; i < kSockets; ++i) {
    const int fd = ConnectTo(server_->address());
    ASSERT_GE(fd, 0) << "connection " << i;
    sockets.push_back(fd);
  }
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < kChannels; ++i) {
    channels.push_back(OwnChannel(server_->address()));
    ASSERT_TRUE(channels.back()->WaitForConnected(In(absl::Seconds(5)))) << "channel " << i;
  }

  const absl::Time start = absl::Now();
  PushResponse pushed;
  const PushRequest batch = Batch(Uuid(100), {NewCase(Uuid(1), "07132", MakeStamp(NowMs(), 0, kDevice))});
  ASSERT_TRUE(device_->Push(batch, &pushed, absl::Seconds(2)).ok());
  EXPECT_EQ(NewSinceStart().size(), 1u);
  const absl::Duration took = absl::Now() - start;
  EXPECT_LT(took, absl::Seconds(1)) << "push and pull under the flood";
  const int64_t rss_flooded = ResidentKiB(server_->pid());
  const int sockets_flooded = OpenSockets(server_->pid());
  std::cout << "push+pull under " << kSockets << " sockets and " << kChannels << " channels: " << took
            << "; server RSS " << rss_before / 1024 << " MiB before, " << rss_flooded / 1024 << " MiB flooded; "
            << sockets_before << " sockets open before, " << sockets_flooded << " flooded\n";
  EXPECT_GE(sockets_flooded, sockets_before + kSockets + kChannels);
  // 64 MiB; a sanitizer build's server pays several times as much per
  // connection for shadow memory and freed-memory quarantine (ASan: 96 MiB).
#ifdef HAMLET_SANITIZED
  constexpr int64_t kMostGrowthKiB = 320 * 1024;
#else
  constexpr int64_t kMostGrowthKiB = 64 * 1024;
#endif
  EXPECT_LT(rss_flooded - rss_before, kMostGrowthKiB) << "KiB more resident memory";

  // The server closes each silent socket once its handshake time is up.
  std::vector<bool> closed(sockets.size(), false);
  const auto all_closed = [&] {
    bool all = true;
    for (size_t i = 0; i < sockets.size(); ++i) {
      if (closed[i]) continue;
      pollfd p = {sockets[i], POLLIN, 0};
      char byte;
      if (poll(&p, 1, 0) == 1 && recv(sockets[i], &byte, 1, MSG_DONTWAIT) <= 0) {
        closed[i] = true;
      } else {
        all = false;
      }
    }
    return all;
  };
  EXPECT_TRUE(Eventually(absl::Seconds(6), all_closed))
      << std::count(closed.begin(), closed.end(), true) << " of " << kSockets << " closed";
  for (int fd : sockets) close(fd);

  // And it closes the idle channels' connections, so that it holds no more
  // sockets than before the flood. (A client with no call in flight
  // notices only when it next polls; that is not the server's concern.)
  EXPECT_TRUE(Eventually(absl::Seconds(4), [&] { return OpenSockets(server_->pid()) <= sockets_before; }))
      << OpenSockets(server_->pid()) << " sockets open, " << sockets_before << " before the flood";
  // The device's own channel reconnects at its next call.
  PullResponse pulled;
  EXPECT_TRUE(device_->Pull(start_cursor_, &pulled).ok());
}

// With --max_concurrent_streams=4, a fifth and sixth Watch stream on the same
// connection wait in the client (the server's SETTINGS_MAX_CONCURRENT_STREAMS)
// instead of failing, as does a pull behind them; each starts as soon as a
// slot frees. Another connection is not held back.
TEST_F(LimitsE2eTest, StreamsBeyondTheLimitOnOneConnectionWaitForASlot) {
  Start({"--max_concurrent_streams=4"});
  PullResponse first;
  ASSERT_TRUE(device_->Pull(start_cursor_, &first).ok());  // The server's SETTINGS are known from here.

  std::vector<std::unique_ptr<WatchStream>> streams;
  for (int i = 0; i < 6; ++i) streams.push_back(std::make_unique<WatchStream>(*device_));
  // Each stream that starts is told the latest sequence number at once.
  const auto started = [&] {
    std::vector<WatchStream*> out;
    for (auto& s : streams) {
      if (s->messages() > 0) out.push_back(s.get());
    }
    return out;
  };
  EXPECT_TRUE(Eventually(absl::Seconds(3), [&] { return started().size() >= 4; }));
  absl::SleepFor(absl::Milliseconds(300));
  const std::vector<WatchStream*> running = started();
  ASSERT_EQ(running.size(), 4u);
  EXPECT_EQ(Metric(*server_, "hamlet_connected_devices"), 4);

  PullResponse response;
  EXPECT_THAT(device_->Pull(start_cursor_, &response, absl::Milliseconds(300)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  Device other(OwnChannel(server_->address()), kDevice, device_->token());
  EXPECT_TRUE(other.Pull(start_cursor_, &response, absl::Seconds(2)).ok());

  running[0]->Cancel();
  running[1]->Cancel();
  EXPECT_THAT(running[0]->WaitForEnd(absl::Seconds(2)), ::testing::Optional(StatusIs(absl::StatusCode::kCancelled)));
  EXPECT_TRUE(Eventually(absl::Seconds(3), [&] { return started().size() == 6; })) << "the waiting streams started";
  EXPECT_TRUE(Eventually(absl::Seconds(2), [&] { return Metric(*server_, "hamlet_connected_devices") == 4; }));
}

// A client that pings more often than --keepalive_min_ping_interval is told
// too_many_pings and its connection closed: its Watch stream ends UNAVAILABLE.
// A client that does not ping keeps its stream.
TEST_F(LimitsE2eTest, AClientPingingTooOftenLosesItsConnection) {
  // gRPC 1.51 clients send at most one ping a second, whatever their
  // keepalive time: pinging at that rate is abuse with a 5 s minimum.
  Start({"--keepalive_min_ping_interval=5s"});
  grpc::ChannelArguments pinging;
  pinging.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10);
  pinging.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Else the client itself stops after two pings until it sends data.
  pinging.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  Device noisy(OwnChannel(server_->address(), pinging), kDevice, device_->token());
  Device quiet(OwnChannel(server_->address()), kDevice, device_->token());
  WatchStream noisy_watch(noisy);
  WatchStream quiet_watch(quiet);
  ASSERT_TRUE(noisy_watch.WaitForMessage(absl::Seconds(2)));
  ASSERT_TRUE(quiet_watch.WaitForMessage(absl::Seconds(2)));

  EXPECT_EQ(Metric(*server_, "hamlet_connected_devices"), 2);
  const absl::Time start = absl::Now();
  const std::optional<grpc::Status> ended = noisy_watch.WaitForEnd(absl::Seconds(8));
  ASSERT_TRUE(ended.has_value()) << "the pinging client's stream was not ended";
  EXPECT_THAT(*ended, StatusIs(absl::StatusCode::kUnavailable));
  std::cout << "pinging client's Watch ended after " << absl::Now() - start << ": " << ended->error_code() << " "
            << ended->error_message() << "\n";
  EXPECT_FALSE(quiet_watch.WaitForEnd(absl::Milliseconds(100)).has_value());
  EXPECT_TRUE(Eventually(absl::Seconds(2), [&] { return Metric(*server_, "hamlet_connected_devices") == 1; }));
}

// A phone that vanishes with a Watch stream open (the network drops it; no
// FIN, no RST) is found by the server's keepalive pings and its stream
// freed, even after the stream sat idle through several pings.
TEST_F(LimitsE2eTest, AVanishedPhoneIsDroppedByKeepalive) {
  Start({"--keepalive_time=300ms", "--keepalive_timeout=500ms"});
  FreezableProxy proxy(server_->address());
  Device phone(OwnChannel(proxy.address()), kDevice, device_->token());
  WatchStream watch(phone);
  ASSERT_TRUE(watch.WaitForMessage(absl::Seconds(2)));
  EXPECT_EQ(Metric(*server_, "hamlet_connected_devices"), 1);
  // Idle through about six keepalive pings, answered through the proxy.
  absl::SleepFor(absl::Milliseconds(2000));
  EXPECT_EQ(Metric(*server_, "hamlet_connected_devices"), 1);
  EXPECT_FALSE(watch.WaitForEnd(absl::ZeroDuration()).has_value());

  proxy.Freeze();
  const absl::Time frozen = absl::Now();
  EXPECT_TRUE(Eventually(absl::Seconds(5), [&] { return Metric(*server_, "hamlet_connected_devices") == 0; }));
  std::cout << "the server freed the vanished phone's stream after " << absl::Now() - frozen << "\n";
}

// With --device_rate, a device that calls too often is refused with a
// message and a retry hint until it slows down; other devices, and
// replication nodes, are not held back.
TEST_F(LimitsE2eTest, ADeviceOverItsRateIsRefusedUntilItSlowsDown) {
  Start({"--device_rate=2", "--device_burst=4"});
  std::unique_ptr<Device> busy = Officer(1);
  std::unique_ptr<Device> calm = Officer(2);
  PullResponse response;
  std::map<std::string, std::string> trailers;
  grpc::Status refused;
  int admitted = 0;
  for (int i = 0; i < 12 && refused.ok(); ++i) {
    trailers.clear();
    refused = busy->Pull("", &response, absl::Seconds(5), &trailers);
    if (refused.ok()) ++admitted;
  }
  EXPECT_GE(admitted, 4);
  ASSERT_THAT(refused,
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr(absl::StrCat("device ", busy->id(),
                                              " is over its rate of 2 requests/s (bursts of 4); retry after ~"))));
  EXPECT_EQ(trailers["hamlet-error-reason"], "RATE_LIMITED");
  int retry_after_ms = 0;
  ASSERT_TRUE(absl::SimpleAtoi(trailers["hamlet-retry-after-ms"], &retry_after_ms));
  EXPECT_GT(retry_after_ms, 0);
  EXPECT_LE(retry_after_ms, 500);
  EXPECT_THAT(refused.error_message(), HasSubstr(absl::StrCat("~", retry_after_ms, " ms")));

  EXPECT_TRUE(calm->Pull("", &response).ok());
  for (int i = 0; i < 20; ++i)
    ASSERT_TRUE(device_->Pull(start_cursor_, &response).ok()) << "replication node, call " << i;

  absl::SleepFor(absl::Milliseconds(retry_after_ms + 20));
  EXPECT_TRUE(busy->Pull("", &response).ok());
  EXPECT_THAT(server_->Log(), HasSubstr("result=RESOURCE_EXHAUSTED error=device"));
}

// With --max_calls pushes in flight, another is refused at once with
// RESOURCE_EXHAUSTED (which clients retry) rather than queued without bound,
// and a refused push writes nothing.
TEST_F(LimitsE2eTest, WithMaxCallsInFlightCallsAreRefusedAndWriteNothing) {
  Start({"--max_calls=3"});
  constexpr int kPushes = 32, kRecords = 200;
  std::vector<PushRequest> batches;
  for (int b = 0; b < kPushes; ++b) {
    std::vector<Record> changes;
    for (int i = 0; i < kRecords; ++i) {
      changes.push_back(NewCase(Uuid(b * 1000 + i), "07132", MakeStamp(NowMs(), 0, kDevice)));
    }
    batches.push_back(Batch(Uuid(100000 + b), std::move(changes)));
  }
  std::vector<std::unique_ptr<Device>> phones;
  for (int b = 0; b < kPushes; ++b) {
    phones.push_back(std::make_unique<Device>(OwnChannel(server_->address()), kDevice, device_->token()));
    ASSERT_TRUE(phones.back()->channel().WaitForConnected(In(absl::Seconds(5))));
  }
  std::vector<grpc::Status> results(kPushes);
  std::vector<std::thread> threads;
  for (int b = 0; b < kPushes; ++b) {
    threads.emplace_back([&, b] {
      PushResponse response;
      results[b] = phones[b]->Push(batches[b], &response);
    });
  }
  for (auto& t : threads) t.join();
  int refused = 0;
  for (const grpc::Status& s : results) {
    EXPECT_THAT(s, AnyOf(StatusIs(absl::StatusCode::kOk),
                         StatusIs(absl::StatusCode::kResourceExhausted,
                                  HasSubstr("3 pushes and pulls in flight (--max_calls); nothing was written"))));
    if (!s.ok()) ++refused;
  }
  std::cout << refused << " of " << kPushes << " simultaneous pushes refused\n";
  EXPECT_GT(refused, 0);
  EXPECT_EQ(NewSinceStart().size(), static_cast<size_t>((kPushes - refused) * kRecords));

  for (int b = 0; b < kPushes; ++b) {
    PushResponse response;
    if (!results[b].ok()) {
      ASSERT_TRUE(device_->Push(batches[b], &response).ok());
    }
  }
  EXPECT_EQ(NewSinceStart().size(), static_cast<size_t>(kPushes * kRecords));
}

}  // namespace
}  // namespace hamlet
