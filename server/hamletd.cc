#include "server/hamletd.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <sstream>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/resource_quota.h>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "grpc/health/v1/health.pb.h"
#include "server/admin_service.h"
#include "server/devices.h"
#include "server/host_port.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/rate_limit.h"
#include "server/replicator.h"
#include "server/sync_service.h"
#include "storage/sealing.h"
#include "sync/status_macros.h"

namespace hamlet::server {
namespace {

// libgrpc++_reflection registers its plugin for every ServerBuilder when it is
// loaded; this option takes it off a builder, so reflection (and with it the
// admin schema) is served only on the admin listener.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const auto& plugin) { return plugin->name() == "proto_server_reflection"; }),
                   plugins->end());
  }
};

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path);
  std::stringstream content;
  content << in.rdbuf();
  if (!in || content.str().empty()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read ", what, " ", path));
  }
  return content.str();
}

// Plain text unless a certificate and key are given.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> DeviceCredentials(const TlsFiles& tls) {
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert_file and --tls_key_file go together");
  }
  if (tls.cert_file.empty()) {
    if (!tls.ca_file.empty()) return absl::InvalidArgumentError("--tls_client_ca_file needs --tls_cert_file");
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions options(tls.ca_file.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                                : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  HAMLET_ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(tls.cert_file, "TLS certificate"));
  HAMLET_ASSIGN_OR_RETURN(pair.private_key, ReadPem(tls.key_file, "TLS key"));
  options.pem_key_cert_pairs.push_back(pair);
  if (!tls.ca_file.empty()) {
    HAMLET_ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(tls.ca_file, "client CA"));
  }
  LogLine(absl::StrCat("device listener uses TLS", tls.ca_file.empty() ? "" : ", verifying client certificates"));
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<ReplicatorOptions> ReplicationOptions(const HamletdOptions& server) {
  ReplicatorOptions options;
  options.upstream = server.upstream;
  if (server.upstream_token_file.empty()) return absl::InvalidArgumentError("--upstream needs --upstream_token_file");
  std::getline(std::ifstream(server.upstream_token_file), options.token);
  if (options.token.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("no token in ", server.upstream_token_file));
  }
  const TlsFiles& tls = server.upstream_tls;
  if (!tls.ca_file.empty()) {
    grpc::SslCredentialsOptions credentials;
    HAMLET_ASSIGN_OR_RETURN(credentials.pem_root_certs, ReadPem(tls.ca_file, "upstream CA"));
    if (!tls.cert_file.empty()) {
      HAMLET_ASSIGN_OR_RETURN(credentials.pem_cert_chain, ReadPem(tls.cert_file, "client certificate"));
      HAMLET_ASSIGN_OR_RETURN(credentials.pem_private_key, ReadPem(tls.key_file, "client key"));
    }
    options.credentials = grpc::SslCredentials(credentials);
  } else if (!tls.cert_file.empty()) {
    return absl::InvalidArgumentError("--upstream_cert_file needs --upstream_ca_file");
  }
  options.poll_interval = server.replication_poll;
  options.max_backoff = options.poll_interval * 6;
  options.max_message_bytes = server.max_message_bytes;
  return options;
}

