// The two halves of TPM attestation against each other: the host's
// SecurityEngine on a real swtpm (one per test) and the KMS-side verifier.
#include "tpm/security_engine.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "attest/credential.h"
#include "attest/ek_certificate.h"
#include "attest/reason.h"
#include "attest/tpm_format.h"
#include "attest/verifier.h"
#include "crypto/ssl_util.h"
#include "testing/test_util.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal::tpm {
namespace {

using attest::Reason;
using attest::ReasonOf;
using testing::Swtpm;

const std::vector<uint32_t> kPcrs = {0, 7, 16, 23};
constexpr char kLabel[] = "vmkey";  // sizeof includes the NUL the TPM needs

std::span<const uint8_t> LabelBytes() {
  return {reinterpret_cast<const uint8_t*>(kLabel), sizeof(kLabel)};
}

#define EXPECT_REASON(expr, reason, substr)                                   \
  do {                                                                        \
    ::vmseal::Status s_ = ::vmseal::internal::AsStatus(expr);                 \
    EXPECT_EQ(ReasonOf(s_), reason) << s_.ToString();                         \
    EXPECT_NE(s_.message().find(substr), std::string::npos) << s_.ToString(); \
  } while (0)

// RSA-OAEP-SHA256 to a PEM public key with `label` (incl. its final NUL), as
// the KMS re-wraps a released key.
Bytes WrapTo(const std::string& spki_pem, const SecretBytes& key, std::span<const uint8_t> label) {
  crypto::BioPtr bio(BIO_new_mem_buf(spki_pem.data(), static_cast<int>(spki_pem.size())));
  crypto::EvpPkeyPtr pkey(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  EXPECT_TRUE(pkey);
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
  EVP_PKEY_encrypt_init(ctx.get());
  EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING);
  EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), EVP_sha256());
  EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), EVP_sha256());
  EVP_PKEY_CTX_set0_rsa_oaep_label(ctx.get(), OPENSSL_memdup(label.data(), label.size()),
                                   label.size());
  size_t len = 0;
  EVP_PKEY_encrypt(ctx.get(), nullptr, &len, key.UnsafeData(), key.size());
  Bytes out(len);
  EXPECT_EQ(EVP_PKEY_encrypt(ctx.get(), out.data(), &len, key.UnsafeData(), key.size()), 1);
  out.resize(len);
  return out;
}

class TpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tpm = Swtpm::Start();
    ASSERT_OK(tpm);
    tpm_ = std::move(tpm).value();
    auto engine = NewEngine(*tpm_, state_.path());
    ASSERT_OK(engine);
    engine_ = std::move(engine).value();
    auto ak = attest::AkPublic::Parse(engine_->AkPublic());
    ASSERT_OK(ak);
    ak_ = *ak;
    nonce_ = crypto::RandomBytes(32);
  }

  static StatusOr<std::unique_ptr<SecurityEngine>> NewEngine(const Swtpm& tpm,
                                                             const std::string& dir) {
    SecurityEngineOptions o;
    o.tcti = tpm.tcti();
    o.state_dir = dir + "/tpm";
    return SecurityEngine::Create(o);
  }

  attest::Evidence Evidence() {
    auto e = engine_->Attest(nonce_, kPcrs);
    EXPECT_OK(e);
    return e.ok() ? *e : attest::Evidence{};
  }

  vmseal::testing::TempDir state_;
  std::unique_ptr<Swtpm> tpm_;
  std::unique_ptr<SecurityEngine> engine_;
  std::shared_ptr<const attest::AkPublic> ak_;
  Bytes nonce_;
};

// --- Enrollment ---

TEST_F(TpmTest, EkCertificateChainsToLocalCa) {
  auto verifier = attest::EkCertificateVerifier::Create(tpm_->ca_bundle_pem());
  ASSERT_OK(verifier);
  auto cert = engine_->EkCertificate();
  ASSERT_OK(cert);
  EXPECT_OK((*verifier)->Verify(*cert));
}

