#include "kms/service.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>

#include "attest/testing/software_tpm.h"
#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/ssl_util.h"
#include "ovf/manifest.h"
#include "ovf/descriptor.h"
#include "ovf/package_format.h"
#include "ovf/policy_document.h"
#include "ovf/signature.h"
#include "ovf/testing/signed_texts.h"
#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

using testing::TempDir;

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.File("kms.db"));
    ASSERT_OK(store);
    store_ = *std::move(store);
    auto kek = KekFromBytes(SecretBytes::Random(kKekBytes));
    ASSERT_OK(kek);
    kek_ = *std::move(kek);
    auto ca = internal::CreateRootCa("test kms ca", 30);
    ASSERT_OK(ca);
    ca_pem_ = ca->cert_pem;
    ca_key_pem_ = ca->key_pem.Clone();
    KmsService::Options options;
    options.clock = [this] { return now_; };
    auto service = KmsService::Create(options, store_.get(), kek_.get(), *std::move(ca));
    ASSERT_OK(service);
    service_ = *std::move(service);
  }

  static Caller As(Caller::Role role, const std::string& name) { return {role, name, "fp"}; }

  // A signing key made "on the customer's machine" and its request with a
  // proof of possession.
  static SigningKeyRequest SigningRequest(const std::string& tenant, const crypto::PrivateKey& key) {
    auto proof = crypto::Sign(key, crypto::SignatureDigest::kSha256,
                              ovf::SigningKeyProofMessage(key.Public()));
    EXPECT_OK(proof);
    return {tenant, key.Public().ToPem(), proof.ok() ? *proof : crypto::Bytes()};
  }

  TempDir dir_;
  int64_t now_ = 1000;
  std::string ca_pem_;
  SecretBytes ca_key_pem_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<KeyEncryptionKey> kek_;
  std::unique_ptr<KmsService> service_;
};

TEST_F(ServiceTest, PortalCreatesRsaKeyByDefault) {
  auto key = service_->CreateCustomerKey(As(Caller::Role::kPortal, "p"), {"acme", ""});
  ASSERT_OK(key);
  EXPECT_EQ(key->algorithm, "RSA-3072");
  EXPECT_EQ(key->key_id.rfind("k-", 0), 0u);
  crypto::BioPtr bio(BIO_new_mem_buf(key->public_key_pem.data(), -1));
  crypto::EvpPkeyPtr pub(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  ASSERT_NE(pub, nullptr);
  EXPECT_EQ(EVP_PKEY_get_bits(pub.get()), 3072);
}

TEST_F(ServiceTest, CertificateChainsToCaAndCertifiesThePublicKey) {
  auto key = service_->CreateCustomerKey(As(Caller::Role::kPortal, "p"), {"acme", "X25519"});
  ASSERT_OK(key);
  crypto::BioPtr cbio(BIO_new_mem_buf(key->cert_pem.data(), -1));
  crypto::X509Ptr cert(PEM_read_bio_X509(cbio.get(), nullptr, nullptr, nullptr));
  crypto::BioPtr abio(BIO_new_mem_buf(ca_pem_.data(), -1));
  crypto::X509Ptr ca(PEM_read_bio_X509(abio.get(), nullptr, nullptr, nullptr));
  ASSERT_NE(cert, nullptr);
  ASSERT_NE(ca, nullptr);
  EXPECT_EQ(X509_verify(cert.get(), X509_get0_pubkey(ca.get())), 1);
  crypto::BioPtr pbio(BIO_new_mem_buf(key->public_key_pem.data(), -1));
  crypto::EvpPkeyPtr pub(PEM_read_bio_PUBKEY(pbio.get(), nullptr, nullptr, nullptr));
  EXPECT_EQ(EVP_PKEY_eq(X509_get0_pubkey(cert.get()), pub.get()), 1);
}

TEST_F(ServiceTest, PrivateKeyStoredOnlyWrappedAndBoundToIds) {
  auto key = service_->CreateCustomerKey(As(Caller::Role::kPortal, "p"), {"acme", "X25519"});
  ASSERT_OK(key);
  auto rec = store_->GetCustomerKey(key->key_id);
  ASSERT_OK(rec);
  auto wrapped = crypto::Base64Decode(rec->wrapped_private_key);
  ASSERT_OK(wrapped);
  std::string blob(wrapped->begin(), wrapped->end());
  auto der = kek_->Unwrap(blob, CustomerKeyAad(key->key_id, "acme"));
  ASSERT_OK(der);
  const unsigned char* p = der->UnsafeData();
  crypto::EvpPkeyPtr priv(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der->size())));
  ASSERT_NE(priv, nullptr);
  EXPECT_TRUE(EVP_PKEY_is_a(priv.get(), "X25519"));
  EXPECT_STATUS(kek_->Unwrap(blob, CustomerKeyAad(key->key_id, "other")),
                StatusCode::kUnauthenticated, "decryption failed");
}

TEST_F(ServiceTest, KeyCreationIsAudited) {
  ASSERT_OK(service_->CreateCustomerKey(As(Caller::Role::kPortal, "p"), {"acme", "X25519"}));
  auto recs = store_->ReadAudit(0, 10);
  ASSERT_OK(recs);
  ASSERT_EQ(recs->size(), 3u);
  // The service's first start on this store created its nonce and log keys.
  EXPECT_NE((*recs)[0].record.find("kms.nonce_key.create"), std::string::npos);
  EXPECT_NE((*recs)[1].record.find("kms.audit_log_key.create"), std::string::npos);
  EXPECT_NE((*recs)[2].record.find("customer_key.create"), std::string::npos);
  EXPECT_OK(VerifyStoreAudit(*store_));
}

TEST_F(ServiceTest, HostCannotCreateKeysAndDenialIsAudited) {
  EXPECT_STATUS(service_->CreateCustomerKey(As(Caller::Role::kHost, "h1"), {"acme", ""}),
                StatusCode::kPermissionDenied, "portal role");
  auto recs = store_->ReadAudit(2, 10);  // after the nonce and log keys' creation
  ASSERT_OK(recs);
  ASSERT_EQ(recs->size(), 1u);
  EXPECT_NE((*recs)[0].record.find("wrong_role"), std::string::npos);
  EXPECT_NE(service_->metrics().Render().find("reason=\"wrong_role\"} 1"), std::string::npos);
}

TEST_F(ServiceTest, AnonymousCannotCreateKeys) {
  EXPECT_STATUS(service_->CreateCustomerKey(Caller{}, {"acme", ""}), StatusCode::kUnauthenticated,
                "client certificate");
}

TEST_F(ServiceTest, BadCustomerIdRefused) {
  EXPECT_STATUS(service_->CreateCustomerKey(As(Caller::Role::kPortal, "p"), {"../etc", ""}),
                StatusCode::kInvalidArgument, "customer id");
}

TEST_F(ServiceTest, UnknownAlgorithmRefused) {
  EXPECT_STATUS(service_->CreateCustomerKey(As(Caller::Role::kPortal, "p"), {"acme", "RSA-1024"}),
                StatusCode::kInvalidArgument, "algorithm");
}

TEST_F(ServiceTest, OtherCustomersKeyIsNotFound) {
  auto key = service_->CreateCustomerKey(As(Caller::Role::kPortal, "p"), {"acme", "X25519"});
  ASSERT_OK(key);
  EXPECT_OK(service_->GetCustomerKey(As(Caller::Role::kPortal, "p"), "acme", key->key_id));
  EXPECT_STATUS(service_->GetCustomerKey(As(Caller::Role::kPortal, "p"), "evil", key->key_id),
                StatusCode::kNotFound, "unknown key");
}

TEST_F(ServiceTest, HostGetsNonceForItselfOnly) {
  auto n = service_->IssueNonce(As(Caller::Role::kHost, "h1"), "h1");
  ASSERT_OK(n);
  EXPECT_EQ(n->nonce.size(), 64u);
  EXPECT_EQ(n->expires_unix, now_ + 60);
  EXPECT_EQ(n->nonce.substr(0, 16), "00000000000003e8");  // the issue time, 1000
  auto again = service_->IssueNonce(As(Caller::Role::kHost, "h1"), "h1");
  ASSERT_OK(again);
  EXPECT_NE(again->nonce, n->nonce);
  EXPECT_STATUS(service_->IssueNonce(As(Caller::Role::kHost, "h1"), "h2"),
                StatusCode::kPermissionDenied, "itself");
}

TEST_F(ServiceTest, AuditReadRequiresOperator) {
  EXPECT_STATUS(service_->ReadAudit(As(Caller::Role::kPortal, "p"), 0, 10),
                StatusCode::kPermissionDenied, "operator role");
  EXPECT_OK(service_->ReadAudit(As(Caller::Role::kOperator, "op"), 0, 10));
  EXPECT_OK(service_->VerifyAudit(As(Caller::Role::kOperator, "op")));
}


// Every new route refuses callers of the wrong role, and each refusal is audited.
TEST_F(ServiceTest, WrongRolesAreRefused) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  const Caller host = As(Caller::Role::kHost, "h1");
  const Caller other_host = As(Caller::Role::kHost, "h2");
  const Caller op = As(Caller::Role::kOperator, "op");
  attest::EnrollmentRequest enroll;
  attest::Evidence ev;
  ReleaseRequest rel;
  const auto denied = StatusCode::kPermissionDenied;
  EXPECT_STATUS(service_->BeginEnrollment(portal, "h1", enroll), denied, "host role");
  EXPECT_STATUS(service_->BeginEnrollment(other_host, "h1", enroll), denied, "wrong_host");
  EXPECT_STATUS(service_->CompleteEnrollment(op, "h1", SecretBytes::Random(32)), denied, "host role");
  EXPECT_STATUS(service_->Attest(portal, "h1", ev), denied, "host role");
  EXPECT_STATUS(service_->Attest(other_host, "h1", ev), denied, "wrong_host");
  EXPECT_STATUS(service_->Release(op, "h1", rel), denied, "host role");
  EXPECT_STATUS(service_->Release(other_host, "h1", rel), denied, "wrong_host");
  EXPECT_STATUS(service_->ListHosts(host), denied, "role");
  EXPECT_STATUS(service_->ListVerdicts(host, "h1", 0), denied, "role");
  EXPECT_STATUS(service_->SetHostTags(portal, "h1", {"a=b"}), denied, "operator role");
  EXPECT_STATUS(service_->PlacementCheck(op, {"acme", "img", {"h1"}}), denied, "portal role");
  EXPECT_STATUS(service_->PutFlavor(portal, {"f", {}}), denied, "operator role");
  EXPECT_STATUS(service_->ListFlavors(host), denied, "role");
  EXPECT_STATUS(service_->FlavorFromHost(portal, "f", "h1"), denied, "operator role");
  EXPECT_STATUS(service_->PutPolicy(host, {"acme", "", {}}), denied, "role");
  EXPECT_STATUS(service_->GetPolicy(host, "acme", ""), denied, "role");
  EXPECT_STATUS(service_->ListHosts(Caller{}), StatusCode::kUnauthenticated, "client certificate");
  auto recs = store_->ReadAudit(2, 100);  // after the nonce and log keys' creation
  ASSERT_OK(recs);
  EXPECT_EQ(recs->size(), 17u);
  EXPECT_OK(VerifyStoreAudit(*store_));
}

TEST_F(ServiceTest, EnrollmentWithoutCaBundleIsRefused) {
  attest::EnrollmentRequest enroll;
  EXPECT_STATUS(service_->BeginEnrollment(As(Caller::Role::kHost, "h1"), "h1", enroll),
                StatusCode::kFailedPrecondition, "CA bundle");
}

