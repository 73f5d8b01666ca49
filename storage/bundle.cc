#include "storage/bundle.h"

#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "storage/sealing.h"
#include "sync/status_macros.h"

namespace hamlet::storage {
namespace {

constexpr absl::string_view kMagic = "HAMLETB1";
constexpr uint32_t kVersion = 1;
constexpr size_t kSecretSize = 32;
constexpr size_t kSaltSize = 16;

// HKDF-SHA256 (RFC 5869) of 32 bytes, by OpenSSL.
absl::StatusOr<std::string> Hkdf(absl::string_view ikm, absl::string_view salt, absl::string_view info) {
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr),
                                                                  &EVP_PKEY_CTX_free);
  std::string out(kSecretSize, '\0');
  size_t out_size = out.size();
  const auto bytes = [](absl::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); };
  if (ctx == nullptr || EVP_PKEY_derive_init(ctx.get()) <= 0 ||
      EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()) <= 0 ||
      EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), bytes(salt), static_cast<int>(salt.size())) <= 0 ||
      EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), bytes(ikm), static_cast<int>(ikm.size())) <= 0 ||
      EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), bytes(info), static_cast<int>(info.size())) <= 0 ||
      EVP_PKEY_derive(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &out_size) <= 0 ||
      out_size != out.size()) {
    return absl::InternalError("deriving a bundle key failed (OpenSSL HKDF)");
  }
  return out;
}

// The sealer of one bundle: its own key, from the secret and its header
// (parsed, and its bytes as in the file).
absl::StatusOr<std::unique_ptr<Sealer>> BundleSealer(absl::string_view secret, const hamlet::v1::BundleHeader& header,
                                                     const std::string& header_bytes) {
  if (secret.size() != kSecretSize) {
    return absl::FailedPreconditionError("a bundle secret is 32 bytes; this device has none of that size");
  }
  HAMLET_ASSIGN_OR_RETURN(std::string key,
                          Hkdf(secret, header.salt(), absl::StrCat("hamlet bundle key v1", header_bytes)));
  return Sealer::Create(key);
}

struct Parsed {
  hamlet::v1::SealedBundle sealed;
  hamlet::v1::BundleHeader header;
};

absl::StatusOr<Parsed> Parse(absl::string_view bundle) {
  if (!absl::StartsWith(bundle, kMagic)) {
    return absl::InvalidArgumentError("not a Hamlet bundle (it does not begin with \"HAMLETB1\")");
  }
  Parsed parsed;
  bundle.remove_prefix(kMagic.size());
  if (!parsed.sealed.ParseFromArray(bundle.data(), static_cast<int>(bundle.size())) ||
      !parsed.header.ParseFromString(parsed.sealed.header())) {
    return absl::DataLossError("the bundle is damaged: its header cannot be read (cut short or changed)");
  }
  if (parsed.header.version() > kVersion) {
    return absl::InvalidArgumentError(absl::StrCat("bundle version ", parsed.header.version(),
                                                   " was written by a later Hamlet; this one reads version ",
                                                   kVersion));
  }
  if (parsed.header.version() != kVersion || parsed.header.salt().size() != kSaltSize ||
      parsed.header.device_id().empty() || parsed.header.direction() == hamlet::v1::BUNDLE_DIRECTION_UNSPECIFIED) {
    return absl::DataLossError("the bundle is damaged: its header is incomplete");
  }
  return parsed;
}

}  // namespace

absl::StatusOr<std::string> BundleSecretOfToken(absl::string_view token) {
  if (token.empty()) return absl::FailedPreconditionError("no token: the device is not enrolled");
  return Hkdf(token, "", "hamlet bundle secret v1");
}

absl::StatusOr<std::string> SealBundle(hamlet::v1::BundleDirection direction, const std::string& device_id,
                                       const hamlet::v1::BundleContent& content, absl::string_view secret) {
  hamlet::v1::BundleHeader header;
  header.set_version(kVersion);
  header.set_direction(direction);
  header.set_device_id(device_id);
  unsigned char salt[kSaltSize];
  if (RAND_bytes(salt, sizeof(salt)) != 1) return absl::InternalError("no randomness for a bundle's salt");
  header.set_salt(salt, sizeof(salt));
  hamlet::v1::SealedBundle sealed;
  sealed.set_header(header.SerializeAsString());
  HAMLET_ASSIGN_OR_RETURN(std::unique_ptr<Sealer> sealer, BundleSealer(secret, header, sealed.header()));
  HAMLET_ASSIGN_OR_RETURN(*sealed.mutable_sealed(),
                          sealer->Seal(content.SerializeAsString(), absl::StrCat(kMagic, sealed.header())));
  return absl::StrCat(kMagic, sealed.SerializeAsString());
}

absl::StatusOr<hamlet::v1::BundleHeader> ReadBundleHeader(absl::string_view bundle) {
  HAMLET_ASSIGN_OR_RETURN(Parsed parsed, Parse(bundle));
  return parsed.header;
}

absl::StatusOr<hamlet::v1::BundleContent> OpenBundle(absl::string_view bundle, absl::string_view secret) {
  HAMLET_ASSIGN_OR_RETURN(Parsed parsed, Parse(bundle));
  HAMLET_ASSIGN_OR_RETURN(std::unique_ptr<Sealer> sealer, BundleSealer(secret, parsed.header, parsed.sealed.header()));
  const std::string refused = absl::StrCat(
      "the bundle of device ", parsed.header.device_id(),
      " does not open with that device's enrolment: a byte of it was changed (damaged or tampered with), or it was "
      "sealed for another enrolment (the device was enrolled again after writing it, or it is another server's)");
  absl::StatusOr<std::string> plain =
      sealer->Open(parsed.sealed.sealed(), absl::StrCat(kMagic, parsed.sealed.header()));
  if (!plain.ok()) return absl::DataLossError(refused);
  hamlet::v1::BundleContent content;
  if (!content.ParseFromString(*plain)) return absl::DataLossError("the bundle opened but its content does not parse");
  return content;
}

absl::StatusOr<std::string> ReadBundleFile(const std::string& path) {
  constexpr uintmax_t kMaxBytes = uintmax_t{256} << 20;
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (status.type() == std::filesystem::file_type::not_found)
    return absl::NotFoundError(absl::StrCat("no file ", path));
  if (!error && status.type() != std::filesystem::file_type::regular) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file, so not a bundle"));
  }
  if (const uintmax_t size = std::filesystem::file_size(path, error); !error && size > kMaxBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds ", size, " bytes; no bundle is over ", kMaxBytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    if (error == ENOENT) return absl::NotFoundError(absl::StrCat("no file ", path));
    return absl::UnavailableError(absl::StrCat("cannot read ", path, ": ", std::strerror(error)));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::UnavailableError(absl::StrCat("cannot read ", path));
  return buffer.str();
}

}  // namespace hamlet::storage
