// End to end against real parts: the KMS service behind its HTTPS server on
// loopback (SQLite, and PostgreSQL), the host's HTTPS KMS client with an mTLS
// host identity, and the real TPM security engine on swtpm. Keys cross the
// same boundaries as in production: customer key (package label) -> KMS ->
// TPM binding key.
#include <gtest/gtest.h>

#include <sstream>

#include <atomic>
#include <thread>

#include "base/env.h"
#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "crypto/signature.h"
#include "host/https_kms_client.h"
#include "kms/http_api.h"
#include "kms/kek_rotation.h"
#include "kms/service.h"
#include "kms/testing/seed_keys.h"
#include "net/https_client.h"
#include "net/https_server.h"
#include "ovf/descriptor.h"
#include "ovf/package_format.h"
#include "ovf/signature.h"
#include "ovf/testing/signed_texts.h"
#include "testing/pg_harness.h"
#include "testing/test_util.h"
#include "tpm/security_engine.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal::kms {
namespace {

using nlohmann::json;
using testing::TempDir;

const std::vector<uint32_t> kPcrs = {0, 7};
const char kTenant[] = "tenant-a";

std::string KeyText(const SecretBytes& s) {
  return std::string(reinterpret_cast<const char*>(s.UnsafeData()), s.size());
}

// A package's wrapped key for `image_id`, made the way ovf::SealPackage makes
// it (label = ovf::OaepLabel(tag); RSA-OAEP-SHA256 or the X25519 wrap).
struct WrappedImageKey {
  SecretBytes data_key;
  crypto::Bytes label;
  crypto::Bytes wrapped;
};

class KmsReleaseTest : public ::testing::Test {
 protected:
  // Starts KMS + swtpm on `store_location` ("" = SQLite in the temp dir).
  void StartAll(const std::string& store_location) {
    auto ca = internal::CreateRootCa("release test ca", 30);
    ASSERT_OK(ca);
    ca_ = *std::move(ca);
    Write("ca.pem", ca_.cert_pem, 0644);
    IssueIdentity("host", "host-1", "host1");
    IssueIdentity("host", "host-2", "host2");
    IssueIdentity("operator", "op", "op");
    IssueIdentity("portal", "portal-1", "portal");

    auto store = Store::Open(store_location.empty() ? dir_.File("kms.db") : store_location);
    ASSERT_OK(store);
    store_ = *std::move(store);
    auto kek = KekFromBytes(SecretBytes::Random(kKekBytes));
    ASSERT_OK(kek);
    // A ring, as `kms serve` holds its KEK (kms/kek_rotation.h).
    auto ring = std::make_unique<KekRing>(*std::move(kek));
    ring_ = ring.get();
    kek_ = std::move(ring);

    auto tpm = tpm::testing::Swtpm::Start({.parent_dir = dir_.path()});
    ASSERT_OK(tpm);
    swtpm_ = *std::move(tpm);
    auto engine = tpm::SecurityEngine::Create({.tcti = swtpm_->tcti(), .state_dir = dir_.File("tpm-state")});
    ASSERT_OK(engine);
    engine_ = *std::move(engine);

    service_ = NewService(store_.get());
    ASSERT_NE(service_, nullptr);

    auto server_id = internal::IssueLeaf(ca_, {.common_name = "kms", .organizational_unit = "kms",
                                               .ip_addresses = {"127.0.0.1"}, .server = true});
    ASSERT_OK(server_id);
    net::HttpsServer::Options so;
    so.cert_pem = server_id->cert_pem;
    so.key_pem = SecretBytes(server_id->key_pem.UnsafeSpan());
    so.client_ca_pem = ca_.cert_pem;
    so.threads = 4;
    auto server = net::HttpsServer::Create(std::move(so));
    ASSERT_OK(server);
    server_ = *std::move(server);
    RegisterKmsRoutes(service_.get(), server_.get());
    auto port = server_->Start();
    ASSERT_OK(port);
    port_ = *port;

    host_ = HostClient("host-1", "host1");
    ASSERT_NE(host_, nullptr);
    op_ = JsonClient("op");
    ASSERT_NE(op_, nullptr);
    portal_ = JsonClient("portal");
    ASSERT_NE(portal_, nullptr);

    auto customer = service_->CreateCustomerKey({Caller::Role::kPortal, "portal-1", "fp"}, {kTenant, ""});
    ASSERT_OK(customer);
    auto pub = crypto::PublicKey::FromPem(customer->public_key_pem);
    ASSERT_OK(pub);
    customer_pub_ = std::make_unique<crypto::PublicKey>(*pub);
    // The tenant's package-signing key, registered through the KMS route the
    // portal uses, with its proof of possession.
    auto signing = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
    ASSERT_OK(signing);
    signing_key_ = std::make_unique<crypto::PrivateKey>(*std::move(signing));
    auto proof = crypto::Sign(*signing_key_, crypto::SignatureDigest::kSha256,
                              ovf::SigningKeyProofMessage(signing_key_->Public()));
    ASSERT_OK(proof);
    auto registered = portal_->Post(std::string("/v1/customers/") + kTenant + "/signing-key",
                                    {{"public_key_pem", signing_key_->Public().ToPem()},
                                     {"proof", crypto::Base64Encode(*proof)}});
    ASSERT_OK(registered);
    signing_chain_ = (*registered)["cert_pem"].get<std::string>();
  }