TEST_F(ServiceTest, ActivationWithoutPendingEnrollmentIsNotEnrolled) {
  EXPECT_STATUS(service_->CompleteEnrollment(As(Caller::Role::kHost, "h1"), "h1",
                                             SecretBytes::Random(32)),
                StatusCode::kPermissionDenied, "not_enrolled");
}

TEST_F(ServiceTest, UnenrolledHostAttestationIsRefused) {
  attest::Evidence ev;
  ev.nonce = crypto::Bytes(32, 1);
  EXPECT_STATUS(service_->Attest(As(Caller::Role::kHost, "h1"), "h1", ev),
                StatusCode::kPermissionDenied, "not_enrolled");
}

TEST_F(ServiceTest, PoliciesAreValidatedStoredAndFallBackToDefault) {
  const Caller op = As(Caller::Role::kOperator, "op");
  const Caller portal = As(Caller::Role::kPortal, "p");
  EXPECT_STATUS(service_->PutPolicy(op, {"acme", "", {{"flavors", {{"someOf", {"x"}}}}}}),
                StatusCode::kInvalidArgument, "flavors");
  EXPECT_STATUS(service_->GetPolicy(op, "acme", ""), StatusCode::kNotFound, "no release policy");
  nlohmann::json p = {{"flavors", {{"anyOf", {"good"}}}}, {"required_tags", {"region=eu"}}};
  ASSERT_OK(service_->PutPolicy(op, {"acme", "", p}));
  nlohmann::json q = {{"flavors", {{"allOf", {"good", "os"}}}}};
  ASSERT_OK(service_->PutPolicy(op, {"acme", "img-1", q}));
  auto got = service_->GetPolicy(portal, "acme", "img-1");
  ASSERT_OK(got);
  EXPECT_EQ(got->policy, q);
  got = service_->GetPolicy(portal, "acme", "img-2");
  ASSERT_OK(got);
  EXPECT_EQ(got->policy, p);
}

TEST_F(ServiceTest, FlavorsAreValidatedAndNormalized) {
  const Caller op = As(Caller::Role::kOperator, "op");
  EXPECT_STATUS(service_->PutFlavor(op, {"bad", {{"sha256", {{"0", "xyz"}}}}}),
                StatusCode::kInvalidArgument, "64 hex");
  ASSERT_OK(service_->PutFlavor(op, {"good", {{"sha256", {{"7", std::string(64, 'A')}}}}}));
  auto list = service_->ListFlavors(As(Caller::Role::kPortal, "p"));
  ASSERT_OK(list);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].pcrs["sha256"]["7"], std::string(64, 'a'));
  EXPECT_STATUS(service_->FlavorFromHost(op, "f2", "h-none"), StatusCode::kFailedPrecondition,
                "no trusted verdict");
}

TEST_F(ServiceTest, PlacementCheckFailsClosed) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  auto r = service_->PlacementCheck(portal, {"acme", "img-1", {"h1"}});
  ASSERT_OK(r);
  ASSERT_EQ(r->size(), 1u);
  EXPECT_FALSE((*r)[0].eligible);
  EXPECT_EQ((*r)[0].reason, "no_policy");
  ASSERT_OK(service_->PutPolicy(As(Caller::Role::kOperator, "op"),
                                {"_default", "", {{"flavors", {{"anyOf", {"good"}}}}}}));
  r = service_->PlacementCheck(portal, {"acme", "img-1", {"h1"}});
  ASSERT_OK(r);
  EXPECT_EQ((*r)[0].reason, "not_enrolled");
}

// Releases to a host "h1" enrolled with a software TPM whose PCRs are the
// only flavor of the tenant's policy: every check up to the customer key
// passes, so each test is about the key, its wrap and its label.
class ReleaseTest : public ServiceTest {
 protected:
  static constexpr char kTenant[] = "acme";

  void SetUp() override {
    ServiceTest::SetUp();
    auto tpm = attest::testing::SoftwareTpm::Create();
    ASSERT_OK(tpm);
    tpm_ = std::make_unique<attest::testing::SoftwareTpm>(*std::move(tpm));
    // Enrollment is tested with a real TPM (kms_release_test); here the AK is
    // recorded as activated directly.
    ASSERT_OK(store_->PutHost({"h1", "", crypto::Base64Encode(tpm_->ak_public()), true, {}, now_},
                              {"host.enroll.test", "host/h1"}));
    pcr_values_ = {crypto::Bytes(32, 0x10), crypto::Bytes(32, 0x17)};
    const Caller op = As(Caller::Role::kOperator, "op");
    const nlohmann::json pcrs = {{"0", crypto::HexEncode(pcr_values_[0])},
                                 {"7", crypto::HexEncode(pcr_values_[1])}};
    ASSERT_OK(service_->PutFlavor(op, {"good", {{"sha256", pcrs}}}));
    ASSERT_OK(service_->PutPolicy(op, {kTenant, "", {{"flavors", {{"anyOf", {"good"}}}}}}));
    // h1 has attested once, as a host does before the portal places jobs on
    // it: grants are checked against the policy on its latest verdict.
    {
      auto nonce = service_->IssueNonce(As(Caller::Role::kHost, "h1"), "h1");
      ASSERT_OK(nonce);
      auto raw = crypto::HexDecode(nonce->nonce);
      ASSERT_OK(raw);
      auto verdict = service_->Attest(As(Caller::Role::kHost, "h1"), "h1",
                                      tpm_->Attest(*raw, {0, 7}, pcr_values_));
      ASSERT_OK(verdict);
      ASSERT_TRUE(verdict->trusted) << verdict->reason;
    }
    // The tenant's signing key, registered through the portal with its
    // proof (the KMS certifies it once the tenant has a customer key).
    auto signing = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
    ASSERT_OK(signing);
    signing_key_ = std::make_unique<crypto::PrivateKey>(*std::move(signing));
    ASSERT_OK(service_->CreateCustomerKey(As(Caller::Role::kPortal, "p"), {kTenant, "X25519"}));
    auto info = service_->RegisterSigningKey(As(Caller::Role::kPortal, "p"),
                                             SigningRequest(kTenant, *signing_key_));
    ASSERT_OK(info);
    signing_chain_ = info->cert_pem;
  }

  // Signs the request's descriptor as the customer would have (`signer`
  // null: leaves the request unsigned).
  void Sign(ReleaseRequest* r, const crypto::PrivateKey* signer, const std::string& chain) {
    ovf::EncryptionTag tag;
    tag.image_id = r->image_id;
    tag.tenant = r->tenant;
    tag.key_id = r->key_id;
    tag.key_version = r->key_version;
    tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
    ovf::WrappedKey key{r->wrap_algorithm, r->oaep_label, r->wrapped_key};
    auto texts = ovf::testing::MakeSignedTexts(tag, key, signer, chain, descriptor_policy_);
    ASSERT_OK(texts);
    r->descriptor_name = texts->descriptor_name;
    r->descriptor = texts->descriptor;
    r->manifest = texts->manifest;
    r->package_cert = texts->certificate;
  }

  // A customer key of the tenant ("RSA-3072" or "X25519") and its public half.
  crypto::PublicKey NewCustomerKey(const std::string& algorithm) {
    auto info = service_->CreateCustomerKey(As(Caller::Role::kPortal, "p"), {kTenant, algorithm});
    EXPECT_OK(info);
    auto pub = crypto::PublicKey::FromPem(info.ok() ? info->public_key_pem : "");
    EXPECT_OK(pub);
    // Each key the tenant gets is its next version (SetUp made version 1):
    // a package names the version of the key it is wrapped to.
    if (info.ok() && pub.ok()) {
      versions_[pub->KeyId()] = static_cast<uint64_t>(info->version);
      last_version_ = static_cast<uint64_t>(info->version);
    }
    return *std::move(pub);
  }
  uint64_t VersionOf(const crypto::PublicKey& customer) const {
    auto it = versions_.find(customer.KeyId());
    return it == versions_.end() ? 1 : it->second;
  }

  // The package label of `image_id` (docs/format/package.md §5).
  // Under the version of the newest key NewCustomerKey made.
  crypto::Bytes Label(const std::string& image_id) const { return Label(image_id, last_version_); }
  static crypto::Bytes Label(const std::string& image_id, uint64_t key_version) {
    ovf::EncryptionTag tag;
    tag.image_id = image_id;
    tag.tenant = kTenant;
    tag.key_version = key_version;
    tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
    return ovf::OaepLabel(tag);
  }

  // A release request for `image_id` as a host sends it for a package whose
  // data key `data_key` is wrapped to `customer` under `wrap_label`, with
  // fresh evidence over a nonce the KMS issued.
  ReleaseRequest Request(const std::string& image_id, const crypto::PublicKey& customer,
                         const SecretBytes& data_key, const crypto::Bytes& wrap_label) {
    ReleaseRequest r;
    r.image_id = image_id;
    r.tenant = kTenant;
    r.key_id = "sha256:" + customer.KeyId();
    // The portal registered the image at upload and granted this launch.
    r.job_id = "job-" + std::to_string(++jobs_);
    r.key_version = VersionOf(customer);
    r.wrap_algorithm = std::string(customer.type() == crypto::KeyType::kX25519
                                       ? ovf::kX25519WrapUri
                                       : ovf::kRsaOaepUri);
    r.oaep_label = Label(image_id, r.key_version);
    auto wrapped = crypto::WrapKey(customer, data_key, crypto::AsStringView(wrap_label));
    EXPECT_OK(wrapped);
    if (wrapped.ok()) r.wrapped_key = *wrapped;
    auto nonce = service_->IssueNonce(As(Caller::Role::kHost, "h1"), "h1");
    EXPECT_OK(nonce);
    auto raw = crypto::HexDecode(nonce.ok() ? nonce->nonce : "");
    EXPECT_OK(raw);
    if (raw.ok()) r.evidence = tpm_->Attest(*raw, {0, 7}, pcr_values_);
    Sign(&r, signing_key_.get(), signing_chain_);
    // The portal registered the image at upload, with its signed metadata,
    // and granted this launch.
    if (grant_each_request_) {
      const Caller portal = As(Caller::Role::kPortal, "p");
      EXPECT_OK(service_->RegisterImage(portal, {kTenant, image_id, r.key_id, 0},
                                        {r.descriptor_name, r.descriptor, r.manifest, r.package_cert}));
      // Checked against the image's policy on h1's latest verdict: tests of
      // a host the policy excludes read last_grant_.
      last_grant_ = service_->CreateGrant(portal, {r.job_id, image_id, kTenant, "h1", 60}).status();
      if (expect_grants_) {
        EXPECT_OK(last_grant_);
      }
    }
    return r;
  }
  ReleaseRequest Request(const std::string& image_id, const crypto::PublicKey& customer,
                         const SecretBytes& data_key) {
    return Request(image_id, customer, data_key, Label(image_id, VersionOf(customer)));
  }

  StatusOr<ReleaseResponse> Release(const ReleaseRequest& r) {
    return service_->Release(As(Caller::Role::kHost, "h1"), "h1", r);
  }