TEST_F(TpmTest, EkCertificateFromOtherManufacturerIsRejected) {
  auto other = Swtpm::Start();
  ASSERT_OK(other);
  auto verifier = attest::EkCertificateVerifier::Create((*other)->ca_bundle_pem());
  ASSERT_OK(verifier);
  auto cert = engine_->EkCertificate();
  ASSERT_OK(cert);
  EXPECT_REASON((*verifier)->Verify(*cert), Reason::kEkChainInvalid, "EK certificate");
}

TEST_F(TpmTest, MakeCredentialActivatesForEnrolledAk) {
  auto verifier = attest::EkCertificateVerifier::Create(tpm_->ca_bundle_pem());
  ASSERT_OK(verifier);
  auto request = attest::EnrollmentRequestFromJson(
      attest::EnrollmentRequestToJson(engine_->EnrollmentRequest().value()));
  ASSERT_OK(request);
  auto ek = (*verifier)->Verify(request->ek_certificate);
  ASSERT_OK(ek);
  auto ak = attest::AkPublic::Parse(request->ak_public);
  ASSERT_OK(ak);
  SecretBytes secret = SecretBytes::Random(32);
  auto challenge = attest::MakeCredential(ek->get(), (*ak)->name(), secret);
  ASSERT_OK(challenge);
  auto answer = engine_->ActivateCredential(*challenge);
  ASSERT_OK(answer);
  EXPECT_OK(attest::CheckActivation(secret, *answer));
  // The binding key is back in its slot afterwards.
  EXPECT_OK(engine_->CertifyBindingKey(nonce_));
}

TEST_F(TpmTest, MakeCredentialForWrongAkNameFails) {
  auto verifier = attest::EkCertificateVerifier::Create(tpm_->ca_bundle_pem());
  ASSERT_OK(verifier);
  auto ek = (*verifier)->Verify(engine_->EkCertificate().value());
  ASSERT_OK(ek);
  Bytes wrong_name = attest::ComputeName(engine_->BindingKeyPublic());
  auto challenge = attest::MakeCredential(ek->get(), wrong_name, SecretBytes::Random(32));
  ASSERT_OK(challenge);
  EXPECT_STATUS(engine_->ActivateCredential(*challenge), StatusCode::kPermissionDenied,
                "activate credential failed");
}

TEST_F(TpmTest, MakeCredentialToOtherTpmsEkFails) {
  auto other = Swtpm::Start();
  ASSERT_OK(other);
  vmseal::testing::TempDir dir;
  auto other_engine = NewEngine(**other, dir.path());
  ASSERT_OK(other_engine);
  auto verifier = attest::EkCertificateVerifier::Create((*other)->ca_bundle_pem());
  auto ek = (*verifier)->Verify((*other_engine)->EkCertificate().value());
  ASSERT_OK(ek);
  // The credential names our AK but is sealed to the other TPM's EK.
  auto challenge = attest::MakeCredential(ek->get(), ak_->name(), SecretBytes::Random(32));
  ASSERT_OK(challenge);
  EXPECT_STATUS(engine_->ActivateCredential(*challenge), StatusCode::kPermissionDenied,
                "activate credential failed");
}

// --- Evidence ---

TEST_F(TpmTest, EvidenceVerifies) {
  attest::Evidence e = Evidence();
  auto parsed = attest::EvidenceFromJson(attest::EvidenceToJson(e));
  ASSERT_OK(parsed);
  auto v = attest::VerifyEvidence(*ak_, nonce_, kPcrs, *parsed);
  ASSERT_OK(v);
  EXPECT_EQ(v->quote.pcr_indices, kPcrs);
  EXPECT_EQ(v->quote.pcr_values[0], Bytes(32, 0));  // fresh swtpm: PCR0 zero
  EXPECT_EQ(v->binding_key.modulus.size(), 256u);
  EXPECT_EQ(v->binding_key.name, attest::ComputeName(engine_->BindingKeyPublic()));
}

TEST_F(TpmTest, FlippedSignatureByteIsRejected) {
  attest::Evidence e = Evidence();
  e.quote.signature[e.quote.signature.size() / 2] ^= 0x01;
  EXPECT_REASON(attest::VerifyEvidence(*ak_, nonce_, kPcrs, e), Reason::kBadSignature,
                "quote signature");
}

