// Test doubles for the portal core (tests only).
#ifndef VMSEAL_CSP_INTERNAL_TEST_DOUBLES_H_
#define VMSEAL_CSP_INTERNAL_TEST_DOUBLES_H_

#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include <memory>
#include <utility>
#include <vector>

#include "crypto/keys.h"
#include "crypto/x509.h"
#include "csp/hosts.h"
#include "csp/kms_client.h"
#include "csp/package_verifier.h"

namespace vmseal::csp::testing {

inline constexpr char kSealedMagic[] = "VMSEAL-SEALED\n";

// Stands in for the OVF verifier: a package is "sealed" when it starts with
// kSealedMagic and has a bad manifest when it contains "BAD-DIGEST".
class FakeVerifier final : public PackageVerifier {
 public:
  StatusOr<VerifiedPackage> Verify(const RandomAccessFile& package,
                                   const std::string&) const override {
    ASSIGN_OR_RETURN(uint64_t size, package.Size());
    std::string data(size, '\0');
    ASSIGN_OR_RETURN(size_t n, package.Read(0, std::span<uint8_t>(
                                                   reinterpret_cast<uint8_t*>(data.data()), size)));
    data.resize(n);
    if (data.find("BAD-DIGEST") != std::string::npos) {
      return DataLossError("manifest digest mismatch for disk1.vmdk");
    }
    if (!data.starts_with(kSealedMagic)) return FailedPreconditionError("disk is not encrypted");
    // A package that names its tag's tenant and key id ("TENANT=<id>\n",
    // "KEYID=<id>\n" lines) is checked against the uploader like a real one;
    // without them the double reads no tag (tenant empty).
    VerifiedPackage out{"img", "key-1", 1, ""};
    auto line = [&](const std::string& name, std::string* value) {
      size_t at = data.find("\n" + name + "=");
      if (at == std::string::npos) return;
      at += name.size() + 2;
      *value = data.substr(at, data.find('\n', at) - at);
    };
    line("TENANT", &out.tenant);
    line("KEYID", &out.key_id);
    line("IMAGEID", &out.tagged_image_id);
    // "SIGNER=<key id>": the key id of the key that signed the manifest.
    line("SIGNER", &out.signer_key_id);
    return out;
  }
};

// The KMS as unit tests need it: real key certificates from a private test
// CA, placement answers set by the test, and an "unreachable" switch.
class FakeKmsClient final : public KmsClient {
 public:
  FakeKmsClient() {
    auto ca = crypto::CreateSelfSignedCa({"fake KMS CA"});
    if (ca.ok()) ca_ = std::make_unique<crypto::CertificateAuthority>(*std::move(ca));
  }
  // Placement answer for `host_id`; hosts never set are "not_enrolled".
  void SetEligibility(const std::string& host_id, bool eligible, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu_);
    hosts_[host_id] = {host_id, eligible, reason};
  }
  void SetUnavailable(bool unavailable) {
    std::lock_guard<std::mutex> lock(mu_);
    unavailable_ = unavailable;
  }
  int placement_checks() {
    std::lock_guard<std::mutex> lock(mu_);
    return placement_checks_;
  }
  // The (customer, image) of the last placement check.
  std::pair<std::string, std::string> last_query() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_query_;
  }

  // The algorithm of the last key creation asked for.
  std::string last_key_algorithm() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_key_algorithm_;
  }

  // X25519 keys as asked; any other algorithm gets a P-256 key (cheaper
  // than RSA, and the portal only stores the public half).
  StatusOr<CustomerKey> CreateCustomerKey(const std::string& customer_id,
                                          const std::string& algorithm) override {
    std::lock_guard<std::mutex> lock(mu_);
    last_key_algorithm_ = algorithm;
    if (unavailable_) return UnavailableError("HTTPS request failed: Connection");
    if (ca_ == nullptr) return InternalError("fake KMS CA missing");
    const bool x25519 = algorithm == "X25519";
    ASSIGN_OR_RETURN(auto key, crypto::PrivateKey::Generate(x25519 ? crypto::KeyType::kX25519
                                                                   : crypto::KeyType::kEcP256));
    CustomerKey out;
    out.key_id = "key-" + std::to_string(++keys_);
    out.customer_id = customer_id;
    out.algorithm = x25519 ? "X25519" : "P-256";
    out.public_key_pem = key.Public().ToPem();
    crypto::IssueOptions io;
    io.common_name = out.key_id;
    ASSIGN_OR_RETURN(crypto::Certificate cert, crypto::IssueCertificate(*ca_, key.Public(), io));
    out.cert_pem = cert.ToPem();
    return out;
  }
  StatusOr<std::vector<HostEligibility>> CheckPlacement(
      const std::string& customer_id, const std::string& image_id,
      const std::vector<std::string>& host_ids) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++placement_checks_;
    last_query_ = {customer_id, image_id};
    if (unavailable_) return UnavailableError("HTTPS request failed: Connection");
    std::vector<HostEligibility> out;
    for (const std::string& h : host_ids) {
      auto it = hosts_.find(h);
      out.push_back(it != hosts_.end() ? it->second : HostEligibility{h, false, "not_enrolled"});
    }
    return out;
  }
  // Stores what it relays without checking the signature (the real KMS
  // does: kms/service.h PutSignedPolicy); refuses a document that is not
  // newer, as the KMS does.
  StatusOr<SignedPolicy> PutSignedPolicy(const std::string& tenant, const std::string& image_id,
                                         const std::string& document,
                                         const crypto::Bytes& signature) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_) return UnavailableError("HTTPS request failed: Connection");
    const size_t at = document.find("\"version\":");
    const int64_t version = at == std::string::npos ? 0 : std::atoll(document.c_str() + at + 10);
    auto& newest = signed_[tenant + "/" + image_id];
    if (version <= newest.version) return PermissionDeniedError("policy_stale: not newer");
    newest = {version, document, crypto::Base64Encode(signature)};
    policies_[tenant + "/" + image_id] = document;
    return newest;
  }
  StatusOr<SignedPolicy> GetSignedPolicy(const std::string& tenant,
                                         const std::string& image_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = signed_.find(tenant + "/" + image_id);
    if (it == signed_.end()) return NotFoundError("no signed policy");
    return it->second;
  }
  // The document last relayed for (tenant, image), or "".
  std::string policy(const std::string& customer_id, const std::string& image_id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = policies_.find(customer_id + "/" + image_id);
    return it == policies_.end() ? "" : it->second;
  }
  Status RegisterImage(const std::string& tenant, const std::string& image_id,
                       const std::string& key_id, const ovf::SignedPackageTexts&) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_) return UnavailableError("HTTPS request failed: Connection");
    images_[tenant + "/" + image_id] = key_id;
    return OkStatus();
  }
  // Grants are refused (as the KMS refuses one for an unregistered image).
  void SetGrantsRefused(bool refused) {
    std::lock_guard<std::mutex> lock(mu_);
    grants_refused_ = refused;
  }
  // While held, CreateGrant blocks (as a stopped KMS would) until released.
  void HoldGrants(bool hold) {
    std::lock_guard<std::mutex> lock(mu_);
    grants_held_ = hold;
    grant_cv_.notify_all();
  }
  // CreateGrant calls blocked by HoldGrants now.
  int grants_waiting() {
    std::lock_guard<std::mutex> lock(mu_);
    return grants_waiting_;
  }
  Status CreateGrant(const LaunchGrant& grant) override {
    std::unique_lock<std::mutex> lock(mu_);
    ++grants_waiting_;
    grant_cv_.wait(lock, [this] { return !grants_held_; });
    --grants_waiting_;
    if (unavailable_) return UnavailableError("HTTPS request failed: Connection");
    if (grants_refused_) return FailedPreconditionError("KMS: unknown_image: not registered");
    grants_.push_back(grant);
    return OkStatus();
  }
  // Registered images, "<tenant>/<image>" -> key id.
  std::map<std::string, std::string> images() {
    std::lock_guard<std::mutex> lock(mu_);
    return images_;
  }
  // Every grant registered, oldest first.
  std::vector<LaunchGrant> grants() {
    std::lock_guard<std::mutex> lock(mu_);
    return grants_;
  }
  // Certifies the signing key as the KMS does (CN = customer id, EKU
  // codeSigning); the proof is not checked here (the KMS's tests do).
  StatusOr<SigningKey> RegisterSigningKey(const std::string& customer_id,
                                          const std::string& public_key_pem,
                                          const std::vector<uint8_t>& proof) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_) return UnavailableError("HTTPS request failed: Connection");
    if (proof.empty()) return PermissionDeniedError("bad_proof: no proof");
    ASSIGN_OR_RETURN(crypto::PublicKey key, crypto::PublicKey::FromPem(public_key_pem));
    crypto::IssueOptions io;
    io.common_name = customer_id;
    io.usage = crypto::CertUsage::kPackageSigning;
    ASSIGN_OR_RETURN(crypto::Certificate cert, crypto::IssueCertificate(*ca_, key, io));
    SigningKey out{customer_id, key.KeyId(), key.ToPem(), cert.ToPem()};
    signing_keys_[customer_id] = out;
    return out;
  }
  StatusOr<SigningKey> GetSigningKey(const std::string& customer_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_) return UnavailableError("HTTPS request failed: Connection");
    auto it = signing_keys_.find(customer_id);
    if (it == signing_keys_.end()) return NotFoundError("no signing key");
    return it->second;
  }
  // Replaces the signing key the fake answers with (a KMS or portal that
  // lies about it).
  void SetSigningKeyForTesting(const SigningKey& key) {
    std::lock_guard<std::mutex> lock(mu_);
    signing_keys_[key.customer_id] = key;
  }
  // Read-only operator views: one flavor, a log of three records.
  StatusOr<nlohmann::json> ListFlavors() override {
    return nlohmann::json{{"flavors", {{{"name", "trusted-boot"}, {"pcrs", {{"sha256:0", "00"}}}}}}};
  }
  StatusOr<nlohmann::json> AuditCheckpoint() override {
    return nlohmann::json{{"checkpoint", "fake-log\n3\nAAAA\n\n\u2014 fake-log c2ln\n"}, {"log_key", "fake-log+00000000+AQ=="}};
  }
  StatusOr<std::string> AuditInclusionProof(int64_t seq, int64_t size) override {
    std::lock_guard<std::mutex> lock(mu_);
    proofs_asked_.push_back(seq);
    return "c2sp.org/tlog-proof@v1\nextra e30=\nindex " + std::to_string(seq - 1) + "\n\nsize " +
           std::to_string(size) + "\n";
  }
  StatusOr<std::string> AuditConsistencyProof(int64_t old_size, int64_t size) override {
    return "vmseal.dev/tlog-consistency@v1\nold " + std::to_string(old_size) + "\n\nsize " +
           std::to_string(size) + "\n";
  }
  std::vector<int64_t> proofs_asked() {
    std::lock_guard<std::mutex> lock(mu_);
    return proofs_asked_;
  }

  std::string CaCertificatePem() const override { return ca_ ? ca_->cert.ToPem() : ""; }

  // Loss of trust: a VM is trusted while its host is eligible
  // (SetEligibility); its on_trust_loss is SetOnTrustLoss's for its job
  // ("report" otherwise).
  void SetOnTrustLoss(const std::string& job_id, const std::string& action) {
    std::lock_guard<std::mutex> lock(mu_);
    on_trust_loss_[job_id] = action;
  }
  StatusOr<nlohmann::json> CheckVmTrust(const nlohmann::json& body) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_) return UnavailableError("HTTPS request failed: Connection");
    nlohmann::json vms = nlohmann::json::array();
    for (const nlohmann::json& v : body.at("vms")) {
      const std::string job = v.at("job_id").get<std::string>();
      trust_queries_.push_back(job);
      auto h = hosts_.find(v.at("host_id").get<std::string>());
      const bool trusted = h != hosts_.end() && h->second.eligible;
      auto action = on_trust_loss_.find(job);
      vms.push_back({{"job_id", job},
                     {"trusted", trusted},
                     {"reason", trusted ? "ok" : (h == hosts_.end() ? "not_enrolled" : h->second.reason)},
                     {"on_trust_loss", action == on_trust_loss_.end() ? "report" : action->second}});
    }
    return nlohmann::json{{"vms", vms}};
  }
  Status RecordVmTrustEvent(const nlohmann::json& body) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_) return UnavailableError("HTTPS request failed: Connection");
    trust_events_.push_back(body.at("job_id").get<std::string>() + " " + body.at("event").get<std::string>());
    return OkStatus();
  }
  // Job ids asked about, in order; "<job> <event>" of each trust event.
  std::vector<std::string> trust_queries() {
    std::lock_guard<std::mutex> lock(mu_);
    return trust_queries_;
  }
  std::vector<std::string> trust_events() {
    std::lock_guard<std::mutex> lock(mu_);
    return trust_events_;
  }

 private:
  std::vector<int64_t> proofs_asked_;
  std::map<std::string, std::string> on_trust_loss_;
  std::vector<std::string> trust_queries_;
  std::vector<std::string> trust_events_;
  std::unique_ptr<crypto::CertificateAuthority> ca_;
  std::mutex mu_;
  std::map<std::string, HostEligibility> hosts_;
  bool unavailable_ = false;
  int placement_checks_ = 0;
  int keys_ = 0;
  std::string last_key_algorithm_;
  std::pair<std::string, std::string> last_query_;
  std::map<std::string, std::string> policies_;
  std::map<std::string, SignedPolicy> signed_;
  std::map<std::string, std::string> images_;
  std::vector<LaunchGrant> grants_;
  bool grants_refused_ = false;
  bool grants_held_ = false;
  int grants_waiting_ = 0;
  std::condition_variable grant_cv_;
  std::map<std::string, SigningKey> signing_keys_;
};

}  // namespace vmseal::csp::testing

#endif  // VMSEAL_CSP_INTERNAL_TEST_DOUBLES_H_