  // A policy document of (tenant, image_id) at `version`, signed by
  // `signer` (default: the tenant's registered key), as `customer
  // set-policy` makes it.
  SignedPolicyRequest SignedPolicy(const std::string& image_id, uint64_t version,
                                   const nlohmann::json& policy,
                                   const crypto::PrivateKey* signer = nullptr,
                                   const std::string& tenant = kTenant) {
    ovf::PolicyDocument d{tenant, image_id, version, "2026-12-06T02:00:00Z", policy};
    auto bytes = ovf::SerializePolicyDocument(d);
    EXPECT_OK(bytes);
    auto sig = ovf::SignPolicyDocument(bytes.ok() ? *bytes : "", signer ? *signer : *signing_key_);
    EXPECT_OK(sig);
    return {tenant, image_id, bytes.ok() ? *bytes : "", sig.ok() ? *sig : crypto::Bytes{}};
  }
  // The "policy" of the last release.grant record.
  std::string GrantedPolicy() {
    const std::string audit = AuditText();
    const size_t grant = audit.rfind("\"release.grant\"");
    if (grant == std::string::npos) return "(no grant)";
    const size_t begin = audit.rfind('\n', grant) + 1;  // npos + 1 == 0 for the first line
    auto rec = nlohmann::json::parse(audit.substr(begin, audit.find('\n', grant) - begin), nullptr, false);
    return rec.is_object() && rec.contains("details") ? rec["details"].value("policy", "") : "(bad record)";
  }
  // Records of `event` with "reason" `reason` in the audit log.
  int Audited(const std::string& event, const std::string& reason) {
    auto recs = store_->ReadAudit(0, 1000);
    EXPECT_OK(recs);
    int n = 0;
    for (const auto& r : recs.ok() ? *recs : std::vector<AuditRecord>{}) {
      auto rec = nlohmann::json::parse(r.record, nullptr, false);
      if (rec.is_object() && rec.value("event", "") == event && rec.contains("details") &&
          rec["details"].value("reason", "") == reason) {
        ++n;
      }
    }
    return n;
  }

  std::string descriptor_policy_;  // the signed descriptor's release policy; "" = none
  // The same request, without its signature, to a KMS on the same store
  // configured not to require signatures: the checks behind the signature's
  // for inputs no valid signed descriptor can carry.
  StatusOr<ReleaseResponse> ReleaseWhereUnsignedIsAllowed(ReleaseRequest r) {
    KmsService::Options lax;
    lax.clock = [this] { return now_; };
    lax.require_package_signature = false;
    auto kms = KmsService::Create(lax, store_.get(), kek_.get(), {ca_pem_, ca_key_pem_.Clone()});
    if (!kms.ok()) return kms.status();
    r.package_cert.clear();
    return (*kms)->Release(As(Caller::Role::kHost, "h1"), "h1", r);
  }

  std::string AuditText() {
    auto recs = store_->ReadAudit(0, 1000);
    EXPECT_OK(recs);
    std::string all;
    if (recs.ok()) {
      for (const auto& r : *recs) all += r.record + "\n";
    }
    return all;
  }

  std::unique_ptr<attest::testing::SoftwareTpm> tpm_;
  std::unique_ptr<crypto::PrivateKey> signing_key_;
  // The customer key version of each key NewCustomerKey made (by SPKI key id).
  std::map<std::string, uint64_t> versions_;
  uint64_t last_version_ = 1;
  std::string signing_chain_;
  std::vector<crypto::Bytes> pcr_values_;
  int jobs_ = 0;
  bool grant_each_request_ = true;
  bool expect_grants_ = true;  // Request() expects its grant to be created
  Status last_grant_;          // what Request()'s CreateGrant answered
  const SecretBytes data_key_ = SecretBytes::Random(crypto::kDataKeyBytes);
};

TEST_F(ReleaseTest, X25519KeyIsReleasedToTheCertifiedBindingKey) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ASSERT_EQ(customer.type(), crypto::KeyType::kX25519);
  auto out = Release(Request("img-1", customer, data_key_));
  ASSERT_OK(out);
  EXPECT_EQ(crypto::AsStringView(out->label), std::string_view("vmseal-release:img-1\0", 21));
  auto opened = tpm_->Decrypt(out->rewrapped_key, out->label);
  ASSERT_OK(opened);
  EXPECT_TRUE(opened->Equals(data_key_));
  const std::string audit = AuditText();
  EXPECT_NE(audit.find("release.grant"), std::string::npos);
  EXPECT_EQ(audit.find(crypto::HexEncode(data_key_.UnsafeSpan())), std::string::npos);
  EXPECT_OK(VerifyStoreAudit(*store_));
}

TEST_F(ReleaseTest, RsaKeyIsStillReleased) {
  crypto::PublicKey customer = NewCustomerKey("RSA-3072");
  auto out = Release(Request("img-1", customer, data_key_));
  ASSERT_OK(out);
  auto opened = tpm_->Decrypt(out->rewrapped_key, out->label);
  ASSERT_OK(opened);
  EXPECT_TRUE(opened->Equals(data_key_));
}

// Nonces (docs/protocol.md §nonces): MAC-authenticated for one host,
// short-lived, single-use; each refusal names its reason, returns no key
// and is audited.
TEST_F(ReleaseTest, NonceIsUsedOnce) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const ReleaseRequest r = Request("img-1", customer, data_key_);
  ASSERT_OK(Release(r));
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "nonce_used");
  EXPECT_NE(AuditText().find("nonce_used"), std::string::npos);
}

// A replay to the process that saw the nonce used is refused before its
// evidence is verified or any key unwrapped: even with a forged signature it
// is nonce_used, records no verdict, and its denial names no verdict.
TEST_F(ReleaseTest, ReplayIsRefusedBeforeVerification) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  ASSERT_OK(Release(r));
  auto verdicts = store_->ListVerdicts("h1", 0);
  ASSERT_OK(verdicts);
  const size_t before = verdicts->size();
  ASSERT_FALSE(r.evidence.quote.signature.empty());
  r.evidence.quote.signature.back() ^= 0x01;
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "nonce_used");
  EXPECT_STATUS(service_->Attest(As(Caller::Role::kHost, "h1"), "h1", r.evidence),
                StatusCode::kPermissionDenied, "nonce_used");
  verdicts = store_->ListVerdicts("h1", 0);
  ASSERT_OK(verdicts);
  EXPECT_EQ(verdicts->size(), before);
  auto recs = store_->ReadAudit(0, 1000);
  ASSERT_OK(recs);
  bool saw_replay_deny = false;
  for (const auto& rec : *recs) {
    if (rec.record.find("release.deny") == std::string::npos) continue;
    saw_replay_deny = true;
    EXPECT_NE(rec.record.find("nonce_used"), std::string::npos) << rec.record;
    EXPECT_EQ(rec.record.find("verdict_id"), std::string::npos) << rec.record;
  }
  EXPECT_TRUE(saw_replay_deny);
}

TEST_F(ReleaseTest, NonceTheKmsDidNotIssueIsUnknown) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  crypto::Bytes forged = crypto::RandomBytes(32);
  std::copy(r.evidence.nonce.begin(), r.evidence.nonce.begin() + 16, forged.begin());  // same time
  r.evidence = tpm_->Attest(forged, {0, 7}, pcr_values_);
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "nonce_unknown");
  EXPECT_NE(AuditText().find("nonce_unknown"), std::string::npos);
}

TEST_F(ReleaseTest, NonceOfAnotherHostIsUnknown) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  auto other = service_->IssueNonce(As(Caller::Role::kHost, "h2"), "h2");
  ASSERT_OK(other);
  r.evidence = tpm_->Attest(*crypto::HexDecode(other->nonce), {0, 7}, pcr_values_);
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "nonce_unknown");
}

TEST_F(ReleaseTest, ExpiredNonceIsRefused) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const ReleaseRequest r = Request("img-1", customer, data_key_);  // issued at 1000, 60 s
  now_ += 61;
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "nonce_expired");
  now_ -= 1;  // the last second of its life
  ASSERT_OK(Release(r));
}

TEST_F(ReleaseTest, NonceIssuedInTheFutureIsUnknown) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const ReleaseRequest r = Request("img-1", customer, data_key_);  // issued at 1000
  now_ -= 61;  // beyond the clock skew allowed between KMS processes
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "nonce_unknown");
}

// Two KMS services on one store (as two processes on one PostgreSQL): one
// issues, the other accepts, once. A service with another KEK cannot start
// on that store.
TEST_F(ReleaseTest, ServicesOnOneStoreShareTheNonceKey) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const ReleaseRequest r = Request("img-1", customer, data_key_);
  auto ca = internal::CreateRootCa("second kms ca", 30);
  ASSERT_OK(ca);
  KmsService::Options options;
  options.clock = [this] { return now_; };
  // Processes sharing a store share the KMS CA (signing certificates chain to it).
  auto second = KmsService::Create(options, store_.get(), kek_.get(),
                                   {ca_pem_, ca_key_pem_.Clone()});
  ASSERT_OK(second);
  ASSERT_OK((*second)->Release(As(Caller::Role::kHost, "h1"), "h1", r));
  const std::string audit = AuditText();
  ASSERT_NE(audit.find("kms.nonce_key.create"), std::string::npos);
  EXPECT_EQ(audit.find("kms.nonce_key.create"), audit.rfind("kms.nonce_key.create"));  // once
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "nonce_used");
  auto other_kek = KekFromBytes(SecretBytes::Random(kKekBytes));
  ASSERT_OK(other_kek);
  EXPECT_STATUS(KmsService::Create(options, store_.get(), other_kek->get(), *std::move(ca)),
                StatusCode::kFailedPrecondition, "kek_mismatch");
}

// A release reads policies, flavors, hosts and history through a cache kept
// for one store config version: a change made through another KMS process
// on the same store is seen by the next release.
TEST_F(ReleaseTest, ChangesThroughAnotherServiceReachTheNextRelease) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));  // fills the cache
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));  // served from it
  auto ca = internal::CreateRootCa("second kms ca", 30);
  ASSERT_OK(ca);
  KmsService::Options options;
  options.clock = [this] { return now_; };
  auto second = KmsService::Create(options, store_.get(), kek_.get(), *std::move(ca));
  ASSERT_OK(second);
  const Caller op = As(Caller::Role::kOperator, "op");

  // Each request below that is denied was granted before the change (a
  // grant is checked against the policy of its time; the release again).
  // The policy now wants a region tag the host lacks...
  ReleaseRequest granted = Request("img-1", customer, data_key_);
  ASSERT_OK((*second)->PutPolicy(op, {kTenant, "", {{"flavors", {{"anyOf", {"good"}}}},
                                                    {"required_tags", {"region=eu"}}}}));
  EXPECT_STATUS(Release(granted), StatusCode::kPermissionDenied, "tags");
  // ...which the host then gets.
  ASSERT_OK((*second)->SetHostTags(op, "h1", {"region=eu"}));
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
  // The flavor changes under the same name.
  granted = Request("img-1", customer, data_key_);
  ASSERT_OK((*second)->PutFlavor(op, {"good", {{"sha256", {{"0", std::string(64, 'a')}}}}}));
  EXPECT_STATUS(Release(granted), StatusCode::kPermissionDenied, "pcr_policy");
  const nlohmann::json pcrs = {{"0", crypto::HexEncode(pcr_values_[0])}, {"7", crypto::HexEncode(pcr_values_[1])}};
  ASSERT_OK((*second)->PutFlavor(op, {"good", {{"sha256", pcrs}}}));
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
  // A failed attestation recorded by the other process is history here.
  ASSERT_OK((*second)->PutPolicy(op, {kTenant, "", {{"flavors", {{"anyOf", {"good"}}}},
                                                    {"history", {{"no_failures_within_seconds", 3600}}}}}));
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
  granted = Request("img-1", customer, data_key_);
  ReleaseRequest forged = Request("img-1", customer, data_key_);
  forged.evidence.quote.signature.back() ^= 0x01;
  auto failed = (*second)->Attest(As(Caller::Role::kHost, "h1"), "h1", forged.evidence);
  ASSERT_OK(failed);
  EXPECT_FALSE(failed->trusted);
  EXPECT_STATUS(Release(granted), StatusCode::kPermissionDenied, "history");
}