TEST_F(TpmTest, FlippedAttestByteIsRejected) {
  attest::Evidence e = Evidence();
  e.certify.attest.back() ^= 0x01;
  EXPECT_REASON(attest::VerifyEvidence(*ak_, nonce_, kPcrs, e), Reason::kBadSignature,
                "certify signature");
}

TEST_F(TpmTest, OtherNonceIsRejected) {
  attest::Evidence e = Evidence();
  Bytes other = crypto::RandomBytes(32);
  EXPECT_REASON(attest::VerifyQuote(*ak_, other, kPcrs, e.quote), Reason::kNonceMismatch,
                "extraData");
  EXPECT_REASON(attest::VerifyCertify(*ak_, other, e.certify), Reason::kNonceMismatch, "extraData");
  EXPECT_REASON(attest::VerifyEvidence(*ak_, other, kPcrs, e), Reason::kNonceMismatch,
                "another nonce");
}

TEST_F(TpmTest, OtherPcrSelectionIsRejected) {
  attest::Evidence e = Evidence();
  EXPECT_REASON(attest::VerifyQuote(*ak_, nonce_, {0, 7, 16}, e.quote),
                Reason::kPcrSelectionMismatch, "requested");
}

TEST_F(TpmTest, AlteredPcrValueIsRejected) {
  attest::Evidence e = Evidence();
  e.quote.pcr_values[2][5] ^= 0x40;
  EXPECT_REASON(attest::VerifyQuote(*ak_, nonce_, kPcrs, e.quote), Reason::kPcrDigestMismatch,
                "pcrDigest");
}

TEST_F(TpmTest, AkFromAnotherTpmIsRejected) {
  auto other = Swtpm::Start({.create_certificates = false});
  ASSERT_OK(other);
  vmseal::testing::TempDir dir;
  auto other_engine = NewEngine(**other, dir.path());
  ASSERT_OK(other_engine);
  auto other_ak = attest::AkPublic::Parse((*other_engine)->AkPublic());
  ASSERT_OK(other_ak);
  EXPECT_REASON(attest::VerifyEvidence(**other_ak, nonce_, kPcrs, Evidence()),
                Reason::kBadSignature, "signature does not verify");
}

TEST_F(TpmTest, UncertifiedBindingKeyIsRejected) {
  auto other = Swtpm::Start({.create_certificates = false});
  ASSERT_OK(other);
  vmseal::testing::TempDir dir;
  auto other_engine = NewEngine(**other, dir.path());
  ASSERT_OK(other_engine);
  attest::Evidence e = Evidence();
  // A key the AK never certified (the other TPM's binding key) in place of ours.
  e.certify.key_public = (*other_engine)->BindingKeyPublic();
  EXPECT_REASON(attest::VerifyEvidence(*ak_, nonce_, kPcrs, e), Reason::kBindingKeyNotCertified,
                "different key");
}

TEST_F(TpmTest, CertifiedSigningKeyIsRejected) {
  auto certify = engine_->CertifySigningKeyForTesting(nonce_);
  ASSERT_OK(certify);
  EXPECT_REASON(attest::VerifyCertify(*ak_, nonce_, *certify), Reason::kBindingKeyAttributes,
                "not sign");
  // The real binding key still certifies after the test key was flushed.
  EXPECT_OK(attest::VerifyCertify(*ak_, nonce_, engine_->CertifyBindingKey(nonce_).value()));
}

TEST_F(TpmTest, PcrExtendChangesQuotedValues) {
  attest::Evidence before = Evidence();
  ASSERT_OK(engine_->PcrExtend(16, crypto::Sha256("tampered")));
  nonce_ = crypto::RandomBytes(32);
  attest::Evidence after = Evidence();
  auto v = attest::VerifyQuote(*ak_, nonce_, kPcrs, after.quote);
  ASSERT_OK(v);
  EXPECT_NE(v->pcr_values[2], before.quote.pcr_values[2]);
  // PCR16 = SHA-256(0^32 || digest) after one extend from zero.
  Bytes concat(32, 0);
  auto d = crypto::Sha256("tampered");
  concat.insert(concat.end(), d.begin(), d.end());
  auto expected = crypto::Sha256(concat);
  EXPECT_EQ(v->pcr_values[2], Bytes(expected.begin(), expected.end()));
  // Claiming the old ("good") values under the new quote fails.
  after.quote.pcr_values = before.quote.pcr_values;
  EXPECT_REASON(attest::VerifyQuote(*ak_, nonce_, kPcrs, after.quote), Reason::kPcrDigestMismatch,
                "pcrDigest");
}

