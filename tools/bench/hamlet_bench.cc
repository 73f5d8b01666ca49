// hamlet-bench: the real hamletd, driven over loopback by simulated devices,
// against the physical limit of this machine (plain RocksDB with synced
// writes, a bare gRPC echo) and against pouchdb-server, in one run, printed
// as ratios. docs/BENCHMARKS.md ("Server") records a run and reads it.
//
//   --mode=quick  a second per workload, fewer shapes, a catch-up of what the
//                 pushes left (about 20k records): for CI, a smoke run
//   --mode=full   the table: every push shape, catch-up at 10k/100k/1M
//   --mode=field  phones over a shaped rural link, Hamlet against PouchDB
//                 (tools/bench/field_bench.h)
//
// A push workload is D devices, each on its own connection and thread,
// pushing batches of B new mediation cases of about 1 KB for a fixed time;
// latency is per push, from the client. A catch-up pull is a town officer's
// device pulling everything from an empty cursor (pages of up to 5,000
// records, 3 MiB). Bytes on the wire are message payloads (protobuf bytes for
// Hamlet, HTTP body bytes for pouchdb-server), without transport framing.

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/echo.grpc.pb.h"
#include "google/protobuf/util/time_util.h"
#include "hamlet/v1/admin.grpc.pb.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "storage/raw_baseline.h"
#include "sync/merge.h"
#include "sync/uuid.h"
#include "tools/bench/field_bench.h"
#include "tools/bench/pouch_server.h"
#include "tools/harness/hamletd_process.h"
#include "tools/harness/program_flags.h"

ABSL_FLAG(std::string, mode, "quick",
          "quick (seconds, for CI), full (the server table in docs/BENCHMARKS.md) or field (Hamlet and PouchDB "
          "phones over a shaped rural link: docs/BENCHMARKS.md, \"Field link\")");
ABSL_FLAG(std::string, hamletd, "", "Path of hamletd (default: ../server/hamletd next to this program).");
ABSL_FLAG(std::string, work_dir, "", "Directory for the servers' data (default: a new directory under /tmp).");
ABSL_FLAG(bool, pouchdb, true, "Also measure pouchdb-server (installed with npm by tools/bench/pouchdb-server).");
ABSL_FLAG(std::string, only_push, "",
          "D,B: start hamletd, run only the push of D devices x batches of B for 20 s and print its pid first "
          "(for a profiler to attach to).");
ABSL_FLAG(int64_t, only_pull, 0,
          "N: start hamletd, store about N records, and time only one device's catch-up pull of them.");
ABSL_FLAG(std::string, pouchdb_install_dir, "",
          "Where pouchdb-server is installed (default: build/pouchdb next to this program's build dir).");

