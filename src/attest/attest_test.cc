// Unit tests for the verifier on software-made TPM structures: an OpenSSL RSA
// key plays the AK, so every check runs without a TPM.
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <tss2/tss2_mu.h>

#include <cstring>

#include "attest/credential.h"
#include "attest/ek_certificate.h"
#include "attest/evidence.h"
#include "attest/reason.h"
#include "attest/testing/software_tpm.h"
#include "attest/tpm_format.h"
#include "attest/verifier.h"
#include "testing/test_util.h"

namespace vmseal::attest {
namespace {

using crypto::EvpPkeyPtr;
using ::vmseal::attest::testing::Marshal;
using ::vmseal::attest::testing::MarshalAttest;
using ::vmseal::attest::testing::PublicFor;
using ::vmseal::attest::testing::Sign;

EvpPkeyPtr NewRsaKey() { return EvpPkeyPtr(EVP_RSA_gen(2048)); }

class SoftwareTpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ak_key_ = NewRsaKey();
    bind_key_ = NewRsaKey();
    ak_ = AkPublic::Parse(Marshal(PublicFor(ak_key_.get(), true))).value();
    nonce_ = Bytes(32, 0x5a);
    pcrs_ = {0, 7, 16};
    for (uint8_t i = 0; i < 3; ++i) pcr_values_.push_back(Bytes(32, i));
  }

  TPMS_ATTEST BaseAttest(uint16_t type) { return ::vmseal::attest::testing::BaseAttest(type, nonce_); }

  QuoteEvidence MakeQuote(std::vector<uint32_t> selection, const std::vector<Bytes>& values) {
    TPMS_ATTEST a = BaseAttest(kAttestTypeQuote);
    a.attested.quote.pcrSelect = MakePcrSelection(selection).value();
    crypto::Sha256Hasher h;
    for (const Bytes& v : values) h.Update(v);
    auto d = h.Finish();
    a.attested.quote.pcrDigest.size = 32;
    std::memcpy(a.attested.quote.pcrDigest.buffer, d.data(), 32);
    QuoteEvidence q;
    q.attest = MarshalAttest(a);
    q.signature = Sign(ak_key_.get(), q.attest);
    q.pcr_values = values;
    return q;
  }

  CertifyEvidence MakeCertify(const TPMT_PUBLIC& key_pub) {
    TPMS_ATTEST a = BaseAttest(kAttestTypeCertify);
    Bytes name = ComputeName(Marshal(key_pub));
    a.attested.certify.name.size = static_cast<UINT16>(name.size());
    std::memcpy(a.attested.certify.name.name, name.data(), name.size());
    CertifyEvidence c;
    c.attest = MarshalAttest(a);
    c.signature = Sign(ak_key_.get(), c.attest);
    c.key_public = Marshal(key_pub);
    return c;
  }

  EvpPkeyPtr ak_key_, bind_key_;
  std::shared_ptr<const AkPublic> ak_;
  Bytes nonce_;
  std::vector<uint32_t> pcrs_;
  std::vector<Bytes> pcr_values_;
};

#define EXPECT_REASON(expr, reason, substr)                                   \
  do {                                                                        \
    ::vmseal::Status s_ = ::vmseal::internal::AsStatus(expr);                 \
    EXPECT_EQ(ReasonOf(s_), reason) << s_.ToString();                         \
    EXPECT_NE(s_.message().find(substr), std::string::npos) << s_.ToString(); \
  } while (0)

TEST_F(SoftwareTpmTest, GoodQuoteVerifies) {
  auto v = VerifyQuote(*ak_, nonce_, pcrs_, MakeQuote(pcrs_, pcr_values_));
  ASSERT_OK(v);
  EXPECT_EQ(v->pcr_indices, pcrs_);
  EXPECT_EQ(v->pcr_values, pcr_values_);
}

TEST_F(SoftwareTpmTest, FlippedSignatureByteIsBadSignature) {
  QuoteEvidence q = MakeQuote(pcrs_, pcr_values_);
  q.signature.back() ^= 1;
  EXPECT_REASON(VerifyQuote(*ak_, nonce_, pcrs_, q), Reason::kBadSignature, "quote signature");
}

TEST_F(SoftwareTpmTest, OtherNonceIsNonceMismatch) {
  Bytes other(32, 0x11);
  EXPECT_REASON(VerifyQuote(*ak_, other, pcrs_, MakeQuote(pcrs_, pcr_values_)),
                Reason::kNonceMismatch, "extraData");
}

TEST_F(SoftwareTpmTest, ShortIssuedNonceIsRefused) {
  Bytes short_nonce(8, 0x5a);
  EXPECT_STATUS(VerifyQuote(*ak_, short_nonce, pcrs_, MakeQuote(pcrs_, pcr_values_)),
                StatusCode::kInvalidArgument, "16..64 bytes");
}

