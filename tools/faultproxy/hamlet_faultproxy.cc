// hamlet-faultproxy: a TCP proxy between gRPC clients and hamletd that makes the network as unkind
// as a phone's. It loses answers after the server committed, delivers requests twice, cuts pulls
// mid-stream, and can shape the link like rural 3G (narrow, slow to answer, and flaky). Every
// fault is off by default, and each is drawn from one seeded generator, so a run can be repeated.
//
// How it reads the traffic. The proxy follows the HTTP/2 framing of what it forwards (RFC 9113
// §3.4 and §4.1): the client first sends the 24-byte preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
// then each side sends frames, each behind a 9-byte header:
//
//   frame  := length:uint24 type:uint8 flags:uint8 R:1 stream_id:uint31  payload[length]
//   type   := 0x0 DATA | 0x1 HEADERS | 0x3 RST_STREAM | 0x7 GOAWAY | ... (others pass unread)
//   flags  := bit 0x1 END_STREAM on DATA and HEADERS
//
// It never rewrites a byte. Each fault either closes the connection at a chosen byte, or sends a
// whole connection's client bytes again on a new connection. Replaying single HEADERS frames
// instead would break HPACK: header blocks are compressed against the state of the connection
// that carried them. A client that does not open with the preface (an HTTP/1.1 client, such as
// PouchDB's, for hamlet-bench --mode=field) is not read at all: its bytes are only shaped and
// cut, and the faults that need frames (drop_response, cut_stream, duplicate) never touch it.
//
// The shaped link is one link: every connection shares its bandwidth in each direction, and a
// new connection pays a round trip before its first bytes, as TCP's handshake costs. (So a
// client that opens many connections at once gains nothing over one that keeps one open.)
//
// Why closing before the first HEADERS loses a committed answer: gRPC's synchronous server sends a
// call's response headers only once the handler has returned, and hamletd's Push handler returns
// after the batch is durable. So "server's first HEADERS frame on a stream" means "the server has
// done the work"; not forwarding it is exactly an answer lost on the way back. (A streaming call,
// such as Watch, sends its first HEADERS when it starts; there a drop just breaks the stream.)
//
// Threads: one accepts; each connection has one thread that owns it and one per direction, plus
// one for its duplicate. SIGTERM or SIGINT closes every connection, writes the stats and exits 0.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <list>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/host_port.h"
#include "storage/atomic_file.h"
#include "tools/harness/program_flags.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0",
          "Address to accept clients on, host:port. Port 0 picks a free port (see --ready_file).");
ABSL_FLAG(std::string, target, "", "host:port of the server to forward to, e.g. hamletd's device listener. Required.");
ABSL_FLAG(std::string, ready_file, "",
          "If set, once listening, this file gets one line: the address actually listened on. Written whole, "
          "then renamed into place.");
ABSL_FLAG(std::string, stats_file, "",
          "If set, rewritten (whole, then renamed) after every connection and at exit with one line of counters: "
          "connections, responses, drops, duplicates, cut_streams, cuts, bytes_up, bytes_down, target_failures.");
ABSL_FLAG(uint64_t, seed, 1,
          "Seed of the generator that draws every fault. Faults are drawn in the order connections are accepted, "
          "so the same seed and the same client behaviour give the same faults.");
ABSL_FLAG(double, drop_response, 0,
          "Probability, per response, that the server's answer is lost after the server did the work: when the "
          "server's first HEADERS frame on a stream arrives, the proxy closes both sockets instead of forwarding "
          "it. The client sees the call fail (UNAVAILABLE) although a push was committed. 0 to 1; default off.");
ABSL_FLAG(double, duplicate, 0,
          "Probability, per connection, that the client's requests reach the server twice: the proxy keeps every "
          "byte the client sent on the connection and, after the first complete response (or when the "
          "connection ends, if sooner), sends those bytes again on a new connection to the target and throws "
          "the answers away. 0 to 1; default off.");
ABSL_FLAG(double, cut_stream, 0,
          "Probability, per connection, that a download is cut mid-stream: both sockets are closed once a "
          "random number of server-to-client DATA payload bytes (from --cut_after_min_bytes to "
          "--cut_after_max_bytes) have been forwarded, possibly inside a frame. 0 to 1; default off.");
ABSL_FLAG(int64_t, cut_after_min_bytes, 1024, "Fewest DATA payload bytes forwarded before a --cut_stream cut.");
ABSL_FLAG(int64_t, cut_after_max_bytes, 64 * 1024, "Most DATA payload bytes forwarded before a --cut_stream cut.");
ABSL_FLAG(int64_t, rate_kbit, 0,
          "Bandwidth of each direction, in kbit/s (1 kbit = 1000 bits), shared by every connection through the "
          "proxy, as one radio link is. 0: as fast as loopback. While shaped, the proxy buffers at most 64 KiB per "
          "connection and direction, as a modem would, and then stops reading.");
