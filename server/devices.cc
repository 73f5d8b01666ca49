#include "server/devices.h"

#include <openssl/rand.h>

#include <fstream>

#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/time_util.h"
#include "server/sha256.h"
#include "storage/atomic_file.h"
#include "storage/bundle.h"
#include "sync/status_macros.h"
#include "sync/uuid.h"
#include "sync/validate.h"

namespace hamlet::server {

using google::protobuf::util::TimeUtil;

namespace {

constexpr char kTokenPrefix[] = "hmt_";

absl::StatusOr<std::string> NewToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) return absl::InternalError("no randomness for a token");
  return absl::StrCat(
      kTokenPrefix, absl::WebSafeBase64Escape(absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes))));
}

}  // namespace

hamlet::v1::AuditEntry AuditOf(const Caller& by, absl::string_view action, absl::string_view target,
                               absl::string_view detail, int64_t now_ms) {
  hamlet::v1::AuditEntry entry;
  *entry.mutable_time() = TimeUtil::MillisecondsToTimestamp(now_ms);
  entry.set_device_id(by.device_id);
  entry.set_person_id(by.principal.person_id);
  entry.set_role(by.principal.role);
  entry.set_peer(by.peer);
  entry.set_action(std::string(action));
  entry.set_target(std::string(target));
  entry.set_detail(std::string(detail));
  return entry;
}

absl::StatusOr<std::unique_ptr<DeviceRegistry>> DeviceRegistry::Load(storage::TownStore* store,
                                                                     const sync::PhysicalClock* clock) {
  std::unique_ptr<DeviceRegistry> registry(new DeviceRegistry(store, clock));
  HAMLET_ASSIGN_OR_RETURN(std::vector<storage::Enrolment> enrolments, store->ListEnrolments());
  absl::MutexLock lock(&registry->mu_);
  for (storage::Enrolment& e : enrolments) {
    registry->device_by_token_hash_[e.token_sha256()] = e.device().device_id();
    registry->by_device_[e.device().device_id()] = std::move(e);
  }
  return registry;
}

absl::StatusOr<hamlet::v1::EnrollDeviceResponse> DeviceRegistry::Enroll(const hamlet::v1::EnrollDeviceRequest& request,
                                                                        const Caller& by) {
  std::string device_id = request.device_id();
  if (device_id.empty()) {
    absl::BitGen gen;
    device_id = sync::NewUuid(gen);
  }
  if (!sync::IsUuid(device_id)) return absl::InvalidArgumentError("device_id must be a UUID (or empty)");
  if (request.person_id().empty()) return absl::InvalidArgumentError("person_id is required");
  if (request.role() == hamlet::v1::ROLE_UNSPECIFIED || !hamlet::v1::Role_IsValid(request.role())) {
    return absl::InvalidArgumentError("role is required: ROLE_MEMBER, ROLE_TEAM_LEADER, ...");
  }
  if (request.unit_code().empty()) return absl::InvalidArgumentError("unit_code is required");
  const int64_t now_ms = clock_->NowMs();
  const int64_t ttl_ms =
      request.has_ttl() ? TimeUtil::DurationToMilliseconds(request.ttl()) : int64_t{180} * 24 * 3600 * 1000;
  if (ttl_ms <= 0) return absl::InvalidArgumentError("ttl must be positive");
  HAMLET_ASSIGN_OR_RETURN(std::string token, NewToken());

  storage::Enrolment enrolment;
  hamlet::v1::Device* device = enrolment.mutable_device();
  device->set_device_id(device_id);
  device->set_person_id(request.person_id());
  device->set_role(request.role());
  device->set_unit_code(request.unit_code());
  *device->mutable_enroll_time() = TimeUtil::MillisecondsToTimestamp(now_ms);
  *device->mutable_expire_time() = TimeUtil::MillisecondsToTimestamp(now_ms + ttl_ms);
  enrolment.set_token_sha256(Sha256(token));
  HAMLET_ASSIGN_OR_RETURN(*enrolment.mutable_bundle_secret(), storage::BundleSecretOfToken(token));

  absl::MutexLock lock(&mu_);
  if (one_replication_node_per_unit_ && request.role() == hamlet::v1::ROLE_REPLICATION_NODE) {
    for (const auto& [id, other] : by_device_) {
      const hamlet::v1::Device& d = other.device();
      if (id == device_id || d.role() != hamlet::v1::ROLE_REPLICATION_NODE || d.unit_code() != request.unit_code() ||
          d.has_revoke_time() || TimeUtil::TimestampToMilliseconds(d.expire_time()) <= now_ms) {
        continue;
      }
      return absl::FailedPreconditionError(
          absl::StrCat("unit ", request.unit_code(), " already has a replication node, ", id, " (", d.person_id(),
                       "); two could both write its records here. Revoke it first (tools/hamlet-admin devices revoke "
                       "--device-id=",
                       id, "), or enrol that same id again for a new token"));
    }
  }
  if (auto old = by_device_.find(device_id); old != by_device_.end() && old->second.device().has_revoke_time()) {
    return absl::FailedPreconditionError(absl::StrCat("device ", device_id,
                                                      " was revoked; a revoked device stays revoked. Enrol the "
                                                      "phone again under a new device id"));
  }
  HAMLET_RETURN_IF_ERROR(store_->PutEnrolment(
      enrolment, AuditOf(by, "enroll", device_id,
                         absl::StrCat("person ", request.person_id(), " as ", hamlet::v1::Role_Name(request.role()),
                                      " of unit ", request.unit_code()),
                         now_ms)));
  // A re-enrolled device's old token stops working.
  if (auto old = by_device_.find(device_id); old != by_device_.end()) {
    device_by_token_hash_.erase(old->second.token_sha256());
  }
  device_by_token_hash_[enrolment.token_sha256()] = device_id;
  by_device_[device_id] = enrolment;

  hamlet::v1::EnrollDeviceResponse response;
  response.set_device_id(device_id);
  response.set_token(token);
  *response.mutable_expire_time() = device->expire_time();
  return response;
}

