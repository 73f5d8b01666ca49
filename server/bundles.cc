#include "server/bundles.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "storage/bundle.h"
#include "sync/status_macros.h"

namespace hamlet::server {

using google::protobuf::util::TimeUtil;

absl::StatusOr<hamlet::v1::ImportBundleResponse> ImportBundle(
    absl::string_view bundle, Town& town, const DeviceRegistry& devices, const sync::PhysicalClock& clock,
    const std::function<void(const hamlet::v1::ImportBundleResponse&)>& progress) {
  HAMLET_ASSIGN_OR_RETURN(hamlet::v1::BundleHeader header, storage::ReadBundleHeader(bundle));
  if (header.direction() != hamlet::v1::BUNDLE_DIRECTION_TO_SERVER) {
    return absl::InvalidArgumentError(
        absl::StrCat("this is a bundle a server wrote for device ", header.device_id(),
                     " (hamlet-admin export): carry it to that phone and import it there (hamlet-field import)"));
  }
  HAMLET_ASSIGN_OR_RETURN(DeviceRegistry::BundleDevice device, devices.ForBundle(header.device_id()));
  HAMLET_ASSIGN_OR_RETURN(hamlet::v1::BundleContent content, storage::OpenBundle(bundle, device.secret));
  // Everything is checked before the first batch is applied.
  const int64_t written_ms = TimeUtil::TimestampToMilliseconds(content.export_time());
  const int64_t now_ms = clock.NowMs();
  const int64_t skew_ms = absl::ToInt64Milliseconds(town.options().max_clock_skew);
  if (written_ms > now_ms + skew_ms) {
    return absl::FailedPreconditionError(
        absl::StrCat("the bundle says it was written at ", TimeUtil::ToString(content.export_time()), ", ",
                     (written_ms - now_ms) / 1000, " s ahead of this server's clock (allowed skew ", skew_ms / 1000,
                     " s): the phone's clock is wrong. Correct it and export again; nothing was applied"));
  }
  HAMLET_RETURN_IF_ERROR(EnrolledAt(device.device, written_ms));
  for (const hamlet::v1::PushRequest& push : content.pushes()) {
    if (push.device_id() != header.device_id()) {
      return absl::InvalidArgumentError(absl::StrCat("batch ", push.batch_id(), " of the bundle of device ",
                                                     header.device_id(), " names device ", push.device_id(),
                                                     "; nothing was applied"));
    }
  }
  // Where the device's pulls stand: the next bundle for it starts there.
  if (!content.pull_cursor().empty()) town.NotePull(header.device_id(), content.pull_scope(), content.pull_cursor());
  hamlet::v1::ImportBundleResponse message;
  message.set_device_id(header.device_id());
  *message.mutable_export_time() = content.export_time();
  message.set_batches_total(static_cast<uint32_t>(content.pushes_size()));
  for (const hamlet::v1::PushRequest& push : content.pushes()) {
    absl::StatusOr<Town::Carried> pushed = town.PushCarried(push, device.caller, written_ms);
    const bool applied = pushed.ok() && !pushed->held;
    message.set_batch_id(push.batch_id());
    message.set_code(static_cast<int32_t>(pushed.status().code()));
    message.set_message(std::string(pushed.status().message()));
    message.set_already_held(pushed.ok() && pushed->held);
    message.set_applied_records(applied ? pushed->response.applied_records() : 0);
    message.set_set_aside(applied ? static_cast<uint32_t>(pushed->response.set_aside_size()) : 0);
    message.set_records_applied(message.records_applied() + message.applied_records());
    message.set_changes_set_aside(message.changes_set_aside() + message.set_aside());
    if (!pushed.ok()) message.set_batches_refused(message.batches_refused() + 1);
    message.set_batches_done(message.batches_done() + 1);
    message.set_done(message.batches_done() == message.batches_total());
    progress(message);
  }
  if (content.pushes_size() == 0) {
    message.set_done(true);
    progress(message);
  }
  return message;
}

absl::StatusOr<ExportedBundle> ExportBundle(
    const std::string& device_id, const std::string& server_id, Town& town, const DeviceRegistry& devices,
    const sync::PhysicalClock& clock, const std::function<void(const hamlet::v1::ExportBundleResponse&)>& progress) {
  if (device_id.empty()) return absl::InvalidArgumentError("device_id is required");
  HAMLET_ASSIGN_OR_RETURN(DeviceRegistry::BundleDevice device, devices.ForBundle(device_id));
  const int64_t now_ms = clock.NowMs();
  if (absl::Status enrolled = EnrolledAt(device.device, now_ms); !enrolled.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(enrolled.message(), ". Nothing is exported for a device whose enrolment is not in force"));
  }
  hamlet::v1::BundleContent content;
  *content.mutable_export_time() = TimeUtil::MillisecondsToTimestamp(now_ms);
  content.set_server_id(server_id);
  hamlet::v1::PullRequest pull;
  pull.set_device_id(device_id);
  pull.set_page_size(static_cast<uint32_t>(town.options().max_page_size));
  pull.set_max_page_bytes(static_cast<uint32_t>(town.options().max_page_bytes));
  pull.set_lean_stamps(true);
  pull.set_omit_own_writes(true);  // As the device pulls: it holds its own writes.
  if (std::optional<storage::PullPosition> last = town.LastPull(device_id); last.has_value()) {
    pull.set_scope_unit_code(last->scope());
    pull.set_cursor(last->cursor());
  }
  hamlet::v1::ExportBundleResponse message;
  const auto starting_at = [&](std::string cursor) {
    pull.set_cursor(cursor);
    content.set_scope_unit_code(pull.scope_unit_code());
    content.set_from_cursor(cursor);
    message.set_scope_unit_code(pull.scope_unit_code());
    message.set_from_beginning(cursor.empty());
  };
  starting_at(pull.cursor());
  while (true) {
    absl::StatusOr<PulledPage> pulled = town.Pull(pull, device.caller);
    const absl::StatusCode code = pulled.status().code();
    const bool no_place_to_start = code == absl::StatusCode::kFailedPrecondition ||
                                   code == absl::StatusCode::kPermissionDenied ||
                                   code == absl::StatusCode::kInvalidArgument;
    if (no_place_to_start && content.records_size() == 0 &&
        (!pull.cursor().empty() || !pull.scope_unit_code().empty())) {
      // Where the device's pulls stood is no longer a place to start (a
      // cursor from before a restore or of another scope, a scope beyond its
      // enrolment now): everything it may see, from the beginning. Any other
      // error (the disk, say) ends the export.
      pull.clear_scope_unit_code();
      starting_at("");
      continue;
    }
    if (!pulled.ok()) return pulled.status();
    const hamlet::v1::PullResponse& page = pulled->response;
    if (page.has_history()) *content.mutable_history() = page.history();
    for (const std::string& record : pulled->records) {
      if (!content.add_records()->ParseFromString(record)) {
        return absl::InternalError(absl::StrCat("a pulled record of ", device_id, " does not parse"));
      }
    }
    content.set_next_cursor(page.next_cursor());
    pull.set_cursor(page.next_cursor());
    message.set_records(static_cast<uint64_t>(content.records_size()));
    message.set_remaining(page.remaining());
    progress(message);
    if (page.remaining() == 0) break;
  }
  ExportedBundle out;
  HAMLET_ASSIGN_OR_RETURN(
      out.bytes, storage::SealBundle(hamlet::v1::BUNDLE_DIRECTION_TO_DEVICE, device_id, content, device.secret));
  message.set_bytes(out.bytes.size());
  message.set_done(true);
  out.summary = message;
  return out;
}

}  // namespace hamlet::server
