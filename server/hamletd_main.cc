// hamletd: the Hamlet server, town or province. main() turns flags into
// HamletdOptions and runs a Hamletd (server/hamletd.h) until SIGTERM or SIGINT.

#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "server/hamletd.h"
#include "server/log.h"
#include "storage/atomic_file.h"

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
          "How often admin units are pulled from the upstream; the longest wait between replication attempts "
          "after a failure, and between attempts to connect to the upstream, is six times this.");
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
          "Restore --data_dir (which must not exist, or be empty) from the latest backup in this backup directory "
          "(or --restore_backup_id), move it to a new epoch so devices pull again from zero, and exit.");
ABSL_FLAG(uint32_t, restore_backup_id, 0,
          "With --restore_from: which backup of the directory to restore (`hamlet-admin backup verify` lists them); "
          "0 means the latest.");
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
          "Most threads serving ResolveConflict calls and health checks on the device listener (each holds one "
          "until it is answered; Push, Pull and Watch hold none). With all of them busy a new call is refused at "
          "once with RESOURCE_EXHAUSTED \"Server Threadpool Exhausted\", which clients retry. One thread only "
          "polls, so N serve N - 1 calls at once; at least 2.");
ABSL_FLAG(int, max_calls, 1000,
          "Most Push and Pull calls in flight at once, queued or being served (none holds a thread). Beyond it a new "
          "one is refused at once with RESOURCE_EXHAUSTED, nothing written, which clients retry. Bounds the memory "
          "that waiting requests hold (each up to --max_message_bytes). At least 1.");
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

absl::StatusOr<hamlet::server::HamletdOptions> OptionsFromFlags() {
  hamlet::server::HamletdOptions o;
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.listen = absl::GetFlag(FLAGS_listen);
  o.admin_listen = absl::GetFlag(FLAGS_admin_listen);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.device_tls = {absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
                  absl::GetFlag(FLAGS_tls_client_ca_file)};
  o.admin_token_file = absl::GetFlag(FLAGS_admin_token_file);
  const std::string tier = absl::GetFlag(FLAGS_tier);
  if (tier != "town" && tier != "province") {
    return absl::InvalidArgumentError(absl::StrCat("--tier must be town or province, not \"", tier, "\""));
  }
  o.town.tier = tier == "province" ? hamlet::server::Tier::kProvince : hamlet::server::Tier::kTown;
  o.town.unit_code = tier == "province" ? absl::GetFlag(FLAGS_province_code) : absl::GetFlag(FLAGS_town_code);
  o.town.max_clock_skew = absl::GetFlag(FLAGS_max_clock_skew);
  o.town.max_batch_records = absl::GetFlag(FLAGS_max_batch_records);
  o.upstream = absl::GetFlag(FLAGS_upstream);
  o.upstream_token_file = absl::GetFlag(FLAGS_upstream_token_file);
  o.upstream_tls = {absl::GetFlag(FLAGS_upstream_cert_file), absl::GetFlag(FLAGS_upstream_key_file),
                    absl::GetFlag(FLAGS_upstream_ca_file)};
  o.replication_poll = absl::GetFlag(FLAGS_replication_poll);
  o.replication_lag_alarm = absl::GetFlag(FLAGS_replication_lag_alarm);
  o.sealed_key_file = absl::GetFlag(FLAGS_sealed_key_file);
  o.old_sealed_key_files = absl::GetFlag(FLAGS_old_sealed_key_files);
  o.reseal = absl::GetFlag(FLAGS_reseal);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.response_compression = absl::GetFlag(FLAGS_response_compression);
  o.limits = {absl::GetFlag(FLAGS_max_concurrent_streams),
              absl::GetFlag(FLAGS_max_threads),
              absl::GetFlag(FLAGS_max_calls),
              absl::GetFlag(FLAGS_keepalive_time),
              absl::GetFlag(FLAGS_keepalive_timeout),
              absl::GetFlag(FLAGS_keepalive_min_ping_interval),
              absl::GetFlag(FLAGS_max_connection_idle),
              absl::GetFlag(FLAGS_handshake_timeout)};
  o.device_rate = absl::GetFlag(FLAGS_device_rate);
  o.device_burst = absl::GetFlag(FLAGS_device_burst);
  return o;
}

