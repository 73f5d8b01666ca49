#ifndef HAMLET_TESTS_SUPPORT_ADMIN_H_
#define HAMLET_TESTS_SUPPORT_ADMIN_H_

#include <memory>
#include <string>

#include "hamlet/v1/admin.grpc.pb.h"
#include "tests/support/server_process.h"

namespace hamlet::testing {

// A client of the server's admin service, acting with its admin token.
class AdminClient {
 public:
  explicit AdminClient(const ServerProcess& server);

  // Enrols `device_id` and returns its token; fails the test on error.
  std::string Enroll(const std::string& device_id, hamlet::v1::Role role, const std::string& unit_code,
                     const std::string& person_id);
  grpc::Status Revoke(const std::string& device_id, const std::string& reason);
  hamlet::v1::AdminService::Stub& stub() { return *stub_; }
  // A context carrying the admin token.
  std::unique_ptr<grpc::ClientContext> Context() const;

 private:
  std::unique_ptr<hamlet::v1::AdminService::Stub> stub_;
  std::string token_;
};

}  // namespace hamlet::testing

#endif  // HAMLET_TESTS_SUPPORT_ADMIN_H_
