#include "storage/bundle.h"

#include <gtest/gtest.h>

#include "tests/support/status_matchers.h"

namespace hamlet::storage {
namespace {

using hamlet::testing::StatusIs;

constexpr char kDevice[] = "6f1c2a9e-3b7d-4c55-8e21-0a9b8c7d6e5f";
constexpr char kCanary[] = "CANARY-Lê-Văn-Báo-Tin-42";

hamlet::v1::BundleContent ContentWithCanary() {
  hamlet::v1::BundleContent content;
  content.mutable_export_time()->set_seconds(1796000000);
  hamlet::v1::PushRequest* push = content.add_pushes();
  push->set_device_id(kDevice);
  push->set_batch_id("0d7e8f90-1a2b-4c3d-8e4f-5a6b7c8d9e0f");
  hamlet::v1::Record* change = push->add_changes();
  change->set_id("11111111-2222-4333-8444-555555555555");
  change->mutable_informant_identity()->set_name(kCanary);
  return content;
}

std::string SecretOf(const std::string& token) {
  absl::StatusOr<std::string> secret = BundleSecretOfToken(token);
  EXPECT_TRUE(secret.ok()) << secret.status();
  return secret.value_or("");
}

TEST(BundleTest, OpensWithTheSecretOfItsDeviceOnlyAndHidesWhatItCarries) {
  const std::string secret = SecretOf("hmt_token-of-the-device");
  absl::StatusOr<std::string> bundle =
      SealBundle(hamlet::v1::BUNDLE_DIRECTION_TO_SERVER, kDevice, ContentWithCanary(), secret);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ(bundle->find(kCanary), std::string::npos);

  absl::StatusOr<hamlet::v1::BundleHeader> header = ReadBundleHeader(*bundle);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->device_id(), kDevice);
  EXPECT_EQ(header->direction(), hamlet::v1::BUNDLE_DIRECTION_TO_SERVER);

  absl::StatusOr<hamlet::v1::BundleContent> opened = OpenBundle(*bundle, secret);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->SerializeAsString(), ContentWithCanary().SerializeAsString());

  // Another device's secret, or this device's after it was enrolled again
  // (a new token), does not open it.
  EXPECT_THAT(OpenBundle(*bundle, SecretOf("hmt_token-of-another-device")), StatusIs(absl::StatusCode::kDataLoss));
  // Two bundles of the same content differ: each has its own key and nonce.
  EXPECT_NE(*bundle, *SealBundle(hamlet::v1::BUNDLE_DIRECTION_TO_SERVER, kDevice, ContentWithCanary(), secret));
}

TEST(BundleTest, EveryChangedByteIsRefusedNeverOpenedAsSomethingElse) {
  const std::string secret = SecretOf("hmt_token-of-the-device");
  const std::string bundle = *SealBundle(hamlet::v1::BUNDLE_DIRECTION_TO_SERVER, kDevice, ContentWithCanary(), secret);
  for (size_t i = 0; i < bundle.size(); ++i) {
    for (const unsigned char flip : {0x01, 0x80}) {
      std::string changed = bundle;
      changed[i] = static_cast<char>(static_cast<unsigned char>(changed[i]) ^ flip);
      absl::StatusOr<hamlet::v1::BundleContent> opened = OpenBundle(changed, secret);
      // Refused as damaged (DATA_LOSS), or, where the change hits the magic
      // or makes the header claim a later version, as not a bundle this
      // program reads (INVALID_ARGUMENT); never opened.
      EXPECT_THAT(opened.status().code(),
                  ::testing::AnyOf(absl::StatusCode::kDataLoss, absl::StatusCode::kInvalidArgument))
          << "byte " << i;
    }
  }
  // Cut short anywhere: refused too.
  for (size_t size = 0; size < bundle.size(); ++size) {
    EXPECT_THAT(OpenBundle(bundle.substr(0, size), secret),
                StatusIs(size < 8 ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kDataLoss))
        << "cut to " << size << " bytes";
  }
}

TEST(BundleTest, AHeaderChangedToNameAnotherDeviceOrDirectionDoesNotOpen) {
  const std::string secret = SecretOf("hmt_token-of-the-device");
  const std::string bundle = *SealBundle(hamlet::v1::BUNDLE_DIRECTION_TO_SERVER, kDevice, ContentWithCanary(), secret);
  hamlet::v1::SealedBundle sealed;
  ASSERT_TRUE(sealed.ParseFromString(bundle.substr(8)));
  hamlet::v1::BundleHeader header;
  ASSERT_TRUE(header.ParseFromString(sealed.header()));

  hamlet::v1::BundleHeader other_device = header;
  other_device.set_device_id("00000000-0000-4000-8000-000000000001");
  hamlet::v1::BundleHeader other_way = header;
  other_way.set_direction(hamlet::v1::BUNDLE_DIRECTION_TO_DEVICE);
  for (const hamlet::v1::BundleHeader& forged : {other_device, other_way}) {
    hamlet::v1::SealedBundle moved = sealed;
    moved.set_header(forged.SerializeAsString());
    EXPECT_THAT(OpenBundle("HAMLETB1" + moved.SerializeAsString(), secret), StatusIs(absl::StatusCode::kDataLoss));
  }
}

TEST(BundleTest, WhatIsNotABundleIsSaidSo) {
  EXPECT_THAT(ReadBundleHeader(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ReadBundleHeader("PK\x03\x04 a zip file"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(OpenBundle("HAMLETB1", std::string(32, 's')), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(BundleTest, SecretsAreThirtyTwoBytesFixedByTheTokenAndDifferentForEachToken) {
  EXPECT_EQ(SecretOf("hmt_a").size(), 32u);
  EXPECT_EQ(SecretOf("hmt_a"), SecretOf("hmt_a"));
  EXPECT_NE(SecretOf("hmt_a"), SecretOf("hmt_b"));
  EXPECT_THAT(BundleSecretOfToken(""), StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace hamlet::storage