ABSL_FLAG(int64_t, delay_ms, 0,
          "One-way latency added to every byte, in milliseconds: 200 makes a 400 ms round trip. A new connection's "
          "first bytes also wait one round trip, for TCP's handshake. Default 0.");
ABSL_FLAG(double, cut, 0,
          "Probability, per connection, that the link drops: both sockets are closed at a random moment within "
          "the connection's first --cut_within_ms, wherever the traffic stands. 0 to 1; default off.");
ABSL_FLAG(int64_t, cut_within_ms, 10000, "Window, from the connection's start, in which a --cut falls.");
ABSL_FLAG(std::string, profile, "",
          "Shorthand for a kind of network. rural3g: --rate_kbit=100 --delay_ms=200 --cut=0.05, each only where "
          "that flag is left at 0. Empty: none.");

namespace {

// ---------------------------------------------------------------------------
// Options and the draw of faults.

struct ProxyOptions {
  std::string listen;
  std::string target;
  uint64_t seed = 1;
  double drop_response = 0;
  double duplicate = 0;
  double cut_stream = 0;
  uint64_t cut_after_min_bytes = 0;
  uint64_t cut_after_max_bytes = 0;
  int64_t rate_kbit = 0;  // 0: unshaped.
  absl::Duration delay;
  double cut = 0;
  absl::Duration cut_within;
  std::string stats_file;
};

absl::StatusOr<ProxyOptions> OptionsFromFlags() {
  ProxyOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.target = absl::GetFlag(FLAGS_target);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.drop_response = absl::GetFlag(FLAGS_drop_response);
  o.duplicate = absl::GetFlag(FLAGS_duplicate);
  o.cut_stream = absl::GetFlag(FLAGS_cut_stream);
  o.rate_kbit = absl::GetFlag(FLAGS_rate_kbit);
  int64_t delay_ms = absl::GetFlag(FLAGS_delay_ms);
  o.cut = absl::GetFlag(FLAGS_cut);
  o.stats_file = absl::GetFlag(FLAGS_stats_file);
  if (const std::string profile = absl::GetFlag(FLAGS_profile); profile == "rural3g") {
    if (o.rate_kbit == 0) o.rate_kbit = 100;
    if (delay_ms == 0) delay_ms = 200;
    if (o.cut == 0) o.cut = 0.05;
  } else if (!profile.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--profile must be rural3g or empty, not \"", profile, "\""));
  }
  if (o.target.empty()) return absl::InvalidArgumentError("--target=host:port is required");
  for (const auto& [name, p] : {std::pair<const char*, double>{"drop_response", o.drop_response},
                                {"duplicate", o.duplicate},
                                {"cut_stream", o.cut_stream},
                                {"cut", o.cut}}) {
    if (!(p >= 0 && p <= 1)) return absl::InvalidArgumentError(absl::StrCat("--", name, " is a probability, 0 to 1"));
  }
  const int64_t min_bytes = absl::GetFlag(FLAGS_cut_after_min_bytes);
  const int64_t max_bytes = absl::GetFlag(FLAGS_cut_after_max_bytes);
  if (min_bytes < 0 || max_bytes < min_bytes) {
    return absl::InvalidArgumentError("need 0 <= --cut_after_min_bytes <= --cut_after_max_bytes");
  }
  o.cut_after_min_bytes = static_cast<uint64_t>(min_bytes);
  o.cut_after_max_bytes = static_cast<uint64_t>(max_bytes);
  const int64_t cut_within_ms = absl::GetFlag(FLAGS_cut_within_ms);
  if (o.rate_kbit < 0 || delay_ms < 0 || cut_within_ms <= 0) {
    return absl::InvalidArgumentError("--rate_kbit and --delay_ms must be >= 0, --cut_within_ms > 0");
  }
  o.delay = absl::Milliseconds(delay_ms);
  o.cut_within = absl::Milliseconds(cut_within_ms);
  return o;
}

// The standard library's distributions may differ between library versions; these do not, so a
// seed names the same faults wherever the proxy is built.
double UnitInterval(std::mt19937_64& gen) { return static_cast<double>(gen() >> 11) * 0x1.0p-53; }
bool Chance(std::mt19937_64& gen, double p) { return UnitInterval(gen) < p; }
uint64_t Between(std::mt19937_64& gen, uint64_t lo, uint64_t hi) { return lo + gen() % (hi - lo + 1); }

// What one connection will suffer, drawn when it is accepted. Every draw is made whatever the
// probabilities, so that turning one fault on does not reshuffle the others.
struct ConnectionFaults {
  bool duplicate = false;
  bool cut_stream = false;
  uint64_t cut_stream_at = 0;  // DATA payload bytes forwarded before the cut.
  bool cut = false;
  absl::Duration cut_after;
  uint64_t response_seed = 0;  // For the per-response drops.

  std::string ToString() const {
    std::vector<std::string> names;
    if (duplicate) names.push_back("duplicate");
    if (cut_stream) names.push_back(absl::StrCat("cut_stream@", cut_stream_at, "B"));
    if (cut) names.push_back(absl::StrCat("cut@", absl::ToInt64Milliseconds(cut_after), "ms"));
    return names.empty() ? "none" : absl::StrJoin(names, ",");
  }
};