// A release answer carries the host's next nonce (docs/protocol.md §5.1):
// issued as the key is answered, for this host only, accepted once, and
// expired after the same lifetime as any nonce. A refusal carries none.
TEST_F(ReleaseTest, ReleaseAnswerCarriesTheHostsNextNonceSingleUseAndBoundToTheHost) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  auto first = Release(Request("img-1", customer, data_key_));
  ASSERT_OK(first);
  ASSERT_EQ(first->next_nonce.nonce.size(), 64u);
  EXPECT_EQ(first->next_nonce.expires_unix, now_ + 60);
  auto raw = crypto::HexDecode(first->next_nonce.nonce);
  ASSERT_OK(raw);
  // h1 releases again with it, without asking for a nonce.
  ReleaseRequest next = Request("img-1", customer, data_key_);
  next.evidence = tpm_->Attest(*raw, {0, 7}, pcr_values_);
  auto second = Release(next);
  ASSERT_OK(second);
  EXPECT_NE(second->next_nonce.nonce, first->next_nonce.nonce);
  // Once only.
  ReleaseRequest replay = Request("img-1", customer, data_key_);
  replay.evidence = tpm_->Attest(*raw, {0, 7}, pcr_values_);
  EXPECT_STATUS(Release(replay), StatusCode::kPermissionDenied, "nonce_used");
  // Bound to h1: another enrolled host (same AK here, so only the nonce
  // differs) presenting h1's next nonce is refused.
  ASSERT_OK(store_->PutHost({"h2", "", crypto::Base64Encode(tpm_->ak_public()), true, {}, now_},
                            {"host.enroll.test", "host/h2"}));
  auto raw2 = crypto::HexDecode(second->next_nonce.nonce);
  ASSERT_OK(raw2);
  EXPECT_STATUS(service_->Attest(As(Caller::Role::kHost, "h2"), "h2", tpm_->Attest(*raw2, {0, 7}, pcr_values_)),
                StatusCode::kPermissionDenied, "nonce_unknown");
  // Expired like any nonce: h1 waited past its lifetime.
  ReleaseRequest late = Request("img-1", customer, data_key_);
  late.evidence = tpm_->Attest(*raw2, {0, 7}, pcr_values_);
  now_ += 61;
  EXPECT_STATUS(Release(late), StatusCode::kPermissionDenied, "nonce_expired");
}

// The lifecycle marks a release reads first (revoked host, disabled
// customer) come from the same config-version cache: a mark set through
// another KMS process on the store refuses the very next release here,
// even with the "no mark" answers cached from the releases before it.
TEST_F(ReleaseTest, RevocationsThroughAnotherServiceReachTheNextRelease) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));  // fills the cache
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));  // served from it
  auto ca = internal::CreateRootCa("second kms ca", 30);
  ASSERT_OK(ca);
  KmsService::Options options;
  options.clock = [this] { return now_; };
  auto second = KmsService::Create(options, store_.get(), kek_.get(), *std::move(ca));
  ASSERT_OK(second);
  const Caller op = As(Caller::Role::kOperator, "op");

  // Granted before the change: the release itself must refuse them.
  const ReleaseRequest while_disabled = Request("img-1", customer, data_key_);
  const ReleaseRequest after_enable = Request("img-1", customer, data_key_);
  const ReleaseRequest while_revoked = Request("img-1", customer, data_key_);
  ASSERT_OK((*second)->lifecycle().SetCustomerEnabled(op, kTenant, false, "audit").status());
  EXPECT_STATUS(Release(while_disabled), StatusCode::kPermissionDenied, "customer_disabled");
  ASSERT_OK((*second)->lifecycle().SetCustomerEnabled(op, kTenant, true, "done").status());
  ASSERT_OK(Release(after_enable));
  ASSERT_OK((*second)->lifecycle().RevokeHost(op, "h1", "stolen").status());
  EXPECT_STATUS(Release(while_revoked), StatusCode::kPermissionDenied, "host_revoked");
}

// The release reads the tenant's registered signing key through the
// config-version cache: a key registered through another KMS process on the
// same store takes effect on the next release (a cached "no key" is never
// used after it). Nothing else between the two releases changes the config
// version (images and grants do not), so only the registration's own
// increment can empty the cache.
TEST_F(ReleaseTest, SigningKeyRegisteredThroughAnotherServiceReachesTheNextRelease) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  const Caller op = As(Caller::Role::kOperator, "op");
  ASSERT_OK(service_->PutPolicy(op, {"globex", "", {{"flavors", {{"anyOf", {"good"}}}}}}));
  auto key = service_->CreateCustomerKey(portal, {"globex", "X25519"});
  ASSERT_OK(key);
  auto pub = crypto::PublicKey::FromPem(key->public_key_pem);
  ASSERT_OK(pub);
  auto signer = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(signer);
  // A request of globex's image img-g (grant and image registered by the
  // caller), signed by `by` under `chain`.
  grant_each_request_ = false;
  auto globex_request = [&](const crypto::PrivateKey& by, const std::string& chain) {
    ReleaseRequest r = Request("img-g", *pub, data_key_);
    r.tenant = "globex";
    r.key_id = "sha256:" + pub->KeyId();
    r.key_version = static_cast<uint64_t>(key->version);
    ovf::EncryptionTag tag;
    tag.image_id = "img-g";
    tag.tenant = "globex";
    tag.key_version = r.key_version;
    tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
    r.oaep_label = ovf::OaepLabel(tag);
    auto wrapped = crypto::WrapKey(*pub, data_key_, crypto::AsStringView(r.oaep_label));
    EXPECT_OK(wrapped);
    if (wrapped.ok()) r.wrapped_key = *wrapped;
    Sign(&r, &by, chain);
    return r;
  };
  // Before globex registers a key (signed with acme's, which names acme):
  // refused, and "no key" is now cached.
  for (int i = 0; i < 2; ++i) {
    EXPECT_STATUS(Release(globex_request(*signing_key_, signing_chain_)), StatusCode::kPermissionDenied,
                  "signer_mismatch: tenant globex has no registered signing key");
  }
  auto version_before = store_->ConfigVersion();
  ASSERT_OK(version_before);

  auto second = KmsService::Create({}, store_.get(), kek_.get(), {ca_pem_, ca_key_pem_.Clone()});
  ASSERT_OK(second);
  auto info = (*second)->RegisterSigningKey(portal, SigningRequest("globex", *signer));
  ASSERT_OK(info);
  auto version_after = store_->ConfigVersion();
  ASSERT_OK(version_after);
  EXPECT_GT(*version_after, *version_before);

  const ReleaseRequest r = globex_request(*signer, info->cert_pem);
  ASSERT_OK(service_->RegisterImage(portal, {"globex", "img-g", r.key_id, 0},
                                    {r.descriptor_name, r.descriptor, r.manifest, r.package_cert}));
  ASSERT_OK(service_->CreateGrant(portal, {r.job_id, "img-g", "globex", "h1", 60}));
  auto version_granted = store_->ConfigVersion();
  ASSERT_OK(version_granted);
  ASSERT_EQ(*version_granted, *version_after);  // so the cache holds this version
  auto out = Release(r);
  ASSERT_OK(out);
  EXPECT_EQ(out->signer_key_id, info->key_id);
}

// A failed verdict is history: it increments the store's history version,
// not its config version, so one host's forged evidence does not empty
// every host's cached release reads; a policy's history rule still sees it
// at the next release (also through another process:
// ChangesThroughAnotherServiceReachTheNextRelease).
TEST_F(ReleaseTest, AFailedVerdictIncrementsTheHistoryVersionNotTheConfigVersion) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const Caller op = As(Caller::Role::kOperator, "op");
  ASSERT_OK(service_->PutPolicy(op, {kTenant, "", {{"flavors", {{"anyOf", {"good"}}}},
                                                   {"history", {{"no_failures_within_seconds", 3600}}}}}));
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));  // history (none) cached
  const ReleaseRequest granted = Request("img-1", customer, data_key_);
  auto before = store_->ReadReleaseVersions();
  ASSERT_OK(before);
  ReleaseRequest forged = Request("img-1", customer, data_key_);
  forged.evidence.quote.signature.back() ^= 0x01;
  EXPECT_STATUS(Release(forged), StatusCode::kPermissionDenied, "bad_signature");
  auto after = store_->ReadReleaseVersions();
  ASSERT_OK(after);
  EXPECT_EQ(after->config, before->config);
  EXPECT_EQ(after->history, before->history + 1);
  auto config = store_->ConfigVersion();
  ASSERT_OK(config);
  EXPECT_EQ(*config, after->config);
  EXPECT_STATUS(Release(granted), StatusCode::kPermissionDenied, "history");
}

// The descriptor's release policy is parsed and validated once per text:
// another image's descriptor with another policy gets its own (never the
// cached one of the first), and a customer-signed policy stored through
// another KMS process on the same store overrides the cached descriptor
// policy at the next release.
TEST_F(ReleaseTest, CachedDescriptorPolicyIsNeverAnotherTextsOrOlderThanASignedPolicy) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  const Caller op = As(Caller::Role::kOperator, "op");
  const Caller portal = As(Caller::Role::kPortal, "p");
  descriptor_policy_ = R"({"flavors":{"anyOf":["good"]}})";
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));  // the parsed policy from the cache
  EXPECT_EQ(GrantedPolicy(), "descriptor");
  // Another text: tier=gold required. Granted while h1 is tagged, refused
  // at release once the tag is gone.
  descriptor_policy_ = R"({"flavors":{"anyOf":["good"]},"required_tags":["tier=gold"]})";
  ASSERT_OK(service_->SetHostTags(op, "h1", {"tier=gold"}));
  const ReleaseRequest gold = Request("img-2", customer, data_key_);
  ASSERT_OK(service_->SetHostTags(op, "h1", {}));
  EXPECT_STATUS(Release(gold), StatusCode::kPermissionDenied, "tags");
  // img-1 again (its own text, cached): released.
  descriptor_policy_ = R"({"flavors":{"anyOf":["good"]}})";
  const ReleaseRequest granted = Request("img-1", customer, data_key_);
  ASSERT_OK(Release(granted));
  EXPECT_EQ(GrantedPolicy(), "descriptor");
  // Granted under the descriptor's policy; then the customer's signed
  // version 1 (through another KMS process) requires a tag h1 lacks.
  const ReleaseRequest before_change = Request("img-1", customer, data_key_);
  auto second = KmsService::Create({}, store_.get(), kek_.get(), {ca_pem_, ca_key_pem_.Clone()});
  ASSERT_OK(second);
  ASSERT_OK((*second)->PutSignedPolicy(
      portal, SignedPolicy("img-1", 1, {{"flavors", {{"anyOf", {"good"}}}}, {"required_tags", {"region=x"}}})));
  EXPECT_STATUS(Release(before_change), StatusCode::kPermissionDenied, "tags");
  EXPECT_NE(AuditText().find(R"("policy":"signed:v1")"), std::string::npos);
}

