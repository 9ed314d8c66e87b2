#include "crypto/key_wrap.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "testing/test_util.h"

namespace vmseal::crypto {
namespace {

using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::SourceDir;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

constexpr std::string_view kAd = "image:ubuntu-22.04;tenant:acme;v1";

std::string TestData(const std::string& name) {
  return SourceDir() + "/tests/testdata/wrap/" + name;
}
nlohmann::json Vector(const std::string& name) {
  return nlohmann::json::parse(ReadFileOrDie(TestData(name)));
}
Bytes Hex(const std::string& hex) {
  auto b = HexDecode(hex);
  EXPECT_OK(b);
  return b.ok() ? *b : Bytes{};
}
SecretBytes SecretHex(const std::string& hex) { return SecretBytes(Hex(hex)); }
SecretBytes Secret(const std::string& s) { return SecretBytes(AsBytes(s)); }

// Keys are slow to generate: one per type for the whole suite.
const PrivateKey& Rsa2048() {
  static PrivateKey* k = new PrivateKey(*PrivateKey::Generate(KeyType::kRsa2048));
  return *k;
}
const PrivateKey& Rsa3072() {
  static PrivateKey* k =
      new PrivateKey(*PrivateKey::FromPem(Secret(ReadFileOrDie(TestData("rsa3072.pem")))));
  return *k;
}
const PrivateKey& X25519Key() {
  static PrivateKey* k = new PrivateKey(*PrivateKey::Generate(KeyType::kX25519));
  return *k;
}

// ---------------------------------------------------------------- RSA-OAEP

struct RsaCase {
  const char* name;
  const PrivateKey& (*key)();
  OaepLabel label;
};

class RsaOaepTest : public ::testing::TestWithParam<RsaCase> {};

TEST_P(RsaOaepTest, WrapThenUnwrapReturnsTheKey) {
  const PrivateKey& key = GetParam().key();
  SecretBytes data_key = SecretBytes::Random(kDataKeyBytes);
  auto wrapped = RsaOaepWrap(key.Public(), data_key, kAd, GetParam().label);
  ASSERT_OK(wrapped);
  EXPECT_EQ(wrapped->size(), static_cast<size_t>(EVP_PKEY_get_size(key.pkey())));
  auto unwrapped = RsaOaepUnwrap(key, *wrapped, kAd, GetParam().label);
  ASSERT_OK(unwrapped);
  EXPECT_TRUE(unwrapped->Equals(data_key));
}

TEST_P(RsaOaepTest, WrongAssociatedDataFails) {
  const PrivateKey& key = GetParam().key();
  auto wrapped = RsaOaepWrap(key.Public(), SecretBytes::Random(32), kAd, GetParam().label);
  ASSERT_OK(wrapped);
  auto r = RsaOaepUnwrap(key, *wrapped, "image:other;tenant:acme;v1", GetParam().label);
  EXPECT_STATUS(r, StatusCode::kDataLoss, "decryption failed");
  EXPECT_EQ(r.status().message(), "decryption failed");
}

TEST_P(RsaOaepTest, EveryTamperedByteFails) {
  const PrivateKey& key = GetParam().key();
  auto wrapped = RsaOaepWrap(key.Public(), SecretBytes::Random(32), kAd, GetParam().label);
  ASSERT_OK(wrapped);
  for (size_t i = 0; i < wrapped->size(); i += 17) {
    SCOPED_TRACE(i);
    Bytes bad = *wrapped;
    bad[i] ^= 0x01;
    EXPECT_STATUS(RsaOaepUnwrap(key, bad, kAd, GetParam().label), StatusCode::kDataLoss,
                  "decryption failed");
  }
}

INSTANTIATE_TEST_SUITE_P(
    KeysAndLabels, RsaOaepTest,
    ::testing::Values(RsaCase{"rsa2048_plain", Rsa2048, OaepLabel::kPlain},
                      RsaCase{"rsa2048_tpm", Rsa2048, OaepLabel::kTpm},
                      RsaCase{"rsa3072_plain", Rsa3072, OaepLabel::kPlain},
                      RsaCase{"rsa3072_tpm", Rsa3072, OaepLabel::kTpm}),
    [](const auto& p) { return std::string(p.param.name); });

TEST(RsaOaepKat, DecryptsVectorWithPlainLabel) {
  auto v = Vector("rsa_oaep_sha256.json");
  auto key = RsaOaepUnwrap(Rsa3072(), Hex(v["wrapped_plain_label"]),
                           v["associated_data"].get<std::string>(), OaepLabel::kPlain);
  ASSERT_OK(key);
  EXPECT_EQ(HexEncode(key->UnsafeSpan()), v["data_key"].get<std::string>());
}

TEST(RsaOaepKat, DecryptsVectorWithTpmLabel) {
  auto v = Vector("rsa_oaep_sha256.json");
  auto key = RsaOaepUnwrap(Rsa3072(), Hex(v["wrapped_tpm_label"]),
                           v["associated_data"].get<std::string>(), OaepLabel::kTpm);
  ASSERT_OK(key);
  EXPECT_EQ(HexEncode(key->UnsafeSpan()), v["data_key"].get<std::string>());
}

TEST(RsaOaepKat, TpmLabelVectorDoesNotOpenAsPlainLabel) {
  auto v = Vector("rsa_oaep_sha256.json");
  EXPECT_STATUS(RsaOaepUnwrap(Rsa3072(), Hex(v["wrapped_tpm_label"]),
                              v["associated_data"].get<std::string>(), OaepLabel::kPlain),
                StatusCode::kDataLoss, "decryption failed");
}

TEST(RsaOaepTest, WrongKeyFails) {
  auto wrapped = RsaOaepWrap(Rsa2048().Public(), SecretBytes::Random(32), kAd);
  ASSERT_OK(wrapped);
  auto other = PrivateKey::Generate(KeyType::kRsa2048);
  ASSERT_OK(other);
  EXPECT_STATUS(RsaOaepUnwrap(*other, *wrapped, kAd), StatusCode::kDataLoss,
                "decryption failed");
}

TEST(RsaOaepTest, WrongLengthIsInvalidArgument) {
  Bytes short_ct(255, 0x42);
  EXPECT_STATUS(RsaOaepUnwrap(Rsa2048(), short_ct, kAd), StatusCode::kInvalidArgument,
                "wrapped key is 255 bytes, want 256");
}

TEST(RsaOaepTest, EmptyAssociatedDataIsRejected) {
  EXPECT_STATUS(RsaOaepWrap(Rsa2048().Public(), SecretBytes::Random(32), ""),
                StatusCode::kInvalidArgument, "associated data must not be empty");
  Bytes ct(256, 1);
  EXPECT_STATUS(RsaOaepUnwrap(Rsa2048(), ct, ""), StatusCode::kInvalidArgument,
                "associated data must not be empty");
}

TEST(RsaOaepTest, TpmLabelRejectsZeroByteInAssociatedData) {
  EXPECT_STATUS(RsaOaepWrap(Rsa2048().Public(), SecretBytes::Random(32),
                            std::string_view("a\0b", 3), OaepLabel::kTpm),
                StatusCode::kInvalidArgument, "must not contain a zero byte");
}

TEST(RsaOaepTest, DataKeyOfWrongSizeIsRejected) {
  EXPECT_STATUS(RsaOaepWrap(Rsa2048().Public(), SecretBytes::Random(31), kAd),
                StatusCode::kInvalidArgument, "data key must be 32 bytes");
}

TEST(RsaOaepTest, X25519KeyIsRejected) {
  EXPECT_STATUS(RsaOaepWrap(X25519Key().Public(), SecretBytes::Random(32), kAd),
                StatusCode::kInvalidArgument, "needs an RSA key");
}

TEST(RsaOaepTest, WrapsToKeyBuiltFromModulusLikeATpmBindingKey) {
  BIGNUM* n = nullptr;
  ASSERT_EQ(EVP_PKEY_get_bn_param(Rsa2048().pkey(), "n", &n), 1);
  BignumPtr owned(n);
  Bytes modulus(256);
  ASSERT_EQ(BN_bn2binpad(n, modulus.data(), 256), 256);
  auto pub = PublicKey::FromRsaModulus(modulus, 65537);
  ASSERT_OK(pub);
  SecretBytes data_key = SecretBytes::Random(32);
  auto wrapped = RsaOaepWrap(*pub, data_key, "vmkey", OaepLabel::kTpm);
  ASSERT_OK(wrapped);
  auto unwrapped = RsaOaepUnwrap(Rsa2048(), *wrapped, "vmkey", OaepLabel::kTpm);
  ASSERT_OK(unwrapped);
  EXPECT_TRUE(unwrapped->Equals(data_key));
}

// The openssl command line is an independent OAEP implementation.
std::vector<std::string> PkeyutlOaep(const std::string& label_hex) {
  return {"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
          "-pkeyopt", "rsa_mgf1_md:sha256",    "-pkeyopt", "rsa_oaep_label:" + label_hex};
}

std::string LabelHex(OaepLabel mode) {
  std::string hex = HexEncode(AsBytes(kAd));
  return mode == OaepLabel::kTpm ? hex + "00" : hex;
}

class OpensslCliInteropTest : public ::testing::TestWithParam<OaepLabel> {};

TEST_P(OpensslCliInteropTest, OpensslCliEncryptsAndWeUnwrap) {
  TempDir tmp;
  SecretBytes data_key = SecretBytes::Random(32);
  WriteFileOrDie(tmp.File("key.bin"), std::string(AsStringView(data_key.UnsafeSpan())));
  std::vector<std::string> argv = {"openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey",
                                   TestData("rsa3072.pub.pem"), "-in", tmp.File("key.bin"),
                                   "-out", tmp.File("wrapped.bin")};
  for (auto& a : PkeyutlOaep(LabelHex(GetParam()))) argv.push_back(a);
  std::string out;
  ASSERT_EQ(RunCommand(argv, &out), 0) << out;
  std::string wrapped = ReadFileOrDie(tmp.File("wrapped.bin"));
  auto unwrapped = RsaOaepUnwrap(Rsa3072(), AsBytes(wrapped), kAd, GetParam());
  ASSERT_OK(unwrapped);
  EXPECT_TRUE(unwrapped->Equals(data_key));
}

TEST_P(OpensslCliInteropTest, WeWrapAndOpensslCliDecrypts) {
  TempDir tmp;
  SecretBytes data_key = SecretBytes::Random(32);
  auto wrapped = RsaOaepWrap(Rsa3072().Public(), data_key, kAd, GetParam());
  ASSERT_OK(wrapped);
  WriteFileOrDie(tmp.File("wrapped.bin"), std::string(AsStringView(*wrapped)));
  std::vector<std::string> argv = {"openssl", "pkeyutl", "-decrypt", "-inkey",
                                   TestData("rsa3072.pem"), "-in", tmp.File("wrapped.bin"),
                                   "-out", tmp.File("key.bin")};
  for (auto& a : PkeyutlOaep(LabelHex(GetParam()))) argv.push_back(a);
  std::string out;
  ASSERT_EQ(RunCommand(argv, &out), 0) << out;
  EXPECT_EQ(HexEncode(AsBytes(ReadFileOrDie(tmp.File("key.bin")))),
            HexEncode(data_key.UnsafeSpan()));
}

TEST_P(OpensslCliInteropTest, OpensslCliRejectsOurCiphertextUnderAnotherLabel) {
  TempDir tmp;
  auto wrapped = RsaOaepWrap(Rsa3072().Public(), SecretBytes::Random(32), kAd, GetParam());
  ASSERT_OK(wrapped);
  WriteFileOrDie(tmp.File("wrapped.bin"), std::string(AsStringView(*wrapped)));
  std::vector<std::string> argv = {"openssl", "pkeyutl", "-decrypt", "-inkey",
                                   TestData("rsa3072.pem"), "-in", tmp.File("wrapped.bin"),
                                   "-out", tmp.File("key.bin")};
  for (auto& a : PkeyutlOaep("6f74686572")) argv.push_back(a);
  std::string out;
  EXPECT_NE(RunCommand(argv, &out), 0) << out;
}

INSTANTIATE_TEST_SUITE_P(Labels, OpensslCliInteropTest,
                         ::testing::Values(OaepLabel::kPlain, OaepLabel::kTpm),
                         [](const auto& p) {
                           return p.param == OaepLabel::kTpm ? "tpm" : "plain";
                         });

// ------------------------------------------------------------------- X25519

TEST(X25519Kat, WrapMatchesVectorWithIntermediateValues) {
  auto v = Vector("x25519_wrap.json");
  auto rcpt = PrivateKey::FromRawX25519(SecretHex(v["recipient_private"]));
  ASSERT_OK(rcpt);
  EXPECT_EQ(HexEncode(rcpt->Public().RawX25519()), v["recipient_public"].get<std::string>());
  auto wrapped = X25519WrapForTesting(rcpt->Public(), SecretHex(v["data_key"]),
                                      v["associated_data"].get<std::string>(),
                                      SecretHex(v["ephemeral_private"]), Hex(v["nonce"]));
  ASSERT_OK(wrapped);
  EXPECT_EQ(HexEncode(*wrapped), v["wrapped"].get<std::string>());
}

TEST(X25519Kat, UnwrapOfVectorReturnsDataKey) {
  auto v = Vector("x25519_wrap.json");
  auto rcpt = PrivateKey::FromRawX25519(SecretHex(v["recipient_private"]));
  ASSERT_OK(rcpt);
  auto key = X25519Unwrap(*rcpt, Hex(v["wrapped"]), v["associated_data"].get<std::string>());
  ASSERT_OK(key);
  EXPECT_EQ(HexEncode(key->UnsafeSpan()), v["data_key"].get<std::string>());
}

TEST(X25519Kat, DerivedKeyMatchesVector) {
  auto v = Vector("x25519_wrap.json");
  auto key = HkdfSha256(SecretHex(v["shared_secret"]), Hex(v["hkdf_salt"]),
                        Hex(v["hkdf_info"]), 32);
  ASSERT_OK(key);
  EXPECT_EQ(HexEncode(key->UnsafeSpan()), v["wrap_key"].get<std::string>());
  std::string info(kX25519WrapInfoPrefix);
  info += v["associated_data"].get<std::string>();
  EXPECT_EQ(HexEncode(AsBytes(info)), v["hkdf_info"].get<std::string>());
}

TEST(X25519Test, WrapThenUnwrapReturnsTheKey) {
  SecretBytes data_key = SecretBytes::Random(32);
  auto wrapped = X25519Wrap(X25519Key().Public(), data_key, kAd);
  ASSERT_OK(wrapped);
  EXPECT_EQ(wrapped->size(), kX25519WrappedBytes);
  EXPECT_EQ((*wrapped)[0], kX25519WrapVersion);
  auto unwrapped = X25519Unwrap(X25519Key(), *wrapped, kAd);
  ASSERT_OK(unwrapped);
  EXPECT_TRUE(unwrapped->Equals(data_key));
}

TEST(X25519Test, TwoWrapsOfTheSameKeyDiffer) {
  SecretBytes data_key = SecretBytes::Random(32);
  auto a = X25519Wrap(X25519Key().Public(), data_key, kAd);
  auto b = X25519Wrap(X25519Key().Public(), data_key, kAd);
  ASSERT_OK(a);
  ASSERT_OK(b);
  EXPECT_NE(*a, *b);
}

TEST(X25519Test, WrongAssociatedDataFails) {
  auto wrapped = X25519Wrap(X25519Key().Public(), SecretBytes::Random(32), kAd);
  ASSERT_OK(wrapped);
  auto r = X25519Unwrap(X25519Key(), *wrapped, "image:other");
  EXPECT_STATUS(r, StatusCode::kDataLoss, "decryption failed");
  EXPECT_EQ(r.status().message(), "decryption failed");
}

TEST(X25519Test, WrongKeyFails) {
  auto wrapped = X25519Wrap(X25519Key().Public(), SecretBytes::Random(32), kAd);
  ASSERT_OK(wrapped);
  auto other = PrivateKey::Generate(KeyType::kX25519);
  ASSERT_OK(other);
  EXPECT_STATUS(X25519Unwrap(*other, *wrapped, kAd), StatusCode::kDataLoss, "decryption failed");
}

TEST(X25519Test, EveryTamperedByteFails) {
  auto wrapped = X25519Wrap(X25519Key().Public(), SecretBytes::Random(32), kAd);
  ASSERT_OK(wrapped);
  for (size_t i = 0; i < wrapped->size(); ++i) {
    SCOPED_TRACE(i);
    Bytes bad = *wrapped;
    bad[i] ^= 0x80;
    // The version byte is checked before any key is used.
    StatusCode want = i == 0 ? StatusCode::kInvalidArgument : StatusCode::kDataLoss;
    EXPECT_STATUS(X25519Unwrap(X25519Key(), bad, kAd), want,
                  i == 0 ? "unsupported X25519 wrap version" : "decryption failed");
  }
}

TEST(X25519Test, TruncatedAndExtendedInputsAreInvalid) {
  auto wrapped = X25519Wrap(X25519Key().Public(), SecretBytes::Random(32), kAd);
  ASSERT_OK(wrapped);
  Bytes shorter(wrapped->begin(), wrapped->end() - 1);
  EXPECT_STATUS(X25519Unwrap(X25519Key(), shorter, kAd), StatusCode::kInvalidArgument,
                "wrapped key is 92 bytes, want 93");
  Bytes longer = *wrapped;
  longer.push_back(0);
  EXPECT_STATUS(X25519Unwrap(X25519Key(), longer, kAd), StatusCode::kInvalidArgument,
                "want 93");
}

TEST(X25519Test, LowOrderEphemeralPointFails) {
  auto wrapped = X25519Wrap(X25519Key().Public(), SecretBytes::Random(32), kAd);
  ASSERT_OK(wrapped);
  Bytes bad = *wrapped;
  std::fill(bad.begin() + 1, bad.begin() + 33, 0);  // the point 0 (order 4)
  EXPECT_STATUS(X25519Unwrap(X25519Key(), bad, kAd), StatusCode::kDataLoss, "decryption failed");
}

TEST(X25519Test, EmptyAssociatedDataIsRejected) {
  EXPECT_STATUS(X25519Wrap(X25519Key().Public(), SecretBytes::Random(32), ""),
                StatusCode::kInvalidArgument, "associated data must not be empty");
  Bytes ct(kX25519WrappedBytes, 1);
  EXPECT_STATUS(X25519Unwrap(X25519Key(), ct, ""), StatusCode::kInvalidArgument,
                "associated data must not be empty");
}

TEST(X25519Test, RsaKeyIsRejected) {
  Bytes ct(kX25519WrappedBytes, 1);
  EXPECT_STATUS(X25519Unwrap(Rsa2048(), ct, kAd), StatusCode::kInvalidArgument,
                "needs an X25519 key");
}

// Accumulated randomized test: many random keys/ADs, every one must round
// trip and fail under a one-byte change of the associated data.
TEST(X25519Test, RandomizedRoundTripsAccumulate) {
  Sha256Hasher acc;
  for (int i = 0; i < 64; ++i) {
    SecretBytes data_key = SecretBytes::Random(32);
    std::string ad = "image:" + HexEncode(RandomBytes(1 + i % 16));
    auto wrapped = X25519Wrap(X25519Key().Public(), data_key, ad);
    ASSERT_OK(wrapped);
    auto unwrapped = X25519Unwrap(X25519Key(), *wrapped, ad);
    ASSERT_OK(unwrapped);
    ASSERT_TRUE(unwrapped->Equals(data_key));
    ad.back() ^= 1;
    ASSERT_FALSE(X25519Unwrap(X25519Key(), *wrapped, ad).ok());
    acc.Update(*wrapped);
  }
  (void)acc.Finish();
}

// ----------------------------------------------------------------- dispatch

TEST(WrapKeyTest, DispatchesOnKeyType) {
  for (const PrivateKey* key : {&Rsa2048(), &X25519Key()}) {
    SecretBytes data_key = SecretBytes::Random(32);
    auto wrapped = WrapKey(key->Public(), data_key, kAd);
    ASSERT_OK(wrapped);
    auto unwrapped = UnwrapKey(*key, *wrapped, kAd);
    ASSERT_OK(unwrapped);
    EXPECT_TRUE(unwrapped->Equals(data_key));
  }
}

TEST(WrapKeyTest, EcKeyCannotWrap) {
  auto ec = PrivateKey::Generate(KeyType::kEcP256);
  ASSERT_OK(ec);
  EXPECT_STATUS(WrapKey(ec->Public(), SecretBytes::Random(32), kAd),
                StatusCode::kInvalidArgument, "cannot wrap keys");
}

// --------------------------------------------------------------------- Aead

std::unique_ptr<Aead> NewAead() {
  auto aead = Aead::Create(SecretBytes::Random(Aead::kKeyBytes));
  EXPECT_OK(aead);
  return std::move(aead).value();
}

TEST(AeadTest, EncryptThenDecryptRoundTrips) {
  auto aead = NewAead();
  SecretBytes pt = Secret("-----BEGIN PRIVATE KEY-----\n...");
  auto ct = aead->Encrypt(pt, "key:abc;customer:acme");
  ASSERT_OK(ct);
  EXPECT_EQ(ct->size(), pt.size() + Aead::kOverheadBytes);
  auto back = aead->Decrypt(*ct, "key:abc;customer:acme");
  ASSERT_OK(back);
  EXPECT_TRUE(back->Equals(pt));
}

TEST(AeadTest, EmptyPlaintextRoundTrips) {
  auto aead = NewAead();
  auto ct = aead->Encrypt(Bytes{}, "ad");
  ASSERT_OK(ct);
  auto back = aead->Decrypt(*ct, "ad");
  ASSERT_OK(back);
  EXPECT_TRUE(back->empty());
}

TEST(AeadTest, NoncesDifferBetweenCalls) {
  auto aead = NewAead();
  std::set<Bytes> nonces;
  for (int i = 0; i < 32; ++i) {
    auto ct = aead->Encrypt(AsBytes("x"), "ad");
    ASSERT_OK(ct);
    nonces.insert(Bytes(ct->begin(), ct->begin() + kGcmNonceBytes));
  }
  EXPECT_EQ(nonces.size(), 32u);
}

TEST(AeadTest, WrongAssociatedDataFails) {
  auto aead = NewAead();
  auto ct = aead->Encrypt(AsBytes("secret"), "key:abc;customer:acme");
  ASSERT_OK(ct);
  auto r = aead->Decrypt(*ct, "key:abc;customer:evil");
  EXPECT_STATUS(r, StatusCode::kDataLoss, "decryption failed");
  EXPECT_EQ(r.status().message(), "decryption failed");
}

TEST(AeadTest, WrongKeyFails) {
  auto ct = NewAead()->Encrypt(AsBytes("secret"), "ad");
  ASSERT_OK(ct);
  EXPECT_STATUS(NewAead()->Decrypt(*ct, "ad"), StatusCode::kDataLoss, "decryption failed");
}

TEST(AeadTest, EveryTamperedByteFails) {
  auto aead = NewAead();
  auto ct = aead->Encrypt(AsBytes("some secret text"), "ad");
  ASSERT_OK(ct);
  for (size_t i = 0; i < ct->size(); ++i) {
    SCOPED_TRACE(i);
    Bytes bad = *ct;
    bad[i] ^= 0x01;
    EXPECT_STATUS(aead->Decrypt(bad, "ad"), StatusCode::kDataLoss, "decryption failed");
  }
}

TEST(AeadTest, ShortCiphertextIsInvalidArgument) {
  EXPECT_STATUS(NewAead()->Decrypt(Bytes(27, 0), "ad"), StatusCode::kInvalidArgument,
                "shorter than 28 bytes");
}

TEST(AeadTest, EmptyAssociatedDataIsRejected) {
  auto aead = NewAead();
  EXPECT_STATUS(aead->Encrypt(AsBytes("x"), ""), StatusCode::kInvalidArgument,
                "associated data must not be empty");
  EXPECT_STATUS(aead->Decrypt(Bytes(40, 0), ""), StatusCode::kInvalidArgument,
                "associated data must not be empty");
}

TEST(AeadTest, WrongKeySizeIsRejected) {
  EXPECT_STATUS(Aead::Create(SecretBytes::Random(16)), StatusCode::kInvalidArgument,
                "must be 32 bytes");
}

// AES-256-GCM through the openssl command line is not available (enc has no
// AEAD), so cross-check against pyca/cryptography's vector instead: the
// X25519 vector's ciphertext is a plain AES-256-GCM of the data key.
TEST(AeadTest, GcmLayerMatchesIndependentVector) {
  auto v = Vector("x25519_wrap.json");
  auto aead = Aead::Create(SecretHex(v["wrap_key"]));
  ASSERT_OK(aead);
  Bytes ct = Hex(v["nonce"]);
  Bytes sealed = Hex(v["ciphertext_and_tag"]);
  ct.insert(ct.end(), sealed.begin(), sealed.end());
  auto pt = (*aead)->Decrypt(ct, v["associated_data"].get<std::string>());
  ASSERT_OK(pt);
  EXPECT_EQ(HexEncode(pt->UnsafeSpan()), v["data_key"].get<std::string>());
}

}  // namespace
}  // namespace vmseal::crypto
