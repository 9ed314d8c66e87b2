// The package signature (.cert, docs/format/package.md §8.1): its format,
// what it covers, and the attacks it stops — a package re-sealed by someone
// holding only the customer's public key, a rewritten descriptor with a
// recomputed manifest, a .cert moved from another package.
#include "ovf/signature.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "crypto/primitives.h"
#include "ovf/manifest.h"
#include "ovf/ovf_test_helpers.h"
#include "ovf/package.h"
#include "ovf/tar.h"
#include "ovf/testing/signed_texts.h"

namespace vmseal::ovf {
namespace {

using ::testing::HasSubstr;
using ::vmseal::ovf::testing::RawMember;
using ::vmseal::ovf::testing::RawTar;
using ::vmseal::ovf::testing::TestKey;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

// A CA (the KMS's, in the product) and package signing identities under it.
struct Signer {
  crypto::PrivateKey key;
  std::string chain_pem;
};

const crypto::CertificateAuthority& TestCa() {
  static auto* ca = [] {
    auto made = crypto::CreateSelfSignedCa({.common_name = "test kms ca"});
    EXPECT_OK(made);
    return new crypto::CertificateAuthority(std::move(made).value());
  }();
  return *ca;
}

Signer NewSigner(const std::string& name, crypto::CertUsage usage = crypto::CertUsage::kPackageSigning,
                 crypto::KeyType type = crypto::KeyType::kEcP256) {
  auto key = crypto::PrivateKey::Generate(type);
  EXPECT_OK(key);
  crypto::IssueOptions o;
  o.common_name = name;
  o.usage = usage;
  auto cert = crypto::IssueCertificate(TestCa(), key->Public(), o);
  EXPECT_OK(cert);
  return {std::move(key).value(), cert->ToPem()};
}

const std::string kManifest =
    "SHA256(sealed.ovf)= " + std::string(64, 'a') + "\nSHA256(disk1.raw.vmseal)= " +
    std::string(64, 'b') + "\n";

TEST(PackageCertificate, SignsParsesAndVerifies) {
  Signer s = NewSigner("acme");
  auto text = SignManifest("sealed.mf", kManifest, s.key, s.chain_pem);
  ASSERT_OK(text);
  EXPECT_TRUE(text->starts_with("SHA256(sealed.mf)= ")) << *text;
  EXPECT_THAT(*text, HasSubstr("-----BEGIN CERTIFICATE-----"));
  auto sig = ParsePackageCertificate(*text);
  ASSERT_OK(sig);
  EXPECT_EQ(sig->manifest_name, "sealed.mf");
  EXPECT_EQ(sig->signer.SubjectCommonName(), "acme");
  EXPECT_OK(VerifyManifestSignature(*sig, "sealed.mf", kManifest));
  EXPECT_OK(VerifySigner(*sig, {TestCa().cert}, "acme"));
}

TEST(PackageCertificate, RsaSignersAsOvftoolUsesThemVerify) {
  Signer s = NewSigner("acme", crypto::CertUsage::kPackageSigning, crypto::KeyType::kRsa2048);
  auto text = SignManifest("sealed.mf", kManifest, s.key, s.chain_pem);
  ASSERT_OK(text);
  auto sig = ParsePackageCertificate(*text);
  ASSERT_OK(sig);
  EXPECT_OK(VerifyManifestSignature(*sig, "sealed.mf", kManifest));
}

TEST(PackageCertificate, CrlfAndIntermediatesParse) {
  Signer s = NewSigner("acme");
  auto text = SignManifest("sealed.mf", kManifest, s.key, s.chain_pem + TestCa().cert.ToPem());
  ASSERT_OK(text);
  std::string crlf;
  for (char c : *text) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  auto sig = ParsePackageCertificate(crlf);
  ASSERT_OK(sig);
  EXPECT_EQ(sig->intermediates.size(), 1u);
  EXPECT_OK(VerifyManifestSignature(*sig, "sealed.mf", kManifest));
}

TEST(PackageCertificate, AnyChangeToTheManifestFails) {
  Signer s = NewSigner("acme");
  auto sig = ParsePackageCertificate(*SignManifest("sealed.mf", kManifest, s.key, s.chain_pem));
  ASSERT_OK(sig);
  std::string changed = kManifest;
  changed[30] = 'c';
  EXPECT_STATUS(VerifyManifestSignature(*sig, "sealed.mf", changed), StatusCode::kUnauthenticated,
                "bad_signature: the manifest signature does not verify");
  EXPECT_STATUS(VerifyManifestSignature(*sig, "other.mf", kManifest),
                StatusCode::kUnauthenticated, "bad_signature: the signature names sealed.mf");
}

TEST(PackageCertificate, SignerMustChainAndBeTheExpectedPackageSigner) {
  Signer s = NewSigner("acme");
  auto sig = ParsePackageCertificate(*SignManifest("sealed.mf", kManifest, s.key, s.chain_pem));
  ASSERT_OK(sig);
  EXPECT_STATUS(VerifySigner(*sig, {TestCa().cert}, "globex"), StatusCode::kUnauthenticated,
                "signer_mismatch: signed by 'acme', expected 'globex'");
  auto other_ca = crypto::CreateSelfSignedCa({.common_name = "someone else"});
  ASSERT_OK(other_ca);
  EXPECT_STATUS(VerifySigner(*sig, {other_ca->cert}, "acme"), StatusCode::kUnauthenticated,
                "signer_mismatch: the signer certificate does not chain");
  // A TLS client identity with the customer's name is not a signing key.
  Signer tls = NewSigner("acme", crypto::CertUsage::kClientAuth);
  auto tls_sig =
      ParsePackageCertificate(*SignManifest("sealed.mf", kManifest, tls.key, tls.chain_pem));
  ASSERT_OK(tls_sig);
  EXPECT_OK(VerifyManifestSignature(*tls_sig, "sealed.mf", kManifest));
  EXPECT_STATUS(VerifySigner(*tls_sig, {TestCa().cert}, "acme"), StatusCode::kUnauthenticated,
                "not for package signing");
}

TEST(PackageCertificate, SigningWithAKeyThatIsNotTheCertificatesIsRefused) {
  Signer s = NewSigner("acme");
  Signer other = NewSigner("acme");
  EXPECT_STATUS(SignManifest("sealed.mf", kManifest, other.key, s.chain_pem),
                StatusCode::kInvalidArgument, "not for the signing key");
}

TEST(PackageCertificate, MalformedFilesAreRefused) {
  Signer s = NewSigner("acme");
  const std::string good = *SignManifest("sealed.mf", kManifest, s.key, s.chain_pem);
  const size_t eol = good.find('\n');
  const std::string line = good.substr(0, eol + 1), pem = good.substr(eol + 1);
  struct Case {
    std::string text;
    std::string error;
  };
  const Case cases[] = {
      {"", "no signature line"},
      {"SHA256(sealed.mf)= 00", "no signature line"},
      {"MD5(sealed.mf)= 00\n" + pem, "unknown signature digest"},
      {"SHA256 sealed.mf= 00\n" + pem, "ALG(name)= signature"},
      {"SHA256(sealed.mf)=00\n" + pem, "ALG(name)= signature"},
      {"SHA256(sealed.ovf)= 00\n" + pem, "must name the package's .mf"},
      {"SHA256(../x.mf)= 00\n" + pem, "must name the package's .mf"},
      {"SHA256(sealed.mf)= 0g\n" + pem, "not hex"},
      {"SHA256(sealed.mf)= 000\n" + pem, "not hex"},
      {line, "no signer certificate"},
      {line + "hello\n" + pem, "only PEM certificates"},
      {line + pem + "trailing words\n", "unexpected text"},
      {line + pem + "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
       "unexpected text"},
      {line + "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
       "unreadable signer certificate"},
      {line + pem + std::string(70000, '\n'), "larger than 64 KiB"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text.substr(0, 80));
    EXPECT_STATUS(ParsePackageCertificate(c.text), StatusCode::kInvalidArgument, c.error);
  }
}

// Package level: what seal writes and what Open checks.
class SignedPackageTest : public ::testing::Test {
 protected:
  SealOptions Options(const Signer* signer) {
    SealOptions o;
    o.inputs = {disk_};
    o.recipient_pem = TestKey().public_pem;
    o.image_id = "img-0001";
    o.tenant = "acme";
    o.created = "2026-11-27T03:00:00Z";
    if (signer != nullptr) {
      o.signing_key = &signer->key;
      o.signing_chain_pem = signer->chain_pem;
    }
    return o;
  }
  std::vector<RawMember> Members(const std::string& ova) {
    auto file = Env::Default()->NewRandomAccessFile(ova);
    EXPECT_OK(file);
    auto reader = TarReader::Open(file->get());
    EXPECT_OK(reader);
    std::vector<RawMember> out;
    const std::string bytes = ReadFileOrDie(ova);
    for (const TarMember& m : (*reader)->members()) {
      out.push_back({m.name, bytes.substr(m.data_offset, m.size)});
    }
    return out;
  }
  static void FixManifest(std::vector<RawMember>* members) {
    for (RawMember& mf : *members) {
      if (!mf.name.ends_with(".mf")) continue;
      std::vector<ManifestEntry> entries;
      for (const RawMember& m : *members) {
        if (&m == &mf || m.name.ends_with(".cert")) continue;
        crypto::Sha256Digest d = crypto::Sha256(m.data);
        entries.push_back({DigestAlgorithm::kSha256, m.name, {d.begin(), d.end()}});
      }
      mf.data = FormatManifest(entries);
    }
  }
  StatusOr<std::unique_ptr<Package>> Open(const std::string& path, bool require = true) {
    PackageOpenOptions po;
    po.require_signature = require;
    return Package::Open(Env::Default(), path, po);
  }

