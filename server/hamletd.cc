// hamletd: the Hamlet server, town or province. main() only turns flags into options, opens
// the store and runs the gRPC server until SIGTERM or SIGINT.

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/resource_quota.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "google/protobuf/util/time_util.h"
#include "grpc/health/v1/health.pb.h"
#include "server/admin_service.h"
#include "server/devices.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/rate_limit.h"
#include "server/replicator.h"
#include "server/sync_service.h"
#include "server/town.h"
#include "storage/sealing.h"
#include "storage/town_store.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7420",
          "Address for devices to connect to, host:port. Loopback by default; use 0.0.0.0:7420 to serve the "
          "network. Port 0 picks a free port.");
ABSL_FLAG(std::string, admin_listen, "127.0.0.1:7421",
          "Address of the admin service and of server reflection. Keep it on loopback; every admin call also needs "
          "the admin token.");
ABSL_FLAG(std::string, data_dir, "./data", "Directory of the RocksDB database; created if missing.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain for TLS on the device listener. With --tls_key_file; without both, devices "
          "connect in plain text (fine on loopback, not across a network).");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key for --tls_cert_file.");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA whose client certificates the device listener verifies (mTLS). When set, replication nodes must "
          "present such a certificate besides their token; phones need none.");
ABSL_FLAG(std::string, admin_token_file, "",
          "File holding the admin token (default: <data_dir>/admin.token). Created with a new admin enrolment if it "
          "holds no valid token.");
ABSL_FLAG(std::string, tier, "town",
          "town: serves the phones of one town and may replicate up (--upstream). province: receives what its "
          "towns replicate and owns the admin units they take down.");
ABSL_FLAG(std::string, town_code, "206", "Admin unit code of the town this server serves (--tier=town).");
ABSL_FLAG(std::string, province_code, "22", "Admin unit code of the province this server serves (--tier=province).");
ABSL_FLAG(std::string, upstream, "",
          "host:port of the province server to replicate to (its device listener). Empty: no replication.");
ABSL_FLAG(std::string, upstream_token_file, "",
          "File holding this server's token at the upstream: an enrolment there as ROLE_REPLICATION_NODE for this "
          "town, with this server's id (printed at start) as device id.");
ABSL_FLAG(std::string, upstream_ca_file, "",
          "PEM CA that signed the upstream's certificate; with it the upstream is reached over TLS.");
ABSL_FLAG(std::string, upstream_cert_file, "",
          "PEM client certificate for the upstream (mTLS), with --upstream_key_file and --upstream_ca_file.");
ABSL_FLAG(std::string, upstream_key_file, "", "PEM private key for --upstream_cert_file.");
ABSL_FLAG(absl::Duration, replication_poll, absl::Seconds(5),
          "How often admin units are pulled from the upstream, and the longest wait between replication attempts "
          "after a failure is six times this.");
ABSL_FLAG(absl::Duration, replication_lag_alarm, absl::Minutes(10),
          "Health service \"hamlet.replication\" reports NOT_SERVING while a change has waited longer than this "
          "to reach the upstream, or replication is paused or failing.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:7422",
          "Address of the Prometheus metrics endpoint (GET /metrics, plain HTTP). Keep it on loopback or behind "
          "a firewall; empty turns it off. Port 0 picks a free port.");
ABSL_FLAG(std::string, sealed_key_file, "",
          "File with the 256-bit key that seals informant identities at rest (32 raw bytes or 64 hex digits, e.g. "
          "from `openssl rand -hex 32 > key`). Without it the server refuses sealed records.");
ABSL_FLAG(std::vector<std::string>, old_sealed_key_files, {},
          "Comma-separated files with earlier sealing keys, still used to open records sealed under them.");
ABSL_FLAG(std::string, restore_from, "",
          "Restore --data_dir (which must not exist, or be empty) from this backup directory, move it to a new "
          "epoch so devices pull again from zero, and exit.");
ABSL_FLAG(bool, print_server_id, false,
          "Print this server's id (creating --data_dir with a new identity if it is new) and exit without "
          "serving: the id a province enrols a town's replication node with (docs/REPLICATION.md).");