TEST_F(SoftwareTpmTest, OtherSelectionIsSelectionMismatch) {
  std::vector<uint32_t> asked = {0, 7};
  EXPECT_REASON(VerifyQuote(*ak_, nonce_, asked, MakeQuote(pcrs_, pcr_values_)),
                Reason::kPcrSelectionMismatch, "SHA-256 selection");
}

TEST_F(SoftwareTpmTest, AlteredPcrValueIsDigestMismatch) {
  QuoteEvidence q = MakeQuote(pcrs_, pcr_values_);
  q.pcr_values[1][0] ^= 0x80;
  EXPECT_REASON(VerifyQuote(*ak_, nonce_, pcrs_, q), Reason::kPcrDigestMismatch, "pcrDigest");
}

TEST_F(SoftwareTpmTest, WrongPcrValueCountIsMalformed) {
  QuoteEvidence q = MakeQuote(pcrs_, pcr_values_);
  q.pcr_values.pop_back();
  EXPECT_REASON(VerifyQuote(*ak_, nonce_, pcrs_, q), Reason::kMalformedEvidence, "count");
}

TEST_F(SoftwareTpmTest, GoodCertifyExportsBindingKey) {
  TPMT_PUBLIC pub = PublicFor(bind_key_.get(), false);
  auto v = VerifyCertify(*ak_, nonce_, MakeCertify(pub));
  ASSERT_OK(v);
  EXPECT_EQ(v->modulus, B(pub.unique.rsa));
  EXPECT_EQ(v->exponent, 65537u);
  EXPECT_NE(v->SpkiPem().find("BEGIN PUBLIC KEY"), std::string::npos);
}

TEST_F(SoftwareTpmTest, CertifyOfOtherKeyIsNotCertified) {
  CertifyEvidence c = MakeCertify(PublicFor(bind_key_.get(), false));
  EvpPkeyPtr other = NewRsaKey();
  c.key_public = Marshal(PublicFor(other.get(), false));
  EXPECT_REASON(VerifyCertify(*ak_, nonce_, c), Reason::kBindingKeyNotCertified, "different key");
}

TEST_F(SoftwareTpmTest, CertifiedSigningKeyHasWrongAttributes) {
  EXPECT_REASON(VerifyCertify(*ak_, nonce_, MakeCertify(PublicFor(bind_key_.get(), true))),
                Reason::kBindingKeyAttributes, "not restricted");
}

TEST_F(SoftwareTpmTest, CertifiedKeyWithoutOaepSchemeHasWrongAttributes) {
  TPMT_PUBLIC pub = PublicFor(bind_key_.get(), false);
  pub.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
  EXPECT_REASON(VerifyCertify(*ak_, nonce_, MakeCertify(pub)), Reason::kBindingKeyAttributes,
                "OAEP-SHA256");
}

TEST_F(SoftwareTpmTest, QuoteOfferedAsCertifyIsMalformed) {
  QuoteEvidence q = MakeQuote(pcrs_, pcr_values_);
  CertifyEvidence c = MakeCertify(PublicFor(bind_key_.get(), false));
  c.attest = q.attest;
  c.signature = q.signature;
  EXPECT_REASON(VerifyCertify(*ak_, nonce_, c), Reason::kMalformedEvidence, "type");
}

TEST_F(SoftwareTpmTest, AkThatCanDecryptIsRejected) {
  TPMT_PUBLIC pub = PublicFor(ak_key_.get(), true);
  pub.objectAttributes |= TPMA_OBJECT_DECRYPT;
  EXPECT_REASON(AkPublic::Parse(Marshal(pub)), Reason::kAkAttributes, "restricted signing");
}

TEST_F(SoftwareTpmTest, EvidenceJsonRoundTrips) {
  Evidence e;
  e.nonce = nonce_;
  e.pcr_selection = pcrs_;
  e.quote = MakeQuote(pcrs_, pcr_values_);
  e.certify = MakeCertify(PublicFor(bind_key_.get(), false));
  auto back = EvidenceFromJson(EvidenceToJson(e));
  ASSERT_OK(back);
  ASSERT_OK(VerifyEvidence(*ak_, nonce_, pcrs_, *back));
}

// --- Malformed bytes: no key needed. ---

TEST(ParseAttestTest, EmptyIsTruncated) {
  EXPECT_STATUS(ParseAttest({}, kAttestTypeQuote), StatusCode::kInvalidArgument,
                "malformed_evidence: attestation truncated");
}

