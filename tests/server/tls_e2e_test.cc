// TLS on the device listener, and mTLS for replication nodes, with
// certificates made by openssl for the test.

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "hamlet/v1/sync.grpc.pb.h"
#include "tests/support/admin.h"
#include "tests/support/server_process.h"
#include "tests/support/temp_dir.h"

namespace hamlet {
namespace {

using hamlet::testing::ReadFile;
using hamlet::testing::ServerProcess;

constexpr char kMember[] = "00000000-0000-4000-8000-0000000000a1";
constexpr char kReplica[] = "00000000-0000-4000-8000-0000000000b2";

// A CA, a server certificate for 127.0.0.1 and a client certificate.
bool MakeCertificates(const std::string& dir) {
  const std::string script = absl::StrCat(
      "set -e; cd '", dir, "'; ",
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=Hamlet test CA' ",
      "2>/dev/null; ",
      "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=hamletd' 2>/dev/null; ",
      "printf 'subjectAltName=IP:127.0.0.1' > san; ",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 ",
      "-extfile san 2>/dev/null; ",
      "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj '/CN=replica-206' 2>/dev/null; ",
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 ",
      "2>/dev/null");
  return std::system(("bash -c \"" + script + "\"").c_str()) == 0;
}

grpc::Status Pull(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> credentials,
                  const std::string& device, const std::string& token) {
  auto stub = hamlet::v1::SyncService::NewStub(grpc::CreateChannel(address, credentials));
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + token);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  hamlet::v1::PullRequest request;
  request.set_device_id(device);
  request.set_page_size(1);
  hamlet::v1::PullResponse response;
  return stub->Pull(&context, request, &response);
}

TEST(TlsE2eTest, DevicesTalkTlsAndReplicationNodesNeedAClientCertificate) {
  hamlet::testing::TempDir dir;
  ASSERT_TRUE(MakeCertificates(dir.path())) << "openssl could not make the test certificates";
  auto server = ServerProcess::Start(
      dir.Sub("data"), {"--tls_cert_file=" + dir.Sub("server.pem"), "--tls_key_file=" + dir.Sub("server.key"),
                        "--tls_client_ca_file=" + dir.Sub("ca.pem")});
  ASSERT_NE(server, nullptr) << ReadFile(dir.Sub("data.log"));
  std::string member_token, replica_token;
  {
    hamlet::testing::AdminClient admin(*server);
    member_token = admin.Enroll(kMember, hamlet::v1::ROLE_MEMBER, "07132", "tv-01");
    replica_token = admin.Enroll(kReplica, hamlet::v1::ROLE_REPLICATION_NODE, "206", "replica");
  }
  grpc::SslCredentialsOptions server_only;
  server_only.pem_root_certs = ReadFile(dir.Sub("ca.pem"));
  grpc::SslCredentialsOptions mutual = server_only;
  mutual.pem_private_key = ReadFile(dir.Sub("client.key"));
  mutual.pem_cert_chain = ReadFile(dir.Sub("client.pem"));

  // A phone: TLS, no client certificate.
  EXPECT_TRUE(Pull(server->address(), grpc::SslCredentials(server_only), kMember, member_token).ok());
  // Plain text is not spoken on a TLS listener.
  EXPECT_EQ(Pull(server->address(), grpc::InsecureChannelCredentials(), kMember, member_token).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // A replication node's token alone is not enough...
  const grpc::Status bare = Pull(server->address(), grpc::SslCredentials(server_only), kReplica, replica_token);
  EXPECT_EQ(bare.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(bare.error_message(), ::testing::HasSubstr("client certificate"));
  // ...with its certificate it is let in.
  const grpc::Status with_cert = Pull(server->address(), grpc::SslCredentials(mutual), kReplica, replica_token);
  EXPECT_TRUE(with_cert.ok()) << with_cert.error_message();
  EXPECT_THAT(ReadFile(dir.Sub("data.log")), ::testing::HasSubstr("device listener uses TLS, verifying client"));
}

// Replication status of a server, by its admin.
hamlet::v1::ReplicationStatus ReplicationOf(ServerProcess& server) {
  hamlet::testing::AdminClient admin(server);
  hamlet::v1::GetReplicationStatusResponse response;
  EXPECT_TRUE(admin.stub().GetReplicationStatus(admin.Context().get(), {}, &response).ok());
  return response.status();
}

// A town replicating to a province that verifies client certificates: with
// its certificate it catches up; without, it keeps failing and says why.
TEST(TlsE2eTest, ATownReplicatesToItsProvinceOverMutualTls) {
  hamlet::testing::TempDir dir;
  ASSERT_TRUE(MakeCertificates(dir.path())) << "openssl could not make the test certificates";
  auto province = ServerProcess::Start(
      dir.Sub("province"), {"--tier=province", "--tls_cert_file=" + dir.Sub("server.pem"),
                            "--tls_key_file=" + dir.Sub("server.key"), "--tls_client_ca_file=" + dir.Sub("ca.pem")});
  ASSERT_NE(province, nullptr) << ReadFile(dir.Sub("province.log"));
  std::string previous_node;  // A province takes one replication node per town: the next replaces it.
  for (const bool with_certificate : {true, false}) {
    const std::string name = with_certificate ? "town-mtls" : "town-no-cert";
    if (!previous_node.empty()) {
      ASSERT_TRUE(hamlet::testing::AdminClient(*province).Revoke(previous_node, "replaced by " + name).ok());
    }
    std::string server_id;
    {
      auto first = ServerProcess::Start(dir.Sub(name));
      ASSERT_NE(first, nullptr) << ReadFile(dir.Sub(name + ".log"));
      server_id = ReplicationOf(*first).device_id();  // Set even without an upstream.
      ASSERT_FALSE(server_id.empty());
      first->Kill();
    }
    const std::string token =
        hamlet::testing::AdminClient(*province).Enroll(server_id, hamlet::v1::ROLE_REPLICATION_NODE, "206", name);
    previous_node = server_id;
    std::ofstream(dir.Sub(name + ".token")) << token << "\n";
    std::vector<std::string> flags = {"--upstream=" + province->address(),
                                      "--upstream_token_file=" + dir.Sub(name + ".token"),
                                      "--upstream_ca_file=" + dir.Sub("ca.pem"), "--replication_poll=200ms"};
    if (with_certificate) {
      flags.push_back("--upstream_cert_file=" + dir.Sub("client.pem"));
      flags.push_back("--upstream_key_file=" + dir.Sub("client.key"));
    }
    auto town = ServerProcess::Start(dir.Sub(name), flags);
    ASSERT_NE(town, nullptr) << ReadFile(dir.Sub(name + ".log"));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    hamlet::v1::ReplicationStatus status;
    do {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      status = ReplicationOf(*town);
    } while (status.state() !=
                 (with_certificate ? hamlet::v1::REPLICATION_STATE_RUNNING : hamlet::v1::REPLICATION_STATE_FAILING) &&
             std::chrono::steady_clock::now() < deadline);
    if (with_certificate) {
      EXPECT_EQ(status.state(), hamlet::v1::REPLICATION_STATE_RUNNING) << status.DebugString();
      EXPECT_EQ(status.acked_seq(), status.last_seq()) << status.DebugString();
      EXPECT_GT(status.units_received() + status.acked_seq(), 0u);
    } else {
      EXPECT_EQ(status.state(), hamlet::v1::REPLICATION_STATE_FAILING) << status.DebugString();
      EXPECT_THAT(status.last_error(), ::testing::HasSubstr("client certificate"));
    }
  }
}

TEST(TlsE2eTest, HalfATlsConfigurationIsRefusedAtStart) {
  hamlet::testing::TempDir dir;
  EXPECT_EQ(ServerProcess::Start(dir.Sub("data"), {"--tls_cert_file=" + dir.Sub("missing.pem")}), nullptr);
  EXPECT_THAT(ReadFile(dir.Sub("data.log")), ::testing::HasSubstr("--tls_cert_file and --tls_key_file go together"));
}

}  // namespace
}  // namespace hamlet