ABSL_FLAG(bool, reseal, false,
          "At start, seal again under --sealed_key_file every record sealed under an older key (key rotation), "
          "then serve.");
ABSL_FLAG(int, max_message_bytes, 8 << 20,
          "Largest gRPC message accepted or sent, in bytes; for a compressed request, its size once decompressed "
          "(a larger one is RESOURCE_EXHAUSTED, so a small compressed request cannot unfold into a huge one).");
ABSL_FLAG(std::string, response_compression, "gzip",
          "How the device listener compresses its answers: gzip (for every client that accepts it, which gRPC "
          "clients say in grpc-accept-encoding; others get them plain) or none. Requests may come compressed either "
          "way.");
ABSL_FLAG(int, max_batch_records, 500, "Most records one push may carry.");
ABSL_FLAG(absl::Duration, max_clock_skew, absl::Minutes(5),
          "Pushes with a stamp further ahead of the server clock than this are refused.");
ABSL_FLAG(int, max_concurrent_streams, 100,
          "Most calls (Watch streams included) one device connection may have open at once. Further calls wait in "
          "the client until one ends (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); they are not refused.");
ABSL_FLAG(int, max_threads, 1000,
          "Most threads serving Push, Pull and ResolveConflict calls (each holds one until it is answered; Watch "
          "streams hold none). With all of them busy a new call is refused at once with RESOURCE_EXHAUSTED "
          "\"Server Threadpool Exhausted\", which clients retry. One thread only polls, so N serve N - 1 calls at "
          "once; at least 2.");
ABSL_FLAG(absl::Duration, keepalive_time, absl::Minutes(2),
          "The server pings a device connection idle for this long, to find phones that vanished (out of coverage, "
          "battery out) and free their Watch streams. 0 turns the pings off.");
ABSL_FLAG(absl::Duration, keepalive_timeout, absl::Seconds(20),
          "A connection whose keepalive ping is not answered within this is closed.");
ABSL_FLAG(absl::Duration, keepalive_min_ping_interval, absl::Minutes(1),
          "Shortest interval at which a device may send keepalive pings, with or without calls open. The third ping "
          "sooner than this (with no data sent in between) gets the client a GOAWAY (too_many_pings) and its "
          "connection closed.");
ABSL_FLAG(absl::Duration, max_connection_idle, absl::Minutes(15),
          "A device connection with no call open (not even a Watch stream) for this long is closed with a GOAWAY; "
          "the client reconnects at its next call. 0: never.");
ABSL_FLAG(absl::Duration, handshake_timeout, absl::Seconds(20),
          "A new connection that has not finished its TLS and HTTP/2 setup within this is closed, so idle sockets "
          "cannot pile up.");
ABSL_FLAG(double, device_rate, 0,
          "Push, Pull and ResolveConflict calls per second one device may make, on average (replication nodes are "
          "exempt). Beyond it a call gets RESOURCE_EXHAUSTED with reason RATE_LIMITED and a retry hint. 0 turns the "
          "limit off.");