TEST(ParseAttestTest, WrongMagicIsRejected) {
  Bytes b = {0xff, 0x54, 0x43, 0x48, 0x80, 0x18, 0, 0};
  EXPECT_STATUS(ParseAttest(b, kAttestTypeQuote), StatusCode::kInvalidArgument, "magic");
}

TEST(ParseAttestTest, WrongTypeIsRejected) {
  Bytes b = {0xff, 0x54, 0x43, 0x47, 0x80, 0x17, 0, 0};
  EXPECT_STATUS(ParseAttest(b, kAttestTypeQuote), StatusCode::kInvalidArgument,
                "wrong attestation type");
}

TEST(ParseAttestTest, EveryTruncationIsRejected) {
  TPMS_ATTEST a;
  std::memset(&a, 0, sizeof(a));
  a.magic = kTpmGeneratedMagic;
  a.type = kAttestTypeQuote;
  a.extraData.size = 32;
  a.attested.quote.pcrSelect = MakePcrSelection({0, 1}).value();
  a.attested.quote.pcrDigest.size = 32;
  Bytes full = MarshalAttest(a);
  ASSERT_OK(ParseAttest(full, kAttestTypeQuote));
  for (size_t n = 0; n < full.size(); ++n) {
    SCOPED_TRACE(n);
    auto r = ParseAttest(std::span(full.data(), n), kAttestTypeQuote);
    EXPECT_EQ(ReasonOf(r.status()), Reason::kMalformedEvidence);
  }
  full.push_back(0);
  EXPECT_STATUS(ParseAttest(full, kAttestTypeQuote), StatusCode::kInvalidArgument, "trailing");
}

TEST(ParsePublicTest, GarbageIsMalformed) {
  Bytes b = {0x00, 0x01, 0x00};
  EXPECT_STATUS(ParsePublic(b), StatusCode::kInvalidArgument, "public area");
}

TEST(ParseSignatureTest, NonRsassaIsMalformed) {
  Bytes b = {0x00, 0x10};  // TPM_ALG_NULL
  EXPECT_STATUS(ParseSignature(b), StatusCode::kInvalidArgument, "signature");
}

TEST(EvidenceJsonTest, NotJsonIsMalformed) {
  EXPECT_STATUS(EvidenceFromJson("{nope"), StatusCode::kInvalidArgument, "not a JSON object");
}

TEST(EvidenceJsonTest, BadBase64IsMalformed) {
  EXPECT_STATUS(EnrollmentRequestFromJson(R"({"ek_certificate":"!!","ak_public":""})"),
                StatusCode::kInvalidArgument, "bad base64 in field ek_certificate");
}

TEST(EvidenceJsonTest, PcrIndexOutOfRangeIsMalformed) {
  EXPECT_STATUS(
      EvidenceFromJson(R"({"version":1,"pcr_bank":"sha256","nonce":"","pcr_selection":[24]})"),
      StatusCode::kInvalidArgument, "out of range");
}

TEST(ReasonTest, NamesRoundTrip) {
  for (Reason r : {Reason::kMalformedEvidence, Reason::kBadSignature, Reason::kNonceMismatch,
                   Reason::kPcrSelectionMismatch, Reason::kPcrDigestMismatch,
                   Reason::kBindingKeyNotCertified, Reason::kBindingKeyAttributes,
                   Reason::kAkAttributes, Reason::kEkChainInvalid, Reason::kCredentialMismatch}) {
    EXPECT_EQ(ReasonOf(AttestFailure(r, "x")), r) << ReasonName(r);
  }
  EXPECT_EQ(ReasonOf(InternalError("bad_signature")), Reason::kNone);
}

TEST(MakeCredentialTest, RejectsNonShaName) {
  EvpPkeyPtr ek = NewRsaKey();
  Bytes name(34, 0);
  EXPECT_STATUS(MakeCredential(ek.get(), name, SecretBytes::Random(32)),
                StatusCode::kInvalidArgument, "SHA-256 name");
}

TEST(MakeCredentialTest, ProducesTpmSizedOutputs) {
  EvpPkeyPtr ek = NewRsaKey();
  Bytes name(34, 0);
  name[1] = 0x0B;
  auto c = MakeCredential(ek.get(), name, SecretBytes::Random(32));
  ASSERT_OK(c);
  EXPECT_EQ(c->encrypted_secret.size(), 256u);
  EXPECT_EQ(c->credential_blob.size(), 2u + 32u + 2u + 32u);
}

TEST(CheckActivationTest, DifferentAnswerIsCredentialMismatch) {
  SecretBytes issued = SecretBytes::Random(32);
  EXPECT_OK(CheckActivation(issued, issued.Clone()));
  EXPECT_STATUS(CheckActivation(issued, SecretBytes::Random(32)), StatusCode::kPermissionDenied,
                "credential_mismatch");
}