// Used-nonce records are kept until their nonces expire, then purged.
TEST_F(ReleaseTest, UsedNonceRecordsArePurgedAfterExpiry) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const ReleaseRequest r = Request("img-1", customer, data_key_);  // expires at 1060
  ASSERT_OK(Release(r));
  const std::string hex = crypto::HexEncode(r.evidence.nonce);
  EXPECT_STATUS(store_->ConsumeNonce(hex, "h1", 1060), StatusCode::kFailedPrecondition,
                "already used");
  now_ = 1060 + 61;  // past expiry and the clock skew
  ASSERT_OK(service_->IssueNonce(As(Caller::Role::kHost, "h1"), "h1"));  // purges
  EXPECT_OK(store_->ConsumeNonce(hex, "h1", 1060));  // the record was gone
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "nonce_expired");
}

TEST_F(ReleaseTest, X25519UriForAnRsaKeyIsUnknownKey) {
  crypto::PublicKey customer = NewCustomerKey("RSA-3072");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.wrap_algorithm = std::string(ovf::kX25519WrapUri);
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "key_not_signed: the request's wrap_algorithm");
  // (A descriptor cannot carry an RSA-sized key under the X25519 wrap.)
  auto out = ReleaseWhereUnsignedIsAllowed(r);
  EXPECT_STATUS(out, StatusCode::kPermissionDenied, "unknown_key: key k-");
  EXPECT_STATUS(out, StatusCode::kPermissionDenied, "is not an X25519 key");
  const std::string audit = AuditText();
  EXPECT_NE(audit.find("release.deny"), std::string::npos);
  EXPECT_NE(audit.find("unknown_key"), std::string::npos);
}

TEST_F(ReleaseTest, RsaUriForAnX25519KeyIsUnknownKey) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.wrap_algorithm = std::string(ovf::kRsaOaepUri);
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "key_not_signed: the request's wrap_algorithm");
  Sign(&r, signing_key_.get(), signing_chain_);
  auto out = Release(r);
  EXPECT_STATUS(out, StatusCode::kPermissionDenied, "unknown_key: key k-");
  EXPECT_STATUS(out, StatusCode::kPermissionDenied, "is not an RSA key");
}

TEST_F(ReleaseTest, X25519WrapUnderAnotherImagesLabelIsLabelMismatch) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  // The request and its label name img-1; the key was wrapped for img-2.
  ReleaseRequest r = Request("img-1", customer, data_key_, Label("img-2"));
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied,
                "label_mismatch: the wrapped key does not open");
}

TEST_F(ReleaseTest, X25519LabelNamingAnotherImageIsLabelMismatch) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-2", customer, data_key_);
  r.image_id = "img-1";  // the label (and the wrap) still name img-2
  // Not what the customer signed; and no valid descriptor can carry a label
  // that names another image than its tag, so the label check is reached
  // only where signatures are not required.
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "key_not_signed: the request's image_id");
  KmsService::Options lax;
  lax.clock = [this] { return now_; };
  lax.require_package_signature = false;
  auto unsigned_kms = KmsService::Create(lax, store_.get(), kek_.get(), {ca_pem_, ca_key_pem_.Clone()});
  ASSERT_OK(unsigned_kms);
  r = Request("img-2", customer, data_key_);
  r.image_id = "img-1";
  r.package_cert.clear();
  EXPECT_STATUS((*unsigned_kms)->Release(As(Caller::Role::kHost, "h1"), "h1", r),
                StatusCode::kPermissionDenied, "label_mismatch: the OAEP label names another image");
}

TEST_F(ReleaseTest, TamperedX25519WrapIsLabelMismatch) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  ASSERT_EQ(r.wrapped_key.size(), crypto::kX25519WrappedBytes);
  r.wrapped_key[50] ^= 0x01;
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "key_not_signed: the request's wrapped_key");
  // Signed tampered (the customer's own mistake), the unwrap refuses it.
  Sign(&r, signing_key_.get(), signing_chain_);
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied,
                "label_mismatch: the wrapped key does not open");
  // A wrapped key of another length fails the same way, before any key use.
  r = Request("img-1", customer, data_key_);
  r.wrapped_key.pop_back();
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "key_not_signed");
  EXPECT_STATUS(ReleaseWhereUnsignedIsAllowed(r), StatusCode::kPermissionDenied, "label_mismatch");
  EXPECT_EQ(AuditText().find("release.grant"), std::string::npos);
}

TEST_F(ReleaseTest, UnknownWrapAlgorithmIsRefused) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.wrap_algorithm = "https://vmseal.dev/ns/wrap/x448-hkdf-sha512-aes256gcm-v1";
  EXPECT_STATUS(Release(r), StatusCode::kInvalidArgument, "wrap_algorithm must be");
}

TEST(PackageLabel, ParsesWhatThePackageWrites) {
  // prefix \0, len image, image, len tenant, tenant, u64 version, len alg, alg
  std::string label("vmseal-package-key-v1", 21);
  label.push_back('\0');
  auto field = [&](const std::string& f) {
    for (int i = 3; i >= 0; --i) label.push_back(static_cast<char>((f.size() >> (8 * i)) & 0xff));
    label += f;
  };
  field("img-1");
  field("tenant-a");
  for (int i = 0; i < 7; ++i) label.push_back('\0');
  label.push_back('\3');
  field("urn:alg");
  auto parsed = ParsePackageLabel(crypto::AsBytes(label));
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->image_id, "img-1");
  EXPECT_EQ(parsed->tenant, "tenant-a");
  EXPECT_EQ(parsed->key_version, 3u);
  EXPECT_EQ(parsed->data_algorithm, "urn:alg");
  EXPECT_STATUS(ParsePackageLabel(crypto::AsBytes(label + "x")), StatusCode::kPermissionDenied,
                "label_mismatch");
  EXPECT_STATUS(ParsePackageLabel(crypto::AsBytes(std::string("other"))),
                StatusCode::kPermissionDenied, "label_mismatch");
}

TEST(ErrorBody, CarriesTheMachineReason) {
  auto body = net::ErrorBody(PermissionDeniedError("pcr_policy: PCR 7 differs"));
  EXPECT_EQ(body["error"]["reason"], "pcr_policy");
  EXPECT_EQ(body["error"]["code"], "PERMISSION_DENIED");
  EXPECT_EQ(body["error"]["message"], "pcr_policy: PCR 7 differs");
  EXPECT_FALSE(net::ErrorBody(InvalidArgumentError("Body must be JSON: x"))["error"].contains("reason"));
}

TEST(CallerFromPeer, RoleFromOrganizationalUnit) {
  net::Peer peer{true, "CN=h1,OU=host,O=vmseal", "h1", "host", "ab"};
  Caller c = CallerFromPeer(peer);
  EXPECT_EQ(c.role, Caller::Role::kHost);
  EXPECT_EQ(c.name, "h1");
  peer.organizational_unit = "ca";
  EXPECT_EQ(CallerFromPeer(peer).role, Caller::Role::kAnonymous);
  peer.organizational_unit = "portal";
  peer.authenticated = false;
  EXPECT_EQ(CallerFromPeer(peer).role, Caller::Role::kAnonymous);
}

// --- Issue 14: grants, one image identity, policy writes, EK pins -----------

TEST_F(ReleaseTest, ReleaseWithoutAGrantIsNoGrantAndAudited) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  grant_each_request_ = false;
  ASSERT_OK(service_->RegisterImage(As(Caller::Role::kPortal, "p"),
                                    {kTenant, "img-1", "sha256:" + customer.KeyId(), 0}));
  EXPECT_STATUS(Release(Request("img-1", customer, data_key_)), StatusCode::kPermissionDenied,
                "no_grant");
  const std::string audit = AuditText();
  EXPECT_NE(audit.find("\"release.deny\""), std::string::npos);
  EXPECT_NE(audit.find("\"reason\":\"no_grant\""), std::string::npos);
  EXPECT_EQ(audit.find("\"release.grant\""), std::string::npos);
}

TEST_F(ReleaseTest, AGrantServesOneLaunch) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest first = Request("img-1", customer, data_key_);
  ASSERT_OK(Release(first));
  grant_each_request_ = false;
  ReleaseRequest again = Request("img-1", customer, data_key_);  // fresh nonce, same job
  again.job_id = first.job_id;
  EXPECT_STATUS(Release(again), StatusCode::kPermissionDenied, "no_grant");
}

TEST_F(ReleaseTest, GrantForAnotherHostImageOrTenantIsNoGrant) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  const Caller portal = As(Caller::Role::kPortal, "p");
  const std::string key_id = "sha256:" + customer.KeyId();
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-1", key_id, 0}));
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-2", key_id, 0}));
  ASSERT_OK(service_->RegisterImage(portal, {"other", "img-1", key_id, 0}));
  // A grant is for an enrolled host the policy admits: h2 is not enrolled.
  EXPECT_STATUS(service_->CreateGrant(portal, {"job-h2", "img-1", kTenant, "h2", 60}),
                StatusCode::kPermissionDenied, "not_enrolled");
  // h2 enrolled, with a trusted verdict of h1's PCRs.
  ASSERT_OK(store_->PutHost({"h2", "", crypto::Base64Encode(tpm_->ak_public()), true, {}, now_},
                            {"host.enroll.test", "host/h2"}));
  const Verdict h2_verdict{"v-h2", "h2", true, "ok", now_,
                           {{"pcrs", {{"sha256", {{"0", crypto::HexEncode(pcr_values_[0])},
                                                  {"7", crypto::HexEncode(pcr_values_[1])}}}}}}};
  ASSERT_OK(store_->PutVerdict(h2_verdict, AuditEvent{"attestation.verdict", "host/h2"}));
  ASSERT_OK(service_->CreateGrant(portal, {"job-h2", "img-1", kTenant, "h2", 60}));
  ASSERT_OK(service_->PutPolicy(As(Caller::Role::kOperator, "op"),
                                {"other", "", {{"flavors", {{"anyOf", {"good"}}}}}}));
  ASSERT_OK(service_->CreateGrant(portal, {"job-img2", "img-2", kTenant, "h1", 60}));
  ASSERT_OK(service_->CreateGrant(portal, {"job-other", "img-1", "other", "h1", 60}));
  grant_each_request_ = false;
  for (const char* job : {"job-h2", "job-img2", "job-other"}) {
    SCOPED_TRACE(job);
    ReleaseRequest r = Request("img-1", customer, data_key_);
    r.job_id = job;
    EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "no_grant");
  }
}

// Issue 17: a job placed again (attempt 2) fences off attempt 1's host; the
// refusal is stale_attempt, audited, and the new attempt's grant stays.
TEST_F(ReleaseTest, AReleaseForAnAttemptThatWasPlacedAgainIsStaleAndAudited) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  const Caller portal = As(Caller::Role::kPortal, "p");
  // Registers the image with its signed descriptor (and grants attempt 0).
  const std::string job = Request("img-1", customer, data_key_).job_id;
  GrantRequest g{job, "img-1", kTenant, "h1", 60};
  g.attempt = 1;
  ASSERT_OK(service_->CreateGrant(portal, g));
  g.attempt = 2;
  ASSERT_OK(service_->CreateGrant(portal, g));
  grant_each_request_ = false;
  auto ask = [&](int64_t attempt) {
    ReleaseRequest r = Request("img-1", customer, data_key_);  // fresh nonce and evidence
    r.job_id = job;
    r.attempt = attempt;
    return Release(r);
  };
  EXPECT_STATUS(ask(1), StatusCode::kPermissionDenied, "stale_attempt");
  EXPECT_STATUS(ask(0), StatusCode::kPermissionDenied, "stale_attempt");
  EXPECT_EQ(Audited("release.deny", "stale_attempt"), 2);
  // A host naming an attempt the portal never granted gets nothing either.
  EXPECT_STATUS(ask(3), StatusCode::kPermissionDenied, "no_grant");
  EXPECT_OK(ask(2));
}