  std::unique_ptr<KmsService> NewService(Store* store, const KeyEncryptionKey* kek = nullptr) {
    KmsService::Options options;
    options.ek_ca_bundle_pem = swtpm_->ca_bundle_pem();
    internal::CertAndKey ca{ca_.cert_pem, SecretBytes(ca_.key_pem.UnsafeSpan())};
    auto service = KmsService::Create(options, store, kek != nullptr ? kek : kek_.get(), std::move(ca));
    EXPECT_OK(service);
    return service.ok() ? *std::move(service) : nullptr;
  }

  void Write(const std::string& name, const std::string& data, mode_t mode) {
    ASSERT_OK(WriteStringToFileAtomic(Env::Default(), dir_.File(name), data, mode));
  }

  void IssueIdentity(const std::string& role, const std::string& cn, const std::string& prefix) {
    auto id = internal::IssueLeaf(ca_, {.common_name = cn, .organizational_unit = role});
    ASSERT_OK(id);
    Write(prefix + ".pem", id->cert_pem, 0644);
    Write(prefix + "-key.pem", KeyText(id->key_pem), 0600);
  }

  std::unique_ptr<host::KmsApi> HostClient(const std::string& host_id, const std::string& prefix) {
    auto c = host::NewHttpsKmsClient({.url = "https://127.0.0.1:" + std::to_string(port_),
                                      .ca_cert_file = dir_.File("ca.pem"),
                                      .cert_file = dir_.File(prefix + ".pem"),
                                      .key_file = dir_.File(prefix + "-key.pem"),
                                      .host_id = host_id});
    EXPECT_OK(c);
    return c.ok() ? *std::move(c) : nullptr;
  }

  std::unique_ptr<net::HttpsClient> JsonClient(const std::string& prefix) {
    net::HttpsClient::Options o;
    o.port = port_;
    o.ca_pem = ca_.cert_pem;
    o.cert_pem = testing::ReadFileOrDie(dir_.File(prefix + ".pem"));
    std::string key = testing::ReadFileOrDie(dir_.File(prefix + "-key.pem"));
    o.key_pem = SecretBytes(crypto::AsBytes(key));
    auto c = net::HttpsClient::Create(std::move(o));
    EXPECT_OK(c);
    return c.ok() ? *std::move(c) : nullptr;
  }

  WrappedImageKey WrapFor(const std::string& image_id) { return WrapFor(image_id, *customer_pub_); }
  // To `customer`: RSA-OAEP for an RSA key, the X25519 wrap for an X25519 one.
  WrappedImageKey WrapFor(const std::string& image_id, const crypto::PublicKey& customer) {
    ovf::EncryptionTag tag;
    tag.image_id = image_id;
    tag.tenant = kTenant;
    tag.key_version = wrap_version_;
    tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
    WrappedImageKey out{SecretBytes::Random(crypto::kDataKeyBytes), ovf::OaepLabel(tag), {}};
    auto wrapped = crypto::WrapKey(customer, out.data_key, crypto::AsStringView(out.label));
    EXPECT_OK(wrapped);
    if (wrapped.ok()) out.wrapped = *wrapped;
    return out;
  }

  void Enroll() {
    auto req = engine_->EnrollmentRequest();
    ASSERT_OK(req);
    auto challenge = host_->BeginEnrollment(*req);
    ASSERT_OK(challenge);
    auto secret = engine_->ActivateCredential(*challenge);
    ASSERT_OK(secret);
    ASSERT_OK(host_->CompleteEnrollment(*secret));
  }

