#include "ovf/policy_document.h"

#include <gtest/gtest.h>

#include "crypto/signature.h"
#include "testing/test_util.h"

namespace vmseal::ovf {
namespace {

using nlohmann::json;
using ::vmseal::testing::ReadFileOrDie;

std::string Vector(const std::string& name) {
  return ReadFileOrDie(vmseal::testing::SourceDir() + "/tests/testdata/policy/" + name);
}

PolicyDocument Doc() {
  PolicyDocument d;
  d.tenant = "acme";
  d.image_id = "4f1c2a9e-7b3d-4c55-9a0e-2d6f8b1e3c70";
  d.version = 3;
  d.issued_at = "2026-12-06T02:00:00Z";
  d.policy = {{"flavors", {{"anyOf", {"good-boot"}}}}, {"required_tags", {"region=eu-west", "tier=gold"}}};
  return d;
}

// A document text with one member replaced by `raw` (its JSON text).
std::string WithMember(const std::string& name, const std::string& raw) {
  json j = json::parse(*SerializePolicyDocument(Doc()));
  j.erase(name);
  std::string s = j.dump();
  return s.substr(0, s.size() - 1) + ",\"" + name + "\":" + raw + "}";
}

crypto::PrivateKey NewP256() {
  auto k = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  EXPECT_OK(k);
  return *std::move(k);
}

TEST(PolicyDocumentTest, VectorSerializesToTheSignedBytes) {
  auto bytes = SerializePolicyDocument(Doc());
  ASSERT_OK(bytes);
  EXPECT_EQ(*bytes, Vector("document.json"));
}

TEST(PolicyDocumentTest, VectorSignedMessageIsPrefixZeroAndDocument) {
  const crypto::Bytes m = PolicyDocumentSignedMessage(Vector("document.json"));
  EXPECT_EQ(std::string(m.begin(), m.end()), Vector("signed-message.bin"));
}

TEST(PolicyDocumentTest, VectorSignatureVerifiesWithTheFixedKey) {
  auto pub = crypto::PublicKey::FromPem(Vector("signer.pub"));
  ASSERT_OK(pub);
  const std::string sig = Vector("signature.der");
  ASSERT_OK(VerifyPolicyDocumentSignature(Vector("document.json"), crypto::AsBytes(sig), *pub));
  auto parsed = ParsePolicyDocument(Vector("document.json"));
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->tenant, "acme");
  EXPECT_EQ(parsed->version, 3u);
  EXPECT_EQ(parsed->policy["required_tags"][1], "tier=gold");
}

TEST(PolicyDocumentTest, SignedByTheFixedKeyAgainVerifies) {
  auto key = crypto::PrivateKey::FromPem(SecretBytes(crypto::AsBytes(Vector("signer-key.pem"))));
  ASSERT_OK(key);
  auto sig = SignPolicyDocument(Vector("document.json"), *key);
  ASSERT_OK(sig);
  auto pub = crypto::PublicKey::FromPem(Vector("signer.pub"));
  ASSERT_OK(pub);
  EXPECT_OK(VerifyPolicyDocumentSignature(Vector("document.json"), *sig, *pub));
}

TEST(PolicyDocumentTest, OneChangedByteIsBadSignature) {
  auto pub = crypto::PublicKey::FromPem(Vector("signer.pub"));
  ASSERT_OK(pub);
  const std::string sig = Vector("signature.der");
  std::string doc = Vector("document.json");
  doc.replace(doc.find("\"version\":3"), 11, "\"version\":4");
  EXPECT_STATUS(VerifyPolicyDocumentSignature(doc, crypto::AsBytes(sig), *pub),
                StatusCode::kUnauthenticated, "bad_signature");
}

TEST(PolicyDocumentTest, AnotherKeyIsBadSignature) {
  const crypto::PrivateKey mine = NewP256();
  const crypto::PrivateKey other = NewP256();
  const std::string doc = *SerializePolicyDocument(Doc());
  auto sig = SignPolicyDocument(doc, other);
  ASSERT_OK(sig);
  EXPECT_STATUS(VerifyPolicyDocumentSignature(doc, *sig, mine.Public()), StatusCode::kUnauthenticated,
                "bad_signature");
  EXPECT_OK(VerifyPolicyDocumentSignature(doc, *sig, other.Public()));
}

TEST(PolicyDocumentTest, EmptyOrOversizedSignatureIsBadSignature) {
  const crypto::PrivateKey key = NewP256();
  const std::string doc = *SerializePolicyDocument(Doc());
  EXPECT_STATUS(VerifyPolicyDocumentSignature(doc, {}, key.Public()), StatusCode::kUnauthenticated,
                "bad_signature");
  crypto::Bytes big(kMaxPolicySignatureBytes + 1, 0x30);
  EXPECT_STATUS(VerifyPolicyDocumentSignature(doc, big, key.Public()), StatusCode::kUnauthenticated,
                "bad_signature");
}

TEST(PolicyDocumentTest, SigningNeedsAP256Key) {
  auto x = crypto::PrivateKey::Generate(crypto::KeyType::kX25519);
  ASSERT_OK(x);
  EXPECT_STATUS(SignPolicyDocument("{}", *x), StatusCode::kInvalidArgument, "P-256");
}

TEST(PolicyDocumentTest, ParseRoundTrips) {
  auto parsed = ParsePolicyDocument(*SerializePolicyDocument(Doc()));
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->image_id, Doc().image_id);
  EXPECT_EQ(parsed->issued_at, Doc().issued_at);
  EXPECT_EQ(parsed->policy, Doc().policy);
}