namespace hamlet::bench {
namespace {

using google::protobuf::util::TimeUtil;
using hamlet::v1::Record;

// Ends the run, naming any server that died (its sanitizer report, usually).
[[noreturn]] void Fail(const std::string& why) {
  std::fprintf(stderr, "hamlet-bench: %s\n%s", why.c_str(), harness::DeadServers().c_str());
  std::exit(1);
}

// Percentile of sorted values.
double At(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  return sorted[static_cast<size_t>(q * static_cast<double>(sorted.size() - 1))];
}

std::shared_ptr<grpc::Channel> OwnChannel(const std::string& address, int n) {
  grpc::ChannelArguments args;
  args.SetInt("hamlet.bench.connection", n);  // A distinct argument: a connection of its own.
  args.SetMaxReceiveMessageSize(16 << 20);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// About 1 KB of text in a case summary, as a mediator might write.
const std::string& Summary() {
  static const std::string* text = [] {
    auto* s = new std::string();
    while (s->size() < 900)
      s->append("Tranh chấp ranh giới đất giữa hai hộ liền kề ở khu 3; hai bên đồng ý hoà giải. ");
    s->resize(900);
    return s;
  }();
  return *text;
}

// A new mediation case as a phone creates it.
Record NewCase(absl::BitGen& gen, const std::string& unit, const std::string& device, int64_t now_ms,
               uint32_t logical) {
  Record r;
  r.set_id(sync::NewUuid(gen));
  r.set_unit_code(unit);
  r.set_author(device);
  *r.mutable_create_time() = TimeUtil::MillisecondsToTimestamp(now_ms);
  r.set_sensitivity(hamlet::v1::SENSITIVITY_CONFIDENTIAL);
  auto* c = r.mutable_mediation_case();
  c->set_date_received("2026-11-15");
  c->set_dispute_type(hamlet::v1::DISPUTE_TYPE_LAND);
  c->set_summary(Summary());
  c->set_status(hamlet::v1::MEDIATION_STATUS_RECEIVED);
  c->set_round(1);
  hamlet::v1::Stamp stamp;
  stamp.set_physical_ms(now_ms);
  stamp.set_logical(logical);
  stamp.set_node(device);
  for (uint32_t field :
       {hamlet::v1::MediationCase::kDateReceivedFieldNumber, hamlet::v1::MediationCase::kDisputeTypeFieldNumber,
        hamlet::v1::MediationCase::kSummaryFieldNumber, hamlet::v1::MediationCase::kStatusFieldNumber,
        hamlet::v1::MediationCase::kRoundFieldNumber, hamlet::v1::MediationCase::kOutcomeFieldNumber}) {
    sync::SetFieldStamp(&r, field, stamp);
  }
  return r;
}

// The real hamletd: tools/harness/hamletd_process.h.
using harness::Device;
using harness::Hamletd;
using harness::ProgramDir;
using harness::ReadFile;
using harness::Rss;
using harness::RssOf;

struct Throughput {
  double records_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double bytes_per_record = 0;
  uint64_t records = 0;
  uint64_t failures = 0;
};

// A push run's figures from each client's latencies and the counts.
Throughput Summarize(const std::vector<std::vector<double>>& latencies, uint64_t records, uint64_t bytes,
                     uint64_t failures, absl::Time start) {
  Throughput out;
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  out.records = records;
  out.records_per_s = static_cast<double>(records) / absl::ToDoubleSeconds(absl::Now() - start);
  out.p50_ms = At(all, 0.5);
  out.p99_ms = At(all, 0.99);
  out.bytes_per_record = records == 0 ? 0 : static_cast<double>(bytes) / static_cast<double>(records);
  out.failures = failures;
  return out;
}

// A push of `batch` new cases from `device`.
hamlet::v1::PushRequest NewBatch(absl::BitGen& gen, const Device& device, int batch) {
  hamlet::v1::PushRequest request;
  request.set_device_id(device.id);
  request.set_batch_id(sync::NewUuid(gen));
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  for (int r = 0; r < batch; ++r) {
    *request.add_changes() = NewCase(gen, device.unit, device.id, now_ms, static_cast<uint32_t>(r));
  }
  return request;
}

// `devices.size()` devices push batches of `batch` new cases for `duration`.
Throughput PushLoad(const std::string& address, const std::vector<Device>& devices, int batch,
                    absl::Duration duration) {
  std::vector<std::vector<double>> latencies(devices.size());
  std::atomic<uint64_t> records{0}, bytes{0}, failures{0};
  const absl::Time start = absl::Now();
  const absl::Time end = start + duration;
  std::vector<std::thread> threads;
  for (size_t d = 0; d < devices.size(); ++d) {
    threads.emplace_back([&, d] {
      auto stub = hamlet::v1::SyncService::NewStub(OwnChannel(address, static_cast<int>(d)));
      absl::BitGen gen;
      while (absl::Now() < end) {
        const hamlet::v1::PushRequest request = NewBatch(gen, devices[d], batch);
        grpc::ClientContext context;
        context.AddMetadata("authorization", "Bearer " + devices[d].token);
        hamlet::v1::PushResponse response;
        const auto t0 = std::chrono::steady_clock::now();
        const grpc::Status status = stub->Push(&context, request, &response);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (!status.ok()) {
          if (++failures == 1) std::fprintf(stderr, "push failed: %s\n", status.error_message().c_str());
          continue;
        }
        latencies[d].push_back(ms);
        records += static_cast<uint64_t>(batch);
        bytes += request.ByteSizeLong() + response.ByteSizeLong();
      }
    });
  }
  for (auto& t : threads) t.join();
  return Summarize(latencies, records, bytes, failures, start);
}

// Pushes new cases until the store holds about `target` records.
void Fill(const std::string& address, const std::vector<Device>& devices, uint64_t* stored, uint64_t target) {
  std::atomic<uint64_t> count{*stored};
  std::vector<std::thread> threads;
  for (size_t d = 0; d < devices.size(); ++d) {
    threads.emplace_back([&, d] {
      auto stub = hamlet::v1::SyncService::NewStub(OwnChannel(address, 1000 + static_cast<int>(d)));
      absl::BitGen gen;
      while (count.fetch_add(500) < target) {
        const hamlet::v1::PushRequest request = NewBatch(gen, devices[d], 500);
        grpc::ClientContext context;
        context.AddMetadata("authorization", "Bearer " + devices[d].token);
        hamlet::v1::PushResponse response;
        const grpc::Status status = stub->Push(&context, request, &response);
        if (!status.ok()) Fail("fill push: " + status.error_message());
      }
    });
  }
  for (auto& t : threads) t.join();
  *stored = std::max(target, *stored);
}

struct PullResult {
  double seconds = 0;        // Slowest client.
  double records_per_s = 0;  // Per client.
  double bytes_per_record = 0;
  uint64_t records = 0;      // Per client.
  double payload_bytes = 0;  // Per client.
  std::string last_page;     // The first client's last full page, serialized.
};

// `clients` devices at once each pull everything from an empty cursor.
PullResult CatchUp(const std::string& address, const Device& reader, int clients) {
  std::vector<double> seconds(static_cast<size_t>(clients));
  std::vector<uint64_t> records(static_cast<size_t>(clients)), bytes(static_cast<size_t>(clients));
  std::string last_page;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto stub = hamlet::v1::SyncService::NewStub(OwnChannel(address, 5000 + c));
      hamlet::v1::PullRequest request;
      request.set_device_id(reader.id);
      request.set_page_size(5000);
      request.set_max_page_bytes(3 << 20);
      request.set_lean_stamps(true);  // As a phone pulls (client/device.cc).
      const auto t0 = std::chrono::steady_clock::now();
      while (true) {
        grpc::ClientContext context;
        context.AddMetadata("authorization", "Bearer " + reader.token);
        hamlet::v1::PullResponse response;
        const grpc::Status status = stub->Pull(&context, request, &response);
        if (!status.ok()) Fail("pull: " + status.error_message());
        records[c] += static_cast<uint64_t>(response.records_size());
        const size_t size = response.ByteSizeLong();
        bytes[c] += size + request.ByteSizeLong();
        if (c == 0 && size > last_page.size()) last_page = response.SerializeAsString();
        request.set_cursor(response.next_cursor());
        if (response.remaining() == 0) break;
      }
      seconds[c] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
  }
  for (auto& t : threads) t.join();
  PullResult out;
  out.seconds = *std::max_element(seconds.begin(), seconds.end());
  out.records = records[0];
  out.payload_bytes = static_cast<double>(bytes[0]);
  out.records_per_s = static_cast<double>(records[0]) / seconds[0];
  out.bytes_per_record = static_cast<double>(bytes[0]) / static_cast<double>(records[0]);
  out.last_page = std::move(last_page);
  return out;
}

// Calls per second of a caught-up pull (authentication, scope check, an
// index seek, a log line on error only) from `threads` threads.
double NoOpRate(const std::string& address, const Device& device, int threads, absl::Duration duration) {
  // Catch up once; from then on every pull is empty.
  hamlet::v1::PullRequest caught_up;
  caught_up.set_device_id(device.id);
  {
    auto stub = hamlet::v1::SyncService::NewStub(OwnChannel(address, 6999));
    while (true) {
      grpc::ClientContext context;
      context.AddMetadata("authorization", "Bearer " + device.token);
      hamlet::v1::PullResponse response;
      if (const grpc::Status status = stub->Pull(&context, caught_up, &response); !status.ok()) {
        Fail(absl::StrCat("no-op pull failed: ", status.error_code(), " ", status.error_message()));
      }
      caught_up.set_cursor(response.next_cursor());
      if (response.remaining() == 0) break;
    }
  }
  std::atomic<uint64_t> calls{0};
  const absl::Time end = absl::Now() + duration;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto stub = hamlet::v1::SyncService::NewStub(OwnChannel(address, 7000 + t));
      const hamlet::v1::PullRequest request = caught_up;
      while (absl::Now() < end) {
        grpc::ClientContext context;
        context.AddMetadata("authorization", "Bearer " + device.token);
        hamlet::v1::PullResponse response;
        if (const grpc::Status status = stub->Pull(&context, request, &response); !status.ok()) {
          Fail(absl::StrCat("no-op pull failed: ", status.error_code(), " ", status.error_message()));
        }
        ++calls;
      }
    });
  }
  for (auto& w : workers) w.join();
  return static_cast<double>(calls) / absl::ToDoubleSeconds(duration);
}