  // Attests once, makes the current PCRs the "good-boot" flavor and the
  // tenant's policy.
  void TrustCurrentState() {
    auto nonce = host_->Nonce();
    ASSERT_OK(nonce);
    auto ev = engine_->Attest(*nonce, kPcrs);
    ASSERT_OK(ev);
    ASSERT_OK(host_->Attest(*ev));
    ASSERT_OK(op_->Post("/v1/flavors/good-boot/from-host/host-1", json::object()));
    ASSERT_OK(op_->Put(std::string("/v1/policies/") + kTenant,
                       {{"flavors", {{"anyOf", {"good-boot"}}}}, {"max_evidence_age_seconds", 60}}));
  }

  host::ReleaseRequest Request(const WrappedImageKey& k, const std::string& image_id,
                               host::KmsApi* client) {
    host::ReleaseRequest r;
    r.image_id = image_id;
    r.tenant = kTenant;
    r.key_id = "sha256:" + customer_pub_->KeyId();
    // As the portal does: the image registered at upload, a grant for this
    // launch on the requesting host (through the KMS's routes).
    r.job_id = "job-" + std::to_string(++jobs_);
    r.key_version = wrap_version_;
    r.wrap_algorithm = std::string(ovf::kRsaOaepUri);
    r.oaep_label = k.label;
    r.wrapped_key = k.wrapped;
    Resign(&r);
    EXPECT_OK(portal_->Put(std::string("/v1/images/") + kTenant + "/" + image_id,
                           {{"key_id", r.key_id}, {"descriptor_name", r.descriptor_name},
                            {"descriptor", r.descriptor}, {"manifest", r.manifest},
                            {"package_cert", r.package_cert}}));
    // Checked against the image's policy on the host's latest verdict: tests
    // of a host the policy excludes read last_grant_.
    last_grant_ = portal_->Post("/v1/grants", {{"job_id", r.job_id}, {"image_id", image_id},
                                               {"tenant", kTenant},
                                               {"host_id", client == host_.get() ? "host-1" : "host-2"},
                                               {"ttl_seconds", 60}})
                      .status();
    if (expect_grants_) {
      EXPECT_OK(last_grant_);
    }
    auto nonce = client->Nonce();
    EXPECT_OK(nonce);
    if (!nonce.ok()) return r;
    auto ev = engine_->Attest(*nonce, kPcrs);
    EXPECT_OK(ev);
    if (ev.ok()) r.evidence = *ev;
    return r;
  }