ConnectionFaults DrawFaults(const ProxyOptions& options, std::mt19937_64& gen) {
  ConnectionFaults f;
  f.duplicate = Chance(gen, options.duplicate);
  f.cut_stream = Chance(gen, options.cut_stream);
  f.cut_stream_at = Between(gen, options.cut_after_min_bytes, options.cut_after_max_bytes);
  f.cut = Chance(gen, options.cut);
  f.cut_after = options.cut_within * UnitInterval(gen);
  f.response_seed = gen();
  return f;
}

// ---------------------------------------------------------------------------
// Counters, shared by every connection.

struct Stats {
  std::atomic<uint64_t> connections{0};
  std::atomic<uint64_t> responses{0};  // Streams whose first HEADERS frame the server sent.
  std::atomic<uint64_t> drops{0};
  std::atomic<uint64_t> duplicates{0};  // Connections sent again in full to the target.
  std::atomic<uint64_t> cut_streams{0};
  std::atomic<uint64_t> cuts{0};
  std::atomic<uint64_t> bytes_up{0};
  std::atomic<uint64_t> bytes_down{0};
  std::atomic<uint64_t> target_failures{0};  // Connections the target refused.

  std::string Line() const {
    return absl::StrFormat(
        "connections=%d responses=%d drops=%d duplicates=%d cut_streams=%d cuts=%d bytes_up=%d bytes_down=%d "
        "target_failures=%d",
        connections.load(), responses.load(), drops.load(), duplicates.load(), cut_streams.load(), cuts.load(),
        bytes_up.load(), bytes_down.load(), target_failures.load());
  }
};

absl::Mutex stats_file_mu;

void WriteStats(const Stats& stats, const std::string& path) {
  if (path.empty()) return;
  absl::MutexLock lock(&stats_file_mu);
  (void)hamlet::storage::WriteFileAtomically(path, stats.Line() + "\n");  // Read by tests; a miss shows there.
}

void Log(const std::string& line) {
  // One write per line, so lines from different connections do not interleave.
  const std::string out = absl::StrCat("hamlet-faultproxy: ", line, "\n");
  (void)!write(STDERR_FILENO, out.data(), out.size());
}

// ---------------------------------------------------------------------------
// Sockets.

absl::StatusOr<std::vector<char>> Resolve(absl::string_view address, bool passive) {
  absl::StatusOr<hamlet::server::HostPort> hp = hamlet::server::SplitHostPort(address);
  if (!hp.ok()) return hp.status();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(hp->host.c_str(), std::to_string(hp->port).c_str(), &hints, &found);
      rc != 0 || found == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve ", address, ": ", gai_strerror(rc)));
  }
  const auto* raw = reinterpret_cast<const char*>(found->ai_addr);
  std::vector<char> addr(raw, raw + found->ai_addrlen);
  freeaddrinfo(found);
  return addr;
}

const sockaddr* AsSockaddr(const std::vector<char>& addr) { return reinterpret_cast<const sockaddr*>(addr.data()); }