// Opens `streams` Watch streams and leaves them idle; returns the server's
// resident set with them open.
double IdleWatchRssMib(const Hamletd& server, const Device& device, int streams) {
  grpc::CompletionQueue cq;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int c = 0; c < 50; ++c) channels.push_back(OwnChannel(server.address(), 9000 + c));
  std::vector<std::unique_ptr<hamlet::v1::SyncService::Stub>> stubs;
  for (auto& ch : channels) stubs.push_back(hamlet::v1::SyncService::NewStub(ch));
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientAsyncReader<hamlet::v1::WatchResponse>>> readers;
  // A caught-up cursor, so the streams stay silent.
  hamlet::v1::PullRequest pull;
  pull.set_device_id(device.id);
  auto stub = hamlet::v1::SyncService::NewStub(channels[0]);
  while (true) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + device.token);
    hamlet::v1::PullResponse response;
    if (!stub->Pull(&context, pull, &response).ok()) Fail("pull before watch failed");
    pull.set_cursor(response.next_cursor());
    if (response.remaining() == 0) break;
  }
  hamlet::v1::WatchRequest request;
  request.set_device_id(device.id);
  request.set_cursor(pull.cursor());
  for (int i = 0; i < streams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->AddMetadata("authorization", "Bearer " + device.token);
    readers.push_back(
        stubs[static_cast<size_t>(i) % stubs.size()]->PrepareAsyncWatch(contexts.back().get(), request, &cq));
    readers.back()->StartCall(reinterpret_cast<void*>(static_cast<intptr_t>(i + 1)));
  }
  int started = 0;
  void* tag;
  bool ok;
  while (started < streams && cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + std::chrono::seconds(30)) ==
                                  grpc::CompletionQueue::GOT_EVENT) {
    ++started;
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));  // Let the server settle with them all open.
  const double rss = RssOf(server.pid()).now_mib;
  if (started < streams) std::fprintf(stderr, "only %d of %d Watch streams started\n", started, streams);
  for (auto& context : contexts) context->TryCancel();
  std::vector<grpc::Status> statuses(readers.size());
  for (size_t i = 0; i < readers.size(); ++i) readers[i]->Finish(&statuses[i], reinterpret_cast<void*>(-1));
  for (size_t i = 0; i < readers.size(); ++i) {
    if (cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + std::chrono::seconds(10)) !=
        grpc::CompletionQueue::GOT_EVENT) {
      break;
    }
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return rss;
}