  TempDir dir_;
  std::string disk_ = [this] {
    std::string p = dir_.File("disk.img");
    WriteFileOrDie(p, std::string(200000, 'd'));
    return p;
  }();
};

TEST_F(SignedPackageTest, SealedOvaCarriesAVerifiedSignature) {
  Signer s = NewSigner("acme");
  const std::string ova = dir_.File("signed.ova");
  ASSERT_OK(SealPackage(Env::Default(), Options(&s), ova));
  std::vector<RawMember> m = Members(ova);
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[2].name, "signed.mf");
  EXPECT_EQ(m[3].name, "signed.cert");  // .mf and .cert both at the end (DSP0243)
  auto p = Open(ova);
  ASSERT_OK(p);
  ASSERT_TRUE((*p)->is_signed());
  EXPECT_EQ((*p)->signature().signer.SubjectCommonName(), "acme");
  EXPECT_OK(VerifySigner((*p)->signature(), {TestCa().cert}, "acme"));
  // The directory form too.
  SealOptions o = Options(&s);
  o.ova = false;
  ASSERT_OK(SealPackage(Env::Default(), o, dir_.File("signed-dir")));
  auto d = Open(dir_.File("signed-dir"));
  ASSERT_OK(d);
  EXPECT_TRUE((*d)->is_signed());
}

TEST_F(SignedPackageTest, UnsignedPackageIsRefusedWhenASignatureIsRequired) {
  const std::string ova = dir_.File("plain.ova");
  ASSERT_OK(SealPackage(Env::Default(), Options(nullptr), ova));
  EXPECT_STATUS(Open(ova), StatusCode::kFailedPrecondition, "unsigned_package");
  auto p = Open(ova, /*require=*/false);
  ASSERT_OK(p);
  EXPECT_FALSE((*p)->is_signed());
}

// Someone with the customer's public key re-seals the image (or swaps the
// wrapped key) and recomputes the manifest: the old signature no longer
// verifies, and the attacker cannot make one under the customer's name.
TEST_F(SignedPackageTest, RewrittenDescriptorWithRecomputedManifestIsRefused) {
  Signer s = NewSigner("acme");
  const std::string ova = dir_.File("signed.ova");
  ASSERT_OK(SealPackage(Env::Default(), Options(&s), ova));
  std::vector<RawMember> m = Members(ova);
  std::string& descriptor = m[0].data;
  const size_t at = descriptor.find("img-0001");
  ASSERT_NE(at, std::string::npos);
  descriptor.replace(at, 8, "img-0002");
  FixManifest(&m);
  const std::string forged = dir_.File("forged.ova");
  WriteFileOrDie(forged, RawTar(m));
  EXPECT_STATUS(Open(forged), StatusCode::kUnauthenticated, "bad_signature");
  EXPECT_STATUS(Open(forged, /*require=*/false), StatusCode::kUnauthenticated, "bad_signature");
}

TEST_F(SignedPackageTest, SignatureFromAnotherPackageIsRefused) {
  Signer s = NewSigner("acme");
  const std::string a = dir_.File("a.ova"), b = dir_.File("b.ova");
  ASSERT_OK(SealPackage(Env::Default(), Options(&s), a));
  ASSERT_OK(SealPackage(Env::Default(), Options(&s), b));  // same inputs, new data key
  std::vector<RawMember> ma = Members(a), mb = Members(b);
  mb[3].data = ma[3].data;
  mb[3].name = "b.cert";
  const std::string mixed = dir_.File("mixed.ova");
  WriteFileOrDie(mixed, RawTar(mb));
  EXPECT_STATUS(Open(mixed), StatusCode::kUnauthenticated, "bad_signature");
}

// The attacker signs the forged package with a key of its own: the
// signature verifies, but the signer is not the customer.
TEST_F(SignedPackageTest, ForgerSignedPackageFailsTheSignerCheck) {
  Signer forger = NewSigner("acme", crypto::CertUsage::kPackageSigning);
  auto forger_ca = crypto::CreateSelfSignedCa({.common_name = "forger ca"});
  ASSERT_OK(forger_ca);
  crypto::IssueOptions io;
  io.common_name = "acme";
  io.usage = crypto::CertUsage::kPackageSigning;
  auto cert = crypto::IssueCertificate(*forger_ca, forger.key.Public(), io);
  ASSERT_OK(cert);
  forger.chain_pem = cert->ToPem();
  const std::string ova = dir_.File("forged.ova");
  ASSERT_OK(SealPackage(Env::Default(), Options(&forger), ova));
  auto p = Open(ova);
  ASSERT_OK(p);
  EXPECT_STATUS(VerifySigner((*p)->signature(), {TestCa().cert}, "acme"),
                StatusCode::kUnauthenticated, "signer_mismatch");
}

TEST_F(SignedPackageTest, MismatchedSigningCertificateFailsBeforeAnyOutput) {
  Signer s = NewSigner("acme");
  Signer other = NewSigner("acme");
  SealOptions o = Options(&s);
  o.signing_chain_pem = other.chain_pem;
  const std::string ova = dir_.File("never.ova");
  EXPECT_STATUS(SealPackage(Env::Default(), o, ova), StatusCode::kInvalidArgument,
                "not for the signing key");
  EXPECT_FALSE(Env::Default()->FileExists(ova));
}

// Interop: the .cert is what `openssl dgst -verify` checks (ovftool's
// format: the signature over the .mf bytes).
TEST_F(SignedPackageTest, OpensslVerifiesTheSignature) {
  Signer s = NewSigner("acme");
  SealOptions o = Options(&s);
  o.ova = false;
  const std::string dir = dir_.File("pkg");
  ASSERT_OK(SealPackage(Env::Default(), o, dir));
  auto sig = ParsePackageCertificate(ReadFileOrDie(dir + "/pkg.cert"));
  ASSERT_OK(sig);
  WriteFileOrDie(dir_.File("sig.bin"), std::string(crypto::AsStringView(sig->signature)));
  WriteFileOrDie(dir_.File("pub.pem"), s.key.Public().ToPem());
  std::string out;
  EXPECT_EQ(RunCommand({"openssl", "dgst", "-sha256", "-verify", dir_.File("pub.pem"),
                        "-signature", dir_.File("sig.bin"), dir + "/pkg.mf"},
                       &out, 30),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("Verified OK"));
  // And a signature openssl made is accepted by the parser and verifier.
  auto pem = s.key.ToPem();
  ASSERT_OK(pem);
  WriteFileOrDie(dir_.File("key.pem"), std::string(crypto::AsStringView(pem->UnsafeSpan())));
  ASSERT_EQ(RunCommand({"openssl", "dgst", "-sha256", "-sign", dir_.File("key.pem"), "-out",
                        dir_.File("sig2.bin"), dir + "/pkg.mf"},
                       &out, 30),
            0)
      << out;
  const std::string hex = crypto::HexEncode(crypto::AsBytes(ReadFileOrDie(dir_.File("sig2.bin"))));
  auto theirs = ParsePackageCertificate("SHA256(pkg.mf)= " + hex + "\n" + s.chain_pem);
  ASSERT_OK(theirs);
  EXPECT_OK(VerifyManifestSignature(*theirs, "pkg.mf", ReadFileOrDie(dir + "/pkg.mf")));
}

// --- Signed package metadata (what a release request carries) -------------

class SignedDescriptorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tag_.image_id = "img-1";
    tag_.tenant = "acme";
    tag_.key_id = "sha256:" + std::string(64, 'c');
    tag_.key_version = 1;
    tag_.data_algorithm = std::string(kStreamAlgorithmUri);
    key_.algorithm = std::string(kRsaOaepUri);
    key_.ciphertext = crypto::Bytes(384, 0x42);
    key_.oaep_label = OaepLabel(tag_);
  }
  SignedPackageTexts Texts(const Signer* signer) {
    auto t = ovf::testing::MakeSignedTexts(tag_, key_, signer ? &signer->key : nullptr,
                                           signer ? signer->chain_pem : "");
    EXPECT_OK(t);
    return *std::move(t);
  }
  EncryptionTag tag_;
  WrappedKey key_;
  Signer acme_ = NewSigner("acme");
};