// --- Decrypt ---

TEST_F(TpmTest, KeyWrappedToBindingKeyDecryptsInTpm) {
  auto v = attest::VerifyCertify(*ak_, nonce_, engine_->CertifyBindingKey(nonce_).value());
  ASSERT_OK(v);
  SecretBytes key = SecretBytes::Random(32);
  Bytes wrapped = WrapTo(v->SpkiPem(), key, LabelBytes());
  auto unwrapped = engine_->Decrypt(wrapped, LabelBytes());
  ASSERT_OK(unwrapped);
  EXPECT_TRUE(unwrapped->Equals(key));
}

// Records the TPM traffic with tss2's pcap TCTI and checks that the
// unwrapped key never appears on the wire (the response is encrypted by the
// salted session), while the ciphertext sent does (the capture works).
TEST_F(TpmTest, DecryptedKeyNeverCrossesTctiInClear) {
  auto v = attest::VerifyCertify(*ak_, nonce_, engine_->CertifyBindingKey(nonce_).value());
  ASSERT_OK(v);
  SecretBytes key = SecretBytes::Random(32);
  Bytes wrapped = WrapTo(v->SpkiPem(), key, LabelBytes());
  engine_.reset();
  vmseal::testing::TempDir dir;
  const std::string pcap = dir.File("tpm.pcap");
  ASSERT_EQ(setenv("TCTI_PCAP_FILE", pcap.c_str(), 1), 0);
  SecurityEngineOptions o;
  o.tcti = "pcap:" + tpm_->tcti();
  o.state_dir = state_.path() + "/tpm";
  auto traced = SecurityEngine::Create(o);
  ASSERT_OK(traced);
  auto unwrapped = (*traced)->Decrypt(wrapped, LabelBytes());
  ASSERT_OK(unwrapped);
  EXPECT_TRUE(unwrapped->Equals(key));
  traced->reset();
  unsetenv("TCTI_PCAP_FILE");
  std::string capture = vmseal::testing::ReadFileOrDie(pcap);
  auto contains = [&](std::span<const uint8_t> needle) {
    return capture.find(std::string(crypto::AsStringView(needle))) != std::string::npos;
  };
  EXPECT_TRUE(contains(wrapped));
  EXPECT_FALSE(contains(key.UnsafeSpan()));
  EXPECT_FALSE(contains(key.UnsafeSpan().first(8)));
}

TEST_F(TpmTest, WrongLabelFailsToDecrypt) {
  auto v = attest::VerifyCertify(*ak_, nonce_, engine_->CertifyBindingKey(nonce_).value());
  ASSERT_OK(v);
  Bytes wrapped = WrapTo(v->SpkiPem(), SecretBytes::Random(32), LabelBytes());
  const char other[] = "other";
  EXPECT_STATUS(engine_->Decrypt(wrapped, {reinterpret_cast<const uint8_t*>(other), sizeof(other)}),
                StatusCode::kPermissionDenied, "decryption failed");
}

TEST_F(TpmTest, LabelWithoutFinalZeroIsRefused) {
  Bytes wrapped(256, 1);
  EXPECT_STATUS(engine_->Decrypt(wrapped, LabelBytes().first(5)), StatusCode::kInvalidArgument,
                "zero byte");
}

// --- Persistence ---