absl::StatusOr<hamlet::v1::Device> DeviceRegistry::Revoke(const std::string& device_id, const std::string& reason,
                                                          const Caller& by) {
  if (reason.empty()) return absl::InvalidArgumentError("reason is required, for the audit log");
  absl::MutexLock lock(&mu_);
  auto it = by_device_.find(device_id);
  if (it == by_device_.end()) return absl::NotFoundError(absl::StrCat("no enrolled device ", device_id));
  storage::Enrolment enrolment = it->second;
  if (enrolment.device().has_revoke_time()) return enrolment.device();  // Already revoked: nothing to do.
  if (enrolment.device().role() == hamlet::v1::ROLE_ADMIN) {
    int active_admins = 0;
    for (const auto& [id, e] : by_device_) {
      if (e.device().role() == hamlet::v1::ROLE_ADMIN && !e.device().has_revoke_time()) ++active_admins;
    }
    if (active_admins <= 1) {
      return absl::FailedPreconditionError("this is the last admin device; enrol another admin before revoking it");
    }
  }
  const int64_t now_ms = clock_->NowMs();
  *enrolment.mutable_device()->mutable_revoke_time() = TimeUtil::MillisecondsToTimestamp(now_ms);
  enrolment.mutable_device()->set_revoke_reason(reason);
  HAMLET_RETURN_IF_ERROR(store_->PutEnrolment(enrolment, AuditOf(by, "revoke", device_id, reason, now_ms)));
  it->second = enrolment;
  return enrolment.device();
}

absl::StatusOr<Caller> DeviceRegistry::Authenticate(absl::string_view authorization, const std::string& peer,
                                                    bool certified_peer) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError("no token: send `authorization: Bearer <token>` (an admin enrols the device)");
  }
  absl::string_view token = authorization;
  // The scheme name is case-insensitive (RFC 7235).
  const bool bearer = absl::StartsWithIgnoreCase(token, "bearer ");
  if (bearer) token.remove_prefix(7);
  if (!bearer || !absl::StartsWith(token, kTokenPrefix)) {
    return absl::UnauthenticatedError("malformed authorization: expected `Bearer hmt_...`");
  }
  const std::string hash = Sha256(token);
  absl::MutexLock lock(&mu_);
  auto id = device_by_token_hash_.find(hash);
  if (id == device_by_token_hash_.end()) {
    return absl::UnauthenticatedError(
        "unknown token; ask an admin to enrol this device (a server restored from a backup made before the device "
        "was enrolled does not know it: enrol it again)");
  }
  const hamlet::v1::Device& device = by_device_.at(id->second).device();
  if (device.has_revoke_time()) {
    return absl::UnauthenticatedError(absl::StrCat("device ", device.device_id(), " was revoked (",
                                                   device.revoke_reason(),
                                                   "); a revoked device stays revoked: set the phone up again as "
                                                   "a new device and ask an admin to enrol that"));
  }
  if (clock_->NowMs() >= TimeUtil::TimestampToMilliseconds(device.expire_time())) {
    return absl::UnauthenticatedError(
        absl::StrCat("token of device ", device.device_id(), " expired; ask an admin to enrol it again"));
  }
  if (device.role() == hamlet::v1::ROLE_REPLICATION_NODE && replication_needs_cert_ && !certified_peer) {
    return absl::UnauthenticatedError(absl::StrCat(
        "device ", device.device_id(),
        " is a replication node: it must connect with a client certificate signed by this server's client CA "
        "(mTLS)"));
  }
  Caller caller;
  caller.device_id = device.device_id();
  caller.principal.role = device.role();
  caller.principal.unit_code = device.unit_code();
  caller.principal.person_id = device.person_id();
  caller.peer = peer;
  return caller;
}