void SetNoDelay(int fd) {
  // gRPC writes whole frames and waits for answers; Nagle's algorithm would hold them back.
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// A connected socket, or -1.
int ConnectTo(const std::vector<char>& addr) {
  const int fd = socket(AsSockaddr(addr)->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int rc;
  do {
    rc = connect(fd, AsSockaddr(addr), static_cast<socklen_t>(addr.size()));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    close(fd);
    return -1;
  }
  SetNoDelay(fd);
  return fd;
}

bool SendAll(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Milliseconds to wait for `due`, rounded up, for poll().
int MillisUntil(absl::Time due, absl::Time now) {
  if (due <= now) return 0;
  return static_cast<int>(
      std::min<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(due - now, absl::Milliseconds(1))), 60 * 1000));
}

// ---------------------------------------------------------------------------
// HTTP/2 framing.

constexpr absl::string_view kClientPreface("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
constexpr size_t kFrameHeaderBytes = 9;
// Frame types and flags, RFC 9113 §6 (fixed by the protocol).
constexpr uint8_t kDataFrame = 0x0;
constexpr uint8_t kHeadersFrame = 0x1;
constexpr uint8_t kRstStreamFrame = 0x3;
constexpr uint8_t kGoAwayFrame = 0x7;
constexpr uint8_t kEndStreamFlag = 0x1;

struct FrameHeader {
  uint32_t length = 0;
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream_id = 0;

  // The sender is done with the stream: DATA or HEADERS with END_STREAM, or RST_STREAM.
  bool EndsStream() const {
    if (stream_id == 0) return false;
    if (type == kRstStreamFrame) return true;
    return (type == kDataFrame || type == kHeadersFrame) && (flags & kEndStreamFlag) != 0;
  }
};

FrameHeader ParseFrameHeader(absl::string_view b) {
  const auto u = [&b](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(b[i])); };
  FrameHeader h;
  h.length = (u(0) << 16) | (u(1) << 8) | u(2);
  h.type = static_cast<uint8_t>(u(3));
  h.flags = static_cast<uint8_t>(u(4));
  h.stream_id = ((u(5) & 0x7f) << 24) | (u(6) << 16) | (u(7) << 8) | u(8);
  return h;
}

// Follows the frames of one direction of an HTTP/2 connection as its bytes go by, without holding
// more than an incomplete frame header. Not thread-safe.
class FrameScanner {
 public:
  class Visitor {
   public:
    virtual ~Visitor() = default;
    // A frame begins. Returning false stops the stream before the frame's header.
    virtual bool OnFrame(const FrameHeader& frame) = 0;
    // `n` (> 0) payload bytes of `frame` go by. Returns how many of them may pass; fewer than `n`
    // stops the stream after those.
    virtual size_t OnPayload(const FrameHeader& frame, size_t n) { return n; }
  };
  struct Result {
    // Bytes from the start of the input that may be forwarded.
    size_t pass = 0;
    // The visitor stopped the stream after `pass` bytes. If not, the input's bytes after `pass`
    // are the start of a frame header, to be given again in front of the next input.
    bool stopped = false;
  };

  // `preface` bytes come before the first frame (the client's connection preface).
  explicit FrameScanner(size_t preface = 0) : preface_left_(preface) {}

  Result Scan(absl::string_view input, Visitor& visitor) {
    size_t at = 0;
    while (at < input.size()) {
      if (preface_left_ > 0) {
        const size_t n = std::min(preface_left_, input.size() - at);
        preface_left_ -= n;
        at += n;
      } else if (payload_left_ > 0) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(payload_left_, input.size() - at));
        const size_t passed = std::min(n, visitor.OnPayload(frame_, n));
        at += passed;
        payload_left_ -= passed;
        if (passed < n) return {at, true};
      } else if (input.size() - at >= kFrameHeaderBytes) {
        const FrameHeader frame = ParseFrameHeader(input.substr(at, kFrameHeaderBytes));
        if (!visitor.OnFrame(frame)) return {at, true};
        at += kFrameHeaderBytes;
        frame_ = frame;
        payload_left_ = frame.length;
      } else {
        break;
      }
    }
    return {at, false};
  }

 private:
  size_t preface_left_;
  uint64_t payload_left_ = 0;
  FrameHeader frame_;
};

// The streams the client opened in a recording of its bytes, less those it reset itself: the
// answers a replay of the recording waits for.
int StreamsAwaitingAnswer(absl::string_view client_bytes) {
  struct Counter final : FrameScanner::Visitor {
    uint32_t highest = 0;
    int open = 0;
    bool OnFrame(const FrameHeader& frame) override {
      if (frame.type == kHeadersFrame && frame.stream_id > highest) {
        highest = frame.stream_id;
        ++open;
      } else if (frame.type == kRstStreamFrame && frame.stream_id != 0) {
        --open;
      }
      return true;
    }
  } counter;
  if (!absl::StartsWith(client_bytes, kClientPreface)) return 0;
  FrameScanner scanner(kClientPreface.size());
  scanner.Scan(client_bytes, counter);
  return std::max(counter.open, 0);
}

// ---------------------------------------------------------------------------
// One direction of the link: when a byte read now comes out at the other end.

// One direction of the link, shared by every connection through the proxy: the bandwidth is the
// link's, not each connection's, as on a phone's one radio link. Bytes go out in the order they
// were read, whichever connection they belong to. Thread-safe.
class ShapedLink {
 public:
  ShapedLink(int64_t rate_kbit, absl::Duration delay)
      : bytes_per_second_(static_cast<double>(rate_kbit) * 1000 / 8), delay_(delay) {}

  bool shaped() const { return bytes_per_second_ > 0; }
  absl::Duration delay() const { return delay_; }

  // `n` bytes read at `now` are on the wire after those before them, then travel for the delay.
  absl::Time Due(absl::Time now, size_t n) {
    absl::MutexLock lock(&mu_);
    absl::Time start = std::max(now, busy_until_);
    busy_until_ = shaped() ? start + absl::Seconds(static_cast<double>(n) / bytes_per_second_) : start;
    return busy_until_ + delay_;
  }

 private:
  const double bytes_per_second_;
  const absl::Duration delay_;
  absl::Mutex mu_;
  absl::Time busy_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// The two directions of the link.
struct Link {
  Link(int64_t rate_kbit, absl::Duration delay) : up(rate_kbit, delay), down(rate_kbit, delay) {}
  ShapedLink up;    // Client to server.
  ShapedLink down;  // Server to client.
};

// ---------------------------------------------------------------------------
// A proxied connection.

enum class Fault { kNone, kDropResponse, kCutStream, kCut };

// One client's connection, its connection to the target, and the faults drawn for it. Run() owns
// it on the connection's thread; Stop() and done() may be called from any thread.
class Connection {
 public:
  Connection(uint64_t id, int client_fd, const ProxyOptions& options, const std::vector<char>& target,
             ConnectionFaults faults, Link* link, Stats* stats)
      : id_(id),
        client_fd_(client_fd),
        options_(options),
        target_(target),
        faults_(faults),
        link_(link),
        stats_(stats),
        response_gen_(faults.response_seed),
        start_(absl::Now()) {}