TEST_F(ReleaseTest, APortalCannotReArmAUsedGrantOrGrantAnOlderAttempt) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  const Caller portal = As(Caller::Role::kPortal, "p");
  const std::string job = Request("img-1", customer, data_key_).job_id;
  GrantRequest g{job, "img-1", kTenant, "h1", 60};
  g.attempt = 2;
  ASSERT_OK(service_->CreateGrant(portal, g));
  grant_each_request_ = false;
  auto ask = [&](int64_t attempt) {
    ReleaseRequest r = Request("img-1", customer, data_key_);
    r.job_id = job;
    r.attempt = attempt;
    return Release(r);
  };
  ASSERT_OK(ask(2));
  EXPECT_STATUS(service_->CreateGrant(portal, g), StatusCode::kPermissionDenied, "grant_used");
  g.attempt = 1;
  EXPECT_STATUS(service_->CreateGrant(portal, g), StatusCode::kPermissionDenied, "stale_attempt");
  EXPECT_EQ(Audited("grant.deny", "grant_used"), 1);
  EXPECT_EQ(Audited("grant.deny", "stale_attempt"), 1);
  EXPECT_STATUS(ask(2), StatusCode::kPermissionDenied, "no_grant");
  // The next placement is a new attempt, granted afresh.
  g.attempt = 3;
  EXPECT_OK(service_->CreateGrant(portal, g));
  EXPECT_OK(ask(3));
}

TEST_F(ReleaseTest, ExpiredGrantIsNoGrant) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  const Caller portal = As(Caller::Role::kPortal, "p");
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-1", "sha256:" + customer.KeyId(), 0}));
  ASSERT_OK(service_->CreateGrant(portal, {"job-x", "img-1", kTenant, "h1", 5}));
  now_ += 6;
  grant_each_request_ = false;
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.job_id = "job-x";
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "no_grant");
}

TEST_F(ReleaseTest, OnlyThePortalCreatesGrantsForRegisteredImages) {
  GrantRequest g{"job-1", "img-1", kTenant, "h1", 60};
  EXPECT_STATUS(service_->CreateGrant(As(Caller::Role::kHost, "h1"), g),
                StatusCode::kPermissionDenied, "portal role");
  EXPECT_STATUS(service_->CreateGrant(As(Caller::Role::kOperator, "op"), g),
                StatusCode::kPermissionDenied, "portal role");
  EXPECT_STATUS(service_->CreateGrant(As(Caller::Role::kPortal, "p"), g),
                StatusCode::kFailedPrecondition, "unknown_image");
  g.ttl_seconds = 0;
  EXPECT_STATUS(service_->CreateGrant(As(Caller::Role::kPortal, "p"), g),
                StatusCode::kInvalidArgument, "ttl_seconds");
  EXPECT_STATUS(service_->RegisterImage(As(Caller::Role::kHost, "h1"), {kTenant, "img-1", "k", 0}),
                StatusCode::kPermissionDenied, "portal role");
}

TEST_F(ReleaseTest, ImageRegisteredWithAnotherKeyIsAConflict) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-1", "sha256:aa", 0}));
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-1", "sha256:aa", 0}));  // idempotent
  EXPECT_STATUS(service_->RegisterImage(portal, {kTenant, "img-1", "sha256:bb", 0}),
                StatusCode::kPermissionDenied, "image_conflict");
}

TEST_F(ReleaseTest, SignedImagePolicyTheHostFailsDeniesWithThePolicysReason) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  const Caller portal = As(Caller::Role::kPortal, "p");
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-1", "sha256:" + customer.KeyId(), 0}));
  // The customer's signed policy for the image requires a tag h1 lacks; the
  // operator's customer-wide policy alone would allow it.
  auto stored = service_->PutSignedPolicy(
      portal, SignedPolicy("img-1", 1, {{"flavors", {{"anyOf", {"good"}}}},
                                        {"required_tags", {"tier=gold"}}}));
  ASSERT_OK(stored);
  EXPECT_EQ(stored->version, 1);
  // No grant for h1, which lacks the tag...
  expect_grants_ = false;
  EXPECT_STATUS(Release(Request("img-1", customer, data_key_)), StatusCode::kPermissionDenied,
                "no_grant");
  EXPECT_STATUS(last_grant_, StatusCode::kPermissionDenied, "tags");
  EXPECT_EQ(Audited("grant.deny", "tags"), 1);
  // ... and a grant made while it had the tag is denied at release once the
  // tag is gone.
  const Caller op = As(Caller::Role::kOperator, "op");
  ASSERT_OK(service_->SetHostTags(op, "h1", {"tier=gold"}));
  ReleaseRequest granted = Request("img-1", customer, data_key_);
  ASSERT_OK(last_grant_);
  ASSERT_OK(service_->SetHostTags(op, "h1", {}));
  EXPECT_STATUS(Release(granted), StatusCode::kPermissionDenied, "tags");
  EXPECT_EQ(Audited("release.deny", "tags"), 1);
  expect_grants_ = true;
  ASSERT_OK(service_->SetHostTags(op, "h1", {"tier=gold"}));
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
  EXPECT_EQ(GrantedPolicy(), "signed:v1");
}

TEST_F(ReleaseTest, DescriptorPolicyIsEnforcedAndNamedInTheAudit) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  descriptor_policy_ = R"({"flavors":{"anyOf":["good"]},"required_tags":["tier=gold"]})";
  // The grant is checked against the registered descriptor's policy.
  expect_grants_ = false;
  EXPECT_STATUS(Release(Request("img-1", customer, data_key_)), StatusCode::kPermissionDenied,
                "no_grant");
  EXPECT_STATUS(last_grant_, StatusCode::kPermissionDenied, "tags");
  // At release, on fresh evidence: granted while tagged, denied untagged.
  const Caller op = As(Caller::Role::kOperator, "op");
  ASSERT_OK(service_->SetHostTags(op, "h1", {"tier=gold"}));
  ReleaseRequest granted = Request("img-1", customer, data_key_);
  ASSERT_OK(last_grant_);
  ASSERT_OK(service_->SetHostTags(op, "h1", {}));
  EXPECT_STATUS(Release(granted), StatusCode::kPermissionDenied, "tags");
  expect_grants_ = true;
  ASSERT_OK(service_->SetHostTags(op, "h1", {"tier=gold"}));
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
  EXPECT_EQ(GrantedPolicy(), "descriptor");
}

TEST_F(ReleaseTest, NewestSignedPolicyOverridesTheDescriptorsPolicy) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  const Caller portal = As(Caller::Role::kPortal, "p");
  descriptor_policy_ = R"({"flavors":{"anyOf":["good"]},"required_tags":["tier=gold"]})";
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-1", "sha256:" + customer.KeyId(), 0}));
  // Version 1 drops the descriptor's tag requirement: h1 (untagged) is granted.
  ASSERT_OK(service_->PutSignedPolicy(portal, SignedPolicy("img-1", 1, {{"flavors", {{"anyOf", {"good"}}}}})));
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
  EXPECT_EQ(GrantedPolicy(), "signed:v1");
  // Version 2 requires another tag: denied although version 1 would allow.
  ReleaseRequest granted = Request("img-1", customer, data_key_);
  ASSERT_OK(service_->PutSignedPolicy(
      portal, SignedPolicy("img-1", 2, {{"flavors", {{"anyOf", {"good"}}}}, {"required_tags", {"region=x"}}})));
  EXPECT_STATUS(Release(granted), StatusCode::kPermissionDenied, "tags");
  expect_grants_ = false;
  EXPECT_STATUS(Release(Request("img-1", customer, data_key_)), StatusCode::kPermissionDenied, "no_grant");
  EXPECT_STATUS(last_grant_, StatusCode::kPermissionDenied, "tags");
  EXPECT_NE(AuditText().find(R"("policy":"signed:v2")"), std::string::npos);
}

TEST_F(ReleaseTest, WithoutACustomerPolicyTheOperatorsApplies) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
  EXPECT_EQ(GrantedPolicy(), std::string("operator:") + kTenant + "/");
}

TEST_F(ReleaseTest, InvalidDescriptorPolicyFailsClosed) {
  const crypto::PublicKey customer = NewCustomerKey("X25519");
  // The grant is refused under the registered descriptor's invalid policy
  // (no fallback to the operator's), so the release has none.
  expect_grants_ = false;
  int i = 0;
  for (const char* bad : {R"({"flavors":{"someOf":["good"]}})", "[1]", "{"}) {
    SCOPED_TRACE(bad);
    descriptor_policy_ = bad;
    EXPECT_STATUS(Release(Request("img-bad-" + std::to_string(++i), customer, data_key_)),
                  StatusCode::kPermissionDenied, "no_grant");
    EXPECT_STATUS(last_grant_, StatusCode::kPermissionDenied, "no_policy");
  }
}

TEST_F(ReleaseTest, ReplayedOrOlderSignedPolicyIsStaleAndChangesNothing) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-1", "sha256:aa", 0}));
  const nlohmann::json strict = {{"flavors", {{"anyOf", {"good"}}}}, {"required_tags", {"tier=gold"}}};
  const SignedPolicyRequest v1 = SignedPolicy("img-1", 1, {{"flavors", {{"anyOf", {"good"}}}}});
  ASSERT_OK(service_->PutSignedPolicy(portal, v1));
  ASSERT_OK(service_->PutSignedPolicy(portal, SignedPolicy("img-1", 3, strict)));
  // The portal replays version 1 (a weaker policy the customer signed once)
  // and the same version 3 again.
  EXPECT_STATUS(service_->PutSignedPolicy(portal, v1), StatusCode::kPermissionDenied, "policy_stale");
  EXPECT_STATUS(service_->PutSignedPolicy(portal, SignedPolicy("img-1", 3, strict)),
                StatusCode::kPermissionDenied, "policy_stale");
  EXPECT_STATUS(service_->PutSignedPolicy(portal, SignedPolicy("img-1", 2, strict)),
                StatusCode::kPermissionDenied, "policy_stale");
  auto newest = service_->GetSignedPolicy(portal, kTenant, "img-1");
  ASSERT_OK(newest);
  EXPECT_EQ(newest->version, 3);
  EXPECT_EQ(Audited("policy.deny", "policy_stale"), 3);
}

TEST_F(ReleaseTest, AlteredOrForeignSignedPolicyIsBadSignature) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-1", "sha256:aa", 0}));
  SignedPolicyRequest altered =
      SignedPolicy("img-1", 1, {{"flavors", {{"anyOf", {"good"}}}}, {"required_tags", {"tier=gold"}}});
  // The portal drops the tag requirement from a document the customer signed.
  altered.document.replace(altered.document.find("\"tier=gold\""), 11, "");
  EXPECT_STATUS(service_->PutSignedPolicy(portal, altered), StatusCode::kPermissionDenied,
                "bad_signature");
  // A key the portal made itself.
  auto own = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(own);
  EXPECT_STATUS(service_->PutSignedPolicy(portal, SignedPolicy("img-1", 1, {{"flavors", {{"anyOf", {"good"}}}}}, &*own)),
                StatusCode::kPermissionDenied, "bad_signature");
  EXPECT_STATUS(service_->GetSignedPolicy(portal, kTenant, "img-1"), StatusCode::kNotFound, "");
  EXPECT_EQ(Audited("policy.deny", "bad_signature"), 2);
}