TEST(PolicyDocumentTest, VersionOutOfBoundsIsRefused) {
  struct Case {
    const char* raw;
    const char* why;
  };
  for (const Case& c : {Case{"0", "zero"}, Case{"-1", "negative"}, Case{"-9223372036854775808", "min"},
                        Case{"9007199254740992", "2^53"}, Case{"18446744073709551615", "2^64-1"},
                        Case{"18446744073709551616", "2^64"}, Case{"1e3", "exponent"},
                        Case{"3.0", "fraction"}, Case{"\"3\"", "string"}, Case{"null", "null"}}) {
    SCOPED_TRACE(c.why);
    EXPECT_STATUS(ParsePolicyDocument(WithMember("version", c.raw)), StatusCode::kInvalidArgument,
                  "malformed_policy_document: version");
  }
  auto top = ParsePolicyDocument(WithMember("version", "9007199254740991"));
  ASSERT_OK(top);
  EXPECT_EQ(top->version, kMaxPolicyDocumentVersion);
  PolicyDocument d = Doc();
  d.version = 0;
  EXPECT_STATUS(SerializePolicyDocument(d), StatusCode::kInvalidArgument, "version");
}

TEST(PolicyDocumentTest, BadJsonIsMalformed) {
  for (const char* text : {"", "{", "[]", "\"x\"", "{\"format\":", "nul", "{}"}) {
    SCOPED_TRACE(text);
    EXPECT_STATUS(ParsePolicyDocument(text), StatusCode::kInvalidArgument, "malformed_policy_document");
  }
}

TEST(PolicyDocumentTest, UnknownMissingOrDuplicateMembersAreRefused) {
  EXPECT_STATUS(ParsePolicyDocument(WithMember("extra", "1")), StatusCode::kInvalidArgument,
                "unknown member");
  json j = json::parse(*SerializePolicyDocument(Doc()));
  j.erase("issued_at");
  EXPECT_STATUS(ParsePolicyDocument(j.dump()), StatusCode::kInvalidArgument, "missing member");
  // A second "version" after the first: a lax reader would take either.
  std::string doc = *SerializePolicyDocument(Doc());
  doc = doc.substr(0, doc.size() - 1) + ",\"version\":4}";
  EXPECT_STATUS(ParsePolicyDocument(doc), StatusCode::kInvalidArgument, "twice");
  // Also inside the policy.
  EXPECT_STATUS(ParsePolicyDocument(WithMember("policy", R"({"flavors":{},"flavors":{}})")),
                StatusCode::kInvalidArgument, "twice");
}

TEST(PolicyDocumentTest, FieldsOutOfBoundsAreRefused) {
  EXPECT_STATUS(ParsePolicyDocument(WithMember("format", "\"vmseal-policy-document-v2\"")),
                StatusCode::kInvalidArgument, "format");
  EXPECT_STATUS(ParsePolicyDocument(WithMember("tenant", "\"a/b\"")), StatusCode::kInvalidArgument,
                "tenant");
  EXPECT_STATUS(ParsePolicyDocument(WithMember("image_id", "\"" + std::string(129, 'i') + "\"")),
                StatusCode::kInvalidArgument, "image_id");
  EXPECT_STATUS(ParsePolicyDocument(WithMember("issued_at", "\"2026-12-06 02:00:00\"")),
                StatusCode::kInvalidArgument, "issued_at");
  EXPECT_STATUS(ParsePolicyDocument(WithMember("issued_at", "\"2026-13-06T02:00:00Z\"")),
                StatusCode::kInvalidArgument, "issued_at");
  EXPECT_STATUS(ParsePolicyDocument(WithMember("policy", "[]")), StatusCode::kInvalidArgument,
                "policy must be a JSON object");
}

TEST(PolicyDocumentTest, OversizedDocumentIsRefusedBeforeParsing) {
  std::string big = WithMember("policy", "{\"pad\":\"" + std::string(kMaxPolicyDocumentBytes, 'a') + "\"}");
  EXPECT_STATUS(ParsePolicyDocument(big), StatusCode::kInvalidArgument, "bytes");
  PolicyDocument d = Doc();
  d.policy["pad"] = std::string(kMaxPolicyDocumentBytes, 'a');
  EXPECT_STATUS(SerializePolicyDocument(d), StatusCode::kInvalidArgument, "exceeds");
}

}  // namespace
}  // namespace vmseal::ovf