  ~Connection() {
    if (client_fd_ >= 0) close(client_fd_);
    if (server_fd_ >= 0) close(server_fd_);
  }

  // Runs the connection to its end; on the connection's own thread.
  void Run();
  // Closes the connection at once (the proxy is stopping). Thread-safe.
  void Stop() {
    Close(Fault::kNone, "proxy stopping");
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (replay_fd_ >= 0) shutdown(replay_fd_, SHUT_RDWR);
  }
  bool done() const { return done_.HasBeenNotified(); }

 private:
  enum class Direction { kUp, kDown };  // Client to server, server to client.
  struct Chunk {
    std::string bytes;
    absl::Time due;
    // After these bytes, the connection is closed for this fault.
    Fault fault = Fault::kNone;
    std::string why;
  };
  class DownVisitor;

  void Pump(Direction direction);
  // Closes both sockets. Returns false if the connection was closed already.
  bool Close(Fault fault, const std::string& why);
  void StartDuplicate();
  void Duplicate(std::string client_bytes);

  const uint64_t id_;
  const int client_fd_;
  // Set by Run, under mu_, before the pumps start; they read it without the lock.
  int server_fd_ = -1;
  const ProxyOptions& options_;
  const std::vector<char>& target_;
  const ConnectionFaults faults_;
  Link* const link_;
  Stats* const stats_;
  // Whether the client speaks HTTP/2 (its first bytes are the connection preface): set by the up
  // pump when the client's first bytes arrive. Only HTTP/2 is read frame by frame; anything else
  // (an HTTP/1.1 client) passes as plain bytes.
  enum class Protocol { kUnknown, kHttp2, kOther };
  std::atomic<Protocol> protocol_{Protocol::kUnknown};
  std::mt19937_64 response_gen_;  // Down pump only.
  const absl::Time start_;
  std::atomic<uint64_t> bytes_up_{0};
  std::atomic<uint64_t> bytes_down_{0};
  std::atomic<int> pumps_running_{2};
  absl::Notification pumps_done_;
  absl::Notification done_;

  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string end_ ABSL_GUARDED_BY(mu_) = "closed by the peers";
  // What the client sent that was forwarded, while a duplicate may still be wanted.
  std::string sent_up_ ABSL_GUARDED_BY(mu_);
  bool duplicate_started_ ABSL_GUARDED_BY(mu_) = false;
  std::thread duplicate_thread_ ABSL_GUARDED_BY(mu_);
  int replay_fd_ ABSL_GUARDED_BY(mu_) = -1;
  std::string duplicate_outcome_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> closed_flag_{false};  // closed_, readable without the lock.
};

// Server-to-client frames: where a drop or a stream cut falls, and when the first answer is complete.
class Connection::DownVisitor final : public FrameScanner::Visitor {
 public:
  explicit DownVisitor(Connection* c) : c_(c) {}

  bool OnFrame(const FrameHeader& frame) override {
    if (frame.type == kHeadersFrame && frame.stream_id > last_answered_stream_) {
      // The first HEADERS of a stream: the server's handler has returned.
      last_answered_stream_ = frame.stream_id;
      c_->stats_->responses++;
      if (Chance(c_->response_gen_, c_->options_.drop_response)) {
        fault = Fault::kDropResponse;
        why = absl::StrCat("drop_response: closed instead of forwarding the response headers of stream ",
                           frame.stream_id);
        return false;
      }
    }
    if (frame.EndsStream() && c_->faults_.duplicate) c_->StartDuplicate();
    return true;
  }

  size_t OnPayload(const FrameHeader& frame, size_t n) override {
    if (frame.type != kDataFrame || !c_->faults_.cut_stream) return n;
    const uint64_t allowed = std::min<uint64_t>(n, c_->faults_.cut_stream_at - data_bytes_);
    data_bytes_ += allowed;
    if (allowed < n) {
      fault = Fault::kCutStream;
      why = absl::StrCat("cut_stream: closed after ", data_bytes_, " DATA bytes, inside stream ", frame.stream_id);
    }
    return static_cast<size_t>(allowed);
  }

  Fault fault = Fault::kNone;
  std::string why;