  // The package's signed metadata for the request's key and identity, as
  // the customer's seal writes it (after a test changed the request: what a
  // customer who sealed that would have signed).
  void Resign(host::ReleaseRequest* r) {
    ovf::EncryptionTag tag;
    tag.image_id = r->image_id;
    tag.tenant = r->tenant;
    tag.key_id = r->key_id;
    tag.key_version = r->key_version;
    tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
    auto texts = ovf::testing::MakeSignedTexts(tag, {r->wrap_algorithm, r->oaep_label, r->wrapped_key},
                                               signing_key_.get(), signing_chain_);
    ASSERT_OK(texts);
    r->descriptor_name = texts->descriptor_name;
    r->descriptor = texts->descriptor;
    r->manifest = texts->manifest;
    r->package_cert = texts->certificate;
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

  void ExpectGoodRelease() {
    Enroll();
    TrustCurrentState();
    WrappedImageKey k = WrapFor("img-1");
    auto released = host_->Release(Request(k, "img-1", host_.get()));
    ASSERT_OK(released);
    ASSERT_FALSE(released->label.empty());
    EXPECT_EQ(released->label.back(), 0);
    auto data_key = engine_->Decrypt(released->rewrapped_key, released->label);
    ASSERT_OK(data_key);
    EXPECT_EQ(crypto::HexEncode(data_key->UnsafeSpan()), crypto::HexEncode(k.data_key.UnsafeSpan()));
    const std::string audit = AuditText();
    EXPECT_NE(audit.find("release.grant"), std::string::npos);
    EXPECT_EQ(audit.find(crypto::HexEncode(k.data_key.UnsafeSpan())), std::string::npos);
    EXPECT_EQ(audit.find(crypto::Base64Encode(k.data_key.UnsafeSpan())), std::string::npos);
    EXPECT_OK(VerifyStoreAudit(*store_));
    EXPECT_NE(service_->metrics().Render().find(
                  "vmseal_kms_release_decisions_total{result=\"grant\",reason=\"ok\"} 1"),
              std::string::npos);
  }

  TempDir dir_;
  internal::CertAndKey ca_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<KeyEncryptionKey> kek_;
  KekRing* ring_ = nullptr;  // kek_
  std::unique_ptr<tpm::testing::Swtpm> swtpm_;
  std::unique_ptr<tpm::SecurityEngine> engine_;
  std::unique_ptr<KmsService> service_;
  std::unique_ptr<net::HttpsServer> server_;
  int port_ = 0;
  std::unique_ptr<host::KmsApi> host_;
  std::unique_ptr<net::HttpsClient> op_;
  std::unique_ptr<net::HttpsClient> portal_;
  int jobs_ = 0;
  bool expect_grants_ = true;  // Request() expects its grant to be created
  Status last_grant_;          // what the grant route answered Request()
  std::unique_ptr<crypto::PublicKey> customer_pub_;
  // The key version packages are wrapped under (the customer key's).
  uint64_t wrap_version_ = 1;
  std::unique_ptr<crypto::PrivateKey> signing_key_;
  std::string signing_chain_;
};

TEST_F(KmsReleaseTest, GoodHostGetsKeyThatDecryptsInsideTheTpm) {
  StartAll("");
  ExpectGoodRelease();
  // The host list shows the enrolled host and its latest (trusted) verdict.
  auto hosts = op_->Get("/v1/hosts");
  ASSERT_OK(hosts);
  ASSERT_EQ((*hosts)["hosts"].size(), 1u);
  EXPECT_EQ((*hosts)["hosts"][0]["host_id"], "host-1");
  EXPECT_TRUE((*hosts)["hosts"][0]["enrolled"].get<bool>());
  EXPECT_TRUE((*hosts)["hosts"][0]["latest"]["trusted"].get<bool>());
}

// An X25519 customer key: the KMS opens the package's X25519 wrap (label as
// associated data) and re-wraps to the binding key, which the TPM opens.
TEST_F(KmsReleaseTest, X25519CustomerKeyIsReleasedAndDecryptsInsideTheTpm) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  auto customer = service_->CreateCustomerKey({Caller::Role::kPortal, "portal-1", "fp"},
                                              {kTenant, "X25519"});
  ASSERT_OK(customer);
  auto pub = crypto::PublicKey::FromPem(customer->public_key_pem);
  ASSERT_OK(pub);
  ASSERT_EQ(pub->type(), crypto::KeyType::kX25519);
  // The tenant's second key is its version 2 (kms/key_versions.h).
  wrap_version_ = static_cast<uint64_t>(customer->version);
  ASSERT_EQ(wrap_version_, 2u);
  WrappedImageKey k = WrapFor("img-x", *pub);
  ASSERT_EQ(k.wrapped.size(), crypto::kX25519WrappedBytes);
  host::ReleaseRequest r = Request(k, "img-x", host_.get());
  r.key_id = "sha256:" + pub->KeyId();
  r.wrap_algorithm = std::string(ovf::kX25519WrapUri);
  Resign(&r);
  auto released = host_->Release(r);
  ASSERT_OK(released);
  auto data_key = engine_->Decrypt(released->rewrapped_key, released->label);
  ASSERT_OK(data_key);
  EXPECT_EQ(crypto::HexEncode(data_key->UnsafeSpan()), crypto::HexEncode(k.data_key.UnsafeSpan()));
  const std::string audit = AuditText();
  EXPECT_NE(audit.find("release.grant"), std::string::npos);
  EXPECT_NE(audit.find(customer->key_id), std::string::npos);
  EXPECT_EQ(audit.find(crypto::HexEncode(k.data_key.UnsafeSpan())), std::string::npos);
}

// The host's KMS client takes its next nonce from a release answer
// (docs/protocol.md §5.1): no separate nonce request, the release with it
// succeeds, and it is taken once (the next Nonce() asks the KMS again).
TEST_F(KmsReleaseTest, HostClientReleasesAgainWithTheNonceOfTheLastAnswer) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  // POST .../nonces answered so far (the KMS's request counter).
  auto nonce_requests = [&] {
    int64_t n = 0;
    std::istringstream lines(service_->metrics().Render());
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("vmseal_kms_requests_total{", 0) == 0 && line.find("/nonces\"") != std::string::npos) {
        n += std::stoll(line.substr(line.rfind(' ') + 1));
      }
    }
    return n;
  };
  WrappedImageKey k = WrapFor("img-1");
  const int64_t before_first = nonce_requests();
  ASSERT_OK(host_->Release(Request(k, "img-1", host_.get())));
  EXPECT_EQ(nonce_requests(), before_first + 1);
  host::ReleaseRequest second = Request(k, "img-1", host_.get());  // Nonce() from the answer
  EXPECT_EQ(nonce_requests(), before_first + 1);
  auto released = host_->Release(second);
  ASSERT_OK(released);
  auto data_key = engine_->Decrypt(released->rewrapped_key, released->label);
  ASSERT_OK(data_key);
  EXPECT_EQ(crypto::HexEncode(data_key->UnsafeSpan()), crypto::HexEncode(k.data_key.UnsafeSpan()));
  ASSERT_OK(host_->Nonce());  // the second answer's
  EXPECT_EQ(nonce_requests(), before_first + 1);
  ASSERT_OK(host_->Nonce());  // none kept: asked
  EXPECT_EQ(nonce_requests(), before_first + 2);
}