// ---------------------------------------------------------------------------
// The bare gRPC yardstick, served in this process.

class EchoService final : public hamlet::bench::Echo::Service {
  grpc::Status Unary(grpc::ServerContext*, const hamlet::bench::Blob* request, hamlet::bench::Blob* reply) override {
    *reply = *request;
    return grpc::Status::OK;
  }
  grpc::Status Stream(grpc::ServerContext*, const hamlet::bench::StreamRequest* request,
                      grpc::ServerWriter<hamlet::bench::Blob>* writer) override {
    hamlet::bench::Blob blob;
    blob.set_data(std::string(request->bytes_each(), 'b'));
    for (uint32_t i = 0; i < request->messages(); ++i) {
      if (!writer->Write(blob)) break;
    }
    return grpc::Status::OK;
  }
};

struct Echo {
  EchoService service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  Echo() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(16 << 20);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    if (server == nullptr || port == 0) Fail("the bare gRPC echo server did not start");
    address = absl::StrCat("127.0.0.1:", port);
  }
  double UnaryRate(int threads, size_t bytes, absl::Duration duration) {
    std::atomic<uint64_t> calls{0};
    const absl::Time end = absl::Now() + duration;
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        auto stub = hamlet::bench::Echo::NewStub(OwnChannel(address, 11000 + t));
        hamlet::bench::Blob blob;
        blob.set_data(std::string(bytes, 'e'));
        while (absl::Now() < end) {
          grpc::ClientContext context;
          // A yardstick: a connection still being made is waited for, not failed.
          context.set_wait_for_ready(true);
          context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
          hamlet::bench::Blob reply;
          if (const grpc::Status status = stub->Unary(&context, blob, &reply); !status.ok()) {
            Fail(absl::StrCat("echo failed: ", status.error_code(), " ", status.error_message()));
          }
          ++calls;
        }
      });
    }
    for (auto& w : workers) w.join();
    return static_cast<double>(calls) / absl::ToDoubleSeconds(duration);
  }
  // Seconds to stream `total` bytes in messages of `each`.
  double StreamSeconds(double total, uint32_t each) {
    auto stub = hamlet::bench::Echo::NewStub(OwnChannel(address, 12000));
    hamlet::bench::StreamRequest request;
    request.set_bytes_each(each);
    request.set_messages(static_cast<uint32_t>(total / each) + 1);
    grpc::ClientContext context;
    const auto t0 = std::chrono::steady_clock::now();
    auto reader = stub->Stream(&context, request);
    hamlet::bench::Blob blob;
    while (reader->Read(&blob)) {
    }
    if (!reader->Finish().ok()) Fail("echo stream failed");
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

// ---------------------------------------------------------------------------
// pouchdb-server, fed the same records with the CouchDB replication protocol.

class Pouch {
 public:
  Pouch(const std::string& dir, const std::string& install) : server_(dir, install, "bench"), port_(server_.port()) {}
  pid_t pid() const { return server_.pid(); }

  // The same shape of record as NewCase, as a CouchDB document with its own
  // revision (new_edits=false is how replication writes).
  static std::string Doc(absl::BitGen& gen, const std::string& device, int64_t now_ms) {
    return absl::StrFormat(
        R"({"_id":"%s","_rev":"1-%016x%016x","type":"mediation_case","unit_code":"07132-K01","author":"%s",)"
        R"("create_time":%d,"sensitivity":"CONFIDENTIAL","date_received":"2026-11-15","dispute_type":"LAND",)"
        R"("summary":"%s","status":"RECEIVED","round":1})",
        sync::NewUuid(gen), absl::Uniform<uint64_t>(gen), absl::Uniform<uint64_t>(gen), device, now_ms, Summary());
  }

  Throughput PushLoad(int clients, int batch, absl::Duration duration) {
    std::vector<std::vector<double>> latencies(static_cast<size_t>(clients));
    std::atomic<uint64_t> records{0}, bytes{0}, failures{0};
    const absl::Time start = absl::Now();
    const absl::Time end = start + duration;
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c] {
        httplib::Client client("127.0.0.1", port_);
        client.set_read_timeout(120, 0);
        absl::BitGen gen;
        const std::string device = absl::StrCat("device-", c);
        while (absl::Now() < end) {
          std::string body = R"({"new_edits":false,"docs":[)";
          const int64_t now_ms = absl::ToUnixMillis(absl::Now());
          for (int r = 0; r < batch; ++r) {
            if (r > 0) body += ",";
            body += Doc(gen, device, now_ms);
          }
          body += "]}";
          const auto t0 = std::chrono::steady_clock::now();
          auto response = client.Post("/bench/_bulk_docs", body, "application/json");
          const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
          if (!response || response->status != 201) {
            ++failures;
            continue;
          }
          latencies[static_cast<size_t>(c)].push_back(ms);
          records += static_cast<uint64_t>(batch);
          bytes += body.size() + response->body.size();
        }
      });
    }
    for (auto& t : threads) t.join();
    return Summarize(latencies, records, bytes, failures, start);
  }

  void Fill(uint64_t* stored, uint64_t target) {
    while (*stored < target) {
      Throughput t = PushLoad(8, 500, absl::Seconds(2));
      *stored += t.records;
    }
  }

  PullResult CatchUp() {
    httplib::Client client("127.0.0.1", port_);
    client.set_read_timeout(600, 0);
    PullResult out;
    std::string since = "0";
    const auto t0 = std::chrono::steady_clock::now();
    while (true) {
      auto response = client.Get(absl::StrCat("/bench/_changes?include_docs=true&limit=5000&since=", since));
      if (!response || response->status != 200) Fail("pouchdb-server: _changes failed");
      const std::string& body = response->body;
      out.payload_bytes += static_cast<double>(body.size());
      // Count results and find last_seq without a JSON library: every result
      // carries one "changes" array; last_seq closes the body.
      size_t results = 0;
      for (size_t at = body.find("\"changes\":"); at != std::string::npos; at = body.find("\"changes\":", at + 1)) {
        ++results;
      }
      const size_t last = body.rfind("\"last_seq\":");
      if (last == std::string::npos) Fail("pouchdb-server: no last_seq in _changes");
      size_t begin = last + 11;
      size_t stop = body.find_first_of(",}", begin);
      since = std::string(absl::StripAsciiWhitespace(body.substr(begin, stop - begin)));
      if (!since.empty() && since.front() == '"') since = since.substr(1, since.size() - 2);
      if (results == 0) break;
      out.records += results;
    }
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.records_per_s = static_cast<double>(out.records) / out.seconds;
    out.bytes_per_record = out.payload_bytes / static_cast<double>(out.records);
    return out;
  }

 private:
  PouchServer server_;
  int port_;
};