 private:
  Connection* const c_;
  uint32_t last_answered_stream_ = 0;
  uint64_t data_bytes_ = 0;
};

bool Connection::Close(Fault fault, const std::string& why) {
  absl::MutexLock lock(&mu_);
  if (closed_) return false;
  closed_ = true;
  closed_flag_ = true;
  end_ = why;
  // shutdown, not close: the pumps may be blocked on these sockets, and the numbers must not be
  // reused while they are. The destructor closes them.
  shutdown(client_fd_, SHUT_RDWR);
  if (server_fd_ >= 0) shutdown(server_fd_, SHUT_RDWR);
  switch (fault) {
    case Fault::kDropResponse:
      stats_->drops++;
      break;
    case Fault::kCutStream:
      stats_->cut_streams++;
      break;
    case Fault::kCut:
      stats_->cuts++;
      break;
    case Fault::kNone:
      break;
  }
  return true;
}

void Connection::Pump(Direction direction) {
  const bool down = direction == Direction::kDown;
  const int from = down ? server_fd_ : client_fd_;
  const int to = down ? client_fd_ : server_fd_;
  ShapedLink& link = down ? link_->down : link_->up;
  // A modem's buffer when shaped; otherwise enough for loopback speed times the delay.
  const size_t max_queued = link.shaped() ? 64 * 1024 : 4 << 20;
  // Shaped bytes leave in small pieces, so they arrive spread out as over a real link.
  const size_t piece = link.shaped() ? 1400 : SIZE_MAX;
  // A new connection's first bytes wait for TCP's handshake: one round trip.
  const absl::Time handshake_done = start_ + 2 * link.delay();
  std::deque<Chunk> queue;
  size_t queued = 0;
  bool reading = true;  // Until end of stream, or a fault decided where this direction ends.
  FrameScanner scanner;
  DownVisitor visitor(this);
  std::string carry;  // Down: the start of a frame header still incomplete.
  std::vector<char> buffer(64 * 1024);

  const auto enqueue = [&](std::string bytes, Fault fault, std::string why) {
    const absl::Time now = absl::Now();
    size_t at = 0;
    do {
      const size_t n = std::min(piece, bytes.size() - at);
      Chunk chunk;
      chunk.bytes = bytes.substr(at, n);
      chunk.due = std::max(link.Due(now, n), handshake_done);
      at += n;
      if (at == bytes.size()) {
        chunk.fault = fault;
        chunk.why = why;
      }
      queued += n;
      queue.push_back(std::move(chunk));
    } while (at < bytes.size());
  };

  while (!closed_flag_) {
    const absl::Time now = absl::Now();
    if (!queue.empty() && queue.front().due <= now) {
      Chunk chunk = std::move(queue.front());
      queue.pop_front();
      queued -= chunk.bytes.size();
      if (!chunk.bytes.empty()) {
        if (!SendAll(to, chunk.bytes)) {
          Close(Fault::kNone, down ? "client went away" : "server went away");
          break;
        }
        (down ? bytes_down_ : bytes_up_) += chunk.bytes.size();
        (down ? stats_->bytes_down : stats_->bytes_up) += chunk.bytes.size();
        if (!down && faults_.duplicate) {
          absl::MutexLock lock(&mu_);
          if (!duplicate_started_) sent_up_.append(chunk.bytes);
        }
      }
      if (chunk.fault != Fault::kNone) {
        Close(chunk.fault, chunk.why);
        break;
      }
      continue;
    }
    if (!reading && queue.empty()) {
      // Pass the end of the stream on, as TCP would: the other direction may still be talking.
      shutdown(to, SHUT_WR);
      break;
    }
    const int timeout_ms = queue.empty() ? 1000 : MillisUntil(queue.front().due, now);
    const bool want = reading && queued < max_queued;
    pollfd p{from, POLLIN, 0};
    if (poll(want ? &p : nullptr, want ? 1 : 0, timeout_ms) <= 0 || !want) continue;
    const ssize_t n = recv(from, buffer.data(), buffer.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      reading = false;
      if (!carry.empty()) enqueue(std::move(carry), Fault::kNone, "");
      carry.clear();
      continue;
    }
    if (!down) {
      if (protocol_ == Protocol::kUnknown) {
        const size_t compared = std::min(static_cast<size_t>(n), kClientPreface.size());
        protocol_ = absl::string_view(buffer.data(), compared) == kClientPreface.substr(0, compared) ? Protocol::kHttp2
                                                                                                     : Protocol::kOther;
      }
      enqueue(std::string(buffer.data(), static_cast<size_t>(n)), Fault::kNone, "");
      continue;
    }
    if (protocol_ == Protocol::kOther) {
      enqueue(std::string(buffer.data(), static_cast<size_t>(n)), Fault::kNone, "");
      continue;
    }
    carry.append(buffer.data(), static_cast<size_t>(n));
    const FrameScanner::Result scanned = scanner.Scan(carry, visitor);
    std::string pass = carry.substr(0, scanned.pass);
    carry.erase(0, scanned.pass);
    if (scanned.stopped) {
      reading = false;
      carry.clear();
      enqueue(std::move(pass), visitor.fault, visitor.why);
    } else if (!pass.empty()) {
      enqueue(std::move(pass), Fault::kNone, "");
    }
  }
  if (--pumps_running_ == 0) pumps_done_.Notify();
}

void Connection::StartDuplicate() {
  absl::MutexLock lock(&mu_);
  if (duplicate_started_ || stopping_) return;
  duplicate_started_ = true;
  duplicate_thread_ = std::thread([this, bytes = std::move(sent_up_)]() mutable { Duplicate(std::move(bytes)); });
  sent_up_.clear();
}

void Connection::Duplicate(std::string client_bytes) {
  const int streams = StreamsAwaitingAnswer(client_bytes);
  const auto outcome = [this](std::string what) {
    absl::MutexLock lock(&mu_);
    duplicate_outcome_ = std::move(what);
  };
  if (streams == 0) return outcome("duplicate: the client sent no request to send again");
  const int fd = ConnectTo(target_);
  if (fd < 0) return outcome(absl::StrCat("duplicate: cannot connect to the target: ", std::strerror(errno)));
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      close(fd);
      return;
    }
    replay_fd_ = fd;
  }
  int answered = 0;
  bool sent = SendAll(fd, client_bytes);
  if (sent) {
    stats_->duplicates++;
    // Read the answers and throw them away. The socket stays open until then: a server that sees
    // the connection end may cancel a call before its handler runs.
    struct Answers final : FrameScanner::Visitor {
      int ended = 0;
      bool goaway = false;
      bool OnFrame(const FrameHeader& frame) override {
        if (frame.EndsStream()) ++ended;
        if (frame.type == kGoAwayFrame) goaway = true;
        return true;
      }
    } answers;
    FrameScanner scanner;
    std::string carry;
    std::vector<char> buffer(64 * 1024);
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (answers.ended < streams && !answers.goaway && absl::Now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, MillisUntil(deadline, absl::Now())) <= 0) continue;
      const ssize_t n = recv(fd, buffer.data(), buffer.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      carry.append(buffer.data(), static_cast<size_t>(n));
      carry.erase(0, scanner.Scan(carry, answers).pass);
    }
    answered = answers.ended;
  }
  {
    absl::MutexLock lock(&mu_);
    replay_fd_ = -1;
  }
  close(fd);
  outcome(absl::StrCat("duplicate: ", sent ? "sent " : "failed to send ", client_bytes.size(), " bytes again, ",
                       answered, " of ", streams, " streams answered"));
}