TEST_F(KmsReleaseTest, TamperedHostIsDeniedWithPcrPolicy) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  ASSERT_OK(engine_->PcrExtend(7, crypto::Sha256("unsigned bootloader")));
  WrappedImageKey k = WrapFor("img-1");
  auto released = host_->Release(Request(k, "img-1", host_.get()));
  EXPECT_STATUS(released, StatusCode::kPermissionDenied, "pcr_policy");
  const std::string audit = AuditText();
  EXPECT_NE(audit.find("release.deny"), std::string::npos);
  EXPECT_NE(audit.find("pcr_policy"), std::string::npos);
  EXPECT_EQ(audit.find("release.grant"), std::string::npos);
  // The portal's placement check now says the same for this host.
  auto portal = JsonClient("portal");
  ASSERT_NE(portal, nullptr);
  auto check = portal->Post("/v1/placement-check",
                            {{"customer_id", kTenant}, {"image_id", "img-1"}, {"host_ids", {"host-1", "host-9"}}});
  ASSERT_OK(check);
  EXPECT_FALSE((*check)["hosts"][0]["eligible"].get<bool>());
  EXPECT_EQ((*check)["hosts"][0]["reason"], "pcr_policy");
  EXPECT_EQ((*check)["hosts"][1]["reason"], "not_enrolled");
}

TEST_F(KmsReleaseTest, ReplayedNonceIsRefused) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  WrappedImageKey k = WrapFor("img-1");
  host::ReleaseRequest r = Request(k, "img-1", host_.get());
  ASSERT_OK(host_->Release(r));
  EXPECT_STATUS(host_->Release(r), StatusCode::kPermissionDenied, "nonce_used");
}

// Issue 17, fencing: host-1 was placed job J (attempt 1), went silent, its
// lease expired and the portal placed J again on host-2 (attempt 2). host-1
// comes back with fresh, valid TPM evidence and asks for J's key: refused,
// whichever attempt it names, and the refusal is audited. Nor can a portal
// arm attempt 1 again.
TEST_F(KmsReleaseTest, AHostWhoseLeaseExpiredIsRefusedTheKeyOfTheReplacedJob) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  // host-2: enrolled, its latest verdict quoting host-1's (good) PCRs.
  auto latest = store_->LatestVerdict("host-1");
  ASSERT_OK(latest);
  ASSERT_OK(store_->PutHost({"host-2", "", "", false, {}, latest->time_unix},
                            {"host.enroll", "host/host-2", json::object()}));
  ASSERT_OK(store_->SetHostEnrolled("host-2", {"host.activate", "host/host-2", json::object()}));
  Verdict v2 = *latest;
  v2.verdict_id = "v-host-2";
  v2.host_id = "host-2";
  ASSERT_OK(store_->PutVerdict(v2, {"attestation", "host/host-2", json::object()}));

  WrappedImageKey k = WrapFor("img-1");
  host::ReleaseRequest r = Request(k, "img-1", host_.get());  // registers the image
  auto grant = [&](int attempt, const std::string& host) {
    return portal_->Post("/v1/grants", {{"job_id", r.job_id}, {"image_id", "img-1"}, {"tenant", kTenant},
                                        {"host_id", host}, {"ttl_seconds", 60}, {"attempt", attempt}})
        .status();
  };
  ASSERT_OK(grant(1, "host-1"));
  ASSERT_OK(grant(2, "host-2"));  // the lease of attempt 1 expired

  auto ask = [&](uint64_t attempt) {
    auto nonce = host_->Nonce();
    EXPECT_OK(nonce);
    auto ev = engine_->Attest(nonce.ok() ? *nonce : crypto::Bytes{}, kPcrs);
    EXPECT_OK(ev);
    if (ev.ok()) r.evidence = *ev;
    r.attempt = attempt;
    return host_->Release(r);
  };
  EXPECT_STATUS(ask(1), StatusCode::kPermissionDenied, "stale_attempt");
  EXPECT_STATUS(ask(2), StatusCode::kPermissionDenied, "no_grant");  // attempt 2 is host-2's
  EXPECT_STATUS(grant(1, "host-1"), StatusCode::kPermissionDenied, "stale_attempt");

  // Nothing released; the job's one grant is still host-2's, unused.
  auto g = store_->GetGrant(r.job_id);
  ASSERT_OK(g);
  EXPECT_EQ(g->host_id, "host-2");
  EXPECT_EQ(g->attempt, 2);
  EXPECT_EQ(g->used_unix, 0);
  const std::string audit = AuditText();
  EXPECT_EQ(audit.find("\"release.grant\""), std::string::npos);
  EXPECT_NE(audit.find("\"reason\":\"stale_attempt\""), std::string::npos);
  EXPECT_OK(VerifyStoreAudit(*store_));
}