// A CA and an EK-like leaf signed by it, with one extra critical extension.
struct TestPki {
  EvpPkeyPtr ca_key = NewRsaKey();
  EvpPkeyPtr leaf_key = NewRsaKey();
  crypto::X509Ptr ca{X509_new()};
  crypto::X509Ptr leaf{X509_new()};

  static void Fill(X509* c, EVP_PKEY* key, const char* cn, long serial) {
    X509_set_version(c, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(c), serial);
    X509_gmtime_adj(X509_getm_notBefore(c), -60);
    X509_gmtime_adj(X509_getm_notAfter(c), 3600);
    X509_set_pubkey(c, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
  }
  static void AddExt(X509* c, X509* issuer, int nid, const char* value) {
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, c, nullptr, nullptr, 0);
    crypto::X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
    X509_add_ext(c, ext.get(), -1);
  }

  TestPki(const char* critical_oid) {
    Fill(ca.get(), ca_key.get(), "test manufacturer CA", 1);
    X509_set_issuer_name(ca.get(), X509_get_subject_name(ca.get()));
    AddExt(ca.get(), ca.get(), NID_basic_constraints, "critical,CA:TRUE");
    AddExt(ca.get(), ca.get(), NID_key_usage, "critical,keyCertSign");
    X509_sign(ca.get(), ca_key.get(), EVP_sha256());
    Fill(leaf.get(), leaf_key.get(), "ek", 2);
    X509_set_issuer_name(leaf.get(), X509_get_subject_name(ca.get()));
    AddExt(leaf.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE");
    if (critical_oid != nullptr) {
      ASN1_OBJECT* obj = OBJ_txt2obj(critical_oid, 1);
      ASN1_OCTET_STRING* data = ASN1_OCTET_STRING_new();
      const unsigned char empty_seq[] = {0x30, 0x00};
      ASN1_OCTET_STRING_set(data, empty_seq, sizeof(empty_seq));
      crypto::X509ExtensionPtr ext(X509_EXTENSION_create_by_OBJ(nullptr, obj, 1, data));
      X509_add_ext(leaf.get(), ext.get(), -1);
      ASN1_OBJECT_free(obj);
      ASN1_OCTET_STRING_free(data);
    }
    X509_sign(leaf.get(), ca_key.get(), EVP_sha256());
  }
  std::string CaPem() const {
    crypto::BioPtr bio(BIO_new(BIO_s_mem()));
    PEM_write_bio_X509(bio.get(), ca.get());
    char* p = nullptr;
    long n = BIO_get_mem_data(bio.get(), &p);
    return std::string(p, static_cast<size_t>(n));
  }
  Bytes LeafDer() const {
    unsigned char* p = nullptr;
    int n = i2d_X509(leaf.get(), &p);
    Bytes out(p, p + n);
    OPENSSL_free(p);
    return out;
  }
};

TEST(EkCertificateVerifierTest, PlainLeafVerifies) {
  TestPki pki(nullptr);
  auto v = EkCertificateVerifier::Create(pki.CaPem());
  ASSERT_OK(v);
  EXPECT_OK((*v)->Verify(pki.LeafDer()));
}

TEST(EkCertificateVerifierTest, CriticalSubjectDirectoryAttributesIsAccepted) {
  TestPki pki("2.5.29.9");
  auto v = EkCertificateVerifier::Create(pki.CaPem());
  ASSERT_OK(v);
  EXPECT_OK((*v)->Verify(pki.LeafDer()));
}

TEST(EkCertificateVerifierTest, OtherUnknownCriticalExtensionIsRejected) {
  TestPki pki("1.3.6.1.4.1.99999.1");
  auto v = EkCertificateVerifier::Create(pki.CaPem());
  ASSERT_OK(v);
  EXPECT_STATUS((*v)->Verify(pki.LeafDer()), StatusCode::kPermissionDenied,
                "ek_chain_invalid: EK certificate: unhandled critical extension");
}

TEST(EkCertificateVerifierTest, TrailingBytesAreMalformed) {
  TestPki pki(nullptr);
  auto v = EkCertificateVerifier::Create(pki.CaPem());
  ASSERT_OK(v);
  Bytes der = pki.LeafDer();
  der.push_back(0xff);
  EXPECT_STATUS((*v)->Verify(der), StatusCode::kInvalidArgument, "one DER certificate");
}

TEST(EkCertificateVerifierTest, EmptyBundleIsRejected) {
  EXPECT_STATUS(EkCertificateVerifier::Create(""), StatusCode::kInvalidArgument, "no PEM");
}

}  // namespace
}  // namespace vmseal::attest