// ---------------------------------------------------------------------------

struct Targets {
  std::vector<std::string> lines;
  void Check(const std::string& what, double ratio, double needed, bool at_most = false) {
    const bool met = at_most ? ratio <= needed : ratio >= needed;
    lines.push_back(absl::StrFormat("  %-72s %8.2fx  (target %s %.2fx)  %s", what, ratio, at_most ? "<=" : ">=", needed,
                                    met ? "met" : "MISSED"));
  }
};

int Run() {
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const bool full = mode == "full";
  if (!full && mode != "quick" && mode != "field") Fail("--mode is quick, full or field");
  std::string hamletd = absl::GetFlag(FLAGS_hamletd);
  if (hamletd.empty()) hamletd = ProgramDir() + "/../server/hamletd";
  std::string work = absl::GetFlag(FLAGS_work_dir);
  if (work.empty()) {
    std::string pattern = "/tmp/hamlet-bench-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) Fail("cannot make a work directory");
    work = pattern;
  }
  if (mode == "field") {
    FieldBenchOptions options;
    options.hamletd = hamletd;
    options.field = ProgramDir() + "/hamlet-field";
    options.faultproxy = ProgramDir() + "/hamlet-faultproxy";
    options.work = work;
    options.pouchdb = absl::GetFlag(FLAGS_pouchdb);
    options.pouchdb_install = absl::GetFlag(FLAGS_pouchdb_install_dir);
    if (options.pouchdb_install.empty()) options.pouchdb_install = PouchServer::DefaultInstall();
    return RunFieldBench(options);
  }
  std::filesystem::create_directories(work);
  const absl::Duration run = full ? absl::Seconds(10) : absl::Seconds(1);
  std::printf("hamlet-bench --mode=%s: data in %s, %d CPUs\n", full ? "full" : "quick", work.c_str(),
              static_cast<int>(std::thread::hardware_concurrency()));
  Targets targets;

  if (const std::string only = absl::GetFlag(FLAGS_only_push); !only.empty()) {
    std::vector<std::string> shape = absl::StrSplit(only, ',');
    int d = 0, b = 0;
    if (shape.size() != 2 || !absl::SimpleAtoi(shape[0], &d) || !absl::SimpleAtoi(shape[1], &b)) {
      Fail("--only_push is D,B");
    }
    Hamletd server(hamletd, work + "/hamlet");
    const std::vector<Device> devices = server.EnrollMembers(d);
    std::printf("hamletd pid %d\n", server.pid());
    std::fflush(stdout);
    Throughput t = PushLoad(server.address(), devices, b, absl::Seconds(20));
    std::printf("%d x %d: %.0f records/s, p50 %.2f ms, p99 %.2f ms; server RSS peak %.0f MiB\n", d, b, t.records_per_s,
                t.p50_ms, t.p99_ms, RssOf(server.pid()).peak_mib);
    return 0;
  }

  if (const int64_t n = absl::GetFlag(FLAGS_only_pull); n > 0) {
    Hamletd server(hamletd, work + "/hamlet");
    const std::vector<Device> fillers = server.EnrollMembers(16);
    uint64_t stored = 289;
    Fill(server.address(), fillers, &stored, static_cast<uint64_t>(n));
    std::printf("hamletd pid %d holds %llu records; catching up\n", server.pid(),
                static_cast<unsigned long long>(stored));
    std::fflush(stdout);
    const PullResult one = CatchUp(server.address(), server.Enroll(hamlet::v1::ROLE_TOWN_OFFICER, "206"), 1);
    std::printf("catch-up of %llu records: %.2f s, %.0f records/s, %.1f us a record\n",
                static_cast<unsigned long long>(one.records), one.seconds, one.records_per_s,
                1e6 * one.seconds / static_cast<double>(one.records));
    Echo echo;
    const double echo_s = echo.StreamSeconds(one.payload_bytes, 1 << 20);
    std::printf("bare gRPC stream of the same bytes: %.2f s (%.2f x)\n", echo_s, echo_s / one.seconds);
    // What the client's parse of the records costs on its own: a bound on
    // the pull's rate that no server change moves.
    if (!one.last_page.empty()) {
      hamlet::v1::PullResponse page;
      const auto t0 = std::chrono::steady_clock::now();
      int parsed = 0;
      for (; parsed < 20; ++parsed) {
        if (!page.ParseFromString(one.last_page)) Fail("a pulled page does not parse");
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("the client's parse alone: %.1f us a record (a page of %d, %zu bytes)\n",
                  1e6 * s / (parsed * page.records_size()), page.records_size(), one.last_page.size());
    }
    return 0;
  }

  // The limits of this machine.
  const size_t raw_records = full ? 20000 : 2000;
  auto raw = [&](size_t batch, size_t threads) {
    static int n = 0;
    auto rate = storage::RawSyncedWriteRate(absl::StrCat(work, "/raw-", ++n), raw_records, 1024, batch, threads);
    if (!rate.ok()) Fail(rate.status().ToString());
    return *rate;
  };
  const double raw_b1 = raw(1, 1), raw_b50 = raw(50, 1), raw_b1_t8 = raw(1, 8);
  std::printf(
      "\nplain RocksDB, 1 KB values, synced WriteBatches (records/s):\n"
      "  1 writer, batch 1: %.0f   1 writer, batch 50: %.0f   8 writers, batch 1: %.0f\n",
      raw_b1, raw_b50, raw_b1_t8);
  Echo echo;
  const double echo_unary = echo.UnaryRate(4, 200, run);
  std::printf("bare gRPC echo: %.0f unary calls/s (4 threads, 200 bytes)\n", echo_unary);

  // Hamlet.
  Hamletd server(hamletd, work + "/hamlet");
  std::vector<Device> devices;
  const std::vector<int> device_counts = full ? std::vector<int>{1, 16, 64, 256} : std::vector<int>{1, 64};
  const std::vector<int> batches = full ? std::vector<int>{1, 10, 50} : std::vector<int>{1, 50};
  devices = server.EnrollMembers(device_counts.back());
  const Device officer = server.Enroll(hamlet::v1::ROLE_TOWN_OFFICER, "206");
  std::printf("\nHamlet push (D devices x batches of B ~1 KB cases, %.0f s each):\n", absl::ToDoubleSeconds(run));
  std::printf("  %5s %4s %12s %9s %9s %12s %12s\n", "D", "B", "records/s", "p50 ms", "p99 ms", "bytes/rec",
              "RSS peak MiB");
  std::map<std::pair<int, int>, Throughput> hamlet_push;
  for (int d : device_counts) {
    for (int b : batches) {
      std::vector<Device> some(devices.begin(), devices.begin() + d);
      Throughput t = PushLoad(server.address(), some, b, run);
      hamlet_push[{d, b}] = t;
      std::printf("  %5d %4d %12.0f %9.2f %9.2f %12.0f %12.0f%s\n", d, b, t.records_per_s, t.p50_ms, t.p99_ms,
                  t.bytes_per_record, RssOf(server.pid()).peak_mib, t.failures > 0 ? "  (failures!)" : "");
      std::fflush(stdout);
    }
  }
  const Rss push_rss = RssOf(server.pid());
  // The bare gRPC echo of the same request bytes at the same concurrency, as
  // records a second (calls a second times the batch).
  const auto echo_same = [&](int d, int b) {
    const double bytes = hamlet_push[{d, b}].bytes_per_record * b;
    const double calls = echo.UnaryRate(d, static_cast<size_t>(bytes), run);
    std::printf("bare gRPC echo of a %dx%d push's request bytes (%.0f bytes, %d threads): %.0f calls/s\n", d, b, bytes,
                d, calls);
    return calls * b;
  };
  const double echo_64x1 = echo_same(64, 1), echo_64x50 = echo_same(64, 50);
  uint64_t stored = 289;
  for (const auto& [key, t] : hamlet_push) stored += t.records;

  // A member of a commune with no records: a caught-up pull of its scope.
  const double noop = NoOpRate(server.address(), server.Enroll(hamlet::v1::ROLE_MEMBER, "07144-K01"), 4, run);
  std::printf("no-op RPC (caught-up pull, auth and logging on): %.0f calls/s (4 threads)\n", noop);

  // Catch-up pulls as the store grows, and push cost at each size, on a
  // fresh server (the push runs above left hundreds of thousands of records).
  std::unique_ptr<Hamletd> grown;
  std::string pull_address = server.address();
  Device reader = officer;
  if (full) {
    grown = std::make_unique<Hamletd>(hamletd, work + "/grown");
    devices = grown->EnrollMembers(64);
    reader = grown->Enroll(hamlet::v1::ROLE_TOWN_OFFICER, "206");
    pull_address = grown->address();
    stored = 289;
  }
  const std::vector<uint64_t> sizes =
      full ? std::vector<uint64_t>{10000, 100000, 1000000} : std::vector<uint64_t>{stored};
  std::printf("\nHamlet catch-up pull from an empty cursor (one device; ten at once):\n");
  std::printf("  %9s %10s %12s %10s %12s %14s %16s %10s\n", "stored", "1: s", "records/s", "bytes/rec", "10: s",
              "echo same s", "push 64x50 rec/s", "report ms");
  std::map<uint64_t, PullResult> pulls;
  std::map<uint64_t, double> push_at;
  std::vector<Device> fillers(devices.begin(), devices.begin() + 16);
  std::vector<Device> sixty_four(devices.begin(), devices.begin() + std::min<size_t>(64, devices.size()));
  for (uint64_t size : sizes) {
    Fill(pull_address, fillers, &stored, size);
    PullResult one = CatchUp(pull_address, reader, 1);
    PullResult ten = CatchUp(pull_address, reader, 10);
    const double echo_s = echo.StreamSeconds(one.payload_bytes, 1 << 20);
    const double push = PushLoad(pull_address, sixty_four, 50, run).records_per_s;
    const double report_ms = (grown ? *grown : server).ReportMs();
    stored += static_cast<uint64_t>(push * absl::ToDoubleSeconds(run));
    pulls[size] = one;
    push_at[size] = push;
    std::printf("  %9llu %10.2f %12.0f %10.0f %12.2f %14.2f %16.0f %10.1f\n",
                static_cast<unsigned long long>(one.records), one.seconds, one.records_per_s, one.bytes_per_record,
                ten.seconds, echo_s, push, report_ms);
    if (size == (full ? 100000u : sizes.front())) {
      targets.Check(absl::StrFormat("catch-up pull of %llu records vs bare gRPC stream of the same bytes",
                                    static_cast<unsigned long long>(one.records)),
                    echo_s / one.seconds, 0.3);
    }
    std::fflush(stdout);
  }
  // Mixed, on a server of its own: 64 devices push batches of 10 while 4
  // devices stay in sync by pulling each new change, and 1,000 Watch streams
  // are open.
  {
    Hamletd mixed_server(hamletd, work + "/mixed");
    const std::vector<Device> pushers = mixed_server.EnrollMembers(64);
    const Device watcher = mixed_server.Enroll(hamlet::v1::ROLE_MEMBER, "07132-K01");
    std::atomic<bool> mixing{true};
    std::atomic<uint64_t> pulled{0};
    const absl::Time mix_start = absl::Now();
    std::vector<std::thread> pullers;
    for (int p = 0; p < 4; ++p) {
      const Device puller = mixed_server.Enroll(hamlet::v1::ROLE_MEMBER, "07132-K01");
      pullers.emplace_back([&, puller, p] {
        auto stub = hamlet::v1::SyncService::NewStub(OwnChannel(mixed_server.address(), 13000 + p));
        hamlet::v1::PullRequest request;
        request.set_device_id(puller.id);
        while (mixing) {
          grpc::ClientContext context;
          context.AddMetadata("authorization", "Bearer " + puller.token);
          hamlet::v1::PullResponse response;
          if (const grpc::Status status = stub->Pull(&context, request, &response); !status.ok()) {
            Fail(absl::StrCat("mixed pull failed: ", status.error_code(), " ", status.error_message()));
          }
          pulled += static_cast<uint64_t>(response.records_size());
          request.set_cursor(response.next_cursor());
          if (response.remaining() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      });
    }
    std::thread watches([&] { IdleWatchRssMib(mixed_server, watcher, 1000); });
    const Throughput mixed = PushLoad(mixed_server.address(), pushers, 10, run);
    watches.join();
    mixing = false;
    for (auto& t : pullers) t.join();
    const double mix_seconds = absl::ToDoubleSeconds(absl::Now() - mix_start);
    std::printf(
        "mixed (64 devices pushing batches of 10; 4 devices pulling as changes land; 1,000 Watch streams "
        "open): push %.0f records/s, p99 %.1f ms; pulled %.0f records/s in all\n",
        mixed.records_per_s, mixed.p99_ms, static_cast<double>(pulled) / mix_seconds);
  }
  std::printf("server RSS: peak %.0f MiB after the push runs\n", push_rss.peak_mib);
  // Idle Watch streams on a server of their own, so nothing else is counted.
  const int streams = full ? 5000 : 500;
  double watch_rss = 0;
  {
    Hamletd watched(hamletd, work + "/watch");
    const Device member = watched.Enroll(hamlet::v1::ROLE_MEMBER, "07132-K01");
    const double before = RssOf(watched.pid()).now_mib;
    watch_rss = IdleWatchRssMib(watched, member, streams);
    std::printf("server RSS with %d idle Watch streams: %.0f MiB (%.0f MiB before they opened)\n", streams, watch_rss,
                before);
  }

  targets.Check("push 64x1 vs bare gRPC echo of the same request bytes, 64 at once",
                hamlet_push[{64, 1}].records_per_s / echo_64x1, 0.5);
  targets.Check("push 64x50 vs the lower of that echo (64x50) and RocksDB WriteBatch(50)",
                hamlet_push[{64, 50}].records_per_s / std::min(echo_64x50, raw_b50), 0.5);
  std::printf("(plain RocksDB 8 writers batch 1: push 64x1 is %.2fx of it)\n",
              hamlet_push[{64, 1}].records_per_s / raw_b1_t8);
  targets.Check("no-op RPC vs bare gRPC unary echo", noop / echo_unary, 0.7);
  if (full) {
    targets.Check("push 64x50 throughput, 1M stored vs 10k stored (change)", push_at[10000] / push_at[1000000], 1.5,
                  true);
    targets.Check("pull time per record, 1M stored vs 10k stored (change)",
                  (pulls[1000000].seconds / pulls[1000000].records) / (pulls[10000].seconds / pulls[10000].records),
                  1.3, true);
    std::printf("5,000 idle Watch streams: %.0f MiB (target under 300 MiB): %s\n", watch_rss,
                watch_rss < 300 ? "met" : "MISSED");
  }

  if (absl::GetFlag(FLAGS_pouchdb)) {
    std::string install = absl::GetFlag(FLAGS_pouchdb_install_dir);
    if (install.empty()) install = PouchServer::DefaultInstall();
    Pouch pouch(work + "/pouch", install);
    std::printf("\npouchdb-server (LevelDB store, no fsync), the same records with _bulk_docs new_edits=false:\n");
    std::printf("  %5s %4s %12s %9s %9s %12s\n", "D", "B", "records/s", "p50 ms", "p99 ms", "bytes/rec");
    std::map<std::pair<int, int>, Throughput> pouch_push;
    for (int d : device_counts) {
      for (int b : batches) {
        if (d == 256 && b != 50) continue;  // One writer at a time inside; more clients only queue.
        Throughput t = pouch.PushLoad(d, b, run);
        pouch_push[{d, b}] = t;
        std::printf("  %5d %4d %12.0f %9.2f %9.2f %12.0f%s\n", d, b, t.records_per_s, t.p50_ms, t.p99_ms,
                    t.bytes_per_record, t.failures > 0 ? "  (failures!)" : "");
        std::fflush(stdout);
      }
    }
    const Rss pouch_rss = RssOf(pouch.pid());
    uint64_t pouch_stored = 0;
    for (const auto& [key, t] : pouch_push) pouch_stored += t.records;
    const uint64_t pull_size = full ? 100000 : sizes.front();
    pouch.Fill(&pouch_stored, pull_size);
    PullResult pouch_pull = pouch.CatchUp();
    std::printf("  catch-up _changes?include_docs=true: %llu docs in %.2f s (%.0f/s), %.0f bytes/doc\n",
                static_cast<unsigned long long>(pouch_pull.records), pouch_pull.seconds, pouch_pull.records_per_s,
                pouch_pull.bytes_per_record);
    std::printf("  server RSS: peak %.0f MiB after the push runs\n", pouch_rss.peak_mib);
    const PullResult& ours = pulls[full ? 100000 : sizes.front()];
    targets.Check("push 64x50 vs pouchdb-server",
                  hamlet_push[{64, 50}].records_per_s / pouch_push[{64, 50}].records_per_s, 8);
    targets.Check("push 64x1 vs pouchdb-server", hamlet_push[{64, 1}].records_per_s / pouch_push[{64, 1}].records_per_s,
                  10);
    targets.Check("catch-up pull records/s vs pouchdb-server _changes", ours.records_per_s / pouch_pull.records_per_s,
                  8);
    targets.Check("push p99 latency 64x50 vs pouchdb-server",
                  hamlet_push[{64, 50}].p99_ms / pouch_push[{64, 50}].p99_ms, 0.25, true);
    targets.Check("bytes on the wire per synced record vs pouchdb-server (push + pull)",
                  (hamlet_push[{64, 50}].bytes_per_record + ours.bytes_per_record) /
                      (pouch_push[{64, 50}].bytes_per_record + pouch_pull.bytes_per_record),
                  0.5, true);
    targets.Check("server peak RSS during the push runs vs pouchdb-server", push_rss.peak_mib / pouch_rss.peak_mib, 0.5,
                  true);
  }

  std::printf("\nratios (one run, this machine):\n");
  for (const std::string& line : targets.lines) std::printf("%s\n", line.c_str());
  return 0;
}

}  // namespace
}  // namespace hamlet::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Measures hamletd over loopback against plain RocksDB, a bare gRPC echo and pouchdb-server.\n"
      "Usage: hamlet-bench [--mode=quick|full|field] [--pouchdb=false]");
  hamlet::harness::ListFlagsOf("hamlet_bench.cc");
  absl::ParseCommandLine(argc, argv);
  return hamlet::bench::Run();
}