TEST_F(KmsReleaseTest, UnenrolledHostIsRefused) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  auto other = HostClient("host-2", "host2");
  ASSERT_NE(other, nullptr);
  WrappedImageKey k = WrapFor("img-1");
  expect_grants_ = false;
  EXPECT_STATUS(other->Release(Request(k, "img-1", other.get())), StatusCode::kPermissionDenied,
                "not_enrolled");
  EXPECT_STATUS(last_grant_, StatusCode::kPermissionDenied, "not_enrolled");
}

TEST_F(KmsReleaseTest, WrongLabelIsLabelMismatch) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  WrappedImageKey k1 = WrapFor("img-1");
  WrappedImageKey k2 = WrapFor("img-2");
  // A label naming another image than the request.
  host::ReleaseRequest r = Request(k1, "img-1", host_.get());
  r.oaep_label = k2.label;
  // Not what was signed (and no valid descriptor carries a label naming
  // another image than its tag): the host's client refuses it before asking.
  EXPECT_STATUS(host_->Release(r), StatusCode::kFailedPrecondition, "key_not_signed");
  // A consistent request for img-2 carrying img-1's wrapped key, signed so.
  r = Request(k2, "img-2", host_.get());
  r.wrapped_key = k1.wrapped;
  EXPECT_STATUS(host_->Release(r), StatusCode::kFailedPrecondition, "key_not_signed");
  Resign(&r);
  EXPECT_STATUS(host_->Release(r), StatusCode::kPermissionDenied, "label_mismatch");
  // A key of another customer is unknown to this tenant.
  r = Request(k1, "img-1", host_.get());
  r.key_id = "sha256:" + std::string(64, '0');
  Resign(&r);
  EXPECT_STATUS(host_->Release(r), StatusCode::kPermissionDenied, "unknown_key");
}

TEST_F(KmsReleaseTest, ForgedEvidenceIsRecordedAsUntrustedVerdict) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  WrappedImageKey k = WrapFor("img-1");
  host::ReleaseRequest r = Request(k, "img-1", host_.get());
  r.evidence.quote.signature.back() ^= 0x01;
  EXPECT_STATUS(host_->Release(r), StatusCode::kPermissionDenied, "bad_signature");
  auto verdicts = op_->Get("/v1/hosts/host-1/verdicts?since=0");
  ASSERT_OK(verdicts);
  ASSERT_GE((*verdicts)["verdicts"].size(), 2u);
  EXPECT_FALSE((*verdicts)["verdicts"].back()["trusted"].get<bool>());
  EXPECT_EQ((*verdicts)["verdicts"].back()["reason"], "bad_signature");
}

TEST_F(KmsReleaseTest, NoPolicyFailsClosed) {
  StartAll("");
  Enroll();
  WrappedImageKey k = WrapFor("img-1");
  // No grant without a policy, so no release.
  expect_grants_ = false;
  EXPECT_STATUS(host_->Release(Request(k, "img-1", host_.get())), StatusCode::kPermissionDenied,
                "no_grant");
  EXPECT_STATUS(last_grant_, StatusCode::kPermissionDenied, "no_policy");
}

