#ifndef HAMLET_SERVER_HAMLETD_H_
#define HAMLET_SERVER_HAMLETD_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/town.h"
#include "storage/town_store.h"
#include "sync/clock.h"

namespace hamlet::server {

class AdminServiceImpl;
class DeviceRateLimit;
class DeviceRegistry;
class Metrics;
class MetricsEndpoint;
class Replicator;
class SyncServiceImpl;

// PEM files of a TLS listener or client. All empty: plain text.
struct TlsFiles {
  std::string cert_file;
  std::string key_file;
  // On a listener: the CA whose client certificates it verifies (mTLS). On a
  // client: the CA that signed the server's certificate.
  std::string ca_file;
};

// Connection and call limits of the device listener (hamletd's flags of the
// same names say what each does).
struct DeviceListenerLimits {
  int max_concurrent_streams = 100;
  int max_threads = 1000;                            // At least 2: one thread only polls.
  int max_calls = 1000;                              // Pushes and pulls in flight; at least 1.
  absl::Duration keepalive_time = absl::Minutes(2);  // Zero: no pings.
  absl::Duration keepalive_timeout = absl::Seconds(20);
  absl::Duration keepalive_min_ping_interval = absl::Minutes(1);
  absl::Duration max_connection_idle = absl::Minutes(15);  // Zero: never.
  absl::Duration handshake_timeout = absl::Seconds(20);
};

// Everything a server is started with. hamletd turns its flags into this;
// tests may build one and run a server in their own process.
struct HamletdOptions {
  std::string data_dir = "./data";
  // host:port; port 0 picks a free one.
  std::string listen = "127.0.0.1:7420";
  std::string admin_listen = "127.0.0.1:7421";
  std::string metrics_listen = "127.0.0.1:7422";  // Empty: no metrics endpoint.
  TlsFiles device_tls;
  // Default <data_dir>/admin.token.
  std::string admin_token_file;
  TownOptions town;
  // Replication to a province: its device listener's host:port (empty: none),
  // the file with this server's token there, and TLS toward it.
  std::string upstream;
  std::string upstream_token_file;
  TlsFiles upstream_tls;
  absl::Duration replication_poll = absl::Seconds(5);
  absl::Duration replication_lag_alarm = absl::Minutes(10);
  // Sealing keys (storage/sealing.h); without one, sealed records are refused.
  std::string sealed_key_file;
  std::vector<std::string> old_sealed_key_files;
  // Seal again under the current key what older keys sealed, before serving.
  bool reseal = false;
  int max_message_bytes = 8 << 20;
  // "gzip" or "none": how the device listener compresses its answers.
  std::string response_compression = "gzip";
  DeviceListenerLimits limits;
  // Calls a second per device (0: no limit) and the burst above it.
  double device_rate = 0;
  int device_burst = 50;
  // The one source of wall-clock time for every component. Must outlive the server.
  const sync::PhysicalClock* clock = sync::SystemClock::Get();
};

// A running town or province server: it owns the store and the feed of its
// commits and hands them to each component (the town's sync logic,
// enrolments, the replicator, the Watch streams, the admin service, metrics),
// and serves the device and admin listeners until Shutdown.
// Thread-safe.
class Hamletd {
 public:
  // Opens the store and starts serving. INVALID_ARGUMENT for options that
  // contradict each other, FAILED_PRECONDITION for a file it cannot read or a
  // store it cannot open, UNAVAILABLE for an address it cannot listen on.
  static absl::StatusOr<std::unique_ptr<Hamletd>> Start(HamletdOptions options);

  // Restores `options.data_dir` (absent or empty) from backup `backup_id` in
  // `backup_dir` (0: the latest) at a new epoch (storage::TownStore::Restore),
  // without serving.
  static absl::Status Restore(const HamletdOptions& options, const std::string& backup_dir, uint32_t backup_id,
                              const storage::ProgressCallback& progress);

  // This server's id, creating the data dir with a new identity if it is new;
  // without serving.
  static absl::StatusOr<std::string> ServerId(const HamletdOptions& options);

  // Shuts down with no grace, if Shutdown was not called.
  ~Hamletd();

  // Stops taking calls, lets those in flight finish for up to `grace`
  // (then cancels them), stops replication and closes the store. Returns once
  // all that is done; later calls return at once.
  void Shutdown(absl::Duration grace);

  // host:port actually listened on; metrics_address is empty without metrics.
  const std::string& device_address() const { return device_address_; }
  const std::string& admin_address() const { return admin_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  const std::string& admin_token_file() const { return admin_token_file_; }
  const std::string& admin_token() const { return admin_token_; }
  // True if this start enrolled a new admin (the token file held no valid token).
  bool admin_token_is_new() const { return admin_token_is_new_; }
  const HamletdOptions& options() const { return options_; }

 private:
  explicit Hamletd(HamletdOptions options);
  absl::Status Build();
  // Every second: replication health and store failures into the health service.
  void WatchHealth();

  const HamletdOptions options_;
  // Declared in the order they are built; destroyed in reverse, the store last.
  std::unique_ptr<storage::TownStore> store_;
  std::unique_ptr<ChangeFeed> feed_;
  std::unique_ptr<Town> town_;
  std::unique_ptr<DeviceRegistry> devices_;
  std::unique_ptr<Replicator> replicator_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint_;
  std::unique_ptr<DeviceRateLimit> rate_limit_;
  std::unique_ptr<SyncServiceImpl> sync_service_;
  std::unique_ptr<grpc::Server> device_server_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<grpc::Server> admin_server_;
  std::thread health_;
  absl::Notification stopping_;

  std::string device_address_;
  std::string admin_address_;
  std::string metrics_address_;
  std::string admin_token_file_;
  std::string admin_token_;
  bool admin_token_is_new_ = false;

  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_HAMLETD_H_