TEST_F(ReleaseTest, SignedPolicyForAnotherTenantsImageIsTenantMismatch) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  // img-a is acme's; "bob" has a signing key of its own.
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-a", "sha256:aa", 0}));
  ASSERT_OK(service_->CreateCustomerKey(portal, {"bob", "X25519"}));
  auto bob_key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(bob_key);
  ASSERT_OK(service_->RegisterSigningKey(portal, SigningRequest("bob", *bob_key)));
  const nlohmann::json weak = {{"flavors", {{"anyOf", {"good"}}}}};
  // Bob signs a document for acme's image under his own tenant: not his image.
  EXPECT_STATUS(service_->PutSignedPolicy(portal, SignedPolicy("img-a", 1, weak, &*bob_key, "bob")),
                StatusCode::kPermissionDenied, "tenant_mismatch");
  // The same document relayed as acme's: the document names bob.
  SignedPolicyRequest relabeled = SignedPolicy("img-a", 1, weak, &*bob_key, "bob");
  relabeled.tenant = kTenant;
  EXPECT_STATUS(service_->PutSignedPolicy(portal, relabeled), StatusCode::kPermissionDenied,
                "tenant_mismatch");
  // Bob's key over a document naming acme: not acme's signature.
  EXPECT_STATUS(service_->PutSignedPolicy(portal, SignedPolicy("img-a", 1, weak, &*bob_key)),
                StatusCode::kPermissionDenied, "bad_signature");
  EXPECT_STATUS(service_->GetSignedPolicy(portal, kTenant, "img-a"), StatusCode::kNotFound, "");
  EXPECT_EQ(Audited("policy.deny", "tenant_mismatch"), 2);
}

TEST_F(ReleaseTest, MalformedOrInvalidSignedPolicyIsRefusedAndHostsCannotRelay) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  ASSERT_OK(service_->RegisterImage(portal, {kTenant, "img-1", "sha256:aa", 0}));
  SignedPolicyRequest garbage{kTenant, "img-1", "{\"version\":", {1, 2, 3}};
  EXPECT_STATUS(service_->PutSignedPolicy(portal, garbage), StatusCode::kInvalidArgument,
                "malformed_policy_document");
  EXPECT_STATUS(service_->PutSignedPolicy(portal, SignedPolicy("img-1", 1, {{"flavors", {{"someOf", {"x"}}}}})),
                StatusCode::kInvalidArgument, "bad_policy");
  EXPECT_STATUS(service_->PutSignedPolicy(As(Caller::Role::kHost, "h1"),
                                          SignedPolicy("img-1", 1, {{"flavors", {{"anyOf", {"good"}}}}})),
                StatusCode::kPermissionDenied, "role");
  EXPECT_STATUS(service_->GetSignedPolicy(portal, kTenant, "img-1"), StatusCode::kNotFound, "");
}

TEST_F(ServiceTest, PortalCannotWriteAnyPolicy) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  const Caller op = As(Caller::Role::kOperator, "op");
  const nlohmann::json p = {{"flavors", {{"anyOf", {"good"}}}}};
  ASSERT_OK(service_->RegisterImage(portal, {"acme", "img-1", "sha256:aa", 0}));
  EXPECT_STATUS(service_->PutPolicy(portal, {"_default", "", p}), StatusCode::kPermissionDenied,
                "policy_forbidden");
  EXPECT_STATUS(service_->PutPolicy(portal, {"acme", "", p}), StatusCode::kPermissionDenied,
                "policy_forbidden");
  // Not even for an image registered to that customer.
  EXPECT_STATUS(service_->PutPolicy(portal, {"acme", "img-1", p}), StatusCode::kPermissionDenied,
                "policy_forbidden");
  EXPECT_STATUS(service_->GetPolicy(op, "_default", ""), StatusCode::kNotFound, "no release policy");
  EXPECT_STATUS(service_->GetPolicy(op, "acme", "img-1"), StatusCode::kNotFound, "no release policy");
  ASSERT_OK(service_->PutPolicy(op, {"_default", "", p}));
  auto recs = store_->ReadAudit(0, 1000);
  ASSERT_OK(recs);
  int forbidden = 0;
  for (const auto& r : *recs) forbidden += r.record.find("policy_forbidden") != std::string::npos;
  EXPECT_EQ(forbidden, 3);
}

TEST_F(ServiceTest, EkPinRefusesAnotherEkUntilApproved) {
  const std::string ek_a(64, 'a'), ek_b(64, 'b');
  HostRecord h{"h1", "", "", true, {}, now_};
  ASSERT_OK(store_->PutEnrolledHost(h, ek_a, {"host.enroll", "host/h1"}));
  ASSERT_OK(store_->PutEnrolledHost(h, ek_a, {"host.enroll", "host/h1"}));  // same TPM again
  EXPECT_STATUS(store_->PutEnrolledHost(h, ek_b, {"host.enroll", "host/h1"}),
                StatusCode::kFailedPrecondition, "ek_mismatch");
  auto pin = store_->GetEkPin("h1");
  ASSERT_OK(pin);
  EXPECT_EQ(*pin, ek_a);
  const Caller op = As(Caller::Role::kOperator, "op");
  EXPECT_STATUS(service_->ApproveEk(As(Caller::Role::kPortal, "p"), "h1", ek_b),
                StatusCode::kPermissionDenied, "operator role");
  EXPECT_STATUS(service_->ApproveEk(op, "h1", "B" + ek_b.substr(1)), StatusCode::kInvalidArgument,
                "64 lowercase hex");
  ASSERT_OK(service_->ApproveEk(op, "h1", ek_b));
  ASSERT_OK(store_->PutEnrolledHost(h, ek_b, {"host.enroll", "host/h1"}));
  EXPECT_STATUS(store_->PutEnrolledHost(h, ek_a, {"host.enroll", "host/h1"}),
                StatusCode::kFailedPrecondition, "ek_mismatch");
  auto recs = store_->ReadAudit(0, 1000);
  ASSERT_OK(recs);
  bool approved = false;
  for (const auto& r : *recs) {
    approved = approved || (r.record.find("host.ek.approve") != std::string::npos &&
                            r.record.find(ek_b) != std::string::npos &&
                            r.record.find(ek_a) != std::string::npos);
  }
  EXPECT_TRUE(approved);
}

// --- Signing keys ---------------------------------------------------------------

TEST_F(ServiceTest, SigningKeyIsCertifiedForTheTenantForPackageSigning) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  ASSERT_OK(service_->CreateCustomerKey(portal, {"acme", "X25519"}));
  auto key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(key);
  auto info = service_->RegisterSigningKey(portal, SigningRequest("acme", *key));
  ASSERT_OK(info);
  EXPECT_EQ(info->key_id, key->KeyId());
  auto cert = crypto::Certificate::FromPem(info->cert_pem);
  ASSERT_OK(cert);
  auto roots = crypto::Certificate::ParsePemBundle(ca_pem_);
  ASSERT_OK(roots);
  ovf::PackageSignature probe{crypto::SignatureDigest::kSha256, "", {}, *cert, {}};
  EXPECT_OK(ovf::VerifySigner(probe, *roots, "acme"));
  // Idempotent for the same key; the operator can read it; audited once.
  ASSERT_OK(service_->RegisterSigningKey(portal, SigningRequest("acme", *key)));
  auto got = service_->GetSigningKey(As(Caller::Role::kOperator, "op"), "acme");
  ASSERT_OK(got);
  EXPECT_EQ(got->cert_pem, info->cert_pem);
  auto recs = store_->ReadAudit(0, 100);
  ASSERT_OK(recs);
  int registered = 0;
  for (const auto& r : *recs) registered += r.record.find("signing_key.register") != std::string::npos;
  EXPECT_EQ(registered, 1);
}

TEST_F(ServiceTest, SigningKeyWithoutProofOfPossessionIsRefused) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  ASSERT_OK(service_->CreateCustomerKey(portal, {"acme", "X25519"}));
  auto held = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  auto other = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(held);
  ASSERT_OK(other);
  // The portal registers someone's public key with a proof made by a key
  // it holds: the proof does not verify with the named key.
  SigningKeyRequest req = SigningRequest("acme", *other);
  req.public_key_pem = held->Public().ToPem();
  EXPECT_STATUS(service_->RegisterSigningKey(portal, req), StatusCode::kPermissionDenied, "bad_proof");
  EXPECT_STATUS(service_->GetSigningKey(portal, "acme"), StatusCode::kNotFound, "no signing key");
}

TEST_F(ServiceTest, SigningKeyRulesAreEnforced) {
  const Caller portal = As(Caller::Role::kPortal, "p");
  auto key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(key);
  // No customer key yet: not a customer.
  EXPECT_STATUS(service_->RegisterSigningKey(portal, SigningRequest("acme", *key)),
                StatusCode::kFailedPrecondition, "unknown_customer");
  ASSERT_OK(service_->CreateCustomerKey(portal, {"acme", "X25519"}));
  ASSERT_OK(service_->CreateCustomerKey(portal, {"bob", "X25519"}));
  // Only the portal registers.
  EXPECT_STATUS(service_->RegisterSigningKey(As(Caller::Role::kHost, "h1"), SigningRequest("acme", *key)),
                StatusCode::kPermissionDenied, "portal role");
  // Only P-256.
  auto rsa = crypto::PrivateKey::Generate(crypto::KeyType::kRsa2048);
  ASSERT_OK(rsa);
  EXPECT_STATUS(service_->RegisterSigningKey(portal, SigningRequest("acme", *rsa)),
                StatusCode::kInvalidArgument, "P-256");
  ASSERT_OK(service_->RegisterSigningKey(portal, SigningRequest("acme", *key)));
  // One key per tenant; a key belongs to one tenant.
  auto second = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(second);
  EXPECT_STATUS(service_->RegisterSigningKey(portal, SigningRequest("acme", *second)),
                StatusCode::kPermissionDenied, "signing_key_exists");
  EXPECT_STATUS(service_->RegisterSigningKey(portal, SigningRequest("bob", *key)),
                StatusCode::kPermissionDenied, "signing_key_exists");
}

// --- Signed releases ----------------------------------------------------------

TEST_F(ReleaseTest, UnsignedPackageIsRefusedBeforeTheEvidenceIsLookedAt) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.package_cert.clear();
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "unsigned_package");
  EXPECT_NE(AuditText().find("\"reason\":\"unsigned_package\""), std::string::npos);
  // The nonce was not consumed: nothing past the signature check ran.
  Sign(&r, signing_key_.get(), signing_chain_);
  EXPECT_OK(Release(r));
}

TEST_F(ReleaseTest, PackageSignedWithASelfMadeKeyIsSignerMismatch) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  // Someone who has the tenant's public wrap key seals for it and signs with
  // a key of their own under a CA of their own, naming the tenant.
  auto ca = crypto::CreateSelfSignedCa({"attacker"});
  ASSERT_OK(ca);
  auto key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(key);
  crypto::IssueOptions io;
  io.common_name = kTenant;
  io.usage = crypto::CertUsage::kPackageSigning;
  auto cert = crypto::IssueCertificate(*ca, key->Public(), io);
  ASSERT_OK(cert);
  Sign(&r, &*key, cert->ToPem());
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "signer_mismatch");
  EXPECT_NE(AuditText().find("\"reason\":\"signer_mismatch\""), std::string::npos);
}

TEST_F(ReleaseTest, PackageSignedByAnotherTenantIsSignerMismatch) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  // Tenant "bob" signs a package sealed to acme's key for acme.
  const Caller portal = As(Caller::Role::kPortal, "p");
  ASSERT_OK(service_->CreateCustomerKey(portal, {"bob", "X25519"}));
  auto bob_key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(bob_key);
  auto bob = service_->RegisterSigningKey(portal, SigningRequest("bob", *bob_key));
  ASSERT_OK(bob);
  ReleaseRequest r = Request("img-1", customer, data_key_);
  Sign(&r, &*bob_key, bob->cert_pem);
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "signer_mismatch");
}

