#include "storage/sealing.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace hamlet::storage {
namespace {

constexpr size_t kKeyIdSize = 8;
constexpr size_t kNonceSize = 12;
constexpr size_t kTagSize = 16;

std::string KeyIdOf(const std::string& key) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), digest);
  return std::string(reinterpret_cast<const char*>(digest), kKeyIdSize);
}

struct CipherContext {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~CipherContext() { EVP_CIPHER_CTX_free(ctx); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Sealer>> Sealer::Create(const std::string& current_key,
                                                       const std::vector<std::string>& old_keys) {
  std::unique_ptr<Sealer> sealer(new Sealer());
  for (const std::string& key : old_keys) {
    if (key.size() != 32) return absl::InvalidArgumentError("a sealing key is 32 bytes");
    sealer->keys_[KeyIdOf(key)] = key;
  }
  if (current_key.size() != 32) return absl::InvalidArgumentError("a sealing key is 32 bytes");
  sealer->current_id_ = KeyIdOf(current_key);
  sealer->keys_[sealer->current_id_] = current_key;
  return sealer;
}

absl::StatusOr<std::string> Sealer::ReadKeyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("cannot read sealing key file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string content = buffer.str();
  if (content.size() == 32) return content;
  const std::string hex(absl::StripAsciiWhitespace(content));
  if (hex.size() == 64 && std::all_of(hex.begin(), hex.end(), [](unsigned char c) { return std::isxdigit(c); })) {
    return absl::HexStringToBytes(hex);
  }
  return absl::FailedPreconditionError(absl::StrCat("sealing key file ", path,
                                                    " must hold 32 raw bytes or 64 hex digits (e.g. from "
                                                    "`openssl rand -hex 32`)"));
}

absl::StatusOr<std::string> Sealer::Seal(absl::string_view plaintext, absl::string_view aad) const {
  const std::string& key = keys_.at(current_id_);
  std::string out = current_id_;
  unsigned char nonce[kNonceSize];
  if (RAND_bytes(nonce, sizeof(nonce)) != 1) return absl::InternalError("no randomness for a nonce");
  out.append(reinterpret_cast<const char*>(nonce), sizeof(nonce));
  CipherContext c;
  int len = 0;
  std::string ciphertext(plaintext.size(), '\0');
  unsigned char tag[kTagSize];
  if (c.ctx == nullptr ||
      EVP_EncryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, reinterpret_cast<const unsigned char*>(key.data()),
                         nonce) != 1 ||
      EVP_EncryptUpdate(c.ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(c.ctx, reinterpret_cast<unsigned char*>(ciphertext.data()), &len,
                        reinterpret_cast<const unsigned char*>(plaintext.data()),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(c.ctx, reinterpret_cast<unsigned char*>(ciphertext.data()) + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_GET_TAG, kTagSize, tag) != 1) {
    return absl::InternalError("sealing failed");
  }
  out.append(ciphertext);
  out.append(reinterpret_cast<const char*>(tag), sizeof(tag));
  return out;
}

absl::StatusOr<std::string> Sealer::Open(absl::string_view sealed, absl::string_view aad) const {
  if (sealed.size() < kKeyIdSize + kNonceSize + kTagSize) {
    return absl::DataLossError("sealed value is cut short");
  }
  const std::string key_id(sealed.substr(0, kKeyIdSize));
  auto key = keys_.find(key_id);
  if (key == keys_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("value is sealed under key ", absl::BytesToHexString(key_id),
                                                      ", which this server was not given (--sealed_key_file, "
                                                      "--old_sealed_key_files)"));
  }
  const absl::string_view nonce = sealed.substr(kKeyIdSize, kNonceSize);
  const absl::string_view ciphertext =
      sealed.substr(kKeyIdSize + kNonceSize, sealed.size() - kKeyIdSize - kNonceSize - kTagSize);
  std::string tag(sealed.substr(sealed.size() - kTagSize));
  std::string plaintext(ciphertext.size(), '\0');
  CipherContext c;
  int len = 0;
  if (c.ctx == nullptr ||
      EVP_DecryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, reinterpret_cast<const unsigned char*>(key->second.data()),
                         reinterpret_cast<const unsigned char*>(nonce.data())) != 1 ||
      EVP_DecryptUpdate(c.ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(c.ctx, reinterpret_cast<unsigned char*>(plaintext.data()), &len,
                        reinterpret_cast<const unsigned char*>(ciphertext.data()),
                        static_cast<int>(ciphertext.size())) != 1 ||
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_TAG, kTagSize, tag.data()) != 1) {
    return absl::InternalError("opening a sealed value failed");
  }
  if (EVP_DecryptFinal_ex(c.ctx, reinterpret_cast<unsigned char*>(plaintext.data()) + len, &len) != 1) {
    return absl::DataLossError("sealed value failed authentication: it was altered or damaged");
  }
  return plaintext;
}

std::string Sealer::current_key_id() const { return absl::BytesToHexString(current_id_); }

bool Sealer::IsCurrent(absl::string_view sealed) const {
  return sealed.size() >= kKeyIdSize && sealed.substr(0, kKeyIdSize) == current_id_;
}

}  // namespace hamlet::storage