TEST_F(SignedDescriptorTest, SignedTextsVerifyAndYieldTheSignedKey) {
  auto v = VerifySignedDescriptor(Texts(&acme_));
  ASSERT_OK(v);
  EXPECT_EQ(v->tag.image_id, "img-1");
  EXPECT_EQ(v->tag.tenant, "acme");
  EXPECT_EQ(v->tag.key_id, tag_.key_id);
  EXPECT_EQ(v->wrapped_key.ciphertext, key_.ciphertext);
  EXPECT_EQ(v->wrapped_key.oaep_label, key_.oaep_label);
  EXPECT_OK(VerifySigner(v->signature, {TestCa().cert}, "acme"));
}

TEST_F(SignedDescriptorTest, ReleasePolicyInTheDescriptorIsSignedAndReturned) {
  const std::string policy = R"({"flavors":{"anyOf":["good"]},"required_tags":["tier=gold"]})";
  auto t = ovf::testing::MakeSignedTexts(tag_, key_, &acme_.key, acme_.chain_pem, policy);
  ASSERT_OK(t);
  auto v = VerifySignedDescriptor(*t);
  ASSERT_OK(v);
  ASSERT_TRUE(v->release_policy.has_value());
  EXPECT_EQ(*v->release_policy, policy);
  auto none = VerifySignedDescriptor(Texts(&acme_));
  ASSERT_OK(none);
  EXPECT_FALSE(none->release_policy.has_value());
}