// A KMS started with another KEK than the one a key was wrapped under (wrong
// kek_file, other token) names the mismatch instead of a bare decryption failure.
// A KMS started with another KEK than the store's refuses to start, naming
// both KEKs; a key record wrapped under another KEK (a store mixing KEKs) is
// refused by name at release.
TEST_F(KmsReleaseTest, OtherKekIsKekMismatch) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  auto other_kek = KekFromBytes(SecretBytes::Random(kKekBytes));
  ASSERT_OK(other_kek);
  ASSERT_NE((*other_kek)->id(), kek_->id());
  KmsService::Options options;
  internal::CertAndKey ca{ca_.cert_pem, SecretBytes(ca_.key_pem.UnsafeSpan())};
  auto other = KmsService::Create(options, store_.get(), other_kek->get(), std::move(ca));
  EXPECT_STATUS(other, StatusCode::kFailedPrecondition, "kek_mismatch: ");
  EXPECT_STATUS(other, StatusCode::kFailedPrecondition, "wrapped under KEK " + kek_->id());
  EXPECT_STATUS(other, StatusCode::kFailedPrecondition, "this KMS uses KEK " + (*other_kek)->id());

  WrappedImageKey k = WrapFor("img-1");
  ASSERT_OK(store_->ExecForTesting("UPDATE customer_keys SET kek_id = 'file:elsewhere'"));
  host::ReleaseRequest hr = Request(k, "img-1", host_.get());
  ReleaseRequest r{hr.job_id, hr.image_id, hr.tenant, hr.key_id, hr.key_version, hr.wrap_algorithm,
                   hr.oaep_label, hr.wrapped_key, hr.evidence, hr.descriptor_name, hr.descriptor,
                   hr.manifest, hr.package_cert};
  auto out = service_->Release({Caller::Role::kHost, "host-1", "fp"}, "host-1", r);
  EXPECT_STATUS(out, StatusCode::kFailedPrecondition, "kek_mismatch: key ");
  EXPECT_STATUS(out, StatusCode::kFailedPrecondition, "wrapped under KEK file:elsewhere");
  EXPECT_STATUS(out, StatusCode::kFailedPrecondition, "this KMS uses KEK " + kek_->id());
  EXPECT_NE(AuditText().find("kek_mismatch"), std::string::npos);
}