// Connection and call limits of the device listener; see the flags.
absl::Status SetDeviceListenerLimits(const HamletdOptions& options, grpc::ServerBuilder& builder) {
  const auto ms = [](absl::Duration d) {
    return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d), std::numeric_limits<int>::max()));
  };
  const DeviceListenerLimits& limits = options.limits;
  if (limits.max_concurrent_streams < 1)
    return absl::InvalidArgumentError("--max_concurrent_streams must be at least 1");
  // One thread must keep polling: with a quota of one, gRPC refuses every
  // call (RESOURCE_EXHAUSTED), so N threads serve N - 1 calls at once.
  if (limits.max_threads < 2) return absl::InvalidArgumentError("--max_threads must be at least 2");
  if (limits.max_calls < 1) return absl::InvalidArgumentError("--max_calls must be at least 1");
  if (limits.keepalive_time < absl::ZeroDuration() || limits.keepalive_timeout <= absl::ZeroDuration() ||
      limits.keepalive_min_ping_interval < absl::ZeroDuration() || limits.max_connection_idle < absl::ZeroDuration() ||
      limits.handshake_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "--keepalive_time, --keepalive_min_ping_interval and --max_connection_idle may not be negative; "
        "--keepalive_timeout and --handshake_timeout must be positive");
  }
  if (options.response_compression == "gzip") {
    builder.SetDefaultCompressionAlgorithm(GRPC_COMPRESS_GZIP);
  } else if (options.response_compression != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--response_compression is gzip or none, not \"", options.response_compression, "\""));
  }
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams);
  grpc::ResourceQuota quota("hamlet-device-listener");
  quota.SetMaxThreads(limits.max_threads);
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, limits.keepalive_time == absl::ZeroDuration()
                                                             ? std::numeric_limits<int>::max()
                                                             : ms(limits.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ms(limits.keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             ms(limits.keepalive_min_ping_interval));
  // Phones may keep a connection warm between syncs; without this any ping
  // on a connection with no call counts against it (gRPC allows one in 2 h).
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Pings too often this many times, then GOAWAY (gRPC's default, made explicit).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, limits.max_connection_idle == absl::ZeroDuration()
                                                                  ? std::numeric_limits<int>::max()
                                                                  : ms(limits.max_connection_idle));
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, ms(limits.handshake_timeout));
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  return absl::OkStatus();
}

// `what` failed: the same code, a message that says what.
absl::Status Failed(absl::string_view what, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
}

absl::StatusOr<storage::TownStoreOptions> StoreOptions(const HamletdOptions& options) {
  storage::TownStoreOptions store_options;
  store_options.clock = options.clock;
  if (options.sealed_key_file.empty()) {
    LogLine("no --sealed_key_file: informant identities will be refused");
    return store_options;
  }
  absl::StatusOr<std::string> key = storage::Sealer::ReadKeyFile(options.sealed_key_file);
  if (!key.ok()) return Failed("cannot use the sealing key", key.status());
  std::vector<std::string> old_keys;
  for (const std::string& old_file : options.old_sealed_key_files) {
    HAMLET_ASSIGN_OR_RETURN(std::string old_key, storage::Sealer::ReadKeyFile(old_file));
    old_keys.push_back(std::move(old_key));
  }
  absl::StatusOr<std::unique_ptr<storage::Sealer>> sealer = storage::Sealer::Create(*key, old_keys);
  if (!sealer.ok()) return Failed("cannot use the sealing key", sealer.status());
  LogLine(absl::StrCat("sealing informant identities under key ", (*sealer)->current_key_id()));
  store_options.sealer = std::move(*sealer);
  return store_options;
}

}  // namespace

absl::Status Hamletd::Restore(const HamletdOptions& options, const std::string& backup_dir, uint32_t backup_id,
                              const storage::ProgressCallback& progress) {
  HAMLET_ASSIGN_OR_RETURN(storage::TownStoreOptions store_options, StoreOptions(options));
  return storage::TownStore::Restore(backup_dir, backup_id, options.data_dir, store_options, progress);
}

absl::StatusOr<std::string> Hamletd::ServerId(const HamletdOptions& options) {
  // With the sealing keys: a store that holds sealed records opens only with them.
  HAMLET_ASSIGN_OR_RETURN(storage::TownStoreOptions store_options, StoreOptions(options));
  HAMLET_ASSIGN_OR_RETURN(std::unique_ptr<storage::TownStore> store,
                          storage::TownStore::Open(options.data_dir, store_options));
  return store->server_id();
}

Hamletd::Hamletd(HamletdOptions options) : options_(std::move(options)) {}

Hamletd::~Hamletd() { Shutdown(absl::ZeroDuration()); }

absl::StatusOr<std::unique_ptr<Hamletd>> Hamletd::Start(HamletdOptions options) {
  std::unique_ptr<Hamletd> server(new Hamletd(std::move(options)));
  if (absl::Status built = server->Build(); !built.ok()) {
    server->Shutdown(absl::ZeroDuration());
    return built;
  }
  return server;
}