absl::StatusOr<DeviceRegistry::BundleDevice> DeviceRegistry::ForBundle(const std::string& device_id) const {
  absl::MutexLock lock(&mu_);
  auto it = by_device_.find(device_id);
  if (it == by_device_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("device ", device_id,
                     " was never enrolled on this server; its bundles cannot be opened here (is it another town's?)"));
  }
  const storage::Enrolment& enrolment = it->second;
  if (enrolment.bundle_secret().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("device ", device_id,
                     " was enrolled before bundles existed, so it shares no bundle secret with this server: enrol it "
                     "again (tools/hamlet-admin devices enroll --device-id=",
                     device_id, " ...) and give the phone its new token"));
  }
  BundleDevice out;
  out.device = enrolment.device();
  out.secret = enrolment.bundle_secret();
  out.caller.device_id = device_id;
  out.caller.principal.role = out.device.role();
  out.caller.principal.unit_code = out.device.unit_code();
  out.caller.principal.person_id = out.device.person_id();
  out.caller.peer = "bundle";
  return out;
}

absl::Status EnrolledAt(const hamlet::v1::Device& device, int64_t at_ms) {
  if (device.has_revoke_time() && TimeUtil::TimestampToMilliseconds(device.revoke_time()) <= at_ms) {
    return absl::PermissionDeniedError(
        absl::StrCat("device ", device.device_id(), " was revoked at ", TimeUtil::ToString(device.revoke_time()), " (",
                     device.revoke_reason(), "), before ", TimeUtil::ToString(TimeUtil::MillisecondsToTimestamp(at_ms)),
                     ": nothing it wrote at that time is accepted"));
  }
  if (TimeUtil::TimestampToMilliseconds(device.expire_time()) <= at_ms) {
    return absl::PermissionDeniedError(absl::StrCat("the token of device ", device.device_id(), " had expired at ",
                                                    TimeUtil::ToString(device.expire_time()), ", before ",
                                                    TimeUtil::ToString(TimeUtil::MillisecondsToTimestamp(at_ms)),
                                                    ": enrol it again, and have it export again"));
  }
  return absl::OkStatus();
}

std::vector<hamlet::v1::Device> DeviceRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<hamlet::v1::Device> out;
  for (const auto& [id, enrolment] : by_device_) out.push_back(enrolment.device());
  return out;
}

absl::StatusOr<std::string> DeviceRegistry::EnsureAdminToken(const std::string& token_file,
                                                             const std::string& unit_code) {
  std::ifstream in(token_file);
  std::string token;
  std::getline(in, token);
  if (!token.empty()) {
    absl::StatusOr<Caller> caller = Authenticate(absl::StrCat("Bearer ", token), "");
    if (caller.ok() && caller->principal.role == hamlet::v1::ROLE_ADMIN) return token;
  }
  hamlet::v1::EnrollDeviceRequest request;
  request.set_person_id("admin");
  request.set_role(hamlet::v1::ROLE_ADMIN);
  request.set_unit_code(unit_code);
  request.mutable_ttl()->set_seconds(int64_t{10} * 365 * 24 * 3600);
  Caller server;
  server.principal.person_id = "hamletd";
  HAMLET_ASSIGN_OR_RETURN(hamlet::v1::EnrollDeviceResponse enrolled, Enroll(request, server));
  // The token is never readable by others, not even briefly.
  HAMLET_RETURN_IF_ERROR(storage::WriteFileAtomically(token_file, enrolled.token() + "\n", 0600));
  return enrolled.token();
}

}  // namespace hamlet::server
