#include "server/metrics.h"

#include <chrono>

#include <httplib.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/host_port.h"
#include "server/replicator.h"
#include "storage/town_store.h"

namespace hamlet::server {

namespace {

std::string CodeName(grpc::StatusCode code) { return absl::StatusCodeToString(static_cast<absl::StatusCode>(code)); }

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  calls_ = &prometheus::BuildCounter()
                .Name("hamlet_rpcs_total")
                .Help("Sync RPCs served, by method and gRPC status code.")
                .Register(*registry_);
  latency_ = &prometheus::BuildHistogram()
                  .Name("hamlet_rpc_duration_seconds")
                  .Help("Time to serve a sync RPC, by method (Watch streams excluded).")
                  .Register(*registry_);
  records_applied_ = &prometheus::BuildCounter()
                          .Name("hamlet_records_applied_total")
                          .Help("Records changed by pushes.")
                          .Register(*registry_)
                          .Add({});
  records_pulled_ = &prometheus::BuildCounter()
                         .Name("hamlet_records_pulled_total")
                         .Help("Records sent to pulling devices.")
                         .Register(*registry_)
                         .Add({});
  auto& pull_ahead = prometheus::BuildCounter()
                         .Name("hamlet_pull_pages_read_ahead_total")
                         .Help("Pull pages read ahead of the device's next pull, by what became of them.")
                         .Register(*registry_);
  pull_ahead_served_ = &pull_ahead.Add({{"outcome", "served"}});
  pull_ahead_stale_ = &pull_ahead.Add({{"outcome", "stale"}});
  pull_ahead_unused_ = &pull_ahead.Add({{"outcome", "unused"}});
  auto gauge = [this](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add({});
  };
  connected_ = gauge("hamlet_connected_devices", "Devices holding a Watch stream open.");
  records_ = gauge("hamlet_records", "Records held, tombstones included (exact).");
  last_seq_ = gauge("hamlet_last_seq", "Sequence number of the latest change.");
  open_conflicts_ = gauge("hamlet_open_conflicts", "Records with an open conflict.");
  wal_syncs_ = gauge("hamlet_wal_syncs",
                     "Write-ahead log syncs since start; with concurrent pushes, fewer than pushes (group commit).");
  replication_up_ = gauge("hamlet_replication_up",
                          "1 while replication to the upstream runs, 0 when failing or paused, -1 without upstream.");
  replication_lag_records_ =
      gauge("hamlet_replication_lag_records", "Records changed here and not yet acknowledged by the upstream.");
  replication_lag_seconds_ =
      gauge("hamlet_replication_lag_seconds", "Age of the oldest change not yet acknowledged by the upstream.");
  replication_acked_seq_ =
      gauge("hamlet_replication_acked_seq", "Every change up to this sequence number is at the upstream.");
}

Metrics::~Metrics() = default;

void Metrics::CountCall(absl::string_view method, grpc::StatusCode code, absl::Duration took) {
  const std::string name(method);
  calls_->Add({{"method", name}, {"code", CodeName(code)}}).Increment();
  // From 1 ms to 10 s: a push is an fsync or a few; a pull page is a scan.
  static const auto* kBuckets =
      new prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};
  latency_->Add({{"method", name}}, *kBuckets).Observe(absl::ToDoubleSeconds(took));
}

void Metrics::CountRecordsApplied(uint64_t n) { records_applied_->Increment(static_cast<double>(n)); }
void Metrics::CountRecordsPulled(uint64_t n) { records_pulled_->Increment(static_cast<double>(n)); }
void Metrics::CountPullAhead(absl::string_view outcome) {
  if (outcome == "served") {
    pull_ahead_served_->Increment();
  } else if (outcome == "stale") {
    pull_ahead_stale_->Increment();
  } else {
    pull_ahead_unused_->Increment();
  }
}
void Metrics::WatchOpened() { connected_->Increment(); }
void Metrics::WatchClosed() { connected_->Decrement(); }

std::string Metrics::Render(const storage::TownStore& store, const Replicator* replicator) {
  if (absl::StatusOr<uint64_t> records = store.CountRecords(); records.ok()) {
    records_->Set(static_cast<double>(*records));
  }
  last_seq_->Set(static_cast<double>(store.last_seq()));
  wal_syncs_->Set(static_cast<double>(store.wal_syncs()));
  if (absl::StatusOr<uint64_t> conflicts = store.CountConflicted(); conflicts.ok()) {
    open_conflicts_->Set(static_cast<double>(*conflicts));
  }
  if (replicator == nullptr) {
    replication_up_->Set(-1);
  } else {
    const hamlet::v1::ReplicationStatus status = replicator->Status();
    replication_up_->Set(status.state() == hamlet::v1::REPLICATION_STATE_RUNNING ? 1 : 0);
    replication_lag_records_->Set(static_cast<double>(status.lag_records()));
    replication_lag_seconds_->Set(status.lag_seconds());
    replication_acked_seq_->Set(static_cast<double>(status.acked_seq()));
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& address,
                                                                        std::function<std::string()> render) {
  absl::StatusOr<HostPort> listen = SplitHostPort(address);
  if (!listen.ok()) return absl::InvalidArgumentError(absl::StrCat("metrics address ", listen.status().message()));
  int port = listen->port;
  const std::string& host = listen->host;
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  endpoint->http_ = std::make_unique<httplib::Server>();
  endpoint->http_->Get("/metrics", [render = std::move(render)](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (port == 0) {
    port = endpoint->http_->bind_to_any_port(host);
  } else if (!endpoint->http_->bind_to_port(host, port)) {
    port = -1;
  }
  if (port <= 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", address, " for metrics"));
  endpoint->address_ = WithPort(address, port);
  endpoint->thread_ = std::thread([http = endpoint->http_.get()] { http->listen_after_bind(); });
  // httplib's stop() does nothing to a server not yet running, so a stop
  // right after the start would leave the thread listening for ever.
  for (int waited_ms = 0; !endpoint->http_->is_running() && waited_ms < 5000; ++waited_ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace hamlet::server