TEST_F(SignedDescriptorTest, ReleasePolicyWeakenedAfterSigningIsBadSignature) {
  auto t = ovf::testing::MakeSignedTexts(tag_, key_, &acme_.key, acme_.chain_pem,
                                         R"({"flavors":{"anyOf":["good"]},"required_tags":["tier=gold"]})");
  ASSERT_OK(t);
  // Someone drops the required tag from the signed descriptor.
  const size_t at = t->descriptor.find("tier=gold");
  ASSERT_NE(at, std::string::npos);
  t->descriptor.replace(at, 9, "");
  EXPECT_STATUS(VerifySignedDescriptor(*t), StatusCode::kUnauthenticated, "bad_signature");
}

TEST_F(SignedDescriptorTest, NoCertificateIsUnsignedPackage) {
  EXPECT_STATUS(VerifySignedDescriptor(Texts(nullptr)), StatusCode::kFailedPrecondition,
                "unsigned_package");
}

TEST_F(SignedDescriptorTest, DescriptorChangedAfterSigningIsBadSignature) {
  SignedPackageTexts t = Texts(&acme_);
  // Another wrapped key in the descriptor (one base64 character of the
  // CipherValue changed): the manifest's digest no longer matches.
  const size_t at = t.descriptor.find("CipherValue>");
  ASSERT_NE(at, std::string::npos);
  char& c = t.descriptor[at + 12];
  c = c == 'Q' ? 'R' : 'Q';
  EXPECT_STATUS(VerifySignedDescriptor(t), StatusCode::kUnauthenticated,
                "bad_signature: the descriptor is not the one the signed manifest digests");
}