TEST_F(ReleaseTest, WrappedKeySwappedAfterSigningIsKeyNotSignedBeforeUnwrap) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  // The host (or whoever builds the request) asks for another wrapped key
  // of the tenant than the one the customer signed: a key that opens under
  // the tenant's key, for the same image id and label.
  const SecretBytes other_key = SecretBytes::Random(crypto::kDataKeyBytes);
  auto swapped = crypto::WrapKey(customer, other_key, crypto::AsStringView(Label("img-1")));
  ASSERT_OK(swapped);
  r.wrapped_key = *swapped;
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "key_not_signed: the request's wrapped_key");
  const std::string audit = AuditText();
  EXPECT_NE(audit.find("\"reason\":\"key_not_signed\""), std::string::npos);
  // Refused before the key was looked up (no kms_key_id in the record).
  EXPECT_EQ(audit.find("kms_key_id"), std::string::npos);
}

TEST_F(ReleaseTest, DescriptorChangedAfterSigningIsBadSignature) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  const size_t at = r.descriptor.find("img-1");
  ASSERT_NE(at, std::string::npos);
  r.descriptor.replace(at, 5, "img-2");
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "bad_signature");
}

// The KMS remembers texts it verified (Options::remember_verified_packages):
// the same package is released again from memory, but altered bytes or an
// expired memory are verified in full.
TEST_F(ReleaseTest, RememberedPackageVerificationCoversOnlyTheSameBytesForAMinute) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const ReleaseRequest first = Request("img-1", customer, data_key_);
  ASSERT_OK(Release(first));
  // Another launch of the same package (its texts and wrapped key).
  auto same_package = [&] {
    ReleaseRequest r = Request("img-1", customer, data_key_);
    r.wrapped_key = first.wrapped_key;
    r.descriptor = first.descriptor;
    r.manifest = first.manifest;
    r.package_cert = first.package_cert;
    return r;
  };
  ASSERT_OK(Release(same_package()));
  ReleaseRequest altered = same_package();
  altered.descriptor.replace(altered.descriptor.find("img-1"), 5, "img-2");
  EXPECT_STATUS(Release(altered), StatusCode::kPermissionDenied, "bad_signature");
  now_ += 61;  // verified again, and still good
  ASSERT_OK(Release(same_package()));
  EXPECT_EQ(Audited("release.deny", "bad_signature"), 1);
}

TEST_F(ReleaseTest, RequestForAnotherImageThanSignedIsKeyNotSigned) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest signed_for_1 = Request("img-1", customer, data_key_);
  ReleaseRequest r = Request("img-2", customer, data_key_);
  r.descriptor = signed_for_1.descriptor;  // img-1's signed texts with img-2's request
  r.manifest = signed_for_1.manifest;
  r.package_cert = signed_for_1.package_cert;
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "key_not_signed");
}

TEST_F(ReleaseTest, UnsignedReleaseIsServedOnlyWhenConfigured) {
  KmsService::Options options;
  options.clock = [this] { return now_; };
  options.require_package_signature = false;
  auto ca = internal::CreateRootCa("other", 30);
  ASSERT_OK(ca);
  auto lax = KmsService::Create(options, store_.get(), kek_.get(), *std::move(ca));
  ASSERT_OK(lax);
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.descriptor_name.clear();
  r.descriptor.clear();
  r.manifest.clear();
  r.package_cert.clear();
  auto out = (*lax)->Release(As(Caller::Role::kHost, "h1"), "h1", r);
  ASSERT_OK(out);
  EXPECT_TRUE(out->signer_key_id.empty());
}

TEST_F(ReleaseTest, GrantedReleaseNamesTheSigner) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  auto out = Release(Request("img-1", customer, data_key_));
  ASSERT_OK(out);
  EXPECT_EQ(out->signer_key_id, signing_key_->KeyId());
  EXPECT_NE(AuditText().find("\"signer_key_id\":\"" + signing_key_->KeyId() + "\""), std::string::npos);
}

// A host altering a package it holds (docs/protocol.md §5.1): the usual
// alterations are refused before the .cert is parsed (here it does not even
// parse), for the price of a SHA-256.
TEST_F(ReleaseTest, AlteredDescriptorIsRefusedBeforeItsCertificateIsParsed) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.descriptor.replace(r.descriptor.find("img-1"), 5, "img-2");
  r.package_cert = "SHA256(not a certificate)= 00\n";
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied,
                "bad_signature: the descriptor does not have the digest the manifest lists");
  EXPECT_EQ(Audited("release.deny", "bad_signature"), 1);
}

// A .cert the KMS verified once, beside a manifest rewritten for an altered
// descriptor: its signature covers one manifest only.
TEST_F(ReleaseTest, KnownCertificateBesideAnotherManifestIsRefusedBeforeVerification) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const ReleaseRequest first = Request("img-1", customer, data_key_);
  ASSERT_OK(Release(first));
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.descriptor_name = first.descriptor_name;
  r.descriptor = first.descriptor;
  r.descriptor.replace(r.descriptor.find("img-1"), 5, "img-2");
  auto entries = ovf::ParseManifest(first.manifest);
  ASSERT_OK(entries);
  bool listed = false;
  for (ovf::ManifestEntry& e : *entries) {
    if (e.name != r.descriptor_name) continue;
    ovf::StreamingDigest d(e.algorithm);
    d.Update(crypto::AsBytes(r.descriptor));
    e.digest = d.Finish();
    listed = true;
  }
  ASSERT_TRUE(listed);
  r.manifest = ovf::FormatManifest(*entries);
  r.package_cert = first.package_cert;
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied,
                "bad_signature: this .cert verified over another manifest");
}

// A new signature line above certificates the KMS parsed before is checked
// with the signer key it remembers, before the certificates are parsed.
TEST_F(ReleaseTest, AlteredSignatureAboveKnownCertificatesIsRefusedBeforeParsingThem) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const ReleaseRequest first = Request("img-1", customer, data_key_);
  ASSERT_OK(Release(first));
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.wrapped_key = first.wrapped_key;
  r.descriptor = first.descriptor;
  r.manifest = first.manifest;
  r.package_cert = first.package_cert;
  const size_t at = r.package_cert.find("= ") + 2 + 10;
  r.package_cert[at] = r.package_cert[at] == '0' ? '1' : '0';
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied,
                "bad_signature: the manifest signature does not verify with the known signer certificate");
  // The same line restored verifies (from memory, the exact bytes).
  r = Request("img-1", customer, data_key_);
  r.wrapped_key = first.wrapped_key;
  r.descriptor = first.descriptor;
  r.manifest = first.manifest;
  r.package_cert = first.package_cert;
  ASSERT_OK(Release(r));
}

// Another tenant's name on a package, a tenant with no signing key: refused
// before the texts are parsed (here the .cert would not parse).
TEST_F(ReleaseTest, TenantWithoutASigningKeyIsRefusedBeforeTheTextsAreParsed) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  ReleaseRequest r = Request("img-1", customer, data_key_);
  r.tenant = "globex";
  r.package_cert = "not a certificate\n";
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied,
                "signer_mismatch: tenant globex has no registered signing key");
  r.package_cert.clear();
  EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "unsigned_package");
}

// Failures of one host's package texts are limited: after the free ones,
// every request of that host is refused (rate_limited) until its block ends,
// good packages included; the count is not cleared by a good package.
TEST_F(ReleaseTest, HostWhosePackagesFailVerificationTooOftenIsRateLimited) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  auto altered = [&] {
    ReleaseRequest r = Request("img-1", customer, data_key_);
    // One hex digit of the signature line (refused by a signature check).
    const size_t at = r.package_cert.find("= ") + 2 + 10;
    r.package_cert[at] = r.package_cert[at] == '0' ? '1' : '0';
    return r;
  };
  const int free_failures = KmsService::Options().package_precheck.failures.free_failures;
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
  for (int i = 0; i < free_failures; ++i) {
    SCOPED_TRACE(i);
    EXPECT_STATUS(Release(altered()), StatusCode::kPermissionDenied, "bad_signature");
  }
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));  // does not clear the count
  EXPECT_STATUS(Release(altered()), StatusCode::kPermissionDenied, "bad_signature");  // blocks h1
  EXPECT_STATUS(Release(Request("img-1", customer, data_key_)), StatusCode::kResourceExhausted,
                "rate_limited: host h1");
  EXPECT_EQ(Audited("release.deny", "rate_limited"), 1);
  now_ += 2;  // the first block is 1 s
  ASSERT_OK(Release(Request("img-1", customer, data_key_)));
}

// The same limit covers refusals of what a host sends besides the package
// (issue 14, hostile cost): forged quotes, nonces the KMS never issued and
// keys the customer did not sign count against the host; a grant the portal
// never made does not (the portal's doing), nor does the limit's own answer.
TEST_F(ReleaseTest, HostWhoseEvidenceOrKeyIsRefusedTooOftenIsRateLimited) {
  crypto::PublicKey customer = NewCustomerKey("X25519");
  const int free_failures = KmsService::Options().package_precheck.failures.free_failures;
  ASSERT_GE(free_failures, 3);
  // Not counted: releases of jobs without a grant.
  expect_grants_ = false;
  for (int i = 0; i < free_failures + 2; ++i) {
    ReleaseRequest r = Request("img-1", customer, data_key_);
    r.job_id = "never-granted-" + std::to_string(i);
    EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "no_grant");
  }
  expect_grants_ = true;
  // Every grant first: after a forged quote's untrusted verdict the portal
  // could place nothing on h1.
  std::vector<ReleaseRequest> granted;
  for (int i = 0; i < free_failures + 2; ++i) granted.push_back(Request("img-1", customer, data_key_));
  for (int i = 0; i < free_failures; ++i) {
    SCOPED_TRACE(i);
    ReleaseRequest r = granted[static_cast<size_t>(i)];
    if (i % 3 == 0) {
      r.evidence.quote.signature.back() ^= 0x01;
      EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "bad_signature");
    } else if (i % 3 == 1) {
      crypto::Bytes forged = crypto::RandomBytes(32);
      std::copy(r.evidence.nonce.begin(), r.evidence.nonce.begin() + 16, forged.begin());
      r.evidence = tpm_->Attest(forged, {0, 7}, pcr_values_);
      EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "nonce_unknown");
    } else {
      r.key_id = "sha256:" + std::string(64, '0');
      EXPECT_STATUS(Release(r), StatusCode::kPermissionDenied, "key_not_signed");
    }
  }
  ReleaseRequest forged = granted[static_cast<size_t>(free_failures)];
  forged.evidence.quote.signature.back() ^= 0x01;
  EXPECT_STATUS(Release(forged), StatusCode::kPermissionDenied, "bad_signature");  // blocks h1
  // Refused before its package or evidence is looked at; nothing granted.
  const ReleaseRequest good = granted.back();
  EXPECT_STATUS(Release(good), StatusCode::kResourceExhausted, "rate_limited: host h1");
  EXPECT_EQ(Audited("release.deny", "rate_limited"), 1);
  EXPECT_EQ(Audited("release.grant", ""), 0);
  // After the block (1 s) the host is heard again: its good evidence (its
  // nonce unused, since the limit refused it first) gets the key.
  now_ += 2;
  ASSERT_OK(Release(good));
}

}  // namespace
}  // namespace vmseal::kms