TEST_F(TpmTest, BindingKeySurvivesAgentRestart) {
  Bytes pub = engine_->BindingKeyPublic();
  auto v = attest::VerifyCertify(*ak_, nonce_, engine_->CertifyBindingKey(nonce_).value());
  ASSERT_OK(v);
  SecretBytes key = SecretBytes::Random(32);
  Bytes wrapped = WrapTo(v->SpkiPem(), key, LabelBytes());
  engine_.reset();
  auto again = NewEngine(*tpm_, state_.path());
  ASSERT_OK(again);
  EXPECT_EQ((*again)->BindingKeyPublic(), pub);
  EXPECT_EQ((*again)->AkPublic(), ak_->marshalled());
  auto unwrapped = (*again)->Decrypt(wrapped, LabelBytes());
  ASSERT_OK(unwrapped);
  EXPECT_TRUE(unwrapped->Equals(key));
}

TEST_F(TpmTest, BindingKeySurvivesTpmRestartAndPcrsReset) {
  Bytes pub = engine_->BindingKeyPublic();
  ASSERT_OK(engine_->PcrExtend(16, crypto::Sha256("x")));
  auto v = attest::VerifyCertify(*ak_, nonce_, engine_->CertifyBindingKey(nonce_).value());
  ASSERT_OK(v);
  SecretBytes key = SecretBytes::Random(32);
  Bytes wrapped = WrapTo(v->SpkiPem(), key, LabelBytes());
  engine_.reset();
  ASSERT_OK(tpm_->Restart());
  auto again = NewEngine(*tpm_, state_.path());
  ASSERT_OK(again);
  EXPECT_EQ((*again)->BindingKeyPublic(), pub);
  auto pcrs = (*again)->ReadPcrs({16});
  ASSERT_OK(pcrs);
  EXPECT_EQ((*pcrs)[0], Bytes(32, 0));
  auto unwrapped = (*again)->Decrypt(wrapped, LabelBytes());
  ASSERT_OK(unwrapped);
  EXPECT_TRUE(unwrapped->Equals(key));
}

TEST_F(TpmTest, LiveEngineRecoversFromTpmRestart) {
  auto v = attest::VerifyCertify(*ak_, nonce_, engine_->CertifyBindingKey(nonce_).value());
  ASSERT_OK(v);
  SecretBytes key = SecretBytes::Random(32);
  Bytes wrapped = WrapTo(v->SpkiPem(), key, LabelBytes());
  ASSERT_OK(tpm_->Restart());
  auto unwrapped = engine_->Decrypt(wrapped, LabelBytes());
  ASSERT_OK(unwrapped);
  EXPECT_TRUE(unwrapped->Equals(key));
  EXPECT_OK(attest::VerifyEvidence(*ak_, nonce_, kPcrs, Evidence()));
}

TEST_F(TpmTest, StoppedTpmIsUnavailable) {
  ASSERT_OK(tpm_->Stop());
  EXPECT_STATUS(engine_->Quote(nonce_, kPcrs), StatusCode::kUnavailable, "TCTI");
}

TEST_F(TpmTest, StateDirOfAnotherTpmIsRefused) {
  auto other = Swtpm::Start({.create_certificates = false});
  ASSERT_OK(other);
  EXPECT_STATUS(NewEngine(**other, state_.path()), StatusCode::kFailedPrecondition,
                "belongs to another TPM");
}