TEST_F(SignedDescriptorTest, ManifestChangedAfterSigningIsBadSignature) {
  SignedPackageTexts t = Texts(&acme_);
  t.manifest += "SHA256(extra.img)= " + std::string(64, '0') + "\n";
  EXPECT_STATUS(VerifySignedDescriptor(t), StatusCode::kUnauthenticated, "bad_signature");
}

TEST_F(SignedDescriptorTest, ManifestThatDoesNotListTheDescriptorIsBadSignature) {
  SignedPackageTexts t = Texts(&acme_);
  t.descriptor_name = "other.ovf";  // the .cert names pkg.mf, so rename both
  t.certificate.replace(t.certificate.find("pkg.mf"), 6, "other.mf");
  EXPECT_STATUS(VerifySignedDescriptor(t), StatusCode::kUnauthenticated, "bad_signature");
}

TEST_F(SignedDescriptorTest, GarbageCertificateIsBadSignature) {
  SignedPackageTexts t = Texts(&acme_);
  t.certificate = "not a certificate\n";
  EXPECT_STATUS(VerifySignedDescriptor(t), StatusCode::kUnauthenticated, "bad_signature");
}

TEST_F(SignedDescriptorTest, OversizedOrBadlyNamedTextsAreRefused) {
  SignedPackageTexts t = Texts(&acme_);
  t.descriptor_name = "../pkg.ovf";
  EXPECT_STATUS(VerifySignedDescriptor(t), StatusCode::kInvalidArgument, "descriptor name");
  t = Texts(&acme_);
  t.descriptor.append(kMaxSignedDescriptorBytes, ' ');
  EXPECT_STATUS(VerifySignedDescriptor(t), StatusCode::kInvalidArgument, "too large");
}