absl::Status Hamletd::Build() {
  const HamletdOptions& o = options_;
  if (!(o.device_rate >= 0) || o.device_burst < 1) {
    return absl::InvalidArgumentError("--device_rate may not be negative, and --device_burst must be at least 1");
  }
  HAMLET_ASSIGN_OR_RETURN(storage::TownStoreOptions store_options, StoreOptions(o));
  absl::StatusOr<std::unique_ptr<storage::TownStore>> store = storage::TownStore::Open(o.data_dir, store_options);
  if (!store.ok()) return Failed(absl::StrCat("cannot open data dir ", o.data_dir), store.status());
  store_ = std::move(*store);
  if (o.reseal) {
    absl::StatusOr<uint64_t> resealed = store_->Reseal();
    if (!resealed.ok()) return Failed("cannot reseal", resealed.status());
    LogLine(absl::StrCat("resealed ", *resealed, " records under the current key"));
  }
  feed_ = std::make_unique<ChangeFeed>(store_->last_seq());
  TownOptions town_options = o.town;
  town_options.max_page_bytes = std::min(town_options.max_page_bytes, o.max_message_bytes / 2);
  town_options.default_page_bytes = std::min(town_options.default_page_bytes, town_options.max_page_bytes);
  absl::StatusOr<std::unique_ptr<Town>> town = Town::Create(store_.get(), feed_.get(), o.clock, town_options);
  if (!town.ok()) return Failed("cannot start", town.status());
  town_ = std::move(*town);

  absl::StatusOr<std::unique_ptr<DeviceRegistry>> devices = DeviceRegistry::Load(store_.get(), o.clock);
  if (!devices.ok()) return Failed("cannot load enrolments", devices.status());
  devices_ = std::move(*devices);
  admin_token_file_ = o.admin_token_file.empty() ? o.data_dir + "/admin.token" : o.admin_token_file;
  std::string previous_token;
  std::getline(std::ifstream(admin_token_file_), previous_token);
  absl::StatusOr<std::string> admin_token = devices_->EnsureAdminToken(admin_token_file_, o.town.unit_code);
  if (!admin_token.ok()) return Failed("cannot set up the admin token", admin_token.status());
  admin_token_ = *admin_token;
  admin_token_is_new_ = admin_token_ != previous_token;

  // Reflection describes only services whose descriptors are linked in; this
  // reference keeps health.proto's in the binary.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);

  if (!o.upstream.empty()) {
    absl::StatusOr<ReplicatorOptions> replication = ReplicationOptions(o);
    absl::StatusOr<std::unique_ptr<Replicator>> started =
        replication.ok() ? Replicator::Start(town_.get(), store_.get(), feed_.get(), o.clock, *std::move(replication))
                         : absl::StatusOr<std::unique_ptr<Replicator>>(replication.status());
    if (!started.ok()) return Failed(absl::StrCat("cannot replicate to ", o.upstream), started.status());
    replicator_ = std::move(*started);
  }

  metrics_ = std::make_unique<Metrics>();
  if (!o.metrics_listen.empty()) {
    const auto render = [this] { return metrics_->Render(*store_, replicator_.get()); };
    HAMLET_ASSIGN_OR_RETURN(metrics_endpoint_, MetricsEndpoint::Start(o.metrics_listen, render));
    metrics_address_ = metrics_endpoint_->address();
  }

  // The device listener: sync and health, no reflection.
  rate_limit_ = std::make_unique<DeviceRateLimit>(o.clock, o.device_rate, o.device_burst);
  sync_service_ = std::make_unique<SyncServiceImpl>(town_.get(), feed_.get(), devices_.get(), metrics_.get(),
                                                    rate_limit_.get(), options_.limits.max_calls);
  HAMLET_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, DeviceCredentials(o.device_tls));
  devices_->RequireClientCertificateForReplication(!o.device_tls.ca_file.empty());
  devices_->OneReplicationNodePerUnit(o.town.tier == Tier::kProvince);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(o.listen, credentials, &port);
  HAMLET_RETURN_IF_ERROR(SetDeviceListenerLimits(o, builder));
  builder.RegisterService(sync_service_.get());
  builder.SetOption(std::make_unique<WithoutReflection>());
  device_server_ = builder.BuildAndStart();
  if (device_server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.listen, " (address in use or not local?)"));
  }
  device_address_ = WithPort(o.listen, port);
  device_server_->GetHealthCheckService()->SetServingStatus(hamlet::v1::SyncService::service_full_name(), true);

  // The admin listener: admin service, health and reflection.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  admin_service_ =
      std::make_unique<AdminServiceImpl>(town_.get(), store_.get(), devices_.get(), replicator_.get(), o.clock);
  grpc::ServerBuilder admin_builder;
  int admin_port = 0;
  admin_builder.AddListeningPort(o.admin_listen, grpc::InsecureServerCredentials(), &admin_port);
  admin_builder.RegisterService(admin_service_.get());
  admin_server_ = admin_builder.BuildAndStart();
  if (admin_server_ == nullptr || admin_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.admin_listen, " (address in use or not local?)"));
  }
  admin_address_ = WithPort(o.admin_listen, admin_port);
  admin_server_->GetHealthCheckService()->SetServingStatus(hamlet::v1::AdminService::service_full_name(), true);

  LogLine(absl::StrCat(o.town.tier == Tier::kProvince ? "province " : "town ", o.town.unit_code, " serving devices on ",
                       device_address_, ", admin on ", admin_address_, metrics_address_.empty() ? "" : ", metrics on ",
                       metrics_address_, "; data in ", o.data_dir, " (server id ", store_->server_id(), ", epoch ",
                       store_->epoch(), ", last seq ", store_->last_seq(), ")"));
  if (const hamlet::v1::ServerHistory& history = store_->history(); history.has_restore_time()) {
    using google::protobuf::util::TimeUtil;
    // What the backup lacked comes back only from the devices that pushed it.
    LogLine(absl::StrCat(
        "restored from a backup",
        history.has_backup_time() ? absl::StrCat(" taken ", TimeUtil::ToString(history.backup_time())) : "", ", at ",
        TimeUtil::ToString(history.restore_time()),
        ": what was acknowledged after the backup is back only once the devices that pushed it sync; "
        "`tools/hamlet-admin stats` lists the devices not heard from since"));
  }
  if (o.device_tls.cert_file.empty()) {
    absl::StatusOr<HostPort> listen = SplitHostPort(o.listen);
    const bool loopback =
        listen.ok() && (listen->host.rfind("127.", 0) == 0 || listen->host == "::1" || listen->host == "localhost");
    if (!loopback) {
      LogLine(absl::StrCat("WARNING: devices connect to ", device_address_,
                           " in plain text; tokens and records cross the network unencrypted. Use --tls_cert_file."));
    }
  }
  health_ = std::thread([this] { WatchHealth(); });
  return absl::OkStatus();
}