// KEK rotation while hosts keep releasing (issue 19): 20,000 seeded keys
// and the tenant's key and service secrets are re-wrapped in small batches
// while releases run through the HTTPS server and through KMS services
// started fresh during the rotation (an empty key cache: each unwraps the
// tenant's key, and its nonce and log keys, under whichever KEK the record
// names at that moment). Every release succeeds and its key opens in the
// TPM; afterwards the old KEK is retired and a KMS holding only the new KEK
// releases.
TEST_F(KmsReleaseTest, ReleasesRunningDuringAKekRotationAllSucceed) {
  StartAll("");
  Enroll();
  TrustCurrentState();
  ASSERT_OK(kms_testing::SeedWrappedKeys(store_.get(), *kek_, 20000, "seed"));
  const std::string old_id = kek_->id();
  SecretBytes next = SecretBytes::Random(kKekBytes);
  auto next_kek = KekFromBytes(next.Clone());
  ASSERT_OK(next_kek);
  const std::string new_id = (*next_kek)->id();
  KekRotation rotation(store_.get(), ring_,
                       [&next]() -> StatusOr<std::vector<std::unique_ptr<KeyEncryptionKey>>> {
                         std::vector<std::unique_ptr<KeyEncryptionKey>> out;
                         ASSIGN_OR_RETURN(auto k, KekFromBytes(next.Clone()));
                         out.push_back(std::move(k));
                         return out;
                       },
                       {.batch = 25});
  ASSERT_OK(rotation.Reload(new_id));

  std::atomic<bool> rotating{true};
  int during = 0, total = 0, failed = 0;
  std::string first_failure;
  const Caller host{Caller::Role::kHost, "host-1", "fp"};
  auto release_once = [&](bool fresh_service) {
    WrappedImageKey k = WrapFor("img-1");
    host::ReleaseRequest hr = Request(k, "img-1", host_.get());
    StatusOr<crypto::Bytes> rewrapped = InternalError("unset");
    StatusOr<crypto::Bytes> label = InternalError("unset");
    if (fresh_service) {
      std::unique_ptr<KmsService> fresh = NewService(store_.get());
      if (fresh == nullptr) {
        ++failed;
        return;
      }
      ReleaseRequest r{hr.job_id, hr.image_id, hr.tenant, hr.key_id, hr.key_version, hr.wrap_algorithm,
                       hr.oaep_label, hr.wrapped_key, hr.evidence, hr.descriptor_name, hr.descriptor,
                       hr.manifest, hr.package_cert};
      auto out = fresh->Release(host, "host-1", r);
      if (out.ok()) {
        rewrapped = out->rewrapped_key;
        label = out->label;
      } else {
        rewrapped = out.status();
      }
    } else {
      auto out = host_->Release(hr);
      if (out.ok()) {
        rewrapped = out->rewrapped_key;
        label = out->label;
      } else {
        rewrapped = out.status();
      }
    }
    ++total;
    if (!rewrapped.ok()) {
      if (failed++ == 0) first_failure = rewrapped.status().ToString();
      return;
    }
    auto data_key = engine_->Decrypt(*rewrapped, *label);
    if (!data_key.ok() || !data_key->Equals(k.data_key)) {
      if (failed++ == 0) first_failure = "the released key does not decrypt to the data key";
    }
  };
  std::thread releases([&] {
    bool fresh = true;
    while (rotating) {
      release_once(fresh);
      if (rotating) ++during;
      fresh = !fresh;
    }
  });
  auto started = rotation.Start(new_id, "operator/test");
  ASSERT_OK(started);
  json state;
  for (int i = 0; i < 2400; ++i) {
    auto d = rotation.Describe();
    ASSERT_OK(d);
    state = *d;
    if (state["rotation"]["state"] != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  rotating = false;
  releases.join();
  EXPECT_EQ(state["rotation"]["state"], "done") << state.dump();
  EXPECT_EQ(state["rotation"]["keys_rewrapped"], 20001);
  EXPECT_EQ(state["rotation"]["secrets_rewrapped"], 2);
  EXPECT_EQ(failed, 0) << first_failure;
  EXPECT_GE(during, 2) << "too few releases overlapped the rotation to show anything";
  std::printf("[ figure ] %d releases during the rotation of 20,001 keys, %d failed\n", during, failed);

  ASSERT_OK(rotation.Retire(old_id, "operator/test"));
  EXPECT_FALSE(kek_->Holds(old_id));
  // A KMS that holds the new KEK alone opens the key and the service secrets.
  KekRing only_new(*std::move(next_kek));
  std::unique_ptr<KmsService> after = NewService(store_.get(), &only_new);
  ASSERT_NE(after, nullptr);
  WrappedImageKey k = WrapFor("img-1");
  host::ReleaseRequest hr = Request(k, "img-1", host_.get());
  ReleaseRequest r{hr.job_id, hr.image_id, hr.tenant, hr.key_id, hr.key_version, hr.wrap_algorithm,
                   hr.oaep_label, hr.wrapped_key, hr.evidence, hr.descriptor_name, hr.descriptor,
                   hr.manifest, hr.package_cert};
  ASSERT_OK(after->Release(host, "host-1", r));
  EXPECT_OK(VerifyStoreAudit(*store_));
}

TEST_F(KmsReleaseTest, GoodHostReleaseOnPostgres) {
  auto pg = testing::PgHarness::Start();
  ASSERT_OK(pg);
  auto url = (*pg)->CreateDatabase("release");
  ASSERT_OK(url);
  StartAll(*url);
  ASSERT_EQ(store_->backend(), "postgres");
  ExpectGoodRelease();
}

// Two KMS services over one PostgreSQL: a nonce one issued is consumed once,
// whichever service the concurrent attempts reach.
TEST_F(KmsReleaseTest, TwoServicesOnePostgresConsumeANonceOnce) {
  auto pg = testing::PgHarness::Start();
  ASSERT_OK(pg);
  auto url = (*pg)->CreateDatabase("shared");
  ASSERT_OK(url);
  StartAll(*url);
  Enroll();
  TrustCurrentState();
  auto store_b = Store::Open(*url);
  ASSERT_OK(store_b);
  std::unique_ptr<KmsService> service_b = NewService(store_b->get());
  ASSERT_NE(service_b, nullptr);

  WrappedImageKey k = WrapFor("img-1");
  host::ReleaseRequest hr = Request(k, "img-1", host_.get());  // nonce issued by service A
  ReleaseRequest r{hr.job_id, hr.image_id, hr.tenant, hr.key_id, hr.key_version, hr.wrap_algorithm,
                   hr.oaep_label, hr.wrapped_key, hr.evidence, hr.descriptor_name, hr.descriptor,
                   hr.manifest, hr.package_cert};
  const Caller host{Caller::Role::kHost, "host-1", "fp"};
  std::atomic<int> granted{0}, used{0}, other{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    KmsService* s = (i % 2 == 0) ? service_.get() : service_b.get();
    threads.emplace_back([&, s] {
      while (!go.load()) std::this_thread::yield();
      auto out = s->Release(host, "host-1", r);
      if (out.ok()) {
        ++granted;
      } else if (out.status().message().rfind("nonce_used", 0) == 0) {
        ++used;
      } else {
        ++other;
      }
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(granted.load(), 1);
  EXPECT_EQ(used.load(), 7);
  EXPECT_EQ(other.load(), 0);
  EXPECT_OK(VerifyStoreAudit(*store_));
}

}  // namespace
}  // namespace vmseal::kms