void Connection::Run() {
  const int server_fd = ConnectTo(target_);
  if (server_fd < 0) {
    stats_->target_failures++;
    Log(absl::StrCat("conn ", id_, ": cannot connect to ", options_.target, ": ", std::strerror(errno)));
    WriteStats(*stats_, options_.stats_file);
    done_.Notify();
    return;
  }
  SetNoDelay(client_fd_);
  {
    absl::MutexLock lock(&mu_);
    server_fd_ = server_fd;
    // Stop() may have come before the server socket existed.
    if (closed_) shutdown(server_fd_, SHUT_RDWR);
  }
  std::thread up([this] { Pump(Direction::kUp); });
  std::thread down([this] { Pump(Direction::kDown); });
  if (faults_.cut && !pumps_done_.WaitForNotificationWithDeadline(start_ + faults_.cut_after)) {
    Close(Fault::kCut, absl::StrCat("cut: the link dropped ", absl::ToInt64Milliseconds(faults_.cut_after),
                                    " ms into the connection"));
  }
  up.join();
  down.join();
  // Sent again at the end if no answer came back complete first.
  if (faults_.duplicate) StartDuplicate();
  std::thread duplicate;
  std::string end, duplicate_outcome;
  {
    absl::MutexLock lock(&mu_);
    duplicate = std::move(duplicate_thread_);
  }
  if (duplicate.joinable()) duplicate.join();
  {
    absl::MutexLock lock(&mu_);
    end = end_;
    duplicate_outcome = duplicate_outcome_;
  }
  Log(absl::StrCat("conn ", id_, ": faults=", faults_.ToString(), " up=", bytes_up_.load(),
                   "B down=", bytes_down_.load(), "B time=", absl::ToInt64Milliseconds(absl::Now() - start_),
                   "ms end=\"", end, "\"", duplicate_outcome.empty() ? "" : absl::StrCat(" ", duplicate_outcome)));
  WriteStats(*stats_, options_.stats_file);
  done_.Notify();
}

// ---------------------------------------------------------------------------
// The proxy: accepts, draws each connection's faults, and keeps the connections until they end.