void Hamletd::WatchHealth() {
  // Replication health, for load balancers and monitors that speak gRPC health.
  constexpr char kReplicationHealth[] = "hamlet.replication";
  bool store_failed = false;
  do {
    const bool healthy = replicator_ == nullptr || replicator_->Healthy(options_.replication_lag_alarm);
    admin_server_->GetHealthCheckService()->SetServingStatus(kReplicationHealth, healthy);
    device_server_->GetHealthCheckService()->SetServingStatus(kReplicationHealth, healthy);
    // A failed log write or sync leaves the store refusing writes until restarted.
    if (absl::Status store = store_->store_error(); !store.ok() && !store_failed) {
      store_failed = true;
      LogLine(absl::StrCat("the store can no longer write its log (", store.ToString(),
                           "); every push is refused. Check the disk and restart hamletd"));
      device_server_->GetHealthCheckService()->SetServingStatus(hamlet::v1::SyncService::service_full_name(), false);
      admin_server_->GetHealthCheckService()->SetServingStatus(hamlet::v1::AdminService::service_full_name(), false);
    }
  } while (!stopping_.WaitForNotificationWithTimeout(absl::Seconds(1)));
}

void Hamletd::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  // Watch streams end first: they wait on the feed, not on a deadline.
  if (feed_ != nullptr) feed_->Close();
  stopping_.Notify();
  const auto deadline = std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace);
  if (admin_server_ != nullptr) admin_server_->Shutdown(deadline);
  if (device_server_ != nullptr) device_server_->Shutdown(deadline);
  const bool was_serving = health_.joinable();
  if (was_serving) health_.join();
  admin_server_.reset();
  device_server_.reset();
  metrics_endpoint_.reset();
  admin_service_.reset();
  sync_service_.reset();
  replicator_.reset();  // Cancels its call in flight, if any.
  devices_.reset();
  town_.reset();
  feed_.reset();
  const uint64_t last_seq = store_ != nullptr ? store_->last_seq() : 0;
  store_.reset();  // Closes RocksDB.
  if (was_serving) LogLine(absl::StrCat("stopped cleanly at seq ", last_seq));
}

}  // namespace hamlet::server
