#ifndef HAMLET_STORAGE_BUNDLE_H_
#define HAMLET_STORAGE_BUNDLE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hamlet/v1/bundle.pb.h"

namespace hamlet::storage {

// Bundle files: sync carried by hand (hamlet/v1/bundle.proto; the key scheme
// is in docs/PROTOCOL.md, "Bundles").
//
//   bundle    := "HAMLETB1" SealedBundle
//   SealedBundle.header := BundleHeader (version 1, direction, device_id, salt:16)
//   SealedBundle.sealed := key_id:8 nonce:12 AES-256-GCM(BundleContent) tag:16
//   additional data     := "HAMLETB1" SealedBundle.header
//   key := HKDF-SHA256(ikm = the device's bundle secret, salt = header.salt,
//                      info = "hamlet bundle key v1" SealedBundle.header)
//
// The device's bundle secret is derived from its bearer token
// (BundleSecretOfToken): the device holds the token, and the server keeps the
// secret it derived when it issued the token. Each bundle has a key of its
// own (a fresh salt), so nonces never repeat under one key.

// The 32-byte bundle secret of a device whose bearer token is `token`:
// HKDF-SHA256(ikm = token, no salt, info = "hamlet bundle secret v1").
absl::StatusOr<std::string> BundleSecretOfToken(absl::string_view token);

// The bytes of a bundle holding `content`, for `device_id`, travelling
// `direction`, sealed with `secret` (32 bytes).
absl::StatusOr<std::string> SealBundle(hamlet::v1::BundleDirection direction, const std::string& device_id,
                                       const hamlet::v1::BundleContent& content, absl::string_view secret);

// The readable part of a bundle, to learn whose it is before opening it.
// INVALID_ARGUMENT if `bundle` is not a bundle file (or of a later version).
absl::StatusOr<hamlet::v1::BundleHeader> ReadBundleHeader(absl::string_view bundle);

// The content of `bundle`, opened with `secret`. INVALID_ARGUMENT if it is
// not a bundle; DATA_LOSS if it does not open with `secret` (a byte was
// changed, or it was sealed with another secret: another device's, or this
// device's before it was enrolled again).
absl::StatusOr<hamlet::v1::BundleContent> OpenBundle(absl::string_view bundle, absl::string_view secret);

// Reads a bundle file whole into memory. NOT_FOUND if it does not exist,
// INVALID_ARGUMENT if it is not a regular file or is over 256 MiB (no
// bundle is), UNAVAILABLE if it cannot be read.
absl::StatusOr<std::string> ReadBundleFile(const std::string& path);

}  // namespace hamlet::storage

#endif  // HAMLET_STORAGE_BUNDLE_H_
