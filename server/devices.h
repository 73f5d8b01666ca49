#ifndef HAMLET_SERVER_DEVICES_H_
#define HAMLET_SERVER_DEVICES_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hamlet/v1/admin.pb.h"
#include "storage/town_store.h"
#include "sync/access.h"
#include "sync/clock.h"

namespace hamlet::server {

// Who is calling, established from the bearer token of the call.
struct Caller {
  std::string device_id;
  sync::Principal principal;
  // The caller's network address, for the audit log.
  std::string peer;
};

// The enrolled devices and their tokens. Tokens are random 256-bit values the
// server shows once; it keeps only their SHA-256, in the store and in memory,
// so a revocation takes effect on the very next call. Thread-safe.
class DeviceRegistry {
 public:
  // Loads the enrolments. `store` and `clock` must outlive the registry.
  static absl::StatusOr<std::unique_ptr<DeviceRegistry>> Load(storage::TownStore* store,
                                                              const sync::PhysicalClock* clock);

  // Enrols (or re-enrols, with a new token) a device; returns the token once.
  // INVALID_ARGUMENT for a bad request. `by` is who asked, for the audit log.
  absl::StatusOr<hamlet::v1::EnrollDeviceResponse> Enroll(const hamlet::v1::EnrollDeviceRequest& request,
                                                          const Caller& by);
  // NOT_FOUND if the device was never enrolled.
  absl::StatusOr<hamlet::v1::Device> Revoke(const std::string& device_id, const std::string& reason, const Caller& by);

  // The caller behind `authorization` metadata ("Bearer <token>").
  // `certified_peer` says whether the connection presented a client
  // certificate that the server verified (mTLS). UNAUTHENTICATED, with a reason
  // a person can act on, when the token is missing, malformed, unknown,
  // expired or revoked, or when a replication node comes without a verified
  // client certificate while those are required.
  absl::StatusOr<Caller> Authenticate(absl::string_view authorization, const std::string& peer,
                                      bool certified_peer = false) const;

  // Replication nodes must connect with a verified client certificate as well
  // as their token (set when the server has a client CA). Default false.
  void RequireClientCertificateForReplication(bool required) { replication_needs_cert_ = required; }
  // At most one working replication node per unit (set on a province, where
  // a node writes its town's records): enrolling a second one for a unit is
  // FAILED_PRECONDITION until the first is revoked or has expired. The same
  // node may be enrolled again (a new token). Default false.
  void OneReplicationNodePerUnit(bool one) { one_replication_node_per_unit_ = one; }

  std::vector<hamlet::v1::Device> List() const;

  // A device as a bundle names it (docs/PROTOCOL.md, "Bundles"): the caller
  // its batches are applied as, its enrolment, and the secret its bundles
  // are sealed with. FAILED_PRECONDITION if this server never enrolled it,
  // or enrolled it before bundles existed (enrol it again).
  struct BundleDevice {
    Caller caller;
    hamlet::v1::Device device;
    std::string secret;
  };
  absl::StatusOr<BundleDevice> ForBundle(const std::string& device_id) const;

  // Makes sure an admin can reach the server: if `token_file` does not hold
  // a valid admin token, enrols a new admin device for the town and writes its
  // token there (mode 0600). Returns the token.
  absl::StatusOr<std::string> EnsureAdminToken(const std::string& token_file, const std::string& unit_code);

 private:
  DeviceRegistry(storage::TownStore* store, const sync::PhysicalClock* clock) : store_(store), clock_(clock) {}

  storage::TownStore* const store_;
  const sync::PhysicalClock* const clock_;
  bool replication_needs_cert_ = false;
  bool one_replication_node_per_unit_ = false;
  mutable absl::Mutex mu_;
  std::map<std::string, storage::Enrolment> by_device_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> device_by_token_hash_ ABSL_GUARDED_BY(mu_);
};

// PERMISSION_DENIED, naming when and why, unless `device`'s enrolment was in
// force at `at_ms`: not revoked then and not expired.
absl::Status EnrolledAt(const hamlet::v1::Device& device, int64_t at_ms);

// An audit entry for an action by `by`.
hamlet::v1::AuditEntry AuditOf(const Caller& by, absl::string_view action, absl::string_view target,
                               absl::string_view detail, int64_t now_ms);

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_DEVICES_H_