ABSL_FLAG(int, device_burst, 50,
          "Calls a device may make at once above --device_rate before it is held to that rate; at least 1.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "On SIGTERM, how long in-flight calls may take to finish before they are cancelled.");
ABSL_FLAG(std::string, ready_file, "",
          "If set, once the server is ready this file gets three lines: the device address, the admin address and "
          "the metrics address actually listened on (the last empty without metrics).");

namespace {

using hamlet::server::LogLine;

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

// Plain text unless --tls_cert_file and --tls_key_file are given.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> DeviceCredentials() {
  const std::string cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  const std::string key_file = absl::GetFlag(FLAGS_tls_key_file);
  const std::string ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert_file and --tls_key_file go together");
  }
  if (cert_file.empty()) {
    if (!ca_file.empty()) return absl::InvalidArgumentError("--tls_client_ca_file needs --tls_cert_file");
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions options(ca_file.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                            : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadPem(cert_file, "TLS certificate");
  if (!cert.ok()) return cert.status();
  auto key = ReadPem(key_file, "TLS key");
  if (!key.ok()) return key.status();
  pair.cert_chain = *cert;
  pair.private_key = *key;
  options.pem_key_cert_pairs.push_back(pair);
  if (!ca_file.empty()) {
    auto ca = ReadPem(ca_file, "client CA");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
  }
  LogLine(absl::StrCat("device listener uses TLS", ca_file.empty() ? "" : ", verifying client certificates"));
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<hamlet::server::ReplicatorOptions> ReplicationOptions(const std::string& upstream) {
  hamlet::server::ReplicatorOptions options;
  options.upstream = upstream;
  const std::string token_file = absl::GetFlag(FLAGS_upstream_token_file);
  if (token_file.empty()) return absl::InvalidArgumentError("--upstream needs --upstream_token_file");
  std::getline(std::ifstream(token_file), options.token);
  if (options.token.empty()) return absl::FailedPreconditionError(absl::StrCat("no token in ", token_file));
  if (const std::string ca_file = absl::GetFlag(FLAGS_upstream_ca_file); !ca_file.empty()) {
    grpc::SslCredentialsOptions tls;
    auto ca = ReadPem(ca_file, "upstream CA");
    if (!ca.ok()) return ca.status();
    tls.pem_root_certs = *ca;
    const std::string cert_file = absl::GetFlag(FLAGS_upstream_cert_file);
    if (!cert_file.empty()) {
      auto cert = ReadPem(cert_file, "client certificate");
      if (!cert.ok()) return cert.status();
      auto key = ReadPem(absl::GetFlag(FLAGS_upstream_key_file), "client key");
      if (!key.ok()) return key.status();
      tls.pem_cert_chain = *cert;
      tls.pem_private_key = *key;
    }
    options.credentials = grpc::SslCredentials(tls);
  } else if (!absl::GetFlag(FLAGS_upstream_cert_file).empty()) {
    return absl::InvalidArgumentError("--upstream_cert_file needs --upstream_ca_file");
  }
  options.poll_interval = absl::GetFlag(FLAGS_replication_poll);
  options.max_backoff = options.poll_interval * 6;
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  return options;
}

// Connection and call limits of the device listener; see the flags.
absl::Status SetDeviceListenerLimits(grpc::ServerBuilder& builder) {
  const auto ms = [](absl::Duration d) {
    return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d), std::numeric_limits<int>::max()));
  };
  const int max_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  const int max_threads = absl::GetFlag(FLAGS_max_threads);
  const absl::Duration keepalive_time = absl::GetFlag(FLAGS_keepalive_time);
  const absl::Duration keepalive_timeout = absl::GetFlag(FLAGS_keepalive_timeout);
  const absl::Duration min_ping_interval = absl::GetFlag(FLAGS_keepalive_min_ping_interval);
  const absl::Duration max_idle = absl::GetFlag(FLAGS_max_connection_idle);
  const absl::Duration handshake_timeout = absl::GetFlag(FLAGS_handshake_timeout);
  if (max_streams < 1) return absl::InvalidArgumentError("--max_concurrent_streams must be at least 1");
  // One thread must keep polling: with a quota of one, gRPC refuses every
  // call (RESOURCE_EXHAUSTED), so N threads serve N - 1 calls at once.
  if (max_threads < 2) return absl::InvalidArgumentError("--max_threads must be at least 2");
  if (keepalive_time < absl::ZeroDuration() || keepalive_timeout <= absl::ZeroDuration() ||
      min_ping_interval < absl::ZeroDuration() || max_idle < absl::ZeroDuration() ||
      handshake_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "--keepalive_time, --keepalive_min_ping_interval and --max_connection_idle may not be negative; "
        "--keepalive_timeout and --handshake_timeout must be positive");
  }
  const std::string compression = absl::GetFlag(FLAGS_response_compression);
  if (compression == "gzip") {
    builder.SetDefaultCompressionAlgorithm(GRPC_COMPRESS_GZIP);
  } else if (compression != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--response_compression is gzip or none, not \"", compression, "\""));
  }
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, max_streams);
  grpc::ResourceQuota quota("hamlet-device-listener");
  quota.SetMaxThreads(max_threads);
  builder.SetResourceQuota(quota);
  const int keepalive_time_ms =
      keepalive_time == absl::ZeroDuration() ? std::numeric_limits<int>::max() : ms(keepalive_time);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_time_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ms(keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, ms(min_ping_interval));
  // Phones may keep a connection warm between syncs; without this any ping
  // on a connection with no call counts against it (gRPC allows one in 2 h).
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Pings too often this many times, then GOAWAY (gRPC's default, made explicit).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             max_idle == absl::ZeroDuration() ? std::numeric_limits<int>::max() : ms(max_idle));
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, ms(handshake_timeout));
  return absl::OkStatus();
}