TEST_F(SignedDescriptorTest, RegisteredSignerMustHoldTheRegisteredKey) {
  auto v = VerifySignedDescriptor(Texts(&acme_));
  ASSERT_OK(v);
  EXPECT_OK(VerifyRegisteredSigner(v->signature, acme_.chain_pem, {TestCa().cert}, "acme"));
  // A certificate for "acme" from the same CA but for another key (the one
  // registered) is not the signer.
  Signer other = NewSigner("acme");
  EXPECT_STATUS(VerifyRegisteredSigner(v->signature, other.chain_pem, {TestCa().cert}, "acme"),
                StatusCode::kUnauthenticated, "signer_mismatch: signed by key");
  // The registered key, but the package is checked for another tenant.
  EXPECT_STATUS(VerifyRegisteredSigner(v->signature, acme_.chain_pem, {TestCa().cert}, "bob"),
                StatusCode::kUnauthenticated, "signer_mismatch");
}

TEST_F(SignedDescriptorTest, SelfMadeSigningCertificateIsSignerMismatch) {
  // Someone with the customer's public wrap key seals and signs with a key
  // and CA of their own, naming the tenant.
  auto ca = crypto::CreateSelfSignedCa({.common_name = "attacker ca"});
  ASSERT_OK(ca);
  auto key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(key);
  crypto::IssueOptions o;
  o.common_name = "acme";
  o.usage = crypto::CertUsage::kPackageSigning;
  auto cert = crypto::IssueCertificate(*ca, key->Public(), o);
  ASSERT_OK(cert);
  Signer forged{*std::move(key), cert->ToPem()};
  auto v = VerifySignedDescriptor(Texts(&forged));
  ASSERT_OK(v);  // a valid signature, but by whom?
  EXPECT_STATUS(VerifySigner(v->signature, {TestCa().cert}, "acme"), StatusCode::kUnauthenticated,
                "signer_mismatch");
  EXPECT_STATUS(VerifyRegisteredSigner(v->signature, acme_.chain_pem, {TestCa().cert}, "acme"),
                StatusCode::kUnauthenticated, "signer_mismatch");
}

TEST(SigningKeyProof, BindsTheKeyAndVerifiesOnlyWithIt) {
  auto a = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  auto b = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(a);
  ASSERT_OK(b);
  const crypto::Bytes msg = SigningKeyProofMessage(a->Public());
  EXPECT_EQ(std::string(msg.begin(), msg.begin() + 28), std::string("vmseal-signing-key-proof-v1\0", 28));
  EXPECT_NE(msg, SigningKeyProofMessage(b->Public()));
  auto sig = crypto::Sign(*a, crypto::SignatureDigest::kSha256, msg);
  ASSERT_OK(sig);
  EXPECT_OK(crypto::VerifySignature(a->Public(), crypto::SignatureDigest::kSha256, msg, *sig));
  EXPECT_FALSE(crypto::VerifySignature(b->Public(), crypto::SignatureDigest::kSha256,
                                       SigningKeyProofMessage(b->Public()), *sig).ok());
}

}  // namespace
}  // namespace vmseal::ovf
