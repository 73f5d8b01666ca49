#include "tests/support/admin.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

namespace hamlet::testing {

AdminClient::AdminClient(const ServerProcess& server)
    : stub_(hamlet::v1::AdminService::NewStub(
          grpc::CreateChannel(server.admin_address(), grpc::InsecureChannelCredentials()))),
      token_(server.admin_token()) {}

std::unique_ptr<grpc::ClientContext> AdminClient::Context() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->AddMetadata("authorization", "Bearer " + token_);
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return context;
}

std::string AdminClient::Enroll(const std::string& device_id, hamlet::v1::Role role, const std::string& unit_code,
                                const std::string& person_id) {
  hamlet::v1::EnrollDeviceRequest request;
  request.set_device_id(device_id);
  request.set_role(role);
  request.set_unit_code(unit_code);
  request.set_person_id(person_id);
  hamlet::v1::EnrollDeviceResponse response;
  const grpc::Status status = stub_->EnrollDevice(Context().get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.token();
}

grpc::Status AdminClient::Revoke(const std::string& device_id, const std::string& reason) {
  hamlet::v1::RevokeDeviceRequest request;
  request.set_device_id(device_id);
  request.set_reason(reason);
  hamlet::v1::RevokeDeviceResponse response;
  return stub_->RevokeDevice(Context().get(), request, &response);
}

}  // namespace hamlet::testing
