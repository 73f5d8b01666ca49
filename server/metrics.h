#ifndef HAMLET_SERVER_METRICS_H_
#define HAMLET_SERVER_METRICS_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
template <typename T>
class Family;
class Histogram;
}  // namespace prometheus

namespace httplib {
class Server;
}  // namespace httplib

namespace hamlet::storage {
class TownStore;
}  // namespace hamlet::storage

namespace hamlet::server {

class Replicator;

// The server's Prometheus metrics (names and meanings in docs/OPERATIONS.md),
// kept with prometheus-cpp. Counters and histograms are updated as calls end;
// gauges are read from the store when scraped. Thread-safe.
class Metrics {
 public:
  Metrics();
  ~Metrics();

  // One sync RPC ended: `method` ("Push", "Pull", "ResolveConflict"), its
  // status and how long it took.
  void CountCall(absl::string_view method, grpc::StatusCode code, absl::Duration took);
  void CountRecordsApplied(uint64_t n);
  void CountRecordsPulled(uint64_t n);
  // A page read ahead for a pull ended: "served", "stale" or "unused"
  // (server/pull_ahead.h).
  void CountPullAhead(absl::string_view outcome);
  // Watch streams are how devices stay connected.
  void WatchOpened();
  void WatchClosed();

  // The text exposition format, with the gauges read now. `replicator` may be
  // null (no upstream).
  std::string Render(const storage::TownStore& store, const Replicator* replicator);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* calls_;
  prometheus::Family<prometheus::Histogram>* latency_;
  prometheus::Counter* records_applied_;
  prometheus::Counter* records_pulled_;
  prometheus::Counter* pull_ahead_served_;
  prometheus::Counter* pull_ahead_stale_;
  prometheus::Counter* pull_ahead_unused_;
  prometheus::Gauge* connected_;
  prometheus::Gauge* records_;
  prometheus::Gauge* last_seq_;
  prometheus::Gauge* open_conflicts_;
  prometheus::Gauge* wal_syncs_;
  prometheus::Gauge* replication_up_;
  prometheus::Gauge* replication_lag_records_;
  prometheus::Gauge* replication_lag_seconds_;
  prometheus::Gauge* replication_acked_seq_;
};

// Serves GET /metrics over plain HTTP (cpp-httplib) next to the admin
// listener, for Prometheus to scrape.
class MetricsEndpoint {
 public:
  // Listens on `address` (host:port; port 0 picks one) and answers with
  // `render()`. UNAVAILABLE if it cannot listen.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address,
                                                                std::function<std::string()> render);
  ~MetricsEndpoint();  // Stops listening.
  // host:port actually listened on.
  const std::string& address() const { return address_; }

 private:
  MetricsEndpoint() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::string address_;
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_METRICS_H_