TEST_F(TpmTest, StateFilesAreOwnerOnly) {
  for (const char* name : {"/tpm/binding.pub", "/tpm/binding.priv", "/tpm/ak.pub"}) {
    struct stat st;
    ASSERT_EQ(stat((state_.path() + name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << name;
  }
}

TEST_F(TpmTest, EmptyTctiIsRefused) {
  SecurityEngineOptions o;
  o.state_dir = state_.path();
  EXPECT_STATUS(SecurityEngine::Create(o), StatusCode::kInvalidArgument, "TCTI");
}

// --- Independent verifier ---

TEST_F(TpmTest, Tpm2CheckquoteAcceptsOurQuote) {
  attest::Evidence e = Evidence();
  vmseal::testing::TempDir dir;
  vmseal::testing::WriteFileOrDie(dir.File("ak.pem"), ak_->SpkiPem().value());
  vmseal::testing::WriteFileOrDie(dir.File("quote.msg"),
                                  std::string(crypto::AsStringView(e.quote.attest)));
  vmseal::testing::WriteFileOrDie(dir.File("quote.sig"),
                                  std::string(crypto::AsStringView(e.quote.signature)));
  std::string out;
  EXPECT_EQ(vmseal::testing::RunCommand(
                {"tpm2_checkquote", "-u", dir.File("ak.pem"), "-m", dir.File("quote.msg"), "-s",
                 dir.File("quote.sig"), "-g", "sha256", "-q", crypto::HexEncode(nonce_)},
                &out, 30),
            0)
      << out;
  // And it refuses the same quote for another nonce, as we do.
  EXPECT_NE(
      vmseal::testing::RunCommand(
          {"tpm2_checkquote", "-u", dir.File("ak.pem"), "-m", dir.File("quote.msg"), "-s",
           dir.File("quote.sig"), "-g", "sha256", "-q", crypto::HexEncode(crypto::RandomBytes(32))},
          &out, 30),
      0);
}

// --- Latency (printed; the operations must succeed) ---

TEST_F(TpmTest, LatencyReport) {
  using Clock = std::chrono::steady_clock;
  constexpr int kRounds = 20;
  auto v = attest::VerifyCertify(*ak_, nonce_, engine_->CertifyBindingKey(nonce_).value());
  ASSERT_OK(v);
  SecretBytes key = SecretBytes::Random(32);
  Bytes wrapped = WrapTo(v->SpkiPem(), key, LabelBytes());
  double quote_ms = 0, certify_ms = 0, decrypt_ms = 0, verify_ms = 0;
  for (int i = 0; i < kRounds; ++i) {
    auto t0 = Clock::now();
    auto q = engine_->Quote(nonce_, kPcrs);
    auto t1 = Clock::now();
    auto c = engine_->CertifyBindingKey(nonce_);
    auto t2 = Clock::now();
    auto d = engine_->Decrypt(wrapped, LabelBytes());
    auto t3 = Clock::now();
    ASSERT_OK(q);
    ASSERT_OK(c);
    ASSERT_OK(d);
    attest::Evidence e{nonce_, kPcrs, *q, *c};
    auto t4 = Clock::now();
    ASSERT_OK(attest::VerifyEvidence(*ak_, nonce_, kPcrs, e));
    auto t5 = Clock::now();
    auto ms = [](auto a, auto b) {
      return std::chrono::duration<double, std::milli>(b - a).count();
    };
    quote_ms += ms(t0, t1);
    certify_ms += ms(t1, t2);
    decrypt_ms += ms(t2, t3);
    verify_ms += ms(t4, t5);
  }
  // Server-side verification alone, many rounds (no TPM involved).
  constexpr int kVerifyRounds = 500;
  attest::Evidence e = Evidence();
  auto v0 = Clock::now();
  for (int i = 0; i < kVerifyRounds; ++i) {
    ASSERT_OK(attest::VerifyEvidence(*ak_, nonce_, kPcrs, e));
  }
  double verify_many_ms =
      std::chrono::duration<double, std::milli>(Clock::now() - v0).count() / kVerifyRounds;
  // Agent restart: SRK + AK CreatePrimary and binding key Load.
  engine_.reset();
  auto r0 = Clock::now();
  auto again = NewEngine(*tpm_, state_.path());
  double restart_ms = std::chrono::duration<double, std::milli>(Clock::now() - r0).count();
  ASSERT_OK(again);
  std::printf(
      "latency over %d rounds (mean ms): quote+pcr_read %.2f, certify %.2f, "
      "salted decrypt %.2f, verify quote+certify %.3f (%.3f over %d), "
      "engine start with stored blobs %.1f\n",
      kRounds, quote_ms / kRounds, certify_ms / kRounds, decrypt_ms / kRounds, verify_ms / kRounds,
      verify_many_ms, kVerifyRounds, restart_ms);
  RecordProperty("quote_ms", std::to_string(quote_ms / kRounds));
  RecordProperty("decrypt_ms", std::to_string(decrypt_ms / kRounds));
}

}  // namespace
}  // namespace vmseal::tpm