class Proxy {
 public:
  // Resolves the target and starts listening.
  static absl::StatusOr<std::unique_ptr<Proxy>> Listen(const ProxyOptions& options) {
    absl::StatusOr<std::vector<char>> target = Resolve(options.target, false);
    if (!target.ok()) return target.status();
    absl::StatusOr<std::vector<char>> local = Resolve(options.listen, true);
    if (!local.ok()) return local.status();
    // Non-blocking, so that accept never waits for a client that left between poll and accept.
    const int fd = socket(AsSockaddr(*local)->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, AsSockaddr(*local), static_cast<socklen_t>(local->size())) < 0 || listen(fd, 128) < 0) {
      const std::string error = std::strerror(errno);
      close(fd);
      return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen, ": ", error));
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
    char host[INET6_ADDRSTRLEN] = {};
    int port = 0;
    if (bound.ss_family == AF_INET6) {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&bound);
      inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
      port = ntohs(in6->sin6_port);
    } else {
      const auto* in4 = reinterpret_cast<const sockaddr_in*>(&bound);
      inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
      port = ntohs(in4->sin_port);
    }
    auto proxy = std::unique_ptr<Proxy>(new Proxy(options, *std::move(target), fd));
    proxy->address_ = bound.ss_family == AF_INET6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
    return proxy;
  }

  ~Proxy() { close(listen_fd_); }

  const std::string& address() const { return address_; }
  const Stats& stats() const { return stats_; }

  // Accepts until Stop(); then closes every connection and waits for their threads.
  void Serve() {
    std::mt19937_64 gen(options_.seed);
    uint64_t next_id = 1;
    while (!stopping_) {
      Reap(/*all=*/false);
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 200) <= 0) continue;
      const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      stats_.connections++;
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        close(client);
        break;
      }
      auto connection = std::make_unique<Connection>(next_id++, client, options_, target_, DrawFaults(options_, gen),
                                                     &link_, &stats_);
      Connection* raw = connection.get();
      live_.push_back({std::move(connection), std::thread([raw] { raw->Run(); })});
    }
    {
      absl::MutexLock lock(&mu_);
      for (Live& live : live_) live.connection->Stop();
    }
    Reap(/*all=*/true);
  }

  // Thread-safe.
  void Stop() {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (Live& live : live_) live.connection->Stop();
  }

 private:
  struct Live {
    std::unique_ptr<Connection> connection;
    std::thread thread;
  };

  Proxy(const ProxyOptions& options, std::vector<char> target, int listen_fd)
      : options_(options), target_(std::move(target)), listen_fd_(listen_fd), link_(options.rate_kbit, options.delay) {}

  // Joins and frees the connections that have ended, or all of them.
  void Reap(bool all) {
    std::list<Live> finished;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = live_.begin(); it != live_.end();) {
        if (all || it->connection->done()) {
          finished.splice(finished.end(), live_, it++);
        } else {
          ++it;
        }
      }
    }
    for (Live& live : finished) live.thread.join();
  }

  const ProxyOptions options_;
  const std::vector<char> target_;
  const int listen_fd_;
  std::string address_;
  Link link_;  // Shared by every connection.
  Stats stats_;
  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  std::list<Live> live_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Fault-injecting TCP proxy for gRPC (HTTP/2) between devices and hamletd: lost answers, duplicate\n"
      "requests, pulls cut mid-stream, and rural 3G shaping. Every fault is off unless asked for.\n"
      "Usage: hamlet-faultproxy --target=HOST:PORT [--listen=127.0.0.1:0] [--ready_file=F] [--seed=N]\n"
      "         [--drop_response=P] [--duplicate=P] [--cut_stream=P] [--profile=rural3g] [flags]\n"
      "Logs one line per connection on stderr; SIGTERM or SIGINT ends it with a line of totals.");
  // --help lists the flags of the files named like the program; this one is hamlet_faultproxy.cc.
  hamlet::harness::ListFlagsOf("hamlet_faultproxy.cc");
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<ProxyOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    Log(options.status().ToString());
    return 2;
  }
  // Taken by sigwait below, not by whichever thread happens to run.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<Proxy>> proxy = Proxy::Listen(*options);
  if (!proxy.ok()) {
    Log(proxy.status().ToString());
    return 1;
  }
  Log(absl::StrFormat(
      "listening on %s, forwarding to %s (seed %d; drop_response=%g duplicate=%g cut_stream=%g in %d..%d B; "
      "rate_kbit=%d delay_ms=%d cut=%g within %d ms)",
      (*proxy)->address(), options->target, options->seed, options->drop_response, options->duplicate,
      options->cut_stream, options->cut_after_min_bytes, options->cut_after_max_bytes, options->rate_kbit,
      absl::ToInt64Milliseconds(options->delay), options->cut, absl::ToInt64Milliseconds(options->cut_within)));
  WriteStats((*proxy)->stats(), options->stats_file);
  if (const std::string ready = absl::GetFlag(FLAGS_ready_file); !ready.empty()) {
    if (absl::Status written = hamlet::storage::WriteFileAtomically(ready, (*proxy)->address() + "\n"); !written.ok()) {
      Log(std::string(written.message()));
      return 1;
    }
  }
  std::thread serve([&proxy] { (*proxy)->Serve(); });
  int signal = 0;
  sigwait(&signals, &signal);
  (*proxy)->Stop();
  serve.join();
  WriteStats((*proxy)->stats(), options->stats_file);
  Log(absl::StrCat("stopped on ", signal == SIGTERM ? "SIGTERM" : "SIGINT", ": ", (*proxy)->stats().Line()));
  return 0;
}