int Restore(const hamlet::server::HamletdOptions& options, const std::string& backup) {
  uint64_t last_reported = 0;
  const absl::Status restored = hamlet::server::Hamletd::Restore(
      options, backup, absl::GetFlag(FLAGS_restore_backup_id),
      [&last_reported](const hamlet::storage::CopyProgress& p) {
        if (p.bytes_done == last_reported && p.bytes_done != 0) return;
        last_reported = p.bytes_done;
        std::printf("restoring: %llu of %llu bytes\n", static_cast<unsigned long long>(p.bytes_done),
                    static_cast<unsigned long long>(p.bytes_total));
        std::fflush(stdout);
      });
  if (!restored.ok()) {
    LogLine(absl::StrCat("restore failed: ", restored.ToString()));
    return 1;
  }
  LogLine(absl::StrCat("restored ", options.data_dir, " from ", backup,
                       " at a new epoch; devices will pull again from zero and offer again what this server "
                       "acknowledged after the backup. Start hamletd without --restore_from"));
  return 0;
}

// How to connect, for the person who started the server.
void PrintWelcome(const hamlet::server::Hamletd& server) {
  const hamlet::server::HamletdOptions& o = server.options();
  std::printf(
      "hamletd is serving %s %s\n"
      "  devices connect to  %s\n"
      "  admin service at    %s (with reflection)\n"
      "  metrics at          %s\n"
      "  admin token         %s\n"
      "  try:  tools/hamlet-admin --server=%s stats\n"
      "   or:  buf curl --protocol grpc --http2-prior-knowledge -H @- \\\n"
      "          http://%s/hamlet.v1.AdminService/GetServerStats <<<\"authorization: Bearer $(cat %s)\"\n",
      o.town.tier == hamlet::server::Tier::kProvince ? "province" : "town", o.town.unit_code.c_str(),
      server.device_address().c_str(), server.admin_address().c_str(),
      server.metrics_address().empty() ? "off" : absl::StrCat("http://", server.metrics_address(), "/metrics").c_str(),
      // The file, never the token: stdout may end up in a journal others read.
      absl::StrCat("in ", server.admin_token_file(), server.admin_token_is_new() ? " (new)" : "").c_str(),
      server.admin_address().c_str(), server.admin_address().c_str(), server.admin_token_file().c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Hamlet server (a town, or with --tier=province a province): phones push and pull records over gRPC;\n"
      "towns replicate up to their province (--upstream). Data in RocksDB.\n"
      "Usage: hamletd [--listen=127.0.0.1:7420] [--data_dir=./data] [flags]\n"
      "With no flags it serves town 206 on loopback with its data in ./data.");
  absl::ParseCommandLine(argc, argv);
  // SIGTERM and SIGINT are blocked in every thread the server starts and taken by sigwait below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<hamlet::server::HamletdOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    LogLine(std::string(options.status().message()));
    return 1;
  }
  if (const std::string backup = absl::GetFlag(FLAGS_restore_from); !backup.empty()) return Restore(*options, backup);
  if (absl::GetFlag(FLAGS_print_server_id)) {
    absl::StatusOr<std::string> id = hamlet::server::Hamletd::ServerId(*options);
    if (!id.ok()) {
      LogLine(absl::StrCat("cannot open data dir ", options->data_dir, ": ", id.status().ToString()));
      return 1;
    }
    std::printf("%s\n", id->c_str());
    return 0;
  }
  absl::StatusOr<std::unique_ptr<hamlet::server::Hamletd>> server = hamlet::server::Hamletd::Start(*options);
  if (!server.ok()) {
    LogLine(std::string(server.status().message()));
    return 1;
  }
  PrintWelcome(**server);
  if (const std::string ready = absl::GetFlag(FLAGS_ready_file); !ready.empty()) {
    const absl::Status written = hamlet::storage::WriteFileAtomically(
        ready, absl::StrCat((*server)->device_address(), "\n", (*server)->admin_address(), "\n",
                            (*server)->metrics_address(), "\n"));
    if (!written.ok()) LogLine(std::string(written.message()));
  }
  int signal = 0;
  sigwait(&signals, &signal);
  LogLine(absl::StrCat("received ", signal == SIGTERM ? "SIGTERM" : "SIGINT",
                       "; finishing in-flight calls, then closing the database"));
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  return 0;
}