int Run() {
  hamlet::storage::TownStoreOptions store_options;
  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  if (const std::string key_file = absl::GetFlag(FLAGS_sealed_key_file); !key_file.empty()) {
    auto key = hamlet::storage::Sealer::ReadKeyFile(key_file);
    std::vector<std::string> old_keys;
    for (const std::string& old_file : absl::GetFlag(FLAGS_old_sealed_key_files)) {
      auto old_key = hamlet::storage::Sealer::ReadKeyFile(old_file);
      if (!old_key.ok()) {
        LogLine(old_key.status().ToString());
        return 1;
      }
      old_keys.push_back(*old_key);
    }
    auto sealer = key.ok() ? hamlet::storage::Sealer::Create(*key, old_keys)
                           : absl::StatusOr<std::unique_ptr<hamlet::storage::Sealer>>(key.status());
    if (!sealer.ok()) {
      LogLine(absl::StrCat("cannot use the sealing key: ", sealer.status().ToString()));
      return 1;
    }
    LogLine(absl::StrCat("sealing informant identities under key ", (*sealer)->current_key_id()));
    store_options.sealer = std::move(*sealer);
  } else {
    LogLine("no --sealed_key_file: informant identities will be refused");
  }
  if (const std::string backup = absl::GetFlag(FLAGS_restore_from); !backup.empty()) {
    uint32_t last_reported = 0;
    const absl::Status restored = hamlet::storage::TownStore::Restore(
        backup, data_dir, store_options, [&last_reported](const hamlet::storage::CopyProgress& p) {
          if (p.files_done == last_reported && p.files_done != 0) return;
          last_reported = p.files_done;
          std::printf("restoring: %u of %u files, %llu of %llu bytes\n", p.files_done, p.files_total,
                      static_cast<unsigned long long>(p.bytes_done), static_cast<unsigned long long>(p.bytes_total));
        });
    if (!restored.ok()) {
      LogLine(absl::StrCat("restore failed: ", restored.ToString()));
      return 1;
    }
    LogLine(absl::StrCat("restored ", data_dir, " from ", backup,
                         " at a new epoch; devices will pull again from zero and offer again what this server "
                         "acknowledged after the backup. Start hamletd without --restore_from"));
    return 0;
  }
  auto store = hamlet::storage::TownStore::Open(data_dir, store_options);
  if (!store.ok()) {
    LogLine(absl::StrCat("cannot open data dir ", data_dir, ": ", store.status().ToString()));
    return 1;
  }
  if (absl::GetFlag(FLAGS_print_server_id)) {
    std::printf("%s\n", (*store)->server_id().c_str());
    return 0;
  }
  if (absl::GetFlag(FLAGS_reseal)) {
    auto resealed = (*store)->Reseal();
    if (!resealed.ok()) {
      LogLine(absl::StrCat("cannot reseal: ", resealed.status().ToString()));
      return 1;
    }
    LogLine(absl::StrCat("resealed ", *resealed, " records under the current key"));
  }
  hamlet::server::TownOptions town_options;
  const std::string tier = absl::GetFlag(FLAGS_tier);
  if (tier != "town" && tier != "province") {
    LogLine(absl::StrCat("--tier must be town or province, not \"", tier, "\""));
    return 1;
  }
  town_options.tier = tier == "province" ? hamlet::server::Tier::kProvince : hamlet::server::Tier::kTown;
  town_options.unit_code =
      tier == "province" ? absl::GetFlag(FLAGS_province_code) : absl::GetFlag(FLAGS_town_code);
  town_options.max_clock_skew = absl::GetFlag(FLAGS_max_clock_skew);
  town_options.max_batch_records = absl::GetFlag(FLAGS_max_batch_records);
  town_options.max_page_bytes = std::min(town_options.max_page_bytes, absl::GetFlag(FLAGS_max_message_bytes) / 2);
  town_options.default_page_bytes = std::min(town_options.default_page_bytes, town_options.max_page_bytes);
  auto town = hamlet::server::Town::Create(std::move(*store), hamlet::sync::SystemClock::Get(), town_options);
  if (!town.ok()) {
    LogLine(absl::StrCat("cannot start: ", town.status().ToString()));
    return 1;
  }

  auto devices = hamlet::server::DeviceRegistry::Load(&(*town)->mutable_store(), hamlet::sync::SystemClock::Get());
  if (!devices.ok()) {
    LogLine(absl::StrCat("cannot load enrolments: ", devices.status().ToString()));
    return 1;
  }
  std::string token_file = absl::GetFlag(FLAGS_admin_token_file);
  if (token_file.empty()) token_file = data_dir + "/admin.token";
  std::string previous_token;
  std::getline(std::ifstream(token_file), previous_token);
  absl::StatusOr<std::string> admin_token = (*devices)->EnsureAdminToken(token_file, town_options.unit_code);
  if (!admin_token.ok()) {
    LogLine(absl::StrCat("cannot set up the admin token: ", admin_token.status().ToString()));
    return 1;
  }

  // Reflection describes only services whose descriptors are linked in; this
  // reference keeps health.proto's in the binary.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);

  std::unique_ptr<hamlet::server::Replicator> replicator;
  if (const std::string upstream = absl::GetFlag(FLAGS_upstream); !upstream.empty()) {
    absl::StatusOr<hamlet::server::ReplicatorOptions> options = ReplicationOptions(upstream);
    absl::StatusOr<std::unique_ptr<hamlet::server::Replicator>> started =
        options.ok() ? hamlet::server::Replicator::Start(town->get(), *std::move(options))
                     : absl::StatusOr<std::unique_ptr<hamlet::server::Replicator>>(options.status());
    if (!started.ok()) {
      LogLine(absl::StrCat("cannot replicate to ", upstream, ": ", started.status().ToString()));
      return 1;
    }
    replicator = std::move(*started);
  }

  hamlet::server::Metrics metrics;
  std::unique_ptr<hamlet::server::MetricsEndpoint> metrics_endpoint;
  if (const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen); !metrics_listen.empty()) {
    auto endpoint = hamlet::server::MetricsEndpoint::Start(
        metrics_listen, [&metrics, &town, &replicator] { return metrics.Render(**town, replicator.get()); });
    if (!endpoint.ok()) {
      LogLine(endpoint.status().ToString());
      return 1;
    }
    metrics_endpoint = std::move(*endpoint);
  }

  // The device listener: sync and health, no reflection.
  // Its Watch dispatcher reads the town: it is stopped before the town closes.
  const double device_rate = absl::GetFlag(FLAGS_device_rate);
  const int device_burst = absl::GetFlag(FLAGS_device_burst);
  if (!(device_rate >= 0) || device_burst < 1) {
    LogLine("--device_rate may not be negative, and --device_burst must be at least 1");
    return 1;
  }
  hamlet::server::DeviceRateLimit rate_limit(hamlet::sync::SystemClock::Get(), device_rate, device_burst);
  auto sync_service =
      std::make_unique<hamlet::server::SyncServiceImpl>(town->get(), devices->get(), &metrics, &rate_limit);
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = DeviceCredentials();
  if (!credentials.ok()) {
    LogLine(credentials.status().ToString());
    return 1;
  }
  (*devices)->RequireClientCertificateForReplication(!absl::GetFlag(FLAGS_tls_client_ca_file).empty());
  (*devices)->OneReplicationNodePerUnit(town_options.tier == hamlet::server::Tier::kProvince);
  builder.AddListeningPort(listen, *credentials, &port);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.SetMaxSendMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  if (absl::Status limits = SetDeviceListenerLimits(builder); !limits.ok()) {
    LogLine(limits.ToString());
    return 1;
  }
  builder.RegisterService(sync_service.get());
  builder.SetOption(std::make_unique<WithoutReflection>());
  // Each synchronous call holds a thread (a push waits for its sync). gRPC
  // ends a thread that finds more than MAX_POLLERS others idle
  // and starts one when none is; its default of 2 makes many devices churn
  // threads: 64 devices pushing one record each went from 2,355 to 2,900
  // records/s with this (tools/hamlet-bench --only_push=64,1).
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 200);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    LogLine(absl::StrCat("cannot listen on ", listen, " (address in use or not local?)"));
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(hamlet::v1::SyncService::service_full_name(), true);

  // The admin listener: admin service, health and reflection.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  hamlet::server::AdminServiceImpl admin_service(town->get(), devices->get(), replicator.get(),
                                                 hamlet::sync::SystemClock::Get()->NowMs());
  grpc::ServerBuilder admin_builder;
  int admin_port = 0;
  const std::string admin_listen = absl::GetFlag(FLAGS_admin_listen);
  admin_builder.AddListeningPort(admin_listen, grpc::InsecureServerCredentials(), &admin_port);
  admin_builder.RegisterService(&admin_service);
  std::unique_ptr<grpc::Server> admin_server = admin_builder.BuildAndStart();
  if (admin_server == nullptr || admin_port == 0) {
    LogLine(absl::StrCat("cannot listen on ", admin_listen, " (address in use or not local?)"));
    (*town)->feed().Close();  // Ends any Watch stream already accepted.
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    return 1;
  }
  admin_server->GetHealthCheckService()->SetServingStatus(hamlet::v1::AdminService::service_full_name(), true);

  const std::string address = absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port);
  const std::string admin_address = absl::StrCat(admin_listen.substr(0, admin_listen.rfind(':')), ":", admin_port);
  const std::string metrics_address = metrics_endpoint ? metrics_endpoint->address() : "";
  LogLine(absl::StrCat(tier, " ", town_options.unit_code, " serving devices on ", address, ", admin on ",
                       admin_address, metrics_address.empty() ? "" : ", metrics on ", metrics_address, "; data in ",
                       data_dir, " (server id ", (*town)->store().server_id(), ", epoch ", (*town)->store().epoch(),
                       ", last seq ", (*town)->store().last_seq(), ")"));
  if (const hamlet::v1::ServerHistory& history = (*town)->store().history(); history.has_restore_time()) {
    // What the backup lacked comes back only from the devices that pushed it.
    LogLine(absl::StrCat(
        "restored from a backup", history.has_backup_time()
                                      ? absl::StrCat(" taken ", google::protobuf::util::TimeUtil::ToString(history.backup_time()))
                                      : std::string(),
        ", at ", google::protobuf::util::TimeUtil::ToString(history.restore_time()),
        ": what was acknowledged after the backup is back only once the devices that pushed it sync; "
        "`tools/hamlet-admin stats` lists the devices not heard from since"));
  }
  std::printf(
      "hamletd is serving %s %s\n"
      "  devices connect to  %s\n"
      "  admin service at    %s (with reflection)\n"
      "  metrics at          %s\n"
      "  admin token         %s\n"
      "  try:  tools/hamlet-admin --server=%s stats\n"
      "   or:  buf curl --protocol grpc --http2-prior-knowledge -H @- \\\n"
      "          http://%s/hamlet.v1.AdminService/GetServerStats <<<\"authorization: Bearer $(cat %s)\"\n",
      tier.c_str(), town_options.unit_code.c_str(), address.c_str(), admin_address.c_str(),
      metrics_address.empty() ? "off" : absl::StrCat("http://", metrics_address, "/metrics").c_str(),
      (*admin_token == previous_token ? absl::StrCat("in ", token_file)
                                      : absl::StrCat(*admin_token, "  (new; kept in ", token_file, ")"))
          .c_str(),
      admin_address.c_str(), admin_address.c_str(), token_file.c_str());
  if (absl::GetFlag(FLAGS_tls_cert_file).empty() && listen.rfind("127.", 0) != 0 && listen.rfind("[::1]", 0) != 0 &&
      listen.rfind("localhost", 0) != 0) {
    LogLine(absl::StrCat("WARNING: devices connect to ", address,
                         " in plain text; tokens and records cross the network unencrypted. Use --tls_cert_file."));
  }
  std::fflush(stdout);
  if (const std::string ready = absl::GetFlag(FLAGS_ready_file); !ready.empty()) {
    // Written whole, then renamed, so a reader never sees half of it.
    std::ofstream(ready + ".tmp") << address << "\n" << admin_address << "\n" << metrics_address << "\n";
    std::rename((ready + ".tmp").c_str(), ready.c_str());
  }

  // Replication health, for load balancers and monitors that speak gRPC health.
  constexpr char kReplicationHealth[] = "hamlet.replication";
  absl::Notification stopping;
  std::thread health([&] {
    bool store_failed = false;
    do {
      const bool healthy = replicator == nullptr || replicator->Healthy(absl::GetFlag(FLAGS_replication_lag_alarm));
      admin_server->GetHealthCheckService()->SetServingStatus(kReplicationHealth, healthy);
      server->GetHealthCheckService()->SetServingStatus(kReplicationHealth, healthy);
      // A failed log write or sync leaves the store refusing writes until restarted.
      if (absl::Status store = (*town)->store().store_error(); !store.ok() && !store_failed) {
        store_failed = true;
        LogLine(absl::StrCat("the store can no longer write its log (", store.ToString(),
                             "); every push is refused. Check the disk and restart hamletd"));
        server->GetHealthCheckService()->SetServingStatus(hamlet::v1::SyncService::service_full_name(), false);
        admin_server->GetHealthCheckService()->SetServingStatus(hamlet::v1::AdminService::service_full_name(), false);
      }
    } while (!stopping.WaitForNotificationWithTimeout(absl::Seconds(1)));
  });

  // SIGTERM and SIGINT are blocked in every thread (see main) and taken here.
  std::thread stopper([&server, &admin_server, &town, &stopping] {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    int signal = 0;
    sigwait(&signals, &signal);
    LogLine(absl::StrCat("received ", signal == SIGTERM ? "SIGTERM" : "SIGINT",
                         "; finishing in-flight calls, then closing the database"));
    (*town)->feed().Close();
    stopping.Notify();
    const auto deadline =
        std::chrono::system_clock::now() + absl::ToChronoMilliseconds(absl::GetFlag(FLAGS_shutdown_grace));
    admin_server->Shutdown(deadline);
    server->Shutdown(deadline);
  });
  server->Wait();
  admin_server->Wait();
  stopper.join();
  health.join();
  server.reset();
  admin_server.reset();
  metrics_endpoint.reset();
  sync_service.reset();
  replicator.reset();  // Cancels its call in flight, if any.
  devices->reset();
  const uint64_t last_seq = (*town)->store().last_seq();
  town->reset();  // Closes RocksDB.
  LogLine(absl::StrCat("stopped cleanly at seq ", last_seq));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Hamlet server (a town, or with --tier=province a province): phones push and pull records over gRPC;\n"
      "towns replicate up to their province (--upstream). Data in RocksDB.\n"
      "Usage: hamletd [--listen=127.0.0.1:7420] [--data_dir=./data] [flags]\n"
      "With no flags it serves town 206 on loopback with its data in ./data.");
  absl::ParseCommandLine(argc, argv);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return Run();
}
